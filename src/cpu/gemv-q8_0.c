/*
 * gemv-q8_0.c - CPU kernels of the GGUF formats whose dot products run
 * against q8_0 activations (as in llama.cpp): Q8_0, Q4_0 and ggml's MXFP4,
 * fused: two weight blocks (64 values) are decoded in registers into
 * unsigned bytes u = q + off and multiplied by the activation bytes with
 * vpdpbusd, whose accumulator starts at -off * (sum of each 4 activation
 * values), so the int32 lanes hold sum(q * qa) exactly:
 *
 *   format      u                   off   block scale
 *   Q8_0        q + 128             128   d (f16)
 *   Q4_0        nibble (q - 8 + 8)  8     d (f16)
 *   MXFP4       2 * e2m1 + 128      128   2^(e - 128) (ggml's e8m0 half)
 *
 * then y += (d_w * d_x) * lanes, in fp32.
 *
 * Activation row (act_row_bytes), Kp = cols rounded up to 64, zero past cols:
 *   int8  qa[Kp]     q8_0 values (quant.h's moe__quantize_row_q8_0)
 *   int32 ns[Kp/4]   minus the sum of each 4 consecutive qa
 *   float dl[Kp/4]   the q8_0 block scale of those 4 values (f16-rounded)
 *
 * Order: per row and activation row, pairs of blocks in increasing k
 * alternate between two accumulators (fixed by K), summed, then reduced by
 * one fixed tree. Weight rows are streamed as cpu-formats.h says
 * (moe__cpu_stream_row order, moe__cpu_prefetch).
 */
#include "cpu-formats.h"
#include "../quant/quant.h"

#include <math.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__F16C__)
#include <immintrin.h>
#define Q80_AVX512 1
#endif

enum { Q80_XG = 16 };

static int64_t kp64(int64_t cols) { return (cols + 63) / 64 * 64; }

static size_t q80_act_row_bytes(int64_t cols) { return (size_t)kp64(cols) * 3; }

static void act_q80(const moe__wmat *w, const float *x, int64_t cols, void *xq) {
    (void)w;
    const int64_t kp = kp64(cols);
    int8_t  *qa = xq;
    int32_t *ns = (int32_t *)(qa + kp);
    float   *dl = (float *)(ns + kp / 4);
    memset(qa, 0, (size_t)kp);
    for (int64_t b = 0; b < cols / MOE_QK8_0; b++) {
#if Q80_AVX512
        /* moe__quantize_row_q8_0's arithmetic, 16 lanes at a time: the same
         * absmax (exact), d and 1/d, products, and round-to-nearest-even
         * conversion (vcvtps2dq in the default rounding mode). */
        const __m512 x0 = _mm512_loadu_ps(x + 32 * b), x1 = _mm512_loadu_ps(x + 32 * b + 16);
        const __m512 a0 = _mm512_abs_ps(x0), a1 = _mm512_abs_ps(x1);
        const __m512 inf = _mm512_set1_ps(INFINITY);
        const bool bad = _mm512_cmp_ps_mask(a0, inf, _CMP_NLT_UQ) |
                         _mm512_cmp_ps_mask(a1, inf, _CMP_NLT_UQ);
        if (bad) {
            for (int j = 0; j < 8; j++) dl[b * 8 + j] = moe__f16_to_f32(0x7e00); /* NaN */
            continue;
        }
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
        const float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        const __m512 iv = _mm512_set1_ps(id);
        _mm_storeu_si128((__m128i *)(qa + 32 * b),
                         _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(x0, iv))));
        _mm_storeu_si128((__m128i *)(qa + 32 * b + 16),
                         _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(x1, iv))));
        _mm256_storeu_ps(dl + 8 * b, _mm256_set1_ps(_cvtsh_ss(moe__f32_to_f16(d))));
#else
        moe_block_q8_0 blk;
        moe__quantize_row_q8_0(x + b * MOE_QK8_0, &blk, MOE_QK8_0);
        memcpy(qa + b * MOE_QK8_0, blk.qs, MOE_QK8_0);
        const float d = moe__f16_to_f32(blk.d);
        for (int j = 0; j < 8; j++) dl[b * 8 + j] = d;
#endif
    }
    for (int64_t j = cols / 4; j < kp / 4; j++) dl[j] = 0;
#if Q80_AVX512
    for (int64_t j = 0; j < kp / 4; j += 16)
        _mm512_storeu_si512(ns + j, _mm512_sub_epi32(_mm512_setzero_si512(),
                                _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(1),
                                                    _mm512_loadu_si512(qa + 4 * j))));
#else
    for (int64_t j = 0; j < kp / 4; j++)
        ns[j] = -(qa[4 * j] + qa[4 * j + 1] + qa[4 * j + 2] + qa[4 * j + 3]);
