"""Encoder backends: throughput against fp32 PyTorch, and cosine similarity to its embeddings.

Encodes the same texts with the same batch size through each ``encode_backend`` (one warm-up call
first), in one process, and prints texts/s, the speed-up over ``torch`` (fp32) and the mean and
minimum cosine between each backend's embeddings and the fp32 ones.

    python -m benchmarks.encode_backends [--texts 3000] [--batch 32] [--data ../shared/data/wordnet_glosses.jsonl.gz]

Without --data (or when the file is missing) it uses the built-in python-docs corpus.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from sentence_sae.config import DEFAULT_MODEL  # noqa: E402
from sentence_sae.data import python_docs_paragraphs  # noqa: E402
from sentence_sae.embeddings import encode_texts, load_sentence_model  # noqa: E402

from benchmarks.common import DEFAULT_DATA  # noqa: E402


def load_texts(path: Path | None, n: int) -> tuple[list[str], str]:
    if path is not None and path.exists():
        with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as handle:
            texts = [json.loads(line)["text"] for _, line in zip(range(n), handle)]
        return texts, path.name
    return list(python_docs_paragraphs())[:n], "python-docs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--backends", nargs="*", default=["torch", "fast", "int8"])
    args = parser.parse_args()
    texts, source = load_texts(args.data, args.texts)
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
        from sentence_sae.embeddings import backend_precision

        print(f"| {backend} | {backend_precision(backend, 'cpu')} | {rate:.0f} | {rate / baseline_rate:.2f}x | "
              f"{cosine.mean():.5f} | {cosine.min():.5f} |", flush=True)


if __name__ == "__main__":
    main()
