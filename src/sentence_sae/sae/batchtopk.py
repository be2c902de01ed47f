"""BatchTopK SAE (Bussmann et al. 2024): a batch keeps its k x batch largest activations in all.

Training codes depend on the rest of the batch; inference must not. During training the SAE keeps
a running estimate of the smallest activation the batch top-k selects, and in eval mode it keeps
every activation above that threshold, so each example is encoded on its own (a JumpReLU with one
threshold shared by all features, which is how SAELens stores it).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..config import SAEConfig
from .kernels import Selection, batch_top_k, selection_from_flat
from .base import calibration_pre_activations
from .registry import register_sae
from .topk import TopKSAE

THRESHOLD_EMA_RATE = 0.01
"""Weight of each new batch in the threshold estimate, once more than 1/rate batches were seen."""


@register_sae
class BatchTopKSAE(TopKSAE):
    architecture = "batchtopk"
    saelens_architecture = "jumprelu"
    has_threshold = True

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros(self.d_sae, dtype=self.dtype, device=self.device))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long, device=self.device))

    def activate(self, pre: torch.Tensor, k: int | None = None) -> torch.Tensor:
        acts = F.relu(pre)
        if not self.training:
            return acts * (pre > self.threshold)
        flat = acts.flatten()
        top = flat.topk(min((k or self.cfg.top_k) * acts.shape[0], flat.numel()), sorted=False)
        return torch.zeros_like(flat).scatter(0, top.indices, top.values).view_as(acts)

    @torch.no_grad()
    def select(self, pre: torch.Tensor, k: int) -> Selection:
        k_total = min(k * pre.shape[0], pre.numel())
        flat = batch_top_k(pre, k_total, candidates_per_row=4 * k)
        return selection_from_flat(flat, pre.shape[0], pre.shape[1])

    @torch.no_grad()
    def update_running_stats(self, active_values: torch.Tensor,
                             mean: Callable[[torch.Tensor], torch.Tensor] = lambda value: value) -> None:
        if active_values.numel() == 0:
            return
        batch_threshold = mean(active_values.min().to(self.dtype))
        # A running mean over the first 1/rate batches, an EMA after: no bias towards the zero start.
        rate = max(THRESHOLD_EMA_RATE, 1.0 / float(self.threshold_updates + 1))
        self.threshold += rate * (batch_threshold - self.threshold)
        self.threshold_updates += 1

    @torch.no_grad()
    def calibrate_threshold(self, embeddings: torch.Tensor, l0: float) -> None:
        """Set the inference threshold so that ``embeddings`` (texts the SAE did not train on) keep
        ``l0`` active features each on average: the midpoint between the (l0 x n)-th and the next
        largest positive pre-activation. The running estimate from training batches misses on unseen
        texts in both directions (early dense batches in short runs, sharp memorized activations
        after many passes); this does not depend on either."""
        if len(embeddings) == 0:
            return
        pre = calibration_pre_activations(self, embeddings)
        positive = pre[pre > 0].float()
        keep = min(round(l0 * len(embeddings)), len(positive))
        if keep == 0:
            return
        top = positive.topk(min(keep + 1, len(positive))).values
        threshold = top[keep - 1] if keep == len(top) else (top[keep - 1] + top[keep]) / 2
        self.threshold.fill_(threshold.item())

    def weights_for_saving(self) -> dict[str, torch.Tensor]:
        return {**super().weights_for_saving(), "threshold": self.threshold.detach()}

    @torch.no_grad()
    def load_saved_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_saved_weights(tensors)
        self.threshold.copy_(tensors["threshold"])
        self.threshold_updates.fill_(1)
