"""method="group_lasso" through compress: budgets, debiasing, solvers and bad input."""

import math

import pytest
import torch

import netshrink
from netshrink.errors import InvalidInputError
from netshrink.graph import find_cuts

from models import Chain, ConvNet, Residual, TinyResNet


def _chain(seed=0):
    torch.manual_seed(seed)
    model = Chain([8, 40, 30, 4]).double().eval()
    return model, torch.randn(600, 8, dtype=torch.float64)


@pytest.mark.parametrize("keep", [0.1, 0.3, 0.75])
def test_keep_reaches_the_count_at_every_cut(keep):
    model, x = _chain(1)
    result = netshrink.compress(model, x, "group_lasso", keep=keep)
    assert [layer.kept for layer in result.layers] == [math.ceil(keep * 40), math.ceil(keep * 30)]


def test_debiasing_lowers_the_reconstruction_error_on_the_same_support():
    model, x = _chain(2)
    for lam in (0.05, 0.2, 0.5):
        debiased = netshrink.compress(model, x, "group_lasso", lam=lam, chaining="parallel")
        biased = netshrink.compress(model, x, "group_lasso", lam=lam, chaining="parallel", debias=False)
        assert [l.kept_indices for l in debiased.layers] == [l.kept_indices for l in biased.layers]
        for a, b in zip(debiased.layers, biased.layers):
            assert a.error <= b.error + 1e-12


@torch.no_grad()
def test_reported_error_is_the_relative_error_of_the_consumer_on_calibration():
    model, x = _chain(3)
    result = netshrink.compress(model, x, "group_lasso", lam=0.1, layers=["layers.0"])
    z = torch.relu(model.layers[0](x))
    target = z @ model.layers[1].weight.T  # the linear output; biases cancel in the difference
    kept = result.layers[0].kept_indices
    approx = z[:, kept] @ result.model.layers[1].weight.T + (result.model.layers[1].bias - model.layers[1].bias)
    expected = float((target - approx).norm() / target.norm())
    assert result.layers[0].error == pytest.approx(expected, rel=1e-6)


def test_fista_and_altmin_make_the_same_decision():
    model, x = _chain(4)
    a = netshrink.compress(model, x, "group_lasso", lam=0.1, solver="fista", gap_tol=1e-10)
    b = netshrink.compress(model, x, "group_lasso", lam=0.1, solver="altmin", gap_tol=1e-10)
    assert [l.kept_indices for l in a.layers] == [l.kept_indices for l in b.layers]
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-8)


def test_conv_channels_are_selected_by_groups_of_patch_columns():
    torch.manual_seed(5)
    model = ConvNet().double().eval()
    x = torch.randn(200, 2, 16, 16, dtype=torch.float64)
    result = netshrink.compress(model, x, "group_lasso", keep=0.4)
    kept = [l.kept for l in result.layers]
    assert kept[:2] == [3, 2]  # ceil(0.4 · 6), ceil(0.4 · 5) channels
    assert 1 <= kept[2] <= 7  # ceil(0.4 · 16), fewer when fewer hidden units are live
    # a kept channel keeps its whole kh·kw patch block, or its h·w features after the flatten
    assert result.model.features[4].in_channels == 3 and result.model.features[4].weight.shape[1:] == (3, 3, 3)
    assert result.model.head[1].in_features == 2 * 4 and result.model.head[3].in_features == kept[2]
    with torch.no_grad():
        assert result.model(x).shape == (200, 4)


def test_size_budget_is_met_by_one_allocation():
    model, x = _chain(6)
    result = netshrink.compress(model, x, "group_lasso", size=0.4)
    assert result.ratio <= 0.4 and result.options["size"] == 0.4 and "lam" not in result.options
    assert result.budget["achieved"] == result.ratio == result.budget["predicted"]
    assert {layer.name: layer.kept for layer in result.layers} == result.budget["widths"]


@pytest.mark.parametrize("options,match", [
    ({"lam": -0.1}, r"lam must be in \[0, 1\]"),
    ({"lam": 1.5}, r"lam must be in \[0, 1\]"),
    ({"lam": 0.1, "keep": 0.5}, "exactly one of lam"),
    ({}, "exactly one of lam"),
    ({"lam": 0.1, "solver": "admm"}, "unknown solver"),
    ({"lam": 0.1, "weighting": "size"}, "unknown weighting .size.; use one of parameters, uniform"),
    ({"lam": 0.1, "gap_tol": 0}, "gap_tol"),
    ({"lam": 0.1, "debias": "yes"}, "debias must be"),
    ({"size": 1.5}, "size must be the fraction of the model's parameters to keep, in \\(0, 1\\]; got 1.5"),
    ({"size": 0.5, "lam": 0.1}, "size=0.5 is a budget and so is lam: give one of them"),
    ({"lam": 0.1, "tol": 0.1}, "has no option tol"),
])
def test_bad_options(options, match):
    model, x = _chain(7)
    with pytest.raises(InvalidInputError, match=match):
        netshrink.compress(model, x, "group_lasso", **options)


