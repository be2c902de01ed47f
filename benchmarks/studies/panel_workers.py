"""Decision: the panel trains its runs in worker processes, not in threads of one process.

Does the panel train faster in worker processes than in threads of one process?

Trains the same runs of one panel point twice, --workers at a time on one torch thread each: in
threads of this process (the panel's way before), then in worker processes (its way now); prints
both wall times, their ratio, and whether every run gave the same numbers both ways.

    python -m benchmarks.studies.panel_workers                    # WordNet 5,000 (../shared/data), defaults
    python -m benchmarks.studies.panel_workers --corpus python-docs
"""

from __future__ import annotations

import argparse
import os
import time


from benchmarks import panel  # noqa: E402

RUNS = ("grid topk b16 lr0.003", "grid batchtopk b16 lr0.003", "topk L0 32", "matryoshka L0 32", "jumprelu L0 16",
        "gated L0 16")
"""The panel's costliest kind of run (batch 16) and default runs of four variants."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default="wordnet-5k", choices=list(panel.CORPORA))
    parser.add_argument("--budget", default="defaults", choices=list(panel.budgets()))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    path, size = panel.CORPORA[args.corpus]
    training, held_out = panel.split(panel.corpus_embeddings(path, "fast"), size)
    settings = dict(panel.runs_for_point(False, len(training)))
    jobs = [{"corpus": args.corpus, "budget": args.budget, "run": run, "training": training, "held_out": held_out,
             "settings": {**panel.budgets()[args.budget], **settings[run]}} for run in RUNS]
    seconds, results = {}, {}
    for pool in ("thread", "process"):
        started = time.perf_counter()
        results[pool] = panel.run_all(jobs, args.workers, None, pool=pool)
        seconds[pool] = time.perf_counter() - started
    same = all((a["fvu"], a["l0"]) == (b["fvu"], b["l0"]) for a, b in zip(results["thread"], results["process"]))
    print(f"\n{len(jobs)} runs of {args.corpus} {args.budget}, {args.workers} at a time:")
    print(f"threads of one process: {seconds['thread']:.1f} s")
    print(f"worker processes:       {seconds['process']:.1f} s")
    print(f"ratio (threads / processes): {seconds['thread'] / seconds['process']:.2f}; "
          f"same FVU and L0 in every run: {same}")


if __name__ == "__main__":
    main()
