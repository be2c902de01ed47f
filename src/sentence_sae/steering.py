"""What the trainer steers from its own measurements, step by step: which features are dead (for
AuxK) and, for the coefficient-based variants, the sparsity coefficient that reaches target_l0; and
what it watches for: a diverging reconstruction, and results that miss what the run asked for."""

from __future__ import annotations

import math
from typing import Any

import torch

from .checkpoint import FiringFrequencies
from .schedules import sparsity_multiplier

COEFFICIENT_GAIN = 0.03
"""Change of log(coefficient) per step per unit of log(L0 / target). At 0.01 vanilla's L0 drifted
down faster than the coefficient could follow as training sharpened its features (held-out L0 25
for a target of 32 on python-docs); at 0.03 it ends within 10% at every point measured."""
MAX_CHANGE = 0.2
"""The most log(coefficient) changes at one measurement, however far apart measurements are."""
MEASUREMENTS = 200
"""L0 measurements per run on the validation texts (each costs one encoder pass over them)."""
L0_TOLERANCE_K_BASED = 0.10
L0_TOLERANCE_STEERED = 0.15
"""How far unseen texts' mean L0 may miss top_k (k-based variants) or target_l0 (steered ones), as a
fraction of it: the issue's bounds, which the panel checks and a run's end warns past."""


def l0_tolerance(k_based: bool) -> float:
    return L0_TOLERANCE_K_BASED if k_based else L0_TOLERANCE_STEERED


def l0_miss(architecture: str, val_l0: float | None, target: float | None, k_based: bool) -> str | None:
    """A warning when the validation texts' mean L0 misses ``target`` (top_k, or target_l0 while the
    coefficient is steered) by more than l0_tolerance; None otherwise."""
    if val_l0 is None or target is None or not math.isfinite(val_l0):
        return None
    miss = val_l0 / target - 1
    if abs(miss) <= l0_tolerance(k_based):
        return None
    hint = ("fewer of its features fire on unseen texts than asked, and no threshold or coefficient "
            "raises that; it happens on a corpus that is small next to dict_size (the features fit the "
            "training texts closely): more texts or a smaller dict_size get closer" if miss < 0 else
            "the sparsity coefficient had too few steps to settle; a longer run (num_examples) gets closer")
    return (f"warning: {architecture} ends at L0 {val_l0:.1f} on the validation texts, {abs(miss):.0%} "
            f"{'below' if miss < 0 else 'above'} {'top_k' if k_based else 'target_l0'}={target:g}: {hint}")


DIVERGENCE_FACTOR = 100.0
"""A training batch whose reconstruction error exceeds this many times the first batch's (or the
data's variance, the error of predicting the mean, when that is larger) has diverged: a working
run's error falls from about the variance."""


def diverged(relative_error: float, first_relative_error: float) -> bool:
    """Whether an error (over the data's variance) says the run diverged; NaN counts as diverged."""
    return not relative_error <= DIVERGENCE_FACTOR * max(first_relative_error, 1.0)


def fvu_miss(fvu: float | None) -> str | None:
    """A warning when the held-out FVU is above 1: the SAE reconstructs worse than the mean embedding."""
    if fvu is None or not fvu > 1:
        return None
    return (f"warning: the held-out FVU is {fvu:.3g}, above 1: the SAE reconstructs unseen texts worse than their "
            "mean embedding does; train on more examples (num_examples) or lower lr")


