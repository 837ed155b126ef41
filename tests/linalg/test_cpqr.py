"""Tests of the column-pivoted QR in netshrink.linalg.cpqr against LAPACK (scipy)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import scipy.linalg as sla
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from netshrink.errors import InvalidInputError
from netshrink.linalg import CPQR, cpqr

# --------------------------------------------------------------------------------------
# matrices


def gaussian(rng, m, n):
    return rng.standard_normal((m, n))


def graded(rng, m, n, decades=8.0):
    """``U diag(10^-linspace(0, decades)) Vᵀ`` with random orthonormal U, V."""
    r = min(m, n)
    U = np.linalg.qr(rng.standard_normal((m, r)))[0]
    V = np.linalg.qr(rng.standard_normal((n, r)))[0]
    return (U * 10.0 ** -np.linspace(0.0, decades, r)) @ V.T


def low_rank(rng, m, n, r):
    """Exactly rank-``r`` product of thin factors."""
    return rng.standard_normal((m, r)) @ rng.standard_normal((r, n))


def with_zero_columns(rng, m, n):
    A = rng.standard_normal((m, n))
    A[:, rng.choice(n, size=n // 3, replace=False)] = 0.0
    return A


def with_duplicate_columns(rng, m, n):
    base = rng.standard_normal((m, n - n // 3))
    A = np.hstack([base, base[:, rng.choice(base.shape[1], size=n // 3, replace=False)]])
    return A[:, rng.permutation(n)]


CASES = {
    "tall": lambda rng: gaussian(rng, 60, 25),
    "wide": lambda rng: gaussian(rng, 20, 45),
    "square": lambda rng: gaussian(rng, 40, 40),
    "several-blocks": lambda rng: gaussian(rng, 96, 80),
    "wide-several-blocks": lambda rng: gaussian(rng, 70, 100),
    "graded": lambda rng: graded(rng, 50, 30),
    "graded-several-blocks": lambda rng: graded(rng, 90, 72, decades=6.0),
    "rank-deficient": lambda rng: low_rank(rng, 40, 30, 7),
    "rank-deficient-wide": lambda rng: low_rank(rng, 30, 70, 45),
    "zero-columns": lambda rng: with_zero_columns(rng, 30, 24),
    "duplicate-columns": lambda rng: with_duplicate_columns(rng, 30, 24),
    "1x1": lambda rng: gaussian(rng, 1, 1),
    "1xn": lambda rng: gaussian(rng, 1, 9),
    "mx1": lambda rng: gaussian(rng, 9, 1),
}


def spectral(X):
    """‖X‖₂, computed single-threaded (keeps the tests fast on a busy machine)."""
    X = np.asarray(X)
    if X.size == 0:
        return 0.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return float(torch.linalg.svdvals(torch.from_numpy(X).double())[0])
    finally:
        torch.set_num_threads(threads)


def lapack(A):
    """scipy's LAPACK xGEQP3: Q (m, ℓ), R (ℓ, n), perm (n,)."""
    return sla.qr(A, pivoting=True, mode="economic")


def max_abs(X):
    return float(np.abs(X).max()) if X.size else 0.0


def numerical_rank(diag, rel=1e-10):
    d = np.abs(diag)
    return int(np.sum(d > rel * d[0])) if d.size and d[0] > 0 else 0


def determined_prefix(R, rank, gap=1e-6):
    """Number of leading pivots of a full factorization ``R`` that are well determined.

    The candidates at step ``j`` have norms ``‖R[j:, c]‖`` (``c ≥ j``; orthogonal
    transforms keep column norms), so pivot ``j`` is unambiguous when the two largest
    differ by more than ``gap`` (relative). Counting stops at the first ambiguous step
    (for instance exact duplicate columns, whose order LAPACK decides by roundoff) or at
    the numerical ``rank``.
    """
    R = np.asarray(R)
    for j in range(rank):
        norms = np.sort(np.linalg.norm(R[j:, j:], axis=0))[::-1]
        if norms.size > 1 and norms[0] - norms[1] <= gap * norms[0]:
            return j
    return rank


