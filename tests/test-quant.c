/*
 * test-quant.c - the quantized formats' reference: element conversions and
 * block dequantization bit-exact against ml_dtypes and llama.cpp's gguf
 * package (golden files from tests/python/gen_quant.py), edge values of the
 * saturation and scale rules, creation errors, and quantize -> dequantize
 * round trips within each format's error bound.
 *
 * Golden comparison: each item's (block's) f32 values are hashed with NaN
 * canonicalized, so NaN compares as a class and everything else bitwise. The
 * generator feeds arbitrary bytes: every bit pattern is compared, including
 * NaN/Inf f16 scales and e8m0 0xFF, because our dequantizers define all of
 * them the way the independent implementation does (the validate hooks
 * reject the invalid ones at creation, tested below). Conversions to e4m3
 * compare |x| <= 464 only: beyond it ml_dtypes gives NaN and we saturate to
 * 448 by design (N8), checked by quant_fp8_edges.
 */
#include "test.h"

#include "../src/quant/quant.h"

#include <float.h>
#include <stdlib.h>
#include <string.h>

/* ===== Golden files ===== */

typedef struct golden {
    uint8_t  *buf;
    uint64_t  n_in, n_items, n_vals, n_full;
    const uint8_t  *in;
    const uint64_t *hash;
    const float    *full;
} golden;

static bool golden_load(const char *name, golden *g) {
    char path[512];
    snprintf(path, sizeof path, "%s/quant_%s.bin", test_data_dir(), name);
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    memset(g, 0, sizeof *g);
    g->buf = malloc((size_t)size);
    bool ok = g->buf && fread(g->buf, 1, (size_t)size, f) == (size_t)size && size >= 40 &&
              !memcmp(g->buf, "MOEQTD01", 8);
    fclose(f);
    if (ok) {
        memcpy(&g->n_in, g->buf + 8, 8);
        memcpy(&g->n_items, g->buf + 16, 8);
        memcpy(&g->n_vals, g->buf + 24, 8);
        memcpy(&g->n_full, g->buf + 32, 8);
        ok = 40 + g->n_in + 8 * g->n_items + 4 * g->n_full * g->n_vals == (uint64_t)size;
        g->in   = g->buf + 40;
        g->hash = (const uint64_t *)(g->in + g->n_in);
        g->full = (const float *)(g->in + g->n_in + 8 * g->n_items);
    }
    if (!ok) {
        free(g->buf);
        g->buf = NULL;
        test_fail(__FILE__, __LINE__, "%s: malformed golden file", path);
    }
    return ok;
}

static uint64_t fnv_f32(const float *v, uint64_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        if (isnan(v[i])) u = 0x7fc00000u;
        for (int b = 0; b < 4; b++) h = (h ^ ((u >> (8 * b)) & 0xffu)) * 0x100000001b3ull;
    }
    return h;
}

/* Produces item i's values into out (n_vals). */
typedef void (*item_fn)(const golden *g, uint64_t i, float *out);

static bool same_f32(float a, float b) {
    return (isnan(a) && isnan(b)) || !memcmp(&a, &b, 4);
}

static void golden_run(const char *name, uint64_t min_items, item_fn fn) {
    golden g;
    if (!golden_load(name, &g)) TEST_SKIP("no golden data quant_%s.bin in %s (run make testdata)",
                                          name, test_data_dir());
    CHECK(g.n_items >= min_items, "%s: only %llu items", name, (unsigned long long)g.n_items);
    float *out = calloc(g.n_vals, sizeof(float));
    uint64_t bad = 0;
    for (uint64_t i = 0; i < g.n_items; i++) {
        fn(&g, i, out);
        if (fnv_f32(out, g.n_vals) == g.hash[i]) continue;
        if (bad++ < 5) {
            if (i < g.n_full) {
                for (uint64_t j = 0; j < g.n_vals; j++) {
                    float want = g.full[i * g.n_vals + j];
                    if (!same_f32(out[j], want)) {
                        test_fail(__FILE__, __LINE__, "%s item %llu value %llu: got %a want %a",
                                  name, (unsigned long long)i, (unsigned long long)j,
                                  (double)out[j], (double)want);
                        break;
                    }
                }
            } else {
                test_fail(__FILE__, __LINE__, "%s item %llu differs (hash)", name,
                          (unsigned long long)i);
            }
        }
    }
    CHECK(bad == 0, "%s: %llu of %llu items differ", name, (unsigned long long)bad,
          (unsigned long long)g.n_items);
    free(out);
    free(g.buf);
}

static void dec_e4m3(const golden *g, uint64_t i, float *o) { o[0] = moe__e4m3_to_f32(g->in[i]); }
static void dec_e8m0(const golden *g, uint64_t i, float *o) { o[0] = moe__e8m0_to_f32(g->in[i]); }
static void dec_e2m1(const golden *g, uint64_t i, float *o) { o[0] = moe__e2m1_to_f32(g->in[i]); }

