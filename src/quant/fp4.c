/*
 * fp4.c - e2m1 and e8m0 conversions and the two 4-bit float formats
 * (reference): MXFP4 as OCP MX and gpt-oss define it (e2m1 pairs, e8m0 scale
 * per 32) and NVFP4 as ModelOpt exports it (e2m1 pairs, e4m3 scale per 16,
 * f32 global scale). Activations are rounded to bf16 (W4A16 with bf16
 * activations, as the GPU kernels of these formats run): the
 * act_fake_quant_ref hook below.
 *
 * Scale rules: an e8m0 of 0xFF is NaN in OCP and is rejected at creation
 * (0x00 = 2^-127 is valid). An NVFP4 block scale must be a finite, positive
 * e4m3 (not 0x00/0x80, no sign bit, not 0x7F/0xFF); ModelOpt writes 1.0 for
 * all-zero blocks, so a zero scale means a broken file.
 */
#include "quant.h"

#include <math.h>
#include <string.h>

/* ===== Conversions ===== */

static const float e2m1_values[16] = {
    0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
    -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f,
};

float moe__e2m1_to_f32(uint8_t code) { return e2m1_values[code & 15]; }

uint8_t moe__f32_to_e2m1(float f) {
    float a = fabsf(f);
    /* Midpoints between neighbours; a tie goes to the even mantissa (codes
     * 0, 2, 4, 6), which is what the <= / < choices below encode. */
    uint8_t c = a <= 0.25f ? 0 : a < 0.75f ? 1 : a <= 1.25f ? 2 : a < 1.75f ? 3
              : a <= 2.5f ? 4 : a < 3.5f ? 5 : a <= 5.0f ? 6 : 7;
    return (uint8_t)(c | (signbit(f) ? 8 : 0));
}

