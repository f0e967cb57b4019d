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
 * AVX-512 keeps the whole block in integers: the four vpdpbusd results
 * (partials of 4 products, |.| <= 4 * 15 * 127, so int16 holds them) are
 * packed to int16 and vpmaddwd multiplies them by the 6-bit scales, and
 * vpmaddwd also forms m[s] * bs[s] (|bs| < 2^15); both are summed to the
 * block's exact isum and msum, and the block costs three fp32 operations
 * per row and activation row (q4k_step):
 *     acc += dx * (d * isum - dmin * msum)
 * The scales are decoded with vector byte operations, the weight rows are
 * streamed as cpu-formats.h says (moe__cpu_stream_row order,
 * moe__cpu_prefetch), and up to 8 activation rows share each decoded
 * block. Bound experts run the packed layout below (16 rows a register),
 * with the same steps and bits.
 *
 * Activation row (act_row_bytes), cols a multiple of 256:
 *   int8  qa[cols]       q8_K values (quant.h's moe__quantize_row_q8_k),
 *                        each 128 stored as values 0..31, 64..95, 32..63,
 *                        96..127
 *   float dx[cols/256]   q8_K scale per block
 *   int32 bs[cols/32]    sum of qa over each sub-block (natural order)
 *
 * Order: per row, blocks in increasing k (the integer sums are exact, so
 * only the fp32 steps above count). The portable path sums per sub-block
 * in fp32 (each build has one kernel; it has no packed layout).
 */
#include "cpu-formats.h"
#include "../quant/quant.h"

#include <math.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__F16C__)
#include <immintrin.h>
#define Q4K_AVX512 1
#endif

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
        moe_block_q8_k blk;
        moe__quantize_row_q8_k(x + b * MOE_QK_K, &blk, MOE_QK_K);
        dx[b] = blk.d;
        for (int e = 0; e < MOE_QK_K; e += 32) /* 32 values keep their order */
            memcpy(qa + b * 256 + e / 128 * 128 + q4k_perm(e % 128), blk.qs + e, 32);
        for (int s = 0; s < 8; s++) bs[b * 8 + s] = blk.bsums[2 * s] + blk.bsums[2 * s + 1];
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
/* The block's 6-bit scales and mins, decoded in one xmm: bytes 0..7 are
 * sc[0..7], bytes 8..15 m[0..7] (q4k_scales' arithmetic, 16 lanes). The
 * load reads 4 bytes of qs past the 12 scale bytes (inside the block). */
static inline __m128i q4k_scales_v(const moe_block_q4_k *q) {
    const __m128i v   = _mm_loadu_si128((const __m128i *)q->scales);
    const __m128i m4  = _mm_set1_epi8(15);
    const __m128i s1  = _mm_and_si128(v, _mm_set1_epi8(63));
    const __m128i lo  = _mm_and_si128(v, m4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
    const __m128i top = _mm_srli_epi16(_mm_and_si128(v, _mm_set1_epi8((char)0xc0)), 2);
    const __m128i s2  = _mm_or_si128(_mm_unpackhi_epi32(lo, hi), top);
    return _mm_unpacklo_epi32(s1, s2);
}

/* The fp32 steps of one block, the same in both layouts (the packed kernel
 * runs them on 16 rows' lanes): t = d * isum - dmin * msum with one
 * rounding after the product, then acc + t * dx. */
static inline float q4k_step(float isum, float d, float msum, float dmin, float dx, float acc) {
    return fmaf(fmaf(-msum, dmin, isum * d), dx, acc);
}

/* One weight block, decoded once for every activation row of a pass. */
typedef struct q4k_wb {
    __m512i w[4];     /* nibbles: (sb 0 | sb 2), (1 | 3), (4 | 6), (5 | 7)           */
    __m512i s01, s23; /* int16 scales matching packs(dot0, dot1), packs(dot2, dot3)     */
    __m256i m32;      /* m[0..7] zero-extended to int32 (vpmaddwd: high half adds 0)    */
    float   d, dmin;
} q4k_wb;

static inline __attribute__((always_inline)) void q4k_decode(const moe_block_q4_k *q,
                                                              __m512i c01, __m512i c23,
                                                              q4k_wb *o) {
    const __m512i m4 = _mm512_set1_epi8(15);
    const __m512i v0 = _mm512_loadu_si512(q->qs), v1 = _mm512_loadu_si512(q->qs + 64);
    o->w[0] = _mm512_and_si512(v0, m4);
    o->w[1] = _mm512_and_si512(_mm512_srli_epi16(v0, 4), m4);
    o->w[2] = _mm512_and_si512(v1, m4);
    o->w[3] = _mm512_and_si512(_mm512_srli_epi16(v1, 4), m4);
    const __m128i sm = q4k_scales_v(q);
    const __m512i b  = _mm512_broadcast_i32x4(sm);
    o->s01 = _mm512_shuffle_epi8(b, c01);
    o->s23 = _mm512_shuffle_epi8(b, c23);
    o->m32 = _mm256_cvtepu8_epi32(_mm_srli_si128(sm, 8));
    o->d    = moe__cpu_half_to_f32(q->d);
    o->dmin = moe__cpu_half_to_f32(q->dmin);
}

/* acc + dx * (d * isum - dmin * msum) for one activation block (a: 256
 * bytes, bs: 8 sums), with isum = sum_s sc[s] sum(q * qa) and msum = sum_s
 * m[s] bs[s] exact integers (|partial| <= 4 * 15 * 127 fits the int16
 * packing). */
static inline __attribute__((always_inline)) float q4k_block(const q4k_wb *o, const int8_t *a,
                                                             const int32_t *bs, float dx,
                                                             float acc) {
    const __m512i is = moe__cpu_kquant_isum(o->w, o->s01, o->s23, a);
    const __m256i mi = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)bs), o->m32);
    /* is folded to 8 lanes beside mi's 8, then each 128-bit lane summed and
     * the lane pairs added: isum in dword 0, msum in dword 8. */
    __m512i v = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_add_epi32(_mm512_castsi512_si256(is),
                                                _mm512_extracti64x4_epi64(is, 1))), mi, 1);
    v = _mm512_add_epi32(v, _mm512_shuffle_epi32(v, _MM_PERM_BADC));
    v = _mm512_add_epi32(v, _mm512_shuffle_epi32(v, _MM_PERM_CDAB));
    v = _mm512_add_epi32(v, _mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
    const int32_t isum = _mm_cvtsi128_si32(_mm512_castsi512_si128(v));
    const int32_t msum = _mm_cvtsi128_si32(_mm512_extracti32x4_epi32(v, 2));
    return q4k_step((float)isum, o->d, (float)msum, o->dmin, dx, acc);
}

