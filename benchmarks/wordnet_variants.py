"""Held-out quality of each SAE variant on WordNet definitions (issue: core figures).

Train on the first 100,000 lines of wordnet_glosses.jsonl.gz, hold out the remaining 17,659, at
dict_size 8 x 384 and (for topk / batchtopk) k = 32, for 300,000 examples seen. vanilla and jumprelu
use the sparsity coefficients given below, chosen for L0 near 32. As a baseline measured in the same
run, a TopK SAE with the earlier research script's settings (no warm-up or decay, lr 3e-4,
batch 1,024, input_unit_norm, zero-initialized decoder bias, dead after 5 batches).

    python benchmarks/wordnet_variants.py [--data ../shared/data/wordnet_glosses.jsonl.gz]

The embeddings come from the sentence-sae embedding cache (encoded on the first run, about 6
minutes on 2 cores; later runs read the cache).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

from sentence_sae import EmbeddingStore, SAEConfig, create_sae, embed, load_embeddings  # noqa: E402
from sentence_sae.training import Trainer  # noqa: E402

N_TRAIN = 100_000
EXAMPLES = 300_000

VARIANTS = {
    "vanilla": {"sae_type": "vanilla", "l1_coeff": 0.11},
    "topk": {"sae_type": "topk"},
    "batchtopk": {"sae_type": "batchtopk"},
    "jumprelu": {"sae_type": "jumprelu", "l1_coeff": 0.0025},
    "earlier-script settings (topk)": {
        "sae_type": "topk", "lr": 3e-4, "batch_size": 1024, "input_unit_norm": True, "b_dec_init": "zeros",
        "lr_warmup_steps": 0, "lr_decay_frac": 0.0, "dead_feature_window": 5 * 1024, "max_grad_norm": 1e5,
    },
}


def wordnet_embeddings(data: Path):
    summary = embed({"dataset_path": str(data), "num_examples": None, "wandb_mode": "disabled"})
    return load_embeddings(summary["cache_dir"])


def train_variant(embeddings, settings: dict, out_dir: str) -> dict:
    cfg = SAEConfig(dict_size=8 * 384, top_k=32, num_examples=EXAMPLES, num_epochs=None, perf_log_freq=0,
                    checkpoint_freq=0, wandb_mode="disabled", device="cpu", output_dir=out_dir,
                    name=settings["sae_type"], act_size=384, num_batches_in_buffer=64)
    for key, value in settings.items():
        cfg[key] = value
    store = EmbeddingStore(embeddings[:N_TRAIN], cfg, held_out=embeddings[N_TRAIN:])
    sae = create_sae(cfg)
    started = time.perf_counter()
    result = Trainer(sae, store, cfg).train()
    seconds = time.perf_counter() - started
    return {**{k: result.metrics[k] for k in ("fvu", "l0", "dead_frac", "cos")},
            "train_dead_frac": sae.num_dead_features() / sae.d_sae, "seconds": seconds,
            "examples": result.examples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/wordnet_glosses.jsonl.gz"))
    parser.add_argument("--only", nargs="*", default=None, help="variants to run")
    args = parser.parse_args()
    embeddings = wordnet_embeddings(Path(args.data))
    print(f"WordNet embeddings: {embeddings.shape}, train {N_TRAIN}, held out {len(embeddings) - N_TRAIN}")
    print("| variant | held-out FVU | L0 | dead (held-out) | dead (window) | cos | train s |")
    print("|---|---|---|---|---|---|---|")
    rows = {}
    with tempfile.TemporaryDirectory() as out_dir:
        for name, settings in VARIANTS.items():
            if args.only and name not in args.only:
                continue
            row = train_variant(embeddings, settings, out_dir)
            rows[name] = row
            print(f"| {name} | {row['fvu']:.3f} | {row['l0']:.1f} | {row['dead_frac']:.3f} | "
                  f"{row['train_dead_frac']:.3f} | {row['cos']:.3f} | {row['seconds']:.1f} |", flush=True)
    baseline = rows.get("earlier-script settings (topk)")
    if baseline and "topk" in rows:
        print(f"topk FVU / earlier-script-settings FVU: {rows['topk']['fvu'] / baseline['fvu']:.2f}")
    json.dump(rows, sys.stderr)


if __name__ == "__main__":
    main()
