"""Training from a config: ``train(cfg)`` finalizes it, loads the model, builds the store and the
SAE, and trains; ``resume(run_dir)`` continues a run exactly; ``embed(cfg)`` fills the embedding
cache; ``train_sae(sae, activation_store, model, cfg)`` keeps the earlier script's signature.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .activation_store import ActivationsStoreSBERT, BatchSource
from .cache_fill import fill_cache, fill_cache_shared
from .checkpoint import saved_config
from .config import SAEConfig, from_mapping
from .distributed import DistributedContext
from .embeddings import load_sentence_model_deferred, require_dim
from .errors import CheckpointError, ConfigError, first_line
from .files import atomic_write_text, verify_checksum
from .finalize import post_init_cfg
from .sae import BaseSAE, create_sae
from .tracking import read_metrics
from .trainer import TRAINER_STATE, Trainer, TrainResult


def train_sae(sae: BaseSAE, activation_store: BatchSource, model: Any, cfg: SAEConfig) -> TrainResult:
    """Train ``sae`` on the embeddings ``activation_store`` serves (the earlier script's entry point).
    ``model`` may be None for embeddings you already have (an ``EmbeddingStore``): their width is
    the array's."""
    width = getattr(activation_store, "d_in", None)
    cfg = post_init_cfg(cfg, model, embedding_width=width if model is None else None)
    if model is not None:
        require_dim(model, sae.d_in)
    if width is not None and width != sae.d_in:
        raise ConfigError(f"the SAE reads {sae.d_in}-dimensional embeddings, but the store serves {width}-dimensional "
                          "ones; create the SAE from a config finalized for these embeddings")
    return Trainer(sae, activation_store, cfg).train()


def embed(cfg: SAEConfig | dict[str, Any]) -> dict[str, Any]:
    """Fill the embedding cache for ``cfg``'s dataset: the rows a run of this config reads (the
    held-out set plus num_examples), or the whole dataset when num_examples is unset. Another
    process filling the same cache is waited for; a signal stops it with a line saying how far the
    cache is valid. Under torchrun (WORLD_SIZE > 1) the processes share the work and fill one cache."""
    cfg = post_init_cfg(cfg if isinstance(cfg, SAEConfig) else from_mapping(cfg))
    if not cfg.use_cache:
        raise ConfigError("embed writes the embedding cache; drop use_cache=false")
    with DistributedContext.from_environment() as context:
        cfg = context.configure(cfg)
        model = load_sentence_model_deferred(cfg.model_name, cfg.device, cfg.encode_backend)
        if not context.distributed:
            return fill_cache(model, cfg)
        return fill_cache_shared(model, cfg, context.rank, context.world_size, context.collectives)


def train(cfg: SAEConfig | dict[str, Any]) -> TrainResult:
    """Finalize ``cfg``, load the model, stream the data and train an SAE; returns its results.
    Under torchrun (WORLD_SIZE > 1) the processes train one SAE data-parallel."""
    started = time.perf_counter()
    if not isinstance(cfg, SAEConfig):
        cfg = from_mapping(cfg)
    with DistributedContext.from_environment() as context:
        cfg, store, sae = _set_up(context, cfg)
        return Trainer(sae, store, cfg, run_dir=context.run_dir(cfg), is_main=context.is_main,
                       collectives=context.collectives, set_up_since=started).train()


def _set_up(context: DistributedContext, cfg: SAEConfig) -> tuple[SAEConfig, ActivationsStoreSBERT, BaseSAE]:
    """This process's finalized config, activation store and SAE, for a new or a resumed run."""
    cfg = post_init_cfg(context.configure(cfg))  # validates before the model loads
    model = load_sentence_model_deferred(cfg.model_name, cfg.device, cfg.encode_backend)
    return cfg, context.make_store(model, cfg), create_sae(cfg)


def latest_checkpoint(run_dir: Path) -> Path:
    folders = sorted((run_dir / "checkpoints").glob("step_*")) if (run_dir / "checkpoints").is_dir() else []
    complete = [folder for folder in folders if (folder / TRAINER_STATE).is_file()]
    if not complete:
        raise CheckpointError(f"{run_dir} holds no checkpoint to resume from (checkpoints/step_*/{TRAINER_STATE}); "
                              "it may have been trained with checkpoint_freq 0")
    return complete[-1]


def load_trainer_state(folder: Path) -> dict[str, Any]:
    path = folder / TRAINER_STATE
    verify_checksum(path, CheckpointError, "resume from an earlier checkpoint by deleting this folder")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or corrupt pickles
        raise CheckpointError(f"{path} is corrupt or truncated ({first_line(exc)[:120]}); resume from "
                              "an earlier checkpoint by deleting this folder") from None


def resume(run_dir: str | Path) -> TrainResult:
    """Continue the run in ``run_dir`` from its last checkpoint, exactly where it stopped: same
    weights, optimizer, schedules, counters, random states and data position."""
    started = time.perf_counter()
    folder = Path(run_dir)
    if not folder.is_dir():
        raise CheckpointError(f"run folder {folder} does not exist")
    checkpoint = latest_checkpoint(folder)
    state = load_trainer_state(checkpoint)
    with DistributedContext.from_environment() as context:
        if len(state["stores"]) != context.world_size:
            raise CheckpointError(f"{checkpoint} was written by {len(state['stores'])} process(es); resume it "
                                  f"with as many, not {context.world_size}")
        cfg, store, sae = _set_up(context, saved_config(checkpoint))
        check_same_data(state.get("dataset_fingerprint"), store.dataset_fingerprint, cfg, checkpoint)
        store.load_state_dict(state["stores"][context.rank])
        truncate_metrics(folder / "metrics.jsonl", int(state["step"]))
        print(f"Resuming {folder} from step {state['step']} ({checkpoint.name})", file=sys.stderr)
        return Trainer(sae, store, cfg, run_dir=folder, resume_state=state, is_main=context.is_main,
                       collectives=context.collectives, set_up_since=started).train()


def check_same_data(recorded: str | None, current: str | None, cfg: SAEConfig, checkpoint: Path) -> None:
    """A resumed run must read the data it was trained on: its position in the data means nothing else."""
    if recorded is not None and current is not None and recorded != current:
        raise CheckpointError(f"dataset {cfg.dataset_path} has changed since {checkpoint} was written (fingerprint "
                              f"{current[:16]}, the run recorded {recorded[:16]}); restore the data, or train a new run")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the metrics of steps after ``step``: a resumed run logs them again."""
    if not path.is_file():
        return
    kept = [row for row in read_metrics(path) if row["step"] <= step]
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))
