/*
 * ep-migrate.c - EPLB weight migration over MPI: after a rebalance every
 * rank's slots hold the bytes of their new logical experts (checked against
 * the full model every rank rebuilt from the seed), exactly the planned
 * bytes crossed ranks, and a forward after the migration equals the forward
 * before it and the single-rank layer, bit for bit.
 *
 * GPTQ act-order experts (each logical expert with its own g_idx) check that
 * a slot's CPU column order (moe__wmat.k_order) follows its new expert: a
 * slot that kept the order of the expert it held before gives a different
 * forward. A CPU layer keeps a packed copy of GPTQ weights, and migration
 * refuses experts that have one (it would go stale), so that case migrates
 * first and only then creates its layer: no forward before the migration.
 */
#include "mpi-test.h"

#include "internal.h"   /* moe__experts_w13/w2: read the migrated bytes back */

static moe_comm *g_comm;

/* Whether two views of one projection hold the same bytes: weights, scales
 * and g_idx (sizes s), and bias. */
static int same_tables(const moe__wmat *a, const moe__wmat *b, const moe__wsizes *s) {
    return !memcmp(a->data, b->data, s->data) && !memcmp(a->scales, b->scales, s->scales) &&
           !memcmp(a->g_idx, b->g_idx, s->g_idx) &&
           !memcmp(a->bias, b->bias, sizeof(float) * (size_t)a->rows);
}

