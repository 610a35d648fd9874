"""`edgekit calibrate`: measure a model's per-layer latency with the device's backend, fit the cost model to it,
write a calibrated device profile, and score how well each predictor matches a fresh measurement.

The calibrated profile is the base profile's TOML with a `[calibration]` table appended (see
`edgekit.targets.DeviceCalibration`); `load_target(path)` reads it and `edgekit.cost.layer_seconds`
prefers measured > fitted > estimated figures. It records the measuring machine and its CPU architecture; when
that is not the device's (`cpu.arch`), the profile is named after where it was measured (`rpi4@x86_64`) and the
calibration carries a warning saying so.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.cost.fit import PredictionError, RooflineFit, fit_roofline, prediction_error
from edgekit.cost.measure_ort import LayerTimings, measure_onnxruntime
from edgekit.cost.model import fitted_seconds, layer_seconds
from edgekit.errors import CalibrationError
from edgekit.graph.ir import Graph
from edgekit.targets import Device, DeviceCalibration, MeasuredModel, Quantity, load_target
from edgekit.units import parse_quantity

CALIBRATION_BACKENDS = ("onnxruntime", "litert")


@dataclass(frozen=True)
class Calibration:
    """A calibration run: what was measured, the fit, and the calibrated device (read back from disk if written)."""

    model: str
    base: Device
    device: Device
    graph: Graph
    timings: LayerTimings
    fit: RooflineFit
    profile_path: str | None
    backend: str
    artifact: str | None  # the .tflite measured with LiteRT (None: converted from the model, or ONNX Runtime)
    warning: str | None = None  # set when this machine is not the device's architecture


def _model_module(model: Any) -> Any:
    if isinstance(model, str):
        from edgekit.graph import resolve_module

        return resolve_module(model)
    return model


def measure(model: Any, name: str, device: Device, backend: str = "onnxruntime", threads: int = 1,
            repeats: int = 20, artifact: str | Path | None = None) -> tuple[Graph, LayerTimings]:
    """Trace `model` (a module or registry name), then time each of its IR layers on `backend`.

    ONNX Runtime measures the model exported to ONNX (fp32). LiteRT measures `artifact` (a .tflite of this
    model, e.g. the INT8 one `edgekit compile` wrote), or an fp32 conversion of the model when none is given.
    """
    from edgekit.graph.from_torch import export_program, graph_from_program

    if backend not in CALIBRATION_BACKENDS:
        raise CalibrationError(f"backend must be one of {', '.join(CALIBRATION_BACKENDS)} for per-layer "
                               f"calibration, found {backend!r}")
    if artifact is not None and backend != "litert":
        raise CalibrationError(f"an artifact ({artifact}) is measured with --backend litert, not {backend!r}")
    module = _model_module(model)
    shape = getattr(module, "input_shape", None)
    if shape is None:
        raise CalibrationError(f"{name}: the model has no 'input_shape' attribute to trace it with")
    program = export_program(module, tuple(shape), name)
    graph = graph_from_program(program, name)
    if backend == "onnxruntime":
        weights = {layer.name: layer_seconds(layer, device, "fp32")[0] for layer in graph.layers}
        return graph, measure_onnxruntime(program, graph, weights, threads, repeats)
    from edgekit.cost.measure_litert import measure_litert

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(artifact) if artifact is not None else _litert_fp32(module, tuple(shape), Path(tmp))
        weights_fp32 = {layer.name: layer_seconds(layer, device, "fp32")[0] for layer in graph.layers}
        return graph, measure_litert(graph, path, weights_fp32, threads, repeats)


def _litert_fp32(module: Any, shape: tuple[int, ...], folder: Path) -> Path:
    """An fp32 .tflite of `module` by litert-torch (tens of seconds for MobileNetV2)."""
    import litert_torch
    import torch

    path = folder / "model.tflite"
    litert_torch.convert(module.eval(), (torch.zeros(*shape),)).export(str(path))
    return path


def machine_arch() -> str:
    """This machine's CPU architecture as Linux's `uname -m` names it (Windows' AMD64 and macOS' arm64 mapped)."""
    machine = platform.machine().lower() or "unknown"
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def arch_mismatch(device: Device, arch: str) -> str | None:
    """None when `arch` (the measuring machine's) is the device's; else one line naming both and the profile
    name the measurement is written under."""
    if device.arch == arch:
        return None
    name, written = _base_name(device), measured_name(device, arch)
    if device.arch is None:
        return (f"{name}'s profile names no cpu.arch, so this machine ({arch}) may not be the device: the "
                f"profile is named {written}")
    return (f"measured on this machine ({arch}), not on {name} ({device.arch}): these are {arch} timings, so "
            f"the profile is named {written}; calibrate on the device for its own figures")


def _base_name(device: Device) -> str:
    """The device's name without the '@arch' an earlier calibration on another machine gave it."""
    return device.name.partition("@")[0]


def measured_name(device: Device, arch: str) -> str:
    """The calibrated profile's name: the device's, with '@arch' unless measured on the device's architecture."""
    return _base_name(device) if device.arch == arch else f"{_base_name(device)}@{arch}"


def machine_description() -> str:
    """CPU model, architecture, OS and the CPU share this process may use (affinity, cgroup quota)."""
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith(("model name", "Model"))), cpu)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{cpu}, {machine_arch()}, {platform.system()} {platform.release()}, {usable} usable CPUs"
    quota = Path("/sys/fs/cgroup/cpu.max")
    if quota.is_file() and not quota.read_text().startswith("max"):
        text += f", cgroup cpu.max {quota.read_text().strip()}"
    return text


