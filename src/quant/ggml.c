/*
 * ggml.c - the GGUF block formats (reference): Q8_0, Q4_0, Q4_K, Q6_K and
 * ggml's MXFP4, bit-compatible with llama.cpp: the same block bytes, and
 * dequantization with the same f32 operations in the same order as ggml's
 * dequantize_row_* (so results are bit-identical, NaN and Inf included).
 * Also ggml's activation quantizers q8_0 (paired with Q8_0, Q4_0 and MXFP4)
 * and q8_K (paired with the K-quants), which the CPU kernels share.
 *
 * Scales are inside the blocks. Validation rejects f16 d / dmin that are
 * Inf or NaN and ggml MXFP4 exponents of 0xFF; negative d is legitimate
 * (ggml's Q4_0 quantizer produces it) and zero d is an all-zero block.
 */
#include "quant.h"

#include <math.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* ===== Shared ===== */

static moe_status block_sizes(const char *name, int64_t rows, int64_t cols, int64_t qk,
                              size_t block_bytes, moe__wsizes *s, char *err, size_t errlen) {
    if (cols % qk)
        return moe__errf(err, errlen, MOE_ERR_SHAPE, "%s: K = %lld is not a multiple of the block "
                         "size %lld", name, (long long)cols, (long long)qk);
    size_t n;
    if (!moe__mul_ok((size_t)rows, (size_t)(cols / qk), &n) || !moe__mul_ok(n, block_bytes, &n))
        return moe__errf(err, errlen, MOE_ERR_OVERFLOW, "%s: %lld x %lld weights overflow size_t",
                         name, (long long)rows, (long long)cols);
    *s = (moe__wsizes){ .data = n };
    return MOE_OK;
}

static bool f16_finite(uint16_t h) { return (h & 0x7c00u) != 0x7c00u; }

/* Checks the f16 fields at byte offsets off[0..n_off) of every block. */
static moe_status check_f16(const moe__wmat *w, const char *name, size_t bb, int64_t qk,
                            const size_t *off, int n_off, char *err, size_t errlen) {
    int64_t nb = w->cols / qk;
    const uint8_t *p = w->data;
    for (int64_t i = 0; i < w->rows * nb; i++) {
        for (int j = 0; j < n_off; j++) {
            uint16_t h;
            memcpy(&h, p + (size_t)i * bb + off[j], 2);
            if (!f16_finite(h))
                return moe__errf(err, errlen, MOE_ERR_SCALE, "%s: block scale %g at row %lld, "
                                 "block %lld is not finite", name, (double)moe__f16_to_f32(h),
                                 (long long)(i / nb), (long long)(i % nb));
        }
    }
    return MOE_OK;
}

static const void *row_blocks(const moe__wmat *w, int64_t r, int64_t qk, size_t bb) {
    return (const char *)w->data + (size_t)r * (size_t)(w->cols / qk) * bb;
}

static bool all_finite(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return false;
    return true;
}

/* ===== Q8_0 ===== */

moe_status moe__q8_0_sizes(int64_t rows, int64_t cols, int32_t group_size,
                           moe_format scale_format, moe__wsizes *s, char *err, size_t errlen) {
    (void)group_size; (void)scale_format;
    return block_sizes("q8_0", rows, cols, MOE_QK8_0, sizeof(moe_block_q8_0), s, err, errlen);
}

moe_status moe__q8_0_validate(const moe__wmat *w, char *err, size_t errlen) {
    static const size_t off[] = { offsetof(moe_block_q8_0, d) };
    return check_f16(w, "q8_0", sizeof(moe_block_q8_0), MOE_QK8_0, off, 1, err, errlen);
}

void moe__q8_0_dequant_row_ref(const moe__wmat *w, int64_t r, float *out) {
    const moe_block_q8_0 *b = row_blocks(w, r, MOE_QK8_0, sizeof *b); // (cols/32)
    for (int64_t i = 0; i < w->cols / MOE_QK8_0; i++) {
        const float d = moe__f16_to_f32(b[i].d);
        for (int j = 0; j < MOE_QK8_0; j++) out[i * MOE_QK8_0 + j] = (float)b[i].qs[j] * d;
    }
}

