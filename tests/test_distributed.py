"""Data-parallel calibration: 2 and 3 local processes on loopback with gloo, each passing its
own shard, return the same model as one process on the union of the shards (kept units
identical, weights to 1e-9 relative); errors for disagreeing ranks, a split the world size
does not divide, a user statistic without all_reduce, a rank that dies or stalls. The
ranks run tests/distributed_worker.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import netshrink
from netshrink import distributed
from netshrink.cli import _parser
from netshrink.errors import InvalidInputError
from netshrink.job import run

from distributed_worker import CASES, compress_case, summary, union

WORKER = Path(__file__).with_name("distributed_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")])}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(scenario: str, world: int, out: Path, doomed: int | None = None) -> None:
    """Run ``world`` ranks of ``scenario``, saving into ``out``; the ``doomed`` rank is killed
    once the others are done."""
    port = _free_port()
    ranks = [subprocess.Popen([sys.executable, str(WORKER), scenario, str(rank), str(world), str(port), str(out)],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(world)]
    for rank, process in enumerate(ranks):
        if rank != doomed:
            log = process.communicate(timeout=300)[0]
            assert process.returncode == 0, f"rank {rank} failed:\n{log}"
    if doomed is not None:
        ranks[doomed].kill()
        ranks[doomed].communicate()


def _saved(out: Path, part: str, world: int) -> list[dict | None]:
    """Each rank's saved ``part`` (None for a rank that saved nothing)."""
    paths = [out / f"{part}{rank}.pt" for rank in range(world)]
    return [torch.load(path, weights_only=False) if path.exists() else None for path in paths]


_LAUNCHES: dict[int, tuple[Path, float]] = {}


def _cases(world: int, tmp_path_factory) -> tuple[Path, float]:
    """The folder of the ``cases`` launch on ``world`` ranks (run once) and its seconds."""
    if world not in _LAUNCHES:
        out, start = tmp_path_factory.mktemp(f"cases{world}"), time.perf_counter()
        _launch("cases", world, out, doomed=2 if world == 3 else None)  # with 3 ranks, rank 2 dies at the end
        _LAUNCHES[world] = out, time.perf_counter() - start
    return _LAUNCHES[world]


@pytest.fixture(scope="module", params=[2, 3], ids=["2 ranks", "3 ranks"])
def ranks(request, tmp_path_factory):
    """``(world size, every rank's results of every case)``."""
    out, _ = _cases(request.param, tmp_path_factory)
    return request.param, _saved(out, "cases", request.param)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float((a - b).norm())


@pytest.mark.parametrize("name", list(CASES))
def test_ranks_return_one_process_model(ranks, name):
    world, results = ranks
    first = results[0][name]
    for other in results[1:]:  # every rank returns the same model, exactly
        assert other[name]["kept"] == first["kept"]
        assert other[name]["state"].keys() == first["state"].keys()
        assert all(torch.equal(other[name]["state"][k], v) for k, v in first["state"].items())
    decided = [result[name]["decided"] for result in results]
    cuts = sorted(first["kept"])
    if CASES[name][3] == "parallel":  # the ranks share the solves, each cut decided once
        assert sorted(sum(decided, [])) == cuts and all(decided)
    else:  # rank 0 decides every cut
        assert sorted(decided[0]) == cuts and not any(decided[1:])
    kind = CASES[name][0]
    reference = summary(compress_case(name, union(kind, world)))
    assert first["kept"] == reference["kept"]
    assert first["params"] == reference["params"]
    assert reference["params"][1] < reference["params"][0]  # something was removed
    assert {k: v.shape for k, v in first["state"].items()} == {k: v.shape for k, v in reference["state"].items()}
    worst = max(_relative(first["state"][k], v) for k, v in reference["state"].items() if v.is_floating_point())
    assert worst <= 1e-9, f"{name}: weights differ from one process by {worst:.2e} (relative)"


