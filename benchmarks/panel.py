"""The recipe panel: do the defaults give good SAEs on every corpus and budget?

Corpora: python-docs (the built-in corpus), Debian package descriptions at 5,000, 20,000 and all,
WordNet glosses at 5,000, 20,000 and all (../shared/data). Each corpus is embedded once into the
sentence-sae cache (--encode_backend fast by default); 2,000 random texts of it (an eighth of
python-docs) are held out and never trained on, and every number is measured on them.

Budgets: one pass over the training texts, and the defaults (num_examples 100,000, at most
max_epochs passes). At every corpus x budget point:
- all six variants with defaults at L0 16 and 32 (top_k for the k-based ones, target_l0 for the
  others: one knob), dict_size 1,536;
- the earlier script's settings (TopK, lr 3e-4, batch 1,024 or less, no schedules);
- a tuned reference: the best of batch 16, 64, 256 x lr 1e-3, 3e-3 for topk and batchtopk at L0 32.
Criteria: defaults within 3% of the tuned reference
and below the earlier script's settings; held-out L0 within 10% of top_k for batchtopk and
matryoshka (15% for the coefficient variants, and topk is exact by construction).

    python -m benchmarks.panel --quick   # python-docs, Debian 5k and WordNet 5k
    python -m benchmarks.panel           # everything (a long run on 2 cores)
    python -m benchmarks.panel --embed_only   # fill the embedding cache only, timing each corpus

Runs train --workers at a time (default: one per core), each in a worker process on one torch
thread. --resume keeps the runs the log already holds, so a stopped panel continues, and the
tuned grid (whose settings the defaults do not touch) need not be trained again after a change to
the recipe.

It prints one JSON line per run (appended to --log), then the table and the criteria that failed,
and draws held-out FVU per point into --plot.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sentence_sae import EmbeddingStore, SAEConfig, create_sae, embed, load_embeddings  # noqa: E402
from sentence_sae.cache import default_cache_root  # noqa: E402
from sentence_sae.recipe import batch_size_for  # noqa: E402
from sentence_sae.steering import l0_tolerance  # noqa: E402
from sentence_sae.trainer import Trainer  # noqa: E402

from benchmarks.common import SHARED  # noqa: E402
CORPORA = {
    "python-docs": ("python-docs", None),
    "debian-5k": (str(SHARED / "debian_descriptions.jsonl.gz"), 5_000),
    "debian-20k": (str(SHARED / "debian_descriptions.jsonl.gz"), 20_000),
    "debian-all": (str(SHARED / "debian_descriptions.jsonl.gz"), None),
    "wordnet-5k": (str(SHARED / "wordnet_glosses.jsonl.gz"), 5_000),
    "wordnet-20k": (str(SHARED / "wordnet_glosses.jsonl.gz"), 20_000),
    "wordnet-all": (str(SHARED / "wordnet_glosses.jsonl.gz"), None),
}
QUICK = ("python-docs", "debian-5k", "wordnet-5k")
VARIANTS = ("topk", "batchtopk", "matryoshka", "vanilla", "jumprelu", "gated")
K_BASED = ("topk", "batchtopk", "matryoshka")
EARLIER_SCRIPT = {"sae_type": "topk", "lr": 3e-4, "input_unit_norm": True, "b_dec_init": "zeros", "lr_warmup_steps": 0,
                  "lr_decay_frac": 0.0, "dead_feature_window": 5 * 1024, "max_grad_norm": 1e5,
                  "top_k_warmup_frac": 0.0, "top_k": 32}
GRID = [(batch, lr) for batch in (16, 64, 256) for lr in (1e-3, 3e-3)]
DEFAULT_EXAMPLES = SAEConfig().num_examples


def corpus_embeddings(path: str, backend: str) -> np.ndarray:
    """The whole corpus's embeddings, from the cache (encoded on first use)."""
    info = embed({"dataset_path": path, "num_examples": None, "encode_backend": backend, "wandb_mode": "disabled"})
    return np.asarray(load_embeddings(info["cache_dir"]))


def split(embeddings: np.ndarray, size: int | None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, held-out): held-out 2,000 random rows (an eighth of a small corpus), training the
    first ``size`` of the rest in a random order."""
    order = np.random.default_rng(seed).permutation(len(embeddings))
    held = min(2_000, len(embeddings) // 8)
    training = order[held:] if size is None else order[held : held + size]
    return torch.from_numpy(embeddings[training]), torch.from_numpy(embeddings[np.sort(order[:held])])


def train_one(training: torch.Tensor, held_out: torch.Tensor, settings: dict) -> dict:
    """``settings`` are config keys, and ``encoder_init_scale`` (an experiment, not a config key):
    W_enc set to that times W_dec^T right after initialization, whatever the architecture's own scale."""
    settings = dict(settings)
    encoder_init_scale = settings.pop("encoder_init_scale", None)
    cfg = SAEConfig(**{"act_size": training.shape[1], "device": "cpu", "wandb_mode": "disabled", "perf_log_freq": 0,
                       "checkpoint_freq": 0, "output_dir": tempfile.mkdtemp(prefix="panel-"), "num_eval_examples": 0,
                       "dict_size": 1536, **settings})
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    sae = create_sae(cfg)
    if encoder_init_scale is not None:
        with torch.no_grad():
            sae.W_enc.copy_(sae.W_dec.t() * encoder_init_scale)
    result = Trainer(sae, EmbeddingStore(training, cfg, held_out=held_out), cfg).train()
    metrics = result.metrics
    return {"fvu": round(metrics["fvu"], 4), "l0": round(metrics["l0"], 2), "dead": round(metrics["dead_frac"], 3),
            "train_fvu": round(metrics.get("train_fvu", float("nan")), 4),
            "val_fvu": round(metrics.get("val_fvu", float("nan")), 4), "examples": result.examples,
            "steps": result.steps, "seconds": round(time.perf_counter() - started, 1)}


