/*
 * test-layer.c - the whole layer, end to end through the public API, against
 * a plain fp64 implementation written here (independent of the library's
 * reference experts), over a grid of odd shapes, every activation, biases,
 * shared experts, expert maps and orders; plus determinism and batch
 * invariance of the CPU path, NaN poisoning and argument errors.
 */
#include "test.h"

#include <stdlib.h>
#include <string.h>

/* NMSE bounds per weight type (vs the fp64 implementation below, which gets
 * the same rounded weights): f32/bf16/f16 accumulate in fp32. */
#define NMSE_F32  1e-10
#define NMSE_HALF 5e-4

typedef struct layer_case {
    int64_t          n_tokens, d_model, d_ff;
    int32_t          n_experts, top_k;
    moe_scoring      scoring;
    int              renormalize;
    moe_activation   act;
    moe_format       wfmt, io;
    int              biases;
    int64_t          shared_d_ff;     /* 0 = no shared experts   */
    int              shared_gate;
    int              remote_pct;      /* experts held elsewhere  */
    int              one_expert;      /* route everything to expert 1 */
    moe_shared_order order;
    int              threads;
} layer_case;

static float round_to(moe_format f, float v) {
    uint16_t h;
    switch (f) {
    case MOE_FORMAT_BF16: {
        uint32_t u; memcpy(&u, &v, 4);
        u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
        memcpy(&v, &u, 4);
        return v;
    }
    case MOE_FORMAT_F16: {
        /* Through the library-independent _Float16 of the compiler. */
        _Float16 x = (_Float16)v;
        (void)h;
        return (float)x;
    }
    default: return v;
    }
}

static void store(moe_format f, const float *src, void *dst, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = src[i];
        if (f == MOE_FORMAT_F32) { ((float *)dst)[i] = v; continue; }
        if (f == MOE_FORMAT_F16) { _Float16 x = (_Float16)v; memcpy((uint16_t *)dst + i, &x, 2); continue; }
        uint32_t u; v = round_to(f, v); memcpy(&u, &v, 4);
        ((uint16_t *)dst)[i] = (uint16_t)(u >> 16);
    }
}

static void load(moe_format f, const void *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (f == MOE_FORMAT_F32) { dst[i] = ((const float *)src)[i]; continue; }
        if (f == MOE_FORMAT_F16) { _Float16 x; memcpy(&x, (const uint16_t *)src + i, 2); dst[i] = (float)x; continue; }
        uint32_t u = (uint32_t)((const uint16_t *)src)[i] << 16;
        memcpy(&dst[i], &u, 4);
    }
}

static double act_f64(moe_activation a, const double *h, int64_t I, int64_t i) {
    double g, u;
    switch (a) {
    case MOE_ACT_SILU: g = h[i]; return g / (1 + exp(-g)) * h[I + i];
    case MOE_ACT_GELU: g = h[i]; return 0.5 * g * (1 + erf(g * M_SQRT1_2)) * h[I + i];
    case MOE_ACT_GELU_TANH:
        g = h[i];
        return 0.5 * g * (1 + tanh(sqrt(2 / M_PI) * (g + 0.044715 * g * g * g))) * h[I + i];
    case MOE_ACT_SWIGLU_OAI:
        g = fmin(h[2 * i], 7.0);
        u = fmax(fmin(h[2 * i + 1], 7.0), -7.0);
        return (u + 1) * g / (1 + exp(-1.702 * g));
    case MOE_ACT_RELU2: g = h[i] > 0 ? h[i] : 0; return g * g;
    }
    return NAN;
}

/* y (H) += scale * MLP(x) in double; weights as rounded floats. */
static void mlp_f64(const float *w13, const float *w2, const float *b13, const float *b2,
                    moe_activation act, int64_t H, int64_t I, const double *x, double scale,
                    double *y) {
    int64_t R = act == MOE_ACT_RELU2 ? I : 2 * I;
    double *h = malloc((size_t)R * sizeof(double)), *a = malloc((size_t)I * sizeof(double));
    for (int64_t r = 0; r < R; r++) {
        double acc = b13 ? b13[r] : 0;
        for (int64_t k = 0; k < H; k++) acc += (double)w13[r * H + k] * x[k];
        h[r] = acc;
    }
    /* The library feeds W2 the f32 activation; round it the same way. */
    for (int64_t i = 0; i < I; i++) a[i] = (float)act_f64(act, h, I, i);
    for (int64_t r = 0; r < H; r++) {
        double acc = b2 ? b2[r] : 0;
        for (int64_t k = 0; k < I; k++) acc += (double)w2[r * I + k] * a[k];
        y[r] += scale * acc;
    }
    free(h);
    free(a);
}

