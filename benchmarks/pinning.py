"""Thread pinning for the benchmarks: import before numpy, scipy or torch.

``THREADS`` is the value of ``--threads`` on the command line (default 1; 0 leaves the
libraries' defaults). When positive it is written to ``OMP_NUM_THREADS`` and the BLAS
libraries' variables before they load, so every solver of a benchmark runs with the same
thread count and ratios compare algorithms, not thread pools on a shared machine.
"""

from __future__ import annotations

import os
import sys


def _threads_from_argv(argv: list[str]) -> int:
    for index, item in enumerate(argv):
        if item == "--threads" and index + 1 < len(argv):
            return int(argv[index + 1])
        if item.startswith("--threads="):
            return int(item.split("=", 1)[1])
    return 1


THREADS = _threads_from_argv(sys.argv[1:])
if THREADS > 0:
    for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[_variable] = str(THREADS)
