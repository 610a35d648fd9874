"""ROS 2 detections: a rosbag2 (MCAP) recording reads back equal to the detections, through the library and
`edgekit stream --record`; with real rclpy (.venv-ros, built by tools/ros_venv.sh) a subscriber gets one
Detection2DArray per frame equal to the detections; without rclpy, --ros2 is one error naming what to install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import blazeface_bundle  # tools/, on the path through conftest
import numpy as np
import pytest
from helpers import run
from synthetic_clip import astronaut_clip  # tools/

from edgekit.errors import IntegrationError
from edgekit.integrations.ros2 import BagRecorder, Ros2Publisher, boxes_of, read_bag
from edgekit.runtime import load
from edgekit.runtime.detections import Detections
from edgekit.runtime.stream import stream

ROOT = Path(__file__).resolve().parents[1]
ROS_PYTHON = ROOT / ".venv-ros" / "bin" / "python"


def _frames(count: int) -> list[Detections]:
    """Frame i: i % 3 boxes (none every third frame), labels 'face' and 'pad'."""
    out = []
    for i in range(count):
        k = i % 3
        boxes = np.array([[0.1 * j + 0.01 * i, 0.2, 0.1 * j + 0.01 * i + 0.15, 0.5 + 0.1 * j] for j in range(k)])
        out.append(Detections(boxes.astype(np.float32).reshape(-1, 4), np.linspace(0.9, 0.6, k, dtype=np.float32),
                              np.arange(k) % 2, tuple(("face", "pad")[j % 2] for j in range(k))))
    return out


def _expected(found: Detections) -> list[dict]:
    return [{k: v for k, v in d.items() if k != "class_id"} for d in found.to_list()]


def test_a_recorded_bag_reads_back_equal_to_the_detections(tmp_path: Path) -> None:
    frames = _frames(12)
    with BagRecorder(tmp_path / "bag", "/robot/detections", "cam_optical") as recorder:
        for found in frames:
            recorder.report(found)
    messages = read_bag(tmp_path / "bag", "/robot/detections")
    assert (tmp_path / "bag" / "bag.mcap").is_file() and len(messages) == len(frames)
    for message, found in zip(messages, frames):
        assert message.header.frame_id == "cam_optical" and len(message.detections) == len(found)
        assert boxes_of(message) == _expected(found)
        np.testing.assert_array_equal(np.float32([d["box"] for d in boxes_of(message)]).reshape(-1, 4), found.boxes)
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in messages]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    with pytest.raises(IntegrationError, match="cannot record to"):
        BagRecorder(tmp_path / "bag")


def test_pixels_when_the_image_size_is_given(tmp_path: Path) -> None:
    found = _frames(2)[1]
    with BagRecorder(tmp_path / "bag", image_size=(640, 480)) as recorder:
        recorder.report(found)
    (message,) = read_bag(tmp_path / "bag")
    box = message.detections[0].bbox
    x0, y0, x1, y1 = found.boxes[0].astype(np.float64)
    assert (box.center.position.x, box.size_y) == pytest.approx(((x0 + x1) / 2 * 640, (y1 - y0) * 480))
    assert boxes_of(message, (640, 480))[0]["box"] == pytest.approx(found.to_list()[0]["box"], abs=1e-12)


def test_edgekit_stream_records_every_frame(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    clip = astronaut_clip(tmp_path / "clip.avi", 8, blank_every=4)
    bundle = blazeface_bundle.bundle(tmp_path / "bf")
    seen: list[Detections] = []
    stream(load(bundle), str(clip), (seen.append,), realtime=False)
    code, out, err = run(capsys, "stream", str(bundle), "--source", str(clip), "--pace", "fast", "--record",
                         str(tmp_path / "bag"), "--json")
    assert code == 0, err
    assert json.loads(out)["bag"]["recorded"] == 8
    messages = read_bag(tmp_path / "bag")
    assert [len(m.detections) for m in messages] == [0, 1, 1, 1, 0, 1, 1, 1]
    assert [boxes_of(m) for m in messages] == [_expected(found) for found in seen]


def test_without_rclpy_ros2_is_one_error_naming_what_to_install(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rclpy", None)  # import rclpy fails here even where a ROS install is sourced
    with pytest.raises(IntegrationError, match=r"apt install ros-<distro>-ros-base ros-<distro>-vision-msgs"):
        Ros2Publisher("/detections")
    clip = astronaut_clip(tmp_path / "clip.avi", 2, blank_every=2)
    code, out, err = run(capsys, "stream", str(blazeface_bundle.bundle(tmp_path / "bf")), "--source", str(clip),
                         "--ros2", "/detections")
    last = err.strip().splitlines()[-1]
    assert code == 2 and out == "" and last.startswith("edgekit: error: ROS 2 publishing needs rclpy")


PEER = """
import json, sys, time
import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from vision_msgs.msg import Detection2DArray
from edgekit.errors import IntegrationError
from edgekit.integrations.ros2 import Ros2Publisher, boxes_of
from edgekit.runtime.detections import Detections

frames = [Detections(np.float32(f["boxes"]).reshape(-1, 4), np.float32(f["scores"]), np.int64(f["class_ids"]),
                     tuple(f["labels"])) for f in json.load(sys.stdin)]
context = Context()
rclpy.init(context=context)
node = rclpy.create_node("checker", context=context)
got = []
node.create_subscription(Detection2DArray, "/detections", got.append, 10)
executor = SingleThreadedExecutor(context=context)
executor.add_node(node)
try:
    Ros2Publisher("not a topic")
    bad_topic = "accepted"
except IntegrationError as exc:
    bad_topic = str(exc)
with Ros2Publisher("/detections", "camera") as publisher:
    give_up = time.monotonic() + 20
    while publisher.health()["subscribers"] < 1 and time.monotonic() < give_up:
        executor.spin_once(timeout_sec=0.05)
    for found in frames:
        publisher.report(found)
    while len(got) < len(frames) and time.monotonic() < give_up:
        executor.spin_once(timeout_sec=0.05)
    health = publisher.health()
print(json.dumps({"received": [boxes_of(m) for m in got], "frame_ids": [m.header.frame_id for m in got],
                  "health": health, "bad_topic": bad_topic,
                  "discovery": __import__("os").environ["ROS_AUTOMATIC_DISCOVERY_RANGE"]}))
"""


def test_a_ros2_subscriber_gets_one_detection_array_per_frame() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "ROS_DOMAIN_ID": str(1 + os.getpid() % 100)}  # a domain of this run's own
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    if not ROS_PYTHON.exists() or subprocess.run([str(ROS_PYTHON), "-c", "import rclpy, vision_msgs.msg"], env=env,
                                                 capture_output=True, timeout=60).returncode:
        pytest.skip("no working ROS 2 venv: run tools/ros_venv.sh (x86_64, CPython 3.10-3.13)")
    frames = _frames(10)
    given = [{"boxes": f.boxes.tolist(), "scores": f.scores.tolist(), "class_ids": f.class_ids.tolist(),
              "labels": list(f.labels)} for f in frames]
    done = subprocess.run([str(ROS_PYTHON), "-c", PEER], input=json.dumps(given), capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["received"] == [_expected(found) for found in frames]
    assert result["frame_ids"] == ["camera"] * len(frames) and result["discovery"] == "LOCALHOST"
    assert result["health"]["published"] == len(frames) and result["health"]["subscribers"] == 1
    assert "ROS 2 topic 'not a topic'" in result["bad_topic"]