typedef struct built {
    moe_router *router; moe_routed_experts *experts; moe_shared_experts *shared;
    float *w13, *w2, *b13, *b2, *sw13, *sw2, *gate;   /* rounded f32 copies (global ids) */
    int32_t *map; int32_t n_local;
} built;

static void built_free(built *b) {
    moe_router_destroy(b->router);
    moe_routed_experts_destroy(b->experts);
    moe_shared_experts_destroy(b->shared);
    free(b->w13); free(b->w2); free(b->b13); free(b->b2); free(b->sw13); free(b->sw2);
    free(b->gate); free(b->map);
}

static int build(const layer_case *c, test_rng *rng, built *b) {
    memset(b, 0, sizeof *b);
    const int64_t H = c->d_model, I = c->d_ff, R = c->act == MOE_ACT_RELU2 ? I : 2 * I;
    const int32_t E = c->n_experts;
    size_t n13 = (size_t)(E * R * H), n2 = (size_t)(E * H * I);
    b->w13 = malloc(n13 * 4); b->w2 = malloc(n2 * 4);
    test_fill_normal(rng, b->w13, n13, 1.0f / sqrtf((float)H));
    test_fill_normal(rng, b->w2, n2, 1.0f / sqrtf((float)I));
    for (size_t i = 0; i < n13; i++) b->w13[i] = round_to(c->wfmt, b->w13[i]);
    for (size_t i = 0; i < n2; i++) b->w2[i] = round_to(c->wfmt, b->w2[i]);
    if (c->biases) {
        b->b13 = malloc((size_t)(E * R) * 4); b->b2 = malloc((size_t)(E * H) * 4);
        test_fill_normal(rng, b->b13, (size_t)(E * R), 0.1f);
        test_fill_normal(rng, b->b2, (size_t)(E * H), 0.1f);
    }
    /* Expert map: a remote_pct share of experts elsewhere (every other one at
     * 50%), the rest numbered locally in order. */
    b->map = malloc((size_t)E * 4);
    b->n_local = 0;
    for (int32_t g = 0; g < E; g++) {
        int remote = c->remote_pct == 100 || (c->remote_pct == 50 && g % 2);
        b->map[g] = remote ? -1 : b->n_local++;
    }
    int32_t L = b->n_local ? b->n_local : 1;
    size_t l13 = (size_t)(L * R * H), l2 = (size_t)(L * H * I), es = c->wfmt == MOE_FORMAT_F32 ? 4 : 2;
    char *d13 = calloc(l13, es), *d2 = calloc(l2, es);
    float *lb13 = c->biases ? calloc((size_t)(L * R), 4) : NULL, *lb2 = c->biases ? calloc((size_t)(L * H), 4) : NULL;
    for (int32_t g = 0; g < E; g++) {
        int32_t l = b->map[g];
        if (l < 0) continue;
        store(c->wfmt, b->w13 + (size_t)g * R * H, d13 + (size_t)l * R * H * es, (size_t)(R * H));
        store(c->wfmt, b->w2 + (size_t)g * H * I, d2 + (size_t)l * H * I * es, (size_t)(H * I));
        if (c->biases) {
            memcpy(lb13 + l * R, b->b13 + g * R, (size_t)R * 4);
            memcpy(lb2 + l * H, b->b2 + g * H, (size_t)H * 4);
        }
    }
    char err[256];
    moe_experts_options eo = {
        .n_experts = L, .d_model = H, .d_ff = I, .format = c->wfmt, .activation = c->act,
        .w13 = { .data = d13, .bias = lb13 }, .w2 = { .data = d2, .bias = lb2 },
        .n_experts_global = c->remote_pct ? E : 0, .expert_map = c->remote_pct ? b->map : NULL,
    };
    moe_status st = moe_routed_experts_create(&eo, &b->experts, err, sizeof err);
    free(d13); free(d2); free(lb13); free(lb2);
    if (st) { test_fail(__FILE__, __LINE__, "experts: %s", err); return 0; }

    if (c->shared_d_ff) {
        const int64_t SI = c->shared_d_ff, SR = c->act == MOE_ACT_RELU2 ? SI : 2 * SI;
        b->sw13 = malloc((size_t)(SR * H) * 4); b->sw2 = malloc((size_t)(H * SI) * 4);
        test_fill_normal(rng, b->sw13, (size_t)(SR * H), 1.0f / sqrtf((float)H));
        test_fill_normal(rng, b->sw2, (size_t)(H * SI), 1.0f / sqrtf((float)SI));
        char *s13 = malloc((size_t)(SR * H) * es), *s2 = malloc((size_t)(H * SI) * es);
        store(c->wfmt, b->sw13, s13, (size_t)(SR * H));
        store(c->wfmt, b->sw2, s2, (size_t)(H * SI));
        load(c->wfmt, s13, b->sw13, (size_t)(SR * H));
        load(c->wfmt, s2, b->sw2, (size_t)(H * SI));
        if (c->shared_gate) {
            b->gate = malloc((size_t)H * 4);
            test_fill_normal(rng, b->gate, (size_t)H, 1.0f / sqrtf((float)H));
        }
        moe_shared_options so = { .mlp = { .n_experts = 1, .d_model = H, .d_ff = SI,
                                           .format = c->wfmt, .activation = c->act,
                                           .w13 = { .data = s13 }, .w2 = { .data = s2 } },
                                  .gate = b->gate };
        st = moe_shared_experts_create(&so, &b->shared, err, sizeof err);
        free(s13); free(s2);
        if (st) { test_fail(__FILE__, __LINE__, "shared: %s", err); return 0; }
    }
    moe_router_options ro = { .n_experts = E, .top_k = c->top_k, .scoring = c->scoring,
                              .renormalize = c->renormalize };
    if ((st = moe_router_create(&ro, &b->router, err, sizeof err))) {
        test_fail(__FILE__, __LINE__, "router: %s", err);
        return 0;
    }
    return 1;
}

