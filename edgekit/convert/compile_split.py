"""`edgekit compile --split`: one bundle with an INT8 head for the device and an ONNX tail for the edge server.

The cut comes from the split planner (`auto`) or the user (a layer name, checked by the planner). The
head is quantized as a plain compile for the device would be, so its int8 output *is* the message sent
over the link; the tail takes that message dequantized to float32, in the head's layout. The tail stays
fp32 by default: the planner costs the server in fp32, the server is not the constraint, and a second
quantization would only add error. `tail_dtype="int8"` gives a QDQ tail calibrated on the head's own
dequantized outputs, so both sides agree on what the boundary tensor looks like.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekit.backends import load_backend
from edgekit.convert.calibration import Preprocessing, load_labelled
from edgekit.convert.compile import (
    calibration_samples,
    check_output,
    drop_points,
    fidelity_vs_float,
    full_integer_check,
    image_preprocessing,
    json_default,
    nchw_runner,
    stage_backend,
    staging,
    tensor_infos,
)
from edgekit.convert.config import Int8Config
from edgekit.convert.fidelity import Fidelity
from edgekit.convert.islands import FloatIsland
from edgekit.convert.mcu import McuFit, check_mcu_fit, write_mcu_pack
from edgekit.convert.quantize import quantize
from edgekit.convert.split_export import split_model
from edgekit.errors import ConversionError, SplitError
from edgekit.formats.bundle import Manifest, Stage, TensorInfo, write_bundle
from edgekit.graph.from_torch import from_torch
from edgekit.plan.split import SplitCandidate, SplitPlan, check_cut, deployable_cut, plan_split
from edgekit.report.fidelity import render_fidelity
from edgekit.targets import Device, Link

TAIL_DTYPES = ("fp32", "int8")


@dataclass(frozen=True)
class SplitCompileReport:
    """What a split compile chose and what it cost: the cut, both artifacts, the boundary tensor, fidelity."""

    model: str
    requested: str  # "auto" or the layer the user named
    plan: SplitPlan  # `chosen` is the deployed cut
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

    def to_dict(self) -> dict:
        data = asdict(self)
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
        lines.append(render_fidelity(self.fidelity, "fidelity of head -> tail against the float model", "split"))
        if self.mcu is not None:
            lines.append(f"head on tflite-micro: arena {self.mcu.arena_bytes:,} B measured; {self.mcu.verdict}")
        return "\n".join(lines)


def choose_cut(plan: SplitPlan, split: str) -> SplitCandidate:
    """The cut to deploy: the planner's best single-tensor cut (`auto`) or the one after layer `split`.

    All-device and all-server are refused with the plain compile that fits them: a split bundle has
    one stage on each side.
    """
    cut = deployable_cut(plan) if split == "auto" else check_cut(plan, split)
    layers = len(plan.candidates) - 1
    baseline = f"{'all on the device' if cut.device_layers else 'all on the server'} " \
               f"({1000 * cut.total_seconds:.1f} ms)"
    if cut.device_layers in (0, layers):
        chosen = "the planner's best is" if split == "auto" else f"cutting after '{split}' means"
        target = plan.device if cut.device_layers else plan.server
        raise SplitError(f"{plan.model}: {chosen} {baseline}, so there is nothing to split; compile a single-stage "
                         f"bundle with `edgekit compile {plan.model} --target {target} --int8 ...`, or pass "
                         "--split LAYER to force a cut")
    return cut


def compile_split(model: Any, name: str, device: Device, server: Device, link: Link, out_dir: str | Path,
                  calibration: str | Path | None, evaluation: str | Path | None = None, split: str = "auto",
                  bandwidth_bps: float | None = None, objective: str = "latency", tail_dtype: str = "fp32",
                  config: Int8Config | None = None, max_drop_points: float = 1.0,
                  preprocessing: Preprocessing = Preprocessing()) -> SplitCompileReport:
    """Cut `model` for `device` + `server` over `link` and write a two-stage bundle (head, tail) to `out_dir`.

    `split` is "auto" (the planner's best single-tensor cut at `bandwidth_bps`, default the link's) or
    the name of the last layer to run on the device. Fails leaving `out_dir` untouched on a cut that
    cannot be deployed, a float island in an MCU head, or a top-1 drop above `max_drop_points`.
    """
    if tail_dtype not in TAIL_DTYPES:
        raise ConversionError(f"tail_dtype must be one of {', '.join(TAIL_DTYPES)}, found {tail_dtype!r}")
    config = config or Int8Config.for_target(device)
    graph = from_torch(model, tuple(model.input_shape), name)
    plan = plan_split(graph, device, server, link, bandwidth_bps, objective, server_dtype=tail_dtype)
    cut = choose_cut(plan, split)
    boundary = graph.layers[cut.device_layers - 1].output
    head, tail = split_model(model, torch.zeros(model.input_shape), boundary)
    out_dir = check_output(out_dir)
    held_out = load_labelled(evaluation, tuple(model.input_shape)) if evaluation else None
    samples, described = calibration_samples(model, calibration, config, preprocessing)
    with staging(out_dir) as tmp:
        head_path = tmp / f"{name}_head_int8.{config.format}"
        quantize(head, samples, head_path, config)
        islands = full_integer_check(head_path, f"{name} head", device)
        head_in, head_out = tensor_infos(head_path, config.channels_last_io)
        run_head = load_backend(head_path)
        native = _to_native(config.channels_last_io)
        boundary_samples = np.concatenate([run_head(native(x[None])) for x in samples])
        nhwc_boundary = head_out[0].layout == "NHWC"
        tail_path = tmp / f"{name}_tail_{tail_dtype}.onnx"
        _write_tail(_NhwcInput(tail) if nhwc_boundary else tail, boundary_samples, tail_path, tail_dtype, server)
        tail_in, tail_out = tensor_infos(tail_path)
        tail_in = tuple(replace(t, layout=head_out[0].layout) for t in tail_in)
        fidelity = None
        if held_out is not None:
            run_tail = load_backend(tail_path)
            split_runner = nchw_runner(lambda x: run_tail(run_head(x)), config.channels_last_io)
            fidelity = fidelity_vs_float(model, split_runner, held_out)
            if drop_points(fidelity) > max_drop_points:
                raise ConversionError(f"{name}: the split (INT8 head -> {tail_dtype} tail) loses "
                                      f"{drop_points(fidelity):.2f} top-1 points on {evaluation} (limit "
                                      f"{max_drop_points}); nothing written to {out_dir}")
        mcu = None
        if device.device_class == "mcu" and config.format == "tflite":
            mcu = check_mcu_fit(head_path, device)
            write_mcu_pack(head_path, tmp / "mcu", mcu.arena_bytes)
        elements = int(np.prod(head_out[0].shape))
        sent_bytes = elements * np.dtype(head_out[0].dtype).itemsize
        report = SplitCompileReport(
            name, split, replace(plan, chosen=cut), head_out[0], boundary, sent_bytes, elements * 4, head_path.name,
            head_path.stat().st_size, config, tail_path.name, tail_path.stat().st_size, tail_dtype,
            described, len(samples), islands, fidelity, max_drop_points, mcu)
        (tmp / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=json_default))
        (tmp / "report.txt").write_text(report.render() + "\n")
        stages = (Stage("head", stage_backend(device, config), head_path.name, head_in, head_out),
                  Stage("tail", "onnxruntime", tail_path.name, tail_in, tail_out))
        labels = getattr(model, "labels", None)
        manifest = Manifest(name, device.name, stages, plan=split_manifest_plan(report, head_path, tail_path),
                            preprocessing=image_preprocessing(model, config, preprocessing),
                            labels=tuple(labels) if labels else None)
        write_bundle(tmp, manifest, out_dir)
    return report


def split_manifest_plan(report: SplitCompileReport, head: Path, tail: Path) -> dict:
    """The manifest's `plan`: which stages run where, the boundary tensor, the cut and its baselines (small JSON)."""
    plan = report.plan

    def cut(c: SplitCandidate) -> dict:
        return {"device_layers": c.device_layers, "last_device_layer": c.last_device_layer,
                "payload_bytes": c.payload_bytes, "device_seconds": c.device_seconds,
                "transfer_seconds": c.transfer_seconds, "server_seconds": c.server_seconds,
                "total_seconds": c.total_seconds, "device_joules": c.device_joules}

    digest = hashlib.sha256(head.read_bytes() + tail.read_bytes()).hexdigest()
    return {"kind": "split", "device_stages": ["head"], "server_stages": ["tail"],
            "boundary": {**report.boundary.to_dict(), "tensor": report.boundary_tensor,
                         "payload_bytes": report.payload_bytes, "fp32_bytes": report.payload_fp32_bytes},
            "split": {"device": plan.device, "server": plan.server, "link": plan.link, "uplink_bps": plan.uplink_bps,
                      "objective": plan.objective, "server_dtype": report.tail_dtype, "requested": report.requested,
                      "chosen": cut(plan.chosen),
                      "all_device": cut(plan.all_device), "all_server": cut(plan.all_server),
                      "decision_map": [list(r) for r in plan.decision_map]},
            "model_id": report.model, "model_version": f"sha256:{digest[:16]}"}


