"""The MAVLink companion on UDP loopback with tools/fake_vehicle.py: BlazeFace's boxes arrive as one
CAMERA_TRACKING_IMAGE_STATUS per frame, HEARTBEAT as an onboard controller, LANDING_TARGET angles as a pinhole
camera gives them, STATUSTEXT rate-limited, frames stamped with the vehicle's position; an endpoint that is not
there never stops the caller."""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import blazeface  # tools/, on the path through conftest
import blazeface_bundle
import numpy as np
import pytest
from fake_vehicle import HOME, FakeVehicle  # tools/
from helpers import wait_for

from edgekit.errors import IntegrationError
from edgekit.integrations.mavlink import Camera, MavlinkReporter  # pymavlink: the dev extra has it
from edgekit.runtime import load
from edgekit.runtime.detections import Decoder, Detections

CAMERA = Camera(hfov_deg=62.2, vfov_deg=48.8)  # a Raspberry Pi camera module v2


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def vehicle(tmp_path: Path) -> Iterator[tuple[FakeVehicle, int]]:
    port = _udp_port()
    with FakeVehicle(f"udpin:127.0.0.1:{port}", tmp_path / "received.jsonl", period_s=0.05) as fake:
        yield fake, port


def _face(score: float = 0.9, box: tuple[float, ...] = (0.3, 0.2, 0.5, 0.45), label: str = "face") -> Detections:
    return Detections(np.array([box], np.float32), np.array([score], np.float32), np.array([0]), (label,))


def test_every_frame_reaches_the_vehicle_with_the_sessions_boxes(tmp_path: Path,
                                                                 vehicle: tuple[FakeVehicle, int]) -> None:
    fake, port = vehicle
    session = load(blazeface_bundle.bundle(tmp_path / "bf"))
    decode = Decoder(session.manifest.detection, session.labels)
    astronaut = blazeface.test_image("astronaut")
    clip = [astronaut, np.full_like(astronaut, 128), astronaut[:, ::-1], astronaut[64:448, 32:480], astronaut]
    with MavlinkReporter(f"udpout:127.0.0.1:{port}", CAMERA) as reporter:
        wait_for(lambda: reporter.vehicle is not None and reporter.vehicle.lat_deg is not None, 5.0,
                 "the fake vehicle's heartbeat and position")
        stamped = [reporter.report(decode(session.run(blazeface.frame(image)))) for image in clip]
        statuses = wait_for(lambda: (s := fake.messages("CAMERA_TRACKING_IMAGE_STATUS")) and len(s) >= len(clip)
                            and s, 5.0, "one tracking status per frame")
    assert len(statuses) == len(clip)
    for status, frame in zip(statuses, stamped):
        found = frame.detections
        if len(found):
            assert status["tracking_status"] == 1 and status["tracking_mode"] == 2  # ACTIVE, RECTANGLE
            box = [status[k] for k in ("rec_top_x", "rec_top_y", "rec_bottom_x", "rec_bottom_y")]
            np.testing.assert_array_equal(np.float32(box), found.boxes[0])
        else:
            assert status["tracking_status"] == 0 and status["rec_top_x"] is None  # IDLE, NaN
    assert [len(f.detections) for f in stamped] == [1, 0, 1, 1, 1]
    beats = fake.messages("HEARTBEAT")
    assert beats and beats[0]["type"] == 18 and beats[0]["src"] == [1, 191]  # MAV_TYPE_ONBOARD_CONTROLLER
    vehicle_state = stamped[-1].vehicle
    assert vehicle_state is not None and vehicle_state.vehicle_type == 2  # the fake quadrotor
    assert (vehicle_state.lat_deg, vehicle_state.lon_deg) == pytest.approx(HOME[:2], abs=1e-7)
    assert vehicle_state.relative_alt_m == 25.0 and vehicle_state.heading_deg == 90.0
    assert (tmp_path / "received.jsonl").read_text().count("CAMERA_TRACKING_IMAGE_STATUS") == len(clip)