#endif
}

static const int8_t kvalues_mxfp4[16] = { 0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12 };

/* Block i of row data: the 32 weight values (q, before any offset) and the
 * block scale; for the portable path. */
static float block_values(moe_format f, const void *row, int64_t i, int q[32]) {
    if (f == MOE_FORMAT_Q8_0) {
        const moe_block_q8_0 *b = (const moe_block_q8_0 *)row + i;
        for (int j = 0; j < 32; j++) q[j] = b->qs[j];
        return moe__cpu_half_to_f32(b->d);
    }
    if (f == MOE_FORMAT_Q4_0) {
        const moe_block_q4_0 *b = (const moe_block_q4_0 *)row + i;
        for (int j = 0; j < 16; j++) {
            q[j]      = (b->qs[j] & 15) - 8;
            q[j + 16] = (b->qs[j] >> 4) - 8;
        }
        return moe__cpu_half_to_f32(b->d);
    }
    const moe_block_mxfp4_gguf *b = (const moe_block_mxfp4_gguf *)row + i;
    for (int j = 0; j < 16; j++) {
        q[j]      = kvalues_mxfp4[b->qs[j] & 15];
        q[j + 16] = kvalues_mxfp4[b->qs[j] >> 4];
    }
    return moe__e8m0_to_f32_half(b->e);
}

#if Q80_AVX512
/* 16 packed bytes -> 32 nibbles, low nibbles first (ggml's order). */
static inline __m256i nibbles32(const uint8_t *p) {
    const __m128i v = _mm_loadu_si128((const __m128i *)p), m = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
}

/* Unsigned bytes of block i (ymm) and its scale. */
static inline __m256i block_u8(moe_format f, const void *row, int64_t i, float *d) {
    if (f == MOE_FORMAT_Q8_0) {
        const moe_block_q8_0 *b = (const moe_block_q8_0 *)row + i;
        *d = _cvtsh_ss(b->d);
        return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)b->qs), _mm256_set1_epi8(-128));
    }
    if (f == MOE_FORMAT_Q4_0) {
        const moe_block_q4_0 *b = (const moe_block_q4_0 *)row + i;
        *d = _cvtsh_ss(b->d);
        return nibbles32(b->qs);
    }
    const moe_block_mxfp4_gguf *b = (const moe_block_mxfp4_gguf *)row + i;
    const __m256i lut = _mm256_setr_epi8(
        (char)128, (char)129, (char)130, (char)131, (char)132, (char)134, (char)136, (char)140,
        (char)128, 127, 126, 125, 124, 122, 120, 116,
        (char)128, (char)129, (char)130, (char)131, (char)132, (char)134, (char)136, (char)140,
        (char)128, 127, 126, 125, 124, 122, 120, 116);
    /* ggml's e8m0 half: 2^(e-128), a subnormal for e < 2. */
    const uint32_t u = b->e < 2 ? 0x00200000u << b->e : (uint32_t)(b->e - 1) << 23;
    memcpy(d, &u, 4);
    return _mm256_shuffle_epi8(lut, nibbles32(b->qs));
}
#endif

#if Q80_AVX512
/* Byte gathers of a pair of blocks (2 * block_bytes bytes from p) with
 * vpermb, so that a pair costs a few vector operations instead of two
 * scalar scale conversions, broadcasts and 128-bit inserts:
 *   Q8_0   qs of block 0 (bytes 2..33) from A = p[0..63] and of block 1
 *          (bytes 36..67) from B = p[4..67] (index 64 + j picks B[j]);
 *   Q4_0   qs (bytes 2..17, 20..35) twice each: 128-bit lanes
 *          (qs0, qs0, qs1, qs1), the odd lanes then shifted right by 4;
 *   MXFP4  the same with qs at bytes 1..16 and 18..33.
 * The scales: f16 d at bytes (0, 34) or (0, 18) as 8 + 8 halves; the e8m0
 * bytes (0, 17) as 8 + 8 zero-extended dwords. */
typedef struct q80_pair_idx { __m512i qs, d; } q80_pair_idx;

static inline q80_pair_idx q80_pair_idx_make(moe_format f) {
    _Alignas(64) uint8_t qs[64], d[64];
    const int o0 = f == MOE_FORMAT_GGUF_MXFP4 ? 1 : 2;                    /* qs of block 0 */
    const int bb = f == MOE_FORMAT_Q8_0 ? 34 : f == MOE_FORMAT_Q4_0 ? 18 : 17;
    for (int j = 0; j < 64; j++) {
        if (f == MOE_FORMAT_Q8_0) qs[j] = (uint8_t)(j < 32 ? 2 + j : 64 + j);
        else qs[j] = (uint8_t)(o0 + (j / 32) * bb + j % 16);
        if (f == MOE_FORMAT_GGUF_MXFP4) d[j] = (uint8_t)(j % 4 ? 0 : j < 32 ? 0 : bb);
        else d[j] = (uint8_t)((j < 16 ? 0 : bb) + j % 2);
    }
    return (q80_pair_idx){ _mm512_load_si512(qs), _mm512_load_si512(d) };
}

