"""Encoder backends: throughput against fp32 PyTorch, and cosine similarity to its embeddings.

Part 1 encodes the same texts with the same batch size through each ``encode_backend`` (one warm-up
call first), in one process, and prints texts/s, the speed-up over ``torch`` (fp32) and the mean and
minimum cosine between each backend's embeddings and the fp32 ones. Part 2 (``--processes``) times
whole ``sentence-sae embed`` processes on the same texts, each into an empty embedding cache: torch,
then the default (auto) twice, first with no exported encoder on disk (the one-off export is paid)
and then with it.

    python -m benchmarks.encode_backends [--texts 3000] [--batch 32] [--data ../shared/data/wordnet_glosses.jsonl.gz] [--skip N] [--processes]

Without --data (or when the file is missing) it uses the built-in python-docs corpus. ``--skip``
starts after the first N texts (texts a benchmark's SAE never trained on).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from sentence_sae.config import DEFAULT_MODEL  # noqa: E402
from sentence_sae.embeddings import encode_texts, encoder_backend, load_sentence_model  # noqa: E402

from benchmarks.common import DEFAULT_DATA, load_texts, run_process  # noqa: E402


def whole_processes(texts: list[str]) -> None:
    """``sentence-sae embed`` of ``texts`` as whole processes, each into an empty cache folder."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "texts.jsonl"
        data.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
        shared_root = Path(tmp) / "cache-root"  # where auto's exported encoder is kept between processes
        cases = [("torch (fp32)", "torch"), ("auto, first use (exports the encoder)", "auto"),
                 ("auto", "auto")]
        print(f"\nwhole `sentence-sae embed` processes, {len(texts)} texts, empty embedding cache each:")
        print("| backend | seconds | speed-up vs torch | chose |")
        print("|---|---|---|---|")
        baseline = None
        for index, (name, backend) in enumerate(cases):
            run = run_process(["sentence-sae", "embed", "--dataset_path", str(data), "--encode_backend", backend,
                               "--cache_dir", str(Path(tmp) / f"embeddings-{index}")],
                              env={"SENTENCE_SAE_CACHE": str(shared_root)})
            chose = json.loads(run.stdout.strip().splitlines()[-1])["encode_backend"]
            baseline = baseline or run.seconds
            print(f"| {name} | {run.seconds:.1f} | {baseline / run.seconds:.2f}x | {chose} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--skip", type=int, default=0)
    parser.add_argument("--backends", nargs="*", default=["torch", "auto", "openvino", "fast", "int8"])
    parser.add_argument("--processes", action="store_true", help="also time whole embed processes")
    args = parser.parse_args()
    texts, source = load_texts(args.data, args.texts, args.skip)
    print(f"{len(texts)} texts from {source}, batch {args.batch}, torch threads {torch.get_num_threads()}")
    reference = None
    baseline_rate = None
    print("| backend | precision | texts/s | speed-up vs torch fp32 | mean cosine | min cosine |")
    print("|---|---|---|---|---|---|")
    for backend in args.backends:
        model = load_sentence_model(DEFAULT_MODEL, "cpu", backend)
        encode_texts(model, texts[:64], args.batch)  # warm-up
        started = time.perf_counter()
        embeddings = encode_texts(model, texts, args.batch)
        rate = len(texts) / (time.perf_counter() - started)
        if reference is None:
            reference, baseline_rate = embeddings, rate
        cosine = torch.nn.functional.cosine_similarity(embeddings, reference, dim=-1)
        chosen = encoder_backend(model)
        name = f"auto ({chosen.name})" if backend == "auto" else backend
        print(f"| {name} | {chosen.precision} | {rate:.0f} | {rate / baseline_rate:.2f}x | "
              f"{cosine.mean():.5f} | {cosine.min():.5f} |", flush=True)
    if args.processes:
        whole_processes(texts)


if __name__ == "__main__":
    main()
