"""SAE variants: the forward pass against an independent float64 reference, the JumpReLU
pseudo-gradients, the decoder constraint, dead-feature counting and AuxK."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sentence_sae import SAEConfig, create_sae
from sentence_sae.activation_store import EmbeddingStore
from sentence_sae.checkpoint import read_firing_frequencies, save_firing_frequencies
from sentence_sae.errors import CheckpointError
from sentence_sae.sae.base import initialize_b_dec, normalize_decoder, remove_parallel_decoder_grad
from sentence_sae.trainer import Trainer

D_IN, D_SAE, K = 24, 64, 4


def tiny_cfg(sae_type: str, **overrides) -> SAEConfig:
    overrides.setdefault("matryoshka_widths", "4,8,16,32")
    overrides.setdefault("top_k_aux", 8)
    cfg = SAEConfig(sae_type=sae_type, dict_size=D_SAE, top_k=K, device="cpu", **overrides)
    cfg.act_size = D_IN
    return cfg


def randomized(sae_type: str, seed: int = 0, **overrides):
    """An SAE with every parameter random, so no term of the forward pass is trivially zero."""
    sae = create_sae(tiny_cfg(sae_type, **overrides))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        if sae_type == "jumprelu":
            sae.log_threshold.copy_(torch.full((D_SAE,), np.log(0.2)))
        if sae_type in ("batchtopk", "matryoshka"):
            sae.threshold.fill_(0.3)
        normalize_decoder(sae)
    return sae


def reference_forward(sae, x: np.ndarray, training: bool) -> dict[str, np.ndarray]:
    """The SAE math written out in float64 numpy, independently of the library's code."""
    p = {name: t.detach().double().numpy() for name, t in sae.named_parameters()}
    cfg = sae.cfg
    x_in = x
    if sae.input_unit_norm:
        mean = x.mean(-1, keepdims=True)
        std = (x - mean).std(-1, ddof=1, keepdims=True)
        x_in = (x - mean) / (std + 1e-5)
    pre = (x_in - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    relu = np.maximum(pre, 0)
    if cfg.sae_type == "vanilla":
        acts = relu
        sparsity = sae.sparsity_coefficient * (acts * np.linalg.norm(p["W_dec"], axis=1)).sum(-1).mean()
    elif cfg.sae_type == "gated":
        magnitude = (pre - p["b_enc"]) * np.exp(p["r_mag"]) + p["b_mag"]
        acts = np.where(pre > 0, np.maximum(magnitude, 0), 0.0)
        sparsity = sae.sparsity_coefficient * (relu * np.linalg.norm(p["W_dec"], axis=1)).sum(-1).mean()
    elif cfg.sae_type == "topk" or (cfg.sae_type in ("batchtopk", "matryoshka") and not training):
        if cfg.sae_type == "topk":
            kth = np.sort(relu, axis=-1)[:, -K][:, None]
            acts = np.where(relu >= kth, relu, 0.0)
        else:
            acts = np.where(pre > sae.threshold.double().numpy(), relu, 0.0)
        sparsity = 0.0
    elif cfg.sae_type in ("batchtopk", "matryoshka"):
        kth = np.sort(relu.ravel())[-K * len(x)]
        acts = np.where(relu >= kth, relu, 0.0)
        sparsity = 0.0
    else:  # jumprelu
        threshold = np.exp(p["log_threshold"])
        acts = np.where(pre > threshold, pre, 0.0)
        sparsity = sae.sparsity_coefficient * (pre > threshold).sum(-1).mean()
        sparsity += cfg.pre_act_coeff * (np.maximum(threshold - pre, 0) * np.linalg.norm(p["W_dec"], axis=1)).sum(-1).mean()
    x_hat = acts @ p["W_dec"] + p["b_dec"]
    l2 = ((x_hat - x_in) ** 2).sum(-1).mean()
    extra = 0.0
    if cfg.sae_type == "matryoshka":  # every nested prefix reconstructs too: 4, 8, 16, 32
        for width in (4, 8, 16, 32):
            l2 += (((acts[:, :width] @ p["W_dec"][:width] + p["b_dec"]) - x_in) ** 2).sum(-1).mean()
    if cfg.sae_type == "gated" and training:  # ReLU(pi_gate) through the (frozen) decoder
        extra = (((relu @ p["W_dec"] + p["b_dec"]) - x_in) ** 2).sum(-1).mean()
    sae_out = x_hat
    if sae.input_unit_norm:
        sae_out = x_hat * std + mean
    return {"feature_acts": acts, "sae_out": sae_out, "l2_loss": l2, "loss": l2 + sparsity + extra,
            "l0_norm": (acts > 0).sum(-1).mean()}


@pytest.mark.parametrize("sae_type", ["vanilla", "topk", "batchtopk", "jumprelu", "matryoshka", "gated"])
@pytest.mark.parametrize("input_unit_norm", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_forward_matches_float64_reference(sae_type, input_unit_norm, training):
    # pre_act_coeff far above its default, so that a wrong pre-activation loss shows in the total
    sae = randomized(sae_type, input_unit_norm=input_unit_norm, l1_coeff=0.01, pre_act_coeff=0.01)
    sae.train(training)
    x = torch.randn(16, D_IN, generator=torch.Generator().manual_seed(1))
    out = sae(x)
    ref = reference_forward(sae, x.double().numpy(), training)
    assert out["l0_norm"].item() > 0
    for key in ("feature_acts", "sae_out"):
        np.testing.assert_allclose(out[key].detach().numpy(), ref[key], rtol=1e-4, atol=1e-5, err_msg=key)
    for key in ("l2_loss", "loss", "l0_norm"):
        np.testing.assert_allclose(out[key].item(), ref[key], rtol=1e-4, err_msg=key)
    # encode / reconstruct are the same computation without the losses.
    sae.eval()
    acts, reconstruction = sae.encode_and_reconstruct(x)
    np.testing.assert_allclose(sae.encode(x).detach().numpy(), acts.detach().numpy())
    np.testing.assert_allclose(sae.reconstruct(x).detach().numpy(), reconstruction.detach().numpy())


def test_topk_selection_uses_the_encoder_bias():
    sae = randomized("topk")
    x = torch.randn(8, D_IN, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        sae.b_enc[5] = 100.0
    assert (sae.encode(x)[:, 5] > 0).all()


def test_batchtopk_keeps_k_per_example_on_average_in_training():
    sae = randomized("batchtopk")
    sae.train()
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(3))
    acts = sae(x)["feature_acts"]
    assert (acts > 0).sum().item() == K * 32
    assert (acts > 0).sum(-1).float().std() > 0  # the budget is shared, not per example


def test_jumprelu_threshold_gradients_follow_the_pseudo_derivatives():
    """For one feature: dL/dtheta from the L0 term is -(1/eps) K((z-theta)/eps) per example, from
    the output -(theta/eps) K(...) times the upstream gradient; the log parameter gets theta x that."""
    eps, theta = 0.1, 0.5
    sae = create_sae(tiny_cfg("jumprelu", bandwidth=eps, jumprelu_init_threshold=theta, pre_act_coeff=0.0))
    pre = torch.tensor([[0.47, 0.70, 0.52, 0.10]]).T.expand(4, D_SAE).contiguous().requires_grad_(True)
    # Only z within eps/2 of theta (0.47 and 0.52) fall inside the rectangle kernel.
    l0 = torch.autograd.grad(sae.sparsity_loss(pre, None, coeff=1.0), sae.log_threshold)[0]
    expected_theta_grad = -(1 / eps) * 2 / 4  # two of four examples in the window, mean over the batch
    np.testing.assert_allclose(l0.numpy(), np.full(D_SAE, theta * expected_theta_grad), rtol=1e-5)

    acts = sae.activate(pre)
    grad_pre, grad_log_theta = torch.autograd.grad(acts.sum(), [pre, sae.log_threshold])
    expected_output_theta_grad = -(theta / eps) * 2
    np.testing.assert_allclose(grad_log_theta.numpy(), np.full(D_SAE, theta * expected_output_theta_grad), rtol=1e-5)
    np.testing.assert_array_equal(grad_pre[:, 0].numpy(), [0.0, 1.0, 1.0, 0.0])  # only where z > theta


def test_jumprelu_l0_penalty_moves_the_thresholds_up():
    sae = randomized("jumprelu", l1_coeff=1.0, bandwidth=1.0)
    x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(4))
    sae(x)["sparsity_loss"].backward()
    assert sae.log_threshold.grad.sum() < 0  # gradient descent raises thresholds


def test_jumprelu_pre_activation_loss_raises_features_that_stopped_firing():
    """A feature whose pre-activations all lie below its threshold gets no gradient from the
    reconstruction; the pre-activation loss gives its encoder bias one that raises it."""
    x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(5))
    grads = {}
    for coeff in (0.0, 1e-3):
        sae = randomized("jumprelu", l1_coeff=0.0, pre_act_coeff=coeff)
        with torch.no_grad():
            sae.b_enc[:8] = -100.0  # features 0-7 never fire
        sae(x)["loss"].backward()
        grads[coeff] = sae.b_enc.grad[:8]
    assert torch.all(grads[0.0] == 0)
    assert torch.all(grads[1e-3] < 0)  # gradient descent raises their pre-activations


