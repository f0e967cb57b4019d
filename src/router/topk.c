/*
 * topk.c - plain top-k selection over one row of keys.
 *
 * One pass over the row with a sorted buffer of k entries: O(n) compares plus
 * O(k) per insertion, which for random rows is about k ln(n/k) insertions. The
 * worst case (ascending keys) is O(n k), about 3k steps at n = 384, k = 8.
 */
#include "router.h"

void moe__router_topk(const float *key,    // (n)
                      int32_t n, int32_t k,
                      int32_t *ids,        // (k)
                      float *sel_key) {    // (k)
    MOE_ASSERT(k >= 1 && k <= n);
    moe__topk_buf b = { .key = sel_key, .id = ids, .cap = k, .n = 0 };
    for (int32_t e = 0; e < n; e++) moe__topk_push(&b, key[e], e);
}
