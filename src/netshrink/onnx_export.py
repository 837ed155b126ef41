"""ONNX export of a (compressed) model, and a check that onnxruntime computes the same.

>>> from netshrink.onnx_export import export_onnx, check_onnx, file_size
>>> path = export_onnx(result.model, calibration[:64], "small.onnx")
>>> check_onnx(path, result.model, [calibration[:1], calibration[64:320]])   # max relative error
>>> file_size(path)                                                            # bytes

The exporter is ``torch.onnx.export(..., dynamo=True)``: the model is captured with
``torch.export`` and translated by onnxscript. It exports every model of the zoo, their
compressed versions (samplers included) and Hugging Face encoders such as BERT and
MiniLM, so the TorchScript exporter is not used.

Inputs are named like the batch: a tensor batch is one input ``input``; a keyword batch
(a tokenizer's output, ``model(**batch)``) gives one input per tensor key, in the
batch's order, under the key's name (non-tensor values are fixed into the graph). Axis
0 of every input is the dynamic ``batch`` axis; in a keyword batch, axis 1 of every
2-dimensional input ``(B, T)`` is the dynamic ``sequence`` axis as well. The graph has
one output, ``output``: the model's output when it is a tensor, otherwise its first
tensor (a Hugging Face ``ModelOutput`` gives its first field, ``last_hidden_state`` of
an encoder, ``logits`` of a classifier or language model; a tuple its first element).

Needs the ``onnx`` extra (``pip install 'netshrink[onnx]'``: onnx, onnxscript and
onnxruntime); the rest of netshrink never imports them.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import atomic_write_bytes
from .errors import (
    InvalidInputError,
    MissingDependencyError,
    OutputExistsError,
    UntraceableModelError,
)

__all__ = [
    "MissingDependencyError",
    "check_onnx",
    "evaluating",
    "export_onnx",
    "feeds",
    "file_size",
    "first_tensor",
    "reference_output",
    "session",
]

#: Name of the single tensor input, and of the graph's output.
INPUT_NAME = "input"
OUTPUT_NAME = "output"
#: Names of the dynamic axes in the exported graph.
BATCH_AXIS = "batch"
SEQUENCE_AXIS = "sequence"
#: A protobuf message (one .onnx file without external data) is limited to 2 GiB.
_PROTO_LIMIT = 2**31 - 1


def _require(*modules: str) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise MissingDependencyError(
                f"ONNX export and onnxruntime need the onnx extra ({name} is not installed): "
                "pip install 'netshrink[onnx]'"
            ) from exc


# --------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------


def _inputs(batch):
    """The model's inputs of one batch: a tensor or a mapping (``(inputs, labels)`` -> inputs)."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if isinstance(batch, Mapping):
        if not any(isinstance(value, torch.Tensor) for value in batch.values()):
            raise InvalidInputError(
                f"a keyword batch for ONNX needs tensors; got keys {sorted(batch)} without one "
                "(a tokenizer's output needs return_tensors='pt')"
            )
        return dict(batch)
    if not isinstance(batch, torch.Tensor):
        raise InvalidInputError(
            f"a batch is a tensor, an (inputs, labels) tuple or a mapping of keyword tensors, "
            f"got {type(batch).__name__}"
        )
    if batch.ndim == 0:
        raise InvalidInputError("a batch tensor needs a batch dimension; got a 0-dimensional tensor")
    return batch


def _input_names(batch) -> list[str]:
    if isinstance(batch, Mapping):
        return [key for key, value in batch.items() if isinstance(value, torch.Tensor)]
    return [INPUT_NAME]


def feeds(batch) -> dict[str, np.ndarray]:
    """``{input name: array}`` of one batch, as the exported graph takes it."""
    batch = _inputs(batch)
    if isinstance(batch, Mapping):
        return {key: value.detach().cpu().numpy() for key, value in batch.items() if isinstance(value, torch.Tensor)}
    return {INPUT_NAME: batch.detach().cpu().numpy()}


def _widened(batch):
    """``batch`` with every size-1 dynamic axis repeated to 2.

    ``torch.export`` specialises an axis of size 1 to a constant, so an example of one
    sample (or one token) would export a graph for that size only. Only the shapes of
    the example matter to the export; repeating a sample keeps the values valid.
    """
    if isinstance(batch, Mapping):
        out = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and value.ndim >= 1:
                if value.shape[0] == 1:
                    value = value.repeat_interleave(2, dim=0)
                if value.ndim == 2 and value.shape[1] == 1:
                    value = value.repeat_interleave(2, dim=1)
            out[key] = value
        return out
    return batch.repeat_interleave(2, dim=0) if batch.shape[0] == 1 else batch


