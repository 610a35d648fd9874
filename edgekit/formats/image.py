"""Images encoded as JPEG or WebP (Pillow): what a device sends instead of raw pixels, and how a server reads it.

`decode_image` is for bytes from the network: it reads only the header first, refuses another format or a size
other than the model input's (so the decoded pixels are bounded by that input, never by what the sender claims),
and turns any decoder failure into a FrameError.
"""

from __future__ import annotations

import io

import numpy as np

from edgekit.errors import FrameError

IMAGE_CODECS = {"jpeg": "JPEG", "webp": "WEBP"}  # edgekit name -> Pillow format
MODES = {1: "L", 3: "RGB"}  # channels -> Pillow mode


def encode_image(pixels: np.ndarray, codec: str, quality: int) -> bytes:
    """An H,W,C (C 1 or 3) uint8 image as `codec` bytes at `quality` (1..100), as a device's Pillow encodes it."""
    from PIL import Image

    if codec not in IMAGE_CODECS:
        raise FrameError(f"image codec must be one of {', '.join(IMAGE_CODECS)}, found {codec!r}")
    if not 1 <= quality <= 100:
        raise FrameError(f"{codec} quality must be 1..100, found {quality}")
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in MODES:
        raise FrameError(f"an image to encode is H,W,1 or H,W,3 uint8, found {pixels.dtype} {pixels.shape}")
    out = io.BytesIO()
    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels, MODES[pixels.shape[2]])
    image.save(out, IMAGE_CODECS[codec], quality=quality)
    return out.getvalue()


def decode_image(data: bytes, codec: str, shape: tuple[int, int, int]) -> np.ndarray:
    """`codec` bytes as an H,W,C uint8 image of exactly `shape`; FrameError for another format, size or mode count,
    or bytes the decoder refuses (checked on the header before any pixel is decoded)."""
    from PIL import Image

    height, width, channels = shape
    try:
        with Image.open(io.BytesIO(data), formats=[IMAGE_CODECS[codec]]) as image:
            if image.size != (width, height):
                raise FrameError(f"{codec} image is {image.size[0]}x{image.size[1]}, the model takes "
                                 f"{width}x{height}")
            pixels = np.asarray(image.convert(MODES[channels]))
    except FrameError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on bad bytes; each is a refused frame
        raise FrameError(f"not a decodable {codec} image: {type(exc).__name__}: {exc}") from None
    return pixels.reshape(height, width, channels)
