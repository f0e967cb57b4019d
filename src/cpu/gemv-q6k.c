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

#include <math.h>

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
 * (bs = the q8_K sums of 16, |bs| < 2^15). Per block and activation row,
 * with T = isum - 32 * msum summed over the lanes (an exact integer below
 * 2^31; the conversion to fp32 is the first rounding):
 *     acc = (T * d) * dx + acc                        (fma)
 * blocks in increasing k, so a result depends on its two rows only. Up to
 * 4 activation rows share each decoded block. Bound experts run the packed
 * layout below with the same steps and bits.
 */
#if Q8_AVX512
typedef struct q6k_wb {
    __m512i u[4];     /* q (0..63) of values 64c .. 64c + 63                          */
    __m512i s01, s23; /* int16 scales matching packs(dot0, dot1), packs(dot2, dot3)     */
    __m512i sc32;     /* sc[0..15] as int16 in the low half of 32-bit lanes           */
    float   d;
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
    o->d    = _cvtsh_ss(b->d);
}

/* acc + the decoded block o against block b of activation row a: the
 * block's exact integer sum T = sum_s sc[s] * (sum(q * qa) - 32 * bs[s]),
 * then acc + (T * d) * dx (fma), the step both layouts take. */
static inline __attribute__((always_inline)) float q6k_block(const q6k_wb *o, const q8_act *a,
                                                             int64_t b, float acc) {
    const __m512i is = moe__cpu_kquant_isum(o->u, o->s01, o->s23, a->qa + 256 * b);
    const __m512i ms = _mm512_madd_epi16(_mm512_loadu_si512(a->as + 16 * b), o->sc32);
    const int32_t t  = _mm512_reduce_add_epi32(_mm512_sub_epi32(is, _mm512_slli_epi32(ms, 5)));
    return fmaf((float)t * o->d, a->ad[16 * b], acc);
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
    float acc[2][4];
#pragma GCC unroll 2
    for (int w = 0; w < NW; w++)
#pragma GCC unroll 4
        for (int i = 0; i < NP; i++) acc[w][i] = 0;
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
        for (int i = 0; i < NP; i++) y[w][i * y_stride] = acc[w][i];
}

/* ===== The packed layout (bound experts: pack, gemm_packed) =====
 *
 * As Q4_K's (gemv-q4k.c): 16 weight rows in the 16 dword lanes, so that a
 * block's scales and fp32 steps are paid once per 16 rows and the 6-bit
 * values are assembled without a shuffle. Rows go in groups of 16 (the
 * last one padded with zero rows), a group one contiguous stream over K of
 * Q6KP_REC-byte records, one per block of 256:
 *   int8  sc[16][16]       row r's scale s at [s][r]
 *   uint8 q[16][3][16][4]  for half h and i = 0..7, at [8h + i]: row r's
 *                          ql bytes 64h + 4i .. + 3 (A), 64h + 32 + 4i ..
 *                          + 3 (B) and qh bytes 32h + 4i .. + 3 (Q), at
 *                          [0..2][r]: the order the kernel reads them
 *   f16   d[16]
 * (the checkpoint's 16 x 210 bytes, reordered). Every cache line is first
 * touched in address order: with ql and qh in two regions of the record,
 * read in turn, one core streamed a third of the plain read from memory,
 * and with the scales after the values (read between them) 0.86-0.96 of
 * it, against 0.96-1.03 so. A, B and Q give values 128h + 32v + 4i .. + 3
 * (v = 0..3; sub-block 8h + 2v + i / 4):
 *   v0 = A & 15 | (Q << 4) & 48    v1 = B & 15 | (Q << 2) & 48
 *   v2 = A >> 4 | Q & 48           v3 = B >> 4 | (Q >> 2) & 48
 * Each sub-block's vpdpbusd chain starts at -32 bs[s], is multiplied by
 * sc[s] and added to the block's exact T, then q6k_block's fp32 step. */
enum { Q6KP_ROWS = MOE_CPU_GROUP_ROWS, Q6KP_REC = Q6KP_ROWS * (int)sizeof(moe_block_q6_k) };
enum { Q6KP_SC = 0, Q6KP_Q = 256, Q6KP_D = Q6KP_Q + 16 * 3 * 64 };
_Static_assert(Q6KP_D + 32 == Q6KP_REC, "q6_k packed record");

static size_t q6k_packed_bytes(const moe__wmat *w) {
    const int64_t groups = (w->rows + Q6KP_ROWS - 1) / Q6KP_ROWS, nb = w->cols / MOE_QK_K;
    return (size_t)(groups * nb) * Q6KP_REC;
}

static void q6k_pack(const moe__wmat *w, void *dst) {
    const int64_t nb = w->cols / MOE_QK_K, groups = (w->rows + Q6KP_ROWS - 1) / Q6KP_ROWS;
    for (int64_t g = 0; g < groups; g++)
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *rec = (uint8_t *)dst + (size_t)(g * nb + b) * Q6KP_REC;
            for (int r = 0; r < Q6KP_ROWS; r++) {
                moe_block_q6_k q;
                moe__cpu_group_src_block(w, g, r, b, nb, sizeof q, &q);
                for (int h = 0; h < 2; h++)
                    for (int i = 0; i < 8; i++) {
                        uint8_t *t = rec + Q6KP_Q + 192 * (8 * h + i) + 4 * r;
                        memcpy(t, q.ql + 64 * h + 4 * i, 4);
                        memcpy(t + 64, q.ql + 64 * h + 32 + 4 * i, 4);
                        memcpy(t + 128, q.qh + 32 * h + 4 * i, 4);
                    }
                for (int j = 0; j < 16; j++) rec[Q6KP_SC + 16 * j + r] = (uint8_t)q.scales[j];
                memcpy(rec + Q6KP_D + 2 * r, &q.d, 2);
            }
        }
}

