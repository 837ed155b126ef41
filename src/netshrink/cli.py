"""The ``netshrink`` command line: compress | train | evaluate | reproduce."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import InvalidInputError, NetshrinkError
from .experiments.runtime import plain
from .graph import COUPLINGS
from .job import DEFAULT_HELD_OUT, DEFAULT_ZOO_CALIBRATION
from .methods import METHODS
from .schedule import CHAININGS


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except NetshrinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: every output is complete or absent; the inputs are untouched", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netshrink",
        description="Shrink trained PyTorch networks without retraining.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    compress = commands.add_parser(
        "compress",
        help="compress a model (zoo name, Hugging Face directory or module:factory) on calibration data",
        description="Compress a model on calibration data and report its size and its fidelity to the "
        "original on held-out samples (and accuracy when there are labels).",
        epilog="SOURCE: a zoo name (mlp7, lenet5, ...; calibrated on Fashion-MNIST, evaluated on its test "
        "set), a Hugging Face model directory (config.json + *.safetensors, loaded offline), or "
        "package.module:factory, a callable returning the architecture, with --weights FILE. "
        "Under `torchrun --nproc_per_node=N -m netshrink compress ...` the N ranks share the calibration "
        "samples in equal slices (N must divide their number) and rank 0 writes the outputs.",
    )
    compress.add_argument("source", metavar="SOURCE", help="zoo name, Hugging Face directory, or module:factory")
    compress.add_argument("--weights", type=Path, help="module:factory only: .safetensors, or a .pt/.pth state "
                          "dict (loaded with torch.load(weights_only=True); never a pickled model)")
    compress.add_argument("--method", default="interpolative", choices=sorted(METHODS),
                          help="compression method (default: %(default)s)")
    budget = compress.add_mutually_exclusive_group(required=True)
    budget.add_argument("--tol", type=float, help="interpolative: the ε of the stopping rule (≥ 0): "
                        "keep pivots with |r_kk|·‖W_consumer‖₂ > ε")
    budget.add_argument("--lam", type=float, help="group_lasso: ℓ2,1 weight as a fraction of each "
                        "layer's λ_max, in [0, 1] (0 is lossless on the calibration data); "
                        "multitask_lasso: the seed's absolute lam (e.g. 0.05, 0.5)")
    budget.add_argument("--keep", type=float, help="fraction of units kept per layer, in (0, 1]")
    budget.add_argument("--size", type=float, help="fraction of the model's parameters to keep; one allocation "
                        "gives every layer its width (any method)")
    budget.add_argument("--flops", type=float, help="fraction of the forward FLOPs (at the calibration input "
                        "shape) to keep; one allocation gives every layer its width")
    budget.add_argument("--latency", type=float, help="fraction of the batch-1 latency on this machine to keep "
                        "(a per-layer table, measured once and cached); one allocation gives every layer its width")
    compress.add_argument("--only", metavar="KINDS", help="compress only cuts of these kinds, e.g. neurons,heads "
                          "(kinds: neurons, channels, heads)")
    data = compress.add_argument_group("data")
    data.add_argument("--calibration", type=Path, metavar="PATH", help=".npy/.npz/.safetensors arrays, a folder of "
                      "PNG/JPEG images (class subfolders give labels), a text file (one sample per line) or .jsonl "
                      "(default for zoo models: the Fashion-MNIST training split)")
    data.add_argument("--labels", type=Path, help="class labels of the --calibration samples: .npy or a text file "
                      "with one integer per line")
    data.add_argument("--calibration-size", type=int, help="calibration samples drawn (default: every sample "
                      f"not held out; {DEFAULT_ZOO_CALIBRATION} training images for zoo models)")
    data.add_argument("--held-out", type=int, default=DEFAULT_HELD_OUT, help="samples of --calibration kept back "
                      "for the evaluation, never fitted on (at most half; default: %(default)s)")
    data.add_argument("--seed", type=int, default=0, help="seed of the draw (default: %(default)s)")
    data.add_argument("--batch-size", type=int, help="calibration batch size (default: 64, 1000 for zoo models)")
    data.add_argument("--image-size", type=_image_size, help="resize images to N or H,W")
    data.add_argument("--mean", type=_floats, help="per-channel mean subtracted from images in [0, 1], e.g. "
                      "0.485,0.456,0.406")
    data.add_argument("--std", type=_floats, help="per-channel standard deviation images are divided by")
    data.add_argument("--text-field", help=".jsonl: the field that holds the text (default: text)")
    data.add_argument("--max-length", type=int, default=128, help="text: tokens per sample at most "
                      "(default: %(default)s)")
    tuning = compress.add_argument_group("method options")
    tuning.add_argument("--no-debias", dest="debias", action="store_false", default=None,
                        help="group_lasso: skip the least-squares refit on the kept units")
    tuning.add_argument("--solver", choices=["fista", "altmin", "prox_adam"],
                        help="group_lasso: fista|altmin; multitask_lasso: fista|prox_adam (default: fista)")
    tuning.add_argument("--weighting", choices=["parameters", "uniform"],
                        help="group_lasso with --lam: scale each layer's fraction by the parameters "
                        "its units cost (parameters, the default) or not (uniform)")
    tuning.add_argument("--damping", type=float, help="obs: ridge of the selection as a fraction of the Gram's "
                        "mean diagonal (default 0.001)")
    tuning.add_argument("--layer", help="compress only the inputs of this nn.Linear: first, pen, last "
                        "(among the Linear layers in execution order) or a module path")
    tuning.add_argument("--mu", type=float, help="multitask_lasso with --solver prox_adam: Adam learning rate")
    tuning.add_argument("--max-seconds", type=float,
                        help="multitask_lasso with --solver prox_adam: wall-time cap of the solver")
    tuning.add_argument("--warm-start", action="store_true", default=None,
                        help="multitask_lasso: start the solver from the original weights")
    tuning.add_argument("--refit", action="store_true", default=None,
                        help="magnitude: refit the consumers by least squares")
    stages = compress.add_argument_group("stages (with --size, --flops or --latency; --quantize with any budget)")
    stages.add_argument("--lowrank", action="store_true", default=None,
                        help="also factorise the shrunk layers where a low rank pays, under the same allocation")
    stages.add_argument("--sample-inputs", action="store_true", default=None,
                        help="also select the input features of a first Linear layer (an MLP's pixels)")
    stages.add_argument("--quantize", choices=["int8"], help="store every Linear/Conv2d weight as int8, one "
                        "scale per output channel")
    stages.add_argument("--output-loss", choices=["auto", "kl", "mse"],
                        help="the loss whose increase the allocation estimates (default auto: kl for logits, "
                        "mse for features)")
    tuning.add_argument("--chaining", default="top_down", choices=list(CHAININGS),
                        help="order of fitting the layers (default: %(default)s)")
    tuning.add_argument("--coupling", default="joint", choices=list(COUPLINGS),
                        help="residual streams: prune jointly or sample per reader (default: %(default)s)")
    cache = compress.add_argument_group("activation cache (top-down chaining)")
    cache.add_argument("--cache-dir", type=Path, metavar="DIR", help="folder for activations spilled to "
                       "memory-mapped files (default: the system's temporary folder)")
    cache.add_argument("--cache-memory", type=float, metavar="GIB", help="GiB of activations held in memory "
                       "before spilling (default: 2)")
    cache.add_argument("--cache-bfloat16", action="store_true", help="store cached activations in bfloat16 "
                       "(half the bytes; rounds them)")
    output = compress.add_argument_group("output")
    output.add_argument("--out", type=Path, help="write the compressed model here: model.safetensors + "
                        "manifest.json (+ config.json and tokenizer files for Hugging Face models)")
    output.add_argument("--onnx", type=Path, metavar="FILE", help="export the compressed model to ONNX and "
                        "check it with onnxruntime on held-out inputs")
    output.add_argument("--report", type=Path, metavar="DIR", help="write an HTML report (index.html + report.json)")
    output.add_argument("--force", action="store_true", help="replace --out, --onnx and --report if they exist")
    output.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    compress.add_argument("--timeout", type=float, default=1800, help="under torchrun: seconds a rank waits for "
                          "the others at each exchange before the job fails (default: %(default)s)")
    compress.set_defaults(run=_compress)

    bench = commands.add_parser(
        "bench", help="serving latency and peak memory of an original and its compression",
        description="Batch-1 and batch-64 latency (median of repeats after warm-up, fixed threads) and peak "
        "memory of ORIGINAL and COMPRESSED, in PyTorch and in onnxruntime, against the parameter ratio.")
    bench.add_argument("original", metavar="ORIGINAL", help="the SOURCE that was compressed (zoo name, Hugging "
                       "Face directory, module:factory)")
    bench.add_argument("compressed", metavar="COMPRESSED", type=Path, help="the folder `compress --out` wrote")
    bench.add_argument("--weights", type=Path, help="module:factory only: the original's weights")
    bench.add_argument("--calibration", type=Path, metavar="PATH", help="inputs to time on, as for compress "
                       "(default for zoo models: Fashion-MNIST test images)")
    bench.add_argument("--image-size", type=_image_size, help="resize images to N or H,W")
    bench.add_argument("--mean", type=_floats, help="per-channel mean of images")
    bench.add_argument("--std", type=_floats, help="per-channel standard deviation of images")
    bench.add_argument("--text-field", help=".jsonl: the field that holds the text")
    bench.add_argument("--max-length", type=int, default=128, help="text: tokens per sample at most")
    bench.add_argument("--threads", type=int, default=1, help="threads of both runtimes (default: %(default)s)")
    bench.add_argument("--repeats", type=int, default=50, help="timed calls per measurement (default: %(default)s)")
    bench.add_argument("--no-onnx", dest="onnx", action="store_false", help="PyTorch only")
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    bench.set_defaults(run=_bench)

    train = commands.add_parser("train", help="train a zoo model into the cache")
    train.add_argument("model", metavar="MODEL")
    train.add_argument("--force", action="store_true", help="retrain even if cached")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="test accuracy of a zoo model or a saved compression")
    evaluate.add_argument("model", metavar="MODEL")
    evaluate.add_argument("--compressed", type=Path, help="directory written by `compress --out`")
    evaluate.set_defaults(run=_evaluate)

    reproduce = commands.add_parser("reproduce", help="reproduce a seed document's figures and tables")
    reproduce.add_argument("study", choices=["damle", "robin", "shenouda", "minilm", "budgets"],
                           help="which study: a seed document, or minilm (a pretrained transformer)")
    reproduce.add_argument("--quick", action="store_true", help="small sizes, for CI (< 3 minutes)")
    reproduce.add_argument("--goals", action="store_true",
                           help="budgets only: the quality goals' budgets alone, every scheme (about 25 minutes)")
    reproduce.add_argument("--out", type=Path, default=None, help="output folder (default: out/STUDY)")
    reproduce.add_argument("--force", action="store_true", help="replace an existing output folder")
    reproduce.set_defaults(run=_reproduce)
    return parser


def _compress(args) -> int:
    from .distributed import launched_group, rank
    from .job import run

    with launched_group(args.timeout):  # under torchrun; rank 0 prints and writes
        record, _ = run(args, progress=not (args.quiet or args.json) and rank() == 0)
    if record is None:
        return 0
    if args.json:
        print(json.dumps(plain(record)))
        return 0
    print(f"{record['source']}: {record['method']}, "
          + ", ".join(f"{k}={v}" for k, v in record["options"].items()))
    print(f"calibration: {record['calibration']}; evaluated on {record['held_out']}")
    for note in record["notes"]:
        print(f"note: {note}")
    print()
    print(_layer_table(record))
    fidelity = record["fidelity"]
    print()
    print(f"{'':<24} {'before':>12} {'after':>12}")
    print(f"{'parameters':<24} {record['params_before']:>12,} {record['params_after']:>12,}  "
          f"({100 * record['ratio']:.1f}%)")
    if "budget" in record:
        budget = record["budget"]
        print(f"{budget['unit']:<24} {'':>12} {'':>12}  ({100 * budget['achieved']:.2f}%: the budget is "
              f"{100 * budget['target']:.2f}%)")
    if record["options"].get("quantize"):
        print(f"{'bytes':<24} {record['bytes_before']:>12,} {record['bytes_after']:>12,}  "
              f"({100 * record['bytes_after'] / record['bytes_before']:.2f}%)")
    if "accuracy_before" in record:
        print(f"{'accuracy':<24} {100 * record['accuracy_before']:>11.2f}% {100 * record['accuracy_after']:>11.2f}%")
    print(f"{'relative output error':<24} {'':>12} {fidelity['relative_error']:>12.4g}")
    print(f"{'output cosine':<24} {'':>12} {fidelity['cosine']:>12.5f}")
    print(f"{'top-1 agreement':<24} {'':>12} {100 * fidelity['top1_agreement']:>11.2f}%")
    if "onnx" in record:
        onnx = record["onnx"]
        print(f"{'ONNX bytes':<24} {onnx['onnx_bytes_before']:>12,} {onnx['onnx_bytes_after']:>12,}  "
              f"(onnxruntime vs PyTorch: max relative difference {onnx['max_relative_difference']:.2g})")
        print(f"{'safetensors bytes':<24} {onnx['safetensors_bytes_before']:>12,} {onnx['safetensors_bytes_after']:>12,}")
    written = [record[key] for key in ("out", "report") if key in record] + (
        [record["onnx"]["path"]] if "onnx" in record else [])
    print(f"compressed in {record['seconds']:.2f} s" + (f"; wrote {', '.join(written)}" if written else ""))
    return 0


def _layer_table(record: dict) -> str:
    width = max([28, *(len(layer["name"]) + 10 for layer in record["layers"])])
    rows = [f"{'layer':<{width}} {'kind':<8} {'kept':>6} {'total':>6} {'kept %':>7} {'error':>10}"]
    for layer in record["layers"]:
        name = layer["name"] + (" (sampler)" if layer["sampled"] else "")
        rows.append(f"{name:<{width}} {layer['kind']:<8} {layer['kept']:>6} {layer['total']:>6} "
                    f"{100 * layer['kept'] / layer['total']:>6.1f}% {layer['error']:>10.4g}")
    for skipped in record["skipped"]:
        rows.append(f"{skipped['module']:<{width}} not cut: {skipped['reason']}")
    return "\n".join(rows)


def _image_size(text: str) -> int | tuple[int, int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--image-size takes N or H,W in pixels, got {text!r}") from None
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--image-size takes N or H,W in pixels, got {text!r}")
    return sizes[0] if len(sizes) == 1 else (sizes[0], sizes[1])


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, e.g. 0.5,0.5,0.5; got {text!r}") from None


def _bench(args) -> int:
    from . import load
    from .batches import head
    from .bench import bench, table
    from .sources import build_architecture, load_source

    progress = not args.json
    source = load_source(args.original, args.weights, progress=progress)
    compressed = load(args.compressed, build_architecture(source.recipe)).eval()
    batch64 = _bench_inputs(args, source)
    result = bench(source.model, compressed, head(batch64, 1), batch64, threads=args.threads,
                   repeats=args.repeats, warmup=max(1, args.repeats // 5), onnx=args.onnx)
    print(json.dumps(plain({"original": args.original, "compressed": str(args.compressed), **result}))
          if args.json else table(result))
    return 0


def _bench_inputs(args, source):
    """64 samples to time on: the zoo's test images, or the first 64 of ``--calibration``."""
    import torch

    from .data.files import batches
    from .job import load_samples

    if args.calibration is None:
        if source.kind != "zoo":
            raise NetshrinkError(f"{args.original} is not a zoo model: pass --calibration PATH with inputs to time on")
        from .data import fashion_mnist

        return fashion_mnist("test")[0][:64]
    samples = load_samples(args)
    indices = torch.arange(len(samples))[:64]
    if len(indices) < 64:
        raise NetshrinkError(f"{args.calibration} has {len(samples)} samples; batch-64 timing needs 64")
    return batches(samples, indices, 64, tokenizer=source.tokenizer, max_length=args.max_length)[0]


