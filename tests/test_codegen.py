"""Generated C: the host build (and the Cortex-M7 firmware under QEMU) equals the tflite-micro interpreter to the
bit, layer by layer and with a patch schedule compiled in; every activation sits in one arena with no two live
tensors overlapping; what the C cannot take is refused."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import trained_like
from torch import nn

from edgekit.convert.config import Int8Config
from edgekit.convert.quantize import quantize
from edgekit.errors import PlanError, UnsupportedOpError
from edgekit.formats import quant
from edgekit.formats.tflite import op_name, pack_model, parse_model, schema
from edgekit.graph.from_tflite import from_tflite
from edgekit.mcu.arena import overlapping, plan_buffers
from edgekit.mcu.board import QEMU_STACK_BYTES
from edgekit.mcu.build import build_host, build_qemu, elf_sizes, qemu_command, run_records
from edgekit.mcu.codegen import GeneratedC, generate
from edgekit.mcu.deploy import random_inputs, tflm_outputs
from edgekit.mcu.fixedpoint import mean_multiplier, nearest_indices, quantize_multiplier
from edgekit.mcu.patched import generate_patched
from edgekit.memory import MemoryPolicy, activation_memory
from edgekit.models import create_model
from edgekit.models.digits import load_digits_split
from edgekit.plan.patch import PatchPlan, fixed_plan, plan_patches
from edgekit.runtime.backends import TflmAdapter


class ResidualAvgPoolNet(nn.Module):
    """24x24 -> conv 3x3 -> residual conv block (ADD) -> avg pool 3x3/1 (SAME) -> avg pool 2 x2 -> flatten -> fc."""

    input_shape = (1, 3, 24, 24)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8))
        self.pools = nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.AvgPool2d(2), nn.AvgPool2d(2))
        self.fc = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.pools(torch.relu(x + self.body(x)))
        return self.fc(torch.flatten(x, 1))


class InvertedResidualNet(nn.Module):
    """A MobileNetV2 block whose projection sets the peak: 1x1 expand (x6), depthwise 3x3, 1x1 project, + input."""

    input_shape = (1, 3, 16, 16)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.block = nn.Sequential(nn.Conv2d(8, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU6(),
                                   nn.Conv2d(48, 48, 3, 1, 1, groups=48, bias=False), nn.BatchNorm2d(48), nn.ReLU6(),
                                   nn.Conv2d(48, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.fc((x + self.block(x)).mean((2, 3)))


class MaxPoolPadNet(nn.Module):
    """ResNet's stem pool: a padded 3x3/2 max pool, which litert-torch writes as PADV2 with -128 and a VALID pool."""

    input_shape = (1, 3, 16, 16)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)  # no ReLU: values below the zero point, so the pad value shows
        self.pool, self.fc = nn.MaxPool2d(3, 2, 1), nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stem(x)), 1))


class SqueezeExcite(nn.Module):
    """MCUNet/MobileNetV3's SE block: global mean -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid, scaling the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, channels // 2, 1), nn.Conv2d(channels // 2, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))


class SqueezeExciteNet(nn.Module):
    """MCUNet-style: hard-swish stem, depthwise + SE block, a scaled 1x1 branch added back, the two concatenated,
    global mean over the channels-first view (TRANSPOSE + MEAN), linear head, softmax."""

    input_shape = (1, 3, 16, 16)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8),
                                       nn.Hardswish(), SqueezeExcite(8))
        self.branch = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.depthwise(x) + self.branch(x) * 0.5
        return torch.softmax(8.0 * self.fc(torch.cat([y, x], 1).mean((2, 3))), -1)


class UpsampleSubtractNet(nn.Module):
    """A feature-pyramid step as converters see one: a stride-2 branch upsampled (nearest: litert-torch writes
    RESIZE_NEAREST_NEIGHBOR with half-pixel centers) and subtracted from the full-resolution branch (SUB)."""

    input_shape = (1, 3, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.full, self.coarse, self.head = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = nn.functional.interpolate(self.coarse(x), scale_factor=2, mode="nearest")
        return self.head(torch.relu(self.full(x) - up))


def _int8(model: nn.Module, path: Path, channels_last: bool = True) -> Path:
    """`model` as a full-integer .tflite with int8 I/O (NHWC input: the MCU preset), calibrated on 4 random inputs."""
    calibration = np.random.default_rng(0).random((4, *model.input_shape[1:]), dtype=np.float32)
    return quantize(model, calibration, path, Int8Config(format="tflite", channels_last_io=channels_last))


@pytest.fixture(scope="module")
def se_net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _int8(trained_like(SqueezeExciteNet()), tmp_path_factory.mktemp("codegen") / "se_int8.tflite")


@pytest.fixture(scope="module")
def upsample_sub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = _int8(trained_like(UpsampleSubtractNet()), tmp_path_factory.mktemp("codegen") / "upsample_sub.tflite")
    model = parse_model(path.read_bytes(), "upsample_sub")
    assert {"RESIZE_NEAREST_NEIGHBOR", "SUB"} <= {op_name(model, op) for op in model.subgraphs[0].operators}
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x_train, *_ = load_digits_split()
    path = tmp_path_factory.mktemp("codegen") / "digits_int8.tflite"
    return quantize(create_model("digits_cnn", pretrained=True), x_train[:100], path, Int8Config())


@pytest.fixture(scope="module")
def mbv2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MobileNetV2-0.35@96 INT8 with NHWC int8 I/O (the MCU preset) and trained-like batch norms: conftest's
    mbv2_int8_tflite answers -128 everywhere for every input, which no bit-exact check could tell from a bug."""
    path = tmp_path_factory.mktemp("codegen") / "mbv2_int8.tflite"
    return _int8(trained_like(create_model("mobilenet_v2_035_96")), path)