def test_decoder_gradient_loses_its_parallel_part_and_rows_stay_unit_norm():
    sae = randomized("topk")
    optimizer = torch.optim.Adam(sae.parameters(), lr=0.05)
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(5))
    for _ in range(5):
        sae(x)["loss"].backward()
        remove_parallel_decoder_grad(sae)
        parallel = (sae.W_dec.grad * sae.W_dec).sum(-1) / sae.W_dec.grad.norm(dim=-1).clamp_min(1e-12)
        np.testing.assert_allclose(parallel.detach().numpy(), 0.0, atol=1e-5)
        optimizer.step()
        optimizer.zero_grad()
        normalize_decoder(sae)
        np.testing.assert_allclose(sae.W_dec.norm(dim=-1).detach().numpy(), 1.0, rtol=1e-5)


def test_initialization_ties_encoder_to_decoder_and_sets_b_dec_from_data():
    sae = create_sae(tiny_cfg("topk", input_unit_norm=False))
    torch.testing.assert_close(sae.W_enc, 0.1 * sae.W_dec.T)  # topk starts with small codes
    vanilla = create_sae(tiny_cfg("vanilla", input_unit_norm=False))
    torch.testing.assert_close(vanilla.W_enc, vanilla.W_dec.T)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(D_SAE))
    data = torch.randn(200, D_IN, generator=torch.Generator().manual_seed(6)) + 3
    initialize_b_dec(sae, data, "mean")
    torch.testing.assert_close(sae.b_dec.data, data.mean(0))
    initialize_b_dec(sae, data, "geometric_median")
    median = sae.b_dec.detach().double()
    distances = lambda point: (data.double() - point).norm(dim=-1).sum()
    assert distances(median) <= distances(data.double().mean(0)) + 1e-9


