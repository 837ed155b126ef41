"""Seed 002 (Shenouda, Parhi, Lee & Nowak): multi-task-lasso compression of a classifier's
fully connected layers, with the report of the original's test scripts (issue 4, items 1–3).

The original compresses one fully connected layer of a trained VGG-19 / AlexNet at a time
("last", "pen"ultimate or "first"): the layer's inputs Φ and original outputs Ψ on the
training set, the multi-task lasso of :mod:`netshrink.methods.multitask_lasso` solved by
prox-Adam, the zero columns removed; its test scripts print the original and compressed
networks' train/test loss and accuracy and the active neurons. CIFAR-10 and ImageNet are
not reachable here: ``alexnet-fmnist`` and ``vgg-fmnist`` trained on Fashion-MNIST stand
in for them.

For every network and layer role (the same layer once when two roles name it, as
``vgg-fmnist``'s penultimate and first fully connected layer):

- **original**: loss and accuracy on the calibration images (the training data the layer
  is fitted on, "train"), on held-out training images ("validation") and on the test set;
- **published, FISTA**: the published ``lam`` (AlexNet last 0.05, VGG-19 last 0.01,
  penultimate and first 0.5) solved to a duality gap;
- **published, prox-Adam**: the original scheme with the published ``(mu, lam)`` and its
  own stopping rule, under a wall-time cap (the original ran 3–5 hours on a GPU);
- **chosen**: the largest ``lam`` of a grid whose validation accuracy is at most
  ``drop_target_pt`` below the original's (chosen on validation, reported on test).

``lam`` is absolute (the seed's scale), so its effect depends on the activations' scale:
the published values were set for other networks and data. A layer whose inputs are
flattened conv features or the network's input is compressed feature by feature and
served by a sampler (``index_select``): only the layer itself shrinks, and the report says
so. Parameters are counted on the compressed model (the sampler's index is a buffer).
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from netshrink.experiments.runtime import Log, output_folder, torch_threads, write_json

__all__ = ["run", "Settings", "FULL", "QUICK", "published_settings"]

THREADS = 1  # torch threads of every compression and evaluation (see runtime.torch_threads)


@dataclass(frozen=True)
class Settings:
    """Sizes of one run (``FULL`` or ``QUICK``)."""

    networks: tuple[str, ...]
    roles: tuple[str, ...]            # "last", "pen", "first"
    calibration_size: int             # training images the layer is fitted on ("train")
    validation_size: int              # further training images, for choosing lam
    test_size: int                    # test images scored (the first ones of the split)
    lam_grid: tuple[float, ...]       # absolute lam values of the sweep (FISTA)
    prox_adam_seconds: float          # wall-time cap of each prox-Adam run
    drop_target_pt: float             # accuracy drop allowed for the chosen lam
    train_missing: bool               # train zoo models that are not cached (else: fresh, untrained)


FULL = Settings(
    networks=("alexnet-fmnist", "vgg-fmnist"),
    roles=("last", "pen", "first"),
    calibration_size=10000,
    validation_size=5000,
    test_size=10000,
    lam_grid=tuple(float(f"{10 ** (j / 3):.6g}") for j in range(-12, 1)),  # 1e-4 … 1
    prox_adam_seconds=300.0,
    drop_target_pt=0.5,
    train_missing=True,
)

QUICK = Settings(
    networks=("alexnet-fmnist", "vgg-fmnist"),
    roles=("last", "first"),
    calibration_size=1000,
    validation_size=500,
    test_size=2000,
    lam_grid=(1e-3, 1e-2, 0.1),
    prox_adam_seconds=3.0,
    drop_target_pt=0.5,
    train_missing=False,
)


def published_settings(network: str, role: str) -> tuple[float, float]:
    """``(mu, lam)`` the original used for a layer of this role: VGG-19's last layer
    (0.03, 0.01) for ``vgg-fmnist``, AlexNet's (0.07, 0.05) otherwise; penultimate and
    first layers (0.07, 0.5)."""
    if role == "last":
        return (0.03, 0.01) if network.startswith("vgg") else (0.07, 0.05)
    return 0.07, 0.5


def run(out: Path, quick: bool = False, overwrite: bool = False, progress: bool = False) -> str:
    """Compress the FC layers of ``alexnet-fmnist`` and ``vgg-fmnist`` into ``out``; return summary.md.

    Writes ``compression.json`` (every run's numbers), ``compression.png`` (kept inputs
    and test accuracy against ``lam`` per layer, the published and chosen runs marked)
    and ``summary.md``, atomically.

    Args:
        quick: 1,000 calibration images, 2,000 test images, three lam values, 3-second
            prox-Adam runs, the last and first layers; zoo models that are not cached are used untrained (and
            flagged). The full run trains missing models.
        overwrite: replace an existing ``out`` (else OutputExistsError before any work).
        progress: report each run on stderr.
    """
    settings = QUICK if quick else FULL
    log = Log("shenouda-compress", progress)
    started = time.perf_counter()
    with output_folder(out, overwrite) as folder, torch_threads(THREADS):
        data = study(settings, log)
        data["mode"] = "quick" if quick else "full"
        data["seconds"] = time.perf_counter() - started
        write_json(folder / "compression.json", data)
        figure = _figure(data)
        figure.savefig(folder / "compression.png", dpi=110)
        text = summary(data)
        (folder / "summary.md").write_text(text, encoding="utf-8")
    log(f"wrote {out} in {time.perf_counter() - started:.1f} s")
    return text


# --------------------------------------------------------------------------------------
# the study


def study(settings: Settings, log) -> dict:
    """Every network, layer and run of ``settings`` as plain data (see :func:`run`)."""
    from netshrink.data import calibration_indices, fashion_mnist

    train_images, train_labels = fashion_mnist("train")
    index = calibration_indices(settings.calibration_size + settings.validation_size, seed=0)
    splits = {
        "train": (train_images[index[:settings.calibration_size]], train_labels[index[:settings.calibration_size]]),
        "validation": (train_images[index[settings.calibration_size:]],
                       train_labels[index[settings.calibration_size:]]),
        "test": fashion_mnist("test", limit=settings.test_size),
    }
    networks = [_network(name, settings, splits, log) for name in settings.networks]
    return {"settings": asdict(settings), "networks": networks, "threads": THREADS,
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
            "cpu_count": os.cpu_count()}


def _network(name: str, settings: Settings, splits: dict, log) -> dict:
    from netshrink import count_parameters, zoo
    from netshrink.graph import input_cut, resolve_linear

    cached = bool(zoo.info(name).get("trained"))
    if cached or settings.train_missing:
        model = zoo.load(name, progress=False)
        source = "zoo cache" if cached else "trained now"
    else:
        model, source = zoo.build(name).eval(), "freshly built (untrained)"
    original = {split: _scores(model, *data) for split, data in splits.items()}
    log(f"{name} ({source}): test accuracy {100 * original['test']['accuracy']:.2f}%")
    layers, seen = [], {}
    for role in settings.roles:
        path = resolve_linear(model, role)
        if path in seen:
            seen[path]["roles"].append(role)
            continue
        cut = input_cut(model, role)
        mu, lam = published_settings(name, role)
        entry = {"roles": [role], "layer": path, "cut": cut.name, "inputs": cut.width, "sampled": cut.sampled,
                 "outputs": model.get_submodule(path).out_features, "published": {"mu": mu, "lam": lam}}
        # the published lam and the grid in one sweep: the layer's statistics are computed once.
        # The grid is scored on validation (to choose) and test (to plot); the chosen point
        # also on the training images, like the published runs
        scored = [("train", "validation", "test")] + [("validation", "test")] * len(settings.lam_grid)
        published, *swept = _sweep(model, path, splits, [lam, *settings.lam_grid], scored)
        runs = {
            "published_fista": published[0],
            "published_prox_adam": _run(model, path, splits, dict(
                lam=lam, solver="prox_adam", mu=mu, max_seconds=settings.prox_adam_seconds))[0],
        }
        sweep = [record for record, _ in swept]
        chosen = _chosen(sweep, original["validation"]["accuracy"], settings.drop_target_pt)
        if chosen is not None:
            chosen_model = swept[sweep.index(chosen)][1]
            chosen["scores"]["train"] = _scores(chosen_model, *splits["train"])
        entry.update(runs=runs, sweep=sweep, chosen_lam=None if chosen is None else chosen["lam"])
        for label, result in runs.items():
            log(f"{name} {role} ({path}): {label}: kept {result['kept']}/{cut.width}, "
                f"test {100 * result['scores']['test']['accuracy']:.2f}%")
        if chosen is not None:
            log(f"{name} {role}: chosen lam {chosen['lam']:g}: kept {chosen['kept']}/{cut.width}")
        seen[path] = entry
        layers.append(entry)
    return {"name": name, "source": source, "trained": source != "freshly built (untrained)",
            "parameters": count_parameters(model), "original": original, "layers": layers}


def _run(model, path: str, splits: dict, options: dict) -> tuple[dict, torch.nn.Module]:
    """One compression of the inputs of ``path``: its record with the scores on every
    split, and the compressed model."""
    import netshrink

    calibration = splits["train"][0]
    started = time.perf_counter()
    result = netshrink.compress(model, calibration, "multitask_lasso", layer=path, **options)
    seconds = time.perf_counter() - started
    return _record(result, options, seconds, splits, ("train", "validation", "test")), result.model


def _sweep(model, path: str, splits: dict, lams: list[float],
           scored: list[tuple[str, ...]]) -> list[tuple[dict, torch.nn.Module]]:
    """FISTA compressions of the inputs of ``path`` at every ``lam`` of ``lams``, from one
    :func:`netshrink.sweep` (the layer observed once; each solve as in ``compress``): per lam
    its record scored on the splits ``scored[i]`` (its ``compress_seconds`` is its share of
    the sweep) and the compressed model."""
    import netshrink

    started = time.perf_counter()
    results = netshrink.sweep(model, splits["train"][0], "multitask_lasso", [{"lam": lam} for lam in lams],
                              layer=path)
    seconds = (time.perf_counter() - started) / len(lams)
    return [(_record(result, {"lam": lam}, seconds, splits, splits_scored), result.model)
            for lam, result, splits_scored in zip(lams, results, scored)]


def _record(result, options: dict, seconds: float, splits: dict, scored) -> dict:
    """The record of one compression of a single layer's inputs, scored on the splits ``scored``."""
    (report,) = result.layers
    return {
        **options, "kept": report.kept, "total": report.total, "error": report.error,
        "params_after": result.params_after, "compress_seconds": seconds, "solver_details": report.details,
        "scores": {split: _scores(result.model, *splits[split]) for split in scored},
    }


