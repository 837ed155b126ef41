"""Seed 001 (Damle, Numerical Analysis Project 1): Goals 1–7, reproduced with netshrink.

``netshrink reproduce damle [--quick] [--out DIR]`` calls :func:`run`, which writes one
folder, atomically::

    g1_algorithm.md            Goal 1: the algorithm, norm updates, O(mnk), Questions 1–6
    g2_cpqr_scaling.png/.json  Goal 2: runtime of cpqr(A, k=20) vs m, n and m = n
    g3_kernel_id.png/.json     Goal 3: rank-k ID error of a Gaussian kernel matrix vs SVD
    g4_test_accuracy.png/.json Goal 4: mlp7's test accuracy (overall and per class)
    g5_activation_id.png/.json Goal 5: rank-k ID error of σ(X_cᵀ W⁽¹⁾) vs SVD
    g6_first_layer.png/.json   Goal 6: accuracy vs neurons kept, first layer only, ε sweep
    g7_whole_model.png/.json   Goal 7: accuracy vs neurons / parameters kept, all layers
    summary.md                 headline numbers and what each figure shows
    run.json                   settings, run times, versions, the model's cache record

Every JSON holds the numbers behind the PNG of the same stem. The experiments use
netshrink's public API only (``netshrink.compress``, ``netshrink.linalg``,
``netshrink.zoo``, ``netshrink.data``, ``netshrink.evaluate``), the way a user would.

Notation. The seed writes a layer as ``σ(xᵀW)`` with ``W: (d, n)`` and neurons as the
columns of ``W``; PyTorch's ``nn.Linear.weight`` is ``(out, in)``, so there a neuron is
a row. ε is the ``tol`` of :func:`netshrink.compress`: at each cut the rank ``k`` is the
first with ``|r_{k+1,k+1}| · ‖W_consumer‖₂ ≤ ε`` (pivoted QR of ``Z/√N``): the seed's
"practical simplification" ``|r_{k+1,k+1}|/|r₁₁| ≤ ε/‖a‖`` for activations measured in
units of their top pivot.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from netshrink.experiments.runtime import Log, output_folder, torch_threads, write_json

__all__ = ["run", "Settings", "FULL", "QUICK"]

MODEL = "mlp7"
#: Accuracy drops (percentage points) at which Goal 7 reports the smallest model, with
#: the parameter fraction the project aims at for each.
TARGET_DROPS = (0.2, 1.0)
ACCEPTANCE = {0.2: 0.45, 1.0: 0.15}
#: Relative singular values below this are treated as round-off (Goals 3 and 5): both
#: σ_{k+1} and the ID error are computed with an absolute error of a few ε_mach·σ₁, so
#: their ratio is only meaningful well above that.
ROUNDOFF = 1e-13

#: torch threads used by every step (see :func:`.runtime.torch_threads`): Goal 2 measures
#: how the operation count grows, which threads only blur.
THREADS = 1

METHOD_CPQR = "column-pivoted QR"
METHOD_SVD = "SVD (optimal)"


@dataclass(frozen=True)
class Settings:
    """Sizes of one reproduction (``FULL`` or ``QUICK``)."""

    calibration_size: int
    calibration_seed: int
    # Goal 2: timing of cpqr(A, k) on random float64 matrices. The smallest sizes are
    # chosen so that A (and cpqr's working copy) no longer fit in a last-level cache of a
    # few tens of MB; below that, time grows faster than the flop count as data spills.
    timing_k: int
    fixed_n: int                      # n while m varies
    m_sizes: tuple[int, ...]
    fixed_m: int                      # m while n varies
    n_sizes: tuple[int, ...]
    square_sizes: tuple[int, ...]     # m = n
    timing_repeats: int
    # Goal 3: Gaussian kernel matrix.
    kernel_points: int
    kernel_max_rank: int
    kernel_seed: int
    # Goal 5: number of ranks k on the grid (plus a few small ones).
    activation_ranks: int
    # Goals 6 and 7: ε grid (points per decade), stopping rules, bisection steps on log ε
    # for each of the 0.2 pt and 1 pt boundaries.
    eps_start: float
    eps_per_decade: int
    eps_max: float
    stop_drop: float                  # stop the G6 sweep once the drop (pt) exceeds this
    g7_per_decade: int
    g7_stop_drop: float
    bisection_steps: int
    keep_fractions: tuple[float, ...]  # Goal 7 comparison: keep= sweep (empty: skipped)
    # Goal 8: parameter budgets of the global allocation (method interpolative)
    budget_sizes: tuple[float, ...] = ()


FULL = Settings(
    calibration_size=5000,
    calibration_seed=0,
    timing_k=20,
    fixed_n=1000,
    m_sizes=(4000, 5657, 8000, 11314, 16000, 22627, 32000, 45255, 64000),
    fixed_m=1000,
    n_sizes=(4000, 5657, 8000, 11314, 16000, 22627, 32000, 45255, 64000),
    square_sizes=(2000, 2828, 4000, 5657, 8000, 11314),
    timing_repeats=5,
    kernel_points=200,
    kernel_max_rank=100,
    kernel_seed=0,
    activation_ranks=40,
    eps_start=1e-3,
    eps_per_decade=4,
    eps_max=1e4,
    stop_drop=20.0,
    g7_per_decade=4,
    g7_stop_drop=20.0,
    bisection_steps=5,
    keep_fractions=(0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.12, 0.1, 0.08),
    budget_sizes=(0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.15, 0.2),
)

QUICK = Settings(
    calibration_size=2000,
    calibration_seed=0,
    timing_k=20,
    fixed_n=500,
    m_sizes=(8000, 16000, 32000, 64000),
    fixed_m=500,
    n_sizes=(8000, 16000, 32000, 64000),
    square_sizes=(2000, 2828, 4000, 5657),
    timing_repeats=3,
    kernel_points=200,
    kernel_max_rank=100,
    kernel_seed=0,
    activation_ranks=10,
    eps_start=1e-3,
    eps_per_decade=1,
    eps_max=1e4,
    stop_drop=10.0,
    g7_per_decade=1,
    g7_stop_drop=10.0,
    bisection_steps=2,
    keep_fractions=(),
    budget_sizes=(0.1,),
)


# --------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------


def run(out: Path, quick: bool = False, overwrite: bool = False, progress: bool = False) -> str:
    """Reproduce Goals 1–8 of seed 001 into the folder ``out``; return summary.md's text.

    Args:
        out: output folder; written atomically (complete or not at all).
        quick: small sizes and fewer points (under 3 minutes once mlp7 is trained).
        overwrite: replace an existing ``out``; without it OutputExistsError is raised
            before any work is done.
        progress: report each step on stderr.
    """
    settings = QUICK if quick else FULL
    log = Log("damle", progress)
    started = time.perf_counter()
    with output_folder(out, overwrite) as folder:
        seconds: dict[str, float] = {}

        def timed(goal: str, function, *args):
            log(f"{goal}: start")
            start = time.perf_counter()
            with torch_threads(THREADS):
                value = function(*args)
            seconds[goal] = time.perf_counter() - start
            log(f"{goal}: done in {seconds[goal]:.1f} s")
            return value

        g1 = timed("G1", _goal1, folder)
        g2 = timed("G2", _goal2, folder, settings, log)
        g3 = timed("G3", _goal3, folder, settings)
        context = timed("setup", _setup, settings, progress)
        g4 = timed("G4", _goal4, folder, context)
        g5 = timed("G5", _goal5, folder, settings, context, log)
        g6 = timed("G6", _goal6, folder, settings, context, g5, log)
        g7 = timed("G7", _goal7, folder, settings, context, g6, log)
        g8 = timed("G8", _goal8, folder, settings, context, g7, log)
        seconds["total"] = time.perf_counter() - started
        text = _summary(settings, quick, context, seconds, g1, g2, g3, g4, g5, g6, g7) + _g8_text(g8)
        (folder / "summary.md").write_text(text, encoding="utf-8")
        write_json(folder / "run.json", {
            "mode": "quick" if quick else "full",
            "settings": asdict(settings),
            "seconds": seconds,
            "model": MODEL,
            "model_info": {
                key: context.info.get(key)
                for key in ("cache_key", "architecture", "parameters", "epochs", "seed",
                            "test_accuracy", "torch_version")
            },
            "torch": torch.__version__,
            "torch_threads": THREADS,
            "python": platform.python_version(),
        })
    log(f"wrote {out} in {seconds['total']:.1f} s")
    return text


# --------------------------------------------------------------------------------------
# Goal 1: the algorithm (written up in docs/cpqr.md)
# --------------------------------------------------------------------------------------


def _docs_page() -> Path:
    # src/netshrink/experiments/damle.py -> repository root is three folders up from src/
    return Path(__file__).resolve().parents[3] / "docs" / "cpqr.md"


def _goal1(folder: Path) -> dict:
    page = _docs_page()
    target = folder / "g1_algorithm.md"
    if page.is_file():
        shutil.copyfile(page, target)
        return {"copied": True, "source": str(page)}
    target.write_text(
        "# Goal 1: column-pivoted QR\n\n"
        "The write-up of Goal 1 (pseudocode of Householder QR with column pivoting stopped "
        "after k steps, the column-norm update scheme, the O(mnk) operation count and the "
        "answers to Questions 1–6) lives in the netshrink repository as `docs/cpqr.md`. "
        f"It was not found next to this installation (looked for {page}); the "
        "implementation is `netshrink.linalg.cpqr`.\n",
        encoding="utf-8",
    )
    return {"copied": False, "source": str(page)}


# --------------------------------------------------------------------------------------
# Goal 2: O(mnk) scaling of cpqr
# --------------------------------------------------------------------------------------


def _time_cpqr(m: int, n: int, k: int, repeats: int, seed: int) -> dict:
    from netshrink.linalg import cpqr

    generator = np.random.default_rng(seed)
    matrix = torch.from_numpy(generator.standard_normal((m, n)))  # float64
    wall, cpu = [], []
    for _ in range(repeats):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        cpqr(matrix, k=k)
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    del matrix
    return {
        "m": m,
        "n": n,
        "median_cpu_seconds": float(np.median(cpu)),
        "median_wall_seconds": float(np.median(wall)),
        "cpu_seconds": cpu,
        "wall_seconds": wall,
    }


def _slope(sizes, seconds) -> float:
    return float(np.polyfit(np.log(np.asarray(sizes, float)), np.log(np.asarray(seconds, float)), 1)[0])


def _goal2(folder: Path, settings: Settings, log) -> dict:
    from netshrink.linalg import cpqr

    k = settings.timing_k
    cpqr(torch.from_numpy(np.random.default_rng(0).standard_normal((400, 300))), k=k)  # warm-up
    load_before = _loadavg()
    series = {}
    plan = {
        "m": [(m, settings.fixed_n) for m in settings.m_sizes],
        "n": [(settings.fixed_m, n) for n in settings.n_sizes],
        "square": [(s, s) for s in settings.square_sizes],
    }
    for name, shapes in plan.items():
        rows = []
        for index, (m, n) in enumerate(shapes):
            rows.append(_time_cpqr(m, n, k, settings.timing_repeats, seed=1000 + index))
            log(f"G2: cpqr({m}×{n}, k={k}) median {rows[-1]['median_cpu_seconds'] * 1e3:.1f} ms CPU, "
                f"{rows[-1]['median_wall_seconds'] * 1e3:.1f} ms wall")
        sizes = [row["n"] if name == "n" else row["m"] for row in rows]
        cpu = [row["median_cpu_seconds"] for row in rows]
        wall = [row["median_wall_seconds"] for row in rows]
        half = max(2, len(rows) // 2)
        series[name] = {
            "sizes": sizes,
            "median_cpu_seconds": cpu,
            "median_wall_seconds": wall,
            "runs": rows,
            "slope": _slope(sizes, cpu),
            "slope_largest_half": _slope(sizes[-half:], cpu[-half:]),
            "slope_wall": _slope(sizes, wall),
            "expected_slope": 2.0 if name == "square" else 1.0,
        }
    data = {
        "goal": 2,
        "what": f"run time of netshrink.linalg.cpqr(A, k={k}) on A ~ N(0,1) float64 with one "
        f"torch thread; median of {settings.timing_repeats} runs of the process CPU time "
        "(insensitive to other processes sharing the cores) and of the wall time; slope = "
        "least-squares fit of log(CPU time) on log(size)",
        "k": k,
        "repeats": settings.timing_repeats,
        "torch_threads": torch.get_num_threads(),
        "vs_m": {"fixed_n": settings.fixed_n, **series["m"]},
        "vs_n": {"fixed_m": settings.fixed_m, **series["n"]},
        "square": series["square"],
        "load_average_before": load_before,
        "load_average_after": _loadavg(),
        "cpu_count": os.cpu_count(),
    }
    _plot_g2(folder / "g2_cpqr_scaling.png", data)
    write_json(folder / "g2_cpqr_scaling.json", data)
    return data


def _plot_g2(path: Path, data: dict) -> None:
    figure, axes = _figure(1, 3, (15, 4.8))
    k = data["k"]
    panels = [
        (data["vs_m"], "m (rows)", f"n = {data['vs_m']['fixed_n']:,} fixed, vary m"),
        (data["vs_n"], "n (columns)", f"m = {data['vs_n']['fixed_m']:,} fixed, vary n"),
        (data["square"], "m = n", "square, vary m = n"),
    ]
    for axis, (series, xlabel, title) in zip(axes, panels):
        sizes = np.asarray(series["sizes"], float)
        seconds = np.asarray(series["median_cpu_seconds"], float)
        axis.loglog(sizes, seconds, "o", color="C0",
                    label=f"{METHOD_CPQR}, k = {k}: CPU time (median of {data['repeats']})")
        axis.loglog(sizes, series["median_wall_seconds"], "o", color="C0", markerfacecolor="none",
                    alpha=0.6, label="same runs, wall time")
        slope = series["slope"]
        intercept = np.mean(np.log(seconds) - slope * np.log(sizes))
        axis.loglog(sizes, np.exp(intercept) * sizes**slope, "-", color="C0", alpha=0.7,
                    label=f"fit to CPU time: slope {slope:.2f}")
        expected = series["expected_slope"]
        anchor = seconds[-1] * (sizes / sizes[-1]) ** expected
        axis.loglog(sizes, anchor, "--", color="gray", label=f"reference slope {expected:g}")
        _plain_log_ticks(axis.xaxis, list(series["sizes"]))
        _plain_log_ticks(axis.yaxis)
        axis.set_xlabel(xlabel)
        axis.set_ylabel("time per call (s, one thread)")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8, loc="upper left")
    figure.suptitle(f"Goal 2: run time of column-pivoted QR stopped at k = {k} "
                    "is O(mnk): linear in m and in n, quadratic in m = n")
    _save(figure, path)


def _plain_number(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:g}"


def _plain_log_ticks(axis, values=None, text=_plain_number) -> None:
    """Label a log axis with ``text(value)`` — plain numbers (1,000 / 0.05) by default —
    instead of 10^x notation; with ``values``, at about five of them (the last included)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    def label(value, _position=None):
        return text(value)

    if values is not None:
        shown = list(values)[:: max(1, math.ceil(len(values) / 5))]
        if values[-1] not in shown:
            shown.append(values[-1])
        axis.set_major_locator(FixedLocator(shown))
        axis.set_major_formatter(FuncFormatter(label))
        axis.set_minor_formatter(NullFormatter())
    else:
        axis.set_major_formatter(FuncFormatter(label))
        axis.set_minor_formatter(FuncFormatter(
            lambda v, p: label(v) if f"{v:.0e}"[0] in "25" else ""))


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# --------------------------------------------------------------------------------------
# Goal 3: ID of a Gaussian kernel matrix vs the optimal rank-k error
# --------------------------------------------------------------------------------------


