/*
 * tp-equal.c - tensor-parallel experts over MPI (tp = the number of ranks)
 * match the single-rank layer within f32 rounding, give bitwise the same
 * output on every rank, and a d_ff that tp does not divide is refused.
 */
#include "mpi-test.h"

typedef struct tp_case {
    const char    *name;
    int32_t        E, K, T;
    int64_t        H, I, shared_I;
    moe_activation act;
    int            biases;
} tp_case;

static const tp_case g_cases[] = {
    { "tp_silu", 8, 2, 33, 32, 48, 0, MOE_ACT_SILU, 0 },
    { "tp_swiglu_biases", 6, 3, 17, 16, 24, 0, MOE_ACT_SWIGLU_OAI, 1 },
    { "tp_relu2_shared", 4, 2, 21, 24, 36, 16, MOE_ACT_RELU2, 1 },
};

static moe_comm *g_comm;

static int run_case(const tp_case *c, char *why) {
    char err[256];
    mt_model m;
    mt_model_init(&m, 500 + (uint64_t)c->T, c->E, c->K, c->H, c->I, c->biases, c->shared_I);
    m.act = c->act;
    const int64_t T = c->T, H = c->H;
    int fail = 0;
    mt_rng r = { 9 };
    float *x   = malloc(sizeof(float) * (size_t)(T * H));
    float *lg  = malloc(sizeof(float) * (size_t)(T * c->E));
    float *ref = malloc(sizeof(float) * (size_t)(T * H));
    float *out = malloc(sizeof(float) * (size_t)(T * H));
    float *out0 = malloc(sizeof(float) * (size_t)(T * H));
    mt_fill(&r, x, (size_t)(T * H), 1.0f);
    mt_fill(&r, lg, (size_t)(T * c->E), 2.0f);
    moe_router_options ro = { .n_experts = c->E, .top_k = c->K, .renormalize = 1 };
    moe_context_options co = { .n_threads = 1 };
    moe_router *router = NULL;
    moe_context *ctx = NULL;
    moe_routed_experts *all = NULL, *slice = NULL;
    moe_shared_experts *sh = NULL;
    moe_layer *ref_layer = NULL, *tp_layer = NULL;
    void *ws = NULL;
    int32_t which[64];
    for (int32_t e = 0; e < c->E; e++) which[e] = e;
    if (moe_router_create(&ro, &router, err, sizeof err) ||
        moe_context_create(&co, &ctx, err, sizeof err) ||
        mt_experts(&m, which, c->E, 0, NULL, &all, err, sizeof err) ||
        (c->shared_I && mt_shared(&m, 0, &sh, err, sizeof err))) {
        fail = mt_fail(why, "setup: %s", err);
        goto done;
    }
    moe_layer_options lo = { .router = router, .experts = all, .context = ctx, .max_tokens = T,
                             .shared = sh };
    if (moe_layer_create(&lo, &ref_layer, err, sizeof err)) {
        fail = mt_fail(why, "reference layer: %s", err);
        goto done;
    }
    size_t ws_size = moe_layer_workspace_size(ref_layer, T);
    ws = aligned_alloc(64, (ws_size + 63) / 64 * 64);
    if (moe_layer_forward(ref_layer, T, x, lg, sh, ref, ws, ws_size)) {
        fail = mt_fail(why, "reference forward: %s", moe_layer_last_error(ref_layer));
        goto done;
    }
    free(ws);
    ws = NULL;

    /* This rank's slice of the full experts. */
    moe_experts_options full = {
        .n_experts = c->E, .d_model = H, .d_ff = c->I, .format = MOE_FORMAT_F32,
        .activation = c->act, .w13 = { .data = m.w13, .bias = m.b13 },
        .w2 = { .data = m.w2, .bias = m.b2 },
    };
    if (moe_routed_experts_create_tp(&full, mt_size, mt_rank, &slice, err, sizeof err)) {
        fail = mt_fail(why, "slice: %s", err);
        goto done;
    }
    moe_parallel par = { .mode = MOE_PARALLEL_TP, .comm = g_comm };
    moe_layer_options tl = lo;
    tl.experts  = slice;
    tl.parallel = &par;
    if (moe_layer_create(&tl, &tp_layer, err, sizeof err)) {
        fail = mt_fail(why, "tp layer: %s", err);
        goto done;
    }
    ws_size = moe_layer_workspace_size(tp_layer, T);
    ws = aligned_alloc(64, (ws_size + 63) / 64 * 64);
    if (moe_layer_forward(tp_layer, T, x, lg, sh, out, ws, ws_size)) {
        fail = mt_fail(why, "tp forward: %s", moe_layer_last_error(tp_layer));
        goto done;
    }
    /* Within f32 rounding of the reference: |a - b| <= 1e-5 (|b| + max |ref|). */
    float amax = 0;
    for (int64_t i = 0; i < T * H; i++) amax = fmaxf(amax, fabsf(ref[i]));
    for (int64_t i = 0; i < T * H && !fail; i++)
        if (!(fabsf(out[i] - ref[i]) <= 1e-5f * (fabsf(ref[i]) + amax)))
            fail = mt_fail(why, "element %lld: %.9g, single rank %.9g", (long long)i, out[i],
                           ref[i]);
    /* Every rank holds the same sum, bit for bit. */
    memcpy(out0, out, sizeof(float) * (size_t)(T * H));
    MPI_Bcast(out0, (int)(T * H), MPI_FLOAT, 0, MPI_COMM_WORLD);
    if (!fail && memcmp(out0, out, sizeof(float) * (size_t)(T * H)))
        fail = mt_fail(why, "rank %d's output differs from rank 0's", mt_rank);

done:
    free(ws);
    moe_layer_destroy(tp_layer);
    moe_layer_destroy(ref_layer);
    moe_routed_experts_destroy(slice);
    moe_routed_experts_destroy(all);
    moe_shared_experts_destroy(sh);
    moe_context_destroy(ctx);
    moe_router_destroy(router);
    free(x), free(lg), free(ref), free(out), free(out0);
    mt_model_free(&m);
    return fail;
}

/* d_ff = 30 on 4 ranks: refused with MOE_ERR_SHAPE and a message naming both. */
static int not_divisible(char *why) {
    mt_model m;
    mt_model_init(&m, 3, 2, 1, 8, 30, 0, 0);
    moe_experts_options full = { .n_experts = 2, .d_model = 8, .d_ff = 30,
                                 .format = MOE_FORMAT_F32, .w13 = { .data = m.w13 },
                                 .w2 = { .data = m.w2 } };
    moe_routed_experts *e = NULL;
    char err[256] = "";
    moe_status st = moe_routed_experts_create_tp(&full, 4, 1, &e, err, sizeof err);
    int fail = 0;
    if (st != MOE_ERR_SHAPE || e || !strstr(err, "30") || !strstr(err, "4"))
        fail = mt_fail(why, "got %s (%s)", moe_status_name(st), err);
    moe_routed_experts_destroy(e);
    mt_model_free(&m);
    return fail;
}

int main(int argc, char **argv) {
    g_comm = mt_init(&argc, &argv, 30000);
    char why[256] = "";
    int n_fail = 0;
    for (size_t i = 0; i < sizeof g_cases / sizeof *g_cases; i++) {
        why[0] = '\0';
        n_fail += !mt_report(g_cases[i].name, run_case(&g_cases[i], why), why);
    }
    why[0] = '\0';
    n_fail += !mt_report("tp_d_ff_not_divisible", not_divisible(why), why);
    moe_comm_destroy(g_comm);
    MPI_Finalize();
    return n_fail ? 1 : 0;
}
