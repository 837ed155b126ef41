"""The small interface every way of deciding implements.

A method is built with its options (``tol``, ``keep``, ...). For each cut it names the
statistic it needs from the calibration data (``statistic``) and, from that statistic
and the consumer layer alone, decides which neurons to keep and the consumer's new
input weights (``decide``). Methods never touch modules: rewriting is done elsewhere.
They subclass :class:`Method`, whose ``prepare`` (one look at every cut before any
work) does nothing unless overridden.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from ..errors import InvalidInputError
from ..graph import KINDS, Cut


@dataclass(frozen=True)
class Decision:
    """What to do at one cut.

    Attributes:
        kept: ``(k,)`` int64, ascending indices of the units (neurons/channels) to keep.
        consumer_weights: one ``(out_i, k·s_i)`` matrix per consumer of the cut (in
            ``cut.consumers`` order): its new input weights, columns grouped by kept
            unit as in :func:`netshrink.layers.weight_matrix`.
        error: the method's measure of the reconstruction error (see each method).
        factors: for methods that factorise instead of removing units (``lowrank``):
            one ``(P: (out_i, r), Q: (r, d_i))`` pair per consumer, ``W ≈ P Q``; then
            ``kept`` is every unit and ``consumer_weights`` is empty.
        bias_shifts: one ``(out_i,)`` vector or None per consumer, added to its bias
            (the intercept of a refit); empty when no bias changes.
        details: what the method reports beyond the error (e.g. a solver's objective,
            iterations, time, stop reason); JSON-serialisable values.
    """

    kept: torch.Tensor
    consumer_weights: tuple[torch.Tensor, ...]
    error: float
    factors: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None
    bias_shifts: tuple[torch.Tensor | None, ...] = ()
    details: dict = field(default_factory=dict)


class Method(Protocol):
    name: str
    #: True when the method needs the original model's inputs beside the current ones
    #: (targets ``y = W z`` of top-down chaining, Robin §2.7).
    needs_reference: bool
    #: True when the kept units' consumer weights are refitted by least squares (the
    #: loss curves of a budget allocation assume a refit; otherwise the removed units'
    #: contribution is simply lost, :mod:`netshrink.budget.curves`).
    refits: bool = True
    #: False for a method that keeps every unit and factorises layers instead
    #: (``lowrank``): a budget then allocates ranks only.
    removes_units: bool = True

    def prepare(self, model: nn.Module, cuts: list[Cut]) -> None:
        """Called once with the original model and every cut to be compressed, before
        any is observed (e.g. to price the cuts against each other); most methods need
        nothing here."""

    def weigh(self, sensitivities: Mapping[str, torch.Tensor]) -> None:
        """The output sensitivity ``G`` of every consumer output (by consumer path) that a
        budget's allocation measured (:mod:`netshrink.budget.sensitivity`), before any cut
        is ranked or decided. A method that chooses units by the estimated loss keeps them
        (``obs``); the others choose by their own objective and ignore them."""

    def statistic(self, cut: Cut, consumers: list[nn.Module]) -> object:
        """A fresh accumulator with ``update(index, current, original)`` for this cut."""

    def decide(self, cut: Cut, statistic: object, consumers: list[nn.Module],
               producers: list[nn.Module]) -> Decision:
        """Choose the units to keep and the consumers' new input weights (from the
        statistic and the current consumer/producer layers; modules are not modified)."""

    def order(self, cut: Cut, statistic: object, consumers: list[nn.Module],
              producers: list[nn.Module]) -> torch.Tensor:
        """``(width,)`` int64: the cut's units ranked by the method's own path, the unit
        it would keep first at the front (a budget keeps a prefix of it,
        :mod:`netshrink.budget`). A method without one cannot take a budget."""
        raise InvalidInputError(
            f"method {self.name!r} ranks no units, so it cannot take a size, flops or latency budget; "
            "give it its own budget (keep=...)"
        )


class Widths(dict):
    """Units kept per cut, by cut name: ``Widths({"hidden.0": 300, "hidden.1": 80})``.

    The ``keep`` a budget allocation hands a method (:mod:`netshrink.budget`); a cut it
    does not name keeps every unit.
    """


def check_budget(tol: float | None, keep) -> None:
    """Exactly one of ``tol`` (≥ 0) and ``keep`` (see :func:`check_keep`) must be given."""
    if (tol is None) == (keep is None):
        raise InvalidInputError(
            "give exactly one of tol (the ε of the stopping rule, ≥ 0) or keep "
            f"(the fraction of neurons kept per layer, in (0, 1]); got tol={tol!r}, keep={keep!r}"
        )
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float))
                            or not math.isfinite(tol) or tol < 0):
        raise InvalidInputError(f"tol must be a finite number ≥ 0, got {tol!r}")
    if keep is not None:
        check_keep(keep)


def check_keep(keep) -> float | dict[str, float]:
    """``keep``: the fraction of units kept at every cut, in (0, 1], or one fraction per
    cut kind (``{"neurons": 0.5, "heads": 0.75}``; see :data:`netshrink.graph.KINDS`).

    Returns it as a float or a dict. Zero is refused: it would leave a layer with no
    neuron or an attention with no head. A :class:`Widths` (units per cut, from a
    budget allocation) is returned as it is, once its counts are checked.
    """
    if isinstance(keep, Widths):
        for name, count in keep.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise InvalidInputError(f"Widths[{name!r}] must be a positive number of units, got {count!r}")
        return keep
    if isinstance(keep, Mapping):
        if not keep:
            raise InvalidInputError("keep is an empty mapping; give a fraction per cut kind, e.g. {'heads': 0.5}")
        unknown = sorted(set(keep) - set(KINDS))
        if unknown:
            raise InvalidInputError(f"keep has unknown cut kind(s) {unknown}; the kinds are {', '.join(KINDS)}")
        return {kind: _fraction(value, f"keep[{kind!r}]", kind) for kind, value in keep.items()}
    return _fraction(keep, "keep", None)


def _fraction(value, label: str, kind: str | None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInputError(f"{label} must be a fraction in (0, 1] of the units kept per cut, got {value!r}")
    if value == 0:
        what = {"heads": "zero heads in every attention", "neurons": "zero neurons in a layer",
                "channels": "zero channels in a layer"}.get(kind, "a layer with zero neurons or an attention "
                                                                 "with zero heads")
        raise InvalidInputError(
            f"{label}=0 would leave {what}, which no longer computes anything; give a fraction in (0, 1] "
            "(keep=f keeps ceil(f·width) units of each cut, at least one), or leave the cuts out of layers="
        )
    if not 0 < value <= 1:
        raise InvalidInputError(f"{label} must be a fraction in (0, 1] of the units kept per cut, got {value!r}")
    return float(value)


def units_to_keep(keep: float | Mapping[str, float], cut: Cut) -> int:
    """Units kept at ``cut`` for the budget ``keep`` (:func:`check_keep`): ``ceil(f·width)``.

    For grouped-query attention the fraction counts query heads, which must come in whole
    key/value groups: ``ceil(f·heads)`` has to be a multiple of the heads per group.
    A :class:`Widths` gives the count itself (at most the cut's width).
    """
    if isinstance(keep, Widths):
        return min(keep.get(cut.name, cut.width), cut.width)
    fraction = keep.get(cut.kind, 1.0) if isinstance(keep, Mapping) else keep
    heads = cut.heads
    if heads is None or heads.per_unit == 1:
        return count_from_fraction(fraction, cut.width)
    total = heads.query_heads(cut.width)
    wanted = count_from_fraction(fraction, total)
    if wanted % heads.per_unit:
        options = ", ".join(f"{g * heads.per_unit / total:g}" for g in range(1, cut.width + 1))
        raise InvalidInputError(
            f"keep={fraction:g} asks for {wanted} of the {total} query heads of {cut.name!r}, but they share "
            f"{cut.width} key/value heads, {heads.per_unit} query heads each: a pruned attention keeps whole "
            f"groups. Keep a multiple of {heads.per_unit} heads (keep = {options})"
        )
    return wanted // heads.per_unit


def count_from_fraction(keep: float, width: int) -> int:
    """Neurons kept for a fraction ``keep`` of ``width``: ``ceil(keep·width)``, at least 1."""
    return max(1, min(width, math.ceil(keep * width - 1e-9)))
