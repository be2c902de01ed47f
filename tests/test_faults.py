"""Faults and bad input: non-finite embeddings and losses, corrupt and truncated files, failed
writes, datasets that fail part-way, models of the wrong width."""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import make_cfg, write_jsonl
from sentence_sae import ActivationsStoreSBERT, create_sae, load_embeddings, load_sae, save_sae, text_codes, train, train_sae
from sentence_sae.activation_store import EmbeddingStore
from sentence_sae.cache import open_cache
from sentence_sae.checkpoint import read_firing_frequencies, saelens_cfg, save_checkpoint_folder
from sentence_sae.analysis import explain_run
from sentence_sae.analysis.lookup import top_features
from sentence_sae.data import DatasetSource
from sentence_sae.errors import (CacheError, CheckpointError, ConfigError, DataError, ModelError, SentenceSAEError,
                                 TrainingStopped)
from sentence_sae.evaluation import evaluate_run
from sentence_sae.tracking import read_metrics
from sentence_sae.trainer import Trainer
from sentence_sae.training import load_trainer_state

ENV = {**os.environ, "TQDM_DISABLE": "1", "WANDB_MODE": "disabled"}


def test_non_finite_embeddings_are_rejected_with_their_row(tmp_path, model, docs_embeddings, small_texts):
    data = docs_embeddings[:600].clone()
    data[423, 7] = float("nan")
    cfg = make_cfg(tmp_path, model, num_eval_examples=100, num_epochs=1, num_examples=None, batch_size=32)
    with pytest.raises(DataError, match="row 423 is not finite"):
        list(EmbeddingStore(data, cfg))
    # The same through a text dataset whose cached embeddings hold an infinity.
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in small_texts])
    cfg = make_cfg(tmp_path, model, dataset_path=str(path), num_eval_examples=5, num_epochs=1, num_examples=None)
    cache = open_cache(cfg, model)
    cache.acquire_writer()
    rows = docs_embeddings[:60].numpy().copy()
    rows[31, 0] = np.inf
    cache.append(rows)
    cache.mark_complete(0)
    cache.close()
    with pytest.raises(DataError, match=r"row 31 of the embedding cache .* is not finite.*delete that cache folder"):
        store = ActivationsStoreSBERT(model, cfg)
        list(store)


def test_non_finite_loss_stops_with_the_last_good_checkpoint_intact(tmp_path, model, docs_split):
    train, held_out = docs_split
    cfg = make_cfg(tmp_path, model, dict_size=128, top_k=8, lr=1e30, max_grad_norm=None, lr_warmup_steps=0,
                   checkpoint_freq=1, num_examples=5000)
    sae = create_sae(cfg)
    trainer = Trainer(sae, EmbeddingStore(train, cfg, held_out=held_out), cfg)
    with pytest.raises(TrainingStopped, match=r"the loss became (nan|inf) at step \d+.*checkpoint .* is intact"):
        trainer.train()
    checkpoints = sorted((trainer.run_dir / "checkpoints").iterdir())
    assert checkpoints, "no checkpoint was written before the loss diverged"
    good = load_sae(checkpoints[-1])
    assert all(torch.isfinite(t).all() for t in good.weights_for_saving().values())
    assert not (trainer.run_dir / "sae_weights.safetensors").exists()  # the diverged SAE was not saved


