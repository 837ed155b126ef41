"""Sequential propagation: top-down chaining with forward work linear in depth.

Top-down chaining (Robin §2.7, Damle's scheme) observes cut ``k`` on the model in which
cuts ``1..k-1`` are already compressed. Re-running the whole model for every cut costs
O(depth²) forward work. Here the model is read as a sequence of *stages*, and the
values that cross the boundary before the next cut are cached per calibration batch
(:class:`~netshrink.activation_cache.ActivationCache`): observing cut ``k`` runs only the
stages from its first touched layer to its last consumer, and the caches (of the model
being compressed and of the original, which gives the targets) then move forward past
stages that no later cut touches. Every stage is run once per model to move the caches,
plus the few stages a cut spans to observe it: O(depth) in all.

Two readings of a model into stages:

- :class:`GraphStages`: a ``torch.fx`` trace, one stage per node, run node by node against
  the live modules (so rewritten layers are the ones that run). Used when the trace
  replays the model exactly and no cut changes an attribute the trace has baked in
  (head counts).
- :class:`BlockStages`: the blocks of a ``ModuleList`` that the model calls in a chain
  (a transformer's layers: each block's first input is the previous block's output,
  every other input is the same for all blocks). Used for models fx cannot trace.

A cut whose layers lie outside the stages is observed by a whole forward pass, as
before; the caches are rebuilt after it is applied. Decisions equal those of whole
passes: each stage runs the same operations on the same values.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Mapping, Sequence

import torch
import torch.fx
from torch import nn

from . import batches
from .activation_cache import ActivationCache, CacheOptions
from .errors import InvalidInputError, UntraceableModelError
from .evaluate import model_device
from .graph import Cut
from .graph.fx import trace
from .observe import Calibration, observe, run_batch
from .onload import weight_bytes
from .rewrite import apply_decision, layer_at


class _Stop(Exception):
    """Raised inside a forward pass once the values at the first stage are captured."""


class GraphStages:
    """A ``torch.fx`` trace of a model as one stage per graph node.

    A state is ``{node name: value}`` holding the values still read by later nodes.
    """

    def __init__(self, traced: torch.fx.GraphModule):
        self.nodes = [node for node in traced.graph.nodes if node.op not in ("placeholder", "output")]
        self.placeholders = [node for node in traced.graph.nodes if node.op == "placeholder"]
        self.output = next(node for node in traced.graph.nodes if node.op == "output")
        order = {node: index for index, node in enumerate(self.nodes)}
        self._last_use: dict[int, list[str]] = {}
        for node in [*self.placeholders, *self.nodes]:
            readers = [order.get(user, len(self.nodes)) for user in node.users]
            self._last_use.setdefault(max(readers, default=-1), []).append(node.name)
        calls: dict[str, list[int]] = {}
        for index, node in enumerate(self.nodes):
            if node.op == "call_module":
                calls.setdefault(node.target, []).append(index)
        self._position = {path: found[0] for path, found in calls.items() if len(found) == 1}

    def __len__(self) -> int:
        return len(self.nodes)

    def stage_of(self, path: str) -> int | None:
        """The node that calls module ``path`` (None when it is called other than once)."""
        return self._position.get(path)

    def start(self, model: nn.Module, batch) -> dict:
        """The state before the first node: the placeholders bound to ``batch``."""
        state = {}
        for position, node in enumerate(self.placeholders):
            if isinstance(batch, Mapping):
                if node.target in batch:
                    state[node.name] = batch[node.target]
                elif node.args:
                    state[node.name] = node.args[0]
                else:
                    raise _Unreplayable(f"the batch has no {node.target!r}")
            elif position == 0:
                state[node.name] = batch
            elif node.args:
                state[node.name] = node.args[0]
            else:
                raise _Unreplayable(f"forward() needs {node.target!r}, which a tensor batch does not give")
        self._forget(state, -1)
        return state

    def run(self, model: nn.Module, state: dict, start: int, stop: int) -> dict:
        """Run nodes ``start..stop-1`` on a copy of ``state`` against ``model``'s modules."""
        state = dict(state)
        for index in range(start, stop):
            node = self.nodes[index]
            args = torch.fx.node.map_arg(node.args, lambda n: state[n.name])
            kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: state[n.name])
            if node.op == "call_module":
                value = model.get_submodule(node.target)(*args, **kwargs)
            elif node.op == "call_function":
                value = node.target(*args, **kwargs)
            elif node.op == "call_method":
                value = getattr(args[0], node.target)(*args[1:], **kwargs)
            else:  # get_attr
                value = _attribute(model, node.target)
            state[node.name] = value
            self._forget(state, index)
        return state

    def finish(self, state: dict):
        """The model's output from the state after the last node."""
        return torch.fx.node.map_arg(self.output.args[0], lambda n: state[n.name])

    def _forget(self, state: dict, index: int) -> None:
        for name in self._last_use.get(index, ()):
            state.pop(name, None)