def test_errors_of_disagreeing_ranks_then_a_rank_dies(tmp_path_factory):
    """Errors every rank raises alike leave the group usable; then the last rank exits in the
    middle of an observation and the others raise DistributedError within seconds."""
    out, _ = _cases(3, tmp_path_factory)
    results = _saved(out, "errors", 3)
    assert results[2] is None
    for result in results[:2]:
        shapes = result["shapes"]
        assert shapes["type"] == "InvalidInputError"
        assert "rank 0: (N, 2, 16, 16) float32; ranks 1, 2: (N, 2, 12, 12) float32" in shapes["message"]
        assert result["settings"]["type"] == "InvalidInputError"
        assert "different options (rank 0: {'keep': 0.5}; ranks 1, 2: {'keep': 0.4})" in result["settings"]["message"]
        assert result["models"]["type"] == "InvalidInputError"
        assert "different models: 'layers.0.weight' holds other values" in result["models"]["message"]
        statistic = result["statistic"]
        assert statistic["type"] == "InvalidInputError"
        assert "._Counts, which cannot be summed" in statistic["message"]
        assert "all_reduce(self, ranks)" in statistic["message"]
        split = result["split"]
        assert split["type"] == "InvalidInputError"
        assert "301 calibration samples are dealt to 3 ranks" in split["message"] and "300 or 303" in split["message"]
        _assert_lost(result["dies"])
    before = _saved(out, "cases", 3)[0]["mlp-group_lasso-parallel"]
    for result in results[:2]:  # the same compression as before the errors
        assert result["after"]["kept"] == before["kept"]
        assert all(torch.equal(result["after"]["state"][k], v) for k, v in before["state"].items())


def _assert_lost(failure: dict) -> None:
    assert failure["type"] == "DistributedError", failure
    assert "all-reducing the statistics" in failure["message"]
    assert "another rank stopped, failed or did not reach this step" in failure["message"]
    assert failure["seconds"] < 30


def test_shard_divides_or_says_so(monkeypatch):
    assert torch.equal(distributed.shard(torch.arange(5), "samples"), torch.arange(5))  # no group: all of them

    class Three:
        rank, size = 2, 3

    monkeypatch.setattr(distributed, "current", lambda: Three())
    assert distributed.shard(torch.arange(9), "samples").tolist() == [6, 7, 8]
    with pytest.raises(InvalidInputError, match="10 samples are dealt to 3 ranks.*9 or 12"):
        distributed.shard(torch.arange(10), "samples")


def test_a_stalled_rank_times_the_others_out(tmp_path):
    """A rank that stops answering (group timeout 6 s) makes the other raise, never hang."""
    _launch("stalls", 2, tmp_path, doomed=1)
    (result, lost) = _saved(tmp_path, "stalls", 2)
    assert lost is None
    _assert_lost(result)
    assert "Timed out" in result["message"]


DISTNET = """
from torch import nn

def mlp():
    return nn.Sequential(nn.Linear(12, 48), nn.ReLU(), nn.Linear(48, 32), nn.Tanh(), nn.Linear(32, 5))
"""


def test_torchrun_command_line(tmp_path, monkeypatch):
    """``python -m torch.distributed.run --nproc_per_node=2 -m netshrink compress``: rank 0 alone
    prints and writes; the model equals one process's on the same samples."""
    (tmp_path / "distnet.py").write_text(textwrap.dedent(DISTNET))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import distnet

    torch.manual_seed(0)
    model = distnet.mlp().eval()
    save_file(model.state_dict(), tmp_path / "mlp.safetensors")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((500, 12)).astype(np.float32))
    argv = ["compress", "distnet:mlp", "--weights", "mlp.safetensors", "--calibration", "x.npy",
            "--method", "group_lasso", "--keep", "0.5", "--held-out", "100", "--chaining", "parallel",
            "--json", "--quiet"]
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(tmp_path), ENV["PYTHONPATH"]])}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "netshrink"]
    done = subprocess.run([*launch, *argv, "--out", "small"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 alone prints
    record = json.loads(lines[0])
    assert record["calibration_size"] == 400 and "2 ranks" in record["calibration"]
    assert [layer["kept"] for layer in record["layers"]] == [24, 16]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".py") == ["mlp.safetensors", "small", "x.npy"]

    _, one = run(_parser().parse_args(argv), progress=False)  # one process, the same job
    small = netshrink.load(tmp_path / "small", model)
    for (key, a), b in zip(small.state_dict().items(), one.model.state_dict().values()):
        assert a.shape == b.shape and _relative(a, b) <= 1e-6, key  # float32 weights
