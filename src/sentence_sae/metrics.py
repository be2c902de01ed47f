"""Metrics of an SAE on embeddings: reconstruction, sparsity, neighbours, similarities and labels.

Metrics are computed in eval mode without gradients, so evaluating never changes the SAE (its
dead-feature counters and BatchTopK threshold included), and always on the original embeddings,
whatever normalization the SAE applies inside.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from .errors import DataError
from .sae import BaseSAE, eval_mode

DENSE_CODE_VALUES = 1 << 24
"""Dense codes are made at most this many values (64 MB in fp32) at a time, whatever the size of the
corpus chunk they come from: 8,192 rows at 65,536 features would be 2 GB."""


def code_blocks(sae: BaseSAE, embeddings: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, dense feature activations) of consecutive blocks of ``embeddings``, in inference
    mode, each block at most DENSE_CODE_VALUES values."""
    rows = max(1, DENSE_CODE_VALUES // sae.d_sae)
    with torch.no_grad(), eval_mode(sae):
        for start in range(0, len(embeddings), rows):
            yield start, sae.encode(embeddings[start : start + rows].to(sae.device))


@torch.no_grad()
def encode_in_batches(sae: BaseSAE, embeddings: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Feature activations of many embeddings, in inference mode, on the SAE's device."""
    chunks = [torch.empty(0, sae.d_sae, dtype=sae.dtype, device=sae.device)]
    with eval_mode(sae):
        for start in range(0, len(embeddings), batch_size):
            chunks.append(sae.encode(embeddings[start : start + batch_size].to(sae.device)))
    return torch.cat(chunks)


@torch.no_grad()
def codes_and_reconstructions(sae: BaseSAE, embeddings: torch.Tensor,
                              batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature activations and reconstructions of many embeddings, in inference mode, on the CPU."""
    codes, reconstructed = [torch.empty(0, sae.d_sae)], [torch.empty(0, sae.d_in)]
    with eval_mode(sae):
        for start in range(0, len(embeddings), batch_size):
            batch_codes, batch_reconstructed = sae.encode_and_reconstruct(embeddings[start : start + batch_size].to(sae.device))
            codes.append(batch_codes.float().cpu())
            reconstructed.append(batch_reconstructed.float().cpu())
    return torch.cat(codes), torch.cat(reconstructed)


@torch.no_grad()
def reconstruction_metrics(sae: BaseSAE, embeddings: torch.Tensor, batch_size: int = 4096,
                           outputs: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[str, float]:
    """FVU, explained variance, MSE, cosine, norm ratio, L0 and dead/dense fractions on ``embeddings``.

    FVU = sum of squared errors / sum of squared deviations from the mean of ``embeddings``;
    dead features never fire on these embeddings, dense ones fire on more than 10% of them.
    With ``outputs``, each batch's (codes, reconstructions) is appended to it (float32, CPU), for
    callers that need them too, so that the SAE runs over the embeddings once.
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
            if outputs is not None:
                outputs.append((feature_acts.float().cpu(), x_hat.float().cpu()))
            x, x_hat = x.double(), x_hat.double()
            sq_error += (x_hat - x).pow(2).sum().item()
            cos_sum += torch.nn.functional.cosine_similarity(x_hat, x, dim=-1).sum().item()
            norm_ratio_sum += (x_hat.norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)).sum().item()
            fired = feature_acts > 0
            l0_sum += fired.sum().item()
            fire_counts += fired.sum(0).double()
    if variance <= 0:
        raise DataError(f"the {n} embeddings to evaluate on are all identical (no variance), so FVU is "
                        "undefined; evaluate on distinct texts")
    fvu = sq_error / variance
    density = fire_counts / n
    return {
        "fvu": fvu,
        "explained_variance": 1.0 - fvu,
        "mse": sq_error / (n * embeddings.shape[1]),
        "cos": cos_sum / n,
        "norm_ratio": norm_ratio_sum / n,
        "l0": l0_sum / n,
        "silent_frac": (density == 0).double().mean().item(),
        "dense_frac": (density > 0.1).double().mean().item(),
    }


# ----------------------------------------------------------------------------------------------
# What users of embeddings care about: neighbours and similarities after reconstruction


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


RETRIEVAL_METRICS = ("mrr_at_10", "ndcg_at_10", "recall_at_1", "recall_at_10")


@torch.no_grad()
def paired_retrieval(queries: torch.Tensor, documents: torch.Tensor, cosine: bool = True,
                     chunk: int = 1024) -> dict[str, float]:
    """Each query searched among all documents for its own (row i): MRR@10, nDCG@10 (one relevant
    document, so 1 / log2(rank + 1)), recall@1 and recall@10. Scores are cosines, or dot products
    (``cosine=False``: sparse codes, as a sparse retriever scores them). A tie with the own document
    counts against it, so a code that is all zeros ranks it last, not first."""
    q = _unit(queries) if cosine else queries.float()
    d = _unit(documents) if cosine else documents.float()
    ranks = []
    for start in range(0, len(q), chunk):
        scores = q[start : start + chunk] @ d.T
        rows = torch.arange(len(scores))
        own = scores[rows, rows + start].unsqueeze(1)
        ranks.append((scores >= own).sum(1))  # the own document included, so ties rank it below the rest
    rank = torch.cat(ranks).double()
    top = rank <= 10
    return {"mrr_at_10": (top / rank).mean().item(), "ndcg_at_10": (top / torch.log2(rank + 1)).mean().item(),
            "recall_at_1": (rank == 1).double().mean().item(), "recall_at_10": top.double().mean().item()}


@torch.no_grad()
def neighbour_recall(original: torch.Tensor, reconstructed: torch.Tensor, k: int = 10,
                     max_queries: int = 20_000, chunk: int = 1024) -> float:
    """Mean over queries of |top-k neighbours found with the reconstructed query ∩ top-k with the
    original query| / k; neighbours are searched among the original embeddings, the query itself
    excluded, by cosine similarity."""
    n = len(original)
    if n <= k:
        return float("nan")
    database = _unit(original)
    queries = min(n, max_queries)
    hits = 0
    for start in range(0, queries, chunk):
        stop = min(start + chunk, queries)
        rows = torch.arange(start, stop)
        exact = database[start:stop] @ database.T
        approx = _unit(reconstructed[start:stop]) @ database.T
        exact[rows - start, rows] = -math.inf
        approx[rows - start, rows] = -math.inf
        truth = exact.topk(k, dim=-1).indices
        found = approx.topk(k, dim=-1).indices
        hits += (truth.unsqueeze(-1) == found.unsqueeze(-2)).any(-1).sum().item()
    return hits / (queries * k)


def _ranks(values: torch.Tensor) -> torch.Tensor:
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks[values.argsort()] = torch.arange(len(values), dtype=torch.float64)
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (ties broken by order)."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


@torch.no_grad()
def similarity_spearman(original: torch.Tensor, reconstructed: torch.Tensor, max_texts: int = 2000) -> float:
    """Spearman correlation between the pairwise cosine similarities of the first ``max_texts``
    embeddings and those of their reconstructions."""
    n = min(len(original), max_texts)
    if n < 3:
        return float("nan")
    upper = torch.triu_indices(n, n, offset=1)
    before = (_unit(original[:n]) @ _unit(original[:n]).T)[upper[0], upper[1]]
    after = (_unit(reconstructed[:n]) @ _unit(reconstructed[:n]).T)[upper[0], upper[1]]
    return spearman(before, after)


# ----------------------------------------------------------------------------------------------
# Labels: linear probes and the purity of features


def linear_probe_accuracy(features: torch.Tensor, labels: torch.Tensor, train_mask: torch.Tensor,
                          weight_decay: float = 1e-4, iterations: int = 200) -> float:
    """Test accuracy of a multinomial logistic regression fitted (L-BFGS) on the rows in
    ``train_mask`` and scored on the others; features are standardized with training statistics."""
    x = features.float()
    mean, std = x[train_mask].mean(0), x[train_mask].std(0).clamp_min(1e-6)
    x = (x - mean) / std
    n_classes = int(labels.max()) + 1
    weights = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=iterations, line_search_fn="strong_wolfe")
    x_train, y_train = x[train_mask], labels[train_mask]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x_train @ weights + bias, y_train)
        loss = loss + weight_decay * weights.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = (x[~train_mask] @ weights + bias).argmax(-1)
    return float((predicted == labels[~train_mask]).float().mean())


def label_purity(codes: torch.Tensor, labels: torch.Tensor, min_count: int = 5) -> tuple[float, torch.Tensor]:
    """For each feature firing on at least ``min_count`` texts, the share of those texts that carry
    its most common label; returns the mean over such features and the per-feature values (NaN for
    features that fire less)."""
    n_classes = int(labels.max()) + 1
    onehot = torch.nn.functional.one_hot(labels, n_classes).float()
    counts = (codes > 0).float().T @ onehot  # [d_sae, classes]
    fired = counts.sum(-1)
    purity = torch.where(fired >= min_count, counts.max(-1).values / fired.clamp_min(1), torch.nan)
    alive = ~purity.isnan()
    return (float(purity[alive].mean()) if alive.any() else float("nan")), purity