# --------------------------------------------------------------------------------------
# agreement with LAPACK


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_lapack(case):
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    A = CASES[case](rng)
    m, n = A.shape
    f = cpqr(A)
    Q, R, P = lapack(A)
    ref_diag = np.abs(np.diag(R))
    diag = np.abs(np.diag(f.R[:, : f.rank]))
    assert f.rank == min(m, n)
    rank = numerical_rank(ref_diag)

    # same pivots while they are well separated
    agree = determined_prefix(R, rank)
    if "duplicate" not in case:
        assert agree == rank  # random data: every pivot up to the rank is unambiguous
    np.testing.assert_array_equal(f.perm[:agree], P[:agree])
    # |diag R| equal to 1e-10 relative up to the numerical rank, tiny beyond it
    np.testing.assert_allclose(diag[:rank], ref_diag[:rank], rtol=1e-10, atol=1e-13 * ref_diag[0])
    scale = max(ref_diag[0], 1e-300) if ref_diag.size else 1.0
    assert np.all(diag[rank:] <= 1e-9 * scale)
    assert np.all(ref_diag[rank:] <= 1e-9 * scale)

    # A Π = Q R over all columns, Q orthonormal
    Qf = f.Q
    norm_a = max(spectral(A), 1e-300)
    assert spectral(A[:, f.perm] - Qf @ f.R) <= 1e-13 * norm_a
    np.testing.assert_allclose(Qf.T @ Qf, np.eye(f.rank), atol=1e-13)
    assert f.trailing.shape == (m - f.rank, n - f.rank)


def test_duplicate_columns_tie_break_like_lapack():
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((2, 12, 1))
    A = np.hstack([y, x, 3 * y, x, x, 0.5 * x])
    f = cpqr(A, k=2)
    P = lapack(A)[2]
    np.testing.assert_array_equal(f.perm[:2], P[:2])
    assert f.perm[1] == 1  # first of the three identical copies of x


@pytest.mark.parametrize("seed", range(3))
def test_ties_go_to_the_first_column(seed):
    """Exact duplicates tie; the first of them in the current column order is taken
    (LAPACK's idamax rule), however their norms were rounded."""
    A = with_duplicate_columns(np.random.default_rng(seed), 30, 24)
    full = cpqr(A)
    rank = numerical_rank(np.diag(full.R))
    ties = 0
    for j in range(rank):
        step = cpqr(A, k=j)
        norms = np.linalg.norm(step.trailing, axis=0)
        near = np.flatnonzero(norms >= norms.max() * (1.0 - 1e-12))
        ties += near.size > 1
        assert full.perm[j] == step.perm[j + near[0]], j
    assert ties > 0


# --------------------------------------------------------------------------------------
# structure of truncated factorizations


@pytest.mark.parametrize("shape", [(70, 50), (40, 90)])
@pytest.mark.parametrize("k", [0, 1, 5, 32, 33, 40])
def test_truncated_relations(shape, k):
    rng = np.random.default_rng(1000 * k + shape[0])
    A = rng.standard_normal(shape)
    m, n = shape
    f = cpqr(A, k=k)
    assert f.rank == k
    assert f.R.shape == (k, n)
    assert f.Q.shape == (m, k)
    assert f.trailing.shape == (m - k, n - k)
    assert sorted(f.perm.tolist()) == list(range(n))
    assert np.array_equal(f.R[:, :k], np.triu(f.R[:, :k]))
    norm_a = spectral(A)
    # selected columns are reproduced exactly by Q R11
    assert spectral(A[:, f.perm[:k]] - f.Q @ f.R[:, :k]) <= 1e-13 * norm_a
    np.testing.assert_allclose(f.Q.T @ f.Q, np.eye(k), atol=1e-13)
    # the rest: A[:, perm[k:]] − Q R12 = Q₂ M, so column norms and ‖·‖₂ are those of M
    residual = A[:, f.perm[k:]] - f.Q @ f.R[:, k:]
    np.testing.assert_allclose(
        np.linalg.norm(residual, axis=0), np.linalg.norm(f.trailing, axis=0), rtol=1e-10, atol=1e-13 * norm_a
    )
    assert f.r22_norm() == pytest.approx(spectral(residual), rel=1e-10)


@pytest.mark.parametrize("shape", [(80, 60), (50, 120)])
def test_truncated_run_is_prefix_of_full_run(shape):
    rng = np.random.default_rng(shape[1])
    A = torch.from_numpy(rng.standard_normal(shape))
    full = cpqr(A)
    for k in (1, 7, 31, 32, 33, 45):
        part = cpqr(A, k=k)
        assert torch.equal(part.perm[:k], full.perm[:k])
        assert torch.equal(part.R[:, :k], full.R[:k, :k])
        # R12 holds the same columns, possibly in another order
        order_part = torch.argsort(part.perm[k:])
        order_full = torch.argsort(full.perm[k:])
        torch.testing.assert_close(part.R[:, k:][:, order_part], full.R[:k, k:][:, order_full], rtol=1e-14, atol=1e-14)


def test_r22_norm_of_full_factorization_is_zero():
    A = np.random.default_rng(3).standard_normal((6, 4))
    f = cpqr(A)
    assert f.trailing.shape == (2, 0)
    assert f.r22_norm() == 0.0


