/*
 * gemv-wna16.c - CPU kernels of INT4_GPTQ, INT8_GPTQ and INT4_AWQ
 * (weight-only: the 4-bit formats take bf16 activations, INT8_GPTQ f32).
 * The checkpoints' layouts are packed across rows (GPTQ: 8 or 4 values of
 * one row per int32, consecutive rows in consecutive words; AWQ: 8 rows per
 * word), so the AVX-512 kernels vectorize over output rows: GPTQ reads the
 * words of 16 rows with one load, AWQ the words of 128 rows (8 vectors of
 * 16 rows per load); 4-bit values become bf16 pairs through a vpermw table
 * (below), 8-bit ones floats. The portable version dequantizes a row at a
 * time (strided words) on the fp32 engine of gemv-fp.h, its 4-bit input
 * rows rounded to bf16 as the AVX-512 ones.
 *
 * Those layouts scatter a tile of rows over every page (a few hundred bytes
 * per step, then a jump of a whole word row), which caps decode near a third
 * of the read bandwidth. So the routed experts are re-laid out once when a
 * layer binds them (packed_bytes / pack / gemm_packed, cpu-formats.h): panels
 * of 32 rows, each one sequential stream over K with its scales (and AWQ
 * zero points) inline, read four panels at a time (layout and kernel below).
 * gemm_packed gives the same bits as gemm: per row, the same group sums in
 * the same order. The portable build runs the packed form on the fp32
 * engine too (same dequantized values, same bits).
 *
 * GPTQ act-order (g_idx) whose groups each hold group_size columns, as the
 * quantizers write them, runs K in w->k_order, the columns sorted by group
 * (internal.h): act_quantize puts each activation row in that order, the
 * packed form stores the words of the sorted columns, and the grouped
 * kernels run on both, the checkpoint-layout ones gathering each word's
 * values from the columns k_order names. The group sums then follow the
 * sorted order; other g_idx tables keep the act-order kernels (a scale per
 * column: 40% of the grouped speed, bench/results/2026-11-30-cpu-zen5-gptq-act-order.md).
 */
#include "gemv-fp.h"

#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define WV_AVX512 1
#endif

/* ===== Packed form (bind-time re-layout, both builds) =====
 *
 * The checkpoints' layouts make a tile of rows a set of short runs one word
 * row apart (GPTQ: 4 bytes per row of a tile, then rows * 4 bytes further;
 * AWQ: rows / 2 bytes), so every step of the kernel lands in a new page. The
 * packed form stores panels of PK_ROWS = 32 consecutive rows, each one
 * contiguous stream over all of K, with the panel's scales (and AWQ zero
 * points) inline where the kernel needs them. Panel p (rows 32p .. 32p + 31,
 * lanes past the last row hold zeros), pk_geom.pan bytes, 64-byte aligned:
 *
 *   grouped (no g_idx), per group g in increasing order:
 *     [AWQ, when g % 4 == 0: zeros line (64 B): 16 bytes per group g .. g+3,
 *      byte l = z[lane l] | z[lane l + 16] << 4]
 *     [scales line (64 B): 32 x u16, the checkpoint's f16/bf16 bits of lane l]
 *     [G / per word rows of 128 B: 32 words, word l = row 32p + l]
 *   act-order (GPTQ with g_idx): [ng scales lines][K / per word rows]
 *
 * A word holds per = 32 / bits consecutive values of k of one row, value j
 * in bits bits*j ..: GPTQ words are the checkpoint's words (word row kw =
 * qweight row kw); AWQ words are rebuilt from its interleaved nibbles
 * (values are the raw q, zero points apart). Bytes: the checkpoint's data
 * + scales + zeros, plus the tail panel's padding lanes and, for AWQ, at
 * most 48 bytes of padding per panel.
 */
enum { PK_ROWS = 32, PK_LINE = 64, PK_WROW = PK_ROWS * 4 };

typedef struct pk_geom {
    int     bits, per;   /* bits per value, values per word                   */
    bool    awq, act;    /* AWQ zeros lines; act-order layout                  */
    int64_t ng, npan;    /* groups along K, panels                             */
    size_t  wb;          /* weight bytes of one group of one panel             */
    size_t  pan;         /* bytes of one panel                                 */
} pk_geom;

/* Whether w runs the act-order kernels (a scale per column): GPTQ g_idx
 * without a k_order. */
static inline bool wna16_act(const moe__wmat *w) { return w->g_idx && !w->k_order; }

/* Word row kw of GPTQ row r in the kernels' K order: the checkpoint's word,
 * or with k_order the values of columns k_order[kw * per ..] gathered into
 * one word (value j in bits bits * j ..). */
static uint32_t gptq_word(const moe__wmat *w, int bits, int64_t kw, int64_t r) {
    const uint32_t *q = (const uint32_t *)w->data; // (cols / per, rows)
    const int       per = 32 / bits;
    if (!w->k_order) return q[kw * w->rows + r];
    uint32_t v = 0;
    for (int j = 0; j < per; j++) {
        const int64_t k = w->k_order[kw * per + j];
        v |= ((q[(k / per) * w->rows + r] >> (bits * (k % per))) & ((1u << bits) - 1)) << (bits * j);
    }
    return v;
}

static pk_geom pk_geom_of(const moe__wmat *w) {
    pk_geom g;
    g.bits = w->format == MOE_FORMAT_INT8_GPTQ ? 8 : 4;
    g.per  = 32 / g.bits;
    g.awq  = w->format == MOE_FORMAT_INT4_AWQ;
    g.act  = wna16_act(w);
    g.ng   = w->cols / w->group_size;
    g.npan = (w->rows + PK_ROWS - 1) / PK_ROWS;
    g.wb   = (size_t)(w->group_size / g.per) * PK_WROW;
    g.pan  = (size_t)g.ng * (PK_LINE + g.wb) + (g.awq ? (size_t)(g.ng + 3) / 4 * PK_LINE : 0);
    return g;
}

