"""Reading an image file on the device: Pillow, imported only here (the device install may leave it out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, InputError


def open_image(path: str | Path, mode: str) -> Any:
    """The image at `path` converted to Pillow `mode` ('L', 'RGB'); InputError when it is not a readable image."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise EdgekitError("reading images needs Pillow, which the device install leaves out: "
                           "pip install pillow") from None
    try:
        with Image.open(path) as opened:
            return opened.convert(mode)
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from None
