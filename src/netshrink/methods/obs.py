"""``method="obs"``: structured Optimal Brain Surgeon — whole units removed one by one,
each time the one whose removal raises the refitted reconstruction error least.

The per-layer step of ZipLM (Kurtić et al. 2023) and of OBS-type pruners, on the Gram
statistics every other method uses (:mod:`netshrink.linalg.elimination`): greedy
backward elimination with the least-squares refit of what remains carried along, so the
kept units are chosen for the refit they will get (group lasso chooses them by a convex
surrogate and refits after; ``magnitude`` ignores the data).

Options:

- ``keep``: the fraction of units kept per cut, one fraction per cut kind, or under a
  ``size``/``flops``/``latency`` budget the allocated count per cut.
- ``damping``: the relative ridge ``δ`` of the selection (default 10⁻³, module doc of
  :mod:`netshrink.linalg.elimination`); the refit itself is undamped.

The error it removes units by is ``E‖r‖²_G`` on every consumer output. With ``keep``
alone ``G`` is the identity: the plain reconstruction error, as every method here.
Under a budget the allocation measures the output sensitivity ``G`` of every consumer
output (:mod:`netshrink.budget.sensitivity`) and hands it over (:meth:`StructuredOBS.weigh`):
the units are then chosen by the same estimated loss the widths were allocated by.
The refit is the same whatever ``G`` (least squares minimises the residual covariance
itself), so ``G`` changes only which units are kept.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..errors import InvalidInputError
from ..graph import Cut
from ..linalg.elimination import DAMPING, elimination_order
from ..observe import GramStatistic
from .base import Decision, Method, check_keep, units_to_keep
from .regression import refitted_decision, regressions


class StructuredOBS(Method):
    """``method="obs"`` (module doc)."""

    name = "obs"
    needs_reference = True

    def __init__(self, keep=None, damping: float = DAMPING):
        if keep is None:
            raise InvalidInputError("obs needs keep (the fraction of units kept per cut, in (0, 1]) or a size, "
                                    "flops or latency budget")
        self.keep = check_keep(keep)
        if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not 0 <= damping < float("inf"):
            raise InvalidInputError(f"damping must be a finite number ≥ 0 (a fraction of the Gram's mean "
                                    f"diagonal), got {damping!r}")
        self.damping = float(damping)
        self.sensitivities: Mapping[str, torch.Tensor] = {}

    def prepare(self, model: nn.Module, cuts: list[Cut]) -> None:
        """Check the budget at every cut before any work (whole key/value groups)."""
        for cut in cuts:
            units_to_keep(self.keep, cut)

    def weigh(self, sensitivities: Mapping[str, torch.Tensor]) -> None:
        """Weigh each consumer output's residual by its sensitivity ``G`` (by consumer path)."""
        self.sensitivities = sensitivities

    def statistic(self, cut: Cut, consumers: list[nn.Module]) -> GramStatistic:
        return GramStatistic(consumers)

    def order(self, cut: Cut, statistic: GramStatistic, consumers: list[nn.Module],
              producers: list[nn.Module]) -> torch.Tensor:
        """Every unit, the last eliminated first (on the same centred problem as :meth:`decide`)."""
        return self._order(cut, regressions(cut, statistic, consumers))

    def decide(self, cut: Cut, statistic: GramStatistic, consumers: list[nn.Module],
               producers: list[nn.Module]) -> Decision:
        problems = regressions(cut, statistic, consumers)
        kept = torch.sort(self._order(cut, problems)[:units_to_keep(self.keep, cut)]).values
        return refitted_decision(problems, kept, consumers,
                                 {"weighted": all(path in self.sensitivities for path in cut.consumers)})

    def _order(self, cut: Cut, problems) -> torch.Tensor:
        weights = [self.sensitivities.get(path) for path in cut.consumers]
        return elimination_order([p.gram for p in problems], [p.cross for p in problems],
                                 [p.group for p in problems], weights, self.damping)
