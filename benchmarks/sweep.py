"""A λ sweep by ``netshrink.sweep`` against one ``netshrink.compress`` per budget.

Usage::

    python benchmarks/sweep.py [--quick] [--models mlp7,lenet5] [--chainings parallel,top_down] [--output PATH]

For each zoo model and chaining, on the same calibration images (Fashion-MNIST training
split, 1 torch thread): the time of separate group-lasso compressions (``debias=True``) at
every ``lam`` of the grid of ``reproduce robin``, of one ``netshrink.sweep`` over the same
budgets (statistics shared; every result must be the separate compression: kept units and
weights identical, checked), and of the sweep with ``warm_starts=True`` (solves started from
the previous λ's solution), with how many units each of its results keeps differently.

Numbers are printed and written as JSON to ``benchmarks/results/sweep.json``
(``sweep_quick.json`` for ``--quick``: 3 λ, 1,000 images, mlp7 only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

import netshrink  # noqa: E402
from netshrink import zoo  # noqa: E402
from netshrink.atomic import atomic_write_text  # noqa: E402
from netshrink.data import calibration_images  # noqa: E402
from netshrink.experiments.robin import FULL  # noqa: E402


def _largest_difference(first: netshrink.Compression, second: netshrink.Compression) -> float:
    """The largest entry-wise difference of two compressed models' tensors, relative to
    each tensor's largest entry."""
    a, b = first.model.state_dict(), second.model.state_dict()
    worst = 0.0
    for name, tensor in a.items():
        if tensor.is_floating_point():
            scale = float(b[name].abs().max()) or 1.0
            worst = max(worst, float((tensor - b[name]).abs().max()) / scale)
    return worst


def _kept(result: netshrink.Compression) -> list[list[int]]:
    return [layer.kept_indices for layer in result.layers]


def measure(model, calibration, lams: list[float], chaining: str) -> dict:
    """Separate compressions, the sweep and the warm-started sweep at ``lams``."""
    budgets = [{"lam": lam} for lam in lams]
    start = time.perf_counter()
    separate = [netshrink.compress(model, calibration, "group_lasso", chaining=chaining, lam=lam) for lam in lams]
    separate_seconds = time.perf_counter() - start
    start = time.perf_counter()
    swept = netshrink.sweep(model, calibration, "group_lasso", budgets, chaining=chaining)
    sweep_seconds = time.perf_counter() - start
    start = time.perf_counter()
    warm = netshrink.sweep(model, calibration, "group_lasso", budgets, chaining=chaining, warm_starts=True)
    warm_seconds = time.perf_counter() - start
    return {
        "chaining": chaining,
        "lams": lams,
        "separate_seconds": separate_seconds,
        "sweep_seconds": sweep_seconds,
        "warm_sweep_seconds": warm_seconds,
        "speedup": separate_seconds / sweep_seconds,
        "warm_speedup": separate_seconds / warm_seconds,
        "kept": [[layer.kept for layer in result.layers] for result in separate],
        "sweep_identical_kept": all(_kept(s) == _kept(r) for s, r in zip(separate, swept)),
        "sweep_largest_weight_difference": max(_largest_difference(r, s) for s, r in zip(separate, swept)),
        # per budget and cut: units kept by one of the two and not by the other
        "warm_kept_differences": [[len(set(a) ^ set(b)) for a, b in zip(_kept(s), _kept(w))]
                                  for s, w in zip(separate, warm)],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="mlp7", help="comma-separated zoo names (default: mlp7)")
    parser.add_argument("--chainings", default="parallel,top_down")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    size = 1000 if args.quick else FULL.calibration_size
    lams = [0.001, 0.01, 0.1] if args.quick else sorted(FULL.lam_grid)
    calibration = calibration_images(size, seed=FULL.calibration_seed)
    rows = []
    for name in args.models.split(","):
        model = zoo.load(name, progress=False)
        for chaining in args.chainings.split(","):
            row = {"model": name, **measure(model, calibration, lams, chaining)}
            rows.append(row)
            print(f"{name} {chaining}: {len(lams)} λ, separate {row['separate_seconds']:.1f} s, sweep "
                  f"{row['sweep_seconds']:.1f} s ({row['speedup']:.2f}×, identical: {row['sweep_identical_kept']}, "
                  f"weights within {row['sweep_largest_weight_difference']:.1e}), warm-started sweep "
                  f"{row['warm_sweep_seconds']:.1f} s ({row['warm_speedup']:.2f}×; units kept differently per "
                  f"budget: {[sum(d) for d in row['warm_kept_differences']]})", flush=True)
    output = args.output or ROOT / "results" / ("sweep_quick.json" if args.quick else "sweep.json")
    atomic_write_text(output, json.dumps({
        "calibration_size": size, "threads": 1, "rows": rows, "torch": torch.__version__,
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
    }, indent=2), overwrite=True)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
