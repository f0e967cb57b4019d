/*
 * gemv-int8.c - CPU kernel of INT8_W8A8: activations quantized per token to
 * int8 (moe__quantize_row_i8, the arithmetic the reference emulates; rows in
 * gemv-q8.h's layout), weights used as q + 128 so that vpdpbusd multiplies
 * unsigned weights by signed activations exactly; the row scale and the
 * token scale multiply the integer sums in fp32. AVX-512 sums a whole row
 * in integers (below; bound experts in a packed layout of 16-row groups,
 * same bits); the portable build runs gemv-q8.h's engine.
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

/* The sum of qa of each of nx activation rows (at xr, xq_stride apart). */
static void i8_act_sums(const char *xr, size_t xq_stride, int64_t nx, int64_t K, int64_t *asum) {
    for (int64_t i = 0; i < nx; i++) {
        const int32_t *as = q8_act_view(xr + (size_t)i * xq_stride, K).as;
        asum[i] = 0;
        for (int64_t g = 0; g < q8_kp(K) / 16; g++) asum[i] += as[g];
    }
}

static void gemm_int8(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                      size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    const int64_t K = w->cols;
    for (int64_t i0 = 0; i0 < n_x; i0 += 4) {
        const int64_t nx = n_x - i0 < 4 ? n_x - i0 : 4;
        const char   *xr = (const char *)xq + (size_t)i0 * xq_stride;
        int64_t       asum[4];
        i8_act_sums(xr, xq_stride, nx, K, asum);
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

/* ===== The packed layout (bound experts: pack, gemm_packed) =====
 *
 * 16 weight rows in the 16 dword lanes of a register (as gemv-q4k.c's
 * groups): a 64-byte load holds 4 consecutive values of each of 16 rows,
 * and vpdpbusd against the 4 activation bytes broadcast sums all 16 rows at
 * once, so a weight byte costs a load, an xor and a vpdpbusd per 64 and no
 * reduction. Rows go in groups of 16 (the last one padded with zero rows),
 * a group one contiguous stream:
 *   int8  q[K4 / 4][16][4]   row r's values 4c .. 4c + 3 at [c][r] (K4 =
 *                            K rounded up to 4, zeros past K)
 *   float s[16]              the rows' scales
 * Each lane's integer sum is exact (int32 over at most I8P_KC values, then
 * int64), so the result has the same bits as i8_rows'. */
enum { I8P_ROWS = MOE_CPU_GROUP_ROWS, I8P_KC = 16384 };

static int64_t i8p_k4(int64_t K) { return (K + 3) / 4 * 4; }

static size_t i8p_group_bytes(int64_t K) {
    return (size_t)(i8p_k4(K) * I8P_ROWS) + I8P_ROWS * sizeof(float);
}

static size_t i8p_packed_bytes(const moe__wmat *w) {
    return (size_t)((w->rows + I8P_ROWS - 1) / I8P_ROWS) * i8p_group_bytes(w->cols);
}

static void i8p_pack(const moe__wmat *w, void *dst) {
    const int64_t K = w->cols, K4 = i8p_k4(K), groups = (w->rows + I8P_ROWS - 1) / I8P_ROWS;
    for (int64_t g = 0; g < groups; g++) {
        int8_t *o  = (int8_t *)dst + (size_t)g * i8p_group_bytes(K);
        float  *sc = (float *)(o + K4 * I8P_ROWS);
        for (int r = 0; r < I8P_ROWS; r++) {
            const int64_t row = g * I8P_ROWS + r;
            const int8_t *q   = row < w->rows ? (const int8_t *)w->data + row * K : NULL;
            for (int64_t c = 0; c < K4 / 4; c++) {
                int8_t v[4] = { 0, 0, 0, 0 };
                if (q) memcpy(v, q + 4 * c, (size_t)(K - 4 * c < 4 ? K - 4 * c : 4));
                memcpy(o + c * 64 + 4 * r, v, 4);
            }
            const float s = q ? ((const float *)w->scales)[row] : 0.0f;
            memcpy(&sc[r], &s, sizeof s);
        }
    }
}

/* The 16 rows of the group at g against NP activation rows: y lanes. */
static inline __attribute__((always_inline)) void i8p_group(const int8_t *g, int64_t K,
                                                            const char *xr, size_t xq_stride,
                                                            const int64_t *asum, __m512 out[4],
                                                            int NP) {
    const int64_t K4 = i8p_k4(K);
    const bool    pf = moe__cpu_plan.pf_groups;
    __m512i       lo[4], hi[4]; /* int64 totals of lanes 0..7, 8..15 */
#pragma GCC unroll 4
    for (int i = 0; i < NP; i++) lo[i] = hi[i] = _mm512_setzero_si512();
    for (int64_t k0 = 0; k0 < K4; k0 += I8P_KC) {
        const int64_t k1 = K4 - k0 < I8P_KC ? K4 : k0 + I8P_KC;
        /* four chains per activation row (k / 4 % 4): one vpdpbusd chain
         * waits on its latency (integer sums: the order moves no bit) */
        __m512i       acc[4][4];
#pragma GCC unroll 4
        for (int i = 0; i < NP; i++)
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_si512();
        int64_t k = k0;
        for (; k + 16 <= k1; k += 16) {
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                const int8_t *p = g + (k + 4 * j) * I8P_ROWS;
                if (pf) moe__cpu_prefetch(p, 64);
                const __m512i u = _mm512_xor_si512(_mm512_loadu_si512(p), _mm512_set1_epi8(-128));
#pragma GCC unroll 4
                for (int i = 0; i < NP; i++)
                    acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], u,
                                                    moe__cpu_bcast4(xr + (size_t)i * xq_stride + k + 4 * j));
            }
        }
        for (; k < k1; k += 4) {
            const int8_t *p = g + k * I8P_ROWS;
            const __m512i u = _mm512_xor_si512(_mm512_loadu_si512(p), _mm512_set1_epi8(-128));
#pragma GCC unroll 4
            for (int i = 0; i < NP; i++)
                acc[i][0] = _mm512_dpbusd_epi32(acc[i][0], u, moe__cpu_bcast4(xr + (size_t)i * xq_stride + k));
        }
#pragma GCC unroll 4
        for (int i = 0; i < NP; i++) {
            const __m512i a = _mm512_add_epi32(_mm512_add_epi32(acc[i][0], acc[i][1]),
                                               _mm512_add_epi32(acc[i][2], acc[i][3]));
            lo[i] = _mm512_add_epi64(lo[i], _mm512_cvtepi32_epi64(_mm512_castsi512_si256(a)));
            hi[i] = _mm512_add_epi64(hi[i], _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(a, 1)));
        }
    }
    const __m512 sw = _mm512_loadu_ps((const float *)(g + K4 * I8P_ROWS));
