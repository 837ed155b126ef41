"""The public entry points: ``compress``, ``sweep``, ``Compression`` and ``load``."""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import batches, distributed
from .activation_cache import CacheOptions
from .budget import BUDGET_KINDS, Budget, take_budget
from .budget.allocation import check_reachable, smallest_fraction
from .budget.measured import Measured, meet_measured, measure_against_original
from .budget import ranks
from .budget.plan import achieved, cost_model, loss_curves, plan
from .atomic import atomic_directory
from .errors import InvalidInputError, NetshrinkError, UnsupportedCutError
from .evaluate import model_device
from .graph import find_cuts, input_cut, network_input_cut, require_cuts, select_cuts
from .methods import METHODS, Method, make_method
from .methods.base import Widths
from .methods.warm_start import WarmStarts
from .modules import build, spec
from .quantize import check_scheme, output_layers, stored_bytes
from .quantize import quantize as quantize_layers
from .observe import Calibration
from .onload import Onload, Residency, has_meta_parameters
from .rewrite import set_submodule
from .schedule import run_schedule
from .sweep_schedule import SharedStatistics

MANIFEST_FORMAT = "netshrink-compression/3"
#: Manifest formats :func:`load` reads (format 2 has no module attributes or config).
READABLE_FORMATS = ("netshrink-compression/2", MANIFEST_FORMAT)
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class LayerReport:
    """One cut of a compression: ``name`` kept ``kept`` of its ``total`` units (``kind``:
    neurons, channels or heads; for grouped-query attention a unit is a key/value group).
    A layer that a budget's rank stage factorised is reported with kind ``"rank"``: it
    kept rank ``kept`` of its full rank ``total``.

    ``error`` is the method's error measure (``interpolative``: the bound
    ``‖R₂₂‖₂‖W‖₂``; Gram methods: relative RMS error of the consumers' pre-activations
    on the calibration data). ``sampled`` cuts keep computing every unit and select
    the kept ones before their consumer (Robin §2.6). ``details``: what the method
    reports beyond the error (``multitask_lasso``: the solver's objective, iterations,
    seconds, stop reason).
    """

    name: str
    kept: int
    total: int
    error: float
    producers: list[str]
    consumers: list[str]
    sampled: bool
    kept_indices: list[int] = field(repr=False)
    details: dict = field(default_factory=dict, repr=False)
    kind: str = "neurons"


