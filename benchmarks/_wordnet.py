"""The WordNet split every quality benchmark uses: train on the first N_TRAIN definitions of
../shared/data/wordnet_glosses.jsonl.gz, judge on the rest, EXAMPLES training examples seen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/wordnet_glosses.jsonl.gz"
N_TRAIN = 100_000
EXAMPLES = 300_000


def whole_embeddings(data: Path) -> Any:
    """All of ``data``'s embeddings, memory-mapped from the sentence-sae cache (encoded on first use)."""
    from sentence_sae import embed, load_embeddings

    return load_embeddings(embed({"dataset_path": str(data), "num_examples": None, "wandb_mode": "disabled"})["cache_dir"])
