"""Detectors on OpenCV's pedestrian clip vtest.avi (768x576, 795 frames; tools/setup.sh extracts it from Debian's
opencv-doc): frames per second and per-frame latency p50/p99 through `edgekit.runtime.stream`, as fast as frames
can be processed, with the mean boxes per frame.

Rows: the tiny detector (models/detector.py, untrained: its boxes are noise, its cost is real) as an FP32 ONNX bundle
and as a split bundle (INT8 head to backbone.13.add, FP32 tail) run all here and with the tail over MQTT (a
Mosquitto and an OffloadServer of the tail on loopback, every frame offloaded: resplit off); BlazeFace short-range
FP32 and INT8 (tools/blazeface_bundle.py; vtest has no faces near the camera, so few boxes), and the INT8 one cut in
two after `blazeface_bundle.SPLIT_AT` (edgekit.convert.split_tflite), run all here and with the tail over MQTT as
the tiny detector's; and OpenCV's built-in
HOG people detector (`HOGDescriptor_getDefaultPeopleDetector`, detectMultiScale at winStride 8) as the classical
reference, timed on the same frames, its people per frame counted.

Run: python tools/bench_stream.py [--frames 200] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import blazeface_bundle  # noqa: E402

from edgekit.formats.bundle import InputPreprocessing, load_bundle, write_bundle  # noqa: E402
from edgekit.formats.detection import DetectionSpec  # noqa: E402
from edgekit.report.table import table  # noqa: E402
from edgekit.runtime import load  # noqa: E402
from edgekit.runtime.session import Session  # noqa: E402
from edgekit.runtime.stream import stream  # noqa: E402

VTEST = "vtest.avi"
DEBIAN_VTEST = Path("/usr/share/doc/opencv-doc/examples/data") / VTEST  # where an installed opencv-doc has it
SIZE = 128  # the tiny detector's input, square
SPLIT_AT = "backbone.13.add"  # the backbone's last layer: 32x8x8 int8 (2 KiB) crosses the link
CALIBRATION_FRAMES = 32


def vtest_path() -> Path | None:
    """vtest.avi where tools/setup.sh puts it ($EDGEKIT_SAMPLES, else ~/.cache/edgekit/samples) or an installed
    opencv-doc has it; None when neither."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgekit" / "samples"
    folder = Path(os.environ["EDGEKIT_SAMPLES"]) if os.environ.get("EDGEKIT_SAMPLES") else cache
    return next((path for path in (folder / VTEST, DEBIAN_VTEST) if path.is_file()), None)


