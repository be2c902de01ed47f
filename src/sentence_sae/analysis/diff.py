"""What distinguishes corpus A from corpus B: for every feature, how often it fires on each side, a
two-proportion test, and Benjamini-Hochberg control of the false discovery rate over all features.

A and B are two datasets, or two values of a label column of one dataset. The report is a JSON file
and an HTML page in ``RUN/diffs/``, with each flagged feature's label and example texts from both sides.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch
from scipy import stats

from ..corpus import Corpus
from ..errors import ConfigError, DataError, check_fdr, check_positive
from ..files import atomic_write_text
from ..metrics import code_blocks
from ..runs import open_run
from ..sae import BaseSAE
from .browser import examples_html, feature_file, file_stem, page, q_text
from .records import feature_labels

EXAMPLES_PER_SIDE = 3
MIN_EXPECTED_FOR_Z = 5
"""Below this expected count in any cell, the z-test's normal approximation is poor: Fisher's exact test."""
PSEUDOCOUNT = 0.5
"""Added to both firing counts for the reported ratio, so a feature silent on one side has a finite one."""


class FiringDiff(NamedTuple):
    """Per-feature firing counts on two sides and the test of their rates."""

    n_a: int
    n_b: int
    counts_a: np.ndarray
    counts_b: np.ndarray
    p_values: np.ndarray  # two-sided, per feature
    q_values: np.ndarray  # Benjamini-Hochberg adjusted
    flagged: np.ndarray  # q <= fdr

    @property
    def log2_ratio(self) -> np.ndarray:
        rate_a = (self.counts_a + PSEUDOCOUNT) / (self.n_a + 2 * PSEUDOCOUNT)
        rate_b = (self.counts_b + PSEUDOCOUNT) / (self.n_b + 2 * PSEUDOCOUNT)
        return np.log2(rate_a / rate_b)


def two_proportion_p_values(counts_a: np.ndarray, n_a: int, counts_b: np.ndarray, n_b: int) -> np.ndarray:
    """Two-sided p-values of equal firing rates: the pooled z-test, or Fisher's exact test where an
    expected cell count is below MIN_EXPECTED_FOR_Z."""
    counts_a, counts_b = np.asarray(counts_a, np.float64), np.asarray(counts_b, np.float64)
    pooled = (counts_a + counts_b) / (n_a + n_b)
    variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (counts_a / n_a - counts_b / n_b) / np.sqrt(variance)
    p_values = np.where(variance > 0, 2 * stats.norm.sf(np.abs(np.nan_to_num(z))), 1.0)
    expected = np.minimum(pooled, 1 - pooled) * min(n_a, n_b)
    for feature in np.flatnonzero((expected < MIN_EXPECTED_FOR_Z) & (variance > 0)):
        table = [[counts_a[feature], n_a - counts_a[feature]], [counts_b[feature], n_b - counts_b[feature]]]
        p_values[feature] = stats.fisher_exact(table).pvalue
    return p_values


def firing_diff(counts_a: np.ndarray, n_a: int, counts_b: np.ndarray, n_b: int, fdr: float = 0.05) -> FiringDiff:
    """Test every feature's firing rate in A against B, flagging at false discovery rate ``fdr``."""
    check_fdr(fdr)
    if n_a < 1 or n_b < 1:
        raise DataError(f"a side of the diff has no texts (A: {n_a}, B: {n_b}); check --a and --b")
    p_values = two_proportion_p_values(counts_a, n_a, counts_b, n_b)
    q_values = stats.false_discovery_control(p_values, method="bh")
    return FiringDiff(n_a, n_b, np.asarray(counts_a), np.asarray(counts_b), p_values, q_values, q_values <= fdr)


