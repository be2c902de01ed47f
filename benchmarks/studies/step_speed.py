"""Decision: whole runs confirm the small-step changes (`DENSE_GRADIENT_MAX_BATCH`, clipping only when it clips) before they became the default.

How much faster do whole training runs of the sparse variants get from the dense-product gradients
and the clipping that scales only when it clips?

Trains the same runs twice in this process, on one torch thread (as the panel's workers): the earlier
way (every gradient scattered from the selected entries, ``DENSE_GRADIENT_MAX_BATCH`` 0, and
``clip_grad_norm_``), then the current code; on the panel's WordNet 5,000 split (../shared/data), or
--corpus python-docs. Prints each pair's seconds, their ratio and both held-out FVUs (the gradients
are the same up to float rounding, so the FVUs agree to about 1e-3, not bit for bit).

    python -m benchmarks.studies.step_speed [--corpus wordnet-5k] [--steps 1000]
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator


from benchmarks import panel  # noqa: E402
import torch  # noqa: E402

from sentence_sae import trainer  # noqa: E402
from sentence_sae.sae import kernels  # noqa: E402


def earlier_clipping(parameters: list[torch.nn.Parameter], max_norm: float | None) -> float:
    return float("nan") if max_norm is None else torch.nn.utils.clip_grad_norm_(parameters, max_norm).item()


@contextlib.contextmanager
def earlier_code() -> Iterator[None]:
    saved = kernels.DENSE_GRADIENT_MAX_BATCH, trainer.clip_gradients
    kernels.DENSE_GRADIENT_MAX_BATCH, trainer.clip_gradients = 0, earlier_clipping
    try:
        yield
    finally:
        kernels.DENSE_GRADIENT_MAX_BATCH, trainer.clip_gradients = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default="wordnet-5k", choices=list(panel.CORPORA))
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    path, size = panel.CORPORA[args.corpus]
    training, held_out = panel.split(panel.corpus_embeddings(path, "fast"), size)
    print(f"{args.corpus}, {args.steps} steps per run, 1 torch thread\n")
    print("| run | earlier s | now s | ratio | FVU earlier | FVU now |\n|---|---|---|---|---|---|")
    totals = [0.0, 0.0]
    for sae_type in ("topk", "batchtopk", "matryoshka"):
        for batch in (16, 64, 256):
            settings = {"sae_type": sae_type, "top_k": 32, "batch_size": batch, "lr": 1e-3,
                        "num_examples": args.steps * batch, "max_epochs": 10_000}
            with earlier_code():
                before = panel.train_one(training, held_out, settings)
            after = panel.train_one(training, held_out, settings)
            totals[0] += before["seconds"]
            totals[1] += after["seconds"]
            print(f"| {sae_type} batch {batch} | {before['seconds']:.1f} | {after['seconds']:.1f} | "
                  f"{before['seconds'] / after['seconds']:.2f} | {before['fvu']:.4f} | {after['fvu']:.4f} |", flush=True)
    print(f"\nall runs: {totals[0]:.1f} s earlier, {totals[1]:.1f} s now, ratio {totals[0] / totals[1]:.2f}")


if __name__ == "__main__":
    main()
