/*
 * test-cpu.c - the `cpu` experts implementation run directly on hand-built
 * dispatches, against an fp64 loop written here (independent of the
 * reference experts): every activation, biases on and off, F32/BF16/F16
 * weights, odd sizes, an expert with no rows, all rows on one expert, the
 * Llama-4 input scale, the shared experts' gate, two jobs at once, a
 * padding row; the kernels alone with K across the prefill slices; bitwise
 * determinism across thread counts and runs; batch invariance; the
 * bandwidth probe.
 *
 * Weights are drawn so that they are exact in their storage type (bf16: the
 * top 16 bits of an f32; f16: k/512 with |k| < 1024), and the fp64 loop reads
 * those exact values, so NMSE measures the kernels' fp32 arithmetic alone:
 * the bound is 1e-10 (fp32 sums over K <= 300 give about 1e-14). BF16 runs
 * with bf16 activations (its act_fake_quant_ref), which the loop applies to
 * both projections' inputs: W13's exactly (the same f32 row), W2's to its
 * fp64 activations, so that an activation at a rounding boundary may land
 * one bf16 step (2^-8) from the kernels' own: BF16's bound is 1e-6 (one such
 * value in a slot of d_ff >= 20 adds at most ~1e-6; a wrong sum gives ~1).
 */
#include "test.h"

#include "internal.h"
#include "../src/cpu/cpu-formats.h"

#include <stdlib.h>
#include <string.h>

#define NMSE_MAX      1e-10
#define NMSE_MAX_BF16 1e-6

/* The rounding the format applies to a projection's input (act_fake_quant_ref),
 * on n f32 values in place; none for F32 and F16. */
static void act_round(moe_format f, float *v, int64_t n) {
    const moe__format_traits *ft = moe__format(f);
    moe__wmat                 w  = { .format = f, .rows = 1, .cols = n };
    if (ft->act_fake_quant_ref) ft->act_fake_quant_ref(&w, v, n);
}

/* ===== Exact weights ===== */

/* f16 bits of v, for v = k / 512 with |k| < 1024 (exact, normal or zero). */
static uint16_t f16_bits_exact(float v) {
    if (v == 0) return 0;
    uint16_t sign = v < 0 ? 0x8000u : 0;
    int      e;
    double   m = frexp(fabs((double)v), &e); /* v = m 2^e, m in [0.5, 1) */
    /* f16: (1 + f/1024) 2^(E-15); here 2m in [1, 2), E = e - 1 + 15. */
    uint16_t E = (uint16_t)(e - 1 + 15);
    uint16_t f = (uint16_t)((2 * m - 1) * 1024);
    return (uint16_t)(sign | (E << 10) | f);
}

/* Draws n weights exact in format f; stores them in f's layout at dst and
 * their exact values in val. */
static void draw_weights(test_rng *r, moe_format f, size_t n, void *dst, float *val) {
    for (size_t i = 0; i < n; i++) {
        float v = 0.3f * test_rng_normal(r);
        if (f == MOE_FORMAT_BF16) {
            uint32_t u;
            memcpy(&u, &v, 4);
            u &= 0xffff0000u;
            memcpy(&v, &u, 4);
            ((uint16_t *)dst)[i] = (uint16_t)(u >> 16);
        } else if (f == MOE_FORMAT_F16) {
            int k = (int)lrintf(v * 512);
            if (k > 1023) k = 1023;
            if (k < -1023) k = -1023;
            v                    = (float)k / 512;
            ((uint16_t *)dst)[i] = f16_bits_exact(v);
        } else {
            ((float *)dst)[i] = v;
        }
        val[i] = v;
    }
}

/* ===== A test problem ===== */

typedef struct problem {
    moe_experts_options o;
    moe_routed_experts *e;
    void               *w13, *w2;    /* storage                                   */
    float              *v13, *v2;    /* (E, rows, cols) exact values              */
    float              *b13, *b2;    /* biases or NULL                            */
} problem;

static size_t esize(moe_format f) { return f == MOE_FORMAT_F32 ? 4 : 2; }