/* Grouped layout: offset in a panel of group g's scales line (its word rows
 * follow), and of its 16 zero bytes (AWQ). */
static inline size_t pk_group_off(const pk_geom *pg, int64_t g) {
    return (pg->awq ? (size_t)(g / 4 + 1) * PK_LINE : 0) + (size_t)g * (PK_LINE + pg->wb);
}
static inline size_t pk_zeros_off(const pk_geom *pg, int64_t g) {
    return (size_t)(g / 4) * (PK_LINE + 4 * (PK_LINE + pg->wb)) + (size_t)(g % 4) * 16;
}
/* Offset in a panel of word row kw (values kw * per ..). */
static inline size_t pk_word_off(const pk_geom *pg, int64_t G, int64_t kw) {
    if (pg->act) return (size_t)pg->ng * PK_LINE + (size_t)kw * PK_WROW;
    const int64_t spg = G / pg->per; /* word rows per group */
    return pk_group_off(pg, kw / spg) + PK_LINE + (size_t)(kw % spg) * PK_WROW;
}
/* Offset in a panel of the scales line of group g. */
static inline size_t pk_scales_off(const pk_geom *pg, int64_t g) {
    return pg->act ? (size_t)g * PK_LINE : pk_group_off(pg, g);
}

static size_t wna16_packed_bytes(const moe__wmat *w) {
    const pk_geom pg = pk_geom_of(w);
    return (size_t)pg.npan * pg.pan;
}

static void wna16_pack(const moe__wmat *w, void *dst) {
    static const int awq_nib[8] = MOE_AWQ_NIBBLE_INIT;
    const pk_geom   pg = pk_geom_of(w);
    const int64_t   R = w->rows, K = w->cols, G = w->group_size, nkw = K / pg.per;
    const uint32_t *q = (const uint32_t *)w->data;    // GPTQ (K/per, R); AWQ (K, R/8)
    const uint16_t *s = (const uint16_t *)w->scales;  // (K/G, R)
    const uint32_t *z = (const uint32_t *)w->zeros;   // AWQ (K/G, R/8)
    for (int64_t p = 0; p < pg.npan; p++) {
        char         *P  = (char *)dst + (size_t)p * pg.pan;
        const int64_t rb = p * PK_ROWS, n = R - rb < PK_ROWS ? R - rb : PK_ROWS;
        memset(P, 0, pg.pan); /* padding lanes and lines */
        for (int64_t g = 0; g < pg.ng; g++) {
            uint16_t *sl = (uint16_t *)(P + pk_scales_off(&pg, g));
            for (int64_t l = 0; l < n; l++) sl[l] = s[g * R + rb + l];
            if (pg.awq) {
                uint8_t *zl = (uint8_t *)(P + pk_zeros_off(&pg, g));
                for (int64_t l = 0; l < n; l++) {
                    const int64_t r = rb + l;
                    const int     v = (int)((z[g * (R / 8) + r / 8] >> (4 * awq_nib[r % 8])) & 15u);
                    zl[l % 16] |= (uint8_t)(v << (4 * (l / 16)));
                }
            }
        }
        for (int64_t kw = 0; kw < nkw && !pg.awq; kw++) {
            uint32_t *dw = (uint32_t *)(P + pk_word_off(&pg, G, kw));
            if (!w->k_order) memcpy(dw, q + kw * R + rb, (size_t)n * 4);
            else for (int64_t l = 0; l < n; l++) dw[l] = gptq_word(w, pg.bits, kw, rb + l);
        }
    }
    /* AWQ words: 8 rows of the checkpoint (k = 8 kw ..) at a time, read in
     * order; checkpoint word c of those rows gives rows 8c .. 8c + 7 their
     * nibbles j (same panel: 32 is a multiple of 8). */
    for (int64_t kw = 0; kw < nkw && pg.awq; kw++) {
        const uint32_t *qk = q + kw * 8 * (R / 8); // (8, R/8)
        for (int64_t c = 0; c < R / 8; c++) {
            uint32_t v[8] = { 0 };
            for (int j = 0; j < 8; j++) {
                const uint32_t wj = qk[j * (R / 8) + c];
                for (int n = 0; n < 8; n++)
                    v[n] |= ((wj >> (4 * awq_nib[n])) & 15u) << (4 * j);
            }
            memcpy((char *)dst + (size_t)(8 * c / PK_ROWS) * pg.pan + pk_word_off(&pg, G, kw) +
                       4 * (size_t)(8 * c % PK_ROWS), v, sizeof v);
        }
    }
}

/* An activation row as f32 in the kernels' K order (w->k_order): INT8_GPTQ's
 * activation rows, and the portable 4-bit ones before their bf16 rounding. */
