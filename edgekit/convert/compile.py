"""`edgekit compile`: quantize a model for a target, check what it cost, write artifacts atomically."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.convert.calibration import Preprocessing, load_calibration, load_labelled
from edgekit.convert.config import Int8Config
from edgekit.convert.fidelity import Fidelity, measure_fidelity, onnx_layer_sqnr
from edgekit.convert.islands import FloatIsland, float_islands
from edgekit.convert.mcu import McuFit, check_mcu_fit, write_mcu_pack
from edgekit.convert.quantize import quantize
from edgekit.convert.synthetic import synthesize_calibration
from edgekit.errors import ConversionError
from edgekit.formats.bundle import MANIFEST, InputPreprocessing, Manifest, Stage, TensorInfo, write_bundle
from edgekit.report.fidelity import render_fidelity
from edgekit.targets import Device

SQNR_SAMPLES = 16  # held-out samples run through the augmented ONNX models for per-layer SQNR


@dataclass(frozen=True)
class CompileReport:
    """What compile did and what it cost: artifact, calibration, float islands, fidelity."""

    model: str
    target: str
    config: Int8Config
    artifact: str
    artifact_bytes: int
    calibration: str
    calibration_samples: int
    float_islands: tuple[FloatIsland, ...]
    fidelity: Fidelity | None
    max_drop_points: float
    layer_sqnr_db: dict[str, float] = field(default_factory=dict)  # ONNX only, worst first
    mcu: McuFit | None = None  # MCU targets: TFLM-measured arena and the fit verdict

    def to_dict(self) -> dict:
        data = asdict(self)
        data["fidelity_drop_points"] = self.fidelity.accuracy_drop_points if self.fidelity else None
        if self.mcu is not None:
            data["mcu"].update(verdict=self.mcu.verdict, fits=self.mcu.fits)
            data["mcu"]["sram"]["fits"], data["mcu"]["flash"]["fits"] = self.mcu.sram.fits, self.mcu.flash.fits
        return data

    def render(self) -> str:
        layout = ", NHWC input" if self.config.channels_last_io else ""
        lines = [f"{self.model} -> {self.artifact} ({self.config.format}{layout}, {self.artifact_bytes:,} bytes) "
                 f"for {self.target}",
                 f"calibration: {self.calibration_samples} samples, {self.calibration}"]
        lines.append("float islands: " + ("none (full integer)" if not self.float_islands else ""))
        lines += [f"  {island.layer} ({island.op}): {island.reason}" for island in self.float_islands]
        lines.append(render_fidelity(self.fidelity, "fidelity", "int8"))
        if self.layer_sqnr_db:
            worst = ", ".join(f"{name} {db:.1f}" for name, db in list(self.layer_sqnr_db.items())[:5])
            lines.append(f"per-layer SQNR (dB, worst first, {len(self.layer_sqnr_db)} tensors): {worst}")
        if self.mcu is not None:
            lines.append(f"tflite-micro: arena {self.mcu.arena_bytes:,} B measured; {self.mcu.verdict} "
                         f"({self.target}); deployment pack in mcu/")
            lines += [f"  {fit.describe()}" for fit in (self.mcu.sram, self.mcu.flash)]
        return "\n".join(lines)


def drop_points(fidelity: Fidelity) -> float:
    """Accuracy drop when labels exist; otherwise top-1 disagreement, a bound on it."""
    drop = fidelity.accuracy_drop_points
    return drop if drop is not None else 100.0 * (1.0 - fidelity.top1_agreement)


def nchw_runner(runner: Callable[[np.ndarray], np.ndarray], channels_last: bool) -> Callable:
    """Feed N,C,H,W data to a model with NHWC I/O, and give 4-D outputs back as N,C,H,W."""
    if not channels_last:
        return runner

    def run(x: np.ndarray) -> np.ndarray:
        out = runner(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
        return out.transpose(0, 3, 1, 2) if out.ndim == 4 else out

    return run


def tensor_infos(artifact: Path, channels_last: bool = False) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    """Input and output tensors of a model file as its own interpreter reports them (with int8 scales)."""
    def info(name: str, shape: Any, dtype: str, quantization: tuple = (0.0, 0)) -> TensorInfo:
        shape = tuple(int(d) for d in shape)
        layout = ("NHWC" if channels_last else "NCHW") if len(shape) == 4 else None
        scale, zero = quantization
        return TensorInfo(name, shape, dtype, layout, float(scale) if scale else None, int(zero) if scale else None)

    if artifact.suffix == ".tflite":
        from edgekit.backends import LiteRTModel

        interpreter = LiteRTModel(artifact).interpreter
        side = lambda details: tuple(info(d["name"], d["shape"], np.dtype(d["dtype"]).name, d["quantization"])  # noqa: E731
                                     for d in details)
        return side(interpreter.get_input_details()), side(interpreter.get_output_details())
    import onnxruntime as ort

    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    from edgekit.runtime.backends import ORT_TYPES

    side = lambda args: tuple(info(a.name, a.shape, ORT_TYPES.get(a.type, a.type)) for a in args)  # noqa: E731
    return side(session.get_inputs()), side(session.get_outputs())


def stage_backend(target: Device, config: Int8Config) -> str:
    """The bundle backend that runs a model quantized with `config` on `target`."""
    if config.format == "onnx":
        return "onnxruntime"
    return "tflite-micro" if target.device_class == "mcu" else "litert"


def image_preprocessing(model: Any, config: Int8Config, preprocessing: Preprocessing) -> InputPreprocessing | None:
    """How an image becomes the first stage's input; None for models that do not take images."""
    if len(model.input_shape) != 4:
        return None
    _, channels, height, width = model.input_shape
    return InputPreprocessing("NHWC" if config.channels_last_io else "NCHW", channels, height, width, 1 / 255,
                              tuple(preprocessing.mean), tuple(preprocessing.std))