/* out (n, H) in double from routing (ids, w) with the rounded weights. */
static void reference(const layer_case *c, const built *b, const float *x, const int32_t *ids,
                      const float *w, double *out) {
    const int64_t H = c->d_model, I = c->d_ff, R = c->act == MOE_ACT_RELU2 ? I : 2 * I;
    double *xd = malloc((size_t)H * sizeof(double));
    for (int64_t t = 0; t < c->n_tokens; t++) {
        double *o = out + t * H;
        for (int64_t k = 0; k < H; k++) o[k] = 0;
        for (int32_t j = 0; j < c->top_k; j++) {
            int32_t g = ids[t * c->top_k + j];
            if (b->map[g] < 0) continue;
            double wj = w[t * c->top_k + j], in = c->scoring == MOE_SCORING_LLAMA4 ? wj : 1.0;
            for (int64_t k = 0; k < H; k++) xd[k] = (double)(float)(x[t * H + k] * (float)in);
            mlp_f64(b->w13 + (size_t)g * R * H, b->w2 + (size_t)g * H * I,
                    b->b13 ? b->b13 + g * R : NULL, b->b2 ? b->b2 + g * H : NULL, c->act, H, I, xd,
                    c->scoring == MOE_SCORING_LLAMA4 ? 1.0 : wj, o);
        }
        if (b->shared) {
            double *sy = calloc((size_t)H, sizeof(double)), g = 1;
            for (int64_t k = 0; k < H; k++) xd[k] = x[t * H + k];
            mlp_f64(b->sw13, b->sw2, NULL, NULL, c->act, H, c->shared_d_ff, xd, 1.0, sy);
            if (b->gate) {
                double dot = 0;
                for (int64_t k = 0; k < H; k++) dot += xd[k] * b->gate[k];
                g = 1 / (1 + exp(-dot));
            }
            for (int64_t k = 0; k < H; k++) o[k] += g * sy[k];
            free(sy);
        }
    }
    free(xd);
}

/* Runs the case on `backend`; returns the NMSE against the fp64 reference
 * (and the output in out_copy, f32, when not NULL). */
