"""sentence-sae: sparse autoencoders on Sentence-BERT embeddings.

The pipeline, one module per stage, each importing only from the stages before it (docs/pipeline.md's
module table gives the whole order; tests/test_architecture.py enforces it): ``config`` ->
``data`` / ``embeddings`` -> ``cache`` / ``corpus`` / ``activation_store`` -> ``sae`` ->
``finalize`` -> ``checkpoint`` -> ``trainer`` / ``training`` -> ``evaluation`` -> ``analysis`` -> ``cli``. The names of the earlier research script
(``get_default_cfg``, ``get_experiment_cfg``, ``post_init_cfg``, ``sae_classes``, ``VanillaSAE``,
``TopKSAE``, ``BatchTopKSAE``, ``JumpReLUSAE``, ``ActivationsStoreSBERT``, ``train_sae``) work as before.
"""

from __future__ import annotations

from .version import __version__
from .activation_store import ActivationsStoreSBERT, EmbeddingStore, EndOfData
from .cache import load_embeddings
from .checkpoint import load_sae, save_sae
from .config import SAEConfig, get_default_cfg
from .embeddings import load_sentence_model
from .errors import CacheError, CheckpointError, ConfigError, DataError, ModelError, SentenceSAEError
from .finalize import get_experiment_cfg, post_init_cfg
from .runs import text_codes
from .sae import *  # noqa: F403
from .sae import __all__ as SAE_NAMES
from .sweep import sweep
from .trainer import Trainer, TrainResult
from .training import embed, resume, train, train_sae

# The analysis entry points load on first use: they pull in scipy and the browser, about a second that
# every command (and every torchrun worker) would otherwise pay at start-up.
_LAZY = {"explain_run": ("analysis.explain", "explain_run"), "compare": ("analysis.compare", "compare_texts"),
         "diff": ("analysis.diff", "diff_run"), "search": ("analysis.search", "search_run"),
         "feature_search": ("analysis.search", "feature_search")}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'sentence_sae' has no attribute '{name}'")
    import importlib

    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(f".{module}", __name__), attribute)


__all__ = [
    "__version__",
    "SAEConfig",
    "get_default_cfg",
    "post_init_cfg",
    "get_experiment_cfg",
    "ActivationsStoreSBERT",
    "EmbeddingStore",
    "EndOfData",
    "load_embeddings",
    "embed",
    *SAE_NAMES,  # the SAE classes, SAEOutput, eval_mode, the registry
    "train_sae",
    "train",
    "resume",
    "Trainer",
    "sweep",
    "TrainResult",
    "load_sae",
    "save_sae",
    "load_sentence_model",
    "text_codes",
    *_LAZY,  # explain_run, compare, diff, search, feature_search
    "SentenceSAEError",
    "ConfigError",
    "DataError",
    "ModelError",
    "CheckpointError",
    "CacheError",
]
