"""Split a `.tflite` bundle at one tensor: the head (every operator the boundary needs) for the device, the tail
(the rest) for the edge server, both cut from the same file.

So head then tail computes the unsplit model bit for bit (checked here on seeded inputs before anything is
written), the boundary goes on the wire as the tensor the file already holds (an INT8 model's int8 with its own
scale and zero point; a float model's float32), and the user's quantization is kept exactly.

This is how a model file is split (`edgekit compile FILE.tflite --split`): a .tflite has no torch module to
re-export, as `compile_split` does for torch models. The cut comes from the split planner run on the file's own
graph (`auto`) or names the layer the head ends with; the tail runs on LiteRT on the server, in the file's own
precision, as the planner costs it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.convert.compile import CompileReport, tensor_infos
from edgekit.convert.pipeline import Build, Pipeline
from edgekit.convert.split_schedule import split_schedule
from edgekit.errors import ConversionError, SplitError
from edgekit.formats import tflite
from edgekit.formats.bundle import Bundle, Manifest, Stage, TensorInfo, load_bundle
from edgekit.formats.plans import SplitBoundary, SplitSchedule
from edgekit.graph.from_tflite import from_tflite
from edgekit.plan.split import SplitCandidate, SplitPlan, choose_cut, plan_split
from edgekit.runtime.backends import open_model
from edgekit.targets import Device, Link, load_target

CHECKED_INPUTS = 4  # seeded inputs on which head -> tail must equal the unsplit model


def cut_tflite(path: Path, tensor: int) -> tuple[bytes, bytes]:
    """(head, tail) flatbuffers of the model at `path` cut at tensor index `tensor` of subgraph 0.

    The head holds every operator that `tensor` depends on and gives it as its only output; the tail holds the
    rest, takes `tensor` as its only input and gives every model output in the model's order. Refused (SplitError)
    when another head tensor, or the model's input, is read after the cut, or a model output is made in the head.
    """
    model, _ = tflite.read_model(path)
    if len(model.subgraphs) != 1:
        raise SplitError(f"{path}: the model has {len(model.subgraphs)} subgraphs; a split cuts single-graph models")
    sub = model.subgraphs[0]
    ops = list(sub.operators or [])
    producer = {int(t): i for i, op in enumerate(ops) for t in op.outputs}
    if tensor not in producer:
        raise SplitError(f"{path}: tensor {tensor} is not made by an operator, so there is nothing to cut after")

    def acts(op: Any) -> list[int]:
        return [int(t) for t in op.inputs if t >= 0 and not tflite.is_constant(model, int(t))]

    head: set[int] = set()
    todo = [tensor]
    while todo:
        index = producer.get(todo.pop())
        if index is not None and index not in head:
            head.add(index)
            todo += acts(ops[index])
    made = {int(t) for i in head for t in ops[i].outputs}
    image = int(sub.inputs[0])
    tail = [i for i in range(len(ops)) if i not in head]
    for i in tail:
        crossing = [t for t in acts(ops[i]) if (t in made and t != tensor) or t == image]
        if crossing:
            name = tflite.tensor_name(sub.tensors[crossing[0]])
            raise SplitError(f"{path}: operator {i} ({tflite.op_name(model, ops[i])}) after the cut reads '{name}' "
                             f"from before it; the cut at '{tflite.tensor_name(sub.tensors[tensor])}' is not crossed "
                             "by one tensor alone")
    early = [tflite.tensor_name(sub.tensors[int(t)]) for t in sub.outputs if int(t) in made]
    if early:
        raise SplitError(f"{path}: model output '{early[0]}' is made before the cut; the tail must give every output")
    head_model = tflite.extract_model(model, sorted(head), [image], [tensor])
    tail_model = tflite.extract_model(model, tail, [tensor], [int(t) for t in sub.outputs])
    return tflite.pack_model(head_model), tflite.pack_model(tail_model)


@dataclass(frozen=True)
class FileSplitReport:
    """What a split of a .tflite bundle chose and cost: the plan, the boundary, both halves, the bit-exact check."""

    model: str
    dtype: str  # the file's precision, which both sides run in: "int8" or "fp32"
    requested: str  # "auto" or the layer the user named
    plan: SplitPlan  # `chosen` is the deployed cut
    boundary: TensorInfo  # the head's output: what crosses the link each frame
    boundary_tensor: str  # its name in the graph IR
    payload_bytes: int
    payload_fp32_bytes: int
    head_artifact: str
    head_bytes: int
    tail_artifact: str
    tail_bytes: int
    checked_inputs: int  # seeded inputs on which head -> tail equalled the unsplit model
    compiled: CompileReport | None = None  # the compile of the unsplit model, when this split followed one

    def to_dict(self) -> dict:
        data = asdict(self)
        data["plan"] = self.plan.to_dict()
        data["compiled"] = self.compiled.to_dict() if self.compiled else None
        return data

    def render(self) -> str:
        from edgekit.report.plans import render_split_plan

        cut, b = self.plan.chosen, self.boundary
        quantized = f", scale {b.scale:g} zero point {b.zero_point}" if b.scale is not None else ""
        return "\n".join([
            *([self.compiled.render(), ""] if self.compiled else []), render_split_plan(self.plan), "",
            f"cut after '{cut.last_device_layer}' ({cut.device_layers} of {len(self.plan.candidates) - 1} layers on "
            f"{self.plan.device}); boundary '{self.boundary_tensor}' {b.dtype} {list(b.shape)} "
            f"{b.layout or ''}{quantized}",
            f"payload per frame: {self.payload_bytes:,} B as sent ({self.payload_fp32_bytes:,} B in float32)",
            f"head: {self.head_artifact} ({self.head_bytes:,} bytes); tail: {self.tail_artifact} ({self.dtype} "
            f"tflite on LiteRT, {self.tail_bytes:,} bytes)",
            f"head -> tail equals the unsplit model bit for bit on {self.checked_inputs} seeded inputs"])


@dataclass(kw_only=True)
class _BundleSplit(Build):
    """A split of a single-stage .tflite bundle: the source, where it is cut for, and the two halves."""

    source: Bundle
    device: Device
    server: Device
    link: Link
    split: str
    bandwidth_bps: float | None
    objective: str
    compiled: CompileReport | None
    model_file: Path = field(init=False)
    dtype: str = field(init=False)  # "int8" or "fp32": what the file computes in
    plan: SplitPlan = field(init=False)
    cut: SplitCandidate = field(init=False)
    boundary: str = field(init=False)  # graph IR name, "t<index>"
    head: Path = field(init=False)
    tail: Path = field(init=False)
    report: FileSplitReport = field(init=False)


def plan_cut(build: _BundleSplit) -> None:
    """The planner's (or the user's) cut on the file's own graph, costed in the file's precision on both sides."""
    manifest = build.source.manifest
    if len(manifest.stages) != 1 or not manifest.stages[0].file.endswith(".tflite"):
        raise SplitError(f"{build.source.path}: a split takes a single-stage .tflite bundle; this one has stages "
                         f"{', '.join(s.file for s in manifest.stages)}")
    build.model_file = build.source.file_path(manifest.stages[0].file)
    graph = from_tflite(build.model_file)
    build.dtype = "int8" if any(layer.dtype == "int8" for layer in graph.layers) else "fp32"
    build.plan = plan_split(graph, build.device, build.server, build.link, build.bandwidth_bps, build.objective,
                            dtype=build.dtype, server_dtype=build.dtype)
    build.cut = choose_cut(build.plan, build.split)
    build.boundary = graph.layers[build.cut.device_layers - 1].output


def write_halves(build: _BundleSplit) -> None:
    """The head and the tail cut from the file, as two .tflite files in the bundle."""
    head, tail = cut_tflite(build.model_file, int(build.boundary[1:]))
    stem = Path(build.source.manifest.stages[0].file).stem
    build.head, build.tail = build.tmp / f"{stem}_head.tflite", build.tmp / f"{stem}_tail.tflite"
    build.head.write_bytes(head)
    build.tail.write_bytes(tail)


def check_bit_exact(build: _BundleSplit) -> None:
    """Head then tail against the unsplit model on seeded inputs: every output equal, or the cut is a bug."""
    full, head, tail = open_model(build.model_file), open_model(build.head), open_model(build.tail)
    rng = np.random.default_rng(0)
    buffer = full.input_buffer
    for _ in range(CHECKED_INPUTS):
        x = (rng.integers(-128, 128, buffer.shape) if buffer.dtype.kind == "i" else
             rng.uniform(0.0, 1.0, buffer.shape)).astype(buffer.dtype)
        np.copyto(full.input_buffer, x)
        np.copyto(head.input_buffer, x)
        expected = [out.copy() for out in full.invoke()]
        np.copyto(tail.input_buffer, head.invoke()[0])
        for name, want, got in zip((t.name for t in full.model_tensors()[1]), expected, tail.invoke()):
            if not np.array_equal(want, got):
                raise ConversionError(f"{build.source.path}: head -> tail differs from the unsplit model on output "
                                      f"'{name}' (max |diff| {np.abs(want.astype(np.int64) - got).max()}): the cut "
                                      "is wrong; please report it")


def describe_file_split(build: _BundleSplit) -> None:
    """The report and the manifest: the head on the source's backend, the tail on LiteRT, the split plan."""
    source = build.source.manifest
    channels_last = _channels_last(source.stages[0])
    head_in, head_out = tensor_infos(build.head, channels_last)
    tail_in, tail_out = tensor_infos(build.tail, channels_last)
    tail_in = tuple(replace(t, layout=head_out[0].layout) for t in tail_in)
    boundary = head_out[0]
    elements = int(np.prod(boundary.shape))
    plan = replace(build.plan, chosen=build.cut, requested=build.split != "auto")
    build.report = report = FileSplitReport(
        source.model, build.dtype, build.split, plan, boundary, build.boundary,
        elements * np.dtype(boundary.dtype).itemsize, elements * 4, build.head.name, build.head.stat().st_size,
        build.tail.name, build.tail.stat().st_size, CHECKED_INPUTS, build.compiled)
    stages = (Stage("head", source.stages[0].backend, build.head.name, head_in, head_out),
              Stage("tail", "litert", build.tail.name, tail_in, tail_out))
    recipe = {"head": source.recipe[source.stages[0].name]} if source.recipe else None
    build.manifest = Manifest(source.model, source.target, stages, plan=_schedule(report, build.head, build.tail),
                              preprocessing=source.preprocessing, labels=source.labels, recipe=recipe,
                              detection=source.detection)


