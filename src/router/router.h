/*
 * router.h - what the files of src/router/ share: the top-k buffer every
 * selection goes through, and the selection entry points.
 *
 * Selection order (DESIGN.md "Numerics contract"): a larger key wins; equal
 * keys go to the lower index. Keys are never NaN here: the scoring code maps a
 * masked expert (NaN or -inf logit) to key -inf before selecting.
 */
#ifndef MOE_ROUTER_H
#define MOE_ROUTER_H

#include "internal.h"

/* Largest n_experts a router accepts: route() keeps two rows of n_experts
 * floats on the stack (32 KiB at this bound) instead of allocating. */
#define MOE__ROUTER_MAX_EXPERTS 4096

/* The best `cap` (key, id) pairs pushed so far, kept sorted by descending
 * key. Ids must be pushed in increasing order: a newcomer then only displaces
 * strictly smaller keys, which is the lower-index tie rule. */
typedef struct moe__topk_buf {
    float   *key; /* (cap) */
    int32_t *id;  /* (cap) */
    int32_t  cap;
    int32_t  n;   /* pairs held, <= cap */
} moe__topk_buf;

static inline void moe__topk_push(moe__topk_buf *b, float key, int32_t id) {
    int32_t i;
    if (b->n < b->cap) {
        i = b->n++;
    } else {
        if (!(key > b->key[b->cap - 1])) return;
        i = b->cap - 1;
    }
    /* Shift smaller keys down one place (insertion sort; cap is top_k, small). */
    while (i > 0 && b->key[i - 1] < key) {
        b->key[i] = b->key[i - 1];
        b->id[i]  = b->id[i - 1];
        i--;
    }
    b->key[i] = key;
    b->id[i]  = id;
}

/* ids (k), sel_key (k) = the k best of key (n), descending, ties to the lower
 * index. 1 <= k <= n. (topk.c) */
void moe__router_topk(const float *key, int32_t n, int32_t k, int32_t *ids, float *sel_key);

/* Grouped top-k (grouped.c): the n experts form n_group contiguous groups;
 * a group scores the sum of its two best keys (sum_top2, used with a
 * correction bias) or its best key; the topk_group best groups are kept (ties
 * to the lower group) and the k best keys of the kept groups' experts are
 * selected as by moe__router_topk. Requires n % n_group == 0,
 * 1 <= topk_group <= n_group and k <= topk_group * (n / n_group). */
void moe__router_topk_grouped(const float *key, int32_t n, int32_t n_group, int32_t topk_group,
                              bool sum_top2, int32_t k, int32_t *ids, float *sel_key);

#endif /* MOE_ROUTER_H */