def budgets() -> dict[str, dict]:
    return {"one pass": {"num_examples": None, "num_epochs": 1}, "defaults": {"num_examples": DEFAULT_EXAMPLES}}


def runs_for_point(wide: bool, n_train: int) -> list[tuple[str, dict]]:
    """(row name, settings) of one corpus x budget point."""
    runs = []
    earlier_batch = min(1024, 2 ** int(math.log2(max(16, n_train // 16))))  # 1,024, or less on small corpora
    for l0 in (16, 32):
        for variant in VARIANTS:
            runs.append((f"{variant} L0 {l0}", {"sae_type": variant, "top_k": l0}))
            if wide and l0 == 32:
                runs.append((f"{variant} L0 32 8xd", {"sae_type": variant, "top_k": 32, "dict_size": 8 * 384}))
    runs.append(("earlier script", {**EARLIER_SCRIPT, "batch_size": earlier_batch}))
    for variant in ("topk", "batchtopk"):
        for batch, lr in GRID:
            runs.append((f"grid {variant} b{batch} lr{lr:g}", {"sae_type": variant, "top_k": 32, "batch_size": batch,
                                                                "lr": lr}))
    return runs


def estimated_cost(settings: dict, n_train: int) -> float:
    """A run's relative training time (steps x a step's cost at its batch and width), to start the
    longest runs first and keep every worker busy to the end."""
    examples = settings.get("num_examples") or n_train
    examples = min(examples, SAEConfig().max_epochs * n_train)
    batch = settings.get("batch_size") or batch_size_for(examples, n_train)
    return examples / batch * (1 + batch / 160) * settings.get("dict_size", 1536) / 1536


def _train_job(job: dict) -> dict:
    row = {key: job[key] for key in ("corpus", "budget", "run")}
    return {**row, "n_train": len(job["training"]), **train_one(job["training"], job["held_out"], job["settings"])}


def _one_thread() -> None:
    torch.set_num_threads(1)


def run_all(jobs: list[dict], workers: int, log: str | None, pool: str = "process") -> list[dict]:
    """Train every job, ``workers`` at a time, each on one torch thread; returns the rows in the jobs'
    order, each also appended to ``log`` when given. ``pool`` "process" trains each in a worker process; "thread" in threads of this process,
    where the Python half of every small step waits for the GIL (``benchmarks/studies/panel_workers.py``)."""
    rows: dict[int, dict] = {}
    order = sorted(range(len(jobs)), key=lambda i: -estimated_cost(jobs[i]["settings"], len(jobs[i]["training"])))
    if pool == "process":
        executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread)
    else:
        _one_thread()
        executor = ThreadPoolExecutor(workers)
    with executor:
        futures = {executor.submit(_train_job, jobs[index]): index for index in order}
        for future in as_completed(futures):
            row = rows[futures[future]] = future.result()
            print(json.dumps(row), flush=True)
            if log:
                with open(log, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
    return [rows[index] for index in range(len(jobs))]


def check(rows: list[dict]) -> list[str]:
    """The criteria that failed, one line each."""
    failures = []
    points = sorted({(r["corpus"], r["budget"]) for r in rows})
    for corpus, budget in points:
        at = {r["run"]: r for r in rows if r["corpus"] == corpus and r["budget"] == budget}
        for variant in ("topk", "batchtopk"):
            tuned = min((r["fvu"] for name, r in at.items() if name.startswith(f"grid {variant} ")), default=None)
            mine = at.get(f"{variant} L0 32")
            if tuned is not None and mine is not None and mine["fvu"] > 1.03 * tuned:
                failures.append(f"{corpus} {budget}: {variant} FVU {mine['fvu']} > 1.03 x tuned {tuned}")
            earlier = at.get("earlier script")
            if earlier is not None and mine is not None and mine["fvu"] >= earlier["fvu"]:
                failures.append(f"{corpus} {budget}: {variant} FVU {mine['fvu']} not below the earlier script's "
                                f"{earlier['fvu']}")
        for name, r in at.items():
            if name.startswith("grid") or name == "earlier script":
                continue
            variant, target = name.split()[0], int(name.split()[2])
            tolerance = l0_tolerance(variant in K_BASED)
            if abs(r["l0"] - target) > tolerance * target:
                failures.append(f"{corpus} {budget}: {name} held-out L0 {r['l0']} outside {target} +- "
                                f"{tolerance:.0%}")
    return failures


def table(rows: list[dict]) -> str:
    points = sorted({(r["corpus"], r["budget"]) for r in rows}, key=lambda p: (list(CORPORA).index(p[0]), p[1]))
    names = list(dict.fromkeys(r["run"] for r in rows))
    lines = ["| run | " + " | ".join(f"{c} {b}" for c, b in points) + " |", "|---|" + "---|" * len(points)]
    for name in names:
        cells = []
        for corpus, budget in points:
            match = [r for r in rows if r["run"] == name and r["corpus"] == corpus and r["budget"] == budget]
            cells.append(f"{match[0]['fvu']:.4f} / {match[0]['l0']:.1f}" if match else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted({(r["corpus"], r["budget"]) for r in rows}, key=lambda p: (list(CORPORA).index(p[0]), p[1]))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(points)), 4.5))
    for name, marker in (("topk L0 32", "o"), ("batchtopk L0 32", "s"), ("earlier script", "x")):
        ys = [next((r["fvu"] for r in rows if r["run"] == name and (r["corpus"], r["budget"]) == p), np.nan)
              for p in points]
        ax.plot(range(len(points)), ys, marker=marker, linestyle="", label=f"{name} (defaults)"
                if name != "earlier script" else name)
    tuned = [min((r["fvu"] for r in rows if r["run"].startswith("grid") and (r["corpus"], r["budget"]) == p),
                 default=np.nan) for p in points]
    ax.plot(range(len(points)), tuned, marker="_", markersize=20, linestyle="", color="k", label="tuned reference")
    ax.set_xticks(range(len(points)), [f"{c}\n{b}" for c, b in points], fontsize=7)
    ax.set_ylabel("held-out FVU (lower is better)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)  # below: never over a point
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="python-docs, Debian 5k and WordNet 5k only")
    parser.add_argument("--corpora", default=None, help="comma-separated corpus names (default: all, or --quick's)")
    parser.add_argument("--encode_backend", default="fast")
    parser.add_argument("--log", default=str(Path(tempfile.gettempdir()) / "panel.jsonl"))
    parser.add_argument("--plot", default=str(Path(__file__).with_name("panel.png")))
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs --log already holds (same corpus, budget and run) instead of training "
                             "them again; only for a log written by the same code and defaults")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="runs trained at once, each on one thread (default: one per core)")
    parser.add_argument("--embed_only", action="store_true",
                        help="fill the embedding cache for the corpora, print how long each took, and train nothing")
    args = parser.parse_args()
    names = args.corpora.split(",") if args.corpora else (QUICK if args.quick else list(CORPORA))
    missing = [name for name in names if name != "python-docs" and not Path(CORPORA[name][0]).exists()]
    if missing:
        sys.exit(f"panel: the data of {', '.join(missing)} is not at {SHARED}; give --corpora without them")
    print(f"embedding cache: {default_cache_root()}", file=sys.stderr)
    jobs, embedded = [], {}
    for name in names:
        path, size = CORPORA[name]
        started = time.perf_counter()
        embeddings = corpus_embeddings(path, args.encode_backend)
        if path not in embedded:  # the 5k and 20k corpora are slices of the whole corpus's cache
            embedded[path] = time.perf_counter() - started
            print(f"{Path(path).name}: {len(embeddings):,} embeddings in {embedded[path]:.1f} s", file=sys.stderr)
        if args.embed_only:
            continue
        training, held_out = split(embeddings, size)
        wide = size is None and name != "python-docs" and not args.quick
        for budget, settings in budgets().items():
            for run, extra in runs_for_point(wide, len(training)):
                jobs.append({"corpus": name, "budget": budget, "run": run, "training": training,
                             "held_out": held_out, "settings": {**settings, **extra}})
    if args.embed_only:
        print(f"{len(embedded)} corpora embedded or read from the cache in {sum(embedded.values()) / 60:.1f} minutes")
        return
    done = {}
    if args.resume and Path(args.log).exists():
        done = {(r["corpus"], r["budget"], r["run"]): r for r in map(json.loads, Path(args.log).read_text().splitlines())}
    todo = [job for job in jobs if (job["corpus"], job["budget"], job["run"]) not in done]
    started = time.perf_counter()
    trained = iter(run_all(todo, args.workers, args.log))
    rows = [done.get((job["corpus"], job["budget"], job["run"])) or next(trained) for job in jobs]
    print(f"\n{len(todo)} runs in {(time.perf_counter() - started) / 60:.1f} minutes of training "
          f"({args.workers} at a time)" + (f"; {len(jobs) - len(todo)} kept from {args.log}" if done else ""))
    print("\nheld-out FVU / held-out L0\n")
    print(table(rows))
    failures = check(rows)
    print(f"\n{len(failures)} criteria failed" + (":\n- " + "\n- ".join(failures) if failures else ""))
    plot(rows, Path(args.plot))
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
