"""The browser's search page (``browser/search.html``): find texts by their words among the texts the
browser shows (every feature's top texts), see which features fire most on each, and steer the
results by features as ``search --boost/--suppress`` does: a boosted feature's texts rank first
(weighted by its activation on them over its largest), a suppressed feature's texts are left out.

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
    """Distinct top texts, the (feature, activation) pairs of each, strongest first, and word -> texts.
    A text the corpus holds twice can be a feature's top text twice: it is listed with the feature once."""
    position: dict[str, int] = {}
    texts: list[str] = []
    fired: list[dict[int, float]] = []
    for feature in features:
        for item in feature.top_texts:
            index = position.setdefault(item.text, len(texts))
            if index == len(texts):
                texts.append(item.text)
                fired.append({})
            activation = round(item.activation, 3)
            fired[index][feature.id] = max(activation, fired[index].get(feature.id, activation))
    words: dict[str, list[int]] = {}
    for index, text in enumerate(texts):
        for word in sorted(set(WORD.findall(text.lower()))):
            words.setdefault(word, []).append(index)
    return {"texts": texts, "features": [sorted(f.items(), key=lambda pair: -pair[1]) for f in fired], "words": words}


SEARCH_SCRIPT = """
const I = INDEX, labels = LABELS, files = FILES;
const box = document.getElementById('search'), out = document.getElementById('results'), info = document.getElementById('count');
const chips = document.getElementById('steering');
const boost = new Map(), suppress = new Set();  // feature -> weight; features whose texts are left out
const maxAct = {};
I.features.forEach(fs => fs.forEach(([f, a]) => { maxAct[f] = Math.max(maxAct[f] || 0, a); }));
function escapeHtml(s) { return s.replace(/[&<>"']/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c])); }
function actOf(t, f) { const pair = I.features[t].find(([g]) => g === f); return pair ? pair[1] : 0; }
function score(t) { let s = 0; for (const [f, w] of boost) s += w * actOf(t, f) / maxAct[f]; return s; }
function steerButtons(f) {
  return `<button class="steer" data-act="boost" data-f="${f}" title="boost #${f}">+</button>` +
         `<button class="steer" data-act="suppress" data-f="${f}" title="suppress #${f}">&minus;</button>`;
}
function showSteering() {
  chips.innerHTML = [...boost].map(([f, w]) => `<span class="chip boost">boost #${f} ${escapeHtml(labels[f] || '')}` +
      (w !== 1 ? ` &times;${w}` : '') + ` <button class="unsteer" data-f="${f}" title="remove">&times;</button></span>`)
    .concat([...suppress].map(f => `<span class="chip suppress">suppress #${f} ${escapeHtml(labels[f] || '')}` +
      ` <button class="unsteer" data-f="${f}" title="remove">&times;</button></span>`)).join(' ');
}
function run() {
  showSteering();
  const words = (box.value.toLowerCase().match(/[a-z0-9]{2,}/g) || []);
  let hits = null;
  for (const w of words) {
    const found = new Set();
    for (const key in I.words) if (key.startsWith(w)) for (const t of I.words[key]) found.add(t);
    hits = hits === null ? found : new Set([...hits].filter(t => found.has(t)));
  }
  if (hits === null && boost.size) hits = new Set(I.texts.map((_, t) => t).filter(t => score(t) > 0));
  if (hits === null) { out.innerHTML = ''; info.textContent = `${I.texts.length} texts indexed`; return; }
  const kept = [...hits].filter(t => ![...suppress].some(f => actOf(t, f) > 0));
  const ranked = kept.sort((a, b) => score(b) - score(a) || I.features[b][0][1] - I.features[a][0][1]);
  const what = words.length ? `contain${ranked.length === 1 ? 's' : ''} ${words.map(w => w + '…').join(' and ')}`
                            : `where a boosted feature fires`;
  const left = hits.size - kept.length;
  info.textContent = `${ranked.length} text${ranked.length === 1 ? '' : 's'} ${what}` +
    (left ? ` (${left} left out: a suppressed feature fires on them)` : '');
  out.innerHTML = ranked.slice(0, 100).map(t => `<div class="result"><div>${escapeHtml(I.texts[t])}</div>` +
    `<div class="meta">${I.features[t].slice(0, 5).map(([f, a]) =>
      `<a href="features/${files[f]}">#${f}</a> ${escapeHtml(labels[f] || '')} (${a}) ${steerButtons(f)}`).join(' &middot; ')}</div></div>`).join('');
}
document.addEventListener('click', event => {
  const button = event.target.closest('button[data-f]');
  if (!button) return;
  const f = Number(button.dataset.f);
  boost.delete(f); suppress.delete(f);
  if (button.dataset.act === 'boost') boost.set(f, 1);
  if (button.dataset.act === 'suppress') suppress.add(f);
  run();
});
box.addEventListener('input', run);
run();
"""


def search_page(features: list[dict[str, Any]], title: str) -> str:
    index = inline_json(text_index(features))
    labels = inline_json({f.id: f.label for f in features})
    files = inline_json({f.id: feature_file(f.id) for f in features})
    body = f"""<p><a href='index.html'>&larr; all features</a></p><h1>{html.escape(title)}</h1>
<p class="meta">Texts the browser shows (each feature's top texts) that contain every word you type (as a word
start), with the features that fire most on them. Steer with a feature's <b>+</b> (boost: the texts where it
fires come first, and with no words typed, they are the results) and <b>&minus;</b> (suppress: the texts where
it fires are left out). Search the whole corpus by meaning, steered the same way, with
<code>sentence-sae search RUN "query" --boost F --suppress F</code>.</p>
<div class="controls"><input id="search" type="search" placeholder="words to find" aria-label="search"></div>
<p id="steering"></p><p class="meta" id="count"></p><div id="results"></div>
<style>.result{{margin:.6rem 0;padding-bottom:.4rem;border-bottom:1px solid #eee}}
button.steer,button.unsteer{{font-size:.75rem;padding:0 .3rem;margin-left:.1rem;cursor:pointer}}
.chip{{display:inline-block;padding:.15rem .5rem;border-radius:1rem;margin-right:.4rem;font-size:.85rem}}
.chip.boost{{background:#e3f0e3}} .chip.suppress{{background:#f6e0e0}}</style>
<script>const INDEX = {index}; const LABELS = {labels}; const FILES = {files};</script>
<script>{SEARCH_SCRIPT}</script>"""
    return page(title, body)
