"""Greedy backward elimination (structured OBS) against brute-force refits with scipy."""

import numpy as np
import pytest
import scipy.linalg
import torch

from netshrink.linalg import elimination
from netshrink.linalg.elimination import elimination_order


def _problem(rng, n, s, out, rows=400):
    """Data ``X: (rows, n·s)`` (ReLU-like, columns of unequal scale) and targets ``Y``."""
    X = np.maximum(rng.standard_normal((rows, n * s)), 0) * rng.uniform(0.2, 3, n * s)
    Y = X @ rng.standard_normal((n * s, out)) + 0.3 * rng.standard_normal((rows, out))
    return X.T @ X / rows, X.T @ Y / rows


def _columns(units, s):
    return np.concatenate([np.arange(u * s, (u + 1) * s) for u in units]) if len(units) else np.zeros(0, int)


def _explained(gram, cross, s, weight, units, damping):
    """``tr(G C_Sᵀ Γδ_SS⁻¹ C_S)`` by a direct solve on the damped Gram (scipy)."""
    if not len(units):
        return 0.0
    damped = gram + damping * np.mean(np.diag(gram)) * np.eye(len(gram))
    c = _columns(units, s)
    coefficients = scipy.linalg.solve(damped[np.ix_(c, c)], cross[c], assume_a="pos")
    weighted = cross[c] @ weight if weight.ndim == 2 else cross[c] * weight
    return float(np.sum(coefficients * weighted))


def _brute_force_order(problems, n, damping):
    """Greedy elimination with one refit per candidate: each step removes the unit whose
    removal loses the least weighted explained energy."""
    alive, removed = list(range(n)), []
    while len(alive) > 1:
        current = sum(_explained(g, c, s, w, alive, damping) for g, c, s, w in problems)
        losses = [current - sum(_explained(g, c, s, w, [u for u in alive if u != v], damping)
                                for g, c, s, w in problems) for v in alive]
        victim = alive[int(np.argmin(losses))]
        removed.append(victim)
        alive.remove(victim)
    return removed[::-1] if not alive else [alive[0], *removed[::-1]]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("damping", [0.0, 0.01])
def test_equals_greedy_refits_of_every_candidate(seed, damping):
    """Two consumers reading the same 9 units (1 and 3 columns each), one weighed by a
    full matrix G, one by a diagonal: the order is the brute-force greedy's exactly."""
    rng = np.random.default_rng(seed)
    n = 9
    first, second = _problem(rng, n, 1, 4), _problem(rng, n, 3, 5)
    root = rng.standard_normal((4, 4))
    weights = [root @ root.T + 0.1 * np.eye(4), rng.uniform(0.1, 2, 5)]
    problems = [(*first, 1, weights[0]), (*second, 3, weights[1])]
    order = elimination_order([torch.from_numpy(p[0]) for p in problems], [torch.from_numpy(p[1]) for p in problems],
                              [1, 3], [torch.from_numpy(w) for w in weights], damping)
    assert order.tolist() == _brute_force_order(problems, n, damping)


def test_identity_weights_are_the_default_and_a_diagonal_equals_its_matrix():
    rng = np.random.default_rng(7)
    gram, cross = (torch.from_numpy(a) for a in _problem(rng, 12, 2, 6))
    weight = torch.from_numpy(rng.uniform(0.1, 3, 6))
    assert torch.equal(elimination_order([gram], [cross], [2]),
                       elimination_order([gram], [cross], [2], [torch.eye(6, dtype=torch.float64)]))
    assert torch.equal(elimination_order([gram], [cross], [2], [weight]),
                       elimination_order([gram], [cross], [2], [torch.diag(weight)]))


def test_planted_units_are_kept_and_a_dead_one_goes_first():
    """Targets made by 4 of 14 units, one of them duplicated: the 4 (one of the copies)
    are the last eliminated, and the dead unit is the first."""
    rng = np.random.default_rng(3)
    X = np.maximum(rng.standard_normal((2000, 14)), 0)
    X[:, 5] = 0.0
    X[:, 9] = X[:, 2]
    planted = [0, 2, 7, 11]
    Y = X[:, planted] @ rng.standard_normal((4, 3))
    order = elimination_order([torch.from_numpy(X.T @ X / 2000)], [torch.from_numpy(X.T @ Y / 2000)], [1])
    kept = set(order[:4].tolist())
    assert kept - {2, 9} == {0, 7, 11} and len(kept & {2, 9}) == 1  # either copy serves
    assert sorted(order.tolist()) == list(range(14))
    assert order[-1] == 5


def test_wide_cuts_remove_a_share_per_step_close_to_exact_greedy(monkeypatch):
    """Past 2·STEP_SHARE units a step removes several; the refitted loss of the kept
    prefixes stays within a few percent of the one-at-a-time greedy's."""
    rng = np.random.default_rng(11)
    gram, cross = _problem(rng, 300, 1, 40, rows=3000)
    chunked = elimination_order([torch.from_numpy(gram)], [torch.from_numpy(cross)], [1])
    monkeypatch.setattr(elimination, "STEP_SHARE", 10**6)
    exact = elimination_order([torch.from_numpy(gram)], [torch.from_numpy(cross)], [1])
    assert sorted(chunked.tolist()) == list(range(300))
    total = np.trace(cross.T @ np.linalg.solve(gram, cross))
    for k in (60, 150, 240):
        lost_chunked = total - _explained(gram, cross, 1, np.ones(40), chunked[:k].numpy(), 0.0)
        lost_exact = total - _explained(gram, cross, 1, np.ones(40), exact[:k].numpy(), 0.0)
        assert lost_chunked <= 1.05 * lost_exact


def test_negative_damping_is_refused():
    gram = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="damping must be ≥ 0"):
        elimination_order([gram], [gram], [1], damping=-1.0)
