/*
 * gemv-q8_0.c - CPU kernels of the GGUF formats whose dot products run
 * against q8_0 activations (as in llama.cpp): Q8_0, Q4_0 and ggml's MXFP4,
 * fused: weight blocks are decoded in registers into unsigned bytes
 * u = q + off and multiplied by the activation bytes with vpdpbusd, whose
 * accumulator starts at -off * (sum of the activation values it meets), so
 * the int32 lanes hold sum(q * qa) exactly:
 *
 *   format      u                   off   block scale
 *   Q8_0        q + 128             128   d (f16)
 *   Q4_0        nibble (q - 8 + 8)  8     d (f16)
 *   MXFP4       2 * e2m1 + 128      128   2^(e - 128) (ggml's e8m0 half)
 *
 * then y += (lanes * d_x) * d_w in fp32.
 *
 * All three work in units of 4 blocks (128 values; 136, 72 or 68 weight
 * bytes) against one activation record per unit, so that two vpdpbusd put
 * block b's sums in int32 lanes 4b..4b+3 and one conversion and one scale
 * vector serve 4 blocks. Q8_0: two vpermt2b gather each block's values
 * 0..15, then 16..31, from four overlapping loads; Q4_0 and MXFP4: one
 * vpermt2b gathers the 64 packed bytes of the 4 blocks, a mask and a shift
 * give the low nibbles (values 0..15 of each block) and the high ones
 * (16..31). (A pair of blocks per step left the decode, not memory, as the
 * bound: about 12 GB/s per core from L2; Q8_0 on pairs spent twice the
 * operations per activation row: qwen3-30b-a3b at 512 tokens 140 -> 96-101
 * ms with units.) The
 * activation row, Kp = cols rounded up to 128, is one 256-byte record per
 * unit, zero past cols:
 *   int8  qa[128]    block b's values 0..15 at 16b, 16..31 at 64 + 16b
 *   int32 ns[16]     lane 4b + j: -off * (sum of qa[16b + 4j .. + 3] and
 *                    of qa[64 + 16b + 4j .. + 3]): the lanes' start values
 *   float dl[16]     lane 4b + j: block b's q8_0 scale (f16-rounded; MXFP4:
 *                    halved, ggml's e8m0 half then becomes 2^(e - 127))
 *
 * Order: per row and activation row, each block's exact integer sum isum
 * (its 4 lanes added), t = isum * dl, then acc[b % 4] = t * d_w + acc[b %
 * 4] (fma; blocks in increasing k), and y = (acc[0] + acc[1]) + (acc[2] +
 * acc[3]). Weight rows are streamed as cpu-formats.h says
 * (moe__cpu_stream_row order, moe__cpu_prefetch). Bound experts run the
 * packed layout of 16-row groups (below) with the same steps and bits; the
 * portable path sums per block in fp32 (each build has one kernel).
 */
#include "cpu-formats.h"
#include "../quant/quant.h"

#include <math.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__F16C__)
#include <immintrin.h>
#define Q80_AVX512 1
#endif

/* moe__quantize_row_q8_0 of the 32 values at x: qa (natural order) and the
 * f16-rounded scale as f32 (NaN for a block holding Inf or NaN, whose qa are
 * then zero, as the reference emulation's NaN block). */
static float q80_block(const float *x, int8_t *qa) {
#if Q80_AVX512
    /* moe__quantize_row_q8_0's arithmetic, 16 lanes at a time: the same
     * absmax (exact), d and 1/d, products, and round-to-nearest-even
     * conversion (vcvtps2dq in the default rounding mode). */
    const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
    const __m512 a0 = _mm512_abs_ps(x0), a1 = _mm512_abs_ps(x1);
    const __m512 inf = _mm512_set1_ps(INFINITY);
    const bool bad = _mm512_cmp_ps_mask(a0, inf, _CMP_NLT_UQ) |
                     _mm512_cmp_ps_mask(a1, inf, _CMP_NLT_UQ);
    if (bad) {
        memset(qa, 0, 32);
        return moe__f16_to_f32(0x7e00); /* NaN */
    }
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
    const float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
    const __m512 iv = _mm512_set1_ps(id);
    _mm_storeu_si128((__m128i *)qa,
                     _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(x0, iv))));
    _mm_storeu_si128((__m128i *)(qa + 16),
                     _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(x1, iv))));
    return _cvtsh_ss(moe__f32_to_f16(d));
