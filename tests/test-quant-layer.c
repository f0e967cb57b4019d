/*
 * test-quant-layer.c - a whole MoE layer in every quantized format: the
 * `cpu` experts (the fast kernels of src/cpu/gemv-*.c) against the `ref`
 * experts (fp64 accumulation over the format's dequant_row_ref weights and
 * the same activation quantization, act_fake_quant_ref), through the public
 * API only. Thresholds are the issue's: NMSE <= 5e-4 for int8, GGUF and
 * int4 formats; FP8 block elementwise atol = rtol = 0.035 on inputs ~
 * randn/10; fp4 cosine >= 0.999 (and NMSE <= 2e-3) against the same-path
 * emulation. Each case also checks that no output is NaN and that the
 * result is the same for a token alone as inside the batch. Mixed cases give
 * W2 its own format (moe_experts_options.w2_format), as GGUF Q4_K_M files do;
 * since both backends read the same per-matrix views, those cases also check
 * the ref output against f32 experts holding the unquantized weights (a
 * matrix read in the wrong format is far off, quantization error is not).
 */
#include "test.h"

#include <stdlib.h>
#include <string.h>

enum { METRIC_NMSE, METRIC_ATOL, METRIC_COS };

/* GPTQ act-order tables: none; W13's groups reversed (k and K-1-k swap
 * groups); a random permutation cut into groups, as quantizers make them,
 * on both projections (the CPU sorts K by group: moe__wmat.k_order); random
 * groups of uneven sizes on both (the CPU's act-order kernels). */
enum { GIDX_NONE, GIDX_REVERSED, GIDX_PERMUTED, GIDX_UNEVEN };

typedef struct qcase {
    moe_format f;
    int32_t    group;
    moe_format scale_format;
    int        metric;
    int        g_idx;        /* GPTQ act-order: GIDX_*                  */
    float      input_scale;  /* FP8_TENSOR static activation scale, 0 = dynamic */
    float      x_sigma;
    int        mixed;        /* W2 in format f2 instead of f            */
    moe_format f2;
} qcase;

typedef struct qlayer {
    moe_router         *router;
    moe_routed_experts *experts;
    moe_routed_experts *plain;      /* mixed cases: the f32 weights before quantization */
    void               *bufs[6];
    float              *w32[2];     /* (E, 2 I, H), (E, H, I)                           */
    int32_t            *g_idx;
    float              *scale2, *in_scale;
} qlayer;

static void qlayer_free(qlayer *q) {
    moe_routed_experts_destroy(q->experts);
    moe_routed_experts_destroy(q->plain);
    moe_router_destroy(q->router);
    free(q->w32[0]);
    free(q->w32[1]);
    for (int i = 0; i < 6; i++) free(q->bufs[i]);
    free(q->g_idx);
    free(q->scale2);
    free(q->in_scale);
}

