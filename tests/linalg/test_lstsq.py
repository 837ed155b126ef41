"""Ridge-safe least squares from Gram statistics against numpy's lstsq on the data."""

import numpy as np
import pytest
import torch

from netshrink.errors import InvalidInputError
from netshrink.linalg import lstsq_from_gram


@pytest.mark.parametrize("seed", range(5))
def test_matches_numpy_lstsq_on_a_support(seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((300, 10)) * rng.uniform(0.1, 10, 10)
    Y = rng.standard_normal((300, 4))
    support = np.sort(rng.choice(10, size=6, replace=False))
    M = lstsq_from_gram(torch.from_numpy(X.T @ X / 300), torch.from_numpy(X.T @ Y / 300), torch.from_numpy(support))
    expected = np.linalg.lstsq(X[:, support], Y, rcond=None)[0].T
    np.testing.assert_allclose(M.numpy(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_singular_block_gives_the_minimum_norm_solution(seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((200, 6))
    X[:, 3] = X[:, 1]       # duplicated input
    X[:, 5] = 0.0           # dead input
    X[:, 4] = 2 * X[:, 0] - X[:, 2]  # linear combination
    Y = rng.standard_normal((200, 3))
    M = lstsq_from_gram(torch.from_numpy(X.T @ X / 200), torch.from_numpy(X.T @ Y / 200))
    expected = np.linalg.lstsq(X, Y, rcond=None)[0].T  # minimum-norm solution
    assert np.isfinite(M.numpy()).all()
    np.testing.assert_allclose(M.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(X @ M.numpy().T, X @ expected.T, atol=1e-6)


def test_singular_blocks_are_solved_correctly_every_time():
    # many fresh draws: a LAPACK binding that reads uninitialised memory fails at random
    rng = np.random.default_rng(11)
    for trial in range(200):
        n, d = rng.integers(20, 80), rng.integers(2, 12)
        X = rng.standard_normal((n, d))
        X[:, rng.integers(d)] = 0.0
        Y = rng.standard_normal((n, rng.integers(1, 4)))
        M = lstsq_from_gram(torch.from_numpy(X.T @ X / n), torch.from_numpy(X.T @ Y / n))
        expected = (np.linalg.pinv(X.T @ X / n) @ (X.T @ Y / n)).T
        np.testing.assert_allclose(M.numpy(), expected, atol=1e-8, err_msg=f"trial {trial}")


def test_edge_cases_and_errors():
    gram, cross = torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64)
    assert float(lstsq_from_gram(gram, cross).abs().max()) == 0
    assert lstsq_from_gram(torch.eye(3), torch.ones(3, 2), torch.tensor([], dtype=torch.int64)).shape == (2, 0)
    with pytest.raises(InvalidInputError, match="square"):
        lstsq_from_gram(torch.ones(3, 2), torch.ones(3, 2))
    with pytest.raises(InvalidInputError, match="rows like gram"):
        lstsq_from_gram(torch.eye(3), torch.ones(2, 2))
    with pytest.raises(InvalidInputError, match="NaN"):
        lstsq_from_gram(torch.eye(3) * float("nan"), torch.ones(3, 2))
