"""Find the cuts of a model: places where whole neurons can be removed.

A *cut* is a producer Linear whose output neurons flow, through pointwise operations
only, into exactly one consumer Linear. A feature selector ``C`` commutes with any
pointwise function (Damle, "Compressing a simple neural network": ``Z(:, C) =
σ(X W(:, C))``; Robin §2.2, Lemma 1), so keeping a subset of the producer's neurons
and rewriting the consumer's input columns is exact up to the reconstruction error.

The graph is read with ``torch.fx``; nested modules and custom ``forward`` methods are
fine as long as they trace. The model itself is never modified.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .errors import UnsupportedCutError, UntraceableModelError

# Modules that act on each element independently, with no per-feature parameters.
_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Softshrink,
    nn.Hardshrink, nn.Threshold, nn.Identity, nn.Dropout, nn.AlphaDropout,
)

_POINTWISE_FUNCTIONS = {
    torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu,
    F.celu, F.gelu, F.silu, F.mish, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh,
    F.hardtanh, F.hardswish, F.hardsigmoid, F.softplus, F.softsign, F.tanhshrink,
    F.logsigmoid, F.softshrink, F.hardshrink, F.threshold, F.dropout, F.alpha_dropout,
    torch.abs, torch.exp, torch.sin, torch.cos, torch.square, torch.clamp, torch.clip,
}

_POINTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "tanh", "abs", "exp", "sin", "cos", "square",
    "clamp", "clip", "contiguous",
}

# Arithmetic with a Python number is pointwise too (e.g. ``2 * relu(x)``).
_SCALAR_ARITHMETIC = {
    operator.add, operator.sub, operator.mul, operator.truediv,
    torch.add, torch.sub, torch.mul, torch.div,
}
_SCALAR_ARITHMETIC_METHODS = {"add", "sub", "mul", "div"}


@dataclass(frozen=True)
class Cut:
    """A place where neurons can be removed.

    Attributes:
        producer: module path of the ``nn.Linear`` whose output neurons are removed.
        consumer: module path of the ``nn.Linear`` that reads them (its input columns
            are rewritten).
        between: the pointwise operations on the way, for reports (e.g. ``("relu",)``).
        width: number of neurons at the cut, ``producer.out_features``.
    """

    producer: str
    consumer: str
    between: tuple[str, ...]
    width: int

    @property
    def name(self) -> str:
        """The cut is named after the layer that loses neurons."""
        return self.producer


@dataclass(frozen=True)
class Skipped:
    """A Linear layer that is not a cut, and why (for diagnostics)."""

    module: str
    reason: str


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """Symbolically trace ``model`` with torch.fx, with an error that helps when it fails."""
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many exception types while tracing
        raise UntraceableModelError(
            f"torch.fx could not trace {type(model).__name__}: {type(exc).__name__}: {exc}. "
            "netshrink reads the model's graph to find which layers feed which. Make "
            "forward() free of data-dependent Python control flow (if/for on tensor "
            "values), or compress the traceable sub-module instead "
            "(e.g. compress(model.features, ...))."
        ) from exc


def find_cuts(model: nn.Module) -> tuple[list[Cut], list[Skipped]]:
    """Find every producer Linear → pointwise ops → consumer Linear chain in ``model``.

    Returns ``(cuts, skipped)``: cuts in execution order, and the Linear layers that
    are not producers of a cut with the reason (multiple users, a non-pointwise op
    on the way, the network's output, ...).
    """
    graph_module = trace(model)
    modules = dict(graph_module.named_modules())
    call_counts: dict[str, int] = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            call_counts[node.target] = call_counts.get(node.target, 0) + 1

    cuts: list[Cut] = []
    skipped: list[Skipped] = []
    for node in graph_module.graph.nodes:
        if node.op != "call_module" or type(modules[node.target]) is not nn.Linear:
            continue
        producer = node.target
        if call_counts[producer] > 1:
            skipped.append(Skipped(producer, "called more than once (shared weights)"))
            continue
        consumer, between, reason = _follow_pointwise(node, modules)
        if consumer is None:
            skipped.append(Skipped(producer, reason))
            continue
        if call_counts[consumer] > 1:
            skipped.append(Skipped(producer, f"its consumer {consumer!r} is called more than once"))
            continue
        cuts.append(Cut(producer, consumer, tuple(between), modules[producer].out_features))
    return cuts, skipped


def require_cuts(model: nn.Module) -> list[Cut]:
    """Like :func:`find_cuts` but raise when the model has no cut at all."""
    cuts, skipped = find_cuts(model)
    if not cuts:
        details = "; ".join(f"{s.module!r}: {s.reason}" for s in skipped) or "it has no nn.Linear layer"
        raise UnsupportedCutError(
            f"{type(model).__name__} has no place where neurons can be removed ({details}). "
            "A cut is an nn.Linear whose output goes, through pointwise activations only, "
            "into exactly one other nn.Linear."
        )
    return cuts


def select_cuts(cuts: list[Cut], names: list[str] | None) -> list[Cut]:
    """The cuts named in ``names`` (producer module paths), in model order; all if None."""
    if names is None:
        return cuts
    if isinstance(names, str):
        names = [names]
    known = {cut.name for cut in cuts}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UnsupportedCutError(
            f"no cut is named {', '.join(map(repr, unknown))}; the cuts of this model are "
            f"{', '.join(repr(c.name) for c in cuts)} (a cut is named after the layer that loses neurons)"
        )
    if not names:
        raise UnsupportedCutError("layers is empty: name at least one cut, or pass None for all")
    return [cut for cut in cuts if cut.name in set(names)]


def _follow_pointwise(node: torch.fx.Node, modules: dict[str, nn.Module]):
    """Walk from a producer's output through single-user pointwise nodes.

    Returns ``(consumer_path, between, reason)``; ``consumer_path`` is None when the
    walk does not end at a Linear, and ``reason`` says why.
    """
    between: list[str] = []
    current = node
    while True:
        users = list(current.users)
        if len(users) == 0:
            return None, between, "its output is not used"
        if len(users) > 1:
            return None, between, (
                f"its output is read by {len(users)} operations "
                f"({', '.join(u.name for u in users)}); coupled cuts are not supported yet"
            )
        user = users[0]
        if user.op == "output":
            return None, between, "it produces the network's output"
        if user.op == "call_module" and type(modules[user.target]) is nn.Linear:
            if user.args and user.args[0] is current and len(user.args) == 1 and not user.kwargs:
                return user.target, between, ""
            return None, between, f"{user.target!r} receives it in an unexpected position"
        label = _pointwise_label(user, current, modules)
        if label is None:
            return None, between, f"{_describe(user)} between it and the next Linear is not pointwise"
        between.append(label)
        current = user


def _pointwise_label(user: torch.fx.Node, value: torch.fx.Node, modules) -> str | None:
    """A short label if ``user`` applies a pointwise function to ``value``, else None."""
    if not user.args or user.args[0] is not value:
        if user.target in _SCALAR_ARITHMETIC and len(user.args) == 2 and user.args[1] is value:
            other = user.args[0]
            return _scalar_label(user) if isinstance(other, (int, float)) else None
        return None
    rest = list(user.args[1:]) + list(user.kwargs.values())
    if any(isinstance(a, torch.fx.Node) for a in rest):
        return None
    if user.op == "call_module":
        module = modules[user.target]
        if isinstance(module, _POINTWISE_MODULES):
            return type(module).__name__.lower()
        if isinstance(module, nn.PReLU) and module.num_parameters == 1:
            return "prelu"
        return None
    if user.op == "call_function":
        if user.target in _POINTWISE_FUNCTIONS:
            return getattr(user.target, "__name__", str(user.target))
        if user.target in _SCALAR_ARITHMETIC:
            return _scalar_label(user)
        return None
    if user.op == "call_method":
        if user.target in _POINTWISE_METHODS:
            return user.target
        if user.target in _SCALAR_ARITHMETIC_METHODS:
            return _scalar_label(user)
    return None


def _scalar_label(user: torch.fx.Node) -> str | None:
    operands = [a for a in user.args if not isinstance(a, torch.fx.Node)]
    if len(operands) != 1 or not isinstance(operands[0], (int, float)):
        return None
    name = getattr(user.target, "__name__", str(user.target))
    return f"{name} {operands[0]}"


def _describe(node: torch.fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target!r}"
    return f"{node.op} {getattr(node.target, '__name__', node.target)!s}"
