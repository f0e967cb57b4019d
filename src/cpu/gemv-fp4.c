/*
 * gemv-fp4.c - CPU kernels of MXFP4 (OCP / gpt-oss) and NVFP4 (ModelOpt).
 *
 * W4A16 with bf16 activations, as the GPU kernels run these formats: the
 * activation row is rounded to bf16 (the formats' act_fake_quant_ref in
 * src/quant/fp4.c emulates exactly that for the reference), e2m1 codes
 * become bf16 through two 16-entry byte tables (vpshufb: high and low byte
 * of each code's bf16 pattern), and vdpbf16ps sums the exact products in
 * fp32 per block before the block scale multiplies once:
 *     y += s_block * sum_{k in block} e2m1[k] * x[k]
 * (NVFP4: s_block = e4m3 scale * global scale).
 *
 * Activation row (act_row_bytes): uint16 xb[Kp], Kp = cols rounded up to
 * 128, zero past cols, each 128 values in the order the weight decode
 * produces from 64 packed bytes (lane L = bytes 16L..16L+15 = values
 * 32L..32L+31; within a lane: even values of bytes 0..7, of bytes 8..15,
 * then odd values of bytes 0..7, of bytes 8..15).
 *
 * Order: per row, units of 128 values in increasing k, fixed steps inside,
 * one reduction tree at the end: a result depends on its rows only. The
 * AVX-512 kernel loads 16 block scales at once, keeps up to 4 activation
 * rows in registers, and streams the weight rows as cpu-formats.h says
 * (moe__cpu_stream_row order, moe__cpu_prefetch).
 */
#include "cpu-formats.h"
#include "../quant/quant.h"

#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define FP4_AVX512 1
#endif

enum { FP4_U = 128 };

static int64_t kp128(int64_t cols) { return (cols + FP4_U - 1) / FP4_U * FP4_U; }

static size_t fp4_act_row_bytes(int64_t cols) { return (size_t)kp128(cols) * 2; }

/* Stored position (0..127) of value e of a 128-value unit. */
static inline int perm128(int e) {
    int L = e / 32, j = (e % 32) / 2, odd = e % 2;
    return 64 * odd + 32 * (j / 8) + 8 * L + j % 8;
}

static void act_bf16(const moe__wmat *w, const float *x, int64_t cols, void *xq) {
    (void)w;
    uint16_t *xb = xq;
    const int64_t kp = kp128(cols);
    for (int64_t k0 = 0; k0 < kp; k0 += FP4_U)
        for (int e = 0; e < FP4_U; e++)
            xb[k0 + perm128(e)] = k0 + e < cols ? moe__f32_to_bf16(x[k0 + e]) : 0;
}

static float bf16_at(const uint16_t *xb, int64_t k) {
    return moe__bf16_to_f32(xb[k / FP4_U * FP4_U + perm128((int)(k % FP4_U))]);
}

#if FP4_AVX512
typedef struct fp4_tables { __m512i hi, lo, m4; } fp4_tables;

static fp4_tables fp4_tables_make(void) {
    const __m128i hi = _mm_setr_epi8(0x00, 0x3f, 0x3f, 0x3f, 0x40, 0x40, 0x40, 0x40, (char)0x80,
                                     (char)0xbf, (char)0xbf, (char)0xbf, (char)0xc0, (char)0xc0,
                                     (char)0xc0, (char)0xc0);
    const __m128i lo = _mm_setr_epi8(0x00, 0x00, (char)0x80, (char)0xc0, 0x00, 0x40, (char)0x80,
                                     (char)0xc0, 0x00, 0x00, (char)0x80, (char)0xc0, 0x00, 0x40,
                                     (char)0x80, (char)0xc0);
    return (fp4_tables){ _mm512_broadcast_i32x4(hi), _mm512_broadcast_i32x4(lo),
                         _mm512_set1_epi8(15) };
}

/* 64 packed bytes -> 4 x 32 bf16 weights in the activation's stored order. */
static inline void decode_unit(const fp4_tables *t, const uint8_t *p, __m512bh w[4]) {
    __m512i q  = _mm512_loadu_si512(p);
    __m512i ne = _mm512_and_si512(q, t->m4);
    __m512i no = _mm512_and_si512(_mm512_srli_epi16(q, 4), t->m4);
    __m512i eh = _mm512_shuffle_epi8(t->hi, ne), el = _mm512_shuffle_epi8(t->lo, ne);
    __m512i oh = _mm512_shuffle_epi8(t->hi, no), ol = _mm512_shuffle_epi8(t->lo, no);
    w[0] = (__m512bh)_mm512_unpacklo_epi8(el, eh);
    w[1] = (__m512bh)_mm512_unpackhi_epi8(el, eh);
    w[2] = (__m512bh)_mm512_unpacklo_epi8(ol, oh);
    w[3] = (__m512bh)_mm512_unpackhi_epi8(ol, oh);
}

