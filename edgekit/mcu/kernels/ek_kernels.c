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

static int8_t ek_add_one(int32_t x1, int32_t x2, const void *params);

void ek_conv(const int8_t *in, ek_shape is, ek_rect ir, const int8_t *filter, const int32_t *bias,
             int8_t *out, ek_shape os, ek_rect orr, const ek_conv_params *p) {
    const int in_per_group = is.c / p->groups, out_per_group = os.c / p->groups;
    const int pixel = p->out_pixel_stride ? p->out_pixel_stride : os.c;
    for (int b = 0; b < os.n; ++b) {
        for (int oy = orr.y; oy < orr.y + orr.h; ++oy) {
            const int y0 = oy * p->stride_h - p->pad_top;
            for (int ox = orr.x; ox < orr.x + orr.w; ++ox) {
                const int x0 = ox * p->stride_w - p->pad_left;
                int8_t *dst = out + ((b * orr.h + oy - orr.y) * orr.row + ox - orr.x) * pixel;
                for (int oc = 0; oc < os.c; ++oc) {
                    const int first_in = (oc / out_per_group) * in_per_group;
                    int32_t acc = 0;
                    for (int ky = 0; ky < p->kh; ++ky) {
                        const int y = y0 + ky * p->dilation_h;
                        if (y < 0 || y >= is.h) continue;
                        for (int kx = 0; kx < p->kw; ++kx) {
                            const int x = x0 + kx * p->dilation_w;
                            if (x < 0 || x >= is.w) continue;
                            const int8_t *src = in + ((b * ir.h + y - ir.y) * ir.row + x - ir.x) * is.c + first_in;
                            const int8_t *k = filter + ((oc * p->kh + ky) * p->kw + kx) * in_per_group;
                            for (int ic = 0; ic < in_per_group; ++ic) acc += k[ic] * (src[ic] + p->in_offset);
                        }
                    }
                    if (bias) acc += bias[oc];
                    acc = ek_scale(acc, p->rq.multiplier[oc], p->rq.shift[oc]) + p->rq.out_offset;
                    const int8_t value = ek_clamp(acc, p->rq.act_min, p->rq.act_max);
                    dst[oc] = !p->add ? value : p->add_conv_first ? ek_add_one(value, dst[oc], p->add)
                                                                  : ek_add_one(dst[oc], value, p->add);
                }
            }
        }
    }
}

void ek_depthwise_inplace(int8_t *buf, ek_shape is, ek_rect ir, const int8_t *filter, const int32_t *bias,
                          ek_shape os, ek_rect orr, int8_t *scratch, const ek_conv_params *p) {
    const ek_shape one_in = {1, is.h, is.w, 1}, one_out = {1, os.h, os.w, 1};
    const ek_rect in_plane = {ir.y, ir.x, ir.h, ir.w, ir.w};
    for (int c = 0; c < is.c; ++c) {
        for (int y = 0; y < ir.h; ++y)
            for (int x = 0; x < ir.w; ++x) scratch[y * ir.w + x] = buf[(y * ir.row + x) * is.c + c];
        ek_conv_params one = *p;
        one.groups = 1;
        one.rq.multiplier += c;
        one.rq.shift += c;
        one.out_pixel_stride = os.c;
        ek_conv(scratch, one_in, in_plane, filter + c * p->kh * p->kw, bias ? bias + c : 0, buf + c, one_out, orr,
                &one);
    }
}

void ek_pool(const int8_t *in, ek_shape is, ek_rect ir, int8_t *out, ek_shape os, ek_rect orr,
             const ek_pool_params *p) {
    for (int b = 0; b < os.n; ++b) {
        for (int oy = orr.y; oy < orr.y + orr.h; ++oy) {
            const int y0 = oy * p->stride_h - p->pad_top;
            const int ky0 = y0 < 0 ? -y0 : 0, ky1 = p->kh < is.h - y0 ? p->kh : is.h - y0;
            for (int ox = orr.x; ox < orr.x + orr.w; ++ox) {
                const int x0 = ox * p->stride_w - p->pad_left;
                const int kx0 = x0 < 0 ? -x0 : 0, kx1 = p->kw < is.w - x0 ? p->kw : is.w - x0;
                int8_t *dst = out + ((b * orr.h + oy - orr.y) * orr.row + ox - orr.x) * os.c;
                for (int c = 0; c < os.c; ++c) {
                    int32_t acc = p->is_max ? INT8_MIN : 0, count = 0;
                    for (int ky = ky0; ky < ky1; ++ky) {
                        for (int kx = kx0; kx < kx1; ++kx) {
                            const int32_t v = in[((b * ir.h + y0 + ky - ir.y) * ir.row + x0 + kx - ir.x) * is.c + c];
                            acc = p->is_max ? (v > acc ? v : acc) : acc + v;
                            ++count;
                        }
                    }
                    if (!p->is_max && count > 0) acc = acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count;
                    dst[c] = ek_clamp(acc, p->act_min, p->act_max);
                }
            }
        }
    }
}