/* Unsigned bytes of blocks 2p, 2p + 1 (both present) and their scales in
 * lanes 0..7 and 8..15. */
static inline __attribute__((always_inline)) __m512i
pair_u8(moe_format f, const q80_pair_idx *ix, const uint8_t *p, __m512 *dw) {
    if (f == MOE_FORMAT_Q8_0) {
        const __m512i a = _mm512_loadu_si512(p), b = _mm512_loadu_si512(p + 4);
        *dw = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi8(ix->d, a)));
        return _mm512_xor_si512(_mm512_permutex2var_epi8(a, ix->qs, b), _mm512_set1_epi8(-128));
    }
    const __m512i sh = _mm512_maskz_set1_epi16(0xff00ff00u, 4); /* odd 128-bit lanes: 4 */
    const __m512i m4 = _mm512_set1_epi8(15);
    const __m512i a  = _mm512_maskz_loadu_epi8(f == MOE_FORMAT_Q4_0 ? (1ull << 36) - 1
                                                                     : (1ull << 34) - 1, p);
    const __m512i nib = _mm512_and_si512(
        _mm512_srlv_epi16(_mm512_permutexvar_epi8(ix->qs, a), sh), m4);
    if (f == MOE_FORMAT_Q4_0) {
        *dw = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi8(ix->d, a)));
        return nib;
    }
    /* ggml's e8m0 half: 2^(e-128), a subnormal for e < 2. */
    const __m512i e  = _mm512_maskz_permutexvar_epi8(0x1111111111111111ull, ix->d, a);
    const __m512i nm = _mm512_slli_epi32(_mm512_sub_epi32(e, _mm512_set1_epi32(1)), 23);
    const __m512i sb = _mm512_sllv_epi32(_mm512_set1_epi32(0x00200000), e);
    *dw = _mm512_castsi512_ps(
        _mm512_mask_mov_epi32(nm, _mm512_cmplt_epu32_mask(e, _mm512_set1_epi32(2)), sb));
    const __m512i lut = _mm512_broadcast_i32x4(_mm_setr_epi8(
        (char)128, (char)129, (char)130, (char)131, (char)132, (char)134, (char)136, (char)140,
        (char)128, 127, 126, 125, 124, 122, 120, 116));
    return _mm512_shuffle_epi8(lut, nib);
}

/* NP activation rows (at xr, xq_stride apart) against one weight row:
 * writes y[i * y_stride] for i < NP. */
static inline __attribute__((always_inline)) void q80_rows(
    moe_format f, const q80_pair_idx *ix, const char *row, size_t bb, int64_t nb, int64_t kp,
    int shift, const char *xr, size_t xq_stride, float *y, int64_t y_stride, int NP) {
    __m512 acc[4][2];
    for (int i = 0; i < NP; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int64_t p = 0; p < (nb + 1) / 2; p++) {
        moe__cpu_prefetch(row + (size_t)(2 * p) * bb, 2 * bb);
        __m512i wv;
        __m512  dw;
        if (2 * p + 1 < nb) {
            wv = pair_u8(f, ix, (const uint8_t *)row + (size_t)(2 * p) * bb, &dw);
        } else { /* an odd last block: the pair's second half is zero */
            float da = 0;
            wv = _mm512_zextsi256_si512(block_u8(f, row, 2 * p, &da));
            dw = _mm512_maskz_mov_ps(0x00ff, _mm512_set1_ps(da));
        }
        for (int i = 0; i < NP; i++) {
            const int8_t  *qa = (const int8_t *)(xr + (size_t)i * xq_stride);
            const int32_t *ns = (const int32_t *)(qa + kp);
            const float   *dl = (const float *)(ns + kp / 4);
            __m512i init = _mm512_slli_epi32(_mm512_loadu_si512(ns + 16 * p), (unsigned)shift);
            __m512i sum  = _mm512_dpbusd_epi32(init, wv, _mm512_loadu_si512(qa + 64 * p));
            __m512  t    = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), dw);
            acc[i][p & 1] = _mm512_fmadd_ps(t, _mm512_loadu_ps(dl + 16 * p), acc[i][p & 1]);
        }
    }
    for (int i = 0; i < NP; i++)
        y[i * y_stride] = _mm512_reduce_add_ps(_mm512_add_ps(acc[i][0], acc[i][1]));
}

