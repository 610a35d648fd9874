"""`edgekit compile model.tflite|model.onnx`: a float model file to INT8, through the same steps as a torch compile.

An INT8 .tflite (integer input) is packaged as it is: full-integer check, MCU fit and bundle, no calibration.
A float .tflite goes through ai-edge-quantizer (`quantize_tflite`), a float .onnx through onnxruntime.quantization
(`quantize.quantize_onnx_file`); the result keeps the file's format. The input shape and layout are the file's:
calibration and held-out samples come in that layout (NHWC for most .tflite files, N,C,H,W for ONNX), and images
are read into it. The float file itself is the fidelity reference, run through the same backend as the INT8
model. An ONNX file is copied with its weights inline (external data files included) and any symbolic input
dimension fixed: batch 1, the rest from `input_shape` or the calibration array's sample shape.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgekit.convert.calibration import array_shape
from edgekit.convert.compile import (
    COMPILE,
    CompileBuild,
    CompileReport,
    check_full_integer,
    check_int8_fidelity,
    describe,
    measure_layer_sqnr,
)
from edgekit.convert.config import Int8Config
from edgekit.convert.fidelity import Runner
from edgekit.convert.int8_steps import fit_mcu
from edgekit.convert.pipeline import Pipeline
from edgekit.convert.preprocessing import image_input, to_nchw
from edgekit.convert.quantize import converter_errors, quantize_onnx_file
from edgekit.convert.quantize_tflite import quantize_tflite_file
from edgekit.errors import ConversionError, ModelLoadError
from edgekit.formats.bundle import QuantRecipe
from edgekit.formats.detection import DetectionSpec
from edgekit.formats.tflite import TENSOR_TYPES, inline_buffers, read_model
from edgekit.runtime.backends import FloatRunner, open_model
from edgekit.targets import Device

MODEL_FILES = {".tflite": "tflite", ".onnx": "onnx"}  # suffix -> the format it compiles to
CHANNEL_COUNTS = (1, 3, 4)  # what a channel axis of an image input holds


@dataclass(kw_only=True)
class _FileCompile(CompileBuild):
    """A compile of a float model file: its own input shape, its samples in its own layout, itself the reference."""

    input_shape: tuple[int, ...]
    labels: tuple[str, ...] | None = None  # a model file carries no cfg: the caller names its classes
    detection: DetectionSpec | None = None  # and how its outputs decode into boxes

    def sample_shape(self) -> tuple[int, ...]:
        return self.input_shape

    def reference(self) -> Runner:
        runner = FloatRunner(open_model(self.model))
        names = [tensor.name for tensor in runner.outputs]
        return lambda x: dict(zip(names, runner.run_all(x)))

    def recipe(self) -> QuantRecipe:
        return self.config.recipe(len(self.samples), data_free=False, method="minmax")  # ai-edge-quantizer's


def quantize_file(build: _FileCompile) -> None:
    """The float file as one INT8 file of the same format (ONNX: keeping the pre-processed float reference)."""
    build.artifact = build.tmp / f"{build.name}_int8.{build.config.format}"
    with converter_errors(f"{build.model}: INT8 {build.config.format} quantization"):
        if build.config.format == "tflite":
            quantize_tflite_file(build.model, build.samples, build.artifact, build.config)
        else:
            build.float_reference = build.tmp / "reference_fp32.onnx"
            quantize_onnx_file(build.model, build.samples, build.artifact, build.config, build.float_reference)


def add_metadata(build: _FileCompile) -> None:
    """The caller's labels and detection decoder into the manifest (checked against the INT8 outputs at write)."""
    build.manifest = replace(build.manifest, labels=build.labels, detection=build.detection)


COMPILE_FILE: Pipeline[_FileCompile] = Pipeline(
    prepare=COMPILE.prepare,
    stage=(quantize_file, check_full_integer, check_int8_fidelity, measure_layer_sqnr, fit_mcu, describe,
           add_metadata))


@dataclass(kw_only=True)
class _Packaged(_FileCompile):
    """An INT8 .tflite packaged as it is: nothing to calibrate or compare against, and no recipe of edgekit's."""

    def recipe(self) -> None:  # type: ignore[override]
        return None


def copy_file(build: _Packaged) -> None:
    """The INT8 file itself is the artifact."""
    build.artifact = build.tmp / Path(build.model).name
    data = Path(build.model).read_bytes()
    inline = inline_buffers(data, str(build.model))
    build.artifact.write_bytes(inline)
    build.samples = np.zeros((0, *build.input_shape), np.float32)
    build.described = "none: the file is INT8 already, packaged as it is" + (
        "" if inline is data else " (its buffers stored past the flatbuffer moved inline: TF Lite Micro reads "
                                  "only inline data)")


PACKAGE_FILE: Pipeline[_Packaged] = Pipeline(prepare=(), stage=(copy_file, check_full_integer, fit_mcu, describe,
                                                                 add_metadata))


def quantized_tflite(path: str | Path) -> bool:
    """Whether `path` is a .tflite whose input is integer already (an INT8 model, packaged rather than compiled)."""
    path = Path(path)
    if path.suffix != ".tflite" or not path.is_file():
        return False
    model, _ = read_model(path)
    graph = model.subgraphs[0]
    return len(graph.inputs) == 1 and TENSOR_TYPES.get(graph.tensors[graph.inputs[0]].type) in ("int8", "uint8")


