"""Why two texts are similar: the features that account for the dot product of their reconstructions.

A reconstruction is affine in the codes: ``x_hat = sum_i u_i + c``, where ``u_i`` is feature i's
decoder row scaled by its activation (and by the text's standardization, when the SAE standardizes
its input) and ``c`` the part every text shares (``b_dec``, and the text's mean). The dot product of
two reconstructions is then a sum of pair terms ``u_a,i . u_b,j`` (plus terms with ``c``).

Attribution rule: a pair term of one feature with itself goes to that feature; a pair term between
two different parts (features i and j, or a feature and the offset) is split equally between them.
Feature i's share is therefore ``(u_a,i . x_hat_b + u_b,i . x_hat_a) / 2``, and the shares of all
features plus the offset's share sum to ``x_hat_a . x_hat_b`` exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import ConfigError, check_positive
from ..runs import open_run
from ..sae import BaseSAE, eval_mode
from .records import feature_labels

EXPLAINED_SHARE = 0.9
"""``features_for_90pct`` counts the largest shares needed to reach this part of the features' total."""


class SimilarityShares(NamedTuple):
    """The dot product of two reconstructions, split over features (float64)."""

    features: np.ndarray  # ids of features active in either text
    shares: np.ndarray  # each one's share of the dot product, same order
    offset_share: float  # the share of the part every reconstruction has (b_dec, the text's mean)
    dot: float  # x_hat_a . x_hat_b
    norm_a: float  # |x_hat_a|
    norm_b: float
    activations_a: np.ndarray  # the features' activations on each text
    activations_b: np.ndarray


def _parts(sae: BaseSAE, codes: torch.Tensor, stats: Any, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(terms u_i of ``features`` [n, d_in], offset c [d_in]) of one text's codes, in float64."""
    offset = sae.postprocess_output(sae.decode(torch.zeros_like(codes)[None]), stats)[0].double()
    rows = torch.zeros(len(features), sae.d_sae, dtype=codes.dtype, device=codes.device)
    rows[torch.arange(len(features)), features] = codes[features]
    return sae.postprocess_output(sae.decode(rows), stats).double() - offset, offset


@torch.no_grad()
def similarity_shares(sae: BaseSAE, embedding_a: torch.Tensor, embedding_b: torch.Tensor) -> SimilarityShares:
    """Split the dot product of the reconstructions of two embeddings over the SAE's features."""
    with eval_mode(sae):
        x_in, stats = sae.preprocess_input(torch.stack([embedding_a, embedding_b]).to(sae.device))
        codes = sae.activate(sae.pre_activations(x_in))
        features = (codes > 0).any(0).nonzero().flatten()
        (terms_a, offset_a), (terms_b, offset_b) = (
            _parts(sae, codes[side], None if stats is None else tuple(s[side : side + 1] for s in stats), features)
            for side in (0, 1))
    recon_a, recon_b = terms_a.sum(0) + offset_a, terms_b.sum(0) + offset_b
    shares = (terms_a @ recon_b + terms_b @ recon_a) / 2
    offset_share = float((offset_a @ recon_b + offset_b @ recon_a) / 2)
    acts = codes[:, features].double().cpu().numpy()
    return SimilarityShares(features.cpu().numpy(), shares.cpu().numpy(), offset_share, float(recon_a @ recon_b),
                            float(recon_a.norm()), float(recon_b.norm()), acts[0], acts[1])


def features_for_share(shares: np.ndarray, part: float = EXPLAINED_SHARE) -> int | None:
    """How many of the largest shares reach ``part`` of their total; None when the total is not positive."""
    total = float(shares.sum())
    if total <= 0:
        return None
    cumulative = np.cumsum(np.sort(shares)[::-1])
    return int(np.searchsorted(cumulative, part * total - 1e-12 * abs(total)) + 1)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double()[None], b.double()[None])[0])


def compare_texts(run_dir: str | Path, text_a: str, text_b: str, top: int = 10, device: str | None = None,
                  model: Any = None) -> dict[str, Any]:
    """The cosine of two texts' embeddings and of their reconstructions, and the features behind it."""
    for name, text in (("first", text_a), ("second", text_b)):
        if not text.strip():
            raise ConfigError(f"the {name} text is empty or only spaces; give two texts to compare")
    check_positive("top", top)
    run = open_run(run_dir, device, model)
    embeddings = run.encode([text_a, text_b]).to(run.sae.device)
    result = similarity_shares(run.sae, embeddings[0], embeddings[1])
    scale = result.norm_a * result.norm_b
    labels = feature_labels(run.folder)
    order = np.argsort(-result.shares)
    rows = [{"id": int(result.features[i]), "label": labels.get(int(result.features[i]), ""),
             "activation_a": float(result.activations_a[i]), "activation_b": float(result.activations_b[i]),
             "share": float(result.shares[i]), "cosine_share": float(result.shares[i] / scale),
             "fraction": float(result.shares[i] / result.dot) if result.dot else 0.0}
            for i in order[:top]]
    return {
        "text_a": text_a, "text_b": text_b,
        "cosine": _cosine(embeddings[0], embeddings[1]),
        "cosine_reconstructed": result.dot / scale if scale else 0.0,
        "dot_reconstructed": result.dot,
        "offset_share": result.offset_share,
        "active_features": len(result.features),
        "features_for_90pct": features_for_share(result.shares),
        "features": rows,
        **({} if labels else {"note": "no labels yet: run 'sentence-sae explain' on this run first"}),
    }


def compare_table(result: dict[str, Any]) -> str:
    """The terminal form of :func:`compare_texts`' result."""
    lines = [f"cosine {result['cosine']:.4f}   reconstructed {result['cosine_reconstructed']:.4f}   "
             f"{result['features_for_90pct'] or '-'} of {result['active_features']} active features give 90% "
             f"of the features' part; the offset (b_dec) gives {result['offset_share'] / result['dot_reconstructed']:.1%}"
             if result["dot_reconstructed"] else "the reconstructions are orthogonal",
             f"{'feature':>8} {'act a':>7} {'act b':>7} {'cos share':>9} {'of dot':>7}  label"]
    for row in result["features"]:
        lines.append(f"#{row['id']:<7} {row['activation_a']:7.3f} {row['activation_b']:7.3f} "
                     f"{row['cosine_share']:9.4f} {row['fraction']:7.1%}  {row['label']}")
    return "\n".join(lines)
