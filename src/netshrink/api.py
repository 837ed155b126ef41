"""The public entry points: ``compress``, ``Compression`` and ``load``."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from .errors import InvalidInputError, NetshrinkError
from .evaluate import model_device
from .graph import input_cut, require_cuts, select_cuts
from .methods import make_method
from .modules import build, spec
from .observe import Calibration
from .rewrite import set_submodule
from .schedule import run_schedule

MANIFEST_FORMAT = "netshrink-compression/2"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class LayerReport:
    """One cut of a compression: ``name`` kept ``kept`` of its ``total`` units.

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


@dataclass
class Compression:
    """The result of :func:`compress`.

    Attributes:
        model: a new, physically smaller ``nn.Module`` (the input model is untouched).
        layers: one :class:`LayerReport` per cut, in execution order.
        params_before, params_after: parameter counts of the original and new model.
        method, options: how it was made (recorded in saved manifests).
    """

    model: nn.Module
    layers: list[LayerReport]
    params_before: int
    params_after: int
    method: str
    options: dict
    original_shapes: dict = field(default_factory=dict, repr=False)

    @property
    def ratio(self) -> float:
        """Fraction of parameters kept, ``params_after / params_before``."""
        return self.params_after / self.params_before

    def table(self) -> str:
        """A plain-text per-layer table."""
        rows = [f"{'layer':<28} {'kept':>6} {'total':>6} {'kept %':>7} {'error':>10}"]
        for layer in self.layers:
            name = layer.name + (" (joint)" if len(layer.producers) + len(layer.consumers) > 2 else "") \
                + (" (sampler)" if layer.sampled else "")
            rows.append(
                f"{name:<28} {layer.kept:>6} {layer.total:>6} "
                f"{100 * layer.kept / layer.total:>6.1f}% {layer.error:>10.4g}"
            )
        rows.append(
            f"parameters: {self.params_before:,} -> {self.params_after:,} "
            f"({100 * self.ratio:.1f}%)"
        )
        return "\n".join(rows)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the compressed model to the directory ``path``, atomically.

        The directory holds ``model.safetensors`` (the new state dict) and
        ``manifest.json`` (format, method, options, per-layer report and the new shape
        of every rewritten module). No pickle is used. Rebuild with :func:`load` from a
        freshly built instance of the original architecture. An existing ``path`` is
        refused unless ``overwrite=True``.
        """
        from .atomic import atomic_directory

        manifest = {
            "format": MANIFEST_FORMAT,
            "method": self.method,
            "options": self.options,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "layers": [asdict(layer) for layer in self.layers],
            "modules": {path: {"original": original, "new": spec(self.model.get_submodule(path))}
                        for path, original in self.original_shapes.items()},
        }
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.model.state_dict().items()}
        with atomic_directory(path, overwrite=overwrite) as tmp:
            save_file(state, os.path.join(tmp, WEIGHTS_FILE))
            with open(os.path.join(tmp, MANIFEST_FILE), "w") as handle:
                json.dump(manifest, handle, indent=2)
        return Path(path)


def compress(
    model: nn.Module,
    calibration,
    method: str = "interpolative",
    *,
    chaining: str = "top_down",
    coupling: str = "joint",
    layers: list[str] | None = None,
    layer: str | None = None,
    batch_size: int = 1000,
    progress: bool = False,
    **options,
) -> Compression:
    """Shrink ``model`` by removing neurons and channels, reconstructing each consumer layer.

    Args:
        model: a trained ``nn.Module`` traceable by ``torch.fx``; never modified.
        calibration: inputs ``(N, ...)`` as a tensor, or a re-iterable of batches
            (tensors or ``(inputs, labels)`` tuples), e.g. a DataLoader.
        method: how units are chosen and consumers rewritten, with its ``options``:

            - ``"interpolative"`` (column-pivoted QR, Damle): ``tol`` (the seed's ε:
              keep the pivots with ``|r_kk|·‖W_consumer‖₂ > ε``; 0 keeps everything) or
              ``keep`` (fraction of units per cut).
            - ``"group_lasso"`` (ℓ2,1 reconstruction, Robin): ``lam`` (fraction of each
              cut's λ_max in [0, 1]; 0 is lossless on the calibration data) or ``keep``;
              ``debias`` (least-squares refit, default True), ``solver`` (``"fista"`` or
              ``"altmin"``), ``gap_tol`` (the solver's relative duality gap, default 1e-4),
              ``weighting`` (``"parameters"``, the default: each cut's fraction is scaled
              by the parameters its units cost relative to the other cuts; ``"uniform"``:
              the same fraction everywhere; see :mod:`netshrink.methods.group_lasso`);
              or ``size``: the fraction of the model's parameters to keep, reached by a
              bisection on ``lam`` (one whole compression per step).
            - ``"multitask_lasso"`` (Shenouda et al., one Linear layer's inputs): ``lam``
              (the seed's absolute scale), ``solver`` (``"fista"``, or ``"prox_adam"``
              with ``mu`` and an optional ``max_seconds`` cap), ``warm_start``, ``seed``,
              ``gap_tol``; see :mod:`netshrink.methods.multitask_lasso`. Usually with
              ``layer=``.
            - baselines: ``"magnitude"`` (``keep``, ``refit=False``), ``"random"``
              (``keep``, ``refit=True``, ``seed``), ``"lowrank"`` (``keep``: fraction of
              each consumer's rank; it removes no unit).
        chaining: ``"top_down"``, ``"parallel"`` or ``"bottom_up"`` (Robin §2.7; see
            :mod:`netshrink.schedule`).
        coupling: how a tensor read or written by several layers (residual streams) is
            handled: ``"joint"`` prunes the coupled group together, ``"sampler"`` gives
            each reader a dynamic ``index_select`` sampler (Robin §2.6).
        layers: compress only these cuts, named by the layer that loses units (its
            module path, e.g. ``["hidden.0"]``); default: every cut.
        layer: instead of ``layers``, compress the inputs of one ``nn.Linear``:
            ``"first"``, ``"pen"`` (penultimate) or ``"last"`` among the model's Linear
            layers in execution order, or a module path. Its inputs are the neurons of
            the producing layer when that is a plain cut; otherwise (flattened conv
            features, the network's input) each input feature is a unit and the kept
            ones are served by a sampler (:func:`netshrink.graph.input_cut`).
        batch_size: batch size when ``calibration`` is a tensor.
        progress: show progress bars.

    Returns:
        A :class:`Compression` with the new model, per-layer report and sizes.
    """
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    size = options.pop("size", None)
    if size is None:
        make_method(method, **options)  # bad options fail before any work
    batches = Calibration(calibration, batch_size=batch_size)
    if layer is not None:
        if layers is not None:
            raise InvalidInputError("give layers (cuts by name) or layer (one Linear layer's inputs), not both")
        cuts = [input_cut(model, layer, coupling)]
    else:
        cuts, skipped = require_cuts(model, coupling)
        cuts = select_cuts(cuts, layers, skipped)

    def attempt(method_options):
        shrunk = copy.deepcopy(model)
        strategy = make_method(method, **method_options)
        strategy.prepare(model, cuts)
        return shrunk, run_schedule(shrunk, cuts, batches, strategy, chaining=chaining, progress=progress)

    if size is None:
        shrunk, decisions = attempt(options)
    else:
        shrunk, decisions, options = _fit_size(model, method, size, options, attempt)
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
        )
        for cut, decision in decisions
    ]
    touched = dict.fromkeys(path for cut in cuts for path in (*cut.producers, *cut.companions, *cut.consumers))
    return Compression(
        model=shrunk,
        layers=reports,
        params_before=count_parameters(model),
        params_after=count_parameters(shrunk),
        method=method,
        options={**{k: v for k, v in options.items() if v is not None},
                 "chaining": chaining, "coupling": coupling, **({"layer": layer} if layer is not None else {})},
        original_shapes={path: spec(model.get_submodule(path)) for path in touched},
    )


def _fit_size(model, method, size, options, attempt):
    """The largest group-lasso compression with at most ``size`` of the parameters.

    Bisection on the relative λ (the number of parameters falls as λ grows), 12 steps
    on a log scale in [1e-4, 1]; every step is one whole compression.
    """
    if method != "group_lasso":
        raise InvalidInputError(f"size= is a budget of method 'group_lasso', not of {method!r}")
    if isinstance(size, bool) or not isinstance(size, (int, float)) or not 0 < size <= 1:
        raise InvalidInputError(f"size must be the fraction of the parameters to keep, in (0, 1]; got {size!r}")
    if options.get("lam") is not None or options.get("keep") is not None:
        raise InvalidInputError("give one budget: size, lam or keep")
    total = count_parameters(model)
    low, high = 1e-4, 1.0
    best = attempt({**options, "lam": high})
    if count_parameters(best[0]) > size * total:
        raise InvalidInputError(
            f"no λ reaches size={size:g}: even λ = λ_max keeps {count_parameters(best[0]) / total:.1%} "
            "of the parameters (layers outside the cuts and the last layer are never shrunk)"
        )
    best_lam = high
    for _ in range(12):
        middle = (low * high) ** 0.5
        shrunk, decisions = attempt({**options, "lam": middle})
        if count_parameters(shrunk) <= size * total:
            best, best_lam, high = (shrunk, decisions), middle, middle
        else:
            low = middle
    return best[0], best[1], {**options, "lam": best_lam, "size": size}


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Rebuild a saved compression on a freshly built original ``model``.

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
    if manifest.get("format") != MANIFEST_FORMAT:
        raise NetshrinkError(
            f"{manifest_path} has format {manifest.get('format')!r}; this netshrink reads "
            f"{MANIFEST_FORMAT!r}"
        )
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
            dtype=reference.dtype if reference is not None else None))
    state = load_file(str(weights_path), device=str(model_device(rebuilt)))
    try:
        rebuilt.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise NetshrinkError(
            f"the weights in {weights_path} do not fit the model passed to load(): {exc}"
        ) from exc
    return rebuilt


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
