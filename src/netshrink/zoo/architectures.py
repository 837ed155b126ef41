"""Reference architectures of the zoo, written as plain ``nn.Module``s.

Every forward pass is free of data-dependent control flow so ``torch.fx`` can
trace it, which is how netshrink finds the places (cuts) where neurons can be
removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from netshrink.errors import InvalidInputError
from netshrink.zoo.training import TrainingRecipe

__all__ = [
    "ReluMLP", "ReluMLPRecipe", "MLP7Recipe", "LeNet300Recipe",
    "LeNet5", "LeNet5Recipe", "VGG", "VGGRecipe",
]


class ReluMLP(nn.Module):
    """Fully connected ReLU network with a linear classifier: the model of eq. (10).

    ``M(x) = s(f_m(... f_1(x)) W^(s))`` with ``f_i(z) = relu(z W^(i) + b^(i))``
    (seed 001, "Compressing a neural network", eq. (10)). The softmax ``s`` is
    not part of the module: it returns logits, and predictions are their argmax
    (softmax is monotone, so the argmax is the same).

    Shapes: input (N, *input_shape), e.g. (N, 1, 28, 28), flattened to
    (N, in_features); hidden layer i maps widths[i-1] -> widths[i]; output
    (N, num_classes) logits.

    Attributes:
        hidden: ``nn.ModuleList`` of the m hidden ``nn.Linear`` layers (W^(1..m)).
        classifier: the final ``nn.Linear`` (W^(s)), never compressed.
    """

    def __init__(self, in_features: int, widths: Sequence[int], num_classes: int) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if in_features < 1 or num_classes < 1 or not widths or min(widths) < 1:
            raise InvalidInputError(
                f"ReluMLP needs positive sizes, got in_features={in_features}, widths={widths}, "
                f"num_classes={num_classes}."
            )
        sizes = (int(in_features), *widths)
        self.in_features = int(in_features)
        self.widths = widths
        self.num_classes = int(num_classes)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.classifier = nn.Linear(sizes[-1], int(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.classifier(x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, widths={self.widths}, num_classes={self.num_classes}"


@dataclass(frozen=True)
class ReluMLPRecipe(TrainingRecipe):
    """A :class:`ReluMLP` and how to train it (fields of :class:`TrainingRecipe` plus sizes)."""

    in_features: int = 784
    widths: tuple[int, ...] = (256,)
    num_classes: int = 10

    def build(self) -> ReluMLP:
        return ReluMLP(self.in_features, self.widths, self.num_classes)

    def architecture(self) -> dict[str, Any]:
        return {
            "class": "ReluMLP",
            "input_shape": [1, 28, 28],
            "in_features": self.in_features,
            "widths": list(self.widths),
            "num_classes": self.num_classes,
            "layers": len(self.widths) + 1,
        }


@dataclass(frozen=True)
class MLP7Recipe(ReluMLPRecipe):
    """``mlp7``: seed 001's model, seven ReLU layers plus the softmax layer (eq. (10)).

    Widths 784 -> 2048 -> 1024 -> 1024 -> 512 -> 512 -> 256 -> 256 -> 10
    (5,742,602 parameters). Deliberately wide and over-parameterised, the first
    hidden layer widest, so that most neurons can be removed: trained with AdamW
    (lr 1e-3, decoupled weight decay 0.05 on the weight matrices), a cosine
    schedule, batch 256, 15 epochs, seed 0, no augmentation. It reaches about
    90.0% test accuracy in about 4 minutes on 2 CPU cores; the deeper layers'
    activations end up of low numerical rank, which is what compression exploits.
    """

    widths: tuple[int, ...] = (2048, 1024, 1024, 512, 512, 256, 256)
    epochs: int = 15
    batch_size: int = 256
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    schedule: str = "cosine"
    seed: int = 0


@dataclass(frozen=True)
class LeNet300Recipe(ReluMLPRecipe):
    """``lenet300``: LeNet-300-100 (784-300-100-10, 266,610 parameters), Robin Table 1.

    Trained on Fashion-MNIST standing in for MNIST (not reachable here) the way Caffe
    trains the seed's model: SGD with momentum 0.9 (Nesterov), weight decay 5e-4, batch
    64, here lr 0.05 with a cosine schedule over 30 epochs, seed 0. Reaches about 90.0%
    test accuracy in about 1.5 minutes on 2 CPU cores. (An AdamW recipe, lr 1e-3, weight
    decay 0.05, 20 epochs, reached 89.8% and a far less redundant network: group lasso
    kept 63% of its parameters within 0.3 pt.)
    """

    widths: tuple[int, ...] = (300, 100)
    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4


class LeNet5(nn.Module):
    """Caffe's LeNet-5 (Robin Table 1): conv 20@5×5 → max-pool 2 → conv 50@5×5 → max-pool 2
    → flatten (800) → fc 500 → ReLU → fc 10; 431,080 parameters.

    Faithful to the Caffe model: there is no non-linearity after the convolutions,
    only the max-pooling. Input ``(N, 1, 28, 28)``, output ``(N, 10)`` logits.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 20, 5), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(50 * 4 * 4, 500), nn.ReLU(), nn.Linear(500, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass(frozen=True)
class LeNet5Recipe(TrainingRecipe):
    """``lenet5``: :class:`LeNet5` on Fashion-MNIST (standing in for MNIST): AdamW (lr 1e-3,
    weight decay 0.05), cosine schedule, batch 128, 10 epochs, ±2 pixel shifts, seed 0.
    Reaches 90.1% test accuracy in about 7 minutes on 2 shared CPU cores."""

    epochs: int = 10
    batch_size: int = 128
    shift: int = 2

    def build(self) -> LeNet5:
        return LeNet5()

    def architecture(self) -> dict[str, Any]:
        return {"class": "LeNet5", "input_shape": [1, 28, 28], "variant": "caffe",
                "conv": [20, 50], "fc": [500, 10]}


class VGG(nn.Module):
    """A VGG-style CNN: blocks of 3×3 conv (padding 1) + BatchNorm + ReLU, a 2×2 max-pool
    after each block, then flatten → fc → ReLU → Dropout → fc.

    ``channels`` lists the convolutions' widths with ``"M"`` for a pooling; input
    ``(N, 1, 28, 28)``.
    """

    def __init__(self, channels: Sequence[int | str], hidden: int, num_classes: int = 10,
                 dropout: float = 0.3) -> None:
        super().__init__()

        def block(previous: int, width) -> list[nn.Module]:
            return [nn.Conv2d(previous, int(width), 3, padding=1), nn.BatchNorm2d(int(width)), nn.ReLU()]

        self.features, features = _conv_stack(channels, block, lambda width: int(width))
        self.classifier = _head(features, [hidden], num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass(frozen=True)
class VGGRecipe(TrainingRecipe):
    """``vgg-fmnist``: a VGG-style CNN standing in for AlexNet (ImageNet is not reachable):
    conv 16-M-32-32-M-64-64-M with BatchNorm, fc 256, fc 10 (220,170 parameters), sized
    to train in about 15-25 minutes on 2 (shared) CPU cores; reaches 92.6% test accuracy. AdamW (lr 2e-3, weight decay 0.05),
    cosine schedule after half an epoch of warmup, batch 128, 10 epochs, mirrored and
    ±2 pixel shifted training images, label smoothing 0.1, seed 0."""

    channels: tuple = (16, "M", 32, 32, "M", 64, 64, "M")
    hidden: int = 256
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    warmup_epochs: float = 0.5
    hflip: bool = True
    shift: int = 2
    label_smoothing: float = 0.1

    def build(self) -> VGG:
        return VGG(self.channels, self.hidden, dropout=_VGG_DROPOUT)

    def architecture(self) -> dict[str, Any]:
        return {"class": "VGG", "input_shape": [1, 28, 28], "channels": list(self.channels),
                "hidden": self.hidden, "dropout": _VGG_DROPOUT}


#: Dropout of ``vgg-fmnist``'s classifier; part of its cache key through architecture().
_VGG_DROPOUT = 0.3


class AlexNet(nn.Module):
    """An AlexNet-style CNN for ``(N, 1, 28, 28)`` inputs: five ReLU convolutions (no
    BatchNorm) with three 2×2 max-pools, then three fully connected layers with ReLU
    and dropout, as AlexNet's classifier: flatten → fc → ReLU → Dropout → fc → ReLU →
    Dropout → fc.

    ``convs`` lists ``(channels, kernel)`` pairs with ``"M"`` for a pooling; every
    convolution has stride 1 and "same" zero padding ``kernel // 2``.
    """

    def __init__(self, convs: Sequence[tuple[int, int] | str], hidden: Sequence[int], num_classes: int = 10,
                 dropout: float = 0.5) -> None:
        super().__init__()

        def block(previous: int, item) -> list[nn.Module]:
            channels, kernel = item
            return [nn.Conv2d(previous, channels, kernel, padding=kernel // 2), nn.ReLU()]

        self.features, features = _conv_stack(convs, block, lambda item: item[0])
        self.classifier = _head(features, hidden, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass(frozen=True)
class AlexNetRecipe(TrainingRecipe):
    """``alexnet-fmnist``: an AlexNet-style CNN standing in for AlexNet on CIFAR-10/ImageNet
    (not reachable here) in seed 002's compression runs: conv 24@5×5-M-48-M-64-64-64-M
    (3×3), fc 576→512→512→10 with dropout 0.5 (675,818 parameters), sized to train in
    about 20 minutes on 2 CPU cores. AdamW (lr 1e-3, weight decay 0.05), cosine schedule
    after half an epoch of warmup, batch 128, 8 epochs, mirrored and ±2 pixel shifted
    training images, seed 0."""

    convs: tuple = ((24, 5), "M", (48, 3), "M", (64, 3), (64, 3), (64, 3), "M")
    hidden: tuple = (512, 512)
    epochs: int = 8
    batch_size: int = 128
    lr: float = 1e-3
    warmup_epochs: float = 0.5
    hflip: bool = True
    shift: int = 2

    def build(self) -> AlexNet:
        return AlexNet(self.convs, self.hidden, dropout=0.5)

    def architecture(self) -> dict[str, Any]:
        return {"class": "AlexNet", "input_shape": [1, 28, 28], "convs": [list(c) if c != "M" else c
                                                                         for c in self.convs],
                "hidden": list(self.hidden), "dropout": 0.5}


def _conv_stack(items, block, channels_of) -> tuple[nn.Sequential, int]:
    """Convolution blocks for ``(N, 1, 28, 28)`` inputs: ``block(in_channels, item)`` per
    item, a 2×2 max-pool per ``"M"``; returns the stack and its flattened output width."""
    layers: list[nn.Module] = []
    size, previous = 28, 1
    for item in items:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            size //= 2
        else:
            layers += block(previous, item)
            previous = channels_of(item)
    return nn.Sequential(*layers), previous * size * size


def _head(features: int, hidden: Sequence[int], num_classes: int, dropout: float) -> nn.Sequential:
    """flatten → (fc → ReLU → Dropout) per hidden width → fc to the logits."""
    layers: list[nn.Module] = [nn.Flatten()]
    for units in hidden:
        layers += [nn.Linear(features, units), nn.ReLU(), nn.Dropout(dropout)]
        features = units
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)
