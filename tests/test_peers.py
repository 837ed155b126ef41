"""The FLAP-style and Kwon-style peers against direct computations on explicit activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import netshrink
from netshrink.graph import find_cuts

import hf_models

pytest.importorskip("torch_pruning")
from netshrink.experiments.peers import Flap, Kwon, fisher_scores  # noqa: E402

FFN = "encoder.layer.1.intermediate.dense"
CONSUMER = "encoder.layer.1.output.dense"


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = hf_models.bert().eval()
    batches = hf_models.token_batches(count=4, size=16)
    return model, batches


def _activations(model, batches):
    """The FFN consumer's input rows on real tokens, float64 ``(n, 48)``."""
    rows = []
    layer = model.get_submodule(CONSUMER)
    handle = layer.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0]))
    try:
        for batch in batches:
            captured = []
            with torch.no_grad():
                model(**batch)
            rows.append(captured[0][batch["attention_mask"].bool()].double())
    finally:
        handle.remove()
    return torch.cat(rows)


def test_flap_keeps_the_largest_weighted_variances_and_moves_their_mean_into_the_bias(setup):
    model, batches = setup
    x = _activations(model, batches)
    weight = model.get_submodule(CONSUMER).weight.detach().double()
    scores = x.var(dim=0, unbiased=False) * weight.square().sum(dim=0)
    expected = sorted(torch.argsort(scores, descending=True)[:24].tolist())
    result = netshrink.compress(model, batches, Flap({"neurons": 0.5}), layers=[FFN], chaining="parallel")
    assert result.layers[0].kept_indices == expected
    removed = sorted(set(range(48)) - set(expected))
    new = result.model.get_submodule(CONSUMER)
    bias = model.get_submodule(CONSUMER).bias.detach().double() + weight[:, removed] @ x[:, removed].mean(dim=0)
    assert torch.allclose(new.bias.detach().double(), bias, atol=1e-5)
    assert torch.equal(new.weight, model.get_submodule(CONSUMER).weight[:, expected])


def test_kwon_scales_are_the_least_squares_fit_of_the_kept_contributions(setup):
    model, batches = setup
    cuts, _ = find_cuts(model, example=batches[0])
    scores = fisher_scores(model, batches, cuts)
    assert all(torch.isfinite(s).all() and (s >= 0).all() for s in scores.values())
    kept = sorted(torch.argsort(scores[FFN], descending=True)[:24].tolist())
    result = netshrink.compress(model, batches, Kwon({"neurons": 0.5}, scores), layers=[FFN], chaining="parallel")
    assert result.layers[0].kept_indices == kept
    x = _activations(model, batches)
    weight = model.get_submodule(CONSUMER).weight.detach().double()
    target = x @ weight.T  # the linear part; the bias stays
    features = torch.stack([x[:, j:j + 1] * weight[:, j] for j in kept], dim=2)  # (n, out, k)
    scales, *_ = np.linalg.lstsq(features.reshape(-1, len(kept)).numpy(), target.reshape(-1).numpy(), rcond=None)
    new = result.model.get_submodule(CONSUMER).weight.detach().double()
    assert torch.allclose(new, weight[:, kept] * torch.from_numpy(scales), atol=1e-5, rtol=1e-4)


def test_keeping_everything_changes_nothing(setup):
    model, batches = setup
    cuts, _ = find_cuts(model, example=batches[0])
    scores = fisher_scores(model, batches, cuts)
    for method in (Flap({"neurons": 1.0, "heads": 1.0}), Kwon({"neurons": 1.0, "heads": 1.0}, scores)):
        result = netshrink.compress(model, batches, method)
        assert torch.allclose(hf_models.outputs(result.model, batches[0]), hf_models.outputs(model, batches[0]),
                              atol=1e-5)
