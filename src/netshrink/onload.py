"""Onloading: compress a model whose weights do not fit in memory, one block at a time.

The model is built with its parameters on the meta device (:func:`parameters_on_meta`:
shapes only, buffers such as rotary frequencies computed as usual) and its weights stay
in safetensors files. Top-down chaining runs it block by block from cached activations
(:mod:`netshrink.propagate`); here a block is *materialised* from the checkpoint just
before it first runs — with a second copy as the original, whose outputs are the
targets — and *released* once the caches have moved past it: its compressed weights go
to the output folder and its parameters back to the meta device. Everything outside the
blocks (embeddings, final norm, head) stays in memory. Peak memory is about two blocks,
the layers outside them, one cut's statistics and the activation caches, whatever the
depth.

The output folder is a saved compression (``model.safetensors`` + ``manifest.json``,
and ``config.json`` for a Hugging Face model), written atomically: the blocks' shards
are merged into one file at the end by copying their bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .errors import InvalidInputError


@dataclass(frozen=True)
class Onload:
    """Where an onloaded compression reads its weights and writes its result.

    Attributes:
        checkpoint: a ``.safetensors`` file or a folder of them (a Hugging Face checkpoint,
            one file or shards), keyed by the model's state-dict names.
        output: the folder the compressed model is saved to (as :meth:`Compression.save`).
        memory_limit: bytes one block's weights (with the original's copy) may take; by
            default what the process's address-space limit (``ulimit -v``) leaves, or
            the machine's available memory.
        overwrite: replace an existing ``output``.
    """

    checkpoint: str | os.PathLike
    output: str | os.PathLike
    memory_limit: int | None = None
    overwrite: bool = False


@contextlib.contextmanager
def parameters_on_meta():
    """Build modules with every parameter on the meta device (no memory), buffers as
    usual::

        with netshrink.onload.parameters_on_meta():
            model = transformers.AutoModelForCausalLM.from_config(config)
    """
    register = nn.Module.register_parameter

    def on_meta(module, name, parameter):
        if parameter is not None and parameter.device.type != "meta":
            parameter = nn.Parameter(parameter.to("meta"), requires_grad=parameter.requires_grad)
        register(module, name, parameter)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def has_meta_parameters(model: nn.Module) -> bool:
    return any(p.device.type == "meta" for p in model.parameters())


class Checkpoint:
    """The tensors of a safetensors checkpoint, read one at a time.

    Only the files' headers are read up front; a tensor is read from its byte range when
    asked for, into its own memory (no memory-mapping of whole files, which would count
    against an address-space limit).
    """

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
        if not files or not all(file.is_file() for file in files):
            raise InvalidInputError(f"onload checkpoint {str(path)!r} holds no .safetensors file")
        self.file_of: dict[str, Path] = {}
        self._entries: dict[str, tuple[int, dict]] = {}
        for file in files:
            start, header = _header(file)
            for key, entry in header.items():
                self.file_of[key] = file
                self._entries[key] = (start, entry)

    def tensor(self, key: str) -> torch.Tensor:
        if key not in self.file_of:
            raise InvalidInputError(f"the onload checkpoint has no tensor {key!r}; it must hold the model's "
                                    "state dict under the same names")
        start, entry = self._entries[key]
        begin, end = entry["data_offsets"]
        data = bytearray(end - begin)
        with open(self.file_of[key], "rb") as handle:
            handle.seek(start + begin)
            handle.readinto(data)
        dtype = _DTYPES[entry["dtype"]]
        if not data:
            return torch.empty(entry["shape"], dtype=dtype)
        return torch.frombuffer(data, dtype=dtype).reshape(entry["shape"])


#: safetensors dtype names.
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def _header(file: Path) -> tuple[int, dict]:
    """``(offset of the data, {name: entry})`` of a safetensors file."""
    with open(file, "rb") as handle:
        size = struct.unpack("<Q", handle.read(8))[0]
        header = json.loads(handle.read(size))
    header.pop("__metadata__", None)
    return 8 + size, header


def materialise(model: nn.Module, prefix: str, checkpoint: Checkpoint, device: torch.device) -> None:
    """Give every meta parameter and persistent buffer of ``model`` under ``prefix`` (a
    module path, "" for all) its tensor from ``checkpoint``; tied parameters stay tied."""
    for names, tensor in _meta_tensors(model, prefix):
        _load(model, names, tensor, checkpoint, device)


def _load(model: nn.Module, names: list[str], tensor: torch.Tensor, checkpoint: Checkpoint,
          device: torch.device) -> None:
    key = next((name for name in names if name in checkpoint.file_of), names[0])
    value = checkpoint.tensor(key).to(device=device, dtype=tensor.dtype)
    if tuple(value.shape) != tuple(tensor.shape):
        raise InvalidInputError(f"the onload checkpoint's {key!r} has shape {tuple(value.shape)}, the model's "
                                f"{tuple(tensor.shape)}: the checkpoint is of another architecture")
    _assign(model, names, value)


def release(model: nn.Module, prefix: str) -> None:
    """Move every parameter and buffer of the module at ``prefix`` to the meta device."""
    module = model.get_submodule(prefix)
    for child in module.modules():
        for name, parameter in list(child._parameters.items()):
            if parameter is not None:
                child._parameters[name] = nn.Parameter(parameter.detach().to("meta"),
                                                       requires_grad=parameter.requires_grad)
        for name, buffer in list(child._buffers.items()):
            if buffer is not None:
                child._buffers[name] = buffer.to("meta")


def weight_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers (meta ones counted at their dtype)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def available_bytes() -> int:
    """Bytes the process may still allocate: its address-space limit minus its size, or
    the machine's available memory when there is no limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        return soft - _status_bytes("/proc/self/status", "VmSize")
    return _status_bytes("/proc/meminfo", "MemAvailable")


