/*
 * gemv-q8.h - the int8-path engine shared by the CPU kernels of Q6_K
 * (src/cpu/gemv-q6k.c) and INT8_W8A8 (src/cpu/gemv-int8.c), and their
 * activation row layout. Both files now run their own fused AVX-512
 * kernels on that layout; this engine is their portable path:
 * activations quantized to int8 per row, weights unpacked a row chunk at a
 * time into unsigned bytes on the stack, and exact integer dot products
 * (AVX-512 VNNI vpdpbusd) scaled in fp32. Never more than one weight row
 * chunk (<= Q8_KC values) is unpacked at once.
 *
 * Activation row (act_row_bytes), for Kp = cols rounded up to 256:
 *   int8  qa[Kp]       quantized values, zero past cols
 *   float ad[Kp / 16]  scale of each group of 16 (ggml's q8_0 d, rounded
 *                      through f16, twice per block of 32; q8_K's d 16 times
 *                      per block of 256; one per-token d for int8)
 *   int32 as[Kp / 16]  sum of qa over each group of 16
 *
 * Unpacked weight chunk (the format's unpack function), per 16-group g:
 *   uint8 wu[]         stored weight u = q + off, with the format's value
 *                      w = wd[g] * (u - off) - wm[g]; off makes u unsigned
 *   float wd[g]        the group's scale
 *   float wc[g]        off * wd[g] + wm[g], the coefficient of sum(qa) that
 *                      the unsigned product over-counts
 * so that, with x = ad * qa,
 *   sum_k w * x = sum_g ad[g] * (wd[g] * sum(u * qa) - wc[g] * as[g]).
 * The u * qa sums are exact int32; the fp32 order is fixed by K alone:
 * four 16-lane accumulators take the four 64-value quarters of every 256
 * values in increasing k, the correction is a fifth, and all are reduced
 * with one fixed tree at the end of the row. So a result depends on its
 * weight row and input row only.
 */
#ifndef MOE_GEMV_Q8_H
#define MOE_GEMV_Q8_H

#include "cpu-formats.h"
#include "../quant/quant.h"

#include <string.h>

#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define Q8_AVX512 1
#endif

enum { Q8_KC = 4096, Q8_XG = 16 };

static inline int64_t q8_kp(int64_t cols) { return (cols + 255) / 256 * 256; }

static inline size_t q8_act_row_bytes(int64_t cols) {
    int64_t kp = q8_kp(cols);
    return (size_t)kp + (size_t)(kp / 16) * 8;
}

typedef struct q8_act {
    const int8_t  *qa; // (Kp)
    const float   *ad; // (Kp/16)
    const int32_t *as; // (Kp/16)
} q8_act;

static inline q8_act q8_act_view(const void *xq, int64_t cols) {
    int64_t kp = q8_kp(cols);
    const char *p = xq;
    return (q8_act){ (const int8_t *)p, (const float *)(p + kp),
                     (const int32_t *)(p + kp + kp / 4) };
}

/* Fills the group sums and clears the padding of an activation row whose
 * qa[0..cols) and ad[] are written. */