/* Byte shuffles from the decoded scales (q4k_scales_v) to the int16
 * scales of packs(dA, dB): int16 element e of 128-bit lane L is the scale
 * of sub-block 4h + (L >= 2 ? 2 : 0) + (e >= 4) (e < 4 come from dA, whose
 * lanes 0..7 / 8..15 hold sub-blocks a / a + 2); the high byte is zeroed. */
#define Q4K_E(s) (s), -128
#define Q4K_LANE(s) Q4K_E(s), Q4K_E(s), Q4K_E(s), Q4K_E(s), \
                    Q4K_E((s) + 1), Q4K_E((s) + 1), Q4K_E((s) + 1), Q4K_E((s) + 1)
static const _Alignas(64) int8_t q4k_ctl[2][64] = {
    { Q4K_LANE(0), Q4K_LANE(0), Q4K_LANE(2), Q4K_LANE(2) },
    { Q4K_LANE(4), Q4K_LANE(4), Q4K_LANE(6), Q4K_LANE(6) },
};
#undef Q4K_LANE
#undef Q4K_E

/* NW weight rows (w0, and w1 when NW = 2) against NP activation rows (at
 * xr, xq_stride apart): y0[i * y_stride] (and y1[...]). Two weight rows
 * share each activation block's loads: at one activation row the steps per
 * weight row weigh on short rows (K = 768: 3 blocks). */
