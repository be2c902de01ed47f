"""Decision: small-batch steps use fused Adam, the in-place decoder projection, clipping only when it clips and dense-product gradients up to batch 128 (`sae/kernels.py`).

The parts of a small-batch training step, each against the formulation it replaced.

Small batches are what the recipe picks for short runs and small corpora (16 to 64), and there a
step is dominated by work over every weight rather than by the batch. Each line times one part at
batch 16, 64 and 256 (1,536 features, d 384, k 32, the shapes of the panel), the current code
against the earlier formulation, in the same process, and prints the ratio:
- Adam: fused into one kernel, against PyTorch's default per-tensor loop;
- the weight gradients' scatter (S^T a): index_add of the entries, against a sparse CSR matmul;
- the input gradient (S W_enc^T): a dense product with the code, against a transposed copy of
  W_enc and an embedding_bag;
- the decoder-gradient projection: in place, against the version with [dict_size, d] temporaries;
- gradient clipping: scaling only when the norm is above max_grad_norm, against ``clip_grad_norm_``,
  which multiplies every gradient by 1 when it is not (at a norm below the maximum, as most steps);
- the backward pass's weight and input gradients all together (``weight_and_input_gradients``), against
  the scattered entries alone, plus the copy of W_enc's transposed gradient into its layout that
  autograd then makes.

    python -m benchmarks.studies.small_step [--threads 1] [--repeats 300]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from sentence_sae.sae.kernels import (_csr, bag_sum, gather_rows, scatter_outer, selection_from_topk,
                                      weight_and_input_gradients)
from sentence_sae.schedules import adam, clip_gradients

D, WIDTH, K = 384, 1536, 32


def per_call_ms(work: Callable[[], object], repeats: int) -> float:
    """The median over 5 rounds of the mean time of one call, in ms."""
    work()
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeats):
            work()
        rounds.append((time.perf_counter() - started) / repeats * 1e3)
    return statistics.median(rounds)


def project_with_temporaries(w_dec: torch.Tensor, grad: torch.Tensor) -> None:
    unit = w_dec / w_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    grad -= (grad * unit).sum(-1, keepdim=True) * unit


def project_in_place(w_dec: torch.Tensor, grad: torch.Tensor) -> None:
    norm = torch.linalg.vector_norm(w_dec, dim=-1).clamp_min(1e-12)
    grad.addcmul_(w_dec, (torch.linalg.vecdot(grad, w_dec) / norm.square()).unsqueeze(1), value=-1)


def parameters() -> list[torch.nn.Parameter]:
    shapes = ((D, WIDTH), (WIDTH, D), (WIDTH,), (D,))
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    for param in params:
        param.grad = torch.randn_like(param)
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the panel trains on one each)")
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"1,536 features, d 384, k 32, {args.threads} torch thread(s); ms per call, earlier / now")
    fused, looped = adam(parameters(), 1e-3, (0.9, 0.999)), torch.optim.Adam(parameters(), lr=1e-3)
    before, after = per_call_ms(looped.step, args.repeats), per_call_ms(fused.step, args.repeats)
    print(f"Adam over every weight: {before:.2f} / {after:.2f} ms ({before / after:.1f}x)")
    w_dec, grad = torch.nn.functional.normalize(torch.randn(WIDTH, D), dim=-1), torch.randn(WIDTH, D)
    before = per_call_ms(lambda: project_with_temporaries(w_dec, grad), args.repeats)
    after = per_call_ms(lambda: project_in_place(w_dec, grad), args.repeats)
    print(f"decoder-gradient projection: {before:.2f} / {after:.2f} ms ({before / after:.1f}x)")
    small = parameters()
    for param in small:
        param.grad /= 1e3  # a norm below max_grad_norm 1
    before = per_call_ms(lambda: torch.nn.utils.clip_grad_norm_(small, 1.0), args.repeats)
    after = per_call_ms(lambda: clip_gradients(small, 1.0), args.repeats)
    print(f"gradient clipping, nothing to clip: {before:.2f} / {after:.2f} ms ({before / after:.1f}x)")
    w_enc = torch.randn(D, WIDTH)
    for batch in (16, 32, 64, 128, 256):
        selection = selection_from_topk(torch.randn(batch, WIDTH).topk(K, dim=-1).indices)
        values, grad_pre = torch.randn(batch * K).abs(), torch.randn(batch * K)
        x_cent, grad_decoded = torch.randn(batch, D), torch.randn(batch, D)

        def scattered() -> tuple[torch.Tensor, ...]:  # W_enc's gradient copied into its layout, as autograd does
            return (scatter_outer(WIDTH, selection, grad_pre, x_cent).t().contiguous(),
                    scatter_outer(WIDTH, selection, values, grad_decoded), gather_rows(w_enc, selection, grad_pre))

        def current() -> list[torch.Tensor]:  # past DENSE_GRADIENT_MAX_BATCH autograd copies W_enc's too
            return [grad.contiguous() for grad in weight_and_input_gradients(
                selection, values, grad_pre, x_cent, grad_decoded, w_enc, True)]

        for a, b in zip(current(), scattered()):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        before, after = per_call_ms(scattered, args.repeats), per_call_ms(current, args.repeats)
        print(f"batch {batch}: weight and input gradients {before:.2f} / {after:.2f} ms ({before / after:.1f}x)")
    for batch in (16, 24, 32, 64, 256):
        selection = selection_from_topk(torch.randn(batch, WIDTH).topk(K, dim=-1).indices)
        coef, rows = torch.randn(batch * K), torch.randn(batch, D)
        torch.testing.assert_close(scatter_outer(WIDTH, selection, coef, rows),
                                   _csr(selection, coef, WIDTH).t() @ rows, atol=1e-4, rtol=1e-4)
        before = per_call_ms(lambda: _csr(selection, coef, WIDTH).t() @ rows, args.repeats)
        after = per_call_ms(lambda: scatter_outer(WIDTH, selection, coef, rows), args.repeats)
        print(f"batch {batch}: weight-gradient scatter {before:.2f} / {after:.2f} ms ({before / after:.1f}x)")
        before = per_call_ms(lambda: bag_sum(w_enc.t().contiguous(), selection, coef), args.repeats)
        after = per_call_ms(lambda: gather_rows(w_enc, selection, coef), args.repeats)
        print(f"batch {batch}: input gradient {before:.2f} / {after:.2f} ms ({before / after:.1f}x)")


if __name__ == "__main__":
    main()
