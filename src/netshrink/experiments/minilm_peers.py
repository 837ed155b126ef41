"""Peers that compensate inside one model family, re-implemented on netshrink's statistics.

Both are :class:`~netshrink.methods.Method` objects, so they run through the same
``netshrink.compress`` (same graph, cuts, calibration and per-layer budget) as
netshrink's own methods; only the selection and the compensation differ.

- :class:`Flap`: FLAP (An et al., AAAI 2024), the LLaMA method. An input unit of the
  consumer ``W: (out, d)`` is scored by its weighted input feature variance
  ``Σ_{j∈unit} Var(x_j)·‖W[:, j]‖²`` (for a head, summed over its ``d_head`` context
  columns); the units with the largest score stay, the kept columns of ``W`` are left as
  they are and the removed ones are compensated by their mean through the bias,
  ``b ← b + W[:, removed] E[x_removed]``. FLAP's statistics come from the unpruned model
  in one pass (``chaining="parallel"``); its global structure search is replaced by
  netshrink's per-layer budget, so all methods keep the same units per layer.
- :class:`Kwon`: Kwon et al. (NeurIPS 2022), the BERT method. Units (heads, FFN neurons)
  are ranked by the Fisher information of a mask that scales them,
  ``Σ_batches (∂L/∂m_u)²`` (:func:`fisher_scores`; the loss is the unsupervised SimCSE
  objective of :mod:`.minilm_torch_pruning`, a sentence encoder having no labels), and
  the kept units get one least-squares scale each (mask tuning): ``s = argmin
  E‖y − Σ_{u∈S} s_u W[:, C_u] x_{C_u}‖²`` with the bias frozen, layer by layer on the
  pruned model's inputs (``chaining="top_down"``). The normal equations come from the
  Gram statistics: ``A_uv = Σ (WᵀW)[C_u, C_v] ⊙ E[x xᵀ][C_u, C_v]``,
  ``b_u = Σ W[:, C_u] ⊙ E[y x_{C_u}ᵀ]``. Kwon's mask rearrangement (a swap search
  within the block-diagonal Fisher) is not reproduced.
"""

from __future__ import annotations

import torch
from torch import nn

from netshrink.graph import Cut
from netshrink.layers import columns_of
from netshrink.methods import Decision, Method
from netshrink.methods.base import check_keep, units_to_keep
from netshrink.methods.regression import regressions, relative_error
from netshrink.observe import GramStatistic

from .minilm_torch_pruning import simcse_loss


class Flap(Method):
    """FLAP-style selection (weighted input variance) with mean-bias compensation."""

    name = "flap"
    needs_reference = False

    def __init__(self, keep):
        self.keep = check_keep(keep)

    def statistic(self, cut: Cut, consumers: list[nn.Module]) -> GramStatistic:
        return GramStatistic(consumers)

    def decide(self, cut, statistic, consumers, producers) -> Decision:
        (problem,) = regressions(cut, statistic, consumers, intercept=False)
        mean, _ = statistic.means(0)
        variance = (torch.diagonal(problem.gram) - mean.square()).clamp(min=0)
        columns = variance * problem.weight.square().sum(dim=0)  # (d,)
        scores = columns.reshape(cut.width, problem.group).sum(dim=1)
        count = units_to_keep(self.keep, cut)
        kept = torch.sort(torch.argsort(scores, descending=True, stable=True)[:count]).values
        kept_columns = columns_of(kept, problem.group)
        removed = torch.ones(problem.weight.shape[1], dtype=torch.bool, device=kept.device)
        removed[kept_columns] = False
        weight = problem.weight[:, kept_columns]
        shift = problem.weight[:, removed] @ mean[removed]
        layer = consumers[0]
        return Decision(kept=kept.cpu(), consumer_weights=(weight.to(layer.weight.dtype),),
                        error=relative_error([problem], kept, [weight], shifted=False),
                        bias_shifts=(shift,))


class Kwon(Method):
    """Kwon-style selection (mask Fisher information) with one least-squares scale per kept unit."""

    name = "kwon"
    needs_reference = True

    def __init__(self, keep, scores: dict[str, torch.Tensor]):
        self.keep = check_keep(keep)
        self.scores = scores

    def statistic(self, cut: Cut, consumers: list[nn.Module]) -> GramStatistic:
        return GramStatistic(consumers)

    def decide(self, cut, statistic, consumers, producers) -> Decision:
        (problem,) = regressions(cut, statistic, consumers, intercept=False)
        count = units_to_keep(self.keep, cut)
        order = torch.argsort(self.scores[cut.name].double(), descending=True, stable=True)
        kept = torch.sort(order[:count]).values.to(problem.gram.device)
        scales = mask_tuning(problem, kept)
        weight = problem.weight[:, columns_of(kept, problem.group)] * scales.repeat_interleave(problem.group)
        layer = consumers[0]
        return Decision(kept=kept.cpu(), consumer_weights=(weight.to(layer.weight.dtype),),
                        error=relative_error([problem], kept, [weight], shifted=False))


def mask_tuning(problem, kept: torch.Tensor) -> torch.Tensor:
    """``(k,)`` least-squares scales of the kept units' contributions ``W[:, C_u] x_{C_u}``
    to the target (bias frozen), from the Gram statistics of ``problem``."""
    group, weight = problem.group, problem.weight
    columns = columns_of(kept, group)
    w = weight[:, columns]  # (out, k·s)
    k = len(kept)
    products = (w.T @ w) * problem.gram[columns][:, columns]  # (k·s, k·s)
    normal = products.reshape(k, group, k, group).sum(dim=(1, 3))
    right = (w * problem.cross[columns].T).sum(dim=0).reshape(k, group).sum(dim=1)
    return torch.linalg.lstsq(normal, right.unsqueeze(1), driver="gelsd" if normal.device.type == "cpu" else None
                              ).solution.squeeze(1)


def fisher_scores(model: nn.Module, batches: list[dict], cuts: list[Cut]) -> dict[str, torch.Tensor]:
    """``{cut.name: (width,)}``: the Fisher information ``Σ_batches (∂L/∂m_u)²`` of a mask
    ``m = 1`` scaling each unit's input columns of the cut's consumer (a head's context,
    an FFN neuron's activation), with the SimCSE loss of :mod:`.minilm_torch_pruning`.
    ``model`` is left as it was (eval mode, no gradients)."""
    masks = {cut.name: torch.ones(cut.width, requires_grad=True) for cut in cuts}
    fisher = {cut.name: torch.zeros(cut.width, dtype=torch.float64) for cut in cuts}
    handles = []
    for cut in cuts:
        layer = model.get_submodule(cut.consumers[0])
        group = layer.in_features // cut.width

        def scale(_module, inputs, mask=masks[cut.name], group=group):
            return (inputs[0] * mask.repeat_interleave(group),)

        handles.append(layer.register_forward_pre_hook(scale))
    training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.requires_grad_(False)  # only the masks' gradients are needed
        model.train()
        with torch.random.fork_rng(), torch.enable_grad():
            torch.manual_seed(0)
            for batch in batches:
                for mask in masks.values():
                    mask.grad = None
                simcse_loss(model, batch).backward()
                for name, mask in masks.items():
                    fisher[name] += mask.grad.double().square()
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
    return fisher
