"""Whole-model compression time against its physical floor, and forward work against depth.

Usage::

    python benchmarks/compress_time.py [--quick] [--models mlp7,vgg-fmnist,minilm] [--output PATH]

For each model, measured in one run on the same calibration data:

- **floor**: one calibration forward pass (every batch through the model) plus, for
  every cut's consumer, the Gram product ``XᵀX`` of its input rows as a float32 GEMM (the
  rows captured in one pass; unfolded patches for a convolution). No data-driven method
  that reads each consumer's second moments can do less.
- **compress**: ``netshrink.compress`` with group lasso (mlp7 and vgg-fmnist: ``lam``
  0.002 of λ_max; MiniLM: ``keep`` 0.5 of the FFN neurons) with parallel and top-down
  chaining, and the ratio compress ÷ floor (goal: ≤ 2). The cost split (observation,
  ℓ2,1 solves, refits) comes from a profile of one more compression.

Zoo models are Fashion-MNIST networks (the training split is the calibration data);
MiniLM is all-MiniLM-L6-v2 on Debian fortunes (ImageNet and the usual text corpora are
not reachable here).

**Depth.** A synthetic ReLU MLP (width 256) of depth 4, 8 and 16 compressed top-down
(``keep`` 0.5), sequentially (cached activations, :mod:`netshrink.propagate`) and by whole
forward passes: the number of ``nn.Linear`` calls of the schedule per cut and the wall
time. Sequential work per cut is constant in depth (linear in all); whole passes grow
with depth (quadratic in all).

Numbers are printed and written as JSON to ``benchmarks/results/compress_time.json``
(``compress_time_quick.json`` for ``--quick``).
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import json
import os
import platform
import pstats
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

import netshrink  # noqa: E402
from netshrink import batches as batch_tools  # noqa: E402
from netshrink import propagate, zoo  # noqa: E402
from netshrink.atomic import atomic_write_text  # noqa: E402
from netshrink.graph import require_cuts  # noqa: E402
from netshrink.layers import input_rows  # noqa: E402
from netshrink.methods import make_method  # noqa: E402
from netshrink.observe import Calibration, observe  # noqa: E402


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


def forward_seconds(model: nn.Module, data: list) -> float:
    """One pass of every calibration batch through ``model`` (best of 3)."""
    def run():
        with torch.inference_mode():
            for batch in data:
                batch_tools.call(model, batch)

    model.eval()
    return timed(run, repeats=3)[0]


class _Rows:
    """Captures the float32 input rows of every consumer in one pass."""

    def __init__(self):
        self.rows: dict[str, list[torch.Tensor]] = {}

    def statistic(self, cut, consumers):
        outer = self

        class Capture:
            def update(self, index, current, original=None):
                path = cut.consumers[index]
                for chunk in input_rows(consumers[index], current.float()):
                    outer.rows.setdefault(path, []).append(chunk.float())

        return Capture()


def gram_seconds(model: nn.Module, data: list, cuts) -> float:
    """Float32 GEMMs ``XᵀX`` of every cut's consumer inputs (best of 3)."""
    capture = _Rows()
    observe(model, cuts, Calibration(data), capture.statistic)
    matrices = {path: torch.cat(chunks) for path, chunks in capture.rows.items()}

    def run():
        for rows in matrices.values():
            rows.T @ rows

    return timed(run, repeats=3)[0]


def load(name: str, quick: bool):
    """``(model, calibration batches, options)`` for a benchmark model."""
    if name == "minilm":
        from netshrink.experiments.minilm import FULL, QUICK, load_encoder, tokenized
        from netshrink.data.text import fortunes

        settings = QUICK if quick else FULL
        model, tokenizer = load_encoder()
        texts = fortunes(seed=0)[: settings.calibration_texts]
        return model, tokenized(texts, tokenizer, settings), {"keep": {"neurons": 0.5}}
    from netshrink.data import calibration_images

    images = calibration_images(1000 if quick else 5000, seed=0)
    return zoo.load(name, progress=False), list(torch.split(images, 1000)), {"lam": 0.002}


def model_rows(names: list[str], quick: bool) -> list[dict]:
    rows = []
    for name in names:
        model, data, options = load(name, quick)
        forward = forward_seconds(model, data)
        cuts = [cut for cut in require_cuts(model, "joint", data[0])[0]
                if "keep" not in options or cut.kind in options["keep"]]
        floor = forward + gram_seconds(model, data, cuts)
        for chaining in ("parallel", "top_down"):
            def run():
                return netshrink.compress(model, data, "group_lasso", chaining=chaining, **options)

            seconds, result = timed(run)
            parts = split(run)
            rows.append({
                "model": name, "chaining": chaining, "samples": sum(batch_tools.size(b) for b in data),
                "options": {k: v for k, v in options.items()}, "cuts": len(cuts),
                "forward_seconds": forward, "floor_seconds": floor, "compress_seconds": seconds,
                "ratio_to_floor": seconds / floor, "ratio_to_forward": seconds / forward,
                "params_kept": result.ratio, **{f"{k}_seconds": v for k, v in parts.items()},
            })
            row = rows[-1]
            print(f"{name:<10} {chaining:<9} forward {forward:6.2f} s  floor {floor:6.2f} s  compress "
                  f"{seconds:7.2f} s  ÷ floor {row['ratio_to_floor']:5.2f}  (observe {row['observe_seconds']:.2f} s, "
                  f"solve {row['solve_seconds']:.2f} s, refit {row['refit_seconds']:.2f} s)  params kept "
                  f"{100 * result.ratio:.1f}%", flush=True)
    return rows


class _LinearCalls:
    def __enter__(self):
        self.calls = 0

        def hook(module, _inputs):
            if isinstance(module, nn.Linear):
                self.calls += 1

        self.handle = nn.modules.module.register_module_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def depth_rows(quick: bool) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    samples = 1000 if quick else 4000
    for depth in (4, 8, 16):
        layers: list[nn.Module] = [nn.Linear(64, 256), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(256, 256), nn.ReLU()]
        model = nn.Sequential(*layers, nn.Linear(256, 10)).eval()
        calibration = Calibration(torch.randn(samples, 64), batch_size=500)
        cuts, _ = require_cuts(model, "joint", calibration.first())
        for sequential in (True, False):
            strategy = make_method("group_lasso", keep=0.5)
            strategy.prepare(model, cuts)
            shrunk = copy.deepcopy(model)
            with _LinearCalls() as counter:
                start = time.perf_counter()
                propagate.top_down(shrunk, cuts, calibration, strategy, sequential=sequential)
                seconds = time.perf_counter() - start
            rows.append({"depth": depth, "cuts": len(cuts), "sequential": sequential,
                         "linear_calls": counter.calls, "calls_per_cut": counter.calls / len(cuts),
                         "seconds": seconds})
            print(f"depth {depth:>2} {'sequential' if sequential else 'whole passes':<12} Linear calls "
                  f"{counter.calls:>5} ({counter.calls / len(cuts):6.1f} per cut)  {seconds:6.2f} s", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="mlp7,vgg-fmnist,minilm", help="comma-separated (zoo names, minilm)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    models = model_rows(args.models.split(",") if args.models else [], args.quick)
    depth = depth_rows(args.quick)
    output = args.output or ROOT / "results" / ("compress_time_quick.json" if args.quick else "compress_time.json")
    payload = {"models": models, "depth": depth, "goal_ratio_to_floor": 2.0,
               "machine": {"python": platform.python_version(), "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "loadavg": list(os.getloadavg())}}
    atomic_write_text(output, json.dumps(payload, indent=2), overwrite=True)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
