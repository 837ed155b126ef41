"""Least squares from Gram statistics, safe when the Gram matrix is singular.

The debiasing step of Robin §2.4 ("Tackling Lasso bias"): once the support ``S`` of a
group-lasso solution is known, the consumer is refitted by plain least squares on it,
``min_M ½E‖y − M x_S‖²``, i.e. ``gram[S, S] Mᵀ = cross[S, :]``. The same solve serves
every refit of a fixed support (the ``magnitude``/``random`` + refit baselines, and
:func:`~netshrink.linalg.group_lasso` at ``λ = 0``).
"""

from __future__ import annotations

import scipy.linalg
import torch

from ..errors import InvalidInputError

__all__ = ["lstsq_from_gram"]

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

    Raises:
        InvalidInputError: shapes that do not match, NaN/Inf in the statistics, or
            column indices out of range.
    """
    gram = torch.as_tensor(gram).to(torch.float64)
    cross = torch.as_tensor(cross).to(device=gram.device, dtype=torch.float64)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise InvalidInputError(f"gram must be a square matrix, got shape {tuple(gram.shape)}")
    if cross.ndim != 2 or cross.shape[0] != gram.shape[0]:
        raise InvalidInputError(
            f"cross must be (d, out) with d = {gram.shape[0]} rows like gram, got {tuple(cross.shape)}"
        )
    if columns is not None:
        columns = torch.as_tensor(columns, device=gram.device)
        if columns.is_floating_point() or columns.ndim != 1:
            raise InvalidInputError(f"columns must be a 1-D integer index tensor, got {columns.dtype} "
                                    f"of shape {tuple(columns.shape)}")
        columns = columns.to(torch.int64)
        if columns.numel() and (int(columns.min()) < -gram.shape[0] or int(columns.max()) >= gram.shape[0]):
            raise InvalidInputError(f"columns must index the {gram.shape[0]} inputs, got values outside it")
        gram = gram[columns][:, columns]
        cross = cross[columns]
    size = gram.shape[0]
    if size == 0:
        return cross.new_zeros(cross.shape[1], 0)
    if not torch.isfinite(gram).all() or not torch.isfinite(cross).all():
        raise InvalidInputError("the statistics contain NaN/Inf; check the calibration data")
    scale = float(torch.diagonal(gram).max())
    if scale <= 0:
        return cross.new_zeros(cross.shape[1], size)
    factor, info = torch.linalg.cholesky_ex(gram)
    if int(info) == 0 and float(torch.diagonal(factor).min()) ** 2 > _PIVOT_FLOOR * scale:
        return torch.cholesky_solve(cross, factor).T
    # Singular or numerically singular: minimum-norm solution by complete orthogonal
    # factorisation (CPU LAPACK through scipy; other devices go through the CPU for this
    # rare case). Not torch.linalg.lstsq(driver="gelsy"): torch 2.13's CPU binding passes
    # LAPACK an uninitialised pivot array, so the rank and solution it returns for a
    # singular matrix depend on leftover memory (wrong in most of 200 random trials).
    solution, _, _, _ = scipy.linalg.lstsq(gram.cpu().numpy(), cross.cpu().numpy(), cond=_PIVOT_FLOOR,
                                           lapack_driver="gelsy", check_finite=False)
    return torch.from_numpy(solution.T.copy()).to(cross.device)
