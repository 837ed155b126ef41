"""The torch.export reader: the same cuts as the fx reader wherever both read a model,
and the structures only it sees (attention heads, Linear squeeze-and-excitation)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netshrink
from netshrink import zoo
from netshrink.graph import export, find_cuts, fx

from models import (Bottleneck, Chain, ConvNet, ConvNeXtBlock, InvertedResidual, Nested, Residual, SqueezeExcite,
                    TinyResNet)

FX_TRACEABLE = {
    "chain": (lambda: Chain([10, 7, 5, 3]), torch.randn(4, 10)),
    "nested": (Nested, torch.randn(4, 12)),
    "residual": (Residual, torch.randn(4, 8)),
    "convnet": (ConvNet, torch.randn(2, 2, 16, 16)),
    "resnet": (TinyResNet, torch.randn(2, 1, 12, 12)),
    "mobilenet": (InvertedResidual, torch.randn(2, 3, 8, 8)),
    "bottleneck": (Bottleneck, torch.randn(2, 3, 8, 8)),
    "convnext": (ConvNeXtBlock, torch.randn(2, 3, 8, 8)),
    **{name: (lambda name=name: zoo.build(name), torch.randn(2, 1, 28, 28)) for name in zoo.names()},
}


def _summary(cuts, skipped):
    return ([(c.name, set(c.producers), c.consumers, set(c.companions), c.width, c.sampled, c.kind) for c in cuts],
            {s.module for s in skipped})


@pytest.mark.parametrize("coupling", ["joint", "sampler"])
@pytest.mark.parametrize("name", sorted(FX_TRACEABLE))
def test_both_readers_find_the_same_cuts(name, coupling):
    make, example = FX_TRACEABLE[name]
    model = make().eval()
    found, expected = _summary(*export.read(model, example, coupling)), _summary(*fx.read(model, coupling))
    if name == "convnext" and coupling == "sampler":
        # fx loses the stream at the layer-scaled branch (a permute); export still sees the head
        # read its 8 channels through the mean, so the head gets a sampler
        expected[0].append(("head:in", set(), ("head",), set(), 8, True, "neurons"))
        expected = (expected[0], {"head"})
    assert found == expected


def test_compressed_models_read_the_same_again():
    data = torch.randn(60, 8)
    for result in (netshrink.compress(Residual(), data, "magnitude", keep=0.5, coupling="sampler"),
                   netshrink.compress(Chain([8, 7, 5, 3]), data, "lowrank", keep=0.5)):
        model = result.model.eval()
        assert _summary(*export.read(model, data[:2], "joint")) == _summary(*fx.read(model, "joint"))


def test_linear_squeeze_and_excitation_is_one_joint_cut():
    cuts, _ = find_cuts(SqueezeExcite().eval(), example=torch.randn(2, 3, 8, 8))
    gate = cuts[0]
    assert gate.producers == ("conv", "fc2") and gate.consumers == ("fc1", "out") and gate.companions == ("bn",)
    assert [(c.name, c.kind) for c in cuts] == [("conv", "channels"), ("fc1", "neurons"), ("out", "channels")]


def test_depthwise_convolution_is_sliced_with_its_channels():
    cuts, _ = find_cuts(InvertedResidual().eval(), example=torch.randn(2, 3, 8, 8))
    expand = next(c for c in cuts if c.name == "expand.0")
    assert expand.companions == ("depthwise.0", "depthwise.1", "expand.1") and expand.consumers == ("project.0",)


class HandWrittenAttention(nn.Module):
    """Multi-head self-attention written by hand with F.scaled_dot_product_attention."""

    def __init__(self, width=16, num_heads=4, inner=24):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.up = nn.Linear(width, inner)
        self.down = nn.Linear(inner, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x):  # x: (B, T, width)
        b, t, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (z.view(b, t, self.num_heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        context = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1)
        x = self.norm(x + self.out(context))
        return x + self.down(F.gelu(self.up(x)))


def test_heads_of_hand_written_attention():
    torch.manual_seed(0)
    model = HandWrittenAttention().eval()
    x = torch.randn(32, 6, 16)
    cuts, skipped = find_cuts(model, example=x)
    heads = cuts[0]
    assert (heads.kind, heads.name, heads.producers, heads.consumers, heads.width) == \
        ("heads", "", ("qkv",), ("out",), 4)
    assert heads.rows == (((0, 4), (16, 4), (32, 4)),)
    assert fx.read(model, "joint")[0][0].kind == "neurons"  # fx sees the FFN only
    result = netshrink.compress(model, x, "group_lasso", keep=0.5)
    assert model.num_heads == 4 and result.model.num_heads == 2  # the head count it reshapes with
    assert result.model(x).shape == x.shape
    lossless = netshrink.compress(model, x, "group_lasso", lam=0.0)
    assert torch.allclose(lossless.model(x), model(x), atol=1e-5)


class OddHeadCount(HandWrittenAttention):
    """Reshapes with a head count kept under a name netshrink does not know."""

    def __init__(self):
        super().__init__()
        self.h = self.num_heads
        del self.num_heads

    def forward(self, x):
        self.num_heads = self.h
        return super().forward(x)


def test_a_model_whose_code_keeps_the_old_head_count_is_an_error():
    model = OddHeadCount().eval()
    with pytest.raises(netshrink.errors.UnsupportedCutError, match="does not run on the first calibration batch"):
        netshrink.compress(model, torch.randn(16, 6, 16), "magnitude", keep={"heads": 0.5})


def test_reading_the_graph_leaves_the_model_alone():
    model = TinyResNet().train()
    before = {name: (p.data_ptr(), p.detach().clone()) for name, p in model.state_dict().items()}
    find_cuts(model, example=(torch.randn(4, 1, 12, 12), torch.zeros(4)))
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(after[name].data_ptr() == ptr and torch.equal(after[name], value) for name, (ptr, value) in before.items())


def test_without_an_example_an_untraceable_model_asks_for_one():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:
                x = -x
            return self.b(self.a(x))

    with pytest.raises(netshrink.errors.UntraceableModelError, match="Pass example="):
        find_cuts(Dynamic())


def test_the_core_does_not_import_transformers():
    import subprocess
    import sys

    code = ("import sys, netshrink, netshrink.graph, netshrink.api, netshrink.methods, netshrink.cli; "
            "assert 'transformers' not in sys.modules and 'sentence_transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