class SideStats:
    """Firing counts of every feature over one side's texts, and each feature's strongest texts there."""

    def __init__(self, d_sae: int, examples: int = EXAMPLES_PER_SIDE):
        self.n = 0
        self.counts = np.zeros(d_sae, np.int64)
        self.best_values = torch.full((examples, d_sae), -float("inf"))
        self.best_rows = torch.full((examples, d_sae), -1, dtype=torch.int64)
        self.texts: dict[int, str] = {}

    def add(self, codes: torch.Tensor, texts: list[str]) -> None:
        codes = codes.float().cpu()
        self.counts += (codes > 0).sum(0).numpy()
        rows = torch.arange(self.n, self.n + len(codes))[:, None].expand_as(codes)
        values = torch.cat([self.best_values, codes.masked_fill(codes <= 0, -float("inf"))])
        best = values.topk(len(self.best_values), dim=0)
        self.best_rows = torch.cat([self.best_rows, rows]).gather(0, best.indices)
        self.best_values = best.values
        self.texts.update(zip(range(self.n, self.n + len(texts)), texts))
        self.n += len(codes)
        kept = set(self.best_rows.flatten().tolist())
        self.texts = {row: text for row, text in self.texts.items() if row in kept}

    def examples(self, feature: int) -> list[dict[str, Any]]:
        return [{"text": self.texts[int(row)], "activation": float(value)}
                for value, row in zip(self.best_values[:, feature].tolist(), self.best_rows[:, feature].tolist())
                if value > 0]


def _side_chunks(chunks: Iterator[tuple[list[str], list[dict[str, Any]], torch.Tensor]], label_column: str | None,
                 sides: tuple[str, str] | None) -> Iterator[tuple[int, list[str], torch.Tensor]]:
    """(side, texts, embeddings) chunks: the whole corpus as one side, or its rows split by label."""
    for texts, extras, embeddings in chunks:
        if sides is None:
            yield 0, texts, embeddings
            continue
        labels = [str(row[label_column]) for row in extras]
        for side, value in enumerate(sides):
            keep = [i for i, label in enumerate(labels) if label == value]
            if keep:
                yield side, [texts[i] for i in keep], embeddings[keep]


def collect_sides(sae: BaseSAE, corpora: list[Corpus], num_examples: int | None, label_column: str | None,
                  sides: tuple[str, str] | None) -> list[SideStats]:
    """Read the corpora (one labelled corpus, or one corpus per side) into per-side statistics."""
    found = [SideStats(sae.d_sae), SideStats(sae.d_sae)]
    extra = {label_column: "label_column"} if label_column else None
    for index, corpus in enumerate(corpora):
        chunks = corpus.read(num_examples, "diff" if len(corpora) == 1 else f"diff {'AB'[index]}", extra)
        for side, texts, embeddings in _side_chunks(chunks, label_column, sides):
            for start, codes in code_blocks(sae, embeddings):
                found[side if len(corpora) == 1 else index].add(codes, texts[start : start + len(codes)])
    return found


def diff_run(run_dir: str | Path, a: str, b: str, dataset_path: str | None = None, label_column: str | None = None,
             text_column: str | None = None, num_examples: int | None = None, fdr: float = 0.05, top: int = 20,
             device: str | None = None, model: Any = None) -> dict[str, Any]:
    """Features that fire more often in A than in B, or less: a JSON file and an HTML report in RUN/diffs/."""
    check_positive("num_examples", num_examples, unset="every text")
    check_positive("top", top)
    if a == b:
        raise ConfigError(f"--a and --b are both '{a}'; give two different datasets or label values")
    if dataset_path and not label_column:
        raise ConfigError("--dataset_path needs --label_column: --a and --b are then values of that column")
    run = open_run(run_dir, device, model, dataset_path=dataset_path, text_column=text_column)
    if label_column:
        corpora = [run.corpus()]
    else:
        corpora = [Corpus(run.model, run.cfg.replace(dataset_path=path)) for path in (a, b)]
    try:
        side_a, side_b = collect_sides(run.sae, corpora, num_examples, label_column, (a, b) if label_column else None)
    finally:
        for corpus in corpora:
            corpus.close()
    for name, side in ((a, side_a), (b, side_b)):
        if side.n == 0:
            where = f"no row has {label_column} = '{name}'" if label_column else f"dataset {name} has no texts"
            raise DataError(f"{where}; check the value (labels are compared as text)")
    result = firing_diff(side_a.counts, side_a.n, side_b.counts, side_b.n, fdr)
    report = _report(result, side_a, side_b, feature_labels(run.folder), a, b, label_column, fdr)
    folder = run.folder / "diffs"
    folder.mkdir(exist_ok=True)
    stem = f"{file_stem(a, 'side')}-vs-{file_stem(b, 'side')}"
    atomic_write_text(folder / f"{stem}.json", json.dumps(report, indent=1))
    atomic_write_text(folder / f"{stem}.html", diff_page(report))
    flagged = report["features"]
    return {"json": str(folder / f"{stem}.json"), "html": str(folder / f"{stem}.html"), "n_a": side_a.n,
            "n_b": side_b.n, "flagged": int(result.flagged.sum()), "fdr": fdr,
            "top_a": [f"#{f['id']} {f['label']}" for f in flagged if f["log2_ratio"] > 0][:top],
            "top_b": [f"#{f['id']} {f['label']}" for f in flagged if f["log2_ratio"] < 0][:top]}


