"""MobileNetV2 (Sandler et al., 2018): inverted residuals with linear bottlenecks and ReLU6."""

from __future__ import annotations

import torch
from torch import nn

from .layers import ClassifierHead, InvertedResidual, conv_bn_act, init_weights, make_divisible
from .registry import ModelCfg, register_model

# (expansion t, output channels c, repeats n, first stride s) per stage, Table 2 of the paper.
STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


def mobilenet_v2_body(width_mult: float = 1.0, max_stride: int = 32) -> tuple[nn.Sequential, int]:
    """Stem and bottleneck stages up to max_stride; returns them with their output channel count for reuse."""
    channels = make_divisible(STEM_CHANNELS * width_mult)
    layers: list[nn.Module] = [conv_bn_act(3, channels, 3, stride=2)]
    stride = 2
    for expand, out, repeats, first_stride in STAGES:
        if stride * first_stride > max_stride:
            break
        stride *= first_stride
        out_channels = make_divisible(out * width_mult)
        for i in range(repeats):
            layers.append(InvertedResidual(channels, out_channels, first_stride if i == 0 else 1, expand))
            channels = out_channels
    return nn.Sequential(*layers), channels


class MobileNetV2(nn.Module):
    """MobileNetV2 classifier; the 1280-channel last conv grows with width_mult > 1 but never shrinks."""

    def __init__(self, width_mult: float = 1.0, resolution: int = 224, num_classes: int = 1000):
        super().__init__()
        body, channels = mobilenet_v2_body(width_mult)
        last = make_divisible(LAST_CHANNELS * max(1.0, width_mult))
        self.features = nn.Sequential(*body, conv_bn_act(channels, last, 1))
        self.classifier = ClassifierHead(last, num_classes, dropout=0.2)
        self.input_shape = (1, 3, resolution, resolution)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model(ModelCfg((3, 224, 224)))
def mobilenet_v2(width_mult: float = 1.0, resolution: int = 224, num_classes: int = 1000) -> MobileNetV2:
    """MobileNetV2 at any width multiplier and input resolution (3.5 M parameters at 1.0/224)."""
    return MobileNetV2(width_mult, resolution, num_classes)


@register_model(ModelCfg((3, 96, 96)))
def mobilenet_v2_035_96(resolution: int = 96, num_classes: int = 1000) -> MobileNetV2:
    """MobileNetV2 0.35 at 96x96, the usual size for Cortex-M class boards."""
    return MobileNetV2(0.35, resolution, num_classes)
