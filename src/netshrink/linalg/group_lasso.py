"""ℓ2,1 (group-lasso) regression solved from Gram statistics (Robin §2.4, §2.7, §5.4–5.5).

Problem (6) of the seed in expectation form. For inputs ``x ∈ ℝᵈ`` and targets
``y ∈ ℝᵒᵘᵗ`` only three statistics are needed, whatever the number of samples:

    gram = E[x xᵀ]  (d, d),    cross = E[x yᵀ]  (d, out),    energy = E‖y‖²,

and the objective over ``M: (out, d)`` is

    P(M) = ½·energy − tr(M·cross) + ½·tr(M·gram·Mᵀ) + λ·Σ_g ‖M[:, g]‖_F
         = ½·E‖y − M x‖² + λ·‖M‖₂,₁,

the groups ``g`` partitioning the input columns (a neuron's column, a channel's
``kh·kw`` patch columns, a channel's ``h·w`` features after a flatten, or one unit's
columns in several blocks of a block-diagonal joint problem). With ``gram = XᵀX/n``
and ``cross = XᵀY/n`` this is exactly scikit-learn's ``MultiTaskLasso(alpha=λ)``
objective.

Solvers
-------
- ``"fista"`` (Alg. 1 and 2): accelerated proximal gradient with step ``1/L``,
  ``L = λ_max(gram)`` (certified Lanczos, :func:`~netshrink.linalg.spectral_norm`, with a
  1e-10 relative upward margin), with the gradient-based adaptive restart of O'Donoghue &
  Candès (restart the momentum when it points uphill): it keeps Lemma 2's rate and
  removes the oscillations of plain FISTA on ill-conditioned Grams (2–3× fewer
  iterations on ReLU activations). ``restart=False`` gives Alg. 1 exactly.

  Two accelerations keep it practical on the very ill-conditioned Grams of ReLU
  activations (condition numbers of 1e8 and more, where FISTA alone needs thousands of
  iterations):

  * *working sets* of groups (the active ones plus the worst violators of the
    optimality conditions, grown until the duality gap of the whole problem is small):
    an iteration costs ``out·|W|²`` instead of ``out·d²``; groups left out satisfy their
    optimality condition at zero, so the final gap certifies the full problem;
  * *Newton phases* on the current support (``newton=True``, default): on the groups
    with nonzero columns the objective is smooth, with Hessian
    ``Δ ↦ Δ·A − λ Σ_g ⟨U_g, Δ_g⟩ U_g / ‖M_g‖``, ``A = gram_SS + λ·D(1/‖M_g‖)`` and
    ``U_g = M_g/‖M_g‖``: the η-system of alt-min minus one rank-one term per group. Its
    inverse follows from one Cholesky factorisation of ``A`` and a ``k × k`` Schur
    complement (Woodbury), ``O(|S|³ + out·|S|²)`` per step — a few FISTA iterations.
    FISTA runs in chunks of 10, 20, 40, … iterations, each followed by a phase of at most
    12 damped Newton steps (a warm start with a nonempty support begins with one): zero
    groups that violate their optimality condition first enter by a block proximal
    step, groups that the full Newton step would take through zero get such a step
    instead (which zeroes them when that is optimal), and the step on the others is
    Armijo-backtracked with a Levenberg–Marquardt shift for nearly singular supports.
    Near the solution the phases converge quadratically; they never replace the
    duality-gap stopping rule. A step holds one ``(|S|, |S|)`` buffer for the support's
    block, so phases run on supports of at most ``max(4096, d/2)`` columns (a quarter of
    the Gram's bytes when ``d > 8192``); on larger supports FISTA goes on alone.

- ``"altmin"`` (Alg. 3, §5.5): alternating minimisation of the η-variational form
  ``‖M_g‖ = min_η ‖M_g‖²/(2η) + η/2`` with ε-smoothing. For fixed η the minimiser of
  ``½tr(M·gram·Mᵀ) − tr(M·cross) + (λ/2)·Σ_g ‖M_g‖²/η_g`` solves
  ``(gram + λ·D(η⁻¹)) Mᵀ = cross`` (the seed's Alg. 3 writes ``B = 2XYᵀ/N`` against
  ``R + λ·D(η⁻¹)``; the factor 2 is absorbed into the ½ of ``P`` here, so ``λ`` means the
  same in both solvers); then ``η_g = (‖M_g‖² + ε)^{1/2}``. ε starts at ``eps`` and
  shrinks tenfold whenever ``M`` settles. As §5.5 suggests ("better initial points"),
  the result then seeds the FISTA/Newton iteration above, which sets the inactive
  groups *exactly* to zero and runs to the duality gap — so the two solvers return the
  same solution to the tolerance.

Stopping: the duality gap, never an iteration count. With a factor ``RᵀR = gram`` and
a response ``RᵀY_R = cross``, ``‖Y_R‖² = energy`` (they exist whenever the statistics
come from data), ``P(M) = ½‖Y_R − R Mᵀ‖² + λ‖M‖₂,₁`` is a multi-task lasso whose dual
is ``D(θ) = ⟨Y_R, θ⟩ − ½‖θ‖²`` over ``‖(Rᵀθ)[g]‖ ≤ λ``. The point
``θ = s·(Y_R − R Mᵀ)``, ``s = min(1, λ / max_g ‖(cross − gram Mᵀ)[g, :]‖_F)`` is feasible
and, with ``⟨Y_R, R Mᵀ⟩ = tr(M·cross)`` and ``‖R Mᵀ‖² = tr(M·gram·Mᵀ)``,

    D = s·(energy − tr(M·cross)) − ½·s²·(energy − 2·tr(M·cross) + tr(M·gram·Mᵀ)),

computable from the statistics alone; ``gap = P(M) − D ≥ P(M) − P(M*)``. Solvers stop
when ``gap ≤ tol · ½·energy`` (relative to ``P(0) = ½·energy``), checked every 10
iterations (a check costs less than one iteration).

Output-side reduction
---------------------
``P`` depends on ``M`` only through ``tr(M·gram·Mᵀ)``, ``tr(M·cross)`` and column
norms, all invariant under ``M → QM`` for orthogonal ``Q``. If ``crossᵀ = Q·C`` with
``Q: (out, r)`` orthonormal, write ``M = Q·M' + M⊥`` (``QᵀM⊥ = 0``): the cross term
only sees ``M'``, and ``M⊥`` only adds ``½tr(M⊥·gram·M⊥ᵀ) ≥ 0`` and column norm, so
``M⊥ = 0`` at the optimum and the problem with ``cross' = Cᵀ = cross·Q`` (``r`` outputs)
has solution ``M'`` with ``M = Q·M'``. The reduction is applied

* to the whole problem when ``r < out``: ``out > d`` (thin QR of ``crossᵀ``), or
  ``out ≥ 16`` and a rank-deficient ``cross`` when it shrinks ``out`` to at most 80%: one
  column-pivoted QR of ``crossᵀ`` (:func:`~netshrink.linalg.cpqr`), stopped at the first
  pivot ``≤ max(d, out)·ε_mach·|r₁₁|`` (the numerical rank ``r``) or after ``0.8·out``
  steps; ``Q`` spans its first ``r`` pivoted columns;
* to every working-set subproblem with fewer columns than outputs — the common case: a
  layer with 1024 outputs whose solution uses 450 inputs iterates on a 450 × 450 problem.

The returned ``gap`` and ``objective`` are evaluated on the original, unreduced
statistics. ``reduce_outputs=False`` switches the whole-problem reduction off.

Everything is float64 torch on the device of ``gram`` (inputs are converted).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InvalidInputError
from .blocks import (
    all_finite,
    block_product,
    column_sums,
    inner,
    max_asymmetry,
    principal_block,
    principal_view,
    row_spans,
    rows_product,
    submatrix,
)
from .cpqr import cpqr
from .lstsq import lstsq_from_gram
from .spectral import spectral_norm

__all__ = ["GroupLassoResult", "group_lasso", "group_lasso_keep", "lambda_max", "duality_gap", "group_labels"]

SOLVERS = ("fista", "altmin")
_CHECK_EVERY = 10  # FISTA iterations between two duality-gap checks
_NEWTON_AFTER = 10  # FISTA iterations before the first Newton phase (the interval doubles after each)
_NEWTON_STEPS = 12  # Newton steps per phase at most
_INNER_RATIO = 0.25  # a working-set subproblem is solved to this fraction of the current full gap
_REDUCE_MIN_OUT = 16  # below this many outputs the rank-revealing reduction is not worth it
_REDUCE_FACTOR = 0.8  # apply the rank reduction when r ≤ this·out
_NEWTON_MIN_COLUMNS = 4096  # Newton steps on supports of up to max(this, d/2) columns (buffer ≤ ¼ of the Gram)


@dataclass(frozen=True)
class GroupLassoResult:
    """A solution of the ℓ2,1 problem.

    Attributes:
        M: ``(out, d)`` float64 solution.
        active: ``(k,)`` int64 ascending indices of the groups with a nonzero column.
        gap: final duality gap (absolute, objective units).
        objective: ``P(M)``.
        lam: the λ solved for.
        iterations: FISTA iterations plus Newton steps plus alternating rounds run.
        converged: whether ``gap ≤ tol·½·energy`` was reached within ``max_iter``.
    """

    M: torch.Tensor
    active: torch.Tensor
    gap: float
    objective: float
    lam: float
    iterations: int
    converged: bool


class _Groups:
    """Group structure over ``d`` columns: labels, sizes and per-group reductions."""

    def __init__(self, d: int, groups, device):
        self.labels = group_labels(d, groups).to(device)
        self.count = int(self.labels.max()) + 1 if d else 0
        self.contiguous = isinstance(groups, int) or groups is None
        self.size = 1 if groups is None else (groups if isinstance(groups, int) else None)

    def norms(self, matrix: torch.Tensor) -> torch.Tensor:
        """``‖matrix[:, g]‖_F`` for every group, ``(count,)``."""
        return self.norms_of_squares(column_sums(matrix, square=True))

    def norms_of_squares(self, squares: torch.Tensor) -> torch.Tensor:
        """The group norms ``(count,)`` from the column sums of squares ``(d,)``."""
        if self.contiguous:
            return squares.reshape(self.count, self.size).sum(dim=1).sqrt()
        return squares.new_zeros(self.count).index_add_(0, self.labels, squares).sqrt()

    def columns(self, chosen: torch.Tensor) -> torch.Tensor:
        """Column indices of the groups ``chosen`` (a boolean mask over groups)."""
        return torch.nonzero(chosen[self.labels]).flatten()


def group_labels(d: int, groups) -> torch.Tensor:
    """``(d,)`` int64 group label of every column (0..g−1) for ``groups``.

    ``groups`` is None (every column its own group), an int ``s`` (contiguous groups of
    ``s`` columns; ``d`` must be a multiple of ``s``) or a ``(d,)`` integer tensor of
    labels ``0..g−1`` in any order (every label used; a group may own non-contiguous
    columns, e.g. one unit's columns in several blocks of a joint problem).
    """
    if groups is None:
        return torch.arange(d)
    if isinstance(groups, bool):
        raise InvalidInputError(f"groups must be None, a group size or labels, got {groups!r}")
    if isinstance(groups, (int, np.integer)):
        groups = int(groups)
        if groups < 1:
            raise InvalidInputError(f"the group size must be a positive integer, got {groups}")
        if d % groups:
            raise InvalidInputError(
                f"groups of {groups} columns don't divide the input: {d} columns is not a multiple of {groups}"
            )
        return torch.arange(d).div(groups, rounding_mode="floor")
    labels = torch.as_tensor(groups)
    if labels.ndim != 1 or labels.shape[0] != d or labels.is_floating_point() or labels.dtype == torch.bool:
        raise InvalidInputError(
            f"group labels must be a 1-D integer tensor with one label per column ({d}), "
            f"got shape {tuple(labels.shape)} and dtype {labels.dtype}"
        )
    labels = labels.to(torch.int64).cpu()
    if d and (int(labels.min()) < 0 or torch.unique(labels).numel() != int(labels.max()) + 1):
        raise InvalidInputError("group labels must use every value 0..g−1 (g = number of groups)")
    return labels


def lambda_max(cross: torch.Tensor, groups=None) -> float:
    """The smallest λ whose solution is ``M = 0``: ``max_g ‖cross[g, :]‖_F``.

    At ``M = 0`` the gradient of the smooth part is ``−crossᵀ``; zero is optimal iff every
    group's block of it has norm ≤ λ. ``cross: (d, out)``; ``groups`` as in
    :func:`group_labels`.
    """
    cross = _as_float64(cross, "cross")
    if cross.ndim != 2:
        raise InvalidInputError(f"cross must be (d, out), got shape {tuple(cross.shape)}")
    structure = _Groups(cross.shape[0], _normalised_groups(groups), cross.device)
    return float(structure.norms(cross.T).max()) if cross.shape[0] and cross.shape[1] else 0.0


def duality_gap(gram, cross, M, lam: float, groups=None, *, energy: float) -> float:
    """``P(M) − D(θ(M)) ≥ P(M) − P(M*)`` for the problem of the module doc.

    ``gram: (d, d)``, ``cross: (d, out)``, ``M: (out, d)``; absolute (objective units).
    """
    gram, cross, energy = _checked(gram, cross, energy)
    lam = _checked_lambda(lam)
    M = _as_float64(M, "M").to(gram.device)
    if M.shape != (cross.shape[1], gram.shape[0]):
        raise InvalidInputError(f"M must have shape {(cross.shape[1], gram.shape[0])}, got {tuple(M.shape)}")
    structure = _Groups(gram.shape[0], _normalised_groups(groups), gram.device)
    return _Problem(gram, cross, lam, structure, energy).gap(M)[0]


def group_lasso(
    gram, cross, lam: float, groups=None, solver: str = "fista", tol: float = 1e-6, *,
    energy: float | None = None, init: torch.Tensor | None = None, max_iter: int = 20000,
    eps: float | None = None, restart: bool = True, newton: bool = True, reduce_outputs: bool = True,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> GroupLassoResult:
    """Solve ``min_M P(M)`` (module doc) for ``gram: (d, d)``, ``cross: (d, out)``.

    Args:
        lam: λ ≥ 0 (λ ≥ :func:`lambda_max` gives ``M = 0``; λ = 0 is plain least
            squares, solved directly by :func:`~netshrink.linalg.lstsq_from_gram`).
        groups: None, a group size or labels (see :func:`group_labels`).
        solver: ``"fista"`` or ``"altmin"``.
        tol: stop when the duality gap is at most ``tol·½·energy`` (a fraction of
            ``P(0)``). The default 1e-6 puts the objective within 1e-6 of ``P(0)`` of the
            optimum — far below what changes a support or an accuracy; the method-level
            default (``gap_tol``) is looser.
        energy: ``E‖y‖²``; default the smallest value consistent with the statistics,
            ``tr(crossᵀ gram⁺ cross)`` (the targets' part explained by ``x``; Cholesky, or
            the minimum-norm solve of :func:`~netshrink.linalg.lstsq_from_gram` when
            ``gram`` is singular). Only the constant of ``P``
            and the scale of ``tol`` depend on it, not the solution.
        init: warm start ``(out, d)``.
        max_iter: cap on iterations; ``converged`` tells whether the gap was reached
            (no exception otherwise).
        eps: initial smoothing of ``"altmin"`` (default ``(1e-2·max_g‖cross_g‖/L)²``).
        restart: adaptive momentum restart of FISTA (on by default).
        newton: Newton phases on the support (on by default; on supports of at most
            ``max(4096, d/2)`` columns, see the module doc).
        reduce_outputs: output-side reduction of the whole problem (module doc).
        callback: ``callback(k, M_k)`` after every FISTA iteration. Setting it runs plain
            FISTA (Alg. 1, plus restart unless ``restart=False``) on the full problem from
            ``init`` (or 0): no working sets, Newton phases or output reduction, so the
            iterates are exactly those that Lemma 2 is about.
    """
    gram, cross, energy = _checked(gram, cross, energy)
    lam = _checked_lambda(lam)
    if solver not in SOLVERS:
        raise InvalidInputError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}")
    _check_tol(tol)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise InvalidInputError(f"max_iter must be a positive integer, got {max_iter!r}")
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float))
                            or not math.isfinite(eps) or eps <= 0):
        raise InvalidInputError(f"eps (the alt-min smoothing) must be a finite number > 0, got {eps!r}")
    d, out = cross.shape
    structure = _Groups(d, _normalised_groups(groups), gram.device)
    start = None
    if init is not None:
        start = _as_float64(init, "init").to(gram.device)
        if start.shape != (out, d):
            raise InvalidInputError(f"init must have shape {(out, d)}, got {tuple(start.shape)}")
    basis = _output_basis(cross) if reduce_outputs and callback is None else None
    return _solve(gram, cross, energy, lam, structure, solver, tol, start, max_iter, eps, restart, newton,
                  callback, basis)


def group_lasso_keep(
    gram, cross, keep: int, groups=None, solver: str = "fista", tol: float = 1e-6, *,
    energy: float | None = None, max_steps: int = 60,
) -> GroupLassoResult:
    """The solution with exactly ``keep`` active groups, by a λ search with warm starts.

    Bisection on ``log λ`` in ``(0, λ_max)`` (:func:`lambda_max`), each solve
    (:func:`group_lasso` with ``solver`` and ``tol``) warm-started from the solution at
    the nearest λ already solved; the output-side reduction is computed once. At most
    ``max_steps`` solves.

    Ties: if the number of active groups jumps over ``keep`` (groups entering at the
    same λ, e.g. duplicated inputs), the solution at the largest solved λ with more than
    ``keep`` active groups is taken and its ``keep`` groups of largest norm are kept
    (the others zeroed); ``converged`` is then False, ``gap``/``objective`` are those of
    the truncated ``M``, and a least-squares refit on ``active`` is the intended use.
    If even λ → 0 leaves fewer than ``keep`` groups nonzero at the gap tolerance (the
    rest explain almost nothing), the support is completed with the groups that violate
    their optimality condition most, i.e. would enter next; ``active`` then includes
    groups with zero columns, for a refit to use.

    Raises:
        InvalidInputError: ``keep`` outside ``[1, number of groups]``; ``keep`` larger
            than the number of groups that are not identically zero in the statistics
            (those never become active for any λ > 0); ``cross`` identically zero.
    """
    gram, cross, energy = _checked(gram, cross, energy)
    if solver not in SOLVERS:
        raise InvalidInputError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}")
    _check_tol(tol)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise InvalidInputError(f"max_steps must be a positive integer, got {max_steps!r}")
    groups = _normalised_groups(groups)
    structure = _Groups(gram.shape[0], groups, gram.device)
    count = structure.count
    if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or not 1 <= keep <= count:
        raise InvalidInputError(f"keep must be an integer in [1, {count}] (the number of groups), got {keep!r}")
    keep = int(keep)
    alive = int((structure.norms(torch.diagonal(gram).clamp(min=0).sqrt().unsqueeze(0)) > 0).sum())
    if keep > alive:
        raise InvalidInputError(
            f"keep={keep} groups, but only {alive} of {count} groups are not identically zero in the "
            "statistics: no λ > 0 reaches it; use lam=0 to keep everything"
        )
    high = top = lambda_max(cross, groups)
    if high == 0:
        raise InvalidInputError("cross is zero: every λ > 0 removes every group")
    basis = _output_basis(cross)
    reduced = cross if basis is None else cross @ basis
    # Every solved λ lies outside the bracket (low, high) and every new λ inside it, so the
    # solved λ nearest to a new one is an end of the bracket: only the solutions there are
    # kept (in the reduced output space), ``order`` breaking ties as the first solved.
    ends: dict[str, _Solved] = {}

    def solve(lam: float) -> _Solved:
        nearest = min(ends.values(), key=lambda other: (abs(math.log(other.lam / lam)), other.order), default=None)
        M, iterations = _solve_reduced(gram, reduced, energy, lam, structure, solver, tol,
                                       nearest.M if nearest is not None else None, max_iter=20000, eps=None,
                                       restart=True, newton=True, callback=None)
        return _Solved(lam, M, iterations, int((structure.norms(M) > 0).sum()), len(moved))

    def finished(solution: _Solved, chosen: torch.Tensor | None = None) -> GroupLassoResult:
        """The result at ``solution`` in the original outputs; with ``chosen`` (a mask over
        groups), that support, the other groups zeroed (``converged`` False)."""
        M = solution.M if basis is None else basis @ solution.M
        if chosen is None:
            return _result(gram, cross, energy, solution.lam, structure, tol, M, solution.iterations)
        M.mul_(chosen[structure.labels].to(M.dtype))
        gap, objective = _Problem(gram, cross, solution.lam, structure, energy).gap(M)
        return GroupLassoResult(M=M, active=torch.nonzero(chosen).flatten().cpu(), gap=gap,
                                objective=objective, lam=solution.lam, iterations=solution.iterations,
                                converged=False)

    low = 0.0  # λ → 0 keeps every live group
    counts = {}  # active groups at the bracket's ends
    moved = []  # which end each solve replaced
    lam = high * 0.5
    for _ in range(max_steps):
        solution = solve(lam)
        if solution.active == keep:
            return finished(solution)
        end = "low" if solution.active > keep else "high"
        ends[end] = solution
        if end == "low":
            low, counts["low"] = lam, solution.active
        else:
            high, counts["high"] = lam, solution.active
        moved.append(end == "low")
        stuck = len(moved) > 1 and moved[-1] == moved[-2]
        lam = _next_lambda(low, high, counts, keep, bisect=stuck)
        # within 2% in λ the active count moves with the solver's tolerance, not with λ:
        # the truncation below takes over
        if (low > 0 and high / low < 1.02) or (low == 0 and lam < 1e-10 * top):
            break
    if "low" not in ends:
        # Even λ → 0 leaves fewer than ``keep`` groups above the gap tolerance: the others
        # explain almost nothing. Complete the support with the groups whose optimality
        # condition is violated most (those that would enter next), zero columns for them.
        best = ends["high"]  # the smallest λ solved
        M = best.M if basis is None else basis @ best.M
        gap, objective, scores = _Problem(gram, cross, best.lam, structure, energy).violations(M)
        chosen = structure.norms(M) > 0
        scores[chosen] = math.inf
        chosen[torch.argsort(scores, descending=True)[:keep]] = True
        return GroupLassoResult(M=M, active=torch.nonzero(chosen).flatten().cpu(), gap=gap,
                                objective=objective, lam=best.lam, iterations=best.iterations,
                                converged=False)
    best = ends["low"]  # the largest λ with more than keep groups
    chosen = torch.zeros(count, dtype=torch.bool, device=gram.device)
    chosen[torch.argsort(structure.norms(best.M), descending=True)[:keep]] = True
    return finished(best, chosen)


def group_lasso_path_order(
    gram, cross, groups=None, solver: str = "fista", tol: float = 1e-6, *,
    energy: float | None = None, steps: int = 16, smallest: float = 1e-3,
) -> torch.Tensor:
    """``(groups,)`` int64: the groups in the order they enter the ℓ2,1 solution as λ falls.

    The regularisation path is followed on ``steps`` values of λ, geometrically from
    ``0.9·λ_max`` (:func:`lambda_max`) down to ``smallest·λ_max``, each solve warm-started
    from the previous one (the output-side reduction computed once). A group's rank is
    the largest λ at which it is active; groups entering at the same λ are ranked by their
    norm there (larger first). Groups still inactive at the smallest λ follow, ranked by
    how much they violate their optimality condition there ``‖(cross − gram Mᵀ)_g‖`` —
    the order in which the path would take them next; groups identically zero in the
    statistics come last.
    """
    gram, cross, energy = _checked(gram, cross, energy)
    if solver not in SOLVERS:
        raise InvalidInputError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}")
    _check_tol(tol)
    groups = _normalised_groups(groups)
    structure = _Groups(gram.shape[0], groups, gram.device)
    count = structure.count
    top = lambda_max(cross, groups)
    entry = torch.full((count,), steps, dtype=torch.int64)
    size = torch.zeros(count, dtype=torch.float64)
    if top == 0:
        return torch.arange(count)
    basis = _output_basis(cross)
    reduced = cross if basis is None else cross @ basis
    M = None
    for step, fraction in enumerate(np.geomspace(0.9, smallest, steps)):
        lam = float(fraction) * top
        M, _ = _solve_reduced(gram, reduced, energy, lam, structure, solver, tol, M, max_iter=20000, eps=None,
                              restart=True, newton=True, callback=None)
        norms = structure.norms(M).cpu()
        new = (norms > 0) & (entry == steps)
        entry[new], size[new] = step, norms[new]
        if not bool((entry == steps).any()):
            break
    waiting = entry == steps
    if bool(waiting.any()):
        full = M if basis is None else basis @ M
        _, _, violations = _Problem(gram, cross, lam, structure, energy).violations(full)
        size[waiting] = violations.cpu()[waiting]
    # sort by entry step (earlier first), then by size (larger first)
    key = entry.to(torch.float64) - size / (2 * float(size.max()) + 1e-300)
    return torch.argsort(key, stable=True)


@dataclass(frozen=True)
class _Solved:
    """One solve of :func:`group_lasso_keep`: ``M: (r, d)`` in the reduced outputs, the
    number of ``active`` groups, and the ``order`` in which it was solved."""

    lam: float
    M: torch.Tensor
    iterations: int
    active: int
    order: int


def _next_lambda(low: float, high: float, counts: dict, keep: int, bisect: bool) -> float:
    """The next λ of the search for ``keep`` active groups in the bracket ``(low, high)``.

    Without a lower end, a tenth of ``high``. Otherwise the active count is interpolated
    linearly in ``(log λ, log count)`` between the ends (the count falls roughly like a
    power of λ), kept within the middle 80% of the log bracket; a geometric bisection
    when an end has no count yet or when the same end moved twice in a row (the
    interpolation is then stuck on one side, as in regula falsi).
    """
    if low == 0:
        return high * 0.1
    if bisect or "high" not in counts or counts["high"] == 0:
        return math.sqrt(low * high)
    a, b = math.log(low), math.log(high)
    fraction = (math.log(counts["low"]) - math.log(keep)) / (math.log(counts["low"]) - math.log(counts["high"]))
    return math.exp(a + (b - a) * min(0.9, max(0.1, fraction)))


# --------------------------------------------------------------------------------------


def _solve(gram, cross, energy, lam, structure, solver, tol, start, max_iter, eps, restart, newton, callback,
           basis) -> GroupLassoResult:
    """Validated inputs → result; ``basis`` (out, r) is the output reduction or None."""
    reduced = cross if basis is None else cross @ basis
    if start is not None and basis is not None:
        start = basis.T @ start
    M, iterations = _solve_reduced(gram, reduced, energy, lam, structure, solver, tol, start, max_iter, eps,
                                   restart, newton, callback)
    return _result(gram, cross, energy, lam, structure, tol, M if basis is None else basis @ M, iterations)


def _solve_reduced(gram, reduced, energy, lam, structure, solver, tol, start, max_iter, eps, restart, newton,
                   callback) -> tuple[torch.Tensor, int]:
    """``(M: (r, d), iterations)`` for the problem with ``reduced: (d, r)`` outputs (``cross``
    itself or ``cross·Q``) from ``start: (r, d)`` or zero."""
    d = reduced.shape[0]
    target = tol * 0.5 * energy
    if start is None:
        start = reduced.new_zeros(reduced.shape[1], d)
    inner_problem = _Problem(gram, reduced, lam, structure, energy)
    newton = max(_NEWTON_MIN_COLUMNS, d // 2) if newton else 0  # the largest support for a Newton step
    if lam == 0:  # plain least squares: solved directly (the dual bound is degenerate at λ = 0)
        M, iterations = lstsq_from_gram(gram, reduced), 0
    elif callback is not None:  # the iterates of Alg. 1 on the full problem
        M, iterations, _ = _fista(gram, reduced.T, lam, structure.labels, structure.count, start, target,
                                  max_iter, restart, lambda m: inner_problem.gap(m)[0], callback=callback)
    else:
        def inner(sub, start_sub, inner_target, budget):
            if solver == "fista":
                return _accelerated(sub, start_sub, inner_target, budget, restart, newton)
            return _altmin(sub, start_sub, inner_target, budget, eps, restart, newton)

        M, iterations = _working_set(inner_problem, start, target, max_iter, inner)
    return M, iterations


def _result(gram, cross, energy, lam, structure, tol, M, iterations) -> GroupLassoResult:
    """The result for ``M: (out, d)``, its gap and objective on the original statistics."""
    gap, objective = _Problem(gram, cross, lam, structure, energy).gap(M)
    if lam == 0:
        gap = 0.0
    active = torch.nonzero(structure.norms(M) > 0).flatten()
    return GroupLassoResult(M=M, active=active.cpu(), gap=gap, objective=objective, lam=float(lam),
                            iterations=iterations, converged=gap <= tol * 0.5 * energy)


class _Problem:
    """The objective, its gradient, prox and duality gap (on all or a subset of columns)."""

    def __init__(self, gram, cross, lam, structure: _Groups, energy):
        self.gram, self.cross, self.lam, self.structure, self.energy = gram, cross, lam, structure, energy

    def gap(self, M: torch.Tensor) -> tuple[float, float]:
        """``(gap, P(M))`` for ``M: (out, d)``."""
        gap, primal, _ = self.violations(M)
        return gap, primal

    def violations(self, M: torch.Tensor) -> tuple[float, float, torch.Tensor]:
        """``(gap, P(M), ‖(cross − gram Mᵀ)[g]‖ per group)`` for ``M: (out, d)``.

        :meth:`certificate` without the residual: computed by blocks of output rows, so
        its temporaries stay at a block of ``(·, d)`` rows whatever ``out``.
        """
        columns = self._live_columns(M)
        quadratic = linear = 0.0
        squares = M.new_zeros(M.shape[1])
        for a, b in row_spans(M.shape[0], M.shape[1]):
            rows = M[a:b]
            MG = rows_product(rows[:, columns], self.gram, columns)
            quadratic += inner(MG, rows)
            linear += inner(rows, self.cross.T[a:b])
            squares += column_sums(MG.neg_().add_(self.cross.T[a:b]), square=True)  # of crossᵀ − M·gram
        violations = self.structure.norms_of_squares(squares)
        return (*self._bound(M, quadratic, linear, violations), violations)

    def certificate(self, M: torch.Tensor):
        """``(gap, P(M), ‖(cross − gram Mᵀ)[g]‖ per group, crossᵀ − M·gram)``, one product.

        Memory: one ``(out, d)`` array (``M·gram``, turned into the residual in place);
        ``gram`` is read a block of rows at a time.
        """
        columns = self._live_columns(M)
        MG = rows_product(M[:, columns], self.gram, columns)  # (out, d)
        quadratic = inner(MG, M)
        linear = inner(M, self.cross.T)
        residual = MG.neg_().add_(self.cross.T)  # crossᵀ − M·gram, the negative gradient of the smooth part
        violations = self.structure.norms(residual)
        return (*self._bound(M, quadratic, linear, violations), violations, residual)

    @staticmethod
    def _live_columns(M: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(column_sums(M, square=False) > 0).flatten()

    def _bound(self, M, quadratic: float, linear: float, violations: torch.Tensor) -> tuple[float, float]:
        """``(gap, P(M))`` from ``tr(M·gram·Mᵀ)``, ``tr(M·cross)`` and the group violations."""
        penalty = self.lam * float(self.structure.norms(M).sum())
        primal = 0.5 * self.energy - linear + 0.5 * quadratic + penalty
        worst = float(violations.max()) if M.shape[1] and M.shape[0] else 0.0
        s = 1.0 if worst <= self.lam else self.lam / worst
        dual = s * (self.energy - linear) - 0.5 * s * s * (self.energy - 2 * linear + quadratic)
        return max(primal - dual, 0.0), primal


def _prox(values: torch.Tensor, threshold: float, labels: torch.Tensor, count: int) -> torch.Tensor:
    """Block soft-thresholding (Alg. 2): ``M_g · max(0, 1 − t/‖M_g‖)`` for each group."""
    squares = (values * values).sum(dim=0)
    norms = squares.new_zeros(count).index_add_(0, labels, squares).sqrt()
    factor = torch.clamp(1 - threshold / torch.clamp(norms, min=1e-300), min=0)
    return values * factor[labels]


def _fista(gram, cross_t, lam, labels, count, start, target_gap, max_iter, restart, gap_of, *,
           callback=None, lipschitz=None):
    """FISTA with step 1/L on ``gram`` (Alg. 1/2) from ``start: (out, d)``.

    Stops when ``gap_of(M) ≤ target_gap`` (checked every ``_CHECK_EVERY`` iterations) or
    after ``max_iter`` iterations. Returns ``(M, iterations, gap of M)``.
    """
    if lipschitz is None:
        lipschitz = spectral_norm(gram) * (1 + 1e-10)
    if lipschitz == 0:  # x ≡ 0, so cross = 0 and M = 0 is optimal
        zero = torch.zeros_like(start)
        return zero, 0, gap_of(zero)
    step = 1.0 / lipschitz
    M = start.clone()
    Y = M.clone()
    t = 1.0
    gap = None
    for iteration in range(1, max_iter + 1):
        gradient = Y @ gram - cross_t
        new = _prox(Y - step * gradient, lam * step, labels, count)
        if restart and float(((Y - new) * (new - M)).sum()) > 0:
            t = 1.0  # momentum points uphill: restart (O'Donoghue & Candès)
            Y = new
        else:
            t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
            Y = new + ((t - 1) / t_next) * (new - M)
            t = t_next
        M = new
        if callback is not None:
            callback(iteration, M)
        if iteration % _CHECK_EVERY == 0 or iteration == max_iter:
            gap = gap_of(M)
            if gap <= target_gap:
                return M, iteration, gap
    return M, max_iter, gap if gap is not None else gap_of(M)


def _accelerated(sub: _Problem, start, target, budget, restart, newton):
    """FISTA on a (working-set) problem with Newton phases on supports of at most
    ``newton`` columns (none when 0; module doc)."""
    structure = sub.structure
    lipschitz = spectral_norm(sub.gram) * (1 + 1e-10)

    def gap_of(m):
        return sub.gap(m)[0]

    def run_fista(M, iterations):
        return _fista(sub.gram, sub.cross.T, sub.lam, structure.labels, structure.count, M, target, iterations,
                      restart, gap_of, lipschitz=lipschitz)

    if not newton:
        M, used, _ = run_fista(start, budget)
        return M, used
    M, used, chunk = start, 0, _NEWTON_AFTER
    if bool((structure.norms(M) > 0).any()):  # warm start: its support may already be right
        M, used, gap = _newton(sub, M, target, min(_NEWTON_STEPS, budget), newton)
        if gap <= target:
            return M, used
    while used < budget:
        M, steps, gap = run_fista(M, min(chunk, budget - used))
        used += steps
        if gap <= target or used >= budget:
            break
        M, steps, gap = _newton(sub, M, target, min(_NEWTON_STEPS, budget - used), newton)
        used += steps
        if gap <= target:
            break
        chunk *= 2
    return M, used


def _newton(problem: _Problem, M, target, max_steps, limit):
    """Active-set Newton steps (module doc). Returns ``(M, steps, gap)``.

    A step has three parts, each of which lowers ``P``:

    1. every zero group that violates its optimality condition, ``‖v_g‖ > λ`` with
       ``v_g = (cross − gram Mᵀ)[g]`` (the negative gradient), enters by a block
       proximal step ``M_g ← prox_{λ/L_g}(M_g + v_gᵀ/L_g)``, ``L_g = ‖gram[g, g]‖`` (the
       exact block minimiser for single columns);
    2. the Newton direction on the groups with nonzero columns is computed; groups that
       the full step would take through zero (``‖M_g‖ + ⟨U_g, Δ_g⟩ ≤ 0``, where the
       quadratic model of the norm is no longer valid) get the same block step instead
       — which sets them to zero when that is optimal given the others — and are frozen
       while the direction is recomputed on the remaining groups;
    3. the Newton step is taken with Armijo backtracking and a Levenberg–Marquardt shift
       that grows after short steps (nearly singular Hessians: dependent active inputs at
       small λ) and shrinks after full ones.

    The phase ends at the gap target, after ``max_steps`` steps, when no step makes
    progress, when three steps in a row fail to halve the gap (the prox steps of FISTA
    take over), or when the support has more than ``limit`` columns. Returns the point
    of lowest objective seen.
    """
    structure, gram, lam = problem.structure, problem.gram, problem.lam
    labels = structure.labels
    gap, value, violations, residual = problem.certificate(M)
    best = (value, M, gap)
    slow, damping, step = 0, 0.0, 0

    def block_step(group: int) -> None:
        """Block proximal step on one group, keeping ``residual`` current."""
        nonlocal residual
        block = torch.nonzero(labels == group).flatten()
        own = gram[block][:, block]
        bound = float(own[0, 0]) if len(block) == 1 else float(torch.linalg.matrix_norm(own))
        if bound <= 0:
            return
        old = M[:, block]
        z = old + residual[:, block] / bound
        size = float(z.norm())
        new = z * max(0.0, 1 - lam / (bound * size)) if size > 0 else z
        M[:, block] = new
        residual -= (new - old) @ gram[block]

    for step in range(1, max_steps + 1):
        if len(structure.columns(structure.norms(M) > 0)) > limit:
            step -= 1  # no step taken: the support's block would not fit the memory budget
            break
        previous = gap
        M = M.clone()
        norms = structure.norms(M)
        entering = torch.nonzero((norms == 0) & (violations > lam)).flatten()
        for group in entering[torch.argsort(violations[entering], descending=True)].tolist():
            block_step(group)
        moved = entering.numel() > 0
        frozen = torch.zeros_like(norms, dtype=torch.bool)
        length = 0.0
        for attempt in range(2):
            norms = structure.norms(M)
            live = (norms > 0) & ~frozen
            if not bool(live.any()):
                break
            columns = structure.columns(live)
            if len(columns) > limit:  # grown past the budget by the entering groups
                break
            _, local = torch.unique(labels[columns], return_inverse=True)
            group_norms = norms[live]
            current = M[:, columns]
            unit = current / group_norms[local]
            gradient = lam * unit - residual[:, columns]
            direction = _newton_direction(gram, columns, unit, gradient, lam, local, group_norms, damping)
            if direction is None:
                break
            radial = group_norms.new_zeros(len(group_norms)).index_add_(0, local, (unit * direction).sum(dim=0))
            crossing = torch.nonzero(group_norms + radial <= 0).flatten()
            if attempt == 0 and crossing.numel():
                live_groups = torch.nonzero(live).flatten()
                for index in crossing[torch.argsort((radial / group_norms)[crossing])].tolist():
                    block_step(int(live_groups[index]))
                frozen[live_groups[crossing]] = True
                moved = True
                continue
            slope = float((gradient * direction).sum())
            if not slope < 0:
                break
            linear = -float((residual[:, columns] * direction).sum())
            curvature = inner(block_product(direction, gram, columns), direction)
            penalty = lam * float(group_norms.sum())
            length = 1.0
            for _ in range(40):
                trial = current + length * direction
                trial_norms = trial.new_zeros(len(group_norms)).index_add_(0, local, (trial * trial).sum(dim=0))
                change = length * linear + 0.5 * length * length * curvature + lam * float(trial_norms.sqrt().sum())
                if change - penalty <= 1e-4 * length * slope:
                    break
                length *= 0.5
            else:
                length = 0.0
            if length > 0:
                damping = max(100 * damping, 1e-10) if length < 0.25 else (damping / 10 if damping > 1e-12 else 0.0)
                M[:, columns] = trial
            break
        if length == 0 and not moved:
            break
        gap, value, violations, residual = problem.certificate(M)
        if value < best[0]:
            best = (value, M, gap)
        if gap <= target:
            return M, step, gap
        slow = slow + 1 if gap > 0.5 * previous else 0
        if slow >= 3:
            break
    return best[1], step, best[2]


def _newton_direction(gram, columns, unit, gradient, lam, local, group_norms, damping=0.0):
    """Newton direction ``−(H + μ)⁻¹·gradient`` on the support, ``(out, s)``, or None.

    ``G = gram[columns][:, columns]: (s, s)`` is the support's block, ``unit``,
    ``gradient: (out, s)``, ``local: (s,)`` the group (0..k−1) of each column,
    ``group_norms: (k,)``. ``H = H_A − Σ_g (λ/‖M_g‖)·u_g u_gᵀ`` where ``H_A: Δ ↦ Δ·A``,
    ``A = G + λ·D(1/‖M_g‖)`` and ``u_g = vec(U_g)``; by Woodbury
    ``H⁻¹ = H_A⁻¹ + H_A⁻¹ V (Λ⁻¹ − Vᵀ H_A⁻¹ V)⁻¹ Vᵀ H_A⁻¹`` with the ``k × k`` matrix
    ``(Vᵀ H_A⁻¹ V)_gh = Σ_{a∈g, b∈h} (UᵀU)_ab (A⁻¹)_ab``. The Levenberg–Marquardt shift
    ``μ = damping·mean(diag G)`` enters through ``A``; ``H + μ ≻ 0`` iff the Schur
    complement is, and the shift is increased when it is not (duplicated or dependent
    active inputs).

    Memory: one ``(s, s)`` buffer (``A`` gathered from ``gram``, factorised and inverted
    in place) and the ``(k, k)`` Schur complement; ``UᵀU`` is formed a block of rows at a
    time.
    """
    count, size = len(group_norms), len(columns)
    scale = group_norms[local]
    mean_diag = float(torch.diagonal(gram)[columns].mean()) if size else 0.0
    buffer = gram.new_empty(size, size)
    info = buffer.new_empty((), dtype=torch.int32)
    shifts = [damping] + [value for value in (1e-12, 1e-9, 1e-6, 1e-3) if value > damping]
    for shift in shifts:
        submatrix(gram, columns, columns, out=buffer)
        buffer.diagonal().add_(lam / scale)
        if shift:
            buffer.diagonal().add_(shift * mean_diag)
        torch.linalg.cholesky_ex(buffer, out=(buffer, info))
        if int(info) != 0:
            continue
        inverse = torch.cholesky_inverse(buffer, out=buffer)
        schur = _grouped_overlap(unit, inverse, local, count).neg_()
        schur.diagonal().add_(group_norms / lam)  # diag(‖M_g‖/λ) − Vᵀ H_A⁻¹ V
        torch.linalg.cholesky_ex(schur, out=(schur, info))
        if int(info) != 0:
            continue
        Z = -(gradient @ inverse)
        v = Z.new_zeros(count).index_add_(0, local, (unit * Z).sum(dim=0))
        w = torch.cholesky_solve(v.unsqueeze(1), schur).squeeze(1)
        direction = Z + (unit * w[local]) @ inverse
        if bool(torch.isfinite(direction).all()):
            return direction
    return None


def _grouped_overlap(unit, inverse, local, count):
    """``K: (k, k)``, ``K_gh = Σ_{a∈g, b∈h} (UᵀU)_ab (A⁻¹)_ab``, by blocks of rows of ``UᵀU``."""
    K = inverse.new_zeros(count, count)
    for start, stop in row_spans(*inverse.shape):
        rows = slice(start, stop)
        T = (unit[:, rows].T @ unit).mul_(inverse[rows])
        K.index_add_(0, local[rows], T.new_zeros(T.shape[0], count).index_add_(1, local, T))
    return K


def _working_set(problem: _Problem, start, target, max_iter, inner):
    """Solve on growing working sets of groups until the full problem's gap is reached.

    Each round keeps the active groups plus the groups that violate the optimality
    condition ``‖(cross − gram Mᵀ)[g]‖ ≤ λ`` most (up to twice the active count, at least
    16), solves that subproblem with ``inner`` to a gap a quarter of the current one, and
    checks the gap of the whole problem. Groups left out satisfy their optimality
    condition at zero, so the final gap certifies the whole problem.

    The subproblem's ``gram[W, W]`` is a view of ``problem.gram`` (every group, or a large
    working set, for which ``problem.gram`` is reordered in place for the round and
    restored after it, :func:`~netshrink.linalg.blocks.principal_block`) or, for a small
    working set, a gathered copy: never a second matrix of ``gram``'s size.
    """
    structure = problem.structure
    labels = structure.labels
    M = start  # replaced, never modified: the caller's start stays as it was
    iterations = 0
    while iterations < max_iter:
        gap, _, violations = problem.violations(M)  # ‖−gradient_g‖ for every group
        if gap <= target:
            break
        scores = violations / max(problem.lam, 1e-300)
        active = structure.norms(M) > 0
        scores[active] = math.inf
        size = max(16, 2 * int(active.sum()))
        order = torch.argsort(scores, descending=True)[:size]
        chosen = torch.zeros(structure.count, dtype=torch.bool, device=M.device)
        chosen[order[scores[order] >= 1.0]] = True
        if not bool(chosen.any()):
            chosen[order[0]] = True
        whole = bool(chosen.all())
        columns = structure.columns(chosen)
        _, remap = torch.unique(labels[columns], return_inverse=True)
        sub_structure = _Groups(len(columns), remap.cpu(), M.device)
        inner_target = target if whole else max(_INNER_RATIO * gap, 0.5 * target)
        budget = max_iter - iterations
        with principal_block(problem.gram, columns) as sub_gram:
            sub = _Problem(sub_gram, problem.cross[columns], problem.lam, sub_structure, problem.energy)
            start_sub, basis = M[:, columns], None
            if M.shape[0] > len(columns):  # output-side reduction of the subproblem (module doc)
                basis, upper = torch.linalg.qr(sub.cross.T)
                sub = _Problem(sub_gram, upper.T, problem.lam, sub_structure, problem.energy)
                start_sub = basis.T @ start_sub
            M_sub, used = inner(sub, start_sub, inner_target, budget)
            del sub, sub_gram
        iterations += used
        M = torch.zeros_like(M) if M is start else M.zero_()
        M[:, columns] = M_sub if basis is None else basis @ M_sub
        if used >= budget:
            break
    return M, iterations


def _altmin(problem: _Problem, start, target, max_iter, eps, restart, newton):
    """Alternating minimisation of the η-variational form (Alg. 3), finished by FISTA.

    For fixed η, ``M`` solves ``(gram + λ·D(η⁻¹)) Mᵀ = cross`` (module doc for the factor
    2 of the seed); then ``η_g = (‖M_g‖² + ε)^{1/2}``. ε starts at ``eps`` and shrinks
    tenfold whenever ``M`` changes by less than 1% (relative) in a round, down to 1e-12
    of its start (at most 200 rounds). As in §5.5 ("Better initial points") the result is
    the starting point of FISTA with Newton phases, which sets the inactive groups
    exactly to zero and runs to the duality gap. Memory: one buffer of ``gram``'s size,
    reused by every round.
    """
    gram, cross, lam, structure = problem.gram, problem.cross, problem.lam, problem.structure
    labels = structure.labels
    lipschitz = spectral_norm(gram)
    if lipschitz == 0:
        return torch.zeros_like(start), 0
    scale = float(structure.norms(cross.T).max()) / lipschitz  # a typical column norm of M
    if eps is None:
        eps = (1e-2 * scale) ** 2
    floor = eps * 1e-12
    M = start.clone()
    if float(M.abs().max()) > 0:
        eta = (structure.norms(M) ** 2 + eps).sqrt()
    else:
        eta = torch.full((structure.count,), max(scale, 1e-300), dtype=M.dtype, device=M.device)
    rounds = 0
    factor = torch.empty_like(gram)  # gram + λ·D(η⁻¹), factorised in place every round
    info = factor.new_empty((), dtype=torch.int32)
    while rounds < min(max_iter, 200) and eps >= floor:
        rounds += 1
        factor.copy_(gram).diagonal().add_(lam / eta[labels])
        torch.linalg.cholesky_ex(factor, out=(factor, info))
        if int(info) != 0:  # not reachable for λ > 0, ε > 0 (A ⪰ λ/max η); kept as a guard
            break
        new = torch.cholesky_solve(cross, factor).T
        change = float((new - M).norm()) / max(float(new.norm()), 1e-300)
        M = new
        eta = (structure.norms(M) ** 2 + eps).sqrt()
        if change < 1e-2:
            if problem.gap(M)[0] <= target:
                break
            eps *= 0.1
    polished, used = _accelerated(problem, M, target, max(max_iter - rounds, 1), restart, newton)
    return polished, rounds + used


def _output_basis(cross: torch.Tensor) -> torch.Tensor | None:
    """``Q: (out, r)`` orthonormal with ``crossᵀ = Q·(Qᵀcrossᵀ)`` when it pays, else None."""
    d, out = cross.shape
    if d == 0 or out <= 1:
        return None
    if out > d:  # rank ≤ d < out: exact thin QR of crossᵀ
        basis, _ = torch.linalg.qr(cross.T)
        return basis
    if out < _REDUCE_MIN_OUT:
        return None
    # numerical rank from one column-pivoted QR of crossᵀ, stopped at the first pivot
    # ≤ max(d, out)·ε_mach·|r₁₁| or once the reduction would no longer pay; its first
    # ``rank`` reflectors span the range of crossᵀ to round-off
    limit = int(_REDUCE_FACTOR * out)
    factors = cpqr(cross.T, k=limit + 1, tol=max(d, out) * torch.finfo(torch.float64).eps)
    if factors.rank == 0 or factors.rank > limit:
        return None
    return factors.Q.to(torch.float64)


def _normalised_groups(groups):
    return int(groups) if isinstance(groups, np.integer) else groups


def _check_tol(tol):
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise InvalidInputError(f"tol (relative duality gap) must be in (0, 1), got {tol!r}")


def _checked_lambda(lam, what: str = "λ") -> float:
    """``lam`` as a float (a one-element tensor is accepted); ``what`` names it in the error."""
    if isinstance(lam, torch.Tensor) and lam.numel() == 1:
        lam = float(lam)
    return _finite_nonnegative(lam, what)


def _finite_nonnegative(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(value) or value < 0:
        raise InvalidInputError(f"{what} must be a finite number ≥ 0, got {value!r}")
    return float(value)


def _checked(gram, cross, energy):
    gram = _as_float64(gram, "gram")
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise InvalidInputError(f"gram must be a square (d, d) matrix, got shape {tuple(gram.shape)}")
    cross = _as_float64(cross, "cross").to(gram.device)
    if cross.ndim != 2 or cross.shape[0] != gram.shape[0]:
        raise InvalidInputError(
            f"cross must be (d, out) with d = {gram.shape[0]} rows like gram, got shape {tuple(cross.shape)}"
        )
    scale = float(torch.linalg.vector_norm(gram, ord=math.inf)) if gram.numel() else 0.0
    if max_asymmetry(gram) > 1e-8 * max(scale, 1e-300):
        raise InvalidInputError("gram must be symmetric (it is E[x xᵀ])")
    if energy is None:
        energy = _smallest_energy(gram, cross)
    elif isinstance(energy, bool) or not isinstance(energy, (int, float, np.floating)) \
            or not math.isfinite(energy) or energy < 0:
        raise InvalidInputError(f"energy must be a finite number ≥ 0 (it is E‖y‖²), got {energy!r}")
    return gram, cross, float(energy)


def _smallest_energy(gram: torch.Tensor, cross: torch.Tensor) -> float:
    """``tr(crossᵀ gram⁺ cross)``: ``E‖ŷ‖²`` of the least-squares prediction of ``y`` from ``x``.

    Inputs that are identically zero (zero diagonal) are dropped; on the rest, with the
    Cholesky factor ``gram = L Lᵀ`` and ``cross = gram·B`` (true of statistics of data),
    ``tr(Bᵀ gram B) = ‖L⁻¹ cross‖²_F``. When the remaining block is numerically singular,
    ``B`` is the minimum-norm solution of ``gram B = cross`` (:func:`lstsq_from_gram`) and
    the value is ``tr(crossᵀ B)``. No eigensolver.
    """
    if gram.numel() == 0 or cross.numel() == 0:
        return 0.0
    live = torch.nonzero(torch.diagonal(gram) > 0).flatten()
    if live.numel() == 0:
        return 0.0
    block, rhs = principal_view(gram, live), cross[live]
    factor, info = torch.linalg.cholesky_ex(block)
    top = float(torch.diagonal(block).max())
    if int(info) == 0 and float(torch.diagonal(factor).min()) ** 2 > 1e-13 * top:
        z = torch.linalg.solve_triangular(factor, rhs, upper=False)
        return float((z * z).sum())
    return max(float((lstsq_from_gram(block, rhs).T * rhs).sum()), 0.0)


def _as_float64(value, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    if tensor.is_complex():
        raise InvalidInputError(f"{name} must be real, got dtype {tensor.dtype}")
    tensor = tensor.to(torch.float64)
    if not all_finite(tensor):
        raise InvalidInputError(f"{name} contains NaN or Inf")
    return tensor
