"""Decision: a family edge needs P(parent fires | child fires) >= 0.3 and a parent firing on at most 10% of texts (`analysis/families.py`).

Do feature families group features a person would group?

The default SAE of `benchmarks/labels.py` (batchtopk, 3,072 features, k 32) is trained on each corpus
and read on its held-out texts. For each family setting (edge weight P(parent fires | child fires) >=
min_weight; parents at most max_parent_density), it prints the share of live features in a family,
the largest family's share, the depth of the trees, and how alike a parent and its child are in the
corpus's own labels (WordNet's 45 categories, Debian's 58 sections): the cosine between the label
distributions of the texts each fires on, as a ratio to the same cosine for random pairs of live
features measured in the same run. Chosen on WordNet, confirmed on Debian.

    python -m benchmarks.studies.families [--corpora wordnet,debian]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.labels import BACKEND, train_default  # noqa: E402

from sentence_sae import SAEConfig  # noqa: E402
from sentence_sae.analysis.families import MAX_PARENT_DENSITY, MIN_WEIGHT, build_families  # noqa: E402
from sentence_sae.analysis.features import collect_feature_stats  # noqa: E402
from sentence_sae.embeddings import load_sentence_model  # noqa: E402
from sentence_sae.runs import open_run  # noqa: E402

SETTINGS = [(0.5, None), (0.3, None), (0.5, 0.2), (0.3, 0.2), (0.5, MAX_PARENT_DENSITY), (MIN_WEIGHT, MAX_PARENT_DENSITY)]


def label_profiles(stats, labels: np.ndarray) -> np.ndarray:
    """Each feature's distribution over the corpus labels of the texts it fires on, as a unit vector."""
    names, codes = np.unique(labels, return_inverse=True)
    profiles = np.zeros((len(stats.counts), len(names)))
    for feature in range(len(stats.counts)):
        rows = stats.firing_rows(feature)
        if len(rows):
            profiles[feature] = np.bincount(codes[rows], minlength=len(names))
    return profiles / np.maximum(np.linalg.norm(profiles, axis=1, keepdims=True), 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", default="wordnet,debian")
    args = parser.parse_args()
    model = load_sentence_model(SAEConfig().model_name, "cpu", BACKEND)
    table = ["| corpus | min_weight | max parent density | families | live features in a family | largest family "
             "| max depth | parent-child label likeness (x random pairs) |", "|---|---|---|---|---|---|---|---|"]
    folder = tempfile.mkdtemp()
    for name in args.corpora.split(","):
        run_dir, embeddings, held_rows, path = train_default(name, Path(folder), model)
        labels = np.array([json.loads(line)["label"] for line in gzip.open(path, "rt")])[held_rows]
        sae = open_run(run_dir, "cpu", model).sae
        held = torch.from_numpy(embeddings[held_rows])
        stats = collect_feature_stats(sae, iter(held.split(4096)))
        unit = label_profiles(stats, labels)
        live = np.flatnonzero(stats.counts >= 3)
        rng = np.random.default_rng(0)
        a, b = rng.choice(live, 20_000), rng.choice(live, 20_000)
        random_likeness = float((unit[a] * unit[b]).sum(1).mean())
        for min_weight, cap in SETTINGS:
            families = build_families(stats.counts, stats.coactivation, min_weight=min_weight,
                                      n_texts=stats.n_texts if cap else None, max_parent_density=cap or 1.0)
            parents = {int(child): parent for child, parent in families["parents"].items()}
            children = np.array(list(parents), dtype=np.int64)
            likeness = float((unit[children] * unit[[parents[c] for c in children]]).sum(1).mean()) if parents else float("nan")
            table.append(f"| {name} | {min_weight} | {cap or 'none'} | {len(families['families'])} "
                         f"| {families['share_in_family']:.0%} | {families['largest_share']:.1%} | {families['max_depth']} "
                         f"| {likeness / random_likeness:.2f}x |")
            print(table[-1], flush=True)
    print("\n".join(table))


if __name__ == "__main__":
    main()