def _goal3(folder: Path, settings: Settings) -> dict:
    from netshrink.linalg import interpolative_decomposition

    generator = np.random.default_rng(settings.kernel_seed)
    points = generator.uniform(0.0, 1.0, size=(settings.kernel_points, 2))
    squared = ((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)
    kernel = torch.from_numpy(np.exp(-2.0 * squared))  # G_ij = exp(-2 ||x_i - x_j||^2), float64
    sigma = torch.linalg.svdvals(kernel).numpy()
    ranks = list(range(1, settings.kernel_max_rank + 1))
    id_error, bound, rank_reached = [], [], []
    for k in ranks:
        decomposition = interpolative_decomposition(kernel, k=k)
        cols, interpolation = decomposition
        id_error.append(_spectral_norm(kernel - kernel[:, cols] @ interpolation))
        bound.append(float(decomposition.error_bound))
        rank_reached.append(int(decomposition.rank))
    optimal = [float(sigma[k]) for k in ranks]  # σ_{k+1}, 0-based index k
    ratio = [e / s if s > 0 else None for e, s in zip(id_error, optimal)]
    resolved = [s > ROUNDOFF * sigma[0] for s in optimal]
    resolved_ratios = [r for r, ok in zip(ratio, resolved) if ok and r is not None]
    data = {
        "goal": 3,
        "what": "G_ij = exp(-2 ||x_i - x_j||^2), x_i iid uniform on the unit square; rank-k "
        "interpolative decomposition from column-pivoted QR (netshrink.linalg."
        "interpolative_decomposition) vs the optimal rank-k error sigma_{k+1}(G)",
        "n_points": settings.kernel_points,
        "seed": settings.kernel_seed,
        "sigma_1": float(sigma[0]),
        "k": ranks,
        "cpqr_error": id_error,
        "cpqr_error_bound_r22": bound,
        "cpqr_rank": rank_reached,
        "svd_error": optimal,
        "ratio": ratio,
        "roundoff_threshold_relative": ROUNDOFF,
        "resolved": resolved,
        "ratio_resolved_max": max(resolved_ratios) if resolved_ratios else None,
        "ratio_resolved_median": float(np.median(resolved_ratios)) if resolved_ratios else None,
        "ratio_resolved_min": min(resolved_ratios) if resolved_ratios else None,
        "last_resolved_k": max((k for k, ok in zip(ranks, resolved) if ok), default=None),
    }
    _plot_rank_errors(
        folder / "g3_kernel_id.png", data, symbol="G",
        title=f"Goal 3: Gaussian kernel matrix G ({settings.kernel_points}×{settings.kernel_points}), "
        "rank-k approximation error",
    )
    write_json(folder / "g3_kernel_id.json", data)
    return data


def _plot_rank_errors(path: Path, data: dict, symbol: str, title: str) -> None:
    figure, (top, bottom) = _figure(2, 1, (8, 7.5), sharex=True, height_ratios=(2.2, 1))
    k = np.asarray(data["k"], float)
    scale = data["sigma_1"]
    cpqr_error = np.asarray(data["cpqr_error"], float) / scale
    svd_error = np.asarray(data["svd_error"], float) / scale
    marker = "." if len(k) > 60 else "o"
    top.semilogy(k, _positive(cpqr_error), marker + "-", color="C0", markersize=4,
                 label=rf"{METHOD_CPQR} (ID): $\|{symbol} - {symbol}_{{:,C}}\,T\|_2 / \|{symbol}\|_2$")
    top.semilogy(k, _positive(svd_error), marker + "-", color="C1", markersize=4,
                 label=rf"{METHOD_SVD}: $\sigma_{{k+1}}({symbol}) / \sigma_1({symbol})$")
    if np.nanmin(_positive(svd_error)) < 100 * ROUNDOFF:
        top.axhline(ROUNDOFF, color="gray", linestyle=":", linewidth=1,
                    label=f"round-off level used for the ratio ({ROUNDOFF:g})")
    if "numerical_rank" in data:
        top.set_xlim(-0.01 * data["width"], 1.01 * data["width"])
        for axis in (top, bottom):
            axis.axvline(data["numerical_rank"], color="C1", linestyle=":", linewidth=1,
                         label=(f"numerical rank {data['numerical_rank']} of {data['width']} "
                                f"({data['dead_neurons']} neurons never fire)") if axis is top else None)
    top.set_ylabel(rf"relative error in the 2-norm (÷ $\|{symbol}\|_2$)")
    top.set_title(title)
    top.grid(True, which="both", alpha=0.3)
    top.legend(fontsize=8)
    ratio = np.array([np.nan if r is None else r for r in data["ratio"]], float)
    resolved = np.asarray(data["resolved"], bool)
    bottom.plot(k[resolved], ratio[resolved], marker + "-", color="C2", markersize=4,
                label=f"{METHOD_CPQR} / {METHOD_SVD}")
    if (~resolved).any():
        bottom.plot(k[~resolved], ratio[~resolved], marker, color="lightgray", markersize=4,
                    label="below round-off (not meaningful)")
    bottom.axhline(1.0, color="black", linewidth=0.8, label="1 (the SVD is optimal)")
    shown = ratio[resolved]
    if shown.size:
        bottom.set_ylim(0.9, max(1.2, float(np.nanmax(shown)) * 1.1))
    bottom.set_xlabel("rank k (number of columns kept)")
    bottom.set_ylabel("error ratio (≥ 1)")
    bottom.grid(True, which="both", alpha=0.3)
    bottom.legend(fontsize=8)
    _save(figure, path)


def _spectral_norm(matrix: torch.Tensor) -> float:
    """‖M‖₂ of ``M: (p, q)`` from the largest eigenvalue of the smaller Gram matrix.

    Several times faster than a singular value decomposition; the largest singular value
    comes out with a relative error of a few ε_mach (the Gram matrix is formed after
    scaling by a power of two, so nothing overflows or underflows).
    """
    if matrix.numel() == 0:
        return 0.0
    matrix = matrix.to(torch.float64)
    top = float(matrix.abs().max())
    if top == 0.0:
        return 0.0
    exponent = math.frexp(top)[1]
    scaled = matrix * 2.0**-exponent
    gram = scaled.T @ scaled if scaled.shape[1] <= scaled.shape[0] else scaled @ scaled.T
    return math.sqrt(max(float(torch.linalg.eigvalsh(gram)[-1]), 0.0)) * 2.0**exponent


def _positive(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, float).copy()
    values[~(values > 0)] = np.nan  # a log axis cannot show exact zeros
    return values


# --------------------------------------------------------------------------------------
# shared set-up for Goals 4–7: the model, calibration and test data
# --------------------------------------------------------------------------------------


@dataclass
class _Context:
    model: torch.nn.Module
    info: dict
    widths: list[int]
    cut_names: list[str]
    first_cut: object
    calibration: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    accuracy: float
    params: int


def _setup(settings: Settings, progress: bool) -> _Context:
    from netshrink import count_parameters, zoo
    from netshrink.data import calibration_images, fashion_mnist
    from netshrink.evaluate import accuracy
    from netshrink.graph import find_cuts

    model = zoo.load(MODEL, progress=progress)
    info = zoo.info(MODEL)
    cuts, _ = find_cuts(model)
    calibration = calibration_images(settings.calibration_size, seed=settings.calibration_seed)
    test_images, test_labels = fashion_mnist("test")
    return _Context(
        model=model,
        info=info,
        widths=[int(w) for w in info["architecture"]["widths"]],
        cut_names=[cut.name for cut in cuts],
        first_cut=cuts[0],
        calibration=calibration,
        test_images=test_images,
        test_labels=test_labels,
        accuracy=accuracy(model, test_images, test_labels),
        params=count_parameters(model),
    )


# --------------------------------------------------------------------------------------
# Goal 4: test accuracy
# --------------------------------------------------------------------------------------


def _goal4(folder: Path, context: _Context) -> dict:
    from netshrink.data import CLASSES
    from netshrink.evaluate import predict_logits

    predictions = predict_logits(context.model, context.test_images).argmax(dim=1)
    labels = context.test_labels
    per_class = []
    for index, name in enumerate(CLASSES):
        mask = labels == index
        per_class.append({
            "class": name,
            "images": int(mask.sum()),
            "accuracy": float((predictions[mask] == index).float().mean()),
        })
    correct = int((predictions == labels).sum())
    data = {
        "goal": 4,
        "model": MODEL,
        "widths": context.widths,
        "parameters": context.params,
        "test_images": len(labels),
        "correct": correct,
        "accuracy": context.accuracy,
        "accuracy_recorded_at_training": context.info.get("test_accuracy"),
        "per_class": per_class,
    }
    figure, axis = _figure(1, 1, (9, 4.8))
    names = [row["class"] for row in per_class]
    values = [100 * row["accuracy"] for row in per_class]
    bars = axis.bar(range(len(names)), values, color="C0", label=f"{MODEL}, per class")
    axis.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    axis.axhline(100 * context.accuracy, color="C3", linestyle="--",
                 label=f"overall: {100 * context.accuracy:.2f}% ({correct:,}/{len(labels):,})")
    axis.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axis.set_ylabel("test accuracy (%)")
    axis.set_xlabel("Fashion-MNIST class (1,000 test images each)")
    axis.set_ylim(min(values) - 10, 109)
    axis.set_title(f"Goal 4: {MODEL} (widths {'-'.join(map(str, context.widths))}) on the "
                   f"{len(labels):,} test images")
    axis.grid(True, axis="y", alpha=0.3)
    axis.legend(loc="upper left", fontsize=8, ncol=2)
    _save(figure, folder / "g4_test_accuracy.png")
    write_json(folder / "g4_test_accuracy.json", data)
    return data


# --------------------------------------------------------------------------------------
# Goal 5: ID of the first layer's activations vs SVD
# --------------------------------------------------------------------------------------


def _first_layer_activations(context: _Context) -> torch.Tensor:
    """Z = σ(X_cᵀ W⁽¹⁾): what the first cut's consumer reads, (N_c, width), float64."""
    consumer = context.model.get_submodule(context.first_cut.consumers[0])
    captured = []
    handle = consumer.register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0].detach()))
    try:
        from netshrink.evaluate import predict_logits

        predict_logits(context.model, context.calibration)
    finally:
        handle.remove()
    return torch.cat(captured).to(torch.float64)


