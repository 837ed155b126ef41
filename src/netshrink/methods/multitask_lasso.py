"""Input selection by the multi-task lasso of one Linear layer (Shenouda et al., seed 002).

The consumer ``W: (D, K)`` with its bias ``b`` frozen gets the new weights

    V = argmin  (1/D)·E‖y − V x‖² + lam·Σ_k ‖V[:, k]‖₂,     y = W z,

over the calibration data (``x`` the inputs the consumer reads, ``z`` those the original
network feeds it; the same for ``chaining="parallel"`` and for the first cut), which is
the seed's ``(1/(D·N))·‖V Φ + b − Ψ‖²`` plus ``lam`` times the column norms with
``Ψ = W Z + b``: see :mod:`netshrink.linalg.multitask_lasso`. Inputs whose column has
norm ≤ 1e-7 are removed; the kept columns of ``V`` are the new weights as they are (no
refit: that is ``group_lasso``'s debiasing) and the bias stays as it was.

Instead of ``lam``, ``keep`` (a fraction of the inputs, or the units per cut a budget
allocation gives, :class:`~netshrink.methods.base.Widths`) searches the λ at which the
solution has that many inputs (FISTA only; :func:`~netshrink.linalg.group_lasso_keep` on
the rescaled problem, whose solution at that λ is the minimiser above).

``lam`` is on the seed's absolute scale (published: 0.01 for VGG-19's last layer, 0.05
for AlexNet's, 0.5 for the penultimate and first), not relative to ``λ_max`` as for
``group_lasso``. Solvers of the identical objective:

- ``solver="fista"`` (default): the group-lasso solver on the Gram statistics after the
  exact rescaling ``λ = lam·D/2``, stopped on a duality gap ``gap_tol·F(0)``;
- ``solver="prox_adam"``: the original scheme (Adam steps of learning rate ``mu`` then
  the group shrink, the 1000-iteration relative-change rule, float32), run on the same
  statistics; ``max_seconds`` caps its wall time and ``max_iter`` its iterations (the
  original has neither and needs hours on real layers). It does not converge to the minimiser (see the linalg module).

``warm_start=True`` starts either solver from the original weights instead of (prox-Adam)
a fresh ``nn.Linear`` initialisation drawn with ``seed``, or (FISTA) zero.
In a sweep (:func:`netshrink.sweep`), ``warm_starts`` (a
:class:`~netshrink.methods.warm_start.WarmStarts` store shared by its budgets) makes each
FISTA solve start from the solution of the previous ``lam`` instead: FISTA converges to
the same minimiser from any start. prox-Adam always starts as above (where it ends
depends on its start).

Only ``nn.Linear`` consumers reading single features are supported (one input a unit):
a layer's neurons, or — through :func:`netshrink.graph.input_cut` — flattened conv
features or the network's input, served by a sampler.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InvalidInputError, UnsupportedCutError
from ..graph import Cut
from ..linalg import group_lasso_keep, group_lasso_path_order, multitask_lasso_fista, prox_adam_gram
from ..linalg.multitask_lasso import _ProxSettings
from ..observe import GramStatistic
from .base import Decision, Method, check_keep, units_to_keep
from .regression import regressions, relative_error
from .warm_start import WarmStarts

SOLVERS = ("fista", "prox_adam")


class MultitaskLasso(Method):
    """``method="multitask_lasso"``: the seed-002 objective, FISTA or prox-Adam."""

    name = "multitask_lasso"
    needs_reference = True

    def __init__(self, lam: float | None = None, solver: str = "fista", mu: float | None = None,
                 warm_start: bool = False, max_seconds: float | None = None, max_iter: int | None = None,
                 seed: int = 0, gap_tol: float = 1e-7, keep=None):
        if (lam is None) == (keep is None):
            raise InvalidInputError(
                "multitask_lasso needs lam, the weight of Σ‖V[:, k]‖ on the seed's scale (e.g. 0.05 for "
                "AlexNet's last layer, 0.5 for its penultimate and first fully connected layers), or keep, "
                f"the fraction of inputs kept (one of them); got lam={lam!r}, keep={keep!r}"
            )
        if lam is not None and (isinstance(lam, bool) or not isinstance(lam, (int, float))
                                or not math.isfinite(lam) or lam < 0):
            raise InvalidInputError(f"lam must be a finite number ≥ 0, got {lam!r}")
        if keep is not None:
            keep = check_keep(keep)
            if solver != "fista":
                raise InvalidInputError("keep= searches λ with FISTA; solver='prox_adam' takes lam only")
        if solver not in SOLVERS:
            raise InvalidInputError(f"unknown solver {solver!r} for multitask_lasso; use one of {', '.join(SOLVERS)}")
        if solver == "prox_adam":
            if mu is None:
                raise InvalidInputError("solver='prox_adam' needs mu, its Adam learning rate (published: 0.03, 0.07)")
            _ProxSettings.checked(lam, mu, max_seconds=max_seconds, max_iter=max_iter)  # before any work
        elif mu is not None or max_seconds is not None or max_iter is not None:
            raise InvalidInputError(
                "mu, max_seconds and max_iter belong to solver='prox_adam'; solver='fista' has no step size "
                "and stops on its duality gap (gap_tol)"
            )
        if not isinstance(warm_start, bool):
            raise InvalidInputError(f"warm_start must be True or False, got {warm_start!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InvalidInputError(f"seed must be an integer, got {seed!r}")
        if isinstance(gap_tol, bool) or not isinstance(gap_tol, (int, float)) or not 0 < gap_tol < 1:
            raise InvalidInputError(f"gap_tol (the relative duality gap) must be in (0, 1), got {gap_tol!r}")
        self.lam, self.keep, self.solver, self.mu = None if lam is None else float(lam), keep, solver, mu
        self.warm_start, self.seed, self.gap_tol = warm_start, seed, gap_tol
        self.max_seconds, self.max_iter = max_seconds, max_iter
        #: FISTA solutions shared with the other budgets of a sweep (None: start as warm_start says)
        self.warm_starts: WarmStarts | None = None

    def statistic(self, cut: Cut, consumers: list[nn.Module]) -> GramStatistic:
        _check_target(cut, consumers)  # once, before the observation pass that decide() relies on
        return GramStatistic(consumers)

    def decide(self, cut: Cut, statistic: GramStatistic, consumers: list[nn.Module],
               producers: list[nn.Module]) -> Decision:
        (problem,) = regressions(cut, statistic, consumers, intercept=False)
        init = problem.weight if self.warm_start else None
        if self.keep is not None:
            return self._kept(cut, problem, consumers)
        if self.solver == "fista":
            previous = (self.warm_starts.start(cut.name, tuple(problem.weight.shape))
                        if self.warm_starts is not None else None)
            if previous is not None:
                init = previous
            result = multitask_lasso_fista(problem.gram, problem.cross, self.lam, energy=problem.energy,
                                           tol=self.gap_tol, init=init)
            if self.warm_starts is not None:
                self.warm_starts.remember(cut.name, result.V)
            details = {"solver": "fista", "gap": result.gap, "converged": result.converged}
        else:
            result = prox_adam_gram(problem.gram, problem.cross, problem.energy, self.lam, self.mu, init=init,
                                    seed=self.seed, max_seconds=self.max_seconds, max_iter=self.max_iter)
            details = {"solver": "prox_adam", "mu": self.mu, "converged": result.converged,
                       "stop_reason": result.stop_reason}
        details.update(objective=result.objective, error_term=result.error, penalty=result.penalty,
                       iterations=result.iterations, seconds=result.seconds, lam=self.lam)
        V = result.V.to(torch.float64)
        kept = result.active.to(torch.int64)
        if len(kept) == 0:
            # every input removed: the layer outputs its bias. Keep the input that the
            # targets correlate with most, with a zero weight — the same function.
            kept = torch.argmax(problem.cross.square().sum(dim=1)).reshape(1).cpu()
        weight = V[:, kept.to(V.device)]
        return Decision(
            kept=kept,
            consumer_weights=(weight.to(consumers[0].weight.dtype),),
            error=relative_error([problem], kept.to(problem.gram.device), [weight.to(problem.gram.device)]),
            details=details,
        )


    def _kept(self, cut: Cut, problem, consumers: list[nn.Module]) -> Decision:
        """The minimiser at the λ where ``units_to_keep`` inputs stay (module doc)."""
        wanted = units_to_keep(self.keep, cut)
        result = group_lasso_keep(problem.gram, problem.cross, wanted, 1, tol=self.gap_tol, energy=problem.energy)
        kept = result.active.to(torch.int64)
        weight = result.M[:, kept.to(result.M.device)]
        outputs = problem.weight.shape[0]
        return Decision(
            kept=kept,
            consumer_weights=(weight.to(consumers[0].weight.dtype),),
            error=relative_error([problem], kept.to(problem.gram.device), [weight.to(problem.gram.device)]),
            details={"solver": "fista", "lam": 2 * result.lam / outputs, "converged": result.converged},
        )

    def order(self, cut: Cut, statistic: GramStatistic, consumers: list[nn.Module],
              producers: list[nn.Module]) -> torch.Tensor:
        """The inputs in the order they enter the solution as ``lam`` falls (the λ path)."""
        (problem,) = regressions(cut, statistic, consumers, intercept=False)
        return group_lasso_path_order(problem.gram, problem.cross, 1, tol=self.gap_tol, energy=problem.energy)


def _check_target(cut: Cut, consumers: list[nn.Module]) -> None:
    """The seed's method compresses the inputs of one ``nn.Linear``, one input a unit."""
    if len(consumers) != 1:
        raise UnsupportedCutError(
            f"multitask_lasso compresses the inputs of one nn.Linear; {cut.name!r} is read by "
            f"{len(consumers)} layers ({', '.join(cut.consumers)}). Pick one with layer=..."
        )
    layer = consumers[0]
    if type(layer) is not nn.Linear:
        raise UnsupportedCutError(
            f"multitask_lasso compresses the inputs of an nn.Linear; {cut.consumers[0]!r} is a "
            f"{type(layer).__name__}. Target a fully connected layer with layer='first'|'pen'|'last' or its path"
        )
    if layer.in_features != cut.width:
        raise UnsupportedCutError(
            f"multitask_lasso removes single inputs; {cut.consumers[0]!r} reads {cut.name!r} as "
            f"{cut.width} channels of {layer.in_features // cut.width} features each. Use "
            f"layer={cut.consumers[0]!r}: its {layer.in_features} inputs are then selected one by one "
            "and served by a sampler"
        )
