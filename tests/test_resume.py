"""Exact resume: a run killed with SIGKILL and resumed ends as if never interrupted; SIGINT and
SIGTERM write a checkpoint before exiting."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import write_jsonl

ENV = {**os.environ, "TQDM_DISABLE": "1", "WANDB_MODE": "disabled"}
SIGNAL_AT = Path(__file__).with_name("signal_at.py")


@pytest.fixture(scope="module")
def resume_data(tmp_path_factory, docs_texts) -> Path:
    """400 distinct short paragraphs of the built-in corpus (quick to encode)."""
    texts = sorted(set(docs_texts), key=lambda t: (len(t), t))[200:600]
    return write_jsonl(tmp_path_factory.mktemp("resume") / "texts.jsonl", [{"text": t} for t in texts])


def train_args(data: Path, out: Path, cache: Path, use_cache: bool, sae_type: str = "topk") -> list[str]:
    return [sys.executable, "-m", "sentence_sae", "train", "--dataset_path", str(data), "--output_dir", str(out),
            "--cache_dir", str(cache), "--use_cache", str(use_cache).lower(), "--sae_type", sae_type,
            "--dict_size", "128", "--top_k", "8", "--batch_size", "16", "--model_batch_size", "16",
            "--num_batches_in_buffer", "4", "--num_eval_examples", "20", "--num_epochs", "3", "--num_examples",
            "none", "--checkpoint_freq", "10", "--perf_log_freq", "10", "--cache_shard_size", "64"]


def run_to_end(args: list[str]) -> Path:
    proc = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return Path(json.loads(proc.stdout.strip().splitlines()[-1])["run_dir"])


def start_and_stop(args: list[str], out: Path, sig: int, after_step: int) -> tuple[Path, subprocess.CompletedProcess]:
    """Run ``args`` and send the process ``sig`` right after it writes the checkpoint of ``after_step``."""
    command = [sys.executable, str(SIGNAL_AT), "checkpoint", str(after_step), signal.Signals(sig).name] + args[3:]
    process = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=900)
    found = list(out.glob(f"*/checkpoints/step_{after_step:07d}/trainer_state.pt"))
    assert found, f"no checkpoint of step {after_step} was written:\n{process.stderr}"
    return found[0].parents[2], process


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


@pytest.mark.slow
@pytest.mark.parametrize("use_cache", [False, True], ids=["from-raw-text", "with-cache"])
def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path, resume_data, use_cache):
    reference = run_to_end(train_args(resume_data, tmp_path / "reference", tmp_path / "cache-a", use_cache,
                                      "batchtopk"))
    args = train_args(resume_data, tmp_path / "killed", tmp_path / "cache-b", use_cache, "batchtopk")
    run_dir, process = start_and_stop(args, tmp_path / "killed", signal.SIGKILL, after_step=20)
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "sae_weights.safetensors").exists(), "the run finished before it could be killed"
    resumed = subprocess.run([sys.executable, "-m", "sentence_sae", "train", "--resume", str(run_dir)],
                             capture_output=True, text=True, env=ENV, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming" in resumed.stderr
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    expected = json.loads((reference / "metrics.jsonl").read_text().splitlines()[-1])
    assert summary["examples"] == 3 * 342  # 400 texts less 20 held out and 38 (10%) for validation
    final, wanted = load_file(run_dir / "sae_weights.safetensors"), load_file(reference / "sae_weights.safetensors")
    for name in wanted:
        torch.testing.assert_close(final[name], wanted[name], rtol=1e-5, atol=1e-6, msg=name)
    # Every step saw the same batch as in the uninterrupted run: none skipped, none twice.
    assert losses(run_dir) == pytest.approx(losses(reference), rel=1e-5)
    assert summary["fvu"] == pytest.approx(expected["eval/fvu"], rel=1e-5)
    # Every number it prints, train_fvu included (measured on a sample that the checkpoints keep) ...
    assert summary["train_fvu"] == pytest.approx(expected["eval/train_fvu"], rel=1e-5)
    # ... also when the finished run is resumed once more.
    again = subprocess.run([sys.executable, "-m", "sentence_sae", "train", "--resume", str(run_dir)],
                           capture_output=True, text=True, env=ENV, timeout=900)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["train_fvu"] == pytest.approx(summary["train_fvu"],
                                                                                           rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signals_write_a_checkpoint_before_exiting(tmp_path, resume_data, sig):
    args = train_args(resume_data, tmp_path / "out", tmp_path / "cache", False)
    run_dir, process = start_and_stop(args, tmp_path / "out", sig, after_step=10)
    stderr = process.stderr
    assert process.returncode == 128 + sig, stderr
    name = signal.Signals(sig).name
    assert f"{name} received at step" in stderr and "--resume" in stderr and "Traceback" not in stderr
    step = int(stderr.split("received at step ")[1].split(";")[0])
    assert (run_dir / "checkpoints" / f"step_{step:07d}" / "trainer_state.pt").exists()
    resumed = subprocess.run([sys.executable, "-m", "sentence_sae", "train", "--resume", str(run_dir)],
                             capture_output=True, text=True, env=ENV, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["examples"] == 3 * 342


@pytest.mark.slow
def test_resume_refuses_data_that_changed_since_the_checkpoint(tmp_path, resume_data):
    data = Path(shutil.copy(resume_data, tmp_path / "texts.jsonl"))
    args = train_args(data, tmp_path / "out", tmp_path / "cache", False)
    run_dir, process = start_and_stop(args, tmp_path / "out", signal.SIGTERM, after_step=10)
    assert process.returncode == 128 + signal.SIGTERM, process.stderr
    with open(data, "a") as handle:
        handle.write(json.dumps({"text": "a text added after the checkpoint"}) + "\n")
    resumed = subprocess.run([sys.executable, "-m", "sentence_sae", "train", "--resume", str(run_dir)],
                             capture_output=True, text=True, env=ENV, timeout=900)
    assert resumed.returncode == 2, resumed.stderr
    assert f"dataset {data} has changed since" in resumed.stderr and "the run recorded" in resumed.stderr
    assert "Traceback" not in resumed.stderr


@pytest.mark.slow
def test_resume_needs_a_checkpoint_and_refuses_other_options(tmp_path):
    (tmp_path / "run").mkdir()
    proc = subprocess.run([sys.executable, "-m", "sentence_sae", "train", "--resume", str(tmp_path / "run")],
                          capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 2 and "holds no checkpoint to resume from" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "sentence_sae", "train", "--resume", str(tmp_path / "run"),
                           "--lr", "0.1"], capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 2 and "drop --lr" in proc.stderr
