"""Video in: frames from a file, a V4L2 camera (/dev/videoN) or a GStreamer pipeline (OpenCV, the `video` extra)
through a detector bundle, each frame's detections handed to reporters (the MAVLink companion, say).

Pacing: `realtime` reads a file at its own frame rate, as a camera delivers, and keeps only the newest frame
when inference is slower (drop-oldest: a late frame is worth less than the next one); otherwise every frame is
processed as fast as possible. Latency is per frame from capture to the last reporter's return; inference and
reporting are also timed on their own. The source ending is a clean stop with the summary.

A split bundle loaded with a transport (the MQTT `OffloadClient`) runs its head here and each frame's tail on the
edge server, answered within the session's deadline by the server or by the local tail; the summary counts who
answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError, InputError
from edgekit.runtime.detections import Decoder, Detections
from edgekit.runtime.session import Session

Reporter = Callable[[Detections], Any]
DEFAULT_FPS = 30.0  # when a file does not say its frame rate


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise EdgekitError("video input needs OpenCV, which the device install leaves out: "
                           "pip install 'edgekit[video]'") from None
    return cv2


def open_source(source: str) -> Any:
    """An opened cv2.VideoCapture: /dev/videoN or a camera index through V4L2, a pipeline with '!' through
    GStreamer, anything else a file; InputError when it cannot be opened."""
    cv2 = _cv2()
    if source.isdigit() or source.startswith("/dev/video"):
        capture = cv2.VideoCapture(int(source) if source.isdigit() else source, cv2.CAP_V4L2)
    elif "!" in source:
        capture = cv2.VideoCapture(source, cv2.CAP_GSTREAMER)
    else:
        if not Path(source).is_file():
            raise InputError(f"{source}: no such video file (expected a file, /dev/videoN or a GStreamer pipeline)")
        capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise InputError(f"{source}: cannot be opened as video (unreadable file, missing device, or a backend this "
                         "OpenCV lacks: the opencv-python-headless wheel has no GStreamer)")
    return capture


@dataclass(frozen=True)
class StreamSummary:
    """What a stream did: frames read, processed and dropped, throughput, and latency percentiles (ms)."""

    source: str
    ended: str  # "end of source", "max frames" or "interrupted"
    frames_read: int
    frames_processed: int
    frames_dropped: int
    wall_s: float
    fps: float  # processed frames per second of wall time
    source_fps: float | None
    latency_p50_ms: float | None  # capture to reported
    latency_p99_ms: float | None
    inference_p50_ms: float | None  # Session.run and decoding
    inference_p99_ms: float | None
    report_p50_ms: float | None  # every reporter of the frame
    report_p99_ms: float | None
    answers: dict[str, int] | None = None  # split offload: frames by who answered (remote, fallback, local, ...)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


class _Newest:
    """A one-frame slot between the reader and the detector: drop-oldest when `drop`, else the reader waits."""

    def __init__(self, drop: bool) -> None:
        self.drop, self.dropped, self.ended = drop, 0, False
        self._item: tuple[np.ndarray, float] | None = None
        self._cond = threading.Condition()

    def put(self, frame: np.ndarray, captured: float, stop: threading.Event) -> None:
        with self._cond:
            while not self.drop and self._item is not None and not stop.is_set():
                self._cond.wait(0.1)
            if self._item is not None:
                self.dropped += 1
            self._item = (frame, captured)
            self._cond.notify_all()

    def end(self) -> None:
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    def take(self) -> tuple[np.ndarray, float] | None:
        """The newest frame, waiting for one; None when the source has ended and nothing is left."""
        with self._cond:
            while self._item is None and not self.ended:
                self._cond.wait(0.1)
            item, self._item = self._item, None
            self._cond.notify_all()
            return item


def _percentiles(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    p50, p99 = np.percentile(np.array(values) * 1e3, [50, 99])
    return float(p50), float(p99)


def stream(session: Session, source: str, reporters: Sequence[Reporter] = (), realtime: bool = True,
           max_frames: int | None = None) -> StreamSummary:
    """Run every frame of `source` (as `realtime` paces it, see the module docstring) through the detector bundle
    of `session`, hand each frame's detections to every reporter, and summarise."""
    if session.manifest.detection is None or session.manifest.preprocessing is None:
        raise InputError(f"{session.bundle.path}: stream needs a detector bundle with image preprocessing (a "
                         "manifest with 'detection' and 'preprocessing')")
    decoder = Decoder(session.manifest.detection, session.labels)
    prep, names = session.manifest.preprocessing, [o.name for o in session.outputs]
    cv2 = _cv2()
    capture = open_source(source)
    fps = capture.get(cv2.CAP_PROP_FPS) or None
    is_file = not (source.isdigit() or source.startswith("/dev/video") or "!" in source)
    slot, stop, read = _Newest(drop=realtime), threading.Event(), [0]

    def reader() -> None:
        start = time.monotonic()
        try:
            while not stop.is_set():
                ok, frame = capture.read()
                if not ok:
                    break
                if realtime and is_file:  # a file plays at its frame rate, as the camera that filmed it did
                    time.sleep(max(0.0, start + read[0] / (fps or DEFAULT_FPS) - time.monotonic()))
                read[0] += 1
                slot.put(frame, time.monotonic(), stop)
        finally:
            slot.end()

    thread = threading.Thread(target=reader, name="video-reader", daemon=True)
    latency: list[float] = []
    inference: list[float] = []
    reporting: list[float] = []
    ended = "end of source"
    start = time.monotonic()
    thread.start()
    try:
        while max_frames is None or len(latency) < max_frames:
            item = slot.take()
            if item is None:
                break
            frame, captured = item
            began = time.monotonic()
            rgb = cv2.cvtColor(cv2.resize(frame, (prep.width, prep.height), interpolation=cv2.INTER_LINEAR),
                               cv2.COLOR_BGR2GRAY if prep.channels == 1 else cv2.COLOR_BGR2RGB)
            output = session.run(session.preprocess_pixels(rgb.reshape(prep.height, prep.width, prep.channels)))
            found = decoder(output if isinstance(output, dict) else dict(zip(names, (output,))))
            decoded = time.monotonic()
            for report in reporters:
                report(found)
            done = time.monotonic()
            inference.append(decoded - began)
            reporting.append(done - decoded)
            latency.append(done - captured)
        else:
            ended = "max frames"
    except KeyboardInterrupt:
        ended = "interrupted"
    finally:
        stop.set()
        thread.join(timeout=2.0)
        capture.release()
    wall = time.monotonic() - start
    if read[0] == 0:
        raise InputError(f"{source}: opened, but no frame could be read from it")
    return StreamSummary(source, ended, read[0], len(latency), slot.dropped, wall, len(latency) / wall if wall else 0.0,
                         fps, *_percentiles(latency), *_percentiles(inference), *_percentiles(reporting),
                         session.stats().get("answers"))
