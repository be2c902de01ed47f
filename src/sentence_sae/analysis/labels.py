"""Feature labels: a short concept name, then supporting keywords, chosen by how well they pick out
the feature's texts. No language model is involved, and no text the label score later reads.

For every live feature:
1. terms: the keyword labeler's terms from its top texts, ranked by how well each alone separates
   the feature's *support* texts (top texts and a spread of other firing texts) from *contrast* texts
   it does not fire on; the first is the concept name (1 to 3 words);
2. distinctive words: words of the support texts significantly more common there than in the contrast
   texts (one-sided two-proportion z >= MIN_Z), taken greedily by how many support texts not yet
   covered by the label each one covers;
3. the label is the best of four: the concept alone, with the other terms, with the distinctive
   words, with both; "best" is a weighted sum of two AUROCs on the support and contrast texts, one by
   the label's embedding (as the embedding label score) and, at COVERAGE_WEIGHT, one by which texts
   contain a label word (as the lexical label score), so the choice follows the same two views the
   label is scored by;
4. up to KEYWORD_ROUNDS times, the label gains the word of its pool (POOL_WORDS distinctive words
   and the other terms) that raises that score most (in the first round it may also trade its
   keywords for one word), until no word raises it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch

from ..embeddings import StringEncoder
from ..tracking import progress_bar
from .keywords import KeywordLabeler
from .label_score import LabellingSet, separation
from .words import content_words, spellings

MIN_Z = 3.0
"""A distinctive word is over-represented in the feature's texts at one-sided p < 0.0014."""
MIN_TEXTS = 2
"""A distinctive word appears in at least this many of the feature's texts."""
N_KEYWORDS = 3
"""Distinctive words in the four first options."""
POOL_WORDS = 8
"""Distinctive words a label may gain one by one in step 4 (with the other terms)."""
KEYWORD_ROUNDS = 3
"""Rounds of step 4: the most words a label gains (more than half of them gain that many)."""
COVERAGE_WEIGHT = 0.5
"""Weight of the word-coverage AUROC beside the embedding AUROC when options are compared: at 1 the
yes/no coverage outvoted finer differences of meaning (embedding label score 0.004 lower on Debian,
0.002 on WordNet, lexical 0.001 higher)."""


class FeatureLabel(NamedTuple):
    """A feature's label: a short concept name, then supporting keywords."""

    concept: str
    keywords: tuple[str, ...]

    @property
    def text(self) -> str:
        return f"{self.concept}: {', '.join(self.keywords)}" if self.keywords else self.concept


class Contrast(NamedTuple):
    """Rows a feature's labels are chosen on: its support rows against the contrast rows it does not fire on."""

    units: torch.Tensor  # [rows, d] unit embeddings of every row below
    rows: np.ndarray  # the corpus row of each unit
    support: list[np.ndarray]  # per labelled feature: positions in ``units``
    contrast: list[np.ndarray]


class RowWords(NamedTuple):
    """The content words of each row of a Contrast: as sets, and as a [rows, vocabulary] 0/1 matrix."""

    sets: list[frozenset]
    matrix: Any  # scipy CSR
    column: dict[str, int]

    @classmethod
    def of(cls, sets: list[frozenset]) -> "RowWords":
        from scipy import sparse

        column: dict[str, int] = {}
        indices = [column.setdefault(w, len(column)) for found in sets for w in sorted(found)]
        indptr = np.cumsum([0, *(len(found) for found in sets)])
        matrix = sparse.csr_matrix((np.ones(len(indices), np.int8), indices, indptr), shape=(len(sets), max(len(column), 1)))
        return cls(sets, matrix, column)

    def coverage(self, labels: Sequence[str], rows: np.ndarray) -> np.ndarray:
        """[len(rows), len(labels)]: whether the row contains a content word of the label."""
        words = [[self.column[w] for w in set(content_words(label)) if w in self.column] for label in labels]
        columns = sorted({c for found in words for c in found})
        present = self.matrix[rows][:, columns].toarray() > 0
        where = {c: i for i, c in enumerate(columns)}
        return np.stack([present[:, [where[c] for c in found]].any(1) for found in words], axis=1)


def label_features(model: Any, texts: Sequence[str], embeddings_of: Callable[[np.ndarray], torch.Tensor],
                   features: Sequence[int], top_rows: Sequence[np.ndarray], firing_rows: Callable[[int], np.ndarray],
                   labelling: LabellingSet, labeler: KeywordLabeler | None = None) -> list[FeatureLabel]:
    """A label for each of ``features``; ``texts`` and ``embeddings_of`` are indexed by corpus row."""
    labeler = labeler or KeywordLabeler(model)
    contrast = _contrast(features, firing_rows, labelling, embeddings_of)
    terms = labeler.terms_all([[texts[r] for r in rows] for rows in top_rows], [embeddings_of(rows) for rows in top_rows],
                              contrast.units, contrast.support, contrast.contrast)
    row_words = RowWords.of([frozenset(content_words(texts[r])) for r in contrast.rows.tolist()])
    word_sets = row_words.sets
    in_contrast = Counter(w for i in np.searchsorted(contrast.rows, labelling.contrast) for w in word_sets[i])
    surface = spellings(texts[r] for r in contrast.rows.tolist())
    options, pools = [], []
    for i, ranked in enumerate(terms):
        if not ranked:
            options.append([FeatureLabel("", ())])
            pools.append([])
            continue
        sets = [word_sets[j] for j in contrast.support[i]]
        pool = distinctive_words(sets, in_contrast, len(labelling.contrast), set(content_words(ranked[0])), POOL_WORDS)
        pool = [surface.get(w, w) for w in pool]
        words = pool[:N_KEYWORDS]  # the greedy cover's first words: the same as asking for N_KEYWORDS
        both = tuple(dict.fromkeys([*ranked[1:], *words]))
        options.append(list(dict.fromkeys([FeatureLabel(ranked[0], ()), FeatureLabel(ranked[0], tuple(ranked[1:])),
                                           FeatureLabel(ranked[0], tuple(words)), FeatureLabel(ranked[0], both)])))
        pools.append([*pool, *ranked[1:]])
    everyone = list(range(len(options)))
    labels = _best(options, _option_scores(labeler.encoder, options, everyone, contrast, row_words, "choose labels"))
    return _extend(labeler.encoder, labels, pools, contrast, row_words)


