/*
 * test-quant-cpu.c - the CPU kernels of the quantized formats
 * (src/cpu/gemv-*.c) directly, against the scalar reference: every output
 * y[i][r] of gemm(w, r0, r1, ...) must equal, within fp32 summation error,
 * the fp64 dot product of the reference dequantization of row r
 * (dequant_row_ref) with the reference activation emulation of input i
 * (act_fake_quant_ref), for row ranges that start and end anywhere and
 * for 1, 3 and 17 input rows; and it must be bitwise the same whichever
 * range and chunk size computed it (the contract in cpu-formats.h), and
 * whichever stream plan (cpu-formats.h) read the rows.
 *
 * Tolerance: |y - ref| <= 1e-5 * sum_k |w_k x_k| + 1e-30 (fp32 accumulation
 * of at most a few thousand terms, in blocks).
 */
#include "test.h"

#include "../src/cpu/cpu-formats.h"
#include "../src/quant/quant.h"

#include <stdlib.h>
#include <string.h>

typedef struct kcase {
    moe_format f;
    int32_t    group;
    moe_format sf;
    int64_t    rows, cols;
} kcase;

static void check_kernel(const kcase *c) {
    const moe__format_traits *t  = moe__format(c->f);
    const moe__cpu_format    *cf = moe__cpu_format_get(c->f);
    const char *name = t->info.name;
    REQUIRE(cf, "%s: no CPU kernel", name);
    moe__wsizes s;
    char err[256];
    REQUIRE(t->sizes(c->rows, c->cols, c->group, c->sf, &s, err, sizeof err) == MOE_OK, "%s", err);
    test_rng rng = { 17 + (uint64_t)c->f };
    const int64_t R = c->rows, K = c->cols, NX = 17;
    float *src = malloc(sizeof(float) * (size_t)(R * K));
    test_fill_normal(&rng, src, (size_t)(R * K), 0.1f);
    void *data = calloc(1, s.data), *sc = calloc(1, s.scales + 4), *zp = calloc(1, s.zeros + 4);
    int32_t *g_idx = NULL;
    moe__wmat w = { .format = c->f, .rows = R, .cols = K, .group_size = c->group,
                    .scale_format = c->sf, .data = data, .scales = s.scales ? sc : NULL,
                    .zeros = s.zeros ? zp : NULL,
                    .scale2 = c->f == MOE_FORMAT_NVFP4 ? 0.01f : 1.0f };
    REQUIRE(t->quantize_ref(src, &w) == MOE_OK, "%s: quantize", name);
    if (c->f == MOE_FORMAT_INT4_GPTQ) { /* act-order lookups, after quantizing */
        g_idx = malloc(sizeof(int32_t) * (size_t)K);
        for (int64_t k = 0; k < K; k++) g_idx[k] = (int32_t)((k * 5) % (K / c->group));
        w.g_idx = g_idx;
    }

    /* Inputs: kernel form (xq) and reference emulation (xf). */
    float *x  = malloc(sizeof(float) * (size_t)(NX * K));
    float *xf = malloc(sizeof(float) * (size_t)(NX * K));
    test_fill_normal(&rng, x, (size_t)(NX * K), 1.0f);
    for (int64_t k = 0; k < K; k++) x[5 * K + k] *= 1e-6f; /* a tiny row */
    memcpy(xf, x, sizeof(float) * (size_t)(NX * K));
    if (t->act_fake_quant_ref)
        for (int64_t i = 0; i < NX; i++) t->act_fake_quant_ref(&w, xf + i * K, K);
    size_t xs = cf->act_quantize ? (cf->act_row_bytes(K) + 63) / 64 * 64 : (size_t)K * 4;
    xs = (xs + 63) / 64 * 64;
    char *xq = aligned_alloc(64, xs * (size_t)NX);
    for (int64_t i = 0; i < NX; i++) {
        if (cf->act_quantize) cf->act_quantize(&w, x + i * K, K, xq + (size_t)i * xs);
        else memcpy(xq + (size_t)i * xs, x + i * K, sizeof(float) * (size_t)K);
    }

    /* Reference. */
    double *ref = malloc(sizeof(double) * (size_t)(NX * R));
    double *mag = malloc(sizeof(double) * (size_t)(NX * R));
    test_gemm_ref(&w, xf, NX, ref, mag);

    /* Full call, then ranges and chunk sizes. */
    const int64_t ranges[][2] = { { 0, 1 }, { 3, 11 }, { 5, R }, { R - 1, R }, { 1, R - 2 } };
    const int64_t chunks[] = { 1, 3, NX };
    test_check_gemm(cf, &w, xq, xs, NX, ref, mag, ranges, sizeof ranges / sizeof ranges[0],
                    chunks, sizeof chunks / sizeof chunks[0], name);

    /* The stream plans (cpu-formats.h) change no bit: every row under each. */
    const moe__cpu_stream_plan keep = moe__cpu_plan;
    float *yp[2];
    for (int p = 0; p < 2; p++) {
        moe__cpu_plan = moe__cpu_stream_plan_for(p ? "AuthenticAMD" : "GenuineIntel");
        yp[p] = malloc(sizeof(float) * (size_t)(NX * R));
        cf->gemm(&w, 0, R, xq, xs, NX, yp[p], R);
    }
    moe__cpu_plan = keep;
    CHECK(!memcmp(yp[0], yp[1], sizeof(float) * (size_t)(NX * R)),
          "%s: the Intel and AMD stream plans give different bits", name);
    free(yp[0]); free(yp[1]);
    free(src); free(data); free(sc); free(zp); free(g_idx); free(x); free(xf); free(xq);
    free(ref); free(mag);
}

