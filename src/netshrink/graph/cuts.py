"""What a reader of a model's graph reports: cuts and the layers it skipped.

A *cut* is a set of units removed together (Robin §2.2: a feature selector commutes
with every channelwise operation). Its kind says what a unit is:

- ``"neurons"``: output units of ``nn.Linear`` (or a transposed ``Conv1D``) layers:
  an MLP's hidden layer, a transformer's FFN intermediate, a SwiGLU's joint
  ``gate``/``up`` rows;
- ``"channels"``: output channels of ``nn.Conv2d`` layers, sliced with their BatchNorm
  and depthwise companions;
- ``"heads"``: attention heads. A unit is one head (with grouped-query attention, one
  key/value group together with its query heads): ``d_head`` rows of each of q, k and
  v and the matching input columns of the output projection.

Every producer of a cut loses the rows its removed units own (:meth:`Cut.producer_rows`),
every consumer gets new input columns: unit ``u`` owns the consumer's contiguous columns
``[u·s, (u+1)·s)`` (``s`` = 1 for neurons, ``h·w`` after a flatten, ``kh·kw`` for a
convolution, ``d_head`` (× query heads per group) for heads).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

COUPLINGS = ("joint", "sampler")
KINDS = ("neurons", "channels", "heads")

#: Rows a unit owns in one producer: ``((offset, per_unit), ...)``; unit ``u`` owns rows
#: ``offset + u·per_unit + [0, per_unit)`` of every segment (e.g. the q, k and v thirds
#: of a fused projection). One row per unit is ``((0, 1),)``.
Segments = tuple[tuple[int, int], ...]
ONE_ROW: Segments = ((0, 1),)


@dataclass(frozen=True)
class Heads:
    """The attention a head cut prunes.

    Attributes:
        module: path of the attention module whose head counts change with the cut.
        head_dim: ``d_head``, the width of one head's query, key and value.
        per_unit: query heads per unit (1, or the query heads sharing one key/value
            group with grouped-query attention).
    """

    module: str
    head_dim: int
    per_unit: int = 1

    def query_heads(self, units: int) -> int:
        """Query heads of ``units`` units."""
        return units * self.per_unit


@dataclass(frozen=True)
class Cut:
    """A set of units (neurons, channels or heads) that can be removed together.

    Attributes:
        producers: module paths of the layers whose output rows are removed (their rows
            are sliced, :meth:`producer_rows`); empty for a sampled cut.
        consumers: module paths of the layers that read the units (their input
            columns are rewritten).
        companions: per-channel modules on the way (BatchNorm, depthwise convolutions),
            sliced with the producers.
        between: the channelwise operations on the way, for reports.
        width: number of units at the cut.
        sampled: True when the consumer reads its kept units through a dynamic sampler
            (``index_select``) and the producers keep computing every unit.
        kind: ``"neurons"``, ``"channels"`` or ``"heads"`` (module doc).
        rows: per producer, the rows a unit owns (:data:`Segments`); empty when every
            producer has one row per unit.
        heads: for a head cut, the attention it prunes; else None.
    """

    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    companions: tuple[str, ...]
    between: tuple[str, ...]
    width: int
    sampled: bool = False
    kind: str = "neurons"
    rows: tuple[Segments, ...] = ()
    heads: Heads | None = None

    @property
    def name(self) -> str:
        """Named after what loses units: the attention module for heads, the first
        producer (in execution order) otherwise, ``"<consumer>:in"`` for a sampled cut."""
        if self.sampled:
            return f"{self.consumers[0]}:in"
        if self.heads is not None:
            return self.heads.module
        return self.producers[0]

    @property
    def joint(self) -> bool:
        """True when several layers write or read the units (a coupled group)."""
        return len(self.producers) > 1 or len(self.consumers) > 1

    def segments(self, index: int) -> Segments:
        """The rows a unit owns in producer ``index`` (:data:`Segments`)."""
        return self.rows[index] if self.rows else ONE_ROW

    def producer_rows(self, index: int, units: torch.Tensor) -> torch.Tensor:
        """Rows ``(len(units)·r,)`` of producer ``index`` owned by ``units`` (ascending
        ``(k,)`` int64), segment by segment: the new layer's output order."""
        units = units.to(torch.int64)
        pieces = [offset + (units.unsqueeze(1) * per + torch.arange(per, device=units.device)).reshape(-1)
                  for offset, per in self.segments(index)]
        return torch.cat(pieces)

    def parameters_per_unit(self, model: nn.Module) -> float:
        """Parameters of ``model`` that removing one unit of this cut removes.

        Its share of every producer's and companion's parameters (a weight row or output
        filter with its bias, a BatchNorm's affine entries; every row of a producer
        belongs to some unit) plus its columns in every consumer's weight (``out·s``),
        less the ``s`` entries counted twice in a layer that both writes and reads the
        units (a residual stream's own block). A sampled cut saves the consumer columns only.
        """
        owned = (*self.producers, *self.companions)
        rows = sum(p.numel() for path in owned for p in model.get_submodule(path).parameters())
        columns = sum(model.get_submodule(path).weight.numel() for path in self.consumers)
        both = sum(model.get_submodule(path).weight.numel() / self.width for path in self.producers
                   if path in self.consumers)
        return (rows + columns - both) / self.width


@dataclass(frozen=True)
class Skipped:
    """A layer whose output units cannot be removed, and why (for diagnostics)."""

    module: str
    reason: str
