"""Saving and loading SAEs in the SAELens folder layout.

A saved SAE is a folder with ``cfg.json`` and ``sae_weights.safetensors`` (``W_enc`` [d_in, d_sae],
``W_dec`` [d_sae, d_in], ``b_enc`` [d_sae], ``b_dec`` [d_in], and ``threshold`` [d_sae] for
thresholded SAEs). ``cfg.json`` holds the fields SAELens reads plus the full sentence-sae config
under ``sentence_sae``. Every file is written atomically with a SHA-256 checksum beside it (see
files.py) that loading checks; a checkpoint folder is staged under a temporary name and renamed into
place. A folder without checksums (SAELens's own) loads unchecked, with a note. A trained run's
folder also holds ``sparsity.safetensors`` as SAELens writes it: ``sparsity`` [d_sae], the log10 of
each feature's firing frequency over the last dead_feature_window training examples.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from .config import SAEConfig, from_mapping
from .errors import CheckpointError, ConfigError, first_line
from .finalize import resolve_device
from .files import CHECKSUM_SUFFIX, atomic_write_checked, checksum_path, verify_checksum, write_checksum
from .sae import SAE_REGISTRY, BaseSAE, create_sae
from .version import __version__

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
NEVER_FIRED = 1e-10
"""Added to firing frequencies before their log10, as SAELens does: a feature that never fired reads -10."""
FORMAT_VERSION = 1


def saelens_cfg(sae: BaseSAE) -> dict[str, Any]:
    """cfg.json contents: SAELens fields, plus our own config under ``sentence_sae``."""
    cfg = sae.cfg
    saved = {
        "architecture": sae.saelens_architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": cfg.dtype,
        "device": str(sae.device),
        "apply_b_dec_to_input": True,
        "normalize_activations": "layer_norm" if sae.input_unit_norm else "none",
        "metadata": {
            "model_name": cfg.model_name,
            "hook_name": "sentence_embedding",
            "dataset_path": cfg.dataset_path,
            "sentence_sae_version": __version__,
        },
        "sentence_sae": {"format_version": FORMAT_VERSION, "config": cfg.to_dict()},
    }
    if sae.saelens_architecture == "topk":
        saved["k"] = cfg.top_k
    return saved


def save_sae(sae: BaseSAE, folder: str | Path) -> Path:
    """Write ``sae`` into ``folder`` (weights first, then cfg.json; each file atomically)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors = {name: t.detach().contiguous().cpu() for name, t in sae.weights_for_saving().items()}
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    atomic_write_checked(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp)), size)
    text = json.dumps(saelens_cfg(sae), indent=2)
    atomic_write_checked(folder / CFG_FILE, lambda tmp: tmp.write_text(text))
    return folder


class FiringFrequencies(NamedTuple):
    """Each feature's firing frequency over training examples [first_example, last_example)."""

    densities: torch.Tensor  # [d_sae] float64
    first_example: int
    last_example: int


def save_firing_frequencies(firing: FiringFrequencies, folder: str | Path) -> Path:
    """Write ``sparsity.safetensors`` (log10 firing frequencies, SAELens's key and offset, with the span
    of training examples they were counted over in its metadata) into ``folder``."""
    from safetensors.torch import save_file

    path = Path(folder) / SPARSITY_FILE
    tensors = {"sparsity": torch.log10(firing.densities.double() + NEVER_FIRED).float().contiguous()}
    metadata = {"first_example": str(firing.first_example), "last_example": str(firing.last_example)}
    atomic_write_checked(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), 4 * len(firing.densities))
    return path