TEST(quant_cpu_kernels_vs_reference) {
    const kcase cases[] = {
        { MOE_FORMAT_Q8_0, 0, 0, 37, 352 },        { MOE_FORMAT_Q4_0, 0, 0, 37, 352 },
        { MOE_FORMAT_GGUF_MXFP4, 0, 0, 37, 352 },  { MOE_FORMAT_Q4_K, 0, 0, 37, 768 },
        { MOE_FORMAT_Q6_K, 0, 0, 37, 768 },        { MOE_FORMAT_INT8_W8A8, 0, 0, 37, 200 },
        { MOE_FORMAT_FP8_TENSOR, 0, 0, 37, 200 },  { MOE_FORMAT_FP8_CHANNEL, 0, 0, 37, 200 },
        { MOE_FORMAT_FP8_BLOCK, 0, 0, 133, 300 },  { MOE_FORMAT_MXFP4, 0, 0, 37, 352 },
        { MOE_FORMAT_NVFP4, 0, 0, 37, 336 },
        { MOE_FORMAT_INT4_GPTQ, 32, MOE_FORMAT_F16, 37, 352 },
        { MOE_FORMAT_INT8_GPTQ, 64, MOE_FORMAT_BF16, 37, 384 },
        { MOE_FORMAT_INT4_AWQ, 32, MOE_FORMAT_F16, 40, 352 },
        { MOE_FORMAT_Q8_0, 0, 0, 20, 4096 + 512 }, /* more than one 4096-value chunk */
        { MOE_FORMAT_Q6_K, 0, 0, 20, 4096 + 512 },
        { MOE_FORMAT_NVFP4, 0, 0, 20, 4096 + 512 },
    };
    REQUIRE(moe__cpu_stream_plan_for("AuthenticAMD").streams !=
                moe__cpu_stream_plan_for("GenuineIntel").streams,
            "the two stream plans stream alike: comparing them would test nothing");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_kernel(&cases[i]);
}

/* The FP8 kernels' activation rows against the reference emulation, bit
 * for bit: decoding the stored row (layout documented in gemv-fp8.c: bf16
 * values, each 64 stored as elements 16L + j then 16L + 8 + j, then one f32
 * scale per 128) and multiplying by the group scale must give exactly
 * act_fake_quant_ref's values. Rows hold every e4m3 rounding midpoint,
 * subnormal midpoints, the saturation edges and non-finite values. */
static int fp8_stored_pos(int64_t k) {
    const int e = (int)(k % 64), L = e / 16, j = e % 16;
    return (int)(k / 64 * 64) + (j < 8 ? 8 * L + j : 32 + 8 * L + (j - 8));
}

