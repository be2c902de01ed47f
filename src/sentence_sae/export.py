"""A trained SAE as a sentence-transformers ``SparseEncoder``: the run's Sentence-BERT model followed by
a ``SparseAutoEncoder`` module (the CSR architecture) holding the SAE's encoder, so that
``SparseEncoder(folder).encode(texts)`` returns the SAE's codes and works with the sparse search
helpers of sentence-transformers.

Only ``topk`` maps exactly: the module subtracts a pre-bias (``b_dec``), applies one linear map with a
latent bias (``W_enc``, ``b_enc``), keeps the k largest values and applies ReLU, after the same input
standardization as ours when ``normalize`` is on. The module's decoder is tied to its encoder by
design, so reconstructions come from the SAE itself (``load_sae``), not from the exported folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_sae
from .embeddings import resolve_model_path
from .errors import ConfigError, ModelError, first_line

REFUSED = {
    "batchtopk": "it keeps the activations above a threshold at inference (a different number per text), "
                 "which the module's per-text top-k cannot express",
    "matryoshka": "it keeps the activations above a threshold at inference (a different number per text), "
                  "which the module's per-text top-k cannot express",
    "jumprelu": "its per-feature thresholds have no place in the module (top-k of a ReLU only)",
    "gated": "its separate gate and magnitude paths have no place in the module (top-k of a ReLU only)",
    "vanilla": "a ReLU without top-k would need k = dict_size in the module, which is not the same sparsity",
}


def export_sparse_encoder(run_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Write ``out``: a folder that ``sentence_transformers.SparseEncoder(out)`` loads offline."""
    from sentence_transformers import SentenceTransformer, SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SparseAutoEncoder

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; give a new folder to export into")
    sae = load_sae(run_dir)
    cfg = sae.cfg
    if sae.architecture in REFUSED:
        raise ConfigError(f"a {sae.architecture} SAE cannot be exported as a SparseEncoder: {REFUSED[sae.architecture]}; "
                          "train --sae_type topk for one")
    try:
        backbone = SentenceTransformer(resolve_model_path(cfg.model_name), device="cpu")
    except Exception as exc:  # the same failures as at training time, named the same way
        raise ModelError(f"could not load the run's model '{cfg.model_name}' ({first_line(exc)})") from None
    module = SparseAutoEncoder(input_dim=sae.d_in, hidden_dim=sae.d_sae, k=cfg.top_k, k_aux=cfg.top_k_aux,
                               normalize=sae.input_unit_norm)
    with torch.no_grad():
        module.pre_bias.copy_(sae.b_dec.float().cpu())
        module.encoder.weight.copy_(sae.W_enc.t().float().cpu())
        module.latent_bias.copy_(sae.b_enc.float().cpu())
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    SparseEncoder(modules=[*backbone._modules.values(), module], device="cpu").save(str(staging))
    if out.exists():
        out.rmdir()
    staging.rename(out)
    return {"sparse_encoder": str(out), "architecture": sae.architecture, "features": sae.d_sae, "k": cfg.top_k,
            "normalize": sae.input_unit_norm, "model": cfg.model_name}
