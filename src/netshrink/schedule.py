"""Schedule: the order in which cuts are observed, decided and rewritten.

Chaining strategies (Robin §2.7; Damle "Compressing a neural network"):

- ``"top_down"``: cuts in execution order; each cut is observed on the model in which
  every earlier cut has already been compressed, so a layer is fitted to the inputs it
  will really receive. This is the seed's scheme (compress f₁, fold T into W⁽²⁾,
  compress the next layer using f̂₁(X_c), ...).
- ``"parallel"``: every cut is observed on the original model in one pass, decided
  independently, then all decisions are applied.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .errors import InvalidInputError
from .graph import Cut
from .methods import Decision, Method
from .observe import Calibration, observe
from .rewrite import apply_decision

CHAININGS = ("top_down", "parallel")


def run_schedule(
    model: nn.Module,
    cuts: Sequence[Cut],
    calibration: Calibration,
    method: Method,
    chaining: str = "top_down",
    progress: bool = False,
) -> list[tuple[Cut, Decision]]:
    """Compress ``model`` in place at every cut; returns the decisions in cut order.

    ``model`` must be the caller's private copy: it is rewritten as the schedule goes.
    """
    if chaining not in CHAININGS:
        raise InvalidInputError(f"unknown chaining {chaining!r}; use one of {', '.join(CHAININGS)}")
    steps = _progress(cuts, progress)
    decisions: list[tuple[Cut, Decision]] = []
    if chaining == "parallel":
        statistics = observe(model, cuts, calibration, method.statistic, progress=progress)
        for cut in steps:
            consumer = model.get_submodule(cut.consumer)
            decisions.append((cut, method.decide(cut, statistics[cut.name], consumer)))
        for cut, decision in decisions:
            apply_decision(model, cut, decision)
        return decisions
    for cut in steps:
        statistic = observe(model, [cut], calibration, method.statistic)[cut.name]
        decision = method.decide(cut, statistic, model.get_submodule(cut.consumer))
        apply_decision(model, cut, decision)
        decisions.append((cut, decision))
    return decisions


def _progress(cuts: Sequence[Cut], enabled: bool):
    if not enabled:
        return cuts
    from tqdm.auto import tqdm

    return tqdm(cuts, desc="compress", unit="layer", leave=False)
