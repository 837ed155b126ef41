"""The multi-task lasso of one linear layer (Shenouda et al.): prox-Adam and FISTA (issue 4, item 1).

Solver layer of ``method="multitask_lasso"`` (issue 4, item 1; seed 002, "Compressing Deep
Neural Networks"). For the layer to compress, ``Φ: (K, N)`` holds its inputs on ``N``
samples, ``Ψ: (D, N)`` its original outputs (bias included) and ``b: (D,)`` its bias, kept
frozen. The new weight ``V: (D, K)`` minimises

    F(V) = (1/(D·N))·‖V Φ + b 1ᵀ − Ψ‖²_F + lam·Σ_k ‖V[:, k]‖₂,

the mean-squared error over all ``D·N`` entries plus ``lam`` times the ℓ2,1 norm of the
columns; input ``k`` (a neuron of the producing layer) is removed when
``‖V[:, k]‖ ≤ 1e-7`` (:data:`REMOVED_NORM`).

Two solvers of the same ``F``:

- :func:`prox_adam` — the original scheme, for parity: a fresh ``nn.Linear`` weight, one
  full-batch ``torch.optim.Adam`` step (learning rate ``mu``) on the error term per
  iteration, then the group shrink ``V[:, k] ← V[:, k]·max(0, 1 − mu·lam/‖V[:, k]‖)``;
  every ``check_every`` iterations it stops when the relative changes of the penalty and
  of the error are both below ``rel_tol``. It is *not* a proximal-gradient method of
  ``F`` and its limit is in general not ``argmin F`` (below).
- :func:`multitask_lasso_fista` — the Gram-statistics group-lasso solver
  (:func:`~netshrink.linalg.group_lasso`, duality-gap stopping) after the exact rescaling
  below.

The rescaling
-------------
With ``x = φ`` (a column of ``Φ``), ``y = ψ − b`` and expectations over the ``N`` columns,
``(1/(D·N))·‖V Φ + b 1ᵀ − Ψ‖²_F = (1/D)·E‖y − V x‖²``, so

    F(V) = (2/D)·[½·E‖y − V x‖² + (lam·D/2)·‖V‖₂,₁] = (2/D)·P(V),

``P`` being the group-lasso objective of :func:`~netshrink.linalg.group_lasso` with

    gram = Φ Φᵀ/N  (K, K),   cross = Φ (Ψ − b 1ᵀ)ᵀ/N  (K, D),   energy = ‖Ψ − b 1ᵀ‖²_F/N,
    λ = lam·D/2.

Both have the same minimisers; ``F* = (2/D)·P*`` and a duality gap of ``P`` times ``2/D``
bounds ``F(V) − F*``. From the statistics,
``E‖y − V x‖² = energy − 2·tr(V·cross) + tr(V·gram·Vᵀ)`` (:func:`multitask_objective`).

Where prox-Adam goes
--------------------
Adam divides each coordinate of the error gradient ``g`` by its running RMS (plus
``eps = 1e-8``): with a steady gradient its step is ``mu·u`` with ``u`` entries ``±1``
whatever ``|g|``, while the shrink takes ``mu·lam`` off a column's norm. A limit ``V``
needs ``u_k = lam·V[:, k]/‖V[:, k]‖`` for every active column — not the optimality
condition of ``F`` (``g_k = −lam·V[:, k]/‖V[:, k]‖``), and for ``lam < 1`` only reachable
with ``|g| ≲ eps``: the iterates drift to where the error's gradient vanishes, the
least-squares fit, every column active; for ``lam`` beyond about ``√D`` every column is
shrunk away. Both regimes are set by ``lam`` alone, not by the data's scale, unlike
``argmin F``. Measured (tests/linalg/test_multitask_lasso.py): on small problems ``F``
first falls, then rises towards ``F(V_LS)`` (75% above ``F*`` in the test), and it is
within 1e-3 of ``F*`` only when ``lam`` is so small that ``F(V_LS) ≈ F*``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..errors import InvalidInputError
from .blocks import all_finite, column_sums, inner, rows_product, symmetrize_
from .group_lasso import _checked_lambda, _finite_nonnegative, group_lasso

__all__ = [
    "REMOVED_NORM", "MultitaskStatistics", "MultitaskObjective", "MultitaskLassoResult", "ProxAdamResult",
    "TracePoint", "multitask_statistics", "multitask_objective", "multitask_objective_data",
    "multitask_lasso_fista", "prox_adam", "prox_adam_gram", "linear_init",
]

REMOVED_NORM = 1e-7  # a column of V with norm ≤ this is a removed input (as in the original code)
_CHUNK_ELEMENTS = 1 << 23  # elements of a float64 working chunk (64 MB)
_FORMS = ("data", "gram")
_STOP_REASONS = ("tolerance", "max_iter", "max_seconds")


# --------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class MultitaskStatistics:
    """The statistics of ``F`` (module doc), float64 on the device of ``Φ``.

    Attributes:
        gram: ``(K, K)`` ``Φ Φᵀ/N``.
        cross: ``(K, D)`` ``Φ (Ψ − b 1ᵀ)ᵀ/N``.
        energy: ``‖Ψ − b 1ᵀ‖²_F/N`` (``E‖y‖²``).
        samples: ``N``.
    """

    gram: torch.Tensor
    cross: torch.Tensor
    energy: float
    samples: int


class MultitaskObjective(NamedTuple):
    """``F(V) = error + penalty`` (module doc), float64 values."""

    objective: float
    error: float  # (1/(D·N))·‖V Φ + b 1ᵀ − Ψ‖²_F
    penalty: float  # lam·Σ_k ‖V[:, k]‖₂


class TracePoint(NamedTuple):
    """One sample of a :func:`prox_adam` run, for plotting objective / active inputs vs time."""

    iteration: int
    seconds: float  # wall time since the start of the iterations
    objective: float  # F(V) at this iteration
    active: int  # columns with norm > REMOVED_NORM


@dataclass(frozen=True)
class ProxAdamResult:
    """The outcome of :func:`prox_adam`.

    Attributes:
        V: ``(D, K)`` final weight, in the working dtype on the device of ``Φ``.
        active: ``(k,)`` int64 ascending indices of the columns with norm > :data:`REMOVED_NORM`.
        objective, error, penalty: ``F(V)`` and its two terms (float64 evaluation).
        lam, mu: the settings run.
        iterations: Adam-plus-shrink iterations run.
        seconds: wall time from the start of the iterations (the set-up of ``form``, e.g.
            the statistics of ``"gram"``, included; the optimizer's construction not).
        converged: whether the stopping rule (relative changes < ``rel_tol``) fired.
        stop_reason: ``"tolerance"``, ``"max_iter"`` or ``"max_seconds"``.
        trace: :class:`TracePoint` at iteration 0, every ``check_every`` iterations and at the end.
    """

    V: torch.Tensor
    active: torch.Tensor
    objective: float
    error: float
    penalty: float
    lam: float
    mu: float
    iterations: int
    seconds: float
    converged: bool
    stop_reason: str
    trace: tuple[TracePoint, ...]


@dataclass(frozen=True)
class MultitaskLassoResult:
    """The outcome of :func:`multitask_lasso_fista`.

    Attributes:
        V: ``(D, K)`` float64 solution.
        active: ``(k,)`` int64 ascending indices of the columns with norm > :data:`REMOVED_NORM`.
        objective, error, penalty: ``F(V)`` and its terms.
        gap: duality gap in ``F`` units (``(2/D)·`` the group-lasso gap): ``F(V) − F* ≤ gap``.
        lam: ``lam`` of ``F``; ``group_lasso_lam = lam·D/2`` is the λ solved for.
        iterations: solver iterations (FISTA, Newton steps).
        seconds: wall time of the solve.
        converged: whether the gap reached ``tol·energy/D`` (``tol`` of ``F(0) = energy/D``).
    """

    V: torch.Tensor
    active: torch.Tensor
    objective: float
    error: float
    penalty: float
    gap: float
    lam: float
    group_lasso_lam: float
    iterations: int
    seconds: float
    converged: bool


# --------------------------------------------------------------------------------------
# statistics and objective


def multitask_statistics(phi, psi, bias, *, chunk_size: int | None = None) -> MultitaskStatistics:
    """``gram``, ``cross``, ``energy`` of ``F`` (module doc) from the layer's data.

    ``phi: (K, N)`` inputs, ``psi: (D, N)`` original outputs (bias included), ``bias: (D,)``.
    Accumulated in float64 over blocks of ``chunk_size`` samples (default: about 64 MB of
    float64 ``Φ`` per block), so the only full-size array is the caller's ``Φ``; computed
    on the device of ``phi``. Cost ``K²·N`` multiply-adds.

    Raises:
        InvalidInputError: shapes that don't match, non-finite values, ``N = 0``.
    """
    phi, psi, bias = _checked_data(phi, psi, bias)
    K, N = phi.shape
    D = psi.shape[0]
    step = _chunk(chunk_size, K + D)
    gram = torch.zeros(K, K, dtype=torch.float64, device=phi.device)
    cross = torch.zeros(K, D, dtype=torch.float64, device=phi.device)
    energy = 0.0
    b = bias.to(torch.float64).unsqueeze(1)
    for start in range(0, N, step):
        block = phi[:, start:start + step].to(torch.float64)
        target = psi[:, start:start + step].to(torch.float64) - b
        gram.addmm_(block, block.T)
        cross.addmm_(block, target.T)
        energy += float((target * target).sum())
    gram = symmetrize_(gram).div_(2 * N)  # exactly symmetric
    return MultitaskStatistics(gram=gram, cross=cross.div_(N), energy=energy / N, samples=N)


def multitask_objective(V, lam: float, gram, cross, energy: float) -> MultitaskObjective:
    """``F(V)`` from the statistics: ``error = (energy − 2·tr(V·cross) + tr(V·gram·Vᵀ))/D``.

    ``V: (D, K)``, ``gram: (K, K)``, ``cross: (K, D)``, ``energy = E‖y‖²`` (module doc; as
    returned by :func:`multitask_statistics`). Float64. The error is clamped at 0 (it
    can come out a few ulps of ``energy`` negative by cancellation).
    """
    lam = _checked_lam(lam)
    gram = _as_float64(gram, "gram")
    cross = _as_float64(cross, "cross").to(gram.device)
    _check_statistics_shapes(gram, cross)
    energy = _checked_energy(energy)
    V = _as_float64(V, "V").to(gram.device)
    D, K = cross.shape[1], cross.shape[0]
    if V.shape != (D, K):
        raise InvalidInputError(f"V must have shape (D, K) = {(D, K)}, got {tuple(V.shape)}")
    return _objective_from_statistics(V, lam, gram, cross, energy)


def multitask_objective_data(V, lam: float, phi, psi, bias, *, chunk_size: int | None = None) -> MultitaskObjective:
    """``F(V)`` from the raw data ``phi: (K, N)``, ``psi: (D, N)``, ``bias: (D,)``, ``V: (D, K)``.

    The definition (module doc) evaluated directly, in float64, ``chunk_size`` samples at
    a time (default as in :func:`multitask_statistics`). For checking the statistics route.
    """
    lam = _checked_lam(lam)
    phi, psi, bias = _checked_data(phi, psi, bias)
    K, N = phi.shape
    D = psi.shape[0]
    V = _as_float64(V, "V").to(phi.device)
    if V.shape != (D, K):
        raise InvalidInputError(f"V must have shape (D, K) = {(D, K)}, got {tuple(V.shape)}")
    step = _chunk(chunk_size, K + D)
    b = bias.to(torch.float64).unsqueeze(1)
    total = 0.0
    for start in range(0, N, step):
        residual = V @ phi[:, start:start + step].to(torch.float64) + b - psi[:, start:start + step].to(torch.float64)
        total += float((residual * residual).sum())
    error = total / (D * N)
    penalty = lam * float(torch.linalg.vector_norm(V, dim=0).sum())
    return MultitaskObjective(error + penalty, error, penalty)


# --------------------------------------------------------------------------------------
# FISTA route


def multitask_lasso_fista(
    gram, cross, lam: float, *, energy: float, tol: float = 1e-9, init=None, max_iter: int = 20000,
    solver: str = "fista",
) -> MultitaskLassoResult:
    """Minimise ``F`` (module doc) from its statistics with the group-lasso solver.

    Solves :func:`~netshrink.linalg.group_lasso` with ``gram: (K, K)``, ``cross: (K, D)``,
    ``energy`` and ``λ = lam·D/2`` (the exact rescaling of the module doc) and reports the
    solution in ``F`` terms. Build the statistics with :func:`multitask_statistics`.

    Args:
        lam: ``lam`` of ``F`` (≥ 0).
        energy: ``E‖y‖² = ‖Ψ − b 1ᵀ‖²_F/N`` — needed for the value of ``F`` and for the gap.
        tol: stop when ``F(V) − F* ≤ gap ≤ tol·F(0)`` with ``F(0) = energy/D`` (it is the
            ``tol`` of :func:`~netshrink.linalg.group_lasso`, relative to ``P(0)``).
        init: warm start ``(D, K)``, e.g. the layer's original weight.
        max_iter: cap on solver iterations (``converged`` tells whether the gap was met).
        solver: ``"fista"`` (FISTA with working sets and Newton phases) or ``"altmin"``.

    Raises:
        InvalidInputError: ``lam < 0`` or not finite, shape mismatches, non-finite
            statistics, a bad ``energy``/``tol``/``init``.
    """
    lam = _checked_lam(lam)
    cross_t = torch.as_tensor(cross)
    if cross_t.ndim != 2 or cross_t.shape[1] < 1:
        raise InvalidInputError(f"cross must be a (K, D) matrix with D ≥ 1 outputs, got shape {tuple(cross_t.shape)}")
    energy = _checked_energy(energy)
    D = cross_t.shape[1]
    scaled = lam * D / 2
    started = time.perf_counter()
    result = group_lasso(gram, cross, scaled, solver=solver, tol=tol, energy=energy, init=init, max_iter=max_iter)
    seconds = time.perf_counter() - started
    V = result.M
    gram64 = _as_float64(gram, "gram").to(V.device)
    value = _objective_from_statistics(V, lam, gram64, _as_float64(cross, "cross").to(V.device), energy)
    return MultitaskLassoResult(
        V=V, active=_active(V), objective=value.objective, error=value.error, penalty=value.penalty,
        gap=2 * result.gap / D, lam=lam, group_lasso_lam=scaled, iterations=result.iterations, seconds=seconds,
        converged=result.converged,
    )


# --------------------------------------------------------------------------------------
# prox-Adam (the original scheme)


def linear_init(out_features: int, in_features: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """``(out_features, in_features)`` weight as a fresh ``nn.Linear(in_features, out_features)`` has it.

    ``nn.Linear`` draws its weight with ``kaiming_uniform_(a=√5)``, i.e. uniform on
    ``[−1/√in, 1/√in]``; here the same call draws from a CPU ``torch.Generator`` seeded
    with ``seed``, so the result equals ``torch.manual_seed(seed); nn.Linear(in, out,
    dtype=dtype).weight`` and does not touch the global random state. On the CPU.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidInputError(f"seed must be an integer, got {seed!r}")
    generator = torch.Generator().manual_seed(int(seed))
    weight = torch.empty(out_features, in_features, dtype=dtype)
    torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    return weight


def prox_adam(
    phi, psi, bias, lam: float, mu: float, *, init=None, seed: int = 0, check_every: int = 1000,
    rel_tol: float = 1e-7, max_seconds: float | None = None, max_iter: int | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None, form: str = "data",
) -> ProxAdamResult:
    """Minimise ``F`` (module doc) by the original proximal-Adam scheme (issue 4 item 1, seed 002).

    ``phi: (K, N)`` layer inputs, ``psi: (D, N)`` original outputs (bias included),
    ``bias: (D,)`` frozen bias. Works in float64 if ``phi`` is float64, else in float32
    (``psi``, ``bias`` and ``init`` are converted), on the device of ``phi``.

    Iteration (exactly the original's):

    1. ``V`` starts as a fresh ``nn.Linear(K, D)`` weight (:func:`linear_init` with
       ``seed``) unless ``init: (D, K)`` is given;
    2. one full-batch ``torch.optim.Adam`` step (``lr = mu``, defaults ``betas = (0.9,
       0.999)``, ``eps = 1e-8``) on the error term ``(1/(D·N))·‖V Φ + b 1ᵀ − Ψ‖²_F``, whose
       gradient ``(2/(D·N))·(V Φ + b 1ᵀ − Ψ) Φᵀ`` is formed directly (no autograd graph);
    3. ``V[:, k] ← V[:, k]·max(0, 1 − mu·lam/‖V[:, k]‖)`` for every column;
    4. every ``check_every`` iterations the error and the penalty ``lam·Σ_k‖V[:, k]‖`` of
       the current ``V`` are evaluated; the run stops when the relative changes of both
       since the previous check (iteration 0 for the first) are below ``rel_tol``.

    It also stops after ``max_iter`` iterations (0 returns the start) or once
    ``max_seconds`` of wall time have passed (checked after every iteration; on CUDA the
    kernel queue is drained at the checks only, so the cap is approximate there). With
    neither, it runs until the rule fires — the original had no cap.

    Args:
        callback: ``callback(iteration, V)`` after every iteration with the live ``V``
            (read it, don't modify it).
        form: ``"data"`` (default; the original's cost, two ``D×K×N`` products per
            iteration, memory ``Φ`` plus two ``D×N`` arrays) or ``"gram"``: the same
            iteration from float64 statistics (:func:`multitask_statistics`, then
            :func:`prox_adam_gram`; the statistics' time is part of ``seconds``) — the
            same iterates up to round-off, for a charitable timing when ``K < N``.

    Raises:
        InvalidInputError: ``lam < 0``, ``mu ≤ 0``, non-finite values, shape mismatches,
            a bad ``check_every``/``rel_tol``/``max_seconds``/``max_iter``/``form``.
    """
    settings = _ProxSettings.checked(lam, mu, check_every, rel_tol, max_seconds, max_iter, callback)
    if form not in _FORMS:
        raise InvalidInputError(f"unknown form {form!r}; use one of {', '.join(_FORMS)}")
    phi, psi, bias = _checked_data(phi, psi, bias)
    dtype = phi.dtype if phi.dtype == torch.float64 else torch.float32
    K, N = phi.shape
    D = psi.shape[0]
    V, optimizer = _variable(_start(init, seed, D, K, dtype, phi.device), settings.mu)
    started = time.perf_counter()
    if form == "gram":
        statistics = multitask_statistics(phi, psi, bias)
        fill_gradient, error_of = _gram_form(statistics.gram, statistics.cross, statistics.energy, dtype)
        return _iterate(V, optimizer, fill_gradient, error_of, settings, started)
    phi = phi.to(dtype)  # no copy when already in the working dtype
    target = psi.to(dtype) - bias.to(dtype).unsqueeze(1)  # Ψ − b 1ᵀ, (D, N)
    residual = torch.empty(D, N, dtype=dtype, device=phi.device)
    scale = 2.0 / (D * N)

    def fill_gradient(V, out):
        torch.addmm(target, V, phi, beta=-1, out=residual)  # V Φ − (Ψ − b 1ᵀ)
        torch.mm(residual, phi.T, out=out)
        out.mul_(scale)

    def error_of(V):
        torch.addmm(target, V, phi, beta=-1, out=residual)
        return _sum_squares(residual) / (D * N)

    return _iterate(V, optimizer, fill_gradient, error_of, settings, started)


def prox_adam_gram(
    gram, cross, energy: float, lam: float, mu: float, *, init=None, seed: int = 0, dtype=torch.float32,
    check_every: int = 1000, rel_tol: float = 1e-7, max_seconds: float | None = None,
    max_iter: int | None = None, callback: Callable[[int, torch.Tensor], None] | None = None,
) -> ProxAdamResult:
    """:func:`prox_adam` from the statistics of ``F`` instead of the data.

    ``gram: (K, K)``, ``cross: (K, D)``, ``energy`` as :func:`multitask_statistics`
    returns them (e.g. accumulated during a calibration pass). The error gradient is
    ``(2/D)·(V·gram − crossᵀ)`` (``D×K²`` per iteration), computed in ``dtype``
    (float32 as the original, or float64); the stopping rule's error is evaluated in
    float64. Same iteration, options, result and errors as :func:`prox_adam`; on the
    device of ``gram``.
    """
    settings = _ProxSettings.checked(lam, mu, check_every, rel_tol, max_seconds, max_iter, callback)
    if dtype not in (torch.float32, torch.float64):
        raise InvalidInputError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    gram = _as_float64(gram, "gram")
    cross = _as_float64(cross, "cross").to(gram.device)
    _check_statistics_shapes(gram, cross)
    energy = _checked_energy(energy)
    K, D = cross.shape
    V, optimizer = _variable(_start(init, seed, D, K, dtype, gram.device), settings.mu)
    started = time.perf_counter()
    fill_gradient, error_of = _gram_form(gram, cross, energy, dtype)
    return _iterate(V, optimizer, fill_gradient, error_of, settings, started)


@dataclass(frozen=True)
class _ProxSettings:
    lam: float
    mu: float
    check_every: int
    rel_tol: float
    max_seconds: float | None
    max_iter: int | None
    callback: Callable[[int, torch.Tensor], None] | None

    @classmethod
    def checked(cls, lam, mu, check_every=1000, rel_tol=1e-7, max_seconds=None, max_iter=None,
                callback=None) -> _ProxSettings:
        """The validated settings of :func:`prox_adam` (InvalidInputError naming the bad one)."""
        lam = _checked_lam(lam)
        if isinstance(mu, bool) or not isinstance(mu, (int, float, np.floating, np.integer)) \
                or not math.isfinite(mu) or mu <= 0:
            raise InvalidInputError(f"mu (the Adam learning rate) must be a finite number > 0, got {mu!r}")
        if isinstance(check_every, bool) or not isinstance(check_every, (int, np.integer)) or check_every < 1:
            raise InvalidInputError(f"check_every must be a positive integer, got {check_every!r}")
        if isinstance(rel_tol, bool) or not isinstance(rel_tol, (int, float, np.floating)) \
                or not math.isfinite(rel_tol) or rel_tol < 0:
            raise InvalidInputError(f"rel_tol must be a finite number ≥ 0, got {rel_tol!r}")
        if max_seconds is not None and (isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float))
                                        or math.isnan(max_seconds) or max_seconds <= 0):
            raise InvalidInputError(f"max_seconds must be a number > 0 or None, got {max_seconds!r}")
        if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer))
                                     or max_iter < 0):
            raise InvalidInputError(f"max_iter must be an integer ≥ 0 or None, got {max_iter!r}")
        if callback is not None and not callable(callback):
            raise InvalidInputError(f"callback must be callable, got {callback!r}")
        return cls(lam, float(mu), int(check_every), float(rel_tol), max_seconds,
                   None if max_iter is None else int(max_iter), callback)


