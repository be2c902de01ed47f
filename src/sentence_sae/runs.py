"""A finished run opened for analysis: its SAE, its config, the model that made its embeddings,
and a corpus to read (the run's own dataset, or another one); and the codes of texts under an SAE."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_sae, saved_config_and_provenance
from .config import SAEConfig
from .corpus import Corpus
from .data import DatasetSource
from .embeddings import encode_texts, load_sentence_model, load_sentence_model_deferred, require_dim, resolve_prompt
from .errors import CheckpointError
from .sae import BaseSAE, eval_mode


@dataclass
class Run:
    folder: Path
    sae: BaseSAE
    cfg: SAEConfig
    model: Any
    trained_on: DatasetSource | None
    """The training data, or None when unknown (a SAELens folder)."""

    @property
    def own_dataset(self) -> bool:
        """Whether the corpus is the dataset the SAE was trained on (paths compared resolved)."""
        return self.trained_on is not None and self.trained_on == DatasetSource.from_config(self.cfg)

    def corpus(self) -> Corpus:
        return Corpus(self.model, self.cfg)

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embeddings of texts as the run's training texts were embedded (same model and prompt)."""
        return encode_texts(self.model, texts, prompt=resolve_prompt(self.model, self.cfg.prompt, self.cfg.prompt_name))


def open_run(run_dir: str | Path, device: str | None = None, model: Any = None, **overrides: Any) -> Run:
    """Load the SAE in ``run_dir`` and the model named in its config; ``overrides`` change config
    keys (dataset_path, text_column, ...) for reading another corpus."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise CheckpointError(f"run folder {folder} does not exist; give the folder a train run printed as run_dir")
    cfg, ours = saved_config_and_provenance(folder)
    trained_on = DatasetSource.from_config(cfg) if ours else None
    changes = {key: value for key, value in overrides.items() if value is not None}
    cfg = cfg.replace(**changes, device=device or "cpu")
    sae = load_sae(folder, device=cfg.device)
    if model is None:  # loaded when first asked to encode: a corpus whose embeddings are all cached never is
        model = load_sentence_model_deferred(cfg.model_name, cfg.device, cfg.encode_backend)
    cfg.act_size = require_dim(model, sae.d_in, f"the SAE in {folder}", cfg.model_name)
    return Run(folder, sae, cfg, model, trained_on)


@torch.no_grad()
def text_codes(sae: BaseSAE, texts: list[str], model: Any = None, batch_size: int = 32) -> torch.Tensor:
    """Feature activations of ``texts`` (len(texts), d_sae), in inference mode, embedded with ``model``
    (by default the Sentence-BERT model the SAE was trained on, loaded once per process) after the
    prompt the SAE was trained with."""
    if model is None:
        model = load_sentence_model(sae.cfg.model_name, str(sae.device), sae.cfg.encode_backend)
    require_dim(model, sae.d_in)
    with eval_mode(sae):
        prompt = resolve_prompt(model, sae.cfg.prompt, sae.cfg.prompt_name)
        return sae.encode(encode_texts(model, list(texts), batch_size, prompt=prompt).to(sae.device))
