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
    """(multiplier, shift) of ADD's (and SUB's) input 1, input 2 and output, as TFLM's CalculateOpDataAdd: the ratios
    in double. TFLM's SUB source takes them in float32, but the tflite-micro interpreter here computes SUB with the
    double ones (tests/test_codegen.py has scales where the two differ in the last bit of an output)."""
    s1, s2, so = (float(np.float32(s)) for s in (scale1, scale2, out_scale))
    twice_max = 2 * max(s1, s2)
    return (quantize_multiplier(s1 / twice_max), quantize_multiplier(s2 / twice_max),
            quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * so)))


def mul_multiplier(scale1: float, scale2: float, out_scale: float) -> tuple[int, int]:
    """MUL's (multiplier, shift): input 1 x input 2 / output scale in double, as TFLM's CalculateOpDataMul."""
    s1, s2, so = (float(np.float32(s)) for s in (scale1, scale2, out_scale))
    return quantize_multiplier(s1 * s2 / so)


def mean_multiplier(in_scale: float, out_scale: float, count: int) -> tuple[int, int]:
    """MEAN's (multiplier, shift) with 1/count folded in as reduce.h's QuantizedMeanOrSum folds it."""
    multiplier, shift = quantize_multiplier(float(np.float32(in_scale)) / float(np.float32(out_scale)))
    fold = min(count.bit_length() - 1, 32, 31 + shift)
    return (multiplier << fold) // count, shift - fold


def requantize_table(in_scale: float, in_zp: int, out_scale: float, out_zp: int) -> list[int]:
    """QUANTIZE int8 -> int8 for every input, as TF Lite's reference Requantize with TFLM's Prepare (input / output
    scale in double, QuantizeMultiplier, so a shift up when the output scale is the finer)."""
    multiplier, shift = quantize_multiplier(float(np.float32(in_scale)) / float(np.float32(out_scale)))
    return [min(max(scale(q - in_zp, multiplier, shift) + out_zp, INT8_MIN), INT8_MAX)
            for q in range(INT8_MIN, INT8_MAX + 1)]


def nearest_indices(in_size: int, out_size: int, align_corners: bool, half_pixel_centers: bool) -> list[int]:
    """The input row (or col) each output row (col) of RESIZE_NEAREST_NEIGHBOR copies, as TF Lite's reference
    GetNearestNeighbor computes it in float32: rounded half away with align_corners, else floored."""
    f32 = np.float32
    ratio = f32(in_size - 1) / f32(out_size - 1) if align_corners and out_size > 1 else f32(in_size) / f32(out_size)
    offset = f32(0.5) if half_pixel_centers else f32(0.0)
    indices = []
    for i in range(out_size):
        at = float((f32(i) + offset) * ratio)
        nearest = min(_round_half_away(at) if align_corners else math.floor(at), in_size - 1)
        indices.append(max(nearest, 0) if half_pixel_centers else nearest)
    return indices


# gemmlowp's fixed-point arithmetic on int32 (fixedpoint.h), in Python ints: what TF Lite's LOGISTIC, SOFTMAX and
# HARD_SWISH compute per value. Their int8 inputs take 256 values, so the C gets each as a table made here.
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def _wrap32(x: int) -> int:
    return (x + (1 << 31)) % (1 << 32) - (1 << 31)


def _trunc_div(a: int, b: int) -> int:
    """C's integer division (towards zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def high_mul(a: int, b: int, bits: int = 32) -> int:
    """SaturatingRoundingDoublingHighMul on `bits`-bit integers."""
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if a == b == low:
        return high
    ab = a * b
    nudge = (1 << (bits - 2)) if ab >= 0 else 1 - (1 << (bits - 2))
    return _trunc_div(ab + nudge, 1 << (bits - 1))


def div_pot(x: int, exponent: int) -> int:
    """RoundingDivideByPOT: x / 2^exponent, rounded half away from zero."""
    mask = (1 << exponent) - 1
    remainder, threshold = x & mask, (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def _mul_pot(x: int, exponent: int) -> int:
    """SaturatingRoundingMultiplyByPOT on int32."""
    if exponent <= 0:
        return div_pot(x, -exponent)
    threshold = (1 << (31 - exponent)) - 1
    return INT32_MAX if x > threshold else INT32_MIN if x < -threshold else x << exponent


def scale(x: int, multiplier: int, shift: int) -> int:
    """MultiplyByQuantizedMultiplier (TF Lite's double rounding): x * multiplier * 2^shift."""
    left, right = max(shift, 0), max(-shift, 0)
    return div_pot(high_mul(_wrap32(x << left), multiplier), right)


def _exp_quarter(a: int) -> int:
    """exp_on_interval_between_negative_one_quarter_and_0_excl, Q0.31 in and out."""
    x = _wrap32(a + (1 << 28))
    x2 = high_mul(x, x)
    x3, x4 = high_mul(x2, x), high_mul(x2, x2)
    poly = _mul_pot(_wrap32(high_mul(_wrap32(_mul_pot(x4, -2) + x3), 715827883) + x2), -1)
    return _wrap32(1895147668 + high_mul(1895147668, _wrap32(x + poly)))


def exp_on_negative_values(a: int, integer_bits: int) -> int:
    """gemmlowp exp_on_negative_values: exp(a) for a <= 0 in Q(integer_bits), as Q0.31."""
    fractional = 31 - integer_bits
    quarter = 1 << (fractional - 2)
    a_mod = _wrap32((a & (quarter - 1)) - quarter)
    result = _exp_quarter(_mul_pot(a_mod, integer_bits))
    remainder = _wrap32(a_mod - a)
    for exponent, multiplier in ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
                                 (2, 39332535), (3, 720401), (4, 242)):
        if integer_bits > exponent and remainder & (1 << (fractional + exponent)):
            result = high_mul(result, multiplier)
    if integer_bits > 5 and a < -(1 << (36 - integer_bits)):  # below -32: zero
        result = 0
    return INT32_MAX if a == 0 else result


