"""TopK SAE (Gao et al. 2024): each example keeps its k largest activations.

In training, with ``sparse_kernel`` on, the forward pass goes through the sparse kernels: only the
selected entries are decoded and differentiated (see kernels.py). BatchTopK shares all of this and
changes only which entries are selected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import SAEConfig
from .base import BaseSAE, SAEOutput
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

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.training_k = cfg.top_k
        """k in training mode; the trainer starts it higher (top_k_warmup_factor) and lowers it to top_k."""

    @property
    def k(self) -> int:
        return self.training_k if self.training else self.cfg.top_k

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return keep_top_k(F.relu(pre), self.k)

    @torch.no_grad()
    def select(self, pre: torch.Tensor) -> Selection:
        """The entries the training-mode activation keeps. (Top-k of pre rather than of ReLU(pre):
        it differs only in which zero activations are kept, and skips a pass over the matrix.)"""
        return selection_from_topk(pre.topk(self.k, dim=-1, sorted=False).indices)

    def forward(self, x: torch.Tensor, sparsity_coeff: float | None = None) -> SAEOutput:
        if not (self.training and self.cfg.sparse_kernel):
            return super().forward(x, sparsity_coeff)
        x_in, stats = self.preprocess_input(x)
        x_cent = x_in - self.b_dec
        with torch.no_grad():
            pre = self.pre_activations(x_in)
        selection = self.select(pre)
        decoded, values = sparse_code(x_cent, self.W_enc, self.b_enc, self.W_dec, pre, selection)
        x_hat = decoded + self.b_dec
        l2_loss = self.sparse_reconstruction_loss(x_cent, x_in, x_hat, pre, selection)
        aux = self.sparse_auxiliary_loss(x_cent, x_in, x_hat, pre)
        active = values > 0
        fired = torch.zeros(self.d_sae, dtype=torch.bool, device=self.device)
        fired[selection.cols[active]] = True
        self.record_fired(fired, len(x_in))
        self.update_running_stats(values[active].detach())
        n = len(x_in)
        return self._output(l2_loss, l2_loss.new_zeros(()), aux, x_hat, stats,
                            lambda: to_dense(values, selection, self.d_sae),
                            active.to(self.loss_dtype).sum() / n, values.to(self.loss_dtype).sum() / n)

    def sparse_reconstruction_loss(self, x_cent: torch.Tensor, x_in: torch.Tensor, x_hat: torch.Tensor,
                                   pre: torch.Tensor, selection: Selection) -> torch.Tensor:
        """training_reconstruction_loss of the sparse path."""
        return self.reconstruction_loss(x_hat, x_in)

    def sparse_auxiliary_loss(self, x_cent: torch.Tensor, x_in: torch.Tensor, x_hat: torch.Tensor,
                              pre: torch.Tensor) -> torch.Tensor:
        """The AuxK loss of BaseSAE.auxiliary_loss, through the sparse kernels."""
        dead = self.dead_mask()
        n_dead = int(dead.sum())
        if n_dead == 0 or self.cfg.aux_penalty <= 0:
            return x_in.new_zeros(())
        dead_features = dead.nonzero().squeeze(1)
        with torch.no_grad():
            top = F.relu(pre[:, dead_features]).topk(min(self.cfg.top_k_aux, n_dead), dim=-1, sorted=False)
        selection = selection_from_topk(dead_features[top.indices])
        aux_decoded, _ = sparse_code(x_cent, self.W_enc, self.b_enc, self.W_dec, pre, selection)
        residual = (x_in - x_hat).detach()
        scale = min(n_dead / self.cfg.top_k_aux, 1.0)
        return self.cfg.aux_penalty * scale * self.reconstruction_loss(aux_decoded, residual)