def distinctive_words(sets: Sequence[frozenset], in_contrast: Counter, n_contrast: int, covered: set[str],
                      n: int = N_KEYWORDS) -> list[str]:
    """Up to ``n`` words over-represented in ``sets`` (one word set per text) against the contrast
    texts, each the one that covers the most texts no word of ``covered`` or before it covers."""
    counts = Counter(w for found in sets for w in found)
    words = [w for w, c in counts.items() if c >= MIN_TEXTS and w not in covered]
    if not words or not n_contrast:
        return []
    a = np.array([counts[w] for w in words], float)
    b = np.array([in_contrast.get(w, 0) for w in words], float)
    n_a = len(sets)
    pooled = (a + b) / (n_a + n_contrast)
    z = (a / n_a - b / n_contrast) / np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_contrast) + 1e-12)
    pool = {w: counts[w] for w, keep in zip(words, z >= MIN_Z) if keep}
    uncovered = [found for found in sets if not found & covered]
    chosen = []
    while len(chosen) < n and pool:
        # most newly covered texts, then in the most texts, then alphabetically first
        best = max(sorted(pool), key=lambda w: (sum(w in found for found in uncovered), pool[w]))
        chosen.append(best)
        del pool[best]
        uncovered = [found for found in uncovered if best not in found]
    return chosen


def _contrast(features: Sequence[int], firing_rows: Callable[[int], np.ndarray], labelling: LabellingSet,
              embeddings_of: Callable[[np.ndarray], torch.Tensor]) -> Contrast:
    support = [labelling.support[f] for f in features]
    rows = np.unique(np.concatenate([labelling.contrast, *support])).astype(np.int64)
    units = torch.nn.functional.normalize(embeddings_of(rows).float().cpu(), dim=-1)
    where_contrast = np.searchsorted(rows, labelling.contrast)
    negatives = [where_contrast[~np.isin(labelling.contrast, firing_rows(f))] for f in features]
    return Contrast(units, rows, [np.searchsorted(rows, s) for s in support], negatives)


def _option_scores(encoder: StringEncoder, options: list[list[FeatureLabel]], features: list[int], contrast: Contrast,
                   words: RowWords, phase: str) -> list[np.ndarray | None]:
    """Per entry of ``options`` (the options of feature ``features[k]``, positions in ``contrast``):
    each option's embedding AUROC + COVERAGE_WEIGHT x word-coverage AUROC on the feature's support vs
    contrast rows, or None where there is nothing to choose."""
    strings = sorted({option.text for opts in options for option in opts if option.concept})
    if not strings:
        return [None] * len(options)
    vectors = encoder(strings, f"embed labels ({phase})")
    index = {s: i for i, s in enumerate(strings)}
    scores: list[np.ndarray | None] = []
    with progress_bar(len(options), phase) as bar:
        for opts, feature in zip(options, features):
            bar.update(1)
            support, negatives = contrast.support[feature], contrast.contrast[feature]
            if len(opts) == 1 or not len(negatives) or not opts[0].concept:
                scores.append(None)
                continue
            v = vectors[[index[o.text] for o in opts]]
            score = separation(v @ contrast.units[support].T, v @ contrast.units[negatives].T).numpy()
            hits = words.coverage([o.text for o in opts], np.concatenate([support, negatives]))
            hit_support, hit_contrast = hits[: len(support)].mean(0), hits[len(support) :].mean(0)
            scores.append(score + COVERAGE_WEIGHT * (0.5 + 0.5 * (hit_support - hit_contrast)))  # AUROC of a yes/no score
    return scores


def _best(options: list[list[FeatureLabel]], scores: list[np.ndarray | None]) -> list[FeatureLabel]:
    """The best-scoring option of each entry; the first where there was nothing to choose."""
    return [opts[0] if score is None else opts[int(score.argmax())] for opts, score in zip(options, scores)]


def _extend(encoder: StringEncoder, labels: list[FeatureLabel], pools: list[list[str]], contrast: Contrast,
            words: RowWords) -> list[FeatureLabel]:
    """Step 4: round by round, each label still growing takes the pool word that raises its score
    most, and stops growing when none does."""
    labels = list(labels)
    growing = [i for i, label in enumerate(labels) if label.concept and pools[i]]
    for round_ in range(KEYWORD_ROUNDS):
        options = []
        for i in growing:
            label = labels[i]
            added = [FeatureLabel(label.concept, (*label.keywords, w)) for w in pools[i] if w not in label.keywords]
            # trading the keywords for one word costs a third of this step's time; without it the
            # embedding label score fell 0.0009 (Debian) and 0.0003 (WordNet) in benchmarks/labels.py
            alone = [FeatureLabel(label.concept, (w,)) for w in pools[i]] if round_ == 0 else []
            options.append(list(dict.fromkeys([label, *added, *alone])))
        best = _best(options, _option_scores(encoder, options, growing, contrast, words,
                                             f"add keywords, round {round_ + 1}"))
        changed = [i for i, label in zip(growing, best) if label != labels[i]]
        for i, label in zip(growing, best):
            labels[i] = label
        growing = changed
        if not growing:
            break
    return labels
