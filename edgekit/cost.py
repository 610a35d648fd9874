"""Latency and energy of layers on a device, and of tensors over a link (a roofline-style estimate).

Per layer: compute time = MACs / the profile's effective MAC/s for the dtype, plus memory time =
bytes moved (input + output activations + weights) / the profile's memory bandwidth when it gives
one. Device energy = active power x time. A transfer costs bytes x 8 / bandwidth + RTT + protocol
overhead, and, when the link gives it, radio energy per byte. Estimates until a profile is
calibrated with measured timings (not built yet).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.graph.ir import DTYPE_BYTES, Layer, numel
from edgekit.targets import Device, Link

# Bytes a request adds on the wire besides the tensor: MQTT fixed + variable header with topic and
# v5 properties, and edgekit's frame header. An estimate; the offload protocol will fix the figure.
PROTOCOL_OVERHEAD_BYTES = 128


@dataclass(frozen=True)
class Cost:
    """Seconds and device joules of one piece of work."""

    seconds: float
    joules: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.seconds + other.seconds, self.joules + other.joules)


def layer_cost(layer: Layer, device: Device, dtype: str = "int8") -> Cost:
    """Compute term + memory term for one layer on `device`, with activations and weights in `dtype`."""
    rate = device.throughput.get(dtype) or device.throughput["fp32"]
    seconds = layer.macs / rate.value
    if device.memory_bandwidth is not None:
        per_element = DTYPE_BYTES[dtype]
        moved = sum(numel(shape) for shape in layer.input_shapes) + layer.output_elements + layer.params
        seconds += moved * per_element / device.memory_bandwidth.value
    power = device.power_active.value if device.power_active else 0.0
    return Cost(seconds, seconds * power)


def transfer_cost(payload_bytes: int, link: Link, device: Device | None = None) -> Cost:
    """Uplink time of one message (payload + protocol overhead) and the device's radio energy for it."""
    total = payload_bytes + PROTOCOL_OVERHEAD_BYTES
    seconds = total * 8 / link.uplink.value + link.rtt.value
    joules = total * link.tx_energy.value if link.tx_energy else 0.0
    if device is not None and device.power_idle is not None:
        joules += device.power_idle.value * seconds  # the device waits for the answer
    return Cost(seconds, joules)

