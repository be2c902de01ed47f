"""How cost grows with the corpus and the dictionary: time per 10,000 training examples and peak memory.

1. rows: the default SAE (batchtopk, 1,536 features, k 32) trained for the same number of examples
   from embedding caches of 10k, 100k, 1M and 4M rows. Memory must not grow with the rows beyond
   the shuffle buffer: the cache is memory-mapped and read one chunk at a time.
2. dictionary: 1,536 to 65,536 features at k 32 and 64, from the 1M-row cache.
3. explain: the default SAE (trained on the last 17,659 WordNet glosses) explains the first 3,000,
   30,000 and 100,000 glosses with its default options, their embeddings already cached, so the
   time is explain's own work; a whole `sentence-sae explain --num_examples N` process each.

Each point is a whole child process (its peak resident memory from wait4); the time per 10,000
examples is the training loop's time in its metrics.jsonl (`phase/train_s` plus `phase/data_wait_s`,
the wait for the cache's chunks), so start-up and evaluation do not blur it. The caches hold synthetic embeddings (unit vectors from a mixture of Gaussians,
384-d, float32), written once under the cache root's `benchmarks/cost_growth` folder (6 GB in all).
Batch size and learning rate are fixed, so the recipe (which follows the run's size) does not move
them between points.

    python -m benchmarks.cost_growth [--parts 123] [--examples 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402

from sentence_sae.cache import EmbeddingCache, load_embeddings  # noqa: E402
from sentence_sae.config import default_cache_root  # noqa: E402

from benchmarks.common import SHARED, run_process, whole_embeddings  # noqa: E402

ROWS = (10_000, 100_000, 1_000_000, 4_000_000)
DICT_SIZES = (1_536, 6_144, 24_576, 65_536)
TOP_KS = (32, 64)
WIDTH, CENTRES, BATCH, LR = 384, 256, 1_024, 1e-3
ENV = {"TQDM_DISABLE": "1", "WANDB_MODE": "disabled"}
EXPLAIN_TEXTS = (3_000, 30_000, 100_000)
EXPLAIN_TRAINED_FROM = 100_000
"""The explain part's SAE trains on the glosses from this row on; the texts explained come before it."""


def synthetic_cache(rows: int) -> Path:
    """A complete cache folder of ``rows`` synthetic embeddings (made on first use)."""
    folder = default_cache_root() / "benchmarks" / "cost_growth" / f"rows-{rows}"
    if (folder / "manifest.json").exists() and len(load_embeddings(folder)) == rows:
        return folder
    shutil.rmtree(folder, ignore_errors=True)  # a cache cut short by an interrupted run
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CENTRES, WIDTH)).astype(np.float32)
    cache = EmbeddingCache(folder, None, WIDTH)
    cache.acquire_writer()
    for start in range(0, rows, 65_536):
        count = min(65_536, rows - start)
        block = centres[rng.integers(0, CENTRES, count)] + 0.5 * rng.standard_normal((count, WIDTH), dtype=np.float32)
        cache.append(block / np.linalg.norm(block, axis=1, keepdims=True))
    cache.mark_complete(0)
    cache.close()
    return folder


CHILD = """
import json, sys
from sentence_sae import EmbeddingStore, SAEConfig, create_sae, load_embeddings
from sentence_sae.finalize import post_init_cfg
from sentence_sae.trainer import Trainer
folder, dict_size, top_k, examples, out, batch, lr = sys.argv[1:]
cfg = post_init_cfg(SAEConfig().replace(dict_size=int(dict_size), top_k=int(top_k), num_examples=int(examples),
                    batch_size=int(batch), lr=float(lr), output_dir=out, wandb_mode="disabled", perf_log_freq=0,
                    checkpoint_freq=0), embedding_width=384)
run_dir = Trainer(create_sae(cfg), EmbeddingStore(load_embeddings(folder), cfg), cfg).train().run_dir
print(json.dumps(json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])))
"""