def _channels_last(stage: Stage) -> bool:
    return any(t.layout == "NHWC" for t in stage.inputs)


def _schedule(report: FileSplitReport, head: Path, tail: Path) -> SplitSchedule:
    boundary = SplitBoundary(report.boundary, report.boundary_tensor, report.payload_bytes, report.payload_fp32_bytes)
    return split_schedule(report.plan, report.dtype, report.requested, boundary, report.model, head, tail)


FILE_SPLIT: Pipeline[_BundleSplit] = Pipeline(prepare=(plan_cut,),
                                              stage=(write_halves, check_bit_exact, describe_file_split))


def split_tflite_bundle(bundle: str | Path, out_dir: str | Path, server: Device, link: Link, split: str = "auto",
                      bandwidth_bps: float | None = None, objective: str = "latency",
                      compiled: CompileReport | None = None, device: Device | None = None) -> FileSplitReport:
    """Cut the single-stage .tflite bundle `bundle` (made for its target, the device) for `server` over
    `link` into the split bundle `out_dir`; `split` is "auto" or the last layer to run on the device. Labels,
    preprocessing and a detector's decoder carry over; `compiled`, the compile that made `bundle`, goes into the
    report; `device` is the profile the bundle was made for (default: its target, loaded by name). `out_dir` is
    left untouched on any failure."""
    source = load_bundle(bundle)
    build = _BundleSplit(out_dir=Path(out_dir), source=source, device=device or load_target(source.manifest.target),
                         server=server, link=link, split=split, bandwidth_bps=bandwidth_bps, objective=objective,
                         compiled=compiled)
    return FILE_SPLIT.run(build).report