static bool problem_make(problem *p, test_rng *r, moe_format f, moe_activation act, int32_t E,
                         int64_t H, int64_t I, bool bias) {
    memset(p, 0, sizeof *p);
    p->o = (moe_experts_options){ .n_experts = E, .d_model = H, .d_ff = I, .format = f,
                                  .activation = act };
    const int64_t R13 = act == MOE_ACT_RELU2 ? I : 2 * I;
    const size_t  n13 = (size_t)(E * R13 * H), n2 = (size_t)(E * H * I);
    p->w13 = malloc(n13 * esize(f));
    p->w2  = malloc(n2 * esize(f));
    p->v13 = malloc(n13 * sizeof(float));
    p->v2  = malloc(n2 * sizeof(float));
    if (bias) {
        p->b13 = malloc((size_t)(E * R13) * sizeof(float));
        p->b2  = malloc((size_t)(E * H) * sizeof(float));
        test_fill_normal(r, p->b13, (size_t)(E * R13), 0.5f);
        test_fill_normal(r, p->b2, (size_t)(E * H), 0.5f);
    }
    draw_weights(r, f, n13, p->w13, p->v13);
    draw_weights(r, f, n2, p->w2, p->v2);
    p->o.w13 = (moe_weights){ .data = p->w13, .bias = p->b13 };
    p->o.w2  = (moe_weights){ .data = p->w2, .bias = p->b2 };
    char       err[256] = "";
    moe_status s        = moe_routed_experts_create(&p->o, &p->e, err, sizeof err);
    CHECK(s == MOE_OK, "experts create: %s (%s)", moe_status_name(s), err);
    return s == MOE_OK;
}

static void problem_free(problem *p) {
    moe_routed_experts_destroy(p->e);
    free(p->w13); free(p->w2); free(p->v13); free(p->v2); free(p->b13); free(p->b2);
}

/* A dispatch of n_tokens x top_k slots with ids[s] (local ids), grouped by
 * expert then slot, as prepare builds it. */
typedef struct routing {
    moe__dispatch d;
    int32_t      *ids, *start, *rows;
    float        *x, *in_scale, *y;
} routing;

static void routing_make(routing *rt, const float *x, int64_t T, int32_t K, int64_t H, int32_t E,
                         const int32_t *ids, const float *in_scale) {
    const int64_t S = T * K;
    rt->ids   = malloc((size_t)S * sizeof(int32_t));
    rt->start = calloc((size_t)E + 1, sizeof(int32_t));
    rt->rows  = malloc((size_t)S * sizeof(int32_t));
    rt->y     = malloc((size_t)(S * H) * sizeof(float));
    memcpy(rt->ids, ids, (size_t)S * sizeof(int32_t));
    for (int64_t s = 0; s < S; s++) rt->start[ids[s] + 1]++;
    for (int32_t e = 0; e < E; e++) rt->start[e + 1] += rt->start[e];
    int64_t n = 0;
    for (int32_t e = 0; e < E; e++)
        for (int64_t s = 0; s < S; s++)
            if (ids[s] == e) rt->rows[n++] = (int32_t)s;
    test_poison(rt->y, (size_t)(S * H));
    rt->d = (moe__dispatch){ .n_tokens = T, .top_k = K, .d_model = H, .x = x,
                             .topk_ids = rt->ids, .in_scale = in_scale, .n_local = E,
                             .expert_start = rt->start, .row_slot = rt->rows, .n_rows = S,
                             .y = rt->y };
}

static void routing_free(routing *rt) {
    free(rt->ids); free(rt->start); free(rt->rows); free(rt->y);
}

/* ===== The fp64 oracle ===== */

static double act_f64(const moe_experts_options *o, const double *h, int64_t i) {
    const int64_t I = o->d_ff;
    const double  alpha = o->swiglu_alpha ? o->swiglu_alpha : 1.702;
    const double  limit = o->swiglu_limit ? o->swiglu_limit : 7.0;
    double g = h[i], u = h[I + i];
    switch (o->activation) {
    case MOE_ACT_SILU: return g / (1 + exp(-g)) * u;
    case MOE_ACT_GELU: return 0.5 * g * (1 + erf(g * 0.7071067811865476)) * u;
    case MOE_ACT_GELU_TANH:
        return 0.5 * g * (1 + tanh(0.7978845608028654 * (g + 0.044715 * g * g * g))) * u;
    case MOE_ACT_SWIGLU_OAI:
        g = h[2 * i] < limit ? h[2 * i] : limit;
        u = h[2 * i + 1] < -limit ? -limit : h[2 * i + 1] > limit ? limit : h[2 * i + 1];
        return (u + 1) * g / (1 + exp(-alpha * g));
    case MOE_ACT_RELU2: return h[i] > 0 ? h[i] * h[i] : 0;
    }
    return NAN;
}

