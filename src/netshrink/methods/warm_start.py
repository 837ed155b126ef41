"""Warm starts along a regularisation path: one solution per cut, handed to the next solve.

A sweep (:func:`netshrink.sweep`) decides the same cuts at many budgets. The ℓ2,1
solvers converge to the minimiser from any start and stop on a duality gap, so starting
the solve at ``λ₂`` from the solution at a nearby ``λ₁`` takes fewer iterations and ends
within the same gap of the same minimiser — not at the same point as a solve from zero
(with a loose gap, not even on the same support). A :class:`WarmStarts` store is shared
by the methods of one sweep: each solve at a cut starts from the solution the previous
solve left there, when it has the same shape.
"""

from __future__ import annotations

import torch


class WarmStarts:
    """The latest solution ``M: (out, d)`` of each cut's ℓ2,1 problem, by cut name.

    ``start(cut, shape)`` returns it when its shape is ``shape`` (the problem at a cut
    keeps its shape across budgets except in bottom-up chaining, where a consumer that
    is also the next cut's producer has already lost rows), else None (a cold start).
    """

    def __init__(self):
        self._solutions: dict[str, torch.Tensor] = {}

    def start(self, cut: str, shape: tuple[int, int]) -> torch.Tensor | None:
        """The solution left at ``cut`` if it is ``shape``, else None."""
        solution = self._solutions.get(cut)
        if solution is None or tuple(solution.shape) != tuple(shape):
            return None
        return solution

    def remember(self, cut: str, solution: torch.Tensor) -> None:
        """Keep ``solution: (out, d)`` as the start of the next solve at ``cut``."""
        self._solutions[cut] = solution
