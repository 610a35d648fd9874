"""Detections as ROS 2 `vision_msgs/Detection2DArray`: published live through rclpy, or recorded to a rosbag2 bag
(MCAP storage) with `rosbags` when the machine has no ROS.

rclpy and vision_msgs come from the robot's own ROS 2 install (never an edgekit dependency); `rosbags` is the
`ros` extra. Both paths build the same message: header (stamp of the report, `frame_id`), one Detection2D per box
with the header, a centre/size box in units of `image_size` (1 x 1 by default: normalised to the model's input,
as `Detections` are; pass the camera's width and height for pixels), and one hypothesis: class_id = the label,
score. The pose of each hypothesis is the identity with zero covariance (a 2-D detector knows none).

`report()` stamps the frame and queues it (`sender.SendQueue`, drop-oldest when `queue_size` frames wait); a sender
thread builds each message and publishes (or writes) it, in order, so the frame loop never pays for building
messages or for DDS and the disk. `flush()` waits until every queued frame is out; `close()` flushes first.

Starting ROS here sets ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST unless the environment already says otherwise, so
DDS discovery stays on this machine until the robot's setup opens it up.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import IntegrationError
from edgekit.integrations.sender import DEFAULT_QUEUE, SendQueue
from edgekit.runtime.detections import Detections

ARRAY_TYPE = "vision_msgs/msg/Detection2DArray"
# vision_msgs 4.x (ROS 2) as far as Detection2DArray needs it: rosbags' typestore registers these, and
# tools/ros_venv.sh builds the real package from them for the CI's ROS 2 venv.
VISION_MSGS = {
    "Point2D": "float64 x\nfloat64 y\n",
    "Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "ObjectHypothesis": "string class_id\nfloat64 score\n",
    "ObjectHypothesisWithPose": "vision_msgs/ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n",
    "Detection2D": "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
                   "vision_msgs/BoundingBox2D bbox\nstring id\n",
    "Detection2DArray": "std_msgs/Header header\nvision_msgs/Detection2D[] detections\n",
}
INSTALL_ROS = ("ROS 2 publishing needs rclpy and vision_msgs from the robot's ROS 2 install: source "
               "/opt/ros/<distro>/setup.bash after `apt install ros-<distro>-ros-base ros-<distro>-vision-msgs`; "
               "without ROS, record a bag instead (--record, pip install 'edgekit[ros]')")

Types = Callable[[str], Any]  # "pkg/msg/Name" -> that message's class
Frame = tuple[Detections, int]  # a queued frame: its detections and stamp (ns since the epoch)


class DetectionArrays:
    """Frame after frame as one Detection2DArray built from `types` (rclpy's classes or a rosbags typestore's).

    The message and its Detection2D items are built once and refilled per frame (stamps, boxes, labels, scores):
    building them anew costs ~100-200 us of Python per frame under rclpy, refilling a few us. The message given
    back is valid until the next call; publish or serialise it before then.
    """

    def __init__(self, types: Types, frame_id: str, image_size: tuple[float, float] = (1.0, 1.0)) -> None:
        self._types, self.frame_id, self.image_size = types, frame_id, image_size
        self._items: list[Any] = []
        self._array = types(ARRAY_TYPE)(header=self._header(), detections=[])

    def _header(self) -> Any:
        return self._types("std_msgs/msg/Header")(stamp=self._types("builtin_interfaces/msg/Time")(sec=0, nanosec=0),
                                                  frame_id=self.frame_id)

    def _item(self) -> Any:
        """One Detection2D: a zero box and one hypothesis whose pose is the identity with zero covariance."""
        types = self._types
        centre = types("vision_msgs/msg/Pose2D")(position=types("vision_msgs/msg/Point2D")(x=0.0, y=0.0), theta=0.0)
        pose = types("geometry_msgs/msg/Pose")(position=types("geometry_msgs/msg/Point")(x=0.0, y=0.0, z=0.0),
                                               orientation=types("geometry_msgs/msg/Quaternion")(x=0.0, y=0.0, z=0.0,
                                                                                                 w=1.0))
        hypothesis = types("vision_msgs/msg/ObjectHypothesisWithPose")(
            hypothesis=types("vision_msgs/msg/ObjectHypothesis")(class_id="", score=0.0),
            pose=types("geometry_msgs/msg/PoseWithCovariance")(pose=pose, covariance=np.zeros(36)))
        return types("vision_msgs/msg/Detection2D")(header=self._header(), results=[hypothesis],
                                                    bbox=types("vision_msgs/msg/BoundingBox2D")(center=centre,
                                                                                                size_x=0.0, size_y=0.0),
                                                    id="")

    def __call__(self, detections: Detections, stamp_ns: int) -> Any:
        """The message of one frame stamped `stamp_ns` (ns since the epoch), boxes in units of `image_size`."""
        sec, nanosec = divmod(stamp_ns, 1_000_000_000)
        width, height = self.image_size
        while len(self._items) < len(detections):
            self._items.append(self._item())
        stamps = [self._array.header.stamp]
        for item, label, score, (x0, y0, x1, y1) in zip(self._items, detections.labels, detections.scores.tolist(),
                                                        detections.boxes.astype(np.float64).tolist()):
            stamps.append(item.header.stamp)
            box, best = item.bbox, item.results[0].hypothesis
            box.center.position.x, box.center.position.y = (x0 + x1) / 2 * width, (y0 + y1) / 2 * height
            box.size_x, box.size_y = (x1 - x0) * width, (y1 - y0) * height
            best.class_id, best.score = label, score
        for stamp in stamps:
            stamp.sec, stamp.nanosec = sec, nanosec
        self._array.detections = self._items[:len(detections)]
        return self._array


def boxes_of(message: Any, image_size: tuple[float, float] = (1.0, 1.0)) -> list[dict[str, Any]]:
    """A Detection2DArray back as Detections.to_list() would give it, less the class id: label, score, box."""
    width, height = image_size
    out = []
    for item in message.detections:
        c, b = item.bbox.center.position, item.bbox
        best = item.results[0].hypothesis
        out.append({"label": best.class_id, "score": best.score,
                    "box": [(c.x - b.size_x / 2) / width, (c.y - b.size_y / 2) / height,
                            (c.x + b.size_x / 2) / width, (c.y + b.size_y / 2) / height]})
    return out


def _local_discovery() -> None:
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise IntegrationError(f"{INSTALL_ROS} (import {name}: {exc})") from None


def rclpy_types(name: str) -> Any:
    """The rclpy message class for "pkg/msg/Name"; IntegrationError naming what to install when it is missing."""
    package, _, cls = name.split("/")
    return getattr(_import(f"{package}.msg"), cls)


class Ros2Publisher:
    """A node publishing each frame's Detection2DArray on `topic`; `report(detections)` per frame, `close()`."""

    def __init__(self, topic: str = "/detections", frame_id: str = "camera", *, node_name: str = "edgekit_detector",
                 depth: int = 10, image_size: tuple[float, float] = (1.0, 1.0),
                 queue_size: int = DEFAULT_QUEUE) -> None:
        _local_discovery()
        rclpy = _import("rclpy")
        message_type = rclpy_types(ARRAY_TYPE)
        self.topic, self.frame_id, self.image_size = topic, frame_id, image_size
        self._rclpy, self._context = rclpy, _import("rclpy.context").Context()
        rclpy.init(context=self._context)
        try:
            self._node = rclpy.create_node(node_name, context=self._context)
            self._publisher = self._node.create_publisher(message_type, topic, depth)
        except _import("rclpy.exceptions").NameValidationException as exc:
            rclpy.shutdown(context=self._context)
            raise IntegrationError(f"ROS 2 topic {topic!r} or node name {node_name!r}: {exc}") from None
        self.published = 0
        self._message = DetectionArrays(rclpy_types, frame_id, image_size)
        self._frames: SendQueue[Frame] = SendQueue(self._publish, "ros2-publisher", queue_size)

    def report(self, detections: Detections) -> None:
        """Stamp one frame and queue it for publishing (never blocks)."""
        self._frames.put((detections, time.time_ns()))

    def _publish(self, frame: Frame) -> None:
        self._publisher.publish(self._message(*frame))
        self.published += 1

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued frame is published (True) or `timeout_s` passes (False)."""
        return self._frames.flush(timeout_s)

    def health(self) -> dict[str, Any]:
        """The topic, messages published, frames queued and dropped, and how many subscribers are matched now."""
        return {"topic": self.topic, "published": self.published, "frames": self._frames.counts(),
                "subscribers": self._publisher.get_subscription_count(), "last_error": self._frames.last_error}

    def close(self) -> None:
        """Publish the queued frames (for up to 2 s), destroy the node and shut down its own rclpy context."""
        self._frames.close()
        self._node.destroy_node()
        self._rclpy.shutdown(context=self._context)

    def __enter__(self) -> Ros2Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def vision_typestore() -> Any:
    """rosbags' ROS 2 typestore with vision_msgs registered (the `ros` extra)."""
    try:
        from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    except ImportError:
        raise IntegrationError("recording a ROS 2 bag needs rosbags: pip install 'edgekit[ros]'") from None
    store = get_typestore(Stores.ROS2_KILTED)
    for name, text in VISION_MSGS.items():
        store.register(get_types_from_msg(text, f"vision_msgs/msg/{name}"))
    return store