def _start(init, seed: int, D: int, K: int, dtype, device) -> torch.Tensor:
    """The starting ``V: (D, K)``: a fresh ``nn.Linear`` weight, or the validated ``init``."""
    if init is None:
        return linear_init(D, K, seed, dtype).to(device)
    start = torch.as_tensor(init)
    if start.is_complex() or not (start.is_floating_point() or start.dtype in (torch.int32, torch.int64)):
        raise InvalidInputError(f"init must be a real (D, K) matrix, got dtype {start.dtype}")
    if start.shape != (D, K):
        raise InvalidInputError(f"init must have shape (D, K) = {(D, K)}, got {tuple(start.shape)}")
    start = start.to(device=device, dtype=dtype)
    if not bool(torch.isfinite(start).all()):
        raise InvalidInputError("init contains NaN or Inf")
    return start


def _variable(start: torch.Tensor, mu: float) -> tuple[torch.nn.Parameter, torch.optim.Adam]:
    """``V`` and its optimizer, built before the clock starts (the first Adam of a
    process spends seconds importing)."""
    V = torch.nn.Parameter(start.clone())
    return V, torch.optim.Adam([V], lr=mu)  # betas (0.9, 0.999), eps 1e-8: the defaults


def _gram_form(gram64, cross64, energy: float, dtype):
    """``fill_gradient(V, out)`` and ``error_of(V)`` of ``F``'s error term from statistics."""
    gram, cross_t = gram64.to(dtype), cross64.T.contiguous().to(dtype)
    scale = 2.0 / cross64.shape[1]

    def fill_gradient(V, out):
        torch.addmm(cross_t, V, gram, beta=-1, out=out)  # V·gram − crossᵀ
        out.mul_(scale)

    def error_of(V):
        return _objective_from_statistics(V.to(torch.float64), 0.0, gram64, cross64, energy).error

    return fill_gradient, error_of


