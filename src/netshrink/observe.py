"""Observe: stream calibration data through a model and accumulate per-cut statistics.

Statistics are accumulated batch by batch in float64 with memory bounded by the
cut's width, never by the number of calibration samples (DESIGN "Observe").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from . import batches
from .distributed import all_reduce_statistics
from .errors import InvalidInputError
from .evaluate import model_device
from .graph import Cut
from .layers import input_rows, weight_matrix
from .linalg.blocks import row_spans


class Calibration:
    """Re-iterable calibration batches.

    ``data`` is a tensor of inputs ``(N, ...)`` or a mapping of keyword inputs whose
    tensors are ``(N, ...)`` (a tokenizer's output; both split into batches of
    ``batch_size``), or a re-iterable of batches (a list, a DataLoader). Each batch is a
    tensor, a mapping of keyword arguments (the model is called as ``model(**batch)``;
    its ``attention_mask`` marks the rows that count, see :mod:`netshrink.batches`), or
    a tuple/list whose first element is one of those (e.g. ``(images, labels)``).
    One-shot iterators are rejected because schedules read the data several times.
    """

    def __init__(self, data, batch_size: int = 1000):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(data, (torch.Tensor, Mapping)):
            if isinstance(data, torch.Tensor) and (data.ndim == 0 or data.shape[0] == 0):
                raise InvalidInputError(
                    f"calibration tensor has shape {tuple(data.shape)}: it needs at least one "
                    "sample along its first dimension"
                )
            batches.check(data, 0)
            data = batches.split(data, batch_size)
        elif isinstance(data, Iterator):
            raise InvalidInputError(
                "calibration is a one-shot iterator (e.g. a generator); netshrink reads the "
                "calibration data several times. Pass a tensor, a list of batches or a DataLoader."
            )
        elif not isinstance(data, Iterable):
            raise InvalidInputError(
                f"calibration must be a tensor or an iterable of batches (or a mapping of keyword "
                f"inputs), got {type(data).__name__}"
            )
        self.data = data
        self.batch_size = batch_size

    def __iter__(self) -> Iterator:
        seen = 0
        for index, batch in enumerate(self.data):
            if isinstance(batch, (tuple, list)):
                if not batch:
                    raise InvalidInputError(f"calibration batch {index} is an empty {type(batch).__name__}")
                batch = batch[0]
            batches.check(batch, index)
            if isinstance(batch, torch.Tensor) and batch.ndim == 0:
                continue
            count = batches.size(batch)
            if count == 0:
                continue
            seen += count
            yield batch
        if seen == 0:
            raise InvalidInputError("calibration data is empty: it yielded no samples")

    def first(self):
        """The first non-empty batch (the example from which a model's graph is read)."""
        return next(iter(self))


class _AllObserved(Exception):
    """Raised inside the forward pass once every observed cut has its activations."""


class RFactor:
    """Streaming R factor (TSQR) of the rows ``Z: (N, n)`` seen so far, in float64.

    After all updates, ``result()`` is ``R: (min(N, n), n)`` upper trapezoidal with
    ``ZᵀZ = RᵀR``, scaled by ``1/√N`` so it does not grow with the sample count.
    Column-pivoted QR of ``R`` selects the same columns as that of ``Z`` (the pivots
    depend only on ``ZᵀZ``), so the interpolative decomposition of the cut is computed
    from an n × n matrix whatever the calibration size (DESIGN "Observe": TSQR).
    """

    def __init__(self, width: int, device: torch.device | None = None):
        self.width = width
        self.count = 0
        self._r: torch.Tensor | None = None
        self._pending: list[torch.Tensor] = []
        self._pending_rows = 0
        self._device = device

    def update(self, rows: torch.Tensor) -> None:
        """Add rows ``(b, n)`` of activations."""
        rows = rows.detach().to(dtype=torch.float64, device=self._device or rows.device)
        self.count += rows.shape[0]
        self._pending.append(rows)
        self._pending_rows += rows.shape[0]
        if self._pending_rows >= 2 * self.width:
            self._reduce()

    def _reduce(self) -> None:
        blocks = ([self._r] if self._r is not None else []) + self._pending
        stacked = torch.cat(blocks)
        self._r = torch.linalg.qr(stacked, mode="r").R
        self._pending, self._pending_rows = [], 0

    def result(self) -> torch.Tensor:
        if self.count == 0:
            raise InvalidInputError("no activations were observed at this cut")
        if self._pending:
            self._reduce()
        return self._r / self.count**0.5

    def all_reduce(self, ranks) -> None:
        """Merge the R factors of every rank's rows (TSQR, :meth:`netshrink.distributed.Ranks.merged_r`):
        afterwards this is the R factor of the union of the ranks' rows."""
        if self._pending:
            self._reduce()
        (self.count,) = ranks.sum_counts([self.count])
        self._r = ranks.merged_r(self._r, self.width)[: min(self.count, self.width)]


class GramStatistic:
    """Second moments of each consumer's input rows, in float64 (Robin §2.4, §2.7).

    For consumer ``i`` with input rows ``a`` (its current input: neurons, flattened
    features or unfolded conv patches, see :func:`netshrink.layers.input_rows`) and
    weights ``W: (out, d)`` this accumulates ``gram = E[a aᵀ]: (d, d)``. When the rows
    ``z`` that the *original* model feeds the same consumer are given too (top-down
    chaining), it also keeps ``cross = E[a zᵀ]: (d, d)`` and the energy ``E‖y‖²`` of the
    targets ``y = W z``, with the weights the consumer has while the rows are observed
    (the schedules observe a cut just before deciding it, while its consumers are still
    the original's); otherwise ``cross`` is ``gram``. The regression statistics are then
    ``E[a yᵀ] = cross Wᵀ`` and ``E‖y‖²`` — the energy costs one ``(rows, out)`` product
    per batch instead of a third ``(d, d)`` matrix ``E[z zᵀ]``. The first moments
    ``E[a]`` and ``E[z]`` (:meth:`means`) let a refit absorb constants into the
    consumer's bias (an intercept).

    Products are float32 GEMMs summed in float64 (:func:`_add_product`) on rows shifted
    by the first rows' column means, so a large mean does not cost float32 digits when a
    method centres the statistics; the shift is removed exactly, in float64, before the
    statistics are read.
    """

    def __init__(self, consumers: Sequence[nn.Module]):
        self.consumers = list(consumers)
        self.count = [0] * len(self.consumers)
        self._gram: list[torch.Tensor | None] = [None] * len(self.consumers)
        self._cross: list[torch.Tensor | None] = [None] * len(self.consumers)
        self._energy: list[torch.Tensor | None] = [None] * len(self.consumers)         # Σ‖W(z − c_z)‖², then Σ‖Wz‖²
        self._target_sum: list[torch.Tensor | None] = [None] * len(self.consumers)     # Σ W(z − c_z), (out,)
        self._sum: list[torch.Tensor | None] = [None] * len(self.consumers)
        self._reference_sum: list[torch.Tensor | None] = [None] * len(self.consumers)
        self._shift: list[tuple[torch.Tensor, torch.Tensor | None] | None] = [None] * len(self.consumers)
        self._averaged = [False] * len(self.consumers)
        self._centred = [False] * len(self.consumers)

    def update(self, index: int, current: torch.Tensor, original: torch.Tensor | None = None) -> None:
        if self._averaged[index]:
            raise InvalidInputError("the statistics of this consumer were already read; they take no more rows")
        layer = self.consumers[index]
        chunks = input_rows(layer, current)
        paired = input_rows(layer, original) if original is not None else None
        weight = None  # the consumer's weights in the rows' dtype, converted once per update
        for rows in chunks:
            if self._shift[index] is None and self._gram[index] is not None:
                raise InvalidInputError("the statistics of this consumer were already read; they take no more rows")
            if self._shift[index] is None:
                self._shift[index] = (rows.mean(dim=0), next(input_rows(layer, original)).mean(dim=0)
                                      if paired is not None else None)
            shift, reference_shift = self._shift[index]
            self.count[index] += rows.shape[0]
            self._sum[index] = _add(self._sum[index], rows.sum(dim=0, dtype=torch.float64))
            rows = rows - shift
            self._gram[index] = _add_product(self._gram[index], rows, rows)
            if paired is not None:
                reference_rows = next(paired)
                self._reference_sum[index] = _add(self._reference_sum[index],
                                                  reference_rows.sum(dim=0, dtype=torch.float64))
                reference_rows = reference_rows - reference_shift
                self._cross[index] = _add_product(self._cross[index], rows, reference_rows)
                if weight is None:
                    weight = weight_matrix(layer, None).to(reference_rows.dtype)
                targets = reference_rows @ weight.T  # (r, out)
                self._target_sum[index] = _add(self._target_sum[index], targets.sum(dim=0, dtype=torch.float64))
                self._energy[index] = _add(self._energy[index], targets.square_().sum(dtype=torch.float64))

    def result(self, index: int) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        """``(gram, cross, energy)`` of consumer ``index`` as means: ``(d, d)``, ``(d, d)``
        and ``E‖y‖²`` (None without reference rows: ``cross`` is ``gram``, and the energy
        is ``tr(W gram Wᵀ)``).

        The sums are divided in place on the first call (no copy of a ``(d, d)`` matrix:
        5 GB in float64 for ``d = 25088``); the statistic takes no more rows after it.
        The returned tensors are the statistic's own: read them, don't modify them. After
        :meth:`centred` they are turned back into second moments in place (to rounding).
        """
        if self.count[index] == 0:
            raise InvalidInputError("no activations were observed at this cut")
        if not self._averaged[index]:
            self._unshift(index)
            with torch.inference_mode():
                _symmetrise(self._gram[index])
            scale = 1.0 / self.count[index]
            with torch.inference_mode():  # the sums are inference tensors of the observation pass
                for total in (self._gram, self._cross, self._energy):
                    if total[index] is not None:
                        total[index].mul_(scale)
            self._averaged[index] = True
        if self._centred[index]:
            self._rank_one(index, 1.0)
            self._centred[index] = False
        return self._read(index)

    def centred(self, index: int) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        """``(gram − μμᵀ, cross − μ·μ_zᵀ, energy)`` of consumer ``index`` with ``(μ, μ_z)`` =
        :meth:`means`: the covariances, for a fit with an intercept; the energy is
        :meth:`result`'s (uncentred: ``E‖y − E[y]‖² = E‖y‖² − ‖W μ_z‖²``).

        Centred in place by rank-one updates, so no ``(d, d)`` matrix is copied. These are
        the tensors :meth:`result` returns, and each call turns them into its own form: a
        tensor obtained from one of the two reads changes when the other is made.
        """
        if not self._centred[index]:
            self.result(index)
            self._rank_one(index, -1.0)
            self._centred[index] = True
        return self._read(index)

    def _read(self, index: int) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        gram = self._gram[index]
        if self._cross[index] is None:
            return gram, gram, None
        return gram, self._cross[index], float(self._energy[index])

    def _rank_one(self, index: int, sign: float) -> None:
        """Add ``sign·μμᵀ`` (``sign·μ·μ_zᵀ``) to the averaged moments in place."""
        mean, reference_mean = self.means(index)
        with torch.inference_mode():  # the moments are inference tensors of the observation pass
            self._gram[index].addr_(mean, mean, alpha=sign)
            if self._cross[index] is not None:
                self._cross[index].addr_(mean, reference_mean, alpha=sign)

    def means(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E[a], E[z])`` of consumer ``index``, each ``(d,)`` (equal without a reference)."""
        if self.count[index] == 0:
            raise InvalidInputError("no activations were observed at this cut")
        mean = self._sum[index] / self.count[index]
        if self._reference_sum[index] is None:
            return mean, mean
        return mean, self._reference_sum[index] / self.count[index]

    def all_reduce(self, ranks) -> None:
        """Sum the float64 sums and the counts over the ranks (:class:`netshrink.distributed.Ranks`):
        afterwards this holds the statistics of the union of the ranks' rows. Only before
        any :meth:`result` (the sums are still sums)."""
        if any(self._averaged):
            raise InvalidInputError("the statistics were already read; they are summed over the ranks before that")
        for index in range(len(self.consumers)):
            self._unshift(index)
        self.count = ranks.sum_counts(self.count)
        for sums in (self._gram, self._cross, self._energy, self._sum, self._reference_sum):
            sums[:] = ranks.sum(sums)


    def _unshift(self, index: int) -> None:
        """Turn consumer ``index``'s products of shifted rows ``a − c`` (and ``z − c_z``)
        into products of the rows themselves, in float64, in place:
        ``Σ a zᵀ = Σ(a−c)(z−c_z)ᵀ + c s_zᵀ + s c_zᵀ + N c c_zᵀ`` with ``s = Σa − N c``
        (the sums ``Σa`` are of the rows themselves, exact in float64); likewise
        ``Σ‖Wz‖² = Σ‖W(z−c_z)‖² + 2 Wc_z·ΣW(z−c_z) + N‖Wc_z‖²``."""
        if self._shift[index] is None:
            return
        count = self.count[index]
        shift, reference_shift = (None if v is None else v.to(torch.float64) for v in self._shift[index])
        shifted = self._sum[index] - count * shift
        with torch.inference_mode():
            _unshift_product(self._gram[index], shift, shifted, shift, shifted, count)
            if reference_shift is not None:
                reference_shifted = self._reference_sum[index] - count * reference_shift
                _unshift_product(self._cross[index], shift, shifted, reference_shift, reference_shifted, count)
                weight = weight_matrix(self.consumers[index], None)
                target_shift = torch.cat([weight[a:b].to(torch.float64) @ reference_shift
                                          for a, b in row_spans(weight.shape[0], weight.shape[1])])
                self._energy[index] += (2 * target_shift @ self._target_sum[index]
                                        + count * target_shift @ target_shift)
                self._target_sum[index] = None
        self._shift[index] = None


def _unshift_product(product, shift, shifted, other_shift, other_shifted, count) -> None:
    """``product += c s_oᵀ + s c_oᵀ + N c c_oᵀ`` (see :meth:`GramStatistic._unshift`)."""
    product.addr_(shift, other_shifted).addr_(shifted, other_shift).addr_(shift, other_shift, alpha=count)


def _symmetrise(matrix: torch.Tensor, block: int = 2048) -> None:
    """``matrix ← (matrix + matrixᵀ)/2`` in place, block by block (no ``(d, d)`` copy): a
    float32 GEMM ``aᵀa`` is symmetric only to rounding."""
    d = matrix.shape[0]
    for i in range(0, d, block):
        for j in range(i, d, block):
            upper = matrix[i:i + block, j:j + block]
            mean = (upper + matrix[j:j + block, i:i + block].T) / 2
            upper.copy_(mean)
            matrix[j:j + block, i:i + block].copy_(mean.T)


def _add(total: torch.Tensor | None, term: torch.Tensor) -> torch.Tensor:
    return term if total is None else total.add_(term)


def _add_product(total: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``total + aᵀb`` in float64 for rows ``a: (r, d)``, ``b: (r, e)``.

    The product is a GEMM in the rows' own precision (float32 for a float32 model: half
    the time of a float64 GEMM) over at most :data:`~netshrink.layers.PRODUCT_ROWS`
    rows, summed into the float64 total; with rounding ``u`` = 6e-8, each block's entries
    are within about ``√r·u`` of exact relative to ``Σ|aᵢbⱼ|``, and the float64 sum adds
    nothing more. Blocks of columns bound the temporaries (the product and its float64
    cast) to :data:`~netshrink.linalg.blocks.CHUNK_ELEMENTS` entries each, whatever ``d``.
    """
    if total is None:
        total = torch.zeros(a.shape[1], b.shape[1], dtype=torch.float64, device=a.device)
    for start, stop in row_spans(b.shape[1], a.shape[1]):
        total[:, start:stop] += a.T @ b[:, start:stop]
    return total


def observe(
    model: nn.Module,
    cuts: Sequence[Cut],
    calibration: Calibration,
    make_statistic: Callable[[Cut, list[nn.Module]], object],
    progress: bool = False,
    reference: nn.Module | None = None,
    feed=None,
) -> dict[str, object]:
    """Run ``calibration`` through ``model`` once and accumulate one statistic per cut.

    ``make_statistic(cut, consumers)`` gets the cut and its consumer modules and returns
    an object with ``update(index, current, original)``, called with the input tensor
    of consumer ``index`` and, when ``reference`` (the original model) is given, the
    input the same consumer receives in ``reference`` on the same batch (else None).
    Returns ``{cut.name: statistic}``. No weights are modified; train/eval flags are
    restored afterwards.

    For a keyword batch with an ``attention_mask: (B, T)``, a consumer input of shape
    ``(B, T, d)`` contributes only the rows of real tokens: padding never enters a
    statistic.

    ``feed`` replaces the calibration passes (sequential propagation runs a few stages
    from cached activations instead of whole forward passes): an iterable of
    ``(mask, run)`` pairs, ``run(m)`` running the pass on ``model`` or ``reference``
    and ``mask`` that pass's row mask (or None).

    In a process group of world size > 1 each rank observes its own shard and the
    statistics are summed over the ranks before they are returned
    (:func:`netshrink.distributed.all_reduce_statistics`).
    """
    modules = dict(model.named_modules())
    statistics = {
        cut.name: make_statistic(cut, [modules[path] for path in cut.consumers]) for cut in cuts
    }
    device = model_device(model)
    readers = [(cut.name, index, path) for cut in cuts for index, path in enumerate(cut.consumers)]
    originals: dict[str, torch.Tensor] = {}
    current = {"mask": None}  # the row mask of the batch being run
    handles = []
    pending: set[str] = set()
    reference_pending: set[str] = set()

    def capture(path: str):
        def hook(_module, inputs):
            originals[path] = counted_rows(inputs[0], current["mask"])
            reference_pending.discard(path)
            if not reference_pending:
                raise _AllObserved

        return hook

    def accumulate(name: str, index: int, path: str):
        statistic = statistics[name]

        def hook(_module, inputs):
            activations = counted_rows(inputs[0], current["mask"])
            if activations.is_floating_point() and not torch.isfinite(activations).all():
                raise InvalidInputError(
                    f"the activations entering {path!r} contain NaN/Inf on the "
                    "calibration data; the model overflows on these inputs"
                )
            statistic.update(index, activations, originals.get(path) if reference is not None else None)
            pending.discard(path)
            if not pending:  # every reader of this batch is seen: skip the rest of the forward
                raise _AllObserved

        return hook

    paths = sorted({path for _, _, path in readers})
    for name, index, path in readers:
        handles.append(modules[path].register_forward_pre_hook(accumulate(name, index, path)))
    models = [model]
    if reference is not None:
        reference_modules = dict(reference.named_modules())
        for path in paths:
            handles.append(reference_modules[path].register_forward_pre_hook(capture(path)))
        models.append(reference)
    flags = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.inference_mode():
            stream = feed if feed is not None else _passes(calibration, device)
            if progress:
                from tqdm.auto import tqdm

                stream = tqdm(stream, desc="observe", unit="batch", leave=False)
            for mask, run in stream:
                current["mask"] = mask
                if reference is not None:
                    originals.clear()
                    reference_pending.update(paths)
                    _run_until_observed(run, reference, reference_pending)
                pending.update(paths)
                _run_until_observed(run, model, pending)
    finally:
        for handle in handles:
            handle.remove()
        for m, flag in zip(models, flags):
            m.train(flag)
    all_reduce_statistics(statistics)  # in a process group: the statistics of every rank's shard
    return statistics


def counted_rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The rows of ``x`` that calibration counts: ``x[mask]: (n, d)`` for a sequence input
    ``x: (B, T, d)`` with the batch's ``mask: (B, T)``; any other ``x`` as it is."""
    if mask is None or x.ndim != mask.ndim + 1 or tuple(x.shape[:-1]) != tuple(mask.shape):
        return x
    return x[mask.to(x.device)]


def _passes(calibration: Calibration, device: torch.device):
    """``(mask, run)`` for every calibration batch (see :func:`observe`'s ``feed``)."""
    for index, batch in enumerate(calibration):
        batch = batches.to_device(batch, device)
        yield batches.row_mask(batch), lambda m, batch=batch, index=index: run_batch(m, batch, index)


def _run_until_observed(run, model: nn.Module, pending: set[str]) -> None:
    try:
        run(model)
    except _AllObserved:
        return
    raise InvalidInputError(
        f"the forward pass did not reach {', '.join(sorted(pending))}; the model's "
        "graph changed since its cuts were found"
    )


def run_batch(model: nn.Module, batch, index: int = 0):
    """Forward one calibration batch, turning shape errors into a helpful message."""
    try:
        return batches.call(model, batch)
    except (InvalidInputError, _AllObserved):
        raise
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:
        raise InvalidInputError(
            f"running {type(model).__name__} on calibration batch {index} ({batches.describe(batch)}) "
            f"failed: {type(exc).__name__}: {exc}. Calibration inputs must be what the model's forward() "
            "expects (for the zoo's Fashion-MNIST models: (N, 1, 28, 28) tensors)."
        ) from exc
