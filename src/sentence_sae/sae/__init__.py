"""SAE architectures, one module each, registered by name for ``sae_type``.

A new architecture subclasses :class:`BaseSAE`, sets ``architecture`` and decorates itself with
:func:`register_sae`; every command can then train, save and load it.
"""

from __future__ import annotations

from .base import BaseSAE, SAEOutput, eval_mode
from .registry import SAE_REGISTRY, create_sae, register_sae, sae_classes
from .vanilla import VanillaSAE
from .topk import TopKSAE
from .batchtopk import BatchTopKSAE
from .jumprelu import JumpReLUSAE
from .matryoshka import MatryoshkaSAE
from .gated import GatedSAE

__all__ = [
    "BaseSAE",
    "SAEOutput",
    "eval_mode",
    "SAE_REGISTRY",
    "sae_classes",
    "create_sae",
    "register_sae",
    "VanillaSAE",
    "TopKSAE",
    "BatchTopKSAE",
    "JumpReLUSAE",
    "MatryoshkaSAE",
    "GatedSAE",
]