static float in_f32(const golden *g, uint64_t i) {
    float x;
    memcpy(&x, g->in + 4 * i, 4);
    return x;
}
static void enc_e4m3(const golden *g, uint64_t i, float *o) {
    o[0] = moe__e4m3_to_f32(moe__f32_to_e4m3(in_f32(g, i)));
}
static void enc_e2m1(const golden *g, uint64_t i, float *o) {
    o[0] = moe__e2m1_to_f32(moe__f32_to_e2m1(in_f32(g, i)));
}

TEST(quant_golden_e4m3) {
    golden_run("e4m3_decode", 256, dec_e4m3);
    golden_run("e4m3_encode", 100000, enc_e4m3);
}
TEST(quant_golden_e8m0) { golden_run("e8m0_decode", 256, dec_e8m0); }
TEST(quant_golden_e2m1) {
    golden_run("e2m1_decode", 16, dec_e2m1);
    golden_run("e2m1_encode", 100000, enc_e2m1);
}

/* One block as a one-row matrix of format f, dequantized through the table. */
static void dequant_block(moe_format f, int64_t cols, const void *data, const void *scales,
                          float scale2, float *out) {
    moe__wmat w = { .format = f, .rows = 1, .cols = cols, .data = data, .scales = scales,
                    .scale2 = scale2 };
    moe__format(f)->dequant_row_ref(&w, 0, out);
}

static void blk_mxfp4(const golden *g, uint64_t i, float *o) {
    const uint8_t *b = g->in + 17 * i;
    dequant_block(MOE_FORMAT_MXFP4, 32, b, b + 16, 1.0f, o);
}
static void blk_nvfp4(const golden *g, uint64_t i, float *o) {
    const uint8_t *b = g->in + 13 * i; /* 8 data bytes, e4m3 scale, f32 global scale */
    float s2;
    memcpy(&s2, b + 9, 4);
    dequant_block(MOE_FORMAT_NVFP4, 16, b, b + 8, s2, o);
}

static moe_format g_fmt; /* the GGUF format item functions decode */

static void blk_gguf(const golden *g, uint64_t i, float *o) {
    const moe__format_traits *t = moe__format(g_fmt);
    dequant_block(g_fmt, t->info.block_elems, g->in + (size_t)i * (size_t)t->info.block_bytes,
                  NULL, 1.0f, o);
}

static void quant_gguf(const golden *g, uint64_t i, float *o) {
    const moe__format_traits *t = moe__format(g_fmt);
    uint8_t blk[64];
    moe__wmat w = { .format = g_fmt, .rows = 1, .cols = 32, .data = blk, .scale2 = 1.0f };
    CHECK_STATUS(t->quantize_ref((const float *)g->in + 32 * i, &w), MOE_OK);
    for (int j = 0; j < t->info.block_bytes; j++) o[j] = blk[j];
}

TEST(quant_golden_mxfp4) { golden_run("mxfp4", 100000, blk_mxfp4); }
TEST(quant_golden_nvfp4) { golden_run("nvfp4", 100000, blk_nvfp4); }
TEST(quant_golden_gguf_q8_0) { g_fmt = MOE_FORMAT_Q8_0; golden_run("q8_0", 100000, blk_gguf); }
TEST(quant_golden_gguf_q4_0) { g_fmt = MOE_FORMAT_Q4_0; golden_run("q4_0", 100000, blk_gguf); }
TEST(quant_golden_gguf_q4_k) { g_fmt = MOE_FORMAT_Q4_K; golden_run("q4_k", 100000, blk_gguf); }
TEST(quant_golden_gguf_q6_k) { g_fmt = MOE_FORMAT_Q6_K; golden_run("q6_k", 100000, blk_gguf); }
TEST(quant_golden_gguf_mxfp4) {
    g_fmt = MOE_FORMAT_GGUF_MXFP4;
    golden_run("gguf_mxfp4", 100000, blk_gguf);
}
/* Our Q8_0 / Q4_0 quantizers write the same bytes as gguf's (which follow
 * ggml's quantize_row_*_ref). */
TEST(quant_golden_gguf_quantize) {
    g_fmt = MOE_FORMAT_Q8_0;
    golden_run("q8_0_quant", 10000, quant_gguf);
    g_fmt = MOE_FORMAT_Q4_0;
    golden_run("q4_0_quant", 10000, quant_gguf);
}

/* ===== Edge values ===== */

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