typedef int8_t (*ek_binary_op)(int32_t a, int32_t b, const void *params);

/* One loop for every elementwise binary operator: broadcast indexing, the arithmetic in `op`. */
static void ek_binary(const int8_t *in1, const int8_t *in2, int8_t *out, const ek_broadcast *bc, ek_binary_op op,
                      const void *params) {
    const int *s1 = bc->stride[0], *s2 = bc->stride[1], *so = bc->stride[2];
    for (int n = 0; n < bc->out.n; ++n)
        for (int y = 0; y < bc->out.h; ++y)
            for (int x = 0; x < bc->out.w; ++x)
                for (int c = 0; c < bc->out.c; ++c)
                    out[n * so[0] + y * so[1] + x * so[2] + c * so[3]] =
                        op(in1[n * s1[0] + y * s1[1] + x * s1[2] + c * s1[3]],
                           in2[n * s2[0] + y * s2[1] + x * s2[2] + c * s2[3]], params);
}

/* ADD's and SUB's input rescaled to the common scale: (x - zero point) << left shift, times its multiplier. */
static int32_t ek_rescaled(int32_t x, int32_t offset, int32_t multiplier, int shift, int left_shift) {
    return ek_scale((int32_t)((uint32_t)(x + offset) << left_shift), multiplier, shift);
}

static int8_t ek_add_out(int32_t raw, const ek_add_params *p) {
    return ek_clamp(ek_scale(raw, p->out_multiplier, p->out_shift) + p->out_offset, p->act_min, p->act_max);
}

static int8_t ek_add_one(int32_t x1, int32_t x2, const void *params) {
    const ek_add_params *p = params;
    return ek_add_out(ek_rescaled(x1, p->in1_offset, p->in1_multiplier, p->in1_shift, p->left_shift) +
                      ek_rescaled(x2, p->in2_offset, p->in2_multiplier, p->in2_shift, p->left_shift), p);
}

void ek_add(const int8_t *in1, const int8_t *in2, int8_t *out, const ek_broadcast *b, const ek_add_params *p) {
    ek_binary(in1, in2, out, b, ek_add_one, p);
}

static int8_t ek_sub_one(int32_t x1, int32_t x2, const void *params) {
    const ek_add_params *p = params;
    return ek_add_out(ek_rescaled(x1, p->in1_offset, p->in1_multiplier, p->in1_shift, p->left_shift) -
                      ek_rescaled(x2, p->in2_offset, p->in2_multiplier, p->in2_shift, p->left_shift), p);
}

void ek_sub(const int8_t *in1, const int8_t *in2, int8_t *out, const ek_broadcast *b, const ek_add_params *p) {
    ek_binary(in1, in2, out, b, ek_sub_one, p);
}

static int8_t ek_mul_one(int32_t x1, int32_t x2, const void *params) {
    const ek_mul_params *p = params;
    const int32_t product = (x1 + p->in1_offset) * (x2 + p->in2_offset);
    return ek_clamp(ek_scale(product, p->out_multiplier, p->out_shift) + p->out_offset, p->act_min, p->act_max);
}

void ek_mul(const int8_t *in1, const int8_t *in2, int8_t *out, const ek_broadcast *b, const ek_mul_params *p) {
    ek_binary(in1, in2, out, b, ek_mul_one, p);
}

void ek_mean(const int8_t *in, const int dims[4], const int reduced[4], int8_t *out, const ek_mean_params *p) {
    int kept[4], over[4], stride[4];
    int32_t count = 1;
    stride[3] = 1;
    for (int a = 2; a >= 0; --a) stride[a] = stride[a + 1] * dims[a + 1];
    for (int a = 0; a < 4; ++a) {
        kept[a] = reduced[a] ? 1 : dims[a];
        over[a] = reduced[a] ? dims[a] : 1;
        count *= over[a];
    }
    for (int k0 = 0; k0 < kept[0]; ++k0)
        for (int k1 = 0; k1 < kept[1]; ++k1)
            for (int k2 = 0; k2 < kept[2]; ++k2)
                for (int k3 = 0; k3 < kept[3]; ++k3) {
                    int32_t sum = 0;
                    for (int r0 = 0; r0 < over[0]; ++r0)
                        for (int r1 = 0; r1 < over[1]; ++r1)
                            for (int r2 = 0; r2 < over[2]; ++r2)
                                for (int r3 = 0; r3 < over[3]; ++r3)
                                    sum += in[(k0 + r0) * stride[0] + (k1 + r1) * stride[1] + (k2 + r2) * stride[2] +
                                              (k3 + r3) * stride[3]];
                    sum -= p->in_zero_point * count;
                    *out++ = ek_clamp(ek_scale(sum, p->multiplier, p->shift) + p->out_offset, INT8_MIN, INT8_MAX);
                }
}

