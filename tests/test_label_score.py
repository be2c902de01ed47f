"""Label scores: AUROC of a label picking out the texts its feature fires on, by embedding and by
BM25, on texts not used to make the label; with the baselines that say what a score is worth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from helpers import headless_chrome, needs_chromium
from sentence_sae.analysis import explain_run
from sentence_sae.analysis.label_score import (ScoringTexts, auroc, most_frequent_word, score_labels,
                                               scoring_set)


def test_auroc_is_sklearns_with_ties():
    rng = np.random.default_rng(0)
    positives, negatives = rng.integers(0, 5, 30).astype(float), rng.integers(0, 4, 50).astype(float)
    expected = roc_auc_score(np.r_[np.ones(30), np.zeros(50)], np.r_[positives, negatives])
    assert auroc(positives, negatives) == pytest.approx(expected)
    assert auroc(np.array([1.0, 2.0]), np.array([0.0, 0.5])) == 1.0


def test_scoring_set_leaves_out_the_label_texts_and_rare_features():
    firing = [np.arange(100, 150), np.array([3, 4, 5, 6]), np.array([7, 8, 9, 10, 11, 12])]
    scoring = scoring_set(firing, label_texts=3, n_rows=2000, seed=0)
    assert list(scoring.features) == [0, 2]  # feature 1 has 1 text beyond its 3 label texts
    assert len(scoring.positives[0]) == 20 and not set(scoring.positives[0]) & {100, 101, 102}
    assert set(scoring.positives[1]) == {10, 11, 12}
    assert not set(scoring.negatives[0]) & set(firing[0].tolist()) and len(scoring.negatives[0]) > 900


def test_both_scorers_rank_a_fitting_label_first(model):
    texts = ["The cat chased the mouse around the garden."] * 1 + [f"Cats purr and cats {w}." for w in
             ("sleep", "climb", "hunt", "play")] + [f"The stock market {w} today." for w in ("rose", "fell", "closed", "opened", "crashed", "recovered")] \
        + [f"Python {w} are useful." for w in ("lists", "dicts", "sets", "tuples", "generators", "classes")]
    embeddings = model.encode(texts, convert_to_tensor=True)
    firing = [np.array([0, 1, 2, 3, 4])]  # the cat texts, strongest first
    scoring = scoring_set(firing, label_texts=1, n_rows=len(texts), seed=0)
    scoring_texts = ScoringTexts(scoring, texts, lambda rows: embeddings[torch.from_numpy(rows)])
    for label, high in (("cats", True), ("stock market", False)):
        emb, lex = score_labels([label], model.encode([label], convert_to_tensor=True), scoring_texts)
        assert (emb[0] > 0.9) == high and (lex[0] > 0.9) == high, (label, emb, lex)
    assert most_frequent_word(texts[1:5]) == "cats"


@pytest.mark.slow
def test_explain_scores_every_label_against_baselines(labelled_run, model):
    run_dir, _, _ = labelled_run
    summary = explain_run(run_dir, model=model, top_n=8)
    scores = summary["label_scores"]
    records = [json.loads(line) for line in Path(summary["features"]).read_text().splitlines()]
    scored = [r for r in records if r["label_score"] is not None]
    assert len(scored) == scores["scored_features"] > 0.5 * summary["alive"]
    assert all(0 <= r["label_score"] <= 1 and 0 <= r["label_score_lexical"] <= 1 for r in scored)
    assert scores["embedding"]["labels"] == pytest.approx(np.mean([r["label_score"] for r in scored]), abs=1e-3)
    for scorer in ("embedding", "lexical"):
        assert abs(scores[scorer]["shuffled"] - 0.5) < 0.05  # a label of another feature says nothing
        assert scores[scorer]["labels"] > scores[scorer]["shuffled"] + 0.05
        assert set(scores[scorer]) == {"labels", "shuffled", "frequent_word", "top_text", "share_at_0.8"}


@needs_chromium
def test_browser_sorts_by_label_score_and_shows_it(labelled_run, model):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    run_dir, _, _ = labelled_run
    if not (run_dir / "features.jsonl").exists() or "label_score" not in (run_dir / "features.jsonl").read_text():
        explain_run(run_dir, model=model, top_n=8)
    records = [json.loads(line) for line in (run_dir / "features.jsonl").read_text().splitlines()]
    best = max((r for r in records if r["label_score"] is not None), key=lambda r: r["label_score"])
    with headless_chrome() as driver:
        driver.get((run_dir / "browser" / "index.html").as_uri())
        Select(driver.find_element(By.ID, "sort")).select_by_value("label_score")
        shown = [float(cell.text) for cell in driver.find_elements(By.CSS_SELECTOR, "td.score")[:20] if cell.text]
        assert shown == sorted(shown, reverse=True) and shown[0] == pytest.approx(best["label_score"], abs=0.005)
        driver.find_element(By.CSS_SELECTOR, "tr.feature-row a").click()
        assert "label score" in driver.find_element(By.CSS_SELECTOR, ".label-score").text