def _status_bytes(path: str, field: str) -> int:
    with open(path) as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{path} has no {field}")


def _meta_tensors(model: nn.Module, prefix: str):
    """``(names, tensor)`` per distinct meta tensor under ``prefix`` (all its tied names)."""
    found: dict[int, tuple[list[str], torch.Tensor]] = {}
    persistent = set(model.state_dict(keep_vars=True))
    items = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for name, tensor in items:
        if tensor.device.type != "meta" or name not in persistent:
            continue
        if prefix and not name.startswith(prefix + "."):
            continue
        found.setdefault(id(tensor), ([], tensor))[0].append(name)
    return list(found.values())


def _assign(model: nn.Module, names: list[str], value: torch.Tensor) -> None:
    shared = None
    for name in names:
        path, _, leaf = name.rpartition(".")
        module = model.get_submodule(path)
        if leaf in module._parameters:
            if shared is None:
                shared = nn.Parameter(value, requires_grad=module._parameters[leaf].requires_grad)
            module._parameters[leaf] = shared
        else:
            module._buffers[leaf] = value


class Residency:
    """Which blocks of the model being compressed, and of its original, are in memory.

    ``ensure(start, stop)`` materialises blocks ``start..stop-1`` (checking the memory
    first); ``retire(position)`` writes the blocks before ``position`` to the output
    folder and releases them; ``finish()`` writes every block not yet written.
    """

    def __init__(self, onload: Onload, folder: Path, model: nn.Module, reference: nn.Module | None, stages):
        self.onload = onload
        self.folder = Path(folder)
        self.model = model
        self.reference = reference
        self.stages = stages
        self.checkpoint = Checkpoint(onload.checkpoint)
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        self.loaded: set[int] = set()
        self.written: set[int] = set()
        for names, tensor in _meta_tensors(model, ""):  # the layers outside the blocks, once
            if stages.stage_of(names[0]) is None:
                _load(model, names, tensor, self.checkpoint, self.device)
        if reference is not None:  # they are never changed: the original shares them
            for names, _ in _meta_tensors(reference, ""):
                if stages.stage_of(names[0]) is None:
                    _assign(reference, names, _tensor(model, names[0]))

    def ensure(self, start: int, stop: int) -> None:
        for index in range(start, stop):
            if index in self.loaded:
                continue
            path = self.stages.path(index)
            copies = 2 if self.reference is not None else 1
            needed = copies * weight_bytes(self.model.get_submodule(path))
            limit = self.onload.memory_limit if self.onload.memory_limit is not None else available_bytes()
            if needed > limit:
                raise InvalidInputError(
                    f"block {path!r} needs {needed:,} bytes for its weights{' and the original copy' if copies == 2 else ''}"
                    f", but only {limit:,} bytes remain for it under the memory limit; give the process more "
                    "memory (ulimit -v, Onload.memory_limit) or compress on a machine with more"
                )
            materialise(self.model, path, self.checkpoint, self.device)
            if self.reference is not None:
                materialise(self.reference, path, self.checkpoint, self.device)
            self.loaded.add(index)

    def retire(self, position: int) -> None:
        for index in sorted(i for i in self.loaded if i < position):
            self._write(index)

    def finish(self) -> None:
        for index in range(len(self.stages)):
            if index not in self.written:
                if index not in self.loaded:
                    materialise(self.model, self.stages.path(index), self.checkpoint, self.device)
                    self.loaded.add(index)
                self._write(index)

    def _write(self, index: int) -> None:
        path = self.stages.path(index)
        block = self.model.get_submodule(path)
        state = {key: tensor.detach().contiguous().cpu() for key, tensor in block.state_dict(prefix=path + ".").items()}
        save_file(state, str(self.folder / f"block-{index:05d}.safetensors"))
        release(self.model, path)
        if self.reference is not None:
            release(self.reference, path)
        self.loaded.discard(index)
        self.written.add(index)



def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    path, _, leaf = name.rpartition(".")
    module = model.get_submodule(path)
    return module._parameters[leaf] if leaf in module._parameters else module._buffers[leaf]


def merge_safetensors(shards: list[Path], target: Path, metadata: dict | None = None) -> None:
    """Write the tensors of ``shards`` into one safetensors file ``target`` by copying
    their bytes (memory: one copy buffer), then delete the shards."""
    headers = [(shard, *_header(shard)) for shard in shards]
    order = []
    merged, offset = {}, 0
    for shard, start, header in headers:
        for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            begin, end = entry["data_offsets"]
            merged[name] = {"dtype": entry["dtype"], "shape": entry["shape"], "data_offsets": [offset, offset + end - begin]}
            order.append((shard, start + begin, end - begin))
            offset += end - begin
    if metadata:
        merged["__metadata__"] = metadata
    encoded = json.dumps(merged, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(target, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for shard, begin, length in order:
            with open(shard, "rb") as handle:
                handle.seek(begin)
                while length:
                    chunk = handle.read(min(length, 1 << 26))
                    out.write(chunk)
                    length -= len(chunk)
    for shard in shards:
        os.remove(shard)
