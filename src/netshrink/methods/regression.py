"""The per-cut regression problem shared by the Gram-statistics methods.

At a cut, consumer ``i`` with current weights ``W_i: (out_i, d_i)`` (``d_i = width·s_i``
input columns, see :mod:`netshrink.layers`) reads rows ``x`` and must reproduce the
targets ``y = W_i z`` (Robin problem (6), targets per chaining strategy §2.7). From the
observed :class:`~netshrink.observe.GramStatistic` the problem is, in expectation form,

    gram = E[x xᵀ] (d, d),   cross = E[x yᵀ] = E[x zᵀ] W_iᵀ (d, out),
    energy = E‖y‖² (accumulated from the targets as they are observed; without
             reference rows z = x and it is tr(W_i gram W_iᵀ)).

When the consumer has a bias, the fit has an intercept: the bias absorbs the constant
part of the targets, so the problem is posed on the centred statistics
``gram − μμᵀ``, ``cross − μ·E[y]ᵀ``, ``E‖y‖² − ‖E[y]‖²`` (``μ = E[x]``), and a fitted ``M``
on the columns ``S`` comes with the bias change ``E[y] − M μ_S``. Units that are constant
on the calibration data then carry nothing: removing them costs nothing at all. (Without
a bias the statistics stay uncentred.)

Several consumers of one cut (a joint cut, Robin §2.6) share the unit selection: their
problems are stacked block-diagonally, with unit ``c`` owning its columns in every
block — the sum of the consumers' objectives with one ℓ2 norm per unit.

Memory: ``gram`` is the statistic's own ``(d, d)`` tensor, centred in place
(:meth:`~netshrink.observe.GramStatistic.centred`), never copied; the set-up adds the
``(d, out)`` cross term (and float64 weights for a layer of another dtype), a refit one
``(|S|, |S|)`` block and its ``(|S|, out)`` right-hand side.
(A joint cut's stacked problem is a block-diagonal copy of its consumers' Grams.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..graph import Cut
from ..layers import weight_matrix
from ..linalg import lstsq_from_gram_block
from ..linalg.blocks import columns_of, inner, row_spans, submatrix
from ..observe import GramStatistic
from .base import Decision


#: a unit whose variance is below this fraction of its second moment is constant
_CONSTANT = 1e-10


@dataclass(frozen=True)
class Regression:
    """One consumer's problem: ``gram (d, d)``, ``cross (d, out)``, ``energy``, ``weight (out, d)``.

    With an intercept (``mean`` given), ``gram``/``cross``/``energy`` are centred and
    ``mean = E[x]: (d,)``, ``target_mean = E[y]: (out,)``; otherwise both are None.
    """

    gram: torch.Tensor
    cross: torch.Tensor
    energy: float
    weight: torch.Tensor
    group: int  # columns per unit, s
    mean: torch.Tensor | None = None
    target_mean: torch.Tensor | None = None

    @property
    def total_energy(self) -> float:
        """``E‖y‖²`` (uncentred), the scale of relative errors."""
        if self.target_mean is None:
            return self.energy
        return self.energy + float(self.target_mean @ self.target_mean)

    def bias_shift(self, columns: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor | None:
        """``E[y] − M μ_S: (out,)``, the intercept of ``M: (out, |S|)``; None without one."""
        if self.mean is None:
            return None
        return self.target_mean - matrix @ self.mean[columns]

    def error(self, columns: torch.Tensor, matrix: torch.Tensor, shifted: bool = True) -> float:
        """``E‖y − M x_S − c‖²`` for ``M: (out, |S|)`` on the columns ``S``.

        ``c`` is the intercept :meth:`bias_shift` when ``shifted`` (the default), else 0
        (a consumer whose bias is left as it was). Computed by blocks of ``S``: no
        ``(|S|, |S|)`` block or ``(out, |S|)`` product is formed whole.
        """
        value = self.energy
        for a, b in row_spans(len(columns), len(columns)):
            part = columns[a:b]
            value += inner(matrix @ submatrix(self.gram, columns, part), matrix[:, a:b])  # M·gram_S,part
            value -= 2 * inner(matrix[:, a:b], self.cross[part].T)
        if not shifted and self.mean is not None:
            value += float(self.bias_shift(columns, matrix).square().sum())
        return max(value, 0.0)


def regressions(cut: Cut, statistic: GramStatistic, consumers: list[nn.Module],
                intercept: bool = True) -> list[Regression]:
    """The problem of every consumer of ``cut``, from the statistics and current weights.

    With ``intercept=False`` the statistics stay uncentred even for a consumer with a
    bias: the bias is frozen and the targets are the linear outputs ``y = W z``.
    Otherwise the statistic is centred in place (its :meth:`~netshrink.observe.GramStatistic.result`
    turns it back): the problems' ``gram`` is the statistic's own tensor either way.
    """
    problems = []
    for index, layer in enumerate(consumers):
        centred = layer.bias is not None and intercept
        gram, cross, energy = statistic.centred(index) if centred else statistic.result(index)
        weight = weight_matrix(layer).to(gram.device)
        group = weight.shape[1] // cut.width
        targets = cross @ weight.T  # E[x yᵀ], (d, out)
        # without reference rows the targets are the consumer's own outputs: cross is the
        # (centred) gram and E‖y‖² = tr(W·gram·Wᵀ) = ⟨W, targetsᵀ⟩ (centred with it)
        reference_free = energy is None
        if reference_free:
            energy = inner(weight, targets.T)
        if not centred:
            problems.append(Regression(gram, targets, energy, weight, group))
            continue
        mean, reference_mean = statistic.means(index)
        target_mean = weight @ reference_mean
        if not reference_free:
            energy -= float(target_mean @ target_mean)
        problems.append(Regression(gram, targets, max(energy, 0.0), weight, group, mean, target_mean))
    return problems


def stacked(problems: list[Regression], width: int) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor | int]:
    """``(gram, cross, energy, groups)`` of the joint problem; ``groups`` as accepted by
    :func:`netshrink.linalg.group_lasso` (an int for a single consumer, else labels)."""
    if len(problems) == 1:
        p = problems[0]
        return p.gram, p.cross, p.energy, p.group
    gram = torch.block_diag(*[p.gram for p in problems])
    cross = torch.block_diag(*[p.cross for p in problems])
    labels = torch.cat([torch.arange(width, device=gram.device).repeat_interleave(p.group) for p in problems])
    return gram, cross, sum(p.energy for p in problems), labels


def split(matrix: torch.Tensor, problems: list[Regression]) -> list[torch.Tensor]:
    """Blocks ``(out_i, d_i)`` of a joint solution ``(Σ out_i, Σ d_i)``."""
    blocks, row, col = [], 0, 0
    for p in problems:
        out, d = p.weight.shape
        blocks.append(matrix[row:row + out, col:col + d])
        row, col = row + out, col + d
    return blocks


def refit(problem: Regression, kept: torch.Tensor) -> torch.Tensor:
    """Least-squares weights ``(out, k·s)`` on the kept units (Robin §2.4, debiasing).

    Solves ``gram_SS Mᵀ = cross_S`` as ``M = W_S + Δ``: among the least-squares solutions
    of a singular ``gram_SS`` (ridge-safe solve) this stays next to the original weights,
    so units that are exactly redundant on the calibration data are replaced without
    changing the layer anywhere else.
    """
    columns = columns_of(kept, problem.group)
    # crossᵀ_S − W_S·gram_SS: (out, |S|), accumulated by blocks of the support (no W_S copy);
    # its transpose is the solver's right-hand side in Fortran order, solved in place
    residual = problem.cross.T[:, columns]
    for a, b in row_spans(len(columns), len(columns)):
        residual.addmm_(problem.weight[:, columns[a:b]], submatrix(problem.gram, columns[a:b], columns), alpha=-1)
    return lstsq_from_gram_block(problem.gram, residual.T, columns).add_(problem.weight[:, columns])


def relative_error(problems: list[Regression], kept: torch.Tensor, weights: list[torch.Tensor],
                   shifted: bool = True) -> float:
    """Relative RMS error ``sqrt(Σ E‖y − ŷ‖² / Σ E‖y‖²)`` of the new consumers on calibration.

    ``ŷ = M x_S`` plus the intercept when ``shifted`` (see :meth:`Regression.error`).
    """
    energy = sum(p.total_energy for p in problems)
    if energy == 0:
        return 0.0
    error = sum(p.error(columns_of(kept, p.group), m, shifted) for p, m in zip(problems, weights))
    return (error / energy) ** 0.5


def bias_shifts(problems: list[Regression], kept: torch.Tensor,
                weights: list[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
    """The intercept of every consumer's new weights (None for a consumer without a bias)."""
    return tuple(p.bias_shift(columns_of(kept, p.group), m) for p, m in zip(problems, weights))


