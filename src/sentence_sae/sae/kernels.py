"""Sparse kernels for SAEs whose codes keep few features (topk, batchtopk).

The dense formulation multiplies [batch, dict_size] code matrices that are mostly zeros: decoding
and both weight gradients cost batch x dict_size x d_in each. Here only the nnz selected entries
take part: decoding is an ``embedding_bag`` over the selected decoder rows, and the gradients of
``W_dec``, ``W_enc``, ``b_enc`` and the input are gathered or scattered from those entries (up to
DENSE_GRADIENT_MAX_BATCH, products with the codes, zero outside the entries, which cost less there).

Everything is plain PyTorch; ``sparse_kernel`` false in the config selects the dense formulation,
which the tests check this one against.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import warnings

import torch
import torch.nn.functional as F


class Selection(NamedTuple):
    """The selected entries of a [batch, dict_size] code, row by row (CSR order)."""

    rows: torch.Tensor  # [nnz] example index, non-decreasing
    cols: torch.Tensor  # [nnz] feature index
    offsets: torch.Tensor  # [batch] start of each example's entries (embedding_bag offsets)
    batch: int

    def row_pointer(self) -> torch.Tensor:
        return torch.cat([self.offsets, self.offsets.new_tensor([len(self.cols)])])


def selection_from_flat(flat_indices: torch.Tensor, batch: int, width: int) -> Selection:
    """A Selection from indices into the flattened [batch, width] matrix (any order)."""
    flat_indices, _ = flat_indices.sort()
    rows = torch.div(flat_indices, width, rounding_mode="floor")
    cols = flat_indices - rows * width
    counts = torch.bincount(rows, minlength=batch)
    offsets = torch.zeros(batch, dtype=torch.long, device=flat_indices.device)
    offsets[1:] = counts.cumsum(0)[:-1]
    return Selection(rows, cols, offsets, batch)


def subselection(selection: Selection, mask: torch.Tensor) -> Selection:
    """The entries of ``selection`` where ``mask`` holds, still row by row."""
    rows = selection.rows[mask]
    counts = torch.bincount(rows, minlength=selection.batch)
    offsets = torch.zeros(selection.batch, dtype=torch.long, device=rows.device)
    offsets[1:] = counts.cumsum(0)[:-1]
    return Selection(rows, selection.cols[mask], offsets, selection.batch)


def selection_from_topk(indices: torch.Tensor) -> Selection:
    """A Selection from per-example top-k indices [batch, k]."""
    batch, k = indices.shape
    indices, _ = indices.sort(dim=-1)
    rows = torch.arange(batch, device=indices.device).repeat_interleave(k)
    offsets = torch.arange(0, batch * k, k, device=indices.device)
    return Selection(rows, indices.reshape(-1), offsets, batch)


def batch_top_k(pre: torch.Tensor, k_total: int, candidates_per_row: int) -> torch.Tensor:
    """Flat indices of the ``k_total`` largest entries of ``pre`` (any order).

    A global top-k over batch x dict_size entries is slow; each example's own top
    ``candidates_per_row`` holds every entry of the global top-k unless some example contributes
    that many, which is checked; only then is the full top-k taken.
    """
    batch, width = pre.shape
    if candidates_per_row < width:
        local = pre.topk(candidates_per_row, dim=-1, sorted=False)
        chosen = local.values.flatten().topk(k_total, sorted=False).indices
        per_row = torch.bincount(torch.div(chosen, candidates_per_row, rounding_mode="floor"), minlength=batch)
        if int(per_row.max()) < candidates_per_row:
            rows = torch.div(chosen, candidates_per_row, rounding_mode="floor")
            return rows * width + local.indices.flatten()[chosen]
    return pre.flatten().topk(k_total, sorted=False).indices


def _csr(selection: Selection, values: torch.Tensor, width: int) -> torch.Tensor:
    """The selection as a sparse CSR [batch, width] matrix holding ``values``."""
    with warnings.catch_warnings():  # PyTorch marks CSR as beta; what is used here is tested
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(selection.row_pointer(), selection.cols, values, (selection.batch, width),
                                       check_invariants=False)


def sampled_dot(a: torch.Tensor, w: torch.Tensor, selection: Selection) -> torch.Tensor:
    """out[n] = a[rows[n]] . w[cols[n]]: the entries of a @ w.T at the selection, and only those."""
    pattern = _csr(selection, a.new_zeros(len(selection.cols)), w.shape[0])
    return torch.sparse.sampled_addmm(pattern, a, w.t(), beta=0.0).values()


FEW_ENTRIES_PER_FEATURE = 2
"""scatter_outer and gather_rows add the entries one by one (or through a dense code) while there are
at most this many entries per feature; past that a sparse matmul (1,536 features, k 32: batch 16 is
1.5-5x faster one by one, batch 64 up to 1.4x slower; ``benchmarks/studies/small_step.py``)."""


def _few_entries(selection: Selection, width: int) -> bool:
    return len(selection.cols) <= FEW_ENTRIES_PER_FEATURE * width


def scatter_outer(width: int, selection: Selection, coef: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """out[m] = sum over entries n of feature m of coef[n] * a[rows[n]]: (S^T a) for the sparse S."""
    if _few_entries(selection, width):
        return a.new_zeros(width, a.shape[1]).index_add_(0, selection.cols, coef[:, None] * a[selection.rows])
    return _csr(selection, coef, width).t() @ a


def gather_rows(w_enc: torch.Tensor, selection: Selection, coef: torch.Tensor) -> torch.Tensor:
    """out[b] = sum of coef[n] * w_enc[:, cols[n]] over example b's entries: (S w_enc^T) for the
    [d, width] encoder. Few entries per row: a dense product with the code, which reads w_enc
    in place; more: the selected rows of a transposed copy."""
    width = w_enc.shape[1]
    if _few_entries(selection, width):
        dense = coef.new_zeros(selection.batch, width).index_put_((selection.rows, selection.cols), coef, accumulate=True)
        return dense @ w_enc.t()
    return bag_sum(w_enc.t().contiguous(), selection, coef)


def bag_sum(weight: torch.Tensor, selection: Selection, coef: torch.Tensor) -> torch.Tensor:
    """out[b] = sum of coef[n] * weight[cols[n]] over example b's entries: (S weight)."""
    return F.embedding_bag(selection.cols, weight, selection.offsets, mode="sum", per_sample_weights=coef)