class BagRecorder:
    """The same messages as Ros2Publisher, written to a new rosbag2 folder `path` (MCAP storage) for
    `ros2 bag play`; `report(detections)` per frame, `close()` at the end."""

    def __init__(self, path: str | Path, topic: str = "/detections", frame_id: str = "camera", *,
                 image_size: tuple[float, float] = (1.0, 1.0), queue_size: int = DEFAULT_QUEUE) -> None:
        self.store = vision_typestore()
        from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

        self.path, self.topic, self.frame_id, self.image_size = Path(path), topic, frame_id, image_size
        try:
            self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
            self._writer.open()
        except WriterError as exc:
            raise IntegrationError(f"cannot record to {self.path}: {exc}") from None
        self._connection = self._writer.add_connection(topic, ARRAY_TYPE, typestore=self.store)
        self.recorded = 0
        self._message = DetectionArrays(self.store.types.__getitem__, frame_id, image_size)
        self._frames: SendQueue[Frame] = SendQueue(self._record, "rosbag-writer", queue_size)

    def report(self, detections: Detections) -> None:
        """Stamp one frame and queue it for recording (never blocks)."""
        self._frames.put((detections, time.time_ns()))

    def _record(self, frame: Frame) -> None:
        stamp = frame[1]
        self._writer.write(self._connection, stamp, self.store.serialize_cdr(self._message(*frame), ARRAY_TYPE))
        self.recorded += 1

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued frame is written (True) or `timeout_s` passes (False)."""
        return self._frames.flush(timeout_s)

    def health(self) -> dict[str, Any]:
        """The bag folder, its topic, the messages recorded and the frames queued and dropped."""
        return {"bag": str(self.path), "topic": self.topic, "recorded": self.recorded,
                "frames": self._frames.counts(), "last_error": self._frames.last_error}

    def close(self) -> None:
        """Write the queued frames (for up to 10 s: a bag should hold every frame), then finish the bag (its
        metadata.yaml is written here)."""
        self._frames.close(flush_s=10.0)
        self._writer.close()

    def __enter__(self) -> BagRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_bag(path: str | Path, topic: str = "/detections") -> list[Any]:
    """Every Detection2DArray on `topic` in the bag at `path`, in order."""
    store = vision_typestore()
    from rosbags.rosbag2 import Reader, ReaderError

    try:
        with Reader(path) as reader:
            connections = [c for c in reader.connections if c.topic == topic]
            return [store.deserialize_cdr(data, c.msgtype) for c, _, data in reader.messages(connections)]
    except ReaderError as exc:
        raise IntegrationError(f"cannot read the bag {path}: {exc}") from None
