"""Scale runs of ``method="multitask_lasso"`` on full-size AlexNet and VGG-19 (time and memory).

Usage::

    python benchmarks/multitask_scale.py [--quick] [--threads T] [--timeout S] [--output PATH]

Seed 002 compresses the last, penultimate and first fully connected layers of VGG-19 and
AlexNet (ImageNet-size classifiers: AlexNet 9216 → 4096 → 4096 → 1000, VGG-19 25088 →
4096 → 4096 → 1000). No pretrained weights or ImageNet images are reachable here, so these
runs use the full architectures (written out below, as in torchvision) with random He
initialisation and synthetic Gaussian 224×224 images: they measure time and memory only,
not accuracy.

Each case is one ``netshrink.compress(model, images, "multitask_lasso", layer=ROLE,
lam=...)`` at the published lam (AlexNet last 0.05, VGG-19 last 0.01, penultimate/first
0.5), FISTA, in a fresh subprocess so that its peak resident memory (``ru_maxrss``) is its
own; reported: wall time of the whole call, the solver's share, peak memory, inputs kept.
A second subprocess per case times prox-Adam iterations from the same statistics (3
iterations, the ``D×K²`` gradient from the Gram statistics; the original's data form costs
``2·D·K·N`` per iteration instead) to give seconds per iteration. A case that exceeds
``--timeout`` is reported as such, and one that needs more than ``--memory-limit``
(default 90% of the machine's memory, an address-space limit on the subprocess) fails
with the allocation error, reported. Numbers go to ``benchmarks/results/multitask_scale.json``
(``multitask_scale_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

PUBLISHED_LAM = {("alexnet", "last"): 0.05, ("vgg19", "last"): 0.01}  # else 0.5 (pen, first)
SAMPLES = {"alexnet": (1024, 64), "vgg19": (256, 32)}  # (full, quick) synthetic images


def alexnet() -> nn.Module:
    """AlexNet as in torchvision (input 3×224×224, 61.1 M parameters)."""
    features = nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
    )
    classifier = nn.Sequential(
        nn.Flatten(), nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000),
    )
    return _he(nn.Sequential(features, classifier))


def vgg19() -> nn.Module:
    """VGG-19 (configuration E, no BatchNorm) as in torchvision (input 3×224×224, 143.7 M parameters)."""
    layers, previous = [], 3
    for item in (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                 512, 512, 512, 512, "M"):
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(previous, item, 3, padding=1), nn.ReLU()]
            previous = item
    classifier = nn.Sequential(
        nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 1000),
    )
    return _he(nn.Sequential(nn.Sequential(*layers), classifier))


def _he(model: nn.Module) -> nn.Module:
    """He (fan-in, ReLU) normal weights and zero biases, so activations keep their scale."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
                module.bias.zero_()
    return model.eval()


def case(network: str, role: str, samples: int, solver: str) -> dict:
    """One compression in this process; returns its numbers (run in a subprocess)."""
    import netshrink
    from netshrink.rewrite import layer_at

    model = {"alexnet": alexnet, "vgg19": vgg19}[network]()
    images = torch.randn(samples, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    lam = PUBLISHED_LAM.get((network, role), 0.5)
    options = {"lam": lam} if solver == "fista" else {"lam": lam, "solver": "prox_adam", "mu": 0.07, "max_iter": 3}
    start = time.perf_counter()
    result = netshrink.compress(model, images, "multitask_lasso", layer=role, batch_size=32, **options)
    seconds = time.perf_counter() - start
    (report,) = result.layers
    return {
        "network": network, "role": role, "solver": solver, "samples": samples, "lam": lam,
        "layer": report.consumers[0], "inputs": report.total, "kept": report.kept, "sampled": report.sampled,
        "outputs": layer_at(result.model, report.consumers[0]).out_features,
        "seconds": seconds, "solver_seconds": report.details["seconds"],
        "iterations": report.details["iterations"], "params_before": result.params_before,
        "params_after": result.params_after,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per case (default 3600; 600 with --quick)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--memory-limit", type=float,
                        default=0.9 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
                        help="address-space limit of each case in GiB (default: 90%% of the memory)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # NETWORK:ROLE:SAMPLES:SOLVER, in a subprocess
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.case:
        # a case that needs more memory than the machine has fails with an allocation
        # error instead of bringing in the out-of-memory killer
        limit = int(args.memory_limit * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        network, role, samples, solver = args.case.split(":")
        print(json.dumps(case(network, role, int(samples), solver)))
        return 0
    timeout = args.timeout if args.timeout is not None else (600.0 if args.quick else 3600.0)
    rows = []
    for network in ("alexnet", "vgg19"):
        samples = SAMPLES[network][1 if args.quick else 0]
        for role in ("last", "pen", "first"):
            for solver in ("fista", "prox_adam"):
                command = [sys.executable, __file__, "--threads", str(args.threads), "--memory-limit",
                           str(args.memory_limit), "--case", f"{network}:{role}:{samples}:{solver}"]
                start = time.perf_counter()
                try:
                    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
                except subprocess.TimeoutExpired:
                    row = {"network": network, "role": role, "solver": solver, "samples": samples,
                           "status": f"timeout after {timeout:.0f} s"}
                else:
                    if done.returncode != 0:
                        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
                        row = {"network": network, "role": role, "solver": solver, "samples": samples,
                               "status": "failed: " + last[:300]}
                    else:
                        row = {**json.loads(done.stdout.strip().splitlines()[-1]), "status": "ok"}
                row["wall_seconds"] = time.perf_counter() - start
                rows.append(row)
                _print_row(row)
    output = args.output or ROOT / "results" / ("multitask_scale_quick.json" if args.quick else "multitask_scale.json")
    payload = {"rows": rows, "timeout_seconds": timeout, "threads": args.threads,
               "machine": {"python": platform.python_version(), "torch": torch.__version__,
                           "cpu_count": os.cpu_count(), "loadavg": list(os.getloadavg())}}
    from netshrink.atomic import atomic_write_text

    atomic_write_text(output, json.dumps(payload, indent=2), overwrite=True)
    print(f"wrote {output}")
    return 0


def _print_row(row: dict) -> None:
    head = f"{row['network']:<8} {row['role']:<6} {row['solver']:<10} N={row['samples']:<5}"
    if row["status"] != "ok":
        print(f"{head} {row['status']}", flush=True)
        return
    per = (f"{row['solver_seconds'] / max(row['iterations'], 1):.2f} s/iteration"
           if row["solver"] == "prox_adam" else f"solver {row['solver_seconds']:.1f} s")
    print(f"{head} {row['layer']:<14} kept {row['kept']:>5}/{row['inputs']:<5} "
          f"{'sampler ' if row['sampled'] else ''}total {row['seconds']:7.1f} s, {per}, "
          f"peak {row['peak_rss_gib']:.2f} GiB", flush=True)


if __name__ == "__main__":
    sys.exit(main())
