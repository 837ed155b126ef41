"""Householder QR with greedy column pivoting that can stop early.

Implements Damle, Project 1, eq. (6)–(7) and Goal 1: the Businger–Golub column-pivoted
QR factorization ``A Π = Q R`` computed one Householder reflector at a time, where step
``i`` swaps into position ``i`` the column of the not-yet-reduced block ``M`` of eq. (7)
with the largest norm. The factorization stops after ``k`` steps, or before the first
step whose pivot column norm is ``≤ tol·|r₁₁|``, so selecting ``k`` columns costs
``O(mnk)`` (Question 6: the first ``k`` pivots do not depend on later steps).

Numerics follow LAPACK's ``xGEQP3`` family (see ``docs/cpqr.md``):

* the column norms of ``M`` are downdated after every step (``‖M(:,j)‖² − r_ij²``) and
  recomputed from the trailing block when cancellation makes the downdated value
  unreliable (Drmač & Bujanović, LAPACK Working Note 176);
* updates of the trailing block are delayed for a block of up to ``_BLOCK`` steps and
  applied as one matrix–matrix product; the pivot row and column are brought up to date
  on the fly from the accumulated ``F`` factor (the scheme of LAPACK ``xLAQPS``);
* ties in the pivot choice go to the first column of maximal norm (as ``idamax``);
  squared norms within ``_TIE`` units of roundoff of the largest count as tied;
* reflectors are chosen as in LAPACK ``xLARFG`` (no cancellation, tiny columns rescaled
  before their norm is taken), and the matrix is scaled by a power of two when its
  column norms could overflow or underflow.

The code is written with plain torch tensor operations, so it runs on whatever device the
input lives on.
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

from netshrink.errors import InvalidInputError
from netshrink.linalg.spectral import spectral_norm

__all__ = ["CPQR", "cpqr"]

# Number of steps whose trailing update is delayed and applied as one level-3 product.
_BLOCK = 32

# Columns whose squared (downdated) norms are within _TIE·eps (relative) of the largest
# are treated as tied and the first of them is taken. Exact duplicate columns then behave
# as LAPACK's idamax treats bitwise-equal norms, although the blocked updates here can
# make their norms differ in the last bits.
_TIE = 1024

Array = Any  # torch.Tensor or numpy.ndarray


@dataclass(frozen=True, eq=False)
class CPQR:
    """A (possibly truncated) column-pivoted QR factorization ``A Π = Q R``.

    After ``rank`` steps (Damle, Project 1, eq. (7))::

        Qᵀ A[:, perm] = [ R11  R12 ]      rows 0 … rank−1   (this is ``R``)
                        [  0    M  ]      rows rank … m−1   (``M`` is ``trailing``)

    Attributes:
        perm: ``(n,)`` int64 permutation. ``perm[:rank]`` are the selected columns in
            pivot order; ``perm[rank:]`` the remaining ones in the order of the columns
            of ``trailing`` and of ``R[:, rank:]``.
        R: ``(rank, n)`` the rows ``[R11 R12]`` in permuted column order; ``R11`` is
            upper triangular with a non-negative, non-increasing diagonal
            ``r_jj = ‖pivot column‖`` (the reflectors follow LAPACK, whose diagonal may be
            negative; the signs of rows of R and columns of Q are then flipped).
        rank: number of steps taken (``≤ min(m, n)``).
        trailing: ``(m − rank, n − rank)`` block ``M`` not reduced yet, columns in
            ``perm[rank:]`` order. Continuing the factorization without pivoting would
            give ``R22`` with ``‖R22‖₂ = ‖M‖₂`` (Question 5). It is a view into the
            factorization's working storage; treat it as read-only.

    ``Q`` (a cached property) is ``(m, rank)`` with orthonormal columns, formed from the
    stored Householder reflectors the first time it is read. Arrays are torch tensors
    on the input's device and dtype when the input was a tensor, numpy arrays when it
    was a numpy array.
    """

    perm: Array
    R: Array
    rank: int
    trailing: Array
    _reflectors: torch.Tensor = field(repr=False)  # (rank, m): row i holds v_i[i+1:] after column i
    _tau: torch.Tensor = field(repr=False)  # (rank,)
    _signs: torch.Tensor = field(repr=False)  # (rank,) ±1 applied to the rows of R
    _as_numpy: bool = field(repr=False, default=False)

    @cached_property
    def Q(self) -> Array:  # noqa: N802 - the factor is called Q everywhere
        """``(m, rank)`` orthonormal factor ``H₁ ⋯ H_rank [I; 0] D``, built on first access
        (``D = diag(±1)`` makes ``diag(R) ≥ 0``)."""
        q = _form_q(self._reflectors, self._tau) * self._signs
        return q.numpy() if self._as_numpy else q

    def r22_norm(self) -> float:
        """Spectral norm ``‖M‖₂ = ‖R22‖₂`` of ``trailing`` (0.0 when it is empty)."""
        trailing = torch.from_numpy(self.trailing) if self._as_numpy else self.trailing
        return spectral_norm(trailing)


def cpqr(A: Array, k: int | None = None, tol: float | None = None) -> CPQR:
    """Column-pivoted Householder QR of ``A: (m, n)``, stopped after ``k`` steps or at ``tol``.

    Damle, Project 1, eq. (6)–(7), Goal 1 (greedy Businger–Golub pivoting). At step
    ``i`` the column of the unreduced block with the largest norm is swapped to position
    ``i`` and reduced by a Householder reflector.

    Args:
        A: ``(m, n)`` float32/float64 torch tensor (any device) or numpy array
            (integer and bool numpy arrays are converted to float64). Not modified.
        k: stop after ``k`` steps, ``0 ≤ k ≤ min(m, n)``.
        tol: relative tolerance in ``[0, 1]``: stop before the first step whose pivot
            column norm (that is, the ``|r_ii|`` the step would produce) is
            ``≤ tol·|r₁₁|``, where ``|r₁₁|`` is the largest column norm of ``A``.
            With both ``k`` and ``tol`` the factorization stops at whichever comes
            first; with neither it runs ``min(m, n)`` steps.

    Returns:
        :class:`CPQR` with ``perm``, ``R``, ``rank``, ``trailing`` and ``Q``.

    Cost ``O(mn·rank)`` flops; ``Q`` is not formed unless read.

    Raises:
        InvalidInputError: ``A`` is not a 2-D non-empty finite floating array, or ``k`` /
            ``tol`` is out of range.
    """
    work, as_numpy, top = _working_copy(A, "A")  # (n, m): row j holds column j of A
    n, m = work.shape
    steps = _check_k(k, min(m, n))
    tol = _check_tol(tol)

    scale = _safe_scale(work, top)
    if scale != 0:
        _scale_by_power_of_two(work, -scale)

    rank, perm, tau = _factorize(work, steps, tol)

    R = torch.triu(work[:, :rank].T)  # (rank, n)
    # make diag(R) ≥ 0: A Π = (Q D)(D R) with D = diag(±1)
    signs = torch.where(R.diagonal() < 0, -1.0, 1.0).to(R.dtype)
    R.mul_(signs[:, None])
    trailing = work[rank:, rank:].T  # (m - rank, n - rank), a view
    if scale != 0:
        _scale_by_power_of_two(R, scale)
        _scale_by_power_of_two(work[rank:, rank:], scale)
        if scale > 0 and not (bool(torch.isfinite(R).all()) and bool(torch.isfinite(work[rank:, rank:]).all())):
            raise InvalidInputError(
                f"the column norms of A (largest entry {top:.3g}) overflow {work.dtype}: R is not "
                "representable; rescale A or pass it in float64"
            )
    reflectors = work[:rank]
    perm_t = torch.tensor(perm, dtype=torch.int64, device=work.device)
    if as_numpy:
        return CPQR(perm_t.numpy(), R.numpy(), rank, trailing.numpy(), reflectors, tau, signs, True)
    return CPQR(perm_t, R, rank, trailing, reflectors, tau, signs, False)


# --------------------------------------------------------------------------------------
# The factorization proper


def _factorize(work: torch.Tensor, steps: int, tol: float | None) -> tuple[int, list[int], torch.Tensor]:
    """Run up to ``steps`` pivoted Householder steps on ``work`` (= Aᵀ, ``(n, m)``) in place.

    On return, for the ``rank`` steps taken: ``work[c, i]`` (``c ≥ i``) holds ``R[i, c]``,
    ``work[i, i+1:]`` holds the tail of the ``i``-th Householder vector (its first entry is
    an implicit 1), and ``work[rank:, rank:]`` holds ``Mᵀ``. Returns ``rank``, the
    permutation as a list and the reflector coefficients ``tau: (rank,)``.

    Blocked as in LAPACK ``xLAQPS``: within a block of up to ``_BLOCK`` steps the trailing
    block is not touched; ``F`` (stored transposed, ``(nb, n)``) accumulates ``Mᵀ V T`` of
    the block reflector ``I − V T Vᵀ``, the pivot column and the pivot row are brought up to
    date from it one at a time, and ``M ← M − V Fᵀ`` is applied once at the end of the
    block. A block also ends as soon as a column norm has to be recomputed, because
    recomputing needs an up-to-date trailing block.

    The diagonal of R may come out negative here (LAPACK's sign choice); :func:`cpqr`
    makes it non-negative by flipping the signs of rows of R and columns of Q.

    Norms are tracked squared: ``sq[j]`` is downdated by ``r_ij²`` after step ``i`` and
    recomputed from the trailing column when it falls below ``√eps`` times its value at the
    last exact computation (LAPACK's test ``(vn1/vn2)² ≤ √eps`` of xLAQP2/xLAQPS).
    """
    n, m = work.shape
    dtype, device = work.dtype, work.device
    eps = torch.finfo(dtype).eps
    tol3z = math.sqrt(eps)
    tie = 1.0 - _TIE * eps  # squared norms this close to the largest count as tied
    small = math.sqrt(torch.finfo(dtype).tiny) / eps  # below this a norm may have lost digits
    nb = min(_BLOCK, max(steps, 1))

    # aux rows: 0..nb-1 = Fᵀ, nb = downdated squared column norms, nb+1 = recompute
    # thresholds; kept in one buffer so that a pivot swap is a single column exchange.
    aux = torch.zeros((nb + 2, n), dtype=dtype, device=device)
    F, sq, threshold = aux[:nb], aux[nb], aux[nb + 1]
    torch.linalg.vector_norm(work, dim=1, out=sq).square_()
    torch.mul(sq, tol3z, out=threshold)
    perm = list(range(n))
    taus: list[float] = []
    mus: list[float] = []  # diagonal of R; written back once per block
    row_buffer = torch.empty(m, dtype=dtype, device=device)
    column_buffer = torch.empty(nb + 2, dtype=dtype, device=device)

    reference: float | None = None  # |r11|
    i = 0
    while i < steps:
        start = i  # first step of this block
        block = min(nb, steps - start)
        done = 0  # steps completed in this block
        while done < block:
            i = start + done
            # 1. pivot: first column of maximal (downdated) norm, as LAPACK's idamax
            candidates = sq[i:]
            near_top = candidates >= candidates.max() * tie
            p = i + int(torch.argmax(near_top.view(torch.uint8)))
            if p != i:
                _swap(work[i], work[p], row_buffer)
                _swap(aux[:, i], aux[:, p], column_buffer)
                perm[i], perm[p] = perm[p], perm[i]
            # 2. bring the pivot column up to date with this block's reflectors
            x = work[i, i:]  # rows i: of column i of A
            if done:
                x.addmv_(work[start:i, i:].T, F[:done, i], alpha=-1.0)
            # 3. reflector H = I − t v vᵀ with H x = beta e₁, |beta| = mu = ‖x‖
            alpha = x[0].item()
            tail = torch.linalg.vector_norm(x[1:]).item() if i + 1 < m else 0.0
            mu = math.hypot(alpha, tail)
            shift = 0
            if mu < small:
                # tiny column: squares may underflow and mu may be subnormal; work with
                # x·2^shift, max |x·2^shift| in [1/2, 1) (as LAPACK xLARFG rescales)
                top = float(torch.linalg.vector_norm(x, ord=math.inf))
                if top > 0.0:
                    shift = -math.frexp(top)[1]
                    scaled = x.clone()
                    _scale_by_power_of_two(scaled, shift)
                    alpha = scaled[0].item()
                    tail = torch.linalg.vector_norm(scaled[1:]).item() if i + 1 < m else 0.0
                    mu = math.hypot(alpha, tail)
            if reference is None:
                reference = math.ldexp(mu, -shift)
            if tol is not None and math.ldexp(mu, -shift) <= tol * reference:
                # stop before this step: column i is up to date, update columns i+1:
                if done and i + 1 < n:
                    work[i + 1 :, i:].addmm_(F[:done, i + 1 :].T, work[start:i, i:], alpha=-1.0)
                _write_diagonal(work, start, mus)
                return i, perm, torch.tensor(taus, dtype=dtype, device=device)
            if tail == 0.0:
                t, beta = 0.0, alpha  # nothing to annihilate: H = I
            else:
                # LAPACK xLARFG: beta = −sign(alpha)·mu, so v₁ = alpha − beta never cancels
                # and |v| ≤ 1 below its leading 1; cpqr() flips row signs afterwards.
                beta = -math.copysign(mu, alpha)
                t = (beta - alpha) / beta
                if shift:
                    x[1:].copy_(scaled[1:])
                x[1:].div_(alpha - beta)
            taus.append(t)
            mus.append(math.ldexp(beta, -shift))
            # x becomes v; its first entry (the diagonal of R) is not read again in this
            # block and is written back at the block end
            x[0] = 1.0
            if i + 1 < n:
                # 4. row `done` of Fᵀ: t·(Mᵀv − F_prev Vᵀv) with M as at the block start;
                #    one product gives Vᵀv (rows start:i) and Mᵀv (rows i+1:) together
                prods = torch.mv(work[start:, i:], x)
                f = F[done, i + 1 :]
                if done:
                    torch.addmv(prods[done + 1 :], F[:done, i + 1 :].T, prods[:done], beta=t, alpha=-t, out=f)
                else:
                    torch.mul(prods[1:], t, out=f)
                # 5. bring the pivot row up to date: row i of M − V Fᵀ
                row = work[i + 1 :, i]
                row.addmv_(F[: done + 1, i + 1 :].T, work[start : i + 1, i], alpha=-1.0)
                # 6. downdate the squared norms of the remaining columns
                rest = sq[i + 1 :]
                rest.addcmul_(row, row, value=-1.0)
                unreliable = bool((rest < threshold[i + 1 :]).any())
            else:
                unreliable = False
            done += 1
            if unreliable:
                break
        _write_diagonal(work, start, mus)
        i = start + done
        if i < n and i < m:
            # apply the delayed block update  M ← M − V Fᵀ  (rows i:, columns i:)
            work[i:, i:].addmm_(F[:done, i:].T, work[start:i, i:], alpha=-1.0)
            stale = torch.nonzero(sq[i:] < threshold[i:]).flatten()
            if stale.numel():
                stale += i
                fresh = torch.linalg.vector_norm(work[stale, i:], dim=1).square_()
                sq[stale] = fresh
                threshold[stale] = fresh * tol3z
    return i, perm, torch.tensor(taus, dtype=dtype, device=device)


def _swap(a: torch.Tensor, b: torch.Tensor, buffer: torch.Tensor) -> None:
    """Exchange the contents of the equally shaped views ``a`` and ``b``."""
    buffer.copy_(a)
    a.copy_(b)
    b.copy_(buffer)


def _write_diagonal(work: torch.Tensor, start: int, mus: list[float]) -> None:
    """Store the diagonal entries of R computed since step ``start``."""
    if len(mus) > start:
        diagonal = work.diagonal()[start : len(mus)]
        diagonal.copy_(torch.tensor(mus[start:], dtype=work.dtype))


def _form_q(reflectors: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """``Q = H₁ ⋯ H_r [I_r; 0]`` of shape ``(m, r)`` from ``reflectors: (r, m)``, ``tau: (r,)``.

    Row ``i`` of ``reflectors`` holds the tail of ``v_i`` in columns ``i+1:`` (its leading 1
    is implicit). Blocked backward accumulation (Golub & Van Loan §5.1.6 and §5.2.3): each
    block of reflectors is written as ``I − V T Vᵀ`` (compact WY form, T upper triangular as
    in LAPACK ``xLARFT``) and applied with matrix products. Works on ``Qᵀ`` so that rows
    stay contiguous: ``Qᵀ[j:, j:] ← Qᵀ[j:, j:] − ((Qᵀ[j:, j:] V) Tᵀ) Vᵀ``.
    """
    r, m = reflectors.shape
    dtype, device = reflectors.dtype, reflectors.device
    qt = torch.zeros((r, m), dtype=dtype, device=device)
    if r == 0:
        return qt.T
    qt.fill_diagonal_(1.0)
    taus = tau.tolist()
    for start in reversed(range(0, r, _BLOCK)):
        stop = min(start + _BLOCK, r)
        vt = torch.triu(reflectors[start:stop, start:], diagonal=1)  # Vᵀ: (b, m − start)
        vt.diagonal().fill_(1.0)
        gram = vt @ vt.T  # VᵀV: (b, b)
        T = torch.zeros((stop - start, stop - start), dtype=dtype, device=device)
        for j in range(stop - start):
            t = taus[start + j]
            T[j, j] = t
            if j and t != 0.0:
                T[:j, j] = (T[:j, :j] @ gram[:j, j]) * -t
        block = qt[start:, start:]
        block.sub_(((block @ vt.T) @ T.T) @ vt)
    return qt.T


# --------------------------------------------------------------------------------------
# Shared helpers (also used by the interpolative decomposition)


_TORCH_FLOATS = (torch.float32, torch.float64)


def _working_copy(A: Array, name: str) -> tuple[torch.Tensor, bool, float]:
    """Validate ``A: (m, n)`` and return a fresh ``(n, m)`` tensor holding ``Aᵀ``, whether
    ``A`` was a numpy array, and ``max |a_ij|``."""
    if isinstance(A, torch.Tensor):
        if A.layout != torch.strided:
            raise InvalidInputError(
                f"{name} is a {A.layout} torch tensor; pass a dense tensor (e.g. {name}.to_dense())"
            )
        if A.dtype not in _TORCH_FLOATS:
            hint = (
                f"convert it with {name}.double() or {name}.float()"
                if not A.dtype.is_complex
                else "complex matrices are not supported"
            )
            raise InvalidInputError(f"{name} has dtype {A.dtype}; expected torch.float32 or torch.float64 ({hint})")
        _check_shape(tuple(A.shape), name)
        work = torch.empty((A.shape[1], A.shape[0]), dtype=A.dtype, device=A.device)
        work.copy_(A.detach().T)
        as_numpy = False
    else:
        try:
            arr = np.asarray(A)
        except Exception as exc:  # pragma: no cover - exotic objects
            raise InvalidInputError(f"{name} must be a torch tensor or numpy array, got {type(A).__name__}") from exc
        if arr.dtype.kind in "biu":
            arr = arr.astype(np.float64)
        elif arr.dtype.kind == "f":
            if arr.dtype.itemsize < 4:
                arr = arr.astype(np.float32)
            elif arr.dtype.itemsize > 8:
                arr = arr.astype(np.float64)
        else:
            raise InvalidInputError(
                f"{name} has numpy dtype {arr.dtype}; expected a real floating (or integer) array"
                + (" (complex matrices are not supported)" if arr.dtype.kind == "c" else "")
            )
        _check_shape(arr.shape, name)
        out = np.empty((arr.shape[1], arr.shape[0]), dtype=arr.dtype.newbyteorder("="))
        np.copyto(out, arr.T)
        work = torch.from_numpy(out)
        as_numpy = True
    top = float(torch.linalg.vector_norm(work, ord=math.inf))  # max |a_ij|, NaN if any NaN
    if not math.isfinite(top):
        _report_non_finite(work, name)
    return work, as_numpy, top


def _report_non_finite(work: torch.Tensor, name: str) -> None:
    """Raise for the NaN/Inf entries of ``work`` (= ``Aᵀ``, indices reported for ``A``)."""
    for label, mask in (("NaN", torch.isnan(work)), ("infinite", torch.isinf(work))):
        count = int(mask.sum())
        if count:
            col, row = (int(v) for v in torch.nonzero(mask)[0])
            raise InvalidInputError(
                f"{name} contains {count} {label} entr{'y' if count == 1 else 'ies'} "
                f"(first at row {row}, column {col}); remove or replace them before factorizing"
            )
    raise InvalidInputError(f"{name} contains non-finite entries")  # pragma: no cover


def _check_shape(shape: tuple[int, ...], name: str) -> None:
    if len(shape) != 2:
        raise InvalidInputError(f"{name} must be a 2-D matrix (m, n); got {len(shape)}-D with shape {tuple(shape)}")
    if shape[0] < 1 or shape[1] < 1:
        raise InvalidInputError(
            f"{name} is empty with shape {tuple(shape)}; it needs at least one row and one column"
        )


def _safe_scale(work: torch.Tensor, top: float) -> int:
    """Power-of-two exponent ``e`` such that ``work·2⁻ᵉ`` has column norms safe from
    overflow and underflow (0 when no scaling is needed); ``top = max |work|``."""
    info = torch.finfo(work.dtype)
    if top == 0.0:
        return 0
    high = math.sqrt(info.max) / (2.0**20)
    low = math.sqrt(info.tiny) * (2.0**20)
    if low <= top and top * math.sqrt(work.shape[1]) <= high:
        return 0
    return math.frexp(top)[1]


def _scale_by_power_of_two(t: torch.Tensor, exponent: int) -> None:
    """``t ← t·2^exponent`` in place, exactly, in two steps so neither factor overflows."""
    half = exponent // 2
    for part in (half, exponent - half):
        if part:
            t.mul_(math.ldexp(1.0, part))


def _check_k(k: Any, limit: int) -> int:
    if k is None:
        return limit
    if isinstance(k, (bool, np.bool_)) or not _is_integer(k):
        raise InvalidInputError(
            f"k must be an integer number of steps in [0, {limit}], got {k!r} ({type(k).__name__})"
        )
    value = operator.index(k)
    if not 0 <= value <= limit:
        raise InvalidInputError(f"k must satisfy 0 <= k <= min(m, n) = {limit}, got k={value}")
    return value


def _is_integer(k: Any) -> bool:
    if isinstance(k, numbers.Integral):
        return True
    if isinstance(k, torch.Tensor):
        return k.ndim == 0 and not k.dtype.is_floating_point and not k.dtype.is_complex
    return False


def _check_tol(tol: Any) -> float | None:
    if tol is None:
        return None
    if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, numbers.Real):
        raise InvalidInputError(
            f"tol must be a real number in [0, 1] (relative to the largest column norm), "
            f"got {tol!r} ({type(tol).__name__})"
        )
    value = float(tol)
    if math.isnan(value):
        raise InvalidInputError("tol is NaN; it must be a real number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise InvalidInputError(
            f"tol must satisfy 0 <= tol <= 1 (relative to the largest column norm), got tol={value!r}"
        )
    return value
