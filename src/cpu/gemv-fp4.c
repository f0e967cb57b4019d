/*
 * gemv-fp4.c - CPU kernels of MXFP4 (OCP / gpt-oss) and NVFP4 (ModelOpt).
 *
 * W4A16 with bf16 activations, as the GPU kernels run these formats: the
 * activation row is rounded to bf16 (the formats' act_fake_quant_ref in
 * src/quant/fp4.c emulates exactly that for the reference), e2m1 codes
 * become bf16 through one 32-entry word table (vpermw reads the low 5 bits
 * of each 16-bit lane: the table holds the 16 codes twice, so the bit above
 * a nibble does not matter), and vdpbf16ps sums the exact products in fp32
 * per unit before the block scales multiply once:
 *     y += s_block * sum_{k in block} e2m1[k] * x[k]
 * (NVFP4: s_block = e4m3 scale * global scale).
 *
 * Why one table: the decode, not memory, bounded these kernels (a core
 * decoded about 12 GB/s from L2 with two vpshufb byte tables and four
 * unpacks per 128 codes, less than its half of the read bandwidth). A
 * 64-byte load seen as 32 words gives four code vectors (the words, the
 * words shifted by 4 bits, and both shifted by one byte within their
 * 128-bit lanes, which puts bits 8 and 12 of each word at its bottom on
 * the shuffle port instead of two more shifts) and one vpermw each: 7
 * vector operations per 128 codes instead of 11, and the four vdpbf16ps
 * that follow are the floor of any bf16-activation kernel.
 *
 * Activation row (act_row_bytes): uint16 xb[Kp], Kp = cols rounded up to
 * 128, zero past cols, each 128 values in the order the weight decode
 * produces from 64 packed bytes: code vector s (s = 0..3) holds in word j
 * the value 4j + s (bytes 2j, 2j + 1 hold values 4j..4j+3, low nibble
 * first), so value e is stored at 32 * (e % 4) + e / 4. vdpbf16ps pairs
 * words 2m and 2m + 1, so fp32 lane m of a unit's sum holds the values
 * 8m..8m+7: MXFP4 block b (32 values) is lanes 4b..4b+3, NVFP4 block b (16
 * values) lanes 2b, 2b+1. Where the build has the AMX path
 * (gemv-fp4-amx.h) the plain bf16 row follows (act_row_bytes doubles): the
 * K order of its tiles. MXFP4 runs on the tiles where the process may use
 * them (gemv-fp4-amx.c, with a bind-time packed copy), NVFP4 and MXFP4
 * elsewhere on the kernel below.
 *
 * Order: per row, units of 128 values in increasing k, fixed steps inside,
 * one reduction tree at the end: a result depends on its rows only. The
 * AVX-512 kernel loads the block scales of 2 units at once, keeps up to 4 activation
 * rows in registers, and streams the weight rows as cpu-formats.h says
 * (moe__cpu_stream_row order, moe__cpu_prefetch).
 */
#include "cpu-formats.h"
#include "gemv-fp4-amx.h"
#include "../quant/quant.h"

#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define FP4_AVX512 1
#endif

/* Values per unit (64 bytes of codes); units per load of block scales. */
enum { FP4_U = 128, FP4_UPL = 2 };

static int64_t kp128(int64_t cols) { return (cols + FP4_U - 1) / FP4_U * FP4_U; }

/* With the AMX path the plain bf16 row follows (gemv-fp4-amx.h). */
static size_t fp4_act_row_bytes(int64_t cols) { return (size_t)kp128(cols) * (FP4_AMX ? 4 : 2); }

/* Stored position (0..127) of value e of a 128-value unit. */
static inline int perm128(int e) { return 32 * (e % 4) + e / 4; }

#if FP4_AVX512
/* One whole unit of 128 values: natural order n[q] (values 32q..32q+31),
 * then stored order s (word j = value 4j + s) from the pairs n[0], n[1]
 * (j < 16) and n[2], n[3] (j >= 16), one index vector for both. */