def test_corrupt_or_truncated_checkpoints_are_named(tmp_path, model):
    cfg = make_cfg(tmp_path, model, dict_size=64, top_k=4)
    folder = tmp_path / "ckpt"
    save_checkpoint_folder(create_sae(cfg), folder, lambda staging: torch.save({"step": 1}, staging / "trainer_state.pt"))
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (folder / "trainer_state.pt").write_bytes(b"not a checkpoint")
    (folder / "cfg.json").write_text("{")
    for checked in (True, False):  # caught by the checksums, and by the readers themselves without them
        with pytest.raises(CheckpointError, match="trainer_state.pt is corrupt"):
            load_trainer_state(folder)
        with pytest.raises(CheckpointError, match="cfg.json is corrupt"):
            load_sae(folder)
        if checked:
            (folder / "cfg.json").write_text(json.dumps(saelens_cfg(create_sae(cfg))))
            (folder / "cfg.json.sha256").unlink()
            with pytest.raises(CheckpointError, match="sae_weights.safetensors is corrupt: its contents do not match"):
                load_sae(folder)
            (folder / "cfg.json").write_text("{")
            for sidecar in folder.glob("*.sha256"):
                sidecar.unlink()
    with pytest.raises(CheckpointError, match="sae_weights.safetensors is corrupt or truncated"):
        (folder / "cfg.json").write_text(json.dumps(saelens_cfg(create_sae(cfg))))
        load_sae(folder)


