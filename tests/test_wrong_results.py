"""No silent wrong results: a diverged run, a run folder outside output_dir, rows dropped without a
word, a cache never filled, another variant's weights, a full disk, counts and numbers that are off."""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest
import torch

from helpers import make_cfg, write_jsonl
from sentence_sae import EmbeddingStore, create_sae, load_sae, save_sae, train_sae
from sentence_sae.cache import open_cache
from sentence_sae.cli import main
from sentence_sae.config import SAEConfig
from sentence_sae.data import DatasetSource
from sentence_sae.errors import CacheError, CheckpointError, ConfigError, DataError, DiskFullError, TrainingStopped
from sentence_sae.evaluation import evaluate_run
from sentence_sae.finalize import post_init_cfg
from sentence_sae.plots import training_curves
from sentence_sae.trainer import Trainer
from sentence_sae.training import embed

ENV_SIGNAL_AT = Path(__file__).with_name("signal_at.py")


# ---------------------------------------------------------------------------------------------- training


def test_a_diverging_run_stops_and_names_the_last_good_checkpoint(tmp_path, model, docs_split):
    train, held_out = docs_split
    # lr 1e6 keeps every value finite for a while: only the size of the error says the run diverged
    cfg = make_cfg(tmp_path, model, dict_size=128, top_k=8, lr=1e6, lr_warmup_steps=0, checkpoint_freq=1,
                   num_examples=5000, batch_size=64)
    trainer = Trainer(create_sae(cfg), EmbeddingStore(train, cfg, held_out=held_out), cfg)
    with pytest.raises(TrainingStopped, match=r"training diverged: the reconstruction error of step \d+'s batch is .*"
                                              r"checkpoint .*step_\d+ is intact") as stopped:
        trainer.train()
    assert stopped.value.exit_code == 1
    assert not (trainer.run_dir / "sae_weights.safetensors").exists()  # the diverged SAE is not a result
    good = load_sae(trainer.last_checkpoint)
    assert all(torch.isfinite(t).all() for t in good.weights_for_saving().values())


def test_a_run_worse_than_the_mean_says_so(tmp_path, model, docs_split, capsys):
    train, held_out = docs_split
    cfg = make_cfg(tmp_path, model, dict_size=128, top_k=8, num_examples=1)
    result = Trainer(create_sae(cfg), EmbeddingStore(train, cfg, held_out=held_out), cfg).train()
    assert result.metrics["fvu"] > 1
    assert f"warning: the held-out FVU is {result.metrics['fvu']:.3g}, above 1" in capsys.readouterr().err


def test_train_sae_takes_embeddings_without_a_model_and_checks_them(tmp_path, docs_split):
    train, held_out = docs_split
    values = dict(output_dir=str(tmp_path / "runs"), wandb_mode="disabled", device="cpu", perf_log_freq=0,
                  checkpoint_freq=0, dict_size=128, top_k=8, num_examples=2000)
    cfg = post_init_cfg(SAEConfig().replace(**values), embedding_width=train.shape[1])
    result = train_sae(create_sae(cfg), EmbeddingStore(train, cfg, held_out=held_out), None, cfg)
    assert result.metrics["fvu"] < 1 and (result.run_dir / "sae_weights.safetensors").is_file()
    # The README's call, with the config finalized for the model's width before: the same.
    result = train_sae(create_sae(cfg), EmbeddingStore(train, SAEConfig().replace(**values)), None,
                       SAEConfig().replace(**values, act_size=384))
    assert result.metrics["fvu"] < 1
    broken = train.clone()
    broken[5, 3] = float("nan")  # in the validation rows, which are read before training starts
    with pytest.raises(DataError, match="embedding row 5 is not finite"):
        train_sae(create_sae(cfg), EmbeddingStore(broken, cfg, held_out=held_out), None, cfg)
    with pytest.raises(ConfigError, match="act_size is 384, but the store serves 100-dimensional embeddings"):
        train_sae(create_sae(cfg), EmbeddingStore(train[:, :100], cfg), None, cfg)