static inline __attribute__((always_inline)) void q4k_rows(const moe_block_q4_k *w0,
                                                           const moe_block_q4_k *w1, int NW,
                                                           int64_t nb, int64_t K, const char *xr,
                                                           size_t xq_stride, float *y0, float *y1,
                                                           int64_t y_stride, int NP) {
    const __m512i c01 = _mm512_load_si512(q4k_ctl[0]), c23 = _mm512_load_si512(q4k_ctl[1]);
    const moe_block_q4_k *blk[2] = { w0, w1 };
    float *y[2] = { y0, y1 };
    float acc[2][8];
#pragma GCC unroll 2
    for (int w = 0; w < NW; w++)
#pragma GCC unroll 8
        for (int i = 0; i < NP; i++) acc[w][i] = 0;
    for (int64_t b = 0; b < nb; b++) {
        q4k_wb o[2];
#pragma GCC unroll 2
        for (int w = 0; w < NW; w++) {
            moe__cpu_prefetch(&blk[w][b], sizeof blk[w][b]);
            q4k_decode(&blk[w][b], c01, c23, &o[w]);
        }
#pragma GCC unroll 8
        for (int i = 0; i < NP; i++) {
            const int8_t  *qa = (const int8_t *)(xr + (size_t)i * xq_stride);
            const float   *dx = (const float *)(qa + K);
            const int32_t *bs = (const int32_t *)(dx + nb);
#pragma GCC unroll 2
            for (int w = 0; w < NW; w++)
                acc[w][i] = q4k_block(&o[w], qa + b * 256, bs + 8 * b, dx[b], acc[w][i]);
        }
    }
#pragma GCC unroll 2
    for (int w = 0; w < NW; w++)
#pragma GCC unroll 8
        for (int i = 0; i < NP; i++) y[w][i * y_stride] = acc[w][i];
}

/* ===== The packed layout (bound experts: pack, gemm_packed) =====
 *
 * At one activation row the kernel above spends about 35 vector operations
 * on a 144-byte block of one weight row (the scales' decode, the int16
 * packing, the reductions): 27 GB/s from L2 on a Zen 5 core, short of what
 * two cores must decode to follow the memory stream. The packed layout puts
 * 16 weight rows in the 16 dword lanes of a register, so that a block's
 * scales, mins and fp32 steps are paid once for 16 rows and a weight byte
 * costs a mask and half a vpdpbusd.
 *
 * Rows go in groups of 16 (the last one padded with zero rows), a group one
 * contiguous stream over K of Q4KP_REC-byte records, one per block of 256:
 *   uint8 sb[12][16]     row r's scale byte j at [j][r]
 *   f16   d[16], dmin[16]
 *   uint8 qs[32][16][4]  row r's qs bytes 4c .. 4c + 3 at [c][r]
 * (the checkpoint's 16 x 144 bytes, reordered; what the kernel reads first
 * comes first, so that the hardware prefetcher sees every line in address
 * order: with the scales after qs, one core read deepseek-v3's W13 shape at
 * 0.75-0.92 of the plain read, 0.98-1.05 so). Chunk c = 8j + i holds in
 * lane r row r's values 64j + 4i .. + 3 (low nibbles, sub-block 2j) and
 * 64j + 32 + 4i .. + 3 (high nibbles, 2j + 1); each meets its 4 activation
 * bytes broadcast. The high nibbles are used in place (x & 0xf0: 16 q), so
 * the low sub-blocks take 16 sc[s] and the block's exact integer sum is
 * 16 isum, scaled by d / 16 (exact): the same fp32 steps (q4k_step) as the
 * checkpoint layout's kernel, so both give the same bits. */
enum { Q4KP_ROWS = MOE_CPU_GROUP_ROWS, Q4KP_REC = Q4KP_ROWS * (int)sizeof(moe_block_q4_k) };
enum { Q4KP_SB = 0, Q4KP_D = Q4KP_SB + 12 * 16, Q4KP_DMIN = Q4KP_D + 32, Q4KP_QS = Q4KP_DMIN + 32 };
_Static_assert(Q4KP_QS + 2048 == Q4KP_REC, "q4_k packed record");

static size_t q4k_packed_bytes(const moe__wmat *w) {
    const int64_t groups = (w->rows + Q4KP_ROWS - 1) / Q4KP_ROWS, nb = w->cols / MOE_QK_K;
    return (size_t)(groups * nb) * Q4KP_REC;
}

