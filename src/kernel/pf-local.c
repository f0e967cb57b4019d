/*
 * pf-local.c - the single-rank prepare/finalize.
 *
 * prepare groups the token slots by local expert with a stable counting sort
 * (rows of one expert stay in slot order, so the layout is a pure function of
 * the routing); slots of experts the expert map places elsewhere are left
 * out. finalize sums each token's slots in slot order, in fp32, then adds the
 * shared experts' output.
 */
#include "internal.h"

#include <string.h>

/* expert_start (n_local + 1) int32, row_slot (n_tokens * top_k) int32, and
 * y (n_tokens * top_k, d_model) f32. */
static size_t local_workspace_size(const moe_layer *l, int64_t n_tokens) {
    const moe_routed_experts *e = l->opts.experts;
    size_t slots = (size_t)n_tokens * (size_t)l->opts.router->opts.top_k;
    return 3 * 64 + ((size_t)e->opts.n_experts + 1) * sizeof(int32_t) + slots * sizeof(int32_t) +
           slots * (size_t)e->opts.d_model * sizeof(float);
}

static moe_status local_prepare(moe_layer *l, moe__dispatch *d, void *ws, size_t ws_size) {
    const moe_routed_experts *e   = l->opts.experts;
    const int32_t            *map = e->expert_map;
    char *cur = ws, *end = (char *)ws + ws_size;
    const int64_t n_slots = d->n_tokens * d->top_k;
    int32_t *start = moe__ws_take(&cur, end, ((size_t)e->opts.n_experts + 1) * sizeof(int32_t));
    int32_t *rows  = moe__ws_take(&cur, end, (size_t)n_slots * sizeof(int32_t));
    float   *y     = moe__ws_take(&cur, end, (size_t)n_slots * (size_t)d->d_model * sizeof(float));
    if (!start || !rows || !y)
        return moe__errf(l->err, sizeof l->err, MOE_ERR_WORKSPACE, "local prepare: workspace");

    /* Count, prefix-sum, then place in slot order: start[i] is expert i's
     * first row, and after placement start[i] has moved to its end. */
    memset(start, 0, ((size_t)e->opts.n_experts + 1) * sizeof(int32_t));
    for (int64_t s = 0; s < n_slots; s++) {
        int32_t loc = map[d->topk_ids[s]];
        if (loc >= 0) start[loc + 1]++;
    }
    for (int32_t i = 0; i < e->opts.n_experts; i++) start[i + 1] += start[i];
    for (int64_t s = 0; s < n_slots; s++) {
        int32_t loc = map[d->topk_ids[s]];
        if (loc >= 0) rows[start[loc]++] = (int32_t)s;
    }
    for (int32_t i = e->opts.n_experts; i > 0; i--) start[i] = start[i - 1];
    start[0] = 0;

    d->n_local      = e->opts.n_experts;
    d->expert_start = start;
    d->row_slot     = rows;
    d->n_rows       = start[e->opts.n_experts];
    d->y            = y;
    return MOE_OK;
}

static moe_status local_finalize(moe_layer *l, const moe__dispatch *d, const float *shared_y,
                                 float *out) {
    moe__combine c = {
        .n_tokens = d->n_tokens, .top_k = d->top_k, .d_model = d->d_model, .topk_w = d->topk_w,
        .weight_one = d->in_scale != NULL, .y = d->y, .topk_ids = d->topk_ids,
        .map = l->opts.experts->expert_map, .shared_y = shared_y, .out = out,
    };
    moe__combine_run(&c, l->ctx->pool);
    return MOE_OK;
}

const moe__prepare_finalize_impl moe__pf_local = {
    .name           = "local",
    .workspace_size = local_workspace_size,
    .prepare        = local_prepare,
    .finalize       = local_finalize,
};
