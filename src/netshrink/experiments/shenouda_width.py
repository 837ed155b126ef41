"""Seed 002 (Shenouda, Parhi, Lee & Nowak): the width-bound experiment (issue 4, item 4).

The problem. For ``X: (K, N)`` (row ``k`` holds candidate neuron ``k``'s values on the
``N`` data points) and ``Y: (D, N)`` (the ``D`` targets on the same points),

    p* = min_V Σ_k ‖V[:, k]‖₂   subject to   V X = Y,         V: (D, K),

the minimum-ℓ2,1-norm interpolant (the seed's multi-task lasso in the interpolation
limit; the seed's README, "Multi-Task Lasso Experiments"). The paper's width bound: some
optimal ``V`` has at most ``rank(X)·rank(Y) ≤ N·D`` nonzero columns ("active neurons").
A feasible ``V`` exists iff the rows of ``Y`` lie in the row space of ``X``; for Gaussian
``X`` that needs ``K ≥ N`` (then ``rank X = N``), and the low-rank variant draws ``Y``
inside the row space of its rank-``r`` ``X``.

Brute force (the seed's ``brute_cvx_multi_task_lasso.py``, Fig. 5: ``N = 3, D = 2,
K = 7…11``). ``p*`` from cvxpy (CLARABEL, tolerances 1e-10); then supports ``S`` of
size ``s = rank(Y), rank(Y)+1, …`` (a smaller support cannot reach ``rank(Y)``) are
enumerated until one attains ``p*``. A support is feasible iff ``Y`` lies in the row
space of ``X[S]`` (least squares, relative residual ≤ 1e-8; generic infeasible supports
have residuals of order one); when ``X[S]`` has full row rank the interpolant on ``S`` is
unique, ``Y·X[S]⁺``, otherwise cvxpy solves the restricted problem. ``S`` is optimal when
its value exceeds ``p*`` by at most ``RTOL = 1e-8`` (relative), decided on certified
brackets: every cvxpy value lies between the objective of an exactly feasible point (the
solver's ``V`` projected onto ``{V X = Y}``; the value reported) and the dual bound
``|⟨Λ, Y⟩| / max_k ‖Λ X[k]‖`` (weak duality: ``⟨Λ, Y⟩ = Σ_k ⟨V[:, k], Λ X[k]⟩``). ``S`` is
accepted when even the largest excess the brackets allow is ≤ RTOL, rejected when even
the smallest is > RTOL, and a RuntimeError is raised otherwise (never seen: CLARABEL at
tolerances 1e-10 brackets to 1e-10…4e-9, so a true optimum's largest possible excess stays
below 1e-8). So no optimal support is rejected, and a non-optimal one is accepted only if
its true excess is ≤ 1e-8. The records keep the smallest excess of every rejected
support to show how far the non-optimal ones lie. A tolerance of 1e-6 would be too loose:
in the 500 trials of the full run the closest rejected supports lay 8.8e-7 (K = 7) and
7.5e-8 (K = 11) above ``p*``; the first would have been accepted.

Larger problems (the seed's ``cvx_multi_task_lasso.ipynb``, Figs. 3–4: ``D = N = 10``,
``K = 500``) with :func:`netshrink.linalg.group_lasso`. With ``x = X[:, n]`` (the ``K``
neurons are the inputs) and ``y = Y[:, n]`` (the ``D`` targets are the outputs),
``gram = X Xᵀ/N``, ``cross = X Yᵀ/N`` and ``energy = ‖Y‖²/N``, it minimises
``P_λ(V) = ‖Y − V X‖²/(2N) + λ Σ_k ‖V[:, k]‖``. The λ → 0 limit is the minimum-norm
interpolant: for any interpolant ``V*`` of norm ``p*``, ``P_λ(V_λ) ≤ P_λ(V*) = λ p*``, so
``‖V_λ‖₂,₁ ≤ p*`` and ``‖Y − V_λ X‖² ≤ 2Nλ p* → 0``; the ``V_λ`` are bounded, and every
limit point interpolates with norm ≤ ``p*``, i.e. is optimal. (With a duality gap ``g``
the first bound reads ``‖V_λ‖₂,₁ − g/λ ≤ p*``: a certified lower bound on ``p*``; the
projection of ``V_λ`` onto ``{V X = Y}`` gives an upper one.) The path starts at
``λ_max/√10`` and divides λ by √10 per step, warm-started, with the gap at 1e-14 of
``P(0)`` (the floor of the Gram-statistics objective is about 1e-16), until
``‖V X − Y‖/‖Y‖ ≤ 1e-6``; the residual falls about linearly in λ (target reached near
``λ ≈ 3e-7 λ_max``, 13 steps).
Active neurons: cvxpy's solutions count columns above ``ACTIVE_RTOL = 1e-6`` of the
largest (the next column is typically 1e-8 to 1e-7 of it). The path's solutions count above
``PATH_ACTIVE_RTOL = 1e-4``: at the gap floor the group lasso resolves column norms only
to about 1e-5 of the largest — columns that are nearly tight in the dual but vanish in the
limit keep norms of 1e-6…3e-5 at every small λ, not O(λ) — while genuinely active columns
can be as small as 2e-4. The count is *clear-cut* when every column norm is a factor 10 or
more away from the threshold (≥ 1e-3 or ≤ 1e-5); the first ``verify_trials`` problems of
each variant and every problem whose count is not clear-cut are also solved by cvxpy,
whose count uses the same threshold (with ``D = N = 10, K = 500`` about one problem in ten
is not clear-cut, and every one of them matched cvxpy's count).

:func:`run` writes one folder, atomically::

    brute_force.png/.json     sparsest optimal widths per K (N = 3, D = 2) against
                              N and rank(X)·rank(Y)
    random_widths.png/.json   active neurons of the λ → 0 path: full-rank X against the
                              lines N and N·D + 1, low-rank X against r and r·D
    summary.md                the numbers behind both figures, the bound checks, run times
    run.json                  settings, run times, versions

Every PNG is drawn from the JSON of the same stem alone. Everything is seeded: trial
``t`` of a case draws its data from ``numpy.random.default_rng((seed, case, K, t))``.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from netshrink.errors import InvalidInputError
from netshrink.experiments.runtime import Log, output_folder, torch_threads, versions, write_json

__all__ = [
    "run", "Settings", "FULL", "QUICK", "Interpolant", "SupportSearch", "PathSolution",
    "BruteForceTrial", "PathTrial", "random_problem", "min_norm_interpolant",
    "sparsest_optimal_support", "path_interpolant", "brute_force_trial", "path_trial",
    "brute_force_records", "path_records",
]

#: A support is optimal when its value exceeds p* by at most this (relative); module doc.
RTOL = 1e-8
#: Active neuron of a cvxpy solution: column norm above this fraction of the largest.
ACTIVE_RTOL = 1e-6
#: Active neuron of the λ → 0 path (and of its cvxpy check); module doc.
PATH_ACTIVE_RTOL = 1e-4
#: A cvxpy solve whose certificate (upper − lower bound) is wider than this (relative) failed.
CERTIFICATE_RTOL = 1e-7
#: Y lies in the row space of X[S] when the least-squares residual is below this (relative).
FEASIBLE_RTOL = 1e-8
#: CLARABEL's gap and feasibility tolerances (1e-11 starts returning "optimal_inaccurate").
CLARABEL_TOL = 1e-10
#: Duality-gap tolerance of group_lasso along the path (fraction of P(0) = energy/2).
PATH_TOL = 1e-14
#: The path stops at this relative residual ‖V X − Y‖/‖Y‖ ...
RESIDUAL_TARGET = 1e-6
#: ... dividing λ by this per step, at most PATH_STEPS times (down to 1e-10 λ_max).
PATH_FACTOR = math.sqrt(10.0)
PATH_STEPS = 20
#: The brute force enumerates up to 2^K supports; beyond this K it is not sensible.
MAX_BRUTE_K = 16
#: Seed case labels: (seed, case, K, trial) seeds one trial.
CASES = {"brute_force": 0, "full_rank": 1, "low_rank": 2}
#: torch threads of the group-lasso solves (2-core machine shared with other jobs).
THREADS = 1


@dataclass(frozen=True)
class Settings:
    """Sizes of one run (``FULL`` or ``QUICK``)."""

    seed: int
    # brute force: N points, D outputs, each K, trials per K
    brute_N: int
    brute_D: int
    brute_K: tuple[int, ...]
    brute_trials: int
    # λ → 0 path on larger problems: one K, full-rank and rank-r X
    path_N: int
    path_D: int
    path_K: int
    path_trials: int
    low_rank: int
    low_rank_trials: int
    verify_trials: int  # path problems per variant also solved by cvxpy (besides the not clear-cut ones)


FULL = Settings(seed=2, brute_N=3, brute_D=2, brute_K=(7, 8, 9, 10, 11), brute_trials=100,
                path_N=10, path_D=10, path_K=500, path_trials=100, low_rank=5, low_rank_trials=100,
                verify_trials=20)
QUICK = Settings(seed=2, brute_N=3, brute_D=2, brute_K=(7, 8, 9), brute_trials=3,
                 path_N=10, path_D=10, path_K=100, path_trials=3, low_rank=5, low_rank_trials=3,
                 verify_trials=3)


# --------------------------------------------------------------------------------------
# problems and checks
# --------------------------------------------------------------------------------------


def random_problem(rng: np.random.Generator, K: int, N: int, D: int,
                   rank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian ``X: (K, N)`` and ``Y: (D, N)``; with ``rank = r``: ``X = A B``, ``Y = C B``.

    ``A: (K, r)``, ``B: (r, N)``, ``C: (D, r)`` Gaussian, so ``rank X = r`` and the rows of
    ``Y`` lie in the row space of ``X`` (an interpolant exists; ``rank Y = min(D, r)``).
    Full rank needs ``K ≥ N``: otherwise ``rank X = K < N`` and a generic ``Y`` has no
    interpolant.
    """
    _check_sizes(K, N, D, rank)
    if rank is None:
        return rng.standard_normal((K, N)), rng.standard_normal((D, N))
    basis = rng.standard_normal((rank, N))
    return rng.standard_normal((K, rank)) @ basis, rng.standard_normal((D, rank)) @ basis


