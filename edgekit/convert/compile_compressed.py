"""`edgekit compile --split` when the planner's pick is the input sent compressed: an encoder head, a full tail.

The device stage ("head") only turns the preprocessed input back into 8-bit pixels (uint8 1,C,H,W, scale
1/255 as the frame carries it); the transport's image codec (frame codec "jpeg:Q" or "webp:Q") encodes them
with Pillow. The server stage ("tail") is the whole float model with the bundle's normalisation folded in: it
takes the decoded pixels dequantized to [0, 1]. Both are fp32 ONNX run by onnxruntime; nothing is quantized.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekit.convert.compile import tensor_infos
from edgekit.convert.pipeline import Build, Pipeline
from edgekit.errors import ConversionError, SplitError
from edgekit.formats.bundle import InputPreprocessing, Manifest, Stage, TensorInfo
from edgekit.formats.plans import SplitBoundary, SplitCut, SplitFigures, SplitSchedule
from edgekit.plan.split import SplitCandidate, SplitPlan


@dataclass(frozen=True)
class CompressedCompileReport:
    """What a compressed-input compile deployed: the plan (its `chosen` is the codec), the codec, both files."""

    model: str
    plan: SplitPlan
    codec: str  # the frame codec the device's transport sends with, e.g. "jpeg:75"
    pixels: TensorInfo  # what crosses the link, before the codec
    head_artifact: str
    tail_artifact: str
    tail_bytes: int

    def to_dict(self) -> dict:
        return {**asdict(self), "plan": self.plan.to_dict()}

    def render(self) -> str:
        from edgekit.report.plans import render_split_plan

        c = self.plan.chosen
        return "\n".join([render_split_plan(self.plan), "",
                          f"deployed: all on {self.plan.server}, the input sent as {c.input_codec} "
                          f"(~{c.payload_bytes:,} B per frame, top-1 drop {c.drop_points:.2f} points); the device's "
                          f"transport must send with codec '{self.codec}'",
                          f"head: {self.head_artifact} (pixels out, no weights); tail: {self.tail_artifact} "
                          f"(fp32 onnx, {self.tail_bytes:,} bytes, normalisation included)"])


def frame_codec(candidate: SplitCandidate) -> str:
    """'jpeg q75' -> 'jpeg:75': the frame codec a compressed-input candidate is sent with."""
    codec, _, quality = candidate.input_codec.partition(" q")
    return f"{codec}:{quality}"


class _Normalisation(torch.nn.Module):
    """The bundle's per-channel mean and std as buffers, shaped to broadcast over N,C,H,W."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, prep: InputPreprocessing) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(prep.mean).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(prep.std).reshape(1, -1, 1, 1))


class _ToPixels(_Normalisation):
    """The preprocessed input back to the 8-bit pixels it came from: what the image codec encodes."""

    def __init__(self, prep: InputPreprocessing) -> None:
        super().__init__(prep)
        self.scale = prep.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round((x * self.std + self.mean) / self.scale).clamp(0, 255).to(torch.uint8)


class _Normalized(_Normalisation):
    """The model on [0, 1] pixels: (x - mean) / std first, as the bundle's preprocessing would."""

    def __init__(self, model: Any, prep: InputPreprocessing) -> None:
        super().__init__(prep)
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model((x - self.mean) / self.std)


@dataclass(kw_only=True)
class _Compressed(Build):
    model: Any  # a TorchModel (convert.torch_model)
    name: str
    plan: SplitPlan  # `chosen`: the compressed input to deploy
    preprocessing: InputPreprocessing
    labels: tuple[str, ...] | None
    requested: str  # "auto" or the codec the user named ("jpeg:75")
    head: Path = field(init=False)
    tail: Path = field(init=False)


def write_stages(build: _Compressed) -> None:
    """Both stages as fp32 ONNX in the staging folder."""
    shape = tuple(build.model.input_shape)
    build.head, build.tail = build.tmp / f"{build.name}_to_pixels.onnx", build.tmp / f"{build.name}_full_fp32.onnx"
    export_fp32(_ToPixels(build.preprocessing), torch.zeros(shape), build.head, "the pixel head")
    export_fp32(_Normalized(build.model, build.preprocessing), torch.zeros(shape), build.tail, "the full model")


def describe(build: _Compressed) -> None:
    """The manifest (head on the device, tail on the server, the plan's figures) and the report."""
    head_in, (pixels,) = tensor_infos(build.head)
    pixels = replace(pixels, scale=build.preprocessing.scale, zero_point=0)  # dequantized: pixels in [0, 1]
    (tail_in,), tail_out = tensor_infos(build.tail)
    plan, chosen = build.plan, build.plan.chosen

    def cut(c: SplitCandidate) -> SplitCut:
        return SplitCut(c.device_layers, c.last_device_layer, c.payload_bytes, c.device_seconds, c.transfer_seconds,
                        c.server_seconds, c.total_seconds, c.device_joules)

    figures = SplitFigures(plan.device, plan.server, plan.link, plan.uplink_bps, plan.objective, "fp32",
                           build.requested, cut(chosen), cut(plan.all_device), cut(plan.all_server), ())
    digest = hashlib.sha256(build.head.read_bytes() + build.tail.read_bytes()).hexdigest()
    boundary = SplitBoundary(pixels, "pixels", chosen.payload_bytes, int(np.prod(pixels.shape)) * 4)
    schedule = SplitSchedule(("head",), ("tail",), build.name, f"sha256:{digest[:16]}", boundary, figures,
                             frame_codec(chosen))
    stages = (Stage("head", "onnxruntime", build.head.name, head_in, (pixels,)),
              Stage("tail", "onnxruntime", build.tail.name, (replace(tail_in, layout="NCHW"),), tail_out))
    build.manifest = Manifest(build.name, plan.device, stages, plan=schedule, preprocessing=build.preprocessing,
                              labels=build.labels)
    build.report = CompressedCompileReport(build.name, plan, frame_codec(chosen), pixels, build.head.name,
                                           build.tail.name, build.tail.stat().st_size)


COMPRESSED: Pipeline[_Compressed] = Pipeline(prepare=(), stage=(write_stages, describe))


def compile_compressed(model: Any, name: str, plan: SplitPlan, preprocessing: InputPreprocessing | None,
                       labels: tuple[str, ...] | None, out_dir: str | Path,
                       requested: str = "auto") -> CompressedCompileReport:
    """The bundle for `plan.chosen`, a valid compressed input (`plan.compressed`), written to `out_dir`;
    `requested` is what the user asked for ("auto" or the codec), as the manifest records it."""
    if not plan.chosen.input_codec or not plan.chosen.valid:
        raise SplitError(f"{name}: the plan's choice is not a valid compressed input")
    if preprocessing is None:
        raise SplitError(f"{name}: a compressed input needs an image input (4-D, 1 or 3 channels)")
    build = _Compressed(out_dir=Path(out_dir), model=model, name=name, plan=plan, preprocessing=preprocessing,
                        labels=labels, requested=requested)
    report = COMPRESSED.run(build).report
    assert isinstance(report, CompressedCompileReport)
    return report


def export_fp32(module: Any, example: torch.Tensor, path: Path, what: str) -> None:
    """`module` as fp32 ONNX at `path`, weights inline (bundles load from bytes); ConversionError naming `what`."""
    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(module.eval(), (example,), str(path), dynamo=True, external_data=False, verbose=False)
    except Exception as exc:  # the exporter raises many types; name the step and the cause
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"{path.name}: fp32 ONNX export of {what} failed: {first}") from exc
