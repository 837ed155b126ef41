"""Serving speed and memory of an original and a compressed model, in PyTorch and onnxruntime.

>>> from netshrink.bench import bench, table
>>> result = bench(model, compressed, images[:1], images[:64])
>>> print(table(result))

For each runtime (``"pytorch"``, and ``"onnxruntime"`` unless ``onnx=False``) and each
of the two example batches (batch size 1 and 64, say) one :class:`BenchRow` holds the
median latency of both models, and their peak memory. Latency is wall time
(``time.perf_counter``) of one forward pass with a fixed number of threads; see
:func:`bench` for exactly what is timed and what "peak memory" is.

The onnxruntime rows need the ``onnx`` extra (``pip install 'netshrink[onnx]'``).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import json
import math
import os
import select
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import batches
from .api import count_parameters
from .errors import InvalidInputError, NetshrinkError
from .onnx_export import check_onnx, evaluating, export_onnx, feeds, file_size, session
from .evaluate import model_device
from .timing import forward_call, latency_ms, thread_count

__all__ = ["BenchRow", "bench", "peak_mib_onnxruntime", "peak_mib_pytorch", "table"]

#: Seconds after which a memory measurement is abandoned (its value is then NaN).
PEAK_TIMEOUT = 600.0
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class BenchRow:
    """One runtime at one batch size: latency (ms) and peak memory (MiB) of both models.

    ``speedup`` is ``original_ms / compressed_ms`` (above 1: the compressed model is faster).
    """

    runtime: str  # "pytorch" | "onnxruntime"
    batch: int
    original_ms: float
    compressed_ms: float
    speedup: float
    original_peak_mib: float
    compressed_peak_mib: float


# --------------------------------------------------------------------------------------
# peak memory
# --------------------------------------------------------------------------------------


def _status_kib(key: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise NetshrinkError(f"{_STATUS} has no {key} line")


def _trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc), so that memory freed
    earlier cannot be reused unseen by the measurement."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def _reset_peak() -> int:
    """Reset the peak resident size (VmHWM) to the current one; return the current (KiB)."""
    _CLEAR_REFS.write_text("5")
    return _status_kib("VmRSS")


def _measurable() -> bool:
    return hasattr(os, "fork") and _STATUS.exists() and _CLEAR_REFS.exists()


def _child_peak_kib(model: nn.Module, batch) -> int:
    torch.set_num_threads(1)  # GNU OpenMP cannot start a thread pool in a forked child
    with torch.inference_mode():
        batches.call(model, batch)  # code and constants the forward touches become resident
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.sum()  # so do weights mapped from a file that the forward does not read whole
    _trim_heap()
    baseline = _reset_peak()
    private = copy.deepcopy(model).eval()
    with torch.inference_mode():
        batches.call(private, batch)
    return _status_kib("VmHWM") - baseline


def _wait_child(pid: int, read_fd: int, timeout: float) -> bytes | None:
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                return None
            chunk = os.read(read_fd, 4096)
            if not chunk:
                return data
            data += chunk
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)


def peak_mib_pytorch(model: nn.Module, batch, *, timeout: float = PEAK_TIMEOUT) -> float:
    """Peak memory (MiB) that holding a copy of ``model`` and running ``batch`` through it
    adds to this process; NaN where it cannot be measured (see :func:`bench`)."""
    if not _measurable() or model_device(model).type != "cpu":
        return math.nan
    batch = batches.to_device(batch, torch.device("cpu"))
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, report over the pipe, exit without cleanup
        code = 1
        try:
            os.close(read_fd)
            os.write(write_fd, str(_child_peak_kib(model, batch)).encode())
            code = 0
        finally:  # on any error the parent sees an empty report
            os._exit(code)
    os.close(write_fd)
    report = _wait_child(pid, read_fd, timeout)
    return int(report) / 1024 if report else math.nan


_ONNXRUNTIME_PEAK = textwrap.dedent("""
    import json, sys
    import numpy as np
    import onnxruntime

    def status(key):
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])

    path, inputs, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with np.load(inputs, allow_pickle=False) as arrays:
        feeds = {name: arrays[name] for name in arrays.files}
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = threads
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    baseline = status("VmRSS")
    session = onnxruntime.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    wanted = [value.name for value in session.get_inputs()]
    session.run(None, {name: feeds[name] for name in wanted})
    print(json.dumps({"peak_kib": status("VmHWM") - baseline}))
