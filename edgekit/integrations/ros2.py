"""Detections as ROS 2 `vision_msgs/Detection2DArray`: published live through rclpy, or recorded to a rosbag2 bag
(MCAP storage) with `rosbags` when the machine has no ROS.

rclpy and vision_msgs come from the robot's own ROS 2 install (never an edgekit dependency); `rosbags` is the
`ros` extra. Both paths build the same message: header (stamp of the report, `frame_id`), one Detection2D per box
with the header, a centre/size box in units of `image_size` (1 x 1 by default: normalised to the model's input,
as `Detections` are; pass the camera's width and height for pixels), and one hypothesis: class_id = the label,
score. The pose of each hypothesis is the identity with zero covariance (a 2-D detector knows none).

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


def detection_array(types: Types, detections: Detections, stamp_ns: int, frame_id: str,
                    image_size: tuple[float, float] = (1.0, 1.0)) -> Any:
    """One frame as a Detection2DArray built from `types` (rclpy's classes or a rosbags typestore's)."""
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)

    def header() -> Any:
        return types("std_msgs/msg/Header")(stamp=types("builtin_interfaces/msg/Time")(sec=sec, nanosec=nanosec),
                                            frame_id=frame_id)

    width, height = image_size
    items = []
    for label, score, (x0, y0, x1, y1) in zip(detections.labels, detections.scores.tolist(),
                                              detections.boxes.astype(np.float64).tolist()):
        centre = types("vision_msgs/msg/Point2D")(x=(x0 + x1) / 2 * width, y=(y0 + y1) / 2 * height)
        box = types("vision_msgs/msg/BoundingBox2D")(center=types("vision_msgs/msg/Pose2D")(position=centre, theta=0.0),
                                                     size_x=(x1 - x0) * width, size_y=(y1 - y0) * height)
        pose = types("geometry_msgs/msg/Pose")(position=types("geometry_msgs/msg/Point")(x=0.0, y=0.0, z=0.0),
                                               orientation=types("geometry_msgs/msg/Quaternion")(x=0.0, y=0.0, z=0.0,
                                                                                                 w=1.0))
        hypothesis = types("vision_msgs/msg/ObjectHypothesisWithPose")(
            hypothesis=types("vision_msgs/msg/ObjectHypothesis")(class_id=label, score=score),
            pose=types("geometry_msgs/msg/PoseWithCovariance")(pose=pose, covariance=np.zeros(36)))
        items.append(types("vision_msgs/msg/Detection2D")(header=header(), results=[hypothesis], bbox=box, id=""))
    return types(ARRAY_TYPE)(header=header(), detections=items)


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
                 depth: int = 10, image_size: tuple[float, float] = (1.0, 1.0)) -> None:
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

    def report(self, detections: Detections) -> Any:
        """Publish one frame and give back the message."""
        message = detection_array(rclpy_types, detections, time.time_ns(), self.frame_id, self.image_size)
        self._publisher.publish(message)
        self.published += 1
        return message

    def health(self) -> dict[str, Any]:
        """The topic, messages published, and how many subscribers are matched now."""
        return {"topic": self.topic, "published": self.published,
                "subscribers": self._publisher.get_subscription_count()}

    def close(self) -> None:
        """Destroy the node and shut down its own rclpy context."""
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
                 image_size: tuple[float, float] = (1.0, 1.0)) -> None:
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

    def report(self, detections: Detections) -> Any:
        """Record one frame and give back the message."""
        stamp = time.time_ns()
        message = detection_array(self.store.types.__getitem__, detections, stamp, self.frame_id, self.image_size)
        self._writer.write(self._connection, stamp, self.store.serialize_cdr(message, ARRAY_TYPE))
        self.recorded += 1
        return message

    def health(self) -> dict[str, Any]:
        """The bag folder, its topic and the messages recorded."""
        return {"bag": str(self.path), "topic": self.topic, "recorded": self.recorded}

    def close(self) -> None:
        """Finish the bag (its metadata.yaml is written here)."""
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
