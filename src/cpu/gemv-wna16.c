/*
 * gemv-wna16.c - CPU kernels of INT4_GPTQ, INT8_GPTQ and INT4_AWQ on the
 * fp32 engine of gemv-fp.h (weight-only: activations stay f32). The
 * checkpoints' layouts are packed across rows (GPTQ: 8 or 4 values of one
 * row per int32, consecutive rows in consecutive words; AWQ: 8 rows per
 * word), so the AVX-512 kernels vectorize over output rows: GPTQ reads the
 * words of 16 rows with one load, AWQ the words of 128 rows (8 vectors of
 * 16 rows per load); nibbles become floats through a vpermps table. The
 * portable version dequantizes a row at a time (strided words) on the fp32
 * engine of gemv-fp.h.
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
    const moe__cpu_format moe__cpu_##name = { .gemm = gemm_##name };

#else
/* ===== AVX-512 GPTQ: 16 output rows per vector =====
 *
 * The packed words of 16 consecutive rows are contiguous (one word per
 * row), so lane l of every vector is row r + l: each lane sums its own row
 * in increasing k, with the group's integer-valued (q - zero) * x products
 * accumulated first and the group scale applied once per group (per k with
 * act-order g_idx). Results do not depend on which rows share a vector. */

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

/* Value j of the words, minus the zero point, as floats. 4 bits: vpermps
 * looks the nibble up in a table of q - 8 (it reads only the low 4 bits of
 * each index, so the shifted word needs no mask). 8 bits: the byte or-ed
 * into the mantissa of 2^23 is 2^23 + q, minus 2^23 + 128 (all exact). */
static inline __m512 gptq_val(__m512i words, int j, int bits) {
    const __m512i v = j ? _mm512_srli_epi32(words, (unsigned)(bits * j)) : words;
    if (bits == 4)
        return _mm512_permutexvar_ps(v, _mm512_set_ps(7, 6, 5, 4, 3, 2, 1, 0, -1, -2, -3, -4,
                                                       -5, -6, -7, -8));
    const __m512i f = _mm512_ternarylogic_epi32(v, _mm512_set1_epi32(0xff),
                                                _mm512_set1_epi32(0x4b000000), 0xea);
    return _mm512_sub_ps(_mm512_castsi512_ps(f), _mm512_set1_ps(8388608.0f + 128.0f));
}

/* Rows of a tile processed together, and the order: for each step of 8
 * values along K, all 16-row vectors of the tile in turn. The packed
 * words of one step for the whole tile are then one contiguous run (a word
 * per row), read once, instead of one 64-byte line per page when each
 * vector walked K alone. */
enum { WV_ROWS = 512, WV_NV = WV_ROWS / 16 + 1, WV_PF = 8, WV_PF_NEAR = 2 };

/* 8 values along K (from k) of 16 rows for NX activation rows (a
 * compile-time count): ga[i] += sum_j (q - zero)[k + j] * x_i[k + j]
 * (times the act-order scale of each k when g_idx is set). */
static inline __attribute__((always_inline)) void wv_step(
    const moe__wmat *w, const uint32_t *q, int64_t k, int64_t rb, __mmask16 m,
    const float *const *xs, float (*ga)[16], int bits, int NX) {
    __m512 acc[4];
    for (int i = 0; i < NX; i++) acc[i] = _mm512_load_ps(ga[i]);
    const int     per   = 32 / bits;
    __m512i       words = _mm512_setzero_si512();
#pragma GCC unroll 8 /* constant shifts, no loop counter */
    for (int j = 0; j < 8; j++) {
        if (j % per == 0) words = gptq_words(q, w, (k + j) / per, rb, m);
        __m512 val = gptq_val(words, j % per, bits);
        if (w->g_idx) val = _mm512_mul_ps(val, scales16(w, w->g_idx[k + j], rb, m));
        for (int i = 0; i < NX; i++)
            acc[i] = _mm512_fmadd_ps(val, _mm512_set1_ps(xs[i][k + j]), acc[i]);
    }
    for (int i = 0; i < NX; i++) _mm512_store_ps(ga[i], acc[i]);
}

