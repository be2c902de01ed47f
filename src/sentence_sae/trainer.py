"""The trainer: one SAE's training state (optimizer, schedules, dead features, step) and the loop
that feeds it batches.

The SAE is a model; everything that changes from step to step lives here and goes into the SAE's
``forward`` as arguments: k during the top_k warm-up, the dead-feature mask for AuxK, and the
sparsity coefficient during its warm-up. Collective operations of data-parallel runs go through
``collectives`` (see distributed.py), never through the SAE.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .activation_store import BatchSource, EndOfData
from .checkpoint import save_checkpoint_folder, save_firing_frequencies, save_sae
from .config import SAEConfig
from .distributed import SingleProcess
from .errors import CheckpointError, DataError, DiskFullError, TrainingStopped
from .files import atomic_write, free_bytes, human_bytes, new_run_dir, out_of_space
from .metrics import reconstruction_metrics
from .sae import BaseSAE, eval_mode
from .sae.base import initialize_b_dec, normalize_decoder, remove_parallel_decoder_grad
from .recipe import RunSize, fill_recipe, sparsity_target
from .schedules import GradientClipper, adam, lr_multiplier, warmup_top_k
from .signals import StopOnSignals
from .steering import DeadFeatures, SparsityCoefficient, diverged, fvu_miss, l0_miss
from .tracking import PhaseTimer, RunLogger, progress_bar

KEEP_CHECKPOINTS = 2
TRAINER_STATE = "trainer_state.pt"
NO_VARIANCE = 1e-9
"""Embeddings whose variance is below this fraction of their squared norm differ by rounding only."""
TRAINING_SAMPLE = 2_048
"""Training embeddings kept from the first buffer to report the training FVU at the end."""


def spread(embeddings: torch.Tensor) -> float:
    """Mean squared distance of the embeddings from their mean: the error of predicting the mean."""
    x = embeddings.double()
    return (x - x.mean(0)).pow(2).sum(-1).mean().item()


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a (nested) state: what writing it takes on disk, about."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(item) for item in value)
    return 0


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
        """The JSON line the command line prints last: held-out metrics, and the FVU on training and on
        validation texts (far below held-out on training texts: memorized), and L0 on validation texts."""
        shown = ("fvu", "train_fvu", "val_fvu", "l0", "val_l0", "dead_frac", "silent_frac_heldout", "heldout_texts",
                 "cos")
        return {"run_dir": str(self.run_dir), **{key: self.metrics.get(key) for key in shown},
                "examples": self.examples, "skipped_texts": self.skipped_texts, "seconds": round(self.seconds, 2)}


class Trainer:
    """One training run of one SAE. Small methods, so that variants of the loop can reuse them."""

    def __init__(self, sae: BaseSAE, store: BatchSource, cfg: SAEConfig, run_dir: Path | None = None,
                 resume_state: dict[str, Any] | None = None, is_main: bool = True,
                 collectives: SingleProcess | None = None, set_up_since: float | None = None):
        """``set_up_since``: when setting the run up began (``time.perf_counter()``), for the start-up phase."""
        self.phases = PhaseTimer(0.0 if set_up_since is None else time.perf_counter() - set_up_since)
        self.sae = sae
        self.store = store
        self.cfg = cfg
        self.is_main = is_main
        self.collectives = collectives or SingleProcess()
        self.cfg = cfg = self._with_recipe(cfg, store)
        store.batch_size = cfg.batch_size // self.world_size
        sae.cfg = cfg  # the SAE is saved with the values it was trained with
        self.collectives.broadcast(sae)  # data-parallel processes start from rank 0's weights
        self.dead_features = DeadFeatures(sae.d_sae, cfg.dead_feature_window, sae.device)
        self.sparsity = SparsityCoefficient(
            sae.sparsity_coefficient, None if sae.uses_top_k or cfg.l1_coeff is not None else sparsity_target(cfg),
            cfg.l1_warmup_frac)
        self.training_sample = torch.empty(0, sae.d_in)
        self.run_dir = run_dir or (new_run_dir(cfg.output_dir, cfg.name) if is_main else Path(cfg.output_dir))
        self.step = 0
        self.first_error: float | None = None
        """The first step's squared reconstruction error per example over the data's variance."""
        self.reference_variance: float | None = None
        self.total_steps: int | None = None
        self.history: list[dict[str, float]] = []
        self.started = time.perf_counter()  # the run's seconds include waiting for the first embeddings
        self.last_checkpoint: Path | None = None
        self.optimizer = adam(list(sae.parameters()), cfg.lr, (cfg.beta1, cfg.beta2))
        self.clipper = GradientClipper(cfg.max_grad_norm, bool(cfg.relative_grad_clip))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_multiplier(step, self.total_steps, cfg.lr_warmup_steps, cfg.lr_decay_frac),
        )
        self.resumed = resume_state is not None
        if resume_state is not None:
            self.load_state_dict(resume_state)
        self.logger = RunLogger(cfg, self.run_dir, enabled=is_main,
                                resume_id=resume_state.get("wandb_id") if resume_state else None)

    def _with_recipe(self, cfg: SAEConfig, store: BatchSource) -> SAEConfig:
        """``cfg`` with what the run's size decides filled in (see recipe.py)."""
        planned = store.planned_examples()
        total = None if planned is None else planned * self.world_size
        num_val = getattr(store, "num_val_examples", cfg.num_val_examples)
        if num_val != cfg.num_val_examples:
            cfg = cfg.replace(num_val_examples=num_val)
        return fill_recipe(cfg, RunSize(total, getattr(store, "training_texts", None)), self.world_size,
                           small_encoder_start=self.sae.encoder_init_scale < 1)

    # -------------------------------------------------------------- one step
    def sparsity_coeff(self) -> float:
        return self.sparsity(self.step, self.total_steps)

    def k(self) -> int | None:
        """Features kept per example at this step (k-based SAEs), from the top_k warm-up."""
        if not self.sae.uses_top_k:
            return None
        return min(self.sae.d_sae, warmup_top_k(self.step, self.total_steps, self.cfg.top_k,
                                                self.cfg.top_k_warmup_frac, self.cfg.top_k_warmup_factor))

    def training_step(self, batch: torch.Tensor) -> dict[str, float]:
        sae, collectives = self.sae, self.collectives
        sae.train()
        coeff = self.sparsity_coeff()
        output = sae(batch, k=self.k(), dead_mask=self.dead_features.mask, sparsity_coeff=coeff)
        self.dead_features.record(collectives.summed(output.fire_counts), collectives.total(len(batch)))
        sae.update_running_stats(output.active_values, collectives.mean)
        loss = output.loss.item()
        if not math.isfinite(loss):
            raise TrainingStopped(
                f"the loss became {loss} at step {self.step + 1}; training stopped without saving the "
                f"diverged SAE{self._checkpoint_note()}; lower lr or max_grad_norm", exit_code=1)
        output.loss.backward()
        collectives.all_reduce_gradients(sae)
        remove_parallel_decoder_grad(sae)
        grad_norm = self.clipper(list(sae.parameters()))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        normalize_decoder(sae)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step += 1
        if self.sparsity.due(self.step, self.total_steps):
            self.sparsity.record(self._steering_l0(output.l0_norm), self.total_steps)
        with torch.no_grad():
            x = batch.to(output.sae_out.dtype)
            squared_error = (output.sae_out - x).pow(2).sum().item()
            fvu = squared_error / max((x - x.mean(0)).pow(2).sum().item(), 1e-12)
        self._stop_if_diverged(squared_error / len(batch), x)
        return {
            "train/loss": loss,
            "train/l2_loss": output.l2_loss.item(),
            "train/sparsity_loss": output.sparsity_loss.item(),
            "train/aux_loss": output.aux_loss.item(),
            "train/similarity_loss": output.similarity_loss.item(),
            "train/l0": output.l0_norm.item(),
            "train/fvu": fvu,
            "train/dead_frac": self.dead_features.count() / sae.d_sae,
            "train/grad_norm": grad_norm,
            "train/lr": lr,
            "train/sparsity_coeff": coeff,
            "train/examples": float(self.store.examples_served * self.world_size),
        }

    def _stop_if_diverged(self, squared_error: float, batch: torch.Tensor) -> None:
        """Stop, without saving, a run whose reconstruction has blown up (see steering.diverged). The
        error is measured against the variance of the fixed training sample, not the batch's: a batch of
        near-identical texts has almost none."""
        if self.reference_variance is None:  # the batch's own, for a trainer stepped without prepare()
            sample = self.training_sample if len(self.training_sample) > 1 else batch
            self.reference_variance = max(spread(sample), 1e-12)
        relative = squared_error / self.reference_variance
        if self.first_error is None:
            self.first_error = relative
        if diverged(relative, self.first_error):
            raise TrainingStopped(
                f"training diverged: the reconstruction error of step {self.step}'s batch is {relative:.3g} times the "
                f"data's variance, against {self.first_error:.3g} at the first step; training stopped without saving "
                f"the diverged SAE{self._checkpoint_note()}; lower lr or max_grad_norm", exit_code=1)

    def _steering_l0(self, batch_l0: torch.Tensor) -> float:
        """L0 on the validation texts (the same in every process), or the batch's without them."""
        validation = self.store.validation_embeddings()
        if len(validation) == 0:
            return self.collectives.mean(batch_l0.detach()).item()
        with torch.no_grad(), eval_mode(self.sae):
            return (self.sae.encode(validation) > 0).sum(-1).float().mean().item()

    @property
    def world_size(self) -> int:
        return self.collectives.world_size

    # -------------------------------------------------------------- evaluation and checkpoints
    def evaluate(self) -> dict[str, float]:
        held_out = self.store.held_out_embeddings()
        if len(held_out) == 0:
            return {}
        return {f"eval/{key}": value for key, value in reconstruction_metrics(self.sae, held_out).items()}

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs, the data position included."""
        return {
            "format_version": 4,
            "step": self.step,
            "total_steps": self.total_steps,
            "sae": {name: tensor.detach().cpu().clone() for name, tensor in self.sae.state_dict().items()},
            "dead_features": self.dead_features.state_dict(),
            "sparsity": self.sparsity.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_clipper": self.clipper.state_dict(),
            "stores": self.collectives.gather(self.store.state_dict()),
            "history": self.history,
            "wandb_id": self.logger.wandb_id,
            "first_error": self.first_error,
            "training_sample": self.training_sample.cpu().clone(),
            "dataset_fingerprint": self.store.dataset_fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.total_steps = state["total_steps"]
        weights = dict(state["sae"])
        # Checkpoints of format 1 kept the dead-feature counters among the SAE's buffers.
        since_fired = state.get("dead_features", weights.pop("examples_since_fired", None))
        self.sae.load_state_dict(weights)
        if since_fired is not None:
            self.dead_features.load_state_dict(since_fired)
        if "sparsity" in state:
            self.sparsity.load_state_dict(state["sparsity"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "grad_clipper" in state:
            self.clipper.load_state_dict(state["grad_clipper"])
        elif self.clipper.relative:  # a checkpoint from before relative clipping: go on as it began
            self.clipper.relative = False
            self.cfg = self.sae.cfg = self.cfg.replace(relative_grad_clip=False)
        self.history = list(state.get("history", []))
        self.first_error = state.get("first_error")
        if state.get("training_sample") is not None:  # checkpoints of format 3 on: train_fvu as if never stopped
            self.training_sample = state["training_sample"].to(self.sae.device)

    def save_checkpoint(self) -> Path | None:
        """checkpoints/step_NNNNNNN/: the SAE (SAELens layout) and trainer_state.pt, written under a
        temporary name and renamed into place; the last KEEP_CHECKPOINTS are kept."""
        state = self.state_dict()  # every process takes part: the data positions are gathered
        if not self.is_main:
            return None
        folder = self.run_dir / "checkpoints" / f"step_{self.step:07d}"
        try:
            save_checkpoint_folder(self.sae, folder, lambda staging: atomic_write(
                staging / TRAINER_STATE, lambda tmp: torch.save(state, tmp)))
        except OSError as exc:
            if out_of_space(self.run_dir, exc):
                size = tensor_bytes(state) + tensor_bytes(self.sae.weights_for_saving())
                raise CheckpointError(
                    f"no space left on the disk of {folder.parent} for the checkpoint {folder.name} (it needs about "
                    f"{human_bytes(size)}, {human_bytes(free_bytes(self.run_dir) or 0)} free)"
                    f"{self._checkpoint_note() or '; no earlier checkpoint was written'}; free disk space first") from None
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
            save_firing_frequencies(self.dead_features.densities(), self.run_dir)
        except DiskFullError as exc:
            raise CheckpointError(f"{exc}{self._checkpoint_note()}") from None
        except OSError as exc:
            raise CheckpointError(f"could not save the SAE into {self.run_dir} ({exc.strerror or exc})"
                                  f"{self._checkpoint_note()}") from None
        self.logger.log_checkpoint(self.run_dir, f"{self.cfg.name}-final", self.step)

    # -------------------------------------------------------------- the run, batch by batch
    def prepare(self, planned: int | None, sample: torch.Tensor) -> None:
        """Plan the schedule and initialize the decoder bias from the first training buffer."""
        if self.resumed:
            if len(self.training_sample) == 0:
                self.training_sample = sample[:TRAINING_SAMPLE].clone()
            return
        # A fixed set of training embeddings (saved with every checkpoint) for the training FVU at the end
        self.training_sample = sample[:TRAINING_SAMPLE].clone()
        if len(sample) > 1 and spread(sample) <= NO_VARIANCE * sample.double().pow(2).sum(-1).mean().item():
            raise DataError(f"the first {len(sample)} training embeddings are all identical (no variance): the "
                            "texts are probably all the same; give a dataset of distinct texts")
        if planned is not None:
            self.total_steps = max(1, math.ceil(planned / self.store.batch_size))
        initialize_b_dec(self.sae, sample)
        self.collectives.broadcast(self.sae)  # data-parallel processes start from rank 0's decoder bias

    def on_batch(self, batch: torch.Tensor) -> dict[str, float]:
        """One step, plus the held-out evaluation and checkpoint when they are due."""
        with self.phases.phase("train"):
            metrics = self.training_step(batch)
        if self.is_main and self.cfg.perf_log_freq and self.step % self.cfg.perf_log_freq == 0:
            with self.phases.phase("evaluate"):
                metrics.update(self.evaluate())
            self.history.append({"step": self.step, **metrics})
        self.logger.log(metrics, self.step)
        if self.cfg.checkpoint_freq and self.step % self.cfg.checkpoint_freq == 0:
            with self.phases.phase("save"):
                self.save_checkpoint()
        return metrics

    def calibrate(self) -> None:
        """SAEs with an inference threshold (batchtopk, matryoshka; jumprelu when its coefficient is
        steered): set it on the validation texts, so that texts the SAE never trained on keep top_k
        (target_l0) features on average."""
        validation = self.store.validation_embeddings()
        target = self.l0_target()
        if hasattr(self.sae, "calibrate_threshold") and len(validation) and target is not None:
            self.sae.calibrate_threshold(validation, target)

    def l0_target(self) -> float | None:
        """The mean L0 the run should end at on unseen texts: top_k, or target_l0 while the
        coefficient is steered (None when l1_coeff fixes it)."""
        return float(self.cfg.top_k) if self.sae.uses_top_k else self.sparsity.target

    def final_metrics(self) -> dict[str, float]:
        """Held-out metrics, plus FVU and L0 on the validation texts and on a sample of training texts, and
        the two dead measures: ``dead_frac``, features that did not fire in the last dead_feature_window
        training examples (what SAELens and sparsify call dead), and ``silent_frac_heldout``, features
        that fire on none of the ``heldout_texts`` held-out texts (on a few hundred texts, many rare but
        live features are silent)."""
        final = self.evaluate()
        if "eval/silent_frac" in final:
            final["eval/silent_frac_heldout"] = final.pop("eval/silent_frac")
            final["eval/heldout_texts"] = len(self.store.held_out_embeddings())
        final["eval/dead_frac"] = self.dead_features.count() / self.sae.d_sae
        for prefix, embeddings in (("val", self.store.validation_embeddings()), ("train", self.training_sample)):
            if len(embeddings) > 1:
                measured = reconstruction_metrics(self.sae, embeddings)
                final.update({f"eval/{prefix}_fvu": measured["fvu"], f"eval/{prefix}_l0": measured["l0"]})
        return final

    def finish(self, end_reason: str) -> TrainResult:
        """Threshold calibration, final evaluation, final save, and the result; the final metrics are
        logged with the run's phase breakdown."""
        with self.phases.phase("evaluate"):
            if self.is_main:
                self.calibrate()
            final = self.final_metrics() if self.is_main else {}
        warnings = (l0_miss(self.sae.architecture, final.get("eval/val_l0"), self.l0_target(), self.sae.uses_top_k),
                    fvu_miss(final.get("eval/fvu")))
        for warning in filter(None, warnings):
            print(warning, file=sys.stderr)
        with self.phases.phase("save"):
            self.save_final()
        self.logger.log({**final, **self.phases.record()}, self.step)
        seconds = time.perf_counter() - self.started
        metrics = {key.removeprefix("eval/"): value for key, value in final.items()}
        result = TrainResult(self.run_dir, metrics, self.store.examples_served * self.world_size, self.step,
                             seconds, end_reason, self.store.counter.skipped_empty, self.history)
        self.logger.finish({f"final/{k}": v for k, v in metrics.items()})
        return result

    def train(self) -> TrainResult:
        return run_training([self], self.store)[0]


