"""Read a model's graph: where whole neurons, channels or attention heads can be removed.

:func:`find_cuts` returns the model's cuts (:class:`Cut`, each of one kind: ``"neurons"``,
``"channels"`` or ``"heads"``) and the layers it skipped, with the reason
(:class:`Skipped`). Two readers share that output:

- :mod:`.export` (used whenever an example batch is given, as ``compress`` does):
  ``torch.export`` captures the whole forward pass as ATen operations with shapes,
  whatever Python the model runs (Hugging Face ``transformers``, custom attention);
  every tensor's elements are labelled with the producer rows they come from, so
  attention heads, SwiGLU pairs, squeeze-and-excitation gates and residual streams
  are found from the operations themselves.
- :mod:`.fx` (without an example, or when export fails): ``torch.fx`` module calls,
  for models that trace symbolically.

The model is never modified.
"""

from __future__ import annotations

from torch import nn

from ..errors import InvalidInputError, UnsupportedCutError, UntraceableModelError
from . import export, fx
from .cuts import COUPLINGS, KINDS, ONE_ROW, Cut, Heads, Segments, Skipped


def find_cuts(model: nn.Module, coupling: str = "joint", example=None) -> tuple[list[Cut], list[Skipped]]:
    """Find every cut of ``model``.

    Args:
        coupling: ``"joint"`` prunes a space written or read by several layers as one
            coupled group; ``"sampler"`` gives each reader of such a space (and of a
            space that cannot be pruned statically) its own dynamic sampler. Head cuts
            are always pruned whole.
        example: one calibration batch (a tensor, or a mapping of keyword inputs). With
            it the graph is read by ``torch.export`` (:mod:`.export`), falling back to
            ``torch.fx``; without it by ``torch.fx`` only.

    Returns ``(cuts, skipped)``: cuts ordered by their first consumer in execution
    order, and the layers whose outputs cannot be pruned, with the reason.

    Raises:
        UntraceableModelError: neither reader can read the model (the message gives
            both attempts).
    """
    if coupling not in COUPLINGS:
        raise InvalidInputError(f"unknown coupling {coupling!r}; use one of {', '.join(COUPLINGS)}")
    if example is None:
        try:
            return fx.read(model, coupling)
        except UntraceableModelError as exc:
            raise UntraceableModelError(
                f"{exc}. netshrink reads the model's graph to find which layers feed which. Pass "
                "example= (one calibration batch) so the graph can be captured with torch.export, "
                "which runs any Python; compress() does so with its first batch."
            ) from exc
    try:
        return export.read(model, example, coupling)
    except export.ExportFailed as export_error:
        try:
            return fx.read(model, coupling)
        except UntraceableModelError as fx_error:
            raise UntraceableModelError(
                f"netshrink could not read the graph of {type(model).__name__}: torch.export on the "
                f"example batch failed ({export_error}), and {fx_error}. Make forward() free of "
                "data-dependent Python control flow (if/for on tensor values), or compress the "
                "sub-module that is (e.g. compress(model.features, ...))."
            ) from export_error


def require_cuts(model: nn.Module, coupling: str = "joint", example=None) -> tuple[list[Cut], list[Skipped]]:
    """Like :func:`find_cuts` but raise when the model has no cut at all."""
    cuts, skipped = find_cuts(model, coupling, example)
    if not cuts:
        details = "; ".join(f"{s.module!r}: {s.reason}" for s in skipped) or "it has no nn.Linear or nn.Conv2d layer"
        raise UnsupportedCutError(
            f"{type(model).__name__} has no place where units can be removed ({details}). "
            "A cut is an nn.Linear or nn.Conv2d whose output reaches other nn.Linear/nn.Conv2d "
            "layers through channelwise operations only (activations, BatchNorm, pooling, "
            "flatten, residual additions), or the heads of an attention."
        )
    return cuts, skipped


def select_cuts(cuts: list[Cut], names: list[str] | None, skipped: list[Skipped] = ()) -> list[Cut]:
    """The cuts named in ``names`` (see :attr:`Cut.name`), in model order; all if None."""
    if names is None:
        return cuts
    if isinstance(names, str):
        names = [names]
    if not names:
        raise UnsupportedCutError("layers is empty: name at least one cut, or pass None for all")
    known = {cut.name for cut in cuts}
    reasons = {s.module: s.reason for s in skipped}
    for name in names:
        if name in known:
            continue
        if name in reasons:
            raise UnsupportedCutError(f"layer {name!r} cannot lose units: {reasons[name]}")
        raise UnsupportedCutError(
            f"no cut is named {name!r}; the cuts of this model are "
            f"{', '.join(repr(c.name) for c in cuts)} (a cut is named after the layer that loses units)"
        )
    wanted = set(names)
    return [cut for cut in cuts if cut.name in wanted]



from .targets import LINEAR_TARGETS, input_cut, linear_layers, network_input_cut, resolve_linear  # noqa: E402

__all__ = [
    "COUPLINGS", "KINDS", "ONE_ROW", "Cut", "Heads", "Segments", "Skipped", "find_cuts", "require_cuts",
    "select_cuts", "input_cut", "network_input_cut", "linear_layers", "resolve_linear", "LINEAR_TARGETS",
]