DENSE_GRADIENT_MAX_BATCH = 128
"""Up to this batch the backward pass forms the [batch, dict_size] codes and takes every gradient as
a dense product with them. Scattering the entries instead writes a zeroed [dict_size, d] gradient and,
for ``W_enc``, a transposed copy into its [d, dict_size] layout; those passes over every weight
cost more than the products up to about batch 128 (1,536 features: ``benchmarks/studies/small_step.py``;
one-off timings put the crossover near 128 at 3,072 and 12,288 features too)."""


class SparseCode(torch.autograd.Function):
    """From the selected pre-activations to (decoded embedding without b_dec, activations).

    Inputs: x_cent [B, d] (the input minus b_dec), W_enc [d, M], b_enc [M], W_dec [M, d], the
    selected pre-activations [nnz] (computed without gradient), the Selection, and whether the
    activations are ReLU(pre) (``rectify``: the codes) or pre itself (AuxK's dead features).
    Gradients for x_cent, W_enc, b_enc and W_dec are computed from the nnz entries.
    """

    @staticmethod
    def forward(ctx: Any, x_cent: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor, w_dec: torch.Tensor,
                selected_pre: torch.Tensor, selection: Selection, rectify: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
        values = selected_pre.clamp_min(0) if rectify else selected_pre
        ctx.rectify = rectify
        decoded = bag_sum(w_dec, selection, values)
        ctx.save_for_backward(x_cent, w_enc, w_dec, values)
        ctx.selection = selection
        return decoded, values

    @staticmethod
    def backward(ctx: Any, grad_decoded: torch.Tensor, grad_values: torch.Tensor) -> tuple:
        x_cent, w_enc, w_dec, values = ctx.saved_tensors
        sel: Selection = ctx.selection
        width = w_dec.shape[0]
        grad_values = sampled_dot(grad_decoded.contiguous(), w_dec, sel) + (
            grad_values if grad_values is not None else 0
        )
        grad_pre = grad_values * (values > 0).to(grad_values.dtype) if ctx.rectify else grad_values
        grad_b_enc = torch.zeros(width, dtype=grad_pre.dtype, device=grad_pre.device).index_add_(0, sel.cols, grad_pre)
        grad_w_enc, grad_w_dec, grad_x_cent = weight_and_input_gradients(
            sel, values, grad_pre, x_cent, grad_decoded, w_enc, ctx.needs_input_grad[0])
        return grad_x_cent, grad_w_enc, grad_b_enc, grad_w_dec, None, None, None


def weight_and_input_gradients(sel: Selection, values: torch.Tensor, grad_pre: torch.Tensor, x_cent: torch.Tensor,
                               grad_decoded: torch.Tensor, w_enc: torch.Tensor, input_grad: bool
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(W_enc's gradient [d, dict_size], W_dec's [dict_size, d], the input's [batch, d] or None): dense
    products with the codes up to DENSE_GRADIENT_MAX_BATCH, else gathered and scattered entries."""
    width = w_enc.shape[1]
    if sel.batch <= DENSE_GRADIENT_MAX_BATCH:
        grad_code = to_dense(grad_pre, sel, width)
        grad_x_cent = grad_code @ w_enc.t() if input_grad else None
        return x_cent.t() @ grad_code, to_dense(values, sel, width).t() @ grad_decoded, grad_x_cent
    grad_x_cent = gather_rows(w_enc, sel, grad_pre) if input_grad else None
    return scatter_outer(width, sel, grad_pre, x_cent).t(), scatter_outer(width, sel, values, grad_decoded), grad_x_cent


def sparse_code(x_cent: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor, w_dec: torch.Tensor,
                pre: torch.Tensor, selection: Selection, rectify: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoded without b_dec, selected activations) with sparse gradients; see SparseCode."""
    selected_pre = pre[selection.rows, selection.cols].detach()
    return SparseCode.apply(x_cent, w_enc, b_enc, w_dec, selected_pre, selection, rectify)


def to_dense(values: torch.Tensor, selection: Selection, width: int) -> torch.Tensor:
    dense = torch.zeros(selection.batch, width, dtype=values.dtype, device=values.device)
    dense[selection.rows, selection.cols] = values.detach()
    return dense