def video_frames(source: str | Path, count: int) -> np.ndarray:
    """The first `count` frames of a video as the tiny detector's input: (N, 3, 128, 128) RGB in [0, 1]."""
    import cv2

    capture, frames = cv2.VideoCapture(str(source)), []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        rgb = cv2.cvtColor(cv2.resize(frame, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
        frames.append(rgb.transpose(2, 0, 1).astype(np.float32) / 255)
    capture.release()
    return np.stack(frames)


def tiny_detection(output: str, score_threshold: float = 0.25) -> DetectionSpec:
    """The tiny detector's grid decoder on its one NCHW head (untrained: scores sit near 0.25)."""
    return DetectionSpec("grid", (output,), score_threshold=score_threshold, iou_threshold=0.45, nms="hard",
                         max_detections=20, layout="NCHW")


def with_detection(bundle: Path, out: Path, labels: tuple[str, ...] = ("person",)) -> Path:
    """`bundle` rewritten to `out` with `tiny_detection` on its last stage's output and `labels`."""
    verified = load_bundle(bundle)
    detection = tiny_detection(verified.manifest.stages[-1].outputs[0].name)
    return write_bundle(bundle, replace(verified.manifest, labels=labels, detection=detection), out)


def tiny_detector_bundles(root: str | Path, calibration_video: str | Path) -> dict[str, Path]:
    """The tiny detector (seed 0) as an FP32 ONNX detector bundle and as a split one (INT8 head calibrated on the
    first frames of `calibration_video`, FP32 tail), both decoding with `tiny_detection`."""
    import torch

    from edgekit.convert.compile_compressed import export_fp32
    from edgekit.convert.compile_split import compile_split
    from edgekit.convert.float_bundle import bundle_float_file
    from edgekit.models import create_model
    from edgekit.targets import load_link, load_target

    root = Path(root)
    torch.manual_seed(0)
    model = create_model("tiny_detector").eval()
    onnx = root / "tiny_detector.onnx"
    export_fp32(model, torch.zeros(model.input_shape), onnx, "the tiny detector")
    prep = InputPreprocessing("NCHW", 3, SIZE, SIZE, 1 / 255, (0.0,), (1.0,))
    fp32 = with_detection(bundle_float_file(onnx, root / "fp32.plain", "rpi4", prep), root / "tiny_fp32")
    np.savez(root / "calib.npz", x=video_frames(calibration_video, CALIBRATION_FRAMES))
    compile_split(model, "tiny_detector", load_target("rpi4"), load_target("x86-server"), load_link("wifi"),
                  root / "split.plain", root / "calib.npz", split=SPLIT_AT)
    return {"fp32": fp32, "split": with_detection(root / "split.plain", root / "tiny_split")}


@contextlib.contextmanager
def offloaded(bundle: Path, deadline_s: float = 1.0) -> Iterator[Session]:
    """A session of the split `bundle` whose tail runs on an OffloadServer behind a Mosquitto on loopback, every
    frame offloaded (resplit off, so the split path is what is timed)."""
    from edgekit.offload.broker import Broker
    from edgekit.offload.client import OffloadClient
    from edgekit.offload.server import OffloadServer, tail_session

    with Broker() as broker, OffloadServer(tail_session(bundle), broker.start().url), \
            OffloadClient.for_bundle(load_bundle(bundle), broker.url) as client:
        yield load(bundle, transport=client, deadline_s=deadline_s, resplit=False)


def detector_row(name: str, session: Session, source: Path, frames: int) -> dict[str, Any]:
    """One detector streamed over the first `frames` frames: throughput, latency and boxes per frame."""
    counts: list[int] = []
    summary = stream(session, str(source), [lambda found: counts.append(len(found))], realtime=False,
                     max_frames=frames)
    return {"detector": name, "frames": summary.frames_processed, "fps": summary.fps,
            "latency_p50_ms": summary.latency_p50_ms, "latency_p99_ms": summary.latency_p99_ms,
            "inference_p50_ms": summary.inference_p50_ms, "boxes_per_frame": float(np.mean(counts)),
            "answers": summary.answers}


def hog_row(source: Path, frames: int) -> dict[str, Any]:
    """OpenCV's HOG people detector on the same frames at full size: each frame's detectMultiScale timed."""
    import cv2

    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    capture, latency, people = cv2.VideoCapture(str(source)), [], []
    start = time.monotonic()
    while len(latency) < frames:
        ok, frame = capture.read()
        if not ok:
            break
        began = time.monotonic()
        boxes, _ = hog.detectMultiScale(frame, winStride=(8, 8))
        latency.append(time.monotonic() - began)
        people.append(len(boxes))
    wall = time.monotonic() - start
    capture.release()
    p50, p99 = np.percentile(np.array(latency) * 1e3, [50, 99])
    return {"detector": "OpenCV HOG people (768x576, classical)", "frames": len(latency), "fps": len(latency) / wall,
            "latency_p50_ms": float(p50), "latency_p99_ms": float(p99), "inference_p50_ms": float(p50),
            "boxes_per_frame": float(np.mean(people)), "answers": None}


def measure(source: Path, frames: int) -> list[dict[str, Any]]:
    """Every row of the table (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tiny = tiny_detector_bundles(root, source)
        rows = [detector_row("tiny detector FP32 (ONNX)", load(tiny["fp32"]), source, frames),
                detector_row("tiny detector split, all here (INT8 head + FP32 tail)", load(tiny["split"]), source,
                             frames)]
        with offloaded(tiny["split"]) as session:
            rows.append(detector_row("tiny detector split, tail over MQTT (loopback)", session, source, frames))
        bf_int8 = blazeface_bundle.int8_bundle(root / "bf_int8")
        bf_split = blazeface_bundle.split(bf_int8, root / "bf_split")
        rows += [detector_row("BlazeFace FP32", load(blazeface_bundle.bundle(root / "bf_fp32")), source, frames),
                 detector_row("BlazeFace INT8", load(bf_int8), source, frames),
                 detector_row(f"BlazeFace INT8 split after {blazeface_bundle.SPLIT_AT}, all here", load(bf_split),
                              source, frames)]
        with offloaded(bf_split) as session:
            rows.append(detector_row("BlazeFace INT8 split, tail over MQTT (loopback)", session, source, frames))
        rows.append(hog_row(source, frames))
    return rows


def render(rows: list[dict[str, Any]], source: Path) -> str:
    """The table."""
    def answered(row: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v}" for k, v in row["answers"].items() if v) if row["answers"] else "-"

    body = [(r["detector"], str(r["frames"]), f"{r['fps']:.1f}", f"{r['latency_p50_ms']:.2f}",
             f"{r['latency_p99_ms']:.2f}", f"{r['inference_p50_ms']:.2f}", f"{r['boxes_per_frame']:.2f}", answered(r))
            for r in rows]
    return f"{source}, as fast as possible (pace fast), one process on this machine\n" + table(
        ("detector", "frames", "FPS", "latency p50 ms", "p99 ms", "inference p50 ms", "boxes/frame", "answered by"),
        body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200, help="frames per detector (default 200; vtest has 795)")
    parser.add_argument("--source", help="another video (default: vtest.avi, see vtest_path)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    source = Path(args.source) if args.source else vtest_path()
    if source is None:
        sys.exit("vtest.avi not found: run tools/setup.sh (it extracts the file from Debian's opencv-doc)")
    rows = measure(source, args.frames)
    print(json.dumps(rows, indent=2) if args.json else render(rows, source))


if __name__ == "__main__":
    main()
