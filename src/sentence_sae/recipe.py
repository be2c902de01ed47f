"""The training recipe that follows from the run's size.

The values a user leaves unset (``batch_size``, ``lr``, ``lr_warmup_steps``, ``num_val_examples``,
``relative_grad_clip``) are derived here from how many training examples the run will see, how many
distinct training texts the corpus holds and the architecture, never from constants fitted to one
corpus; an explicit value always wins.
The rules and the measurements behind them are in docs/recipe.md; ``python -m benchmarks.panel``
checks them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .config import SAEConfig
from .errors import ConfigError

STEPS_PER_BATCH = 20
"""The batch is the power of two nearest to sqrt(planned examples / STEPS_PER_BATCH), so the run takes
about STEPS_PER_BATCH x batch steps: longer runs want larger batches, but more slowly than their
length (WordNet: 20,000 examples are best at batch 32, 100,000 at 64; 5,000 at 16 or less). The
larger batch of a longer run is the square-root rule of how the critical batch grows with the data."""
STEPS_PER_PASS = 128
"""...but a pass over the training texts still takes at least this many steps: many passes over a
small corpus want small batches (Debian, 5,000 texts, 20 passes: batch 128 is 3.9% behind batch 16,
batch 32 1.4%)."""
MIN_BATCH, MAX_BATCH = 16, 256
LEARNING_RATE = 3e-3
"""Adam's rate, for every run of the SAEs that start with the encoder at full scale, and for runs of
up to LR_STEPS steps of those that start small (``encoder_init_scale`` < 1: topk, batchtopk)..."""
LR_STEPS = 1_000
"""...whose longer runs take 3e-3 x sqrt(LR_STEPS / steps): the step size of a fixed-length run
shrinks as one over the square root of its length. With a small encoder start, Adam's early steps
are large against the weights: over thousands of steps 3e-3 leaves features fitted to the training
texts alone (python-docs, 2,710 steps at batch 16: 48% never fire on held-out texts, 8-13% at 1e-3)
and at 6,250 steps loses 12-16% of held-out FVU to 1e-3. Starting at full scale, 3e-3 gives lower
held-out FVU in 21 of 24 default-budget cells (jumprelu up to 22%), so those keep it
(``benchmarks/panel.py``, RESULTS.md)."""
WARMUP_FRACTION = 0.05
VALIDATION_FRACTION = 0.05
MIN_VALIDATION, MAX_VALIDATION = 64, 2_048
RELATIVE_CLIP_ARCHITECTURES = ("topk", "batchtopk")
"""The variants that clip the gradient at max_grad_norm times its recent norms rather than at
max_grad_norm itself. With k fixing L0 their loss keeps its scale, and a clip at a fixed norm (which
binds at every step) slowed learning while AuxK revived dead features: on Debian at 6,144 features,
held-out FVU 0.8% (topk) and 1.4% (batchtopk) above relative clipping. matryoshka lost 3.8% with
relative clipping, and vanilla, whose loss changes scale as its coefficient is steered, fell apart
(benchmarks/studies/dead_latents.py, docs/variants.md)."""


class RunSize(NamedTuple):
    """What the recipe is derived from."""

    planned_examples: int | None
    """Training examples the run will see in all (all processes); None when unknown."""
    training_texts: int | None = None
    """Distinct training texts (one pass), at least as many as counted; None when unknown."""


def batch_size_for(planned_examples: int | None, training_texts: int | None = None) -> int:
    """The power of two in [MIN_BATCH, MAX_BATCH] nearest (in log scale) to sqrt(planned examples /
    STEPS_PER_BATCH), halved while a pass over the training texts would take fewer than STEPS_PER_PASS
    steps (MAX_BATCH for a run of unknown length)."""
    if planned_examples is None:
        return MAX_BATCH
    batch = 2 ** round(math.log2(max(1.0, planned_examples / STEPS_PER_BATCH)) / 2)
    while training_texts is not None and batch > MIN_BATCH and training_texts / batch < STEPS_PER_PASS:
        batch //= 2
    return min(MAX_BATCH, max(MIN_BATCH, batch))


def learning_rate_for(steps: int | None, *, small_encoder_start: bool) -> float:
    """LEARNING_RATE, times sqrt(LR_STEPS / steps) past LR_STEPS steps for an SAE whose encoder
    starts small (unknown length: LEARNING_RATE)."""
    if not small_encoder_start or steps is None or steps <= LR_STEPS:
        return LEARNING_RATE
    return float(f"{LEARNING_RATE * math.sqrt(LR_STEPS / steps):.2g}")


def validation_size(cfg: SAEConfig, training_texts: int | None) -> int:
    """Texts held back from the training texts for validation: num_val_examples, or 5% of them
    (MIN_VALIDATION to MAX_VALIDATION, and never more than 10%), MAX_VALIDATION when the corpus's
    size is unknown (a hub stream)."""
    if cfg.num_val_examples is not None:
        return cfg.num_val_examples
    if training_texts is None:
        return MAX_VALIDATION
    share = min(MAX_VALIDATION, max(MIN_VALIDATION, round(VALIDATION_FRACTION * training_texts)))
    return min(share, training_texts // 10)


def texts_worth_counting(cfg: SAEConfig) -> int:
    """How many rows must be counted to size the validation set: past this, it is MAX_VALIDATION."""
    return cfg.num_eval_examples + math.ceil(MAX_VALIDATION / VALIDATION_FRACTION) + MAX_VALIDATION


def sparsity_target(cfg: SAEConfig) -> float:
    """The L0 the coefficient-based variants steer to: target_l0, else top_k."""
    return float(cfg.target_l0 if cfg.target_l0 is not None else cfg.top_k)


def fill_recipe(cfg: SAEConfig, size: RunSize, world_size: int = 1, small_encoder_start: bool = False) -> SAEConfig:
    """``cfg`` with batch_size, lr, lr_warmup_steps and relative_grad_clip filled where unset;
    ``small_encoder_start``: the architecture's encoder_init_scale is below 1 (see LR_STEPS)."""
    changes: dict[str, object] = {}
    batch_size = cfg.batch_size
    if batch_size is None:
        batch_size = max(batch_size_for(size.planned_examples, size.training_texts), world_size)
        batch_size -= batch_size % world_size
        changes["batch_size"] = batch_size
    steps = math.ceil(size.planned_examples / batch_size) if size.planned_examples else 0
    if cfg.lr is None:
        changes["lr"] = learning_rate_for(steps or None, small_encoder_start=small_encoder_start)
    if cfg.lr_warmup_steps is None:
        changes["lr_warmup_steps"] = max(1, round(WARMUP_FRACTION * steps)) if steps else 20
    if cfg.relative_grad_clip is None:
        changes["relative_grad_clip"] = cfg.sae_type in RELATIVE_CLIP_ARCHITECTURES
    if batch_size % world_size:
        raise ConfigError(f"batch_size ({batch_size}) must be divisible by the number of processes ({world_size})")
    buffer = cfg.model_batch_size * cfg.num_batches_in_buffer
    if buffer < batch_size // world_size:
        raise ConfigError(f"the shuffle buffer (model_batch_size x num_batches_in_buffer = {buffer}) is smaller "
                          f"than batch_size ({batch_size}); raise num_batches_in_buffer to at least "
                          f"{-(-batch_size // cfg.model_batch_size)}")
    return cfg.replace(**changes) if changes else cfg
