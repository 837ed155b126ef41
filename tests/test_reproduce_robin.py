"""`netshrink reproduce robin --quick`: every file, its numbers, and the figures drawn from them."""

import json
import math
import time

import numpy as np
import pytest

from netshrink.cli import main
from netshrink.errors import OutputExistsError
from netshrink.experiments import robin
from netshrink.experiments.runtime import paired_se_pt

FIGURES = {
    "fig5_debiasing": robin._draw_fig5,
    "fig6_chaining": robin._draw_fig6,
    "acceptance": robin._draw_acceptance,
}
FILES = ["table1.json", "summary.md", "run.json"] + [f"{stem}.{ext}" for stem in FIGURES for ext in ("png", "json")]


def _numbers(value):
    """Every number in a JSON document (bools excluded; None is not a number)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


@pytest.fixture(scope="module")
def trained_lenets():
    """lenet300 and lenet5, trained into the zoo cache when missing (minutes on first use)."""
    from netshrink import zoo
    from netshrink.data import fashion_mnist
    from netshrink.errors import DatasetNotFoundError

    try:
        fashion_mnist("test")
    except DatasetNotFoundError as exc:
        pytest.skip(f"Fashion-MNIST is not installed: {exc}")
    return {name: zoo.load(name, progress=False) for name in ("lenet300", "lenet5")}


@pytest.fixture(scope="module")
def quick_run(trained_lenets, tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce") / "robin"
    start = time.perf_counter()
    summary = robin.run(out, quick=True)
    seconds = time.perf_counter() - start
    print(f"\nreproduce robin --quick: {seconds:.1f} s")
    data = {name: json.loads((out / name).read_text(encoding="utf-8"))
            for name in FILES if name.endswith(".json")}
    return out, summary, seconds, data


def test_quick_run_writes_every_file(quick_run, record_property):
    import matplotlib.image

    out, summary, seconds, data = quick_run
    record_property("quick_run_seconds", round(seconds, 1))
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert not list(out.parent.glob(".robin.*")), "temporary folder left behind"
    assert (out / "summary.md").read_text(encoding="utf-8") == summary
    for stem in FIGURES:
        image = matplotlib.image.imread(out / f"{stem}.png")
        assert image.ndim == 3 and image.shape[0] > 400 and image.shape[1] > 800, stem
        assert image.std() > 0.01, f"{stem}.png looks blank"
        assert f"{stem}.png" in summary
    for name, document in data.items():
        assert all(math.isfinite(x) for x in _numbers(document)), name
    for heading in ("## Table 1", "## Figure 5", "## Figure 6", "## Acceptance check", "## Run"):
        assert heading in summary
    assert "Fashion-MNIST" in summary and "MNIST and ImageNet are not reachable" in summary
    run = data["run.json"]
    assert run["mode"] == "quick" and run["seconds"]["total"] > 0
    assert {"torch", "numpy", "python", "netshrink", "settings"} <= set(run)
    assert set(run["networks"]) == {"lenet300", "lenet5"}  # quick: no vgg-fmnist, no mlp7
    assert all(net["source"] == "zoo cache" for net in run["networks"].values())


@pytest.mark.parametrize("stem", sorted(FIGURES))
def test_png_is_drawn_from_its_json(quick_run, stem, tmp_path):
    """Re-drawing the figure from the JSON on disk gives the same pixels, and its lines
    carry exactly the JSON's numbers."""
    import matplotlib.image

    out, _, _, data = quick_run
    document = data[f"{stem}.json"]
    figure = FIGURES[stem](document)
    again = tmp_path / f"{stem}.png"
    robin._save(figure, again)
    assert np.array_equal(matplotlib.image.imread(again), matplotlib.image.imread(out / f"{stem}.png"))

    lines = {}
    for axis in figure.axes:
        for line in axis.get_lines():
            lines.setdefault(line.get_label(), []).append((list(line.get_xdata()), list(line.get_ydata())))
    if stem == "fig6_chaining":
        curves = [(c["label"], c["x_ratio"], c["y_accuracy_pct"]) for c in document["curves"]]
    elif stem == "fig5_debiasing":
        curves = [(c["label"], c["x_kept"], c["y_accuracy_pct"]) for c in document["curves"]]
    else:
        curves = [(label, c["x_ratio"], c["y_accuracy_pct"])
                  for item in document["networks"].values() for label, c in item["curves"].items()]
    for label, xs, ys in curves:
        assert any(x == list(xs) and y == list(ys) for x, y in lines[label]), label