/* want (S, H): the expert output of every slot. */
static void oracle(const problem *p, const routing *rt, const float *gate, double *want) {
    const moe_experts_options *o = &p->o;
    const int64_t H = o->d_model, I = o->d_ff, R13 = o->activation == MOE_ACT_RELU2 ? I : 2 * I;
    const int64_t S = rt->d.n_tokens * rt->d.top_k;
    double *x = malloc((size_t)H * sizeof(double)), *h = malloc((size_t)(2 * I) * sizeof(double));
    double *a = malloc((size_t)I * sizeof(double));
    float  *v = malloc((size_t)(H > I ? H : I) * sizeof(float));
    for (int64_t s = 0; s < S; s++) {
        const int32_t e  = rt->ids[s];
        const float  *xt = rt->d.x + (s / rt->d.top_k) * H;
        for (int64_t k = 0; k < H; k++) v[k] = rt->d.in_scale ? xt[k] * rt->d.in_scale[s] : xt[k];
        act_round(o->format, v, H);
        for (int64_t k = 0; k < H; k++) x[k] = v[k];
        for (int64_t r = 0; r < R13; r++) {
            const float *w   = p->v13 + ((size_t)e * R13 + r) * H;
            double       acc = p->b13 ? p->b13[e * R13 + r] : 0;
            for (int64_t k = 0; k < H; k++) acc += (double)w[k] * x[k];
            h[r] = acc;
        }
        for (int64_t i = 0; i < I; i++) a[i] = act_f64(o, h, i);
        if (moe__format(o->format)->act_fake_quant_ref) {
            for (int64_t i = 0; i < I; i++) v[i] = (float)a[i];
            act_round(o->format, v, I);
            for (int64_t i = 0; i < I; i++) a[i] = v[i];
        }
        double g = 1;
        if (gate) {
            double dot = 0;
            for (int64_t k = 0; k < H; k++) dot += (double)xt[k] * gate[k];
            g = 1 / (1 + exp(-dot));
        }
        for (int64_t m = 0; m < H; m++) {
            const float *w   = p->v2 + ((size_t)e * H + m) * I;
            double       acc = p->b2 ? p->b2[e * H + m] : 0;
            for (int64_t i = 0; i < I; i++) acc += (double)w[i] * a[i];
            want[s * H + m] = acc * g;
        }
    }
    free(x); free(h); free(a); free(v);
}

/* ===== Running the cpu experts ===== */

static moe_context *ctx_make(int n_threads) {
    moe_context_options co = { .n_threads = n_threads };
    moe_context        *c  = NULL;
    char                err[256];
    CHECK_STATUS(moe_context_create(&co, &c, err, sizeof err), MOE_OK);
    return c;
}

/* Runs n_jobs jobs with a fresh exactly-sized workspace. */
static moe_status run_jobs(moe_context *c, const moe__experts_job *jobs, int n_jobs) {
    int    nt = moe_context_n_threads(c);
    size_t ws = 0;
    for (int k = 0; k < n_jobs; k++)
        ws += moe__experts_cpu.workspace_size(jobs[k].experts, jobs[k].d->n_rows, nt);
    void *buf = moe__aligned_alloc(ws ? ws : 64);
    char  err[256] = "";
    moe__exec ex = { c, err, sizeof err };
    moe_status s = moe__experts_cpu.run(jobs, n_jobs, &ex, buf, ws);
    if (s) test_fail(__FILE__, __LINE__, "cpu run: %s (%s)", moe_status_name(s), err);
    moe__aligned_free(buf);
    return s;
}

