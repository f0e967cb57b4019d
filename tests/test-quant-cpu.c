/*
 * test-quant-cpu.c - the CPU kernels of the quantized formats
 * (src/cpu/gemv-*.c) directly, against the scalar reference: every output
 * y[i][r] of gemm(w, r0, r1, ...) must equal, within fp32 summation error,
 * the fp64 dot product of the reference dequantization of row r
 * (dequant_row_ref) with the reference activation emulation of input i
 * (act_fake_quant_ref), for row ranges that start and end anywhere and
 * for 1, 3 and 17 input rows; and it must be bitwise the same whichever
 * range and chunk size computed it (the contract in cpu-formats.h).
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
                    .zeros = s.zeros ? zp : NULL, .scale2 = c->f == MOE_FORMAT_NVFP4 ? 0.01f : 1.0f };
    REQUIRE(t->quantize_ref(src, &w) == MOE_OK, "%s: quantize", name);
    if (c->f == MOE_FORMAT_INT4_GPTQ) { /* act-order lookups, after quantizing */
        g_idx = malloc(sizeof(int32_t) * (size_t)K);
        for (int64_t k = 0; k < K; k++) g_idx[k] = (int32_t)((k * 5) % (K / c->group));
        w.g_idx = g_idx;
    }

    /* Inputs: kernel form (xq) and reference emulation (xf). */
    float *x = malloc(sizeof(float) * (size_t)(NX * K)), *xf = malloc(sizeof(float) * (size_t)(NX * K));
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
    double *ref = malloc(sizeof(double) * (size_t)(NX * R)), *mag = malloc(sizeof(double) * (size_t)(NX * R));
    float *wrow = malloc(sizeof(float) * (size_t)K);
    for (int64_t r = 0; r < R; r++) {
        t->dequant_row_ref(&w, r, wrow);
        for (int64_t i = 0; i < NX; i++) {
            double a = 0, m = 0;
            for (int64_t k = 0; k < K; k++) {
                a += (double)wrow[k] * xf[i * K + k];
                m += fabs((double)wrow[k] * xf[i * K + k]);
            }
            ref[i * R + r] = a;
            mag[i * R + r] = m;
        }
    }

    /* Full call, then ranges and chunk sizes. */
    float *full = malloc(sizeof(float) * (size_t)(NX * R)), *part = malloc(sizeof(float) * (size_t)(NX * R));
    cf->gemm(&w, 0, R, xq, xs, NX, full, R);
    long bad = 0;
    for (int64_t i = 0; i < NX; i++)
        for (int64_t r = 0; r < R; r++) {
            double d = fabs((double)full[i * R + r] - ref[i * R + r]);
            if (!(d <= 1e-5 * mag[i * R + r] + 1e-30) && bad++ < 3)
                test_fail(__FILE__, __LINE__, "%s: y[%lld][%lld] = %.9g, ref %.9g", name,
                          (long long)i, (long long)r, full[i * R + r], ref[i * R + r]);
        }
    CHECK(bad == 0, "%s: %ld outputs off the reference", name, bad);
    const int64_t ranges[][2] = { { 0, 1 }, { 3, 11 }, { 5, R }, { R - 1, R }, { 1, R - 2 } };
    const int64_t chunks[] = { 1, 3, NX };
    for (size_t ri = 0; ri < sizeof ranges / sizeof ranges[0]; ri++) {
        const int64_t r0 = ranges[ri][0], r1 = ranges[ri][1];
        for (size_t ci = 0; ci < sizeof chunks / sizeof chunks[0]; ci++) {
            for (int64_t i0 = 0; i0 < NX; i0 += chunks[ci]) {
                int64_t n = NX - i0 < chunks[ci] ? NX - i0 : chunks[ci];
                for (int64_t j = 0; j < n * (r1 - r0); j++) part[j] = NAN;
                cf->gemm(&w, r0, r1, xq + (size_t)i0 * xs, xs, n, part, r1 - r0);
                for (int64_t i = 0; i < n; i++)
                    for (int64_t r = r0; r < r1; r++)
                        if (memcmp(&part[i * (r1 - r0) + (r - r0)], &full[(i0 + i) * R + r], 4)) {
                            test_fail(__FILE__, __LINE__, "%s: rows [%lld, %lld), %lld inputs: "
                                      "y[%lld][%lld] differs from the full call", name,
                                      (long long)r0, (long long)r1, (long long)n,
                                      (long long)(i0 + i), (long long)r);
                            goto next;
                        }
            }
        next:;
        }
    }
    free(src); free(data); free(sc); free(zp); free(g_idx); free(x); free(xf); free(xq);
    free(ref); free(mag); free(wrow); free(full); free(part);
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
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_kernel(&cases[i]);
}
