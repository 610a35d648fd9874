"""An image with its detections drawn on it (Pillow, imported only here: it is optional on the device)."""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import InputError
from edgekit.runtime.detections import Detections
from edgekit.runtime.images import open_image

COLOURS = ((255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (200, 64, 255), (0, 200, 200))


def annotate(image_path: str | Path, detections: Detections, out: str | Path) -> Path:
    """Write `image_path` at its own size to `out` (PNG) with every box, its label and score."""
    image = open_image(image_path, "RGB")  # a missing Pillow is refused there, with the pip line
    from PIL import ImageDraw
    draw = ImageDraw.Draw(image)
    width, height = image.size
    line = max(1, round(min(width, height) / 200))
    for box, score, class_id, label in zip(detections.boxes, detections.scores, detections.class_ids,
                                           detections.labels):
        colour = COLOURS[int(class_id) % len(COLOURS)]
        x0, y0, x1, y1 = box[0] * width, box[1] * height, box[2] * width, box[3] * height
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)
        draw.text((x0 + line, max(0.0, y0 - 12)), f"{label} {score:.2f}", fill=colour)
    out = Path(out)
    try:
        image.save(out, format="PNG")
    except OSError as exc:
        raise InputError(f"{out}: cannot write the annotated image ({exc})") from None
    return out
