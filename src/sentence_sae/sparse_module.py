"""Any SAE's encoder as a sentence-transformers module, so that every architecture exports as a
``SparseEncoder``: the module replaces the sentence embedding with ``sae.encode`` of it, exactly the
codes ``text_codes`` gives (thresholds, gates and per-text top-k included), and saves the SAE in its
own subfolder in the SAELens layout. Loading the exported folder imports this class by name, so it
needs sentence-sae installed and ``SparseEncoder(folder, trust_remote_code=True)``: sentence-transformers
asks for that before it imports any module class that is not its own.

Imported only by ``export`` and by sentence-transformers when it loads an exported folder: it pulls
in sentence-transformers, which nothing else here needs at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_sae, save_sae
from .sae import BaseSAE

try:
    from sentence_transformers.base.modules import Module
except ImportError:  # sentence-transformers 5 keeps the base class here
    from sentence_transformers.models import Module


class SAEEncoder(Module):
    """The last module of an exported SparseEncoder: embedding in, the SAE's code out."""

    config_keys: list[str] = []

    def __init__(self, sae: BaseSAE):
        super().__init__()
        self.sae = sae.eval()

    def forward(self, features: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        embedding = features["sentence_embedding"]
        with torch.no_grad():
            features["sentence_embedding"] = self.sae.encode(embedding.to(self.sae.dtype)).to(embedding.dtype)
        return features

    def get_sentence_embedding_dimension(self) -> int:
        return self.sae.d_sae

    get_embedding_dimension = get_sentence_embedding_dimension

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        save_sae(self.sae, Path(output_path))

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             **kwargs: Any) -> "SAEEncoder":
        folder = cls.load_dir_path(model_name_or_path, subfolder=subfolder, token=token, cache_folder=cache_folder,
                                   revision=revision, local_files_only=local_files_only)
        return cls(load_sae(folder))
