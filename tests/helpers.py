"""Helpers for tests: configs that write under a temporary folder, data files and a PCA baseline."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sentence_sae.config import SAEConfig
from sentence_sae.finalize import post_init_cfg


def make_cfg(tmp_path: Path, model=None, **overrides) -> SAEConfig:
    """A finalized config that writes under tmp_path and logs nowhere unless asked."""
    values = dict(output_dir=str(tmp_path / "runs"), wandb_mode="disabled", device="cpu",
                  perf_log_freq=0, checkpoint_freq=0, cache_dir=str(tmp_path / "cache"))
    values.update(overrides)
    return post_init_cfg(SAEConfig().replace(**values), model)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def pca_fvu(train: torch.Tensor, held_out: torch.Tensor, k: int) -> float:
    """Held-out FVU of the best k-dimensional linear code fitted on ``train`` (PCA)."""
    train, held_out = train.double(), held_out.double()
    mean = train.mean(0)
    _, _, v = torch.linalg.svd(train - mean, full_matrices=False)
    basis = v[:k]
    reconstruction = (held_out - mean) @ basis.T @ basis + mean
    variance = (held_out - held_out.mean(0)).pow(2).sum()
    return float((held_out - reconstruction).pow(2).sum() / variance)
