"""One ``netshrink compress`` job: a source, its data, a compression, its evaluation, its files.

The steps, in order (nothing is written before the last one):

1. every output path is checked (an existing one needs ``--force``);
2. the source is loaded (:mod:`netshrink.sources`) and the data: the zoo's Fashion-MNIST
   training images and test set, or the user's ``--calibration`` file split into
   calibration and held-out samples (:mod:`netshrink.data.files`);
3. the model is run on one calibration batch, so data of the wrong shape fails here
   with the shapes in the message;
4. :func:`netshrink.compress`;
5. fidelity (and accuracy with labels) on the held-out samples (:mod:`netshrink.fidelity`);
6. the ONNX export is made and checked with onnxruntime in a temporary folder;
7. ``--out``, ``--onnx`` and ``--report`` are written, each atomically.

A job interrupted at any point leaves each output complete or absent and never touches
its inputs.

Under ``torchrun`` (a process group of N > 1 ranks, :mod:`netshrink.distributed`) the
calibration samples are dealt to the ranks in N equal slices (N must divide their
number), the ranks compress together, and rank 0 alone checks and writes the outputs
and runs steps 5–7; the other ranks return no record.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import batches as batching
from . import distributed
from .activation_cache import DEFAULT_MEMORY_LIMIT, CacheOptions
from .api import Compression
from .errors import InvalidInputError, OutputExistsError

#: Held-out samples kept back from a ``--calibration`` file (at most half of it).
DEFAULT_HELD_OUT = 1000
#: Batch size of a ``--calibration`` file's samples.
DEFAULT_FILE_BATCH = 64
#: Calibration images drawn from Fashion-MNIST's training split for a zoo model.
DEFAULT_ZOO_CALIBRATION = 5000


def run(args, progress: bool) -> tuple[dict | None, Compression]:
    """Run the job described by the parsed command line ``args``; return its record (the
    ``--json`` output; None on ranks other than 0 of a process group) and the compression."""
    from . import compress
    from .fidelity import compare
    from .sources import load_source

    if distributed.rank() == 0:
        _check_outputs(args)
    source = load_source(args.source, args.weights, progress=progress)
    data = _data(args, source)
    _check_model_takes(source.model, data["calibration"][0], data["description"])
    options = {"tol": args.tol, "keep": args.keep, "lam": args.lam, "size": args.size, "flops": args.flops,
               "latency": args.latency, "debias": args.debias, "solver": args.solver, "refit": args.refit,
               "mu": args.mu, "max_seconds": args.max_seconds, "warm_start": args.warm_start,
               "weighting": args.weighting, "damping": args.damping, "lowrank": args.lowrank,
               "sample_inputs": args.sample_inputs, "quantize": args.quantize, "output_loss": args.output_loss}
    options = {key: value for key, value in options.items() if value is not None}
    layers = None
    if args.only:
        options["keep"], layers = _only(args, source.model, data["calibration"][0])
    start = time.perf_counter()
    result = compress(source.model, data["calibration"], method=args.method, chaining=args.chaining,
                      coupling=args.coupling, layer=args.layer, layers=layers, progress=progress,
                      cache=_cache(args), **options)
    seconds = time.perf_counter() - start
    if distributed.rank() != 0:
        return None, result
    fidelity = compare(source.model, result.model, data["held_out"], data["labels"])
    record = {
        "source": args.source, "source_kind": source.kind, "method": result.method, "options": result.options,
        "calibration": data["description"], "calibration_size": data["calibration_size"],
        "held_out": data["held_out_description"],
        "params_before": result.params_before, "params_after": result.params_after, "ratio": result.ratio,
        "bytes_before": result.bytes_before, "bytes_after": result.bytes_after,
        **({"budget": result.budget} if result.budget else {}),
        "seconds": seconds, "fidelity": fidelity,
        **({"accuracy_before": fidelity["accuracy_before"], "accuracy_after": fidelity["accuracy_after"]}
           if "accuracy_before" in fidelity else {}),
        "layers": [{"name": layer.name, "kind": layer.kind, "kept": layer.kept, "total": layer.total,
                    "error": layer.error, "sampled": layer.sampled, **({"details": layer.details} if layer.details else {})}
                   for layer in result.layers],
        "skipped": [{"module": s.module, "reason": s.reason} for s in result.skipped],
        "config": result.config, "notes": source.notes,
    }
    with tempfile.TemporaryDirectory(prefix="netshrink-") as scratch:
        if args.onnx is not None:
            record["onnx"] = _onnx(source.model, result.model, data, Path(scratch), progress)
        _write(args, source, result, record, Path(scratch))
    return record, result


# --------------------------------------------------------------------------------------


def _check_outputs(args) -> None:
    for flag, path in (("--out", args.out), ("--onnx", args.onnx), ("--report", args.report)):
        if path is not None and (path.exists() or path.is_symlink()) and not args.force:
            raise OutputExistsError(f"{path} ({flag}) already exists; pass --force to replace it, or choose "
                                    "another path")
        if path is not None and not path.parent.is_dir():
            raise InvalidInputError(f"the folder of {flag} {path} does not exist; create {path.parent} first")
    given = [p.resolve() for p in (args.out, args.onnx, args.report) if p is not None]
    if len(set(given)) < len(given):
        raise InvalidInputError("--out, --onnx and --report must be different paths")


def _data(args, source) -> dict:
    """Calibration batches, held-out batches and labels, with descriptions."""
    from .data.files import batches, load_labels, split

    if args.calibration is None:
        if source.kind != "zoo":
            raise InvalidInputError(f"{args.source} is not a zoo model, so it has no built-in data: pass "
                                    "--calibration PATH (.npy/.npz/.safetensors, an image folder, a text or "
                                    ".jsonl file)")
        return _zoo_data(args)
    samples = load_samples(args)
    labels = samples.labels
    if args.labels is not None:
        labels = load_labels(args.labels, len(samples))
    calibration, held_out = split(len(samples), args.calibration_size, args.held_out, args.seed)
    mine = distributed.shard(calibration, "calibration samples (--calibration-size)")
    if samples.kind == "text" and source.tokenizer is None:
        raise InvalidInputError(f"{args.calibration} holds text but {args.source} comes with no tokenizer; "
                                "give a Hugging Face directory with its tokenizer files")
    make = {"batch_size": args.batch_size or DEFAULT_FILE_BATCH, "tokenizer": source.tokenizer, "max_length": args.max_length}
    if len(held_out) == 0:
        raise InvalidInputError(f"{args.calibration} has {len(samples)} samples: too few to hold any out for the "
                                "evaluation; give at least 2 samples and --held-out ≥ 1")
    return {"calibration": batches(samples, mine, **make), "held_out": batches(samples, held_out, **make),
            "labels": None if labels is None else labels[held_out],
            "calibration_size": len(calibration),
            "description": f"{len(calibration)} samples of {args.calibration} ({samples.kind}, seed {args.seed})"
                           + _per_rank(len(mine)),
            "held_out_description": f"{len(held_out)} other samples of {args.calibration}"}


def _per_rank(count: int) -> str:
    """``", 250 on each of 2 ranks"`` in a process group, else nothing."""
    ranks = distributed.current()
    return "" if ranks is None else f", {count} on each of {ranks.size} ranks"


def _cache(args) -> CacheOptions:
    """The activation cache the ``--cache-*`` options ask for."""
    if args.cache_memory is not None and not args.cache_memory >= 0:
        raise InvalidInputError(f"--cache-memory must be a number of GiB ≥ 0, got {args.cache_memory}")
    return CacheOptions(dtype=torch.bfloat16 if args.cache_bfloat16 else None, directory=args.cache_dir,
                        memory_limit=DEFAULT_MEMORY_LIMIT if args.cache_memory is None
                        else int(args.cache_memory * 1024**3))


def load_samples(args):
    """The samples of ``--calibration`` with the image and text options of ``args``
    (image options given for a file are an error the loader explains)."""
    from .data.files import load_calibration

    image_options = {"image_size": args.image_size, "mean": args.mean, "std": args.std}
    if args.calibration.is_dir():
        image_options = {k: v for k, v in image_options.items() if v is not None}
    return load_calibration(args.calibration, text_field=args.text_field, **image_options)


def _zoo_data(args) -> dict:
    from .data import calibration_images, fashion_mnist

    size = args.calibration_size or DEFAULT_ZOO_CALIBRATION
    images = distributed.shard(calibration_images(size, seed=args.seed), "calibration images (--calibration-size)")
    test_images, test_labels = fashion_mnist("test")
    return {"calibration": list(images.split(args.batch_size or 1000)), "held_out": list(test_images.split(1000)),
            "labels": test_labels, "calibration_size": size,
            "description": f"{size} images of the Fashion-MNIST training split (seed {args.seed})"
                           + _per_rank(len(images)),
            "held_out_description": "the 10,000 Fashion-MNIST test images"}


def _check_model_takes(model, batch, description: str) -> None:
    try:
        with torch.inference_mode():
            batching.call(model.eval(), batching.head(batch, 2))
    except Exception as exc:  # the user's model raising on the user's data
        raise InvalidInputError(
            f"the model fails on the calibration data ({description}; one batch is {batching.describe(batch)}): "
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}. Give inputs of the shape and dtype the "
            "model takes (for images, --image-size; for text, the model's own tokenizer)"
        ) from None


def _only(args, model, example) -> tuple[dict | None, list | None]:
    """``--only KINDS``: a per-kind keep, or the cuts of those kinds for other budgets."""
    from .graph import find_cuts

    kinds = [kind.strip() for kind in args.only.split(",") if kind.strip()]
    known = ("neurons", "channels", "heads")
    unknown = [kind for kind in kinds if kind not in known]
    if unknown or not kinds:
        raise InvalidInputError(f"--only takes cut kinds from {', '.join(known)} separated by commas; got {args.only!r}")
    if args.keep is not None:
        return {kind: args.keep for kind in kinds}, None
    cuts, _ = find_cuts(model, args.coupling, example)
    layers = [cut.name for cut in cuts if cut.kind in kinds]
    if not layers:
        raise InvalidInputError(f"--only {args.only}: this model has no cuts of those kinds (its cuts are "
                                f"{sorted({cut.kind for cut in cuts})})")
    return None, layers


def _onnx(original, compressed, data, scratch: Path, progress: bool) -> dict:
    from safetensors.torch import save_file

    from .api import _untied_state
    from .onnx_export import check_onnx, export_onnx, file_size

    example = batching.head(data["calibration"][0], 2)
    if progress:
        print("exporting to ONNX ...", file=sys.stderr, flush=True)
    export_onnx(original, example, scratch / "original.onnx")
    export_onnx(compressed, example, scratch / "compressed.onnx")
    save_file(_untied_state(original.state_dict())[0], str(scratch / "original.safetensors"))
    save_file(_untied_state(compressed.state_dict())[0], str(scratch / "compressed.safetensors"))
    checked = data["held_out"][:4]
    return {"max_relative_difference": check_onnx(scratch / "compressed.onnx", compressed, checked),
            "checked_batches": [batching.describe(batch) for batch in checked],
            "onnx_bytes_before": file_size(scratch / "original.onnx"),
            "onnx_bytes_after": file_size(scratch / "compressed.onnx"),
            "safetensors_bytes_before": file_size(scratch / "original.safetensors"),
            "safetensors_bytes_after": file_size(scratch / "compressed.safetensors")}


def _write(args, source, result, record: dict, scratch: Path) -> None:
    import os

    from .atomic import atomic_write_bytes
    from .report import write_report
    from .sources import TOKENIZER_FILES

    if args.out is not None:
        files = [source.directory / name for name in TOKENIZER_FILES
                 if source.directory is not None and (source.directory / name).is_file()]
        result.save(args.out, overwrite=args.force, source=source.recipe, files=tuple(files))
        record["out"] = str(args.out)
    if args.onnx is not None:
        staged = scratch / "compressed.onnx"
        if os.stat(staged).st_dev == os.stat(args.onnx.parent).st_dev:
            if args.onnx.exists() and not args.force:
                raise OutputExistsError(f"{args.onnx} (--onnx) appeared meanwhile; pass --force to replace it")
            os.replace(staged, args.onnx)
        else:
            atomic_write_bytes(args.onnx, staged.read_bytes(), overwrite=args.force)
        record["onnx"]["path"] = str(args.onnx)
    if args.report is not None:
        command = shlex.join(["netshrink", *sys.argv[1:]]) if sys.argv[1:] else "netshrink compress"
        accuracy = ({"before": record["accuracy_before"], "after": record["accuracy_after"],
                     "samples": record["fidelity"]["samples"]} if "accuracy_before" in record else None)
        extra = {"calibration": record["calibration"], "held out": record["held_out"],
                 "compress time (s)": record["seconds"]}
        if "onnx" in record:
            extra.update({"ONNX max relative difference": record["onnx"]["max_relative_difference"],
                          "ONNX bytes (before → after)":
                          f"{record['onnx']['onnx_bytes_before']:,} → {record['onnx']['onnx_bytes_after']:,}"})
        path = write_report(args.report, result, fidelity=record["fidelity"], accuracy=accuracy, command=command,
                            source=args.source, extra=extra, overwrite=args.force)
        record["report"] = str(path)
