"""Evaluation and explanation of a trained SAE on real text: metrics, features, families,
the feature browser, and each command's bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import headless_chrome, make_cfg, needs_chromium, run_cli, write_jsonl
from sentence_sae import create_sae, save_sae
from sentence_sae.analysis import explain_run
from sentence_sae.analysis.families import build_families
from sentence_sae.analysis.records import SCHEMA_VERSION, FeatureRecord, Family, TextExample, read_features
from sentence_sae.analysis.words import candidates
from sentence_sae.errors import CheckpointError, DataError, ModelError
from sentence_sae.evaluation import evaluate_run
from sentence_sae.metrics import similarity_spearman, spearman


@pytest.mark.slow
def test_eval_reports_every_metric_and_writes_eval_json(labelled_run, model):
    run_dir, _, cfg = labelled_run
    report = evaluate_run(run_dir, label_column="topic", num_examples=1500, model=model)
    for key in ("fvu", "explained_variance", "mse", "cos", "norm_ratio", "l0", "dead_frac", "silent_frac", "dense_frac",
                "recall_at_10", "sim_spearman", "probe_acc_sae", "probe_acc_embed", "label_purity"):
        assert key in report and np.isfinite(report[key]), key
    assert report["explained_variance"] == pytest.approx(1 - report["fvu"])
    assert 0 < report["l0"] <= 16 and 0.5 < report["cos"] <= 1
    assert 0.3 < report["recall_at_10"] <= 1 and 0.5 < report["sim_spearman"] <= 1
    chance = report["label_majority_share"]
    assert report["probe_acc_sae"] > chance + 0.15 and report["probe_acc_embed"] > chance + 0.15
    assert chance < report["label_purity"] <= 1
    assert report["examples"] == 1500 and not report["held_out"]  # 1,500 > the 256 held out
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["fvu"] == report["fvu"]
    assert (run_dir / "density_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    held_out = evaluate_run(run_dir, model=model)
    assert held_out["held_out"] and held_out["examples"] == cfg.num_eval_examples
    # dead_frac is the training window's measure at the end of training, whatever texts eval reads
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert report["dead_frac"] == held_out["dead_frac"] == [r for r in rows if "train/dead_frac" in r][-1]["train/dead_frac"]
    assert held_out["silent_frac"] >= report["silent_frac"]  # 256 texts leave more features silent than 1,500


def test_retrieval_metrics_are_perfect_for_a_perfect_reconstruction(docs_embeddings):
    x = docs_embeddings[:300]
    assert similarity_spearman(x, x) == pytest.approx(1.0)
    assert spearman(torch.arange(10.0), -torch.arange(10.0)) == pytest.approx(-1.0)
    from sentence_sae.metrics import neighbour_recall

    assert neighbour_recall(x, x, k=10) == 1.0
    assert neighbour_recall(x, x[torch.randperm(300, generator=torch.Generator().manual_seed(0))], k=10) < 0.2


def test_explain_writes_features_families_and_browser(labelled_run, model):
    run_dir, _, _ = labelled_run
    summary = explain_run(run_dir, model=model, top_n=8)
    lines = [json.loads(line) for line in Path(summary["features"]).read_text().splitlines()]
    assert len(lines) == 512 and [f["id"] for f in lines] == list(range(512))
    alive = [f for f in lines if not f["dead"]]
    assert summary["alive"] == len(alive) > 400
    for feature in alive:
        activations = [t["activation"] for t in feature["top_texts"]]
        assert activations == sorted(activations, reverse=True) and activations[0] > 0
        assert feature["max_act"] == pytest.approx(activations[0])
        assert 0 < feature["density"] <= 1 and len(feature["top_texts"]) <= 8
        text = " ".join(t["text"].lower() for t in feature["top_texts"])
        assert feature["label"].startswith(feature["concept"]) and feature["concept"].split()[0] in text
        assert all(term in feature["label"] for term in feature["keywords"])
        assert all(q["activation"] <= activations[-1] for q in feature["quantile_texts"])
    for feature in lines:
        if feature["dead"]:
            assert feature["top_texts"] == [] and feature["count"] == 0
    families = json.loads(Path(summary["families"]).read_text())
    counts = {f["id"]: f["count"] for f in lines}
    for child, parent in families["parents"].items():
        assert counts[parent] >= counts[int(child)]  # edges go from the more to the less frequent
    for family in families["families"]:
        assert family["size"] == len(family["members"]) >= 3
        ids = {m["id"] for m in family["members"]}
        assert all(m["parent"] in ids for m in family["members"] if m["parent"] is not None)
    browser = Path(summary["browser"])
    assert browser.name == "index.html" and len(list((browser.parent / "features").glob("f*.html"))) == 512
    per_10k = summary["seconds"] / summary["texts"] * 10_000  # from the rounded seconds
    assert summary["seconds_per_10k_texts"] == pytest.approx(per_10k, abs=0.006 * 10_000 / summary["texts"] + 0.01)
    # every line is a FeatureRecord of the current schema, and reads back as what was written
    assert {f["schema_version"] for f in lines} == {SCHEMA_VERSION}
    assert [record.to_json() for record in read_features(run_dir)] == lines


def test_feature_records_of_an_unknown_version_or_shape_are_refused(tmp_path):
    record = FeatureRecord(id=0, label="chess: board", concept="chess", keywords=["board"], dead=False, density=0.5,
                           count=1, n_texts=2, mean_act=1.0, max_act=1.0, top_texts=[TextExample("Chess", 1.0, 0)],
                           quantile_texts=[], histogram=[1], family=Family(None, [1]))
    path = tmp_path / "features.jsonl"
    written = record.to_json()
    path.write_text(json.dumps({key: value for key, value in written.items() if key != "schema_version"}) + "\n")
    assert read_features(tmp_path) == [record]  # a file from before versions: the same keys, version 1
    path.write_text(json.dumps({**written, "schema_version": SCHEMA_VERSION + 1}) + "\n")
    with pytest.raises(DataError, match=f"schema version {SCHEMA_VERSION + 1}, newer than"):
        read_features(tmp_path)
    path.write_text(json.dumps(written) + "\n" + json.dumps({"id": 1, "label": "x"}) + "\n")
    with pytest.raises(DataError, match="line 2 of .* is not a feature record"):
        read_features(tmp_path)
    assert read_features(tmp_path / "not-explained") is None


def test_the_questions_about_texts_do_not_load_the_explain_pipeline():
    """features, compare and search start without scipy, umap or the explain pipeline."""
    code = ("import sys\nimport sentence_sae.cli\nfrom sentence_sae.analysis import lookup, compare, search, records\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('scipy', 'umap', 'sklearn', 'numba')"
            " or m == 'sentence_sae.analysis.explain'))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]", run.stdout


def test_families_follow_the_asymmetric_conditional_probabilities():
    # Feature 0 fires on 100 texts; 1 on 40, always with 0; 2 on 10, always with 1; 3 alone on 50.
    counts = np.array([100, 40, 10, 50])
    co = np.array([[100, 40, 10, 5],
                   [40, 40, 10, 2],
                   [10, 10, 10, 0],
                   [5, 2, 0, 50]], dtype=np.float32)
    result = build_families(counts, co, labels=["a", "b", "c", "d"], min_weight=0.5, min_size=3)
    assert result["parents"] == {"1": 0, "2": 1}  # by id; 3 has no strong parent
    [family] = result["families"]
    assert family["root"] == 0 and [m["id"] for m in family["members"]] == [0, 1, 2]
    assert family["members"][2]["weight"] == 1.0  # P(1 fires | 2 fires)


def test_keyword_candidates_skip_stop_words():
    assert candidates("The assert statement raises an AssertionError") == [
        "assert", "assert statement", "statement", "statement raises", "raises", "assertionerror"]
    # a synopsis that ends with the name the description starts with gives no "vlc vlc" phrase
    assert candidates("multimedia player vlc. VLC plays files") == [
        "multimedia", "multimedia player", "player", "player vlc", "vlc", "vlc plays", "plays", "plays files", "files"]


def test_encode_texts_uses_the_sae_model(labelled_run, model):
    from sentence_sae import load_sae, text_codes
    from sentence_sae.embeddings import encode_texts

    run_dir, _, _ = labelled_run
    sae = load_sae(run_dir)
    texts = ["The assert statement", "A for loop iterates over a sequence"]
    torch.testing.assert_close(text_codes(sae, texts, model), sae.encode(encode_texts(model, texts)))
    torch.testing.assert_close(text_codes(sae, texts), text_codes(sae, texts, model))  # the run's own model


@pytest.mark.slow
def test_features_and_plot_commands(labelled_run):
    run_dir, _, _ = labelled_run
    proc = run_cli("features", str(run_dir), "The assert statement raises AssertionError", "--top", "5")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 1 <= len(result["features"]) <= 5 and result["features"][0]["activation"] > 0
    assert proc.stdout.splitlines()[0].startswith("#")
    proc = run_cli("plot", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    drawn = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("plot", "firing_frequency"):
        assert Path(drawn[key]).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_bad_inputs_give_one_clear_line(labelled_run, tmp_path, model):
    run_dir, data, _ = labelled_run
    proc = run_cli("eval", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "run folder" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("eval", str(run_dir), "--label_column", "category")
    assert proc.returncode == 2 and "column 'category' not found" in proc.stderr and "topic" in proc.stderr
    with pytest.raises(DataError, match="set label_column"):
        evaluate_run(run_dir, label_column="category", model=model)
    # An SAE for 768-dimensional embeddings saved with the 384-dimensional MiniLM as its model.
    wide_cfg = make_cfg(tmp_path, model, dict_size=64, top_k=4).replace(act_size=768)
    wide = tmp_path / "wide"
    save_sae(create_sae(wide_cfg), wide)
    with pytest.raises(ModelError, match="reads 768-dimensional embeddings, but model .* gives 384"):
        evaluate_run(wide, model=model)
    with pytest.raises(CheckpointError, match="does not exist"):
        explain_run(tmp_path / "missing")
    assert "unknown option '--bogus'" in run_cli("explain", str(run_dir), "--bogus", "1").stderr


@needs_chromium
def test_feature_browser_in_headless_chromium(labelled_run, model):
    from selenium.webdriver.common.by import By

    run_dir, _, _ = labelled_run
    index = run_dir / "browser" / "index.html"
    if not index.exists():
        explain_run(run_dir, model=model, top_n=8)
    features = [json.loads(line) for line in (run_dir / "features.jsonl").read_text().splitlines()]
    target = max((f for f in features if not f["dead"]), key=lambda f: f["count"])
    with headless_chrome() as driver:
        driver.get(index.as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "tr.feature-row")
        assert len(rows) == len(features)
        densities = [float(r.find_elements(By.TAG_NAME, "td")[2].text.rstrip("%")) for r in rows[:20]]
        assert densities == sorted(densities, reverse=True)  # sorted by density by default
        search = driver.find_element(By.ID, "search")
        search.send_keys(f"#{target['id']}")
        rows = driver.find_elements(By.CSS_SELECTOR, "tr.feature-row")
        assert len(rows) == 1 and target["label"] in rows[0].text
        search.clear()
        search.send_keys(target["keywords"][0])
        matching = driver.find_elements(By.CSS_SELECTOR, "tr.feature-row")
        assert 1 <= len(matching) < len(features)
        assert all(target["keywords"][0] in r.text.lower() for r in matching)
        matching[0].find_element(By.TAG_NAME, "a").click()
        assert "Feature #" in driver.find_element(By.TAG_NAME, "h1").text
        driver.get((run_dir / "browser" / "features" / f"f{target['id']:05d}.html").as_uri())
        assert target["label"] in driver.find_element(By.TAG_NAME, "h1").text
        shown = driver.find_elements(By.CSS_SELECTOR, ".text.top")
        assert len(shown) == len(target["top_texts"])
        assert target["top_texts"][0]["text"][:40] in shown[0].text
        starts = {row.find_element(By.CSS_SELECTOR, ":scope > div:last-child").location["x"] for row in shown}
        assert len({t["activation"] for t in target["top_texts"]}) > 1 and len(starts) == 1  # aligned, any bar
        assert driver.find_elements(By.CSS_SELECTOR, "svg.histogram rect")
        links = driver.find_elements(By.CSS_SELECTOR, "a.coactivation")
        if links:
            links[0].click()
            assert "Feature #" in driver.find_element(By.TAG_NAME, "h1").text


@pytest.mark.slow
@pytest.mark.parametrize("sae_type", ["matryoshka", "gated"])
def test_new_architectures_work_with_every_command(tmp_path, jsonl_file, sae_type):
    """train, sweep, eval and explain, run as commands, for the architectures beyond the four."""
    common = ["--dataset_path", str(jsonl_file), "--num_eval_examples", "10", "--dict_size", "64",
              "--output_dir", str(tmp_path / "runs"), "--num_examples", "2000", "--batch_size", "32"]
    proc = run_cli("train", "--sae_type", sae_type, "--top_k", "4", *common)
    assert proc.returncode == 0, proc.stderr
    run_dir = json.loads(proc.stdout.strip().splitlines()[-1])["run_dir"]
    proc = run_cli("sweep", "--grid", f"sae_type={sae_type}", "--grid", "lr=0.001,0.003", *common)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 2
    proc = run_cli("eval", run_dir, "--num_examples", "60")  # all 60 texts: 10 held out are too few to judge
    assert proc.returncode == 0, proc.stderr
    assert 0 < json.loads(proc.stdout.strip().splitlines()[-1])["fvu"] < 1
    proc = run_cli("explain", run_dir)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["alive"] > 0


def test_a_feature_on_most_texts_is_nobodys_parent():
    # Feature 0 fires on 90 of 100 texts, 1 on 30 (always with 0 and with 2), 2 on 40, 3 on 20 (always with 1).
    counts = np.array([90, 30, 40, 20])
    co = np.array([[90, 30, 36, 20],
                   [30, 30, 30, 20],
                   [36, 30, 40, 20],
                   [20, 20, 20, 20]], dtype=np.float32)
    capped = build_families(counts, co, min_weight=0.5, min_size=2, n_texts=100, max_parent_density=0.5)
    assert capped["parents"] == {"1": 2, "3": 1}  # 0 would adopt 2; at density 0.9 it is no one's parent
    assert capped["share_in_family"] == 0.75 and capped["max_depth"] == 2 and capped["largest_share"] == 0.75
    uncapped = build_families(counts, co, min_weight=0.5, min_size=2)
    assert uncapped["parents"] == {"1": 2, "2": 0, "3": 1} and uncapped["max_depth"] == 3
    assert uncapped["share_in_family"] == 1.0


def test_paired_retrieval_ranks_each_query_s_own_document():
    from sentence_sae.metrics import paired_retrieval

    generator = torch.Generator().manual_seed(0)
    documents = torch.randn(300, 16, generator=generator)
    queries = documents + 0.8 * torch.randn(300, 16, generator=generator)
    got = paired_retrieval(queries, documents, chunk=64)
    scores = torch.nn.functional.normalize(queries, dim=-1) @ torch.nn.functional.normalize(documents, dim=-1).T
    rank = (scores > scores.diagonal().unsqueeze(1)).sum(1).double() + 1  # no ties among random floats
    assert got["mrr_at_10"] == pytest.approx(((rank <= 10) / rank).mean().item())
    assert got["ndcg_at_10"] == pytest.approx(((rank <= 10) / torch.log2(rank + 1)).mean().item())
    assert got["recall_at_1"] == pytest.approx((rank == 1).double().mean().item())
    assert 0 < got["recall_at_1"] < got["recall_at_10"] < 1
    assert paired_retrieval(documents, documents)["mrr_at_10"] == 1.0
    empty = paired_retrieval(torch.zeros(20, 8), torch.zeros(20, 8), cosine=False)  # all-zero codes tie everywhere
    assert empty["recall_at_10"] == 0.0  # a tie counts against the own document


@pytest.mark.slow
def test_eval_reports_retrieval_of_embeddings_reconstructions_and_codes(labelled_run, model, docs_texts, tmp_path):
    run_dir, _, _ = labelled_run
    pairs = []
    for text in dict.fromkeys(docs_texts):
        first, _, rest = text.partition(". ")
        if len(first) > 40 and len(rest) > 80:
            pairs.append({"question": first, "passage": rest})
    pairs_file = write_jsonl(tmp_path / "pairs.jsonl", pairs[:400])
    report = evaluate_run(run_dir, model=model, retrieval=str(pairs_file), query_column="question",
                          document_column="passage")["retrieval"]
    assert report["pairs"] == 400
    q = model.encode([p["question"] for p in pairs[:400]], convert_to_tensor=True)
    d = model.encode([p["passage"] for p in pairs[:400]], convert_to_tensor=True)
    from sentence_sae.metrics import paired_retrieval

    assert report["dense"] == pytest.approx(paired_retrieval(q, d), abs=1e-6)  # the run's own embeddings, unchanged
    assert report["dense"]["mrr_at_10"] > 0.4  # a paragraph's first sentence finds the rest of it
    for name in ("reconstructed", "codes"):
        assert 0 < report[name]["mrr_at_10"] <= 1 and report[name]["recall_at_1"] <= report[name]["recall_at_10"]
        assert report[f"{name}_keeps"]["mrr_at_10"] == pytest.approx(report[name]["mrr_at_10"] / report["dense"]["mrr_at_10"])
    assert json.loads((run_dir / "eval.json").read_text())["retrieval"]["pairs"] == 400
    proc = run_cli("eval", str(run_dir), "--retrieval", str(pairs_file), "--query_column", "query")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "column 'query' not found" in proc.stderr and "set query_column to one of them" in proc.stderr
