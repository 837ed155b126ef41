"""Budgets on real networks: the global allocation against the allocations it replaces.

``netshrink reproduce budgets [--quick | --goals] [--out DIR]`` calls :func:`run`, which
writes one folder, atomically (``--goals``, ``run(out, settings=GOALS)``: the goals' budgets
alone)::

    NETWORK.png/.json  accuracy against parameters (and FLOPs) for every scheme
    rows.json          every compressed model: scheme, budget, parameters, FLOPs, accuracy
    int8.json          the global allocation with int8 weights on top: bytes and accuracy
    latency.json       latency budgets: measured batch-1 latency, the table's error, the rounds
    minilm.json        MiniLM-L6 at half of its FFN and attention parameters (full and goals runs)
    summary.md         the goals, the best size within each drop, paired standard errors
    run.json           settings, run times, versions

Every scheme is given the same budget — a fraction of the parameters (``size``) or of the
forward FLOPs (``flops``) — on the same model, calibration data (4,000 Fashion-MNIST
training images) and test set (the 10,000 test images):

- ``global``: netshrink's global allocation (:mod:`netshrink.budget`) for group lasso +
  least squares, with low rank on the survivors and, for an MLP, input-pixel sampling;
- ``global_units``: the same allocation of units alone (no low rank, no sampling);
- ``obs``, ``obs_units``: the same allocation and stages with the units chosen by
  structured OBS (``method="obs"``: greedy elimination weighed by the output
  sensitivities the allocation measured) instead of the group-lasso path;
- ``same_keep``: group lasso keeping the same fraction of every cut's units, the largest
  fraction that fits the budget;
- ``uniform_lam``: group lasso with the seed's uniform λ (the same fraction of every
  layer's λ_max), bisected on λ to the largest model that fits;
- ``priced_lam``: group lasso with λ priced by the parameters a unit costs (the allocation
  before this one), bisected the same way;
- ``kwon``: Kwon et al.'s Fisher mask search under the budget, with one least-squares
  scale per kept unit (:func:`.peers.kwon_widths`, :class:`.peers.Kwon`; the Fisher
  information of the cross-entropy on 1,024 labelled calibration images);
- ``flap``: FLAP's standardised scores, removed globally until the budget fits, with
  mean-bias compensation (:func:`.peers.flap_widths`, :class:`.peers.Flap`).

A journal beside ``out`` keeps every finished row, so an interrupted run resumes.
"""

from __future__ import annotations

import base64
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from netshrink.experiments.runtime import (Journal, Log, output_folder, paired_se_pt, source_digest, torch_threads,
                                          versions, write_json)

__all__ = ["run", "Settings", "FULL", "GOALS", "QUICK", "SCHEMES"]

SCHEMES = {
    "global": "netshrink global allocation + low rank (+ input sampling)",
    "global_units": "netshrink global allocation, units only",
    "obs": "netshrink global allocation, OBS selection + low rank (+ input sampling)",
    "obs_units": "netshrink global allocation, OBS selection, units only",
    "same_keep": "same keep at every cut",
    "uniform_lam": "seed's uniform λ",
    "priced_lam": "parameter-priced λ (before)",
    "kwon": "Kwon-style Fisher mask search + LS scales",
    "flap": "FLAP-style standardised scores + mean bias",
}
STYLES = {"global": ("C0", "o", "-"), "global_units": ("C9", "D", "-"), "obs": ("C5", "*", "-"),
          "obs_units": ("C8", "h", "-"), "same_keep": ("0.5", "x", ":"),
          "uniform_lam": ("C1", "^", "--"), "priced_lam": ("C3", "s", "--"), "kwon": ("C4", "P", "-."),
          "flap": ("C2", "v", "-.")}
