"""The manifest's optional `detection`: how a detector's raw outputs become boxes, typed and validated.

Two decoders: `ssd_anchors` (MediaPipe's SSD anchor scheme, BlazeFace) and `grid` (one YOLO-style head per
output, the tiny detector in models/detector.py and FPN heads). `parse_detection` checks the record against the
last stage's outputs (names, shapes, anchor count), so a bundle whose decoder cannot fit its model is refused at
load. Standard library only, like bundle.py. Format: docs/bundle.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edgekit.errors import BundleError
from edgekit.formats.bundle import (
    LAYOUTS,
    TensorInfo,
    _array,
    _boolean,
    _integer,
    _kind,
    _number,
    _object,
    _string,
)

DECODERS = ("ssd_anchors", "grid")
NMS_KINDS = ("hard", "weighted")  # greedy suppression; weighted: MediaPipe's score-weighted cluster average
DETECTION_KEYS = ("decoder", "outputs", "score_threshold", "iou_threshold", "nms", "max_detections", "anchors",
                  "grid")
ANCHOR_KEYS = ("input_height", "input_width", "strides", "min_scale", "max_scale", "aspect_ratios",
               "interpolated_scale_aspect_ratio", "anchor_offset", "fixed_anchor_size",
               "reduce_boxes_in_lowest_layer", "coord_scale", "score_clip")
GRID_KEYS = ("layout",)
GRID_BOX_VALUES = 5  # per cell: x, y, w, h, objectness, then one logit per class


@dataclass(frozen=True)
class AnchorScheme:
    """MediaPipe's SsdAnchorsCalculator options plus TensorsToDetectionsCalculator's box scales."""

    input_height: int
    input_width: int
    strides: tuple[int, ...]  # one per layer; consecutive layers of one stride share a grid
    min_scale: float
    max_scale: float
    aspect_ratios: tuple[float, ...]
    interpolated_scale_aspect_ratio: float  # > 0 adds one anchor per cell at the interpolated scale
    anchor_offset: float  # of the anchor centre within its cell, x and y
    fixed_anchor_size: bool  # anchor width and height 1 (BlazeFace): raw sizes are fractions of the input
    reduce_boxes_in_lowest_layer: bool
    coord_scale: tuple[float, float, float, float]  # x, y, w, h divisors of the raw box values
    score_clip: float  # logits clipped to +-this before the sigmoid

    def grids(self) -> list[tuple[int, range]]:
        """Each grid's stride and layers: consecutive layers of one stride share a grid."""
        grids, layer = [], 0
        while layer < len(self.strides):
            end = layer
            while end < len(self.strides) and self.strides[end] == self.strides[layer]:
                end += 1
            grids.append((self.strides[layer], range(layer, end)))
            layer = end
        return grids

    def per_cell(self, layers: range) -> int:
        """Anchors per cell of a grid of these layers."""
        return sum(3 if layer == 0 and self.reduce_boxes_in_lowest_layer
                   else len(self.aspect_ratios) + (self.interpolated_scale_aspect_ratio > 0) for layer in layers)

    def count(self) -> int:
        """How many anchors the scheme gives: what the model's box and score outputs must have."""
        return sum(math.ceil(self.input_height / stride) * math.ceil(self.input_width / stride) * self.per_cell(layers)
                   for stride, layers in self.grids())

    def to_dict(self) -> dict:
        """The JSON object of this scheme."""
        return {"input_height": self.input_height, "input_width": self.input_width, "strides": list(self.strides),
                "min_scale": self.min_scale, "max_scale": self.max_scale, "aspect_ratios": list(self.aspect_ratios),
                "interpolated_scale_aspect_ratio": self.interpolated_scale_aspect_ratio,
                "anchor_offset": self.anchor_offset, "fixed_anchor_size": self.fixed_anchor_size,
                "reduce_boxes_in_lowest_layer": self.reduce_boxes_in_lowest_layer,
                "coord_scale": list(self.coord_scale), "score_clip": self.score_clip}

    @classmethod
    def from_dict(cls, data: Any, where: str, key: str = "detection.anchors") -> AnchorScheme:
        """Validate the anchors object strictly."""
        data = _object(data, where, key, ANCHOR_KEYS)
        height, width = (_integer(data[k], where, f"{key}.{k}", 1) for k in ("input_height", "input_width"))
        strides = tuple(_integer(s, where, f"{key}.strides[{i}]", 1)
                        for i, s in enumerate(_array(data["strides"], where, f"{key}.strides")))
        ratios = tuple(_number(r, where, f"{key}.aspect_ratios[{i}]", positive=True)
                       for i, r in enumerate(_array(data["aspect_ratios"], where, f"{key}.aspect_ratios")))
        scale = _array(data["coord_scale"], where, f"{key}.coord_scale")
        if len(scale) != 4:
            raise BundleError(f"{where}: '{key}.coord_scale' must hold 4 numbers (x, y, w, h), found {len(scale)}")
        coord = tuple(_number(v, where, f"{key}.coord_scale[{i}]", positive=True) for i, v in enumerate(scale))
        interpolated = _number(data["interpolated_scale_aspect_ratio"], where,
                               f"{key}.interpolated_scale_aspect_ratio")
        return cls(height, width, strides, _number(data["min_scale"], where, f"{key}.min_scale", positive=True),
                   _number(data["max_scale"], where, f"{key}.max_scale", positive=True), ratios, interpolated,
                   _number(data["anchor_offset"], where, f"{key}.anchor_offset"),
                   _boolean(data["fixed_anchor_size"], where, f"{key}.fixed_anchor_size"),
                   _boolean(data["reduce_boxes_in_lowest_layer"], where, f"{key}.reduce_boxes_in_lowest_layer"),
                   (coord[0], coord[1], coord[2], coord[3]),
                   _number(data["score_clip"], where, f"{key}.score_clip", positive=True))