/* E experts of d_model H, d_ff I in format c, quantized from randn * 0.05. */
static bool qlayer_build(const qcase *c, int32_t E, int64_t H, int64_t I, int32_t top_k,
                         qlayer *q) {
    memset(q, 0, sizeof *q);
    char err[256];
    moe_router_options ro = { .n_experts = E, .top_k = top_k, .scoring = MOE_SCORING_SOFTMAX,
                              .renormalize = 1 };
    if (moe_router_create(&ro, &q->router, err, sizeof err)) {
        test_fail(__FILE__, __LINE__, "router: %s", err);
        return false;
    }
    const moe_format fm[2] = { c->f, c->mixed ? c->f2 : c->f }; /* W13's, W2's */
    moe_quant_sizes s13, s2;
    if (moe_quant_sizes_get(fm[0], 2 * I, H, c->group, c->scale_format, &s13, err, sizeof err) ||
        moe_quant_sizes_get(fm[1], H, I, c->group, c->scale_format, &s2, err, sizeof err)) {
        test_fail(__FILE__, __LINE__, "%s sizes: %s", moe_format_name(c->f), err);
        return false;
    }
    size_t sz[6] = { s13.data, s13.scales, s13.zeros, s2.data, s2.scales, s2.zeros };
    for (int i = 0; i < 6; i++) q->bufs[i] = calloc((size_t)E, sz[i] + 1);
    if (c->mixed)
        for (int m = 0; m < 2; m++) q->w32[m] = malloc(sizeof(float) * (size_t)(E * 2 * I * H));
    test_rng rng = { 99 + (uint64_t)c->f };
    float *src = malloc(sizeof(float) * (size_t)(2 * I * H));
    for (int32_t e = 0; e < E; e++) {
        for (int m = 0; m < 2; m++) {
            int64_t rows = m ? H : 2 * I, cols = m ? I : H;
            test_fill_normal(&rng, src, (size_t)(rows * cols), 0.05f);
            if (c->mixed)
                memcpy(q->w32[m] + (size_t)(e * rows * cols), src,
                       sizeof(float) * (size_t)(rows * cols));
            char *b[3];
            for (int t = 0; t < 3; t++)
                b[t] = (char *)q->bufs[3 * m + t] + (size_t)e * sz[3 * m + t];
            if (moe_quantize(fm[m], rows, cols, c->group, c->scale_format, src, b[0],
                             sz[3 * m + 1] ? b[1] : NULL, sz[3 * m + 2] ? b[2] : NULL, err,
                             sizeof err)) {
                test_fail(__FILE__, __LINE__, "%s quantize: %s", moe_format_name(fm[m]), err);
                free(src);
                return false;
            }
        }
    }
    free(src);
    moe_experts_options o = {
        .n_experts = E, .d_model = H, .d_ff = I, .format = c->f, .group_size = c->group,
        .scale_format = c->scale_format, .activation = MOE_ACT_SILU,
        .w13 = { .data = q->bufs[0], .scales = s13.scales ? q->bufs[1] : NULL,
                 .zeros = s13.zeros ? q->bufs[2] : NULL },
        .w2 = { .data = q->bufs[3], .scales = s2.scales ? q->bufs[4] : NULL,
                .zeros = s2.zeros ? q->bufs[5] : NULL },
        .w2_format = c->mixed ? &c->f2 : NULL,
    };
    if (c->input_scale > 0) {
        q->in_scale = malloc(sizeof(float) * (size_t)E);
        for (int32_t e = 0; e < E; e++) q->in_scale[e] = c->input_scale;
        o.w13.input_scale = o.w2.input_scale = q->in_scale;
    }
    if (c->g_idx) {
        /* The quantizer grouped columns contiguously; g_idx regroups them,
         * so the dequantized weights change, and both backends read the
         * same. */
        q->g_idx = malloc(sizeof(int32_t) * (size_t)(E * (H + I)));
        test_rng gr = { 77 };
        for (int32_t e = 0; e < E; e++)
            for (int p = 0; p < 2; p++) {
                const int64_t K = p ? I : H, ng = K / c->group;
                int32_t      *g = q->g_idx + (p ? E * H + e * I : e * H);
                if (c->g_idx == GIDX_PERMUTED) {
                    test_gidx_permuted(&gr, K, c->group, g);
                    continue;
                }
                for (int64_t k = 0; k < K; k++)
                    g[k] = c->g_idx == GIDX_REVERSED ? (int32_t)(ng - 1 - k / c->group)
                                                     : (int32_t)(test_rng_u64(&gr) % (uint64_t)ng);
            }
        o.w13.g_idx = q->g_idx;
        if (c->g_idx != GIDX_REVERSED) o.w2.g_idx = q->g_idx + E * H;
    }
    if (moe_routed_experts_create(&o, &q->experts, err, sizeof err)) {
        test_fail(__FILE__, __LINE__, "%s experts: %s", moe_format_name(c->f), err);
        return false;
    }
    moe_experts_options po = { .n_experts = E, .d_model = H, .d_ff = I,
                               .format = MOE_FORMAT_F32, .activation = MOE_ACT_SILU,
                               .w13 = { .data = q->w32[0] }, .w2 = { .data = q->w32[1] } };
    if (c->mixed && moe_routed_experts_create(&po, &q->plain, err, sizeof err)) {
        test_fail(__FILE__, __LINE__, "f32 experts: %s", err);
        return false;
    }
    return true;
}

