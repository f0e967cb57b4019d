/*
 * fp8.c - e4m3fn conversions and the three FP8 weight formats (reference):
 * FP8_TENSOR (one scale per expert matrix), FP8_CHANNEL (one per output row)
 * and FP8_BLOCK (one per 128x128 tile, DeepSeek-V3 / Qwen3-FP8), with their
 * activation quantization emulated for the fp64 reference.
 *
 * Saturation policy (reliability notes N8): finite values beyond +-448 and
 * +-Inf convert to +-448; NaN converts to NaN and so propagates to the
 * output of the token that carried it, as it does on hardware with
 * satfinite conversion. The f32 scales a file brings are validated at
 * creation: finite and > 0 (subnormal scales are accepted, they are exact
 * multipliers; nothing divides by a weight scale).
 */
#include "quant.h"

#include <math.h>
#include <string.h>

/* ===== Conversions ===== */

float moe__e4m3_to_f32(uint8_t q) {
    uint32_t sign = (uint32_t)(q & 0x80u) << 24;
    uint32_t exp  = (q >> 3) & 15u;
    uint32_t man  = q & 7u;
    float f;
    if ((q & 0x7fu) == 0x7fu) {
        uint32_t u = sign | 0x7fc00000u;
        memcpy(&f, &u, sizeof f);
        return f;
    }
    if (exp == 0) {
        f = (float)man * (1.0f / 512.0f); /* subnormal: man * 2^-9, exact */
        return sign ? -f : f;
    }
    uint32_t u = sign | ((exp + 120u) << 23) | (man << 20); /* rebias 7 -> 127 */
    memcpy(&f, &u, sizeof f);
    return f;
}

uint8_t moe__f32_to_e4m3(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint8_t  sign = (uint8_t)((u >> 24) & 0x80u);
    uint32_t a    = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7f;          /* NaN stays NaN          */
    if (a >= 0x43e00000u) return sign | 0x7e;         /* >= 448 and Inf: 448    */
    if (a < 0x3c800000u) {                            /* below 2^-6: subnormal  */
        float v;
        memcpy(&v, &a, sizeof v);
        return (uint8_t)(sign | moe__rne(v * 512.0f)); /* 8 rounds up to 2^-6 */
    }
    uint32_t r = (a + 0x7ffffu + ((a >> 20) & 1u)) >> 20; /* keep 3 mantissa bits, RNE */
    uint32_t e = (r >> 3) - 120u;                         /* rebias 127 -> 7     */
    uint32_t q = (e << 3) | (r & 7u);
    return (uint8_t)(sign | (q > 0x7eu ? 0x7eu : q));
}

moe_status moe__scale_errf(char *err, size_t errlen, const char *what, int64_t row, int64_t block,
                           double value) {
    return moe__errf(err, errlen, MOE_ERR_SCALE, "%s: scale %g at row %lld, block %lld is not "
                     "finite and > 0", what, value, (long long)row, (long long)block);
}

static bool scale_ok(float s) { return isfinite(s) && s > 0; }

/* Checks n f32 scales laid out as (n / per_row, per_row). */
static moe_status check_f32_scales(const float *s, int64_t n, int64_t per_row, const char *what,
                                   char *err, size_t errlen) {
    for (int64_t i = 0; i < n; i++)
        if (!scale_ok(s[i]))
            return moe__scale_errf(err, errlen, what, i / per_row, i % per_row, s[i]);
    return MOE_OK;
}

static moe_status fp8_sizes(int64_t rows, int64_t cols, size_t n_scales, moe__wsizes *s,
                            char *err, size_t errlen) {
    size_t n, ns;
    if (!moe__mul_ok((size_t)rows, (size_t)cols, &n) || !moe__mul_ok(n_scales, 4, &ns))
        return moe__errf(err, errlen, MOE_ERR_OVERFLOW, "%lld x %lld fp8 weights overflow size_t",
                         (long long)rows, (long long)cols);
    *s = (moe__wsizes){ .data = n, .scales = ns };
    return MOE_OK;
}

/* Largest |x| of n values, and whether any is NaN. */
static float absmax(const float *x, int64_t n, bool *nan) {
    float m = 0;
    for (int64_t i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > m) m = a;
        if (isnan(a)) *nan = true;
    }
    return m;
}

/* A weight scale for absmax m: m / 448, or 1 for an all-zero tile. */
static float weight_scale(float m) {
    float s = m / MOE_FP8_MAX;
    return s > 0 ? s : 1.0f;
}