def _rank_grid(width: int, count: int, limit: int) -> list[int]:
    top = max(1, min(width - 1, limit))
    grid = set(int(round(x)) for x in np.linspace(1, top, count))
    grid |= {k for k in (1, 2, 4, 8, 16, 32, 64) if k <= top}
    return sorted(grid)


def _goal5(folder: Path, settings: Settings, context: _Context, log) -> dict:
    from netshrink.linalg import cpqr, interpolative_decomposition

    activations = _first_layer_activations(context)  # (N_c, n)
    samples, width = activations.shape
    sigma = torch.linalg.svdvals(activations).numpy()
    dead = int((activations.abs().amax(dim=0) == 0).sum())
    numerical_rank = int((sigma > ROUNDOFF * sigma[0]).sum())
    # ‖Z − Z[:, C] T‖₂ = ‖R − R[:, C] T‖₂ for the thin QR Z = Q R (Q has orthonormal
    # columns), and the column-pivoted QR of R picks the same columns and T as that of Z
    # (the pivots depend only on ZᵀZ = RᵀR). So the ID is computed from R: (min(N_c, n), n).
    r_factor = torch.linalg.qr(activations, mode="r").R
    del activations
    ranks = _rank_grid(width, settings.activation_ranks, numerical_rank - 1)
    # One pivoted QR stopped at the largest k serves every k on the grid: its first k
    # pivots and rows are those of the factorization stopped at k (seed, Question 6), and
    # T = [I, R11⁻¹ R12] Πᵀ ("Compressing a simple neural network").
    factorization = cpqr(r_factor, k=ranks[-1])
    perm, R = factorization.perm, factorization.R  # (n,), (k_max, n) in pivot order
    id_error = []
    for k in ranks:
        cols, rest = perm[:k], perm[k:]
        coefficients = torch.linalg.solve_triangular(R[:k, :k], R[:k, k:], upper=True)  # (k, n − k)
        residual = r_factor[:, rest] - r_factor[:, cols] @ coefficients  # columns C are exact
        id_error.append(_spectral_norm(residual))
    # Cross-check against the library's interpolative decomposition at one k.
    k_check = ranks[len(ranks) // 2]
    decomposition = interpolative_decomposition(r_factor, k=k_check)
    cols, interpolation = decomposition
    check_error = _spectral_norm(r_factor - r_factor[:, cols] @ interpolation)
    check = {
        "k": k_check,
        "same_columns": bool(torch.equal(cols, perm[:k_check])),
        "error_interpolative_decomposition": check_error,
        "error_from_one_factorization": id_error[ranks.index(k_check)],
        "error_bound_r22": float(decomposition.error_bound),
    }
    optimal = [float(sigma[k]) if k < len(sigma) else 0.0 for k in ranks]
    ratio = [e / s if s > 0 else None for e, s in zip(id_error, optimal)]
    resolved = [s > ROUNDOFF * sigma[0] for s in optimal]
    resolved_ratios = [r for r, ok in zip(ratio, resolved) if ok and r is not None]
    levels = {}
    for level in (1e-1, 1e-2, 1e-3):
        svd_k = int(np.argmax(sigma / sigma[0] <= level)) if (sigma / sigma[0] <= level).any() else None
        cpqr_k = next((k for k, e in zip(ranks, id_error) if e / sigma[0] <= level), None)
        levels[f"{level:g}"] = {"svd_k": svd_k, "cpqr_k_on_grid": cpqr_k}
    data = {
        "goal": 5,
        "what": "Z = relu(X_c^T W1 + b1), the first hidden layer's activations on the "
        "calibration images; rank-k ID error ||Z - Z[:,C] T||_2 (column-pivoted QR, "
        "C = first k pivots of netshrink.linalg.cpqr, T = [I, R11^-1 R12] P^T; computed "
        "from the R factor of Z, which has the same error) vs sigma_{k+1}(Z) (SVD); divide "
        "by sigma_1 = ||Z||_2 for the plotted relative errors",
        "layer": context.first_cut.name,
        "calibration_size": samples,
        "width": width,
        "dead_neurons": dead,
        "numerical_rank": numerical_rank,
        "sigma_1": float(sigma[0]),
        "k": ranks,
        "cpqr_error": id_error,
        "svd_error": optimal,
        "ratio": ratio,
        "roundoff_threshold_relative": ROUNDOFF,
        "resolved": resolved,
        "ratio_resolved_max": max(resolved_ratios) if resolved_ratios else None,
        "ratio_resolved_median": float(np.median(resolved_ratios)) if resolved_ratios else None,
        "ratio_resolved_min": min(resolved_ratios) if resolved_ratios else None,
        "rank_for_relative_error": levels,
        "check_against_interpolative_decomposition": check,
        "singular_values_relative": (sigma / sigma[0]).tolist(),
    }
    log(f"G5: Z is {samples}×{width}, {dead} dead neurons, numerical rank {numerical_rank}")
    _plot_rank_errors(
        folder / "g5_activation_id.png", data, symbol="Z",
        title=f"Goal 5: Z = σ(X_cᵀW⁽¹⁾), {samples:,} calibration images × {width} neurons "
        f"({context.first_cut.name})",
    )
    write_json(folder / "g5_activation_id.json", data)
    return data


# --------------------------------------------------------------------------------------
# Goals 6 and 7: compress, evaluate
# --------------------------------------------------------------------------------------


def _evaluate_compression(context: _Context, layers: list[str] | None, *, tol: float | None = None,
                          keep: float | None = None) -> dict:
    from netshrink import compress
    from netshrink.evaluate import accuracy

    start = time.perf_counter()
    result = compress(context.model, context.calibration, method="interpolative", tol=tol, keep=keep,
                      layers=layers)
    compress_seconds = time.perf_counter() - start
    value = accuracy(result.model, context.test_images, context.test_labels)
    kept = [layer.kept for layer in result.layers]
    total = [layer.total for layer in result.layers]
    return {
        "eps": None if tol is None else float(tol),
        "keep": keep,
        "accuracy": value,
        "drop_pt": 100 * (context.accuracy - value),
        "kept": kept,
        "total": total,
        "fraction_neurons_kept": sum(kept) / sum(total),
        "params_after": result.params_after,
        "fraction_params_kept": result.ratio,
        "error_bounds": [layer.error for layer in result.layers],
        "compress_seconds": compress_seconds,
    }


def _eps_grid(low: float, high: float, per_decade: int) -> list[float]:
    """Log-spaced ε from ``low`` to ``high`` on the fixed lattice 10^(j / per_decade)."""
    start = math.floor(math.log10(low) * per_decade + 1e-9)
    stop = math.ceil(math.log10(high) * per_decade - 1e-9)
    return [float(10 ** (j / per_decade)) for j in range(start, stop + 1)]


def _bisect(visit, points: dict, drop: float, steps: int, how: str) -> list[float]:
    """Refine the boundary ``drop_pt ≤ drop`` by bisection on log ε.

    The bracket is the last ε within ``drop`` and the next evaluated ε beyond it (the
    accuracy is not monotone in ε, so the search is local to that last crossing).
    Returns the ε evaluated.
    """
    rows = [points[e] for e in sorted(points)]
    inside = [i for i, row in enumerate(rows) if row["drop_pt"] <= drop + 1e-9]
    trail = []
    if not inside or inside[-1] + 1 >= len(rows):
        return trail
    low, high = rows[inside[-1]]["eps"], rows[inside[-1] + 1]["eps"]
    for _ in range(steps):
        middle = math.sqrt(low * high)
        point = visit(middle, how)
        trail.append(point["eps"])
        if point["drop_pt"] <= drop + 1e-9:
            low = middle
        else:
            high = middle
    return trail


def _goal6(folder: Path, settings: Settings, context: _Context, g5: dict, log) -> dict:
    layer = context.first_cut.name
    width = context.first_cut.width
    rank = g5["numerical_rank"]  # neurons beyond it are exactly redundant (dead or dependent)
    points: dict[float, dict] = {}

    def visit(eps: float, how: str = "ε sweep") -> dict:
        key = float(f"{eps:.12g}")
        if key not in points:
            point = _evaluate_compression(context, [layer], tol=key)
            point["found_by"] = how
            points[key] = point
            log(f"G6 ({how}): ε = {key:.3g}: {point['kept'][0]}/{width} kept, accuracy "
                f"{100 * point['accuracy']:.2f}% (drop {point['drop_pt']:+.2f} pt)")
        return points[key]

    # 1. an ε at which essentially only exactly redundant neurons go: ≥ 98% of the
    #    numerical rank of Z (the dead neurons and exact linear dependences are removed
    #    at any ε).
    eps = settings.eps_start
    for _ in range(6):
        if visit(eps)["kept"][0] >= 0.98 * rank:
            break
        eps /= 10
    low = eps
    # 2. coarse sweep, one ε per decade, until the accuracy has clearly degraded.
    while True:
        point = visit(eps)
        if point["drop_pt"] >= settings.stop_drop or point["kept"][0] <= 1 or eps >= settings.eps_max:
            break
        eps *= 10
    high = eps
    # 3. refine on a finer log grid where neurons are being removed, then bisect on the
    #    0.2 pt and 1 pt boundaries.
    active = max((e for e in points if points[e]["kept"][0] >= 0.95 * rank), default=low)
    for value in _eps_grid(active, high, settings.eps_per_decade):
        if active < value < high:
            visit(value)
    bisections = {f"{drop:g}": _bisect(visit, points, drop, settings.bisection_steps,
                                       f"bisection for ≤ {drop:g} pt") for drop in TARGET_DROPS}
    rows = [points[e] for e in sorted(points)]
    knees = {}
    for drop in TARGET_DROPS:
        ok = [row for row in rows if row["drop_pt"] <= drop + 1e-9]
        best = min(ok, key=lambda row: row["fraction_neurons_kept"]) if ok else None
        knees[f"{drop:g}"] = None if best is None else {
            "eps": best["eps"], "kept": best["kept"][0], "fraction_neurons_kept": best["fraction_neurons_kept"],
            "accuracy": best["accuracy"], "drop_pt": best["drop_pt"],
        }
    data = {
        "goal": 6,
        "what": f"compress only {layer} (its neurons = columns of W1 in the seed's notation, "
        "rows of the PyTorch weight) with netshrink.compress(method='interpolative', tol=eps, "
        f"layers=[{layer!r}]); accuracy on the test images",
        "layer": layer,
        "width": width,
        "dead_neurons": g5["dead_neurons"],
        "numerical_rank": rank,
        "original_accuracy": context.accuracy,
        "calibration_size": settings.calibration_size,
        "eps_low": low,
        "eps_high": high,
        "points": rows,
        "bisection_eps": bisections,
        "smallest_eps_point": rows[0],
        "smallest_fraction_kept_within_drop": knees,
    }
    _plot_g6(folder / "g6_first_layer.png", data)
    write_json(folder / "g6_first_layer.json", data)
    return data


#: Goals 6 and 7 plot accuracy from this many points below the original accuracy; lower
#: points are drawn at the bottom edge as ▼ with their value written next to them.
ZOOM_PT = 10.0


def _accuracy_axis(axis, x, accuracy, base: float, **style) -> None:
    """Plot ``accuracy`` (%) vs ``x`` zoomed to [base − ZOOM_PT, base + 1]; mark clipped points."""
    floor = base - ZOOM_PT
    order = np.argsort(x)
    x, accuracy = np.asarray(x)[order], np.asarray(accuracy)[order]
    edge = floor + 0.25
    axis.plot(x, np.maximum(accuracy, edge), **style)
    below = accuracy < edge
    if below.any():
        label = f"accuracy below {floor:.1f}% (value written)"
        if any(line.get_label() == label for line in axis.get_lines()):
            label = "_nolegend_"
        axis.plot(x[below], np.full(below.sum(), edge), "v", color="C3", markersize=7, label=label)
        for index, (xi, yi) in enumerate(zip(x[below], accuracy[below])):
            axis.annotate(f"{yi:.1f}%", (xi, edge), textcoords="offset points",
                          xytext=(5, 6 + 11 * (index % 3)), fontsize=7, color="C3")
    axis.set_ylim(floor, base + 1.0)


def _plot_g6(path: Path, data: dict) -> None:
    figure, (left, right) = _figure(1, 2, (14, 5.4), width_ratios=(1.35, 1))
    rows = data["points"]
    fraction = np.array([row["fraction_neurons_kept"] for row in rows])
    accuracy = np.array([100 * row["accuracy"] for row in rows])
    eps = np.array([row["eps"] for row in rows])
    base = 100 * data["original_accuracy"]
    width = data["width"]
    _accuracy_axis(left, fraction, accuracy, base, marker="o", linestyle="-", color="C0", markersize=4,
                   label=f"{METHOD_CPQR} (ID), layer {data['layer']} only: ε sweep")
    bisected = np.array([row["found_by"] != "ε sweep" for row in rows]) & (accuracy >= base - ZOOM_PT)
    if bisected.any():
        left.plot(fraction[bisected], accuracy[bisected], "x", color="C2", markersize=7,
                  label="bisection on ε for the 0.2 / 1 pt boundaries")
    left.axhline(base, color="black", linestyle="--", linewidth=1, label=f"original mlp7: {base:.2f}%")
    for drop, style in zip(TARGET_DROPS, (":", "-.")):
        left.axhline(base - drop, color="gray", linestyle=style, linewidth=0.9, label=f"original − {drop:g} pt")
    if data["numerical_rank"] < width:
        left.axvline(data["numerical_rank"] / width, color="C1", linestyle=":", linewidth=1,
                     label=f"numerical rank of Z: {data['numerical_rank']} (beyond it neurons are "
                     f"exactly redundant: {data['dead_neurons']} never fire)")
    knees = {}
    for drop in TARGET_DROPS:
        knee = data["smallest_fraction_kept_within_drop"][f"{drop:g}"]
        if knee:
            knees.setdefault((knee["eps"], knee["kept"]), (knee, []))[1].append(drop)
    for index, (knee, drops) in enumerate(knees.values()):
        left.annotate(
            f"within {' and '.join(f'{d:g}' for d in drops)} pt: {knee['kept']}/{width} kept\n"
            f"ε = {knee['eps']:.3g}, accuracy {100 * knee['accuracy']:.2f}%",
            (knee["fraction_neurons_kept"], 100 * knee["accuracy"]), textcoords="offset points",
            xytext=(25, -45 - 40 * index), fontsize=8, arrowprops={"arrowstyle": "->", "color": "gray"})
    left.set_xlabel(f"fraction of {data['layer']}'s neurons kept (columns of W⁽¹⁾ in the seed's notation)")
    left.set_ylabel("test accuracy (%)")
    left.set_xlim(-0.02, 1.02)
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8, loc="lower right")
    left.set_title(f"accuracy vs size of the first layer (zoomed to {ZOOM_PT:g} pt below the original)")
    order = np.argsort(eps)
    right.semilogx(eps[order], fraction[order], "o-", color="C0", markersize=4, label="fraction of neurons kept")
    right.set_xlabel("ε (tol of netshrink.compress: keep k with |r_{k+1,k+1}|·‖W⁽²⁾‖₂ ≤ ε)")
    right.set_ylabel(f"fraction of {data['layer']}'s neurons kept")
    right.set_ylim(-0.02, 1.02)
    right.grid(True, which="both", alpha=0.3)
    twin = right.twinx()
    twin.semilogx(eps[order], accuracy[order], "s--", color="C3", markersize=3, label="test accuracy (%)")
    twin.set_ylabel("test accuracy (%), full range", color="C3")
    twin.set_ylim(0, 100)
    handles, labels = right.get_legend_handles_labels()
    more_handles, more_labels = twin.get_legend_handles_labels()
    right.legend(handles + more_handles, labels + more_labels, fontsize=8, loc="lower left")
    right.set_title("the ε sweep")
    figure.suptitle(f"Goal 6: compressing only the first hidden layer of mlp7 ({width} neurons), "
                    f"{data['calibration_size']:,} calibration images, accuracy on 10,000 test images")
    _save(figure, path)