def first_tensor(output) -> torch.Tensor:
    """The tensor an exported graph returns for ``output`` (see the module docstring)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):  # a ModelOutput is an ordered mapping of its non-None fields
        items = output.values()
    elif isinstance(output, (tuple, list)):
        items = output
    else:
        items = ()
    for item in items:
        try:
            return first_tensor(item)
        except InvalidInputError:
            continue
    raise InvalidInputError(f"the model returned {type(output).__name__} without a tensor; nothing to export")


class _Exported(nn.Module):
    """``model`` called as netshrink calls it, returning its first output tensor.

    Keyword inputs become positional (in ``names`` order) so that each is one named
    graph input.
    """

    def __init__(self, model: nn.Module, names: list[str], fixed: dict | None):
        super().__init__()
        self.model = model
        self.names = names
        self.fixed = fixed  # None: the model takes one tensor

    def forward(self, *args):
        if self.fixed is None:
            return first_tensor(self.model(*args))
        return first_tensor(self.model(**dict(zip(self.names, args)), **self.fixed))


def _dynamic_shapes(batch) -> tuple:
    dim = torch.export.Dim.DYNAMIC
    if isinstance(batch, Mapping):
        return tuple({0: dim, 1: dim} if value.ndim == 2 else {0: dim}
                     for value in batch.values() if isinstance(value, torch.Tensor))
    return ({0: dim},)


def _name_axes(proto, batch) -> None:
    """Rename the exporter's symbols (``s0``, ``s17``...) of the dynamic axes to
    ``batch`` and ``sequence`` throughout the graph's inputs, outputs and value infos.

    ``torch.export`` may give two inputs' batch axes different symbols (it does for
    BERT's ``attention_mask``); they get the same name, as a valid batch has them equal.
    """
    inputs = {value.name: value for value in proto.graph.input}
    rename = {}
    for name in _input_names(batch):
        value = inputs.get(name)
        if value is None:
            continue
        dims = value.type.tensor_type.shape.dim
        axes = ((0, BATCH_AXIS), (1, SEQUENCE_AXIS)) if isinstance(batch, Mapping) else ((0, BATCH_AXIS),)
        for axis, label in axes:
            symbol = dims[axis].dim_param if axis < len(dims) else ""
            if symbol and rename.setdefault(symbol, label) != label:
                return  # one symbol on both kinds of axis: keep the exporter's names
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        if not value.type.HasField("tensor_type"):
            continue
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress lines, warnings and registry log messages."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """Run the block with every module of ``model`` in eval mode; the flags are restored."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def _device(model: nn.Module) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


# --------------------------------------------------------------------------------------
# export, check
# --------------------------------------------------------------------------------------