/* Per-expert NMSE check of rt's outputs against the oracle. */
static void check_vs_oracle(const char *what, const problem *p, const routing *rt,
                            const float *gate) {
    const int64_t H = p->o.d_model, S = rt->d.n_tokens * rt->d.top_k;
    const double  bound = p->o.format == MOE_FORMAT_BF16 ? NMSE_MAX_BF16 : NMSE_MAX;
    double       *want = malloc((size_t)(S * H) * sizeof(double));
    oracle(p, rt, gate, want);
    for (int32_t e = 0; e < rt->d.n_local; e++) {
        for (int32_t r = rt->start[e]; r < rt->start[e + 1]; r++) {
            int32_t s = rt->rows[r];
            double  n = test_nmse(rt->y + s * H, want + s * H, (size_t)H);
            CHECK(n <= bound, "%s: expert %d slot %d nmse %.3g", what, e, s, n);
            if (n > bound) { free(want); return; }
        }
    }
    free(want);
}

static const moe_format     k_formats[] = { MOE_FORMAT_F32, MOE_FORMAT_BF16, MOE_FORMAT_F16 };
static const moe_activation k_acts[]    = { MOE_ACT_SILU, MOE_ACT_GELU, MOE_ACT_GELU_TANH,
                                            MOE_ACT_SWIGLU_OAI, MOE_ACT_RELU2 };

/* ===== Tests ===== */

/* Every format x activation x bias on odd sizes; expert 3 gets no rows. */
TEST(cpu_experts_vs_f64) {
    moe_context *c = ctx_make(2);
    REQUIRE(c);
    test_rng r = { 1 };
    const int64_t T = 9, H = 67, I = 45;
    const int32_t K = 2, E = 5;
    float  *x = malloc((size_t)(T * H) * sizeof(float));
    int32_t ids[18];
    test_fill_normal(&r, x, (size_t)(T * H), 1.0f);
    for (int64_t t = 0; t < T; t++) {
        ids[t * K]     = (int32_t)(t % 3);            /* 0, 1, 2                  */
        ids[t * K + 1] = t % 4 == 0 ? 4 : (int32_t)((t + 1) % 3); /* never 3      */
        if (ids[t * K + 1] == ids[t * K]) ids[t * K + 1] = 4;
    }
    for (size_t fi = 0; fi < 3; fi++)
        for (size_t ai = 0; ai < 5; ai++)
            for (int bias = 0; bias < 2; bias++) {
                problem p;
                if (!problem_make(&p, &r, k_formats[fi], k_acts[ai], E, H, I, bias)) continue;
                routing rt;
                routing_make(&rt, x, T, K, H, E, ids, NULL);
                moe__experts_job job = { p.e, &rt.d, NULL };
                char what[96];
                snprintf(what, sizeof what, "%s act %d bias %d", moe_format_name(k_formats[fi]),
                         (int)k_acts[ai], bias);
                if (!run_jobs(c, &job, 1)) check_vs_oracle(what, &p, &rt, NULL);
                routing_free(&rt);
                problem_free(&p);
            }
    free(x);
    moe_context_destroy(c);
}

/* SWIGLU_OAI with explicit alpha/limit, large inputs so the clamps bite. */
TEST(cpu_experts_swiglu_limits) {
    moe_context *c = ctx_make(2);
    REQUIRE(c);
    test_rng r = { 2 };
    const int64_t T = 4, H = 40, I = 24;
    float  *x = malloc((size_t)(T * H) * sizeof(float));
    int32_t ids[4] = { 0, 1, 0, 1 };
    test_fill_normal(&r, x, (size_t)(T * H), 6.0f);
    problem p;
    if (problem_make(&p, &r, MOE_FORMAT_F32, MOE_ACT_SWIGLU_OAI, 2, H, I, true)) {
        /* Rebuild with alpha/limit set (the options are copied at create). */
        moe_routed_experts_destroy(p.e);
        p.o.swiglu_alpha = 1.5f;
        p.o.swiglu_limit = 3.0f;
        char err[256];
        CHECK_STATUS(moe_routed_experts_create(&p.o, &p.e, err, sizeof err), MOE_OK);
        routing rt;
        routing_make(&rt, x, T, 1, H, 2, ids, NULL);
        moe__experts_job job = { p.e, &rt.d, NULL };
        if (!run_jobs(c, &job, 1)) check_vs_oracle("swiglu limits", &p, &rt, NULL);
        routing_free(&rt);
        problem_free(&p);
    }
    free(x);
    moe_context_destroy(c);
}

