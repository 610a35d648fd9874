"""INT8 for SiLU, hard-swish, sigmoid, tanh, mean, permute and concat in the PT2E path, and the float-island
pre-flight that refuses an MCU model in seconds, before calibration.

`gelu_net` is what `edgekit compile test_int8_ops:gelu_net` imports (tests/ is on sys.path).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run, tiny_net
from outside_models import mcunet_se_int8_tflite
from torch import nn

from edgekit.convert.compile import compile_int8
from edgekit.convert.config import Int8Config
from edgekit.convert.islands import float_islands
from edgekit.convert.mcu import check_mcu_fit
from edgekit.convert.preflight import float_ops, module_types
from edgekit.convert.torch_model import as_torch_model
from edgekit.formats.bundle import load_bundle
from edgekit.graph import load_graph
from edgekit.models.digits import load_digits_split
from edgekit.targets import load_target

RESOLUTION = 8  # sklearn's digits as they come (tests/conftest.py's digits_data)


class InvertedResidual(nn.Module):
    """1x1 expand + SiLU, 3x3 depthwise + SiLU, 1x1 project; residual when the shape is kept."""

    def __init__(self, in_c: int, out_c: int, stride: int, act: type[nn.Module] = nn.SiLU) -> None:
        super().__init__()
        mid = 2 * in_c
        self.expand = nn.Sequential(nn.Conv2d(in_c, mid, 1, bias=False), nn.BatchNorm2d(mid), act())
        self.depthwise = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
                                       act())
        self.project = nn.Sequential(nn.Conv2d(mid, out_c, 1, bias=False), nn.BatchNorm2d(out_c))
        self.residual = stride == 1 and in_c == out_c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class MobileNet(nn.Module):
    """1x8x8 digits -> stem 3x3 + act, three inverted residuals, 1x1 head + act, mean over H,W, linear 10."""

    input_shape = (1, 1, RESOLUTION, RESOLUTION)

    def __init__(self, act: type[nn.Module] = nn.SiLU) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), act()),
            InvertedResidual(16, 16, 1, act), InvertedResidual(16, 24, 2, act), InvertedResidual(24, 24, 1, act),
            nn.Sequential(nn.Conv2d(24, 64, 1, bias=False), nn.BatchNorm2d(64), act()))
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def gelu_net() -> MobileNet:
    """The MobileNet with its third block (features.3) acting through GELU (erf), which has no int8 TFLM kernel."""
    model = MobileNet()
    model.features[3] = InvertedResidual(24, 24, 1, nn.GELU)
    return model.eval()


class EveryInt8Op(nn.Module):
    """SiLU, hard-swish, hard-sigmoid, sigmoid, tanh, tanh-GELU, permute, concat, mean, in one small net; its
    conv is padded "same" as transformers' EfficientNet writes convs (aten.conv2d.padding)."""

    input_shape = (1, 3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding="same")
        self.acts = nn.ModuleList([nn.SiLU(), nn.Hardswish(), nn.Hardsigmoid(), nn.Sigmoid(), nn.Tanh(),
                                   nn.GELU(approximate="tanh")])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = torch.cat([act(y) for act in self.acts], 1)
        return y.permute(0, 2, 3, 1).mean(3).mean(2)


def trained_silu_net(epochs: int = 10) -> MobileNet:
    """The SiLU MobileNet trained briefly (Adam, batch 64, one thread) on the digits training split, seeded."""
    x_train, y_train, _, _ = load_digits_split(RESOLUTION)
    torch.manual_seed(0)
    model = MobileNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: threads only contend on a shared machine
    try:
        model.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(x)).split(64):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def test_the_ops_with_int8_kernels_are_all_annotated_and_gelu_and_layer_norm_are_named() -> None:
    assert float_ops(as_torch_model(EveryInt8Op()), Int8Config()) == []

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.act, self.norm = nn.Conv2d(3, 8, 3), nn.GELU(), nn.LayerNorm(6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.act(self.conv(x)))

    ops = float_ops(as_torch_model(Mixed(), (1, 3, 8, 8)), Int8Config())
    assert [(o.module, o.module_type, o.aten) for o in ops] == [
        ("act", "torch.nn.GELU", "aten.gelu.default"), ("norm", "torch.nn.LayerNorm", "aten.layer_norm.default")]
    assert ops[0].describe().startswith("act (torch.nn.GELU): aten.gelu has no int8 TF Lite Micro kernel; "
                                        "replace GELU with Hardswish or ReLU")