static double run_case(const layer_case *c, moe_backend backend, float *out_copy) {
    test_rng rng = { 1234 + (uint64_t)c->n_tokens * 31 + (uint64_t)c->n_experts };
    built b;
    if (!build(c, &rng, &b)) { built_free(&b); return INFINITY; }
    const int64_t n = c->n_tokens, H = c->d_model;
    const int32_t E = c->n_experts, K = c->top_k;
    float *x = malloc((size_t)(n * H + 1) * 4), *logits = malloc((size_t)(n * E + 1) * 4);
    test_fill_normal(&rng, x, (size_t)(n * H), 1.0f);
    for (size_t i = 0; i < (size_t)(n * H); i++) x[i] = round_to(c->io, x[i]);
    test_fill_normal(&rng, logits, (size_t)(n * E), 1.0f);
    if (c->one_expert)
        for (int64_t t = 0; t < n; t++) logits[t * E + (E > 1 ? 1 : 0)] += 100.0f;
    int32_t *ids = malloc((size_t)(n * K + 1) * 4);
    float *w = malloc((size_t)(n * K + 1) * 4);
    moe_router_route(b.router, n, logits, ids, w);

    char err[256];
    moe_context *ctx = NULL;
    moe_layer *l = NULL;
    moe_context_options co = { .n_threads = c->threads };
    double nmse = INFINITY;
    if (moe_context_create(&co, &ctx, err, sizeof err)) { test_fail(__FILE__, __LINE__, "%s", err); goto out; }
    moe_layer_options lo = { .router = b.router, .experts = b.experts, .context = ctx,
                             .backend = backend, .shared_order = c->order, .io_format = c->io,
                             .max_tokens = n > 0 ? n : 1, .shared = b.shared };
    if (moe_layer_create(&lo, &l, err, sizeof err)) { test_fail(__FILE__, __LINE__, "%s", err); goto out; }
    size_t ws_size = moe_layer_workspace_size(l, n);
    void *ws = aligned_alloc(64, (ws_size + 64) / 64 * 64);
    size_t es = c->io == MOE_FORMAT_F32 ? 4 : 2;
    void *xin = malloc((size_t)(n * H) * es + 4), *outb = malloc((size_t)(n * H) * es + 4);
    float *out = malloc((size_t)(n * H) * 4 + 4);
    store(c->io, x, xin, (size_t)(n * H));
    memset(outb, 0xff, (size_t)(n * H) * es); /* NaN in every io format */
    moe_status st = moe_layer_forward(l, n, xin, logits, b.shared, outb, ws, ws_size);
    if (st) {
        test_fail(__FILE__, __LINE__, "forward: %s: %s", moe_status_name(st), moe_layer_last_error(l));
    } else {
        load(c->io, outb, out, (size_t)(n * H));
        long bad = test_find_nan(out, (size_t)(n * H));
        if (bad >= 0) test_fail(__FILE__, __LINE__, "output element %ld not written (NaN)", bad);
        double *ref = malloc((size_t)(n * H) * sizeof(double) + 8);
        reference(c, &b, x, ids, w, ref);
        if (c->io != MOE_FORMAT_F32)
            for (int64_t i = 0; i < n * H; i++) ref[i] = round_to(c->io, (float)ref[i]);
        nmse = test_nmse(out, ref, (size_t)(n * H));
        if (out_copy) memcpy(out_copy, out, (size_t)(n * H) * 4);
        free(ref);
    }
    free(ws); free(xin); free(outb); free(out);
out:
    moe_layer_destroy(l);
    moe_context_destroy(ctx);
    free(x); free(logits); free(ids); free(w);
    built_free(&b);
    return nmse;
}

static double tol_for(const layer_case *c) {
    return c->wfmt == MOE_FORMAT_F32 && c->io == MOE_FORMAT_F32 ? NMSE_F32 : NMSE_HALF;
}

static void check_case(const char *what, layer_case c) {
    const moe_backend backends[] = { MOE_BACKEND_REF, MOE_BACKEND_CPU };
    for (int i = 0; i < 2; i++) {
        double nmse = run_case(&c, backends[i], NULL);
        CHECK(nmse <= tol_for(&c), "%s on %s: n %lld E %d k %d H %lld I %lld act %d fmt %s: NMSE %.3g",
              what, i ? "cpu" : "ref", (long long)c.n_tokens, c.n_experts, c.top_k,
              (long long)c.d_model, (long long)c.d_ff, (int)c.act, moe_format_name(c.wfmt), nmse);
    }
}