/* All 40 rows on one expert (more than a kernel chunk), with in_scale;
 * then a shared-experts job (gate) and both jobs at once. */
TEST(cpu_experts_one_expert_scale_gate_overlap) {
    moe_context *c = ctx_make(3);
    REQUIRE(c);
    test_rng r = { 3 };
    const int64_t T = 40, H = 130, I = 77;
    float  *x     = malloc((size_t)(T * H) * sizeof(float));
    float  *scale = malloc((size_t)T * sizeof(float));
    float  *gate  = malloc((size_t)H * sizeof(float));
    int32_t *ids  = malloc((size_t)T * sizeof(int32_t));
    test_fill_normal(&r, x, (size_t)(T * H), 1.0f);
    test_fill_normal(&r, gate, (size_t)H, 0.2f);
    for (int64_t t = 0; t < T; t++) { scale[t] = 0.1f + test_rng_uniform(&r); ids[t] = 2; }

    problem p, sh;
    if (problem_make(&p, &r, MOE_FORMAT_BF16, MOE_ACT_SILU, 3, H, I, true) &&
        problem_make(&sh, &r, MOE_FORMAT_F16, MOE_ACT_GELU, 1, H, 2 * I, false)) {
        routing rt, rs;
        routing_make(&rt, x, T, 1, H, 3, ids, scale);
        int32_t *zero = calloc((size_t)T, sizeof(int32_t));
        routing_make(&rs, x, T, 1, H, 1, zero, NULL);
        moe__experts_job jobs[2] = { { sh.e, &rs.d, gate }, { p.e, &rt.d, NULL } };
        if (!run_jobs(c, &jobs[1], 1)) check_vs_oracle("one expert + in_scale", &p, &rt, NULL);
        if (!run_jobs(c, &jobs[0], 1)) check_vs_oracle("shared + gate", &sh, &rs, gate);
        /* Both jobs in the same phases must give the same bits. */
        float *y1 = malloc((size_t)(T * H) * sizeof(float)), *y2 = malloc((size_t)(T * H) * 4);
        memcpy(y1, rt.y, (size_t)(T * H) * sizeof(float));
        memcpy(y2, rs.y, (size_t)(T * H) * sizeof(float));
        test_poison(rt.y, (size_t)(T * H));
        test_poison(rs.y, (size_t)(T * H));
        if (!run_jobs(c, jobs, 2)) {
            CHECK(!memcmp(y1, rt.y, (size_t)(T * H) * sizeof(float)), "overlapped routed differs");
            CHECK(!memcmp(y2, rs.y, (size_t)(T * H) * sizeof(float)), "overlapped shared differs");
        }
        free(y1); free(y2); free(zero);
        routing_free(&rt);
        routing_free(&rs);
        problem_free(&sh);
        problem_free(&p);
    }
    free(x); free(scale); free(gate); free(ids);
    moe_context_destroy(c);
}

/* Bitwise identical outputs for 1, 2 and 3 threads and across 20 runs. */
TEST(cpu_experts_deterministic) {
    test_rng r = { 4 };
    const int64_t T = 37, H = 200, I = 136;
    const int32_t K = 3, E = 6;
    float   *x   = malloc((size_t)(T * H) * sizeof(float));
    int32_t *ids = malloc((size_t)(T * K) * sizeof(int32_t));
    test_fill_normal(&r, x, (size_t)(T * H), 1.0f);
    for (int64_t t = 0; t < T; t++)
        for (int32_t j = 0; j < K; j++) ids[t * K + j] = (int32_t)((t * 7 + j * 2) % E);
    for (size_t fi = 0; fi < 3; fi++) {
        problem p;
        if (!problem_make(&p, &r, k_formats[fi], MOE_ACT_SILU, E, H, I, true)) continue;
        routing rt;
        routing_make(&rt, x, T, K, H, E, ids, NULL);
        const size_t n = (size_t)(T * K * H);
        float *first = malloc(n * sizeof(float));
        moe__experts_job job = { p.e, &rt.d, NULL };
        for (int nt = 1; nt <= 3; nt++) {
            moe_context *c = ctx_make(nt);
            if (!c) break;
            for (int run = 0; run < (nt == 2 ? 20 : 2); run++) {
                test_poison(rt.y, n);
                if (run_jobs(c, &job, 1)) break;
                if (nt == 1 && run == 0) {
                    memcpy(first, rt.y, n * sizeof(float));
                    check_vs_oracle("deterministic", &p, &rt, NULL);
                } else {
                    CHECK(!memcmp(first, rt.y, n * sizeof(float)), "%s: %d threads run %d differs",
                          moe_format_name(k_formats[fi]), nt, run);
                }
            }
            moe_context_destroy(c);
        }
        free(first);
        routing_free(&rt);
        problem_free(&p);
    }
    free(x); free(ids);
}