/* The 16 rows of the group at g (nb records) against NP activation rows
 * (q8.h layout, at xr, xq_stride apart): out[i] lane r = row r, input i. */
static inline __attribute__((always_inline)) void q6kp_group(const uint8_t *g, int64_t nb,
                                                             int64_t K, const char *xr,
                                                             size_t xq_stride, __m512 out[2],
                                                             int NP) {
    const __m512i m4 = _mm512_set1_epi8(15), m48 = _mm512_set1_epi8(48);
    const bool    pf = moe__cpu_plan.pf_groups;
    q8_act        a[2];
#pragma GCC unroll 2
    for (int i = 0; i < NP; i++) {
        a[i]   = q8_act_view(xr + (size_t)i * xq_stride, K);
        out[i] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *rec = g + (size_t)b * Q6KP_REC;
        if (pf) moe__cpu_prefetch(rec, Q6KP_REC);
        __m512i t[2] = { _mm512_setzero_si512(), _mm512_setzero_si512() };
        for (int h = 0; h < 2; h++)
            for (int iq = 0; iq < 2; iq++) { /* sub-blocks 8h + iq + {0, 2, 4, 6} */
                __m512i acc[2][4];
#pragma GCC unroll 2
                for (int i = 0; i < NP; i++)
#pragma GCC unroll 4
                    for (int v = 0; v < 4; v++)
                        acc[i][v] = _mm512_set1_epi32(-32 * a[i].as[16 * b + 8 * h + iq + 2 * v]);
#pragma GCC unroll 4
                for (int ii = 0; ii < 4; ii++) {
                    const int     l = 4 * iq + ii;
                    const uint8_t *t = rec + Q6KP_Q + 192 * (8 * h + l);
                    const __m512i  A = _mm512_loadu_si512(t), B = _mm512_loadu_si512(t + 64);
                    const __m512i  Q = _mm512_loadu_si512(t + 128);
                    /* (x & 15) | y: ternary logic 0xea is A & B | C */
                    const __m512i v[4] = {
                        _mm512_ternarylogic_epi32(A, m4, _mm512_and_si512(_mm512_slli_epi16(Q, 4), m48), 0xea),
                        _mm512_ternarylogic_epi32(B, m4, _mm512_and_si512(_mm512_slli_epi16(Q, 2), m48), 0xea),
                        _mm512_ternarylogic_epi32(_mm512_srli_epi16(A, 4), m4, _mm512_and_si512(Q, m48), 0xea),
                        _mm512_ternarylogic_epi32(_mm512_srli_epi16(B, 4), m4,
                                                  _mm512_and_si512(_mm512_srli_epi16(Q, 2), m48), 0xea) };
#pragma GCC unroll 2
                    for (int i = 0; i < NP; i++)
#pragma GCC unroll 4
                        for (int vv = 0; vv < 4; vv++)
                            acc[i][vv] = _mm512_dpbusd_epi32(
                                acc[i][vv], v[vv], moe__cpu_bcast4(a[i].qa + 256 * b + 128 * h + 32 * vv + 4 * l));
                }
#pragma GCC unroll 4
                for (int vv = 0; vv < 4; vv++) {
                    const __m512i sc = _mm512_cvtepi8_epi32(
                        _mm_loadu_si128((const __m128i *)(rec + Q6KP_SC + 16 * (8 * h + iq + 2 * vv))));
#pragma GCC unroll 2
                    for (int i = 0; i < NP; i++)
                        t[i] = _mm512_add_epi32(t[i], _mm512_mullo_epi32(acc[i][vv], sc));
                }
            }
        const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(rec + Q6KP_D)));
#pragma GCC unroll 2
        for (int i = 0; i < NP; i++)
            out[i] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(t[i]), d),
                                     _mm512_set1_ps(a[i].ad[16 * b]), out[i]);
    }
}

static void gemm_q6_k_packed(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                             size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    const int64_t  K = w->cols, nb = K / MOE_QK_K;
    const uint8_t *base = w->data;
    /* Chunks of activation rows outermost (MOE_CPU_X_CHUNK), then groups,
     * then passes of 2 and 1 rows (the same operations per output). */
    for (int64_t c = 0; c < n_x; c += MOE_CPU_X_CHUNK) {
        const int64_t c1 = n_x - c < MOE_CPU_X_CHUNK ? n_x : c + MOE_CPU_X_CHUNK;
        for (int64_t g = r0 / Q6KP_ROWS; g * Q6KP_ROWS < r1; g++) {
            const uint8_t *gp = base + (size_t)(g * nb) * Q6KP_REC;
            for (int64_t i = c; i < c1;) {
                const int   np = c1 - i >= 2 ? 2 : 1;
                const char *xr = (const char *)xq + (size_t)i * xq_stride;
                __m512      out[2];
                if (np == 2) q6kp_group(gp, nb, K, xr, xq_stride, out, 2);
                else q6kp_group(gp, nb, K, xr, xq_stride, out, 1);
                for (int p = 0; p < np; p++)
                    moe__cpu_group_store(out[p], g, r0, r1, y + (i + p) * y_stride);
                i += np;
            }
        }
    }
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

const moe__cpu_format moe__cpu_q6_k = {
    .act_row_bytes = q8_act_row_bytes, .act_quantize = act_q8_k, .gemm = gemm_q6_k,
#if Q8_AVX512
    .packed_bytes = q6k_packed_bytes, .pack = q6k_pack, .gemm_packed = gemm_q6_k_packed,
#endif
};