/* n <= 16 e8m0 scales -> 2^(e-127) in lanes 0..n-1, zero bytes past n (e =
 * 0 is 2^-127, a subnormal; 0xFF never reaches a kernel: it is rejected at
 * creation). Loaded once per 4 units of 128 values. */
static inline __m512 mx_scales16(const uint8_t *e, int n) {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8((__mmask16)((1u << n) - 1), e));
    const __m512i b = _mm512_slli_epi32(v, 23);
    return _mm512_castsi512_ps(_mm512_mask_mov_epi32(
        b, _mm512_cmpeq_epi32_mask(v, _mm512_setzero_si512()), _mm512_set1_epi32(0x00400000)));
}

/* n <= 16 e4m3 scales times the global scale in lanes 0..n-1: an e4m3 byte
 * moved into an f16 pattern is its value times 2^-8 (NaN codes never reach
 * a kernel: they are rejected at creation). Loaded once per 2 units. */
static inline __m512 nv_scales16(const uint8_t *e, int n, float scale2) {
    const __m256i b = _mm256_cvtepu8_epi16(_mm_maskz_loadu_epi8((__mmask16)((1u << n) - 1), e));
    const __m256i h = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x80)), 8),
                                      _mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x7f)), 7));
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtph_ps(h), _mm512_set1_ps(256.0f)),
                         _mm512_set1_ps(scale2));
}

static inline __m512 dp(__m512 acc, __m512bh w, const uint16_t *x) {
    return _mm512_dpbf16_ps(acc, w, (__m512bh)_mm512_loadu_si512(x));
}
#endif

/* Block scales of one 128-value unit: MXFP4 4 (lanes 4L..4L+3 <- block L),
 * NVFP4 8 (s[2L] for the first half of lane L, s[2L+1] for the second). */
static inline void unit_scales(const moe__wmat *w, int64_t r, int64_t k0, int64_t K, float *s) {
    const bool mx = w->format == MOE_FORMAT_MXFP4;
    const int64_t bs = mx ? MOE_QK_MXFP4 : MOE_QK_NVFP4, nb = FP4_U / bs;
    const uint8_t *e = (const uint8_t *)w->scales + (r * K + k0) / bs;
    for (int64_t b = 0; b < nb; b++) {
        if (k0 + b * bs >= K) { s[b] = 0; continue; }
        s[b] = mx ? moe__e8m0_to_f32(e[b]) : moe__e4m3_to_f32(e[b]) * w->scale2;
    }
}

#if FP4_AVX512
/* NP activation rows (at xr, xq_stride apart) against weight row q:
 * writes y[i * y_stride]. The 16 block scales of 4 (MXFP4) or 2 (NVFP4)
 * units are loaded at once; per unit a permute spreads them over the
 * lanes of its dot products. */
static inline __attribute__((always_inline)) void fp4_rows(
    const moe__wmat *w, bool mx, const fp4_tables *t, const uint8_t *q, const uint8_t *sc,
    int64_t K, const char *xr, size_t xq_stride, float *y, int64_t y_stride, int NP) {
    const int64_t kp = kp128(K), bs = mx ? MOE_QK_MXFP4 : MOE_QK_NVFP4, nbk = K / bs;
    const int     upg = mx ? 4 : 2; /* units per 16 scales */
    const __m512i i_mx  = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i i_nv0 = _mm512_set_epi32(6, 6, 6, 6, 4, 4, 4, 4, 2, 2, 2, 2, 0, 0, 0, 0);
    __m512        acc[4];
    for (int i = 0; i < NP; i++) acc[i] = _mm512_setzero_ps();
    __m512 sv = _mm512_setzero_ps();
    for (int64_t k0 = 0, u = 0; k0 < kp; k0 += FP4_U, u++) {
        if (u % upg == 0) {
            const int64_t b0 = k0 / bs, n = nbk - b0 < 16 ? nbk - b0 : 16;
            sv = mx ? mx_scales16(sc + b0, (int)n) : nv_scales16(sc + b0, (int)n, w->scale2);
        }
        _Alignas(64) uint8_t tail[64];
        const uint8_t *qu = q + k0 / 2;
        moe__cpu_prefetch(qu, FP4_U / 2);
        if (K - k0 < FP4_U) { /* never read past the row */
            memset(tail, 0, sizeof tail);
            memcpy(tail, qu, (size_t)(K - k0) / 2);
            qu = tail;
        }
        __m512bh wv[4];
        decode_unit(t, qu, wv);
        const int64_t o = (u % upg) * (mx ? 4 : 8); /* the unit's first scale in sv */
        const __m512i i0 = _mm512_add_epi32(mx ? i_mx : i_nv0, _mm512_set1_epi32((int)o));
        const __m512  s0 = _mm512_permutexvar_ps(i0, sv);
        const __m512  s1 = mx ? s0 : _mm512_permutexvar_ps(
                                        _mm512_add_epi32(i0, _mm512_set1_epi32(1)), sv);
        for (int i = 0; i < NP; i++) {
            const uint16_t *x = (const uint16_t *)(xr + (size_t)i * xq_stride) + k0;
            if (mx) {
                __m512 d = dp(_mm512_setzero_ps(), wv[0], x);
                d = dp(d, wv[1], x + 32);
                d = dp(d, wv[2], x + 64);
                d = dp(d, wv[3], x + 96);
                acc[i] = _mm512_fmadd_ps(d, s0, acc[i]);
            } else {
                __m512 d0 = dp(dp(_mm512_setzero_ps(), wv[0], x), wv[2], x + 64);
                __m512 d1 = dp(dp(_mm512_setzero_ps(), wv[1], x + 32), wv[3], x + 96);
                acc[i] = _mm512_fmadd_ps(d0, s0, acc[i]);
                acc[i] = _mm512_fmadd_ps(d1, s1, acc[i]);
            }
        }
    }
    for (int i = 0; i < NP; i++) y[i * y_stride] = _mm512_reduce_add_ps(acc[i]);
}
#endif

