"""The multi-task lasso of one layer (issue 4 item 1): the rescaling to the group lasso against
cvxpy, the statistics against the raw data, prox-Adam against the original scheme, bad input."""

import math

import numpy as np
import pytest
import torch

from netshrink.errors import InvalidInputError
from netshrink.linalg import lambda_max
from netshrink.linalg.multitask_lasso import (
    REMOVED_NORM,
    linear_init,
    multitask_lasso_fista,
    multitask_objective,
    multitask_objective_data,
    multitask_statistics,
    prox_adam,
    prox_adam_gram,
)

cvxpy = pytest.importorskip("cvxpy")


def _problem(seed, K=8, D=3, N=40, relu=False, dtype=torch.float64):
    """Φ (K, N), Ψ = W Φ + b 1ᵀ + noise (D, N), b (D,)."""
    rng = np.random.default_rng(seed)
    phi = rng.standard_normal((K, N)) * rng.uniform(0.3, 2.0, (K, 1))
    if relu:
        phi = np.maximum(phi, 0)
    W = rng.standard_normal((D, K)) * (rng.uniform(size=(1, K)) < 0.6)
    b = rng.standard_normal(D)
    psi = W @ phi + b[:, None] + 0.3 * rng.standard_normal((D, N))
    return (torch.from_numpy(phi).to(dtype), torch.from_numpy(psi).to(dtype), torch.from_numpy(b).to(dtype))


def _lam_max_F(statistics):
    """The smallest lam of F whose minimiser is V = 0: λ_max of the group lasso times 2/D."""
    return 2 * lambda_max(statistics.cross) / statistics.cross.shape[1]


