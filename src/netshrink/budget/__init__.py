"""Budgets: parameters, FLOPs and latency, and the global allocation that meets them.

``compress(model, data, method, size=F | flops=F | latency=F)`` keeps at most the
fraction ``F`` of the original model's parameters, forward FLOPs at the calibration
input shape, or batch-1 latency on this machine, and decides every cut's width in one
solve (:mod:`.plan`):

    min_k  Σ_c L_c(k_c)   subject to   cost(k) ≤ F · cost(original),

where ``L_c(k)`` is the estimated increase of the output loss when cut ``c`` keeps the
first ``k`` units of the method's own ranking, refitted (a Gauss–Newton/Fisher weighting
of the consumers' reconstruction errors, :mod:`.sensitivity`, :mod:`.curves`) and
``cost`` is exact (:mod:`.costs`, :mod:`.flops`) or measured (:mod:`.latency`). The
allocation is a Lagrangian relaxation with exact coordinate minimisation, bisected on
the multiplier, then a greedy fill of what is left (:mod:`.allocation`). See
``docs/budgets.md`` for the derivation and its accuracy.
"""

from .allocation import Allocation, BudgetError, Knob, allocate
from .costs import CostModel, Term, flop_costs, parameter_costs
from .flops import module_flops, total_flops
from .plan import BUDGET_KINDS, Budget, Plan, cost_model, loss_curves, plan, take_budget
from .sensitivity import output_sensitivities

__all__ = [
    "Allocation", "BudgetError", "Knob", "allocate", "CostModel", "Term", "flop_costs", "parameter_costs",
    "module_flops", "total_flops", "BUDGET_KINDS", "Budget", "Plan", "cost_model", "loss_curves", "plan",
    "take_budget",
    "output_sensitivities",
]
