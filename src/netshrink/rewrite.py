"""Rewrite: module surgery that applies a decision to a model.

A decision at a cut keeps the units ``kept`` and gives each consumer new input
weights. Rewriting builds new, physically smaller modules (never masks) and puts them
into the model in place of the old ones: producers lose the rows of the removed units
(and bias entries; :meth:`~netshrink.graph.Cut.producer_rows`), BatchNorm and depthwise
companions lose channels, consumers get the new weights. A head cut also updates the
head counts its attention module keeps (:func:`update_head_counts`). A sampled cut
wraps its consumer in :class:`~netshrink.modules.Sampled` instead (Robin §2.6).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .layers import in_units, is_linear, keep_channels, keep_outputs, out_units, with_input_weights
from .linalg.blocks import columns_of
from .modules import LowRank, Sampled


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the sub-module at dotted ``path`` (e.g. ``"hidden.3"``) by ``module``.

    The new module takes the train/eval mode of the one it replaces.
    """
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    module.train(getattr(parent, name).training)
    setattr(parent, name, module)


def layer_at(model: nn.Module, path: str) -> nn.Module:
    """The Linear/Conv2d at ``path``, looking inside a sampler that wraps it."""
    module = model.get_submodule(path)
    return module.layer if isinstance(module, Sampled) else module


def apply_decision(model: nn.Module, cut, decision) -> None:
    """Apply ``decision`` at ``cut`` in place on ``model`` (a copy owned by the caller)."""
    rewrite_inputs(model, cut, decision)
    remove_units(model, cut, decision)


def rewrite_inputs(model: nn.Module, cut, decision) -> None:
    """Give every consumer its new input weights (or factors, or a sampler) and add the
    decision's intercepts to their biases.

    Only input columns and consumer biases change here, so this commutes with :func:`remove_units` of
    other cuts: decisions made on one model can be applied in any order.
    """
    if decision.factors is not None:
        for path, (left, right) in zip(cut.consumers, decision.factors):
            _replace_layer(model, path, lambda layer, l=left, r=right: factorize(layer, l, r))
    else:
        kept = decision.kept
        for path, weight in zip(cut.consumers, decision.consumer_weights):
            if cut.sampled:
                set_submodule(model, path, _sampled(layer_at(model, path), kept, cut.width, weight))
            else:
                _replace_layer(model, path, lambda layer, w=weight: with_input_weights(layer, w, len(kept)))
    for path, shift in zip(cut.consumers, decision.bias_shifts):
        if shift is not None:
            _shift_bias(model.get_submodule(path), shift)


def remove_units(model: nn.Module, cut, decision) -> None:
    """Drop the removed units' rows from the producers and channels from the companions."""
    kept = decision.kept
    if cut.sampled or decision.factors is not None or len(kept) == cut.width:
        return
    for index, path in enumerate(cut.producers):
        rows = cut.producer_rows(index, kept)
        _replace_layer(model, path, lambda layer, r=rows: keep_outputs(layer, r))
    for path in cut.companions:
        set_submodule(model, path, keep_channels(model.get_submodule(path), kept))
    if cut.heads is not None:
        update_head_counts(model.get_submodule(cut.heads.module), cut, len(kept))


#: Attention-module attributes that hold its number of query heads, of key/value heads,
#: and the width of all heads together (``heads · d_head``), by the names models use.
QUERY_HEAD_COUNTS = ("num_heads", "num_attention_heads", "n_head", "n_heads")
KEY_VALUE_HEAD_COUNTS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
HEAD_WIDTHS = ("all_head_size", "inner_dim", "split_size")


def update_head_counts(attention: nn.Module, cut, kept: int) -> dict[str, int]:
    """Set the head counts an attention module keeps to what ``kept`` units leave.

    An attribute of :data:`QUERY_HEAD_COUNTS` equal to the cut's query heads becomes the
    kept query heads; one of :data:`KEY_VALUE_HEAD_COUNTS` equal to the key/value heads
    the kept ones; one of :data:`HEAD_WIDTHS` equal to ``heads · d_head`` the kept width
    (GPT-2 splits its fused q/k/v by ``split_size``). Returns the changes.
    """
    heads = cut.heads
    query, kept_query = heads.query_heads(cut.width), heads.query_heads(kept)
    rules = [(QUERY_HEAD_COUNTS, query, kept_query), (KEY_VALUE_HEAD_COUNTS, cut.width, kept),
             (HEAD_WIDTHS, query * heads.head_dim, kept_query * heads.head_dim)]
    changes = {}
    for names, old, new in rules:
        for name in names:
            value = getattr(attention, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value == old:
                setattr(attention, name, new)
                changes[name] = new
    return changes


def factorize(layer: nn.Module, left: torch.Tensor, right: torch.Tensor) -> LowRank:
    """``layer ≈ LowRank(first, second)`` with ``W ≈ left @ right``.

    ``left: (out, r)``, ``right: (r, d)`` with ``d`` the layer's input columns
    (``C·kh·kw`` for a convolution). The bias moves to ``second``.
    """
    rank = right.shape[0]
    device, dtype = layer.weight.device, layer.weight.dtype
    if is_linear(layer):  # nn.Linear or a transposed Conv1D: two nn.Linear either way
        first = nn.Linear(in_units(layer), rank, bias=False, device=device, dtype=dtype)
        second = nn.Linear(rank, out_units(layer), bias=layer.bias is not None, device=device, dtype=dtype)
        first_weight, second_weight = right, left
    else:
        first = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, stride=layer.stride,
                          padding=layer.padding, dilation=layer.dilation, bias=False,
                          device=device, dtype=dtype)
        second = nn.Conv2d(rank, layer.out_channels, 1, bias=layer.bias is not None,
                           device=device, dtype=dtype)
        first_weight = right.reshape(rank, layer.in_channels, *layer.kernel_size)
        second_weight = left.reshape(layer.out_channels, rank, 1, 1)
    with torch.no_grad():
        first.weight.copy_(first_weight.to(dtype))
        second.weight.copy_(second_weight.to(dtype))
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return LowRank(first, second)


def _sampled(layer: nn.Module, kept: torch.Tensor, width: int, weight: torch.Tensor) -> Sampled:
    new = with_input_weights(layer, weight, len(kept))
    if type(layer) is nn.Conv2d:
        return Sampled(new, kept, dim=1)
    s = in_units(layer) // width
    return Sampled(new, columns_of(kept, s), dim=-1)


@torch.no_grad()
def _shift_bias(module: nn.Module, shift: torch.Tensor) -> None:
    """Add ``shift: (out,)`` to the bias of a freshly rewritten consumer (its intercept)."""
    if isinstance(module, Sampled):
        module = module.layer
    if isinstance(module, LowRank):
        module = module.second
    module.bias.add_(shift.to(dtype=module.bias.dtype, device=module.bias.device))


def _replace_layer(model: nn.Module, path: str, make: Callable[[nn.Module], nn.Module]) -> None:
    module = model.get_submodule(path)
    if isinstance(module, Sampled):
        module.layer = make(module.layer).train(module.training)
    else:
        set_submodule(model, path, make(module))
