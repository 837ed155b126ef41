"""method="multitask_lasso" and layer= targeting through compress (issue 4, items 1–2).

References: cvxpy on the seed's objective F written on the raw data, the data-form
prox-Adam iteration, and closed forms (λ = 0 least squares, λ ≥ λ_max).
"""

import numpy as np
import pytest
import torch
from torch import nn

import netshrink
from netshrink.errors import InvalidInputError, UnsupportedCutError
from netshrink.graph import input_cut, linear_layers, resolve_linear
from netshrink.linalg import prox_adam
from netshrink.modules import Sampled

from models import Chain, ConvNet

cvxpy = pytest.importorskip("cvxpy")


def _chain(seed, widths=(6, 14, 10, 3), n=300):
    torch.manual_seed(seed)
    return Chain(list(widths)).double().eval(), torch.randn(n, widths[0], dtype=torch.float64)


def _layer_data(model, path, x):
    """Φ (K, N) = inputs of the Linear at ``path``, Ψ (D, N) its outputs, its bias."""
    seen = {}
    layer = model.get_submodule(path)
    handle = layer.register_forward_hook(lambda m, i, o: seen.update(phi=i[0].detach(), psi=o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen["phi"].T, seen["psi"].T, layer.bias.detach()


def _cvxpy_solution(phi, psi, bias, lam):
    """argmin (1/(D·N))‖VΦ + b − Ψ‖² + lam Σ‖V[:, k]‖ on the raw data."""
    phi, target = phi.numpy(), (psi - bias[:, None]).numpy()
    D, N = target.shape
    V = cvxpy.Variable((D, phi.shape[0]))
    objective = cvxpy.sum_squares(V @ phi - target) / (D * N) + lam * cvxpy.sum(cvxpy.norm(V, 2, axis=0))
    cvxpy.Problem(cvxpy.Minimize(objective)).solve(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10,
                                                   tol_feas=1e-10)
    return V.value


def _lam_max(phi, psi, bias):
    """The smallest lam of F whose minimiser is 0: 2·max_k ‖E[x_k (ψ − b)]‖ / D."""
    D, N = psi.shape
    cross = phi @ (psi - bias[:, None]).T / N  # (K, D)
    return 2 * float(torch.linalg.vector_norm(cross, dim=1).max()) / D


@pytest.mark.parametrize("seed, fraction", [(0, 0.02), (1, 0.1), (2, 0.4)])
def test_fista_matches_an_independent_convex_solver_on_the_last_layer(seed, fraction):
    model, x = _chain(seed)
    phi, psi, bias = _layer_data(model, "layers.2", x)
    lam = fraction * _lam_max(phi, psi, bias)
    expected = _cvxpy_solution(phi, psi, bias, lam)
    result = netshrink.compress(model, x, "multitask_lasso", layer="last", lam=lam, gap_tol=1e-12)
    report = result.layers[0]
    assert report.name == "layers.1" and not report.sampled and report.total == 10
    norms = np.linalg.norm(expected, axis=0)
    assert report.kept_indices == [int(i) for i in np.flatnonzero(norms > 1e-4 * norms.max())]
    new = result.model.layers[2]
    ours = np.zeros_like(expected)
    ours[:, report.kept_indices] = new.weight.detach().numpy()
    # the objective is flat near its minimiser: values agree far closer than weights
    assert _F(ours, phi, psi, bias, lam) <= _F(expected, phi, psi, bias, lam) * (1 + 1e-9)
    assert report.details["objective"] == pytest.approx(_F(ours, phi, psi, bias, lam), rel=1e-9)
    np.testing.assert_allclose(ours, expected, atol=1e-3 * np.abs(expected).max())  # cvxpy's V: ~1e-5 accurate
    _assert_kkt(ours, phi, psi, bias, lam)
    assert torch.equal(new.bias, model.layers[2].bias)  # frozen
    # the producer lost the removed neurons' rows
    assert result.model.layers[1].weight.shape == (report.kept, 14)
    assert report.details["solver"] == "fista" and report.details["converged"]


def _assert_kkt(V, phi, psi, bias, lam):
    """Optimality of F, per column: ∇_k + lam·v_k/‖v_k‖ = 0 where v_k ≠ 0, ‖∇_k‖ ≤ lam elsewhere."""
    residual = V @ phi.numpy() - (psi - bias[:, None]).numpy()
    gradient = 2 * residual @ phi.numpy().T / residual.size  # (D, K)
    norms = np.linalg.norm(V, axis=0)
    for k in range(V.shape[1]):
        if norms[k] > 0:
            np.testing.assert_allclose(gradient[:, k], -lam * V[:, k] / norms[k], atol=1e-7 * lam + 1e-10)
        else:
            assert np.linalg.norm(gradient[:, k]) <= lam * (1 + 1e-7)


def _F(V, phi, psi, bias, lam):
    residual = V @ phi.numpy() - (psi - bias[:, None]).numpy()
    return float(np.sum(residual**2) / psi.numel() + lam * np.linalg.norm(V, axis=0).sum())


def test_lam_zero_keeps_every_input_and_the_function():
    model, x = _chain(3)
    result = netshrink.compress(model, x, "multitask_lasso", layer="last", lam=0.0, gap_tol=1e-12)
    assert result.layers[0].kept == 10
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-6, atol=1e-6)


def test_lam_above_lam_max_leaves_the_bias_alone():
    model, x = _chain(4)
    phi, psi, bias = _layer_data(model, "layers.2", x)
    lam_max = _lam_max(phi, psi, bias)
    result = netshrink.compress(model, x, "multitask_lasso", layer="last", lam=1.01 * lam_max)
    assert result.layers[0].kept == 1
    assert torch.count_nonzero(result.model.layers[2].weight) == 0
    torch.testing.assert_close(result.model(x), bias.expand(len(x), len(bias)))
    below = netshrink.compress(model, x, "multitask_lasso", layer="last", lam=0.97 * lam_max, gap_tol=1e-12)
    cross = phi @ (psi - bias[:, None]).T  # the first input to enter is the one with the largest ‖cross_k‖
    assert below.layers[0].kept_indices == [int(torch.linalg.vector_norm(cross, dim=1).argmax())]
    assert torch.count_nonzero(below.model.layers[2].weight) == len(bias)


def test_prox_adam_through_compress_runs_the_original_iteration():
    model, x = _chain(5)
    model = model.float()
    x = x.float()
    phi, psi, bias = _layer_data(model, "layers.2", x)
    expected = prox_adam(phi, psi, bias, 0.05, 0.07, seed=4, max_iter=400, check_every=100)
    result = netshrink.compress(model, x, "multitask_lasso", layer="last", lam=0.05, solver="prox_adam", mu=0.07,
                                seed=4, max_iter=400)
    report = result.layers[0]
    assert report.kept_indices == expected.active.tolist()
    torch.testing.assert_close(result.model.layers[2].weight.detach(), expected.V[:, expected.active],
                               rtol=2e-4, atol=2e-5)
    assert report.details["stop_reason"] == "max_iter" and report.details["iterations"] == 400
    assert report.details["objective"] == pytest.approx(expected.objective, rel=1e-4)


def test_warm_start_reaches_the_same_minimiser():
    model, x = _chain(6)
    cold = netshrink.compress(model, x, "multitask_lasso", layer="pen", lam=0.05, gap_tol=1e-12)
    warm = netshrink.compress(model, x, "multitask_lasso", layer="pen", lam=0.05, gap_tol=1e-12, warm_start=True)
    assert cold.layers[0].kept_indices == warm.layers[0].kept_indices
    torch.testing.assert_close(warm.model.layers[1].weight, cold.model.layers[1].weight, atol=1e-6, rtol=1e-6)


def test_flattened_conv_features_are_selected_one_by_one_through_a_sampler(tmp_path):
    torch.manual_seed(7)
    model = ConvNet().double().eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # non-trivial running statistics
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(400, 2, 16, 16, dtype=torch.float64)
    phi, psi, bias = _layer_data(model, "head.1", x)
    lam = 0.1 * _lam_max(phi, psi, bias)
    expected = _cvxpy_solution(phi, psi, bias, lam)
    result = netshrink.compress(model, x, "multitask_lasso", layer="first", lam=lam, gap_tol=1e-12)
    report = result.layers[0]
    assert report.name == "head.1:in" and report.sampled and report.total == 20 and report.producers == []
    sampler = result.model.head[1]
    assert isinstance(sampler, Sampled) and sampler.index.tolist() == report.kept_indices
    norms = np.linalg.norm(expected, axis=0)
    assert report.kept_indices == [int(i) for i in np.flatnonzero(norms > 1e-4 * norms.max())]
    assert report.kept < 20  # single features, not whole channels of 4
    # the convolutions are untouched; only the consumer's columns went
    for original, new in zip(model.features.parameters(), result.model.features.parameters()):
        assert torch.equal(original, new)
    assert result.params_before - result.params_after == 16 * (20 - report.kept)
    ours = np.zeros_like(expected)
    ours[:, report.kept_indices] = sampler.layer.weight.detach().numpy()
    assert _F(ours, phi, psi, bias, lam) <= _F(expected, phi, psi, bias, lam) * (1 + 1e-9)
    with torch.no_grad():
        features = model.features(x).flatten(1)
        wanted = features[:, report.kept_indices] @ torch.from_numpy(ours[:, report.kept_indices]).T + bias
        torch.testing.assert_close(result.model.head[1](features), wanted)
    result.save(tmp_path / "saved")
    again = netshrink.load(tmp_path / "saved", ConvNet().double().eval())
    torch.testing.assert_close(again(x), result.model(x))


def test_the_network_input_is_served_by_a_sampler():
    model, x = _chain(8)
    result = netshrink.compress(model, x, "multitask_lasso", layer="first", lam=0.05)
    report = result.layers[0]
    assert report.name == "layers.0:in" and report.sampled and report.total == 6
    assert isinstance(result.model.layers[0], Sampled)
    kept = report.kept_indices
    with torch.no_grad():
        hidden = result.model.layers[0].layer(x[:, kept])
        torch.testing.assert_close(result.model.layers[0](x), hidden)


def test_a_model_with_an_input_sampler_compresses_again(tmp_path):
    # the sampler's index_select mixes channels; the layers behind it are still cuts
    model, x = _chain(10, widths=(6, 14, 10, 3))
    sampled = netshrink.compress(model, x, "multitask_lasso", layer="first", lam=0.05).model
    again = netshrink.compress(sampled, x, "group_lasso", lam=0.0)
    assert [r.name for r in again.layers] == ["layers.0.layer", "layers.1"]
    with torch.no_grad():
        torch.testing.assert_close(again.model(x), sampled(x), rtol=1e-9, atol=1e-9)
    shrunk = netshrink.compress(sampled, x, "group_lasso", lam=0.2)
    assert shrunk.params_after < shrunk.params_before
    restored = netshrink.load(shrunk.save(tmp_path / "twice"), sampled)
    with torch.no_grad():
        torch.testing.assert_close(restored(x), shrunk.model(x))


def test_layer_names_resolve_in_execution_order():
    model, _ = _chain(9, widths=(5, 7, 6, 4, 2))
    assert linear_layers(model) == ["layers.0", "layers.1", "layers.2", "layers.3"]
    assert [resolve_linear(model, name) for name in ("first", "pen", "last")] == ["layers.0", "layers.2", "layers.3"]
    assert resolve_linear(model, "layers.1") == "layers.1"
    assert input_cut(model, "pen").producers == ("layers.1",)
    conv = ConvNet()
    assert input_cut(conv, "first").sampled and input_cut(conv, "last").producers == ("head.1",)


def test_bad_input_gets_specific_errors():
    model, x = _chain(10)
    conv, images = ConvNet().double().eval(), torch.randn(50, 2, 16, 16, dtype=torch.float64)
    cases = [
        (lambda: netshrink.compress(model, x, "multitask_lasso", layer="last", lam=-0.1), InvalidInputError,
         "lam must be a finite number ≥ 0"),
        (lambda: netshrink.compress(model, x, "multitask_lasso", layer="last"), InvalidInputError,
         "multitask_lasso needs lam"),
        (lambda: netshrink.compress(model, x, "multitask_lasso", layer="last", lam=0.1, solver="prox_adam", mu=0.0),
         InvalidInputError, "mu \\(the Adam learning rate\\) must be a finite number > 0"),
        (lambda: netshrink.compress(model, x, "multitask_lasso", layer="last", lam=0.1, solver="prox_adam",
                                    mu=-1.0), InvalidInputError, "mu"),
        (lambda: netshrink.compress(model, x, "multitask_lasso", layer="last", lam=0.1, solver="prox_adam"),
         InvalidInputError, "needs mu"),
        (lambda: netshrink.compress(model, x, "multitask_lasso", layer="last", lam=0.1, mu=0.1),
         InvalidInputError, "belong to solver='prox_adam'"),
        (lambda: netshrink.compress(model, x, "multitask_lasso", layer="last", lam=0.1, solver="newton"),
         InvalidInputError, "unknown solver"),
        (lambda: netshrink.compress(model, x, "multitask_lasso", layer="fc9", lam=0.1), UnsupportedCutError,
         "has no layer named 'fc9'.*'layers.0', 'layers.1', 'layers.2'"),
        (lambda: netshrink.compress(model, x, "multitask_lasso", layer="activation", lam=0.1), UnsupportedCutError,
         "has no layer named"),
        (lambda: netshrink.compress(conv, images, "multitask_lasso", layer="features.0", lam=0.1),
         UnsupportedCutError, "is a Conv2d, not an nn.Linear"),
        (lambda: netshrink.compress(conv, images, "multitask_lasso", layer="features.1", lam=0.1),
         UnsupportedCutError, "is a BatchNorm2d, not an nn.Linear"),
        (lambda: netshrink.compress(conv, images, "multitask_lasso", lam=0.1), UnsupportedCutError,
         "'features.4' is a Conv2d"),
        (lambda: netshrink.compress(conv, images, "multitask_lasso", layers=["features.4"], lam=0.1),
         UnsupportedCutError, "reads 'features.4' as 5 channels of 4 features each"),
        (lambda: netshrink.compress(Chain([3, 2]), torch.randn(9, 3), "multitask_lasso", layer="pen", lam=0.1),
         UnsupportedCutError, "layer='pen' needs 2 nn.Linear layers"),
        (lambda: netshrink.compress(model, x, "multitask_lasso", layer="last", layers=["layers.1"], lam=0.1),
         InvalidInputError, "not both"),
        (lambda: netshrink.compress(model, x, "multitask_lasso", layer=3, lam=0.1), InvalidInputError,
         "layer must be 'first', 'pen', 'last' or a module path"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