static void q4k_pack(const moe__wmat *w, void *dst) {
    const int64_t nb = w->cols / MOE_QK_K, groups = (w->rows + Q4KP_ROWS - 1) / Q4KP_ROWS;
    for (int64_t g = 0; g < groups; g++)
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *rec = (uint8_t *)dst + (size_t)(g * nb + b) * Q4KP_REC;
            for (int r = 0; r < Q4KP_ROWS; r++) {
                moe_block_q4_k q;
                moe__cpu_group_src_block(w, g, r, b, nb, sizeof q, &q);
                for (int c = 0; c < 32; c++) memcpy(rec + Q4KP_QS + 64 * c + 4 * r, q.qs + 4 * c, 4);
                for (int j = 0; j < 12; j++) rec[Q4KP_SB + 16 * j + r] = q.scales[j];
                memcpy(rec + Q4KP_D + 2 * r, &q.d, 2);
                memcpy(rec + Q4KP_DMIN + 2 * r, &q.dmin, 2);
            }
        }
}

/* vpermb indices: dword lane r takes byte 16 q + r (plane q of 4, row r). */
#define Q4KP_L(q, r) (char)(16 * (q) + (r)), 0, 0, 0
#define Q4KP_Q(q) Q4KP_L(q, 0), Q4KP_L(q, 1), Q4KP_L(q, 2), Q4KP_L(q, 3), Q4KP_L(q, 4), \
    Q4KP_L(q, 5), Q4KP_L(q, 6), Q4KP_L(q, 7), Q4KP_L(q, 8), Q4KP_L(q, 9), Q4KP_L(q, 10), \
    Q4KP_L(q, 11), Q4KP_L(q, 12), Q4KP_L(q, 13), Q4KP_L(q, 14), Q4KP_L(q, 15)
static const _Alignas(64) char q4kp_plane[4][64] = { { Q4KP_Q(0) }, { Q4KP_Q(1) }, { Q4KP_Q(2) },
                                                     { Q4KP_Q(3) } };
#undef Q4KP_Q
#undef Q4KP_L

/* Plane s % 4 of v (16 bytes, one per row) zero-extended to 16 int32 lanes. */
static inline __m512i q4kp_lanes(__m512i v, int s) {
    return _mm512_maskz_permutexvar_epi8(0x1111111111111111ull,
                                         _mm512_load_si512(q4kp_plane[s % 4]), v);
}

/* The 16 rows of the group at g (nb records) against NP activation rows
 * (at xr, xq_stride apart): acc[i] lane r = output of row r, input i. */
static inline __attribute__((always_inline)) void q4kp_group(const uint8_t *g, int64_t nb,
                                                             int64_t K, const char *xr,
                                                             size_t xq_stride, __m512 acc[4],
                                                             int NP) {
    const __m512i lo4 = _mm512_set1_epi8(0x0f), hi4 = _mm512_set1_epi8((char)0xf0);
    const __m512i m6 = _mm512_set1_epi8(63), top = _mm512_set1_epi8(0x30);
#pragma GCC unroll 4
    for (int i = 0; i < NP; i++) acc[i] = _mm512_setzero_ps();
    const bool pf = moe__cpu_plan.pf_groups;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *rec = g + (size_t)b * Q4KP_REC;
        if (pf) moe__cpu_prefetch(rec, Q4KP_REC);
        /* q4k_scales on 16 rows: planes 0..3 (p0), 4..7 (p1), 8..11 (p2). */
        const __m512i p0 = _mm512_loadu_si512(rec + Q4KP_SB);
        const __m512i p1 = _mm512_loadu_si512(rec + Q4KP_SB + 64);
        const __m512i p2 = _mm512_loadu_si512(rec + Q4KP_SB + 128);
        const __m512i sc[2] = {
            _mm512_and_si512(p0, m6),
            _mm512_or_si512(_mm512_and_si512(p2, lo4),
                            _mm512_and_si512(_mm512_srli_epi16(p0, 2), top)) };
        const __m512i mn[2] = {
            _mm512_and_si512(p1, m6),
            _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(p2, 4), lo4),
                            _mm512_and_si512(_mm512_srli_epi16(p1, 2), top)) };
        const int8_t *qa[4];
        __m512i       isum[4], msum[4];
