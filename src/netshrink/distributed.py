"""Data-parallel calibration over a ``torch.distributed`` process group.

Inside an initialised process group of world size > 1 every rank passes its own shard of
the calibration data to :func:`netshrink.compress` (or ``torchrun -m netshrink compress``
gives each rank its slice). Then:

- :func:`check_same_job` compares, across the ranks, the model, the settings and what a
  calibration batch looks like (its shapes without the sample count, keys and dtypes);
- each rank observes its shard, and at the end of every observation pass
  :func:`all_reduce_statistics` sums the statistics over the ranks in float64 with the
  counts summed (R factors are merged by TSQR: the ranks' R factors are stacked and
  factorised again), so every rank holds what one process would have accumulated on
  the union of the shards;
- decisions are made once: by rank 0, which broadcasts them (:func:`decided_once`), or,
  in a parallel schedule, spread over the ranks largest first and gathered
  (:func:`decide_spread`). Every rank applies the same decisions and returns the same
  model.

Collectives go through the group's backend: gloo for CPU tensors, NCCL for CUDA tensors
(a group with one backend gets its tensors on that backend's device). A failed
collective (a rank that stopped, or one that did not arrive within the group's timeout)
raises :class:`~netshrink.errors.DistributedError` naming the step; a rank's error while
deciding is raised on every rank. Without a process group of world size > 1 nothing
here changes what one process does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import pickle
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from . import batches
from .errors import DistributedError, InvalidInputError
from .graph import Cut
from .layers import weight_matrix


class Ranks:
    """The ranks of the default process group, for statistics that sum themselves over it.

    A statistic supports distributed calibration with a method ``all_reduce(ranks)`` that
    replaces its sums by :meth:`sum` of them, its counts by :meth:`sum_counts` and an R
    factor by :meth:`merged_r` (see :class:`netshrink.observe.GramStatistic`).
    """

    def __init__(self):
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()
        self.backend = str(dist.get_backend())
        #: what the ranks are doing, for error messages
        self.step = "a collective"

    @contextlib.contextmanager
    def during(self, step: str):
        """Name the collectives run inside for error messages."""
        previous, self.step = self.step, step
        try:
            yield
        finally:
            self.step = previous

    def sum(self, tensors: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """The elementwise sums over the ranks of ``tensors`` (any shapes), in float64.

        A None entry (a rank that saw no rows there) counts as zeros of the shape the
        other ranks have; an entry that is None on every rank stays None. float64 tensors
        are summed in place.
        """
        shapes = self.gather([None if t is None else tuple(t.shape) for t in tensors])
        summed = []
        for index, tensor in enumerate(tensors):
            found = {rank: layout[index] for rank, layout in enumerate(shapes) if layout[index] is not None}
            if not found:
                summed.append(None)
                continue
            if len(set(found.values())) > 1:
                raise DistributedError(f"{self.step}: the ranks' sums have different shapes ({_by_rank(found)})")
            if tensor is None:
                tensor = torch.zeros(next(iter(found.values())), dtype=torch.float64, device=self._device(None))
            summed.append(self._all_reduce(tensor.to(torch.float64)))
        return summed

    def sum_counts(self, counts: Sequence[int]) -> list[int]:
        """The sums over the ranks of integer ``counts``."""
        total = self._all_reduce(torch.tensor(list(counts), dtype=torch.int64, device=self._device(None)))
        return [int(c) for c in total.tolist()]

    def merged_r(self, r: torch.Tensor | None, width: int) -> torch.Tensor:
        """TSQR merge: the R factor ``(width, width)`` of every rank's rows.

        ``r: (m, width)`` with ``ZᵀZ = rᵀr`` for this rank's rows ``Z`` (m ≤ width, None
        for no rows). The ranks' factors, padded with zero rows, are gathered, stacked
        ``(ranks·width, width)`` and factorised again: ``R`` with ``RᵀR = Σ_ranks ZᵀZ``.
        """
        device = self._device(r)
        block = torch.zeros(width, width, dtype=torch.float64, device=device)
        if r is not None:
            block[: r.shape[0]] = r.to(device=device, dtype=torch.float64)
        blocks = [torch.empty_like(block) for _ in range(self.size)]
        with self._collective():
            dist.all_gather(blocks, block)
        merged = torch.linalg.qr(torch.cat(blocks), mode="r").R
        return merged if r is None else merged.to(r.device)

    def gather(self, value) -> list:
        """``[value of rank 0, value of rank 1, ...]`` on every rank (picklable values)."""
        gathered = [None] * self.size
        with self._collective():
            dist.all_gather_object(gathered, value)
        return gathered

    def broadcast(self, value, source: int = 0):
        """Rank ``source``'s ``value`` on every rank (picklable values)."""
        box = [value if self.rank == source else None]
        with self._collective():
            dist.broadcast_object_list(box, src=source)
        return box[0]

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        device = self._device(tensor)
        moved = tensor.to(device)
        with self._collective():
            dist.all_reduce(moved)
        if moved is not tensor:
            tensor.copy_(moved)
        return tensor

    def _device(self, tensor: torch.Tensor | None) -> torch.device:
        """Where a collective on ``tensor`` runs: the device of the group's only backend,
        or the tensor's own with both (``"cpu:gloo,cuda:nccl"``)."""
        nccl, gloo = "nccl" in self.backend, "gloo" in self.backend
        if nccl and not gloo:
            return torch.device("cuda", torch.cuda.current_device())
        if gloo and not nccl or tensor is None:
            return torch.device("cpu")
        return tensor.device

    @contextlib.contextmanager
    def _collective(self):
        try:
            yield
        except (RuntimeError, ValueError) as exc:  # gloo/NCCL errors, timeouts (DistBackendError)
            detail = " ".join(str(exc).split())[:400]
            raise DistributedError(
                f"rank {self.rank} of {self.size}: {self.step} failed: another rank stopped, failed or did not "
                f"reach this step within the process group's timeout (init_process_group(timeout=...); "
                f"`netshrink compress --timeout`). See the other ranks' output. {type(exc).__name__}: {detail}"
            ) from exc


