"""Chaining strategies feed each layer the X and Y that Robin §2.7 defines."""

import pytest
import torch

from netshrink.graph import find_cuts
from netshrink.methods.baselines import Magnitude
from netshrink.methods.regression import regressions
from netshrink.observe import Calibration
from netshrink.schedule import run_schedule

from models import Chain


class Recording(Magnitude):
    """Magnitude + refit that records the regression problem each cut was given and the
    decision it made (top-down's returned decisions no longer carry their weights)."""

    def __init__(self):
        super().__init__(keep=0.5, refit=True)
        self.problems = {}
        self.decisions = {}

    def decide(self, cut, statistic, consumers, producers):
        self.problems[cut.name] = regressions(cut, statistic, consumers)[0]
        self.decisions[cut.name] = super().decide(cut, statistic, consumers, producers)
        return self.decisions[cut.name]


def _setup():
    torch.manual_seed(5)
    model = Chain([6, 10, 8, 3]).double().eval()
    x = torch.randn(300, 6, dtype=torch.float64)
    cuts, _ = find_cuts(model)
    return model, x, cuts


def _run(chaining):
    model, x, cuts = _setup()
    method = Recording()
    shrunk = Chain([6, 10, 8, 3]).double().eval()
    shrunk.load_state_dict(model.state_dict())
    returned = run_schedule(shrunk, cuts, Calibration(x, 100), method, chaining)
    assert sorted(cut.name for cut, _ in returned) == sorted(method.decisions)
    for cut, decision in returned:
        assert torch.equal(decision.kept, method.decisions[cut.name].kept)
    return model, x, method.problems, method.decisions


def _moments(x, y):
    """The centred problem of a consumer with a bias: covariances and the means."""
    xc, yc = x - x.mean(dim=0), y - y.mean(dim=0)
    return xc.T @ xc / len(x), xc.T @ yc / len(x), float((yc * yc).sum() / len(x)), x.mean(dim=0), y.mean(dim=0)


def _check(problem, gram, cross, energy, mean, target_mean):
    torch.testing.assert_close(problem.gram, gram, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(problem.cross, cross, rtol=1e-10, atol=1e-12)
    assert problem.energy == pytest.approx(energy, rel=1e-10)
    torch.testing.assert_close(problem.mean, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(problem.target_mean, target_mean, rtol=1e-10, atol=1e-12)


@torch.no_grad()
def test_parallel_uses_original_inputs_and_outputs():
    model, x, problems, _ = _run("parallel")
    l0, l1, l2 = model.layers
    z1 = torch.relu(l0(x))
    z2 = torch.relu(l1(z1))
    _check(problems["layers.0"], *_moments(z1, z1 @ l1.weight.T))
    _check(problems["layers.1"], *_moments(z2, z2 @ l2.weight.T))


@torch.no_grad()
def test_top_down_uses_compressed_inputs_and_original_outputs():
    model, x, problems, decisions = _run("top_down")
    l0, l1, l2 = model.layers
    z1 = torch.relu(l0(x))
    z2 = torch.relu(l1(z1))
    _check(problems["layers.0"], *_moments(z1, z1 @ l1.weight.T))
    # A_2 = σ(W₁' A_1[kept]): the first cut already applied, its consumer rewritten.
    kept = decisions["layers.0"].kept
    first = decisions["layers.0"]
    a2 = torch.relu(z1[:, kept] @ first.consumer_weights[0].T + l1.bias + first.bias_shifts[0])
    gram, _, _, mean, _ = _moments(a2, a2)
    _, _, energy, _, target_mean = _moments(z2, z2 @ l2.weight.T)
    # the cross term pairs A_2 with the original Z_2, not with itself
    centred = a2 - mean
    cross = centred.T @ (z2 - z2.mean(dim=0)) @ l2.weight.T / len(x)
    _check(problems["layers.1"], gram, cross, energy, mean, target_mean)
    assert not torch.allclose(problems["layers.1"].cross, centred.T @ (centred @ l2.weight.T) / len(x))


@torch.no_grad()
def test_bottom_up_uses_original_inputs_and_only_the_kept_outputs():
    model, x, problems, decisions = _run("bottom_up")
    l0, l1, l2 = model.layers
    z1 = torch.relu(l0(x))
    z2 = torch.relu(l1(z1))
    _check(problems["layers.1"], *_moments(z2, z2 @ l2.weight.T))
    rows = decisions["layers.1"].kept  # C₂ᵀ: the outputs of W₁ the next layer kept
    _check(problems["layers.0"], *_moments(z1, z1 @ l1.weight[rows].T))
    assert problems["layers.0"].cross.shape == (10, len(rows))
