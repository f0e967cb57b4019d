/*
 * router.c - the router object and routing: scores, selection keys, top-k,
 * weights, for each moe_scoring variant (vllm-moe-notes.md §5.2-5.4).
 *
 * Per row of logits l (n_experts):
 *
 *   SOFTMAX        score p = softmax(l), key = p (+ bias)       w = p[sel]
 *   SIGMOID        score s = sigmoid(l), key = s (+ bias)       w = s[sel]
 *   SOFTMAX_TOPK   key = l                                      w = softmax(l[sel])
 *   LLAMA4         key = l                                      w = sigmoid(l[sel])
 *
 * then (SOFTMAX, SIGMOID) w /= sum(w) with renormalize, and w *= routed
 * scaling factor (every variant). SOFTMAX and SIGMOID may be grouped
 * (grouped.c). Everything is fp32; sums run in slot or expert order, so a row's
 * result depends on that row only and never on n_tokens.
 *
 * Masked experts: a NaN or -inf logit masks its expert. Its key is -inf (it is
 * never selected before an expert with a real logit, ties among masked go to
 * the lower index) and its score is 0. Non-finite cases, defined here:
 *   - SOFTMAX over a row with +inf logits gives each +inf entry 1/n_inf and
 *     every other entry 0 (the limit of softmax as those logits grow equally);
 *     SOFTMAX_TOPK does the same over the selected logits.
 *   - A fully masked row (every selectable key -inf) selects 0..top_k-1 (the
 *     tie rule) with weight 0; normalized variants (SOFTMAX and SIGMOID with
 *     renormalize, SOFTMAX_TOPK) give 1/top_k each instead, as the header says.
 *   - Otherwise a zero weight sum (sigmoid scores that all underflow to 0)
 *     divides by 1: the weights stay 0.
 */
#include "router.h"

#include <math.h>
#include <string.h>

/* ===== Create and destroy ===== */

static moe_status copy_floats(const float *src, size_t n, float **dst) {
    size_t bytes;
    if (!moe__mul_ok(n, sizeof(float), &bytes)) return MOE_ERR_OVERFLOW;
    *dst = moe__malloc(bytes);
    if (!*dst) return MOE_ERR_NOMEM;
    memcpy(*dst, src, bytes);
    return MOE_OK;
}

/* Checks the options; MOE_OK or an error with a message naming the field. */
static moe_status check_options(const moe_router_options *o, char *err, size_t errlen) {
    const moe_status inv = MOE_ERR_INVALID_ARG;
    if (o->n_experts < 1)
        return moe__errf(err, errlen, inv, "router: n_experts = %d, must be >= 1",
                         (int)o->n_experts);
    if (o->n_experts > MOE__ROUTER_MAX_EXPERTS)
        return moe__errf(err, errlen, MOE_ERR_LIMIT, "router: n_experts = %d exceeds %d",
                         (int)o->n_experts, MOE__ROUTER_MAX_EXPERTS);
    if (o->top_k < 1 || o->top_k > o->n_experts)
        return moe__errf(err, errlen, inv, "router: top_k = %d, must be in [1, n_experts = %d]",
                         (int)o->top_k, (int)o->n_experts);
    if ((unsigned)o->scoring > MOE_SCORING_LLAMA4)
        return moe__errf(err, errlen, inv, "router: unknown scoring %d", (int)o->scoring);
    if (o->scoring == MOE_SCORING_LLAMA4 && o->top_k != 1)
        return moe__errf(err, errlen, inv,
                         "router: LLAMA4 scoring weights the input and needs top_k = 1, got %d",
                         (int)o->top_k);
    const bool raw_keys = o->scoring == MOE_SCORING_SOFTMAX_TOPK ||
                          o->scoring == MOE_SCORING_LLAMA4;
    if (o->n_group < 0)
        return moe__errf(err, errlen, inv, "router: n_group = %d, must be >= 0", (int)o->n_group);
    if (o->n_group > 1) {
        if (raw_keys)
            return moe__errf(err, errlen, inv,
                             "router: grouped top-k needs SOFTMAX or SIGMOID scoring");
        if (o->n_experts % o->n_group != 0)
            return moe__errf(err, errlen, inv,
                             "router: n_experts = %d is not divisible by n_group = %d",
                             (int)o->n_experts, (int)o->n_group);
        if (o->topk_group < 1 || o->topk_group > o->n_group)
            return moe__errf(err, errlen, inv,
                             "router: topk_group = %d, must be in [1, n_group = %d]",
                             (int)o->topk_group, (int)o->n_group);
        const int32_t kept = o->topk_group * (o->n_experts / o->n_group);
        if (o->top_k > kept)
            return moe__errf(err, errlen, inv,
                             "router: top_k = %d exceeds the %d experts of topk_group = %d groups",
                             (int)o->top_k, (int)kept, (int)o->topk_group);
    } else if (o->topk_group < 0 || o->topk_group > 1) {
        return moe__errf(err, errlen, inv,
                         "router: topk_group = %d without grouping (n_group = %d)",
                         (int)o->topk_group, (int)o->n_group);
    }
    const float f = o->routed_scaling_factor;
    if (!isfinite(f) || f < 0)
        return moe__errf(err, errlen, inv,
                         "router: routed_scaling_factor = %g, must be finite and >= 0", (double)f);
    if (o->correction_bias) {
        if (raw_keys)
            return moe__errf(err, errlen, inv,
                             "router: correction_bias needs SOFTMAX or SIGMOID scoring");
        for (int32_t e = 0; e < o->n_experts; e++)
            if (!isfinite(o->correction_bias[e]))
                return moe__errf(err, errlen, inv, "router: correction_bias[%d] = %g is not finite",
                                 (int)e, (double)o->correction_bias[e]);
    }
    if (o->gate_weight && o->d_model < 1)
        return moe__errf(err, errlen, inv, "router: gate_weight given with d_model = %lld",
                         (long long)o->d_model);
    if (o->gate_bias && !o->gate_weight)
        return moe__errf(err, errlen, inv, "router: gate_bias given without gate_weight");
    return MOE_OK;
}