def test_numbers_are_consistent(quick_run):
    _, summary, _, data = quick_run
    fig5, fig6 = data["fig5_debiasing.json"], data["fig6_chaining.json"]
    table, acceptance = data["table1.json"], data["acceptance.json"]

    # Figure 6: the three chainings on the same λ grid, every baseline, rates in (0, 1].
    labels = [c["label"] for c in fig6["curves"]]
    assert labels[:3] == ["parallel", "top-down", "bottom-up"]
    assert set(labels[3:]) == {"magnitude pruning", "magnitude pruning + refit", "random + refit", "low-rank"}
    for curve in fig6["curves"]:
        assert curve["x_ratio"] == [p["ratio"] for p in curve["points"]]
        assert curve["y_accuracy_pct"] == [100 * p["accuracy"] for p in curve["points"]]
        assert curve["points"], curve["label"]
        for point in curve["points"]:
            assert 0 < point["ratio"] <= 1
            assert point["ratio"] == pytest.approx(point["params_after"] / fig6["params"])
        if curve["curve"] == "group_lasso":
            assert sorted(p["lam"] for p in curve["points"]) == sorted(fig6["lam_grid"])

    # Figure 5: same support with and without debiasing; debiasing helps at the largest λ.
    debiased, biased = fig5["curves"]
    assert (debiased["label"], biased["label"]) == ("debiased", "not debiased")
    assert debiased["lam"] == biased["lam"] == sorted(fig5["lam_grid"])
    assert debiased["x_kept"] == biased["x_kept"]
    assert all(1 <= k <= fig5["width"] for k in debiased["x_kept"])
    assert debiased["y_accuracy_pct"][-1] >= biased["y_accuracy_pct"][-1]
    assert debiased["reconstruction_error"][-1] <= biased["reconstruction_error"][-1]

    # Table 1: rates in (0, 1], sizes = 4 bytes × parameters, the rows come from the sweep.
    assert set(table["networks"]) == {"lenet300", "lenet5"}
    for network, row in table["networks"].items():
        assert row["baseline"]["size_mib"] == pytest.approx(4 * row["baseline"]["params"] / 2**20)
        for kind in ("compressed", "retrained"):
            entry = row[kind]
            assert entry is not None, (network, kind)
            assert 0 < entry["compression_rate"] <= 1
            assert entry["compression_rate"] == pytest.approx(entry["params"] / row["baseline"]["params"])
            assert entry["size_mib"] == pytest.approx(4 * entry["params"] / 2**20)
            assert any(p["params_after"] == entry["params"] and p["lam"] == entry["lam"] for p in row["sweep"])
        assert row["retrained"]["compression_rate"] < row["compressed"]["compression_rate"]
        assert f"{row['baseline']['top1_error_pct']:.2f} %" in summary
    assert "43.48 %" in summary and "1.68 %" in summary and "0.74 %" in summary  # the seed's rows

    # Acceptance: consistent with its curves and with Figure 6 (same lenet5 points).
    for network, item in acceptance["networks"].items():
        gl = item["curves"]["group lasso + debias"]
        assert all(0 < x <= 1 for curve in item["curves"].values() for x in curve["x_ratio"])
        best = item["smallest_within_drop"]["group lasso + debias"]
        within = [p for p in gl["points"] if p["drop_pt"] <= item["target_drop_pt"] + 1e-9]
        assert (best is None) == (not within)
        if best is not None:
            assert best["ratio"] == min(p["ratio"] for p in within)
            assert item["size_target_met"] == (best["ratio"] <= item["target_fraction"])
        for comparison in item["comparison"].values():
            for row in comparison["compared"]:
                assert row["margin_pt"] == pytest.approx(row["group_lasso_accuracy_pct"] - row["baseline_accuracy_pct"])
                assert row["paired_se_pt"] >= 0
            if comparison["how"] == "interpolated":
                assert comparison["above"] == all(r["margin_pt"] > 0 for r in comparison["compared"])
                assert comparison["not_above"] == sum(r["margin_pt"] <= 0 for r in comparison["compared"])
                assert comparison["below_by_2se"] == sum(r["margin_pt"] < -2 * r["paired_se_pt"]
                                                         for r in comparison["compared"])
        assert item["above_every_baseline"] == all(c["above"] for c in item["comparison"].values())
        # the seed's uniform λ is drawn for reference, on the same grid, outside the check
        uniform = item["curves"]["group lasso + debias, uniform λ"]
        assert sorted(p["lam"] for p in uniform["points"]) == sorted(acceptance["lam_grid"])
        assert "group lasso + debias, uniform λ" not in item["comparison"]
    top_down = next(c for c in fig6["curves"] if c["label"] == "top-down")
    lenet5 = acceptance["networks"]["lenet5"]["curves"]["group lasso + debias"]["points"]
    for point in top_down["points"]:
        assert point in lenet5
    assert acceptance["passed"] == all(v["size_target_met"] and v["above_every_baseline"]
                                       for v in acceptance["networks"].values())
    assert ("**PASS**" if acceptance["passed"] else "**FAIL**") in summary