static layer_case base_case(void) {
    return (layer_case){ .n_tokens = 17, .d_model = 67, .d_ff = 45, .n_experts = 8, .top_k = 2,
                         .scoring = MOE_SCORING_SOFTMAX, .renormalize = 1, .act = MOE_ACT_SILU,
                         .wfmt = MOE_FORMAT_F32, .io = MOE_FORMAT_F32, .threads = 2 };
}

TEST(layer_shape_grid) {
    const int64_t tokens[] = { 0, 1, 2, 3, 17, 33, 257 };
    const int32_t experts[] = { 1, 8, 60, 128 };
    for (size_t i = 0; i < sizeof tokens / sizeof *tokens; i++)
        for (size_t j = 0; j < sizeof experts / sizeof *experts; j++) {
            layer_case c = base_case();
            c.n_tokens = tokens[i];
            c.n_experts = experts[j];
            c.top_k = experts[j] < 8 ? experts[j] : (int32_t)(1 + (i + j) % 8);
            c.d_model = 35 + 2 * (int64_t)j;
            c.d_ff = 19 + (int64_t)i;
            if (tokens[i] > 100 && experts[j] > 60) c.d_model = 33; /* keep the fp64 loop quick */
            check_case("grid", c);
        }
}

TEST(layer_activations_and_biases) {
    for (int act = MOE_ACT_SILU; act <= MOE_ACT_RELU2; act++)
        for (int bias = 0; bias < 2; bias++) {
            layer_case c = base_case();
            c.act = (moe_activation)act;
            c.biases = bias;
            check_case("activation", c);
        }
}

TEST(layer_weight_and_io_formats) {
    const moe_format fm[] = { MOE_FORMAT_F32, MOE_FORMAT_BF16, MOE_FORMAT_F16 };
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            layer_case c = base_case();
            c.wfmt = fm[i];
            c.io = fm[j];
            check_case("formats", c);
        }
}

TEST(layer_shared_experts_every_order) {
    const moe_shared_order orders[] = { MOE_SHARED_BEFORE, MOE_SHARED_OVERLAPPED, MOE_SHARED_IN_COMBINE };
    for (int gate = 0; gate < 2; gate++) {
        float *outs[3];
        for (int o = 0; o < 3; o++) {
            layer_case c = base_case();
            c.shared_d_ff = 2 * 23;
            c.shared_gate = gate;
            c.order = orders[o];
            outs[o] = malloc((size_t)(c.n_tokens * c.d_model) * 4);
            double nmse = run_case(&c, MOE_BACKEND_CPU, outs[o]);
            CHECK(nmse <= NMSE_F32, "shared gate %d order %d: NMSE %.3g", gate, o, nmse);
            CHECK(run_case(&c, MOE_BACKEND_REF, NULL) <= NMSE_F32, "ref shared gate %d", gate);
        }
        size_t bytes = 17 * 67 * 4;
        CHECK(!memcmp(outs[0], outs[1], bytes), "BEFORE and OVERLAPPED differ (gate %d)", gate);
        CHECK(!memcmp(outs[0], outs[2], bytes), "BEFORE and IN_COMBINE differ (gate %d)", gate);
        for (int o = 0; o < 3; o++) free(outs[o]);
    }
}

TEST(layer_expert_map_remote_experts) {
    const int pct[] = { 0, 50, 100 };
    for (int i = 0; i < 3; i++) {
        layer_case c = base_case();
        c.n_experts = 60;
        c.top_k = 4;
        c.remote_pct = pct[i];
        check_case("expert map", c);
    }
}

TEST(layer_all_tokens_one_expert_and_idle_experts) {
    layer_case c = base_case();
    c.n_experts = 16;
    c.top_k = 1;
    c.n_tokens = 33;
    c.one_expert = 1;
    check_case("one expert", c);
    c.top_k = 3;
    check_case("one expert, k 3", c);
}

