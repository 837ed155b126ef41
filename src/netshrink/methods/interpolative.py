"""Neuron selection by interpolative decomposition (Damle, Project 1).

At a cut with activations ``Z: (N, n)`` (the producer's neurons after the pointwise
ops, on the calibration data) and consumer weights ``W: (out, n)``, a column-pivoted
QR of ``Z`` selects ``k`` neurons ``C`` and the interpolation matrix ``T: (k, n)`` with
``Z ≈ Z[:, C] T``. Because ``Z[:, C] = σ(X Wₚ[C]ᵀ)`` the producer only needs rows ``C``
and the consumer becomes ``W Tᵀ: (out, k)`` (seed: "Compressing a simple neural
network", fold T into W⁽²⁾).

The column-pivoted QR runs on the streaming R factor of ``Z/√N`` (``RᵀR = ZᵀZ/N``),
which has the same pivots and the same ``T``.

Stopping rule (seed, "A practical simplification"): the seed keeps ``k`` neurons with
``|r_{k+1,k+1}| / |r₁₁| ≤ ε / ‖a‖₂``, a cheap stand-in for its bound
``‖R₂₂‖₂ ‖a‖₂ ≤ ε`` (eq. (9)). netshrink applies it to the activations measured in
units of their largest pivot (``|r₁₁| = 1``, i.e. ``Z/|r₁₁|`` with the consumer
rescaled to ``|r₁₁|·W`` so the network is unchanged) and takes ``‖a‖`` to be the
spectral norm (largest singular value) of the consumer's weight matrix ``W: (out, n)``
— the seed's vector ``a`` becomes a matrix in a multi-output network. The rule then reads

    keep the first k pivots with  |r_{k+1,k+1}| · ‖W‖₂ ≤ ε,

``r`` from the pivoted QR of ``Z/√N``: ``ε`` bounds (up to the seed's simplification)
the root-mean-square error of the consumer's pre-activations, in their own units. The
normalisation makes ``k`` invariant under ``σ(c·x) = c·σ(x)`` rescalings of a
producer/consumer pair (c > 0), which leave a ReLU network's function unchanged.
At least one neuron is always kept. ``ε = 0`` keeps every neuron, so the model is
unchanged on any input; any ``ε > 0`` also removes the neurons that are exactly zero
on the calibration data (their pivots are 0), which is exact on that data only.

Error bound (seed, Questions 2/4 and eq. (9)): ``‖(Z − Z[:, C] T) Wᵀ‖₂ / √N ≤
‖R₂₂‖₂ ‖W‖₂`` where ``R₂₂`` is the trailing block of the pivoted QR of ``Z/√N``;
that product is what ``error`` reports (consumer pre-activation error, spectral
norm over the calibration set, per √sample).

Convolutions and flattened feature maps (Robin §2.5): a channel is one column of the
unit-level activation matrix whose rows are every (sample, pixel) position, so
``Z ≈ Z[:, C] T`` holds pixel by pixel and ``T`` folds into each spatial tap of the
consumer: ``W'[o, j, p] = Σ_c W[o, c, p] T[j, c]``. Several consumers of one cut (a
joint cut) contribute their rows to the same ``Z`` and share ``C`` and ``T``. ``‖W‖₂`` is
then the spectral norm of all consumers' taps stacked, ``(Σ out_i·s_i, width)``; for a
single Linear consumer this is the seed's bound, for convolutions a per-tap bound.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidInputError, UnsupportedCutError
from ..graph import Cut
from ..layers import unit_rows, weight_matrix
from ..linalg import cpqr, interpolative_decomposition, spectral_norm
from ..observe import RFactor
from .base import Decision, Method, check_budget, check_keep, units_to_keep


class UnitRows:
    """Streaming R factor of the cut's units seen by all its consumers (rows, width)."""

    def __init__(self, cut: Cut, consumers: list[nn.Module]):
        self.width = cut.width
        self.consumers = consumers
        self.r_factor = RFactor(cut.width)

    def update(self, index: int, current: torch.Tensor, original: torch.Tensor | None = None) -> None:
        self.r_factor.update(unit_rows(current, self.consumers[index], self.width))

    def all_reduce(self, ranks) -> None:
        """Merge the ranks' R factors (see :meth:`netshrink.observe.RFactor.all_reduce`)."""
        self.r_factor.all_reduce(ranks)


