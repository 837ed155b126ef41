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
  ``Σ_batches (∂L/∂m_u)²`` (:func:`fisher_scores`; for a sentence encoder, which has no
  labels, the loss is the unsupervised SimCSE objective of :mod:`.minilm_torch_pruning`;
  for a classifier, the cross-entropy of the true labels), and
  the kept units get one least-squares scale each (mask tuning): ``s = argmin
  E‖y − Σ_{u∈S} s_u W[:, C_u] x_{C_u}‖²`` with the bias frozen, layer by layer on the
  pruned model's inputs (``chaining="top_down"``). The normal equations come from the
  Gram statistics: ``A_uv = Σ (WᵀW)[C_u, C_v] ⊙ E[x xᵀ][C_u, C_v]``,
  ``b_u = Σ W[:, C_u] ⊙ E[y x_{C_u}ᵀ]``. Kwon's mask rearrangement (a swap search
  within the block-diagonal Fisher) is not reproduced.

Under a global budget each peer also makes its own allocation, as its paper does:

- :func:`kwon_widths`: Kwon's mask search — remove the units whose masks carry the least
  Fisher information per unit of cost until the budget is met (a knapsack over every
  cut at once, solved with netshrink's allocation on the cumulative Fisher of each
  cut's least important units);
- :func:`flap_widths`: FLAP's adaptive structure search — standardise each layer's scores
  (``(s − mean)/std`` within the cut) and remove the globally lowest until the budget is
  met.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from netshrink.budget import Knob, allocate
from netshrink.graph import Cut
from netshrink.linalg.blocks import columns_of
from netshrink.methods import Decision, Method
from netshrink.methods.base import Widths, check_keep, units_to_keep
from netshrink.methods.regression import regressions, relative_error
from netshrink.observe import GramStatistic, observe

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
        scores = flap_scores(cut, statistic, consumers)
        (problem,) = regressions(cut, statistic, consumers, intercept=False)
        mean, _ = statistic.means(0)
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


def fisher_scores(model: nn.Module, batches: list, cuts: list[Cut], loss=None) -> dict[str, torch.Tensor]:
    """``{cut.name: (width,)}``: the Fisher information ``Σ_batches (∂L/∂m_u)²`` of a mask
    ``m = 1`` scaling each unit's input columns of the cut's consumer (a head's context,
    an FFN neuron's activation, a channel of a feature map). ``loss(model, batch)`` is the
    loss (default: the SimCSE loss of :mod:`.minilm_torch_pruning`, for keyword batches).
    ``model`` is left as it was (eval mode, no gradients)."""
    loss = simcse_loss if loss is None else loss
    masks = {cut.name: torch.ones(cut.width, requires_grad=True) for cut in cuts}
    fisher = {cut.name: torch.zeros(cut.width, dtype=torch.float64) for cut in cuts}
    handles = []
    for cut in cuts:
        layer = model.get_submodule(cut.consumers[0])

        def scale(_module, inputs, mask=masks[cut.name], layer=layer):
            x = inputs[0]
            if type(layer) is nn.Conv2d:  # channels of a feature map
                return (x * mask.to(x.dtype).view(1, -1, *([1] * (x.ndim - 2))),)
            return (x * mask.to(x.dtype).repeat_interleave(x.shape[-1] // mask.numel()),)

        handles.append(layer.register_forward_pre_hook(scale))
    training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.requires_grad_(False)  # only the masks' gradients are needed
        model.train(loss is simcse_loss)  # SimCSE needs dropout; a supervised loss is taken in eval mode
        with torch.random.fork_rng(), torch.enable_grad():
            torch.manual_seed(0)
            for batch in batches:
                for mask in masks.values():
                    mask.grad = None
                loss(model, batch).backward()
                for name, mask in masks.items():
                    fisher[name] += mask.grad.double().square()
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
    return fisher


def cross_entropy(model: nn.Module, batch) -> torch.Tensor:
    """The summed cross-entropy of a classifier on an ``(inputs, labels)`` batch."""
    inputs, labels = batch
    return torch.nn.functional.cross_entropy(model(inputs), labels, reduction="sum")


def kwon_widths(scores: dict[str, torch.Tensor], cuts: list[Cut], costs, fraction: float) -> Widths:
    """Kwon's mask search under a budget of ``fraction`` of ``costs``: at every cut the
    units leave in the order of their mask Fisher information, and the loss of keeping
    ``k`` is the Fisher information of the others; the widths minimise its sum within
    the budget (:func:`netshrink.budget.allocate`)."""
    knobs = []
    for cut in cuts:
        ranked = torch.sort(scores[cut.name].double(), descending=True).values.numpy()
        lost = np.concatenate([np.cumsum(ranked[::-1])[::-1], [0.0]])  # Fisher of the units after the first k
        knobs.append(Knob(cut.name, lost))
    return Widths(allocate(knobs, costs, fraction * costs.total).widths)


def flap_scores(cut: Cut, statistic: GramStatistic, consumers: list[nn.Module]) -> torch.Tensor:
    """``(width,)`` FLAP's fluctuation score of every unit (module doc)."""
    (problem,) = regressions(cut, statistic, consumers, intercept=False)
    mean, _ = statistic.means(0)
    variance = (torch.diagonal(problem.gram) - mean.square()).clamp(min=0)
    columns = variance * problem.weight.square().sum(dim=0)  # (d,)
    return columns.reshape(cut.width, problem.group).sum(dim=1)


def flap_widths(model: nn.Module, cuts: list[Cut], data, costs, fraction: float) -> Widths:
    """FLAP's adaptive structure search under a budget of ``fraction`` of ``costs``: the
    units' scores are standardised within each cut and the globally lowest leave, one at a
    time (each cut keeps at least one), until the cost fits."""
    statistics = observe(model, cuts, data, lambda cut, consumers: GramStatistic(consumers))
    modules = dict(model.named_modules())
    standardised = []
    for cut in cuts:
        scores = flap_scores(cut, statistics.pop(cut.name), [modules[path] for path in cut.consumers]).double()
        spread = float(scores.std()) if cut.width > 1 else 1.0
        z = (scores - scores.mean()) / (spread if spread > 0 else 1.0)
        standardised += [(float(value), cut.name) for value in z]
    widths = {cut.name: cut.width for cut in cuts}
    budget = fraction * costs.total
    for _, name in sorted(standardised):
        if costs.value(widths) <= budget:
            break
        if widths[name] > 1:
            widths[name] -= 1
    return Widths(widths)
