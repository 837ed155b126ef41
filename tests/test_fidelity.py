"""Fidelity of a compressed model to its original, against direct computations."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from netshrink.errors import InvalidInputError
from netshrink.fidelity import compare, first_output


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def test_metrics_against_numpy_on_fresh_inputs():
    generator = torch.Generator().manual_seed(1)
    held_out = [torch.randn(7, 6, generator=generator), torch.randn(5, 6, generator=generator)]
    original, other = _mlp(0), _mlp(1)
    result = compare(original, other, held_out)
    with torch.no_grad():
        y = torch.cat([original(b) for b in held_out]).double().numpy()
        z = torch.cat([other(b) for b in held_out]).double().numpy()
    cosines = (y * z).sum(1) / np.linalg.norm(y, axis=1) / np.linalg.norm(z, axis=1)
    assert result["samples"] == 12
    assert result["relative_error"] == pytest.approx(np.linalg.norm(z - y) / np.linalg.norm(y), rel=1e-12)
    assert result["cosine"] == pytest.approx(cosines.mean(), rel=1e-12)
    assert result["top1_agreement"] == pytest.approx((y.argmax(1) == z.argmax(1)).mean())


def test_a_model_equals_itself_and_a_scaled_copy_has_cosine_one():
    held_out = [torch.randn(9, 6)]
    model = _mlp()
    same = compare(model, copy.deepcopy(model), held_out)
    assert same["relative_error"] == 0 and same["cosine"] == pytest.approx(1) and same["top1_agreement"] == 1
    doubled = copy.deepcopy(model)
    with torch.no_grad():
        doubled[2].weight.mul_(2), doubled[2].bias.mul_(2)
    scaled = compare(model, doubled, held_out)
    assert scaled["relative_error"] == pytest.approx(1, rel=1e-6) and scaled["cosine"] == pytest.approx(1)


def test_accuracy_with_labels():
    held_out = [torch.randn(10, 6), torch.randn(6, 6)]
    model, other = _mlp(0), _mlp(2)
    labels = torch.randint(0, 4, (16,))
    result = compare(model, other, held_out, labels)
    with torch.no_grad():
        before = torch.cat([model(b) for b in held_out]).argmax(1)
        after = torch.cat([other(b) for b in held_out]).argmax(1)
    assert result["accuracy_before"] == pytest.approx(float((before == labels).double().mean()))
    assert result["accuracy_after"] == pytest.approx(float((after == labels).double().mean()))
    with pytest.raises(InvalidInputError, match="15 labels for 16 held-out samples"):
        compare(model, other, held_out, labels[:15])


def test_padding_is_left_out_of_sequence_outputs():
    transformers = pytest.importorskip("transformers")
    from hf_models import bert

    original = bert().eval()
    compressed = copy.deepcopy(original)
    with torch.no_grad():
        compressed.encoder.layer[0].output.dense.weight.mul_(0.5)
    ids = torch.randint(2, 90, (2, 10))
    mask = torch.tensor([[1] * 10, [1] * 6 + [0] * 4])
    padded = compare(original, compressed, [{"input_ids": ids, "attention_mask": mask}])
    rows = [compare(original, compressed, [{"input_ids": ids[i:i + 1, :n], "attention_mask": mask[i:i + 1, :n]}])
            for i, n in enumerate((10, 6))]
    assert padded["cosine"] == pytest.approx(np.mean([r["cosine"] for r in rows]), rel=1e-5)
    assert padded["top1_agreement"] == pytest.approx((rows[0]["top1_agreement"] * 10 + rows[1]["top1_agreement"] * 6) / 16)
    assert transformers is not None


def test_first_output_of_tuples_and_mappings_and_errors():
    x = torch.ones(2)
    assert first_output((x, 3)) is x and first_output({"logits": x}) is x and first_output([[x]]) is x
    with pytest.raises(InvalidInputError, match="holds no tensor"):
        first_output(None)
    with pytest.raises(InvalidInputError, match="no held-out samples"):
        compare(_mlp(), _mlp(), [])
