"""`edgekit compile`: quantize a model for a target, check what it cost, write artifacts atomically."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit.convert.config import Int8Config
from edgekit.convert.fidelity import Fidelity, onnx_layer_sqnr
from edgekit.convert.int8_steps import (
    HELD_OUT,
    Int8Build,
    calibrate,
    check_fidelity,
    fit_mcu,
    full_integer_check,
    int8_warnings,
    load_held_out,
    nchw_runner,
    preflight,
)
from edgekit.convert.islands import FloatIsland
from edgekit.convert.mcu import McuFit
from edgekit.convert.pipeline import Pipeline
from edgekit.convert.preflight import module_types
from edgekit.convert.preprocessing import input_preprocessing, model_labels
from edgekit.convert.quantize import quantize
from edgekit.convert.synthetic import Synthesis
from edgekit.convert.torch_model import as_torch_model
from edgekit.formats.bundle import Manifest, Stage, TensorInfo
from edgekit.report.fidelity import render_fidelity, render_warnings
from edgekit.runtime.backends import ORT_TYPES, FloatRunner, open_model
from edgekit.targets import Device

SQNR_SAMPLES = 16  # held-out samples run through the augmented ONNX models for per-layer SQNR


@dataclass(frozen=True)
class CompileReport:
    """What compile did and what it cost: artifact, calibration, float islands, fidelity, and what to beware of."""

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
    synthesis: Synthesis | None = None  # data-free: how the calibration samples were synthesised
    fidelity_inputs: str = HELD_OUT  # what fidelity was measured on (synthetic inputs for data-free without --eval)
    warnings: tuple[str, ...] = ()

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
        lines.append(render_fidelity(self.fidelity, "fidelity", "int8", self.fidelity_inputs))
        if self.layer_sqnr_db:
            worst = ", ".join(f"{name} {db:.1f}" for name, db in list(self.layer_sqnr_db.items())[:5])
            lines.append(f"per-layer SQNR (dB, worst first, {len(self.layer_sqnr_db)} tensors): {worst}")
        if self.mcu is not None:
            lines.append(f"tflite-micro: arena {self.mcu.arena_bytes:,} B measured; {self.mcu.verdict} "
                         f"({self.target}); deployment pack in mcu/")
            lines += [f"  {fit.describe()}" for fit in (self.mcu.sram, self.mcu.flash)]
        return "\n".join(lines + render_warnings(self.warnings))


def tensor_infos(artifact: Path, channels_last: bool = False) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    """Input and output tensors of a model file as its own interpreter reports them (with int8 scales): every
    input and every output, in the model's order, named as the model names them."""
    def info(name: str, shape: Any, dtype: str, quantization: tuple = (0.0, 0)) -> TensorInfo:
        shape = tuple(int(d) for d in shape)
        layout = ("NHWC" if channels_last else "NCHW") if len(shape) == 4 else None
        scale, zero = quantization
        return TensorInfo(name, shape, dtype, layout, float(scale) if scale else None, int(zero) if scale else None)

    if artifact.suffix == ".tflite":
        model_in, model_outs = open_model(artifact).model_tensors()
        side = lambda ts: tuple(info(t.name, t.shape, t.dtype, (t.scale, t.zero_point)) for t in ts)  # noqa: E731
        return side((model_in,)), side(model_outs)
    import onnxruntime as ort

    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    side = lambda args: tuple(info(a.name, a.shape, ORT_TYPES.get(a.type, a.type)) for a in args)  # noqa: E731
    return side(session.get_inputs()), side(session.get_outputs())


def stage_backend(target: Device, config: Int8Config) -> str:
    """The bundle backend that runs a model quantized with `config` on `target`."""
    if config.format == "onnx":
        return "onnxruntime"
    return "tflite-micro" if target.device_class == "mcu" else "litert"


@dataclass(kw_only=True)
class CompileBuild(Int8Build):
    """A single-stage compile: the INT8 build, plus the ONNX path's float reference and per-layer SQNR."""

    float_reference: Path | None = None  # ONNX: the pre-processed fp32 model, the per-layer SQNR reference
    layer_sqnr_db: dict[str, float] = field(default_factory=dict)
    report: CompileReport = field(init=False)