static void act_unit(const float *x, uint16_t *xb, uint16_t *plain) {
    __m512i n[4];
    for (int q = 0; q < 4; q++) {
        n[q] = _mm512_inserti64x4(_mm512_castsi256_si512(moe__cpu_bf16_x16(x + 32 * q)),
                                  moe__cpu_bf16_x16(x + 32 * q + 16), 1);
        if (plain) _mm512_storeu_si512(plain + 32 * q, n[q]);
    }
    for (int s = 0; s < 4; s++) {
        const __m512i idx = _mm512_add_epi16(
            _mm512_set_epi16(60, 56, 52, 48, 44, 40, 36, 32, 28, 24, 20, 16, 12, 8, 4, 0, 60, 56,
                             52, 48, 44, 40, 36, 32, 28, 24, 20, 16, 12, 8, 4, 0),
            _mm512_set1_epi16((short)s));
        const __m512i lo  = _mm512_permutex2var_epi16(n[0], idx, n[1]);
        const __m512i hi  = _mm512_permutex2var_epi16(n[2], idx, n[3]);
        _mm512_storeu_si512(xb + 32 * s, _mm512_mask_blend_epi16(0xffff0000u, lo, hi));
    }
}
#endif

static void act_bf16(const moe__wmat *w, const float *x, int64_t cols, void *xq) {
    (void)w;
    uint16_t *xb = xq;
    const int64_t kp = kp128(cols);
#if FP4_AMX
    uint16_t *xp = (uint16_t *)((char *)xq + FP4_AMX_XOFF(cols)); // (kp) plain order
#else
    uint16_t *xp = NULL;
#endif
    int64_t k0 = 0;
#if FP4_AVX512
    for (; k0 + FP4_U <= cols; k0 += FP4_U) act_unit(x + k0, xb + k0, xp ? xp + k0 : NULL);
#endif
    for (; k0 < kp; k0 += FP4_U)
        for (int e = 0; e < FP4_U; e++) {
            const uint16_t v = k0 + e < cols ? moe__f32_to_bf16(x[k0 + e]) : 0;
            xb[k0 + perm128(e)] = v;
            if (xp) xp[k0 + e] = v;
        }
}

static float bf16_at(const uint16_t *xb, int64_t k) {
    return moe__bf16_to_f32(xb[k / FP4_U * FP4_U + perm128((int)(k % FP4_U))]);
}

#if FP4_AVX512
/* bf16 of the e2m1 codes 0..15, twice (vpermw indexes with 5 bits). */
static __m512i fp4_table(void) {
    static const _Alignas(64) uint16_t t[32] = {
        0x0000, 0x3f00, 0x3f80, 0x3fc0, 0x4000, 0x4040, 0x4080, 0x40c0,
        0x8000, 0xbf00, 0xbf80, 0xbfc0, 0xc000, 0xc040, 0xc080, 0xc0c0,
        0x0000, 0x3f00, 0x3f80, 0x3fc0, 0x4000, 0x4040, 0x4080, 0x40c0,
        0x8000, 0xbf00, 0xbf80, 0xbfc0, 0xc000, 0xc040, 0xc080, 0xc0c0,
    };
    return _mm512_load_si512(t);
}

/* 64 packed bytes -> 4 x 32 bf16 weights in the activation's stored order
 * (w[s] word j = value 4j + s). */
static inline void decode_unit(__m512i t, const uint8_t *p, __m512bh w[4]) {
    const __m512i q = _mm512_loadu_si512(p), q4 = _mm512_srli_epi16(q, 4);
    w[0] = (__m512bh)_mm512_permutexvar_epi16(q, t);
    w[1] = (__m512bh)_mm512_permutexvar_epi16(q4, t);
    w[2] = (__m512bh)_mm512_permutexvar_epi16(_mm512_bsrli_epi128(q, 1), t);
    w[3] = (__m512bh)_mm512_permutexvar_epi16(_mm512_bsrli_epi128(q4, 1), t);
}

