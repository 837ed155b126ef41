"""The ℓ2,1 solvers against independent references (cvxpy, scikit-learn) and theory."""

import math

import numpy as np
import pytest
import torch

from netshrink.errors import InvalidInputError
from netshrink.linalg import duality_gap, group_lasso, group_lasso_keep, lambda_max

cvxpy = pytest.importorskip("cvxpy")
sklearn_linear = pytest.importorskip("sklearn.linear_model")


def _data(seed, n=120, d=12, out=3, informative=4, collinear=False):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * rng.uniform(0.3, 3, d)
    if collinear:
        X[:, 1] = X[:, 0]          # duplicated column
        X[:, 2] = 0.0              # dead column
    Y = X[:, :informative] @ rng.standard_normal((informative, out)) + 0.3 * rng.standard_normal((n, out))
    return X, Y


def _statistics(X, Y):
    n = len(X)
    return (torch.from_numpy(X.T @ X / n), torch.from_numpy(X.T @ Y / n), float((Y**2).sum() / n))


def _labels(groups, d):
    if groups is None:
        return np.arange(d)
    if isinstance(groups, int):
        return np.arange(d) // groups
    return np.asarray(groups)


def _objective(X, Y, M, lam, labels):
    M = np.asarray(M)
    residual = Y - X @ M.T
    norms = [np.linalg.norm(M[:, labels == g]) for g in range(labels.max() + 1)]
    return 0.5 * (residual**2).sum() / len(X) + lam * sum(norms)


def _cvxpy_reference(X, Y, lam, labels):
    out, d = Y.shape[1], X.shape[1]
    M = cvxpy.Variable((out, d))
    penalty = sum(cvxpy.norm(M[:, labels == g], "fro") for g in range(labels.max() + 1))
    problem = cvxpy.Problem(cvxpy.Minimize(0.5 * cvxpy.sum_squares(Y - X @ M.T) / len(X) + lam * penalty))
    problem.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    return M.value


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("groups", [None, 2, "labels"])
@pytest.mark.parametrize("solver", ["fista", "altmin"])
def test_objective_matches_cvxpy(seed, groups, solver):
    X, Y = _data(seed)
    if groups == "labels":
        groups = torch.from_numpy(np.random.default_rng(seed).permutation(np.arange(12) % 5))
    labels = _labels(groups, 12)
    gram, cross, energy = _statistics(X, Y)
    lam = 0.2 * lambda_max(cross, groups)
    result = group_lasso(gram, cross, lam, groups, solver=solver, tol=1e-12, energy=energy)
    reference = _objective(X, Y, _cvxpy_reference(X, Y, lam, labels), lam, labels)
    ours = _objective(X, Y, result.M.numpy(), lam, labels)
    assert result.converged
    assert ours == pytest.approx(reference, rel=1e-8)
    assert result.objective == pytest.approx(ours, rel=1e-10)


@pytest.mark.parametrize("seed", range(3))
def test_objective_matches_scikit_learn_multitask_lasso(seed):
    X, Y = _data(seed + 10, n=200, d=15, out=4)
    gram, cross, energy = _statistics(X, Y)
    alpha = 0.1 * lambda_max(cross)
    ours = group_lasso(gram, cross, alpha, tol=1e-12, energy=energy)
    theirs = sklearn_linear.MultiTaskLasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=200000).fit(X, Y)
    labels = np.arange(15)
    assert _objective(X, Y, ours.M.numpy(), alpha, labels) <= _objective(X, Y, theirs.coef_, alpha, labels) * (1 + 1e-10)
    assert _objective(X, Y, ours.M.numpy(), alpha, labels) == pytest.approx(
        _objective(X, Y, theirs.coef_, alpha, labels), rel=1e-8)
    np.testing.assert_allclose(ours.M.numpy(), theirs.coef_, atol=1e-5)


def _kkt(gram, cross, M, lam, labels, tolerance):
    gradient = (M @ gram - cross.T).numpy()  # (out, d)
    M = M.numpy()
    for g in range(labels.max() + 1):
        block, value = gradient[:, labels == g], M[:, labels == g]
        norm = np.linalg.norm(value)
        if norm > 0:
            np.testing.assert_allclose(block, -lam * value / norm, atol=tolerance * lam)
        else:
            assert np.linalg.norm(block) <= lam * (1 + tolerance)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("groups", [None, 3])
