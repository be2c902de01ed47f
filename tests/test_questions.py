"""The questions people ask of embeddings, on real texts and the real model: why two texts are similar
(compare), what differs between two corpora (diff), what is there (the feature map), and search."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from helpers import docs_with_topics, headless_chrome, make_cfg, needs_chromium, run_cli, write_jsonl
from sentence_sae import create_sae
from sentence_sae.analysis import explain_run
from sentence_sae.analysis.compare import compare_texts, features_for_share, similarity_shares
from sentence_sae.analysis.diff import diff_run, firing_diff, two_proportion_p_values
from sentence_sae.analysis.feature_map import (MIN_FIRINGS, family_roots, map_layout, nearest_features, place_vectors,
                                               structure_score)
from sentence_sae.analysis.features import collect_feature_stats
from sentence_sae.analysis.search import feature_activations, feature_search, search_run
from sentence_sae.analysis.records import FeatureRecord, TextExample
from sentence_sae.analysis.search_page import WORD, text_index
from sentence_sae.errors import ConfigError
from sentence_sae.metrics import encode_in_batches
from sentence_sae.runs import open_run
from sentence_sae.sae import eval_mode

DEBIAN = Path(__file__).resolve().parents[2] / "shared" / "data" / "debian_descriptions.jsonl.gz"


def explained(run_dir: Path, model) -> list[dict]:
    """The run's features.jsonl, running explain first when no earlier test did."""
    if not (run_dir / "browser" / "map.html").exists():
        explain_run(run_dir, model=model, top_n=8)
    return [json.loads(line) for line in (run_dir / "features.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------- compare


@pytest.mark.parametrize("sae_type", ["vanilla", "topk", "batchtopk", "jumprelu", "matryoshka", "gated"])
@pytest.mark.parametrize("input_unit_norm", [False, True])
def test_shares_sum_to_the_dot_product_of_the_reconstructions(tmp_path, docs_embeddings, sae_type, input_unit_norm):
    cfg = make_cfg(tmp_path, sae_type=sae_type, act_size=384, dict_size=256, top_k=16, input_unit_norm=input_unit_norm)
    torch.manual_seed(0)
    sae = create_sae(cfg)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.05)  # an offset that is not zero, so its share is tested too
    for a, b in [(0, 1), (10, 500), (7, 7)]:
        result = similarity_shares(sae, docs_embeddings[a], docs_embeddings[b])
        assert result.shares.sum() + result.offset_share == pytest.approx(result.dot, rel=1e-5, abs=1e-5)
        with torch.no_grad(), eval_mode(sae):
            recon = sae.reconstruct(docs_embeddings[[a, b]]).double()
        assert result.dot == pytest.approx(float(recon[0] @ recon[1]), rel=1e-4)
        assert result.norm_a == pytest.approx(float(recon[0].norm()), rel=1e-4)
        assert len(result.features) > 0 and (result.activations_a > 0).sum() <= len(result.features)


def test_features_for_share_counts_the_largest_shares():
    assert features_for_share(np.array([1.0, 5.0, 1.0, 3.0])) == 3  # 5 + 3 + 1 = 9 = 90% of 10
    assert features_for_share(np.array([10.0, -1.0, 0.5])) == 1
    assert features_for_share(np.array([-1.0, 0.5])) is None


def test_compare_explains_the_similarity_of_two_texts(labelled_run, model):
    run_dir, _, _ = labelled_run
    a = "The assert statement raises AssertionError when the expression is false."
    b = "An assert statement is a convenient way to insert debugging assertions into a program."
    result = compare_texts(run_dir, a, b, top=10_000, model=model)
    assert result["dot_reconstructed"] == pytest.approx(
        sum(f["share"] for f in result["features"]) + result["offset_share"], abs=1e-5)
    assert len(result["features"]) == result["active_features"]
    cosines = torch.nn.functional.cosine_similarity(*model.encode([a, b], convert_to_tensor=True)[:, None], dim=-1)
    assert result["cosine"] == pytest.approx(float(cosines), abs=1e-4)
    from sentence_sae.checkpoint import load_sae

    sae = load_sae(run_dir)
    with torch.no_grad(), eval_mode(sae):
        recon = sae.reconstruct(model.encode([a, b], convert_to_tensor=True)).double()
    assert result["cosine_reconstructed"] == pytest.approx(
        float(torch.nn.functional.cosine_similarity(recon[:1], recon[1:])), abs=1e-4)
    assert sum(f["cosine_share"] for f in result["features"]) + result["offset_share"] / (
        result["dot_reconstructed"] / result["cosine_reconstructed"]) == pytest.approx(result["cosine_reconstructed"], abs=1e-5)
    assert 1 <= result["features_for_90pct"] <= result["active_features"]
    shares = [f["share"] for f in result["features"]]
    assert shares == sorted(shares, reverse=True)


@pytest.mark.slow
def test_compare_command_prints_a_table_or_json(labelled_run):
    run_dir, _, _ = labelled_run
    proc = run_cli("compare", str(run_dir), "lambda expressions", "anonymous functions", "--top", "3")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("cosine ") and len(lines) == 2 + 3 and lines[2].startswith("#")
    proc = run_cli("compare", str(run_dir), "lambda expressions", "anonymous functions", "--json")
    result = json.loads(proc.stdout)
    assert len(result["features"]) <= 10 and result["cosine"] > 0
    proc = run_cli("compare", str(run_dir), "lambda", "  ")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "second text is empty" in proc.stderr


# ------------------------------------------------------------------------------------------- diff


def test_two_proportion_test_matches_scipy():
    counts_a, counts_b = np.array([30, 0, 200, 12, 3]), np.array([10, 0, 180, 40, 0])
    p = two_proportion_p_values(counts_a, 400, counts_b, 500)
    for feature in (0, 2, 3):  # the pooled z-test is the chi-squared test without continuity correction
        table = [[counts_a[feature], 400 - counts_a[feature]], [counts_b[feature], 500 - counts_b[feature]]]
        assert p[feature] == pytest.approx(stats.chi2_contingency(table, correction=False).pvalue, rel=1e-9)
    assert p[1] == 1.0  # silent on both sides
    assert p[4] == pytest.approx(stats.fisher_exact([[3, 397], [0, 500]]).pvalue)  # few firings: exact test
    result = firing_diff(counts_a, 400, counts_b, 500)
    assert list(result.flagged) == list(result.q_values <= 0.05) and result.flagged[0] and not result.flagged[1]
    assert np.all(result.q_values >= result.p_values)


def test_a_random_split_of_one_corpus_flags_almost_nothing(labelled_run, docs_embeddings):
    """Benjamini-Hochberg at 5% with no true difference: some feature is flagged in about 5% of splits."""
    from sentence_sae.checkpoint import load_sae

    run_dir, _, _ = labelled_run
    fired = (encode_in_batches(load_sae(run_dir), docs_embeddings) > 0).numpy()
    assert fired.any(0).sum() > 100  # enough live features to make the test mean something
    n = len(fired)
    splits_with_findings = 0
    for seed in range(20):
        in_a = np.zeros(n, bool)
        in_a[np.random.default_rng(seed).permutation(n)[: n // 2]] = True
        result = firing_diff(fired[in_a].sum(0), int(in_a.sum()), fired[~in_a].sum(0), int((~in_a).sum()))
        splits_with_findings += bool(result.flagged.any())
    assert splits_with_findings <= 3


def two_topics() -> tuple[str, str]:
    counts: dict[str, int] = {}
    for row in docs_with_topics():
        counts[row["topic"]] = counts.get(row["topic"], 0) + 1
    first, second = sorted(counts, key=counts.get, reverse=True)[:2]
    return first, second


@pytest.mark.slow
def test_diff_command_writes_json_and_html(labelled_run, model):
    run_dir, data, _ = labelled_run
    explained(run_dir, model)
    a, b = two_topics()
    proc = run_cli("diff", str(run_dir), "--label_column", "topic", "--a", a, "--b", b, "--top", "5")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    report = json.loads(Path(summary["json"]).read_text())
    topics = [row["topic"] for row in docs_with_topics()]
    assert (report["n_a"], report["n_b"]) == (topics.count(a), topics.count(b))
    assert report["flagged"] == summary["flagged"] == len(report["features"]) > 0
    ps = [f["p"] for f in report["features"]]
    assert ps == sorted(ps) and all(f["q"] <= 0.05 for f in report["features"])
    for f in report["features"]:
        assert f["rate_a"] == pytest.approx(f["count_a"] / report["n_a"])
        assert len(f["examples_a"]) == min(3, f["count_a"]) and len(f["examples_b"]) == min(3, f["count_b"])
    assert Path(summary["html"]).read_text().count("class='diff-row'") == report["flagged"]
    for args, message in [(["--a", "nope", "--b", b], "no row has topic = 'nope'"),
                          (["--a", a, "--b", a], "both"),
                          (["--a", a], "the following arguments are required: --b")]:
        proc = run_cli("diff", str(run_dir), "--label_column", "topic", *args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    proc = run_cli("diff", str(run_dir), "--dataset_path", str(data), "--a", a, "--b", b)
    assert proc.returncode == 2 and "--dataset_path needs --label_column" in proc.stderr


@pytest.mark.slow
def test_diff_of_two_datasets(labelled_run, model, tmp_path):
    run_dir, _, _ = labelled_run
    rows = docs_with_topics()
    a, b = two_topics()
    path_a = write_jsonl(tmp_path / "a.jsonl", [r for r in rows if r["topic"] == a])
    path_b = write_jsonl(tmp_path / "b.jsonl", [r for r in rows if r["topic"] == b])
    by_label = diff_run(run_dir, a, b, label_column="topic", model=model)
    by_files = diff_run(run_dir, str(path_a), str(path_b), model=model)
    assert (by_files["n_a"], by_files["n_b"]) == (by_label["n_a"], by_label["n_b"])
    assert by_files["flagged"] == by_label["flagged"]


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN.exists(), reason=f"the Debian descriptions are not at {DEBIAN}")
def test_games_against_science_flags_features_about_games_and_science(tmp_path, model):
    with gzip.open(DEBIAN, "rt") as f:
        rows = [json.loads(line) for line in f]
    chosen = [r for r in rows if r["label"] in ("games", "science")]
    chosen += [r for r in rows if r["label"] not in ("games", "science")][: 5000 - len(chosen)]
    data = write_jsonl(tmp_path / "debian.jsonl", [{"text": r["text"], "section": r["label"]} for r in chosen])
    proc = run_cli("train", "--dataset_path", str(data), "--dict_size", "512", "--top_k", "16", "--num_examples",
                   "60000", "--encode_backend", "fast", "--output_dir", str(tmp_path / "runs"), "--wandb_mode", "disabled")
    assert proc.returncode == 0, proc.stderr
    run_dir = json.loads(proc.stdout.strip().splitlines()[-1])["run_dir"]
    explain_run(run_dir, with_map=False)
    result = diff_run(run_dir, "games", "science", label_column="section", top=5)
    games = ("game", "puzzle", "play", "arcade", "shooter", "strategy", "chess", "board")
    science = ("scien", "bio", "chem", "molecul", "physic", "astro", "genom", "sequenc", "math", "numeric",
               "statist", "simulat", "dna", "protein", "gene")
    assert sum(any(w in label for w in games) for label in result["top_a"]) >= 3, result["top_a"]
    assert sum(any(w in label for w in science) for label in result["top_b"]) >= 3, result["top_b"]


# ------------------------------------------------------------------------------------- hypotheses


def planted_target(rows: list[dict], topic: str, seed: int, numeric: bool = False) -> list:
    """A target made from one topic plus noise: 10% of the binary labels flipped, or a numeric score."""
    rng = np.random.default_rng(seed)
    on_topic = np.array([row["topic"] == topic for row in rows], dtype=float)
    if numeric:
        return list(2.0 * on_topic + rng.normal(size=len(rows)))
    flipped = rng.random(len(rows)) < 0.1
    return ["yes" if bool(t) != bool(f) else "no" for t, f in zip(on_topic, flipped)]


def test_hypothesis_tests_are_one_sided_permutation_tests():
    from scipy import sparse

    from sentence_sae.analysis.hypotheses import feature_tests

    rng = np.random.default_rng(0)
    n, positives = 400, 40
    target = np.zeros(n)
    target[:positives] = 1
    codes = np.zeros((n, 3))
    codes[:, 0] = np.where(target == 1, rng.uniform(1, 2, n), rng.uniform(0, 1.5, n) * (rng.random(n) < 0.5))
    codes[[0, 1, 2], 1] = [0.5, 0.7, 0.9]  # fires on three texts, all of them positive
    codes[:, 2] = codes[:, 0]
    effects, p = feature_tests(sparse.csr_matrix(codes), target, "binary", np.arange(3), np.array([1.0, 1.0, -1.0]))
    auc = stats.mannwhitneyu(codes[target == 1, 0], codes[target == 0, 0]).statistic / (positives * (n - positives))
    assert effects[0] == pytest.approx(auc) and effects[2] == pytest.approx(auc)
    assert p[0] == pytest.approx(1 / 10_000)  # beats every permutation
    assert p[2] == 1.0  # the same feature claimed to fire less on the positives: never confirmed
    # three firing texts all positive happen by chance with probability C(40,3) / C(400,3) = 0.00093; the
    # normal approximation claims far less than that
    exact = (40 * 39 * 38) / (400 * 399 * 398)
    assert exact / 2 < p[1] < exact * 2
    asymptotic = stats.mannwhitneyu(codes[target == 1, 1], codes[target == 0, 1], alternative="greater").pvalue
    assert asymptotic < exact / 10
    noisy = target + 0.3 * rng.normal(size=n)
    rho, p = feature_tests(sparse.csr_matrix(codes), noisy, "numeric", np.arange(1), np.array([1.0]))
    assert rho[0] == pytest.approx(stats.spearmanr(codes[:, 0], noisy).statistic) and p[0] < 0.001


@pytest.mark.slow
def test_hypotheses_recover_a_planted_signal_and_find_nothing_in_a_shuffled_one(labelled_run, model, tmp_path):
    from sentence_sae.analysis.hypotheses import find_hypotheses, read_outcome

    run_dir, _, _ = labelled_run
    explained(run_dir, model)
    rows = docs_with_topics()
    topic = two_topics()[0]
    data = write_jsonl(tmp_path / "target.jsonl", [{"text": row["text"], "target": target, "score": score}
                                                   for row, target, score in zip(rows, planted_target(rows, topic, 0),
                                                                                 planted_target(rows, topic, 1, True))])
    proc = run_cli("hypotheses", str(run_dir), "--dataset_path", str(data), "--target_column", "target")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    report = json.loads(Path(summary["json"]).read_text())
    assert report["kind"] == "binary" and report["positive"] == "yes" and report["texts"] == len(rows)
    assert 1 <= report["significant"] <= report["selected"] <= 20
    assert report["named_features_score"] > 0.6 and report["dense_probe_score"] > 0.6  # chance: 0.5
    assert 0.5 < report["signal_carried"] <= 1.2
    # the right features: the strongest hypothesis fires far more often on the planted topic than elsewhere
    codes = encode_in_batches(open_run(run_dir, model=model).sae, encode_texts_of(model, rows)) > 0
    on_topic = torch.tensor([row["topic"] == topic for row in rows])
    strongest = max(report["hypotheses"], key=lambda h: h["effect"])
    fires = codes[:, strongest["id"]]
    assert fires[on_topic].float().mean() > 3 * fires[~on_topic].float().mean()
    assert all(h["q"] <= 0.05 and len(h["examples"]) >= 1 for h in report["hypotheses"])
    # shuffled: the same texts with the target permuted; nothing at 5% FDR in at least 19 of 20 seeds
    outcome = read_outcome(open_run(run_dir, model=model, dataset_path=str(data)), "target", None)
    found = [find_hypotheses(outcome._replace(target=np.random.default_rng(seed).permutation(outcome.target)),
                             seed=seed)["significant"] for seed in range(20)]
    assert sum(n == 0 for n in found) >= 19, found
    # a numeric target
    numeric = run_cli("hypotheses", str(run_dir), "--dataset_path", str(data), "--target_column", "score")
    assert numeric.returncode == 0, numeric.stderr
    summary = json.loads(numeric.stdout.strip().splitlines()[-1])
    assert summary["kind"] == "numeric" and summary["score"] == "R^2" and summary["significant"] >= 1
    assert 0 < summary["named_features_score"] <= summary["dense_probe_score"] + 0.05


def encode_texts_of(model, rows: list[dict]) -> torch.Tensor:
    from sentence_sae.embeddings import encode_texts

    return encode_texts(model, [row["text"] for row in rows], batch_size=64)


@pytest.mark.slow
def test_hypotheses_bad_targets_are_one_line(labelled_run, tmp_path):
    run_dir, _, _ = labelled_run
    rows = docs_with_topics()[:200]
    data = write_jsonl(tmp_path / "t.jsonl", [{"text": r["text"], "topic": r["topic"], "same": 1} for r in rows])
    for column, message in (("topic", "distinct value(s)"), ("same", "1 distinct value(s)"),
                            ("missing", "missing")):
        proc = run_cli("hypotheses", str(run_dir), "--dataset_path", str(data), "--target_column", column)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


@needs_chromium
@pytest.mark.slow
def test_hypotheses_page_in_headless_chromium(labelled_run, model, tmp_path):
    from selenium.webdriver.common.by import By

    from sentence_sae.analysis.hypotheses import hypotheses_run

    run_dir, _, _ = labelled_run
    explained(run_dir, model)
    rows = docs_with_topics()
    data = write_jsonl(tmp_path / "target.jsonl", [{"text": row["text"], "target": target} for row, target in
                                                   zip(rows, planted_target(rows, two_topics()[1], 2))])
    summary = hypotheses_run(run_dir, "target", dataset_path=str(data), model=model)
    with headless_chrome() as driver:
        driver.get(Path(summary["html"]).as_uri())
        assert driver.find_element(By.ID, "significant").text == str(summary["significant"])
        assert len(driver.find_elements(By.CSS_SELECTOR, "tr.hypothesis")) == summary["significant"] > 0
        driver.find_element(By.CSS_SELECTOR, "tr.hypothesis a").click()
        assert "Feature #" in driver.find_element(By.TAG_NAME, "h1").text


# ----------------------------------------------------------------------------------------- search


def test_search_returns_the_exact_nearest_neighbours(labelled_run, model, docs_texts, docs_embeddings):
    run_dir, _, _ = labelled_run
    query = "How do I open a file for reading?"
    result = search_run(run_dir, query, top=10, model=model)
    unit = torch.nn.functional.normalize(docs_embeddings.double(), dim=-1).numpy()
    q = torch.nn.functional.normalize(model.encode([query], convert_to_tensor=True).double(), dim=-1).numpy()[0]
    scores = unit @ q
    expected = np.argsort(-scores)[:10]
    assert [m["cosine"] for m in result["matches"]] == pytest.approx(scores[expected].tolist(), abs=1e-5)
    for match, row in zip(result["matches"], expected):
        if match["row"] != row:  # only a near tie may swap places
            assert abs(scores[match["row"]] - scores[row]) < 1e-5
        assert match["text"] == docs_texts[match["row"]]
    assert result["texts"] == len(docs_texts)
    assert any(m["features"] for m in result["matches"])


def test_search_by_feature_lists_its_strongest_texts(labelled_run, model, docs_texts, docs_embeddings):
    from sentence_sae.checkpoint import load_sae

    run_dir, _, _ = labelled_run
    activations = encode_in_batches(load_sae(run_dir), docs_embeddings).numpy()
    feature = int(np.argmax((activations > 0).sum(0)))
    result = feature_search(run_dir, feature, top=5, model=model)
    expected = np.sort(activations[:, feature])[::-1][:5]
    assert [m["activation"] for m in result["matches"]] == pytest.approx(expected.tolist(), rel=1e-5)
    assert all(activations[m["row"], feature] == pytest.approx(m["activation"], rel=1e-5) for m in result["matches"])
    assert result["fires_on"] == int((activations[:, feature] > 0).sum())


def test_steered_search_suppresses_and_boosts_features(labelled_run, model, docs_embeddings):
    from sentence_sae.checkpoint import load_sae

    run_dir, _, _ = labelled_run
    acts = encode_in_batches(load_sae(run_dir), docs_embeddings).numpy()
    query = "How do I open a file for reading?"
    plain = search_run(run_dir, query, top=10, model=model)
    top_row = plain["matches"][0]["row"]
    shared = plain["matches"][0]["features"]
    driver = shared[0]["id"] if shared else int(np.argmax(acts[top_row]))  # what drives the top match most
    assert acts[top_row, driver] > 0
    suppressed = search_run(run_dir, query, top=10, model=model, suppress=[driver])
    assert len(suppressed["matches"]) == 10
    assert suppressed["steering"]["excluded_texts"] == int((acts[:, driver] > 0).sum())
    assert all(acts[m["row"], driver] == 0 for m in suppressed["matches"])  # no match carries it any more
    plain_rows = [m["row"] for m in plain["matches"]]
    absent = [f for f in range(acts.shape[1]) if not acts[plain_rows, f].any() and 5 <= (acts[:, f] > 0).sum() <= 200]
    boosted = search_run(run_dir, query, top=10, model=model, boost={absent[0]: 2.0})
    assert sum(acts[m["row"], absent[0]] > 0 for m in boosted["matches"]) >= 3  # pulled in texts where it fires
    assert search_run(run_dir, query, top=10, model=model, boost={}, suppress=[])["matches"] == plain["matches"]
    with pytest.raises(ConfigError, match="both boosted and suppressed"):
        search_run(run_dir, query, model=model, boost={driver: 1.0}, suppress=[driver])


@pytest.mark.slow
def test_search_command(labelled_run):
    run_dir, _, _ = labelled_run
    proc = run_cli("search", str(run_dir), "string formatting", "--top", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["matches"]) == 3
    proc = run_cli("search", str(run_dir), "--feature", "0", "--top", "2")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("search", str(run_dir), "string formatting", "--top", "3", "--json", "--boost", "1:1.5",
                   "--suppress", "2")
    assert proc.returncode == 0, proc.stderr
    steering = json.loads(proc.stdout)["steering"]
    assert steering["boost"] == {"1": 1.5} and steering["suppress"] == [2] and steering["space"] == "embedding"
    for args, message in [(["q", "--feature", "1"], "not both"), (["--feature", "99999"], "does not exist"),
                          (["q", "--boost", "x"], "--boost takes a feature id"), (["q", "--boost", "1:-2"], "positive"),
                          (["--feature", "1", "--boost", "2"], "steer a QUERY"), (["q", "--suppress", "99999"], "does not exist")]:
        proc = run_cli("search", str(run_dir), *args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


# -------------------------------------------------------------------------------------------- map


def test_family_roots_follow_parents_to_the_top():
    families = {"parents": {"1": 0, "2": 1, "4": 3}}
    assert family_roots(families, 6) == [0, 0, 0, 3, 3, -1]
    assert family_roots(None, 2) == [-1, -1]


@pytest.fixture(scope="module")
def docs_feature_stats(labelled_run, model, docs_embeddings):
    """(the labelled run's SAE, its feature statistics on the built-in corpus, the live features)."""
    sae = open_run(labelled_run[0], model=model).sae
    stats = collect_feature_stats(sae, iter(docs_embeddings.split(1024)))
    return sae, stats, np.flatnonzero(stats.counts)


def test_statistics_and_activations_do_not_depend_on_how_codes_are_blocked(docs_feature_stats, docs_embeddings,
                                                                            monkeypatch):
    """Codes are made in blocks of at most DENSE_CODE_VALUES values, whatever the chunk: blocks of 7
    rows inside chunks of 1,024 give the same statistics and activations as the default blocks."""
    import sentence_sae.metrics as metrics

    sae, default, live = docs_feature_stats
    features = live[:5].tolist()
    whole = feature_activations(sae, docs_embeddings, features)
    monkeypatch.setattr(metrics, "DENSE_CODE_VALUES", 7 * sae.d_sae)
    blocked = collect_feature_stats(sae, iter(docs_embeddings.split(1024)))
    assert np.array_equal(blocked.counts, default.counts) and np.array_equal(blocked.sorted_rows, default.sorted_rows)
    assert np.array_equal(blocked.coactivation, default.coactivation)
    assert np.allclose(blocked.centroids, default.centroids, atol=1e-5)
    assert torch.equal(feature_activations(sae, docs_embeddings, features), whole)


def test_the_map_keeps_features_of_one_topic_together(docs_feature_stats):
    sae, stats, live = docs_feature_stats
    topics, index = np.unique([row["topic"] for row in docs_with_topics()], return_inverse=True)
    mass = np.zeros((len(stats.counts), len(topics)))
    np.add.at(mass, (np.repeat(np.arange(len(stats.counts)), np.diff(stats.starts)), index[stats.sorted_rows]),
              stats.sorted_values)
    dominant = mass.argmax(1)[live]
    coords = map_layout(stats, sae.W_dec.detach().numpy(), live)
    assert coords.shape == (len(live), 2) and coords.min() >= 0 and coords.max() <= 1
    random = np.mean([structure_score(np.random.default_rng(seed).random((len(live), 2)), dominant) for seed in range(5)])
    assert structure_score(coords, dominant) >= 2 * random  # 0.40 against 0.13 when written


def test_map_neighbours_found_in_blocks_are_the_nearest_by_the_documented_similarity(docs_feature_stats):
    sae, stats, live = docs_feature_stats
    decoder = sae.W_dec.detach().numpy()
    indices, distances = nearest_features(stats, decoder, live, k=7, block=100)
    codes = np.zeros((stats.n_texts, len(stats.counts)))
    codes[stats.sorted_rows, np.repeat(np.arange(len(stats.counts)), np.diff(stats.starts))] = stats.sorted_values
    codes = codes[:, live]
    fired = np.flatnonzero(codes.max(1) > 0)
    strongest = np.zeros_like(codes)
    strongest[fired, codes[fired].argmax(1)] = 1  # each text counts toward its strongest live feature
    profiles = codes.T @ strongest
    profiles /= np.linalg.norm(profiles, axis=1, keepdims=True)
    places = place_vectors(stats, decoder, live)
    similarity = 0.5 * places @ places.T + 0.5 * profiles @ profiles.T
    np.fill_diagonal(similarity, -np.inf)
    expected = -np.sort(-similarity, axis=1)[:, :7]
    assert np.allclose(1 - distances, expected, atol=1e-4)
    assert np.allclose(np.take_along_axis(similarity, indices, 1), expected, atol=1e-4)
    rare = stats.counts[live] < MIN_FIRINGS  # placed by the decoder direction
    if rare.any():
        i = int(np.flatnonzero(rare)[0])
        assert np.allclose(places[i], decoder[live[i]] / np.linalg.norm(decoder[live[i]]), atol=1e-5)


@needs_chromium
def test_feature_map_in_headless_chromium(labelled_run, model):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    run_dir, _, _ = labelled_run
    features = explained(run_dir, model)
    live = [f for f in features if not f["dead"]]
    with headless_chrome(height=1400) as driver:
        driver.get((run_dir / "browser" / "index.html").as_uri())
        driver.find_element(By.CSS_SELECTOR, "a.page-link[href='map.html']").click()
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-rendered")
        assert driver.find_element(By.ID, "count").text == f"{len(live)} live features"
        canvas = driver.find_element(By.ID, "map")
        point = driver.execute_script(  # the point nearest the canvas's centre, as an offset from it
            "const r = arguments[0].getBoundingClientRect(); let best = 0, bestD = Infinity;"
            "for (let i = 0; i < N; i++) { const d = (px[i] - r.width / 2) ** 2 + (py[i] - r.height / 2) ** 2;"
            "  if (d < bestD) { bestD = d; best = i; } }"
            "return [Math.round(px[best] - r.width / 2), Math.round(py[best] - r.height / 2)];", canvas)
        ActionChains(driver).move_to_element_with_offset(canvas, int(point[0]), int(point[1])).perform()
        tip = driver.find_element(By.ID, "tip")
        assert tip.is_displayed() and tip.text.startswith("#")
        hovered = tip.text.split()[0]
        word = next(f for f in live if f["keywords"])["keywords"][0]
        driver.find_element(By.ID, "search").send_keys(word)
        matches = sum(word in f["label"].lower() for f in live)
        assert driver.find_element(By.ID, "count").text == f"{matches} of {len(live)} features match"
        ActionChains(driver).move_to_element_with_offset(canvas, int(point[0]), int(point[1])).click().perform()
        assert f"Feature {hovered}:" in driver.find_element(By.TAG_NAME, "h1").text
        driver.get((run_dir / "browser" / "map.html").as_uri() + f"#q={word}")  # a link that opens with a word highlighted
        assert driver.find_element(By.ID, "search").get_attribute("value") == word
        assert driver.find_element(By.ID, "count").text == f"{matches} of {len(live)} features match"


def test_the_text_index_holds_every_top_text_once():
    def record(feature, *texts):
        return FeatureRecord(id=feature, label="", concept="", keywords=[], dead=False, density=0.5, count=1, n_texts=2,
                             mean_act=1.0, max_act=3.0, top_texts=[TextExample(text, act, row) for row, (text, act)
                                                                   in enumerate(texts)], quantile_texts=[], histogram=[])

    features = [record(0, ("Chess engine", 2.0), ("Go board", 1.0), ("Chess engine", 1.5)), record(1, ("Chess engine", 3.0))]
    index = text_index(features)
    assert index["texts"] == ["Chess engine", "Go board"]
    assert index["features"][0] == [(1, 3.0), (0, 2.0)]  # a text held twice lists its feature once
    assert index["words"]["chess"] == [0] and index["words"]["board"] == [1] and "go" in index["words"]


@needs_chromium
def test_browser_search_page_finds_texts_by_their_words_and_steers_by_features(labelled_run, model):
    from selenium.webdriver.common.by import By

    run_dir, _, _ = labelled_run
    features = explained(run_dir, model)
    texts = {item["text"] for f in features for item in f["top_texts"]}
    with headless_chrome() as driver:
        driver.get((run_dir / "browser" / "index.html").as_uri())
        driver.find_element(By.CSS_SELECTOR, "a.page-link[href='search.html']").click()
        assert driver.find_element(By.ID, "count").text == f"{len(texts)} texts indexed"
        driver.find_element(By.ID, "search").send_keys("exception rais")
        expected = [t for t in texts if all(any(w.startswith(q) for w in WORD.findall(t.lower()))
                                            for q in ("exception", "rais"))]
        assert 0 < len(expected) < len(texts)
        assert driver.find_element(By.ID, "count").text.startswith(f"{len(expected)} text")
        results = driver.find_elements(By.CSS_SELECTOR, ".result")
        assert len(results) == min(100, len(expected))
        assert all("exception" in r.text.lower() for r in results)
        fired_on: dict[str, set[int]] = {}
        for f in features:
            for item in f["top_texts"]:
                fired_on.setdefault(item["text"], set()).add(f["id"])

        def shown() -> list[str]:
            return [r.find_element(By.CSS_SELECTOR, "div").text for r in driver.find_elements(By.CSS_SELECTOR, ".result")]

        # suppress the feature that fires most on the top match: every text it fires on leaves the results
        top = int(results[0].find_element(By.TAG_NAME, "a").text.lstrip("#"))
        results[0].find_element(By.CSS_SELECTOR, f"button[data-act='suppress'][data-f='{top}']").click()
        kept = [t for t in expected if top not in fired_on[t]]
        assert len(kept) < len(expected)
        if len(kept) <= 100:
            assert set(shown()) == set(kept)
        assert all(top not in fired_on[t] for t in shown())
        assert f"({len(expected) - len(kept)} left out" in driver.find_element(By.ID, "count").text
        assert f"suppress #{top}" in driver.find_element(By.ID, "steering").text
        driver.find_element(By.CSS_SELECTOR, "#steering button.unsteer").click()
        assert len(shown()) == min(100, len(expected))
        # boost a feature of the last match: the matches it fires on come first
        last = driver.find_elements(By.CSS_SELECTOR, ".result")[-1]
        boosted = int(last.find_elements(By.TAG_NAME, "a")[-1].text.lstrip("#"))
        last.find_element(By.CSS_SELECTOR, f"button[data-act='boost'][data-f='{boosted}']").click()
        with_it = sum(boosted in fired_on[t] for t in expected)
        assert [boosted in fired_on[t] for t in shown()[:with_it]] == [True] * min(with_it, 100)
        # with no words typed, a boost alone lists the texts where the feature fires
        driver.find_element(By.ID, "search").clear()
        driver.find_element(By.ID, "search").send_keys(" ")
        assert set(shown()) == {t for t, ids in fired_on.items() if boosted in ids}
        driver.find_element(By.CSS_SELECTOR, "#steering button.unsteer").click()
        assert shown() == []
        driver.find_element(By.ID, "search").send_keys("exception")
        driver.find_elements(By.CSS_SELECTOR, ".result")[0].find_element(By.TAG_NAME, "a").click()
        assert "Feature #" in driver.find_element(By.TAG_NAME, "h1").text