def test_paired_standard_error_matches_the_discordant_pair_formula():
    import torch

    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(50, 3000))
        first = torch.from_numpy(rng.random(n) < rng.uniform(0.5, 0.95))
        second = torch.from_numpy(np.where(rng.random(n) < rng.uniform(0, 0.3), ~first.numpy(), first.numpy()))
        # only disagreements count: b images right only for the first, c only for the second
        b = int((first & ~second).sum())
        c = int((~first & second).sum())
        variance = ((b + c) / n - ((b - c) / n) ** 2) * n / (n - 1)
        assert paired_se_pt(first, second) == pytest.approx(100 * math.sqrt(variance / n), rel=1e-12)
    same = torch.from_numpy(rng.random(100) < 0.9)
    assert paired_se_pt(same, same) == 0


def test_existing_folder_is_refused_before_any_work(quick_run, monkeypatch):
    out, _, _, _ = quick_run
    before = sorted(p.name for p in out.iterdir())

    def no_work(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("work started although the output folder exists")

    monkeypatch.setattr(robin, "_setup", no_work)
    with pytest.raises(OutputExistsError):
        robin.run(out, quick=True)
    assert sorted(p.name for p in out.iterdir()) == before


def test_cli_refuses_existing_out(tmp_path, capsys):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "mine.txt").write_text("keep me")
    status = main(["reproduce", "robin", "--quick", "--out", str(target)])
    captured = capsys.readouterr()
    assert status == 2
    assert "already exists" in captured.err and "--force" in captured.err
    assert [p.name for p in target.iterdir()] == ["mine.txt"]


def test_cli_dispatches_to_robin(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run(out, quick, overwrite, progress):
        calls.append((out, quick, overwrite))
        return "robin summary"

    monkeypatch.setattr(robin, "run", fake_run)
    assert main(["reproduce", "robin", "--quick", "--out", str(tmp_path / "x"), "--force"]) == 0
    assert calls == [(tmp_path / "x", True, True)]
    assert "robin summary" in capsys.readouterr().out
