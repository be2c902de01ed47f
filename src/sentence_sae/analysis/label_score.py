"""How well a feature's label tells the texts it fires on from the texts it does not, on texts that
were not used to make the label; no language model involved.

For every feature with enough firing texts: the positives are up to SCORING_POSITIVES of the texts it
fires on, spread over its activations but below the top texts the label was made from; the negatives
are a shared random pool of texts, less those it fires on. Two scorers give an AUROC each:

- *embedding* (the "embedding scorer" of Paulo & Belrose 2025, arXiv 2507.08473): the cosine between
  the label's embedding and each text's embedding;
- *lexical*: the BM25 score of the label's words in each text, which shares nothing with the model
  that made the label.

Baselines in the same run, on the same texts: the labels shuffled across features, the most frequent
content word of the label texts, and the top text itself used as the label.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from scipy.stats import rankdata

from .words import content_words, spellings

SCORING_POSITIVES = 20
NEGATIVE_POOL = 1000
MIN_POSITIVES = 3
"""Features with fewer firing texts outside their label texts are not scored."""
GOOD_SCORE = 0.8
BM25_K1, BM25_B = 1.2, 0.75


SUPPORT_TEXTS = 24
"""Firing texts beyond the label texts that the labeler may read (never scored), spread over activations."""
CONTRAST_POOL = 500
"""Random texts outside the scoring pool that the labeler contrasts a feature's texts with."""


class ScoringSet(NamedTuple):
    features: np.ndarray  # the scored features
    positives: list[np.ndarray]  # per scored feature: rows it fires on (not its label texts)
    negatives: list[np.ndarray]  # per scored feature: pool rows it does not fire on
    pool: np.ndarray  # the shared pool the negatives come from


class LabellingSet(NamedTuple):
    """The texts a labeler may read, none of them scored."""

    support: list[np.ndarray]  # per feature: its label texts, then up to SUPPORT_TEXTS unscored firing rows
    contrast: np.ndarray  # random rows outside the scoring pool


