"""λ = 0 with debiasing is lossless: every zoo model and a small ResNet keep their outputs.

With ``lam=0`` the group lasso keeps every unit that is not identically zero on the
calibration data and refits the consumers by least squares; units it drops are exactly
zero there, so the outputs on the calibration data are unchanged (and on any data where
those units stay inactive; on the test split of a trained model a few may fire, so there
the reference is the original with those units silenced).
"""

import pytest
import torch

import netshrink
from netshrink import zoo
from netshrink.data import calibration_images
from netshrink.graph import find_cuts
from netshrink.rewrite import layer_at

from models import TinyResNet
from test_structures import _randomise_norms


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def images():
    pytest.importorskip("netshrink.data")
    from conftest import _require_dataset

    _require_dataset()
    return calibration_images(300, seed=3)


@torch.no_grad()
@pytest.mark.parametrize("name,chaining", [(name, "top_down") for name in zoo.names()]
                         + [("lenet5", "parallel"), ("lenet5", "bottom_up")])
def test_lam_zero_keeps_every_zoo_model_exactly(name, chaining, images):
    model = zoo.build(name).double().eval()
    calibration = images.double()
    result = netshrink.compress(model, calibration, "group_lasso", lam=0, chaining=chaining)
    assert relative_error(result.model(calibration), model(calibration)) <= 1e-5
    assert result.params_after <= result.params_before


@torch.no_grad()
@pytest.mark.parametrize("coupling", ["joint", "sampler"])
def test_lam_zero_keeps_a_resnet_exactly_and_drops_dead_channels(coupling):
    torch.manual_seed(8)
    model = _randomise_norms(TinyResNet(width=6)).double().eval()
    with torch.no_grad():  # channel 2 of the first block's hidden layer never fires
        model.block1.bn1.bias[2] = -1e3
    calibration = torch.randn(150, 1, 8, 8, dtype=torch.float64)
    fresh = torch.randn(40, 1, 8, 8, dtype=torch.float64)
    result = netshrink.compress(model, calibration, "group_lasso", lam=0, coupling=coupling)
    assert relative_error(result.model(fresh), model(fresh)) <= 1e-5
    assert layer_at(result.model, "block1.conv1").out_channels == 5


def _silenced(model, result):
    """A copy of ``model`` whose units removed by ``result`` output exactly zero.

    The units λ = 0 removes are zero on the calibration data; on other data a few may
    fire. Zeroing their producer rows and biases (and BatchNorm scale and shift) makes
    the original model say what the compressed one assumes.
    """
    import copy

    silent = copy.deepcopy(model)
    companions = {cut.name: cut.companions for cut in find_cuts(model)[0]}
    for report in result.layers:
        removed = sorted(set(range(report.total)) - set(report.kept_indices))
        if not removed or report.sampled:
            continue
        for path in (*report.producers, *companions[report.name]):
            layer = silent.get_submodule(path)
            layer.weight[removed] = 0
            if layer.bias is not None:
                layer.bias[removed] = 0
    return silent


@pytest.mark.slow
@torch.no_grad()
@pytest.mark.parametrize("name", zoo.names())
def test_lam_zero_keeps_trained_zoo_models_on_the_test_split(name, fmnist_test):
    model = zoo.load(name, progress=False).eval()
    images, _ = fmnist_test
    calibration = calibration_images(5000, seed=0)
    result = netshrink.compress(model, calibration, "group_lasso", lam=0)
    assert relative_error(result.model(calibration), model(calibration)) <= 1e-5
    # on the test split, up to the units that never fired on the calibration data
    assert relative_error(result.model(images), _silenced(model, result)(images)) <= 1e-5
