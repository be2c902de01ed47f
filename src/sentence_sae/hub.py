"""Sharing a trained SAE on the Hugging Face hub, with a model card."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .checkpoint import CFG_FILE, WEIGHTS_FILE, load_sae, saved_config
from .errors import CheckpointError, SentenceSAEError, first_line

UPLOADED = (CFG_FILE, WEIGHTS_FILE, "eval.json", "features.jsonl", "families.json", "density_histogram.png",
            "training_curves.png")


def model_card(run_dir: Path, repo_id: str) -> str:
    """README.md for the hub: what the SAE is, its held-out metrics, its config, how to load it."""
    cfg = saved_config(run_dir)
    sae = load_sae(run_dir)
    evaluation = {}
    if (run_dir / "eval.json").is_file():
        evaluation = json.loads((run_dir / "eval.json").read_text())
    metrics = {key: evaluation[key] for key in ("fvu", "explained_variance", "cos", "l0", "dead_frac", "silent_frac",
                                                "recall_at_10", "sim_spearman", "label_purity")
               if evaluation.get(key) is not None}
    metric_rows = "\n".join(f"| {key} | {value:.4g} |" for key, value in metrics.items()) or "| (run `sentence-sae eval` first) | |"
    config_rows = "\n".join(f"| `{key}` | `{value}` |" for key, value in cfg.items() if value is not None)
    return f"""---
library_name: sentence-sae
tags: [sparse-autoencoder, sae, sentence-transformers, interpretability, saelens]
---
# {repo_id}

A {sae.architecture} sparse autoencoder with {sae.d_sae} features on the {sae.d_in}-dimensional sentence
embeddings of `{cfg.model_name}`, trained with [sentence-sae](https://pypi.org/project/sentence-sae/) on
`{cfg.dataset_path}`. The files follow the SAELens layout (`cfg.json`, `sae_weights.safetensors`).

## Held-out metrics

| metric | value |
|---|---|
{metric_rows}

`dead_frac`: features that had not fired in the last `dead_feature_window` training examples when
training ended (what SAELens and sparsify call dead); `silent_frac`: features that fire on none of the
{evaluation.get("examples", "evaluated")} texts of this evaluation (rare, live features are often silent on a few hundred texts).

## How to load

```python
from huggingface_hub import snapshot_download
from sentence_sae import load_sae, text_codes

sae = load_sae(snapshot_download("{repo_id}"))
codes = text_codes(sae, ["A sentence to look at."])   # loads {cfg.model_name}
```

With SAELens: `from sae_lens import SAE; sae = SAE.load_from_disk(snapshot_download("{repo_id}"))`
(it reconstructs the same embeddings; feed it embeddings of `{cfg.model_name}`).

## Training configuration

| key | value |
|---|---|
{config_rows}
"""


def push_run(run_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> dict[str, Any]:
    """Upload the SAE, its evaluation and feature files, and a model card to ``repo_id``."""
    folder = Path(run_dir)
    if not (folder / CFG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{folder} holds no saved SAE ({CFG_FILE}, {WEIGHTS_FILE}); give a run folder")
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory() as staging_name:
        staging = Path(staging_name)
        for name in UPLOADED:
            if (folder / name).is_file():
                shutil.copy2(folder / name, staging / name)
        (staging / "README.md").write_text(model_card(folder, repo_id))
        try:
            api = HfApi(token=token)
            api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(folder_path=str(staging), repo_id=repo_id,
                                       commit_message="Upload SAE trained with sentence-sae")
        except Exception as exc:  # network, authentication and permission errors all end here
            raise SentenceSAEError(
                f"could not upload {folder} to the Hugging Face hub as {repo_id} ({first_line(exc)[:200]}); check your "
                "network connection and log in with `huggingface-cli login` or set HF_TOKEN"
            ) from None
    return {"repo_id": repo_id, "url": getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}",
            "files": sorted(p for p in UPLOADED if (folder / p).is_file()) + ["README.md"]}
