"""`edgekit compile --split`: one bundle with an INT8 head for the device and an ONNX tail for the edge server.

The cut comes from the split planner (`auto`) or the user (a layer name, checked by the planner). The
head is quantized as a plain compile for the device would be, so its int8 output *is* the message sent
over the link; the tail takes that message dequantized to float32, in the head's layout, and gives every
output the model has (a detector's heads, say), which the manifest lists in the model's order. The tail stays
fp32 by default: the planner costs the server in fp32, the server is not the constraint, and a second
quantization would only add error. `tail_dtype="int8"` gives a QDQ tail calibrated on the head's own
dequantized outputs, so both sides agree on what the boundary tensor looks like.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekit.convert.compile import stage_backend, tensor_infos
from edgekit.convert.compile_compressed import CompressedCompileReport, compile_compressed, export_fp32, frame_codec
from edgekit.convert.config import Int8Config
from edgekit.convert.fidelity import Fidelity
from edgekit.convert.int8_steps import (
    HELD_OUT,
    Int8Build,
    calibrate,
    check_fidelity,
    drop_points,
    fit_mcu,
    full_integer_check,
    int8_warnings,
    load_held_out,
)
from edgekit.convert.islands import FloatIsland
from edgekit.convert.mcu import McuFit
from edgekit.convert.pipeline import Pipeline
from edgekit.convert.preprocessing import input_preprocessing, model_labels
from edgekit.convert.quantize import quantize
from edgekit.convert.split_export import split_model
from edgekit.convert.split_schedule import split_schedule
from edgekit.convert.synthetic import Synthesis
from edgekit.convert.torch_model import as_torch_model
from edgekit.cost.codec import CodecFigures
from edgekit.errors import ConversionError, SplitError
from edgekit.formats.bundle import Manifest, QuantRecipe, Stage, TensorInfo
from edgekit.formats.plans import SplitBoundary, SplitSchedule
from edgekit.graph.from_torch import from_torch
from edgekit.plan.split import SplitCandidate, SplitPlan, choose_cut, plan_split
from edgekit.report.fidelity import render_fidelity, render_warnings
from edgekit.runtime.backends import FloatRunner, open_model
from edgekit.targets import Device, Link

TAIL_DTYPES = ("fp32", "int8")


@dataclass(frozen=True)
class SplitCompileReport:
    """What a split compile chose and what it cost: the cut, both artifacts, the boundary tensor, fidelity."""

    model: str
    requested: str  # "auto" or the layer the user named
    plan: SplitPlan  # `chosen` is the deployed cut; `requested` when the user named it
    boundary: TensorInfo  # the head's output: what crosses the link each frame
    boundary_tensor: str  # its name in the graph IR
    payload_bytes: int  # boundary bytes as sent (int8 for a full-integer head)
    payload_fp32_bytes: int  # the same tensor in float32, for comparison
    head_artifact: str
    head_bytes: int
    head_config: Int8Config
    tail_artifact: str
    tail_bytes: int
    tail_dtype: str
    calibration: str
    calibration_samples: int
    float_islands: tuple[FloatIsland, ...]  # in the head
    fidelity: Fidelity | None  # head (INT8) -> tail against the float model
    max_drop_points: float
    mcu: McuFit | None = None  # MCU devices: the head's measured arena and fit verdict
    synthesis: Synthesis | None = None  # data-free: how the calibration samples were synthesised
    fidelity_inputs: str = HELD_OUT  # what fidelity was measured on (synthetic inputs for data-free without --eval)
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        data = asdict(self)
        data["plan"] = self.plan.to_dict()  # with its verdict: the cut against the best plan and both baselines
        data["fidelity_drop_points"] = drop_points(self.fidelity) if self.fidelity else None
        return data

    def render(self) -> str:
        from edgekit.report.plans import render_split_plan

        cut, b = self.plan.chosen, self.boundary
        quantized = f", scale {b.scale:g} zero point {b.zero_point}" if b.scale is not None else ""
        lines = [render_split_plan(self.plan), "",
                 f"cut after '{cut.last_device_layer}' ({cut.device_layers} of {len(self.plan.candidates) - 1} "
                 f"layers on {self.plan.device}); boundary '{self.boundary_tensor}' {b.dtype} {list(b.shape)} "
                 f"{b.layout or ''}{quantized}",
                 f"payload per frame: {self.payload_bytes:,} B as sent ({self.payload_fp32_bytes:,} B in float32)",
                 f"head: {self.head_artifact} ({self.head_config.format}, {self.head_bytes:,} bytes); "
                 f"tail: {self.tail_artifact} ({self.tail_dtype} onnx, {self.tail_bytes:,} bytes)",
                 f"calibration: {self.calibration_samples} samples, {self.calibration}"]
        if self.float_islands:
            lines.append("head float islands: " + ", ".join(f"{i.layer} ({i.op})" for i in self.float_islands))
        lines.append(render_fidelity(self.fidelity, "fidelity of head -> tail against the float model", "split",
                                     self.fidelity_inputs))
        if self.mcu is not None:
            lines.append(f"head on tflite-micro: arena {self.mcu.arena_bytes:,} B measured; {self.mcu.verdict}")
        return "\n".join(lines + render_warnings(self.warnings))


@dataclass(kw_only=True)
class _Split(Int8Build):
    """A split compile: the INT8 build of the head, the server and link it is cut for, and the tail."""

    server: Device
    link: Link
    split: str
    bandwidth_bps: float | None
    objective: str
    tail_dtype: str
    codecs: tuple[CodecFigures, ...] = ()  # compressed inputs the plan shows beside the cuts
    plan: SplitPlan = field(init=False)
    cut: SplitCandidate = field(init=False)
    boundary: str = field(init=False)  # the tensor crossing the link, by its graph IR name
    head: Any = field(init=False)
    tail: Any = field(init=False)
    head_in: tuple[TensorInfo, ...] = field(init=False)
    head_out: tuple[TensorInfo, ...] = field(init=False)
    run_head: FloatRunner = field(init=False)
    boundary_samples: np.ndarray = field(init=False)  # the head's outputs for the calibration samples
    tail_path: Path = field(init=False)
    tail_in: tuple[TensorInfo, ...] = field(init=False)
    tail_out: tuple[TensorInfo, ...] = field(init=False)
    report: SplitCompileReport = field(init=False)


def cut_model(build: _Split) -> None:
    """The planner's (or the user's) cut, and the model split there into a head and a tail module."""
    model = build.model
    graph = from_torch(model, tuple(model.input_shape), build.name)
    build.plan = plan_split(graph, build.device, build.server, build.link, build.bandwidth_bps, build.objective,
                            server_dtype=build.tail_dtype, codecs=build.codecs, max_drop_points=build.max_drop_points)
    build.cut = choose_cut(build.plan, build.split)
    build.boundary = graph.layers[build.cut.device_layers - 1].output
    build.head, build.tail = split_model(model, torch.zeros(model.input_shape), build.boundary)


def quantize_head(build: _Split) -> None:
    """The head as the device's INT8 file, quantized as a plain compile for the device would be."""
    build.artifact = build.tmp / f"{build.name}_head_int8.{build.config.format}"
    quantize(build.head, build.samples, build.artifact, build.config)


