"""BlazeFace short-range (tools/blazeface.py's float .tflite, real MediaPipe weights) as an FP32 detector bundle:
pixels to [-1, 1], one label 'face', and the decoder of MediaPipe's face_detection_short_range graph.

    python tools/blazeface_bundle.py OUT [--target rpi4]      then: edgekit run OUT --input face.png --annotate a.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import blazeface

from edgekit.convert.float_bundle import bundle_float_file
from edgekit.formats.bundle import InputPreprocessing
from edgekit.formats.detection import DetectionSpec
from edgekit.runtime.anchors import BLAZEFACE_SHORT_RANGE

DETECTION = DetectionSpec("ssd_anchors", ("regressors", "classificators"), score_threshold=blazeface.SCORE_THRESHOLD,
                          iou_threshold=blazeface.NMS_IOU, nms="weighted", max_detections=100,
                          anchors=BLAZEFACE_SHORT_RANGE)
PREPROCESSING = InputPreprocessing("NHWC", 3, blazeface.INPUT_SIZE, blazeface.INPUT_SIZE, 1 / 127.5, (1.0,), (1.0,))


def bundle(out: str | Path, target: str = "rpi4", detection: DetectionSpec | None = DETECTION) -> Path:
    """The FP32 bundle at `out` (`detection` None: a plain bundle of the raw outputs)."""
    return bundle_float_file(blazeface.model_path(), out, target, PREPROCESSING, ("face",), detection)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="bundle folder or .ekb file to write")
    parser.add_argument("--target", default="rpi4", help="target profile named in the manifest (default rpi4)")
    args = parser.parse_args()
    print(f"BlazeFace FP32 detector bundle written to {bundle(args.out, args.target)}")


if __name__ == "__main__":
    main()