/* format: F32, or INT4_GPTQ (act-order). */
static int run(char *why, int preserve, moe_format format) {
    enum { E = 8, K = 2, TR = 12 };
    const bool gptq = format == MOE_FORMAT_INT4_GPTQ;
    /* GPTQ groups 32 columns; with K = 64 both projections have two groups,
     * so every expert has a column order of its own in each. */
    const int64_t H = gptq ? 64 : 32, I = gptq ? 64 : 16, T = (int64_t)TR * mt_size;
    char err[256];
    int fail = 0;
    mt_model m;
    mt_model_init(&m, 77, E, K, H, I, 1, 0);
    m.format = format;
    mt_rng r = { 5 };
    float *x   = malloc(sizeof(float) * (size_t)(T * H));
    float *lg  = malloc(sizeof(float) * (size_t)(T * E));
    float *ref = malloc(sizeof(float) * (size_t)(T * H));
    float *out = malloc(sizeof(float) * (size_t)(TR * H));
    mt_fill(&r, x, (size_t)(T * H), 1.0f);
    mt_fill(&r, lg, (size_t)(T * E), 1.0f);
    for (int64_t t = 0; t < T; t++) lg[t * E + 0] += 3.0f, lg[t * E + 1] += 2.0f;  /* hot */
    moe_router_options ro = { .n_experts = E, .top_k = K, .renormalize = 1 };
    moe_context_options cxo = { .n_threads = 1 };
    moe_router *router = NULL;
    moe_context *ctx = NULL;
    moe_routed_experts *all = NULL, *mine = NULL;
    moe_layer *ref_layer = NULL, *layer = NULL;
    moe_expert_map *map = NULL;
    void *ws = NULL;
    int32_t which[64], ids[4096], p2l[64], old[64];
    float w[4096];
    double load[E] = { 0 };
    for (int e = 0; e < E; e++) which[e] = e;
    int32_t red = mt_size - E % mt_size;
    moe_expert_map_options mo = { .n_experts = E, .n_redundant = red, .ep_size = mt_size,
                                  .ep_rank = mt_rank };
    if (moe_router_create(&ro, &router, err, sizeof err) ||
        moe_context_create(&cxo, &ctx, err, sizeof err) ||
        mt_experts(&m, which, E, 0, NULL, &all, err, sizeof err) ||
        moe_expert_map_create(&mo, &map, err, sizeof err)) {
        fail = mt_fail(why, "setup: %s", err);
        goto done;
    }
    moe_layer_options lo = { .router = router, .experts = all, .context = ctx, .max_tokens = T };
    size_t ws_size;
    if (moe_layer_create(&lo, &ref_layer, err, sizeof err)) {
        fail = mt_fail(why, "%s", err);
        goto done;
    }
    ws_size = moe_layer_workspace_size(ref_layer, T);
    ws = aligned_alloc(64, (ws_size + 63) / 64 * 64);
    moe_layer_forward(ref_layer, T, x, lg, NULL, ref, ws, ws_size);
    free(ws);
    ws = NULL;

    const int32_t P = moe_expert_map_n_physical(map), n_local = moe_expert_map_n_local(map);
    /* Start from the reversed placement (slot s < E holds E - 1 - s), so the
     * policy's answer differs from it at every np. */
    for (int32_t s = 0; s < P; s++) old[s] = s < E ? E - 1 - s : (s - E) % E;
    if (moe_expert_map_set_physical(map, old, err, sizeof err)) {
        fail = mt_fail(why, "initial placement: %s", err);
        goto done;
    }
    for (int32_t i = 0; i < n_local; i++)
        which[i] = moe_expert_map_logical(map, moe_expert_map_to_global(map, i));
    moe_parallel par = { .mode = MOE_PARALLEL_EP, .comm = g_comm, .map = map };
    if (mt_experts(&m, which, n_local, P, moe_expert_map_table(map), &mine, err, sizeof err)) {
        fail = mt_fail(why, "%s", err);
        goto done;
    }
    lo.experts = mine, lo.max_tokens = TR, lo.parallel = &par;
    const int64_t t0 = (int64_t)mt_rank * TR;
    for (int pass = 0; pass < 2 && !fail; pass++) {
        if (pass == 1) {
            /* Rebalance from the global routing's load, then migrate. */
            moe_router_route(router, T, lg, ids, w);
            for (int64_t i = 0; i < T * K; i++) load[ids[i]] += 1;
            for (int32_t s = 0; s < P; s++) old[s] = moe_expert_map_logical(map, s);
            if (moe_eplb_rebalance(load, 1, E, P, 1, 1, mt_size, preserve ? old : NULL, p2l, NULL,
                                   err, sizeof err)) {
                fail = mt_fail(why, "rebalance: %s", err);
                break;
            }
            int64_t n_remote = 0, n_copy = 0, sent = 0, sent_all = 0;
            moe_eplb_count_moves(old, p2l, P, mt_size, &n_remote, &n_copy);
            if (!n_remote) {
                fail = mt_fail(why, "the rebalance moves nothing across ranks");
                break;
            }
            if (moe_eplb_migrate(g_comm, mine, map, p2l, &sent, err, sizeof err)) {
                fail = mt_fail(why, "migrate: %s", err);
                break;
            }
            MPI_Allreduce(&sent, &sent_all, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
            /* One expert's tables: f32 weights, or GPTQ's 4-bit weights, f16
             * scales per 32 columns and g_idx; then the biases. */
            const int64_t nw = 2 * I * H + H * I, nb = 2 * I + H;
            const int64_t xb = gptq ? nw / 2 + 2 * (nw / 32) + (int64_t)sizeof(int32_t) * (H + I) +
                                          (int64_t)sizeof(float) * nb
                                    : (int64_t)sizeof(float) * (nw + nb);
            if (sent_all != n_remote * xb) {
                fail = mt_fail(why, "%lld bytes crossed ranks, plan says %lld experts of %lld",
                               (long long)sent_all, (long long)n_remote, (long long)xb);
                break;
            }
            if (mt_rank == 0)
                printf("  migrate np %d%s: %lld experts across ranks, %lld copied locally, "
                       "%lld bytes\n", mt_size,
                       preserve ? " (slots preserved)" : gptq ? " (int4-gptq act-order)" : "",
                       (long long)n_remote, (long long)n_copy, (long long)sent_all);
            /* Every local slot now holds the bytes of its new logical expert:
             * f32 as in the model, GPTQ as `all` (the same quantizer and
             * g_idx) holds it. */
            for (int32_t i = 0; i < n_local && !fail; i++) {
                int32_t s = moe_expert_map_to_global(map, i), e = p2l[s];
                moe__wmat a = moe__experts_w13(mine, i), b = moe__experts_w2(mine, i);
                moe__wmat ea = moe__experts_w13(all, e), eb = moe__experts_w2(all, e);
                if (moe_expert_map_logical(map, s) != e)
                    fail = mt_fail(why, "map not committed at slot %d", s);
                else if (gptq ? !same_tables(&a, &ea, &mine->s13) ||
                                    !same_tables(&b, &eb, &mine->s2)
                              : memcmp(a.data, m.w13 + (size_t)e * 2 * I * H,
                                       sizeof(float) * 2 * I * H) ||
                                    memcmp(b.data, m.w2 + (size_t)e * H * I,
                                           sizeof(float) * H * I) ||
                                    memcmp(a.bias, m.b13 + e * 2 * I, sizeof(float) * 2 * I) ||
                                    memcmp(b.bias, m.b2 + e * H, sizeof(float) * H))
                    fail = mt_fail(why, "slot %d (local %d) does not hold expert %d's bytes", s, i,
                                   e);
            }
            if (fail) break;
        }
        if (gptq && pass == 0) continue;   /* no layer before the migration */
        if (!layer) {
            if (moe_layer_create(&lo, &layer, err, sizeof err)) {
                fail = mt_fail(why, "%s", err);
                break;
            }
            ws_size = moe_layer_workspace_size(layer, TR);
            ws = aligned_alloc(64, (ws_size + 63) / 64 * 64);
        }
        if (moe_layer_forward(layer, TR, x + t0 * H, lg + t0 * E, NULL, out, ws, ws_size)) {
            fail = mt_fail(why, "forward %d: %s", pass, moe_layer_last_error(layer));
            break;
        }
        if (memcmp(out, ref + t0 * H, sizeof(float) * (size_t)(TR * H)))
            fail = mt_fail(why, "forward %s the migration differs from the single rank",
                           pass ? "after" : "before");
    }
done:
    free(ws);
    moe_layer_destroy(layer);
    moe_layer_destroy(ref_layer);
    moe_routed_experts_destroy(mine);
    moe_routed_experts_destroy(all);
    moe_expert_map_destroy(map);
    moe_context_destroy(ctx);
    moe_router_destroy(router);
    free(x), free(lg), free(ref), free(out);
    mt_model_free(&m);
    return fail;
}

int main(int argc, char **argv) {
    g_comm = mt_init(&argc, &argv, 30000);
    char why[256] = "";
    int n_fail = !mt_report("eplb_migrate", run(why, 0, MOE_FORMAT_F32), why);
    why[0] = '\0';
    n_fail += !mt_report("eplb_migrate_preserving_slots", run(why, 1, MOE_FORMAT_F32), why);
    why[0] = '\0';
    n_fail += !mt_report("eplb_migrate_gptq_act_order", run(why, 0, MOE_FORMAT_INT4_GPTQ), why);
    moe_comm_destroy(g_comm);
    MPI_Finalize();
    return n_fail ? 1 : 0;
}
