"""Linear and Conv2d layers seen as matrices acting on groups of input columns.

Every layer that can lose input units (neurons, channels or heads) is a matrix
``W: (out, width·s)`` applied to rows of input columns, with unit ``c`` owning the
contiguous columns ``[c·s, (c+1)·s)`` (Robin §2.5):

- ``nn.Linear`` reading neurons: ``s = 1``; reading the context vectors of attention
  heads: ``s = d_head`` (times the query heads of one key/value group);
- a transposed linear layer (``Conv1D`` of GPT-2: ``y = x W + b`` with ``W: (in, out)``)
  exactly like ``nn.Linear``; it is recognised by its shape, not imported;
- ``nn.Linear`` reading flattened feature maps ``(N, C·h·w)``: ``s = h·w``, a channel's
  ``h·w`` features are its group;
- ``nn.Conv2d`` (``groups=1``, zero padding): the convolution is a matrix product on
  unfolded patches, ``s = kh·kw``, for any stride, padding and dilation.

This module converts between the layer and that matrix, produces the input rows, and
builds the new, smaller layers. It knows nothing about graphs or methods.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UnsupportedCutError

# Patch rows are produced in chunks of at most this many float64 elements (~128 MiB).
_CHUNK_ELEMENTS = 1 << 24
#: Rows of one chunk of :func:`input_rows`: the depth of each float32 product's sums.
PRODUCT_ROWS = 4096


def is_transposed_linear(module: nn.Module) -> bool:
    """True for GPT-2's ``Conv1D``: ``y = x @ weight + bias``, ``weight: (nx, nf)``.

    Recognised by its class name and shape so the core never imports ``transformers``.
    """
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.ndim == 2
            and tuple(weight.shape) == (getattr(module, "nx", None), getattr(module, "nf", None)))


def is_linear(module: nn.Module) -> bool:
    """``nn.Linear`` or a transposed linear layer (:func:`is_transposed_linear`)."""
    return type(module) is nn.Linear or is_transposed_linear(module)


def is_layer(module: nn.Module) -> bool:
    """True for the layers netshrink rewrites: plain ``nn.Linear`` (or ``Conv1D``) and ``nn.Conv2d``."""
    return type(module) is nn.Conv2d or is_linear(module)


def is_depthwise(module: nn.Module) -> bool:
    """A depthwise ``nn.Conv2d`` (``groups = in = out channels``): channel ``c`` of its output
    depends on channel ``c`` of its input only, so it is sliced with its channels."""
    return (type(module) is nn.Conv2d and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


def companion_width(module: nn.Module) -> int:
    """Channels of a per-channel companion (BatchNorm or depthwise convolution)."""
    return module.out_channels if type(module) is nn.Conv2d else module.num_features


def unsupported_reason(module: nn.Module) -> str | None:
    """Why ``module`` cannot have its inputs or outputs rewritten, or None if it can."""
    if type(module) is nn.Conv2d:
        if module.groups != 1:
            return f"it is a grouped convolution (groups={module.groups}); only groups=1 is supported"
        if module.padding_mode != "zeros":
            return f"its padding_mode is {module.padding_mode!r}; only zero padding is supported"
        if isinstance(module.padding, str):
            return f"its padding is {module.padding!r}; give explicit integer padding"
        return None
    if is_linear(module):
        return None
    return f"{type(module).__name__} is not a plain nn.Linear or nn.Conv2d"


def in_units(module: nn.Module) -> int:
    """Size of the input dimension that is indexed by units (features or channels)."""
    if is_transposed_linear(module):
        return module.nx
    return module.in_features if type(module) is nn.Linear else module.in_channels


def out_units(module: nn.Module) -> int:
    """Number of output neurons or channels."""
    if is_transposed_linear(module):
        return module.nf
    return module.out_features if type(module) is nn.Linear else module.out_channels


def group_size(module: nn.Module, width: int) -> int:
    """Input columns per unit ``s`` when ``module`` reads ``width`` units (see module doc)."""
    if type(module) is nn.Conv2d:
        if module.in_channels != width:
            raise UnsupportedCutError(
                f"a Conv2d with {module.in_channels} input channels reads a tensor of {width} channels"
            )
        kh, kw = module.kernel_size
        return kh * kw
    inputs = in_units(module)
    if inputs % width:
        raise UnsupportedCutError(
            f"an nn.Linear with {inputs} inputs reads {width} channels: the groups "
            f"don't divide the input ({inputs} is not a multiple of {width})"
        )
    return inputs // width


def weight_matrix(module: nn.Module, dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """The layer's weights as ``(out, in·s)`` in float64, columns grouped by input unit
    (``dtype=None``: in their own dtype, a view with no copy)."""
    weight = module.weight.detach() if dtype is None else module.weight.detach().to(dtype)
    if is_transposed_linear(module):
        return weight.T
    return weight.reshape(weight.shape[0], -1)


def input_rows(module: nn.Module, x: torch.Tensor) -> Iterator[torch.Tensor]:
    """Rows ``(r, in·s)`` of the layer's input columns: ``y_row = W x_row`` (bias aside).

    Linear: every leading position is a row. Conv2d: every output position of every
    image is a row holding its unfolded patch (channel-major, as ``weight_matrix``).
    Yields chunks of at most :data:`PRODUCT_ROWS` rows (whole images for a
    convolution, at least one), in float32, or float64 for a float64 input, so memory
    stays bounded for large feature maps and each chunk's products stay accurate.
    """
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if is_linear(module):
        rows = x.reshape(-1, x.shape[-1])
        for start in range(0, rows.shape[0], PRODUCT_ROWS):
            yield rows[start:start + PRODUCT_ROWS].to(dtype)
        return
    columns = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
    out_h, out_w = _conv_output_size(module, x.shape[-2:])
    images = max(1, min(_CHUNK_ELEMENTS // max(1, columns * out_h * out_w), PRODUCT_ROWS // max(1, out_h * out_w)))
    for start in range(0, x.shape[0], images):
        patches = F.unfold(
            x[start:start + images].to(dtype),
            module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride,
        )  # (n, C·kh·kw, L)
        yield patches.transpose(1, 2).reshape(-1, columns)


def unit_rows(x: torch.Tensor, module: nn.Module, width: int) -> torch.Tensor:
    """The consumer input as rows ``(r, width)``: one column per unit (neuron/channel).

    Linear on neurons: leading positions are rows; Linear on flattened maps
    ``(N, width·s)``: each of the ``s`` positions of each sample is a row; Conv2d:
    each pixel of each image is a row.
    """
    if type(module) is nn.Conv2d:
        return x.movedim(1, -1).reshape(-1, width)
    s = in_units(module) // width
    if s == 1:
        return x.reshape(-1, width)
    return x.reshape(-1, width, s).transpose(1, 2).reshape(-1, width)


def _conv_output_size(module: nn.Conv2d, size) -> tuple[int, int]:
    out = []
    for n, k, p, d, st in zip(size, module.kernel_size, module.padding, module.dilation, module.stride):
        out.append((n + 2 * p - d * (k - 1) - 1) // st + 1)
    return out[0], out[1]


def with_input_weights(module: nn.Module, matrix: torch.Tensor, units: int) -> nn.Module:
    """A copy of ``module`` reading ``units`` input units, with weights ``matrix: (out, units·s)``.

    Bias and every other setting are kept.
    """
    _require_layer(module)
    out = out_units(module)
    if matrix.ndim != 2 or matrix.shape[0] != out:
        raise UnsupportedCutError(
            f"new input weights of shape {tuple(matrix.shape)} do not fit a layer with {out} outputs"
        )
    if is_transposed_linear(module):
        new = _transposed_like(module, inputs=matrix.shape[1], outputs=out)
        weight = matrix.T
    elif type(module) is nn.Linear:
        new = nn.Linear(matrix.shape[1], out, bias=module.bias is not None,
                        device=module.weight.device, dtype=module.weight.dtype)
        weight = matrix
    else:
        new = _conv_like(module, in_channels=units, out_channels=out)
        weight = matrix.reshape(out, units, *module.kernel_size)
    with torch.no_grad():
        new.weight.copy_(weight.to(dtype=new.weight.dtype, device=new.weight.device))
        if module.bias is not None:
            new.bias.copy_(module.bias)
    return new


def keep_outputs(module: nn.Module, kept: torch.Tensor) -> nn.Module:
    """A copy of ``module`` computing only its output units ``kept`` (rows and bias)."""
    _require_layer(module)
    kept = kept.to(module.weight.device)
    if is_transposed_linear(module):
        new = _transposed_like(module, inputs=module.nx, outputs=len(kept))
        with torch.no_grad():
            new.weight.copy_(module.weight.index_select(1, kept))
            new.bias.copy_(module.bias.index_select(0, kept))
        return new
    if type(module) is nn.Linear:
        new = nn.Linear(module.in_features, len(kept), bias=module.bias is not None,
                        device=module.weight.device, dtype=module.weight.dtype)
    else:
        new = _conv_like(module, in_channels=module.in_channels, out_channels=len(kept))
    with torch.no_grad():
        new.weight.copy_(module.weight.index_select(0, kept))
        if module.bias is not None:
            new.bias.copy_(module.bias.index_select(0, kept))
    return new


def keep_channels(norm: nn.Module, kept: torch.Tensor) -> nn.Module:
    """A copy of a per-channel companion (BatchNorm, depthwise conv) restricted to ``kept``."""
    if is_depthwise(norm):
        kept = kept.to(norm.weight.device)
        new = nn.Conv2d(len(kept), len(kept), norm.kernel_size, stride=norm.stride, padding=norm.padding,
                        dilation=norm.dilation, groups=len(kept), bias=norm.bias is not None,
                        padding_mode=norm.padding_mode, device=norm.weight.device, dtype=norm.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(norm.weight.index_select(0, kept))
            if norm.bias is not None:
                new.bias.copy_(norm.bias.index_select(0, kept))
        return new
    if type(norm) not in (nn.BatchNorm1d, nn.BatchNorm2d):
        raise UnsupportedCutError(f"cannot slice channels of {type(norm).__name__}")
    reference = next(iter(norm.buffers()), None) if not norm.affine else norm.weight
    device = reference.device if reference is not None else None
    new = type(norm)(len(kept), eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                     track_running_stats=norm.track_running_stats, device=device,
                     dtype=reference.dtype if reference is not None else None)
    kept = kept.to(device) if device is not None else kept
    with torch.no_grad():
        if norm.affine:
            new.weight.copy_(norm.weight.index_select(0, kept))
            new.bias.copy_(norm.bias.index_select(0, kept))
        if norm.track_running_stats:
            new.running_mean.copy_(norm.running_mean.index_select(0, kept))
            new.running_var.copy_(norm.running_var.index_select(0, kept))
            new.num_batches_tracked.copy_(norm.num_batches_tracked)
    return new


def _conv_like(module: nn.Conv2d, in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels, out_channels, module.kernel_size, stride=module.stride,
        padding=module.padding, dilation=module.dilation, bias=module.bias is not None,
        device=module.weight.device, dtype=module.weight.dtype,
    )


def _transposed_like(module: nn.Module, inputs: int, outputs: int) -> nn.Module:
    """An empty layer of ``module``'s class (GPT-2's ``Conv1D(nf, nx)``) with new sizes."""
    new = type(module)(outputs, inputs)
    return new.to(device=module.weight.device, dtype=module.weight.dtype)


def _require_layer(module: nn.Module) -> None:
    reason = unsupported_reason(module)
    if reason is not None:
        raise UnsupportedCutError(f"cannot rewrite this layer: {reason}")
