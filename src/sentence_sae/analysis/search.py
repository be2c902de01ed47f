"""Search a run's corpus by meaning (nearest texts to a query, with the features they share) and by
feature (the texts where one feature fires most).

The corpus's embeddings come from the embedding cache (encoded once, on first use, when the run's
cache is not complete); the nearest-neighbour index is an exact inner-product index from ``faiss``
over unit-normalized embeddings, so the scores are cosines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import ConfigError, DataError, check_positive
from ..metrics import encode_in_batches
from ..runs import Run, open_run
from .compare import similarity_shares
from .records import feature_labels

SHARED_FEATURES = 3
"""Features shown with each match: those with the largest shares of the query-match similarity."""


class CorpusRows(NamedTuple):
    texts: list[str]
    embeddings: torch.Tensor  # [n, d_in], as stored in the cache


def read_corpus(run: Run, num_examples: int | None = None) -> CorpusRows:
    """Every text of the run's corpus (or the first ``num_examples``) with its embedding."""
    corpus = run.corpus()
    texts: list[str] = []
    chunks: list[torch.Tensor] = []
    try:
        for chunk_texts, _, embeddings in corpus.read(num_examples, "read corpus"):
            texts.extend(chunk_texts)
            chunks.append(embeddings.float().cpu())
    finally:
        corpus.close()
    if not texts:
        raise DataError(f"dataset {run.cfg.dataset_path} has no texts to search")
    return CorpusRows(texts, torch.cat(chunks))


def nearest(embeddings: torch.Tensor, queries: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(cosines, rows) of the ``k`` nearest rows of ``embeddings`` to each query, by an exact faiss index."""
    try:
        import faiss
    except ImportError:
        raise ConfigError("search needs faiss: pip install 'sentence-sae[search]' (faiss-cpu)") from None
    def unit(x: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(torch.nn.functional.normalize(x.float(), dim=-1).numpy())

    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(unit(embeddings))
    scores, rows = index.search(unit(queries), min(k, len(embeddings)))
    return scores, rows


def search_run(run_dir: str | Path, query: str, top: int = 10, num_examples: int | None = None,
               device: str | None = None, model: Any = None) -> dict[str, Any]:
    """The texts of the run's corpus nearest to ``query``, each with the features that explain the match."""
    if not query.strip():
        raise ConfigError("the query is empty or only spaces; give a text to search for, or --feature ID")
    check_positive("top", top)
    run = open_run(run_dir, device, model)
    rows = read_corpus(run, num_examples)
    query_embedding = run.encode([query]).float().cpu()
    scores, found = nearest(rows.embeddings, query_embedding, top)
    labels = feature_labels(run.folder)
    matches = []
    for score, row in zip(scores[0].tolist(), found[0].tolist()):
        shares = similarity_shares(run.sae, query_embedding[0], rows.embeddings[row])
        best = np.argsort(-shares.shares)[:SHARED_FEATURES]
        shared = [{"id": int(shares.features[i]), "label": labels.get(int(shares.features[i]), ""),
                   "share": float(shares.shares[i] / shares.dot) if shares.dot else 0.0}
                  for i in best if shares.shares[i] > 0 and shares.activations_a[i] > 0 and shares.activations_b[i] > 0]
        matches.append({"row": int(row), "cosine": float(score), "text": rows.texts[row], "features": shared})
    return {"query": query, "texts": len(rows.texts), "matches": matches}


def feature_search(run_dir: str | Path, feature: int, top: int = 10, num_examples: int | None = None,
                   device: str | None = None, model: Any = None) -> dict[str, Any]:
    """The texts of the run's corpus on which ``feature`` fires most, strongest first."""
    check_positive("top", top)
    run = open_run(run_dir, device, model)
    if not 0 <= feature < run.sae.d_sae:
        raise ConfigError(f"feature {feature} does not exist: the SAE has features 0 to {run.sae.d_sae - 1}")
    rows = read_corpus(run, num_examples)
    activations = torch.cat([encode_in_batches(run.sae, rows.embeddings[start : start + 4096])[:, feature].float().cpu()
                             for start in range(0, len(rows.embeddings), 4096)])
    values, order = activations.topk(min(top, len(activations)))
    return {"feature": feature, "label": feature_labels(run.folder).get(feature, ""), "texts": len(rows.texts),
            "fires_on": int((activations > 0).sum()),
            "matches": [{"row": int(r), "activation": float(v), "text": rows.texts[r]}
                        for v, r in zip(values.tolist(), order.tolist()) if v > 0]}
