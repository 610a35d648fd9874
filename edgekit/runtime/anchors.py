"""SSD anchors computed from the manifest's scheme, as MediaPipe's SsdAnchorsCalculator lays them out (no table
ships in a bundle), and the presets of the detectors edgekit knows."""

from __future__ import annotations

import math

import numpy as np

from edgekit.formats.detection import AnchorScheme

# MediaPipe's face_detection_short_range graph: 128x128, 896 anchors of fixed size.
BLAZEFACE_SHORT_RANGE = AnchorScheme(
    input_height=128, input_width=128, strides=(8, 16, 16, 16), min_scale=0.1484375, max_scale=0.75,
    aspect_ratios=(1.0,), interpolated_scale_aspect_ratio=1.0, anchor_offset=0.5, fixed_anchor_size=True,
    reduce_boxes_in_lowest_layer=False, coord_scale=(128.0, 128.0, 128.0, 128.0), score_clip=100.0)


def _scale(scheme: AnchorScheme, layer: int) -> float:
    """Anchor scale of `layer`: min to max scale, linearly over the layers (the middle for one layer)."""
    count = len(scheme.strides)
    if count == 1:
        return (scheme.min_scale + scheme.max_scale) / 2
    return scheme.min_scale + (scheme.max_scale - scheme.min_scale) * layer / (count - 1)


def _cell_sizes(scheme: AnchorScheme, layers: range) -> list[tuple[float, float]]:
    """(width, height) of the anchors of one cell of the grid these layers share."""
    sizes = []
    for layer in layers:
        scale = _scale(scheme, layer)
        if layer == 0 and scheme.reduce_boxes_in_lowest_layer:
            pairs = [(1.0, 0.1), (2.0, scale), (0.5, scale)]
        else:
            pairs = [(ratio, scale) for ratio in scheme.aspect_ratios]
            if scheme.interpolated_scale_aspect_ratio > 0:
                following = 1.0 if layer == len(scheme.strides) - 1 else _scale(scheme, layer + 1)
                pairs.append((scheme.interpolated_scale_aspect_ratio, math.sqrt(scale * following)))
        sizes += [(s * math.sqrt(r), s / math.sqrt(r)) for r, s in pairs]
    return sizes


def ssd_anchors(scheme: AnchorScheme) -> np.ndarray:
    """Every anchor as (x_centre, y_centre, width, height), normalised: grid by grid, row by row, cell by cell,
    the anchors of a cell together (the order of the model's box outputs)."""
    parts = []
    for stride, layers in scheme.grids():
        rows, cols = math.ceil(scheme.input_height / stride), math.ceil(scheme.input_width / stride)
        sizes = np.array(_cell_sizes(scheme, layers), np.float32)
        if scheme.fixed_anchor_size:
            sizes[:] = 1.0
        y, x = np.meshgrid((np.arange(rows) + scheme.anchor_offset) / rows,
                           (np.arange(cols) + scheme.anchor_offset) / cols, indexing="ij")
        centres = np.repeat(np.stack([x.ravel(), y.ravel()], axis=1), len(sizes), axis=0)
        parts.append(np.concatenate([centres, np.tile(sizes, (rows * cols, 1))], axis=1))
    return np.concatenate(parts).astype(np.float32)
