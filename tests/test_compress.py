"""compress(): losslessness, the chosen neurons and weights against independent references."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

import netshrink
import netshrink.data
from netshrink.errors import InvalidInputError, UnsupportedCutError, UntraceableModelError

from models import Chain, Nested, Untraceable


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key in before:
        assert torch.equal(after[key], before[key]), key


MODELS = [
    pytest.param(lambda: Chain([11, 13, 7, 31, 5], torch.relu), 11, id="relu-odd-widths"),
    pytest.param(lambda: Chain([9, 17, 17, 3], torch.tanh), 9, id="tanh"),
    pytest.param(lambda: Chain([6, 19, 8, 4], F.gelu), 6, id="gelu"),
    pytest.param(lambda: Chain([6, 10, 10, 2], nn.LeakyReLU(0.2)), 6, id="leaky-relu"),
    pytest.param(lambda: Chain([5, 12, 3], torch.sigmoid), 5, id="sigmoid"),
    pytest.param(Nested, 12, id="nested-custom-forward"),
]


@pytest.mark.parametrize("chaining", ["top_down", "parallel"])
@pytest.mark.parametrize("budget", [{"tol": 0.0}, {"keep": 1.0}], ids=["tol0", "keep1"])
@pytest.mark.parametrize("make_model,n_in", MODELS)
def test_lossless_budget_reproduces_outputs(make_model, n_in, budget, chaining):
    torch.manual_seed(0)
    model = make_model().double().eval()
    calibration = torch.randn(400, n_in, dtype=torch.float64)
    held_out = torch.randn(300, n_in, dtype=torch.float64)
    before = snapshot(model)
    result = netshrink.compress(model, calibration, chaining=chaining, **budget)
    assert_unchanged(model, before)
    with torch.no_grad():
        assert relative_error(result.model(held_out), model(held_out)) <= 1e-5


def test_tiny_tol_removes_only_neurons_dead_on_calibration():
    torch.manual_seed(1)
    model = Chain([20, 64, 48, 10]).eval()
    with torch.no_grad():  # kill 10 neurons of the first layer: exactly zero activations
        model.layers[0].weight[:10] = 0
        model.layers[0].bias[:10] = -1
    calibration = torch.randn(500, 20)
    assert netshrink.compress(model, calibration, tol=0.0).layers[0].kept == 64
    result = netshrink.compress(model, calibration, tol=1e-12)
    assert result.layers[0].kept == 54
    assert not set(range(10)) & set(result.layers[0].kept_indices)
    held_out = torch.randn(200, 20)
    with torch.no_grad():
        assert relative_error(result.model(held_out), model(held_out)) <= 1e-5


@pytest.mark.parametrize("budget", [{"tol": 0.0}, {"keep": 1.0}], ids=["tol0", "keep1"])
def test_mlp7_lossless_on_test_images(trained_mlp7, fmnist_test, budget):
    images, _ = fmnist_test
    calibration = netshrink.data.calibration_images(1000, seed=3)
    result = netshrink.compress(trained_mlp7, calibration, **budget)
    assert result.params_after == result.params_before
    with torch.no_grad():
        assert relative_error(result.model(images), trained_mlp7(images)) <= 1e-5


def test_duplicate_neurons_are_removed_exactly():
    torch.manual_seed(2)
    model = Chain([8, 30, 4]).double().eval()
    with torch.no_grad():  # neurons 15..29 copy neurons 0..14
        model.layers[0].weight[15:] = model.layers[0].weight[:15]
        model.layers[0].bias[15:] = model.layers[0].bias[:15]
    calibration = torch.randn(300, 8, dtype=torch.float64)
    result = netshrink.compress(model, calibration, tol=1e-6)
    assert result.layers[0].kept == 15
    held_out = torch.randn(100, 8, dtype=torch.float64)
    with torch.no_grad():
        assert relative_error(result.model(held_out), model(held_out)) <= 1e-8
    assert result.params_after == 8 * 15 + 15 + 15 * 4 + 4


def activations(model, layer, x):
    """Input of layers[layer + 1] for a Chain model."""
    with torch.no_grad():
        h = x.flatten(1)
        for module in model.layers[: layer + 1]:
            h = model.activation(module(h))
    return h


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_kept_neurons_and_weights_match_lapack_and_least_squares(seed):
    torch.manual_seed(seed)
    model = Chain([10, 40, 6]).double().eval()
    calibration = torch.randn(250, 10, dtype=torch.float64)
    k = 12
    result = netshrink.compress(model, calibration, keep=k / 40)
    z = activations(model, 0, calibration).numpy()
    # Independent reference 1: LAPACK's pivoted QR picks the same neurons.
    _, _, pivots = scipy.linalg.qr(z, pivoting=True, mode="economic")
    assert result.layers[0].kept_indices == sorted(pivots[:k].tolist())
    # Independent reference 2: the folded consumer is the least-squares interpolation.
    kept = result.layers[0].kept_indices
    interpolation, *_ = np.linalg.lstsq(z[:, kept], z, rcond=None)  # (k, n)
    w = model.layers[1].weight.detach().numpy()
    expected = w @ interpolation.T
    got = result.model.layers[1].weight.detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(result.model.layers[0].weight.detach().numpy(),
                                  model.layers[0].weight.detach().numpy()[kept])


@pytest.mark.parametrize("keep", [0.1, 0.3, 0.6])
def test_error_bound_holds_on_calibration_data(keep):
    torch.manual_seed(6)
    model = Chain([7, 50, 9]).double().eval()
    calibration = torch.randn(600, 7, dtype=torch.float64)
    result = netshrink.compress(model, calibration, keep=keep)
    z = activations(model, 0, calibration)
    z_hat = activations(result.model, 0, calibration)
    w, w_hat = model.layers[1].weight.detach(), result.model.layers[1].weight.detach()
    error = torch.linalg.matrix_norm(z @ w.T - z_hat @ w_hat.T, ord=2) / math.sqrt(len(z))
    bound = result.layers[0].error
    assert error <= bound * (1 + 1e-8) + 1e-12
    assert error >= 0.05 * bound  # the bound is not vacuous


@pytest.mark.parametrize("eps", [0.05, 0.3, 1.0])
def test_tol_rule_matches_lapack_pivots(eps):
    torch.manual_seed(7)
    model = Chain([6, 40, 5]).double().eval()
    calibration = torch.randn(500, 6, dtype=torch.float64)
    result = netshrink.compress(model, calibration, tol=eps)
    z = activations(model, 0, calibration).numpy() / np.sqrt(500)
    _, r, _ = scipy.linalg.qr(z, pivoting=True, mode="economic")
    estimate = np.abs(np.diag(r)) * np.linalg.norm(model.layers[1].weight.detach().numpy(), 2)
    small = np.nonzero(estimate <= eps)[0]
    expected_k = int(small[0]) if len(small) else 40
    assert result.layers[0].kept == max(1, expected_k)


def test_tol_rule_is_invariant_to_relu_rescaling():
    torch.manual_seed(14)
    model = Chain([6, 40, 30, 5]).double().eval()
    rescaled = Chain([6, 40, 30, 5]).double().eval()
    rescaled.load_state_dict(model.state_dict())
    with torch.no_grad():  # relu(c·x) = c·relu(x): same network function
        rescaled.layers[0].weight *= 7.0
        rescaled.layers[0].bias *= 7.0
        rescaled.layers[1].weight /= 7.0
    calibration = torch.randn(400, 6, dtype=torch.float64)
    a = netshrink.compress(model, calibration, tol=0.2)
    b = netshrink.compress(rescaled, calibration, tol=0.2)
    assert [l.kept_indices for l in a.layers] == [l.kept_indices for l in b.layers]
    assert 1 < a.layers[0].kept < 40


@pytest.mark.parametrize("keep", [0.25, 0.5, 0.99])
def test_keep_fraction_counts(keep):
    torch.manual_seed(8)
    model = Chain([5, 20, 33, 4]).eval()
    result = netshrink.compress(model, torch.randn(200, 5), keep=keep)
    assert [l.kept for l in result.layers] == [math.ceil(keep * 20), math.ceil(keep * 33)]
    assert [l.total for l in result.layers] == [20, 33]
    expected_params = sum(p.numel() for p in result.model.parameters())
    assert result.params_after == expected_params
    assert result.params_before == sum(p.numel() for p in model.parameters())


def test_top_down_fits_second_cut_on_compressed_model_and_parallel_on_original():
    torch.manual_seed(9)
    model = Chain([6, 30, 30, 3]).double().eval()
    calibration = torch.randn(300, 6, dtype=torch.float64)
    k = 8
    top_down = netshrink.compress(model, calibration, keep=k / 30, chaining="top_down")
    parallel = netshrink.compress(model, calibration, keep=k / 30, chaining="parallel")

    def pivots(z):
        return sorted(scipy.linalg.qr(z.numpy(), pivoting=True, mode="economic")[2][:k].tolist())

    # Parallel: second cut chosen from the original model's activations.
    assert parallel.layers[1].kept_indices == pivots(activations(model, 1, calibration))
    # Top-down: from the activations of the model whose first cut is already
    # compressed (neurons `first` kept, T folded into the second layer).
    first = top_down.layers[0].kept_indices
    with torch.no_grad():
        z1 = activations(model, 0, calibration)
        interpolation = torch.linalg.lstsq(z1[:, first], z1).solution  # (k, 30)
        folded = model.layers[1].weight @ interpolation.T  # (30, k)
        z2 = torch.relu(z1[:, first] @ folded.T + model.layers[1].bias)
    assert top_down.layers[1].kept_indices == pivots(z2)
    assert top_down.layers[1].kept_indices != parallel.layers[1].kept_indices


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(10)
    model = Nested().eval()
    calibration = torch.randn(300, 12)
    result = netshrink.compress(model, calibration, keep=0.5)
    target = tmp_path / "small"
    result.save(target)
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "model.safetensors"]
    fresh = Nested()
    loaded = netshrink.load(target, fresh)
    x = torch.randn(50, 12)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), result.model(x))
    assert fresh.encoder[0].fc.out_features == 17  # the fresh model is untouched
    with pytest.raises(FileExistsError, match="exists"):
        result.save(target)
    result.save(target, overwrite=True)


def test_load_rejects_mismatched_model(tmp_path):
    torch.manual_seed(11)
    result = netshrink.compress(Chain([4, 10, 2]).eval(), torch.randn(100, 4), keep=0.5)
    result.save(tmp_path / "c")
    with pytest.raises(netshrink.errors.NetshrinkError, match=r"module 'layers.0'.*'out_features': 12.*'out_features': 10"):
        netshrink.load(tmp_path / "c", Chain([4, 12, 2]))
    with pytest.raises(netshrink.errors.NetshrinkError, match="not a saved compression"):
        netshrink.load(tmp_path, Chain([4, 10, 2]))


def test_calibration_as_batches_and_dataloader_equals_tensor():
    torch.manual_seed(12)
    model = Chain([5, 25, 3]).double().eval()
    data = torch.randn(300, 5, dtype=torch.float64)
    labels = torch.zeros(300, dtype=torch.int64)
    as_tensor = netshrink.compress(model, data, keep=0.4)
    as_list = netshrink.compress(model, [(data[i:i + 64], labels[i:i + 64]) for i in range(0, 300, 64)], keep=0.4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data, labels), batch_size=37)
    as_loader = netshrink.compress(model, loader, keep=0.4)
    assert as_tensor.layers[0].kept_indices == as_list.layers[0].kept_indices == as_loader.layers[0].kept_indices
    torch.testing.assert_close(as_tensor.model.layers[1].weight, as_loader.model.layers[1].weight,
                               rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_model_compresses_on_device():
    model = Chain([5, 20, 3]).cuda().eval()
    x = torch.randn(200, 5, device="cuda")
    result = netshrink.compress(model, x, tol=0.0)
    assert next(result.model.parameters()).is_cuda
    with torch.no_grad():
        assert relative_error(result.model(x), model(x)) <= 1e-4


class TestBadInput:
    model = Chain([4, 8, 2]).eval()

    def test_both_or_neither_budget(self):
        with pytest.raises(InvalidInputError, match="exactly one of tol"):
            netshrink.compress(self.model, torch.randn(10, 4), tol=0.1, keep=0.5)
        with pytest.raises(InvalidInputError, match="exactly one of tol"):
            netshrink.compress(self.model, torch.randn(10, 4))

    @pytest.mark.parametrize("keep,match", [(0, "keep=0 would leave"), (-0.1, "keep must be"),
                                            (1.5, "keep must be"), (float("nan"), "keep must be"),
                                            (True, "keep must be")])
    def test_keep_out_of_range(self, keep, match):
        with pytest.raises(InvalidInputError, match=match):
            netshrink.compress(self.model, torch.randn(10, 4), keep=keep)

    @pytest.mark.parametrize("tol", [-1e-3, float("inf"), float("nan")])
    def test_tol_out_of_range(self, tol):
        with pytest.raises(InvalidInputError, match="tol must be"):
            netshrink.compress(self.model, torch.randn(10, 4), tol=tol)

    @pytest.mark.parametrize("value", [float("nan"), float("inf")])
    def test_non_finite_calibration(self, value):
        x = torch.randn(10, 4)
        x[3, 2] = value
        with pytest.raises(InvalidInputError, match="NaN/Inf"):
            netshrink.compress(self.model, x, keep=0.5)

    def test_overflowing_activations_name_the_layer(self):
        model = Chain([4, 8, 2]).eval()
        with torch.no_grad():
            model.layers[0].weight.fill_(1e38)
        with pytest.raises(InvalidInputError, match="layers.1"):
            netshrink.compress(model, torch.ones(10, 4) * 10, keep=0.5)

    def test_empty_calibration(self):
        with pytest.raises(InvalidInputError, match="at least one sample"):
            netshrink.compress(self.model, torch.empty(0, 4), keep=0.5)
        with pytest.raises(InvalidInputError, match="empty"):
            netshrink.compress(self.model, [], keep=0.5)

    def test_wrong_input_shape(self):
        with pytest.raises(InvalidInputError, match=r"shape \(10, 5\).*forward\(\) expects"):
            netshrink.compress(self.model, torch.randn(10, 5), keep=0.5)

    def test_one_shot_generator(self):
        batches = (torch.randn(10, 4) for _ in range(2))
        with pytest.raises(InvalidInputError, match="one-shot iterator"):
            netshrink.compress(self.model, batches, keep=0.5)

    def test_untraceable_model(self):
        with pytest.raises(UntraceableModelError, match="Untraceable"):
            netshrink.compress(Untraceable(), torch.randn(10, 4), keep=0.5)

    def test_model_without_cuts(self):
        with pytest.raises(UnsupportedCutError, match="no place where units can be removed"):
            netshrink.compress(nn.Linear(4, 2), torch.randn(10, 4), keep=0.5)

    def test_unknown_method(self):
        with pytest.raises(InvalidInputError, match="unknown method 'svd'.*interpolative"):
            netshrink.compress(self.model, torch.randn(10, 4), method="svd", keep=0.5)

    def test_too_few_samples_for_keep(self):
        model = Chain([4, 50, 2]).eval()
        with pytest.raises(InvalidInputError, match="calibration rows"):
            netshrink.compress(model, torch.randn(10, 4), keep=0.5)

    def test_not_a_module(self):
        with pytest.raises(InvalidInputError, match="nn.Module"):
            netshrink.compress(lambda x: x, torch.randn(10, 4), keep=0.5)


def test_compress_selected_layers_only():
    torch.manual_seed(13)
    model = Chain([5, 20, 20, 3]).double().eval()
    result = netshrink.compress(model, torch.randn(200, 5, dtype=torch.float64), keep=0.5, layers=["layers.1"])
    assert [l.name for l in result.layers] == ["layers.1"]
    assert result.model.layers[0].out_features == 20 and result.model.layers[1].out_features == 10
    with pytest.raises(UnsupportedCutError, match="'layers.2' cannot lose units: it produces the network's output"):
        netshrink.compress(model, torch.randn(20, 5, dtype=torch.float64), keep=0.5, layers=["layers.2"])
    with pytest.raises(UnsupportedCutError, match="no cut is named 'layers.9'.*'layers.0', 'layers.1'"):
        netshrink.compress(model, torch.randn(20, 5, dtype=torch.float64), keep=0.5, layers=["layers.9"])
