"""Residual streams: joint pruning of the coupled group vs dynamic samplers (Robin §2.6).

Usage::

    python benchmarks/residual.py [--quick] [--method group_lasso] [--keep 0.5] [--output PATH]

A CIFAR-style ResNet for 1×28×28 inputs (stem, three stages of two basic blocks with
16/32/64 channels, projection shortcuts at the stride-2 stages) with random weights and
randomised BatchNorm statistics is compressed twice with the same method and ``keep``:

- ``coupling="joint"``: every residual stream is one coupled cut; all its writers lose
  the removed channels and all its readers are refitted on the kept ones;
- ``coupling="sampler"``: each reader of a stream selects its own channels with an
  ``index_select`` before the layer; the writers keep computing every channel.

Both are measured in one run: parameters, forward latency on CPU (batch 64, median of
``R`` runs after a warm-up) and the relative output error on held-out images, next to the
original model. Numbers are printed and written as JSON to
``benchmarks/results/residual.json`` (``residual_quick.json`` for ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

import netshrink  # noqa: E402
from netshrink.atomic import atomic_write_text  # noqa: E402


class Block(nn.Module):
    def __init__(self, n_in: int, n_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(n_out)
        self.conv2 = nn.Conv2d(n_out, n_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(n_out)
        self.project = stride != 1 or n_in != n_out
        if self.project:
            self.shortcut = nn.Conv2d(n_in, n_out, 1, stride=stride, bias=False)
            self.shortcut_bn = nn.BatchNorm2d(n_out)

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        skip = self.shortcut_bn(self.shortcut(x)) if self.project else x
        return F.relu(out + skip)


class ResNet(nn.Module):
    """Stem + 3 stages × 2 basic blocks (widths ``w, 2w, 4w``) + global pool + fc."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        blocks, n_in = [], width
        for stage, n_out in enumerate((width, 2 * width, 4 * width)):
            for index in range(2):
                blocks.append(Block(n_in, n_out, 2 if stage and not index else 1))
                n_in = n_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(n_in, classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.stem_bn(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def randomised(model: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm statistics and affine terms, as a trained network has."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


def images(count: int, seed: int) -> torch.Tensor:
    """Fashion-MNIST training images when installed, else standard normal noise."""
    try:
        from netshrink.data import calibration_images

        return calibration_images(count, seed=seed)
    except netshrink.errors.DatasetNotFoundError:
        return torch.randn(count, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def latency(model: nn.Module, batch: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        model(batch)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(batch)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--method", default="group_lasso")
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    width = 8 if args.quick else 16
    calibration_size = 300 if args.quick else 2000
    repeats = args.repeats or (5 if args.quick else 30)
    torch.manual_seed(0)
    model = randomised(ResNet(width), seed=1)
    calibration = images(calibration_size, seed=0)
    held_out = images(256, seed=1)[:256]
    batch = held_out[:64]
    with torch.inference_mode():
        reference = model(held_out)

    rows = [{"model": "original", "params": netshrink.count_parameters(model),
             "latency_ms": 1e3 * latency(model, batch, repeats), "relative_error": 0.0,
             "compress_seconds": 0.0}]
    for coupling in ("joint", "sampler"):
        start = time.perf_counter()
        result = netshrink.compress(model, calibration, args.method, keep=args.keep, coupling=coupling)
        seconds = time.perf_counter() - start
        with torch.inference_mode():
            error = float((result.model(held_out) - reference).norm() / reference.norm())
        rows.append({
            "model": coupling, "params": result.params_after,
            "latency_ms": 1e3 * latency(result.model, batch, repeats), "relative_error": error,
            "compress_seconds": seconds, "cuts": len(result.layers),
            "sampled_cuts": sum(layer.sampled for layer in result.layers),
        })
    base = rows[0]
    print(f"ResNet (widths {width}/{2 * width}/{4 * width}), {args.method} keep={args.keep}, "
          f"{calibration_size} calibration images, latency: batch {len(batch)}, median of {repeats}")
    print(f"{'model':<10} {'params':>10} {'params %':>9} {'latency ms':>11} {'latency %':>10} "
          f"{'rel. error':>11} {'compress s':>11}")
    for row in rows:
        print(f"{row['model']:<10} {row['params']:>10,} {100 * row['params'] / base['params']:>8.1f}% "
              f"{row['latency_ms']:>11.2f} {100 * row['latency_ms'] / base['latency_ms']:>9.1f}% "
              f"{row['relative_error']:>11.3g} {row['compress_seconds']:>11.2f}")
    joint, sampled = rows[1], rows[2]
    summary = {
        "params_ratio_sampler_over_joint": sampled["params"] / joint["params"],
        "latency_ratio_sampler_over_joint": sampled["latency_ms"] / joint["latency_ms"],
    }
    print(f"sampler / joint: parameters {summary['params_ratio_sampler_over_joint']:.2f}×, "
          f"latency {summary['latency_ratio_sampler_over_joint']:.2f}×")
    output = args.output or ROOT / "results" / ("residual_quick.json" if args.quick else "residual.json")
    payload = {
        "settings": {"width": width, "method": args.method, "keep": args.keep,
                     "calibration_size": calibration_size, "batch": len(batch), "repeats": repeats,
                     "quick": args.quick},
        "rows": rows, "summary": summary,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "loadavg": list(os.getloadavg())},
    }
    atomic_write_text(output, json.dumps(payload, indent=2), overwrite=True)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
