/* edgekit INT8 kernels: portable C99 following TF Lite's reference integer arithmetic bit for bit.
 * Activations are int8 NHWC; weights, biases and requantization parameters are const (flash). */
#ifndef EK_KERNELS_H
#define EK_KERNELS_H

#include <stdint.h>

typedef struct { int n, h, w, c; } ek_shape;

/* The part of a tensor's H x W that a buffer holds (an input) or a kernel computes (an output): rows [y, y + h),
 * cols [x, x + w), `row` pixels from one buffer row to the next (the tensor's W for a whole tensor or a tile
 * of the stage buffer, w for a patch's own buffer). Coordinates are the tensor's own, so a kernel tells the
 * tensor's true border (its padding) from the part's edge exactly as the layer-by-layer kernel does. */
typedef struct { int y, x, h, w, row; } ek_rect;

/* Requantization of an int32 accumulator to the output: per output channel multiplier and shift
 * (TF Lite's QuantizeMultiplier), output zero point, activation clamp (from the fused activation). */
typedef struct {
    const int32_t *multiplier;
    const int8_t *shift;
    int32_t out_offset, act_min, act_max;
} ek_requant;

/* ADD: both inputs rescaled to a common scale (left shift 20), summed, requantized. */
typedef struct {
    int32_t in1_offset, in2_offset, in1_multiplier, in2_multiplier, out_multiplier;
    int in1_shift, in2_shift, out_shift, left_shift;
    int32_t out_offset, act_min, act_max;
} ek_add_params;

/* Grouped convolution: CONV_2D (groups 1), DEPTHWISE_CONV_2D (groups = input channels, filter
 * reordered to [out_c][kh][kw][1]) and FULLY_CONNECTED (a 1x1 convolution). Filter [out_c][kh][kw][in_c / groups].
 * `in` holds part `in_part` of the input (shape `in_shape`), `out` receives part `out_part` of the output.
 * With `add` (a residual ADD fused in), `out` holds the ADD's other input, the skip: each requantized output value
 * is added to the skip's value at its place with the ADD's arithmetic (the convolution's value as the ADD's first
 * input when `add_conv_first`, else its second) and the sum written over it. */
typedef struct {
    int kh, kw, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left, groups;
    int32_t in_offset;
    ek_requant rq;
    const ek_add_params *add;
    int add_conv_first;
    int out_pixel_stride; /* bytes from one output pixel to the next; 0: the output's channels */
} ek_conv_params;

void ek_conv(const int8_t *in, ek_shape in_shape, ek_rect in_part, const int8_t *filter, const int32_t *bias,
             int8_t *out, ek_shape out_shape, ek_rect out_part, const ek_conv_params *p);

/* DEPTHWISE_CONV_2D in place (batch 1, one output channel per input channel): `buf` holds part `in_part` of the
 * input and receives part `out_part` of the output. Channel by channel, the input channel is copied to `scratch`
 * (in_part.h x in_part.w bytes) and ek_conv writes the output channel from it straight over the channel: in NHWC no
 * other channel shares those bytes, and the copy holds everything the channel's outputs read. */
void ek_depthwise_inplace(int8_t *buf, ek_shape in_shape, ek_rect in_part, const int8_t *filter, const int32_t *bias,
                          ek_shape out_shape, ek_rect out_part, int8_t *scratch, const ek_conv_params *p);

/* AVERAGE_POOL_2D and MAX_POOL_2D (input and output share scale and zero point); parts as ek_conv's. */
typedef struct {
    int is_max, kh, kw, stride_h, stride_w, pad_top, pad_left;
    int32_t act_min, act_max;
} ek_pool_params;

void ek_pool(const int8_t *in, ek_shape in_shape, ek_rect in_part, int8_t *out, ek_shape out_shape, ek_rect out_part,
             const ek_pool_params *p);

/* Elementwise ADD and MUL with broadcasting: output index (n, h, w, c) reads input k at
 * n * stride[k][0] + h * stride[k][1] + w * stride[k][2] + c * stride[k][3] (a stride of 0 repeats an axis) and
 * is written at the same sum over stride[2] (a patch's part of a larger buffer). */
