"""Where training metrics go: ``metrics.jsonl`` in the run folder, and Weights & Biases.

wandb runs offline when there is no login (the run lands in ``<run_dir>/wandb/offline-run-*`` and
can be uploaded later with ``wandb sync``), online when logged in, or not at all when disabled.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .config import SAEConfig
from .errors import CheckpointError, first_line
from .files import checksum_path, disk_full, out_of_space, verify_checksum, write_checksum


METRICS_FILE = "metrics.jsonl"
PHASES = ("start_up", "data_wait", "train", "evaluate", "save")
"""The phases of a run's wall time, logged as ``phase/NAME_s`` with its final metrics."""


class PhaseTimer:
    """Wall seconds this process spent in each phase of a run: start-up (from the start of ``train``
    to the first batch request: model, data, cache), data_wait (training waiting for embeddings to be
    encoded or read), train (the steps), evaluate (held-out evaluations, calibration) and save
    (checkpoints, the final save). A regression shows as a phase that grew."""

    def __init__(self, start_up: float = 0.0):
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.seconds["start_up"] = start_up

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds

    def record(self) -> dict[str, float]:
        return {f"phase/{name}_s": round(value, 3) for name, value in self.seconds.items()}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl, checked against its checksum when the run wrote one."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; give a run folder written by sentence-sae train")
    verify_checksum(path, CheckpointError, "train the run again, or delete the checksum file to read it unchecked")
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise CheckpointError(f"{path} line {number} is not a metrics record; delete that line or train again")
        rows.append(row)
    return rows


class RunLogger:
    """Appends one JSON line per logged step and mirrors it to wandb."""

    def __init__(self, cfg: SAEConfig, run_dir: Path, enabled: bool = True, resume_id: str | None = None):
        self.run_dir = run_dir
        self.enabled = enabled
        self.metrics_path = run_dir / METRICS_FILE
        if enabled:  # the file grows again: its checksum is written when the run finishes
            checksum_path(self.metrics_path).unlink(missing_ok=True)
        self._metrics_file = open(self.metrics_path, "a") if enabled else None
        self.wandb_run: Any = None
        self.exit_code: int | None = None
        """The exit code the run was finished with (None while it runs)."""
        if enabled and cfg.wandb_mode != "disabled":
            self.wandb_run = _start_wandb(cfg, run_dir, resume_id)
        self.wandb_id: str | None = None if self.wandb_run is None else self.wandb_run.id
        """The wandb run's id (kept after it finishes): a resumed training run continues it."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        line = json.dumps({"step": step, **metrics}) + "\n"
        assert self._metrics_file is not None
        try:
            self._metrics_file.write(line)
            self._metrics_file.flush()
        except OSError as exc:
            if out_of_space(self.run_dir, exc):
                raise disk_full(self.metrics_path, len(line), "the steps logged before it are kept") from None
            raise
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def log_checkpoint(self, folder: Path, name: str, step: int) -> None:
        if self.wandb_run is None:
            return
        import wandb

        artifact = wandb.Artifact(name=_artifact_name(name), type="model", metadata={"step": step})
        artifact.add_dir(str(folder))
        self.wandb_run.log_artifact(artifact)

    def finish(self, summary: dict[str, Any], exit_code: int = 0) -> None:
        """Close metrics.jsonl and the wandb run; a non-zero ``exit_code`` marks the run failed."""
        self.exit_code = exit_code
        if self._metrics_file is not None:
            handle, self._metrics_file = self._metrics_file, None
            try:
                handle.close()
                write_checksum(self.metrics_path)
            except OSError:
                if exit_code == 0:
                    raise
                # a run that already failed (a full disk, say) reports that failure, not this one
        if self.wandb_run is not None:
            for key, value in summary.items():
                self.wandb_run.summary[key] = value
            self.wandb_run.finish(exit_code=exit_code)
            self.wandb_run = None


def progress_bar(total: int | float | None, desc: str, **kwargs: Any) -> Any:
    """A tqdm bar in examples/s; refreshed less often when stderr is a log file, not a terminal."""
    from tqdm.auto import tqdm

    if total is not None and math.isinf(total):
        total = None
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="ex", unit_scale=True, dynamic_ncols=True,
                mininterval=0.1 if interactive else 10.0, **kwargs)


def _artifact_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def _start_wandb(cfg: SAEConfig, run_dir: Path, resume_id: str | None = None) -> Any:
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        return wandb.init(
            project=cfg.wandb_project,
            name=cfg.name,
            config=cfg.to_dict(),
            mode=cfg.wandb_mode,
            dir=str(run_dir),
            reinit="finish_previous",
            **({"id": resume_id, "resume": "allow"} if resume_id else {}),
        )
    except Exception as exc:  # a failed login or network must not cost the user the training run
        print(f"warning: wandb could not start ({first_line(exc)}); logging to "
              f"{run_dir / 'metrics.jsonl'} only", file=sys.stderr)
        return None
