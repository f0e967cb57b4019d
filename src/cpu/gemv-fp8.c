/*
 * gemv-fp8.c - CPU kernels of FP8_TENSOR, FP8_CHANNEL and FP8_BLOCK.
 *
 * Both operands are e4m3 codes times scales, as on FP8 hardware: the
 * activation row is quantized by the format's rule (per token, static, or
 * per group of 128: the arithmetic of the act_fake_quant_ref functions in
 * src/quant/fp8.c), then for every group of 128 values
 *     y += (s_w * s_x) * sum_k qw[k] * qx[k]
 * where the e4m3 products are exact and summed in fp32 by vdpbf16ps (every
 * e4m3 value is exactly a bf16). Weight bytes become bf16 through two
 * 128-entry byte tables (vpermi2b: the high and the low byte of each code's
 * bf16 pattern; the sign is or-ed in), 64 at a time.
 *
 * Activation row (act_row_bytes), Kp = cols rounded up to 128:
 *   uint16 xb[Kp]      bf16 of the e4m3 values, zero past cols, each 64 in
 *                      the order the weight decode produces: elements
 *                      16L + j (L < 4, j < 8), then 16L + 8 + j
 *   float  sx[Kp/128]  the activation scale of each group of 128
 *
 * Order: per row, groups in increasing k; within a group the four 32-value
 * dot steps in a fixed order; one fixed reduction tree at the end. So a
 * result depends on its weight row and activation row only.
 *
 * Streaming: four rows are decoded side by side, group by group. Which
 * four follows the CPU's stream plan (cpu-formats.h):
 * - several streams (Intel): the tile is cut into four segments (as
 *   moe__cpu_stream_row does) and row t of each segment goes together, four
 *   sequential streams, each prefetched as moe__cpu_prefetch says. Visiting
 *   whole rows in turn instead left a 7 KiB DeepSeek-V3 row (d_model 7168)
 *   with only one stream's prefetch distance of work ahead: the W13 shape
 *   streamed at 25 of 30.5 GB/s (kernel alone, 2 threads), 29-31 side by
 *   side.
 * - one stream (AMD): four adjacent rows, whose bytes are one run of 4 K,
 *   prefetched as that one run (4 x 128 bytes per group). The segments ran
 *   at half the plain read there (Zen 5, one core, kernel alone from memory,
 *   bench/bench-cpu-kernel.c: W13 of qwen3-30b-a3b 25 GB/s against a read
 *   of 48), adjacent rows prefetched row by row at 30, as one run at 33-34
 *   (0.80 of the read).
 */
#include "cpu-formats.h"
#include "../quant/quant.h"

#include <math.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VBMI__) && \
    defined(__AVX512BF16__)
#include <immintrin.h>
#define FP8_AVX512 1
#endif

/* Group size; weight rows and activation rows a kernel call holds at once. */
enum { FP8_G = MOE_FP8_BLOCK, FP8_NRMAX = 4, FP8_NXMAX = 4 };

static int64_t kp128(int64_t cols) { return (cols + FP8_G - 1) / FP8_G * FP8_G; }

static size_t fp8_act_row_bytes(int64_t cols) {
    return (size_t)kp128(cols) * 2 + (size_t)(kp128(cols) / FP8_G) * 4;
}

/* Position in the stored 64-chunk of element e (0 <= e < 64). */
static inline int perm64(int e) {
    int L = e / 16, j = e % 16;
    return j < 8 ? 8 * L + j : 32 + 8 * L + (j - 8);
}

/* The group scales of an activation row (written first, then read back by
 * fp8_act_store). */
static float *act_scales(void *xq, int64_t cols) { return (float *)((uint16_t *)xq + kp128(cols)); }

#if FP8_AVX512
/* e4m3(v) as an f32 value, 16 lanes, with exactly the rounding, saturation
 * and NaN rule of moe__f32_to_e4m3 followed by moe__e4m3_to_f32. */