def check_head_full_integer(build: _Split) -> None:
    """The head's float islands, refused on an MCU."""
    build.islands = full_integer_check(build.artifact, f"{build.name} head", build.device)


def run_head_on_samples(build: _Split) -> None:
    """The head's tensors, and its dequantized outputs for the calibration samples: what the tail will see."""
    build.head_in, build.head_out = tensor_infos(build.artifact, build.config.channels_last_io)
    build.run_head = FloatRunner(open_model(build.artifact))
    native = _to_native(build.config.channels_last_io)
    build.boundary_samples = np.concatenate([build.run_head(native(x[None])) for x in build.samples])


def write_tail(build: _Split) -> None:
    """The tail as ONNX taking the boundary in the head's layout (fp32, or INT8 calibrated on the boundary)."""
    layout = build.head_out[0].layout
    build.tail_path = build.tmp / f"{build.name}_tail_{build.tail_dtype}.onnx"
    _write_tail(_NhwcInput(build.tail) if layout == "NHWC" else build.tail, build.boundary_samples, build.tail_path,
                build.tail_dtype, build.config)
    tail_in, build.tail_out = tensor_infos(build.tail_path)
    build.tail_in = tuple(replace(t, layout=layout) for t in tail_in)


def check_split_fidelity(build: _Split) -> None:
    """With held-out data: head then tail, as deployed, against the float model on every output, within the
    drop limit. The head takes its own layout; the tail gives the torch model's."""
    if build.held_out is not None:
        run_head, run_tail = build.run_head, FloatRunner(open_model(build.tail_path))
        native = _to_native(build.config.channels_last_io)

        def runner(x: np.ndarray) -> tuple[np.ndarray, ...]:
            return run_tail.run_all(run_head(native(x)))

        build.fidelity = check_fidelity(build, build.held_out, runner,
                                        f"the split (INT8 head -> {build.tail_dtype} tail)")


