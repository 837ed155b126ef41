"""Tests of the interpolative decomposition in netshrink.linalg.interpolative."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg.interpolative as sli
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from netshrink.errors import InvalidInputError
from netshrink.linalg import InterpolativeDecomposition, cpqr, interpolative_decomposition


def decaying(rng, m, n, rate=0.15):
    """Random matrix with singular values ``exp(−rate·j)``."""
    r = min(m, n)
    U = np.linalg.qr(rng.standard_normal((m, r)))[0]
    V = np.linalg.qr(rng.standard_normal((n, r)))[0]
    return (U * np.exp(-rate * np.arange(r))) @ V.T


def svdvals(X):
    """Singular values, computed single-threaded (keeps the tests fast on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.svdvals(torch.from_numpy(np.asarray(X)).double()).numpy()
    finally:
        torch.set_num_threads(threads)


def spectral(X):
    return float(svdvals(X)[0]) if np.asarray(X).size else 0.0


def well_determined(A, k, gap=1e-6):
    """True when the first ``k`` pivots of ``A`` are unambiguous (see test_cpqr)."""
    R = cpqr(A).R
    for j in range(k):
        norms = np.sort(np.linalg.norm(R[j:, j:], axis=0))[::-1]
        if norms.size > 1 and norms[0] - norms[1] <= gap * norms[0]:
            return False
    return True


@pytest.mark.parametrize(("shape", "k"), [((60, 40), 10), ((40, 60), 25), ((80, 80), 1), ((120, 90), 45)])
def test_identity_block_and_error_equals_r22(shape, k):
    rng = np.random.default_rng(shape[0] + k)
    A = decaying(rng, *shape)
    d = interpolative_decomposition(A, k=k)
    assert isinstance(d, InterpolativeDecomposition)
    assert d.rank == k and d.cols.shape == (k,) and d.T.shape == (k, shape[1])
    assert d.cols.dtype == np.int64
    np.testing.assert_array_equal(d.T[:, d.cols], np.eye(k))  # exactly
    error = spectral(A - A[:, d.cols] @ d.T)
    assert error == pytest.approx(d.error_bound, rel=1e-8)
    sigma = svdvals(A)
    assert d.error_bound >= sigma[k] * (1.0 - 1e-10)  # nothing beats the truncated SVD
    assert isinstance(d.error_bound, float)


def test_columns_and_error_match_scipy_interp_decomp():
    rng = np.random.default_rng(17)
    A = decaying(rng, 200, 120, rate=0.05)
    assert well_determined(A, 60)
    for k in (5, 20, 60):
        d = interpolative_decomposition(A, k=k)
        idx, proj = sli.interp_decomp(A, k, rand=False)
        theirs = spectral(A - A[:, idx[:k]] @ sli.reconstruct_interp_matrix(idx, proj))
        ours = spectral(A - A[:, d.cols] @ d.T)
        assert set(idx[:k].tolist()) == set(d.cols.tolist())
        assert ours == pytest.approx(theirs, rel=1e-6)


def test_error_is_within_a_modest_factor_of_scipy_on_kernel_matrix():
    """Damle Goal 3's Gaussian kernel matrix: errors comparable to scipy's deterministic ID."""
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(200, 2))
    G = np.exp(-2.0 * np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1))
    sigma = svdvals(G)
    for k in (5, 10, 20):
        d = interpolative_decomposition(G, k=k)
        idx, proj = sli.interp_decomp(G, k, rand=False)
        theirs = spectral(G - G[:, idx[:k]] @ sli.reconstruct_interp_matrix(idx, proj))
        ours = spectral(G - G[:, d.cols] @ d.T)
        assert ours <= 10.0 * theirs and theirs <= 10.0 * ours
        assert ours >= sigma[k] * (1.0 - 1e-8)


def test_unpacks_as_cols_then_T():
    A = np.random.default_rng(0).standard_normal((10, 8))
    d = interpolative_decomposition(A, k=3)
    cols, T = d
    assert cols is d.cols and T is d.T
    cols, T = interpolative_decomposition(A, 3)
    np.testing.assert_array_equal(cols, d.cols)


def test_torch_in_torch_out_same_dtype():
    rng = np.random.default_rng(5)
    A64 = torch.from_numpy(decaying(rng, 50, 30))
    for A in (A64, A64.float()):
        d = interpolative_decomposition(A, k=8)
        assert isinstance(d.cols, torch.Tensor) and isinstance(d.T, torch.Tensor)
        assert d.cols.dtype == torch.int64 and d.T.dtype == A.dtype and d.T.device == A.device
        assert torch.equal(d.T[:, d.cols], torch.eye(8, dtype=A.dtype))
    d64 = interpolative_decomposition(A64, k=8)
    d32 = interpolative_decomposition(A64.float(), k=8)
    assert torch.equal(d64.cols, d32.cols)
    torch.testing.assert_close(d32.T.double(), d64.T, rtol=1e-3, atol=1e-4)
    assert d32.error_bound == pytest.approx(d64.error_bound, rel=1e-4)


def test_input_is_not_modified():
    A = np.random.default_rng(2).standard_normal((20, 15))
    before = A.copy()
    interpolative_decomposition(A, k=6)
    np.testing.assert_array_equal(A, before)


def test_tol_selects_rank_like_cpqr():
    A = decaying(np.random.default_rng(8), 60, 50, rate=0.3)
    d = interpolative_decomposition(A, tol=1e-4)
    f = cpqr(A, tol=1e-4)
    assert d.rank == f.rank and 0 < d.rank < 50
    np.testing.assert_array_equal(d.cols, f.perm[: f.rank])
    assert spectral(A - A[:, d.cols] @ d.T) == pytest.approx(d.error_bound, rel=1e-6)