def _iterate(V, optimizer, fill_gradient, error_of, settings: _ProxSettings, started: float) -> ProxAdamResult:
    """The Adam-step-then-shrink loop of :func:`prox_adam` with its stopping rule and caps."""
    lam, threshold = settings.lam, settings.mu * settings.lam
    gradient = torch.zeros_like(V)

    def measure():
        with torch.no_grad():
            error = error_of(V)
            norms = torch.linalg.vector_norm(V.detach(), dim=0)
            penalty = lam * float(norms.to(torch.float64).sum())
            return error, penalty, int((norms > REMOVED_NORM).sum())

    error, penalty, active = measure()
    trace = [TracePoint(0, time.perf_counter() - started, error + penalty, active)]
    iteration, reason = 0, None
    last_check = (error, penalty)
    while True:
        if settings.max_iter is not None and iteration >= settings.max_iter:
            reason = "max_iter"
            break
        if settings.max_seconds is not None and time.perf_counter() - started >= settings.max_seconds:
            reason = "max_seconds"
            break
        with torch.no_grad():
            fill_gradient(V, gradient)
            V.grad = gradient
            optimizer.step()
            norms = torch.linalg.vector_norm(V, dim=0)
            V.mul_(torch.where(norms > threshold, 1 - threshold / norms, torch.zeros_like(norms)))
        iteration += 1
        if settings.callback is not None:
            settings.callback(iteration, V.detach())
        if iteration % settings.check_every == 0:
            error, penalty, active = measure()
            trace.append(TracePoint(iteration, time.perf_counter() - started, error + penalty, active))
            if _relative_change(error, last_check[0]) < settings.rel_tol \
                    and _relative_change(penalty, last_check[1]) < settings.rel_tol:
                reason = "tolerance"
                break
            last_check = (error, penalty)
    seconds = time.perf_counter() - started
    if trace[-1].iteration != iteration:
        error, penalty, active = measure()
        trace.append(TracePoint(iteration, seconds, error + penalty, active))
    final = V.detach().clone()
    return ProxAdamResult(
        V=final, active=_active(final), objective=error + penalty, error=error, penalty=penalty, lam=lam,
        mu=settings.mu, iterations=iteration, seconds=seconds, converged=reason == "tolerance",
        stop_reason=reason, trace=tuple(trace),
    )


