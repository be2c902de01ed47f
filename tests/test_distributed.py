"""Data-parallel training with torchrun: 2 processes on CPU (gloo) against 1 on the same data."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import make_cfg, write_jsonl
from sentence_sae.cache import open_cache

ENV = {**os.environ, "TQDM_DISABLE": "1", "WANDB_MODE": "disabled"}
# 40,000 examples are 18 passes over the corpus; with 3 chunks a pass, one rank's share of a pass can be a
# single short chunk, so the pass limit is lifted: this compares 1 and 2 processes, not max_epochs
COMMON = ["--num_examples", "40000", "--dict_size", "512", "--top_k", "16", "--batch_size", "128",
          "--num_eval_examples", "256", "--max_epochs", "1000"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(n: int, *args: str) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_addr",
                "127.0.0.1", "--master_port", str(free_port())]
    return subprocess.run([*launcher, "-m", "sentence_sae", *args], capture_output=True, text=True, env=ENV,
                          timeout=900)


@pytest.fixture(scope="module")
def cached_corpus(tmp_path_factory, model, docs_embeddings):
    """The built-in corpus with a complete embedding cache (its real embeddings), as `embed` leaves it."""
    folder = tmp_path_factory.mktemp("ddp")
    cfg = make_cfg(folder, model, dataset_path="python-docs")
    cache = open_cache(cfg, model)
    cache.acquire_writer()
    cache.append(docs_embeddings.numpy())
    cache.mark_complete(0)
    cache.close()
    return folder


@pytest.mark.slow
def test_two_processes_reach_the_fvu_of_one(cached_corpus):
    out = cached_corpus / "runs"
    args = ["train", "--dataset_path", "python-docs", "--cache_dir", str(cached_corpus / "cache"),
            "--output_dir", str(out), *COMMON]
    single = subprocess.run([sys.executable, "-m", "sentence_sae", *args], capture_output=True, text=True,
                            env=ENV, timeout=900)
    assert single.returncode == 0, single.stderr
    double = torchrun(2, *args)
    assert double.returncode == 0, double.stderr
    one = json.loads(single.stdout.strip().splitlines()[-1])
    lines = [line for line in double.stdout.strip().splitlines() if line.startswith("{")]
    assert len(lines) == 1  # only rank 0 reports
    two = json.loads(lines[0])
    assert one["examples"] == two["examples"] == 40000
    assert abs(one["fvu"] - two["fvu"]) < 0.02, (one["fvu"], two["fvu"])
    assert abs(one["l0"] - two["l0"]) < 1.5
    assert len(list(out.iterdir())) == 2  # one folder per run: only rank 0 writes
    assert "Training stopped: reached num_examples=40000" in double.stderr


@pytest.mark.slow
def test_two_processes_stream_their_own_split_without_a_cache(tmp_path, docs_texts):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in sorted(set(docs_texts), key=len)[:300]])
    proc = torchrun(2, "train", "--dataset_path", str(data), "--use_cache", "false", "--num_epochs", "2",
                    "--num_examples", "none", "--dict_size", "64", "--top_k", "4", "--batch_size", "16",
                    "--num_eval_examples", "10", "--output_dir", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    # each rank: its half, less its 10 held-out texts and its 14 validation texts (half of 10% of 290)
    assert 2 * (300 - 2 * 10 - 2 * 14) - 32 <= summary["examples"] <= 2 * (300 - 2 * 10 - 2 * 14)


EMBED = ["embed", "--dataset_path", "python-docs", "--num_examples", "700", "--num_eval_examples", "64",
         "--cache_shard_size", "96", "--encode_backend", "torch"]
ONE_THREAD = {**ENV, "OMP_NUM_THREADS": "1"}  # what torchrun gives each process: the same arithmetic


def manifest_of(summary: dict) -> dict:
    manifest = json.loads((Path(summary["cache_dir"]) / "manifest.json").read_text())
    return {key: manifest[key] for key in ("key", "rows", "complete", "skipped_texts", "shards")}


def last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.strip().splitlines() if line.startswith("{")][-1])


@pytest.fixture(scope="module")
def embedded_by_one(tmp_path_factory) -> dict:
    """The manifest a single process writes for EMBED."""
    folder = tmp_path_factory.mktemp("embed-one")
    done = subprocess.run([sys.executable, "-m", "sentence_sae", *EMBED, "--cache_dir", str(folder)],
                          capture_output=True, text=True, env=ONE_THREAD, timeout=900)
    assert done.returncode == 0, done.stderr
    return manifest_of(last_json(done.stdout))


@pytest.mark.slow
def test_embed_under_torchrun_writes_the_shards_one_process_writes(tmp_path, embedded_by_one):
    done = torchrun(2, *EMBED, "--cache_dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    summary = last_json(done.stdout)
    assert summary["processes"] == 2 and summary["encoded"] == summary["rows"] == embedded_by_one["rows"]
    assert manifest_of(summary) == embedded_by_one  # the same shard files, byte for byte (sha256)
    assert len(embedded_by_one["shards"]) >= 6 and not list(tmp_path.glob("*/shard_*.json"))


@pytest.mark.slow
def test_a_killed_process_of_a_torchrun_embed_resumes_where_it_stopped(tmp_path, embedded_by_one):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                "127.0.0.1", "--master_port", str(free_port())]
    signal_at = str(Path(__file__).with_name("signal_at.py"))
    killed = subprocess.run([*launcher, signal_at, "rank1-shard", "2", "SIGKILL", *EMBED, "--cache_dir", str(tmp_path)],
                            capture_output=True, text=True, env=ENV, timeout=900)
    assert killed.returncode != 0
    written = list(tmp_path.glob("*/shard_*.json"))  # shards written whole, not yet in a manifest
    assert len(written) >= 2
    resumed = torchrun(2, *EMBED, "--cache_dir", str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    summary = last_json(resumed.stdout)
    assert summary["encoded"] <= summary["rows"] - 96 * len(written)  # what the killed call wrote is kept
    assert manifest_of(summary) == embedded_by_one