def current() -> Ranks | None:
    """The default process group's :class:`Ranks` when it is initialised with world size > 1."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Ranks()
    return None


def rank() -> int:
    """This process's rank (0 without a process group)."""
    ranks = current()
    return 0 if ranks is None else ranks.rank


# ------------------------------------------------------------------------------ statistics


def all_reduce_statistics(statistics: dict[str, object]) -> None:
    """Sum ``{cut name: statistic}`` over the ranks, in place; nothing without a group.

    Every rank must pass the statistics of the same cuts, accumulated on its own shard and
    not yet read. Each statistic's ``all_reduce(ranks)`` (:class:`Ranks`) sums its float64
    sums and its counts, so afterwards it is what one process would have accumulated on
    the union of the shards.

    Raises:
        InvalidInputError: a statistic without ``all_reduce`` (a user method's own).
        DistributedError: the ranks observed different cuts, or a collective failed.
    """
    ranks = current()
    if ranks is None:
        return
    with ranks.during("all-reducing the statistics (comparing the observed cuts)"):
        names = ranks.gather(list(statistics))
    if any(other != names[0] for other in names):
        raise DistributedError(f"the ranks observed different cuts: {_by_rank(dict(enumerate(names)))}")
    for name, statistic in statistics.items():
        reduce = getattr(statistic, "all_reduce", None)
        if reduce is None:
            kind = type(statistic)
            raise InvalidInputError(
                f"the statistic of cut {name!r} is a {kind.__module__}.{kind.__qualname__}, which cannot be summed "
                "over the ranks of the process group: give it a method all_reduce(self, ranks) that replaces its "
                "sums by ranks.sum([...]) (float64) and its counts by ranks.sum_counts([...]) (an R factor by "
                "ranks.merged_r(r, width)), as netshrink.observe.GramStatistic does; or compress in one process"
            )
        with ranks.during(f"all-reducing the statistics of cut {name!r}"):
            reduce(ranks)


# ------------------------------------------------------------------------------ checks


def check_same_job(model: nn.Module, example, settings: Mapping) -> None:
    """Check that every rank compresses the same model with the same settings on shards
    of the same kind; nothing without a group.

    ``example`` is the rank's first calibration batch: its shapes without the sample
    count, keys and dtypes must agree (sample counts may differ). ``settings`` is
    ``{name: value}`` of the compression's options (compared by their reprs).

    Raises:
        InvalidInputError: naming the ranks and what differs.
    """
    ranks = current()
    if ranks is None:
        return
    with ranks.during("comparing the ranks' models, settings and calibration shards"):
        everyone = ranks.gather({"shard": describe_shard(example), "settings": dict(settings),
                                 "model": _fingerprint(model)})
    shards = {r: mine["shard"] for r, mine in enumerate(everyone)}
    if len(set(shards.values())) > 1:
        raise InvalidInputError(
            f"the ranks pass calibration shards of different shapes ({_by_rank(shards)}); every rank's samples "
            "must have the same shape, keys and dtype (their numbers may differ)"
        )
    for key in settings:
        values = {r: repr(mine["settings"].get(key)) for r, mine in enumerate(everyone)}
        if len(set(values.values())) > 1:
            raise InvalidInputError(f"the ranks compress with different {key} ({_by_rank(values)}); every rank "
                                    "must call compress with the same method and options")
    for r, mine in enumerate(everyone[1:], start=1):
        difference = _model_difference(everyone[0]["model"], mine["model"])
        if difference:
            raise InvalidInputError(
                f"the ranks compress different models: {difference} on rank 0 and rank {r}. Every rank must "
                "build or load the same weights (seed the initialisation, or load one checkpoint)"
            )


