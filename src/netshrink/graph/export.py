"""The torch.export reader: cuts of any model that runs on an example batch.

``torch.export`` captures one forward pass as ATen operations with the shape of every
tensor, whatever Python the model runs (Hugging Face ``transformers``, custom attention,
mask construction). The reader then labels every element of every tensor with where it
comes from, by running each operation's index logic on integer *code* tensors of the same
shapes (the values themselves are never computed):

- a code ``≥ 0`` is a *producer row*: element ``e`` is (a channelwise function of) row
  ``r`` of one Linear/Conv2d/Conv1D call's output. Every row of every layer call has its
  own code;
- ``FREE`` (-1): the element depends on no producer row (inputs, parameters, embeddings);
- a code ``≤ -2`` is *derived*: the element depends on the rows of one class through
  an operation that mixes them (a normalisation, a reduction, attention scores).

Rows that must be removed together are joined in a union-find: operands of an
elementwise operation (a residual sum, a SwiGLU product, a squeeze-and-excitation gate;
Robin §2.6), and every row an operation mixes (the ``d_head`` rows of q and k that a
head's scores combine, the value rows those scores weight, the channels a LayerNorm
normalises). A class is removable when nothing reads what it was mixed into except
through its own rows: then its rows can be dropped from their producers and their
columns from the consumers that read them (Robin §2.2). Attention heads come out of this
without a rule of their own: one class per head (per key/value group with grouped-query
attention) holding its q, k and v rows, read by the output projection through the
head's ``d_head`` context columns.

A class is *blocked* — kept whole, reported as :class:`~.cuts.Skipped` — when its rows
or what they were mixed into reach the model's output or a layer input, meet a tensor
that varies along them but cannot be sliced with them (a residual stream fed by an
embedding), or are indexed at fixed positions. Classes with the same producers,
consumers and companions form one cut.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx
from torch import nn

from .. import batches
from ..evaluate import model_device
from ..layers import (companion_width, in_units, is_depthwise, is_layer, is_transposed_linear, out_units,
                      unsupported_reason)
from .cuts import ONE_ROW, Cut, Heads, Skipped

FREE = -1

#: The example is cut to this many samples: the graph's structure does not depend on it.
EXAMPLE_SAMPLES = 2


class ExportFailed(Exception):
    """torch.export could not capture the model on the example batch."""


def read(model: nn.Module, example, coupling: str) -> tuple[list[Cut], list[Skipped]]:
    """The cuts and skipped layers of ``model``, read from one forward pass on ``example``."""
    program = capture(model, example)
    walk = _Walk(model, program)
    return _Assembly(walk).cuts(coupling)


def capture(model: nn.Module, example) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` in eval mode on (the first samples of) ``example``.

    A causal LM whose forward takes ``use_cache`` is exported with ``use_cache=False``
    unless the batch says otherwise (a cache object cannot be captured). The model's
    train/eval flags are restored; nothing else of it is touched.
    """
    if isinstance(example, (tuple, list)):
        example = example[0] if example else None
    if not isinstance(example, (torch.Tensor, Mapping)):
        raise ExportFailed(f"the example is a {type(example).__name__}, not a tensor or a mapping of inputs")
    example = batches.to_device(batches.head(example, EXAMPLE_SAMPLES), model_device(model))
    if isinstance(example, Mapping):
        args, kwargs = (), dict(example)
        if "use_cache" in inspect.signature(model.forward).parameters and "use_cache" not in kwargs:
            kwargs["use_cache"] = False
    else:
        args, kwargs = (example,), {}
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        return torch.export.export(model, args, kwargs, strict=False)
    except Exception as exc:  # export raises many exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ExportFailed(f"{type(exc).__name__}: {first}") from exc
    finally:
        for module, flag in flags:
            module.training = flag


# -- operation tables (ATen overload packet names; in-place variants map to these) ----------
_POINTWISE = {
    "relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardtanh", "hardswish", "hardsigmoid",
    "leaky_relu", "elu", "selu", "celu", "mish", "softplus", "erf", "exp", "expm1", "log", "log1p", "neg",
    "abs", "sqrt", "rsqrt", "reciprocal", "square", "sin", "cos", "sign", "clamp", "clamp_min", "clamp_max",
    "clip", "threshold", "log_sigmoid", "logical_not", "bitwise_not", "to", "_to_copy", "type_as",
    "dropout", "feature_dropout", "alpha_dropout", "native_dropout", "alias", "detach", "lift_fresh_copy",
    "clone", "contiguous", "pow", "gt", "lt", "ge", "le", "eq", "ne", "nan_to_num", "round", "floor", "ceil",
    "trunc", "frac", "hardshrink", "softshrink", "silu_", "prelu",
}
_ELEMENTWISE = {"add", "sub", "rsub", "mul", "div", "maximum", "minimum", "where", "masked_fill", "lerp",
                "__and__", "__or__", "logical_and", "logical_or", "fmod", "remainder", "atan2"}