@pytest.mark.slow
def test_a_silu_mobilenet_compiles_full_integer_for_an_mcu_within_one_point(
        tmp_path: Path, digits_data: tuple[Path, Path]) -> None:
    calib, held_out = digits_data
    model = trained_silu_net()
    _, _, x_test, y_test = load_digits_split(RESOLUTION)
    with torch.no_grad():
        fp32_accuracy = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    assert fp32_accuracy > 0.9  # trained: agreement is measured on a classifier that works

    target = load_target("stm32f746")
    report = compile_int8(model, "silu_net", target, tmp_path / "b", calib, held_out,
                          Int8Config.for_target(target, max_samples=48))
    assert report.float_islands == ()
    assert report.fidelity is not None and report.fidelity.samples == len(y_test)
    assert report.fidelity.top1_agreement is not None and report.fidelity.top1_agreement >= 0.99
    assert report.fidelity.accuracy_drop_points is not None and report.fidelity.accuracy_drop_points <= 1.0
    assert report.mcu is not None and report.mcu.fits
    layers = load_graph(tmp_path / "b" / load_bundle(tmp_path / "b").manifest.stages[0].file).layers
    silus = sum(isinstance(m, nn.SiLU) for m in model.modules())
    assert sum(layer.op == "sigmoid" for layer in layers) == silus == 8  # each SiLU is an int8 LOGISTIC x MUL
    assert {layer.dtype for layer in layers} == {"int8"}


@pytest.mark.slow
def test_mcunet_se_is_full_integer_and_its_arena_is_bounded_by_its_tensors(tmp_path: Path) -> None:
    path = mcunet_se_int8_tflite(tmp_path / "mcunet_se.tflite")
    layers = load_graph(path).layers
    ops = {layer.op for layer in layers}
    assert {"hardswish", "sigmoid", "mul", "transpose", "mean"} <= ops  # SE gates, hard-swish, TRANSPOSE+MEAN+MEAN
    assert not ops & {"quantize", "dequantize"} and {layer.dtype for layer in layers} == {"int8"}
    assert float_islands(path) == []

    fit = check_mcu_fit(path, "stm32f746")
    def nbytes(shape: tuple[int, ...]) -> int:
        return int(np.prod(shape))  # int8: one byte an element

    one_layer = max(sum(map(nbytes, layer.input_shapes)) + nbytes(layer.output_shape) for layer in layers)
    every_tensor = sum(nbytes(layer.output_shape) for layer in layers) + nbytes(layers[0].input_shapes[0])
    assert one_layer <= fit.arena_bytes <= every_tensor  # what one op needs live at once, at most everything
    assert fit.sram.available_bytes == 320 * 1024 and fit.sram.fits == (fit.sram.needed_bytes <= 320 * 1024)


def test_an_op_without_an_int8_kernel_fails_an_mcu_compile_in_seconds_naming_the_module(
        capsys: pytest.CaptureFixture, tmp_path: Path, digits_data: tuple[Path, Path]) -> None:
    calib, _ = digits_data
    start = time.monotonic()
    code, out, err = run(capsys, "compile", "test_int8_ops:gelu_net", "--target", "stm32f746", "--int8",
                         "--calib", str(calib), "-o", str(tmp_path / "b"))
    elapsed = time.monotonic() - start
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "features.3.expand.2 (torch.nn.GELU): aten.gelu has no int8 TF Lite Micro kernel" in err
    assert "replace GELU with Hardswish or ReLU, or target a device with a float runtime (e.g. rpi4)" in err
    assert "(and 1 more float ops)" in err  # the block's depthwise GELU
    assert elapsed < 20 and not (tmp_path / "b").exists()  # no calibration, no conversion, nothing written


def test_island_reasons_name_the_torch_module_or_the_file_quantizer(tiny_tflite: Path) -> None:
    """A float .tflite read as an INT8 model: every op is an island; its reason names what left it float."""
    from_file = float_islands(tiny_tflite)
    assert from_file and all("ai-edge-quantizer left it float" in i.reason and "PT2E" not in i.reason
                             for i in from_file)
    modules = module_types(as_torch_model(tiny_net()))
    assert modules is not None
    named = {i.layer: i.reason for i in float_islands(tiny_tflite, modules)}
    conv = next(layer for layer in named if layer.endswith(":conv_2d"))
    path = conv.split(":")[0]
    while path not in modules:
        path = path.rsplit(".", 1)[0]
    assert named[conv].endswith(f"the PT2E quantizer did not annotate {path} ({modules[path]}) for int8")