#else
    moe_block_q8_0 blk;
    moe__quantize_row_q8_0(x, &blk, MOE_QK8_0);
    memcpy(qa, blk.qs, MOE_QK8_0);
    return moe__f16_to_f32(blk.d);
#endif
}

/* ===== Units of 4 blocks ===== */

enum { Q4U_REC = 256 }; /* bytes of one unit's activation record */

static int64_t kp128(int64_t cols) { return (cols + 127) / 128 * 128; }

static size_t q4u_act_row_bytes(int64_t cols) { return (size_t)(kp128(cols) / 128) * Q4U_REC; }

typedef struct q4u_rec {
    int8_t  qa[128];
    int32_t ns[16];
    float   dl[16];
} q4u_rec;
_Static_assert(sizeof(q4u_rec) == Q4U_REC, "q4u_rec layout");

static void act_q4u(const moe__wmat *w, const float *x, int64_t cols, void *xq) {
    const bool    mx  = w->format == MOE_FORMAT_GGUF_MXFP4;
    const int32_t off = w->format == MOE_FORMAT_Q4_0 ? 8 : 128;
    const int64_t nu  = kp128(cols) / 128;
    q4u_rec *rec = xq; // (nu)
    memset(rec, 0, (size_t)nu * sizeof *rec);
    for (int64_t b = 0; b < cols / MOE_QK8_0; b++) {
        q4u_rec *u = &rec[b / 4];
        const int bi = (int)(b % 4);
        int8_t qa[32];
        const float d = q80_block(x + 32 * b, qa);
        memcpy(u->qa + 16 * bi, qa, 16);
        memcpy(u->qa + 64 + 16 * bi, qa + 16, 16);
        for (int j = 0; j < 4; j++) u->dl[4 * bi + j] = mx ? d * 0.5f : d; /* exact: d is f16 */
    }
    /* ns[4 bi + j] = -off * (the 4-value sums j of both halves of block bi):
     * lane 4 bi + j of a vpdpbusd against ones over each 64-byte half. */
    for (int64_t n = 0; n < nu; n++) {
        q4u_rec *u = &rec[n];
#if Q80_AVX512
        const __m512i one = _mm512_set1_epi8(1);
        const __m512i s   = _mm512_dpbusd_epi32(
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), one, _mm512_loadu_si512(u->qa)), one,
            _mm512_loadu_si512(u->qa + 64));
        _mm512_storeu_si512(u->ns, _mm512_mullo_epi32(s, _mm512_set1_epi32(-off)));
#else
        for (int l = 0; l < 16; l++) {
            int32_t sum = 0;
            for (int t = 0; t < 4; t++) sum += u->qa[4 * l + t] + u->qa[64 + 4 * l + t];
            u->ns[l] = -off * sum;
        }
#endif
    }
}

