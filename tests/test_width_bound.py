"""Width-bound experiment (issue 4, item 4; seed 002, Shenouda et al.): brute force, λ → 0 path, run().

The references are independent of the module: plain (not parametrised) cvxpy problems and
pseudo-inverse feasibility checks. Every test draws fresh data from seeds in its parameters.
"""

import itertools
import json
import math
from dataclasses import replace

import numpy as np
import pytest

cp = pytest.importorskip("cvxpy")

from netshrink.errors import InvalidInputError, OutputExistsError  # noqa: E402
from netshrink.experiments import shenouda_width as sw  # noqa: E402


def _reference(X, Y):
    """(p*, V) of min Σ‖V[:, k]‖ s.t. V X = Y, by a fresh cvxpy problem.

    The constraints are taken on the row space of X (``V X Q = Y Q``, Q an orthonormal basis
    from the SVD): equivalent when Y lies in it, and not redundant for a low-rank X.
    """
    Q = np.linalg.svd(X, full_matrices=False)[2][: np.linalg.matrix_rank(X)].T
    V = cp.Variable((Y.shape[0], X.shape[0]))
    problem = cp.Problem(cp.Minimize(cp.sum(cp.norm(V, 2, axis=0))), [V @ (X @ Q) == Y @ Q])
    problem.solve(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    assert problem.status in ("optimal", "optimal_inaccurate"), problem.status
    return problem.value, V.value


def _interpolable(rows, Y):
    """Whether some W solves W·rows = Y (pseudo-inverse, independent of the module's lstsq)."""
    W = Y @ np.linalg.pinv(rows)
    return np.linalg.norm(W @ rows - Y) <= 1e-6 * np.linalg.norm(Y)


def _count(V, rtol):
    norms = np.linalg.norm(V, axis=0)
    return int((norms > rtol * norms.max()).sum())


def test_quick_brute_force_meets_the_bound():
    trials = sw.brute_force_records(sw.QUICK)
    assert [t.K for t in trials] == [K for K in sw.QUICK.brute_K for _ in range(sw.QUICK.brute_trials)]
    for t in trials:
        assert (t.rank_x, t.rank_y) == (3, 2) and t.bound == 6
        assert t.meets_bound and t.rank_y <= t.sparsest <= t.rank_x * t.rank_y, t
        assert t.excess <= sw.RTOL
        # cvxpy's own optimal solution is an optimal solution, so it is never sparser
        assert t.sparsest <= t.cvx_active
        assert t.p_star - t.p_lower <= t.certificate_width * t.p_star <= sw.CERTIFICATE_RTOL * t.p_star
    # reproducible: the same seeds give the same records
    again = sw.brute_force_records(replace(sw.QUICK, brute_K=(sw.QUICK.brute_K[0],), brute_trials=1))
    assert again[0].support == trials[0].support
    assert math.isclose(again[0].p_star, trials[0].p_star, rel_tol=1e-12)


# (seed, K, N, D): the seeds 5, 8 (N = 2) and 1 (N = 3) have sparsest widths above rank(X),
# so the enumeration of smaller supports also meets feasible, non-optimal ones.
@pytest.mark.parametrize("seed, K, N, D", [(0, 6, 2, 2), (5, 6, 2, 2), (8, 6, 2, 2), (1, 7, 3, 2)])
def test_sparsest_support_is_optimal_and_no_smaller_support_is(seed, K, N, D):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((K, N)), rng.standard_normal((D, N))
    trial = sw.brute_force_trial(X, Y)
    p_star, _ = _reference(X, Y)
    assert abs(trial.p_star - p_star) <= 1e-8 * p_star
    assert trial.meets_bound and trial.sparsest == len(trial.support) <= N * D
    # the support found attains p*
    value, _ = _reference(X[list(trial.support)], Y)
    assert abs(value - p_star) <= sw.RTOL * p_star
    # no support of any smaller size (sizes below rank(Y) included) attains p*
    for size in range(1, trial.sparsest):
        for support in itertools.combinations(range(K), size):
            rows = X[list(support)]
            if _interpolable(rows, Y):
                value, _ = _reference(rows, Y)
                assert value > p_star * (1 + sw.RTOL), (support, value, p_star)


@pytest.mark.parametrize("seed", [41, 42])
def test_a_wrong_optimal_value_is_not_accepted(seed):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((7, 3)), rng.standard_normal((2, 3))
    p_star = sw.min_norm_interpolant(X, Y).value
    with pytest.raises(RuntimeError, match="no support, not even all 7 columns"):
        sw.sparsest_optimal_support(X, Y, 0.99 * p_star)


@pytest.mark.parametrize("seed, K, N, D", [(21, 12, 3, 2), (22, 40, 5, 4), (23, 60, 6, 6)])
def test_path_matches_cvxpy_and_interpolates(seed, K, N, D):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((K, N)), rng.standard_normal((D, N))
    path = sw.path_interpolant(X, Y)
    p_star, V_ref = _reference(X, Y)
    assert path.reached and path.converged
    residual = np.linalg.norm(path.V @ X - Y) / np.linalg.norm(Y)
    assert residual <= 1e-6 and math.isclose(residual, path.residual, rel_tol=1e-9)
    assert abs(path.objective - p_star) <= 1e-4 * p_star
    # the certified bracket contains the independent p*
    assert path.lower - 1e-9 * p_star <= p_star <= path.upper + 1e-9 * p_star
    assert path.active == _count(V_ref, sw.PATH_ACTIVE_RTOL)
    assert path.active <= N * D


@pytest.mark.parametrize("seed, K, N, D, r", [(31, 40, 8, 4, 2), (32, 50, 10, 3, 4)])
def test_low_rank_path_respects_r_times_D(seed, K, N, D, r):
    X, Y = sw.random_problem(np.random.default_rng(seed), K, N, D, rank=r)
    trial = sw.path_trial(X, Y, r, verify=True)
    assert (trial.rank_x, trial.rank_y) == (r, min(D, r))
    assert trial.reached and trial.meets_bound
    assert trial.active <= trial.rank_x * trial.rank_y <= r * D
    assert abs(trial.objective - trial.p_cvx) <= 1e-4 * trial.p_cvx
    assert trial.active == trial.cvx_active


def _rng():
    return np.random.default_rng(0)


BAD = [
    (lambda: sw.random_problem(_rng(), 0, 3, 2), "K (candidate neurons) must be a positive integer"),
    (lambda: sw.random_problem(_rng(), 5, -1, 2), "N (data points) must be a positive integer"),
    (lambda: sw.random_problem(_rng(), 5, 3, 0), "D (outputs) must be a positive integer"),
    (lambda: sw.random_problem(_rng(), 5, 3.0, 2), "N (data points) must be a positive integer"),
    (lambda: sw.random_problem(_rng(), 2, 3, 2), "K = 2 candidate neurons < N = 3"),
    (lambda: sw.random_problem(_rng(), 5, 3, 2, rank=3), "1 ≤ r < N = 3"),
    (lambda: sw.random_problem(_rng(), 5, 3, 2, rank=0), "1 ≤ r < N = 3"),
    (lambda: sw.random_problem(_rng(), 2, 4, 2, rank=3), "rank r = 3 exceeds K = 2"),
    (lambda: sw.min_norm_interpolant(_rng().standard_normal((2, 3)), np.random.default_rng(1).standard_normal((2, 3))),
     "no V solves V X = Y"),
    (lambda: sw.min_norm_interpolant(np.eye(3), np.zeros((2, 3))), "Y is zero"),
    (lambda: sw.min_norm_interpolant(np.eye(3), np.ones((2, 4))), "must have the same N"),
    (lambda: sw.min_norm_interpolant(np.full((3, 3), np.nan), np.ones((2, 3))), "X contains NaN or Inf"),
    (lambda: sw.min_norm_interpolant(np.ones(3), np.ones((2, 3))), "X must be a nonempty 2-D matrix"),
    (lambda: sw.sparsest_optimal_support(np.eye(20, 3), np.ones((2, 3)), 1.0), "too large for the brute force"),
    (lambda: sw.sparsest_optimal_support(np.eye(6, 3), np.ones((2, 3)), -1.0), "p_star must be the positive"),
    (lambda: sw.sparsest_optimal_support(np.eye(6, 3), np.ones((2, 3)), 1.0, rtol=0), "rtol must be in (0, 1)"),
    (lambda: sw.sparsest_optimal_support(np.eye(6, 3), np.ones((2, 3)), 1.0, p_lower=2.0), "p_lower must be"),
    (lambda: sw.path_interpolant(np.eye(6, 3), np.ones((2, 3)), residual_target=0), "residual_target must be"),
    (lambda: sw.brute_force_records(replace(sw.QUICK, brute_trials=0)), "settings.brute_trials"),
    (lambda: sw.brute_force_records(replace(sw.QUICK, seed=-1)), "settings.seed must be an integer ≥ 0"),
    (lambda: sw.brute_force_records(replace(sw.QUICK, brute_K=(2,))), "K = 2 candidate neurons < N = 3"),
    (lambda: sw.brute_force_records(replace(sw.QUICK, brute_K=(20,))), "the brute force needs K ≤ 16"),
    (lambda: sw.path_records(replace(sw.QUICK, low_rank=10)), "1 ≤ r < N = 10"),
    (lambda: sw.path_records(replace(sw.QUICK, verify_trials=-1)), "settings.verify_trials"),
]


@pytest.mark.parametrize("call, message", BAD, ids=[message for _, message in BAD])
def test_bad_input_raises_a_specific_error(call, message):
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


TINY = sw.Settings(seed=5, brute_N=3, brute_D=2, brute_K=(7,), brute_trials=2, path_N=4, path_D=3, path_K=12,
                   path_trials=1, low_rank=2, low_rank_trials=1, verify_trials=1)


def test_run_writes_figures_numbers_and_refuses_to_overwrite(tmp_path, monkeypatch):
    import matplotlib.image

    monkeypatch.setattr(sw, "QUICK", TINY)
    out = tmp_path / "width"
    summary = sw.run(out, quick=True)
    assert (out / "summary.md").read_text(encoding="utf-8") == summary
    assert "**2 of 2 trials met the bound rank(X)·rank(Y).**" in summary
    for stem in ("brute_force", "random_widths"):
        image = matplotlib.image.imread(out / f"{stem}.png")
        assert image.ndim == 3 and image.std() > 0.01, stem
        assert f"{stem}.png" in summary
    brute = json.loads((out / "brute_force.json").read_text(encoding="utf-8"))
    assert brute["met"] == brute["trials"] == 2 and brute["per_K"][0]["K"] == 7
    widths = json.loads((out / "random_widths.json").read_text(encoding="utf-8"))
    assert widths["variants"]["full_rank"]["lines"] == [4, 13]
    assert widths["variants"]["low_rank"]["lines"] == [2, 6]
    assert widths["variants"]["low_rank"]["met"] == 1
    assert json.loads((out / "run.json").read_text(encoding="utf-8"))["mode"] == "quick"
    with pytest.raises(OutputExistsError):
        sw.run(out, quick=True)
    sw.run(out, quick=True, overwrite=True)
    again = json.loads((out / "brute_force.json").read_text(encoding="utf-8"))
    for first, second in zip(brute["trial_records"], again["trial_records"], strict=True):
        assert first["support"] == second["support"]
        assert math.isclose(first["p_star"], second["p_star"], rel_tol=1e-12)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
