"""Small test models with assorted activations, widths and structure."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Chain(nn.Module):
    """Linear layers of ``widths`` joined by ``activation`` (a module or a function)."""

    def __init__(self, widths, activation=torch.relu):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.activation = activation

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


class Block(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.fc = nn.Linear(n_in, n_out)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.fc(x))


class Nested(nn.Module):
    """Nested blocks, a Sequential, scalar arithmetic and a custom forward."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(Block(12, 17), Block(17, 9))
        self.head = nn.Sequential(nn.Linear(9, 23), nn.Tanh(), nn.Dropout(0.1), nn.Linear(23, 5))

    def forward(self, x):
        h = self.encoder(x)
        return self.head(0.5 * h)


class Residual(nn.Module):
    """A tensor read by two consumers: not a plain cut."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 3)

    def forward(self, x):
        h = F.relu(self.a(x))
        return self.c(h + F.relu(self.b(h)))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            x = -x
        return self.b(torch.relu(self.a(x)))


class ConvNet(nn.Module):
    """Conv → BN → ReLU → max-pool → conv → BN → ReLU → avg-pool → flatten → MLP."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 5, 3, stride=2, padding=2, dilation=2), nn.BatchNorm2d(5), nn.ReLU(),
            nn.AvgPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(5 * 2 * 2, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x):  # x: (N, 2, 16, 16)
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, n_in, n_out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(n_out)
        self.conv2 = nn.Conv2d(n_out, n_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(n_out)
        if stride != 1 or n_in != n_out:
            self.shortcut = nn.Conv2d(n_in, n_out, 1, stride=stride, bias=False)
            self.shortcut_bn = nn.BatchNorm2d(n_out)
        else:
            self.shortcut = None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.shortcut is None else self.shortcut_bn(self.shortcut(x))
        return F.relu(out + skip)


class TinyResNet(nn.Module):
    """A small ResNet: stem, an identity block and a strided block with a 1×1 shortcut."""

    def __init__(self, width=6, classes=5):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.block1 = BasicBlock(width, width)
        self.block2 = BasicBlock(width, width, stride=2)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):  # x: (N, 1, H, W)
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.block2(self.block1(x))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))
