/*
 * ep-equal.c - expert parallel over MPI is bitwise the single-rank layer.
 *
 * Every rank rebuilds the full model from a seed and computes the reference:
 * one local layer holding every expert, run on all tokens. Then the ranks
 * split the tokens (unevenly, one rank possibly with none), each builds the
 * experts its map gives it, and runs the "mpi" layer on its tokens; its rows
 * must equal the reference rows bit for bit. Cases cover every router
 * variant, shared experts, biases, placements, EPLB replicas after a
 * rebalance, experts with no tokens and all tokens on one rank's experts.
 */
#include "mpi-test.h"

typedef struct ep_case {
    const char    *name;
    int32_t        E, K, T;
    int64_t        H, I;
    moe_scoring    scoring;
    int            renorm;
    int32_t        n_group, topk_group;
    int            corr_bias;
    float          scaling;
    moe_activation act;
    int            biases;
    int64_t        shared_I;
    int            shared_gate;
    moe_placement  placement;
    int            eplb;        /* redundant slots (one per rank) placed by the policy */
    moe_backend    backend;
    int            skew;        /* 1: every token picks experts 0..K-1 (rank 0's)      */
    int            empty_rank;  /* 1: rank 1 gets no tokens                            */
    moe_format     format;      /* routed experts' weights (F32 by default)            */
} ep_case;

static const ep_case g_cases[] = {
    { .name = "softmax_renorm", .E = 8, .K = 2, .T = 37, .H = 32, .I = 24,
      .scoring = MOE_SCORING_SOFTMAX, .renorm = 1 },
    { .name = "softmax_no_renorm_ref_backend", .E = 6, .K = 2, .T = 19, .H = 16, .I = 8,
      .scoring = MOE_SCORING_SOFTMAX, .backend = MOE_BACKEND_REF },
    { .name = "sigmoid_grouped_bias_round_robin", .E = 16, .K = 4, .T = 29, .H = 32, .I = 16,
      .scoring = MOE_SCORING_SIGMOID, .renorm = 1, .n_group = 4, .topk_group = 2,
      .corr_bias = 1, .scaling = 2.5f, .placement = MOE_PLACEMENT_ROUND_ROBIN },
    { .name = "softmax_topk_swiglu_biases", .E = 8, .K = 4, .T = 23, .H = 32, .I = 16,
      .scoring = MOE_SCORING_SOFTMAX_TOPK, .act = MOE_ACT_SWIGLU_OAI, .biases = 1 },
    { .name = "llama4_shared_gate", .E = 8, .K = 1, .T = 31, .H = 32, .I = 16,
      .scoring = MOE_SCORING_LLAMA4, .shared_I = 24, .shared_gate = 1 },
    { .name = "shared_experts_gelu", .E = 12, .K = 3, .T = 40, .H = 24, .I = 16,
      .scoring = MOE_SCORING_SOFTMAX, .renorm = 1, .act = MOE_ACT_GELU, .shared_I = 32 },
    { .name = "all_tokens_on_rank0_experts", .E = 8, .K = 2, .T = 33, .H = 32, .I = 16,
      .scoring = MOE_SCORING_SOFTMAX, .renorm = 1, .skew = 1 },
    { .name = "rank_without_tokens", .E = 8, .K = 2, .T = 21, .H = 16, .I = 16,
      .scoring = MOE_SCORING_SOFTMAX, .renorm = 1, .empty_rank = 1 },
    { .name = "experts_not_divisible", .E = 10, .K = 3, .T = 27, .H = 16, .I = 8,
      .scoring = MOE_SCORING_SOFTMAX, .renorm = 1, .act = MOE_ACT_RELU2 },
    { .name = "eplb_replicas", .E = 8, .K = 2, .T = 45, .H = 32, .I = 16,
      .scoring = MOE_SCORING_SOFTMAX, .renorm = 1, .eplb = 1, .skew = 1 },
    /* BF16 experts run with bf16 activations: they travel as bf16. */
    { .name = "bf16_weights_shared", .E = 16, .K = 4, .T = 50, .H = 64, .I = 32,
      .scoring = MOE_SCORING_SOFTMAX, .renorm = 1, .shared_I = 32, .format = MOE_FORMAT_BF16 },
    /* MXFP4 experts round their activations to bf16: they travel as bf16. */
    { .name = "mxfp4_bf16_on_the_wire", .E = 8, .K = 2, .T = 41, .H = 64, .I = 32,
      .scoring = MOE_SCORING_SOFTMAX_TOPK, .act = MOE_ACT_SWIGLU_OAI, .biases = 1,
      .format = MOE_FORMAT_MXFP4 },
    /* So do AWQ's (4-bit, bf16 activations). */
    { .name = "awq_bf16_on_the_wire", .E = 8, .K = 2, .T = 39, .H = 64, .I = 32,
      .scoring = MOE_SCORING_SOFTMAX, .renorm = 1, .shared_I = 32, .format = MOE_FORMAT_INT4_AWQ },
};

