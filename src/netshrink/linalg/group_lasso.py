"""ℓ2,1 (group-lasso) regression solved from Gram statistics (Robin §2.4, §2.7, §5.4–5.5).

Problem (6) of the seed in expectation form. For inputs ``x ∈ ℝᵈ`` and targets
``y ∈ ℝᵒᵘᵗ`` only three statistics are needed, whatever the number of samples:

    gram = E[x xᵀ]  (d, d),    cross = E[x yᵀ]  (d, out),    energy = E‖y‖²,

and the objective over ``M: (out, d)`` is

    P(M) = ½·energy − tr(M·cross) + ½·tr(M·gram·Mᵀ) + λ·Σ_g ‖M[:, g]‖_F
         = ½·E‖y − M x‖² + λ·‖M‖₂,₁,

the groups ``g`` partitioning the input columns (a neuron's column, a channel's
``kh·kw`` patch columns, a channel's ``h·w`` features after a flatten). With
``gram = XᵀX/n`` and ``cross = XᵀY/n`` this is exactly scikit-learn's
``MultiTaskLasso(alpha=λ)`` objective.

Solvers:

- ``"fista"`` (Alg. 1 and 2): accelerated proximal gradient with step ``1/L``,
  ``L = λ_max(gram)``, with the gradient-based adaptive restart of O'Donoghue & Candès
  (restart the momentum when it points uphill), which keeps Lemma 2's rate and removes
  the oscillations of plain FISTA on ill-conditioned Grams. Run on a *working set* of
  groups (the active ones plus the worst violators of the optimality conditions, grown
  until the duality gap of the whole problem is small): each iteration then costs
  ``out·|W|²`` instead of ``out·d²``; the result is the solution of the full problem.
- ``"altmin"`` (Alg. 3, §5.5): alternating minimisation of the η-variational form
  ``‖M_g‖ = min_η ‖M_g‖²/(2η) + η/2`` with ε-smoothing. For fixed η the minimiser of
  our objective solves ``(gram + λ·D(η⁻¹)) Mᵀ = cross`` (the seed's Alg. 3 writes
  ``B = 2XYᵀ/N`` against ``R + λD``, which is our system for the objective without the
  ½ and with λ/2: the factor 2 is absorbed here); ``η_g = (‖M_g‖² + ε)^{1/2}``. ε is
  decreased geometrically, and a few FISTA steps at the end make inactive groups
  exactly zero.

Stopping: the duality gap, never an iteration count. With a factor ``RᵀR = gram`` and
a response ``RᵀY_R = cross``, ``‖Y_R‖² = energy``, the dual point ``θ = s·(Y_R − R Mᵀ)``,
``s = min(1, λ / max_g ‖(cross − gram Mᵀ)[g, :]‖_F)`` gives

    D = s·(energy − tr(M·cross)) − ½·s²·(energy − 2·tr(M·cross) + tr(M·gram·Mᵀ)),

computable from the statistics alone, and ``gap = P(M) − D ≥ P(M) − P(M*)``. Solvers
stop when ``gap ≤ tol · ½·energy`` (relative to ``P(0)``).

Output-side reduction: ``P`` depends on ``M`` only through ``tr(M·gram·Mᵀ)``,
``tr(M·cross)`` and column norms, all invariant under ``M → QM`` for orthogonal ``Q``.
When ``out > d``, ``crossᵀ = Q·C`` (thin QR, ``Q: (out, d)``) reduces the problem to
``d`` outputs with ``cross' = Cᵀ``; the solution is ``M = Q·M'``. (Rows of ``M`` outside
``range(Q)`` only add to the quadratic term and the norms, so they vanish at the optimum.)
The same reduction is applied to every working-set subproblem with fewer columns than
outputs — the common case: a layer with 1024 outputs whose solution uses 450 inputs
iterates on a 450 × 450 problem, 2.3× fewer flops per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

from ..errors import InvalidInputError
from .lstsq import lstsq_from_gram
from .spectral import spectral_norm

SOLVERS = ("fista", "altmin")
_CHECK_EVERY = 10  # gap checks of the inner FISTA loop


@dataclass(frozen=True)
class GroupLassoResult:
    """A solution of the ℓ2,1 problem.

    Attributes:
        M: ``(out, d)`` float64 solution.
        active: ``(k,)`` int64 ascending indices of the groups with a nonzero column.
        gap: final duality gap (absolute, objective units).
        objective: ``P(M)``.
        lam: the λ solved for.
        iterations: proximal-gradient (or alternating) iterations run.
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
        squares = (matrix * matrix).sum(dim=0)
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
    labels ``0..g−1`` in any order (every label used).
    """
    if groups is None:
        return torch.arange(d)
    if isinstance(groups, bool):
        raise InvalidInputError(f"groups must be None, a group size or labels, got {groups!r}")
    if isinstance(groups, int):
        if groups < 1:
            raise InvalidInputError(f"the group size must be a positive integer, got {groups}")
        if d % groups:
            raise InvalidInputError(
                f"groups of {groups} columns don't divide the input: {d} columns is not a multiple of {groups}"
            )
        return torch.arange(d).div(groups, rounding_mode="floor")
    labels = torch.as_tensor(groups)
    if labels.ndim != 1 or labels.shape[0] != d or labels.is_floating_point():
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

    At ``M = 0`` the gradient is ``−crossᵀ``; zero is optimal iff every group's block of
    it has norm ≤ λ.
    """
    cross = _as_float64(cross, "cross")
    if cross.ndim != 2:
        raise InvalidInputError(f"cross must be (d, out), got shape {tuple(cross.shape)}")
    structure = _Groups(cross.shape[0], groups, cross.device)
    return float(structure.norms(cross.T).max()) if cross.shape[0] else 0.0


