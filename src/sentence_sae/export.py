"""A trained SAE as a sentence-transformers ``SparseEncoder``: the run's Sentence-BERT model followed by
a module holding the SAE's encoder, so that ``SparseEncoder(folder).encode(texts)`` returns the SAE's
codes and works with the sparse search helpers of sentence-transformers.

``topk`` maps exactly onto sentence-transformers' own ``SparseAutoEncoder`` (the CSR architecture: a
pre-bias ``b_dec``, one linear map with a latent bias ``W_enc``, ``b_enc``, the k largest values,
ReLU, after the same input standardization when ``normalize`` is on), so its folder loads without
sentence-sae. Every other architecture keeps activations by a rule that module cannot express (a
threshold, per-feature thresholds, a gate, a plain ReLU) and exports through ``SAEEncoder``
(``sparse_module.py``), which applies the SAE's own ``encode``; loading that folder needs sentence-sae
installed and ``trust_remote_code=True``. Either way reconstructions come from the SAE itself (``load_sae``), not from the export.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_sae
from .embeddings import resolve_model_path
from .errors import ConfigError, ModelError, first_line


def export_sparse_encoder(run_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Write ``out``: a folder that ``sentence_transformers.SparseEncoder(out)`` loads offline."""
    from sentence_transformers import SentenceTransformer, SparseEncoder

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; give a new folder to export into")
    sae = load_sae(run_dir)
    cfg = sae.cfg
    try:
        backbone = SentenceTransformer(resolve_model_path(cfg.model_name), device="cpu")
    except Exception as exc:  # the same failures as at training time, named the same way
        raise ModelError(f"could not load the run's model '{cfg.model_name}' ({first_line(exc)})") from None
    portable = sae.architecture == "topk"  # sentence-transformers' own module computes its codes
    module = _csr_module(sae) if portable else _sae_module(sae)
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    SparseEncoder(modules=[*backbone._modules.values(), module], device="cpu").save(str(staging))
    if out.exists():
        out.rmdir()
    staging.rename(out)
    return {"sparse_encoder": str(out), "architecture": sae.architecture, "features": sae.d_sae,
            "module": type(module).__name__, "k": cfg.top_k if portable else None,
            "normalize": sae.input_unit_norm, "model": cfg.model_name,
            "needs_sentence_sae": not portable}


def _csr_module(sae: Any) -> Any:
    """A topk SAE's encoder in sentence-transformers' own module, which computes the same codes."""
    from sentence_transformers.sparse_encoder.modules import SparseAutoEncoder

    module = SparseAutoEncoder(input_dim=sae.d_in, hidden_dim=sae.d_sae, k=sae.cfg.top_k, k_aux=sae.cfg.top_k_aux,
                          normalize=sae.input_unit_norm)
    with torch.no_grad():
        module.pre_bias.copy_(sae.b_dec.float().cpu())
        module.encoder.weight.copy_(sae.W_enc.t().float().cpu())
        module.latent_bias.copy_(sae.b_enc.float().cpu())
    return module


def _sae_module(sae: Any) -> Any:
    from .sparse_module import SAEEncoder

    return SAEEncoder(sae.cpu())