@pytest.mark.parametrize("overrides, message", [
    ({"name": "../../escaped"}, "name '../../escaped' must be a plain folder name"),
    ({"name": "a/b"}, "must be a plain folder name"),
    ({"name": ".."}, "must be a plain folder name"),
    ({"top_k_warmup_factor": float("inf")}, "top_k_warmup_factor must be a finite number, got inf"),
    ({"target_l0": float("inf")}, "target_l0 must be a finite number, got inf"),
    ({"lr": float("nan")}, "lr must be a finite number, got nan"),
    ({"dict_size": 10**9}, r"dict_size 1000000000 needs about [\d,.]+ GiB .* GiB available; lower dict_size"),
    ({"num_eval_examples": 10**30}, "num_eval_examples is too large"),
    ({"seed": -1}, "seed must not be negative"),
])
def test_values_that_failed_deep_inside_are_refused_up_front(tmp_path, model, overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_cfg(tmp_path, model, **overrides)


# ---------------------------------------------------------------------------------------------- readers


def test_a_csv_row_with_extra_fields_is_an_error_with_its_line(tmp_path, small_texts):
    lines = ["text,label"] + [f"{text.replace(',', ' ')},x" + (",extra" if i == 6 else "")
                              for i, text in enumerate(small_texts[:20])]
    path = tmp_path / "rows.csv"
    path.write_text("\n".join(lines) + "\n")
    # pandas reads such a file with the first column as an index: every text would read "x"
    with pytest.raises(DataError, match=rf"line 8 of {path} has 3 fields where its header has 2"):
        DatasetSource.of(str(path)).open()
    first = tmp_path / "first.csv"
    first.write_text("\n".join([lines[0], lines[1] + ",extra", *lines[2:]]) + "\n")
    with pytest.raises(DataError, match="line 2 of .* has 3 fields"):
        DatasetSource.of(str(first)).open()


def test_skipped_null_texts_are_counted_on_stderr_and_in_the_summary(tmp_path, small_texts, model, capsys):
    rows = [{"text": None if i % 3 == 0 else text} for i, text in enumerate(small_texts)]
    path = write_jsonl(tmp_path / "nulls.jsonl", rows)
    assert main(["embed", "--dataset_path", str(path), "--cache_dir", str(tmp_path / "cache"),
                 "--num_examples", "none", "--num_eval_examples", "5"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["skipped_texts"] == 20 and summary["rows"] == 40 and summary["complete"]
    assert "skipped 20 rows of" in err and "with a null or empty 'text'" in err
    cfg = make_cfg(tmp_path, model, dataset_path=str(path), dict_size=64, top_k=4, num_eval_examples=5,
                   num_examples=None, num_epochs=1)
    from sentence_sae import train

    assert train(cfg).summary()["skipped_texts"] == 20
    assert "skipped 20 rows with a null or empty text" in capsys.readouterr().err


def test_a_split_that_local_files_do_not_have_is_named(jsonl_file):
    with pytest.raises(DataError, match="split 'test' does not exist: local files .* have the one split 'train'"):
        DatasetSource.of(str(jsonl_file), split="test").open()
    with pytest.raises(DataError, match="split 'validation' does not exist: the built-in corpus"):
        DatasetSource.of("python-docs", split="validation").open()


def test_too_many_validation_texts_name_the_dataset_size(tmp_path, model, small_texts):
    path = write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in small_texts])
    from sentence_sae import ActivationsStoreSBERT

    cfg = make_cfg(tmp_path, model, dataset_path=str(path), num_eval_examples=10, num_val_examples=100_000)
    with pytest.raises(DataError, match=r"has only 60 texts, all taken by the held-out set"):
        ActivationsStoreSBERT(model, cfg)


# ---------------------------------------------------------------------------------------------- the cache


@contextlib.contextmanager
def cache_lock_held(cfg: SAEConfig, model) -> Iterator[threading.Event]:
    """Hold the cache's writer lock as another process would (a separate open file); set the event to let go."""
    folder = open_cache(cfg, model).folder
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / ".lock", "w")
    fcntl.flock(handle, fcntl.LOCK_EX)
    release = threading.Event()
    releaser = threading.Thread(target=lambda: (release.wait(), handle.close()))
    releaser.start()
    try:
        yield release
    finally:
        release.set()
        releaser.join()