def compile_file(path: str | Path, target: Device, out_dir: str | Path, calibration: str | Path | None,
                 evaluation: str | Path | None = None, config: Int8Config | None = None,
                 max_drop_points: float = 1.0, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None, input_shape: tuple[int, ...] | None = None,
                 layout: str | None = None, labels: tuple[str, ...] | None = None,
                 detection: DetectionSpec | None = None) -> CompileReport:
    """Quantize the float model file `path` (.tflite or .onnx) for `target` into the bundle `out_dir`.

    As `compile_int8`, except: the format is the file's; samples (`calibration`, `evaluation`) are in the
    file's input layout, `layout` (default: NHWC for a .tflite whose input ends in 1, 3 or 4 channels,
    else NCHW); images are scaled to [0, 1], then `mean`/`std`; `input_shape` only fills an ONNX input's
    symbolic dimensions. `labels` and `detection` (a detector's decoder) go into the manifest as given.
    """
    path = Path(path)
    if path.suffix not in MODEL_FILES:
        raise ModelLoadError(f"{path}: compile takes .tflite or .onnx model files, found '{path.suffix}'")
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    config = config or Int8Config.for_target(target)
    if config.format != MODEL_FILES[path.suffix]:
        raise ConversionError(f"{path}: a {path.suffix} file compiles to {MODEL_FILES[path.suffix]}, not "
                              f"{config.format}; pass --format {MODEL_FILES[path.suffix]}")
    with tempfile.TemporaryDirectory() as tmp:
        model, shape = (_tflite_input(path, input_shape) if path.suffix == ".tflite" else
                        _onnx_input(path, input_shape, calibration, Path(tmp)))
        layout = layout or ("NHWC" if path.suffix == ".tflite" and len(shape) == 4 and shape[3] in CHANNEL_COUNTS
                            and shape[1] not in CHANNEL_COUNTS else "NCHW")
        config = replace(config, channels_last_io=layout == "NHWC")
        preprocessing = image_input(to_nchw(shape, layout), layout, mean or (0.0,), std or (1.0,)) \
            if len(shape) == 4 else None
        if quantized_tflite(path):
            if calibration is not None or evaluation is not None:
                raise ConversionError(f"{path}: the model is INT8 already and is packaged as it is; leave out "
                                      "--calib and --eval (there is no float model to calibrate or compare with)")
            packaged = _Packaged(out_dir=Path(out_dir), model=model, name=path.stem, device=target, config=config,
                                 preprocessing=preprocessing, calibration=None, evaluation=None,
                                 max_drop_points=max_drop_points, sample_layout=layout, input_shape=shape,
                                 labels=labels, detection=detection)
            return PACKAGE_FILE.run(packaged).report
        build = _FileCompile(out_dir=Path(out_dir), model=model, name=path.stem, device=target, config=config,
                             preprocessing=preprocessing, calibration=calibration, evaluation=evaluation,
                             max_drop_points=max_drop_points, sample_layout=layout, input_shape=shape,
                             labels=labels, detection=detection)
        return COMPILE_FILE.run(build).report


def _tflite_input(path: Path, given: tuple[int, ...] | None) -> tuple[Path, tuple[int, ...]]:
    """The file and its input's shape; a different `given` shape is refused (a .tflite file's shape is fixed)."""
    model, _ = read_model(path)
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1:
        raise ModelLoadError(f"{path}: the model has {len(graph.inputs)} inputs; compile takes single-input models")
    shape = tuple(int(d) for d in graph.tensors[graph.inputs[0]].shape)
    if given is not None and tuple(given) != shape:
        raise ModelLoadError(f"{path}: a .tflite model has a fixed input shape {shape}; --input-shape "
                             f"{tuple(given)} differs (leave it out)")
    return path, shape


def _onnx_input(path: Path, given: tuple[int, ...] | None, calibration: str | Path | None,
                tmp: Path) -> tuple[Path, tuple[int, ...]]:
    """A copy of the file in `tmp` (weights inline, as bundles load models from bytes; symbolic input dimensions
    fixed) and its input's shape."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, OSError) as exc:
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    weights = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise ModelLoadError(f"{path}: the model has {len(inputs)} inputs; compile takes single-input models")
    declared = [d.dim_value if d.dim_value > 0 else None for d in inputs[0].type.tensor_type.shape.dim]
    static = tmp / path.name
    if None not in declared:
        if given is not None and tuple(given) != tuple(declared):
            raise ModelLoadError(f"{path}: input '{inputs[0].name}' has the fixed shape {tuple(declared)}; "
                                 f"--input-shape {tuple(given)} differs (leave it out)")
        onnx.save(model, str(static))
        return static, tuple(d for d in declared if d is not None)
    sample = array_shape(calibration) if calibration is not None else None
    rest = [d for d in declared[1:] if d is not None]
    fill: tuple[int, ...] | None = tuple(given) if given is not None else (1, *sample[1:]) if sample is not None \
        else (1, *rest) if len(rest) == len(declared) - 1 else None  # a symbolic batch alone is batch 1
    if fill is None or len(fill) != len(declared) or any(d not in (None, f) for d, f in zip(declared, fill)):
        raise ModelLoadError(f"{path}: input '{inputs[0].name}' has symbolic dimensions "
                             f"{['?' if d is None else d for d in declared]}; pass --input-shape with "
                             f"{len(declared)} dimensions matching the fixed ones"
                             + (f" (the calibration samples give {fill})" if fill else ""))
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_input_shape_fixed

    make_input_shape_fixed(model.graph, inputs[0].name, list(fill))
    fix_output_shapes(model)
    onnx.save(model, str(static))
    return static, fill
