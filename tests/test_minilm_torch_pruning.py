"""Torch-Pruning (the peer) on a tiny random BertModel at netshrink's unit counts."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("torch_pruning")
transformers = pytest.importorskip("transformers")

import netshrink  # noqa: E402
from netshrink.experiments.minilm_torch_pruning import torch_pruning_copy  # noqa: E402
from netshrink.experiments.runtime import torch_threads  # noqa: E402

KEEPS = [(0.5, None), (None, 0.5), (0.5, 0.5)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on these tiny matrices more threads only wait on each other (seconds on a busy machine)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def bert():
    """A random BertModel, in eval mode, with every weight and bias but the LayerNorms' drawn from N(0, 0.1²)
    (BERT's init leaves biases at zero, which would hide whether a criterion counts them)."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64)
    model = transformers.BertModel(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "LayerNorm" not in name:
                parameter.normal_(0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def batches():
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(3):
        input_ids = torch.randint(0, 100, (8, 10), generator=generator)
        attention_mask = torch.ones(8, 10, dtype=torch.long)
        attention_mask[:3, 6:] = 0
        out.append({"input_ids": input_ids, "token_type_ids": torch.zeros_like(input_ids),
                    "attention_mask": attention_mask})
    return out


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
@pytest.mark.parametrize("keep_neurons, keep_heads", KEEPS)
def test_same_size_as_netshrink_and_original_untouched(bert, batches, importance, keep_neurons, keep_heads):
    before = {name: tensor.clone() for name, tensor in bert.state_dict().items()}
    pruned = torch_pruning_copy(bert, batches, keep_neurons=keep_neurons, keep_heads=keep_heads,
                                importance=importance)
    keep = {kind: f for kind, f in (("neurons", keep_neurons), ("heads", keep_heads)) if f is not None}
    reference = netshrink.compress(bert, batches, "magnitude", keep=keep)

    assert netshrink.count_parameters(pruned) == reference.params_after < reference.params_before
    assert not pruned.training
    with torch.no_grad():
        for batch in batches:
            hidden = pruned(**batch).last_hidden_state
            assert hidden.shape == (8, 10, 32) and torch.isfinite(hidden).all()
    after = bert.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())
    assert not bert.training


def test_taylor_is_deterministic_and_differs_from_magnitude(bert, batches):
    first, second = (torch_pruning_copy(bert, batches, keep_neurons=0.5, importance="taylor") for _ in range(2))
    magnitude = torch_pruning_copy(bert, batches, keep_neurons=0.5)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert _kept_neurons(bert, first, 0) != _kept_neurons(bert, magnitude, 0)


def test_pruning_equals_masking_the_removed_units(bert, batches):
    """Torch-Pruning removed whole heads (q/k/v rows and attention-output columns alike) and whole
    neurons: the pruned model computes what the original does with those units' outputs zeroed."""
    pruned = torch_pruning_copy(bert, batches, keep_neurons=0.5, keep_heads=0.5)
    masked = _masked(bert, pruned)
    with torch.no_grad():
        for batch in batches:
            torch.testing.assert_close(pruned(**batch).last_hidden_state, masked(**batch).last_hidden_state,
                                       rtol=1e-5, atol=1e-5)


def test_magnitude_keeps_the_top_neurons_by_the_group_l2_norm(bert, batches):
    """Torch-Pruning's MagnitudeImportance(p=2) (group_reduction="mean", normalizer="mean", bias=False) of
    the FFN group scores neuron i by the mean of ‖intermediate.dense.weight[i]‖² and
    ‖output.dense.weight[:, i]‖² (squared norms; biases not counted), divided by the mean score."""
    layer = bert.encoder.layer[1]
    rows = layer.intermediate.dense.weight.detach().pow(2).sum(1)
    columns = layer.output.dense.weight.detach().pow(2).sum(0)
    scores = (rows + columns) / 2
    expected = set(torch.topk(scores, 32).indices.tolist())
    with_bias = set(torch.topk(scores + layer.intermediate.dense.bias.detach().pow(2) / 2, 32).indices.tolist())
    assert with_bias != expected  # the fixture tells the two readings apart

    pruned = torch_pruning_copy(bert, batches, keep_neurons=0.5)
    assert _kept_neurons(bert, pruned, 1) == expected


def test_magnitude_keeps_the_top_heads_by_the_group_l2_norm(bert, batches):
    """The attention group's MagnitudeImportance scores channel c by the mean of the squared norms of
    rows c of query, key and value and of column c of attention.output.dense; a head's score is the sum
    over its 8 channels."""
    attention = bert.encoder.layer[0].attention
    sides = [attention.self.query.weight, attention.self.key.weight, attention.self.value.weight,
             attention.output.dense.weight.T]
    channels = sum(weight.detach().pow(2).sum(1) for weight in sides) / len(sides)
    expected = set(torch.topk(channels.view(4, 8).sum(1), 2).indices.tolist())

    pruned = torch_pruning_copy(bert, batches, keep_heads=0.5)
    kept = _kept_channels(attention.self.value.weight, pruned.encoder.layer[0].attention.self.value.weight)
    assert set((kept // 8).tolist()) == expected
    assert pruned.encoder.layer[0].attention.self.num_attention_heads == 2


def _kept_neurons(original, pruned, index: int) -> set[int]:
    """The original intermediate neurons of layer ``index`` that ``pruned`` kept, found by matching rows."""
    return set(_kept_channels(original.encoder.layer[index].intermediate.dense.weight,
                              pruned.encoder.layer[index].intermediate.dense.weight).tolist())


def _kept_channels(original: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Indices of the rows of ``original`` that equal the rows of ``kept``."""
    original, kept = original.detach(), kept.detach()
    matches = torch.cdist(kept, original).argmin(1)
    assert torch.equal(original[matches], kept)
    return matches


def _masked(original, pruned):
    """A copy of ``original`` whose units that ``pruned`` lost feed zeros to their consumers."""
    masked = copy.deepcopy(original)
    with torch.no_grad():
        for layer, small in zip(masked.encoder.layer, pruned.encoder.layer):
            neurons = _kept_channels(layer.intermediate.dense.weight, small.intermediate.dense.weight)
            channels = _kept_channels(layer.attention.self.value.weight, small.attention.self.value.weight)
            for consumer, kept in ((layer.output.dense, neurons), (layer.attention.output.dense, channels)):
                drop = torch.ones(consumer.in_features, dtype=torch.bool)
                drop[kept] = False
                consumer.weight[:, drop] = 0
    return masked