#: netshrink's own schemes: the method each one allocates a budget for.
GLOBAL = {"global": "group_lasso", "global_units": "group_lasso", "obs": "obs", "obs_units": "obs"}
#: The schemes among them that add low rank (and, on an MLP, input sampling) to the units.
STAGED = ("global", "obs")
#: Quality goals: (network, budget kind, largest fraction, largest accuracy drop in points).
QUALITY_GOALS = (("lenet300", "size", 0.30, 0.3), ("lenet5", "size", 0.20, 0.5), ("mlp7", "size", 0.04, 0.5),
         ("vgg-fmnist", "size", 0.30, 0.5), ("vgg-fmnist", "flops", 0.40, 0.5))
INT8_GOAL = ("mlp7", 0.02, 0.5)  # bytes fraction, drop
MINILM_GOAL = 0.98
THREADS = 2


@dataclass(frozen=True)
class Settings:
    budgets: dict = field(default_factory=dict)  # network -> ((kind, fraction), ...)
    int8: dict = field(default_factory=dict)  # network -> size fractions, int8 on top
    latency: dict = field(default_factory=dict)  # network -> latency fractions
    calibration: int = 4000
    fisher_images: int = 1024
    bisection_steps: int = 8
    minilm: bool = False
    minilm_texts: tuple[int, int] = (1000, 500)  # calibration, held out
    seed: int = 0


FULL = Settings(
    budgets={"lenet300": tuple(("size", f) for f in (0.2, 0.25, 0.3, 0.35)),
             "lenet5": tuple(("size", f) for f in (0.1, 0.15, 0.2, 0.275)),
             "mlp7": tuple(("size", f) for f in (0.03, 0.04, 0.05, 0.065)),
             "vgg-fmnist": (("size", 0.2), ("size", 0.3), ("flops", 0.4))},
    int8={"mlp7": (0.06, 0.08, 0.1)},
    latency={"mlp7": (0.5,), "lenet5": (0.85,)},
    minilm=True,
    minilm_texts=(500, 300),
)
#: The goals' budgets alone, every scheme (MiniLM as in the full run, no latency budgets):
#: ``netshrink reproduce budgets --goals``, ``run(out, settings=GOALS)``.
GOALS = Settings(budgets={"lenet300": (("size", 0.3),), "lenet5": (("size", 0.2),), "mlp7": (("size", 0.04),),
                          "vgg-fmnist": (("size", 0.3), ("flops", 0.4))},
                 int8={"mlp7": (0.06,)}, minilm=True, minilm_texts=FULL.minilm_texts)
QUICK = Settings(budgets={"lenet300": (("size", 0.25), ("size", 0.35))}, int8={"lenet300": (0.3,)},
                 latency={"lenet300": (0.8,)}, bisection_steps=5)


def run(out: Path, quick: bool = False, overwrite: bool = False, progress: bool = False,
        settings: Settings | None = None) -> str:
    """Compare the schemes into the folder ``out``; return summary.md (module doc).
    ``settings`` replaces :data:`FULL`/:data:`QUICK` (e.g. :data:`GOALS`)."""
    settings = settings or (QUICK if quick else FULL)
    mode = next((name for name, known in (("quick", QUICK), ("full", FULL), ("goals", GOALS)) if settings is known),
                "custom")
    log = Log("budgets", progress)
    started = time.perf_counter()
    with output_folder(out, overwrite) as folder, torch_threads(THREADS):
        journal = Journal(Path(out).parent / f".{Path(out).name}.rows.jsonl",
                          {"settings": asdict(settings), "source": source_digest(), "versions": versions()})
        runner = _Runner(settings, journal, log)
        rows = []
        for network, budgets in settings.budgets.items():
            rows += runner.network(network, budgets)
            data = _figure_data(network, [r for r in rows if r["network"] == network], runner.net(network))
            write_json(folder / f"{network}.json", data)
            _draw(data).savefig(folder / f"{network}.png", dpi=110, bbox_inches="tight")
        write_json(folder / "rows.json", {"rows": [_public(r) for r in rows]})
        int8 = [row for network, fractions in settings.int8.items() for row in runner.int8(network, fractions)]
        write_json(folder / "int8.json", {"rows": int8})
        latency = [row for network, fractions in settings.latency.items()
                   for row in runner.latency(network, fractions)]
        write_json(folder / "latency.json", {"rows": latency})
        minilm = runner.minilm() if settings.minilm else None
        if minilm is not None:
            write_json(folder / "minilm.json", minilm)
        seconds = time.perf_counter() - started
        text = _summary(settings, mode, runner, rows, int8, latency, minilm, seconds)
        (folder / "summary.md").write_text(text, encoding="utf-8")
        write_json(folder / "run.json", {"mode": mode, "settings": asdict(settings),
                                         "seconds": seconds, "versions": versions(),
                                         "python": platform.python_version(), "cpu_count": os.cpu_count(),
                                         "torch_threads": THREADS})
    journal.remove()
    log(f"wrote {out} in {seconds:.1f} s")
    return text