float moe__e8m0_to_f32(uint8_t e) {
    uint32_t u = e == 0xff ? 0x7fc00000u : e == 0 ? 0x00400000u : (uint32_t)e << 23;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float moe__e8m0_to_f32_half(uint8_t e) {
    uint32_t u = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static moe_status fp4_sizes(const char *name, int64_t rows, int64_t cols, int64_t block,
                            moe__wsizes *s, char *err, size_t errlen) {
    if (cols % block)
        return moe__errf(err, errlen, MOE_ERR_SHAPE, "%s: K = %lld is not a multiple of the block "
                         "size %lld", name, (long long)cols, (long long)block);
    size_t n;
    if (!moe__mul_ok((size_t)rows, (size_t)cols, &n))
        return moe__errf(err, errlen, MOE_ERR_OVERFLOW, "%s: %lld x %lld weights overflow size_t",
                         name, (long long)rows, (long long)cols);
    *s = (moe__wsizes){ .data = n / 2, .scales = n / (size_t)block };
    return MOE_OK;
}

static void fp4_unpack_row(const uint8_t *q, int64_t cols, float *out) {
    for (int64_t j = 0; j < cols / 2; j++) {
        out[2 * j]     = moe__e2m1_to_f32(q[j] & 15);
        out[2 * j + 1] = moe__e2m1_to_f32(q[j] >> 4);
    }
}

void moe__bf16_act_fake_quant_ref(const moe__wmat *w, float *x, int64_t cols) {
    (void)w;
    for (int64_t i = 0; i < cols; i++) x[i] = moe__bf16_to_f32(moe__f32_to_bf16(x[i]));
}

/* ===== MXFP4 (OCP, gpt-oss) ===== */

moe_status moe__mxfp4_sizes(int64_t rows, int64_t cols, int32_t group_size,
                            moe_format scale_format, moe__wsizes *s, char *err, size_t errlen) {
    (void)group_size; (void)scale_format;
    return fp4_sizes("mxfp4", rows, cols, MOE_QK_MXFP4, s, err, errlen);
}

moe_status moe__mxfp4_validate(const moe__wmat *w, char *err, size_t errlen) {
    const uint8_t *e = w->scales; // (rows, cols/32)
    int64_t nb = w->cols / MOE_QK_MXFP4;
    for (int64_t i = 0; i < w->rows * nb; i++)
        if (e[i] == 0xff)
            return moe__errf(err, errlen, MOE_ERR_SCALE,
                             "mxfp4: e8m0 scale 0xFF (NaN) at row %lld, block %lld",
                             (long long)(i / nb), (long long)(i % nb));
    return MOE_OK;
}

void moe__mxfp4_dequant_row_ref(const moe__wmat *w, int64_t r, float *out) {
    const uint8_t *q = (const uint8_t *)w->data + r * (w->cols / 2);             // (cols/2)
    const uint8_t *e = (const uint8_t *)w->scales + r * (w->cols / MOE_QK_MXFP4); // (cols/32)
    fp4_unpack_row(q, w->cols, out);
    for (int64_t k = 0; k < w->cols; k++) out[k] *= moe__e8m0_to_f32(e[k / MOE_QK_MXFP4]);
}

moe_status moe__mxfp4_quantize_ref(const float *src, moe__wmat *w) {
    int64_t nb = w->rows * (w->cols / MOE_QK_MXFP4);
    uint8_t *q = (uint8_t *)w->data, *e = (uint8_t *)w->scales;
    for (int64_t b = 0; b < nb; b++) {
        const float *x = src + b * MOE_QK_MXFP4; // (32)
        float amax = 0;
        for (int j = 0; j < MOE_QK_MXFP4; j++) {
            if (!isfinite(x[j])) return MOE_ERR_INVALID_ARG;
            amax = (fabsf(x[j]) > amax ? fabsf(x[j]) : amax);
        }
        /* OCP: shared exponent floor(log2(amax)) - 2 (e2m1's largest exponent). */
        int ex = 0;
        if (amax > 0) frexpf(amax, &ex);
        int sexp = amax > 0 ? ex - 1 - 2 : -127;
        if (sexp < -127) sexp = -127;
        if (sexp > 127) sexp = 127;
        e[b] = (uint8_t)(sexp + 127);
        float inv = ldexpf(1.0f, -sexp);
        for (int j = 0; j < MOE_QK_MXFP4; j += 2)
            q[b * 16 + j / 2] = (uint8_t)(moe__f32_to_e2m1(x[j] * inv) |
                                          moe__f32_to_e2m1(x[j + 1] * inv) << 4);
    }
    return MOE_OK;
}

/* ===== NVFP4 (ModelOpt) ===== */

moe_status moe__nvfp4_sizes(int64_t rows, int64_t cols, int32_t group_size,
                            moe_format scale_format, moe__wsizes *s, char *err, size_t errlen) {
    (void)group_size; (void)scale_format;
    return fp4_sizes("nvfp4", rows, cols, MOE_QK_NVFP4, s, err, errlen);
}

moe_status moe__nvfp4_validate(const moe__wmat *w, char *err, size_t errlen) {
    if (!(isfinite(w->scale2) && w->scale2 > 0))
        return moe__errf(err, errlen, MOE_ERR_SCALE, "nvfp4: global scale %g is not finite and > 0",
                         (double)w->scale2);
    const uint8_t *s = w->scales; // (rows, cols/16)
    int64_t nb = w->cols / MOE_QK_NVFP4;
    for (int64_t i = 0; i < w->rows * nb; i++)
        if ((s[i] & 0x80) || s[i] == 0 || s[i] == 0x7f)
            return moe__scale_errf(err, errlen, "nvfp4", i / nb, i % nb, moe__e4m3_to_f32(s[i]));
    return MOE_OK;
}

void moe__nvfp4_dequant_row_ref(const moe__wmat *w, int64_t r, float *out) {
    const uint8_t *q = (const uint8_t *)w->data + r * (w->cols / 2);             // (cols/2)
    const uint8_t *s = (const uint8_t *)w->scales + r * (w->cols / MOE_QK_NVFP4); // (cols/16)
    fp4_unpack_row(q, w->cols, out);
    for (int64_t k = 0; k < w->cols; k++)
        out[k] = out[k] * moe__e4m3_to_f32(s[k / MOE_QK_NVFP4]) * w->scale2;
}

moe_status moe__nvfp4_quantize_ref(const float *src, moe__wmat *w) {
    /* The global scale is the caller's (w->scale2; 1 through moe_quantize):
     * the e4m3 block scales then carry amax / 6 of each block on their own,
     * which covers |x| up to 2688 * scale2. */
    if (!(isfinite(w->scale2) && w->scale2 > 0)) return MOE_ERR_INVALID_ARG;
    int64_t n = w->rows * w->cols;
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(src[i])) return MOE_ERR_INVALID_ARG;
    uint8_t *q = (uint8_t *)w->data, *s = (uint8_t *)w->scales;
    for (int64_t b = 0; b < n / MOE_QK_NVFP4; b++) {
        const float *x = src + b * MOE_QK_NVFP4; // (16)
        float bmax = 0;
        for (int j = 0; j < MOE_QK_NVFP4; j++) bmax = fabsf(x[j]) > bmax ? fabsf(x[j]) : bmax;
        uint8_t sc = moe__f32_to_e4m3(bmax / 6.0f / w->scale2);
        if (sc == 0) sc = 0x38; /* 1.0 for blocks that are (or round to) zero, as ModelOpt */
        s[b] = sc;
        float d = moe__e4m3_to_f32(sc) * w->scale2;
        for (int j = 0; j < MOE_QK_NVFP4; j += 2)
            q[b * 8 + j / 2] = (uint8_t)(moe__f32_to_e2m1(x[j] / d) |
                                         moe__f32_to_e2m1(x[j + 1] / d) << 4);
    }
    return MOE_OK;
}