static void gemm_fp4(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq, size_t xq_stride,
                     int64_t n_x, float *y, int64_t y_stride) {
    const int64_t K = w->cols;
    const bool mx = w->format == MOE_FORMAT_MXFP4;
#if FP4_AVX512
    const fp4_tables t = fp4_tables_make();
    const int64_t    bs = mx ? MOE_QK_MXFP4 : MOE_QK_NVFP4;
    const int64_t seg = moe__cpu_stream_seg(r0, r1);
    for (int64_t step = 0; step < seg * MOE_CPU_STREAMS; step++) {
        const int64_t r = moe__cpu_stream_row(r0, seg, step);
        if (r >= r1) continue;
        const uint8_t *q  = (const uint8_t *)w->data + r * K / 2;            // (K/2)
        const uint8_t *sc = (const uint8_t *)w->scales + r * (K / bs);       // (K/bs)
        for (int64_t i = 0; i < n_x;) {
            const int64_t left = n_x - i;
            const int     np   = left >= 4 ? 4 : left >= 2 ? 2 : 1;
            const char   *xr   = (const char *)xq + (size_t)i * xq_stride;
            float        *yr   = y + i * y_stride + (r - r0);
            if (mx) {
                if (np == 4)      fp4_rows(w, true, &t, q, sc, K, xr, xq_stride, yr, y_stride, 4);
                else if (np == 2) fp4_rows(w, true, &t, q, sc, K, xr, xq_stride, yr, y_stride, 2);
                else              fp4_rows(w, true, &t, q, sc, K, xr, xq_stride, yr, y_stride, 1);
            } else {
                if (np == 4)      fp4_rows(w, false, &t, q, sc, K, xr, xq_stride, yr, y_stride, 4);
                else if (np == 2) fp4_rows(w, false, &t, q, sc, K, xr, xq_stride, yr, y_stride, 2);
                else              fp4_rows(w, false, &t, q, sc, K, xr, xq_stride, yr, y_stride, 1);
            }
            i += np;
        }
    }
    (void)unit_scales;
#else
    const int64_t bs = mx ? MOE_QK_MXFP4 : MOE_QK_NVFP4;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *q = (const uint8_t *)w->data + r * K / 2; // (K/2)
        for (int64_t i = 0; i < n_x; i++) {
            const uint16_t *x = (const uint16_t *)((const char *)xq + (size_t)i * xq_stride);
            float acc = 0;
            for (int64_t k0 = 0; k0 < K; k0 += FP4_U) {
                float s[8] = { 0 };
                unit_scales(w, r, k0, K, s);
                for (int64_t b = 0; b < FP4_U / bs && k0 + b * bs < K; b++) {
                    float d = 0;
                    for (int64_t j = 0; j < bs; j++) {
                        int64_t k = k0 + b * bs + j;
                        d += moe__e2m1_to_f32((uint8_t)(q[k / 2] >> (4 * (k % 2)))) *
                             bf16_at(x, k);
                    }
                    acc += d * s[b];
                }
            }
            y[i * y_stride + (r - r0)] = acc;
        }
    }
#endif
    (void)bf16_at;
}

const moe__cpu_format moe__cpu_mxfp4 = { .act_row_bytes = fp4_act_row_bytes,
                                         .act_quantize = act_bf16, .gemm = gemm_fp4 };
const moe__cpu_format moe__cpu_nvfp4 = { .act_row_bytes = fp4_act_row_bytes,
                                         .act_quantize = act_bf16, .gemm = gemm_fp4 };
