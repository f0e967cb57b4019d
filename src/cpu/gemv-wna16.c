/*
 * gemv-wna16.c - CPU kernels of INT4_GPTQ, INT8_GPTQ and INT4_AWQ on the
 * fp32 engine of gemv-fp.h (weight-only: activations stay f32). The
 * checkpoints' layouts are packed across rows (GPTQ: 8 or 4 values of one
 * row per int32, consecutive rows in consecutive words; AWQ: 8 rows per
 * word), so the AVX-512 kernel vectorizes over 16 output rows, reading the
 * words of 16 rows with one load; the portable version dequantizes a row at
 * a time (strided words) on the fp32 engine of gemv-fp.h.
 */
#include "gemv-fp.h"

#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define WV_AVX512 1
#endif

#if !WV_AVX512
/* ===== Portable: one row at a time on the fp32 engine ===== */

static const int awq_nibble[8] = MOE_AWQ_NIBBLE_INIT;

static float scale_at(const moe__wmat *w, int64_t i) {
    uint16_t h = ((const uint16_t *)w->scales)[i];
    return w->scale_format == MOE_FORMAT_BF16 ? moe__bf16_to_f32(h) : moe__f16_to_f32(h);
}

static inline void unpack_gptq(const moe__wmat *w, int64_t r, int64_t k0, int64_t kc, float *out,
                               int bits) {
    const uint32_t *q = (const uint32_t *)w->data; // (cols / (32/bits), rows)
    const int per = 32 / bits, zero = 1 << (bits - 1);
    const uint32_t mask = (1u << bits) - 1;
    if (w->g_idx) {
        for (int64_t k = k0; k < k0 + kc; k += per) {
            uint32_t v = q[(k / per) * w->rows + r];
            for (int j = 0; j < per; j++, v >>= bits)
                out[k - k0 + j] = (float)((int)(v & mask) - zero) *
                                  scale_at(w, w->g_idx[k + j] * w->rows + r);
        }
        return;
    }
    for (int64_t g0 = k0; g0 < k0 + kc; g0 += w->group_size) {
        const float s = scale_at(w, (g0 / w->group_size) * w->rows + r);
        for (int64_t k = g0; k < g0 + w->group_size; k += per) {
            uint32_t v = q[(k / per) * w->rows + r];
            for (int j = 0; j < per; j++, v >>= bits)
                out[k - k0 + j] = (float)((int)(v & mask) - zero) * s;
        }
    }
}

static void unpack_int4_gptq(const moe__wmat *w, int64_t r, int64_t k0, int64_t kc, float *out) {
    unpack_gptq(w, r, k0, kc, out, 4);
}

static void unpack_int8_gptq(const moe__wmat *w, int64_t r, int64_t k0, int64_t kc, float *out) {
    unpack_gptq(w, r, k0, kc, out, 8);
}

static void unpack_int4_awq(const moe__wmat *w, int64_t r, int64_t k0, int64_t kc, float *out) {
    const int64_t   wpr   = w->rows / 8;
    const uint32_t *q     = (const uint32_t *)w->data + r / 8;  // column r/8 of (cols, rows/8)
    const uint32_t *z     = (const uint32_t *)w->zeros + r / 8; // column r/8 of (cols/g, rows/8)
    const int       shift = 4 * awq_nibble[r % 8];
    for (int64_t g0 = k0; g0 < k0 + kc; g0 += w->group_size) {
        const int64_t g  = g0 / w->group_size;
        const float   s  = scale_at(w, g * w->rows + r);
        const int     zp = (int)((z[g * wpr] >> shift) & 15u);
        for (int64_t k = g0; k < g0 + w->group_size; k++)
            out[k - k0] = (float)((int)((q[k * wpr] >> shift) & 15u) - zp) * s;
    }
}

