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
 * one reduction tree at the end: a result depends on its rows only.
 */
#include "cpu-formats.h"
#include "../quant/quant.h"

#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define FP4_AVX512 1
#endif

enum { FP4_U = 128, FP4_XG = 16 };

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

/* Four e8m0 scales -> 2^(e-127) in lanes 0..3 (e = 0 is 2^-127, a
 * subnormal; 0xFF never reaches a kernel: it is rejected at creation). */
static inline __m512 mx_scales(const uint8_t *e) {
    uint32_t u;
    memcpy(&u, e, 4);
    __m128i v = _mm_cvtepu8_epi32(_mm_cvtsi32_si128((int)u));
    __m128i b = _mm_slli_epi32(v, 23);
    b = _mm_blendv_epi8(b, _mm_set1_epi32(0x00400000), _mm_cmpeq_epi32(v, _mm_setzero_si128()));
    return _mm512_castps128_ps512(_mm_castsi128_ps(b));
}

/* Eight e4m3 scales times the global scale in lanes 0..7: an e4m3 byte
 * moved into an f16 pattern is its value times 2^-8 (NaN codes never reach
 * a kernel: they are rejected at creation). */
static inline __m512 nv_scales(const uint8_t *e, float scale2) {
    __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)e));
    __m128i h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x80)), 8),
                             _mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x7f)), 7));
    __m256 f = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(256.0f)),
                             _mm256_set1_ps(scale2));
    return _mm512_castps256_ps512(f);
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

static void gemm_fp4(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq, size_t xq_stride,
                     int64_t n_x, float *y, int64_t y_stride) {
    const int64_t K = w->cols, kp = kp128(K);
    const bool mx = w->format == MOE_FORMAT_MXFP4;
#if FP4_AVX512
    const fp4_tables t = fp4_tables_make();
    const __m512i i_mx = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i i_nv0 = _mm512_set_epi32(6, 6, 6, 6, 4, 4, 4, 4, 2, 2, 2, 2, 0, 0, 0, 0);
    const __m512i i_nv1 = _mm512_add_epi32(i_nv0, _mm512_set1_epi32(1));
#endif
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *q = (const uint8_t *)w->data + r * K / 2; // (K/2)
        for (int64_t i0 = 0; i0 < n_x; i0 += FP4_XG) {
            const int64_t nx = n_x - i0 < FP4_XG ? n_x - i0 : FP4_XG;
#if FP4_AVX512
            __m512 acc[FP4_XG];
            for (int64_t i = 0; i < nx; i++) acc[i] = _mm512_setzero_ps();
            for (int64_t k0 = 0; k0 < kp; k0 += FP4_U) {
                _Alignas(64) uint8_t tail[64];
                const uint8_t *qu = q + k0 / 2;
                if (K - k0 < FP4_U) { /* never read past the row */
                    memset(tail, 0, sizeof tail);
                    memcpy(tail, qu, (size_t)(K - k0) / 2);
                    qu = tail;
                }
                __m512bh wv[4];
                decode_unit(&t, qu, wv);
                __m512 sv; /* the unit's block scales in lanes 0..3 (MXFP4) or 0..7 */
                if (qu == tail) {
                    float s[16] = { 0 };
                    unit_scales(w, r, k0, K, s);
                    sv = _mm512_loadu_ps(s);
                } else {
                    sv = mx ? mx_scales((const uint8_t *)w->scales + (r * K + k0) / MOE_QK_MXFP4)
                            : nv_scales((const uint8_t *)w->scales + (r * K + k0) / MOE_QK_NVFP4,
                                        w->scale2);
                }
                for (int64_t i = 0; i < nx; i++) {
                    const uint16_t *x = (const uint16_t *)((const char *)xq +
                                                           (size_t)(i0 + i) * xq_stride) + k0;
                    if (mx) {
                        __m512 d = dp(_mm512_setzero_ps(), wv[0], x);
                        d = dp(d, wv[1], x + 32);
                        d = dp(d, wv[2], x + 64);
                        d = dp(d, wv[3], x + 96);
                        acc[i] = _mm512_fmadd_ps(d, _mm512_permutexvar_ps(i_mx, sv), acc[i]);
                    } else {
                        __m512 d0 = dp(dp(_mm512_setzero_ps(), wv[0], x), wv[2], x + 64);
                        __m512 d1 = dp(dp(_mm512_setzero_ps(), wv[1], x + 32), wv[3], x + 96);
                        acc[i] = _mm512_fmadd_ps(d0, _mm512_permutexvar_ps(i_nv0, sv), acc[i]);
                        acc[i] = _mm512_fmadd_ps(d1, _mm512_permutexvar_ps(i_nv1, sv), acc[i]);
                    }
                }
            }
            for (int64_t i = 0; i < nx; i++)
                y[(i0 + i) * y_stride + (r - r0)] = _mm512_reduce_add_ps(acc[i]);
#else
            (void)kp;
            const int64_t bs = mx ? MOE_QK_MXFP4 : MOE_QK_NVFP4;
            for (int64_t i = 0; i < nx; i++) {
                const uint16_t *x = (const uint16_t *)((const char *)xq +
                                                       (size_t)(i0 + i) * xq_stride);
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
                y[(i0 + i) * y_stride + (r - r0)] = acc;
            }
#endif
        }
    }
    (void)bf16_at;
}

const moe__cpu_format moe__cpu_mxfp4 = { fp4_act_row_bytes, act_bf16, gemm_fp4 };
const moe__cpu_format moe__cpu_nvfp4 = { fp4_act_row_bytes, act_bf16, gemm_fp4 };
