"""The recipe that follows from the run's size: what is derived, and that explicit values win."""

from __future__ import annotations

import pytest
import torch

from sentence_sae import SAEConfig
from sentence_sae.corpus import Corpus
from sentence_sae.embeddings import encode_texts
from sentence_sae.errors import ConfigError
from sentence_sae.recipe import RunSize, batch_size_for, fill_recipe
from sentence_sae.steering import SparsityCoefficient, l0_miss


def test_the_batch_grows_as_the_square_root_of_the_run():
    assert {examples: batch_size_for(examples) for examples in (2_000, 5_000, 20_000, 60_000, 100_000, 300_000,
                                                                  10**7)} == {
        2_000: 16, 5_000: 16, 20_000: 32, 60_000: 64, 100_000: 64, 300_000: 128, 10**7: 256}
    assert batch_size_for(None) == 256  # a hub stream of unknown length
    # ...and while a pass still takes 128 steps: 20 passes over 5,000 texts want small batches
    assert batch_size_for(100_000, training_texts=2_233) == 16  # python-docs
    assert batch_size_for(100_000, training_texts=5_000) == 32
    assert batch_size_for(100_000, training_texts=10_000) == 64
    assert batch_size_for(100_000, training_texts=115_000) == 64
    assert batch_size_for(1_000_000) == 256 and batch_size_for(1_000_000, training_texts=20_000) == 128


def test_unset_values_are_derived_and_set_ones_win():
    derived = fill_recipe(SAEConfig(), RunSize(20_000))
    assert (derived.batch_size, derived.lr, derived.lr_warmup_steps) == (32, 3e-3, 31)  # 5% of 625 steps
    # longer runs take smaller steps: 20 passes over 5,000 texts at batch 32 are 3,125 steps
    # ...when the encoder starts small (topk, batchtopk); at full scale (the others) 3e-3 holds
    long = fill_recipe(SAEConfig(), RunSize(100_000, training_texts=5_000), small_encoder_start=True)
    assert (long.batch_size, long.lr) == (32, pytest.approx(3e-3 * (1_000 / 3_125) ** 0.5, rel=0.01))
    assert fill_recipe(SAEConfig(), RunSize(100_000, training_texts=5_000)).lr == 3e-3
    given = fill_recipe(SAEConfig(batch_size=64, lr=1e-4, lr_warmup_steps=0), RunSize(20_000))
    assert (given.batch_size, given.lr, given.lr_warmup_steps) == (64, 1e-4, 0)
    assert fill_recipe(SAEConfig(), RunSize(20_000), world_size=2).batch_size == 32
    with pytest.raises(ConfigError, match="divisible by the number of processes"):
        fill_recipe(SAEConfig(batch_size=33), RunSize(20_000), world_size=2)


def test_the_coefficient_is_steered_only_without_l1_coeff_and_after_its_warm_up():
    steered = SparsityCoefficient(0.1, target=16.0, warmup_frac=0.05)
    assert not steered.due(10, 1_000) and steered.due(60, 1_000)  # warm-up: the first 50 steps
    for _ in range(50):
        steered.record(64.0, 1_000)  # far too dense: the coefficient rises
    assert steered(500, 1_000) > 0.1 * 1.5
    for _ in range(200):
        steered.record(4.0, 1_000)  # far too sparse: it falls below where it started
    assert steered(500, 1_000) < 0.1
    fixed = SparsityCoefficient(0.1, target=None, warmup_frac=0.05)
    assert not fixed.due(500, 1_000) and fixed(500, 1_000) == 0.1


def test_encoding_reports_progress_and_gives_the_same_embeddings(model, docs_texts):
    texts = docs_texts[:300]
    counts: list[int] = []
    grouped = encode_texts(model, texts, batch_size=16, progress=counts.append)
    assert sum(counts) == 300 and len(counts) == 3  # groups of 8 model batches
    torch.testing.assert_close(grouped, encode_texts(model, texts, batch_size=16), rtol=1e-4, atol=1e-5)


