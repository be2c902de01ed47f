"""Training: the optimizer, schedules, the training step and the loop around it.

``train_sae(sae, activation_store, model, cfg)`` keeps the earlier script's signature. ``train(cfg)``
does everything from a config: finalize it, load the model, build the store and the SAE, train.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from .activation_store import ActivationsStoreSBERT, EndOfData
from .checkpoint import save_checkpoint_folder, save_sae
from .config import SAEConfig, from_mapping, post_init_cfg
from .embeddings import load_sentence_model
from .evaluation import reconstruction_metrics
from .sae import BaseSAE, create_sae
from .tracking import RunLogger, progress_bar

KEEP_CHECKPOINTS = 2


# ----------------------------------------------------------------------------------------------
# Schedules


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


# ----------------------------------------------------------------------------------------------
# Results


@dataclass
class TrainResult:
    """What a finished run produced: its folder and its held-out metrics."""

    run_dir: Path
    metrics: dict[str, float]
    examples: int
    steps: int
    seconds: float
    end_reason: str
    skipped_texts: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The JSON line the command line prints last."""
        return {
            "run_dir": str(self.run_dir),
            "fvu": self.metrics.get("fvu"),
            "l0": self.metrics.get("l0"),
            "dead_frac": self.metrics.get("dead_frac"),
            "cos": self.metrics.get("cos"),
            "examples": self.examples,
            "seconds": round(self.seconds, 2),
        }


def new_run_dir(cfg: SAEConfig) -> Path:
    """A fresh folder under ``output_dir``; an existing run is never reused or overwritten."""
    base = Path(cfg.output_dir) / f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir, suffix = base, 1
    while run_dir.exists():
        suffix += 1
        run_dir = base.with_name(f"{base.name}-{suffix}")
    run_dir.mkdir(parents=True)
    return run_dir


