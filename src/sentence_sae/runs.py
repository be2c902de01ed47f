"""A finished run opened for analysis: its SAE, its config, the model that made its embeddings,
and a corpus to read (the run's own dataset, or another one)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import load_sae, saved_config
from .config import SAEConfig
from .corpus import Corpus
from .embeddings import embedding_dim, load_sentence_model
from .errors import CheckpointError, ModelError
from .sae import BaseSAE


@dataclass
class Run:
    folder: Path
    sae: BaseSAE
    cfg: SAEConfig
    model: Any
    trained_on: tuple[str, str | None, str]
    """(dataset_path, dataset_name, split) of the training data."""

    @property
    def own_dataset(self) -> bool:
        """Whether the corpus is the dataset the SAE was trained on."""
        return self.trained_on == (self.cfg.dataset_path, self.cfg.dataset_name, self.cfg.split)

    def corpus(self) -> Corpus:
        return Corpus(self.model, self.cfg)


def open_run(run_dir: str | Path, device: str | None = None, model: Any = None, **overrides: Any) -> Run:
    """Load the SAE in ``run_dir`` and the model named in its config; ``overrides`` change config
    keys (dataset_path, text_column, ...) for reading another corpus."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise CheckpointError(f"run folder {folder} does not exist; give the folder a train run printed as run_dir")
    cfg = saved_config(folder)
    trained_on = (cfg.dataset_path, cfg.dataset_name, cfg.split)
    changes = {key: value for key, value in overrides.items() if value is not None}
    cfg = cfg.replace(**changes, device=device or "cpu")
    sae = load_sae(folder, device=cfg.device)
    if model is None:
        model = load_sentence_model(cfg.model_name, cfg.device, cfg.encode_backend)
    width = embedding_dim(model)
    if width != sae.d_in:
        raise ModelError(
            f"the SAE in {folder} reads {sae.d_in}-dimensional embeddings, but model '{cfg.model_name}' gives "
            f"{width}-dimensional ones; use the model the SAE was trained with"
        )
    cfg.act_size = width
    return Run(folder, sae, cfg, model, trained_on)
