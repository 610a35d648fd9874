"""INT8 conversion: real tools, real accuracy on held-out digits, int8 I/O, clear calibration errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.convert.calibration import load_calibration
from edgekit.convert.config import Int8Config
from edgekit.convert.fidelity import measure_fidelity
from edgekit.convert.quantize import quantize
from edgekit.errors import CalibrationError, EdgekitError
from edgekit.graph import load_graph
from edgekit.models import create_model
from edgekit.models.digits import load_digits_split
from edgekit.runtime.backends import FloatRunner, open_model
from edgekit.targets import load_target


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "method"), [("tflite", None), ("tflite", "minmax"), ("onnx", None)])
def test_digits_int8_within_one_point_of_fp32(fmt: str, method: str | None, tmp_path: Path) -> None:
    x_train, _, x_test, y_test = load_digits_split()
    model = create_model("digits_cnn", pretrained=True)
    path = quantize(model, x_train[:200], tmp_path / f"digits.{fmt}", Int8Config(format=fmt, calibration=method))
    with torch.no_grad():
        fidelity = measure_fidelity(lambda x: model(torch.from_numpy(x)).numpy(), FloatRunner(open_model(path)),
                                    x_test, y_test)
    assert fidelity.samples == len(y_test) == 360
    assert fidelity.fp32_accuracy is not None and fidelity.fp32_accuracy > 0.95
    assert fidelity.accuracy_drop_points is not None and fidelity.accuracy_drop_points <= 1.0
    assert fidelity.top1_agreement >= 0.98


@pytest.mark.slow
def test_tflite_is_full_integer_with_int8_io(tmp_path: Path) -> None:
    x_train, *_ = load_digits_split()
    path = quantize(create_model("digits_cnn", pretrained=True), x_train[:50], tmp_path / "d.tflite", Int8Config())
    model_in, (model_out,) = open_model(path).model_tensors()
    assert model_in.dtype == model_out.dtype == "int8"
    graph = load_graph(path)
    assert graph.inputs[0].dtype == "int8"
    assert not [l.name for l in graph.layers if l.op in ("quantize", "dequantize")]  # no float island
    assert {l.dtype for l in graph.layers if l.op in ("conv2d", "linear")} == {"int8"}


def test_config_presets_follow_the_target() -> None:
    assert Int8Config.for_target(load_target("stm32f746")).format == "tflite"
    assert Int8Config.for_target(load_target("rpi4")).format == "tflite"
    assert Int8Config.for_target(load_target("jetson-orin-nano")).format == "onnx"
    assert Int8Config.for_target(load_target("jetson-nano"), format="tflite").format == "tflite"
    with pytest.raises(EdgekitError, match="format must be one of"):
        Int8Config(format="tensorrt")
    with pytest.raises(EdgekitError, match="calibration for tflite must be one of histogram, minmax"):
        Int8Config(calibration="entropy")
    assert (Int8Config().method, Int8Config(format="onnx").method) == ("histogram", "minmax")


def test_minmax_calibration_takes_each_activation_s_whole_range(tmp_path: Path) -> None:
    """MinMax observers cover every value seen, a histogram may clip the tails: every activation's scale is at
    least the histogram model's, some are larger, and the recipe records the method."""
    from edgekit.formats.tflite import is_constant, parse_model, tensor_name

    x_train, *_ = load_digits_split()
    scales: dict[str, dict[str, float]] = {}
    for method in ("histogram", "minmax"):
        path = quantize(create_model("digits_cnn", pretrained=True), x_train[:64], tmp_path / f"{method}.tflite",
                        Int8Config(calibration=method))
        model = parse_model(path.read_bytes(), str(path))
        sub = model.subgraphs[0]
        scales[method] = {tensor_name(t): float(t.quantization.scale[0]) for i, t in enumerate(sub.tensors)
                          if t.type == 9 and not is_constant(model, i) and t.quantization is not None}
    assert scales["minmax"].keys() == scales["histogram"].keys() and len(scales["minmax"]) >= 5
    ratios = [scales["minmax"][name] / scales["histogram"][name] for name in scales["minmax"]]
    assert min(ratios) >= 0.999 and max(ratios) > 1.05, ratios
    assert Int8Config(calibration="minmax").recipe(32, False).calibration_method == "minmax"


def test_calibration_from_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
    data = load_calibration(tmp_path, (1, 3, 8, 8), max_samples=2)
    assert data.shape == (2, 3, 8, 8) and data.dtype == np.float32
    assert data[1].max() == pytest.approx(60 / 255)
    assert load_calibration(tmp_path, (1, 1, 8, 8), max_samples=10).shape == (3, 1, 8, 8)