#pragma GCC unroll 4
        for (int i = 0; i < NP; i++) {
            qa[i]   = (const int8_t *)(xr + (size_t)i * xq_stride) + b * 256;
            isum[i] = msum[i] = _mm512_setzero_si512();
        }
        for (int j = 0; j < 4; j++) { /* sub-blocks 2j (low nibbles) and 2j + 1 */
            /* stored positions (q4k_perm) of values 64j and 64j + 32 */
            const int     ol = 128 * (j / 2) + 32 * (j % 2), oh = ol + 64;
            __m512i       dl[4], dh[4];
#pragma GCC unroll 4
            for (int i = 0; i < NP; i++) dl[i] = dh[i] = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int c = 0; c < 8; c++) {
                const __m512i x = _mm512_loadu_si512(rec + Q4KP_QS + 64 * (8 * j + c));
                const __m512i l = _mm512_and_si512(x, lo4), h = _mm512_and_si512(x, hi4);
#pragma GCC unroll 4
                for (int i = 0; i < NP; i++) {
                    dl[i] = _mm512_dpbusd_epi32(dl[i], l, moe__cpu_bcast4(qa[i] + ol + 4 * c));
                    dh[i] = _mm512_dpbusd_epi32(dh[i], h, moe__cpu_bcast4(qa[i] + oh + 4 * c));
                }
            }
            const __m512i sl = _mm512_slli_epi32(q4kp_lanes(sc[j / 2], 2 * j), 4);
            const __m512i sh = q4kp_lanes(sc[j / 2], 2 * j + 1);
#pragma GCC unroll 4
            for (int i = 0; i < NP; i++)
                isum[i] = _mm512_add_epi32(isum[i], _mm512_add_epi32(_mm512_mullo_epi32(dl[i], sl),
                                                                     _mm512_mullo_epi32(dh[i], sh)));
        }
#pragma GCC unroll 8
        for (int s = 0; s < 8; s++) {
            const __m512i m = q4kp_lanes(mn[s / 4], s);
#pragma GCC unroll 4
            for (int i = 0; i < NP; i++) {
                const int32_t *bs = (const int32_t *)(xr + (size_t)i * xq_stride + K + 4 * (K / 256));
                msum[i] = _mm512_add_epi32(msum[i], _mm512_mullo_epi32(m, _mm512_set1_epi32(bs[8 * b + s])));
            }
        }
        const __m512 d16 = _mm512_mul_ps(
            _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(rec + Q4KP_D))),
            _mm512_set1_ps(0.0625f));
        const __m512 dmin = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(rec + Q4KP_DMIN)));
#pragma GCC unroll 4
        for (int i = 0; i < NP; i++) { /* q4k_step, 16 rows */
            const float *dx = (const float *)(xr + (size_t)i * xq_stride + K);
            const __m512 t  = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum[i]), dmin,
                                               _mm512_mul_ps(_mm512_cvtepi32_ps(isum[i]), d16));
            acc[i] = _mm512_fmadd_ps(t, _mm512_set1_ps(dx[b]), acc[i]);
        }
    }
}

static void gemm_q4k_packed(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                            size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    const int64_t  K = w->cols, nb = K / MOE_QK_K;
    const uint8_t *base = w->data;
    /* Chunks of activation rows outermost (MOE_CPU_X_CHUNK), then groups,
     * then passes of 4, 2 and 1 rows (the same operations per output). */
    for (int64_t c = 0; c < n_x; c += MOE_CPU_X_CHUNK) {
        const int64_t c1 = n_x - c < MOE_CPU_X_CHUNK ? n_x : c + MOE_CPU_X_CHUNK;
        for (int64_t g = r0 / Q4KP_ROWS; g * Q4KP_ROWS < r1; g++) {
            const uint8_t *gp = base + (size_t)(g * nb) * Q4KP_REC;
            for (int64_t i = c; i < c1;) {
                const int64_t left = c1 - i;
                const int     np   = left >= 4 ? 4 : left >= 2 ? 2 : 1;
                const char   *xr   = (const char *)xq + (size_t)i * xq_stride;
                __m512        acc[4];
                if (np == 4) q4kp_group(gp, nb, K, xr, xq_stride, acc, 4);
                else if (np == 2) q4kp_group(gp, nb, K, xr, xq_stride, acc, 2);
                else q4kp_group(gp, nb, K, xr, xq_stride, acc, 1);
                for (int p = 0; p < np; p++)
                    moe__cpu_group_store(acc[p], g, r0, r1, y + (i + p) * y_stride);
                i += np;
            }
        }
    }
}
#endif

