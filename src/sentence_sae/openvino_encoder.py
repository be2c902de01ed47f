"""The OpenVINO encoder: a Sentence-Transformers model whose transformer runs in OpenVINO.

The transformer is exported once per model with ``torch.onnx.export`` (the ONNX file is kept under the
cache root, named by the weights' fingerprint) and compiled for the CPU, in bf16 where the CPU has
bf16 instructions. Only the transformer moves: tokenization, truncation, prompts, pooling and
normalization stay the model's own, so ``model.encode`` means what it meant. No optimum needed.

``StandaloneEncoder`` runs the same compiled transformer without sentence-transformers, for the
plainest pipelines, where the model's own encode has been seen to give the same bits.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .errors import ModelError, first_line

EXTRA_HINT = "pip install 'sentence-sae[openvino]'"
ONNX_OPSET = 17


def openvino_available() -> bool:
    """True when the openvino package and onnx (which torch's exporter needs) are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("openvino", "onnx"))


def _require(package: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise ModelError(f"encode_backend openvino needs the {package} package ({first_line(exc)}); "
                         f"run: {EXTRA_HINT}") from None


def openvino_precision() -> str:
    """The precision OpenVINO runs at on this CPU: bfloat16 where the CPU has bf16 instructions."""
    capabilities = _require("openvino").Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "bfloat16" if "BF16" in capabilities else "float32"


class _TransformerForExport(torch.nn.Module):
    """The Hugging Face model as a function of positional tensors, returning the token embeddings."""

    def __init__(self, model: torch.nn.Module, input_names: list[str]):
        super().__init__()
        self.model, self.input_names = model, input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs)), return_dict=True).last_hidden_state


def _tokenize(sentence_model: Any, texts: list[str]) -> dict[str, Any]:
    # sentence-transformers 6 renamed tokenize to preprocess
    method = getattr(sentence_model, "preprocess", None) or sentence_model.tokenize
    return method(texts)


def _input_names(sentence_model: Any) -> list[str]:
    """The tokenizer outputs the transformer takes (input_ids, attention_mask, and token_type_ids for BERT)."""
    accepted = set(inspect.signature(sentence_model[0].model.forward).parameters)
    return [name for name in _tokenize(sentence_model, ["probe"]) if name in accepted]


def export_onnx(sentence_model: Any, path: Path) -> None:
    """Write the model's transformer to ``path`` as ONNX with dynamic batch and sequence axes. The file
    appears whole or not at all, so processes that export at once never read half a file."""
    _require("onnx")
    names = _input_names(sentence_model)
    features = _tokenize(sentence_model, ["an example text", "a second, somewhat longer example text"])
    inputs = tuple(features[name] for name in names)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "token_embeddings"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=path.parent)
    os.close(handle)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about shape-dependent branches of the model
            torch.onnx.export(_TransformerForExport(sentence_model[0].model.eval(), names), inputs, tmp,
                              input_names=names, output_names=["token_embeddings"], dynamic_axes=axes,
                              opset_version=ONNX_OPSET, dynamo=False)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


class OpenVINOTransformer(torch.nn.Module):
    """Stands in for the Hugging Face model inside the Sentence-Transformers pipeline: the same inputs,
    ``last_hidden_state`` computed by a compiled OpenVINO model."""

    def __init__(self, compiled: Any, input_names: list[str], config: Any):
        super().__init__()
        self.compiled, self.input_names, self.config = compiled, input_names, config
        self.device = torch.device("cpu")

    def forward(self, **features: Any) -> dict[str, torch.Tensor]:
        outputs = self.compiled({name: features[name].cpu().numpy() for name in self.input_names})
        return {"last_hidden_state": torch.from_numpy(outputs[0].copy())}