TEST(quant_fp8_edges) {
    struct { float x; uint8_t want; } c[] = {
        { 448.0f, 0x7e }, { 449.0f, 0x7e }, { 464.0f, 0x7e }, { 465.0f, 0x7e }, { 480.0f, 0x7e },
        { FLT_MAX, 0x7e }, { INFINITY, 0x7e }, { -INFINITY, 0xfe }, { -449.0f, 0xfe },
        { 416.0f, 0x7d }, { 432.0f, 0x7e },             /* tie 416|448 -> even (448) */
        { 0x1p-9f, 0x01 }, { 0x1p-10f, 0x00 },          /* smallest subnormal; tie -> 0 */
        { 0x3p-10f, 0x02 }, { 0x7p-10f, 0x04 },         /* 1.5 -> 2, 3.5 -> 4 (even) */
        { 0x1.ep-7f, 0x08 },                            /* 7.5 * 2^-9 rounds up to 2^-6 */
        { 6.3e-38f, 0x00 }, { -6.3e-38f, 0x80 }, { 1e-45f, 0x00 },
        { 0.0f, 0x00 }, { -0.0f, 0x80 }, { 1.0f, 0x38 }, { -2.0f, 0xc0 },
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        uint8_t q = moe__f32_to_e4m3(c[i].x);
        CHECK(q == c[i].want, "e4m3(%a) = 0x%02x, want 0x%02x", (double)c[i].x, q, c[i].want);
    }
    CHECK((moe__f32_to_e4m3(NAN) & 0x7f) == 0x7f, "NaN must stay NaN");
    CHECK(isnan(moe__e4m3_to_f32(0x7f)) && isnan(moe__e4m3_to_f32(0xff)), "0x7f/0xff are NaN");
    CHECK(moe__e4m3_to_f32(0x7e) == 448.0f && moe__e4m3_to_f32(0x01) == 0x1p-9f, "decode");
    CHECK(moe__e8m0_to_f32(0x00) == 0x1p-127f, "e8m0 0x00 = 2^-127");
    CHECK(isnan(moe__e8m0_to_f32(0xff)), "e8m0 0xFF = NaN");
    CHECK(moe__e8m0_to_f32(127) == 1.0f && moe__e8m0_to_f32(254) == 0x1p127f, "e8m0 values");
    CHECK(moe__e8m0_to_f32_half(0) == 0x1p-128f && moe__e8m0_to_f32_half(0xff) == 0x1p127f,
          "ggml e8m0 half");
    CHECK(moe__f32_to_e2m1(7.0f) == 7 && moe__f32_to_e2m1(-INFINITY) == 15 &&
          moe__f32_to_e2m1(-0.0f) == 8, "e2m1 saturation and sign");
    (void)bits_f32;
}

/* Activation emulation: saturation, tiny groups and non-finite inputs. */
TEST(quant_act_fake_quant_edges) {
    moe__wmat w = { .format = MOE_FORMAT_FP8_BLOCK };
    float x[256];
    for (int i = 0; i < 256; i++) x[i] = 6.3e-38f * (float)(i % 7 - 3);
    moe__fp8_block_act_fake_quant_ref(&w, x, 256);
    CHECK(test_find_nan(x, 256) < 0, "dormant group must not give NaN");

    for (int i = 0; i < 256; i++) x[i] = (float)(i - 128) / 16;
    x[5] = NAN;
    x[200] = INFINITY;
    moe__fp8_block_act_fake_quant_ref(&w, x, 256);
    CHECK(isnan(x[5]) && isnan(x[200]), "non-finite inputs must stay non-finite (NaN)");

    /* Static FP8_TENSOR input scale: values beyond 448 * s saturate. */
    moe__wmat wt = { .format = MOE_FORMAT_FP8_TENSOR, .input_scale = 0.5f };
    float y[4] = { 1000.0f, -1000.0f, 224.0f, 0.25f };
    moe__fp8_tensor_act_fake_quant_ref(&wt, y, 4);
    CHECK(y[0] == 224.0f && y[1] == -224.0f && y[2] == 224.0f && y[3] == 0.25f,
          "static scale: %g %g %g %g", y[0], y[1], y[2], y[3]);

    /* Int8 paths: a NaN anywhere makes the whole group NaN (the kernels
     * carry it through the scale). */
    float z[64];
    for (int i = 0; i < 64; i++) z[i] = (float)i;
    z[3] = NAN;
    moe__q8_0_act_fake_quant_ref(NULL, z, 64);
    CHECK(isnan(z[0]) && isnan(z[31]) && !isnan(z[32]), "q8_0: NaN block");
    float q8[256];
    for (int i = 0; i < 256; i++) q8[i] = 0;
    moe__q8_k_act_fake_quant_ref(NULL, q8, 256);
    CHECK(q8[0] == 0 && q8[255] == 0, "q8_K zero block");
    for (int i = 0; i < 256; i++) q8[i] = (float)(i - 100);
    moe__q8_k_act_fake_quant_ref(NULL, q8, 256);
    CHECK(q8[100] == 0 && fabsf(q8[0] + 100) < 0.5f && fabsf(q8[255] - 155) < 0.5f, "q8_K values");
}

TEST(quant_fp8_merge_w13) {
    /* gate quantized with 0.5, up with 2: gate is requantized to scale 2. */
    uint8_t w[2 * 2 * 3];
    float   v[12] = { 1, -2, 3, 0.25f, 100, 0, 8, 16, -32, 0.5f, 1, 2 };
    for (int i = 0; i < 6; i++) w[i] = moe__f32_to_e4m3(v[i] / 0.5f);
    for (int i = 6; i < 12; i++) w[i] = moe__f32_to_e4m3(v[i] / 2.0f);
    float s = 0;
    char err[128];
    CHECK_STATUS(moe__fp8_merge_w13_scales(w, 2, 3, 0.5f, 2.0f, &s, err, sizeof err), MOE_OK);
    CHECK(s == 2.0f, "merged scale %g", s);
    for (int i = 0; i < 12; i++) {
        float got = moe__e4m3_to_f32(w[i]) * s;
        CHECK(fabsf(got - v[i]) <= 0.0625f * fabsf(v[i]) + 2.0f * 0x1p-10f, "w[%d] %g vs %g", i,
              got, v[i]);
    }
    CHECK_STATUS(moe__fp8_merge_w13_scales(w, 2, 3, NAN, 2.0f, &s, err, sizeof err), MOE_ERR_SCALE);
    CHECK_STATUS(moe__fp8_merge_w13_scales(w, 2, 3, 1.0f, 0.0f, &s, err, sizeof err),
                 MOE_ERR_SCALE);
}