/* A token's output is the same bits alone and at any position among 33
 * rows of the same expert. */
TEST(cpu_experts_batch_invariant) {
    moe_context *c = ctx_make(2);
    REQUIRE(c);
    test_rng r = { 5 };
    const int64_t T = 33, H = 299, I = 70; /* H > 256: K slices in W13 */
    float   *x   = malloc((size_t)(T * H) * sizeof(float));
    int32_t *ids = calloc((size_t)T, sizeof(int32_t));
    test_fill_normal(&r, x, (size_t)(T * H), 1.0f);
    for (size_t fi = 0; fi < 3; fi++)
        for (size_t ai = 0; ai < 5; ai += 3) {
            problem p;
            if (!problem_make(&p, &r, k_formats[fi], k_acts[ai], 2, H, I, true)) continue;
            routing all;
            routing_make(&all, x, T, 1, H, 2, ids, NULL);
            moe__experts_job job = { p.e, &all.d, NULL };
            if (!run_jobs(c, &job, 1)) {
                const int64_t probe[] = { 0, 5, 31, 32 };
                for (int q = 0; q < 4; q++) {
                    const int64_t t = probe[q];
                    routing one;
                    routing_make(&one, x + t * H, 1, 1, H, 2, ids, NULL);
                    moe__experts_job j1 = { p.e, &one.d, NULL };
                    if (!run_jobs(c, &j1, 1))
                        CHECK(!memcmp(one.y, all.y + t * H, (size_t)H * sizeof(float)),
                              "%s act %d: token %lld alone differs from the batch",
                              moe_format_name(k_formats[fi]), (int)k_acts[ai], (long long)t);
                    routing_free(&one);
                }
            }
            routing_free(&all);
            problem_free(&p);
        }
    free(x); free(ids);
    moe_context_destroy(c);
}

/* A padding row (row_slot -1, the contiguous layout's sentinel) is computed
 * on zeros and never written back; the real rows around it are exact. */
TEST(cpu_experts_padding_row) {
    moe_context *c = ctx_make(2);
    REQUIRE(c);
    test_rng r = { 8 };
    const int64_t T = 5, H = 48, I = 20;
    float   x[5 * 48];
    int32_t ids[5] = { 1, 0, 1, 1, 0 };
    test_fill_normal(&r, x, (size_t)(T * H), 1.0f);
    for (size_t fi = 0; fi < 3; fi++) {
        problem p;
        if (!problem_make(&p, &r, k_formats[fi], MOE_ACT_SILU, 2, H, I, true)) continue;
        routing rt;
        routing_make(&rt, x, T, 1, H, 2, ids, NULL);
        /* Expert 1 holds rows 2..4 (slots 0, 2, 3): rebuild with a sentinel
         * between slots 0 and 2, so expert 1 has rows 2..5. */
        int32_t start[3] = { 0, 2, 6 }, rows[6] = { 1, 4, 0, -1, 2, 3 };
        moe__dispatch d = rt.d;
        d.expert_start  = start;
        d.row_slot      = rows;
        d.n_rows        = 6;
        moe__experts_job job = { p.e, &d, NULL };
        if (!run_jobs(c, &job, 1)) check_vs_oracle("padding row", &p, &rt, NULL);
        routing_free(&rt);
        problem_free(&p);
    }
    moe_context_destroy(c);
}

