/*
 * wna16.c - weight-only integer formats with f16/bf16 group scales
 * (reference): INT4_GPTQ and INT8_GPTQ (symmetric, packed along K, optional
 * act-order g_idx) and INT4_AWQ (zero points, packed along the output
 * dimension in AWQ's interleaved nibble order). The layouts are the
 * checkpoints' own (quant-blocks.h), so a loader can hand out views of the
 * file; activations stay f32.
 */
#include "quant.h"

#include <math.h>

static const int awq_nibble[8] = MOE_AWQ_NIBBLE_INIT;

static float scale_at(const moe__wmat *w, int64_t i) {
    uint16_t h = ((const uint16_t *)w->scales)[i];
    return w->scale_format == MOE_FORMAT_BF16 ? moe__bf16_to_f32(h) : moe__f16_to_f32(h);
}

static uint16_t scale_store(moe_format f, float s) {
    return f == MOE_FORMAT_BF16 ? moe__f32_to_bf16(s) : moe__f32_to_f16(s);
}

/* Common shape checks; bits = 4 or 8, awq packs rows instead of cols. */
static moe_status wna16_sizes(const char *name, int bits, bool awq, int64_t rows, int64_t cols,
                              int32_t g, moe_format sf, moe__wsizes *s, char *err, size_t errlen) {
    if (g != 32 && g != 64 && g != 128)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "%s: group size %d is not 32, 64 or 128",
                         name, (int)g);
    if (sf != MOE_FORMAT_F16 && sf != MOE_FORMAT_BF16)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "%s: scale format must be f16 or bf16",
                         name);
    if (cols % g)
        return moe__errf(err, errlen, MOE_ERR_SHAPE, "%s: K = %lld is not a multiple of the group "
                         "size %d", name, (long long)cols, (int)g);
    if (awq && rows % 8)
        return moe__errf(err, errlen, MOE_ERR_SHAPE, "%s: %lld rows are not a multiple of 8 (AWQ "
                         "packs 8 rows per word)", name, (long long)rows);
    size_t n, ns, nz = 0, ng;
    if (!moe__mul_ok((size_t)rows, (size_t)cols, &n) ||
        !moe__mul_ok((size_t)rows * 2, (size_t)(cols / g), &ns) ||
        !moe__mul_ok((size_t)cols, 4, &ng) ||
        (awq && !moe__mul_ok((size_t)(rows / 2), (size_t)(cols / g), &nz)))
        return moe__errf(err, errlen, MOE_ERR_OVERFLOW, "%s: %lld x %lld weights overflow size_t",
                         name, (long long)rows, (long long)cols);
    *s = (moe__wsizes){ .data = n * (size_t)bits / 8, .scales = ns, .zeros = nz,
                        .g_idx = awq ? 0 : ng };
    return MOE_OK;
}

static moe_status wna16_validate(const char *name, const moe__wmat *w, char *err, size_t errlen) {
    int64_t ng = w->cols / w->group_size;
    for (int64_t g = 0; g < ng; g++) {
        for (int64_t r = 0; r < w->rows; r++) {
            float s = scale_at(w, g * w->rows + r);
            if (!(isfinite(s) && s > 0)) return moe__scale_errf(err, errlen, name, r, g, s);
        }
    }
    if (w->g_idx) {
        for (int64_t k = 0; k < w->cols; k++)
            if (w->g_idx[k] < 0 || w->g_idx[k] >= ng)
                return moe__errf(err, errlen, MOE_ERR_RANGE,
                                 "%s: g_idx[%lld] = %d outside [0, %lld)", name, (long long)k,
                                 (int)w->g_idx[k], (long long)ng);
    }
    return MOE_OK;
}

static int64_t group_of(const moe__wmat *w, int64_t k) {
    return w->g_idx ? w->g_idx[k] : k / w->group_size;
}