def test_landing_target_angles_follow_the_pinhole_camera(vehicle: tuple[FakeVehicle, int]) -> None:
    fake, port = vehicle
    boxes = [(0.3, 0.2, 0.5, 0.45), (0.6, 0.55, 0.9, 0.95)]
    with MavlinkReporter(f"udpout:127.0.0.1:{port}", CAMERA, landing_labels=("pad",)) as reporter:
        reporter.report(_face())  # not a landing class: no LANDING_TARGET
        for box in boxes:
            reporter.report(_face(box=box, label="pad"))
        targets = wait_for(lambda: len(t := fake.messages("LANDING_TARGET")) >= 2 and t, 5.0, "two landing targets")
    assert len(targets) == 2
    for target, (x0, y0, x1, y1) in zip(targets, boxes):
        # focal length in image widths (heights) f = 0.5 / tan(fov / 2); the angle of a point d from the centre
        # is atan(d / f)
        fx, fy = 0.5 / math.tan(math.radians(62.2) / 2), 0.5 / math.tan(math.radians(48.8) / 2)
        assert target["frame"] == 12  # MAV_FRAME_BODY_FRD
        assert target["angle_x"] == pytest.approx(math.atan(((x0 + x1) / 2 - 0.5) / fx), abs=1e-6)
        assert target["angle_y"] == pytest.approx(math.atan(((y0 + y1) / 2 - 0.5) / fy), abs=1e-6)
        assert target["size_x"] == pytest.approx(math.atan((x1 - 0.5) / fx) - math.atan((x0 - 0.5) / fx), abs=1e-6)


def test_statustext_is_rate_limited_and_heartbeats_keep_time(vehicle: tuple[FakeVehicle, int]) -> None:
    fake, port = vehicle
    with MavlinkReporter(f"udpout:127.0.0.1:{port}", CAMERA, heartbeat_hz=10, statustext_interval_s=60) as reporter:
        start = time.monotonic()
        for _ in range(5):  # acquired, lost, acquired, ...: one text, the rest inside the interval
            reporter.report(_face())
            reporter.report(Detections.empty())
        wait_for(lambda: len(fake.messages("HEARTBEAT")) >= 10, 5.0, "ten heartbeats")
        elapsed = time.monotonic() - start
    texts = fake.messages("STATUSTEXT")
    assert [t["text"] for t in texts] == ["edgekit: face 0.90"]
    assert 0.8 < elapsed < 2.0  # ten heartbeats at 10 Hz, the first at once


def test_an_endpoint_that_is_not_there_keeps_running_and_says_so() -> None:
    closed = _udp_port()
    with MavlinkReporter(f"udpout:127.0.0.1:{closed}", CAMERA) as reporter:
        for _ in range(3):
            assert reporter.report(_face()).vehicle is None
        assert reporter.flush(5.0)
        health = reporter.health()
    assert health["open"] and not health["vehicle_seen"] and health["sent"]["camera_tracking_image_status"] == 3
    assert health["frames"] == {"queued": 3, "handled": 3, "dropped": 0, "failed": 0}
    with MavlinkReporter(f"tcp:127.0.0.1:{closed}", CAMERA, reconnect_s=0.1) as reporter:
        reporter.report(_face())
        wait_for(lambda: reporter.health()["sent"]["connect_errors"] >= 3, 5.0, "reconnect attempts")
        health = reporter.health()
    assert not health["open"] and "Connection refused" in health["last_error"]
    assert health["sent"]["camera_tracking_image_status"] == 0


@pytest.mark.parametrize("endpoint", ["udp-out:127.0.0.1:1", "udpout:127.0.0.1", "udpout:host:99999", "COM3"])
def test_a_malformed_endpoint_is_an_integration_error(endpoint: str) -> None:
    with pytest.raises(IntegrationError, match="expected udpout:HOST:PORT"):
        MavlinkReporter(endpoint, CAMERA)
    with pytest.raises(IntegrationError, match="field of view must be in"):
        Camera(0, 40)