void ek_lut(const int8_t *in, int8_t *out, int count, const int8_t table[256]) {
    for (int i = 0; i < count; ++i) out[i] = table[in[i] + 128];
}

/* gemmlowp one_over_one_plus_x_for_x_in_0_1: 1 / (1 + x) in Q0.31, Newton-Raphson in Q2.29. */
static int32_t ek_one_over_one_plus_x(int32_t a) {
    const int64_t sum = (int64_t)a + INT32_MAX;
    const int32_t half_denominator = (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);
    int32_t x = 1515870810 + ek_high_mul(half_denominator, -1010580540);
    for (int i = 0; i < 3; ++i) {
        const int32_t one_minus = (1 << 29) - ek_high_mul(half_denominator, x);
        const int32_t step = ek_high_mul(x, one_minus);
        const int32_t rescaled = step > (1 << 29) - 1 ? INT32_MAX : step < -((1 << 29) - 1) ? INT32_MIN : step * 4;
        x = (int32_t)((uint32_t)x + (uint32_t)rescaled);
    }
    return x > (1 << 30) - 1 ? INT32_MAX : x < -((1 << 30) - 1) ? INT32_MIN : x * 2;
}

void ek_softmax(const int8_t *in, int8_t *out, int rows, int depth, const int32_t exp_table[256]) {
    for (int r = 0; r < rows; ++r, in += depth, out += depth) {
        int max = INT8_MIN;
        for (int c = 0; c < depth; ++c) max = in[c] > max ? in[c] : max;
        int32_t sum = 0; /* Q12.19 */
        for (int c = 0; c < depth; ++c) sum += ek_div_pot(exp_table[max - in[c]], 12);
        int headroom = 0;
        while (!((uint32_t)sum << headroom & 0x80000000u)) ++headroom;
        const int bits_over_unit = 12 - headroom;
        const int32_t scale = ek_one_over_one_plus_x((int32_t)(((uint32_t)sum << headroom) - 0x80000000u));
        for (int c = 0; c < depth; ++c) {
            const int32_t value = ek_div_pot(ek_high_mul(scale, exp_table[max - in[c]]), bits_over_unit + 23);
            out[c] = ek_clamp(value - 128, INT8_MIN, INT8_MAX);
        }
    }
}

void ek_concat(const int8_t *const *ins, const int *bytes, int count, int outer, int8_t *out) {
    for (int o = 0; o < outer; ++o)
        for (int k = 0; k < count; ++k) {
            memcpy(out, ins[k] + (size_t)o * bytes[k], (size_t)bytes[k]);
            out += bytes[k];
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

void ek_resize_nearest(const int8_t *in, ek_shape is, int8_t *out, ek_shape os, const int32_t *rows,
                       const int32_t *cols) {
    for (int b = 0; b < os.n; ++b)
        for (int y = 0; y < os.h; ++y)
            for (int x = 0; x < os.w; ++x, out += os.c)
                memcpy(out, in + (((size_t)b * is.h + rows[y]) * is.w + cols[x]) * is.c, (size_t)os.c);
}

/* TfLiteRound (std::round: halves away from zero) of v, plus the zero point, clamped to int8. |v| below 1024 is exact
 * (t and a - t are floats without rounding); beyond it every zero point saturates, so the sign decides (NaN: 127). */
static int8_t ek_round_to_int8(float v, int32_t zero_point) {
    const float a = v < 0 ? -v : v;
    if (!(a < 1024.0f)) return v < 0 ? INT8_MIN : INT8_MAX;
    int32_t t = (int32_t)a;
    if (a - (float)t >= 0.5f) ++t;
    return ek_clamp((v < 0 ? -t : t) + zero_point, INT8_MIN, INT8_MAX);
}

void ek_quantize_float(const void *in, int8_t *out, int count, float scale, int32_t zero_point) {
    const unsigned char *src = in;
    for (int i = 0; i < count; ++i) {
        float x;
        memcpy(&x, src + (size_t)i * sizeof x, sizeof x);
        out[i] = ek_round_to_int8(x / scale, zero_point);
    }
}

void ek_dequantize(const int8_t *in, void *out, int count, float scale, int32_t zero_point) {
    unsigned char *dst = out;
    for (int i = 0; i < count; ++i) {
        const float x = scale * (float)(in[i] - zero_point);
        memcpy(dst + (size_t)i * sizeof x, &x, sizeof x);
    }
}