/* rejects() agrees with the kernel table for every format; a short
 * workspace is refused, not overrun. */
TEST(cpu_experts_rejects_and_workspace) {
    for (int f = 0; f < MOE_FORMAT_COUNT; f++) {
        moe_routed_experts fake;
        memset(&fake, 0, sizeof fake);
        fake.opts.format = (moe_format)f;
        const char *why  = moe__experts_cpu.rejects(&fake);
        CHECK((why == NULL) == (moe__cpu_format_get((moe_format)f) != NULL),
              "format %d: rejects says %s", f, why ? why : "ok");
    }
    moe_context *c = ctx_make(2);
    REQUIRE(c);
    test_rng r = { 6 };
    problem  p;
    float    x[16 * 3];
    int32_t  ids[3] = { 0, 0, 1 };
    test_fill_normal(&r, x, 48, 1.0f);
    if (problem_make(&p, &r, MOE_FORMAT_F32, MOE_ACT_SILU, 2, 16, 8, false)) {
        routing rt;
        routing_make(&rt, x, 3, 1, 16, 2, ids, NULL);
        moe__experts_job job  = { p.e, &rt.d, NULL };
        size_t           need = moe__experts_cpu.workspace_size(p.e, 3, moe_context_n_threads(c));
        void            *buf  = moe__aligned_alloc(need);
        char             err[256] = "";
        moe__exec        ex   = { c, err, sizeof err };
        CHECK_STATUS(moe__experts_cpu.run(&job, 1, &ex, buf, need - 1), MOE_ERR_WORKSPACE);
        CHECK_STATUS(moe__experts_cpu.run(&job, 1, &ex, buf, need), MOE_OK);
        moe__aligned_free(buf);
        routing_free(&rt);
        problem_free(&p);
    }
    moe_context_destroy(c);
}

/* The gemm kernels directly (through act_quantize where the format has
 * one): odd tiles and chunk sizes against fp64, K below and above the
 * prefill path's K slice (256) with a ragged tail; then every row of a
 * 37-row call bitwise equal to the same row computed alone. */
TEST(cpu_gemm_plain_tiles) {
    test_rng r = { 7 };
    enum { R = 29, NX = 37 };
    const int64_t ks[] = { 83, 601 };
    for (size_t fi = 0; fi < 3; fi++)
        for (int ki = 0; ki < 2; ki++) {
            const int64_t          Kd = ks[ki];
            const moe__cpu_format *cf = moe__cpu_format_get(k_formats[fi]);
            REQUIRE(cf && cf->gemm);
            const size_t xstride = moe__align_up(
                cf->act_quantize ? cf->act_row_bytes(Kd) : (size_t)Kd * sizeof(float), 64);
            void  *w  = malloc((size_t)(R * Kd) * esize(k_formats[fi]));
            float *wv = malloc((size_t)(R * Kd) * sizeof(float));
            float *x  = malloc((size_t)(NX * Kd) * sizeof(float));
            char  *xq = moe__aligned_alloc((size_t)NX * xstride);
            float  y[NX * R], y1[R];
            draw_weights(&r, k_formats[fi], (size_t)(R * Kd), w, wv);
            test_fill_normal(&r, x, (size_t)(NX * Kd), 1.0f);
            moe__wmat m = { .format = k_formats[fi], .rows = R, .cols = Kd, .data = w };
            for (int64_t i = 0; i < NX; i++) {
                if (cf->act_quantize) cf->act_quantize(&m, x + i * Kd, Kd, xq + i * xstride);
                else memcpy(xq + i * xstride, x + i * Kd, (size_t)Kd * sizeof(float));
                act_round(k_formats[fi], x + i * Kd, Kd); /* the reference's inputs */
            }
            const int64_t tiles[][3] = { { 0, 29, 37 }, { 3, 12, 5 }, { 28, 29, 1 },
                                         { 5, 21, 4 }, { 0, 16, 9 } };
            for (int ti = 0; ti < 5; ti++) {
                const int64_t r0 = tiles[ti][0], r1 = tiles[ti][1], nx = tiles[ti][2];
                test_poison(y, NX * R);
                cf->gemm(&m, r0, r1, xq, xstride, nx, y, R);
                for (int64_t i = 0; i < nx; i++)
                    for (int64_t rr = r0; rr < r1; rr++) {
                        double mag;
                        const double acc = test_dot_ref(wv + rr * Kd, x + i * Kd, Kd, &mag);
                        double got = y[i * R + (rr - r0)];
                        CHECK(fabs(got - acc) <= 1e-6 * mag,
                              "%s K %lld tile %d: y[%lld][%lld] = %g, want %g",
                              moe_format_name(k_formats[fi]), (long long)Kd, ti, (long long)i,
                              (long long)rr, got, acc);
                    }
            }
            cf->gemm(&m, 0, R, xq, xstride, NX, y, R);
            for (int64_t i = 0; i < NX; i++) {
                cf->gemm(&m, 0, R, xq + i * xstride, xstride, 1, y1, R);
                CHECK(!memcmp(y1, y + i * R, sizeof y1), "%s K %lld: row %lld alone differs",
                      moe_format_name(k_formats[fi]), (long long)Kd, (long long)i);
            }
            free(w); free(wv); free(x); moe__aligned_free(xq);
        }
}