def _attribute(model: nn.Module, target: str):
    value = model
    for name in target.split("."):
        value = getattr(value, name)
    return value


class BlockStages:
    """The blocks ``path.0 … path.(n-1)`` of a ``ModuleList`` as stages.

    A state is ``(hidden, args, kwargs)``: the first input of the next block and the
    other inputs every block receives (attention masks, position embeddings), captured
    once per batch by running the model up to block 0 (the prefix).
    """

    def __init__(self, container: str, blocks: int, take_first: bool):
        self.container = container
        self.blocks = blocks
        self.take_first = take_first  # a block returns a tuple whose item 0 feeds the next

    def __len__(self) -> int:
        return self.blocks

    def path(self, index: int) -> str:
        return _block_path(self.container, index)

    def stage_of(self, path: str) -> int | None:
        for index in range(self.blocks):
            block = self.path(index)
            if path == block or path.startswith(block + "."):
                return index
        return None

    def start(self, model: nn.Module, batch):
        """The state before block 0: the model run on ``batch`` up to it."""
        captured = {}

        def hook(_module, args, kwargs):
            captured["state"] = (args[0], tuple(args[1:]), dict(kwargs))
            raise _Stop

        handle = model.get_submodule(self.path(0)).register_forward_pre_hook(hook, with_kwargs=True)
        try:
            _call_without_cache(model, batch)
        except _Stop:
            return captured["state"]
        finally:
            handle.remove()
        raise _Unreplayable(f"the forward pass did not reach {self.path(0)!r}")

    def run(self, model: nn.Module, state, start: int, stop: int):
        hidden, args, kwargs = state
        for index in range(start, stop):
            output = model.get_submodule(self.path(index))(hidden, *args, **kwargs)
            hidden = output[0] if self.take_first else output
        return hidden, args, kwargs


def _block_path(container: str, index: int) -> str:
    return f"{container}.{index}" if container else str(index)


class _Unreplayable(Exception):
    """The stages do not reproduce the model's forward pass."""


def read_stages(model: nn.Module, example, cuts: Sequence[Cut]):
    """Stages of ``model`` checked to replay its forward pass on ``example`` (a calibration
    batch) exactly, or None when neither reading applies (see the module doc)."""
    if not any(cut.heads is not None for cut in cuts):
        try:
            traced = trace(model)
        except UntraceableModelError:
            traced = None
        if traced is not None:
            stages = GraphStages(traced)
            with torch.inference_mode():
                try:
                    replayed = stages.finish(stages.run(model, stages.start(model, example), 0, len(stages)))
                    reference = batches.call(model, example)
                except Exception:  # a trace that does not replay is not used, whatever it raises
                    replayed = reference = None
            if replayed is not None and _same_values(replayed, reference):
                return stages
    return _block_stages(model, example)