def compile_onnx(onnx_path: Path) -> Any:
    """The exported transformer compiled for the CPU, in bf16 where the CPU has bf16 instructions."""
    hint = "bf16" if openvino_precision() == "bfloat16" else "f32"
    return _require("openvino").Core().compile_model(str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": hint})


def to_openvino(sentence_model: Any, onnx_path: Path) -> Any:
    """Replace the model's transformer by its OpenVINO compilation (exported to ``onnx_path`` first when
    that file does not exist yet); returns the same model object."""
    _require("openvino")
    transformer = sentence_model[0]
    if not isinstance(getattr(transformer, "model", None), torch.nn.Module):
        raise ModelError("encode_backend openvino needs a model whose first module is a Transformer; "
                         "use encode_backend fast")
    names = _input_names(sentence_model)
    fresh = not onnx_path.exists()
    if fresh:
        export_onnx(sentence_model, onnx_path)
    try:
        compiled = compile_onnx(onnx_path)
    except Exception as exc:
        if fresh:
            raise ModelError(f"OpenVINO could not compile the model exported to {onnx_path} ({first_line(exc)}); "
                             "use encode_backend fast") from None
        onnx_path.unlink(missing_ok=True)  # a damaged file where the export is kept: export anew, once
        return to_openvino(sentence_model, onnx_path)
    transformer.model = OpenVINOTransformer(compiled, names, transformer.model.config)
    return sentence_model


# A remembered openvino choice can encode without sentence-transformers, whose import is most of a
# short process's start-up (3 s of an `embed` of 2,000 texts that takes 10). That holds only for the
# plainest pipeline, and only once the model's own encode has been seen to give the same bits.

POOLING_FLAGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


class StandalonePipeline(NamedTuple):
    """What a model folder's modules do around the transformer, where the standalone encoder can do it."""

    tokenizer_file: Path
    pad_token: str
    pooling: str  # "mean" or "cls"
    normalize: bool


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def standalone_pipeline(folder: Path) -> StandalonePipeline | None:
    """The pipeline of a Sentence-Transformers folder whose modules are a Transformer with a fast
    tokenizer, mean or CLS pooling over every token and an optional Normalize; None for any other."""
    try:
        modules = [(entry["type"].rsplit(".", 1)[-1], folder / entry["path"]) for entry in _json(folder / "modules.json")]
        kinds = [kind for kind, _ in modules]
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            return None
        transformer, pooling = modules[0][1], modules[1][1]
        settings = _json(transformer / "sentence_bert_config.json")
        tokenizer_settings = _json(transformer / "tokenizer_config.json")
        flags = _json(pooling / "config.json")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    modes = [mode for flag, mode in POOLING_FLAGS.items() if flags.get(flag)]
    others = [key for key, on in flags.items() if key.startswith("pooling_mode") and on and key not in POOLING_FLAGS]
    pad = tokenizer_settings.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    plain = (len(modes) == 1 and not others and flags.get("include_prompt", True)
             and not settings.get("do_lower_case", False) and isinstance(pad, str)
             and tokenizer_settings.get("padding_side", "right") == "right"
             and tokenizer_settings.get("truncation_side", "right") == "right"
             and (transformer / "tokenizer.json").is_file())
    return StandalonePipeline(transformer / "tokenizer.json", pad, modes[0], len(kinds) == 3) if plain else None


class StandaloneEncoder:
    """``encode`` as a Sentence-Transformers model with an OpenVINO transformer computes it (the same
    length-sorted batches, tokenization, pooling and normalization), from the tokenizers package and
    the compiled transformer alone."""

    device = torch.device("cpu")

    def __init__(self, pipeline: StandalonePipeline, compiled: Any, max_seq_length: int):
        from tokenizers import Tokenizer

        self.pipeline, self.compiled = pipeline, compiled
        self.input_names = [port.get_any_name() for port in compiled.inputs]
        self.tokenizer = Tokenizer.from_file(str(pipeline.tokenizer_file))
        self.tokenizer.enable_truncation(max_length=max_seq_length)
        pad_id = self.tokenizer.token_to_id(pipeline.pad_token)
        if pad_id is None:
            raise ModelError(f"the tokenizer has no pad token '{pipeline.pad_token}'")
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=pipeline.pad_token)

    @classmethod
    def load(cls, folder: Path, onnx_path: Path, max_seq_length: int) -> StandaloneEncoder | None:
        """The encoder for ``folder`` compiled from ``onnx_path``; None where either cannot serve."""
        pipeline = standalone_pipeline(folder)
        if pipeline is None or not onnx_path.is_file():
            return None
        return cls(pipeline, compile_onnx(onnx_path), max_seq_length)

    def _batch(self, texts: list[str]) -> torch.Tensor:
        encodings = self.tokenizer.encode_batch(texts)
        feeds = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
                 "token_type_ids": [e.type_ids for e in encodings]}
        tokens = torch.from_numpy(self.compiled({name: np.asarray(feeds[name], dtype=np.int64)
                                                 for name in self.input_names})[0].copy())
        mask = torch.tensor(feeds["attention_mask"], dtype=torch.int64)
        if self.pipeline.pooling == "cls":
            pooled = tokens[:, 0]
        else:  # the operations of sentence-transformers' mean pooling, for the same bits
            weights = mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * weights).sum(dim=1, dtype=torch.float32) / torch.clamp(
                weights.sum(dim=1, dtype=torch.float32), min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=-1) if self.pipeline.normalize else pooled

    def encode(self, sentences: Any, batch_size: int = 32, prompt: str | None = None, **_: Any) -> torch.Tensor:
        if isinstance(sentences, str):  # one text: one vector, as the model's encode gives it
            return self.encode([sentences], batch_size, prompt)[0]
        texts = list(sentences)
        order = np.argsort([-len(text) for text in texts])
        rows: list[torch.Tensor] = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                rows.extend(self._batch([(prompt or "") + texts[i] for i in order[start : start + batch_size]]))
        return torch.stack([rows[i] for i in np.argsort(order)]) if rows else torch.empty(0)