# --------------------------------------------------------------------------------------
# the compressions
# --------------------------------------------------------------------------------------


@dataclass
class _Net:
    name: str
    model: torch.nn.Module
    accuracy: float
    correct: torch.Tensor
    parameters: int
    flops: float
    cuts: list
    sample_inputs: bool
    fisher: dict | None = None
    by_lam: dict = field(default_factory=dict)  # (weighting, λ) -> {"model", "size", "flops"} (ratios)


class _Runner:
    """Every (network, scheme, budget) compressed and evaluated once (rows in the journal)."""

    def __init__(self, settings: Settings, journal: Journal, log):
        from netshrink.data import calibration_images, fashion_mnist

        self.settings, self.journal, self.log = settings, journal, log
        self.done = {_key(row): row for row in journal.rows}
        self.calibration = calibration_images(settings.calibration, seed=settings.seed)
        self.test_images, self.test_labels = fashion_mnist("test")
        self.nets: dict[str, _Net] = {}

    def net(self, name: str) -> _Net:
        if name not in self.nets:
            from netshrink import zoo
            from netshrink.budget import total_flops
            from netshrink.errors import UnsupportedCutError
            from netshrink.graph import find_cuts, network_input_cut

            model = zoo.load(name, progress=False).eval()
            correct = self._correct(model)
            example = self.calibration[:1000]
            try:
                network_input_cut(model, example)
                sample_inputs = True
            except UnsupportedCutError:
                sample_inputs = False
            cuts, _ = find_cuts(model, example=example)
            self.nets[name] = _Net(name, model, float(correct.double().mean()), correct,
                                   sum(p.numel() for p in model.parameters()), total_flops(model, example), cuts,
                                   sample_inputs)
            self.log(f"{name}: test accuracy {100 * self.nets[name].accuracy:.2f}%, "
                     f"{self.nets[name].parameters:,} parameters")
        return self.nets[name]

    def _correct(self, model) -> torch.Tensor:
        from netshrink.evaluate import predict_logits

        return predict_logits(model, self.test_images).argmax(dim=1) == self.test_labels

    def network(self, name: str, budgets) -> list[dict]:
        rows = []
        for kind, fraction in budgets:
            for scheme in SCHEMES:
                rows.append(self.row(name, scheme, kind, fraction))
        return rows

    def row(self, name: str, scheme: str, kind: str, fraction: float, **extra) -> dict:
        key = (name, scheme, kind, fraction, tuple(sorted(extra.items())))
        if key in self.done:
            return self.done[key]
        net = self.net(name)
        start = time.perf_counter()
        model, details = _compressed(scheme, kind, fraction, net, self, **extra)
        seconds = time.perf_counter() - start
        from netshrink.budget import total_flops
        from netshrink.quantize import stored_bytes

        correct = self._correct(model)
        parameters = sum(p.numel() for p in model.parameters())
        row = {"network": name, "scheme": scheme, "label": SCHEMES.get(scheme, scheme), "kind": kind,
               "target": fraction, "extra": dict(extra), "parameters": parameters,
               "params_ratio": parameters / net.parameters,
               "flops_ratio": total_flops(model, self.calibration[:1000]) / net.flops,
               "bytes_ratio": stored_bytes(model) / stored_bytes(net.model),
               "accuracy": float(correct.double().mean()), "drop_pt": 100 * (net.accuracy - correct.double().mean()),
               "seconds": seconds, "details": details, "correct": _packed(correct)}
        self.journal.append(row)
        self.done[key] = row
        self.log(f"{name} {scheme} {kind} {fraction:g}{' ' + str(extra) if extra else ''}: "
                 f"{100 * row['params_ratio']:.2f}% params, {100 * row['flops_ratio']:.1f}% FLOPs, "
                 f"drop {row['drop_pt']:.2f} pt, {seconds:.0f} s")
        return row

    def int8(self, name: str, fractions) -> list[dict]:
        return [self.row(name, "global", "size", fraction, quantize="int8") for fraction in fractions]

    def latency(self, name: str, fractions) -> list[dict]:
        """Latency budgets with the global allocation: the table's prediction against the
        measured batch-1 latency of each compressed model."""
        found = []
        for fraction in fractions:
            row = self.row(name, "global_units", "latency", fraction)
            found.append({key: row[key] for key in ("network", "kind", "target", "params_ratio", "flops_ratio",
                                                     "drop_pt", "details")})
        return found

    def minilm(self) -> dict:
        return _minilm(self.settings, self.journal, self.done, self.log)


