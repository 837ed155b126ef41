"""The spectral norm ``‖M‖₂`` (largest singular value) of a dense matrix.

Computed by Lanczos on the Gram operator ``v ↦ Mᵀ(M v)`` with full reorthogonalisation: only matrix–vector
products, ``O(pq)`` per step instead of the ``O(min(p,q)³)`` of a dense eigensolver, and
free of the thread contention that dense LAPACK eigensolvers suffer on busy machines.
Lanczos stops when the residual of the top Ritz pair certifies the eigenvalue to float64
accuracy (Golub & Van Loan, §10.1); if it has not after ``_MAX_STEPS`` steps the dense
solver is used instead.
"""

from __future__ import annotations

import math

import scipy.linalg
import torch

_MAX_STEPS = 160
_RESIDUAL_TOL = 1e-10  # |θ − λ| ≤ residual: certified 1e-10 relative (in practice ~1e-16)


def spectral_norm(M: torch.Tensor) -> float:
    """Largest singular value of ``M: (p, q)`` as a Python float (0.0 when empty).

    Computed in float64 as if ``M`` were scaled by a power of two ``2⁻ᵉ`` so squares
    cannot overflow or underflow: the products ``M v`` are scaled instead (the same
    numbers away from the ends of the float64 range, and no copy of ``M``, which may be
    a 5 GB Gram). Deterministic: the Lanczos start vector is fixed.
    """
    if M.numel() == 0:
        return 0.0
    M = M.to(torch.float64)
    top = float(torch.linalg.vector_norm(M, ord=math.inf))
    if top == 0.0:
        return 0.0
    exponent = math.frexp(top)[1]
    if M.shape[0] < M.shape[1]:
        M = M.T
    largest = _lanczos_top_eigenvalue(M, exponent)
    if largest is None:
        scaled = torch.ldexp(M, torch.tensor(-exponent, dtype=torch.int32, device=M.device))
        largest = float(torch.linalg.eigvalsh(scaled.T @ scaled)[-1])
    return math.ldexp(math.sqrt(max(largest, 0.0)), exponent)


def _lanczos_top_eigenvalue(M: torch.Tensor, exponent: int) -> float | None:
    """Top eigenvalue of ``AᵀA``, ``A = 2⁻ᵉ·M`` for ``M: (p, q)``, p ≥ q, ``e = exponent``,
    or None if not certified."""
    q = M.shape[1]
    steps = min(q, _MAX_STEPS)
    generator = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(q, generator=generator, dtype=torch.float64).to(M.device)
    v /= torch.linalg.vector_norm(v)
    basis = torch.empty(steps, q, dtype=torch.float64, device=M.device)
    shift = torch.tensor(-exponent, dtype=torch.int32, device=M.device)
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(steps):
        basis[j] = v
        w = torch.ldexp(M.T @ torch.ldexp(M @ v, shift), shift)  # AᵀA v, exact powers of two
        alpha = float(w @ v)
        # full reorthogonalisation (twice is enough, Parlett's "twice is enough")
        for _ in range(2):
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(torch.linalg.vector_norm(w))
        alphas.append(alpha)
        # Ritz pair of the (j+1)×(j+1) tridiagonal: a tiny LAPACK call on the CPU
        values, vectors = scipy.linalg.eigh_tridiagonal(
            alphas, betas, select="i", select_range=(j, j)
        )
        theta = float(values[-1])
        residual = beta * abs(float(vectors[-1, -1]))
        if residual <= _RESIDUAL_TOL * max(theta, 1e-300) or beta == 0.0 or j == q - 1:
            return theta
        betas.append(beta)
        v = w / beta
    return None