_LAYOUT = {"view", "_unsafe_view", "reshape", "transpose", "permute", "t", "expand", "expand_as", "unsqueeze",
           "squeeze", "flatten", "unflatten", "view_as", "reshape_as", "movedim", "split", "split_with_sizes",
           "chunk", "unbind", "cat", "concat", "stack", "repeat", "flip", "roll", "tensor_split"}
_POSITIONAL = {"slice", "select", "narrow"}
_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "var", "std", "prod", "logsumexp", "norm",
               "linalg_vector_norm", "var_mean", "std_mean", "argmax", "argmin", "all", "any"}
_ALONG = {"_softmax", "softmax", "_log_softmax", "log_softmax", "cumsum", "cumprod"}
_POOLS = {"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "max_pool2d_with_indices",
          "max_pool1d", "avg_pool1d", "adaptive_avg_pool1d"}
_MATMUL = {"matmul", "bmm", "mm"}
#: Layer calls (a module's own ``forward``) and their module types.
_LAYERS = {"linear": lambda m: type(m) is nn.Linear, "addmm": is_transposed_linear,
           "conv2d": lambda m: type(m) is nn.Conv2d}
_NORMS = {"batch_norm", "_native_batch_norm_legit_no_training"}
_IGNORED = {"_assert_tensor_metadata", "_assert_scalar", "sym_size", "sym_constrain_range",
            "sym_constrain_range_for_size", "_assert_async"}


def _name(target) -> str:
    if target is operator.getitem:
        return "getitem"
    packet = getattr(target, "_overloadpacket", None)
    name = getattr(packet, "__name__", None) or getattr(target, "__name__", str(target))
    return name[:-1] if name.endswith("_") and not name.startswith("_") else name


def _shape(node: torch.fx.Node):
    value = node.meta.get("val")
    if isinstance(value, torch.Tensor):
        return tuple(int(d) for d in value.shape)
    return None


@dataclass
class _Call:
    """One call of a producer layer: its rows hold codes ``first … first + count − 1``."""

    path: str
    first: int
    count: int
    position: int


