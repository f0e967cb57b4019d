/*
 * gemv-int8.c - CPU kernel of INT8_W8A8: activations quantized per token to
 * int8 (moe__quantize_row_i8, the arithmetic the reference emulates; rows in
 * gemv-q8.h's layout), weights used as q + 128 so that vpdpbusd multiplies
 * unsigned weights by signed activations exactly; the row scale and the
 * token scale multiply the integer sums in fp32. AVX-512 sums a whole row
 * in integers (below); the portable build runs gemv-q8.h's engine.
 */
#include "gemv-q8.h"

#if Q8_AVX512
#include <immintrin.h>
#endif

static void act_i8(const moe__wmat *w, const float *x, int64_t cols, void *xq) {
    (void)w;
    int64_t kp = q8_kp(cols);
    float d = moe__quantize_row_i8(x, (int8_t *)xq, cols);
    float *ad = (float *)((char *)xq + kp);
    for (int64_t g = 0; g < kp / 16; g++) ad[g] = g < (cols + 15) / 16 ? d : 0.0f;
    q8_act_finish(xq, cols);
}

#if !Q8_AVX512
static void unpack_i8(const moe__wmat *w, int64_t r, int64_t k0, int64_t kc, uint8_t *wu,
                      float *wd, float *wc) {
    const int8_t *q = (const int8_t *)w->data + r * w->cols + k0; // (kc)
    const float   s = ((const float *)w->scales)[r];
    int64_t k = 0;
#if Q8_AVX512
    for (; k + 64 <= kc; k += 64) {
        moe__cpu_prefetch(q + k, 64);
        _mm512_store_si512(wu + k, _mm512_xor_si512(_mm512_loadu_si512(q + k),
                                                    _mm512_set1_epi8(-128)));
    }
#endif
    for (; k < kc; k++) wu[k] = (uint8_t)(q[k] + 128);
    for (int64_t g = 0; g < (kc + 15) / 16; g++) {
        wd[g] = s;
        wc[g] = 128.0f * s;
    }
}
#endif

#if Q8_AVX512
/* AVX-512: the whole row in integers. With one weight scale per row and one
 * activation scale per token,
 *     y = s * d * sum_k q[k] qa[k],  sum q qa = sum (q + 128) qa - 128 sum qa
 * and vpdpbusd accumulates (q + 128) * qa exactly into int32 lanes; the
 * lanes are summed into an int64 every I8_KC values (a lane gains at most
 * 4 * 255 * 127 per 64 values, so int32 cannot overflow within a chunk).
 * The result is exact up to the final conversion and two products, so it
 * depends on nothing but its rows. Up to 4 activation rows share each
 * weight load. */
enum { I8_KC = 1 << 16 };

static inline __attribute__((always_inline)) void i8_rows(const int8_t *q, int64_t K, float sw,
                                                           const char *xr, size_t xq_stride,
                                                           const int64_t *asum, float *y,
                                                           int64_t y_stride, int NP) {
    int64_t tot[4] = { 0, 0, 0, 0 };
    for (int64_t k0 = 0; k0 < K; k0 += I8_KC) {
        const int64_t k1 = K - k0 < I8_KC ? K : k0 + I8_KC;
        __m512i acc[4];
#pragma GCC unroll 4 /* every loop over the rows: the accumulators in registers */
        for (int i = 0; i < NP; i++) acc[i] = _mm512_setzero_si512();
        for (int64_t k = k0; k < k1; k += 64) {
            moe__cpu_prefetch(q + k, 64);
            const __mmask64 m = k1 - k >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << (k1 - k)) - 1;
            const __m512i   u = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, q + k),
                                                 _mm512_maskz_set1_epi8(m, -128));
#pragma GCC unroll 4
            for (int i = 0; i < NP; i++)
                acc[i] = _mm512_dpbusd_epi32(acc[i], u,
                                             _mm512_loadu_si512(xr + (size_t)i * xq_stride + k));
        }
#pragma GCC unroll 4
        for (int i = 0; i < NP; i++) {
            const __m512i lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(acc[i]));
            const __m512i hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(acc[i], 1));
            tot[i] += _mm512_reduce_add_epi64(_mm512_add_epi64(lo, hi));
        }
    }
    for (int i = 0; i < NP; i++) {
        const float d = q8_act_view(xr + (size_t)i * xq_stride, K).ad[0];
        y[i * y_stride] = (float)(tot[i] - 128 * asum[i]) * (sw * d);
    }
}

static void gemm_int8(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                      size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    const int64_t K = w->cols, ng = q8_kp(K) / 16;
    for (int64_t i0 = 0; i0 < n_x; i0 += 4) {
        const int64_t nx = n_x - i0 < 4 ? n_x - i0 : 4;
        const char   *xr = (const char *)xq + (size_t)i0 * xq_stride;
        int64_t       asum[4] = { 0, 0, 0, 0 }; /* sum of qa per activation row */
        for (int64_t i = 0; i < nx; i++) {
            const int32_t *as = q8_act_view(xr + (size_t)i * xq_stride, K).as;
            for (int64_t g = 0; g < ng; g++) asum[i] += as[g];
        }
        const int64_t seg = moe__cpu_stream_seg(r0, r1);
        for (int64_t step = 0; step < seg * moe__cpu_plan.streams; step++) {
            const int64_t r = moe__cpu_stream_row(r0, seg, step);
            if (r >= r1) continue;
            const int8_t *q  = (const int8_t *)w->data + r * K; // (K)
            const float   sw = ((const float *)w->scales)[r];
            float        *yr = y + i0 * y_stride + (r - r0);
            switch (nx) {
            case 4: i8_rows(q, K, sw, xr, xq_stride, asum, yr, y_stride, 4); break;
            case 3: i8_rows(q, K, sw, xr, xq_stride, asum, yr, y_stride, 3); break;
            case 2: i8_rows(q, K, sw, xr, xq_stride, asum, yr, y_stride, 2); break;
            default: i8_rows(q, K, sw, xr, xq_stride, asum, yr, y_stride, 1); break;
            }
        }
    }
}
#else
static void gemm_int8(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                      size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    q8_gemm(w, r0, r1, xq, xq_stride, n_x, y, y_stride, unpack_i8);
}
#endif

const moe__cpu_format moe__cpu_int8_w8a8 = { .act_row_bytes = q8_act_row_bytes,
                                             .act_quantize = act_i8, .gemm = gemm_int8 };