#pragma GCC unroll 4
    for (int i = 0; i < NP; i++) { /* i8_rows' (float)(tot - 128 asum) * (sw * d), 16 lanes */
        const __m512i c = _mm512_set1_epi64(128 * asum[i]);
        const __m512  t = _mm512_insertf32x8(
            _mm512_castps256_ps512(_mm512_cvtepi64_ps(_mm512_sub_epi64(lo[i], c))),
            _mm512_cvtepi64_ps(_mm512_sub_epi64(hi[i], c)), 1);
        const float d = q8_act_view(xr + (size_t)i * xq_stride, K).ad[0];
        out[i] = _mm512_mul_ps(t, _mm512_mul_ps(sw, _mm512_set1_ps(d)));
    }
}

static void gemm_int8_packed(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                             size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    const int64_t K = w->cols;
    for (int64_t i0 = 0; i0 < n_x; i0 += 4) {
        const int64_t nx = n_x - i0 < 4 ? n_x - i0 : 4;
        const char   *xr = (const char *)xq + (size_t)i0 * xq_stride;
        int64_t       asum[4];
        i8_act_sums(xr, xq_stride, nx, K, asum);
        for (int64_t g = r0 / I8P_ROWS; g * I8P_ROWS < r1; g++) {
            const int8_t *gp = (const int8_t *)w->data + (size_t)g * i8p_group_bytes(K);
            __m512        out[4];
            switch (nx) {
            case 4: i8p_group(gp, K, xr, xq_stride, asum, out, 4); break;
            case 3: i8p_group(gp, K, xr, xq_stride, asum, out, 3); break;
            case 2: i8p_group(gp, K, xr, xq_stride, asum, out, 2); break;
            default: i8p_group(gp, K, xr, xq_stride, asum, out, 1); break;
            }
            for (int64_t i = 0; i < nx; i++)
                moe__cpu_group_store(out[i], g, r0, r1, y + (i0 + i) * y_stride);
        }
    }
}
#else
static void gemm_int8(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                      size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    q8_gemm(w, r0, r1, xq, xq_stride, n_x, y, y_stride, unpack_i8);
}
#endif

const moe__cpu_format moe__cpu_int8_w8a8 = {
    .act_row_bytes = q8_act_row_bytes, .act_quantize = act_i8, .gemm = gemm_int8,
#if Q8_AVX512
    .packed_bytes = i8p_packed_bytes, .pack = i8p_pack, .gemm_packed = gemm_int8_packed,
#endif
};
