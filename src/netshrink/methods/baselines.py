"""Baselines on the same interface: what other tools do without reconstruction.

- ``magnitude``: keep the units whose producer rows have the largest ℓ2 norm (summed
  over the producers of a joint cut; the consumer columns for a sampled cut) and
  simply drop the others — structured magnitude pruning as Torch-Pruning or NNI do it
  without finetuning. ``refit=True`` adds the least-squares refit of the consumers on
  the kept units (the debiasing step of Robin §2.4 on a magnitude support), with the
  same intercept as every refit (:mod:`.regression`).
- ``random``: a uniformly random support (seeded), refitted by least squares by default.
- ``lowrank``: data-aware truncated SVD of every consumer (Robin §1.4, §2.3): the rank-r
  ``W_r`` minimising ``E‖W x − W_r x − c‖²`` is ``U_r U_rᵀ W`` with ``U_r`` the top
  eigenvectors of ``W Cov(x) Wᵀ`` (the bias absorbs ``c``; ``E[x xᵀ]`` for a consumer
  without bias); the layer becomes two layers with ``r·(n + m)`` weights. It
  removes no neuron: the widths of the network are unchanged.

``keep`` is the fraction of units kept per cut (for ``lowrank``: the fraction of the
rank ``min(out, in)`` kept per consumer, or under a budget the rank itself per cut,
:class:`~netshrink.methods.base.Widths`).
"""

from __future__ import annotations

import scipy.linalg
import torch
from torch import nn

from ..errors import InvalidInputError
from ..graph import Cut
from ..layers import weight_matrix
from ..linalg.blocks import columns_of, row_spans
from ..observe import GramStatistic
from .base import Decision, Method, Widths, check_keep, count_from_fraction, units_to_keep
from .regression import bias_shifts, refit, regressions, relative_error


def _require_keep(keep):
    if keep is None:
        raise InvalidInputError("keep must be given: the fraction of units kept per cut, in (0, 1]")
    return check_keep(keep)


class _Support(Method):
    """Shared shape of the support baselines: choose units, then drop or refit."""

    needs_reference = True

    def __init__(self, keep: float, refit: bool):
        self.keep = _require_keep(keep)
        if not isinstance(refit, bool):
            raise InvalidInputError(f"refit must be True or False, got {refit!r}")
        self.refit = refit

    def prepare(self, model: nn.Module, cuts: list[Cut]) -> None:
        """Check the budget at every cut before any work (whole key/value groups)."""
        for cut in cuts:
            units_to_keep(self.keep, cut)

    def statistic(self, cut: Cut, consumers: list[nn.Module]) -> GramStatistic:
        return GramStatistic(consumers)

    def decide(self, cut: Cut, statistic: GramStatistic, consumers: list[nn.Module],
               producers: list[nn.Module]) -> Decision:
        problems = regressions(cut, statistic, consumers)
        k = units_to_keep(self.keep, cut)
        kept = torch.sort(self.choose(cut, consumers, producers, k)).values.to(problems[0].gram.device)
        if self.refit:
            weights = [refit(p, kept) for p in problems]
        else:
            weights = [p.weight[:, columns_of(kept, p.group)] for p in problems]
        return Decision(
            kept=kept.cpu(),
            consumer_weights=tuple(w.to(layer.weight.dtype) for w, layer in zip(weights, consumers)),
            error=relative_error(problems, kept, weights, shifted=self.refit),
            bias_shifts=bias_shifts(problems, kept, weights) if self.refit else (),
        )

    @property
    def refits(self) -> bool:
        return self.refit

    def order(self, cut: Cut, statistic: GramStatistic, consumers: list[nn.Module],
              producers: list[nn.Module]) -> torch.Tensor:
        """Every unit, those :meth:`choose` takes first at the front."""
        return self.choose(cut, consumers, producers, cut.width)

    def choose(self, cut: Cut, consumers: list[nn.Module], producers: list[nn.Module], k: int) -> torch.Tensor:
        """The ``k`` units to keep, ``(k,)`` int64."""
        raise NotImplementedError


