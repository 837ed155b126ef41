import pytest
import torch
from torch import nn

from netshrink.errors import UnsupportedCutError, UntraceableModelError
from netshrink.graph import find_cuts, require_cuts

from models import Chain, Nested, Residual, Untraceable


def test_chain_cuts_in_order():
    cuts, skipped = find_cuts(Chain([10, 7, 5, 3]))
    assert [(c.producer, c.consumer, c.width) for c in cuts] == [
        ("layers.0", "layers.1", 7),
        ("layers.1", "layers.2", 5),
    ]
    assert [s.module for s in skipped] == ["layers.2"]
    assert "output" in skipped[0].reason


def test_nested_modules_scalar_arithmetic_and_dropout():
    cuts, _ = find_cuts(Nested())
    assert [(c.producer, c.consumer) for c in cuts] == [
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
    assert [(c.producer, c.consumer) for c in cuts] == [("0", "2"), ("2", "4")]


def test_residual_tensor_is_not_a_plain_cut():
    cuts, skipped = find_cuts(Residual())
    assert cuts == []
    reasons = {s.module: s.reason for s in skipped}
    assert "read by 2 operations" in reasons["a"]
    assert "add" in reasons["b"] and "not pointwise" in reasons["b"]


def test_non_pointwise_op_between_blocks_a_cut():
    model = nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1), nn.Linear(4, 2))
    with pytest.raises(UnsupportedCutError, match="not pointwise"):
        require_cuts(model)


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
    with pytest.raises(UnsupportedCutError, match="no nn.Linear"):
        require_cuts(nn.Sequential(nn.ReLU()))
