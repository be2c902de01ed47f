"""ReLU SAE with an L1 penalty on decoder-norm-weighted activations."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import BaseSAE
from .registry import register_sae


@register_sae
class VanillaSAE(BaseSAE):
    architecture = "vanilla"
    saelens_architecture = "standard"
    default_l1_coeff = 0.11
    uses_auxk = True  # without it a fifth of a 6,144-feature dictionary ended dead (benchmarks/studies/dead_latents.py)

    def activate(self, pre: torch.Tensor, k: int | None = None) -> torch.Tensor:
        return F.relu(pre)

    def sparsity_loss(self, pre: torch.Tensor, feature_acts: torch.Tensor, coeff: float) -> torch.Tensor:
        # Weighting by decoder norms keeps the penalty honest even if the rows drift from unit norm.
        return coeff * (feature_acts * self.W_dec.norm(dim=-1)).to(self.loss_dtype).sum(-1).mean()
