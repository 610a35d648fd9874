"""What an INT8 compile and a split compile share: their build context and the steps and checks both run.

Held-out data, calibration samples (from a file, or synthesised data-free), the full-integer check an MCU
needs, the fidelity check against the float model, and the MCU fit and deployment pack of the device's model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.convert.calibration import load_calibration, load_labelled
from edgekit.convert.config import Int8Config
from edgekit.convert.fidelity import Fidelity, measure_fidelity
from edgekit.convert.islands import FloatIsland, float_islands
from edgekit.convert.mcu import McuFit, check_mcu_fit, write_mcu_pack
from edgekit.convert.pipeline import Build
from edgekit.convert.synthetic import synthesize_calibration
from edgekit.errors import ConversionError
from edgekit.formats.bundle import InputPreprocessing, QuantRecipe
from edgekit.targets import Device

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(kw_only=True)
class Int8Build(Build):
    """An INT8 compile: the model, what it is quantized for and with, and what the steps find on the way."""

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

    def recipe(self) -> QuantRecipe:
        """The manifest's record of how the device's model was quantized."""
        return self.config.recipe(len(self.samples), data_free=self.calibration is None)


def load_held_out(build: Int8Build) -> None:
    """The evaluation data, when given: inputs and, when the file has them, labels."""
    if build.evaluation:
        build.held_out = load_labelled(build.evaluation, tuple(build.model.input_shape))


def calibrate(build: Int8Build) -> None:
    """Calibration samples from the given data, or synthesised (data-free) when there is none."""
    build.samples, build.described = calibration_samples(build.model, build.calibration, build.config,
                                                         build.preprocessing)


def fit_mcu(build: Int8Build) -> None:
    """MCU device, TFLite model: the arena TF Lite Micro measures, the fit verdict, the deployment pack in mcu/."""
    if build.device.device_class == "mcu" and build.config.format == "tflite":
        build.mcu = check_mcu_fit(build.artifact, build.device)
        write_mcu_pack(build.artifact, build.tmp / "mcu", build.mcu.arena_bytes)


def calibration_samples(model: Any, source: str | Path | None, config: Int8Config,
                        preprocessing: InputPreprocessing | None) -> tuple[np.ndarray, str]:
    """Samples and a description of where they came from; no source means data-free synthesis."""
    shape = tuple(model.input_shape)
    if source is not None:
        return load_calibration(source, shape, config.max_samples, preprocessing), f"from {source}"
    synthetic = synthesize_calibration(model, shape, samples=min(config.max_samples, 32))
    return synthetic.inputs, (f"data-free: synthetic ZeroQ-style inputs (batch-norm statistics gap "
                              f"{synthetic.initial_gap:.2f} -> {synthetic.final_gap:.2f}); not real data")


def full_integer_check(artifact: Path, name: str, target: Device) -> tuple[FloatIsland, ...]:
    """The model's float islands; a ConversionError for an MCU target, whose runtime has no float kernels."""
    islands = tuple(float_islands(artifact))
    if islands and target.device_class == "mcu":
        raise ConversionError(f"{name}: {len(islands)} operators stayed float "
                              f"({', '.join(i.layer for i in islands[:5])}); an MCU model must be full integer")
    return islands


def drop_points(fidelity: Fidelity) -> float:
    """Accuracy drop when labels exist; otherwise top-1 disagreement, a bound on it."""
    drop = fidelity.accuracy_drop_points
    return drop if drop is not None else 100.0 * (1.0 - fidelity.top1_agreement)


def nchw_runner(runner: Runner, channels_last: bool) -> Runner:
    """Feed N,C,H,W data to a model with NHWC I/O, and give 4-D outputs back as N,C,H,W."""
    if not channels_last:
        return runner

    def run(x: np.ndarray) -> np.ndarray:
        out = runner(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
        return out.transpose(0, 3, 1, 2) if out.ndim == 4 else out

    return run


def check_fidelity(build: Int8Build, held_out: tuple[np.ndarray, np.ndarray | None], runner: Runner,
                   deployed: str) -> Fidelity:
    """`runner` (the deployed model, N,C,H,W in) against the float model on `held_out`; a ConversionError
    naming `deployed` ("INT8", "the split (...)") when top-1 drops more than the limit."""
    import torch

    model = build.model
    with torch.no_grad():
        fidelity = measure_fidelity(lambda x: model(torch.from_numpy(x)).numpy(), runner, *held_out)
    if drop_points(fidelity) > build.max_drop_points:
        raise ConversionError(f"{build.name}: {deployed} loses {drop_points(fidelity):.2f} top-1 points on "
                              f"{build.evaluation} (limit {build.max_drop_points}); nothing written to "
                              f"{build.out_dir}")
    return fidelity