/* Block bytes of format f (Q4_0 18, GGUF MXFP4 17, Q8_0 34). */
static inline int q4u_bb(moe_format f) {
    return f == MOE_FORMAT_Q8_0 ? 34 : f == MOE_FORMAT_GGUF_MXFP4 ? 17 : 18;
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
/* The mask of the first n (clamped to [0, 64]) bytes of a 64-byte load. */
static inline __mmask64 first_bytes(int n) {
    return n >= 64 ? ~0ull : n <= 0 ? 0 : (1ull << n) - 1;
}

/* MXFP4's codes as unsigned bytes 2 * kvalues_mxfp4 + 128, for vpshufb. */
static inline __m512i mx4_lut(void) {
    return _mm512_broadcast_i32x4(_mm_setr_epi8(
        (char)128, (char)129, (char)130, (char)131, (char)132, (char)134, (char)136, (char)140,
        (char)128, 127, 126, 125, 124, 122, 120, 116));
}

/* Gathers of one unit (4 blocks, ub = 4 * bb bytes at p), each a vpermt2b
 * of two loads (index 64 + j picks the second load's byte j):
 * - Q4_0, MXFP4: from A = p[0..63] and B = p[ub - 64 .. ub - 1] (B ends
 *   with the unit), qs the 64 packed bytes of the 4 blocks;
 * - Q8_0: qs block l / 16's value l % 16 from A and B = p[64..127], qs2
 *   its value 16 + l % 16 from p[8..71] and p[72..135];
 * and d: for Q4_0 and Q8_0 the f16 scale of block l / 4 in half l (from A
 * and B), for MXFP4 the e8m0 byte of block l / 4 in byte 0 of dword l
 * (from A; the mask clears the other bytes). */
typedef struct q4u_idx { __m512i qs, qs2, d; } q4u_idx;

static q4u_idx q4u_idx_make(moe_format f) {
    _Alignas(64) uint8_t qs[64], qs2[64], d[64];
    const bool mx = f == MOE_FORMAT_GGUF_MXFP4, q8 = f == MOE_FORMAT_Q8_0;
    const int  bb = q4u_bb(f), o0 = mx ? 1 : 2, ob = q8 ? 64 : 4 * bb - 64;
    for (int j = 0; j < 64; j++) {
        const int o = o0 + (j / 16) * bb + j % 16, o2 = o + 16 - 8; /* p[8 ..] */
        qs[j]  = (uint8_t)(o < 64 ? o : 64 + o - ob);
        qs2[j] = (uint8_t)(o2 < 64 ? o2 : 64 + o2 - 64);
        const int od = bb * (j / 8 % 4) + j % 2;
        d[j] = (uint8_t)(mx ? bb * (j / 16) : od < 64 ? od : 64 + od - ob);
    }
    return (q4u_idx){ _mm512_load_si512(qs), _mm512_load_si512(qs2), _mm512_load_si512(d) };
}

/* Unsigned weight bytes of one unit: values 0..15 of each block (Q4_0,
 * MXFP4: the low nibbles) in *lo, values 16..31 in *hi, and the 16 lane
 * scales (MXFP4: 2^(e - 127); the activation's halved d completes ggml's
 * 2^(e - 128)). n: the unit's bytes (ub, or fewer for the row's last unit:
 * the masked loads read zeros past them, blocks of d = 0 or e = 0 against
 * zero activations). */
static inline __attribute__((always_inline)) __m512 q4u_decode(
    moe_format f, const q4u_idx *ix, const uint8_t *p, int n, int ub, __m512i *lo, __m512i *hi) {
    const bool mx = f == MOE_FORMAT_GGUF_MXFP4;
    const int  off = f == MOE_FORMAT_Q8_0 ? 64 : ub - 64;
    __m512i a, b;
    if (n == ub) {
        a = _mm512_loadu_si512(p);
        b = _mm512_loadu_si512(p + off);
    } else {
        a = _mm512_maskz_loadu_epi8(first_bytes(n), p);
        b = _mm512_maskz_loadu_epi8(first_bytes(n - off), p + off);
    }
    const __m512 d16 =
        _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutex2var_epi8(a, ix->d, b)));
    if (f == MOE_FORMAT_Q8_0) { /* q + 128: an absent block reads 128s, against zero activations */
        __m512i c, e;
        if (n == ub) {
            c = _mm512_loadu_si512(p + 8);
            e = _mm512_loadu_si512(p + 72);
        } else {
            c = _mm512_maskz_loadu_epi8(first_bytes(n - 8), p + 8);
            e = _mm512_maskz_loadu_epi8(first_bytes(n - 72), p + 72);
        }
        const __m512i flip = _mm512_set1_epi8(-128);
        *lo = _mm512_xor_si512(_mm512_permutex2var_epi8(a, ix->qs, b), flip);
        *hi = _mm512_xor_si512(_mm512_permutex2var_epi8(c, ix->qs2, e), flip);
        return d16;
    }
    const __m512i m4 = _mm512_set1_epi8(15);
    const __m512i q  = _mm512_permutex2var_epi8(a, ix->qs, b);
    __m512i l = _mm512_and_si512(q, m4), h = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
    if (!mx) {
        *lo = l;
        *hi = h;
        return d16;
    }
    const __m512i lut = mx4_lut();
    *lo = _mm512_shuffle_epi8(lut, l);
    *hi = _mm512_shuffle_epi8(lut, h);
    return moe__cpu_e8m0_x16(_mm512_maskz_permutexvar_epi8(0x1111111111111111ull, ix->d, a));
}

