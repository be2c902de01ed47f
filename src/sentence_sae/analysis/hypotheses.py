"""Which features go with an outcome: HypotheSAEs' recipe (Movva et al. 2025) without a language model.

A dataset with a target column, binary (two values) or numeric. Its texts are split in two at random:
on the selection half the Lasso (a linear probability model for a binary target) on the codes, each
feature scaled to unit standard deviation, picks at most ``max_features`` features; on the validation
half, which the selection never saw, each picked feature is tested on its own by permuting the target
(binary: the Mann-Whitney U of its activation between the classes, with the feature's AUC as the
effect; numeric: Spearman correlation), one-sided in the direction its Lasso coefficient claims, and
Benjamini-Hochberg controls the false discovery rate over the picked features. A hypothesis is a
direction ("fires more where the target is high"), so a feature whose validation effect runs the
other way is never confirmed. Every significant feature is a hypothesis, named by its label and
shown with the validation texts where it fires most.

How much of the signal the named features carry: a linear model on the picked features and a linear
probe on the dense embeddings, both fitted on the selection half, scored on the validation half
(AUC, or R^2), and the share of the probe's lift over chance the named features reach.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import sparse, stats

from ..errors import DataError, check_fdr, check_positive
from ..files import atomic_write_text
from ..metrics import code_blocks
from ..runs import open_run
from ..tracking import progress_bar
from .browser import examples_html, feature_file, file_stem, page, q_text
from .records import feature_labels

EXAMPLES = 3
MIN_RESAMPLES = 9_999
PERMUTATION_VALUES = 1 << 22
"""Permuted target values held at once (32 MB): the block of permutations shrinks as the texts grow."""
PATH_STEPS = 40
"""Penalties tried, from the one that keeps no feature down a geometric path, to find the weakest that
keeps at most max_features."""


class Outcome(NamedTuple):
    """The texts with a target, their codes and embeddings, and what the target is."""

    texts: list[str]
    target: np.ndarray  # float64: 0/1 for a binary target
    codes: sparse.csr_matrix
    embeddings: np.ndarray
    kind: str  # "binary" or "numeric"
    positive: str | None  # the value read as 1 (binary)
    skipped: int  # rows whose target was missing


def parse_target(values: list[Any], column: str) -> tuple[np.ndarray, str, str | None, np.ndarray]:
    """(target, kind, positive value, kept rows): two distinct values make a binary target (the later in
    sorted order is 1), more than two that all read as numbers a numeric one; missing values are skipped."""
    kept = np.array([value is not None and str(value).strip() != "" for value in values], dtype=bool)
    present = [values[i] for i in np.flatnonzero(kept)]
    distinct = sorted({str(value) for value in present})
    if len(distinct) == 2:
        return np.array([float(str(v) == distinct[1]) for v in present]), "binary", distinct[1], kept
    try:
        numbers = np.array([float(value) for value in present], dtype=np.float64)
    except (TypeError, ValueError):
        numbers = None
    if len(distinct) < 2 or numbers is None or not np.isfinite(numbers).all():
        shown = ", ".join(distinct[:5]) + (", ..." if len(distinct) > 5 else "")
        raise DataError(f"target column '{column}' has {len(distinct)} distinct value(s) ({shown}); give a column with "
                        "two values or with numbers (to compare two of many labels, use diff)")
    return numbers, "numeric", None, kept


def read_outcome(run: Any, target_column: str, num_examples: int | None) -> Outcome:
    """Every text of the run's corpus (or the first ``num_examples``) with its target, codes and embedding."""
    corpus = run.corpus()
    texts, values, codes, embeddings = [], [], [], []
    try:
        for chunk_texts, extras, chunk in corpus.read(num_examples, "hypotheses", {target_column: "target_column"}):
            texts.extend(chunk_texts)
            values.extend(row[target_column] for row in extras)
            codes.extend(sparse.csr_matrix(block.float().cpu().numpy()) for _, block in code_blocks(run.sae, chunk))
            embeddings.append(chunk.float().cpu().numpy())
    finally:
        corpus.close()
    if not texts:
        raise DataError(f"dataset {run.cfg.dataset_path} has no texts")
    target, kind, positive, kept = parse_target(values, target_column)
    rows = np.flatnonzero(kept)
    return Outcome([texts[i] for i in rows], target, sparse.vstack(codes).tocsr()[rows],
                   np.concatenate(embeddings)[rows], kind, positive, int((~kept).sum()))


