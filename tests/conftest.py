"""Shared fixtures: a tiny residual CNN whose numbers can be checked by hand, and its exports."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn


class TinyBlock(nn.Module):
    """Depthwise 3x3 + BN + ReLU6, pointwise 1x1, residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw(self.dw(x))


class TinyNet(nn.Module):
    """3x32x32 -> stem conv 3x3/2 (8ch) -> residual block -> maxpool 2 -> global pool -> linear 10."""

    input_shape = (1, 3, 32, 32)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = TinyBlock()
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block(self.stem(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


def tiny_net() -> TinyNet:
    """TinyNet with non-trivial batch-norm statistics (as a trained model has), in eval mode."""
    torch.manual_seed(0)
    model = TinyNet()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return model.eval()


def export_onnx(model: nn.Module, path: Path) -> Path:
    """Export with torch's dynamo ONNX exporter, as a user would."""
    torch.onnx.export(model, (torch.zeros(model.input_shape),), str(path), dynamo=True, verbose=False)
    return path


def export_tflite(model: nn.Module, path: Path) -> Path:
    """Float TFLite with litert-torch, as a user would convert before quantizing."""
    import litert_torch

    litert_torch.convert(model, (torch.rand(model.input_shape),)).export(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tflite(tiny_net(), tmp_path_factory.mktemp("tflite") / "tiny.tflite")


@pytest.fixture(scope="session")
def mbv2_int8_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgekit.convert.config import Int8Config
    from edgekit.convert.quantize import quantize
    from edgekit.models import create_model

    model = create_model("mobilenet_v2_035_96")
    calibration = np.random.default_rng(0).random((4, *model.input_shape[1:]), dtype=np.float32)
    path = tmp_path_factory.mktemp("tflite") / "mobilenet_v2_035_96_int8.tflite"
    return quantize(model, calibration, path, Int8Config(format="tflite"))


def mutated(valid: bytes, rng: random.Random) -> bytes:
    """A valid frame with flipped bits, cut short, spliced with noise, or re-sealed with a correct CRC."""
    data = bytearray(valid)
    kind = rng.randrange(5)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        del data[rng.randrange(len(data)):]
    elif kind == 2:
        data[rng.randrange(len(data)):rng.randrange(len(data))] = rng.randbytes(rng.randint(1, 64))
    elif kind == 3:
        body = bytearray(valid[:-4])
        body[rng.randrange(len(body))] = rng.randrange(256)
        data = body + struct.pack("<I", zlib.crc32(bytes(body)))
    else:
        data = bytearray(rng.randbytes(rng.randint(0, 300)))
    return bytes(data)


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """`edgekit ARGV...` in-process: exit status, stdout, stderr."""
    from edgekit.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def digits_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """100 training digits (calibration) and the 360 held-out ones (evaluation), as .npz files."""
    import numpy as np

    from edgekit.models.digits import load_digits_split

    folder = tmp_path_factory.mktemp("digits")
    x_train, y_train, x_test, y_test = load_digits_split()
    np.savez(folder / "calib.npz", x=x_train[:100], y=y_train[:100])
    np.savez(folder / "eval.npz", x=x_test, y=y_test)
    return folder / "calib.npz", folder / "eval.npz"
