"""1 process against 2 torchrun processes (gloo, CPU) on the same cached data.

Trains the same default (BatchTopK) SAE (dict_size 3,072, k 32, batch 256 in all, 300,000 examples) on WordNet
definitions from a complete embedding cache, once in one process and once with
`torchrun --nproc_per_node 2`, and prints whole-process seconds, examples/s and held-out FVU.

    python -m benchmarks.ddp [--data ../shared/data/wordnet_glosses.jsonl.gz]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path

from benchmarks.common import run_process  # noqa: E402
from benchmarks.common import DEFAULT_DATA  # noqa: E402

ENV = {"TQDM_DISABLE": "1", "WANDB_MODE": "disabled"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--examples", type=int, default=300_000)
    args = parser.parse_args()
    source = str(args.data) if args.data.exists() else "python-docs"
    run_process([sys.executable, "-m", "sentence_sae", "embed", "--dataset_path", source, "--num_examples", "none"], ENV)
    train = ["train", "--dataset_path", source, "--num_examples", str(args.examples), "--dict_size", "3072",
             "--top_k", "32", "--batch_size", "256", "--num_eval_examples", "5000", "--output_dir", "/tmp/ddp-bench",
             "--checkpoint_freq", "0"]
    print(f"{args.examples} examples of {Path(source).name}, BatchTopK 384 -> 3072, k 32, batch 256 in all")
    results = {}
    for n in (1, 2):
        launcher = [sys.executable, "-m", "sentence_sae"] if n == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), "-m", "sentence_sae"]
        run = run_process([*launcher, *train], ENV)
        summary = json.loads([line for line in run.stdout.splitlines() if line.startswith("{")][-1])
        results[n] = (run, summary)
        print(f"  {n} process(es): {run.seconds:.1f} s whole process, {summary['examples'] / run.seconds:.0f} "
              f"examples/s, training loop {summary['seconds']:.1f} s, held-out FVU {summary['fvu']:.4f}, "
              f"L0 {summary['l0']:.1f}, peak memory {run.peak_mb:.0f} MB (launcher)", flush=True)
    (one, s1), (two, s2) = results[1], results[2]
    print(f"  throughput 2 / 1 processes: {one.seconds / two.seconds:.2f}x; FVU difference {s2['fvu'] - s1['fvu']:+.4f}")


if __name__ == "__main__":
    main()
