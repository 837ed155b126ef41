"""Head cuts against brute force: prune the complement heads by hand, refit by least squares."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import netshrink

import hf_models


def _slice_rows(layer: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    new = nn.Linear(layer.in_features, len(rows), bias=layer.bias is not None)
    with torch.no_grad():
        new.weight.copy_(layer.weight[rows])
        if layer.bias is not None:
            new.bias.copy_(layer.bias[rows])
    return new


def _inputs_of(model, module, batches):
    """The rows a module reads on real tokens, float64 ``(n, d)``."""
    rows = []

    def hook(_module, inputs):
        captured.append(inputs[0])

    handle = module.register_forward_pre_hook(hook)
    try:
        for batch in batches:
            captured = []
            with torch.no_grad():
                model(**batch)
            rows.append(captured[0][batch["attention_mask"].bool()].double())
    finally:
        handle.remove()
    return torch.cat(rows)


def _least_squares(inputs: torch.Tensor, targets: torch.Tensor, intercept: bool):
    """``argmin ‖targets − inputs Wᵀ − b‖`` by LAPACK (numpy), ``(W, b)``."""
    design = inputs.numpy()
    if intercept:
        design = np.hstack([design, np.ones((len(design), 1))])
    solution, *_ = np.linalg.lstsq(design, targets.numpy(), rcond=None)
    weight = torch.from_numpy(solution[:inputs.shape[1]].T.copy())
    bias = torch.from_numpy(solution[inputs.shape[1]]) if intercept else None
    return weight, bias


@pytest.mark.parametrize("method,options", [("magnitude", {"refit": True}), ("group_lasso", {})])
def test_bert_head_cut_equals_pruning_by_hand_and_refitting_by_least_squares(method, options):
    torch.manual_seed(0)
    model = hf_models.bert().eval()
    batches = hf_models.token_batches(count=4, size=16)
    attention = "encoder.layer.0.attention.self"
    result = netshrink.compress(model, batches, method, keep={"heads": 0.5}, layers=[attention],
                                chaining="parallel", **options)
    (report,) = result.layers
    kept = torch.tensor(report.kept_indices)
    assert report.kind == "heads" and len(kept) == 2 and report.total == 4

    by_hand = hf_models.bert().eval()
    by_hand.load_state_dict(model.state_dict())
    module = by_hand.encoder.layer[0].attention.self
    size = module.attention_head_size
    rows = (kept[:, None] * size + torch.arange(size)).reshape(-1)
    for name in ("query", "key", "value"):
        setattr(module, name, _slice_rows(getattr(module, name), rows))
    module.num_attention_heads, module.all_head_size = len(kept), len(rows)
    dense = "encoder.layer.0.attention.output.dense"
    original = model.get_submodule(dense)
    reads_kept = nn.Linear(len(rows), original.out_features)
    with torch.no_grad():
        reads_kept.weight.copy_(original.weight[:, rows])
        reads_kept.bias.copy_(original.bias)
    by_hand.encoder.layer[0].attention.output.dense = reads_kept

    context = _inputs_of(by_hand, reads_kept, batches)
    full = _inputs_of(model, original, batches)
    assert torch.allclose(context, full[:, rows], atol=1e-6)  # the kept heads' context vectors are unchanged
    targets = full @ original.weight.detach().double().T  # the output projection's linear part, bias refitted
    weight, bias = _least_squares(context, targets, intercept=True)
    new = result.model.get_submodule(dense)
    assert torch.allclose(new.weight.detach().double(), weight, atol=2e-5, rtol=1e-4)
    assert torch.allclose(new.bias.detach().double(), bias + original.bias.detach().double(), atol=2e-5, rtol=1e-4)
    for name in ("query", "key", "value"):
        pruned = getattr(result.model.encoder.layer[0].attention.self, name)
        assert torch.equal(pruned.weight, getattr(module, name).weight)


def test_magnitude_ranks_heads_by_their_query_key_value_rows():
    torch.manual_seed(1)
    model = hf_models.bert().eval()
    attention = model.encoder.layer[1].attention.self
    norms = sum(getattr(attention, p).weight.detach().double().pow(2).sum(dim=1) for p in ("query", "key", "value"))
    by_head = norms.reshape(4, 8).sum(dim=1)
    result = netshrink.compress(model, hf_models.token_batches(), "magnitude", keep={"heads": 0.5},
                                layers=["encoder.layer.1.attention.self"])
    assert result.layers[0].kept_indices == sorted(torch.argsort(by_head, descending=True)[:2].tolist())


def test_grouped_query_head_cut_keeps_whole_groups_and_refits_without_intercept():
    torch.manual_seed(2)
    model = hf_models.llama().eval()
    batches = hf_models.token_batches(count=4, size=16)
    attention = "model.layers.0.self_attn"
    result = netshrink.compress(model, batches, "group_lasso", keep={"heads": 0.5}, layers=[attention],
                                chaining="parallel")
    (report,) = result.layers
    assert report.total == 2 and report.kept == 1  # one of two key/value groups: 2 of 4 query heads
    (group,) = report.kept_indices
    pruned = result.model.get_submodule(attention)
    original = model.get_submodule(attention)
    query_rows = torch.arange(group * 16, (group + 1) * 16)
    kv_rows = torch.arange(group * 8, (group + 1) * 8)
    assert torch.equal(pruned.q_proj.weight, original.q_proj.weight[query_rows])
    assert torch.equal(pruned.k_proj.weight, original.k_proj.weight[kv_rows])
    assert torch.equal(pruned.v_proj.weight, original.v_proj.weight[kv_rows])

    full = _inputs_of(model, original.o_proj, batches)
    targets = full @ original.o_proj.weight.detach().double().T
    weight, _ = _least_squares(full[:, query_rows], targets, intercept=False)
    # The refit reaches the least-squares optimum of the kept heads' context vectors. Its
    # weights are fixed only to ~cond(X)²·u by float32 Gram products (cond(X) ≈ 450
    # here: two query heads read the same values), its fit to ~u: compare the fits.
    fitted = full[:, query_rows] @ pruned.o_proj.weight.detach().double().T
    optimum = full[:, query_rows] @ weight.T
    assert (fitted - targets).norm() <= (1 + 1e-6) * (optimum - targets).norm()
    assert (fitted - optimum).norm() <= 1e-3 * targets.norm()
    assert pruned.o_proj.bias is None
    assert hf_models.outputs(result.model, batches[0]).shape == hf_models.outputs(model, batches[0]).shape
