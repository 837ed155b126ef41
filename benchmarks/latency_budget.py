"""Latency budgets: the table alone against the table plus measurement, side by side.

Usage::

    python benchmarks/latency_budget.py [--quick] [--models lenet300,lenet5,mlp7,vgg-fmnist,minilm]
                                        [--budgets 0.8,0.6,0.4] [--output PATH]

``compress(model, data, method, latency=F)`` allocates the widths on a per-layer latency
table (:mod:`netshrink.budget.latency`), then times what it allocates against the original
at batch 1 and re-aims until the measurement is within ``F`` and within 1% of it
(:mod:`netshrink.budget.measured`). For every model and budget this benchmark reports, in
one run on one machine:

- **table only**: the measured batch-1 latency fraction of the model the table alone
  allocates at ``F`` (the first round; what ``latency=`` delivered before it measured),
  and the table's error there (predicted / measured − 1);
- **measured**: the fraction of the model ``compress`` returns, the stand-ins (models of
  the allocated shapes without the method's solves) and real compressions it took, and
  the compress time;
- **again**: an independent timing of the returned model against the original afterwards
  (:func:`netshrink.budget.measured.measure_against_original`): the timing noise.

Tables are measured afresh in this run (a scratch cache folder), so the table error is
the table's own and not that of a table measured under another load. Models: the zoo's
Fashion-MNIST networks, calibrated on 2,000 training images, and MiniLM-L6 (offline) on
256 fortunes texts; group lasso + least squares. ``--quick``: lenet300 and lenet5 at
0.7, magnitude (no solves), 300 images; an untrained architecture when a zoo model is not
cached (said in the output). Numbers are printed and written as JSON to
``benchmarks/results/latency_budget.json`` (``latency_budget_quick.json``), atomically,
with the load average of the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

import netshrink
from netshrink import zoo
from netshrink.atomic import atomic_write_text
from netshrink.budget.measured import TOLERANCE, measure_against_original
from netshrink.errors import DatasetNotFoundError
from netshrink.experiments.runtime import plain

MODELS = ("lenet300", "lenet5", "mlp7", "vgg-fmnist", "minilm")


def zoo_case(name: str, count: int, quick: bool, notes: list[str]):
    from netshrink.data import calibration_images

    if quick and not zoo.info(name)["trained"]:
        notes.append(f"{name} is not trained and cached: --quick uses the untrained architecture")
        model = zoo.build(name).eval()
    else:
        model = zoo.load(name, progress=True).eval()
    return model, calibration_images(count, seed=0)


def minilm_case(count: int):
    from netshrink.data.text import fortunes
    from netshrink.experiments.minilm import load_encoder

    model, tokenizer = load_encoder()
    texts = sorted(fortunes(seed=0)[:count], key=len)
    return model, [dict(tokenizer(texts[i:i + 32], padding=True, truncation=True, max_length=128,
                                  return_tensors="pt")) for i in range(0, len(texts), 32)]


def run_case(name: str, model, data, fraction: float, method: str) -> dict:
    start = time.perf_counter()
    result = netshrink.compress(model, data, method, latency=fraction)
    seconds = time.perf_counter() - start
    budget = result.budget
    first = budget["rounds"][0]
    again = measure_against_original(model, result.model, data if isinstance(data, torch.Tensor) else data[0])
    return {"model": name, "target": fraction, "table_only": first["measured"], "table_predicted": first["predicted"],
            "table_error": budget["table_error"], "measured": budget["achieved"], "again": again.fraction,
            "within": budget["achieved"] <= fraction, "in_window": (1 - TOLERANCE) * fraction <= budget["achieved"],
            "stand_ins": sum(r["stand_in"] for r in budget["rounds"]),
            "compressions": sum(not r["stand_in"] for r in budget["rounds"]), "seconds": seconds,
            "original_ms": budget["original_ms"], "compressed_ms": budget["measured_ms"],
            "params_ratio": result.params_after / result.params_before, "rounds": budget["rounds"]}


def table(rows: list[dict]) -> str:
    lines = ["| model | budget | table only: measured | table error | measured | again | stand-ins | "
             "compressions | compress (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['target']:g} | {r['table_only']:.4f}"
                     f"{'' if r['table_only'] <= r['target'] else ' (over)'} | {100 * r['table_error']:+.1f}% | "
                     f"{r['measured']:.4f} | {r['again']:.4f} | {r['stand_ins']} | {r['compressions']} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default=None, help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--budgets", default=None, help="comma-separated latency fractions (default 0.8,0.6,0.4)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    names = [n.strip() for n in (args.models or ("lenet300,lenet5" if args.quick else ",".join(MODELS))).split(",")
             if n.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    try:
        fractions = [float(f) for f in (args.budgets or ("0.7" if args.quick else "0.8,0.6,0.4")).split(",")]
    except ValueError:
        parser.error(f"--budgets takes comma-separated fractions, got {args.budgets!r}")
    method = "magnitude" if args.quick else "group_lasso"
    started = time.perf_counter()
    rows, notes, skipped = [], [], {}
    cases = {}
    for name in names:
        try:
            cases[name] = minilm_case(256) if name == "minilm" else zoo_case(name, 300 if args.quick else 2000,
                                                                             args.quick, notes)
        except DatasetNotFoundError as exc:
            print(f"{name}: skipped ({exc})")
            skipped[name] = str(exc)
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["NETSHRINK_CACHE"] = scratch  # the zoo is loaded: tables are measured afresh in this run
        for name, (model, data) in cases.items():
            for fraction in fractions:
                try:
                    row = run_case(name, model, data, fraction, method)
                except netshrink.budget.BudgetError as exc:
                    print(f"{name} latency={fraction:g}: refused: {exc}")
                    rows.append({"model": name, "target": fraction, "refused": str(exc)})
                    continue
                rows.append(row)
                print(f"{name} latency={fraction:g}: table only {row['table_only']:.4f}, "
                      f"measured {row['measured']:.4f} ({row['stand_ins']} stand-ins, "
                      f"{row['compressions']} compressions, {row['seconds']:.0f} s)", flush=True)
    done = [r for r in rows if "refused" not in r]
    print()
    print(table(done))
    over = sum(r["table_only"] > r["target"] for r in done)
    print(f"\ntable only: {over} of {len(done)} over the budget; measured: "
          f"{sum(not r['within'] for r in done)} over, {sum(r['in_window'] for r in done)} within "
          f"{100 * TOLERANCE:g}% under it")
    for note in notes:
        print(f"note: {note}")
    seconds = time.perf_counter() - started
    output = args.output or ROOT / "results" / ("latency_budget_quick.json" if args.quick else "latency_budget.json")
    payload = {"settings": {"quick": args.quick, "method": method, "models": names, "budgets": fractions,
                            "tolerance": TOLERANCE},
               "rows": rows, "skipped": skipped, "notes": notes, "seconds": seconds,
               "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                           "loadavg": list(os.getloadavg())}}
    atomic_write_text(output, json.dumps(plain(payload), indent=2, allow_nan=False) + "\n", overwrite=True)
    print(f"total {seconds:.0f} s; wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