class _Walk:
    """One pass over the exported graph: codes for every tensor, unions and facts."""

    def __init__(self, model: nn.Module, program: torch.export.ExportedProgram):
        self.modules = dict(model.named_modules())
        signature = program.graph_signature
        self.constants = {**signature.inputs_to_parameters, **signature.inputs_to_buffers,
                          **signature.inputs_to_lifted_tensor_constants}
        self.rows = 0  # codes handed out so far
        self.edges: list[torch.Tensor] = []  # (n, 2) pairs of codes whose classes are joined
        self.calls: list[_Call] = []
        self.values: dict[torch.fx.Node, object] = {}
        self.consumers: list[tuple[str, torch.Tensor, int]] = []   # (path, column codes, position)
        self.companions: list[tuple[str, torch.Tensor]] = []        # (path, channel codes)
        self.blocks: list[tuple[torch.Tensor, str]] = []            # codes whose classes are blocked
        self.checks: list[tuple[torch.Tensor, list[torch.Tensor], str]] = []  # see check()
        self.attention: list[tuple[str, int, torch.Tensor]] = []    # (module, head_dim, value codes (H, Ev))
        self.labels: list[tuple[int, str]] = []
        self.mixers: dict[int, str] = {}
        self.unsupported: list[tuple[str, str, int]] = []
        nodes = list(program.graph.nodes)
        self.layer_calls: dict[str, int] = {}
        for node in nodes:
            if node.op == "call_function" and _name(node.target) in {*_LAYERS, *_NORMS}:
                path = self._module_path(node)
                self.layer_calls[path] = self.layer_calls.get(path, 0) + 1
        order = {node: position for position, node in enumerate(nodes)}
        last_use: dict[int, list[torch.fx.Node]] = {}
        for node in nodes:
            last_use.setdefault(max((order[user] for user in node.users), default=order[node]), []).append(node)
        for position, node in enumerate(nodes):
            self._visit(node, position)
            for done in last_use.get(position, ()):  # codes no later node reads: memory stays ~ one block's
                self.values.pop(done, None)

    # -- classes -------------------------------------------------------------------
    def union_pairs(self, left: torch.Tensor, right: torch.Tensor) -> None:
        """Join the classes of ``left[i]`` and ``right[i]`` (codes ≥ 0) for every ``i``."""
        keep = (left >= 0) & (right >= 0) & (left != right)
        if keep.any():
            keys = torch.unique((left[keep] << 31) | right[keep])  # codes stay below 2³¹
            self.edges.append(torch.stack([keys >> 31, keys & (2**31 - 1)], dim=1))

    def classes(self) -> np.ndarray:
        """``root[code]``: the smallest code of each code's class (connected components of
        the joined pairs)."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        pairs = torch.cat(self.edges).numpy() if self.edges else np.zeros((0, 2), dtype=np.int64)
        graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])),
                           shape=(self.rows, self.rows))
        _, labels = connected_components(graph, directed=False)
        smallest = np.full(labels.max() + 1 if len(labels) else 0, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(smallest, labels, np.arange(self.rows, dtype=np.int64))
        return smallest[labels]

    def new_rows(self, path: str, count: int, position: int) -> int:
        first = self.rows
        self.rows += count
        self.calls.append(_Call(path, first, count, position))
        return first

    def block(self, codes: torch.Tensor, reason: str) -> None:
        """Block the classes of ``codes`` (kept as their distinct values)."""
        self.blocks.append((torch.unique(codes), reason))

    def check(self, codes: torch.Tensor, dims: tuple[int, ...], reason: str) -> None:
        """Block the classes of producer rows that vary along ``dims`` of ``codes`` (see
        ``_Assembly._block_all``; derived codes count as FREE here).

        Kept as ``(distinct rows, fibres per dim, reason)``: for each dim the distinct
        fibres ``(n, size)`` along it that are not constant. Whether classes cross along a
        dim is a property of each fibre, so the verdict is that of the whole tensor at a
        fraction of its memory (a residual stream's or a rotary embedding's checks repeat
        the same fibres at every position of every layer).
        """
        rows = torch.where(codes >= 0, codes, torch.full_like(codes, FREE))
        fibres = []
        for dim in dims:
            along = rows.movedim(dim, -1).reshape(-1, rows.shape[dim])
            along = along[(along != along[:, :1]).any(dim=1)]
            fibres.append(torch.unique(along, dim=0) if len(along) else along)
        self.checks.append((torch.unique(rows), fibres, reason))

    # -- codes -------------------------------------------------------------------------
    def codes(self, arg) -> torch.Tensor | None:
        """The code tensor of a node argument (None: every element FREE)."""
        return self.values.get(arg) if isinstance(arg, torch.fx.Node) else None

    def materialize(self, arg) -> torch.Tensor:
        codes = self.codes(arg)
        if codes is not None:
            return codes
        shape = _shape(arg) if isinstance(arg, torch.fx.Node) else ()
        return torch.full(shape or (), FREE, dtype=torch.int64)

    # -- the walk --------------------------------------------------------------------
    def _visit(self, node: torch.fx.Node, position: int) -> None:
        if node.op == "output":
            for codes in self._flat(node.args):
                self.block(codes, "it produces the network's output")
            return
        if node.op != "call_function":
            return
        name = _name(node.target)
        if name in _IGNORED:
            return
        if name in _LAYERS:
            self._layer(node, name, position)
            return
        if name in _NORMS:
            self._companion(node)
            return
        tracked = any(isinstance(a, torch.fx.Node) and self.values.get(a) is not None
                      for a in self._node_args(node))
        if not tracked:
            return  # FREE in, FREE out
        if name == "getitem":
            source = self.values[node.args[0]]
            self.values[node] = source[node.args[1]] if isinstance(source, (tuple, list)) else None
        elif name in _POINTWISE or (name in _ELEMENTWISE and self._scalar_operand(node)):
            self._pointwise(node, name)
        elif name in _ELEMENTWISE:
            self._elementwise(node, name)
        elif name in _LAYOUT or name in _POSITIONAL:
            self._layout(node, name)
        elif name in _REDUCTIONS:
            self._reduction(node, name)
        elif name in _ALONG:
            self._along(node, name)
        elif name == "layer_norm" or name == "rms_norm":
            self._normalize(node, name)
        elif name in _POOLS:
            self._pool(node, name)
        elif name in _MATMUL:
            self._matmul(node)
        elif name == "scaled_dot_product_attention":
            self._attention(node)
        else:
            self._mix(node, name)

    def _node_args(self, node: torch.fx.Node) -> list:
        found = []
        torch.fx.node.map_arg((node.args, node.kwargs), found.append)
        return found

    def _flat(self, structure) -> list[torch.Tensor]:
        found = []

        def collect(value):
            if isinstance(value, torch.fx.Node):
                codes = self.values.get(value)
                for item in (codes if isinstance(codes, (tuple, list)) else [codes]):
                    if item is not None:
                        found.append(item)
            elif isinstance(value, (tuple, list)):
                for item in value:
                    collect(item)
            elif isinstance(value, dict):
                for item in value.values():
                    collect(item)

        collect(structure)
        return found

    def _module_path(self, node: torch.fx.Node) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        return list(stack.values())[-1][0] if stack else ""

    # -- layers ------------------------------------------------------------------------
    def _layer(self, node: torch.fx.Node, name: str, position: int) -> None:
        if name == "addmm":  # GPT-2's Conv1D: addmm(bias, x, weight)
            source, weight = node.args[1], node.args[2]
        else:
            source, weight = node.args[0], node.args[1]
        path = self._module_path(node)
        module = self.modules.get(path)
        groups = node.args[6] if name == "conv2d" and len(node.args) > 6 else 1
        if name == "conv2d" and module is not None and is_depthwise(module) and groups == module.groups:
            self._companion(node)
            return
        reason = self._layer_problem(name, path, module, weight)
        if reason is not None:
            if module is not None and is_layer(module):
                self.unsupported.append((path, reason, position))
            self._mix(node, f"{name} of {path!r}" if path else name)
            return
        codes = self.codes(source)
        channel_dim = 1 if type(module) is nn.Conv2d else -1
        if codes is not None:
            columns = _columns(codes, channel_dim)
            if columns is None:
                self.block(codes, f"{path!r} reads them in an unexpected layout")
            else:
                self.consumers.append((path, columns, position))
        count = out_units(module)
        first = self.new_rows(path, count, position)
        shape = _shape(node)
        rows = torch.arange(first, first + count)
        view = [1] * len(shape)
        view[channel_dim] = count
        self.values[node] = rows.reshape(view).expand(shape).contiguous()

    def _layer_problem(self, name, path, module, weight) -> str | None:
        """Why this call cannot be a producer and consumer of units, or None."""
        if module is None or not _LAYERS[name](module):
            return f"{name} inside {type(module).__name__ if module is not None else 'the model'} is not a layer's own call"
        own = self.constants.get(weight.name) if isinstance(weight, torch.fx.Node) else None
        if own != (f"{path}.weight" if path else "weight"):
            return f"{path!r} computes with a weight that is not its own ({own})"
        if self.layer_calls.get(path, 0) > 1:
            return f"{path!r} is called more than once (shared weights)"
        return unsupported_reason(module)

    def _companion(self, node: torch.fx.Node) -> None:
        """A BatchNorm or depthwise convolution: channel c of its output is channel c of its input."""
        path = self._module_path(node)
        module = self.modules.get(path)
        codes = self.codes(node.args[0])
        if codes is None:
            return
        if module is None or self.layer_calls.get(path, 0) > 1:
            self._mix(node, f"{_name(node.target)} of {path!r}")
            return
        channels = _columns(codes, 1)
        if channels is None:
            self._mix(node, f"{_name(node.target)} of {path!r}")
            return
        tracked = channels[channels >= 0]
        if len(tracked):
            self.companions.append((path, channels))
            self.labels.append((int(tracked[0]), "depthwise conv" if is_depthwise(module) else "batch_norm"))
        shape = _shape(node) if _shape(node) is not None else _shape(node.args[0])
        view = [1] * len(shape)
        view[1] = shape[1]
        result = channels.reshape(view).expand(shape).contiguous()
        if _name(node.target) == "_native_batch_norm_legit_no_training":
            self.values[node] = (result, None, None)
        else:
            self.values[node] = result

    # -- channelwise operations --------------------------------------------------------
    def _scalar_operand(self, node: torch.fx.Node) -> bool:
        """True when an arithmetic operation has one tensor operand (``x * 0.5``)."""
        tensors = [a for a in node.args if isinstance(a, torch.fx.Node)]
        return len(tensors) == 1

    def _pointwise(self, node: torch.fx.Node, name: str) -> None:
        source = next(a for a in node.args if isinstance(a, torch.fx.Node) and self.values.get(a) is not None)
        codes = self.values[source]
        shape = _shape(node)
        if shape is not None and tuple(codes.shape) != shape:
            codes = codes.expand(shape).contiguous()
        if name == "native_dropout":
            self.values[node] = (codes, codes)
        else:
            self.values[node] = codes
        self._label(codes, name)

    def _elementwise(self, node: torch.fx.Node, name: str) -> None:
        shape = _shape(node)
        operands = [a for a in node.args if isinstance(a, torch.fx.Node) and _shape(a) is not None]
        expanded = [self.materialize(a).expand(shape) for a in operands]
        tracked = [a for a in operands if self.values.get(a) is not None]
        for arg in operands:
            if self.values.get(arg) is not None:
                continue
            varying = _varying_dims(_shape(arg), shape)
            if not varying:
                continue
            what = f"the parameter {self.constants[arg.name]!r}" if arg.name in self.constants else "a tensor"
            for other in tracked:
                self.check(self.values[other].expand(shape), varying,
                           f"{name} joins them with {what} that no layer writes and that varies "
                           "along them (as a residual stream joins an embedding)")
        self.values[node] = self.combine(expanded)
        self._label(self.values[node], name)

    def combine(self, operands: list[torch.Tensor]) -> torch.Tensor:
        """Codes of an elementwise function of ``operands`` (same shape): the classes of
        each element's operands are joined; the element keeps a producer row if one
        operand has one, else it is derived (or FREE)."""
        codes = torch.stack([c.contiguous() for c in operands])
        dependency = torch.where(codes <= -2, -2 - codes, codes)
        anchor = dependency.max(dim=0).values
        for layer in dependency:
            self.union_pairs(anchor.reshape(-1), layer.reshape(-1))
        row = torch.where(codes >= 0, codes, torch.full_like(codes, -1)).max(dim=0).values
        derived = torch.where(anchor >= 0, -2 - anchor, torch.full_like(anchor, FREE))
        return torch.where(row >= 0, row, derived)

    def _layout(self, node: torch.fx.Node, name: str) -> None:
        def swap(arg):
            if isinstance(arg, torch.fx.Node) and _shape(arg) is not None:
                return self.materialize(arg).contiguous()
            return arg

        args = torch.fx.node.map_aggregate(node.args, swap)
        kwargs = torch.fx.node.map_aggregate(node.kwargs, swap)
        result = node.target(*args, **kwargs)
        if isinstance(result, torch.Tensor):
            result = result.contiguous()
        elif isinstance(result, (tuple, list)):
            result = type(result)(r.contiguous() for r in result)
        self.values[node] = result
        if name in _POSITIONAL:
            source = self.materialize(node.args[0])
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            dim = dim % source.ndim
            if not _covers(name, node, source.shape[dim]):
                self.check(source, (dim,), f"{name} picks fixed positions of them")
        elif name == "flatten":
            self._label(result, "flatten")

    def _reduce(self, codes: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        """Codes of a function of each slice of ``codes`` along ``dims`` (those dims dropped):
        a slice whose elements all carry the same code keeps it, any other slice is
        derived from the join of its classes."""
        dims = tuple(sorted(d % codes.ndim for d in dims))
        if not dims:
            return codes
        rest = [d for d in range(codes.ndim) if d not in dims]
        moved = codes.permute(*rest, *dims)
        outer = moved.shape[:len(rest)]
        flat = moved.reshape(*outer, -1) if moved.numel() else moved.reshape(*outer, 0)
        if flat.shape[-1] == 0:
            return torch.full(outer, FREE, dtype=torch.int64)
        first = flat[..., :1]
        same = (flat == first).all(dim=-1)
        dependency = torch.where(flat <= -2, -2 - flat, flat)
        anchor = dependency.max(dim=-1, keepdim=True).values
        mixed = ~same
        if mixed.any():
            rows_anchor = anchor.expand_as(dependency)[mixed]
            self.union_pairs(rows_anchor.reshape(-1), dependency[mixed].reshape(-1))
        derived = torch.where(anchor[..., 0] >= 0, -2 - anchor[..., 0], torch.full_like(anchor[..., 0], FREE))
        return torch.where(same, first[..., 0], derived)

    def _reduction(self, node: torch.fx.Node, name: str) -> None:
        source = self.materialize(node.args[0])
        at = 2 if name in ("norm", "linalg_vector_norm") else 1  # these take the order p first
        dims = node.args[at] if len(node.args) > at and node.args[at] is not None else node.kwargs.get("dim")
        if isinstance(dims, int):
            dims = (dims,)
        if dims is None or dims == [] or dims == ():
            dims = tuple(range(source.ndim))
        flag = node.args[at + 1] if len(node.args) > at + 1 and isinstance(node.args[at + 1], bool) else False
        keepdim = node.kwargs.get("keepdim", flag)
        reduced = self._reduce(source, tuple(dims))
        if keepdim:
            for d in sorted(d % source.ndim for d in dims):
                reduced = reduced.unsqueeze(d)
        self._note_mixing(reduced, name)
        value = node.meta.get("val")
        if isinstance(value, (tuple, list)):
            self.values[node] = tuple(reduced for _ in value)
        else:
            shape = _shape(node)
            self.values[node] = reduced.reshape(shape) if shape is not None else reduced

    def _along(self, node: torch.fx.Node, name: str) -> None:
        source = self.materialize(node.args[0])
        dim = node.args[1] % source.ndim
        reduced = self._reduce(source, (dim,)).unsqueeze(dim).expand(source.shape).contiguous()
        self._note_mixing(reduced, name)
        self.values[node] = reduced

    def _normalize(self, node: torch.fx.Node, name: str) -> None:
        source = self.materialize(node.args[0])
        count = len(node.args[1])
        dims = tuple(range(source.ndim - count, source.ndim))
        reduced = self._reduce(source, dims)
        for d in dims:
            reduced = reduced.unsqueeze(d)
        result = reduced.expand(source.shape).contiguous()
        self._note_mixing(result, name.replace("_", ""))
        value = node.meta.get("val")
        self.values[node] = tuple(result for _ in value) if isinstance(value, (tuple, list)) else result

    def _pool(self, node: torch.fx.Node, name: str) -> None:
        source = self.materialize(node.args[0])
        spatial = 1 if name.endswith("1d") else 2
        dims = tuple(range(source.ndim - spatial, source.ndim))
        reduced = self._reduce(source, dims)
        self._note_mixing(reduced, name)
        value = node.meta.get("val")
        shape = tuple(value[0].shape) if isinstance(value, (tuple, list)) else _shape(node)
        for _ in dims:
            reduced = reduced.unsqueeze(-1)
        result = reduced.expand(shape).contiguous()
        self.values[node] = (result, result) if isinstance(value, (tuple, list)) else result
        self._label(result, name)

    def _matmul(self, node: torch.fx.Node) -> None:
        left, right = node.args[0], node.args[1]
        if any(isinstance(a, torch.fx.Node) and a.name in self.constants for a in (left, right)):
            self._mix(node, "a matrix product with a parameter")
            return
        a, b = self.materialize(left), self.materialize(right)
        if a.ndim < 2 or b.ndim < 2:
            self._mix(node, "a matrix-vector product")
            return
        self.values[node] = self.contract(a, b).expand(_shape(node)).contiguous()

    def contract(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Codes of ``a @ b`` for ``a: (..., i, k)``, ``b: (..., k, j)``: each side is reduced
        over ``k`` (:meth:`_reduce`), then combined elementwise."""
        left = self._reduce(a, (-1,)).unsqueeze(-1)
        right = self._reduce(b, (-2,)).unsqueeze(-2)
        shape = torch.broadcast_shapes(left.shape, right.shape)
        return self.combine([left.expand(shape), right.expand(shape)])

    def _attention(self, node: torch.fx.Node) -> None:
        query, key, value = (self.materialize(a) for a in node.args[:3])
        gqa = node.kwargs.get("enable_gqa", node.args[7] if len(node.args) > 7 else False)
        if gqa and key.shape[-3] != query.shape[-3]:
            repeat = query.shape[-3] // key.shape[-3]
            key = key.repeat_interleave(repeat, dim=-3)
            value = value.repeat_interleave(repeat, dim=-3)
        scores = self.contract(query, key.transpose(-1, -2))
        weights = self._reduce(scores, (-1,)).unsqueeze(-1).expand(scores.shape)
        context = self.contract(weights, value)
        self.values[node] = context.expand(_shape(node)).contiguous()
        heads = self._reduce(value, (-2,))  # (..., H, Ev): the value rows each query head reads
        heads = heads.reshape(-1, *heads.shape[-2:])[0]
        if bool((heads >= 0).all()):
            self.attention.append((self._module_path(node), int(query.shape[-1]), heads))
            self.mixers.setdefault(int(heads.max()), "attention")

    def _mix(self, node: torch.fx.Node, label: str) -> None:
        """An operation with no rule here: everything it reads is joined and all its
        outputs are derived."""
        found = [c for c in (self.codes(a) for a in self._node_args(node)) if c is not None]
        flat = [c.reshape(-1) for item in found for c in (item if isinstance(item, (tuple, list)) else [item])]
        if flat:
            every = torch.cat(flat)
            dependency = torch.where(every <= -2, -2 - every, every)
            live = dependency[dependency >= 0]
            anchor = int(live.max()) if len(live) else FREE
            if anchor >= 0:
                self.union_pairs(torch.full_like(live, anchor), live)
                self.mixers.setdefault(anchor, label)
        else:
            anchor = FREE
        code = -2 - anchor if anchor >= 0 else FREE
        value = node.meta.get("val")
        if isinstance(value, (tuple, list)):
            self.values[node] = tuple(torch.full(tuple(v.shape), code, dtype=torch.int64)
                                      if isinstance(v, torch.Tensor) else None for v in value)
        elif isinstance(value, torch.Tensor):
            self.values[node] = torch.full(tuple(value.shape), code, dtype=torch.int64)

    def _note_mixing(self, result: torch.Tensor, label: str) -> None:
        derived = result[result <= -2]
        if len(derived):
            self.mixers.setdefault(int(-2 - derived[0]), label)

    def _label(self, codes: torch.Tensor, label: str) -> None:
        rows = codes[codes >= 0]
        if len(rows):
            self.labels.append((int(rows[0]), label))