@torch.no_grad()
def test_keep_beyond_the_live_units_keeps_the_live_ones_exactly():
    model, x = _chain(8)
    model.layers[0].bias[:30] = -1e3  # 30 of the 40 neurons never fire
    result = netshrink.compress(model, x, "group_lasso", keep=0.5, layers=["layers.0"])
    assert result.layers[0].kept == 10 and result.layers[0].kept_indices == list(range(30, 40))
    torch.testing.assert_close(result.model(x), model(x))


@torch.no_grad()
def test_constant_units_move_into_the_consumer_bias():
    model, x = _chain(9)
    model.layers[0].weight[5:12] = 0.0
    model.layers[0].bias[5:12] = torch.rand(7, dtype=torch.float64) + 0.5  # constant, always firing
    result = netshrink.compress(model, x, "group_lasso", lam=0.0, layers=["layers.0"])
    assert result.layers[0].kept == 33 and 5 not in result.layers[0].kept_indices
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-9, atol=1e-10)
    # the intercept is what a least-squares fit with a constant column gives
    z = torch.relu(model.layers[0](x))
    kept = result.layers[0].kept_indices
    design = torch.cat([z[:, kept], torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, model.layers[1](z)).solution
    torch.testing.assert_close(result.model.layers[1].bias, solution[-1], rtol=1e-8, atol=1e-9)


@torch.no_grad()
def test_a_consumer_without_bias_is_fitted_without_intercept():
    model, x = _chain(10)
    layer = model.layers[1]
    model.layers[1] = torch.nn.Linear(40, 30, bias=False).double()
    model.layers[1].weight.copy_(layer.weight)
    result = netshrink.compress(model, x, "magnitude", keep=0.5, refit=True, layers=["layers.0"])
    z = torch.relu(model.layers[0](x))
    kept = result.layers[0].kept_indices
    solution = torch.linalg.lstsq(z[:, kept], model.layers[1](z)).solution
    assert result.model.layers[1].bias is None
    torch.testing.assert_close(result.model.layers[1].weight, solution.T, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("make_model, shape, coupling", [
    (lambda: Chain([8, 40, 30, 4]), (8,), "joint"),
    (ConvNet, (2, 16, 16), "joint"),  # conv + BatchNorm + pool, and conv → flatten → Linear
    (Residual, (8,), "joint"),  # a stream written and read by two layers each
    (Residual, (8,), "sampler"),  # its readers through samplers: consumer columns only
    (TinyResNet, (1, 8, 8), "joint"),  # joint residual streams through BatchNorm
])
def test_parameters_per_unit_is_what_removing_one_unit_removes(make_model, shape, coupling):
    torch.manual_seed(0)
    model = make_model().eval()
    x = torch.randn(64, *shape)
    cuts, _ = find_cuts(model, coupling)
    for cut in cuts:
        one_less = (cut.width - 1) / cut.width
        result = netshrink.compress(model, x, "magnitude", keep=one_less, layers=[cut.name], coupling=coupling)
        assert result.layers[0].kept == cut.width - 1
        assert result.params_before - result.params_after == cut.parameters_per_unit(model), cut.name


def test_parameter_weighting_prices_each_cut_by_its_unit_cost():
    model, x = _chain(4)  # cuts of 40 and 30 units: 8+1+30 and 40+1+4 parameters per unit
    lam = 0.02
    weighted = netshrink.compress(model, x, "group_lasso", lam=lam)
    fractions = [layer.details["lam"] for layer in weighted.layers]
    costs = [39.0, 45.0]
    mean = math.sqrt(costs[0] * costs[1])
    assert fractions == pytest.approx([lam * c / mean for c in costs], rel=1e-12)
    uniform = netshrink.compress(model, x, "group_lasso", lam=lam, weighting="uniform")
    assert [layer.details["lam"] for layer in uniform.layers] == [lam, lam]
    # one cut: the seed's problem, whatever the weighting
    alone = netshrink.compress(model, x, "group_lasso", lam=lam, layers=["layers.0"])
    assert alone.layers[0].details["lam"] == lam
    same = netshrink.compress(model, x, "group_lasso", lam=lam, layers=["layers.0"], weighting="uniform")
    assert alone.layers[0].kept_indices == same.layers[0].kept_indices
    # the fraction never passes 1 (λ_max): the dearer cut keeps its single best unit
    top = netshrink.compress(model, x, "group_lasso", lam=1.0)
    assert [layer.details["lam"] for layer in top.layers] == pytest.approx([39 / mean, 1.0])
    assert top.layers[1].kept == 1


def test_parameter_weighting_moves_units_from_dear_cuts_to_cheap_ones():
    # a conv channel that feeds a flatten costs far more than a neuron after it
    torch.manual_seed(5)
    model = ConvNet().double().eval()
    x = torch.randn(300, 2, 16, 16, dtype=torch.float64)
    weighted = netshrink.compress(model, x, "group_lasso", lam=0.05)
    uniform = netshrink.compress(model, x, "group_lasso", lam=0.05, weighting="uniform")
    costs = {cut.name: cut.parameters_per_unit(model) for cut in find_cuts(model)[0]}
    dearest, cheapest = max(costs, key=costs.get), min(costs, key=costs.get)
    kept = {r.name: (r.kept, u.kept) for r, u in zip(weighted.layers, uniform.layers)}
    assert kept[dearest][0] <= kept[dearest][1]
    assert kept[cheapest][0] >= kept[cheapest][1]
