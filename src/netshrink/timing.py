"""Wall time of one forward pass: the median of repeats after warm-up, with a fixed thread count."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from . import batches
from .errors import InvalidInputError
from .evaluate import model_device


def latency_ms(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls, after
    ``warmup`` untimed calls (``time.perf_counter``)."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InvalidInputError(f"repeats must be a positive integer, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise InvalidInputError(f"warmup must be a non-negative integer, got {warmup!r}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


@contextlib.contextmanager
def thread_count(count: int):
    """Run the block with ``count`` torch threads (the previous count is restored)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def forward_call(model: nn.Module, batch) -> Callable[[], object]:
    """A function running one forward pass of ``batch`` (moved to the model's device; on
    a GPU it waits for the pass to finish)."""
    device = model_device(model)
    batch = batches.to_device(batch, device)
    if device.type == "cuda":
        def run():
            output = batches.call(model, batch)
            torch.cuda.synchronize(device)
            return output
        return run
    return lambda: batches.call(model, batch)
