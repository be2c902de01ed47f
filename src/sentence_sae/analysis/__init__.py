"""Reading an SAE's features: ``explain`` (statistics over a corpus, labels and their scores,
families, the browser and feature map) and the questions ``compare``, ``diff``, ``hypotheses``,
``search`` and ``features`` ask of texts with them; ``FeatureRecord`` is what explain writes and the rest read.

Names load on first use, so ``features``, ``compare`` and ``search`` never import the explain
pipeline (scipy, scikit-learn) they do not run.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "explain_run": "explain",
    "FeatureRecord": "records", "read_features": "records", "feature_labels": "records",
    "top_features": "lookup",
    "compare_texts": "compare",
    "diff_run": "diff",
    "hypotheses_run": "hypotheses", "find_hypotheses": "hypotheses",
    "search_run": "search", "feature_search": "search",
    "collect_feature_stats": "features",
    "build_families": "families",
    "write_browser": "browser",
    "KeywordLabeler": "keywords",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sentence_sae.analysis' has no attribute '{name}'")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


__all__ = list(_EXPORTS)
