"""The baselines: magnitude, magnitude + refit, random + refit, low rank."""

import numpy as np
import pytest
import torch

import netshrink
from netshrink.errors import InvalidInputError

from models import Chain, ConvNet


def _chain(seed=0):
    torch.manual_seed(seed)
    return Chain([6, 12, 9, 3]).double().eval(), torch.randn(400, 6, dtype=torch.float64)


@torch.no_grad()
def test_magnitude_keeps_the_largest_rows_and_drops_the_rest_unchanged():
    model, x = _chain(1)
    result = netshrink.compress(model, x, "magnitude", keep=0.5, chaining="parallel")
    norms = model.layers[0].weight.norm(dim=1)
    expected = np.sort(np.argsort(-norms.numpy(), kind="stable")[:6])
    assert result.layers[0].kept_indices == expected.tolist()
    # no reconstruction: the consumer keeps its original columns (and the rows the next cut kept)
    kept_next = result.layers[1].kept_indices
    torch.testing.assert_close(result.model.layers[1].weight,
                               model.layers[1].weight[kept_next][:, expected])


@torch.no_grad()
def test_refit_is_the_least_squares_solution_on_the_kept_units():
    model, x = _chain(2)
    for method, options in [("magnitude", {"refit": True}), ("random", {"seed": 3})]:
        result = netshrink.compress(model, x, method, keep=0.5, layers=["layers.0"], **options)
        kept = result.layers[0].kept_indices
        z = torch.relu(model.layers[0](x))
        y = model.layers[1](z)
        # least squares with an intercept: the bias absorbs the constant part
        design = np.hstack([z[:, kept].numpy(), np.ones((len(x), 1))])
        solution, *_ = np.linalg.lstsq(design, y.numpy(), rcond=None)
        layer = result.model.layers[1]
        np.testing.assert_allclose(layer.weight.numpy(), solution[:-1].T, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(layer.bias.numpy(), solution[-1], rtol=1e-7, atol=1e-9)


def test_random_support_depends_on_the_seed_only():
    model, x = _chain(3)
    a = netshrink.compress(model, x, "random", keep=0.4, seed=5).layers[0].kept_indices
    b = netshrink.compress(model, x, "random", keep=0.4, seed=5).layers[0].kept_indices
    c = netshrink.compress(model, x, "random", keep=0.4, seed=6).layers[0].kept_indices
    assert a == b and a != c


@torch.no_grad()
@pytest.mark.parametrize("keep", [0.1, 0.25, 0.5, 1.0])  # 0.1: rank 1
def test_lowrank_is_the_data_aware_truncated_svd(keep):
    model, x = _chain(4)
    result = netshrink.compress(model, x, "lowrank", keep=keep, chaining="parallel", layers=["layers.0"])
    z = torch.relu(model.layers[0](x)).numpy()
    weight = model.layers[1].weight.numpy()
    rank = int(np.ceil(keep * min(weight.shape) - 1e-9))
    # best rank-r approximation of y = W z plus an intercept, in least squares over the
    # calibration rows: the top right singular vectors of the centred outputs
    y = z @ weight.T
    centred = y - y.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    approx = centred @ vt[:rank].T @ vt[:rank] + y.mean(axis=0) + model.layers[1].bias.numpy()
    layer = result.model.layers[1]
    assert layer.first.out_features == rank
    np.testing.assert_allclose(layer(torch.from_numpy(z)).numpy(), approx, rtol=1e-7, atol=1e-9)
    # it removes no unit: every width is unchanged
    assert result.model.layers[0].out_features == 12 and result.layers[0].kept == 12


def test_lowrank_factorises_convolutions():
    torch.manual_seed(5)
    model = ConvNet().double().eval()
    x = torch.randn(64, 2, 16, 16, dtype=torch.float64)
    result = netshrink.compress(model, x, "lowrank", keep=1.0)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), rtol=1e-8, atol=1e-10)
    smaller = netshrink.compress(model, x, "lowrank", keep=0.3)
    assert smaller.params_after < smaller.params_before


@pytest.mark.parametrize("method,options,match", [
    ("magnitude", {}, "keep must be"),
    ("magnitude", {"keep": 0}, "keep=0 would leave"),
    ("random", {"keep": 1.5}, "keep must be"),
    ("lowrank", {"keep": float("nan")}, "keep must be"),
    ("magnitude", {"keep": 0.5, "refit": "yes"}, "refit must be"),
    ("magnitude", {"keep": 0.5, "lam": 0.1}, "has no option lam"),
])
def test_bad_options(method, options, match):
    model, x = _chain(6)
    with pytest.raises(InvalidInputError, match=match):
        netshrink.compress(model, x, method, **options)