def _cvxpy_F(phi, psi, bias, lam):
    """min F(V) = (1/(D·N))·‖V Φ + b 1ᵀ − Ψ‖²_F + lam·Σ_k ‖V[:, k]‖ directly, with CLARABEL."""
    phi, psi, bias = phi.numpy(), psi.numpy(), bias.numpy()
    (K, N), D = phi.shape, psi.shape[0]
    V = cvxpy.Variable((D, K))
    error = cvxpy.sum_squares(V @ phi + np.outer(bias, np.ones(N)) - psi) / (D * N)
    problem = cvxpy.Problem(cvxpy.Minimize(error + lam * cvxpy.sum(cvxpy.norm(V, 2, axis=0))))
    problem.solve(solver="CLARABEL", tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    return problem.value, V.value


def _F_numpy(phi, psi, bias, lam, V):
    phi, psi, bias = phi.numpy(), psi.numpy(), bias.numpy()
    residual = V @ phi + bias[:, None] - psi
    return (residual**2).mean() + lam * np.linalg.norm(V, axis=0).sum()


# ----------------------------------------------------------------------------------- (a)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fraction", [0.1, 0.4])
def test_rescaled_group_lasso_reaches_the_cvxpy_optimum_of_F(seed, fraction):
    phi, psi, bias = _problem(seed, relu=seed % 2 == 1)
    statistics = multitask_statistics(phi, psi, bias)
    lam = fraction * _lam_max_F(statistics)
    reference, V_ref = _cvxpy_F(phi, psi, bias, lam)
    ours = multitask_lasso_fista(statistics.gram, statistics.cross, lam, energy=statistics.energy, tol=1e-12)
    assert ours.converged
    assert ours.group_lasso_lam == pytest.approx(lam * 3 / 2, rel=1e-15)
    assert ours.objective == pytest.approx(reference, rel=1e-7)
    assert _F_numpy(phi, psi, bias, lam, ours.V.numpy()) == pytest.approx(reference, rel=1e-7)
    assert ours.objective - reference <= ours.gap + 1e-9 * reference
    reference_active = np.flatnonzero(np.linalg.norm(V_ref, axis=0) > 1e-5).tolist()
    assert 0 < len(reference_active) < 8  # both kinds of column are exercised
    assert ours.active.tolist() == reference_active
    np.testing.assert_allclose(ours.V.numpy(), V_ref, atol=1e-5)


def test_fista_route_warm_start_and_limits():
    phi, psi, bias = _problem(11)
    statistics = multitask_statistics(phi, psi, bias)
    top = _lam_max_F(statistics)
    cold = multitask_lasso_fista(statistics.gram, statistics.cross, 0.2 * top, energy=statistics.energy, tol=1e-12)
    warm = multitask_lasso_fista(statistics.gram, statistics.cross, 0.2 * top, energy=statistics.energy, tol=1e-12,
                                 init=torch.randn(3, 8, dtype=torch.float64))
    assert warm.objective == pytest.approx(cold.objective, rel=1e-10)
    assert warm.active.tolist() == cold.active.tolist()
    zero = multitask_lasso_fista(statistics.gram, statistics.cross, top * (1 + 1e-9), energy=statistics.energy)
    assert float(zero.V.abs().max()) == 0 and len(zero.active) == 0
    assert zero.objective == pytest.approx(statistics.energy / 3, rel=1e-14)  # F(0) = energy/D
    below = multitask_lasso_fista(statistics.gram, statistics.cross, 0.98 * top, energy=statistics.energy)
    assert len(below.active) >= 1


# ----------------------------------------------------------------------------------- (b)


@pytest.mark.parametrize("seed", range(3))
def test_F_from_statistics_equals_F_from_data(seed):
    phi, psi, bias = _problem(seed + 20, K=9, D=4, N=57, relu=True)
    lam = 0.37
    V = torch.randn(4, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    V[:, 2] = 0
    direct = _F_numpy(phi, psi, bias, lam, V.numpy())
    from_data = multitask_objective_data(V, lam, phi, psi, bias, chunk_size=10)
    statistics = multitask_statistics(phi, psi, bias, chunk_size=7)
    from_statistics = multitask_objective(V, lam, statistics.gram, statistics.cross, statistics.energy)
    assert from_data.objective == pytest.approx(direct, rel=1e-13)
    assert from_statistics.objective == pytest.approx(direct, rel=1e-12)
    assert from_statistics.error == pytest.approx(from_data.error, rel=1e-12)
    assert from_statistics.penalty == pytest.approx(lam * np.linalg.norm(V.numpy(), axis=0).sum(), rel=1e-14)
    # the chunked statistics are those of one pass
    X, Y = phi.numpy(), (psi - bias[:, None]).numpy()
    np.testing.assert_allclose(statistics.gram.numpy(), X @ X.T / 57, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(statistics.cross.numpy(), X @ Y.T / 57, rtol=1e-13, atol=1e-14)
    assert statistics.energy == pytest.approx((Y**2).sum() / 57, rel=1e-14)
    assert statistics.samples == 57 and statistics.gram.dtype == torch.float64


def test_statistics_of_float32_data_are_float64():
    phi, psi, bias = _problem(30, dtype=torch.float32)
    statistics = multitask_statistics(phi, psi, bias)
    assert statistics.gram.dtype == statistics.cross.dtype == torch.float64
    X = phi.double().numpy()
    np.testing.assert_allclose(statistics.gram.numpy(), X @ X.T / 40, rtol=1e-12, atol=1e-13)


# ----------------------------------------------------------------------------------- (c)


def _reference_prox_adam(phi, psi, bias, lam, mu, V0, iterations):
    """The original scheme written the obvious way: nn.Linear, MSELoss, autograd, Adam, shrink."""
    K, D = phi.shape[0], psi.shape[0]
    layer = torch.nn.Linear(K, D, dtype=phi.dtype)
    with torch.no_grad():
        layer.weight.copy_(V0)
        layer.bias.copy_(bias)
    layer.bias.requires_grad_(False)
    optimizer = torch.optim.Adam([layer.weight], lr=mu)
    for _ in range(iterations):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(layer(phi.T), psi.T).backward()
        optimizer.step()
        with torch.no_grad():
            layer.weight.mul_(torch.clamp(1 - mu * lam / layer.weight.norm(dim=0), min=0))
    return layer.weight.detach()


@pytest.mark.parametrize("form", ["data", "gram"])
def test_prox_adam_iterates_are_those_of_the_original_scheme(form):
    phi, psi, bias = _problem(40)
    lam, mu = 0.2, 0.02
    V0 = linear_init(3, 8, seed=3, dtype=torch.float64)
    expected = _reference_prox_adam(phi, psi, bias, lam, mu, V0, 300)
    ours = prox_adam(phi, psi, bias, lam, mu, seed=3, max_iter=300, form=form)
    assert ours.iterations == 300 and ours.stop_reason == "max_iter" and not ours.converged
    np.testing.assert_allclose(ours.V.numpy(), expected.numpy(), rtol=0, atol=1e-12)
    assert ours.objective == pytest.approx(_F_numpy(phi, psi, bias, lam, ours.V.numpy()), rel=1e-12)
    assert ours.penalty == pytest.approx(lam * np.linalg.norm(ours.V.numpy(), axis=0).sum(), rel=1e-13)


def test_prox_adam_decreases_F_stays_above_the_optimum_and_its_rule_stops_it():
    phi, psi, bias = _problem(41)
    statistics = multitask_statistics(phi, psi, bias)
    lam = 0.05 * _lam_max_F(statistics)
    optimum = multitask_lasso_fista(statistics.gram, statistics.cross, lam, energy=statistics.energy, tol=1e-13)
    calls, checked = [], {}

    def callback(k, V):
        calls.append(k)
        if k % 1000 == 0:
            checked[k] = V.clone()

    # The rule: stop at the first check (every 1000 iterations) where the relative changes
    # of the error and of the penalty are both below rel_tol. prox-Adam does not converge
    # (module doc): below ~1e-6 its changes wander with the machine's rounding, so the
    # test's rule is 1e-5, which F's steady decrease reaches on any machine.
    result = prox_adam(phi, psi, bias, lam, 3e-3, max_iter=40000, rel_tol=1e-5, callback=callback)
    assert result.converged and result.stop_reason == "tolerance"
    assert result.iterations % 1000 == 0 and result.iterations < 40000
    assert calls == list(range(1, result.iterations + 1))
    trace = result.trace
    assert [point.iteration for point in trace] == list(range(0, result.iterations + 1, 1000))
    assert all(later.seconds >= earlier.seconds for earlier, later in zip(trace, trace[1:]))
    assert trace[-1].objective == pytest.approx(result.objective, rel=1e-14)
    assert trace[-1].active == len(result.active)
    assert result.objective < 0.5 * trace[0].objective  # F fell from the random start
    floor = optimum.objective - optimum.gap - 1e-12 * optimum.objective
    assert all(point.objective >= floor for point in trace)  # never below the optimum
    # the two relative changes over the last check interval were both below rel_tol
    assert torch.equal(checked[result.iterations], result.V)
    previous = multitask_objective(checked[result.iterations - 1000], lam, statistics.gram, statistics.cross,
                                   statistics.energy)
    assert abs(result.error - previous.error) < 1e-5 * previous.error
    assert abs(result.penalty - previous.penalty) < 1e-5 * previous.penalty


def test_prox_adam_is_near_the_optimum_only_for_small_lam():
    """A measured property of the original scheme, not a tolerance to tune.

    Adam divides the gradient by its running RMS, so the shrink by ``mu·lam`` can balance
    a persistent gradient of ``F``'s error term only if ``lam`` is of order one *in those
    normalised units*; for smaller ``lam`` the iterates drift to where the error's gradient
    is ~0 — the least-squares fit — and the limit is not ``argmin F``. Hence: within 1e-3
    of ``F*`` when ``lam`` is small enough that ``F(V_LS) ≈ F*``; at a moderate ``lam``
    whose minimiser is sparse, ``F`` first falls and then rises again towards ``F(V_LS)``,
    75% above ``F*`` here, with every column active.
    """
    phi, psi, bias = _problem(42)
    statistics = multitask_statistics(phi, psi, bias)
    top = _lam_max_F(statistics)
    least_squares = multitask_lasso_fista(statistics.gram, statistics.cross, 0.0, energy=statistics.energy).V

    small = 3e-4 * top
    optimum = multitask_lasso_fista(statistics.gram, statistics.cross, small, energy=statistics.energy, tol=1e-13)
    run = prox_adam(phi, psi, bias, small, 0.003, max_iter=6000)
    assert optimum.objective - 1e-12 <= run.objective <= optimum.objective * (1 + 1e-3)

    moderate = 0.25 * top
    assert moderate < 1  # the regime of the explanation above
    optimum = multitask_lasso_fista(statistics.gram, statistics.cross, moderate, energy=statistics.energy, tol=1e-13)
    assert len(optimum.active) < 8
    run = prox_adam(phi, psi, bias, moderate, 0.003, max_iter=6000, check_every=2000)
    at_least_squares = multitask_objective(least_squares, moderate, statistics.gram, statistics.cross,
                                           statistics.energy).objective
    assert at_least_squares > 1.5 * optimum.objective  # the minimiser is far from the least-squares fit
    objectives = [point.objective for point in run.trace]  # iterations 0, 2000, 4000, 6000
    assert objectives[1] < objectives[2] < objectives[3] < at_least_squares  # rising, away from F*
    assert run.objective > 1.5 * optimum.objective
    assert len(run.active) == 8 > len(optimum.active)
    assert float((run.V - least_squares).norm()) < 0.2 * float((optimum.V - least_squares).norm())


def test_prox_adam_caps_dtype_and_init():
    phi, psi, bias = _problem(43, dtype=torch.float32)
    start = prox_adam(phi, psi, bias, 0.1, 0.07, seed=5, max_iter=0)
    assert start.iterations == 0 and start.stop_reason == "max_iter" and len(start.trace) == 1
    assert torch.equal(start.V, linear_init(3, 8, seed=5))
    assert start.V.dtype == torch.float32
    timed = prox_adam(phi, psi, bias, 0.1, 0.07, max_seconds=0.2, check_every=50)
    assert timed.stop_reason == "max_seconds" and 0.2 <= timed.seconds < 5
    assert timed.trace[-1].iteration == timed.iterations > 0
    given = torch.zeros(3, 8, dtype=torch.float64)
    warm = prox_adam(phi, psi, bias, 0.1, 0.07, init=given, max_iter=3)
    assert warm.V.dtype == torch.float32 and warm.iterations == 3
    assert torch.equal(given, torch.zeros(3, 8, dtype=torch.float64))  # not modified
    wide = prox_adam(phi.double(), psi, bias, 0.1, 0.07, max_iter=3)
    assert wide.V.dtype == torch.float64
    everything = prox_adam(phi, psi, bias, 50.0, 0.07, max_iter=200, check_every=20)
    assert len(everything.active) == 0 and everything.converged  # lam far above one: every column goes


# ----------------------------------------------------------------------------------- (d)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 7])
def test_seeded_init_is_nn_linear_default_init(dtype, seed):
    K, D = 300, 20
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        expected = torch.nn.Linear(K, D, dtype=dtype).weight.detach()
    ours = linear_init(D, K, seed=seed, dtype=dtype)
    assert ours.dtype == dtype and ours.shape == (D, K)
    assert torch.equal(ours, expected)
    bound = 1 / math.sqrt(K)
    assert float(ours.abs().max()) <= bound
    assert float(ours.abs().max()) > 0.99 * bound  # uniform on the whole interval (6000 draws)
    assert abs(float(ours.mean())) < 0.05 * bound
    assert float(ours.var()) == pytest.approx(bound**2 / 3, rel=0.1)
    assert not torch.equal(ours, linear_init(D, K, seed=seed + 1, dtype=dtype))
    phi, psi, bias = _problem(seed, K=K, D=D, N=5, dtype=dtype)
    assert torch.equal(prox_adam(phi, psi, bias, 0.1, 0.1, seed=seed, max_iter=0).V, ours)


# ----------------------------------------------------------------------------------- (e)


def _bad_calls():
    phi, psi, bias = _problem(50)
    statistics = multitask_statistics(phi, psi, bias)
    gram, cross, energy = statistics.gram, statistics.cross, statistics.energy
    nan_phi = phi.clone()
    nan_phi[2, 3] = math.nan
    inf_psi = psi.clone()
    inf_psi[0, 0] = math.inf
    V = torch.zeros(3, 8, dtype=torch.float64)
    return [
        (lambda: prox_adam(phi, psi, bias, -0.1, 0.07), "lam"),
        (lambda: prox_adam(phi, psi, bias, math.nan, 0.07), "lam"),
        (lambda: prox_adam(phi, psi, bias, 0.1, 0.0), "mu"),
        (lambda: prox_adam(phi, psi, bias, 0.1, -1.0), "mu"),
        (lambda: prox_adam(phi, psi, bias, 0.1, math.inf), "mu"),
        (lambda: prox_adam(nan_phi, psi, bias, 0.1, 0.07), "phi contains NaN"),
        (lambda: prox_adam(phi, inf_psi, bias, 0.1, 0.07), "psi contains NaN or Inf"),
        (lambda: prox_adam(phi, psi, bias * math.nan, 0.1, 0.07), "bias contains NaN"),
        (lambda: prox_adam(phi, psi[:, :-1], bias, 0.1, 0.07), "psi must be a \\(D, N\\)"),
        (lambda: prox_adam(phi[0], psi, bias, 0.1, 0.07), "phi must be a \\(K, N\\)"),
        (lambda: prox_adam(phi, psi, bias[:2], 0.1, 0.07), "bias must have shape"),
        (lambda: prox_adam(phi, psi, bias, 0.1, 0.07, init=torch.zeros(8, 3)), "init must have shape"),
        (lambda: prox_adam(phi, psi, bias, 0.1, 0.07, init=torch.full((3, 8), math.nan)), "init contains NaN"),
        (lambda: prox_adam(phi, psi, bias, 0.1, 0.07, check_every=0), "check_every"),
        (lambda: prox_adam(phi, psi, bias, 0.1, 0.07, rel_tol=-1.0), "rel_tol"),
        (lambda: prox_adam(phi, psi, bias, 0.1, 0.07, max_seconds=0), "max_seconds"),
        (lambda: prox_adam(phi, psi, bias, 0.1, 0.07, max_iter=-1), "max_iter"),
        (lambda: prox_adam(phi, psi, bias, 0.1, 0.07, form="autograd"), "unknown form"),
        (lambda: multitask_statistics(phi, psi.T, bias), "psi must be a \\(D, N\\)"),
        (lambda: multitask_statistics(nan_phi, psi, bias), "phi contains NaN"),
        (lambda: multitask_statistics(phi, psi, bias, chunk_size=0), "chunk_size"),
        (lambda: multitask_lasso_fista(gram, cross, -1e-3, energy=energy), "lam"),
        (lambda: multitask_lasso_fista(gram, cross, 0.1, energy=-1.0), "energy"),
        (lambda: multitask_lasso_fista(gram, cross, 0.1, energy=math.nan), "energy"),
        (lambda: multitask_lasso_fista(gram, cross[:5], 0.1, energy=energy), "cross must be"),
        (lambda: multitask_lasso_fista(gram, cross[:, 0], 0.1, energy=energy), "cross must be"),
        (lambda: multitask_lasso_fista(gram * math.nan, cross, 0.1, energy=energy), "gram contains NaN"),
        (lambda: multitask_lasso_fista(gram, cross, 0.1, energy=energy, init=V.T), "init must have shape"),
        (lambda: multitask_objective(V, -1.0, gram, cross, energy), "lam"),
        (lambda: multitask_objective(V.T, 0.1, gram, cross, energy), "V must have shape"),
        (lambda: multitask_objective(V, 0.1, gram[:5], cross, energy), "gram must be a square"),
        (lambda: multitask_objective(V, 0.1, gram, cross[:5], energy), "cross must be"),
        (lambda: multitask_objective_data(V * math.nan, 0.1, phi, psi, bias), "V contains NaN"),
        (lambda: multitask_objective_data(V[:2], 0.1, phi, psi, bias), "V must have shape"),
        (lambda: linear_init(3, 8, seed=1.5), "seed"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_calls())))
def test_bad_input_raises_a_specific_error(index):
    call, message = _bad_calls()[index]
    with pytest.raises(InvalidInputError, match=message):
        call()


def test_columns_at_or_below_1e_7_count_as_removed():
    assert REMOVED_NORM == 1e-7
    phi, psi, bias = _problem(60)
    V = torch.full((3, 8), 0.1, dtype=torch.float64)
    V[:, 1] = 0.9e-7 / math.sqrt(3)  # norm 0.9e-7: removed
    V[:, 4] = 0.0
    V[:, 6] = 2e-7 / math.sqrt(3)  # norm 2e-7: kept
    result = prox_adam(phi, psi, bias, 0.1, 0.07, init=V, max_iter=0)
    assert result.active.tolist() == [0, 2, 3, 5, 6, 7]
    assert result.trace[0].active == 6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_prox_adam_gram_runs_the_iterates_of_the_data_form(dtype):
    phi, psi, bias = _problem(41, K=9, D=4, N=60, relu=True)
    statistics = multitask_statistics(phi, psi, bias)
    data = prox_adam(phi.to(dtype), psi, bias, 0.05, 0.01, seed=2, max_iter=150, check_every=50)
    gram = prox_adam_gram(statistics.gram, statistics.cross, statistics.energy, 0.05, 0.01, seed=2,
                          dtype=dtype, max_iter=150, check_every=50)
    tolerance = 1e-10 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(gram.V, data.V, rtol=tolerance, atol=tolerance)
    assert gram.V.dtype == dtype and gram.iterations == 150 and len(gram.trace) == 4
    assert gram.objective == pytest.approx(
        multitask_objective_data(gram.V, 0.05, phi, psi, bias).objective, rel=1e-7)  # cancellation
    for call, message in [
        (lambda: prox_adam_gram(statistics.gram, statistics.cross, statistics.energy, 0.1, 0.0), "mu"),
        (lambda: prox_adam_gram(statistics.gram, statistics.cross, -1.0, 0.1, 0.1), "energy"),
        (lambda: prox_adam_gram(statistics.gram[:3], statistics.cross, 1.0, 0.1, 0.1), "gram must be a square"),
        (lambda: prox_adam_gram(statistics.gram, statistics.cross, 1.0, 0.1, 0.1, dtype=torch.float16), "dtype"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            call()
