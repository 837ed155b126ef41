"""Low rank on the survivors, under the same allocation (Robin §2.3).

Once neurons are removed, a layer ``W: (out, d)`` may cost less as two thin layers
``P·Q`` of rank ``r`` (``r·(d + out)`` weights): data-aware low rank, the best rank-``r``
``W_r = U_r U_rᵀ W`` for ``U_r`` the top eigenvectors of ``W Cov(x) Wᵀ``
(:class:`~netshrink.methods.baselines.LowRank`). Each layer that a cut shrinks gets a
*rank knob* beside the cuts' width knobs; its levels are the ranks ``0..R`` with
``R = min(out, d)`` meaning dense, and the cost model prices the layer as factorised
only where that is cheaper (:class:`~netshrink.budget.costs.FactorTerm`).

Its loss curve is estimated like a cut's: with ``W Cov(x) Wᵀ = Σ λ_i u_i u_iᵀ`` and the
sensitivity ``G`` of the layer's outputs, keeping rank ``r`` leaves the residual
``Σ_{i>r} λ_i u_i u_iᵀ`` in the output covariance, so

    L(r) = ½ Σ_{i>r} λ_i · u_iᵀ G u_i.

The errors of a cut and of the ranks of its layers are taken as additive (the rank's
curve is measured on the layer at full width).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg
import torch
from torch import nn

from ..graph import Cut
from ..layers import in_units, is_depthwise, is_layer, weight_matrix
from ..methods.regression import Regression
from ..modules import Sampled

SUFFIX = ":rank"


def knob(path: str) -> str:
    """The rank knob of the layer at ``path``."""
    return path + SUFFIX


def layer_of(name: str) -> str | None:
    """The layer path of a rank knob's name, or None for a cut's knob."""
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else None


def rank_layers(model: nn.Module, cuts: Sequence[Cut]) -> list[str]:
    """The layers that get a rank knob: every Linear/Conv2d a cut shrinks (its producers
    and consumers), in the cuts' order."""
    paths = []
    for cut in cuts:
        for path in (*cut.producers, *cut.consumers):
            module = layer_module(model, path)
            if is_layer(module) and not is_depthwise(module) and path not in paths:
                paths.append(path)
    return paths


def layer_module(model: nn.Module, path: str) -> nn.Module:
    """The Linear/Conv2d at ``path`` (inside a sampler that wraps it)."""
    module = model.get_submodule(path)
    return module.layer if isinstance(module, Sampled) else module


def full_rank(layer: nn.Module) -> int:
    """``min(out, d)`` of a layer seen as ``W: (out, d)``: its rank knob's top level (dense)."""
    rows, columns = weight_matrix(layer, None).shape
    return min(rows, columns)


def factor_cut(model: nn.Module, path: str) -> Cut:
    """A cut of every input unit of the layer at ``path`` that removes none: the frame in
    which its input statistics are observed and its low-rank rewrite applied (the layer
    inside a sampler is addressed as ``path.layer``)."""
    module = model.get_submodule(path)
    if isinstance(module, Sampled):
        path, module = f"{path}.layer", module.layer
    return Cut((), (path,), (), (), in_units(module), sampled=True)


def rank_curve(problem: Regression, sensitivity: torch.Tensor) -> np.ndarray:
    """``(R + 1,)``: ``L(r)`` for ``r = 0..R`` (module doc); ``problem`` on parallel
    statistics (centred where the layer has a bias), ``sensitivity``: ``G: (out, out)`` or
    its diagonal."""
    weight = problem.weight
    covariance = (weight @ problem.gram @ weight.T).cpu().numpy()
    values, vectors = scipy.linalg.eigh((covariance + covariance.T) / 2)
    values, vectors = np.clip(values[::-1], 0, None), vectors[:, ::-1]
    sensitivity = sensitivity.cpu().numpy()
    if sensitivity.ndim == 2:
        weights = ((sensitivity @ vectors) * vectors).sum(axis=0)  # u_iᵀ G u_i
    else:
        weights = sensitivity @ vectors**2
    tail = np.concatenate([np.cumsum((values * weights)[::-1])[::-1], [0.0]])
    rank = min(weight.shape)
    return 0.5 * np.concatenate([tail[:rank], [0.0]])


def factorise(model: nn.Module, ranks: dict[str, int], data, *, chaining: str = "top_down",
              progress: bool = False, cache=None) -> list:
    """Replace each layer of ``ranks`` (path: rank) in ``model`` by its data-aware rank-``r``
    factorisation, fitted to the inputs the model (already shrunk) feeds it, in place;
    returns ``(cut, decision)`` of each. Only layers where the rank is cheaper than the
    dense layer are given (see :class:`~netshrink.budget.costs.FactorTerm`)."""
    from ..methods.base import Widths
    from ..methods.baselines import LowRank
    from ..schedule import run_schedule

    frames = [factor_cut(model, path) for path in ranks]
    method = LowRank(keep=Widths({frame.name: ranks[path] for frame, path in zip(frames, ranks)}))
    return run_schedule(model, frames, data, method, chaining=chaining, progress=progress, cache=cache)


def pays(layer: nn.Module, rank: int, full: int) -> bool:
    """Whether ``layer`` at its current shape is cheaper as rank ``rank`` (below ``full``,
    the rank of the original layer) than dense: ``r·(d + out) < d·out``."""
    out, d = weight_matrix(layer, None).shape
    return rank < full and rank * (d + out) < d * out
