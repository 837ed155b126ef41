"""The peer Torch-Pruning (``torch_pruning``) on a Hugging Face ``BertModel``, at netshrink's sizes.

:func:`torch_pruning_copy` removes FFN intermediate neurons and/or whole attention heads
from every layer of a copy of a ``BertModel`` (e.g. the sentence encoder MiniLM-L6) with
Torch-Pruning's own machinery and no finetuning, so that it can be set beside netshrink
at the same parameter count:

- Torch-Pruning decides what is coupled. Its ``DependencyGraph`` is traced from the first
  batch; the group of a layer's ``intermediate.dense`` output neurons (which it couples
  with the input columns of ``output.dense``) and the group of its ``attention.self.query``
  output channels (coupled with ``key``, ``value`` and the input columns of
  ``attention.output.dense``) are taken from it, checked to hold exactly those layers,
  and pruned with ``group.prune``.
- Torch-Pruning's criterion decides which units: ``MagnitudeImportance(p=2)`` or
  ``TaylorImportance``, called on the whole group. A head is the ``head_size``
  consecutive channels of the query/key/value rows; heads are ranked by the importance
  summed over their channels (Torch-Pruning's ``MetaPruner`` averages, the same ranking).
- The counts are netshrink's: every layer keeps
  :func:`netshrink.methods.base.count_from_fraction` of its intermediate neurons and of
  its heads (``max(1, ceil(keep·width))``), the units of highest importance. So the
  result has exactly the parameter count of ``netshrink.compress(model, batches,
  method, keep={"neurons": keep_neurons, "heads": keep_heads})``. (``MetaPruner`` with the
  pruning ratio ``1 - keep`` would keep about ``floor(keep·width)`` instead, hence the
  group API here.)

Taylor importance needs the gradient of a loss, and a sentence encoder has no labels.
The loss is therefore the unsupervised SimCSE objective (Gao et al., 2021): contrastive,
like the objectives sentence encoders are trained with, yet needing only the
calibration sentences themselves. Each batch runs
twice in train mode, so that dropout gives two views of every sentence; the two
mean-pooled (over the attention mask), L2-normalised embeddings are compared by the
InfoNCE cross-entropy of their cosine similarities over temperature 0.05, each
sentence's other view being its positive and the batch's other sentences its
negatives. Gradients are accumulated over all batches; the dropout masks come from a
fixed seed (in a forked RNG, leaving the caller's untouched), so the result is
deterministic.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from transformers import BertModel

from netshrink.errors import InvalidInputError, UnsupportedCutError
from netshrink.methods.base import check_keep, count_from_fraction

#: SimCSE's softmax temperature.
TEMPERATURE = 0.05
#: Seed of the dropout masks of the SimCSE passes.
SEED = 0
#: The Torch-Pruning criteria offered, by name.
IMPORTANCES = {
    "magnitude": lambda: tp.importance.MagnitudeImportance(p=2),
    "taylor": tp.importance.TaylorImportance,
}


def torch_pruning_copy(model, batches, keep_neurons=None, keep_heads=None, importance="magnitude"):
    """A pruned copy of a transformers BertModel made by Torch-Pruning; `model` is not modified.

    batches: list of dicts of tensors as a tokenizer returns them (input_ids, token_type_ids, attention_mask), used for tracing and for Taylor gradients.
    keep_neurons: fraction of every layer's FFN intermediate neurons to keep, or None to leave the FFNs alone.
    keep_heads: fraction of every layer's attention heads to keep, or None to leave attention alone.
    importance: "magnitude" (tp.importance.MagnitudeImportance, p=2) or "taylor" (tp.importance.TaylorImportance).

    Returns the pruned copy in eval mode, its parameters requiring gradients (Torch-Pruning
    traces through autograd) but holding none, its ``BertSelfAttention``
    modules' ``num_attention_heads``/``all_head_size`` and (when the FFNs are pruned)
    ``config.intermediate_size`` updated. The config's head count is left alone: BERT
    derives the head size from it. Raises :class:`~netshrink.errors.UnsupportedCutError`
    when Torch-Pruning's graph couples other parameters into a group than
    ``intermediate.dense`` rows with ``output.dense`` columns (FFN), or query/key/value
    rows with ``attention.output.dense`` columns (heads).
    """
    _check_arguments(model, batches, keep_neurons, keep_heads, importance)
    pruned = copy.deepcopy(model)
    pruned.zero_grad(set_to_none=True)
    pruned.requires_grad_(True)  # tracing follows autograd
    device = next(pruned.parameters()).device
    batches = [{key: value.to(device) for key, value in batch.items()} for batch in batches]
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(pruned, example_inputs=batches[0])
        if importance == "taylor":
            _simcse_gradients(pruned, batches)
    score = IMPORTANCES[importance]()
    plans = []
    for layer in pruned.encoder.layer:
        if keep_neurons is not None:
            plans.append(_ffn_plan(graph, score, layer, keep_neurons))
        if keep_heads is not None:
            plans.append(_head_plan(graph, score, layer.attention, keep_heads))
    for group, removed in plans:
        if removed:
            group.prune(idxs=removed)
    _state_widths(pruned, keep_neurons is not None)
    pruned.zero_grad(set_to_none=True)
    return pruned.eval()


def _check_arguments(model, batches, keep_neurons, keep_heads, importance) -> None:
    if not isinstance(model, BertModel):
        raise InvalidInputError(f"model must be a transformers BertModel, got {type(model).__name__}")
    if importance not in IMPORTANCES:
        raise InvalidInputError(f"importance must be one of {sorted(IMPORTANCES)}, got {importance!r}")
    keeps = {kind: keep for kind, keep in (("neurons", keep_neurons), ("heads", keep_heads)) if keep is not None}
    if not keeps:
        raise InvalidInputError("give keep_neurons, keep_heads or both: with neither there is nothing to prune")
    check_keep(keeps)
    if not isinstance(batches, Sequence) or not batches:
        raise InvalidInputError("batches must be a non-empty list of tokenizer outputs (dicts of tensors)")
    for batch in batches:
        if not isinstance(batch, Mapping) or "input_ids" not in batch or "attention_mask" not in batch:
            raise InvalidInputError("every batch must be a dict of tensors with input_ids and attention_mask")
        if importance == "taylor" and len(batch["input_ids"]) < 2:
            raise InvalidInputError("the SimCSE loss of Taylor importance contrasts sentences: every batch needs ≥ 2")


def _simcse_gradients(model: BertModel, batches: list[dict]) -> None:
    """Accumulate in ``model``'s ``.grad`` the unsupervised SimCSE loss's gradients over ``batches``."""
    model.train()
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        for batch in batches:
            simcse_loss(model, batch).backward()
    model.eval()


def simcse_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """The unsupervised SimCSE loss of one batch: two passes of ``model`` (in train mode, so
    dropout differs), InfoNCE of the views' cosine similarities over :data:`TEMPERATURE`."""
    first, second = _sentence_embeddings(model, batch), _sentence_embeddings(model, batch)
    similarity = first @ second.T / TEMPERATURE
    return F.cross_entropy(similarity, torch.arange(len(similarity), device=similarity.device))