def _columns(codes: torch.Tensor, dim: int) -> torch.Tensor | None:
    """The code of each index along ``dim``: the same at every other position, or
    derived when it varies there without producer rows (a FREE position beside derived
    ones, as a class token beside patches); None when producer rows vary across positions."""
    moved = codes.movedim(dim, -1).reshape(-1, codes.shape[dim])
    if moved.shape[0] == 0:
        return None
    first = moved[0]
    same = (moved == first).all(dim=0)
    if bool(same.all()):
        return first
    if bool((moved[:, ~same] >= 0).any()):
        return None
    dependency = torch.where(moved <= -2, -2 - moved, moved).max(dim=0).values
    return torch.where(same, first, torch.where(dependency >= 0, -2 - dependency, torch.full_like(first, FREE)))


def _varying_dims(shape, out_shape) -> tuple[int, ...]:
    """Dims of ``out_shape`` along which a broadcast operand of ``shape`` takes several values."""
    shape = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    return tuple(d for d, (size, full) in enumerate(zip(shape, out_shape)) if size > 1 and full > 1)


def _covers(name: str, node: torch.fx.Node, size: int) -> bool:
    """True for a ``slice`` that keeps the whole dimension."""
    if name != "slice":
        return False
    start = node.args[2] if len(node.args) > 2 else 0
    end = node.args[3] if len(node.args) > 3 else None
    step = node.args[4] if len(node.args) > 4 else 1
    return (start in (0, None)) and (end is None or end >= size) and step == 1


