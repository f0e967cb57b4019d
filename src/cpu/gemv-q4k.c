/*
 * gemv-q4k.c - CPU kernel of Q4_K (GGUF) with q8_K activations, fused: the
 * weight blocks are decoded in registers and never stored.
 *
 * For one block of 256 (8 sub-blocks s of 32, 6-bit scale sc[s] and min
 * m[s]) and an activation block (d_x, qa[256], sums bs[s] of qa):
 *     sum w*x = d_x * ( d * sum_s sc[s] * sum_{k in s} q[k] qa[k]
 *                     - dmin * sum_s m[s] * bs[s] )
 * with the q * qa sums exact in int32 (vpdpbusd: the nibbles are unsigned).
 * One 64-byte load of packed nibbles gives, masked, sub-blocks 2c and 2c+2
 * (low nibbles) and shifted 2c+1 and 2c+3 (high nibbles); the activation
 * row is stored in that order so each step is one load.
 *
 * Activation row (act_row_bytes), cols a multiple of 256:
 *   int8  qa[cols]       q8_K values (quant.h's moe__quantize_row_q8_k),
 *                        each 128 stored as values 0..31, 64..95, 32..63,
 *                        96..127
 *   float dx[cols/256]   q8_K scale per block
 *   int32 bs[cols/32]    sum of qa over each sub-block (natural order)
 *
 * Order: per row, blocks in increasing k; in a block the four products
 * summed in a fixed order, then scaled; one reduction tree at the end.
 */
#include "cpu-formats.h"
#include "../quant/quant.h"

#include <math.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__F16C__)
#include <immintrin.h>
#define Q4K_AVX512 1
#endif

enum { Q4K_XG = 16, Q4K_PF_ROWS = 4 };

static size_t q4k_act_row_bytes(int64_t cols) {
    return (size_t)cols + (size_t)(cols / 256) * 4 + (size_t)(cols / 32) * 4;
}

/* Stored position of value e (0..127) of a 128-value half block. */
static inline int q4k_perm(int e) { return e < 32 ? e : e < 64 ? e + 32 : e < 96 ? e - 32 : e; }

static void act_q4k(const moe__wmat *w, const float *x, int64_t cols, void *xq) {
    (void)w;
    int8_t  *qa = xq;
    float   *dx = (float *)(qa + cols);
    int32_t *bs = (int32_t *)(dx + cols / 256);
    for (int64_t b = 0; b < cols / MOE_QK_K; b++) {
#if Q4K_AVX512
        /* moe__quantize_row_q8_k's arithmetic, 16 lanes at a time: the
         * signed value of largest magnitude (the first one on ties), the
         * same iscale, products and round-to-nearest-even conversion. */
        const float *xb = x + b * MOE_QK_K;
        const __m512 inf = _mm512_set1_ps(INFINITY);
        __m512 am = _mm512_setzero_ps();
        bool   bad = false;
        for (int c = 0; c < 16; c++) {
            const __m512 a = _mm512_abs_ps(_mm512_loadu_ps(xb + 16 * c));
            bad |= _mm512_cmp_ps_mask(a, inf, _CMP_NLT_UQ) != 0;
            am = _mm512_max_ps(a, am);
        }
        int8_t *qb = qa + b * 256;
        if (bad || _mm512_reduce_max_ps(am) == 0) {
            memset(qb, 0, 256);
            memset(bs + 8 * b, 0, 8 * sizeof(int32_t));
            dx[b] = bad ? NAN : 0.0f;
            continue;
        }
        const float amax = _mm512_reduce_max_ps(am);
        float max = 0;
        for (int c = 0; c < 16; c++) {
            const __mmask16 hit = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(xb + 16 * c)),
                                                     _mm512_set1_ps(amax), _CMP_EQ_OQ);
            if (hit) {
                max = xb[16 * c + __builtin_ctz(hit)];
                break;
            }
        }
        const float iscale = -127.0f / max;
        const __m512 iv = _mm512_set1_ps(iscale);
        for (int c = 0; c < 16; c += 2) {
            __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + 16 * c), iv));
            __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + 16 * c + 16), iv));
            q0 = _mm512_min_epi32(q0, _mm512_set1_epi32(127));
            q1 = _mm512_min_epi32(q1, _mm512_set1_epi32(127));
            const int e = 16 * c; /* sub-block c / 2, at its stored place */
            _mm_storeu_si128((__m128i *)(qb + e / 128 * 128 + q4k_perm(e % 128)),
                             _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128((__m128i *)(qb + e / 128 * 128 + q4k_perm(e % 128) + 16),
                             _mm512_cvtepi32_epi8(q1));
            bs[8 * b + c / 2] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        }
        dx[b] = 1.0f / iscale;
