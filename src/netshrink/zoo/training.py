"""Reproducible training of zoo models on Fashion-MNIST.

A :class:`TrainingRecipe` (a frozen, hashable dataclass) holds every choice that
affects the trained weights; each zoo model subclasses it with its architecture
fields (see :mod:`netshrink.zoo.architectures`). :func:`fit` trains a model from
a recipe deterministically: fixed seed, a seeded ``torch.Generator`` for the
shuffling and augmentation, ``torch.use_deterministic_algorithms`` during the
run. Same recipe, torch version and hardware give the same weights.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from netshrink.errors import InvalidInputError

__all__ = ["TrainingRecipe", "fit", "default_device"]


@dataclass(frozen=True)
class TrainingRecipe:
    """How a zoo model is trained; subclasses add the architecture's fields.

    Attributes:
        epochs: passes over the training split.
        batch_size: images per optimisation step.
        optimizer: ``"adamw"`` or ``"sgd"`` (Nesterov momentum).
        lr: peak learning rate.
        weight_decay: decoupled weight decay on weight matrices/kernels (biases
            are not decayed).
        momentum: SGD momentum (ignored by AdamW).
        schedule: ``"cosine"`` (to 0 after warmup) or ``"constant"``.
        warmup_epochs: linear warmup length, in epochs (may be fractional).
        label_smoothing: cross-entropy label smoothing.
        hflip: randomly mirror training images left-right (probability 1/2).
        shift: random translation of training images by up to this many pixels.
        seed: seeds the initial weights, the shuffling and the augmentation.
        max_train_images: train on the first N training images only (tests).
        revision: bump when the training or architecture code changes in a way
            these fields do not capture, so cached weights are retrained.
    """

    epochs: int = 15
    batch_size: int = 256
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    hflip: bool = False
    shift: int = 0
    seed: int = 0
    max_train_images: int | None = None
    revision: int = 1

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs={self.epochs} (need >= 1)")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} (need >= 1)")
        if self.optimizer not in ("adamw", "sgd"):
            problems.append(f"optimizer={self.optimizer!r} (use 'adamw' or 'sgd')")
        if self.schedule not in ("cosine", "constant"):
            problems.append(f"schedule={self.schedule!r} (use 'cosine' or 'constant')")
        if not self.lr > 0 or self.weight_decay < 0 or self.warmup_epochs < 0 or self.shift < 0:
            problems.append("lr must be > 0 and weight_decay, warmup_epochs, shift >= 0")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing={self.label_smoothing} (need 0 <= x < 1)")
        if self.max_train_images is not None and self.max_train_images < 1:
            problems.append(f"max_train_images={self.max_train_images} (need >= 1 or None)")
        if problems:
            raise InvalidInputError(f"invalid {type(self).__name__}: " + "; ".join(problems) + ".")

    def as_dict(self) -> dict[str, Any]:
        """All fields as plain JSON-able values (tuples become lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }

    def build(self) -> nn.Module:  # pragma: no cover - overridden by every model's recipe
        raise NotImplementedError(f"{type(self).__name__} does not define build().")

    def architecture(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError(f"{type(self).__name__} does not define architecture().")


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _augment(
    images: torch.Tensor, recipe: TrainingRecipe, generator: torch.Generator
) -> torch.Tensor:
    """Random mirror / translation of a batch (B, C, H, W); randomness drawn on the CPU."""
    batch, _, height, width = images.shape
    if recipe.hflip:
        flip = (torch.rand(batch, generator=generator) < 0.5).to(images.device)
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if recipe.shift:
        s = recipe.shift
        dy = torch.randint(-s, s + 1, (batch,), generator=generator).to(images.device)
        dx = torch.randint(-s, s + 1, (batch,), generator=generator).to(images.device)
        padded = F.pad(images, (s, s, s, s))
        rows = torch.arange(height, device=images.device)[None, :] + s + dy[:, None]  # (B, H)
        cols = torch.arange(width, device=images.device)[None, :] + s + dx[:, None]  # (B, W)
        b = torch.arange(batch, device=images.device)[:, None, None]
        images = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return images


def _optimizer(model: nn.Module, recipe: TrainingRecipe) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=True)


def _lr_factor(recipe: TrainingRecipe, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    warmup = int(round(recipe.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if recipe.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def fit(
    model: nn.Module,
    recipe: TrainingRecipe,
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "training",
) -> dict[str, Any]:
    """Train ``model`` in place on the Fashion-MNIST training split following ``recipe``.

    Minimises cross-entropy of the logits. Uses the whole training split (or its
    first ``recipe.max_train_images``), reshuffled every epoch with a generator
    seeded by ``recipe.seed``. The model ends in eval mode on the CPU.

    Returns a history: ``{"epochs": [{"epoch", "train_loss", "test_accuracy",
    "seconds"}, ...], "test_accuracy", "seconds", "device", "threads"}``; test
    accuracy is logged per epoch for information only, never used for any choice.
    """
    from tqdm.auto import tqdm

    from netshrink.data import fashion_mnist
    from netshrink.evaluate import accuracy

    device = torch.device(device) if device is not None else default_device()
    images, labels = fashion_mnist("train", limit=recipe.max_train_images)
    test_images, test_labels = fashion_mnist("test")
    images, labels = images.to(device), labels.to(device)
    count = len(labels)
    steps_per_epoch = math.ceil(count / recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs

    generator = torch.Generator().manual_seed(recipe.seed)
    model.to(device)
    optimizer = _optimizer(model, recipe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(recipe, total_steps, steps_per_epoch))

    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    try:
        with tqdm(total=total_steps, desc=desc, unit="batch", disable=not progress, leave=True) as bar:
            for epoch in range(recipe.epochs):
                model.train()
                order = torch.randperm(count, generator=generator).to(device)
                loss_sum = torch.zeros((), device=device, dtype=torch.float64)
                for first in range(0, count, recipe.batch_size):
                    index = order[first : first + recipe.batch_size]
                    batch = _augment(images[index], recipe, generator)
                    loss = F.cross_entropy(model(batch), labels[index], label_smoothing=recipe.label_smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    loss_sum += loss.detach().double() * len(index)
                    bar.update(1)
                train_loss = float(loss_sum) / count
                test_acc = accuracy(model, test_images, test_labels, batch_size=2000)
                history.append(
                    {
                        "epoch": epoch + 1,
                        "train_loss": round(train_loss, 6),
                        "test_accuracy": test_acc,
                        "seconds": round(time.perf_counter() - start, 2),
                    }
                )
                bar.set_postfix(epoch=epoch + 1, loss=f"{train_loss:.4f}", test_acc=f"{test_acc:.4f}")
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
    seconds = time.perf_counter() - start
    model.eval()
    model.to("cpu")
    return {
        "epochs": history,
        "test_accuracy": history[-1]["test_accuracy"],
        "seconds": round(seconds, 2),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