static moe_comm *g_comm;

static int run_case(const ep_case *c, char *why) {
    char err[256];
    moe_status st;
    mt_model m;
    mt_model_init(&m, 1000 + (uint64_t)c->E * 7 + (uint64_t)c->T, c->E, c->K, c->H, c->I,
                  c->biases, c->shared_I);
    m.act    = c->act;
    m.format = c->format;
    const int64_t H = c->H, T = c->T;
    int fail = 0;

    /* Router and the global tokens. */
    mt_rng r = { 77 + (uint64_t)c->T };
    float *bias = malloc(sizeof(float) * (size_t)c->E);
    mt_fill(&r, bias, (size_t)c->E, 0.5f);
    moe_router_options ro = {
        .n_experts = c->E, .top_k = c->K, .scoring = c->scoring, .renormalize = c->renorm,
        .n_group = c->n_group, .topk_group = c->topk_group,
        .correction_bias = c->corr_bias ? bias : NULL, .routed_scaling_factor = c->scaling,
    };
    moe_router *router = NULL;
    float *x   = malloc(sizeof(float) * (size_t)(T * H));
    float *lg  = malloc(sizeof(float) * (size_t)(T * c->E));
    float *ref = malloc(sizeof(float) * (size_t)(T * H));
    float *out = malloc(sizeof(float) * (size_t)(T * H + 1));
    mt_fill(&r, x, (size_t)(T * H), 1.0f);
    mt_fill(&r, lg, (size_t)(T * c->E), 2.0f);
    if (c->skew)
        for (int64_t t = 0; t < T; t++)
            for (int32_t e = 0; e < c->E; e++) lg[t * c->E + e] += e < c->K ? 8.0f : -8.0f;
    moe_context_options co = { .n_threads = 1 };
    moe_context *ctx = NULL;
    moe_routed_experts *all = NULL, *mine = NULL;
    moe_shared_experts *sh = NULL;
    moe_layer *ref_layer = NULL, *ep_layer = NULL;
    moe_expert_map *map = NULL;
    int32_t *which = NULL, *ids = NULL;
    void *ws = NULL;
    if ((st = moe_router_create(&ro, &router, err, sizeof err)) ||
        (st = moe_context_create(&co, &ctx, err, sizeof err))) {
        fail = mt_fail(why, "setup: %s", err);
        goto done;
    }
    if (c->shared_I && (st = mt_shared(&m, c->shared_gate, &sh, err, sizeof err))) {
        fail = mt_fail(why, "shared: %s", err);
        goto done;
    }

    /* The reference: one rank, every expert. */
    which = malloc(sizeof(int32_t) * (size_t)(c->E + mt_size));
    for (int32_t e = 0; e < c->E; e++) which[e] = e;
    if ((st = mt_experts(&m, which, c->E, 0, NULL, &all, err, sizeof err))) {
        fail = mt_fail(why, "experts: %s", err);
        goto done;
    }
    moe_layer_options lo = { .router = router, .experts = all, .context = ctx,
                             .backend = c->backend, .max_tokens = T, .shared = sh };
    if ((st = moe_layer_create(&lo, &ref_layer, err, sizeof err))) {
        fail = mt_fail(why, "reference layer: %s", err);
        goto done;
    }
    size_t ws_size = moe_layer_workspace_size(ref_layer, T);
    ws = aligned_alloc(64, (ws_size + 63) / 64 * 64);
    if ((st = moe_layer_forward(ref_layer, T, x, lg, sh, ref, ws, ws_size))) {
        fail = mt_fail(why, "reference forward: %s", moe_layer_last_error(ref_layer));
        goto done;
    }
    free(ws);
    ws = NULL;

    /* The map; with EPLB, redundant slots (P divisible by the ranks) placed by the policy
     * from the global routing's load. */
    /* EPLB: at least one redundant slot, and P divisible by the ranks. */
    int32_t red = c->eplb ? mt_size - c->E % mt_size : 0;
    moe_expert_map_options mo = { .n_experts = c->E, .n_redundant = red,
                                  .ep_size = mt_size, .ep_rank = mt_rank,
                                  .placement = c->placement };
    if ((st = moe_expert_map_create(&mo, &map, err, sizeof err))) {
        fail = mt_fail(why, "map: %s", err);
        goto done;
    }
    if (c->eplb) {
        int32_t P = moe_expert_map_n_physical(map);
        ids = malloc(sizeof(int32_t) * (size_t)(T * c->K));
        float *w = malloc(sizeof(float) * (size_t)(T * c->K));
        double *load = calloc((size_t)c->E, sizeof *load);
        int32_t *p2l = malloc(sizeof(int32_t) * (size_t)P);
        moe_router_route(router, T, lg, ids, w);
        for (int64_t i = 0; i < T * c->K; i++) load[ids[i]] += 1;
        st = moe_eplb_rebalance(load, 1, c->E, P, 1, 1, mt_size, NULL, p2l, NULL, err, sizeof err);
        if (!st) st = moe_expert_map_set_physical(map, p2l, err, sizeof err);
        int hot_replicas = moe_expert_map_n_replicas(map, 0) + moe_expert_map_n_replicas(map, 1);
        free(w), free(load), free(p2l);
        if (st) {
            fail = mt_fail(why, "eplb: %s", err);
            goto done;
        }
        if (hot_replicas < 2 + (red > 1 ? 2 : 1)) {
            fail = mt_fail(why, "eplb gave the hot experts %d slots", hot_replicas);
            goto done;
        }
    }
    int32_t n_local = moe_expert_map_n_local(map);
    for (int32_t i = 0; i < n_local; i++)
        which[i] = moe_expert_map_logical(map, moe_expert_map_to_global(map, i));
    if ((st = mt_experts(&m, which, n_local, moe_expert_map_n_physical(map),
                         moe_expert_map_table(map), &mine, err, sizeof err))) {
        fail = mt_fail(why, "local experts: %s", err);
        goto done;
    }

    /* This rank's tokens: uneven slices; with empty_rank rank 1 has none. */
    int64_t lo_t = 0, hi_t = 0;
    {
        int64_t start = 0;
        for (int32_t q = 0; q < mt_size; q++) {
            int64_t n_q = (c->empty_rank && q == 1) ? 0 : T / mt_size + (q == 0 ? T % mt_size : 0);
            if (c->empty_rank && mt_size > 1 && q == 0) n_q += T / mt_size;
            if (q == mt_size - 1) n_q = T - start;
            if (q == mt_rank) lo_t = start, hi_t = start + n_q;
            start += n_q;
        }
    }
    const int64_t n = hi_t - lo_t;
    /* With EPLB, the forward records per-slot load: compare with the map's
     * own routing of this rank's tokens. */
    int32_t *load = c->eplb ? calloc((size_t)moe_expert_map_n_physical(map), sizeof *load) : NULL;
    moe_parallel par = { .mode = MOE_PARALLEL_EP, .comm = g_comm, .map = map, .load = load };
    moe_layer_options el = { .router = router, .experts = mine, .context = ctx,
                             .backend = c->backend, .max_tokens = T, .shared = sh,
                             .parallel = &par };
    if ((st = moe_layer_create(&el, &ep_layer, err, sizeof err))) {
        fail = mt_fail(why, "ep layer: %s", err);
        goto done;
    }
    if (strcmp(moe_layer_prepare_finalize_impl(ep_layer), "mpi")) {
        fail = mt_fail(why, "prepare/finalize is %s", moe_layer_prepare_finalize_impl(ep_layer));
        goto done;
    }
    ws_size = moe_layer_workspace_size(ep_layer, n);
    ws = aligned_alloc(64, (ws_size + 63) / 64 * 64);
    moe_comm_stats s0, s1;
    moe_comm_get_stats(g_comm, &s0);
    for (int rep = 0; rep < 2 && !fail; rep++) {
        memset(out, 0xff, sizeof(float) * (size_t)(n * H + 1));
        st = moe_layer_forward(ep_layer, n, x + lo_t * H, lg + lo_t * c->E, sh, out, ws, ws_size);
        if (st) {
            fail = mt_fail(why, "ep forward: %s", moe_layer_last_error(ep_layer));
            break;
        }
        for (int64_t t = 0; t < n && !fail; t++)
            if (memcmp(out + t * H, ref + (lo_t + t) * H, sizeof(float) * (size_t)H)) {
                int64_t k = 0;
                while (out[t * H + k] == ref[(lo_t + t) * H + k]) k++;
                fail = mt_fail(why, "token %lld column %lld: %.9g, single rank %.9g (rep %d)",
                               (long long)(lo_t + t), (long long)k, out[t * H + k],
                               ref[(lo_t + t) * H + k], rep);
            }
        uint32_t canary;
        memcpy(&canary, out + n * H, 4);
        if (!fail && canary != 0xffffffffu) fail = mt_fail(why, "wrote past the output");
    }
    /* Dispatch bytes: per forward a 40-byte header to each peer, then per row
     * sent away a 16-byte record and the activation row (bf16 for BF16, MXFP4,
     * AWQ). */
    moe_comm_get_stats(g_comm, &s1);
    if (!fail) {
        int32_t *lid = malloc(sizeof(int32_t) * (size_t)(n * c->K + 1));
        int32_t *pid = malloc(sizeof(int32_t) * (size_t)(n * c->K + 1));
        float   *lw  = malloc(sizeof(float) * (size_t)(n * c->K + 1));
        moe_router_route(router, n, lg + lo_t * c->E, lid, lw);
        moe_expert_map_route(map, n, c->K, lid, pid, NULL);
        int64_t away = 0;
        for (int64_t i = 0; i < n * c->K; i++) away += moe_expert_map_owner(map, pid[i]) != mt_rank;
        const int64_t elt = c->format == MOE_FORMAT_BF16 || c->format == MOE_FORMAT_MXFP4 ||
                                    c->format == MOE_FORMAT_INT4_AWQ
                                ? 2
                                : 4;
        const int64_t want = 2 * ((mt_size - 1) * 40 + away * (16 + elt * H));
        const int64_t got  = s1.bytes_sent_dispatch - s0.bytes_sent_dispatch;
        if (got != want)
            fail = mt_fail(why, "dispatch sent %lld bytes, want %lld", (long long)got,
                           (long long)want);
        free(lid), free(pid), free(lw);
    }
    if (load && !fail) {
        const int32_t P = moe_expert_map_n_physical(map);
        int32_t *want    = calloc((size_t)P, sizeof *want);
        int32_t *loc_ids = malloc(sizeof(int32_t) * (size_t)(n * c->K + 1));
        int32_t *phys = malloc(sizeof(int32_t) * (size_t)(n * c->K + 1));
        float   *lw   = malloc(sizeof(float) * (size_t)(n * c->K + 1));
        moe_router_route(router, n, lg + lo_t * c->E, loc_ids, lw);
        moe_expert_map_route(map, n, c->K, loc_ids, phys, want);
        for (int32_t s = 0; s < P && !fail; s++)
            if (load[s] != 2 * want[s])
                fail = mt_fail(why, "load[%d] = %d after 2 forwards, want %d", s, load[s],
                               2 * want[s]);
        free(want), free(loc_ids), free(phys), free(lw);
    }
    free(load);

done:
    free(ws);
    moe_layer_destroy(ep_layer);
    moe_layer_destroy(ref_layer);
    moe_routed_experts_destroy(mine);
    moe_routed_experts_destroy(all);
    moe_shared_experts_destroy(sh);
    moe_expert_map_destroy(map);
    moe_context_destroy(ctx);
    moe_router_destroy(router);
    free(which), free(ids), free(x), free(lg), free(ref), free(out), free(bias);
    mt_model_free(&m);
    return fail;
}

int main(int argc, char **argv) {
    g_comm = mt_init(&argc, &argv, 30000);
    char why[256] = "";
    int n_fail = 0;
    for (size_t i = 0; i < sizeof g_cases / sizeof *g_cases; i++) {
        why[0] = '\0';
        int f = run_case(&g_cases[i], why);
        n_fail += !mt_report(g_cases[i].name, f, why);
        if (moe_comm_status(g_comm)) {
            /* A broken communicator fails every later case; start over. */
            moe_comm_destroy(g_comm);
            g_comm = mt_comm(30000);
        }
    }
    (void)argc, (void)argv;
    moe_comm_destroy(g_comm);
    MPI_Finalize();
    return n_fail ? 1 : 0;
}
