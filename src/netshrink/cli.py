"""The ``netshrink`` command line: compress | train | evaluate | reproduce."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import NetshrinkError, OutputExistsError
from .graph import COUPLINGS
from .methods import METHODS
from .schedule import CHAININGS

DEFAULT_CALIBRATION_SIZE = 5000


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except NetshrinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netshrink",
        description="Shrink trained PyTorch networks without retraining.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    compress = commands.add_parser(
        "compress",
        help="compress a zoo model and report size and accuracy before/after",
        description="Compress a zoo model on real Fashion-MNIST calibration images and "
        "report parameters and test accuracy before and after.",
    )
    compress.add_argument("model", metavar="MODEL", help="zoo name, e.g. mlp7")
    compress.add_argument("--method", default="interpolative", choices=sorted(METHODS),
                          help="compression method (default: %(default)s)")
    budget = compress.add_mutually_exclusive_group(required=True)
    budget.add_argument("--tol", type=float, help="interpolative: the ε of the stopping rule (≥ 0): "
                        "keep pivots with |r_kk|·‖W_consumer‖₂ > ε")
    budget.add_argument("--lam", type=float, help="group_lasso: ℓ2,1 weight as a fraction of each "
                        "layer's λ_max, in [0, 1] (0 is lossless on the calibration data); "
                        "multitask_lasso: the seed's absolute lam (e.g. 0.05, 0.5)")
    budget.add_argument("--keep", type=float, help="fraction of units kept per layer, in (0, 1]")
    compress.add_argument("--no-debias", dest="debias", action="store_false", default=None,
                          help="group_lasso: skip the least-squares refit on the kept units")
    compress.add_argument("--solver", choices=["fista", "altmin", "prox_adam"],
                          help="group_lasso: fista|altmin; multitask_lasso: fista|prox_adam (default: fista)")
    compress.add_argument("--weighting", choices=["parameters", "uniform"],
                          help="group_lasso with --lam: scale each layer's fraction by the parameters "
                          "its units cost (parameters, the default) or not (uniform)")
    compress.add_argument("--layer", help="compress only the inputs of this nn.Linear: first, pen, last "
                          "(among the Linear layers in execution order) or a module path")
    compress.add_argument("--mu", type=float, help="multitask_lasso with --solver prox_adam: Adam learning rate")
    compress.add_argument("--max-seconds", type=float,
                          help="multitask_lasso with --solver prox_adam: wall-time cap of the solver")
    compress.add_argument("--warm-start", action="store_true", default=None,
                          help="multitask_lasso: start the solver from the original weights")
    compress.add_argument("--refit", action="store_true", default=None,
                          help="magnitude: refit the consumers by least squares")
    compress.add_argument("--chaining", default="top_down", choices=list(CHAININGS),
                          help="order of fitting the layers (default: %(default)s)")
    compress.add_argument("--coupling", default="joint", choices=list(COUPLINGS),
                          help="residual streams: prune jointly or sample per reader (default: %(default)s)")
    compress.add_argument("--calibration-size", type=int, default=DEFAULT_CALIBRATION_SIZE,
                          help="calibration images drawn from the training split (default: %(default)s)")
    compress.add_argument("--seed", type=int, default=0, help="seed of the calibration draw (default: %(default)s)")
    compress.add_argument("--out", type=Path, help="save the compressed model to this directory")
    compress.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    compress.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    compress.set_defaults(run=_compress)

    train = commands.add_parser("train", help="train a zoo model into the cache")
    train.add_argument("model", metavar="MODEL")
    train.add_argument("--force", action="store_true", help="retrain even if cached")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="test accuracy of a zoo model or a saved compression")
    evaluate.add_argument("model", metavar="MODEL")
    evaluate.add_argument("--compressed", type=Path, help="directory written by `compress --out`")
    evaluate.set_defaults(run=_evaluate)

    reproduce = commands.add_parser("reproduce", help="reproduce a seed document's figures and tables")
    reproduce.add_argument("study", choices=["damle", "robin", "shenouda", "minilm"],
                           help="which study: a seed document, or minilm (a pretrained transformer)")
    reproduce.add_argument("--quick", action="store_true", help="small sizes, for CI (< 3 minutes)")
    reproduce.add_argument("--out", type=Path, default=None, help="output folder (default: out/STUDY)")
    reproduce.add_argument("--force", action="store_true", help="replace an existing output folder")
    reproduce.set_defaults(run=_reproduce)
    return parser


def _compress(args) -> int:
    from . import compress, zoo
    from .data import calibration_images, fashion_mnist
    from .evaluate import accuracy

    if args.out is not None and args.out.exists() and not args.force:
        raise OutputExistsError(f"{args.out} already exists; pass --force to replace it")
    progress = not args.json and sys.stderr.isatty()
    model = zoo.load(args.model, progress=progress)
    calibration = calibration_images(args.calibration_size, seed=args.seed)
    test_images, test_labels = fashion_mnist("test")

    start = time.perf_counter()
    options = {"tol": args.tol, "keep": args.keep, "lam": args.lam, "debias": args.debias,
               "solver": args.solver, "refit": args.refit, "mu": args.mu, "max_seconds": args.max_seconds,
               "warm_start": args.warm_start, "weighting": args.weighting}
    result = compress(model, calibration, method=args.method, chaining=args.chaining,
                      coupling=args.coupling, layer=args.layer, progress=progress, **options)
    seconds = time.perf_counter() - start
    accuracy_before = accuracy(model, test_images, test_labels)
    accuracy_after = accuracy(result.model, test_images, test_labels)
    if args.out is not None:
        result.save(args.out, overwrite=args.force)

    if args.json:
        print(json.dumps({
            "model": args.model,
            "method": args.method,
            "options": result.options,
            "calibration_size": args.calibration_size,
            "params_before": result.params_before,
            "params_after": result.params_after,
            "accuracy_before": accuracy_before,
            "accuracy_after": accuracy_after,
            "seconds": seconds,
            "layers": [
                {"name": l.name, "kind": l.kind, "kept": l.kept, "total": l.total, "error": l.error,
                 "sampled": l.sampled,
                 **({"details": l.details} if l.details else {})}
                for l in result.layers
            ],
        }))
        return 0
    budget = ", ".join(f"{k}={v}" for k, v in result.options.items())
    print(f"{args.model}: {args.method}, {budget}; "
          f"{args.calibration_size} calibration images from the Fashion-MNIST training split, "
          "accuracy on the 10,000 test images")
    print()
    print(result.table())
    for layer in result.layers:
        if layer.sampled:
            print(f"{layer.name}: {layer.consumers[0]} reads its {layer.kept} kept inputs of {layer.total} through "
                  "a sampler (index_select); everything before it is unchanged")
    print()
    print(f"{'':<12} {'before':>12} {'after':>12}")
    print(f"{'parameters':<12} {result.params_before:>12,} {result.params_after:>12,}")
    print(f"{'accuracy':<12} {100 * accuracy_before:>11.2f}% {100 * accuracy_after:>11.2f}%")
    print(f"compressed in {seconds:.2f} s" + (f"; saved to {args.out}" if args.out else ""))
    return 0


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
    from .experiments import damle, minilm, robin, shenouda

    study = {"damle": damle, "robin": robin, "shenouda": shenouda, "minilm": minilm}[args.study]
    out = args.out if args.out is not None else Path("out") / args.study
    summary = study.run(out, quick=args.quick, overwrite=args.force, progress=sys.stderr.isatty())
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
