"""Split execution on the device: run the head here, send its output through a Transport, fall back to the tail here.

A split bundle's manifest says which stages run on the device and which on the server (its plan, an
`edgekit.formats.plans.SplitSchedule`). The head's raw output (int8 with its own scale and zero point) is what
goes on the wire, so the server sees the same numbers the local tail would; the local tail, when the bundle
carries it and the device loads it, is the fallback that answers a frame the server cannot answer before its
deadline. Every output of the tail comes back, by name when there are several; an answer that lacks one, or
has one of the wrong shape or dtype, is the local tail's to answer. A transport with a `calibrate(fallback,
tensor)` method (the MQTT client) is given a few timed runs of the local tail at start, so the time it keeps
for the fallback is measured, not guessed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edgekit.errors import OffloadError
from edgekit.formats.bundle import TensorInfo
from edgekit.formats.frame import PROTOCOL_OVERHEAD_BYTES, Tensor
from edgekit.formats.plans import SplitFigures
from edgekit.formats.quant import dequantize
from edgekit.runtime.transport import Outputs, Reply, Transport, as_outputs


class _Runner(Protocol):
    outputs: tuple[TensorInfo, ...]

    def run(self, x: np.ndarray, targets: tuple[np.ndarray, ...] | None,
            check: bool) -> tuple[np.ndarray, ...]: ...

    def run_raw(self, x: np.ndarray, check: bool) -> tuple[np.ndarray, ...]: ...


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
    """Head here, tail over `transport` (or here, as the fallback); every frame gets one Reply.

    `outputs` are the tail's (the bundle's last stage), which every answer must give, each in its shape and dtype.
    """

    def __init__(self, head: Sequence[_Runner], tail: Sequence[_Runner], transport: Transport, deadline_s: float,
                 outputs: tuple[TensorInfo, ...], resplit: Resplit | None = None) -> None:
        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be positive, got {deadline_s}")
        self.head, self.tail, self.transport, self.deadline_s = head, tail, transport, deadline_s
        self.resplit = resplit if tail else None  # running here needs the tail here
        self._frames = 0
        (boundary,) = head[-1].outputs  # a split bundle's head has the one boundary output (checked at load)
        self._scale, self._zero_point = boundary.scale or 0.0, boundary.zero_point or 0
        self._name = boundary.name
        self._boundary = np.zeros(boundary.shape, np.float32)  # the dequantized boundary, for the local tail
        self._names = tuple(o.name for o in outputs)
        self._name_set = frozenset(self._names)
        calibrate = getattr(transport, "calibrate", None)  # a transport that times the fallback for its reserve
        if self.tail and calibrate is not None:
            calibrate(self._local_tail, Tensor(self._name, np.zeros(boundary.shape, boundary.dtype), self._scale,
                                               self._zero_point))

    def run(self, x: np.ndarray, targets: tuple[np.ndarray, ...]) -> Reply:
        """One frame: the head, then the transport's answer written into `targets` (one array per tail output,
        in order); OffloadError when there is none."""
        value = x
        for runner in self.head[:-1]:
            value = runner.run(value, None, value is x)[0]
        (raw,) = self.head[-1].run_raw(value, value is x)
        tensor = Tensor(self._name, raw, self._scale, self._zero_point)
        self._frames += 1
        estimate = getattr(self.transport, "link_estimate", lambda: None)()
        uplink = getattr(estimate, "uplink_bps", None)
        if self.resplit and uplink is not None and \
                not self.resplit.offload(uplink, getattr(estimate, "rtt_s", None), self._frames):
            start = time.monotonic()
            local = self._local_tail(tensor)
            self._copy(local, targets)
            best = self.resplit.winner(uplink)
            return Reply(local, "local", time.monotonic() - start,
                         f"all-device is faster at the measured {uplink / 1e6:.3g} Mbit/s uplink" +
                         ("" if best is None else f" (the plan's decision map would deploy {best} device layers)"))
        reply = self.transport.request(tensor, self.deadline_s, self._local_tail if self.tail else None)
        problem = None if reply.output is None else self._mismatch(reply.output, targets)
        if problem is not None:
            if not self.tail:
                raise OffloadError(problem)
            reply = Reply(self._local_tail(tensor), "fallback", reply.latency_s, problem)
        if reply.output is None:
            raise OffloadError(f"no answer for the frame ({reply.source}: {reply.detail or 'no detail'}) and the "
                               "session has no local tail to fall back on")
        self._copy(reply.output, targets)
        return reply

    def _arrays(self, output: Outputs) -> tuple[np.ndarray, ...] | None:
        """An answer's arrays in the tail's output order, or None when it does not name exactly those outputs."""
        if len(self._names) == 1:
            return (output,) if isinstance(output, np.ndarray) else None
        if not isinstance(output, dict) or output.keys() != self._name_set:
            return None
        return tuple([output[name] for name in self._names])

    def _mismatch(self, output: Outputs, targets: tuple[np.ndarray, ...]) -> str | None:
        """What is wrong with an answer for these targets, in words, or None when it fits them."""
        def text(a: Any) -> str:
            return f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__

        expected = ", ".join(f"{t.dtype} {t.shape}" for t in targets)
        arrays = self._arrays(output)
        if arrays is None:
            found = ", ".join(f"'{k}' {text(v)}" for k, v in output.items()) if isinstance(output, dict) \
                else text(output)
            return f"server answered {found}; expected {len(targets)} outputs ({', '.join(self._names)}): {expected}"
        if any(not isinstance(a, np.ndarray) or (a.shape, a.dtype) != (t.shape, t.dtype)
               for a, t in zip(arrays, targets)):
            return f"server answered {', '.join(text(a) for a in arrays)}, expected {expected}"
        return None

    def _copy(self, output: Outputs, targets: tuple[np.ndarray, ...]) -> None:
        arrays = self._arrays(output)
        assert arrays is not None  # checked by _mismatch, or made by the local tail
        for array, target in zip(arrays, targets):
            np.copyto(target, array)

    def _local_tail(self, tensor: Tensor) -> Outputs:
        """The tail run here on the boundary tensor, dequantized exactly as the server does."""
        if tensor.scale:
            dequantize(tensor.array, tensor.scale, tensor.zero_point, out=self._boundary)
        else:
            np.copyto(self._boundary, tensor.array)
        values: tuple[np.ndarray, ...] = (self._boundary,)
        for runner in self.tail:
            values = runner.run(values[0], None, False)
        return as_outputs(values, self._names)