/* Per (group, row) absmax and min/max of src (rows, cols) under w's grouping. */
static moe_status group_ranges(const float *src, const moe__wmat *w, float *lo, float *hi) {
    int64_t ng = w->cols / w->group_size;
    for (int64_t i = 0; i < ng * w->rows; i++) lo[i] = hi[i] = 0;
    for (int64_t r = 0; r < w->rows; r++) {
        for (int64_t k = 0; k < w->cols; k++) {
            float x = src[r * w->cols + k];
            if (!isfinite(x)) return MOE_ERR_INVALID_ARG;
            int64_t i = group_of(w, k) * w->rows + r;
            if (x < lo[i]) lo[i] = x;
            if (x > hi[i]) hi[i] = x;
        }
    }
    return MOE_OK;
}

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Symmetric GPTQ quantizer: q = rne(x / s) + zero with s = amax / qmax. */
static moe_status gptq_quantize(const float *src, moe__wmat *w, int bits) {
    int64_t ng = w->cols / w->group_size;
    float *lo = moe__malloc(sizeof(float) * 2 * (size_t)(ng * w->rows));
    if (!lo) return MOE_ERR_NOMEM;
    float *hi = lo + ng * w->rows;
    moe_status st = group_ranges(src, w, lo, hi);
    if (st) { moe__free(lo); return st; }
    const int zero = bits == 4 ? 8 : 128, qmax = (1 << bits) - 1;
    uint16_t *sc = (uint16_t *)w->scales; // (cols/g, rows)
    for (int64_t i = 0; i < ng * w->rows; i++) {
        float a = (-lo[i] > hi[i] ? -lo[i] : hi[i]) / (float)(zero - 1);
        sc[i] = scale_store(w->scale_format, a > 0 ? a : 1.0f);
        if (!(scale_at(w, i) > 0)) sc[i] = scale_store(w->scale_format, 1.0f); /* underflow */
    }
    uint32_t *q = (uint32_t *)w->data; // (cols / (32/bits), rows)
    int per = 32 / bits;
    for (int64_t i = 0; i < w->cols / per * w->rows; i++) q[i] = 0;
    for (int64_t r = 0; r < w->rows; r++) {
        for (int64_t k = 0; k < w->cols; k++) {
            float s = scale_at(w, group_of(w, k) * w->rows + r);
            int v = clampi(moe__rne(src[r * w->cols + k] / s) + zero, 0, qmax);
            q[(k / per) * w->rows + r] |= (uint32_t)v << (bits * (k % per));
        }
    }
    moe__free(lo);
    return MOE_OK;
}

static void gptq_dequant_row(const moe__wmat *w, int64_t r, float *out, int bits) {
    const uint32_t *q = (const uint32_t *)w->data; // (cols / (32/bits), rows)
    const int per = 32 / bits, zero = 1 << (bits - 1);
    const uint32_t mask = (1u << bits) - 1;
    for (int64_t k = 0; k < w->cols; k++) {
        int v = (int)((q[(k / per) * w->rows + r] >> (bits * (k % per))) & mask);
        out[k] = (float)(v - zero) * scale_at(w, group_of(w, k) * w->rows + r);
    }
}

/* ===== INT4_GPTQ ===== */

moe_status moe__int4_gptq_sizes(int64_t rows, int64_t cols, int32_t group_size,
                                moe_format scale_format, moe__wsizes *s, char *err, size_t errlen) {
    return wna16_sizes("int4-gptq", 4, false, rows, cols, group_size, scale_format, s, err, errlen);
}
moe_status moe__int4_gptq_validate(const moe__wmat *w, char *err, size_t errlen) {
    return wna16_validate("int4-gptq", w, err, errlen);
}
void moe__int4_gptq_dequant_row_ref(const moe__wmat *w, int64_t r, float *out) {
    gptq_dequant_row(w, r, out, 4);
}
moe_status moe__int4_gptq_quantize_ref(const float *src, moe__wmat *w) {
    return gptq_quantize(src, w, 4);
}

/* ===== INT8_GPTQ ===== */

