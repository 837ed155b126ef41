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




def network_input_cut(model: nn.Module, example) -> Cut:
    """The sampled cut of the network's input features at its first layer (Robin §2.6):
    every input feature a unit, the kept ones served by an ``index_select`` before the
    layer. The first layer must be an ``nn.Linear`` that reads the input tensor itself
    (or a flattened view of it): an MLP on images, say.

    Raises:
        UnsupportedCutError: when the first layer to run is not such a Linear (a
            convolution, whose inputs are channels; a model called with keyword inputs).
    """
    import torch

    if not isinstance(example, torch.Tensor):
        raise UnsupportedCutError(
            f"sampling the network's input needs a tensor input; {type(model).__name__} is called with keyword "
            "inputs (token ids), which no sampler selects"
        )
    found: list[tuple[str, nn.Module, torch.Tensor]] = []
    handles = [module.register_forward_pre_hook(
        lambda module, inputs, path=path: found.append((path, module, inputs[0]))
        if not found and inputs and isinstance(inputs[0], torch.Tensor) else None)
        for path, module in model.named_modules() if type(module) in (nn.Linear, nn.Conv2d)]
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            model(example[:2])
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags:
            module.training = flag
    if not found:
        raise UnsupportedCutError(f"{type(model).__name__} runs no nn.Linear or nn.Conv2d: there is no first layer")
    path, module, inputs = found[0]
    if type(module) is not nn.Linear:
        raise UnsupportedCutError(
            f"the first layer of {type(model).__name__}, {path!r}, is a {type(module).__name__}: its inputs are "
            "image channels, which a sampler cannot select feature by feature; sample_inputs is for a first "
            "nn.Linear reading the input (an MLP)"
        )
    if inputs.untyped_storage().data_ptr() != example[:2].untyped_storage().data_ptr() \
            or inputs.numel() != example[:2].numel():
        raise UnsupportedCutError(
            f"the first nn.Linear of {type(model).__name__}, {path!r}, does not read the network's input as it is "
            "(the input is transformed first), so its features are not the input's; sample_inputs needs a first "
            "layer that reads the input tensor or a flattened view of it"
        )
    return Cut((), (path,), (), (), module.in_features, sampled=True)
