"""Helpers for tests: configs that write under a temporary folder, data files, a PCA baseline,
and a reader for wandb's offline run files."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from sentence_sae.config import SAEConfig, post_init_cfg


def make_cfg(tmp_path: Path, model=None, **overrides) -> SAEConfig:
    """A finalized config that writes under tmp_path and logs nowhere unless asked."""
    values = dict(output_dir=str(tmp_path / "runs"), wandb_mode="disabled", device="cpu",
                  perf_log_freq=0, checkpoint_freq=0, cache_dir=str(tmp_path / "cache"))
    values.update(overrides)
    return post_init_cfg(SAEConfig().replace(**values), model)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def pca_fvu(train: torch.Tensor, held_out: torch.Tensor, k: int) -> float:
    """Held-out FVU of the best k-dimensional linear code fitted on ``train`` (PCA)."""
    train, held_out = train.double(), held_out.double()
    mean = train.mean(0)
    _, _, v = torch.linalg.svd(train - mean, full_matrices=False)
    basis = v[:k]
    reconstruction = (held_out - mean) @ basis.T @ basis + mean
    variance = (held_out - held_out.mean(0)).pow(2).sum()
    return float((held_out - reconstruction).pow(2).sum() / variance)




def read_wandb_history(run_dir: Path) -> list[dict[str, Any]]:
    """The history rows of the offline wandb run under ``run_dir``."""
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for record in read_wandb_records(run_dir) if record.WhichOneof("record_type") == "history"]


def read_wandb_summary(run_dir: Path) -> dict[str, Any]:
    """The summary of the offline wandb run under ``run_dir`` (its updates, applied in order)."""
    summary = {}
    for record in read_wandb_records(run_dir):
        if record.WhichOneof("record_type") == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.summary.update})
    return summary


def wandb_warnings(run_dir: Path) -> str:
    """The warning and error lines of wandb's own log of the run under ``run_dir``, for failure messages."""
    lines = [line for log in run_dir.glob("wandb/offline-run-*/logs/debug-internal.log")
             for line in log.read_text(errors="replace").splitlines() if '"level":"WARN' in line or '"level":"ERROR' in line]
    return "\n".join(lines[-20:])


def read_wandb_exit_code(run_dir: Path) -> int:
    """The exit code the offline wandb run under ``run_dir`` was finished with."""
    exits = [record.exit for record in read_wandb_records(run_dir) if record.WhichOneof("record_type") == "exit"]
    assert exits, f"the wandb run under {run_dir} was never finished"
    return exits[-1].exit_code


def read_wandb_records(run_dir: Path) -> list[Any]:
    """The ``Record`` protobufs of the offline wandb run under ``run_dir``, read from its .wandb file.

    The file is a LevelDB-style log (7-byte header, 32 KiB blocks of records with a 7-byte
    checksum/length/type header) of wandb ``Record`` protobufs.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert files, f"no offline wandb run under {run_dir}"
    data = files[-1].read_bytes()
    assert data[:4] == b":W&B"
    block, position, records, partial = 32768, 7, [], b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if length == 0 and kind == 0:
            position += left
            continue
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            partial = chunk
        elif kind == 3:
            partial += chunk
        elif kind == 4:
            records.append(partial + chunk)
    parsed = []
    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        parsed.append(record)
    return parsed
