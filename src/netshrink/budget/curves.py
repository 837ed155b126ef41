"""Loss against width at one cut: what keeping the first ``k`` units of an order costs the output.

A method ranks a cut's units (its own path: the order in which units enter the ℓ2,1
solution as λ falls, the pivots of a column-pivoted QR, weight magnitudes, ...). Keeping
the first ``k`` units of that order and refitting the consumers by least squares leaves
a residual ``r`` on every consumer output; weighed by the output sensitivities ``G``
(:mod:`netshrink.budget.sensitivity`) its cost is the estimated loss increase

    L(k) = ½ Σ_consumers tr(G · E[r rᵀ](k)).

For every ``k`` at once, from the Gram statistics of the original model (parallel
statistics: ``y = W x``, so ``L(width) = 0``): with the columns permuted into the order,
``gram = L Lᵀ`` (Cholesky) and ``Y = L⁻¹ · cross``, a least-squares fit on the first ``j``
columns explains ``Σ_{i<j} Y_iᵀ Y_i`` of the targets' second moment (the rows of ``Y`` are
the Gram–Schmidt coefficients of the targets), so

    L(k) = ½ (Σ_i Y_i G Y_iᵀ − Σ_{i < k·s} Y_i G Y_iᵀ).

With an intercept (a consumer with a bias) the statistics are centred first, as every
refit does. A dependent column adds nothing: the smallest relative ridge (from 1e-13 of
the mean diagonal) that keeps the factorisation defined is added, and Cauchy–Schwarz
bounds what rounding can add through it.

For a method that keeps its consumers' weights as they are (``magnitude`` without
refit), the residual is the removed units' own contribution ``W_R x_R``:
``L(k) = ½ Σ_{u, v ∈ R} H_uv`` with ``H = (Wᵀ G W) ⊙ E[x xᵀ]`` summed over each unit's
columns and ``R`` the units after the first ``k``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..linalg.blocks import columns_of
from ..linalg.lstsq import ridged_cholesky
from ..methods.regression import Regression

def refit_curve(problems: list[Regression], order: torch.Tensor,
                sensitivities: list[torch.Tensor]) -> np.ndarray:
    """``(width + 1,)``: ``L(k)`` for ``k = 0..width`` with least-squares refits (module doc).

    ``problems``: the cut's consumer regressions on parallel statistics (centred where
    the consumer has a bias); ``order``: ``(width,)`` the units, first kept first;
    ``sensitivities``: ``G: (out_i, out_i)`` (or its diagonal ``(out_i,)``) per consumer.
    """
    width = len(order)
    explained = torch.zeros(width + 1, dtype=torch.float64)
    total = 0.0
    for problem, weight in zip(problems, sensitivities):
        columns = columns_of(order.to(problem.gram.device), problem.group)
        factor = ridged_cholesky(problem.gram[columns][:, columns])
        coefficients = torch.linalg.solve_triangular(factor, problem.cross[columns], upper=False)
        rows = (_weighted(coefficients, weight) * coefficients).sum(dim=1)  # Y_i G Y_iᵀ
        per_unit = rows.reshape(width, problem.group).sum(dim=1).cpu()
        explained[1:] += per_unit.cumsum(0)
        total += float(per_unit.sum())
    return (0.5 * (total - explained)).clamp(min=0).numpy()


def _weighted(rows: torch.Tensor, sensitivity: torch.Tensor) -> torch.Tensor:
    """``rows · G`` for ``rows: (n, out)`` and ``G`` a matrix or its diagonal."""
    sensitivity = sensitivity.to(rows)
    return rows @ sensitivity if sensitivity.ndim == 2 else rows * sensitivity


def truncation_curve(problems: list[Regression], order: torch.Tensor,
                     sensitivities: list[torch.Tensor]) -> np.ndarray:
    """``(width + 1,)``: ``L(k)`` when the kept units' weights stay as they are and the
    removed units' contribution is simply lost (module doc); ``problems`` uncentred."""
    width = len(order)
    loss = torch.zeros(width + 1, dtype=torch.float64)
    for problem, weight in zip(problems, sensitivities):
        columns = columns_of(order.to(problem.gram.device), problem.group)
        reduced = problem.weight[:, columns]
        pairs = (_weighted(reduced.T, weight) @ reduced) * problem.gram[columns][:, columns]  # (Wᵀ G W) ⊙ E[x xᵀ]
        s = problem.group
        units = pairs.reshape(width, s, width, s).sum(dim=(1, 3)).cpu()
        upper = torch.triu(units).sum(dim=1)
        per_unit = 2 * upper - torch.diagonal(units)  # unit i's terms with itself and the units after it
        loss[:width] += per_unit.flip(0).cumsum(0).flip(0)
    return (0.5 * loss).clamp(min=0).numpy()