def duality_gap(gram, cross, M, lam: float, groups=None, *, energy: float) -> float:
    """``P(M) − D(θ(M)) ≥ P(M) − P(M*)`` for the problem of the module doc."""
    gram, cross, energy = _checked(gram, cross, energy)
    M = _as_float64(M, "M").to(gram.device)
    structure = _Groups(gram.shape[0], groups, gram.device)
    return _Problem(gram, cross, float(lam), structure, energy).gap(M)[0]


def group_lasso(
    gram, cross, lam: float, groups=None, solver: str = "fista", tol: float = 1e-6, *,
    energy: float | None = None, init: torch.Tensor | None = None, max_iter: int = 20000,
    eps: float | None = None, restart: bool = True,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> GroupLassoResult:
    """Solve ``min_M P(M)`` (module doc) for ``gram: (d, d)``, ``cross: (d, out)``.

    Args:
        lam: λ ≥ 0 (λ ≥ :func:`lambda_max` gives ``M = 0``).
        groups: None, a group size or labels (see :func:`group_labels`).
        solver: ``"fista"`` or ``"altmin"``.
        tol: stop when the duality gap is at most ``tol·½·energy``.
        energy: ``E‖y‖²``; default the smallest value consistent with the statistics,
            ``tr(crossᵀ gram⁺ cross)`` (the targets' part explained by ``x``).
        init: warm start ``(out, d)``.
        max_iter: cap on iterations; ``converged`` tells whether the gap was reached.
        eps: initial smoothing of ``"altmin"`` (default ``1e-2·max_g‖cross_g‖²/L²``).
        restart: adaptive momentum restart of FISTA (on by default).
        callback: ``callback(k, M_k)`` after every FISTA iteration on the full problem;
            disables the working set so the iterates are those of Alg. 1.
    """
    gram, cross, energy = _checked(gram, cross, energy)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise InvalidInputError(f"λ must be a finite number ≥ 0, got {lam!r}")
    if solver not in SOLVERS:
        raise InvalidInputError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}")
    if not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise InvalidInputError(f"tol must be in (0, 1), got {tol!r}")
    d, out = cross.shape
    structure = _Groups(d, groups, gram.device)
    reduction = None
    if out > d and callback is None:
        reduction, upper = torch.linalg.qr(cross.T)  # crossᵀ = Q C
        cross = upper.T
    start = cross.new_zeros(cross.shape[1], d)
    if init is not None:
        init = _as_float64(init, "init").to(gram.device)
        if init.shape != (out, d):
            raise InvalidInputError(f"init must have shape {(out, d)}, got {tuple(init.shape)}")
        start = init if reduction is None else reduction.T @ init
    problem = _Problem(gram, cross, float(lam), structure, energy)
    target = tol * 0.5 * energy
    if lam == 0:  # plain least squares: solved directly
        M, iterations = lstsq_from_gram(gram, cross), 0
    elif callback is not None:  # the iterates of Alg. 1 on the full problem
        M, iterations = _fista(gram, cross.T, lam, structure.labels, start, target, max_iter, restart,
                               lambda m: problem.gap(m)[0], callback)
    elif solver == "fista":
        def inner(sub, labels, start_sub, inner_target, budget):
            return _fista(sub.gram, sub.cross.T, lam, labels, start_sub, inner_target, budget, restart,
                          lambda m: sub.gap(m)[0])

        M, iterations = _working_set(problem, start, target, max_iter, inner)
    else:
        def inner(sub, labels, start_sub, inner_target, budget):
            return _altmin(sub, start_sub, inner_target, budget, eps)

        M, iterations = _working_set(problem, start, target, max_iter, inner)
    gap, objective = problem.gap(M)
    if lam == 0:  # the dual bound is degenerate at λ = 0; the direct solve is optimal
        gap = 0.0
    if reduction is not None:
        M = reduction @ M
    active = torch.nonzero(structure.norms(M) > 0).flatten()
    return GroupLassoResult(M=M, active=active.cpu(), gap=gap, objective=objective, lam=float(lam),
                            iterations=iterations, converged=gap <= target)


