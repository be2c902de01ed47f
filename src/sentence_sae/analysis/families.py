"""Feature families from co-activation.

The co-activation matrix is asymmetric: P(j fires | i fires) = co[i, j] / count[i]. A rare
feature that mostly fires together with a frequent one is a refinement of it. So edges go from the
more frequent feature (parent) to the rarer one (child), weighted by P(parent fires | child
fires). These edges form a DAG (ordered by frequency), so the maximum spanning arborescence is
exact and simple: every feature takes its strongest more-frequent parent, if that edge reaches
``min_weight``. Roots are features without such a parent; a family is the subtree of a root with
at least ``min_size`` features. Features are always named by their id, never by a position.

A feature that fires on more than MAX_PARENT_DENSITY of the texts is too general to be anyone's
parent (as in O'Neill et al. 2024, who kept families below density 0.2): without that cap the densest
features adopt most others and one family holds most of the SAE (76% of a WordNet SAE's live
features, 98% of a Debian one's, at weight 0.3). The defaults were chosen on WordNet glosses and
confirmed on Debian descriptions (`benchmarks/studies/families.py`): with them a parent and its child share
their texts' WordNet categories or Debian sections 1.5x as often as random pairs of features.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MIN_WEIGHT = 0.3
"""An edge needs P(parent fires | child fires) of at least this."""
MAX_PARENT_DENSITY = 0.1


def parent_links(counts: np.ndarray, coactivation: np.ndarray, min_weight: float = MIN_WEIGHT,
                 min_count: int = 3, n_texts: int | None = None,
                 max_parent_density: float = MAX_PARENT_DENSITY) -> tuple[np.ndarray, np.ndarray]:
    """(parent[i] or -1, weight[i] = P(parent fires | i fires)) for every feature i; with ``n_texts``,
    features firing on more than ``max_parent_density`` of them are nobody's parent."""
    d = len(counts)
    order = np.lexsort((np.arange(d), -counts))  # most frequent first, ties by id
    rank = np.empty(d, dtype=np.int64)
    rank[order] = np.arange(d)
    parent = np.zeros(d, dtype=np.int64)
    weight = np.zeros(d, dtype=np.float64)
    may_parent = np.ones(d, bool) if n_texts is None else counts <= max_parent_density * n_texts
    for start in range(0, d, 1024):  # row blocks keep the d x d temporaries small
        rows = slice(start, min(start + 1024, d))
        block = coactivation[rows].astype(np.float64)
        conditional = block / np.maximum(counts[rows, None], 1)  # row i: P(j fires | i fires)
        # Only more frequent features (lower rank) can be parents; never the feature itself.
        allowed = (rank[None, :] < rank[rows, None]) & (block >= min_count) & may_parent[None, :]
        weights = np.where(allowed, conditional, -1.0)
        # On equal weight the rarer parent wins: the most specific feature that contains the child.
        parent[rows] = (weights + 1e-12 * rank[None, :]).argmax(axis=1)
        weight[rows] = weights[np.arange(len(weights)), parent[rows]]
    keep = (weight >= min_weight) & (counts >= min_count)
    return np.where(keep, parent, -1), np.where(keep, weight, 0.0)


def build_families(counts: np.ndarray, coactivation: np.ndarray, labels: list[str] | None = None,
                   min_weight: float = MIN_WEIGHT, min_size: int = 3, min_count: int = 3, n_texts: int | None = None,
                   max_parent_density: float = MAX_PARENT_DENSITY) -> dict[str, Any]:
    """families.json: the parent of every feature, the families (largest first) and how much of the
    SAE they hold (``share_in_family`` of live features, ``max_depth`` of the trees)."""
    parent, weight = parent_links(counts, coactivation, min_weight, min_count, n_texts, max_parent_density)
    children: dict[int, list[int]] = {}
    for child, par in enumerate(parent.tolist()):
        if par >= 0:
            children.setdefault(par, []).append(child)
    families = []
    for root in np.flatnonzero((parent < 0) & (counts > 0)).tolist():
        members, stack = [], [(root, 0)]
        while stack:
            node, depth = stack.pop()
            members.append({"id": node, "parent": int(parent[node]) if node != root else None,
                            "weight": round(float(weight[node]), 4) if node != root else None, "depth": depth,
                            "density_count": int(counts[node]),
                            **({"label": labels[node]} if labels else {})})
            stack.extend((child, depth + 1) for child in sorted(children.get(node, []), key=lambda c: -counts[c]))
        if len(members) >= min_size:
            families.append({"root": root, "size": len(members), "members": members,
                             **({"label": labels[root]} if labels else {})})
    families.sort(key=lambda family: -family["size"])
    live = int((counts > 0).sum())
    return {
        "min_weight": min_weight,
        "max_parent_density": max_parent_density if n_texts is not None else None,
        "share_in_family": round(sum(f["size"] for f in families) / max(live, 1), 4),
        "largest_share": round(max((f["size"] for f in families), default=0) / max(live, 1), 4),
        "max_depth": max((m["depth"] for f in families for m in f["members"]), default=0),
        "edge": "parent -> child, parent more frequent, weight = P(parent fires | child fires)",
        "parents": {str(child): int(par) for child, par in enumerate(parent.tolist()) if par >= 0},
        "families": families,
    }