def describe_split(build: _Split) -> None:
    """The report, and the manifest: head on the device's backend, tail on onnxruntime, the split plan."""
    boundary = build.head_out[0]
    elements = int(np.prod(boundary.shape))
    head, tail = build.artifact, build.tail_path
    plan = replace(build.plan, chosen=build.cut, requested=build.split != "auto")
    build.report = SplitCompileReport(
        build.name, build.split, plan, boundary, build.boundary,
        elements * np.dtype(boundary.dtype).itemsize, elements * 4, head.name, head.stat().st_size, build.config,
        tail.name, tail.stat().st_size, build.tail_dtype, build.described, len(build.samples), build.islands,
        build.fidelity, build.max_drop_points, build.mcu, build.synthesis, build.held_out_kind, int8_warnings(build))
    stages = (Stage("head", stage_backend(build.device, build.config), head.name, build.head_in, build.head_out),
              Stage("tail", "onnxruntime", tail.name, build.tail_in, build.tail_out))
    recipe = split_recipe(build.config, build.tail_dtype, len(build.samples), build.calibration is None,
                          boundary.layout)
    build.manifest = Manifest(build.name, build.device.name, stages,
                              plan=_schedule(build.report, head, tail), preprocessing=build.preprocessing,
                              labels=model_labels(build.model), recipe=recipe)


def _schedule(report: SplitCompileReport, head: Path, tail: Path) -> SplitSchedule:
    boundary = SplitBoundary(report.boundary, report.boundary_tensor, report.payload_bytes, report.payload_fp32_bytes)
    return split_schedule(report.plan, report.tail_dtype, report.requested, boundary, report.model, head, tail)


SPLIT: Pipeline[_Split] = Pipeline(
    prepare=(cut_model, load_held_out, calibrate),
    stage=(quantize_head, check_head_full_integer, run_head_on_samples, write_tail, check_split_fidelity, fit_mcu,
           describe_split))