#else
        moe_block_q8_k blk;
        moe__quantize_row_q8_k(x + b * MOE_QK_K, &blk, MOE_QK_K);
        dx[b] = blk.d;
        for (int e = 0; e < MOE_QK_K; e++)
            qa[b * 256 + e / 128 * 128 + q4k_perm(e % 128)] = blk.qs[e];
        for (int s = 0; s < 8; s++) bs[b * 8 + s] = blk.bsums[2 * s] + blk.bsums[2 * s + 1];
#endif
    }
}

/* The 6-bit scales (sc[0..7]) and mins (m[0..7]) of a block. */
static inline void q4k_scales(const uint8_t *s, uint8_t sc[8], uint8_t m[8]) {
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            sc[j] = s[j] & 63;
            m[j]  = s[j + 4] & 63;
        } else {
            sc[j] = (uint8_t)((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4));
            m[j]  = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
        }
    }
}

#if Q4K_AVX512
/* sum(q * qa) of 64 nibbles and 64 activation bytes, per 4 (16 lanes). */
static inline __m512 q4k_dot(__m512i w, const int8_t *a) {
    return _mm512_cvtepi32_ps(
        _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, _mm512_loadu_si512(a)));
}
#endif

static void gemm_q4k(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq, size_t xq_stride,
                     int64_t n_x, float *y, int64_t y_stride) {
    const int64_t K = w->cols, nb = K / MOE_QK_K;
    const size_t  row_bytes = (size_t)nb * sizeof(moe_block_q4_k);
#if Q4K_AVX512
    const __m512i m4 = _mm512_set1_epi8(15);
    /* Lanes 0..7 <- scale a, 8..15 <- scale b, for (a, b) = (0,2) (1,3) (4,6) (5,7). */
    const __m512i i02 = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i i13 = _mm512_add_epi32(i02, _mm512_set1_epi32(1));
    const __m512i i46 = _mm512_add_epi32(i02, _mm512_set1_epi32(4));
    const __m512i i57 = _mm512_add_epi32(i02, _mm512_set1_epi32(5));
#endif
    for (int64_t r = r0; r < r1; r++) {
        const moe_block_q4_k *blk =
            (const moe_block_q4_k *)((const char *)w->data + (size_t)r * row_bytes); // (nb)
        if (r + Q4K_PF_ROWS < w->rows) {
            const char *p = (const char *)w->data + (size_t)(r + Q4K_PF_ROWS) * row_bytes;
            for (size_t o = 0; o < row_bytes; o += 64) __builtin_prefetch(p + o, 0, 3);
        }
        for (int64_t i0 = 0; i0 < n_x; i0 += Q4K_XG) {
            const int64_t nx = n_x - i0 < Q4K_XG ? n_x - i0 : Q4K_XG;
#if Q4K_AVX512
            __m512 acc[Q4K_XG];
            __m256 macc[Q4K_XG];
            for (int64_t i = 0; i < nx; i++) {
                acc[i]  = _mm512_setzero_ps();
                macc[i] = _mm256_setzero_ps();
            }
            for (int64_t b = 0; b < nb; b++) {
                const moe_block_q4_k *q = &blk[b];
                uint32_t u0, u1, u2;
                memcpy(&u0, q->scales, 4);
                memcpy(&u1, q->scales + 4, 4);
                memcpy(&u2, q->scales + 8, 4);
                const __m128i v = _mm_set_epi32(
                    (int)(((u2 >> 4) & 0x0f0f0f0fu) | (((u1 >> 6) & 0x03030303u) << 4)),
                    (int)(u1 & 0x3f3f3f3fu),
                    (int)((u2 & 0x0f0f0f0fu) | (((u0 >> 6) & 0x03030303u) << 4)),
                    (int)(u0 & 0x3f3f3f3fu));
                const __m512 sc = _mm512_castps256_ps512(_mm256_mul_ps(
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)), _mm256_set1_ps(_cvtsh_ss(q->d))));
                const __m256 mn = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
                                                    _mm_srli_si128(v, 8))),
                                                _mm256_set1_ps(_cvtsh_ss(q->dmin)));
                const __m512 s0 = _mm512_permutexvar_ps(i02, sc);
                const __m512 s1 = _mm512_permutexvar_ps(i13, sc);
                const __m512 s2 = _mm512_permutexvar_ps(i46, sc);
                const __m512 s3 = _mm512_permutexvar_ps(i57, sc);
                const __m512i v0 = _mm512_loadu_si512(q->qs), v1 = _mm512_loadu_si512(q->qs + 64);
                const __m512i w0 = _mm512_and_si512(v0, m4);
                const __m512i w1 = _mm512_and_si512(_mm512_srli_epi16(v0, 4), m4);
                const __m512i w2 = _mm512_and_si512(v1, m4);
                const __m512i w3 = _mm512_and_si512(_mm512_srli_epi16(v1, 4), m4);
                for (int64_t i = 0; i < nx; i++) {
                    const int8_t  *qa = (const int8_t *)((const char *)xq +
                                                         (size_t)(i0 + i) * xq_stride);
                    const float   *dx = (const float *)(qa + K);
                    const int32_t *bs = (const int32_t *)(dx + nb);
                    const int8_t  *a  = qa + b * 256;
                    __m512 t = _mm512_mul_ps(q4k_dot(w0, a), s0);
                    t = _mm512_fmadd_ps(q4k_dot(w1, a + 64), s1, t);
                    t = _mm512_fmadd_ps(q4k_dot(w2, a + 128), s2, t);
                    t = _mm512_fmadd_ps(q4k_dot(w3, a + 192), s3, t);
                    const __m512 d = _mm512_set1_ps(dx[b]);
                    acc[i] = _mm512_fmadd_ps(t, d, acc[i]);
                    const __m256 bsv =
                        _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(bs + 8 * b)));
                    macc[i] = _mm256_fmadd_ps(_mm256_mul_ps(mn, bsv), _mm512_castps512_ps256(d),
                                              macc[i]);
                }
            }
            for (int64_t i = 0; i < nx; i++) {
                __m128 h = _mm_add_ps(_mm256_castps256_ps128(macc[i]),
                                      _mm256_extractf128_ps(macc[i], 1));
                h = _mm_add_ps(h, _mm_movehl_ps(h, h));
                h = _mm_add_ss(h, _mm_movehdup_ps(h));
                y[(i0 + i) * y_stride + (r - r0)] = _mm512_reduce_add_ps(acc[i]) - _mm_cvtss_f32(h);
            }