TEST(layer_router_variants) {
    layer_case c = base_case();
    c.scoring = MOE_SCORING_LLAMA4;
    c.top_k = 1;
    c.shared_d_ff = 30;
    check_case("llama4", c);
    c = base_case();
    c.scoring = MOE_SCORING_SOFTMAX_TOPK;
    c.act = MOE_ACT_SWIGLU_OAI;
    c.biases = 1;
    check_case("gpt-oss", c);
    c = base_case();
    c.renormalize = 0;
    c.top_k = 8;
    check_case("k = E", c);
}

TEST(layer_deterministic_over_runs_and_threads) {
    layer_case c = base_case();
    c.n_tokens = 33;
    c.n_experts = 60;
    c.top_k = 4;
    c.wfmt = MOE_FORMAT_BF16;
    c.shared_d_ff = 40;
    c.order = MOE_SHARED_OVERLAPPED;
    size_t n = (size_t)(c.n_tokens * c.d_model);
    float *first = malloc(n * 4), *again = malloc(n * 4);
    c.threads = 1;
    run_case(&c, MOE_BACKEND_CPU, first);
    for (int r = 0; r < 20; r++) {
        c.threads = 1 + r % 3;
        run_case(&c, MOE_BACKEND_CPU, again);
        CHECK(!memcmp(first, again, n * 4), "run %d with %d threads differs", r, c.threads);
    }
    free(first);
    free(again);
}

/* A token's output must not depend on the other tokens of the batch. */
TEST(layer_batch_invariance) {
    test_rng rng = { 99 };
    built b;
    layer_case c = base_case();
    c.n_experts = 8;
    c.wfmt = MOE_FORMAT_BF16;
    REQUIRE(build(&c, &rng, &b));
    const int64_t H = c.d_model, n = 33;
    float *x = malloc((size_t)(n * H) * 4), *logits = malloc((size_t)(n * 8) * 4);
    float *o_batch = malloc((size_t)(n * H) * 4), *o_one = malloc((size_t)H * 4);
    test_fill_normal(&rng, x, (size_t)(n * H), 1.0f);
    test_fill_normal(&rng, logits, (size_t)(n * 8), 1.0f);
    moe_layer *l;
    char err[256];
    moe_layer_options lo = { .router = b.router, .experts = b.experts, .backend = MOE_BACKEND_CPU,
                             .max_tokens = n };
    REQUIRE(moe_layer_create(&lo, &l, err, sizeof err) == MOE_OK, "%s", err);
    size_t wsz = moe_layer_workspace_size(l, n);
    void *ws = aligned_alloc(64, (wsz + 64) / 64 * 64);
    CHECK_STATUS(moe_layer_forward(l, n, x, logits, NULL, o_batch, ws, wsz), MOE_OK);
    for (int64_t t = 0; t < n; t += 5) {
        CHECK_STATUS(moe_layer_forward(l, 1, x + t * H, logits + t * 8, NULL, o_one, ws, wsz), MOE_OK);
        CHECK(!memcmp(o_one, o_batch + t * H, (size_t)H * 4), "token %lld differs alone", (long long)t);
    }
    free(ws); free(x); free(logits); free(o_batch); free(o_one);
    moe_layer_destroy(l);
    built_free(&b);
}

