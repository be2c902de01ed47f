"""Decision: topk and batchtopk start their encoder at 0.1 x W_decᵀ (`sae/topk.py`), not at W_decᵀ.

The encoder's starting scale for topk and batchtopk: W_enc = s x W_decᵀ, s = 1 (the old start) against
the architecture's default (0.1), same split, seed and recipe otherwise, judged on held-out texts.

Points: the peer setting (40,000 WordNet glosses, 5,000 held out, 3,072 features, 200,000 examples,
fp32 embeddings) and panel points on other corpora and budgets (panel.py's split, 1,536 features,
`--encode_backend fast`). Prints held-out FVU, L0 and the share of features silent on held-out texts,
and the ratio new / old.

    python -m benchmarks.studies.encoder_init     # about 15 minutes on 2 cores
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.panel import CORPORA, budgets, corpus_embeddings, split, train_one

PANEL_POINTS = (("debian-5k", "defaults"), ("debian-20k", "defaults"), ("wordnet-20k", "one pass"),
                ("python-docs", "one pass"))


def compare(name: str, training: torch.Tensor, held_out: torch.Tensor, settings: dict) -> None:
    for variant in ("topk", "batchtopk"):
        old = train_one(training, held_out, {**settings, "sae_type": variant, "top_k": 32, "encoder_init_scale": 1.0})
        new = train_one(training, held_out, {**settings, "sae_type": variant, "top_k": 32})
        print(f"{name} {variant}: FVU {old['fvu']:.4f} -> {new['fvu']:.4f} ({new['fvu'] / old['fvu']:.3f} x), "
              f"L0 {old['l0']:.1f} -> {new['l0']:.1f}, dead {old['dead']:.3f} -> {new['dead']:.3f}", flush=True)


def main() -> None:
    embeddings = corpus_embeddings(CORPORA["wordnet-all"][0], "torch")
    order = np.random.default_rng(0).permutation(len(embeddings))
    compare("peer (wordnet 40k)", torch.from_numpy(embeddings[order[5_000:45_000]]),
            torch.from_numpy(embeddings[np.sort(order[:5_000])]), {"dict_size": 3072, "num_examples": 200_000})
    for name, budget in PANEL_POINTS:
        path, size = CORPORA[name]
        training, held_out = split(corpus_embeddings(path, "fast"), size)
        compare(f"{name} {budget}", training, held_out, budgets()[budget])


if __name__ == "__main__":
    main()