def _check_sizes(K, N, D, rank=None) -> None:
    for name, value in (("K (candidate neurons)", K), ("N (data points)", N), ("D (outputs)", D)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
    if rank is None:
        if K < N:
            raise InvalidInputError(
                f"K = {K} candidate neurons < N = {N} data points: a full-rank Gaussian X has rank K < N "
                "and a generic Y has no interpolant V X = Y. Use K ≥ N, or the low-rank variant (rank=r ≤ K)."
            )
        return
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank < N:
        raise InvalidInputError(f"the low-rank variant needs an integer rank r with 1 ≤ r < N = {N}, got {rank!r}")
    if rank > K:
        raise InvalidInputError(f"rank r = {rank} exceeds K = {K}: X = A B with A: (K, r) has rank ≤ K")


def _checked_pair(X, Y) -> tuple[np.ndarray, np.ndarray]:
    """``X: (K, N)``, ``Y: (D, N)`` as float64 arrays; Y nonzero and interpolable."""
    arrays = []
    for name, value in (("X", X), ("Y", Y)):
        array = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
        if array.ndim != 2 or 0 in array.shape:
            raise InvalidInputError(f"{name} must be a nonempty 2-D matrix, got shape {array.shape}")
        if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
            raise InvalidInputError(f"{name} must be real, got dtype {array.dtype}")
        array = array.astype(np.float64)
        if not np.isfinite(array).all():
            raise InvalidInputError(f"{name} contains NaN or Inf")
        arrays.append(array)
    X, Y = arrays
    if X.shape[1] != Y.shape[1]:
        raise InvalidInputError(
            f"X: (K, N) and Y: (D, N) must have the same N (columns = data points), got {X.shape} and {Y.shape}"
        )
    if not np.any(Y):
        raise InvalidInputError("Y is zero: the minimum-norm interpolant is V = 0, there is nothing to count")
    residual = _least_squares(X, Y)[1]
    if residual > FEASIBLE_RTOL:
        raise InvalidInputError(
            f"no V solves V X = Y: the rows of Y are not in the row space of X (relative residual "
            f"{residual:.2e}); use K ≥ N with a full-rank X, or draw Y inside X's row space"
        )
    return X, Y


def _least_squares(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Minimum-norm ``W = Y X⁺`` (``(D, K)``), ``‖W X − Y‖/‖Y‖`` and ``rank X``."""
    solution, _, rank, _ = np.linalg.lstsq(X.T, Y.T, rcond=None)
    W = solution.T
    return W, float(np.linalg.norm(W @ X - Y) / np.linalg.norm(Y)), int(rank)


def _rank(A: np.ndarray) -> int:
    """Numerical rank (singular values above ``max(shape)·ε·σ₁``, as ``lstsq`` uses)."""
    return int(np.linalg.matrix_rank(A))


def _column_norms(V: np.ndarray) -> np.ndarray:
    return np.linalg.norm(V, axis=0)


def _active(V: np.ndarray, rtol: float = ACTIVE_RTOL) -> int:
    norms = _column_norms(V)
    return int((norms > rtol * norms.max()).sum()) if norms.size and norms.max() > 0 else 0


def _upper_bound(X: np.ndarray, Y: np.ndarray, V: np.ndarray) -> tuple[np.ndarray, float]:
    """``V`` projected onto ``{V X = Y}`` (add ``(Y − V X) X⁺``) and its norm Σ‖·‖ ≥ p*."""
    feasible = V + _least_squares(X, Y - V @ X)[0] if np.any(Y - V @ X) else V
    return feasible, float(_column_norms(feasible).sum())


# --------------------------------------------------------------------------------------
# cvxpy: p* with a certificate
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interpolant:
    """cvxpy's minimum-norm interpolant.

    Attributes:
        V: ``(D, K)`` solution, projected onto ``{V X = Y}`` (exactly feasible).
        value: ``Σ_k ‖V[:, k]‖`` — an upper bound on p*.
        lower: the dual lower bound on p* (module doc); ``value − lower ≤ CERTIFICATE_RTOL·value``.
        active: columns above ``ACTIVE_RTOL`` of the largest.
        status: cvxpy's status string.
    """

    V: np.ndarray
    value: float
    lower: float
    active: int
    status: str


@functools.lru_cache(maxsize=32)
def _problem(K: int, N: int, D: int):
    """A parametrised (DPP) cvxpy problem ``min Σ‖W[:, k]‖ s.t. W Xp = Yp``, compiled once per shape."""
    import cvxpy as cp

    Xp, Yp = cp.Parameter((K, N)), cp.Parameter((D, N))
    W = cp.Variable((D, K))
    constraint = W @ Xp == Yp
    return cp.Problem(cp.Minimize(cp.sum(cp.norm(W, 2, axis=0))), [constraint]), Xp, Yp, W, constraint


def _cvx_interpolant(X: np.ndarray, Y: np.ndarray) -> Interpolant:
    """Solve on the row space of ``X``: with ``Q: (N, rank X)`` orthonormal, ``V X = Y`` iff
    ``V (X Q) = Y Q`` (the rows of ``Y`` lie in that space), and the reduced constraints are
    not redundant — interior-point solvers lose accuracy on redundant ones (low-rank X)."""
    _, singular, right = np.linalg.svd(X, full_matrices=False)
    basis = right[:int((singular > max(X.shape) * np.finfo(np.float64).eps * singular[0]).sum())].T
    Xr, Yr = X @ basis, Y @ basis
    problem, Xp, Yp, W, constraint = _problem(*Xr.shape, Y.shape[0])
    Xp.value, Yp.value = Xr, Yr
    with warnings.catch_warnings():  # "optimal_inaccurate" is judged by the certificate below
        warnings.simplefilter("ignore", UserWarning)
        problem.solve(solver="CLARABEL", tol_gap_abs=CLARABEL_TOL, tol_gap_rel=CLARABEL_TOL, tol_feas=CLARABEL_TOL)
    if W.value is None or constraint.dual_value is None:
        raise RuntimeError(f"cvxpy/CLARABEL returned no solution (status {problem.status}) for a feasible problem")
    V, upper = _upper_bound(X, Y, W.value)
    dual = np.asarray(constraint.dual_value)
    scale = float(_column_norms(dual @ Xr.T).max())
    lower = abs(float((dual * Yr).sum())) / scale if scale > 0 else 0.0
    if upper - lower > CERTIFICATE_RTOL * upper:
        raise RuntimeError(
            f"cvxpy/CLARABEL (status {problem.status}) certified p* only to [{lower:.10g}, {upper:.10g}], "
            f"relative width {(upper - lower) / upper:.1e} > {CERTIFICATE_RTOL:g}"
        )
    return Interpolant(V=V, value=upper, lower=lower, active=_active(V), status=problem.status)


def min_norm_interpolant(X, Y) -> Interpolant:
    """``p* = min Σ_k ‖V[:, k]‖ s.t. V X = Y`` by cvxpy (CLARABEL), with its certificate.

    ``X: (K, N)``, ``Y: (D, N)``; the result's ``V`` is ``(D, K)``. Raises
    InvalidInputError when no interpolant exists or ``Y = 0``.
    """
    return _cvx_interpolant(*_checked_pair(X, Y))


# --------------------------------------------------------------------------------------
# brute force over supports (seed's brute_cvx_multi_task_lasso.py, Fig. 5)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SupportSearch:
    """The sparsest optimal support found by enumeration.

    Attributes:
        support: ascending column indices ``S`` (size ``s``) of an optimal solution.
        value: the minimum norm on ``S`` (= p* within ``rtol``).
        excess: ``(value − p*)/p*`` of ``S``.
        closest_rejected: smallest ``(value − p*)/p*`` over the feasible supports rejected
            on the way (None when every smaller support was infeasible).
        examined: supports examined (sizes ``rank(Y)`` … ``s``).
        feasible: of those, the feasible ones.
        solved: of those, the ones cvxpy solved (the others have a unique interpolant).
        width: the widest relative certificate of those cvxpy solves (0 without any).
    """

    support: tuple[int, ...]
    value: float
    excess: float
    closest_rejected: float | None
    examined: int
    feasible: int
    solved: int
    width: float


def sparsest_optimal_support(X, Y, p_star: float, rtol: float = RTOL, p_lower: float | None = None) -> SupportSearch:
    """Enumerate supports by increasing size; return the first whose value is ``p*`` within ``rtol``.

    ``X: (K, N)``, ``Y: (D, N)``; ``p_star`` the optimal value and ``p_lower`` a certified
    lower bound on it (``Interpolant.value`` and ``.lower`` of :func:`min_norm_interpolant`;
    default ``p_star``, i.e. exact). Sizes below ``rank(Y)`` are skipped
    (``rank(V_S X_S) ≤ |S|``); the first size with an optimal support is the sparsest
    optimal width. The decision uses the certified brackets (module doc); RuntimeError when
    they cannot decide.
    """
    X, Y = _checked_pair(X, Y)
    K = X.shape[0]
    if K > MAX_BRUTE_K:
        raise InvalidInputError(
            f"K = {K} is too large for the brute force over supports (up to 2^{K} of them); use K ≤ {MAX_BRUTE_K}"
        )
    if isinstance(p_star, bool) or not isinstance(p_star, (int, float)) or not math.isfinite(p_star) or p_star <= 0:
        raise InvalidInputError(f"p_star must be the positive optimal value, got {p_star!r}")
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 < rtol < 1:
        raise InvalidInputError(f"rtol must be in (0, 1), got {rtol!r}")
    p_lower = p_star if p_lower is None else p_lower
    if isinstance(p_lower, bool) or not isinstance(p_lower, (int, float)) or not 0 < p_lower <= p_star:
        raise InvalidInputError(f"p_lower must be a lower bound in (0, p_star], got {p_lower!r}")
    closest, examined, feasible, solved, width = math.inf, 0, 0, 0, 0.0
    for size in range(_rank(Y), K + 1):
        for support in itertools.combinations(range(K), size):
            examined += 1
            rows = X[list(support)]
            W, residual, rank = _least_squares(rows, Y)
            if residual > FEASIBLE_RTOL:
                continue
            feasible += 1
            if rank == size:  # X[S] has full row rank: the interpolant on S is unique
                value = lower = float(_column_norms(W).sum())
            else:
                restricted = _cvx_interpolant(rows, Y)
                value, lower, solved = restricted.value, restricted.lower, solved + 1
                width = max(width, (value - lower) / value)
            excess = (value - p_star) / p_star
            if (value - p_lower) / p_lower <= rtol:  # even the largest excess the brackets allow
                return SupportSearch(support=support, value=value, excess=excess,
                                     closest_rejected=None if math.isinf(closest) else closest,
                                     examined=examined, feasible=feasible, solved=solved, width=width)
            if (lower - p_star) / p_star <= rtol:  # ... but not the smallest: undecided
                raise RuntimeError(
                    f"cannot decide whether support {support} is optimal: its value is certified to "
                    f"[{lower:.12g}, {value:.12g}] and p* to [{p_lower:.12g}, {p_star:.12g}], tolerance {rtol:g}"
                )
            closest = min(closest, excess)
    raise RuntimeError(f"no support, not even all {K} columns, reached p* = {p_star!r}: p* is not the optimal value")


@dataclass(frozen=True)
class BruteForceTrial:
    """One brute-force trial (``X: (K, N)``, ``Y: (D, N)``).

    ``bound = rank_x·rank_y``; ``sparsest`` the size of the sparsest optimal support;
    ``cvx_active`` the active columns of cvxpy's (interior-point) solution; ``p_star`` and
    ``p_lower`` bracket the optimal value; ``certificate_width`` is the widest relative
    bracket of all the trial's cvxpy solves; ``seed`` the seed of the trial's data.
    """

    K: int
    N: int
    D: int
    rank_x: int
    rank_y: int
    bound: int
    p_star: float
    p_lower: float
    cvx_active: int
    sparsest: int
    support: tuple[int, ...]
    excess: float
    closest_rejected: float | None
    examined: int
    feasible: int
    solved: int
    certificate_width: float
    seconds: float
    seed: tuple[int, ...] | None = None

    @property
    def meets_bound(self) -> bool:
        return self.sparsest <= self.bound


def brute_force_trial(X, Y, rtol: float = RTOL) -> BruteForceTrial:
    """p* by cvxpy, then the sparsest optimal support (:func:`sparsest_optimal_support`)."""
    start = time.perf_counter()
    X, Y = _checked_pair(X, Y)
    optimum = _cvx_interpolant(X, Y)
    search = sparsest_optimal_support(X, Y, optimum.value, rtol, optimum.lower)
    rank_x, rank_y = _rank(X), _rank(Y)
    return BruteForceTrial(
        K=X.shape[0], N=X.shape[1], D=Y.shape[0], rank_x=rank_x, rank_y=rank_y, bound=rank_x * rank_y,
        p_star=optimum.value, p_lower=optimum.lower, cvx_active=optimum.active, sparsest=len(search.support),
        support=search.support, excess=search.excess, closest_rejected=search.closest_rejected,
        examined=search.examined, feasible=search.feasible, solved=search.solved,
        certificate_width=max((optimum.value - optimum.lower) / optimum.value, search.width),
        seconds=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------------------
# the λ → 0 group-lasso path (seed's cvx_multi_task_lasso.ipynb, Figs. 3–4)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathSolution:
    """The end of the λ → 0 path of :func:`netshrink.linalg.group_lasso`.

    Attributes:
        V: ``(D, K)`` group-lasso solution at the last λ.
        objective: ``Σ_k ‖V[:, k]‖``.
        lower, upper: certified bounds on p* (module doc).
        residual: ``‖V X − Y‖/‖Y‖``.
        lam_ratio: last λ / λ_max.
        steps: λ values solved.
        reached: whether ``residual ≤ residual_target``.
        converged: whether every solve reached its duality-gap tolerance.
        active, nonzero: columns above ``PATH_ACTIVE_RTOL`` of the largest / exactly nonzero.
        smallest_active, largest_inactive: those column norms relative to the largest
            (largest_inactive is 0 without small nonzeros).
    """

    V: np.ndarray
    objective: float
    lower: float
    upper: float
    residual: float
    lam_ratio: float
    steps: int
    reached: bool
    converged: bool
    active: int
    nonzero: int
    smallest_active: float
    largest_inactive: float

    @property
    def clear_cut(self) -> bool:
        """Every column norm is ≥ 10× or ≤ 1/10 of the threshold ``PATH_ACTIVE_RTOL`` (module doc)."""
        return self.smallest_active >= 10 * PATH_ACTIVE_RTOL and self.largest_inactive <= PATH_ACTIVE_RTOL / 10


def path_interpolant(X, Y, residual_target: float = RESIDUAL_TARGET) -> PathSolution:
    """Minimum-norm interpolant as the λ → 0 limit of the group lasso (module doc).

    ``X: (K, N)``, ``Y: (D, N)``; λ goes from ``λ_max/√10`` down by √10 per step with warm
    starts until ``‖V X − Y‖/‖Y‖ ≤ residual_target`` (at most ``PATH_STEPS`` steps).
    """
    from netshrink.linalg import group_lasso, lambda_max

    X, Y = _checked_pair(X, Y)
    if isinstance(residual_target, bool) or not isinstance(residual_target, (int, float)) \
            or not 0 < residual_target < 1:
        raise InvalidInputError(f"residual_target must be in (0, 1), got {residual_target!r}")
    N = X.shape[1]
    gram = torch.from_numpy(X @ X.T / N)
    cross = torch.from_numpy(X @ Y.T / N)
    energy = float((Y * Y).sum() / N)
    top = lambda_max(cross)
    lam, M, converged = top, None, True
    with torch_threads(THREADS):
        for step in range(1, PATH_STEPS + 1):
            lam /= PATH_FACTOR
            result = group_lasso(gram, cross, lam, tol=PATH_TOL, energy=energy, init=M)
            M, converged = result.M, converged and result.converged
            V = M.numpy()
            residual = float(np.linalg.norm(V @ X - Y) / np.linalg.norm(Y))
            if residual <= residual_target:
                break
    norms = _column_norms(V)
    largest = float(norms.max())
    above = norms > PATH_ACTIVE_RTOL * largest
    objective = float(norms.sum())
    return PathSolution(
        V=V, objective=objective, lower=objective - result.gap / lam, upper=_upper_bound(X, Y, V)[1],
        residual=residual, lam_ratio=lam / top, steps=step, reached=residual <= residual_target,
        converged=converged, active=int(above.sum()), nonzero=int((norms > 0).sum()),
        smallest_active=float(norms[above].min()) / largest,
        largest_inactive=float(norms[~above].max()) / largest if (~above).any() else 0.0,
    )


@dataclass(frozen=True)
class PathTrial:
    """One λ → 0 path trial (``X: (K, N)`` of rank ``rank_x``; ``r`` None for full rank).

    ``bound = rank_x·rank_y``; ``clear_cut`` as :attr:`PathSolution.clear_cut`;
    ``p_cvx``/``cvx_active`` only for verified trials.
    """

    K: int
    N: int
    D: int
    r: int | None
    rank_x: int
    rank_y: int
    bound: int
    active: int
    nonzero: int
    objective: float
    p_lower: float
    p_upper: float
    residual: float
    lam_ratio: float
    steps: int
    reached: bool
    converged: bool
    smallest_active: float
    largest_inactive: float
    clear_cut: bool
    p_cvx: float | None
    cvx_active: int | None
    seconds: float
    seed: tuple[int, ...] | None = None

    @property
    def meets_bound(self) -> bool:
        return self.active <= self.bound


def path_trial(X, Y, r: int | None = None, verify: bool = False) -> PathTrial:
    """:func:`path_interpolant` on one problem, checked by cvxpy (:func:`min_norm_interpolant`)
    when ``verify`` or when the path's count is not clear-cut.

    ``X: (K, N)``, ``Y: (D, N)``; ``r`` labels the rank the data were drawn with (None: full).
    """
    start = time.perf_counter()
    X, Y = _checked_pair(X, Y)
    path = path_interpolant(X, Y)
    (K, N), D = X.shape, Y.shape[0]
    rank_x, rank_y = _rank(X), _rank(Y)
    reference = _cvx_interpolant(X, Y) if verify or not path.clear_cut else None
    return PathTrial(
        K=K, N=N, D=D, r=r, rank_x=rank_x, rank_y=rank_y, bound=rank_x * rank_y,
        active=path.active, nonzero=path.nonzero,
        objective=path.objective, p_lower=path.lower, p_upper=path.upper, residual=path.residual,
        lam_ratio=path.lam_ratio, steps=path.steps, reached=path.reached, converged=path.converged,
        smallest_active=path.smallest_active, largest_inactive=path.largest_inactive,
        clear_cut=path.clear_cut, p_cvx=None if reference is None else reference.value,
        cvx_active=None if reference is None else _active(reference.V, PATH_ACTIVE_RTOL), seconds=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------------------
# trial records (pure: no files)
# --------------------------------------------------------------------------------------


def _check_settings(settings: Settings) -> None:
    if not isinstance(settings, Settings):
        raise InvalidInputError(f"settings must be a Settings, got {type(settings).__name__}")
    for name in ("brute_trials", "path_trials", "low_rank_trials"):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"settings.{name} must be a positive integer, got {value!r}")
    if isinstance(settings.verify_trials, bool) or not isinstance(settings.verify_trials, int) \
            or settings.verify_trials < 0:
        raise InvalidInputError(f"settings.verify_trials must be an integer ≥ 0, got {settings.verify_trials!r}")
    if isinstance(settings.seed, bool) or not isinstance(settings.seed, int) or settings.seed < 0:
        raise InvalidInputError(f"settings.seed must be an integer ≥ 0 (a numpy seed), got {settings.seed!r}")
    if not settings.brute_K:
        raise InvalidInputError("settings.brute_K must list at least one K")
    for K in settings.brute_K:
        _check_sizes(K, settings.brute_N, settings.brute_D)
        if K > MAX_BRUTE_K:
            raise InvalidInputError(f"settings.brute_K holds K = {K}: the brute force needs K ≤ {MAX_BRUTE_K}")
    _check_sizes(settings.path_K, settings.path_N, settings.path_D)
    _check_sizes(settings.path_K, settings.path_N, settings.path_D, settings.low_rank)


def _seed(settings: Settings, case: str, K: int, trial: int) -> tuple[int, ...]:
    return (settings.seed, CASES[case], K, trial)


def brute_force_records(settings: Settings, log=None) -> list[BruteForceTrial]:
    """Every brute-force trial of ``settings`` (each K, ``brute_trials`` each), in order."""
    _check_settings(settings)
    trials = []
    for K in settings.brute_K:
        for index in range(settings.brute_trials):
            seed = _seed(settings, "brute_force", K, index)
            X, Y = random_problem(np.random.default_rng(seed), K, settings.brute_N, settings.brute_D)
            trials.append(replace(brute_force_trial(X, Y), seed=seed))
            if log:
                t = trials[-1]
                log(f"brute force K={K} trial {index}: sparsest {t.sparsest}, cvxpy {t.cvx_active}, "
                    f"bound {t.bound} ({t.seconds:.2f} s)")
    return trials


def path_records(settings: Settings, log=None) -> list[PathTrial]:
    """Every λ → 0 path trial of ``settings``: full-rank X, then rank-``low_rank`` X."""
    _check_settings(settings)
    trials = []
    for case, count, rank in (("full_rank", settings.path_trials, None),
                              ("low_rank", settings.low_rank_trials, settings.low_rank)):
        for index in range(count):
            seed = _seed(settings, case, settings.path_K, index)
            X, Y = random_problem(np.random.default_rng(seed), settings.path_K, settings.path_N,
                                  settings.path_D, rank)
            trials.append(replace(path_trial(X, Y, rank, verify=index < settings.verify_trials), seed=seed))
            if log:
                t = trials[-1]
                log(f"{case} trial {index}: {t.active} active (bound {t.bound}), residual {t.residual:.1e} "
                    f"({t.seconds:.2f} s)")
    return trials


# --------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------


def run(out: Path, quick: bool = False, overwrite: bool = False, progress: bool = False) -> str:
    """Run the width-bound experiment into the folder ``out``; return summary.md.

    Args:
        out: output folder; written atomically (complete or not at all).
        quick: a few trials (3 per K = 7, 8, 9; 3 path problems of K = 100 per variant),
            about half a minute; the full run (100 per K = 7…11; 100 path problems of
            K = 500 per variant) takes about ten minutes on one core.
        overwrite: replace an existing ``out``; without it OutputExistsError is raised
            before any work is done.
        progress: report each trial on stderr.
    """
    settings = QUICK if quick else FULL
    _check_settings(settings)
    log = Log("shenouda-width", progress)
    started = time.perf_counter()
    with output_folder(out, overwrite) as folder:
        brute = brute_force_records(settings, log)
        seconds = {"brute_force": time.perf_counter() - started}
        paths = path_records(settings, log)
        seconds["paths"] = time.perf_counter() - started - seconds["brute_force"]
        brute_data = _brute_json(settings, brute)
        width_data = _widths_json(settings, paths)
        for stem, data, draw in (("brute_force", brute_data, _draw_brute),
                                 ("random_widths", width_data, _draw_widths)):
            write_json(folder / f"{stem}.json", data)
            draw(data).savefig(folder / f"{stem}.png", dpi=110)
        seconds["total"] = time.perf_counter() - started
        text = _summary(settings, quick, brute_data, width_data, seconds)
        (folder / "summary.md").write_text(text, encoding="utf-8")
        write_json(folder / "run.json", {
            "mode": "quick" if quick else "full", "settings": asdict(settings), "seconds": seconds,
            "tolerances": {"rtol": RTOL, "active_rtol": ACTIVE_RTOL, "path_active_rtol": PATH_ACTIVE_RTOL,
                           "certificate_rtol": CERTIFICATE_RTOL,
                           "feasible_rtol": FEASIBLE_RTOL, "clarabel_tol": CLARABEL_TOL, "path_tol": PATH_TOL,
                           "residual_target": RESIDUAL_TARGET, "path_factor": PATH_FACTOR,
                           "path_steps": PATH_STEPS},
            "versions": versions("cvxpy"), "torch_threads": THREADS, "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
        })
    log(f"wrote {out} in {seconds['total']:.1f} s")
    return text


# --------------------------------------------------------------------------------------
# JSON, figures, summary
# --------------------------------------------------------------------------------------


def _histogram(values) -> dict[str, int]:
    values = list(values)
    return {str(v): values.count(v) for v in sorted(set(values))}


def _record(trial) -> dict:
    return {**asdict(trial), "meets_bound": trial.meets_bound}


def _brute_json(settings: Settings, trials: list[BruteForceTrial]) -> dict:
    per_k = []
    for K in settings.brute_K:
        group = [t for t in trials if t.K == K]
        rejected = [t.closest_rejected for t in group if t.closest_rejected is not None]
        per_k.append({
            "K": K, "trials": len(group),
            "sparsest": [t.sparsest for t in group], "sparsest_histogram": _histogram(t.sparsest for t in group),
            "cvx_active": [t.cvx_active for t in group],
            "cvx_active_histogram": _histogram(t.cvx_active for t in group),
            "sparsest_equals_cvx_active": sum(t.sparsest == t.cvx_active for t in group),
            "bounds": sorted({t.bound for t in group}),
            "met": sum(t.meets_bound for t in group),
            "max_excess_accepted": max(t.excess for t in group),
            "min_closest_rejected": min(rejected) if rejected else None,
            "max_certificate_width": max(t.certificate_width for t in group),
            "seconds": sum(t.seconds for t in group),
        })
    return {"N": settings.brute_N, "D": settings.brute_D, "rtol": RTOL, "active_rtol": ACTIVE_RTOL,
            "per_K": per_k, "trials": len(trials), "met": sum(t.meets_bound for t in trials),
            "trial_records": [_record(t) for t in trials]}


def _widths_json(settings: Settings, trials: list[PathTrial]) -> dict:
    variants = {}
    for name, rank in (("full_rank", None), ("low_rank", settings.low_rank)):
        group = [t for t in trials if t.r == rank]
        verified = [t for t in group if t.p_cvx is not None]
        active = [t.active for t in group]
        lines = ([settings.path_N, settings.path_N * settings.path_D + 1] if rank is None
                 else [rank, rank * settings.path_D])
        variants[name] = {
            "r": rank, "trials": len(group), "lines": lines,
            "active": active, "histogram": _histogram(active),
            "min": min(active), "median": float(np.median(active)), "max": max(active),
            "bounds": sorted({t.bound for t in group}), "met": sum(t.meets_bound for t in group),
            "within_line": sum(t.active <= lines[1] for t in group),
            "reached": sum(t.reached for t in group), "converged": sum(t.converged for t in group),
            "max_residual": max(t.residual for t in group),
            "max_bracket_width": max((t.p_upper - t.p_lower) / t.p_upper for t in group),
            "min_smallest_active": min(t.smallest_active for t in group),
            "max_largest_inactive": max(t.largest_inactive for t in group),
            "clear_cut": sum(t.clear_cut for t in group),
            "unclear_equal_cvx": sum(t.active == t.cvx_active for t in group if not t.clear_cut),
            "verified": len(verified),
            "max_objective_vs_cvx": max((abs(t.objective - t.p_cvx) / t.p_cvx for t in verified), default=None),
            "active_equals_cvx": sum(t.active == t.cvx_active for t in verified),
            "seconds": sum(t.seconds for t in group),
        }
    return {"K": settings.path_K, "N": settings.path_N, "D": settings.path_D,
            "residual_target": RESIDUAL_TARGET, "active_rtol": PATH_ACTIVE_RTOL, "variants": variants,
            "trial_records": [_record(t) for t in trials]}


def _figure(columns: int, width: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, 3.4), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, columns, squeeze=False)[0]


def _bars(axis, histogram: dict, lines, labels, title: str, xlabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    sizes = [int(k) for k in histogram]
    axis.bar(sizes, list(histogram.values()), width=0.8, color="C0")
    for value, label, style in zip(lines, labels, (":", "--", "-.")):
        axis.axvline(value, color="C3", linestyle=style, label=f"{label} = {value}")
    axis.set_xlim(min(sizes + list(lines)) - 1, max(sizes + list(lines)) + 1)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_title(title, fontsize=9)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("trials")
    axis.legend(fontsize=7)


def _draw_brute(data: dict):
    """Fig. 5 of the seed from brute_force.json: sparsest optimal widths per K."""
    figure, axes = _figure(len(data["per_K"]), 2.6 * len(data["per_K"]) + 0.6)
    N, D = data["N"], data["D"]
    for axis, row in zip(axes, data["per_K"]):
        _bars(axis, row["sparsest_histogram"], [N, max(row["bounds"]), N * D + 1],
              ["N", "rank(X)·rank(Y)", "N·D + 1"],
              f"K = {row['K']}: {row['met']}/{row['trials']} within the bound", "sparsest optimal width")
    figure.suptitle(f"Brute force, N = {N}, D = {D}: sparsest minimum-ℓ2,1 interpolant", fontsize=10)
    return figure


def _draw_widths(data: dict):
    """Figs. 3–4 of the seed from random_widths.json: active neurons at λ → 0."""
    figure, axes = _figure(2, 9.5)
    N, D, K = data["N"], data["D"], data["K"]
    full, low = data["variants"]["full_rank"], data["variants"]["low_rank"]
    _bars(axes[0], full["histogram"], full["lines"], ["N", "N·D + 1"],
          f"full-rank X, K = {K}, N = {N}, D = {D} ({full['trials']} trials)", "active neurons")
    _bars(axes[1], low["histogram"], low["lines"], ["r", "r·D"],
          f"rank-{low['r']} X, K = {K}, N = {N}, D = {D} ({low['trials']} trials)", "active neurons")
    figure.suptitle("Group-lasso path λ → 0 (netshrink.linalg.group_lasso)", fontsize=10)
    return figure


def _summary(settings: Settings, quick: bool, brute: dict, widths: dict, seconds: dict) -> str:
    N, D = brute["N"], brute["D"]
    lines = [
        "# Width bounds (seed 002, Shenouda, Parhi, Lee & Nowak): the width-bound experiment", "",
        f"Mode: {'quick' if quick else 'full'}. Problem: min_V Σ_k ‖V[:, k]‖₂ s.t. V X = Y, X: (K, N) "
        "random, Y: (D, N) random. Claim: some optimal V has at most rank(X)·rank(Y) ≤ N·D nonzero "
        f"columns. Seeded: trial t of a case uses numpy.random.default_rng(({settings.seed}, case, K, t)).", "",
        f"## Brute force (N = {N}, D = {D}; seed Fig. 5)", "",
        "![brute force](brute_force.png)", "",
        f"p* from cvxpy (CLARABEL, tolerances {CLARABEL_TOL:g}), bracketed by a feasible point and a dual "
        "bound, as is every restricted solve; supports enumerated by size from rank(Y) until one attains p* "
        f"within {RTOL:g} (relative), decided on the brackets (module doc). cvxpy active = columns of cvxpy's own solution above {ACTIVE_RTOL:g} of the largest.",
        "",
        "| K | trials | sparsest widths (size: trials) | cvxpy active (size: trials) | bound | met | "
        "closest rejected excess | certificate width |",
        "|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for row in brute["per_K"]:
        rejected = row["min_closest_rejected"]
        lines.append(
            f"| {row['K']} | {row['trials']} | {_pairs(row['sparsest_histogram'])} | "
            f"{_pairs(row['cvx_active_histogram'])} | {', '.join(map(str, row['bounds']))} | "
            f"{row['met']}/{row['trials']} | {'—' if rejected is None else f'{rejected:.1e}'} | "
            f"{row['max_certificate_width']:.1e} |")
    flagged = [t for t in brute["trial_records"] if not t["meets_bound"]]
    lines += ["", f"**{brute['met']} of {brute['trials']} trials met the bound rank(X)·rank(Y).**"
              + ("" if not flagged else " Flagged: " + "; ".join(
                  f"K = {t['K']} seed {t['seed']} (sparsest {t['sparsest']} > {t['bound']})" for t in flagged)),
              "",
              "The closest rejected excess is the smallest relative gap (value − p*)/p* of any feasible "
              f"non-optimal support met during the enumeration: it shows how far the rejected supports lie above "
              f"the acceptance tolerance {RTOL:g}; the certificate width is the widest relative bracket over every "
              "cvxpy solve of the trials.", ""]
    K, Np, Dp = widths["K"], widths["N"], widths["D"]
    lines += [f"## Larger random problems with netshrink's group lasso (K = {K}, N = {Np}, D = {Dp}; seed "
              "Figs. 3–4)", "", "![random widths](random_widths.png)", "",
              "The minimum-norm interpolant is the λ → 0 limit of ½‖Y − V X‖²/N + λ Σ‖V[:, k]‖ (module doc); "
              f"netshrink.linalg.group_lasso solves a decreasing λ path (÷√10 per step, warm starts, gap 1e-14 of "
              f"P(0)) until ‖V X − Y‖/‖Y‖ ≤ {RESIDUAL_TARGET:g}. Active = columns above {PATH_ACTIVE_RTOL:g} of "
              "the largest (for the path and for its cvxpy check alike): at its gap floor the path resolves "
              "column norms only to about 1e-5 of the largest, so a few columns that vanish in the limit "
              "(cvxpy: ≤ 1e-6) keep norms up to a few 1e-5 (the exactly-nonzero count is in the records). A count "
              f"is clear-cut when every column norm is ≥ {10 * PATH_ACTIVE_RTOL:g} or ≤ {PATH_ACTIVE_RTOL / 10:g} "
              "of the largest; the others are all checked by cvxpy, besides the first "
              f"{settings.verify_trials} problems of each variant.", "",
              "| X | trials | active (min / median / max) | lines | bound rank(X)·rank(Y) | met | ≤ upper line | "
              "residual ≤ target | p* bracket width | clear-cut | cvxpy-verified: max rel. objective diff, "
              "equal counts |",
              "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, label in (("full_rank", "full rank"), ("low_rank", f"rank r = {widths['variants']['low_rank']['r']}")):
        v = widths["variants"][name]
        check = ("—" if not v["verified"] else
                 f"{v['max_objective_vs_cvx']:.1e}, {v['active_equals_cvx']}/{v['verified']}")
        lines.append(
            f"| {label} | {v['trials']} | {v['min']} / {v['median']:g} / {v['max']} | "
            f"{' and '.join(map(str, v['lines']))} | {', '.join(map(str, v['bounds']))} | {v['met']}/{v['trials']} | "
            f"{v['within_line']}/{v['trials']} | {v['reached']}/{v['trials']} | {v['max_bracket_width']:.1e} | "
            f"{v['clear_cut']}/{v['trials']} | {check} |")
    full, low = widths["variants"]["full_rank"], widths["variants"]["low_rank"]
    unclear = sum(v["trials"] - v["clear_cut"] for v in (full, low))
    equal = sum(v["unclear_equal_cvx"] for v in (full, low))
    smallest = min(full["min_smallest_active"], low["min_smallest_active"])
    largest = max(full["max_largest_inactive"], low["max_largest_inactive"])
    lines += ["", f"Full rank: the lines are N = {Np} and N·D + 1 = {Np * Dp + 1}; low rank: r = {low['r']} and "
              f"r·D = {low['r'] * Dp} (there Y = C B lies in X's row space, so rank(Y) = min(D, r) and the bound "
              f"rank(X)·rank(Y) = {', '.join(map(str, low['bounds']))} is below r·D). Over all trials the smallest "
              f"active column is {smallest:.1e} of the largest and the largest column below the threshold "
              f"{largest:.1e}. "
              + (f"{unclear} counts were not clear-cut; cvxpy's count equals the path's in {equal} of them. "
                 if unclear else "Every count was clear-cut. ")
              + "The p* bracket is certified from the path alone (‖V_λ‖₂,₁ − gap/λ below, the projection of V_λ "
              "onto V X = Y above).", "",
              "## Run", "",
              "Wall time: " + ", ".join(f"{step} {value:.1f} s" for step, value in seconds.items())
              + f" ({THREADS} torch thread, CLARABEL single-threaded).", ""]
    return "\n".join(lines)


def _pairs(histogram: dict) -> str:
    return ", ".join(f"{size}: {count}" for size, count in histogram.items())