def describe_shard(batch) -> str:
    """A batch's shapes and dtypes without its sample count ``N``, e.g.
    ``(N, 1, 28, 28) float32``; per key for a keyword batch, where the token axis of an
    ``attention_mask: (N, T)`` is shown as ``T`` (its length varies with the padding)."""
    if not isinstance(batch, Mapping):
        return _shape(batch, None)
    mask = batches.row_mask(batch)
    tokens = None if mask is None else mask.shape[1]
    parts = [f"{key}: {_shape(value, tokens) if isinstance(value, torch.Tensor) else type(value).__name__}"
             for key, value in sorted(batch.items())]
    return "{" + ", ".join(parts) + "}"


def _shape(tensor: torch.Tensor, tokens: int | None) -> str:
    dims = ["N", *("T" if axis == 1 and size == tokens else str(size)
                   for axis, size in enumerate(tensor.shape) if axis > 0)][: tensor.ndim]
    return f"({', '.join(dims)}) {str(tensor.dtype).removeprefix('torch.')}"


def _fingerprint(model: nn.Module) -> list[tuple]:
    """``(name, shape, dtype, Σx, Σ|x|)`` of every parameter and buffer."""
    entries = []
    for name, tensor in model.state_dict().items():
        values = tensor.detach().to(torch.float64)
        entries.append((name, tuple(tensor.shape), str(tensor.dtype), float(values.sum()), float(values.abs().sum())))
    return entries


def _model_difference(first: list[tuple], other: list[tuple]) -> str | None:
    """What differs between two fingerprints (sums compared to 1e-6 of ``Σ|x|``), or None."""
    if [entry[:3] for entry in first] != [entry[:3] for entry in other]:
        mine = {entry[0]: entry[1:3] for entry in first}
        theirs = {entry[0]: entry[1:3] for entry in other}
        name = next(n for n in (*mine, *theirs) if mine.get(n) != theirs.get(n))
        return f"{name!r} is {mine.get(name, 'absent')} and {theirs.get(name, 'absent')}"
    for (name, _, _, total, size), (_, _, _, their_total, _) in zip(first, other):
        if abs(total - their_total) > 1e-6 * max(size, 1e-30):
            return f"{name!r} holds other values (sums {total:.9g} and {their_total:.9g})"
    return None


def _by_rank(values: Mapping[int, object]) -> str:
    """``rank 0, 2: A; rank 1: B`` for ``{rank: value}``."""
    groups: dict[str, list[int]] = {}
    for r, value in values.items():
        groups.setdefault(str(value), []).append(r)
    return "; ".join(f"rank{'s' if len(rs) > 1 else ''} {', '.join(map(str, rs))}: {value}"
                     for value, rs in groups.items())


def shard(samples: torch.Tensor, what: str) -> torch.Tensor:
    """This rank's equal slice of ``samples`` (contiguous, in rank order); all of them
    without a group.

    Raises:
        InvalidInputError: the world size does not divide ``len(samples)`` (``what`` says
            what they are and how to choose their number).
    """
    ranks = current()
    if ranks is None:
        return samples
    count, size = len(samples), ranks.size
    if count % size:
        lower, upper = count - count % size, count + size - count % size
        raise InvalidInputError(
            f"the {count} {what} are dealt to {size} ranks in equal slices, and {size} does not divide {count}: "
            f"ask for a multiple of {size} (e.g. {lower} or {upper})"
        )
    share = count // size
    return samples[ranks.rank * share:(ranks.rank + 1) * share]


# ------------------------------------------------------------------------------ decisions


def decided_once(method):
    """``method`` with ``decide`` run on rank 0 only, every rank returning rank 0's
    Decision (or raising its error); ``method`` itself without a group."""
    ranks = current()
    return method if ranks is None else _DecidedOnRankZero(method, ranks)


class _DecidedOnRankZero:
    """A method whose decisions rank 0 makes and broadcasts; everything else is the method's."""

    def __init__(self, method, ranks: Ranks):
        self.method, self.ranks = method, ranks

    def __getattr__(self, name):
        return getattr(self.method, name)

    def decide(self, cut: Cut, statistic, consumers: list[nn.Module], producers: list[nn.Module]):
        outcome = None
        if self.ranks.rank == 0:
            outcome = _attempt(lambda: self.method.decide(cut, statistic, consumers, producers))
        with self.ranks.during(f"broadcasting rank 0's decision at cut {cut.name!r}"):
            outcome = self.ranks.broadcast(outcome)
        return _received(outcome, _device(consumers))