class DeadFeatures:
    """How many training examples ago each feature last fired (dead after ``window`` of them), and on
    what share of the examples of the last complete window each fired (its firing frequency, the
    density whose log10 histogram SAELens and sparsify users read)."""

    def __init__(self, d_sae: int, window: int, device: torch.device | str):
        self.window = window
        self.examples_since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.window_counts = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.window_examples = 0
        self.examples_seen = 0
        self.last_window_density: torch.Tensor | None = None
        self.last_window_start = self.last_window_end = 0

    @property
    def mask(self) -> torch.Tensor:
        return self.examples_since_fired >= self.window

    def count(self) -> int:
        return int(self.mask.sum())

    @torch.no_grad()
    def record(self, fire_counts: torch.Tensor, n_examples: int) -> None:
        """After a batch of ``n_examples`` (over all processes) on ``fire_counts`` of which each feature fired."""
        self.examples_since_fired += n_examples
        self.examples_since_fired[fire_counts > 0] = 0
        self.window_counts += fire_counts
        self.window_examples += n_examples
        self.examples_seen += n_examples
        if self.window_examples >= self.window:
            self.last_window_density = self.window_counts.double().cpu() / self.window_examples
            self.last_window_start, self.last_window_end = self.examples_seen - self.window_examples, self.examples_seen
            self.window_counts.zero_()
            self.window_examples = 0

    def densities(self) -> FiringFrequencies:
        """Each feature's firing frequency over the last complete window of training examples (over the
        examples so far when the run is shorter than one window). The window is counted in fixed
        blocks, so it can end before the last dead_feature_window examples that ``mask`` looks back on."""
        if self.last_window_density is not None:
            return FiringFrequencies(self.last_window_density, self.last_window_start, self.last_window_end)
        return FiringFrequencies(self.window_counts.double().cpu() / max(self.window_examples, 1), 0, self.examples_seen)

    def state_dict(self) -> dict[str, Any]:
        return {"examples_since_fired": self.examples_since_fired.cpu().clone(),
                "window_counts": self.window_counts.cpu().clone(), "window_examples": self.window_examples,
                "examples_seen": self.examples_seen, "last_window_density": self.last_window_density,
                "last_window_start": self.last_window_start, "last_window_end": self.last_window_end}

    def load_state_dict(self, state: dict[str, Any] | torch.Tensor) -> None:
        """A checkpoint's state; those of format 3 and earlier hold the counters since firing only."""
        if isinstance(state, torch.Tensor):
            state = {"examples_since_fired": state}
        self.examples_since_fired.copy_(state["examples_since_fired"])
        if "window_counts" in state:
            self.window_counts.copy_(state["window_counts"])
            self.window_examples = int(state["window_examples"])
            self.examples_seen = int(state["examples_seen"])
            self.last_window_density = state["last_window_density"]
            self.last_window_start, self.last_window_end = int(state["last_window_start"]), int(state["last_window_end"])


class SparsityCoefficient:
    """The weight of the sparsity loss at each step: ``initial`` times the warm-up ramp, and, with a
    ``target`` L0, steered multiplicatively after the warm-up so that the L0 measured on texts the SAE
    does not train on approaches it (an integral controller on log(coefficient)). Steering by the
    training batches' L0 overshoots after many passes: memorized texts need fewer features than
    unseen ones (held-out L0 43 for a target of 32, measured)."""

    def __init__(self, initial: float, target: float | None, warmup_frac: float):
        self.initial = initial
        self.log_factor = 0.0  # how far steering has moved the coefficient from ``initial``
        self.target = target
        self.warmup_frac = warmup_frac

    def __call__(self, step: int, total_steps: int | None) -> float:
        return self.initial * math.exp(self.log_factor) * sparsity_multiplier(step, total_steps, self.warmup_frac)

    def interval(self, total_steps: int | None) -> int:
        """Steps between L0 measurements."""
        return max(1, (total_steps or 0) // MEASUREMENTS)

    def due(self, step: int, total_steps: int | None) -> bool:
        """Whether to measure L0 after ``step`` (none before the warm-up ends, none without a target)."""
        return (self.target is not None and sparsity_multiplier(step, total_steps, self.warmup_frac) >= 1
                and step % self.interval(total_steps) == 0)

    def record(self, l0: float, total_steps: int | None) -> None:
        """After a measurement of mean L0 ``l0``, one interval after the last."""
        assert self.target is not None
        change = COEFFICIENT_GAIN * self.interval(total_steps) * math.log((l0 + 1) / (self.target + 1))
        self.log_factor += max(-MAX_CHANGE, min(MAX_CHANGE, change))

    def state_dict(self) -> dict[str, Any]:
        return {"log_factor": self.log_factor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log_factor = float(state["log_factor"])
