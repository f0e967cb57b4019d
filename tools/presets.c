/*
 * presets.c - model shapes and synthetic layers.
 *
 * Shapes from the models' Hugging Face configs (vllm-moe-notes §9.4).
 * Synthetic weights are uniform with the variance of N(0, 1/K) per matrix,
 * so activations stay O(1) through the layer like a trained model's.
 */
#include "presets.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const moe_preset moe_presets[] = {
    { "mixtral-8x7b", 4096, 14336, 8, 2, MOE_SCORING_SOFTMAX, 1, 0, 0, 0, 1.0f, 0, 0, MOE_ACT_SILU, 0 },
    { "qwen3-30b-a3b", 2048, 768, 128, 8, MOE_SCORING_SOFTMAX, 1, 0, 0, 0, 1.0f, 0, 0, MOE_ACT_SILU, 0 },
    { "qwen2-57b-a14b", 3584, 2560, 64, 8, MOE_SCORING_SOFTMAX, 0, 0, 0, 0, 1.0f, 20480, 1, MOE_ACT_SILU, 0 },
    { "deepseek-v2-lite", 2048, 1408, 64, 6, MOE_SCORING_SOFTMAX, 0, 0, 0, 0, 1.0f, 2816, 0, MOE_ACT_SILU, 0 },
    { "deepseek-v3", 7168, 2048, 256, 8, MOE_SCORING_SIGMOID, 1, 8, 4, 1, 2.5f, 2048, 0, MOE_ACT_SILU, 0 },
    { "gpt-oss-20b", 2880, 2880, 32, 4, MOE_SCORING_SOFTMAX_TOPK, 1, 0, 0, 0, 1.0f, 0, 0, MOE_ACT_SWIGLU_OAI, 1 },
    { "llama4-scout", 5120, 8192, 16, 1, MOE_SCORING_LLAMA4, 0, 0, 0, 0, 1.0f, 8192, 0, MOE_ACT_SILU, 0 },
    { "olmoe-1b-7b", 2048, 1024, 64, 8, MOE_SCORING_SOFTMAX, 0, 0, 0, 0, 1.0f, 0, 0, MOE_ACT_SILU, 0 },
    { NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};

const moe_preset *moe_preset_find(const char *name) {
    for (const moe_preset *p = moe_presets; p->name; p++)
        if (!strcmp(p->name, name)) return p;
    return NULL;
}

/* xorshift64*: fast enough to fill gigabytes of weights. */
static inline float next_uniform(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    *s = x;
    return (float)((x * 0x2545F4914F6CDD1Dull) >> 40) / (float)(1 << 24) * 2.0f - 1.0f;
}

void synth_fill(float *x, int64_t n, float sigma, uint64_t *seed) {
    const float a = sigma * 1.7320508f; /* uniform on [-a, a] has stddev sigma */
    for (int64_t i = 0; i < n; i++) x[i] = a * next_uniform(seed);
}

/* Quantizes n_experts random (rows, cols) matrices into the tables of w. */
static moe_status synth_weights(moe_format f, int32_t n_experts, int64_t rows, int64_t cols,
                                uint64_t *seed, moe_weights *w, void **store, double *bytes,
                                void (*progress)(double), double p0, double p1, char *err,
                                size_t errlen) {
    moe_quant_sizes sz;
    int32_t         group = 128;
    moe_format      sf    = MOE_FORMAT_F16;
    moe_status      st    = moe_quant_sizes_get(f, rows, cols, group, sf, &sz, err, errlen);
    if (st) return st;
    size_t total = (sz.data + sz.scales + sz.zeros) * (size_t)n_experts;
    char  *mem   = malloc(total ? total : 1);
    float *tmp   = malloc((size_t)(rows * cols) * sizeof(float));
    /* The experts borrow these tables; give them the huge pages the library
     * gives a copy it owns, so that the figures are the default path's. */
    if (mem) moe_advise_huge_pages(mem, total);
    if (!mem || !tmp) {
        free(mem); free(tmp);
        snprintf(err, errlen, "out of memory for %.1f GB of weights", total / 1e9);
        return MOE_ERR_NOMEM;
    }
    char *data = mem, *scales = mem + sz.data * (size_t)n_experts;
    char *zeros = scales + sz.scales * (size_t)n_experts;
    for (int32_t e = 0; e < n_experts && !st; e++) {
        synth_fill(tmp, rows * cols, 1.0f / sqrtf((float)cols), seed);
        st = moe_quantize(f, rows, cols, group, sf, tmp, data + e * sz.data,
                          sz.scales ? scales + e * sz.scales : NULL,
                          sz.zeros ? zeros + e * sz.zeros : NULL, err, errlen);
        if (progress) progress(p0 + (p1 - p0) * (e + 1) / n_experts);
    }
    free(tmp);
    if (st) { free(mem); return st; }
    *w     = (moe_weights){ .data = data, .scales = sz.scales ? scales : NULL,
                            .zeros = sz.zeros ? zeros : NULL };
    *store = mem;
    *bytes = (double)(sz.data + sz.scales + sz.zeros);
    return MOE_OK;
}

