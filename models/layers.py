"""Building blocks shared by the bundled models: conv-BN-activation and the inverted-residual (MBConv) block."""

from __future__ import annotations

import torch
from torch import nn


def make_divisible(channels: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of divisor without losing more than 10% (MobileNet rule)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def conv_bn_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    activation: type[nn.Module] | None = nn.ReLU6,
) -> nn.Sequential:
    """Same-padded bias-free conv, BatchNorm and an optional activation: the unit every model here stacks."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MBConv: 1x1 expand, kxk depthwise, linear 1x1 project; identity shortcut when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: float, kernel_size: int = 3):
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_act(in_channels, hidden, 1))
        layers.append(conv_bn_act(hidden, hidden, kernel_size, stride, groups=hidden))
        layers.append(conv_bn_act(hidden, out_channels, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class ClassifierHead(nn.Module):
    """Global average pool, flatten, dropout, linear: maps a feature map to class logits."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


def init_weights(model: nn.Module) -> None:
    """He-normal convs, unit BatchNorm, small-normal linears: the usual from-scratch start for these CNNs."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)