def test_calibration_from_arrays(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((5, 1, 8, 8), np.float64))
    np.savez(tmp_path / "xy.npz", x=np.ones((4, 1, 8, 8)), y=np.arange(4))
    assert load_calibration(tmp_path / "x.npy", (1, 1, 8, 8), 3).shape == (3, 1, 8, 8)
    assert load_calibration(tmp_path / "xy.npz", (1, 1, 8, 8), 10).shape == (4, 1, 8, 8)


@pytest.mark.parametrize("make, message", [
    (lambda d: np.save(d / "c.npy", np.ones((5, 3, 8, 8))), r"shape \(3, 8, 8\), the model expects \(1, 8, 8\)"),
    (lambda d: np.save(d / "c.npy", np.array([["a"] * 64]).reshape(1, 1, 8, 8)), "dtype <U1, expected numbers"),
    (lambda d: np.savez(d / "c.npz", a=np.ones(3), b=np.ones(3)), "give one array or name the inputs 'x'"),
    (lambda d: (d / "c.npy").write_bytes(b"garbage"), "not a readable numpy file"),
    (lambda d: (d / "c").mkdir(), "no images"),
    (lambda d: ((d / "c").mkdir(), (d / "c" / "bad.png").write_bytes(b"not a png")), "bad.png: unreadable image"),
    (lambda d: (d / "c.txt").write_text("1 2 3"), "must be a .npy/.npz file or a folder"),
])
def test_bad_calibration_data_is_named(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    make(tmp_path)
    source = next(tmp_path.iterdir())
    with pytest.raises(CalibrationError, match=message):
        load_calibration(source, (1, 1, 8, 8), 10)


def test_data_free_synthesis_closes_the_batch_norm_gap() -> None:
    from edgekit.convert.synthetic import statistics_gap, synthesize_calibration

    model = create_model("digits_cnn", pretrained=True)
    synthetic = synthesize_calibration(model, model.input_shape, samples=16, max_steps=100)
    assert synthetic.inputs.shape == (16, 1, 8, 8) and synthetic.inputs.dtype == np.float32
    with torch.no_grad():
        measured = float(statistics_gap(model, torch.from_numpy(synthetic.inputs)))
    assert measured == pytest.approx(synthetic.synthesis.final_gap, rel=1e-4)
    assert synthetic.synthesis.final_gap < 0.1 * synthetic.synthesis.initial_gap


def test_data_free_needs_batch_norm() -> None:
    from edgekit.convert.synthetic import synthesize_calibration

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU())
    with pytest.raises(CalibrationError, match="needs batch-norm layers"):
        synthesize_calibration(model, (1, 1, 8, 8), samples=2, max_steps=1)


def test_image_calibration_applies_mean_and_std(tmp_path: Path) -> None:
    from PIL import Image

    from edgekit.formats.bundle import InputPreprocessing

    Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(tmp_path / "white.png")
    preprocessing = InputPreprocessing("NHWC", 3, 8, 8, 1 / 255, (0.5, 0.5, 0.0), (0.5, 0.25, 1.0))
    data = load_calibration(tmp_path, (1, 3, 8, 8), 1, preprocessing)
    assert data[0, :, 0, 0].tolist() == [1.0, 2.0, 1.0]


@pytest.mark.slow
def test_channels_last_io_takes_nhwc(tmp_path: Path) -> None:
    x_train, _, x_test, _ = load_digits_split()
    model = create_model("digits_cnn", pretrained=True)
    nchw = FloatRunner(open_model(quantize(model, x_train[:50], tmp_path / "nchw.tflite", Int8Config())))
    nhwc = FloatRunner(open_model(quantize(model, x_train[:50], tmp_path / "nhwc.tflite",
                                           Int8Config(channels_last_io=True))))
    assert nchw.input.shape == (1, 1, 8, 8) and nhwc.input.shape == (1, 8, 8, 1)
    sample = x_test[:1]
    assert np.array_equal(nhwc(sample.transpose(0, 2, 3, 1)), nchw(sample))


def test_a_model_that_cannot_be_exported_is_a_conversion_error(tmp_path: Path) -> None:
    class DataDependent(torch.nn.Module):
        input_shape = (1, 1, 8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x  # control flow on values: torch.export refuses it

    with pytest.raises(EdgekitError, match="DataDependent: INT8 onnx conversion failed"):
        quantize(DataDependent(), np.ones((2, 1, 8, 8), np.float32), tmp_path / "m.onnx", Int8Config(format="onnx"))
    assert list(tmp_path.iterdir()) == []
