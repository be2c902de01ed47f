"""The optimizer of a training run and its schedules, as functions of the step: the learning rate,
the sparsity coefficient and the k of the k-based SAEs."""

from __future__ import annotations

import torch


def adam(parameters: list[torch.nn.Parameter], lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam, fused into one kernel where PyTorch has one for these parameters: the update reads and
    writes every weight of the SAE each step, and on CPU the fused kernel does that much faster than
    the per-tensor loop (4-7x; ``benchmarks/studies/small_step.py``), which is most of a small batch's step."""
    try:
        return torch.optim.Adam(parameters, lr=lr, betas=betas, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.Adam(parameters, lr=lr, betas=betas)


def clip_gradients(parameters: list[torch.nn.Parameter], max_norm: float | None) -> float:
    """The gradients' total norm (nan when ``max_norm`` is None), after scaling them to ``max_norm``
    when it is larger. ``clip_grad_norm_`` multiplies every gradient by 1 when nothing is clipped,
    a pass over every weight that most small-batch steps do not need."""
    if max_norm is None:
        return float("nan")
    grads = [param.grad for param in parameters if param.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    if bool(max_norm / (total + 1e-6) < 1):  # clip_grad_norm_'s own test, so the numbers stay the same
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return total.item()


def lr_multiplier(step: int, total_steps: int | None, warmup_steps: int, decay_frac: float) -> float:
    """Linear warm-up from 0 over ``warmup_steps``, constant, then linear decay to 0 over the last
    ``decay_frac`` of ``total_steps`` (no decay when the length of training is unknown)."""
    factor = 1.0
    if warmup_steps > 0:
        factor = min(factor, (step + 1) / warmup_steps)
    if total_steps is not None and decay_frac > 0:
        decay_steps = max(1, round(total_steps * decay_frac))
        factor = min(factor, max(0.0, (total_steps - step) / decay_steps))
    return factor


def sparsity_multiplier(step: int, total_steps: int | None, warmup_frac: float) -> float:
    """Linear warm-up of the sparsity coefficient over the first ``warmup_frac`` of training."""
    if total_steps is None or warmup_frac <= 0:
        return 1.0
    return min(1.0, (step + 1) / max(1.0, total_steps * warmup_frac))


def warmup_top_k(step: int, total_steps: int | None, top_k: int, warmup_frac: float, factor: float) -> int:
    """k at ``step``: from ``factor`` x top_k down to top_k, linearly, over the first ``warmup_frac``
    of training. Starting dense gives every feature gradient before the code becomes sparse, as the
    coefficient warm-up does for the L1/L0 variants; it lowers held-out FVU most for large dictionaries."""
    if total_steps is None or warmup_frac <= 0 or factor <= 1:
        return top_k
    progress = min(1.0, step / max(1.0, total_steps * warmup_frac))
    return max(top_k, round(top_k * (factor + (1 - factor) * progress)))