# --------------------------------------------------------------------------------------
# helpers


def _objective_from_statistics(V, lam, gram, cross, energy) -> MultitaskObjective:
    D = cross.shape[1]
    live = torch.nonzero(column_sums(V, square=False) > 0).flatten()  # zero columns add nothing
    VG = rows_product(V[:, live], gram, live)  # (D, K), gram read a block of rows at a time
    quadratic = inner(VG, V)
    linear = inner(V, cross.T)
    error = max(energy - 2 * linear + quadratic, 0.0) / D
    penalty = lam * float(torch.linalg.vector_norm(V, dim=0).sum())
    return MultitaskObjective(error + penalty, error, penalty)


def _active(V: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(torch.linalg.vector_norm(V, dim=0) > REMOVED_NORM).flatten().cpu()


def _relative_change(new: float, old: float) -> float:
    if new == old:
        return 0.0
    return abs(new - old) / max(abs(old), 1e-300)


def _sum_squares(values: torch.Tensor) -> float:
    """``‖values‖²_F`` accumulated in float64 (float32 inputs: by chunks, no full copy)."""
    flat = values.reshape(-1)
    if flat.dtype == torch.float64:
        return float(torch.dot(flat, flat))
    total = 0.0
    for block in flat.split(_CHUNK_ELEMENTS):
        block = block.to(torch.float64)
        total += float(torch.dot(block, block))
    return total


def _chunk(chunk_size, rows: int) -> int:
    if chunk_size is None:
        return max(1, _CHUNK_ELEMENTS // max(rows, 1))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise InvalidInputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return int(chunk_size)


def _check_statistics_shapes(gram: torch.Tensor, cross: torch.Tensor) -> None:
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise InvalidInputError(f"gram must be a square (K, K) matrix, got shape {tuple(gram.shape)}")
    if cross.ndim != 2 or cross.shape[0] != gram.shape[0] or cross.shape[1] < 1:
        raise InvalidInputError(
            f"cross must be (K, D) with K = {gram.shape[0]} rows like gram and D ≥ 1, got shape {tuple(cross.shape)}"
        )


def _checked_lam(lam) -> float:
    return _checked_lambda(lam, "lam (the ℓ2,1 weight of F)")


def _checked_energy(energy) -> float:
    return _finite_nonnegative(energy, "energy (‖Ψ − b 1ᵀ‖²_F/N)")


def _real_tensor(value, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    if tensor.is_complex() or tensor.dtype == torch.bool or not (
            tensor.is_floating_point() or tensor.dtype in (torch.int8, torch.int16, torch.int32, torch.int64,
                                                           torch.uint8)):
        raise InvalidInputError(f"{name} must be a real tensor, got dtype {tensor.dtype}")
    return tensor


def _check_finite(tensor: torch.Tensor, name: str) -> None:
    """NaN/Inf check by blocks of rows (no full-size boolean copy of a large ``Φ``)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    rows = max(1, _CHUNK_ELEMENTS // max(tensor.shape[-1], 1)) if tensor.ndim == 2 else tensor.shape[0]
    for block in tensor.split(rows):
        if not bool(torch.isfinite(block).all()):
            raise InvalidInputError(f"{name} contains NaN or Inf")


def _checked_data(phi, psi, bias):
    """Validated ``phi: (K, N)``, ``psi: (D, N)``, ``bias: (D,)`` on the device of ``phi``."""
    phi = _real_tensor(phi, "phi")
    if not phi.is_floating_point():
        phi = phi.to(torch.float32)
    psi = _real_tensor(psi, "psi").to(phi.device)
    bias = _real_tensor(bias, "bias").to(phi.device)
    if phi.ndim != 2 or phi.shape[0] < 1 or phi.shape[1] < 1:
        raise InvalidInputError(f"phi must be a (K, N) matrix of the layer's inputs with K, N ≥ 1, "
                                f"got shape {tuple(phi.shape)}")
    K, N = phi.shape
    if psi.ndim != 2 or psi.shape[1] != N or psi.shape[0] < 1:
        raise InvalidInputError(f"psi must be a (D, N) matrix of the layer's outputs with N = {N} columns like phi "
                                f"and D ≥ 1, got shape {tuple(psi.shape)}")
    D = psi.shape[0]
    if bias.shape != (D,):
        raise InvalidInputError(f"bias must have shape (D,) = ({D},) (one per row of psi), got {tuple(bias.shape)}")
    for tensor, name in ((phi, "phi"), (psi, "psi"), (bias, "bias")):
        _check_finite(tensor, name)
    return phi, psi, bias


def _as_float64(value, name: str) -> torch.Tensor:
    tensor = _real_tensor(value, name).to(torch.float64)
    if not all_finite(tensor):
        raise InvalidInputError(f"{name} contains NaN or Inf")
    return tensor
