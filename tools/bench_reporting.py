"""What reporting detections over MQTT, to a rosbag2 (MCAP) recording and over ROS 2 costs per frame, against the
frame's own inference time (tools/bench_mavlink.py does the same for MAVLink).

BlazeFace short-range as an FP32 bundle runs on `--frames` frames (the astronaut, every fifth one blank); each
frame's detections go to one reporter, its `report()` timed: MqttDetections to a Mosquitto of its own on loopback
(QoS 0 and 1, a subscriber counting what arrives), BagRecorder to a temporary bag, and, where .venv-ros exists
(tools/ros_venv.sh), Ros2Publisher in that venv with a subscriber in the same process, fed the same detections.
Goal (issue 13): reporting under 1 ms and under 5% of the frame time.

Run: python tools/bench_reporting.py [--frames 500] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import blazeface  # noqa: E402
import blazeface_bundle  # noqa: E402

from edgekit.integrations.mqtt_detections import MqttDetections  # noqa: E402
from edgekit.integrations.ros2 import BagRecorder  # noqa: E402
from edgekit.offload.broker import Broker  # noqa: E402
from edgekit.report.table import table  # noqa: E402
from edgekit.runtime import load  # noqa: E402
from edgekit.runtime.detections import Decoder, Detections  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROS_PYTHON = ROOT / ".venv-ros" / "bin" / "python"
ROS_PEER = """
import json, sys, time
import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from vision_msgs.msg import Detection2DArray
from edgekit.integrations.ros2 import Ros2Publisher
from edgekit.runtime.detections import Detections

frames = [Detections(np.float32(f["boxes"]).reshape(-1, 4), np.float32(f["scores"]), np.int64(f["class_ids"]),
                     tuple(f["labels"])) for f in json.load(sys.stdin)]
context = Context()
rclpy.init(context=context)
node = rclpy.create_node("bench_listener", context=context)
got = []
node.create_subscription(Detection2DArray, "/detections", got.append, 1000)
executor = SingleThreadedExecutor(context=context)
executor.add_node(node)
times = []
with Ros2Publisher("/detections") as publisher:
    give_up = time.monotonic() + 20
    while publisher.health()["subscribers"] < 1 and time.monotonic() < give_up:
        executor.spin_once(timeout_sec=0.05)
    for found in frames:
        start = time.perf_counter()
        publisher.report(found)
        times.append(time.perf_counter() - start)
        executor.spin_once(timeout_sec=0)
    while len(got) < len(frames) and time.monotonic() < give_up:
        executor.spin_once(timeout_sec=0.05)
print(json.dumps({"times": times, "received": len(got)}))
"""


def _ms(values: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.array(values) * 1e3, [50, 99])
    return float(p50), float(p99)


def detect(frames: int) -> tuple[list[Detections], list[float]]:
    """BlazeFace's detections of each frame, and each frame's inference + decoding time (s)."""
    with tempfile.TemporaryDirectory() as tmp:
        session = load(blazeface_bundle.bundle(Path(tmp) / "bf"))
    decode = Decoder(session.manifest.detection, session.labels)
    face = blazeface.frame(blazeface.test_image("astronaut"))
    blank = np.zeros_like(face)
    found, seconds = [], []
    for i in range(frames):
        start = time.perf_counter()
        found.append(decode(session.run(blank if i % 5 == 0 else face)))
        seconds.append(time.perf_counter() - start)
    return found, seconds


def _timed(report: Callable[[Detections], Any], frames: list[Detections]) -> list[float]:
    times = []
    for found in frames:
        start = time.perf_counter()
        report(found)
        times.append(time.perf_counter() - start)
    return times


def mqtt(frames: list[Detections], qos: int) -> tuple[list[float], int]:
    """report() times over MQTT to a loopback Mosquitto, and how many messages a subscriber got."""
    got = []
    with Broker() as broker:
        listener = broker.client_config().client("bench-listener")
        subscribed = threading.Event()
        listener.on_connect = lambda c, userdata, flags, reason, props: c.subscribe("edgekit/det/#", qos=1)
        listener.on_subscribe = lambda c, userdata, mid, reasons, props: subscribed.set()
        listener.on_message = lambda c, userdata, message: got.append(message.payload)
        broker.client_config().connect_async(listener)
        subscribed.wait(10)
        with MqttDetections(broker.url, "bench", qos=qos, queue_size=len(frames)) as reporter:
            while not reporter.health()["connected"]:
                time.sleep(0.01)
            times = _timed(reporter.report, frames)
            reporter.flush()
        time.sleep(0.3)
        listener.disconnect()
        listener.loop_stop()
    return times, len(got)


def bag(frames: list[Detections]) -> tuple[list[float], int]:
    """report() times recording to a temporary bag, and the messages recorded."""
    with tempfile.TemporaryDirectory() as tmp, BagRecorder(Path(tmp) / "bag") as recorder:
        return _timed(recorder.report, frames), len(frames)


def ros2(frames: list[Detections]) -> tuple[list[float], int] | None:
    """report() times of Ros2Publisher in .venv-ros with a subscriber there, or None without that venv."""
    if not ROS_PYTHON.exists():
        return None
    given = [{"boxes": f.boxes.tolist(), "scores": f.scores.tolist(), "class_ids": f.class_ids.tolist(),
              "labels": list(f.labels)} for f in frames]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "ROS_DOMAIN_ID": str(1 + os.getpid() % 100)}
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    done = subprocess.run([str(ROS_PYTHON), "-c", ROS_PEER], input=json.dumps(given), capture_output=True,
                          text=True, env=env, timeout=120, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["times"], result["received"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    frames, inference = detect(args.frames)
    i50, i99 = _ms(inference)
    runs = {"MQTT QoS 0": mqtt(frames, 0), "MQTT QoS 1": mqtt(frames, 1), "rosbag2 MCAP": bag(frames),
            "ROS 2 (rclpy, Fast DDS)": ros2(frames)}
    results = []
    for name, run in runs.items():
        if run is None:
            continue
        times, received = run
        r50, r99 = _ms(times)
        results.append({"reporter": name, "frames": args.frames, "received": received, "inference_p50_ms": i50,
                        "inference_p99_ms": i99, "report_p50_ms": r50, "report_p99_ms": r99,
                        "report_share_p50": r50 / (i50 + r50)})
    if args.json:
        print(json.dumps(results, indent=2))
        return
    rows = [(r["reporter"], f"{r['received']}/{r['frames']}", f"{i50:.3f} / {i99:.3f}",
             f"{r['report_p50_ms'] * 1e3:.0f} / {r['report_p99_ms'] * 1e3:.0f}", f"{100 * r['report_share_p50']:.1f}%")
            for r in results]
    print("BlazeFace FP32 (LiteRT) per frame, detections reported on loopback" +
          ("" if ROS_PYTHON.exists() else " (no .venv-ros: ROS 2 not measured)"))
    print(table(("reporter", "received", "inference p50/p99 ms", "reporting p50/p99 us", "reporting share (p50)"),
                rows))


if __name__ == "__main__":
    main()
