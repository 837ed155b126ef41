"""Least squares from Gram statistics, safe when the Gram matrix is singular.

The debiasing step of Robin §2.4 ("Tackling Lasso bias"): once the support ``S`` of a
group-lasso solution is known, the consumer is refitted by plain least squares on it,
``min_M ½E‖y − M x_S‖²``, i.e. ``gram[S, S] Mᵀ = cross[S, :]``. The same solve serves
every refit of a fixed support (the ``magnitude``/``random`` + refit baselines, and
:func:`~netshrink.linalg.group_lasso` at ``λ = 0``).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg.lapack
import torch

from ..errors import InvalidInputError
from .blocks import all_finite, submatrix

__all__ = ["lstsq_from_gram", "lstsq_from_gram_block", "ridged_cholesky"]

#: Cholesky pivots below ``sqrt(_PIVOT_FLOOR · max diag)`` mean a numerically singular block.
_PIVOT_FLOOR = 1e-13


def lstsq_from_gram(gram: torch.Tensor, cross: torch.Tensor,
                    columns: torch.Tensor | None = None) -> torch.Tensor:
    """``M: (out, |S|)`` solving ``gram[S, S] Mᵀ = cross[S, :]`` in float64.

    Minimises ``½E‖y − M x_S‖²`` given ``gram = E[x xᵀ]`` and ``cross = E[x yᵀ]``.

    Args:
        gram: ``E[x xᵀ]``, ``(d, d)``, symmetric positive semi-definite.
        cross: ``E[x yᵀ]``, ``(d, out)``.
        columns: the support ``S`` (int64 indices, or None for every column).

    Returns:
        ``(out, |S|)`` float64 on the device of ``gram``; ``(out, 0)`` for an empty support.

    Safe for singular blocks (duplicated, dead or linearly dependent inputs), never NaN:
    the Cholesky factorisation of ``gram[S, S]`` is used when its pivots are well above
    round-off (``min pivot² > 1e-13·max diag``); otherwise the solution is the
    minimum-norm least-squares solution of ``gram_SS Mᵀ = cross_S`` from LAPACK's
    complete orthogonal factorisation (``gelsy``, pivoted QR with rank cutoff
    ``1e-13`` relative, the threshold of the Cholesky test: forming ``gram`` from data
    leaves round-off of several ``ε_mach·‖gram‖`` in its null space, so a cutoff at
    ``|S|·ε_mach`` keeps or drops those directions at random), i.e. ``cross_Sᵀ·gram_SS⁺`` — the solution of smallest norm
    among the equally good ones, which for statistics of data is also the minimum-norm
    least-squares solution on the data matrix. (A small ridge instead would amplify the
    round-off in the null space of ``gram_SS`` by its inverse, and dense eigensolvers are
    avoided: they are pathologically slow with threads on busy machines.) An all-zero
    block gives ``M = 0``.

    Memory: with ``columns``, one ``(|S|, |S|)`` block is gathered and factorised in
    place (no ``(|S|, d)`` intermediate); without, one factor of ``gram``'s size. The
    right-hand side is gathered once and solved in place.

    Raises:
        InvalidInputError: shapes that do not match, NaN/Inf in the statistics, or
            column indices out of range.
    """
    gram = _checked_gram(gram)
    cross = torch.as_tensor(cross).to(device=gram.device, dtype=torch.float64)
    if cross.ndim != 2 or cross.shape[0] != gram.shape[0]:
        raise InvalidInputError(
            f"cross must be (d, out) with d = {gram.shape[0]} rows like gram, got {tuple(cross.shape)}"
        )
    if columns is None:
        return _solve(gram, cross.T.contiguous().T, None)
    columns = _checked_columns(columns, gram)
    return _solve(gram, cross.T[:, columns].T, columns)  # a private copy, in Fortran order


def lstsq_from_gram_block(gram: torch.Tensor, rhs: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``M: (out, |S|)`` solving ``gram[S, S] Mᵀ = rhs`` for ``rhs: (|S|, out)``, in float64.

    :func:`lstsq_from_gram` with the right-hand side given on the support only (e.g.
    ``cross_S − gram_SS W_Sᵀ`` for a refit next to ``W``): the same solver and the same
    memory, one gathered ``(|S|, |S|)`` block. ``gram: (d, d)``, ``columns: (|S|,)``.
    ``rhs`` is the solver's workspace and is overwritten (pass a copy to keep it); in
    Fortran order (``rhs.T`` contiguous, e.g. the transpose of an ``(out, |S|)`` tensor)
    no copy of it is made at all.

    Raises:
        InvalidInputError: as :func:`lstsq_from_gram`.
    """
    gram = _checked_gram(gram)
    columns = _checked_columns(columns, gram)
    rhs = torch.as_tensor(rhs).to(device=gram.device, dtype=torch.float64)
    if rhs.ndim != 2 or rhs.shape[0] != columns.numel():
        raise InvalidInputError(
            f"rhs must be (|S|, out) with |S| = {columns.numel()} rows, one per column, got {tuple(rhs.shape)}"
        )
    return _solve(gram, rhs, columns)


