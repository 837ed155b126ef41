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
from ..layers import weight_matrix
from ..modules import Sampled
from .flops import module_flops
from .ranks import knob as rank_knob


@dataclass(frozen=True)
class Term:
    """``coef · Π_{(name, full) in factors} level[name] / full``."""

    coef: float
    factors: tuple[tuple[str, int], ...]

    @property
    def knobs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for name, _ in self.factors))

    def value(self, levels: Mapping[str, int]) -> float:
        value = self.coef
        for name, full in self.factors:
            value *= levels[name] / full
        return value

    def along(self, name: str, full: int, levels: Mapping[str, int]) -> np.ndarray:
        """``(full + 1,)``: the term at each level of knob ``name``, the others at ``levels``."""
        power = sum(1 for factor, _ in self.factors if factor == name)
        return self.value({**levels, name: full}) * (np.arange(full + 1) / full) ** power


@dataclass(frozen=True)
class FactorTerm:
    """A layer whose weight may be factorised at rank ``r`` (``W ≈ P·Q``, Robin §2.3).

    Dense, the layer costs ``coef · f_in · f_out`` (``f`` the fractions its input and
    output cuts keep, 1 without one); factorised, its two thin layers cost
    ``coef · r·(d·f_in + out·f_out) / (d·out)`` — ``r·(d + out)`` parameters, or the
    same proportion of its FLOPs. It is factorised only where that is cheaper, and never
    at full rank (the rank knob's top level means dense).

    Attributes:
        inputs, outputs: ``(knob, full)`` of the cuts its columns and rows belong to, or None.
        rank: ``(knob, full rank)``; ``d``, ``out``: its full input columns and rows.
    """

    coef: float
    inputs: tuple[str, int] | None
    outputs: tuple[str, int] | None
    rank: tuple[str, int]
    d: int
    out: int

    @property
    def knobs(self) -> tuple[str, ...]:
        return tuple(factor[0] for factor in (self.inputs, self.outputs, self.rank) if factor is not None)

    def _fraction(self, factor, levels, name=None, full=None):
        if factor is None:
            return 1.0
        if factor[0] == name:
            return np.arange(full + 1) / factor[1]
        return levels[factor[0]] / factor[1]

    def _at(self, levels: Mapping[str, int], name: str | None = None, full: int | None = None):
        f_in = self._fraction(self.inputs, levels, name, full)
        f_out = self._fraction(self.outputs, levels, name, full)
        rank = np.arange(full + 1) if self.rank[0] == name else levels[self.rank[0]]
        dense = self.coef * f_in * f_out
        factored = self.coef * rank * (self.d * f_in + self.out * f_out) / (self.d * self.out)
        return np.where(np.asarray(rank) >= self.rank[1], dense, np.minimum(dense, factored))

    def value(self, levels: Mapping[str, int]) -> float:
        return float(self._at(levels))

    def along(self, name: str, full: int, levels: Mapping[str, int]) -> np.ndarray:
        return np.broadcast_to(self._at(levels, name, full), (full + 1,)).astype(np.float64)

    def factorised(self, levels: Mapping[str, int]) -> bool:
        """Whether the layer is factorised at ``levels`` (cheaper than dense, below full rank)."""
        f_in = self._fraction(self.inputs, levels)
        f_out = self._fraction(self.outputs, levels)
        rank = levels[self.rank[0]]
        return rank < self.rank[1] and rank * (self.d * f_in + self.out * f_out) < self.d * self.out * f_in * f_out


@dataclass
class CostModel:
    """A cost of the knobs' levels (module doc): a constant plus terms, each a product
    of the fractions its knobs keep (:class:`Term`) or a layer that may be factorised
    (:class:`FactorTerm`).

    Attributes:
        unit: what is counted (``"parameters"``, ``"FLOPs"``).
        constant: the part no knob changes.
        terms: the parts that scale with some knobs.
        full: each knob's full level (its width, or a layer's full rank).
    """

    unit: str
    constant: float
    terms: list
    full: dict[str, int]
    _touching: dict[str, list] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._touching = {name: [] for name in self.full}
        for term in self.terms:
            for name in term.knobs:
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
        the other knobs at ``levels``. A line in the level, a parabola where a layer both
        writes and reads the knob's units (a residual stream's own block), or a kinked
        line for a rank."""
        levels = {**self.full, **levels}
        full = self.full[name]
        touching = self._touching[name]
        rest = self.value(levels) - sum(term.value(levels) for term in touching)
        return rest + sum((term.along(name, full, levels) for term in touching), np.zeros(full + 1))


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


def _factor_term(coef: float, module: nn.Module, role: _Roles, path: str, rank: int) -> FactorTerm:
    layer = module.layer if isinstance(module, Sampled) else module
    out, d = weight_matrix(layer, None).shape
    return FactorTerm(coef, _factor(role.inputs), _factor(role.out), (rank_knob(path), rank), d, out)


def _knobs(cuts: Sequence[Cut], ranks: Mapping[str, int]) -> dict[str, int]:
    return {**{cut.name: cut.width for cut in cuts}, **{rank_knob(path): rank for path, rank in ranks.items()}}


def _factor(cut: Cut | None) -> tuple[str, int] | None:
    return None if cut is None else (cut.name, cut.width)


def parameter_costs(model: nn.Module, cuts: Sequence[Cut], ranks: Mapping[str, int] | None = None) -> CostModel:
    """The parameters of ``model`` as a function of the units each of ``cuts`` keeps.

    A producer's weight scales with its cut's width and with the width of the cut it
    reads (if any); its bias with its own cut only; a companion's parameters with its
    cut; a consumer's weight with the cut it reads (its bias stays). Shared (tied)
    parameters count once, as ``model.parameters()`` does. ``ranks``: the layers (path:
    full rank) whose weight may be factorised at the level of their rank knob
    (:class:`FactorTerm`, :mod:`netshrink.budget.ranks`).
    """
    roles = _roles(cuts)
    ranks = dict(ranks or {})
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
        elif attribute == "weight" and path in ranks:
            terms.append(_factor_term(float(count), model.get_submodule(path), role, path, ranks[path]))
            continue
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
    return CostModel("parameters", constant, terms, _knobs(cuts, ranks))


def flop_costs(model: nn.Module, cuts: Sequence[Cut], example, ranks: Mapping[str, int] | None = None) -> CostModel:
    """The forward FLOPs of ``model`` on ``example`` (the calibration input shape) as a
    function of the units each of ``cuts`` keeps (:func:`~netshrink.budget.flops.module_flops`).

    A layer's own products scale like its weight (rows of its cut, columns of the cut it
    reads), a depthwise companion's with its channels, an attention's score and context
    products with its heads; a layer of ``ranks`` may be factorised (:class:`FactorTerm`:
    ``r·(d + out)`` products per row instead of ``d·out``).
    """
    roles = _roles(cuts)
    ranks = dict(ranks or {})
    constant, terms = 0.0, []
    for path, flops in module_flops(model, example).items():
        role = roles.get(path)
        if role is None:
            constant += flops
            continue
        if path in ranks:
            terms.append(_factor_term(float(flops), model.get_submodule(path), role, path, ranks[path]))
            continue
        if role.companion is not None:
            factors = _factors(role.companion)
        else:
            factors = _factors(role.out, role.inputs, role.heads)
        if factors:
            terms.append(Term(float(flops), factors))
        else:
            constant += flops
    return CostModel("FLOPs", constant, terms, _knobs(cuts, ranks))
