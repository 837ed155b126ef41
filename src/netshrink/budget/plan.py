"""A budget turned into units per cut: observe once, price, weigh, allocate.

What ``compress(..., size=F | flops=F | latency=F)`` runs before its schedule (see
:mod:`netshrink.budget` for the derivation):

1. one pass of the calibration data through the original model accumulates every cut's
   Gram statistic (and the method's own statistic where it is another), as parallel
   chaining does;
2. one forward and backward pass on up to 1,024 calibration samples measures the output
   sensitivity of every consumer output (:mod:`.sensitivity`);
3. at every cut the method ranks its units by its own path (:meth:`~netshrink.methods.
   Method.order`) and the loss curve of that ranking is read off the statistics
   (:mod:`.curves`);
4. the widths minimising the summed loss under the budget are allocated (:mod:`.allocation`)
   with the exact cost model (:mod:`.costs`, :mod:`.latency`).

The schedule then compresses every cut to its width with the same method and chaining
(top-down by default: each cut is fitted to the inputs the compressed layers before it
feed it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..errors import InvalidInputError
from ..graph import Cut
from ..methods.base import Method, Widths
from ..methods.regression import live_units, regressions
from ..observe import Calibration, GramStatistic, observe
from .allocation import Allocation, Knob, allocate
from .costs import CostModel, flop_costs, parameter_costs
from .curves import refit_curve, truncation_curve
from . import ranks
from .sensitivity import output_sensitivities

#: The budgets ``compress`` takes, each a fraction of the original model's cost.
BUDGET_KINDS = ("size", "flops", "latency")
_UNITS = {"size": "parameters", "flops": "FLOPs", "latency": "latency"}


@dataclass(frozen=True)
class Budget:
    """``fraction`` of the original model's parameters (``size``), forward FLOPs at the
    calibration input shape (``flops``) or batch-1 latency on this machine (``latency``)."""

    kind: str
    fraction: float

    @property
    def unit(self) -> str:
        return _UNITS[self.kind]


def take_budget(options: dict) -> Budget | None:
    """Remove ``size``/``flops``/``latency`` from ``options`` and return the one given (None
    without one); refused: several of them, one beside another budget option, a value
    that is not a fraction in (0, 1]."""
    given = {kind: options.pop(kind) for kind in BUDGET_KINDS if options.get(kind) is not None}
    for kind in BUDGET_KINDS:
        options.pop(kind, None)
    if not given:
        return None
    if len(given) > 1:
        raise InvalidInputError(
            f"give one budget, not {' and '.join(f'{k}={v!r}' for k, v in given.items())}: size (fraction of the "
            "parameters), flops (fraction of the forward FLOPs) or latency (fraction of the batch-1 latency)"
        )
    ((kind, fraction),) = given.items()
    beside = sorted(key for key in ("lam", "keep", "tol") if options.get(key) is not None)
    if beside:
        raise InvalidInputError(
            f"{kind}={fraction!r} is a budget and so is {', '.join(beside)}: give one of them"
        )
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction) \
            or not 0 < fraction <= 1:
        raise InvalidInputError(
            f"{kind} must be the fraction of the model's {_UNITS[kind]} to keep, in (0, 1]; got {fraction!r}"
        )
    return Budget(kind, float(fraction))


@dataclass(frozen=True)
class Plan:
    """The widths a budget allocates and how they were found.

    Attributes:
        widths: units kept per cut (what the method is then given as ``keep``).
        allocation: the solve (:class:`~netshrink.budget.allocation.Allocation`).
        costs: the cost model the budget is counted in.
        curves: per cut, the estimated loss at each width (``(width + 1,)``).
        ceilings: per cut, the most units it may keep (those that carry anything on the
            calibration data: a unit that is identically zero, or constant where the
            consumer has a bias, is never worth its cost).
    """

    budget: Budget
    widths: Widths
    allocation: Allocation
    costs: CostModel
    curves: dict[str, np.ndarray]
    ceilings: dict[str, int]

    def report(self) -> dict:
        """JSON-ready summary: target, predicted fraction, estimated loss, widths."""
        return {
            "kind": self.budget.kind,
            "unit": self.budget.unit,
            "target": self.budget.fraction,
            "predicted": self.allocation.cost / self.allocation.total,
            "estimated_loss": self.allocation.loss,
            "widths": dict(self.widths),
            "ceilings": dict(self.ceilings),
        }


class _Statistics:
    """The Gram statistic a loss curve needs, beside the method's own when it is another."""

    def __init__(self, gram: GramStatistic, own):
        self.gram, self.own = gram, own

    def update(self, index: int, current: torch.Tensor, original: torch.Tensor | None = None) -> None:
        self.gram.update(index, current, original)
        if self.own is not self.gram:
            self.own.update(index, current, original)

    def all_reduce(self, ranks) -> None:
        for statistic in dict.fromkeys((self.gram, self.own)):
            statistic.all_reduce(ranks)


