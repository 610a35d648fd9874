/* edgekit INT8 kernels: portable C99 following TF Lite's reference integer arithmetic bit for bit.
 * Activations are int8 NHWC; weights, biases and requantization parameters are const (flash). */
#ifndef EK_KERNELS_H
#define EK_KERNELS_H

#include <stdint.h>

typedef struct { int n, h, w, c; } ek_shape;

/* Requantization of an int32 accumulator to the output: per output channel multiplier and shift
 * (TF Lite's QuantizeMultiplier), output zero point, activation clamp (from the fused activation). */
typedef struct {
    const int32_t *multiplier;
    const int8_t *shift;
    int32_t out_offset, act_min, act_max;
} ek_requant;

/* Grouped convolution: CONV_2D (groups 1), DEPTHWISE_CONV_2D (groups = input channels, filter
 * reordered to [out_c][kh][kw][1]) and FULLY_CONNECTED (a 1x1 convolution). Filter [out_c][kh][kw][in_c / groups]. */
typedef struct {
    int kh, kw, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left, groups;
    int32_t in_offset;
    ek_requant rq;
} ek_conv_params;

void ek_conv(const int8_t *in, ek_shape in_shape, const int8_t *filter, const int32_t *bias,
             int8_t *out, ek_shape out_shape, const ek_conv_params *p);

/* AVERAGE_POOL_2D and MAX_POOL_2D (input and output share scale and zero point). */
typedef struct {
    int is_max, kh, kw, stride_h, stride_w, pad_top, pad_left;
    int32_t act_min, act_max;
} ek_pool_params;

void ek_pool(const int8_t *in, ek_shape in_shape, int8_t *out, ek_shape out_shape, const ek_pool_params *p);

/* ADD of two same-shape tensors: both inputs rescaled to a common scale (left shift 20), summed, requantized. */
typedef struct {
    int32_t in1_offset, in2_offset, in1_multiplier, in2_multiplier, out_multiplier;
    int in1_shift, in2_shift, out_shift, left_shift;
    int32_t out_offset, act_min, act_max;
} ek_add_params;

void ek_add(const int8_t *in1, const int8_t *in2, int8_t *out, int count, const ek_add_params *p);

/* MEAN over H and W of an NHWC tensor (global pooling): sum of (x - zero point), one requantization
 * whose multiplier already holds 1 / (H x W) as TF Lite folds it. */
typedef struct {
    int32_t in_zero_point, multiplier, out_offset;
    int shift;
} ek_mean_params;

void ek_mean_hw(const int8_t *in, ek_shape in_shape, int8_t *out, const ek_mean_params *p);

/* PAD with a constant (the output zero point); `before` is the padding ahead of each NHWC axis. */
void ek_pad(const int8_t *in, ek_shape in_shape, int8_t *out, ek_shape out_shape, const int before[4],
            int8_t value);

/* TRANSPOSE of a 4-D tensor (shorter ones padded with leading 1s): out axis i is in axis perm[i]. */
void ek_transpose(const int8_t *in, const int dims[4], const int perm[4], int8_t *out);

#endif
