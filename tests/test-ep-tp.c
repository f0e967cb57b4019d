/*
 * test-ep-tp.c - tensor-parallel slicing without a transport: for every
 * tp_rank the sliced experts run as an ordinary local layer, and the sum of
 * the tp partial outputs must equal the full layer within f32 rounding.
 * Also: refusals (d_ff not divisible, quantized formats), and the parallel
 * configuration errors a layer reports at creation.
 */
#include "test.h"

#include <stdlib.h>
#include <string.h>

static uint16_t bf16(float f) {
    union { float f; uint32_t u; } v = { f };
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}

/* out (T, H) of a local layer over experts e (router r, logits lg). */
static moe_status run_layer(moe_router *r, moe_routed_experts *e, int64_t T, const float *x,
                            const float *lg, float *out) {
    moe_layer *l = NULL;
    char err[256];
    moe_context_options co = { .n_threads = 1 };
    moe_context *ctx = NULL;
    moe_status st = moe_context_create(&co, &ctx, err, sizeof err);
    moe_layer_options lo = { .router = r, .experts = e, .context = ctx, .max_tokens = T };
    if (!st) st = moe_layer_create(&lo, &l, err, sizeof err);
    if (!st) {
        size_t n = moe_layer_workspace_size(l, T);
        void *ws = aligned_alloc(64, (n + 63) / 64 * 64);
        st = moe_layer_forward(l, T, x, lg, NULL, out, ws, n);
        free(ws);
    }
    moe_layer_destroy(l);
    moe_context_destroy(ctx);
    return st;
}

/* W13 in format f, W2 in f2 (f32 or bf16 each). */
static void check_tp(moe_activation act, moe_format f, moe_format f2, int biases, int32_t tp) {
    enum { E = 5, K = 2, T = 13 };
    const int64_t H = 24, I = 36, rows13 = act == MOE_ACT_RELU2 ? I : 2 * I;
    test_rng rng = { 7 + (uint64_t)act * 3 + (uint64_t)tp };
    size_t n13 = (size_t)(E * rows13 * H), n2 = (size_t)(E * H * I);
    float *w13 = malloc(n13 * 4), *w2 = malloc(n2 * 4), *b13 = malloc((size_t)(E * rows13) * 4);
    float *b2 = malloc((size_t)(E * H) * 4), *x = malloc((size_t)(T * H) * 4);
    float *lg = malloc((size_t)(T * E) * 4), *ref = malloc((size_t)(T * H) * 4);
    float *part = malloc((size_t)(T * H) * 4), *sum = calloc((size_t)(T * H), 4);
    uint16_t *h13 = malloc(n13 * 2), *h2 = malloc(n2 * 2);
    test_fill_normal(&rng, w13, n13, 0.2f);
    test_fill_normal(&rng, w2, n2, 0.2f);
    test_fill_normal(&rng, b13, (size_t)(E * rows13), 0.1f);
    test_fill_normal(&rng, b2, (size_t)(E * H), 0.1f);
    test_fill_normal(&rng, x, (size_t)(T * H), 1.0f);
    test_fill_normal(&rng, lg, (size_t)(T * E), 1.0f);
    for (size_t i = 0; i < n13; i++) h13[i] = bf16(w13[i]);
    for (size_t i = 0; i < n2; i++) h2[i] = bf16(w2[i]);
    moe_experts_options full = {
        .n_experts = E, .d_model = H, .d_ff = I, .format = f, .activation = act,
        .w13 = { .data = f == MOE_FORMAT_BF16 ? (void *)h13 : (void *)w13,
                 .bias = biases ? b13 : NULL },
        .w2 = { .data = f2 == MOE_FORMAT_BF16 ? (void *)h2 : (void *)w2,
                .bias = biases ? b2 : NULL },
        .w2_format = &f2,
    };
    moe_router_options ro = { .n_experts = E, .top_k = K, .renormalize = 1 };
    moe_router *r = NULL;
    moe_routed_experts *all = NULL;
    char err[256];
    REQUIRE(moe_router_create(&ro, &r, err, sizeof err) == MOE_OK, "%s", err);
    REQUIRE(moe_routed_experts_create(&full, &all, err, sizeof err) == MOE_OK, "%s", err);
    CHECK_STATUS(run_layer(r, all, T, x, lg, ref), MOE_OK);
    for (int32_t k = 0; k < tp; k++) {
        moe_routed_experts *s = NULL;
        moe_status st = moe_routed_experts_create_tp(&full, tp, k, &s, err, sizeof err);
        CHECK(st == MOE_OK, "tp %d rank %d: %s", tp, k, err);
        if (st) continue;
        CHECK_STATUS(run_layer(r, s, T, x, lg, part), MOE_OK);
        for (int64_t i = 0; i < T * H; i++) sum[i] += part[i];
        moe_routed_experts_destroy(s);
    }
    double nmse = test_nmse_f(sum, ref, (size_t)(T * H));
    CHECK(nmse < 1e-11, "act %d format %s/%s tp %d: nmse %.3g of the tp sum", (int)act,
          moe_format_name(f), moe_format_name(f2), tp, nmse);
    moe_routed_experts_destroy(all);
    moe_router_destroy(r);
    free(w13), free(w2), free(b13), free(b2), free(x), free(lg), free(ref), free(part), free(sum);
    free(h13), free(h2);
}