/* ===== Formats under test: how to build a valid one-expert weight set ===== */

typedef struct fmt_case {
    moe_format f;
    int32_t    group;      /* group formats */
    double     rt_nmse;    /* round-trip bound on randn data (relative MSE)      */
} fmt_case;

/* Round-trip NMSE bounds: a uniform quantizer of step D has RMS error
 * D / sqrt(12). fp8: relative half-ulp 2^-4 -> NMSE <= 2^-8 / 3 ~ 1.3e-3.
 * int8 (step amax/127 ~ 4 sigma / 127 over a row/block): ~1e-4. 4-bit
 * integer with a group range of ~5 sigma in 15 steps: ~1e-2. e2m1 with 1
 * mantissa bit: relative half-step up to 1/4 -> ~1.5e-2 (plus saturation of
 * the OCP shared exponent). */
static const fmt_case g_cases[] = {
    { MOE_FORMAT_FP8_TENSOR, 0, 2e-3 },  { MOE_FORMAT_FP8_CHANNEL, 0, 2e-3 },
    { MOE_FORMAT_FP8_BLOCK, 0, 2e-3 },   { MOE_FORMAT_INT8_W8A8, 0, 2e-4 },
    { MOE_FORMAT_INT4_GPTQ, 64, 1.5e-2 }, { MOE_FORMAT_INT4_AWQ, 32, 1e-2 },
    { MOE_FORMAT_INT8_GPTQ, 128, 2e-4 }, { MOE_FORMAT_MXFP4, 0, 3e-2 },
    { MOE_FORMAT_NVFP4, 0, 1.5e-2 },     { MOE_FORMAT_Q8_0, 0, 1e-4 },
    { MOE_FORMAT_Q4_0, 0, 1.5e-2 },      { MOE_FORMAT_Q4_K, 0, 1.5e-2 },
    { MOE_FORMAT_Q6_K, 0, 1e-3 },        { MOE_FORMAT_GGUF_MXFP4, 0, 3e-2 },
};
#define N_CASES (sizeof g_cases / sizeof g_cases[0])

/* One matrix quantized by the reference, with owned tables. */
typedef struct qmat {
    moe__wmat w;
    void     *data, *scales, *zeros;
} qmat;

static moe_status qmat_make(const fmt_case *c, int64_t rows, int64_t cols, const float *src,
                            qmat *m) {
    const moe__format_traits *t = moe__format(c->f);
    moe__wsizes s;
    char err[256];
    memset(m, 0, sizeof *m);
    moe_status st = t->sizes(rows, cols, c->group, MOE_FORMAT_F16, &s, err, sizeof err);
    if (st) return st;
    m->data   = calloc(1, s.data + 64);
    m->scales = calloc(1, s.scales + 64);
    m->zeros  = calloc(1, s.zeros + 64);
    m->w = (moe__wmat){ .format = c->f, .rows = rows, .cols = cols, .group_size = c->group,
                        .scale_format = MOE_FORMAT_F16, .data = m->data,
                        .scales = s.scales ? m->scales : NULL, .zeros = s.zeros ? m->zeros : NULL,
                        .scale2 = 1.0f };
    if (c->f == MOE_FORMAT_NVFP4) {
        /* ModelOpt's global scale: the largest block scale lands on 448. */
        float amax = 0;
        for (int64_t i = 0; i < rows * cols; i++) amax = fmaxf(amax, fabsf(src[i]));
        if (amax > 0 && isfinite(amax)) m->w.scale2 = amax / (6.0f * 448.0f);
    }
    return t->quantize_ref(src, &m->w);
}

static void qmat_free(qmat *m) {
    free(m->data);
    free(m->scales);
    free(m->zeros);
}

