"""How far a quantized detector's boxes are from the float model's: boxes matched by IoU, frame by frame.

Decoding outputs into boxes is model-specific (anchors, scales); this module takes decoded boxes (x1, y1, x2, y2)
and scores per frame. Reference boxes above the score threshold are matched one to one, best IoU first, to the
quantized model's boxes above the same threshold; a pair counts when its IoU reaches `min_iou`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgekit.errors import ConversionError
from edgekit.formats.boxes import box_iou

Detections = tuple[np.ndarray, np.ndarray]  # boxes (K, 4) as x1, y1, x2, y2; scores (K,)


@dataclass(frozen=True)
class BoxAgreement:
    """Reference boxes above the threshold, how many the quantized model matched, their IoU and score error."""

    frames: int
    reference_boxes: int
    matched: int
    unmatched_quantized: int  # quantized boxes above the threshold that match no reference box
    mean_iou: float | None  # over matched pairs; None when nothing matched
    max_score_error: float | None
    mean_score_error: float | None
    score_threshold: float
    min_iou: float

    @property
    def matched_fraction(self) -> float:
        """Matched reference boxes over all reference boxes (1.0 when there are none)."""
        return self.matched / self.reference_boxes if self.reference_boxes else 1.0


def box_agreement(reference: Sequence[Detections], quantized: Sequence[Detections], score_threshold: float = 0.5,
                  min_iou: float = 0.5) -> BoxAgreement:
    """Match each frame's reference boxes to the quantized model's (see the module docstring) and summarise."""
    if len(reference) != len(quantized):
        raise ConversionError(f"{len(reference)} reference frames but {len(quantized)} quantized ones; expected "
                              "the same frames")
    total = unmatched = 0
    ious: list[float] = []
    score_errors: list[float] = []
    for (ref_boxes, ref_scores), (q_boxes, q_scores) in zip(reference, quantized):
        ref_keep, q_keep = ref_scores >= score_threshold, q_scores >= score_threshold
        ref_boxes, ref_scores = ref_boxes[ref_keep], ref_scores[ref_keep]
        q_boxes, q_scores = q_boxes[q_keep], q_scores[q_keep]
        total += len(ref_boxes)
        overlap = box_iou(ref_boxes.reshape(-1, 4), q_boxes.reshape(-1, 4))
        pairs = 0
        while overlap.size and overlap.max() >= min_iou:
            i, j = np.unravel_index(np.argmax(overlap), overlap.shape)
            ious.append(float(overlap[i, j]))
            score_errors.append(abs(float(ref_scores[i]) - float(q_scores[j])))
            overlap[i, :], overlap[:, j] = -1.0, -1.0
            pairs += 1
        unmatched += len(q_boxes) - pairs
    return BoxAgreement(len(reference), total, len(ious), unmatched, float(np.mean(ious)) if ious else None,
                        max(score_errors) if score_errors else None,
                        float(np.mean(score_errors)) if score_errors else None, score_threshold, min_iou)
