"""Models written the way outside projects write them, not built from edgekit's reference models.

`McuNetSe` is an MCUNet-VWW-like net: inverted residuals with squeeze-excite (sigmoid gate) and hard-swish,
global pooling as two single-axis means (W, then H), which litert-torch writes as TRANSPOSE(0,3,1,2) + MEAN +
MEAN, as published MCUNet .tflite files have it. `mcunet_se_int8_tflite` converts it with litert-torch to an
INT8 .tflite with int8 NHWC I/O, calibrated on generated data. tools/conformance.py imports both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


class SqueezeExcite(nn.Module):
    """Global mean -> 1x1 conv -> relu -> 1x1 conv -> sigmoid, multiplied back onto the input."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(scale))))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand + hard-swish, k x k depthwise + hard-swish, optional SE, 1x1 project."""

    def __init__(self, in_c: int, out_c: int, expand: int, kernel: int, stride: int, se: bool) -> None:
        super().__init__()
        mid = in_c * expand
        self.expand = nn.Sequential(nn.Conv2d(in_c, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False),
                                       nn.BatchNorm2d(mid), nn.Hardswish())
        self.se = SqueezeExcite(mid, max(8, mid // 4)) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(mid, out_c, 1, bias=False), nn.BatchNorm2d(out_c))
        self.residual = stride == 1 and in_c == out_c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class McuNetSe(nn.Module):
    """80x80 RGB -> 2 classes (visual wake words): stem 3x3/2, six MBConv blocks, 1x1 head, mean, fc."""

    input_shape = (1, 3, 80, 80)

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.Sequential(
            MBConv(16, 16, 3, 3, 1, se=False), MBConv(16, 24, 4, 5, 2, se=False), MBConv(24, 24, 3, 3, 1, se=True),
            MBConv(24, 40, 4, 5, 2, se=True), MBConv(40, 40, 3, 3, 1, se=True), MBConv(40, 64, 4, 3, 2, se=True))
        self.head = nn.Sequential(nn.Conv2d(64, 128, 1, bias=False), nn.BatchNorm2d(128), nn.Hardswish())
        self.classifier = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(x.mean(3).mean(2))  # global pooling as MCUNet's .tflite files write it


def mcunet_se_int8_tflite(path: str | Path, samples: int = 4, seed: int = 0) -> Path:
    """McuNetSe with trained-like statistics as a full-integer INT8 .tflite (int8 NHWC I/O) at `path`."""
    from edgekit.convert.config import Int8Config
    from edgekit.convert.quantize import quantize

    torch.manual_seed(seed)
    model = McuNetSe().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so the int8 ranges are not degenerate
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    calibration = np.random.default_rng(seed).random((samples, *McuNetSe.input_shape[1:]), dtype=np.float32)
    return quantize(model, calibration, Path(path), Int8Config(format="tflite", channels_last_io=True))
