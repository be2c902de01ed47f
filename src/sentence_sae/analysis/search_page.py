"""The browser's search page (``browser/search.html``): find texts by their words among the texts the
browser shows (every feature's top texts) and see which features fire most on each.

A browser page opened from disk cannot run the model, so it cannot search by meaning; it reads an
index built by ``explain``: the distinct texts, the features each one is a top text of (with the
activation), and an inverted index from each word to the texts that contain it.
"""

from __future__ import annotations

import html
import re
from typing import Any

from .browser import feature_file, inline_json, page
from .records import FeatureRecord

WORD = re.compile(r"[a-z0-9]{2,}")


def text_index(features: list[FeatureRecord]) -> dict[str, Any]:
    """Distinct top texts, the (feature, activation) pairs of each, strongest first, and word -> texts."""
    position: dict[str, int] = {}
    texts: list[str] = []
    fired: list[list[tuple[int, float]]] = []
    for feature in features:
        for item in feature.top_texts:
            index = position.setdefault(item.text, len(texts))
            if index == len(texts):
                texts.append(item.text)
                fired.append([])
            fired[index].append((feature.id, round(item.activation, 3)))
    words: dict[str, list[int]] = {}
    for index, text in enumerate(texts):
        for word in sorted(set(WORD.findall(text.lower()))):
            words.setdefault(word, []).append(index)
    return {"texts": texts, "features": [sorted(f, key=lambda pair: -pair[1]) for f in fired], "words": words}


SEARCH_SCRIPT = """
const I = INDEX, labels = LABELS, files = FILES;
const box = document.getElementById('search'), out = document.getElementById('results'), info = document.getElementById('count');
function escapeHtml(s) { return s.replace(/[&<>"']/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c])); }
function run() {
  const words = (box.value.toLowerCase().match(/[a-z0-9]{2,}/g) || []);
  if (!words.length) { out.innerHTML = ''; info.textContent = `${I.texts.length} texts indexed`; return; }
  let hits = null;
  for (const w of words) {
    const found = new Set();
    for (const key in I.words) if (key.startsWith(w)) for (const t of I.words[key]) found.add(t);
    hits = hits === null ? found : new Set([...hits].filter(t => found.has(t)));
  }
  const ranked = [...hits].sort((a, b) => I.features[b][0][1] - I.features[a][0][1]);
  info.textContent = `${ranked.length} text${ranked.length === 1 ? '' : 's'} contain${ranked.length === 1 ? 's' : ''} ${words.map(w => w + '…').join(' and ')}`;
  out.innerHTML = ranked.slice(0, 100).map(t => `<div class="result"><div>${escapeHtml(I.texts[t])}</div>` +
    `<div class="meta">${I.features[t].slice(0, 5).map(([f, a]) =>
      `<a href="features/${files[f]}">#${f}</a> ${escapeHtml(labels[f] || '')} (${a})`).join(' &middot; ')}</div></div>`).join('');
}
box.addEventListener('input', run);
run();
"""


def search_page(features: list[dict[str, Any]], title: str) -> str:
    index = inline_json(text_index(features))
    labels = inline_json({f.id: f.label for f in features})
    files = inline_json({f.id: feature_file(f.id) for f in features})
    body = f"""<p><a href='index.html'>&larr; all features</a></p><h1>{html.escape(title)}</h1>
<p class="meta">Texts the browser shows (each feature's top texts) that contain every word you type (as a word
start), with the features that fire most on them. Search by meaning with <code>sentence-sae search RUN "query"</code>.</p>
<div class="controls"><input id="search" type="search" placeholder="words to find" aria-label="search"></div>
<p class="meta" id="count"></p><div id="results"></div>
<style>.result{{margin:.6rem 0;padding-bottom:.4rem;border-bottom:1px solid #eee}}</style>
<script>const INDEX = {index}; const LABELS = {labels}; const FILES = {files};</script>
<script>{SEARCH_SCRIPT}</script>"""
    return page(title, body)