/* Unit u (4 blocks) of the weight row against NP activation rows, into
 * the accumulators a[i]: each 4-lane group b sums block b's lanes exactly
 * (two in-lane shuffles), so every lane of group b then takes that block's
 * fp32 steps in the order the header gives (the packed kernel's too). */
static inline __attribute__((always_inline)) void q4u_unit(
    moe_format f, const q4u_idx *ix, const uint8_t *row, int64_t u, int64_t nu, int64_t nb,
    const char *xr, size_t xq_stride, __m512 a[4], int NP) {
    const int      bb = q4u_bb(f), ub = 4 * bb;
    const uint8_t *p  = row + u * ub;
    const int      n  = u + 1 < nu || nb % 4 == 0 ? ub : (int)(nb % 4) * bb;
    moe__cpu_prefetch(p, (size_t)ub);
    __m512i lo, hi;
    const __m512 dw = q4u_decode(f, ix, p, n, ub, &lo, &hi);
#pragma GCC unroll 4
    for (int i = 0; i < NP; i++) {
        const q4u_rec *x = (const q4u_rec *)(xr + (size_t)i * xq_stride) + u;
        __m512i sum = _mm512_dpbusd_epi32(_mm512_load_si512(x->ns), lo, _mm512_load_si512(x->qa));
        sum = _mm512_dpbusd_epi32(sum, hi, _mm512_load_si512(x->qa + 64));
        sum = _mm512_add_epi32(sum, _mm512_shuffle_epi32(sum, _MM_PERM_BADC));
        sum = _mm512_add_epi32(sum, _mm512_shuffle_epi32(sum, _MM_PERM_CDAB));
        a[i] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(sum), _mm512_load_ps(x->dl)), dw,
                               a[i]);
    }
}

/* The row's result from an accumulator whose lane group b (lanes 4b ..
 * 4b + 3, equal) holds blocks b, b + 4, ...: the q4u order's final sum. */
static inline float q4u_final(__m512 a) {
    _Alignas(64) float l[16];
    _mm512_store_ps(l, a);
    return (l[0] + l[4]) + (l[8] + l[12]);
}

/* NW weight rows of nb blocks (row0, and row1 when NW = 2) against NP
 * activation rows (at xr, xq_stride apart): writes y0[i * y_stride] (and
 * y1[...]) for i < NP. The row loops are unrolled, so that the
 * accumulators are registers (with rolled loops the multi-row variants
 * kept them on the stack: a store-to-load round trip per unit and row).
 * Two weight rows share each unit's activation loads (as gemv-q4k.c). */
static inline __attribute__((always_inline)) void q4u_rows(
    moe_format f, const q4u_idx *ix, const uint8_t *row0, const uint8_t *row1, int NW,
    int64_t nb, const char *xr, size_t xq_stride, float *y0, float *y1, int64_t y_stride,
    int NP) {
    const int64_t  nu = (nb + 3) / 4;
    const uint8_t *row[2] = { row0, row1 };
    float         *y[2] = { y0, y1 };
    __m512 a[2][4]; /* rows 0..3 */
#pragma GCC unroll 2
    for (int w = 0; w < NW; w++)
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) a[w][i] = _mm512_setzero_ps();
    for (int64_t u = 0; u < nu; u++)
