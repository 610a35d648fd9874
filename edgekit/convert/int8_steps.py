"""What an INT8 compile and a split compile share: their build context and the steps and checks both run.

Held-out data, calibration samples (from a file, or synthesised data-free), the full-integer check an MCU
needs, the fidelity check against the float model, and the MCU fit and deployment pack of the device's model.
A data-free compile without held-out data is checked on fresh synthetic inputs (another seed than calibration's),
which the report names as such and on which the drop limit only warns; `int8_warnings` is what both reports warn.
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
from edgekit.convert.synthetic import Synthesis, synthesize_calibration
from edgekit.convert.threads import bounded_threads
from edgekit.errors import CalibrationError, ConversionError
from edgekit.formats.bundle import InputPreprocessing, QuantRecipe
from edgekit.targets import Device

HELD_OUT = "held-out samples"  # what the fidelity check ran on, as the report names it
SYNTHETIC_INPUTS = "synthetic inputs, not real data"
CHECK_SAMPLES = 16  # data-free without held-out data: how many fresh synthetic inputs the check runs on
CHECK_SEED = 1  # their seed; calibration's inputs come from seed 0


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
    held_out_kind: str = HELD_OUT  # or SYNTHETIC_INPUTS
    samples: np.ndarray = field(init=False)
    described: str = field(init=False)  # where the samples came from, for the report
    synthesis: Synthesis | None = None  # data-free: how the samples were synthesised
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
    """Calibration samples from the given data, or synthesised (data-free) when there is none; data-free without
    held-out data, also the fresh synthetic inputs the INT8 model is checked on."""
    build.samples, build.described, build.synthesis = calibration_samples(
        build.model, build.calibration, build.config, build.preprocessing, build.sample_shape(), build.sample_layout)
    if build.synthesis is not None and build.held_out is None:
        check = synthesize_calibration(build.model, build.sample_shape(), CHECK_SAMPLES, seed=CHECK_SEED,
                                       label="synthesising check inputs")
        build.held_out, build.held_out_kind = (check.inputs, None), SYNTHETIC_INPUTS


def fit_mcu(build: Int8Build) -> None:
    """MCU device, TFLite model: the arena TF Lite Micro measures, the fit verdict, the deployment pack in mcu/."""
    if build.device.device_class == "mcu" and build.config.format == "tflite":
        build.mcu = check_mcu_fit(build.artifact, build.device)
        write_mcu_pack(build.artifact, build.tmp / "mcu", build.mcu.arena_bytes)


def calibration_samples(model: Any, source: str | Path | None, config: Int8Config,
                        preprocessing: InputPreprocessing | None, shape: tuple[int, ...],
                        layout: str = "NCHW") -> tuple[np.ndarray, str, Synthesis | None]:
    """Samples shaped `shape` in `layout`, a description of where they came from, and how they were synthesised;
    no source means data-free synthesis of `config.sample_cap(True)` samples, which needs a torch model (its
    batch-norm statistics)."""
    if source is not None:
        return (*load_described(source, shape, config.sample_cap(data_free=False), preprocessing, layout), None)
    if isinstance(model, Path):
        raise CalibrationError(f"{model}: data-free calibration needs a torch model (its batch-norm statistics); "
                               "pass --calib with data in the model's input layout")
    synthetic = synthesize_calibration(model, shape, samples=config.sample_cap(data_free=True))
    default = " (the data-free default count; --max-samples sets another)" if config.max_samples is None else ""
    return synthetic.inputs, (f"data-free: synthetic ZeroQ-style inputs{default}, {synthetic.synthesis.describe()}; "
                              "not real data"), synthetic.synthesis


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
    output by output, torch on bounded threads; a ConversionError naming `deployed` ("INT8", "the split (...)")
    when the classifier output's top-1 drops more than the limit on the held-out data (on synthetic inputs that
    is a warning: see `int8_warnings`)."""
    with bounded_threads():
        fidelity = measure_fidelity(build.reference(), runner, *held_out)
    drop = drop_points(fidelity)
    if build.evaluation and drop is not None and drop > build.max_drop_points:
        raise ConversionError(f"{build.name}: {deployed} loses {drop:.2f} top-1 points on "
                              f"{build.evaluation} (limit {build.max_drop_points}); nothing written to "
                              f"{build.out_dir}")
    return fidelity


def int8_warnings(build: Int8Build) -> tuple[str, ...]:
    """What both reports warn about: a data-free synthesis that did not converge, an output of the deployed model
    that does not follow its input (the same for every input while the float model's varies), and a top-1
    disagreement beyond the drop limit on synthetic inputs, where the limit is not enforced."""
    warning = build.synthesis.warning() if build.synthesis is not None else None
    found = [warning] if warning else []
    fidelity = build.fidelity
    if fidelity is None:
        return tuple(found)
    remedy = "calibrate with real samples (--calib)" if build.synthesis is not None else "check the calibration data"
    found += [f"the quantized model's output '{output.name}' is the same for every one of the {fidelity.samples} "
              f"inputs checked while the float model's varies: it does not respond to its input; {remedy}"
              for output in fidelity.outputs if output.quantized_constant]
    drop = drop_points(fidelity)
    if not build.evaluation and drop is not None and drop > build.max_drop_points:
        sqnr = next((o.sqnr_db for o in fidelity.outputs if o.name == fidelity.classifier), None)
        noise = "" if sqnr is None else (f"; its output SQNR is {sqnr:.1f} dB, so a high SQNR with many flips "
                                         "means the float model's top classes are near-ties on these inputs")
        found.append(f"the quantized model's top-1 differs from the float model's on {drop:.2f}% of "
                     f"{fidelity.samples} synthetic inputs (the limit on held-out data is {build.max_drop_points} "
                     f"points){noise}; check it on real data with --eval")
    return tuple(found)