TEST(quant_cpu_fp8_activation_bitwise) {
    const moe_format fmts[] = { MOE_FORMAT_FP8_BLOCK, MOE_FORMAT_FP8_CHANNEL,
                                MOE_FORMAT_FP8_TENSOR };
    const int64_t K = 1000;
    float *x = malloc(sizeof(float) * K), *want = malloc(sizeof(float) * K);
    test_rng rng = { 23 };
    for (int variant = 0; variant < 4; variant++) {
        for (int64_t k = 0; k < K; k++) {
            /* midpoints between neighbouring e4m3 values (scale 1: a 448 in
             * every group), subnormal ties, random values */
            const uint8_t c = (uint8_t)(k % 126);
            const float lo = moe__e4m3_to_f32(c), hi = moe__e4m3_to_f32((uint8_t)(c + 1));
            x[k] = k % 3 == 0 ? (lo + hi) / 2 : k % 3 == 1 ? test_rng_normal(&rng) * 50 : lo;
            if (k % 7 == 0) x[k] = -x[k];
        }
        for (int64_t k = 0; k < K; k += 128) x[k] = 448.0f;
        x[1] = 464.0f; x[2] = -449.0f; x[4] = 0x1p-10f; x[5] = 0x3p-10f; x[7] = 1e-45f;
        if (variant >= 1) x[300] = NAN;
        if (variant >= 2) x[700] = INFINITY;
        if (variant == 3) /* scales near the clamp */
            for (int64_t k = 0; k < K; k++) x[k] *= 1e-30f;
        for (size_t fi = 0; fi < sizeof fmts / sizeof fmts[0]; fi++) {
            const moe__cpu_format *cf = moe__cpu_format_get(fmts[fi]);
            float one = 1.0f;
            moe__wmat w = { .format = fmts[fi], .rows = 1, .cols = K, .scales = &one,
                            .input_scale = fmts[fi] == MOE_FORMAT_FP8_TENSOR && variant == 0
                                               ? 2.0f : 0 };
            memcpy(want, x, sizeof(float) * K);
            moe__format(fmts[fi])->act_fake_quant_ref(&w, want, K);
            char *xq = aligned_alloc(64, (cf->act_row_bytes(K) + 63) / 64 * 64);
            cf->act_quantize(&w, x, K, xq);
            const uint16_t *xb = (const uint16_t *)xq;
            const float    *sx = (const float *)(xb + (K + 127) / 128 * 128);
            long bad = 0;
            for (int64_t k = 0; k < K; k++) {
                uint32_t u = (uint32_t)xb[fp8_stored_pos(k)] << 16;
                float v;
                memcpy(&v, &u, 4);
                v *= sx[k / 128];
                if (!(isnan(v) && isnan(want[k])) && memcmp(&v, &want[k], 4) && bad++ < 3)
                    test_fail(__FILE__, __LINE__, "%s variant %d: x[%lld] = %a -> %a, reference %a",
                              moe_format_name(fmts[fi]), variant, (long long)k, (double)x[k],
                              (double)v, (double)want[k]);
            }
            CHECK(bad == 0, "%s variant %d: %ld values differ", moe_format_name(fmts[fi]), variant,
                  bad);
            free(xq);
        }
    }
    free(x);
    free(want);
}

/* The GGUF kernels' activation rows against quant.h's reference
 * quantizers, byte for byte (layouts documented in gemv-q8_0.c and
 * gemv-q4k.c). Rows with exact rounding ties (amax 127, so that d = 1),
 * a zero block, a NaN block and a largest magnitude held by both signs. */
static void fill_act_row(float *x, int64_t K, int variant, test_rng *rng) {
    for (int64_t k = 0; k < K; k++) {
        x[k] = variant == 0 ? (float)(k % 255) - 127.0f + (k % 2 ? 0.5f : 0.0f)
                            : test_rng_normal(rng) * (variant == 1 ? 1.0f : 1e-20f);
        if (variant == 0 && k % 32 == 0) x[k] = 127.0f;
    }
    for (int64_t k = 256; k < 512 && k < K; k++) x[k] = 0;          /* zero blocks     */
    if (K > 600) x[600] = NAN;                                       /* a NaN block     */
    if (K > 800) { x[770] = -1000.0f; x[790] = 1000.0f; }            /* tie of signs    */
}

/* bf16 of v, round to nearest even, NaN kept a NaN with its sign: from
 * the two neighbouring bf16 values, by magnitude (not the bit trick the
 * library uses). */
static uint16_t bf16_nearest(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    if (isnan(v)) return (uint16_t)((u >> 16) | 0x40);
    if (isinf(v)) return (uint16_t)(u >> 16);
    const uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u; /* toward zero, away */
    float          fl, fh;
    memcpy(&fl, &lo, 4);
    memcpy(&fh, &hi, 4);
    const double   away = isinf(fh) ? copysign(0x1p128, v) : fh; /* past the largest */
    const double   dl = fabs((double)v - fl), dh = fabs(away - v);
    const bool     up = dh < dl || (dh == dl && ((lo >> 16) & 1));
    return (uint16_t)((up ? hi : lo) >> 16);
}

