"""``explain``: stream a corpus once through the SAE, label and score every feature, and write into
the run folder ``features.jsonl`` (one ``FeatureRecord`` per feature), ``families.json`` and the
static site ``browser/`` with a feature map."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from ..embeddings import StringEncoder, load_sentence_model, string_backend
from ..errors import DataError, check_positive
from ..files import atomic_write_text
from ..runs import open_run
from ..tracking import progress_bar
from .browser import write_browser
from .families import MIN_WEIGHT, build_families
from .feature_map import family_roots, map_layout, map_page
from .features import FeatureStats, collect_feature_stats
from .label_score import (ScoringSet, ScoringTexts, labelling_set, most_frequent_word, score_labels, scoring_set,
                          summary)
from .keywords import KeywordLabeler
from .labels import FeatureLabel, label_features
from .highlight import highlight, word_records
from .search_page import search_page
from .records import Coactivation, Family, FeatureRecord, TextExample, write_features

N_COACTIVATING = 8
HIGHLIGHT_TEXTS = 3


def explain_run(run_dir: str | Path, dataset_path: str | None = None, num_examples: int | None = None,
                text_column: str | None = None, top_n: int = 10, label_texts: int = 8,
                device: str | None = None, model: Any = None, family_min_weight: float = MIN_WEIGHT,
                with_map: bool = True, highlight: bool = False) -> dict[str, Any]:
    """Explain every feature of the SAE in ``run_dir`` on a corpus (by default the run's dataset);
    ``with_map`` adds the feature map (``browser/map.html``);
    ``highlight`` adds each word's contribution to the feature in its top HIGHLIGHT_TEXTS texts."""
    check_positive("num_examples", num_examples, unset="the whole dataset")
    check_positive("top_n", top_n)
    started = time.perf_counter()
    run = open_run(run_dir, device, model, dataset_path=dataset_path, text_column=text_column)
    corpus = run.corpus()
    try:
        texts, stats = _read_corpus(run, corpus, num_examples, top_n)
        labelled = _label(run, corpus, texts, stats, label_texts)
    finally:
        corpus.close()
    label_of = {f: label.text for f, label in labelled.labels.items()}
    scores, score_summary = _score_labels(labelled.scoring, label_of, labelled.label_rows, texts, labelled.embeddings_of,
                                          labelled.encoder)
    highlight_started = time.perf_counter()
    words = _highlight(run.sae, labelled.encoder.model, texts, stats, list(labelled.labels)) if highlight else {}
    highlight_seconds = time.perf_counter() - highlight_started
    labels = [label_of.get(f, "") for f in range(run.sae.d_sae)]
    families = (build_families(stats.counts, stats.coactivation, labels, min_weight=family_min_weight,
                               n_texts=stats.n_texts)
                if stats.coactivation is not None else None)
    features = _feature_records(stats, texts, labelled.labels, families, scores, words)
    folder = run.folder
    features_path = write_features(folder, features)
    if families is not None:
        atomic_write_text(folder / "families.json", json.dumps(families, indent=1))
    pages = _write_site(run, stats, features, families,
                        f"{folder.name}: {run.sae.d_sae} features on {len(texts)} texts", with_map)
    index = folder / "browser" / "index.html"
    seconds = time.perf_counter() - started
    return {
        "features": str(features_path),
        "families": str(folder / "families.json") if families is not None else None,
        "browser": str(index),
        "texts": len(texts),
        "alive": len(labelled.labels),
        "dead": run.sae.d_sae - len(labelled.labels),
        "n_families": len(families["families"]) if families else 0,
        **({key: families[key] for key in ("share_in_family", "largest_share", "max_depth")} if families else {}),
        "label_scores": score_summary,
        "map": str(index.parent / "map.html") if "map.html" in pages else None,
        "seconds": round(seconds, 2),
        "seconds_highlighting": round(highlight_seconds, 2),
        "seconds_per_10k_texts": round(seconds / len(texts) * 10_000, 2),
    }


def _read_corpus(run: Any, corpus: Any, num_examples: int | None, top_n: int) -> tuple[list[str], FeatureStats]:
    """The corpus's texts and the feature statistics of one pass over it."""
    texts: list[str] = []

    def chunks():
        for chunk_texts, _, embeddings in corpus.read(num_examples, "explain"):
            texts.extend(chunk_texts)
            yield embeddings

    stats = collect_feature_stats(run.sae, chunks(), top_n)
    if not texts:
        raise DataError(f"dataset {run.cfg.dataset_path} has no texts to explain")
    return texts, stats


class Labelled(NamedTuple):
    labels: dict[int, FeatureLabel]  # per live feature
    label_rows: dict[int, np.ndarray]  # the top texts each label was made from
    scoring: ScoringSet
    embeddings_of: Callable[[np.ndarray], torch.Tensor]  # embeddings of the rows labelling and scoring read
    encoder: StringEncoder  # the fast model that embedded terms and labels, with what it embedded


def _label(run: Any, corpus: Any, texts: list[str], stats: FeatureStats, label_texts: int) -> Labelled:
    """Labels for every live feature, from texts disjoint from the ones their score reads."""
    alive = [f for f in range(run.sae.d_sae) if stats.counts[f] > 0]
    label_rows = {f: stats.top_rows[f][:label_texts] for f in alive}
    firing = [stats.firing_rows(f) for f in range(run.sae.d_sae)]
    scoring = scoring_set(firing, label_texts, len(texts))
    labelling = labelling_set(firing, scoring, label_texts, len(texts))
    needed = np.unique(np.concatenate([np.zeros(0, np.int64), *label_rows.values(), *scoring.positives,
                                       *scoring.negatives, *(labelling.support[f] for f in alive), labelling.contrast]))
    embeddings_of = _embeddings_of_rows(corpus, needed, texts)
    labeler = KeywordLabeler(load_sentence_model(run.cfg.model_name, run.cfg.device, string_backend(run.cfg.device)))
    found = label_features(labeler.model, texts, embeddings_of, alive, [label_rows[f] for f in alive], stats.firing_rows,
                           labelling, labeler)
    return Labelled(dict(zip(alive, found)), label_rows, scoring, embeddings_of, labeler.encoder)


def _highlight(sae: Any, model: Any, texts: list[str], stats: FeatureStats,
               alive: list[int]) -> dict[tuple[int, int], list[list[float]]]:
    """(feature, row) -> each word's [start, end, contribution] in the feature's top HIGHLIGHT_TEXTS
    texts; every distinct text is embedded without each of its words once, for all its features."""
    asked: dict[int, list[int]] = {}
    for feature in alive:
        for row in stats.top_rows[feature][:HIGHLIGHT_TEXTS].tolist():
            asked.setdefault(row, []).append(feature)
    rows = sorted(asked)
    found = highlight(sae, model, [texts[r] for r in rows], [asked[r] for r in rows])
    return {(feature, row): word_records(result, position)
            for row, result in zip(rows, found) for position, feature in enumerate(asked[row])}


def _score_labels(scoring: ScoringSet, label_of: dict[int, str], label_rows: dict[int, np.ndarray], texts: list[str],
                  embeddings_of: Callable[[np.ndarray], torch.Tensor], encoder: StringEncoder) -> tuple[dict[int, tuple[float, float]], dict[str, Any]]:
    """Each scored feature's (embedding, lexical) label score, and the summary with the baselines."""
    features = [int(f) for f in scoring.features]
    if not features:
        return {}, summary({}, 0)

    scoring_texts = ScoringTexts(scoring, texts, embeddings_of)
    ours = [label_of.get(f, "") for f in features]
    shuffle = np.random.default_rng(0).permutation(len(features))
    top_rows = np.asarray([label_rows[f][0] for f in features])
    candidates = {  # label set -> (labels, their embeddings or None to encode them)
        "labels": (ours, None),
        "shuffled": ([ours[i] for i in shuffle], None),
        "frequent_word": ([most_frequent_word([texts[r] for r in label_rows[f]]) for f in features], None),
        "top_text": ([texts[r] for r in top_rows], embeddings_of(top_rows)),
    }
    results = {}
    with progress_bar(len(candidates), "score labels") as bar:
        for name, (labels, embeddings) in candidates.items():
            if embeddings is None:
                embeddings = encoder(labels, f"embed labels ({name})")
            results[name] = score_labels(labels, embeddings, scoring_texts)
            bar.update(1)
    per_feature = {f: (round(float(e), 4), round(float(x), 4)) for f, e, x in zip(features, *results["labels"])}
    return per_feature, summary(results, len(features))


def _write_site(run: Any, stats: FeatureStats, features: list[FeatureRecord], families: dict[str, Any] | None,
                title: str, with_map: bool) -> dict[str, str]:
    """The browser, with the search page and (``with_map``) the feature map."""
    pages = {"map.html": _feature_map(run.sae, stats, features, families, title)} if with_map else {}
    pages["search.html"] = search_page(features, f"Search: {title}")
    write_browser(run.folder / "browser", features, title, pages)
    return pages


def _feature_map(sae: Any, stats: FeatureStats, features: list[FeatureRecord], families: dict[str, Any] | None,
                 title: str) -> str:
    live = np.asarray([f.id for f in features if not f.dead], dtype=np.int64)
    coords = np.zeros((sae.d_sae, 2))
    with progress_bar(1, "feature map") as bar:
        coords[live] = map_layout(stats, sae.W_dec.detach().float().cpu().numpy(), live)
        bar.update(1)
    return map_page(features, coords, family_roots(families, sae.d_sae), f"Feature map: {title}")


def _embeddings_of_rows(corpus: Any, rows: np.ndarray, texts: list[str]) -> Callable[[np.ndarray], torch.Tensor]:
    """A lookup of the embeddings of some rows (sorted), read or encoded once."""
    values = corpus.embeddings_at(rows, texts)

    def embeddings_of(wanted: np.ndarray) -> torch.Tensor:
        return values[torch.from_numpy(np.searchsorted(rows, np.asarray(wanted, dtype=np.int64)))]

    return embeddings_of


def _feature_records(stats: FeatureStats, texts: list[str], labels: dict[int, FeatureLabel],
                     families: dict[str, Any] | None, scores: dict[int, tuple[float, float]],
                     words: dict[tuple[int, int], list[list[float]]]) -> list[FeatureRecord]:
    conditional = stats.conditional() if stats.coactivation is not None else None
    children: dict[int, list[int]] = {}
    parents = {int(child): parent for child, parent in (families or {}).get("parents", {}).items()}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    records = []
    for feature in range(len(stats.counts)):
        count = int(stats.counts[feature])
        label = labels.get(feature)
        score = scores.get(feature, (None, None))
        records.append(FeatureRecord(
            id=feature, label=label.text if label else "", concept=label.concept if label else "",
            keywords=list(label.keywords) if label else [], dead=count == 0, density=float(stats.density[feature]),
            count=count, n_texts=stats.n_texts, mean_act=float(stats.mean_act[feature]),
            max_act=float(stats.max_act[feature]),
            top_texts=[TextExample(texts[int(r)], float(v), int(r), words.get((feature, int(r))))
                       for r, v in zip(stats.top_rows[feature], stats.top_values[feature])],
            quantile_texts=[TextExample(texts[r], v, r, quantile=q) for q, r, v in stats.quantile_rows[feature]],
            histogram=stats.histograms[feature].tolist(), label_score=score[0], label_score_lexical=score[1],
            coactivating=_coactivating(conditional, feature) if conditional is not None and count else [],
            family=Family(parents.get(feature), sorted(children.get(feature, []))) if families is not None else None))
    return records


def _coactivating(conditional: np.ndarray, feature: int) -> list[Coactivation]:
    """The N_COACTIVATING features most likely to fire when ``feature`` does."""
    row = conditional[feature].copy()
    row[feature] = -1
    return [Coactivation(int(j), round(float(row[j]), 4)) for j in np.argsort(-row)[:N_COACTIVATING] if row[j] > 0]