def column_scale(codes: sparse.csr_matrix) -> np.ndarray:
    """Each feature's standard deviation (1 for a feature that never varies)."""
    mean = np.asarray(codes.mean(0)).ravel()
    variance = np.asarray(codes.multiply(codes).mean(0)).ravel() - mean ** 2
    scale = np.sqrt(np.clip(variance, 0, None))
    return np.where(scale > 1e-12, scale, 1.0)


def select_features(codes: sparse.csr_matrix, target: np.ndarray, max_features: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(features, coefficients) the Lasso keeps at the weakest penalty on a geometric path that keeps at
    most ``max_features``, strongest first."""
    from sklearn.linear_model import Lasso

    x = sparse.csr_matrix(codes.multiply(1 / column_scale(codes)[None, :]))
    centered = target - target.mean()
    strongest = np.abs(x.T @ centered).max() / len(target)  # the penalty past which nothing is kept
    if not strongest > 0:
        return np.array([], dtype=int), np.array([])
    best = np.zeros(x.shape[1])
    for step in range(PATH_STEPS):
        coef = Lasso(alpha=strongest * 0.8 ** (step + 1), max_iter=5000, random_state=seed).fit(x, target).coef_
        if np.count_nonzero(coef) > max_features:
            break
        best = coef
    features = np.flatnonzero(best)
    order = np.argsort(-np.abs(best[features]))
    return features[order], best[features][order]


def resample_count(max_features: int, fdr: float) -> int:
    """Label permutations per test: enough that a feature beating every one clears Benjamini-Hochberg's
    strictest threshold (fdr / features tested) twenty times over, and never fewer than 9,999."""
    return max(MIN_RESAMPLES, math.ceil(20 * max_features / fdr) - 1)


def feature_tests(codes: sparse.csr_matrix, target: np.ndarray, kind: str, features: np.ndarray,
                  coefficients: np.ndarray, resamples: int = MIN_RESAMPLES,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(effect, p-value) of each feature alone on the validation texts: its AUC for the positive class,
    or its Spearman correlation with a numeric target. The p-value is one-sided, in the direction of the
    feature's selection coefficient, from ``resamples`` permutations of the target over the texts (the
    Mann-Whitney U or Spearman statistic, on ranks with ties averaged). Normal approximations are
    anti-conservative for features that fire on few texts, which are the ones a Lasso on unit-scaled
    codes likes to pick; a permutation p-value is exact at any size."""
    if not len(features):
        return np.zeros(0), np.ones(0)
    ranks = stats.rankdata(codes[:, features].toarray(), axis=0)
    ranks -= ranks.mean(0)
    scores = target if kind == "binary" else stats.rankdata(target)
    scores = scores - scores.mean()
    sign = np.where(coefficients > 0, 1.0, -1.0)
    statistic = scores @ ranks
    observed = sign * statistic
    tolerance = 1e-9 * (np.abs(observed) + 1)  # the observed labelling itself, up to rounding
    exceeded, rng = np.zeros(len(features)), np.random.default_rng(seed)
    step = max(1, PERMUTATION_VALUES // len(scores))
    with progress_bar(resamples, "permutation tests") as bar:
        for start in range(0, resamples, step):
            block = min(step, resamples - start)
            shuffled = rng.permuted(np.broadcast_to(scores, (block, len(scores))), axis=1)
            exceeded += (sign * (shuffled @ ranks) >= observed - tolerance).sum(0)
            bar.update(block)
    if kind == "binary":
        positives = int((target == 1).sum())
        effects = 0.5 + statistic / max(positives * (len(target) - positives), 1)
    else:
        spread = np.sqrt((ranks ** 2).sum(0) * (scores ** 2).sum())
        effects = np.divide(statistic, spread, out=np.zeros(len(features)), where=spread > 0)
    return effects, (1 + exceeded) / (1 + resamples)


def held_out_score(train_x: Any, train_y: np.ndarray, test_x: Any, test_y: np.ndarray, kind: str) -> float | None:
    """AUC (binary) or R^2 (numeric) on the validation texts of an L2-regularized linear model."""
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.metrics import r2_score, roc_auc_score

    if train_x.shape[1] == 0 or len(np.unique(test_y)) < 2 or len(np.unique(train_y)) < 2:
        return None
    if kind == "binary":
        model = LogisticRegression(max_iter=2000).fit(train_x, train_y)
        return float(roc_auc_score(test_y, model.decision_function(test_x)))
    model = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(train_x, train_y)
    return float(r2_score(test_y, model.predict(test_x)))


def top_examples(codes: sparse.csr_matrix, texts: list[str], feature: int) -> list[dict[str, Any]]:
    values = codes[:, feature].toarray().ravel()
    rows = [int(r) for r in np.argsort(-values)[:EXAMPLES] if values[r] > 0]
    return [{"text": texts[r], "activation": float(values[r])} for r in rows]


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


def find_hypotheses(outcome: Outcome, fdr: float = 0.05, max_features: int = 20, seed: int = 0,
                    labels: dict[int, str] | None = None) -> dict[str, Any]:
    """Select on one half, validate on the other (see the module docstring); the report as a dict."""
    check_fdr(fdr)
    check_positive("max_features", max_features)
    if len(outcome.target) < 20:
        raise DataError(f"{len(outcome.target)} texts have a target; hypotheses needs at least 20 (half to select "
                        "features, half to test them)")
    select, validate = split_halves(len(outcome.target), seed)
    codes_s, target_s = outcome.codes[select], outcome.target[select]
    features, coefficients = select_features(codes_s, target_s, max_features, seed)
    codes_v, target_v = outcome.codes[validate], outcome.target[validate]
    resamples = resample_count(max_features, fdr)
    effects, p_values = feature_tests(codes_v, target_v, outcome.kind, features, coefficients, resamples, seed)
    q_values = stats.false_discovery_control(p_values, method="bh") if len(p_values) else p_values
    texts_v = [outcome.texts[i] for i in validate]
    found = [{"id": int(f), "label": (labels or {}).get(int(f), ""), "coefficient": float(c),
              "effect": float(e), "p": float(p), "q": float(q), "examples": top_examples(codes_v, texts_v, int(f))}
             for f, c, e, p, q in zip(features, coefficients, effects, p_values, q_values) if q <= fdr]
    named = held_out_score(codes_s[:, features], target_s, codes_v[:, features], target_v, outcome.kind)
    dense = held_out_score(outcome.embeddings[select], target_s, outcome.embeddings[validate], target_v, outcome.kind)
    chance = 0.5 if outcome.kind == "binary" else 0.0
    carried = (named - chance) / (dense - chance) if named is not None and dense is not None and dense > chance else None
    return {"kind": outcome.kind, "positive": outcome.positive, "texts": len(outcome.target),
            "skipped_missing_target": outcome.skipped, "selection_texts": len(select), "validation_texts": len(validate),
            "fdr": fdr, "selected": len(features), "significant": len(found),
            "test": ("Mann-Whitney U (effect: the feature's AUC)" if outcome.kind == "binary"
                     else "Spearman correlation (effect: rho)")
                    + f", one-sided in the selected direction, {resamples:,} permutations of the target; "
                    "Benjamini-Hochberg over the selected features",
            "score": "AUC" if outcome.kind == "binary" else "R^2", "named_features_score": named,
            "dense_probe_score": dense, "signal_carried": carried, "hypotheses": found}


def hypotheses_run(run_dir: str | Path, target_column: str, dataset_path: str | None = None,
                   text_column: str | None = None, num_examples: int | None = None, fdr: float = 0.05,
                   max_features: int = 20, seed: int = 0, device: str | None = None,
                   model: Any = None) -> dict[str, Any]:
    """``find_hypotheses`` on a run's corpus (or ``dataset_path``); writes RUN/hypotheses/<target>.json and .html."""
    check_positive("num_examples", num_examples, unset="every text")
    run = open_run(run_dir, device, model, dataset_path=dataset_path, text_column=text_column)
    outcome = read_outcome(run, target_column, num_examples)
    report = {"target_column": target_column, "dataset": dataset_path or run.cfg.dataset_path,
              **find_hypotheses(outcome, fdr, max_features, seed, feature_labels(run.folder))}
    folder = run.folder / "hypotheses"
    folder.mkdir(exist_ok=True)
    stem = file_stem(target_column, "target")
    atomic_write_text(folder / f"{stem}.json", json.dumps(report, indent=1, allow_nan=False))
    atomic_write_text(folder / f"{stem}.html", hypotheses_page(report))
    return {"json": str(folder / f"{stem}.json"), "html": str(folder / f"{stem}.html"),
            **{key: report[key] for key in ("kind", "texts", "selected", "significant", "score", "named_features_score",
                                            "dense_probe_score", "signal_carried")},
            "hypotheses": [f"#{h['id']} {h['label']} ({h['effect']:+.2f})" for h in report["hypotheses"]]}


def _score(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def hypotheses_page(report: dict[str, Any]) -> str:
    """The report as one HTML page in the browser's look; feature ids link to the browser's pages."""
    target = html.escape(report["target_column"])
    effect = "AUC alone" if report["kind"] == "binary" else "Spearman rho"
    rows = "".join(
        f"<tr class='hypothesis'><td><a href='../browser/features/{feature_file(h['id'])}'>#{h['id']}</a> "
        f"<span class='label'>{html.escape(h['label'])}</span></td><td class='num'>{h['effect']:.3f}</td>"
        f"<td class='num'>{q_text(h['q'])}</td><td>{examples_html(h['examples'])}</td></tr>"
        for h in report["hypotheses"])
    positive = f" (1 = {html.escape(str(report['positive']))})" if report["positive"] is not None else ""
    body = f"""<style>body{{max-width:80rem}} td{{vertical-align:top}} td.num{{white-space:nowrap}}
.text{{display:block;font-size:.85rem}}</style>
<h1>Features that go with <code>{target}</code></h1>
<p class="meta">{report['texts']} texts, a {report['kind']} target{positive}. A sparse linear model picked
{report['selected']} features on {report['selection_texts']} texts; each was tested on the other
{report['validation_texts']} ({html.escape(report['test'])}) at {report['fdr']:.0%} false discovery rate:
<b id="significant">{report['significant']}</b> significant.</p>
<p>Held-out {report['score']}: the picked features <b>{_score(report['named_features_score'])}</b>, a linear probe on
the dense embeddings <b>{_score(report['dense_probe_score'])}</b>; the named features carry
<b>{_score(report['signal_carried'])}</b> of the probe's lift over chance.</p>
<table><thead><tr><th>feature</th><th>{effect}</th><th>q</th><th>texts where it fires most (validation half)</th>
</tr></thead><tbody>{rows or "<tr><td colspan=4 class='meta'>none at this false discovery rate</td></tr>"}</tbody></table>"""
    return page(f"hypotheses: {report['target_column']}", body)