def _key(row: dict) -> tuple:
    return (row["network"], row["scheme"], row["kind"], row["target"], tuple(sorted(row.get("extra", {}).items())))


def _packed(correct: torch.Tensor) -> str:
    return base64.b64encode(np.packbits(correct.numpy().astype(np.uint8)).tobytes()).decode()


def _unpacked(text: str, count: int) -> torch.Tensor:
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:count]
    return torch.from_numpy(bits.astype(bool))


def _public(row: dict) -> dict:
    return {key: value for key, value in row.items() if key != "correct"}


def _compressed(scheme: str, kind: str, fraction: float, net: _Net, runner: _Runner, **extra):
    """``(model, details)`` the scheme makes at the budget."""
    import netshrink
    from netshrink.budget import cost_model
    from netshrink.observe import Calibration

    from .peers import Flap, Kwon, cross_entropy, fisher_scores, flap_widths, kwon_widths

    model, data = net.model, runner.calibration
    if scheme in GLOBAL:
        stages = {"lowrank": True, "sample_inputs": net.sample_inputs} if scheme in STAGED else {}
        result = netshrink.compress(model, data, GLOBAL[scheme], **{kind: fraction}, **stages, **extra)
        details = {"widths": result.budget["widths"], "estimated_loss": result.budget["estimated_loss"]}
        if kind == "latency":
            details.update({key: result.budget[key] for key in ("achieved", "original_ms", "measured_ms",
                                                                 "table_error", "rounds")})
        return result.model, details
    example = data[:1000]
    costs = cost_model(model, net.cuts, kind, example)
    if scheme == "same_keep":
        keep = _largest_keep(net.cuts, costs, fraction)
        return netshrink.compress(model, data, "group_lasso", keep=keep).model, {"keep": keep}
    if scheme in ("uniform_lam", "priced_lam"):
        weighting = "uniform" if scheme == "uniform_lam" else "parameters"
        return _lam_scheme(model, data, kind, fraction, weighting, net, runner.settings.bisection_steps)
    if scheme == "kwon":
        if net.fisher is None:
            from netshrink.data import calibration_indices, fashion_mnist

            images = data[:runner.settings.fisher_images]
            _, labels = fashion_mnist("train")
            labels = labels[calibration_indices(runner.settings.calibration, runner.settings.seed)]
            labels = labels[:runner.settings.fisher_images]
            net.fisher = fisher_scores(model, list(zip(images.split(256), labels.split(256))), net.cuts,
                                       cross_entropy)
        widths = kwon_widths(net.fisher, net.cuts, costs, fraction)
        return netshrink.compress(model, data, Kwon(widths, net.fisher)).model, {"widths": dict(widths)}
    if scheme == "flap":
        widths = flap_widths(model, net.cuts, Calibration(data), costs, fraction)
        return netshrink.compress(model, data, Flap(widths), chaining="parallel").model, {"widths": dict(widths)}
    raise ValueError(f"unknown scheme {scheme!r}")