/* ggml's quantize_row_q8_0_ref, rounding ties away from zero (roundf) like it. */
moe_status moe__q8_0_quantize_ref(const float *src, moe__wmat *w) {
    if (!all_finite(src, w->rows * w->cols)) return MOE_ERR_INVALID_ARG;
    moe_block_q8_0 *y = (moe_block_q8_0 *)w->data;
    for (int64_t i = 0; i < w->rows * w->cols / MOE_QK8_0; i++) {
        const float *x = src + i * MOE_QK8_0;
        float amax = 0;
        for (int j = 0; j < MOE_QK8_0; j++) amax = (fabsf(x[j]) > amax ? fabsf(x[j]) : amax);
        const float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        y[i].d = moe__f32_to_f16(d);
        for (int j = 0; j < MOE_QK8_0; j++) y[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
    return MOE_OK;
}

void moe__quantize_row_q8_0(const float *x, moe_block_q8_0 *y, int64_t k) {
    for (int64_t i = 0; i < k / MOE_QK8_0; i++, x += MOE_QK8_0) {
        float amax = 0;
        bool  bad  = false;
        for (int j = 0; j < MOE_QK8_0; j++) {
            float a = fabsf(x[j]);
            if (a > amax) amax = a;
            if (!isfinite(a)) bad = true;
        }
        if (bad) {
            /* A non-finite value: a NaN scale makes the block's products NaN. */
            y[i].d = 0x7e00;
            memset(y[i].qs, 0, sizeof y[i].qs);
            continue;
        }
        const float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        y[i].d = moe__f32_to_f16(d);
        for (int j = 0; j < MOE_QK8_0; j++) y[i].qs[j] = (int8_t)moe__rne(x[j] * id);
    }
}

void moe__q8_0_act_fake_quant_ref(const moe__wmat *w, float *x, int64_t cols) {
    (void)w;
    moe_block_q8_0 b;
    for (int64_t i = 0; i < cols; i += MOE_QK8_0) {
        moe__quantize_row_q8_0(x + i, &b, MOE_QK8_0);
        const float d = moe__f16_to_f32(b.d);
        for (int j = 0; j < MOE_QK8_0; j++) x[i + j] = (float)b.qs[j] * d;
    }
}

/* ===== Q4_0 ===== */

moe_status moe__q4_0_sizes(int64_t rows, int64_t cols, int32_t group_size,
                           moe_format scale_format, moe__wsizes *s, char *err, size_t errlen) {
    (void)group_size; (void)scale_format;
    return block_sizes("q4_0", rows, cols, MOE_QK8_0, sizeof(moe_block_q4_0), s, err, errlen);
}

moe_status moe__q4_0_validate(const moe__wmat *w, char *err, size_t errlen) {
    static const size_t off[] = { offsetof(moe_block_q4_0, d) };
    return check_f16(w, "q4_0", sizeof(moe_block_q4_0), MOE_QK8_0, off, 1, err, errlen);
}

void moe__q4_0_dequant_row_ref(const moe__wmat *w, int64_t r, float *out) {
    const moe_block_q4_0 *b = row_blocks(w, r, MOE_QK8_0, sizeof *b); // (cols/32)
    for (int64_t i = 0; i < w->cols / MOE_QK8_0; i++) {
        const float d = moe__f16_to_f32(b[i].d);
        for (int j = 0; j < MOE_QK8_0 / 2; j++) {
            out[i * MOE_QK8_0 + j]      = (float)((b[i].qs[j] & 15) - 8) * d;
            out[i * MOE_QK8_0 + j + 16] = (float)((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

/* ggml's quantize_row_q4_0_ref: d = (signed value of largest |x|) / -8. */
moe_status moe__q4_0_quantize_ref(const float *src, moe__wmat *w) {
    if (!all_finite(src, w->rows * w->cols)) return MOE_ERR_INVALID_ARG;
    moe_block_q4_0 *y = (moe_block_q4_0 *)w->data;
    for (int64_t i = 0; i < w->rows * w->cols / MOE_QK8_0; i++) {
        const float *x = src + i * MOE_QK8_0;
        float amax = 0, max = 0;
        for (int j = 0; j < MOE_QK8_0; j++)
            if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }
        const float d = max / -8.0f, id = d ? 1.0f / d : 0.0f;
        y[i].d = moe__f32_to_f16(d);
        for (int j = 0; j < MOE_QK8_0 / 2; j++) {
            int q0 = (int)(x[j] * id + 8.5f), q1 = (int)(x[j + 16] * id + 8.5f);
            q0 = q0 > 15 ? 15 : q0;
            q1 = q1 > 15 ? 15 : q1;
            y[i].qs[j] = (uint8_t)(q0 | q1 << 4);
        }
    }
    return MOE_OK;
}

/* ===== GGUF MXFP4 ===== */

static const int8_t kvalues_mxfp4[16] = { 0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12 };

moe_status moe__mxfp4_gguf_sizes(int64_t rows, int64_t cols, int32_t group_size,
                                 moe_format scale_format, moe__wsizes *s, char *err,
                                 size_t errlen) {
    (void)group_size; (void)scale_format;
    return block_sizes("gguf-mxfp4", rows, cols, MOE_QK8_0, sizeof(moe_block_mxfp4_gguf), s, err,
                       errlen);
}

moe_status moe__mxfp4_gguf_validate(const moe__wmat *w, char *err, size_t errlen) {
    const moe_block_mxfp4_gguf *b = w->data;
    int64_t nb = w->cols / MOE_QK8_0;
    for (int64_t i = 0; i < w->rows * nb; i++)
        if (b[i].e == 0xff)
            return moe__errf(err, errlen, MOE_ERR_SCALE, "gguf-mxfp4: e8m0 scale 0xFF at row %lld, "
                             "block %lld", (long long)(i / nb), (long long)(i % nb));
    return MOE_OK;
}

void moe__mxfp4_gguf_dequant_row_ref(const moe__wmat *w, int64_t r, float *out) {
    const moe_block_mxfp4_gguf *b = row_blocks(w, r, MOE_QK8_0, sizeof *b); // (cols/32)
    for (int64_t i = 0; i < w->cols / MOE_QK8_0; i++) {
        const float d = moe__e8m0_to_f32_half(b[i].e);
        for (int j = 0; j < MOE_QK8_0 / 2; j++) {
            out[i * MOE_QK8_0 + j]      = (float)kvalues_mxfp4[b[i].qs[j] & 15] * d;
            out[i * MOE_QK8_0 + j + 16] = (float)kvalues_mxfp4[b[i].qs[j] >> 4] * d;
        }
    }
}

/* As gguf-py's MXFP4 quantizer: e = floor(log2(amax)) - 2 + 127, then the
 * nearest value of the doubled e2m1 table (first on ties). */
moe_status moe__mxfp4_gguf_quantize_ref(const float *src, moe__wmat *w) {
    if (!all_finite(src, w->rows * w->cols)) return MOE_ERR_INVALID_ARG;
    moe_block_mxfp4_gguf *y = (moe_block_mxfp4_gguf *)w->data;
    for (int64_t i = 0; i < w->rows * w->cols / MOE_QK8_0; i++) {
        const float *x = src + i * MOE_QK8_0;
        float amax = 0;
        for (int j = 0; j < MOE_QK8_0; j++) amax = (fabsf(x[j]) > amax ? fabsf(x[j]) : amax);
        int ex = 0;
        if (amax > 0) frexpf(amax, &ex);
        int e = amax > 0 ? ex - 1 - 2 + 127 : 0;
        y[i].e = (uint8_t)(e < 0 ? 0 : e > 254 ? 254 : e);
        const float d = moe__e8m0_to_f32_half(y[i].e);
        uint8_t q[MOE_QK8_0];
        for (int j = 0; j < MOE_QK8_0; j++) {
            int best = 0;
            float be = INFINITY;
            for (int c = 0; c < 16; c++) {
                float err = fabsf(d * (float)kvalues_mxfp4[c] - x[j]);
                if (err < be) { be = err; best = c; }
            }
            q[j] = (uint8_t)best;
        }
        for (int j = 0; j < 16; j++) y[i].qs[j] = (uint8_t)(q[j] | q[j + 16] << 4);
    }
    return MOE_OK;
}

/* ===== Q4_K ===== */

static void q4k_scale_min(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m  = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
        *m  = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

moe_status moe__q4_k_sizes(int64_t rows, int64_t cols, int32_t group_size,
                           moe_format scale_format, moe__wsizes *s, char *err, size_t errlen) {
    (void)group_size; (void)scale_format;
    return block_sizes("q4_k", rows, cols, MOE_QK_K, sizeof(moe_block_q4_k), s, err, errlen);
}

moe_status moe__q4_k_validate(const moe__wmat *w, char *err, size_t errlen) {
    static const size_t off[] = { offsetof(moe_block_q4_k, d), offsetof(moe_block_q4_k, dmin) };
    return check_f16(w, "q4_k", sizeof(moe_block_q4_k), MOE_QK_K, off, 2, err, errlen);
}

void moe__q4_k_dequant_row_ref(const moe__wmat *w, int64_t r, float *out) {
    const moe_block_q4_k *b = row_blocks(w, r, MOE_QK_K, sizeof *b); // (cols/256)
    for (int64_t i = 0; i < w->cols / MOE_QK_K; i++) {
        const float d = moe__f16_to_f32(b[i].d), dmin = moe__f16_to_f32(b[i].dmin);
        float *y = out + i * MOE_QK_K;
        for (int c = 0; c < 4; c++) {
            int sc, m;
            q4k_scale_min(2 * c, b[i].scales, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            q4k_scale_min(2 * c + 1, b[i].scales, &sc, &m);
            const float d2 = d * (float)sc, m2 = dmin * (float)m;
            const uint8_t *q = b[i].qs + 32 * c;
            for (int l = 0; l < 32; l++) y[64 * c + l]      = d1 * (float)(q[l] & 15) - m1;
            for (int l = 0; l < 32; l++) y[64 * c + 32 + l] = d2 * (float)(q[l] >> 4) - m2;
        }
    }
}

/* A simple Q4_K quantizer (not ggml's search): per sub-block of 32, the
 * range [min(x, 0), max(x)] in 15 steps; 6-bit scales and mins relative to
 * the block's largest. */
moe_status moe__q4_k_quantize_ref(const float *src, moe__wmat *w) {
    if (!all_finite(src, w->rows * w->cols)) return MOE_ERR_INVALID_ARG;
    moe_block_q4_k *y = (moe_block_q4_k *)w->data;
    for (int64_t i = 0; i < w->rows * w->cols / MOE_QK_K; i++) {
        const float *x = src + i * MOE_QK_K;
        float scale[8], mn[8], smax = 0, mmax = 0;
        for (int s = 0; s < 8; s++) {
            float lo = 0, hi = 0;
            for (int l = 0; l < 32; l++) {
                lo = x[32 * s + l] < lo ? x[32 * s + l] : lo;
                hi = x[32 * s + l] > hi ? x[32 * s + l] : hi;
            }
            scale[s] = (hi - lo) / 15.0f;
            mn[s]    = -lo;
            smax = scale[s] > smax ? scale[s] : smax;
            mmax = mn[s] > mmax ? mn[s] : mmax;
        }
        y[i].d    = moe__f32_to_f16(smax / 63.0f);
        y[i].dmin = moe__f32_to_f16(mmax / 63.0f);
        const float d = moe__f16_to_f32(y[i].d), dmin = moe__f16_to_f32(y[i].dmin);
        uint8_t ls[8], lm[8];
        for (int s = 0; s < 8; s++) {
            int a = d > 0 ? moe__rne(scale[s] / d) : 0, b = dmin > 0 ? moe__rne(mn[s] / dmin) : 0;
            ls[s] = (uint8_t)(a > 63 ? 63 : a);
            lm[s] = (uint8_t)(b > 63 ? 63 : b);
        }
        memset(y[i].scales, 0, sizeof y[i].scales);
        for (int s = 0; s < 8; s++) {
            if (s < 4) {
                y[i].scales[s]     = ls[s];
                y[i].scales[s + 4] = lm[s];
            } else {
                y[i].scales[s + 4] = (uint8_t)((ls[s] & 15) | (lm[s] & 15) << 4);
                y[i].scales[s - 4] |= (uint8_t)((ls[s] >> 4) << 6);
                y[i].scales[s]     |= (uint8_t)((lm[s] >> 4) << 6);
            }
        }
        for (int c = 0; c < 4; c++) {
            for (int h = 0; h < 2; h++) {
                const int s = 2 * c + h;
                const float ds = d * (float)ls[s], ms = dmin * (float)lm[s];
                for (int l = 0; l < 32; l++) {
                    int q = ds > 0 ? moe__rne((x[32 * s + l] + ms) / ds) : 0;
                    q = q < 0 ? 0 : q > 15 ? 15 : q;
                    if (h == 0) y[i].qs[32 * c + l] = (uint8_t)q;
                    else        y[i].qs[32 * c + l] |= (uint8_t)(q << 4);
                }
            }
        }
    }
    return MOE_OK;
}

/* ===== Q6_K ===== */

moe_status moe__q6_k_sizes(int64_t rows, int64_t cols, int32_t group_size,
                           moe_format scale_format, moe__wsizes *s, char *err, size_t errlen) {
    (void)group_size; (void)scale_format;
    return block_sizes("q6_k", rows, cols, MOE_QK_K, sizeof(moe_block_q6_k), s, err, errlen);
}

moe_status moe__q6_k_validate(const moe__wmat *w, char *err, size_t errlen) {
    static const size_t off[] = { offsetof(moe_block_q6_k, d) };
    return check_f16(w, "q6_k", sizeof(moe_block_q6_k), MOE_QK_K, off, 1, err, errlen);
}

void moe__q6_k_dequant_row_ref(const moe__wmat *w, int64_t r, float *out) {
    const moe_block_q6_k *b = row_blocks(w, r, MOE_QK_K, sizeof *b); // (cols/256)
    for (int64_t i = 0; i < w->cols / MOE_QK_K; i++) {
        const float d = moe__f16_to_f32(b[i].d);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = b[i].ql + 64 * h, *qh = b[i].qh + 32 * h;
            const int8_t  *sc = b[i].scales + 8 * h;
            float *y = out + i * MOE_QK_K + 128 * h;
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 15) | ((qh[l] >> 0) & 3) << 4) - 32;
                const int q2 = ((ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4) - 32;
                const int q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
                const int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
                y[l]      = d * (float)sc[is + 0] * (float)q1;
                y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
        }
    }
}

/* A simple Q6_K quantizer: per sub-block of 16 a signed scale so that the
 * value of largest magnitude maps to -32; int8 scales relative to the
 * largest. */
moe_status moe__q6_k_quantize_ref(const float *src, moe__wmat *w) {
    if (!all_finite(src, w->rows * w->cols)) return MOE_ERR_INVALID_ARG;
    moe_block_q6_k *y = (moe_block_q6_k *)w->data;
    for (int64_t i = 0; i < w->rows * w->cols / MOE_QK_K; i++) {
        const float *x = src + i * MOE_QK_K;
        float scale[16], amax_s = 0;
        for (int s = 0; s < 16; s++) {
            float amax = 0, max = 0;
            for (int l = 0; l < 16; l++)
                if (fabsf(x[16 * s + l]) > amax) {
                    amax = fabsf(x[16 * s + l]);
                    max  = x[16 * s + l];
                }
            scale[s] = max / -32.0f;
            amax_s = fabsf(scale[s]) > amax_s ? fabsf(scale[s]) : amax_s;
        }
        y[i].d = moe__f32_to_f16(amax_s / 127.0f);
        const float d = moe__f16_to_f32(y[i].d);
        uint8_t L[MOE_QK_K];
        for (int s = 0; s < 16; s++) {
            int is = d > 0 ? moe__rne(scale[s] / d) : 0;
            is = is < -127 ? -127 : is > 127 ? 127 : is;
            y[i].scales[s] = (int8_t)is;
            const float ds = d * (float)is;
            for (int l = 0; l < 16; l++) {
                int q = ds != 0 ? moe__rne(x[16 * s + l] / ds) : 0;
                q = q < -32 ? -32 : q > 31 ? 31 : q;
                L[16 * s + l] = (uint8_t)(q + 32);
            }
        }
        for (int h = 0; h < 2; h++) {
            uint8_t *ql = y[i].ql + 64 * h, *qh = y[i].qh + 32 * h;
            const uint8_t *Lh = L + 128 * h;
            for (int l = 0; l < 32; l++) {
                ql[l]      = (uint8_t)((Lh[l] & 15) | (Lh[l + 64] & 15) << 4);
                ql[l + 32] = (uint8_t)((Lh[l + 32] & 15) | (Lh[l + 96] & 15) << 4);
                qh[l] = (uint8_t)((Lh[l] >> 4) | (Lh[l + 32] >> 4) << 2 | (Lh[l + 64] >> 4) << 4 |
                                  (Lh[l + 96] >> 4) << 6);
            }
        }
    }
    return MOE_OK;
}

/* ===== q8_K activations ===== */

#if defined(__AVX512F__) && defined(__AVX512BW__)
/* One block of moe__quantize_row_q8_k, 16 lanes at a time: the scalar
 * version's (below) signed value of largest magnitude (the first one on
 * ties), iscale, products and round-to-nearest-even conversion (the
 * default rounding mode, as moe__rne), so the same bytes. The CPU kernels
 * of Q4_K and Q6_K quantize every input row with it (Q6_K's 2048-value
 * row, Zen 5: 2.7 -> 0.32 µs). */
static void quantize_block_q8_k_avx512(const float *x, moe_block_q8_k *y) {
    __m512    am = _mm512_setzero_ps();
    __mmask16 nf = 0;
    for (int c = 0; c < 16; c++) {
        const __m512 a = _mm512_abs_ps(_mm512_loadu_ps(x + 16 * c));
        nf |= _mm512_cmp_ps_mask(a, _mm512_set1_ps(INFINITY), _CMP_NLT_UQ); /* Inf, NaN */
        am = _mm512_max_ps(a, am);
    }
    const float amax = _mm512_reduce_max_ps(am);
    memset(y->qs, 0, sizeof y->qs);
    memset(y->bsums, 0, sizeof y->bsums);
    if (nf || !amax) {
        y->d = nf ? NAN : 0.0f;
        return;
    }
    float max = 0;
    for (int c = 0; c < 16; c++) {
        const __mmask16 hit = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(x + 16 * c)),
                                                 _mm512_set1_ps(amax), _CMP_EQ_OQ);
        if (hit) {
            max = x[16 * c + __builtin_ctz(hit)];
            break;
        }
    }
    const float  iscale = -127.0f / max;
    const __m512 iv     = _mm512_set1_ps(iscale);
    for (int c = 0; c < 16; c++) {
        const __m512i q = _mm512_min_epi32(
            _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + 16 * c), iv)),
            _mm512_set1_epi32(127));
        _mm_storeu_si128((__m128i *)(y->qs + 16 * c), _mm512_cvtepi32_epi8(q));
        y->bsums[c] = (int16_t)_mm512_reduce_add_epi32(q);
    }
    y->d = 1.0f / iscale;
}
#else
/* One block: ggml's quantize_row_q8_K, the signed value of largest magnitude
 * (the first one on ties) mapped to -127. */
static void quantize_block_q8_k_scalar(const float *x, moe_block_q8_k *y) {
    float max = 0, amax = 0;
    bool  bad = false;
    for (int j = 0; j < MOE_QK_K; j++) {
        const float ax = fabsf(x[j]);
        if (ax > amax) { amax = ax; max = x[j]; }
        if (!isfinite(ax)) bad = true;
    }
    memset(y->qs, 0, sizeof y->qs);
    memset(y->bsums, 0, sizeof y->bsums);
    if (bad || !amax) {
        y->d = bad ? NAN : 0.0f;
        return;
    }
    const float iscale = -127.0f / max;
    for (int j = 0; j < MOE_QK_K; j++) {
        const int v = moe__rne(iscale * x[j]);
        y->qs[j] = (int8_t)(v > 127 ? 127 : v);
    }
    for (int j = 0; j < MOE_QK_K / 16; j++) {
        int sum = 0;
        for (int l = 0; l < 16; l++) sum += y->qs[16 * j + l];
        y->bsums[j] = (int16_t)sum;
    }
    y->d = 1.0f / iscale;
}
#endif

void moe__quantize_row_q8_k(const float *x, moe_block_q8_k *y, int64_t k) {
    for (int64_t i = 0; i < k / MOE_QK_K; i++, x += MOE_QK_K) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
        quantize_block_q8_k_avx512(x, &y[i]);
#else
        quantize_block_q8_k_scalar(x, &y[i]);
#endif
    }
}

void moe__q8_k_act_fake_quant_ref(const moe__wmat *w, float *x, int64_t cols) {
    (void)w;
    moe_block_q8_k b;
    for (int64_t i = 0; i < cols; i += MOE_QK_K) {
        moe__quantize_row_q8_k(x + i, &b, MOE_QK_K);
        for (int j = 0; j < MOE_QK_K; j++) x[i + j] = (float)b.qs[j] * b.d;
    }
}
