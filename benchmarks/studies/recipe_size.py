"""Decision: the batch-size rule and `max_epochs` 20 (`recipe.py`).

How the recipe's size rules were measured: batch size against the run's length, and held-out FVU
against the number of passes over a small corpus (README, "The recipe follows the run").

    python -m benchmarks.studies.recipe_size batch    # WordNet 5k and 20k texts, one pass and 100,000 examples:
                                              # batch 16 to 256 x lr 1e-3, 3e-3 (TopK, 1,536, k 32)
    python -m benchmarks.studies.recipe_size passes   # WordNet 5k, Debian 5k, python-docs: 1 to 40 passes (TopK),
                                              # WordNet 20k (BatchTopK)

Splits are benchmarks/panel.py's (held-out texts never trained on); each line is one run, and each
table row ends with its FVU relative to the best of its group, measured in the same run.
"""

from __future__ import annotations

import argparse
import json

from benchmarks.panel import CORPORA, corpus_embeddings, split, train_one

BATCH_POINTS = [("wordnet-5k", "one pass"), ("wordnet-5k", 100_000), ("wordnet-20k", "one pass"),
                ("wordnet-20k", 100_000)]
PASSES = {"wordnet-5k": ("topk", (1, 3, 10, 20, 40)), "debian-5k": ("topk", (1, 3, 10, 20, 40)),
          "python-docs": ("topk", (5, 10, 20, 40)), "wordnet-20k": ("batchtopk", (1, 5, 10, 20))}


def report(group: str, rows: list[tuple[str, dict]]) -> None:
    best = min(row["fvu"] for _, row in rows)
    for name, row in rows:
        print(f"{group:28s} {name:24s} held-out FVU {row['fvu']:.4f} ({row['fvu'] / best:.3f} x best)  "
              f"train FVU {row['train_fvu']:.4f}  steps {row['steps']}", flush=True)


def batch_study(backend: str) -> None:
    for corpus, budget in BATCH_POINTS:
        path, size = CORPORA[corpus]
        training, held_out = split(corpus_embeddings(path, backend), size)
        examples = len(training) if budget == "one pass" else budget
        rows = []
        for batch in (16, 32, 64, 128, 256):
            for lr in (1e-3, 3e-3):
                settings = {"sae_type": "topk", "top_k": 32, "batch_size": batch, "lr": lr, "num_examples": examples}
                rows.append((f"batch {batch} lr {lr:g}", train_one(training, held_out, settings)))
                print(json.dumps({"corpus": corpus, "examples": examples, **rows[-1][1], "run": rows[-1][0]}))
        report(f"{corpus} {examples} examples", rows)


def passes_study(backend: str) -> None:
    for corpus, (variant, passes) in PASSES.items():
        path, size = CORPORA[corpus]
        training, held_out = split(corpus_embeddings(path, backend), size)
        rows = []
        for count in passes:
            settings = {"sae_type": variant, "top_k": 32, "num_examples": None, "num_epochs": count}
            rows.append((f"{count} passes", train_one(training, held_out, settings)))
        report(f"{corpus} ({variant})", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", choices=("batch", "passes"))
    parser.add_argument("--encode_backend", default="torch")
    args = parser.parse_args()
    (batch_study if args.study == "batch" else passes_study)(args.encode_backend)


if __name__ == "__main__":
    main()
