"""Benchmark prox-Adam (published settings) against FISTA on one layer's multi-task lasso.

Usage::

    python benchmarks/multitask_lasso.py [--quick] [--model NAME] [--layer last|pen|first|PATH]
                                         [--mu MU] [--lam LAM] [--cap SECONDS] [--samples N]
                                         [--threads T] [--output PATH]

Issue 4, item 7 (seed 002, Shenouda et al.). The layer problem: ``Φ: (K, N)`` the inputs
of one ``nn.Linear`` of a trained zoo model (default ``alexnet-fmnist``, layer ``last``),
``Ψ: (D, N)`` its outputs (bias included), ``b`` its bias, on ``N`` Fashion-MNIST training
images (``calibration_images(N, seed=0)``; 10000, or 2000 with ``--quick``), captured by
hooks in eval mode as float32. Both solvers minimise the same

    F(V) = (1/(D·N))·‖V Φ + b 1ᵀ − Ψ‖²_F + lam·Σ_k ‖V[:, k]‖₂

(``netshrink.linalg.multitask_lasso``; every objective below is evaluated the same way,
in float64 from the statistics by ``multitask_objective``).

prox-Adam
    ``prox_adam(form="data")`` in float32 as the original: a fresh ``nn.Linear`` weight,
    full-batch Adam steps with learning rate ``mu`` then the group shrink, its own
    stopping rule (relative changes of error and penalty below 1e-7 over 1000
    iterations) and a wall-time cap (``--cap``; 1800 s, 60 s with ``--quick``) — the
    original ran for hours on a GPU and was "manually stopped once we saw convergence".
    Published settings: AlexNet last layer ``mu = 0.07, lam = 0.05``; penultimate and
    first layer ``mu = 0.07, lam = 0.5`` (chosen by ``--layer``); VGG-19 last layer
    ``mu = 0.03, lam = 0.01`` (for ``--model vgg-fmnist --layer last``). Recorded: its trace
    (objective and active inputs every 1000 iterations, from ``prox_adam``) plus, for the
    plot only, snapshots of ``V`` at log-spaced iterations below 1000 taken by the
    callback (a clone of ``V``, microseconds; their times are put on the trace's clock
    at iteration 1000, so they are late by at most one error evaluation).

FISTA
    ``multitask_lasso_fista`` (the group-lasso solver: working sets, FISTA with restart,
    Newton phases, duality-gap stopping) on float64 statistics from
    ``multitask_statistics``, timed separately: times are given for the solve alone and
    for statistics plus solve. The solver has no per-iteration callback, so its
    objective-vs-time curve comes from runs *from scratch* with iteration caps
    ``max_iter = 1, 2, 4, 8, …`` until one converges (duality gap ≤ 1e-10·F(0)), each
    timed (median of 7 repeats under 0.05 s, 5 under 0.2 s, 3 under 2 s). A cap counts FISTA
    iterations plus Newton steps over all working-set rounds; the capped run stops
    where the budget runs out and returns that iterate, i.e. (the solver being
    deterministic) the uncapped run's iterate after ``cap`` iterations (a Newton phase
    cut short returns the best of its steps so far), so each capped run's time is an
    honest time-to-that-point including all set-up (spectral norms, working sets, gap
    checks). FISTA's *time to reach* prox-Adam's final objective is
    the time of the first cap whose objective is at most that value (an overestimate
    by up to a factor two in iterations).

Reported: the time of each, the ratio prox-Adam seconds / FISTA time-to-reach (target
≥ 100×; also against FISTA to full convergence, and both with the statistics counted),
objectives, the active inputs (``‖V[:, k]‖ > 1e-7``) of each, prox-Adam's stop reason, the
objectives of the original weight and of the least-squares fit, and ``F*`` (FISTA's
converged objective with its certified gap). How far prox-Adam is from converged is
given in numbers: ``F − F*`` absolute and relative, the relative objective change over
its last 1000 iterations against the 1e-7 of its rule, and its distance to the lasso
solution and to the least-squares fit. Also the charitable ratio for an oracle that stops
prox-Adam the first time its objective reaches its final value. The script asserts that
FISTA's final objective is no worse than prox-Adam's (up to FISTA's certified gap; the
strict comparison is reported too).

Threads: single-threaded by default (``--threads 1`` sets torch's intra-op threads and,
before numpy loads its BLAS, ``OMP_NUM_THREADS`` and friends). Output: a printed table,
JSON ``benchmarks/results/multitask_lasso.json`` (``multitask_lasso_quick.json`` with
``--quick``; other models or layers than the default add ``_MODEL-LAYER`` before it,
e.g. ``multitask_lasso_lenet5-last_quick.json``) and a plot of objective and active
inputs vs time, same name with ``.png``. The model must already be trained (``netshrink
train NAME``); the benchmark never trains.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import statistics as pystats
import sys
import time
from pathlib import Path

import pinning  # noqa: E402, F401  (sets the thread variables before numpy/torch load)

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from netshrink import zoo  # noqa: E402
from netshrink.atomic import atomic_write_bytes, atomic_write_text  # noqa: E402
from netshrink.data import calibration_images  # noqa: E402
from netshrink.errors import UnsupportedCutError  # noqa: E402
from netshrink.experiments.shenouda_compress import published_settings as compress_settings  # noqa: E402
from netshrink.graph import resolve_linear  # noqa: E402
from netshrink.linalg import lstsq_from_gram  # noqa: E402
from netshrink.linalg.multitask_lasso import (  # noqa: E402
    REMOVED_NORM,
    multitask_lasso_fista,
    multitask_objective,
    multitask_statistics,
    prox_adam,
)

DEFAULT_MODEL, DEFAULT_LAYER = "alexnet-fmnist", "last"
FISTA_TOL = 1e-10  # duality gap ≤ FISTA_TOL·F(0): "converged" for F*
CHECK_EVERY, REL_TOL = 1000, 1e-7  # prox-Adam's own stopping rule (the defaults of prox_adam)
TARGET_SPEEDUP = 100
MAX_CAP = 1 << 20


def layer_problem(model_name: str, layer: str, samples: int, batch: int = 1000):
    """``(model, path, Φ (K, N), Ψ (D, N), b (D,), original weight (D, K))``, float32, by hooks."""
    if not zoo.info(model_name)["trained"]:
        raise SystemExit(f"{model_name} is not trained yet (run `netshrink train {model_name}` first); "
                         "this benchmark does not train models")
    model = zoo.load(model_name, progress=False).eval()
    path = resolve_linear(model, layer)
    module = model.get_submodule(path)
    inputs, outputs = [], []

    def keep_input(_module, args):
        inputs.append(args[0].detach().reshape(-1, module.in_features).to(torch.float32))

    def keep_output(_module, _args, output):
        outputs.append(output.detach().reshape(-1, module.out_features).to(torch.float32))

    handles = [module.register_forward_pre_hook(keep_input), module.register_forward_hook(keep_output)]
    images = calibration_images(samples, seed=0)
    try:
        with torch.no_grad():
            for start in range(0, samples, batch):
                model(images[start:start + batch])
    finally:
        for handle in handles:
            handle.remove()
    phi = torch.cat(inputs).T.contiguous()
    psi = torch.cat(outputs).T.contiguous()
    if phi.shape[1] != samples:
        raise SystemExit(f"{path} saw {phi.shape[1]} input rows for {samples} images; "
                         "only layers applied once per image are supported")
    bias = module.bias.detach().to(torch.float32) if module.bias is not None else torch.zeros(module.out_features)
    return model, path, phi, psi, bias, module.weight.detach().to(torch.float32).clone()


def published_settings(model, name: str, layer: str, path: str):
    """``(mu, lam, role)`` of seed 002 for the layer, or None for a path that is no FC role."""
    roles = [layer] if layer in ("last", "pen", "first") else []
    for role in ("last", "pen", "first"):
        try:
            if not roles and resolve_linear(model, role) == path:
                roles.append(role)
        except UnsupportedCutError:  # too few Linear layers for "pen"
            continue
    return (*compress_settings(name, roles[0]), roles[0]) if roles else None


def timed(function, repeats_for):
    """``(median seconds, last result, repeats)``: repeats decided by the first run's time."""
    start = time.perf_counter()
    result = function()
    times = [time.perf_counter() - start]
    for _ in range(repeats_for(times[0]) - 1):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return pystats.median(times), result, len(times)


