"""Seed 002 (Shenouda, Parhi, Lee & Nowak): the neuron-sharing experiment (issue 4, item 5).

The seed's README, "Overview of Experiments" and "Neuron Sharing Experiments": the first
experiment "illustrates the neuron sharing phenomenon on a synthetic dataset" — shallow
multi-output ReLU networks trained with weight decay share their neurons between the
outputs. Here: one network for ``T`` related regression tasks needs fewer active neurons
than ``T`` separate single-output networks together.

Data. ``x ∈ ℝᵈ`` standard Gaussian; a teacher of ``m`` ReLU ridge functions
``φ_j(x) = relu(⟨u_j, x⟩ − a_j)`` (``u_j`` uniform on the sphere, ``a_j`` uniform in
``[−1, 1]``, so every kink crosses the bulk of the data) shared by all tasks, and targets

    y_t = Σ_j A[t, j] φ_j(x) + σ_t ε,    A: (T, m) standard Gaussian,  ε ~ N(0, 1),

so every task is a different combination of the same ``m`` neurons; ``σ_t`` is ``noise``
times the standard deviation of the clean ``y_t`` on the training points. The test points
are fresh draws scored against the clean targets (the teacher function itself).

Network and objective. ``f(x) = V relu(W x + b) + c`` with ``W: (K, d)``, ``b: (K,)``,
``V: (T, K)``, ``c: (T,)``, trained on ``N`` points with weight decay on the weights of both
layers, not on the biases:

    J(W, b, V, c) = 1/(2N) Σ_n ‖f(x_n) − y_n‖² + λ/2 (‖W‖_F² + ‖V‖_F²).

Rescaling argument. ReLU is positively homogeneous, so ``(w_k, b_k, v_k) → (s w_k, s b_k,
v_k / s)`` with ``s > 0`` leaves ``f`` unchanged while neuron ``k``'s penalty becomes
``λ/2 (s²‖w_k‖² + ‖v_k‖²/s²) ≥ λ ‖v_k‖ ‖w_k‖`` (AM–GM), with equality iff
``s² = ‖v_k‖/‖w_k‖``, i.e. the rescaled neuron is *balanced*, ``‖s w_k‖ = ‖v_k / s‖``.
Minimising ``J`` over the rescalings therefore gives

    min_s J = 1/(2N) Σ_n ‖f(x_n) − y_n‖² + λ Σ_k ‖v_k‖₂ ‖w_k‖₂,

the loss plus λ times the path norm (the paper's ℓ2,1-type norm of the vector-valued
variation space); every minimiser of ``J`` is balanced, and fixing ``‖w_k‖ = 1`` loses
nothing (a neuron with ``w_k = 0`` is a constant, absorbed by ``c``). So training with weight
decay is the problem

    F(U, b, V, c) = 1/(2N) ‖H Vᵀ + c − Y‖² + λ Σ_k ‖V[:, k]‖₂,   H = relu(X Uᵀ + b),  ‖U[k]‖ = 1,

a group lasso over the columns of ``V`` — the penalty makes whole neurons vanish, and since
``‖V[:, k]‖₂`` is what a neuron costs whatever the number of outputs it serves, a neuron
used by several outputs is cheaper than one neuron per output. The ``T`` separate
single-output networks minimise the same loss with ``λ Σ_t Σ_k |V[t, k]|`` (an ℓ1 penalty,
each output paying for its own neurons).

Training (:func:`train`, the same for every network, deterministic). Block coordinate
descent on ``F``: (i) the output layer ``(V, c)`` is the *exact* group-lasso minimiser for
the current hidden layer — :func:`netshrink.linalg.group_lasso` on the centred features
(``c`` is unpenalised, so ``c = ȳ − V h̄``) to a duality gap of ``GAP_TOL·P(0)`` — which sets
unneeded columns of ``V`` exactly to zero; (ii) the hidden layer of the neurons with
``V[:, k] ≠ 0`` takes ``iters`` L-BFGS steps (strong Wolfe line search, float64) on the loss
with ``U[k] = w_k / ‖w_k‖`` (``V, c`` fixed; the penalty does not depend on ``W`` then).
Each block lowers ``F`` (the output-layer solve up to its gap); training stops after
``rounds`` output-layer solves or when one round lowers ``F`` by less than
``OBJECTIVE_RTOL`` (relative). Every network of a trial —
joint and separate — starts from the same hidden layer (``U`` uniform on the sphere, ``b``
uniform in ``[−INIT_BIAS, INIT_BIAS]``) with ``V = 0`` and gets the same budget.
:func:`balance` maps a trained network to its weight-decay representative (``‖w_k‖ =
‖v_k‖``), whose ``J`` equals ``F``.

Active neurons. Neuron ``k``'s path weight is ``p_k = ‖V[:, k]‖₂ ‖W[k]‖₂``; it is active
when ``p_k > ACTIVE_RTOL · max_j p_j`` (``ACTIVE_RTOL = 1e-3``). The output-layer solve gives
exact zeros, but at its gap floor the group lasso resolves column norms only to about 1e-5
of the largest (see :mod:`netshrink.experiments.shenouda_width`), so the threshold sits a
factor 100 above that. The trained networks' path weights do not fall off a cliff, though:
below the few large neurons comes a tail of small ones (1e-2…1e-4 of the largest; they
belong to the exact output-layer optimum for the trained hidden layer), so a count
depends on the threshold. The sorted path weights of every network are recorded, and
summary.md repeats the comparison at 1e-4, 1e-3 and 1e-2. Neuron ``k`` *serves* output ``t`` when
``|V[t, k]| ≥ SERVE_RTOL · max_s |V[s, k]|`` (``SERVE_RTOL = 0.1``: output ``t`` gets at least
a tenth of the neuron's largest output weight); a neuron of a single-output network serves
exactly one output.

Comparison. Per trial: (a) one ``T``-output network; (b) ``T`` single-output networks with
the same ``K``, λ and budget. With the same λ each separate network is regularised more
(``Σ_t |v_t| ≥ ‖v‖₂``), so it fits worse — and still, together, they use more neurons;
(c) *fit-matched* separate networks: task ``t``'s λ is divided by √2 (warm-started from the
previous solution) until its training MSE is at most the joint network's on output ``t``,
at most ``match_steps`` times. Reported: active neurons of (a), the sum and the maximum
over (b) and (c), and the training and test MSE (mean over points and outputs) of all three.

:func:`run` writes one folder, atomically::

    counts.png/.json          active neurons per trial (joint, max and sum of separate,
                              fit-matched sum) and the sorted path weights of trial 0
    shared_weights.png/.json  |V| of trial 0: outputs × active neurons, joint and separate
    outputs_served.png/.json  how many outputs each active neuron of a joint network serves
    summary.md                the counts and MSEs per trial, whether joint < sum held
    run.json                  settings, thresholds, run times, versions

Every PNG is drawn from the JSON of the same stem alone. Trial ``i`` draws its data from
``numpy.random.default_rng((seed, i, 0))`` and its initial hidden layer from
``numpy.random.default_rng((seed, i, 1))``.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from netshrink.errors import InvalidInputError
from netshrink.experiments.runtime import Log, output_folder, torch_threads, versions, write_json
from netshrink.linalg import group_lasso

__all__ = [
    "run", "Settings", "FULL", "QUICK", "TaskData", "ShallowNet", "TrainResult", "NetSummary", "TrialRecord",
    "teacher_tasks", "initial_hidden_layer", "path_norm", "weight_decay", "balance", "active_mask",
    "outputs_served", "train", "sharing_trial", "trial_records",
]

#: A neuron is active when its path weight exceeds this fraction of the largest (module doc).
ACTIVE_RTOL = 1e-3
#: Neuron k serves output t when |V[t, k]| is at least this fraction of its largest output weight.
SERVE_RTOL = 0.1
#: Duality-gap tolerance of the output-layer group lasso (fraction of P(0) = energy/2).
GAP_TOL = 1e-10
#: Training stops when a round lowers the objective by less than this (relative).
OBJECTIVE_RTOL = 1e-9
#: Initial biases are uniform in [−INIT_BIAS, INIT_BIAS] (kinks spread over the Gaussian data).
INIT_BIAS = 2.0
#: L-BFGS memory of the hidden-layer steps.
HISTORY = 30
#: Fit-matched separate networks divide λ by this per step.
MATCH_FACTOR = math.sqrt(2.0)
#: torch threads (2-core machine shared with other jobs).
THREADS = 1


@dataclass(frozen=True)
class Settings:
    """Sizes of one run (``FULL`` or ``QUICK``)."""

    seed: int
    trials: int
    d: int  # input dimension
    outputs: int  # T tasks
    teacher: int  # m shared teacher neurons
    points: int  # N training points
    test_points: int
    noise: float  # noise std relative to each clean target's std
    width: int  # K hidden neurons of every trained network
    lam: float  # λ
    rounds: int  # output-layer solves per training at most
    iters: int  # L-BFGS steps of the hidden layer per round
    match_steps: int  # λ ÷ √2 steps of a fit-matched separate network at most


FULL = Settings(seed=2, trials=5, d=8, outputs=6, teacher=4, points=256, test_points=4000, noise=0.02,
                width=256, lam=5e-3, rounds=40, iters=50, match_steps=8)
QUICK = Settings(seed=2, trials=2, d=5, outputs=4, teacher=3, points=128, test_points=1000, noise=0.02,
                 width=64, lam=5e-3, rounds=15, iters=30, match_steps=6)


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskData:
    """Multi-task data from a shared teacher (module doc).

    Attributes:
        X: ``(N, d)`` training inputs; Y: ``(N, T)`` noisy training targets.
        X_test: ``(n, d)`` test inputs; Y_test: ``(n, T)`` clean test targets.
        teacher_U: ``(m, d)`` unit directions; teacher_a: ``(m,)`` offsets; teacher_A: ``(T, m)``.
    """

    X: np.ndarray
    Y: np.ndarray
    X_test: np.ndarray
    Y_test: np.ndarray
    teacher_U: np.ndarray
    teacher_a: np.ndarray
    teacher_A: np.ndarray

    @property
    def teacher_path_norm(self) -> float:
        """``Σ_j ‖A[:, j]‖₂`` (the teacher's directions have unit norm)."""
        return float(np.linalg.norm(self.teacher_A, axis=0).sum())


def teacher_tasks(rng: np.random.Generator, points: int, test_points: int, d: int, outputs: int,
                  teacher: int, noise: float) -> TaskData:
    """Draw a teacher and ``points`` noisy training / ``test_points`` clean test pairs (module doc)."""
    for name, value in (("points", points), ("test_points", test_points), ("d", d), ("outputs", outputs),
                        ("teacher", teacher)):
        _check_positive_int(name, value)
    _check_noise(noise)
    U = _unit_rows(rng.standard_normal((teacher, d)))
    a = rng.uniform(-1.0, 1.0, teacher)
    A = rng.standard_normal((outputs, teacher))

    def clean(X: np.ndarray) -> np.ndarray:
        return np.maximum(X @ U.T - a, 0.0) @ A.T

    X = rng.standard_normal((points, d))
    Y = clean(X)
    Y = Y + noise * Y.std(axis=0) * rng.standard_normal(Y.shape)
    X_test = rng.standard_normal((test_points, d))
    return TaskData(X=X, Y=Y, X_test=X_test, Y_test=clean(X_test), teacher_U=U, teacher_a=a, teacher_A=A)


def initial_hidden_layer(rng: np.random.Generator, width: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``U: (K, d)`` uniform on the unit sphere and ``b: (K,)`` uniform in ``[−INIT_BIAS, INIT_BIAS]``."""
    _check_positive_int("width", width)
    _check_positive_int("d", d)
    return _unit_rows(rng.standard_normal((width, d))), rng.uniform(-INIT_BIAS, INIT_BIAS, width)


def _unit_rows(A: np.ndarray) -> np.ndarray:
    return A / np.linalg.norm(A, axis=1, keepdims=True)


# --------------------------------------------------------------------------------------
# networks, norms, counts
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShallowNet:
    """``f(x) = V relu(W x + b) + c``: ``W: (K, d)``, ``b: (K,)``, ``V: (T, K)``, ``c: (T,)``."""

    W: np.ndarray
    b: np.ndarray
    V: np.ndarray
    c: np.ndarray

    def predict(self, X: np.ndarray) -> np.ndarray:
        """``(n, T)`` outputs for inputs ``X: (n, d)``."""
        return np.maximum(X @ self.W.T + self.b, 0.0) @ self.V.T + self.c

    @property
    def path_weights(self) -> np.ndarray:
        """``(K,)``: ``p_k = ‖V[:, k]‖₂ ‖W[k]‖₂``."""
        return np.linalg.norm(self.V, axis=0) * np.linalg.norm(self.W, axis=1)


def path_norm(W, V) -> float:
    """``Σ_k ‖V[:, k]‖₂ ‖W[k]‖₂`` for ``W: (K, d)``, ``V: (T, K)``."""
    W, V = _weights(W, V)
    return float((np.linalg.norm(V, axis=0) * np.linalg.norm(W, axis=1)).sum())


def weight_decay(W, V) -> float:
    """``½ (‖W‖_F² + ‖V‖_F²)``; at least :func:`path_norm` (AM–GM), equal iff balanced."""
    W, V = _weights(W, V)
    return 0.5 * float((W * W).sum() + (V * V).sum())


def balance(W, b, V) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The weight-decay-minimal rescaling ``(s_k W[k], s_k b_k, V[:, k] / s_k)``, ``s_k² = ‖V[:, k]‖/‖W[k]‖``.

    ``W: (K, d)``, ``b: (K,)``, ``V: (T, K)``. The function is unchanged and every neuron ends
    balanced, ``‖W[k]‖ = ‖V[:, k]‖``, so ``weight_decay = path_norm`` (module doc). A neuron
    with ``V[:, k] = 0`` contributes nothing; its ``W[k]`` is set to zero. A neuron with
    ``W[k] = 0`` but ``V[:, k] ≠ 0`` is a constant with no balanced form (InvalidInputError).
    """
    W, V = _weights(W, V)
    b = np.asarray(b, dtype=np.float64)
    if b.shape != (W.shape[0],):
        raise InvalidInputError(f"b must have shape ({W.shape[0]},) for W: {W.shape}, got {b.shape}")
    w_norm, v_norm = np.linalg.norm(W, axis=1), np.linalg.norm(V, axis=0)
    constant = np.flatnonzero((w_norm == 0) & (v_norm > 0))
    if constant.size:
        raise InvalidInputError(
            f"neuron {constant[0]} has W[k] = 0 but V[:, k] ≠ 0: it is the constant V[:, k]·relu(b_k); "
            "fold it into the output bias first"
        )
    live = v_norm > 0
    scale = np.zeros_like(w_norm)
    scale[live] = np.sqrt(v_norm[live] / w_norm[live])
    inverse = np.zeros_like(w_norm)
    inverse[live] = 1.0 / scale[live]
    return W * scale[:, None], np.where(live, b * scale, b), V * inverse[None, :]


def _weights(W, V) -> tuple[np.ndarray, np.ndarray]:
    W, V = np.asarray(W, dtype=np.float64), np.asarray(V, dtype=np.float64)
    if W.ndim != 2 or V.ndim != 2 or W.shape[0] != V.shape[1]:
        raise InvalidInputError(f"W must be (K, d) and V (T, K) with the same K, got {W.shape} and {V.shape}")
    if not (np.isfinite(W).all() and np.isfinite(V).all()):
        raise InvalidInputError("W or V contains NaN or Inf")
    return W, V


def active_mask(weights, rtol: float = ACTIVE_RTOL) -> np.ndarray:
    """``(K,)`` bool: ``weights[k] > rtol · max(weights)`` (none when all are zero).

    ``weights: (K,)`` non-negative path weights (:attr:`ShallowNet.path_weights`).
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or not np.isfinite(weights).all() or (weights < 0).any():
        raise InvalidInputError(f"weights must be a finite non-negative vector, got shape {weights.shape}")
    _check_fraction("rtol", rtol)
    top = weights.max(initial=0.0)
    return weights > rtol * top if top > 0 else np.zeros(weights.shape, dtype=bool)


def outputs_served(V, active, rtol: float = SERVE_RTOL) -> np.ndarray:
    """For each active neuron, the outputs ``t`` with ``|V[t, k]| ≥ rtol · max_s |V[s, k]|``.

    ``V: (T, K)``, ``active: (K,)`` bool; returns ``(count of active,)`` ints in ``1…T``.
    """
    V = np.abs(np.asarray(V, dtype=np.float64))
    active = np.asarray(active, dtype=bool)
    if V.ndim != 2 or active.shape != (V.shape[1],):
        raise InvalidInputError(f"V must be (T, K) and active (K,), got {V.shape} and {active.shape}")
    _check_fraction("rtol", rtol)
    columns = V[:, active]
    if (columns.max(axis=0, initial=0.0) <= 0).any():
        raise InvalidInputError("an active neuron has a zero column of V")
    return (columns >= rtol * columns.max(axis=0, keepdims=True)).sum(axis=0)


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    """A trained network (``W`` with unit rows) and how training ended.

    ``objective`` is ``F`` (module doc) = the weight-decay objective ``J`` of
    :func:`balance`'s representative; ``gap`` the duality gap of the last output-layer
    solve; ``converged`` whether the last round lowered ``F`` by less than
    ``OBJECTIVE_RTOL``; ``history`` ``F`` after every output-layer solve.
    """

    net: ShallowNet
    lam: float
    objective: float
    gap: float
    rounds: int
    converged: bool
    history: tuple[float, ...]
    seconds: float


def train(X, Y, lam: float, U0, b0, rounds: int, iters: int, V0=None) -> TrainResult:
    """Minimise ``F`` (module doc) by block coordinate descent from the hidden layer ``(U0, b0)``.

    ``X: (N, d)``, ``Y: (N, T)``, ``U0: (K, d)`` (rows are normalised), ``b0: (K,)``,
    ``V0: (T, K)`` warm start of the output layer (default 0). At most ``rounds`` exact
    output-layer solves with ``iters`` L-BFGS steps of the hidden layer between two.
    """
    start = time.perf_counter()
    X, Y, U, b, V = _training_inputs(X, Y, lam, U0, b0, rounds, iters, V0)
    history: list[float] = []
    converged = False
    with torch_threads(THREADS):
        for index in range(rounds):
            H = torch.relu(X @ U.T + b)
            V, c, gap = _output_layer(H, Y, lam, V)
            history.append(_objective(H, Y, V, c, lam))
            if index and history[-2] - history[-1] <= OBJECTIVE_RTOL * abs(history[-1]):
                converged = True
                break
            if index + 1 < rounds:
                U, b = _hidden_layer(X, Y, U, b, V, c, iters)
    net = ShallowNet(*(np.ascontiguousarray(t.numpy()) for t in (U, b, V, c)))
    return TrainResult(net=net, lam=float(lam), objective=history[-1], gap=gap, rounds=len(history),
                       converged=converged, history=tuple(history), seconds=time.perf_counter() - start)


def _training_inputs(X, Y, lam, U0, b0, rounds, iters, V0):
    arrays = {}
    for name, value in (("X", X), ("Y", Y), ("U0", U0), ("b0", b0), ("V0", V0)):
        if value is None:
            continue
        array = np.asarray(value, dtype=np.float64)
        if array.size == 0 or not np.isfinite(array).all():
            raise InvalidInputError(f"{name} must be nonempty and finite")
        arrays[name] = torch.from_numpy(array.copy())
    X, Y, U, b = arrays["X"], arrays["Y"], arrays["U0"], arrays["b0"]
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise InvalidInputError(f"X must be (N, d) and Y (N, T) with the same N, got {tuple(X.shape)} and "
                                f"{tuple(Y.shape)}")
    K = U.shape[0]
    if U.ndim != 2 or U.shape[1] != X.shape[1] or b.shape != (K,):
        raise InvalidInputError(f"U0 must be (K, {X.shape[1]}) and b0 (K,), got {tuple(U.shape)} and {tuple(b.shape)}")
    if (U.norm(dim=1) == 0).any():
        raise InvalidInputError("U0 has a zero row: a neuron needs a direction")
    V = arrays.get("V0", torch.zeros(Y.shape[1], K, dtype=torch.float64))
    if V.shape != (Y.shape[1], K):
        raise InvalidInputError(f"V0 must be ({Y.shape[1]}, {K}), got {tuple(V.shape)}")
    _check_lam("lam", lam)
    _check_positive_int("rounds", rounds)
    _check_positive_int("iters", iters)
    return X, Y, U / U.norm(dim=1, keepdim=True), b, V


def _output_layer(H: torch.Tensor, Y: torch.Tensor, lam: float, V: torch.Tensor):
    """Exact ``(V, c)`` for features ``H: (N, K)``: the group lasso on centred statistics."""
    N = H.shape[0]
    mean_h, mean_y = H.mean(dim=0), Y.mean(dim=0)
    Hc, Yc = H - mean_h, Y - mean_y
    result = group_lasso(Hc.T @ Hc / N, Hc.T @ Yc / N, lam, tol=GAP_TOL, energy=float((Yc * Yc).sum()) / N,
                         init=V)
    V = result.M
    return V, mean_y - V @ mean_h, result.gap


def _objective(H, Y, V, c, lam) -> float:
    residual = H @ V.T + c - Y
    return float(0.5 * (residual * residual).sum() / H.shape[0] + lam * V.norm(dim=0).sum())


def _hidden_layer(X, Y, U, b, V, c, iters):
    """``iters`` L-BFGS steps on the loss over the directions and biases of the neurons with ``V[:, k] ≠ 0``."""
    active = V.norm(dim=0) > 0
    if not active.any():
        return U, b
    W, B, Va = U[active].clone().requires_grad_(True), b[active].clone().requires_grad_(True), V[:, active]
    optimizer = torch.optim.LBFGS([W, B], lr=1.0, max_iter=iters, history_size=HISTORY,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-14, tolerance_change=1e-16)

    def closure():
        optimizer.zero_grad()
        residual = torch.relu(X @ (W / W.norm(dim=1, keepdim=True)).T + B) @ Va.T + c - Y
        loss = 0.5 * (residual * residual).sum() / X.shape[0]
        loss.backward()
        return loss

    optimizer.step(closure)
    U, b = U.clone(), b.clone()
    with torch.no_grad():
        U[active] = W / W.norm(dim=1, keepdim=True)
        b[active] = B
    return U, b


# --------------------------------------------------------------------------------------
# trials (pure: no files)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetSummary:
    """One trained network scored on its outputs.

    ``weights`` are the nonzero path weights, sorted descending, relative to the largest;
    ``active`` counts those above ``ACTIVE_RTOL``, ``nonzero`` all of them; the MSEs are
    means over points and the network's outputs (test: against the clean targets).
    """

    lam: float
    active: int
    nonzero: int
    weights: tuple[float, ...]
    path_norm: float
    objective: float
    train_mse: float
    test_mse: float
    gap: float
    rounds: int
    converged: bool
    seconds: float


@dataclass(frozen=True)
class TrialRecord:
    """One trial: the joint network, the separate ones at the same λ and fit-matched.

    ``served`` counts the outputs each active joint neuron serves; ``joint_V``: ``(T, a)``
    the joint network's output weights of its ``a`` active neurons (largest path weight
    first); ``separate_V``: per task, the active output weights of its separate network;
    ``matched_reached``: whether each fit-matched network reached the joint training MSE
    of its output (``joint_task_mse``).
    """

    index: int
    seed: tuple[int, ...]
    teacher_path_norm: float
    joint: NetSummary
    separate: tuple[NetSummary, ...]
    matched: tuple[NetSummary, ...]
    matched_reached: tuple[bool, ...]
    joint_task_mse: tuple[float, ...]
    served: tuple[int, ...]
    joint_V: tuple[tuple[float, ...], ...]
    separate_V: tuple[tuple[float, ...], ...]

    @property
    def separate_sum(self) -> int:
        return sum(s.active for s in self.separate)

    @property
    def separate_max(self) -> int:
        return max(s.active for s in self.separate)

    @property
    def matched_sum(self) -> int:
        return sum(s.active for s in self.matched)

    @property
    def shares(self) -> bool:
        """The joint network uses fewer active neurons than the separate ones together."""
        return self.joint.active < self.separate_sum


def _summary_of(result: TrainResult, data: TaskData, outputs) -> NetSummary:
    net, weights = result.net, result.net.path_weights
    active = active_mask(weights)
    nonzero = np.sort(weights[weights > 0])[::-1]
    return NetSummary(
        lam=result.lam, active=int(active.sum()), nonzero=int(nonzero.size),
        weights=tuple(float(w) for w in nonzero / nonzero[0]) if nonzero.size else (),
        path_norm=path_norm(net.W, net.V), objective=result.objective,
        train_mse=_mse(net.predict(data.X), data.Y[:, outputs]),
        test_mse=_mse(net.predict(data.X_test), data.Y_test[:, outputs]),
        gap=result.gap, rounds=result.rounds, converged=result.converged, seconds=result.seconds,
    )


def _mse(prediction: np.ndarray, target: np.ndarray) -> float:
    return float(((prediction - target) ** 2).mean())


def _task_mse(net: ShallowNet, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """``(T,)`` training MSE of each output."""
    return ((net.predict(X) - Y) ** 2).mean(axis=0)


def _fit_matched(data: TaskData, task: int, start: TrainResult, target: float,
                 settings: Settings) -> tuple[TrainResult, bool]:
    """Divide λ by √2 (warm start) until the task's training MSE is ≤ ``target``."""
    X, y = data.X, data.Y[:, [task]]
    result = start
    for _ in range(settings.match_steps):
        if _task_mse(result.net, X, y)[0] <= target:
            break
        net = result.net
        result = train(X, y, result.lam / MATCH_FACTOR, net.W, net.b, settings.rounds, settings.iters, V0=net.V)
    return result, bool(_task_mse(result.net, X, y)[0] <= target)


def _active_columns(net: ShallowNet) -> np.ndarray:
    """``(T, a)``: the output weights of the active neurons, largest path weight first."""
    weights = net.path_weights
    order = np.argsort(-weights, kind="stable")
    return net.V[:, order[active_mask(weights)[order]]]


def sharing_trial(settings: Settings, index: int, log=None) -> TrialRecord:
    """Trial ``index`` of ``settings``: joint, separate and fit-matched networks (module doc)."""
    _check_settings(settings)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise InvalidInputError(f"index must be an integer ≥ 0 (the trial), got {index!r}")
    seed = (settings.seed, index)
    data = teacher_tasks(np.random.default_rng((*seed, 0)), settings.points, settings.test_points, settings.d,
                         settings.outputs, settings.teacher, settings.noise)
    U0, b0 = initial_hidden_layer(np.random.default_rng((*seed, 1)), settings.width, settings.d)
    budget = (settings.rounds, settings.iters)
    joint = train(data.X, data.Y, settings.lam, U0, b0, *budget)
    target = _task_mse(joint.net, data.X, data.Y)
    separate, matched, reached, columns = [], [], [], []
    for task in range(settings.outputs):
        alone = train(data.X, data.Y[:, [task]], settings.lam, U0, b0, *budget)
        fitted, ok = _fit_matched(data, task, alone, float(target[task]), settings)
        separate.append(_summary_of(alone, data, [task]))
        matched.append(_summary_of(fitted, data, [task]))
        reached.append(ok)
        columns.append(tuple(float(v) for v in _active_columns(alone.net)[0]))
        if log:
            log(f"trial {index} task {task}: {separate[-1].active} active at λ, {matched[-1].active} fit-matched "
                f"at λ/{settings.lam / fitted.lam:.3g}")
    active = active_mask(joint.net.path_weights)
    record = TrialRecord(
        index=index, seed=seed, teacher_path_norm=data.teacher_path_norm,
        joint=_summary_of(joint, data, list(range(settings.outputs))),
        separate=tuple(separate), matched=tuple(matched), matched_reached=tuple(reached),
        joint_task_mse=tuple(float(v) for v in target),
        served=tuple(int(s) for s in outputs_served(joint.net.V, active)),
        joint_V=tuple(tuple(float(v) for v in row) for row in _active_columns(joint.net)),
        separate_V=tuple(columns),
    )
    if log:
        log(f"trial {index}: joint {record.joint.active} active, separate sum {record.separate_sum} "
            f"(max {record.separate_max}), fit-matched sum {record.matched_sum}")
    return record


def trial_records(settings: Settings, log=None) -> list[TrialRecord]:
    """Every trial of ``settings``, in order."""
    _check_settings(settings)
    return [sharing_trial(settings, index, log) for index in range(settings.trials)]


def _check_settings(settings: Settings) -> None:
    if not isinstance(settings, Settings):
        raise InvalidInputError(f"settings must be a Settings, got {type(settings).__name__}")
    if isinstance(settings.seed, bool) or not isinstance(settings.seed, int) or settings.seed < 0:
        raise InvalidInputError(f"settings.seed must be an integer ≥ 0 (a numpy seed), got {settings.seed!r}")
    for name in ("trials", "d", "teacher", "points", "test_points", "width", "rounds", "iters"):
        _check_positive_int(f"settings.{name}", getattr(settings, name))
    if isinstance(settings.outputs, bool) or not isinstance(settings.outputs, int) or settings.outputs < 2:
        raise InvalidInputError(
            f"settings.outputs must be an integer ≥ 2 (sharing needs several tasks), got {settings.outputs!r}"
        )
    if isinstance(settings.match_steps, bool) or not isinstance(settings.match_steps, int) \
            or settings.match_steps < 0:
        raise InvalidInputError(f"settings.match_steps must be an integer ≥ 0, got {settings.match_steps!r}")
    _check_lam("settings.lam", settings.lam)
    _check_noise(settings.noise)


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")


def _check_lam(name: str, lam) -> None:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam <= 0:
        raise InvalidInputError(f"{name} (λ) must be a finite number > 0, got {lam!r}")


def _check_noise(noise) -> None:
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise InvalidInputError(f"noise must be a finite number ≥ 0 (relative to the targets' std), got {noise!r}")


def _check_fraction(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise InvalidInputError(f"{name} must be in (0, 1), got {value!r}")


# --------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------


def run(out: Path, quick: bool = False, overwrite: bool = False, progress: bool = False) -> str:
    """Run the neuron-sharing experiment into the folder ``out``; return summary.md.

    Args:
        out: output folder; written atomically (complete or not at all).
        quick: two small trials (d = 5, T = 4, K = 64), about half a minute; the full run
            (five trials, d = 8, T = 6, K = 256) takes about seven minutes on one core.
        overwrite: replace an existing ``out``; without it OutputExistsError is raised
            before any work is done.
        progress: report each network on stderr.
    """
    settings = QUICK if quick else FULL
    _check_settings(settings)
    log = Log("shenouda-sharing", progress)
    started = time.perf_counter()
    with output_folder(out, overwrite) as folder:
        records = trial_records(settings, log)
        seconds = {"trials": time.perf_counter() - started}
        counts, served = _counts_json(settings, records), _served_json(settings, records)
        for stem, data, draw in (("counts", counts, _draw_counts),
                                 ("shared_weights", _weights_json(settings, records[0]), _draw_weights),
                                 ("outputs_served", served, _draw_served)):
            write_json(folder / f"{stem}.json", data)
            draw(data).savefig(folder / f"{stem}.png", dpi=110)
        seconds["total"] = time.perf_counter() - started
        text = _summary(settings, quick, counts, served, seconds)
        (folder / "summary.md").write_text(text, encoding="utf-8")
        write_json(folder / "run.json", {
            "mode": "quick" if quick else "full", "settings": asdict(settings), "seconds": seconds,
            "constants": {"active_rtol": ACTIVE_RTOL, "serve_rtol": SERVE_RTOL, "gap_tol": GAP_TOL,
                          "objective_rtol": OBJECTIVE_RTOL, "init_bias": INIT_BIAS, "lbfgs_history": HISTORY,
                          "match_factor": MATCH_FACTOR},
            "versions": versions(), "torch_threads": THREADS, "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
        })
    log(f"wrote {out} in {seconds['total']:.1f} s")
    return text


# --------------------------------------------------------------------------------------
# JSON, figures, summary
# --------------------------------------------------------------------------------------

#: Thresholds of the sensitivity check (the count at ACTIVE_RTOL is the one reported).
SENSITIVITY_RTOLS = (1e-4, 1e-3, 1e-2)


def _count_above(weights, rtol: float) -> int:
    """Active count from relative sorted path weights (``NetSummary.weights``)."""
    return sum(w > rtol for w in weights)


def _mse_pair(summaries) -> dict:
    """Train/test MSE over all outputs of networks that each cover a part of them."""
    summaries = list(summaries)
    return {"train": float(np.mean([s.train_mse for s in summaries])),
            "test": float(np.mean([s.test_mse for s in summaries]))}


def _counts_json(settings: Settings, records: list[TrialRecord]) -> dict:
    trials = []
    for r in records:
        trials.append({
            "index": r.index, "seed": list(r.seed), "joint": r.joint.active,
            "separate": [s.active for s in r.separate], "separate_sum": r.separate_sum,
            "separate_max": r.separate_max, "matched": [s.active for s in r.matched],
            "matched_sum": r.matched_sum, "matched_max": max(s.active for s in r.matched),
            "matched_lam": [s.lam for s in r.matched], "matched_reached": list(r.matched_reached),
            "shares": r.shares, "matched_shares": r.joint.active < r.matched_sum,
            "path_norm": {"teacher": r.teacher_path_norm, "joint": r.joint.path_norm,
                          "separate_sum": sum(s.path_norm for s in r.separate)},
            "mse": {"joint": {"train": r.joint.train_mse, "test": r.joint.test_mse},
                    "separate": _mse_pair(r.separate), "matched": _mse_pair(r.matched)},
        })
    sensitivity = {}
    for rtol in SENSITIVITY_RTOLS:
        joint = [_count_above(r.joint.weights, rtol) for r in records]
        sums = [sum(_count_above(s.weights, rtol) for s in r.separate) for r in records]
        sensitivity[f"{rtol:g}"] = {"joint": joint, "separate_sum": sums,
                                    "shares": sum(j < s for j, s in zip(joint, sums))}
    first = records[0]
    return {
        "outputs": settings.outputs, "teacher": settings.teacher, "width": settings.width, "lam": settings.lam,
        "active_rtol": ACTIVE_RTOL, "trials": trials,
        "shared_trials": sum(t["shares"] for t in trials),
        "matched_shared_trials": sum(t["matched_shares"] for t in trials),
        "sensitivity": sensitivity,
        "gap": {"smallest_counted": min(_smallest_counted(r) for r in records),
                "largest_uncounted": max(_largest_uncounted(r) for r in records)},
        "weights_trial0": {"joint": list(first.joint.weights), "separate": [list(s.weights) for s in first.separate]},
        "trial_records": [asdict(r) for r in records],
    }


def _nets(record: TrialRecord):
    return (record.joint, *record.separate, *record.matched)


def _smallest_counted(record: TrialRecord) -> float:
    return min(min((w for w in net.weights if w > ACTIVE_RTOL), default=1.0) for net in _nets(record))


def _largest_uncounted(record: TrialRecord) -> float:
    return max(max((w for w in net.weights if w <= ACTIVE_RTOL), default=0.0) for net in _nets(record))


def _weights_json(settings: Settings, record: TrialRecord) -> dict:
    joint = np.abs(np.array(record.joint_V))
    return {"trial": record.index, "outputs": settings.outputs, "serve_rtol": SERVE_RTOL,
            "joint_abs_V": joint.tolist(), "joint_relative_V": (joint / joint.max(axis=0)).tolist(),
            "separate_abs_v": [np.abs(np.array(v)).tolist() for v in record.separate_V],
            "served": list(record.served)}


def _served_json(settings: Settings, records: list[TrialRecord]) -> dict:
    pooled = [s for r in records for s in r.served]
    return {"outputs": settings.outputs, "serve_rtol": SERVE_RTOL, "trials": len(records),
            "histogram": {str(t): pooled.count(t) for t in range(1, settings.outputs + 1)},
            "per_trial": [list(r.served) for r in records], "neurons": len(pooled),
            "shared": sum(s >= 2 for s in pooled)}


def _figure(columns: int, width: float, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, columns, squeeze=False)[0]


def _draw_counts(data: dict):
    """Active neurons per trial (left) and trial 0's sorted path weights (right), from counts.json."""
    figure, (bars, weights) = _figure(2, 11.0)
    trials = data["trials"]
    x = np.arange(len(trials))
    series = (("joint", "joint (1 net, T outputs)", "C0"), ("separate_max", "max over separate", "C2"),
              ("separate_sum", "Σ separate, same λ", "C1"), ("matched_sum", "Σ separate, fit-matched", "C3"))
    width = 0.2
    for offset, (key, label, color) in enumerate(series):
        bars.bar(x + (offset - 1.5) * width, [t[key] for t in trials], width=width, color=color, label=label)
    bars.axhline(data["teacher"], color="k", linestyle=":", label=f"teacher neurons m = {data['teacher']}")
    bars.set_ylim(0, 1.45 * max(t[key] for t in trials for key, _, _ in series))  # room for the legend
    bars.set_xticks(x, [str(t["index"]) for t in trials])
    bars.set_xlabel("trial")
    bars.set_ylabel(f"active neurons (path weight > {data['active_rtol']:g}·max)")
    bars.set_title(f"T = {data['outputs']} outputs, K = {data['width']}, λ = {data['lam']:g}", fontsize=9)
    bars.legend(fontsize=7, ncols=2, loc="upper left")
    first = data["weights_trial0"]
    for index, values in enumerate(first["separate"]):
        weights.semilogy(np.arange(1, len(values) + 1), values, color="C1", alpha=0.6, marker=".",
                         label="separate nets (same λ)" if index == 0 else None)
    weights.semilogy(np.arange(1, len(first["joint"]) + 1), first["joint"], color="C0", marker="o",
                     label="joint net")
    weights.axhline(data["active_rtol"], color="C3", linestyle="--", label=f"threshold {data['active_rtol']:g}")
    smallest = min([data["active_rtol"], *first["joint"], *(w for values in first["separate"] for w in values)])
    weights.set_ylim(smallest / 3, 2.0)
    weights.set_xlabel("neuron rank (nonzero path weights)")
    weights.set_ylabel("path weight ‖v_k‖‖w_k‖ / max")
    weights.set_title("trial 0: sorted path weights", fontsize=9)
    weights.legend(fontsize=7)
    figure.suptitle("Neuron sharing: active neurons of one multi-output net vs separate single-output nets",
                    fontsize=10)
    return figure


def _draw_weights(data: dict):
    """Column-normalised |V| (outputs × active neurons), joint and separate nets, from shared_weights.json.

    Colour: ``|V[t, k]| / max_s |V[s, k]|`` — which outputs a neuron feeds, whatever its size;
    a separate net's neuron feeds its own output only (1 in its row, 0 elsewhere).
    """
    joint = np.array(data["joint_relative_V"])
    T = data["outputs"]
    blocks = [len(v) for v in data["separate_abs_v"]]
    separate = np.zeros((T, sum(blocks)))
    start = 0
    for task, size in enumerate(blocks):
        separate[task, start:start + size] = 1.0
        start += size
    figure, axes = _figure(2, 11.0, 3.2)
    for axis, matrix, title in ((axes[0], joint, f"joint net: its {joint.shape[1]} active neurons"),
                                (axes[1], separate, f"separate nets (same λ): {sum(blocks)} active neurons, by task")):
        image = axis.imshow(matrix, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        axis.set_yticks(range(T), [str(t) for t in range(T)])
        axis.set_ylabel("output t")
        axis.set_xlabel("neuron (largest path weight first)")
        axis.set_title(title, fontsize=9)
    for boundary in np.cumsum(blocks)[:-1]:
        axes[1].axvline(boundary - 0.5, color="w", linewidth=1)
    figure.colorbar(image, ax=list(axes), label="|V[t, k]| / max_s |V[s, k]|")
    figure.suptitle(f"Trial {data['trial']}: output weights — shared columns in the joint net", fontsize=10)
    return figure


def _draw_served(data: dict):
    """Histogram of the outputs served per active joint neuron, from outputs_served.json."""
    from matplotlib.ticker import MaxNLocator

    figure, (axis,) = _figure(1, 5.5)
    counts = [int(k) for k in data["histogram"]]
    axis.bar(counts, list(data["histogram"].values()), width=0.8, color="C0", label="active neurons of joint nets")
    axis.set_xticks(counts)
    axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel(f"outputs served (|V[t, k]| ≥ {data['serve_rtol']:g}·max_s |V[s, k]|)")
    axis.set_ylabel(f"neurons (all {data['trials']} trials)")
    axis.set_title(f"{data['shared']} of {data['neurons']} active neurons serve ≥ 2 of {data['outputs']} outputs\n"
                   "(a separate net's neuron serves 1)", fontsize=9)
    axis.legend(fontsize=7)
    return figure


def _summary(settings: Settings, quick: bool, counts: dict, served: dict, seconds: dict) -> str:
    trials = counts["trials"]
    n = len(trials)
    lines = [
        "# Neuron sharing (seed 002, Shenouda, Parhi, Lee & Nowak)", "",
        f"Mode: {'quick' if quick else 'full'}. {n} trials. Data: x ~ N(0, I_{settings.d}), {settings.outputs} "
        f"outputs y_t = Σ_j A[t, j] relu(⟨u_j, x⟩ − a_j) + noise, a teacher of {settings.teacher} ReLU neurons "
        f"shared by all tasks, noise {settings.noise:g} × std(y_t), {settings.points} training points, "
        f"{settings.test_points} test points scored against the clean targets. Networks: K = {settings.width} "
        f"hidden neurons, weight decay λ = {settings.lam:g} on both layers' weights, trained in the equivalent "
        "path-norm form (unit input weights, group lasso on the output layer solved exactly by "
        "netshrink.linalg.group_lasso, L-BFGS on the hidden layer); every network of a trial starts from "
        f"the same hidden layer with the same budget ({settings.rounds} rounds × {settings.iters} L-BFGS "
        f"steps). Active: path weight ‖v_k‖‖w_k‖ > {ACTIVE_RTOL:g} of the largest. Fit-matched: a separate "
        f"network's λ is divided by √2 (warm start, at most {settings.match_steps} times) until its training "
        "MSE is at most the joint network's on that output.", "",
        "![counts](counts.png)", "",
        "| trial | joint | max separate | Σ separate (same λ) | Σ separate (fit-matched) | joint MSE train / test | "
        "separate MSE train / test | fit-matched MSE train / test |",
        "|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for t in trials:
        mse = t["mse"]
        lines.append(
            f"| {t['index']} | {t['joint']} | {t['separate_max']} | {t['separate_sum']} | {t['matched_sum']} | "
            + " | ".join(f"{mse[k]['train']:.2e} / {mse[k]['test']:.2e}" for k in ("joint", "separate", "matched"))
            + " |")
    means = {key: float(np.mean([t[key] for t in trials]))
             for key in ("joint", "separate_max", "separate_sum", "matched_sum")}
    lines.append(f"| mean | {means['joint']:.1f} | {means['separate_max']:.1f} | {means['separate_sum']:.1f} | "
                 f"{means['matched_sum']:.1f} | | | |")
    shared, matched = counts["shared_trials"], counts["matched_shared_trials"]
    unreached = sum(not ok for t in trials for ok in t["matched_reached"])
    below_max = sum(t["joint"] <= t["separate_max"] for t in trials)
    lines += [
        "", f"**The joint network had fewer active neurons than the separate networks together in {shared} of "
        f"{n} trials at the same λ{' (every trial)' if shared == n else ' — NOT in every trial'}, and in "
        f"{matched} of {n} against the fit-matched separate networks.**", "",
        "At the same λ the separate networks are regularised more (Σ_t |v_t| ≥ ‖v‖₂) and fit worse, so they "
        "err on the side of fewer neurons; the fit-matched ones fit each output at least as well as the joint "
        "network"
        + (f" ({unreached} separate networks did not reach the target within the λ steps)" if unreached else "")
        + f". The joint network needed at most as many neurons as the largest single-output network in "
        f"{below_max} of {n} trials: one set of neurons serves all outputs. Path norms Σ_k ‖v_k‖‖w_k‖ "
        f"(means): teacher {_mean_path_norm(trials, 'teacher'):.3g}, joint {_mean_path_norm(trials, 'joint'):.3g}, "
        f"separate together {_mean_path_norm(trials, 'separate_sum'):.3g}.", "",
        "Threshold sensitivity (joint / Σ separate at the same λ, per trial):", "",
        "| threshold | joint | Σ separate | joint < Σ separate |", "|---:|---|---|---:|",
    ]
    for rtol, row in counts["sensitivity"].items():
        lines.append(f"| {rtol} | {', '.join(map(str, row['joint']))} | {', '.join(map(str, row['separate_sum']))} "
                     f"| {row['shares']}/{n} |")
    gap = counts["gap"]
    failing = [rtol for rtol, row in counts["sensitivity"].items() if row["shares"] < n]
    lines += [
        "", f"The path weights have no clean gap at the threshold: over all networks the smallest counted one is "
        f"{gap['smallest_counted']:.1e} of its network's largest and the largest uncounted nonzero one "
        f"{gap['largest_uncounted']:.1e}. The tail of small neurons belongs to the optimum found (the output "
        "layer is the exact group-lasso solution for the trained hidden layer, so its zeros are exact), and "
        "the counts depend on where it is cut; "
        + ("the comparison does not (joint < Σ separate at every threshold of the table, in every trial). "
           if not failing else f"joint < Σ separate fails at the thresholds {', '.join(failing)}. ")
        + "The sorted weights of every network are in counts.json (trial_records).", "",
        "## Shared output weights", "", "![shared weights](shared_weights.png)", "",
        "![outputs served](outputs_served.png)", "",
        f"Neuron k serves output t when |V[t, k]| ≥ {SERVE_RTOL:g} · max_s |V[s, k]|. Of the {served['neurons']} "
        f"active neurons of the joint networks ({n} trials), {served['shared']} serve two or more of the "
        f"{settings.outputs} outputs (outputs served: neurons — "
        + ", ".join(f"{k}: {v}" for k, v in served["histogram"].items())
        + "); a neuron of a separate network serves one output by construction.",
        "",
        "## Run", "",
        "Wall time: " + ", ".join(f"{step} {value:.1f} s" for step, value in seconds.items())
        + f" ({THREADS} torch thread).", "",
    ]
    return "\n".join(lines)


def _mean_path_norm(trials: list[dict], key: str) -> float:
    return float(np.mean([t["path_norm"][key] for t in trials]))
