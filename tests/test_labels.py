"""Labels (a concept name, then keywords, chosen on texts the label score never reads) and word
highlighting (each word's contribution to a feature, by removing it and embedding the text again)."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import torch

from helpers import headless_chrome, needs_chromium, run_cli
from sentence_sae.analysis.highlight import without, word_contributions
from sentence_sae.analysis.label_score import labelling_set, scoring_set
from sentence_sae.analysis.labels import RowWords, distinctive_words, label_features
from sentence_sae.analysis.lookup import colored_words
from sentence_sae.analysis.words import content_words, stem, word_spans
from sentence_sae.runs import open_run, text_codes

TOPICS = {
    "cat": ["Cats purr when they are {}.", "A cat naps on the {} all afternoon.", "The kitten chased a {} across the room.",
            "Our cat hunts {} in the garden.", "Cats groom their fur after {}."],
    "market": ["The stock market {} after the report.", "Shares of the bank {} in early trading.",
               "Investors sold bonds as prices {}.", "The index {} to a record high."],
    "python": ["Python lists can be {} in place.", "A Python dictionary maps keys to {}.",
               "The interpreter raised an error for the {} call.", "Import the module before you {} it."],
}
FILLERS = ["happy", "sofa", "mouse", "birds", "dinner", "rose", "fell", "sorted", "values", "failed", "use",
           "closed", "opened", "warm", "toy", "bugs"]


def topic_corpus() -> tuple[list[str], list[str]]:
    texts, topics = [], []
    for topic, templates in TOPICS.items():
        for template in templates:
            for filler in FILLERS[:8]:
                texts.append(template.format(filler))
                topics.append(topic)
    order = np.random.default_rng(0).permutation(len(texts))
    return [texts[i] for i in order], [topics[i] for i in order]


def test_the_labeller_never_reads_a_scored_text():
    rng = np.random.default_rng(0)
    firing = [np.sort(rng.choice(3000, size=n, replace=False))[::-1] for n in (5, 40, 300, 2)]
    scoring = scoring_set(firing, label_texts=8, n_rows=3000)
    labelling = labelling_set(firing, scoring, label_texts=8, n_rows=3000)
    assert not set(labelling.contrast.tolist()) & set(scoring.pool.tolist()) and len(labelling.contrast) == 500
    for feature, rows in enumerate(firing):
        support = labelling.support[feature]
        assert list(support[:8]) == list(rows[:8]) and set(support.tolist()) <= set(rows.tolist())
        for scored, positives in zip(scoring.features, scoring.positives):
            if scored == feature:
                assert not set(support.tolist()) & set(positives.tolist())
    assert len(labelling.support[2]) == 8 + 24  # the label texts and a spread of 24 more


def test_distinctive_words_cover_the_feature_texts_greedily():
    sets = [frozenset(s) for s in (("cat", "purr"), ("cat", "nap"), ("kitten", "chase"), ("kitten", "toy"), ("cat", "the"),
                                   ("kitten", "the"))]
    contrast = Counter({"the": 300, "toy": 40, "chase": 1})
    words = distinctive_words(sets, contrast, 500, covered=set())
    assert words == ["cat", "kitten"]  # "the" is as common in the contrast texts; "purr" is in one text only
    assert distinctive_words(sets, contrast, 500, covered={"cat"}) == ["kitten"]
    assert distinctive_words(sets, Counter(), 0, covered=set()) == []


def test_labels_name_what_the_texts_share(model):
    texts, topics = topic_corpus()
    embeddings = torch.as_tensor(model.encode(texts, convert_to_tensor=True)).cpu()
    firing = [np.flatnonzero(np.array(topics) == topic) for topic in TOPICS]
    scoring = scoring_set(firing, label_texts=8, n_rows=len(texts))
    labelling = labelling_set(firing, scoring, label_texts=8, n_rows=len(texts))
    labels = label_features(model, texts, lambda rows: embeddings[torch.as_tensor(np.asarray(rows))], [0, 1, 2],
                            [rows[:8] for rows in firing], lambda f: firing[f], labelling)
    cat, market, python = (label.text.lower() for label in labels)
    assert any(word in cat for word in ("cat", "kitten")), cat
    assert any(word in market for word in ("market", "stock", "shares", "investors", "prices", "index", "bonds")), market
    assert any(word in python for word in ("python", "interpreter", "module", "dictionary", "lists")), python
    for label in labels:
        assert 1 <= len(label.concept.split()) <= 2 and label.text.startswith(label.concept)


def test_word_coverage_says_which_rows_contain_a_word_of_each_label():
    sets = [frozenset(content_words(text)) for text in ("Chess engines for Linux", "A Go board", "Text editor", "")]
    words = RowWords.of(sets)
    labels = ["chess engine: board", "editor", "spreadsheet", "go"]
    rows = np.array([3, 0, 2, 1])
    expected = np.array([[bool(set(content_words(label)) & sets[r]) for label in labels] for r in rows])
    assert expected.any() and not expected.all()
    assert np.array_equal(words.coverage(labels, rows), expected)


def test_stemming_folds_plurals_only():
    assert [stem(w) for w in ("foxes", "cities", "cats", "glass", "virus", "shoes", "fox")] == \
        ["foxe", "city", "cat", "glass", "virus", "shoe", "fox"]


def test_a_words_contribution_is_the_drop_when_it_is_removed(labelled_run, model):
    run = open_run(labelled_run[0], "cpu", model)
    text = "The assert statement raises AssertionError when the condition is false."
    features = text_codes(run.sae, [text], model)[0].topk(3).indices.tolist()
    found = word_contributions(run.sae, model, [text, "Tuples are immutable."], [features, features[:1]])[0]
    assert [text[a:b] for a, b in found.spans] == ["The", "assert", "statement", "raises", "AssertionError", "when",
                                                     "the", "condition", "is", "false"]
    variants = [without(text, span) for span in word_spans(text)]
    assert variants[1] == "The statement raises AssertionError when the condition is false."
    codes = text_codes(run.sae, [text, *variants], model)[:, features]
    assert np.allclose(found.activation, codes[0].numpy(), atol=1e-4)
    assert np.allclose(found.contributions, (codes[0][:, None] - codes[1:].T).numpy(), atol=1e-4)


def test_features_command_colors_the_words(labelled_run):
    text = "The assert statement raises AssertionError"
    proc = run_cli("features", str(labelled_run[0]), text, "--top", "2", "--color", "always")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert [len(f["words"]) for f in result["features"]] == [5] * len(result["features"])
    colored = lines[1]
    assert "\x1b[" in colored and colored.replace("\x1b[0m", "").count("assert") >= 1
    strongest = max(result["features"][0]["words"], key=lambda w: w[2])
    assert f"\x1b[1;30;41m{text[strongest[0]:strongest[1]]}\x1b[0m" in colored
    plain = run_cli("features", str(labelled_run[0]), text, "--top", "2")
    assert "\x1b[" not in plain.stdout  # not a terminal: no colors unless asked


def test_colored_words_keeps_the_text():
    text = "free chess engine"
    shown = colored_words(text, [[0, 4, 1.0], [5, 10, 0.1], [11, 17, -0.5]])
    assert shown == "\x1b[1;30;41mfree\x1b[0m chess \x1b[30;46mengine\x1b[0m"


@needs_chromium
def test_feature_pages_show_the_highlighting_in_chromium(labelled_run, tmp_path):
    from selenium.webdriver.common.by import By

    run_dir = tmp_path / "run"
    shutil.copytree(labelled_run[0], run_dir)
    proc = run_cli("explain", str(run_dir), "--num_examples", "150", "--highlight")
    assert proc.returncode == 0, proc.stderr
    features = [json.loads(line) for line in (run_dir / "features.jsonl").read_text().splitlines()]
    target = max((f for f in features if not f["dead"]), key=lambda f: f["count"])
    top = target["top_texts"]
    assert all("words" in t for t in top[:3]) and not any("words" in t for t in top[3:])
    text_of, strongest = max(((i, w) for i, t in enumerate(top[:3]) for w in t["words"]), key=lambda iw: abs(iw[1][2]))
    with headless_chrome() as driver:
        driver.get((run_dir / "browser" / "features" / f"f{target['id']:05d}.html").as_uri())
        marks = driver.find_elements(By.CSS_SELECTOR, ".text.top")[0].find_elements(By.CSS_SELECTOR, "mark.word")
        assert [m.text for m in marks] == [top[0]["text"][a:b] for a, b, _ in top[0]["words"]]
        assert [m.get_attribute("title") for m in marks] == [f"{c:+.3f}" for _, _, c in top[0]["words"]]
        texts = driver.find_elements(By.CSS_SELECTOR, ".text.top")
        chosen = texts[text_of].find_elements(By.CSS_SELECTOR, "mark.word")[top[text_of]["words"].index(strongest)]
        full = "rgba(230, 120, 20, 1)" if strongest[2] > 0 else "rgba(40, 130, 200, 1)"
        assert chosen.value_of_css_property("background-color") == full  # the strongest word is fully colored
        assert driver.find_elements(By.CSS_SELECTOR, ".highlight-note")
        driver.save_screenshot(str(tmp_path / "feature.png"))


def test_labelling_and_highlighting_read_a_capped_number_of_words():
    from sentence_sae.analysis.words import MAX_WORDS, candidates

    words = [f"word{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}" for i in range(300)]
    long_text = " ".join(words)
    assert candidates(long_text) == candidates(" ".join(words[:MAX_WORDS]))
    assert len(word_spans(long_text)) == MAX_WORDS and len(word_spans(" ".join(words[:10]))) == 10
