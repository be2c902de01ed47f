"""sentence-sae: sparse autoencoders on Sentence-BERT embeddings.

The pipeline, one module per stage: ``config`` -> ``data`` (text streams) -> ``embeddings``
(models, encoding) -> ``activation_store`` (shuffled minibatches) -> ``sae`` (architectures) ->
``training`` -> ``evaluation`` -> analysis. The names of the earlier research script
(``get_default_cfg``, ``post_init_cfg``, ``VanillaSAE``, ``TopKSAE``, ``BatchTopKSAE``,
``JumpReLUSAE``, ``ActivationsStoreSBERT``, ``train_sae``) work as before.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .activation_store import ActivationsStoreSBERT, EmbeddingStore, EndOfData
from .cache import load_embeddings
from .checkpoint import load_sae, save_sae
from .config import SAEConfig, get_default_cfg, post_init_cfg
from .embeddings import load_sentence_model
from .errors import CheckpointError, ConfigError, DataError, ModelError, SentenceSAEError
from .sae import SAE_REGISTRY, BaseSAE, BatchTopKSAE, JumpReLUSAE, TopKSAE, VanillaSAE, create_sae, register_sae
from .sweep import sweep
from .training import TrainResult, embed, train, train_sae

__all__ = [
    "__version__",
    "SAEConfig",
    "get_default_cfg",
    "post_init_cfg",
    "ActivationsStoreSBERT",
    "EmbeddingStore",
    "EndOfData",
    "load_embeddings",
    "embed",
    "BaseSAE",
    "VanillaSAE",
    "TopKSAE",
    "BatchTopKSAE",
    "JumpReLUSAE",
    "SAE_REGISTRY",
    "create_sae",
    "register_sae",
    "train_sae",
    "train",
    "sweep",
    "TrainResult",
    "load_sae",
    "save_sae",
    "load_sentence_model",
    "SentenceSAEError",
    "ConfigError",
    "DataError",
    "ModelError",
    "CheckpointError",
]
