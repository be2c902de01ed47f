"""Finalizing a config: every value validated, derived values filled.

:func:`post_init_cfg` fills ``act_size`` from the model, the run ``name``, the device, the wandb
mode and each architecture's defaults, and validates every value, so training never starts on a
config that would fail later. It sits above the model loader and the SAE registry it consults.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

from .config import WANDB_MODES, SAEConfig, from_mapping, matryoshka_widths
from .data import DatasetSource
from .embeddings import embedding_dim, load_sentence_model_deferred, resolve_prompt
from .errors import ConfigError
from .sae import SAE_REGISTRY


MAX_INTEGER = 2**62
"""The largest integer a config key takes: counts beyond it overflow the readers' and torch's indices."""


def resolve_device(requested: str | None) -> str:
    import torch

    if requested is None or requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", requested):
        raise ConfigError(f"device '{requested}' is not valid; use cpu, cuda, cuda:N or mps")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{requested}' asked for, but no CUDA GPU is available; use --device cpu")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' asked for, but MPS is not available; use --device cpu")
    return requested


def resolve_wandb_mode(requested: str | None) -> str:
    if requested is not None:
        return requested
    if os.environ.get("WANDB_MODE") in WANDB_MODES:
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        if netrc.is_file() and "api.wandb.ai" in netrc.read_text():
            return "online"
    except OSError:
        pass
    return "offline"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(cfg: SAEConfig) -> None:
    """Check the ranges of every value (types are checked on assignment), naming the key and the fix."""
    check_numbers(cfg)
    _check(
        cfg.sae_type in SAE_REGISTRY,
        f"unknown sae_type '{cfg.sae_type}'; valid types: {', '.join(sorted(SAE_REGISTRY))}",
    )
    for key in ("dict_size", "top_k", "top_k_aux", "model_batch_size", "max_epochs",
                "num_batches_in_buffer", "dead_feature_window", "cache_shard_size"):
        _check(getattr(cfg, key) > 0, f"{key} must be positive, got {getattr(cfg, key)}")
    for key in ("batch_size", "lr", "target_l0"):
        _check(getattr(cfg, key) is None or getattr(cfg, key) > 0,
               f"{key} must be positive (or unset), got {getattr(cfg, key)}")
    for key in ("lr_warmup_steps", "num_val_examples"):
        _check(getattr(cfg, key) is None or getattr(cfg, key) >= 0,
               f"{key} must not be negative (or unset), got {getattr(cfg, key)}")
    _check(cfg.num_examples is None or cfg.num_examples > 0,
           f"num_examples must be positive (or unset for whole epochs), got {cfg.num_examples}")
    _check(cfg.num_epochs is None or cfg.num_epochs > 0,
           f"num_epochs must be positive (or unset to repeat until num_examples), got {cfg.num_epochs}")
    for key in ("num_eval_examples", "perf_log_freq", "checkpoint_freq", "aux_penalty"):
        _check(getattr(cfg, key) >= 0, f"{key} must not be negative, got {getattr(cfg, key)}")
    _check(cfg.l1_coeff is None or cfg.l1_coeff >= 0, f"l1_coeff must not be negative, got {cfg.l1_coeff}")
    _check(cfg.top_k <= cfg.dict_size,
           f"top_k ({cfg.top_k}) must not exceed dict_size ({cfg.dict_size})")
    _check(0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1, "beta1 and beta2 must lie in [0, 1)")
    _check(cfg.max_grad_norm is None or cfg.max_grad_norm > 0,
           f"max_grad_norm must be positive (or unset to disable clipping), got {cfg.max_grad_norm}")
    _check(0 <= cfg.lr_decay_frac <= 1, f"lr_decay_frac must lie in [0, 1], got {cfg.lr_decay_frac}")
    _check(0 <= cfg.l1_warmup_frac <= 1, f"l1_warmup_frac must lie in [0, 1], got {cfg.l1_warmup_frac}")
    _check(0 <= cfg.top_k_warmup_frac <= 1, f"top_k_warmup_frac must lie in [0, 1], got {cfg.top_k_warmup_frac}")
    _check(cfg.top_k_warmup_factor >= 1,
           f"top_k_warmup_factor must be at least 1 (1 turns the warm-up off), got {cfg.top_k_warmup_factor}")
    _check(cfg.bandwidth > 0, f"bandwidth must be positive, got {cfg.bandwidth}")
    _check(cfg.jumprelu_init_threshold > 0,
           f"jumprelu_init_threshold must be positive, got {cfg.jumprelu_init_threshold}")
    _check(cfg.pre_act_coeff >= 0, f"pre_act_coeff must be 0 or more (0 turns it off), got {cfg.pre_act_coeff}")
    buffer = cfg.model_batch_size * cfg.num_batches_in_buffer
    _check(cfg.batch_size is None or buffer >= cfg.batch_size,
           f"the shuffle buffer (model_batch_size x num_batches_in_buffer = {buffer}) is smaller than "
           f"batch_size ({cfg.batch_size}); raise num_batches_in_buffer to at least "
           f"{-(-(cfg.batch_size or 0) // cfg.model_batch_size)}")
    _check(bool(cfg.text_column), "text_column must not be empty")
    if cfg.sae_type == "matryoshka":
        matryoshka_widths(cfg)
    _check(bool(cfg.dataset_path), "dataset_path must not be empty")
    _check(cfg.cache_lock_timeout >= 0, f"cache_lock_timeout must not be negative, got {cfg.cache_lock_timeout}")
    if cfg.name is not None:
        check_path_part("name", cfg.name)


def check_numbers(cfg: SAEConfig) -> None:
    """Every number finite and within what the readers and torch can index; a seed torch accepts."""
    for key, value in cfg.items():
        # inf and nan pass every range comparison the wrong way (or fail deep inside a schedule)
        _check(not isinstance(value, float) or math.isfinite(value), f"{key} must be a finite number, got {value}")
        _check(not isinstance(value, int) or isinstance(value, bool) or abs(value) <= MAX_INTEGER,
               f"{key} is too large ({value}); it must be at most {MAX_INTEGER}")
    _check(cfg.seed >= 0, f"seed must not be negative, got {cfg.seed}")


def check_path_part(key: str, value: str) -> None:
    """A name that becomes one folder under output_dir: no separators, no '..', nothing that leaves it."""
    _check(bool(value.strip()) and value not in (".", "..") and not re.search(r"[/\\\x00]", value),
           f"{key} '{value}' must be a plain folder name (no '/', '\\', '..' or empty name): it names a folder "
           "under output_dir; put the path in output_dir instead")


def check_memory(cfg: SAEConfig) -> None:
    """Refuse a dictionary whose weights, gradients and optimizer state cannot fit, before allocating it."""
    need = sae_training_bytes(cfg)
    have = available_memory(cfg.device)
    if have is not None and need > have:
        raise ConfigError(f"dict_size {cfg.dict_size} needs about {need / 2**30:,.1f} GiB for the SAE's weights, "
                          f"gradients and optimizer state at {cfg.act_size} dimensions, but {cfg.device} has "
                          f"{have / 2**30:,.1f} GiB available; lower dict_size")


def sae_training_bytes(cfg: SAEConfig) -> int:
    """Weights, gradients and Adam's two moments of an SAE of this config (activations not counted)."""
    import torch

    parameters = 2 * cfg.act_size * cfg.dict_size + 2 * cfg.dict_size + cfg.act_size
    return 4 * parameters * torch.finfo(getattr(torch, cfg.dtype)).bits // 8


