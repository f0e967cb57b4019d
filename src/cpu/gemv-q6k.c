/*
 * gemv-q6k.c - CPU kernel of Q6_K (GGUF) on the int8 path of gemv-q8.h, as
 * llama.cpp runs it: activations quantized to q8_K (blocks of 256, f32
 * scale; quant.h's moe__quantize_row_q8_k, which the reference emulates),
 * weight blocks unpacked a row chunk at a time into the 6-bit values q
 * (stored u = q, off = 32: w = d * sc * (q - 32)) and per-16 scales d * sc.
 */
#include "gemv-q8.h"

#if Q8_AVX512
#include <immintrin.h>
#endif

/* ===== Activations ===== */

static void act_q8_k(const moe__wmat *w, const float *x, int64_t cols, void *xq) {
    (void)w;
    int64_t kp = q8_kp(cols);
    int8_t *qa = xq;
    float  *ad = (float *)((char *)xq + kp);
    for (int64_t b = 0; b < cols / MOE_QK_K; b++) {
        moe_block_q8_k blk;
        moe__quantize_row_q8_k(x + b * MOE_QK_K, &blk, MOE_QK_K);
        memcpy(qa + b * MOE_QK_K, blk.qs, MOE_QK_K);
        for (int g = 0; g < 16; g++) ad[16 * b + g] = blk.d;
    }
    q8_act_finish(xq, cols);
}

/* ===== Unpacker ===== */

static void unpack_q6_k(const moe__wmat *w, int64_t r, int64_t k0, int64_t kc, uint8_t *wu,
                        float *wd, float *wc) {
    const moe_block_q6_k *b = (const moe_block_q6_k *)w->data + (r * w->cols + k0) / MOE_QK_K;
    for (int64_t i = 0; i < kc / MOE_QK_K; i++) {
        const float d = moe__cpu_half_to_f32(b[i].d);
#if Q8_AVX512
        __m512 sd = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                      _mm_loadu_si128((const __m128i *)b[i].scales))),
                                  _mm512_set1_ps(d));
        _mm512_storeu_ps(wd + 16 * i, sd);
        _mm512_storeu_ps(wc + 16 * i, _mm512_mul_ps(sd, _mm512_set1_ps(32.0f)));
#else
        for (int g = 0; g < 16; g++) {
            wd[16 * i + g] = d * (float)b[i].scales[g];
            wc[16 * i + g] = 32.0f * wd[16 * i + g];
        }
#endif
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = b[i].ql + 64 * h, *qh = b[i].qh + 32 * h;
            uint8_t *o = wu + 256 * i + 128 * h;
#if Q8_AVX512
            const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(3 << 4);
            __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
            __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            __m256i hb = _mm256_loadu_si256((const __m256i *)qh);
            /* (qh >> 2j) & 3, placed at bits 4..5: ((qh << 4) >> 2j) & 0x30. */
            __m256i h0 = _mm256_and_si256(_mm256_slli_epi16(hb, 4), m2);
            __m256i h1 = _mm256_and_si256(_mm256_slli_epi16(hb, 2), m2);
            __m256i h2 = _mm256_and_si256(hb, m2);
            __m256i h3 = _mm256_and_si256(_mm256_srli_epi16(hb, 2), m2);
            _mm256_store_si256((__m256i *)o, _mm256_or_si256(_mm256_and_si256(l0, m4), h0));
            _mm256_store_si256((__m256i *)(o + 32), _mm256_or_si256(_mm256_and_si256(l1, m4), h1));
            _mm256_store_si256((__m256i *)(o + 64),
                               _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), h2));
            _mm256_store_si256((__m256i *)(o + 96),
                               _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), h3));
#else
            for (int l = 0; l < 32; l++) {
                o[l]      = (uint8_t)((ql[l] & 15) | ((qh[l] >> 0) & 3) << 4);
                o[l + 32] = (uint8_t)((ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4);
                o[l + 64] = (uint8_t)((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4);
                o[l + 96] = (uint8_t)((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4);
            }
#endif
        }
    }
}

/* ===== Table entry ===== */

static void gemm_q6_k(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq, size_t xq_stride,
                      int64_t n_x, float *y, int64_t y_stride) {
    q8_gemm(w, r0, r1, xq, xq_stride, n_x, y, y_stride, unpack_q6_k);
}

const moe__cpu_format moe__cpu_q6_k = { q8_act_row_bytes, act_q8_k, gemm_q6_k };