moe_status moe__int8_gptq_sizes(int64_t rows, int64_t cols, int32_t group_size,
                                moe_format scale_format, moe__wsizes *s, char *err, size_t errlen) {
    return wna16_sizes("int8-gptq", 8, false, rows, cols, group_size, scale_format, s, err, errlen);
}
moe_status moe__int8_gptq_validate(const moe__wmat *w, char *err, size_t errlen) {
    return wna16_validate("int8-gptq", w, err, errlen);
}
void moe__int8_gptq_dequant_row_ref(const moe__wmat *w, int64_t r, float *out) {
    gptq_dequant_row(w, r, out, 8);
}
moe_status moe__int8_gptq_quantize_ref(const float *src, moe__wmat *w) {
    return gptq_quantize(src, w, 8);
}

/* ===== INT4_AWQ ===== */

/* The 4-bit value of row r in a (.., rows/8) AWQ-packed table row. */
static int awq_get(const uint32_t *t, int64_t r) {
    return (int)((t[r / 8] >> (4 * awq_nibble[r % 8])) & 15u);
}

moe_status moe__int4_awq_sizes(int64_t rows, int64_t cols, int32_t group_size,
                               moe_format scale_format, moe__wsizes *s, char *err, size_t errlen) {
    return wna16_sizes("int4-awq", 4, true, rows, cols, group_size, scale_format, s, err, errlen);
}

moe_status moe__int4_awq_validate(const moe__wmat *w, char *err, size_t errlen) {
    if (w->g_idx)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "int4-awq: g_idx is a GPTQ feature");
    return wna16_validate("int4-awq", w, err, errlen);
}

void moe__int4_awq_dequant_row_ref(const moe__wmat *w, int64_t r, float *out) {
    const uint32_t *q = (const uint32_t *)w->data;  // (cols, rows/8)
    const uint32_t *z = (const uint32_t *)w->zeros; // (cols/g, rows/8)
    for (int64_t k = 0; k < w->cols; k++) {
        int64_t g = k / w->group_size;
        int v = awq_get(q + k * (w->rows / 8), r) - awq_get(z + g * (w->rows / 8), r);
        out[k] = (float)v * scale_at(w, g * w->rows + r);
    }
}

moe_status moe__int4_awq_quantize_ref(const float *src, moe__wmat *w) {
    int64_t ng = w->cols / w->group_size, wpr = w->rows / 8;
    float *lo = moe__malloc(sizeof(float) * 2 * (size_t)(ng * w->rows));
    if (!lo) return MOE_ERR_NOMEM;
    float *hi = lo + ng * w->rows;
    moe_status st = group_ranges(src, w, lo, hi);
    if (st) { moe__free(lo); return st; }
    uint16_t *sc = (uint16_t *)w->scales; // (cols/g, rows)
    uint32_t *z  = (uint32_t *)w->zeros;  // (cols/g, rows/8)
    uint32_t *q  = (uint32_t *)w->data;   // (cols, rows/8)
    for (int64_t i = 0; i < ng * wpr; i++) z[i] = 0;
    for (int64_t i = 0; i < w->cols * wpr; i++) q[i] = 0;
    for (int64_t i = 0; i < ng * w->rows; i++) {
        float s = (hi[i] - lo[i]) / 15.0f;
        sc[i] = scale_store(w->scale_format, s > 0 ? s : 1.0f);
        if (!(scale_at(w, i) > 0)) sc[i] = scale_store(w->scale_format, 1.0f); /* underflow */
        int zp = clampi(moe__rne(-lo[i] / scale_at(w, i)), 0, 15);
        int64_t g = i / w->rows, r = i % w->rows;
        z[g * wpr + r / 8] |= (uint32_t)zp << (4 * awq_nibble[r % 8]);
    }
    for (int64_t r = 0; r < w->rows; r++) {
        for (int64_t k = 0; k < w->cols; k++) {
            int64_t g = k / w->group_size;
            int zp = awq_get(z + g * wpr, r);
            const float s = scale_at(w, g * w->rows + r);
            int v = clampi(moe__rne(src[r * w->cols + k] / s) + zp, 0, 15);
            q[k * wpr + r / 8] |= (uint32_t)v << (4 * awq_nibble[r % 8]);
        }
    }
    moe__free(lo);
    return MOE_OK;
}