static inline void q8_act_finish(void *xq, int64_t cols) {
    int64_t kp = q8_kp(cols);
    char *p = xq;
    int8_t *qa = (int8_t *)p;
    int32_t *as = (int32_t *)(p + kp + kp / 4);
    memset(qa + cols, 0, (size_t)(kp - cols));
    int64_t g = 0;
#if Q8_AVX512
    /* 16 groups at a time: sums of 4 bytes by vpdpbusd against ones, then of
     * 4 such lanes by two pairwise additions (exact integers either way). */
    for (; g + 16 <= kp / 16; g += 16) {
        __m512i q4[4];
        for (int c = 0; c < 4; c++)
            q4[c] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(1),
                                        _mm512_loadu_si512(qa + 16 * g + 64 * c));
        /* q4[c], 128-bit lane i: group 4c + i, its 4-byte sums j = 0..3.
         * a (b), lane i: groups i, 4 + i (8 + i, 12 + i), sums j = 0 + 2 and
         * 1 + 3 each; c, lane i: whole groups i, 4 + i, 8 + i, 12 + i. */
        const __m512i a = _mm512_add_epi32(_mm512_unpacklo_epi32(q4[0], q4[1]),
                                           _mm512_unpackhi_epi32(q4[0], q4[1]));
        const __m512i b = _mm512_add_epi32(_mm512_unpacklo_epi32(q4[2], q4[3]),
                                           _mm512_unpackhi_epi32(q4[2], q4[3]));
        const __m512i c = _mm512_add_epi32(_mm512_unpacklo_epi64(a, b),
                                           _mm512_unpackhi_epi64(a, b));
        const __m512i idx = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
        _mm512_storeu_si512(as + g, _mm512_permutexvar_epi32(idx, c));
    }
#endif
    for (; g < kp / 16; g++) {
        int32_t s = 0;
        for (int j = 0; j < 16; j++) s += qa[16 * g + j];
        as[g] = s;
    }
}

/* Unpacks weight row r, values [k0, k0 + kc) (k0 a multiple of 256) into
 * wu (kc values), wd and wc (one per 16 values); the caller clears the
 * padding up to the next multiple of 256. The unpacker streams the weight
 * bytes, so it also asks for them ahead (moe__cpu_prefetch). */
typedef void (*q8_unpack_fn)(const moe__wmat *w, int64_t r, int64_t k0, int64_t kc, uint8_t *wu,
                             float *wd, float *wc);

/* acc += the chunk's contribution for one activation row. kcp % 256 == 0. */
#if Q8_AVX512
/* Four accumulators (one per 64-value quarter of each 256 values) hide the
 * FMA latency; they are summed in a fixed order at the end of the row. */
typedef struct q8_acc { __m512 a[4], c; } q8_acc;

static inline __m512 q8_step(const uint8_t *wu, const int8_t *qa, __m512 p, __m512i idx, __m512 a) {
    __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_load_si512(wu),
                                    _mm512_loadu_si512(qa));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_permutexvar_ps(idx, p), a);
}

static inline void q8_dot_chunk(const uint8_t *wu, const float *wd, const float *wc,
                                const int8_t *qa, const float *ad, const int32_t *as, int64_t kcp,
                                q8_acc *acc) {
    const __m512i i0 = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i i1 = _mm512_add_epi32(i0, _mm512_set1_epi32(4));
    const __m512i i2 = _mm512_add_epi32(i0, _mm512_set1_epi32(8));
    const __m512i i3 = _mm512_add_epi32(i0, _mm512_set1_epi32(12));
    __m512 a0 = acc->a[0], a1 = acc->a[1], a2 = acc->a[2], a3 = acc->a[3], c = acc->c;
    for (int64_t k = 0; k < kcp; k += 256) {
        const __m512 adv = _mm512_loadu_ps(ad + k / 16);
        const __m512 p   = _mm512_mul_ps(_mm512_load_ps(wd + k / 16), adv);
        a0 = q8_step(wu + k, qa + k, p, i0, a0);
        a1 = q8_step(wu + k + 64, qa + k + 64, p, i1, a1);
        a2 = q8_step(wu + k + 128, qa + k + 128, p, i2, a2);
        a3 = q8_step(wu + k + 192, qa + k + 192, p, i3, a3);
        c = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_load_ps(wc + k / 16), adv),
                            _mm512_cvtepi32_ps(_mm512_loadu_si512(as + k / 16)), c);
    }
    acc->a[0] = a0; acc->a[1] = a1; acc->a[2] = a2; acc->a[3] = a3; acc->c = c;
}

