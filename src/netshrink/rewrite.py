"""Rewrite: module surgery that applies a decision to a model.

A decision at a cut keeps the producer's neurons ``kept`` and gives the consumer new
input weights. Rewriting builds new, physically smaller modules (never masks) and
puts them into the model in place of the old ones.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import UnsupportedCutError


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the sub-module at dotted ``path`` (e.g. ``"hidden.3"``) by ``module``."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def keep_outputs(linear: nn.Linear, kept: torch.Tensor) -> nn.Linear:
    """A new Linear computing only the outputs ``kept`` of ``linear``.

    ``linear.weight: (out, in)`` → ``(k, in)``; the bias is sliced the same way.
    """
    _require_linear(linear)
    kept = kept.to(linear.weight.device)
    new = _new_linear(linear, linear.in_features, len(kept))
    with torch.no_grad():
        new.weight.copy_(linear.weight.index_select(0, kept))
        if linear.bias is not None:
            new.bias.copy_(linear.bias.index_select(0, kept))
    return new


def replace_inputs(linear: nn.Linear, weight: torch.Tensor) -> nn.Linear:
    """A new Linear with the same outputs and bias but input weights ``weight: (out, k)``."""
    _require_linear(linear)
    if weight.ndim != 2 or weight.shape[0] != linear.out_features:
        raise UnsupportedCutError(
            f"new input weights of shape {tuple(weight.shape)} do not fit a Linear with "
            f"{linear.out_features} outputs"
        )
    new = _new_linear(linear, weight.shape[1], linear.out_features)
    with torch.no_grad():
        new.weight.copy_(weight.to(dtype=new.weight.dtype, device=new.weight.device))
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    return new


def _new_linear(like: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(
        in_features,
        out_features,
        bias=like.bias is not None,
        device=like.weight.device,
        dtype=like.weight.dtype,
    )


def _require_linear(module: nn.Module) -> None:
    if type(module) is not nn.Linear:
        raise UnsupportedCutError(
            f"expected an nn.Linear, got {type(module).__name__}; only plain nn.Linear "
            "layers can be rewritten at a neuron cut"
        )


def apply_decision(model: nn.Module, cut, decision) -> None:
    """Apply ``decision`` at ``cut`` in place on ``model`` (a copy owned by the caller).

    The producer keeps only the neurons ``decision.kept`` (its rows and bias), and the
    consumer's input columns are replaced by ``decision.consumer_weight: (out, k)``.
    """
    producer = model.get_submodule(cut.producer)
    set_submodule(model, cut.producer, keep_outputs(producer, decision.kept))
    consumer = model.get_submodule(cut.consumer)
    set_submodule(model, cut.consumer, replace_inputs(consumer, decision.consumer_weight))
