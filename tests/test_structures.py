"""Conv, BatchNorm, pooling, flatten and residual structures through the whole pipeline."""

import pytest
import torch
from torch import nn

import netshrink
from netshrink.graph import find_cuts
from netshrink.modules import Sampled

from models import ConvNet, TinyResNet


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


def _copy_unit(model, paths, source, target):
    """Make output unit ``target`` of every module at ``paths`` an exact copy of ``source``."""
    with torch.no_grad():
        for path in paths:
            module = model.get_submodule(path)
            for name in ("weight", "bias", "running_mean", "running_var"):
                tensor = getattr(module, name, None)
                if tensor is not None:
                    tensor[target] = tensor[source]


def _randomise_norms(model):
    """Give every BatchNorm non-trivial statistics, as after training."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
    return model


def _conv_net_with_duplicates():
    torch.manual_seed(1)
    model = _randomise_norms(ConvNet()).double().eval()
    _copy_unit(model, ["features.0", "features.1"], 2, 5)   # first cut: channel 5 = channel 2
    _copy_unit(model, ["head.1"], 3, 11)                    # last cut: neuron 11 = neuron 3
    with torch.no_grad():
        model.head[1].bias.fill_(3.0)  # no neuron of the last cut is dead on any input
    return model


@pytest.mark.parametrize("chaining", ["top_down", "parallel", "bottom_up"])
def test_duplicate_channels_are_removed_exactly_through_bn_pool_and_flatten(chaining):
    model = _conv_net_with_duplicates()
    calibration = torch.randn(300, 2, 16, 16, dtype=torch.float64)
    result = netshrink.compress(model, calibration, "interpolative", tol=1e-9, chaining=chaining)
    kept = {layer.name: layer.kept for layer in result.layers}
    assert kept["features.0"] == 5 and kept["head.1"] == 15
    fresh = torch.randn(50, 2, 16, 16, dtype=torch.float64)
    assert relative_error(result.model(fresh), model(fresh)) <= 1e-10
    assert result.model.features[1].num_features == 5  # the BatchNorm lost the channel too


def _resnet_with_duplicate_stream_channel():
    torch.manual_seed(2)
    model = _randomise_norms(TinyResNet(width=6)).double().eval()
    stream_before = ["stem", "stem_bn", "block1.conv2", "block1.bn2"]
    stream_after = ["block2.conv2", "block2.bn2", "block2.shortcut", "block2.shortcut_bn"]
    _copy_unit(model, stream_before + stream_after, 1, 4)
    with torch.no_grad():  # stream channel 4 is read through channel 1 only, so it stays a copy
        for path in ["block1.conv1", "block2.conv1", "block2.shortcut", "fc"]:
            weight = model.get_submodule(path).weight
            weight[:, 1] += weight[:, 4]
            weight[:, 4] = 0
    return model


@pytest.mark.parametrize("coupling", ["joint", "sampler"])
def test_residual_stream_duplicate_is_removed_exactly(coupling):
    model = _resnet_with_duplicate_stream_channel()
    calibration = torch.randn(200, 1, 8, 8, dtype=torch.float64)
    result = netshrink.compress(model, calibration, "interpolative", tol=1e-9, coupling=coupling)
    fresh = torch.randn(40, 1, 8, 8, dtype=torch.float64)
    assert relative_error(result.model(fresh), model(fresh)) <= 1e-10
    stream = [layer for layer in result.layers if len(layer.producers) > 1 or layer.sampled]
    assert stream and all(layer.kept <= 5 for layer in stream)
    if coupling == "joint":
        assert result.model.stem.out_channels == 5 and result.model.block1.bn2.num_features == 5
    else:
        assert isinstance(result.model.block1.conv1, Sampled)
        assert result.model.stem.out_channels == 6  # samplers leave the producers whole


def test_joint_and_sampled_models_save_and_load(tmp_path):
    model = _resnet_with_duplicate_stream_channel()
    calibration = torch.randn(100, 1, 8, 8, dtype=torch.float64)
    fresh = torch.randn(10, 1, 8, 8, dtype=torch.float64)
    for coupling in ("joint", "sampler"):
        result = netshrink.compress(model, calibration, "interpolative", keep=0.5, coupling=coupling)
        result.save(tmp_path / coupling)
        rebuilt = netshrink.load(tmp_path / coupling, TinyResNet(width=6).double())
        torch.testing.assert_close(rebuilt.eval()(fresh), result.model(fresh), rtol=0, atol=0)


def test_compressed_resnet_is_smaller_for_joint_than_for_samplers():
    model = _randomise_norms(TinyResNet(width=8)).eval()
    calibration = torch.randn(200, 1, 8, 8)
    joint = netshrink.compress(model, calibration, "interpolative", keep=0.5, coupling="joint")
    sampled = netshrink.compress(model, calibration, "interpolative", keep=0.5, coupling="sampler")
    assert joint.params_after < sampled.params_after < joint.params_before
    assert len(find_cuts(model, "sampler")[0]) > len(find_cuts(model, "joint")[0])
