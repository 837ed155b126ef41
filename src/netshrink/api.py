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
from .graph import require_cuts, select_cuts
from .methods import make_method
from .evaluate import model_device
from .observe import Calibration
from .rewrite import set_submodule
from .schedule import run_schedule

MANIFEST_FORMAT = "netshrink-compression/1"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class LayerReport:
    """One cut of a compression: the layer ``name`` kept ``kept`` of ``total`` neurons."""

    name: str
    kept: int
    total: int
    error_bound: float
    consumer: str
    kept_indices: list[int] = field(repr=False)


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
        rows = [f"{'layer':<24} {'kept':>6} {'total':>6} {'kept %':>7} {'error bound':>12}"]
        for layer in self.layers:
            rows.append(
                f"{layer.name:<24} {layer.kept:>6} {layer.total:>6} "
                f"{100 * layer.kept / layer.total:>6.1f}% {layer.error_bound:>12.4g}"
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
            "modules": _module_shapes(self.model, self.original_shapes),
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
    tol: float | None = None,
    keep: float | None = None,
    chaining: str = "top_down",
    layers: list[str] | None = None,
    batch_size: int = 1000,
    progress: bool = False,
) -> Compression:
    """Shrink ``model`` by removing neurons, reconstructing each consumer layer.

    Args:
        model: a trained ``nn.Module`` traceable by ``torch.fx``; never modified.
        calibration: inputs ``(N, ...)`` as a tensor, or a re-iterable of batches
            (tensors or ``(inputs, labels)`` tuples), e.g. a DataLoader.
        method: ``"interpolative"`` (column-pivoted QR / interpolative decomposition).
        tol: the seed's ε: at each cut keep the first ``k`` pivots with
            ``|r_{k+1,k+1}|·‖W_consumer‖₂ ≤ ε`` (pivoted QR of the activations ``Z/√N``;
            the seed's rule in units of the top pivot, see ``methods.interpolative``).
            ``tol=0`` keeps every neuron (the model is unchanged); a tiny ``tol > 0``
            removes the neurons that are exactly redundant on the calibration data.
        keep: alternatively, the fraction of neurons kept at every cut, in (0, 1].
        chaining: ``"top_down"`` (each cut fitted on the already-compressed model) or
            ``"parallel"`` (all cuts fitted on the original model).
        layers: compress only these cuts, named by the layer that loses neurons
            (its module path, e.g. ``["hidden.0"]``); default: every cut.
        batch_size: batch size when ``calibration`` is a tensor.
        progress: show progress bars.

    Returns:
        A :class:`Compression` with the new model, per-layer report and sizes.
    """
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    strategy = make_method(method, tol=tol, keep=keep)
    batches = Calibration(calibration, batch_size=batch_size)
    cuts = select_cuts(require_cuts(model), layers)
    shrunk = copy.deepcopy(model)
    decisions = run_schedule(shrunk, cuts, batches, strategy, chaining=chaining, progress=progress)
    layers = [
        LayerReport(
            name=cut.name,
            kept=len(decision.kept),
            total=cut.width,
            error_bound=float(decision.error_bound),
            consumer=cut.consumer,
            kept_indices=[int(i) for i in decision.kept],
        )
        for cut, decision in decisions
    ]
    return Compression(
        model=shrunk,
        layers=layers,
        params_before=count_parameters(model),
        params_after=count_parameters(shrunk),
        method=method,
        options={"tol": tol, "keep": keep, "chaining": chaining},
        original_shapes=_linear_shapes(model, [p for l in layers for p in (l.name, l.consumer)]),
    )


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
    for module_path, spec in manifest["modules"].items():
        try:
            old = rebuilt.get_submodule(module_path)
        except AttributeError:
            raise NetshrinkError(
                f"the model passed to load() has no module {module_path!r}; pass a freshly "
                f"built instance of the architecture that was compressed"
            ) from None
        set_submodule(rebuilt, module_path, _build_module(module_path, spec, old))
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


def _linear_shapes(model: nn.Module, paths) -> dict:
    """``{path: (in_features, out_features)}`` of the Linear modules at ``paths``."""
    shapes = {}
    for path in paths:
        module = model.get_submodule(path)
        shapes[path] = (module.in_features, module.out_features)
    return shapes


def _module_shapes(model: nn.Module, original_shapes: dict) -> dict:
    """Manifest entries: the new shape of every rewritten module and its original shape."""
    entries = {}
    for path, (original_in, original_out) in original_shapes.items():
        module = model.get_submodule(path)
        entries[path] = {
            "type": "Linear",
            "in_features": module.in_features,
            "out_features": module.out_features,
            "bias": module.bias is not None,
            "original_in_features": original_in,
            "original_out_features": original_out,
        }
    return entries


def _build_module(path: str, spec: dict, like: nn.Module) -> nn.Module:
    if spec.get("type") != "Linear":
        raise NetshrinkError(f"unknown module type {spec.get('type')!r} in the manifest")
    expected = (spec["original_in_features"], spec["original_out_features"])
    found = (getattr(like, "in_features", None), getattr(like, "out_features", None))
    if type(like) is not nn.Linear or found != expected:
        raise NetshrinkError(
            f"module {path!r} of the model passed to load() is {type(like).__name__} with "
            f"(in, out) = {found}, but the compressed model was made from a Linear with "
            f"{expected}; pass a freshly built instance of the architecture that was compressed"
        )
    reference = next(like.parameters(), None)
    return nn.Linear(
        spec["in_features"],
        spec["out_features"],
        bias=spec["bias"],
        device=reference.device if reference is not None else None,
        dtype=reference.dtype if reference is not None else None,
    )
