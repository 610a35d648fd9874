"""Detections as a task: a detector's raw outputs -> boxes, scores, classes and labels, with numpy only.

A `Decoder` is built once from the manifest's `detection` record (formats/detection.py) and turns each frame's
outputs into `Detections`. Boxes are (x_min, y_min, x_max, y_max) normalised to 0..1 of the model's input
(the whole image, which preprocessing resizes without cropping), clipped to the image.

- `ssd_anchors` (BlazeFace): box values x, y, w, h first in each row, divided by the scheme's `coord_scale`,
  times the anchor's size, centres offset from the anchor's; score = sigmoid(logit clipped to +-score_clip).
- `grid` (models/detector.py, FPN heads): per cell x, y, w, h, objectness, class logits; centre = (cell +
  sigmoid(x or y)) / grid size, width and height = sigmoid(w or h) of the image; score = sigmoid(objectness) *
  sigmoid(class logit), the best class per cell.

Then boxes scoring below `score_threshold` are dropped (>= keeps, as MediaPipe does) and `nms` suppresses within
each class: greedy by score, a box overlapping a kept one by IoU > `iou_threshold` is dropped (hard) or merged
into it (weighted: the score-weighted mean box, with the top score, as MediaPipe's BlazeFace graph does), up to
`max_detections`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.errors import InputError
from edgekit.formats.boxes import box_iou
from edgekit.formats.detection import DetectionSpec
from edgekit.runtime.anchors import ssd_anchors


@dataclass(frozen=True)
class Detections:
    """One frame's boxes (K, 4) normalised x_min, y_min, x_max, y_max; scores (K,), best first; class ids (K,)
    and their labels."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.scores)

    def to_list(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per box: label, class id, score and box."""
        return [{"label": label, "class_id": int(c), "score": float(s), "box": [float(v) for v in b]}
                for label, c, s, b in zip(self.labels, self.class_ids, self.scores, self.boxes)]

    @classmethod
    def empty(cls) -> Detections:
        """No boxes."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), ())


def nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float,
        max_detections: int, weighted: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy per-class suppression (see the module docstring): kept boxes, scores and class ids, best first.

    One IoU matrix for all boxes (classes set 2 apart so that none overlaps another class's), then one
    vector step per kept box."""
    order = np.argsort(-scores, kind="stable")
    boxes, scores, class_ids = boxes[order], scores[order], class_ids[order]
    shifted = boxes + 2.0 * class_ids[:, None]  # normalised boxes of different classes never intersect
    overlap = box_iou(shifted, shifted) > iou_threshold
    alive = np.ones(len(scores), bool)
    kept: list[int] = []
    merged = []
    for i in range(len(scores)):
        if not alive[i]:
            continue
        cluster = alive & overlap[i]
        cluster[i] = True
        alive &= ~cluster
        kept.append(i)
        if weighted:
            weights = scores[cluster] / scores[cluster].sum()
            merged.append((boxes[cluster] * weights[:, None]).sum(axis=0))
        if len(kept) == max_detections:
            break
    out = np.array(merged, np.float32).reshape(-1, 4) if weighted else boxes[kept]
    return out, scores[kept], class_ids[kept]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class Decoder:
    """A bundle's `detection` record ready to decode frames: anchors computed once, labels by class id."""

    def __init__(self, spec: DetectionSpec, labels: tuple[str, ...] | None = None) -> None:
        self.spec = spec
        self.labels = labels
        self.anchors = ssd_anchors(spec.anchors) if spec.anchors is not None else None

    def __call__(self, outputs: Mapping[str, np.ndarray]) -> Detections:
        """One frame's outputs (name -> array, as `Session.run` gives) as its detections."""
        missing = [name for name in self.spec.outputs if name not in outputs]
        if missing:
            raise InputError(f"detection decoding needs output(s) {', '.join(missing)}; got {', '.join(outputs)}")
        arrays = [np.asarray(outputs[name], np.float32) for name in self.spec.outputs]
        boxes, scores, class_ids = self._ssd(*arrays) if self.anchors is not None else self._grid(arrays)
        keep = scores >= self.spec.score_threshold
        boxes, scores, class_ids = nms(boxes[keep], scores[keep], class_ids[keep], self.spec.iou_threshold,
                                       self.spec.max_detections, self.spec.nms == "weighted")
        return Detections(np.clip(boxes, 0.0, 1.0), scores.astype(np.float32), class_ids, self._names(class_ids))

    def _names(self, class_ids: np.ndarray) -> tuple[str, ...]:
        labels = self.labels or ()
        return tuple(labels[c] if c < len(labels) and labels[c] else f"class {c}" for c in class_ids.tolist())

    def _ssd(self, raw: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert self.anchors is not None and self.spec.anchors is not None
        scheme, anchors = self.spec.anchors, self.anchors
        raw = raw.reshape(len(anchors), -1)
        x_scale, y_scale, w_scale, h_scale = scheme.coord_scale
        size = anchors[:, 2:]
        centre = anchors[:, :2] + raw[:, :2] / np.array([x_scale, y_scale], np.float32) * size
        extent = raw[:, 2:4] / np.array([w_scale, h_scale], np.float32) * size
        clipped = np.clip(logits.reshape(-1).astype(np.float64), -scheme.score_clip, scheme.score_clip)
        boxes = np.concatenate([centre - extent / 2, centre + extent / 2], axis=1)
        return boxes, _sigmoid(clipped), np.zeros(len(anchors), np.int64)

    def _grid(self, heads: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        boxes, scores, class_ids = [], [], []
        for head in heads:
            cells = head[0].transpose(1, 2, 0) if self.spec.layout == "NCHW" else head[0]  # (H, W, C)
            rows, cols = cells.shape[:2]
            values = _sigmoid(cells.astype(np.float64))
            y, x = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
            centre = np.stack([(x + values[..., 0]) / cols, (y + values[..., 1]) / rows], axis=-1).reshape(-1, 2)
            extent = values[..., 2:4].reshape(-1, 2)
            per_class = values[..., 4:5] * values[..., 5:]
            best = per_class.reshape(rows * cols, -1).argmax(axis=1)
            boxes.append(np.concatenate([centre - extent / 2, centre + extent / 2], axis=1))
            scores.append(per_class.reshape(rows * cols, -1)[np.arange(rows * cols), best])
            class_ids.append(best)
        return np.concatenate(boxes), np.concatenate(scores), np.concatenate(class_ids).astype(np.int64)
