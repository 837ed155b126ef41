import json
import os

import pytest

from netshrink.cli import main
from netshrink.data import fashion_mnist
from netshrink.evaluate import accuracy


def run(capsys, *argv):
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_compress_json_report(trained_mlp7, capsys):
    status, out, _ = run(capsys, "compress", "mlp7", "--keep", "0.5", "--calibration-size", "1500", "--json")
    assert status == 0
    report = json.loads(out)
    assert {"source", "method", "params_before", "params_after", "accuracy_before",
            "accuracy_after", "seconds", "layers"} <= report.keys()
    assert report["source"] == "mlp7" and report["method"] == "interpolative"
    assert report["params_after"] < report["params_before"]
    assert len(report["layers"]) == 7
    for layer in report["layers"]:
        assert set(layer) == {"name", "kind", "kept", "total", "error", "sampled"} and not layer["sampled"]
        assert layer["kept"] == -(-layer["total"] // 2)
    images, labels = fashion_mnist("test")
    assert report["accuracy_before"] == pytest.approx(accuracy(trained_mlp7, images, labels))
    assert report["accuracy_after"] > report["accuracy_before"] - 0.05


def test_compress_table_and_saved_model_round_trip(trained_mlp7, capsys, tmp_path):
    out_dir = tmp_path / "mlp7-small"
    status, out, _ = run(capsys, "compress", "mlp7", "--tol", "0.5", "--calibration-size", "1500",
                         "--out", str(out_dir))
    assert status == 0
    assert "parameters" in out and "accuracy" in out and "hidden" in out
    assert sorted(p.name for p in out_dir.iterdir()) == ["manifest.json", "model.safetensors"]
    after = [line for line in out.splitlines() if line.startswith("accuracy")][0].split()[-1]
    status, out, _ = run(capsys, "evaluate", "mlp7", "--compressed", str(out_dir))
    assert status == 0 and after in out


def test_existing_out_is_refused_without_force(trained_mlp7, capsys, tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "mine.txt").write_text("keep me")
    status, _, err = run(capsys, "compress", "mlp7", "--keep", "0.5", "--out", str(target))
    assert status == 2 and "already exists" in err and "--force" in err
    assert [p.name for p in target.iterdir()] == ["mine.txt"]


def test_unknown_zoo_name(capsys):
    status, _, err = run(capsys, "compress", "mlp8", "--keep", "0.5")
    assert status == 2
    assert "mlp8" in err and "mlp7" in err


def test_missing_dataset_names_the_install_command(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("NETSHRINK_DATA", str(tmp_path))
    status, _, err = run(capsys, "evaluate", "mlp7")
    assert status == 2
    assert "apt-get install dataset-fashion-mnist" in err


def test_tol_and_keep_are_exclusive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", "mlp7", "--tol", "0.1", "--keep", "0.5"])
    assert exit_info.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_bad_keep_is_reported(capsys):
    status, _, err = run(capsys, "compress", "mlp7", "--keep", "1.5", "--calibration-size", "100")
    assert status == 2 and "keep must be" in err


def test_unwritable_cache_directory_is_reported(capsys, tmp_path):
    folder = "/sys" if os.geteuid() == 0 else tmp_path / "locked"  # /sys refuses even root
    if not isinstance(folder, str):
        folder.mkdir(mode=0o500)
    status, _, err = run(capsys, "compress", "mlp7", "--keep", "0.5", "--calibration-size", "100",
                         "--cache-dir", str(folder))
    assert status == 2 and "not writable" in err and str(folder) in err


def test_spilled_cache_from_the_command_line(trained_mlp7, capsys, tmp_path):
    """Every cached activation spilled to files (--cache-memory 0): the same model as in memory."""
    common = ["compress", "mlp7", "--tol", "0.3", "--calibration-size", "600", "--held-out", "100", "--json"]
    status, out, _ = run(capsys, *common)
    spilled_status, spilled, _ = run(capsys, *common, "--cache-memory", "0", "--cache-dir", str(tmp_path))
    assert status == spilled_status == 0
    in_memory, spilled = json.loads(out), json.loads(spilled)
    assert in_memory["params_after"] < 0.5 * in_memory["params_before"]
    assert [(layer["kept"], layer["error"]) for layer in in_memory["layers"]] == \
        [(layer["kept"], layer["error"]) for layer in spilled["layers"]]
    assert in_memory["fidelity"] == spilled["fidelity"]
    assert list(tmp_path.iterdir()) == []


def test_group_lasso_from_the_command_line(trained_mlp7, capsys, tmp_path):
    status, out, _ = run(capsys, "compress", "mlp7", "--method", "group_lasso", "--lam", "0.02",
                         "--chaining", "parallel", "--calibration-size", "1000", "--json")
    assert status == 0
    report = json.loads(out)
    assert report["method"] == "group_lasso" and report["options"]["lam"] == 0.02
    assert report["options"]["chaining"] == "parallel"
    assert report["params_after"] < 0.2 * report["params_before"]
    assert all(0 <= layer["error"] < 1 for layer in report["layers"])
    status, out, _ = run(capsys, "compress", "mlp7", "--method", "group_lasso", "--lam", "0.02",
                         "--weighting", "uniform", "--calibration-size", "1000", "--json")
    uniform = json.loads(out)
    assert status == 0 and uniform["options"]["weighting"] == "uniform"
    assert [layer["details"]["lam"] for layer in uniform["layers"]] == [0.02] * len(uniform["layers"])
    assert len({layer["details"]["lam"] for layer in report["layers"]}) > 1


def test_multitask_lasso_on_one_layer_from_the_command_line(trained_mlp7, capsys):
    status, out, _ = run(capsys, "compress", "mlp7", "--method", "multitask_lasso", "--layer", "first",
                         "--lam", "0.05", "--calibration-size", "1000", "--json")
    assert status == 0
    report = json.loads(out)
    (layer,) = report["layers"]
    assert layer["name"] == "hidden.0:in" and layer["sampled"] and layer["total"] == 784
    assert 0 < layer["kept"] < 784 and layer["details"]["solver"] == "fista"
    assert report["params_before"] - report["params_after"] == 2048 * (784 - layer["kept"])
    status, out, _ = run(capsys, "compress", "mlp7", "--method", "multitask_lasso", "--layer", "last",
                         "--lam", "0.05", "--solver", "prox_adam", "--mu", "0.07", "--max-seconds", "1",
                         "--calibration-size", "500")
    assert status == 0 and "hidden.6" in out
    status, _, err = run(capsys, "compress", "mlp7", "--method", "multitask_lasso", "--layer", "fc3", "--lam", "0.1")
    assert status == 2 and "has no layer named 'fc3'" in err


def test_option_of_another_method_is_reported(capsys):
    status, _, err = run(capsys, "compress", "mlp7", "--method", "interpolative", "--lam", "0.1")
    assert status == 2 and "has no option lam" in err


def test_compress_under_a_budget_with_stages(capsys, tmp_path):
    status, out, _ = run(capsys, "compress", "lenet300", "--method", "group_lasso", "--size", "0.3", "--lowrank",
                         "--sample-inputs", "--quantize", "int8", "--calibration-size", "1000", "--json",
                         "--out", str(tmp_path / "small"))
    assert status == 0
    report = json.loads(out)
    budget = report["budget"]
    assert budget["kind"] == "size" and budget["achieved"] <= 0.3 and report["ratio"] == budget["achieved"]
    assert report["options"]["quantize"] == "int8" and report["bytes_after"] < 0.1 * report["bytes_before"]
    assert {layer["kind"] for layer in report["layers"]} >= {"neurons", "rank"}
    assert any(layer["sampled"] for layer in report["layers"])
    from netshrink import load, zoo

    small = load(tmp_path / "small", zoo.build("lenet300")).eval()
    images, labels = fashion_mnist("test")
    assert accuracy(small, images, labels) == pytest.approx(report["accuracy_after"])


def test_flops_budget_on_the_command_line(capsys):
    status, out, _ = run(capsys, "compress", "lenet5", "--method", "magnitude", "--flops", "0.5", "--refit",
                         "--calibration-size", "500", "--quiet")
    assert status == 0 and "the budget is 50.00%" in out


def test_latency_budget_on_the_command_line(capsys):
    status, out, _ = run(capsys, "compress", "lenet300", "--method", "magnitude", "--latency", "0.6",
                         "--calibration-size", "500", "--json")
    assert status == 0
    budget = json.loads(out)["budget"]
    assert budget["kind"] == "latency" and budget["achieved"] <= 0.6
    assert budget["achieved"] == budget["rounds"][-1]["measured"] and not budget["rounds"][-1]["stand_in"]


def test_obs_under_a_flops_budget_on_the_command_line(capsys):
    status, out, _ = run(capsys, "compress", "lenet300", "--method", "obs", "--flops", "0.3", "--damping", "0.001",
                         "--calibration-size", "500", "--json")
    assert status == 0
    report = json.loads(out)
    assert report["budget"]["kind"] == "flops" and report["budget"]["achieved"] <= 0.3
    assert report["options"]["damping"] == 0.001


@pytest.mark.parametrize("argv, message", [
    (["--size", "0.5", "--flops", "0.5"], "not allowed with argument"),
    (["--keep", "0.5", "--lowrank"], "lowrank=True is a stage of the global allocation"),
    (["--size", "0.0001"], "Ask for at least"),
])
def test_budget_errors_on_the_command_line(capsys, argv, message):
    try:
        status, _, err = run(capsys, "compress", "lenet300", "--method", "group_lasso", "--calibration-size", "500",
                             *argv)
    except SystemExit as exc:  # argparse refuses two budgets itself
        status, err = exc.code, capsys.readouterr().err
    assert status == 2 and message in err
