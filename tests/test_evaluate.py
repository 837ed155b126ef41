import pytest
import torch
from torch import nn

from netshrink.errors import InvalidInputError
from netshrink.evaluate import accuracy, model_device, predict_logits


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.fc(x.flatten(1)))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return Tiny()


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_accuracy_matches_brute_force(tiny, batch_size):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(53, 2, 3, generator=g)
    labels = torch.randint(0, 4, (53,), generator=g)
    with torch.no_grad():
        tiny.eval()
        expected = sum(int(tiny(images[i : i + 1]).argmax()) == int(labels[i]) for i in range(53)) / 53
        tiny.train()
    assert accuracy(tiny, images, labels, batch_size=batch_size) == expected
    logits = predict_logits(tiny, images, batch_size=batch_size)
    assert logits.shape == (53, 4) and logits.device.type == "cpu"
    assert torch.allclose(logits, tiny.eval()(images).detach(), atol=1e-6)


def test_training_flags_restored_and_weights_untouched(tiny):
    tiny.train()
    tiny.drop.eval()  # mixed flags must come back exactly
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    images, labels = torch.randn(10, 6), torch.zeros(10, dtype=torch.long)
    accuracy(tiny, images, labels)
    assert tiny.training and tiny.fc.training and not tiny.drop.training
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    tiny.eval()
    accuracy(tiny, images, labels)
    assert not tiny.training


def test_flags_restored_after_error(tiny):
    tiny.train()
    with pytest.raises(RuntimeError):  # the model itself fails: wrong input width
        accuracy(tiny, torch.randn(4, 5), torch.zeros(4, dtype=torch.long))
    assert tiny.training


def test_eval_mode_is_used(tiny):
    images = torch.randn(200, 6)
    labels = tiny.eval()(images).argmax(1).detach()
    tiny.train()  # dropout would randomise predictions if it stayed on
    assert accuracy(tiny, images, labels) == 1.0


def test_shape_checks(tiny):
    with pytest.raises(InvalidInputError, match="3 images but 4 labels"):
        accuracy(tiny, torch.randn(3, 6), torch.zeros(4, dtype=torch.long))
    with pytest.raises(InvalidInputError, match="non-empty"):
        accuracy(tiny, torch.randn(0, 6), torch.zeros(0, dtype=torch.long))
    with pytest.raises(InvalidInputError, match="1-D integer"):
        accuracy(tiny, torch.randn(3, 6), torch.zeros(3))
    with pytest.raises(InvalidInputError, match="floating point"):
        accuracy(tiny, torch.zeros(3, 6, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(InvalidInputError, match="batch_size"):
        accuracy(tiny, torch.randn(3, 6), torch.zeros(3, dtype=torch.long), batch_size=0)
    with pytest.raises(InvalidInputError, match="logits"):
        predict_logits(nn.Flatten(0), torch.randn(3, 6))


def test_device_argument_never_moves_model(tiny):
    assert model_device(tiny).type == "cpu"
    assert model_device(nn.ReLU()).type == "cpu"
    images, labels = torch.randn(5, 6), torch.zeros(5, dtype=torch.long)
    assert accuracy(tiny, images, labels, device="cpu") == accuracy(tiny, images, labels)
    assert model_device(tiny).type == "cpu"