def _goal7(folder: Path, settings: Settings, context: _Context, g6: dict, log) -> dict:
    points: dict[float, dict] = {}

    def visit(eps: float, how: str) -> dict:
        key = float(f"{eps:.12g}")
        if key not in points:
            point = _evaluate_compression(context, None, tol=key)
            point["found_by"] = how
            points[key] = point
            log(f"G7 ({how}): ε = {key:.4g}: kept {point['kept']}, params "
                f"{100 * point['fraction_params_kept']:.1f}%, accuracy {100 * point['accuracy']:.2f}% "
                f"(drop {point['drop_pt']:+.2f} pt)")
        return points[key]

    # ε from the Goal 6 range: from the largest ε at which the first layer kept ≥ 98% of
    # its numerical rank up to the ε where Goal 6 degraded clearly; the whole model
    # degrades earlier, so the sweep stops once the drop exceeds g7_stop_drop. Then
    # bisection on log ε refines the 0.2 pt and 1 pt boundaries.
    rank = g6["numerical_rank"]
    low = max((row["eps"] for row in g6["points"] if row["kept"][0] >= 0.98 * rank), default=g6["eps_low"])
    high = g6["eps_high"]
    for eps in _eps_grid(low, high, settings.g7_per_decade):
        if visit(eps, "ε sweep")["drop_pt"] >= settings.g7_stop_drop:
            break
    bisections = {f"{drop:g}": _bisect(visit, points, drop, settings.bisection_steps,
                                       f"bisection for ≤ {drop:g} pt") for drop in TARGET_DROPS}
    rows = [points[e] for e in sorted(points)]
    # For comparison (not the seed's rule): the same fraction of neurons kept at every cut.
    keep_rows = []
    for fraction in settings.keep_fractions:
        point = _evaluate_compression(context, None, keep=fraction)
        point["found_by"] = "keep sweep"
        keep_rows.append(point)
        log(f"G7 (keep={fraction:g}): kept {point['kept']}, params {100 * point['fraction_params_kept']:.1f}%, "
            f"accuracy {100 * point['accuracy']:.2f}% (drop {point['drop_pt']:+.2f} pt)")
    data = {
        "goal": 7,
        "what": "compress all hidden layers of mlp7 (the classifier keeps its 10 outputs) "
        "top-down with netshrink.compress(method='interpolative', tol=eps); accuracy on "
        "the test images vs fraction of hidden neurons and of parameters kept. keep_points: "
        "the same with keep=fraction at every layer instead of tol (a comparison, not the "
        "seed's rule)",
        "layers": context.cut_names,
        "widths": context.widths,
        "params_before": context.params,
        "original_accuracy": context.accuracy,
        "calibration_size": settings.calibration_size,
        "eps_range_from_g6": [low, high],
        "points": rows,
        "bisection_eps": bisections,
        "smallest_params_within_drop": _smallest_within(rows),
        "keep_points": keep_rows,
        "keep_smallest_params_within_drop": _smallest_within(keep_rows) if keep_rows else None,
    }
    _plot_g7(folder / "g7_whole_model.png", data)
    write_json(folder / "g7_whole_model.json", data)
    return data


