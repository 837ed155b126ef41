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
