"""Batch-1 latency on this machine as a function of the units each cut keeps (ZipLM-style tables).

The latency of the compressed model is predicted as

    T(k) = T_rest + Σ_modules t_m(k),

with one measured table ``t_m`` per module whose work depends on the widths:

- a ``Linear``/``Conv1D``/``Conv2d`` producer or consumer of a cut: a fresh layer of the
  same kind with ``f_in·n_in`` inputs and ``f_out·n_out`` outputs is timed on an input
  of the shape the layer receives at batch 1, on a grid of fractions ``f`` of each width
  that a cut changes (1/16, 1/8, 1/4, …, 7/8, 1), and ``t_m`` is the bilinear
  interpolation of that grid at the actual widths;
- a BatchNorm or depthwise companion: timed the same way against its channels;
- an attention whose heads are cut: every ``scaled_dot_product_attention`` its own code
  runs is timed with the head dimension of its query, key and value scaled.

``T_rest`` is the whole model's measured batch-1 latency less the tables at full width:
everything the widths do not change (embeddings, norms, the layers outside the cuts,
Python overhead). Each time is the median of repeated calls after warm-up with a fixed
number of threads (1 by default). Tables are measured once per model structure and
input shape on this machine and cached under ``<cache>/latency/<hash>.json``, the hash
covering the modules' types and shapes, the cuts, the input shape, the thread count, the
torch version and the processor.

Accuracy: a table is a guide, not the judge. ``compress(..., latency=F)`` times what it
allocates against the original and re-aims until the measurement is within ``F``
(:mod:`.measured`); every compression reports the table's error on its first
allocation (``Compression.budget["table_error"]``), and ``benchmarks/latency_budget.py``
measures it across models and budgets. A table is measured once and cached, so the
load on the machine at that moment stays in it; timing noise at batch 1 on a shared
machine is about 1%.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .. import batches
from ..atomic import atomic_write_text
from ..evaluate import model_device
from ..graph import Cut
from ..layers import is_transposed_linear, weight_matrix
from ..timing import forward_call, latency_ms, thread_count
from .allocation import BudgetError
from .costs import _roles
from .ranks import knob as rank_knob
from .ranks import layer_module

#: Fractions of a width at which a table is measured.
GRID = (1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4, 7 / 8, 1.0)
_FORMAT = 2


@dataclass
class _Table:
    """A module's measured times on the grid of its knobs' fractions.

    ``knobs``: ``(name, full)`` of the cuts it varies with (0, 1 or 2 of them), inputs
    first; ``times``: milliseconds, shape ``(len(GRID),) * len(knobs)``. ``rank``, for a
    layer that may be factorised: ``(knob, full rank, d, out, input cut, output cut)``;
    factorised, its time is the dense time scaled by the products it keeps,
    ``r·(d·f_in + out·f_out) / (d·out·f_in·f_out)`` (not measured).
    """

    path: str
    knobs: list[tuple[str, int]]
    times: np.ndarray
    rank: tuple | None = None

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.knobs] + ([self.rank[0]] if self.rank else [])

    def at(self, levels: Mapping[str, int]) -> float:
        value = self.times
        for name, full in self.knobs:
            value = _interpolate(value, levels[name] / full)
        dense = float(value)
        if self.rank is None:
            return dense
        name, full, d, out, inputs, outputs = self.rank
        f_in = 1.0 if inputs is None else levels[inputs[0]] / inputs[1]
        f_out = 1.0 if outputs is None else levels[outputs[0]] / outputs[1]
        return float(_factorised(dense, levels[name], full, d, out, f_in, f_out))

    def along(self, name: str, levels: Mapping[str, int], full: int) -> np.ndarray:
        """The table at every level ``0..full`` of knob ``name`` (the others at ``levels``):
        :meth:`at` evaluated for all levels at once, ``(full + 1,)``."""
        names = [knob for knob, _ in self.knobs]
        level = np.arange(full + 1, dtype=np.float64)
        value = self.times if name not in names else np.moveaxis(self.times, names.index(name), -1)
        for knob, size in self.knobs:
            if knob != name:
                value = _interpolate(value, levels[knob] / size)
        dense = (np.interp(level / full, (0.0, *GRID), np.concatenate(([0.0], value))) if name in names
                 else np.full(full + 1, float(value)))
        if self.rank is None:
            return dense
        knob, rank_full, d, out, inputs, outputs = self.rank

        def fraction(cut):
            return 1.0 if cut is None else (level / full if cut[0] == name else levels[cut[0]] / cut[1])

        rank = level if knob == name else levels[knob]
        return _factorised(dense, rank, rank_full, d, out, fraction(inputs), fraction(outputs))


def _factorised(dense, rank, full: int, d: int, out: int, f_in, f_out):
    """A factorisable layer's time at ``rank`` (scalars or arrays alike): the dense time
    scaled by the products the factors keep, ``r·(d·f_in + out·f_out) / (d·out·f_in·f_out)``,
    never above the dense time; the dense time at full rank or at a zero width."""
    dense, rank, f_in, f_out = (np.asarray(value, dtype=np.float64) for value in (dense, rank, f_in, f_out))
    with np.errstate(divide="ignore", invalid="ignore"):
        factorised = np.minimum(dense, dense * rank * (d * f_in + out * f_out) / (d * out * f_in * f_out))
    return np.where((rank >= full) | (dense == 0), dense, factorised)


def _interpolate(values: np.ndarray, fraction: float) -> np.ndarray:
    """Linear interpolation along the first axis of ``values`` (on :data:`GRID`); below
    the grid's first point, linear to zero at a zero width."""
    grid = np.array((0.0, *GRID))
    padded = np.concatenate([np.zeros_like(values[:1]), values])
    index = int(np.clip(np.searchsorted(grid, fraction, side="right") - 1, 0, len(grid) - 2))
    weight = (fraction - grid[index]) / (grid[index + 1] - grid[index])
    return (1 - weight) * padded[index] + weight * padded[index + 1]