TEST(quant_round_trip) {
    test_rng rng = { 7 };
    const int64_t rows = 24, cols = 512;
    float *src = malloc(sizeof(float) * rows * cols), *out = malloc(sizeof(float) * cols);
    test_fill_normal(&rng, src, (size_t)(rows * cols), 1.0f);
    for (int64_t k = 0; k < cols; k++) src[5 * cols + k] *= 1e-3f; /* a small row */
    for (size_t ci = 0; ci < N_CASES; ci++) {
        const fmt_case *c = &g_cases[ci];
        const moe__format_traits *t = moe__format(c->f);
        qmat m;
        moe_status st = qmat_make(c, rows, cols, src, &m);
        CHECK(st == MOE_OK, "%s: quantize_ref: %s", t->info.name, moe_status_name(st));
        if (st) { qmat_free(&m); continue; }
        char err[256] = "";
        if (t->validate) {
            st = t->validate(&m.w, err, sizeof err);
            CHECK(st == MOE_OK, "%s: own output fails validation: %s", t->info.name, err);
        }
        double num = 0, den = 0, num_small = 0, den_small = 0;
        for (int64_t r = 0; r < rows; r++) {
            t->dequant_row_ref(&m.w, r, out);
            for (int64_t k = 0; k < cols; k++) {
                double d = (double)out[k] - src[r * cols + k], x = src[r * cols + k];
                if (r == 5) { num_small += d * d; den_small += x * x; }
                else        { num += d * d; den += x * x; }
            }
        }
        CHECK(num / den <= c->rt_nmse, "%s: round-trip NMSE %.3g > %.3g", t->info.name, num / den,
              c->rt_nmse);
        /* Per-tensor scales cannot follow one small row; every other format
         * has scales local enough to keep the small row's relative error. */
        if (c->f != MOE_FORMAT_FP8_TENSOR && c->f != MOE_FORMAT_FP8_BLOCK)
            CHECK(num_small / den_small <= c->rt_nmse, "%s: small row NMSE %.3g", t->info.name,
                  num_small / den_small);
        qmat_free(&m);
    }
    free(src);
    free(out);
}

TEST(quant_zero_blocks) {
    const int64_t rows = 8, cols = 256;
    float *src = calloc((size_t)(rows * cols), sizeof(float)), out[256];
    for (size_t ci = 0; ci < N_CASES; ci++) {
        const moe__format_traits *t = moe__format(g_cases[ci].f);
        qmat m;
        moe_status st = qmat_make(&g_cases[ci], rows, cols, src, &m);
        CHECK(st == MOE_OK, "%s: zero matrix: %s", t->info.name, moe_status_name(st));
        char err[256] = "";
        if (!st && t->validate) {
            st = t->validate(&m.w, err, sizeof err);
            CHECK(st == MOE_OK, "%s: zero matrix fails validation: %s", t->info.name, err);
        }
        for (int64_t r = 0; !st && r < rows; r++) {
            t->dequant_row_ref(&m.w, r, out);
            for (int64_t k = 0; k < cols; k++)
                if (out[k] != 0) {
                    test_fail(__FILE__, __LINE__, "%s: zero block dequantizes to %g", t->info.name,
                              out[k]);
                    break;
                }
        }
        qmat_free(&m);
    }
    /* Non-finite weights are refused by every quantizer. */
    src[17] = NAN;
    for (size_t ci = 0; ci < N_CASES; ci++) {
        qmat m;
        CHECK_STATUS(qmat_make(&g_cases[ci], rows, cols, src, &m), MOE_ERR_INVALID_ARG);
        qmat_free(&m);
    }
    free(src);
}

/* ===== Creation errors through the public API ===== */

/* Builds one-expert options of format c with d_model x d_ff quantized from
 * randn; the tables are malloc'd into bufs[0..] (caller frees). */
static moe_status make_opts(const fmt_case *c, int64_t d_model, int64_t d_ff,
                            moe_experts_options *o, void *bufs[6], char *err, size_t errlen) {
    memset(o, 0, sizeof *o);
    memset(bufs, 0, 6 * sizeof(void *));
    o->n_experts = 1;
    o->d_model = d_model;
    o->d_ff = d_ff;
    o->format = c->f;
    o->group_size = c->group;
    o->scale_format = MOE_FORMAT_F16;
    moe_quant_sizes s13, s2;
    moe_status st;
    if ((st = moe_quant_sizes_get(c->f, 2 * d_ff, d_model, c->group, MOE_FORMAT_F16, &s13, err,
                                  errlen)) ||
        (st = moe_quant_sizes_get(c->f, d_model, d_ff, c->group, MOE_FORMAT_F16, &s2, err, errlen)))
        return st;
    test_rng rng = { 3 };
    size_t n = (size_t)(2 * d_ff * d_model);
    float *src = malloc(sizeof(float) * n);
    test_fill_normal(&rng, src, n, 0.1f);
    bufs[0] = calloc(1, s13.data + 1); bufs[1] = calloc(1, s13.scales + 1);
    bufs[2] = calloc(1, s13.zeros + 1);
    bufs[3] = calloc(1, s2.data + 1);  bufs[4] = calloc(1, s2.scales + 1);
    bufs[5] = calloc(1, s2.zeros + 1);
    if (!(st = moe_quantize(c->f, 2 * d_ff, d_model, c->group, MOE_FORMAT_F16, src, bufs[0],
                            bufs[1], bufs[2], err, errlen)))
        st = moe_quantize(c->f, d_model, d_ff, c->group, MOE_FORMAT_F16, src, bufs[3], bufs[4],
                          bufs[5], err, errlen);
    free(src);
    o->w13 = (moe_weights){ .data = bufs[0], .scales = s13.scales ? bufs[1] : NULL,
                            .zeros = s13.zeros ? bufs[2] : NULL };
    o->w2  = (moe_weights){ .data = bufs[3], .scales = s2.scales ? bufs[4] : NULL,
                            .zeros = s2.zeros ? bufs[5] : NULL };
    return st;
}