@dataclass
class Compression:
    """The result of :func:`compress`.

    Attributes:
        model: a new, physically smaller ``nn.Module`` (the input model is untouched).
        layers: one :class:`LayerReport` per cut, in execution order.
        params_before, params_after: parameter counts of the original and new model.
        method, options: how it was made (recorded in saved manifests).
        skipped: the layers whose outputs could not be cut, with the reason
            (:class:`netshrink.graph.Skipped`).
        attributes: per module path, the integer attributes the rewrite changed (the
            head counts of a pruned attention).
        config: fields of ``model.config`` set to the new widths (a Hugging Face model
            whose every layer keeps the same FFN width or head count).
        bytes_before, bytes_after: bytes of the two models' state (``quantize="int8"``
            stores weights in one byte each, :mod:`netshrink.quantize`).
        budget: for a ``size``/``flops``/``latency`` budget, what was asked and reached:
            ``kind``, ``unit``, ``target``, ``achieved`` (the compressed model's fraction:
            parameters and FLOPs counted on it, latency measured against the original at
            batch 1), ``predicted`` (the allocation's), ``estimated_loss`` and the
            ``widths`` per cut (:mod:`netshrink.budget`); for latency also
            ``measured_ms``, ``original_ms``, ``predicted_ms`` (the table's at the kept
            widths), ``table_error`` (the first allocation's predicted fraction over its
            measured one, less 1) and ``rounds`` (every model built and timed,
            :mod:`netshrink.budget.measured`); empty otherwise.
    """

    model: nn.Module
    layers: list[LayerReport]
    params_before: int
    params_after: int
    method: str
    options: dict
    original_shapes: dict = field(default_factory=dict, repr=False)
    skipped: list = field(default_factory=list, repr=False)
    attributes: dict = field(default_factory=dict, repr=False)
    config: dict = field(default_factory=dict, repr=False)
    budget: dict = field(default_factory=dict, repr=False)
    bytes_before: int = 0
    bytes_after: int = 0

    @property
    def ratio(self) -> float:
        """Fraction of parameters kept, ``params_after / params_before``."""
        return self.params_after / self.params_before

    def table(self) -> str:
        """A plain-text per-layer table."""
        width = max([28, *(len(layer.name) + 10 for layer in self.layers)])
        rows = [f"{'layer':<{width}} {'kind':<8} {'kept':>6} {'total':>6} {'kept %':>7} {'error':>10}"]
        for layer in self.layers:
            joint = layer.kind != "heads" and len(layer.producers) + len(layer.consumers) > 2
            name = layer.name + (" (joint)" if joint else "") + (" (sampler)" if layer.sampled else "")
            rows.append(
                f"{name:<{width}} {layer.kind:<8} {layer.kept:>6} {layer.total:>6} "
                f"{100 * layer.kept / layer.total:>6.1f}% {layer.error:>10.4g}"
            )
        rows.append(
            f"parameters: {self.params_before:,} -> {self.params_after:,} "
            f"({100 * self.ratio:.1f}%)"
        )
        if self.options.get("quantize"):
            rows.append(f"bytes: {self.bytes_before:,} -> {self.bytes_after:,} "
                        f"({100 * self.bytes_after / self.bytes_before:.2f}%, {self.options['quantize']} weights)")
        if self.budget:
            rows.append(f"budget: {self.budget['kind']} {self.budget['target']:g} of the {self.budget['unit']}, "
                        f"reached {self.budget['achieved']:.4g}")
        return "\n".join(rows)

    def save(self, path: str | os.PathLike, overwrite: bool = False, *, source: dict | None = None,
             files: tuple = ()) -> Path:
        """Write the compressed model to the directory ``path``, atomically.

        The directory holds ``model.safetensors`` (the new state dict, each tied tensor
        once) and ``manifest.json`` (format, method, options, per-layer report and the new
        shape of every rewritten module). No pickle is used. Rebuild with :func:`load`.

        Args:
            overwrite: replace an existing ``path`` (refused otherwise).
            source: the recipe of the original architecture
                (:attr:`netshrink.sources.Source.recipe`); stored in the manifest so that
                ``load(path)`` needs no original.
            files: files copied into the directory (a tokenizer's).

        A Hugging Face model whose ``config`` states every new width (see
        :func:`config_states_widths`) also gets its ``config.json``: the directory then
        loads with ``transformers``' ``from_pretrained`` as well.
        """
        import shutil

        manifest = self._manifest(source)
        state, manifest["tied"] = _untied_state(self.model.state_dict())
        with atomic_directory(path, overwrite=overwrite) as tmp:
            for file in files:
                shutil.copy2(file, os.path.join(tmp, os.path.basename(file)))
            save_file(state, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt"})
            self._write_description(tmp, manifest)
        return Path(path)

    def _manifest(self, source: dict | None = None) -> dict:
        return {
            "format": MANIFEST_FORMAT,
            "method": self.method,
            "options": self.options,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "layers": [asdict(layer) for layer in self.layers],
            "modules": {path: {"original": original, "new": spec(self.model.get_submodule(path))}
                        for path, original in self.original_shapes.items()},
            "attributes": self.attributes,
            "config": self.config,
            **({"budget": self.budget} if self.budget else {}),
            **({"source": source} if source is not None else {}),
        }

    def _write_description(self, folder, manifest: dict) -> None:
        """``manifest.json``, and ``config.json`` when the config states the new widths."""
        if config_states_widths(self.model):
            self.model.config.to_json_file(os.path.join(folder, "config.json"))
        with open(os.path.join(folder, MANIFEST_FILE), "w") as handle:
            json.dump(manifest, handle, indent=2)

    def _write_onloaded(self, folder: Path) -> None:
        """Complete an onloaded compression's output folder: the blocks' shards (written as
        they were released) and the layers outside them merged into ``model.safetensors``."""
        from .onload import merge_safetensors

        state = {name: tensor for name, tensor in self.model.state_dict().items() if tensor.device.type != "meta"}
        state, tied = _untied_state(state)
        rest = folder / "outside-blocks.safetensors"
        save_file(state, str(rest))
        merge_safetensors([*sorted(folder.glob("block-*.safetensors")), rest], folder / WEIGHTS_FILE,
                          metadata={"format": "pt"})
        self._write_description(folder, {**self._manifest(), "tied": tied})


def config_states_widths(model: nn.Module) -> bool:
    """Whether ``type(model)(model.config)`` has exactly ``model``'s parameter shapes: a
    Hugging Face model whose config can state the compressed widths (built on the meta
    device, so nothing is allocated)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_json_file"):
        return False
    try:
        with torch.device("meta"):
            fresh = type(model)(copy.deepcopy(config))
    except Exception:  # a constructor that cannot run on the meta device states nothing
        return False
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    return shapes == {name: tuple(t.shape) for name, t in fresh.state_dict().items()}


def compress(
    model: nn.Module,
    calibration,
    method: str | Method = "interpolative",
    *,
    chaining: str = "top_down",
    coupling: str = "joint",
    layers: list[str] | None = None,
    layer: str | None = None,
    batch_size: int = 1000,
    progress: bool = False,
    cache: CacheOptions | None = None,
    onload: Onload | None = None,
    **options,
) -> Compression:
    """Shrink ``model`` by removing neurons and channels, reconstructing each consumer layer.

    Args:
        model: a trained ``nn.Module`` (any architecture whose forward pass
            ``torch.export`` or ``torch.fx`` can capture: MLPs, CNNs, Hugging Face
            transformers); never modified. A Hugging Face model keeps its class, its
            methods and its ``config`` (updated where every layer keeps the same widths).
        calibration: inputs ``(N, ...)`` as a tensor, a mapping of keyword inputs (a
            tokenizer's output: the model is called as ``model(**batch)`` and padding
            marked by its ``attention_mask`` never enters a statistic), or a re-iterable
            of such batches (or ``(inputs, labels)`` tuples), e.g. a DataLoader. The first
            batch is the example from which the graph is read.
        method: how units are chosen and consumers rewritten: a name, with its ``options``
            below, or a :class:`~netshrink.methods.Method` object of your own (its
            ``statistic`` and ``decide`` run on the same cuts, data and schedule):

            - ``"interpolative"`` (column-pivoted QR, Damle): ``tol`` (the seed's ε:
              keep the pivots with ``|r_kk|·‖W_consumer‖₂ > ε``; 0 keeps everything) or
              ``keep`` (fraction of units per cut).
            - ``"group_lasso"`` (ℓ2,1 reconstruction, Robin): ``lam`` (fraction of each
              cut's λ_max in [0, 1]; 0 is lossless on the calibration data) or ``keep``;
              ``debias`` (least-squares refit, default True), ``solver`` (``"fista"`` or
              ``"altmin"``), ``gap_tol`` (the solver's relative duality gap, default 1e-4),
              ``weighting`` (``"parameters"``, the default: each cut's fraction is scaled
              by the parameters its units cost relative to the other cuts; ``"uniform"``:
              the same fraction everywhere; see :mod:`netshrink.methods.group_lasso`).
            - ``"multitask_lasso"`` (Shenouda et al., one Linear layer's inputs): ``lam``
              (the seed's absolute scale), ``solver`` (``"fista"``, or ``"prox_adam"``
              with ``mu`` and an optional ``max_seconds`` cap), ``warm_start``, ``seed``,
              ``gap_tol``; see :mod:`netshrink.methods.multitask_lasso`. Usually with
              ``layer=``.
            - baselines: ``"magnitude"`` (``keep``, ``refit=False``), ``"random"``
              (``keep``, ``refit=True``, ``seed``), ``"lowrank"`` (``keep``: fraction of
              each consumer's rank; it removes no unit).

            Instead of the method's own budget, every method takes a global one:
            ``size`` (fraction of the parameters), ``flops`` (fraction of the forward
            FLOPs at the first calibration batch's shape) or ``latency`` (fraction of the
            batch-1 latency on this machine: allocated on a per-layer latency table, then
            timed against the original and re-allocated until it is within the budget and
            within 1% of it, :mod:`netshrink.budget.measured`). One solve
            then gives every cut its width — the least estimated loss within the budget
            (:mod:`netshrink.budget`) — and the method compresses each cut to it;
            ``output_loss`` (``"auto"``, ``"kl"``, ``"mse"``) is the loss whose increase
            is estimated. ``Compression.budget`` reports the target and what was reached.
        chaining: ``"top_down"``, ``"parallel"`` or ``"bottom_up"`` (Robin §2.7; see
            :mod:`netshrink.schedule`).
        coupling: how a tensor read or written by several layers (residual streams) is
            handled: ``"joint"`` prunes the coupled group together, ``"sampler"`` gives
            each reader a dynamic ``index_select`` sampler (Robin §2.6).
        layers: compress only these cuts, named by the layer that loses units (its
            module path, e.g. ``["hidden.0"]``; the attention module for heads); default:
            every cut, or with ``keep={kind: fraction}`` every cut of those kinds.
        layer: instead of ``layers``, compress the inputs of one ``nn.Linear``:
            ``"first"``, ``"pen"`` (penultimate) or ``"last"`` among the model's Linear
            layers in execution order, or a module path. Its inputs are the neurons of
            the producing layer when that is a plain cut; otherwise (flattened conv
            features, the network's input) each input feature is a unit and the kept
            ones are served by a sampler (:func:`netshrink.graph.input_cut`).
        batch_size: batch size when ``calibration`` is a tensor.
        progress: show progress bars.
        cache: how top-down chaining stores the activations it propagates from block to
            block (:class:`~netshrink.activation_cache.CacheOptions`: storage dtype,
            bytes held in memory before spilling to memory-mapped files — 2 GiB by
            default — and the folder for those files).
        onload: compress a model larger than memory (:class:`~netshrink.onload.Onload`:
            the safetensors checkpoint and the output folder). ``model`` is built with
            its parameters on the meta device (:func:`netshrink.onload.parameters_on_meta`);
            top-down chaining loads one block at a time from the checkpoint and writes
            it to ``onload.output`` once compressed, so the result is saved there and
            the returned ``Compression.model`` keeps its blocks on the meta device.

    Returns:
        A :class:`Compression` with the new model, per-layer report and sizes.
    """
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    budget = take_budget(options)
    output_loss = options.pop("output_loss", None)
    stages = _take_stages(options, budget is not None)
    _check_budgeted(method, budget, output_loss, onload)
    _strategy(method, {**options, "keep": 1.0} if budget is not None else options)  # bad options fail first
    data = Calibration(calibration, batch_size=batch_size)
    example = data.first()
    distributed.check_same_job(model, example, {
        "method": method if isinstance(method, str) else type(method).__qualname__, "options": options,
        "budget": budget, "chaining": chaining, "coupling": coupling, "layers": layers, "layer": layer})
    batches.check_for(model, example)
    every, skipped, cuts = _find(model, coupling, example, layers, layer)
    keep = options.get("keep") if isinstance(method, str) else getattr(method, "keep", None)
    cuts = _budget_cuts(cuts, keep, layers, layer)
    if stages.sample_inputs:
        cuts = [network_input_cut(model, example), *cuts]

    def attempt(method_options, folder=None, sensitivities=None):
        shrunk = copy.deepcopy(model)
        strategy = _prepared(method, method_options, model, cuts, sensitivities)
        if chaining != "parallel":  # in a process group rank 0 decides (parallel: the ranks share the cuts)
            strategy = distributed.decided_once(strategy)
        residency = None if folder is None else functools.partial(Residency, onload, Path(folder))
        return shrunk, run_schedule(shrunk, cuts, data, strategy, chaining=chaining, progress=progress,
                                    cache=cache, onload=residency)

    if onload is not None:
        _check_onload(model, chaining, stages)
        with atomic_directory(onload.output, overwrite=onload.overwrite) as folder:
            shrunk, decisions = attempt(options, folder)
            result = _compression(model, shrunk, cuts, decisions, every, skipped, method, options, chaining,
                                  coupling, layer, example, runs=False)
            result._write_onloaded(Path(folder))
        return result
    if budget is None:
        shrunk, decisions = attempt(options)
        return _compression(model, shrunk, cuts, decisions, every, skipped, method, options, chaining, coupling,
                            layer, example, quantize=stages.quantize)
    pricing = _Pricing(model, cuts, data, method, options, example, output_loss, progress, stages, chaining, cache)
    return pricing.realize(budget, attempt, every, skipped, coupling, layer)


@dataclass(frozen=True)
class _Stages:
    """The stages composed with the method's unit removal (Robin §2.3, §2.6, §3.1): low
    rank and input sampling under a budget's allocation, int8 weights on top of anything."""

    lowrank: bool = False
    sample_inputs: bool = False
    quantize: str | None = None


def _take_stages(options: dict, budgeted: bool) -> _Stages:
    """Remove ``lowrank``, ``sample_inputs`` (stages of a ``size``/``flops``/``latency``
    allocation) and ``quantize`` from ``options``."""
    stages = {name: options.pop(name, False) for name in ("lowrank", "sample_inputs")}
    for name, value in stages.items():
        if not isinstance(value, bool):
            raise InvalidInputError(f"{name} must be True or False, got {value!r}")
        if value and not budgeted:
            raise InvalidInputError(
                f"{name}=True is a stage of the global allocation: give a size, flops or latency budget with it"
            )
    scheme = options.pop("quantize", None)
    check_scheme(scheme)
    return _Stages(**stages, quantize=scheme)


class _Pricing:
    """What budgets of a compression share: the loss curves of its knobs (computed once,
    on the first budget) and a cost model per budget kind; and how a budget is realised."""

    def __init__(self, model, cuts, data, method, options, example, output_loss, progress, stages: _Stages,
                 chaining: str, cache):
        self.model, self.cuts, self.data, self.method = model, cuts, data, method
        self.options, self.example, self.output_loss, self.progress = options, example, output_loss, progress
        self.stages, self.chaining, self.cache = stages, chaining, cache
        self._knobs = self._sensitivities = None
        self._costs = {}

    def plan(self, budget):
        check_reachable(self._cost(budget), budget.fraction * self._cost(budget).total)
        if self._knobs is None:
            planner = _prepared(self.method, {**self.options, "keep": 1.0}, self.model, self.cuts)
            self._knobs, self._sensitivities = loss_curves(
                self.model, self.cuts, self.data, planner, output_loss=self.output_loss or "auto",
                lowrank=self.lowrank, progress=self.progress)
        return plan(self._knobs, self._costs[budget.kind], budget)

    @property
    def lowrank(self) -> bool:
        return self.stages.lowrank or not _strategy(self.method, {**self.options, "keep": 1.0}).removes_units

    def realize(self, budget, attempt, every, skipped, coupling, layer) -> Compression:
        """Allocate ``budget``, remove the units (``attempt`` runs the method's schedule at
        the widths), factorise the layers whose ranks pay, and report; a latency budget
        is met as measured (:mod:`netshrink.budget.measured`)."""
        def weighed(options):  # the units kept by the loss the widths were allocated by
            return attempt(options, sensitivities=self._sensitivities)

        if budget.kind != "latency":
            chosen = self.plan(budget)
            result, _ = self._built(chosen, budget, weighed, self.chaining, every, skipped, coupling, layer)
            result.budget = {**chosen.report(),
                             "achieved": achieved(budget, self.model, result.model, self.example, chosen.costs)}
            return result

        def stand_in(chosen):
            return self._built(chosen, budget, self._shaped, "parallel", every, skipped, coupling, layer)

        chosen, (result, kept), best, rounds = meet_measured(
            budget.fraction, smallest_fraction(self._cost(budget)), lambda aim: self.plan(Budget(budget.kind, aim)),
            stand_in, lambda plan: self._built(plan, budget, weighed, self.chaining, every, skipped, coupling, layer),
            lambda built: self._measured(built[0].model))
        result.budget = {**chosen.report(), "target": budget.fraction, "achieved": best.fraction,
                         "measured_ms": best.measured.compressed_ms, "original_ms": best.measured.original_ms,
                         "predicted_ms": chosen.costs.value(kept),
                         "table_error": rounds[0].predicted / rounds[0].fraction - 1,
                         "rounds": [r.report() for r in rounds]}
        return result

    def _shaped(self, options):
        """A model with the widths ``options["keep"]`` and none of the method's solves
        (random units, no refit): what a latency measurement needs of a plan."""
        shrunk = copy.deepcopy(self.model)
        strategy = make_method("random", keep=options["keep"], refit=False)
        strategy.prepare(self.model, self.cuts)
        return shrunk, run_schedule(shrunk, self.cuts, self.data, strategy, chaining="parallel")

    def _cost(self, budget):
        if budget.kind not in self._costs:
            self._costs[budget.kind] = cost_model(self.model, self.cuts, budget.kind, self.example,
                                                  lowrank=self.lowrank)
        return self._costs[budget.kind]

    def _measured(self, compressed) -> Measured:
        """Batch-1 latency of ``compressed`` against the original; rank 0's in a process group."""
        ranks = distributed.current()
        measured = measure_against_original(self.model, compressed, self.example) \
            if ranks is None or ranks.rank == 0 else None
        if ranks is not None:
            with ranks.during("sharing the measured latency"):
                measured = ranks.broadcast(measured)
        return measured

    def _built(self, chosen, budget, attempt, chaining, every, skipped, coupling, layer) -> tuple[Compression, dict]:
        """The compression at a plan's widths (``attempt`` removes the units, ``chaining``
        orders the factorisations), and the widths it kept (rank knobs included)."""
        widths = Widths({name: level for name, level in chosen.widths.items() if ranks.layer_of(name) is None})
        if _strategy(self.method, {**self.options, "keep": 1.0}).removes_units:
            shrunk, decisions = attempt({**self.options, "keep": widths})
        else:
            shrunk, decisions = copy.deepcopy(self.model), []
        full = chosen.costs.full
        factored = {path: level for path, level in
                    ((ranks.layer_of(name), level) for name, level in chosen.widths.items())
                    if path is not None and ranks.pays(ranks.layer_module(shrunk, path), level,
                                                       full[ranks.knob(path)])}
        factorised = ranks.factorise(shrunk, factored, self.data, chaining=chaining, progress=self.progress,
                                     cache=self.cache) if factored else []
        recorded = {**self.options, budget.kind: budget.fraction,
                    **({"output_loss": self.output_loss} if self.output_loss else {}),
                    **{name: True for name in ("lowrank", "sample_inputs") if getattr(self.stages, name)}}
        result = _compression(self.model, shrunk, self.cuts, decisions, every, skipped, self.method, recorded,
                              self.chaining, coupling, layer, self.example, factorised=factorised,
                              quantize=self.stages.quantize)
        kept = {**{report.name: report.kept for report in result.layers if report.kind != "rank"},
                **{ranks.knob(report.name): report.kept for report in result.layers if report.kind == "rank"}}
        return result, kept


def _check_budgeted(method, budget, output_loss, onload) -> None:
    """A ``size``/``flops``/``latency`` budget is allocated for a method by name."""
    if output_loss is not None and budget is None:
        raise InvalidInputError("output_loss weighs cuts under a size, flops or latency budget; give one of them")
    if budget is None:
        return
    if not isinstance(method, str):
        raise InvalidInputError(
            f"a {type(method).__name__} object carries its own budget; a {budget.kind} budget is allocated for a "
            "method by name (or compute widths with netshrink.budget.plan and pass keep=Widths(...))"
        )
    if onload is not None:
        raise InvalidInputError(f"{budget.kind}= observes every cut of the whole model at once to allocate the "
                                "widths; with onload give keep= or lam=")


#: The options that set a method's budget; a sweep varies one of them per budget.
BUDGETS = ("lam", "keep", "tol", *BUDGET_KINDS)


def sweep(
    model: nn.Module,
    calibration,
    method: str = "group_lasso",
    budgets: Sequence[Mapping] = (),
    *,
    chaining: str = "top_down",
    coupling: str = "joint",
    layers: list[str] | None = None,
    layer: str | None = None,
    batch_size: int = 1000,
    progress: bool = False,
    cache: CacheOptions | None = None,
    warm_starts: bool = False,
    **options,
) -> list[Compression]:
    """Compress ``model`` at every budget of ``budgets``, computing statistics once where chaining allows.

    ``sweep(model, data, "group_lasso", [{"lam": 1e-3}, {"lam": 1e-2}], debias=True)`` returns what
    ``[compress(model, data, "group_lasso", lam=1e-3, debias=True), compress(..., lam=1e-2, ...)]``
    returns, for less work (:mod:`netshrink.sweep_schedule`):

    - ``chaining="parallel"`` or ``"bottom_up"``: the statistics come from the original model,
      so one observation pass serves every budget; each budget only decides and rewrites.
    - ``chaining="top_down"``: each budget changes the inputs of its later cuts, so each
      budget runs its own schedule. A statistic is still reused wherever an earlier budget
      observed the same cut after the same decisions: always the first cut, and later ones
      while the budgets agree on every earlier cut (the same kept units and weights). A
      single cut (``layer=``) is swept as in parallel chaining.
    - Budgets are taken along the λ path, from the largest ``lam`` down (neighbours share
      the most in top-down), then the others as given. Every solve starts at zero, as in
      :func:`compress`, so each result is exactly the separate compression (same kept
      units, same weights). With ``warm_starts=True`` each ``lam`` solve starts from the
      previous budget's solution at the same cut instead (``group_lasso``;
      ``multitask_lasso`` with FISTA): fewer iterations, and the same duality gap, but not
      the same point. At the default ``gap_tol=1e-4`` the objective is so flat on the
      ill-conditioned Grams of ReLU layers that the supports differ: on mlp7 (parallel, λ
      from 2e-4 to 0.1) 8 of 9 budgets kept different units, by up to 52 of 1024 at one
      cut. They agree once both solves are tight (``gap_tol=1e-10`` on small networks, as
      tested). ``keep`` budgets search λ with their own warm starts; ``size``, ``flops``
      and ``latency`` budgets share one set of loss curves (observed once, on the first
      of them) and each runs its own allocation (:mod:`netshrink.budget`).

    Memory: the statistics of every cut are held until the sweep ends (top-down: those of the
    latest budget's run), and the result holds one model per budget.

    Args:
        model, calibration, chaining, coupling, layers, layer, batch_size, progress, cache: as
            for :func:`compress`.
        method: a method name. (A :class:`~netshrink.methods.Method` object carries a budget
            of its own, so it cannot be swept: call :func:`compress` with each.)
        budgets: a list of budgets, each a mapping of one budget option of ``method`` to its
            value: ``{"lam": 1e-3}``, ``{"keep": 0.5}``, ``{"keep": {"heads": 0.5}}``,
            ``{"tol": 0.1}``, ``{"size": 0.2}``, ``{"flops": 0.4}`` (see :data:`BUDGETS` and :func:`compress` for
            which method takes which). Budgets of different options may be mixed: they share
            the statistics (warm starts run along the ``lam`` ones). An empty list gives an
            empty list, without reading the data.
        warm_starts: start each ``lam`` solve from the previous budget's solution (above:
            faster, equal to separate compressions only to the solver's tolerance).
        **options: the method's other options, the same at every budget (``debias``,
            ``solver``, ``gap_tol``, ``weighting``, ...; ``multitask_lasso``'s own
            ``warm_start`` is its start when a sweep hands it none).

    Returns:
        One :class:`Compression` per budget, in the order of ``budgets``, each as
        :func:`compress` makes it (its ``options`` include the budget).

    Raises:
        InvalidInputError: before any work, for a Method object, ``budgets`` that is not a
            list of one-option mappings, an option that is not a budget (or not one of the
            method's), a budget option given beside ``budgets``, or a bad value (the message
            names the budget by its position); inside a process group of world size > 1
            (a sweep does not spread over ranks: call :func:`compress` at each budget).
    """
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(method, str):
        raise InvalidInputError(
            f"sweep takes a method name ({', '.join(sorted(METHODS))}) and builds the method once per budget; "
            f"a {type(method).__name__} object carries its own budget: call compress with each"
        )
    if not isinstance(warm_starts, bool):
        raise InvalidInputError(f"warm_starts must be True or False, got {warm_starts!r}")
    if distributed.current() is not None:
        raise InvalidInputError(
            "sweep runs in one process; inside a process group of several ranks, call compress at each budget "
            "(each rank with its shard)"
        )
    output_loss = options.pop("output_loss", None)
    stages = _take_stages(options, True)
    checked = _checked_budgets(method, budgets, options)
    if output_loss is not None and not any(name in BUDGET_KINDS for name, _ in checked):
        raise InvalidInputError("output_loss weighs cuts under a size, flops or latency budget; give one of them")
    if not checked:
        return []
    data = Calibration(calibration, batch_size=batch_size)
    shared = SharedStatistics(model, data, chaining, progress, cache)
    example = data.first()
    batches.check_for(model, example)
    every, skipped, cuts = _find(model, coupling, example, layers, layer)
    if stages.sample_inputs:
        cuts = [network_input_cut(model, example), *cuts]
    warm = WarmStarts() if warm_starts else None
    pricing = _Pricing(model, cuts, data, method, options, example, output_loss, progress, stages, chaining, cache)
    # along the λ path from the largest λ (fewest units) down, then the other budgets as given
    order = sorted(range(len(checked)), key=lambda i: (0, -checked[i][1]) if checked[i][0] == "lam" else (1, i))
    if progress:
        from tqdm.auto import tqdm

        order = tqdm(order, desc="sweep", unit="budget", leave=False)
    results: list[Compression | None] = [None] * len(checked)
    for index in order:
        name, value = checked[index]
        chosen = _budget_cuts(cuts, value if name == "keep" else None, layers, layer)

        def attempt(method_options, chosen=chosen, sensitivities=None):
            return shared.compress(chosen, _prepared(method, method_options, model, chosen, sensitivities, warm))

        if name in BUDGET_KINDS:
            results[index] = pricing.realize(Budget(name, float(value)), attempt, every, skipped, coupling, layer)
            continue
        used = {**options, name: value}
        shrunk, decisions = attempt(used)
        results[index] = _compression(model, shrunk, chosen, decisions, every, skipped, method, used, chaining,
                                      coupling, layer, example)
    return results


def _checked_budgets(method: str, budgets, options: dict) -> list[tuple[str, object]]:
    """``budgets`` as ``(option, value)`` pairs, each checked by building its method."""
    example = "e.g. [{'lam': 0.001}, {'lam': 0.01}]"
    if isinstance(budgets, (str, bytes, Mapping)) or not isinstance(budgets, Sequence):
        raise InvalidInputError(f"budgets must be a list of budgets, {example}; got {type(budgets).__name__}")
    beside = sorted(key for key in BUDGETS if options.get(key) is not None)
    if beside:
        raise InvalidInputError(
            f"{', '.join(beside)} set{'s' if len(beside) == 1 else ''} the budget: give one value per "
            f"budget in budgets, {example}, not beside them"
        )
    checked = []
    for position, budget in enumerate(budgets):
        if not isinstance(budget, Mapping) or len(budget) != 1 or next(iter(budget)) not in BUDGETS:
            shown = dict(budget) if isinstance(budget, Mapping) else budget
            raise InvalidInputError(
                f"budgets[{position}] is {shown!r}; a budget is a mapping of one of {', '.join(BUDGETS)} to its "
                f"value, {example}; the method's other options go once, beside budgets"
            )
        ((name, value),) = budget.items()
        try:
            if name in BUDGET_KINDS:
                take_budget({name: value})
                _strategy(method, {**options, "keep": 1.0})
            else:
                _strategy(method, {**options, name: value})
        except InvalidInputError as exc:
            raise InvalidInputError(f"budgets[{position}] = {{{name!r}: {value!r}}}: {exc}") from exc
        checked.append((name, value))
    return checked


def _find(model: nn.Module, coupling: str, example, layers, layer) -> tuple[list, list, list]:
    """``(every cut, skipped layers, the cuts to compress)`` for ``layers`` or ``layer``."""
    if layer is not None:
        if layers is not None:
            raise InvalidInputError("give layers (cuts by name) or layer (one Linear layer's inputs), not both")
        every, skipped = find_cuts(model, coupling, example)
        return every, skipped, [input_cut(model, layer, coupling, example)]
    every, skipped = require_cuts(model, coupling, example)
    return every, skipped, select_cuts(every, layers, skipped)


def _budget_cuts(cuts: list, keep, layers, layer) -> list:
    """The cuts a ``keep={kind: fraction}`` budget compresses (all of ``cuts`` otherwise,
    a :class:`~netshrink.methods.base.Widths` included: the cuts it does not name keep every unit)."""
    if layer is None and layers is None and isinstance(keep, Mapping) and not isinstance(keep, Widths):
        return _of_kinds(cuts, keep)
    return cuts


def _compression(model, shrunk, cuts, decisions, every, skipped, method, options, chaining, coupling, layer,
                 example, runs: bool = True, factorised=(), quantize: str | None = None) -> Compression:
    """The :class:`Compression` of ``shrunk``, made from ``model`` by ``decisions`` (and the
    low-rank ``factorised`` layers of a budget's rank stage, reported with kind ``"rank"``),
    its layers quantized by ``quantize`` (in place), checked to run (unless ``runs`` is
    False: an onloaded model's blocks are on the meta device)."""
    quantized = [] if quantize is None else quantize_layers(shrunk, quantize, keep=output_layers(shrunk, example))
    if runs:
        _check_runs(shrunk, example)
    reports = [
        LayerReport(
            name=cut.name,
            kept=len(decision.kept),
            total=cut.width,
            error=float(decision.error),
            producers=list(cut.producers),
            consumers=list(cut.consumers),
            sampled=cut.sampled,
            kept_indices=[int(i) for i in decision.kept],
            details=dict(decision.details),
            kind=cut.kind,
        )
        for cut, decision in decisions
    ]
    for frame, decision in factorised:
        path = _original_path(model, frame.consumers[0])
        factors = shrunk.get_submodule(frame.consumers[0])
        reports.append(LayerReport(
            name=path, kept=factors.first.weight.shape[0],
            total=ranks.full_rank(ranks.layer_module(model, path)), error=float(decision.error),
            producers=[], consumers=[path], sampled=False, kept_indices=[], details=dict(decision.details),
            kind="rank"))
    touched = dict.fromkeys([*(path for cut in cuts for path in (*cut.producers, *cut.companions, *cut.consumers)),
                             *(_original_path(model, frame.consumers[0]) for frame, _ in factorised),
                             *(_original_path(model, path) for path in quantized)])
    attention = dict.fromkeys(cut.heads.module for cut in cuts if cut.heads is not None)
    return Compression(
        model=shrunk,
        layers=reports,
        params_before=count_parameters(model),
        params_after=count_parameters(shrunk),
        method=method if isinstance(method, str) else method.name,
        options={**{k: v for k, v in options.items() if v is not None},
                 "chaining": chaining, "coupling": coupling, **({"layer": layer} if layer is not None else {}),
                 **({"quantize": quantize} if quantize is not None else {})},
        original_shapes={path: spec(model.get_submodule(path)) for path in touched},
        skipped=list(skipped),
        attributes={path: _changed_attributes(model.get_submodule(path), shrunk.get_submodule(path))
                    for path in attention},
        config=state_widths(shrunk, every, {cut.name: len(decision.kept) for cut, decision in decisions}),
        bytes_before=stored_bytes(model),
        bytes_after=stored_bytes(shrunk),
    )


def _original_path(model: nn.Module, path: str) -> str:
    """``path``, or its nearest ancestor that ``model`` has (a layer inside a sampler)."""
    while path not in dict(model.named_modules()):
        path = path.rpartition(".")[0]
    return path


def _check_onload(model: nn.Module, chaining: str, stages: _Stages) -> None:
    if stages.quantize is not None:
        raise InvalidInputError("quantize= rewrites the compressed model's layers once they are all loaded; an "
                                "onloaded compression writes its blocks as it goes: quantize the saved model after")
    if chaining != "top_down":
        raise InvalidInputError(f"onloading compresses block by block, which top-down chaining does; "
                                f"chaining={chaining!r} needs every block at once")
    if not has_meta_parameters(model):
        raise InvalidInputError("onload expects a model built with its parameters on the meta device "
                                "(netshrink.onload.parameters_on_meta()); this one holds its weights already: "
                                "compress it without onload")


def _of_kinds(cuts, keep: Mapping) -> list:
    """The cuts whose kind has a budget in ``keep={kind: fraction}``."""
    chosen = [cut for cut in cuts if cut.kind in keep]
    if not chosen:
        kinds = sorted({cut.kind for cut in cuts})
        raise InvalidInputError(
            f"keep names the cut kinds {sorted(keep)} but this model's cuts are of kinds {kinds}"
        )
    return chosen


def _check_runs(shrunk: nn.Module, example) -> None:
    """Run the compressed model once on the example: a model that no longer runs is an
    error here, not in the user's hands."""
    flags = [(module, module.training) for module in shrunk.modules()]
    shrunk.eval()
    try:
        with torch.inference_mode():
            batches.call(shrunk, batches.to_device(batches.head(example, 2), model_device(shrunk)))
    except Exception as exc:  # whatever the model's own code raises
        raise UnsupportedCutError(
            f"the compressed {type(shrunk).__name__} does not run on the first calibration batch: "
            f"{type(exc).__name__}: {exc}. Its code keeps a width the rewrite did not change; compress "
            "fewer cuts (layers=[...]) and report the model"
        ) from exc
    finally:
        for module, flag in flags:
            module.training = flag


def _changed_attributes(before: nn.Module, after: nn.Module) -> dict[str, int]:
    """Integer attributes of a module that the rewrite changed (head counts)."""
    old = vars(before)
    return {name: value for name, value in vars(after).items()
            if isinstance(value, int) and not isinstance(value, bool) and old.get(name) != value}


#: ``config`` fields that hold a transformer's FFN width, by the names models use.
FFN_WIDTHS = ("intermediate_size", "n_inner", "ffn_dim", "encoder_ffn_dim")


def state_widths(shrunk: nn.Module, every: list, kept: dict[str, int]) -> dict[str, int]:
    """Set ``shrunk.config``'s widths where every layer keeps the same, and return the changes.

    ``every`` is every cut of the original model and ``kept`` the units kept at the
    compressed ones. An FFN width (:data:`FFN_WIDTHS`) is stated when one neuron cut per
    layer has that width and they all keep the same count; head counts
    (``num_attention_heads``, ``num_key_value_heads``) when one head cut per layer keeps
    the same heads and the config gives ``head_dim`` itself (otherwise ``from_config``
    would derive a different head width from the hidden size).
    """
    config = getattr(shrunk, "config", None)
    layers = getattr(config, "num_hidden_layers", None)
    if config is None or not isinstance(layers, int):
        return {}
    changes = {}
    for name in FFN_WIDTHS:
        width = getattr(config, name, "absent")
        if width is None and name == "n_inner" and isinstance(getattr(config, "n_embd", None), int):
            width = 4 * config.n_embd  # GPT-2: None means 4 × the hidden size
        if not isinstance(width, int) or isinstance(width, bool):
            continue
        matching = [c for c in every if c.kind == "neurons" and not c.sampled and c.width == width]
        counts = {kept.get(c.name, c.width) for c in matching}
        if len(matching) == layers and len(counts) == 1 and counts != {width}:
            changes[name] = counts.pop()
    attention = [c for c in every if c.heads is not None]
    head_dim = getattr(config, "head_dim", None)
    if len(attention) == layers and isinstance(head_dim, int) and all(c.heads.head_dim == head_dim for c in attention):
        units = {kept.get(c.name, c.width) for c in attention}
        query = {c.heads.query_heads(kept.get(c.name, c.width)) for c in attention}
        if len(units) == 1 and len(query) == 1:
            query_heads, kv_heads = query.pop(), units.pop()
            if query_heads != getattr(config, "num_attention_heads", None):
                changes["num_attention_heads"] = query_heads
                if isinstance(getattr(config, "num_key_value_heads", None), int):
                    changes["num_key_value_heads"] = kv_heads
    for name, value in changes.items():
        setattr(config, name, value)
    return changes


def _strategy(method, options: dict) -> Method:
    """The method named ``method`` built with ``options``, or ``method`` itself when it is a
    :class:`~netshrink.methods.Method` object (which takes no options here)."""
    if isinstance(method, str):
        return make_method(method, **options)
    if not all(hasattr(method, verb) for verb in ("statistic", "decide", "prepare")):
        raise InvalidInputError(
            f"method must be a method name ({', '.join(sorted(METHODS))}) or a netshrink.methods.Method, "
            f"got {type(method).__name__}"
        )
    given = sorted(key for key, value in options.items() if value is not None)
    if given:
        raise InvalidInputError(f"a Method object carries its own options; got {given} beside it")
    return method


def _prepared(method, options: dict, model: nn.Module, cuts, sensitivities=None, warm_starts=None) -> Method:
    """:func:`_strategy`'s method prepared for ``cuts`` of ``model``: starting its solves
    from ``warm_starts`` where it can, and weighed by a budget's output ``sensitivities``
    (``{consumer path: G}``) when they are given and it has :meth:`Method.weigh`."""
    strategy = _strategy(method, options)
    if warm_starts is not None and hasattr(strategy, "warm_starts"):
        strategy.warm_starts = warm_starts
    strategy.prepare(model, cuts)
    if sensitivities is not None and hasattr(strategy, "weigh"):
        strategy.weigh(sensitivities)
    return strategy


def load(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a saved compression, on a freshly built original ``model``.

    Without ``model``, the architecture is rebuilt from the source recipe the manifest
    carries (written by ``netshrink compress`` and by ``Compression.save(source=...)``).
    Returns a new module with the saved shapes and weights; ``model`` is not modified.
    """
    folder = Path(path)
    manifest_path, weights_path = folder / MANIFEST_FILE, folder / WEIGHTS_FILE
    if not manifest_path.is_file() or not weights_path.is_file():
        raise NetshrinkError(
            f"{folder} is not a saved compression: expected {MANIFEST_FILE} and "
            f"{WEIGHTS_FILE} in it (written by Compression.save or `netshrink compress --out`)"
        )
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") not in READABLE_FORMATS:
        raise NetshrinkError(
            f"{manifest_path} has format {manifest.get('format')!r}; this netshrink reads "
            f"{', '.join(repr(f) for f in READABLE_FORMATS)}"
        )
    if model is None:
        if "source" not in manifest:
            raise NetshrinkError(
                f"{manifest_path} does not say how to rebuild the original architecture (it was saved "
                "without source=); pass a freshly built original: load(path, model)"
            )
        from .sources import build_architecture

        model = build_architecture(manifest["source"])
    rebuilt = copy.deepcopy(model)
    for module_path, entry in manifest["modules"].items():
        try:
            old = rebuilt.get_submodule(module_path)
        except AttributeError:
            raise NetshrinkError(
                f"the model passed to load() has no module {module_path!r}; pass a freshly "
                f"built instance of the architecture that was compressed"
            ) from None
        try:
            found = spec(old)
        except NetshrinkError:
            found = {"type": type(old).__name__}
        if found != entry["original"]:
            raise NetshrinkError(
                f"module {module_path!r} of the model passed to load() is {found}, but the "
                f"compressed model was made from {entry['original']}; pass a freshly built "
                "instance of the architecture that was compressed"
            )
        reference = next(old.parameters(), None)
        set_submodule(rebuilt, module_path, build(
            entry["new"], device=reference.device if reference is not None else None,
            dtype=reference.dtype if reference is not None else None, like=old))
    for module_path, changes in manifest.get("attributes", {}).items():
        try:
            module = rebuilt.get_submodule(module_path)
        except AttributeError:
            raise NetshrinkError(
                f"the model passed to load() has no module {module_path!r}; pass a freshly built "
                "instance of the architecture that was compressed"
            ) from None
        for name, value in changes.items():
            setattr(module, name, value)
    if manifest.get("config"):
        config = getattr(rebuilt, "config", None)
        if config is None:
            raise NetshrinkError(
                f"the compressed model's config was changed ({manifest['config']}) but the model passed "
                "to load() has no config; pass the architecture that was compressed"
            )
        for name, value in manifest["config"].items():
            setattr(config, name, value)
    state = load_file(str(weights_path), device=str(model_device(rebuilt)))
    for alias, source in manifest.get("tied", {}).items():
        state[alias] = state[source]
    try:
        rebuilt.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise NetshrinkError(
            f"the weights in {weights_path} do not fit the model passed to load(): {exc}"
        ) from exc
    return rebuilt


def _untied_state(named: dict) -> tuple[dict, dict]:
    """A state dict with each shared tensor once (an LM head tied to its embedding), and
    ``{alias: name}`` for the entries left out."""
    state, tied, seen = {}, {}, {}
    for name, tensor in named.items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype) if tensor.numel() else None
        if key is not None and key in seen:
            tied[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        state[name] = tensor.detach().contiguous().cpu()
    return state, tied


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
