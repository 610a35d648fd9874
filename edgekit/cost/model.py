"""Latency and energy of layers on a device, and of tensors over a link (a roofline-style estimate).

Per layer, the seconds come from the first of these the device profile has (`layer_seconds` says which):
1. "measured": the layer's own time from `edgekit calibrate`, for that model, in the calibrated dtype;
2. "fitted": the calibrated roofline: MACs / fitted MAC/s + bytes moved (input + output activations +
   weights) / fitted bandwidth + the fitted fixed cost of an executed layer, in the calibrated dtype;
3. "estimate": the same roofline with the profile's own throughput for the dtype and memory bandwidth.
An op edgekit does not know has unknown MACs: estimates count its bytes moved only (`excluded_compute` says so).
Device energy = active power x time. A transfer costs bytes x 8 / bandwidth + RTT + protocol overhead,
and, when the link gives it, radio energy per byte.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from edgekit.formats.frame import PROTOCOL_OVERHEAD_BYTES
from edgekit.graph.ir import DTYPE_BYTES, Layer, numel, unknown_ops_text
from edgekit.graph.ops import ALIAS_OPS
from edgekit.targets import Device, DeviceCalibration, Link

LATENCY_SOURCES = ("measured", "fitted", "estimate")  # the order `layer_seconds` prefers them in


@dataclass(frozen=True)
class Cost:
    """Seconds and device joules of one piece of work."""

    seconds: float
    joules: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.seconds + other.seconds, self.joules + other.joules)


def moved_bytes(layer: Layer, dtype: str) -> int:
    """Bytes a layer reads and writes: input and output activations plus weights, all in `dtype`."""
    return (sum(numel(shape) for shape in layer.input_shapes) + layer.output_elements + layer.params) \
        * DTYPE_BYTES[dtype]


def is_executed(layer: Layer) -> bool:
    """Whether a layer runs a kernel of its own (a reshape only renames its input buffer)."""
    return layer.op not in ALIAS_OPS


def excluded_compute(layers: Iterable[Layer]) -> str:
    """'' or what every latency estimate over `layers` leaves out: the compute of ops edgekit does not know
    (their MACs are unknown; only their bytes moved and fixed cost are counted)."""
    named = unknown_ops_text(layers)
    return f"latency excludes the compute of ops edgekit does not know: {named}" if named else ""


def fitted_seconds(layer: Layer, calibration: DeviceCalibration) -> float:
    """The calibrated roofline: fitted MAC/s, fitted bandwidth and fixed cost per executed layer."""
    seconds = layer.macs / calibration.throughput.value
    if calibration.bandwidth is not None:
        seconds += moved_bytes(layer, calibration.dtype) / calibration.bandwidth.value
    if calibration.layer_overhead is not None and is_executed(layer):
        seconds += calibration.layer_overhead.value
    return seconds


def layer_seconds(layer: Layer, device: Device, dtype: str = "int8", model: str | None = None) -> tuple[float, str]:
    """Seconds of one layer of `model` on `device` in `dtype`, and which of LATENCY_SOURCES gave them."""
    calibration = device.calibration
    if calibration is not None and calibration.dtype == dtype:
        measured = calibration.models.get(model) if model is not None else None
        if measured is not None and layer.name in measured.layers:
            return measured.layers[layer.name], "measured"
        return fitted_seconds(layer, calibration), "fitted"
    rate = device.throughput.get(dtype) or device.throughput["fp32"]
    seconds = layer.macs / rate.value
    if device.memory_bandwidth is not None:
        seconds += moved_bytes(layer, dtype) / device.memory_bandwidth.value
    return seconds, "estimate"


def layer_cost(layer: Layer, device: Device, dtype: str = "int8", model: str | None = None) -> Cost:
    """Seconds (see `layer_seconds` for which figure wins) and active-power joules of one layer on `device`."""
    seconds, _ = layer_seconds(layer, device, dtype, model)
    power = device.power_active.value if device.power_active else 0.0
    return Cost(seconds, seconds * power)


def invocation_cost(device: Device, dtype: str) -> Cost:
    """The fixed cost of one model call on `device` (its calibrated per-inference overhead; else nothing)."""
    calibration = device.calibration
    if calibration is None or calibration.dtype != dtype or calibration.overhead is None:
        return Cost(0.0)
    power = device.power_active.value if device.power_active else 0.0
    return Cost(calibration.overhead.value, calibration.overhead.value * power)


def transfer_cost(payload_bytes: int, link: Link, device: Device | None = None) -> Cost:
    """Uplink time of one message (payload + protocol overhead) and the device's radio energy for it."""
    total = payload_bytes + PROTOCOL_OVERHEAD_BYTES
    seconds = total * 8 / link.uplink.value + link.rtt.value
    joules = total * link.tx_energy.value if link.tx_energy else 0.0
    if device is not None and device.power_idle is not None:
        joules += device.power_idle.value * seconds  # the device waits for the answer
    return Cost(seconds, joules)
