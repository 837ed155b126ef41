"""Peak memory of one cut's compression against the bytes of its float64 Gram (issue 13, item 3).

Usage::

    python benchmarks/cut_memory.py [--quick] [--threads T] [--timeout S] [--memory-limit GiB] [--output PATH]

Goal: the peak resident memory of compressing one cut is at most 2.2× the bytes of the
cut's float64 Gram statistic. The layer is VGG-19's first fully connected layer,
25,088 → 4,096 (``--quick``: 6,272 → 1,024, the same shape ratio), read from the
512 × 7 × 7 features of a small random conv net (``--quick``: 128 channels)::

    Conv2d(3, 64, 3) ReLU MaxPool(2)  Conv2d(64, C, 3) ReLU MaxPool(2)  Flatten
    Linear(49·C, out) ReLU  Linear(out, 10)          on synthetic 3 × 28 × 28 images

No ImageNet images or pretrained weights are used (none are reachable here): He-normal
weights, small random biases and Gaussian images, in float64 — so the Gram products are
exact float64 GEMMs and the cross term has its exact rank (below the number of samples),
which lets the solvers work in the reduced output space as they would on data with fewer
samples than outputs. (With a float32 model the Gram is a sum of float32 products whose
round-off fills the null space of the cross term at ~1e-10 relative, the rank-revealing
reduction keeps all 4,096 outputs, and a ``keep`` search at this width takes days here.)

Cases, each one ``netshrink.compress`` call in a fresh subprocess under an address-space
limit (``resource.RLIMIT_AS``, as ``benchmarks/multitask_scale.py``), ``chaining="parallel"``
(for one cut the same statistics and decision as the default top-down chaining, which
also deep-copies the model as a reference):

- ``group_lasso keep=0.5`` at the conv's channels (units of 49 inputs, Gram 25,088²);
- ``multitask_lasso lam=0.5`` (seed 002's published value for VGG-19's first fully
  connected layer) at ``layer="first"``: 25,088 single inputs served by a sampler.

Reported per case: ``baseline`` = peak RSS of the subprocess before ``compress`` (Python,
torch, netshrink, the model and the images), ``peak`` = its peak RSS at the end
(``ru_maxrss``, whole process, baseline included), the Gram's bytes ``d²·8``, the
ratios ``peak / Gram`` (the goal's measure) and ``(peak − baseline) / Gram`` (what the
compression itself added), the wall time of ``compress``, the units kept. A case that
times out or fails still reports the subprocess's peak RSS (from ``wait4``). Numbers go to
``benchmarks/results/cut_memory.json`` (``cut_memory_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

GOAL = 2.2  # peak RSS ÷ float64 Gram bytes
SHAPES = {False: (512, 4096, 256), True: (128, 1024, 128)}  # quick → (channels, outputs, images)
CASES = {
    "group_lasso keep=0.5": ("group_lasso", {"keep": 0.5}),
    "multitask_lasso lam=0.5": ("multitask_lasso", {"lam": 0.5}),
}


def network(channels: int, outputs: int) -> nn.Module:
    """The conv features (``channels`` × 7 × 7 on 28 × 28 inputs) and the wide layer, float64, He-normal."""
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(channels * 49, outputs), nn.ReLU(), nn.Linear(outputs, 10),
    ).double()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.weight.normal_(0.0, (2.0 / module.weight[0].numel()) ** 0.5, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)
    return model.eval()


def case(name: str, quick: bool) -> dict:
    """One compression in this process; returns its numbers (run in a subprocess)."""
    import netshrink

    channels, outputs, samples = SHAPES[quick]
    model = network(channels, outputs)
    images = torch.randn(samples, 3, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    method, options = CASES[name]
    where = {"layer": "first"} if method == "multitask_lasso" else {"layers": ["3"]}
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    result = netshrink.compress(model, images, method, chaining="parallel", batch_size=32, **where, **options)
    seconds = time.perf_counter() - start
    (report,) = result.layers
    return {"case": name, "inputs": channels * 49, "outputs": outputs, "samples": samples, "units": report.total,
            "kept": report.kept, "error": report.error, "seconds": seconds, "baseline_bytes": baseline}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per case (default 6 hours; 30 minutes with --quick)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--memory-limit", type=float,
                        default=0.9 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
                        help="address-space limit of each case in GiB (default: 90%% of the memory)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # a CASES key, in a subprocess
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.case:
        # an allocation beyond the limit fails with an error instead of bringing in the
        # out-of-memory killer
        limit = int(args.memory_limit * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(json.dumps(case(args.case, args.quick)))
        return 0
    timeout = args.timeout if args.timeout is not None else (1800.0 if args.quick else 6 * 3600.0)
    channels, outputs, _ = SHAPES[args.quick]
    gram_bytes = (channels * 49) ** 2 * 8
    print(f"one cut {channels * 49:,} -> {outputs:,} (random He weights, synthetic images: no ImageNet); "
          f"float64 Gram {gram_bytes / 1e9:.2f} GB; goal peak RSS <= {GOAL} x Gram", flush=True)
    print(f"{'case':<26} {'kept':>12} {'baseline GiB':>12} {'peak GiB':>9} {'peak/Gram':>9} "
          f"{'added/Gram':>10} {'seconds':>8}  goal", flush=True)
    rows = [_run(name, args, timeout, gram_bytes) for name in CASES]
    output = args.output or ROOT / "results" / ("cut_memory_quick.json" if args.quick else "cut_memory.json")
    payload = {
        "goal": f"peak RSS <= {GOAL} x float64 Gram bytes",
        "model": "Conv2d(3,64,3) ReLU MaxPool2 Conv2d(64,C,3) ReLU MaxPool2 Flatten Linear(49C,out) ReLU "
                 "Linear(out,10), float64, He-normal weights, random biases, Gaussian 3x28x28 images",
        "counted": "ru_maxrss of the whole subprocess (Python, torch, netshrink, model, images included); "
                   "baseline_bytes is its peak before compress",
        "chaining": "parallel", "gram_bytes": gram_bytes, "rows": rows, "threads": args.threads,
        "memory_limit_gib": args.memory_limit, "timeout_seconds": timeout,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
                    "loadavg": list(os.getloadavg())},
    }
    from netshrink.atomic import atomic_write_text

    atomic_write_text(output, json.dumps(payload, indent=2), overwrite=True)
    print(f"wrote {output}")
    return 0


def _run(name: str, args, timeout: float, gram_bytes: int) -> dict:
    """One case in a subprocess; its peak RSS comes from ``wait4`` whatever its outcome."""
    command = [sys.executable, __file__, "--threads", str(args.threads), "--memory-limit", str(args.memory_limit),
               "--case", name] + (["--quick"] if args.quick else [])
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        while True:
            pid, code, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout:
                child.send_signal(signal.SIGKILL)
                pid, code, usage = os.wait4(child.pid, 0)
                break
            time.sleep(1.0)
        child.returncode = os.waitstatus_to_exitcode(code)  # reaped here, not by Popen
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if time.perf_counter() - start > timeout and child.returncode == -signal.SIGKILL:
        status = f"timeout after {timeout:.0f} s"
    elif child.returncode != 0:
        status = "failed: " + (stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1][:300]
    else:
        status = "ok"
    peak = usage.ru_maxrss * 1024
    row = {"case": name, "status": status, "peak_bytes": peak, "gram_bytes": gram_bytes,
           "peak_over_gram": peak / gram_bytes, "wall_seconds": time.perf_counter() - start}
    if status == "ok":
        row.update(json.loads(stdout.strip().splitlines()[-1]))
        row["added_over_gram"] = (peak - row["baseline_bytes"]) / gram_bytes
    row["goal_met"] = status == "ok" and row["peak_over_gram"] <= GOAL
    _print_row(row)
    return row


def _print_row(row: dict) -> None:
    if row["status"] != "ok":
        print(f"{row['case']:<26} {row['status']} (peak {row['peak_bytes'] / 2**30:.2f} GiB, "
              f"{row['peak_over_gram']:.2f} x Gram)", flush=True)
        return
    kept = f"{row['kept']}/{row['units']}"
    print(f"{row['case']:<26} {kept:>12} {row['baseline_bytes'] / 2**30:>12.2f} {row['peak_bytes'] / 2**30:>9.2f} "
          f"{row['peak_over_gram']:>9.2f} {row['added_over_gram']:>10.2f} {row['seconds']:>8.1f}  "
          f"{'met' if row['goal_met'] else 'missed'}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
