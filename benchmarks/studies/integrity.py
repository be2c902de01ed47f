"""Decision: every cache shard's SHA-256 is checked the first time a process reads it (`cache.py`): it costs under 2% of a cached run.

What checking cache shards costs: hashing every shard of a cached corpus once (what a process
does the first time it reads them), against a cached training run on that corpus, timed in the same
run of this script.

    python -m benchmarks.studies.integrity [--data ../shared/data/wordnet_glosses.jsonl.gz] [--num_examples 100000]

The corpus is encoded into the cache first if it is not there yet (not timed).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from sentence_sae import embed, train  # noqa: E402
from sentence_sae.cache import MANIFEST, EmbeddingCache  # noqa: E402
from sentence_sae.files import sha256_file  # noqa: E402

from benchmarks.common import DEFAULT_DATA  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--num_examples", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("/tmp/sentence-sae-integrity"))
    args = parser.parse_args()
    cache_dir = embed({"dataset_path": str(args.data), "num_examples": None, "wandb_mode": "disabled"})["cache_dir"]
    cache = EmbeddingCache(Path(cache_dir), None, 0)
    started = time.perf_counter()
    for shard in cache.shards:
        assert sha256_file(Path(cache_dir) / shard["file"]) == shard["sha256"], shard["file"]
    hashing = time.perf_counter() - started
    size = sum((Path(cache_dir) / shard["file"]).stat().st_size for shard in cache.shards) / 2**20
    started = time.perf_counter()
    result = train({"dataset_path": str(args.data), "num_examples": args.num_examples, "wandb_mode": "disabled",
                    "output_dir": str(args.out), "perf_log_freq": 0, "checkpoint_freq": 0})
    training = time.perf_counter() - started
    print(f"cache {cache_dir} ({len(cache.shards)} shards, {cache.rows} rows, {size:.0f} MB; {MANIFEST} checked on open)")
    print(f"hashing every shard once: {hashing:.2f} s; cached training run ({args.num_examples} examples, "
          f"defaults, shards checked as read): {training:.1f} s, FVU {result.metrics['fvu']:.4f}")
    print(f"cost of the checks: {hashing / training:.1%} of the training run")


if __name__ == "__main__":
    main()
