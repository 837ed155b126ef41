"""Forward FLOPs of a model at one input shape, attributed to the module whose own code runs them.

One forward pass on the example batch under a dispatch mode that counts every matrix
product (``mm``, ``addmm``, ``bmm``, ``baddbmm``, convolutions and the fused attention
kernels, CPU ones included) with the formulas of :mod:`torch.utils.flop_counter`: a
product of an ``(m, k)`` by a ``(k, n)`` matrix is ``2·m·k·n`` FLOPs (one multiply and
one add per term), a convolution ``2·out_elements·in_channels/groups·kh·kw``, attention
``2·b·h·s_q·s_k·(d + d_v)``. Elementwise operations, norms and softmax are not counted
(the convention of Kwon et al. and ZipLM: they are a few percent of a transformer's or
a CNN's work and do not depend on what a cut keeps in the way the products do).

Each product is attributed to the innermost module running when it is dispatched (its
*own* FLOPs): a ``Linear``'s product to the ``Linear``, the score and context products of
an attention to the attention module that calls ``scaled_dot_product_attention``.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from .. import batches
from ..evaluate import model_device

_aten = torch.ops.aten

#: Products the CPU build dispatches to that :mod:`torch.utils.flop_counter` has no formula for.
_EXTRA = {
    _aten._scaled_dot_product_flash_attention_for_cpu: flop_registry[_aten._scaled_dot_product_flash_attention],
}


def _formula(func):
    packet = func._overloadpacket
    return flop_registry.get(packet) or _EXTRA.get(packet)


class _Counter(TorchDispatchMode):
    """Adds each counted product's FLOPs to the module path on top of ``stack``."""

    def __init__(self, stack: list[str]):
        super().__init__()
        self.stack = stack
        self.own: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = _formula(func)
        if formula is not None:
            self.own[self.stack[-1]] += int(formula(*args, **kwargs, out_val=out))
        return out


def module_flops(model: nn.Module, example) -> dict[str, int]:
    """``{module path: own FLOPs}`` of one forward pass of ``model`` on ``example``
    (a calibration batch: a tensor or a mapping of keyword inputs); the root module's
    path is ``""``. Paths without counted products are left out. The model is run in
    eval mode without gradients and left as it was.
    """
    stack = [""]

    def enter(path: str):
        def hook(*_):
            stack.append(path)

        return hook

    def leave(*_):
        stack.pop()

    handles = []
    for path, module in model.named_modules():
        if path:
            handles.append(module.register_forward_pre_hook(enter(path)))
            handles.append(module.register_forward_hook(leave, always_call=True))
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    counter = _Counter(stack)
    try:
        with torch.no_grad(), counter:
            batches.call(model, batches.to_device(example, model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags:
            module.training = flag
    return dict(counter.own)


def total_flops(model: nn.Module, example) -> int:
    """FLOPs of one forward pass of ``model`` on ``example`` (:func:`module_flops` summed)."""
    return sum(module_flops(model, example).values())
