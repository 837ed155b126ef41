"""Whole-model compression time against the calibration forward pass alone.

Usage::

    python benchmarks/compress_time.py [--quick] [--models mlp7,lenet5] [--lam 0.002] [--output PATH]

For each zoo model, measured in one run on the same calibration images (Fashion-MNIST
training split): the time of one forward pass of the calibration set through the model
(``netshrink.evaluate.predict_logits``, the floor of any data-driven method), and the
time of ``netshrink.compress(method="group_lasso", lam=…)`` with parallel and top-down
chaining — observation (Gram statistics in float64), the ℓ2,1 solves, the refits and
the rewrite. Target: compression ≤ 2× the forward pass. The cost split is reported from
the profile of one compression: statistics vs solves.

Numbers are printed and written as JSON to ``benchmarks/results/compress_time.json``
(``compress_time_quick.json`` for ``--quick``).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
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
from netshrink.evaluate import predict_logits  # noqa: E402


def timed(function, repeats: int = 1) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        best = min(best, time.perf_counter() - start)
    return best, value


def split(function) -> dict:
    """Seconds spent in observation, in the ℓ2,1 solver and in the refits, from a profile."""
    profile = cProfile.Profile()
    profile.enable()
    function()
    profile.disable()
    stats = pstats.Stats(profile)
    totals = {"observe": 0.0, "solve": 0.0, "refit": 0.0}
    for (filename, _, name), (_, _, _, cumulative, _) in stats.stats.items():
        if filename.endswith("observe.py") and name == "observe":
            totals["observe"] += cumulative
        elif filename.endswith("linalg/group_lasso.py") and name in ("group_lasso", "group_lasso_keep"):
            totals["solve"] += cumulative
        elif filename.endswith("methods/regression.py") and name == "refit":
            totals["refit"] += cumulative
    return totals


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default=None, help="comma-separated zoo names (default: mlp7)")
    parser.add_argument("--lam", type=float, default=0.002,
                        help="relative λ (fraction of λ_max); 0.002 keeps about 6% of mlp7 within 0.5 pt")
    parser.add_argument("--calibration-size", type=int, default=None)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    names = args.models.split(",") if args.models else ["mlp7"]
    size = args.calibration_size or (1000 if args.quick else 5000)
    calibration = calibration_images(size, seed=0)
    rows = []
    for name in names:
        model = zoo.load(name, progress=False)
        forward, _ = timed(lambda: predict_logits(model, calibration), repeats=3)
        for chaining in ("parallel", "top_down"):
            def run():
                return netshrink.compress(model, calibration, "group_lasso", lam=args.lam, chaining=chaining)

            seconds, result = timed(run)
            parts = split(run)
            rows.append({
                "model": name, "chaining": chaining, "calibration": size, "lam": args.lam,
                "forward_seconds": forward, "compress_seconds": seconds,
                "ratio": seconds / forward, "params_kept": result.ratio, **{f"{k}_seconds": v for k, v in parts.items()},
            })
            row = rows[-1]
            print(f"{name:<10} {chaining:<9} forward {forward:7.2f} s  compress {seconds:7.2f} s  "
                  f"ratio {row['ratio']:6.1f}×  (observe {row['observe_seconds']:.2f} s, solve "
                  f"{row['solve_seconds']:.2f} s, refit {row['refit_seconds']:.2f} s)  params kept "
                  f"{100 * result.ratio:.1f}%")
    output = args.output or ROOT / "results" / ("compress_time_quick.json" if args.quick else "compress_time.json")
    payload = {"rows": rows, "target_ratio": 2.0,
               "machine": {"python": platform.python_version(), "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "loadavg": list(os.getloadavg())}}
    atomic_write_text(output, json.dumps(payload, indent=2), overwrite=True)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
