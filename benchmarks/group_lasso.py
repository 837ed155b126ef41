"""Benchmark netshrink's ℓ2,1 solver against scikit-learn and skglm ``MultiTaskLasso``.

Usage::

    python benchmarks/group_lasso.py [--quick] [--ratio R] [--output PATH]

The problem is one layer of the trained ``mlp7``: ``x`` the 2048 activations entering
its second layer (``hidden.1``) on 5000 Fashion-MNIST training images, ``y = W x`` that
layer's 1024 linear outputs (Robin problem (5)/(6)). All three solvers minimise the same
objective, ``1/(2n)·‖Y − X Mᵀ‖²_F + λ‖M‖₂,₁`` (scikit-learn's and skglm's
``MultiTaskLasso`` with ``alpha = λ`` and no intercept; netshrink from
``gram = XᵀX/n``, ``cross = XᵀY/n``, ``energy = ‖Y‖²_F/n``), at ``λ = R·λ_max``.

Equal duality gap: the peers run to their own convergence criterion (tolerance and
iteration cap below); the duality gap of *every* solution is then computed the same
way (``netshrink.linalg.duality_gap`` on the identical objective), and netshrink is
timed to reach a gap no larger than the smallest gap a peer reached. Reported: times,
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
import os
import platform
import sys
import time
from pathlib import Path

def _threads_from_argv(argv: list[str]) -> int:
    for index, item in enumerate(argv):
        if item == "--threads" and index + 1 < len(argv):
            return int(argv[index + 1])
        if item.startswith("--threads="):
            return int(item.split("=", 1)[1])
    return 1


THREADS = _threads_from_argv(sys.argv[1:])
if THREADS > 0:  # before numpy/scipy load their BLAS
    for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[_variable] = str(THREADS)

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
    # Iteration caps keep the peers' runs to minutes on the full problem (coordinate
    # descent costs n·d·out per epoch there); the achieved gaps are reported.
    peer_tol, peer_iter = (1e-6, 2000) if args.quick else (1e-6, 150)
    start = time.perf_counter()
    sk = SklearnMTL(alpha=lam, fit_intercept=False, tol=peer_tol, max_iter=peer_iter).fit(X, Y)
    rows.append(record("scikit-learn MultiTaskLasso (coordinate descent)", time.perf_counter() - start, sk.coef_,
                       {"tol": peer_tol, "max_iter": peer_iter, "n_iter": int(sk.n_iter_)}))
    start = time.perf_counter()
    sg = SkglmMTL(alpha=lam, fit_intercept=False, tol=peer_tol, max_iter=20 if args.quick else 10,
                  max_epochs=peer_iter).fit(X, Y)
    rows.append(record("skglm MultiTaskLasso (working sets + Anderson CD)", time.perf_counter() - start, sg.coef_,
                       {"tol": peer_tol, "max_epochs": peer_iter}))
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
        print(f"{row['solver']:<52} {row['seconds']:>9.2f} {row['relative_gap']:>10.2e} "
              f"{row['objective']:>14.8g} {row['active']:>7}")
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