# --------------------------------------------------------------------------------------
# stopping rule


@pytest.mark.parametrize("seed", range(4))
def test_tol_rule(seed):
    rng = np.random.default_rng(seed)
    A = graded(rng, 70, 50, decades=10.0)
    full = cpqr(A)
    diag = np.abs(np.diag(full.R))
    r11 = diag[0]
    for tol in 10.0 ** -rng.uniform(0.5, 9.0, size=5):
        f = cpqr(A, tol=tol)
        r = f.rank
        assert r > 0
        assert tol * r11 < diag[r - 1]  # the last step taken had a larger pivot
        if r < 50:
            assert diag[r] <= tol * r11  # the first skipped step is below the threshold
        np.testing.assert_array_equal(f.perm[:r], full.perm[:r])


def test_tol_and_k_whichever_comes_first():
    A = graded(np.random.default_rng(11), 40, 30, decades=6.0)
    by_tol = cpqr(A, tol=1e-3).rank
    assert 0 < by_tol < 30
    assert cpqr(A, k=by_tol - 2, tol=1e-3).rank == by_tol - 2
    assert cpqr(A, k=by_tol + 2, tol=1e-3).rank == by_tol


def test_tol_edges():
    A = np.random.default_rng(5).standard_normal((8, 6))
    assert cpqr(A, tol=1.0).rank == 0  # the first pivot has norm |r11| ≤ 1·|r11|
    assert cpqr(A, tol=0.0).rank == 6
    assert cpqr(np.zeros((3, 4)), tol=0.0).rank == 0
    assert cpqr(np.zeros((3, 4))).rank == 3
    f = cpqr(A, tol=1.0)
    assert f.R.shape == (0, 6) and f.Q.shape == (8, 0)
    np.testing.assert_array_equal(f.trailing, A[:, f.perm])


# --------------------------------------------------------------------------------------
# norm downdating


def nearly_parallel(rng, m, n):
    """Columns ``c_j x + δ_j y_j`` with ``δ_j`` from 1e-3 to 1e-11: after the first step
    every downdated norm ``‖M(:, j)‖² − r_1j²`` cancels catastrophically."""
    x = rng.standard_normal(m)
    deltas = 10.0 ** -rng.uniform(3.0, 11.0, size=n)
    A = np.outer(x, rng.uniform(0.5, 2.0, size=n)) + rng.standard_normal((m, n)) * deltas
    A[:, 0] = 3.0 * x  # the first pivot
    return A


@pytest.mark.parametrize("shape", [(60, 40), (50, 80)])
def test_norms_survive_downdating_cancellation(shape):
    rng = np.random.default_rng(shape[1])
    A = nearly_parallel(rng, *shape)
    f = cpqr(A)
    diag = np.abs(np.diag(f.R))
    # each pivot is the largest column of the exactly computed trailing block
    for j in range(1, 15):
        trailing = cpqr(A, k=j).trailing
        largest = np.linalg.norm(trailing, axis=0).max()
        assert diag[j] >= (1.0 - 1e-6) * largest, j
    # and agrees with LAPACK
    Q, R, P = lapack(A)
    ref = np.abs(np.diag(R))
    rank = numerical_rank(ref, rel=1e-13)
    agree = determined_prefix(R, rank, gap=1e-4)
    assert agree >= 10
    np.testing.assert_array_equal(f.perm[:agree], P[:agree])
    np.testing.assert_allclose(diag[:agree], ref[:agree], rtol=1e-5)


def test_norms_without_recomputation_would_be_wrong():
    """The test matrix really defeats plain downdating (guards the test above)."""
    rng = np.random.default_rng(2)
    A = nearly_parallel(rng, 60, 40)
    norms2 = np.sum(A * A, axis=0)
    R = lapack(A)[1]
    first_row = R[0] * np.sign(R[0, 0])
    downdated = np.sqrt(np.maximum(norms2[lapack(A)[2]] - first_row**2, 0.0))
    exact = np.linalg.norm(A[:, lapack(A)[2]] - np.outer(lapack(A)[0][:, 0], R[0]), axis=0)
    bad = np.abs(downdated[1:] - exact[1:]) > 0.5 * exact[1:]
    assert bad.any()


# --------------------------------------------------------------------------------------
# dtypes, devices, containers


