"""Seed 002's layer targets: one ``nn.Linear`` named by its place among the Linear layers."""

from __future__ import annotations

from torch import nn

from ..errors import InvalidInputError, UnsupportedCutError
from . import find_cuts
from .cuts import Cut
from .fx import trace


#: Names of a classifier's fully connected layers for :func:`resolve_linear`.
LINEAR_TARGETS = {"first": 0, "pen": -2, "last": -1}


def linear_layers(model: nn.Module) -> list[str]:
    """Module paths of ``model``'s ``nn.Linear`` layers, in execution order."""
    graph_module = trace(model)
    modules = dict(graph_module.named_modules())
    calls = [node.target for node in graph_module.graph.nodes
             if node.op == "call_module" and type(modules[node.target]) is nn.Linear]
    return list(dict.fromkeys(calls))


def resolve_linear(model: nn.Module, layer: str) -> str:
    """The module path of the ``nn.Linear`` named by ``layer``.

    ``layer`` is ``"first"``, ``"pen"`` (penultimate) or ``"last"`` among the model's
    Linear layers in execution order (a classifier's fully connected layers, seed 002's
    ``--layer``), or a module path such as ``"classifier.4"``.

    Raises:
        UnsupportedCutError: no such layer, a layer that is not an ``nn.Linear``, or a
            model with too few Linear layers for ``"pen"``.
    """
    if not isinstance(layer, str) or not layer:
        raise InvalidInputError(f"layer must be 'first', 'pen', 'last' or a module path, got {layer!r}")
    linears = linear_layers(model)
    if layer in LINEAR_TARGETS:
        position = LINEAR_TARGETS[layer]
        if len(linears) < (2 if layer == "pen" else 1):
            raise UnsupportedCutError(
                f"layer={layer!r} needs {2 if layer == 'pen' else 1} nn.Linear layers; "
                f"{type(model).__name__} has {len(linears)}: {linears}"
            )
        return linears[position]
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        raise UnsupportedCutError(
            f"{type(model).__name__} has no layer named {layer!r}; give 'first', 'pen', 'last' or the "
            f"module path of one of its nn.Linear layers: {', '.join(repr(p) for p in linears)}"
        ) from None
    if type(module) is not nn.Linear or layer not in linears:
        raise UnsupportedCutError(
            f"layer {layer!r} is a {type(module).__name__}, not an nn.Linear called in forward(); "
            f"the target of a layer compression must be one of {', '.join(repr(p) for p in linears)}"
        )
    return layer


def input_cut(model: nn.Module, layer: str, coupling: str = "joint", example=None) -> Cut:
    """The cut that removes inputs of one ``nn.Linear`` (see :func:`resolve_linear`).

    When the layer reads the neurons of one Linear producer and is their only reader (a
    plain cut), the producer loses the removed neurons. Otherwise its inputs are not a
    producer's neurons — flattened conv features (a channel owns ``h·w`` of them), the
    network's own input, a tensor several layers read — and every input feature is a
    unit of its own, served by a sampler (``index_select`` before the layer, Robin
    §2.6): the cut ``"<layer>:in"`` of width ``in_features``; only the layer shrinks.
    """
    path = resolve_linear(model, layer)
    width = model.get_submodule(path).in_features
    cuts, _ = find_cuts(model, coupling, example)
    for cut in cuts:
        if cut.consumers == (path,) and not cut.sampled and len(cut.producers) == 1 and cut.width == width:
            return cut
    return Cut((), (path,), (), (), width, sampled=True)


