"""The embedding cache: keys, reuse without the model, resume after a kill, memory-mapped reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_cfg, write_jsonl

from sentence_sae import ActivationsStoreSBERT, load_embeddings
from sentence_sae.activation_store import EmbeddingStore
from sentence_sae.cache import EmbeddingCache, cache_key_for, open_cache
from sentence_sae.embeddings import load_sentence_model
from sentence_sae.errors import CacheError
from sentence_sae.openvino_encoder import openvino_precision


class ForwardCounter:
    """Counts real forward passes of the model's transformer through a PyTorch forward hook."""

    def __init__(self, model):
        self.calls = 0
        self.handle = model[0].register_forward_hook(self._hook)

    def _hook(self, *args):
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def drain(store) -> torch.Tensor:
    try:
        return torch.cat(list(store))
    finally:
        store.close()


def test_second_run_reads_the_cache_and_never_runs_the_model(tmp_path, model, jsonl_file):
    cfg = make_cfg(tmp_path, model, dataset_path=str(jsonl_file), model_batch_size=8, num_batches_in_buffer=4,
                   batch_size=8, num_eval_examples=10, num_epochs=2, num_examples=None)
    with ForwardCounter(model) as counter:
        first = ActivationsStoreSBERT(model, cfg)
        served_first = drain(first)
        assert counter.calls > 0
        assert first.corpus.cache.complete and first.corpus.cache.rows == 60
        counter.calls = 0
        second = ActivationsStoreSBERT(model, cfg)
        served_second = drain(second)
        assert counter.calls == 0  # held-out and training embeddings both came from disk
    assert second.corpus._dataset is None  # the dataset was not even opened
    torch.testing.assert_close(second.held_out_embeddings(), first.held_out_embeddings())
    torch.testing.assert_close(second.validation_embeddings(), first.validation_embeddings())
    assert second.num_val_examples == 5  # 10% of the 50 training texts (5%, but at least 64, is too many)
    assert len(served_first) == len(served_second) == 2 * 45
    key = lambda rows: sorted(map(tuple, rows[:, :3].tolist()))
    assert key(served_first) == key(served_second)  # the same examples, shuffled differently


def test_cache_key_changes_with_everything_that_changes_embeddings(tmp_path, model, jsonl_file, small_texts):
    base = make_cfg(tmp_path, model, dataset_path=str(jsonl_file))
    folder = cache_key_for(base, model).folder_name()
    assert cache_key_for(make_cfg(tmp_path, model, dataset_path=str(jsonl_file)), model).folder_name() == folder
    assert cache_key_for(base.replace(text_column="id"), model).folder_name() != folder
    assert cache_key_for(base.replace(dataset_path="python-docs"), model).folder_name() != folder
    # The key records the backend the model was loaded with (what auto chose), not the word in the config.
    bf16 = load_sentence_model(base.model_name, "cpu", "bfloat16")
    fast_key = cache_key_for(base.replace(encode_backend="fast"), load_sentence_model(base.model_name, "cpu", "fast"))
    assert fast_key.folder_name() != folder and (fast_key.backend, fast_key.precision) == ("fast", "bfloat16")
    assert cache_key_for(base.replace(encode_backend="bfloat16"), bf16).model_weights != cache_key_for(base, model).model_weights
    auto_key = cache_key_for(base.replace(encode_backend="auto"), load_sentence_model(base.model_name, "cpu", "auto"))
    assert (auto_key.backend, auto_key.precision) == ("openvino", openvino_precision())
    assert auto_key.folder_name() != folder and auto_key.model_weights == cache_key_for(base, model).model_weights
    prompted = cache_key_for(base.replace(prompt="query: "), model)
    assert prompted.folder_name() != folder and prompted.fields()["prompt"] == "query: "
    assert "prompt" not in cache_key_for(base, model).fields()  # caches from before prompts keep their folder
    # Editing the file's contents changes the key, so stale embeddings are never served.
    write_jsonl(jsonl_file, [{"text": t} for t in reversed(small_texts)])
    assert cache_key_for(base, model).folder_name() != folder


