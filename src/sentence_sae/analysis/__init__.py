"""Reading an SAE's features: statistics over a corpus, keyword labels, families and a browser.

``explain_run`` streams a corpus once through the SAE and writes, into the run folder,
``features.jsonl`` (one line per feature), ``families.json`` and the static site ``browser/`` (with a
feature map when umap-learn is installed). ``compare``, ``diff`` and ``search`` answer questions about
texts with the features' labels.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..embeddings import encode_texts, load_sentence_model
from ..errors import DataError, check_positive
from ..files import atomic_write_text
from ..runs import open_run
from ..tracking import progress_bar
from .browser import write_browser
from .families import build_families
from .feature_map import MAP_EXTRA, family_roots, map_layout, map_page, umap_available
from .features import FeatureStats, collect_feature_stats
from .label_score import ScoringSet, ScoringTexts, most_frequent_word, score_labels, scoring_set, summary
from .search_page import search_page
from .keywords import KeywordLabeler

N_COACTIVATING = 8


def explain_run(run_dir: str | Path, dataset_path: str | None = None, num_examples: int | None = None,
                text_column: str | None = None, top_n: int = 10, label_texts: int = 8,
                device: str | None = None, model: Any = None, family_min_weight: float = 0.5,
                with_map: bool = True) -> dict[str, Any]:
    """Explain every feature of the SAE in ``run_dir`` on a corpus (by default the run's dataset);
    ``with_map`` adds the feature map (``browser/map.html``) when umap-learn is installed."""
    check_positive("num_examples", num_examples, unset="the whole dataset")
    check_positive("top_n", top_n)
    started = time.perf_counter()
    run = open_run(run_dir, device, model, dataset_path=dataset_path, text_column=text_column)
    corpus = run.corpus()
    try:
        texts, stats = _read_corpus(run, corpus, num_examples, top_n)
        alive = [f for f in range(run.sae.d_sae) if stats.counts[f] > 0]
        label_rows = {f: stats.top_rows[f][:label_texts] for f in alive}
        scoring = scoring_set([stats.firing_rows(f) for f in range(run.sae.d_sae)], label_texts, len(texts))
        needed = {int(r) for rows in [*label_rows.values(), *scoring.positives, *scoring.negatives] for r in rows}
        row_embeddings = _embeddings_of_rows(corpus, sorted(needed), texts)
        labeler = KeywordLabeler(load_sentence_model(run.cfg.model_name, run.cfg.device, "fast"))
        keywords = labeler.label_all([[texts[r] for r in label_rows[f]] for f in alive],
                                     [torch.stack([row_embeddings[int(r)] for r in label_rows[f]]) for f in alive])
    finally:
        corpus.close()
    label_of = {f: ", ".join(terms) for f, terms in zip(alive, keywords)}
    scores, score_summary = _score_labels(scoring, label_of, label_rows, texts, row_embeddings, labeler.model)
    labels = [label_of.get(f, "") for f in range(run.sae.d_sae)]
    families = (build_families(stats.counts, stats.coactivation, labels, min_weight=family_min_weight)
                if stats.coactivation is not None else None)
    features = _feature_records(stats, texts, labels, dict(zip(alive, keywords)), families, scores)
    folder = run.folder
    atomic_write_text(folder / "features.jsonl", "".join(json.dumps(f) + "\n" for f in features))
    if families is not None:
        atomic_write_text(folder / "families.json", json.dumps(families, indent=1))
    pages = _write_site(run, features, families, f"{folder.name}: {run.sae.d_sae} features on {len(texts)} texts",
                        with_map)
    index = folder / "browser" / "index.html"
    seconds = time.perf_counter() - started
    return {
        "features": str(folder / "features.jsonl"),
        "families": str(folder / "families.json") if families is not None else None,
        "browser": str(index),
        "texts": len(texts),
        "alive": len(alive),
        "dead": run.sae.d_sae - len(alive),
        "n_families": len(families["families"]) if families else 0,
        "label_scores": score_summary,
        "map": str(index.parent / "map.html") if "map.html" in pages else None,
        **({} if "map.html" in pages or not with_map else {"note": f"no feature map: {MAP_EXTRA}"}),
        "seconds": round(seconds, 2),
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


def _score_labels(scoring: ScoringSet, label_of: dict[int, str], label_rows: dict[int, np.ndarray], texts: list[str],
                  row_embeddings: dict[int, torch.Tensor], model: Any) -> tuple[dict[int, tuple[float, float]], dict[str, Any]]:
    """Each scored feature's (embedding, lexical) label score, and the summary with the baselines."""
    features = [int(f) for f in scoring.features]
    if not features:
        return {}, summary({}, 0)

    def stacked(rows: np.ndarray) -> torch.Tensor:
        return torch.stack([row_embeddings[int(r)] for r in rows])

    scoring_texts = ScoringTexts(scoring, texts, stacked)
    ours = [label_of.get(f, "") for f in features]
    shuffle = np.random.default_rng(0).permutation(len(features))
    top_rows = np.asarray([label_rows[f][0] for f in features])
    candidates = {  # label set -> (labels, their embeddings or None to encode them)
        "labels": (ours, None),
        "shuffled": ([ours[i] for i in shuffle], None),
        "frequent_word": ([most_frequent_word([texts[r] for r in label_rows[f]]) for f in features], None),
        "top_text": ([texts[r] for r in top_rows], stacked(top_rows)),
    }
    results = {}
    with progress_bar(len(candidates), "score labels") as bar:
        for name, (labels, embeddings) in candidates.items():
            if embeddings is None:
                embeddings = encode_texts(model, labels, 256)
            results[name] = score_labels(labels, embeddings, scoring_texts)
            bar.update(1)
    per_feature = {f: (round(float(e), 4), round(float(x), 4)) for f, e, x in zip(features, *results["labels"])}
    return per_feature, summary(results, len(features))


def _write_site(run: Any, features: list[dict[str, Any]], families: dict[str, Any] | None, title: str,
                with_map: bool) -> dict[str, str]:
    """The browser, with the search page and (when umap-learn is installed) the feature map."""
    pages = {"map.html": _feature_map(run.sae, features, families, title)} if with_map and umap_available() else {}
    pages["search.html"] = search_page(features, f"Search: {title}")
    write_browser(run.folder / "browser", features, title, pages)
    return pages


def _feature_map(sae: Any, features: list[dict[str, Any]], families: dict[str, Any] | None, title: str) -> str:
    live = [f["id"] for f in features if not f["dead"]]
    coords = np.zeros((sae.d_sae, 2))
    with progress_bar(1, "feature map") as bar:
        coords[live] = map_layout(sae.W_dec.detach().float().cpu().numpy()[live])
        bar.update(1)
    return map_page(features, coords, family_roots(families, sae.d_sae), f"Feature map: {title}")


def _embeddings_of_rows(corpus: Any, rows: list[int], texts: list[str]) -> dict[int, torch.Tensor]:
    """Embeddings of some rows: from the cache when it holds them, else encoded again."""
    if not rows:
        return {}
    cache = corpus.cache
    if cache is not None and cache.rows > rows[-1]:
        values = torch.from_numpy(cache.embeddings()[np.asarray(rows)])
    else:
        values = corpus.encode([texts[r] for r in rows]).cpu()
    return dict(zip(rows, values))


def _feature_records(stats: FeatureStats, texts: list[str], labels: list[str], keywords: dict[int, list[str]],
                     families: dict[str, Any] | None, scores: dict[int, tuple[float, float]]) -> list[dict[str, Any]]:
    conditional = stats.conditional() if stats.coactivation is not None else None
    children: dict[int, list[int]] = {}
    parents = {int(child): parent for child, parent in (families or {}).get("parents", {}).items()}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    records = []
    for feature in range(len(stats.counts)):
        count = int(stats.counts[feature])
        record: dict[str, Any] = {
            "id": feature,
            "label": labels[feature],
            "keywords": keywords.get(feature, []),
            "dead": count == 0,
            "density": float(stats.density[feature]),
            "count": count,
            "n_texts": stats.n_texts,
            "mean_act": float(stats.mean_act[feature]),
            "max_act": float(stats.max_act[feature]),
            "top_texts": [{"text": texts[int(r)], "activation": float(v), "row": int(r)}
                          for r, v in zip(stats.top_rows[feature], stats.top_values[feature])],
            "quantile_texts": [{"quantile": q, "text": texts[r], "activation": v, "row": r}
                               for q, r, v in stats.quantile_rows[feature]],
            "histogram": stats.histograms[feature].tolist(),
            "label_score": scores[feature][0] if feature in scores else None,
            "label_score_lexical": scores[feature][1] if feature in scores else None,
        }
        if conditional is not None and count:
            row = conditional[feature].copy()
            row[feature] = -1
            best = np.argsort(-row)[:N_COACTIVATING]
            record["coactivating"] = [{"id": int(j), "p": round(float(row[j]), 4)} for j in best if row[j] > 0]
        if families is not None:
            record["family"] = {"parent": parents.get(feature), "children": sorted(children.get(feature, []))}
        records.append(record)
    return records


__all__ = ["explain_run", "collect_feature_stats", "KeywordLabeler", "build_families", "write_browser"]
