"""Least squares from Gram statistics, safe when the Gram matrix is singular.

The debiasing step of Robin §2.4 ("Tackling Lasso bias"): once the support ``S`` of a
group-lasso solution is known, the consumer is refitted by plain least squares on it,
``min_M ½E‖y − M x_S‖²``, i.e. ``gram[S, S] Mᵀ = cross[S, :]``. The same solve serves
every refit of a fixed support (the ``magnitude``/``random`` + refit baselines).
"""

from __future__ import annotations

import torch

from ..errors import InvalidInputError

#: First relative ridge tried when the Cholesky factorisation of ``gram[S, S]`` fails.
_FIRST_RIDGE = 1e-12
_LAST_RIDGE = 1e-2


def lstsq_from_gram(gram: torch.Tensor, cross: torch.Tensor,
                    columns: torch.Tensor | None = None) -> torch.Tensor:
    """``M: (out, |S|)`` solving ``gram[S, S] Mᵀ = cross[S, :]`` in float64.

    Args:
        gram: ``E[x xᵀ]``, ``(d, d)``, symmetric positive semi-definite.
        cross: ``E[x yᵀ]``, ``(d, out)``.
        columns: the support ``S`` (int64 indices, or None for every column).

    Ridge-safe: the Cholesky factorisation of ``gram[S, S]`` is tried first; when it
    fails (a singular block: duplicated or dead inputs) a ridge ``δ·mean(diag)`` is added
    with ``δ`` growing from 1e-12 by factors of 100 until it succeeds. For a singular
    block this returns the least-squares solution of smallest norm up to ``O(δ)``, never
    NaN. An all-zero block gives ``M = 0``.
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
    scale = float(torch.diagonal(gram).mean())
    if scale <= 0:
        return cross.new_zeros(cross.shape[1], size)
    ridge = 0.0
    identity = torch.eye(size, dtype=torch.float64, device=gram.device)
    while True:
        factor, info = torch.linalg.cholesky_ex(gram + ridge * scale * identity)
        if int(info) == 0 and torch.isfinite(factor).all():
            # reject factorisations whose pivots collapsed to round-off: singular in practice
            pivots = torch.diagonal(factor)
            if float(pivots.min()) ** 2 > 1e-13 * scale or ridge > 0:
                return torch.cholesky_solve(cross, factor).T
        ridge = _FIRST_RIDGE if ridge == 0 else ridge * 100
        if ridge > _LAST_RIDGE:
            raise InvalidInputError("the Gram block could not be factorised even with a ridge")