def _largest_keep(cuts, costs, fraction: float) -> float:
    """The largest ``keep`` whose widths (``ceil(keep·width)`` at every cut) fit the budget."""
    from netshrink.methods.base import count_from_fraction

    def cost(keep):
        return costs.value({cut.name: count_from_fraction(keep, cut.width) for cut in cuts})

    low, high = 1e-4, 1.0
    if cost(high) <= fraction * costs.total:
        return high
    for _ in range(40):
        middle = (low + high) / 2
        if cost(middle) <= fraction * costs.total:
            low = middle
        else:
            high = middle
    return low


def _lam_scheme(model, data, kind: str, fraction: float, weighting: str, net: _Net, steps: int):
    """Group lasso with ``weighting`` at the λ :func:`_bisected` finds for the budget. Each
    compression is kept by (weighting, λ) on ``net``, so the budgets of one network share
    the λs their bisections have in common (the same results, computed once)."""
    import netshrink
    from netshrink.budget import total_flops

    def at(lam):
        if (weighting, lam) not in net.by_lam:
            result = netshrink.compress(model, data, "group_lasso", lam=lam, weighting=weighting)
            net.by_lam[weighting, lam] = {"model": result.model, "size": result.ratio,
                                          "flops": total_flops(result.model, data[:1000]) / net.flops}
        return net.by_lam[weighting, lam]

    best, lam = _bisected(at, lambda found: found[kind], fraction, steps)
    return best["model"], {"lam": lam, "fits": best[kind] <= fraction}


def _bisected(compress_at, measure, fraction: float, steps: int):
    """``(result, λ)``: the largest result of ``compress_at(λ)`` whose ``measure`` fits
    ``fraction``, by a log-scale bisection of λ in [1e-4, 1] (``steps`` compressions after
    λ = λ_max, the smallest model)."""
    low, high = 1e-4, 1.0
    best, best_lam = compress_at(high), high
    for _ in range(steps):
        middle = math.sqrt(low * high)
        result = compress_at(middle)
        if measure(result) <= fraction:
            best, best_lam, high = result, middle, middle
        else:
            low = middle
    return best, best_lam


# --------------------------------------------------------------------------------------
# MiniLM
# --------------------------------------------------------------------------------------


