"""Training on real MiniLM embeddings of real text: quality bars, saving, logging."""

from __future__ import annotations

import json
import time

import pytest
import torch
from helpers import make_cfg, pca_fvu

from sentence_sae import ActivationsStoreSBERT, create_sae, get_default_cfg, load_sae, post_init_cfg
from sentence_sae.activation_store import EmbeddingStore
from sentence_sae.metrics import reconstruction_metrics
from sentence_sae.schedules import (RELATIVE_CLIP_DECAY, GradientClipper, clip_gradients, lr_multiplier,
                                   sparsity_multiplier, warmup_top_k)
from sentence_sae.steering import l0_tolerance
from sentence_sae.trainer import Trainer
from sentence_sae.training import load_trainer_state

VARIANTS = ["vanilla", "topk", "batchtopk", "jumprelu", "matryoshka", "gated"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model, docs_split):
    """One SAE per variant, trained on 2,351 corpus embeddings (118 of them set aside for validation) for
    up to 60,000 examples (20 passes, max_epochs)."""
    train, held_out = docs_split
    runs = {}
    for sae_type in VARIANTS:
        tmp = tmp_path_factory.mktemp(sae_type)
        # batch 64, not the recipe's 16 for 2,233 texts: a quarter of the steps keeps the suite quick
        cfg = make_cfg(tmp, model, sae_type=sae_type, dict_size=1024, num_examples=60_000, perf_log_freq=100,
                       batch_size=64)
        sae = create_sae(cfg)
        store = EmbeddingStore(train, cfg, held_out=held_out)
        result = Trainer(sae, store, cfg).train()
        runs[sae_type] = (sae, result, store)
    return runs


@pytest.mark.parametrize("sae_type", VARIANTS)
def test_each_variant_beats_the_best_linear_code_of_its_size(trained, docs_split, sae_type):
    """Bar: held-out FVU below that of PCA with as many components as the SAE's L0. An SAE whose
    L0 active features reconstruct worse than the best fixed L0-dimensional subspace has learned
    no useful dictionary. (On this corpus: PCA-32 FVU 0.45; the TopK SAE reaches 0.21, under half of it.)"""
    sae, result, _ = trained[sae_type]
    train, held_out = docs_split
    l0 = result.metrics["l0"]
    # the L0 asked for (top_k 32; target_l0 follows it), on texts the SAE never trained on
    tolerance = l0_tolerance(sae_type in ("topk", "batchtopk", "matryoshka"))
    assert abs(l0 - 32) <= tolerance * 32, f"{sae_type} held-out L0 {l0} is not within {tolerance:.0%} of 32"
    val_l0 = result.metrics["val_l0"]  # what the end-of-run warning reads (none here)
    assert abs(val_l0 - 32) <= tolerance * 32, f"{sae_type} validation L0 {val_l0} is not within {tolerance:.0%} of 32"
    baseline = pca_fvu(train, held_out, k=round(l0))
    assert result.metrics["fvu"] < 0.7 * baseline, (sae_type, result.metrics["fvu"], baseline)
    assert result.metrics["cos"] > 0.85
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(sae.d_sae), rtol=1e-5, atol=1e-5)