@pytest.mark.slow
def test_killed_embed_leaves_a_valid_cache_that_the_next_run_resumes(tmp_path, docs_embeddings):
    cache_root = tmp_path / "cache"
    args = [sys.executable, "-m", "sentence_sae", "embed", "--dataset_path", "python-docs", "--num_examples",
            "744", "--num_eval_examples", "256", "--cache_dir", str(cache_root), "--cache_shard_size", "96", "--model_batch_size", "16",
            "--num_batches_in_buffer", "6", "--batch_size", "32", "--encode_backend", "torch"]
    env = {**os.environ, "TQDM_DISABLE": "1", "WANDB_MODE": "disabled"}
    # killed right after its 4th shard is written (tests/signal_at.py), whatever the machine's speed
    killed = subprocess.run([sys.executable, str(Path(__file__).with_name("signal_at.py")), "shard", "4", "SIGKILL",
                             *args[3:]], env=env, capture_output=True, text=True, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    manifest = next(cache_root.glob("*/manifest.json"))
    partial = load_embeddings(manifest.parent)
    written = json.loads(manifest.read_text())
    assert len(written["shards"]) == 4 and not written["complete"] and 0 < len(partial) < 1000
    np.testing.assert_allclose(partial[:], docs_embeddings[: len(partial)].numpy(), atol=1e-4)

    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 1118  # the held-out 256, the validation 118 (5%) and the 744 training examples asked for
    assert summary["encoded"] == 1118 - len(partial)  # only the missing rows were encoded
    full = load_embeddings(summary["cache_dir"])
    assert full.shape == (1118, 384)
    np.testing.assert_allclose(full[:], docs_embeddings[:1118].numpy(), atol=1e-4)  # dataset order


def test_load_embeddings_is_a_memory_mapped_array_in_dataset_order(tmp_path, model, docs_embeddings):
    cache = EmbeddingCache(tmp_path / "c", None, 384, shard_rows=100)
    cache.acquire_writer()
    data = docs_embeddings[:450].numpy()
    for start in range(0, 450, 70):
        cache.append(data[start : start + 70])
    cache.mark_complete(0)
    cache.close()
    loaded = load_embeddings(tmp_path / "c")
    assert loaded.shape == (450, 384) and len(list((tmp_path / "c").glob("shard_*.npy"))) == 5
    np.testing.assert_array_equal(loaded[:], data)
    np.testing.assert_array_equal(loaded[95:305], data[95:305])
    np.testing.assert_array_equal(loaded[[3, 449, 150, 101]], data[[3, 449, 150, 101]])
    np.testing.assert_array_equal(loaded[-1], data[-1])
    assert isinstance(np.load(tmp_path / "c" / "shard_00000.npy", mmap_mode="r"), np.memmap)


def anonymous_memory_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    pytest.skip("RssAnon not reported by this kernel")


@pytest.mark.slow
def test_training_from_a_large_cache_does_not_hold_it_in_memory(tmp_path, model):
    rows, dim = 400_000, 384  # 614 MB of float32 on disk
    cache = EmbeddingCache(tmp_path / "big", None, dim, shard_rows=65_536)
    cache.acquire_writer()
    generator = np.random.default_rng(0)
    for _ in range(rows // 20_000):
        block = generator.standard_normal((20_000, dim), dtype=np.float32)
        cache.append(block / np.linalg.norm(block, axis=1, keepdims=True))
    cache.mark_complete(0)
    cache.close()
    embeddings = load_embeddings(tmp_path / "big")
    before = anonymous_memory_mb()
    cfg = make_cfg(tmp_path, model, num_eval_examples=1000, num_examples=None, num_epochs=1,
                   batch_size=1024, model_batch_size=256, num_batches_in_buffer=16)  # a 4,096-row buffer
    store = EmbeddingStore(embeddings, cfg)
    served = sum(len(batch) for batch in store)
    peak = anonymous_memory_mb()
    assert store.num_val_examples == 2048 and served == rows - 1000 - 2048
    assert peak - before < 150, f"anonymous memory grew by {peak - before:.0f} MB for a 614 MB cache"


def test_corrupt_or_truncated_cache_files_are_reported_by_name(tmp_path, model, docs_embeddings):
    cache = EmbeddingCache(tmp_path / "c", None, 384, shard_rows=50)
    cache.acquire_writer()
    cache.append(docs_embeddings[:120].numpy())
    cache.mark_complete(0)
    cache.close()
    shard = tmp_path / "c" / "shard_00001.npy"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(CacheError, match="shard_00001.npy is truncated or corrupt"):
        load_embeddings(tmp_path / "c")
    (tmp_path / "c" / "manifest.json").write_text("{oops")
    with pytest.raises(CacheError, match="manifest.json is corrupt"):
        load_embeddings(tmp_path / "c")
    with pytest.raises(CacheError, match="not an embedding cache"):
        load_embeddings(tmp_path)


def test_open_cache_uses_the_configured_folder(tmp_path, model):
    cfg = make_cfg(tmp_path, model)
    assert open_cache(cfg, model).folder.parent == tmp_path / "cache"


def test_a_prompt_is_put_before_every_text_and_kept_in_the_cache(tmp_path, model, jsonl_file, small_texts):
    from sentence_sae import embed

    info = embed(make_cfg(tmp_path, model, dataset_path=str(jsonl_file), prompt="query: ", num_examples=None,
                               num_eval_examples=10))
    cached = torch.from_numpy(np.asarray(load_embeddings(info["cache_dir"])))
    expected = model.encode(["query: " + t for t in small_texts], convert_to_tensor=True)
    torch.testing.assert_close(cached, expected, atol=1e-5, rtol=1e-4)
    plain = model.encode(small_texts, convert_to_tensor=True)
    assert (cached - plain).abs().max() > 1e-2  # the prompt really changed the embeddings
    manifest = json.loads((Path(info["cache_dir"]) / "manifest.json").read_text())
    assert manifest["key"]["prompt"] == "query: "