def available_memory(device: str) -> int | None:
    """Bytes free for new tensors on ``device`` (None when it cannot be told)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def default_run_name(cfg: SAEConfig) -> str:
    """The run name when none is given: architecture, model, size and k."""
    return f"{cfg.sae_type}_{Path(cfg.model_name.rstrip('/')).name}_{cfg.dict_size}_k{cfg.top_k}"


def _make_paths_absolute(cfg: SAEConfig) -> None:
    """Local paths become absolute, so a saved run's config still names them from any folder."""
    source = DatasetSource.from_config(cfg)
    if source.kind == "local":
        cfg.dataset_path = source.path
    cfg.output_dir = str(Path(cfg.output_dir).expanduser().absolute())
    if cfg.cache_dir:
        cfg.cache_dir = str(Path(cfg.cache_dir).expanduser().absolute())


def post_init_cfg(cfg: SAEConfig | Mapping[str, Any], model: Any = None,
                  embedding_width: int | None = None) -> SAEConfig:
    """Finalize a config: validate every value and fill the derived ones.

    ``act_size`` comes from ``model`` (a SentenceTransformer), or from ``embedding_width`` when the
    embeddings are given without a model; with neither, the model named by ``cfg.model_name`` is
    loaded (once per process). Calling it again on a finalized config is harmless.
    """
    if not isinstance(cfg, SAEConfig):
        cfg = from_mapping(cfg)
    else:
        cfg = dataclasses.replace(cfg)
    validate(cfg)
    cfg.device = resolve_device(cfg.device)
    if cfg.dtype in ("float16", "bfloat16") and cfg.device == "cpu":
        # Measured on CPU: the sparse kernels have no half-precision sampled matmul, and the dense
        # float16 path gives a non-finite loss at step 2 at any lr.
        raise ConfigError(f"dtype {cfg.dtype} is not supported for SAEs on the CPU (its sparse kernels have no "
                          "half-precision support, and float16 training diverges there); use float32 or float64")
    _make_paths_absolute(cfg)
    cfg.wandb_mode = resolve_wandb_mode(cfg.wandb_mode)

    if model is None and embedding_width is None:
        model = load_sentence_model_deferred(cfg.model_name, cfg.device, cfg.encode_backend)
    width = embedding_dim(model) if model is not None else embedding_width
    if cfg.act_size is not None and cfg.act_size != width:
        given = f"model '{cfg.model_name}' gives" if model is not None else "the store serves"
        raise ConfigError(f"act_size is {cfg.act_size}, but {given} {width}-dimensional embeddings; remove act_size "
                          f"or set it to {width}")
    cfg.act_size = width
    check_memory(cfg)
    if model is not None:
        resolve_prompt(model, cfg.prompt, cfg.prompt_name)  # an unknown prompt name fails here, before any work
    if cfg.input_unit_norm is None:
        cfg.input_unit_norm = SAE_REGISTRY[cfg.sae_type].default_input_unit_norm
    if cfg.top_k_aux > cfg.dict_size:
        cfg.top_k_aux = cfg.dict_size
    if cfg.name is None:
        cfg.name = default_run_name(cfg)
    return cfg


def get_experiment_cfg(**overrides: Any) -> SAEConfig:
    """The earlier script's experiment config: the defaults with ``overrides``, finalized (act_size
    from the model, run name, device), ready for ``sae_classes[cfg["sae_type"]](cfg)``."""
    return post_init_cfg({**SAEConfig().to_dict(), **overrides})
