"""Detections over MQTT for fleets without MAVLink or ROS: one JSON message per frame on `{prefix}/det/{device_id}`.

The message is `{"device_id", "frame", "time_s", "detections": Detections.to_list()}` (UTF-8 JSON, boxes
normalised x_min, y_min, x_max, y_max). It goes through the offload side's BrokerConfig, so TLS (mqtts://) and
logins work as they do there; QoS 0 by default (a late detection is worth less than the next frame's).

`report()` never waits on the network: it puts the message in a bounded queue, dropping the oldest when full
(counted in `health()`), and a sender thread, polling the queue every few milliseconds as the other reporters'
does (`sender.DRAIN_INTERVAL_S`; no wake-up per frame), encodes the JSON and hands messages to paho while
connected, with at most `window` of them not yet written to the socket, so a dead or stalled broker holds at most
`queue_size + window` messages.
"""

from __future__ import annotations

import collections
import json
import socket
import threading
import time
import uuid
from typing import Any

from edgekit.errors import IntegrationError
from edgekit.integrations.sender import DRAIN_INTERVAL_S
from edgekit.offload.connection import BrokerConfig
from edgekit.offload.protocol import Topics
from edgekit.runtime.detections import Detections


def detections_topic(prefix: str, device_id: str) -> str:
    """`{prefix}/det/{device_id}`, each level checked as the offload topics are (no wildcards, no '/' in the id)."""
    topics = Topics(prefix)  # checks each level of the prefix
    topics.response(device_id)  # checks the device id as the offload topics do
    return f"{topics.prefix}/det/{device_id}"


class MqttDetections:
    """Publish each frame's detections for one device; `report(detections)` per frame, `close()` at the end."""

    def __init__(self, broker: str | BrokerConfig, device_id: str | None = None, *, prefix: str = "edgekit",
                 qos: int = 0, queue_size: int = 32, window: int = 8) -> None:
        if qos not in (0, 1) or queue_size < 1 or window < 1:
            raise IntegrationError(f"MQTT detections need qos 0 or 1 and queue_size, window >= 1; found qos {qos}, "
                                   f"queue_size {queue_size}, window {window}")
        self.config = broker if isinstance(broker, BrokerConfig) else BrokerConfig.parse(broker)
        self.device_id = device_id or self.config.username or socket.gethostname()
        self.topic = detections_topic(prefix, self.device_id)
        self.qos, self.window = qos, window
        self.counts = {"queued": 0, "published": 0, "dropped": 0}
        self.last_error: str | None = None
        self._frame = 0
        self._queue: collections.deque[dict[str, Any]] = collections.deque(maxlen=queue_size)
        self._wake = threading.Condition()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._mqtt = self.config.client(f"det-{self.device_id}-{uuid.uuid4().hex[:6]}")
        self._mqtt.on_connect, self._mqtt.on_disconnect = self._on_connect, self._on_disconnect
        self._mqtt.on_connect_fail = self._on_connect_fail
        self.config.connect_async(self._mqtt)
        self._thread = threading.Thread(target=self._send, name="mqtt-detections", daemon=True)
        self._thread.start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.last_error = f"{self.config.url} refused the connection: {reason}"
            return
        self._connected.set()
        with self._wake:
            self._wake.notify_all()

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self.last_error = f"cannot reach {self.config.url} (retrying)"

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was_connected = self._connected.is_set()  # paho also calls this after a refused connect: keep its reason
        self._connected.clear()
        if was_connected and not self._stop.is_set():
            self.last_error = f"disconnected from {self.config.url}: {reason}"

    def report(self, detections: Detections) -> dict[str, Any]:
        """Queue one frame's message (never blocks; the oldest queued one goes when the queue is full)."""
        message = {"device_id": self.device_id, "frame": self._frame, "time_s": time.time(),
                   "detections": detections.to_list()}
        self._frame += 1
        with self._wake:
            if len(self._queue) == self._queue.maxlen:
                self.counts["dropped"] += 1
            self._queue.append(message)
            self.counts["queued"] += 1
        return message

    def _send(self) -> None:
        """Hand queued messages to paho while connected, keeping at most `window` unwritten ones there."""
        unwritten: collections.deque[Any] = collections.deque()
        while not self._stop.is_set():
            if unwritten and self.qos == 0 and not self._connected.is_set():  # paho drops unwritten QoS 0 ones
                self.counts["dropped"] += len(unwritten)
                unwritten.clear()
            while unwritten and unwritten[0].is_published():
                unwritten.popleft()
                self.counts["published"] += 1
            with self._wake:
                ready = self._connected.is_set() and len(unwritten) < self.window and self._queue
                if not ready:
                    self._wake.wait(DRAIN_INTERVAL_S)
                    continue
                message = self._queue.popleft()
            payload = json.dumps(message, separators=(",", ":")).encode()
            info = self._mqtt.publish(self.topic, payload, qos=self.qos)
            if info.rc:  # not connected after all, or paho's own queue full: the message is lost
                self.counts["dropped"] += 1
                self.last_error = f"publish to {self.topic}: paho error {info.rc}"
            else:
                unwritten.append(info)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued message is written (True), or `timeout_s` passes or the broker is not connected
        (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._connected.is_set():
            with self._wake:
                if not self._queue and self.counts["published"] + self.counts["dropped"] >= self.counts["queued"]:
                    return True
            time.sleep(0.005)
        return False

    def health(self) -> dict[str, Any]:
        """The topic, whether the broker is connected, message counts and the last error."""
        return {"broker": self.config.url, "topic": self.topic, "connected": self._connected.is_set(),
                "sent": dict(self.counts), "last_error": self.last_error}

    def close(self, flush_s: float = 2.0) -> None:
        """Send what is queued (for up to `flush_s` while connected), then disconnect."""
        self.flush(flush_s)
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        self._thread.join(timeout=2.0)
        self._mqtt.disconnect()
        self._mqtt.loop_stop()

    def __enter__(self) -> MqttDetections:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
