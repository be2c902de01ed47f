"""Sparse vs dense TopK / BatchTopK training step.

A full training step (forward, backward, decoder-gradient projection, Adam, renormalization) at
batch 4,096, 384 -> 6,144, k = 32, on real MiniLM embeddings of the built-in corpus, with the
sparse kernels and with the dense formulation, in the same process. Also the bound: the encoder's
forward matmul with top-k alone. Prints steps/s and the ratios, and peak memory.

    python -m benchmarks.sae_step [--steps 10] [--batch 4096] [--dict 6144] [--k 32]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from sentence_sae import SAEConfig, create_sae  # noqa: E402
from sentence_sae.data import python_docs_paragraphs  # noqa: E402
from sentence_sae.embeddings import encode_texts, load_sentence_model  # noqa: E402
from sentence_sae.sae.base import initialize_b_dec, normalize_decoder, remove_parallel_decoder_grad  # noqa: E402
from sentence_sae.trainer import DeadFeatures  # noqa: E402


def real_batch(batch: int) -> torch.Tensor:
    """``batch`` real embeddings: the corpus encoded once, repeated with a little noise."""
    model = load_sentence_model("sentence-transformers/all-MiniLM-L6-v2", "cpu")
    base = encode_texts(model, list(python_docs_paragraphs())[:1024], 64)
    reps = -(-batch // len(base))
    x = base.repeat(reps, 1)[:batch]
    return x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))


def timed_steps(sae, x: torch.Tensor, steps: int) -> list[float]:
    """The trainer's step without its schedules and logging: dead-feature bookkeeping, running
    statistics, backward, decoder constraint, Adam."""
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
    dead = DeadFeatures(sae.d_sae, sae.cfg.dead_feature_window, sae.device)
    sae.train()
    times = []
    for _ in range(steps + 2):
        started = time.perf_counter()
        output = sae(x, dead_mask=dead.mask)
        dead.record(output.fire_counts, len(x))
        sae.update_running_stats(output.active_values)
        output.loss.backward()
        remove_parallel_decoder_grad(sae)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        normalize_decoder(sae)
        times.append(time.perf_counter() - started)
    return times[2:]  # the first steps allocate Adam state


def encoder_bound(sae, x: torch.Tensor, steps: int) -> list[float]:
    times = []
    with torch.no_grad():
        for _ in range(steps + 2):
            started = time.perf_counter()
            pre = sae.pre_activations(x)
            pre.topk(sae.cfg.top_k, dim=-1, sorted=False)
            times.append(time.perf_counter() - started)
    return times[2:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--dict", type=int, default=6144)
    parser.add_argument("--k", type=int, default=32)
    args = parser.parse_args()
    x = real_batch(args.batch)
    print(f"batch {args.batch}, 384 -> {args.dict}, k {args.k}, torch threads {torch.get_num_threads()}")
    for sae_type in ("topk", "batchtopk"):
        medians = {}
        for sparse in (False, True):
            cfg = SAEConfig(sae_type=sae_type, dict_size=args.dict, top_k=args.k, act_size=384, device="cpu",
                            sparse_kernel=sparse, dead_feature_window=10 * args.batch)
            sae = create_sae(cfg)
            initialize_b_dec(sae, x)
            medians[sparse] = statistics.median(timed_steps(sae, x, args.steps))
        bound = statistics.median(encoder_bound(sae, x, args.steps))
        print(f"{sae_type}: dense {medians[False] * 1e3:.0f} ms/step, sparse {medians[True] * 1e3:.0f} ms/step, "
              f"speed-up {medians[False] / medians[True]:.2f}x; encoder matmul + top-k alone {bound * 1e3:.0f} ms "
              f"(bound {medians[False] / bound:.2f}x)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory {peak:.0f} MB")


if __name__ == "__main__":
    main()