def test_training_serves_the_planned_examples_and_evaluates_on_held_out_only(trained, docs_split):
    _, result, store = trained["topk"]
    # 60,000 examples would be about 27 passes over the 2,233 training texts: max_epochs stops at 20
    assert result.examples == store.examples_served == 20 * store.n_train < 60_000
    assert "(max_epochs)" in result.end_reason
    assert result.steps == -(-result.examples // store.batch_size)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if "eval/fvu" in row]
    assert [row["step"] for row in evals][:2] == [100, 200]
    assert evals[-1]["step"] == result.steps and evals[-1]["eval/fvu"] == pytest.approx(result.metrics["fvu"])
    assert all("train/loss" in row for row in rows[:-1])
    assert rows[-2]["train/lr"] < rows[len(rows) // 2]["train/lr"]  # decayed at the end


@pytest.mark.parametrize("sae_type", VARIANTS)
def test_save_then_load_gives_identical_outputs(trained, docs_split, sae_type):
    sae, result, _ = trained[sae_type]
    _, held_out = docs_split
    loaded = load_sae(result.run_dir)
    assert type(loaded) is type(sae) and not loaded.training
    sae.eval()
    torch.testing.assert_close(loaded.encode(held_out), sae.encode(held_out), rtol=0, atol=0)
    torch.testing.assert_close(loaded.reconstruct(held_out), sae.reconstruct(held_out), rtol=0, atol=0)
    files = sorted(p.name for p in result.run_dir.iterdir())
    assert {"cfg.json", "sae_weights.safetensors", "metrics.jsonl"} <= set(files)


def test_batchtopk_codes_are_batch_independent_after_training(trained, docs_split):
    sae, result, _ = trained["batchtopk"]
    _, held_out = docs_split
    sae.eval()
    together = sae.encode(held_out)
    alone = torch.cat([sae.encode(held_out[i : i + 1]) for i in range(len(held_out))])
    torch.testing.assert_close(alone, together)
    shuffled = sae.encode(held_out.flip(0)).flip(0)
    torch.testing.assert_close(shuffled, together)
    # The threshold estimate targets L0 = k on the training distribution. Held-out texts of this
    # small corpus fire a few more features (on 100k WordNet texts held-out L0 is 32.4 for k 32).
    train, _ = docs_split
    train_l0 = reconstruction_metrics(sae, train)["l0"]
    assert 0.8 * 32 <= train_l0 <= 1.2 * 32, train_l0
    assert 0.6 * 32 <= result.metrics["l0"] <= 1.5 * 32, result.metrics["l0"]


@pytest.mark.slow
def test_larger_jumprelu_coefficient_gives_lower_l0(tmp_path, model, docs_split):
    train, held_out = docs_split
    l0 = {}
    for coeff in (0.001, 0.01):
        cfg = make_cfg(tmp_path / str(coeff), model, sae_type="jumprelu", dict_size=512, l1_coeff=coeff,
                       num_examples=30_000)
        sae = create_sae(cfg)
        Trainer(sae, EmbeddingStore(train, cfg, held_out=held_out), cfg).train()
        l0[coeff] = reconstruction_metrics(sae, held_out)["l0"]
    assert l0[0.01] < 0.75 * l0[0.001], l0  # the earlier script gave the same L0 for any coefficient


def test_input_unit_norm_metrics_are_on_the_original_embeddings(tmp_path, model, docs_split):
    train, held_out = docs_split
    cfg = make_cfg(tmp_path, model, dict_size=512, num_examples=20_000, input_unit_norm=True)
    sae = create_sae(cfg)
    result = Trainer(sae, EmbeddingStore(train, cfg, held_out=held_out), cfg).train()
    sae.eval()  # the held-out evaluation codes with the BatchTopK threshold, as in inference
    x = held_out.double()
    reconstruction = sae.reconstruct(held_out).detach().double()
    fvu = ((reconstruction - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
    assert result.metrics["fvu"] == pytest.approx(fvu, rel=1e-6)
    assert 0.5 < reconstruction.norm(dim=-1).mean() < 1.5  # the unit-norm space; standardized has norm 19.6
    assert fvu < 0.5


def test_schedules():
    assert lr_multiplier(0, 100, 10, 0.2) == pytest.approx(0.1)
    assert lr_multiplier(50, 100, 10, 0.2) == 1.0
    assert lr_multiplier(90, 100, 10, 0.2) == pytest.approx(0.5)
    assert lr_multiplier(99, 100, 10, 0.2) == pytest.approx(0.05)
    assert lr_multiplier(500, None, 10, 0.2) == 1.0
    assert sparsity_multiplier(0, 100, 0.1) == pytest.approx(0.1)
    assert sparsity_multiplier(50, 100, 0.1) == 1.0
    assert [warmup_top_k(step, 100, 32, 0.05, 8) for step in (0, 1, 4, 5, 99)] == [256, 211, 77, 32, 32]
    assert warmup_top_k(0, None, 32, 0.05, 8) == warmup_top_k(0, 100, 32, 0.0, 8) == 32


@pytest.mark.parametrize("max_norm", [0.5, 2.0, 5.0, None])  # clipped; just below; far below; no clipping
def test_gradient_clipping_gives_clip_grad_norm_s_gradients_and_norm(max_norm):
    generator = torch.Generator().manual_seed(3)
    ours, torchs = ([torch.nn.Parameter(torch.zeros(5, 3)), torch.nn.Parameter(torch.zeros(7))] for _ in range(2))
    grads = [torch.randn(p.shape, generator=generator) for p in ours]
    scale = 1.95 / torch.cat([g.flatten() for g in grads]).norm()  # 2.0 is just above the norm
    for mine, theirs, grad in zip(ours, torchs, grads):
        mine.grad, theirs.grad = grad * scale, grad * scale
    total = torch.cat([p.grad.flatten() for p in ours]).norm().item()
    norm = clip_gradients(ours, max_norm)
    if max_norm is None:
        assert norm != norm and all(torch.equal(a.grad, b.grad) for a, b in zip(ours, torchs))
        return
    assert norm == pytest.approx(torch.nn.utils.clip_grad_norm_(torchs, max_norm).item(), rel=1e-7)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, torchs))  # bit for bit
    clipped = torch.cat([p.grad.flatten() for p in ours]).norm().item()
    assert clipped == pytest.approx(min(total, max_norm), rel=1e-5)


def test_relative_clipping_cuts_only_steps_larger_than_the_recent_ones_and_resumes_its_mean():
    """Norms 2, 2, 2 pass untouched; a step of 10 is cut to 1.5 x the running mean; a clipper
    restored from the state continues exactly."""
    parameter = torch.nn.Parameter(torch.zeros(4))

    def step(clipper: GradientClipper, norm: float) -> tuple[float, float]:
        parameter.grad = torch.tensor([norm, 0.0, 0.0, 0.0])
        return clipper([parameter]), parameter.grad.norm().item()

    clipper = GradientClipper(1.5, relative=True)
    assert [step(clipper, 2.0) for _ in range(3)] == [(2.0, 2.0)] * 3
    saved = clipper.state_dict()
    seen, after = step(clipper, 10.0)
    assert seen == 10.0 and after == pytest.approx(1.5 * 2.0)
    mean = RELATIVE_CLIP_DECAY * 2.0 + (1 - RELATIVE_CLIP_DECAY) * 3.0  # the mean follows the clipped norm
    assert clipper.recent_norm == pytest.approx(mean)
    restored = GradientClipper(1.5, relative=True)
    restored.load_state_dict(saved)
    assert step(restored, 10.0) == (seen, after) and restored.recent_norm == clipper.recent_norm
    assert step(GradientClipper(1.5), 10.0) == (10.0, pytest.approx(1.5))  # fixed: at max_norm itself
    assert step(GradientClipper(None, relative=True), 10.0)[1] == 10.0


@pytest.mark.parametrize("variant,relative", [("topk", True), ("batchtopk", True), ("matryoshka", False),
                                              ("vanilla", False), ("gated", False), ("jumprelu", False)])
def test_each_variant_records_its_clipping_and_an_explicit_choice_wins(tmp_path, variant, relative):
    embeddings = torch.randn(512, 16, generator=torch.Generator().manual_seed(0))
    for asked, expected in ((None, relative), (not relative, not relative)):
        cfg = post_init_cfg(get_default_cfg().replace(sae_type=variant, dict_size=32, top_k=4, num_examples=64,
                                                      relative_grad_clip=asked, output_dir=str(tmp_path),
                                                      wandb_mode="disabled"), embedding_width=16)
        trainer = Trainer(create_sae(cfg), EmbeddingStore(embeddings, cfg), cfg)
        assert trainer.cfg.relative_grad_clip is expected and trainer.clipper.relative is expected
        assert trainer.sae.cfg.relative_grad_clip is expected  # saved with the run


def test_k_based_training_starts_dense_and_ends_at_top_k(tmp_path, model, docs_split):
    train, held_out = docs_split
    cfg = make_cfg(tmp_path, model, sae_type="topk", dict_size=256, top_k=8, num_examples=32 * 256,
                   batch_size=256, perf_log_freq=1, top_k_warmup_frac=0.25, top_k_warmup_factor=4)
    trainer = Trainer(create_sae(cfg), EmbeddingStore(train, cfg, held_out=held_out), cfg)
    result = trainer.train()
    l0 = [row["train/l0"] for row in map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines())
          if "train/l0" in row]
    assert len(l0) == 32 and 24 < l0[0] <= 32 and 14 < l0[4] <= 20  # k = 32, then 20 at step 4 of 8
    assert all(7 < value <= 8 for value in l0[8:])
    assert trainer.k() == 8 and 7 < result.metrics["l0"] <= 8  # inference uses top_k


def test_a_run_ends_its_metrics_with_the_time_of_each_phase(tmp_path, model, jsonl_file):
    from sentence_sae import train
    from sentence_sae.tracking import PHASES

    cfg = make_cfg(tmp_path, model, dataset_path=str(jsonl_file), dict_size=128, num_epochs=1, num_examples=None,
                   model_batch_size=8, num_batches_in_buffer=4, batch_size=8, num_eval_examples=10, checkpoint_freq=3,
                   use_cache=False)
    started = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    phases = {name: rows[-1][f"phase/{name}_s"] for name in PHASES}
    assert rows[-1]["step"] == result.steps and "eval/fvu" in rows[-1]  # logged with the final metrics
    assert all("phase/train_s" not in row for row in rows[:-1])
    # start-up loads nothing here (the model is cached in the process) but opens the data; the first batch
    # waits for texts to be encoded; evaluation and saving write and read real files
    assert all(seconds > 0 for seconds in phases.values()), phases
    assert sum(phases.values()) <= wall  # disjoint parts of the train() call


def test_train_sae_from_text_logs_to_a_wandb_offline_run(tmp_path, model, jsonl_file):
    cfg = make_cfg(tmp_path, model, dataset_path=str(jsonl_file), wandb_mode="offline", dict_size=256, num_val_examples=0,
                   model_batch_size=8, num_batches_in_buffer=4, batch_size=8, num_eval_examples=10,
                   num_epochs=1, num_examples=None, perf_log_freq=2, checkpoint_freq=2)
    trainer = Trainer(create_sae(cfg), ActivationsStoreSBERT(model, cfg), cfg)
    assert trainer.logger.wandb_run.offline and trainer.logger.wandb_run.config["dict_size"] == 256
    result = trainer.train()
    assert result.examples == 50 and result.steps == 7
    assert result.end_reason.startswith("dataset exhausted")
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {row["step"] for row in rows} == set(range(1, 8)) and "eval/fvu" in rows[1]
    # wandb finished the run cleanly, in the folder layout 'wandb sync' documents
    # (wandb/offline-run-<time>-<id>), with the id a resumed run continues.
    assert trainer.logger.exit_code == 0 and trainer.logger.wandb_run is None
    assert list(result.run_dir.glob(f"wandb/offline-run-*-{trainer.logger.wandb_id}/run-*.wandb"))
    assert load_trainer_state(result.run_dir / "checkpoints" / "step_0000006")["wandb_id"] == trainer.logger.wandb_id
    checkpoints = sorted(p.name for p in (result.run_dir / "checkpoints").iterdir())
    assert checkpoints == ["step_0000004", "step_0000006"]  # every 2 steps, the last two kept
    assert load_sae(result.run_dir / "checkpoints" / "step_0000006").d_sae == 256


def test_resume_state_holds_the_trainers_dead_feature_counts_and_reads_the_older_format(tmp_path, model, docs_split):
    """Dead-feature counts belong to the trainer's state; a checkpoint of format 1 kept them among the
    SAE's buffers (``examples_since_fired``), one of format 3 without the firing frequencies, and
    both still resume with them."""
    train, held_out = docs_split
    cfg = make_cfg(tmp_path, model, sae_type="topk", dict_size=256, top_k=8, batch_size=64)
    trainer = Trainer(create_sae(cfg), EmbeddingStore(train, cfg, held_out=held_out), cfg)
    for start in range(0, 256, 64):
        trainer.training_step(train[start : start + 64])
    state = trainer.state_dict()
    since_fired = state["dead_features"]["examples_since_fired"]
    assert "examples_since_fired" not in state["sae"] and since_fired.max() > 0
    old = {**state, "format_version": 1, "sae": {**state["sae"], "examples_since_fired": since_fired}}
    del old["dead_features"]
    format_3 = {**state, "format_version": 3, "dead_features": since_fired}
    for saved in (state, old, format_3):
        resumed = Trainer(create_sae(cfg), EmbeddingStore(train, cfg, held_out=held_out), cfg,
                          run_dir=trainer.run_dir, resume_state=saved)
        torch.testing.assert_close(resumed.dead_features.examples_since_fired, since_fired)
        assert resumed.step == 4
    resumed = Trainer(create_sae(cfg), EmbeddingStore(train, cfg, held_out=held_out), cfg,
                      run_dir=trainer.run_dir, resume_state=state)  # the firing frequencies resume too
    before, after = trainer.dead_features.densities(), resumed.dead_features.densities()
    torch.testing.assert_close(after.densities, before.densities)
    assert (after.first_example, after.last_example) == (before.first_example, before.last_example) == (0, 256)
    assert resumed.dead_features.window_examples == trainer.dead_features.window_examples == 256
