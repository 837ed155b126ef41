"""Bad input for keyword-batch models and head budgets: specific errors that say how to fix it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netshrink
from netshrink.errors import InvalidInputError, UnsupportedCutError, UntraceableModelError

import hf_models


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    return hf_models.bert().eval()


def test_keys_the_model_does_not_take(bert):
    batches = hf_models.token_batches()
    batches[0] = {**batches[0], "input_idz": batches[0]["input_ids"]}
    with pytest.raises(InvalidInputError, match=r"key\(s\) \['input_idz'\] that BertModel.forward\(\) does not take"):
        netshrink.compress(bert, batches, "magnitude", keep=0.5)


def test_attention_mask_of_the_wrong_shape(bert):
    batches = hf_models.token_batches()
    batches[1] = {**batches[1], "attention_mask": batches[1]["attention_mask"][:, :-2]}
    with pytest.raises(InvalidInputError, match=r"batch 1: attention_mask has shape \(8, 10\) but the tokens have "
                                                r"shape \(8, 12\)"):
        netshrink.compress(bert, batches, "magnitude", keep=0.5)
    batches = hf_models.token_batches()
    batches[0] = {**batches[0], "attention_mask": batches[0]["attention_mask"][:, None, :]}
    with pytest.raises(InvalidInputError, match=r"attention_mask has shape \(8, 1, 12\); it must be \(batch, tokens\)"):
        netshrink.compress(bert, batches, "magnitude", keep=0.5)
    batches = hf_models.token_batches()
    batches[0] = {**batches[0], "attention_mask": batches[0]["attention_mask"] * 3}
    with pytest.raises(InvalidInputError, match="values other than 0 and 1"):
        netshrink.compress(bert, batches, "magnitude", keep=0.5)


class NeitherReader(nn.Module):
    """Python control flow on tensor values: neither torch.export nor torch.fx can follow it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 2)

    def forward(self, x):
        for _ in range(int(x.abs().sum().item()) % 3 + 1):
            x = x.flip(0)
        return self.b(torch.relu(self.a(x)))


def test_a_model_neither_reader_can_read_names_both_attempts():
    with pytest.raises(UntraceableModelError) as caught:
        netshrink.compress(NeitherReader(), torch.randn(20, 4), "magnitude", keep=0.5)
    message = str(caught.value)
    assert "torch.export on the example batch failed" in message and "torch.fx could not trace" in message
    assert "control flow" in message


def test_keep_that_would_leave_zero_heads(bert):
    with pytest.raises(InvalidInputError, match=r"keep\['heads'\]=0 would leave zero heads in every attention"):
        netshrink.compress(bert, hf_models.token_batches(), "group_lasso", keep={"heads": 0})
    with pytest.raises(InvalidInputError, match="unknown cut kind"):
        netshrink.compress(bert, hf_models.token_batches(), "magnitude", keep={"head": 0.5})


def test_a_head_budget_that_splits_key_value_groups():
    torch.manual_seed(0)
    llama = hf_models.llama().eval()
    with pytest.raises(InvalidInputError, match=r"keep=0.25 asks for 1 of the 4 query heads of "
                                                r"'model.layers.0.self_attn'.*keeps whole groups.*keep = 0.5, 1"):
        netshrink.compress(llama, hf_models.token_batches(), "magnitude", keep={"heads": 0.25})
    result = netshrink.compress(llama, hf_models.token_batches(), "magnitude", keep={"heads": 0.5})
    assert [(layer.kept, layer.total) for layer in result.layers] == [(1, 2), (1, 2)]


def test_interpolative_has_no_meaning_on_heads(bert):
    with pytest.raises(UnsupportedCutError, match="interpolative selects single columns.*attention heads"):
        netshrink.compress(bert, hf_models.token_batches(), "interpolative", keep=0.5)
    result = netshrink.compress(bert, hf_models.token_batches(), "interpolative", keep={"neurons": 0.5})
    assert {layer.kind for layer in result.layers} == {"neurons"}


def test_multitask_lasso_explains_heads(bert):
    with pytest.raises(UnsupportedCutError, match="multitask_lasso removes single inputs"):
        netshrink.compress(bert, hf_models.token_batches(), "multitask_lasso", lam=0.01,
                           layers=["encoder.layer.0.attention.self"])


def test_a_per_kind_budget_compresses_only_those_kinds(bert):
    result = netshrink.compress(bert, hf_models.token_batches(), "random", keep={"heads": 0.5})
    assert {layer.kind for layer in result.layers} == {"heads"}
    mixed = netshrink.compress(bert, hf_models.token_batches(), "random", keep={"heads": 0.75, "neurons": 0.25})
    assert {(layer.kind, layer.kept) for layer in mixed.layers} == {("heads", 3), ("neurons", 12)}