def fitted_decision(problems: list[Regression], kept: torch.Tensor, weights: list[torch.Tensor],
                    consumers: list[nn.Module], details: dict | None = None) -> Decision:
    """The decision to keep ``kept`` with the consumers' new ``weights`` (one ``(out_i, |S|·s_i)``
    per consumer, their intercepts as bias shifts) and its relative error."""
    return Decision(
        kept=kept.to(torch.int64).cpu(),
        consumer_weights=tuple(w.to(layer.weight.dtype) for w, layer in zip(weights, consumers)),
        error=relative_error(problems, kept, weights),
        bias_shifts=bias_shifts(problems, kept, weights),
        details=details or {},
    )


def refitted_decision(problems: list[Regression], kept: torch.Tensor, consumers: list[nn.Module],
                      details: dict | None = None) -> Decision:
    """:func:`fitted_decision` with the least-squares refit of every consumer on ``kept``."""
    kept = kept.to(problems[0].gram.device)
    return fitted_decision(problems, kept, [refit(p, kept) for p in problems], consumers, details)


def live_units(problems: list[Regression], width: int) -> torch.Tensor:
    """Units that carry something on the calibration data (ascending): not identically
    zero, and — for a consumer with an intercept — not constant (a constant unit's
    contribution moves into the bias). Variances below ``1e-10·E[x²]`` count as round-off.
    """
    alive = torch.zeros(width, dtype=torch.bool, device=problems[0].gram.device)
    for p in problems:
        spread = torch.diagonal(p.gram).reshape(width, p.group).sum(dim=1)
        if p.mean is None:
            alive |= spread > 0
        else:
            size = spread + p.mean.square().reshape(width, p.group).sum(dim=1)
            alive |= spread > _CONSTANT * size
    return torch.nonzero(alive).flatten()
