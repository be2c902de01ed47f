"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024).

Features are ordered in nested groups: the first ``matryoshka_widths[0]`` features alone must
reconstruct the input, then the first ``matryoshka_widths[1]``, and so on up to the whole
dictionary. The training loss sums the reconstruction errors of every prefix (as SAELens does),
which pushes general, frequent concepts into the early features and refinements into later ones.
Selection and inference are BatchTopK's, so it is saved like BatchTopK: as a JumpReLU with its
threshold.
"""

from __future__ import annotations

import torch

from ..config import SAEConfig, matryoshka_widths
from .batchtopk import BatchTopKSAE
from .kernels import Selection, sparse_code, subselection
from .registry import register_sae


@register_sae
class MatryoshkaSAE(BatchTopKSAE):
    architecture = "matryoshka"
    saelens_architecture = "jumprelu"
    encoder_init_scale = 1.0  # the small start of topk/batchtopk is not measured with nested losses yet

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.widths = matryoshka_widths(cfg)

    def training_reconstruction_loss(self, feature_acts: torch.Tensor, x_hat: torch.Tensor,
                                     x_in: torch.Tensor) -> torch.Tensor:
        loss = self.reconstruction_loss(x_hat, x_in)
        for width in self.widths[:-1]:
            prefix = feature_acts[:, :width] @ self.W_dec[:width] + self.b_dec
            loss = loss + self.reconstruction_loss(prefix, x_in)
        return loss

    def sparse_reconstruction_loss(self, x_cent: torch.Tensor, x_in: torch.Tensor, x_hat: torch.Tensor,
                                   pre: torch.Tensor, selection: Selection) -> torch.Tensor:
        loss = self.reconstruction_loss(x_hat, x_in)
        for width in self.widths[:-1]:
            decoded, _ = sparse_code(x_cent, self.W_enc, self.b_enc, self.W_dec, pre,
                                     subselection(selection, selection.cols < width))
            loss = loss + self.reconstruction_loss(decoded + self.b_dec, x_in)
        return loss