def export_onnx(model: nn.Module, example, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Export ``model`` to the ONNX file ``path`` and return the path.

    Args:
        model: any module ``torch.export`` can capture (the zoo, compressed models,
            Hugging Face encoders). Never modified: a CPU copy in eval mode is exported.
        example: one batch as netshrink takes it: a tensor ``(B, ...)``, an ``(inputs,
            labels)`` tuple (the inputs are used) or a mapping of keyword tensors (a
            tokenizer's output: ``input_ids``, ``attention_mask``, ``token_type_ids``,
            the model is called as ``model(**example)``). Only its shapes and dtypes
            matter; the batch axis, and for keyword inputs the sequence axis of every
            ``(B, T)`` tensor, are dynamic in the graph, so any batch size and sequence
            length run (a size-1 axis of the example is widened for the capture).
        path: the ``.onnx`` file to write (weights inside the file, hence below 2 GiB).
        overwrite: replace an existing file.

    The file is written atomically (a temporary file beside ``path``, then a rename:
    :func:`netshrink.atomic.atomic_write_bytes`). The graph's output is the model's
    output or its first tensor (``last_hidden_state`` / ``logits`` of a Hugging Face
    ``ModelOutput``); see the module docstring for the input and axis names.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False (before any work).
        MissingDependencyError: onnx or onnxscript is not installed.
        UntraceableModelError: ``torch.onnx.export`` could not capture the model.
        InvalidInputError: a bad example, a missing folder, or a model above 2 GiB.
    """
    path = Path(path)
    if path.is_dir():
        raise InvalidInputError(f"cannot write the ONNX file {path}: a folder of that name exists")
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} already exists; refusing to overwrite it. Choose another path, delete it, "
            "or pass overwrite=True."
        )
    if not path.parent.is_dir():
        raise InvalidInputError(f"cannot write {path}: the folder {path.parent} does not exist; create it first.")
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _require("onnx", "onnxscript")
    example = _widened(_inputs(example))
    example = {key: value.detach().cpu() if isinstance(value, torch.Tensor) else value
               for key, value in example.items()} if isinstance(example, Mapping) else example.detach().cpu()
    names = _input_names(example)
    if isinstance(example, Mapping):
        fixed = {key: value for key, value in example.items() if not isinstance(value, torch.Tensor)}
        args = tuple(example[name] for name in names)
    else:
        fixed, args = None, (example,)
    clone = copy.deepcopy(model).cpu().eval()
    wrapper = _Exported(clone, names, fixed).eval()
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                wrapper, args, None, dynamo=True, input_names=names, output_names=[OUTPUT_NAME],
                dynamic_shapes=(_dynamic_shapes(example),), verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; name the model and the first line
        summary = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UntraceableModelError(
            f"torch.onnx.export (dynamo) could not export {type(model).__name__}: {summary}. Check that "
            "torch.export.export(model, ...) works on this model and example."
        ) from exc
    proto = program.model_proto
    _name_axes(proto, example)
    if proto.ByteSize() > _PROTO_LIMIT:
        raise InvalidInputError(
            f"{type(model).__name__} needs {proto.ByteSize() / 2**30:.1f} GiB as ONNX, above the 2 GiB of one "
            ".onnx file; export it with torch.onnx.export(..., external_data=True) instead"
        )
    del program, wrapper, clone
    return atomic_write_bytes(path, proto.SerializeToString(), overwrite=overwrite)


def session(path: str | os.PathLike, *, threads: int | None = None):
    """An onnxruntime ``InferenceSession`` of ``path`` on the CPU.

    ``threads`` fixes intra- and inter-op threads (sequential execution); None leaves
    onnxruntime's defaults.
    """
    _require("onnxruntime")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _session_feeds(sess, batch) -> dict[str, np.ndarray]:
    given = feeds(batch)
    wanted = [value.name for value in sess.get_inputs()]
    missing = [name for name in wanted if name not in given]
    if missing:
        raise InvalidInputError(
            f"the ONNX graph takes inputs {wanted} but the batch has {sorted(given)}; missing {missing}"
        )
    return {name: given[name] for name in wanted}  # inputs the exporter dropped as unused are left out


def reference_output(model: nn.Module, batch) -> torch.Tensor:
    """The tensor the exported graph should return for ``batch``, computed by ``model``
    (eval mode, inference mode, on the model's device; returned on the CPU)."""
    batch = _inputs(batch)
    device = _device(model)
    if isinstance(batch, Mapping):
        batch = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
    else:
        batch = batch.to(device)
    with evaluating(model), torch.inference_mode():
        output = model(**batch) if isinstance(batch, Mapping) else model(batch)
        return first_tensor(output).detach().cpu()


def check_onnx(path: str | os.PathLike, model: nn.Module, batches: Sequence) -> float:
    """The largest relative difference between onnxruntime and PyTorch on ``batches``.

    Runs ``path`` with onnxruntime (CPUExecutionProvider) and ``model`` (eval mode,
    restored afterwards) on every batch, and returns the maximum over batches of
    ``‖ort − torch‖_F / ‖torch‖_F`` of the first output (the absolute ``‖ort − torch‖_F``
    for an all-zero output). Batches may have other batch sizes and sequence lengths
    than the export example, which checks the dynamic axes.

    Raises:
        MissingDependencyError: onnxruntime is not installed.
        InvalidInputError: no batches, a batch without the graph's inputs, or an output
            of another shape than the model's.
    """
    if isinstance(batches, (torch.Tensor, Mapping)):
        batches = [batches]
    batches = list(batches)
    if not batches:
        raise InvalidInputError("check_onnx needs at least one batch")
    sess = session(path)
    worst = 0.0
    for index, batch in enumerate(batches):
        got = torch.from_numpy(np.asarray(sess.run(None, _session_feeds(sess, batch))[0]))
        want = reference_output(model, batch)
        if tuple(got.shape) != tuple(want.shape):
            raise InvalidInputError(
                f"batch {index}: onnxruntime returned shape {tuple(got.shape)}, PyTorch {tuple(want.shape)}; "
                "the graph was exported for other shapes"
            )
        got, want = got.double(), want.double()
        difference = float((got - want).norm())
        scale = float(want.norm())
        error = difference / scale if scale > 0 else difference
        if math.isnan(error):
            return error  # a NaN on either side: no agreement to report
        worst = max(worst, error)
    return worst


def file_size(path: str | os.PathLike) -> int:
    """Size of the file ``path`` in bytes."""
    return Path(path).stat().st_size