def _save_under_a_file_size_limit(folder: str, act_size: int, queue) -> None:
    """In a child process: the file-size limit makes every large write fail, as a full disk would."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
    from sentence_sae import SAEConfig

    cfg = SAEConfig(dict_size=64, top_k=4, act_size=act_size, device="cpu", seed=7)
    try:
        save_checkpoint_folder(create_sae(cfg), Path(folder))
        queue.put("saved")
    except OSError as exc:
        queue.put(f"failed: {exc}")


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, model):
    cfg = make_cfg(tmp_path, model, dict_size=64, top_k=4)
    original = create_sae(cfg)
    folder = tmp_path / "checkpoints" / "step_0000010"
    save_checkpoint_folder(original, folder)
    queue = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_save_under_a_file_size_limit,
                                                         args=(str(folder), 384, queue))
    child.start()
    child.join(600)
    outcome = queue.get(timeout=900)
    assert outcome.startswith("failed") and "File too large" in outcome, outcome
    loaded = load_sae(folder)
    torch.testing.assert_close(loaded.W_dec, original.W_dec)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["step_0000010"]  # no half-written leftovers


@pytest.mark.slow
def test_output_dir_that_cannot_be_created_is_one_clear_line(tmp_path, jsonl_file):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should go")
    proc = subprocess.run([sys.executable, "-m", "sentence_sae", "train", "--dataset_path", str(jsonl_file),
                           "--output_dir", str(blocker / "runs"), "--num_eval_examples", "5"],
                          capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 2 and "cannot create the run folder" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_dataset_failing_part_way_is_retried_then_reported(tmp_path, model, docs_texts):
    folder = tmp_path / "data"
    folder.mkdir()
    good = sorted(set(docs_texts), key=len)[:1200]  # rows are read 1,000 at a time: fail in the 2nd batch
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": good}), folder / "a.parquet")
    # not line-based, so no line to point at: the read is retried, as a flaky network stream would be
    (folder / "b.parquet").write_bytes(b"PAR1" + b"broken" * 100 + b"PAR1")
    cfg = make_cfg(tmp_path, model, dataset_path=str(folder), use_cache=False, dict_size=64, top_k=4, num_val_examples=10,
                   batch_size=16, model_batch_size=16, num_batches_in_buffer=2, num_eval_examples=10,
                   num_examples=5000, checkpoint_freq=10, cache_shard_size=64,  # 64 texts per model call
                   wandb_mode="offline", perf_log_freq=5)
    trainer = Trainer(create_sae(cfg), ActivationsStoreSBERT(model, cfg), cfg)
    with pytest.raises(DataError) as failure:
        trainer.train()
    message = str(failure.value)
    assert "gave up after 3 retries; 1000 texts had been read" in message
    assert "checkpoint" in message and "is intact" in message
    run_dir = next((tmp_path / "runs").iterdir())
    checkpoint = sorted((run_dir / "checkpoints").iterdir())[-1]
    assert load_sae(checkpoint).d_sae == 64
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged and logged[-1]["step"] >= int(checkpoint.name.split("_")[1])
    # the wandb run was finished, marked failed (exit code 1), and its folder is where 'wandb sync' looks
    assert trainer.logger.exit_code == 1 and trainer.logger.wandb_run is None
    assert list(run_dir.glob(f"wandb/offline-run-*-{trainer.logger.wandb_id}"))


def test_sae_and_model_of_different_widths(tmp_path, model, jsonl_file):
    cfg = make_cfg(tmp_path, model, dataset_path=str(jsonl_file), num_eval_examples=5)
    wide = create_sae(cfg.replace(act_size=768))
    with pytest.raises(ModelError, match="reads 768-dimensional embeddings, but the model gives 384"):
        train_sae(wide, ActivationsStoreSBERT(model, cfg), model, cfg)
    with pytest.raises(ModelError, match="768-dimensional"):
        text_codes(wide, ["a text"], model)


def _flip_one_byte(path: Path, rng: np.random.Generator) -> None:
    data = bytearray(path.read_bytes())
    data[int(rng.integers(len(data)))] ^= int(rng.integers(1, 256))
    path.write_bytes(bytes(data))


def _read_as_the_next_command_would(path: Path, run_dir: Path) -> object:
    """What the next command that reads ``path`` gets from it (raises SentenceSAEError when it refuses)."""
    if path.parent.name.startswith("step_") or path.parent == run_dir:
        if path.name.startswith(("metrics.jsonl",)):
            return read_metrics(run_dir / "metrics.jsonl")
        if path.name.startswith("sparsity.safetensors"):
            return read_firing_frequencies(path.parent)
        if path.name.startswith("trainer_state.pt"):
            state = load_trainer_state(path.parent)
            return {key: state[key] for key in ("step", "total_steps", "sae", "dead_features")}
        sae = load_sae(path.parent)
        return {name: tensor.clone() for name, tensor in sae.state_dict().items()} | {"cfg": sae.cfg.to_dict()}
    return load_embeddings(path.parent)[:]  # the cache: manifest and shards


def _same(a: object, b: object) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (torch.Tensor, np.ndarray)):
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    return a == b


@pytest.mark.slow
def test_one_flipped_byte_in_any_file_a_run_writes_is_refused_by_name_or_changes_nothing(tmp_path, model, jsonl_file):
    cfg = make_cfg(tmp_path, model, dataset_path=str(jsonl_file), dict_size=64, top_k=4, batch_size=8,
                   model_batch_size=8, num_batches_in_buffer=4, num_eval_examples=10, num_examples=200,
                   checkpoint_freq=10, perf_log_freq=10, cache_shard_size=16)
    run_dir = train(cfg).run_dir
    cache_folder = next(Path(cfg.cache_dir).iterdir())
    files = [p for folder in (run_dir, cache_folder) for p in sorted(folder.rglob("*")) if p.is_file() and p.stat().st_size]
    kinds = {p.name.split(".")[0].split("_")[0] for p in files}
    assert {"cfg", "sae", "trainer", "metrics", "manifest", "shard"} <= kinds, kinds
    rng = np.random.default_rng(0)
    refused = 0
    for path in files:
        clean_bytes = path.read_bytes()
        clean = _read_as_the_next_command_would(path, run_dir)
        for _ in range(3):
            _flip_one_byte(path, rng)
            try:
                result = _read_as_the_next_command_would(path, run_dir)
            except SentenceSAEError as exc:
                assert path.name in str(exc) or path.parent.name in str(exc), f"{path}: {exc}"
                assert len(str(exc).splitlines()) == 1
                refused += 1
            else:
                assert _same(result, clean), f"a flipped byte in {path} changed what is read, silently"
            path.write_bytes(clean_bytes)
    assert refused >= 2 * len(files)  # nearly every flip is caught; the rest fall on bytes nobody reads


def test_a_folder_without_checksums_loads_with_a_note(tmp_path, model, capsys):
    cfg = make_cfg(tmp_path, model, dict_size=64, top_k=4)
    save_sae(create_sae(cfg), tmp_path / "sae")
    load_sae(tmp_path / "sae")
    assert "loaded unchecked" not in capsys.readouterr().err
    for sidecar in (tmp_path / "sae").glob("*.sha256"):
        sidecar.unlink()
    load_sae(tmp_path / "sae")
    assert "has no checksum" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, model, docs_texts) -> tuple[Path, Path]:
    """(run folder, its dataset file): a small SAE trained on 120 distinct paragraphs, with checkpoints."""
    folder = tmp_path_factory.mktemp("tiny-run")
    data = write_jsonl(folder / "texts.jsonl", [{"text": t} for t in list(dict.fromkeys(docs_texts))[:120]])
    cfg = make_cfg(folder, model, dataset_path=str(data), dict_size=64, top_k=4, batch_size=16, num_eval_examples=20,
                   num_examples=400, checkpoint_freq=10)
    return train(cfg).run_dir, data


@pytest.mark.parametrize("call, message", [
    (lambda run: top_features(run, ""), "the text is empty"),
    (lambda run: top_features(run, "   "), "the text is empty"),
    (lambda run: top_features(run, "a text", top=-3), "top must be a positive number, got -3"),
    (lambda run: explain_run(run, top_n=0), "top_n must be a positive number, got 0"),
    (lambda run: evaluate_run(run, num_examples=0), "num_examples must be a positive number"),
    (lambda run: evaluate_run(run, num_examples=-5), "num_examples must be a positive number"),
], ids=["empty-text", "spaces", "negative-top", "top_n-0", "eval-0", "eval-negative"])
def test_counts_and_texts_that_make_no_sense_are_refused(tiny_run, call, message):
    with pytest.raises(ConfigError, match=message):
        call(tiny_run[0])


def test_held_out_follows_the_data_not_how_its_path_is_written(tiny_run, model, tmp_path, monkeypatch):
    run_dir, data = tiny_run
    assert evaluate_run(run_dir, model=model)["held_out"]
    monkeypatch.chdir(data.parent)
    assert evaluate_run(run_dir, dataset_path=data.name, num_examples=20, model=model)["held_out"]
    monkeypatch.chdir(tmp_path)  # the run's config stores its dataset's absolute path: eval works from anywhere
    assert json.loads((run_dir / "cfg.json").read_text())["sentence_sae"]["config"]["dataset_path"] == str(data)
    assert evaluate_run(run_dir, num_examples=20, model=model)["held_out"]
    # A SAELens folder says nothing of its training data: nothing it is evaluated on counts as held out.
    saelens = tmp_path / "saelens"
    shutil.copytree(run_dir, saelens, ignore=shutil.ignore_patterns("checkpoints", "*.sha256"))
    cfg = json.loads((saelens / "cfg.json").read_text())
    del cfg["sentence_sae"]
    (saelens / "cfg.json").write_text(json.dumps(cfg))
    assert not evaluate_run(saelens, dataset_path="python-docs", num_examples=20, model=model)["held_out"]


def test_a_run_stopped_before_its_final_save_points_at_its_checkpoint(tiny_run, tmp_path):
    stopped = tmp_path / "stopped"
    shutil.copytree(tiny_run[0] / "checkpoints", stopped / "checkpoints")
    with pytest.raises(CheckpointError, match="stopped before its final save; use its last checkpoint .*step_"):
        evaluate_run(stopped)


def test_identical_texts_are_reported_not_a_nan_fvu(tmp_path, model):
    data = write_jsonl(tmp_path / "same.jsonl", [{"text": "the same sentence"}] * 400)
    cfg = make_cfg(tmp_path, model, dataset_path=str(data), dict_size=64, top_k=4, num_examples=200)
    with pytest.raises(DataError, match="all identical"):
        train(cfg)


def test_a_missing_file_of_an_unknown_type_is_named_missing_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for path in ("data/x.tsv", "data/notes.md", str(tmp_path / "nothing.jsonl")):
        with pytest.raises(DataError, match="does not exist"):
            DatasetSource.of(path).open()


def test_a_cache_dir_that_cannot_be_written_is_one_clear_line(tmp_path, model, jsonl_file):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = make_cfg(tmp_path, model, dataset_path=str(jsonl_file), cache_dir=str(blocker / "cache"), dict_size=64,
                   top_k=4, num_examples=100, num_eval_examples=10)
    with pytest.raises(CacheError, match="cannot write the embedding cache .*set cache_dir"):
        train(cfg)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_saes_are_refused_on_the_cpu_with_the_reason(tmp_path, model, dtype):
    with pytest.raises(ConfigError, match=f"dtype {dtype} is not supported for SAEs on the CPU"):
        make_cfg(tmp_path, model, dtype=dtype)


def _bad_line_message(dataset: Path, model, tmp_path: Path) -> str:
    cfg = make_cfg(tmp_path, model, dataset_path=str(dataset), use_cache=False, num_eval_examples=2)
    with pytest.raises(DataError) as failure:
        list(ActivationsStoreSBERT(model, cfg).corpus.texts_from(0))
    return str(failure.value)


def test_a_bad_line_past_the_readers_first_block_is_named_by_its_line(tmp_path, model):
    rows = [json.dumps({"text": f"text {i} " + "x" * 40_000}) for i in range(400)]
    rows[289] = '{"text": "broken'  # 11 MB in: the reader's own message says "row 5" and "after 0 rows"
    import gzip

    for name, write in (("big.jsonl", lambda p, b: p.write_bytes(b)), ("big.jsonl.gz", gzip.open)):
        path = tmp_path / name
        data = ("\n".join(rows) + "\n").encode()
        if name.endswith(".gz"):
            with gzip.open(path, "wb") as handle:
                handle.write(data)
        else:
            path.write_bytes(data)
        message = _bad_line_message(path, model, tmp_path)
        assert f"line 290 of {path} is not valid JSON" in message and "after 289 good rows" in message, message
        assert "retries" not in message  # a bad line fails the same way every time: no waiting


def test_a_file_that_is_not_utf8_is_named_by_its_line(tmp_path, model):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"a line of text\n" * 3000 + "caf\xe9 au lait\n".encode("latin-1") + b"more\n")
    message = _bad_line_message(path, model, tmp_path)
    assert f"line 3001 of {path} is not UTF-8 (byte 0xe9 at column 4)" in message, message


def test_a_full_disk_while_caching_is_one_line_and_keeps_what_was_cached(tmp_path, model, docs_texts):
    data = write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in docs_texts[:600]])
    command = [sys.executable, "-m", "sentence_sae", "embed", "--dataset_path", str(data), "--cache_dir",
               str(tmp_path / "cache"), "--cache_shard_size", "64", "--num_eval_examples", "10", "--num_val_examples", "0"]
    first = subprocess.run(command + ["--num_examples", "118"], capture_output=True, text=True, env=ENV, timeout=900)
    assert first.returncode == 0, first.stderr
    cached = json.loads(first.stdout.strip().splitlines()[-1])
    assert cached["rows"] == 128

    def disk_full() -> None:  # every file may grow to 50 kB: a 64-row shard (98 kB) cannot be written
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))

    full = subprocess.run(command + ["--num_examples", "500"], capture_output=True, text=True, env=ENV,
                          timeout=900, preexec_fn=disk_full)
    assert full.returncode == 2, full.stderr
    assert "Traceback" not in full.stderr
    # rows 0-127 are two full 64-row shards; the third cannot be written
    assert "could not write shard_00002.npy" in full.stderr and "stays valid up to row 128" in full.stderr
    kept = load_embeddings(cached["cache_dir"])
    assert kept.shape == (128, 384)
    again = subprocess.run(command + ["--num_examples", "118"], capture_output=True, text=True, env=ENV, timeout=900)
    assert json.loads(again.stdout.strip().splitlines()[-1])["encoded"] == 0  # nothing had to be encoded again
