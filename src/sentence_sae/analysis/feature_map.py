"""A map of the features: a 2-D UMAP layout of the decoder directions, drawn on one canvas in the
browser (``browser/map.html``) so that it stays smooth with tens of thousands of features.

Each live feature is a point colored by the root of its family tree and sized by its density; hovering
shows its label, clicking opens its page, and the search box highlights the features whose label
matches. The page carries its data inline, so it opens from disk with no server.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from .browser import feature_file, inline_json, page
from .records import FeatureRecord

MAP_EXTRA = "pip install 'sentence-sae[map]' (umap-learn)"
N_NEIGHBORS = 15


def umap_available() -> bool:
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


def map_layout(directions: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D coordinates [n, 2] of decoder directions [n, d] by UMAP on cosine distance, scaled to [0, 1]."""
    import warnings

    import umap

    n = len(directions)
    if n < 3:
        return np.full((n, 2), 0.5)
    with warnings.catch_warnings():  # a fixed seed makes UMAP single-threaded, and it says so; the map must repeat
        warnings.simplefilter("ignore", UserWarning)
        coords = umap.UMAP(n_neighbors=min(N_NEIGHBORS, n - 1), metric="cosine", random_state=seed,
                           init="spectral" if n > N_NEIGHBORS + 1 else "random").fit_transform(directions)
    coords = coords - coords.min(0)
    return coords / np.maximum(coords.max(0), 1e-12)


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
<p class="meta">Each point is a feature, placed by UMAP of its decoder direction, colored by family (grey: none),
sized by how often it fires. Hover for its label, click to open it.</p>
<div class="controls"><input id="search" type="search" placeholder="highlight a keyword or #id" aria-label="search"></div>
<p class="meta" id="count"></p>
<canvas id="map" style="width:100%;height:44rem;border:1px solid #e4e4e4;display:block"></canvas>
<div id="tip" style="position:absolute;display:none;background:#fff;border:1px solid #bbb;padding:.2rem .4rem;font-size:.85rem;pointer-events:none"></div>
<script>const MAP = {payload};</script>
<script>{MAP_SCRIPT}</script>"""
    return page(title, body)
