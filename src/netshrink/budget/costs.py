"""What a model costs as a function of the units each cut keeps: parameters and FLOPs, exactly.

Removing units of a cut shrinks, in proportion, every tensor indexed by them: a
producer's weight rows and bias, a companion's channels (BatchNorm, depthwise
convolution), a consumer's weight columns, and an attention's per-head products. A
layer between two cuts loses rows to one and columns to the other, so its cost is
*bilinear* in their widths: a ``Linear(n_in, n_out)`` reading cut ``a`` and writing
cut ``b`` holds ``n_out·n_in·(k_a/n_a)·(k_b/n_b)`` weights. The cost of a model is
therefore

    cost(k) = constant + Σ_terms coef · Π_{cuts c of the term} k_c / n_c,

a polynomial of degree one in each cut's width, except for a layer that both writes and
reads the same units (a residual block's layer on a jointly cut stream), whose term is
quadratic in that width. For parameters
the terms are the model's parameter tensors; for FLOPs, the modules' own products at
the calibration input shape (:mod:`netshrink.budget.flops`). Both are exact: the
parameters of the model compressed to widths ``k`` (the allocation's, or any other)
are ``cost(k)``, to the unit (tested against the compressed models).

The *levels* of a knob are its widths ``0..full``; :meth:`CostModel.along` gives the
cost at each level of one knob with the others fixed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from ..errors import UnsupportedCutError
from ..graph import Cut
from .flops import module_flops


@dataclass(frozen=True)
class Term:
    """``coef · Π_{(name, full) in factors} level[name] / full``."""

    coef: float
    factors: tuple[tuple[str, int], ...]

    def value(self, levels: Mapping[str, int]) -> float:
        value = self.coef
        for name, full in self.factors:
            value *= levels[name] / full
        return value


@dataclass
class CostModel:
    """A polynomial cost of the knobs' levels (module doc).

    Attributes:
        unit: what is counted (``"parameters"``, ``"FLOPs"``).
        constant: the part no knob changes.
        terms: the parts that scale with some knobs.
        full: each knob's full level (its width).
    """

    unit: str
    constant: float
    terms: list[Term]
    full: dict[str, int]
    _touching: dict[str, list[Term]] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._touching = {name: [] for name in self.full}
        for term in self.terms:
            for name in dict.fromkeys(name for name, _ in term.factors):
                self._touching[name].append(term)

    @property
    def total(self) -> float:
        """The cost with every knob at its full level (the original model's)."""
        return self.value(self.full)

    def value(self, levels: Mapping[str, int]) -> float:
        """The cost at ``levels`` (a level per knob; missing knobs at full)."""
        levels = {**self.full, **levels}
        return self.constant + sum(term.value(levels) for term in self.terms)

    def along(self, name: str, levels: Mapping[str, int]) -> np.ndarray:
        """``(full + 1,)``: the total cost at each level ``0..full`` of knob ``name``,
        the other knobs at ``levels``. A line in the level, or a parabola where a layer
        both writes and reads the knob's units (a residual stream's own block)."""
        levels = {**self.full, **levels}
        full = self.full[name]
        fractions = np.arange(full + 1) / full
        values = np.full(full + 1, self.value({**levels, name: full}))
        for term in self._touching[name]:
            power = sum(1 for factor, _ in term.factors if factor == name)
            values += term.value({**levels, name: full}) * (fractions**power - 1.0)
        return values


@dataclass(frozen=True)
class _Roles:
    """How a module's tensors scale: by the cut it writes (``out``), reads (``inputs``),
    is a per-channel companion of, or whose heads its own products compute."""

    out: Cut | None = None
    inputs: Cut | None = None
    companion: Cut | None = None
    heads: Cut | None = None


def _roles(cuts: Sequence[Cut]) -> dict[str, _Roles]:
    roles: dict[str, dict] = {}

    def assign(path: str, role: str, cut: Cut) -> None:
        entry = roles.setdefault(path, {})
        if entry.get(role) is not None and entry[role].name != cut.name:
            raise UnsupportedCutError(
                f"{path!r} is {_ROLE_WORDS[role]} of both {entry[role].name!r} and {cut.name!r}; a budget "
                "can only price a layer whose rows and columns each belong to one cut: compress the two "
                "cuts in separate calls (layers=[...])"
            )
        entry[role] = cut

    for cut in cuts:
        for path in cut.producers:
            assign(path, "out", cut)
        for path in cut.companions:
            assign(path, "companion", cut)
        for path in cut.consumers:
            assign(path, "inputs", cut)
        if cut.heads is not None:
            assign(cut.heads.module, "heads", cut)
    return {path: _Roles(**entry) for path, entry in roles.items()}


_ROLE_WORDS = {"out": "a producer", "inputs": "a consumer", "companion": "a companion", "heads": "the attention"}


def _factors(*cuts: Cut | None) -> tuple[tuple[str, int], ...]:
    return tuple((cut.name, cut.width) for cut in cuts if cut is not None)


def parameter_costs(model: nn.Module, cuts: Sequence[Cut]) -> CostModel:
    """The parameters of ``model`` as a function of the units each of ``cuts`` keeps.

    A producer's weight scales with its cut's width and with the width of the cut it
    reads (if any); its bias with its own cut only; a companion's parameters with its
    cut; a consumer's weight with the cut it reads (its bias stays). Shared (tied)
    parameters count once, as ``model.parameters()`` does.
    """
    roles = _roles(cuts)
    constant, terms = 0.0, []
    for name, parameter in model.named_parameters():
        path, _, attribute = name.rpartition(".")
        role = roles.get(path)
        count = parameter.numel()
        if role is None:
            constant += count
            continue
        if role.companion is not None:
            factors = _factors(role.companion)
        elif attribute == "weight":
            factors = _factors(role.out, role.inputs)
        elif attribute == "bias":
            factors = _factors(role.out)
        else:
            factors = ()
        if factors:
            terms.append(Term(float(count), factors))
        else:
            constant += count
    return CostModel("parameters", constant, terms, {cut.name: cut.width for cut in cuts})


def flop_costs(model: nn.Module, cuts: Sequence[Cut], example) -> CostModel:
    """The forward FLOPs of ``model`` on ``example`` (the calibration input shape) as a
    function of the units each of ``cuts`` keeps (:func:`~netshrink.budget.flops.module_flops`).

    A layer's own products scale like its weight (rows of its cut, columns of the cut it
    reads), a depthwise companion's with its channels, an attention's score and context
    products with its heads.
    """
    roles = _roles(cuts)
    constant, terms = 0.0, []
    for path, flops in module_flops(model, example).items():
        role = roles.get(path)
        if role is None:
            constant += flops
            continue
        if role.companion is not None:
            factors = _factors(role.companion)
        else:
            factors = _factors(role.out, role.inputs, role.heads)
        if factors:
            terms.append(Term(float(flops), factors))
        else:
            constant += flops
    return CostModel("FLOPs", constant, terms, {cut.name: cut.width for cut in cuts})
