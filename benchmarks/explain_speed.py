"""How long does `explain` take at the sizes users run?

Large cases, each against its budget on this machine: a 12,288-feature SAE (batchtopk, k 32) trained
on the first 100,000 WordNet glosses and explained on the other 17,659; a 1,536-feature SAE trained on
40,315 Debian descriptions and explained on the other 20,000 (seeded random split). `explain` runs
once, with word highlighting; the time without it is the total less the highlighting phase, which
nothing else waits on. Budgets: 10 minutes without highlighting, 20 with it.

The minute cases (`debian-3k`, `wordnet-3k`): the default SAE (1,536 features, every option at its
default) explains 3,000 texts it never trained on, with its default options, as a whole
`sentence-sae explain` process: first with the texts not yet encoded (cold), then again with their
embeddings cached. Debian: trained on 19,304 of the first 22,304 descriptions, the other 3,000 (seeded
random) explained; WordNet: trained on the first 100,000 glosses, the next 3,000 explained. Budget: 60 s.
Before and after them it prints how fast this machine encodes (fp32 torch, 1,000 Debian descriptions
no case reads): a 60 s budget means something only beside the speed of the 2 cores it was met on.

    python -m benchmarks.explain_speed [--cases wordnet,debian,debian-3k,wordnet-3k]
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import first_rows, load_texts, run_process, whole_embeddings  # noqa: E402
from benchmarks.labels import BACKEND, SHARED, held_out_file  # noqa: E402

from sentence_sae import SAEConfig, create_sae, embed, load_embeddings, post_init_cfg  # noqa: E402
from sentence_sae.activation_store import EmbeddingStore  # noqa: E402
from sentence_sae.analysis import explain_run  # noqa: E402
from sentence_sae.embeddings import encode_texts, load_sentence_model  # noqa: E402
from sentence_sae.trainer import Trainer  # noqa: E402

CASES = {  # name: (data file, features, held-out texts)
    "wordnet": ("wordnet_glosses.jsonl.gz", 12_288, 17_659),
    "debian": ("debian_descriptions.jsonl.gz", 1_536, 20_000),
}
BUDGET_S, BUDGET_HIGHLIGHT_S = 600, 1200
MINUTE_CASES = ("debian-3k", "wordnet-3k")
MINUTE_TEXTS, MINUTE_BUDGET_S = 3_000, 60


def minute_case(name: str, folder: Path) -> str:
    """One minute case's table row: explain as a whole process, cold and then cached."""
    file = "debian_descriptions.jsonl.gz" if name.startswith("debian") else "wordnet_glosses.jsonl.gz"
    path = SHARED / file
    if not path.exists():
        sys.exit(f"explain_speed: {path} is missing")
    if name.startswith("debian"):
        n = 22_304
        embeddings = torch.from_numpy(first_rows(path, n))
        order = np.random.default_rng(0).permutation(n)
        train_rows, held_rows = np.sort(order[MINUTE_TEXTS:]), np.sort(order[:MINUTE_TEXTS])
    else:
        embeddings = torch.from_numpy(np.asarray(whole_embeddings(path)))
        train_rows, held_rows = np.arange(100_000), np.arange(100_000, 100_000 + MINUTE_TEXTS)
    lines = gzip.open(path, "rt").readlines()
    held_path = folder / f"{name}-texts.jsonl"
    held_path.write_text("".join(lines[r] for r in held_rows))
    cfg = post_init_cfg(SAEConfig().replace(dataset_path=str(path), num_eval_examples=0, perf_log_freq=0,
                                            checkpoint_freq=0, wandb_mode="disabled",
                                            output_dir=str(folder / "runs")), embedding_width=embeddings.shape[1])
    torch.manual_seed(0)
    run_dir = Trainer(create_sae(cfg), EmbeddingStore(embeddings[train_rows], cfg), cfg).train().run_dir
    command = [sys.executable, "-m", "sentence_sae", "explain", str(run_dir), "--dataset_path", str(held_path)]
    cold, cached = run_process(command), run_process(command)
    return (f"| {name}: 1,536 features, default options | {MINUTE_TEXTS:,} | {cold.seconds:.0f} s cold, "
            f"{cached.seconds:.0f} s cached | {cold.seconds / MINUTE_BUDGET_S:.2f} / {cached.seconds / MINUTE_BUDGET_S:.2f} |")


def machine_speed() -> str:
    """fp32 torch texts/s on 1,000 Debian descriptions past the first 40,000 (none of the cases' texts)."""
    texts, _ = load_texts(SHARED / "debian_descriptions.jsonl.gz", 1_000, skip=40_000)
    model = load_sentence_model(SAEConfig().model_name, "cpu", "torch")
    encode_texts(model, texts[:64])  # warm-up
    started = time.perf_counter()
    encode_texts(model, texts)
    return f"this machine encodes {len(texts) / (time.perf_counter() - started):.0f} texts/s (fp32 torch, batch 32)"


def split(path: Path, held: int) -> tuple[np.ndarray, np.ndarray]:
    n = sum(1 for _ in gzip.open(path, "rt"))
    if path.name.startswith("wordnet"):  # its lines are already in a random order
        return np.arange(n - held), np.arange(n - held, n)
    order = np.random.default_rng(0).permutation(n)
    return np.sort(order[held:]), np.sort(order[:held])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="wordnet,debian,debian-3k,wordnet-3k")
    args = parser.parse_args()
    model = load_sentence_model(SAEConfig().model_name, "cpu", BACKEND)
    table = ["| case | texts | live features | explain (no highlighting) | with highlighting | budget ratio |",
             "|---|---|---|---|---|---|"]
    minute = ["| case | texts | explain, whole process | budget ratio |", "|---|---|---|---|"]
    speeds = [machine_speed()] if any(name in MINUTE_CASES for name in args.cases.split(",")) else []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.cases.split(","):
            if name in MINUTE_CASES:
                minute.append(minute_case(name, Path(folder)))
                print(minute[-1], flush=True)
                continue
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
    if len(table) > 2:
        print("\n".join(table))
        print("budget ratio: time / 600 s without highlighting, time / 1,200 s with it (below 1 is within budget)")
    if len(minute) > 2:
        print("\n".join(minute))
        print(f"budget ratio: time / {MINUTE_BUDGET_S} s, cold / cached (below 1 is within budget)")
        print(f"before: {speeds[0]}; after: {machine_speed()}")


if __name__ == "__main__":
    main()