static inline __m512 e4m3_round(__m512 v) {
    const __m512i u    = _mm512_castps_si512(v);
    const __m512i sign = _mm512_and_si512(u, _mm512_set1_epi32((int)0x80000000u));
    const __m512i a    = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
    /* normal range: keep 3 mantissa bits, round to nearest even */
    __m512i r = _mm512_add_epi32(a, _mm512_add_epi32(_mm512_set1_epi32(0x7ffff),
            _mm512_and_si512(_mm512_srli_epi32(a, 20), _mm512_set1_epi32(1))));
    r = _mm512_and_si512(r, _mm512_set1_epi32((int)0xfff00000u));
    /* subnormal range (below 2^-6): multiples of 2^-9, ties to even */
    const __m512 av  = _mm512_castsi512_ps(a);
    const __m512 sub = _mm512_mul_ps(
        _mm512_cvtepi32_ps(_mm512_cvtps_epi32(_mm512_mul_ps(av, _mm512_set1_ps(512.0f)))),
        _mm512_set1_ps(1.0f / 512.0f));
    const __mmask16 is_sub = _mm512_cmplt_epi32_mask(a, _mm512_set1_epi32(0x3c800000));
    const __mmask16 is_sat = _mm512_cmpge_epi32_mask(a, _mm512_set1_epi32(0x43e00000));
    const __mmask16 is_nan = _mm512_cmpgt_epi32_mask(a, _mm512_set1_epi32(0x7f800000));
    r = _mm512_mask_mov_epi32(r, is_sub, _mm512_castps_si512(sub));
    r = _mm512_mask_mov_epi32(r, is_sat, _mm512_set1_epi32(0x43e00000));
    r = _mm512_mask_mov_epi32(r, is_nan, _mm512_set1_epi32(0x7fc00000));
    return _mm512_castsi512_ps(_mm512_or_si512(r, sign));
}

/* max(m, |x[i]|) over n values, NaN ignored (vmaxps returns its second
 * operand when the first is NaN), as the scalar a > m ? a : m. */
static inline float absmax_v(const float *x, int64_t n) {
    __m512 m = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + i)), m);
    if (i < n)
        m = _mm512_max_ps(_mm512_abs_ps(_mm512_maskz_loadu_ps((__mmask16)((1u << (n - i)) - 1),
                                                              x + i)), m);
    return _mm512_reduce_max_ps(m);
}
#else
static inline float absmax_v(const float *x, int64_t n) {
    float m = 0;
    for (int64_t i = 0; i < n; i++) m = fabsf(x[i]) > m ? fabsf(x[i]) : m;
    return m;
}
#endif

/* Writes the bf16 values of the activation row whose group scales are set. */
static void fp8_act_store(const float *x, int64_t cols, void *xq) {
    const int64_t kp = kp128(cols);
    const float  *sx = act_scales(xq, cols);
    uint16_t     *xb = xq;
#if FP8_AVX512
    /* Natural order -> stored order of each 64: A = elements 16L + j,
     * B = 16L + 8 + j (L < 4, j < 8), picked from the two halves. */
    _Alignas(64) uint16_t ia[32], ib[32];
    for (int m = 0; m < 32; m++) {
        ia[m] = (uint16_t)(16 * (m / 8) + m % 8);
        ib[m] = (uint16_t)(16 * (m / 8) + 8 + m % 8);
    }
    const __m512i pa = _mm512_load_si512(ia), pb = _mm512_load_si512(ib);
    for (int64_t k0 = 0; k0 < kp; k0 += 64) {
        __m256i h[4];
        for (int q = 0; q < 4; q++) {
            const int64_t k = k0 + 16 * q, n = cols - k;
            const __mmask16 m = n >= 16 ? 0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
            const __m512 v = _mm512_div_ps(_mm512_maskz_loadu_ps(m, x + (n > 0 ? k : 0)),
                                           _mm512_set1_ps(sx[k / FP8_G]));
            h[q] = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(e4m3_round(v)), 16));
        }
        const __m512i n0 = _mm512_inserti64x4(_mm512_castsi256_si512(h[0]), h[1], 1);
        const __m512i n1 = _mm512_inserti64x4(_mm512_castsi256_si512(h[2]), h[3], 1);
        _mm512_storeu_si512(xb + k0, _mm512_permutex2var_epi16(n0, pa, n1));
        _mm512_storeu_si512(xb + k0 + 32, _mm512_permutex2var_epi16(n0, pb, n1));
    }
#else
    for (int64_t k0 = 0; k0 < kp; k0 += 64) {
        for (int e = 0; e < 64; e++) {
            int64_t k = k0 + e;
            float v = 0;
            if (k < cols) v = moe__e4m3_to_f32(moe__f32_to_e4m3(x[k] / sx[k / FP8_G]));
            uint32_t u;
            memcpy(&u, &v, 4);
            xb[k0 + perm64(e)] = (uint16_t)(u >> 16); /* exact: e4m3 values are bf16 values */
        }
    }
#endif
}

