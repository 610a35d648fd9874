"""A MAVLink companion component (pymavlink, MAVLink 2) that tells a drone's autopilot and ground station what
the detector sees.

Sent: HEARTBEAT at `heartbeat_hz` (MAV_TYPE_ONBOARD_CONTROLLER, from a background thread, frames or not); per
frame one CAMERA_TRACKING_IMAGE_STATUS for the best detection (rectangle mode, the normalised box; IDLE with
NaN fields when there is none); LANDING_TARGET (MAV_FRAME_BODY_FRD) when the best detection of a class named in
`landing_labels` is present, its angles from the image centre by a pinhole camera of the given field of view;
STATUSTEXT when a target is acquired or lost, at most one per `statustext_interval_s`. Received: the vehicle's
HEARTBEAT and GLOBAL_POSITION_INT, which stamp each reported frame (`Stamped`).

`report()` stamps the frame and queues it (`sender.SendQueue`, drop-oldest when `queue_size` frames wait): a sender
thread packs and sends its messages in order, so the frame loop pays microseconds, not pymavlink's packing.
`flush()` waits until every queued frame is sent.

An endpoint that cannot be reached never stops the caller: UDP sends to nowhere are dropped, a connection that
cannot be opened is retried every `reconnect_s`, and `health()` says what is wrong (no vehicle heartbeat, the
last connection error). Only a malformed endpoint or a missing pymavlink is an IntegrationError.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from edgekit.errors import IntegrationError
from edgekit.integrations.sender import DEFAULT_QUEUE, SendQueue
from edgekit.runtime.detections import Detections

SCHEMES = ("udpout:", "udpin:", "udp:", "tcp:", "tcpin:")  # or a serial device: /dev/ttyX[,baud]
COMPANION_COMPONENT = 191  # MAV_COMP_ID_ONBOARD_COMPUTER
STATUSTEXT_CHARS = 50
VEHICLE_TIMEOUT_S = 3.0  # no vehicle heartbeat for this long: health() reports the vehicle lost
NAN = math.nan  # a CAMERA_TRACKING_IMAGE_STATUS field with no value


def _mavutil() -> Any:
    """pymavlink's mavutil with the MAVLink 2 common dialect (CAMERA_TRACKING_IMAGE_STATUS is id 275)."""
    os.environ["MAVLINK20"] = "1"
    try:
        from pymavlink import mavutil
    except ImportError:
        raise IntegrationError("MAVLink needs pymavlink, which the device install leaves out: "
                               "pip install 'edgekit[mavlink]'") from None
    if mavutil.mavlink.WIRE_PROTOCOL_VERSION != "2.0":
        mavutil.set_dialect("common")
    return mavutil


def check_endpoint(endpoint: str) -> str:
    """`endpoint` when pymavlink can open it (udpout:HOST:PORT, udpin:, tcp:, tcpin:, /dev/ttyX[,BAUD])."""
    if endpoint.startswith("/dev/"):
        return endpoint
    scheme = next((s for s in SCHEMES if endpoint.startswith(s)), None)
    host, _, port = endpoint[len(scheme or ""):].rpartition(":")
    if scheme is None or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise IntegrationError(f"MAVLink endpoint {endpoint!r}: expected udpout:HOST:PORT, udpin:HOST:PORT, "
                               "tcp:HOST:PORT, tcpin:HOST:PORT or a serial device /dev/ttyX[,BAUD]")
    return endpoint


@dataclass(frozen=True)
class Camera:
    """A pinhole camera by its field of view (degrees); image x to the right, y down, centre 0.5, 0.5."""

    hfov_deg: float
    vfov_deg: float

    def __post_init__(self) -> None:
        for name, value in (("horizontal", self.hfov_deg), ("vertical", self.vfov_deg)):
            if not 0 < value < 180:
                raise IntegrationError(f"camera {name} field of view must be in (0, 180) degrees, found {value}")

    def angles(self, x: float, y: float) -> tuple[float, float]:
        """Radians from the optical axis to the normalised image point (x, y): atan((2x - 1) tan(hfov / 2)),
        and the same in y with the vertical field of view."""
        return (math.atan((2 * x - 1) * math.tan(math.radians(self.hfov_deg) / 2)),
                math.atan((2 * y - 1) * math.tan(math.radians(self.vfov_deg) / 2)))


@dataclass(frozen=True)
class Vehicle:
    """What the vehicle last said: its ids and state from HEARTBEAT, position from GLOBAL_POSITION_INT."""

    system_id: int
    component_id: int
    vehicle_type: int
    autopilot: int
    system_status: int
    heartbeat_time_s: float  # time.monotonic() of the last heartbeat
    lat_deg: float | None = None
    lon_deg: float | None = None
    alt_m: float | None = None  # above mean sea level
    relative_alt_m: float | None = None  # above home
    heading_deg: float | None = None
    time_boot_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


