"""Budgets: exact parameter and FLOP counts, output sensitivities, loss curves, the allocation,
and size/flops budgets met through compress."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import netshrink
from netshrink.budget import (BudgetError, Knob, allocate, flop_costs, output_sensitivities, parameter_costs,
                              total_flops)
from netshrink.budget.costs import CostModel, Term
from netshrink.budget.curves import refit_curve, truncation_curve
from netshrink.errors import InvalidInputError
from netshrink.graph import find_cuts
from netshrink.linalg import group_lasso_path_order
from netshrink.methods import GroupLasso
from netshrink.methods.base import Widths
from netshrink.methods.regression import Regression
from netshrink.observe import Calibration

from models import Bottleneck, Chain, ConvNet, ConvNeXtBlock, InvertedResidual, SqueezeExcite, TinyResNet


def _images(channels, size=16):
    return lambda: torch.randn(24, channels, size, size, generator=torch.Generator().manual_seed(3))


def _hf(name):
    def make():
        hf_models = pytest.importorskip("hf_models")
        return getattr(hf_models, name)()
    return make


def _tokens():
    hf_models = pytest.importorskip("hf_models")
    return hf_models.token_batches()


def _hf_images():
    hf_models = pytest.importorskip("hf_models")
    return hf_models.image_batches()


MODELS = {
    "mlp": (lambda: Chain([12, 20, 16, 5]), lambda: torch.randn(64, 12, generator=torch.Generator().manual_seed(3))),
    "cnn": (ConvNet, _images(2)),
    "resnet": (TinyResNet, _images(1)),
    "mobilenet": (InvertedResidual, _images(3)),
    "convnext": (ConvNeXtBlock, _images(3)),
    "bottleneck": (Bottleneck, _images(3)),
    "squeeze-excite": (SqueezeExcite, _images(3)),
    "bert": (_hf("bert"), _tokens),
    "gpt2": (_hf("gpt2"), _tokens),
    "llama": (_hf("llama"), _tokens),
    "vit": (_hf("vit"), _hf_images),
}


def _model(name):
    make, data = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    calibration = data()
    example = calibration[0] if isinstance(calibration, list) else calibration[:8]
    return model, calibration, example


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_and_flop_counts_are_exact_at_any_widths(name):
    model, calibration, example = _model(name)
    cuts, _ = find_cuts(model, example=example)
    parameters, flops = parameter_costs(model, cuts), flop_costs(model, cuts, example)
    assert parameters.total == sum(p.numel() for p in model.parameters())
    assert flops.total == total_flops(model, example)
    generator = torch.Generator().manual_seed(7)
    for _ in range(2):
        widths = Widths({cut.name: int(torch.randint(1, cut.width + 1, (1,), generator=generator)) for cut in cuts})
        result = netshrink.compress(model, calibration, "magnitude", keep=widths, chaining="parallel")
        kept = {layer.name: layer.kept for layer in result.layers}
        assert kept == dict(widths)
        assert parameters.value(kept) == result.params_after
        assert flops.value(kept) == total_flops(result.model, example)


def test_along_is_the_cost_at_every_level_of_one_knob():
    model, _, example = _model("resnet")  # a jointly cut residual stream: quadratic terms
    cuts, _ = find_cuts(model, example=example)
    costs = parameter_costs(model, cuts)
    levels = {cut.name: max(1, cut.width // 2) for cut in cuts}
    for cut in cuts:
        along = costs.along(cut.name, levels)
        assert np.allclose(along, [costs.value({**levels, cut.name: k}) for k in range(cut.width + 1)], rtol=1e-12)


def test_flops_agree_with_a_hand_count():
    mlp = Chain([12, 20, 16, 5])
    x = torch.randn(7, 12)
    assert total_flops(mlp, x) == 2 * 7 * (12 * 20 + 20 * 16 + 16 * 5)

    conv = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, groups=6),
                         nn.Conv2d(6, 4, 1, stride=2))
    images = torch.randn(3, 2, 10, 10)
    hand = 2 * 3 * (10 * 10 * 6 * 2 * 9 + 8 * 8 * 6 * 9 + 4 * 4 * 4 * 6)
    assert total_flops(conv, images) == hand

    hf_models = pytest.importorskip("hf_models")
    bert = hf_models.bert().eval()
    batch = hf_models.token_batches(count=1)[0]
    b, t = batch["input_ids"].shape
    h, inner, layers = 32, 48, 2
    per_layer = 4 * 2 * t * h * h + 2 * 2 * t * h * inner + 2 * 2 * t * t * h  # q,k,v,o; FFN; scores and context
    assert total_flops(bert, batch) == b * (layers * per_layer + 2 * h * h)  # + the pooler on the first token


def _two_layer(out=3, hidden=5, inputs=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, out)).double().eval()


def test_sensitivity_of_the_logits_is_the_softmax_fisher():
    model = _two_layer()
    x = torch.randn(4000, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (cut,), _ = find_cuts(model, example=x[:8])
    found = output_sensitivities(model, cut.consumers, Calibration(x, batch_size=500), samples=4000)["2"]
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)
    # E_ŷ[(p − e_ŷ)(p − e_ŷ)ᵀ] = diag(p) − p pᵀ, the Fisher information of the softmax
    expected = (torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)).mean(dim=0)
    assert torch.allclose(found, expected, rtol=0.1, atol=0.05 * float(expected.abs().max()))


def test_sensitivity_inside_the_network_is_the_gauss_newton_diagonal():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double().eval()
    x = torch.randn(3000, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    cuts, _ = find_cuts(model, example=x[:8])
    first = next(cut for cut in cuts if cut.consumers == ("2",))  # its consumer's output feeds a Tanh and a Linear
    for loss in ("kl", "mse"):
        found = output_sensitivities(model, first.consumers, Calibration(x, batch_size=1000), output_loss=loss,
                                     samples=3000)["2"]
        expected = torch.zeros(5, 5, dtype=torch.float64)
        for row in x:
            pre = model[2](model[1](model[0](row)))
            jacobian = torch.autograd.functional.jacobian(lambda z: model[4](model[3](z)), pre)  # (3, 5)
            if loss == "kl":
                p = torch.softmax(model[4](model[3](pre)), dim=0)
                hessian = torch.diag(p) - torch.outer(p, p)
            else:
                hessian = torch.eye(3, dtype=torch.float64)
            expected += jacobian.T @ hessian @ jacobian  # the Gauss–Newton matrix at this layer's output
        expected /= len(x)
        assert torch.allclose(found, expected, rtol=0.1, atol=0.05 * float(expected.abs().max())), loss


def _regression(x: torch.Tensor, weight: torch.Tensor, group: int, intercept: bool) -> Regression:
    n = len(x)
    if not intercept:
        gram = x.T @ x / n
        return Regression(gram, gram @ weight.T, 0.0, weight, group)
    mean = x.mean(dim=0)
    centred = x - mean
    gram = centred.T @ centred / n
    return Regression(gram, gram @ weight.T, 0.0, weight, group, mean, weight @ mean)


@pytest.mark.parametrize("group", [1, 3])
def test_refit_curve_equals_least_squares_refits_on_the_data(group):
    generator = torch.Generator().manual_seed(group)
    units, n, out = 7, 300, 4
    mixing = torch.randn(units * group, units * group, dtype=torch.float64, generator=generator)
    x = torch.randn(n, units * group, dtype=torch.float64, generator=generator) @ mixing + 0.5
    weight = torch.randn(out, units * group, dtype=torch.float64, generator=generator)
    root = torch.randn(out, out, dtype=torch.float64, generator=generator)
    sensitivity = root @ root.T  # a Gauss–Newton matrix: positive semi-definite
    order = torch.randperm(units, generator=generator)
    curve = refit_curve([_regression(x, weight, group, True)], order, [sensitivity])
    diagonal = refit_curve([_regression(x, weight, group, True)], order, [torch.diagonal(sensitivity)])
    y = x @ weight.T
    for k in range(units + 1):
        columns = [u * group + j for u in order[:k].tolist() for j in range(group)]
        design = np.hstack([x[:, columns].numpy(), np.ones((n, 1))])  # with the intercept
        fit, *_ = np.linalg.lstsq(design, y.numpy(), rcond=None)
        residual = y.numpy() - design @ fit
        expected = 0.5 * float(np.trace(sensitivity.numpy() @ residual.T @ residual) / n)
        assert curve[k] == pytest.approx(expected, rel=1e-8, abs=1e-10 * curve[0])
        alone = 0.5 * float((np.diag(sensitivity.numpy()) * (residual**2).mean(axis=0)).sum())
        assert diagonal[k] == pytest.approx(alone, rel=1e-8, abs=1e-10 * diagonal[0])


def test_truncation_curve_equals_the_removed_units_contribution():
    generator = torch.Generator().manual_seed(5)
    units, group, n, out = 6, 2, 200, 3
    x = torch.randn(n, units * group, dtype=torch.float64, generator=generator) + 0.3
    weight = torch.randn(out, units * group, dtype=torch.float64, generator=generator)
    root = torch.randn(out, out, dtype=torch.float64, generator=generator)
    sensitivity = root @ root.T
    order = torch.randperm(units, generator=generator)
    curve = truncation_curve([_regression(x, weight, group, False)], order, [sensitivity])
    for k in range(units + 1):
        removed = [u * group + j for u in order[k:].tolist() for j in range(group)]
        lost = x[:, removed] @ weight[:, removed].T
        expected = 0.5 * float(torch.trace(sensitivity @ lost.T @ lost)) / n
        assert curve[k] == pytest.approx(expected, rel=1e-10, abs=1e-14)


def test_path_order_of_an_orthonormal_design_is_by_group_norm():
    # with gram = I the ℓ2,1 solution is block soft-thresholding of cross: a group enters at λ = ‖cross_g‖
    generator = torch.Generator().manual_seed(4)
    cross = torch.randn(12, 5, dtype=torch.float64, generator=generator) * torch.linspace(0.2, 3, 12).unsqueeze(1)
    order = group_lasso_path_order(torch.eye(12, dtype=torch.float64), cross, 2, steps=40, smallest=1e-4)
    norms = cross.reshape(6, 2, 5).square().sum(dim=(1, 2))
    assert order.tolist() == torch.argsort(norms, descending=True).tolist()


def _brute_force(knobs, cost, budget):
    best = math.inf
    for levels in itertools.product(*(range(k.minimum, k.top + 1) for k in knobs)):
        chosen = {k.name: level for k, level in zip(knobs, levels)}
        if cost.value(chosen) <= budget:
            best = min(best, sum(k.loss[chosen[k.name]] for k in knobs))
    return best


def _random_problem(seed, convex):
    generator = np.random.default_rng(seed)
    widths = {"a": 6, "b": 5, "c": 4}
    knobs = []
    for name, width in widths.items():
        drops = generator.exponential(size=width)
        if convex:
            drops = np.sort(drops)[::-1]  # diminishing returns: the first units kept gain the most
        loss = np.concatenate([np.cumsum(drops[::-1])[::-1], [0.0]])
        knobs.append(Knob(name, loss))
    terms = [Term(float(generator.uniform(10, 40)), (("a", 6),)),
             Term(float(generator.uniform(10, 40)), (("a", 6), ("b", 5))),  # a layer between a and b
             Term(float(generator.uniform(5, 20)), (("b", 5), ("c", 4))),
             Term(float(generator.uniform(5, 20)), (("c", 4),))]
    return knobs, CostModel("parameters", 7.0, terms, widths)


@pytest.mark.parametrize("seed", range(12))
def test_allocation_is_feasible_and_near_the_brute_force_optimum(seed):
    knobs, cost = _random_problem(seed, convex=seed % 2 == 0)
    for fraction in (0.25, 0.45, 0.7):
        budget = fraction * cost.total
        allocation = allocate(knobs, cost, budget)
        assert allocation.cost <= budget + 1e-9
        assert allocation.cost == pytest.approx(cost.value(allocation.widths))
        assert allocation.loss == pytest.approx(sum(k.loss[allocation.widths[k.name]] for k in knobs))
        optimum = _brute_force(knobs, cost, budget)
        # never worse than the best allocation of the budget less the dearest single unit
        relaxed = _brute_force(knobs, cost, budget - max(cost.along(k.name, cost.full)[-1]
                                                         - cost.along(k.name, cost.full)[-2] for k in knobs))
        assert optimum <= allocation.loss <= max(relaxed, optimum) + 1e-9


def test_allocation_of_separable_convex_curves_is_optimal():
    generator = np.random.default_rng(11)
    for _ in range(10):
        widths = {"a": 5, "b": 6, "c": 4}
        # diminishing returns: the k-th unit kept gains the k-th largest drop
        knobs = [Knob(name, np.concatenate([np.cumsum(np.sort(generator.exponential(size=w)))[::-1], [0.0]]))
                 for name, w in widths.items()]
        cost = CostModel("parameters", 0.0, [Term(float(w), ((name, w),)) for name, w in widths.items()], widths)
        for units in range(3, 15):
            allocation = allocate(knobs, cost, float(units))  # one unit costs 1 everywhere
            assert allocation.loss == pytest.approx(_brute_force(knobs, cost, float(units)))


def test_unreachable_budget_names_the_smallest_reachable():
    knobs, cost = _random_problem(0, convex=True)
    smallest = cost.value({"a": 1, "b": 1, "c": 1}) / cost.total
    with pytest.raises(BudgetError, match=f"has {smallest:.4g} .*Ask for at least"):
        allocate(knobs, cost, 0.5 * smallest * cost.total)


def _random_chain(seed):
    generator = torch.Generator().manual_seed(seed)
    widths = [int(w) for w in torch.randint(6, 40, (4,), generator=generator)]
    torch.manual_seed(seed)
    return Chain([10, *widths, 3]).eval(), torch.randn(300, 10, generator=generator)


@pytest.mark.parametrize("kind", ["size", "flops"])
@pytest.mark.parametrize("case", ["chain-0", "chain-1", "cnn", "resnet", "bert", "llama"])
def test_budgets_are_never_exceeded_and_nearly_spent(kind, case):
    if case.startswith("chain"):
        model, calibration = _random_chain(int(case[-1]))
        example = calibration[:8]
    else:
        model, calibration, example = _model({"cnn": "cnn", "resnet": "resnet", "bert": "bert",
                                              "llama": "llama"}[case])
    cuts, _ = find_cuts(model, example=example)
    costs = parameter_costs(model, cuts) if kind == "size" else flop_costs(model, cuts, example)
    for method in ("group_lasso", "magnitude", "obs"):
        for fraction in (0.35, 0.7):
            try:
                result = netshrink.compress(model, calibration, method, **{kind: fraction})
            except BudgetError as exc:  # a fraction below what one unit per cut costs
                assert costs.value({cut.name: 1 for cut in cuts}) > fraction * costs.total, str(exc)
                continue
            achieved = result.budget["achieved"]
            assert achieved <= fraction + 1e-12
            assert achieved == pytest.approx(result.budget["predicted"], rel=1e-12)
            # nothing more fits: every cut keeps all its live units, or one more would exceed the budget
            widths, ceilings = result.budget["widths"], result.budget["ceilings"]
            for name, width in widths.items():
                assert width == ceilings[name] or costs.value({**widths, name: width + 1}) > fraction * costs.total
            if kind == "size":
                assert result.ratio == achieved


def test_group_lasso_meets_a_size_budget_within_one_percent():
    torch.manual_seed(3)
    model = Chain([64, 200, 150, 120, 10]).eval()  # one unit costs under 0.5% of the parameters
    calibration = torch.randn(2000, 64, generator=torch.Generator().manual_seed(3))
    for fraction in (0.2, 0.5):
        result = netshrink.compress(model, calibration, "group_lasso", size=fraction)
        assert 0.99 * fraction <= result.ratio <= fraction


@pytest.mark.parametrize("options, message", [
    ({"size": 0.5, "flops": 0.5}, "give one budget, not size=0.5 and flops=0.5"),
    ({"size": 0.5, "keep": 0.5}, "size=0.5 is a budget and so is keep: give one of them"),
    ({"flops": 0}, r"flops must be the fraction of the model's FLOPs to keep, in \(0, 1\]; got 0"),
    ({"latency": 1.5}, r"latency must be the fraction of the model's latency to keep"),
    ({"size": True}, "size must be the fraction"),
    ({"keep": 0.5, "output_loss": "kl"}, "output_loss weighs cuts under a size, flops or latency budget"),
    ({"size": 0.5, "output_loss": "hinge"}, "unknown output_loss 'hinge'; use one of auto, kl, mse"),
])
def test_bad_budgets_are_refused(options, message):
    model, calibration = _random_chain(0)
    with pytest.raises(InvalidInputError, match=message):
        netshrink.compress(model, calibration, "group_lasso", **options)


def test_budget_errors_of_the_method_and_the_model():
    model, calibration = _random_chain(0)
    with pytest.raises(InvalidInputError, match="a GroupLasso object carries its own budget"):
        netshrink.compress(model, calibration, GroupLasso(keep=0.5), size=0.5)
    with pytest.raises(BudgetError, match="smallest model this allocation reaches.*Ask for at least"):
        netshrink.compress(model, calibration, "group_lasso", size=0.001)


@pytest.mark.parametrize("method, options", [
    ("interpolative", {}), ("random", {}), ("magnitude", {"refit": True}), ("magnitude", {}),
    ("multitask_lasso", {"layer": "last"}), ("lowrank", {}), ("obs", {}), ("obs", {"damping": 0}),
])
def test_every_method_takes_a_budget(method, options):
    model, calibration = _random_chain(4)
    result = netshrink.compress(model, calibration, method, size=0.8 if method == "multitask_lasso" else 0.5,
                                **options)
    target = result.budget["target"]
    assert result.ratio <= target and result.budget["achieved"] == pytest.approx(result.budget["predicted"])
    with torch.no_grad():
        assert result.model(calibration[:4]).shape == (4, 3)
