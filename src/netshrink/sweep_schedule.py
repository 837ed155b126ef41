"""Schedules of one method at many budgets (:func:`netshrink.sweep`), sharing what chaining allows.

A compression at one budget is observe → decide → rewrite (:mod:`netshrink.schedule`).
Across the budgets of a sweep, what can be shared depends on the chaining (Robin §2.7):

- ``"parallel"`` and ``"bottom_up"``: every statistic comes from the original model, so
  all cuts are observed once, in one pass, for every budget; each budget decides its cuts
  from those statistics on a fresh copy of the model (bottom-up applying each decision
  before the next cut is decided, as :func:`~netshrink.schedule.run_schedule` does).
  The statistics of every cut are held until the sweep ends (one compression holds them
  only until its cut is decided).
- ``"top_down"``: cut ``k`` of a budget is observed on the model in which that budget's
  cuts ``1..k-1`` are already compressed, so budgets cannot share passes in general: each
  budget runs the top-down schedule itself. A statistic is reused, though, whenever an
  earlier budget observed the same cut after exactly the same decisions (same kept units,
  weights and intercepts, compared by a digest): always the first cut, which sees the
  original model, and later cuts where the budgets agree on every earlier one — group lasso
  + debias keeping every channel of a CNN's first layers over a range of λ gives the same
  refit, hence the same model, up to the first cut where the budgets differ. The reused
  statistic is the one the earlier budget accumulated; the observation pass of the later
  budget still runs its forward but adds nothing. Statistics of the latest budget's run are
  kept for the next one (every cut's, at most). A top-down sweep of a single cut is a
  parallel one (its only cut sees the original model).

Results are those of separate compressions: the same statistics (the same operations on
the same data) and the same decisions, except for warm starts, which a sweep hands
between the methods of its budgets (:class:`~netshrink.methods.warm_start.WarmStarts`).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .activation_cache import CacheOptions
from .errors import InvalidInputError
from .graph import Cut
from .methods import Decision, Method
from .observe import Calibration, observe
from .rewrite import apply_decision, layer_at, remove_units, rewrite_inputs
from .schedule import CHAININGS, run_schedule


class SharedStatistics:
    """Compressions of ``model`` at many budgets of one method, sharing their statistics.

    ``model`` is the original: never modified (observed in place, hooks removed
    afterwards). Every budget's method must take its statistics from the same
    ``statistic`` (budgets of one method do: a statistic depends on the cut, not on the
    budget).
    """

    def __init__(self, model: nn.Module, calibration: Calibration, chaining: str, progress: bool = False,
                 cache: CacheOptions | None = None):
        if chaining not in CHAININGS:
            raise InvalidInputError(f"unknown chaining {chaining!r}; use one of {', '.join(CHAININGS)}")
        self.model, self.calibration, self.chaining, self.progress = model, calibration, chaining, progress
        self.cache = cache  # how top-down runs store the activations they propagate
        self._statistics: dict[str, object] = {}  # parallel, bottom-up: by cut name, on the original model
        self._observations = _Observations()      # top-down: by cut and the decisions before it

    def compress(self, cuts: Sequence[Cut], method: Method) -> tuple[nn.Module, list[tuple[Cut, Decision]]]:
        """A compressed copy of the model at ``method``'s budget and its decisions, in cut order
        (what ``run_schedule`` gives on a fresh copy with the same chaining)."""
        shrunk = copy.deepcopy(self.model)
        if self.chaining == "top_down" and len(cuts) > 1:
            remembering = _Remembering(method, self._observations)
            try:
                decisions = run_schedule(shrunk, cuts, self.calibration, remembering, chaining="top_down",
                                         progress=self.progress, cache=self.cache)
            except BaseException:
                self._observations.abandon_run()
                raise
            self._observations.finish_run()
            return shrunk, decisions
        missing = [cut for cut in cuts if cut.name not in self._statistics]
        if missing:
            self._statistics.update(observe(self.model, missing, self.calibration, method.statistic,
                                            progress=self.progress))
        bottom_up = self.chaining == "bottom_up"
        decisions: dict[str, Decision] = {}
        for cut in (reversed(cuts) if bottom_up else cuts):
            decisions[cut.name] = method.decide(cut, self._statistics[cut.name], *_layers(shrunk, cut))
            if bottom_up:
                apply_decision(shrunk, cut, decisions[cut.name])
        if not bottom_up:
            for cut in cuts:
                rewrite_inputs(shrunk, cut, decisions[cut.name])
            for cut in cuts:
                remove_units(shrunk, cut, decisions[cut.name])
        return shrunk, [(cut, decisions[cut.name]) for cut in cuts]


def _layers(model: nn.Module, cut: Cut) -> tuple[list[nn.Module], list[nn.Module]]:
    """The cut's current consumer and producer layers."""
    return [layer_at(model, p) for p in cut.consumers], [layer_at(model, p) for p in cut.producers]


