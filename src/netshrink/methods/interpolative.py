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
that product is what ``error_bound`` reports (consumer pre-activation error, spectral
norm over the calibration set, per √sample).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidInputError
from ..graph import Cut
from ..linalg import interpolative_decomposition, spectral_norm
from ..observe import RFactor
from .base import Decision, check_budget, count_from_fraction


class Interpolative:
    """``method="interpolative"``: keep ``k`` neurons chosen by pivoted QR, fold ``T``."""

    name = "interpolative"

    def __init__(self, tol: float | None = None, keep: float | None = None):
        check_budget(tol, keep)
        self.tol = tol
        self.keep = keep

    def statistic(self, cut: Cut) -> RFactor:
        return RFactor(cut.width)

    def decide(self, cut: Cut, statistic: RFactor, consumer: nn.Linear) -> Decision:
        r_factor = statistic.result()  # (min(N, n), n), float64
        weight = consumer.weight.detach().to(torch.float64)  # (out, n)
        width = cut.width
        weight_norm = spectral_norm(weight)

        if self.tol == 0:
            return _keep_everything(width, weight, consumer)
        if self.keep is not None:
            k = count_from_fraction(self.keep, width)
            if k == width:
                return _keep_everything(width, weight, consumer)
            if k > r_factor.shape[0]:
                raise InvalidInputError(
                    f"at {cut.name!r}: keeping {k} of {width} neurons needs at least {k} "
                    f"calibration samples, but only {statistic.count} were given; pass more "
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
                return _keep_everything(width, weight, consumer)

        cols, interpolation = decomposition.cols, decomposition.T  # (k,), (k, n)
        order = torch.argsort(cols)
        kept = cols[order]
        new_weight = (weight @ interpolation.T)[:, order]
        return Decision(
            kept=kept.to(torch.int64),
            consumer_weight=new_weight.to(consumer.weight.dtype),
            error_bound=decomposition.error_bound * weight_norm,
        )


def _keep_everything(width: int, weight: torch.Tensor, consumer: nn.Linear) -> Decision:
    kept = torch.arange(width, device=weight.device)
    return Decision(kept=kept, consumer_weight=consumer.weight.detach().clone(), error_bound=0.0)