def decide_spread(method, cuts: Sequence[Cut], statistics: dict[str, object],
                  layers: Callable[[Cut], tuple[list[nn.Module], list[nn.Module]]],
                  progress: bool = False) -> dict[str, object]:
    """Decide the independent cuts of a parallel schedule, each on one rank of the process
    group (world size > 1).

    The cuts are dealt largest first (cost ``Σ d²·out`` over the consumers ``(out, d)``)
    to the least loaded rank; each rank decides its own from its (reduced) statistics,
    then every rank gathers all the decisions. ``statistics`` is emptied (a rank only
    reads its own cuts'); ``layers(cut)`` gives the cut's (consumers, producers).
    Returns ``{cut name: Decision}``; an error on any rank is raised on every rank.
    """
    ranks = current()
    costs = {cut.name: sum(weight_matrix(layer).shape[0] * weight_matrix(layer).shape[1] ** 2
                           for layer in layers(cut)[0]) for cut in cuts}
    owners = _dealt(cuts, costs, ranks.size)
    mine = sorted((cut for cut in cuts if owners[cut.name] == ranks.rank), key=lambda cut: -costs[cut.name])
    if progress:
        from tqdm.auto import tqdm

        mine = tqdm(mine, desc=f"compress (rank {ranks.rank})", unit="layer", leave=False)
    outcomes = {}
    for cut in mine:
        statistic = statistics.pop(cut.name)
        outcomes[cut.name] = _attempt(lambda: method.decide(cut, statistic, *layers(cut)))
        if outcomes[cut.name][0] == "error":
            break  # the job fails: the other cuts need not be decided
    statistics.clear()
    with ranks.during("gathering the decisions of the parallel schedule"):
        gathered = ranks.gather(outcomes)
    every = {name: outcome for outcomes in gathered for name, outcome in outcomes.items()}
    failed = [cut.name for cut in cuts if every.get(cut.name, ("ok",))[0] == "error"]
    if failed:  # this rank's own exception when it is the first, else the copy of another rank's
        raise outcomes.get(failed[0], every[failed[0]])[1]
    return {cut.name: _received(every[cut.name], _device(layers(cut)[0])) for cut in cuts}


def _dealt(cuts: Sequence[Cut], costs: Mapping[str, int], size: int) -> dict[str, int]:
    """``{cut name: rank}``: largest cost first, each to the rank with the least so far."""
    loads = [0] * size
    owners = {}
    for cut in sorted(cuts, key=lambda cut: -costs[cut.name]):  # stable: ties in cut order
        owner = min(range(size), key=lambda r: loads[r])
        owners[cut.name] = owner
        loads[owner] += costs[cut.name]
    return owners


def _attempt(decide: Callable[[], object]) -> tuple:
    """``("ok", decision with CPU tensors)`` or ``("error", a picklable exception)``."""
    try:
        return "ok", _map_tensors(decide(), lambda t: _Shipped(t.cpu(), t.device.type != "cpu"))
    except Exception as exc:  # sent to every rank, which raises it
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # an exception that does not survive pickling goes as its message
            exc = DistributedError(f"{type(exc).__name__}: {exc}")
        return "error", exc


def _received(outcome: tuple, device: torch.device):
    """The decision of an :func:`_attempt`, its accelerator tensors on ``device``; or raise."""
    status, value = outcome
    if status == "error":
        raise value
    return _map_tensors(value, lambda shipped: shipped.tensor.to(device) if shipped.accelerated else shipped.tensor)


@dataclasses.dataclass(frozen=True)
class _Shipped:
    tensor: torch.Tensor
    accelerated: bool


def _map_tensors(decision, change):
    """``decision`` with ``change`` applied to its tensors (kept, weights, factors, shifts)."""

    def walk(value):
        if isinstance(value, (torch.Tensor, _Shipped)):
            return change(value)
        if isinstance(value, tuple):
            return tuple(walk(v) for v in value)
        return value

    return dataclasses.replace(decision, **{field: walk(getattr(decision, field))
                                            for field in ("kept", "consumer_weights", "factors", "bias_shifts")})


def _device(consumers: list[nn.Module]) -> torch.device:
    return next(consumers[0].parameters()).device


# ------------------------------------------------------------------------------ torchrun


@contextlib.contextmanager
def launched_group(timeout: float):
    """The process group of a ``torchrun`` launch (``WORLD_SIZE`` > 1 in the environment),
    gloo (the command line's models are on the CPU), destroyed on exit; nothing otherwise
    or when a group is already initialised. ``timeout``: seconds a rank waits for the
    others at a collective."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout))
    try:
        yield
    finally:
        dist.destroy_process_group()
