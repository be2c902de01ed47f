"""A map of the features, laid out by how they fire on the corpus, drawn on one canvas in the browser
(``browser/map.html``) so that it stays smooth with tens of thousands of features.

Two features are near when they fire on the same kinds of text and when the texts each fires on mean
the same: their similarity is the mean of (1) the cosine between their activation profiles over the
texts' dominant features (each text counts toward its strongest feature: the SAE's own clustering of
the corpus, so two features that fire on different but like texts still meet, where co-activation on
the very same texts would miss them) and (2) the cosine between the activation-weighted centroids of
the embeddings of their texts, less the corpus mean (where in embedding space each fires). A feature
firing on fewer than MIN_FIRINGS texts is placed by its decoder direction instead of a centroid.
t-SNE (scikit-learn) on each feature's nearest neighbours by that similarity gives the 2-D layout; decoder directions alone place related
features no nearer than unrelated ones (``benchmarks/feature_map.py``).

Each live feature is a point colored by the root of its family tree and sized by its density; hovering
shows its label, clicking opens its page, and the search box highlights the features whose label
matches. The page carries its data inline, so it opens from disk with no server.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from .browser import feature_file, inline_json, page
from .features import FeatureStats
from .records import FeatureRecord

MIN_FIRINGS = 5
"""A feature firing on fewer texts is placed by its decoder direction: too few texts say where it fires."""
PERPLEXITY = 30.0
"""t-SNE's perplexity: about how many neighbours shape each feature's place."""
TSNE_ITERATIONS = 500
"""t-SNE's iterations (scikit-learn's default is 1,000): half the work at the same structure score on
Debian and WordNet (``benchmarks/feature_map.py``: 0.325 and 0.444 at 500, 0.325 and 0.445 with
``--tsne_iterations 1000``)."""
NEIGHBOUR_BLOCK = 2048
"""Features whose similarities to every other feature are held at once while finding neighbours."""


def place_vectors(stats: FeatureStats, decoder: np.ndarray, live: np.ndarray) -> np.ndarray:
    """[live, d_in] unit vectors of where each live feature fires: its centroid less the corpus mean
    (every embedding shares that direction, which would make all centroids alike), or its decoder
    direction when it fires on fewer than MIN_FIRINGS texts."""
    activation = (stats.mean_act * stats.counts)[live, None]
    centred = stats.centroids[live] - activation * stats.mean_embedding[None, :]
    vectors = np.where((stats.counts[live] >= MIN_FIRINGS)[:, None], centred, decoder[live])
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def dominant_profiles(stats: FeatureStats, live: np.ndarray) -> Any:
    """[live, live] sparse unit rows: each live feature's activation summed over the texts whose
    strongest live feature is each other one (texts where no live feature fires count nowhere)."""
    from scipy import sparse

    codes = sparse.csc_matrix((stats.sorted_values, stats.sorted_rows, stats.starts),
                              shape=(stats.n_texts, len(stats.counts)))[:, live].tocsr()
    fired = np.diff(codes.indptr) > 0
    strongest = np.asarray(codes.argmax(axis=1)).ravel()[fired]
    cluster = sparse.csr_matrix((np.ones(len(strongest), np.float32), (np.flatnonzero(fired), strongest)),
                                shape=(stats.n_texts, len(live)))
    profiles = (codes.T @ cluster).tocsr()
    norms = np.sqrt(np.asarray(profiles.multiply(profiles).sum(1))).ravel()
    return (sparse.diags(1 / np.maximum(norms, 1e-12)) @ profiles).tocsr().astype(np.float32)


def nearest_features(stats: FeatureStats, decoder: np.ndarray, live: np.ndarray, k: int,
                     block: int = NEIGHBOUR_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Each live feature's ``k`` nearest live features (positions in ``live``) and their distances
    (1 - similarity, see the module), nearest first; computed ``block`` features at a time, never
    [live, live] at once."""
    profiles = dominant_profiles(stats, live)
    columns = profiles.T.tocsc()
    places = place_vectors(stats, decoder, live)
    indices, distances = [], []
    for start in range(0, len(live), block):
        stop = min(start + block, len(live))
        similarity = 0.5 * (places[start:stop] @ places.T) + 0.5 * (profiles[start:stop] @ columns).toarray()
        similarity[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(similarity, nearest, 1), axis=1, kind="stable")
        nearest = np.take_along_axis(nearest, order, 1)
        indices.append(nearest)
        distances.append(np.clip(1 - np.take_along_axis(similarity, nearest, 1), 1e-6, 2))
    return np.concatenate(indices), np.concatenate(distances)