@dataclass
class LatencyModel:
    """Predicted batch-1 latency (ms) of the model at any widths: the interface of
    :class:`~netshrink.budget.costs.CostModel` (``total``, ``value``, ``along``).

    ``measured`` is the original model's measured latency; ``rest`` what no cut changes.
    """

    rest: float
    tables: list[_Table]
    full: dict[str, int]
    measured: float
    unit: str = "latency"
    _touching: dict[str, list[_Table]] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._touching = {name: [t for t in self.tables if name in t.names] for name in self.full}

    @property
    def total(self) -> float:
        return self.value(self.full)

    def value(self, levels: Mapping[str, int]) -> float:
        levels = {**self.full, **levels}
        return self.rest + sum(table.at(levels) for table in self.tables)

    def along(self, name: str, levels: Mapping[str, int]) -> np.ndarray:
        levels = {**self.full, **levels}
        fixed = self.value(levels) - sum(table.at(levels) for table in self._touching[name])
        return fixed + sum((table.along(name, levels, self.full[name]) for table in self._touching[name]),
                           np.zeros(self.full[name] + 1))

    def with_ranks(self, model: nn.Module, cuts: Sequence[Cut], ranks: Mapping[str, int]) -> LatencyModel:
        """This model with the layers of ``ranks`` (path: full rank) priced as factorisable."""
        if not ranks:
            return self
        roles = _roles(cuts)
        tables = []
        for table in self.tables:
            if table.path in ranks:
                out, d = weight_matrix(layer_module(model, table.path), None).shape
                role = roles[table.path]
                factor = (rank_knob(table.path), ranks[table.path], d, out,
                          None if role.inputs is None else (role.inputs.name, role.inputs.width),
                          None if role.out is None else (role.out.name, role.out.width))
                table = _Table(table.path, table.knobs, table.times, factor)
            tables.append(table)
        full = {**self.full, **{rank_knob(path): rank for path, rank in ranks.items()}}
        return LatencyModel(self.rest, tables, full, self.measured)

    def to_json(self) -> dict:
        return {"format": _FORMAT, "rest": self.rest, "measured": self.measured, "full": self.full,
                "tables": [{"path": t.path, "knobs": t.knobs, "times": t.times.tolist()} for t in self.tables]}

    @classmethod
    def from_json(cls, data: dict) -> LatencyModel:
        tables = [_Table(t["path"], [tuple(k) for k in t["knobs"]], np.array(t["times"], dtype=np.float64))
                  for t in data["tables"]]
        return cls(data["rest"], tables, dict(data["full"]), data["measured"])


