"""Integer (int8) quantization arithmetic, one rule for host and device: the one LiteRT's interpreter runs.

quantize: q = clamp(rint(x * (1 / scale)) + zero_point) to the integer type's range, all in float32: x times
the float32 reciprocal of the scale, rounded half to even. That is LiteRT's QUANTIZE kernel as its interpreter
runs it by default (the optimized builtin kernel and XNNPACK alike), not TFLite's reference kernel: that one
(LiteRT's BUILTIN_REF resolver, and TF Lite Micro) divides by the scale and rounds half away from zero
(`TfLiteRound`, std::round). The two differ on exact ties and wherever x / scale and x * (1 / scale) round
to different float32 values. dequantize: (q - zero_point) * scale in float32, as DEQUANTIZE computes it.
tests/test_quant.py checks all of this against the installed LiteRT running QUANTIZE and DEQUANTIZE ops.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import DTypeLike

from edgekit.errors import InputError

# the integer types a tensor is quantized to (each range exact in float32, where the clamp happens)
_RANGES = {np.dtype(t): (int(np.iinfo(t).min), int(np.iinfo(t).max)) for t in (np.int8, np.uint8, np.int16, np.uint16)}


class Described(Protocol):
    """A tensor description with quantization: a manifest's TensorInfo, a model file's ModelTensor."""

    @property
    def scale(self) -> float | None: ...

    @property
    def zero_point(self) -> int | None: ...


def quantization(tensor: Described) -> tuple[float, int] | None:
    """(scale, zero point) of a quantized tensor, None for a float one: the arguments quantize/dequantize take."""
    if tensor.scale is None or tensor.zero_point is None:
        return None
    return tensor.scale, tensor.zero_point


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: DTypeLike = np.int8, *,
             out: np.ndarray | None = None, scratch: np.ndarray | None = None) -> np.ndarray:
    """Float `x` as integers: clamp(rint(x * (1 / scale)) + zero_point), a new `dtype` array or written into `out`.

    `out` (its dtype then decides) and `scratch` (float32, x's shape; holds the unclamped values) let a caller
    that keeps both allocate nothing. NaN or infinity in the unclamped values is an InputError: no integer
    stands for them.
    """
    if out is None:
        out = np.empty(np.shape(x), dtype)
    bounds = _RANGES.get(out.dtype)
    if bounds is None:
        raise ValueError(f"quantize: {out.dtype} is not a quantized integer type ({', '.join(map(str, _RANGES))})")
    if scratch is None:
        scratch = np.empty(np.shape(x), np.float32)
    np.multiply(x, 1.0 / np.float32(scale), out=scratch, dtype=np.float32)
    np.rint(scratch, out=scratch)
    np.add(scratch, zero_point, out=scratch)
    minimum, maximum = bounds
    low, high = scratch.min(), scratch.max()  # NaN and infinity show up here; clamp only when needed
    if not (low >= minimum and high <= maximum):
        if not (np.isfinite(low) and np.isfinite(high)):
            raise InputError(f"cannot quantize NaN or infinity (x * (1 / scale {scale:g}) gave {low} .. {high})")
        np.clip(scratch, minimum, maximum, out=scratch)
    np.copyto(out, scratch, casting="unsafe")
    return out


def dequantize(q: np.ndarray, scale: float, zero_point: int, out: np.ndarray | None = None) -> np.ndarray:
    """Integers `q` as float32, (q - zero_point) * scale: a new array or written into `out` (float32, q's shape)."""
    value = np.subtract(q, zero_point, out=out, dtype=np.float32)
    return np.multiply(value, np.float32(scale), out=value)
