/*
 * gemv-q6k.c - CPU kernel of Q6_K (GGUF) with q8_K activations, as
 * llama.cpp runs it: activations quantized to q8_K (blocks of 256, f32
 * scale; quant.h's moe__quantize_row_q8_k, which the reference emulates) in
 * gemv-q8.h's row layout (its per-16 sums are q8_K's bsums). AVX-512 runs a
 * fused kernel (below: blocks decoded in registers, integer sums); portable
 * builds run gemv-q8.h's engine on weight rows unpacked into the 6-bit
 * values q (stored u = q, off = 32: w = d * sc * (q - 32)) and per-16
 * scales d * sc. */
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

/* ===== Unpacker (portable builds) ===== */

#if !Q8_AVX512
static void unpack_q6_k(const moe__wmat *w, int64_t r, int64_t k0, int64_t kc, uint8_t *wu,
                        float *wd, float *wc) {
    const moe_block_q6_k *b = (const moe_block_q6_k *)w->data + (r * w->cols + k0) / MOE_QK_K;
    for (int64_t i = 0; i < kc / MOE_QK_K; i++) {
        moe__cpu_prefetch(&b[i], sizeof b[i]);
        const float d = moe__cpu_half_to_f32(b[i].d);
        for (int g = 0; g < 16; g++) {
            wd[16 * i + g] = d * (float)b[i].scales[g];
            wc[16 * i + g] = 32.0f * wd[16 * i + g];
        }
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = b[i].ql + 64 * h, *qh = b[i].qh + 32 * h;
            uint8_t *o = wu + 256 * i + 128 * h;
            for (int l = 0; l < 32; l++) {
                o[l]      = (uint8_t)((ql[l] & 15) | ((qh[l] >> 0) & 3) << 4);
                o[l + 32] = (uint8_t)((ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4);
                o[l + 64] = (uint8_t)((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4);
                o[l + 96] = (uint8_t)((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4);
            }
        }
    }
}
#endif

/* ===== Fused AVX-512 kernel =====
 *
 * The block is decoded in registers (never stored) and kept in integers:
 * vpdpbusd gives partial sums of 4 products q * qa (|.| <= 4 * 63 * 127,
 * so int16 holds them), which are packed to int16 and multiplied by the
 * signed sub-block scales with vpmaddwd; vpmaddwd also forms sc[s] * bs[s]
 * (bs = the q8_K sums of 16, |bs| < 2^15). Per block and activation row:
 *     acc += (d * dx) * float(isum - 32 * msum)     (16 int32 lanes)
 * Lane sums are exact integers below 2^31 (the conversion to fp32 is the
 * first rounding), so a result depends on its two rows only; one fixed
 * reduction tree at the end of the row. Up to 4 activation rows share each
 * decoded block.
 */
#if Q8_AVX512
typedef struct q6k_wb {
    __m512i u[4];     /* q (0..63) of values 64c .. 64c + 63                          */
    __m512i s01, s23; /* int16 scales matching packs(dot0, dot1), packs(dot2, dot3)     */
    __m512i sc32;     /* sc[0..15] as int16 in the low half of 32-bit lanes           */
    __m512  d;        /* d, broadcast                                                 */
} q6k_wb;

/* int16 element e of 128-bit lane L of packs(dA, dB) belongs to sub-block
 * a + L (e < 4, from dA) or a + 4 + L (from dB), a = 0 or 8. */
#define Q6K_LANE(a, L) (a) + (L), (a) + (L), (a) + (L), (a) + (L), \
                       (a) + 4 + (L), (a) + 4 + (L), (a) + 4 + (L), (a) + 4 + (L)
static const _Alignas(64) int16_t q6k_sidx[2][32] = {
    { Q6K_LANE(0, 0), Q6K_LANE(0, 1), Q6K_LANE(0, 2), Q6K_LANE(0, 3) },
    { Q6K_LANE(8, 0), Q6K_LANE(8, 1), Q6K_LANE(8, 2), Q6K_LANE(8, 3) },
};
#undef Q6K_LANE

static inline __attribute__((always_inline)) void q6k_decode(const moe_block_q6_k *b,
                                                              q6k_wb *o) {
    const __m512i m4 = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
    /* qh bits to bit 4..5: (b << 4, b << 2) for values l, l + 32 and
     * (b, b >> 2) for l + 64, l + 96 (16-bit shifts; the mask drops what
     * crosses from the neighbouring byte). */
    const __m512i cl = _mm512_mask_set1_epi16(_mm512_set1_epi16(4), 0xffff0000u, 2);
    const __m512i cr = _mm512_maskz_set1_epi16(0xffff0000u, 2);
    for (int h = 0; h < 2; h++) {
        const __m512i l  = _mm512_loadu_si512(b->ql + 64 * h);
        const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b->qh + 32 * h)));
        const __m512i hl = _mm512_and_si512(_mm512_sllv_epi16(qh, cl), m30);
        const __m512i hh = _mm512_and_si512(_mm512_srlv_epi16(qh, cr), m30);
        o->u[2 * h]     = _mm512_ternarylogic_epi32(l, m4, hl, 0xea); /* (l & 15) | hl */
        o->u[2 * h + 1] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(l, 4), m4, hh, 0xea);
    }
    const __m128i sc = _mm_loadu_si128((const __m128i *)b->scales);
    const __m512i s16 = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(sc));
    o->s01  = _mm512_permutexvar_epi16(_mm512_load_si512(q6k_sidx[0]), s16);
    o->s23  = _mm512_permutexvar_epi16(_mm512_load_si512(q6k_sidx[1]), s16);
    /* sc in the low 16 bits, zero above: vpmaddwd then adds nothing for
     * the high half of each bs (its sign extension). */
    o->sc32 = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(s16));
    o->d    = _mm512_set1_ps(_cvtsh_ss(b->d));
}