def _chosen(sweep: list[dict], original_accuracy: float, drop_pt: float) -> dict | None:
    """The sweep point with the fewest kept inputs whose validation drop is ≤ ``drop_pt``."""
    allowed = [r for r in sweep if 100 * (original_accuracy - r["scores"]["validation"]["accuracy"]) <= drop_pt]
    return min(allowed, key=lambda r: (r["kept"], -r["lam"]), default=None)


def _scores(model, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Mean cross-entropy and accuracy of ``model`` on ``images``."""
    from netshrink.evaluate import predict_logits

    logits = predict_logits(model, images)
    return {"loss": float(F.cross_entropy(logits, labels)),
            "accuracy": float((logits.argmax(dim=1) == labels).double().mean())}


# --------------------------------------------------------------------------------------
# figure and summary


def _figure(data: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(net, layer) for net in data["networks"] for layer in net["layers"]]
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.9 * rows), squeeze=False)
    for axis in axes.flat[len(panels):]:
        axis.set_visible(False)
    for axis, (net, layer) in zip(axes.flat, panels):
        sweep = layer["sweep"]
        lams = [r["lam"] for r in sweep]
        axis.plot(lams, [100 * r["kept"] / r["total"] for r in sweep], "o-", color="tab:blue", ms=3,
                  label="inputs kept (FISTA sweep)")
        axis.set_xscale("log")
        axis.set_xlabel("lam (absolute, seed scale)")
        axis.set_ylabel("inputs kept (%)", color="tab:blue")
        axis.set_ylim(0, 105)
        right = axis.twinx()
        right.plot(lams, [100 * r["scores"]["test"]["accuracy"] for r in sweep], "s-", color="tab:red", ms=3,
                   label="test accuracy (FISTA sweep)")
        base = 100 * net["original"]["test"]["accuracy"]
        right.axhline(base, color="tab:red", ls=":", lw=1, label=f"original {base:.2f}%")
        right.axhline(base - data["settings"]["drop_target_pt"], color="tab:red", ls="--", lw=0.8,
                      label=f"−{data['settings']['drop_target_pt']:g} pt")
        for key, marker, colour, label in (("published_fista", "*", "black", "published lam, FISTA"),
                                           ("published_prox_adam", "^", "tab:green", "published, prox-Adam")):
            r = layer["runs"][key]
            right.plot([r["lam"]], [100 * r["scores"]["test"]["accuracy"]], marker, color=colour, ms=10,
                       label=f"{label}: kept {r['kept']}")
        if layer["chosen_lam"] is not None:
            chosen = next(r for r in sweep if r["lam"] == layer["chosen_lam"])
            right.plot([chosen["lam"]], [100 * chosen["scores"]["test"]["accuracy"]], "o", mfc="none",
                       color="black", ms=12, label=f"chosen lam {chosen['lam']:g}: kept {chosen['kept']}")
        right.set_ylabel("test accuracy (%)", color="tab:red")
        low = min(base - 3, min(100 * r["scores"]["test"]["accuracy"] for r in sweep))
        right.set_ylim(max(0, low), base + 1)
        roles = "/".join(layer["roles"])
        sampler = ", sampler" if layer["sampled"] else ""
        flag = "" if net["trained"] else " — UNTRAINED"
        axis.set_title(f"{net['name']} {roles}: {layer['layer']} ({layer['inputs']} inputs{sampler}){flag}",
                       fontsize=9)
        lines = axis.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        right.legend(lines[0] + more[0], lines[1] + more[1], fontsize=6.5, loc="lower left")
    figure.suptitle("Seed 002 multi-task lasso on Fashion-MNIST (standing in for CIFAR-10/ImageNet)", fontsize=11)
    figure.tight_layout()
    return figure


def summary(data: dict) -> str:
    """summary.md of a run: the original's test-script report per layer and run."""
    settings = data["settings"]
    lines = [
        "# Seed 002: multi-task-lasso compression of fully connected layers", "",
        f"Mode: **{data['mode']}**. Fashion-MNIST stands in for CIFAR-10 and ImageNet (not reachable here); "
        "`alexnet-fmnist` and `vgg-fmnist` stand in for AlexNet and VGG-19. \"train\" is the "
        f"{settings['calibration_size']:,} training images the layer is fitted on, \"validation\" "
        f"{settings['validation_size']:,} further training images (used only to choose lam), \"test\" the "
        f"first {settings['test_size']:,} test images. lam is on the seed's absolute scale. prox-Adam runs with its own stopping rule "
        f"under a {settings['prox_adam_seconds']:g}-second cap. The chosen lam keeps the fewest inputs with a "
        f"validation drop ≤ {settings['drop_target_pt']:g} pt.", "",
    ]
    for net in data["networks"]:
        flag = "" if net["trained"] else " — **UNTRAINED** (not cached; quick mode does not train)"
        o = net["original"]
        lines += [
            f"## {net['name']} ({net['source']}, {net['parameters']:,} parameters){flag}", "",
            f"Original: train loss {o['train']['loss']:.4f}, acc {100 * o['train']['accuracy']:.2f}%; "
            f"test loss {o['test']['loss']:.4f}, acc {100 * o['test']['accuracy']:.2f}%.", "",
            "| layer | run | lam | mu | active inputs | train loss | train acc | test loss | test acc | Δ test pt "
            "| parameters | solver |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for layer in net["layers"]:
            name = f"{'/'.join(layer['roles'])} `{layer['layer']}`" + (" (sampler)" if layer["sampled"] else "")
            rows = [("published, FISTA", layer["runs"]["published_fista"]),
                    ("published, prox-Adam", layer["runs"]["published_prox_adam"])]
            if layer["chosen_lam"] is not None:
                rows.append(("chosen, FISTA", next(r for r in layer["sweep"] if r["lam"] == layer["chosen_lam"])))
            for label, r in rows:
                s = r["scores"]
                d = r["solver_details"]
                solver = (f"{d['stop_reason']}, {d['iterations']:,} it, {d['seconds']:.1f} s, F={d['objective']:.4g}"
                          if d["solver"] == "prox_adam" else
                          f"gap {d['gap']:.1e}, {d['seconds']:.2f} s, F={d['objective']:.4g}")
                lines.append(
                    f"| {name} | {label} | {r['lam']:g} | {r.get('mu', '')} | {r['kept']} / {r['total']} | "
                    f"{o['train']['loss']:.4f} → {s['train']['loss']:.4f} | "
                    f"{100 * o['train']['accuracy']:.2f} → {100 * s['train']['accuracy']:.2f} | "
                    f"{o['test']['loss']:.4f} → {s['test']['loss']:.4f} | "
                    f"{100 * o['test']['accuracy']:.2f} → {100 * s['test']['accuracy']:.2f} | "
                    f"{100 * (s['test']['accuracy'] - o['test']['accuracy']):+.2f} | "
                    f"{net['parameters']:,} → {r['params_after']:,} | {solver} |")
            if layer["chosen_lam"] is None:
                lines.append(f"| {name} | chosen | — | | no lam of the grid kept the validation drop ≤ "
                             f"{settings['drop_target_pt']:g} pt | | | | | | | |")
        sampled = [layer for layer in net["layers"] if layer["sampled"]]
        if sampled:
            lines += ["", "Sampler: " + "; ".join(
                f"`{layer['layer']}` reads {layer['inputs']} inputs that are not a producer's neurons "
                "(flattened conv features or the network's input): its kept inputs are selected by an "
                "`index_select` before it, the convolutions are unchanged and only the layer's own weight "
                "shrinks" for layer in sampled) + "."]
        lines.append("")
    lines += ["![kept inputs and test accuracy against lam](compression.png)", "",
              f"Run: {data['seconds']:.0f} s on {data['threads']} torch thread, torch {data['versions']['torch']}, "
              f"Python {data['versions']['python']}, {data['cpu_count']} CPUs.", ""]
    return "\n".join(lines)
