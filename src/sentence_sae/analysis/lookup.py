"""The top features of a text, with the labels ``explain`` gave them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError, check_positive
from ..embeddings import resolve_prompt
from ..runs import open_run, text_codes
from .highlight import word_contributions, word_records
from .records import feature_labels


def top_features(run_dir: str | Path, text: str, top: int = 10, device: str | None = None) -> dict[str, Any]:
    if not text.strip():
        raise ConfigError("the text is empty or only spaces; give the text whose features you want")
    check_positive("top", top)
    run = open_run(run_dir, device)
    codes = text_codes(run.sae, [text], run.model)[0]
    values, ids = codes.topk(min(top, len(codes)))
    labels = feature_labels(run.folder)
    shown = [int(i) for v, i in zip(values.tolist(), ids.tolist()) if v > 0]
    words = word_contributions(run.sae, run.model, [text], [shown],
                               resolve_prompt(run.model, run.sae.cfg.prompt, run.sae.cfg.prompt_name))[0]
    features = [{"id": i, "activation": float(v), "label": labels.get(i, ""), "words": word_records(words, position)}
                for position, (i, v) in enumerate(zip(shown, values.tolist()))]
    note = None if labels else "no labels yet: run 'sentence-sae explain' on this run first"
    return {"text": text, "features": features, **({"note": note} if note else {})}


ANSI_RESET = "\033[0m"
SHADES = ((0.5, "\033[1;30;41m"), (0.15, "\033[30;43m"), (-0.15, ""), (-1.0, "\033[30;46m"))
"""(lowest share of the text's largest |contribution|, ANSI style): strong drivers red, drivers yellow,
words that hold the feature back cyan."""


def colored_words(text: str, words: list[list[float]]) -> str:
    """``text`` with each word colored by its contribution ([start, end, contribution] per word)."""
    scale = max((abs(c) for _, _, c in words), default=0.0)
    if scale <= 0:
        return text
    out, position = [], 0
    for start, end, contribution in words:
        start, end = int(start), int(end)
        style = next(code for floor, code in SHADES if contribution / scale >= floor)
        out.append(text[position:start] + (f"{style}{text[start:end]}{ANSI_RESET}" if style else text[start:end]))
        position = end
    return "".join(out) + text[position:]
