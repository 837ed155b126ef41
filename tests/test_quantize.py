"""Per-channel int8 weights: the closed form, every layer kind, bytes, save/load and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import netshrink
from netshrink.errors import InvalidInputError
from netshrink.modules import LowRank, Sampled
from netshrink.quantize import Int8Conv2d, Int8Linear, output_layers, quantize, stored_bytes

from models import Chain, ConvNet


def _reference(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8 codes and scales, written out with numpy."""
    rows = weight.reshape(weight.shape[0], -1)
    scale = np.abs(rows).max(axis=1) / 127
    scale[scale == 0] = 1
    return np.clip(np.round(rows / scale[:, None]), -127, 127).reshape(weight.shape), scale


def test_int8_layers_hold_the_closed_form_codes_and_compute_with_them():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, groups=1), nn.ReLU(), nn.Conv2d(5, 5, 3, groups=5),
                          nn.Flatten(), nn.Linear(5 * 6 * 6, 7), nn.Linear(7, 2, bias=False)).double().eval()
    with torch.no_grad():
        model[4].weight[2].zero_()  # a zero row keeps scale 1
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    original = {path: m.weight.detach().clone() for path, m in model.named_modules() if hasattr(m, "weight")}
    paths = quantize(model)
    assert paths == ["0", "2", "4", "5"]
    for path in paths:
        layer = model.get_submodule(path)
        assert isinstance(layer, Int8Conv2d if path in ("0", "2") else Int8Linear)
        assert layer.weight.dtype == torch.int8 and not layer.weight.requires_grad
        codes, scale = _reference(original[path].numpy())
        assert np.array_equal(layer.weight.numpy(), codes)
        assert np.allclose(layer.scale.flatten().numpy(), scale, rtol=1e-15)
        # every weight is within half a step of its code
        step = layer.scale.reshape(-1, *[1] * (original[path].ndim - 1))
        assert bool(((original[path] - step * layer.weight.double()).abs() <= step / 2 + 1e-15).all())
    dequantized = nn.Sequential(*[m for m in model]).double()
    expected = x
    for path, module in enumerate(model):
        if isinstance(module, (Int8Linear, Int8Conv2d)):
            weight = module.weight.double() * module.scale
            if isinstance(module, Int8Conv2d):
                expected = torch.nn.functional.conv2d(expected, weight, module.bias, module.stride, module.padding,
                                                      module.dilation, module.groups)
            else:
                expected = torch.nn.functional.linear(expected, weight, module.bias)
        else:
            expected = module(expected)
    assert torch.allclose(dequantized(x), expected, rtol=0, atol=0)


def test_layers_inside_factorisations_and_samplers_are_quantized():
    torch.manual_seed(1)
    model = nn.Sequential(Sampled(nn.Linear(3, 4), torch.tensor([0, 2, 5]), dim=-1),
                          LowRank(nn.Linear(4, 2, bias=False), nn.Linear(2, 6)))
    assert quantize(model) == ["0.layer", "1.first", "1.second"]
    assert isinstance(model[0].layer, Int8Linear) and isinstance(model[1].second, Int8Linear)
    assert model(torch.randn(5, 6)).shape == (5, 6)


def test_the_output_layer_stays_in_floating_point():
    torch.manual_seed(3)
    model, x = Chain([12, 20, 16, 5]).eval(), torch.randn(200, 12)
    assert output_layers(model, x) == ["layers.2"]
    result = netshrink.compress(model, x, "group_lasso", keep=0.5, quantize="int8")
    assert type(result.model.layers[2]) is nn.Linear
    assert isinstance(result.model.layers[0], Int8Linear) and isinstance(result.model.layers[1], Int8Linear)


def test_bytes_are_counted_by_hand():
    model = Chain([12, 20, 5]).eval()
    assert stored_bytes(model) == 4 * (12 * 20 + 20 + 20 * 5 + 5)
    quantize(model)
    # int8 weights, float32 scales (one per output) and biases
    assert stored_bytes(model) == (12 * 20 + 20 * 5) + 4 * (20 + 5) + 4 * (20 + 5)


def test_compress_with_int8_saves_loads_and_keeps_parameter_counts(tmp_path):
    torch.manual_seed(2)
    model = ConvNet().eval()
    x = torch.randn(96, 2, 16, 16, generator=torch.Generator().manual_seed(2))
    plain = netshrink.compress(model, x, "group_lasso", size=0.6)
    result = netshrink.compress(model, x, "group_lasso", size=0.6, quantize="int8")
    assert result.params_after == plain.params_after  # int8 weights are still parameters
    assert result.bytes_after < 0.6 * plain.bytes_after and result.options["quantize"] == "int8"
    assert result.bytes_before == stored_bytes(model) and plain.bytes_after == stored_bytes(plain.model)
    with torch.no_grad():
        difference = (result.model(x) - plain.model(x)).norm() / plain.model(x).norm()
    assert float(difference) < 0.05  # 8-bit weights move the outputs a little
    result.save(tmp_path / "int8")
    back = netshrink.load(tmp_path / "int8", ConvNet()).eval()
    with torch.no_grad():
        assert torch.equal(back(x), result.model(x))
    assert any(isinstance(m, Int8Conv2d) for m in back.modules())


def test_bad_quantization_requests():
    model, x = Chain([6, 8, 3]).eval(), torch.randn(40, 6)
    with pytest.raises(InvalidInputError, match="unknown quantize='int4'; netshrink quantizes weights per output "
                                                "channel to int8"):
        netshrink.compress(model, x, "magnitude", keep=0.5, quantize="int4")
    quantized = Chain([6, 8, 3])
    quantize(quantized)
    with pytest.raises(InvalidInputError, match="no nn.Linear, nn.Conv2d or Conv1D layer to quantize .* int8 already"):
        quantize(quantized)
    with pytest.raises(InvalidInputError, match="no nn.Linear, nn.Conv2d or Conv1D layer to quantize"):
        quantize(nn.Sequential(nn.ReLU()))
    with torch.device("meta"):
        on_meta = Chain([6, 8, 3])
    with pytest.raises(InvalidInputError, match="is on the meta device"):
        quantize(on_meta)


def test_int8_is_refused_with_onloading(tmp_path):
    from netshrink.onload import Onload

    model, x = Chain([6, 8, 3]).eval(), torch.randn(40, 6)
    with pytest.raises(InvalidInputError, match="quantize= rewrites the compressed model's layers once they are all "
                                                "loaded"):
        netshrink.compress(model, x, "magnitude", keep=0.5, quantize="int8",
                           onload=Onload(checkpoint=tmp_path, output=tmp_path / "out"))
