"""Latency budgets: the per-layer table, the measurement, and the loop that meets the target as measured."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

import netshrink
from netshrink.budget import BudgetError
from netshrink.budget.latency import latency_costs
from netshrink.budget.ranks import full_rank, knob, layer_module, rank_layers
from netshrink.budget.measured import (CONFIRMATIONS, ROUNDS, TOLERANCE, Measured, measure_against_original,
                                      meet_measured)
from netshrink.graph import find_cuts

from models import Chain


def _chain(seed=0, widths=(64, 256, 128, 10), samples=600):
    torch.manual_seed(seed)
    model = Chain(list(widths)).eval()
    return model, torch.randn(samples, widths[0], generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- the table


def test_latency_table_is_consistent_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("NETSHRINK_CACHE", str(tmp_path))
    model, x = _chain(6)
    cuts, _ = find_cuts(model, example=x[:8])
    table = latency_costs(model, cuts, x[:8])
    assert table.value(table.full) == pytest.approx(table.measured, rel=1e-12)  # the rest closes the sum
    levels = {cut.name: max(1, cut.width // 3) for cut in cuts}
    for cut in cuts:
        along = table.along(cut.name, levels)
        assert np.allclose(along, [table.value({**levels, cut.name: k}) for k in range(cut.width + 1)])
    layers = {path: full_rank(layer_module(model, path)) for path in rank_layers(model, cuts)}
    factorisable = table.with_ranks(model, cuts, layers)  # the same table with rank knobs
    levels.update({knob(path): max(1, rank // 4) for path, rank in layers.items()})
    for name, full in factorisable.full.items():
        along = factorisable.along(name, levels)
        assert np.allclose(along, [factorisable.value({**levels, name: k}) for k in range(full + 1)], rtol=1e-12)
    import netshrink.budget.latency as latency

    monkeypatch.setattr(latency, "_measure", lambda *a: (_ for _ in ()).throw(AssertionError("measured again")))
    cached = latency_costs(model, cuts, x[:8])
    assert cached.value(levels) == pytest.approx(table.value(levels), rel=1e-12)
    assert list((tmp_path / "latency").glob("*.json"))


def test_latency_cannot_be_measured_on_the_meta_device_or_without_a_batch_of_one():
    with torch.device("meta"):
        on_meta = Chain([6, 8, 3])
    cuts, _ = find_cuts(Chain([6, 8, 3]), example=torch.randn(4, 6))
    with pytest.raises(BudgetError, match="its parameters are on the meta device"):
        latency_costs(on_meta, cuts, torch.randn(4, 6))

    class Pairs(nn.Module):  # runs only on an even number of samples
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x.reshape(-1, 2, 6).sum(1))))

    model = Pairs().eval()
    with pytest.raises(BudgetError, match="latency= times the model at batch 1, but it does not run on one sample"):
        netshrink.compress(model, torch.randn(40, 6), "group_lasso", latency=0.5)


# ---------------------------------------------------------------------------- the measurement


def test_a_model_measured_against_itself_and_against_a_quarter_of_its_work():
    big = Chain([512, 1024, 1024, 10]).eval()
    small = Chain([512, 256, 1024, 10]).eval()  # a quarter of the first two layers' products
    x = torch.randn(4, 512)
    itself = measure_against_original(big, big, x)
    assert itself.fraction == pytest.approx(1.0, abs=0.1)
    assert itself.original_ms > 0 and itself.compressed_ms > 0
    assert measure_against_original(big, small, x).fraction < 0.75


# ---------------------------------------------------------------------------- the loop, on a known latency


@dataclass
class _Allocation:
    cost: float
    total: float = 1.0


@dataclass
class _Plan:
    widths: dict
    allocation: _Allocation


@dataclass
class _Built:
    plan: _Plan
    real: bool


def _lattice(step: float):
    """Plans whose predicted fraction is the aim rounded down to ``step`` (widths follow)."""
    def plan_at(aim):
        level = max(1, int(aim / step + 1e-9))
        return _Plan({"cut": level}, _Allocation(level * step))
    return plan_at


def _latency(rest: float, slope: float, noise: float, seed: int, power: float = 1.0, spikes: int = 0):
    """Measured fraction ``rest + slope·predicted^power`` (× (1 + noise·N(0, 1))); the
    first ``spikes`` real models are timed 6% slower (a burst of load)."""
    generator = np.random.default_rng(seed)
    reals = []

    def measure(built):
        reals.extend([built] if built.real else [])
        spike = 1.06 if built.real and len(reals) <= spikes else 1.0
        fraction = (rest + slope * built.plan.allocation.cost ** power) * spike
        ratios = tuple(fraction * (1 + noise * generator.standard_normal(5)))
        return Measured(1.0, float(np.median(ratios)), ratios)
    return measure


def _meet(target, smallest, plan_at, measure, log=None):
    log = [] if log is None else log
    return meet_measured(target, smallest, plan_at, lambda p: log.append(p) or _Built(p, False),
                         lambda p: _Built(p, True), measure)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rest,power", [(0.15, 1.0), (0.3, 1.0), (0.0, 1.3), (0.1, 0.8)])
def test_the_loop_lands_within_the_window_under_the_target(rest, power, seed):
    # the full model measures 1; the table is off by a fixed rest and a curvature
    target = float(np.random.default_rng(seed).uniform(0.4, 0.9))
    stand_ins = []
    plan, model, best, rounds = _meet(target, 0.001, _lattice(1e-4),
                                      _latency(rest, 1 - rest, 0.002, seed, power=power), stand_ins)
    assert model.real and model.plan is plan and not best.stand_in
    assert (1 - 3 * TOLERANCE) * target <= best.fraction <= target  # the window, give or take the noise
    assert len(stand_ins) <= ROUNDS and len(rounds) - len(stand_ins) <= CONFIRMATIONS
    assert rounds[0].aim == target and rounds[0].stand_in  # the table's own answer comes first
    assert rounds[-1] is best


def test_a_real_model_timed_over_the_target_sends_the_search_on():
    # the first real compression is timed in a burst of load: over the budget even pooled with its stand-in
    stand_ins = []
    plan, model, best, rounds = _meet(0.6, 0.001, _lattice(1e-4), _latency(0.1, 0.9, 0.0, 0, spikes=1), stand_ins)
    confirmations = [r for r in rounds if not r.stand_in]
    assert len(confirmations) == 2 and confirmations[0].fraction > 0.6
    assert best is confirmations[-1] and best.fraction <= 0.6 and model.real and model.plan is plan
    assert len(best.measured.ratios) == 10  # pooled with its stand-in's timing


def test_a_real_model_is_judged_on_its_timing_pooled_with_its_stand_ins():
    earlier, later = Measured(1.0, 0.5, (0.50, 0.52, 0.49)), Measured(1.1, 0.6, (0.55, 0.51))
    pooled = later.pooled(earlier)
    assert pooled.ratios == (0.50, 0.52, 0.49, 0.55, 0.51) and pooled.fraction == pytest.approx(0.51)
    assert (pooled.original_ms, pooled.compressed_ms) == (1.1, 0.6)


def test_the_loop_stops_when_every_aim_left_allocates_a_model_already_built():
    # only 10 widths exist: the window [0.99·0.5, 0.5] holds none of their measurements
    stand_ins = []
    plan, _, best, rounds = _meet(0.5, 0.1, _lattice(0.1), _latency(0.0, 1.07, 0.0, 0), stand_ins)
    assert best.fraction == pytest.approx(0.428)  # 0.4·1.07, the largest within 0.5
    assert plan.widths == {"cut": 4} and len(stand_ins) < ROUNDS
    assert len({tuple(sorted(p.widths.items())) for p in stand_ins}) == len(stand_ins)  # none built twice


def test_a_target_under_the_tables_smallest_model_is_measured_before_it_is_refused():
    # the table says nothing under 0.4 is reachable, but every model measures 0.7 of its prediction
    plan, _, best, rounds = _meet(0.3, 0.4, _lattice(0.01), _latency(0.0, 0.7, 0.0, 0))
    assert rounds[0].aim == pytest.approx(0.4) and best.fraction <= 0.3
    assert best.fraction >= 0.7 * 0.42 - 1e-12  # the largest lattice point within 0.3


def test_a_latency_no_allocation_reaches_as_measured_is_refused_with_the_fraction_measured():
    with pytest.raises(BudgetError, match=r"latency=0.3: the smallest model tried measures 0.6.*Ask for at least 0.6"):
        _meet(0.3, 0.05, _lattice(0.01), _latency(0.6, 0.1, 0.0, 0))


# ---------------------------------------------------------------------------- compress(latency=)


def test_latency_budget_is_met_as_measured_and_the_table_error_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("NETSHRINK_CACHE", str(tmp_path))
    model, x = _chain(1, widths=(256, 1024, 1024, 10), samples=1200)
    result = netshrink.compress(model, x, "group_lasso", latency=0.5)
    budget = result.budget
    assert budget["unit"] == "latency" and budget["target"] == 0.5
    assert budget["achieved"] <= 0.5
    first, last = budget["rounds"][0], budget["rounds"][-1]
    assert first["aim"] == 0.5 and first["stand_in"] and not last["stand_in"]
    assert last["measured"] == budget["achieved"]
    assert budget["table_error"] == pytest.approx(first["predicted"] / first["measured"] - 1)
    kept = {layer.name: layer.kept for layer in result.layers}
    cuts, _ = find_cuts(model, example=x[:8])
    assert budget["predicted_ms"] == pytest.approx(latency_costs(model, cuts, x[:8]).value(kept))
    assert budget["widths"] == kept
    # an independent timing of the same two models agrees, to what a loaded machine's timing allows
    again = measure_against_original(model, result.model, x)
    assert again.fraction <= 0.5 * 1.25
    # the compressed model still computes the original's function closely on fresh inputs
    fresh = torch.randn(200, 256, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        reference, output = model(fresh), result.model(fresh)
    assert (output - reference).norm() < reference.norm()