def repeats_for(seconds: float) -> int:
    return 7 if seconds < 0.05 else 5 if seconds < 0.2 else 3 if seconds < 2.0 else 1


def snapshot_iterations(limit: int) -> set[int]:
    """Log-spaced iterations 1, 2, 3, 4, 5, 6, 8, … below ``limit`` (about 10 per decade)."""
    values, x = set(), 1.0
    while x < limit:
        values.add(int(round(x)))
        x *= 1.25
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2000 images, 60 s prox-Adam cap")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="trained zoo model (default %(default)s)")
    parser.add_argument("--layer", default=DEFAULT_LAYER, help="last, pen, first or a module path")
    parser.add_argument("--mu", type=float, default=None, help="prox-Adam learning rate (default: published)")
    parser.add_argument("--lam", type=float, default=None, help="ℓ2,1 weight of F (default: published)")
    parser.add_argument("--cap", type=float, default=None, help="prox-Adam wall-time cap in seconds")
    parser.add_argument("--samples", type=int, default=None, help="calibration images N")
    parser.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (0: library defaults)")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (the PNG goes next to it)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    samples = args.samples or (2000 if args.quick else 10000)
    cap = args.cap or (60.0 if args.quick else 1800.0)

    # ---------------------------------------------------------------- the layer problem
    start = time.perf_counter()
    model, path, phi, psi, bias, weight = layer_problem(args.model, args.layer, samples)
    capture_seconds = time.perf_counter() - start
    (K, N), D = phi.shape, psi.shape[0]
    published = published_settings(model, args.model, args.layer, path)
    if published is None and (args.mu is None or args.lam is None):
        raise SystemExit(f"no published mu/lam for layer {path}; pass --mu and --lam")
    mu = args.mu if args.mu is not None else published[0]
    lam = args.lam if args.lam is not None else published[1]
    network = "VGG-19" if args.model.startswith("vgg") and published and published[2] == "last" else "AlexNet"
    settings_source = (f"published (seed 002, {network} {published[2]})"
                       if published and args.mu is None and args.lam is None else "command line")
    print(f"{args.model} {path} (--layer {args.layer}): K = {K} inputs, D = {D} outputs, N = {N} images "
          f"(captured in {capture_seconds:.1f} s); mu = {mu:g}, lam = {lam:g} [{settings_source}]; "
          f"threads = {torch.get_num_threads()}")

    # ---------------------------------------------------------------- statistics, F*, references
    statistics_seconds, stats, statistics_repeats = timed(lambda: multitask_statistics(phi, psi, bias), repeats_for)
    gram, cross, energy = stats.gram, stats.cross, stats.energy

    def F(V):
        return multitask_objective(V.to(torch.float64), lam, gram, cross, energy)

    def active_count(V):
        return int((torch.linalg.vector_norm(V.to(torch.float64), dim=0) > REMOVED_NORM).sum())

    zero_objective = energy / D  # F(0)
    V_ls = lstsq_from_gram(gram, cross)  # minimum-norm least-squares fit (D, K)
    ls, original = F(V_ls), F(weight)

    # ---------------------------------------------------------------- prox-Adam
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=mu)  # the first Adam of a process imports for seconds
    wanted = snapshot_iterations(CHECK_EVERY)
    snapshots = []  # (iteration, perf_counter, V clone)

    def snapshot(iteration, V):
        if iteration in wanted or iteration == CHECK_EVERY:
            snapshots.append((iteration, time.perf_counter(), V.clone()))

    print(f"prox-Adam: up to {cap:g} s ...", flush=True)
    adam = prox_adam(phi, psi, bias, lam, mu, form="data", max_seconds=cap, check_every=CHECK_EVERY,
                     rel_tol=REL_TOL, callback=snapshot)
    adam_value = F(adam.V)
    # put the snapshots on the trace's clock: trace[1] is taken just after the callback of iteration CHECK_EVERY
    at_check = [stamp for iteration, stamp, _ in snapshots if iteration == CHECK_EVERY]
    if at_check and len(adam.trace) > 1 and adam.trace[1].iteration == CHECK_EVERY:
        offset = at_check[0] - adam.trace[1].seconds
    else:  # stopped before the first check: the run started about when its first snapshot's iteration began
        first_iteration, first_stamp, _ = snapshots[0] if snapshots else (0, 0.0, None)
        per_iteration = adam.seconds / max(adam.iterations, 1)
        offset = first_stamp - first_iteration * per_iteration
    adam_curve = [{"iteration": p.iteration, "seconds": p.seconds, "objective": p.objective, "active": p.active,
                   "source": "trace"} for p in adam.trace]
    for iteration, stamp, V in snapshots:
        if iteration < CHECK_EVERY:
            value = F(V)
            adam_curve.append({"iteration": iteration, "seconds": stamp - offset, "objective": value.objective,
                               "active": active_count(V), "source": "snapshot"})
    adam_curve.sort(key=lambda row: (row["iteration"], row["seconds"]))
    # first time prox-Adam's objective was at most its final value (an oracle stop)
    first_reach = next(row for row in adam_curve if row["objective"] <= adam.objective * (1 + 1e-12))
    best = min(adam_curve, key=lambda row: row["objective"])
    checks = [p for p in adam.trace if p.iteration % CHECK_EVERY == 0]
    last_change = (abs(checks[-1].objective - checks[-2].objective) / abs(checks[-2].objective)
                   if len(checks) >= 2 else None)

    # ---------------------------------------------------------------- FISTA: converged, then the curve
    print("FISTA: runs with max_iter = 1, 2, 4, ... until converged ...", flush=True)
    fista_curve, cap_iterations = [], 1
    while True:
        seconds, result, repeats = timed(
            lambda: multitask_lasso_fista(gram, cross, lam, energy=energy, tol=FISTA_TOL, max_iter=cap_iterations),
            repeats_for)
        fista_curve.append({"max_iter": cap_iterations, "iterations": result.iterations, "seconds": seconds,
                            "repeats": repeats, "objective": result.objective, "gap": result.gap,
                            "active": int(result.active.numel()), "converged": result.converged})
        if result.converged or cap_iterations >= MAX_CAP:
            break
        cap_iterations *= 2
    final = result
    final_row = fista_curve[-1]
    F_star_upper, F_star_lower = final.objective, final.objective - final.gap
    reach = next((row for row in fista_curve if row["objective"] <= adam_value.objective), None)
    reach_best = next((row for row in fista_curve if row["objective"] <= best["objective"]), None)
    fista_not_worse = final.objective <= adam_value.objective
    fista_not_worse_within_gap = final.objective <= adam_value.objective + final.gap

    # ---------------------------------------------------------------- table
    def rel(value):
        return (value - F_star_upper) / F_star_upper if F_star_upper > 0 else math.nan

    V_star = final.V
    distance_star = float((adam.V.double() - V_star).norm() / V_star.norm()) if float(V_star.norm()) > 0 else math.nan
    distance_ls = float((adam.V.double() - V_ls).norm() / V_ls.norm())
    ratios = {}
    if reach is not None:
        ratios = {
            "to_reach": adam.seconds / reach["seconds"],
            "to_reach_with_statistics": adam.seconds / (reach["seconds"] + statistics_seconds),
            "to_convergence": adam.seconds / final_row["seconds"],
            "to_convergence_with_statistics": adam.seconds / (final_row["seconds"] + statistics_seconds),
            "oracle_stop_to_reach": first_reach["seconds"] / reach["seconds"],
        }
    if reach_best is not None:
        ratios["oracle_best_to_reach_best"] = best["seconds"] / reach_best["seconds"]

    print()
    print(f"{'':<44} {'seconds':>10} {'objective F':>14} {'F − F*':>11} {'(F−F*)/F*':>10} {'active':>7}")

    def line(name, seconds, value, active):
        sec = f"{seconds:>10.3f}" if seconds is not None else f"{'':>10}"
        print(f"{name:<44} {sec} {value:>14.8g} {value - F_star_upper:>11.3e} {rel(value):>10.2e} "
              f"{active:>7}")

    line("F(0)", None, zero_objective, 0)
    line("original weight", None, original.objective, active_count(weight))
    line("least-squares fit", None, ls.objective, active_count(V_ls))
    line(f"prox-Adam final ({adam.iterations} it, {adam.stop_reason})", adam.seconds, adam_value.objective,
         int(adam.active.numel()))
    line(f"prox-Adam best on its curve (it {best['iteration']})", best["seconds"], best["objective"],
         best["active"])
    if reach is not None:
        line(f"FISTA reaching it (max_iter {reach['max_iter']})", reach["seconds"], reach["objective"],
             reach["active"])
    line(f"FISTA converged ({final.iterations} it, gap {final.gap:.1e})", final_row["seconds"], final.objective,
         int(final.active.numel()))
    print(f"statistics (float64 Gram, cross, energy): {statistics_seconds:.3f} s; "
          f"F* ∈ [{F_star_lower:.10g}, {F_star_upper:.10g}]")
    if reach is not None:
        print(f"ratio prox-Adam / FISTA-to-reach: {ratios['to_reach']:.0f}× "
              f"({ratios['to_reach_with_statistics']:.0f}× counting the statistics; target ≥ {TARGET_SPEEDUP}×); "
              f"vs FISTA to convergence {ratios['to_convergence']:.0f}× "
              f"({ratios['to_convergence_with_statistics']:.0f}× with statistics)")
        print(f"oracle stop (prox-Adam first at its final value, iteration {first_reach['iteration']}, "
              f"{first_reach['seconds']:.3f} s): {ratios['oracle_stop_to_reach']:.0f}× FISTA-to-reach")
    if reach_best is not None:
        print(f"prox-Adam's best objective (iteration {best['iteration']}, {best['seconds']:.3f} s) vs FISTA reaching "
              f"it (max_iter {reach_best['max_iter']}, {reach_best['seconds']:.3f} s): "
              f"{ratios['oracle_best_to_reach_best']:.0f}×")
    else:
        print("FISTA never reached prox-Adam's final objective (see the check below)")
    print(f"prox-Adam: stop reason {adam.stop_reason}; F − F* = {adam_value.objective - F_star_upper:.3e} "
          f"({rel(adam_value.objective):.2%} of F*, "
          f"{(adam_value.objective - F_star_upper) / (zero_objective - F_star_upper):.2%} of F(0) − F*); "
          + (f"objective change over its last {CHECK_EVERY} iterations {last_change:.1e} relative "
             f"(its rule needs < {REL_TOL:g} for error and penalty); " if last_change is not None else "")
          + f"‖V − V*‖/‖V*‖ = {distance_star:.3f}, ‖V − V_LS‖/‖V_LS‖ = {distance_ls:.3f}")
    print(f"FISTA final objective ≤ prox-Adam's: {fista_not_worse} "
          f"(within FISTA's certified gap: {fista_not_worse_within_gap})")

    # ---------------------------------------------------------------- output
    suffix = "" if (args.model, args.layer) == (DEFAULT_MODEL, DEFAULT_LAYER) else f"_{args.model}-{args.layer}"
    name = f"multitask_lasso{suffix}{'_quick' if args.quick else ''}"
    output = args.output or ROOT / "results" / f"{name}.json"
    figure_path = output.with_suffix(".png")
    output.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "problem": {"model": args.model, "layer": args.layer, "module": path, "inputs_K": K, "outputs_D": D,
                    "samples_N": N, "mu": mu, "lam": lam, "settings": settings_source,
                    "model_test_accuracy": zoo.info(args.model).get("test_accuracy")},
        "capture_seconds": capture_seconds,
        "statistics": {"seconds": statistics_seconds, "repeats": statistics_repeats},
        "references": {"F_zero": zero_objective, "original_weight": original._asdict(),
                       "original_active": active_count(weight), "least_squares": ls._asdict(),
                       "least_squares_active": active_count(V_ls),
                       "F_star_bounds": [F_star_lower, F_star_upper]},
        "prox_adam": {"form": "data", "dtype": "float32", "cap_seconds": cap, "check_every": CHECK_EVERY,
                      "rel_tol": REL_TOL, "seconds": adam.seconds, "iterations": adam.iterations,
                      "stop_reason": adam.stop_reason, "converged": adam.converged,
                      "objective": adam_value.objective, "error": adam_value.error, "penalty": adam_value.penalty,
                      "objective_own_evaluation": adam.objective, "active": int(adam.active.numel()),
                      "excess_over_F_star": adam_value.objective - F_star_upper,
                      "relative_excess": rel(adam_value.objective),
                      "excess_fraction_of_F0_minus_F_star":
                          (adam_value.objective - F_star_upper) / (zero_objective - F_star_upper),
                      "last_relative_objective_change": last_change,
                      "distance_to_lasso_solution": distance_star, "distance_to_least_squares": distance_ls,
                      "first_reach_of_final": first_reach, "best_on_curve": best, "curve": adam_curve},
        "fista": {"tol": FISTA_TOL, "seconds_to_convergence": final_row["seconds"],
                  "iterations": final.iterations, "objective": final.objective, "gap": final.gap,
                  "active": int(final.active.numel()), "converged": final.converged,
                  "reach_prox_adam_final": reach, "reach_prox_adam_best": reach_best, "curve": fista_curve},
        "ratios": ratios, "target_speedup": TARGET_SPEEDUP,
        "fista_not_worse": fista_not_worse, "fista_not_worse_within_gap": fista_not_worse_within_gap,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                    "platform": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                    "loadavg": list(os.getloadavg())},
    }
    atomic_write_text(output, json.dumps(payload, indent=2), overwrite=True)
    atomic_write_bytes(figure_path, plot(payload), overwrite=True)
    print(f"wrote {output} and {figure_path}")
    assert fista_not_worse_within_gap, (
        f"FISTA's final objective {final.objective!r} is worse than prox-Adam's {adam_value.objective!r} "
        f"by more than its certified gap {final.gap!r}")
    return 0


