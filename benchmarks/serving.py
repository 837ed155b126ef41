"""Serving speed: CPU latency and peak memory of original and compressed models.

Usage::

    python benchmarks/serving.py [--quick] [--models mlp7,lenet5,minilm] [--method group_lasso]
                                 [--threads 1] [--repeats R] [--output PATH]

Each model is compressed with netshrink's group lasso (ℓ2,1 selection with a
least-squares refit of the consumers) and both versions are timed by
:func:`netshrink.bench.bench` in PyTorch (eager, ``torch.inference_mode()``) and, after
an ONNX export (:func:`netshrink.onnx_export.export_onnx`, checked against PyTorch), in
onnxruntime on the CPU, at batch size 1 and 64, with a fixed number of threads (one by
default). Latency is the median of ``R`` calls after a warm-up; peak memory is defined
in :func:`netshrink.bench.bench` (the weights, activations and workspace of one forward
pass, above a process that has loaded its runtime).

- ``mlp7`` (784-2048-1024-1024-512-512-256-256-10 ReLU MLP) with ``keep=0.3``, and
  ``lenet5`` (Caffe LeNet-5) with ``keep=0.4``: the fraction of units per cut, weighted by
  the parameters each cut's units cost (10–20% of the parameters left), calibrated
  on Fashion-MNIST training images; timed on 1 and 64 images drawn with another seed.
- ``minilm``: the sentence encoder all-MiniLM-L6-v2 (a ``BertModel``, offline) with half
  of every layer's FFN neurons and attention heads removed (``keep={"neurons": 0.5,
  "heads": 0.5}``), calibrated on fortunes; timed on one unpadded text and on 64 texts
  padded to the longest. Its 11.7 M embedding parameters are not cut, so its parameter
  ratio stays near 0.77.

Goal, per model and runtime: the batch-1 latency ratio (compressed / original) is at most
the parameter ratio + 0.10. It is printed as met or not met.

``--quick`` uses a small calibration set, few repeats and texts of at most 64 tokens, and
compresses with ``magnitude`` at the same ``keep`` unless ``--method`` says otherwise: a
``keep`` budget gives every method the same layer widths (group lasso keeps fewer only in
a layer with fewer live units than the budget), hence the same serving cost, while group
lasso's λ searches take minutes (MiniLM: over 6 minutes for 64 texts on a busy 2-core
machine). When a zoo model is not trained and cached yet, ``--quick`` uses the untrained
architecture (said in the output) instead of training it. Numbers are printed and written as JSON to ``benchmarks/results/serving.json``
(``serving_quick.json`` for ``--quick``), atomically, with the versions, the thread count
and the load average of the machine, since concurrent jobs distort timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

import netshrink
from netshrink import zoo
from netshrink.atomic import atomic_write_text
from netshrink.bench import bench, table
from netshrink.errors import DatasetNotFoundError
from netshrink.experiments.runtime import plain

#: Budgets: ``keep`` per model (fraction of units per cut) for group lasso.
KEEP = {"mlp7": 0.3, "lenet5": 0.4, "minilm": {"neurons": 0.5, "heads": 0.5}}
#: The goal: batch-1 latency ratio <= parameter ratio + MARGIN.
MARGIN = 0.10
#: Tokens per text at most (MiniLM); 64 with --quick.
MAX_TOKENS = 128
METHODS = ("group_lasso", "magnitude")


def images(count: int, seed: int, notes: list[str]) -> torch.Tensor:
    """Fashion-MNIST training images when installed, else standard normal noise (noted)."""
    try:
        from netshrink.data import calibration_images

        return calibration_images(count, seed=seed)
    except DatasetNotFoundError:
        message = "Fashion-MNIST is not installed: images are standard normal noise"
        if message not in notes:
            notes.append(message)
        return torch.randn(count, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def compressed(model, calibration, method: str, keep, gap_tol: float):
    options = {"gap_tol": gap_tol} if method == "group_lasso" else {}
    return netshrink.compress(model, calibration, method, keep=keep, **options)


def zoo_case(name: str, calibration_size: int, quick: bool, method: str, gap_tol: float, notes: list[str]) -> dict:
    if quick and not zoo.info(name)["trained"]:
        model = zoo.build(name).eval()
        notes.append(f"{name} is not trained and cached: --quick uses the untrained architecture")
    else:
        model = zoo.load(name, progress=True)
    calibration = images(calibration_size, seed=0, notes=notes)
    held_out = images(64, seed=1, notes=notes)
    start = time.perf_counter()
    result = compressed(model, calibration, method, KEEP[name], gap_tol)
    return {"original": model, "compressed": result.model, "batch1": held_out[:1], "batch64": held_out,
            "calibration": calibration_size, "compress_seconds": time.perf_counter() - start,
            "budget": {"keep": KEEP[name]}}


def minilm_case(calibration_size: int, max_tokens: int, method: str, gap_tol: float, notes: list[str]) -> dict:
    from netshrink.data.text import fortunes
    from netshrink.experiments.minilm import load_encoder

    model, tokenizer = load_encoder()
    texts = fortunes(seed=0)
    calibration = sorted(texts[:calibration_size], key=len)  # by length: little padding
    batches = [dict(tokenizer(calibration[i:i + 32], padding=True, truncation=True, max_length=max_tokens,
                              return_tensors="pt"))
               for i in range(0, len(calibration), 32)]
    held_out = texts[calibration_size:calibration_size + 64]
    batch64 = dict(tokenizer(held_out, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"))
    batch1 = dict(tokenizer(held_out[:1], truncation=True, max_length=max_tokens, return_tensors="pt"))
    start = time.perf_counter()
    result = compressed(model, batches, method, KEEP["minilm"], gap_tol)
    notes.append(f"minilm: batch 1 has {batch1['input_ids'].shape[1]} tokens, batch 64 is padded to "
                 f"{batch64['input_ids'].shape[1]}")
    return {"original": model, "compressed": result.model, "batch1": batch1, "batch64": batch64,
            "calibration": calibration_size, "compress_seconds": time.perf_counter() - start,
            "budget": {"keep": KEEP["minilm"]}}


def goals(result: dict) -> dict:
    """``{runtime: {"latency_ratio", "bound", "met"}}`` at batch size 1."""
    bound = result["param_ratio"] + MARGIN
    found = {}
    for row in result["rows"]:
        if row["batch"] == 1:
            ratio = row["compressed_ms"] / row["original_ms"]
            found[row["runtime"]] = {"latency_ratio": ratio, "bound": bound, "met": ratio <= bound}
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="mlp7,lenet5,minilm", help="comma-separated: mlp7, lenet5, minilm")
    parser.add_argument("--method", choices=METHODS, default=None,
                        help="compression method (default group_lasso; magnitude with --quick)")
    parser.add_argument("--threads", type=int, default=1, help="threads of both runtimes (default 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 50; 5 quick)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(names) - set(KEEP))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(KEEP)}")
    method = args.method or ("magnitude" if args.quick else "group_lasso")
    repeats = args.repeats or (5 if args.quick else 50)
    warmup = 1 if args.quick else 10
    image_calibration = 300 if args.quick else 2000
    text_calibration = 64 if args.quick else 512
    max_tokens = 64 if args.quick else MAX_TOKENS
    gap_tol = 1e-2 if args.quick else 1e-4  # group lasso: the solver's relative duality gap
    started = time.perf_counter()
    models, notes = {}, []
    for name in names:
        try:
            if name == "minilm":
                case = minilm_case(text_calibration, max_tokens, method, gap_tol, notes)
            else:
                case = zoo_case(name, image_calibration, args.quick, method, gap_tol, notes)
        except DatasetNotFoundError as exc:  # the Hugging Face extra or the fortunes are missing
            print(f"{name}: skipped ({exc})")
            models[name] = {"skipped": str(exc)}
            continue
        result = bench(case["original"], case["compressed"], case["batch1"], case["batch64"],
                       threads=args.threads, repeats=repeats, warmup=warmup)
        met = goals(result)
        print(f"\n{name}: {method} {case['budget']}, {case['calibration']} calibration samples, "
              f"compressed in {case['compress_seconds']:.1f} s; ONNX "
              f"{result['onnx_bytes']['original'] / 2**20:.1f} -> {result['onnx_bytes']['compressed'] / 2**20:.1f} MiB, "
              f"largest relative difference to PyTorch {max(result['onnx_error'].values()):.1e}")
        print(table(result))
        for runtime, goal in met.items():
            print(f"goal {name} {runtime}: batch-1 latency ratio {goal['latency_ratio']:.3f} "
                  f"<= parameter ratio + {MARGIN:.2f} = {goal['bound']:.3f}: "
                  f"{'goal met' if goal['met'] else 'goal not met'}")
        models[name] = {"method": method, "budget": case["budget"], "calibration": case["calibration"],
                        "compress_seconds": case["compress_seconds"], **result, "goals": met}
    for note in notes:
        print(f"note: {note}")
    seconds = time.perf_counter() - started
    print(f"\ntotal {seconds:.0f} s")
    output = args.output or ROOT / "results" / ("serving_quick.json" if args.quick else "serving.json")
    payload = {
        "settings": {"quick": args.quick, "method": method, "threads": args.threads, "repeats": repeats,
                     "warmup": warmup, "image_calibration": image_calibration,
                     "text_calibration": text_calibration, "max_tokens": max_tokens,
                     "gap_tol": gap_tol if method == "group_lasso" else None, "margin": MARGIN},
        "models": models, "notes": notes, "seconds": seconds,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "onnxruntime": _version("onnxruntime"), "cpus": os.cpu_count(),
                    "loadavg": list(os.getloadavg())},
    }
    atomic_write_text(output, json.dumps(plain(payload), indent=2, allow_nan=False) + "\n", overwrite=True)
    print(f"wrote {output}")
    return 0


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    sys.exit(main())