#pragma GCC unroll 2
        for (int w = 0; w < NW; w++) q4u_unit(f, ix, row[w], u, nu, nb, xr, xq_stride, a[w], NP);
#pragma GCC unroll 2
    for (int w = 0; w < NW; w++)
#pragma GCC unroll 4
        for (int i = 0; i < NP; i++) y[w][i * y_stride] = q4u_final(a[w][i]);
}

/* ===== The packed layout (bound experts: pack, gemm_packed) =====
 *
 * As Q4_K's (gemv-q4k.c): 16 weight rows in the 16 dword lanes of a
 * register, so that a block's scale and fp32 steps are paid once per 16
 * rows, and the quant bytes come in the order vpdpbusd takes them, with
 * no gather. Rows go in groups of 16 (the last one padded with zero
 * rows), a group one contiguous stream over K of records of 16 blocks
 * (16 bb bytes, the checkpoint's bytes reordered), one per block column:
 *   uint8 qs[nc][16][4]   row r's quant bytes 4c .. 4c + 3 at [c][r]
 *                         (nc = 4 for Q4_0 and MXFP4, 8 for Q8_0)
 *   f16 d[16] (Q4_0, Q8_0) or uint8 e[16] (MXFP4)
 * Q4_0's high nibbles are used in place (x & 0xf0: 16 q) and its low ones'
 * sums taken times 16, so the block's exact sum is 16 isum, scaled by dl /
 * 16 (exact); the fp32 steps are q4u_unit's, so both layouts give the same
 * bits. */
enum { Q4P_ROWS = MOE_CPU_GROUP_ROWS };

static inline int q4p_nc(moe_format f) { return f == MOE_FORMAT_Q8_0 ? 8 : 4; }

static size_t q4p_packed_bytes(const moe__wmat *w) {
    const int64_t groups = (w->rows + Q4P_ROWS - 1) / Q4P_ROWS, nb = w->cols / MOE_QK8_0;
    return (size_t)(groups * nb) * Q4P_ROWS * (size_t)q4u_bb(w->format);
}

static void q4p_pack(const moe__wmat *w, void *dst) {
    const moe_format f  = w->format;
    const int        bb = q4u_bb(f), nc = q4p_nc(f), o0 = f == MOE_FORMAT_GGUF_MXFP4 ? 1 : 2;
    const int64_t    nb = w->cols / MOE_QK8_0, groups = (w->rows + Q4P_ROWS - 1) / Q4P_ROWS;
    for (int64_t g = 0; g < groups; g++)
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *rec = (uint8_t *)dst + (size_t)(g * nb + b) * Q4P_ROWS * (size_t)bb;
            for (int r = 0; r < Q4P_ROWS; r++) {
                uint8_t blk[34];
                moe__cpu_group_src_block(w, g, r, b, nb, (size_t)bb, blk);
                for (int c = 0; c < nc; c++) memcpy(rec + 64 * c + 4 * r, blk + o0 + 4 * c, 4);
                memcpy(rec + 64 * nc + (size_t)(o0 * r), blk, (size_t)o0); /* d, or e */
            }
        }
}

/* The 16 rows of the group at g (nb blocks) against NP activation rows
 * (records at xr, xq_stride apart): a[i][b % 4] lane r takes row r's
 * blocks b, b + 4, ... (q4u_unit's steps), summed as q4u_final does. */