static void gemm_q4k(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq, size_t xq_stride,
                     int64_t n_x, float *y, int64_t y_stride) {
    const int64_t K = w->cols, nb = K / MOE_QK_K;
    const size_t  row_bytes = (size_t)nb * sizeof(moe_block_q4_k);
    const int64_t seg = moe__cpu_stream_seg(r0, r1);
#if Q4K_AVX512
    if (n_x == 1) { /* weight rows in pairs */
        for (int64_t t = 0, ra, rb; moe__cpu_stream_pair(r0, r1, seg, &t, &ra, &rb);) {
            const moe_block_q4_k *wa =
                (const moe_block_q4_k *)((const char *)w->data + (size_t)ra * row_bytes);
            const moe_block_q4_k *wb =
                (const moe_block_q4_k *)((const char *)w->data + (size_t)rb * row_bytes);
            if (rb < r1)
                q4k_rows(wa, wb, 2, nb, K, xq, 0, y + (ra - r0), y + (rb - r0), 0, 1);
            else
                q4k_rows(wa, NULL, 1, nb, K, xq, 0, y + (ra - r0), NULL, 0, 1);
        }
        return;
    }
    /* Chunks of activation rows outermost (MOE_CPU_X_CHUNK). Within a chunk,
     * each weight row meets its rows in passes of 8, 4, 2 and 1, all
     * accumulators in registers (q4k_rows); per output the operations are
     * the same in every pass size. */
    for (int64_t c = 0; c < n_x; c += MOE_CPU_X_CHUNK) {
        const int64_t c1 = n_x - c < MOE_CPU_X_CHUNK ? n_x : c + MOE_CPU_X_CHUNK;
        for (int64_t step = 0; step < seg * moe__cpu_plan.streams; step++) {
            const int64_t r = moe__cpu_stream_row(r0, seg, step);
            if (r >= r1) continue;
            const moe_block_q4_k *blk =
                (const moe_block_q4_k *)((const char *)w->data + (size_t)r * row_bytes);
            for (int64_t i = c; i < c1;) {
                const int64_t left = c1 - i;
                const int     np   = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
                const char   *xr   = (const char *)xq + (size_t)i * xq_stride;
                float        *yr   = y + i * y_stride + (r - r0);
                if (np == 8)
                    q4k_rows(blk, NULL, 1, nb, K, xr, xq_stride, yr, NULL, y_stride, 8);
                else if (np == 4)
                    q4k_rows(blk, NULL, 1, nb, K, xr, xq_stride, yr, NULL, y_stride, 4);
                else if (np == 2)
                    q4k_rows(blk, NULL, 1, nb, K, xr, xq_stride, yr, NULL, y_stride, 2);
                else
                    q4k_rows(blk, NULL, 1, nb, K, xr, xq_stride, yr, NULL, y_stride, 1);
                i += np;
            }
        }
    }
#else
    for (int64_t step = 0; step < seg * moe__cpu_plan.streams; step++) {
        const int64_t r = moe__cpu_stream_row(r0, seg, step);
        if (r >= r1) continue;
        const moe_block_q4_k *blk =
            (const moe_block_q4_k *)((const char *)w->data + (size_t)r * row_bytes); // (nb)
        for (int64_t i = 0; i < n_x; i++) {
            const int8_t  *qa = (const int8_t *)((const char *)xq + (size_t)i * xq_stride);
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
            y[i * y_stride + (r - r0)] = acc - macc;
        }
    }
#endif
}

const moe__cpu_format moe__cpu_q4_k = {
    .act_row_bytes = q4k_act_row_bytes, .act_quantize = act_q4k, .gemm = gemm_q4k,
#if Q4K_AVX512
    .packed_bytes = q4k_packed_bytes, .pack = q4k_pack, .gemm_packed = gemm_q4k_packed,
#endif
};