static inline float q8_acc_value(const q8_acc *acc) {
    __m512 s = _mm512_add_ps(_mm512_add_ps(acc->a[0], acc->a[1]),
                             _mm512_add_ps(acc->a[2], acc->a[3]));
    return _mm512_reduce_add_ps(s) - _mm512_reduce_add_ps(acc->c);
}
#else
/* Portable: 16 "lanes" as in the vector version (lane l of a 64-value step
 * covers values 4l .. 4l+3). */
static inline void q8_dot_chunk(const uint8_t *wu, const float *wd, const float *wc,
                                const int8_t *qa, const float *ad, const int32_t *as, int64_t kcp,
                                float *acc, float *corr) {
    for (int64_t k = 0; k < kcp; k += 64) {
        for (int l = 0; l < 16; l++) {
            int32_t d = 0;
            for (int j = 0; j < 4; j++) d += (int32_t)wu[k + 4 * l + j] * qa[k + 4 * l + j];
            const int64_t g = (k + 4 * l) / 16;
            acc[l] += (float)d * (wd[g] * ad[g]);
        }
        if (k % 256 == 0)
            for (int l = 0; l < 16; l++)
                corr[l] += (wc[k / 16 + l] * ad[k / 16 + l]) * (float)as[k / 16 + l];
    }
}
static inline float q8_reduce16(const float *v) {
    float t[8];
    for (int i = 0; i < 8; i++) t[i] = v[i] + v[i + 8];
    for (int i = 0; i < 4; i++) t[i] += t[i + 4];
    return (t[0] + t[2]) + (t[1] + t[3]);
}
#endif

/* The gemm of cpu-formats.h for an int8-path format with unpacker `unpack`. */
static inline void q8_gemm(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                           size_t xq_stride, int64_t n_x, float *y, int64_t y_stride,
                           q8_unpack_fn unpack) {
    _Alignas(64) uint8_t wu[Q8_KC];
    _Alignas(64) float   wd[Q8_KC / 16], wc[Q8_KC / 16];
    const int64_t K = w->cols;
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t i0 = 0; i0 < n_x; i0 += Q8_XG) {
            const int64_t nx = n_x - i0 < Q8_XG ? n_x - i0 : Q8_XG;
#if Q8_AVX512
            q8_acc acc[Q8_XG];
            for (int64_t i = 0; i < nx; i++)
                acc[i].a[0] = acc[i].a[1] = acc[i].a[2] = acc[i].a[3] = acc[i].c =
                    _mm512_setzero_ps();
#else
            float acc[Q8_XG][16], corr[Q8_XG][16];
            memset(acc, 0, sizeof acc);
            memset(corr, 0, sizeof corr);
#endif
            for (int64_t k0 = 0; k0 < K; k0 += Q8_KC) {
                const int64_t kc = K - k0 < Q8_KC ? K - k0 : Q8_KC, kcp = q8_kp(kc);
                unpack(w, r, k0, kc, wu, wd, wc);
                memset(wu + kc, 0, (size_t)(kcp - kc));
                for (int64_t g = (kc + 15) / 16; g < kcp / 16; g++) wd[g] = wc[g] = 0;
                for (int64_t i = 0; i < nx; i++) {
                    q8_act a = q8_act_view((const char *)xq + (size_t)(i0 + i) * xq_stride, K);
#if Q8_AVX512
                    q8_dot_chunk(wu, wd, wc, a.qa + k0, a.ad + k0 / 16, a.as + k0 / 16, kcp,
                                 &acc[i]);
#else
                    q8_dot_chunk(wu, wd, wc, a.qa + k0, a.ad + k0 / 16, a.as + k0 / 16, kcp, acc[i],
                                 corr[i]);
#endif
                }
            }
            for (int64_t i = 0; i < nx; i++) {
#if Q8_AVX512
                float v = q8_acc_value(&acc[i]);
#else
                float v = q8_reduce16(acc[i]) - q8_reduce16(corr[i]);
#endif
                y[(i0 + i) * y_stride + (r - r0)] = v;
            }
        }
    }
}

#endif /* MOE_GEMV_Q8_H */