moe_status moe_router_create(const moe_router_options *opts, moe_router **out, char *err,
                             size_t errlen) {
    if (!out) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "router: out is NULL");
    *out = NULL;
    if (!opts) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "router: opts is NULL");
    moe_status s = check_options(opts, err, errlen);
    if (s) return s;

    moe_router *r = moe__calloc(1, sizeof *r);
    if (!r) return moe__errf(err, errlen, MOE_ERR_NOMEM, "router: out of memory");
    r->opts = *opts;
    const size_t E = (size_t)opts->n_experts;
    if (opts->correction_bias && (s = copy_floats(opts->correction_bias, E,
                                                  &r->correction_bias)))
        goto fail;
    if (opts->gate_weight) {
        size_t n;
        if (!moe__mul_ok(E, (size_t)opts->d_model, &n)) {
            s = MOE_ERR_OVERFLOW;
            goto fail;
        }
        if ((s = copy_floats(opts->gate_weight, n, &r->gate_weight))) goto fail;
    }
    if (opts->gate_bias && (s = copy_floats(opts->gate_bias, E, &r->gate_bias))) goto fail;

    r->opts.correction_bias = r->correction_bias;
    r->opts.gate_weight     = r->gate_weight;
    r->opts.gate_bias       = r->gate_bias;
    if (r->opts.routed_scaling_factor == 0) r->opts.routed_scaling_factor = 1.0f;
    if (!opts->gate_weight) r->opts.d_model = 0;
    *out = r;
    return MOE_OK;

fail:
    moe_router_destroy(r);
    if (s == MOE_ERR_OVERFLOW)
        return moe__errf(err, errlen, s, "router: n_experts * d_model overflows");
    return moe__errf(err, errlen, s, "router: out of memory copying the router tables");
}

void moe_router_destroy(moe_router *r) {
    if (!r) return;
    moe__free(r->gate_bias);
    moe__free(r->gate_weight);
    moe__free(r->correction_bias);
    moe__free(r);
}

/* ===== Scoring ===== */

static inline bool is_masked(float l) { return isnan(l) || l == -INFINITY; }

static inline float sigmoid_f32(float x) { return 1.0f / (1.0f + expf(-x)); }

/* p (E) = softmax(l) with NaN logits as -inf; the +inf and fully masked cases
 * as in the file comment. */
static void softmax_row(const float *l, int32_t E, float *p) {
    float   m     = -INFINITY;
    int32_t n_inf = 0;
    for (int32_t e = 0; e < E; e++) {
        if (l[e] == INFINITY) n_inf++;
        if (l[e] > m) m = l[e]; /* false for NaN */
    }
    if (n_inf > 0) {
        for (int32_t e = 0; e < E; e++) p[e] = l[e] == INFINITY ? 1.0f / (float)n_inf : 0.0f;
        return;
    }
    if (m == -INFINITY) { /* fully masked */
        for (int32_t e = 0; e < E; e++) p[e] = 0.0f;
        return;
    }
    float sum = 0.0f;
    for (int32_t e = 0; e < E; e++) {
        p[e] = is_masked(l[e]) ? 0.0f : expf(l[e] - m);
        sum += p[e];
    }
    /* sum >= 1: the maximum contributes expf(0). */
    for (int32_t e = 0; e < E; e++) p[e] /= sum;
}