def ridged_cholesky(gram: torch.Tensor, ridge: float = 1e-13) -> torch.Tensor:
    """The Cholesky factor of ``gram`` plus the smallest ridge (from ``ridge`` times its
    mean diagonal, ×100 at a time) that makes it positive definite in floating point."""
    scale = float(torch.diagonal(gram).mean().clamp(min=torch.finfo(torch.float64).tiny))
    shift = ridge * scale
    while True:
        shifted = gram.clone()
        shifted.diagonal().add_(shift)
        factor, info = torch.linalg.cholesky_ex(shifted)
        if int(info) == 0:
            return factor
        shift *= 100


def _checked_gram(gram) -> torch.Tensor:
    gram = torch.as_tensor(gram).to(torch.float64)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise InvalidInputError(f"gram must be a square matrix, got shape {tuple(gram.shape)}")
    return gram


def _checked_columns(columns, gram: torch.Tensor) -> torch.Tensor:
    columns = torch.as_tensor(columns, device=gram.device)
    if columns.is_floating_point() or columns.ndim != 1:
        raise InvalidInputError(f"columns must be a 1-D integer index tensor, got {columns.dtype} "
                                f"of shape {tuple(columns.shape)}")
    columns = columns.to(torch.int64)
    if columns.numel() and (int(columns.min()) < -gram.shape[0] or int(columns.max()) >= gram.shape[0]):
        raise InvalidInputError(f"columns must index the {gram.shape[0]} inputs, got values outside it")
    return columns


def _solve(gram: torch.Tensor, rhs: torch.Tensor, columns: torch.Tensor | None) -> torch.Tensor:
    """``M`` with ``gram[S, S] Mᵀ = rhs`` (``S`` every column when ``columns`` is None).

    With ``columns``, the block is gathered into a private buffer that the Cholesky
    factorisation overwrites; on the singular path it is gathered again, transposed, so
    that the buffer is ``gram_SS`` in Fortran order for ``gelsy`` to overwrite too.
    ``rhs`` (the caller's workspace) is overwritten by the CPU solves (in place when it is
    in Fortran order); the result is a view of it there.
    """
    gram, rhs = gram.detach(), rhs.detach()
    block = gram if columns is None else submatrix(gram, columns, columns)
    size = block.shape[0]
    if size == 0:
        return rhs.new_zeros(rhs.shape[1], 0)
    if not all_finite(block) or not all_finite(rhs):
        raise InvalidInputError("the statistics contain NaN/Inf; check the calibration data")
    scale = float(torch.diagonal(block).max())
    if scale <= 0:
        return rhs.new_zeros(rhs.shape[1], size)
    if columns is None:
        factor, info = torch.linalg.cholesky_ex(block)
    else:
        factor, info = torch.linalg.cholesky_ex(block, out=(block, block.new_empty((), dtype=torch.int32)))
    if int(info) == 0 and float(torch.diagonal(factor).min()) ** 2 > _PIVOT_FLOOR * scale:
        if factor.device.type != "cpu":
            return torch.cholesky_solve(rhs, factor).T
        # LAPACK potrs on the factor's storage (L in C order is Lᵀ in Fortran order) and on rhs
        solution, _ = scipy.linalg.lapack.dpotrs(factor.numpy().T, rhs.numpy(), lower=0, overwrite_b=1)
        return torch.from_numpy(solution).T
    # Singular or numerically singular: minimum-norm solution by complete orthogonal
    # factorisation (CPU LAPACK through scipy; other devices go through the CPU for this
    # rare case). Not torch.linalg.lstsq(driver="gelsy"): torch 2.13's CPU binding passes
    # LAPACK an uninitialised pivot array, so the rank and solution it returns for a
    # singular matrix depend on leftover memory (wrong in most of 200 random trials).
    # LAPACK's gelsy directly: scipy.linalg.lstsq copies both arrays whatever its overwrite flags.
    if columns is None:
        matrix = block.cpu().numpy().copy(order="F")
    else:
        submatrix(gram, columns, columns, out=block.T)
        matrix = block.cpu().numpy().T
    right = rhs.cpu().numpy()
    work, _ = scipy.linalg.lapack.dgelsy_lwork(size, size, right.shape[1], _PIVOT_FLOOR)
    pivots = np.zeros(size, dtype=np.int32)  # every column free to be pivoted
    _, solution, _, _, info = scipy.linalg.lapack.dgelsy(matrix, right, pivots, _PIVOT_FLOOR, int(work),
                                                          overwrite_a=1, overwrite_b=1)
    if info < 0:
        raise InvalidInputError(f"LAPACK dgelsy rejected argument {-info} on a {size} × {size} block")
    return torch.from_numpy(solution).T.to(rhs.device)