def group_lasso_keep(
    gram, cross, keep: int, groups=None, solver: str = "fista", tol: float = 1e-6, *,
    energy: float | None = None, max_steps: int = 60,
) -> GroupLassoResult:
    """The solution with exactly ``keep`` active groups, by a λ search with warm starts.

    Bisection on ``log λ`` in ``(0, λ_max)``, each solve warm-started from the solution
    at the nearest λ already solved. If the number of active groups jumps over ``keep``
    (ties), the smallest solved λ with more than ``keep`` active groups is taken and its
    ``keep`` groups of largest norm are kept (the others zeroed). If even λ → 0 leaves
    fewer than ``keep`` groups nonzero at the gap tolerance (the rest explain almost
    nothing), the support is completed with the groups that violate their optimality
    condition most, i.e. would enter next; ``active`` then includes groups with zero
    columns, for a refit to use.
    """
    gram, cross, energy = _checked(gram, cross, energy)
    structure = _Groups(gram.shape[0], groups, gram.device)
    count = structure.count
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= count:
        raise InvalidInputError(f"keep must be an integer in [1, {count}] (the number of groups), got {keep!r}")
    alive = int((structure.norms(torch.diagonal(gram).clamp(min=0).sqrt().unsqueeze(0)) > 0).sum())
    if keep > alive:
        raise InvalidInputError(
            f"keep={keep} groups, but only {alive} of {count} groups are not identically zero in the "
            "statistics: no λ > 0 reaches it; use lam=0 to keep everything"
        )
    high = top = lambda_max(cross, groups)
    if high == 0:
        raise InvalidInputError("cross is zero: every λ > 0 removes every group")
    solved: dict[float, GroupLassoResult] = {}

    def solve(lam: float) -> GroupLassoResult:
        nearest = min(solved, key=lambda other: abs(math.log(other / lam)), default=None)
        init = solved[nearest].M if nearest is not None else None
        solved[lam] = group_lasso(gram, cross, lam, groups, solver, tol, energy=energy, init=init)
        return solved[lam]

    low, low_count = 0.0, count  # λ → 0 keeps every live group
    lam = high * 0.5
    for _ in range(max_steps):
        result = solve(lam)
        active = len(result.active)
        if active == keep:
            return result
        if active > keep:
            low, low_count = lam, active
        else:
            high = lam
        lam = math.sqrt(low * high) if low > 0 else high * 0.1
        if (low > 0 and high / low < 1 + 1e-9) or (low == 0 and lam < 1e-10 * top):
            break
    above = [r for lam_, r in sorted(solved.items()) if len(r.active) > keep]
    if not above:
        # Even λ → 0 leaves fewer than ``keep`` groups above the gap tolerance: the others
        # explain almost nothing. Complete the support with the groups whose optimality
        # condition is violated most (those that would enter next), zero columns for them.
        best = solved[min(solved)]
        residual = cross.T - best.M @ gram
        scores = structure.norms(residual)
        chosen = structure.norms(best.M) > 0
        scores[chosen] = math.inf
        chosen[torch.argsort(scores, descending=True)[:keep]] = True
        gap, objective = _Problem(gram, cross, best.lam, structure, energy).gap(best.M)
        return GroupLassoResult(M=best.M, active=torch.nonzero(chosen).flatten().cpu(), gap=gap,
                                objective=objective, lam=best.lam, iterations=best.iterations,
                                converged=False)
    best = above[-1]  # the largest λ with more than keep groups
    norms = structure.norms(best.M)
    chosen = torch.zeros(count, dtype=torch.bool, device=gram.device)
    chosen[torch.argsort(norms, descending=True)[:keep]] = True
    M = best.M * chosen[structure.labels].to(best.M.dtype)
    gap, objective = _Problem(gram, cross, best.lam, structure, energy).gap(M)
    return GroupLassoResult(M=M, active=torch.nonzero(chosen).flatten().cpu(), gap=gap,
                            objective=objective, lam=best.lam, iterations=best.iterations,
                            converged=False)


