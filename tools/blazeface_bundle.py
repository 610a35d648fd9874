"""BlazeFace short-range (tools/blazeface.py's float .tflite, real MediaPipe weights) as a detector bundle, FP32 or
INT8: pixels to [-1, 1], one label 'face', and the decoder of MediaPipe's face_detection_short_range graph.

    python tools/blazeface_bundle.py OUT [--target rpi4] [--int8 [--calib FOLDER]] [--split [LAYER]]
    then: edgekit run OUT --input face.png --annotate a.png

`--split` cuts the bundle in two (`edgekit.convert.split_tflite`): the head up to LAYER (default `SPLIT_AT`) for the
device, the tail for an edge server (`edgekit serve OUT`), and `edgekit stream OUT --broker URL` offloads the tail.

INT8 goes through the float-.tflite compile path (`compile_file`: ai-edge-quantizer, full integer, int8 input and
outputs), calibrated on a folder of images, by default the offline ones of `blazeface.calibration_images`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import blazeface

from edgekit.convert.compile_file import compile_file
from edgekit.convert.float_bundle import bundle_float_file
from edgekit.convert.split_tflite import split_tflite_bundle
from edgekit.formats.bundle import InputPreprocessing
from edgekit.formats.detection import DetectionSpec
from edgekit.runtime.anchors import BLAZEFACE_SHORT_RANGE
from edgekit.targets import load_link, load_target

DETECTION = DetectionSpec("ssd_anchors", ("regressors", "classificators"), score_threshold=blazeface.SCORE_THRESHOLD,
                          iou_threshold=blazeface.NMS_IOU, nms="weighted", max_detections=100,
                          anchors=BLAZEFACE_SHORT_RANGE)
PREPROCESSING = InputPreprocessing("NHWC", 3, blazeface.INPUT_SIZE, blazeface.INPUT_SIZE, 1 / 127.5, (1.0,), (1.0,))
CALIBRATION_IMAGES = 130  # all of blazeface.calibration_images: mirrored and cropped faces, other scenes, LFW 50+
SPLIT_AT = "add_31"  # the smallest single-tensor cut: 16x16x48 (12 KB in int8), before the two heads branch off


def bundle(out: str | Path, target: str = "rpi4", detection: DetectionSpec | None = DETECTION) -> Path:
    """The FP32 bundle at `out` (`detection` None: a plain bundle of the raw outputs)."""
    return bundle_float_file(blazeface.model_path(), out, target, PREPROCESSING, ("face",), detection)


def save_calibration(folder: str | Path, count: int = CALIBRATION_IMAGES) -> Path:
    """`count` of blazeface.calibration_images as PNGs in `folder` (what `compile --calib` reads)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(blazeface.calibration_images(count)):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder


def int8_bundle(out: str | Path, calibration: str | Path | None = None, target: str = "rpi4",
                evaluation: str | Path | None = None) -> Path:
    """The INT8 bundle at `out`, calibrated on the images in `calibration` (default: `save_calibration`'s), with
    the FP32 bundle's preprocessing ([0, 1] then mean 0.5, std 0.5: the same [-1, 1]), label and decoder."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = calibration if calibration is not None else save_calibration(Path(tmp) / "calib")
        compile_file(blazeface.model_path(), load_target(target), out, folder, evaluation, mean=(0.5,), std=(0.5,),
                     labels=("face",), detection=DETECTION)
    return Path(out)


def split(source: str | Path, out: str | Path, layer: str = SPLIT_AT, server: str = "x86-server",
          link: str = "wifi") -> Path:
    """The bundle `source` cut after `layer` into a split bundle at `out` (head here, tail on `server`)."""
    split_tflite_bundle(source, out, load_target(server), load_link(link), layer)
    return Path(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="bundle folder or .ekb file to write")
    parser.add_argument("--target", default="rpi4", help="target profile named in the manifest (default rpi4)")
    parser.add_argument("--int8", action="store_true", help="quantize to full integer (the float-.tflite compile)")
    parser.add_argument("--calib", metavar="FOLDER", help="with --int8: calibration images (default: the "
                                                          f"{CALIBRATION_IMAGES} offline ones of tools/blazeface.py)")
    parser.add_argument("--split", nargs="?", const=SPLIT_AT, metavar="LAYER",
                        help=f"a split bundle: head up to LAYER (default {SPLIT_AT}) here, the tail on a server")
    args = parser.parse_args()
    if args.calib is not None and not args.int8:
        parser.error("--calib goes with --int8")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "whole" if args.split else args.out
        written = int8_bundle(out, args.calib, args.target) if args.int8 else bundle(out, args.target)
        if args.split:
            written = split(written, args.out, args.split)
    print(f"BlazeFace {'INT8' if args.int8 else 'FP32'} {'split ' if args.split else ''}detector bundle written to "
          f"{written}")


if __name__ == "__main__":
    main()