/* out (n, H) of a layer of experts ex on `backend` for routing (ids, w). */
static bool run(const qlayer *q, moe_routed_experts *ex, moe_backend backend, int64_t n,
                int64_t H, const float *x, const int32_t *ids, const float *w, float *out,
                const char **impl) {
    char err[256];
    moe_layer *l = NULL;
    moe_layer_options lo = { .router = q->router, .experts = ex, .backend = backend,
                             .max_tokens = n };
    if (moe_layer_create(&lo, &l, err, sizeof err)) {
        test_fail(__FILE__, __LINE__, "layer (%d): %s", (int)backend, err);
        return false;
    }
    *impl = moe_layer_experts_impl(l);
    size_t wsz = moe_layer_workspace_size(l, n);
    void *ws = aligned_alloc(64, (wsz + 64) / 64 * 64);
    for (int64_t i = 0; i < n * H; i++) out[i] = NAN;
    moe_status st = moe_layer_forward_routed(l, n, x, ids, w, NULL, out, ws, wsz);
    if (st) test_fail(__FILE__, __LINE__, "forward: %s: %s", moe_status_name(st),
                      moe_layer_last_error(l));
    free(ws);
    moe_layer_destroy(l);
    return st == MOE_OK;
}

static void check_shape(const qcase *c, int32_t E, int32_t top_k, int64_t H, int64_t I) {
    const char *name = moe_format_name(c->f);
    qlayer q;
    if (!qlayer_build(c, E, H, I, top_k, &q)) { qlayer_free(&q); return; }
    const int64_t ns[] = { 1, 8, 33 };
    for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
        const int64_t n = ns[ni];
        test_rng rng = { 5 + (uint64_t)n };
        float *x      = malloc(sizeof(float) * (size_t)(n * H));
        float *logits = malloc(sizeof(float) * (size_t)(n * E));
        float *w = malloc(sizeof(float) * (size_t)(n * top_k));
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n * top_k));
        float *o_ref  = malloc(sizeof(float) * (size_t)(n * H));
        float *o_cpu  = malloc(sizeof(float) * (size_t)(n * H));
        test_fill_normal(&rng, x, (size_t)(n * H), c->x_sigma);
        test_fill_normal(&rng, logits, (size_t)(n * E), 1.0f);
        moe_router_route(q.router, n, logits, ids, w);
        const char *impl_ref = "", *impl_cpu = "";
        if (run(&q, q.experts, MOE_BACKEND_REF, n, H, x, ids, w, o_ref, &impl_ref) &&
            run(&q, q.experts, MOE_BACKEND_CPU, n, H, x, ids, w, o_cpu, &impl_cpu)) {
            CHECK(!strcmp(impl_cpu, "cpu"), "%s: CPU layer runs '%s'", name, impl_cpu);
            long bad = test_find_nan(o_cpu, (size_t)(n * H));
            CHECK(bad < 0, "%s n=%lld: NaN at %ld", name, (long long)n, bad);
            double nmse = test_nmse_f(o_cpu, o_ref, (size_t)(n * H));
            double dot = 0, na = 0, nb = 0;
            long worst = -1;
            for (int64_t i = 0; i < n * H; i++) {
                dot += (double)o_cpu[i] * o_ref[i];
                na += (double)o_cpu[i] * o_cpu[i];
                nb += (double)o_ref[i] * o_ref[i];
                if (fabsf(o_cpu[i] - o_ref[i]) > 0.035f + 0.035f * fabsf(o_ref[i]) && worst < 0)
                    worst = (long)i;
            }
            double cosv = dot / sqrt(na * nb);
            CHECK(nb > 0, "%s: reference output is all zero", name);
            switch (c->metric) {
            case METRIC_NMSE:
                CHECK(nmse <= 5e-4, "%s n=%lld: NMSE %.3g > 5e-4", name, (long long)n, nmse);
                break;
            case METRIC_ATOL:
                CHECK(worst < 0, "%s n=%lld: element %ld: cpu %g ref %g", name, (long long)n, worst,
                      worst >= 0 ? o_cpu[worst] : 0.0f, worst >= 0 ? o_ref[worst] : 0.0f);
                break;
            case METRIC_COS:
                CHECK(cosv >= 0.999 && nmse <= 2e-3, "%s n=%lld: cosine %.6f NMSE %.3g", name,
                      (long long)n, cosv, nmse);
                break;
            }
            /* Batch invariance on the CPU: token 0 alone gives the same bits. */
            if (n > 1) {
                float *o1 = malloc(sizeof(float) * (size_t)H);
                const char *i1;
                if (run(&q, q.experts, MOE_BACKEND_CPU, 1, H, x, ids, w, o1, &i1))
                    CHECK(!memcmp(o1, o_cpu, sizeof(float) * (size_t)H),
                          "%s: token 0 differs alone vs in a batch of %lld", name, (long long)n);
                free(o1);
            }
            /* Mixed formats: close to the unquantized layer. */
            float *o32 = c->mixed ? malloc(sizeof(float) * (size_t)(n * H)) : NULL;
            const char *i32;
            if (o32 && run(&q, q.plain, MOE_BACKEND_REF, n, H, x, ids, w, o32, &i32)) {
                double e32 = test_nmse_f(o_ref, o32, (size_t)(n * H));
                CHECK(e32 <= 0.02, "%s+%s n=%lld: NMSE %.3g vs f32 weights", name,
                      moe_format_name(c->f2), (long long)n, e32);
            }
            free(o32);
        }
        free(x); free(logits); free(w); free(ids); free(o_ref); free(o_cpu);
    }
    qlayer_free(&q);
}

