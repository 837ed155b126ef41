"""One rank of the distributed tests (tests/test_distributed.py): ``python distributed_worker.py
SCENARIO RANK WORLD PORT OUT``. It joins a gloo group on loopback, runs the scenario on its
shard and saves what it saw to ``OUT/rank{RANK}.pt``."""

from __future__ import annotations

import datetime
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

import netshrink
from netshrink import distributed
from netshrink.methods import Decision
from netshrink.methods.group_lasso import GroupLasso
from netshrink.methods.interpolative import Interpolative

from models import Chain, ConvNet

#: samples per rank: unequal counts on purpose
SHARD_SIZES = (90, 130, 60)
BATCH_SIZE = 32

#: name: (model, method, options, chaining)
CASES = {
    "mlp-group_lasso-parallel": ("mlp", "group_lasso", {"keep": 0.5}, "parallel"),
    "mlp-group_lasso-top_down": ("mlp", "group_lasso", {"lam": 0.05}, "top_down"),
    "mlp-group_lasso-bottom_up": ("mlp", "group_lasso", {"keep": 0.6}, "bottom_up"),
    "cnn-group_lasso-parallel": ("cnn", "group_lasso", {"keep": 0.5}, "parallel"),
    "cnn-interpolative-top_down": ("cnn", "interpolative", {"keep": 0.5}, "top_down"),
    "mlp-interpolative-parallel": ("mlp", "interpolative", {"tol": 0.3}, "parallel"),
}


def build(kind: str) -> nn.Module:
    """A float64 model: its weights are compared to 1e-9 without float32 rounding."""
    torch.manual_seed(0)
    return (Chain([12, 40, 32, 24, 5]) if kind == "mlp" else ConvNet()).double().eval()


def shard(kind: str, rank: int) -> torch.Tensor:
    """Rank ``rank``'s calibration samples (the same on every call)."""
    generator = torch.Generator().manual_seed(100 + rank)
    shape = (12,) if kind == "mlp" else (2, 16, 16)
    return torch.randn(SHARD_SIZES[rank], *shape, generator=generator, dtype=torch.float64)


def _seeded(seed: int, cls, *args) -> nn.Module:
    torch.manual_seed(seed)
    return cls(*args).eval()


def union(kind: str, world: int) -> torch.Tensor:
    return torch.cat([shard(kind, rank) for rank in range(world)])


#: the cuts this process decided, in order
DECIDED: list[str] = []


def _counted(cls) -> None:
    decide = cls.decide

    def counted(self, cut, *args):
        DECIDED.append(cut.name)
        return decide(self, cut, *args)

    cls.decide = counted


def compress_case(name: str, calibration) -> netshrink.Compression:
    kind, method, options, chaining = CASES[name]
    return netshrink.compress(build(kind), calibration, method, chaining=chaining, batch_size=BATCH_SIZE, **options)


def summary(result: netshrink.Compression) -> dict:
    return {"state": {k: v.detach().clone() for k, v in result.model.state_dict().items()},
            "kept": {layer.name: layer.kept_indices for layer in result.layers},
            "params": (result.params_before, result.params_after)}


class _Counts:
    """A statistic with no all_reduce: a user method's own."""

    def __init__(self):
        self.rows = 0

    def update(self, index, current, original=None):
        self.rows += current.shape[0]


class Counting(GroupLasso):
    def __init__(self):
        super().__init__(keep=0.5)

    def statistic(self, cut, consumers):
        return _Counts()

    def decide(self, cut, statistic, consumers, producers) -> Decision:
        raise AssertionError("not reached")


class _Dying:
    """Calibration batches; rank ``doomed`` exits (or stalls ``stall`` seconds) at its second batch,
    inside the first observation pass (the example is the first batch)."""

    def __init__(self, data: torch.Tensor, rank: int, doomed: int, stall: float | None):
        self.data, self.rank, self.doomed, self.stall = data, rank, doomed, stall

    def __iter__(self):
        for index, batch in enumerate(self.data.split(BATCH_SIZE)):
            if index == 1 and self.rank == self.doomed:
                if self.stall is None:
                    os._exit(7)
                time.sleep(self.stall)
            yield batch


def _error(call) -> dict:
    start = time.perf_counter()
    try:
        call()
    except Exception as exc:
        return {"type": type(exc).__name__, "message": str(exc), "seconds": time.perf_counter() - start}
    return {"type": None, "message": "", "seconds": time.perf_counter() - start}


def _lose_last_rank(rank: int, world: int, stall: float | None) -> dict:
    data = _Dying(shard("mlp", rank), rank, world - 1, stall)
    return _error(lambda: netshrink.compress(build("mlp"), data, "group_lasso", keep=0.5, chaining="parallel"))


def cases(rank: int) -> dict:
    """Every case of :data:`CASES` on this rank's shard: the model, kept units, cuts decided here."""
    _counted(GroupLasso)
    _counted(Interpolative)
    out = {}
    for name in CASES:
        start = time.perf_counter()
        DECIDED.clear()
        out[name] = {**summary(compress_case(name, shard(CASES[name][0], rank))),
                     "seconds": time.perf_counter() - start, "decided": list(DECIDED)}
    return out


def errors(rank: int, world: int) -> dict:
    """Errors every rank raises alike, then the last rank dies in the middle of an observation."""
    images = torch.randn(40, 2, 16 if rank == 0 else 12, 16 if rank == 0 else 12)
    adaptive = nn.Sequential(nn.Conv2d(2, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 3))
    return {
        "shapes": _error(lambda: netshrink.compress(adaptive, images, "group_lasso", keep=0.5)),
        "settings": _error(lambda: netshrink.compress(build("mlp"), shard("mlp", rank), "group_lasso",
                                                      keep=0.5 if rank == 0 else 0.4)),
        "statistic": _error(lambda: netshrink.compress(build("mlp"), shard("mlp", rank), Counting(),
                                                       chaining="parallel")),
        "split": _error(lambda: distributed.shard(torch.arange(301), "calibration samples")),
        "models": _error(lambda: netshrink.compress(
            _seeded(rank, Chain, [12, 40, 32, 24, 5]).double(), shard("mlp", rank), "group_lasso", keep=0.5)),
        "after": summary(compress_case("mlp-group_lasso-parallel", shard("mlp", rank))),
        "dies": _lose_last_rank(rank, world, stall=None),
    }


def main() -> None:
    """``cases`` (with 3 ranks followed by ``errors``) or ``stalls``; results in
    ``OUT/{part}{RANK}.pt``."""
    scenario, rank, world, port, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    timeout = 6 if scenario == "stalls" else 60
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout))
    if scenario == "stalls":
        torch.save(_lose_last_rank(rank, world, stall=20.0), os.path.join(out, f"stalls{rank}.pt"))
        _leave_broken_group()
    torch.save(cases(rank), os.path.join(out, f"cases{rank}.pt"))
    if world == 3:
        torch.save(errors(rank, world), os.path.join(out, f"errors{rank}.pt"))
        _leave_broken_group()
    dist.destroy_process_group()


def _leave_broken_group() -> None:
    """Exit without tearing down a group that lost a rank: it cannot be torn down
    collectively, and its gloo threads sometimes abort the interpreter's normal exit
    ("terminate called without an active exception")."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