typedef struct {
    ek_shape out;
    int stride[3][4];
} ek_broadcast;

void ek_add(const int8_t *in1, const int8_t *in2, int8_t *out, const ek_broadcast *b, const ek_add_params *p);

/* SUB: ADD's arithmetic and parameters, input 2's rescaled value subtracted. */
void ek_sub(const int8_t *in1, const int8_t *in2, int8_t *out, const ek_broadcast *b, const ek_add_params *p);

/* MUL: (x1 - zero point 1) x (x2 - zero point 2), requantized by in1 x in2 / out scale. */
typedef struct {
    int32_t in1_offset, in2_offset, out_multiplier;
    int out_shift;
    int32_t out_offset, act_min, act_max;
} ek_mul_params;

void ek_mul(const int8_t *in1, const int8_t *in2, int8_t *out, const ek_broadcast *b, const ek_mul_params *p);

/* MEAN over the axes of a 4-D tensor flagged in `reduced` (the output holds the other axes in order): sum of
 * (x - zero point), one requantization whose multiplier already holds 1 / (elements reduced) as TF Lite folds it. */
typedef struct {
    int32_t in_zero_point, multiplier, out_offset;
    int shift;
} ek_mean_params;

void ek_mean(const int8_t *in, const int dims[4], const int reduced[4], int8_t *out, const ek_mean_params *p);

/* A function of one int8 value (LOGISTIC, HARD_SWISH, QUANTIZE int8 -> int8): out = table[in + 128], the table made by edgekit from
 * TF Lite's integer arithmetic for every input value. */
void ek_lut(const int8_t *in, int8_t *out, int count, const int8_t table[256]);

/* SOFTMAX over the last axis (rows x depth), output scale 1/256 and zero point -128 as TF Lite requires:
 * exp_table[d] is exp of the scaled difference x - max(row) = -d in Q0.31 (0 beyond TF Lite's diff_min). */
void ek_softmax(const int8_t *in, int8_t *out, int rows, int depth, const int32_t exp_table[256]);

/* CONCATENATION of same-quantization inputs along one axis: `outer` blocks, input k adding bytes[k] to each. */
void ek_concat(const int8_t *const *ins, const int *bytes, int count, int outer, int8_t *out);

/* PAD with a constant (the output zero point); `before` is the padding ahead of each NHWC axis. */
void ek_pad(const int8_t *in, ek_shape in_shape, int8_t *out, ek_shape out_shape, const int before[4],
            int8_t value);

/* TRANSPOSE of a 4-D tensor (shorter ones padded with leading 1s): out axis i is in axis perm[i]. */
void ek_transpose(const int8_t *in, const int dims[4], const int perm[4], int8_t *out);

/* RESIZE_NEAREST_NEIGHBOR (input and output share quantization, a copy): output pixel (y, x) of each batch copies
 * input pixel (rows[y], cols[x]), the indices computed by edgekit as TF Lite's reference (align_corners,
 * half_pixel_centers). */
void ek_resize_nearest(const int8_t *in, ek_shape in_shape, int8_t *out, ek_shape out_shape, const int32_t *rows,
                       const int32_t *cols);

/* QUANTIZE float32 -> int8 at the input edge, as TF Lite's AffineQuantize: x / scale in float32, rounded half away
 * from zero, plus the zero point, clamped. `in` holds `count` native float32 values at any alignment (the arena's). */
void ek_quantize_float(const void *in, int8_t *out, int count, float scale, int32_t zero_point);

/* DEQUANTIZE int8 -> float32 at the output edge: scale x (q - zero point), written at any alignment. TF Lite takes the
 * product in double and rounds it to float; the product of a float32 scale and an int8 difference is exact in
 * double, so one float32 multiplication rounds it the same. */
void ek_dequantize(const int8_t *in, void *out, int count, float scale, int32_t zero_point);

#endif
