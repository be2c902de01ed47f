"""Training: the optimizer, schedules, the training step and the loop around it.

``train_sae(sae, activation_store, model, cfg)`` keeps the earlier script's signature. ``train(cfg)``
does everything from a config: finalize it, load the model, build the store and the SAE, train.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from .activation_store import ActivationsStoreSBERT, EndOfData
from .checkpoint import atomic_write_text, save_checkpoint_folder, save_sae, saved_config
from .config import SAEConfig, from_mapping, post_init_cfg
from .distributed import DistributedContext
from .embeddings import embedding_dim, load_sentence_model
from .errors import CheckpointError, ConfigError, DataError, ModelError, TrainingStopped
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


def warmup_top_k(step: int, total_steps: int | None, top_k: int, warmup_frac: float, factor: float) -> int:
    """k at ``step``: from ``factor`` x top_k down to top_k, linearly, over the first ``warmup_frac``
    of training. Starting dense gives every feature gradient before the code becomes sparse, as the
    coefficient warm-up does for the L1/L0 variants; it lowers held-out FVU most for large dictionaries."""
    if total_steps is None or warmup_frac <= 0 or factor <= 1:
        return top_k
    progress = min(1.0, step / max(1.0, total_steps * warmup_frac))
    return max(top_k, round(top_k * (factor + (1 - factor) * progress)))


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
    try:
        run_dir.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the run folder {run_dir} ({exc.strerror or exc}); choose another "
                          "output_dir") from None
    return run_dir


# ----------------------------------------------------------------------------------------------
# The trainer

TRAINER_STATE = "trainer_state.pt"


class Trainer:
    """One training run of one SAE. Small methods, so that variants of the loop can reuse them."""

    def __init__(self, sae: BaseSAE, store: Any, cfg: SAEConfig, run_dir: Path | None = None,
                 resume_state: dict[str, Any] | None = None, is_main: bool = True):
        self.sae = sae
        self.store = store
        self.cfg = cfg
        self.is_main = is_main
        self.run_dir = run_dir or (new_run_dir(cfg) if is_main else Path(cfg.output_dir))
        self.step = 0
        self.total_steps: int | None = None
        self.history: list[dict[str, float]] = []
        self.started = time.perf_counter()  # the run's seconds include waiting for the first embeddings
        self.last_checkpoint: Path | None = None
        self.optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_multiplier(step, self.total_steps, cfg.lr_warmup_steps, cfg.lr_decay_frac),
        )
        self.resumed = resume_state is not None
        if resume_state is not None:
            self.load_state_dict(resume_state)
        self.logger = RunLogger(cfg, self.run_dir, enabled=is_main,
                                resume_id=resume_state.get("wandb_id") if resume_state else None)

    # -------------------------------------------------------------- one step
    def sparsity_coeff(self) -> float:
        return self.sae.sparsity_coefficient * sparsity_multiplier(self.step, self.total_steps, self.cfg.l1_warmup_frac)

    def training_step(self, batch: torch.Tensor) -> dict[str, float]:
        sae = self.sae
        sae.train()
        coeff = self.sparsity_coeff()
        if sae.uses_top_k:
            sae.training_k = min(sae.d_sae, warmup_top_k(self.step, self.total_steps, self.cfg.top_k,
                                                         self.cfg.top_k_warmup_frac, self.cfg.top_k_warmup_factor))
        output = sae(batch, sparsity_coeff=coeff)
        loss = output["loss"].item()
        if not math.isfinite(loss):
            raise TrainingStopped(
                f"the loss became {loss} at step {self.step + 1}; training stopped without saving the "
                f"diverged SAE{self._checkpoint_note()}; lower lr or max_grad_norm", exit_code=1)
        output["loss"].backward()
        sae.all_reduce_gradients()
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
            "train/loss": loss,
            "train/l2_loss": output["l2_loss"].item(),
            "train/sparsity_loss": output["sparsity_loss"].item(),
            "train/aux_loss": output["aux_loss"].item(),
            "train/l0": output["l0_norm"].item(),
            "train/fvu": fvu,
            "train/dead_frac": output["num_dead_features"] / sae.d_sae,
            "train/grad_norm": grad_norm,
            "train/lr": lr,
            "train/sparsity_coeff": coeff,
            "train/examples": float(self.store.examples_served * self.world_size),
        }

    @property
    def world_size(self) -> int:
        return getattr(self.sae, "world_size", 1)

    # -------------------------------------------------------------- evaluation and checkpoints
    def evaluate(self) -> dict[str, float]:
        held_out = self.store.held_out_embeddings()
        if len(held_out) == 0:
            return {}
        return {f"eval/{key}": value for key, value in reconstruction_metrics(self.sae, held_out).items()}

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs, the data position included."""
        return {
            "format_version": 1,
            "step": self.step,
            "total_steps": self.total_steps,
            "sae": {name: tensor.detach().cpu().clone() for name, tensor in self.sae.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "stores": gather_store_states(self.store, self.sae),
            "history": self.history,
            "wandb_id": self.logger.wandb_id,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.total_steps = state["total_steps"]
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = list(state.get("history", []))

    def save_checkpoint(self) -> Path | None:
        """checkpoints/step_NNNNNNN/: the SAE (SAELens layout) and trainer_state.pt, written under a
        temporary name and renamed into place; the last KEEP_CHECKPOINTS are kept."""
        state = self.state_dict()  # every process takes part: the data positions are gathered
        if not self.is_main:
            return None
        folder = self.run_dir / "checkpoints" / f"step_{self.step:07d}"
        try:
            save_checkpoint_folder(self.sae, folder, lambda staging: torch.save(state, staging / TRAINER_STATE))
        except OSError as exc:
            raise CheckpointError(
                f"could not write the checkpoint {folder} ({exc.strerror or exc}){self._checkpoint_note()}"
            ) from None
        self.last_checkpoint = folder
        self.logger.log_checkpoint(folder, f"{self.cfg.name}-checkpoint", self.step)
        for stale in sorted((self.run_dir / "checkpoints").glob("step_*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(stale, ignore_errors=True)
        return folder

    def _checkpoint_note(self) -> str:
        if self.last_checkpoint is None:
            return ""
        return (f"; the checkpoint {self.last_checkpoint} is intact: continue with "
                f"'sentence-sae train --resume {self.run_dir}'")

    def save_final(self) -> None:
        if not self.is_main:
            return
        try:
            save_sae(self.sae, self.run_dir)
        except OSError as exc:
            raise CheckpointError(f"could not save the SAE into {self.run_dir} ({exc.strerror or exc})"
                                  f"{self._checkpoint_note()}") from None
        self.logger.log_checkpoint(self.run_dir, f"{self.cfg.name}-final", self.step)

    # -------------------------------------------------------------- the run, batch by batch
    def prepare(self, planned: int | None, sample: torch.Tensor) -> None:
        """Plan the schedule and initialize the decoder bias from the first training buffer."""
        if self.resumed:
            return
        if planned is not None:
            self.total_steps = max(1, math.ceil(planned / self.store.cfg.batch_size))
        self.sae.initialize_b_dec(sample)
        self.sae.synchronize()  # data-parallel processes start from rank 0's decoder bias

    def on_batch(self, batch: torch.Tensor) -> dict[str, float]:
        """One step, plus the held-out evaluation and checkpoint when they are due."""
        metrics = self.training_step(batch)
        if self.is_main and self.cfg.perf_log_freq and self.step % self.cfg.perf_log_freq == 0:
            metrics.update(self.evaluate())
            self.history.append({"step": self.step, **metrics})
        self.logger.log(metrics, self.step)
        if self.cfg.checkpoint_freq and self.step % self.cfg.checkpoint_freq == 0:
            self.save_checkpoint()
        return metrics

    def finish(self, end_reason: str) -> TrainResult:
        """Final held-out evaluation, final save, and the result."""
        final = self.evaluate() if self.is_main else {}
        self.logger.log(final, self.step)
        self.save_final()
        seconds = time.perf_counter() - self.started
        metrics = {key.removeprefix("eval/"): value for key, value in final.items()}
        result = TrainResult(self.run_dir, metrics, self.store.examples_served * self.world_size, self.step,
                             seconds, end_reason, self.store.counter.skipped_empty, self.history)
        self.logger.finish({f"final/{k}": v for k, v in metrics.items()})
        return result

    def train(self) -> TrainResult:
        return run_training([self], self.store)[0]


class StopOnSignals:
    """Turns SIGINT and SIGTERM into a request the training loop answers at the next step."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __enter__(self) -> "StopOnSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def run_training(trainers: list[Trainer], store: Any) -> list[TrainResult]:
    """Feed every batch of ``store`` to each trainer; several SAEs share one pass of embeddings."""
    started = time.perf_counter()
    with _close_logs_on_error(trainers):
        end_reason = feed_batches(trainers, store)
        # the store is closed by now: the final evaluation does not compete with its prefetching
        results = [trainer.finish(end_reason) for trainer in trainers]
    skipped = store.counter.skipped_empty
    if trainers[0].is_main:
        print(
            f"Training stopped: {end_reason}; {store.examples_served * trainers[0].world_size} examples in "
            f"{trainers[0].step} steps, {time.perf_counter() - started:.1f}s"
            + (f"; skipped {skipped} empty texts" if skipped else ""),
            file=sys.stderr,
        )
    return results


def feed_batches(trainers: list[Trainer], store: Any) -> str:
    """Train every trainer on each batch until the store has none left, then close it; returns why."""
    planned = store.planned_examples()
    with contextlib.closing(store), StopOnSignals() as signals:
        sample = store.initial_sample()
        for trainer in trainers:
            trainer.prepare(planned, sample)
        label = trainers[0].cfg.sae_type if len(trainers) == 1 else f"{len(trainers)} SAEs"
        bar = progress_bar(planned, f"train {label}", initial=store.examples_served * trainers[0].world_size,
                           **({} if trainers[0].is_main else {"disable": True}))
        with bar:
            while True:
                try:
                    batch = next_batch_everywhere(store, trainers[0].sae)
                except DataError as exc:  # reading failed part-way: say what is safe
                    raise DataError(f"{exc}{trainers[0]._checkpoint_note()}") from None
                if batch is None:
                    return store.end_reason or "no training examples left"
                metrics = [trainer.on_batch(batch) for trainer in trainers]
                bar.update(len(batch) * trainers[0].world_size)
                if len(trainers) == 1:
                    bar.set_postfix(loss=f"{metrics[0]['train/loss']:.4f}", L0=f"{metrics[0]['train/l0']:.1f}",
                                    FVU=f"{metrics[0]['train/fvu']:.3f}", refresh=False)
                if signals.received is not None:
                    stop_on_signal(trainers, signals.received)


@contextlib.contextmanager
def _close_logs_on_error(trainers: list[Trainer]) -> Iterator[None]:
    """A run that stops on an error still leaves a complete metrics.jsonl and a wandb run marked failed."""
    try:
        yield
    except BaseException:
        for trainer in trainers:
            trainer.logger.finish({}, exit_code=1)
        raise


def gather_store_states(store: Any, sae: BaseSAE) -> list[dict[str, Any]]:
    """The data positions of every process (rank order); one entry without data parallelism."""
    state = store.state_dict()
    if sae.data_parallel is None:
        return [state]
    import torch.distributed as dist

    states: list[Any] = [None] * sae.world_size
    dist.all_gather_object(states, state)
    return states


def next_batch_everywhere(store: Any, sae: BaseSAE) -> torch.Tensor | None:
    """The next batch, or None when this process, or any other of a data-parallel run, has none."""
    try:
        batch = store.next_batch()
    except EndOfData:
        batch = None
    if not sae.all_have(batch is not None):
        return None
    return batch


def stop_on_signal(trainers: list[Trainer], signum: int) -> None:
    saved = [trainer.save_checkpoint() for trainer in trainers]
    name = signal.Signals(signum).name
    where = ", ".join(str(folder) for folder in saved if folder) or "nowhere (not the main process)"
    raise TrainingStopped(
        f"{name} received at step {trainers[0].step}; checkpoint written to {where}; continue with "
        f"'sentence-sae train --resume {trainers[0].run_dir}'", exit_code=128 + signum)


# ----------------------------------------------------------------------------------------------
# Entry points


def train_sae(sae: BaseSAE, activation_store: Any, model: Any, cfg: SAEConfig) -> TrainResult:
    """Train ``sae`` on the embeddings ``activation_store`` serves (the earlier script's entry point)."""
    cfg = post_init_cfg(cfg, model)
    if sae.d_in != embedding_dim(model):
        raise ModelError(f"the SAE reads {sae.d_in}-dimensional embeddings, but the model gives "
                         f"{embedding_dim(model)}-dimensional ones")
    return Trainer(sae, activation_store, cfg).train()


def embed(cfg: SAEConfig | dict[str, Any]) -> dict[str, Any]:
    """Fill the embedding cache for ``cfg``'s dataset: the rows a run of this config reads (the
    held-out set plus num_examples), or the whole dataset when num_examples is unset."""
    cfg = post_init_cfg(cfg if isinstance(cfg, SAEConfig) else from_mapping(cfg))
    if not cfg.use_cache:
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
    """Finalize ``cfg``, load the model, stream the data and train an SAE; returns its results.
    Under torchrun (WORLD_SIZE > 1) the processes train one SAE data-parallel."""
    if not isinstance(cfg, SAEConfig):
        cfg = from_mapping(cfg)
    with DistributedContext.from_environment() as context:
        cfg, store, sae = _set_up(context, cfg)
        return Trainer(sae, store, cfg, run_dir=context.run_dir(cfg), is_main=context.is_main).train()


def _set_up(context: DistributedContext, cfg: SAEConfig) -> tuple[SAEConfig, Any, BaseSAE]:
    """This process's finalized config, activation store and SAE, for a new or a resumed run."""
    cfg = post_init_cfg(context.configure(cfg))  # validates before the model loads (cached)
    model = load_sentence_model(cfg.model_name, cfg.device, cfg.encode_backend)
    return cfg, context.make_store(model, cfg), context.wrap(create_sae(cfg))


def latest_checkpoint(run_dir: Path) -> Path:
    folders = sorted((run_dir / "checkpoints").glob("step_*")) if (run_dir / "checkpoints").is_dir() else []
    complete = [folder for folder in folders if (folder / TRAINER_STATE).is_file()]
    if not complete:
        raise CheckpointError(f"{run_dir} holds no checkpoint to resume from (checkpoints/step_*/{TRAINER_STATE}); "
                              "it may have been trained with checkpoint_freq 0")
    return complete[-1]


def load_trainer_state(folder: Path) -> dict[str, Any]:
    path = folder / TRAINER_STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or corrupt pickles
        raise CheckpointError(f"{path} is corrupt or truncated ({str(exc).splitlines()[0][:120]}); resume from "
                              "an earlier checkpoint by deleting this folder") from None


def resume(run_dir: str | Path) -> TrainResult:
    """Continue the run in ``run_dir`` from its last checkpoint, exactly where it stopped: same
    weights, optimizer, schedules, counters, random states and data position."""
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
        store.load_state_dict(state["stores"][context.rank])
        truncate_metrics(folder / "metrics.jsonl", int(state["step"]))
        print(f"Resuming {folder} from step {state['step']} ({checkpoint.name})", file=sys.stderr)
        return Trainer(sae, store, cfg, run_dir=folder, resume_state=state, is_main=context.is_main).train()


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the metrics of steps after ``step``: a resumed run logs them again."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))