def test_the_corpus_shows_encoding_progress_only_for_rows_not_cached(tmp_path, model, jsonl_file):
    from helpers import make_cfg

    cfg = make_cfg(tmp_path, model, dataset_path=str(jsonl_file))
    corpus = Corpus(model, cfg)
    corpus.show_progress(40)
    assert corpus._bar is not None and corpus._bar.total == 60  # the model call holds all 60 rows
    corpus.embeddings(0, 60)
    assert corpus._bar.n == 60
    corpus.stop_progress()
    corpus.close()
    again = Corpus(model, cfg)
    again.show_progress(40)
    assert again._bar is None  # everything is cached: nothing to wait for


def test_runs_saved_before_the_recipe_resume_as_they_trained(tmp_path):
    from sentence_sae import create_sae
    from sentence_sae.checkpoint import config_from_saved, saelens_cfg

    data = saelens_cfg(create_sae(SAEConfig(act_size=8, dict_size=16, top_k=4, device="cpu")))
    assert config_from_saved(data, tmp_path).num_val_examples is None  # saved now: derived again, the same way
    for key in ("num_val_examples", "max_epochs", "target_l0"):
        del data["sentence_sae"]["config"][key]
    old = config_from_saved(data, tmp_path)
    assert old.num_val_examples == 0 and old.max_epochs >= 10**9  # every text trained on, no limit on passes


def test_one_knob_sets_the_sparsity_of_every_variant(tmp_path):
    from sentence_sae import EmbeddingStore, create_sae
    from sentence_sae.trainer import Trainer

    def trainer(**values) -> Trainer:
        cfg = SAEConfig(act_size=8, dict_size=32, device="cpu", wandb_mode="disabled", output_dir=str(tmp_path),
                        num_eval_examples=10, **values)
        return Trainer(create_sae(cfg), EmbeddingStore(torch.randn(400, 8), cfg), cfg)

    assert trainer(sae_type="gated", top_k=12).sparsity.target == 12  # target_l0 unset: top_k
    assert trainer(sae_type="jumprelu", top_k=12, target_l0=20).sparsity.target == 20
    assert trainer(sae_type="vanilla", l1_coeff=0.3).sparsity.target is None  # a set coefficient stays fixed
    assert trainer(sae_type="batchtopk").sparsity.target is None  # k-based: top_k itself
    derived = trainer(sae_type="topk")
    assert derived.cfg.batch_size == 16 and derived.cfg.num_val_examples == 39  # 390 texts: at most 10% (64 is too many)


def test_an_l0_the_run_cannot_reach_is_said_at_its_end(tmp_path, capsys):
    """jumprelu asked for 30 of its 32 features on texts about half of whose pre-activations are
    negative: even at zero threshold it cannot fire that often, and the run says so."""
    from sentence_sae import EmbeddingStore, create_sae
    from sentence_sae.trainer import Trainer

    torch.manual_seed(0)
    cfg = SAEConfig(act_size=8, dict_size=32, device="cpu", wandb_mode="disabled", output_dir=str(tmp_path),
                    num_eval_examples=10, sae_type="jumprelu", target_l0=30, num_examples=800)
    result = Trainer(create_sae(cfg), EmbeddingStore(torch.randn(400, 8), cfg), cfg).train()
    assert result.metrics["val_l0"] < 0.85 * 30
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: jumprelu ends at L0")]
    assert warning == [f"warning: jumprelu ends at L0 {result.metrics['val_l0']:.1f} on the validation texts, "
                       f"{1 - result.metrics['val_l0'] / 30:.0%} below target_l0=30: fewer of its features fire "
                       "on unseen texts than asked, and no threshold or coefficient raises that; it happens on a "
                       "corpus that is small next to dict_size (the features fit the training texts closely): "
                       "more texts or a smaller dict_size get closer"]
    # within tolerance: nothing to say
    assert l0_miss("jumprelu", 27.0, 30, False) is None and l0_miss("jumprelu", 34.4, 30, False) is None
    assert l0_miss("batchtopk", 34.4, 30, True).startswith("warning: batchtopk ends at L0 34.4 on the validation "
                                                           "texts, 15% above top_k=30")