def calibrate(model: Any, name: str, target: str | Path | Device, backend: str = "onnxruntime", threads: int = 1,
              repeats: int = 20, out: str | Path | None = None, command: str | None = None,
              artifact: str | Path | None = None) -> Calibration:
    """Measure `model` on this machine with `backend` (LiteRT: on `artifact` if given), fit the target's cost
    model for the measured dtype, and write the calibrated profile to `out` if given."""
    base = dataclasses.replace(target if isinstance(target, Device) else load_target(target), calibration=None)
    graph, timings = measure(model, name, base, backend, threads, repeats, artifact)
    if timings.unmapped:
        raise CalibrationError(f"{name}: backend kernels with no graph layer: {', '.join(sorted(timings.unmapped))}")
    fit = fit_roofline(graph.layers, timings.layers, timings.dtype)
    command = command or (f"edgekit.cost.calibrate.calibrate({name!r}, {base.name!r}, backend={backend!r}, "
                          f"threads={threads}, repeats={repeats}, artifact={str(artifact) if artifact else None!r})")
    arch = machine_arch()
    calibration = _device_calibration(graph, timings, fit, command, arch)
    device = dataclasses.replace(base, name=measured_name(base, arch), calibration=calibration)
    if out is not None:
        Path(out).write_text(render_profile(base, calibration, device.name))
        device = load_target(out)
    return Calibration(name, base, device, graph, timings, fit, str(out) if out is not None else None, backend,
                       str(artifact) if artifact is not None else None, arch_mismatch(base, arch))


def _device_calibration(graph: Graph, timings: LayerTimings, fit: RooflineFit, command: str,
                        arch: str) -> DeviceCalibration:
    how = f"{timings.backend}, {timings.threads} thread(s), median of {timings.repeats} runs"
    fitted = f"measured: {command}; non-negative least squares over {fit.layers} measured layers of " \
             f"{graph.name} ({how})"
    assert fit.mac_rate is not None  # fit_roofline refuses a fit without a compute term

    def quantity(text: str, dimension: str, note: str) -> Quantity:
        return Quantity(parse_quantity(text, dimension), text, source=note)

    measured = MeasuredModel(
        input_shape=tuple(graph.inputs[0].shape),
        total=quantity(_time_text(timings.total), "time", f"measured: {command}; end-to-end median ({how})"),
        layers=dict(timings.layers),
        source=f"measured: {command}; {timings.layers_method} ({how})",
    )
    return DeviceCalibration(
        backend=timings.backend, threads=timings.threads, dtype=timings.dtype,
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        machine=machine_description(), machine_arch=arch, command=command, repeats=timings.repeats,
        throughput=quantity(f"{fit.mac_rate / 1e9:.4g} GMAC/s", "mac_rate", fitted),
        overhead=quantity(_time_text(timings.overhead), "time",
                          f"measured: {command}; {timings.overhead_method} ({how})")
        if timings.overhead > 0 else None,
        bandwidth=quantity(f"{fit.byte_rate / 1e9:.4g} GB/s", "byte_rate", fitted) if fit.byte_rate else None,
        layer_overhead=quantity(_time_text(fit.layer_overhead), "time", fitted) if fit.layer_overhead > 0 else None,
        models={graph.name: measured},
    )