/* Where an activation row of format f keeps value k as a bf16 word (NULL:
 * an f32 row), from the layouts of gemv-fp4.c (each 128 values with value e
 * at 32 (e % 4) + e / 4) and gemv-wna16.c (AVX-512: 2 bytes a value, each 8
 * with value j at place {0, 4, 2, 6, 1, 5, 3, 7}[j]; else f32 values). */
static const uint16_t *bf16_word_at(moe_format f, const moe__cpu_format *cf, const void *xq,
                                    int64_t K, int64_t k) {
    static const int pos8[8] = { 0, 4, 2, 6, 1, 5, 3, 7 };
    const uint16_t  *w       = xq;
    if (f == MOE_FORMAT_MXFP4 || f == MOE_FORMAT_NVFP4)
        return w + k / 128 * 128 + 32 * (k % 128 % 4) + k % 128 / 4;
    if (cf->act_row_bytes(K) != (size_t)K * 2) return NULL;
    return w + k / 8 * 8 + pos8[k % 8];
}

/* The bf16 activation rows of MXFP4, NVFP4, INT4_GPTQ and INT4_AWQ against
 * bf16_nearest, for random bit patterns (NaN, Inf, denormals, ties) and
 * column counts with and without a partial unit (the 4-bit group formats
 * take K % 32 == 0 only). Zero past cols. A build whose GPTQ/AWQ rows are
 * f32 (no AVX-512) holds the same values as floats. */
TEST(quant_cpu_bf16_activation_bytes) {
    const int64_t Ks[] = { 128, 2048, 200, 2880 + 32 };
    test_rng      rng  = { 31 };
    for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++) {
        const int64_t K = Ks[ki], Kp = (K + 127) / 128 * 128;
        float *x = malloc(sizeof(float) * (size_t)K);
        for (int64_t k = 0; k < K; k++) {
            uint32_t u = (uint32_t)test_rng_u64(&rng);
            if (k % 5 == 1) u = (u & 0xffff0000u) | 0x8000u;  /* a tie                */
            if (k % 11 == 2) u &= 0x807fffffu;                 /* a denormal           */
            memcpy(&x[k], &u, 4);
        }
        if (K > 3) { x[0] = INFINITY; x[1] = -INFINITY; x[2] = NAN; x[3] = 3.3895e38f; }
        const moe_format fmts[] = { MOE_FORMAT_MXFP4, MOE_FORMAT_NVFP4, MOE_FORMAT_INT4_GPTQ,
                                    MOE_FORMAT_INT4_AWQ };
        for (int fi = 0; fi < 4; fi++) {
            const bool group = fmts[fi] == MOE_FORMAT_INT4_GPTQ || fmts[fi] == MOE_FORMAT_INT4_AWQ;
            if (group && K % 32) continue;
            const moe__cpu_format *cf = moe__cpu_format_get(fmts[fi]);
            REQUIRE(cf && cf->act_quantize, "%s: no activation hook", moe_format_name(fmts[fi]));
            moe__wmat w  = { .format = fmts[fi], .rows = 1, .cols = K };
            uint16_t *xb = aligned_alloc(64, (cf->act_row_bytes(K) + 63) / 64 * 64);
            cf->act_quantize(&w, x, K, xb);
            long bad = 0;
            for (int64_t k = 0; k < (group ? K : Kp); k++) {
                const uint16_t  want = k < K ? bf16_nearest(x[k]) : 0;
                const uint16_t *at   = bf16_word_at(fmts[fi], cf, xb, K, k);
                uint32_t        got; /* a bf16 word, or an f32 row's bits (f32 of a bf16) */
                if (at) {
                    got = *at;
                } else {
                    memcpy(&got, (const float *)xb + k, 4);
                    got = (got & 0xffffu) ? 0x10000u : got >> 16; /* 0x10000: no bf16 value */
                }
                if (got != want && bad++ < 3)
                    test_fail(__FILE__, __LINE__, "%s K %lld: x[%lld] = %a -> 0x%04x, want 0x%04x",
                              moe_format_name(fmts[fi]), (long long)K, (long long)k,
                              k < K ? (double)x[k] : 0.0, got, want);
            }
            CHECK(bad == 0, "%s K %lld: %ld words differ", moe_format_name(fmts[fi]),
                  (long long)K, bad);
            free(xb);
        }
        free(x);
    }
}