def _smallest_within(rows: list[dict]) -> dict:
    """For each target drop: the evaluated model with the fewest parameters within it."""
    best = {}
    for drop in TARGET_DROPS:
        ok = [row for row in rows if row["drop_pt"] <= drop + 1e-9]
        row = min(ok, key=lambda r: r["fraction_params_kept"]) if ok else None
        best[f"{drop:g}"] = None if row is None else {
            "eps": row["eps"],
            "keep": row["keep"],
            "accuracy": row["accuracy"],
            "drop_pt": row["drop_pt"],
            "fraction_params_kept": row["fraction_params_kept"],
            "fraction_neurons_kept": row["fraction_neurons_kept"],
            "params_after": row["params_after"],
            "widths": row["kept"],
            "acceptance_fraction": ACCEPTANCE[drop],
            "meets_acceptance": row["fraction_params_kept"] <= ACCEPTANCE[drop],
        }
    return best


def _plot_g7(path: Path, data: dict) -> None:
    figure, axes = _figure(1, 2, (14, 5.6), sharey=True)
    rows = data["points"]
    base = 100 * data["original_accuracy"]
    accuracy = np.array([100 * row["accuracy"] for row in rows])
    sweep = np.array([row["found_by"] == "ε sweep" for row in rows])
    floor = base - ZOOM_PT
    for axis, key, label in (
        (axes[0], "fraction_neurons_kept",
         "fraction of all hidden neurons kept (columns of Ŵ⁽¹⁾ … Ŵ⁽⁷⁾)"),
        (axes[1], "fraction_params_kept", "fraction of parameters kept (all weights and biases)"),
    ):
        x = np.array([row[key] for row in rows])
        _accuracy_axis(axis, x, accuracy, base, linestyle="-", color="C0", alpha=0.6,
                       label=f"{METHOD_CPQR} (ID), one ε for all 7 hidden layers, top-down (the seed's scheme)")
        shown = accuracy >= floor
        axis.plot(x[sweep & shown], accuracy[sweep & shown], "o", color="C0", markersize=5, label="ε sweep")
        if (~sweep & shown).any():
            axis.plot(x[~sweep & shown], accuracy[~sweep & shown], "x", color="C2", markersize=6,
                      label="bisection on ε for the 0.2 / 1 pt boundaries")
        if data["keep_points"]:
            keep_x = np.array([row[key] for row in data["keep_points"]])
            keep_accuracy = np.array([100 * row["accuracy"] for row in data["keep_points"]])
            _accuracy_axis(axis, keep_x, keep_accuracy, base, marker="s", linestyle="--", color="C4",
                           markersize=4, alpha=0.8,
                           label=f"{METHOD_CPQR} (ID), same fraction kept at every layer (keep=, comparison)")
        axis.axhline(base, color="black", linestyle="--", linewidth=1, label=f"original mlp7: {base:.2f}%")
        for drop, style in zip(TARGET_DROPS, (":", "-.")):
            axis.axhline(base - drop, color="gray", linestyle=style, linewidth=0.9,
                         label=f"original − {drop:g} pt")
        axis.set_xlabel(label)
        axis.set_xlim(-0.02, 1.02)
        axis.grid(True, alpha=0.3)
    for index, drop in enumerate(TARGET_DROPS):
        style = (":", "-.")[index]
        target = ACCEPTANCE[drop]
        axes[1].axvline(target, color="C3", linestyle=style, linewidth=0.9,
                        label=f"target: ≤ {100 * target:.0f}% of parameters at ≤ {drop:g} pt")
        best = data["smallest_params_within_drop"][f"{drop:g}"]
        if best:
            axes[1].annotate(
                f"smallest within {drop:g} pt: {100 * best['fraction_params_kept']:.1f}% of parameters\n"
                f"ε = {best['eps']:.3g}, widths {'-'.join(map(str, best['widths']))}",
                (best["fraction_params_kept"], 100 * best["accuracy"]), textcoords="offset points",
                xytext=(20, -60 - 45 * index), fontsize=8, arrowprops={"arrowstyle": "->", "color": "gray"})
    keep_best = (data.get("keep_smallest_params_within_drop") or {}).get("1")
    if keep_best:
        axes[1].annotate(
            f"keep={keep_best['keep']:g}: {100 * keep_best['fraction_params_kept']:.1f}% of parameters "
            f"within 1 pt\nwidths {'-'.join(map(str, keep_best['widths']))}",
            (keep_best["fraction_params_kept"], 100 * keep_best["accuracy"]), textcoords="offset points",
            xytext=(30, -150), fontsize=8, color="C4", arrowprops={"arrowstyle": "->", "color": "C4"})
    axes[0].set_ylabel(f"test accuracy (%), zoomed to {ZOOM_PT:g} pt below the original")
    axes[0].legend(fontsize=8, loc="lower right")
    axes[1].legend(fontsize=8, loc="lower right")
    axes[0].set_title("accuracy vs hidden neurons kept")
    axes[1].set_title("accuracy vs parameters kept")
    figure.suptitle(f"Goal 7: compressing the whole mlp7 ({'-'.join(map(str, data['widths']))}, "
                    f"{data['params_before']:,} parameters) with one ε for all layers")
    _save(figure, path)