def read_firing_frequencies(folder: str | Path) -> FiringFrequencies:
    """The firing frequencies of a run's features from its ``sparsity.safetensors``, checked."""
    from safetensors import SafetensorError, safe_open

    path = Path(folder) / SPARSITY_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the SAE was saved without its training firing frequencies "
                              "(trained elsewhere, or saved before sentence-sae wrote them); train it again to get them")
    verify_checksum(path, CheckpointError, CORRUPT_FIX)
    try:
        with safe_open(str(path), framework="pt") as file:
            log_density, metadata = file.get_tensor("sparsity").double(), file.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({first_line(exc)})") from None
    if log_density.ndim != 1 or not bool(torch.isfinite(log_density).all()) or bool((log_density > 1e-6).any()):
        raise CheckpointError(f"{path} does not hold log10 firing frequencies (one finite value <= 0 per feature); "
                              "train the run again")
    span = [metadata.get(key, "") for key in ("first_example", "last_example")]  # unknown: 0
    return FiringFrequencies((10 ** log_density - NEVER_FIRED).clamp(0, 1), *(int(v) if v.isdigit() else 0 for v in span))


def save_checkpoint_folder(sae: BaseSAE, folder: Path, extra: Callable[[Path], None] | None = None) -> Path:
    """Write a complete checkpoint folder under a temporary name, then rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_sae(sae, staging)
        if extra is not None:
            extra(staging)
            # The folder is staged and renamed whole, so what extra wrote needs only its checksum.
            for file in staging.iterdir():
                if file.suffix != CHECKSUM_SUFFIX and not checksum_path(file).exists():
                    write_checksum(file)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder


# ----------------------------------------------------------------------------------------------
# Loading


CORRUPT_FIX = "use an earlier checkpoint (checkpoints/step_*) or train again"


def verified(path: Path) -> bool:
    """Whether ``path`` matched its checksum (False: it has none); a mismatch is a CheckpointError."""
    return verify_checksum(path, CheckpointError, CORRUPT_FIX)


def _read_cfg(folder: Path) -> dict[str, Any]:
    cfg_path = folder / CFG_FILE
    if not cfg_path.is_file():
        saved = sorted(folder.glob(f"checkpoints/step_*/{CFG_FILE}"))
        if saved:
            raise CheckpointError(f"{cfg_path} is missing: the run stopped before its final save; use its last "
                                  f"checkpoint {saved[-1].parent}, or finish it with 'sentence-sae train --resume {folder}'")
        raise CheckpointError(f"{cfg_path} is missing; give a run folder or a saved SAE folder")
    verified(cfg_path)
    try:
        data = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_path} is corrupt ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    if not isinstance(data, dict) or "d_in" not in data or "d_sae" not in data:
        raise CheckpointError(f"{cfg_path} is not an SAE config (no d_in / d_sae)")
    return data


def config_from_saved(data: dict[str, Any], folder: Path) -> SAEConfig:
    """Our config from a cfg.json: ours verbatim, or one made from a SAELens config."""
    if "sentence_sae" in data:
        # Runs saved before the validation set and max_epochs existed trained on every text after the
        # held-out ones and repeated without limit: resuming them must do the same.
        before_recipe = {"num_val_examples": 0, "max_epochs": 10**9}
        saved = data["sentence_sae"]["config"]
        try:
            return from_mapping({**{k: v for k, v in before_recipe.items() if k not in saved}, **saved})
        except ConfigError as exc:
            raise CheckpointError(f"{folder / CFG_FILE} holds an invalid config: {exc}") from None
    return config_from_saelens(data, folder)


SAELENS_TO_SAE_TYPE = {"standard": "vanilla", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}


def config_from_saelens(data: dict[str, Any], folder: Path) -> SAEConfig:
    architecture = data.get("architecture", "standard")
    if architecture not in SAELENS_TO_SAE_TYPE:
        raise CheckpointError(
            f"{folder / CFG_FILE}: SAELens architecture '{architecture}' is not supported; "
            f"supported: {', '.join(SAELENS_TO_SAE_TYPE)}"
        )
    if data.get("rescale_acts_by_decoder_norm"):
        raise CheckpointError(f"{folder / CFG_FILE}: rescale_acts_by_decoder_norm is not supported; fold the "
                              "decoder norms into the weights in SAELens (fold_W_dec_norm) and save again")
    normalization = data.get("normalize_activations") or "none"
    if normalization not in ("none", "layer_norm"):
        raise CheckpointError(
            f"{folder / CFG_FILE}: normalize_activations '{normalization}' is not supported; "
            "supported: none, layer_norm"
        )
    metadata = data.get("metadata") or {}
    values: dict[str, Any] = {
        "sae_type": SAELENS_TO_SAE_TYPE[architecture],
        "act_size": int(data["d_in"]),
        "dict_size": int(data["d_sae"]),
        "input_unit_norm": normalization == "layer_norm",
        "dtype": str(data.get("dtype", "float32")).replace("torch.", ""),
    }
    values["top_k"] = min(int(data.get("k") or 32), int(data["d_sae"]))
    if metadata.get("model_name"):
        values["model_name"] = metadata["model_name"]
    return from_mapping(values)


def load_sae(path: str | Path, device: str | None = None) -> BaseSAE:
    """Load a saved SAE (a run folder, checkpoint folder or SAELens SAE folder), in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"SAE folder {folder} does not exist")
    data = _read_cfg(folder)
    cfg = config_from_saved(data, folder)
    cfg.act_size = int(data["d_in"])
    cfg.device = resolve_device(device or "cpu")  # an unavailable device is said as such, not as a corrupt file
    if cfg.sae_type not in SAE_REGISTRY:
        raise CheckpointError(f"{folder / CFG_FILE}: unknown sae_type '{cfg.sae_type}'")
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path} is missing; the checkpoint is incomplete")
    if not verified(weights_path):
        print(f"note: {weights_path} has no checksum ({WEIGHTS_FILE}{CHECKSUM_SUFFIX}; a SAELens folder, or one "
              "saved before sentence-sae wrote them): it is loaded unchecked", file=sys.stderr)
    try:
        tensors = load_file(str(weights_path), device=cfg.device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{weights_path} is corrupt or truncated ({first_line(exc)})") from None
    sae = create_sae(cfg)
    expected = {name: tuple(t.shape) for name, t in sae.weights_for_saving().items()}
    check_tensor_set(weights_path, cfg.sae_type, expected, {name: tuple(t.shape) for name, t in tensors.items()})
    weights = {name: tensors[name].to(sae.dtype) for name in expected}
    if data.get("apply_b_dec_to_input") is False:
        # Our encoder always subtracts b_dec first; an SAE that does not gets it folded into b_enc:
        # x W + b  =  (x - b_dec) W + (b + b_dec W).
        if "b_gate" in weights:  # gated: both paths read the input
            weights["b_gate"] = weights["b_gate"] + weights["b_dec"] @ weights["W_enc"]
            weights["b_mag"] = weights["b_mag"] + weights["b_dec"] @ (weights["W_enc"] * weights["r_mag"].exp())
        else:
            weights["b_enc"] = weights["b_enc"] + weights["b_dec"] @ weights["W_enc"]
    sae.load_saved_weights(weights)
    sae.eval()
    return sae


def check_tensor_set(path: Path, sae_type: str, expected: dict[str, tuple[int, ...]],
                     found: dict[str, tuple[int, ...]]) -> None:
    """The saved tensors must be exactly the ones ``sae_type`` has, in its shapes: weights of another
    architecture (a threshold beside a topk config, say) would otherwise load and be silently ignored."""
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        difference = "; ".join(part for part in (
            f"lacks {', '.join(missing)}" if missing else "",
            f"holds {', '.join(extra)}, which a {sae_type} SAE does not have" if extra else "") if part)
        raise CheckpointError(f"{path} does not hold the tensors of a {sae_type} SAE ({difference}): the weights "
                              f"belong to another architecture than its {CFG_FILE} names; save them with their own "
                              f"{CFG_FILE}")
    for name, shape in expected.items():
        if found[name] != shape:
            raise CheckpointError(f"{path}: tensor '{name}' has shape {found[name]}, expected {shape}")


def saved_config(path: str | Path) -> SAEConfig:
    """The config of a saved SAE without loading its weights."""
    return saved_config_and_provenance(path)[0]


def saved_config_and_provenance(path: str | Path) -> tuple[SAEConfig, bool]:
    """The config of a saved SAE, and whether its cfg.json holds our config (and so where it was
    trained) rather than only SAELens's fields."""
    folder = Path(path)
    data = _read_cfg(folder)
    return config_from_saved(data, folder), "sentence_sae" in data