def test_the_trainer_counts_dead_features_in_examples_and_evaluation_changes_nothing(tmp_path):
    cfg = tiny_cfg("topk", dead_feature_window=100, lr=1e-12, wandb_mode="disabled", output_dir=str(tmp_path))
    sae = randomized("topk")
    x = torch.randn(40, D_IN, generator=torch.Generator().manual_seed(7))
    trainer = Trainer(sae, EmbeddingStore(torch.randn(300, D_IN), cfg), cfg, run_dir=tmp_path)
    state = {name: tensor.clone() for name, tensor in sae.state_dict().items()}
    sae.eval()
    sae(x)
    for name, tensor in sae.state_dict().items():
        torch.testing.assert_close(tensor, state[name], rtol=0, atol=0)  # evaluation changes nothing
    fired = (sae.encode(x) > 0).any(0)
    trainer.training_step(x)  # lr 1e-12: the same features fire at every step
    since = trainer.dead_features.examples_since_fired
    assert (since[~fired] == 40).all() and (since[fired] == 0).all()
    for _ in range(2):
        trainer.training_step(x)
    assert trainer.dead_features.count() == int((~fired).sum())  # 120 examples >= window of 100
    # the window of 100 closed after 120 examples: each feature's firing frequency over them
    expected = (sae.encode(x) > 0).double().mean(0)
    firing = trainer.dead_features.densities()
    torch.testing.assert_close(firing.densities, expected)
    assert (firing.first_example, firing.last_example) == (0, 120)
    save_firing_frequencies(firing, tmp_path)
    read = read_firing_frequencies(tmp_path)
    torch.testing.assert_close(read.densities, expected, rtol=1e-6, atol=1e-9)
    assert (read.first_example, read.last_example) == (0, 120)
    trainer.training_step(x)  # the next window is not complete: the frequencies stay those of the last one
    assert trainer.dead_features.densities().last_example == 120
    (tmp_path / "sparsity.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="sparsity.safetensors is corrupt: its contents do not match the checksum"):
        read_firing_frequencies(tmp_path)


def test_auxk_loss_appears_once_features_are_dead():
    sae = randomized("topk", dead_feature_window=10)
    sae.train()
    x = torch.randn(16, D_IN, generator=torch.Generator().manual_seed(8))
    assert sae(x)["aux_loss"].item() == 0.0
    assert sae(x, dead_mask=torch.zeros(D_SAE, dtype=torch.bool))["aux_loss"].item() == 0.0
    out = sae(x, dead_mask=torch.ones(D_SAE, dtype=torch.bool))
    assert out["aux_loss"].item() > 0
    out["loss"].backward()
    assert sae.W_enc.grad.abs().sum(0).gt(0).sum() > K  # dead features get gradient through AuxK


@pytest.mark.parametrize("sparse", [False, True])
def test_auxk_reaches_dead_features_whose_pre_activations_are_all_negative(sparse):
    """The features that stay dead are those below zero on every text: AuxK must give them a
    gradient (a rectified AuxK gives them none, and a third of a wide dictionary stayed dead)."""
    sae = randomized("topk", sparse_kernel=sparse)
    x = torch.randn(16, D_IN, generator=torch.Generator().manual_seed(8))
    dead = torch.arange(D_SAE) >= D_SAE // 2
    with torch.no_grad():  # every dead feature's pre-activation is negative on every example
        sae.b_enc[dead] = -100.0
    sae.train()
    out = sae(x, dead_mask=dead)
    assert (sae.pre_activations(sae.preprocess_input(x)[0])[:, dead] < 0).all()
    assert out["aux_loss"].item() > 0
    out["loss"].backward()
    assert sae.b_enc.grad[dead].ne(0).sum() >= sae.cfg.top_k_aux
    assert sae.W_enc.grad[:, dead].abs().sum(0).gt(0).sum() >= sae.cfg.top_k_aux


def test_batchtopk_threshold_moves_only_with_training_statistics():
    sae = randomized("batchtopk")
    x = torch.randn(16, D_IN, generator=torch.Generator().manual_seed(9))
    before = sae.threshold.clone()
    sae.eval()
    sae(x)
    sae.train()
    out = sae(x)
    torch.testing.assert_close(sae.threshold, before)  # forward passes never change it
    sae.update_running_stats(out.active_values)
    torch.testing.assert_close(sae.threshold, out.active_values.min().expand_as(before))  # the first update


@pytest.mark.parametrize("sae_type", ["topk", "batchtopk", "matryoshka"])
@pytest.mark.parametrize("input_unit_norm", [False, True])
@pytest.mark.parametrize("batch", [64, 160])  # gradients as products with the dense codes; scattered entries
def test_sparse_kernels_match_the_dense_formulation(sae_type, input_unit_norm, batch):
    """Loss and every gradient of the sparse path equal the dense path's to 1e-5 relative, with
    dead features present so that the AuxK loss takes part too."""
    from sentence_sae.sae.kernels import DENSE_GRADIENT_MAX_BATCH

    assert (batch <= DENSE_GRADIENT_MAX_BATCH) == (batch == 64)
    results = {}
    x = torch.randn(batch, D_IN, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    for sparse in (False, True):
        sae = randomized(sae_type, dtype="float64", input_unit_norm=input_unit_norm, sparse_kernel=sparse,
                         dead_feature_window=10)
        dead = torch.arange(D_SAE) < D_SAE // 2  # half the features dead: AuxK active
        sae.train()
        out = sae(x, dead_mask=dead)
        out["loss"].backward()
        sae.update_running_stats(out.active_values)
        results[sparse] = (out, {name: p.grad.clone() for name, p in sae.named_parameters()}, sae)
    (dense_out, dense_grads, dense_sae), (sparse_out, sparse_grads, sparse_sae) = results[False], results[True]
    assert dense_out["aux_loss"].item() > 0
    for key in ("loss", "l2_loss", "aux_loss", "l0_norm", "l1_norm"):
        torch.testing.assert_close(sparse_out[key], dense_out[key], rtol=1e-5, atol=1e-12, msg=key)
    torch.testing.assert_close(sparse_out["feature_acts"], dense_out["feature_acts"], rtol=1e-5, atol=1e-12)
    for name, grad in dense_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(sparse_grads[name], grad, rtol=1e-5, atol=1e-10, msg=name)
    torch.testing.assert_close(sparse_out.fired, dense_out.fired)
    if sae_type != "topk":
        torch.testing.assert_close(sparse_sae.threshold, dense_sae.threshold)


@pytest.mark.parametrize("batch", [4, 64])  # entries added one by one; a sparse matmul
def test_scattered_and_gathered_entries_equal_products_with_the_dense_code(batch):
    from sentence_sae.sae.kernels import _few_entries, gather_rows, scatter_outer, selection_from_topk, to_dense

    generator = torch.Generator().manual_seed(12)
    selection = selection_from_topk(torch.randn(batch, D_SAE, generator=generator).topk(K, dim=-1).indices)
    assert _few_entries(selection, D_SAE) == (batch == 4)
    coef = torch.randn(batch * K, generator=generator, dtype=torch.float64)
    rows = torch.randn(batch, D_IN, generator=generator, dtype=torch.float64)
    w_enc = torch.randn(D_IN, D_SAE, generator=generator, dtype=torch.float64)
    code = to_dense(coef, selection, D_SAE)
    torch.testing.assert_close(scatter_outer(D_SAE, selection, coef, rows), code.t() @ rows)
    torch.testing.assert_close(gather_rows(w_enc, selection, coef), code @ w_enc.t())


def test_batch_top_k_candidates_equal_the_full_top_k_including_the_fallback():
    from sentence_sae.sae.kernels import batch_top_k

    generator = torch.Generator().manual_seed(11)
    pre = torch.randn(32, 500, generator=generator)
    k_total = 4 * 32
    expected = set(pre.flatten().topk(k_total).indices.tolist())
    assert set(batch_top_k(pre, k_total, candidates_per_row=16).tolist()) == expected
    pre[3, :300] += 100.0  # one example owns more than its candidates: the exact fallback runs
    expected = set(pre.flatten().topk(k_total).indices.tolist())
    assert set(batch_top_k(pre, k_total, candidates_per_row=16).tolist()) == expected


def test_similarity_loss_is_the_kl_between_in_batch_similarity_distributions():
    from sentence_sae.sae.base import SIMILARITY_TEMPERATURE, similarity_loss

    generator = torch.Generator().manual_seed(11)
    x = torch.randn(6, D_IN, generator=generator, dtype=torch.float64)
    assert similarity_loss(x, 3 * x.clone(), 1.0).item() == pytest.approx(0, abs=1e-12)  # cosines ignore scale
    x_hat = (x + torch.randn(6, D_IN, generator=generator, dtype=torch.float64)).requires_grad_()
    loss = similarity_loss(x, x_hat, 2.0)
    # an independent reference: per example, softmax over the other five cosines
    a, b = torch.nn.functional.normalize(x, dim=-1), torch.nn.functional.normalize(x_hat.detach(), dim=-1)
    total = 0.0
    for i in range(6):
        others = [j for j in range(6) if j != i]
        p = torch.softmax(a[others] @ a[i] / SIMILARITY_TEMPERATURE, 0)
        q = torch.softmax(b[others] @ b[i] / SIMILARITY_TEMPERATURE, 0)
        total += float((p * (p / q).log()).sum())
    assert loss.item() == pytest.approx(2.0 * total / 6, rel=1e-9) and loss.item() > 0
    loss.backward()
    assert x_hat.grad.abs().sum() > 0
    assert similarity_loss(x, x_hat, 0.0).item() == 0.0


@pytest.mark.parametrize("sparse", [False, True])
def test_similarity_term_takes_part_in_training_only_when_set(sparse):
    x = torch.randn(16, D_IN, generator=torch.Generator().manual_seed(12))
    plain = randomized("batchtopk", sparse_kernel=sparse)
    steered = randomized("batchtopk", sparse_kernel=sparse, similarity_coeff=5.0)
    plain.train(), steered.train()
    out_plain, out_steered = plain(x), steered(x)
    assert out_plain.similarity_loss.item() == 0.0 and out_steered.similarity_loss.item() > 0
    torch.testing.assert_close(out_steered.loss, out_plain.loss + out_steered.similarity_loss)
    steered.eval()
    assert steered(x).similarity_loss.item() == 0.0



@pytest.mark.parametrize("sae_type", ["topk", "batchtopk", "matryoshka", "vanilla", "gated"])
def test_auxk_is_weighted_by_the_dead_share_only_where_a_coefficient_sets_l0(sae_type):
    """Two dead features, so top_k_aux 8 and 16 both take them all: the k variants' AuxK is the same
    for both (no weight; it starved the last few dead features), while vanilla's and gated's carries the
    weight min(dead / top_k_aux, 1), twice as large at 8 (a revived feature adds to their L0)."""
    x = torch.randn(16, D_IN, generator=torch.Generator().manual_seed(8))
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[:2] = True
    losses = []
    for top_k_aux in (8, 16):
        sae = randomized(sae_type, top_k_aux=top_k_aux)
        sae.train()
        gate_term = sae(x, dead_mask=torch.zeros_like(dead))["aux_loss"].item()  # gated's own, without AuxK
        losses.append(sae(x, dead_mask=dead)["aux_loss"].item() - gate_term)
    assert losses[1] > 0
    assert losses[0] / losses[1] == pytest.approx(1.0 if sae.uses_top_k else 2.0, rel=1e-5)
