"""The OpenVINO encoder: a Sentence-Transformers model whose transformer runs in OpenVINO.

The transformer is exported once per model with ``torch.onnx.export`` (the ONNX file is kept under the
cache root, named by the weights' fingerprint) and compiled for the CPU, in bf16 where the CPU has
bf16 instructions. Only the transformer moves: tokenization, truncation, prompts, pooling and
normalization stay the model's own, so ``model.encode`` means what it meant. No optimum needed.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

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


def to_openvino(sentence_model: Any, onnx_path: Path) -> Any:
    """Replace the model's transformer by its OpenVINO compilation (exported to ``onnx_path`` first when
    that file does not exist yet); returns the same model object."""
    openvino = _require("openvino")
    transformer = sentence_model[0]
    if not isinstance(getattr(transformer, "model", None), torch.nn.Module):
        raise ModelError("encode_backend openvino needs a model whose first module is a Transformer; "
                         "use encode_backend fast")
    names = _input_names(sentence_model)
    hint = "bf16" if openvino_precision() == "bfloat16" else "f32"
    fresh = not onnx_path.exists()
    if fresh:
        export_onnx(sentence_model, onnx_path)
    try:
        compiled = openvino.Core().compile_model(str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": hint})
    except Exception as exc:
        if fresh:
            raise ModelError(f"OpenVINO could not compile the model exported to {onnx_path} ({first_line(exc)}); "
                             "use encode_backend fast") from None
        onnx_path.unlink(missing_ok=True)  # a damaged file where the export is kept: export anew, once
        return to_openvino(sentence_model, onnx_path)
    transformer.model = OpenVINOTransformer(compiled, names, transformer.model.config)
    return sentence_model