class _Assembly:
    """Classes of producer rows → cuts and skipped layers."""

    def __init__(self, walk: _Walk):
        self.walk = walk
        self.modules = walk.modules
        self.root = walk.classes()
        self.blocked: dict[int, str] = {}
        self._block_all()

    def roots(self, codes: torch.Tensor) -> np.ndarray:
        """Class of every element (producer rows and derived classes alike; -1 for FREE)."""
        flat = codes.reshape(-1).numpy()
        dependency = np.where(flat <= -2, -2 - flat, flat)
        out = np.full(dependency.shape, -1, dtype=np.int64)
        live = dependency >= 0
        out[live] = self.root[dependency[live]]
        return out

    def mixer(self, root: int) -> str:
        for code, label in self.walk.mixers.items():
            if self.root[code] == root:
                return label
        return "an operation"

    def _block(self, roots, reason) -> None:
        for root in np.unique(roots[roots >= 0]):
            self.blocked.setdefault(int(root), reason)

    def _block_all(self) -> None:
        walk = self.walk
        for distinct, fibres, reason in walk.checks:
            found = self.roots(distinct)
            single = len(np.unique(found[found >= 0])) == 1  # one unit spans the tensor: removing it empties it
            for rows in fibres:
                roots = torch.from_numpy(self.roots(rows).reshape(rows.shape))
                reference = roots[:, :1].expand_as(roots)
                crossing = (roots >= 0) & (reference >= 0) & (roots != reference)
                if single:
                    first = rows[:, :1].expand_as(rows)
                    crossing |= (rows >= 0) & (first >= 0) & (rows != first)
                if crossing.any():
                    self._block(roots[crossing].numpy(), reason)
                    self._block(reference[crossing].numpy(), reason)
        for codes, reason in walk.blocks:
            self._block(self.roots(codes), reason)
        for path, columns, _ in walk.consumers:
            derived = columns[columns <= -2]
            if len(derived):
                roots = self.roots(derived)
                for root in np.unique(roots[roots >= 0]):
                    self.blocked.setdefault(int(root), f"{path!r} reads what {self.mixer(int(root))} makes of them")

    # -- grouping --------------------------------------------------------------------
    def cuts(self, coupling: str) -> tuple[list[Cut], list[Skipped]]:
        walk = self.walk
        classes: dict[int, dict] = {}

        def entry(root):
            return classes.setdefault(root, {"rows": {}, "columns": {}, "channels": {}})

        for call in walk.calls:
            roots = self.root[call.first:call.first + call.count]
            for row, root in enumerate(roots.tolist()):
                entry(root)["rows"].setdefault(call.path, []).append(row)
        consumer_position = {}
        for path, columns, position in walk.consumers:
            consumer_position[path] = position
            roots = self.roots(columns)
            for column, (code, root) in enumerate(zip(columns.tolist(), roots.tolist())):
                if code >= 0:
                    entry(root)["columns"].setdefault(path, []).append(column)
        for path, channels in walk.companions:
            roots = self.roots(channels)
            for channel, (code, root) in enumerate(zip(channels.tolist(), roots.tolist())):
                if code >= 0:
                    entry(root)["channels"].setdefault(path, []).append(channel)

        position = {call.path: call.position for call in walk.calls}
        groups: dict[tuple, list[int]] = {}
        for root, data in classes.items():
            key = (tuple(sorted(data["rows"], key=position.__getitem__)),
                   tuple(sorted(data["columns"], key=consumer_position.__getitem__)),
                   tuple(sorted(data["channels"])))
            groups.setdefault(key, []).append(root)
        owners: dict[str, int] = {}
        readers: dict[str, int] = {}
        for key in groups:
            for path in key[0]:
                owners[path] = owners.get(path, 0) + 1
            for path in key[1]:
                readers[path] = readers.get(path, 0) + 1

        attention = {}
        for module, head_dim, heads in walk.attention:
            roots = self.roots(heads)
            for head, root in enumerate(roots.reshape(heads.shape).tolist()):
                attention.setdefault(root[0], (module, head_dim, []))[2].append(head)

        cuts: list[tuple[int, Cut]] = []
        skipped: dict[str, tuple[int, str]] = {}
        sampled: set[str] = set()
        for (producers, consumers, companions), roots in groups.items():
            roots.sort(key=lambda r: classes[r]["rows"][producers[0]][0])
            problem = self._irregular(producers, consumers, companions, roots, classes, owners, readers)
            blocked = next((self.blocked[r] for r in roots if r in self.blocked), None)
            heads = self._heads(roots, attention, problem)
            kind = "heads" if heads is not None else (
                "channels" if any(type(self.modules[p]) is nn.Conv2d for p in (*producers, *consumers)) else "neurons")
            labels = self._between(roots)
            order = min((consumer_position[p] for p in consumers), default=0)
            width = len(roots)
            if isinstance(heads, str):
                problem, heads = heads, None
            if problem is None and blocked is None and consumers and (
                    coupling == "joint" or heads is not None or (len(producers) == 1 and len(consumers) == 1)):
                rows = tuple(self._segments(classes, roots, p) for p in producers)
                rows = () if all(r == ONE_ROW for r in rows) else rows
                cuts.append((order, Cut(producers, consumers, companions, labels, width,
                                        kind=kind, rows=rows, heads=heads)))
                continue
            if coupling == "sampler" and heads is None:
                readers_here = [(path, self._sampled_width(path)) for path in consumers if path not in sampled]
                readers_here = [(path, width) for path, width in readers_here if width is not None]
                for path, width in readers_here:
                    sampled.add(path)
                    kind = "channels" if type(self.modules[path]) is nn.Conv2d else "neurons"
                    cuts.append((consumer_position[path], Cut((), (path,), (), labels, width, sampled=True, kind=kind)))
                if readers_here:
                    continue
            reason = blocked or problem or "its output is not read by a Linear or Conv2d layer"
            for path in producers:
                skipped.setdefault(path, (position[path], reason))
        for path, reason, at in walk.unsupported:
            skipped.setdefault(path, (at, f"it is {reason}" if not reason.startswith(repr(path)) else reason))
        cuts.sort(key=lambda pair: pair[0])
        ordered = sorted(skipped.items(), key=lambda item: item[1][0])
        return [cut for _, cut in cuts], [Skipped(path, reason) for path, (_, reason) in ordered]

    def _irregular(self, producers, consumers, companions, roots, classes, owners, readers) -> str | None:
        """Why the units of this group cannot be sliced as one cut, or None."""
        for path in producers:
            if owners[path] > 1:
                return f"the rows of {path!r} belong to units of different kinds"
            module = self.modules[path]
            counts = {len(classes[r]["rows"][path]) for r in roots}
            if len(counts) != 1 or counts.pop() * len(roots) != out_units(module):
                return f"the rows of {path!r} do not split into equal units"
            if self._segments(classes, roots, path) is None:
                return f"the rows of {path!r} are not grouped by unit"
        for path in consumers:
            if readers[path] > 1 or not self._reads_whole(path, classes, roots):
                return f"{path!r} reads a mix of these units and other values"
        for path in companions:
            channels = [classes[r]["channels"][path] for r in roots]
            if any(len(c) != 1 for c in channels) or [c[0] for c in channels] != list(range(len(roots))) \
                    or companion_width(self.modules[path]) != len(roots):
                return f"the channels of {path!r} do not follow the units"
        return None

    def _sampled_width(self, path) -> int | None:
        """Units a sampler before ``path`` would select among: its input columns come in
        equal runs, one producer row each (a channel owns ``h·w`` flattened features)."""
        columns = next(c for p, c, _ in self.walk.consumers if p == path).tolist()
        if not columns or min(columns) < 0:
            return None
        runs = [1]
        for previous, code in zip(columns, columns[1:]):
            if code == previous:
                runs[-1] += 1
            else:
                runs.append(1)
        if len(set(runs)) != 1 or len(set(columns)) != len(runs):
            return None
        return len(runs)

    def _reads_whole(self, path, classes, roots) -> bool:
        """``path`` reads every unit through contiguous, equal column groups in unit order."""
        module = self.modules[path]
        width = in_units(module)
        if width % len(roots):
            return False
        group = width // len(roots)
        for unit, root in enumerate(roots):
            if classes[root]["columns"].get(path) != list(range(unit * group, (unit + 1) * group)):
                return False
        return True

    def _segments(self, classes, roots, path):
        """The :data:`~.cuts.Segments` of ``path``'s rows per unit, or None if irregular."""
        first = classes[roots[0]]["rows"][path]
        runs, start = [], 0
        for i in range(1, len(first) + 1):
            if i == len(first) or first[i] != first[i - 1] + 1:
                runs.append((first[start], i - start))
                start = i
        per = runs[0][1]
        if any(length != per for _, length in runs):
            return None
        segments = tuple((offset, per) for offset, _ in runs)
        for unit, root in enumerate(roots):
            expected = [offset + unit * per + i for offset, _ in segments for i in range(per)]
            if classes[root]["rows"][path] != expected:
                return None
        # offsets of unit 0 are where each segment starts
        return segments

    def _heads(self, roots, attention, problem):
        """The :class:`~.cuts.Heads` of a group whose units are attention heads (a string
        when the attention cannot be cut), or None for other groups."""
        found = [attention[r] for r in roots if r in attention]
        if not found:
            return None
        modules = {module for module, _, _ in found}
        per_unit = {len(heads) for _, _, heads in found}
        if len(found) != len(roots) or len(modules) != 1 or len(per_unit) != 1:
            return "its heads do not form whole units of one attention"
        module, head_dim, _ = found[0]
        order = [heads for _, _, heads in found]
        if [h for heads in order for h in heads] != list(range(sum(len(h) for h in order))):
            return "its query heads are not grouped by key/value head"
        return Heads(module, head_dim, per_unit.pop())

    def _between(self, roots) -> tuple[str, ...]:
        wanted = set(roots[:1])
        labels = [label for code, label in self.walk.labels if int(self.root[code]) in wanted]
        return tuple(dict.fromkeys(labels))