def _sentence_embeddings(model: BertModel, batch: dict) -> torch.Tensor:
    """The L2-normalised mean of the last hidden states over the attention mask, one row per sentence."""
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)


def _ffn_plan(graph, score, layer: nn.Module, keep: float):
    """The FFN group of ``layer`` and the intermediate neurons to remove from it."""
    root = layer.intermediate.dense
    group = _group(graph, root, {(root, "out"), (layer.output.dense, "in")})
    return group, _removed(score(group), count_from_fraction(keep, root.out_features))


def _head_plan(graph, score, attention: nn.Module, keep: float):
    """The attention group of ``attention`` (a ``BertAttention``) and the channels of the heads to remove."""
    heads = attention.self
    group = _group(graph, heads.query, {(heads.query, "out"), (heads.key, "out"), (heads.value, "out"),
                                        (attention.output.dense, "in")})
    per_head = score(group).view(heads.num_attention_heads, heads.attention_head_size).sum(1)
    removed = _removed(per_head, count_from_fraction(keep, heads.num_attention_heads))
    return group, [head * heads.attention_head_size + i for head in removed for i in range(heads.attention_head_size)]


def _group(graph, root: nn.Linear, expected: set):
    """Torch-Pruning's group of all of ``root``'s output channels, checked to prune exactly
    the ``(module, "out" | "in")`` sides in ``expected`` among the model's parameters."""
    group = graph.get_pruning_group(root, tp.prune_linear_out_channels, idxs=list(range(root.out_features)))
    found = {(dep.target.module, "out" if graph.is_out_channel_pruning_fn(dep.handler) else "in")
             for dep, _ in group
             if isinstance(dep.target.module, nn.Parameter)
             or next(dep.target.module.parameters(recurse=False), None) is not None}
    if found != expected:
        names = {module: name for name, module in graph.model.named_modules()}

        def show(sides):
            return sorted(f"{names.get(module, 'an unwrapped parameter')} ({side})" for module, side in sides)

        raise UnsupportedCutError(
            f"Torch-Pruning's dependency graph couples {show(found)} with the output channels of "
            f"{names[root]}; expected exactly {show(expected)}. Its pruning would not be the unit removal "
            "netshrink makes, so the two could not be compared at the same parameter count"
        )
    return group


def _removed(scores: torch.Tensor, kept: int) -> list[int]:
    """Ascending indices of all but the ``kept`` highest ``scores`` (ties: the lower index is kept)."""
    order = torch.argsort(scores, descending=True, stable=True)
    return sorted(order[kept:].tolist())


def _state_widths(pruned: BertModel, ffn_pruned: bool) -> None:
    """Set every ``BertSelfAttention``'s head counts from its pruned query, and
    ``config.intermediate_size`` when the FFNs were pruned to one width."""
    for layer in pruned.encoder.layer:
        heads = layer.attention.self
        heads.all_head_size = heads.query.out_features
        heads.num_attention_heads = heads.all_head_size // heads.attention_head_size
    widths = {layer.intermediate.dense.out_features for layer in pruned.encoder.layer}
    if ffn_pruned and len(widths) == 1:
        pruned.config.intermediate_size = widths.pop()