def _minilm(settings: Settings, journal: Journal, done: dict, log) -> dict:
    """MiniLM-L6 at half of its FFN and attention parameters, every scheme (cosine and
    nearest-neighbour agreement of sentence embeddings on held-out texts)."""
    import netshrink
    from netshrink.budget import cost_model
    from netshrink.data.text import fortunes
    from netshrink.graph import find_cuts
    from netshrink.observe import Calibration

    from .minilm import FULL as MINILM, agreement, load_encoder, sentence_embeddings, tokenized
    from .peers import Flap, Kwon, fisher_scores, flap_widths, kwon_widths

    model, tokenizer = load_encoder()
    texts = fortunes(seed=settings.seed)
    calibration_count, held_count = settings.minilm_texts
    data = tokenized(texts[:calibration_count], tokenizer, MINILM)
    held_out = tokenized(texts[-held_count:], tokenizer, MINILM)
    original = sentence_embeddings(model, held_out)
    cuts, _ = find_cuts(model, example=data[0])
    costs = cost_model(model, cuts, "size", data[0])
    modules = dict(model.named_modules())
    layers = {path for cut in cuts for path in (*cut.producers, *cut.consumers)}
    ffn_attention = sum(p.numel() for path in layers for p in modules[path].parameters())
    fraction = (costs.total - 0.5 * ffn_attention) / costs.total
    log(f"minilm: {costs.total:,.0f} parameters, {ffn_attention:,} in FFN and attention; size {fraction:.4f}")
    rows = []
    fisher = None
    for scheme in SCHEMES:
        key = ("minilm", scheme, "size", fraction, ())
        if key in done:
            rows.append(done[key])
            continue
        start = time.perf_counter()
        if scheme in GLOBAL:
            stages = {"lowrank": True} if scheme in STAGED else {}
            compressed = netshrink.compress(model, data, GLOBAL[scheme], size=fraction, **stages).model
        elif scheme == "same_keep":
            keep = _largest_keep(cuts, costs, fraction)
            compressed = netshrink.compress(model, data, "group_lasso", keep=keep).model
        elif scheme in ("uniform_lam", "priced_lam"):
            weighting = "uniform" if scheme == "uniform_lam" else "parameters"
            compressed, _ = _bisected(lambda lam: netshrink.compress(model, data, "group_lasso", lam=lam,
                                                                     weighting=weighting),
                                      lambda result: result.ratio, fraction, settings.bisection_steps)
            compressed = compressed.model
        elif scheme == "kwon":
            fisher = fisher if fisher is not None else fisher_scores(model, data[:8], cuts)
            compressed = netshrink.compress(model, data, Kwon(kwon_widths(fisher, cuts, costs, fraction),
                                                              fisher)).model
        else:
            widths = flap_widths(model, cuts, Calibration(data), costs, fraction)
            compressed = netshrink.compress(model, data, Flap(widths), chaining="parallel").model
        seconds = time.perf_counter() - start
        cosine, neighbours = agreement(original, sentence_embeddings(compressed, held_out))
        parameters = sum(p.numel() for p in compressed.parameters())
        row = {"network": "minilm", "scheme": scheme, "label": SCHEMES[scheme], "kind": "size", "target": fraction,
               "extra": {}, "params_ratio": parameters / costs.total,
               "ffn_attention_removed": (costs.total - parameters) / ffn_attention, "cosine": cosine,
               "neighbours": neighbours, "seconds": seconds}
        journal.append(row)
        rows.append(row)
        log(f"minilm {scheme}: cosine {cosine:.4f}, neighbours {neighbours:.3f}, {seconds:.0f} s")
    return {"target_size": fraction, "ffn_attention_parameters": ffn_attention, "parameters": costs.total,
            "calibration_texts": calibration_count, "held_out_texts": held_count, "goal": MINILM_GOAL, "rows": rows}


# --------------------------------------------------------------------------------------
# figures and summary
# --------------------------------------------------------------------------------------


def _figure_data(network: str, rows: list[dict], net: _Net) -> dict:
    curves = []
    for scheme, label in SCHEMES.items():
        for kind in ("size", "flops"):
            mine = sorted((r for r in rows if r["scheme"] == scheme and r["kind"] == kind and not r["extra"]),
                          key=lambda r: r["target"])
            if mine:
                curves.append({"scheme": scheme, "label": label, "kind": kind,
                               "target": [r["target"] for r in mine],
                               "params_ratio": [r["params_ratio"] for r in mine],
                               "flops_ratio": [r["flops_ratio"] for r in mine],
                               "drop_pt": [r["drop_pt"] for r in mine]})
    return {"network": network, "accuracy": net.accuracy, "parameters": net.parameters, "flops": net.flops,
            "curves": curves}