static void free_bufs(void *bufs[6]) {
    for (int i = 0; i < 6; i++) free(bufs[i]);
}

static moe_status create(const moe_experts_options *o, char *err, size_t errlen) {
    moe_routed_experts *e = NULL;
    moe_status st = moe_routed_experts_create(o, &e, err, errlen);
    moe_routed_experts_destroy(e);
    return st;
}

TEST(quant_create_valid_all_formats) {
    for (size_t ci = 0; ci < N_CASES; ci++) {
        moe_experts_options o;
        void *bufs[6];
        char err[256] = "";
        moe_status st = make_opts(&g_cases[ci], 256, 256, &o, bufs, err, sizeof err);
        if (!st) st = create(&o, err, sizeof err);
        CHECK(st == MOE_OK, "%s: %s: %s", moe_format_name(g_cases[ci].f), moe_status_name(st), err);
        free_bufs(bufs);
    }
}

TEST(quant_k_not_multiple_is_shape_error) {
    struct { moe_format f; int32_t group; int64_t k; } c[] = {
        { MOE_FORMAT_Q8_0, 0, 48 },       { MOE_FORMAT_Q4_0, 0, 100 },
        { MOE_FORMAT_Q4_K, 0, 384 },      { MOE_FORMAT_Q6_K, 0, 128 },
        { MOE_FORMAT_GGUF_MXFP4, 0, 40 }, { MOE_FORMAT_MXFP4, 0, 48 },
        { MOE_FORMAT_NVFP4, 0, 24 },      { MOE_FORMAT_INT4_GPTQ, 128, 192 },
        { MOE_FORMAT_INT4_AWQ, 64, 96 },  { MOE_FORMAT_INT8_GPTQ, 32, 48 },
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        moe_quant_sizes s;
        char err[256] = "";
        moe_status st = moe_quant_sizes_get(c[i].f, 64, c[i].k, c[i].group, MOE_FORMAT_F16, &s, err,
                                            sizeof err);
        CHECK(st == MOE_ERR_SHAPE && strstr(err, "multiple"), "%s K=%lld: %s (%s)",
              moe_format_name(c[i].f), (long long)c[i].k, moe_status_name(st), err);
        /* Through creation too (d_model = K of W13). */
        uint8_t dummy[64] = { 0 };
        moe_experts_options o = { .n_experts = 1, .d_model = c[i].k, .d_ff = 256,
                                  .format = c[i].f, .group_size = c[i].group,
                                  .scale_format = MOE_FORMAT_F16,
                                  .w13 = { .data = dummy, .scales = dummy },
                                  .w2 = { .data = dummy, .scales = dummy },
                                  .flags = MOE_EXPERTS_BORROW };
        CHECK_STATUS(create(&o, err, sizeof err), MOE_ERR_SHAPE);
    }
    /* FP8_BLOCK takes any K: its scale table is ceil-sized. AWQ rows % 8. */
    moe_quant_sizes s;
    CHECK_STATUS(moe_quant_sizes_get(MOE_FORMAT_FP8_BLOCK, 200, 300, 0, 0, &s, NULL, 0), MOE_OK);
    CHECK(s.scales == 2 * 3 * 4, "fp8-block scales %zu", s.scales);
    CHECK_STATUS(moe_quant_sizes_get(MOE_FORMAT_INT4_AWQ, 12, 64, 32, MOE_FORMAT_F16, &s, NULL, 0),
                 MOE_ERR_SHAPE);
    CHECK_STATUS(moe_quant_sizes_get(MOE_FORMAT_INT4_GPTQ, 12, 64, 48, MOE_FORMAT_F16, &s, NULL, 0),
                 MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_quant_sizes_get(MOE_FORMAT_INT4_GPTQ, 12, 64, 32, MOE_FORMAT_F32, &s, NULL, 0),
                 MOE_ERR_INVALID_ARG);
}

/* Corrupts one scale of a valid weight set and expects MOE_ERR_SCALE (or
 * `want`) with the position in the message. */
static void expect_bad(moe_format f, int32_t group, void (*corrupt)(moe_experts_options *o),
                       moe_status want, const char *what) {
    fmt_case c = { f, group, 0 };
    moe_experts_options o;
    void *bufs[6];
    char err[256] = "";
    moe_status st = make_opts(&c, 256, 256, &o, bufs, err, sizeof err);
    REQUIRE(st == MOE_OK, "%s: %s", what, err);
    corrupt(&o);
    st = create(&o, err, sizeof err);
    CHECK(st == want, "%s: got %s (%s)", what, moe_status_name(st), err);
    bool global = strstr(what, "global") || strstr(what, "input");
    CHECK(st != MOE_ERR_SCALE || (strstr(err, "expert 0") && (global || strstr(err, "row"))),
          "%s: message must name the expert and row: %s", what, err);
    free_bufs(bufs);
}