def test_embed_waits_for_a_held_cache_lock_then_gives_up_with_an_error(tmp_path, model, jsonl_file, capsys):
    cfg = make_cfg(tmp_path, model, dataset_path=str(jsonl_file), num_examples=None, num_eval_examples=5,
                   cache_lock_timeout=1)
    with cache_lock_held(cfg, model):
        with pytest.raises(CacheError, match="another process holds the embedding cache .* wrote no shard for 1 s"):
            embed(cfg)
    assert "waiting for another process that is filling the embedding cache" in capsys.readouterr().err
    # Released while embed waits: it goes on and fills the cache.
    with cache_lock_held(cfg.replace(cache_lock_timeout=600), model) as release:
        threading.Timer(1.0, release.set).start()
        summary = embed(cfg.replace(cache_lock_timeout=600))
    assert summary["complete"] and summary["rows"] == 60 and summary["encoded"] == 60


def test_embed_counts_what_it_encoded(tmp_path, model, docs_texts):
    texts = list(dict.fromkeys(docs_texts))[:400]
    path = write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in texts])
    cfg = make_cfg(tmp_path, model, dataset_path=str(path), num_examples=None, cache_shard_size=50)
    summary = embed(cfg)  # the held-out and validation rows are encoded first: they count too
    assert summary["rows"] == 400 and summary["encoded"] == 400 and summary["complete"]
    assert embed(cfg)["encoded"] == 0


