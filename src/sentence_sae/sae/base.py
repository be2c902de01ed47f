"""What every SAE variant shares: parameters, input normalization, the decoder constraint,
dead-feature bookkeeping, the AuxK loss and the loss assembly of ``forward``.

A variant only says how pre-activations become feature activations (``activate``), which
sparsity penalty it pays (``sparsity_loss``) and whether it uses AuxK.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SAEConfig

InputStats = tuple[torch.Tensor, torch.Tensor] | None


class SAEOutput(dict):
    """What ``forward`` returns: a dict of losses and outputs. An entry may be built only when
    first read (the sparse path's dense ``feature_acts``, a [batch, dict_size] matrix)."""

    def __init__(self, values: dict[str, Any], lazy: dict[str, Callable[[], Any]] | None = None):
        super().__init__(values)
        self._lazy = dict(lazy or {})

    def __missing__(self, key: str) -> Any:
        if key not in self._lazy:
            raise KeyError(key)
        self[key] = value = self._lazy.pop(key)()
        return value

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or key in self._lazy

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default


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
    reconstruction in the embedding's own space, and ``forward(x)`` the losses for training.
    In training mode (``sae.train()``) forward passes update the dead-feature counters; in eval
    mode (``sae.eval()``) nothing about the SAE changes.
    """

    architecture: ClassVar[str]
    """Registry name, the value of ``sae_type``."""
    saelens_architecture: ClassVar[str] = "standard"
    """How SAELens calls the inference-time form of this SAE."""
    uses_auxk: ClassVar[bool] = False
    """Whether the AuxK loss on dead features is part of the training loss."""
    has_threshold: ClassVar[bool] = False
    """Whether a per-feature ``threshold`` tensor is part of the saved weights."""
    default_l1_coeff: ClassVar[float] = 0.0
    """``l1_coeff`` when the config leaves it unset."""
    default_input_unit_norm: ClassVar[bool] = False
    """``input_unit_norm`` when the config leaves it unset."""
    uses_top_k: ClassVar[bool] = False
    """Whether ``top_k`` sets the sparsity (and the trainer anneals ``training_k`` towards it)."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        if cfg.act_size is None:
            raise ValueError("cfg.act_size is unset; finalize the config with post_init_cfg(cfg) first")
        self.cfg = cfg
        d_in, d_sae = cfg.act_size, cfg.dict_size
        dtype = getattr(torch, cfg.dtype)
        generator = torch.Generator().manual_seed(cfg.seed)
        directions = torch.randn(d_sae, d_in, generator=generator, dtype=torch.float64)
        directions = directions / directions.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(directions.to(dtype))
        self.W_enc = nn.Parameter(directions.t().contiguous().to(dtype))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype))
        self.register_buffer("examples_since_fired", torch.zeros(d_sae, dtype=torch.long))
        self.data_parallel: Any = None  # set for data-parallel training (see distributed.py)
        if cfg.device:
            self.to(cfg.device)

    # ------------------------------------------------------------------ properties
    @property
    def d_in(self) -> int:
        return self.W_dec.shape[1]

    @property
    def d_sae(self) -> int:
        return self.W_dec.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    @property
    def input_unit_norm(self) -> bool:
        """``cfg.input_unit_norm``, or this architecture's default when it is unset."""
        unit = self.cfg.input_unit_norm
        return self.default_input_unit_norm if unit is None else unit

    @property
    def loss_dtype(self) -> torch.dtype:
        """Losses are summed in at least float32, whatever the parameters' precision."""
        return torch.promote_types(self.dtype, torch.float32)

    def reconstruction_loss(self, x_hat: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
        """Squared error summed over dimensions, averaged over the batch."""
        return (x_hat - x_in).to(self.loss_dtype).pow(2).sum(-1).mean()

    def training_reconstruction_loss(self, feature_acts: torch.Tensor, x_hat: torch.Tensor,
                                     x_in: torch.Tensor) -> torch.Tensor:
        """The reconstruction term of the training loss (Matryoshka adds its nested prefixes)."""
        return self.reconstruction_loss(x_hat, x_in)

    @property
    def sparsity_coefficient(self) -> float:
        """``cfg.l1_coeff``, or this architecture's default when it is unset."""
        return self.default_l1_coeff if self.cfg.l1_coeff is None else self.cfg.l1_coeff

    # ------------------------------------------------------------------ input normalization
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
        if stats is None:
            return x_hat
        mean, std = stats
        # Multiplying by std (not std + eps) is SAELens' layer_norm, so that exported SAEs
        # reconstruct exactly the same embeddings there.
        return x_hat * std + mean

    # ------------------------------------------------------------------ encoder and decoder
    def pre_activations(self, x_in: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b_enc, x_in - self.b_dec, self.W_enc)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Feature activations from pre-activations (variant-specific)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations of embeddings ``x`` (batch, d_in) -> (batch, d_sae)."""
        x_in, _ = self.preprocess_input(x)
        return self.activate(self.pre_activations(x_in))

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """Reconstruction in the SAE's input space from feature activations."""
        return feature_acts.to(self.dtype) @ self.W_dec + self.b_dec

    def encode_and_reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature activations of ``x`` and its reconstruction in the embeddings' own space."""
        x_in, stats = self.preprocess_input(x)
        feature_acts = self.activate(self.pre_activations(x_in))
        return feature_acts, self.postprocess_output(self.decode(feature_acts), stats)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """decode(encode(x)) mapped back to the embeddings' own space."""
        return self.encode_and_reconstruct(x)[1]

    @torch.no_grad()
    def encode_texts(self, texts: list[str], model: Any = None, batch_size: int = 32) -> torch.Tensor:
        """Feature activations of ``texts``, embedded with ``model`` (by default the Sentence-BERT
        model the SAE was trained on), in inference mode: (len(texts), d_sae)."""
        from ..embeddings import embedding_dim, encode_texts, load_sentence_model
        from ..errors import ModelError

        if model is None:
            model = load_sentence_model(self.cfg.model_name, str(self.device), self.cfg.encode_backend)
        if embedding_dim(model) != self.d_in:
            raise ModelError(f"this SAE reads {self.d_in}-dimensional embeddings, but the model gives "
                             f"{embedding_dim(model)}-dimensional ones; use the model it was trained with")
        with eval_mode(self):
            return self.encode(encode_texts(model, list(texts), batch_size).to(self.device))

    # ------------------------------------------------------------------ losses
    def sparsity_loss(self, pre: torch.Tensor, feature_acts: torch.Tensor, coeff: float) -> torch.Tensor:
        """The sparsity penalty, already multiplied by ``coeff``; none by default."""
        return feature_acts.new_zeros(())

    def auxiliary_loss(self, x_in: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        """AuxK: the top ``top_k_aux`` dead features reconstruct the residual error, which gives
        dead features a gradient (Gao et al. 2024), weighted down while few features are dead."""
        dead = self.dead_mask()
        n_dead = int(dead.sum())
        if not (self.uses_auxk and self.training and n_dead > 0 and self.cfg.aux_penalty > 0):
            return x_in.new_zeros(())
        k_aux = min(self.cfg.top_k_aux, n_dead)
        dead_pre = F.relu(pre[:, dead])
        top = dead_pre.topk(k_aux, dim=-1)
        aux_acts = torch.zeros_like(dead_pre).scatter(-1, top.indices, top.values)
        residual = (x_in - x_hat).detach()
        scale = min(n_dead / self.cfg.top_k_aux, 1.0)
        return self.cfg.aux_penalty * scale * self.reconstruction_loss(aux_acts @ self.W_dec[dead], residual)

    def forward(self, x: torch.Tensor, sparsity_coeff: float | None = None) -> SAEOutput:
        """Losses and outputs of one batch. ``sparsity_coeff`` overrides ``cfg.l1_coeff`` (warm-up)."""
        coeff = self.sparsity_coefficient if sparsity_coeff is None else sparsity_coeff
        x_in, stats = self.preprocess_input(x)
        pre = self.pre_activations(x_in)
        feature_acts = self.activate(pre)
        x_hat = self.decode(feature_acts)
        l2_loss = self.training_reconstruction_loss(feature_acts, x_hat, x_in)
        sparsity = self.sparsity_loss(pre, feature_acts, coeff).to(self.loss_dtype)
        aux = self.auxiliary_loss(x_in, x_hat, pre).to(self.loss_dtype)
        if self.training:
            self.record_fired((feature_acts > 0).any(dim=0), feature_acts.shape[0])
            self.update_running_stats(feature_acts[feature_acts > 0])
        n = feature_acts.shape[0]
        return self._output(l2_loss, sparsity, aux, x_hat, stats, feature_acts,
                            (feature_acts > 0).to(self.loss_dtype).sum() / n,
                            feature_acts.to(self.loss_dtype).abs().sum() / n)

    def _output(self, l2_loss: torch.Tensor, sparsity: torch.Tensor, aux: torch.Tensor, x_hat: torch.Tensor,
                stats: InputStats, feature_acts: torch.Tensor | Callable[[], torch.Tensor], l0: torch.Tensor,
                l1: torch.Tensor) -> SAEOutput:
        values = {
            "loss": l2_loss + sparsity + aux,
            "l2_loss": l2_loss,
            "sparsity_loss": sparsity,
            "aux_loss": aux,
            "sae_out": self.postprocess_output(x_hat, stats),
            "l0_norm": l0,
            "l1_norm": l1,
            "num_dead_features": self.num_dead_features(),
        }
        if callable(feature_acts):
            return SAEOutput(values, lazy={"feature_acts": feature_acts})
        return SAEOutput({**values, "feature_acts": feature_acts})

    # ------------------------------------------------------------------ dead features
    @torch.no_grad()
    def record_fired(self, fired: torch.Tensor, n_examples: int) -> None:
        """Dead-feature bookkeeping after a training batch of ``n_examples`` in which ``fired`` fired
        (over all processes of a data-parallel run)."""
        if self.data_parallel is not None:
            fired = self.data_parallel.any_fired(fired)
            n_examples = self.data_parallel.total(n_examples)
        self.examples_since_fired += n_examples
        self.examples_since_fired[fired] = 0

    def update_running_stats(self, active_values: torch.Tensor) -> None:
        """Hook for statistics a variant tracks during training from the batch's nonzero
        activations (BatchTopK's threshold)."""

    # ------------------------------------------------------------------ data-parallel training
    @property
    def world_size(self) -> int:
        return 1 if self.data_parallel is None else self.data_parallel.world_size

    def all_reduce_gradients(self) -> None:
        """Average the gradients over the processes of a data-parallel run (nothing otherwise)."""
        if self.data_parallel is not None:
            self.data_parallel.all_reduce_gradients(self)

    def all_have(self, flag: bool) -> bool:
        """Whether ``flag`` holds in every process (it alone when there is one)."""
        return flag if self.data_parallel is None else self.data_parallel.all_true(flag)

    def synchronize(self) -> None:
        """Make every process hold rank 0's parameters and buffers."""
        if self.data_parallel is not None:
            self.data_parallel.broadcast(self)

    def dead_mask(self) -> torch.Tensor:
        return self.examples_since_fired >= self.cfg.dead_feature_window

    def num_dead_features(self) -> int:
        return int(self.dead_mask().sum())

    # ------------------------------------------------------------------ decoder constraint and init
    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out the part of each decoder row's gradient that would change its norm."""
        if self.W_dec.grad is None:
            return
        unit = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.W_dec.grad -= (self.W_dec.grad * unit).sum(-1, keepdim=True) * unit

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def initialize_b_dec(self, sample: torch.Tensor, method: str | None = None) -> None:
        """Set the decoder bias from training embeddings: their mean or geometric median."""
        method = method or self.cfg.b_dec_init
        x_in, _ = self.preprocess_input(sample.to(self.device))
        if method == "mean":
            self.b_dec.copy_(x_in.mean(0))
        elif method == "geometric_median":
            self.b_dec.copy_(geometric_median(x_in))
        elif method == "zeros":
            self.b_dec.zero_()
        else:
            raise ValueError(f"unknown b_dec_init '{method}'")

    # ------------------------------------------------------------------ saving
    def weights_for_saving(self) -> dict[str, torch.Tensor]:
        """Tensors in the SAELens layout (W_enc, W_dec, b_enc, b_dec, and threshold if any)."""
        return {name: getattr(self, name).detach() for name in ("W_enc", "W_dec", "b_enc", "b_dec")}

    @torch.no_grad()
    def load_saved_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            getattr(self, name).copy_(tensors[name])


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