static inline __attribute__((always_inline)) void q4p_group(moe_format f, const uint8_t *g,
                                                            int64_t nb, const char *xr,
                                                            size_t xq_stride, __m512 out[4],
                                                            int NP) {
    const bool    q4 = f == MOE_FORMAT_Q4_0, mx = f == MOE_FORMAT_GGUF_MXFP4;
    const int     nc = q4p_nc(f);
    const size_t  rb = (size_t)Q4P_ROWS * (size_t)q4u_bb(f);
    const __m512i m4 = _mm512_set1_epi8(15), h4 = _mm512_set1_epi8((char)0xf0);
    const __m512i lut = mx4_lut();
    const bool pf = moe__cpu_plan.pf_groups;
    __m512 a[4][4];
#pragma GCC unroll 4
    for (int i = 0; i < NP; i++)
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) a[i][k] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *rec = g + (size_t)b * rb;
        if (pf) moe__cpu_prefetch(rec, rb);
        const int bi = (int)(b % 4);
        __m512i   lo[4], hi[4];
#pragma GCC unroll 4
        for (int i = 0; i < NP; i++) { /* the block's correction: its 4 ns lanes */
            const q4u_rec *x = (const q4u_rec *)(xr + (size_t)i * xq_stride) + b / 4;
            lo[i] = _mm512_set1_epi32(x->ns[4 * bi] + x->ns[4 * bi + 1] + x->ns[4 * bi + 2] +
                                      x->ns[4 * bi + 3]);
            hi[i] = _mm512_setzero_si512();
        }
#pragma GCC unroll 8
        for (int c = 0; c < nc; c++) {
            const __m512i v = _mm512_loadu_si512(rec + 64 * c);
            __m512i       l, h = _mm512_setzero_si512();
            if (f == MOE_FORMAT_Q8_0) {
                l = _mm512_xor_si512(v, _mm512_set1_epi8(-128));
            } else if (q4) {
                l = _mm512_and_si512(v, m4);
                h = _mm512_and_si512(v, h4);
            } else {
                l = _mm512_shuffle_epi8(lut, _mm512_and_si512(v, m4));
                h = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
            }
#pragma GCC unroll 4
            for (int i = 0; i < NP; i++) {
                const int8_t *qa = ((const q4u_rec *)(xr + (size_t)i * xq_stride) + b / 4)->qa;
                if (f == MOE_FORMAT_Q8_0) { /* values 4c ..: 0..15 at 16 bi, 16..31 at 64 + 16 bi */
                    const int o = c < 4 ? 16 * bi + 4 * c : 64 + 16 * bi + 4 * (c - 4);
                    if (c < 4) lo[i] = _mm512_dpbusd_epi32(lo[i], l, moe__cpu_bcast4(qa + o));
                    else hi[i] = _mm512_dpbusd_epi32(hi[i], l, moe__cpu_bcast4(qa + o));
                } else {
                    lo[i] = _mm512_dpbusd_epi32(lo[i], l, moe__cpu_bcast4(qa + 16 * bi + 4 * c));
                    hi[i] = _mm512_dpbusd_epi32(hi[i], h, moe__cpu_bcast4(qa + 64 + 16 * bi + 4 * c));
                }
            }
        }
        __m512 dw;
        if (mx) {
            dw = moe__cpu_e8m0_x16(
                _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(rec + 64 * nc))));
        } else {
            dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(rec + 64 * nc)));
        }
#pragma GCC unroll 4
        for (int i = 0; i < NP; i++) {
            const q4u_rec *x  = (const q4u_rec *)(xr + (size_t)i * xq_stride) + b / 4;
            const __m512i  is = q4 ? _mm512_add_epi32(_mm512_slli_epi32(lo[i], 4), hi[i])
                                   : _mm512_add_epi32(lo[i], hi[i]);
            const float    dl = q4 ? x->dl[4 * bi] * 0.0625f : x->dl[4 * bi];
            a[i][bi] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(is), _mm512_set1_ps(dl)),
                                       dw, a[i][bi]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < NP; i++)
        out[i] = _mm512_add_ps(_mm512_add_ps(a[i][0], a[i][1]), _mm512_add_ps(a[i][2], a[i][3]));
}

