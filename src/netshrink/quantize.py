"""Per-channel int8 weights on top of a compression (Robin §3.1: a model's size is its bytes).

Every ``nn.Linear``, ``nn.Conv2d`` and GPT-2 ``Conv1D`` of the model — the thin layers of
a factorisation and the layer inside a sampler included — is replaced by a layer that
stores its weight as int8 with one float scale per output channel,

    W ≈ s ⊙ Q,   s_o = max_j |W_oj| / 127,   Q_oj = round(W_oj / s_o) ∈ [−127, 127],

and computes with ``s ⊙ Q`` in the input's dtype (weight-only quantization: activations
stay in floating point, so any model runs unchanged on any device and exports to ONNX).
The weight of an ``out × d`` layer then takes ``out·d`` bytes instead of ``4·out·d``, plus
``out`` scales. Biases, norms and embeddings are left as they are, and so is a layer whose
output is the network's output (a classifier's last layer, :func:`output_layers`): its rows
are the outputs themselves, and a refitted output layer can hold large weights that cancel
— on mlp7 compressed to 10% of its parameters, the int8 classifier alone cost 1.9 points of
accuracy, every other layer at most 0.2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InvalidInputError
from .layers import is_transposed_linear

SCHEMES = ("int8",)


class Int8Linear(nn.Module):
    """``y = x (s ⊙ Q)ᵀ + b`` with ``Q: (out, in)`` int8 and ``s: (out, 1)`` (module doc)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=torch.float32, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=torch.int8, device=device),
                                   requires_grad=False)
        self.register_buffer("scale", torch.ones(out_features, 1, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype) * self.scale.to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Conv2d(nn.Module):
    """A ``Conv2d`` with int8 weights ``Q: (out, in/groups, kh, kw)`` and scales ``s: (out, 1, 1, 1)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, dtype=torch.float32, device=None):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels // groups, *self.kernel_size,
                                               dtype=torch.int8, device=device), requires_grad=False)
        self.register_buffer("scale", torch.ones(out_channels, 1, 1, 1, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out_channels, dtype=dtype, device=device)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.to(x.dtype) * self.scale.to(x.dtype), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}")


def check_scheme(scheme) -> None:
    if scheme is not None and scheme not in SCHEMES:
        raise InvalidInputError(
            f"unknown quantize={scheme!r}; netshrink quantizes weights per output channel to {', '.join(SCHEMES)} "
            "(or None for floating-point weights)"
        )


def quantizable(module: nn.Module) -> bool:
    return type(module) in (nn.Linear, nn.Conv2d) or is_transposed_linear(module)


def output_layers(model: nn.Module, example) -> list[str]:
    """The quantizable layers of ``model`` whose output is (part of) the model's output on
    ``example`` (a calibration batch; two samples are run)."""
    from . import batches
    from .evaluate import model_device

    produced: list[tuple[str, object]] = []  # the outputs are held, so no tensor's id is reused

    def record(path: str):
        def hook(_module, _inputs, output):
            produced.append((path, output))

        return hook

    handles = [module.register_forward_hook(record(path))
               for path, module in model.named_modules() if path and quantizable(module)]
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            output = batches.call(model, batches.to_device(batches.head(example, 2), model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags:
            module.training = flag
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else [output]
    return [path for path, tensor in produced if any(tensor is value for value in values)]


def quantize(model: nn.Module, scheme: str = "int8", keep=()) -> list[str]:
    """Replace every layer of ``model`` that :func:`quantizable` accepts, except those at the
    paths of ``keep``, by its int8 version, in place (module doc); returns their paths.

    Raises:
        InvalidInputError: an unknown ``scheme``; a layer whose weights are not floating
            point (already quantized); a model with no such layer.
    """
    check_scheme(scheme)
    paths = [path for path, module in model.named_modules() if path and quantizable(module) and path not in keep]
    if not paths:
        already = [path for path, module in model.named_modules() if isinstance(module, (Int8Linear, Int8Conv2d))]
        raise InvalidInputError(
            f"{type(model).__name__} has no nn.Linear, nn.Conv2d or Conv1D layer to quantize"
            + (f" (its layers {already[:3]} are int8 already)" if already else "")
        )
    for path in paths:
        module = model.get_submodule(path)
        if not module.weight.is_floating_point():
            raise InvalidInputError(f"{path!r} holds {module.weight.dtype} weights; int8 quantization needs "
                                    "floating-point weights")
        if module.weight.device.type == "meta":
            raise InvalidInputError(f"{path!r} is on the meta device: quantize a model whose weights are loaded")
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, name, _quantized(module).train(module.training))
    return paths


@torch.no_grad()
def _quantized(module: nn.Module) -> nn.Module:
    weight = module.weight.detach()
    if is_transposed_linear(module):
        weight = weight.T
    dtype, device = weight.dtype, weight.device
    bias = module.bias is not None
    if isinstance(module, nn.Conv2d):
        new = Int8Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                         module.dilation, module.groups, bias, dtype=dtype, device=device)
    else:
        new = Int8Linear(weight.shape[1], weight.shape[0], bias, dtype=dtype, device=device)
    rows = weight.reshape(weight.shape[0], -1)
    scale = rows.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    new.weight.copy_(torch.round(rows / scale.unsqueeze(1)).clamp(-127, 127).reshape(new.weight.shape))
    new.scale.copy_(scale.reshape(new.scale.shape))
    if bias:
        new.bias.copy_(module.bias)
    return new


def stored_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s state: every tensor of its state dict once (a tied tensor once)."""
    seen, total = set(), 0
    for tensor in model.state_dict().values():
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype) if tensor.device.type != "meta" else id(tensor)
        if tensor.numel() and key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total
