"""What the benchmarks share: the shared data folder, the WordNet split every quality benchmark uses
(train on the first N_TRAIN definitions, judge on the rest, EXAMPLES training examples seen), and
running a command as a child process measured whole (wall time and its own peak memory), and texts
read from a corpus file."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_DATA = SHARED / "wordnet_glosses.jsonl.gz"
N_TRAIN = 100_000
EXAMPLES = 300_000


def whole_embeddings(data: Path) -> Any:
    """All of ``data``'s embeddings, memory-mapped from the sentence-sae cache (encoded on first use)."""
    from sentence_sae import embed, load_embeddings

    return load_embeddings(embed({"dataset_path": str(data), "num_examples": None, "wandb_mode": "disabled"})["cache_dir"])


def first_rows(data: Path, n_texts: int) -> Any:
    """The embeddings of the first ``n_texts`` rows of ``data`` as an array (encoded into the cache on first use)."""
    import numpy as np
    from sentence_sae import embed, load_embeddings

    cache = embed({"dataset_path": str(data), "num_examples": n_texts, "wandb_mode": "disabled"})["cache_dir"]
    return np.asarray(load_embeddings(cache)[:n_texts])


def first_rows_split(data: Path, n_texts: int, held_out: int) -> tuple[Any, Any]:
    """(training, held-out) embedding tensors: the first ``n_texts`` rows of ``data``, ``held_out`` of
    them drawn at random (seed 0) and held out."""
    import numpy as np
    import torch

    rows = first_rows(data, n_texts)
    order = np.random.default_rng(0).permutation(len(rows))
    return torch.from_numpy(rows[order[held_out:]]), torch.from_numpy(rows[np.sort(order[:held_out])])


@dataclass
class ProcessRun:
    seconds: float
    peak_mb: float
    stdout: str
    stderr: str


def run_process(args: list[str], env: dict[str, str] | None = None) -> ProcessRun:
    """Wall time from start to exit, and the child's maximum resident set size (from wait4)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        child = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {child.returncode}:\n{stderr[-3000:]}")
    return ProcessRun(seconds, usage.ru_maxrss / 1024, stdout, stderr)


def load_texts(path: Path | None, n: int, skip: int = 0) -> tuple[list[str], str]:
    """``n`` texts after the first ``skip`` of a JSON-lines file (gzipped or not), or of the built-in
    python-docs corpus when there is no such file; and the source's name."""
    if path is not None and path.exists():
        with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as handle:
            lines = itertools.islice(handle, skip, skip + n)
            return [json.loads(line)["text"] for line in lines], path.name
    from sentence_sae.data import python_docs_paragraphs

    return list(python_docs_paragraphs())[skip : skip + n], "python-docs"