def _report(result: FiringDiff, side_a: SideStats, side_b: SideStats, labels: dict[int, str], a: str, b: str,
            label_column: str | None, fdr: float) -> dict[str, Any]:
    ratio = result.log2_ratio
    flagged = np.flatnonzero(result.flagged)
    # Strongest evidence first; p-values that underflow to 0 are ordered by the difference in rates.
    gap = np.abs(result.counts_a / result.n_a - result.counts_b / result.n_b)
    flagged = flagged[np.lexsort((-gap[flagged], result.p_values[flagged]))]
    features = [{"id": int(f), "label": labels.get(int(f), ""), "rate_a": result.counts_a[f] / result.n_a,
                 "rate_b": result.counts_b[f] / result.n_b, "count_a": int(result.counts_a[f]),
                 "count_b": int(result.counts_b[f]), "log2_ratio": float(ratio[f]), "p": float(result.p_values[f]),
                 "q": float(result.q_values[f]), "examples_a": side_a.examples(f), "examples_b": side_b.examples(f)}
                for f in flagged]
    return {"a": a, "b": b, "label_column": label_column, "n_a": result.n_a, "n_b": result.n_b, "fdr": fdr,
            "test": f"two-proportion z-test (Fisher's exact below {MIN_EXPECTED_FOR_Z} expected), Benjamini-Hochberg",
            "features_tested": len(result.p_values), "flagged": len(features), "features": features}


def diff_page(report: dict[str, Any]) -> str:
    """The report as one HTML page in the browser's look; feature ids link to the browser's pages."""
    a, b = html.escape(report["a"]), html.escape(report["b"])
    parts = ["<style>body{max-width:80rem} td{vertical-align:top} .text{display:block;font-size:.85rem}</style>",
             f"<h1>{a} <span class='meta'>vs</span> {b}</h1>",
             f"<p class='meta'>{report['n_a']} texts in A, {report['n_b']} in B; {report['features_tested']} features "
             f"tested with a {html.escape(report['test'])} at {report['fdr']:.0%} false discovery rate: "
             f"<b id='flagged'>{report['flagged']}</b> flagged.</p>"]
    for title, more_in_a in ((f"More often in {a}", True), (f"More often in {b}", False)):
        rows = [f for f in report["features"] if (f["log2_ratio"] > 0) == more_in_a]
        parts.append(f"<h2>{title} ({len(rows)})</h2>")
        if not rows:
            parts.append("<p class='meta'>none</p>")
            continue
        parts.append("<table><thead><tr><th>feature</th><th>rate A</th><th>rate B</th><th>log2 ratio</th><th>q</th>"
                     "<th>examples A</th><th>examples B</th></tr></thead><tbody>" + "".join(
                         f"<tr class='diff-row'><td><a href='../browser/features/{feature_file(f['id'])}'>#{f['id']}</a> "
                         f"<span class='label'>{html.escape(f['label'])}</span></td><td class='num'>{f['rate_a']:.2%}</td>"
                         f"<td class='num'>{f['rate_b']:.2%}</td><td class='num'>{f['log2_ratio']:+.2f}</td>"
                         f"<td class='num'>{q_text(f['q'])}</td><td>{examples_html(f['examples_a'])}</td>"
                         f"<td>{examples_html(f['examples_b'])}</td></tr>" for f in rows) + "</tbody></table>")
    return page(f"diff: {report['a']} vs {report['b']}", "\n".join(parts))
