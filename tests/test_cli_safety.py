"""Bad input on the command line, and interrupted compressions: each gets a specific error
or leaves each output complete or absent, with the inputs untouched."""

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from netshrink.cli import main

USERNET = """
from torch import nn

def mlp():
    return nn.Sequential(nn.Linear(12, 48), nn.ReLU(), nn.Linear(48, 5))

def big():
    return nn.Sequential(nn.Linear(64, 3000), nn.ReLU(), nn.Linear(3000, 3000), nn.ReLU(), nn.Linear(3000, 8))
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "safetynet.py").write_text(textwrap.dedent(USERNET))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import safetynet

    torch.manual_seed(0)
    save_file(safetynet.mlp().state_dict(), tmp_path / "mlp.safetensors")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((80, 12)).astype(np.float32))
    return tmp_path


def _error(capsys, *argv):
    status = main(["compress", "safetynet:mlp", "--weights", "mlp.safetensors", "--keep", "0.5", "--quiet", *argv])
    assert status == 2
    return capsys.readouterr().err


def test_calibration_of_the_wrong_shape_names_the_shapes(workdir, capsys):
    np.save(workdir / "wrong.npy", np.zeros((40, 7), np.float32))
    err = _error(capsys, "--calibration", "wrong.npy")
    assert "the model fails on the calibration data" in err and ", 7)" in err and "mat1 and mat2" in err


def test_existing_outputs_are_refused_before_any_work(workdir, capsys):
    for flag, name in (("--out", "taken"), ("--onnx", "taken.onnx"), ("--report", "page")):
        (workdir / name).write_text("mine")
        err = _error(capsys, "--calibration", "x.npy", flag, name)
        assert f"{name} ({flag}) already exists" in err and "--force" in err
        assert (workdir / name).read_text() == "mine"


def test_a_factory_source_needs_calibration_data(workdir, capsys):
    err = _error(capsys)
    assert "has no built-in data: pass --calibration PATH" in err


def test_only_with_an_unknown_kind(workdir, capsys):
    err = _error(capsys, "--calibration", "x.npy", "--only", "neurons,rows")
    assert "--only takes cut kinds from neurons, channels, heads" in err


def test_labels_whose_count_does_not_match(workdir, capsys):
    np.save(workdir / "labels.npy", np.zeros(79, np.int64))
    err = _error(capsys, "--calibration", "x.npy", "--labels", "labels.npy")
    assert "79" in err and "80" in err


def _digest(paths):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


COMMAND = ["compress", "safetynet:big", "--weights", "big.safetensors", "--calibration", "big.npy", "--held-out",
           "20", "--method", "magnitude", "--keep", "0.9", "--out", "out", "--quiet"]

# The same command, held inside the write: after the weights are in the temporary folder and
# before the manifest and the rename, it signals the test (a file) and waits to be killed.
HELD_IN_THE_WRITE = """
import pathlib, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even when started in the background
import netshrink.api as api
write = api.save_file
def held(*args, **kwargs):
    write(*args, **kwargs)
    pathlib.Path("weights-written").touch()
    time.sleep(600)
api.save_file = held
from netshrink.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start(workdir, held: bool):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(workdir), *sys.path]), "OMP_NUM_THREADS": "1"}
    launcher = ["-c", HELD_IN_THE_WRITE] if held else ["-m", "netshrink"]
    return subprocess.Popen([sys.executable, *launcher, *COMMAND], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_mid_write_leaves_no_output_and_inputs_untouched(tmp_path, sig):
    (tmp_path / "safetynet.py").write_text(textwrap.dedent(USERNET))
    sys.path.insert(0, str(tmp_path))
    try:
        import safetynet
    finally:
        sys.path.remove(str(tmp_path))
    save_file(safetynet.big().state_dict(), tmp_path / "big.safetensors")
    np.save(tmp_path / "big.npy", np.random.default_rng(0).standard_normal((60, 64)).astype(np.float32))
    inputs = [tmp_path / "big.safetensors", tmp_path / "big.npy", tmp_path / "safetynet.py"]
    before = _digest(inputs)

    process = _start(tmp_path, held=True)
    deadline = time.monotonic() + 600
    while not (tmp_path / "weights-written").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, process.communicate()[1].decode()[-2000:]
    assert list(tmp_path.glob(".out.*.tmp"))  # the output folder is being written
    process.send_signal(sig)
    process.communicate(timeout=120)
    assert not (tmp_path / "out").exists()
    assert _digest(inputs) == before
    if sig == signal.SIGINT:  # a clean interruption removes its temporary itself
        assert not list(tmp_path.glob(".out.*"))
    else:
        assert list(tmp_path.glob(".out.*.tmp"))  # SIGKILL cannot clean up ...
    finished = _start(tmp_path, held=False)  # ... the next write to the same place does
    _, err = finished.communicate(timeout=600)
    assert finished.returncode == 0, err.decode()[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json", "model.safetensors"]
    assert not list(tmp_path.glob(".out.*"))
    assert _digest(inputs) == before
    assert Path(tmp_path / "out" / "model.safetensors").stat().st_size > 0