TEST(layer_argument_errors) {
    test_rng rng = { 5 };
    built b;
    layer_case c = base_case();
    REQUIRE(build(&c, &rng, &b));
    char err[256];
    moe_layer *l;
    moe_layer_options lo = { .router = b.router, .experts = b.experts, .max_tokens = 4 };
    CHECK_STATUS(moe_layer_create(NULL, &l, err, sizeof err), MOE_ERR_INVALID_ARG);
    lo.io_format = MOE_FORMAT_Q8_0;
    CHECK_STATUS(moe_layer_create(&lo, &l, err, sizeof err), MOE_ERR_INVALID_ARG);
    lo.io_format = MOE_FORMAT_F32;
    REQUIRE(moe_layer_create(&lo, &l, err, sizeof err) == MOE_OK, "%s", err);
    size_t wsz = moe_layer_workspace_size(l, 4);
    void *ws = aligned_alloc(64, (wsz + 64) / 64 * 64);
    float x[4 * 67] = { 0 }, out[4 * 67], logits[4 * 8] = { 0 };
    int32_t ids[8] = { 0, 1, 2, 3, 4, 5, 6, 8 };
    float w[8] = { 1, 1, 1, 1, 1, 1, 1, 1 };
    CHECK_STATUS(moe_layer_forward(l, 5, x, logits, NULL, out, ws, wsz), MOE_ERR_RANGE);
    CHECK_STATUS(moe_layer_forward(l, 4, x, logits, NULL, out, ws, wsz / 2), MOE_ERR_WORKSPACE);
    CHECK_STATUS(moe_layer_forward(l, 4, x, logits, NULL, out, (char *)ws + 8, wsz - 8), MOE_ERR_WORKSPACE);
    CHECK_STATUS(moe_layer_forward(l, 4, x, NULL, NULL, out, ws, wsz), MOE_ERR_UNSUPPORTED);
    CHECK_STATUS(moe_layer_forward(l, -1, x, logits, NULL, out, ws, wsz), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_layer_forward(l, 0, NULL, NULL, NULL, NULL, NULL, 0), MOE_OK);
    CHECK_STATUS(moe_layer_forward_routed(l, 4, x, ids, w, NULL, out, ws, wsz), MOE_ERR_RANGE);
    CHECK(strstr(moe_layer_last_error(l), "topk_ids[7] = 8") != NULL, "message: %s", moe_layer_last_error(l));
    ids[7] = 7;
    CHECK_STATUS(moe_layer_forward_routed(l, 4, x, ids, w, NULL, out, ws, wsz), MOE_OK);
    free(ws);
    moe_layer_destroy(l);
    /* Router and experts of different sizes. */
    moe_router *r2;
    moe_router_options ro = { .n_experts = 9, .top_k = 2 };
    REQUIRE(moe_router_create(&ro, &r2, err, sizeof err) == MOE_OK, "%s", err);
    lo.router = r2;
    CHECK_STATUS(moe_layer_create(&lo, &l, err, sizeof err), MOE_ERR_SHAPE);
    moe_router_destroy(r2);
    built_free(&b);
}

TEST(experts_argument_errors) {
    char err[256];
    moe_routed_experts *e;
    float w[64] = { 0 };
    moe_experts_options o = { .n_experts = 2, .d_model = 4, .d_ff = 2, .format = MOE_FORMAT_F32,
                              .w13 = { .data = w }, .w2 = { .data = w } };
    CHECK_STATUS(moe_routed_experts_create(&o, &e, err, sizeof err), MOE_OK);
    moe_routed_experts_destroy(e);
    int32_t bad_map[3] = { 0, 2, -1 }, dup_map[3] = { 0, 0, 1 };
    o.n_experts_global = 3;
    o.expert_map = bad_map;
    CHECK_STATUS(moe_routed_experts_create(&o, &e, err, sizeof err), MOE_ERR_RANGE);
    o.expert_map = dup_map;
    CHECK_STATUS(moe_routed_experts_create(&o, &e, err, sizeof err), MOE_ERR_RANGE);
    o.expert_map = NULL;
    CHECK_STATUS(moe_routed_experts_create(&o, &e, err, sizeof err), MOE_ERR_INVALID_ARG);
    o.n_experts_global = 0;
    o.d_ff = 0;
    CHECK_STATUS(moe_routed_experts_create(&o, &e, err, sizeof err), MOE_ERR_INVALID_ARG);
    o.d_ff = 2;
    o.w2.data = NULL;
    CHECK_STATUS(moe_routed_experts_create(&o, &e, err, sizeof err), MOE_ERR_INVALID_ARG);
    moe_routed_experts_destroy(NULL);
    moe_shared_experts_destroy(NULL);
    moe_layer_destroy(NULL);
    moe_router_destroy(NULL);
    moe_context_destroy(NULL);
}

TEST(status_names_and_strings) {
    CHECK(!strcmp(moe_status_name(MOE_ERR_NOMEM), "MOE_ERR_NOMEM"));
    CHECK(!strcmp(moe_status_str(MOE_OK), "success"));
    CHECK(!strcmp(moe_status_name((moe_status)9999), "MOE_UNKNOWN"));
    CHECK(MOE_ERR_INTERNAL == 30, "status numbers are stable");
    moe_format f;
    CHECK_STATUS(moe_format_from_name("bf16", &f), MOE_OK);
    CHECK(f == MOE_FORMAT_BF16);
    CHECK_STATUS(moe_format_from_name("nope", &f), MOE_ERR_INVALID_ARG);
}