TEST(quant_cpu_gguf_activation_bytes) {
    const int64_t K = 1024;
    float *x = malloc(sizeof(float) * K);
    test_rng rng = { 29 };
    for (int variant = 0; variant < 3; variant++) {
        fill_act_row(x, K, variant, &rng);
        /* q8_0, q4_0, gguf-mxfp4: a 256-byte record per 128 values (4 blocks):
         * qa[128] (block b's values 0..15 at 16b, 16..31 at 64 + 16b), ns[16]
         * (lane 4b + j: -off * the sum of qa[16b + 4j ..+3] and qa[64 + 16b +
         * 4j ..+3]; off 8 for q4_0, else 128), dl[16] (lane 4b + j: block b's
         * scale, halved for gguf-mxfp4) */
        static const moe_format u4[] = { MOE_FORMAT_Q8_0, MOE_FORMAT_Q4_0,
                                         MOE_FORMAT_GGUF_MXFP4 };
        moe__wmat w = { .rows = 1, .cols = K };
        const moe__cpu_format *cf;
        char *xq;
        long  bad;
        for (int fi = 0; fi < 3; fi++) {
            w.format = u4[fi];
            cf = moe__cpu_format_get(w.format);
            xq = aligned_alloc(64, (cf->act_row_bytes(K) + 63) / 64 * 64);
            cf->act_quantize(&w, x, K, xq);
            const int32_t off = w.format == MOE_FORMAT_Q4_0 ? 8 : 128;
            bad = 0;
            for (int64_t b = 0; b < K / 32; b++) {
                const char    *rec = xq + (b / 4) * 256;
                const int8_t  *qa  = (const int8_t *)rec;
                const int32_t *ns  = (const int32_t *)(rec + 128);
                const float   *dl  = (const float *)(rec + 192);
                const int      bi  = (int)(b % 4);
                moe_block_q8_0 ref;
                moe__quantize_row_q8_0(x + 32 * b, &ref, 32);
                float d = moe__f16_to_f32(ref.d);
                if (w.format == MOE_FORMAT_GGUF_MXFP4) d *= 0.5f;
                if (memcmp(qa + 16 * bi, ref.qs, 16) || memcmp(qa + 64 + 16 * bi, ref.qs + 16, 16))
                    bad++;
                for (int j = 0; j < 4; j++) {
                    const int l = 4 * bi + j;
                    if (!(dl[l] == d || (isnan(d) && isnan(dl[l])))) bad++;
                    int32_t sum = 0;
                    for (int t = 0; t < 4; t++) sum += ref.qs[4 * j + t] + ref.qs[16 + 4 * j + t];
                    if (ns[l] != -off * sum) bad++;
                }
            }
            CHECK(bad == 0, "%s activations, variant %d: %ld mismatches",
                  moe_format_name(w.format), variant, bad);
            free(xq);
        }

        /* q4_k: qa (K, each 128 stored as 0..31, 64..95, 32..63, 96..127),
         * dx (K/256), bs (K/32) */
        cf = moe__cpu_format_get(MOE_FORMAT_Q4_K);
        w.format = MOE_FORMAT_Q4_K;
        xq = aligned_alloc(64, (cf->act_row_bytes(K) + 63) / 64 * 64);
        cf->act_quantize(&w, x, K, xq);
        const int8_t  *qa = (const int8_t *)xq;
        const float   *dx = (const float *)(qa + K);
        const int32_t *bs = (const int32_t *)(dx + K / 256);
        bad = 0;
        for (int64_t b = 0; b < K / 256; b++) {
            moe_block_q8_k ref;
            moe__quantize_row_q8_k(x + 256 * b, &ref, 256);
            if (!(dx[b] == ref.d || (isnan(ref.d) && isnan(dx[b])))) bad++;
            for (int e = 0; e < 256; e++) {
                const int h = e % 128, pos = h < 32 ? h : h < 64 ? h + 32 : h < 96 ? h - 32 : h;
                if (qa[256 * b + e / 128 * 128 + pos] != ref.qs[e]) bad++;
            }
            for (int s = 0; s < 8; s++)
                if (bs[8 * b + s] != ref.bsums[2 * s] + ref.bsums[2 * s + 1]) bad++;
        }
        CHECK(bad == 0, "q4_k activations, variant %d: %ld mismatches", variant, bad);
        free(xq);
    }
    free(x);
}
