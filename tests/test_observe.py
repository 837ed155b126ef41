import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netshrink.errors import InvalidInputError
from netshrink.graph import find_cuts
from netshrink.layers import weight_matrix
from netshrink.methods.interpolative import UnitRows
from netshrink.observe import Calibration, GramStatistic, RFactor, observe

from models import Chain


@pytest.mark.parametrize("rows,width,batch", [(1000, 30, 7), (50, 30, 8), (31, 31, 31), (1, 5, 1), (4000, 3, 999)])
def test_streaming_r_factor_matches_gram(rows, width, batch):
    rng = np.random.default_rng(rows + width)
    z = rng.standard_normal((rows, width)) * rng.uniform(0.01, 100, width)
    accumulator = RFactor(width)
    for start in range(0, rows, batch):
        accumulator.update(torch.from_numpy(z[start:start + batch]).float())
    r = accumulator.result().numpy()
    assert r.shape == (min(rows, width), width)
    assert np.allclose(np.tril(r, -1), 0)
    z32 = z.astype(np.float32).astype(np.float64)  # the rows were given in float32
    np.testing.assert_allclose(r.T @ r, z32.T @ z32 / rows, rtol=1e-9, atol=1e-9 * np.abs(z32).max() ** 2)
    assert accumulator.count == rows


def test_r_factor_singular_values_match_data():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((600, 40)) @ rng.standard_normal((40, 40))
    z[:, 7] = 0  # a dead neuron
    accumulator = RFactor(40)
    for chunk in np.array_split(z, 9):
        accumulator.update(torch.from_numpy(chunk))
    r = accumulator.result().numpy()
    np.testing.assert_allclose(np.linalg.svd(r, compute_uv=False),
                               np.linalg.svd(z / np.sqrt(600), compute_uv=False), rtol=1e-10, atol=1e-12)
    assert np.all(r[:, 7] == 0)


def test_observe_sees_consumer_input_and_removes_hooks():
    torch.manual_seed(0)
    model = Chain([6, 9, 4, 2]).double()
    model.train()
    cuts, _ = find_cuts(model)
    x = torch.randn(120, 6, dtype=torch.float64)
    stats = observe(model, cuts, Calibration(x, batch_size=50), UnitRows)
    with torch.no_grad():
        z1 = torch.relu(model.layers[0](x))
        z2 = torch.relu(model.layers[1](z1))
    for cut, z in zip(cuts, (z1, z2)):
        r = stats[cut.name].r_factor.result()
        torch.testing.assert_close(r.T @ r, z.T @ z / len(z), rtol=1e-10, atol=1e-12)
    assert model.training  # flag restored
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_calibration_accepts_tuples_and_skips_empty_batches():
    data = [(torch.ones(3, 2), torch.zeros(3)), torch.empty(0, 2), [torch.ones(2, 2)]]
    assert [tuple(b.shape) for b in Calibration(data)] == [(3, 2), (2, 2)]


@pytest.mark.parametrize("bad,match", [
    (42, "tensor or an iterable"),
    ([("x",)], "batch 0 is a str"),
    ([()], "empty tuple"),
    (torch.tensor(3.0), "at least one sample"),
])
def test_calibration_rejects_bad_batches(bad, match):
    with pytest.raises(InvalidInputError, match=match):
        list(Calibration(bad))


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_calibration_batch_size_must_be_positive_integer(size):
    with pytest.raises(InvalidInputError, match="batch_size"):
        Calibration(torch.ones(3, 2), batch_size=size)


def _patches_by_loops(x, conv):
    """Unfolded patches of a zero-padded conv input, one row per output position (reference)."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    padded = F.pad(x, (pw, pw, ph, ph))
    out_h = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for i in range(n):
        for u in range(out_h):
            for v in range(out_w):
                patch = padded[i, :, u * sh:u * sh + dh * (kh - 1) + 1:dh, v * sw:v * sw + dw * (kw - 1) + 1:dw]
                rows.append(patch.reshape(-1))
    return torch.stack(rows)


@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (2, 1, 1), (1, 2, 2), (3, 1, 2)])
def test_gram_of_conv_patches_matches_explicit_patches_and_conv_output(stride, padding, dilation):
    torch.manual_seed(stride + 3 * padding + 7 * dilation)
    conv = nn.Conv2d(3, 4, (3, 2), stride=stride, padding=padding, dilation=dilation).double()
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU(), conv).double()
    x = torch.randn(5, 2, 9, 8, dtype=torch.float64)
    (cut,), _ = find_cuts(model)
    stats = observe(model, [cut], Calibration(x, batch_size=2), lambda cut, layers: GramStatistic(layers))[cut.name]
    z = torch.relu(model[0](x)).detach()
    rows = _patches_by_loops(z, conv)
    gram, cross, energy = stats.result(0)
    torch.testing.assert_close(gram, rows.T @ rows / len(rows), rtol=1e-12, atol=1e-12)
    assert cross is gram and energy is None
    # The matrix view reproduces the convolution: W rows = conv(z) without bias.
    out = F.conv2d(z, conv.weight, None, conv.stride, conv.padding, conv.dilation)
    y = out.permute(0, 2, 3, 1).reshape(-1, 4)
    torch.testing.assert_close(rows @ weight_matrix(conv).T, y, rtol=1e-12, atol=1e-12)


def test_reference_statistics_pair_current_and_original_inputs():
    torch.manual_seed(4)
    original = Chain([5, 7, 3]).double().eval()
    current = Chain([5, 7, 3]).double().eval()  # different weights: a "compressed" model
    x = torch.randn(64, 5, dtype=torch.float64)
    (cut,), _ = find_cuts(current)
    stats = observe(current, [cut], Calibration(x, batch_size=20), lambda cut, layers: GramStatistic(layers),
                    reference=original)[cut.name]
    a = torch.relu(current.layers[0](x)).detach()
    z = torch.relu(original.layers[0](x)).detach()
    gram, cross, energy = stats.result(0)
    torch.testing.assert_close(gram, a.T @ a / 64)
    torch.testing.assert_close(cross, a.T @ z / 64)
    y = z @ current.layers[1].weight.T  # the targets: the consumer's weights on the original's rows
    assert energy == pytest.approx(float(y.square().sum() / 64), rel=1e-12)


def test_gram_statistic_averages_once_in_place_and_then_takes_no_rows():
    generator = torch.Generator().manual_seed(4)
    layer = nn.Linear(5, 3).double()
    rows = torch.randn(40, 5, generator=generator, dtype=torch.float64)
    reference = torch.randn(40, 5, generator=generator, dtype=torch.float64)
    statistic = GramStatistic([layer])
    with torch.inference_mode():
        statistic.update(0, rows[:25], reference[:25])
        statistic.update(0, rows[25:], reference[25:])
    gram, cross, energy = statistic.result(0)
    torch.testing.assert_close(gram, rows.T @ rows / 40)
    torch.testing.assert_close(cross, rows.T @ reference / 40)
    assert energy == pytest.approx(float((reference @ layer.weight.T).square().sum() / 40), rel=1e-12)
    again = statistic.result(0)  # a second read does not divide again
    assert again[0] is gram and torch.equal(again[1], cross) and again[2] == energy
    torch.testing.assert_close(statistic.means(0)[1], reference.mean(dim=0))
    with pytest.raises(InvalidInputError, match="already read"):
        statistic.update(0, rows[:5], reference[:5])
