"""What the trainer steers from its own measurements, step by step: which features are dead (for
AuxK) and, for the coefficient-based variants, the sparsity coefficient that reaches target_l0."""

from __future__ import annotations

import math
from typing import Any

import torch

from .schedules import sparsity_multiplier

L0_AVERAGE_RATE = 0.05
"""Weight of each batch's L0 in the running average the coefficient is steered by."""
COEFFICIENT_GAIN = 0.01
"""Change of log(coefficient) per step per unit of log(L0 / target): a coefficient off by a factor
of 2 is corrected in about 100 steps, slowly enough that the SAE follows each change."""


class DeadFeatures:
    """How many training examples ago each feature last fired; dead after ``window`` of them."""

    def __init__(self, d_sae: int, window: int, device: torch.device | str):
        self.window = window
        self.examples_since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)

    @property
    def mask(self) -> torch.Tensor:
        return self.examples_since_fired >= self.window

    def count(self) -> int:
        return int(self.mask.sum())

    @torch.no_grad()
    def record(self, fired: torch.Tensor, n_examples: int) -> None:
        """After a batch of ``n_examples`` (over all processes) in which ``fired`` fired."""
        self.examples_since_fired += n_examples
        self.examples_since_fired[fired] = 0


class SparsityCoefficient:
    """The weight of the sparsity loss at each step: ``initial`` times the warm-up ramp, and, with a
    ``target`` L0, steered multiplicatively after the warm-up so that the running L0 of the training
    batches approaches it (an integral controller on log(coefficient))."""

    def __init__(self, initial: float, target: float | None, warmup_frac: float):
        self.log_base = math.log(max(initial, 1e-12))
        self.target = target
        self.warmup_frac = warmup_frac
        self.l0_average: float | None = None

    def __call__(self, step: int, total_steps: int | None) -> float:
        return math.exp(self.log_base) * sparsity_multiplier(step, total_steps, self.warmup_frac)

    def record(self, l0: float, step: int, total_steps: int | None) -> None:
        """After a step whose training batch had mean L0 ``l0``."""
        if self.target is None or sparsity_multiplier(step, total_steps, self.warmup_frac) < 1:
            return
        if self.l0_average is None:
            self.l0_average = l0
        self.l0_average += L0_AVERAGE_RATE * (l0 - self.l0_average)
        self.log_base += COEFFICIENT_GAIN * math.log((self.l0_average + 1) / (self.target + 1))

    def state_dict(self) -> dict[str, Any]:
        return {"log_base": self.log_base, "l0_average": self.l0_average}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log_base = float(state["log_base"])
        self.l0_average = state["l0_average"]
