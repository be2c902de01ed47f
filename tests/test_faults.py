"""Faults and bad input: non-finite embeddings and losses, corrupt and truncated files, failed
writes, datasets that fail part-way, models of the wrong width."""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import make_cfg, write_jsonl
from sentence_sae import ActivationsStoreSBERT, create_sae, load_sae, text_codes, train_sae
from sentence_sae.activation_store import EmbeddingStore
from sentence_sae.cache import open_cache
from sentence_sae.checkpoint import save_checkpoint_folder
from sentence_sae.errors import CheckpointError, DataError, ModelError, TrainingStopped
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
    with pytest.raises(CheckpointError, match="sae_weights.safetensors is corrupt or truncated"):
        load_sae(folder)
    (folder / "trainer_state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="trainer_state.pt is corrupt or truncated"):
        load_trainer_state(folder)
    (folder / "cfg.json").write_text("{")
    with pytest.raises(CheckpointError, match="cfg.json is corrupt"):
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
    write_jsonl(folder / "a.jsonl", [{"text": t} for t in good])
    (folder / "b.jsonl").write_text('{"text": "fine"}\n{this line is broken\n')
    cfg = make_cfg(tmp_path, model, dataset_path=str(folder), use_cache=False, dict_size=64, top_k=4,
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
