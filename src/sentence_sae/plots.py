"""Pictures people would rather look at than numbers: feature densities and training curves (PNG)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError
from .files import atomic_write
from .tracking import METRICS_FILE, read_metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def density_histogram(densities: np.ndarray, path: Path, title: str = "",
                      unit: str = "fraction of texts on which a feature fires") -> Path:
    """Histogram of log10 feature densities (by default the fraction of texts on which each feature
    fires), with the never-firing features counted in the caption."""
    plt = _pyplot()
    densities = np.asarray(densities, dtype=np.float64)
    alive = densities[densities > 0]
    fig, ax = plt.subplots(figsize=(7, 4))
    if len(alive):
        ax.hist(np.log10(alive), bins=50, color="#3b6ea5")
    ax.set_xlabel(f"log10 feature density ({unit})")
    ax.set_ylabel("features")
    dead = int((densities == 0).sum())
    ax.set_title(title or "Feature densities", fontsize=10, wrap=True)
    ax.text(0.99, 0.97, f"{len(densities)} features\n{dead} never fire\n{int((densities > 0.1).sum())} fire on >10%",
            transform=ax.transAxes, ha="right", va="top", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return path


CURVES = [("train/loss", "loss"), ("eval/fvu", "held-out FVU"), ("train/l0", "L0 (training batches)"),
          ("train/dead_frac", "dead fraction (window)")]


def training_curves(run_dir: Path, path: Path | None = None) -> Path:
    """Loss, held-out FVU, L0 and dead fraction against training examples, from metrics.jsonl."""
    rows = read_metrics(Path(run_dir) / METRICS_FILE)
    if not any(key in row for row in rows for key, _ in CURVES):
        raise CheckpointError(f"{Path(run_dir) / METRICS_FILE} holds no training metrics to plot; train the run "
                              "first (or give the folder of a run that logged steps)")
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    last_examples = 0.0
    for ax, (key, label) in zip(axes.flat, CURVES):
        points = []
        for row in rows:
            last_examples = row.get("train/examples", last_examples)
            value = row.get(key)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                points.append((last_examples, value))
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, color="#3b6ea5", marker="o" if key.startswith("eval") else None, markersize=3)
        ax.set_title(label)
        ax.set_xlabel("training examples")
        ax.grid(alpha=0.3)
    fig.suptitle(Path(run_dir).name, fontsize=10)
    fig.tight_layout()
    path = path or Path(run_dir) / "training_curves.png"
    save_figure(fig, path)
    return path


def firing_histogram(run_dir: Path, path: Path | None = None) -> Path:
    """The log10 histogram of the features' firing frequencies over the last complete window of
    dead_feature_window training examples (the run's sparsity.safetensors), as SAELens and sparsify
    users read it."""
    from .checkpoint import read_firing_frequencies

    run_dir = Path(run_dir)
    firing = read_firing_frequencies(run_dir)
    path = path or run_dir / "firing_frequency.png"
    span = (f"training examples {firing.first_example + 1:,}-{firing.last_example:,}" if firing.last_example
            else "a window of training examples")  # a file written without its span
    return density_histogram(firing.densities.numpy(), path, f"Firing frequency in training: {run_dir.name}",
                             unit=f"fraction of {span} on which a feature fired")


def save_figure(fig: Any, path: Path) -> None:
    """Write a figure as PNG atomically (a full disk leaves the previous picture, and says so)."""
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        _pyplot().close(fig)
