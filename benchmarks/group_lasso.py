"""Benchmark netshrink's ℓ2,1 solver against scikit-learn and skglm ``MultiTaskLasso``.

Usage::

    python benchmarks/group_lasso.py [--quick] [--ratio R] [--output PATH]

The problem is one layer of the trained ``mlp7``: ``x`` the 2048 activations entering
its second layer (``hidden.1``) on 5000 Fashion-MNIST training images, ``y = W x`` that
layer's 1024 linear outputs (Robin problem (5)/(6)). All three solvers minimise the same
objective, ``1/(2n)·‖Y − X Mᵀ‖²_F + λ‖M‖₂,₁`` (scikit-learn's and skglm's
``MultiTaskLasso`` with ``alpha = λ`` and no intercept; netshrink from
``gram = XᵀX/n``, ``cross = XᵀY/n``, ``energy = ‖Y‖²_F/n``), at ``λ = R·λ_max``.

Equal duality gap: the peers run in chunks of their own iterations, warm-started, until
their duality gap — computed the same way for every solution
(``netshrink.linalg.duality_gap`` on the identical objective, outside the timing) — is
at most ``--peer-gap``·½E‖y‖² or their wall time reaches ``--cap``; netshrink is then
timed to reach a gap no larger than the smallest gap a peer reached. A peer stopped by
the cap has a larger gap than netshrink's: its ratio is then a lower bound. Reported: times,
gaps, objectives, active groups, and the ratios peer time / netshrink time both for
the solve alone and including the Gram statistics (built here from X and Y; in
``compress`` they are accumulated during the calibration pass).

Threads: every solver runs single-threaded by default (``--threads 1`` sets torch's
intra-op threads and, before numpy loads its BLAS, ``OMP_NUM_THREADS`` and friends;
scikit-learn's and skglm's coordinate descent are single-threaded anyway), so the
ratios compare algorithms, not thread pools on a shared machine. Numbers are printed
and written as JSON to ``benchmarks/results/group_lasso.json``
(``group_lasso_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import pinning  # noqa: E402, F401  (sets the thread variables before numpy/torch load)

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from netshrink import zoo  # noqa: E402
from netshrink.atomic import atomic_write_text  # noqa: E402
from netshrink.data import calibration_images  # noqa: E402
from netshrink.linalg import duality_gap, group_lasso, lambda_max  # noqa: E402


def layer_problem(samples: int, features: int | None, outputs: int | None):
    """X: (n, 2048) activations entering mlp7's ``hidden.1``, Y = X W₁ᵀ: (n, 1024)."""
    model = zoo.load("mlp7", progress=False)
    images = calibration_images(samples, seed=0)
    with torch.no_grad():
        X = torch.relu(model.hidden[0](images.flatten(1))).double()
        W = model.hidden[1].weight.detach().double()
    if features is not None:
        X, W = X[:, :features], W[:, :features]
    if outputs is not None:
        W = W[:outputs]
    return X.numpy(), (X @ W.T).numpy()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ratio", type=float, default=0.001, help="λ as a fraction of λ_max")
    parser.add_argument("--threads", type=int, default=1, help="threads for every solver (0: library defaults)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--cap", type=float, default=None,
                        help="wall-time cap per peer in seconds (default 900; 120 with --quick)")
    parser.add_argument("--peer-gap", type=float, default=1e-6,
                        help="relative duality gap at which the peers stop (default %(default)g)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from sklearn.linear_model import MultiTaskLasso as SklearnMTL
    from skglm import MultiTaskLasso as SkglmMTL

    samples, features, outputs = (1000, 512, 256) if args.quick else (5000, None, None)
    X, Y = layer_problem(samples, features, outputs)
    n, d = X.shape
    start = time.perf_counter()
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    gram, cross, energy = Xt.T @ Xt / n, Xt.T @ Yt / n, float((Yt * Yt).sum() / n)
    gram_seconds = time.perf_counter() - start
    lam = args.ratio * lambda_max(cross)
    half_energy = 0.5 * energy

    def record(name, seconds, M, extra=None):
        M = torch.as_tensor(np.asarray(M, dtype=np.float64))
        gap = duality_gap(gram, cross, M, lam, energy=energy)
        residual = Y - X @ M.numpy().T
        objective = 0.5 * (residual**2).sum() / n + lam * float(M.norm(dim=0).sum())
        return {"solver": name, "seconds": seconds, "gap": gap, "relative_gap": gap / half_energy,
                "objective": objective, "active": int((M.norm(dim=0) > 0).sum()), **(extra or {})}

    rows = []
    # Each peer runs in chunks of its own iterations, warm-started from the previous
    # chunk, until its duality gap (computed identically for all, outside the timing)
    # reaches peer_gap·½E‖y‖² or its wall time reaches the cap; the gap at the stop is
    # reported. (On the full problem one coordinate-descent epoch costs n·d·out.)
    cap = args.cap if args.cap is not None else (120.0 if args.quick else 900.0)
    peers = [
        ("scikit-learn MultiTaskLasso (coordinate descent)",
         SklearnMTL(alpha=lam, fit_intercept=False, tol=0.0, warm_start=True), {"max_iter": 10}),
        ("skglm MultiTaskLasso (working sets + Anderson CD)",
         SkglmMTL(alpha=lam, fit_intercept=False, tol=0.0, warm_start=True), {"max_iter": 2, "max_epochs": 500}),
    ]
    # skglm compiles its kernels with numba on first use: compile outside the timing
    SkglmMTL(alpha=lam, fit_intercept=False, max_iter=2).fit(X[:64, :16], Y[:64, :4])
    for name, estimator, chunk in peers:
        estimator.set_params(**chunk)
        seconds, chunks, gap = 0.0, 0, math.inf
        while gap > args.peer_gap and seconds < cap:
            start = time.perf_counter()
            estimator.fit(X, Y)
            seconds += time.perf_counter() - start
            chunks += 1
            gap = duality_gap(gram, cross, torch.from_numpy(estimator.coef_), lam, energy=energy) / half_energy
        rows.append(record(name, seconds, estimator.coef_, {
            "chunk": chunk, "chunks": chunks, "cap_seconds": cap, "reached_gap_target": gap <= args.peer_gap,
            "stopped_by": "gap" if gap <= args.peer_gap else "wall-time cap"}))
    target = min(row["relative_gap"] for row in rows)
    for solver in ("fista", "altmin"):
        start = time.perf_counter()
        ours = group_lasso(gram, cross, lam, solver=solver, tol=max(target, 1e-12), energy=energy)
        rows.append(record(f"netshrink group_lasso ({solver}, Gram)", time.perf_counter() - start, ours.M,
                           {"iterations": ours.iterations, "tol": target}))

    fista = rows[2]
    print(f"mlp7 hidden.1 problem: n={n}, d={d}, out={Y.shape[1]}, λ = {args.ratio:g}·λ_max = {lam:.4g}; "
          f"Gram statistics built in {gram_seconds:.2f} s")
    print(f"{'solver':<52} {'seconds':>9} {'rel. gap':>10} {'objective':>14} {'active':>7}")
    for row in rows:
        note = f"  (stopped by the {row['cap_seconds']:.0f} s cap)" if row.get("stopped_by") == "wall-time cap" else ""
        print(f"{row['solver']:<52} {row['seconds']:>9.2f} {row['relative_gap']:>10.2e} "
              f"{row['objective']:>14.8g} {row['active']:>7}{note}")
    ratios = {}
    for row in rows[:2]:
        key = row["solver"].split()[0]
        ratios[key] = {"solve": row["seconds"] / fista["seconds"],
                       "with_gram": row["seconds"] / (fista["seconds"] + gram_seconds)}
        print(f"{key}: {ratios[key]['solve']:.1f}× slower than netshrink FISTA "
              f"({ratios[key]['with_gram']:.1f}× counting the Gram build) at gap ≤ {target:.2e}·½E‖y‖²")
    output = args.output or ROOT / "results" / ("group_lasso_quick.json" if args.quick else "group_lasso.json")
    payload = {
        "problem": {"model": "mlp7", "layer": "hidden.1", "samples": n, "features": d, "outputs": int(Y.shape[1]),
                    "lam": lam, "lam_over_lambda_max": args.ratio},
        "gram_seconds": gram_seconds, "target_relative_gap": target, "rows": rows, "ratios": ratios,
        "target_speedup": 10,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                    "threads": torch.get_num_threads(), "loadavg": list(os.getloadavg())},
    }
    atomic_write_text(output, json.dumps(payload, indent=2), overwrite=True)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