def latency_costs(model: nn.Module, cuts: Sequence[Cut], example, ranks: Mapping[str, int] | None = None, *,
                  threads: int = 1, cache: bool = True) -> LatencyModel:
    """The latency model of ``model`` at batch 1 (the first sample of ``example``), from
    the cache or measured now (module doc); ``ranks``: the layers (path: full rank) that
    may be factorised (:meth:`LatencyModel.with_ranks`).

    Raises:
        BudgetError: when the table cannot be measured: parameters on the meta device, a
            layer of a cut that the batch-1 forward pass never runs, a model that does
            not run on one sample.
    """
    if any(p.device.type == "meta" for p in model.parameters()):
        raise BudgetError("latency= times the model's layers on this machine, but its parameters are on the meta "
                          "device (an onloaded model); give size= or flops= instead")
    one = batches.head(example, 1)
    key = _key(model, cuts, one, threads)
    path = _cache_path(key)
    if cache and path.is_file():
        found = LatencyModel.from_json(json.loads(path.read_text()))
    else:
        with thread_count(threads), torch.inference_mode():
            found = _measure(model, cuts, one)
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(found.to_json()))
    return found.with_ranks(model, cuts, ranks or {})


# --------------------------------------------------------------------------------------


def _timed(run) -> float:
    """Median ms of ``run()``: 3 warm-up calls, then repeats filling about 0.2 s (5 to 200)."""
    first = latency_ms(run, repeats=3, warmup=3)
    repeats = int(np.clip(200 / max(first, 1e-3), 5, 200))
    return latency_ms(run, repeats=repeats, warmup=0)


class _Recorder(TorchDispatchMode):
    """Records the attention kernels run while a head module's own code is on top of ``stack``."""

    _KERNELS = {torch.ops.aten.scaled_dot_product_attention, torch.ops.aten._scaled_dot_product_flash_attention_for_cpu,
                torch.ops.aten._scaled_dot_product_efficient_attention, torch.ops.aten._scaled_dot_product_flash_attention,
                torch.ops.aten._scaled_dot_product_attention_math}

    def __init__(self, stack: list[str], heads: set[str]):
        super().__init__()
        self.stack, self.heads = stack, heads
        self.calls: dict[str, list] = {path: [] for path in heads}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.stack[-1] in self.heads and func._overloadpacket in self._KERNELS:
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 and isinstance(args[3], torch.Tensor) else None)
            self.calls[self.stack[-1]].append(
                {"q": tuple(args[0].shape), "k": tuple(args[1].shape), "v": tuple(args[2].shape),
                 "mask": None if not isinstance(mask, torch.Tensor) else tuple(mask.shape),
                 "dtype": args[0].dtype, "device": args[0].device})
        return func(*args, **kwargs)


def _measure(model: nn.Module, cuts: Sequence[Cut], one) -> LatencyModel:
    roles = _roles(cuts)
    modules = dict(model.named_modules())
    inputs: dict[str, tuple] = {}
    stack = [""]
    handles = []

    def enter(path):
        def hook(_module, args):
            stack.append(path)
            if path in roles and args and isinstance(args[0], torch.Tensor):
                inputs.setdefault(path, (tuple(args[0].shape), args[0].dtype))
        return hook

    def leave(*_):
        stack.pop()

    for path, module in modules.items():
        if path:
            handles.append(module.register_forward_pre_hook(enter(path)))
            handles.append(module.register_forward_hook(leave, always_call=True))
    heads = {path for path, role in roles.items() if role.heads is not None}
    recorder = _Recorder(stack, heads)
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with recorder:
            batches.call(model, batches.to_device(one, model_device(model)))
    except Exception as exc:
        raise BudgetError(f"latency= times the model at batch 1, but it does not run on one sample: "
                          f"{type(exc).__name__}: {exc}") from exc
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags:
            module.training = flag
    tables = []
    for path, role in roles.items():
        if role.heads is not None:
            if not recorder.calls[path]:
                continue  # attention written as plain matmuls: its score products stay in the rest
            tables.append(_attention_table(path, recorder.calls[path], role.heads))
            continue
        if path not in inputs:
            raise BudgetError(f"latency= times every layer a cut changes, but {path!r} did not run on one "
                              "sample, so its input shape is unknown; give size= or flops= instead")
        tables.append(_layer_table(path, modules[path], role, *inputs[path]))
    whole = _timed(forward_call(model, one))
    full = {cut.name: cut.width for cut in cuts}
    at_full = sum(table.at(full) for table in tables)
    return LatencyModel(whole - at_full, tables, full, whole)