class Interpolative(Method):
    """``method="interpolative"``: keep ``k`` units chosen by pivoted QR, fold ``T``."""

    name = "interpolative"
    needs_reference = False

    def __init__(self, tol: float | None = None, keep: float | None = None):
        check_budget(tol, keep)
        self.tol = tol
        self.keep = None if keep is None else check_keep(keep)

    def prepare(self, model: nn.Module, cuts: list[Cut]) -> None:
        """Refuse head cuts (before any work) and budgets that split a key/value group."""
        for cut in cuts:
            if cut.kind == "heads":
                raise UnsupportedCutError(
                    f"interpolative selects single columns of the activations, and {cut.name!r} is a cut of "
                    f"attention heads ({cut.heads.head_dim} context columns each, no column of one head "
                    "matching a column of another). Compress heads with group_lasso, magnitude, random or "
                    "lowrank, or leave them out with layers=[...] or keep={'neurons': ...}"
                )
            if self.keep is not None:
                units_to_keep(self.keep, cut)

    def statistic(self, cut: Cut, consumers: list[nn.Module]) -> UnitRows:
        return UnitRows(cut, consumers)

    def order(self, cut: Cut, statistic: UnitRows, consumers: list[nn.Module],
              producers: list[nn.Module]) -> torch.Tensor:
        """The pivots of the column-pivoted QR of the cut's activations, in pivot order
        (Damle §2: each unit the farthest from the span of those before it)."""
        r_factor = statistic.r_factor.result()
        return cpqr(r_factor, k=min(r_factor.shape)).perm.to(torch.int64).cpu()

    def decide(self, cut: Cut, statistic: UnitRows, consumers: list[nn.Module],
               producers: list[nn.Module]) -> Decision:
        r_factor = statistic.r_factor.result()  # (min(rows, n), n), float64
        width = cut.width
        taps = [weight_matrix(layer).reshape(-1, width, _taps(layer, width)) for layer in consumers]
        stacked = torch.cat([t.permute(0, 2, 1).reshape(-1, width) for t in taps])  # (Σ out·s, n)
        weight_norm = spectral_norm(stacked)

        if self.tol == 0:
            return _keep_everything(width, consumers)
        if self.keep is not None:
            k = units_to_keep(self.keep, cut)
            if k == width:
                return _keep_everything(width, consumers)
            if k > r_factor.shape[0]:
                raise InvalidInputError(
                    f"at {cut.name!r}: keeping {k} of {width} units needs at least {k} "
                    f"calibration rows, but only {statistic.r_factor.count} were given; pass more "
                    "calibration data"
                )
            decomposition = interpolative_decomposition(r_factor, k=k)
        else:
            top_pivot = float(torch.linalg.vector_norm(r_factor, dim=0).max())  # |r₁₁|
            scale = weight_norm * top_pivot
            relative = 1.0 if scale == 0 else min(1.0, self.tol / scale)
            decomposition = interpolative_decomposition(r_factor, tol=relative)
            if decomposition.rank == 0:
                decomposition = interpolative_decomposition(r_factor, k=1)
            elif decomposition.rank == width:
                return _keep_everything(width, consumers)

        cols, interpolation = decomposition.cols, decomposition.T  # (k,), (k, n)
        order = torch.argsort(cols)
        kept = cols[order]
        interpolation = interpolation[order]
        weights = tuple(
            torch.einsum("ocs,kc->oks", tap, interpolation).reshape(tap.shape[0], -1).to(layer.weight.dtype)
            for tap, layer in zip(taps, consumers)
        )
        return Decision(
            kept=kept.to(torch.int64),
            consumer_weights=weights,
            error=decomposition.error_bound * weight_norm,
        )


def _taps(layer: nn.Module, width: int) -> int:
    return weight_matrix(layer).shape[1] // width


def _keep_everything(width: int, consumers: list[nn.Module]) -> Decision:
    kept = torch.arange(width, device=consumers[0].weight.device)
    weights = tuple(weight_matrix(layer).to(layer.weight.dtype) for layer in consumers)
    return Decision(kept=kept, consumer_weights=weights, error=0.0)