TEST(cpu_bandwidth_probe) {
    double g = -1;
    CHECK_STATUS(moe_measure_read_bandwidth(2, (size_t)64 << 20, &g), MOE_OK);
    CHECK(isfinite(g) && g > 0.5 && g < 1e5, "bandwidth %g GB/s", g);
    CHECK_STATUS(moe_measure_read_bandwidth(1, (size_t)1 << 20, NULL), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_measure_read_bandwidth(-1, (size_t)1 << 20, &g), MOE_ERR_INVALID_ARG);

    /* On a context's own pool, twice (the pool stays usable after a probe),
     * with a buffer of its own and with a lent one. */
    moe_context_options co = { .n_threads = 2 };
    moe_context        *ctx = NULL;
    char                err[256];
    REQUIRE(moe_context_create(&co, &ctx, err, sizeof err) == MOE_OK, "%s", err);
    const size_t lent_bytes = (size_t)32 << 20;
    char        *lent = aligned_alloc(64, lent_bytes + 64);
    REQUIRE(lent != NULL, "out of memory");
    for (int i = 0; i < 2; i++) {
        g = -1;
        CHECK_STATUS(moe_context_measure_read_bandwidth(ctx, i ? lent : NULL, lent_bytes, &g),
                     MOE_OK);
        CHECK(isfinite(g) && g > 0.5 && g < 1e5, "context probe %d: %g GB/s", i, g);
    }
    CHECK_STATUS(moe_context_measure_read_bandwidth(ctx, lent, (size_t)1 << 20, NULL),
                 MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_context_measure_read_bandwidth(NULL, lent, (size_t)1 << 20, &g),
                 MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_context_measure_read_bandwidth(ctx, lent + 8, (size_t)1 << 20, &g),
                 MOE_ERR_INVALID_ARG); /* misaligned */
    CHECK_STATUS(moe_context_measure_read_bandwidth(ctx, lent, 4096, &g),
                 MOE_ERR_INVALID_ARG); /* less than a chunk */
    free(lent);
    moe_context_destroy(ctx);
}

/* The huge-page hint touches no byte: data written before and after it
 * (an unaligned buffer, so the advised range is a strict inside) stays. */
TEST(cpu_advise_huge_pages) {
    const size_t n = (size_t)5 << 20;
    unsigned char *raw = malloc(n + 1), *p = raw + 1;
    REQUIRE(raw != NULL, "out of memory");
    for (size_t i = 0; i < n / 2; i++) p[i] = (unsigned char)(i * 131);
    moe_advise_huge_pages(p, n);
    moe_advise_huge_pages(NULL, 0);
    moe_advise_huge_pages(p, 100);
    for (size_t i = n / 2; i < n; i++) p[i] = (unsigned char)(i * 131);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += p[i] != (unsigned char)(i * 131);
    CHECK(bad == 0, "%zu bytes changed", bad);
    free(raw);
}