/* The scales of quant.h's emulation, computed the same way. */
static float token_scale(const float *x, int64_t n) {
    float s = absmax_v(x, n) / MOE_FP8_MAX;
    const float smin = 1.0f / (MOE_FP8_MAX * 512.0f);
    return s > smin ? s : smin;
}

static void act_uniform(const float *x, int64_t cols, float s, void *xq) {
    float *sx = act_scales(xq, cols);
    for (int64_t g = 0; g < kp128(cols) / FP8_G; g++) sx[g] = s;
    fp8_act_store(x, cols, xq);
}

static void act_tensor(const moe__wmat *w, const float *x, int64_t cols, void *xq) {
    act_uniform(x, cols, w->input_scale > 0 ? w->input_scale : token_scale(x, cols), xq);
}

static void act_channel(const moe__wmat *w, const float *x, int64_t cols, void *xq) {
    (void)w;
    act_uniform(x, cols, token_scale(x, cols), xq);
}

static void act_block(const moe__wmat *w, const float *x, int64_t cols, void *xq) {
    (void)w;
    float *sx = act_scales(xq, cols);
    for (int64_t g = 0; g < kp128(cols) / FP8_G; g++) {
        int64_t n = cols - g * FP8_G < FP8_G ? cols - g * FP8_G : FP8_G;
        const float m = absmax_v(x + g * FP8_G, n);
        sx[g] = (m > 1e-10f ? m : 1e-10f) / MOE_FP8_MAX;
    }
    fp8_act_store(x, cols, xq);
}

#if FP8_AVX512
/* e4m3 code (7 bits) -> high and low byte of its bf16 pattern; 0x7F is NaN. */
static const uint8_t bf16_hi[128] = {
    0x00, 0x3b, 0x3b, 0x3b, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c, 0x3c,
    0x3c, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d, 0x3d,
    0x3d, 0x3d, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e,
    0x3e, 0x3e, 0x3e, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f,
    0x3f, 0x3f, 0x3f, 0x3f, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40,
    0x40, 0x40, 0x40, 0x40, 0x40, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41,
    0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42,
    0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43,
    0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x43, 0x7f,
};
static const uint8_t bf16_lo[128] = {
    0x00, 0x00, 0x80, 0xc0, 0x00, 0x20, 0x40, 0x60, 0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0,
    0xf0, 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0,
    0xe0, 0xf0, 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0,
    0xd0, 0xe0, 0xf0, 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0,
    0xc0, 0xd0, 0xe0, 0xf0, 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0,
    0xb0, 0xc0, 0xd0, 0xe0, 0xf0, 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90,
    0xa0, 0xb0, 0xc0, 0xd0, 0xe0, 0xf0, 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80,
    0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0, 0xf0, 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70,
    0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xd0, 0xe0, 0xc0,
};

typedef struct fp8_tables { __m512i h0, h1, l0, l1, sign; } fp8_tables;

/* 64 e4m3 bytes -> two vectors of 32 bf16 (elements 16L+j, then 16L+8+j). */
static inline void decode64(const fp8_tables *t, __m512i q, __m512bh *a, __m512bh *b) {
    __m512i hi = _mm512_permutex2var_epi8(t->h0, q, t->h1);
    __m512i lo = _mm512_permutex2var_epi8(t->l0, q, t->l1);
    hi = _mm512_ternarylogic_epi32(hi, q, t->sign, 0xf8); /* hi | (q & 0x80) */
    *a = (__m512bh)_mm512_unpacklo_epi8(lo, hi);
    *b = (__m512bh)_mm512_unpackhi_epi8(lo, hi);
}
#endif

/* Row r's weight scales: group g's is sw[g * step] (step 0 when one scale
 * covers the row). */
static inline const float *wscale_row(const moe__wmat *w, int64_t r, int64_t *step) {
    const float *s = w->scales;
    switch (w->format) {
    case MOE_FORMAT_FP8_TENSOR:  *step = 0; return s;
    case MOE_FORMAT_FP8_CHANNEL: *step = 0; return s + r;
    default: *step = 1; return s + (r / FP8_G) * ((w->cols + FP8_G - 1) / FP8_G);
    }
}

#if FP8_AVX512
/* Group g of NR weight rows (q[j], 128 readable bytes each) against NX
 * activation rows: acc[j][i] += cs[j][i][gl] * (the four 32-value dot
 * steps of the group, in order, from zero), cs[j][i][gl] = the product of
 * the two scales of group g (gl = g % 16). Every (row, input) pair takes
 * the same steps whatever NR and NX are. */