def _draw(data: dict):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    for axis, measure, title in zip(axes, ("params_ratio", "flops_ratio"), ("parameters", "forward FLOPs")):
        for curve in data["curves"]:
            color, marker, line = STYLES[curve["scheme"]]
            label = curve["label"] + (" (FLOPs budget)" if curve["kind"] == "flops" else "")
            axis.plot([100 * v for v in curve[measure]], curve["drop_pt"], color=color, marker=marker,
                      linestyle=line if curve["kind"] == "size" else ":", label=label, markersize=6,
                      markerfacecolor="none" if curve["kind"] == "flops" else color)
        axis.axhline(0, color="0.8", linewidth=0.8)
        axis.set_xlabel(f"{title} kept (% of the original)")
        axis.set_ylabel("test accuracy drop (points, lower is better)")
        axis.set_title(f"{data['network']} ({100 * data['accuracy']:.2f}% test accuracy): drop vs {title}")
        axis.grid(alpha=0.3)
        drops = [d for c in data["curves"] for d in c["drop_pt"]] or [1.0]
        top = min(max(drops) * 1.05 + 0.1, 6)
        axis.set_ylim(min(-0.3, min(drops) - 0.2), top)
        stacked = {}  # points above the shown range: their value at the top edge, one under another
        for curve in data["curves"]:
            color = STYLES[curve["scheme"]][0]
            for x, drop in zip(curve[measure], curve["drop_pt"]):
                if drop > top:
                    below = stacked[round(100 * x)] = stacked.get(round(100 * x), -1) + 1
                    axis.annotate(f"↑{drop:.0f}", (100 * x, top), xytext=(0, -10 - 9 * below),
                                  textcoords="offset points", ha="center", fontsize=7, color=color)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8)
    figure.suptitle("Fashion-MNIST (stands in for the seeds' MNIST/ImageNet, not reachable here); "
                    "no retraining; 10,000 test images")
    return figure


def _best_within(rows: list[dict], kind: str, drop: float) -> dict | None:
    """The row with the smallest target within ``drop`` points, among the budgets of ``kind``."""
    fitting = [r for r in rows if r["kind"] == kind and r["drop_pt"] <= drop]
    return min(fitting, key=lambda r: (r["params_ratio"] if kind == "size" else r["flops_ratio"]), default=None)


