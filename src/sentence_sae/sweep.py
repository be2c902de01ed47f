"""Many SAEs from one stream: a grid of configs trained side by side on the same batches, so the
corpus is encoded (or read from the cache) once for all of them.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Mapping, Sequence

from .activation_store import ActivationsStoreSBERT
from .config import SAEConfig, coerce_value, from_mapping, unknown_key_message
from .embeddings import load_sentence_model
from .errors import ConfigError
from .finalize import default_run_name, post_init_cfg
from .sae import create_sae
from .trainer import Trainer, TrainResult, run_training

# Keys that shape the shared stream of embeddings: one value for the whole sweep.
STREAM_KEYS = frozenset({
    "model_name", "act_size", "dataset_path", "dataset_name", "split", "text_column", "dataset_revision",
    "num_examples", "num_epochs", "num_eval_examples", "model_batch_size", "num_batches_in_buffer",
    "batch_size", "encode_backend", "use_cache", "cache_dir", "cache_shard_size", "device",
})


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["top_k=16,32", "sae_type=topk,batchtopk"]`` -> {"top_k": [16, 32], "sae_type": [...]}."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not values.strip():
            raise ConfigError(f"grid entry '{item}' must look like key=value1,value2")
        grid[key] = [coerce_value(key, value.strip()) for value in values.split(",")]
    return grid


def grid_configs(base: SAEConfig, grid: Mapping[str, Sequence[Any]]) -> list[SAEConfig]:
    """One finalized config per combination of the grid's values, named after its grid values."""
    for key in grid:
        if key not in base:
            raise ConfigError(unknown_key_message(key))
        if key in STREAM_KEYS:
            raise ConfigError(f"'{key}' shapes the shared stream of embeddings and cannot vary in a sweep; "
                              "run separate sweeps for its values")
    if not grid:
        raise ConfigError("a sweep needs at least one grid entry, e.g. --grid top_k=16,32,64")
    configs = []
    for values in itertools.product(*grid.values()):
        changes = dict(zip(grid, values))
        # Each SAE is named after its grid values, behind the name given to the sweep or, without one,
        # its own architecture and size.
        cfg = post_init_cfg(base.replace(**changes, name=None))
        suffix = "-".join(f"{key}{value}" for key, value in changes.items())
        given = base.name if base.name not in (None, default_run_name(base)) else None
        configs.append(cfg.replace(name=f"{given or cfg.name}-{suffix}"))
    return configs


def sweep(cfg: SAEConfig | Mapping[str, Any], grid: Mapping[str, Sequence[Any]]) -> list[TrainResult]:
    """Train one SAE per grid point on a single pass of embeddings; one run folder each."""
    started = time.perf_counter()
    base = cfg if isinstance(cfg, SAEConfig) else from_mapping(cfg)
    configs = grid_configs(base, grid)
    model = load_sentence_model(configs[0].model_name, configs[0].device, configs[0].encode_backend)
    store = ActivationsStoreSBERT(model, configs[0])
    trainers = [Trainer(create_sae(c), store, c, set_up_since=started) for c in configs]
    return run_training(trainers, store)
