"""Unit selection by ℓ2,1 (group-lasso) linear activation reconstruction (Robin §2).

At a cut, each consumer's linear output is reconstructed from as few input units as
possible (problem (6), one ℓ2 group per unit: a neuron's column, a channel's kh·kw
patch columns, or its h·w features after a flatten), solved on the Gram statistics
with FISTA or alternating minimisation (:func:`netshrink.linalg.group_lasso`). The
units with a nonzero group are kept; by default the consumers are then refitted by
least squares on that support (§2.4 "Tackling Lasso bias", ``debias=True``).

Budget, exactly one of:
- ``lam``: the regularisation as a fraction of the cut's ``λ_max`` (the smallest λ
  that removes every unit), in [0, 1]. Relative λ makes one value mean the same
  across layers of different scales. ``lam=0`` keeps every unit that is not
  identically zero on the calibration data and refits: lossless on that data.
  With ``weighting="parameters"`` (the default) the fraction at each cut is
  ``lam·c/c̄`` (at most 1), ``c`` the parameters one of its units costs
  (:meth:`~netshrink.graph.Cut.parameters_per_unit`) and ``c̄`` their geometric mean
  over the cuts compressed: the ℓ2,1 penalty then prices units by the parameters they
  hold, so one ``lam`` trades reconstruction for size at a comparable rate across the
  network — a LeNet-5 conv channel that feeds 16 features of a 500-wide layer holds 10×
  the parameters of a neuron of that layer, and its λ is 10× larger. With one cut it is
  the seed's problem;
  ``weighting="uniform"`` puts every cut at the same fraction of its ``λ_max``.
- ``keep``: the fraction of units kept per cut, reached by a λ search; units that are
  identically zero on the calibration data are always removed, so a cut keeps fewer
  when it has fewer live units — except under a width a budget allocated
  (:class:`~netshrink.methods.base.Widths`), which is kept exactly.

Warm starts: a sweep (:func:`netshrink.sweep` with ``warm_starts=True``) sets
``warm_starts``, a :class:`~netshrink.methods.warm_start.WarmStarts` store shared by the
methods of its budgets; each ``lam`` solve then starts from the solution the previous
budget left at the same cut. It stops on the same duality gap as a solve from zero, but
at another point: on ill-conditioned Grams the kept units differ unless ``gap_tol`` is
tight. ``keep`` budgets search λ with their own warm starts and leave nothing there.

Consumers with a bias get an intercept (:mod:`.regression`): the selection and the refit
work on centred statistics and the bias absorbs the constant part, with or without
``debias``. ``error`` in the report is the relative RMS error of the consumers'
pre-activations on the calibration data, ``sqrt(E‖y − ŷ‖² / E‖y‖²)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InvalidInputError
from ..graph import Cut
from ..linalg.blocks import columns_of
from ..linalg import group_lasso, group_lasso_keep, group_lasso_path_order, lambda_max
from ..observe import GramStatistic
from .base import Decision, Method, Widths, check_keep, units_to_keep
from .regression import fitted_decision, live_units, refitted_decision, regressions, split, stacked
from .warm_start import WarmStarts

SOLVERS = ("fista", "altmin")
WEIGHTINGS = ("parameters", "uniform")


class GroupLasso(Method):
    """``method="group_lasso"``: ℓ2,1 reconstruction, then (by default) a least-squares refit."""

    name = "group_lasso"
    needs_reference = True

    def __init__(self, lam: float | None = None, keep: float | None = None, debias: bool = True,
                 solver: str = "fista", gap_tol: float = 1e-4, weighting: str = "parameters"):
        if (lam is None) == (keep is None):
            raise InvalidInputError(
                "give exactly one of lam (the ℓ2,1 weight as a fraction of each layer's λ_max, "
                f"in [0, 1]) or keep (the fraction of units kept per layer); got lam={lam!r}, keep={keep!r}"
            )
        if lam is not None and (isinstance(lam, bool) or not isinstance(lam, (int, float))
                                or not math.isfinite(lam) or not 0 <= lam <= 1):
            raise InvalidInputError(
                f"lam must be in [0, 1] (a fraction of λ_max, the value that removes every unit), got {lam!r}"
            )
        if keep is not None:
            keep = check_keep(keep)
        if solver not in SOLVERS:
            raise InvalidInputError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}")
        if not isinstance(debias, bool):
            raise InvalidInputError(f"debias must be True or False, got {debias!r}")
        if isinstance(gap_tol, bool) or not isinstance(gap_tol, (int, float)) or not 0 < gap_tol < 1:
            raise InvalidInputError(f"gap_tol (the solver's relative duality gap) must be in (0, 1), got {gap_tol!r}")
        if weighting not in WEIGHTINGS:
            raise InvalidInputError(f"unknown weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)}")
        self.lam, self.keep, self.debias, self.solver, self.gap_tol = lam, keep, debias, solver, gap_tol
        self.weighting = weighting
        self.lam_scales: dict[str, float] = {}
        #: solutions shared with the other budgets of a sweep (None: every solve starts at 0)
        self.warm_starts: WarmStarts | None = None

    def prepare(self, model: nn.Module, cuts: list[Cut]) -> None:
        """Check a ``keep`` budget at every cut (whole key/value groups) and price each cut
        before any is rewritten: ``lam_scales[name] = c/c̄`` (module doc)."""
        if self.keep is not None:
            for cut in cuts:
                units_to_keep(self.keep, cut)
        if self.weighting == "uniform" or len(cuts) < 2:
            return
        costs = {cut.name: cut.parameters_per_unit(model) for cut in cuts}
        mean = math.exp(sum(math.log(c) for c in costs.values()) / len(costs))
        self.lam_scales = {name: cost / mean for name, cost in costs.items()}

    def statistic(self, cut: Cut, consumers: list[nn.Module]) -> GramStatistic:
        return GramStatistic(consumers)

    def fraction(self, cut: Cut) -> float:
        """The ``lam`` budget at ``cut``: its λ as a fraction of the cut's ``λ_max``."""
        return min(1.0, self.lam * self.lam_scales.get(cut.name, 1.0))

    def decide(self, cut: Cut, statistic: GramStatistic, consumers: list[nn.Module],
               producers: list[nn.Module]) -> Decision:
        problems = regressions(cut, statistic, consumers)
        width = cut.width
        live = live_units(problems, width)
        # the fraction of λ_max used at this cut (``lam`` budgets), for the report
        details = {} if self.lam is None else {"lam": self.fraction(cut)}
        wanted = units_to_keep(self.keep, cut) if self.keep is not None else None
        if self.lam == 0 or (wanted is not None and wanted >= len(live)):
            # every unit that is not identically zero on the calibration data: the refit
            # is exact there (units that never fire carry nothing to reconstruct)
            kept = live if len(live) else torch.zeros(1, dtype=torch.int64)
            if isinstance(self.keep, Widths) and wanted > len(kept):
                # an allocated width is kept exactly (the budget counts it), dead units last
                spare = torch.ones(width, dtype=torch.bool)
                spare[kept.cpu()] = False
                kept = torch.sort(torch.cat([kept.cpu(), torch.nonzero(spare).flatten()[:wanted - len(kept)]])).values
            return refitted_decision(problems, kept.to(torch.int64), consumers, details)
        gram, cross, energy, groups = stacked(problems, width)
        if self.lam is not None:
            lam = self.fraction(cut) * lambda_max(cross, groups)
            shape = (cross.shape[1], cross.shape[0])
            init = self.warm_starts.start(cut.name, shape) if self.warm_starts is not None else None
            result = group_lasso(gram, cross, lam, groups, solver=self.solver, tol=self.gap_tol, energy=energy,
                                 init=init)
            if self.warm_starts is not None:
                self.warm_starts.remember(cut.name, result.M)
        else:
            try:
                result = group_lasso_keep(gram, cross, wanted, groups, solver=self.solver, tol=self.gap_tol,
                                          energy=energy)
            except InvalidInputError as exc:
                raise InvalidInputError(f"at {cut.name!r}: {exc}") from exc
        kept = result.active.to(torch.int64)
        if len(kept) == 0:  # λ = λ_max: keep the unit that matters most
            kept = torch.argmax(_unit_norms(cross, groups, width)).reshape(1)
        if self.debias:
            del result  # its (out, d) solution is not needed by the refit
            return refitted_decision(problems, kept, consumers, details)
        blocks = split(result.M, problems)
        weights = [block[:, columns_of(kept, p.group)] for block, p in zip(blocks, problems)]
        return fitted_decision(problems, kept, weights, consumers, details)

    def order(self, cut: Cut, statistic: GramStatistic, consumers: list[nn.Module],
              producers: list[nn.Module]) -> torch.Tensor:
        """The units in the order they enter the ℓ2,1 solution along the λ path
        (:func:`~netshrink.linalg.group_lasso_path_order`, on the same centred problem as
        :meth:`decide`)."""
        problems = regressions(cut, statistic, consumers)
        gram, cross, energy, groups = stacked(problems, cut.width)
        return group_lasso_path_order(gram, cross, groups, solver=self.solver, tol=self.gap_tol, energy=energy)

    @property
    def refits(self) -> bool:
        return self.debias


def _unit_norms(cross: torch.Tensor, groups, width: int) -> torch.Tensor:
    """``‖cross[g, :]‖_F`` per unit ``(width,)``; ``groups`` an int group size or labels."""
    squares = (cross**2).sum(dim=1)
    if isinstance(groups, int):
        return squares.reshape(width, groups).sum(dim=1).sqrt()
    return torch.zeros(width, dtype=squares.dtype).index_add_(0, groups.cpu(), squares.cpu()).sqrt()
