"""Decision: AuxK takes the dead features' raw pre-activations (`sae/base.py`), with coefficient 1
(`aux_penalty`), and vanilla and gated use it too.

Why features died at larger dictionaries: the AuxK loss, which should revive dead features, used
their rectified pre-activations. A feature whose pre-activation is below zero on every text has a
zero ReLU, so AuxK gave it no gradient, and those are exactly the features that stay dead. SAELens
and sparsify take the raw pre-activations. Each variant is trained as before (topk, batchtopk and
matryoshka with the rectified AuxK at coefficient 1/32, patched in here only; vanilla and gated
without AuxK) and with the defaults (raw AuxK at 1); topk also with the raw AuxK at 1/32, which
alone is not enough, and batchtopk with the raw AuxK at 1 not weighted down while few features are
dead (min(dead / top_k_aux, 1), kept: unweighted it costs held-out FVU). jumprelu, whose features do
not die, has no AuxK.

Points: the first 20,000 Debian descriptions (2,000 of them held out at random) at 6,144 features,
and 20,000 WordNet glosses (2,000 others held out) at 3,072 (8 x d); k 32, 100,000 examples, the
default recipe otherwise. `dead` is the share of features that did not fire in the last
dead_feature_window (20,000) training examples; FVU and L0 are on the held-out texts.

    python -m benchmarks.studies.dead_latents                      # about 28 minutes on 2 cores
    python -m benchmarks.studies.dead_latents --corpora debian --variants topk
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

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
RECTIFIED_BEFORE = ("topk", "batchtopk", "matryoshka")
NO_AUXK_BEFORE = ("vanilla", "gated")


def rectified_auxk_loss(sae, x_in, x_hat, pre, dead_mask, x_cent=None, rectify=True, weighted=True):
    """The AuxK of before: dead features enter with ReLU(pre), so an all-negative one gets no gradient.
    ``rectify=False, weighted=False``: today's AuxK without its weight min(dead / top_k_aux, 1)."""
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


def unweighted_auxk_loss(sae, x_in, x_hat, pre, dead_mask, x_cent=None):
    return rectified_auxk_loss(sae, x_in, x_hat, pre, dead_mask, x_cent, rectify=False, weighted=False)


@contextlib.contextmanager
def patched_auxk(loss=rectified_auxk_loss) -> Iterator[None]:
    saved = sae_base.auxk_loss, sae_topk.auxk_loss
    sae_base.auxk_loss = sae_topk.auxk_loss = loss
    try:
        yield
    finally:
        sae_base.auxk_loss, sae_topk.auxk_loss = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpora", default="debian,wordnet")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    print("| corpus | features | variant | AuxK | held-out FVU | L0 | dead | s |\n|---|---|---|---|---|---|---|---|")
    for corpus in args.corpora.split(","):
        path, width = POINTS[corpus]
        training, held_out = first_rows_split(path, N_TEXTS, HELD_OUT)
        for variant in args.variants.split(","):
            settings = {"sae_type": variant, "top_k": 32, "dict_size": width, "num_examples": 100_000}
            runs = []
            if variant in RECTIFIED_BEFORE:
                runs.append(("rectified, 1/32 (before)", patched_auxk, {"aux_penalty": 1 / 32}))
            if variant in NO_AUXK_BEFORE:
                runs.append(("none (before)", contextlib.nullcontext, {"aux_penalty": 0.0}))
            if variant == "topk":
                runs.append(("raw, 1/32", contextlib.nullcontext, {"aux_penalty": 1 / 32}))
            runs.append(("none" if variant == "jumprelu" else "raw, 1 (default)", contextlib.nullcontext, {}))
            if variant == "batchtopk":
                runs.append(("raw, 1, not weighted by the dead share", lambda: patched_auxk(unweighted_auxk_loss), {}))
            for label, context, overrides in runs:
                with context():
                    row = train_one(training, held_out, {**settings, **overrides})
                print(f"| {corpus} | {width} | {variant} | {label} | {row['fvu']:.4f} | {row['l0']:.1f} | "
                      f"{row['dead']:.3f} | {row['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