# --------------------------------------------------------------------------------------


class _Problem:
    """The objective, its gradient, prox and duality gap (on all or a subset of columns)."""

    def __init__(self, gram, cross, lam, structure: _Groups, energy):
        self.gram, self.cross, self.lam, self.structure, self.energy = gram, cross, lam, structure, energy

    def gap(self, M: torch.Tensor) -> tuple[float, float]:
        """``(gap, P(M))``."""
        columns = torch.nonzero(M.abs().sum(dim=0) > 0).flatten()
        MG = M[:, columns] @ self.gram[columns]  # (out, d)
        quadratic = float((MG * M).sum())
        linear = float((M * self.cross.T).sum())
        penalty = self.lam * float(self.structure.norms(M).sum())
        primal = 0.5 * self.energy - linear + 0.5 * quadratic + penalty
        worst = float(self.structure.norms(self.cross.T - MG).max()) if M.shape[1] else 0.0
        s = 1.0 if worst <= self.lam else self.lam / worst
        dual = s * (self.energy - linear) - 0.5 * s * s * (self.energy - 2 * linear + quadratic)
        return max(primal - dual, 0.0), primal


def _prox(values: torch.Tensor, threshold: float, labels: torch.Tensor) -> torch.Tensor:
    """Block soft-thresholding (Alg. 2): ``M_g · max(0, 1 − t/‖M_g‖)`` for each group."""
    squares = (values * values).sum(dim=0)
    count = int(labels.max()) + 1 if labels.numel() else 0
    norms = squares.new_zeros(count).index_add_(0, labels, squares).sqrt()
    factor = torch.clamp(1 - threshold / torch.clamp(norms, min=1e-300), min=0)
    return values * factor[labels]


def _fista(gram, cross_t, lam, labels, start, target_gap, max_iter, restart, gap_of, callback=None):
    """FISTA with step 1/L on ``gram`` (Alg. 1/2); stops when ``gap_of(M) ≤ target_gap``."""
    lipschitz = spectral_norm(gram) * (1 + 1e-10)
    if lipschitz == 0:  # x ≡ 0, so cross = 0 and M = 0 is optimal
        return torch.zeros_like(start), 0
    step = 1.0 / lipschitz
    M = start.clone()
    Y = M.clone()
    t = 1.0
    for iteration in range(1, max_iter + 1):
        gradient = Y @ gram - cross_t
        new = _prox(Y - step * gradient, lam * step, labels)
        if restart and float(((Y - new) * (new - M)).sum()) > 0:
            t = 1.0  # momentum points uphill: restart (O'Donoghue & Candès)
            Y = new.clone()
        else:
            t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
            Y = new + ((t - 1) / t_next) * (new - M)
            t = t_next
        M = new
        if callback is not None:
            callback(iteration, M)
        if iteration % _CHECK_EVERY == 0 and gap_of(M) <= target_gap:
            return M, iteration
    return M, max_iter


def _working_set(problem: _Problem, start, target, max_iter, inner):
    """Solve on growing working sets of groups until the full problem's gap is reached.

    Each round keeps the active groups plus the groups that violate the optimality
    condition ``‖(cross − gram Mᵀ)[g]‖ ≤ λ`` most (up to twice the active count, at least
    16), solves that subproblem with ``inner`` to a gap a quarter of the current one, and
    checks the gap of the whole problem. Groups left out satisfy their optimality
    condition at zero, so the final gap certifies the whole problem.
    """
    structure = problem.structure
    labels = structure.labels
    M = start.clone()
    iterations = 0
    while iterations < max_iter:
        gap, _ = problem.gap(M)
        if gap <= target:
            break
        residual = problem.cross.T - M @ problem.gram  # (out, d): the negative gradient
        scores = structure.norms(residual) / max(problem.lam, 1e-300)
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
        sub_gram = problem.gram[columns][:, columns]
        sub = _Problem(sub_gram, problem.cross[columns], problem.lam,
                       _Groups(len(columns), remap.cpu(), M.device), problem.energy)
        inner_target = target if whole else max(0.25 * gap, 0.5 * target)
        budget = max_iter - iterations
        start_sub, basis = M[:, columns], None
        if M.shape[0] > len(columns):  # output-side reduction of the subproblem (module doc)
            basis, upper = torch.linalg.qr(sub.cross.T)
            sub = _Problem(sub_gram, upper.T, problem.lam, sub.structure, problem.energy)
            start_sub = basis.T @ start_sub
        M_sub, used = inner(sub, remap.to(M.device), start_sub, inner_target, budget)
        iterations += used
        M = torch.zeros_like(M)
        M[:, columns] = M_sub if basis is None else basis @ M_sub
        if used >= budget:
            break
    return M, iterations


