/*
 * grouped.c - grouped top-k (DeepSeek-V2/V3 "group-limited" routing).
 *
 * The n experts are n_group contiguous groups of n / n_group. Each group gets
 * a score: the sum of its two best keys when the keys carry a correction bias
 * (DeepSeek-V3), else its best key (DeepSeek-V2). The topk_group best groups
 * are kept, ties to the lower group index, and top_k is taken over the kept
 * groups' experts only, so the selected ids always lie in kept groups, even
 * when some keys are -inf.
 *
 * A group of one expert scores that expert's key in both modes. A masked key
 * (-inf) makes a top-2 sum -inf, as it does in vLLM's reference.
 */
#include "router.h"

#include <math.h>

/* Score of one group of m keys. */
static float group_score(const float *key, int32_t m, bool sum_top2) {
    float best = key[0], second = -INFINITY;
    for (int32_t i = 1; i < m; i++) {
        if (key[i] > best) {
            second = best;
            best   = key[i];
        } else if (key[i] > second) {
            second = key[i];
        }
    }
    if (!sum_top2 || m == 1) return best;
    return best + second;
}

void moe__router_topk_grouped(const float *key,    // (n)
                              int32_t n, int32_t n_group, int32_t topk_group, bool sum_top2,
                              int32_t k,
                              int32_t *ids,        // (k)
                              float *sel_key) {    // (k)
    MOE_ASSERT(n_group >= 1 && n % n_group == 0);
    MOE_ASSERT(topk_group >= 1 && topk_group <= n_group);
    const int32_t m = n / n_group;
    MOE_ASSERT(k >= 1 && k <= topk_group * m);

    /* The topk_group best groups. n_group <= n <= MOE__ROUTER_MAX_EXPERTS
     * keeps these on the stack small. */
    float   gkey[topk_group]; // (topk_group)
    int32_t gid[topk_group];  // (topk_group)
    moe__topk_buf gb = { .key = gkey, .id = gid, .cap = topk_group, .n = 0 };
    for (int32_t g = 0; g < n_group; g++)
        moe__topk_push(&gb, group_score(key + (int64_t)g * m, m, sum_top2), g);

    /* Visit the kept groups in increasing index, so that experts are pushed
     * in increasing id as the tie rule needs. */
    for (int32_t i = 1; i < topk_group; i++) {
        int32_t g = gid[i], j = i;
        while (j > 0 && gid[j - 1] > g) {
            gid[j] = gid[j - 1];
            j--;
        }
        gid[j] = g;
    }

    moe__topk_buf b = { .key = sel_key, .id = ids, .cap = k, .n = 0 };
    for (int32_t i = 0; i < topk_group; i++) {
        const int32_t e0 = gid[i] * m;
        for (int32_t e = e0; e < e0 + m; e++) moe__topk_push(&b, key[e], e);
    }
}