/* w (k) = softmax over the selected raw logits (SOFTMAX_TOPK); sel_key[0] is
 * their maximum and is not -inf. w may be sel_key (each entry is read before
 * it is written). */
static void softmax_selected(const float *sel_key, int32_t k, float *w) {
    const float m = sel_key[0];
    if (m == INFINITY) {
        int32_t n_inf = 0;
        for (int32_t j = 0; j < k; j++) n_inf += sel_key[j] == INFINITY;
        for (int32_t j = 0; j < k; j++) w[j] = sel_key[j] == INFINITY ? 1.0f / (float)n_inf : 0.0f;
        return;
    }
    float sum = 0.0f;
    for (int32_t j = 0; j < k; j++) {
        w[j] = expf(sel_key[j] - m); /* masked: expf(-inf) = 0 */
        sum += w[j];
    }
    for (int32_t j = 0; j < k; j++) w[j] /= sum;
}

/* Routes one row. */
static void route_row(const moe_router *r,
                      const float *l,   // (n_experts) logits
                      float *key,       // (n_experts) scratch: selection keys
                      float *score,     // (n_experts) scratch: softmax or sigmoid scores
                      int32_t *ids,     // (top_k)
                      float *w) {       // (top_k)
    const moe_router_options *o    = &r->opts;
    const int32_t             E    = o->n_experts, k = o->top_k;
    const float              *bias = r->correction_bias;

    switch (o->scoring) {
    case MOE_SCORING_SOFTMAX:
        softmax_row(l, E, score);
        break;
    case MOE_SCORING_SIGMOID:
        for (int32_t e = 0; e < E; e++) score[e] = isnan(l[e]) ? 0.0f : sigmoid_f32(l[e]);
        break;
    default: /* raw-logit keys: no score row */
        break;
    }
    const bool raw_keys = o->scoring == MOE_SCORING_SOFTMAX_TOPK ||
                          o->scoring == MOE_SCORING_LLAMA4;
    for (int32_t e = 0; e < E; e++) {
        if (is_masked(l[e])) key[e] = -INFINITY;
        else if (raw_keys)   key[e] = l[e];
        else                 key[e] = bias ? score[e] + bias[e] : score[e];
    }

    /* The selected keys land in w, then are replaced by the weights. */
    if (o->n_group > 1)
        moe__router_topk_grouped(key, E, o->n_group, o->topk_group, bias != NULL, k, ids, w);
    else
        moe__router_topk(key, E, k, ids, w);
    const bool masked_row = w[0] == -INFINITY;

    bool normalized;
    switch (o->scoring) {
    case MOE_SCORING_SOFTMAX_TOPK:
        normalized = true;
        if (!masked_row) softmax_selected(w, k, w);
        break;
    case MOE_SCORING_LLAMA4:
        normalized = false;
        for (int32_t j = 0; j < k; j++) w[j] = sigmoid_f32(w[j]); /* -inf -> 0 */
        break;
    default:
        normalized = o->renormalize != 0;
        for (int32_t j = 0; j < k; j++) w[j] = score[ids[j]];
        if (normalized && !masked_row) {
            float sum = 0.0f;
            for (int32_t j = 0; j < k; j++) sum += w[j];
            if (sum == 0.0f) sum = 1.0f;
            for (int32_t j = 0; j < k; j++) w[j] /= sum;
        }
        break;
    }
    if (masked_row)
        for (int32_t j = 0; j < k; j++) w[j] = normalized ? 1.0f / (float)k : 0.0f;
    if (o->routed_scaling_factor != 1.0f)
        for (int32_t j = 0; j < k; j++) w[j] *= o->routed_scaling_factor;
}

moe_status moe_router_route(const moe_router *r, int64_t n_tokens, const float *logits,
                            int32_t *topk_ids, float *topk_w) {
    if (!r || n_tokens < 0) return MOE_ERR_INVALID_ARG;
    if (n_tokens == 0) return MOE_OK;
    if (!logits || !topk_ids || !topk_w) return MOE_ERR_INVALID_ARG;
    const int32_t E = r->opts.n_experts, k = r->opts.top_k;
    /* Scratch on the stack, not in the router: several threads may route
     * with one router at once. E <= MOE__ROUTER_MAX_EXPERTS bounds it. */
    float key[E];   // (n_experts)
    float score[E]; // (n_experts)
    for (int64_t t = 0; t < n_tokens; t++)
        route_row(r, logits + t * E, key, score, topk_ids + t * k, topk_w + t * k);
    return MOE_OK;
}
