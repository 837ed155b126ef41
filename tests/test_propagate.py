"""Sequential propagation: top-down from cached activations equals top-down by whole
forward passes, with forward work linear in depth."""

from __future__ import annotations

import contextlib
import copy
import os

import pytest
import torch
from torch import nn

import models
from netshrink import CacheOptions, compress, propagate
from netshrink.activation_cache import ActivationCache
from netshrink.errors import InvalidInputError
from netshrink.graph import require_cuts
from netshrink.methods import make_method
from netshrink.observe import Calibration


def _top_down(model, data, method, sequential, cache=None, counter=None, **options):
    """One top-down path on a private copy: ``(model, decisions)``; ``counter`` counts
    the layer calls of the schedule alone."""
    calibration = Calibration(data, batch_size=64)
    cuts, _ = require_cuts(model, "joint", calibration.first())
    strategy = make_method(method, **options)
    strategy.prepare(model, cuts)
    shrunk = copy.deepcopy(model)
    with counter or contextlib.nullcontext():
        decisions = propagate.top_down(shrunk, cuts, calibration, strategy, cache=cache, sequential=sequential)
    return shrunk, decisions


def _assert_same(first, second):
    (model_a, decisions_a), (model_b, decisions_b) = first, second
    removed = 0
    for (cut, a), (_, b) in zip(decisions_a, decisions_b):
        assert torch.equal(a.kept, b.kept), cut.name
        removed += cut.width - len(a.kept)
    assert removed > 0  # the comparison is not vacuous: units were removed
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        scale = state_b[key].abs().max().clamp_min(1e-30)
        assert ((state_a[key] - state_b[key]).abs().max() / scale) <= 1e-6, key


def _image_input(model, shapes=((2, 16, 16), (1, 16, 16), (3, 16, 16), (8, 8, 8), (3, 8, 8), (12,), (8,))):
    for shape in shapes:
        try:
            with torch.no_grad():
                model(torch.randn(2, *shape))
        except RuntimeError:
            continue
        return shape
    raise AssertionError(f"no input shape fits {type(model).__name__}")


@pytest.mark.parametrize("name", ["Nested", "Residual", "ConvNet", "TinyResNet", "InvertedResidual",
                                  "ConvNeXtBlock", "Bottleneck", "SqueezeExcite"])
@pytest.mark.parametrize("method, options", [("group_lasso", {"keep": 0.5}), ("magnitude", {"keep": 0.5})])
def test_sequential_equals_whole_passes(name, method, options):
    torch.manual_seed(3)
    model = getattr(models, name)().eval()
    data = torch.randn(300, *_image_input(model))
    assert isinstance(propagate.read_stages(model, data[:4], require_cuts(model, "joint", data[:4])[0]),
                      propagate.GraphStages)
    _assert_same(_top_down(model, data, method, True, **options), _top_down(model, data, method, False, **options))


def test_chain_interpolative_and_spilled_cache(tmp_path):
    """Everything spilled to memory-mapped files (limit 0): the same decisions, and the
    files are gone afterwards."""
    torch.manual_seed(4)
    model = models.Chain([20, 40, 30, 25, 5]).eval()
    data = torch.randn(500, 20)
    spilled = _top_down(model, data, "interpolative", True, cache=CacheOptions(memory_limit=0, directory=tmp_path),
                        keep=0.5)
    _assert_same(spilled, _top_down(model, data, "interpolative", False, keep=0.5))
    assert list(tmp_path.iterdir()) == []


def test_bfloat16_cache_is_close_not_exact():
    torch.manual_seed(5)
    model = models.Chain([20, 40, 30, 5]).eval()
    data = torch.randn(400, 20)
    exact = compress(model, data, "group_lasso", keep=0.5)
    rounded = compress(model, data, "group_lasso", keep=0.5, cache=CacheOptions(dtype=torch.bfloat16))
    x = torch.randn(200, 20)
    with torch.no_grad():
        reference, a, b = model(x), exact.model(x), rounded.model(x)
    assert (a - reference).norm() / reference.norm() < 0.5
    assert (b - a).norm() / a.norm() < 0.05