class _NhwcInput(torch.nn.Module):
    """A tail that takes the NHWC tensor an MCU head sends, permuting it back to NCHW first."""

    def __init__(self, tail: torch.nn.Module) -> None:
        super().__init__()
        self.tail = tail
        n, c, h, w = tail.input_shape
        self.input_shape = (n, h, w, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(x.permute(0, 3, 1, 2))


def _to_native(channels_last: bool) -> Any:
    """N,C,H,W samples in the layout the head takes."""
    return (lambda x: np.ascontiguousarray(x.transpose(0, 2, 3, 1))) if channels_last else (lambda x: x)


def _write_tail(tail: Any, boundary_samples: np.ndarray, path: Path, tail_dtype: str, server: Device) -> None:
    """The tail as ONNX: fp32 as exported, or QDQ INT8 calibrated on the head's dequantized outputs."""
    if tail_dtype == "int8":
        quantize(tail, boundary_samples, path, Int8Config(format="onnx"))
        return
    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(tail.eval(), (torch.from_numpy(boundary_samples[:1]),), str(path), dynamo=True,
                              external_data=False, verbose=False)  # weights inline: bundles load from bytes
    except Exception as exc:  # the exporter raises many types; name the step and the cause
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"{path.name}: fp32 ONNX export of the tail failed: {first}") from exc