@pytest.fixture(scope="module")
def digits_nhwc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits CNN as compile makes it for an MCU (NHWC int8 I/O), so a patch stage can start at the image."""
    x_train, *_ = load_digits_split()
    path = tmp_path_factory.mktemp("codegen") / "digits_nhwc_int8.tflite"
    return quantize(create_model("digits_cnn", pretrained=True), x_train[:100], path,
                    Int8Config(format="tflite", channels_last_io=True))


@pytest.fixture(scope="module")
def residual_nhwc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The residual net with NHWC int8 I/O, so a patch stage can start at the image."""
    return _int8(trained_like(ResidualAvgPoolNet()), tmp_path_factory.mktemp("codegen") / "residual_nhwc.tflite")


@pytest.fixture(scope="module")
def residual(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("codegen") / "residual_avgpool_int8.tflite"
    return _int8(trained_like(ResidualAvgPoolNet()), path, channels_last=False)


def _inputs(path: Path, generated: GeneratedC) -> np.ndarray:
    """Four random inputs (int8, or float32 for a float input), and for the digits CNN four held-out digits
    quantized as the model's input."""
    x = random_inputs(generated, 4, seed=1)
    if generated.input_shape == (1, 1, 8, 8):
        *_, x_test, _ = load_digits_split()
        model_in, _ = TflmAdapter(path.read_bytes()).model_tensors()
        assert model_in.scale is not None and model_in.zero_point is not None
        digits = quant.quantize(x_test[:4], model_in.scale, model_in.zero_point).reshape(4, 1, 1, 8, 8)
        x = np.concatenate([x, digits])
    return x


def _tflm(path: Path, inputs: np.ndarray) -> np.ndarray:
    """The tflite-micro interpreter's int8 output for each input, one row each."""
    return tflm_outputs(path.read_bytes(), inputs)


@pytest.mark.parametrize("name", ["digits", "mbv2", "residual", "se_net", "upsample_sub", "float_edges"])
def test_host_build_is_bit_exact_with_tflite_micro(name: str, request: pytest.FixtureRequest,
                                                    tmp_path: Path) -> None:
    path = request.getfixturevalue(name)
    generated = generate(path.read_bytes(), tmp_path / "c", path.name)
    exe = build_host(generated, tmp_path / "model")
    x = _inputs(path, generated)
    want = _tflm(path, x)
    assert len({row.tobytes() for row in want}) == len(x)  # distinct outputs: a broken kernel would show
    got = run_records([str(exe)], x, generated.output_bytes, timeout_s=60, output_dtype=generated.output_dtype)
    np.testing.assert_array_equal(got.outputs, want)
    assert generated.arena_bytes >= generated.arena_lower_bound_bytes


class Unary(nn.Module):
    """One activation over a 16x16 image: 256 pixels, so a ramp input visits every int8 value."""

    input_shape = (1, 1, 16, 16)

    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        self.spread, self.activation = nn.Conv2d(1, 1, 1), activation  # [0, 1] -> [-4, 4]
        nn.init.constant_(self.spread.weight, 8.0)
        nn.init.constant_(self.spread.bias, -4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.spread(x))


@pytest.mark.parametrize("activation", [nn.Hardswish(), nn.Sigmoid()], ids=["hard_swish", "logistic"])
def test_lookup_tables_equal_tflite_micro_on_every_int8_value(activation: nn.Module, tmp_path: Path) -> None:
    path = _int8(Unary(activation), tmp_path / "unary.tflite")
    generated = generate(path.read_bytes(), tmp_path / "c", path.name)
    model = parse_model(path.read_bytes(), "unary")
    assert {"HARD_SWISH", "LOGISTIC"} & {op_name(model, op) for op in model.subgraphs[0].operators}
    ramp = np.arange(-128, 128, dtype=np.int8).reshape(1, *generated.input_shape)
    x = np.concatenate([ramp, ramp[:, ::-1]])
    want = _tflm(path, x)
    assert len(np.unique(want)) > 100  # the table's whole range, not a constant
    got = run_records([str(build_host(generated, tmp_path / "unary"))], x, 256, timeout_s=60)
    np.testing.assert_array_equal(got.outputs, want)


class Graph:
    """A one-subgraph .tflite built tensor by tensor (what a converter would write, with scales and zero points of
    the test's choosing): int8 activations quantized per tensor, int8 or int32 constants."""

    def __init__(self) -> None:
        self.s = schema()
        self.tensors: list[object] = []
        self.buffers = [self.s.BufferT()]  # buffer 0: empty, for every activation
        self.operators: list[object] = []
        self.codes: list[str] = []

    def tensor(self, shape: tuple[int, ...], scale: float | None = None, zero_point: int = 0,
               data: np.ndarray | None = None, dtype: str = "int8") -> int:
        """A tensor (an activation, or a constant holding `data`); quantized when `scale` is given."""
        t = self.s.TensorT()
        t.name, t.shape, t.buffer = f"t{len(self.tensors)}".encode(), np.array(shape, np.int32), 0
        t.type = getattr(self.s.TensorType, (dtype if data is None else data.dtype.name).upper())
        if scale is not None:
            t.quantization = self.s.QuantizationParametersT()
            t.quantization.scale, t.quantization.zeroPoint = np.float32([scale]), np.int64([zero_point])
        if data is not None:
            buffer = self.s.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            t.buffer = len(self.buffers)
            self.buffers.append(buffer)
        self.tensors.append(t)
        return len(self.tensors) - 1

    def op(self, name: str, inputs: list[int], output: int, options: object = None) -> int:
        if name not in self.codes:
            self.codes.append(name)
        op = self.s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = self.codes.index(name), np.int32(inputs), np.int32([output])
        if options is not None:
            op.builtinOptionsType = getattr(self.s.BuiltinOptions, type(options).__name__[:-1])
            op.builtinOptions = options
        self.operators.append(op)
        return output

    def pack(self, path: Path, graph_input: int, graph_output: int) -> Path:
        graph = self.s.SubGraphT()
        graph.tensors, graph.operators = self.tensors, self.operators
        graph.inputs, graph.outputs = np.int32([graph_input]), np.int32([graph_output])
        codes = []
        for name in self.codes:
            code = self.s.OperatorCodeT()
            code.builtinCode = getattr(self.s.BuiltinOperator, name)
            code.deprecatedBuiltinCode, code.version = min(code.builtinCode, 127), 1
            codes.append(code)
        model = self.s.ModelT()
        model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, codes, [graph], self.buffers
        path.write_bytes(pack_model(model))
        return path


def _equals_tflite_micro(path: Path, x: np.ndarray, tmp_path: Path) -> np.ndarray:
    """Run `x` through the host build of `path`'s generated C, assert it equals tflite-micro's output to the bit (a
    float32 output too); that output."""
    generated = generate(path.read_bytes(), tmp_path / "c", path.name)
    want = _tflm(path, x)
    got = run_records([str(build_host(generated, tmp_path / "exe"))], x, generated.output_bytes, timeout_s=60,
                      output_dtype=generated.output_dtype)
    np.testing.assert_array_equal(got.outputs, want)
    np.testing.assert_array_equal(got.outputs.view(np.uint8), want.view(np.uint8))
    return want


@pytest.fixture(scope="module")
def float_edges(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every new kernel in a row: float32 in -> QUANTIZE -> SUB (a per-channel constant) -> RESIZE_NEAREST_NEIGHBOR
    (half-pixel centers) -> QUANTIZE int8 -> int8 -> DEQUANTIZE -> float32 out."""
    g = Graph()
    x = g.tensor((1, 6, 5, 4), dtype="float32")
    q = g.op("QUANTIZE", [x], g.tensor((1, 6, 5, 4), 0.03, -10))
    k = g.tensor((1, 1, 1, 4), 0.02, 5, np.int8([-100, -7, 40, 127]))
    options = g.s.SubOptionsT()
    d = g.op("SUB", [q, k], g.tensor((1, 6, 5, 4), 0.04, 3), options)
    resize = g.s.ResizeNearestNeighborOptionsT()
    resize.halfPixelCenters = True
    r = g.op("RESIZE_NEAREST_NEIGHBOR", [d, g.tensor((2,), data=np.int32([9, 8]))], g.tensor((1, 9, 8, 4), 0.04, 3),
             resize)
    requantized = g.op("QUANTIZE", [r], g.tensor((1, 9, 8, 4), 0.05, -20))
    out = g.op("DEQUANTIZE", [requantized], g.tensor((1, 9, 8, 4), dtype="float32"))
    return g.pack(tmp_path_factory.mktemp("codegen") / "float_edges.tflite", x, out)


# (input scale, zero point) -> (output scale, zero point): ratios of exactly 1/2 (every odd input a tie), 2 and 4
# (the multiplier shifted up), odd ones both ways, and a zero point at the int8 edge
REQUANTIZE = [((0.25, 3), (0.5, -7)), ((0.5, -20), (0.25, 11)), ((0.0371, -20), (0.0123, 45)),
              ((0.02, 0), (0.0377, -128)), ((0.1, 127), (0.0625, 0))]


@pytest.mark.parametrize(("source", "target"), REQUANTIZE)
def test_quantize_int8_to_int8_equals_tflite_micro_on_every_int8_value(source: tuple[float, int],
                                                                        target: tuple[float, int],
                                                                        tmp_path: Path) -> None:
    g = Graph()
    x = g.tensor((1, 16, 16, 1), *source)
    path = g.pack(tmp_path / "quantize.tflite", x, g.op("QUANTIZE", [x], g.tensor((1, 16, 16, 1), *target)))
    ramp = np.arange(-128, 128, dtype=np.int8).reshape(1, 1, 16, 16, 1)
    want = _equals_tflite_micro(path, np.concatenate([ramp, ramp[:, :, ::-1]]), tmp_path)
    assert len(np.unique(want)) > 40  # a requantization, not a constant


@pytest.mark.parametrize(("scales", "activation"), [((0.02, 0.031, 0.05, 0.017, 0.04, 0.06), 0),
                                                    ((0.05, 0.02, 0.06, 0.01, 0.05, 0.06), 1)], ids=["none", "relu"])
def test_sub_broadcasting_either_input_equals_tflite_micro(scales: tuple[float, ...], activation: int,
                                                           tmp_path: Path) -> None:
    """x - full (same shapes), then - a per-channel constant (input 2 broadcast), then a per-row constant minus it
    (input 1 broadcast): three SUBs, each with its own scales and zero points, on seeded random inputs."""
    rng = np.random.default_rng(4)
    sx, sk, s1, sc, s2, sr = scales
    g, shape = Graph(), (1, 4, 5, 8)

    def constant(dims: tuple[int, ...], scale: float, zero_point: int) -> int:
        return g.tensor(dims, scale, zero_point, rng.integers(-128, 128, dims, dtype=np.int8))

    def sub(a: int, b: int, scale: float, zero_point: int) -> int:
        options = g.s.SubOptionsT()
        options.fusedActivationFunction = activation
        return g.op("SUB", [a, b], g.tensor(shape, scale, zero_point), options)

    x = g.tensor(shape, sx, 9)
    first = sub(x, constant(shape, sk, -5), s1, -3)
    second = sub(first, constant((1, 1, 1, 8), sc, 17), s2, 6)
    path = g.pack(tmp_path / "sub.tflite", x, sub(constant((1, 4, 1, 1), sr, -30), second, s1, 2))
    x_in = rng.integers(-128, 128, (6, *shape), dtype=np.int8)
    want = _equals_tflite_micro(path, x_in, tmp_path)
    assert len({row.tobytes() for row in want}) == len(x_in) and len(np.unique(want)) > 20


@pytest.mark.parametrize(("align_corners", "half_pixel_centers"), [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize(("size_in", "size_out"), [((5, 7), (12, 10)), ((7, 9), (3, 4))], ids=["up", "down"])
def test_resize_nearest_equals_tflite_micro(align_corners: bool, half_pixel_centers: bool,
                                            size_in: tuple[int, int], size_out: tuple[int, int],
                                            tmp_path: Path) -> None:
    g = Graph()
    x = g.tensor((1, *size_in, 3), 0.05, -4)
    options = g.s.ResizeNearestNeighborOptionsT()
    options.alignCorners, options.halfPixelCenters = align_corners, half_pixel_centers
    out = g.op("RESIZE_NEAREST_NEIGHBOR", [x, g.tensor((2,), data=np.int32(size_out))],
               g.tensor((1, *size_out, 3), 0.05, -4), options)
    path = g.pack(tmp_path / "resize.tflite", x, out)
    pixels = np.arange(size_in[0] * size_in[1] * 3) % 251 - 125  # every input pixel distinct: an index off shows
    x_in = np.stack([pixels, pixels[::-1]]).astype(np.int8).reshape(2, 1, *size_in, 3)
    _equals_tflite_micro(path, x_in, tmp_path)


@pytest.mark.parametrize(("scale", "zero_point"), [(0.05, 0), (0.0137, -20), (0.25, 127), (3.1e-4, -128)])
def test_quantize_float_input_equals_tflite_micro(scale: float, zero_point: int, tmp_path: Path) -> None:
    """x / scale exactly halfway between two integers (rounded away from zero) and its float32 neighbours (either
    side), both signs, values beyond the int8 range, random ones."""
    g = Graph()
    x = g.tensor((1, 8, 8, 4), dtype="float32")
    path = g.pack(tmp_path / "quantize.tflite", x, g.op("QUANTIZE", [x], g.tensor((1, 8, 8, 4), scale, zero_point)))
    f32, k = np.float32, np.arange(-200, 200, dtype=np.float32)
    halves = ((k + f32(0.5)) * f32(scale)).astype(np.float32)
    halves = halves[halves / f32(scale) == k + f32(0.5)]
    assert len(halves) > 100
    values = np.concatenate([halves, np.nextafter(halves, f32(np.inf)), np.nextafter(halves, f32(-np.inf)),
                             f32([1e3, -1e3]) * f32(scale),
                             np.random.default_rng(5).normal(0, 80 * scale, 1024).astype(np.float32)])
    records = np.resize(values, (-(-len(values) // 256), 1, 8, 8, 4)).astype(np.float32)
    want = _equals_tflite_micro(path, records, tmp_path)
    assert len(np.unique(want)) > 200


@pytest.mark.parametrize(("scale", "zero_point"), [(0.05, 0), (0.0137, -20), (1.7e-5, 127), (12.5, -128)])
def test_dequantize_output_equals_tflite_micro_on_every_int8_value(scale: float, zero_point: int,
                                                                   tmp_path: Path) -> None:
    g = Graph()
    x = g.tensor((1, 16, 16, 1), scale, zero_point)
    path = g.pack(tmp_path / "dequantize.tflite", x, g.op("DEQUANTIZE", [x], g.tensor((1, 16, 16, 1),
                                                                                      dtype="float32")))
    ramp = np.arange(-128, 128, dtype=np.int8).reshape(1, 1, 16, 16, 1)
    want = _equals_tflite_micro(path, ramp, tmp_path)
    assert want.dtype == np.float32 and len(np.unique(want)) == 256


def _dequantize_midway(g: Graph) -> tuple[int, int]:
    x = g.tensor((1, 4, 4, 2), 0.1, 0)
    mid = g.op("DEQUANTIZE", [x], g.tensor((1, 4, 4, 2), dtype="float32"))
    return x, g.op("QUANTIZE", [mid], g.tensor((1, 4, 4, 2), 0.1, 0))


def _per_channel_quantize(g: Graph) -> tuple[int, int]:
    x, out = g.tensor((1, 4, 4, 2), 0.1, 0), g.tensor((1, 4, 4, 2), 0.1, 0)
    q = g.tensors[out].quantization  # type: ignore[attr-defined]
    q.scale, q.zeroPoint, q.quantizedDimension = np.float32([0.1, 0.2]), np.int64([0, 0]), 3
    return x, g.op("QUANTIZE", [x], out)


def _sub_of_tiny_output_scale(g: Graph) -> tuple[int, int]:
    x, k = g.tensor((1, 4, 4, 2), 0.1, 0), g.tensor((1, 1, 1, 2), 0.1, 0, np.int8([1, 2]))
    return x, g.op("SUB", [x, k], g.tensor((1, 4, 4, 2), 1e-9, 0), g.s.SubOptionsT())


@pytest.mark.parametrize(("build", "message"), [
    (_dequantize_midway, r"activation 't1' is float32.*only as the input of QUANTIZE or the output of DEQUANTIZE"),
    (_per_channel_quantize, r"operator 0 \(QUANTIZE\): an activation without one scale and zero point"),
    (_sub_of_tiny_output_scale, r"operator 0 \(SUB\): output scale \S+ is below 2 x max")])
def test_what_the_new_kernels_cannot_take_is_refused(build: Callable[[Graph], tuple[int, int]], message: str,
                                                     tmp_path: Path) -> None:
    g = Graph()
    path = g.pack(tmp_path / "refused.tflite", *build(g))
    with pytest.raises(UnsupportedOpError, match=message):
        generate(path.read_bytes(), tmp_path / "c", "refused")


def test_nearest_indices_follow_tflite_rounding() -> None:
    # 3 -> 5 with align_corners: i * 0.5 rounded half away from zero (0.5 -> 1, 1.5 -> 2), not to even
    assert nearest_indices(3, 5, True, False) == [0, 1, 1, 2, 2]
    assert nearest_indices(3, 5, False, False) == [0, 0, 1, 1, 2]  # floor(i * 0.6)
    assert nearest_indices(3, 5, False, True) == [0, 0, 1, 2, 2]  # floor((i + 0.5) * 0.6)


def test_a_residual_add_is_fused_into_its_projection_and_stays_bit_exact(tmp_path: Path) -> None:
    path = _int8(trained_like(InvertedResidualNet()), tmp_path / "inverted_residual.tflite")
    generated = generate(path.read_bytes(), tmp_path / "c", path.name)
    source = (tmp_path / "c" / "ek_model.c").read_text()
    assert source.count(".add = &a") == 1 and "ek_add(" not in source  # the ADD runs inside the convolution
    graph = from_tflite(path)
    fused, unfused = (activation_memory(graph, policy).peak_bytes
                      for policy in (MemoryPolicy.generated_c(), MemoryPolicy()))
    # unfused, the projection holds the depthwise output 16x16x48, the skip and its own output (16x16x8 each); fused,
    # the peak is the depthwise in place: its 16x16x48 buffer, the skip and the 16x16 copy of one input channel
    assert generated.arena_bytes == generated.arena_lower_bound_bytes == fused == 16 * 16 * (48 + 8 + 1)
    assert unfused == 16 * 16 * (48 + 8 + 8)
    want = _equals_tflite_micro(path, random_inputs(generated, 6, seed=3), tmp_path)
    assert len({row.tobytes() for row in want}) > 1  # the inputs reach the output: a broken sum would show


def test_padv2_before_a_max_pool_equals_tflite_micro(tmp_path: Path) -> None:
    path = _int8(trained_like(MaxPoolPadNet()), tmp_path / "maxpool_pad.tflite")
    model = parse_model(path.read_bytes(), path.name)
    assert "PADV2" in [op_name(model, op) for op in model.subgraphs[0].operators]
    generated = generate(path.read_bytes(), tmp_path / "probe", path.name)
    want = _equals_tflite_micro(path, random_inputs(generated, 4, seed=5), tmp_path)
    assert len({row.tobytes() for row in want}) > 1


def test_the_se_net_runs_the_mcunet_operators(se_net: Path) -> None:
    model = parse_model(se_net.read_bytes(), "se_net")
    ops = {op_name(model, op) for op in model.subgraphs[0].operators}
    assert {"HARD_SWISH", "LOGISTIC", "MUL", "ADD", "CONCATENATION", "TRANSPOSE", "MEAN", "SOFTMAX"} <= ops
    mul = next(op for op in model.subgraphs[0].operators if op_name(model, op) == "MUL")
    shapes = [tuple(model.subgraphs[0].tensors[t].shape) for t in mul.inputs]
    assert shapes == [(1, 8, 8, 8), (1, 1, 1, 8)]  # the SE scale, broadcast over H and W


def test_first_fit_shares_bytes_between_tensors_never_alive_together() -> None:
    # a (100 B) lives over ops 0-1, b (50 B) over 1-2, c (100 B) over 2-3: c can reuse a's bytes, b cannot
    lifetimes = {0: (100, 0, 1), 1: (50, 1, 2), 2: (100, 2, 3)}
    offsets = plan_buffers(lifetimes)
    assert offsets == {0: 0, 2: 0, 1: 100}
    assert overlapping(lifetimes, offsets) == []
    assert overlapping(lifetimes, {0: 0, 1: 50, 2: 0}) == [(0, 1), (1, 2)]


def test_generated_c_declares_one_arena_and_its_constants(residual: Path, tmp_path: Path) -> None:
    generated = generate(residual.read_bytes(), tmp_path, "residual")
    source = (tmp_path / "ek_model.c").read_text()
    assert "static int8_t arena[EK_ARENA_BYTES];" in source
    assert f"#define EK_ARENA_BYTES {generated.arena_bytes}" in (tmp_path / "ek_model.h").read_text()
    model = parse_model(residual.read_bytes(), "residual")
    weights = sum(np.prod(model.subgraphs[0].tensors[op.inputs[1]].shape) for op in model.subgraphs[0].operators
                  if op_name(model, op) in {"CONV_2D", "FULLY_CONNECTED"})
    assert generated.weight_flash_bytes > weights  # int8 weights plus int32 biases and multipliers


def test_an_operator_without_a_kernel_is_refused_by_name(digits: Path, tmp_path: Path) -> None:
    model = parse_model(digits.read_bytes(), "digits")
    mean = next(op for op in model.subgraphs[0].operators if op_name(model, op) == "MEAN")
    code = model.operatorCodes[mean.opcodeIndex]
    code.builtinCode = code.deprecatedBuiltinCode = 36  # GATHER
    with pytest.raises(UnsupportedOpError, match="no kernel for GATHER"):
        generate(pack_model(model), tmp_path, "digits")


def test_names_from_the_model_cannot_reach_the_c_code(digits: Path, tmp_path: Path) -> None:
    model = parse_model(digits.read_bytes(), "digits")
    sub = model.subgraphs[0]
    sub.tensors[sub.operators[1].outputs[0]].name = b"x */\n#error injected\n/* y"
    generated = generate(pack_model(model), tmp_path / "c", "digits */ int injected; /*")
    assert "injected" in (tmp_path / "c" / "ek_model.c").read_text()  # kept, as comment text
    build_host(generated, tmp_path / "model")  # would fail on the #error or the stray declaration


def test_a_float_model_is_refused(tiny_tflite: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedOpError, match="float32.*full-integer INT8"):
        generate(tiny_tflite.read_bytes(), tmp_path, "tiny")


def test_multipliers_follow_tflite_quantize_multiplier() -> None:
    assert quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(0.75) == (3 << 29, 0)
    assert quantize_multiplier(3.0) == (3 << 29, 2)
    assert quantize_multiplier(1 - 2.0**-33) == (1 << 30, 1)  # rounds up to 2^31: halved, shift one more
    assert quantize_multiplier(2.0**-40) == (0, 0)  # below 2^-31: TF Lite flushes to zero
    assert quantize_multiplier(1.0) == (1 << 30, 1)  # 0.5 x 2^1
    assert mean_multiplier(1.0, 1.0, 16) == (1 << 30, -3)  # 1/16 folded into the shift: 0.5 x 2^(1 - 4)


def _cortex_m7_missing() -> str | None:
    tools = ("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    return f"{', '.join(missing)} not installed (tools/setup.sh)" if missing else None


@pytest.mark.slow
@pytest.mark.skipif(_cortex_m7_missing() is not None, reason=str(_cortex_m7_missing()))
@pytest.mark.parametrize("name", ["digits", "mbv2", "residual", "se_net", "upsample_sub", "float_edges"])
def test_cortex_m7_firmware_under_qemu_is_bit_exact(name: str, request: pytest.FixtureRequest,
                                                    tmp_path: Path) -> None:
    path = request.getfixturevalue(name)
    generated = generate(path.read_bytes(), tmp_path / "c", path.name)
    elf = build_qemu(generated, tmp_path / "model.elf")
    sizes = elf_sizes(elf)
    assert sizes["text"] > generated.weight_flash_bytes and sizes["bss"] >= generated.arena_bytes + QEMU_STACK_BYTES
    x = _inputs(path, generated)
    got = run_records(qemu_command(elf), x, generated.output_bytes, timeout_s=120, output_dtype=generated.output_dtype)
    np.testing.assert_array_equal(got.outputs, _tflm(path, x))
    assert got.stack_bytes is not None and 64 < got.stack_bytes < QEMU_STACK_BYTES  # painted, then partly used


def _plan(name: str, path: Path, resident: bool = True) -> PatchPlan:
    """MobileNetV2: the planner's choice, the image resident (held whole in the arena) or streamed; the others a
    stage and grid chosen by hand (the residual net's through the SAME 3x3 average pool, which TF Lite averages
    over the pixels inside)."""
    graph, policy = from_tflite(path), MemoryPolicy.generated_c()  # the C's own accounting, as codegen plans
    if name == "mbv2":
        return plan_patches(graph, input_resident=resident, policy=policy)
    stage, grid = {"residual_nhwc": ("wrapped.pools.1:average_pool_2d", 3),  # through the ADD and the SAME pool
                   "digits_nhwc": ("wrapped.features.1.0:conv_2d", 2),  # depthwise then conv, 8x8 -> 4x4
                   "se_net": ("wrapped.stem.0:conv_2d", 2)}[name]  # the stem conv: its hard-swish is no stage op
    return fixed_plan(graph, stage, grid, input_resident=resident, policy=policy)


@pytest.mark.parametrize(("name", "resident"), [("mbv2", True), ("mbv2", False), ("residual_nhwc", True),
                                               ("digits_nhwc", False), ("se_net", True)],
                         ids=["mbv2-resident", "mbv2-streamed", "residual-resident", "digits-streamed", "se-resident"])
def test_patched_c_equals_layer_by_layer_c_and_tflite_micro(name: str, resident: bool,
                                                             request: pytest.FixtureRequest, tmp_path: Path) -> None:
    path = request.getfixturevalue(name)
    plan = _plan(name, path, resident)
    assert plan.chosen is not None and len(plan.tiles) == plan.chosen.grid ** 2 >= 4
    patched = generate_patched(path, plan, tmp_path / "patched")
    layered = generate(path.read_bytes(), tmp_path / "layered", path.name)
    source = (tmp_path / "patched" / "ek_model.c").read_text()
    assert source.count("static int8_t arena[") == 1 and f"/* patch {len(plan.tiles) - 1}:" in source
    x = np.random.default_rng(2).integers(-128, 128, (3, *patched.input_shape), dtype=np.int8)
    want = _tflm(path, x)
    assert len({row.tobytes() for row in want}) == len(x)
    out_bytes = int(np.prod(patched.output_shape))
    got = run_records([str(build_host(patched, tmp_path / "patched.exe"))], x, out_bytes, timeout_s=60)
    layer_by_layer = run_records([str(build_host(layered, tmp_path / "layered.exe"))], x, out_bytes, timeout_s=60)
    np.testing.assert_array_equal(got.outputs, want)
    np.testing.assert_array_equal(got.outputs, layer_by_layer.outputs)
    assert patched.arena_lower_bound_bytes <= patched.arena_bytes <= layered.arena_bytes
    assert name != "mbv2" or patched.arena_bytes < layered.arena_bytes / 3  # its peak is in the stage
    # the planner's accounting (pads folded, depthwise in place; a resident image kept through the stage)
    assert layered.arena_bytes == activation_memory(from_tflite(path), MemoryPolicy.generated_c()).peak_bytes
    assert patched.arena_bytes == plan.chosen.peak_bytes
    assert ("ek_model_read_window(" in source) != resident
    assert patched.weight_flash_bytes == layered.weight_flash_bytes  # every patch calls the same constants


def test_a_stage_operator_without_a_patched_kernel_is_refused(se_net: Path, tmp_path: Path) -> None:
    plan = fixed_plan(from_tflite(se_net), "wrapped.stem.2:hard_swish", 2, input_resident=True)
    with pytest.raises(UnsupportedOpError, match=r"operator 2 \(HARD_SWISH\) in the patch stage"):
        generate_patched(se_net, plan, tmp_path)


def test_a_plan_made_on_another_model_is_refused(mbv2: Path, residual_nhwc: Path, tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="not this model's first layers"):
        generate_patched(mbv2, _plan("residual_nhwc", residual_nhwc), tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(_cortex_m7_missing() is not None, reason=str(_cortex_m7_missing()))
@pytest.mark.parametrize(("name", "resident"), [("digits_nhwc", False), ("residual_nhwc", True), ("se_net", True)])
def test_patched_firmware_of_the_small_models_under_qemu_is_bit_exact(name: str, resident: bool,
                                                                      request: pytest.FixtureRequest,
                                                                      tmp_path: Path) -> None:
    path = request.getfixturevalue(name)
    generated = generate_patched(path, _plan(name, path, resident), tmp_path / "c")
    x = random_inputs(generated, 3, seed=4)
    got = run_records(qemu_command(build_qemu(generated, tmp_path / "model.elf")), x, generated.output_bytes,
                      timeout_s=120)
    np.testing.assert_array_equal(got.outputs, _tflm(path, x))


@pytest.mark.slow
@pytest.mark.skipif(_cortex_m7_missing() is not None, reason=str(_cortex_m7_missing()))
def test_patched_firmware_under_qemu_is_bit_exact_and_counts_the_recompute(mbv2: Path, tmp_path: Path) -> None:
    plans = {"patched": _plan("mbv2", mbv2), "streamed": _plan("mbv2", mbv2, resident=False)}
    x = np.random.default_rng(3).integers(-128, 128, (2, 1, 96, 96, 3), dtype=np.int8)
    runs, want = {}, _tflm(mbv2, x)
    for kind, generated in (("layered", generate(mbv2.read_bytes(), tmp_path / "layered", "mbv2")),
                            *((k, generate_patched(mbv2, plan, tmp_path / k)) for k, plan in plans.items())):
        elf = build_qemu(generated, tmp_path / f"{kind}.elf")
        runs[kind] = run_records(qemu_command(elf), x, int(np.prod(generated.output_shape)), timeout_s=120)
        np.testing.assert_array_equal(runs[kind].outputs, want)
    layered = runs["layered"].instructions
    assert layered is not None
    for kind, plan in plans.items():
        patched = runs[kind].instructions
        assert plan.chosen is not None and patched is not None
        assert layered + plan.chosen.extra_macs < patched < layered * 1.5  # a recomputed MAC: an instruction or more