class _Counter:
    """Counts forward calls of ``nn.Linear`` modules while active."""

    def __enter__(self):
        self.calls = 0

        def hook(module, _inputs):
            if isinstance(module, nn.Linear):
                self.calls += 1

        self.handle = nn.modules.module.register_module_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_forward_work_is_linear_in_depth():
    """Layer calls per cut stay constant with depth on the sequential path; whole passes
    grow with depth (O(depth²) in all)."""
    torch.manual_seed(6)
    per_cut = {}
    for depth in (4, 8, 16):
        model = models.Chain([16] * (depth + 1) + [4]).eval()
        data = torch.randn(128, 16)  # two batches of 64
        counts = []
        for sequential in (True, False):
            counter = _Counter()
            _top_down(model, data, "group_lasso", sequential, counter=counter, keep=0.5)
            counts.append(counter.calls)
        per_cut[depth] = [count / depth for count in counts]  # depth cuts in a chain of depth + 1 layers
    sequential = [per_cut[d][0] for d in (4, 8, 16)]
    whole = [per_cut[d][1] for d in (4, 8, 16)]
    assert sequential[2] <= 1.15 * sequential[0]  # constant per cut: linear in all
    assert whole[2] > 2.5 * whole[0]              # grows with depth: quadratic in all


def test_transformer_blocks_equal_whole_passes():
    """A LLaMA-style decoder (grouped-query attention, SwiGLU) and BERT with padded batches
    run block by block from the cached hidden states."""
    hf_models = pytest.importorskip("hf_models")
    for build in (hf_models.llama, hf_models.bert):
        torch.manual_seed(7)
        model = build().eval()
        data = hf_models.token_batches(count=3, size=8, length=12)
        cuts, _ = require_cuts(model, "joint", data[0])
        assert isinstance(propagate.read_stages(model, data[0], cuts), propagate.BlockStages)
        keep = {"neurons": 0.5, "heads": 0.5}
        _assert_same(_top_down(model, data, "group_lasso", True, keep=keep),
                     _top_down(model, data, "group_lasso", False, keep=keep))


def test_cut_outside_the_stages_falls_back_to_whole_passes():
    """A layer called twice has no single stage: its cut is observed by whole passes and
    the caches are rebuilt after it."""

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(10, 20)
            self.shared = nn.Linear(20, 20)
            self.b = nn.Linear(20, 15)
            self.c = nn.Linear(15, 3)

        def forward(self, x):
            h = torch.relu(self.a(x))
            h = torch.relu(self.shared(torch.relu(self.shared(h))))
            return self.c(torch.relu(self.b(h)))

    torch.manual_seed(8)
    model = Twice().eval()
    data = torch.randn(300, 10)
    _assert_same(_top_down(model, data, "group_lasso", True, keep=0.5),
                 _top_down(model, data, "group_lasso", False, keep=0.5))


def test_unwritable_cache_directory_is_refused(tmp_path):
    if os.geteuid() == 0:
        folder = "/sys"  # read-only even for root
    else:
        folder = tmp_path / "locked"
        folder.mkdir(mode=0o500)
    with pytest.raises(InvalidInputError, match="not writable"):
        CacheOptions(directory=folder)
    with pytest.raises(InvalidInputError, match="does not exist"):
        CacheOptions(directory=tmp_path / "missing")


def test_bad_cache_options():
    with pytest.raises(InvalidInputError, match="floating torch.dtype"):
        CacheOptions(dtype=torch.int8)
    with pytest.raises(InvalidInputError, match="memory_limit"):
        CacheOptions(memory_limit=-1)


def test_activation_cache_round_trip_and_limit(tmp_path):
    """Nested values come back equal, in their own dtype, whether held or spilled; held
    bytes never pass the limit."""
    cache = ActivationCache(CacheOptions(memory_limit=4000, directory=tmp_path))
    values = {i: ({"x": torch.randn(10, 30), "n": i}, [torch.arange(i + 1)]) for i in range(6)}
    for index, value in values.items():
        cache.put(index, value)
        assert cache.resident_bytes <= 4000
    assert cache.spilled_bytes > 0
    for index, (mapping, items) in values.items():
        got_mapping, got_items = cache.get(index)
        assert torch.equal(got_mapping["x"], mapping["x"]) and got_mapping["n"] == index
        assert torch.equal(got_items[0], items[0]) and got_items[0].dtype == torch.int64
    cache.put(0, torch.zeros(3))  # replacing an entry frees its files
    cache.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["mlp7", "lenet5", "vgg-fmnist"])
def test_zoo_models_sequential_equals_whole_passes(name):
    """The trained zoo networks on real Fashion-MNIST images: the same kept units and
    weights as top-down by whole forward passes."""
    from netshrink import zoo
    from netshrink.data import calibration_images

    model = zoo.load(name, progress=False)
    images = calibration_images(600, seed=3)
    sequential = _top_down(model, images, "group_lasso", True, lam=0.01)
    whole = _top_down(model, images, "group_lasso", False, lam=0.01)
    _assert_same(sequential, whole)
