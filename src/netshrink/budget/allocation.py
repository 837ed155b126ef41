"""One solve for every cut's width: minimise the estimated loss under a cost budget.

Each knob (a cut) has a loss curve ``L_c(k)`` — the estimated increase of the output
loss when it keeps ``k`` units (:mod:`netshrink.budget.curves`) — and the model has a
cost ``C(k)`` polynomial in the widths (:mod:`netshrink.budget.costs`). The allocation
solves

    min_k Σ_c L_c(k_c)   subject to   C(k) ≤ B,   minimum_c ≤ k_c ≤ maximum_c.

Derivation. The Lagrangian ``Σ_c L_c(k_c) + μ·C(k)`` is separable in the widths except
through the layers that join two cuts (bilinear terms). For a fixed ``μ`` we minimise it
by exact coordinate descent: each knob takes the level that minimises ``L_c(k) +
μ·C(k_c = k, others fixed)`` over all its levels (a global minimum of a one-dimensional
problem, so non-convex curves are no obstacle), cycling until no knob moves; the cost of
the minimiser falls as ``μ`` grows, so a bisection on ``log μ`` finds the smallest ``μ``
whose minimiser fits the budget. A Lagrangian minimiser is optimal for the budget it
spends, but it can leave part of ``B`` unspent where a curve is not convex; a greedy
fill then spends it: repeatedly, the step up of one knob (by one or more units) with
the largest loss decrease per unit of cost that still fits (units the estimate finds
worthless last, so that the budget is spent on the units that carry anything). The result is feasible and
stops only when no unit fits, so it is within one unit's cost of ``B``. Last, a local
search moves up to 8 units from one knob to another while that lowers the loss and still
fits (the integer gaps the relaxation leaves between knobs of different unit costs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from .costs import CostModel


class BudgetError(InvalidInputError):
    """A budget that no allocation reaches, or that cannot be priced."""


@dataclass(frozen=True)
class Knob:
    """One cut's width choice.

    Attributes:
        name: the cut's name (a knob of the cost model).
        loss: ``(full + 1,)`` estimated loss at each width ``0..full``.
        minimum: the fewest units it may keep (1).
        maximum: the most it may keep (the units that carry anything; default full).
    """

    name: str
    loss: np.ndarray
    minimum: int = 1
    maximum: int | None = None

    @property
    def top(self) -> int:
        return len(self.loss) - 1 if self.maximum is None else self.maximum


@dataclass(frozen=True)
class Allocation:
    """The widths chosen, what they cost and the loss they are estimated to add.

    ``multiplier`` is the Lagrange multiplier ``μ`` of the last feasible minimiser
    (loss per unit of cost at the margin); ``filled`` the units the greedy fill added.
    """

    widths: dict[str, int]
    cost: float
    budget: float
    total: float
    loss: float
    multiplier: float
    filled: int


def allocate(knobs: Sequence[Knob], cost: CostModel, budget: float, *, bisections: int = 40) -> Allocation:
    """Widths that minimise ``Σ L_c`` with ``cost ≤ budget`` (module doc).

    Raises:
        BudgetError: when even the fewest units everywhere cost more than ``budget``
            (the message gives the smallest reachable fraction of the full cost).
    """
    knobs = list(knobs)
    top = {knob.name: knob.top for knob in knobs}
    lowest = {knob.name: knob.minimum for knob in knobs}
    check_reachable(cost, budget, lowest)
    if cost.value(top) <= budget:
        return _finish(knobs, cost, budget, top, 0.0, 0)

    def solve(multiplier: float) -> dict[str, int]:
        levels = dict(top)
        for _ in range(50):
            moved = False
            for knob in knobs:
                objective = knob.loss + multiplier * cost.along(knob.name, levels)
                level = knob.minimum + int(np.argmin(objective[knob.minimum:knob.top + 1]))
                if level != levels[knob.name]:
                    levels[knob.name], moved = level, True
            if not moved:
                break
        return levels

    # a bracket [low, high] of μ: the minimiser at high fits the budget, the one at low does not
    scale = max(float(sum(knob.loss.max() for knob in knobs)), 1e-300) / cost.total

    def fits(multiplier: float) -> bool:
        return cost.value(solve(multiplier)) <= budget

    low = high = scale
    if fits(high):
        while fits(low) and low > scale * 1e-30:
            high, low = low, low / 4
    else:
        while not fits(high) and high < scale * 1e30:
            low, high = high, high * 4
    for _ in range(bisections):
        middle = math.sqrt(low * high)
        if fits(middle):
            high = middle
        else:
            low = middle
    levels = solve(high)
    if cost.value(levels) > budget:  # no μ fits (a flat curve everywhere): start from the minimum
        levels = dict(lowest)
    return _fill(knobs, cost, budget, levels, high)


def check_reachable(cost: CostModel, budget: float, lowest: dict[str, int] | None = None) -> None:
    """Raise :class:`BudgetError` when even the fewest units everywhere (``lowest``, one per
    knob by default) cost more than ``budget``; the message gives the smallest reachable
    fraction."""
    smallest, total = smallest_fraction(cost, lowest) * cost.total, cost.total
    if smallest > budget:
        raise BudgetError(
            f"the budget is {budget / total:.4g} of the {cost.unit} ({budget:,.6g} of {total:,.6g}), but the "
            f"smallest model this allocation reaches, with one unit kept per cut, has {smallest / total:.4g} "
            f"({smallest:,.6g}): the layers outside the cuts cost that much. Ask for at least "
            f"{math.ceil(smallest / total * 1e4) / 1e4:g}"
        )


def smallest_fraction(cost: CostModel, lowest: dict[str, int] | None = None) -> float:
    """The fraction of the full cost left with the fewest units everywhere (``lowest``,
    one per knob by default)."""
    lowest = {name: 1 for name in cost.full} if lowest is None else lowest
    return cost.value(lowest) / cost.total


def _fill(knobs, cost: CostModel, budget: float, levels: dict[str, int], multiplier: float) -> Allocation:
    """Spend what the Lagrangian minimiser left of the budget, improve by exchanges, and
    spend what those free (module doc)."""
    added = _spend(knobs, cost, budget, levels)
    _exchange(knobs, cost, budget, levels)
    added += _spend(knobs, cost, budget, levels)
    return _finish(knobs, cost, budget, levels, multiplier, added)


def _spend(knobs, cost: CostModel, budget: float, levels: dict[str, int]) -> int:
    """The greedy fill, in place; returns the units it added."""
    added = 0
    current = cost.value(levels)
    while True:
        best = None
        for knob in knobs:
            level = levels[knob.name]
            if level >= knob.top:
                continue
            along = cost.along(knob.name, levels)
            steps = np.arange(level + 1, knob.top + 1)
            spend = along[steps] - along[level]
            gain = knob.loss[level] - knob.loss[steps]
            fits = current + spend <= budget
            if not fits.any():
                continue
            # the largest loss decrease per unit of cost; units that add nothing (a flat
            # stretch of the estimate) still spend the budget, the cheapest first
            rate = np.where(fits, np.maximum(gain, 0) / np.maximum(spend, 1e-300), -np.inf)
            index = int(np.lexsort((spend, -rate))[0])
            key = (rate[index], -spend[index])
            if best is None or key > best[0]:
                best = (key, knob.name, int(steps[index]), float(spend[index]))
        if best is None:
            break
        _, name, level, spend = best
        added += level - levels[name]
        levels[name] = level
        current = cost.value(levels)
    return added


_EXCHANGE = 8  # units moved at most from one knob to another in one exchange


def _exchange(knobs, cost: CostModel, budget: float, levels: dict[str, int]) -> None:
    """Local search after the fill: move up to :data:`_EXCHANGE` units from one knob to
    another while that lowers the loss and fits the budget (the best move first)."""
    for _ in range(10 * len(knobs) * _EXCHANGE):
        best = (0.0, None)
        for give in knobs:
            for fewer in range(1, min(_EXCHANGE, levels[give.name] - give.minimum) + 1):
                lowered = {**levels, give.name: levels[give.name] - fewer}
                loss_given = give.loss[lowered[give.name]] - give.loss[levels[give.name]]
                for take in knobs:
                    if take is give or levels[take.name] >= take.top:
                        continue
                    along = cost.along(take.name, lowered)
                    steps = np.arange(levels[take.name] + 1, min(take.top, levels[take.name] + _EXCHANGE) + 1)
                    fits = along[steps] <= budget
                    if not fits.any():
                        continue
                    change = loss_given + take.loss[steps] - take.loss[levels[take.name]]
                    change = np.where(fits, change, np.inf)
                    index = int(np.argmin(change))
                    if change[index] < best[0] - 1e-12 * (1 + abs(best[0])):
                        best = (float(change[index]), (give.name, lowered[give.name], take.name, int(steps[index])))
        if best[1] is None:
            return
        give_name, give_level, take_name, take_level = best[1]
        levels[give_name], levels[take_name] = give_level, take_level


def _finish(knobs, cost: CostModel, budget: float, levels: dict[str, int], multiplier: float,
            filled: int) -> Allocation:
    loss = float(sum(knob.loss[levels[knob.name]] for knob in knobs))
    return Allocation(widths=dict(levels), cost=cost.value(levels), budget=budget, total=cost.total, loss=loss,
                      multiplier=multiplier, filled=filled)
