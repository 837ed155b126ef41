"""What every reproduction run shares: a fixed torch thread count and a progress log."""

from __future__ import annotations

import contextlib
import sys
import time

import torch


@contextlib.contextmanager
def torch_threads(count: int | None):
    """Run the block with ``count`` torch threads (restored afterwards; None: unchanged).

    Reproductions pin their thread count: on a small machine whose cores are shared
    with other processes, multi-threaded dense eigenvalue/singular value routines on
    matrices of a few hundred to a thousand rows stall in thread synchronisation
    (measured: 0.5 s on one thread, 25 s on two, for the spectral norm of a 1024 × 1024
    matrix on a busy 2-core machine), which would make run times unpredictable.
    """
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class Log:
    """``log(message)`` prints ``[name  elapsed s] message`` on stderr when enabled."""

    def __init__(self, name: str, enabled: bool):
        self.name = name
        self.enabled = enabled
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[{self.name} {time.perf_counter() - self.start:6.1f} s] {message}", file=sys.stderr, flush=True)