def quantize_model(build: CompileBuild) -> None:
    """The whole model as one INT8 file (ONNX: keeping the float reference beside it)."""
    build.artifact = build.tmp / f"{build.name}_int8.{build.config.format}"
    if build.config.format == "onnx":
        build.float_reference = build.tmp / "reference_fp32.onnx"
    quantize(build.model, build.samples, build.artifact, build.config, float_copy=build.float_reference)


def check_full_integer(build: CompileBuild) -> None:
    """The model's float islands, each named by its torch module where it has one, refused on an MCU."""
    build.islands = full_integer_check(build.artifact, build.name, build.device, module_types(build.model))


def check_int8_fidelity(build: CompileBuild) -> None:
    """With held-out data: the INT8 model as deployed against the float model, every output, within the drop
    limit."""
    if build.held_out is not None:
        runner = nchw_runner(FloatRunner(open_model(build.artifact)).run_all,
                             build.config.io_layout != build.sample_layout)
        build.fidelity = check_fidelity(build, build.held_out, runner, "INT8")


def measure_layer_sqnr(build: CompileBuild) -> None:
    """ONNX: per-layer SQNR against the float reference (with held-out data), which then leaves the bundle."""
    if build.float_reference is None:
        return
    if build.held_out is not None:
        build.layer_sqnr_db = onnx_layer_sqnr(build.float_reference, build.artifact,
                                              build.held_out[0][:SQNR_SAMPLES])
    build.float_reference.unlink()


def describe(build: CompileBuild) -> None:
    """The report, and the manifest: one stage on the target's backend, its preprocessing, labels and recipe."""
    build.report = CompileReport(build.name, build.device.name, build.config, build.artifact.name,
                                 build.artifact.stat().st_size, build.described, len(build.samples), build.islands,
                                 build.fidelity, build.max_drop_points, build.layer_sqnr_db, build.mcu,
                                 build.synthesis, build.held_out_kind, int8_warnings(build))
    inputs, outputs = tensor_infos(build.artifact, build.config.channels_last_io)
    stage = Stage("main", stage_backend(build.device, build.config), build.artifact.name, inputs, outputs)
    recipe = build.recipe()  # None: a file packaged as it is, made by someone else's recipe
    build.manifest = Manifest(build.name, build.device.name, (stage,), preprocessing=build.preprocessing,
                              labels=model_labels(build.model), recipe={stage.name: recipe} if recipe else None)


COMPILE: Pipeline[CompileBuild] = Pipeline(
    prepare=(preflight, load_held_out, calibrate),
    stage=(quantize_model, check_full_integer, check_int8_fidelity, measure_layer_sqnr, fit_mcu, describe))


def compile_int8(model: Any, name: str, target: Device, out_dir: str | Path, calibration: str | Path | None,
                 evaluation: str | Path | None = None, config: Int8Config | None = None,
                 max_drop_points: float = 1.0, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None, input_shape: tuple[int, ...] | None = None) -> CompileReport:
    """Quantize the torch module `model` for `target` into the bundle `out_dir` (a folder, or a `.ekb` archive).

    The bundle holds the model, report.json, report.txt, mcu/ for MCU targets, and a verified
    manifest.json. `calibration=None` calibrates data-free. The input shape is `input_shape`, else the
    model's `input_shape` attribute, else the calibration array's; outputs may be a tensor or tensors in a
    dict, dataclass or tuple. Image preprocessing and labels come from the model's cfg; `mean`/`std`
    override its normalisation. Fails with a specific error, leaving `out_dir` untouched, on bad data, a
    float island in an MCU model, or a top-1 drop above `max_drop_points`.
    """
    model = as_torch_model(model, input_shape, calibration)
    config = config or Int8Config.for_target(target)
    build = CompileBuild(out_dir=Path(out_dir), model=model, name=name, device=target, config=config,
                     preprocessing=input_preprocessing(model, config.io_layout, mean, std), calibration=calibration,
                     evaluation=evaluation, max_drop_points=max_drop_points)
    return COMPILE.run(build).report