def plot(payload) -> bytes:
    """PNG: objective and active inputs vs time (log) for both solvers, F* as a line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    adam, fista, problem = payload["prox_adam"], payload["fista"], payload["problem"]
    F_star = payload["references"]["F_star_bounds"][1]
    adam_curve = [row for row in adam["curve"] if row["seconds"] > 0]
    fista_curve = fista["curve"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    styles = {"prox-Adam": dict(color="tab:red", marker=".", markersize=3, linewidth=1),
              "FISTA": dict(color="tab:blue", marker="o", markersize=4, linewidth=1)}
    for axis, key in ((left, "objective"), (right, "active")):
        axis.plot([r["seconds"] for r in adam_curve], [r[key] for r in adam_curve],
                  label=f"prox-Adam (mu={problem['mu']:g}, {adam['stop_reason']} after {adam['iterations']} it)",
                  **styles["prox-Adam"])
        axis.plot([r["seconds"] for r in fista_curve], [r[key] for r in fista_curve],
                  label="FISTA (runs with max_iter 1, 2, 4, …)", **styles["FISTA"])
        axis.set_xscale("log")
        axis.set_xlabel("wall time (s, one thread)")
        axis.grid(True, which="both", alpha=0.3)
    left.axhline(F_star, color="black", linestyle="--", linewidth=1, label=f"F* = {F_star:.6g}")
    left.axhline(adam["objective"], color="tab:red", linestyle=":", linewidth=1,
                 label=f"prox-Adam final = {adam['objective']:.6g}")
    least_squares = payload["references"]["least_squares"]["objective"]
    left.axhline(least_squares, color="gray", linestyle="-.", linewidth=1,
                 label=f"least-squares fit = {least_squares:.6g}")
    reach = fista["reach_prox_adam_final"]
    if reach is not None:
        left.plot([reach["seconds"]], [reach["objective"]], marker="*", markersize=12, color="tab:blue",
                  linestyle="none", label=f"FISTA reaches it: {reach['seconds']:.3g} s")
    values = [r["objective"] for r in adam_curve + fista_curve] + [F_star, least_squares]
    left.set_yscale("log")
    low, high = min(values), max(values)
    left.set_ylim(low / 1.05, high * 1.5)
    left.set_ylabel("objective F(V)")
    left.set_title("objective")
    left.legend(fontsize=8)
    right.axhline(problem["inputs_K"], color="gray", linestyle=":", linewidth=1, label=f"K = {problem['inputs_K']}")
    right.set_ylabel("active inputs (‖V[:, k]‖ > 1e-7)")
    right.set_title("active inputs")
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    ratio = payload["ratios"].get("to_reach")
    figure.suptitle(f"{problem['model']} {problem['module']} (K={problem['inputs_K']}, D={problem['outputs_D']}, "
                    f"N={problem['samples_N']}), lam={problem['lam']:g}"
                    + (f": prox-Adam {adam['seconds']:.0f} s = {ratio:.0f}× FISTA's time to its objective"
                       if ratio else ""), fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


if __name__ == "__main__":
    sys.exit(main())
