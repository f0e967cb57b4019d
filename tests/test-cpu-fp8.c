/*
 * test-cpu-fp8.c - the FP8 CPU kernels (src/cpu/gemv-fp8.c) on shapes the
 * kernel-table test (test-quant-cpu.c) does not reach: K of 2348 (18 whole
 * groups of 128, more than one 16-group block of scale products, and a
 * short last group) and 7168 (DeepSeek-V3's d_model), row counts that are
 * not multiples of the 4 rows computed side by side, 1 to 9 inputs (every
 * register-blocking variant: 4 rows x 1 or 2 inputs, 2 rows x 3 or 4, one
 * row alone), for FP8_TENSOR (dynamic and static input scale), FP8_CHANNEL
 * and FP8_BLOCK:
 *   - every output against the fp64 dot product of the reference
 *     dequantization (dequant_row_ref) with the reference activation
 *     emulation (act_fake_quant_ref), within fp32 summation error:
 *     |y - ref| <= 1e-5 * sum_k |w_k x_k|;
 *   - batch invariance: one input at a time, any input chunk and any row
 *     range [r0, r1) (rows then fall in different 4-row sets and
 *     variants) give the same bits per output as the full call.
 */
#include "test.h"

#include "../src/cpu/cpu-formats.h"
#include "../src/quant/quant.h"

#include <stdlib.h>
#include <string.h>

typedef struct f8case {
    moe_format f;
    int64_t    rows, cols;
    float      input_scale; /* FP8_TENSOR static scale, 0 = dynamic */
} f8case;

static void check_fp8(const f8case *c) {
    const moe__format_traits *t  = moe__format(c->f);
    const moe__cpu_format    *cf = moe__cpu_format_get(c->f);
    const char               *name = t->info.name;
    REQUIRE(cf && cf->act_quantize, "%s: no CPU kernel", name);
    moe__wsizes s;
    char        err[256];
    REQUIRE(t->sizes(c->rows, c->cols, 0, 0, &s, err, sizeof err) == MOE_OK, "%s", err);
    test_rng      rng = { 91 + (uint64_t)c->f + (uint64_t)c->cols };
    const int64_t R = c->rows, K = c->cols, NX = 9;
    float        *src  = malloc(sizeof(float) * (size_t)(R * K));
    void         *data = calloc(1, s.data), *sc = calloc(1, s.scales + 4);
    test_fill_normal(&rng, src, (size_t)(R * K), 0.05f);
    for (int64_t r = 0; r < R; r += 5) /* rows of very different magnitude */
        for (int64_t k = 0; k < K; k++) src[r * K + k] *= 40.0f;
    moe__wmat w = { .format = c->f, .rows = R, .cols = K, .data = data, .scales = sc,
                    .scale2 = 1.0f, .input_scale = c->input_scale };
    REQUIRE(t->quantize_ref(src, &w) == MOE_OK, "%s: quantize", name);

    /* Inputs: kernel form (xq) and reference emulation (xf). */
    float *x  = malloc(sizeof(float) * (size_t)(NX * K));
    float *xf = malloc(sizeof(float) * (size_t)(NX * K));
    test_fill_normal(&rng, x, (size_t)(NX * K), 1.0f);
    for (int64_t k = 0; k < K; k++) x[3 * K + k] *= 1e-6f;          /* a tiny row       */
    for (int64_t k = 0; k < K; k += 128) x[6 * K + k] = 300.0f;     /* an outlier / group */
    memcpy(xf, x, sizeof(float) * (size_t)(NX * K));
    for (int64_t i = 0; i < NX; i++) t->act_fake_quant_ref(&w, xf + i * K, K);
    const size_t xs = (cf->act_row_bytes(K) + 63) / 64 * 64;
    char        *xq = aligned_alloc(64, xs * (size_t)NX);
    for (int64_t i = 0; i < NX; i++) cf->act_quantize(&w, x + i * K, K, xq + (size_t)i * xs);

    /* Reference. */
    double *ref  = malloc(sizeof(double) * (size_t)(NX * R));
    double *mag  = malloc(sizeof(double) * (size_t)(NX * R));
    test_gemm_ref(&w, xf, NX, ref, mag);

    /* Full call, then any row range and input chunk: the same bits. */
    const int64_t ranges[][2] = { { 0, R }, { 1, R }, { 2, 9 }, { 3, R - 1 }, { R - 1, R },
                                  { 5, 6 } };
    const int64_t chunks[] = { 1, 2, 3, 4, 5, NX };
    char          what[64];
    snprintf(what, sizeof what, "%s K %lld", name, (long long)K);
    test_check_gemm(cf, &w, xq, xs, NX, ref, mag, ranges, sizeof ranges / sizeof ranges[0],
                    chunks, sizeof chunks / sizeof chunks[0], what);
    free(src); free(data); free(sc); free(x); free(xf); free(xq);
    free(ref); free(mag);
}

TEST(cpu_fp8_long_rows) {
    const f8case cases[] = {
        { MOE_FORMAT_FP8_BLOCK, 137, 2348, 0 },   { MOE_FORMAT_FP8_CHANNEL, 23, 2348, 0 },
        { MOE_FORMAT_FP8_TENSOR, 23, 2348, 0 },   { MOE_FORMAT_FP8_TENSOR, 23, 2348, 0.02f },
        { MOE_FORMAT_FP8_BLOCK, 21, 7168, 0 },    { MOE_FORMAT_FP8_CHANNEL, 13, 7168, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_fp8(&cases[i]);
}