TEST(ep_tp_slices_sum_to_full) {
    for (int32_t tp = 1; tp <= 4; tp++) {
        if (36 % tp) continue;
        check_tp(MOE_ACT_SILU, MOE_FORMAT_F32, MOE_FORMAT_F32, 0, tp);
        check_tp(MOE_ACT_SWIGLU_OAI, MOE_FORMAT_F32, MOE_FORMAT_F32, 1, tp);
        check_tp(MOE_ACT_RELU2, MOE_FORMAT_F32, MOE_FORMAT_F32, 1, tp);
        check_tp(MOE_ACT_GELU, MOE_FORMAT_BF16, MOE_FORMAT_BF16, 1, tp);
        check_tp(MOE_ACT_SILU, MOE_FORMAT_BF16, MOE_FORMAT_F32, 1, tp); /* mixed W13/W2 */
    }
}

TEST(ep_tp_refusals) {
    float w[2 * 8 * 10 * 2] = { 0 };
    moe_experts_options o = { .n_experts = 1, .d_model = 8, .d_ff = 10, .format = MOE_FORMAT_F32,
                              .w13 = { .data = w }, .w2 = { .data = w } };
    moe_routed_experts *e = (moe_routed_experts *)1;
    char err[256] = "";
    CHECK_STATUS(moe_routed_experts_create_tp(&o, 4, 0, &e, err, sizeof err), MOE_ERR_SHAPE);
    CHECK(e == NULL && strstr(err, "10") && strstr(err, "4"), "message: %s", err);
    CHECK_STATUS(moe_routed_experts_create_tp(&o, 2, 2, &e, err, sizeof err), MOE_ERR_INVALID_ARG);
    o.format = MOE_FORMAT_Q8_0;
    CHECK_STATUS(moe_routed_experts_create_tp(&o, 2, 0, &e, err, sizeof err), MOE_ERR_UNSUPPORTED);
    CHECK_STATUS(moe_routed_experts_create_tp(NULL, 2, 0, &e, err, sizeof err),
                 MOE_ERR_INVALID_ARG);
}

TEST(ep_parallel_config_errors) {
    /* Without MPI_Init (this runner never calls it) no MPI communicator. */
    moe_comm *c = (moe_comm *)1;
    char err[256] = "";
    int dummy = 0;
    moe_status st = moe_comm_create_mpi(&dummy, NULL, &c, err, sizeof err);
    CHECK(st == MOE_ERR_MPI || st == MOE_ERR_UNSUPPORTED, "got %s: %s", moe_status_name(st), err);
    CHECK(c == NULL, "out cleared");
    CHECK_STATUS(moe_comm_create_mpi(NULL, NULL, &c, err, sizeof err), MOE_ERR_INVALID_ARG);
    moe_comm_destroy(NULL);

    /* A layer whose parallel config has no communicator is refused. */
    float w[2 * 4 * 4 * 2] = { 0 };
    moe_experts_options eo = { .n_experts = 2, .d_model = 4, .d_ff = 4, .format = MOE_FORMAT_F32,
                               .w13 = { .data = w }, .w2 = { .data = w } };
    moe_router_options ro = { .n_experts = 2, .top_k = 1 };
    moe_router *r = NULL;
    moe_routed_experts *e = NULL;
    moe_layer *l = (moe_layer *)1;
    REQUIRE(moe_router_create(&ro, &r, err, sizeof err) == MOE_OK, "%s", err);
    REQUIRE(moe_routed_experts_create(&eo, &e, err, sizeof err) == MOE_OK, "%s", err);
    moe_parallel par = { .mode = MOE_PARALLEL_EP };
    moe_layer_options lo = { .router = r, .experts = e, .max_tokens = 4, .parallel = &par };
    CHECK_STATUS(moe_layer_create(&lo, &l, err, sizeof err), MOE_ERR_INVALID_ARG);
    CHECK(l == NULL && strstr(err, "comm"), "message: %s", err);
    moe_routed_experts_destroy(e);
    moe_router_destroy(r);
}