@dataclass(frozen=True)
class Stamped:
    """One reported frame: its detections, when, and the vehicle's last state (None before it is heard)."""

    detections: Detections
    time_s: float  # time.time()
    vehicle: Vehicle | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: detections as lists, the vehicle's fields."""
        return {"time_s": self.time_s, "detections": self.detections.to_list(),
                "vehicle": None if self.vehicle is None else self.vehicle.to_dict()}


class MavlinkReporter:
    """The companion component on one endpoint; `report(detections)` per frame, `close()` at the end."""

    def __init__(self, endpoint: str, camera: Camera, landing_labels: tuple[str, ...] = (), *,
                 system_id: int = 1, component_id: int = COMPANION_COMPONENT, heartbeat_hz: float = 1.0,
                 statustext_interval_s: float = 5.0, reconnect_s: float = 2.0, queue_size: int = DEFAULT_QUEUE) -> None:
        self.endpoint, self.camera, self.landing_labels = check_endpoint(endpoint), camera, landing_labels
        self._mavutil = _mavutil()
        self._ids = (system_id, component_id)
        self._heartbeat_s, self._statustext_s, self._reconnect_s = 1.0 / heartbeat_hz, statustext_interval_s, \
            reconnect_s
        self._lock = threading.Lock()
        self._conn: Any = None
        self._vehicle: Vehicle | None = None
        self._tracking = False
        self._last_text = -math.inf
        self.counts = {"heartbeat": 0, "camera_tracking_image_status": 0, "landing_target": 0, "statustext": 0,
                       "connect_errors": 0}
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._connect()
        self._thread = threading.Thread(target=self._service, name="mavlink-companion", daemon=True)
        self._thread.start()
        self._frames: SendQueue[Stamped] = SendQueue(self._send_frame, "mavlink-frames", queue_size)

    def _connect(self) -> None:
        """Open the endpoint; a failure is counted and kept for health(), and retried by the service thread."""
        try:
            extra = {"retries": 0} if self.endpoint.startswith("tcp:") else {}
            self._conn = self._mavutil.mavlink_connection(self.endpoint, source_system=self._ids[0],
                                                          source_component=self._ids[1], **extra)
        except (OSError, ValueError, ImportError) as exc:  # ImportError: pyserial, for a serial device
            self._conn = None
            self.counts["connect_errors"] += 1
            self.last_error = f"cannot open {self.endpoint}: {exc}"

    def _send(self, kind: str, *args: Any) -> None:
        """Send one message by its pymavlink name, if connected; socket errors are kept, never raised."""
        with self._lock:
            if self._conn is None:
                return
            try:
                getattr(self._conn.mav, f"{kind}_send")(*args)
                self.counts[kind] += 1
            except OSError as exc:
                self.last_error = f"send {kind} to {self.endpoint}: {exc}"

    def _service(self) -> None:
        """Heartbeats on time, the vehicle's messages read, the endpoint reopened when it failed."""
        m = self._mavutil.mavlink
        next_beat = next_connect = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if self._conn is None and now >= next_connect:
                self._connect()
                next_connect = now + self._reconnect_s
            if now >= next_beat:
                self._send("heartbeat", m.MAV_TYPE_ONBOARD_CONTROLLER, m.MAV_AUTOPILOT_INVALID, 0, 0,
                           m.MAV_STATE_ACTIVE)
                next_beat += self._heartbeat_s
            self._receive(timeout=min(0.05, max(0.0, next_beat - time.monotonic())))

    def _receive(self, timeout: float) -> None:
        conn = self._conn
        if conn is None:
            self._stop.wait(timeout)
            return
        try:
            msg = conn.recv_match(type=["HEARTBEAT", "GLOBAL_POSITION_INT"], blocking=True, timeout=timeout)
        except OSError as exc:
            self.last_error = f"receive from {self.endpoint}: {exc}"
            self._stop.wait(timeout)
            return
        if msg is None or (msg.get_srcSystem(), msg.get_srcComponent()) == self._ids:
            return
        m = self._mavutil.mavlink
        if msg.get_type() == "HEARTBEAT" and msg.type not in (m.MAV_TYPE_GCS, m.MAV_TYPE_ONBOARD_CONTROLLER):
            old = self._vehicle
            beat = Vehicle(msg.get_srcSystem(), msg.get_srcComponent(), msg.type, msg.autopilot, msg.system_status,
                           time.monotonic())
            self._vehicle = beat if old is None or old.system_id != beat.system_id else replace(
                old, vehicle_type=beat.vehicle_type, autopilot=beat.autopilot, system_status=beat.system_status,
                heartbeat_time_s=beat.heartbeat_time_s)
        elif msg.get_type() == "GLOBAL_POSITION_INT" and self._vehicle is not None \
                and msg.get_srcSystem() == self._vehicle.system_id:
            self._vehicle = replace(self._vehicle, lat_deg=msg.lat / 1e7, lon_deg=msg.lon / 1e7, alt_m=msg.alt / 1e3,
                                    relative_alt_m=msg.relative_alt / 1e3, time_boot_ms=msg.time_boot_ms,
                                    heading_deg=None if msg.hdg == 65535 else msg.hdg / 100)

    @property
    def vehicle(self) -> Vehicle | None:
        """The vehicle's last state, None before its first heartbeat."""
        return self._vehicle

    def report(self, detections: Detections) -> Stamped:
        """Stamp one frame and queue its messages for the vehicle (see the module docstring); never blocks."""
        stamped = Stamped(detections, time.time(), self._vehicle)
        self._frames.put(stamped)
        return stamped

    def _send_frame(self, stamped: Stamped) -> None:
        """One frame's messages, on the sender thread: the tracking status, the landing target, events."""
        m = self._mavutil.mavlink
        detections = stamped.detections
        if len(detections):
            x0, y0, x1, y1 = detections.boxes[0].tolist()
            self._send("camera_tracking_image_status", m.CAMERA_TRACKING_STATUS_FLAGS_ACTIVE,
                       m.CAMERA_TRACKING_MODE_RECTANGLE, m.CAMERA_TRACKING_TARGET_DATA_IN_STATUS, NAN, NAN, NAN,
                       x0, y0, x1, y1, 0)
        else:
            self._send("camera_tracking_image_status", m.CAMERA_TRACKING_STATUS_FLAGS_IDLE,
                       m.CAMERA_TRACKING_MODE_NONE, 0, NAN, NAN, NAN, NAN, NAN, NAN, NAN, 0)
        landing = [i for i, label in enumerate(detections.labels) if label in self.landing_labels]
        if landing:
            self._landing_target(detections.boxes[landing[0]], stamped.time_s)
        self._events(detections)

    def _landing_target(self, box: Any, time_s: float) -> None:
        m = self._mavutil.mavlink
        x0, y0, x1, y1 = box.tolist()
        angle_x, angle_y = self.camera.angles((x0 + x1) / 2, (y0 + y1) / 2)
        (left, top), (right, bottom) = self.camera.angles(x0, y0), self.camera.angles(x1, y1)
        self._send("landing_target", int(time_s * 1e6), 0, m.MAV_FRAME_BODY_FRD, angle_x, angle_y, 0.0,
                   right - left, bottom - top, 0.0, 0.0, 0.0, [1.0, 0.0, 0.0, 0.0], m.LANDING_TARGET_TYPE_VISION_OTHER,
                   0)

    def _events(self, detections: Detections) -> None:
        """STATUSTEXT when the best target appears or goes, rate-limited (events in between are dropped)."""
        tracking = len(detections) > 0
        if tracking == self._tracking:
            return
        self._tracking = tracking
        now = time.monotonic()
        if now - self._last_text < self._statustext_s:
            return
        self._last_text = now
        text = (f"edgekit: {detections.labels[0]} {float(detections.scores[0]):.2f}" if tracking
                else "edgekit: target lost")
        self._send("statustext", self._mavutil.mavlink.MAV_SEVERITY_INFO, text[:STATUSTEXT_CHARS].encode())

    def health(self) -> dict[str, Any]:
        """Whether the endpoint is open and the vehicle heard from, what was sent, the last error."""
        vehicle = self._vehicle
        age = None if vehicle is None else time.monotonic() - vehicle.heartbeat_time_s
        return {"endpoint": self.endpoint, "open": self._conn is not None, "vehicle_heartbeat_age_s": age,
                "vehicle_seen": age is not None and age < VEHICLE_TIMEOUT_S, "sent": dict(self.counts),
                "frames": self._frames.counts(), "last_error": self.last_error or self._frames.last_error}

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued frame's messages are sent (True) or `timeout_s` passes (False)."""
        return self._frames.flush(timeout_s)

    def close(self) -> None:
        """Send the queued frames (for up to 2 s), stop the threads and close the endpoint."""
        self._frames.close()
        self._stop.set()
        self._thread.join(timeout=2.0)
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> MavlinkReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
