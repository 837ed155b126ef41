"""Memory-bounded operations on large symmetric matrices (Gram statistics).

The float64 Gram ``E[x xᵀ]`` of a layer with ``d = 25,088`` inputs (VGG-19's first fully
connected layer) is 5 GB, and compressing one cut must not need much more than that
(issue 13: peak ≤ 2.2× the Gram's bytes). The helpers here read a ``(d, d)`` matrix in
blocks of :data:`CHUNK_ELEMENTS` elements (64 MB of float64) and never allocate a
temporary of its size: sub-blocks ``G[S, S]`` are gathered without the ``(|S|, d)``
intermediate of ``G[S][:, S]``, products with ``G[S, :]`` or ``G[S, S]`` gather a few rows
at a time, and a large working set is made a view by reordering ``G`` in place
(:func:`principal_block`).

A problem that fits in one block is computed by the same single torch expression as
before these helpers existed, so small problems give bitwise the same numbers; chunked
sums differ from one-shot sums only by rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = [
    "CHUNK_ELEMENTS", "columns_of", "row_spans", "all_finite", "max_asymmetry", "contiguous_range", "submatrix",
    "principal_view", "principal_block", "rows_product", "block_product", "inner", "column_sums",
    "symmetrize_",
]

#: elements of one temporary block (64 MB of float64)
CHUNK_ELEMENTS = 1 << 23

#: a working block of at most this fraction of the matrix's elements is gathered (copied);
#: a larger one is made a view by reordering the matrix in place
_GATHER_FRACTION = 1 / 16


def columns_of(units: torch.Tensor, s: int) -> torch.Tensor:
    """Input-column indices ``(k·s,)`` owned by the ``units`` ``(k,)``, in order."""
    offsets = torch.arange(s, device=units.device)
    return (units.unsqueeze(1) * s + offsets).reshape(-1)


def row_spans(count: int, width: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` spans of ``count`` rows of ``width`` elements, each span at most
    ``CHUNK_ELEMENTS / width`` rows (at least one)."""
    step = max(1, CHUNK_ELEMENTS // max(width, 1))
    for start in range(0, count, step):
        yield start, min(start + step, count)


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether no entry of ``tensor`` is NaN/Inf, checked by row blocks (no full-size mask)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    if tensor.ndim < 2 or tensor.numel() <= CHUNK_ELEMENTS:
        return bool(torch.isfinite(tensor).all())
    width = tensor.numel() // tensor.shape[0]
    return all(bool(torch.isfinite(tensor[a:b]).all()) for a, b in row_spans(tensor.shape[0], width))


def max_asymmetry(matrix: torch.Tensor) -> float:
    """``max |A − Aᵀ|`` of a square ``matrix: (d, d)`` (0.0 when empty), by row blocks."""
    if matrix.numel() == 0:
        return 0.0
    if matrix.numel() <= CHUNK_ELEMENTS:
        return float((matrix - matrix.T).abs().max())
    return max(float((matrix[a:b] - matrix[:, a:b].T).abs().max()) for a, b in row_spans(*matrix.shape))


def symmetrize_(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix ← matrix + matrixᵀ`` in place for a square ``matrix: (d, d)``, by row blocks;
    returns it. The same numbers as ``matrix + matrix.T`` (addition commutes exactly)."""
    for a, b in row_spans(*matrix.shape):
        upper, lower = matrix[a:b, a:], matrix[a:, a:b].T
        total = upper + lower
        upper.copy_(total)
        lower.copy_(total)
    return matrix


def contiguous_range(index: torch.Tensor) -> slice | None:
    """``slice(a, b)`` when the 1-D ``index`` is exactly ``a, a+1, …, b−1``, else None."""
    if index.numel() == 0:
        return None
    first, last = int(index[0]), int(index[-1])
    if first < 0 or last - first + 1 != index.numel():
        return None
    expected = torch.arange(first, last + 1, dtype=index.dtype, device=index.device)
    return slice(first, last + 1) if torch.equal(index, expected) else None


def submatrix(matrix: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """``matrix[rows][:, columns]: (|rows|, |columns|)`` as a new tensor, or written into ``out``.

    Gathered ``CHUNK_ELEMENTS`` output elements at a time: no ``(|rows|, d)`` intermediate.
    ``out`` may be any view of the right shape (e.g. a transposed one).
    """
    if out is None:
        out = matrix.new_empty(len(rows), len(columns))
    for a, b in row_spans(len(rows), len(columns)):
        out[a:b] = matrix[rows[a:b].unsqueeze(1), columns]
    return out


def principal_view(matrix: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``matrix[columns][:, columns]`` to read: a view when ``columns`` is a contiguous
    range (e.g. every column), else a gathered copy (:func:`submatrix`)."""
    span = contiguous_range(columns)
    if span is not None:
        return matrix[span, span]
    return submatrix(matrix, columns, columns)


@contextlib.contextmanager
def principal_block(matrix: torch.Tensor, columns: torch.Tensor) -> Iterator[torch.Tensor]:
    """``matrix[columns][:, columns]`` to read within the ``with`` block, without copying ``matrix``.

    ``columns`` ascending. A contiguous range is a view; a block of at most 1/16 of
    ``matrix``'s elements is gathered (a copy that small is cheaper than a reorder);
    otherwise the rows and columns of the square, contiguous ``matrix: (d, d)`` are
    permuted in place so that ``columns`` come first in their order, the leading
    ``(k, k)`` view — the same values bit for bit — is yielded, and the original order
    is restored on exit (also on an exception). Cost of a reorder: about four passes
    over ``matrix``; extra memory ``O(CHUNK_ELEMENTS)``. Nothing else may read
    ``matrix`` inside the block.
    """
    span = contiguous_range(columns)
    if span is not None:
        yield matrix[span, span]
        return
    size = len(columns)
    if size * size <= _GATHER_FRACTION * matrix.numel() or not matrix.is_contiguous():
        yield submatrix(matrix, columns, columns)
        return
    chosen = torch.zeros(matrix.shape[0], dtype=torch.bool, device=columns.device)
    chosen[columns] = True
    order = torch.cat([columns, torch.nonzero(~chosen).flatten()]).to(matrix.device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    _permute(matrix, order)
    try:
        yield matrix[:size, :size]
    finally:
        _permute(matrix, inverse)


def _permute(matrix: torch.Tensor, order: torch.Tensor) -> None:
    """``matrix ← matrix[order][:, order]`` in place (rows by cycles, columns by row blocks)."""
    writable = torch.inference_mode() if matrix.is_inference() else torch.no_grad()
    with writable:
        target = order.tolist()
        done = [False] * len(target)
        spare = matrix.new_empty(matrix.shape[1])
        for start, source in enumerate(target):
            if done[start] or source == start:
                continue
            spare.copy_(matrix[start])
            position = start
            while target[position] != start:
                matrix[position].copy_(matrix[target[position]])
                done[position] = True
                position = target[position]
            matrix[position].copy_(spare)
            done[position] = True
        for a, b in row_spans(*matrix.shape):
            matrix[a:b] = matrix[a:b].index_select(1, order)


def rows_product(left: torch.Tensor, matrix: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``left @ matrix[rows]: (p, d)`` for ``left: (p, k)``, ``rows: (k,)``, ``matrix: (n, d)``.

    ``matrix[rows]`` is never formed whole: rows are gathered a block at a time (a
    contiguous range is a view).
    """
    span = contiguous_range(rows)
    if span is not None:
        return left @ matrix[span]
    width = matrix.shape[1]
    if len(rows) * width <= CHUNK_ELEMENTS:
        return left @ matrix[rows]
    result = left.new_zeros(left.shape[0], width)
    for a, b in row_spans(len(rows), width):
        result.addmm_(left[:, a:b], matrix[rows[a:b]])
    return result


def block_product(left: torch.Tensor, matrix: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``left @ matrix[columns][:, columns]: (p, k)`` for ``left: (p, k)``, gathered by blocks of rows."""
    span = contiguous_range(columns)
    if span is not None:
        return left @ matrix[span, span]
    size = len(columns)
    if size * size <= CHUNK_ELEMENTS:
        return left @ submatrix(matrix, columns, columns)
    result = left.new_zeros(left.shape[0], size)
    for a, b in row_spans(size, size):
        result.addmm_(left[:, a:b], submatrix(matrix, columns[a:b], columns))
    return result


def inner(a: torch.Tensor, b: torch.Tensor) -> float:
    """``Σ a∘b`` of two tensors of the same shape ``(p, q)``, by row blocks."""
    if a.numel() <= CHUNK_ELEMENTS:
        return float((a * b).sum())
    return sum(float((a[i:j] * b[i:j]).sum()) for i, j in row_spans(a.shape[0], a.shape[1]))


def column_sums(matrix: torch.Tensor, square: bool) -> torch.Tensor:
    """``(q,)`` sums over the rows of ``matrix: (p, q)`` of its squares (``square=True``) or
    absolute values, by row blocks."""
    def part(block):
        return (block * block).sum(dim=0) if square else block.abs().sum(dim=0)

    if matrix.numel() <= CHUNK_ELEMENTS:
        return part(matrix)
    total = None
    for a, b in row_spans(*matrix.shape):
        total = part(matrix[a:b]) if total is None else total.add_(part(matrix[a:b]))
    return total
