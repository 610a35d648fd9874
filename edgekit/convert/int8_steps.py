"""What an INT8 compile and a split compile share: their build context and the steps and checks both run.

Held-out data, calibration samples (from a file, or synthesised data-free), the full-integer check an MCU
needs, the fidelity check against the float model, and the MCU fit and deployment pack of the device's model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.convert.calibration import load_described, load_labelled
from edgekit.convert.config import Int8Config
from edgekit.convert.fidelity import Fidelity, Outputs, Runner, measure_fidelity
from edgekit.convert.islands import FloatIsland, float_islands
from edgekit.convert.mcu import McuFit, check_mcu_fit, write_mcu_pack
from edgekit.convert.pipeline import Build
from edgekit.convert.preflight import check_int8_preflight
from edgekit.convert.synthetic import synthesize_calibration
from edgekit.errors import CalibrationError, ConversionError
from edgekit.formats.bundle import InputPreprocessing, QuantRecipe
from edgekit.targets import Device


@dataclass(kw_only=True)
class Int8Build(Build):
    """An INT8 compile: the model, what it is quantized for and with, and what the steps find on the way.

    `model` is a torch module with an `input_shape` (see `torch_model.as_torch_model`); samples are N,C,H,W.
    A compile of a model file overrides `sample_shape` and `reference` and lays samples out as the file does.
    """

    model: Any
    name: str
    device: Device  # runs the INT8 model (the whole model, or the head of a split)
    config: Int8Config
    preprocessing: InputPreprocessing | None
    calibration: str | Path | None  # None: data-free
    evaluation: str | Path | None
    max_drop_points: float
    held_out: tuple[np.ndarray, np.ndarray | None] | None = None
    samples: np.ndarray = field(init=False)
    described: str = field(init=False)  # where the samples came from, for the report
    artifact: Path = field(init=False)  # the device's INT8 model file, in the staging folder
    islands: tuple[FloatIsland, ...] = ()  # its operators left in float
    fidelity: Fidelity | None = None
    mcu: McuFit | None = None
    sample_layout: str = "NCHW"  # axis order of calibration and held-out samples

    def recipe(self) -> QuantRecipe:
        """The manifest's record of how the device's model was quantized."""
        return self.config.recipe(len(self.samples), data_free=self.calibration is None)

    def sample_shape(self) -> tuple[int, ...]:
        """The model's input shape, batch first, in `sample_layout`."""
        return tuple(self.model.input_shape)

    def reference(self) -> Runner:
        """The float model the fidelity check compares against, called on a batch of samples."""
        from edgekit.convert.torch_model import as_torch_model, numpy_runner

        return numpy_runner(as_torch_model(self.model))


def load_held_out(build: Int8Build) -> None:
    """The evaluation data, when given: inputs and, when the file has them, labels."""
    if build.evaluation:
        build.held_out = load_labelled(build.evaluation, build.sample_shape(), build.sample_layout,
                                       build.preprocessing)


def calibrate(build: Int8Build) -> None:
    """Calibration samples from the given data, or synthesised (data-free) when there is none."""
    build.samples, build.described = calibration_samples(build.model, build.calibration, build.config,
                                                         build.preprocessing, build.sample_shape(),
                                                         build.sample_layout)


def fit_mcu(build: Int8Build) -> None:
    """MCU device, TFLite model: the arena TF Lite Micro measures, the fit verdict, the deployment pack in mcu/."""
    if build.device.device_class == "mcu" and build.config.format == "tflite":
        build.mcu = check_mcu_fit(build.artifact, build.device)
        write_mcu_pack(build.artifact, build.tmp / "mcu", build.mcu.arena_bytes)


def calibration_samples(model: Any, source: str | Path | None, config: Int8Config,
                        preprocessing: InputPreprocessing | None, shape: tuple[int, ...],
                        layout: str = "NCHW") -> tuple[np.ndarray, str]:
    """Samples shaped `shape` in `layout` and a description of where they came from; no source means data-free
    synthesis, which needs a torch model (its batch-norm statistics)."""
    if source is not None:
        return load_described(source, shape, config.max_samples, preprocessing, layout)
    if isinstance(model, Path):
        raise CalibrationError(f"{model}: data-free calibration needs a torch model (its batch-norm statistics); "
                               "pass --calib with data in the model's input layout")
    synthetic = synthesize_calibration(model, shape, samples=min(config.max_samples, 32))
    return synthetic.inputs, (f"data-free: synthetic ZeroQ-style inputs (batch-norm statistics gap "
                              f"{synthetic.initial_gap:.2f} -> {synthetic.final_gap:.2f}); not real data")


def full_integer_check(artifact: Path, name: str, target: Device,
                       modules: Mapping[str, str] | None = None) -> tuple[FloatIsland, ...]:
    """The model's float islands (`modules`: see `float_islands`); a ConversionError for an MCU target, whose
    runtime has no float kernels."""
    islands = tuple(float_islands(artifact, modules))
    if islands and target.device_class == "mcu":
        first = next((i for i in islands if i.op not in ("quantize", "dequantize")), islands[0])
        raise ConversionError(f"{name}: {len(islands)} operators stayed float "
                              f"({', '.join(i.layer for i in islands[:5])}; {first.layer}: {first.reason}); "
                              "an MCU model must be full integer")
    return islands


def preflight(build: Int8Build) -> None:
    """MCU target, torch model: the ops INT8 would leave float, refused in seconds, before calibration."""
    check_int8_preflight(build.model, build.name, build.device, build.config)


def drop_points(fidelity: Fidelity) -> float | None:
    """Accuracy drop when labels exist; otherwise top-1 disagreement, a bound on it; None without a classifier
    output (there is no top-1 to drop)."""
    drop = fidelity.accuracy_drop_points
    if drop is not None or fidelity.top1_agreement is None:
        return drop
    return 100.0 * (1.0 - fidelity.top1_agreement)


def nchw_runner(runner: Runner, channels_last: bool) -> Runner:
    """Feed N,C,H,W data to a model with NHWC I/O, and give every 4-D output back as N,C,H,W."""
    if not channels_last:
        return runner

    def nchw(out: np.ndarray) -> np.ndarray:
        return out.transpose(0, 3, 1, 2) if out.ndim == 4 else out

    def run(x: np.ndarray) -> Outputs:
        out = runner(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
        if isinstance(out, np.ndarray):
            return nchw(out)
        if isinstance(out, Mapping):
            return {name: nchw(value) for name, value in out.items()}
        return tuple(nchw(value) for value in out)

    return run


def check_fidelity(build: Int8Build, held_out: tuple[np.ndarray, np.ndarray | None], runner: Runner,
                   deployed: str) -> Fidelity:
    """`runner` (the deployed model, samples in `build.sample_layout`) against the float model on `held_out`,
    output by output; a ConversionError naming `deployed` ("INT8", "the split (...)") when the classifier
    output's top-1 drops more than the limit."""
    fidelity = measure_fidelity(build.reference(), runner, *held_out)
    drop = drop_points(fidelity)
    if drop is not None and drop > build.max_drop_points:
        raise ConversionError(f"{build.name}: {deployed} loses {drop:.2f} top-1 points on "
                              f"{build.evaluation} (limit {build.max_drop_points}); nothing written to "
                              f"{build.out_dir}")
    return fidelity