def compile_split(model: Any, name: str, device: Device, server: Device, link: Link, out_dir: str | Path,
                  calibration: str | Path | None, evaluation: str | Path | None = None, split: str = "auto",
                  bandwidth_bps: float | None = None, objective: str = "latency", tail_dtype: str = "fp32",
                  config: Int8Config | None = None, max_drop_points: float = 1.0,
                  mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                  codecs: tuple[CodecFigures, ...] = ()) -> SplitCompileReport | CompressedCompileReport:
    """Cut `model` for `device` + `server` over `link` and write a two-stage bundle (head, tail) to `out_dir`.

    `split` is "auto" (the planner's best option at `bandwidth_bps`, default the link's: a single-tensor cut,
    or with `codecs` (`convert.input_codecs.codec_figures`) a compressed input), the name of the last layer to
    run on the device, or a compressed input by its frame codec ("jpeg:75", one of `codecs`). A compressed input
    gives an encoder-head bundle (`compile_compressed`). Preprocessing and labels come from the model's cfg
    (`mean`/`std` override). Fails leaving `out_dir` untouched on a cut that cannot be deployed, a float
    island in an MCU head, or a top-1 drop above `max_drop_points` (for a compressed input: its measured drop).
    """
    if tail_dtype not in TAIL_DTYPES:
        raise ConversionError(f"tail_dtype must be one of {', '.join(TAIL_DTYPES)}, found {tail_dtype!r}")
    model = as_torch_model(model, calibration=calibration)  # input shape resolved, outputs flattened, once
    config = config or Int8Config.for_target(device)
    if ":" in split and not codecs:
        raise SplitError(f"--split {split} sends the input compressed: measure it with --codecs {split} first")
    if codecs:
        plan = plan_split(from_torch(model, tuple(model.input_shape), name), device, server, link, bandwidth_bps,
                          objective, server_dtype=tail_dtype, codecs=codecs, max_drop_points=max_drop_points)
        compressed = _compressed_choice(plan, split)
        if compressed is not None:
            return compile_compressed(model, name, replace(plan, chosen=compressed, requested=split != "auto"),
                                      input_preprocessing(model, "NCHW", mean, std), model_labels(model), out_dir,
                                      split)
    build = _Split(out_dir=Path(out_dir), model=model, name=name, device=device, config=config,
                   preprocessing=input_preprocessing(model, config.io_layout, mean, std), calibration=calibration,
                   evaluation=evaluation, max_drop_points=max_drop_points, server=server, link=link, split=split,
                   bandwidth_bps=bandwidth_bps, objective=objective, tail_dtype=tail_dtype, codecs=codecs)
    return SPLIT.run(build).report


def _compressed_choice(plan: SplitPlan, split: str) -> SplitCandidate | None:
    """The compressed input to deploy: the plan's best when `split` is auto and one wins, the one `split` names
    ("jpeg:75"; SplitError when it is not measured or refused), else None (a cut is deployed)."""
    if split == "auto":
        return plan.best if plan.best.input_codec else None
    if ":" not in split:
        return None
    for candidate in plan.compressed:
        if frame_codec(candidate) == split:
            if not candidate.valid:
                raise SplitError(f"sending the input as {candidate.input_codec} is not possible: "
                                 f"{candidate.why_invalid}")
            return candidate
    raise SplitError(f"{plan.model}: no compressed input {split!r} was measured (measured: "
                     f"{', '.join(frame_codec(c) for c in plan.compressed) or 'none'})")


class _NhwcInput(torch.nn.Module):
    """A tail that takes the NHWC tensor an MCU head sends, permuting it back to NCHW first."""

    def __init__(self, tail: Any) -> None:  # a module with an NCHW `input_shape`
        super().__init__()
        self.tail = tail
        n, c, h, w = tail.input_shape
        self.input_shape = (n, h, w, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(x.permute(0, 3, 1, 2))


def _to_native(channels_last: bool) -> Any:
    """N,C,H,W samples in the layout the head takes."""
    return (lambda x: np.ascontiguousarray(x.transpose(0, 2, 3, 1))) if channels_last else (lambda x: x)


def tail_config(config: Int8Config) -> Int8Config:
    """How an int8 tail is quantized: ONNX QDQ, calibrated on the head's outputs for the head's samples."""
    return Int8Config(format="onnx", max_samples=config.max_samples)


def split_recipe(config: Int8Config, tail_dtype: str, samples: int, data_free: bool,
                 boundary_layout: str | None) -> dict[str, QuantRecipe]:
    """The manifest's recipe: the head's, and the tail's when it is quantized (it takes the head's layout)."""
    recipe = {"head": config.recipe(samples, data_free)}
    if tail_dtype == "int8":
        recipe["tail"] = tail_config(config).recipe(samples, data_free, boundary_layout)
    return recipe


def _write_tail(tail: Any, boundary_samples: np.ndarray, path: Path, tail_dtype: str, config: Int8Config) -> None:
    """The tail as ONNX: fp32 as exported, or QDQ INT8 calibrated on the head's dequantized outputs."""
    if tail_dtype == "int8":
        quantize(tail, boundary_samples, path, tail_config(config))
        return
    export_fp32(tail, torch.from_numpy(boundary_samples[:1]), path, "the tail")