def scoring_set(firing_rows: Sequence[np.ndarray], label_texts: int, n_rows: int, seed: int = 0) -> ScoringSet:
    """Positives and negatives per feature; ``firing_rows[f]`` holds f's rows, strongest first."""
    # On a small corpus half the texts stay outside the pool, for the labeler's contrast texts.
    size = min(NEGATIVE_POOL, max(n_rows // 2, 1))
    pool = np.sort(np.random.default_rng(seed).choice(n_rows, size=size, replace=False))
    features, positives, negatives = [], [], []
    for feature, rows in enumerate(firing_rows):
        rest = rows[label_texts:]
        if len(rest) < MIN_POSITIVES:
            continue
        picks = np.unique(np.linspace(0, len(rest) - 1, min(SCORING_POSITIVES, len(rest))).round().astype(int))
        negative = pool[~np.isin(pool, rows)]
        if len(negative) < MIN_POSITIVES:
            continue
        features.append(feature)
        positives.append(rest[picks])
        negatives.append(negative)
    return ScoringSet(np.asarray(features, dtype=np.int64), positives, negatives, pool)


def labelling_set(firing_rows: Sequence[np.ndarray], scoring: ScoringSet, label_texts: int, n_rows: int,
                  seed: int = 1) -> LabellingSet:
    """Per feature, the firing texts a labeler may read, and the shared contrast texts; disjoint from
    every text the scoring set scores."""
    scored = dict(zip(scoring.features.tolist(), scoring.positives))
    outside = np.setdiff1d(np.arange(n_rows), scoring.pool)
    contrast = np.sort(np.random.default_rng(seed).choice(outside, size=min(CONTRAST_POOL, len(outside)), replace=False))
    support = []
    for feature, rows in enumerate(firing_rows):
        rest = rows[label_texts:]
        if feature in scored:
            rest = rest[~np.isin(rest, scored[feature])]
        picks = np.unique(np.linspace(0, len(rest) - 1, min(SUPPORT_TEXTS, len(rest))).round().astype(int))
        support.append(np.concatenate([rows[:label_texts], rest[picks]]) if len(rest) else rows[:label_texts])
    return LabellingSet(support, contrast)


def separation(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """AUROC per row, on torch tensors: P(a positive scores above a negative), ties half; [K, P] and
    [K, N] -> [K]."""
    greater = (positive[:, :, None] > negative[:, None, :]).float().mean((1, 2))
    ties = (positive[:, :, None] == negative[:, None, :]).float().mean((1, 2))
    return greater + ties / 2


def auroc(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half (Mann-Whitney U / (P Q))."""
    ranks = rankdata(np.concatenate([positive_scores, negative_scores]))
    p, q = len(positive_scores), len(negative_scores)
    return float((ranks[:p].sum() - p * (p + 1) / 2) / (p * q))



class ScoringTexts:
    """The scoring texts, each once: unit embeddings and BM25 term weights (idf and lengths from them),
    and where each scored feature's positives and negatives sit among them."""

    def __init__(self, scoring: ScoringSet, texts: Sequence[str], embeddings: Any):
        """``texts`` and ``embeddings`` are indexed by row (a list and anything indexable by an array)."""
        from scipy import sparse

        self.rows = np.unique(np.concatenate([*scoring.positives, *scoring.negatives]))
        self.where = [np.searchsorted(self.rows, np.concatenate([p, n])) for p, n in zip(scoring.positives, scoring.negatives)]
        self.n_positive = [len(p) for p in scoring.positives]
        units = torch.nn.functional.normalize(torch.as_tensor(embeddings(self.rows)).float().cpu(), dim=-1)
        self.units = units.numpy()
        self.vocabulary: dict[str, int] = {}
        indices, data, pointers = [], [], [0]
        for row in self.rows.tolist():
            counts = Counter(content_words(texts[row]))
            indices.extend(self.vocabulary.setdefault(w, len(self.vocabulary)) for w in counts)
            data.extend(counts.values())
            pointers.append(len(indices))
        tf = sparse.csr_matrix((np.asarray(data, float), indices, pointers), shape=(len(self.rows), len(self.vocabulary)))
        lengths = np.asarray(tf.sum(1)).ravel()
        norm = BM25_K1 * (1 - BM25_B + BM25_B * lengths / max(lengths.mean(), 1e-9))
        documents = np.bincount(tf.indices, minlength=len(self.vocabulary))
        idf = np.log(1 + (len(self.rows) - documents + 0.5) / (documents + 0.5))
        weights = tf.copy()
        weights.data = weights.data * (BM25_K1 + 1) / (weights.data + np.repeat(norm, np.diff(tf.indptr)))
        self.bm25_by_term = sparse.csr_matrix(weights.multiply(idf[None, :]).T)  # [vocabulary, texts]

    def queries(self, labels: Sequence[str]) -> Any:
        """Each label's words as a binary row over the vocabulary (words the texts lack are dropped)."""
        from scipy import sparse

        indices, pointers = [], [0]
        for label in labels:
            indices.extend(sorted({self.vocabulary[w] for w in content_words(label) if w in self.vocabulary}))
            pointers.append(len(indices))
        return sparse.csr_matrix((np.ones(len(indices)), indices, pointers), shape=(len(labels), len(self.vocabulary)))


def most_frequent_word(texts: Sequence[str]) -> str:
    """The content word in the most of ``texts`` (then the most often, then alphabetically), as first spelled."""
    in_texts: Counter = Counter()
    overall: Counter = Counter()
    for text in texts:
        found = content_words(text)
        overall.update(found)
        in_texts.update(set(found))
    if not in_texts:
        return ""
    best = min(in_texts, key=lambda w: (-in_texts[w], -overall[w], w))
    return spellings(texts).get(best, best)


def score_labels(labels: Sequence[str], label_embeddings: torch.Tensor, texts: ScoringTexts,
                 chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(embedding AUROC, lexical AUROC) of one label per scored feature, in the scoring set's order;
    similarities and BM25 scores are computed for ``chunk`` labels at a time against every text."""
    units = torch.nn.functional.normalize(label_embeddings.float().cpu(), dim=-1).numpy()
    queries = texts.queries(labels)
    embedding_scores, lexical_scores = np.zeros(len(labels)), np.zeros(len(labels))
    for start in range(0, len(labels), chunk):
        sims = units[start : start + chunk] @ texts.units.T
        lexical = (queries[start : start + chunk] @ texts.bm25_by_term).toarray()
        for j, i in enumerate(range(start, min(start + chunk, len(labels)))):
            where, p = texts.where[i], texts.n_positive[i]
            embedding_scores[i] = auroc(sims[j, where[:p]], sims[j, where[p:]])
            lexical_scores[i] = auroc(lexical[j, where[:p]], lexical[j, where[p:]])
    return embedding_scores, lexical_scores


def summary(scores: dict[str, tuple[np.ndarray, np.ndarray]], scored: int) -> dict[str, Any]:
    """Mean AUROC of each label set under each scorer, and the share of features at GOOD_SCORE."""
    out: dict[str, Any] = {"scored_features": scored}
    for scorer, index in (("embedding", 0), ("lexical", 1)):
        out[scorer] = {name: round(float(values[index].mean()), 4) if scored else None
                       for name, values in scores.items()}
        out[scorer]["share_at_0.8"] = round(float((scores["labels"][index] >= GOOD_SCORE).mean()), 4) if scored else None
    return out