def loss_curves(model: nn.Module, cuts: Sequence[Cut], data: Calibration, method: Method, *,
                output_loss: str = "auto", lowrank: bool = False,
                progress: bool = False) -> tuple[list[Knob], dict[str, torch.Tensor]]:
    """One knob per cut: the estimated loss at each width of the method's ranking (steps
    1–3 of the module doc); with ``lowrank``, also one per layer the cuts shrink: the
    loss at each rank (:mod:`.ranks`). ``method`` must have been prepared with ``cuts``;
    it is handed the output sensitivities (:meth:`~netshrink.methods.Method.weigh`)
    before it ranks, and they are returned beside the knobs (by layer path)."""

    def both(cut: Cut, consumers: list[nn.Module]) -> _Statistics:
        own = method.statistic(cut, consumers)
        return _Statistics(own if isinstance(own, GramStatistic) else GramStatistic(consumers), own)

    lowrank = lowrank or not method.removes_units
    statistics = observe(model, cuts, data, both, progress=progress) if method.removes_units else {}
    layers = ranks.rank_layers(model, cuts) if lowrank else []
    paths = [*(path for cut in cuts for path in cut.consumers if method.removes_units), *layers]
    sensitivities = output_sensitivities(model, paths, data, output_loss=output_loss)
    method.weigh(sensitivities)
    modules = dict(model.named_modules())
    knobs = []
    for cut in _steps(cuts if method.removes_units else [], "loss curves", progress):
        consumers = [modules[path] for path in cut.consumers]
        producers = [modules[path] for path in cut.producers]
        statistic = statistics.pop(cut.name)
        order = method.order(cut, statistic.own, consumers, producers).to(torch.int64).cpu()
        problems = regressions(cut, statistic.gram, consumers, intercept=method.refits)
        curve = (refit_curve if method.refits else truncation_curve)(
            problems, order, [sensitivities[path] for path in cut.consumers])
        live = len(live_units(problems, cut.width))
        knobs.append(Knob(cut.name, curve, minimum=1, maximum=max(1, live)))
        del statistic, problems
    if layers:
        frames = {path: ranks.factor_cut(model, path) for path in layers}
        grams = observe(model, list(frames.values()), data, lambda cut, consumers: GramStatistic(consumers),
                        progress=progress)
        for path in _steps(layers, "rank curves", progress):
            frame = frames[path]
            (problem,) = regressions(frame, grams.pop(frame.name), [modules[frame.consumers[0]]])
            knobs.append(Knob(ranks.knob(path), ranks.rank_curve(problem, sensitivities[path]), minimum=1))
    return knobs, sensitivities


def _steps(items, what: str, progress: bool):
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=what, unit="cut", leave=False)


def plan(knobs: Sequence[Knob], costs: CostModel, budget: Budget) -> Plan:
    """The allocation of ``budget`` over ``knobs`` priced by ``costs`` (step 4 of the module
    doc); in a process group, rank 0's on every rank."""
    allocation = allocate(knobs, costs, budget.fraction * costs.total)
    ranks = distributed.current()
    if ranks is not None:  # rank 0's allocation on every rank (a latency table is measured per rank)
        with ranks.during("sharing the budget allocation"):
            allocation = ranks.broadcast(allocation)
    return Plan(budget, Widths(allocation.widths), allocation, costs, {knob.name: knob.loss for knob in knobs},
                {knob.name: knob.top for knob in knobs})


def cost_model(model: nn.Module, cuts: Sequence[Cut], kind: str, example, *, lowrank: bool = False) -> CostModel:
    """The cost model a budget of ``kind`` is counted in (with rank knobs when ``lowrank``)."""
    layers = {path: ranks.full_rank(ranks.layer_module(model, path)) for path in ranks.rank_layers(model, cuts)} \
        if lowrank else {}
    if kind == "size":
        return parameter_costs(model, cuts, layers)
    if kind == "flops":
        return flop_costs(model, cuts, example, layers)
    from .latency import latency_costs

    return latency_costs(model, cuts, example, layers)


def achieved(budget: Budget, original: nn.Module, compressed: nn.Module, example, costs: CostModel) -> float:
    """The fraction of the original's parameters (``size``) or FLOPs (``flops``, of the
    original's as ``costs`` counted them) the compressed model has, counted on it
    (latency is measured: :mod:`.measured`)."""
    if budget.kind == "size":
        return sum(p.numel() for p in compressed.parameters()) / sum(p.numel() for p in original.parameters())
    from .flops import total_flops

    return total_flops(compressed, example) / costs.total