class _Observed:
    """A statistic an earlier budget accumulated, handed to a later budget's observation
    pass: it takes no rows (it already has them all)."""

    def __init__(self, statistic: object):
        self.statistic = statistic

    def update(self, index: int, current: torch.Tensor, original: torch.Tensor | None = None) -> None:
        """Nothing to add: the same rows were accumulated by the earlier budget."""

    def all_reduce(self, ranks) -> None:
        """Nothing to sum: the statistic was summed over the ranks when it was observed."""


class _Observations:
    """Top-down statistics by ``(cut name, decisions before it)``.

    Those the latest finished run made or reused are kept for the next run; the others
    are dropped (a sweep ordered along its budget path shares with its neighbour).
    """

    def __init__(self):
        self._kept: dict[tuple, object] = {}
        self._run: dict[tuple, object] = {}

    def statistic(self, key: tuple, make: Callable[[], object]) -> object:
        """The statistic for ``key``: the kept one (as :class:`_Observed`) or a new one."""
        if key in self._kept:
            self._run[key] = self._kept[key]
            return _Observed(self._kept[key])
        self._run[key] = make()
        return self._run[key]

    def finish_run(self) -> None:
        self._kept, self._run = self._run, {}

    def abandon_run(self) -> None:
        """Forget the statistics of a run that failed (some may be incomplete)."""
        self._run = {}


class _Remembering:
    """One budget's method in a top-down sweep: its statistics come from
    :class:`_Observations`, keyed by the cut and the digests of the decisions made before
    it in this run; everything else is the method's own."""

    def __init__(self, method: Method, observations: _Observations):
        self.method = method
        self.observations = observations
        self.path: tuple[tuple[str, str], ...] = ()

    def __getattr__(self, name: str):
        return getattr(self.method, name)

    def statistic(self, cut: Cut, consumers: list[nn.Module]) -> object:
        return self.observations.statistic((cut.name, self.path), lambda: self.method.statistic(cut, consumers))

    def decide(self, cut: Cut, statistic: object, consumers: list[nn.Module],
               producers: list[nn.Module]) -> Decision:
        if isinstance(statistic, _Observed):
            statistic = statistic.statistic
        decision = self.method.decide(cut, statistic, consumers, producers)
        self.path += ((cut.name, fingerprint(decision)),)
        return decision


def fingerprint(decision: Decision) -> str:
    """A digest of what rewriting ``decision`` changes: kept units, consumer weights,
    factors and intercepts (not ``error`` or ``details``). Equal digests, equal rewrites."""
    digest = hashlib.sha256()

    def add(tag: bytes, tensor: torch.Tensor | None) -> None:
        digest.update(tag)
        if tensor is None:
            digest.update(b"none")
            return
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())

    add(b"kept", decision.kept)
    for weight in decision.consumer_weights:
        add(b"weight", weight)
    if decision.factors is not None:
        for left, right in decision.factors:
            add(b"left", left)
            add(b"right", right)
    for shift in decision.bias_shifts:
        add(b"shift", shift)
    return digest.hexdigest()
