"""How long does `explain` take at the sizes users run?

Two cases, each against its budget on this machine: a 12,288-feature SAE (batchtopk, k 32) trained on
the first 100,000 WordNet glosses and explained on the other 17,659; a 1,536-feature SAE trained on
40,315 Debian descriptions and explained on the other 20,000 (seeded random split). `explain` runs
once, with word highlighting; the time without it is the total less the highlighting phase, which
nothing else waits on. Budgets: 10 minutes without highlighting, 20 with it.

    python -m benchmarks.explain_speed [--cases wordnet,debian]
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.labels import BACKEND, SHARED, held_out_file  # noqa: E402

from sentence_sae import SAEConfig, create_sae, embed, load_embeddings, post_init_cfg  # noqa: E402
from sentence_sae.activation_store import EmbeddingStore  # noqa: E402
from sentence_sae.analysis import explain_run  # noqa: E402
from sentence_sae.embeddings import load_sentence_model  # noqa: E402
from sentence_sae.trainer import Trainer  # noqa: E402

CASES = {  # name: (data file, features, held-out texts)
    "wordnet": ("wordnet_glosses.jsonl.gz", 12_288, 17_659),
    "debian": ("debian_descriptions.jsonl.gz", 1_536, 20_000),
}
BUDGET_S, BUDGET_HIGHLIGHT_S = 600, 1200


def split(path: Path, held: int) -> tuple[np.ndarray, np.ndarray]:
    n = sum(1 for _ in gzip.open(path, "rt"))
    if path.name.startswith("wordnet"):  # its lines are already in a random order
        return np.arange(n - held), np.arange(n - held, n)
    order = np.random.default_rng(0).permutation(n)
    return np.sort(order[held:]), np.sort(order[:held])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="wordnet,debian")
    args = parser.parse_args()
    model = load_sentence_model(SAEConfig().model_name, "cpu", BACKEND)
    table = ["| case | texts | live features | explain (no highlighting) | with highlighting | budget ratio |",
             "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as folder:
        for name in args.cases.split(","):
            file, dict_size, held = CASES[name]
            path = SHARED / file
            if not path.exists():
                sys.exit(f"explain_speed: {path} is missing")
            train_rows, held_rows = split(path, held)
            info = embed({"dataset_path": str(path), "num_examples": None, "encode_backend": BACKEND, "wandb_mode": "disabled"})
            embeddings = np.asarray(load_embeddings(info["cache_dir"]))
            held_path = held_out_file(path, held_rows, embeddings, model, Path(folder))
            cfg = post_init_cfg(SAEConfig().replace(sae_type="batchtopk", dict_size=dict_size, top_k=32, num_examples=300_000,
                                                    dataset_path=str(path), encode_backend=BACKEND, num_eval_examples=0,
                                                    perf_log_freq=0, checkpoint_freq=0, wandb_mode="disabled",
                                                    output_dir=str(Path(folder) / "runs")), model)
            torch.manual_seed(0)
            run_dir = Trainer(create_sae(cfg), EmbeddingStore(torch.from_numpy(embeddings[train_rows]), cfg), cfg).train().run_dir
            summary = explain_run(run_dir, dataset_path=str(held_path), model=model, highlight=True)
            total, highlighting = summary["seconds"], summary["seconds_highlighting"]
            without = total - highlighting
            table.append(f"| {name}: {dict_size:,} features | {summary['texts']:,} | {summary['alive']:,} | {without:.0f} s "
                         f"| {total:.0f} s | {without / BUDGET_S:.2f} / {total / BUDGET_HIGHLIGHT_S:.2f} |")
            print(table[-1], flush=True)
    print("\n".join(table))
    print("budget ratio: time / 600 s without highlighting, time / 1,200 s with it (below 1 is within budget)")


if __name__ == "__main__":
    main()
