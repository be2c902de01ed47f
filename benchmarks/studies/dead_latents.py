"""Decision: AuxK takes the dead features' raw pre-activations (`sae/base.py`), with coefficient 1
(`aux_penalty`); vanilla and gated use it too; it is weighted down by min(dead / top_k_aux, 1) while
few features are dead only where a sparsity coefficient sets L0 (vanilla, gated), not where k does.

Why features died at larger dictionaries: the AuxK loss, which should revive dead features, used
their rectified pre-activations. A feature whose pre-activation is below zero on every text has a
zero ReLU, so AuxK gave it no gradient, and those are exactly the features that stay dead (`first
recipe` rows: rectified, coefficient 1/32; vanilla and gated without AuxK). SAELens and sparsify take
the raw pre-activations, and weight them by the dead share, which starves the last few dead features.
Without the weight (`not weighted`), the variants whose k fixes L0 keep fewer features dead at the
same held-out FVU, while vanilla's FVU rises and gated loses more features, since there every
revived feature adds to L0. With ``--seeds`` every run is repeated per seed, and the mean paired
change of held-out FVU from each other row to the default is printed.

Points: the first 20,000 Debian descriptions (2,000 of them held out at random) at 6,144 features,
and 20,000 WordNet glosses (2,000 others held out) at 3,072 (8 x d); k 32, 100,000 examples, the
default recipe otherwise (seed 42). `dead` is the share of features that did not fire in the last
dead_feature_window (20,000) training examples; FVU and L0 are on the held-out texts.

    python -m benchmarks.studies.dead_latents                      # about 45 minutes on 2 cores
    python -m benchmarks.studies.dead_latents --variants batchtopk --runs weighted,not_weighted --seeds 0,1,2 --clip fixed
    python -m benchmarks.studies.dead_latents --corpora debian --variants topk,batchtopk,vanilla --runs unclipped
    python -m benchmarks.studies.dead_latents --variants topk,batchtopk --runs first,fixed_clip,default --seeds 0,1,2

Clipping the gradient norm at 1 binds at every step (norms 30-50): each step then has the same
length, and while AuxK revives dead features (steps 500-900) the reconstruction's share of that
length shrinks, which cost `topk` and `batchtopk` 0.8-0.9% held-out FVU against the first recipe
(`fixed_clip` rows). Without clipping (`unclipped`) they keep their features alive at the first
recipe's FVU, but `vanilla` falls apart (its loss changes scale as its coefficient is steered). So
`topk` and `batchtopk` clip relative to the recent norms (`relative_grad_clip`), cutting only steps
larger than usual, and the others keep the fixed clip (`relative_clip` rows: `vanilla` falls apart
as unclipped, `matryoshka` loses 3.8%).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

import sentence_sae.sae.base as sae_base
import sentence_sae.sae.topk as sae_topk
from benchmarks.common import SHARED, first_rows_split
from benchmarks.panel import train_one
from sentence_sae.sae.kernels import selection_from_topk, sparse_code

POINTS = {"debian": (SHARED / "debian_descriptions.jsonl.gz", 6144), "wordnet": (SHARED / "wordnet_glosses.jsonl.gz", 3072)}
N_TEXTS, HELD_OUT = 20_000, 2_000
VARIANTS = ("topk", "batchtopk", "matryoshka", "vanilla", "gated", "jumprelu")
NO_AUXK_BEFORE = ("vanilla", "gated")
RELATIVE_CLIP = ("topk", "batchtopk")  # the variants whose default clips relative to the recent norms


def earlier_auxk_loss(sae, x_in, x_hat, pre, dead_mask, x_cent=None, rectify=True, weighted=True):
    """AuxK, ``weighted`` by min(dead / top_k_aux, 1) or not; ``rectify``: the first recipe's, where
    dead features enter with ReLU(pre), so an all-negative one gets no gradient."""
    n_dead = 0 if dead_mask is None else int(dead_mask.sum())
    if not (n_dead > 0 and sae.cfg.aux_penalty > 0):
        return x_in.new_zeros(())
    dead = dead_mask.nonzero().squeeze(1)
    with torch.no_grad():
        top = (F.relu(pre[:, dead]) if rectify else pre[:, dead]).topk(min(sae.cfg.top_k_aux, n_dead), dim=-1,
                                                                       sorted=False).indices
    chosen = dead[top]
    if pre.requires_grad:
        weights = pre.gather(1, chosen)
        decoded = F.embedding_bag(chosen, sae.W_dec, mode="sum", per_sample_weights=F.relu(weights) if rectify else weights)
    else:
        x_cent = x_in - sae.b_dec if x_cent is None else x_cent
        decoded, _ = sparse_code(x_cent, sae.W_enc, sae.b_enc, sae.W_dec, pre, selection_from_topk(chosen), rectify)
    scale = min(n_dead / sae.cfg.top_k_aux, 1.0) if weighted else 1.0
    return sae.cfg.aux_penalty * scale * sae.reconstruction_loss(decoded, (x_in - x_hat).detach())


def weighted_auxk_loss(sae, x_in, x_hat, pre, dead_mask, x_cent=None):
    return earlier_auxk_loss(sae, x_in, x_hat, pre, dead_mask, x_cent, rectify=False)


def unweighted_auxk_loss(sae, x_in, x_hat, pre, dead_mask, x_cent=None):
    return earlier_auxk_loss(sae, x_in, x_hat, pre, dead_mask, x_cent, rectify=False, weighted=False)


@contextlib.contextmanager
def patched_auxk(loss=earlier_auxk_loss) -> Iterator[None]:
    saved = sae_base.auxk_loss, sae_topk.auxk_loss
    sae_base.auxk_loss = sae_topk.auxk_loss = loss
    try:
        yield
    finally:
        sae_base.auxk_loss, sae_topk.auxk_loss = saved


WEIGHTED, NOT_WEIGHTED = "raw, 1, weighted", "raw, 1, not weighted"


def runs_for(corpus: str, variant: str, chosen: set[str]) -> list[tuple[str, Callable, dict]]:
    """(row label, context that patches AuxK, config overrides) of one corpus and variant."""
    runs = []
    if "first" in chosen and variant in ("topk", "batchtopk"):
        runs.append(("rectified, 1/32, weighted (first recipe)", patched_auxk,
                     {"aux_penalty": 1 / 32, "relative_grad_clip": False}))
    if "first" in chosen and corpus == "debian" and variant in NO_AUXK_BEFORE:
        runs.append(("none (first recipe)", contextlib.nullcontext, {"aux_penalty": 0.0}))
    if variant == "jumprelu":
        return runs + [("none (its features do not die)", contextlib.nullcontext, {})]
    default = "weighted" if variant in NO_AUXK_BEFORE else "not_weighted"  # weighted where a coefficient sets L0
    for name, label, loss in (("weighted", WEIGHTED, weighted_auxk_loss), ("not_weighted", NOT_WEIGHTED, unweighted_auxk_loss)):
        if name in chosen or (name == default and "default" in chosen):
            runs.append((f"{label} (default)" if name == default else label,
                         contextlib.nullcontext if name == default else functools.partial(patched_auxk, loss), {}))
    if "fixed_clip" in chosen and variant in RELATIVE_CLIP:
        runs.append(("raw, 1, not weighted; clipped at norm 1", contextlib.nullcontext, {"relative_grad_clip": False}))
    if "unclipped" in chosen:
        runs.append(("default AuxK, no gradient clipping", contextlib.nullcontext, {"max_grad_norm": None}))
    if "relative_clip" in chosen and variant not in RELATIVE_CLIP:
        runs.append(("default AuxK, relative clipping", contextlib.nullcontext, {"relative_grad_clip": True}))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpora", default="debian,wordnet")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--runs", default="first,weighted,not_weighted",
                        help="which of first, weighted, not_weighted, default (whichever of the two is the default), "
                             "fixed_clip (topk, batchtopk: the default clipped at norm 1 instead of relative to the "
                             "recent norms), unclipped (the default without max_grad_norm), relative_clip (the "
                             "other variants clipped relative to the recent norms)")
    parser.add_argument("--seeds", default="42")
    parser.add_argument("--clip", choices=("default", "fixed"), default="default",
                        help="fixed: every run clips at max_grad_norm itself, as all did before relative clipping")
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    print("| corpus | features | variant | AuxK | seed | held-out FVU | L0 | dead | s |\n|---|---|---|---|---|---|---|---|---|")
    for corpus in args.corpora.split(","):
        path, width = POINTS[corpus]
        training, held_out = first_rows_split(path, N_TEXTS, HELD_OUT)
        for variant in args.variants.split(","):
            fvu: dict[str, list[float]] = {}
            for seed in seeds:
                for label, context, overrides in runs_for(corpus, variant, set(args.runs.split(","))):
                    settings = {"sae_type": variant, "top_k": 32, "dict_size": width, "num_examples": 100_000,
                                "seed": seed, **({"relative_grad_clip": False} if args.clip == "fixed" else {}),
                                **overrides}
                    with context():
                        row = train_one(training, held_out, settings)
                    fvu.setdefault(label, []).append(row["fvu"])
                    print(f"| {corpus} | {width} | {variant} | {label} | {seed} | {row['fvu']:.4f} | {row['l0']:.1f} | "
                          f"{row['dead']:.3f} | {row['seconds']:.0f} |", flush=True)
            default = next((values for label, values in fvu.items() if label.endswith("(default)")), None)
            for label, values in fvu.items():
                if len(seeds) > 1 and default is not None and values is not default:
                    change = [d / v - 1 for d, v in zip(default, values)]
                    print(f"{corpus} {variant}: held-out FVU of the default against '{label}', paired over "
                          f"{len(seeds)} seeds: mean {100 * sum(change) / len(change):+.2f}% (from "
                          f"{100 * min(change):+.2f}% to {100 * max(change):+.2f}%)", flush=True)


if __name__ == "__main__":
    main()
