"""Keyword terms for features, without network access or a language model.

The earlier research project's method, made fast, with one change: for each feature's top texts,
1. candidates are the words and two-word phrases of the text (stop words excluded), KeyBERT-style
   scored by the cosine between the candidate's embedding and the text's embedding (same
   Sentence-BERT model); each text keeps its best ``per_text`` candidates;
2. candidates of the feature that are near-duplicates (cosine >= 0.9) are merged;
3. each term scores (mean score over the texts that have it) x log(1 + number of such texts),
   times a contrastive factor log(1 + F / f), F the number of labelled features and f the number
   whose texts contain the term (c-TF-IDF style: terms common to every feature say little);
4. new: the best ``n_candidates`` terms are ranked again by how well each alone separates the
   feature's texts from contrast texts it does not fire on (cosine AUROC), so the first term names
   what the feature's texts share and the rest of the corpus lacks;
5. similar terms are clustered greedily (cosine >= 0.7 to a chosen term joins its cluster) and the
   best term of each of the top ``n_terms`` clusters is kept, best first.

Speed comes from embedding each distinct candidate once for the whole SAE, in large batches, with
the fastest backend that keeps fp32's embeddings (OpenVINO where installed, else bf16 where the
hardware has it, else fp32: ``embeddings.string_backend``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..embeddings import StringEncoder
from ..tracking import progress_bar
from .label_score import separation
from .words import candidates


@dataclass
class KeywordLabeler:
    """Ranks terms for features from their top texts; ``model`` embeds the candidate terms (the
    model that made the text embeddings, possibly in lower precision)."""

    model: Any
    per_text: int = 3
    merge_cosine: float = 0.9
    cluster_cosine: float = 0.7
    n_terms: int = 3
    n_candidates: int = 12
    contrastive: bool = True
    batch_size: int = 256
    encoder: StringEncoder = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.encoder = StringEncoder(self.model, self.batch_size)

    def terms_all(self, feature_texts: Sequence[Sequence[str]], text_embeddings: Sequence[torch.Tensor],
                  units: torch.Tensor | None = None, positives: Sequence[np.ndarray] | None = None,
                  negatives: Sequence[np.ndarray] | None = None) -> list[list[str]]:
        """Up to ``n_terms`` terms per feature, best first, from its top texts and their embeddings.
        With ``positives[i]`` and ``negatives[i]`` (positions in ``units``, unit embeddings of texts
        feature i fires on and does not, none of them scored), terms are ranked by how well they
        separate the two (step 4). Positions, not tensors per feature: 500 contrast texts for each of
        12,288 features would be 9 GB."""
        per_feature = [[candidates(text) for text in texts] for texts in feature_texts]
        vocabulary = sorted({c for texts in per_feature for cands in texts for c in cands})
        if not vocabulary:
            return [[] for _ in feature_texts]
        index = {term: i for i, term in enumerate(vocabulary)}
        term_embeddings = self.encoder(vocabulary, "embed terms")
        with progress_bar(len(per_feature), "score terms") as bar:
            scored = []
            for cands, embeddings in zip(per_feature, text_embeddings):
                scored.append(self._term_scores(cands, embeddings, index, term_embeddings))
                bar.update(1)
        frequency: dict[str, int] = defaultdict(int)
        for scores in scored:
            for term in scores:
                frequency[term] += 1
        n_features = max(sum(1 for s in scored if s), 1)
        ranked = []
        with progress_bar(len(scored), "rank terms") as bar:
            for i, scores in enumerate(scored):
                if self.contrastive:
                    scores = {t: s * math.log(1 + n_features / frequency[t]) for t, s in scores.items()}
                if units is not None and positives is not None and negatives is not None and scores and len(negatives[i]):
                    scores = self._by_separation(scores, units[positives[i]], units[negatives[i]], index, term_embeddings)
                ranked.append(self._top_clusters(scores, index, term_embeddings))
                bar.update(1)
        return ranked

    def _by_separation(self, scores: dict[str, float], positives: torch.Tensor, negatives: torch.Tensor,
                       index: dict[str, int], term_embeddings: torch.Tensor) -> dict[str, float]:
        """The best ``n_candidates`` terms rescored by how well each separates the positives from the
        negatives (unit embeddings; cosine AUROC), their keyword score breaking ties."""
        best = sorted(scores, key=lambda t: -scores[t])[: self.n_candidates]
        vectors = term_embeddings[[index[t] for t in best]]
        auc = separation(vectors @ positives.T, vectors @ negatives.T)
        top = max(scores[t] for t in best)
        return {t: float(a) + 1e-3 * scores[t] / top for t, a in zip(best, auc)}

    def _term_scores(self, cands_per_text: list[list[str]], text_embeddings: torch.Tensor,
                     index: dict[str, int], term_embeddings: torch.Tensor) -> dict[str, float]:
        """KeyBERT per text, near-duplicate merging, then mean score x log(1 + texts containing it)."""
        hits: dict[str, list[float]] = defaultdict(list)
        units = torch.nn.functional.normalize(text_embeddings.float().cpu(), dim=-1)
        for cands, unit in zip(cands_per_text, units):
            if not cands:
                continue
            sims = term_embeddings[[index[c] for c in cands]] @ unit
            for position in sims.argsort(descending=True)[: self.per_text].tolist():
                hits[cands[position]].append(float(sims[position]))
        if not hits:
            return {}
        terms = sorted(hits, key=lambda t: -np.mean(hits[t]))
        vectors = term_embeddings[[index[t] for t in terms]]
        merged: dict[str, list[float]] = {}
        representative = [-1] * len(terms)
        similarity = vectors @ vectors.T
        for i, term in enumerate(terms):
            if representative[i] >= 0:
                continue
            representative[i] = i
            merged[term] = list(hits[term])
            for j in range(i + 1, len(terms)):
                if representative[j] < 0 and similarity[i, j] >= self.merge_cosine:
                    representative[j] = i
                    merged[term].extend(hits[terms[j]])
        return {term: float(np.mean(values)) * math.log(1 + len(values)) for term, values in merged.items()}

    def _top_clusters(self, scores: dict[str, float], index: dict[str, int], term_embeddings: torch.Tensor) -> list[str]:
        chosen: list[str] = []
        for term in sorted(scores, key=lambda t: -scores[t]):
            vector = term_embeddings[index[term]]
            if all(float(vector @ term_embeddings[index[other]]) < self.cluster_cosine for other in chosen):
                chosen.append(term)
                if len(chosen) == self.n_terms:
                    break
        return chosen
