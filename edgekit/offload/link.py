"""What the link to the broker looks like right now, measured from the device's own publishes.

Each request is a QoS 1 publish; the broker's PUBACK comes back after base RTT + transfer time. The base
RTT is the smallest recent acknowledgement delay. A frame of at least `min_bytes` gives a delivery-rate
sample: the bytes acknowledged between its send and its PUBACK (its own and those queued ahead of it, so
a backlog does not hide the rate) over that time less the base RTT. The runtime compares `uplink_bps` with
the split plan's decision map to re-split.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class LinkEstimate:
    """The device's view of its uplink: connected or not, base RTT, uplink bandwidth, answer round trip."""

    connected: bool
    rtt_s: float | None  # smallest recent publish-to-PUBACK delay
    uplink_bps: float | None  # EWMA of bandwidth samples from frames of at least `min_bytes`
    round_trip_s: float | None  # EWMA of request-to-answer time of remote answers
    samples: int  # acknowledgements measured so far


class LinkMeter:
    """Thread-safe running estimates; `acked` and `answered` feed it, `estimate` reads it."""

    def __init__(self, min_bytes: int = 4096, alpha: float = 0.5, window: int = 32) -> None:
        self.min_bytes, self.alpha = min_bytes, alpha
        self._delays: deque[float] = deque(maxlen=window)
        self._bps: float | None = None
        self._round_trip: float | None = None
        self._samples = 0
        self._delivered = 0  # payload bytes acknowledged so far
        self._lock = threading.Lock()

    def _ewma(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.alpha * (new - old)

    @property
    def delivered(self) -> int:
        """Payload bytes acknowledged so far: note it when sending, pass it back to `acked`."""
        return self._delivered

    def acked(self, payload_bytes: int, delay_s: float, delivered_at_send: int) -> None:
        """A publish of `payload_bytes` was acknowledged `delay_s` after it was handed to the socket."""
        with self._lock:
            self._delivered += payload_bytes
            self._delays.append(delay_s)
            self._samples += 1
            base = min(self._delays)
            if payload_bytes >= self.min_bytes and len(self._delays) > 1:
                bits = (self._delivered - delivered_at_send) * 8
                self._bps = self._ewma(self._bps, bits / max(delay_s - base, 1e-4))

    def answered(self, round_trip_s: float) -> None:
        """A remote answer came back `round_trip_s` after its request was sent."""
        with self._lock:
            self._round_trip = self._ewma(self._round_trip, round_trip_s)

    def estimate(self, connected: bool) -> LinkEstimate:
        """The current figures (None until measured)."""
        with self._lock:
            rtt = min(self._delays) if self._delays else None
            return LinkEstimate(connected, rtt, self._bps, self._round_trip, self._samples)
