"""Reconstruction and sparsity metrics of an SAE on held-out embeddings.

Metrics are computed in eval mode without gradients, so evaluating never changes the SAE (its
dead-feature counters and BatchTopK threshold included), and always on the original embeddings,
whatever normalization the SAE applies inside.
"""

from __future__ import annotations

import torch

from .sae import BaseSAE


class _EvalMode:
    """Puts a module in eval mode for a block and restores its previous mode afterwards."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __enter__(self) -> None:
        self.was_training = self.module.training
        self.module.eval()

    def __exit__(self, *exc: object) -> None:
        self.module.train(self.was_training)


def eval_mode(module: torch.nn.Module) -> _EvalMode:
    return _EvalMode(module)


@torch.no_grad()
def encode_in_batches(sae: BaseSAE, embeddings: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Feature activations of many embeddings, in inference mode, on the SAE's device."""
    chunks = [torch.empty(0, sae.d_sae, dtype=sae.dtype, device=sae.device)]
    with eval_mode(sae):
        for start in range(0, len(embeddings), batch_size):
            chunks.append(sae.encode(embeddings[start : start + batch_size].to(sae.device)))
    return torch.cat(chunks)


@torch.no_grad()
def reconstruction_metrics(sae: BaseSAE, embeddings: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
    """FVU, explained variance, MSE, cosine, norm ratio, L0 and dead/dense fractions on ``embeddings``.

    FVU = sum of squared errors / sum of squared deviations from the mean of ``embeddings``;
    dead features never fire on these embeddings, dense ones fire on more than 10% of them.
    """
    n = len(embeddings)
    if n == 0:
        raise ValueError("no embeddings to evaluate")
    sq_error = 0.0
    cos_sum = 0.0
    norm_ratio_sum = 0.0
    l0_sum = 0.0
    fire_counts = torch.zeros(sae.d_sae, dtype=torch.float64, device=sae.device)
    x_all = embeddings.double()
    variance = (x_all - x_all.mean(0)).pow(2).sum().item()
    with eval_mode(sae):
        for start in range(0, n, batch_size):
            x = embeddings[start : start + batch_size].to(sae.device)
            feature_acts, x_hat = sae.encode_and_reconstruct(x)
            x, x_hat = x.double(), x_hat.double()
            sq_error += (x_hat - x).pow(2).sum().item()
            cos_sum += torch.nn.functional.cosine_similarity(x_hat, x, dim=-1).sum().item()
            norm_ratio_sum += (x_hat.norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)).sum().item()
            fired = feature_acts > 0
            l0_sum += fired.sum().item()
            fire_counts += fired.sum(0).double()
    fvu = sq_error / variance if variance > 0 else float("nan")
    density = fire_counts / n
    return {
        "fvu": fvu,
        "explained_variance": 1.0 - fvu,
        "mse": sq_error / (n * embeddings.shape[1]),
        "cos": cos_sum / n,
        "norm_ratio": norm_ratio_sum / n,
        "l0": l0_sum / n,
        "dead_frac": (density == 0).double().mean().item(),
        "dense_frac": (density > 0.1).double().mean().item(),
    }


