"""Interpolative decomposition ``A ≈ A[:, cols] T`` from a truncated column-pivoted QR.

Damle, Project 1, Questions 2, 4 and 6 and "Compressing a simple neural network": with
``A Π = Q [R11 R12; 0 R22]`` after ``k`` pivoted steps, the columns ``cols = perm[:k]``
and ``T = [I, R11⁻¹ R12] Πᵀ`` satisfy ``T[:, cols] = I`` and
``‖A − A[:, cols] T‖₂ = ‖R22‖₂`` in exact arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from netshrink.linalg.cpqr import CPQR, _scale_by_power_of_two, cpqr

__all__ = ["InterpolativeDecomposition", "interpolative_decomposition"]

Array = Any  # torch.Tensor or numpy.ndarray


@dataclass(frozen=True, eq=False)
class InterpolativeDecomposition:
    """Column interpolative decomposition ``A ≈ A[:, cols] @ T``.

    Attributes:
        cols: ``(k,)`` int64 indices of the selected columns, in pivot order.
        T: ``(k, n)`` interpolation matrix with ``T[:, cols] = I`` exactly.
        rank: ``k``, the number of selected columns.
        factorization: the truncated :class:`~netshrink.linalg.CPQR` it was built from.

    ``error_bound`` (a cached property, computed on first access) is ``‖R22‖₂``, the
    spectral norm of the unreduced block; it equals ``‖A − A[:, cols] T‖₂`` up to
    roundoff (Damle, Question 4).

    The object unpacks as a pair: ``cols, T = interpolative_decomposition(A, k)``.
    """

    cols: Array
    T: Array
    rank: int
    factorization: CPQR = field(repr=False)

    @cached_property
    def error_bound(self) -> float:
        """``‖R22‖₂`` as a Python float (0.0 when nothing is left unselected)."""
        return self.factorization.r22_norm()

    def __iter__(self) -> Iterator[Array]:
        """Yield ``cols`` then ``T``, so the decomposition unpacks as ``cols, T``."""
        yield self.cols
        yield self.T


def interpolative_decomposition(A: Array, k: int | None = None, tol: float | None = None) -> InterpolativeDecomposition:
    """Select ``k`` columns of ``A: (m, n)`` and ``T: (k, n)`` with ``A ≈ A[:, cols] T``.

    Built on :func:`~netshrink.linalg.cpqr` with the same stopping rule (``k`` steps,
    or before the first pivot with norm ``≤ tol·|r₁₁|``, whichever comes first; with
    neither, ``k = min(m, n)``). ``T = [I, R11⁻¹ R12] Πᵀ`` is computed in the input
    dtype by a triangular solve (Damle, Project 1, "Compressing a simple neural
    network").

    Rank-deficient fallback: when ``R11`` has an exactly zero diagonal entry (``k``
    forced past the exact rank, e.g. zero or repeated columns) or the triangular solve
    overflows, ``R11⁻¹ R12`` is replaced by the minimum-norm least-squares solution
    ``pinv(R11) R12`` (singular values of ``R11`` below ``k·eps·σ₁(R11)`` are treated as
    zero). ``T`` is then finite, ``T[:, cols] = I`` still holds, and the columns left out
    are fitted as well as the selected columns allow.

    Args:
        A: ``(m, n)`` float32/float64 torch tensor or numpy array; not modified.
        k: number of columns, ``0 ≤ k ≤ min(m, n)``.
        tol: relative tolerance in ``[0, 1]``, see :func:`~netshrink.linalg.cpqr`.

    Returns:
        :class:`InterpolativeDecomposition`; torch in gives torch out (same device and
        dtype), numpy in gives numpy out. ``k = 0`` gives empty ``cols`` and ``T`` of
        shape ``(0, n)``.
    """
    factorization = cpqr(A, k=k, tol=tol)
    as_numpy = not isinstance(factorization.R, torch.Tensor)
    R = torch.from_numpy(factorization.R) if as_numpy else factorization.R  # (k, n)
    perm = torch.from_numpy(factorization.perm) if as_numpy else factorization.perm
    rank = factorization.rank
    n = R.shape[1]

    T = torch.zeros((rank, n), dtype=R.dtype, device=R.device)
    cols = perm[:rank].clone()
    if rank:
        T[:, cols] = torch.eye(rank, dtype=R.dtype, device=R.device)
        if rank < n:
            T[:, perm[rank:]] = _solve_r11(R[:, :rank], R[:, rank:])
    if as_numpy:
        return InterpolativeDecomposition(cols.numpy(), T.numpy(), rank, factorization)
    return InterpolativeDecomposition(cols, T, rank, factorization)


def _solve_r11(R11: torch.Tensor, R12: torch.Tensor) -> torch.Tensor:
    """``R11⁻¹ R12`` for upper-triangular ``R11: (k, k)``, ``R12: (k, n − k)``, always finite.

    Both blocks are first scaled by the same power of two (exact, and ``R11⁻¹ R12`` does
    not change) so that the solve does not meet underflow for tiny matrices.
    """
    top = float(torch.linalg.vector_norm(R11, ord=math.inf))
    if top > 0.0:
        exponent = -math.frexp(top)[1]
        R11, R12 = R11.clone(), R12.clone()
        _scale_by_power_of_two(R11, exponent)
        _scale_by_power_of_two(R12, exponent)
    if bool((R11.diagonal() != 0).all()):
        X = torch.linalg.solve_triangular(R11, R12, upper=True)
        if bool(torch.isfinite(X).all()):
            return X
    return torch.linalg.pinv(R11) @ R12
