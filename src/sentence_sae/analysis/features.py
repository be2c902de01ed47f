"""Feature statistics from one pass over a corpus: densities, activations, top and quantile texts,
activation histograms, co-activation counts and where in embedding space each feature fires."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..metrics import code_blocks
from ..sae import BaseSAE

QUANTILES = (0.25, 0.5, 0.75)
"""Positions, from the top, of the lower-activation examples shown for each feature."""
HISTOGRAM_BINS = 20
MAX_COACTIVATION_FEATURES = 8192
"""Co-activation counts are kept (dict_size x dict_size) for SAEs up to this size."""


@dataclass
class FeatureStats:
    """Everything ``explain`` needs about each feature, over ``n_texts`` texts."""

    n_texts: int
    counts: np.ndarray  # [d_sae] texts on which each feature fires
    mean_act: np.ndarray  # [d_sae] mean activation where it fires
    max_act: np.ndarray  # [d_sae]
    top_rows: list[np.ndarray]  # per feature: rows of its top texts, strongest first
    top_values: list[np.ndarray]
    quantile_rows: list[list[tuple[float, int, float]]]  # per feature: (quantile, row, activation)
    histograms: np.ndarray  # [d_sae, HISTOGRAM_BINS] activation counts in bins from 0 to max_act
    coactivation: np.ndarray | None  # [d_sae, d_sae] texts on which both fire (None if too large)
    sorted_rows: np.ndarray  # every firing (row) grouped by feature, strongest first within each
    sorted_values: np.ndarray  # the activation of each firing in sorted_rows
    starts: np.ndarray  # [d_sae + 1] where each feature's rows begin in sorted_rows
    centroids: np.ndarray  # [d_sae, d_in] activation-weighted sum of the embeddings of the texts it fires on
    mean_embedding: np.ndarray  # [d_in] over all texts

    def firing_rows(self, feature: int) -> np.ndarray:
        """The rows ``feature`` fires on, strongest first."""
        return self.sorted_rows[self.starts[feature] : self.starts[feature + 1]]

    @property
    def density(self) -> np.ndarray:
        return self.counts / max(self.n_texts, 1)

    def conditional(self) -> np.ndarray:
        """P(j fires | i fires) = co[i, j] / count[i], row i."""
        assert self.coactivation is not None
        return self.coactivation / np.maximum(self.counts[:, None], 1)


def collect_feature_stats(sae: BaseSAE, chunks: Iterator[torch.Tensor], top_n: int = 10) -> FeatureStats:
    """Stream embedding chunks (rows in order) through the SAE and gather the statistics."""
    d_sae = sae.d_sae
    keep_coactivation = d_sae <= MAX_COACTIVATION_FEATURES
    coactivation = torch.zeros(d_sae, d_sae, dtype=torch.float32) if keep_coactivation else None
    rows_list, features_list, values_list = [], [], []
    centroids = torch.zeros(d_sae, sae.W_dec.shape[1], dtype=torch.float32)
    embedding_sum = torch.zeros(sae.W_dec.shape[1], dtype=torch.float64)
    offset = 0
    for chunk in chunks:
        for start, codes in code_blocks(sae, chunk):
            codes = codes.float().cpu()
            embeddings = chunk[start : start + len(codes)].float().cpu()
            embedding_sum += embeddings.double().sum(0)
            rows, features = codes.nonzero(as_tuple=True)
            values = codes[rows, features]
            # over the firings only: a dense codes.T @ embeddings costs d_sae / L0 times as much
            centroids.index_add_(0, features, values[:, None] * embeddings[rows])
            rows_list.append((rows + offset).to(torch.int64).numpy())
            features_list.append(features.to(torch.int32).numpy())
            values_list.append(values.numpy())
            if coactivation is not None:
                fired = (codes > 0).float()
                coactivation += torch.sparse.mm(fired.to_sparse().t(), fired)
            offset += len(codes)
    rows = np.concatenate(rows_list) if rows_list else np.zeros(0, np.int64)
    features = np.concatenate(features_list) if features_list else np.zeros(0, np.int32)
    values = np.concatenate(values_list) if values_list else np.zeros(0, np.float32)
    return _summarize(d_sae, offset, rows, features, values, top_n,
                      coactivation.numpy() if coactivation is not None else None, centroids.numpy(),
                      (embedding_sum / max(offset, 1)).float().numpy())


def _summarize(d_sae: int, n_texts: int, rows: np.ndarray, features: np.ndarray, values: np.ndarray,
               top_n: int, coactivation: np.ndarray | None, centroids: np.ndarray, mean_embedding: np.ndarray) -> FeatureStats:
    counts = np.bincount(features, minlength=d_sae)
    sums = np.bincount(features, weights=values, minlength=d_sae)
    max_act = np.zeros(d_sae, np.float64)
    np.maximum.at(max_act, features, values)
    mean_act = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    # Group the nonzero entries by feature, strongest first within each feature.
    order = np.lexsort((-values, features))
    rows, features, values = rows[order], features[order], values[order]
    starts = np.concatenate([[0], np.cumsum(counts)])
    top_rows, top_values, quantile_rows = [], [], []
    histograms = np.zeros((d_sae, HISTOGRAM_BINS), np.int64)
    for feature in range(d_sae):
        begin, end = starts[feature], starts[feature + 1]
        top_rows.append(rows[begin : min(end, begin + top_n)])
        top_values.append(values[begin : min(end, begin + top_n)])
        count = end - begin
        picks = []
        if count > top_n:
            for quantile in QUANTILES:
                position = begin + min(int(quantile * count), count - 1)
                if position >= begin + top_n:
                    picks.append((quantile, int(rows[position]), float(values[position])))
        quantile_rows.append(picks)
        if count:
            top = max(float(values[begin]), 1e-12)
            histograms[feature] = np.histogram(values[begin:end], bins=HISTOGRAM_BINS, range=(0.0, top))[0]
    return FeatureStats(n_texts, counts, mean_act, max_act, top_rows, top_values, quantile_rows, histograms,
                        coactivation, rows, values, starts, centroids, mean_embedding)
