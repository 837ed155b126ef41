"""A latency budget met as measured: allocate on the table, time the result, re-aim.

A latency table (:mod:`.latency`) predicts the compressed model's batch-1 latency within
some percent — more at batch 1, where per-call overhead and cache effects do not add up
layer by layer. ``compress(..., latency=F)`` therefore treats the table as a guide and the
measurement as the judge (ZipLM measures its candidates on the target machine, too):

1. allocate the widths at an *aim* ``a`` (first ``a = F``) of the table's latency and
   build a *stand-in*: a model of exactly those shapes, made without the method's solves
   (random units, no refit), since latency depends on the shapes alone;
2. time it against the original at batch 1, their calls alternating so that a change of
   load on the machine falls on both (:func:`measure_against_original`): ``m``, the
   median ratio ``t_compressed / t_original`` of neighbouring calls;
3. stop searching when ``(1 − TOLERANCE)·F ≤ m ≤ F``; otherwise re-aim so that the
   measured fraction lands at the middle of that window, ``F·(1 − TOLERANCE/2)``, by the
   secant through the two tried aims nearest it (one tried aim: ``a·goal/m``,
   proportional), kept inside the bracket of aims measured too fast and too slow, and go
   to 1 (at most :data:`ROUNDS` stand-ins);
4. compress for real at the widths of a stand-in within ``F`` (the largest in the lower
   half of the window, else in the upper half, else under it) and time that model too;
   it has the stand-in's shapes, so its fraction is the median of both timings' ratios.
   Timing noise can still put it over ``F``: then its widths count as too slow and the
   search goes on (up to :data:`CONFIRMATIONS` real compressions).

A :class:`~netshrink.budget.allocation.BudgetError` gives the measured fraction when no
model is measured within ``F`` (the table underestimates even the smallest model an
allocation reaches).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import batches
from ..timing import forward_call, latency_ms, thread_count
from .allocation import BudgetError

#: How far under the target a measured latency may land (a fraction of the target).
TOLERANCE = 0.01
#: The most stand-ins built and timed for one latency budget (before the first real compression).
ROUNDS = 8
#: The most real compressions for one latency budget.
CONFIRMATIONS = 3
#: Wall time (s) spent timing each pair of models.
_TIMING_SECONDS = 1.0


@dataclass(frozen=True)
class Measured:
    """Batch-1 latencies (ms, medians) of the original and the compressed model, timed
    together, and the ratios ``t_compressed / t_original`` of neighbouring calls."""

    original_ms: float
    compressed_ms: float
    ratios: tuple[float, ...]

    @property
    def fraction(self) -> float:
        """The median ratio: the compressed model's latency as a fraction of the original's."""
        return float(np.median(self.ratios))

    def pooled(self, earlier: Measured) -> Measured:
        """This timing with an ``earlier`` one of a model of the same shapes: the ratios of both."""
        return Measured(self.original_ms, self.compressed_ms, earlier.ratios + self.ratios)


def measure_against_original(original: nn.Module, compressed: nn.Module, example, *, threads: int = 1) -> Measured:
    """Batch-1 latency of both models on the first sample of ``example``, their calls
    alternating (warm-up first; as many pairs as fill about 1 s, 25 to 1,000): a change
    of load on the machine falls on both calls of a pair, so their ratio keeps."""
    one = batches.head(example, 1)
    with thread_count(threads), torch.inference_mode():
        calls = [forward_call(model.eval(), one) for model in (original, compressed)]
        first = [latency_ms(call, repeats=3, warmup=3) for call in calls]
        pairs = int(np.clip(1e3 * _TIMING_SECONDS / max(sum(first), 1e-3), 25, 1000))
        times = np.array([[latency_ms(call, repeats=1, warmup=0) for call in calls] for _ in range(pairs)])
    return Measured(float(np.median(times[:, 0])), float(np.median(times[:, 1])),
                    tuple(float(r) for r in times[:, 1] / times[:, 0]))


@dataclass(frozen=True)
class Round:
    """One model timed: the aim it was allocated at, the table's prediction, the
    measurement, and whether it was a stand-in or the real compression."""

    aim: float
    predicted: float
    measured: Measured
    stand_in: bool

    @property
    def fraction(self) -> float:
        return self.measured.fraction

    def report(self) -> dict:
        return {"aim": self.aim, "predicted": self.predicted, "measured": self.fraction,
                "original_ms": self.measured.original_ms, "compressed_ms": self.measured.compressed_ms,
                "pairs": len(self.measured.ratios), "stand_in": self.stand_in}


def meet_measured(target: float, smallest: float, plan_at: Callable[[float], object],
                  stand_in: Callable[[object], object], real: Callable[[object], object],
                  measure: Callable[[object], Measured]):
    """``(plan, real model, its round, every round)``: the largest model measured within
    ``target`` (module doc).

    Args:
        target: the latency budget, a fraction of the original's measured latency.
        smallest: the smallest fraction of the table an allocation reaches.
        plan_at: the plan (with ``widths`` and ``allocation.cost / allocation.total``) at
            an aim, a fraction of the table's latency in ``[smallest, 1]``.
        stand_in: a model of a plan's shapes, made cheaply (what ``measure`` takes).
        real: the compression at a plan's widths (what ``measure`` takes).
        measure: the measured latencies of a model against the original.
    """
    search = _Search(target, smallest, plan_at)
    limit = ROUNDS
    for _ in range(CONFIRMATIONS):
        while search.next is not None and search.stand_ins < limit:
            if search.record(measure(stand_in(search.next[1])), stand_in=True):
                break
        key, (aim, chosen) = search.best()
        built = real(chosen)
        found = Round(aim, chosen.allocation.cost / chosen.allocation.total,
                      measure(built).pooled(search.timings[key]), stand_in=False)
        search.rounds.append(found)
        search.timings[key] = found.measured
        if found.fraction <= target:
            return chosen, built, found, search.rounds
        del built
        search.aim_again()
        limit = search.stand_ins + 3
    search.best()  # raises when no widths are left measured within the target
    raise BudgetError(f"latency={target:g}: {CONFIRMATIONS} real compressions at the widths of stand-ins within the "
                      "budget all measured over it; the machine's timing is too noisy for this budget. Measure on "
                      "a quieter machine or ask for a slightly larger latency")


class _Search:
    """The aims tried, the widths they allocated and the timings of each widths."""

    def __init__(self, target: float, smallest: float, plan_at):
        self.target, self.smallest, self.plan_at = target, smallest, plan_at
        self.low, self.goal = (1 - TOLERANCE) * target, (1 - TOLERANCE / 2) * target  # the window's floor, middle
        self.rounds: list[Round] = []
        self.plans: dict[tuple, tuple[float, object]] = {}  # widths -> (aim, plan)
        self.timings: dict[tuple, Measured] = {}  # widths -> every timing of models of those widths
        self.stand_ins = 0
        aim = max(target, smallest * (1 + 1e-12))  # the table may overestimate: measure before refusing
        self.next = (aim, plan_at(aim))

    def record(self, measured: Measured, stand_in: bool) -> bool:
        """Keep the measurement of ``next``; True when it lands in the window."""
        aim, chosen = self.next
        key = _widths(chosen)
        found = Round(aim, chosen.allocation.cost / chosen.allocation.total, measured, stand_in)
        self.rounds.append(found)
        self.plans[key] = (aim, chosen)
        self.timings[key] = measured
        self.stand_ins += stand_in
        if self.low <= found.fraction <= self.target:
            return True
        self.aim_again()
        return False

    def fraction(self, key: tuple) -> float:
        return self.timings[key].fraction

    def best(self) -> tuple[tuple, tuple[float, object]]:
        """The widths to compress for real: measured within the target, in the lower half
        of the window first (a real model of the same shapes, timed again, then most
        likely stays within), the upper half next, under the window last; the largest of
        the first of these that has any."""
        within = [key for key in self.timings if self.fraction(key) <= self.target]
        if not within:
            least = min(self.rounds, key=lambda r: r.fraction)
            raise BudgetError(
                f"latency={self.target:g}: the smallest model tried measures {least.fraction:.4g} of the original's "
                f"batch-1 latency ({least.measured.compressed_ms:.4g} ms of {least.measured.original_ms:.4g} ms) "
                f"after {len(self.rounds)} allocations from the latency table; what the widths do not change "
                f"(embeddings, norms, per-call overhead) takes the rest. Ask for at least {least.fraction:.3g}, "
                "or give size= or flops="
            )
        key = max(within, key=lambda key: (self.low <= self.fraction(key) <= self.goal,
                                           self.fraction(key) >= self.low, self.fraction(key)))
        return key, self.plans[key]

    def aim_again(self) -> None:
        """Set ``next`` to the ``(aim, plan)`` to build, or None when every aim left
        between the tried ones allocates widths already measured.

        The aim is the secant's (:func:`_secant_aim`) when it lies strictly between the
        largest aim measured too fast and the smallest measured too slow, else the middle
        of that bracket; an aim that allocates widths already measured moves halfway to
        the bracket's side its measurement points to."""
        slow = [self.plans[key][0] for key in self.timings if self.fraction(key) > self.target]
        fast = [self.plans[key][0] for key in self.timings if self.fraction(key) < self.low]
        low, high = max(fast, default=self.smallest), min(slow, default=1.0)
        aim = _secant_aim(self.rounds, self.goal)
        if not low < aim < high:
            aim = (low + high) / 2
        self.next = None
        for _ in range(12):
            aim = float(np.clip(aim, self.smallest, 1.0))
            chosen = self.plan_at(aim)
            key = _widths(chosen)
            if key not in self.timings:
                self.next = (aim, chosen)
                return
            aim = (aim + low) / 2 if self.fraction(key) > self.target else (aim + high) / 2


def _widths(plan) -> tuple:
    return tuple(sorted(dict(plan.widths).items()))


def _secant_aim(rounds: list[Round], goal: float) -> float:
    """The aim at which the measured fraction should be ``goal``: secant through the two
    tried aims whose measurements are nearest it, proportional from the nearest when the
    two do not rise together."""
    near = sorted(rounds, key=lambda r: abs(r.fraction - goal))
    first = near[0]
    for other in near[1:]:
        if other.aim != first.aim and (other.fraction - first.fraction) / (other.aim - first.aim) > 0:
            slope = (other.fraction - first.fraction) / (other.aim - first.aim)
            return first.aim + (goal - first.fraction) / slope
    return first.aim * goal / first.fraction