moe_status synth_create(const moe_preset *preset, moe_format format, int32_t n_experts_max,
                        uint64_t seed, void (*progress)(double), synth_layer *s, char *err,
                        size_t errlen) {
    memset(s, 0, sizeof *s);
    s->p      = *preset;
    s->format = format;
    if (n_experts_max > 0 && s->p.n_experts > n_experts_max) {
        s->p.n_experts = n_experts_max;
        if (s->p.top_k > s->p.n_experts) s->p.top_k = s->p.n_experts;
        /* Keep groups valid: dividing E, and top_k within the kept groups. */
        for (;;) {
            int32_t g = s->p.n_group, tg = s->p.topk_group < g ? s->p.topk_group : g;
            if (g <= 1 || (s->p.n_experts % g == 0 && s->p.top_k <= tg * (s->p.n_experts / g)))
                break;
            s->p.n_group--;
        }
        if (s->p.topk_group > s->p.n_group) s->p.topk_group = s->p.n_group;
        if (s->p.n_group <= 1) s->p.n_group = s->p.topk_group = 0;
    }
    const moe_preset *p = &s->p;
    int64_t rows13 = p->activation == MOE_ACT_RELU2 ? p->d_ff : 2 * p->d_ff;
    double  b13 = 0, b2 = 0, sb13 = 0, sb2 = 0;
    moe_status st;
    float *bias = NULL, *gate = NULL, *corr = NULL;

    moe_experts_options eo = {
        .n_experts = p->n_experts, .d_model = p->d_model, .d_ff = p->d_ff, .format = format,
        .group_size = 128, .scale_format = MOE_FORMAT_F16, .activation = p->activation,
        .flags = MOE_EXPERTS_BORROW,
    };
    double sh_frac = p->shared_d_ff ? 0.1 : 0.0;
    if ((st = synth_weights(format, p->n_experts, rows13, p->d_model, &seed, &eo.w13, &s->storage[0],
                            &b13, progress, 0.0, 0.45 - sh_frac / 2, err, errlen)) ||
        (st = synth_weights(format, p->n_experts, p->d_model, p->d_ff, &seed, &eo.w2, &s->storage[1],
                            &b2, progress, 0.45 - sh_frac / 2, 0.9 - sh_frac, err, errlen)))
        goto fail;
    if (p->biases) {
        int64_t n = (int64_t)p->n_experts * (rows13 + p->d_model);
        bias = malloc((size_t)n * sizeof(float));
        if (!bias) { st = MOE_ERR_NOMEM; snprintf(err, errlen, "out of memory"); goto fail; }
        synth_fill(bias, n, 0.05f, &seed);
        eo.w13.bias = bias;
        eo.w2.bias  = bias + (int64_t)p->n_experts * rows13;
        s->storage[2] = bias;
    }
    s->expert_bytes = b13 + b2;
    if ((st = moe_routed_experts_create(&eo, &s->experts, err, errlen))) goto fail;

    if (p->shared_d_ff) {
        moe_shared_options so = { .mlp = eo };
        so.mlp.n_experts = 1;
        so.mlp.d_ff      = p->shared_d_ff;
        so.mlp.w13.bias = so.mlp.w2.bias = NULL;
        int64_t srows13 = p->activation == MOE_ACT_RELU2 ? p->shared_d_ff : 2 * p->shared_d_ff;
        if ((st = synth_weights(format, 1, srows13, p->d_model, &seed, &so.mlp.w13, &s->storage[3],
                                &sb13, progress, 0.9 - sh_frac, 0.9 - sh_frac / 2, err, errlen)) ||
            (st = synth_weights(format, 1, p->d_model, p->shared_d_ff, &seed, &so.mlp.w2,
                                &s->storage[4], &sb2, progress, 0.9 - sh_frac / 2, 0.9, err,
                                errlen)))
            goto fail;
        if (p->shared_gate) {
            gate = malloc((size_t)p->d_model * sizeof(float));
            if (!gate) { st = MOE_ERR_NOMEM; snprintf(err, errlen, "out of memory"); goto fail; }
            synth_fill(gate, p->d_model, 1.0f / sqrtf((float)p->d_model), &seed);
            so.gate = gate;
        }
        s->shared_bytes = sb13 + sb2;
        if ((st = moe_shared_experts_create(&so, &s->shared, err, errlen))) goto fail;
    }

    moe_router_options ro = {
        .n_experts = p->n_experts, .top_k = p->top_k, .scoring = p->scoring,
        .renormalize = p->renormalize, .n_group = p->n_group, .topk_group = p->topk_group,
        .routed_scaling_factor = p->routed_scaling,
    };
    if (p->correction_bias) {
        corr = malloc((size_t)p->n_experts * sizeof(float));
        if (!corr) { st = MOE_ERR_NOMEM; snprintf(err, errlen, "out of memory"); goto fail; }
        synth_fill(corr, p->n_experts, 0.01f, &seed);
        ro.correction_bias = corr;
    }
    st = moe_router_create(&ro, &s->router, err, errlen);
    if (progress) progress(1.0);
fail:
    free(gate);
    free(corr);
    if (st) synth_destroy(s);
    return st;
}

void synth_destroy(synth_layer *s) {
    moe_router_destroy(s->router);
    moe_routed_experts_destroy(s->experts);
    moe_shared_experts_destroy(s->shared);
    for (int i = 0; i < 8; i++) free(s->storage[i]);
    memset(s, 0, sizeof *s);
}