def _summary(settings, mode, runner, rows, int8, latency, minilm, seconds) -> str:
    lines = ["# Budgets: the global allocation against the schemes it replaces", "",
             f"{mode.capitalize()} run, {seconds / 60:.1f} minutes, {THREADS} torch threads. "
             f"Fashion-MNIST stands in for MNIST and ImageNet (not reachable here); calibration "
             f"{settings.calibration:,} training images, accuracy on the 10,000 test images, no retraining. "
             "Every scheme gets the same budget on the same model and data.", "",
             "## Quality goals", "",
             "| goal | netshrink's best | every scheme (smallest fraction within the drop) |", "|---|---|---|"]
    for network, kind, fraction, drop in QUALITY_GOALS:
        mine = [r for r in rows if r["network"] == network and not r["extra"]]
        if not mine:
            continue
        measure = "params_ratio" if kind == "size" else "flops_ratio"
        best_of = {scheme: _best_within([r for r in mine if r["scheme"] == scheme], kind, drop) for scheme in SCHEMES}
        cells = [f"{scheme} {_pct(best[measure]) if best else '—'}" for scheme, best in best_of.items()]
        best = min((best_of[scheme] for scheme in GLOBAL if best_of[scheme] is not None),
                   key=lambda r: (r[measure], r["drop_pt"]), default=None)
        verdict = "—" if best is None else (f"{best['scheme']} {_pct(best[measure])} ({best['drop_pt']:+.2f} pt): "
                                            f"{'met' if best[measure] <= fraction + 1e-9 else 'missed'}")
        lines.append(f"| {network}: ≤ {_pct(fraction)} of the {'parameters' if kind == 'size' else 'FLOPs'} within "
                     f"{drop} pt | {verdict} | {'; '.join(cells)} |")
    lines += ["", "## Every budget: accuracy drop (pt), and the scheme's accuracy minus the global allocation's "
              "(pt; negative: the global allocation is better) ± its paired standard error", ""]
    for network in dict.fromkeys(r["network"] for r in rows):
        net = runner.net(network)
        mine = [r for r in rows if r["network"] == network and not r["extra"]]
        lines += [f"### {network} ({100 * net.accuracy:.2f}%, {net.parameters:,} parameters)", "",
                  "| budget | " + " | ".join(SCHEMES) + " |", "|---|" + "---|" * len(SCHEMES)]
        for kind, fraction in dict.fromkeys((r["kind"], r["target"]) for r in mine):
            point = {r["scheme"]: r for r in mine if r["kind"] == kind and r["target"] == fraction}
            reference = point.get("global")
            cells = []
            for scheme in SCHEMES:
                row = point.get(scheme)
                if row is None:
                    cells.append("—")
                    continue
                size = f"{_pct(row['params_ratio'])} p / {_pct(row['flops_ratio'])} F"
                if scheme == "global" or reference is None:
                    cells.append(f"{row['drop_pt']:.2f} ({size})")
                    continue
                count = len(net.correct)
                gap = 100 * (row["accuracy"] - reference["accuracy"])
                se = paired_se_pt(_unpacked(row["correct"], count), _unpacked(reference["correct"], count))
                cells.append(f"{row['drop_pt']:.2f} ({size}; {gap:+.2f} ± {se:.2f})")
            lines.append(f"| {kind} {fraction:g} | " + " | ".join(cells) + " |")
        lines.append("")
    if int8:
        lines += ["## int8 weights on top of the global allocation", "",
                  "| network | size budget | parameters | bytes (of float32) | drop (pt) |", "|---|---|---|---|---|"]
        for row in int8:
            lines.append(f"| {row['network']} | {row['target']:g} | {_pct(row['params_ratio'])} | "
                         f"{_pct(row['bytes_ratio'])} | {row['drop_pt']:.2f} |")
        network, fraction, drop = INT8_GOAL
        fitting = [r for r in int8 if r["network"] == network and r["drop_pt"] <= drop]
        if fitting:
            best = min(fitting, key=lambda r: r["bytes_ratio"])
            lines += ["", f"Goal {network} ≤ {_pct(fraction)} of float32 bytes within {drop} pt: "
                          f"{_pct(best['bytes_ratio'])} ({best['drop_pt']:+.2f} pt): "
                          f"{'met' if best['bytes_ratio'] <= fraction else 'missed'}."]
        lines.append("")
    if latency:
        lines += ["## Latency budgets, met as measured", "",
                  "Batch-1 latency of the compressed model against the original's, timed in alternation "
                  "(`netshrink.budget.measured`). The table's error is its first allocation's predicted "
                  "fraction against that model's measured one; stand-ins are models of the allocated "
                  "shapes without the method's solves.", "",
                  "| network | latency budget | table error | stand-ins | compressions | measured | "
                  "original (ms) | compressed (ms) | drop (pt) |", "|---|---|---|---|---|---|---|---|---|"]
        for row in latency:
            d = row["details"]
            stand_ins = sum(r["stand_in"] for r in d["rounds"])
            lines.append(f"| {row['network']} | {row['target']:g} | {100 * d['table_error']:+.1f}% | {stand_ins} | "
                         f"{len(d['rounds']) - stand_ins} | {d['achieved']:.4f} | {d['original_ms']:.3f} | "
                         f"{d['measured_ms']:.3f} | {row['drop_pt']:.2f} |")
        lines.append("")
    if minilm is not None:
        lines += ["## MiniLM-L6: half of the FFN and attention parameters", "",
                  f"Size budget {minilm['target_size']:.4f} of {minilm['parameters']:,.0f} parameters; "
                  f"{minilm['calibration_texts']} calibration texts, {minilm['held_out_texts']} held out. "
                  f"Goal: cosine ≥ {minilm['goal']}.", "",
                  "| scheme | parameters kept | FFN + attention removed | cosine | neighbours |", "|---|---|---|---|---|"]
        for row in minilm["rows"]:
            lines.append(f"| {row['label']} | {_pct(row['params_ratio'])} | {_pct(row['ffn_attention_removed'])} | "
                         f"{row['cosine']:.4f} | {row['neighbours']:.3f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _pct(value: float) -> str:
    return f"{100 * value:.3g}%"