#else
            for (int64_t i = 0; i < nx; i++) {
                const int8_t  *qa = (const int8_t *)((const char *)xq +
                                                     (size_t)(i0 + i) * xq_stride);
                const float   *dx = (const float *)(qa + K);
                const int32_t *bs = (const int32_t *)(dx + nb);
                float acc = 0, macc = 0;
                for (int64_t b = 0; b < nb; b++) {
                    const moe_block_q4_k *q = &blk[b];
                    uint8_t sc[8], m[8];
                    q4k_scales(q->scales, sc, m);
                    const float d = moe__cpu_half_to_f32(q->d), dmin = moe__cpu_half_to_f32(q->dmin);
                    float t = 0, mt = 0;
                    for (int s = 0; s < 8; s++) {
                        int32_t isum = 0;
                        for (int l = 0; l < 32; l++) {
                            const int e = 32 * s + l, c = e / 64, hi = (e % 64) / 32;
                            const int qv = hi ? q->qs[32 * c + l] >> 4 : q->qs[32 * c + l] & 15;
                            isum += qv * qa[b * 256 + e / 128 * 128 + q4k_perm(e % 128)];
                        }
                        t += (float)isum * (d * (float)sc[s]);
                        mt += (dmin * (float)m[s]) * (float)bs[8 * b + s];
                    }
                    acc += t * dx[b];
                    macc += mt * dx[b];
                }
                y[(i0 + i) * y_stride + (r - r0)] = acc - macc;
            }
#endif
        }
    }
}

const moe__cpu_format moe__cpu_q4_k = { q4k_act_row_bytes, act_q4k, gemm_q4k };
