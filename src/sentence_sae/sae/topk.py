"""TopK SAE (Gao et al. 2024): each example keeps its k largest activations."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import BaseSAE
from .registry import register_sae


def keep_top_k(acts: torch.Tensor, k: int) -> torch.Tensor:
    """Zero all but the k largest entries of each row."""
    top = acts.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(acts).scatter(-1, top.indices, top.values)


@register_sae
class TopKSAE(BaseSAE):
    architecture = "topk"
    saelens_architecture = "topk"
    uses_auxk = True

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return keep_top_k(F.relu(pre), self.cfg.top_k)
