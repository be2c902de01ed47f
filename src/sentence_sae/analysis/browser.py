"""A static feature browser that opens from disk with no server.

``browser/index.html`` lists every feature (id, label, density, activation) with a search box
(keyword or id) and sorting; ``browser/features/f<id>.html`` is one page per feature: label, density,
an activation histogram, the top texts with their activations drawn as bars, examples from lower
quantiles, and co-activating features and family links. The index carries its data inline (no
fetch, which browsers forbid on file:// pages).
"""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path
from typing import Any

from .records import Coactivation, Family, FeatureRecord, TextExample

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:60rem;color:#222;padding:0 1rem}
h1{font-size:1.4rem} a{color:#1f5a96;text-decoration:none} a:hover{text-decoration:underline}
table{border-collapse:collapse;width:100%} th,td{padding:.3rem .5rem;border-bottom:1px solid #e4e4e4;text-align:left}
th{background:#f4f6f8} td.num{text-align:right;font-variant-numeric:tabular-nums}
.controls{display:flex;gap:1rem;margin:1rem 0} input[type=search]{flex:1;padding:.4rem;font-size:1rem}
.text{margin:.35rem 0;display:flex;gap:.6rem;align-items:center}
.track{width:12rem;flex:none} .bar{background:#d9e6f5;height:1.1rem;position:relative}
.bar span{position:absolute;left:.3rem;font-size:.75rem;line-height:1.1rem;color:#123}
mark.word{color:inherit;border-radius:2px;padding:0 1px}
.meta{color:#666;font-size:.9rem} .label{font-weight:600} .dead{color:#a33}
"""


def page(title: str, body: str) -> str:
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def inline_json(value: Any) -> str:
    """JSON to put inside a <script> element: compact, and unable to close the element early."""
    return json.dumps(value, separators=(",", ":")).replace("</", "<\\/")


def feature_file(feature_id: int) -> str:
    return f"f{feature_id:05d}.html"


def file_stem(name: str, fallback: str) -> str:
    """A file-name-safe stem for a dataset (its last path part) or a column name, at most 60 characters."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name if "/" in name else name).strip("_")[:60] or fallback


def q_text(q: float) -> str:
    return f"{q:.1e}" if q > 0 else "&lt;1e-300"  # below the smallest double: the test's normal tail underflows


def clip_text(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


def examples_html(examples: list[dict[str, Any]]) -> str:
    """Example texts of a report (diff, hypotheses), each with its activation, clipped."""
    return "".join(f"<div class='text'><span class='meta'>{e['activation']:.2f}</span> {html.escape(clip_text(e['text']))}"
                   "</div>" for e in examples) or "<p class='meta'>does not fire here</p>"


def _histogram_svg(counts: list[int], max_act: float) -> str:
    if not counts or max(counts) == 0:
        return ""
    width, height, n = 480, 120, len(counts)
    peak = max(counts)
    bars = "".join(
        f"<rect x='{i * width / n:.1f}' y='{height - c / peak * height:.1f}' width='{width / n - 1:.1f}' "
        f"height='{c / peak * height:.1f}' fill='#3b6ea5'><title>{c} texts</title></rect>"
        for i, c in enumerate(counts))
    return (f"<svg class='histogram' width='{width}' height='{height + 16}' role='img' "
            f"aria-label='activation histogram'>{bars}<text x='0' y='{height + 13}' font-size='11'>0</text>"
            f"<text x='{width}' y='{height + 13}' font-size='11' text-anchor='end'>{max_act:.3g}</text></svg>")


def _highlighted(text: str, words: list[list[float]], scale: float) -> str:
    """The text with each word's background showing its contribution: orange drives the feature,
    blue holds it back; the strongest word of the feature's texts is fully colored."""
    out, position = [], 0
    for start, end, contribution in words:
        start, end = int(start), int(end)
        alpha = min(abs(contribution) / scale, 1.0) if scale > 0 else 0.0
        color = "230,120,20" if contribution > 0 else "40,130,200"
        out.append(html.escape(text[position:start]) + f"<mark class='word' style='background:rgba({color},{alpha:.2f})' "
                   f"title='{contribution:+.3f}'>{html.escape(text[start:end])}</mark>")
        position = end
    return "".join(out) + html.escape(text[position:])


def _texts_html(items: list[TextExample], max_act: float, css: str = "top") -> str:
    rows = []
    scale = max((abs(c) for item in items for _, _, c in item.words or []), default=0.0)
    for item in items:
        share = item.activation / max_act if max_act > 0 else 0
        prefix = f"{int(item.quantile * 100)}% down: " if item.quantile is not None else ""
        body = (html.escape(prefix) + _highlighted(item.text, item.words, scale) if item.words
                else html.escape(prefix + item.text))
        # a fixed-width track, so that every text starts at the same place whatever its bar's length
        rows.append(f"<div class='text {css}'><div class='track'><div class='bar' style='width:{max(share * 12, 0.2):.2f}rem'>"
                    f"<span>{item.activation:.3f}</span></div></div><div>{body}</div></div>")
    return "\n".join(rows)


def _coactivating_links(features: list[Coactivation], label_of: dict[int, str]) -> str:
    if not features:
        return "<p class='meta'>none</p>"
    return "<ul>" + "".join(
        f"<li><a class='coactivation' href='{feature_file(f.id)}'>#{f.id}</a> "
        f"{html.escape(label_of.get(f.id, ''))} <span class='meta'>p {f.p:.2f}</span></li>"
        for f in features) + "</ul>"


def feature_page(feature: FeatureRecord, label_of: dict[int, str]) -> str:
    fid = feature.id
    label = feature.label or "(no label)"
    parts = ["<p><a href='../index.html'>&larr; all features</a></p>",
             f"<h1>Feature #{fid}: <span class='label'>{html.escape(label)}</span></h1>"]
    if feature.dead:
        parts.append(f"<p class='dead'>Dead: never fires on the {feature.n_texts} texts explained.</p>")
        return page(f"Feature {fid}", "\n".join(parts))
    parts.append(f"<p class='meta'>density {feature.density:.4%} ({feature.count} of {feature.n_texts} texts) "
                 f"&middot; mean activation {feature.mean_act:.3f} &middot; max {feature.max_act:.3f}</p>")
    if feature.label_score is not None:
        parts.append(f"<p class='meta label-score'>label score {feature.label_score:.2f} (embedding) &middot; "
                     f"{feature.label_score_lexical:.2f} (lexical): AUROC of the label picking out texts the "
                     "feature fires on among texts it does not, on texts not used to make the label; 0.5 is chance</p>")
    parts.append("<h2>Activations</h2>" + _histogram_svg(feature.histogram, feature.max_act))
    note = ("<p class='meta highlight-note'>Words colored by how much the activation drops when the word is "
            "removed (orange) or rises (blue); hover a word for the change.</p>"
            if any(item.words for item in feature.top_texts) else "")
    parts.append("<h2>Top texts</h2>" + note + _texts_html(feature.top_texts, feature.max_act))
    if feature.quantile_texts:
        parts.append("<h2>Lower activations</h2>" + _texts_html(feature.quantile_texts, feature.max_act, "quantile"))
    parts.append("<h2>Co-activating features</h2><p class='meta'>P(other fires | this fires)</p>"
                 + _coactivating_links(feature.coactivating, label_of))
    family = feature.family or Family(None)
    if family.parent is not None:
        parts.append(f"<h2>Family</h2><p>Parent: <a class='parent' href='{feature_file(family.parent)}'>"
                     f"#{family.parent}</a> {html.escape(label_of.get(family.parent, ''))}</p>")
    if family.children:
        parts.append("<h2>Children</h2><ul>" + "".join(
            f"<li><a href='{feature_file(c)}'>#{c}</a> {html.escape(label_of.get(c, ''))}</li>"
            for c in family.children) + "</ul>")
    return page(f"Feature {fid}: {label}", "\n".join(parts))


INDEX_SCRIPT = """
const rows = FEATURES;
const tbody = document.getElementById('features');
const search = document.getElementById('search');
const sort = document.getElementById('sort');
const count = document.getElementById('count');
function render() {
  const q = search.value.trim().toLowerCase();
  let shown = rows.filter(f => !q || String(f.id) === q.replace('#', '') || f.label.toLowerCase().includes(q));
  const key = sort.value;
  shown = shown.slice().sort((a, b) => key === 'id' ? a.id - b.id : (b[key] ?? -1) - (a[key] ?? -1));
  tbody.innerHTML = shown.map(f => `<tr class="feature-row"><td class="num"><a href="features/${f.file}">#${f.id}</a></td>` +
    `<td><a href="features/${f.file}">${escapeHtml(f.label || (f.dead ? '(dead)' : '(no label)'))}</a></td>` +
    `<td class="num">${(100 * f.density).toFixed(3)}%</td><td class="num">${f.max_act.toFixed(3)}</td>` +
    `<td class="num score">${f.label_score === null ? '' : f.label_score.toFixed(2)}</td></tr>`).join('');
  count.textContent = `${shown.length} of ${rows.length} features`;
}
function escapeHtml(s) { return s.replace(/[&<>"']/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c])); }
search.addEventListener('input', render);
sort.addEventListener('change', render);
render();
"""


def index_page(features: list[FeatureRecord], title: str, pages: dict[str, str] | None = None) -> str:
    data = [{"id": f.id, "label": f.label, "density": f.density, "max_act": f.max_act,
             "dead": f.dead, "file": feature_file(f.id), "label_score": f.label_score} for f in features]
    payload = inline_json(data)
    links = " &middot; ".join(f"<a class='page-link' href='{name}'>{html.escape(Path(name).stem)}</a>" for name in pages or {})
    body = f"""<h1>{html.escape(title)}</h1>{f"<p>{links}</p>" if links else ""}
<div class="controls"><input id="search" type="search" placeholder="search a keyword or #id" aria-label="search">
<label>sort by <select id="sort"><option value="density">density</option><option value="max_act">activation</option>
<option value="label_score">label score</option><option value="id">id</option></select></label></div>
<p class="meta" id="count"></p>
<table><thead><tr><th>id</th><th>label</th><th>density</th><th>max activation</th>
<th title="how well the label alone picks out texts the feature fires on (AUROC, unseen texts; 0.5 is chance)">label score</th></tr></thead>
<tbody id="features"></tbody></table>
<script>const FEATURES = {payload};</script>
<script>{INDEX_SCRIPT}</script>"""
    return page(title, body)


def write_browser(folder: Path, features: list[FeatureRecord], title: str, pages: dict[str, str] | None = None) -> Path:
    """Write the site into ``folder`` (replacing an earlier one) and return its index page; ``pages``
    (file name -> HTML) are written beside the index and linked from it."""
    staging = folder.with_name(folder.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "features").mkdir(parents=True)
    label_of = {f.id: f.label for f in features}
    for feature in features:
        (staging / "features" / feature_file(feature.id)).write_text(feature_page(feature, label_of))
    for name, text in (pages or {}).items():
        (staging / name).write_text(text)
    (staging / "index.html").write_text(index_page(features, title, pages))
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return folder / "index.html"