static float g_bad = 0;
static void set_f32_scale(moe_experts_options *o) { ((float *)o->w2.scales)[3] = g_bad; }
static void set_e8m0_ff(moe_experts_options *o) { ((uint8_t *)o->w13.scales)[9] = 0xff; }
static void set_e4m3_nan(moe_experts_options *o) { ((uint8_t *)o->w13.scales)[9] = 0x7f; }
static void set_e4m3_zero(moe_experts_options *o) { ((uint8_t *)o->w13.scales)[9] = 0x00; }
static void set_e4m3_neg(moe_experts_options *o) { ((uint8_t *)o->w13.scales)[9] = 0xb8; }
static float g_scale2[1];
static void set_scale2(moe_experts_options *o) { o->w13.scale2 = g_scale2; }
static void set_f16_zero(moe_experts_options *o) { ((uint16_t *)o->w13.scales)[5] = 0; }
static void set_f16_inf(moe_experts_options *o) { ((uint16_t *)o->w2.scales)[5] = 0x7c00; }
static int32_t g_gidx[256];
static void set_gidx(moe_experts_options *o) {
    for (int i = 0; i < 256; i++) g_gidx[i] = i / 64;
    g_gidx[100] = 4; /* 256 / 64 = 4 groups: 4 is out of range */
    o->w13.g_idx = g_gidx;
}
static void set_q8_0_inf(moe_experts_options *o) { ((uint16_t *)o->w13.data)[17 * 3] = 0x7c00; }
static void set_q4_k_dmin_nan(moe_experts_options *o) {
    ((uint16_t *)o->w2.data)[72 * 0 + 1] = 0x7e01;
}
static void set_gguf_mxfp4_ff(moe_experts_options *o) { ((uint8_t *)o->w13.data)[17 * 2] = 0xff; }
static float g_in_scale[1];
static void set_input_scale(moe_experts_options *o) { o->w13.input_scale = g_in_scale; }

TEST(quant_scale_validation) {
    float bad[] = { NAN, INFINITY, -INFINITY, 0.0f, -1.0f };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        g_bad = bad[i];
        expect_bad(MOE_FORMAT_FP8_CHANNEL, 0, set_f32_scale, MOE_ERR_SCALE, "fp8-channel scale");
        expect_bad(MOE_FORMAT_FP8_BLOCK, 0, set_f32_scale, MOE_ERR_SCALE, "fp8-block scale");
        expect_bad(MOE_FORMAT_INT8_W8A8, 0, set_f32_scale, MOE_ERR_SCALE, "int8 scale");
        g_scale2[0] = bad[i];
        expect_bad(MOE_FORMAT_NVFP4, 0, set_scale2, MOE_ERR_SCALE, "nvfp4 global scale");
        if (bad[i] != 0) { /* 0 = dynamic */
            g_in_scale[0] = bad[i];
            expect_bad(MOE_FORMAT_FP8_TENSOR, 0, set_input_scale, MOE_ERR_SCALE, "input scale");
        }
    }
    g_bad = 0x1p-140f; /* subnormal weight scales are exact multipliers: accepted */
    expect_bad(MOE_FORMAT_FP8_CHANNEL, 0, set_f32_scale, MOE_OK, "fp8 subnormal scale");
    expect_bad(MOE_FORMAT_MXFP4, 0, set_e8m0_ff, MOE_ERR_SCALE, "mxfp4 e8m0 0xFF");
    expect_bad(MOE_FORMAT_NVFP4, 0, set_e4m3_nan, MOE_ERR_SCALE, "nvfp4 NaN block scale");
    expect_bad(MOE_FORMAT_NVFP4, 0, set_e4m3_zero, MOE_ERR_SCALE, "nvfp4 zero block scale");
    expect_bad(MOE_FORMAT_NVFP4, 0, set_e4m3_neg, MOE_ERR_SCALE, "nvfp4 negative block scale");
    expect_bad(MOE_FORMAT_INT4_GPTQ, 64, set_f16_zero, MOE_ERR_SCALE, "gptq zero scale");
    expect_bad(MOE_FORMAT_INT4_AWQ, 64, set_f16_inf, MOE_ERR_SCALE, "awq inf scale");
    expect_bad(MOE_FORMAT_INT8_GPTQ, 64, set_f16_inf, MOE_ERR_SCALE, "int8 gptq inf scale");
    expect_bad(MOE_FORMAT_INT4_GPTQ, 64, set_gidx, MOE_ERR_RANGE, "gptq g_idx range");
    expect_bad(MOE_FORMAT_Q8_0, 0, set_q8_0_inf, MOE_ERR_SCALE, "q8_0 inf d");
    expect_bad(MOE_FORMAT_Q4_K, 0, set_q4_k_dmin_nan, MOE_ERR_SCALE, "q4_k NaN dmin");
    expect_bad(MOE_FORMAT_GGUF_MXFP4, 0, set_gguf_mxfp4_ff, MOE_ERR_SCALE, "gguf mxfp4 0xFF");
}