#define WNA16_ENTRY(name)                                                                      \
    static void gemm_##name(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,        \
                            size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {       \
        fp_gemm(w, r0, r1, xq, xq_stride, n_x, y, y_stride, unpack_##name);                    \
    }                                                                                          \
    const moe__cpu_format moe__cpu_##name = { NULL, NULL, gemm_##name };

#else
/* ===== AVX-512: 16 output rows per vector =====
 *
 * The packed words of 16 consecutive rows are contiguous (GPTQ: one word
 * per row; AWQ: two words hold the 16 rows), so lane l of every vector is
 * row r + l: each lane sums its own row in increasing k, with the group's
 * integer-valued (q - zero) * x products accumulated first and the group
 * scale applied once per group (per k with act-order g_idx). Results do not
 * depend on which rows share a vector. */

enum { WV_XG = 4 };

static inline __m512 scales16(const moe__wmat *w, int64_t g, int64_t r, __mmask16 m) {
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w->scales + g * w->rows + r);
    if (w->scale_format == MOE_FORMAT_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/* The 16 rows' packed words of word-row kw (GPTQ). */
static inline __m512i gptq_words(const uint32_t *q, const moe__wmat *w, int64_t kw, int64_t r,
                                 __mmask16 m) {
    return _mm512_maskz_loadu_epi32(m, q + kw * w->rows + r);
}

/* Value j of the words, minus the zero point, as floats. */
static inline __m512 gptq_val(__m512i words, int j, int bits) {
    __m512i v = _mm512_and_si512(_mm512_srli_epi32(words, (unsigned)(bits * j)),
                                 _mm512_set1_epi32((1 << bits) - 1));
    return _mm512_cvtepi32_ps(_mm512_sub_epi32(v, _mm512_set1_epi32(1 << (bits - 1))));
}

static inline __m512 awq_vals(const uint32_t *t, int64_t wpr, int64_t row_k, int64_t r,
                              __mmask16 m) {
    /* rows r..r+15 (r % 8 == 0 here): words r/8 and r/8 + 1 of table row row_k */
    const __m512i shifts =
        _mm512_set_epi32(28, 12, 24, 8, 20, 4, 16, 0, 28, 12, 24, 8, 20, 4, 16, 0);
    const __m512i which  = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const uint32_t *p = t + row_k * wpr + r / 8;
    /* The second word only when lanes 8..15 are live: past the last 8 rows
     * it would be out of the table. */
    __m128i two = (m >> 8) ? _mm_loadl_epi64((const __m128i *)p) : _mm_cvtsi32_si128((int)p[0]);
    __m512i v = _mm512_castsi128_si512(two);
    v = _mm512_permutexvar_epi32(which, v);
    v = _mm512_and_si512(_mm512_srlv_epi32(v, shifts), _mm512_set1_epi32(15));
    return _mm512_maskz_cvtepi32_ps(m, v);
}

/* Rows of a tile processed together, and the order: for each step of 8
 * values along K, all 16-row vectors of the tile in turn. The packed
 * words of one step for the whole tile are then one contiguous run (GPTQ:
 * a word per row; AWQ: a word per 8 rows), read once, instead of one
 * 64-byte line per page when each vector walked K alone. */
enum { WV_ROWS = 512, WV_NV = WV_ROWS / 16 + 1, WV_PF = 4 };

/* 8 values along K (from k) of 16 rows for NX activation rows (a
 * compile-time count): ga[i] += sum_j (q - zero)[k + j] * x_i[k + j]
 * (times the act-order scale of each k when g_idx is set). */
static inline __attribute__((always_inline)) void wv_step(
    const moe__wmat *w, const uint32_t *q, int64_t k, int64_t rb, __mmask16 m, __m512 zv,
    const float *const *xs, float (*ga)[16], int bits, bool awq, int NX) {
    const int64_t wpr = w->rows / 8;
    __m512 acc[4];
    for (int i = 0; i < NX; i++) acc[i] = _mm512_load_ps(ga[i]);
    const int     per   = 32 / bits;
    __m512i       words = _mm512_setzero_si512();
    for (int j = 0; j < 8; j++) {
        __m512 val;
        if (awq) {
            val = _mm512_sub_ps(awq_vals(q, wpr, k + j, rb, m), zv);
        } else {
            if (j % per == 0) words = gptq_words(q, w, (k + j) / per, rb, m);
            val = gptq_val(words, j % per, bits);
        }
        if (w->g_idx) val = _mm512_mul_ps(val, scales16(w, w->g_idx[k + j], rb, m));
        for (int i = 0; i < NX; i++)
            acc[i] = _mm512_fmadd_ps(val, _mm512_set1_ps(xs[i][k + j]), acc[i]);
    }
    for (int i = 0; i < NX; i++) _mm512_store_ps(ga[i], acc[i]);
}

static inline __attribute__((always_inline)) void gemm_wv(
    const moe__wmat *w, int64_t r0, int64_t r1, const void *xq, size_t xq_stride, int64_t n_x,
    float *y, int64_t y_stride, int bits, bool awq) {
    const int64_t   K = w->cols, G = w->group_size, wpr = w->rows / 8;
    const uint32_t *q = w->data, *z = w->zeros;
    _Alignas(64) float acc[WV_NV][WV_XG][16], ga[WV_NV][WV_XG][16];
    __mmask16          mk[WV_NV];
    /* AWQ words hold 8 rows: vectors start on a multiple of 8 and mask. */
    const int64_t rs = awq ? r0 / 8 * 8 : r0;
    for (int64_t c0 = rs; c0 < r1; c0 += WV_ROWS) {
        const int64_t c1 = c0 + WV_ROWS < r1 ? c0 + WV_ROWS : r1, nv = (c1 - c0 + 15) / 16;
        for (int64_t v = 0; v < nv; v++) {
            const int64_t rb = c0 + 16 * v, n = c1 - rb < 16 ? c1 - rb : 16;
            const int64_t skip = rb < r0 ? r0 - rb : 0;
            mk[v] = (__mmask16)(((1u << n) - 1) & ~((1u << skip) - 1));
        }
        /* Bytes of one step's words for the tile, and their distance. */
        const char  *pf0  = awq ? (const char *)(q + c0 / 8) : (const char *)(q + c0);
        const size_t span = awq ? (size_t)(c1 - c0 + 7) / 8 * 4 : (size_t)(c1 - c0) * 4;
        const size_t step = awq ? (size_t)wpr * 4 * 8
                                : (size_t)w->rows * 4 * 8 / (size_t)(32 / bits);
        for (int64_t i0 = 0; i0 < n_x; i0 += WV_XG) {
            const int64_t nx = n_x - i0 < WV_XG ? n_x - i0 : WV_XG;
            const float  *xs[WV_XG];
            for (int64_t i = 0; i < WV_XG; i++)
                xs[i] = (const float *)((const char *)xq +
                                        (size_t)(i0 + (i < nx ? i : 0)) * xq_stride);
            memset(acc, 0, sizeof acc);
            for (int64_t g0 = 0; g0 < K; g0 += G) {
                __m512 zv[WV_NV];
                for (int64_t v = 0; v < nv; v++) {
                    zv[v] = awq ? awq_vals(z, wpr, g0 / G, c0 + 16 * v, mk[v])
                                : _mm512_setzero_ps();
                    memset(ga[v], 0, sizeof ga[v]);
                }
                for (int64_t k = g0; k < g0 + G; k += 8) {
                    if (k + 8 * WV_PF < K) {
                        const char *p = pf0 + (size_t)((k + 8 * WV_PF) / 8) * step;
                        for (size_t o = 0; o < span; o += 64) __builtin_prefetch(p + o, 0, 3);
                    }
                    for (int64_t v = 0; v < nv; v++) {
                        if (nx == 1)
                            wv_step(w, q, k, c0 + 16 * v, mk[v], zv[v], xs, ga[v], bits, awq, 1);
                        else
                            wv_step(w, q, k, c0 + 16 * v, mk[v], zv[v], xs, ga[v], bits, awq, 4);
                    }
                }
                for (int64_t v = 0; v < nv; v++) {
                    const __m512 sv = w->g_idx ? _mm512_set1_ps(1.0f)
                                               : scales16(w, g0 / G, c0 + 16 * v, mk[v]);
                    for (int64_t i = 0; i < nx; i++)
                        _mm512_store_ps(acc[v][i], _mm512_fmadd_ps(_mm512_load_ps(ga[v][i]), sv,
                                                                   _mm512_load_ps(acc[v][i])));
                }
            }
            for (int64_t v = 0; v < nv; v++) {
                const int64_t rb = c0 + 16 * v, n = c1 - rb < 16 ? c1 - rb : 16;
                for (int64_t i = 0; i < nx; i++)
                    for (int64_t l = 0; l < n; l++)
                        if (rb + l >= r0) y[(i0 + i) * y_stride + (rb + l - r0)] = acc[v][i][l];
            }
        }
    }
}

static void gemm_int4_gptq(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                           size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    gemm_wv(w, r0, r1, xq, xq_stride, n_x, y, y_stride, 4, false);
}
static void gemm_int8_gptq(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                           size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    gemm_wv(w, r0, r1, xq, xq_stride, n_x, y, y_stride, 8, false);
}
static void gemm_int4_awq(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                          size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    gemm_wv(w, r0, r1, xq, xq_stride, n_x, y, y_stride, 4, true);
}

#define WNA16_ENTRY(name) const moe__cpu_format moe__cpu_##name = { NULL, NULL, gemm_##name };

#endif

WNA16_ENTRY(int4_gptq)
WNA16_ENTRY(int8_gptq)
WNA16_ENTRY(int4_awq)
