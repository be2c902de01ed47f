"""One record per feature: what ``explain`` writes to ``features.jsonl`` and what the browser, the
feature map, the search page, ``features``, ``compare``, ``diff`` and ``search`` read back.

Each line of ``features.jsonl`` is one ``FeatureRecord`` as JSON, with ``schema_version``. A file
without it was written before records had a version and holds the same keys (version 1); a file
from a newer sentence-sae is refused by name rather than read wrongly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..files import atomic_write_text

FEATURES_FILE = "features.jsonl"
SCHEMA_VERSION = 2
"""2: ``schema_version`` on every line; 1: the same keys without it."""


@dataclass
class TextExample:
    """A text a feature fires on, with its activation and its row in the corpus explained."""

    text: str
    activation: float
    row: int
    words: list[list[float]] | None = None
    """With ``--highlight``: [start, end, contribution] of each word (how much removing it lowers the activation)."""
    quantile: float | None = None
    """For the lower-activation examples: how far down the feature's activations the text lies."""

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass
class Coactivation:
    id: int
    p: float
    """P(this other feature fires | the record's feature fires)."""


@dataclass
class Family:
    parent: int | None
    children: list[int] = field(default_factory=list)


@dataclass
class FeatureRecord:
    id: int
    label: str
    """The whole label, ``concept: keyword, keyword``; empty for a dead feature."""
    concept: str
    keywords: list[str]
    dead: bool
    """Never fired on the texts explained."""
    density: float
    """Share of the texts explained on which the feature fires."""
    count: int
    n_texts: int
    mean_act: float
    max_act: float
    top_texts: list[TextExample]
    quantile_texts: list[TextExample]
    histogram: list[int]
    label_score: float | None = None
    """AUROC of the label's embedding picking out texts the feature fires on (see docs/explain.md)."""
    label_score_lexical: float | None = None
    """The same by the BM25 score of the label's words."""
    coactivating: list[Coactivation] = field(default_factory=list)
    family: Family | None = None

    def to_json(self) -> dict[str, Any]:
        record = {"schema_version": SCHEMA_VERSION, **asdict(self),
                  "top_texts": [text.to_json() for text in self.top_texts],
                  "quantile_texts": [text.to_json() for text in self.quantile_texts]}
        if self.family is None:  # explain without co-activation counts has no families
            del record["family"]
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> FeatureRecord:
        values = {key: value for key, value in record.items() if key != "schema_version"}
        values["top_texts"] = [TextExample(**text) for text in values.get("top_texts", [])]
        values["quantile_texts"] = [TextExample(**text) for text in values.get("quantile_texts", [])]
        values["coactivating"] = [Coactivation(**c) for c in values.get("coactivating", [])]
        values["family"] = Family(**values["family"]) if values.get("family") else None
        return cls(**values)


def write_features(run_dir: Path, records: list[FeatureRecord]) -> Path:
    path = Path(run_dir) / FEATURES_FILE
    atomic_write_text(path, "".join(json.dumps(record.to_json()) + "\n" for record in records))
    return path


def read_features(run_dir: Path) -> list[FeatureRecord] | None:
    """The run's feature records, or None when it was not explained yet. A line that is not a record
    of a version this code knows is one error naming the file, the line and what to do."""
    path = Path(run_dir) / FEATURES_FILE
    if not path.is_file():
        return None
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            raw = json.loads(line)
            version = raw.get("schema_version", 1)
        except (json.JSONDecodeError, AttributeError) as exc:
            raise DataError(f"line {number} of {path} is not a feature record ({exc}); run 'sentence-sae explain' "
                            "again to rewrite it") from None
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise DataError(f"{path} has feature records of schema version {version}, newer than this sentence-sae "
                            f"reads ({SCHEMA_VERSION}); upgrade sentence-sae or run 'sentence-sae explain' again")
        try:
            records.append(FeatureRecord.from_json(raw))
        except TypeError as exc:
            raise DataError(f"line {number} of {path} is not a feature record ({exc}); run 'sentence-sae explain' "
                            "again to rewrite it") from None
    return records


def feature_labels(run_dir: Path) -> dict[int, str]:
    """Each feature's label, or none if the run was not explained yet."""
    return {record.id: record.label for record in read_features(run_dir) or []}
