"""Observe: stream calibration data through a model and accumulate per-cut statistics.

Statistics are accumulated batch by batch in float64 with memory bounded by the
cut's width, never by the number of calibration samples (DESIGN "Observe").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from .errors import InvalidInputError
from .evaluate import model_device
from .graph import Cut


class Calibration:
    """Re-iterable calibration batches.

    ``data`` is a tensor of inputs ``(N, ...)`` (split into batches of ``batch_size``)
    or a re-iterable of batches (a list, a DataLoader); each batch is a tensor or a
    tuple/list whose first element is the input tensor (e.g. ``(images, labels)``).
    One-shot iterators are rejected because schedules read the data several times.
    """

    def __init__(self, data, batch_size: int = 1000):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(data, torch.Tensor):
            if data.ndim == 0 or data.shape[0] == 0:
                raise InvalidInputError(
                    f"calibration tensor has shape {tuple(data.shape)}: it needs at least one "
                    "sample along its first dimension"
                )
        elif isinstance(data, Iterator):
            raise InvalidInputError(
                "calibration is a one-shot iterator (e.g. a generator); netshrink reads the "
                "calibration data several times. Pass a tensor, a list of batches or a DataLoader."
            )
        elif not isinstance(data, Iterable):
            raise InvalidInputError(
                f"calibration must be a tensor or an iterable of batches, got {type(data).__name__}"
            )
        self.data = data
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[torch.Tensor]:
        if isinstance(self.data, torch.Tensor):
            batches: Iterable = torch.split(self.data, self.batch_size)
        else:
            batches = self.data
        seen = 0
        for index, batch in enumerate(batches):
            if isinstance(batch, (tuple, list)):
                if not batch:
                    raise InvalidInputError(f"calibration batch {index} is an empty {type(batch).__name__}")
                batch = batch[0]
            if not isinstance(batch, torch.Tensor):
                raise InvalidInputError(
                    f"calibration batch {index} is a {type(batch).__name__}; expected a tensor "
                    "or a tuple whose first element is the input tensor"
                )
            if batch.ndim == 0 or batch.shape[0] == 0:
                continue
            if batch.is_floating_point() and not torch.isfinite(batch).all():
                bad = int((~torch.isfinite(batch)).sum())
                raise InvalidInputError(
                    f"calibration batch {index} contains {bad} NaN/Inf values; clean or "
                    "drop those samples before compressing"
                )
            seen += batch.shape[0]
            yield batch
        if seen == 0:
            raise InvalidInputError("calibration data is empty: it yielded no samples")


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


def observe(
    model: nn.Module,
    cuts: Sequence[Cut],
    calibration: Calibration,
    make_statistic: Callable[[Cut], object],
    progress: bool = False,
) -> dict[str, object]:
    """Run ``calibration`` through ``model`` once and accumulate one statistic per cut.

    The statistic of a cut sees the consumer's input, i.e. the producer's neurons after
    the pointwise operations, as rows ``(samples, width)`` (leading dimensions are
    flattened). ``make_statistic(cut)`` returns an object with ``update(rows)``.
    Returns ``{cut.name: statistic}``. The model's weights are not modified; its
    train/eval flag is restored afterwards.
    """
    modules = dict(model.named_modules())
    statistics = {cut.name: make_statistic(cut) for cut in cuts}
    device = model_device(model)
    handles = []
    pending: set[str] = set()

    def hook_for(cut: Cut):
        statistic = statistics[cut.name]

        def hook(_module, inputs):
            activations = inputs[0]
            rows = activations.reshape(-1, activations.shape[-1])
            if not torch.isfinite(rows).all():
                raise InvalidInputError(
                    f"the activations entering {cut.consumer!r} contain NaN/Inf on the "
                    "calibration data; the model overflows on these inputs"
                )
            statistic.update(rows)
            pending.discard(cut.name)
            if not pending:  # every cut of this batch is seen: skip the rest of the forward
                raise _AllObserved

        return hook

    for cut in cuts:
        handles.append(modules[cut.consumer].register_forward_pre_hook(hook_for(cut)))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            batches = calibration
            if progress:
                from tqdm.auto import tqdm

                batches = tqdm(calibration, desc="observe", unit="batch", leave=False)
            for index, batch in enumerate(batches):
                pending.update(statistics)
                try:
                    run_batch(model, batch.to(device), index)
                except _AllObserved:
                    continue
                raise InvalidInputError(
                    f"the forward pass did not reach {', '.join(sorted(pending))}; the model's "
                    "graph changed since its cuts were found"
                )
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return statistics


def run_batch(model: nn.Module, batch: torch.Tensor, index: int = 0) -> torch.Tensor:
    """Forward one calibration batch, turning shape errors into a helpful message."""
    try:
        return model(batch)
    except (InvalidInputError, _AllObserved):
        raise
    except RuntimeError as exc:
        raise InvalidInputError(
            f"running {type(model).__name__} on calibration batch {index} of shape "
            f"{tuple(batch.shape)} failed: {exc}. Calibration inputs must have the shape "
            "the model's forward() expects (for the zoo's Fashion-MNIST models: (N, 1, 28, 28))."
        ) from exc
