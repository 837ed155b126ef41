"""Measuring a classifier: logits and top-1 accuracy in batches.

The model is run under ``torch.inference_mode()`` in eval mode; the training
flag of every submodule is restored afterwards and weights are never touched.
Accuracy in netshrink is always measured on the 10,000 Fashion-MNIST test
images (:func:`test_accuracy`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from netshrink.errors import InvalidInputError

__all__ = ["predict_logits", "accuracy", "test_accuracy", "model_device"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer) not on the meta device; CPU
    for a model without any."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def _check_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return int(batch_size)


def _as_images(images: object) -> torch.Tensor:
    images = torch.as_tensor(images)
    if images.ndim < 1 or len(images) == 0:
        raise InvalidInputError(
            f"images must be a non-empty batch (N, ...) with N >= 1, got shape {tuple(images.shape)}."
        )
    if not images.is_floating_point():
        raise InvalidInputError(
            f"images must be floating point (e.g. float32 in [0, 1]), got {images.dtype}; "
            "convert with images.float() / 255 for raw pixels."
        )
    return images


def _runner(model: nn.Module, device: torch.device | str | None) -> tuple[nn.Module, torch.device]:
    """The module to run and where; a device other than the model's runs on a copy."""
    here = model_device(model)
    if device is None:
        return model, here
    device = torch.device(device)
    if device.type == here.type and (device.index is None or device.index == here.index):
        return model, here
    return copy.deepcopy(model).to(device), device


def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 1000,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Run ``model`` on ``images`` in batches and return its outputs.

    Args:
        model: a classifier mapping (B, ...) to logits (B, C).
        images: (N, ...) floating-point inputs, e.g. (N, 1, 28, 28).
        batch_size: images per forward pass.
        device: where to compute; default the model's device. A different device
            runs a temporary copy of the model there, never moving the original.

    Returns:
        (N, C) float tensor on the CPU.
    """
    images = _as_images(images)
    batch_size = _check_batch_size(batch_size)
    runner, device = _runner(model, device)
    outputs = []
    with _eval_mode(runner), torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device, non_blocking=True)
            logits = runner(batch)
            if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or len(logits) != len(batch):
                shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise InvalidInputError(
                    f"the model must map a batch of {len(batch)} inputs to logits ({len(batch)}, classes), "
                    f"got {shape}; accuracy needs a classifier."
                )
            outputs.append(logits.float().cpu())
    return torch.cat(outputs)


def accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 1000,
    device: torch.device | str | None = None,
) -> float:
    """Top-1 accuracy of ``model``: the fraction (in [0, 1]) of argmax(logits) == labels.

    Args:
        model: classifier mapping (B, ...) to logits (B, C); put in eval mode for
            the call, its (and its submodules') training flags restored after.
        images: (N, ...) floating-point inputs.
        labels: (N,) integer class indices.
        batch_size, device: as in :func:`predict_logits`.
    """
    images = _as_images(images)
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InvalidInputError(
            f"labels must be a 1-D integer tensor (N,), got {labels.dtype} of shape {tuple(labels.shape)}."
        )
    if len(labels) != len(images):
        raise InvalidInputError(
            f"images and labels disagree in length: {len(images)} images but {len(labels)} labels."
        )
    batch_size = _check_batch_size(batch_size)
    runner, device = _runner(model, device)
    correct = 0
    with _eval_mode(runner), torch.inference_mode():
        for start in range(0, len(images), batch_size):
            stop = start + batch_size
            logits = predict_logits(runner, images[start:stop], batch_size=batch_size, device=device)
            correct += int((logits.argmax(dim=1) == labels[start:stop].cpu()).sum())
    return correct / len(labels)


def test_accuracy(model: nn.Module, batch_size: int = 1000, device: torch.device | str | None = None) -> float:
    """Top-1 accuracy on the 10,000 Fashion-MNIST test images (see :func:`accuracy`)."""
    from netshrink.data import fashion_mnist

    images, labels = fashion_mnist("test")
    return accuracy(model, images, labels, batch_size=batch_size, device=device)


test_accuracy.__test__ = False  # not a pytest test, despite the name