float moe__quantize_fp8_group(const float *x, uint8_t *q, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) q[i] = moe__f32_to_e4m3(x[i] / scale);
    return scale;
}

/* Replaces x (n) by e4m3(x / scale) * scale. */
static void fake_quant(float *x, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) x[i] = moe__e4m3_to_f32(moe__f32_to_e4m3(x[i] / scale)) * scale;
}

/* Per-token dynamic scale of vLLM's per-token fp8 quantizer. */
static float token_scale(const float *x, int64_t n) {
    bool nan = false;
    float s = absmax(x, n, &nan) / MOE_FP8_MAX;
    const float smin = 1.0f / (MOE_FP8_MAX * 512.0f);
    return s > smin ? s : smin;
}

/* ===== FP8_TENSOR ===== */

moe_status moe__fp8_tensor_sizes(int64_t rows, int64_t cols, int32_t group_size,
                                 moe_format scale_format, moe__wsizes *s, char *err,
                                 size_t errlen) {
    (void)group_size; (void)scale_format;
    return fp8_sizes(rows, cols, 1, s, err, errlen);
}

moe_status moe__fp8_tensor_validate(const moe__wmat *w, char *err, size_t errlen) {
    moe_status st = check_f32_scales(w->scales, 1, 1, "fp8-tensor", err, errlen);
    if (st) return st;
    if (w->input_scale != 0 && !scale_ok(w->input_scale))
        return moe__errf(err, errlen, MOE_ERR_SCALE, "fp8-tensor: input scale %g is not finite "
                         "and > 0", (double)w->input_scale);
    return MOE_OK;
}

void moe__fp8_tensor_dequant_row_ref(const moe__wmat *w, int64_t r, float *out) {
    const uint8_t *q = (const uint8_t *)w->data + r * w->cols; // (cols)
    float s = *(const float *)w->scales;
    for (int64_t k = 0; k < w->cols; k++) out[k] = moe__e4m3_to_f32(q[k]) * s;
}

moe_status moe__fp8_tensor_quantize_ref(const float *src, moe__wmat *w) {
    bool nan = false;
    int64_t n = w->rows * w->cols;
    float s = weight_scale(absmax(src, n, &nan));
    if (nan || !isfinite(s)) return MOE_ERR_INVALID_ARG;
    *(float *)w->scales = s;
    moe__quantize_fp8_group(src, (uint8_t *)w->data, n, s);
    return MOE_OK;
}

void moe__fp8_tensor_act_fake_quant_ref(const moe__wmat *w, float *x, int64_t cols) {
    fake_quant(x, cols, w->input_scale > 0 ? w->input_scale : token_scale(x, cols));
}

moe_status moe__fp8_merge_w13_scales(uint8_t *w13, int64_t d_ff, int64_t cols, float s_gate,
                                     float s_up, float *s_out, char *err, size_t errlen) {
    if (!scale_ok(s_gate) || !scale_ok(s_up))
        return moe__errf(err, errlen, MOE_ERR_SCALE, "fp8-tensor W13 scales %g (gate), %g (up): "
                         "not finite and > 0", (double)s_gate, (double)s_up);
    float s = s_gate > s_up ? s_gate : s_up;
    float s_small = s_gate > s_up ? s_up : s_gate;
    if (s_gate != s_up) {
        uint8_t *half = w13 + (s_gate < s_up ? 0 : d_ff * cols); // (d_ff, cols) of the smaller
        for (int64_t i = 0; i < d_ff * cols; i++)
            half[i] = moe__f32_to_e4m3(moe__e4m3_to_f32(half[i]) * s_small / s);
    }
    *s_out = s;
    return MOE_OK;
}

/* ===== FP8_CHANNEL ===== */

moe_status moe__fp8_channel_sizes(int64_t rows, int64_t cols, int32_t group_size,
                                  moe_format scale_format, moe__wsizes *s, char *err,
                                  size_t errlen) {
    (void)group_size; (void)scale_format;
    return fp8_sizes(rows, cols, (size_t)rows, s, err, errlen);
}

moe_status moe__fp8_channel_validate(const moe__wmat *w, char *err, size_t errlen) {
    return check_f32_scales(w->scales, w->rows, 1, "fp8-channel", err, errlen);
}

void moe__fp8_channel_dequant_row_ref(const moe__wmat *w, int64_t r, float *out) {
    const uint8_t *q = (const uint8_t *)w->data + r * w->cols; // (cols)
    float s = ((const float *)w->scales)[r];
    for (int64_t k = 0; k < w->cols; k++) out[k] = moe__e4m3_to_f32(q[k]) * s;
}

