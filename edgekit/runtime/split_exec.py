"""Split execution on the device: run the head here, send its output through a Transport, fall back to the tail here.

A split bundle's manifest says which stages run on the device and which on the server (its plan, an
`edgekit.formats.plans.SplitSchedule`). The head's raw output (int8 with its own scale and zero point) is what
goes on the wire, so the server sees the same numbers the local tail would; the local tail, when the bundle
carries it and the device loads it, is the fallback that answers a frame the server cannot answer before its
deadline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edgekit.errors import OffloadError
from edgekit.formats.frame import PROTOCOL_OVERHEAD_BYTES, Tensor
from edgekit.formats.plans import SplitFigures
from edgekit.formats.quant import dequantize
from edgekit.runtime.transport import Reply, Transport


class _Runner(Protocol):
    output: Any
    out: np.ndarray

    def run(self, x: np.ndarray, target: np.ndarray | None, check: bool) -> np.ndarray: ...

    def run_raw(self, x: np.ndarray, check: bool) -> np.ndarray: ...


@dataclass(frozen=True)
class Resplit:
    """Offload or run the tail here, by the plan's own cost figures at the link's measured bandwidth and RTT.

    The bundle holds one cut, so the choice is between that cut and everything on the device: offload when
    head + message + tail (from the plan, with the measured uplink and RTT) beats the plan's all-device time.
    `winner()` reads the decision map: the cut the planner would deploy at that bandwidth, for a re-compile.
    Every `probe_every`-th frame is offloaded anyway, so the estimate keeps up with a link that recovers.
    """

    device_s: float  # the head at the bundle's cut
    payload_bytes: int
    server_s: float
    all_device_s: float
    decision_map: tuple[tuple[float, float, int], ...]
    probe_every: int = 20

    @classmethod
    def of(cls, figures: SplitFigures | None) -> Resplit | None:
        """From a split schedule's planner figures; None when it has none (a hand-made bundle)."""
        if figures is None:
            return None
        return cls(figures.chosen.device_seconds, figures.chosen.payload_bytes, figures.chosen.server_seconds,
                   figures.all_device.device_seconds, figures.decision_map)

    def offload(self, uplink_bps: float | None, rtt_s: float | None, frame: int) -> bool:
        """Whether frame number `frame` should go to the server at this link estimate (unknown: yes)."""
        if uplink_bps is None or frame % self.probe_every == 0:
            return True
        remote = self.device_s + (self.payload_bytes + PROTOCOL_OVERHEAD_BYTES) * 8 / uplink_bps + \
            (rtt_s or 0.0) + self.server_s
        return remote < self.all_device_s

    def winner(self, uplink_bps: float) -> int | None:
        """Layers on the device of the cut the decision map picks at `uplink_bps` (None outside the map)."""
        return next((k for lo, hi, k in self.decision_map if lo <= uplink_bps <= hi), None)


class SplitRunner:
    """Head here, tail over `transport` (or here, as the fallback); every frame gets one Reply."""

    def __init__(self, head: Sequence[_Runner], tail: Sequence[_Runner], transport: Transport, deadline_s: float,
                 resplit: Resplit | None = None) -> None:
        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be positive, got {deadline_s}")
        self.head, self.tail, self.transport, self.deadline_s = head, tail, transport, deadline_s
        self.resplit = resplit if tail else None  # running here needs the tail here
        self._frames = 0
        boundary = head[-1].output
        self._scale, self._zero_point = boundary.scale or 0.0, boundary.zero_point or 0
        self._name = boundary.name
        self._boundary = np.zeros(boundary.shape, np.float32)  # the dequantized boundary, for the local tail

    def run(self, x: np.ndarray, out: np.ndarray) -> Reply:
        """One frame: the head, then the transport's answer written into `out`; OffloadError when there is none."""
        value = x
        for runner in self.head[:-1]:
            value = runner.run(value, None, value is x)
        raw = self.head[-1].run_raw(value, value is x)
        tensor = Tensor(self._name, raw, self._scale, self._zero_point)
        self._frames += 1
        estimate = getattr(self.transport, "link_estimate", lambda: None)()
        uplink = getattr(estimate, "uplink_bps", None)
        if self.resplit and uplink is not None and \
                not self.resplit.offload(uplink, getattr(estimate, "rtt_s", None), self._frames):
            start = time.monotonic()
            local = self._local_tail(tensor)
            np.copyto(out, local)
            best = self.resplit.winner(uplink)
            return Reply(local, "local", time.monotonic() - start,
                         f"all-device is faster at the measured {uplink / 1e6:.3g} Mbit/s uplink" +
                         ("" if best is None else f" (the plan's decision map would deploy {best} device layers)"))
        reply = self.transport.request(tensor, self.deadline_s, self._local_tail if self.tail else None)
        output = reply.output
        if output is not None and (output.shape != out.shape or output.dtype != out.dtype):
            problem = f"server answered {output.dtype} {output.shape}, expected {out.dtype} {out.shape}"
            if not self.tail:
                raise OffloadError(problem)
            reply = Reply(self._local_tail(tensor), "fallback", reply.latency_s, problem)
            output = reply.output
        if output is None:
            raise OffloadError(f"no answer for the frame ({reply.source}: {reply.detail or 'no detail'}) and the "
                               "session has no local tail to fall back on")
        np.copyto(out, output)
        return reply

    def _local_tail(self, tensor: Tensor) -> np.ndarray:
        """The tail run here on the boundary tensor, dequantized exactly as the server does."""
        if tensor.scale:
            dequantize(tensor.array, tensor.scale, tensor.zero_point, out=self._boundary)
        else:
            np.copyto(self._boundary, tensor.array)
        value = self._boundary
        for runner in self.tail:
            value = runner.run(value, None, False)
        return value
