"""Batched products with a stack of per-sample vectors, reductions always in the work dtype.

``rows`` is a (B, m, D) history buffer (Broyden factors, Anderson iterates) stored in the state
dtype; ``x`` is (B, D) in the work dtype (fp32/fp64). When both dtypes agree one bmm does the job;
otherwise each stored row is upcast on its own so the transient copy is one (B, D) row, never the
whole buffer, and every sum is accumulated in the work dtype.
"""

from __future__ import annotations

import torch


def dot_rows(rows: torch.Tensor, n: int, x: torch.Tensor) -> torch.Tensor:
    """(B, n): the inner products of the first n rows of ``rows`` with x (B, D)."""
    if n == 0:
        return x.new_zeros(x.shape[0], 0)
    if rows.dtype == x.dtype:
        # x^T R^T as a (B, 1, D) x (B, D, n) product on R's transposed view: MKL runs the
        # equivalent (B, n, D) x (B, D, 1) bmm as a slow batched gemv
        return torch.bmm(x.unsqueeze(1), rows[:, :n].transpose(1, 2)).squeeze(1)
    return torch.stack([torch.linalg.vecdot(rows[:, i].to(x.dtype), x) for i in range(n)], dim=1)


def combine_rows(rows: torch.Tensor, n: int, coeff: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(B, D): sum_i coeff[:, i] * rows[:, i] over the first n rows, added to ``out`` if given."""
    if n == 0:
        return out if out is not None else coeff.new_zeros(rows.shape[0], rows.shape[2])
    if rows.dtype == coeff.dtype:
        prod = torch.bmm(coeff[:, None, :n], rows[:, :n]).squeeze(1)  # (B, D)
        return prod if out is None else out.add_(prod)
    acc = out if out is not None else coeff.new_zeros(rows.shape[0], rows.shape[2])
    for i in range(n):
        acc.addcmul_(rows[:, i], coeff[:, i : i + 1])
    return acc


def combine_rows_minus(rows: torch.Tensor, n: int, coeff: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, D): -x + sum_i coeff[:, i] * rows[:, i] over the first n rows (a new tensor).

    One baddbmm (beta = -1) when the dtypes agree: a single pass that reads x and the rows and
    writes the result, instead of negating x, a bmm and an add (three (B, D) temporaries).
    """
    if n > 0 and rows.dtype == coeff.dtype == x.dtype:
        return torch.baddbmm(x.unsqueeze(1), coeff[:, None, :n], rows[:, :n], beta=-1).squeeze(1)
    return combine_rows(rows, n, coeff, out=x.neg())