# --------------------------------------------------------------------------------------
# Goal 8: a better trade-off than one ε layer after layer
# --------------------------------------------------------------------------------------


def _goal8(folder: Path, settings: Settings, context: _Context, g7: dict, log) -> dict:
    """The global allocation (:mod:`netshrink.budget`, docs/budgets.md) against the seed's
    scheme on mlp7: one parameter budget for the whole model, every layer's width from one
    solve over the pivoted-QR loss curves, then the same top-down interpolative
    decomposition; and with low rank on the survivors and input-pixel sampling under the
    same allocation. Accuracy against parameters and against FLOPs."""
    from netshrink import compress
    from netshrink.budget import flop_costs, total_flops
    from netshrink.evaluate import accuracy
    from netshrink.graph import find_cuts

    example = context.calibration[:1000]
    cuts, _ = find_cuts(context.model, example=example)
    flops = flop_costs(context.model, cuts, example)

    def seed_row(row: dict) -> dict:
        widths = dict(zip(context.cut_names, row["kept"]))
        return {**row, "fraction_flops_kept": flops.value(widths) / flops.total}

    curves = {"seed": [seed_row(row) for row in g7["points"]], "global": [], "global_stages": []}
    for size in settings.budget_sizes:
        for name, stages in (("global", {}), ("global_stages", {"lowrank": True, "sample_inputs": True})):
            start = time.perf_counter()
            result = compress(context.model, context.calibration, method="interpolative", size=size, **stages)
            value = accuracy(result.model, context.test_images, context.test_labels)
            row = {"size": size, "accuracy": value, "drop_pt": 100 * (context.accuracy - value),
                   "fraction_params_kept": result.ratio,
                   "fraction_flops_kept": total_flops(result.model, example) / flops.total,
                   "widths": {k: v for k, v in result.budget["widths"].items()},
                   "compress_seconds": time.perf_counter() - start}
            curves[name].append(row)
            log(f"G8 ({name}, size {size:g}): params {100 * row['fraction_params_kept']:.2f}%, FLOPs "
                f"{100 * row['fraction_flops_kept']:.2f}%, accuracy {100 * value:.2f}% (drop {row['drop_pt']:+.2f} pt)")
    best = {name: {f"{drop:g}": _fewest(rows, drop) for drop in (*TARGET_DROPS, 0.5)} for name, rows in curves.items()}
    data = {
        "goal": 8,
        "what": "mlp7 compressed with method='interpolative': the seed's scheme (one ε for every layer, "
        "top-down; the Goal 7 points) against a global allocation under a parameter budget "
        "(compress(..., size=F): every layer's width from one solve over the pivoted-QR loss curves "
        "weighted by the output's Fisher information, then the same top-down interpolative "
        "decomposition), and the allocation with low rank on the survivors and input-pixel sampling",
        "original_accuracy": context.accuracy,
        "params_before": context.params,
        "flops_before": flops.total,
        "curves": curves,
        "smallest_within_drop": best,
    }
    _plot_g8(folder / "g8_global_allocation.png", data)
    write_json(folder / "g8_global_allocation.json", data)
    return data


def _fewest(rows: list[dict], drop: float) -> dict | None:
    ok = [row for row in rows if row["drop_pt"] <= drop + 1e-9]
    row = min(ok, key=lambda r: r["fraction_params_kept"]) if ok else None
    return None if row is None else {key: row[key] for key in ("accuracy", "drop_pt", "fraction_params_kept",
                                                                "fraction_flops_kept")}


G8_LABELS = {"seed": f"{METHOD_CPQR} (ID), one ε for all layers, top-down (the seed's scheme)",
             "global": "ID, global allocation under a parameter budget",
             "global_stages": "ID, global allocation + low rank + input-pixel sampling"}


def _plot_g8(path: Path, data: dict) -> None:
    figure, axes = _figure(1, 2, (14, 5.6), sharey=True)
    base = 100 * data["original_accuracy"]
    for axis, key, label in ((axes[0], "fraction_params_kept", "fraction of parameters kept (log scale)"),
                             (axes[1], "fraction_flops_kept", "fraction of forward FLOPs kept (log scale)")):
        for (name, rows), color, marker in zip(data["curves"].items(), ("C0", "C3", "C2"), ("o", "s", "D")):
            if rows:
                x = np.array([row[key] for row in rows])
                _accuracy_axis(axis, x, np.array([100 * row["accuracy"] for row in rows]), base, marker=marker,
                               linestyle="-", color=color, markersize=4, label=G8_LABELS[name])
        axis.axhline(base, color="black", linestyle="--", linewidth=1, label=f"original mlp7: {base:.2f}%")
        axis.axhline(base - 0.5, color="gray", linestyle=":", linewidth=0.9, label="original − 0.5 pt")
        axis.set_xscale("log")
        budgets = [row[key] for name in ("global", "global_stages") for row in data["curves"][name]]
        if budgets:  # the budgets' range (the seed's sweep runs on to a single neuron per layer)
            axis.set_xlim(0.6 * min(budgets), min(1.0, 2.5 * max(budgets)))
        _plain_log_ticks(axis.xaxis, [0.02, 0.05, 0.1, 0.2, 0.5], lambda value: f"{100 * value:g}%")
        axis.set_xlabel(label)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"test accuracy (%), zoomed to {ZOOM_PT:g} pt below the original")
    axes[0].legend(fontsize=8, loc="lower right")
    axes[0].set_title("accuracy vs parameters kept (the budgets' range)")
    axes[1].set_title("accuracy vs forward FLOPs kept")
    figure.suptitle("Goal 8: one global allocation against one ε layer after layer (mlp7, Fashion-MNIST test set)")
    _save(figure, path)


