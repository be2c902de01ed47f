"""Which words make a feature fire, by occlusion: a word's contribution to a feature is the feature's
activation on the whole text minus its activation on the text with that word removed and embedded
again. Positive: the word drives the feature; negative: the word holds it back.

Each distinct text's word-removed variants are embedded once (with ``embeddings.string_backend``)
and read for every feature that asks about the text, and only a text's first MAX_WORDS words are
removed in turn, so the cost grows with the number of texts, not with their length.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch

from ..embeddings import encode_texts, resolve_prompt
from ..tracking import progress_bar
from ..metrics import code_blocks
from ..sae import BaseSAE
from .words import word_spans

class WordContributions(NamedTuple):
    """One text's words (character spans) and, per asked feature, each word's contribution."""

    spans: list[tuple[int, int]]
    activation: np.ndarray  # [n_features] the features' activations on the whole text
    contributions: np.ndarray  # [n_features, n_words]


def without(text: str, span: tuple[int, int]) -> str:
    """``text`` with the word at ``span`` removed and the spaces around it joined."""
    return (text[: span[0]].rstrip() + " " + text[span[1] :].lstrip()).strip()


def word_contributions(sae: BaseSAE, model: Any, texts: Sequence[str], features: Sequence[Sequence[int]],
                       prompt: str | None = None, batch_size: int = 64,
                       progress: Callable[[int], None] | None = None) -> list[WordContributions]:
    """For each text, the contribution of each of its words to each feature in ``features[i]``;
    ``progress`` is called with the number of texts (whole and word-removed) embedded so far."""
    spans = [word_spans(text) for text in texts]
    variants, owner = [], []
    for i, (text, text_spans) in enumerate(zip(texts, spans)):
        variants.append(text)
        variants.extend(without(text, span) for span in text_spans)
        owner.extend([i] * (len(text_spans) + 1))
    embeddings = encode_texts(model, variants, batch_size, progress=progress, prompt=prompt)
    starts = np.concatenate([[0], np.cumsum([len(s) + 1 for s in spans])])
    wanted = [torch.as_tensor(list(f), dtype=torch.long) for f in features]
    pieces: dict[int, list[torch.Tensor]] = {}
    for begin, codes in code_blocks(sae, embeddings):
        codes = codes.float().cpu()
        end = begin + len(codes)
        for i in sorted(set(owner[begin:end])):
            lo, hi = max(starts[i], begin), min(starts[i + 1], end)
            pieces.setdefault(i, []).append(codes[lo - begin : hi - begin][:, wanted[i]])
    results = []
    for i, text_spans in enumerate(spans):
        values = torch.cat(pieces[i]) if i in pieces else torch.zeros(1, len(wanted[i]))
        results.append(WordContributions(text_spans, values[0].numpy(),
                                         (values[0][:, None] - values[1:].T).numpy()))
    return results


def highlight(sae: BaseSAE, model: Any, texts: Sequence[str], features: Sequence[Sequence[int]],
              batch_size: int = 64) -> list[WordContributions]:
    """``word_contributions`` after the prompt the SAE was trained with, with a progress bar."""
    prompt = resolve_prompt(model, sae.cfg.prompt, sae.cfg.prompt_name)
    total = sum(len(word_spans(text)) + 1 for text in texts)
    with progress_bar(total, "highlight words") as bar:
        return word_contributions(sae, model, texts, features, prompt, batch_size, bar.update)


def word_records(text: WordContributions, position: int) -> list[list[float]]:
    """[start, end, contribution] of each word, for the feature at ``position`` of the text's features."""
    return [[start, end, round(float(c), 4)] for (start, end), c in zip(text.spans, text.contributions[position])]
