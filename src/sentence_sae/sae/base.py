"""What every SAE variant shares: parameters, input normalization, encoder and decoder, the AuxK
loss and the loss assembly of ``forward``.

A variant only says how pre-activations become feature activations (``activate``), which
sparsity penalty it pays (``sparsity_loss``) and whether it uses AuxK. The SAE is a model: what
changes from step to step (k, the dead features, the sparsity coefficient) comes in as arguments
of ``forward``, and the trainer owns it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SAEConfig
from .kernels import selection_from_topk, sparse_code

InputStats = tuple[torch.Tensor, torch.Tensor] | None


@dataclass
class SAEOutput:
    """What ``forward`` returns: the losses, the reconstruction and what the trainer tracks."""

    loss: torch.Tensor
    l2_loss: torch.Tensor
    sparsity_loss: torch.Tensor
    aux_loss: torch.Tensor
    similarity_loss: torch.Tensor
    sae_out: torch.Tensor
    """The reconstruction in the embeddings' own space."""
    l0_norm: torch.Tensor
    l1_norm: torch.Tensor
    fire_counts: torch.Tensor
    """[d_sae] int64: on how many examples of the batch each feature fired."""
    active_values: torch.Tensor
    """The batch's nonzero activations, detached (BatchTopK's threshold statistic)."""
    dense_codes: torch.Tensor | Callable[[], torch.Tensor] = field(repr=False)

    @property
    def feature_acts(self) -> torch.Tensor:
        """[batch, d_sae] activations; the sparse path builds this dense matrix only when read."""
        if callable(self.dense_codes):
            self.dense_codes = self.dense_codes()
        return self.dense_codes

    @property
    def fired(self) -> torch.Tensor:
        """[d_sae] bool: the features that fired on some example of the batch."""
        return self.fire_counts > 0

    def __getitem__(self, key: str) -> Any:
        """``output["loss"]``, as the earlier script's dict output was read."""
        return getattr(self, key)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for a block, then the module's previous mode again."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class BaseSAE(nn.Module):
    """A sparse autoencoder over ``act_size``-dimensional embeddings with ``dict_size`` features.

    ``encode(x)`` gives feature activations, ``decode(f)`` the reconstruction in the SAE's input
    space (the standardized embedding when ``input_unit_norm`` is on), ``reconstruct(x)`` the
    reconstruction in the embedding's own space, and ``forward(x, ...)`` the training losses.
    """

    architecture: ClassVar[str]  # registry name, the value of sae_type
    saelens_architecture: ClassVar[str] = "standard"  # SAELens' name of the inference-time form
    uses_auxk: ClassVar[bool] = False  # the AuxK loss on dead features is part of the training loss
    has_threshold: ClassVar[bool] = False  # a per-feature threshold is part of the saved weights
    default_l1_coeff: ClassVar[float] = 0.0  # l1_coeff when the config leaves it unset
    default_input_unit_norm: ClassVar[bool] = False  # input_unit_norm when the config leaves it unset
    uses_top_k: ClassVar[bool] = False  # top_k sets the sparsity (the trainer anneals k towards it)
    encoder_init_scale: ClassVar[float] = 1.0  # W_enc starts as this times W_dec^T (unit-norm rows)

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        if cfg.act_size is None:
            raise ValueError("cfg.act_size is unset; finalize the config with post_init_cfg(cfg) first")
        self.cfg = cfg
        d_in, d_sae = cfg.act_size, cfg.dict_size
        dtype = getattr(torch, cfg.dtype)
        generator = torch.Generator().manual_seed(cfg.seed)
        directions = F.normalize(torch.randn(d_sae, d_in, generator=generator, dtype=torch.float64), dim=-1)
        self.W_dec = nn.Parameter(directions.to(dtype))
        self.W_enc = nn.Parameter((directions.t() * self.encoder_init_scale).contiguous().to(dtype))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype))
        if cfg.device:
            self.to(cfg.device)

    d_in = property(lambda self: self.W_dec.shape[1])
    d_sae = property(lambda self: self.W_dec.shape[0])
    dtype = property(lambda self: self.W_dec.dtype)
    device = property(lambda self: self.W_dec.device)
    # Losses are summed in at least float32, whatever the parameters' precision.
    loss_dtype = property(lambda self: torch.promote_types(self.dtype, torch.float32))

    @property
    def input_unit_norm(self) -> bool:
        unit = self.cfg.input_unit_norm
        return self.default_input_unit_norm if unit is None else unit

    @property
    def sparsity_coefficient(self) -> float:
        return self.default_l1_coeff if self.cfg.l1_coeff is None else self.cfg.l1_coeff

    def preprocess_input(self, x: torch.Tensor) -> tuple[torch.Tensor, InputStats]:
        """The SAE's input space: with ``input_unit_norm``, each embedding standardized over its
        dimensions (the layer_norm of SAELens), and the statistics to undo it."""
        x = x.to(self.dtype)
        if not self.input_unit_norm:
            return x, None
        mean = x.mean(dim=-1, keepdim=True)
        centered = x - mean
        std = centered.std(dim=-1, keepdim=True)
        return centered / (std + 1e-5), (mean, std)

    @staticmethod
    def postprocess_output(x_hat: torch.Tensor, stats: InputStats) -> torch.Tensor:
        # Multiplying by std (not std + eps) is SAELens' layer_norm: exported SAEs reconstruct the same.
        return x_hat if stats is None else x_hat * stats[1] + stats[0]

    def pre_activations(self, x_in: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b_enc, x_in - self.b_dec, self.W_enc)

    def activate(self, pre: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Feature activations from pre-activations; ``k`` overrides top_k where it applies."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations of embeddings ``x`` (batch, d_in) -> (batch, d_sae)."""
        return self.activate(self.pre_activations(self.preprocess_input(x)[0]))

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """Reconstruction in the SAE's input space from feature activations."""
        return feature_acts.to(self.dtype) @ self.W_dec + self.b_dec

    def encode_and_reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature activations of ``x`` and its reconstruction in the embeddings' own space."""
        x_in, stats = self.preprocess_input(x)
        feature_acts = self.activate(self.pre_activations(x_in))
        return feature_acts, self.postprocess_output(self.decode(feature_acts), stats)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_and_reconstruct(x)[1]

    def reconstruction_loss(self, x_hat: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
        """Squared error summed over dimensions, averaged over the batch."""
        return (x_hat - x_in).to(self.loss_dtype).pow(2).sum(-1).mean()

    def training_reconstruction_loss(self, feature_acts: torch.Tensor, x_hat: torch.Tensor,
                                     x_in: torch.Tensor) -> torch.Tensor:
        """The reconstruction term of the training loss (Matryoshka adds its nested prefixes)."""
        return self.reconstruction_loss(x_hat, x_in)

    def sparsity_loss(self, pre: torch.Tensor, feature_acts: torch.Tensor, coeff: float) -> torch.Tensor:
        """The sparsity penalty, already multiplied by ``coeff``; none by default."""
        return feature_acts.new_zeros(())

    def auxiliary_loss(self, x_in: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor,
                       dead_mask: torch.Tensor | None) -> torch.Tensor:
        """AuxK on the dead features for the variants that use it (see auxk_loss); none otherwise."""
        if not self.uses_auxk:
            return x_in.new_zeros(())
        return auxk_loss(self, x_in, x_hat, pre, dead_mask)

    def forward(self, x: torch.Tensor, k: int | None = None, dead_mask: torch.Tensor | None = None,
                sparsity_coeff: float | None = None) -> SAEOutput:
        """Losses and outputs of one training batch. ``k`` overrides top_k (the trainer's warm-up),
        ``dead_mask`` names the dead features for AuxK, ``sparsity_coeff`` overrides l1_coeff."""
        x_in, stats = self.preprocess_input(x)
        pre = self.pre_activations(x_in)
        feature_acts = self.activate(pre, k)
        x_hat = self.decode(feature_acts)
        coeff = self.sparsity_coefficient if sparsity_coeff is None else sparsity_coeff
        active = feature_acts > 0
        return self.assemble(x, self.training_reconstruction_loss(feature_acts, x_hat, x_in),
                             self.sparsity_loss(pre, feature_acts, coeff),
                             self.auxiliary_loss(x_in, x_hat, pre, dead_mask), x_hat, stats,
                             active.sum(dim=0), feature_acts[active].detach(), feature_acts)

    def assemble(self, x: torch.Tensor, l2_loss: torch.Tensor, sparsity: torch.Tensor, aux: torch.Tensor,
                 x_hat: torch.Tensor, stats: InputStats, fire_counts: torch.Tensor, active_values: torch.Tensor,
                 dense_codes: torch.Tensor | Callable[[], torch.Tensor]) -> SAEOutput:
        """The output of the dense and the sparse path alike: the loss is the sum of its terms."""
        sae_out = self.postprocess_output(x_hat, stats)
        sparsity, aux = sparsity.to(self.loss_dtype), aux.to(self.loss_dtype)
        similarity = similarity_loss(x, sae_out, self.cfg.similarity_coeff if self.training else 0.0).to(self.loss_dtype)
        return SAEOutput(l2_loss + sparsity + aux + similarity, l2_loss, sparsity, aux, similarity, sae_out,
                         l0_norm=l2_loss.new_tensor(len(active_values) / len(x)),
                         l1_norm=active_values.to(self.loss_dtype).abs().sum() / len(x),
                         fire_counts=fire_counts, active_values=active_values, dense_codes=dense_codes)

    def weights_for_saving(self) -> dict[str, torch.Tensor]:
        """Tensors in the SAELens layout (W_enc, W_dec, b_enc, b_dec, and threshold if any)."""
        return {name: getattr(self, name).detach() for name in ("W_enc", "W_dec", "b_enc", "b_dec")}

    @torch.no_grad()
    def load_saved_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            getattr(self, name).copy_(tensors[name])

    def update_running_stats(self, active_values: torch.Tensor,
                             mean: Callable[[torch.Tensor], torch.Tensor] = lambda value: value) -> None:
        """Statistics a variant tracks from a training batch's nonzero activations (BatchTopK's
        threshold); ``mean`` averages a statistic over the processes of a data-parallel run."""


@torch.no_grad()
def calibration_pre_activations(sae: BaseSAE, embeddings: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Encoder pre-activations of ``embeddings``, for setting a threshold on them."""
    return torch.cat([sae.pre_activations(sae.preprocess_input(embeddings[start : start + batch_size].to(sae.device))[0])
                      for start in range(0, len(embeddings), batch_size)])


def solve_for_l0(l0_at: Callable[[float], float], l0: float, low: float, high: float, steps: int = 40) -> float:
    """The x in [low, high] at which ``l0_at`` (falling as x grows) crosses ``l0``, by bisection."""
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (middle, high) if l0_at(middle) > l0 else (low, middle)
    return (low + high) / 2


@torch.no_grad()
def remove_parallel_decoder_grad(sae: BaseSAE) -> None:
    """Project out the part of each decoder row's gradient that would change its norm."""
    # in place: [dict_size, d] temporaries cost more than the projection (benchmarks/studies/small_step.py)
    if sae.W_dec.grad is not None:
        norm = torch.linalg.vector_norm(sae.W_dec, dim=-1).clamp_min(1e-12)
        parallel = torch.linalg.vecdot(sae.W_dec.grad, sae.W_dec) / norm.square()
        sae.W_dec.grad.addcmul_(sae.W_dec, parallel.unsqueeze(1), value=-1)


@torch.no_grad()
def normalize_decoder(sae: BaseSAE) -> None:
    """Unit-norm decoder rows: the constraint every variant trains under."""
    sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def initialize_b_dec(sae: BaseSAE, sample: torch.Tensor, method: str | None = None) -> None:
    """Set the decoder bias from training embeddings: their mean or geometric median."""
    method = method or sae.cfg.b_dec_init
    x_in, _ = sae.preprocess_input(sample.to(sae.device))
    if method == "mean":
        sae.b_dec.copy_(x_in.mean(0))
    elif method == "geometric_median":
        sae.b_dec.copy_(geometric_median(x_in))
    elif method == "zeros":
        sae.b_dec.zero_()
    else:
        raise ValueError(f"unknown b_dec_init '{method}'")


def auxk_loss(sae: BaseSAE, x_in: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor,
              dead_mask: torch.Tensor | None, x_cent: torch.Tensor | None = None) -> torch.Tensor:
    """AuxK: the top ``top_k_aux`` dead features reconstruct the residual error, which gives
    dead features a gradient (Gao et al. 2024).

    The dead features take part with their raw pre-activations, not rectified ones (as in SAELens):
    a feature whose pre-activation is negative on every text has a zero ReLU and would get no
    gradient, and these are the features that stay dead. Rectified, a third of a 6,144-feature
    dictionary ended dead.

    SAELens and sparsify weight the loss down by min(dead / top_k_aux, 1) while few features are dead.
    That weight starves exactly the last few dead features; where k fixes L0 (``uses_top_k``) a revived
    feature only takes a slot another would have had, so those variants go without it and end with a
    few tenths of a percent dead instead of 1-3%, at the same held-out FVU. Where a sparsity coefficient
    sets L0, every revived feature adds to it and the coefficient rises to pay for it, so vanilla and
    gated keep the weight (without it vanilla's held-out FVU rose 7% and gated ended with more features
    dead). All from ``benchmarks/studies/dead_latents.py``.
    ``pre`` without gradient (the sparse path) decodes through the sparse kernels from ``x_cent``,
    the input minus b_dec that the main path used."""
    n_dead = 0 if dead_mask is None else int(dead_mask.sum())
    if not (n_dead > 0 and sae.cfg.aux_penalty > 0):
        return x_in.new_zeros(())
    dead = dead_mask.nonzero().squeeze(1)
    with torch.no_grad():
        top = pre[:, dead].topk(min(sae.cfg.top_k_aux, n_dead), dim=-1, sorted=False).indices
    chosen = dead[top]
    if pre.requires_grad:
        decoded = F.embedding_bag(chosen, sae.W_dec, mode="sum", per_sample_weights=pre.gather(1, chosen))
    else:
        x_cent = x_in - sae.b_dec if x_cent is None else x_cent
        decoded, _ = sparse_code(x_cent, sae.W_enc, sae.b_enc, sae.W_dec, pre, selection_from_topk(chosen),
                                 rectify=False)
    scale = 1.0 if sae.uses_top_k else min(n_dead / sae.cfg.top_k_aux, 1.0)
    return sae.cfg.aux_penalty * scale * sae.reconstruction_loss(decoded, (x_in - x_hat).detach())


SIMILARITY_TEMPERATURE = 0.05
"""Temperature of the in-batch similarity distributions of similarity_kl: cosines between sentence
embeddings mostly lie within 0 to 0.6, and at 0.05 each example's distribution is sharp enough that
its nearest neighbours in the batch carry most of it."""


def similarity_loss(x: torch.Tensor, x_hat: torch.Tensor, coeff: float) -> torch.Tensor:
    """``coeff`` x the mean over the batch of KL(p_i || q_i), p_i and q_i each example's softmax (at
    SIMILARITY_TEMPERATURE) over its cosine similarities to the other examples, among the embeddings
    ``x`` and among their reconstructions ``x_hat``: how far the reconstructions move which examples
    are each other's neighbours (the similarity_coeff term; zero when ``coeff`` is 0)."""
    n = len(x)
    if n < 3 or coeff == 0:
        return x_hat.new_zeros(())
    others = ~torch.eye(n, dtype=torch.bool, device=x.device)
    a, b = F.normalize(x.to(x_hat.dtype).detach(), dim=-1), F.normalize(x_hat, dim=-1)
    log_p = ((a @ a.t())[others].view(n, n - 1) / SIMILARITY_TEMPERATURE).log_softmax(-1)
    log_q = ((b @ b.t())[others].view(n, n - 1) / SIMILARITY_TEMPERATURE).log_softmax(-1)
    return coeff * (log_p.exp() * (log_p - log_q)).sum(-1).mean()


@torch.no_grad()
def geometric_median(points: torch.Tensor, iterations: int = 100, tol: float = 1e-7) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimizing the sum of Euclidean distances to ``points``."""
    points = points.double()
    median = points.mean(0)
    for _ in range(iterations):
        weights = 1 / (points - median).norm(dim=-1).clamp_min(1e-12)
        updated = (weights[:, None] * points).sum(0) / weights.sum()
        if (updated - median).norm() <= tol * median.norm().clamp_min(1e-12):
            median = updated
            break
        median = updated
    return median