def _train(args) -> int:
    from . import zoo

    zoo.train(args.model, force=args.force, progress=sys.stderr.isatty())
    info = zoo.info(args.model)
    print(json.dumps(info, indent=2))
    return 0


def _evaluate(args) -> int:
    from . import load, zoo
    from .data import fashion_mnist
    from .evaluate import accuracy

    model = zoo.load(args.model, progress=sys.stderr.isatty())
    if args.compressed is not None:
        model = load(args.compressed, zoo.build(args.model))
    images, labels = fashion_mnist("test")
    print(f"{args.model}{' (compressed)' if args.compressed else ''}: "
          f"test accuracy {100 * accuracy(model, images, labels):.2f}% on 10,000 images")
    return 0


def _reproduce(args) -> int:
    from .experiments import budgets, damle, minilm, robin, shenouda

    study = {"damle": damle, "robin": robin, "shenouda": shenouda, "minilm": minilm, "budgets": budgets}[args.study]
    out = args.out if args.out is not None else Path("out") / args.study
    chosen = {}
    if args.goals:
        if args.study != "budgets":
            raise InvalidInputError(f"--goals belongs to 'reproduce budgets' (its goals' budgets alone); "
                                    f"drop it to reproduce {args.study}")
        if args.quick:
            raise InvalidInputError("--goals and --quick are two different runs of the budgets study; give one")
        chosen = {"settings": budgets.GOALS}
    summary = study.run(out, quick=args.quick, overwrite=args.force, progress=sys.stderr.isatty(), **chosen)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
