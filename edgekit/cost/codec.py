"""What sending the input compressed costs: bytes, encode/decode time and top-1 agreement, measured on real frames.

For each codec and quality the given frames are turned back into 8-bit pixels (inverting the bundle's
preprocessing), encoded with Pillow (the device-side encoder), decoded, preprocessed again and run through the
server's float model. Agreement is the share of frames whose top-1 class (argmax of the first output) matches
the model's on the original frames. Encode and decode times are measured on this host, one thread, and scaled to
a profile by per-core fp32 MAC/s: this host's (a one-thread conv, measured here) over the profile's (its fp32
calibration's fitted throughput per thread when it has one, else its fp32 throughput over its cores). The cost
model has no other notion of host work on a device; a codec is not a conv, so the figure is an estimate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgekit.errors import SplitError
from edgekit.formats.bundle import InputPreprocessing
from edgekit.formats.image import IMAGE_CODECS, decode_image, encode_image
from edgekit.targets import Device

DEFAULT_CODECS = (("jpeg", 50), ("jpeg", 75), ("jpeg", 90), ("webp", 50), ("webp", 75))
TIMING_PASSES = 3  # encode/decode times: the best pass over all frames (other load only slows a pass down)
_CONV = (1, 32, 56, 56)  # the host's reference work: a 3x3 conv 32 -> 32 at 56x56 (~29 M MACs)


@dataclass(frozen=True)
class CodecFigures:
    """One codec at one quality, measured on `frames` frames: what the planner costs an all-server candidate by."""

    codec: str  # one of formats.image.IMAGE_CODECS
    quality: int
    payload_bytes: int  # mean encoded size, rounded up
    max_payload_bytes: int  # the largest frame's: what the link's maximum payload is checked against
    encode_seconds: float  # per frame on the device (host-measured, scaled; see the module docstring)
    decode_seconds: float  # per frame on the server (likewise)
    agreement: float  # 0..1: top-1 on decoded frames equal to top-1 on the originals
    frames: int
    data: str  # which frames: "held-out" (--eval) or "calibration"

    @property
    def label(self) -> str:
        return f"{self.codec} q{self.quality}"

    @property
    def drop_points(self) -> float:
        """Top-1 disagreement in percentage points: what --max-drop limits."""
        return 100 * (1 - self.agreement)


def to_pixels(x: np.ndarray, prep: InputPreprocessing) -> np.ndarray:
    """N,C,H,W model inputs back to N,H,W,C uint8 pixels (the inverse of the bundle's preprocessing, rounded)."""
    mean = np.array(prep.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.array(prep.std, np.float32).reshape(1, -1, 1, 1)
    pixels = np.rint((x * std + mean) / prep.scale)
    return np.clip(pixels, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def from_pixels(pixels: np.ndarray, prep: InputPreprocessing) -> np.ndarray:
    """N,H,W,C uint8 pixels as N,C,H,W float32 model inputs: x * scale, then (x - mean) / std."""
    mean = np.array(prep.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.array(prep.std, np.float32).reshape(1, -1, 1, 1)
    return (pixels.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(prep.scale) - mean) / std


def host_core_rate(repeats: int = 5) -> float:
    """This host's fp32 MAC/s on one thread (best of `repeats` 3x3 convs): the unit encode times are scaled by."""
    import torch

    threads = torch.get_num_threads()
    conv = torch.nn.Conv2d(_CONV[1], _CONV[1], 3, padding=1, bias=False).eval()
    x = torch.rand(_CONV)
    macs = _CONV[1] * _CONV[1] * 9 * _CONV[2] * _CONV[3]
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            conv(x)
            best = min(_seconds(lambda: conv(x)) for _ in range(repeats))
    finally:
        torch.set_num_threads(threads)
    return macs / best


def core_rate(profile: Device) -> tuple[float, str]:
    """A profile's fp32 MAC/s per core and where the figure comes from."""
    calibration = profile.calibration
    if calibration is not None and calibration.dtype == "fp32":
        return calibration.throughput.value / calibration.threads, "fp32 calibration per thread"
    rate = profile.throughput.get("fp32")
    if rate is None:
        raise SplitError(f"profile '{profile.name}' has no fp32 throughput to scale codec times by")
    return rate.value / profile.cores, "fp32 throughput per core"


def measure_codecs(run_model: Callable[[np.ndarray], np.ndarray], frames: np.ndarray, prep: InputPreprocessing,
                   device: Device, server: Device, codecs: tuple[tuple[str, int], ...] = DEFAULT_CODECS,
                   data: str = "calibration", host_rate: float | None = None) -> tuple[CodecFigures, ...]:
    """Each (codec, quality) in `codecs` measured on N,C,H,W `frames`; `run_model` gives the first output's
    N,... scores for a batch. `host_rate` (default: measured) is this host's one-thread fp32 MAC/s."""
    if prep.channels not in (1, 3) or frames.ndim != 4 or frames.shape[1] != prep.channels:
        raise SplitError(f"a compressed input needs a 1- or 3-channel image model input, found frames "
                         f"{frames.shape} and {prep.channels} channels")
    for codec, quality in codecs:
        if codec not in IMAGE_CODECS or not 1 <= quality <= 100:
            raise SplitError(f"a codec is one of {', '.join(IMAGE_CODECS)} at quality 1..100, found {codec} {quality}")
    host = host_rate or host_core_rate()
    to_device, to_server = host / core_rate(device)[0], host / core_rate(server)[0]
    reference = _top1(run_model(frames))
    pixels = to_pixels(frames, prep)
    shape = tuple(pixels.shape[1:])
    figures = []
    for codec, quality in codecs:
        encoded = [encode_image(p, codec, quality) for p in pixels]  # also the warm-up of the timings below
        decoded = np.stack([decode_image(e, codec, shape) for e in encoded])
        encode_s = min(_seconds(lambda: [encode_image(p, codec, quality) for p in pixels])
                       for _ in range(TIMING_PASSES)) / len(pixels)
        decode_s = min(_seconds(lambda: [decode_image(e, codec, shape) for e in encoded])
                       for _ in range(TIMING_PASSES)) / len(pixels)
        agreement = float(np.mean(_top1(run_model(from_pixels(decoded, prep))) == reference))
        sizes = [len(e) for e in encoded]
        figures.append(CodecFigures(codec, quality, -(-sum(sizes) // len(sizes)), max(sizes), encode_s * to_device,
                                    decode_s * to_server, agreement, len(pixels), data))
    return tuple(figures)


def _top1(scores: np.ndarray) -> np.ndarray:
    return np.asarray(scores).reshape(len(scores), -1).argmax(axis=1)


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def parse_codecs(text: str) -> tuple[tuple[str, int], ...]:
    """'jpeg:50,jpeg:75,webp:50' as ((codec, quality), ...); SplitError naming what is wrong."""
    codecs = []
    for item in text.split(","):
        codec, _, quality = item.strip().partition(":")
        if codec not in IMAGE_CODECS or not quality.isdigit() or not 1 <= int(quality) <= 100:
            raise SplitError(f"codecs are CODEC:QUALITY with CODEC one of {', '.join(IMAGE_CODECS)} and QUALITY "
                             f"1..100, comma-separated (e.g. jpeg:75,webp:50); found {item!r}")
        codecs.append((codec, int(quality)))
    return tuple(codecs)
