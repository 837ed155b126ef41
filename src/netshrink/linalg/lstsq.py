"""Least squares from Gram statistics, safe when the Gram matrix is singular.

The debiasing step of Robin §2.4 ("Tackling Lasso bias"): once the support ``S`` of a
group-lasso solution is known, the consumer is refitted by plain least squares on it,
``min_M ½E‖y − M x_S‖²``, i.e. ``gram[S, S] Mᵀ = cross[S, :]``. The same solve serves
every refit of a fixed support (the ``magnitude``/``random`` + refit baselines).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from ..errors import InvalidInputError

#: Cholesky pivots below ``sqrt(_PIVOT_FLOOR · max diag)`` mean a numerically singular block.
_PIVOT_FLOOR = 1e-13


def lstsq_from_gram(gram: torch.Tensor, cross: torch.Tensor,
                    columns: torch.Tensor | None = None) -> torch.Tensor:
    """``M: (out, |S|)`` solving ``gram[S, S] Mᵀ = cross[S, :]`` in float64.

    Args:
        gram: ``E[x xᵀ]``, ``(d, d)``, symmetric positive semi-definite.
        cross: ``E[x yᵀ]``, ``(d, out)``.
        columns: the support ``S`` (int64 indices, or None for every column).

    Safe for singular blocks: the Cholesky factorisation of ``gram[S, S]`` is used when
    its pivots are well above round-off; otherwise (duplicated, dead or dependent
    inputs) the solution is ``cross_Sᵀ · gram_SS⁺``, the pseudo-inverse with LAPACK's
    ``lstsq`` cutoff (eigenvalues below ``size·ε·λ_max`` are treated as zero) — the
    least-squares solution of smallest norm, never NaN. (A small ridge instead would
    amplify the round-off in the null space of ``gram_SS`` by its inverse.) An all-zero
    block gives ``M = 0``.
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
        columns = torch.as_tensor(columns, dtype=torch.int64, device=gram.device)
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
    # Singular or numerically singular: the pseudo-inverse with LAPACK's lstsq cutoff.
    values, vectors = scipy.linalg.eigh(gram.cpu().numpy())
    cutoff = max(float(values[-1]), 0.0) * size * np.finfo(np.float64).eps
    keep = values > cutoff
    basis = vectors[:, keep]
    solution = basis @ ((basis.T @ cross.cpu().numpy()) / values[keep, None])
    return torch.from_numpy(solution.T.copy()).to(cross.device)
