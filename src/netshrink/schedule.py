"""Schedule: the order in which cuts are observed, decided and rewritten.

Chaining strategies (Robin §2.7). For the layer ``W_k`` reading ``Z_k`` in the original
network and ``A_k`` in the network being compressed:

- ``"parallel"``: ``X = Z_k``, ``Y = W_k Z_k``. Every cut is observed on the original
  model in one pass and decided independently; then all decisions are applied.
- ``"top_down"``: ``X = A_k``, ``Y = W_k Z_k``. Cuts in execution order; each is observed
  on the model in which every earlier cut is already compressed (and, for methods that
  regress on targets, on the original model for ``Y``), so a layer is fitted to the
  inputs it will really receive. This is also Damle's scheme (compress f₁, fold T into
  W⁽²⁾, compress the next layer using f̂₁(X_c), ...).
- ``"bottom_up"``: ``X = Z_k``, ``Y = C_{k+1}ᵀ W_k Z_k``. Statistics come from the original
  model in one pass; cuts are decided from the last to the first, each applied at once,
  so a layer only reconstructs the outputs the next layer kept.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from . import distributed
from .activation_cache import CacheOptions
from .errors import InvalidInputError
from .graph import Cut
from .methods import Decision, Method
from .observe import Calibration, observe
from .propagate import cut_progress, top_down
from .rewrite import apply_decision, layer_at, remove_units, rewrite_inputs

CHAININGS = ("top_down", "parallel", "bottom_up")


def run_schedule(
    model: nn.Module,
    cuts: Sequence[Cut],
    calibration: Calibration,
    method: Method,
    chaining: str = "top_down",
    progress: bool = False,
    cache: CacheOptions | None = None,
    onload=None,
) -> list[tuple[Cut, Decision]]:
    """Compress ``model`` in place at every cut; returns the decisions in cut order.

    Top-down chaining propagates the calibration activations block by block
    (:mod:`netshrink.propagate`; ``cache`` says how they are stored, ``onload`` makes the
    residency that loads a meta-device model's blocks one at a time).

    In a process group (:mod:`netshrink.distributed`) every statistic is that of all the
    ranks' shards, and a parallel schedule spreads its solves over the ranks.

    ``model`` must be the caller's private copy: it is rewritten as the schedule goes.
    Top-down returns its decisions once applied, without their weight tensors (the model
    holds those; a deep model's would otherwise pile up cut by cut): their kept units,
    errors and details.
    """
    if chaining not in CHAININGS:
        raise InvalidInputError(f"unknown chaining {chaining!r}; use one of {', '.join(CHAININGS)}")
    if chaining == "top_down":
        return top_down(model, cuts, calibration, method, progress, cache, onload=onload)
    statistics = observe(model, cuts, calibration, method.statistic, progress=progress)
    if chaining == "parallel" and distributed.current() is not None:
        # in a process group the ranks share the independent solves and gather the decisions
        decisions = distributed.decide_spread(method, cuts, statistics, lambda cut: _layers(model, cut), progress)
    else:
        order = list(cuts) if chaining == "parallel" else list(reversed(cuts))
        decisions: dict[str, Decision] = {}
        for cut in cut_progress(order, progress):
            decisions[cut.name] = method.decide(cut, statistics.pop(cut.name), *_layers(model, cut))
            if chaining == "bottom_up":
                apply_decision(model, cut, decisions[cut.name])
    if chaining == "parallel":
        for cut in cuts:
            rewrite_inputs(model, cut, decisions[cut.name])
        for cut in cuts:
            remove_units(model, cut, decisions[cut.name])
    return [(cut, decisions[cut.name]) for cut in cuts]


def _layers(model: nn.Module, cut: Cut) -> tuple[list[nn.Module], list[nn.Module]]:
    """The cut's current consumer and producer layers."""
    return [layer_at(model, p) for p in cut.consumers], [layer_at(model, p) for p in cut.producers]
