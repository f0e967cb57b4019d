/*
 * gemv-fp.h - the fp32 engine shared by the CPU kernels of formats whose
 * activations stay floating point (FP8_*, MXFP4, NVFP4, INT4/INT8 GPTQ,
 * INT4 AWQ; on AVX-512 only FP8 and INT8_GPTQ): one weight row chunk
 * (<= FP_KC values) at a time is dequantized to f32 on the stack with the
 * format's scales applied, then multiplied by every activation row of the
 * chunk with fp32 FMAs.
 *
 * Activation rows are f32 (for FP8 formats, the format's act_quantize has
 * already rounded them through e4m3 and back, as the reference does).
 *
 * Fixed order: 16 lanes, lane l sums k = l, l + 16, ... in increasing k
 * (the tail zero-padded), then one fixed reduction tree; chunk boundaries
 * depend on K only. A result depends on its weight and input rows only.
 */
#ifndef MOE_GEMV_FP_H
#define MOE_GEMV_FP_H

#include "cpu-formats.h"
#include "../quant/quant.h"

#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define FP_AVX512 1
#endif

enum { FP_KC = 4096, FP_XG = 16 };

/* Dequantizes weight row r, values [k0, k0 + kc) into out (kc floats).
 * k0 is a multiple of FP_KC. */
typedef void (*fp_unpack_fn)(const moe__wmat *w, int64_t r, int64_t k0, int64_t kc, float *out);

static inline size_t fp_act_row_bytes(int64_t cols) { return (size_t)cols * sizeof(float); }

static inline void fp_gemm(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                           size_t xq_stride, int64_t n_x, float *y, int64_t y_stride,
                           fp_unpack_fn unpack) {
    _Alignas(64) float wf[FP_KC];
    const int64_t K = w->cols;
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t i0 = 0; i0 < n_x; i0 += FP_XG) {
            const int64_t nx = n_x - i0 < FP_XG ? n_x - i0 : FP_XG;
#if FP_AVX512
            __m512 acc[FP_XG];
            for (int64_t i = 0; i < nx; i++) acc[i] = _mm512_setzero_ps();
#else
            float acc[FP_XG][16];
            memset(acc, 0, sizeof acc);
#endif
            for (int64_t k0 = 0; k0 < K; k0 += FP_KC) {
                const int64_t kc = K - k0 < FP_KC ? K - k0 : FP_KC, kcp = (kc + 15) / 16 * 16;
                unpack(w, r, k0, kc, wf);
                for (int64_t k = kc; k < kcp; k++) wf[k] = 0;
                for (int64_t i = 0; i < nx; i++) {
                    const float *x = (const float *)((const char *)xq +
                                                     (size_t)(i0 + i) * xq_stride) + k0; // (kc)
#if FP_AVX512
                    __m512 a = acc[i];
                    int64_t k = 0;
                    for (; k + 16 <= kc; k += 16)
                        a = _mm512_fmadd_ps(_mm512_load_ps(wf + k), _mm512_loadu_ps(x + k), a);
                    if (k < kc) {
                        __mmask16 m = (__mmask16)((1u << (kc - k)) - 1);
                        a = _mm512_fmadd_ps(_mm512_load_ps(wf + k),
                                            _mm512_maskz_loadu_ps(m, x + k), a);
                    }
                    acc[i] = a;
#else
                    for (int64_t k = 0; k < kcp; k += 16)
                        for (int l = 0; l < 16; l++)
                            acc[i][l] += wf[k + l] * (k + l < kc ? x[k + l] : 0.0f);
#endif
                }
            }
            for (int64_t i = 0; i < nx; i++) {
#if FP_AVX512
                float v = _mm512_reduce_add_ps(acc[i]);
#else
                float t[8];
                for (int l = 0; l < 8; l++) t[l] = acc[i][l] + acc[i][l + 8];
                for (int l = 0; l < 4; l++) t[l] += t[l + 4];
                float v = (t[0] + t[2]) + (t[1] + t[3]);
#endif
                y[(i0 + i) * y_stride + (r - r0)] = v;
            }
        }
    }
}

#endif /* MOE_GEMV_FP_H */