# ----------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """One training run of one SAE. Small methods, so that variants of the loop can reuse them."""

    def __init__(self, sae: BaseSAE, store: ActivationsStoreSBERT, cfg: SAEConfig, run_dir: Path | None = None):
        self.sae = sae
        self.store = store
        self.cfg = cfg
        self.run_dir = run_dir or new_run_dir(cfg)
        self.step = 0
        self.total_steps: int | None = None
        self.optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_multiplier(step, self.total_steps, cfg.lr_warmup_steps, cfg.lr_decay_frac),
        )
        self.logger = RunLogger(cfg, self.run_dir)
        self.history: list[dict[str, float]] = []
        self.started = time.perf_counter()

    # -------------------------------------------------------------- one step
    def sparsity_coeff(self) -> float:
        return self.sae.sparsity_coefficient * sparsity_multiplier(self.step, self.total_steps, self.cfg.l1_warmup_frac)

    def training_step(self, batch: torch.Tensor) -> dict[str, float]:
        sae = self.sae
        sae.train()
        coeff = self.sparsity_coeff()
        output = sae(batch, sparsity_coeff=coeff)
        output["loss"].backward()
        sae.remove_parallel_decoder_grad()
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(sae.parameters(), self.cfg.max_grad_norm).item()
            if self.cfg.max_grad_norm is not None
            else float("nan")
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sae.normalize_decoder()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step += 1
        with torch.no_grad():
            x = batch.to(output["sae_out"].dtype)
            variance = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
            fvu = ((output["sae_out"] - x).pow(2).sum() / variance).item()
        return {
            "train/loss": output["loss"].item(),
            "train/l2_loss": output["l2_loss"].item(),
            "train/sparsity_loss": output["sparsity_loss"].item(),
            "train/aux_loss": output["aux_loss"].item(),
            "train/l0": output["l0_norm"].item(),
            "train/fvu": fvu,
            "train/dead_frac": output["num_dead_features"] / sae.d_sae,
            "train/grad_norm": grad_norm,
            "train/lr": lr,
            "train/sparsity_coeff": coeff,
            "train/examples": float(self.store.examples_served),
        }

    # -------------------------------------------------------------- evaluation and checkpoints
    def evaluate(self) -> dict[str, float]:
        held_out = self.store.held_out_embeddings()
        if len(held_out) == 0:
            return {}
        return {f"eval/{key}": value for key, value in reconstruction_metrics(self.sae, held_out).items()}

    def save_checkpoint(self) -> Path:
        folder = self.run_dir / "checkpoints" / f"step_{self.step:07d}"
        save_checkpoint_folder(self.sae, folder)
        self.logger.log_checkpoint(folder, f"{self.cfg.name}-checkpoint", self.step)
        for stale in sorted((self.run_dir / "checkpoints").glob("step_*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(stale, ignore_errors=True)
        return folder

    def save_final(self) -> None:
        save_sae(self.sae, self.run_dir)
        self.logger.log_checkpoint(self.run_dir, f"{self.cfg.name}-final", self.step)

    # -------------------------------------------------------------- the run, batch by batch
    def prepare(self, planned: int | None, sample: torch.Tensor) -> None:
        """Plan the schedule and initialize the decoder bias from the first training buffer."""
        if planned is not None:
            self.total_steps = max(1, math.ceil(planned / self.cfg.batch_size))
        self.sae.initialize_b_dec(sample)
        self.started = time.perf_counter()

    def on_batch(self, batch: torch.Tensor) -> dict[str, float]:
        """One step, plus the held-out evaluation and checkpoint when they are due."""
        metrics = self.training_step(batch)
        if self.cfg.perf_log_freq and self.step % self.cfg.perf_log_freq == 0:
            metrics.update(self.evaluate())
            self.history.append({"step": self.step, **metrics})
        self.logger.log(metrics, self.step)
        if self.cfg.checkpoint_freq and self.step % self.cfg.checkpoint_freq == 0:
            self.save_checkpoint()
        return metrics

    def finish(self, end_reason: str) -> TrainResult:
        """Final held-out evaluation, final save, and the result."""
        final = self.evaluate()
        self.logger.log(final, self.step)
        self.save_final()
        seconds = time.perf_counter() - self.started
        metrics = {key.removeprefix("eval/"): value for key, value in final.items()}
        result = TrainResult(self.run_dir, metrics, self.store.examples_served, self.step, seconds,
                             end_reason, self.store.counter.skipped_empty, self.history)
        self.logger.finish({f"final/{k}": v for k, v in metrics.items()})
        return result

    def train(self) -> TrainResult:
        return run_training([self], self.store)[0]


def run_training(trainers: list[Trainer], store: Any) -> list[TrainResult]:
    """Feed every batch of ``store`` to each trainer; several SAEs share one pass of embeddings."""
    started = time.perf_counter()
    planned = store.planned_examples()
    end_reason = "stopped"
    with contextlib.closing(store):
        sample = store.initial_sample()
        for trainer in trainers:
            trainer.prepare(planned, sample)
        label = trainers[0].cfg.sae_type if len(trainers) == 1 else f"{len(trainers)} SAEs"
        with progress_bar(planned, f"train {label}") as bar:
            while True:
                try:
                    batch = store.next_batch()
                except EndOfData as end:
                    end_reason = end.reason
                    break
                metrics = [trainer.on_batch(batch) for trainer in trainers]
                bar.update(len(batch))
                if len(trainers) == 1:
                    bar.set_postfix(loss=f"{metrics[0]['train/loss']:.4f}", L0=f"{metrics[0]['train/l0']:.1f}",
                                    FVU=f"{metrics[0]['train/fvu']:.3f}", refresh=False)
    results = [trainer.finish(end_reason) for trainer in trainers]
    skipped = store.counter.skipped_empty
    print(
        f"Training stopped: {end_reason}; {store.examples_served} examples in {trainers[0].step} steps, "
        f"{time.perf_counter() - started:.1f}s" + (f"; skipped {skipped} empty texts" if skipped else ""),
        file=sys.stderr,
    )
    return results


def train_sae(sae: BaseSAE, activation_store: ActivationsStoreSBERT, model: Any, cfg: SAEConfig) -> TrainResult:
    """Train ``sae`` on the embeddings ``activation_store`` serves (the earlier script's entry point)."""
    cfg = post_init_cfg(cfg, model)
    return Trainer(sae, activation_store, cfg).train()


def embed(cfg: SAEConfig | dict[str, Any]) -> dict[str, Any]:
    """Fill the embedding cache for ``cfg``'s dataset: the rows a run of this config reads (the
    held-out set plus num_examples), or the whole dataset when num_examples is unset."""
    cfg = post_init_cfg(cfg if isinstance(cfg, SAEConfig) else from_mapping(cfg))
    if not cfg.use_cache:
        from .errors import ConfigError

        raise ConfigError("embed writes the embedding cache; drop use_cache=false")
    model = load_sentence_model(cfg.model_name, cfg.device, cfg.encode_backend)
    started = time.perf_counter()
    store = ActivationsStoreSBERT(model, cfg)
    before = store.cache.rows
    stop = None if cfg.num_examples is None else cfg.num_eval_examples + cfg.num_examples
    try:
        rows = store.precompute(stop)
    finally:
        store.close()
    return {"cache_dir": str(store.cache.folder), "rows": rows, "encoded": rows - before,
            "complete": store.cache.complete, "seconds": round(time.perf_counter() - started, 2)}


def train(cfg: SAEConfig | dict[str, Any]) -> TrainResult:
    """Finalize ``cfg``, load the model, stream the data and train an SAE; returns its results."""
    if not isinstance(cfg, SAEConfig):
        cfg = from_mapping(cfg)
    cfg = post_init_cfg(cfg)  # validates before the model loads; the loaded model is cached
    model = load_sentence_model(cfg.model_name, cfg.device, cfg.encode_backend)
    store = ActivationsStoreSBERT(model, cfg)
    sae = create_sae(cfg)
    return Trainer(sae, store, cfg).train()