def test_float32_agrees_with_float64():
    rng = np.random.default_rng(21)
    A64 = torch.from_numpy(graded(rng, 60, 40, decades=3.0))
    A32 = A64.float()
    f64, f32 = cpqr(A64), cpqr(A32)
    assert f32.R.dtype == torch.float32 and f32.Q.dtype == torch.float32 and f32.trailing.dtype == torch.float32
    d64 = f64.R.diagonal().abs().numpy()
    d32 = f32.R.diagonal().abs().double().numpy()
    np.testing.assert_allclose(d32, d64, rtol=1e-4, atol=1e-5 * d64[0])
    agree = determined_prefix(f64.R.numpy(), 40, gap=1e-3)
    assert torch.equal(f32.perm[:agree], f64.perm[:agree])
    Q = f32.Q
    torch.testing.assert_close(Q.T @ Q, torch.eye(40), atol=1e-5, rtol=0)
    assert float(torch.linalg.matrix_norm(A32[:, f32.perm] - Q @ f32.R, ord=2)) <= 1e-5 * float(d64[0])


def test_torch_in_torch_out_numpy_in_numpy_out():
    rng = np.random.default_rng(4)
    A = rng.standard_normal((12, 9))
    fn = cpqr(A, k=4)
    ft = cpqr(torch.from_numpy(A), k=4)
    for value in (fn.perm, fn.R, fn.Q, fn.trailing):
        assert isinstance(value, np.ndarray)
    for value in (ft.perm, ft.R, ft.Q, ft.trailing):
        assert isinstance(value, torch.Tensor)
    assert fn.perm.dtype == np.int64 and ft.perm.dtype == torch.int64
    assert fn.R.dtype == np.float64 and ft.R.dtype == torch.float64
    assert isinstance(fn.rank, int) and isinstance(fn.r22_norm(), float)
    np.testing.assert_array_equal(fn.perm, ft.perm.numpy())
    np.testing.assert_array_equal(fn.R, ft.R.numpy())
    assert isinstance(fn, CPQR)
    f32 = cpqr(A.astype(np.float32), k=4)
    assert f32.R.dtype == np.float32 and f32.Q.dtype == np.float32


def test_integer_and_bool_numpy_inputs_become_float64():
    A = np.arange(12).reshape(4, 3)
    f = cpqr(A)
    assert f.R.dtype == np.float64
    np.testing.assert_allclose(A[:, f.perm], f.Q @ f.R, atol=1e-12)
    assert cpqr(np.eye(3, dtype=bool)).R.dtype == np.float64


def test_input_is_not_modified():
    rng = np.random.default_rng(9)
    A = np.asfortranarray(rng.standard_normal((30, 20)))
    before = A.copy()
    cpqr(A, k=10)
    np.testing.assert_array_equal(A, before)
    T = torch.from_numpy(rng.standard_normal((20, 30))).T  # non-contiguous view
    T_before = T.clone()
    f = cpqr(T)
    assert torch.equal(T, T_before)
    f.trailing  # noqa: B018 - reading the views must not touch the input either
    assert torch.equal(T, T_before)


def test_requires_grad_input_is_fine():
    A = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    f = cpqr(A)
    assert not f.R.requires_grad


def test_extreme_scales():
    rng = np.random.default_rng(13)
    A = rng.standard_normal((20, 15))
    ref = np.abs(np.diag(cpqr(A).R))
    for scale in (1e-200, 1e200, 1e-300):
        f = cpqr(A * scale)
        np.testing.assert_allclose(np.abs(np.diag(f.R)) / scale, ref, rtol=1e-12)
        assert np.all(np.isfinite(f.trailing))
    f32 = cpqr(torch.from_numpy(A).float() * 1e30)
    assert torch.isfinite(f32.R).all()


@pytest.mark.parametrize(
    "A",
    [
        # found by property testing: a tiny residual column (subnormal after scaling)
        [[9.840252457850897e260, 0.0], [0.0, 0.0], [0.0, 3.0932396392985176e99], [0.0, 0.0]],
        [[1.6349923815708425e296, 1.0, 1.0]] + [[1.0, 1.0, 1.0]] * 4,
        [[1.0, 2.14524927e155, 1.0], [0.0, 1.0, 1.0]] + [[1.0, 1.0, 1.0]] * 5,
        [[2.22507386e-313] * 3] * 2,
        [[1.0, 0.0], [0.0, 4.24087528e-283]],
    ],
)
def test_wide_dynamic_range_keeps_q_orthonormal(A):
    A = np.array(A)
    k = min(A.shape)
    f = cpqr(A)
    assert np.all(np.isfinite(f.R)) and np.all(np.isfinite(f.Q))
    np.testing.assert_allclose(f.Q.T @ f.Q, np.eye(k), atol=1e-14)
    diag = np.diag(f.R)
    assert np.all(diag[1:] <= diag[:-1])
    assert max_abs(A[:, f.perm] - f.Q @ f.R) <= 1e-15 * np.abs(A).max() * 4