def test_embed_stopped_by_a_signal_says_how_far_the_cache_is_valid(tmp_path, docs_texts):
    texts = list(dict.fromkeys(docs_texts))[:300]
    path = write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in texts])
    args = ["embed", "--dataset_path", str(path), "--cache_dir", str(tmp_path / "cache"), "--cache_shard_size", "50",
            "--num_examples", "none"]
    env = {**__import__("os").environ, "TQDM_DISABLE": "1", "WANDB_MODE": "disabled"}
    stopped = subprocess.run([sys.executable, str(ENV_SIGNAL_AT), "shard", "2", "SIGTERM", *args], env=env,
                             capture_output=True, text=True, timeout=900)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    manifest = json.loads(next((tmp_path / "cache").glob("*/manifest.json")).read_text())
    assert not manifest["complete"]
    assert (f"SIGTERM received; the embedding cache {next((tmp_path / 'cache').iterdir())} is valid up to row "
            f"{manifest['rows']}; run the same command again") in stopped.stderr
    assert "Traceback" not in stopped.stderr
    again = subprocess.run([sys.executable, "-m", "sentence_sae", *args], env=env, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["complete"] and summary["rows"] == 300 and summary["encoded"] == 300 - manifest["rows"]


# ---------------------------------------------------------------------------------------------- saved SAEs


def test_weights_of_another_variant_are_refused_by_name(tmp_path):
    cfg = SAEConfig(act_size=16, dict_size=32, top_k=4, device="cpu")
    topk, batchtopk = tmp_path / "topk", tmp_path / "batchtopk"
    save_sae(create_sae(cfg.replace(sae_type="topk")), topk)
    save_sae(create_sae(cfg.replace(sae_type="batchtopk")), batchtopk)
    for name in ("sae_weights.safetensors", "sae_weights.safetensors.sha256"):  # checksums and all
        shutil.copy(batchtopk / name, topk / name)
    with pytest.raises(CheckpointError, match="does not hold the tensors of a topk SAE .*holds threshold"):
        load_sae(topk)
    gated = save_sae(create_sae(cfg.replace(sae_type="gated")), tmp_path / "gated")
    for name in ("sae_weights.safetensors", "sae_weights.safetensors.sha256"):
        shutil.copy(gated / name, batchtopk / name)
    with pytest.raises(CheckpointError, match="lacks b_enc, threshold; holds b_gate, b_mag, r_mag"):
        load_sae(batchtopk)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_an_unavailable_device_is_not_called_a_corrupt_file(tmp_path):
    folder = save_sae(create_sae(SAEConfig(act_size=16, dict_size=32, top_k=4, device="cpu")), tmp_path / "sae")
    with pytest.raises(ConfigError, match="device 'cuda' asked for, but no CUDA GPU is available"):
        load_sae(folder, device="cuda")


def test_eval_too_small_for_a_metric_reports_it_missing_not_nan(labelled_run):
    run_dir, _, _ = labelled_run
    report = evaluate_run(run_dir, num_examples=3)
    assert report["recall_at_10"] is None
    assert report["missing"] == {"recall_at_10": "needs more than 10 texts (3 evaluated)"}
    json.loads(json.dumps(report, allow_nan=False))  # strict JSON: no NaN anywhere
    assert "NaN" not in (run_dir / "eval.json").read_text()


def test_plot_of_a_run_without_metrics_says_so(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(CheckpointError, match="holds no training metrics to plot"):
        training_curves(tmp_path)
    assert not (tmp_path / "training_curves.png").exists()


# ---------------------------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path) -> Iterator[callable]:
    """Mount a tmpfs of a given size (needs root, as CI and the development machines have)."""
    mounted: list[Path] = []

    def mount(size_bytes: int) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` up to ``leave`` free bytes."""
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as handle:
        handle.write(b"\0" * max(free - leave, 0))


def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_last_one(tmp_path, model, docs_split, small_disk):
    train, held_out = docs_split
    values = dict(dict_size=128, top_k=8, checkpoint_freq=5, num_examples=2000, batch_size=32,
                  model_batch_size=8, num_batches_in_buffer=8)
    probe = make_cfg(tmp_path / "probe", model, **{**values, "num_examples": 160})
    trainer = Trainer(create_sae(probe), EmbeddingStore(train, probe, held_out=held_out), probe)
    trainer.train()
    checkpoint_bytes = sum(f.stat().st_size for f in trainer.last_checkpoint.iterdir())
    disk = small_disk(int(checkpoint_bytes * 1.6))  # room for one checkpoint, not two
    cfg = make_cfg(tmp_path, model, **values, output_dir=str(disk))
    trainer = Trainer(create_sae(cfg), EmbeddingStore(train, cfg, held_out=held_out), cfg)
    with pytest.raises(CheckpointError, match=r"no space left on the disk of .* for the checkpoint step_0000010 \(it "
                                              r"needs about [\d.]+ MiB, [\d.]+ (KiB|MiB|bytes) free\); the checkpoint "
                                              r".*step_0000005 is intact"):
        trainer.train()
    assert [p.name for p in (trainer.run_dir / "checkpoints").iterdir()] == ["step_0000005"]  # nothing half-written
    load_sae(trainer.run_dir / "checkpoints" / "step_0000005")


def test_eval_and_plot_into_a_full_run_folder_are_one_line(labelled_run, small_disk):
    run_dir, _, _ = labelled_run
    disk = small_disk(16 << 20)
    copy = disk / run_dir.name
    copy.mkdir()
    for name in ("cfg.json", "sae_weights.safetensors", "metrics.jsonl"):  # what eval and plot read
        for file in (run_dir / name, run_dir / f"{name}.sha256"):
            if file.exists():
                shutil.copy(file, copy / file.name)
    fill(disk, 4096)
    with pytest.raises(DiskFullError, match=r"no space left on the disk of .* to write density_histogram.png \(it "
                                            r"needs at least .*free\); nothing was written in its place"):
        evaluate_run(copy)
    before = (copy / "metrics.jsonl").read_bytes()
    with pytest.raises(DiskFullError, match="to write training_curves.png"):
        training_curves(copy)
    assert (copy / "metrics.jsonl").read_bytes() == before
    assert not list(copy.glob(".*.tmp"))
