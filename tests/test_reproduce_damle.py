"""`netshrink reproduce damle --quick`: every figure, its numbers and the summary."""

import json
import math
import time

import pytest

from netshrink.cli import main
from netshrink.errors import OutputExistsError
from netshrink.experiments import damle

STEMS = [
    "g2_cpqr_scaling",
    "g3_kernel_id",
    "g4_test_accuracy",
    "g5_activation_id",
    "g6_first_layer",
    "g7_whole_model",
    "g8_global_allocation",
]


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
def quick_run(trained_mlp7, tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce") / "damle"
    start = time.perf_counter()
    summary = damle.run(out, quick=True)
    seconds = time.perf_counter() - start
    print(f"\nreproduce damle --quick: {seconds:.1f} s")
    return out, summary, seconds


def test_quick_run_writes_every_figure_and_its_numbers(quick_run, record_property):
    import matplotlib.image

    out, summary, seconds = quick_run
    record_property("quick_run_seconds", round(seconds, 1))
    assert (out / "summary.md").read_text(encoding="utf-8") == summary
    assert (out / "g1_algorithm.md").is_file() and "g1_algorithm.md" in summary
    data = {}
    for stem in STEMS:
        image = matplotlib.image.imread(out / f"{stem}.png")
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500, stem
        assert image.std() > 0.01, f"{stem}.png looks blank"
        assert f"{stem}.png" in summary
        data[stem] = json.loads((out / f"{stem}.json").read_text(encoding="utf-8"))
        assert all(math.isfinite(x) for x in _numbers(data[stem])), stem
    assert not list(out.parent.glob(".damle.*")), "temporary folder left behind"

    g2 = data["g2_cpqr_scaling"]
    assert 0.6 <= g2["vs_m"]["slope"] <= 1.5
    assert 0.6 <= g2["vs_n"]["slope"] <= 1.5
    assert 1.4 <= g2["square"]["slope"] <= 2.6

    g3 = data["g3_kernel_id"]
    assert g3["k"] == list(range(1, 101))
    # σ_{k+1} is the optimal rank-k error: no selection of columns can beat it (above round-off).
    for ratio, resolved in zip(g3["ratio"], g3["resolved"]):
        if resolved:
            assert ratio >= 1 - 1e-9
    assert g3["last_resolved_k"] >= 10

    g4 = data["g4_test_accuracy"]
    assert g4["test_images"] == 10_000 and 0.85 <= g4["accuracy"] <= 1.0

    g5 = data["g5_activation_id"]
    for ratio, resolved in zip(g5["ratio"], g5["resolved"]):
        if resolved:
            assert ratio >= 1 - 1e-9
    assert g5["width"] == g4["widths"][0]
    check = g5["check_against_interpolative_decomposition"]
    assert check["same_columns"]
    assert check["error_from_one_factorization"] == pytest.approx(
        check["error_interpolative_decomposition"], rel=1e-6)

    g6 = data["g6_first_layer"]
    first = g6["smallest_eps_point"]
    assert first["eps"] == min(point["eps"] for point in g6["points"])
    # Neurons beyond the numerical rank of Z (dead or exactly dependent) go at any ε;
    # of the rest, the smallest ε keeps (nearly) all, and the accuracy does not move.
    assert first["kept"][0] >= 0.95 * g6["numerical_rank"]
    assert abs(first["accuracy"] - g4["accuracy"]) <= 0.001  # within 0.1 pt
    assert min(point["fraction_neurons_kept"] for point in g6["points"]) < 0.5

    g7 = data["g7_whole_model"]
    assert len(g7["points"]) >= 3
    for point in g7["points"]:
        assert len(point["kept"]) == 7
        assert all(1 <= kept <= width for kept, width in zip(point["kept"], g4["widths"]))
        assert 0 < point["fraction_params_kept"] <= 1
    assert set(g7["smallest_params_within_drop"]) == {"0.2", "1"}
    assert "0.2 pt" in summary and "1.0 pt" in summary

    g8 = data["g8_global_allocation"]
    assert len(g8["curves"]["seed"]) == len(g7["points"])
    for name in ("global", "global_stages"):
        for row in g8["curves"][name]:  # a parameter budget is never exceeded
            assert row["fraction_params_kept"] <= row["size"] and 0 < row["fraction_flops_kept"] <= 1
    assert "Goal 8" in summary and "global allocation" in summary


def test_existing_folder_is_refused_before_any_work(quick_run, monkeypatch):
    out, _, _ = quick_run
    before = sorted(p.name for p in out.iterdir())

    def no_work(*args, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("work started although the output folder exists")

    monkeypatch.setattr(damle, "_goal1", no_work)
    with pytest.raises(OutputExistsError):
        damle.run(out, quick=True)
    assert sorted(p.name for p in out.iterdir()) == before


def test_cli_refuses_existing_out(tmp_path, capsys):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "mine.txt").write_text("keep me")
    status = main(["reproduce", "damle", "--quick", "--out", str(target)])
    captured = capsys.readouterr()
    assert status == 2
    assert "already exists" in captured.err and "--force" in captured.err
    assert [p.name for p in target.iterdir()] == ["mine.txt"]