static inline __attribute__((always_inline)) void fp8_group(
    const fp8_tables *t, const uint8_t *const *q, const float (*cs)[FP8_NXMAX][16], int64_t g,
    int gl, const uint16_t *const *xb, __m512 (*acc)[FP8_NXMAX], int NR, int NX) {
    if (NX <= 2) { /* the inputs in registers, then a row at a time (few registers) */
        __m512bh xv[2][4];
#pragma GCC unroll 2
        for (int i = 0; i < NX; i++)
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++)
                xv[i][c] = (__m512bh)_mm512_load_si512(xb[i] + g * FP8_G + 32 * c);
#pragma GCC unroll 4 /* accumulators in registers, not stack slots */
        for (int j = 0; j < NR; j++) {
            __m512bh w0, w1, w2, w3;
            decode64(t, _mm512_loadu_si512(q[j]), &w0, &w1);
            decode64(t, _mm512_loadu_si512(q[j] + 64), &w2, &w3);
#pragma GCC unroll 4
            for (int i = 0; i < NX; i++) {
                __m512 d = _mm512_dpbf16_ps(_mm512_setzero_ps(), w0, xv[i][0]);
                d = _mm512_dpbf16_ps(d, w1, xv[i][1]);
                d = _mm512_dpbf16_ps(d, w2, xv[i][2]);
                d = _mm512_dpbf16_ps(d, w3, xv[i][3]);
                acc[j][i] = _mm512_fmadd_ps(d, _mm512_set1_ps(cs[j][i][gl]), acc[j][i]);
            }
        }
        return;
    }
    /* more inputs: the rows' weights in registers, then an input at a time */
    __m512bh wv[FP8_NRMAX][4];
#pragma GCC unroll 4 /* the decoded weights in registers, not stack slots */
    for (int j = 0; j < NR; j++) {
        decode64(t, _mm512_loadu_si512(q[j]), &wv[j][0], &wv[j][1]);
        decode64(t, _mm512_loadu_si512(q[j] + 64), &wv[j][2], &wv[j][3]);
    }
#pragma GCC unroll 4 /* accumulators in registers, not stack slots */
    for (int i = 0; i < NX; i++) {
        const uint16_t *xg = xb[i] + g * FP8_G;
        const __m512bh  x0 = (__m512bh)_mm512_load_si512(xg);
        const __m512bh  x1 = (__m512bh)_mm512_load_si512(xg + 32);
        const __m512bh  x2 = (__m512bh)_mm512_load_si512(xg + 64);
        const __m512bh  x3 = (__m512bh)_mm512_load_si512(xg + 96);
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++) {
            __m512 d = _mm512_dpbf16_ps(_mm512_setzero_ps(), wv[j][0], x0);
            d = _mm512_dpbf16_ps(d, wv[j][1], x1);
            d = _mm512_dpbf16_ps(d, wv[j][2], x2);
            d = _mm512_dpbf16_ps(d, wv[j][3], x3);
            acc[j][i] = _mm512_fmadd_ps(d, _mm512_set1_ps(cs[j][i][gl]), acc[j][i]);
        }
    }
}

/* NR weight rows (q[j], K values, group g's scale sws[j][g * step])
 * against NX activation rows, side by side group by group: out[j][i] =
 * the dot product of row j with input i. Each row is its own prefetched
 * stream, so NR streams advance together (a long row then has NR times
 * the prefetch distance of work ahead of it), unless the rows are
 * adjacent (q[j] = q[0] + j K): then their NR K bytes are prefetched as one
 * stream, NR x 128 bytes per group. The scale products of 16
 * groups are made at once (one vmulps, broadcast from memory later:
 * the same products as one multiply per group). The whole groups run
 * without a tail test; a short last group is copied into zeros first
 * (a row is never read past its end). */
