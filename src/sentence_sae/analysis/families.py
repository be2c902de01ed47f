"""Feature families from co-activation.

The co-activation matrix is asymmetric: P(j fires | i fires) = co[i, j] / count[i]. A rare
feature that mostly fires together with a frequent one is a refinement of it. So edges go from the
more frequent feature (parent) to the rarer one (child), weighted by P(parent fires | child
fires). These edges form a DAG (ordered by frequency), so the maximum spanning arborescence is
exact and simple: every feature takes its strongest more-frequent parent, if that edge reaches
``min_weight``. Roots are features without such a parent; a family is the subtree of a root with
at least ``min_size`` features. Features are always named by their id, never by a position.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def parent_links(counts: np.ndarray, coactivation: np.ndarray, min_weight: float = 0.5,
                 min_count: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(parent[i] or -1, weight[i] = P(parent fires | i fires)) for every feature i."""
    d = len(counts)
    order = np.lexsort((np.arange(d), -counts))  # most frequent first, ties by id
    rank = np.empty(d, dtype=np.int64)
    rank[order] = np.arange(d)
    parent = np.zeros(d, dtype=np.int64)
    weight = np.zeros(d, dtype=np.float64)
    for start in range(0, d, 1024):  # row blocks keep the d x d temporaries small
        rows = slice(start, min(start + 1024, d))
        block = coactivation[rows].astype(np.float64)
        conditional = block / np.maximum(counts[rows, None], 1)  # row i: P(j fires | i fires)
        # Only more frequent features (lower rank) can be parents; never the feature itself.
        allowed = (rank[None, :] < rank[rows, None]) & (block >= min_count)
        weights = np.where(allowed, conditional, -1.0)
        # On equal weight the rarer parent wins: the most specific feature that contains the child.
        parent[rows] = (weights + 1e-12 * rank[None, :]).argmax(axis=1)
        weight[rows] = weights[np.arange(len(weights)), parent[rows]]
    keep = (weight >= min_weight) & (counts >= min_count)
    return np.where(keep, parent, -1), np.where(keep, weight, 0.0)


def build_families(counts: np.ndarray, coactivation: np.ndarray, labels: list[str] | None = None,
                   min_weight: float = 0.5, min_size: int = 3, min_count: int = 3) -> dict[str, Any]:
    """families.json: the parent of every feature and the families, largest first."""
    parent, weight = parent_links(counts, coactivation, min_weight, min_count)
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
    return {
        "min_weight": min_weight,
        "edge": "parent -> child, parent more frequent, weight = P(parent fires | child fires)",
        "parents": {str(child): int(par) for child, par in enumerate(parent.tolist()) if par >= 0},
        "families": families,
    }
