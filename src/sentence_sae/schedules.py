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


RELATIVE_CLIP_DECAY = 0.99
"""The running mean of relative clipping forgets at this rate per step: it follows about the last 100
steps' norms."""


class GradientClipper:
    """Clips the gradients' total norm at ``max_norm`` (None: never), or, ``relative``, at ``max_norm``
    times the running mean of the recent steps' norms (as clipped; RELATIVE_CLIP_DECAY per step), so
    that only steps larger than usual are cut. Its state goes into checkpoints: a resumed run clips as
    the run it continues would have."""

    def __init__(self, max_norm: float | None, relative: bool = False):
        self.max_norm, self.relative = max_norm, relative
        self.recent_norm: float | None = None

    def __call__(self, parameters: list[torch.nn.Parameter]) -> float:
        """The gradients' total norm before clipping (nan when ``max_norm`` is None)."""
        if not self.relative:
            return clip_gradients(parameters, self.max_norm)
        if self.max_norm is None:
            return float("nan")
        total = torch.nn.utils.get_total_norm([param.grad for param in parameters if param.grad is not None])
        norm = total.item()
        limit = norm if self.recent_norm is None else self.max_norm * self.recent_norm
        if norm > limit:
            torch.nn.utils.clip_grads_with_norm_(parameters, limit, total)
        seen = min(norm, limit)
        self.recent_norm = (seen if self.recent_norm is None
                            else RELATIVE_CLIP_DECAY * self.recent_norm + (1 - RELATIVE_CLIP_DECAY) * seen)
        return norm

    def state_dict(self) -> dict[str, float | None]:
        return {"recent_norm": self.recent_norm}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        self.recent_norm = state["recent_norm"]


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
