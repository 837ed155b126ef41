"""What every reproduction run shares: a fixed torch thread count, a progress log, JSON output."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
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


def paired_se_pt(first: torch.Tensor, second: torch.Tensor) -> float:
    """Standard error (pt) of the accuracy difference of two models on the same images:
    ``std(c₁ − c₂)/√N`` over the per-image correctness ``c`` (only disagreements count)."""
    difference = first.double() - second.double()
    return 100 * float(difference.std(unbiased=True)) / math.sqrt(difference.numel())


def plain(value):
    """``value`` as plain JSON types: numpy/torch scalars and arrays to numbers and lists,
    non-finite floats to None (JSON has no NaN), dict keys to strings."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return plain(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def write_json(path: Path, data) -> None:
    """Write ``data`` (see :func:`plain`) as indented JSON to ``path`` (inside an atomic folder)."""
    path.write_text(json.dumps(plain(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def versions(*extra: str) -> dict:
    """Versions of numpy, torch, matplotlib, netshrink and the modules named in ``extra``."""
    import importlib

    import matplotlib

    import netshrink

    found = {"numpy": np.__version__, "torch": torch.__version__, "matplotlib": matplotlib.__version__,
             "netshrink": getattr(netshrink, "__version__", "unknown")}
    for name in extra:
        found[name] = importlib.import_module(name).__version__
    return found


@contextlib.contextmanager
def output_folder(out, overwrite: bool):
    """The folder a reproduction writes, atomically: yields a temporary folder that
    replaces ``out`` only when the block completes.

    An existing ``out`` is refused with OutputExistsError before any work is done,
    unless ``overwrite``.
    """
    from netshrink.atomic import atomic_directory
    from netshrink.errors import OutputExistsError

    out = Path(out)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise OutputExistsError(
            f"{out} already exists; refusing to overwrite it. Choose another --out, delete "
            "it, or pass --force (overwrite=True)."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(out, overwrite=overwrite) as folder:
        yield Path(folder)


def source_digest() -> str:
    """SHA-256 of netshrink's Python source files (names and contents), so a journal written
    by other code is never resumed."""
    import hashlib

    import netshrink

    root = Path(netshrink.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class Journal:
    """Finished rows of a long run, one JSON line each, so an interrupted run resumes.

    The first line is the ``fingerprint`` (settings, versions, source digest); a journal whose
    fingerprint differs, or that cannot be read, is discarded. Each :meth:`append` is flushed
    to disk before it returns, so a run killed at any point loses at most the row in hand.
    """

    def __init__(self, path: Path, fingerprint: dict):
        self.path = Path(path)
        self._header = json.dumps(plain(fingerprint), sort_keys=True)
        self.rows: list[dict] = []
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (FileNotFoundError, UnicodeDecodeError):
            lines = []
        if lines and lines[0] == self._header:
            for line in lines[1:]:
                try:
                    self.rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a kill
                    break
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write(self._header + "\n" + "".join(json.dumps(row) + "\n" for row in self.rows), "w")

    def append(self, row: dict) -> None:
        row = plain(row)
        self._write(json.dumps(row) + "\n", "a")
        self.rows.append(row)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def _write(self, text: str, mode: str) -> None:
        with open(self.path, mode, encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
