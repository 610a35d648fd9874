"""Tiny single-shot grid detector for small drone/robot cameras: MobileNetV2-0.35 to stride 16 plus a conv head."""

from __future__ import annotations

import torch
from torch import nn

from .layers import conv_bn_act, init_weights
from .mobilenetv2 import mobilenet_v2_body
from .registry import ModelCfg, register_model

STRIDE = 16
BOX_VALUES = 5  # x, y, w, h, objectness


class TinyDetector(nn.Module):
    """Outputs (N, 5 + num_classes, H/16, W/16): per grid cell box (4), objectness (1) and class logits, undecoded."""

    def __init__(self, resolution: int = 128, num_classes: int = 1, width_mult: float = 0.35):
        super().__init__()
        if resolution % STRIDE:
            raise ValueError(f"tiny_detector: resolution must be a multiple of {STRIDE}, got {resolution}")
        self.backbone, channels = mobilenet_v2_body(width_mult, max_stride=STRIDE)
        self.head = nn.Sequential(
            conv_bn_act(channels, channels, 3, groups=channels),
            conv_bn_act(channels, 64, 1),
            nn.Conv2d(64, BOX_VALUES + num_classes, 1),
        )
        self.input_shape = (1, 3, resolution, resolution)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@register_model(ModelCfg((3, 128, 128)))
def tiny_detector(resolution: int = 128, num_classes: int = 1) -> TinyDetector:
    """Tiny detector definition (no weights): an 8x8 grid of predictions at the default 128x128 input."""
    return TinyDetector(resolution, num_classes)