static inline __attribute__((always_inline)) void fp8_rows(
    const fp8_tables *t, const uint8_t *const *q, bool adjacent, int64_t K,
    const float *const *sws, int64_t step, const uint16_t *const *xb, const float *const *sx,
    float (*out)[FP8_NXMAX], int NR, int NX) {
    __m512               acc[FP8_NRMAX][FP8_NXMAX];
    _Alignas(64) float   cs[FP8_NRMAX][FP8_NXMAX][16];
    const int64_t        nf = K / FP8_G, ng = kp128(K) / FP8_G;
    /* Adjacent rows: the run's last row starts (NR - 1) K bytes into it,
     * and the run's prefetch moves NR times faster than a row, so both
     * distances start that far ahead plus a lead, or that row is fetched
     * late (DeepSeek-V3's W13, K = 7168, one core from memory: 25 GB/s
     * with the plan's distances, 34 with these; the plain read 41). */
    const size_t last = (size_t)(NR - 1) * (size_t)K;
    const size_t far  = last + moe__cpu_plan.pf_far / 2 > moe__cpu_plan.pf_far
                            ? last + moe__cpu_plan.pf_far / 2 : moe__cpu_plan.pf_far;
    const size_t near = last + moe__cpu_plan.pf_near / 4 > moe__cpu_plan.pf_near
                            ? last + moe__cpu_plan.pf_near / 4 : moe__cpu_plan.pf_near;
    for (int j = 0; j < NR; j++)
        for (int i = 0; i < NX; i++) acc[j][i] = _mm512_setzero_ps();
    for (int64_t g0 = 0; g0 < ng; g0 += 16) {
        const int64_t   n = ng - g0 < 16 ? ng - g0 : 16;
        const __mmask16 m = (__mmask16)((1u << n) - 1);
        for (int j = 0; j < NR; j++) {
            const __m512 sv = step ? _mm512_maskz_loadu_ps(m, sws[j] + g0)
                                   : _mm512_set1_ps(sws[j][0]);
            for (int i = 0; i < NX; i++)
                _mm512_store_ps(cs[j][i], _mm512_mul_ps(sv, _mm512_maskz_loadu_ps(m, sx[i] + g0)));
        }
        const int64_t g1 = g0 + n < nf ? g0 + n : nf;
        for (int64_t g = g0; g < g1; g++) {
            const uint8_t *qg[FP8_NRMAX];
            for (int j = 0; j < NR; j++) {
                qg[j] = q[j] + g * FP8_G;
                if (!adjacent) moe__cpu_prefetch(qg[j], FP8_G);
            }
            if (adjacent)
                moe__cpu_prefetch_at(q[0] + g * FP8_G * NR, (size_t)FP8_G * NR, far, near);
            fp8_group(t, qg, (const float (*)[FP8_NXMAX][16])cs, g, (int)(g - g0), xb, acc, NR, NX);
        }
        if (g1 < g0 + n) { /* K % 128 != 0: the last group, short */
            _Alignas(64) uint8_t tail[FP8_NRMAX][FP8_G];
            const uint8_t       *qg[FP8_NRMAX];
            for (int j = 0; j < NR; j++) {
                memset(tail[j], 0, FP8_G);
                memcpy(tail[j], q[j] + nf * FP8_G, (size_t)(K % FP8_G));
                qg[j] = tail[j];
            }
            fp8_group(t, qg, (const float (*)[FP8_NXMAX][16])cs, nf, (int)(nf - g0), xb, acc, NR,
                      NX);
        }
    }
    for (int j = 0; j < NR; j++)
        for (int i = 0; i < NX; i++) out[j][i] = _mm512_reduce_add_ps(acc[j][i]);
}
#endif

/* Rows: FP8_NRMAX at a time in the plan's order, adjacent ones or one from
 * each of four segments of the tile (see Streaming above; one row alone
 * where the last group of rows is short), against the activation rows in
 * blocks of up to FP8_NXMAX (fewer rows at once for more inputs, so that
 * the accumulators stay in registers). Every (row, input) pair takes the
 * same steps in every variant, so the block it falls in does not change
 * its value. */
