"""The name -> class table behind ``sae_type``."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import SAEConfig
    from .base import BaseSAE

SAE_REGISTRY: dict[str, type["BaseSAE"]] = {}
sae_classes = SAE_REGISTRY
"""The earlier script's name for the table: ``sae_classes[cfg["sae_type"]](cfg)`` builds an SAE."""

T = TypeVar("T", bound=type)


def register_sae(cls: T) -> T:
    """Class decorator: make an SAE class selectable by its ``architecture`` name."""
    SAE_REGISTRY[cls.architecture] = cls  # type: ignore[attr-defined]
    return cls


def create_sae(cfg: "SAEConfig") -> "BaseSAE":
    """A freshly initialized SAE of the type ``cfg.sae_type`` (cfg must be finalized)."""
    if cfg.sae_type not in SAE_REGISTRY:
        raise ConfigError(f"unknown sae_type '{cfg.sae_type}'; valid types: {', '.join(sorted(SAE_REGISTRY))}")
    return SAE_REGISTRY[cfg.sae_type](cfg)