def _block_stages(model: nn.Module, example) -> BlockStages | None:
    """The ``ModuleList`` whose blocks the forward pass calls as a chain, with the most
    blocks; checked by replaying the chain on ``example``."""
    lists = [(path, len(module)) for path, module in model.named_modules()
             if isinstance(module, nn.ModuleList) and len(module) >= 2]
    calls: dict[str, list] = {}
    handles = []
    for path, count in lists:
        for index in range(count):
            name = _block_path(path, index)

            def record(_module, args, kwargs, output, name=name):
                calls.setdefault(name, []).append((args, kwargs, output))

            handles.append(model.get_submodule(name).register_forward_hook(record, with_kwargs=True))
    try:
        with torch.inference_mode():
            _call_without_cache(model, example)
            found = [stages for path, count in lists
                     if (stages := _chain(model, path, count, calls)) is not None]
    finally:
        for handle in handles:
            handle.remove()
    return max(found, key=len, default=None)


def _call_without_cache(model: nn.Module, batch):
    """``model`` on ``batch`` without a key/value cache (``use_cache=False`` for a model
    whose forward takes it): a cache object would carry state from one block run to the
    next. The activations are the same either way."""
    if isinstance(batch, Mapping) and "use_cache" not in batch and \
            "use_cache" in inspect.signature(model.forward).parameters:
        batch = {**batch, "use_cache": False}
    return run_batch(model, batch)


def _chain(model: nn.Module, path: str, count: int, calls: dict) -> BlockStages | None:
    """The blocks of ``path`` as stages when the recorded calls form a chain that
    replays to the same output."""
    records = [calls.get(_block_path(path, index), []) for index in range(count)]
    take_first = bool(records[0]) and not isinstance(records[0][0][2], torch.Tensor)
    if not _chained(records, take_first):
        return None
    first_args, first_kwargs, _ = records[0][0]
    stages = BlockStages(path, count, take_first)
    hidden = stages.run(model, (first_args[0], tuple(first_args[1:]), dict(first_kwargs)), 0, count)[0]
    final = records[-1][0][2]
    return stages if _same_values(hidden, final[0] if take_first else final) else None


def _chained(calls: list[list[tuple]], take_first: bool) -> bool:
    """Whether each block's recorded calls ``[(args, kwargs, output)]`` form a chain: every
    block called once, its first input a tensor that is the previous block's output (its
    item 0 with ``take_first``), and the same plain other inputs for all blocks."""
    if any(len(found) != 1 for found in calls):
        return False
    records = [found[0] for found in calls]
    first_args, first_kwargs, _ = records[0]
    if not first_args or not isinstance(first_args[0], torch.Tensor) or not _plain((first_args[1:], first_kwargs)):
        return False
    for (args, kwargs, _), (_, _, previous) in zip(records[1:], records[:-1]):
        fed = previous[0] if take_first else previous
        if not args or args[0] is not fed or not _same_inputs((args[1:], kwargs), (first_args[1:], first_kwargs)):
            return False
    return True


def _plain(value) -> bool:
    """Whether ``value`` holds only tensors and plain values (no stateful objects such as
    a key/value cache, which replaying a block would change)."""
    if value is None or isinstance(value, (torch.Tensor, bool, int, float, str, torch.dtype)):
        return True
    if isinstance(value, (tuple, list)):
        return all(_plain(item) for item in value)
    if isinstance(value, dict):
        return all(_plain(item) for item in value.values())
    return False


