"""``method="obs"``: greedy elimination of whole units on the data's own statistics."""

import numpy as np
import pytest
import torch

import netshrink
from netshrink.errors import InvalidInputError
from netshrink.linalg.elimination import elimination_order
from netshrink.methods.obs import StructuredOBS

from models import Chain, ConvNet

hf_models = pytest.importorskip("hf_models")


def _chain(seed):
    torch.manual_seed(seed)
    return Chain([6, 14, 9, 3]).double().eval(), torch.randn(500, 6, dtype=torch.float64)


def _centred_statistics(z: torch.Tensor, y: torch.Tensor):
    """Gram and cross moments of the centred data (a consumer with a bias gets an intercept)."""
    zc, yc = z - z.mean(dim=0), y - y.mean(dim=0)
    return zc.T @ zc / len(z), zc.T @ yc / len(z)


@torch.no_grad()
@pytest.mark.parametrize("seed", range(3))
def test_keeps_the_last_eliminated_units_and_refits_them_by_least_squares(seed):
    model, x = _chain(seed)
    result = netshrink.compress(model, x, "obs", keep=0.5, layers=["layers.0"])
    z = torch.relu(model.layers[0](x))
    y = model.layers[1](z)
    gram, cross = _centred_statistics(z, y)
    expected = sorted(elimination_order([gram], [cross], [1])[:7].tolist())
    assert result.layers[0].kept_indices == expected
    design = np.hstack([z[:, expected].numpy(), np.ones((len(x), 1))])
    solution, *_ = np.linalg.lstsq(design, y.numpy(), rcond=None)
    layer = result.model.layers[1]
    np.testing.assert_allclose(layer.weight.numpy(), solution[:-1].T, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(layer.bias.numpy(), solution[-1], rtol=1e-7, atol=1e-9)
    assert result.layers[0].details == {"weighted": False}


@torch.no_grad()
def test_output_weights_change_which_units_are_kept():
    """Weighing only the consumer's first output keeps the units that serve it: the
    elimination of that output's problem alone."""
    model, x = _chain(5)
    weight = torch.zeros(9, 9, dtype=torch.float64)
    weight[0, 0] = 1.0
    method = StructuredOBS(keep=0.4)
    method.weigh({"layers.1": weight})
    result = netshrink.compress(model, x, method, layers=["layers.0"], chaining="parallel")
    z = torch.relu(model.layers[0](x))
    gram, cross = _centred_statistics(z, model.layers[1](z)[:, :1])
    assert result.layers[0].kept_indices == sorted(elimination_order([gram], [cross], [1])[:6].tolist())
    assert result.layers[0].details == {"weighted": True}
    unweighted = netshrink.compress(model, x, "obs", keep=0.4, layers=["layers.0"], chaining="parallel")
    assert unweighted.layers[0].kept_indices != result.layers[0].kept_indices


@torch.no_grad()
@pytest.mark.parametrize("case", ["chain", "cnn"])
def test_keeping_every_unit_is_lossless(case):
    if case == "chain":
        model, x = _chain(1)
    else:
        torch.manual_seed(0)
        model, x = ConvNet().double().eval(), torch.randn(64, 2, 16, 16, dtype=torch.float64)
    result = netshrink.compress(model, x, "obs", keep=1.0)
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-8, atol=1e-9)


def test_a_budget_weighs_the_selection_by_the_output_sensitivities():
    model, x = _chain(2)
    result = netshrink.compress(model, x, "obs", size=0.5)
    assert result.ratio <= 0.5
    assert all(layer.details == {"weighted": True} for layer in result.layers)


def test_grouped_query_heads_are_kept_in_whole_groups():
    torch.manual_seed(2)
    model = hf_models.llama().eval()
    batches = hf_models.token_batches(count=4, size=16)
    attention = "model.layers.0.self_attn"
    result = netshrink.compress(model, batches, "obs", keep={"heads": 0.5}, layers=[attention])
    (report,) = result.layers
    assert report.total == 2 and report.kept == 1
    assert hf_models.outputs(result.model, batches[0]).shape == hf_models.outputs(model, batches[0]).shape
    with pytest.raises(InvalidInputError, match="keeps whole groups"):
        netshrink.compress(model, batches, "obs", keep={"heads": 0.25}, layers=[attention])


@pytest.mark.parametrize("options, message", [
    ({}, "obs needs keep"),
    ({"keep": 0.5, "damping": -0.1}, "damping must be a finite number ≥ 0"),
    ({"keep": 0.5, "damping": True}, "damping must be a finite number ≥ 0"),
    ({"keep": 0.5, "lam": 0.1}, "method 'obs' has no option lam"),
])
def test_bad_options_are_refused(options, message):
    model, x = _chain(0)
    with pytest.raises(InvalidInputError, match=message):
        netshrink.compress(model, x, "obs", **options)