/* n <= 16 scale bytes, zero past n. A masked load whose line is not in
 * cache stalls a Zen 5 core (43% of the MXFP4 kernel's samples sat on the
 * one after it), so whole 8 and 16 are plain loads. */
static inline __m128i scale_bytes(const uint8_t *e, int n) {
    if (n == 16) return _mm_loadu_si128((const __m128i *)e);
    if (n == 8) return _mm_loadl_epi64((const __m128i *)e);
    return _mm_maskz_loadu_epi8((__mmask16)((1u << n) - 1), e);
}

/* n <= 16 e8m0 scales -> 2^(e-127) in lanes 0..n-1, 2^-127 past n (e =
 * 0 is 2^-127, a subnormal; 0xFF never reaches a kernel: it is rejected at
 * creation). Loaded once per 2 units of 128 values. */
static inline __m512 mx_scales16(const uint8_t *e, int n) {
    return moe__cpu_e8m0_x16(_mm512_cvtepu8_epi32(scale_bytes(e, n)));
}

/* n <= 16 e4m3 scales times the global scale in lanes 0..n-1: an e4m3 byte
 * shifted into an f16 pattern (b << 7) is its value times 2^-8. Scales are
 * finite and positive (NaN, zero and negative codes are rejected at
 * creation), so the sign needs no care. Loaded once per 2 units. */
static inline __m512 nv_scales16(const uint8_t *e, int n, float scale2) {
    const __m256i b = _mm256_cvtepu8_epi16(scale_bytes(e, n));
    return _mm512_mul_ps(_mm512_cvtph_ps(_mm256_slli_epi16(b, 7)),
                         _mm512_set1_ps(256.0f * scale2));
}

static inline __m512 dp(__m512 acc, __m512bh w, const uint16_t *x) {
    return _mm512_dpbf16_ps(acc, w, (__m512bh)_mm512_loadu_si512(x));
}
#endif

/* Block scales of one 128-value unit (MXFP4 4, NVFP4 8; 0 past K), for the
 * portable path. */
static inline void unit_scales(const moe__wmat *w, int64_t r, int64_t k0, int64_t K, float *s) {
    const bool mx = w->format == MOE_FORMAT_MXFP4;
    const int64_t bs = mx ? MOE_QK_MXFP4 : MOE_QK_NVFP4, nb = FP4_U / bs;
    const uint8_t *e = (const uint8_t *)w->scales + (r * K + k0) / bs;
    for (int64_t b = 0; b < nb; b++) {
        if (k0 + b * bs >= K) { s[b] = 0; continue; }
        s[b] = mx ? moe__e8m0_to_f32(e[b]) : moe__e4m3_to_f32(e[b]) * w->scale2;
    }
}

#if FP4_AVX512
/* One 128-value unit of weight codes of NW weight rows (at qu[w]) against
 * NP activation rows (k0: the unit's K offset), times each row's lane
 * scales s[w], into acc[w]. Two weight rows share the activation loads. */
static inline __attribute__((always_inline)) void fp4_unit(
    __m512i t, const uint8_t *const qu[2], const __m512 s[2], int NW, int64_t k0,
    const char *xr, size_t xq_stride, __m512 (*acc)[4], int NP) {
    __m512bh wv[2][4];
#pragma GCC unroll 2
    for (int w = 0; w < NW; w++) decode_unit(t, qu[w], wv[w]);
#pragma GCC unroll 4
    for (int i = 0; i < NP; i++) {
        const uint16_t *x = (const uint16_t *)(xr + (size_t)i * xq_stride) + k0;
#pragma GCC unroll 2
        for (int w = 0; w < NW; w++) {
            __m512 d = dp(_mm512_setzero_ps(), wv[w][0], x);
            d = dp(d, wv[w][1], x + 32);
            d = dp(d, wv[w][2], x + 64);
            d = dp(d, wv[w][3], x + 96);
            acc[w][i] = _mm512_fmadd_ps(d, s[w], acc[w][i]);
        }
    }
}