static void gemm_q4p(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                     size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    const moe_format f  = w->format;
    const int64_t    nb = w->cols / MOE_QK8_0;
    const size_t     gb = (size_t)nb * Q4P_ROWS * (size_t)q4u_bb(f); /* bytes of a group */
    const uint8_t   *base = w->data;
    /* Chunks of activation rows outermost (MOE_CPU_X_CHUNK), then groups,
     * then passes of 4, 2 and 1 rows (the same operations per output). */
    for (int64_t c = 0; c < n_x; c += MOE_CPU_X_CHUNK) {
        const int64_t c1 = n_x - c < MOE_CPU_X_CHUNK ? n_x : c + MOE_CPU_X_CHUNK;
        for (int64_t g = r0 / Q4P_ROWS; g * Q4P_ROWS < r1; g++) {
            const uint8_t *gp = base + (size_t)g * gb;
            for (int64_t i = c; i < c1;) {
                const int64_t left = c1 - i;
                const int     np   = left >= 4 ? 4 : left >= 2 ? 2 : 1;
                const char   *xr   = (const char *)xq + (size_t)i * xq_stride;
                __m512        acc[4];
                /* constant format and NP: each variant compiles to its own loop */
#define Q4P_GROUP(F)                                                         \
    do {                                                                     \
        if (np == 4)      q4p_group(F, gp, nb, xr, xq_stride, acc, 4);       \
        else if (np == 2) q4p_group(F, gp, nb, xr, xq_stride, acc, 2);       \
        else              q4p_group(F, gp, nb, xr, xq_stride, acc, 1);       \
    } while (0)
                if (f == MOE_FORMAT_GGUF_MXFP4) Q4P_GROUP(MOE_FORMAT_GGUF_MXFP4);
                else if (f == MOE_FORMAT_Q8_0) Q4P_GROUP(MOE_FORMAT_Q8_0);
                else Q4P_GROUP(MOE_FORMAT_Q4_0);
#undef Q4P_GROUP
                for (int p = 0; p < np; p++)
                    moe__cpu_group_store(acc[p], g, r0, r1, y + (i + p) * y_stride);
                i += np;
            }
        }
    }
}
#endif