def test_k_zero():
    A = np.random.default_rng(1).standard_normal((7, 5))
    d = interpolative_decomposition(A, k=0)
    assert d.cols.shape == (0,) and d.cols.dtype == np.int64
    assert d.T.shape == (0, 5)
    assert d.error_bound == pytest.approx(spectral(A), rel=1e-12)
    t = interpolative_decomposition(torch.from_numpy(A), k=0)
    assert t.T.shape == (0, 5) and t.cols.dtype == torch.int64


@pytest.mark.parametrize("shape", [(9, 6), (6, 9)])
def test_k_full(shape):
    A = np.random.default_rng(shape[0]).standard_normal(shape)
    k = min(shape)
    d = interpolative_decomposition(A, k=k)
    np.testing.assert_array_equal(d.T[:, d.cols], np.eye(k))
    assert np.abs(A - A[:, d.cols] @ d.T).max() <= 1e-12 * spectral(A)
    assert d.error_bound == 0.0
    if shape[0] >= shape[1]:  # every column selected: T is a permutation
        assert sorted(d.cols.tolist()) == list(range(shape[1]))


def test_rank_deficient_fallback_is_finite():
    """k beyond the exact rank: R11 gets exact zeros on its diagonal."""
    e = np.eye(6)
    A = np.column_stack([2 * e[:, 0], 3 * e[:, 1], 4 * e[:, 2], np.zeros(6), np.zeros(6), e[:, 0] + e[:, 1]])
    f = cpqr(A, k=5)
    R11 = f.R[:, :5]
    assert np.sum(np.diag(R11) == 0.0) == 2  # the triangular solve alone would divide by zero
    with np.errstate(all="ignore"):
        naive = sli_safe_solve(R11, f.R[:, 5:])
    assert not np.all(np.isfinite(naive))
    d = interpolative_decomposition(A, k=5)
    assert np.all(np.isfinite(d.T))
    np.testing.assert_array_equal(d.T[:, d.cols], np.eye(5))
    np.testing.assert_allclose(A[:, d.cols] @ d.T, A, atol=1e-14)
    t = interpolative_decomposition(torch.from_numpy(A).float(), k=5)
    assert torch.isfinite(t.T).all()


def sli_safe_solve(R11, R12):
    """Plain back substitution (what a triangular solve computes), for comparison."""
    X = np.zeros_like(R12)
    for i in range(R11.shape[0] - 1, -1, -1):
        X[i] = (R12[i] - R11[i, i + 1 :] @ X[i + 1 :]) / R11[i, i]
    return X


def test_numerically_rank_deficient_is_finite_and_accurate():
    rng = np.random.default_rng(4)
    A = rng.standard_normal((40, 6)) @ rng.standard_normal((6, 30))
    d = interpolative_decomposition(A, k=12)
    assert np.all(np.isfinite(d.T))
    assert np.abs(A - A[:, d.cols] @ d.T).max() <= 1e-8 * spectral(A)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"k": 9}, "0 <= k"), ({"k": -2}, "0 <= k"), ({"tol": 2.0}, "0 <= tol <= 1"), ({"k": 1.5}, "integer")],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        interpolative_decomposition(np.ones((8, 10)), **kwargs)


def test_invalid_matrix():
    with pytest.raises(InvalidInputError, match="NaN"):
        interpolative_decomposition(np.array([[np.nan, 1.0]]), k=1)
    with pytest.raises(InvalidInputError, match="2-D"):
        interpolative_decomposition(np.ones(3), k=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    A = torch.randn(50, 40, dtype=torch.float64)
    d = interpolative_decomposition(A.cuda(), k=10)
    assert d.T.device.type == "cuda" and d.cols.device.type == "cuda"
    assert torch.equal(d.cols.cpu(), interpolative_decomposition(A, k=10).cols)


@st.composite
def matrices_and_k(draw):
    m = draw(st.integers(1, 8))
    n = draw(st.integers(1, 8))
    elements = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False, allow_subnormal=False)
    A = draw(arrays(np.float64, (m, n), elements=elements))
    return A, draw(st.integers(0, min(m, n)))


@settings(max_examples=50, deadline=None)
@given(case=matrices_and_k())
def test_properties(case):
    A, k = case
    d = interpolative_decomposition(A, k=k)
    assert d.T.shape == (k, A.shape[1])
    assert np.all(np.isfinite(d.T))
    np.testing.assert_array_equal(d.T[:, d.cols], np.eye(k))
    sigma = svdvals(A)
    bound = sigma[k] if k < sigma.size else 0.0
    assert d.error_bound >= bound * (1.0 - 1e-9) - 1e-12


@pytest.mark.parametrize("scale", [1e-313, 1e-200, 1.0, 1e200])
def test_scale_invariance_and_tiny_inputs(scale):
    rng = np.random.default_rng(6)
    A = rng.standard_normal((8, 3)) @ rng.standard_normal((3, 6))  # rank 3
    for k in (3, 4):  # at and past the rank
        d = interpolative_decomposition(A * scale, k=k)
        assert np.all(np.isfinite(d.T))
        np.testing.assert_array_equal(d.T[:, d.cols], np.eye(k))
    if scale >= 1e-200:  # normal range: the same columns and the same T as unscaled
        reference = interpolative_decomposition(A, k=3)
        d = interpolative_decomposition(A * scale, k=3)
        np.testing.assert_array_equal(d.cols, reference.cols)
        np.testing.assert_allclose(d.T, reference.T, rtol=1e-10, atol=1e-12)
