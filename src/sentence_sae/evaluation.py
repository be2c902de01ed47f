"""`sentence-sae eval`: every metric of :mod:`sentence_sae.metrics` for a saved run, on its own
held-out texts or another dataset, written to ``eval.json`` beside a density histogram."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import torch

from .errors import DataError, check_positive
from .files import atomic_write_text
from .data import TextCounter, iter_dataset_rows, open_dataset
from .metrics import (RETRIEVAL_METRICS, codes_and_reconstructions, label_purity, linear_probe_accuracy,
                      neighbour_recall, paired_retrieval, reconstruction_metrics, similarity_spearman)
from .plots import density_histogram
from .runs import open_run
from .tracking import METRICS_FILE, read_metrics


def evaluate_run(run_dir: str | Path, dataset_path: str | None = None, num_examples: int | None = None,
                 label_column: str | None = None, text_column: str | None = None, device: str | None = None,
                 model: Any = None, seed: int = 0, retrieval: str | None = None, query_column: str = "query",
                 document_column: str = "document") -> dict[str, Any]:
    """Evaluate the SAE of ``run_dir`` on the first ``num_examples`` texts of a dataset (by default
    the run's own held-out texts); write ``eval.json`` and ``density_histogram.png`` into the run
    folder and return the metrics. ``retrieval``, a dataset of (query, document) pairs, adds
    ``evaluate_retrieval``'s report under "retrieval"."""
    check_positive("num_examples", num_examples, unset="the run's held-out texts")
    run = open_run(run_dir, device, model, dataset_path=dataset_path, text_column=text_column)
    pairs = read_pairs(retrieval, query_column, document_column) if retrieval else None  # a bad file fails first
    n = run.cfg.num_eval_examples if num_examples is None else num_examples
    corpus = run.corpus()
    try:
        labels_raw: list[Any] = []
        if label_column:
            rows = itertools.islice(corpus.rows_from(0, {label_column: "label_column"}), n)
            labels_raw = [extra[label_column] for _, extra in rows]
        embeddings = corpus.embeddings(0, n)
    finally:
        corpus.close()
    if len(embeddings) < 2:
        raise DataError(f"dataset {run.cfg.dataset_path} has {len(embeddings)} texts to evaluate on; give more")
    sae = run.sae
    outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
    metrics: dict[str, Any] = dict(reconstruction_metrics(sae, embeddings, outputs=outputs))
    codes = torch.cat([batch_codes for batch_codes, _ in outputs])
    reconstructed = torch.cat([batch_reconstructed for _, batch_reconstructed in outputs])
    metrics["recall_at_10"] = neighbour_recall(embeddings, reconstructed, k=10)
    metrics["sim_spearman"] = similarity_spearman(embeddings, reconstructed)
    if label_column:
        metrics.update(label_metrics(codes, embeddings.cpu(), labels_raw, seed))
    densities = (codes > 0).double().mean(0).numpy()
    plot = density_histogram(densities, run.folder / "density_histogram.png",
                             f"{run.folder.name}: feature densities on {len(embeddings)} texts")
    metrics, missing = split_missing(metrics, len(embeddings))
    metrics["dead_frac"] = training_dead_frac(run.folder)
    if metrics["dead_frac"] is None:
        missing["dead_frac"] = f"{run.folder} holds no {METRICS_FILE} of a sentence-sae training run"
    report = {
        **metrics,
        **({"missing": missing} if missing else {}),
        "examples": len(embeddings),
        "dataset_path": run.cfg.dataset_path,
        "held_out": run.own_dataset and len(embeddings) <= run.cfg.num_eval_examples,
        "label_column": label_column,
        "plots": [plot.name],
        **({"retrieval": pairs_retrieval(run, pairs, retrieval)} if pairs else {}),
    }
    atomic_write_text(run.folder / "eval.json", json.dumps(report, indent=2))
    return report


MISSING_REASONS = {
    "recall_at_10": "needs more than 10 texts",
    "sim_spearman": "needs at least 3 texts",
    "label_purity": "no feature fires on 5 or more of the texts",
    "probe_acc_sae": "the probe's 20% test split is empty",
    "probe_acc_embed": "the probe's 20% test split is empty",
}
"""Why a metric cannot be measured on an evaluation this small (it is reported as null, never NaN)."""


def evaluate_retrieval(run_dir: str | Path, pairs_path: str, query_column: str = "query",
                       document_column: str = "document", num_examples: int | None = None, device: str | None = None,
                       model: Any = None) -> dict[str, Any]:
    """How much of the embedding's retrieval the SAE keeps, on (query, document) pairs: each query
    searched for its own document among all documents, with the dense embeddings (cosine), their
    reconstructions (cosine) and the codes as sparse vectors (dot product), and the share of the dense
    figure each keeps."""
    check_positive("num_examples", num_examples, unset="every pair")
    pairs = read_pairs(pairs_path, query_column, document_column, num_examples)
    return pairs_retrieval(open_run(run_dir, device, model), pairs, pairs_path)


def pairs_retrieval(run: Any, pairs: tuple[list[str], list[str]], pairs_path: str) -> dict[str, Any]:
    queries, documents = pairs
    report = retrieval_report(run.sae, run.encode(queries), run.encode(documents))
    return {"pairs": len(queries), "dataset_path": pairs_path, **report}


def retrieval_report(sae: Any, queries: torch.Tensor, documents: torch.Tensor) -> dict[str, Any]:
    """``paired_retrieval`` of the dense embeddings, their reconstructions and the codes, and the share of
    each dense figure the other two keep."""
    dense = {"queries": queries.float().cpu(), "documents": documents.float().cpu()}
    codes, reconstructed = {}, {}
    for side, embeddings in dense.items():
        codes[side], reconstructed[side] = codes_and_reconstructions(sae, embeddings)
    results = {name: paired_retrieval(vectors["queries"], vectors["documents"], cosine=name != "codes")
               for name, vectors in (("dense", dense), ("reconstructed", reconstructed), ("codes", codes))}
    keeps = {name: {key: results[name][key] / results["dense"][key] if results["dense"][key] > 0 else None
                    for key in RETRIEVAL_METRICS} for name in ("reconstructed", "codes")}
    return {**results, "reconstructed_keeps": keeps["reconstructed"], "codes_keeps": keeps["codes"]}


def read_pairs(path: str, query_column: str, document_column: str,
               limit: int | None = None) -> tuple[list[str], list[str]]:
    """The (query, document) pairs of a dataset, in order; rows where either text is empty are skipped."""
    queries, documents = [], []
    rows = iter_dataset_rows(open_dataset(path), query_column, path, TextCounter(), {document_column: "document_column"},
                             text_option="query_column")
    for query, extra in rows:
        document = extra[document_column]
        if isinstance(document, str) and document.strip():
            queries.append(query)
            documents.append(document)
            if limit is not None and len(queries) >= limit:
                break
    if len(queries) < 2:
        raise DataError(f"{path} has {len(queries)} (query, document) pairs in columns {query_column!r} and "
                        f"{document_column!r}; retrieval needs at least 2")
    return queries, documents


def training_dead_frac(folder: Path) -> float | None:
    """The share of features that had not fired in the last dead_feature_window training examples when
    the run ended (the last measurement in its metrics.jsonl), or None for a folder trained elsewhere."""
    if not (folder / METRICS_FILE).is_file():
        return None
    for row in reversed(read_metrics(folder / METRICS_FILE)):
        for key in ("eval/dead_frac", "train/dead_frac"):
            if key in row:
                return float(row[key])
    return None


def split_missing(metrics: dict[str, Any], texts: int) -> tuple[dict[str, Any], dict[str, str]]:
    """The metrics with each non-finite value replaced by None, and the reason each is missing."""
    missing = {key: f"{MISSING_REASONS.get(key, 'not measurable')} ({texts} evaluated)" for key, value in metrics.items()
               if isinstance(value, float) and not math.isfinite(value)}
    return {key: None if key in missing else value for key, value in metrics.items()}, missing


def label_metrics(codes: torch.Tensor, embeddings: torch.Tensor, labels_raw: list[Any], seed: int = 0) -> dict[str, float]:
    """Linear-probe accuracy on SAE codes and on raw embeddings (same 80/20 split), and the mean
    label purity of features."""
    names = sorted({str(label) for label in labels_raw})
    index = {name: i for i, name in enumerate(names)}
    labels = torch.tensor([index[str(label)] for label in labels_raw])
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    train_mask = torch.zeros(len(labels), dtype=torch.bool)
    train_mask[order[: int(0.8 * len(labels))]] = True
    purity, _ = label_purity(codes, labels)
    majority = float(labels.bincount().max()) / len(labels)
    return {
        "probe_acc_sae": linear_probe_accuracy(codes, labels, train_mask),
        "probe_acc_embed": linear_probe_accuracy(embeddings.float(), labels, train_mask),
        "label_purity": purity,
        "label_majority_share": majority,
        "label_classes": len(names),
    }
