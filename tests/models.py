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


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expand → BN → ReLU6 → 3×3 depthwise → BN → ReLU6 → 1×1
    project → BN, plus the input when shapes match; a stem and a head around it."""

    def __init__(self, width=8, expand=4, classes=5):
        super().__init__()
        hidden = width * expand
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(width, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
                                       nn.BatchNorm2d(hidden), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(hidden, width, 1, bias=False), nn.BatchNorm2d(width))
        self.head = nn.Linear(width, classes)

    def forward(self, x):  # x: (N, 3, H, W)
        x = self.stem(x)
        x = x + self.project(self.depthwise(self.expand(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block: 7×7 depthwise → LayerNorm (channels last) → Linear 4C → GELU →
    Linear C → layer scale, plus the input; a patchify stem and a head around it."""

    def __init__(self, width=8, classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 2, stride=2)
        self.dwconv = nn.Conv2d(width, width, 7, padding=3, groups=width)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.pwconv1 = nn.Linear(width, 4 * width)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * width, width)
        self.gamma = nn.Parameter(torch.full((width,), 0.5))
        self.head = nn.Linear(width, classes)

    def forward(self, x):  # x: (N, 3, H, W)
        x = self.stem(x)
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        x = x + y.permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1×1 reduce → 3×3 → 1×1 expand (BN, ReLU), with a projection
    shortcut; a stem and a head around it."""

    def __init__(self, width=8, inner=4, classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, 4 * inner, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * inner)
        self.shortcut = nn.Conv2d(width, 4 * inner, 1, stride=2, bias=False)
        self.shortcut_bn = nn.BatchNorm2d(4 * inner)
        self.fc = nn.Linear(4 * inner, classes)

    def forward(self, x):  # x: (N, 3, H, W)
        x = F.relu(self.stem_bn(self.stem(x)))
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = F.relu(out + self.shortcut_bn(self.shortcut(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class SqueezeExcite(nn.Module):
    """Conv → BN → ReLU → squeeze-and-excitation (pool → Linear → ReLU → Linear →
    sigmoid, scaling the channels) → conv → pool → head."""

    def __init__(self, width=8, squeeze=3, classes=5):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc1 = nn.Linear(width, squeeze)
        self.fc2 = nn.Linear(squeeze, width)
        self.out = nn.Conv2d(width, 6, 3, padding=1)
        self.head = nn.Linear(6, classes)

    def forward(self, x):  # x: (N, 3, H, W)
        x = F.relu(self.bn(self.conv(x)))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        x = x * gate[:, :, None, None]
        return self.head(F.relu(self.out(x)).mean((2, 3)))