static void f32_in_k_order(const moe__wmat *w, const float *x, int64_t cols, void *xq) {
    float *d = xq;
    if (!w->k_order) memcpy(d, x, (size_t)cols * sizeof(float));
    else for (int64_t k = 0; k < cols; k++) d[k] = x[w->k_order[k]];
}

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
    if (wna16_act(w)) {
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
            uint32_t v = gptq_word(w, bits, k / per, r);
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

/* The packed form (wna16_pack), one row at a time: the same floats as the
 * unpack_* above ((q - zero) * s), so the same engine gives the same bits. */
static void unpack_packed(const moe__wmat *w, int64_t r, int64_t k0, int64_t kc, float *out) {
    const pk_geom   pg   = pk_geom_of(w);
    const char     *P    = (const char *)w->data + (size_t)(r / PK_ROWS) * pg.pan;
    const int       l    = (int)(r % PK_ROWS), zero = 1 << (pg.bits - 1);
    const uint32_t  mask = (1u << pg.bits) - 1;
    const int64_t   G    = w->group_size;
    for (int64_t k = k0; k < k0 + kc; k++) {
        const int64_t g = pg.act ? w->g_idx[k] : k / G;
        uint16_t      h, wv;
        uint32_t      word;
        memcpy(&h, P + pk_scales_off(&pg, g) + 2 * (size_t)l, 2);
        memcpy(&word, P + pk_word_off(&pg, G, k / pg.per) + 4 * (size_t)l, 4);
        wv = (uint16_t)((word >> (pg.bits * (k % pg.per))) & mask);
        const float s = w->scale_format == MOE_FORMAT_BF16 ? moe__bf16_to_f32(h)
                                                           : moe__f16_to_f32(h);
        int zp = zero;
        if (pg.awq) zp = (P[pk_zeros_off(&pg, k / G) + l % 16] >> (4 * (l / 16))) & 15;
        out[k - k0] = (float)((int)wv - zp) * s;
    }
}

/* The 4-bit formats' activations: f32 rows of bf16 values, in the
 * kernels' K order for the fp32 engine (cpu-formats.h). */
#define wq4_act_row_bytes moe__cpu_bf16_f32_row_bytes

static void wq4_act(const moe__wmat *w, const float *x, int64_t cols, void *xq) {
    f32_in_k_order(w, x, cols, xq);
    moe__bf16_act_fake_quant_ref(w, xq, cols);
}

#define WNA16_ENTRY(name, ...)                                                                 \
    static void gemm_##name(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,        \
                            size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {       \
        fp_gemm(w, r0, r1, xq, xq_stride, n_x, y, y_stride, unpack_##name);                    \
    }                                                                                          \
    static void gemm_packed_##name(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq, \
                                   size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {\
        fp_gemm(w, r0, r1, xq, xq_stride, n_x, y, y_stride, unpack_packed);                    \
    }                                                                                          \
    const moe__cpu_format moe__cpu_##name = { .gemm = gemm_##name,                             \
                                              .packed_bytes = wna16_packed_bytes,              \
                                              .pack = wna16_pack,                              \
                                              .gemm_packed = gemm_packed_##name, __VA_ARGS__ };

#else
/* ===== AVX-512: activation rows and weight pairs of the 4-bit formats =====
 *
 * INT4_GPTQ and INT4_AWQ take bf16 activations (W4A16, as GPU kernels of
 * these formats take 16-bit ones; their act_fake_quant_ref rounds to bf16),
 * so that vdpbf16ps multiplies two weights per lane and instruction. A word
 * holds values 8s .. 8s + 7 of one row (value j in bits 4j ..); shifted
 * right by 0, 8, 4 or 12 bits, its two 16-bit halves hold in their low bits
 * the values (j, j + 4) for j = 0, 2, 1, 3. vpermw looks each half up in a
 * table of bf16 weights (it reads 5 bits: the GPTQ table holds its 16
 * entries twice, since bit 4 is the next value's; AWQ indexes q + 16 - z,
 * 1 .. 31, in a table of i - 16, so the zero point costs no arithmetic in
 * floats), and vdpbf16ps adds both exact products into the row's fp32 lane.
 * The activation row (2 K bytes) stores each step of 8 values as those four
 * pairs: x0 x4 x2 x6 x1 x5 x3 x7 (wq_pos). A 16-row vector of 8 values then
 * costs 3 shifts, 4 vpermw and 4 vdpbf16ps, where f32 activations cost 7
 * shifts, 8 vpermps and 8 FMAs: the decode had bound these kernels (one
 * core, 512 x 2048 in cache: GPTQ 36 -> 65 GB/s, AWQ 32 -> 55; from memory
 * 26-32 -> 30-35, of the 41 a core reads).
 * Without AVX512_BF16 (Ice Lake), moe__cpu_dp_bf16 makes the same sum with
 * two FMAs.
 * Act-order GPTQ (a scale per value) and INT8_GPTQ (no 32-entry table for
 * 8 bits) multiply in f32, as below; act-order reads its bf16 values. */

/* Place of value j in its step of 8 (an involution: also the value at place j). */
static const int wq_pos[8] = { 0, 4, 2, 6, 1, 5, 3, 7 };

static size_t wq4_act_row_bytes(int64_t cols) { return (size_t)cols * 2; }

static void wq4_act(const moe__wmat *w, const float *x, int64_t cols, void *xq) {
    static const _Alignas(64) uint16_t idx[32] = { 0,  4,  2,  6,  1,  5,  3,  7,
                                                   8,  12, 10, 14, 9,  13, 11, 15,
                                                   16, 20, 18, 22, 17, 21, 19, 23,
                                                   24, 28, 26, 30, 25, 29, 27, 31 };
    const __m512i ix = _mm512_load_si512(idx);
    for (int64_t k = 0; k < cols; k += 32) { /* K % 32 == 0: groups of 32, 64 or 128 */
        _Alignas(64) float xo[32];
        const float       *xk = x + k;
        if (w->k_order) {
            for (int i = 0; i < 32; i++) xo[i] = x[w->k_order[k + i]];
            xk = xo;
        }
        const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(moe__cpu_bf16_x16(xk)),
                                             moe__cpu_bf16_x16(xk + 16), 1);
        _mm512_storeu_si512((char *)xq + 2 * k, _mm512_permutexvar_epi16(ix, v));
    }
}

/* Activation row xr's pair t (0..3) of step k8, broadcast; value k as f32. */
static inline __m512i wq_pair(const void *xr, int64_t k8, int t) {
    return _mm512_set1_epi32((int)((const uint32_t *)xr)[4 * k8 + t]);
}
static inline __m512 wq_x_at(const void *xr, int64_t k) {
    return _mm512_set1_ps(moe__bf16_to_f32(((const uint16_t *)xr)[k / 8 * 8 + wq_pos[k % 8]]));
}

/* bf16 of q - 8 (GPTQ, twice) or of i - 16 (AWQ). */
static inline __m512i wq_table(bool awq) {
    static const _Alignas(64) uint16_t t[2][32] = {
        { 0xc100, 0xc0e0, 0xc0c0, 0xc0a0, 0xc080, 0xc040, 0xc000, 0xbf80, 0x0000, 0x3f80, 0x4000,
          0x4040, 0x4080, 0x40a0, 0x40c0, 0x40e0, 0xc100, 0xc0e0, 0xc0c0, 0xc0a0, 0xc080, 0xc040,
          0xc000, 0xbf80, 0x0000, 0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0, 0x40c0, 0x40e0 },
        { 0xc180, 0xc170, 0xc160, 0xc150, 0xc140, 0xc130, 0xc120, 0xc110, 0xc100, 0xc0e0, 0xc0c0,
          0xc0a0, 0xc080, 0xc040, 0xc000, 0xbf80, 0x0000, 0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0,
          0x40c0, 0x40e0, 0x4100, 0x4110, 0x4120, 0x4130, 0x4140, 0x4150, 0x4160, 0x4170 },
    };
    return _mm512_load_si512(t[awq]);
}

/* The bf16 weight pairs t = 0..3 of 16 rows' words (a word per lane, values
 * 8s ..): GPTQ q - 8; AWQ q - z, with zc = 16 - z in each byte of a lane. */
static inline void wq_pairs(__m512i words, bool awq, __m512i zc, __m512i tab, __m512i b[4]) {
    __m512i ix[4];
    if (awq) {
        const __m512i m = _mm512_set1_epi32(0x0f0f0f0f);
        const __m512i e = _mm512_add_epi32(_mm512_and_si512(words, m), zc);
        const __m512i o = _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(words, 4), m), zc);
        ix[0] = e, ix[1] = _mm512_srli_epi32(e, 8), ix[2] = o, ix[3] = _mm512_srli_epi32(o, 8);
    } else {
        ix[0] = words, ix[1] = _mm512_srli_epi32(words, 8);
        ix[2] = _mm512_srli_epi32(words, 4), ix[3] = _mm512_srli_epi32(words, 12);
    }
