"""`edgekit stream`: a short synthetic clip through BlazeFace's FP32 bundle to the fake vehicle (one tracking status
per processed frame, its boxes the session's), drop-oldest under real-time pacing, and bad sources as one-line
errors."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import blazeface_bundle  # tools/, on the path through conftest
import numpy as np
import pytest
from fake_vehicle import FakeVehicle
from helpers import run, wait_for
from synthetic_clip import astronaut_clip

from edgekit.errors import InputError
from edgekit.integrations.mavlink import Camera, MavlinkReporter
from edgekit.runtime import load
from edgekit.runtime.detections import Detections
from edgekit.runtime.stream import stream

FRAMES = 20  # every fifth one blank: no face


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 frames at 30 frames/s: the astronaut sliding right, every fifth frame plain grey (MJPEG in AVI)."""
    return astronaut_clip(tmp_path_factory.mktemp("video") / "clip.avi", FRAMES, blank_every=5)


@pytest.fixture(scope="module")
def face_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return blazeface_bundle.bundle(tmp_path_factory.mktemp("bf") / "blazeface")


def test_every_frame_of_a_clip_reaches_the_vehicle(tmp_path: Path, clip: Path, face_bundle: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    seen: list[Detections] = []
    with FakeVehicle(f"udpin:127.0.0.1:{port}", period_s=0.05) as fake, \
            MavlinkReporter(f"udpout:127.0.0.1:{port}", Camera(62.2, 48.8)) as reporter:
        summary = stream(load(face_bundle), str(clip), (seen.append, reporter.report), realtime=False)
        statuses = wait_for(lambda: len(s := fake.messages("CAMERA_TRACKING_IMAGE_STATUS")) >= FRAMES and s, 5.0,
                            "a tracking status per frame")
    assert (summary.frames_read, summary.frames_processed, summary.frames_dropped) == (FRAMES, FRAMES, 0)
    assert summary.ended == "end of source" and summary.latency_p50_ms is not None and summary.fps > 0
    assert [len(d) for d in seen] == [0 if i % 5 == 0 else 1 for i in range(FRAMES)]
    assert len(statuses) == FRAMES
    for status, found in zip(statuses, seen):
        box = [status[k] for k in ("rec_top_x", "rec_top_y", "rec_bottom_x", "rec_bottom_y")]
        if len(found):
            np.testing.assert_array_equal(np.float32(box), found.boxes[0])
        else:
            assert status["tracking_status"] == 0 and box == [None] * 4


def test_realtime_pacing_drops_the_oldest_frames_when_inference_is_slow(clip: Path, face_bundle: Path) -> None:
    frames: list[float] = []

    def slow(_: Detections) -> None:  # a 100 ms reporter: the 30 frames/s clip outruns it
        frames.append(time.monotonic())
        time.sleep(0.1)

    summary = stream(load(face_bundle), str(clip), (slow,), realtime=True)
    assert summary.frames_read == FRAMES and summary.frames_dropped > 5
    assert summary.frames_processed + summary.frames_dropped == FRAMES
    assert summary.wall_s > (FRAMES - 1) / 30  # the file played at its own rate
    assert stream(load(face_bundle), str(clip), realtime=False, max_frames=3).frames_processed == 3


def test_bad_sources_are_one_line_errors(capsys: pytest.CaptureFixture, tmp_path: Path, clip: Path,
                                         face_bundle: Path) -> None:
    (tmp_path / "text.avi").write_text("not a video")
    for source, message in ((tmp_path / "missing.avi", "no such video file"),
                            (tmp_path / "text.avi", "cannot be opened as video")):
        code, out, err = run(capsys, "stream", str(face_bundle), "--source", str(source))
        last = err.strip().splitlines()[-1]  # after whatever the libraries printed, as --verbose would show it
        assert code == 2 and out == "" and last.startswith("edgekit: error: ") and message in last
    plain = blazeface_bundle.bundle(tmp_path / "plain", detection=None)
    with pytest.raises(InputError, match="stream needs a detector bundle"):
        stream(load(plain), str(clip))
    code, out, err = run(capsys, "stream", str(face_bundle), "--source", str(clip), "--pace", "fast", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["frames_processed"] == FRAMES and summary["ended"] == "end of source"