/* e8m0 0x00 (2^-127) is a valid scale: accepted, and decodes to tiny values. */
static void set_e8m0_00(moe_experts_options *o) { ((uint8_t *)o->w13.scales)[9] = 0x00; }
TEST(quant_e8m0_zero_valid) {
    expect_bad(MOE_FORMAT_MXFP4, 0, set_e8m0_00, MOE_OK, "mxfp4 e8m0 0x00");
    uint8_t q[16], e = 0;
    for (int i = 0; i < 16; i++) q[i] = 0x71; /* 0.5 and 6 */
    float out[32];
    dequant_block(MOE_FORMAT_MXFP4, 32, q, &e, 1.0f, out);
    CHECK(out[0] == 0x1p-128f && out[1] == 0x1.8p-125f, "%a %a", (double)out[0], (double)out[1]);
}

/* GPTQ act-order: g_idx picks each column's group (vs the same data with the
 * columns' groups written out by hand). */
TEST(quant_gptq_g_idx) {
    fmt_case c = { MOE_FORMAT_INT4_GPTQ, 32, 0 };
    const int64_t rows = 8, cols = 64;
    float src[8 * 64];
    test_rng rng = { 11 };
    test_fill_normal(&rng, src, 8 * 64, 1.0f);
    int32_t g_idx[64];
    for (int k = 0; k < 64; k++) g_idx[k] = (k * 7) % 2; /* interleaved groups */
    qmat m;
    memset(&m, 0, sizeof m);
    moe__wsizes s;
    REQUIRE(moe__int4_gptq_sizes(rows, cols, 32, MOE_FORMAT_F16, &s, NULL, 0) == MOE_OK);
    m.data = calloc(1, s.data);
    m.scales = calloc(1, s.scales);
    m.w = (moe__wmat){ .format = c.f, .rows = rows, .cols = cols, .group_size = 32,
                       .scale_format = MOE_FORMAT_F16, .data = m.data, .scales = m.scales,
                       .g_idx = g_idx, .scale2 = 1 };
    REQUIRE(moe__int4_gptq_quantize_ref(src, &m.w) == MOE_OK);
    char err[128];
    CHECK_STATUS(moe__int4_gptq_validate(&m.w, err, sizeof err), MOE_OK);
    float out[64];
    for (int64_t r = 0; r < rows; r++) {
        moe__int4_gptq_dequant_row_ref(&m.w, r, out);
        const uint32_t *q = m.data;
        const uint16_t *sc = m.scales;
        for (int64_t k = 0; k < cols; k++) {
            int v = (int)((q[(k / 8) * rows + r] >> (4 * (k % 8))) & 15) - 8;
            float want = (float)v * moe__f16_to_f32(sc[g_idx[k] * rows + r]);
            CHECK(out[k] == want, "r %lld k %lld: %g vs %g", (long long)r, (long long)k, out[k],
                  want);
            const float s = moe__f16_to_f32(sc[g_idx[k] * rows + r]);
            CHECK(fabsf(out[k] - src[r * cols + k]) <= 0.5f * s * 1.01f,
                  "r %lld k %lld round trip", (long long)r, (long long)k);
        }
    }
    free(m.data);
    free(m.scales);
}

/* AWQ nibble order: a hand-packed word decodes to the rows the AWQ packer
 * put in it (rows 0,2,4,6,1,3,5,7 in nibbles 0..7). */
TEST(quant_awq_packing) {
    uint32_t q[1] = { 0 }, z[1] = { 0 };
    const int order[8] = { 0, 2, 4, 6, 1, 3, 5, 7 };
    for (int p = 0; p < 8; p++) q[0] |= (uint32_t)(order[p] + 1) << (4 * p); /* row r holds r+1 */
    uint16_t sc[8];
    for (int r = 0; r < 8; r++) sc[r] = moe__f32_to_f16(1.0f);
    /* One column (cols = 1 is below a group, so build the view directly). */
    moe__wmat w = { .format = MOE_FORMAT_INT4_AWQ, .rows = 8, .cols = 1, .group_size = 32,
                    .scale_format = MOE_FORMAT_F16, .data = q, .scales = sc, .zeros = z };
    for (int r = 0; r < 8; r++) {
        float out;
        moe__int4_awq_dequant_row_ref(&w, r, &out);
        CHECK(out == (float)(r + 1), "row %d decodes %g", r, out);
    }
}

/* moe_format_supported reads the tables: the reference dequantizes every
 * format, the CPU has a kernel for every format, nothing for bad values. */
TEST(quant_format_supported) {
    for (int f = 0; f < MOE_FORMAT_COUNT; f++) {
        const char *name = moe_format_name((moe_format)f);
        CHECK(moe_format_supported((moe_format)f, MOE_BACKEND_REF) == 1, "ref %s", name);
        CHECK(moe_format_supported((moe_format)f, MOE_BACKEND_CPU) == 1, "cpu %s", name);
        CHECK(moe_format_supported((moe_format)f, MOE_BACKEND_AUTO) == 1, "auto %s", name);
    }
    CHECK(moe_format_supported(MOE_FORMAT_COUNT, MOE_BACKEND_CPU) == 0, "out of range");
    CHECK(moe_format_supported((moe_format)-1, MOE_BACKEND_REF) == 0, "negative");
}
