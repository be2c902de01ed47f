"""Interop with SAELens (both directions, with the sae-lens package) and the hub command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import make_cfg
from sentence_sae import create_sae, load_sae, save_sae
from sentence_sae.activation_store import EmbeddingStore
from sentence_sae.hub import model_card
from sentence_sae.trainer import Trainer

sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is not installed (pip install -e '.[test]')")


@pytest.mark.parametrize("sae_type, unit_norm", [("vanilla", False), ("topk", False), ("batchtopk", False),
                                                 ("jumprelu", False), ("topk", True), ("matryoshka", False),
                                                 ("gated", False)])
def test_saved_sae_loads_in_saelens_and_reconstructs_the_same(tmp_path, model, docs_split, sae_type, unit_norm):
    train, held_out = docs_split
    cfg = make_cfg(tmp_path, model, sae_type=sae_type, dict_size=256, top_k=16, num_examples=8000,
                   input_unit_norm=unit_norm)
    sae = create_sae(cfg)
    result = Trainer(sae, EmbeddingStore(train, cfg, held_out=held_out), cfg).train()
    theirs = sae_lens.SAE.load_from_disk(result.run_dir, device="cpu")
    saved = json.loads((result.run_dir / "cfg.json").read_text())
    expected_architecture = {"vanilla": "standard", "topk": "topk", "gated": "gated"}.get(sae_type, "jumprelu")
    assert saved["architecture"] == expected_architecture == theirs.cfg.architecture()
    assert saved["normalize_activations"] == ("layer_norm" if unit_norm else "none")
    assert saved["metadata"]["model_name"] == cfg.model_name
    sae.eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(held_out), sae.encode(held_out), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(theirs(held_out), sae.reconstruct(held_out), atol=1e-5, rtol=1e-4)
    if sae_type in ("batchtopk", "matryoshka"):
        torch.testing.assert_close(theirs.threshold, sae.threshold)  # the learned scalar, per feature


@pytest.mark.parametrize("kind, options", [
    ("standard", {}), ("topk", {"k": 12}), ("jumprelu", {}), ("standard", {"normalize_activations": "layer_norm"}),
    ("topk", {"k": 12, "apply_b_dec_to_input": False}), ("gated", {}), ("gated", {"apply_b_dec_to_input": False}),
])
def test_saelens_sae_loads_in_sentence_sae(tmp_path, docs_split, kind, options):
    _, held_out = docs_split
    classes = {"standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
               "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig),
               "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig),
               "gated": (sae_lens.GatedSAE, sae_lens.GatedSAEConfig)}
    sae_class, cfg_class = classes[kind]
    theirs = sae_class(cfg_class(d_in=384, d_sae=192, **options))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            param.copy_(torch.full(param.shape, 0.03) if name == "threshold"
                        else 0.05 * torch.randn(param.shape, generator=generator))
    theirs.save_model(str(tmp_path))
    ours = load_sae(tmp_path)
    assert ours.architecture == {"standard": "vanilla"}.get(kind, kind) and ours.d_sae == 192
    with torch.no_grad():
        torch.testing.assert_close(ours.reconstruct(held_out), theirs(held_out), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.encode(held_out), theirs.encode(held_out), atol=1e-5, rtol=1e-4)


def test_push_without_network_fails_with_one_line(tmp_path, model):
    cfg = make_cfg(tmp_path, model, dict_size=64, top_k=4)
    save_sae(create_sae(cfg), tmp_path / "run")
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = subprocess.run([sys.executable, "-m", "sentence_sae", "push", str(tmp_path / "run"), "someone/sae"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not upload" in lines[0] and "huggingface-cli login" in lines[0]
    card = model_card(tmp_path / "run", "someone/sae")
    assert "load_sae(snapshot_download(\"someone/sae\"))" in card and "SAE.load_from_disk" in card
    assert "| `dict_size` | `64` |" in card
    # a folder trained elsewhere (no metrics.jsonl) has no training-window dead fraction: eval says why
    from sentence_sae.evaluation import training_dead_frac

    assert training_dead_frac(tmp_path / "run") is None


def test_topk_sae_exports_as_a_sparse_encoder_with_the_same_codes(tmp_path, model, docs_texts, docs_split):
    from sentence_transformers import SparseEncoder

    from sentence_sae import text_codes
    from sentence_sae.export import export_sparse_encoder

    cfg = make_cfg(tmp_path, model, sae_type="topk", dict_size=512, top_k=16, num_examples=4096)
    run_dir = Trainer(create_sae(cfg), EmbeddingStore(docs_split[0], cfg), cfg).train().run_dir
    out = tmp_path / "sparse"
    summary = export_sparse_encoder(run_dir, out)
    assert summary["normalize"] is True and summary["k"] == 16  # topk standardizes its input by default
    sparse = SparseEncoder(str(out), device="cpu")
    texts = docs_texts[:40:4] + ["a text the SAE never saw: the chess engine plays well"]
    got = sparse.encode(texts, convert_to_tensor=True).to_dense()
    want = text_codes(load_sae(run_dir), texts, model)
    assert got.shape == want.shape == (len(texts), 512)
    assert torch.equal(got > 0, want > 0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(Exception, match="exists and is not empty"):
        export_sparse_encoder(run_dir, out)


@pytest.mark.slow
@pytest.mark.parametrize("sae_type", ["batchtopk", "matryoshka", "jumprelu", "gated", "vanilla"])
def test_every_variant_exports_as_a_sparse_encoder_with_its_own_codes(tmp_path, model, docs_texts, docs_split, sae_type):
    """Thresholds, gates and plain ReLUs go through SAEEncoder, which applies the SAE's own encode."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.util import semantic_search

    from sentence_sae import text_codes

    cfg = make_cfg(tmp_path, model, sae_type=sae_type, dict_size=256, top_k=8, num_examples=2048)
    run_dir = Trainer(create_sae(cfg), EmbeddingStore(docs_split[0], cfg), cfg).train().run_dir
    out = tmp_path / "sparse"
    proc = subprocess.run([sys.executable, "-m", "sentence_sae", "export", str(run_dir), "--to", "sparse-encoder",
                           str(out)], capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"}, timeout=900)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["module"] == "SAEEncoder" and summary["needs_sentence_sae"] and summary["architecture"] == sae_type
    with pytest.raises(ValueError, match="trust_remote_code=True"):  # the class is sentence-sae's, not theirs
        SparseEncoder(str(out), device="cpu")
    sparse = SparseEncoder(str(out), device="cpu", trust_remote_code=True)
    texts = docs_texts[:40:4] + ["a text the SAE never saw: the chess engine plays well"]
    got = sparse.encode(texts, convert_to_tensor=True).to_dense()
    want = text_codes(load_sae(run_dir), texts, model)
    assert got.shape == want.shape == (len(texts), 256) and 0 < (want > 0).sum(1).float().mean() < 256
    assert torch.equal(got > 0, want > 0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    hits = semantic_search(sparse.encode(texts[:1], convert_to_tensor=True), sparse.encode(texts, convert_to_tensor=True),
                           top_k=1)
    assert hits[0][0]["corpus_id"] == 0  # a text is its own nearest neighbour in code space