def map_layout(stats: FeatureStats, decoder: np.ndarray, live: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D coordinates [live, 2], scaled to [0, 1], of the live features (see the module)."""
    import warnings

    from scipy import sparse
    from sklearn.manifold import TSNE

    n = len(live)
    if n < 5:
        return np.full((n, 2), 0.5)
    perplexity = min(PERPLEXITY, (n - 3) / 3)
    k = min(n - 1, int(3 * perplexity) + 2)  # t-SNE reads 3 x perplexity + 1 neighbours besides the point itself
    indices, distances = nearest_features(stats, decoder, live, k)
    graph = sparse.csr_matrix((distances.ravel(), indices.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
    with warnings.catch_warnings():  # the neighbours are given, so t-SNE's warning about a non-metric graph is moot
        warnings.simplefilter("ignore")
        coords = TSNE(perplexity=perplexity, metric="precomputed", init="random", max_iter=TSNE_ITERATIONS,
                      random_state=seed).fit_transform(graph)
    coords = coords - coords.min(0)
    return coords / np.maximum(coords.max(0), 1e-12)


def structure_score(coords: np.ndarray, dominant: np.ndarray, k: int = 10, among: np.ndarray | None = None) -> float:
    """The share of each point's ``k`` nearest points on the map (Euclidean) whose ``dominant`` label
    equals its own, over all points (or those where ``among`` is true): how well the map keeps like
    with like."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(coords) - 1)
    if k < 1:
        return float("nan")
    nearest = NearestNeighbors(n_neighbors=k + 1).fit(coords).kneighbors(coords, return_distance=False)[:, 1:]
    same = dominant[nearest] == dominant[:, None]
    return float(same.mean() if among is None else same[among].mean())


def family_roots(families: dict[str, Any] | None, n: int) -> list[int]:
    """Each feature's family root (itself when it has no parent); -1 for a feature in no family."""
    parents = {int(child): int(parent) for child, parent in (families or {}).get("parents", {}).items()}
    in_family = set(parents) | set(parents.values())
    roots = []
    for feature in range(n):
        if feature not in in_family:
            roots.append(-1)
            continue
        root, seen = feature, set()
        while root in parents and root not in seen:
            seen.add(root)
            root = parents[root]
        roots.append(root)
    return roots


MAP_SCRIPT = """
const D = MAP, canvas = document.getElementById('map'), ctx = canvas.getContext('2d');
const tip = document.getElementById('tip'), search = document.getElementById('search'), info = document.getElementById('count');
const N = D.id.length, CELL = 12; let W = 0, H = 0, px = new Float32Array(N), py = new Float32Array(N), grid = new Map();
let matched = null;
const maxDensity = Math.max(...D.density, 1e-12);
const radius = D.density.map(d => 1.5 + 5 * Math.sqrt(d / maxDensity));
function color(root) {
  if (root < 0) return 'rgba(140,140,140,0.55)';
  const h = (root * 137.508) % 360; return `hsla(${h},65%,45%,0.8)`;
}
function layout() {
  const rect = canvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
  W = rect.width; H = rect.height; canvas.width = W * dpr; canvas.height = H * dpr; ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  grid = new Map();
  for (let i = 0; i < N; i++) {
    px[i] = 10 + D.x[i] * (W - 20); py[i] = 10 + D.y[i] * (H - 20);
    const key = Math.floor(px[i] / CELL) + ',' + Math.floor(py[i] / CELL);
    if (!grid.has(key)) grid.set(key, []); grid.get(key).push(i);
  }
}
function draw() {
  const t0 = performance.now();
  ctx.clearRect(0, 0, W, H);
  for (let i = 0; i < N; i++) {
    ctx.globalAlpha = matched && !matched.has(i) ? 0.12 : 1;
    ctx.fillStyle = color(D.root[i]); ctx.beginPath(); ctx.arc(px[i], py[i], radius[i], 0, 6.2832); ctx.fill();
  }
  ctx.globalAlpha = 1;
  if (matched) { ctx.strokeStyle = '#111'; ctx.lineWidth = 1.5;
    matched.forEach(i => { ctx.beginPath(); ctx.arc(px[i], py[i], radius[i] + 2, 0, 6.2832); ctx.stroke(); }); }
  document.body.dataset.drawMs = (performance.now() - t0).toFixed(1);
}
function at(x, y) {
  let best = -1, bestD = 64;
  const cx = Math.floor(x / CELL), cy = Math.floor(y / CELL);
  for (let gx = cx - 1; gx <= cx + 1; gx++) for (let gy = cy - 1; gy <= cy + 1; gy++)
    for (const i of grid.get(gx + ',' + gy) || []) { const d = (px[i] - x) ** 2 + (py[i] - y) ** 2; if (d < bestD) { bestD = d; best = i; } }
  return best;
}
function position(e) { const r = canvas.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; }
canvas.addEventListener('mousemove', e => {
  const i = at(...position(e));
  if (i < 0) { tip.style.display = 'none'; canvas.style.cursor = 'default'; return; }
  tip.textContent = `#${D.id[i]} ${D.label[i] || '(no label)'}`; tip.style.display = 'block';
  tip.style.left = (e.pageX + 12) + 'px'; tip.style.top = (e.pageY + 12) + 'px'; canvas.style.cursor = 'pointer';
});
canvas.addEventListener('click', e => { const i = at(...position(e)); if (i >= 0) window.location.href = 'features/' + D.file[i]; });
search.addEventListener('input', () => {
  const q = search.value.trim().toLowerCase();
  matched = q ? new Set([...Array(N).keys()].filter(i => String(D.id[i]) === q.replace('#', '') || D.label[i].toLowerCase().includes(q))) : null;
  info.textContent = matched ? `${matched.size} of ${N} features match` : `${N} live features`;
  draw();
});
window.addEventListener('resize', () => { layout(); draw(); });
layout(); draw(); info.textContent = `${N} live features`;
if (location.hash.startsWith('#q=')) { search.value = decodeURIComponent(location.hash.slice(3)); search.dispatchEvent(new Event('input')); }
document.body.dataset.rendered = performance.now().toFixed(1);
"""


def map_page(features: list[FeatureRecord], coords: np.ndarray, roots: list[int], title: str) -> str:
    """The map page for the live features (dead ones have no direction worth placing)."""
    live = [f for f in features if not f.dead]
    data = {"id": [f.id for f in live], "label": [f.label for f in live],
            "x": [round(float(coords[f.id, 0]), 4) for f in live],
            "y": [round(float(coords[f.id, 1]), 4) for f in live],
            "density": [round(float(f.density), 6) for f in live], "root": [roots[f.id] for f in live],
            "file": [feature_file(f.id) for f in live]}
    payload = inline_json(data)
    body = f"""<p><a href='index.html'>&larr; all features</a></p><h1>{html.escape(title)}</h1>
<p class="meta">Each point is a feature; features that fire on the same kinds of text lie near each other.
Colored by family (grey: none), sized by how often it fires. Hover for its label, click to open it;
<code>map.html#q=word</code> opens the map with the word highlighted.</p>
<div class="controls"><input id="search" type="search" placeholder="highlight a keyword or #id" aria-label="search"></div>
<p class="meta" id="count"></p>
<canvas id="map" style="width:100%;height:44rem;border:1px solid #e4e4e4;display:block"></canvas>
<div id="tip" style="position:absolute;display:none;background:#fff;border:1px solid #bbb;padding:.2rem .4rem;font-size:.85rem;pointer-events:none"></div>
<script>const MAP = {payload};</script>
<script>{MAP_SCRIPT}</script>"""
    return page(title, body)