def _g8_text(g8: dict) -> str:
    lines = ["", "## Goal 8: a better trade-off than one ε layer after layer", "",
             "`g8_global_allocation.png`: the seed's scheme (one ε, top-down, the Goal 7 points) against "
             "`compress(model, data, 'interpolative', size=F)` — one solve gives every layer its width, "
             "minimising the output loss estimated from the pivoted-QR curves and the Fisher information "
             "of the output (derivation: docs/budgets.md) — and the same allocation with low rank on the "
             "survivors and input-pixel sampling. Smallest fraction of the parameters (and of the FLOPs) "
             "within each drop:", "",
             "| scheme | within 0.2 pt | within 0.5 pt | within 1 pt |", "|---|---|---|---|"]
    for name, label in G8_LABELS.items():
        cells = []
        for drop in ("0.2", "0.5", "1"):
            row = g8["smallest_within_drop"][name][drop]
            cells.append("—" if row is None else f"{_pct(row['fraction_params_kept'], 2)} params, "
                         f"{_pct(row['fraction_flops_kept'], 2)} FLOPs ({row['drop_pt']:+.2f} pt)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# summary.md
# --------------------------------------------------------------------------------------


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def _summary(settings, quick, context, seconds, g1, g2, g3, g4, g5, g6, g7) -> str:
    from netshrink.data import DEFAULT_DATA_DIR, data_dir

    widths = "-".join(map(str, context.widths))
    folder = data_dir()
    source = (f"Debian's `dataset-fashion-mnist` package (IDX files in `{folder}`)"
              if folder == DEFAULT_DATA_DIR else f"the IDX files in `{folder}` ($NETSHRINK_DATA)")
    lines = [
        f"# Seed 001 (Damle, Project 1) reproduced with netshrink{' — quick mode' if quick else ''}",
        "",
        f"Data: Fashion-MNIST from {source}, read locally. Calibration (the seed's compression set X_c) = N_c = "
        f"{settings.calibration_size:,} training images drawn with a fixed seed "
        f"({settings.calibration_seed}); accuracy is measured on the 10,000 test images. "
        f"Model: `{MODEL}` from `netshrink.zoo` (seed eq. (10)): 784 inputs, seven ReLU layers of "
        f"widths {widths}, a linear classifier to 10 classes (softmax omitted: argmax is the "
        f"same); {context.params:,} parameters. In the seed's notation a layer is σ(xᵀW) with "
        f"W: d × n and a neuron is a column of W; in PyTorch's `nn.Linear.weight` (out × in) "
        f"it is a row. ε is `tol` of `netshrink.compress`: at each cut, keep the first k with "
        f"|r_(k+1,k+1)|·‖W_consumer‖₂ ≤ ε, r from the pivoted QR of Z/√N — the seed's practical "
        f"rule |r_(k+1,k+1)|/|r_11| ≤ ε/‖a‖ for activations in units of their top pivot, with "
        f"‖a‖ the consumer's spectral norm; chaining is top-down as in the seed.",
        "",
    ]
    g2m, g2n, g2s = g2["vs_m"]["slope"], g2["vs_n"]["slope"], g2["square"]["slope"]
    k02 = g6["smallest_fraction_kept_within_drop"]["0.2"]
    k10 = g6["smallest_fraction_kept_within_drop"]["1"]
    b02 = g7["smallest_params_within_drop"]["0.2"]
    b10 = g7["smallest_params_within_drop"]["1"]
    lines += [
        "## Headline numbers",
        "",
        "| goal | quantity | value |",
        "|---|---|---|",
        f"| G2 | log-log slope of cpqr time vs m (n = {g2['vs_m']['fixed_n']}) | {g2m:.2f} (expected 1) |",
        f"| G2 | slope vs n (m = {g2['vs_n']['fixed_m']}) | {g2n:.2f} (expected 1) |",
        f"| G2 | slope vs m = n | {g2s:.2f} (expected 2) |",
        f"| G3 | CPQR/SVD error ratio over k ≤ {g3['last_resolved_k']} (above round-off): median / max | "
        f"{_num(g3['ratio_resolved_median'])} / {_num(g3['ratio_resolved_max'])} |",
        f"| G4 | {MODEL} test accuracy | {_pct(g4['accuracy'], 2)} ({g4['correct']:,}/{g4['test_images']:,}) |",
        f"| G5 | CPQR/SVD error ratio on Z (k ≤ {_last_resolved(g5)}): median / max | "
        f"{_num(g5['ratio_resolved_median'])} / {_num(g5['ratio_resolved_max'])} |",
        f"| G5 | rank for ‖Z − Z[:,C]T‖₂ ≤ 1% of ‖Z‖₂: CPQR (grid) / SVD | "
        f"{_opt(g5['rank_for_relative_error']['0.01']['cpqr_k_on_grid'])} / "
        f"{_opt(g5['rank_for_relative_error']['0.01']['svd_k'])} of {g5['width']} |",
        f"| G6 | first layer: fewest neurons kept at ≤ 0.2 pt drop | {_knee(k02, g6['width'])} |",
        f"| G6 | first layer: fewest neurons kept at ≤ 1.0 pt drop | {_knee(k10, g6['width'])} |",
        f"| G7 | whole model: smallest parameter fraction at ≤ 0.2 pt drop (target ≤ 45%) | {_best(b02)} |",
        f"| G7 | whole model: smallest parameter fraction at ≤ 1.0 pt drop (target ≤ 15%) | {_best(b10)} |",
    ]
    keep_best = g7.get("keep_smallest_params_within_drop")
    if keep_best:
        lines += [
            f"| G7 | comparison, same fraction kept per layer (keep=): smallest at ≤ 0.2 pt / ≤ 1.0 pt | "
            f"{_best_keep(keep_best['0.2'])} / {_best_keep(keep_best['1'])} |",
        ]
    lines += [""]
    # Goal 1
    lines += ["## Goal 1: the algorithm", ""]
    if g1["copied"]:
        lines += ["Pseudocode of column-pivoted Householder QR stopped after k steps, the column-norm "
                  "update scheme, the O(mnk) operation count and answers to Questions 1–6: "
                  "[g1_algorithm.md](g1_algorithm.md) (a copy of the repository's `docs/cpqr.md`).", ""]
    else:
        lines += ["The write-up lives in the repository as `docs/cpqr.md`, which is not part of this "
                  "installation; [g1_algorithm.md](g1_algorithm.md) says where to find it.", ""]
    # Goal 2
    slopes = ((g2m, 1.0), (g2n, 1.0), (g2s, 2.0))
    verdict = all(abs(slope - expected) <= 0.25 for slope, expected in slopes)
    off = [name for name, (slope, expected) in zip(("m", "n", "m = n"), slopes) if abs(slope - expected) > 0.25]
    largest = max(g2["vs_m"]["runs"] + g2["vs_n"]["runs"] + g2["square"]["runs"],
                  key=lambda row: row["median_cpu_seconds"])
    load = g2["load_average_before"]
    lines += [
        "## Goal 2: O(mnk) scaling",
        "",
        "![G2](g2_cpqr_scaling.png)",
        "",
        f"Run time of `netshrink.linalg.cpqr(A, k={g2['k']})` on Gaussian float64 matrices, one "
        f"torch thread, median of {g2['repeats']} runs of the process CPU time (wall time is "
        "plotted too; it is inflated when other processes share the cores). The fitted log-log "
        f"slopes are {g2m:.2f} in m, {g2n:.2f} in n and {g2s:.2f} for m = n (over the larger half of "
        f"the sizes: {g2['vs_m']['slope_largest_half']:.2f}, {g2['vs_n']['slope_largest_half']:.2f}, "
        f"{g2['square']['slope_largest_half']:.2f}), "
        + ("consistent with the O(mnk) count: linear in m and in n, quadratic when m = n."
           if verdict else
           f"so the slope in {', '.join(off)} departs by more than 0.25 from the expected value "
           "(1, 1, 2)"
           + (f"; the 1-minute load average was {load[0]:.1f} on {g2['cpu_count']} CPUs when the "
              "timing started, so memory-bandwidth contention from other processes is a likely cause."
              if load else "."))
        + f" The largest run ({largest['m']:,}×{largest['n']:,}) took {largest['median_cpu_seconds']:.2f} s.",
        "",
    ]
    # Goal 3
    lines += [
        "## Goal 3: what restricting to columns costs (kernel matrix)",
        "",
        "![G3](g3_kernel_id.png)",
        "",
        f"For the {g3['n_points']}×{g3['n_points']} Gaussian kernel matrix the singular values decay "
        f"quickly: σ_(k+1)/σ_1 falls below {ROUNDOFF:g} at k = {_after(g3)}. Over k = 1…"
        f"{g3['last_resolved_k']} (above round-off) the column-pivoted QR error is a factor "
        f"{_num(g3['ratio_resolved_min'])}–{_num(g3['ratio_resolved_max'])} (median "
        f"{_num(g3['ratio_resolved_median'])}) above the optimal SVD error: both curves decay at "
        "the same rate, so restricting the approximation to actual columns of G loses only a "
        "modest constant factor"
        + (f", i.e. about {_digits(g3['ratio_resolved_median'])} of accuracy"
           if g3["ratio_resolved_median"] else "")
        + f". Beyond k = {g3['last_resolved_k']} both errors sit at the round-off floor and their "
        "ratio is not meaningful.",
        "",
    ]
    # Goal 4
    worst = min(g4["per_class"], key=lambda row: row["accuracy"])
    bestc = max(g4["per_class"], key=lambda row: row["accuracy"])
    lines += [
        "## Goal 4: the model",
        "",
        "![G4](g4_test_accuracy.png)",
        "",
        f"`{MODEL}` classifies {g4['correct']:,} of the {g4['test_images']:,} test images correctly: "
        f"test accuracy {_pct(g4['accuracy'], 2)}. Per class it ranges from {_pct(worst['accuracy'])} "
        f"({worst['class']}) to {_pct(bestc['accuracy'])} ({bestc['class']}).",
        "",
    ]
    # Goal 5
    levels = g5["rank_for_relative_error"]
    pairs = [(f"{100 * float(level):g}%", item["cpqr_k_on_grid"], item["svd_k"])
             for level, item in levels.items() if item["cpqr_k_on_grid"] and item["svd_k"]]
    lines += [
        "## Goal 5: rank-k approximation of the first layer's activations",
        "",
        "![G5](g5_activation_id.png)",
        "",
        f"Z = σ(X_cᵀW⁽¹⁾) is {g5['calibration_size']:,}×{g5['width']}; {g5['dead_neurons']} of its "
        f"columns are zero (neurons that never fire on the calibration images) and its numerical "
        f"rank is {g5['numerical_rank']}. Its singular values decay far more slowly than those of G "
        f"in Goal 3. Over k = 1…{g5['k'][-1]} the column-pivoted QR error is between "
        f"{_num(g5['ratio_resolved_min'])} and {_num(g5['ratio_resolved_max'])} times the optimal "
        f"SVD error (median {_num(g5['ratio_resolved_median'])}): a small constant factor, so "
        "restricting the approximation to actual neurons, which is what lets us delete them, is "
        "nearly as good as the best rank-k approximation. "
        + ("Because the error curves are flat, that factor translates into more columns for a "
           "given error: " + "; ".join(f"{name} of ‖Z‖₂ needs k ≈ {c} (on the grid) vs {v}"
                                       for name, c, v in pairs) + "."
           if pairs else ""),
        "",
    ]
    # Goal 6
    rows6 = sorted(g6["points"], key=lambda row: row["eps"])
    lines += [
        "## Goal 6: compressing the first layer only",
        "",
        "![G6](g6_first_layer.png)",
        "",
        _g6_text(g6, rows6, k02, k10),
        "",
    ]
    # Goal 7
    rows7 = g7["points"]
    lines += [
        "## Goal 7: compressing the whole model",
        "",
        "![G7](g7_whole_model.png)",
        "",
        _g7_text(g7, rows7, g6),
        "",
    ]
    for drop, best in ((0.2, b02), (1.0, b10)):
        target = ACCEPTANCE[drop]
        if best is None:
            lines.append(f"- ≤ {drop:g} pt drop: no evaluated ε stayed within {drop:g} pt; the "
                         f"target (≤ {100 * target:.0f}% of the parameters) was **not reached**.")
        else:
            lines.append(
                f"- ≤ {drop:g} pt drop: smallest model at ε = {best['eps']:.4g}: "
                f"{_pct(best['fraction_params_kept'])} of the parameters ({best['params_after']:,}), "
                f"{_pct(best['fraction_neurons_kept'])} of the hidden neurons, widths "
                f"{'-'.join(map(str, best['widths']))}, accuracy {_pct(best['accuracy'], 2)} "
                f"({best['drop_pt']:+.2f} pt drop). Target ≤ {100 * target:.0f}%: "
                + ("**reached**." if best["meets_acceptance"] else "**not reached**.")
            )
    if keep_best:
        lines += ["", _keep_text(g7, keep_best)]
    n_bisect = sum(len(v) for v in g7["bisection_eps"].values())
    lines += [
        "",
        f"({len(rows7) - n_bisect} ε on a log grid with {settings.g7_per_decade} per decade plus "
        f"{n_bisect} bisection steps on log ε near the 0.2 pt and 1 pt boundaries.)",
        "",
        "## Run",
        "",
        f"Mode: {'quick' if quick else 'full'}; wall time "
        + ", ".join(f"{goal} {value:.1f} s" for goal, value in seconds.items())
        + f". torch {torch.__version__}, {THREADS} thread, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs.",
        "",
    ]
    return "\n".join(lines)


def _g6_text(g6: dict, rows: list[dict], k02: dict | None, k10: dict | None) -> str:
    width = g6["width"]
    first = rows[0]
    text = (
        f"On the calibration images Z has numerical rank {g6['numerical_rank']} of {width}: "
        f"{g6['dead_neurons']} neurons never fire and the others beyond the rank are exact linear "
        f"combinations of the rest, so they are removed at any ε. At ε = {first['eps']:.3g} the "
        f"layer keeps {first['kept'][0]} of {width} neurons and the accuracy is "
        f"{_pct(first['accuracy'], 2)} (original {_pct(g6['original_accuracy'], 2)}). "
    )
    if k02 and k10 and k02["eps"] == k10["eps"]:
        text += (f"As ε grows the layer shrinks without losing accuracy: the smallest layer within "
                 f"0.2 pt (and within 1 pt) of the original keeps {_knee(k02, width)}. ")
    elif k02 and k10:
        text += (f"As ε grows the layer shrinks: the smallest layer within 0.2 pt of the original "
                 f"keeps {_knee(k02, width)}; within 1 pt, {_knee(k10, width)}. ")
    collapsed = [row for row in rows if row["drop_pt"] >= 5.0]
    if collapsed:
        first_bad = collapsed[0]
        text += (f"Past that the accuracy falls steeply: it is {first_bad['drop_pt']:.1f} pt below the "
                 f"original at ε = {first_bad['eps']:.3g} ({first_bad['kept'][0]} neurons kept) and "
                 f"{_pct(rows[-1]['accuracy'], 2)} at ε = {rows[-1]['eps']:.3g} "
                 f"({rows[-1]['kept'][0]} kept). ")
    if k10:
        text += (f"So about {_pct(1 - k10['fraction_neurons_kept'], 0)} of the first layer's neurons "
                 "are redundant on real data: they are close to linear combinations of the kept "
                 "ones, and folding T into W⁽²⁾ reproduces their effect without retraining. The "
                 "accuracy is flat until the ID error becomes comparable to the signal, then "
                 "falls steeply — the knee the seed asks about.")
    return text


def _g7_text(g7: dict, rows: list[dict], g6: dict) -> str:
    seconds = float(np.median([row["compress_seconds"] for row in rows]))
    flat = [row for row in rows if row["drop_pt"] <= 0.2 + 1e-9]
    text = ("With one ε for all seven hidden layers (fitted top-down, each on the already "
            "compressed earlier layers) ")
    if flat:
        smallest = min(flat, key=lambda row: row["fraction_params_kept"])
        text += (f"the accuracy stays within 0.2 pt of the original down to "
                 f"{_pct(smallest['fraction_params_kept'])} of the parameters "
                 f"({_pct(smallest['fraction_neurons_kept'])} of the hidden neurons) and then falls off. ")
    else:
        text += "no evaluated ε kept the accuracy within 0.2 pt. "
    within = [row for row in rows if row["drop_pt"] <= 1.0 + 1e-9]
    if within:
        smallest = min(within, key=lambda row: row["fraction_params_kept"])
        fractions = [k / t for k, t in zip(smallest["kept"], smallest["total"])]
        most, least = int(np.argmin(fractions)), int(np.argmax(fractions))
        early = sum(smallest["kept"][:2]) / sum(smallest["total"][:2])
        text += (
            f"The layers shrink very unevenly: at the smallest model within 1 pt, "
            f"{g7['layers'][most]} keeps {_pct(fractions[most])} of its neurons but "
            f"{g7['layers'][least]} {_pct(fractions[least])}, because the same ε adapts k to the "
            f"numerical rank of each layer's activations, which is low in the deep layers. The "
            f"first two layers, which hold most of the parameters, keep {_pct(early)} of their "
            f"neurons, so the parameter count falls more slowly than the deep layers' widths "
            f"suggest. "
        )
    g6_knee = g6["smallest_fraction_kept_within_drop"].get("1")
    g7_best = g7["smallest_params_within_drop"].get("1")
    if g6_knee and g7_best:
        text += (f"Errors compound through the layers: the whole model stays within 1 pt only up to "
                 f"ε ≈ {g7_best['eps']:.3g}, while the first layer alone tolerated "
                 f"ε ≈ {g6_knee['eps']:.3g}. ")
    text += (
        f"Each compression took {seconds:.1f} s (median) on one CPU thread with no retraining — "
        f"one forward pass per layer over {g7['calibration_size']:,} calibration images and a "
        f"pivoted QR of an n × n factor per layer — so the scheme is practical and useful for "
        f"cheaply removing redundancy; its weak points are that ε is an indirect knob (the "
        f"resulting size per layer is only known after the fact) and that the greedy "
        f"layer-by-layer choice does not target the parameter count."
    )
    return text


def _best_keep(best: dict | None) -> str:
    if not best:
        return "none within"
    return (f"{_pct(best['fraction_params_kept'])} (keep={best['keep']:g}, "
            f"widths {'-'.join(map(str, best['widths']))}, {best['drop_pt']:+.2f} pt)")


def _keep_text(g7: dict, keep_best: dict) -> str:
    text = ("For comparison (not the seed's rule), the same library call with `keep=` — the same "
            "fraction of neurons kept at every layer — ")
    parts = []
    for drop in TARGET_DROPS:
        ours, theirs = keep_best[f"{drop:g}"], g7["smallest_params_within_drop"][f"{drop:g}"]
        if ours is None:
            parts.append(f"never stays within {drop:g} pt on its grid")
            continue
        verdict = ""
        if theirs is not None:
            verdict = (" — smaller than" if ours["fraction_params_kept"] < theirs["fraction_params_kept"]
                       else " — larger than") + f" the ε scheme's {_pct(theirs['fraction_params_kept'])}"
        parts.append(f"reaches {_pct(ours['fraction_params_kept'])} of the parameters within {drop:g} pt "
                     f"(keep={ours['keep']:g}){verdict}")
    text += "; ".join(parts) + ". "
    ours, theirs = keep_best.get("1"), g7["smallest_params_within_drop"].get("1")
    if ours and theirs and ours["fraction_params_kept"] < theirs["fraction_params_kept"]:
        text += ("So for parameter count the seed's single ε is not the best allocation: it keeps "
                 "the wide first layers, which hold most parameters, large and crushes the deep "
                 "ones; choosing per-layer sizes with the parameter count in mind is the subject "
                 "of the seed's Goal 8.")
    elif ours and theirs:
        text += ("The single ε allocates neurons across layers better than a uniform fraction "
                 "does, because it adapts to each layer's numerical rank.")
    return text


def _last_resolved(data: dict) -> int | None:
    return max((k for k, ok in zip(data["k"], data["resolved"]) if ok), default=None)


def _knee(knee: dict | None, width: int) -> str:
    if not knee:
        return "n/a"
    return (f"{knee['kept']}/{width} ({_pct(knee['fraction_neurons_kept'])}) at ε = {knee['eps']:.3g}, "
            f"accuracy {_pct(knee['accuracy'], 2)}")


def _best(best: dict | None) -> str:
    if not best:
        return "not reached"
    verdict = "met" if best["meets_acceptance"] else "missed"
    return (f"{_pct(best['fraction_params_kept'])} at ε = {best['eps']:.4g} "
            f"(widths {'-'.join(map(str, best['widths']))}, {best['drop_pt']:+.2f} pt) — {verdict}")


def _after(data: dict) -> str:
    last = data["last_resolved_k"]
    return "never" if last is None or last >= data["k"][-1] else str(last + 1)


def _digits(ratio: float) -> str:
    lost = math.log10(ratio) if ratio and ratio > 0 else 0.0
    return f"{lost:.1f} decimal digit{'s' if abs(lost - 1) > 0.05 else ''}"


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _opt(value) -> str:
    return "n/a (beyond the grid)" if value is None else str(value)


# --------------------------------------------------------------------------------------
# plumbing: figures and JSON
# --------------------------------------------------------------------------------------


def _figure(rows: int, cols: int, size, **options):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sharex = options.pop("sharex", False)
    sharey = options.pop("sharey", False)
    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, sharex=sharex, sharey=sharey, gridspec_kw=options or None)
    return figure, axes


def _save(figure, path: Path) -> None:
    figure.savefig(path, dpi=110)