static void gemm_q4u(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq, size_t xq_stride,
                     int64_t n_x, float *y, int64_t y_stride) {
    const moe_format f  = w->format;
    const bool       mx = f == MOE_FORMAT_GGUF_MXFP4;
    const int64_t    K = w->cols, nb = K / MOE_QK8_0;
    const size_t     row_bytes = (size_t)nb * (size_t)q4u_bb(f);
    const char      *base = (const char *)w->data;
#if Q80_AVX512
    const q4u_idx ix = q4u_idx_make(f);
    (void)block_values; /* the portable path's */
#endif
    const int64_t seg = moe__cpu_stream_seg(r0, r1);
#if Q80_AVX512
    if (n_x == 1) { /* weight rows in pairs; constant format: a loop of its own each */
        for (int64_t t = 0, ra, rb; moe__cpu_stream_pair(r0, r1, seg, &t, &ra, &rb);) {
            const uint8_t *wa = (const uint8_t *)base + (size_t)ra * row_bytes;
            const uint8_t *wb = (const uint8_t *)base + (size_t)rb * row_bytes;
            float         *ya = y + (ra - r0), *yb = y + (rb - r0);
#define Q4U_PAIR(F)                                                                \
    do {                                                                           \
        if (rb < r1) q4u_rows(F, &ix, wa, wb, 2, nb, xq, 0, ya, yb, 0, 1);         \
        else         q4u_rows(F, &ix, wa, NULL, 1, nb, xq, 0, ya, NULL, 0, 1);     \
    } while (0)
            if (mx) Q4U_PAIR(MOE_FORMAT_GGUF_MXFP4);
            else if (f == MOE_FORMAT_Q8_0) Q4U_PAIR(MOE_FORMAT_Q8_0);
            else Q4U_PAIR(MOE_FORMAT_Q4_0);
#undef Q4U_PAIR
        }
        return;
    }
#endif
    /* Chunks of activation rows outermost (MOE_CPU_X_CHUNK), in passes of
     * up to 4 rows each. */
    for (int64_t c = 0; c < n_x; c += MOE_CPU_X_CHUNK) {
        const int64_t c1 = n_x - c < MOE_CPU_X_CHUNK ? n_x : c + MOE_CPU_X_CHUNK;
        for (int64_t step = 0; step < seg * moe__cpu_plan.streams; step++) {
            const int64_t r = moe__cpu_stream_row(r0, seg, step);
            if (r >= r1) continue;
            const uint8_t *row = (const uint8_t *)base + (size_t)r * row_bytes; // (nb blocks)
#if Q80_AVX512
            /* Up to 4 activation rows per pass, all accumulators in registers
             * (q4u_rows); per output the operations are the same in every pass
             * size. */
            for (int64_t i = c; i < c1;) {
                const int64_t left = c1 - i;
                const int     np   = left >= 4 ? 4 : left >= 2 ? 2 : 1;
                const char   *xr   = (const char *)xq + (size_t)i * xq_stride;
                float        *yr   = y + i * y_stride + (r - r0);
                const size_t  xs   = xq_stride;
                /* constant format and NP: each variant compiles to its own loop */
#define Q4U_ROWS(F)                                                                \
    do {                                                                           \
        if (np == 4)      q4u_rows(F, &ix, row, NULL, 1, nb, xr, xs, yr, NULL, y_stride, 4); \
        else if (np == 2) q4u_rows(F, &ix, row, NULL, 1, nb, xr, xs, yr, NULL, y_stride, 2); \
        else              q4u_rows(F, &ix, row, NULL, 1, nb, xr, xs, yr, NULL, y_stride, 1); \
    } while (0)
                if (mx) Q4U_ROWS(MOE_FORMAT_GGUF_MXFP4);
                else if (f == MOE_FORMAT_Q8_0) Q4U_ROWS(MOE_FORMAT_Q8_0);
                else Q4U_ROWS(MOE_FORMAT_Q4_0);
#undef Q4U_ROWS
                i += np;
            }
#else
            /* Portable: per block, the int32 sum over its 32 values, times the
             * two scales in the vector path's order (lanes hold partial sums
             * there, so the bits differ; each build has one kernel). */
            for (int64_t i = c; i < c1; i++) {
                const q4u_rec *x = (const q4u_rec *)((const char *)xq + (size_t)i * xq_stride);
                float acc = 0;
                for (int64_t b = 0; b < nb; b++) {
                    const q4u_rec *u = &x[b / 4];
                    const int      bi = (int)(b % 4);
                    int q[32];
                    const float d = block_values(f, row, b, q);
                    int32_t isum = 0;
                    for (int j = 0; j < 16; j++)
                        isum += q[j] * u->qa[16 * bi + j] + q[16 + j] * u->qa[64 + 16 * bi + j];
                    /* MXFP4: d is 2^(e - 128) and dl is halved: undo one half */
                    acc += ((float)isum * u->dl[4 * bi]) * (mx ? 2 * d : d);
                }
                y[i * y_stride + (r - r0)] = acc;
            }
#endif
        }
    }
}

#if Q80_AVX512
#define Q4U_ENTRY                                                                  \
    { .act_row_bytes = q4u_act_row_bytes, .act_quantize = act_q4u, .gemm = gemm_q4u, \
      .packed_bytes = q4p_packed_bytes, .pack = q4p_pack, .gemm_packed = gemm_q4p }
#else
#define Q4U_ENTRY { .act_row_bytes = q4u_act_row_bytes, .act_quantize = act_q4u, .gemm = gemm_q4u }
#endif
const moe__cpu_format moe__cpu_q8_0       = Q4U_ENTRY;
const moe__cpu_format moe__cpu_q4_0       = Q4U_ENTRY;
const moe__cpu_format moe__cpu_mxfp4_gguf = Q4U_ENTRY;
#undef Q4U_ENTRY