#pragma GCC unroll 4 /* or the pairs go through the stack */
    for (int t = 0; t < 4; t++) b[t] = _mm512_permutexvar_epi16(ix[t], tab);
}

/* 16 lanes' zero points z (0..15) as 16 - z in each byte. */
static inline __m512i wq_zc(__m512i z) {
    return _mm512_mullo_epi32(_mm512_sub_epi32(_mm512_set1_epi32(16), z),
                              _mm512_set1_epi32(0x01010101));
}

/* ===== AVX-512 GPTQ on the checkpoint layout: 16 output rows per vector =====
 *
 * The packed words of 16 consecutive rows are contiguous (one word per
 * row), so lane l of every vector is row r + l: each lane sums its own row
 * in increasing k, with the group's (q - zero) * x products accumulated
 * first and the group scale applied once per group (per k with act-order
 * g_idx), exactly as the packed kernel below does. Results do not depend on
 * which rows share a vector. */

enum { WV_XG = 4 };

static inline __m512 scales16(const moe__wmat *w, int64_t g, int64_t r, __mmask16 m) {
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w->scales + g * w->rows + r);
    if (w->scale_format == MOE_FORMAT_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/* The 16 rows' words of word row kw in the kernels' K order (gptq_word):
 * with k_order, each value shifted out of its column's word into place. */
static inline __m512i gptq_words(const uint32_t *q, const moe__wmat *w, int64_t kw, int64_t r,
                                 __mmask16 m, int bits) {
    if (!w->k_order) return _mm512_maskz_loadu_epi32(m, q + kw * w->rows + r);
    const int     per  = 32 / bits;
    const __m512i mask = _mm512_set1_epi32((1 << bits) - 1);
    __m512i       v    = _mm512_setzero_si512();
    for (int j = 0; j < per; j++) {
        const int64_t k   = w->k_order[kw * per + j];
        const __m512i c   = _mm512_maskz_loadu_epi32(m, q + (k / per) * w->rows + r);
        const __m512i val = _mm512_and_si512(
            _mm512_srl_epi32(c, _mm_cvtsi32_si128((int)(bits * (k % per)))), mask);
        v = _mm512_or_si512(v, _mm512_sll_epi32(val, _mm_cvtsi32_si128(bits * j)));
    }
    return v;
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

/* Activation row xr's value k broadcast: bf16 pairs (4 bits) or f32. */
static inline __m512 wv_x(const void *xr, int64_t k, int bits) {
    return bits == 4 ? wq_x_at(xr, k) : _mm512_set1_ps(((const float *)xr)[k]);
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
    const void *const *xs, float (*ga)[16], int bits, int NX) {
    __m512 acc[4];
    for (int i = 0; i < NX; i++) acc[i] = _mm512_load_ps(ga[i]);
    const int per = 32 / bits;
    if (bits == 4 && !wna16_act(w)) {
        __m512i b[4];
        wq_pairs(gptq_words(q, w, k / 8, rb, m, 4), false, _mm512_setzero_si512(), wq_table(false),
                 b);
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++)
            for (int i = 0; i < NX; i++)
                acc[i] = moe__cpu_dp_bf16(acc[i], b[t], wq_pair(xs[i], k / 8, t));
    } else {
        __m512i words = _mm512_setzero_si512();
#pragma GCC unroll 8 /* constant shifts, no loop counter */
        for (int j = 0; j < 8; j++) {
            if (j % per == 0) words = gptq_words(q, w, (k + j) / per, rb, m, bits);
            __m512 val = gptq_val(words, j % per, bits);
            if (wna16_act(w)) val = _mm512_mul_ps(val, scales16(w, w->g_idx[k + j], rb, m));
            for (int i = 0; i < NX; i++)
                acc[i] = _mm512_fmadd_ps(val, wv_x(xs[i], k + j, bits), acc[i]);
        }
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
            const void   *xs[WV_XG];
            for (int64_t i = 0; i < WV_XG; i++)
                xs[i] = (const char *)xq + (size_t)(i0 + (i < nx ? i : 0)) * xq_stride;
            memset(acc, 0, sizeof acc);
            for (int64_t g0 = 0; g0 < K; g0 += G) {
                for (int64_t v = 0; v < nv; v++) memset(ga[v], 0, sizeof ga[v]);
                for (int64_t k = g0; k < g0 + G; k += 8) {
                    /* Every step is a new page (GPTQ: rows * 4 bytes further): the
                     * step WV_PF ahead into L2, the step WV_PF_NEAR ahead into L1
                     * (not in k_order: its steps gather from other word rows). */
                    if (k + 8 * WV_PF < K && !w->k_order) {
                        const char *p = pf0 + (size_t)((k + 8 * WV_PF) / 8) * step;
                        for (size_t o = 0; o < span; o += 64) __builtin_prefetch(p + o, 0, 2);
                    }
                    if (k + 8 * WV_PF_NEAR < K && !w->k_order) {
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
                    const __m512 sv = wna16_act(w) ? _mm512_set1_ps(1.0f)
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

/* ===== AWQ on the checkpoint layout: 128 rows per 512-bit load =====
 *
 * The 16 words of one k for rows b0 .. b0 + 127 are contiguous, and nibble
 * n of word v holds row b0 + 8v + awq_row[n] (the inverse of the packing
 * order MOE_AWQ_NIBBLE_INIT). So vector n, lane v is row b0 + 8v +
 * awq_row[n]: its pair t of a step of 8 values takes nibble n of the words
 * of k = 8s + j and 8s + j + 4 (j = 0, 2, 1, 3) into the two halves of the
 * lane, adds 16 - z and looks both up as the packed kernel does, in the
 * same order, so a row's sum is the packed kernel's bit for bit. One
 * 128-row block walks all of K (a line per k, rows / 8 words apart),
 * prefetched AWQ_PF k ahead into L2 and AWQ_PF_NEAR into L1; up to AWQ_XG
 * activation rows share the decode. (Unbound experts only: a bound layer
 * runs the packed form.)
 */
enum { AWQ_XG = 2, AWQ_PF = 32, AWQ_PF_NEAR = 8 };

static const int awq_row[8] = { 0, 2, 4, 6, 1, 3, 5, 7 };

/* Rows b0 .. b0 + 8 nw - 1 (b0 % 8 == 0, nw <= 16 words) for NX activation
 * rows: acc[i][n] lane v = row b0 + 8v + awq_row[n]. */
static inline __attribute__((always_inline)) void awq_block(
    const moe__wmat *w, int64_t b0, int nw, const void *const *xs, __m512 (*acc)[8], int NX) {
    const int64_t   K = w->cols, G = w->group_size, wpr = w->rows / 8;
    const uint32_t *q = (const uint32_t *)w->data + b0 / 8, *z = (const uint32_t *)w->zeros + b0 / 8;
    const __mmask16 mw  = (__mmask16)((1u << nw) - 1);
    const __m512i   tab = wq_table(true), lo4 = _mm512_set1_epi32(0x000f000f);
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
        /* 16 - z of each lane in both halves, per vector */
        const __m512i zw = _mm512_maskz_loadu_epi32(mw, z + (g0 / G) * wpr);
        __m512i       zc[8];
        __m512        ga[AWQ_XG][8];
        for (int n = 0; n < 8; n++) {
            const __m512i zn =
                _mm512_and_si512(_mm512_srli_epi32(zw, 4 * n), _mm512_set1_epi32(15));
            zc[n] = _mm512_mullo_epi32(_mm512_sub_epi32(_mm512_set1_epi32(16), zn),
                                       _mm512_set1_epi32(0x00010001));
            for (int i = 0; i < NX; i++) ga[i][n] = _mm512_setzero_ps();
        }
        for (int64_t k0 = g0; k0 < g0 + G; k0 += 8) {
            __m512i wk[8];
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                const char *qk = (const char *)(q + (k0 + j) * wpr);
                /* one line (two when the 64 bytes straddle) per k, k's far apart */
                __builtin_prefetch(qk + AWQ_PF * kst, 0, 2);
                __builtin_prefetch(qk + AWQ_PF * kst + 63, 0, 2);
                __builtin_prefetch(qk + AWQ_PF_NEAR * kst, 0, 3);
                __builtin_prefetch(qk + AWQ_PF_NEAR * kst + 63, 0, 3);
                wk[j] = _mm512_maskz_loadu_epi32(mw, qk);
            }
#pragma GCC unroll 4
            for (int t = 0; t < 4; t++) {
                const int j = wq_pos[2 * t]; /* pairs (0, 4), (2, 6), (1, 5), (3, 7) */
#pragma GCC unroll 8
                for (int n = 0; n < 8; n++) {
                    const __m512i lo = _mm512_srli_epi32(wk[j], 4 * n);
                    const __m512i hi = 4 * n <= 16 ? _mm512_slli_epi32(wk[j + 4], 16 - 4 * n)
                                                   : _mm512_srli_epi32(wk[j + 4], 4 * n - 16);
                    const __m512i ix = _mm512_add_epi32(
                        _mm512_and_si512(_mm512_mask_blend_epi16(0xaaaaaaaau, lo, hi), lo4), zc[n]);
                    const __m512i bw = _mm512_permutexvar_epi16(ix, tab);
                    for (int i = 0; i < NX; i++)
                        ga[i][n] = moe__cpu_dp_bf16(ga[i][n], bw, wq_pair(xs[i], k0 / 8, t));
                }
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
            const void   *xs[AWQ_XG];
            for (int64_t i = 0; i < AWQ_XG; i++)
                xs[i] = (const char *)xq + (size_t)(i0 + (i < nx ? i : 0)) * xq_stride;
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

/* ===== AVX-512 on the packed form =====
 *
 * NP panels (up to 4: 128 rows, four sequential streams in flight) times NX
 * activation rows at once, the group sums in registers. Each lane is one
 * row and sums exactly as gemm_wv / awq_block do: per group, from 0, the
 * weight pairs' products in increasing steps (4 bits: pairs t = 0..3 of a
 * step, moe__cpu_dp_bf16) or (q - zero) * x fused-added in increasing k (8
 * bits, and act-order, times the scale of each k), then acc = fma(group sum, group
 * scale (1 with g_idx), acc); so gemm_packed and gemm give the same bits.
 * Each panel's stream is prefetched as cpu-formats.h says, at its share of
 * the plan's far distance for these kernels, pf_far_packed (moe__cpu_pf_share:
 * the plan's on Intel; a quarter on AMD, where the whole distance took GPTQ's
 * W2 shape from 30 to 26 GB/s),
 * and its first far bytes (which that prefetch never asks for) when a run
 * starts; near a panel's end the prefetch goes on in the same panel of the
 * next run (pk_prefetch): the qwen3-30b-a3b W2 shape (K = 768, 12 KiB
 * panels) went from 24 to 28 GB/s of 30.5 (kernel alone, 2 threads), the K
 * = 2048 shape from 29 to 31. Prefetching the next run's first bytes all at
 * once when a run starts gained nothing. Tried and dropped: loads at byte
 * offsets instead of the shifts (the split loads cost more: -20% in L2); 8
 * panels at once for one activation row (register spills); 4-bit values
 * made floats by or-ing each nibble into the mantissa of a power of two and
 * subtracting it, instead of vpermps (the same count of operations, and
 * 10-20% slower on Zen 5 with f32 activations).
 */
enum { PK_NP = 4, PK_XMAX = 8 };

static inline __m512 pk_scales(const char *line, int v, bool bf16) {
    const __m256i h = _mm256_load_si256((const __m256i *)(line + 32 * v));
    return bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                : _mm512_cvtph_ps(h);
}

/* moe__cpu_prefetch of the 128 bytes at wp of the panel at base, except
 * that a distance reaching past the panel's end continues in the same
 * panel of the next run of np (the run that pk_gemm reads next), not in
 * the next panel (read now): with short panels (K = 768: 12 KB) every run
 * otherwise starts on memory latency in all but its first stream. */
static inline void pk_prefetch(const char *base, const char *wp, size_t pan, int np) {
    const size_t off  = (size_t)(wp - base);
    const size_t far  = off + moe__cpu_pf_share(moe__cpu_plan.pf_far_packed, PK_NP);
    const size_t near = off + moe__cpu_pf_share(moe__cpu_plan.pf_near, PK_NP);
    const char  *pf = base + far + (far >= pan ? (size_t)(np - 1) * pan : 0);
    const char  *pn = base + near + (near >= pan ? (size_t)(np - 1) * pan : 0);
    for (size_t o = 0; o < PK_WROW; o += 64) {
        __builtin_prefetch(pf + o, 0, 2);
        __builtin_prefetch(pn + o, 0, 3);
    }
}

/* Zeroes out and starts the far prefetch of NP panels at P. */
static inline __attribute__((always_inline)) void pk_start(const pk_geom *pg, const char *P,
                                                           __m512 (*out)[2][PK_XMAX], int NP,
                                                           int NX) {
    for (int p = 0; p < NP; p++) {
        for (size_t o = 0; o < moe__cpu_pf_share(moe__cpu_plan.pf_far_packed, PK_NP); o += 64)
            __builtin_prefetch(P + (size_t)p * pg->pan + o, 0, 2);
        for (int v = 0; v < 2; v++)
            for (int i = 0; i < NX; i++) out[p][v][i] = _mm512_setzero_ps();
    }
}

/* out += group sums ga times group g's scales (1 with act-order). */
static inline __attribute__((always_inline)) void pk_end_group(
    const moe__wmat *w, const pk_geom *pg, const char *P, int64_t g, __m512 (*ga)[2][PK_XMAX],
    __m512 (*out)[2][PK_XMAX], int NP, int NX, bool act) {
    for (int p = 0; p < NP; p++) {
        const char *sl = P + (size_t)p * pg->pan + pk_scales_off(pg, g);
        for (int v = 0; v < 2; v++) {
            const __m512 sv = act ? _mm512_set1_ps(1.0f)
                                  : pk_scales(sl, v, w->scale_format == MOE_FORMAT_BF16);
            for (int i = 0; i < NX; i++)
                out[p][v][i] = _mm512_fmadd_ps(ga[p][v][i], sv, out[p][v][i]);
        }
    }
}

/* 4 bits, grouped (INT4_GPTQ without g_idx, INT4_AWQ): panels P, P + pan,
 * ... (NP of them) against NX bf16 pair rows xs: out[p][v][i] lane l = row
 * 32p + 16v + l of the run. The row sums accumulate in out (memory, touched
 * once per group), so that the group sums alone hold the registers. */
static inline __attribute__((always_inline)) void pk4_kernel(
    const moe__wmat *w, const pk_geom *pg, const char *P, const void *const *xs,
    __m512 (*out)[2][PK_XMAX], int NP, int NX, bool awq) {
    const int64_t spg = w->group_size / 8;
    const __m512i tab = wq_table(awq);
    pk_start(pg, P, out, NP, NX);
    for (int64_t g = 0; g < pg->ng; g++) {
        const char *wl[PK_NP];
        __m512i     zc[PK_NP][2];
        __m512      ga[PK_NP][2][PK_XMAX];
        for (int p = 0; p < NP; p++) {
            const char *base = P + (size_t)p * pg->pan;
            wl[p] = base + pk_word_off(pg, w->group_size, g * spg);
            if (awq) { /* zeros line byte l: lane l, lane l + 16 << 4 */
                const __m512i zb = _mm512_cvtepu8_epi32(
                    _mm_loadu_si128((const __m128i *)(base + pk_zeros_off(pg, g))));
                zc[p][0] = wq_zc(_mm512_and_si512(zb, _mm512_set1_epi32(15)));
                zc[p][1] = wq_zc(_mm512_srli_epi32(zb, 4));
            }
            for (int v = 0; v < 2; v++)
                for (int i = 0; i < NX; i++) ga[p][v][i] = _mm512_setzero_ps();
        }
        for (int64_t s = 0; s < spg; s++) {
            const int64_t k8 = g * spg + s;
#pragma GCC unroll 4
            for (int p = 0; p < NP; p++) {
                const char *wp = wl[p] + (size_t)s * PK_WROW;
                pk_prefetch(P + (size_t)p * pg->pan, wp, pg->pan, NP);
                __m512i b[2][4];
#pragma GCC unroll 2
                for (int v = 0; v < 2; v++)
                    wq_pairs(_mm512_load_si512(wp + 64 * v), awq,
                             awq ? zc[p][v] : _mm512_setzero_si512(), tab, b[v]);
#pragma GCC unroll 4
                for (int t = 0; t < 4; t++)
#pragma GCC unroll 8
                    for (int i = 0; i < NX; i++) {
                        const __m512i xp = wq_pair(xs[i], k8, t);
                        ga[p][0][i] = moe__cpu_dp_bf16(ga[p][0][i], b[0][t], xp);
                        ga[p][1][i] = moe__cpu_dp_bf16(ga[p][1][i], b[1][t], xp);
                    }
            }
        }
        pk_end_group(w, pg, P, g, ga, out, NP, NX, false);
    }
}

/* f32 multiplies: INT8_GPTQ (f32 rows), and act-order INT4_GPTQ (a scale
 * per value; bf16 pair rows): as pk4_kernel, per k in increasing order. */
static inline __attribute__((always_inline)) void pk_kernel(
    const moe__wmat *w, const pk_geom *pg, const char *P, const void *const *xs,
    __m512 (*out)[2][PK_XMAX], int NP, int NX, int bits, bool act) {
    const int64_t G = w->group_size, per = 32 / bits, spg = G / per;
    const bool    bf = w->scale_format == MOE_FORMAT_BF16;
    pk_start(pg, P, out, NP, NX);
    for (int64_t g = 0; g < pg->ng; g++) {
        const char *wl[PK_NP];
        __m512      ga[PK_NP][2][PK_XMAX];
        for (int p = 0; p < NP; p++) {
            wl[p] = P + (size_t)p * pg->pan + pk_word_off(pg, G, g * spg);
            for (int v = 0; v < 2; v++)
                for (int i = 0; i < NX; i++) ga[p][v][i] = _mm512_setzero_ps();
        }
        for (int64_t s = 0; s < spg; s++) {
            const int64_t k = g * G + s * per;
#pragma GCC unroll 4
            for (int p = 0; p < NP; p++) {
                const char *wp = wl[p] + (size_t)s * PK_WROW;
                pk_prefetch(P + (size_t)p * pg->pan, wp, pg->pan, NP);
                const __m512i w0 = _mm512_load_si512(wp), w1 = _mm512_load_si512(wp + 64);
#pragma GCC unroll 8
                for (int j = 0; j < per; j++) {
                    __m512 v0 = gptq_val(w0, j, bits), v1 = gptq_val(w1, j, bits);
                    if (act) {
                        const char *sl = P + (size_t)p * pg->pan +
                                         pk_scales_off(pg, w->g_idx[k + j]);
                        v0 = _mm512_mul_ps(v0, pk_scales(sl, 0, bf));
                        v1 = _mm512_mul_ps(v1, pk_scales(sl, 1, bf));
                    }
                    /* unrolled, or the group sums of NX >= 3 went to the stack
                     * (4 rows: 3.5 GB/s per core from L2, now 8.6) */
#pragma GCC unroll 8
                    for (int i = 0; i < NX; i++) {
                        const __m512 xb = wv_x(xs[i], k + j, bits);
                        ga[p][0][i] = _mm512_fmadd_ps(v0, xb, ga[p][0][i]);
                        ga[p][1][i] = _mm512_fmadd_ps(v1, xb, ga[p][1][i]);
                    }
                }
            }
        }
        pk_end_group(w, pg, P, g, ga, out, NP, NX, act);
    }
}

/* The (NP, NX) variants a kernel runs: 4 panels for 1 or 2 activation rows,
 * 2 for 3 or 4 (3 rows in one pass rather than 2 + 1: one decode), 1 for 8
 * (NP * 2 * NX group sums stay in registers), and 1 panel for the tail of
 * a tile. NPS is the panel count the variants follow: np, or 1 for
 * act-order (one panel at a time: a scale load per k); KERNEL's arguments
 * after NX are the trailing ones. */
#define PK_VARIANTS(name, NPS, KERNEL, ...)                                                   \
    static void name(const moe__wmat *w, const pk_geom *pg, const char *P,                    \
                     const void *const *xs, __m512 (*out)[2][PK_XMAX], int np, int nx) {       \
        const int n_p = (NPS);                                                                 \
        (void)np;                                                                              \
        if (nx == 1 && n_p == 4)      KERNEL(w, pg, P, xs, out, 4, 1, __VA_ARGS__);            \
        else if (nx == 1)             KERNEL(w, pg, P, xs, out, 1, 1, __VA_ARGS__);            \
        else if (nx == 2 && n_p == 4) KERNEL(w, pg, P, xs, out, 4, 2, __VA_ARGS__);            \
        else if (nx == 2)             KERNEL(w, pg, P, xs, out, 1, 2, __VA_ARGS__);            \
        else if (nx == 3 && n_p == 2) KERNEL(w, pg, P, xs, out, 2, 3, __VA_ARGS__);            \
        else if (nx == 3)             KERNEL(w, pg, P, xs, out, 1, 3, __VA_ARGS__);            \
        else if (nx == 4 && n_p == 2) KERNEL(w, pg, P, xs, out, 2, 4, __VA_ARGS__);            \
        else if (nx == 4)             KERNEL(w, pg, P, xs, out, 1, 4, __VA_ARGS__);            \
        else                          KERNEL(w, pg, P, xs, out, 1, 8, __VA_ARGS__);            \
    }
PK_VARIANTS(pk_int4_gptq, np, pk4_kernel, false)
PK_VARIANTS(pk_int4_awq, np, pk4_kernel, true)
PK_VARIANTS(pk_int8_gptq, np, pk_kernel, 8, false)
PK_VARIANTS(pk_int4_gptq_act, 1, pk_kernel, 4, true)
PK_VARIANTS(pk_int8_gptq_act, 1, pk_kernel, 8, true)

typedef void (*pk_fn)(const moe__wmat *w, const pk_geom *pg, const char *P,
                      const void *const *xs, __m512 (*out)[2][PK_XMAX], int np, int nx);

/* Rows [r0, r1): the panels that hold them, PK_NP at a time; within that,
 * activation rows in blocks of 8, 4, 2, 1, and the panels in runs of the
 * variant's width. Lanes outside [r0, r1) are computed and dropped. */
static void pk_gemm(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq, size_t xq_stride,
                    int64_t n_x, float *y, int64_t y_stride, pk_fn fn, int np_max_act) {
    const pk_geom pg = pk_geom_of(w);
    const int64_t p0 = r0 / PK_ROWS, p1 = (r1 + PK_ROWS - 1) / PK_ROWS;
    for (int64_t pc = p0; pc < p1; pc += PK_NP) {
        const int64_t pe = pc + PK_NP < p1 ? pc + PK_NP : p1;
        for (int64_t i0 = 0; i0 < n_x;) {
            const int64_t left = n_x - i0;
            const int     nx   = left >= 8 ? 8 : left >= 4 ? 4 : left == 3 ? 3 : left >= 2 ? 2 : 1;
            int           npw  = nx <= 2 ? 4 : nx <= 4 ? 2 : 1;
            if (npw > np_max_act) npw = np_max_act;
            const void   *xs[PK_XMAX];
            for (int i = 0; i < PK_XMAX; i++)
                xs[i] = (const char *)xq + (size_t)(i0 + (i < nx ? i : 0)) * xq_stride;
            for (int64_t p = pc; p < pe;) {
                const int np = pe - p >= npw ? npw : 1;
                __m512    out[PK_NP][2][PK_XMAX];
                fn(w, &pg, (const char *)w->data + (size_t)p * pg.pan, xs, out, np, nx);
                for (int q = 0; q < np; q++)
                    for (int v = 0; v < 2; v++) {
                        const int64_t rb = (p + q) * PK_ROWS + 16 * v;
                        for (int i = 0; i < nx; i++) {
                            _Alignas(64) float t[16];
                            _mm512_store_ps(t, out[q][v][i]);
                            for (int l = 0; l < 16; l++)
                                if (rb + l >= r0 && rb + l < r1)
                                    y[(i0 + i) * y_stride + (rb + l - r0)] = t[l];
                        }
                    }
                p += np;
            }
            i0 += nx;
        }
    }
}

static void gemm_packed_int4_gptq(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                                  size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    if (wna16_act(w)) pk_gemm(w, r0, r1, xq, xq_stride, n_x, y, y_stride, pk_int4_gptq_act, 1);
    else              pk_gemm(w, r0, r1, xq, xq_stride, n_x, y, y_stride, pk_int4_gptq, PK_NP);
}
static void gemm_packed_int8_gptq(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                                  size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    if (wna16_act(w)) pk_gemm(w, r0, r1, xq, xq_stride, n_x, y, y_stride, pk_int8_gptq_act, 1);
    else              pk_gemm(w, r0, r1, xq, xq_stride, n_x, y, y_stride, pk_int8_gptq, PK_NP);
}
static void gemm_packed_int4_awq(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                                 size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    pk_gemm(w, r0, r1, xq, xq_stride, n_x, y, y_stride, pk_int4_awq, PK_NP);
}

#define WNA16_ENTRY(name, ...)                                                                 \
    const moe__cpu_format moe__cpu_##name = { .gemm = gemm_##name,                             \
                                              .packed_bytes = wna16_packed_bytes,              \
                                              .pack = wna16_pack,                              \
                                              .gemm_packed = gemm_packed_##name, __VA_ARGS__ };

#endif

WNA16_ENTRY(int4_gptq, .act_row_bytes = wq4_act_row_bytes, .act_quantize = wq4_act)
WNA16_ENTRY(int8_gptq, .act_row_bytes = fp_act_row_bytes, .act_quantize = f32_in_k_order)
WNA16_ENTRY(int4_awq, .act_row_bytes = wq4_act_row_bytes, .act_quantize = wq4_act)