def test_kkt_conditions_hold_per_group(seed, groups):
    X, Y = _data(seed + 20, d=12)
    gram, cross, energy = _statistics(X, Y)
    lam = 0.15 * lambda_max(cross, groups)
    result = group_lasso(gram, cross, lam, groups, tol=1e-13, energy=energy)
    _kkt(gram, cross, result.M, lam, _labels(groups, 12), 1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_fista_and_altmin_agree(seed):
    X, Y = _data(seed + 30, d=20, out=5, informative=6)
    gram, cross, energy = _statistics(X, Y)
    lam = 0.1 * lambda_max(cross)
    fista = group_lasso(gram, cross, lam, solver="fista", tol=1e-12, energy=energy)
    altmin = group_lasso(gram, cross, lam, solver="altmin", tol=1e-12, energy=energy)
    assert fista.active.tolist() == altmin.active.tolist()
    np.testing.assert_allclose(fista.M.numpy(), altmin.M.numpy(), atol=1e-6)


@pytest.mark.parametrize("groups", [None, 4])
def test_lambda_max_is_the_threshold_of_the_zero_solution(groups):
    X, Y = _data(40)
    gram, cross, energy = _statistics(X, Y)
    top = lambda_max(cross, groups)
    for solver in ("fista", "altmin"):
        assert float(group_lasso(gram, cross, top, groups, solver, energy=energy).M.abs().max()) == 0
        assert float(group_lasso(gram, cross, 2 * top, groups, solver, energy=energy).M.abs().max()) == 0
        below = group_lasso(gram, cross, 0.99 * top, groups, solver, tol=1e-10, energy=energy)
        assert len(below.active) >= 1


def test_lemma2_bound_holds_along_the_fista_iterates():
    X, Y = _data(50, d=16, out=3)
    gram, cross, energy = _statistics(X, Y)
    lam = 0.1 * lambda_max(cross)
    optimum = group_lasso(gram, cross, lam, tol=1e-14, energy=energy)
    lipschitz = float(torch.linalg.eigvalsh(gram)[-1])
    distance = float((optimum.M**2).sum())  # M₀ = 0
    objectives = []

    def record(iteration, M):
        objectives.append((iteration, _objective(X, Y, M.numpy(), lam, np.arange(16))))

    group_lasso(gram, cross, lam, tol=1e-14, energy=energy, restart=False, max_iter=300, callback=record)
    assert len(objectives) >= 50
    for k, value in objectives:
        assert value - optimum.objective <= 2 * lipschitz * distance / (k + 1) ** 2 + 1e-12


@pytest.mark.parametrize("seed", range(3))
def test_duality_gap_bounds_the_suboptimality(seed):
    X, Y = _data(seed + 60, d=10)
    gram, cross, energy = _statistics(X, Y)
    lam = 0.2 * lambda_max(cross)
    optimum = group_lasso(gram, cross, lam, tol=1e-14, energy=energy).objective
    rng = np.random.default_rng(seed)
    for _ in range(5):
        M = torch.from_numpy(rng.standard_normal((3, 10)) * rng.uniform(0, 1))
        value = _objective(X, Y, M.numpy(), lam, np.arange(10))
        assert duality_gap(gram, cross, M, lam, energy=energy) >= value - optimum - 1e-12


def test_output_side_reduction_gives_the_same_solution():
    X, Y = _data(70, d=6, out=15, informative=3)
    gram, cross, energy = _statistics(X, Y)
    lam = 0.1 * lambda_max(cross)
    reduced = group_lasso(gram, cross, lam, tol=1e-13, energy=energy)  # out > d: reduced
    direct = group_lasso(gram, cross, lam, tol=1e-13, energy=energy,
                         callback=lambda k, M: None, max_iter=200000)  # callback: no reduction
    np.testing.assert_allclose(reduced.M.numpy(), direct.M.numpy(), atol=1e-6)
    assert reduced.objective == pytest.approx(direct.objective, rel=1e-10)


def test_joint_block_diagonal_problem_couples_the_groups():
    """Two consumers sharing units: one group per unit across both blocks."""
    X1, Y1 = _data(80, d=6, out=2)
    X2, Y2 = _data(81, d=6, out=3)
    (g1, c1, e1), (g2, c2, e2) = _statistics(X1, Y1), _statistics(X2, Y2)
    gram, cross = torch.block_diag(g1, g2), torch.block_diag(c1, c2)
    labels = torch.cat([torch.arange(6), torch.arange(6)])
    lam = 0.3 * lambda_max(cross, labels)
    result = group_lasso(gram, cross, lam, labels, tol=1e-12, energy=e1 + e2)
    # cvxpy on the coupled formulation written directly
    A, B = cvxpy.Variable((2, 6)), cvxpy.Variable((3, 6))
    loss = 0.5 * cvxpy.sum_squares(Y1 - X1 @ A.T) / len(X1) + 0.5 * cvxpy.sum_squares(Y2 - X2 @ B.T) / len(X2)
    penalty = sum(cvxpy.norm(cvxpy.hstack([A[:, j], B[:, j]])) for j in range(6))
    problem = cvxpy.Problem(cvxpy.Minimize(loss + lam * penalty))
    problem.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    assert result.objective == pytest.approx(problem.value, rel=1e-7)
    assert float(result.M[:2, 6:].abs().max()) == 0 and float(result.M[2:, :6].abs().max()) == 0
    active = (result.M[:2, :6].norm(dim=0) > 0) | (result.M[2:, 6:].norm(dim=0) > 0)
    assert sorted(set(result.active.tolist())) == torch.nonzero(active).flatten().tolist()


@pytest.mark.parametrize("solver", ["fista", "altmin"])
def test_singular_statistics(solver):
    X, Y = _data(90, collinear=True)
    gram, cross, energy = _statistics(X, Y)
    lam = 0.05 * lambda_max(cross)
    result = group_lasso(gram, cross, lam, solver=solver, tol=1e-12, energy=energy)
    labels = np.arange(12)
    reference = _objective(X, Y, _cvxpy_reference(X, Y, lam, labels), lam, labels)
    assert _objective(X, Y, result.M.numpy(), lam, labels) == pytest.approx(reference, rel=1e-7)
    assert 2 not in result.active.tolist()  # the dead column never enters
    assert np.isfinite(result.M.numpy()).all()


def test_default_energy_is_the_explained_part_and_keeps_the_solution():
    X, Y = _data(95)
    gram, cross, energy = _statistics(X, Y)
    lam = 0.2 * lambda_max(cross)
    with_energy = group_lasso(gram, cross, lam, tol=1e-12, energy=energy)
    default = group_lasso(gram, cross, lam, tol=1e-12)
    np.testing.assert_allclose(with_energy.M.numpy(), default.M.numpy(), atol=1e-7)
    explained = np.linalg.lstsq(X, Y, rcond=None)[0]
    assert default.objective - with_energy.objective == pytest.approx(
        -0.5 * ((Y - X @ explained) ** 2).sum() / len(X), rel=1e-6)


@pytest.mark.parametrize("keep", [1, 3, 7, 12])
def test_keep_search_reaches_exactly_keep(keep):
    X, Y = _data(100, d=12, informative=8)
    gram, cross, energy = _statistics(X, Y)
    result = group_lasso_keep(gram, cross, keep, tol=1e-10, energy=energy)
    assert len(result.active) == keep
    if result.converged:
        _kkt(gram, cross, result.M, result.lam, np.arange(12), 1e-3)


def test_warm_start_is_used():
    X, Y = _data(110, d=20, out=4, informative=8)
    gram, cross, energy = _statistics(X, Y)
    lam = 0.05 * lambda_max(cross)
    cold = group_lasso(gram, cross, lam, tol=1e-10, energy=energy)
    warm = group_lasso(gram, cross, lam, tol=1e-10, energy=energy, init=cold.M)
    assert warm.iterations < cold.iterations
    assert warm.objective == pytest.approx(cold.objective, rel=1e-9)


class TestBadInput:
    def setup_method(self):
        X, Y = _data(120, d=6)
        self.gram, self.cross, self.energy = _statistics(X, Y)

    def test_negative_lambda(self):
        with pytest.raises(InvalidInputError, match="λ must be a finite number ≥ 0"):
            group_lasso(self.gram, self.cross, -0.1)

    def test_groups_that_do_not_divide(self):
        with pytest.raises(InvalidInputError, match="don't divide the input: 6 columns is not a multiple of 4"):
            group_lasso(self.gram, self.cross, 0.1, groups=4)

    def test_bad_labels(self):
        with pytest.raises(InvalidInputError, match="one label per column"):
            group_lasso(self.gram, self.cross, 0.1, groups=torch.zeros(5, dtype=torch.int64))
        with pytest.raises(InvalidInputError, match="every value 0..g−1"):
            group_lasso(self.gram, self.cross, 0.1, groups=torch.tensor([0, 0, 2, 2, 3, 3]))

    def test_shapes_and_values(self):
        with pytest.raises(InvalidInputError, match="square"):
            group_lasso(self.gram[:5], self.cross, 0.1)
        with pytest.raises(InvalidInputError, match="rows like gram"):
            group_lasso(self.gram, self.cross[:5], 0.1)
        with pytest.raises(InvalidInputError, match="symmetric"):
            group_lasso(self.gram + torch.triu(torch.ones(6, 6, dtype=torch.float64)), self.cross, 0.1)
        with pytest.raises(InvalidInputError, match="NaN"):
            group_lasso(self.gram * math.nan, self.cross, 0.1)
        with pytest.raises(InvalidInputError, match="unknown solver"):
            group_lasso(self.gram, self.cross, 0.1, solver="admm")

    def test_keep_no_lambda_reaches(self):
        gram = self.gram.clone()
        gram[0, :] = gram[:, 0] = 0  # a dead input
        cross = self.cross.clone()
        cross[0] = 0
        with pytest.raises(InvalidInputError, match="only 5 of 6 groups.*no λ > 0 reaches it"):
            group_lasso_keep(gram, cross, 6, energy=self.energy)
        with pytest.raises(InvalidInputError, match=r"keep must be an integer in \[1, 6\]"):
            group_lasso_keep(gram, cross, 0, energy=self.energy)


def test_keep_search_completes_a_support_that_explains_almost_everything():
    """Low-rank inputs: a few groups explain all of y; keep asks for more."""
    rng = np.random.default_rng(130)
    X = rng.standard_normal((300, 3)) @ rng.standard_normal((3, 10)) + 1e-7 * rng.standard_normal((300, 10))
    Y = X[:, :2] @ rng.standard_normal((2, 2))
    gram, cross, energy = _statistics(X, Y)
    result = group_lasso_keep(gram, cross, 8, tol=1e-4, energy=energy)
    assert len(result.active) == 8
    support = set(torch.nonzero(result.M.norm(dim=0) > 0).flatten().tolist())
    assert support <= set(result.active.tolist())


def test_output_reduction_spans_the_targets_in_every_trial():
    # the reduction's rank comes from a stopped pivoted QR; a wrong rank would silently
    # drop outputs. Half the trials have singular values graded from 1 down to 1e-8.
    from netshrink.linalg.group_lasso import _output_basis

    rng = np.random.default_rng(5)
    for trial in range(100):
        d, out = int(rng.integers(20, 60)), int(rng.integers(16, 40))
        rank = int(rng.integers(1, min(d, out)))
        left = np.linalg.qr(rng.standard_normal((d, rank)))[0]
        graded = np.logspace(0, -8, rank) if trial % 2 else rng.uniform(0.5, 2, rank)
        cross = torch.from_numpy((left * graded) @ np.linalg.qr(rng.standard_normal((out, rank)))[0].T)
        basis = _output_basis(cross)
        if basis is None:  # not worth it: only when the rank is close to out
            assert rank > 0.8 * out - 1, f"trial {trial}"
            continue
        assert basis.shape == (out, rank if out <= d else d), f"trial {trial}"  # out > d: thin QR
        residual = cross.T - basis @ (basis.T @ cross.T)
        assert float(residual.abs().max()) <= 1e-10 * float(cross.abs().max()), f"trial {trial}"