def _time_text(seconds: float) -> str:
    return f"{seconds * 1e6:.4g} us"


def render_profile(base: Device, calibration: DeviceCalibration, name: str | None = None) -> str:
    """The base profile's own TOML text (minus any earlier calibration) with this calibration appended, under
    `name` if given (the top-level `name` key rewritten)."""
    lines = Path(base.path).read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("[calibration")), len(lines))
    out = [*lines[:start]]
    if name is not None:
        top = next((i for i, line in enumerate(out) if line.startswith("[")), len(out))
        out = [f"name = {json.dumps(name)}" if i < top and re.match(r"name\s*=", line) else line
               for i, line in enumerate(out)]
    while out and not out[-1].strip():
        out.pop()
    out += ["", "# Written by edgekit calibrate: the cost model prefers measured > fitted > estimated figures.",
            "[calibration]"]
    for key in ("backend", "threads", "dtype", "date", "machine", "machine_arch", "command", "repeats"):
        if getattr(calibration, key) is not None:
            out.append(f"{key} = {json.dumps(getattr(calibration, key))}")
    for key in ("throughput", "overhead", "bandwidth", "layer_overhead"):
        if getattr(calibration, key) is not None:
            out.append(_quantity_line(key, getattr(calibration, key)))
    for model, measured in calibration.models.items():
        out += ["", f"[calibration.models.{json.dumps(model)}]",
                f"input_shape = {json.dumps(list(measured.input_shape))}",
                _quantity_line("total", measured.total),
                f"source = {json.dumps(measured.source)}",
                f"[calibration.models.{json.dumps(model)}.layers]"]
        out += [f"{json.dumps(layer)} = {json.dumps(_time_text(s))}" for layer, s in measured.layers.items()]
    return "\n".join(out) + "\n"


def _quantity_line(key: str, quantity: Quantity) -> str:
    return f"{key} = {{ value = {json.dumps(quantity.text)}, source = {json.dumps(quantity.source)} }}"


def prediction_errors(calibration: Calibration, graph: Graph, fresh: LayerTimings) -> list[PredictionError]:
    """Each predictor against a fresh measurement of `graph`: the profile's estimate, the fitted calibrated
    roofline, and (for a model in the calibration) the measured table."""
    cal = calibration.device.calibration
    assert cal is not None
    if fresh.dtype != cal.dtype:
        raise CalibrationError(f"{graph.name}: measured in {fresh.dtype}, but the calibration is for {cal.dtype}; "
                               f"measure its {cal.dtype} artifact (--holdout {graph.name}=PATH.tflite)")
    overhead = cal.overhead.value if cal.overhead else 0.0
    estimate = {layer.name: layer_seconds(layer, calibration.base, cal.dtype)[0] for layer in graph.layers}
    predictors = [("estimate", estimate, 0.0),
                  ("fitted", {layer.name: fitted_seconds(layer, cal) for layer in graph.layers}, overhead)]
    table = cal.models.get(graph.name)
    if table is not None:
        predictors.append(("measured table", {layer.name: table.layers.get(layer.name, 0.0)
                                              for layer in graph.layers}, overhead))
    return [prediction_error(label, graph.name, predicted, fresh.layers, sum(predicted.values()) + extra,
                             fresh.total) for label, predicted, extra in predictors]


def evaluate(calibration: Calibration, models: Sequence[tuple[Any, str, str | Path | None]],
             repeats: int | None = None) -> list[PredictionError]:
    """Measure each (model, name, LiteRT artifact or None) afresh with the calibration's backend and threads,
    and score every predictor on it."""
    rows = []
    for model, name, artifact in models:
        graph, fresh = measure(model, name, calibration.base, calibration.backend, calibration.timings.threads,
                               repeats or calibration.timings.repeats, artifact)
        rows += prediction_errors(calibration, graph, fresh)
    return rows

