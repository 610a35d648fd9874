/* edgekit INT8 kernels: TF Lite's reference integer kernels (tensorflow/lite/kernels/internal/reference),
 * rewritten as plain C99 loops. The fixed-point helpers are gemmlowp's, as TF Lite uses them. */
#include "ek_kernels.h"

#include <string.h>

/* gemmlowp SaturatingRoundingDoublingHighMul: (a * b * 2) >> 32, rounded half away from zero. */
static int32_t ek_high_mul(int32_t a, int32_t b) {
    if (a == b && a == INT32_MIN) return INT32_MAX;
    const int64_t ab = (int64_t)a * (int64_t)b;
    const int32_t nudge = ab >= 0 ? (1 << 30) : (1 - (1 << 30));
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}

/* gemmlowp RoundingDivideByPOT: x / 2^exponent, rounded half away from zero. */
static int32_t ek_div_pot(int32_t x, int exponent) {
    const int32_t mask = (int32_t)(((int64_t)1 << exponent) - 1);
    const int32_t remainder = x & mask;
    const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* TF Lite MultiplyByQuantizedMultiplier: x * multiplier * 2^shift, multiplier a Q31 fraction in [0.5, 1). */
static int32_t ek_scale(int32_t x, int32_t multiplier, int shift) {
    const int left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
    return ek_div_pot(ek_high_mul((int32_t)((uint32_t)x << left), multiplier), right);
}

static int8_t ek_clamp(int32_t x, int32_t low, int32_t high) {
    return (int8_t)(x < low ? low : x > high ? high : x);
}

void ek_conv(const int8_t *in, ek_shape is, const int8_t *filter, const int32_t *bias,
             int8_t *out, ek_shape os, const ek_conv_params *p) {
    const int in_per_group = is.c / p->groups, out_per_group = os.c / p->groups;
    for (int b = 0; b < os.n; ++b) {
        for (int oy = 0; oy < os.h; ++oy) {
            const int y0 = oy * p->stride_h - p->pad_top;
            for (int ox = 0; ox < os.w; ++ox) {
                const int x0 = ox * p->stride_w - p->pad_left;
                for (int oc = 0; oc < os.c; ++oc) {
                    const int first_in = (oc / out_per_group) * in_per_group;
                    int32_t acc = 0;
                    for (int ky = 0; ky < p->kh; ++ky) {
                        const int y = y0 + ky * p->dilation_h;
                        if (y < 0 || y >= is.h) continue;
                        for (int kx = 0; kx < p->kw; ++kx) {
                            const int x = x0 + kx * p->dilation_w;
                            if (x < 0 || x >= is.w) continue;
                            const int8_t *src = in + ((b * is.h + y) * is.w + x) * is.c + first_in;
                            const int8_t *k = filter + ((oc * p->kh + ky) * p->kw + kx) * in_per_group;
                            for (int ic = 0; ic < in_per_group; ++ic) acc += k[ic] * (src[ic] + p->in_offset);
                        }
                    }
                    if (bias) acc += bias[oc];
                    acc = ek_scale(acc, p->rq.multiplier[oc], p->rq.shift[oc]) + p->rq.out_offset;
                    out[((b * os.h + oy) * os.w + ox) * os.c + oc] = ek_clamp(acc, p->rq.act_min, p->rq.act_max);
                }
            }
        }
    }
}

void ek_pool(const int8_t *in, ek_shape is, int8_t *out, ek_shape os, const ek_pool_params *p) {
    for (int b = 0; b < os.n; ++b) {
        for (int oy = 0; oy < os.h; ++oy) {
            const int y0 = oy * p->stride_h - p->pad_top;
            const int ky0 = y0 < 0 ? -y0 : 0, ky1 = p->kh < is.h - y0 ? p->kh : is.h - y0;
            for (int ox = 0; ox < os.w; ++ox) {
                const int x0 = ox * p->stride_w - p->pad_left;
                const int kx0 = x0 < 0 ? -x0 : 0, kx1 = p->kw < is.w - x0 ? p->kw : is.w - x0;
                for (int c = 0; c < os.c; ++c) {
                    int32_t acc = p->is_max ? INT8_MIN : 0, count = 0;
                    for (int ky = ky0; ky < ky1; ++ky) {
                        for (int kx = kx0; kx < kx1; ++kx) {
                            const int32_t v = in[((b * is.h + y0 + ky) * is.w + x0 + kx) * is.c + c];
                            acc = p->is_max ? (v > acc ? v : acc) : acc + v;
                            ++count;
                        }
                    }
                    if (!p->is_max && count > 0) acc = acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count;
                    out[((b * os.h + oy) * os.w + ox) * os.c + c] = ek_clamp(acc, p->act_min, p->act_max);
                }
            }
        }
    }
}

void ek_add(const int8_t *in1, const int8_t *in2, int8_t *out, int count, const ek_add_params *p) {
    for (int i = 0; i < count; ++i) {
        const int32_t a = (int32_t)((uint32_t)(in1[i] + p->in1_offset) << p->left_shift);
        const int32_t b = (int32_t)((uint32_t)(in2[i] + p->in2_offset) << p->left_shift);
        const int32_t sum = ek_scale(a, p->in1_multiplier, p->in1_shift) + ek_scale(b, p->in2_multiplier, p->in2_shift);
        out[i] = ek_clamp(ek_scale(sum, p->out_multiplier, p->out_shift) + p->out_offset, p->act_min, p->act_max);
    }
}

void ek_mean_hw(const int8_t *in, ek_shape is, int8_t *out, const ek_mean_params *p) {
    const int32_t count = is.h * is.w;
    for (int b = 0; b < is.n; ++b) {
        for (int c = 0; c < is.c; ++c) {
            int32_t sum = 0;
            for (int i = 0; i < count; ++i) sum += in[(b * count + i) * is.c + c];
            sum -= p->in_zero_point * count;
            out[b * is.c + c] = ek_clamp(ek_scale(sum, p->multiplier, p->shift) + p->out_offset, INT8_MIN, INT8_MAX);
        }
    }
}

void ek_pad(const int8_t *in, ek_shape is, int8_t *out, ek_shape os, const int before[4], int8_t value) {
    memset(out, value, (size_t)os.n * os.h * os.w * os.c);
    for (int b = 0; b < is.n; ++b) {
        for (int y = 0; y < is.h; ++y) {
            for (int x = 0; x < is.w; ++x) {
                const int8_t *src = in + ((b * is.h + y) * is.w + x) * is.c;
                int8_t *dst = out + (((b + before[0]) * os.h + y + before[1]) * os.w + x + before[2]) * os.c + before[3];
                memcpy(dst, src, (size_t)is.c);
            }
        }
    }
}

void ek_transpose(const int8_t *in, const int dims[4], const int perm[4], int8_t *out) {
    int stride[4], out_dims[4], i[4];
    stride[3] = 1;
    for (int a = 2; a >= 0; --a) stride[a] = stride[a + 1] * dims[a + 1];
    for (int a = 0; a < 4; ++a) out_dims[a] = dims[perm[a]];
    for (i[0] = 0; i[0] < out_dims[0]; ++i[0])
        for (i[1] = 0; i[1] < out_dims[1]; ++i[1])
            for (i[2] = 0; i[2] < out_dims[2]; ++i[2])
                for (i[3] = 0; i[3] < out_dims[3]; ++i[3])
                    *out++ = in[i[0] * stride[perm[0]] + i[1] * stride[perm[1]] + i[2] * stride[perm[2]] +
                                i[3] * stride[perm[3]]];
}