/* The rows of one weight row for every activation row, in passes of up to
 * 4 (per output the operations are the same in every pass size). */
static inline __attribute__((always_inline)) void q80_row_all(
    moe_format f, const q80_pair_idx *ix, const char *row, size_t bb, int64_t nb, int64_t kp,
    const void *xq, size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    const int shift = f == MOE_FORMAT_Q4_0 ? 3 : 7; /* off = 8 or 128 */
    for (int64_t i = 0; i < n_x;) {
        const int64_t left = n_x - i;
        const int     np   = left >= 4 ? 4 : left >= 2 ? 2 : 1;
        const char   *xr   = (const char *)xq + (size_t)i * xq_stride;
        float        *yr   = y + i * y_stride;
        if (np == 4)      q80_rows(f, ix, row, bb, nb, kp, shift, xr, xq_stride, yr, y_stride, 4);
        else if (np == 2) q80_rows(f, ix, row, bb, nb, kp, shift, xr, xq_stride, yr, y_stride, 2);
        else              q80_rows(f, ix, row, bb, nb, kp, shift, xr, xq_stride, yr, y_stride, 1);
        i += np;
    }
}
#endif

static void gemm_q80(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq, size_t xq_stride,
                     int64_t n_x, float *y, int64_t y_stride) {
    const moe_format f = w->format;
    const int64_t K = w->cols, kp = kp64(K), nb = K / MOE_QK8_0;
    const size_t  bb = (size_t)moe__format(f)->info.block_bytes, row_bytes = (size_t)nb * bb;
#if Q80_AVX512
    const q80_pair_idx ix = q80_pair_idx_make(f);
#endif
    const int64_t seg = moe__cpu_stream_seg(r0, r1);
    for (int64_t step = 0; step < seg * MOE_CPU_STREAMS; step++) {
        const int64_t r = moe__cpu_stream_row(r0, seg, step);
        if (r >= r1) continue;
        const char *row = (const char *)w->data + (size_t)r * row_bytes;
        for (int64_t i0 = 0; i0 < n_x; i0 += Q80_XG) {
            const int64_t nx = n_x - i0 < Q80_XG ? n_x - i0 : Q80_XG;
#if Q80_AVX512
            /* Up to 4 activation rows per pass, all accumulators in
             * registers; each pair of weight blocks is decoded once per
             * pass. Per output the operations are the same in every pass
             * size, so results do not depend on it. */
            const char *xr = (const char *)xq + (size_t)i0 * xq_stride;
            float      *yr = y + i0 * y_stride + (r - r0);
            switch (f) {
            case MOE_FORMAT_Q8_0:
                q80_row_all(MOE_FORMAT_Q8_0, &ix, row, bb, nb, kp, xr, xq_stride, nx, yr, y_stride);
                break;
            case MOE_FORMAT_Q4_0:
                q80_row_all(MOE_FORMAT_Q4_0, &ix, row, bb, nb, kp, xr, xq_stride, nx, yr, y_stride);
                break;
            default:
                q80_row_all(MOE_FORMAT_GGUF_MXFP4, &ix, row, bb, nb, kp, xr, xq_stride, nx, yr,
                            y_stride);
                break;
            }
#else
            (void)kp;
            for (int64_t i = 0; i < nx; i++) {
                const int8_t *qa = (const int8_t *)((const char *)xq +
                                                    (size_t)(i0 + i) * xq_stride);
                const float  *dl = (const float *)((const int32_t *)(qa + kp) + kp / 4);
                float acc = 0;
                for (int64_t b = 0; b < nb; b++) {
                    int q[32];
                    const float d = block_values(f, row, b, q);
                    int32_t isum = 0;
                    for (int j = 0; j < 32; j++) isum += q[j] * qa[32 * b + j];
                    acc += (float)isum * (d * dl[8 * b]);
                }
                y[(i0 + i) * y_stride + (r - r0)] = acc;
            }
#endif
        }
    }
#if Q80_AVX512
    (void)block_values;
#endif
}

const moe__cpu_format moe__cpu_q8_0       = { .act_row_bytes = q80_act_row_bytes,
                                              .act_quantize = act_q80, .gemm = gemm_q80 };
const moe__cpu_format moe__cpu_q4_0       = { .act_row_bytes = q80_act_row_bytes,
                                              .act_quantize = act_q80, .gemm = gemm_q80 };
const moe__cpu_format moe__cpu_mxfp4_gguf = { .act_row_bytes = q80_act_row_bytes,
                                              .act_quantize = act_q80, .gemm = gemm_q80 };