def point(folder: Path, dict_size: int, top_k: int, examples: int, out: Path) -> tuple[float, float]:
    """(seconds per 10,000 training examples, peak resident MB) of one training process."""
    run = run_process([sys.executable, "-c", CHILD, str(folder), str(dict_size), str(top_k), str(examples),
                       str(out), str(BATCH), str(LR)], ENV)
    final = json.loads(run.stdout.strip().splitlines()[-1])
    seconds = final["phase/train_s"] + final["phase/data_wait_s"]
    return seconds / (final["step"] * BATCH) * 10_000, run.peak_mb


def rows_part(examples: int, out: Path, repeats: int = 2) -> None:
    print(f"1. rows: batchtopk, 1,536 features, k 32, {examples:,} examples, batch {BATCH}; "
          f"{repeats} runs per size, the sizes alternating")
    runs: dict[int, list[tuple[float, float]]] = {rows: [] for rows in ROWS}
    for _ in range(repeats):
        for rows in ROWS:
            runs[rows].append(point(synthetic_cache(rows), 1_536, 32, examples, out))
    print("| cache rows | s per 10k examples (fastest) | peak memory MB (each run) |")
    print("|---|---|---|")
    for rows, points in runs.items():
        print(f"| {rows:,} | {min(p[0] for p in points):.2f} | {' / '.join(f'{p[1]:.0f}' for p in points)} |")
    highest = {rows: max(p[1] for p in points) for rows, points in runs.items()}
    print(f"highest peak memory at {ROWS[-1]:,} rows / at {ROWS[0]:,} rows: {highest[ROWS[-1]] / highest[ROWS[0]]:.2f}x")


def dict_part(examples: int, out: Path) -> None:
    folder = synthetic_cache(1_000_000)
    print(f"\n2. dictionary: batchtopk from the 1,000,000-row cache, {examples:,} examples, batch {BATCH}")
    print("| features | k | s per 10k examples | peak memory MB |")
    print("|---|---|---|---|")
    base = None
    for dict_size in DICT_SIZES:
        for top_k in TOP_KS:
            seconds, peak = point(folder, dict_size, top_k, examples, out)
            base = base or seconds
            print(f"| {dict_size:,} | {top_k} | {seconds:.2f} ({seconds / base:.1f}x) | {peak:.0f} |", flush=True)


def explain_part(out: Path) -> None:
    import torch

    from sentence_sae import EmbeddingStore, SAEConfig, create_sae, post_init_cfg
    from sentence_sae.trainer import Trainer

    path = SHARED / "wordnet_glosses.jsonl.gz"
    if not path.exists():
        sys.exit(f"cost_growth: {path} is missing")
    embeddings = torch.from_numpy(np.asarray(whole_embeddings(path)))
    cfg = post_init_cfg(SAEConfig().replace(dataset_path=str(path), num_eval_examples=0, perf_log_freq=0,
                                            checkpoint_freq=0, wandb_mode="disabled", output_dir=str(out)),
                        embedding_width=embeddings.shape[1])
    torch.manual_seed(0)
    run_dir = Trainer(create_sae(cfg), EmbeddingStore(embeddings[EXPLAIN_TRAINED_FROM:], cfg), cfg).train().run_dir
    print(f"\n3. explain: the default SAE ({cfg.dict_size:,} features, trained on WordNet rows "
          f"{EXPLAIN_TRAINED_FROM:,} on), default options, the texts' embeddings cached")
    print("| texts | whole process s | explain s | s per 10k texts | peak memory MB |")
    print("|---|---|---|---|---|")
    for texts in EXPLAIN_TEXTS:
        run = run_process([sys.executable, "-m", "sentence_sae", "explain", str(run_dir), "--dataset_path", str(path),
                           "--num_examples", str(texts)], ENV)
        summary = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"| {texts:,} | {run.seconds:.0f} | {summary['seconds']:.0f} | {summary['seconds_per_10k_texts']:.1f} | "
              f"{run.peak_mb:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="123")
    parser.add_argument("--examples", type=int, default=200_000, help="training examples per point (rows part)")
    parser.add_argument("--dict_examples", type=int, default=50_000, help="training examples per dictionary point")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if "1" in args.parts:
            rows_part(args.examples, Path(tmp))
        if "2" in args.parts:
            dict_part(args.dict_examples, Path(tmp))
        if "3" in args.parts:
            explain_part(Path(tmp))


if __name__ == "__main__":
    main()
