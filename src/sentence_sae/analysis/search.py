"""Search a run's corpus by meaning (nearest texts to a query, with the features they share), steered
by features (``boost``, ``suppress``), and by feature (the texts where one feature fires most).

The corpus's embeddings come from the embedding cache (encoded once, on first use, when the run's
cache is not complete); the nearest-neighbour index is an exact inner-product index from ``faiss``
over unit-normalized embeddings, so the scores are cosines.

Steering matches in the same space, the model's embedding space, where its own similarity lives, so
an unsteered search is the plain one. The query's code is changed (a boosted feature is raised to
``weight`` x its largest activation on the corpus, a suppressed one set to 0) and the query moves by
the change times the features' decoder directions (in the SAE's input space, mapped back with the
query's own scale), keeping whatever of the query the SAE does not reconstruct. A suppressed feature
also excludes the texts it fires on: subtracting its direction from the query alone leaves texts that
carry it free to match on their other features.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import ConfigError, DataError, check_positive
from ..metrics import code_blocks
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


def check_feature(sae: Any, feature: int) -> None:
    if not 0 <= feature < sae.d_sae:
        raise ConfigError(f"feature {feature} does not exist: the SAE has features 0 to {sae.d_sae - 1}")


def feature_activations(sae: Any, embeddings: torch.Tensor, features: list[int]) -> torch.Tensor:
    """[n, len(features)] activations of some features, block by block, so that the [n, d_sae] codes of
    a whole corpus are never held at once."""
    return torch.cat([torch.zeros(0, len(features)),
                      *(codes[:, features].float().cpu() for _, codes in code_blocks(sae, embeddings))])


class Steering(NamedTuple):
    query: torch.Tensor  # [1, d_in], the steered query embedding
    excluded: np.ndarray  # bool [n]: texts a suppressed feature fires on


def steer(sae: Any, query: torch.Tensor, corpus: torch.Tensor, boost: dict[int, float],
          suppress: list[int]) -> Steering:
    """The query moved along the decoder directions of the steered features (see the module's doc)."""
    features = sorted(set(boost) | set(suppress))
    if not features:
        return Steering(query, np.zeros(len(corpus), dtype=bool))
    corpus_acts = feature_activations(sae, corpus, features)
    with torch.no_grad():
        x_in, stats = sae.preprocess_input(query.to(sae.device))
        code = sae.activate(sae.pre_activations(x_in))[0].float().cpu()
        change = torch.zeros(sae.d_sae)
        for column, feature in enumerate(features):
            if feature in suppress:
                change[feature] = -code[feature]
            else:
                change[feature] = max(boost[feature] * corpus_acts[:, column].max().item() - code[feature].item(), 0.0)
        moved = (change.to(sae.dtype).to(sae.device) @ sae.W_dec).unsqueeze(0)
        scale = stats[1] if stats is not None else 1.0
        steered = (query.to(sae.device) + moved * scale).float().cpu()
    suppressed = [features.index(f) for f in suppress]
    excluded = (corpus_acts[:, suppressed] > 0).any(1).numpy() if suppressed else np.zeros(len(corpus), dtype=bool)
    return Steering(steered, excluded)


def search_run(run_dir: str | Path, query: str, top: int = 10, num_examples: int | None = None,
               device: str | None = None, model: Any = None, boost: dict[int, float] | None = None,
               suppress: list[int] | None = None) -> dict[str, Any]:
    """The texts of the run's corpus nearest to ``query``, each with the features that explain the match;
    ``boost`` ({feature: weight}) and ``suppress`` ([feature]) steer the query first."""
    if not query.strip():
        raise ConfigError("the query is empty or only spaces; give a text to search for, or --feature ID")
    check_positive("top", top)
    boost, suppress = dict(boost or {}), list(suppress or [])
    if set(boost) & set(suppress):
        raise ConfigError(f"feature {sorted(set(boost) & set(suppress))[0]} is both boosted and suppressed; give it once")
    for feature, weight in boost.items():
        if not (math.isfinite(weight) and weight > 0):
            raise ConfigError(f"the boost weight of feature {feature} must be a positive number, got {weight}")
    run = open_run(run_dir, device, model)
    for feature in [*boost, *suppress]:
        check_feature(run.sae, feature)
    rows = read_corpus(run, num_examples)
    query_embedding = run.encode([query]).float().cpu()
    steering = steer(run.sae, query_embedding, rows.embeddings, boost, suppress)
    scores, found = nearest(rows.embeddings, steering.query, top + int(steering.excluded.sum()))
    kept = [(score, row) for score, row in zip(scores[0].tolist(), found[0].tolist()) if not steering.excluded[row]]
    labels = feature_labels(run.folder)
    matches = []
    for score, row in kept[:top]:
        shares = similarity_shares(run.sae, query_embedding[0], rows.embeddings[row])
        best = np.argsort(-shares.shares)[:SHARED_FEATURES]
        shared = [{"id": int(shares.features[i]), "label": labels.get(int(shares.features[i]), ""),
                   "share": float(shares.shares[i] / shares.dot) if shares.dot else 0.0}
                  for i in best if shares.shares[i] > 0 and shares.activations_a[i] > 0 and shares.activations_b[i] > 0]
        matches.append({"row": int(row), "cosine": float(score), "text": rows.texts[row], "features": shared})
    steered = {"boost": {str(f): w for f, w in boost.items()}, "suppress": suppress, "space": "embedding",
               "excluded_texts": int(steering.excluded.sum())} if boost or suppress else None
    return {"query": query, "texts": len(rows.texts), **({"steering": steered} if steered else {}), "matches": matches}


def feature_search(run_dir: str | Path, feature: int, top: int = 10, num_examples: int | None = None,
                   device: str | None = None, model: Any = None) -> dict[str, Any]:
    """The texts of the run's corpus on which ``feature`` fires most, strongest first."""
    check_positive("top", top)
    run = open_run(run_dir, device, model)
    check_feature(run.sae, feature)
    rows = read_corpus(run, num_examples)
    activations = feature_activations(run.sae, rows.embeddings, [feature])[:, 0]
    values, order = activations.topk(min(top, len(activations)))
    return {"feature": feature, "label": feature_labels(run.folder).get(feature, ""), "texts": len(rows.texts),
            "fires_on": int((activations > 0).sum()),
            "matches": [{"row": int(r), "activation": float(v), "text": rows.texts[r]}
                        for v, r in zip(values.tolist(), order.tolist()) if v > 0]}
