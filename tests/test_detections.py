"""Detections as a task: MediaPipe's anchors computed, per-class NMS, grid decoding by hand, the manifest's
`detection` record validated, and BlazeFace (real MediaPipe weights) as an FP32 bundle finding the astronaut's face
exactly as a raw LiteRT run decoded by tools/blazeface.py does."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import blazeface  # tools/ (on the path through conftest): the model file, MediaPipe's decoding written out
import blazeface_bundle  # tools/: the FP32 detector bundle of it
import numpy as np
import pytest
from helpers import run

from edgekit.convert.float_bundle import bundle_float_file
from edgekit.errors import BundleError
from edgekit.formats.bundle import InputPreprocessing, Manifest, load_bundle
from edgekit.formats.detection import DetectionSpec
from edgekit.runtime import load
from edgekit.runtime.anchors import BLAZEFACE_SHORT_RANGE, ssd_anchors
from edgekit.runtime.backends import FloatRunner, open_model
from edgekit.runtime.detections import Decoder, nms


def test_blazeface_anchors_are_mediapipes_896() -> None:
    anchors = ssd_anchors(BLAZEFACE_SHORT_RANGE)
    assert anchors.shape == (896, 4) and BLAZEFACE_SHORT_RANGE.count() == 896
    np.testing.assert_array_equal(anchors[:, :2], blazeface.anchors())
    assert (anchors[:, 2:] == 1.0).all()  # fixed anchor size


def test_anchor_sizes_follow_the_scale_and_aspect_ratios() -> None:
    scheme = replace(BLAZEFACE_SHORT_RANGE, strides=(8, 16), min_scale=0.2, max_scale=0.6, aspect_ratios=(1.0, 2.0),
                     fixed_anchor_size=False)
    anchors = ssd_anchors(scheme)
    assert len(anchors) == scheme.count() == 16 * 16 * 3 + 8 * 8 * 3
    # first cell of the stride-8 grid: scale 0.2 at aspect 1 and 2, then sqrt(0.2 * 0.6) at aspect 1
    expected = [(1 / 32, 1 / 32, 0.2, 0.2), (1 / 32, 1 / 32, 0.2 * math.sqrt(2), 0.2 / math.sqrt(2)),
                (1 / 32, 1 / 32, math.sqrt(0.12), math.sqrt(0.12))]
    np.testing.assert_allclose(anchors[:3], expected, rtol=1e-6)
    # first cell of the stride-16 grid (the last layer): scale 0.6, interpolated with 1.0
    np.testing.assert_allclose(anchors[768 + 2], (1 / 16, 1 / 16, math.sqrt(0.6), math.sqrt(0.6)), rtol=1e-6)


def test_nms_suppresses_within_a_class_only() -> None:
    boxes = np.array([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.52, 0.5], [0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]])
    scores = np.array([0.6, 0.9, 0.8, 0.7])
    classes = np.array([0, 0, 1, 0])
    kept, kept_scores, kept_classes = nms(boxes, scores, classes, iou_threshold=0.5, max_detections=10)
    np.testing.assert_array_equal(kept, boxes[[1, 2, 3]])  # box 0 overlaps box 1 (IoU 0.9) of its own class
    np.testing.assert_array_equal(kept_scores, [0.9, 0.8, 0.7])
    np.testing.assert_array_equal(kept_classes, [0, 1, 0])
    merged, merged_scores, _ = nms(boxes, scores, classes, 0.5, max_detections=1, weighted=True)
    np.testing.assert_allclose(merged[0], (boxes[1] * 0.9 + boxes[0] * 0.6) / 1.5, rtol=1e-6)
    assert merged_scores.tolist() == [0.9]


def _grid_spec(layout: str, outputs: tuple[str, ...] = ("head",)) -> DetectionSpec:
    return DetectionSpec("grid", outputs, 0.5, 0.45, "hard", 10, layout=layout)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_grid_decoding_by_hand(layout: str) -> None:
    """One confident cell (row 1, column 2 of 4x4), class 1 of 2: centre ((2 + s(x)) / 4, (1 + s(y)) / 4), width
    s(w) and height s(h) of the image (s: the sigmoid); score s(8) * s(8)."""
    head = np.full((1, 7, 4, 4), -8.0, np.float32)  # x, y, w, h, objectness, 2 classes
    head[0, :4, 1, 2] = (1.0, -1.0, 0.5, -0.5)
    head[0, 4, 1, 2] = head[0, 6, 1, 2] = 8.0
    if layout == "NHWC":
        head = head.transpose(0, 2, 3, 1)
    found = Decoder(_grid_spec(layout), ("person", "car"))({"head": head})
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    cx, cy, w, h = (2 + s(1.0)) / 4, (1 + s(-1.0)) / 4, s(0.5), s(-0.5)
    np.testing.assert_allclose(found.boxes, [[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]], atol=1e-6)
    np.testing.assert_allclose(found.scores, [(1 / (1 + math.exp(-8))) ** 2], rtol=1e-6)
    assert found.class_ids.tolist() == [1] and found.labels == ("car",)
    assert len(Decoder(replace(_grid_spec(layout), score_threshold=0.9995))({"head": head})) == 0


def test_several_grid_heads_decode_together() -> None:
    """An FPN's heads (4x5 and 8x10, NHWC): a confident cell in each gives one box each, in its own grid's units."""
    coarse, fine = np.full((1, 4, 5, 6), -8.0, np.float32), np.full((1, 8, 10, 6), -8.0, np.float32)
    coarse[0, 0, 0, :4] = fine[0, 7, 9, :4] = 0.0
    coarse[0, 0, 0, 4:] = (9.0, 9.0)
    fine[0, 7, 9, 4:] = (8.0, 8.0)
    found = Decoder(_grid_spec("NHWC", ("p5", "p3")))({"p3": fine, "p5": coarse})
    # centres (0.5 / 5, 0.5 / 4) and (9.5 / 10, 7.5 / 8), half the image wide and high, clipped to the image
    np.testing.assert_allclose(found.boxes, [[0.0, 0.0, 0.1 + 0.25, 0.125 + 0.25],
                                             [0.95 - 0.25, 0.9375 - 0.25, 1.0, 1.0]], atol=1e-6)
    assert found.labels == ("class 0", "class 0")


def _manifest(tmp_path: Path) -> dict:
    return json.loads((blazeface_bundle.bundle(tmp_path / "bf") / "manifest.json").read_text())


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(outputs=["regressors", "nope"]), "'detection.outputs[1]' 'nope' is no output"),
    (lambda d: d["anchors"].update(strides=[8, 16]), "decodes 640 anchors"),
    (lambda d: d.update(nms="soft"), "'detection.nms' must be one of hard, weighted"),
    (lambda d: d.update(score_threshold=1.5), "'detection.score_threshold' must be in [0, 1]"),
    (lambda d: d.update(extra=1), "unknown key 'detection.extra'"),
    (lambda d: d.update(grid={"layout": "NCHW"}), "takes 'outputs' [boxes, scores] and 'grid' null"),
    (lambda d: d["anchors"].pop("score_clip"), "missing key 'detection.anchors.score_clip'"),
])
def test_a_bad_detection_record_refuses_the_manifest(tmp_path: Path, change, message: str) -> None:
    data = _manifest(tmp_path)
    assert Manifest.from_dict(data).detection == blazeface_bundle.DETECTION  # round trip
    change(data["detection"])
    with pytest.raises(BundleError) as raised:
        Manifest.from_dict(data)
    assert message in str(raised.value)
    del data["detection"]  # optional: a bundle from before detection records loads
    assert Manifest.from_dict(data).detection is None
    data["detection"] = None
    with pytest.raises(BundleError, match="'detection' must be an object, found null"):
        Manifest.from_dict(data)


@pytest.fixture(scope="module")
def face_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return blazeface_bundle.bundle(tmp_path_factory.mktemp("bf") / "blazeface")


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("images") / "astronaut.png"
    Image.fromarray(blazeface.test_image("astronaut")).save(path)
    return path


def test_blazeface_finds_the_astronauts_face_as_a_raw_litert_run_does(face_bundle: Path, astronaut: Path) -> None:
    session = load(face_bundle)
    x = session.preprocess_image(astronaut)
    found = Decoder(session.manifest.detection, session.labels)(session.run(x))
    raw = FloatRunner(open_model(blazeface.model_path())).run_all(x)
    boxes, scores = blazeface.decode(raw[0][0], raw[1][0])  # MediaPipe's decoding, written out independently
    np.testing.assert_allclose(found.boxes, np.clip(boxes, 0, 1), atol=1e-6)
    np.testing.assert_allclose(found.scores, scores, rtol=1e-6)
    assert len(found) == 1 and found.labels == ("face",) and found.scores[0] > 0.9
    # loosely on the face: astronaut.png's face spans about x 0.35..0.53, y 0.16..0.34 of the 512x512 image
    x_min, y_min, x_max, y_max = found.boxes[0]
    assert 0.38 < (x_min + x_max) / 2 < 0.50 and 0.18 < (y_min + y_max) / 2 < 0.32
    assert 0.12 < x_max - x_min < 0.30 and 0.12 < y_max - y_min < 0.30


def test_edgekit_run_prints_detections_and_annotates(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                     face_bundle: Path, astronaut: Path) -> None:
    from PIL import Image

    code, out, err = run(capsys, "run", str(face_bundle), "--input", str(astronaut), "--annotate",
                         str(tmp_path / "boxes.png"), "--json")
    assert code == 0, err
    (detection,) = json.loads(out)["results"][0]["detections"]
    assert detection["label"] == "face" and detection["score"] > 0.9
    drawn = np.asarray(Image.open(tmp_path / "boxes.png"))
    plain = np.asarray(Image.open(astronaut))
    changed = np.argwhere((drawn != plain).any(axis=2))
    x_min, y_min, x_max, y_max = (v * 512 for v in detection["box"])
    assert len(changed) > 100  # the box's outline and its label, near the box
    assert changed[:, 1].min() >= x_min - 2 and changed[:, 1].max() <= x_max + 2
    assert changed[:, 0].min() >= y_min - 14 and changed[:, 0].max() <= y_max + 2
    code, out, err = run(capsys, "run", str(face_bundle), "--input", str(astronaut))
    assert code == 0 and "detections: 1:" in out and "face" in out


def test_annotating_a_bundle_that_is_no_detector_is_a_one_line_error(capsys: pytest.CaptureFixture,
                                                                     tmp_path: Path, astronaut: Path) -> None:
    bundle = blazeface_bundle.bundle(tmp_path / "plain", detection=None)
    assert load_bundle(bundle).manifest.detection is None
    code, out, err = run(capsys, "run", str(bundle), "--input", str(astronaut), "--annotate", str(tmp_path / "a.png"))
    assert code == 2 and out == "" and err.count("\n") == 1 and "needs a detector bundle" in err


def test_the_tiny_detector_decodes_through_a_bundle(tmp_path: Path) -> None:
    """models/detector.py's grid head (untrained) exported to ONNX: its (1, 6, 8, 8) output fits a grid record."""
    from helpers import export_onnx

    from edgekit.models import create_model

    model = create_model("tiny_detector").eval()
    path = export_onnx(model, tmp_path / "tiny_detector.onnx")
    import onnx

    name = onnx.load(str(path)).graph.output[0].name
    spec = replace(_grid_spec("NCHW", (name,)), score_threshold=0.0)
    bundle = bundle_float_file(path, tmp_path / "b", "rpi4", InputPreprocessing("NCHW", 3, 128, 128, 1 / 255, (0.0,),
                                                                                 (1.0,)), ("thing",), spec)
    session = load(bundle)
    x = np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32)
    found = Decoder(session.manifest.detection, session.labels)({name: session.run(x)})
    assert 1 <= len(found) <= 10 and ((found.boxes >= 0) & (found.boxes <= 1)).all()
    assert (np.diff(found.scores) <= 0).all() and set(found.labels) == {"thing"}
