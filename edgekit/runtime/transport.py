"""How a split session reaches the tail: the Transport protocol and the answer it gives for every frame.

A transport takes the head's boundary tensor and a deadline and must answer by the deadline: the tail's
output from the server ("remote"), the local fallback's output when the server cannot answer in time
("fallback"), or no output with the reason ("timeout"/"error") when there is no fallback. It never raises
for a network problem and never hangs; only bad arguments raise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from edgekit.offload.frame import Tensor

SOURCES = ("remote", "fallback", "timeout", "error")

Fallback = Callable[[Tensor], np.ndarray]  # runs the tail locally on the boundary tensor


@dataclass(frozen=True)
class Reply:
    """One frame's answer: the tail output (float32, or None), where it came from, and how long it took."""

    output: np.ndarray | None
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
