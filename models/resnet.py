"""ResNet-18 (He et al., 2016): residual BasicBlocks with 1x1 projection shortcuts when the shape changes."""

from __future__ import annotations

import torch
from torch import nn

from .layers import ClassifierHead, conv_bn_act, init_weights
from .registry import ModelCfg, register_model


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut (identity, or 1x1 conv-BN when stride/channels change)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_act(in_channels, out_channels, 3, stride, activation=nn.ReLU),
            conv_bn_act(out_channels, out_channels, 3, activation=None),
        )
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = conv_bn_act(in_channels, out_channels, 1, stride, activation=None)
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with BasicBlocks: 7x7 stem, max pool, four stages doubling channels, pooled linear head."""

    def __init__(self, blocks_per_stage: tuple[int, ...], resolution: int = 224, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [conv_bn_act(3, 64, 7, stride=2, activation=nn.ReLU), nn.MaxPool2d(3, 2, 1)]
        channels = 64
        for stage, repeats in enumerate(blocks_per_stage):
            out_channels = 64 * 2**stage
            for i in range(repeats):
                layers.append(BasicBlock(channels, out_channels, 2 if i == 0 and stage > 0 else 1))
                channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = ClassifierHead(channels, num_classes)
        self.input_shape = (1, 3, resolution, resolution)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model(ModelCfg((3, 224, 224)))
def resnet18(resolution: int = 224, num_classes: int = 1000) -> ResNet:
    """ResNet-18: two BasicBlocks per stage, 11.7 M parameters at 1000 classes."""
    return ResNet((2, 2, 2, 2), resolution, num_classes)
