"""The torch.fx reader: the cuts of a model that ``torch.fx.symbolic_trace`` can trace.

A feature selector commutes with every channelwise operation (Damle, "Compressing a
simple neural network": ``Z(:, C) = σ(X W(:, C))``; Robin §2.2, Lemma 1): pointwise
activations, BatchNorm, depthwise convolutions, max/avg pooling, flatten, and the sum
or product of two tensors of the same channels. So the graph is partitioned into
*channel spaces*: sets of tensors whose channel ``c`` is computed from channel ``c`` of
the others.

A space is written by *producers* (``nn.Linear``/``nn.Conv2d`` outputs), may pass
through *companions* (BatchNorm layers and depthwise convolutions, sliced with the
producers) and is read by *consumers* (``nn.Linear``/``nn.Conv2d`` inputs). Keeping a
subset of its channels means slicing every producer's rows and every companion, and
rewriting every consumer's input columns — exact up to the consumers' reconstruction
error. A space with one producer and one consumer is a plain cut; a residual stream
(several producers joined by additions, read by several layers) is a *joint* cut,
pruned as one coupled group (Robin §2.6).

When a space cannot lose channels statically (it reaches the network's output or an
operation that mixes channels, or its readers should keep different channels),
each reader can instead get a *dynamic sampler*: ``index_select`` of its kept
channels before the layer, the producers untouched (Robin §2.6, ``coupling="sampler"``).

This reader works on module calls and needs no example input; it does not see into
attention (a reshape into heads mixes channels for it). The model is never modified.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedCutError, UntraceableModelError
from ..layers import companion_width, group_size, in_units, is_depthwise, is_layer, out_units, unsupported_reason
from .cuts import Cut, Skipped

# Modules that act on each element independently, with no per-feature parameters.
_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Softshrink,
    nn.Hardshrink, nn.Threshold, nn.Identity, nn.Dropout, nn.AlphaDropout, nn.Dropout2d,
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

# Arithmetic: with a Python number it is pointwise (``2 * relu(x)``); between two
# tensors of one space it joins them (``x + f(x)``).
_ARITHMETIC = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd,
    torch.add, torch.sub, torch.mul, torch.div,
}
_ARITHMETIC_METHODS = {"add", "sub", "mul", "div", "add_", "mul_"}
_JOINING = {operator.add, operator.sub, operator.mul, operator.iadd, torch.add, torch.sub,
            torch.mul, "add", "sub", "mul", "add_", "mul_"}

_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
                   torch.max_pool2d}
_NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d)

# Tensor layouts: "features" (units on the last dim, Linear outputs), "maps"
# (N, C, H, W, Conv outputs), "flat" (maps flattened to (N, C·h·w)), "input" (a tensor no
# layer wrote: the network's input, or the output of an operation that mixes channels).
_FEATURES, _MAPS, _FLAT, _INPUT = "features", "maps", "flat", "input"


@dataclass
class _Space:
    producers: list[str] = field(default_factory=list)
    companions: list[str] = field(default_factory=list)
    consumers: list[tuple[str, str, int]] = field(default_factory=list)  # (path, layout, node order)
    between: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """Symbolically trace ``model`` with torch.fx, with an error that helps when it fails."""
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many exception types while tracing
        raise UntraceableModelError(
            f"torch.fx could not trace {type(model).__name__}: {type(exc).__name__}: {exc}"
        ) from exc


def read(model: nn.Module, coupling: str) -> tuple[list[Cut], list[Skipped]]:
    """The cuts and skipped layers of ``model`` (see :func:`netshrink.graph.find_cuts`)."""
    spaces = _Spaces(trace(model))
    cuts: list[tuple[int, Cut]] = []
    skipped: list[Skipped] = []
    for space in spaces.finished():
        width = spaces.width(space)
        consumers = tuple(path for path, _, _ in sorted(space.consumers, key=lambda c: c[2]))
        producers = tuple(sorted(space.producers, key=spaces.positions.__getitem__))
        order = min((c[2] for c in space.consumers), default=0)
        static = not space.blocked and producers and consumers
        if static and (coupling == "joint" or (len(producers) == 1 and len(consumers) == 1)):
            kind = "channels" if any(type(spaces.modules[p]) is nn.Conv2d for p in (*producers, *consumers)) \
                else "neurons"
            cut = Cut(producers, consumers, tuple(space.companions), tuple(space.between), width, kind=kind)
            cuts.append((order, cut))
            continue
        if coupling == "sampler" and consumers and producers:
            for path, _, position in space.consumers:
                kind = "channels" if type(spaces.modules[path]) is nn.Conv2d else "neurons"
                cuts.append((position, Cut((), (path,), (), tuple(space.between), width, sampled=True, kind=kind)))
            continue
        reason = "; ".join(dict.fromkeys(space.blocked)) or "its output is not read by a Linear or Conv2d layer"
        skipped.extend(Skipped(p, reason) for p in producers)
    cuts.sort(key=lambda pair: pair[0])
    return [cut for _, cut in cuts], skipped


class _Spaces:
    """Union-find over channel spaces, filled by one walk over the fx graph."""

    def __init__(self, graph_module: torch.fx.GraphModule):
        self.modules = dict(graph_module.named_modules())
        self.calls: dict[str, int] = {}
        self.positions: dict[str, int] = {}  # execution order of each layer's (first) call
        for position, node in enumerate(graph_module.graph.nodes):
            if node.op == "call_module":
                self.calls[node.target] = self.calls.get(node.target, 0) + 1
                self.positions.setdefault(node.target, position)
        self.parent: list[int] = []
        self.spaces: list[_Space] = []
        self.state: dict[torch.fx.Node, tuple[int, str]] = {}
        for position, node in enumerate(graph_module.graph.nodes):
            self._visit(node, position)

    # -- union-find -----------------------------------------------------------------
    def new(self, **kwargs) -> int:
        self.parent.append(len(self.parent))
        self.spaces.append(_Space(**kwargs))
        return len(self.parent) - 1

    def find(self, index: int) -> int:
        while self.parent[index] != index:
            self.parent[index] = self.parent[self.parent[index]]
            index = self.parent[index]
        return index

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        self.parent[b] = a
        left, right = self.spaces[a], self.spaces[b]
        for name in ("producers", "companions", "consumers", "between", "blocked"):
            getattr(left, name).extend(getattr(right, name))
        return a

    def space(self, node) -> _Space:
        return self.spaces[self.find(self.state[node][0])]

    def block(self, node, reason: str) -> None:
        self.space(node).blocked.append(reason)

    def width(self, space: _Space) -> int:
        if space.producers:
            return out_units(self.modules[space.producers[0]])
        return 0

    def finished(self) -> list[_Space]:
        roots = sorted({self.find(i) for i in range(len(self.parent))})
        result = []
        for root in roots:
            space = self.spaces[root]
            self._check_widths(space)
            result.append(space)
        return result

    def _check_widths(self, space: _Space) -> None:
        if not space.producers:
            return
        widths = {out_units(self.modules[p]) for p in space.producers}
        widths |= {companion_width(self.modules[c]) for c in space.companions}
        if len(widths) > 1:
            space.blocked.append(f"its writers and norms have different widths {sorted(widths)}")
            space.consumers = []
            return
        width = widths.pop()
        valid = []
        for path, layout, position in space.consumers:
            module = self.modules[path]
            try:
                s = group_size(module, width)
            except UnsupportedCutError as exc:
                space.blocked.append(f"{path!r}: {exc}")
                continue
            if layout == _FEATURES and s != 1:
                space.blocked.append(f"{path!r} reads {in_units(module)} features but the cut has {width}")
                continue
            valid.append((path, layout, position))
        space.consumers = valid

    # -- the walk -------------------------------------------------------------------
    def _tracked(self, node) -> list[torch.fx.Node]:
        found = []
        torch.fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(a) if a in self.state else None)
        return list(dict.fromkeys(found))

    def _visit(self, node: torch.fx.Node, position: int) -> None:
        if node.op == "placeholder":
            self.state[node] = (self.new(blocked=["it is the network's input"]), _INPUT)
            return
        if node.op == "output":
            for value in self._tracked(node):
                self.block(value, "it produces the network's output")
            return
        inputs = self._tracked(node)
        if not inputs:
            return
        if node.op == "call_module" and is_layer(self.modules[node.target]) \
                and not is_depthwise(self.modules[node.target]):
            self._visit_layer(node, position, inputs)
            return
        if _is_size_query(node):
            return
        carried = self._channelwise(node, inputs)
        if carried is None:
            for value in inputs:
                self.block(value, f"{_describe(node)} mixes its channels (not channelwise)")
            # its output is a new space no layer writes: the layers that read it
            # (e.g. a Sampled layer after its index_select) are still found
            self.state[node] = (self.new(blocked=[f"it comes out of {_describe(node)}"]), _INPUT)
            return
        label, layout = carried
        space = self.space(inputs[0])
        if label:
            space.between.append(label)
        self.state[node] = (self.find(self.state[inputs[0]][0]), layout)

    def _visit_layer(self, node, position, inputs) -> None:
        path = node.target
        module = self.modules[path]
        value = node.args[0] if node.args else None
        reason = unsupported_reason(module)
        if self.calls[path] > 1:
            reason = f"{path!r} is called more than once (shared weights)"
        elif value not in self.state or len(node.args) != 1 or node.kwargs or len(inputs) != 1:
            reason = f"{path!r} receives it in an unexpected position"
        for value_node in inputs:
            if reason is not None:
                self.block(value_node, f"{path!r} reads it: {reason}")
        if reason is None:
            layout = self.state[value][1]
            wanted = (_FEATURES, _FLAT, _INPUT) if type(module) is nn.Linear else (_MAPS, _INPUT)
            if layout not in wanted:
                self.block(value, f"{path!r} ({type(module).__name__}) reads it in a {layout} layout")
            else:
                self.space(value).consumers.append((path, layout, position))
        blocked = [] if reason is None else [f"it is {reason}"]
        layout = _FEATURES if type(module) is nn.Linear else _MAPS
        self.state[node] = (self.new(producers=[path], blocked=blocked), layout)

    def _channelwise(self, node, inputs) -> tuple[str, str] | None:
        """``(label, layout)`` when ``node`` maps channel c to channel c, else None."""
        first = inputs[0]
        layout = self.state[first][1]
        if len(inputs) == 2 and _is_joining(node) and len(node.args) == 2 and not node.kwargs:
            other_layout = self.state[inputs[1]][1]
            if other_layout != layout:
                return None
            self.union(self.state[inputs[0]][0], self.state[inputs[1]][0])
            return _name_of(node), layout
        if len(inputs) != 1 or not node.args or node.args[0] is not first:
            if len(inputs) == 1 and _is_arithmetic(node) and len(node.args) == 2 \
                    and node.args[1] is first and isinstance(node.args[0], (int, float)):
                return f"{_name_of(node)} {node.args[0]}", layout
            return None
        if node.op == "call_module":
            module = self.modules[node.target]
            if isinstance(module, _POINTWISE_MODULES) or (isinstance(module, nn.PReLU) and module.num_parameters == 1):
                return type(module).__name__.lower(), layout
            if type(module) in _NORM_MODULES or (is_depthwise(module) and layout == _MAPS):
                if self.calls[node.target] > 1:
                    return None
                self.space(first).companions.append(node.target)
                return ("depthwise conv" if is_depthwise(module) else type(module).__name__.lower()), layout
            if isinstance(module, _POOL_MODULES) and layout == _MAPS:
                if getattr(module, "return_indices", False):
                    return None
                return type(module).__name__.lower(), layout
            if type(module) is nn.Flatten and module.start_dim == 1 and module.end_dim == -1:
                return _flattened(layout)
            return None
        rest = list(node.args[1:]) + list(node.kwargs.values())
        if any(isinstance(a, torch.fx.Node) and a in self.state for a in rest):
            return None
        target = node.target
        if node.op == "call_function" and target in _POOL_FUNCTIONS and layout == _MAPS:
            if node.kwargs.get("return_indices") or (len(node.args) > 6 and node.args[6]):
                return None
            return target.__name__, layout
        if _is_flatten(node):
            return _flattened(layout)
        if _is_spatial_mean(node) and layout == _MAPS:
            keepdim = node.kwargs.get("keepdim", len(node.args) > 2 and node.args[2])
            return "mean", (_MAPS if keepdim else _FEATURES)
        if any(isinstance(a, torch.fx.Node) for a in rest):
            return None
        if node.op == "call_function" and target in _POINTWISE_FUNCTIONS:
            return getattr(target, "__name__", str(target)), layout
        if node.op == "call_method" and target in _POINTWISE_METHODS:
            return target, layout
        if _is_arithmetic(node):
            operands = [a for a in node.args[1:]]
            if len(operands) == 1 and isinstance(operands[0], (int, float)) and not isinstance(operands[0], bool):
                return f"{_name_of(node)} {operands[0]}", layout
        return None


def _flattened(layout: str) -> tuple[str, str] | None:
    if layout == _MAPS:
        return "flatten", _FLAT
    if layout == _INPUT:
        return "flatten", _INPUT
    return None


def _is_flatten(node: torch.fx.Node) -> bool:
    """``torch.flatten(x, 1)``, ``x.flatten(1)``, ``x.view(n, -1)`` or ``x.reshape(n, -1)``."""
    args = list(node.args[1:])
    if node.target in (torch.flatten, "flatten"):
        start = node.kwargs.get("start_dim", args[0] if args else 0)
        end = node.kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
        return start == 1 and end == -1
    if (node.op == "call_method" and node.target in ("view", "reshape")) or node.target is torch.reshape:
        shape = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        return len(shape) == 2 and shape[1] == -1 and _is_batch_size(shape[0])
    return False


def _is_spatial_mean(node: torch.fx.Node) -> bool:
    """``x.mean((2, 3))`` or ``torch.mean(x, dim=(-2, -1))`` of (N, C, H, W) maps: a global average pool."""
    if node.target not in (torch.mean, "mean"):
        return False
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    return isinstance(dims, (tuple, list)) and sorted(d % 4 for d in dims) == [2, 3]


def _is_batch_size(value) -> bool:
    if isinstance(value, int):
        return True
    if isinstance(value, torch.fx.Node):
        if value.op == "call_method" and value.target == "size":
            return value.args[1:] == (0,) or value.kwargs.get("dim") == 0
        if value.op == "call_function" and value.target is operator.getitem:
            return value.args[1] == 0
    return False


def _is_size_query(node: torch.fx.Node) -> bool:
    """Nodes that read a tensor's shape, not its values (``x.size(0)``, ``x.shape``)."""
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    return node.op == "call_function" and node.target is getattr and node.args[1:] in (("shape",), ("ndim",))


def _is_arithmetic(node: torch.fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ARITHMETIC) or (
        node.op == "call_method" and node.target in _ARITHMETIC_METHODS)


def _is_joining(node: torch.fx.Node) -> bool:
    return node.op in ("call_function", "call_method") and node.target in _JOINING


def _name_of(node: torch.fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target))


def _describe(node: torch.fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target!r}"
    return f"{node.op} {getattr(node.target, '__name__', node.target)!s}"