static inline __attribute__((always_inline)) void gemm_wv(
    const moe__wmat *w, int64_t r0, int64_t r1, const void *xq, size_t xq_stride, int64_t n_x,
    float *y, int64_t y_stride, int bits) {
    const int64_t   K = w->cols, G = w->group_size;
    const uint32_t *q = w->data;
    _Alignas(64) float acc[WV_NV][WV_XG][16], ga[WV_NV][WV_XG][16];
    __mmask16          mk[WV_NV];
    for (int64_t c0 = r0; c0 < r1; c0 += WV_ROWS) {
        const int64_t c1 = c0 + WV_ROWS < r1 ? c0 + WV_ROWS : r1, nv = (c1 - c0 + 15) / 16;
        for (int64_t v = 0; v < nv; v++) {
            const int64_t rb = c0 + 16 * v, n = c1 - rb < 16 ? c1 - rb : 16;
            const int64_t skip = rb < r0 ? r0 - rb : 0;
            mk[v] = (__mmask16)(((1u << n) - 1) & ~((1u << skip) - 1));
        }
        /* Bytes of one step's words for the tile, and their distance. */
        const char  *pf0  = (const char *)(q + c0);
        const size_t span = (size_t)(c1 - c0) * 4;
        const size_t step = (size_t)w->rows * 4 * 8 / (size_t)(32 / bits);
        for (int64_t i0 = 0; i0 < n_x; i0 += WV_XG) {
            const int64_t nx = n_x - i0 < WV_XG ? n_x - i0 : WV_XG;
            const float  *xs[WV_XG];
            for (int64_t i = 0; i < WV_XG; i++)
                xs[i] = (const float *)((const char *)xq +
                                        (size_t)(i0 + (i < nx ? i : 0)) * xq_stride);
            memset(acc, 0, sizeof acc);
            for (int64_t g0 = 0; g0 < K; g0 += G) {
                for (int64_t v = 0; v < nv; v++) memset(ga[v], 0, sizeof ga[v]);
                for (int64_t k = g0; k < g0 + G; k += 8) {
                    /* Every step is a new page (GPTQ: rows * 4 bytes further): the
                     * step WV_PF ahead into L2, the step WV_PF_NEAR ahead into L1. */
                    if (k + 8 * WV_PF < K) {
                        const char *p = pf0 + (size_t)((k + 8 * WV_PF) / 8) * step;
                        for (size_t o = 0; o < span; o += 64) __builtin_prefetch(p + o, 0, 2);
                    }
                    if (k + 8 * WV_PF_NEAR < K) {
                        const char *p = pf0 + (size_t)((k + 8 * WV_PF_NEAR) / 8) * step;
                        for (size_t o = 0; o < span; o += 64) __builtin_prefetch(p + o, 0, 3);
                    }
                    for (int64_t v = 0; v < nv; v++) {
                        if (nx == 1)
                            wv_step(w, q, k, c0 + 16 * v, mk[v], xs, ga[v], bits, 1);
                        else
                            wv_step(w, q, k, c0 + 16 * v, mk[v], xs, ga[v], bits, 4);
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
    gemm_wv(w, r0, r1, xq, xq_stride, n_x, y, y_stride, 4);
}
static void gemm_int8_gptq(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                           size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    gemm_wv(w, r0, r1, xq, xq_stride, n_x, y, y_stride, 8);
}

/* ===== AWQ: 128 rows per 512-bit load =====
 *
 * The 16 words of one k for rows b0 .. b0 + 127 are contiguous, and nibble
 * n of word v holds row b0 + 8v + awq_row[n] (the inverse of the packing
 * order MOE_AWQ_NIBBLE_INIT). So one load gives 8 vectors of 16 rows:
 * vector n, lane v is row b0 + 8v + awq_row[n], its value the nibble
 * looked up as a float (vpermps reads the low 4 bits of the shifted word)
 * minus the row's zero point, which the zeros word of the group gives the
 * same way (the subtraction is exact, so no cancellation is traded for
 * speed). Per row, as in the GPTQ kernel: the group's (q - z) * x summed in
 * increasing k, times the group scale, added to the row's sum; the lane a
 * row sits in does not change its value. One 128-row block walks all of K
 * (a line per k, rows / 8 words apart), prefetched AWQ_PF k ahead into L2
 * and AWQ_PF_NEAR into L1; up to AWQ_XG activation rows share the decode.
 */
enum { AWQ_XG = 2, AWQ_PF = 32, AWQ_PF_NEAR = 8 };

static const int awq_row[8] = { 0, 2, 4, 6, 1, 3, 5, 7 };

/* Rows b0 .. b0 + 8 nw - 1 (b0 % 8 == 0, nw <= 16 words) for NX activation
 * rows: acc[i][n] lane v = row b0 + 8v + awq_row[n]. */
static inline __attribute__((always_inline)) void awq_block(
    const moe__wmat *w, int64_t b0, int nw, const float *const *xs, __m512 (*acc)[8], int NX) {
    const int64_t   K = w->cols, G = w->group_size, wpr = w->rows / 8;
    const uint32_t *q = (const uint32_t *)w->data + b0 / 8, *z = (const uint32_t *)w->zeros + b0 / 8;
    const __mmask16 mw  = (__mmask16)((1u << nw) - 1);
    const __m512    lut = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const size_t    kst = (size_t)wpr * 4; /* bytes from one k to the next */
    __m512i         sidx[8];
    for (int n = 0; n < 8; n++)
        sidx[n] = _mm512_add_epi32(_mm512_mullo_epi32(
                                       _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5,
                                                        4, 3, 2, 1, 0), _mm512_set1_epi32(8)),
                                   _mm512_set1_epi32(awq_row[n]));
    for (int i = 0; i < NX; i++)
        for (int n = 0; n < 8; n++) acc[i][n] = _mm512_setzero_ps();
    for (int64_t g0 = 0; g0 < K; g0 += G) {
        /* The group's scales in natural row order, then per vector. */
        _Alignas(64) float sn[128];
        const uint16_t *sp = (const uint16_t *)w->scales + (g0 / G) * w->rows + b0;
        for (int c = 0; c < 8; c++) {
            const int       left = 8 * nw - 16 * c;
            const __mmask16 m    = left >= 16 ? 0xffff : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
            const __m256i   h    = _mm256_maskz_loadu_epi16(m, sp + (left > 0 ? 16 * c : 0));
            _mm512_store_ps(sn + 16 * c,
                            w->scale_format == MOE_FORMAT_BF16
                                ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                                : _mm512_cvtph_ps(h));
        }
        const __m512i zw = _mm512_maskz_loadu_epi32(mw, z + (g0 / G) * wpr);
        __m512        zf[8], ga[AWQ_XG][8];
#pragma GCC unroll 8
        for (int n = 0; n < 8; n++) {
            zf[n] = _mm512_permutexvar_ps(n ? _mm512_srli_epi32(zw, 4 * n) : zw, lut);
            for (int i = 0; i < NX; i++) ga[i][n] = _mm512_setzero_ps();
        }
        for (int64_t k = g0; k < g0 + G; k++) {
            const char *qk = (const char *)(q + k * wpr);
            /* one line (two when the 64 bytes straddle) per k, k's far apart */
            __builtin_prefetch(qk + AWQ_PF * kst, 0, 2);
            __builtin_prefetch(qk + AWQ_PF * kst + 63, 0, 2);
            __builtin_prefetch(qk + AWQ_PF_NEAR * kst, 0, 3);
            __builtin_prefetch(qk + AWQ_PF_NEAR * kst + 63, 0, 3);
            const __m512i wv = _mm512_maskz_loadu_epi32(mw, qk);
#pragma GCC unroll 8
            for (int n = 0; n < 8; n++) {
                const __m512 v = _mm512_sub_ps(
                    _mm512_permutexvar_ps(n ? _mm512_srli_epi32(wv, 4 * n) : wv, lut), zf[n]);
                for (int i = 0; i < NX; i++)
                    ga[i][n] = _mm512_fmadd_ps(v, _mm512_set1_ps(xs[i][k]), ga[i][n]);
            }
        }
        for (int n = 0; n < 8; n++) {
            const __m512 sv = _mm512_i32gather_ps(sidx[n], sn, 4);
            for (int i = 0; i < NX; i++) acc[i][n] = _mm512_fmadd_ps(ga[i][n], sv, acc[i][n]);
        }
    }
}

static void gemm_int4_awq(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                          size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    for (int64_t b0 = r0 / 8 * 8; b0 < r1; b0 += 128) {
        const int nw = (int)((r1 - b0 + 7) / 8 < 16 ? (r1 - b0 + 7) / 8 : 16);
        for (int64_t i0 = 0; i0 < n_x; i0 += AWQ_XG) {
            const int64_t nx = n_x - i0 < AWQ_XG ? n_x - i0 : AWQ_XG;
            const float  *xs[AWQ_XG];
            for (int64_t i = 0; i < AWQ_XG; i++)
                xs[i] = (const float *)((const char *)xq +
                                        (size_t)(i0 + (i < nx ? i : 0)) * xq_stride);
            __m512 acc[AWQ_XG][8];
            if (nx == 1) awq_block(w, b0, nw, xs, acc, 1);
            else         awq_block(w, b0, nw, xs, acc, 2);
            for (int64_t i = 0; i < nx; i++)
                for (int n = 0; n < 8; n++) {
                    _Alignas(64) float t[16];
                    _mm512_store_ps(t, acc[i][n]);
                    for (int v = 0; v < nw; v++) {
                        const int64_t r = b0 + 8 * v + awq_row[n];
                        if (r >= r0 && r < r1) y[(i0 + i) * y_stride + (r - r0)] = t[v];
                    }
                }
        }
    }
}

#define WNA16_ENTRY(name) const moe__cpu_format moe__cpu_##name = { .gemm = gemm_##name };

#endif

WNA16_ENTRY(int4_gptq)
WNA16_ENTRY(int8_gptq)
WNA16_ENTRY(int4_awq)