moe_status moe__fp8_channel_quantize_ref(const float *src, moe__wmat *w) {
    for (int64_t r = 0; r < w->rows; r++) {
        bool nan = false;
        const float *x = src + r * w->cols;
        float s = weight_scale(absmax(x, w->cols, &nan));
        if (nan || !isfinite(s)) return MOE_ERR_INVALID_ARG;
        ((float *)w->scales)[r] = s;
        moe__quantize_fp8_group(x, (uint8_t *)w->data + r * w->cols, w->cols, s);
    }
    return MOE_OK;
}

void moe__fp8_channel_act_fake_quant_ref(const moe__wmat *w, float *x, int64_t cols) {
    (void)w;
    fake_quant(x, cols, token_scale(x, cols));
}

/* ===== FP8_BLOCK ===== */

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

moe_status moe__fp8_block_sizes(int64_t rows, int64_t cols, int32_t group_size,
                                moe_format scale_format, moe__wsizes *s, char *err, size_t errlen) {
    (void)group_size; (void)scale_format;
    size_t n;
    if (!moe__mul_ok((size_t)cdiv(rows, MOE_FP8_BLOCK), (size_t)cdiv(cols, MOE_FP8_BLOCK), &n))
        return moe__errf(err, errlen, MOE_ERR_OVERFLOW, "fp8-block scale table overflows");
    return fp8_sizes(rows, cols, n, s, err, errlen);
}

moe_status moe__fp8_block_validate(const moe__wmat *w, char *err, size_t errlen) {
    int64_t nc = cdiv(w->cols, MOE_FP8_BLOCK);
    return check_f32_scales(w->scales, cdiv(w->rows, MOE_FP8_BLOCK) * nc, nc, "fp8-block", err,
                            errlen);
}

void moe__fp8_block_dequant_row_ref(const moe__wmat *w, int64_t r, float *out) {
    const uint8_t *q = (const uint8_t *)w->data + r * w->cols;                    // (cols)
    const float   *s = (const float *)w->scales +
                       (r / MOE_FP8_BLOCK) * cdiv(w->cols, MOE_FP8_BLOCK); // (ceil(cols/128))
    for (int64_t k = 0; k < w->cols; k++) out[k] = moe__e4m3_to_f32(q[k]) * s[k / MOE_FP8_BLOCK];
}

moe_status moe__fp8_block_quantize_ref(const float *src, moe__wmat *w) {
    int64_t nr = cdiv(w->rows, MOE_FP8_BLOCK), nc = cdiv(w->cols, MOE_FP8_BLOCK);
    for (int64_t br = 0; br < nr; br++) {
        for (int64_t bc = 0; bc < nc; bc++) {
            int64_t r0 = br * MOE_FP8_BLOCK, c0 = bc * MOE_FP8_BLOCK;
            int64_t r1 = r0 + MOE_FP8_BLOCK < w->rows ? r0 + MOE_FP8_BLOCK : w->rows;
            int64_t n  = c0 + MOE_FP8_BLOCK < w->cols ? MOE_FP8_BLOCK : w->cols - c0;
            bool nan = false;
            float m = 0;
            for (int64_t r = r0; r < r1; r++) {
                float mr = absmax(src + r * w->cols + c0, n, &nan);
                if (mr > m) m = mr;
            }
            float s = weight_scale(m);
            if (nan || !isfinite(s)) return MOE_ERR_INVALID_ARG;
            ((float *)w->scales)[br * nc + bc] = s;
            for (int64_t r = r0; r < r1; r++)
                moe__quantize_fp8_group(src + r * w->cols + c0,
                                        (uint8_t *)w->data + r * w->cols + c0, n, s);
        }
    }
    return MOE_OK;
}

/* Scale of one activation group of vLLM's per_token_group_quant_fp8. */
static float group_scale(const float *x, int64_t n) {
    bool nan = false;
    float m = absmax(x, n, &nan);
    return (m > 1e-10f ? m : 1e-10f) / MOE_FP8_MAX;
}

void moe__fp8_block_act_fake_quant_ref(const moe__wmat *w, float *x, int64_t cols) {
    (void)w;
    for (int64_t c0 = 0; c0 < cols; c0 += MOE_FP8_BLOCK) {
        int64_t n = cols - c0 < MOE_FP8_BLOCK ? cols - c0 : MOE_FP8_BLOCK;
        fake_quant(x + c0, n, group_scale(x + c0, n));
    }
}