def test_stopping_at_a_tiny_column_leaves_it_untouched():
    A = np.array([[1.0, 0.0], [0.0, 1e-300], [0.0, 2e-300]])
    f = cpqr(A, tol=1e-10)
    assert f.rank == 1
    np.testing.assert_array_equal(np.abs(f.trailing[:, 0]), [1e-300, 2e-300])


def test_float32_norm_overflow_is_reported():
    with pytest.raises(InvalidInputError, match="overflow"):
        cpqr(torch.full((20, 2), 1e38))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    A = torch.randn(80, 50, dtype=torch.float64)
    cpu = cpqr(A, k=20)
    gpu = cpqr(A.cuda(), k=20)
    assert gpu.R.device.type == "cuda" and gpu.perm.device.type == "cuda" and gpu.Q.device.type == "cuda"
    assert torch.equal(gpu.perm.cpu(), cpu.perm)
    torch.testing.assert_close(gpu.R.cpu(), cpu.R, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    ("A", "kwargs", "message"),
    [
        (np.array([[1.0, np.nan], [0.0, 1.0]]), {}, "NaN"),
        (np.array([[1.0, 2.0], [np.inf, 1.0]]), {}, "infinite"),
        (torch.tensor([[1.0, 2.0], [3.0, float("-inf")]]), {}, "infinite"),
        (np.zeros((0, 3)), {}, "empty"),
        (np.zeros((3, 0)), {}, "empty"),
        (np.ones(4), {}, "2-D"),
        (np.ones((2, 3, 4)), {}, "2-D"),
        (np.ones((3, 4)), {"k": -1}, "0 <= k"),
        (np.ones((3, 4)), {"k": 4}, "0 <= k"),
        (np.ones((3, 4)), {"k": 2.0}, "integer"),
        (np.ones((3, 4)), {"k": True}, "integer"),
        (np.ones((3, 4)), {"k": "2"}, "integer"),
        (np.ones((3, 4)), {"tol": -0.1}, "0 <= tol <= 1"),
        (np.ones((3, 4)), {"tol": 1.5}, "0 <= tol <= 1"),
        (np.ones((3, 4)), {"tol": float("nan")}, "NaN"),
        (np.ones((3, 4)), {"tol": "small"}, "real number"),
        (torch.ones((3, 4), dtype=torch.int64), {}, "float32 or torch.float64"),
        (np.ones((3, 4), dtype=complex), {}, "complex"),
    ],
)
def test_invalid_input(A, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        cpqr(A, **kwargs)


def test_nan_message_names_count_and_position():
    A = np.ones((4, 5))
    A[2, 3] = np.nan
    A[3, 1] = np.nan
    with pytest.raises(InvalidInputError, match=r"2 NaN entries \(first at row 3, column 1\)"):
        cpqr(A)


def test_k_accepts_numpy_and_torch_integers():
    A = np.random.default_rng(0).standard_normal((5, 4))
    assert cpqr(A, k=np.int64(2)).rank == 2
    assert cpqr(A, k=torch.tensor(3)).rank == 3
    assert cpqr(A, tol=np.float32(0.5)).rank >= 1


# --------------------------------------------------------------------------------------
# properties on small random matrices


@st.composite
def matrices(draw):
    m = draw(st.integers(1, 9))
    n = draw(st.integers(1, 9))
    elements = st.floats(-100.0, 100.0, allow_nan=False, allow_infinity=False, allow_subnormal=False)
    return draw(arrays(np.float64, (m, n), elements=elements))


@settings(max_examples=60, deadline=None)
@given(A=matrices(), data=st.data())
def test_properties(A, data):
    m, n = A.shape
    k = data.draw(st.integers(0, min(m, n)))
    f = cpqr(A, k=k)
    scale = max(spectral(A), 1.0)
    assert f.rank == k
    R11 = f.R[:, :k]
    assert np.array_equal(R11, np.triu(R11))
    np.testing.assert_allclose(f.Q.T @ f.Q, np.eye(k), atol=1e-12)
    assert max_abs(A[:, f.perm[:k]] - f.Q @ R11) <= 1e-12 * scale
    diag = np.diag(R11)
    assert np.all(diag >= 0.0)  # documented sign convention
    assert np.all(diag[1:] <= diag[:-1] * (1.0 + 1e-7) + 1e-12 * scale)  # greedy: non-increasing
    full = cpqr(A)
    assert max_abs(A[:, full.perm] - full.Q @ full.R) <= 1e-12 * scale
    np.testing.assert_array_equal(f.perm[:k], full.perm[:k])
