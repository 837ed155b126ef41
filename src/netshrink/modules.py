"""Modules that compressed models contain, and their specs for saving and loading.

``Sampled`` is the dynamic input sampler of Robin §2.6: when a tensor is read by
several layers that keep different units (a residual stream), each reader selects its
kept units at inference time instead of the producer dropping them. ``LowRank`` is a
layer replaced by two thinner ones (the ``lowrank`` baseline, a budget's rank stage).
The int8 layers of :mod:`netshrink.quantize` are described here too.

``spec(module)`` describes any module a rewrite produces as plain JSON and
``build(spec)`` makes an empty module of that shape, so a saved compression is rebuilt
without pickle (see ``api.load``).
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import NetshrinkError
from .layers import is_transposed_linear
from .quantize import Int8Conv2d, Int8Linear


class Sampled(nn.Module):
    """``layer(x.index_select(dim, index))``: a layer reading only some input units.

    ``index: (k·s,)`` int64 positions along ``dim`` of the input (channels of a feature
    map, neurons, or the features of the kept channels after a flatten).
    """

    def __init__(self, layer: nn.Module, index: torch.Tensor, dim: int):
        super().__init__()
        self.layer = layer
        self.dim = int(dim)
        self.register_buffer("index", index.to(torch.int64).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.index_select(self.dim, self.index))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kept={self.index.numel()}"


class LowRank(nn.Module):
    """``second(first(x))``: a rank-``r`` factorisation of a Linear or Conv2d layer.

    Linear ``(out, n)`` → ``Linear(n, r, bias=False)`` then ``Linear(r, out)``;
    Conv2d → ``Conv2d(C, r, k×k)`` with the original geometry, then a 1×1 ``Conv2d(r, out)``.
    Parameters ``r·(n + out)`` (+ bias) instead of ``n·out``.
    """

    def __init__(self, first: nn.Module, second: nn.Module):
        super().__init__()
        self.first = first
        self.second = second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def spec(module: nn.Module) -> dict:
    """A JSON description of ``module``'s type and shape (not its values)."""
    kind = type(module)
    if kind is nn.Linear:
        return {"type": "Linear", "in_features": module.in_features,
                "out_features": module.out_features, "bias": module.bias is not None}
    if is_transposed_linear(module):
        return {"type": "Conv1D", "nf": module.nf, "nx": module.nx}
    if kind is nn.Conv2d:
        description = {"type": "Conv2d", "in_channels": module.in_channels,
                       "out_channels": module.out_channels, "kernel_size": list(module.kernel_size),
                       "stride": list(module.stride), "padding": list(module.padding),
                       "dilation": list(module.dilation), "bias": module.bias is not None}
        if module.groups != 1:
            description["groups"] = module.groups
        return description
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d):
        return {"type": kind.__name__, "num_features": module.num_features, "eps": module.eps,
                "momentum": module.momentum, "affine": module.affine,
                "track_running_stats": module.track_running_stats}
    if kind is Sampled:
        return {"type": "Sampled", "dim": module.dim, "kept": module.index.numel(),
                "layer": spec(module.layer)}
    if kind is LowRank:
        return {"type": "LowRank", "first": spec(module.first), "second": spec(module.second)}
    if kind is Int8Linear:
        return {"type": "Int8Linear", "in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}
    if kind is Int8Conv2d:
        return {"type": "Int8Conv2d", "in_channels": module.in_channels, "out_channels": module.out_channels,
                "kernel_size": list(module.kernel_size), "stride": list(module.stride),
                "padding": list(module.padding), "dilation": list(module.dilation), "groups": module.groups,
                "bias": module.bias is not None}
    raise NetshrinkError(f"cannot describe a {kind.__name__} in a manifest")


def build(description: dict, device=None, dtype=None, like: nn.Module | None = None) -> nn.Module:
    """An (uninitialised) module of the shape ``description`` (from :func:`spec`).

    ``like`` is the module the description replaces in a freshly built original: a
    ``Conv1D`` is built as its class (netshrink does not import the library it comes from).
    """
    kind = description.get("type")
    options = {"device": device, "dtype": dtype}
    if kind == "Conv1D":
        if like is None or not is_transposed_linear(like):
            raise NetshrinkError(
                f"the manifest holds a Conv1D where the model passed to load() has a "
                f"{type(like).__name__}; pass a freshly built instance of the architecture that was compressed"
            )
        return type(like)(description["nf"], description["nx"]).to(**{k: v for k, v in options.items() if v})
    if kind == "Linear":
        return nn.Linear(description["in_features"], description["out_features"],
                         bias=description["bias"], **options)
    if kind == "Conv2d":
        return nn.Conv2d(description["in_channels"], description["out_channels"],
                         tuple(description["kernel_size"]), stride=tuple(description["stride"]),
                         padding=tuple(description["padding"]),
                         dilation=tuple(description["dilation"]), groups=description.get("groups", 1),
                         bias=description["bias"], **options)
    if kind in ("BatchNorm1d", "BatchNorm2d"):
        return getattr(nn, kind)(description["num_features"], eps=description["eps"],
                                 momentum=description["momentum"], affine=description["affine"],
                                 track_running_stats=description["track_running_stats"], **options)
    if kind == "Sampled":
        index = torch.zeros(description["kept"], dtype=torch.int64, device=device)
        return Sampled(build(description["layer"], device, dtype, like), index, description["dim"])
    if kind == "LowRank":
        return LowRank(build(description["first"], device, dtype),
                       build(description["second"], device, dtype))
    if kind == "Int8Linear":
        return Int8Linear(description["in_features"], description["out_features"], description["bias"],
                          dtype=dtype or torch.float32, device=device)
    if kind == "Int8Conv2d":
        return Int8Conv2d(description["in_channels"], description["out_channels"], description["kernel_size"],
                          description["stride"], description["padding"], description["dilation"],
                          description["groups"], description["bias"], dtype=dtype or torch.float32, device=device)
    raise NetshrinkError(f"unknown module type {kind!r} in the manifest")