static void check_format(const qcase *c) { check_shape(c, 8, 2, 512, 256); }

#define QTEST(tname, ...)                                                                      \
    TEST(quant_layer_##tname) {                                                                \
        qcase c = { __VA_ARGS__ };                                                             \
        if (c.x_sigma == 0) c.x_sigma = 1.0f;                                                  \
        check_format(&c);                                                                      \
    }

QTEST(q8_0, .f = MOE_FORMAT_Q8_0, .metric = METRIC_NMSE)
QTEST(q4_0, .f = MOE_FORMAT_Q4_0, .metric = METRIC_NMSE)
QTEST(q4_k, .f = MOE_FORMAT_Q4_K, .metric = METRIC_NMSE)
QTEST(q6_k, .f = MOE_FORMAT_Q6_K, .metric = METRIC_NMSE)
QTEST(gguf_mxfp4, .f = MOE_FORMAT_GGUF_MXFP4, .metric = METRIC_NMSE)
QTEST(int8_w8a8, .f = MOE_FORMAT_INT8_W8A8, .metric = METRIC_NMSE)
QTEST(int4_gptq, .f = MOE_FORMAT_INT4_GPTQ, .group = 128, .scale_format = MOE_FORMAT_F16,
      .metric = METRIC_NMSE)
QTEST(int4_gptq_act_order_bf16, .f = MOE_FORMAT_INT4_GPTQ, .group = 64,
      .scale_format = MOE_FORMAT_BF16, .metric = METRIC_NMSE, .g_idx = GIDX_REVERSED)
QTEST(int4_gptq_act_order_permuted, .f = MOE_FORMAT_INT4_GPTQ, .group = 128,
      .scale_format = MOE_FORMAT_F16, .metric = METRIC_NMSE, .g_idx = GIDX_PERMUTED)
QTEST(int4_gptq_act_order_uneven, .f = MOE_FORMAT_INT4_GPTQ, .group = 32,
      .scale_format = MOE_FORMAT_BF16, .metric = METRIC_NMSE, .g_idx = GIDX_UNEVEN)
QTEST(int8_gptq_act_order_permuted, .f = MOE_FORMAT_INT8_GPTQ, .group = 64,
      .scale_format = MOE_FORMAT_BF16, .metric = METRIC_NMSE, .g_idx = GIDX_PERMUTED)
QTEST(int8_gptq, .f = MOE_FORMAT_INT8_GPTQ, .group = 32, .scale_format = MOE_FORMAT_F16,
      .metric = METRIC_NMSE)