/* The lane scales of FP4_UPL units from block b0 on (n blocks), of one row. */
static inline __m512 fp4_scales(const moe__wmat *w, bool mx, const uint8_t *sc, int64_t b0,
                                int n) {
    return mx ? mx_scales16(sc + b0, n) : nv_scales16(sc + b0, n, w->scale2);
}

/* NW weight rows (codes q0 / q1, block scales sc0 / sc1; NW = 2 only with
 * NP = 1) against NP activation rows (at xr, xq_stride apart): writes
 * y0[i * y_stride] (and y1[...]). The block scales of FP4_UPL units (MXFP4
 * 8, NVFP4 16) are loaded at once; per unit one permute spreads them over
 * the lanes of its dot products (ix[u % FP4_UPL]). Whole groups of such
 * units run unrolled (constant permute indices, one scale load and one
 * prefetch per group, no tail test: the per-unit bookkeeping was a third
 * of the loop); the rest of the row, unit by unit, in the same order. MXFP4
 * took 4 units a load before: qwen3-30b-a3b's W2 rows (768 values) then
 * ran two units of their six through that slower rest (Zen 5, one core
 * from memory: 28 GB/s, now 32.5, as NVFP4). Two weight rows share each
 * activation load (as gemv-q4k.c). */
static inline __attribute__((always_inline)) void fp4_rows(
    const moe__wmat *w, bool mx, __m512i t, const __m512i *ix, const uint8_t *q0,
    const uint8_t *sc0, const uint8_t *q1, const uint8_t *sc1, int NW, int64_t K,
    const char *xr, size_t xq_stride, float *y0, float *y1, int64_t y_stride, int NP) {
    const int64_t kp = kp128(K), bs = mx ? MOE_QK_MXFP4 : MOE_QK_NVFP4, nbk = K / bs;
    const int64_t gk = FP4_U * FP4_UPL, kg = K / gk * gk; /* values per group; grouped part */
    const int     spl = (int)(gk / bs);                      /* scales per load            */
    const uint8_t *q[2] = { q0, q1 }, *sc[2] = { sc0, sc1 };
    float         *y[2] = { y0, y1 };
    __m512         acc[2][4]; /* the loops over NW and NP are unrolled so that these
                               * stay in registers: rolled, they went to the stack, a
                               * store-to-load round trip per unit and row */
#pragma GCC unroll 2
    for (int r = 0; r < NW; r++)
#pragma GCC unroll 4
        for (int i = 0; i < NP; i++) acc[r][i] = _mm512_setzero_ps();
    __m512 sv[2];
    for (int64_t k0 = 0; k0 < kg; k0 += gk) {
#pragma GCC unroll 2
        for (int r = 0; r < NW; r++) {
            sv[r] = fp4_scales(w, mx, sc[r], k0 / bs, spl);
            moe__cpu_prefetch(q[r] + k0 / 2, (size_t)gk / 2);
        }
#pragma GCC unroll 4
        for (int u = 0; u < FP4_UPL; u++) {
            const uint8_t *qu[2] = { q[0] + (k0 + u * FP4_U) / 2,
                                     NW > 1 ? q[1] + (k0 + u * FP4_U) / 2 : NULL };
            const __m512   su[2] = { _mm512_permutexvar_ps(ix[u], sv[0]),
                                     NW > 1 ? _mm512_permutexvar_ps(ix[u], sv[1]) : sv[0] };
            fp4_unit(t, qu, su, NW, k0 + u * FP4_U, xr, xq_stride, acc, NP);
        }
    }
    sv[0] = sv[1] = _mm512_setzero_ps();
    for (int64_t k0 = kg, u = 0; k0 < kp; k0 += FP4_U, u++) {
        _Alignas(64) uint8_t tail[2][64];
        const uint8_t *qu[2] = { NULL, NULL };
        __m512         su[2] = { sv[0], sv[1] };
#pragma GCC unroll 2
        for (int r = 0; r < NW; r++) {
            if (u % FP4_UPL == 0) {
                const int64_t b0 = k0 / bs, n = nbk - b0 < spl ? nbk - b0 : spl;
                sv[r] = fp4_scales(w, mx, sc[r], b0, (int)n);
            }
            qu[r] = q[r] + k0 / 2;
            moe__cpu_prefetch(qu[r], FP4_U / 2);
            if (K - k0 < FP4_U) { /* never read past the row */
                memset(tail[r], 0, sizeof tail[r]);
                memcpy(tail[r], qu[r], (size_t)(K - k0) / 2);
                qu[r] = tail[r];
            }
            su[r] = _mm512_permutexvar_ps(ix[u % FP4_UPL], sv[r]);
        }
        fp4_unit(t, qu, su, NW, k0, xr, xq_stride, acc, NP);
    }
#pragma GCC unroll 2
    for (int r = 0; r < NW; r++)
#pragma GCC unroll 4
        for (int i = 0; i < NP; i++) y[r][i * y_stride] = _mm512_reduce_add_ps(acc[r][i]);
}
#endif