def _layer_table(path: str, module: nn.Module, role, shape: tuple, dtype) -> _Table:
    """Times of a layer (or a companion) on the grid of the widths it depends on."""
    if role.companion is not None:
        knobs = [(role.companion.name, role.companion.width)]
    else:
        knobs = [(cut.name, cut.width) for cut in (role.inputs, role.out) if cut is not None]
    device = next(module.parameters()).device
    times = np.zeros((len(GRID),) * len(knobs))
    for index in np.ndindex(times.shape):
        fractions = {name: GRID[i] for (name, _), i in zip(knobs, index)}
        layer, x = _resized(module, role, fractions, shape, dtype, device)
        times[index] = _timed(lambda layer=layer, x=x: layer(x))
    return _Table(path, knobs, times)


def _scaled(size: int, fraction: float | None) -> int:
    return size if fraction is None else max(1, round(size * fraction))


def _resized(module: nn.Module, role, fractions: dict, shape: tuple, dtype, device):
    """A fresh module like ``module`` with the widths scaled by ``fractions``, and an input."""
    def fraction(cut):
        return None if cut is None else fractions.get(cut.name)

    if role.companion is not None:
        channels = _scaled(_channels(module), fraction(role.companion))
        if isinstance(module, nn.Conv2d):  # depthwise
            layer = nn.Conv2d(channels, channels, module.kernel_size, module.stride, module.padding, module.dilation,
                              groups=channels, bias=module.bias is not None)
        else:
            layer = type(module)(channels)
        x_shape = (shape[0], channels, *shape[2:]) if len(shape) > 2 else (shape[0], channels)
    elif isinstance(module, nn.Conv2d):
        inputs = _scaled(module.in_channels, fraction(role.inputs))
        outputs = _scaled(module.out_channels, fraction(role.out))
        layer = nn.Conv2d(inputs, outputs, module.kernel_size, module.stride, module.padding, module.dilation,
                          bias=module.bias is not None)
        x_shape = (shape[0], inputs, *shape[2:])
    else:
        features = module.nx if is_transposed_linear(module) else module.in_features
        outputs = _scaled(module.nf if is_transposed_linear(module) else module.out_features, fraction(role.out))
        inputs = _scaled(features, fraction(role.inputs))
        layer = nn.Linear(inputs, outputs, bias=module.bias is not None)
        x_shape = (*shape[:-1], inputs)
    layer = layer.to(device=device, dtype=dtype if dtype.is_floating_point else torch.float32).eval()
    return layer, torch.randn(x_shape, dtype=layer.weight.dtype, device=device)


def _channels(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.num_features


def _attention_table(path: str, calls: list[dict], cut: Cut) -> _Table:
    """Times of an attention's kernels with their head dimension scaled on the grid."""
    times = np.zeros(len(GRID))
    for i, fraction in enumerate(GRID):
        tensors = []
        for call in calls:
            def sized(shape):
                return (shape[0], _scaled(shape[1], fraction), *shape[2:]) if shape[1] > 1 else shape

            q, k, v = (torch.randn(sized(call[key]), dtype=call["dtype"], device=call["device"]) for key in "qkv")
            mask = None if call["mask"] is None else torch.zeros(sized(call["mask"]), dtype=call["dtype"],
                                                                 device=call["device"])
            tensors.append((q, k, v, mask))

        def run(tensors=tensors):
            for q, k, v, mask in tensors:
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])

        times[i] = _timed(run)
    return _Table(path, [(cut.name, cut.width)], times)


def _key(model: nn.Module, cuts: Sequence[Cut], one, threads: int) -> str:
    structure = [(path, type(module).__name__, [(n, tuple(p.shape), str(p.dtype))
                                                 for n, p in module.named_parameters(recurse=False)])
                 for path, module in model.named_modules()]
    shape = ({k: tuple(v.shape) for k, v in one.items() if isinstance(v, torch.Tensor)}
             if isinstance(one, Mapping) else tuple(one.shape))
    identity = {"format": _FORMAT, "structure": structure, "cuts": [(c.name, c.width) for c in cuts],
                "input": repr(shape), "threads": threads, "torch": torch.__version__, "grid": GRID,
                "processor": _processor(), "device": str(model_device(model))}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _processor() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_path(key: str):
    from ..zoo.cache import cache_dir

    return cache_dir() / "latency" / f"{key}.json"
