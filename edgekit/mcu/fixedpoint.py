"""TF Lite's integer-arithmetic setup in Python: the multipliers, shifts and clamps its kernels' Prepare computes.

The generated C must agree with the tflite-micro interpreter to the bit, so every figure here follows TF Lite's
C++ (quantization_util.cc QuantizeMultiplier, kernel_util.cc CalculateActivationRangeQuantized, reduce.h's
folding of 1/N into the MEAN multiplier) in the same precision: doubles from float32 scales, float32 clamps.
"""

from __future__ import annotations

import math

import numpy as np

from edgekit.errors import UnsupportedOpError

INT8_MIN, INT8_MAX = -128, 127
ADD_LEFT_SHIFT = 20  # TF Lite's headroom for int8 ADD's rescaled inputs


def _round_half_away(x: float) -> int:
    """std::round: halves away from zero (Python's round() takes halves to even)."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TF Lite's QuantizeMultiplier: `real` as a Q31 multiplier in [2^30, 2^31) and a power-of-two shift."""
    if real == 0.0:
        return 0, 0
    fraction, shift = math.frexp(real)
    fixed = _round_half_away(fraction * (1 << 31))
    if fixed == 1 << 31:
        fixed, shift = fixed // 2, shift + 1
    if shift < -31:
        return 0, 0
    return fixed, shift


def conv_multipliers(input_scale: float, filter_scales: np.ndarray, output_scale: float,
                     channels: int) -> tuple[list[int], list[int]]:
    """Per-channel (multiplier, shift) lists of a conv, depthwise conv or fully connected layer, as TFLM's
    PopulateConvolutionQuantizationParams: input x filter / output scale in double; per-tensor filters repeated."""
    scales = [float(s) for s in np.asarray(filter_scales, np.float32).reshape(-1)]
    if len(scales) == 1:
        scales *= channels
    pairs = [quantize_multiplier(float(np.float32(input_scale)) * s / float(np.float32(output_scale)))
             for s in scales]
    return [m for m, _ in pairs], [s for _, s in pairs]


def activation_range(activation: int, scale: float, zero_point: int, where: str) -> tuple[int, int]:
    """The int8 clamp of a fused activation (NONE, RELU, RELU_N1_TO_1, RELU6) in the output's quantization."""
    def quantize(value: float) -> int:
        return zero_point + _round_half_away(float(np.float32(value) / np.float32(scale)))

    low, high = {0: (INT8_MIN, INT8_MAX), 1: (quantize(0.0), INT8_MAX), 2: (quantize(-1.0), quantize(1.0)),
                 3: (quantize(0.0), quantize(6.0))}.get(activation, (None, None))
    if low is None or high is None:
        raise UnsupportedOpError(f"{where}: fused activation {activation} (only NONE, RELU, RELU_N1_TO_1 and "
                                 "RELU6 have an integer clamp)")
    return max(INT8_MIN, low), min(INT8_MAX, high)


def add_multipliers(scale1: float, scale2: float, out_scale: float) -> tuple[tuple[int, int], ...]:
    """(multiplier, shift) of ADD's input 1, input 2 and output, as TFLM's CalculateOpDataAdd."""
    s1, s2, so = (float(np.float32(s)) for s in (scale1, scale2, out_scale))
    twice_max = 2 * max(s1, s2)
    return (quantize_multiplier(s1 / twice_max), quantize_multiplier(s2 / twice_max),
            quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * so)))


def mean_multiplier(in_scale: float, out_scale: float, count: int) -> tuple[int, int]:
    """MEAN's (multiplier, shift) with 1/count folded in as reduce.h's QuantizedMeanOrSum folds it."""
    multiplier, shift = quantize_multiplier(float(np.float32(in_scale)) / float(np.float32(out_scale)))
    fold = min(count.bit_length() - 1, 32, 31 + shift)
    return (multiplier << fold) // count, shift - fold
