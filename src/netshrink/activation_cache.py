"""A bounded store of calibration activations, one entry per calibration batch.

Sequential propagation (:mod:`netshrink.propagate`) keeps, for every calibration batch,
the values that cross the current boundary of the model (a block's input, or the live
tensors of a traced graph) so the next block can run from them instead of from the
model's inputs. The store holds tensors in memory up to ``memory_limit`` bytes; past it
they are written to memory-mapped files in ``directory`` (the page cache then decides
what stays resident), so the cache is bounded by the disk, not by RAM.

Floating tensors are kept in their own dtype (float32 for a float32 model: replaying a
block on them is exact) unless ``dtype`` asks for less (``torch.bfloat16`` halves the
bytes and rounds every stored value).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .errors import InvalidInputError

#: Bytes of activations held in memory before the cache spills to memory-mapped files.
DEFAULT_MEMORY_LIMIT = 2 * 1024**3


@dataclass(frozen=True)
class CacheOptions:
    """How sequential propagation stores activations.

    Attributes:
        dtype: storage dtype of floating tensors (None: their own; ``torch.bfloat16`` or
            ``torch.float16`` to halve the bytes at a rounding cost).
        memory_limit: bytes held in memory; beyond it tensors go to memory-mapped files.
        directory: where spilled files go (a fresh temporary folder inside it, removed
            afterwards); default: the system's temporary directory.
    """

    dtype: torch.dtype | None = None
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    directory: str | os.PathLike | None = None

    def __post_init__(self):
        if self.dtype is not None and (not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point):
            raise InvalidInputError(f"cache dtype must be a floating torch.dtype (e.g. torch.bfloat16), got {self.dtype!r}")
        if isinstance(self.memory_limit, bool) or not isinstance(self.memory_limit, int) or self.memory_limit < 0:
            raise InvalidInputError(f"cache memory_limit must be a non-negative number of bytes, got {self.memory_limit!r}")
        if self.directory is not None:
            check_writable(self.directory)


def check_writable(directory: str | os.PathLike) -> None:
    """Raise :class:`InvalidInputError` unless ``directory`` is an existing writable folder."""
    path = os.fspath(directory)
    if not os.path.isdir(path):
        raise InvalidInputError(f"activation cache directory {path!r} does not exist; create it or pass another cache_dir")
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise InvalidInputError(
            f"activation cache directory {path!r} is not writable ({exc.strerror}); pass a writable cache_dir"
        ) from exc


class ActivationCache:
    """Per-batch values (nested tuples/lists/dicts of tensors and plain values).

    ``put(index, value)`` replaces the entry of batch ``index``; ``get(index, device)``
    returns it with every tensor in its original dtype on ``device`` (a spilled tensor is
    read from its memory-mapped file). ``close()`` deletes the files.
    """

    def __init__(self, options: CacheOptions | None = None):
        self.options = options or CacheOptions()
        self._entries: dict[int, object] = {}
        self._files: dict[int, list[str]] = {}
        self._resident: dict[int, int] = {}
        self.resident_bytes = 0
        self.spilled_bytes = 0
        self._folder: str | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def indices(self) -> Iterator[int]:
        return iter(sorted(self._entries))

    def put(self, index: int, value) -> None:
        self._drop(index)
        files: list[str] = []
        resident = [0]

        def store(tensor: torch.Tensor) -> _Stored:
            original = tensor.dtype
            if tensor.is_floating_point() and self.options.dtype is not None:
                tensor = tensor.to(self.options.dtype)
            size = tensor.numel() * tensor.element_size()
            if self.resident_bytes + resident[0] + size <= self.options.memory_limit or size == 0:
                resident[0] += size
                return _Stored(tensor.detach(), original)
            return _Stored(self._spill(tensor, files), original)

        self._entries[index] = _map_tensors(value, store)
        self._files[index] = files
        self._resident[index] = resident[0]
        self.resident_bytes += resident[0]

    def get(self, index: int, device: torch.device | None = None):
        def restore(value):
            if isinstance(value, _Stored):
                return value.tensor.to(device=device or value.tensor.device, dtype=value.dtype)
            return value

        return _map_leaves(self._entries[index], restore)

    def close(self) -> None:
        for index in list(self._entries):
            self._drop(index)
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def _drop(self, index: int) -> None:
        self._entries.pop(index, None)
        self.resident_bytes -= self._resident.pop(index, 0)
        for file in self._files.pop(index, []):
            self.spilled_bytes -= os.path.getsize(file)
            os.remove(file)

    def _spill(self, tensor: torch.Tensor, files: list[str]) -> torch.Tensor:
        if self._folder is None:
            if self.options.directory is not None:
                check_writable(self.options.directory)
            self._folder = tempfile.mkdtemp(prefix="netshrink-activations-", dir=self.options.directory)
        handle, path = tempfile.mkstemp(dir=self._folder, suffix=".bin")
        os.close(handle)
        size = tensor.numel() * tensor.element_size()
        with open(path, "r+b") as stream:
            stream.truncate(size)
        mapped = torch.from_file(path, shared=True, size=tensor.numel(), dtype=tensor.dtype).view(tensor.shape)
        mapped.copy_(tensor)
        files.append(path)
        self.spilled_bytes += size
        return mapped


@dataclass(frozen=True)
class _Stored:
    tensor: torch.Tensor  # in the storage dtype, in memory or memory-mapped
    dtype: torch.dtype    # the dtype it is returned in


def _map_tensors(value, function):
    """``value`` with ``function`` applied to every tensor in nested tuples/lists/dicts."""
    return _map_leaves(value, lambda leaf: function(leaf) if isinstance(leaf, torch.Tensor) else leaf)


def _map_leaves(value, function):
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_map_leaves(item, function) for item in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_map_leaves(item, function) for item in value)
    if isinstance(value, dict):
        return {key: _map_leaves(item, function) for key, item in value.items()}
    return function(value)
