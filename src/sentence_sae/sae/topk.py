"""TopK SAE (Gao et al. 2024): each example keeps its k largest activations.

In training, with ``sparse_kernel`` on, the forward pass goes through the sparse kernels: only the
selected entries are decoded and differentiated (see kernels.py). BatchTopK shares all of this and
changes only which entries are selected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import BaseSAE, SAEOutput, auxk_loss
from .kernels import Selection, selection_from_topk, sparse_code, to_dense
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
    uses_top_k = True
    default_input_unit_norm = True
    # Small initial codes (as SAELens's decoder rows at norm 0.1 give): held-out FVU 3-6% lower for
    # topk and batchtopk at ten points on WordNet, Debian and python-docs (benchmarks/RESULTS.md, point 6).
    encoder_init_scale = 0.1

    def activate(self, pre: torch.Tensor, k: int | None = None) -> torch.Tensor:
        return keep_top_k(F.relu(pre), k or self.cfg.top_k)

    @torch.no_grad()
    def select(self, pre: torch.Tensor, k: int) -> Selection:
        """The entries the training-mode activation keeps. (Top-k of pre rather than of ReLU(pre):
        it differs only in which zero activations are kept, and skips a pass over the matrix.)"""
        return selection_from_topk(pre.topk(k, dim=-1, sorted=False).indices)

    def forward(self, x: torch.Tensor, k: int | None = None, dead_mask: torch.Tensor | None = None,
                sparsity_coeff: float | None = None) -> SAEOutput:
        if not (self.training and self.cfg.sparse_kernel):
            return super().forward(x, k, dead_mask, sparsity_coeff)
        x_in, stats = self.preprocess_input(x)
        x_cent = x_in - self.b_dec
        with torch.no_grad():
            pre = self.pre_activations(x_in)
        selection = self.select(pre, k or self.cfg.top_k)
        decoded, values = sparse_code(x_cent, self.W_enc, self.b_enc, self.W_dec, pre, selection)
        x_hat = decoded + self.b_dec
        active = values > 0
        fire_counts = torch.bincount(selection.cols[active], minlength=self.d_sae)
        return self.assemble(x, self.sparse_reconstruction_loss(x_cent, x_in, x_hat, pre, selection),
                             x_hat.new_zeros(()), auxk_loss(self, x_in, x_hat, pre, dead_mask, x_cent), x_hat, stats,
                             fire_counts, values[active].detach(), lambda: to_dense(values, selection, self.d_sae))

    def sparse_reconstruction_loss(self, x_cent: torch.Tensor, x_in: torch.Tensor, x_hat: torch.Tensor,
                                   pre: torch.Tensor, selection: Selection) -> torch.Tensor:
        """training_reconstruction_loss of the sparse path."""
        return self.reconstruction_loss(x_hat, x_in)