def run_training(trainers: list[Trainer], store: BatchSource) -> list[TrainResult]:
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
            + (f"; skipped {skipped} rows with a null or empty text" if skipped else ""),
            file=sys.stderr,
        )
    return results


def feed_batches(trainers: list[Trainer], store: BatchSource) -> str:
    """Train every trainer on each batch until the store has none left, then close it; returns why."""
    planned = store.planned_examples()
    with contextlib.closing(store), StopOnSignals() as signals:
        sample = timed_data_wait(trainers, store.initial_sample)
        for trainer in trainers:
            trainer.prepare(planned, sample)
        label = trainers[0].cfg.sae_type if len(trainers) == 1 else f"{len(trainers)} SAEs"
        bar = progress_bar(planned, f"train {label}", initial=store.examples_served * trainers[0].world_size,
                           **({} if trainers[0].is_main else {"disable": True}))
        with bar:
            while True:
                try:
                    batch = timed_data_wait(trainers, lambda: next_batch_everywhere(store, trainers[0].collectives))
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


def timed_data_wait(trainers: list[Trainer], read: Callable[[], Any]) -> Any:
    """``read()``, its time counted as every trainer's data wait (they share one pass of embeddings)."""
    started = time.perf_counter()
    try:
        return read()
    finally:
        seconds = time.perf_counter() - started
        for trainer in trainers:
            trainer.phases.add("data_wait", seconds)


def next_batch_everywhere(store: BatchSource, collectives: SingleProcess) -> torch.Tensor | None:
    """The next batch, or None when this process, or any other of a data-parallel run, has none."""
    try:
        batch = store.next_batch()
    except EndOfData:
        batch = None
    if not collectives.all_true(batch is not None):
        return None
    return batch


def stop_on_signal(trainers: list[Trainer], signum: int) -> None:
    saved = [trainer.save_checkpoint() for trainer in trainers]
    name = signal.Signals(signum).name
    where = ", ".join(str(folder) for folder in saved if folder) or "nowhere (not the main process)"
    raise TrainingStopped(
        f"{name} received at step {trainers[0].step}; checkpoint written to {where}; continue with "
        f"'sentence-sae train --resume {trainers[0].run_dir}'", exit_code=128 + signum)
