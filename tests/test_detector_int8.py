"""BlazeFace INT8 (the float-.tflite compile path, tools/blazeface_bundle.py --int8) as a detector bundle: its
manifest carries the decoder, so `edgekit run` and `stream` give boxes, and they sit on the FP32 bundle's."""

from __future__ import annotations

import json
from pathlib import Path

import blazeface  # tools/, on the path through conftest
import blazeface_bundle
import cv2  # the video extra, in the dev extra
import numpy as np
import pytest
from helpers import run

from edgekit.formats.boxes import box_iou
from edgekit.runtime import load
from edgekit.runtime.detections import Detections
from edgekit.runtime.stream import stream


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("blazeface")
    return {"fp32": blazeface_bundle.bundle(root / "fp32"), "int8": blazeface_bundle.int8_bundle(root / "int8")}


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("images") / "astronaut.png"
    Image.fromarray(blazeface.test_image("astronaut")).save(path)
    return path


def _half_step(bundle: Path) -> float:
    """Half an output step of the INT8 box regressors, in image fractions: the rounding of one box value."""
    regressors = load(bundle).manifest.stages[0].outputs[0]
    assert regressors.name == "regressors" and regressors.dtype == "int8" and regressors.scale is not None
    return regressors.scale / blazeface.COORD_SCALE / 2


def _iou_floor(box: np.ndarray, edge: float) -> float:
    """The lowest IoU of a box with one whose every edge is within `edge` of its own (grown or shrunk)."""
    w, h = box[2] - box[0], box[3] - box[1]
    return min(w * h / ((w + 2 * edge) * (h + 2 * edge)), (w - 2 * edge) * (h - 2 * edge) / (w * h))


def test_the_int8_bundle_finds_the_astronauts_face_where_fp32_does(capsys: pytest.CaptureFixture,
                                                                   bundles: dict[str, Path], astronaut: Path) -> None:
    found = {}
    for kind, bundle in bundles.items():
        code, out, err = run(capsys, "run", str(bundle), "--input", str(astronaut), "--json")
        assert code == 0, err
        (found[kind],) = json.loads(out)["results"][0]["detections"]
    stage = load(bundles["int8"]).manifest.stages[0]
    assert [t.dtype for t in (*stage.inputs, *stage.outputs)] == ["int8"] * 3  # full integer, decoded on the host
    fp32, int8 = (np.array([found[k]["box"]], np.float32) for k in ("fp32", "int8"))
    # every edge within half an output step of the regressors (~0.0074 of the image; measured ~0.0015: weighted
    # suppression averages the face's overlapping anchors), hence an IoU above that step's floor (~0.85)
    edge = _half_step(bundles["int8"])
    assert np.abs(int8 - fp32).max() <= edge
    iou = float(box_iou(fp32, int8)[0, 0])
    assert iou >= _iou_floor(fp32[0], edge)
    # the score within one step of the classificator's int8 scale through the sigmoid's steepest slope, 0.25
    # (as tests/test_compile_files.py bounds it); measured 0.934 vs 0.922
    score_error = abs(found["int8"]["score"] - found["fp32"]["score"])
    classificators = stage.outputs[1]
    assert classificators.scale is not None and score_error <= 0.25 * classificators.scale
    assert found["int8"]["label"] == "face" and found["int8"]["score"] >= blazeface.SCORE_THRESHOLD
    print(f"BlazeFace astronaut: FP32 score {found['fp32']['score']:.4f}, INT8 {found['int8']['score']:.4f} "
          f"(diff {score_error:.4f}), IoU {iou:.4f}")


def test_stream_decodes_int8_boxes_frame_by_frame_as_fp32_does(tmp_path: Path, bundles: dict[str, Path]) -> None:
    """Four frames (the face in three of them, one plain grey) streamed through each bundle."""
    clip = tmp_path / "clip.avi"
    bgr = np.ascontiguousarray(blazeface.test_image("astronaut")[:, :, ::-1])
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 30, (512, 512))
    for i in range(4):
        writer.write(np.full_like(bgr, 128) if i == 2 else np.ascontiguousarray(np.roll(bgr, 16 * i, axis=1)))
    writer.release()
    frames: dict[str, list[Detections]] = {}
    for kind, bundle in bundles.items():
        frames[kind] = []
        summary = stream(load(bundle), str(clip), [frames[kind].append], realtime=False)
        assert summary.frames_processed == 4 and summary.ended == "end of source"
    edge = _half_step(bundles["int8"])
    assert [len(d) for d in frames["int8"]] == [len(d) for d in frames["fp32"]] == [1, 1, 0, 1]
    for fp32, int8 in zip(frames["fp32"], frames["int8"]):
        if len(fp32):
            assert float(box_iou(fp32.boxes, int8.boxes)[0, 0]) >= _iou_floor(fp32.boxes[0], edge)