""")


def peak_mib_onnxruntime(path: str | os.PathLike, batch, *, threads: int = 1, workdir: str | os.PathLike | None = None,
                         timeout: float = PEAK_TIMEOUT) -> float:
    """Peak memory (MiB) of loading the ONNX file ``path`` into an onnxruntime session and
    running ``batch``, in a fresh Python process; NaN where it cannot be measured."""
    if not _measurable():
        return math.nan
    with tempfile.TemporaryDirectory(dir=workdir) as folder:
        inputs = Path(folder) / "inputs.npz"
        np.savez(inputs, **feeds(batch))
        try:
            done = subprocess.run([sys.executable, "-c", _ONNXRUNTIME_PEAK, str(path), str(inputs), str(threads)],
                                  capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return math.nan
    if done.returncode != 0:
        raise NetshrinkError(f"measuring onnxruntime's peak memory failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_kib"] / 1024


# --------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------


def _check_batch(batch, name: str):
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if not isinstance(batch, (torch.Tensor, Mapping)):
        raise InvalidInputError(f"{name} must be a tensor or a mapping of keyword tensors, got {type(batch).__name__}")
    batches.check(batch, 0)
    return batch


def bench(original: nn.Module, compressed: nn.Module, batch1, batch64, *, threads: int = 1, repeats: int = 50,
          warmup: int = 10, onnx: bool = True, workdir: str | os.PathLike | None = None) -> dict:
    """Latency and peak memory of ``original`` and ``compressed`` at two batch sizes.

    Args:
        original, compressed: the two models (neither is modified; both are run in
            eval mode, the flags restored afterwards).
        batch1, batch64: example batches (a tensor, or a mapping of keyword tensors
            such as a tokenizer's output) of batch size 1 and 64 (any two sizes work;
            the rows report the actual sizes).
        threads: intra-op threads of both runtimes (``torch.set_num_threads``, restored
            afterwards; onnxruntime ``intra_op_num_threads`` and ``inter_op_num_threads``
            with sequential execution).
        repeats, warmup: timed and untimed calls per measurement (:func:`latency_ms`).
        onnx: also export both models to ONNX (:func:`netshrink.onnx_export.export_onnx`,
            with ``batch64`` as the example) and time them in onnxruntime on the CPU.
        workdir: folder for the ONNX files and the memory probes' inputs (a temporary
            folder, deleted afterwards, when None).

    Latency: the median over ``repeats`` of the wall time of one call, after ``warmup``
    calls. PyTorch: ``model(batch)`` (``model(**batch)``) under
    ``torch.inference_mode()`` on the model's device. onnxruntime:
    ``session.run`` with the inputs already as numpy arrays.

    Peak memory (MiB, Linux only; NaN elsewhere) is the growth of the peak resident set
    size (``VmHWM`` in ``/proc/self/status``, reset through ``/proc/self/clear_refs``)
    caused by holding one copy of the model's weights and running one forward pass of
    the batch, above a process that has already loaded its runtime. So it counts the
    weights, the activations and the runtime's workspace at their peak, and not the
    Python interpreter, torch or onnxruntime themselves.

    - pytorch: measured in a child forked from this process (models on the CPU only).
      The child first runs the batch through the model once and reads every parameter
      and buffer (so that code pages, and weights memory-mapped from a file such as an
      embedding table of which a forward pass reads a few rows, are resident and not
      counted), gives the free heap back to the system (``malloc_trim``), resets the
      peak, then makes a private ``copy.deepcopy`` of the model (new memory for every
      parameter and buffer) and runs the batch through the copy once. The child uses one
      thread (GNU OpenMP cannot start threads after a fork), which changes the
      workspace of a multi-threaded run but not the weights or activations.
    - onnxruntime: measured in a fresh ``sys.executable`` process that has imported
      numpy and onnxruntime and loaded the batch (from an ``.npz`` file): the peak is
      reset, the session is created from the ``.onnx`` file with the same thread
      settings and runs the batch once. This includes what onnxruntime holds while it
      loads the file (the serialized model next to the weights it builds from it), its
      optimised copy of the weights and its memory arena.

    Returns:
        ``{"params_original", "params_compressed", "param_ratio" (compressed /
        original), "threads", "repeats", "warmup", "rows": [asdict(BenchRow), ...]}``,
        rows ordered by runtime then batch; with ``onnx`` also ``"onnx_bytes"`` (file
        sizes) and ``"onnx_error"`` (:func:`~netshrink.onnx_export.check_onnx` of each
        model on both batches: the largest relative difference to PyTorch).
    """
    for name, model in (("original", original), ("compressed", compressed)):
        if not isinstance(model, nn.Module):
            raise InvalidInputError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InvalidInputError(f"threads must be a positive integer, got {threads!r}")
    examples = [_check_batch(batch1, "batch1"), _check_batch(batch64, "batch64")]
    models = {"original": original, "compressed": compressed}
    params = {name: count_parameters(model) for name, model in models.items()}
    result = {
        "params_original": params["original"],
        "params_compressed": params["compressed"],
        "param_ratio": params["compressed"] / params["original"],
        "threads": threads,
        "repeats": repeats,
        "warmup": warmup,
        "rows": [],
    }
    with thread_count(threads), contextlib.ExitStack() as stack:
        for model in models.values():
            stack.enter_context(evaluating(model))
        for batch in examples:
            ms, peak = {}, {}
            for name, model in models.items():
                with torch.inference_mode():
                    ms[name] = latency_ms(forward_call(model, batch), repeats, warmup)
                peak[name] = peak_mib_pytorch(model, batch)
            result["rows"].append(_row("pytorch", batch, ms, peak))
        if onnx:
            folder = Path(workdir) if workdir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
            paths = {name: export_onnx(model, examples[1], folder / f"{name}.onnx", overwrite=True)
                     for name, model in models.items()}
            result["onnx_bytes"] = {name: file_size(path) for name, path in paths.items()}
            result["onnx_error"] = {name: check_onnx(paths[name], model, examples) for name, model in models.items()}
            sessions = {name: session(path, threads=threads) for name, path in paths.items()}
            for batch in examples:
                ms, peak = {}, {}
                for name, sess in sessions.items():
                    wanted = [value.name for value in sess.get_inputs()]
                    given = feeds(batch)
                    feed = {key: given[key] for key in wanted}
                    ms[name] = latency_ms(lambda sess=sess, feed=feed: sess.run(None, feed), repeats, warmup)
                    peak[name] = peak_mib_onnxruntime(paths[name], batch, threads=threads, workdir=folder)
                result["rows"].append(_row("onnxruntime", batch, ms, peak))
    return result


def _row(runtime: str, batch, ms: dict, peak: dict) -> dict:
    return asdict(BenchRow(
        runtime=runtime, batch=batches.size(batch), original_ms=ms["original"], compressed_ms=ms["compressed"],
        speedup=ms["original"] / ms["compressed"] if ms["compressed"] > 0 else math.inf,
        original_peak_mib=peak["original"], compressed_peak_mib=peak["compressed"],
    ))


def table(result: dict) -> str:
    """A plain-text table of :func:`bench`'s result: per runtime and batch, both
    latencies, the latency ratio (compressed / original), the parameter ratio, their
    difference and both peak memories."""
    param_ratio = result["param_ratio"]
    header = (f"{'runtime':<12} {'batch':>5} {'original ms':>12} {'compressed ms':>14} {'latency ratio':>14} "
              f"{'param ratio':>12} {'ratio - params':>15} {'original MiB':>13} {'compressed MiB':>15}")
    title = (f"parameters {result['params_original']:,} -> {result['params_compressed']:,} "
             f"(ratio {param_ratio:.3f}), {result['threads']} thread(s)")
    lines = [title, header, "-" * len(header)]
    for row in result["rows"]:
        ratio = row["compressed_ms"] / row["original_ms"] if row["original_ms"] > 0 else math.nan
        lines.append(
            f"{row['runtime']:<12} {row['batch']:>5} {row['original_ms']:>12.3f} {row['compressed_ms']:>14.3f} "
            f"{ratio:>14.3f} {param_ratio:>12.3f} {ratio - param_ratio:>+15.3f} "
            f"{row['original_peak_mib']:>13.1f} {row['compressed_peak_mib']:>15.1f}"
        )
    return "\n".join(lines)
