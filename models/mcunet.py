"""MCUNet-style networks (Lin et al., 2020): MBConv stacks with per-block kernel sizes and expansion ratios.

The stage tables below follow the family's shape (ProxylessNAS-like space, kernels 3/5/7, expansions 3/4/6)
but are edgekit's own hand-picked configs, not the searched architectures or weights of the MCUNet authors.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import ClassifierHead, InvertedResidual, conv_bn_act, init_weights
from .registry import ModelCfg, register_model

# One stage: (output channels, first-block stride, ((expansion, kernel), ...) per block).
Stage = tuple[int, int, tuple[tuple[int, int], ...]]

IMAGENET_STAGES: tuple[Stage, ...] = (
    (16, 2, ((4, 7), (3, 3))),
    (24, 2, ((6, 7), (4, 5), (3, 3))),
    (40, 2, ((6, 5), (4, 3), (3, 5))),
    (48, 1, ((4, 5), (3, 3))),
    (96, 2, ((6, 5), (4, 7), (3, 3))),
    (160, 1, ((6, 7),)),
)

VWW_STAGES: tuple[Stage, ...] = (
    (16, 2, ((3, 3), (3, 5))),
    (24, 2, ((4, 7), (3, 3))),
    (40, 2, ((4, 5), (3, 3))),
    (48, 1, ((3, 5),)),
    (96, 2, ((4, 3), (3, 7))),
)


class MCUNet(nn.Module):
    """3x3 stem, a depthwise-separable block, then MBConv stages from a stage table, pooled linear head."""

    def __init__(self, stages: tuple[Stage, ...], resolution: int, num_classes: int, stem_channels: int = 16):
        super().__init__()
        layers: list[nn.Module] = [conv_bn_act(3, stem_channels, 3, stride=2), InvertedResidual(stem_channels, 8, 1, 1)]
        channels = 8
        for out_channels, first_stride, blocks in stages:
            for i, (expand, kernel) in enumerate(blocks):
                layers.append(InvertedResidual(channels, out_channels, first_stride if i == 0 else 1, expand, kernel))
                channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = ClassifierHead(channels, num_classes, dropout=0.1)
        self.input_shape = (1, 3, resolution, resolution)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def mcunet(stages: tuple[Stage, ...], resolution: int, num_classes: int, stem_channels: int = 16) -> MCUNet:
    """Build an MCUNet-style network from any stage table (for custom or searched configs)."""
    return MCUNet(stages, resolution, num_classes, stem_channels)


@register_model(ModelCfg((3, 176, 176)))
def mcunet_in(resolution: int = 176, num_classes: int = 1000) -> MCUNet:
    """ImageNet-sized MCUNet-style model for 160-176 px inputs."""
    return mcunet(IMAGENET_STAGES, resolution, num_classes)


@register_model(ModelCfg((3, 80, 80)))
def mcunet_vww(resolution: int = 80, num_classes: int = 2) -> MCUNet:
    """Visual-Wake-Words-sized MCUNet-style model (person / no person) for 80 px inputs."""
    return mcunet(VWW_STAGES, resolution, num_classes)