static void gemm_fp8(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq, size_t xq_stride,
                     int64_t n_x, float *y, int64_t y_stride) {
    const int64_t K = w->cols, kp = kp128(K), ng = kp / FP8_G;
#if FP8_AVX512
    const fp8_tables t = { _mm512_loadu_si512(bf16_hi), _mm512_loadu_si512(bf16_hi + 64),
                           _mm512_loadu_si512(bf16_lo), _mm512_loadu_si512(bf16_lo + 64),
                           _mm512_set1_epi8((char)0x80) };
    /* Steps t of the plan's row order (moe__cpu_stream_row), FP8_NRMAX at a
     * time: with one stream they are adjacent rows, with four (Intel) row s
     * of each of the four segments. */
    const bool    adjacent = moe__cpu_plan.streams == 1;
    const int64_t seg = moe__cpu_stream_seg(r0, r1);
    /* Chunks of activation rows outermost (MOE_CPU_X_CHUNK), in passes of
     * up to FP8_NXMAX rows each. */
    for (int64_t c = 0; c < n_x; c += MOE_CPU_X_CHUNK) {
        const int64_t c1 = n_x - c < MOE_CPU_X_CHUNK ? n_x : c + MOE_CPU_X_CHUNK;
        for (int64_t s = 0; s < (r1 - r0 + FP8_NRMAX - 1) / FP8_NRMAX; s++) {
            int64_t rows[FP8_NRMAX];
            int     nr = 0;
            for (int j = 0; j < FP8_NRMAX; j++) {
                const int64_t r = moe__cpu_stream_row(r0, seg, s * FP8_NRMAX + j);
                if (r < r1) rows[nr++] = r;
            }
            for (int64_t i0 = c; i0 < c1;) {
                const int64_t   nx = c1 - i0 >= FP8_NXMAX ? FP8_NXMAX : c1 - i0;
                const uint16_t *xb[FP8_NXMAX];
                const float    *sx[FP8_NXMAX];
                for (int64_t i = 0; i < nx; i++) {
                    xb[i] = (const uint16_t *)((const char *)xq + (size_t)(i0 + i) * xq_stride);
                    sx[i] = (const float *)(xb[i] + kp);
                }
                /* rows at once: 4 for one or two inputs, 2 for three or four */
                const int nrb = nx <= 2 ? FP8_NRMAX : 2;
                for (int j0 = 0; j0 < nr;) {
                    const int      n = nr - j0 >= nrb ? nrb : 1;
                    const uint8_t *q[FP8_NRMAX];
                    const float   *sws[FP8_NRMAX];
                    int64_t        step = 0;
                    float          out[FP8_NRMAX][FP8_NXMAX];
                    for (int j = 0; j < n; j++) {
                        q[j]   = (const uint8_t *)w->data + rows[j0 + j] * K; // (K)
                        sws[j] = wscale_row(w, rows[j0 + j], &step);
                    }
#define FP8_ROWS(NR, NX) fp8_rows(&t, q, adjacent, K, sws, step, xb, sx, out, NR, NX)
                    if (n == 4 && nx == 1)      FP8_ROWS(4, 1);
                    else if (n == 4)            FP8_ROWS(4, 2);
                    else if (n == 2 && nx == 3) FP8_ROWS(2, 3);
                    else if (n == 2)            FP8_ROWS(2, 4);
                    else
                        switch (nx) {
                        case 1:  FP8_ROWS(1, 1); break;
                        case 2:  FP8_ROWS(1, 2); break;
                        case 3:  FP8_ROWS(1, 3); break;
                        default: FP8_ROWS(1, 4); break;
                        }
#undef FP8_ROWS
                    for (int j = 0; j < n; j++)
                        for (int64_t i = 0; i < nx; i++)
                            y[(i0 + i) * y_stride + (rows[j0 + j] - r0)] = out[j][i];
                    j0 += n;
                }
                i0 += nx;
            }
        }
    }
    (void)ng;
#else
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *q = (const uint8_t *)w->data + r * K; // (K)
        int64_t        sws;
        const float   *sw = wscale_row(w, r, &sws);
        for (int64_t i = 0; i < n_x; i++) {
            const uint16_t *xb = (const uint16_t *)((const char *)xq + (size_t)i * xq_stride);
            const float *sx = (const float *)(xb + kp);
            float acc = 0;
            for (int64_t g = 0; g < ng; g++) {
                float d = 0;
                for (int e = 0; e < FP8_G; e++) {
                    int64_t k = g * FP8_G + e;
                    if (k >= K) break;
                    uint32_t u = (uint32_t)xb[g * FP8_G + 64 * (e / 64) + perm64(e % 64)] << 16;
                    float xv;
                    memcpy(&xv, &u, 4);
                    d += moe__e4m3_to_f32(q[k]) * xv;
                }
                acc += d * (sw[g * sws] * sx[g]);
            }
            y[i * y_stride + (r - r0)] = acc;
        }
    }
#endif
}

const moe__cpu_format moe__cpu_fp8_tensor  = { .act_row_bytes = fp8_act_row_bytes,
                                               .act_quantize = act_tensor, .gemm = gemm_fp8 };
const moe__cpu_format moe__cpu_fp8_channel = { .act_row_bytes = fp8_act_row_bytes,
                                               .act_quantize = act_channel, .gemm = gemm_fp8 };
const moe__cpu_format moe__cpu_fp8_block   = { .act_row_bytes = fp8_act_row_bytes,
                                               .act_quantize = act_block, .gemm = gemm_fp8 };
