"""Float32 products summed in float64: the Gram statistics against float64 references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netshrink.observe import GramStatistic


@pytest.mark.parametrize("offset", [0.0, 3.0, 30.0])
def test_gram_and_covariance_match_float64(offset):
    """Rows with a mean far above their spread (offset 30 × std): the raw moments and the
    covariance (what an intercept fit uses) stay within 1e-6 of float64 arithmetic, and
    the Gram is exactly symmetric."""
    torch.manual_seed(int(offset))
    layer = nn.Linear(300, 7)
    rows = torch.randn(9000, 300) @ torch.randn(300, 300) / 17 + offset
    reference = torch.randn(9000, 300) + offset
    statistic = GramStatistic([layer])
    for current, original in zip(torch.split(rows, 2500), torch.split(reference, 2500)):
        statistic.update(0, current, original)
    exact_a, exact_z = rows.double(), reference.double()
    mean, reference_mean = statistic.means(0)
    gram, cross, energy = statistic.result(0)
    n = rows.shape[0]
    for got, a, b, mu_a, mu_b in ((gram, exact_a, exact_a, mean, mean), (cross, exact_a, exact_z, mean, reference_mean)):
        expected = a.T @ b / n
        assert (got - expected).norm() / expected.norm() < 1e-6
        covariance = expected - a.mean(0)[:, None] * b.mean(0)[None, :]
        centred = got - mu_a[:, None] * mu_b[None, :]
        assert (centred - covariance).norm() / covariance.norm() < 1e-6
    assert torch.equal(gram, gram.T)
    # the targets' energy E‖Wz‖², and its centred part E‖W(z − μ_z)‖² (what an intercept fit reads)
    targets = exact_z @ layer.weight.double().T
    assert abs(energy - float(targets.square().sum(1).mean())) <= 1e-6 * energy
    spread = float((targets - targets.mean(0)).square().sum(1).mean())
    target_mean = layer.weight.double() @ reference_mean
    assert abs(energy - float(target_mean @ target_mean) - spread) <= 1e-6 * spread
    assert torch.allclose(mean, exact_a.mean(0), rtol=1e-12, atol=1e-12)


def test_float64_rows_keep_float64_products():
    torch.manual_seed(1)
    layer = nn.Linear(50, 3).double()
    rows = torch.randn(700, 50, dtype=torch.float64) + 5
    statistic = GramStatistic([layer])
    statistic.update(0, rows)
    expected = rows.T @ rows / rows.shape[0]
    assert (statistic.result(0)[0] - expected).abs().max() <= 1e-12 * expected.abs().max()
