"""Split execution on the device: run the head here, send its output through a Transport, fall back to the tail here.

A split bundle's manifest says which stages run on the device and which on the server (`plan.kind == "split"`).
The head's raw output (int8 with its own scale and zero point) is what goes on the wire, so the server sees the
same numbers the local tail would; the local tail, when the bundle carries it and the device loads it, is the
fallback that answers a frame the server cannot answer before its deadline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edgekit.errors import BundleError, OffloadError
from edgekit.formats.bundle import Bundle
from edgekit.formats.frame import PROTOCOL_OVERHEAD_BYTES, Tensor
from edgekit.runtime.transport import Reply, Transport


class _Runner(Protocol):
    output: Any
    out: np.ndarray

    def run(self, x: np.ndarray, target: np.ndarray | None, check: bool) -> np.ndarray: ...

    def run_raw(self, x: np.ndarray, check: bool) -> np.ndarray: ...


@dataclass(frozen=True)
class SplitLayout:
    """Which stages run where, and the model id and version the server checks requests against."""

    device_stages: tuple[str, ...]
    server_stages: tuple[str, ...]
    model_id: str
    model_version: str

    @classmethod
    def from_plan(cls, plan: dict | None, stages: tuple[str, ...], where: str) -> SplitLayout | None:
        """The layout of a `{"kind": "split", ...}` plan (None for any other plan); a BundleError if malformed."""
        if not plan or plan.get("kind") != "split":
            return None
        fields = {}
        for key in ("device_stages", "server_stages"):
            names = plan.get(key)
            if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
                raise BundleError(f"{where}: split plan '{key}' must be a non-empty list of stage names")
            fields[key] = tuple(names)
        if fields["device_stages"] + fields["server_stages"] != stages:
            raise BundleError(f"{where}: split plan runs {list(fields['device_stages'])} on the device and "
                              f"{list(fields['server_stages'])} on the server, but the stages are {list(stages)}")
        for key in ("model_id", "model_version"):
            if not isinstance(plan.get(key), str) or not plan[key]:
                raise BundleError(f"{where}: split plan '{key}' must be a non-empty string")
        return cls(fields["device_stages"], fields["server_stages"], plan["model_id"], plan["model_version"])

    @classmethod
    def of_bundle(cls, bundle: Bundle) -> SplitLayout | None:
        """The layout of a verified bundle's plan (None when it is not split)."""
        manifest = bundle.manifest
        return cls.from_plan(manifest.plan, tuple(s.name for s in manifest.stages), str(bundle.path))


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
    def from_plan(cls, plan: dict | None) -> Resplit | None:
        """From a split manifest plan's `split` object; None when it lacks the figures (a hand-made bundle)."""
        split = (plan or {}).get("split")
        try:
            chosen, all_device = split["chosen"], split["all_device"]
            ranges = tuple((float(lo), float(hi), int(k)) for lo, hi, k in split["decision_map"])
            return cls(float(chosen["device_seconds"]), int(chosen["payload_bytes"]),
                       float(chosen["server_seconds"]), float(all_device["device_seconds"]), ranges)
        except (KeyError, TypeError, ValueError):
            return None

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

    def __init__(self, head: list[_Runner], tail: list[_Runner], transport: Transport, deadline_s: float,
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
        if self.resplit and not self.resplit.offload(uplink, getattr(estimate, "rtt_s", None), self._frames):
            start = time.monotonic()
            output = self._local_tail(tensor)
            np.copyto(out, output)
            best = self.resplit.winner(uplink)
            return Reply(output, "local", time.monotonic() - start,
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
            np.subtract(tensor.array, tensor.zero_point, out=self._boundary, dtype=np.float32)
            np.multiply(self._boundary, np.float32(tensor.scale), out=self._boundary)
        else:
            np.copyto(self._boundary, tensor.array)
        value = self._boundary
        for runner in self.tail:
            value = runner.run(value, None, False)
        return value
