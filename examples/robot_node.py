"""A robot's detector node in one command: BlazeFace (FP32 bundle) on a short synthetic clip, each frame's
detections recorded as vision_msgs/Detection2DArray to a rosbag2 (MCAP) folder, or published as JSON over MQTT.

Run: .venv/bin/python examples/robot_node.py record [--out out/robot]      (no ROS needed: edgekit[ros])
     .venv/bin/python examples/robot_node.py mqtt [--broker mqtt://host:1883]  (no broker given: Mosquitto is
                                                                                started on loopback)

`record` reads the bag back and prints each frame's boxes (replay it with `ros2 bag play out/robot/detections`);
`mqtt` subscribes to edgekit/det/robot-1 and prints what arrives. On a robot with ROS 2 sourced,
`edgekit stream BUNDLE --source /dev/video0 --ros2 /detections` publishes the same messages live.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import blazeface_bundle  # noqa: E402  (tools/)
from synthetic_clip import astronaut_clip  # noqa: E402  (tools/)

from edgekit.integrations.mqtt_detections import MqttDetections  # noqa: E402
from edgekit.integrations.ros2 import BagRecorder, boxes_of, read_bag  # noqa: E402
from edgekit.offload.broker import Broker  # noqa: E402
from edgekit.report.runtime import render_stream  # noqa: E402
from edgekit.runtime import load  # noqa: E402
from edgekit.runtime.session import Session  # noqa: E402
from edgekit.runtime.stream import stream  # noqa: E402


def record(session: Session, clip: Path, out: Path) -> None:
    """Stream the clip into a fresh bag, then read it back."""
    bag = out / "detections"
    shutil.rmtree(bag, ignore_errors=True)
    with BagRecorder(bag, "/detections", "camera") as recorder:
        summary = stream(session, str(clip), (recorder.report,)).to_dict()
        summary["bag"] = recorder.health()
    print(render_stream(summary))
    for i, message in enumerate(read_bag(bag)):
        found = boxes_of(message)
        print(f"frame {i:2d}: " + ("-" if not found else "; ".join(
            f"{d['label']} {d['score']:.2f} [{', '.join(f'{v:.3f}' for v in d['box'])}]" for d in found)))


def mqtt(session: Session, clip: Path, broker_url: str | None) -> None:
    """Stream the clip to MQTT with a subscriber of our own printing each message."""
    own = Broker().start() if broker_url is None else None
    url = own.url if own is not None else str(broker_url)
    try:
        with MqttDetections(url, "robot-1") as reporter:
            listener = reporter.config.client("robot-node-listener")
            subscribed = threading.Event()
            listener.on_connect = lambda c, userdata, flags, reason, props: c.subscribe(reporter.topic)
            listener.on_subscribe = lambda c, userdata, mid, reasons, props: subscribed.set()
            listener.on_message = lambda c, userdata, message: print(message.topic, json.loads(message.payload))
            reporter.config.connect_async(listener)
            subscribed.wait(10)
            summary = stream(session, str(clip), (reporter.report,)).to_dict()
            reporter.flush()
            time.sleep(0.3)  # the last messages reach the listener
            summary["mqtt"] = reporter.health()
            listener.disconnect()
            listener.loop_stop()
        print(render_stream(summary))
    finally:
        if own is not None:
            own.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("record", "mqtt"), nargs="?", default="record")
    parser.add_argument("--broker", help="mqtt: the broker URL (default: a Mosquitto started here)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "robot", help="working folder (default out/robot)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = args.out / "blazeface"
    if not bundle.exists():
        blazeface_bundle.bundle(bundle)
    clip = astronaut_clip(args.out / "clip.avi", frames=20, blank_every=5)
    session = load(bundle)
    if args.mode == "record":
        record(session, clip, args.out)
    else:
        mqtt(session, clip, args.broker)


if __name__ == "__main__":
    main()
