"""`netshrink reproduce budgets --quick`: every scheme at every budget, figures, numbers, summary."""

from __future__ import annotations

import json
import math
import time

import pytest

from netshrink.cli import main
from netshrink.errors import OutputExistsError
from netshrink.experiments import budgets


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from conftest import _require_dataset

    _require_dataset()
    out = tmp_path_factory.mktemp("reproduce") / "budgets"
    start = time.perf_counter()
    assert main(["reproduce", "budgets", "--quick", "--out", str(out)]) == 0
    return out, time.perf_counter() - start


def test_every_scheme_meets_every_budget(quick_run, record_property):
    import matplotlib.image

    out, seconds = quick_run
    record_property("quick_run_seconds", round(seconds, 1))
    rows = json.loads((out / "rows.json").read_text(encoding="utf-8"))["rows"]
    expected = {(network, scheme, kind, fraction) for network, points in budgets.QUICK.budgets.items()
                for kind, fraction in points for scheme in budgets.SCHEMES}
    assert {(r["network"], r["scheme"], r["kind"], r["target"]) for r in rows} == expected
    for row in rows:
        measure = row["params_ratio"] if row["kind"] == "size" else row["flops_ratio"]
        assert measure <= row["target"] + 1e-12, row["scheme"]  # no scheme gets more than the budget
        if row["scheme"] in (*budgets.GLOBAL, "kwon", "flap"):
            assert measure >= 0.99 * row["target"], row["scheme"]  # the allocations spend it
        assert math.isfinite(row["drop_pt"]) and 0 < row["accuracy"] <= 1
    for network in budgets.QUICK.budgets:
        image = matplotlib.image.imread(out / f"{network}.png")
        assert image.ndim == 3 and image.shape[0] > 300 and image.std() > 0.01
        data = json.loads((out / f"{network}.json").read_text(encoding="utf-8"))
        assert {curve["scheme"] for curve in data["curves"]} == set(budgets.SCHEMES)
    assert not list(out.parent.glob(".budgets*")), "journal or temporary folder left behind"


def test_summary_gives_goals_paired_errors_int8_and_latency(quick_run):
    out, _ = quick_run
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "## Quality goals" in summary and "lenet300: ≤ 30% of the parameters within 0.3 pt" in summary
    assert "±" in summary  # paired standard errors against the global allocation
    int8 = json.loads((out / "int8.json").read_text(encoding="utf-8"))["rows"]
    assert int8 and all(row["bytes_ratio"] < 0.5 * row["params_ratio"] for row in int8)
    latency = json.loads((out / "latency.json").read_text(encoding="utf-8"))["rows"]
    assert latency
    for row in latency:
        details = row["details"]
        assert details["achieved"] <= row["target"]  # met as measured
        assert details["achieved"] in [r["measured"] for r in details["rounds"] if not r["stand_in"]]
        first = details["rounds"][0]
        assert details["table_error"] == pytest.approx(first["predicted"] / first["measured"] - 1)
    assert "## Latency budgets, met as measured" in summary and "table error" in summary


def test_existing_folder_is_refused_before_any_work(quick_run):
    out, _ = quick_run
    with pytest.raises(OutputExistsError):
        budgets.run(out, quick=True)


@pytest.mark.parametrize("argv, named", [
    (["reproduce", "robin", "--goals"], "drop it to reproduce robin"),
    (["reproduce", "budgets", "--goals", "--quick"], "give one"),
])
def test_goals_flag_refused_where_it_means_nothing(argv, named, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_goals_flag_runs_the_goal_settings(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(budgets, "run", lambda out, **given: seen.update(given) or "summary")
    assert main(["reproduce", "budgets", "--goals", "--out", str(tmp_path / "out")]) == 0
    assert seen["settings"] is budgets.GOALS and not seen["quick"]
    assert budgets.GOALS.minilm and {network for network, *_ in budgets.QUALITY_GOALS} <= set(budgets.GOALS.budgets)
