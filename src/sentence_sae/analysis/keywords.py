"""Keyword labels for features, without network access or a language model.

The earlier research project's method, made fast: for each feature's top texts,
1. candidates are the words and two-word phrases of the text (stop words excluded), KeyBERT-style
   scored by the cosine between the candidate's embedding and the text's embedding (same
   Sentence-BERT model); each text keeps its best ``per_text`` candidates (3: on WordNet, labels
   named their texts' category more often than with 5);
2. candidates of the feature that are near-duplicates (cosine >= 0.9) are merged;
3. each term scores (mean score over the texts that have it) x log(1 + number of such texts),
   times a contrastive factor log(1 + F / f), F the number of labelled features and f the number
   whose texts contain the term (c-TF-IDF style: terms common to every feature say little);
4. similar terms are clustered greedily (cosine >= 0.7 to a chosen term joins its cluster) and the
   best term of each of the top three clusters makes the label.

Speed comes from embedding each distinct candidate once for the whole SAE, in large batches, with
the model's ``fast`` backend (bf16 on CPU: about half the time, the same labels on WordNet).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..embeddings import encode_texts

STOP_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each either else etc even ever every few for from
further had has have having he her here hers herself him himself his how however i if in into is it its itself
just less let like made make many may me might more most much must my myself neither no nor not now of off
often on once one only or other others otherwise our ours ourselves out over own per rather same shall she
should since so some such than that the their theirs them themselves then there therefore these they this those
though through thus to too under until up upon us used using very via was we were what when where whether which
while who whom whose why will with within without would yet you your yours yourself yourselves especially
something someone usually sometimes typically often etc e g ie eg
""".split())

WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*[A-Za-z]|[A-Za-z]")


def candidates(text: str) -> list[str]:
    """Words (3+ letters) and two-word phrases of ``text`` without stop words, lower-cased, unique."""
    words = [w.lower() for w in WORD.findall(text)]
    found: dict[str, None] = {}
    for i, word in enumerate(words):
        if word in STOP_WORDS or len(word) < 3:
            continue
        found[word] = None
        if i + 1 < len(words) and words[i + 1] not in STOP_WORDS and len(words[i + 1]) >= 3:
            found[f"{word} {words[i + 1]}"] = None
    return list(found)


@dataclass
class KeywordLabeler:
    """Labels features from their top texts; ``model`` embeds the candidate terms (the model that
    made the text embeddings, possibly in lower precision)."""

    model: Any
    per_text: int = 3
    merge_cosine: float = 0.9
    cluster_cosine: float = 0.7
    n_terms: int = 3
    contrastive: bool = True
    batch_size: int = 256

    def label_all(self, feature_texts: Sequence[Sequence[str]], text_embeddings: Sequence[torch.Tensor]) -> list[list[str]]:
        """Labels (up to ``n_terms`` terms) for each feature, given its top texts and their embeddings."""
        per_feature = [[candidates(text) for text in texts] for texts in feature_texts]
        vocabulary = sorted({c for texts in per_feature for cands in texts for c in cands})
        if not vocabulary:
            return [[] for _ in feature_texts]
        index = {term: i for i, term in enumerate(vocabulary)}
        term_embeddings = torch.nn.functional.normalize(
            encode_texts(self.model, vocabulary, self.batch_size).float().cpu(), dim=-1)
        scored = [self._term_scores(cands, embeddings, index, term_embeddings)
                  for cands, embeddings in zip(per_feature, text_embeddings)]
        frequency: dict[str, int] = defaultdict(int)
        for scores in scored:
            for term in scores:
                frequency[term] += 1
        n_features = max(sum(1 for s in scored if s), 1)
        labels = []
        for scores in scored:
            if self.contrastive:
                scores = {t: s * math.log(1 + n_features / frequency[t]) for t, s in scores.items()}
            labels.append(self._top_clusters(scores, index, term_embeddings))
        return labels

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
