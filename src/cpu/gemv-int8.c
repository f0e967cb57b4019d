/*
 * gemv-int8.c - CPU kernel of INT8_W8A8 on the int8 path of gemv-q8.h:
 * activations quantized per token to int8 (moe__quantize_row_i8, the
 * arithmetic the reference emulates), weights stored as q + 128 so that
 * vpdpbusd multiplies unsigned weights by signed activations exactly; the
 * row scale and the token scale multiply the integer sums in fp32.
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

static void unpack_i8(const moe__wmat *w, int64_t r, int64_t k0, int64_t kc, uint8_t *wu,
                      float *wd, float *wc) {
    const int8_t *q = (const int8_t *)w->data + r * w->cols + k0; // (kc)
    const float   s = ((const float *)w->scales)[r];
    int64_t k = 0;
#if Q8_AVX512
    for (; k + 64 <= kc; k += 64)
        _mm512_store_si512(wu + k, _mm512_xor_si512(_mm512_loadu_si512(q + k),
                                                    _mm512_set1_epi8(-128)));
#endif
    for (; k < kc; k++) wu[k] = (uint8_t)(q[k] + 128);
    for (int64_t g = 0; g < (kc + 15) / 16; g++) {
        wd[g] = s;
        wc[g] = 128.0f * s;
    }
}

static void gemm_int8(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                      size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    q8_gemm(w, r0, r1, xq, xq_stride, n_x, y, y_stride, unpack_i8);
}

const moe__cpu_format moe__cpu_int8_w8a8 = { q8_act_row_bytes, act_i8, gemm_int8 };