@dataclass(frozen=True)
class DetectionSpec:
    """How the last stage's outputs decode into boxes, and the thresholds that keep them.

    `score_threshold`: a box is kept when its score is >= it (MediaPipe's rule). `iou_threshold`: suppression
    removes (hard) or merges into the top box (weighted) every box of the same class overlapping it by more.
    """

    decoder: str
    outputs: tuple[str, ...]  # ssd_anchors: (boxes, scores); grid: one or more heads
    score_threshold: float
    iou_threshold: float
    nms: str
    max_detections: int
    anchors: AnchorScheme | None = None  # ssd_anchors only
    layout: str | None = None  # grid only: NCHW (torch's) or NHWC (channels last) heads

    def to_dict(self) -> dict:
        """The JSON object of this record."""
        return {"decoder": self.decoder, "outputs": list(self.outputs), "score_threshold": self.score_threshold,
                "iou_threshold": self.iou_threshold, "nms": self.nms, "max_detections": self.max_detections,
                "anchors": None if self.anchors is None else self.anchors.to_dict(),
                "grid": None if self.layout is None else {"layout": self.layout}}

    @classmethod
    def from_dict(cls, data: Any, where: str, key: str = "detection") -> DetectionSpec:
        """Validate the record on its own (see `parse_detection` for the check against the model's outputs)."""
        data = _object(data, where, key, DETECTION_KEYS)
        decoder = _string(data["decoder"], where, f"{key}.decoder", DECODERS)
        names = tuple(_string(n, where, f"{key}.outputs[{i}]")
                      for i, n in enumerate(_array(data["outputs"], where, f"{key}.outputs")))
        score = _number(data["score_threshold"], where, f"{key}.score_threshold")
        iou = _number(data["iou_threshold"], where, f"{key}.iou_threshold")
        for name, value in (("score_threshold", score), ("iou_threshold", iou)):
            if not 0.0 <= value <= 1.0:
                raise BundleError(f"{where}: '{key}.{name}' must be in [0, 1], found {value}")
        nms = _string(data["nms"], where, f"{key}.nms", NMS_KINDS)
        most = _integer(data["max_detections"], where, f"{key}.max_detections", 1)
        anchors, layout = None, None
        if decoder == "ssd_anchors":
            if len(names) != 2 or data["grid"] is not None:
                raise BundleError(f"{where}: '{key}' with decoder ssd_anchors takes 'outputs' [boxes, scores] and "
                                  f"'grid' null, found {len(names)} outputs and grid {_kind(data['grid'])}")
            anchors = AnchorScheme.from_dict(data["anchors"], where, f"{key}.anchors")
        else:
            if data["anchors"] is not None:
                raise BundleError(f"{where}: '{key}.anchors' must be null for decoder grid")
            grid = _object(data["grid"], where, f"{key}.grid", GRID_KEYS)
            layout = _string(grid["layout"], where, f"{key}.grid.layout", LAYOUTS)
        return cls(decoder, names, score, iou, nms, most, anchors, layout)


def parse_detection(data: Any, where: str, outputs: tuple[TensorInfo, ...]) -> DetectionSpec:
    """The `detection` record, checked against the last stage's `outputs`: every named output exists and has
    the shape its decoder reads."""
    spec = DetectionSpec.from_dict(data, where)
    by_name = {o.name: o for o in outputs}
    for i, name in enumerate(spec.outputs):
        if name not in by_name:
            raise BundleError(f"{where}: 'detection.outputs[{i}]' {name!r} is no output of the last stage "
                              f"(outputs: {', '.join(by_name)})")
    shapes = [by_name[name].shape for name in spec.outputs]
    if spec.anchors is not None:
        count, (boxes, scores) = spec.anchors.count(), shapes
        if len(boxes) < 2 or boxes[-2] != count or boxes[-1] < 4 or math.prod(scores) != count:
            raise BundleError(f"{where}: 'detection' decodes {count} anchors: output {spec.outputs[0]!r} must be "
                              f"(..., {count}, >=4) and {spec.outputs[1]!r} hold {count} scores, found "
                              f"{list(boxes)} and {list(scores)}")
    else:
        channel = 1 if spec.layout == "NCHW" else 3
        for name, shape in zip(spec.outputs, shapes):
            if len(shape) != 4 or shape[0] != 1 or shape[channel] <= GRID_BOX_VALUES:
                raise BundleError(f"{where}: 'detection' grid head {name!r} must be 4-D {spec.layout} with batch 1 "
                                  f"and more than {GRID_BOX_VALUES} channels (x, y, w, h, objectness, classes), "
                                  f"found {list(shape)}")
        classes = {shape[channel] for shape in shapes}
        if len(classes) != 1:
            raise BundleError(f"{where}: 'detection' grid heads must have the same channel count, found "
                              f"{sorted(classes)}")
    return spec