QTEST(int4_awq, .f = MOE_FORMAT_INT4_AWQ, .group = 64, .scale_format = MOE_FORMAT_F16,
      .metric = METRIC_NMSE)
QTEST(fp8_tensor, .f = MOE_FORMAT_FP8_TENSOR, .metric = METRIC_NMSE)
QTEST(fp8_tensor_static, .f = MOE_FORMAT_FP8_TENSOR, .metric = METRIC_NMSE, .input_scale = 0.01f)
QTEST(fp8_channel, .f = MOE_FORMAT_FP8_CHANNEL, .metric = METRIC_NMSE)
QTEST(fp8_block, .f = MOE_FORMAT_FP8_BLOCK, .metric = METRIC_ATOL, .x_sigma = 0.1f)
QTEST(mxfp4, .f = MOE_FORMAT_MXFP4, .metric = METRIC_COS)
QTEST(nvfp4, .f = MOE_FORMAT_NVFP4, .metric = METRIC_COS)
/* Mixed W13/W2 formats: both projections quantize activations (Q4_K_M's
 * mix), only W13 does, only W2 does. */
QTEST(mixed_q4_k_q6_k, .f = MOE_FORMAT_Q4_K, .mixed = 1, .f2 = MOE_FORMAT_Q6_K,
      .metric = METRIC_NMSE)
QTEST(mixed_q8_0_bf16, .f = MOE_FORMAT_Q8_0, .mixed = 1, .f2 = MOE_FORMAT_BF16,
      .metric = METRIC_NMSE)
QTEST(mixed_f32_q8_0, .f = MOE_FORMAT_F32, .mixed = 1, .f2 = MOE_FORMAT_Q8_0,
      .metric = METRIC_NMSE)

/* Awkward shapes: K not a multiple of the kernels' units (odd block counts,
 * partial fp8 groups and fp4 units),
 * 5 experts, top 3. */
TEST(quant_layer_odd_shapes) {
    const struct { qcase c; int64_t H, I; } t[] = {
        { { .f = MOE_FORMAT_Q8_0, .metric = METRIC_NMSE }, 352, 160 },
        { { .f = MOE_FORMAT_Q4_0, .metric = METRIC_NMSE }, 352, 160 },
        { { .f = MOE_FORMAT_GGUF_MXFP4, .metric = METRIC_NMSE }, 352, 160 },
        { { .f = MOE_FORMAT_Q4_K, .metric = METRIC_NMSE }, 768, 256 },
        { { .f = MOE_FORMAT_Q6_K, .metric = METRIC_NMSE }, 768, 256 },
        { { .f = MOE_FORMAT_INT8_W8A8, .metric = METRIC_NMSE }, 200, 72 },
        { { .f = MOE_FORMAT_FP8_TENSOR, .metric = METRIC_NMSE }, 200, 72 },
        { { .f = MOE_FORMAT_FP8_CHANNEL, .metric = METRIC_NMSE }, 200, 72 },
        { { .f = MOE_FORMAT_FP8_BLOCK, .metric = METRIC_ATOL, .x_sigma = 0.1f }, 200, 72 },
        { { .f = MOE_FORMAT_MXFP4, .metric = METRIC_COS }, 352, 160 },
        { { .f = MOE_FORMAT_NVFP4, .metric = METRIC_COS }, 336, 48 },
        { { .f = MOE_FORMAT_INT4_GPTQ, .group = 32, .scale_format = MOE_FORMAT_F16,
            .metric = METRIC_NMSE }, 352, 96 },
        { { .f = MOE_FORMAT_INT8_GPTQ, .group = 32, .scale_format = MOE_FORMAT_BF16,
            .metric = METRIC_NMSE }, 352, 96 },
        { { .f = MOE_FORMAT_INT4_AWQ, .group = 32, .scale_format = MOE_FORMAT_F16,
            .metric = METRIC_NMSE }, 352, 96 },
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        qcase c = t[i].c;
        if (c.x_sigma == 0) c.x_sigma = 1.0f;
        check_shape(&c, 5, 3, t[i].H, t[i].I);
    }
}
