"""How a split session reaches the tail: the Transport protocol and the answer it gives for every frame.

A transport takes the head's boundary tensor and a deadline and must answer by the deadline: the tail's
outputs from the server ("remote"; every output the tail has, one tensor each in the response frame), the
local fallback's when the server cannot answer in time ("fallback"), or none with the reason
("timeout"/"error") when there is no fallback. ("local" is the split executor's own answer when the plan says
the measured link is too slow to offload at all.) It never raises for a network problem and never hangs; only
bad arguments raise.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgekit.errors import EdgekitError, FrameError
from edgekit.formats import frame, quant
from edgekit.formats.frame import Tensor

SOURCES = ("remote", "fallback", "local", "timeout", "error")  # local: the link is too slow, by the plan

Outputs = np.ndarray | dict[str, np.ndarray]  # a model's output: one array, or name -> array in its order
Fallback = Callable[[Tensor], Outputs]  # runs the tail locally on the boundary tensor


def as_outputs(arrays: Sequence[np.ndarray], names: Sequence[str]) -> Outputs:
    """Arrays in output order as a session gives them: the array itself for one output, else name -> array."""
    return arrays[0] if len(arrays) == 1 else dict(zip(names, arrays))


@dataclass(frozen=True)
class Reply:
    """One frame's answer: the tail output (float32; an array, or name -> array for several; None when there is
    none), where it came from, and how long it took."""

    output: Outputs | None
    source: str  # one of SOURCES
    latency_s: float
    detail: str = ""  # why it is not "remote", in words


class Transport(Protocol):
    """Anything that carries a boundary tensor to a tail and brings the answer back before the deadline."""

    def request(self, tensor: Tensor, deadline_s: float, fallback: Fallback | None = None) -> Reply:
        """Send `tensor`; answer within `deadline_s` seconds from now, using `fallback` if the tail cannot."""
        ...

    def close(self) -> None:
        """Release the connection; requests after this are answered from the fallback."""
        ...


def dequantize(tensor: Tensor) -> np.ndarray:
    """A frame tensor as float32: dequantized when it carries a scale, else the values as float32."""
    if tensor.scale:
        return quant.dequantize(tensor.array, tensor.scale, tensor.zero_point)
    return tensor.array.astype(np.float32)


def response_outputs(answer: frame.Frame) -> Outputs:
    """The tail's outputs a response frame carries, dequantized (one tensor: the array; several: name -> array);
    FrameError for any other frame, an empty one, or tensors that share a name."""
    names = [t.name for t in answer.tensors]
    if answer.kind != "response" or not names or len(set(names)) != len(names):
        raise FrameError(f"expected a response with one tensor per tail output, distinctly named; found a "
                         f"{answer.kind} frame with {len(names)} ({', '.join(names) or 'none'})")
    return as_outputs([dequantize(t) for t in answer.tensors], names)


class InProcessTransport:
    """The whole wire path without a network: encode the request frame, hand the bytes to `handler` (the
    server's frame handler), decode its answer. For tests and for a tail that lives in the same process."""

    def __init__(self, handler: Callable[[bytes], bytes], model_id: str, model_version: str,
                 codec: str = "raw") -> None:
        self.handler, self.model_id, self.model_version, self.codec = handler, model_id, model_version, codec
        self.closed = False

    def request(self, tensor: Tensor, deadline_s: float, fallback: Fallback | None = None) -> Reply:
        start = time.monotonic()
        request_id = uuid.uuid4().bytes
        deadline_ms = int(time.time() * 1000 + deadline_s * 1000)
        detail = "transport closed"
        if not self.closed:
            try:
                raw = self.handler(frame.encode(frame.Frame(request_id, deadline_ms, self.model_id,
                                                            self.model_version, (tensor,)), self.codec))
                answer = frame.decode(raw)
                if answer.request_id != request_id:
                    raise frame.FrameError("the answer is for another request")
                if answer.kind == "error":
                    raise frame.FrameError(answer.error)
                return Reply(response_outputs(answer), "remote", time.monotonic() - start)
            except EdgekitError as exc:
                detail = f"server failed: {exc}"
        if fallback is None:
            return Reply(None, "error", time.monotonic() - start, detail)
        return Reply(fallback(tensor), "fallback", time.monotonic() - start, detail)

    def close(self) -> None:
        self.closed = True
