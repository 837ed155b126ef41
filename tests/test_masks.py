"""Keyword batches with an attention mask: padding never enters a statistic."""

from __future__ import annotations

import pytest
import torch

from netshrink.graph import find_cuts
from netshrink.methods.interpolative import UnitRows
from netshrink.observe import Calibration, GramStatistic, counted_rows, observe

import hf_models


def _padded_and_alone(seed=0):
    """One padded batch and the same sequences, each alone and unpadded."""
    (padded,) = hf_models.token_batches(count=1, size=6, length=11, seed=seed)
    lengths = padded["attention_mask"].sum(dim=1)
    assert len(set(lengths.tolist())) > 1, "the batch must mix lengths"
    alone = [{"input_ids": padded["input_ids"][i:i + 1, :n], "attention_mask": padded["attention_mask"][i:i + 1, :n]}
             for i, n in enumerate(lengths.tolist())]
    return padded, alone


def test_gram_statistics_equal_those_of_the_unpadded_tokens_alone():
    torch.manual_seed(0)
    model = hf_models.bert().eval()
    padded, alone = _padded_and_alone()
    cuts, _ = find_cuts(model, example=padded)
    reference = hf_models.bert().eval()  # another network: the cross terms of top-down chaining
    on_padded = observe(model, cuts, Calibration([padded]), lambda cut, layers: GramStatistic(layers),
                        reference=reference)
    on_tokens = observe(model, cuts, Calibration(alone), lambda cut, layers: GramStatistic(layers),
                        reference=reference)
    tokens = int(padded["attention_mask"].sum())
    for cut in cuts:
        a, b = on_padded[cut.name], on_tokens[cut.name]
        assert a.count == b.count == [tokens], cut.name
        (*moments_a, energy_a), (*moments_b, energy_b) = a.result(0), b.result(0)
        for x, y in zip(moments_a, moments_b):
            assert torch.allclose(x, y, rtol=1e-5, atol=1e-7), cut.name
        assert energy_a == pytest.approx(energy_b, rel=1e-5), cut.name
        for x, y in zip(a.means(0), b.means(0)):
            assert torch.allclose(x, y, rtol=1e-5, atol=1e-7), cut.name


def test_r_factor_equals_that_of_the_unpadded_tokens_alone():
    torch.manual_seed(1)
    model = hf_models.gpt2().eval()
    padded, alone = _padded_and_alone(seed=3)
    cuts = [cut for cut in find_cuts(model, example=padded)[0] if cut.kind == "neurons"]
    on_padded = observe(model, cuts, Calibration([padded]), UnitRows)
    on_tokens = observe(model, cuts, Calibration(alone), UnitRows)
    for cut in cuts:
        r, s = on_padded[cut.name].r_factor.result(), on_tokens[cut.name].r_factor.result()
        assert torch.allclose(r.T @ r, s.T @ s, rtol=1e-5, atol=1e-6), cut.name


def test_a_full_mask_keeps_every_row_and_other_layouts_are_untouched():
    x = torch.randn(2, 5, 3)
    assert torch.equal(counted_rows(x, torch.ones(2, 5, dtype=torch.bool)), x.reshape(10, 3))
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(counted_rows(x, mask), torch.cat([x[0, :2], x[1, :4]]))
    pooled = torch.randn(2, 5)  # (B, d) happens to match the mask's shape: not a sequence
    assert counted_rows(pooled, mask) is pooled
    maps = torch.randn(2, 5, 4, 4)
    assert counted_rows(maps, mask) is maps
    assert counted_rows(x, None) is x


def test_a_mapping_of_inputs_is_split_into_batches():
    (batch,) = hf_models.token_batches(count=1, size=10)
    pieces = list(Calibration(batch, batch_size=4))
    assert [p["input_ids"].shape[0] for p in pieces] == [4, 4, 2]
    assert torch.equal(torch.cat([p["attention_mask"] for p in pieces]), batch["attention_mask"])