/* acc + the decoded block o against block b of activation row a. */
static inline __attribute__((always_inline)) __m512 q6k_block(const q6k_wb *o, const q8_act *a,
                                                              int64_t b, __m512 acc) {
    const __m512i is = moe__cpu_kquant_isum(o->u, o->s01, o->s23, a->qa + 256 * b);
    const __m512i ms = _mm512_madd_epi16(_mm512_loadu_si512(a->as + 16 * b), o->sc32);
    const __m512i t  = _mm512_sub_epi32(is, _mm512_slli_epi32(ms, 5));
    return _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(t), o->d),
                           _mm512_set1_ps(a->ad[16 * b]), acc);
}

/* NW weight rows (w0, and w1 when NW = 2; nb blocks each) against NP
 * activation rows (q8.h layout, at xr, xq_stride apart): y0[i * y_stride]
 * (and y1[...]). Two weight rows share each activation block's loads, as in
 * gemv-q4k.c. */
static inline __attribute__((always_inline)) void q6k_rows(const moe_block_q6_k *w0,
                                                           const moe_block_q6_k *w1, int NW,
                                                           int64_t nb, int64_t K, const char *xr,
                                                           size_t xq_stride, float *y0, float *y1,
                                                           int64_t y_stride, int NP) {
    const moe_block_q6_k *blk[2] = { w0, w1 };
    float *y[2] = { y0, y1 };
    __m512 acc[2][4];
#pragma GCC unroll 2
    for (int w = 0; w < NW; w++)
#pragma GCC unroll 4
        for (int i = 0; i < NP; i++) acc[w][i] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        q6k_wb o[2];
#pragma GCC unroll 2
        for (int w = 0; w < NW; w++) {
            moe__cpu_prefetch(&blk[w][b], sizeof blk[w][b]);
            q6k_decode(&blk[w][b], &o[w]);
        }
#pragma GCC unroll 4
        for (int i = 0; i < NP; i++) {
            const q8_act a = q8_act_view(xr + (size_t)i * xq_stride, K);
#pragma GCC unroll 2
            for (int w = 0; w < NW; w++) acc[w][i] = q6k_block(&o[w], &a, b, acc[w][i]);
        }
    }
#pragma GCC unroll 2
    for (int w = 0; w < NW; w++)
#pragma GCC unroll 4
        for (int i = 0; i < NP; i++) y[w][i * y_stride] = _mm512_reduce_add_ps(acc[w][i]);
}

static void gemm_q6_k(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq, size_t xq_stride,
                      int64_t n_x, float *y, int64_t y_stride) {
    const int64_t K = w->cols, nb = K / MOE_QK_K;
    const int64_t seg = moe__cpu_stream_seg(r0, r1);
    const moe_block_q6_k *rows = (const moe_block_q6_k *)w->data; // (rows, nb)
    if (n_x == 1) { /* weight rows in pairs */
        for (int64_t t = 0, ra, rb; moe__cpu_stream_pair(r0, r1, seg, &t, &ra, &rb);) {
            if (rb < r1)
                q6k_rows(rows + ra * nb, rows + rb * nb, 2, nb, K, xq, 0, y + (ra - r0),
                         y + (rb - r0), 0, 1);
            else
                q6k_rows(rows + ra * nb, NULL, 1, nb, K, xq, 0, y + (ra - r0), NULL, 0, 1);
        }
        return;
    }
    /* Chunks of activation rows outermost (MOE_CPU_X_CHUNK), in passes of
     * up to 4 rows each. */
    for (int64_t c = 0; c < n_x; c += MOE_CPU_X_CHUNK) {
        const int64_t c1 = n_x - c < MOE_CPU_X_CHUNK ? n_x : c + MOE_CPU_X_CHUNK;
        for (int64_t step = 0; step < seg * moe__cpu_plan.streams; step++) {
            const int64_t r = moe__cpu_stream_row(r0, seg, step);
            if (r >= r1) continue;
            const moe_block_q6_k *blk = rows + r * nb; // (nb)
            for (int64_t i = c; i < c1;) {
                const int64_t left = c1 - i;
                const int     np   = left >= 4 ? 4 : left >= 2 ? 2 : 1;
                const char   *xr   = (const char *)xq + (size_t)i * xq_stride;
                float        *yr   = y + i * y_stride + (r - r0);
                if (np == 4)
                    q6k_rows(blk, NULL, 1, nb, K, xr, xq_stride, yr, NULL, y_stride, 4);
                else if (np == 2)
                    q6k_rows(blk, NULL, 1, nb, K, xr, xq_stride, yr, NULL, y_stride, 2);
                else
                    q6k_rows(blk, NULL, 1, nb, K, xr, xq_stride, yr, NULL, y_stride, 1);
                i += np;
            }
        }
    }
}
#else
/* ===== Portable: gemv-q8.h's engine ===== */

static void gemm_q6_k(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq, size_t xq_stride,
                      int64_t n_x, float *y, int64_t y_stride) {
    q8_gemm(w, r0, r1, xq, xq_stride, n_x, y, y_stride, unpack_q6_k);
}
#endif

/* ===== Table entry ===== */

const moe__cpu_format moe__cpu_q6_k = { .act_row_bytes = q8_act_row_bytes,
                                        .act_quantize = act_q8_k, .gemm = gemm_q6_k };