def _altmin(problem: _Problem, start, target, max_iter, eps):
    """Alternating minimisation of the η-variational form (Alg. 3), finished by FISTA.

    For fixed η, ``M`` solves ``(gram + λ·D(η⁻¹)) Mᵀ = cross``; then
    ``η_g = (‖M_g‖² + ε)^{1/2}``. ε starts at ``eps`` and shrinks tenfold whenever ``M``
    changes by less than 1% (relative) in a round, down to 1e-12 of its start. As in
    §5.5 ("Better initial points") the result is the starting point of FISTA, which sets
    the inactive groups exactly to zero and runs to the duality gap.
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
        eta = torch.full((structure.count,), scale, dtype=M.dtype, device=M.device)
    rounds = 0
    while rounds < min(max_iter, 200) and eps >= floor:
        rounds += 1
        factor, info = torch.linalg.cholesky_ex(gram + torch.diag(lam / eta[labels]))
        if int(info) != 0:
            raise InvalidInputError("the alternating-minimisation system is not positive definite")
        new = torch.cholesky_solve(cross, factor).T
        change = float((new - M).norm()) / max(float(new.norm()), 1e-300)
        M = new
        eta = (structure.norms(M) ** 2 + eps).sqrt()
        if change < 1e-2:
            if problem.gap(M)[0] <= target:
                break
            eps *= 0.1
    polished, used = _fista(gram, cross.T, lam, labels, M, target, max(max_iter - rounds, 1), True,
                            lambda m: problem.gap(m)[0])
    return polished, rounds + used


def _checked(gram, cross, energy):
    gram = _as_float64(gram, "gram")
    cross = _as_float64(cross, "cross").to(gram.device)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise InvalidInputError(f"gram must be a square (d, d) matrix, got shape {tuple(gram.shape)}")
    if cross.ndim != 2 or cross.shape[0] != gram.shape[0]:
        raise InvalidInputError(
            f"cross must be (d, out) with d = {gram.shape[0]} rows like gram, got shape {tuple(cross.shape)}"
        )
    scale = float(gram.abs().max()) if gram.numel() else 0.0
    if float((gram - gram.T).abs().max() if gram.numel() else 0) > 1e-8 * max(scale, 1e-300):
        raise InvalidInputError("gram must be symmetric (it is E[x xᵀ])")
    if energy is None:
        energy = _smallest_energy(gram, cross)
    elif isinstance(energy, bool) or not isinstance(energy, (int, float)) or not math.isfinite(energy) or energy < 0:
        raise InvalidInputError(f"energy must be a finite number ≥ 0 (it is E‖y‖²), got {energy!r}")
    return gram, cross, float(energy)


def _smallest_energy(gram: torch.Tensor, cross: torch.Tensor) -> float:
    """``tr(crossᵀ gram⁺ cross)``: ``E‖ŷ‖²`` of the least-squares prediction of ``y`` from ``x``."""
    if gram.numel() == 0:
        return 0.0
    values, vectors = scipy.linalg.eigh(gram.cpu().numpy())
    cutoff = max(values.max(initial=0.0), 0.0) * gram.shape[0] * np.finfo(np.float64).eps
    keep = values > cutoff
    projected = vectors[:, keep].T @ cross.cpu().numpy()
    return float(((projected**2).sum(axis=1) / values[keep]).sum())


def _as_float64(value, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.float64)
    tensor = tensor.to(torch.float64)
    if not torch.isfinite(tensor).all():
        raise InvalidInputError(f"{name} contains NaN or Inf")
    return tensor
