"""The top features of a text, with the labels ``explain`` gave them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError, check_positive
from ..runs import open_run, text_codes


def feature_labels(run_dir: Path) -> dict[int, str]:
    """Labels from features.jsonl, or none if the run was not explained yet."""
    path = Path(run_dir) / "features.jsonl"
    if not path.is_file():
        return {}
    return {record["id"]: record.get("label", "") for record in map(json.loads, path.read_text().splitlines())}


def top_features(run_dir: str | Path, text: str, top: int = 10, device: str | None = None) -> dict[str, Any]:
    if not text.strip():
        raise ConfigError("the text is empty or only spaces; give the text whose features you want")
    check_positive("top", top)
    run = open_run(run_dir, device)
    codes = text_codes(run.sae, [text], run.model)[0]
    values, ids = codes.topk(min(top, len(codes)))
    labels = feature_labels(run.folder)
    features = [{"id": int(i), "activation": float(v), "label": labels.get(int(i), "")}
                for v, i in zip(values.tolist(), ids.tolist()) if v > 0]
    note = None if labels else "no labels yet: run 'sentence-sae explain' on this run first"
    return {"text": text, "features": features, **({"note": note} if note else {})}