static void gemm_fp4_vec(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                         size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    const int64_t K = w->cols;
    const bool mx = w->format == MOE_FORMAT_MXFP4;
#if FP4_AVX512
    const size_t  xs = xq_stride;
    const __m512i t  = fp4_table();
    const int64_t bs = mx ? MOE_QK_MXFP4 : MOE_QK_NVFP4;
    /* Lane m of the sum of unit u (of the FP4_UPL that share a scale load)
     * belongs to scale 4u + m / 4 (MXFP4) or 8u + m / 2 (NVFP4). */
    __m512i ix[FP4_UPL];
    for (int u = 0; u < FP4_UPL; u++) {
        _Alignas(64) int32_t v[16];
        for (int m = 0; m < 16; m++) v[m] = mx ? 4 * u + m / 4 : 8 * u + m / 2;
        ix[u] = _mm512_load_si512(v);
    }
    const int64_t seg = moe__cpu_stream_seg(r0, r1);
    const uint8_t *codes = (const uint8_t *)w->data, *scales = (const uint8_t *)w->scales;
    if (n_x == 1) { /* weight rows in pairs; constant mx: a loop of its own each */
        for (int64_t s = 0, ra, rb; moe__cpu_stream_pair(r0, r1, seg, &s, &ra, &rb);) {
            const uint8_t *qa = codes + ra * K / 2, *sa = scales + ra * (K / bs);
            const uint8_t *qb = codes + rb * K / 2, *sb = scales + rb * (K / bs);
            float         *ya = y + (ra - r0), *yb = y + (rb - r0);
            if (rb < r1 && mx) fp4_rows(w, true, t, ix, qa, sa, qb, sb, 2, K, xq, 0, ya, yb, 0, 1);
            else if (rb < r1) fp4_rows(w, false, t, ix, qa, sa, qb, sb, 2, K, xq, 0, ya, yb, 0, 1);
            else if (mx) fp4_rows(w, true, t, ix, qa, sa, NULL, NULL, 1, K, xq, 0, ya, NULL, 0, 1);
            else fp4_rows(w, false, t, ix, qa, sa, NULL, NULL, 1, K, xq, 0, ya, NULL, 0, 1);
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
            const uint8_t *q  = codes + r * K / 2;          // (K/2)
            const uint8_t *sc = scales + r * (K / bs);      // (K/bs)
            for (int64_t i = c; i < c1;) {
                const int64_t left = c1 - i;
                const int     np   = left >= 4 ? 4 : left >= 2 ? 2 : 1;
                const char   *xr   = (const char *)xq + (size_t)i * xq_stride;
                float        *yr   = y + i * y_stride + (r - r0);
                /* constant mx and NP: each variant compiles to its own loop */
#define FP4_PASS(MX, NP) \
    fp4_rows(w, MX, t, ix, q, sc, NULL, NULL, 1, K, xr, xs, yr, NULL, y_stride, NP)
                if (mx) {
                    if (np == 4)      FP4_PASS(true, 4);
                    else if (np == 2) FP4_PASS(true, 2);
                    else              FP4_PASS(true, 1);
                } else {
                    if (np == 4)      FP4_PASS(false, 4);
                    else if (np == 2) FP4_PASS(false, 2);
                    else              FP4_PASS(false, 1);
                }
#undef FP4_PASS
                i += np;
            }
        }
    }
    (void)unit_scales;
#else
    const int64_t bs = mx ? MOE_QK_MXFP4 : MOE_QK_NVFP4;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *q = (const uint8_t *)w->data + r * K / 2; // (K/2)
        for (int64_t i = 0; i < n_x; i++) {
            const uint16_t *x = (const uint16_t *)((const char *)xq + (size_t)i * xq_stride);
            float acc = 0;
            for (int64_t k0 = 0; k0 < K; k0 += FP4_U) {
                float s[8] = { 0 };
                unit_scales(w, r, k0, K, s);
                for (int64_t b = 0; b < FP4_U / bs && k0 + b * bs < K; b++) {
                    float d = 0;
                    for (int64_t j = 0; j < bs; j++) {
                        int64_t k = k0 + b * bs + j;
                        d += moe__e2m1_to_f32((uint8_t)(q[k / 2] >> (4 * (k % 2)))) *
                             bf16_at(x, k);
                    }
                    acc += d * s[b];
                }
            }
            y[i * y_stride + (r - r0)] = acc;
        }
    }
