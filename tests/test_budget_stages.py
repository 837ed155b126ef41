"""Budget stages: low rank, input sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import netshrink
from netshrink.budget import flop_costs, parameter_costs, total_flops
from netshrink.budget.ranks import full_rank, knob, rank_curve, rank_layers
from netshrink.errors import InvalidInputError, UnsupportedCutError
from netshrink.graph import find_cuts, network_input_cut
from netshrink.methods.regression import Regression

from models import Chain, ConvNet


def _chain(seed=0, widths=(30, 60, 50, 40, 10), samples=600):
    torch.manual_seed(seed)
    model = Chain(list(widths)).eval()
    return model, torch.randn(samples, widths[0], generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["size", "flops"])
@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_low_rank_stage_is_priced_exactly(kind, fraction):
    model, x = _chain()
    result = netshrink.compress(model, x, "group_lasso", lowrank=True, **{kind: fraction})
    assert result.budget["achieved"] <= fraction
    assert result.budget["achieved"] == pytest.approx(result.budget["predicted"], rel=1e-12)
    factorised = [layer for layer in result.layers if layer.kind == "rank"]
    for layer in factorised:  # each factorised layer is cheaper than its dense shape
        module = result.model.get_submodule(layer.name)
        dense = module.first.in_features * module.second.out_features
        assert layer.kept * (module.first.in_features + module.second.out_features) < dense
    assert result.options["lowrank"] is True


def test_low_rank_pays_where_the_spectrum_is_short():
    # the first layer reads inputs of rank 6: its 60 outputs are a rank-6 function of them
    torch.manual_seed(4)
    model = Chain([40, 60, 30, 5]).eval()
    x = torch.randn(800, 6, generator=torch.Generator().manual_seed(4)) @ torch.randn(6, 40)
    result = netshrink.compress(model, x, "group_lasso", size=0.5, lowrank=True)
    (first,) = [layer for layer in result.layers if layer.kind == "rank" and layer.name == "layers.0"]
    assert first.kept <= 8 and first.error < 1e-3  # a rank-6 map, reproduced (to float32 statistics)


def test_rank_curve_equals_truncations_on_the_data():
    generator = torch.Generator().manual_seed(7)
    n, d, out = 400, 9, 6
    x = torch.randn(n, d, dtype=torch.float64, generator=generator) @ torch.randn(d, d, dtype=torch.float64,
                                                                                  generator=generator) + 1.0
    weight = torch.randn(out, d, dtype=torch.float64, generator=generator)
    root = torch.randn(out, out, dtype=torch.float64, generator=generator)
    sensitivity = root @ root.T
    mean = x.mean(dim=0)
    centred = x - mean
    gram = centred.T @ centred / n
    problem = Regression(gram, gram @ weight.T, 0.0, weight, 1, mean, weight @ mean)
    curve = rank_curve(problem, sensitivity)
    assert curve.shape == (min(out, d) + 1,)
    y = centred @ weight.T
    _, vectors = np.linalg.eigh((y.T @ y / n).numpy())
    vectors = vectors[:, ::-1]
    for r in range(min(out, d) + 1):
        projection = vectors[:, :r] @ vectors[:, :r].T
        residual = y.numpy() - y.numpy() @ projection  # the best rank-r fit U_r U_rᵀ W x, centred
        expected = 0.5 * np.trace(sensitivity.numpy() @ residual.T @ residual) / n
        assert curve[r] == pytest.approx(expected, rel=1e-8, abs=1e-10 * curve[0])


def test_rank_knobs_are_priced_exactly_at_any_level():
    model, x = _chain(2)
    example = x[:8]
    cuts, _ = find_cuts(model, example=example)
    ranks = {path: full_rank(model.get_submodule(path)) for path in rank_layers(model, cuts)}
    parameters, flops = parameter_costs(model, cuts, ranks), flop_costs(model, cuts, example, ranks)
    generator = np.random.default_rng(2)
    for _ in range(5):
        levels = {cut.name: int(generator.integers(1, cut.width + 1)) for cut in cuts}
        levels.update({knob(path): int(generator.integers(1, rank + 1)) for path, rank in ranks.items()})
        widths = netshrink.methods.base.Widths({c.name: levels[c.name] for c in cuts})
        result = netshrink.compress(model, x, "magnitude", keep=widths, chaining="parallel")
        shrunk = result.model
        from netshrink.budget.ranks import factorise, pays

        chosen = {path: levels[knob(path)] for path in ranks
                  if pays(shrunk.get_submodule(path), levels[knob(path)], ranks[path])}
        if chosen:
            factorise(shrunk, chosen, netshrink.observe.Calibration(x), chaining="parallel")
        assert parameters.value(levels) == sum(p.numel() for p in shrunk.parameters())
        assert flops.value(levels) == total_flops(shrunk, example)


def test_input_sampling_selects_pixels_of_a_first_linear():
    model, x = _chain(3)
    x[:, :8] = 0.25  # constant "border pixels": nothing to keep them for
    assert network_input_cut(model, x[:4]).sampled
    result = netshrink.compress(model, x, "group_lasso", size=0.4, sample_inputs=True)
    (inputs,) = [layer for layer in result.layers if layer.sampled]
    assert inputs.name == "layers.0:in" and inputs.total == 30 and inputs.kept <= 22
    assert not set(inputs.kept_indices) & set(range(8))
    assert result.budget["achieved"] == result.ratio <= 0.4
    with torch.no_grad():
        assert result.model(x).shape == (600, 10)


def test_stages_refuse_what_they_cannot_do():
    model, x = _chain()
    with pytest.raises(InvalidInputError, match="lowrank=True is a stage of the global allocation: give a size, "
                                                "flops or latency budget"):
        netshrink.compress(model, x, "group_lasso", keep=0.5, lowrank=True)
    with pytest.raises(InvalidInputError, match="sample_inputs must be True or False"):
        netshrink.compress(model, x, "group_lasso", size=0.5, sample_inputs="yes")
    torch.manual_seed(0)
    with pytest.raises(UnsupportedCutError, match="the first layer of ConvNet, 'features.0', is a Conv2d: its "
                                                  "inputs are image channels"):
        netshrink.compress(ConvNet().eval(), torch.randn(16, 2, 16, 16), "group_lasso", size=0.5, sample_inputs=True)


def test_method_lowrank_takes_a_budget_as_ranks():
    model, x = _chain(5)
    result = netshrink.compress(model, x, "lowrank", size=0.6)
    assert result.budget["achieved"] <= 0.6
    assert {layer.kind for layer in result.layers} == {"rank"}
    assert all(isinstance(model.get_submodule(layer.name), nn.Linear) for layer in result.layers)