class Magnitude(_Support):
    """``method="magnitude"``: largest producer-row norms; ``refit`` optional (default off)."""

    name = "magnitude"

    def __init__(self, keep: float | None = None, refit: bool = False):
        super().__init__(keep, refit)

    def choose(self, cut, consumers, producers, k):
        if producers:
            scores = sum(_unit_scores(cut, index, layer) for index, layer in enumerate(producers))
        else:
            scores = sum(_column_scores(layer, cut.width) for layer in consumers)
        return torch.argsort(scores, descending=True, stable=True)[:k].cpu()


class Random(_Support):
    """``method="random"``: a uniformly random support (``seed``), refitted by default."""

    name = "random"

    def __init__(self, keep: float | None = None, refit: bool = True, seed: int = 0):
        super().__init__(keep, refit)
        self.generator = torch.Generator().manual_seed(int(seed))

    def choose(self, cut, consumers, producers, k):
        return torch.randperm(cut.width, generator=self.generator)[:k]


def _unit_scores(cut: Cut, index: int, layer: nn.Module) -> torch.Tensor:
    """``(width,)``: the squared norm of the rows each unit owns in producer ``index``."""
    rows = cut.producer_rows(index, torch.arange(cut.width))
    weight = weight_matrix(layer, None)  # squared in float64 by row blocks: no (out, in) float64 copy
    squares = torch.cat([weight[a:b].to(torch.float64).square().sum(dim=1) for a, b in row_spans(*weight.shape)])
    scores = squares[rows.to(layer.weight.device)].cpu()
    return scores.reshape(len(cut.segments(index)), cut.width, -1).sum(dim=(0, 2))


def _column_scores(layer: nn.Module, width: int) -> torch.Tensor:
    weight = weight_matrix(layer)
    return weight.reshape(weight.shape[0], width, -1).pow(2).sum(dim=(0, 2))


class LowRank(Method):
    """``method="lowrank"``: data-aware truncated SVD of each consumer (keeps every unit)."""

    name = "lowrank"
    needs_reference = True
    removes_units = False

    def __init__(self, keep: float | None = None):
        self.keep = _require_keep(keep)

    def statistic(self, cut: Cut, consumers: list[nn.Module]) -> GramStatistic:
        return GramStatistic(consumers)

    def decide(self, cut: Cut, statistic: GramStatistic, consumers: list[nn.Module],
               producers: list[nn.Module]) -> Decision:
        problems = regressions(cut, statistic, consumers)
        factors, shifts, error, energy = [], [], 0.0, 0.0
        for p, layer in zip(problems, consumers):
            out, d = p.weight.shape
            if isinstance(self.keep, Widths):  # a rank per cut, from a budget allocation
                rank = min(self.keep.get(cut.name, min(out, d)), out, d)
            else:
                fraction = self.keep.get(cut.kind, 1.0) if isinstance(self.keep, dict) else self.keep
                rank = count_from_fraction(fraction, min(out, d))
            # The output covariance W Cov(x) Wᵀ on the layer's current inputs; its top
            # eigenvectors U_r give the best rank-r W_r = U_r U_rᵀ W (plus intercept).
            covariance = p.weight @ p.gram @ p.weight.T
            _, vectors = scipy.linalg.eigh(covariance.cpu().numpy())
            basis = torch.from_numpy(vectors[:, ::-1][:, :rank].copy()).to(p.weight)  # copy: no negative strides
            right = basis.T @ p.weight  # (r, d)
            factors.append((basis.to(layer.weight.dtype), right.to(layer.weight.dtype)))
            every, approximation = torch.arange(d, device=p.gram.device), basis @ right
            error += p.error(every, approximation)
            shifts.append(p.bias_shift(every, approximation))
            energy += p.total_energy
        return Decision(kept=torch.arange(cut.width), consumer_weights=(),
                        error=(error / energy) ** 0.5 if energy else 0.0, factors=tuple(factors),
                        bias_shifts=tuple(shifts))