#endif
    (void)bf16_at;
}

/* MXFP4 takes the AMX path where the process may use tiles (the same
 * answer for its whole life, so every call runs the same kernel), else the
 * kernel above. NVFP4 stays on the kernel above: its AMX decode (two
 * scale tables per tile row, gemv-fp4-amx.c) measured slower than it on
 * the qwen3-30b-a3b shapes and no faster on deepseek-v3's
 * (`moe bench`, 2 threads, 2026-11-29). */
static void gemm_mxfp4(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                       size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
#if FP4_AMX
    if (moe__cpu_amx_ready()) {
        moe__fp4_amx_gemm(w, false, r0, r1, xq, xq_stride, n_x, y, y_stride);
        return;
    }
#endif
    gemm_fp4_vec(w, r0, r1, xq, xq_stride, n_x, y, y_stride);
}

#if FP4_AMX
/* MXFP4 pack hooks: the AMX panels (gemv-fp4-amx.c); where the OS refuses
 * the tiles, a plain copy of the codes that gemm_fp4_vec reads as it reads
 * the checkpoint (the view keeps w's scales). */
static size_t mxfp4_packed_bytes(const moe__wmat *w) {
    return moe__cpu_amx_ready() ? moe__fp4_amx_packed_bytes(w) : (size_t)(w->rows * w->cols / 2);
}

static void mxfp4_pack(const moe__wmat *w, void *dst) {
    if (moe__cpu_amx_ready()) moe__fp4_amx_pack(w, dst);
    else                      memcpy(dst, w->data, (size_t)(w->rows * w->cols / 2));
}

static void gemm_mxfp4_packed(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                              size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    if (moe__cpu_amx_ready()) moe__fp4_amx_gemm(w, true, r0, r1, xq, xq_stride, n_x, y, y_stride);
    else gemm_fp4_vec(w, r0, r1, xq, xq_stride, n_x, y, y_stride);
}
#define MXFP4_PACK_HOOKS .packed_bytes = mxfp4_packed_bytes, .pack = mxfp4_pack, \
                         .gemm_packed = gemm_mxfp4_packed,
#else
#define MXFP4_PACK_HOOKS
#endif

const moe__cpu_format moe__cpu_mxfp4 = { .act_row_bytes = fp4_act_row_bytes,
                                         .act_quantize = act_bf16, .gemm = gemm_mxfp4,
                                         MXFP4_PACK_HOOKS };
const moe__cpu_format moe__cpu_nvfp4 = { .act_row_bytes = fp4_act_row_bytes,
                                         .act_quantize = act_bf16, .gemm = gemm_fp4_vec };