def _manifest(model: Any, name: str, target: Device, artifact: Path, config: Int8Config,
              preprocessing: Preprocessing) -> Manifest:
    """What the bundle runs: one stage on the target's backend, and how images become its input."""
    inputs, outputs = tensor_infos(artifact, config.channels_last_io)
    labels = getattr(model, "labels", None)
    stage = Stage("main", stage_backend(target, config), artifact.name, inputs, outputs)
    return Manifest(name, target.name, (stage,),
                    preprocessing=image_preprocessing(model, config, preprocessing),
                    labels=tuple(labels) if labels else None)


def calibration_samples(model: Any, source: str | Path | None, config: Int8Config,
                         preprocessing: Preprocessing) -> tuple[np.ndarray, str]:
    """Samples and a description of where they came from; no source means data-free synthesis."""
    shape = tuple(model.input_shape)
    if source is not None:
        return load_calibration(source, shape, config.max_samples, preprocessing), f"from {source}"
    synthetic = synthesize_calibration(model, shape, samples=min(config.max_samples, 32))
    return synthetic.inputs, (f"data-free: synthetic ZeroQ-style inputs (batch-norm statistics gap "
                              f"{synthetic.initial_gap:.2f} -> {synthetic.final_gap:.2f}); not real data")


def check_output(out_dir: str | Path) -> Path:
    """`out_dir` as a Path, refused when it holds something other than an earlier bundle."""
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise ConversionError(f"{out_dir} exists and is not an earlier bundle; choose another output folder")
    return out_dir


@contextlib.contextmanager
def staging(out_dir: Path) -> Iterator[Path]:
    """A scratch folder beside `out_dir` for the bundle's files; removed afterwards, whatever happens."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def full_integer_check(artifact: Path, name: str, target: Device) -> tuple[FloatIsland, ...]:
    """The model's float islands; a ConversionError for an MCU target, whose runtime has no float kernels."""
    islands = tuple(float_islands(artifact))
    if islands and target.device_class == "mcu":
        raise ConversionError(f"{name}: {len(islands)} operators stayed float "
                              f"({', '.join(i.layer for i in islands[:5])}); an MCU model must be full integer")
    return islands


def fidelity_vs_float(model: Any, runner: Callable[[np.ndarray], np.ndarray],
                      held_out: tuple[np.ndarray, np.ndarray | None]) -> Fidelity:
    """`runner` (a deployed model, N,C,H,W in) against the float torch `model` on held-out data."""
    import torch

    with torch.no_grad():
        return measure_fidelity(lambda x: model(torch.from_numpy(x)).numpy(), runner, *held_out)


def compile_int8(model: Any, name: str, target: Device, out_dir: str | Path, calibration: str | Path | None,
                 evaluation: str | Path | None = None, config: Int8Config | None = None,
                 max_drop_points: float = 1.0, preprocessing: Preprocessing = Preprocessing()) -> CompileReport:
    """Quantize `model` for `target` into the bundle `out_dir` (a folder, or a `.ekb` archive).

    The bundle holds the model, report.json, report.txt, mcu/ for MCU targets, and a verified
    manifest.json. `calibration=None` calibrates data-free. Fails with a specific error, leaving
    `out_dir` untouched, on bad data, a float island in an MCU model, or a top-1 drop above
    `max_drop_points`.
    """
    config = config or Int8Config.for_target(target)
    out_dir = check_output(out_dir)
    held_out = load_labelled(evaluation, tuple(model.input_shape)) if evaluation else None
    samples, described = calibration_samples(model, calibration, config, preprocessing)
    with staging(out_dir) as tmp:
        artifact = tmp / f"{name}_int8.{config.format}"
        float_reference = tmp / "reference_fp32.onnx"
        quantize(model, samples, artifact, config, float_copy=float_reference if config.format == "onnx" else None)
        islands = full_integer_check(artifact, name, target)
        fidelity, sqnr = None, {}
        if held_out is not None:
            from edgekit.backends import load_backend

            fidelity = fidelity_vs_float(model, nchw_runner(load_backend(artifact), config.channels_last_io), held_out)
            if drop_points(fidelity) > max_drop_points:
                raise ConversionError(f"{name}: INT8 loses {drop_points(fidelity):.2f} top-1 points on "
                                      f"{evaluation} (limit {max_drop_points}); nothing written to {out_dir}")
            if config.format == "onnx":
                sqnr = onnx_layer_sqnr(float_reference, artifact, held_out[0][:SQNR_SAMPLES])
        float_reference.unlink(missing_ok=True)
        mcu = None
        if target.device_class == "mcu" and config.format == "tflite":
            mcu = check_mcu_fit(artifact, target)
            write_mcu_pack(artifact, tmp / "mcu", mcu.arena_bytes)
        report = CompileReport(name, target.name, config, artifact.name, artifact.stat().st_size, described,
                               len(samples), islands, fidelity, max_drop_points, sqnr, mcu)
        (tmp / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=json_default))
        (tmp / "report.txt").write_text(report.render() + "\n")
        write_bundle(tmp, _manifest(model, name, target, artifact, config, preprocessing), out_dir)
    return report


def json_default(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)