def one_over_one_plus_x(a: int) -> int:
    """gemmlowp one_over_one_plus_x_for_x_in_0_1: 1 / (1 + a), Q0.31 in and out (Newton-Raphson in Q2.29)."""
    half_denominator = _trunc_div(a + INT32_MAX + (1 if a + INT32_MAX >= 0 else -1), 2)
    x = _wrap32(1515870810 + high_mul(half_denominator, -1010580540))
    for _ in range(3):
        one_minus = _wrap32((1 << 29) - high_mul(half_denominator, x))
        x = _wrap32(x + _mul_pot(high_mul(x, one_minus), 2))
    return _mul_pot(x, 1)


def logistic_table(in_scale: float, in_zp: int) -> list[int]:
    """LOGISTIC int8 -> int8 (output scale 1/256, zero point -128) for every input, as TF Lite's
    reference_integer_ops::Logistic with the multiplier and input radius of TFLM's Prepare."""
    fraction, left_shift = math.frexp(float(np.float32(in_scale)) * (1 << 27))
    multiplier = _round_half_away(fraction * (1 << 31))
    radius = math.floor(15.0 * (1 << 27) / (1 << left_shift))
    table = []
    for q in range(INT8_MIN, INT8_MAX + 1):
        x = q - in_zp
        if x <= -radius or x >= radius:
            table.append(INT8_MIN if x <= -radius else INT8_MAX)
            continue
        a = scale(x, multiplier, left_shift)
        positive = exp_on_negative_values(-abs(a), 4)
        value = one_over_one_plus_x(positive)
        value = 1 << 30 if a == 0 else value if a > 0 else _wrap32(INT32_MAX - value)
        table.append(min(max(div_pot(value, 23) - 128, INT8_MIN), INT8_MAX))
    return table


def _saturate16(x: int) -> int:
    return min(max(x, -(1 << 15)), (1 << 15) - 1)


def _int16_multiplier(real: float) -> tuple[int, int]:
    """QuantizeMultiplier, then DownScaleInt32ToInt16Multiplier: a Q15 multiplier and its shift."""
    multiplier, shift = quantize_multiplier(real)
    return ((1 << 15) - 1 if multiplier >= INT32_MAX - (1 << 15) else (multiplier + (1 << 15)) >> 16), shift


def hard_swish_table(in_scale: float, in_zp: int, out_scale: float, out_zp: int) -> list[int]:
    """HARD_SWISH int8 -> int8 for every input, as TF Lite's reference HardSwish with TFLM's Prepare."""
    hires = np.float32(1.0 / 128.0) * np.float32(in_scale)
    out_multiplier, out_shift = _int16_multiplier(float(hires / np.float32(out_scale)))
    relu_multiplier, relu_shift = _int16_multiplier(float(hires / np.float32(3.0 / 32768.0)))
    table = []
    for q in range(INT8_MIN, INT8_MAX + 1):
        hires_value = _saturate16((q - in_zp) * 128)
        preshift = high_mul(hires_value, out_multiplier, 16)
        relu = hires_value
        if relu_shift > 0:
            relu = _saturate16(relu << (relu_shift - 1))
        relu = high_mul(relu, relu_multiplier, 16)
        if relu_shift > 0:
            relu = _saturate16(relu << 1)
        if relu_shift < 0:
            relu = div_pot(relu, -relu_shift)
        relu = (relu + (1 << 15)) >> 1
        # SaturatingDoublingHighMul: like high_mul, but truncating (cancels the biases of the roundings above)
        output = (1 << 15) - 1 if relu == preshift == -(1 << 15) else _trunc_div(relu * preshift, 1 << 15)
        output = div_pot(output, -out_shift) + out_zp
        table.append(min(max(output, INT8_MIN), INT8_MAX))
    return table


def softmax_exp_table(in_scale: float, beta: float) -> list[int]:
    """exp(beta x scale x d) in Q0.31 for every d = x - max(row) in 0, -1, ..., -255, as TF Lite's int8 SOFTMAX
    computes it (PreprocessSoftmaxScaling with 5 integer bits); 0 beyond its diff_min (an output of -128)."""
    real = min(float(beta) * float(np.float32(in_scale)) * (1 << 26), (1 << 31) - 1.0)
    multiplier, left_shift = quantize_multiplier(real)
    diff_min = -math.floor(31.0 * (1 << 26) / (1 << left_shift))
    return [exp_on_negative_values(high_mul(_wrap32(-d << left_shift), multiplier), 5) if -d >= diff_min else 0
            for d in range(256)]