def _same_inputs(a, b) -> bool:
    """Whether two nested structures hold the same tensor objects and equal plain values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_inputs(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_inputs(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:  # objects whose equality is not a boolean
        return a is b


def _same_values(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_values(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_values(a[k], b[k]) for k in a)
    if hasattr(a, "to_tuple") and hasattr(b, "to_tuple"):  # transformers' ModelOutput
        return _same_values(a.to_tuple(), b.to_tuple())
    return type(a) is type(b) and a == b


def top_down(
    model: nn.Module,
    cuts: Sequence[Cut],
    calibration: Calibration,
    method,
    progress: bool = False,
    cache: CacheOptions | None = None,
    sequential: bool = True,
    onload=None,
) -> list:
    """Top-down chaining (Robin §2.7) on ``model`` in place; the decisions in cut order.

    With ``sequential`` (the default) cuts inside the model's stages are observed from
    cached activations (module doc); ``sequential=False`` observes every cut by whole
    forward passes (O(depth²) forward work; the reference the sequential path equals).
    ``onload(model, reference, stages)``, for a model whose parameters are on the meta
    device, gives the :class:`~netshrink.onload.Residency` that materialises its blocks
    as they run and writes them out after.
    """
    reference = copy.deepcopy(model) if method.needs_reference else None
    residency = None
    if onload is not None:
        stages, residency = _onload_stages(model, reference, calibration.first(), onload)
    else:
        with _evaluating(model):
            stages = read_stages(model, calibration.first(), cuts) if sequential else None
    spans = [_span(stages, cut) if stages is not None else None for cut in cuts]
    if residency is not None and None in spans:
        outside = next(cut.name for cut, span in zip(cuts, spans) if span is None)
        raise InvalidInputError(f"onloading compresses one block at a time, but the cut {outside!r} lies outside "
                                f"the blocks of {stages.container!r}; compress only the cuts inside (layers=[...])")
    caches = _Caches(stages, calibration, cache, residency) if any(spans) else None
    decisions = []
    try:
        for position, cut in enumerate(cut_progress(cuts, progress)):
            paired = reference if position > 0 else None
            span = spans[position]
            if span is None:
                statistic = observe(model, [cut], calibration, method.statistic, reference=paired)[cut.name]
            else:
                caches.advance(model, reference, min(s[0] for s in spans[position:] if s is not None))
                feed = caches.feed(model, reference if paired is not None else None, span[1])
                statistic = observe(model, [cut], calibration, method.statistic, reference=paired,
                                    feed=feed)[cut.name]
            decision = method.decide(cut, statistic, [layer_at(model, p) for p in cut.consumers],
                                     [layer_at(model, p) for p in cut.producers])
            del statistic  # its (d, d) moments are not held while the next cut is observed
            apply_decision(model, cut, decision)
            if span is None and caches is not None:
                caches.reset()  # a cut outside the stages may have changed what they start from
            # the model holds the new weights now: the record keeps what the report reads
            # (a deep model's float64 consumer weights would otherwise pile up cut by cut)
            decisions.append((cut, dataclasses.replace(decision, consumer_weights=(), factors=None, bias_shifts=())))
            del decision
        if residency is not None:
            residency.finish()
    finally:
        if caches is not None:
            caches.close()
    return decisions


def _onload_stages(model: nn.Module, reference: nn.Module | None, example, onload):
    """The blocks of a meta-device model and the residency that loads them.

    The largest ``ModuleList`` holds the blocks. With everything outside it loaded, the
    forward pass runs once with every block replaced by a pass-through that records its
    inputs: the blocks are stages when each one's first input is the previous one's
    output and the other inputs are the same for all (a block returning a tuple whose
    item 0 feeds the next is tried too)."""
    lists = [(path, module) for path, module in model.named_modules()
             if isinstance(module, nn.ModuleList) and len(module) >= 2]
    if not lists:
        raise InvalidInputError(f"onloading runs a model block by block, but {type(model).__name__} has no ModuleList "
                                "of blocks (e.g. a transformer's layers)")
    path, container = max(lists, key=lambda item: weight_bytes(item[1]))
    stages = BlockStages(path, len(container), take_first=False)
    residency = onload(model, reference, stages)
    with _evaluating(model), torch.inference_mode():
        for take_first in (False, True):
            if _passes_through(model, container, example, take_first):
                stages.take_first = take_first
                return stages, residency
    raise InvalidInputError(f"onloading runs the blocks of {path!r} one at a time, but the forward pass does not "
                            "feed each block's output to the next with the same other inputs")


def _passes_through(model: nn.Module, container: nn.ModuleList, example, take_first: bool) -> bool:
    records: list[list[tuple]] = [[] for _ in container]
    for index, block in enumerate(container):
        def record(*args, index=index, **kwargs):
            output = (args[0],) if take_first else args[0]
            records[index].append((args, kwargs, output))
            return output

        block.forward = record
    try:
        _call_without_cache(model, example)
    except Exception:  # a model whose code rejects the pass-through output: not this form
        return False
    finally:
        for block in container:
            del block.forward
    return _chained(records, take_first)


def _span(stages, cut: Cut) -> tuple[int, int] | None:
    """``(first, last)`` stage of the layers ``cut`` changes, or None when one lies outside."""
    paths = [*cut.producers, *cut.companions, *cut.consumers]
    positions = [stages.stage_of(path) for path in paths]
    if cut.heads is not None:
        positions.append(stages.stage_of(cut.heads.module) if isinstance(stages, BlockStages) else None)
    if not positions or any(p is None for p in positions):
        return None
    return min(positions), max(positions)


class _Caches:
    """The activations at the current stage boundary, of the model being compressed and
    of the original (the reference), per calibration batch."""

    def __init__(self, stages, calibration: Calibration, options: CacheOptions | None, residency=None):
        self.stages = stages
        self.calibration = calibration
        self.options = options
        self.residency = residency  # loads blocks before they run, writes them out after
        self.position = None  # None: not built
        self.masks: list = []
        self.current: ActivationCache | None = None
        self.reference: ActivationCache | None = None

    def advance(self, model: nn.Module, reference: nn.Module | None, target: int) -> None:
        """Move both caches to the boundary before stage ``target``."""
        with _evaluating(model, reference), torch.inference_mode():
            if self.position is None:
                self._build(model, reference)
            if target <= self.position:
                return
            if self.residency is not None:
                self.residency.ensure(self.position, target)
            for which, owner in ((self.current, model), (self.reference, reference)):
                if which is None:
                    continue
                for index in which.indices():
                    state = which.get(index, model_device(owner))
                    which.put(index, self.stages.run(owner, state, self.position, target))
            self.position = target
            if self.residency is not None:
                self.residency.retire(target)

    def feed(self, model: nn.Module, reference: nn.Module | None, last: int):
        """``(mask, run)`` pairs for :func:`~netshrink.observe.observe`: each runs the
        stages from the boundary through ``last`` on the cached values of its model."""
        if self.residency is not None:
            self.residency.ensure(self.position, last + 1)
        for index in self.current.indices():
            def run(owner, index=index):
                which = self.reference if owner is reference and reference is not None else self.current
                self.stages.run(owner, which.get(index, model_device(owner)), self.position, last + 1)

            yield self.masks[index], run

    def reset(self) -> None:
        self.close()
        self.position = None

    def close(self) -> None:
        for which in (self.current, self.reference):
            if which is not None:
                which.close()
        self.current = self.reference = None

    def _build(self, model: nn.Module, reference: nn.Module | None) -> None:
        self.current = ActivationCache(self.options)
        self.reference = ActivationCache(self.options) if reference is not None else None
        self.masks = []
        device = model_device(model)
        for index, batch in enumerate(self.calibration):
            batch = batches.to_device(batch, device)
            self.masks.append(batches.row_mask(batch))
            self.current.put(index, self.stages.start(model, batch))
            if self.reference is not None:
                self.reference.put(index, self.stages.start(reference, batch))
        self.position = 0


class _evaluating:
    """Eval mode for the given models inside the block; their flags restored after."""

    def __init__(self, *models):
        self.flags = [(m, m.training) for m in models if m is not None]

    def __enter__(self):
        for m, _ in self.flags:
            m.eval()

    def __exit__(self, *exc):
        for m, flag in self.flags:
            m.train(flag)


def cut_progress(cuts: Sequence[Cut], enabled: bool):
    if not enabled:
        return cuts
    from tqdm.auto import tqdm

    return tqdm(cuts, desc="compress", unit="layer", leave=False)
