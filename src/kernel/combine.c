/*
 * combine.c - the weighted sum of each token's expert outputs, shared by
 * every prepare/finalize implementation so that they are bitwise the same:
 *
 *     out[t] = sum over j = 0 .. top_k-1, in this order, of w[t, j] * y[row(t, j)]
 *              (+ shared_y[t])
 *
 * in fp32, one element at a time. A slot contributes nothing when its expert
 * is held elsewhere (single rank with an expert map).
 */
#include "internal.h"

typedef struct combine_task_args {
    const moe__combine *c;
    int64_t             tokens_per_task;
} combine_task_args;

/* o[k] += w * y[k] (w = 1: o[k] += y[k], the same bits), k < n; o is the
 * output, y a workspace or shared-experts row, never the same memory. In
 * blocks of 16 with restrict pointers, which GCC's -O2 vectorizer takes (it
 * leaves loops of unknown length scalar: one token's 8 rows of 2048 took 4.0
 * us, now 0.6); each element gets the same operations as one at a time (no
 * FMA contraction in ISO C mode), so the same bits. */
static void add_scaled(float *restrict o, float w, const float *restrict y, int64_t n) {
    int64_t k = 0;
    for (; k + 16 <= n; k += 16)
        for (int i = 0; i < 16; i++) o[k + i] += w * y[k + i];
    for (; k < n; k++) o[k] += w * y[k];
}

static void combine_task(void *varg, int64_t task, int thread) {
    (void)thread;
    const combine_task_args *a = varg;
    const moe__combine      *c = a->c;
    const int64_t            H = c->d_model;
    int64_t t0 = task * a->tokens_per_task, t1 = t0 + a->tokens_per_task;
    if (t1 > c->n_tokens) t1 = c->n_tokens;
    for (int64_t t = t0; t < t1; t++) {
        float *o = c->out + t * H;
        for (int64_t k = 0; k < H; k++) o[k] = 0.0f;
        for (int32_t j = 0; j < c->top_k; j++) {
            const int64_t s = t * c->top_k + j;
            if (c->map && c->map[c->topk_ids[s]] < 0) continue; /* held by another rank */
            const float  w = c->weight_one ? 1.0f : c->topk_w[s];
            add_scaled(o, w, c->y + (c->row ? (int64_t)c->row[s] : s) * H, H);
        }
        if (c->shared_y) add_scaled(o, 1.0f, c->shared_y + t * H, H);
    }
}

void moe__combine_run(const moe__combine *c, moe__pool *pool) {
    combine_task_args a = { c, 4 };
    moe__pool_run(pool, (c->n_tokens + a.tokens_per_task - 1) / a.tokens_per_task, combine_task,
                  &a);
}
