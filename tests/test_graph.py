import pytest
import torch
from torch import nn

from netshrink.errors import UnsupportedCutError, UntraceableModelError
from netshrink.graph import find_cuts, require_cuts, select_cuts

from models import Chain, ConvNet, Nested, Residual, TinyResNet, Untraceable


def test_chain_cuts_in_order():
    cuts, skipped = find_cuts(Chain([10, 7, 5, 3]))
    assert [(*c.producers, *c.consumers, c.width) for c in cuts] == [
        ("layers.0", "layers.1", 7),
        ("layers.1", "layers.2", 5),
    ]
    assert [s.module for s in skipped] == ["layers.2"]
    assert "output" in skipped[0].reason


def test_nested_modules_scalar_arithmetic_and_dropout():
    cuts, _ = find_cuts(Nested())
    assert [(*c.producers, *c.consumers) for c in cuts] == [
        ("encoder.0.fc", "encoder.1.fc"),
        ("encoder.1.fc", "head.0"),
        ("head.0", "head.3"),
    ]
    assert cuts[0].between == ("gelu",)
    assert cuts[1].between == ("gelu", "mul 0.5")
    assert cuts[2].between == ("tanh", "dropout")


def test_sequential_with_activation_modules():
    model = nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.1), nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2))
    cuts, _ = find_cuts(model)
    assert [(*c.producers, *c.consumers) for c in cuts] == [("0", "2"), ("2", "4")]


def test_residual_tensor_is_one_joint_cut():
    cuts, skipped = find_cuts(Residual())
    assert len(cuts) == 1
    cut = cuts[0]
    assert (cut.producers, cut.consumers, cut.width, cut.joint) == (("a", "b"), ("b", "c"), 8, True)
    assert "add" in cut.between
    assert [s.module for s in skipped] == ["c"]


def test_residual_tensor_with_samplers_gives_one_cut_per_reader():
    cuts, _ = find_cuts(Residual(), coupling="sampler")
    assert [(c.name, c.consumers, c.producers, c.sampled) for c in cuts] == [
        ("b:in", ("b",), (), True),
        ("c:in", ("c",), (), True),
    ]


def test_conv_bn_pool_flatten_cuts():
    cuts, skipped = find_cuts(ConvNet())
    assert [(c.producers, c.consumers, c.companions, c.width) for c in cuts] == [
        (("features.0",), ("features.4",), ("features.1",), 6),
        (("features.4",), ("head.1",), ("features.5",), 5),
        (("head.1",), ("head.3",), (), 16),
    ]
    assert cuts[0].between == ("batchnorm2d", "relu", "maxpool2d")
    assert cuts[1].between == ("batchnorm2d", "relu", "avgpool2d", "flatten")


def test_resnet_stream_is_joint_and_blocks_are_plain():
    cuts, _ = find_cuts(TinyResNet())
    joint = [c for c in cuts if c.joint]
    assert len(joint) == 2  # the stream before and after the projection shortcut
    before, after = joint
    assert set(before.producers) == {"stem", "block1.conv2"}
    assert set(before.consumers) == {"block1.conv1", "block2.conv1", "block2.shortcut"}
    assert set(before.companions) == {"stem_bn", "block1.bn2"}
    assert set(after.producers) == {"block2.conv2", "block2.shortcut"}
    assert after.consumers == ("fc",)
    assert set(after.companions) == {"block2.bn2", "block2.shortcut_bn"}
    plain = sorted((c.producers, c.consumers) for c in cuts if not c.joint)
    assert plain == [(("block1.conv1",), ("block1.conv2",)), (("block2.conv1",), ("block2.conv2",))]


def test_functional_flatten_forms_are_recognised():
    class Functional(nn.Module):
        def __init__(self, form):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4 * 4 * 4, 3)
            self.form = form

        def forward(self, x):
            x = torch.relu(self.conv(x))
            if self.form == "view":
                x = x.view(x.size(0), -1)
            elif self.form == "reshape":
                x = x.reshape(x.shape[0], -1)
            elif self.form == "method":
                x = x.flatten(1)
            else:
                x = torch.flatten(x, 1)
            return self.fc(x)

    for form in ("view", "reshape", "method", "function"):
        cuts, _ = find_cuts(Functional(form))
        assert [(c.producers, c.consumers) for c in cuts] == [(("conv",), ("fc",))], form


def test_flatten_width_that_does_not_divide_is_reported():
    class Misfit(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3)
            self.fc = nn.Linear(10, 2)

        def forward(self, x):
            return self.fc(self.conv(x)[:, :, :2, :2].flatten(1)[:, :10])

    cuts, skipped = find_cuts(Misfit())
    assert cuts == []
    assert "mixes its channels" in {s.module: s.reason for s in skipped}["conv"]

    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(10, 2))
    cuts, skipped = find_cuts(model)
    assert cuts == []
    assert "don't divide the input" in skipped[0].reason


def test_grouped_conv_and_channel_mixing_ops_block_a_cut():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2))
    cuts, skipped = find_cuts(model)
    assert cuts == []
    assert "grouped convolution" in skipped[0].reason
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Softmax(dim=1), nn.Conv2d(4, 2, 3))
    _, skipped = find_cuts(model)
    assert "mixes its channels" in skipped[0].reason


def test_select_cuts_explains_why_a_layer_cannot_lose_units():
    cuts, skipped = find_cuts(nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1), nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 2)))
    with pytest.raises(UnsupportedCutError, match="'0' cannot lose units.*mixes its channels"):
        select_cuts(cuts, ["0"], skipped)
    with pytest.raises(UnsupportedCutError, match="no cut is named 'nope'"):
        select_cuts(cuts, ["nope"], skipped)


def test_non_pointwise_op_between_blocks_a_cut():
    model = nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1), nn.Linear(4, 2))
    with pytest.raises(UnsupportedCutError, match="mixes its channels"):
        require_cuts(model)


def test_layers_after_a_channel_mixing_op_are_still_found():
    model = nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    cuts, skipped = find_cuts(model)
    assert [(c.producers, c.consumers, c.width) for c in cuts] == [(("2",), ("4",), 6)]
    assert {s.module for s in skipped} == {"0", "4"}
    # readers of that mixed tensor get no sampler: no layer writes it
    assert [c.name for c in find_cuts(model, coupling="sampler")[0]] == ["2"]


def test_per_channel_prelu_is_not_pointwise():
    model = nn.Sequential(nn.Linear(3, 4), nn.PReLU(4), nn.Linear(4, 2))
    assert find_cuts(model)[0] == []
    model = nn.Sequential(nn.Linear(3, 4), nn.PReLU(), nn.Linear(4, 2))
    assert len(find_cuts(model)[0]) == 1


def test_shared_linear_is_skipped():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(torch.relu(self.a(x)))))

    cuts, skipped = find_cuts(Shared())
    assert cuts == []
    assert any("more than once" in s.reason for s in skipped)


def test_untraceable_model_names_the_model_and_hints():
    with pytest.raises(UntraceableModelError, match="Untraceable.*control flow"):
        find_cuts(Untraceable())


def test_model_without_linear_layers():
    with pytest.raises(UnsupportedCutError, match="no nn.Linear or nn.Conv2d"):
        require_cuts(nn.Sequential(nn.ReLU()))
