/*
 * test-router.c - routing: every scoring variant, groups, ties, non-finite
 * rows, option errors, the router linear, and the DeepSeek-V3 shape against a
 * separate fp64 reimplementation written below.
 *
 * Expected literals were computed with python3 (math module, fp64) from the
 * formulas in vllm-moe-notes.md §5.2-5.4; the script lines are quoted next to
 * them. Weights are compared with a relative tolerance of 1e-6 (fp32 expf and
 * division against fp64), ids exactly.
 */
#include "test.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define W_TOL 1e-6

static bool close_to(float got, double want) {
    return fabs((double)got - want) <= W_TOL * fabs(want) + 1e-7;
}

/* Creates a router or fails the test; returns NULL on failure. */
static moe_router *make(const moe_router_options *o) {
    char        err[256] = "";
    moe_router *r        = NULL;
    moe_status  s        = moe_router_create(o, &r, err, sizeof err);
    CHECK(s == MOE_OK, "create failed: %s (%s)", moe_status_name(s), err);
    return s == MOE_OK ? r : NULL;
}

/* Routes one row and checks ids and weights against the expected k values. */
static void expect_row(const char *what, const moe_router_options *o, const float *logits,
                       const int32_t *want_ids, const double *want_w) {
    moe_router *r = make(o);
    if (!r) return;
    int32_t ids[64];
    float   w[64];
    CHECK_STATUS(moe_router_route(r, 1, logits, ids, w), MOE_OK);
    for (int j = 0; j < o->top_k; j++) {
        CHECK(ids[j] == want_ids[j], "%s: slot %d id %d, want %d", what, j, ids[j], want_ids[j]);
        CHECK(close_to(w[j], want_w[j]), "%s: slot %d w %.9g, want %.9g", what, j, w[j],
              want_w[j]);
    }
    moe_router_destroy(r);
}

/* ===== Variants on hand-computed rows ===== */

TEST(router_softmax_basic) {
    /* python: p = softmax([1,3,2,0]) = [0.0871443187, 0.6439142599, 0.2368828181, 0.0320586033] */
    const float        l[4] = { 1, 3, 2, 0 };
    const int32_t      ids[2] = { 1, 2 };
    moe_router_options o  = { .n_experts = 4, .top_k = 2, .scoring = MOE_SCORING_SOFTMAX };
    expect_row("plain", &o, l, ids, (double[]){ 0.6439142598879724, 0.23688281808991013 });
    /* renormalized: p1/(p1+p2), p2/(p1+p2) */
    o.renormalize = 1;
    expect_row("renorm", &o, l, ids, (double[]){ 0.7310585786300049, 0.2689414213699951 });
    /* the scaling factor multiplies after renormalizing */
    o.routed_scaling_factor = 2.0f;
    expect_row("scaled", &o, l, ids, (double[]){ 1.4621171572600098, 0.5378828427399902 });
}

TEST(router_softmax_topk_basic) {
    /* gpt-oss: top-2 of the logits, softmax over [3, 2] = [0.7310585786, 0.2689414214]. */
    const float        l[4] = { 1, 3, 2, 0 };
    moe_router_options o  = { .n_experts = 4, .top_k = 2, .scoring = MOE_SCORING_SOFTMAX_TOPK };
    expect_row("topk", &o, l, (int32_t[]){ 1, 2 },
               (double[]){ 0.7310585786300049, 0.2689414213699951 });
    /* renormalize has no effect: the k weights are a softmax already */
    o.renormalize = 1;
    expect_row("topk+renorm", &o, l, (int32_t[]){ 1, 2 },
               (double[]){ 0.7310585786300049, 0.2689414213699951 });
}

TEST(router_sigmoid_basic) {
    /* python: sigmoid(2.0) = 0.8807970780, sigmoid(1.5) = 0.8175744762 */
    const float        l[4] = { 2.0f, -1.0f, 1.5f, 0.5f };
    moe_router_options o  = { .n_experts = 4, .top_k = 2, .scoring = MOE_SCORING_SIGMOID };
    expect_row("sigmoid", &o, l, (int32_t[]){ 0, 2 },
               (double[]){ 0.8807970779778823, 0.8175744761936437 });
    /* renormalize and scaling 2.5: 2.5 * s / (s0 + s2) */
    o.renormalize           = 1;
    o.routed_scaling_factor = 2.5f;
    expect_row("sigmoid+renorm+scale", &o, l, (int32_t[]){ 0, 2 },
               (double[]){ 1.296531780420009, 1.2034682195799913 });
}

TEST(router_llama4_basic) {
    /* Llama-4: top-1 of the raw logits, w = sigmoid(1.2) = 0.7685247835 */
    const float        l[4] = { 0.3f, -1.0f, 1.2f, 1.1f };
    moe_router_options o  = { .n_experts = 4, .top_k = 1, .scoring = MOE_SCORING_LLAMA4 };
    expect_row("llama4", &o, l, (int32_t[]){ 2 }, (double[]){ 0.7685247834990175 });
    /* renormalize is ignored (it would make every weight 1) */
    o.renormalize = 1;
    expect_row("llama4+renorm", &o, l, (int32_t[]){ 2 }, (double[]){ 0.7685247834990175 });
}

/* ===== Groups ===== */

/*
 * DeepSeek-V3-style: E = 8 in 4 groups of 2, keep 2 groups, top_k = 2,
 * renormalize, scaling 2.5.
 *   l    = [ 2.0,   -1.0,   0.5,   0.4,   -0.5,  1.5,   0.0,  0.1  ]
 *   s    = [ .8808, .2689, .6225, .5987, .3775, .8176, .5,   .5250]  (sigmoid)
 *   bias = [-0.3,   0.0,   0.2,   0.2,    0.1,  -0.2,   0.3,  0.25 ]
 *   key  = [ .5808, .2689, .8225, .7987, .4775, .6176, .8,   .7750]  (s + bias)
 * Biased (group score = sum of top-2 keys): groups [0.8497, 1.6211, 1.0951,
 * 1.5750] -> keep groups 1, 3 -> ids [2, 6], w = 2.5 * [.6225, .5] / 1.1225
 * = [1.3863739066, 1.1136260934] (the unbiased scores, renormalized).
 * Unbiased (no bias, group score = max s): groups [.8808, .6225, .8176, .5250]
 * -> keep groups 0, 2 -> ids [0, 5], w = 2.5 * [.8808, .8176] / 1.6984
 * = [1.2965317804, 1.2034682196].
 */
TEST(router_grouped_deepseek_bias) {
    const float l[8]    = { 2.0f, -1.0f, 0.5f, 0.4f, -0.5f, 1.5f, 0.0f, 0.1f };
    const float bias[8] = { -0.3f, 0.0f, 0.2f, 0.2f, 0.1f, -0.2f, 0.3f, 0.25f };
    moe_router_options o = { .n_experts = 8, .top_k = 2, .scoring = MOE_SCORING_SIGMOID,
                             .renormalize = 1, .n_group = 4, .topk_group = 2,
                             .correction_bias = bias, .routed_scaling_factor = 2.5f };
    expect_row("biased", &o, l, (int32_t[]){ 2, 6 },
               (double[]){ 1.3863739066059675, 1.1136260933940327 });
    o.correction_bias = NULL;
    expect_row("unbiased", &o, l, (int32_t[]){ 0, 5 },
               (double[]){ 1.296531780420009, 1.2034682195799913 });
    /* without renormalize the weights are 2.5 * s: 2.5 * .6224593312, 2.5 * .5 */
    o.correction_bias = bias;
    o.renormalize     = 0;
    expect_row("biased, no renorm", &o, l, (int32_t[]){ 2, 6 },
               (double[]){ 1.5561483280046365, 1.25 });
}

TEST(router_grouped_softmax) {
    /* DeepSeek-V2-style: softmax scores, 3 groups of 2, keep 1, top_k = 2.
     * python: p = softmax([3, 0, 2.5, 2.4, 1, .5]); p0 = 0.4127882381,
     * p1 = 0.0205515162. Group maxima 3, 2.5, 1 keep group 0 although p2 =
     * 0.2504 > p1: ungrouped routing picks [0, 2]. */
    const float        l[6] = { 3.0f, 0.0f, 2.5f, 2.4f, 1.0f, 0.5f };
    moe_router_options o  = { .n_experts = 6, .top_k = 2, .scoring = MOE_SCORING_SOFTMAX,
                              .n_group = 3, .topk_group = 1 };
    expect_row("grouped", &o, l, (int32_t[]){ 0, 1 },
               (double[]){ 0.41278823806013254, 0.020551516229749916 });
    o.n_group = o.topk_group = 0;
    expect_row("ungrouped", &o, l, (int32_t[]){ 0, 2 },
               (double[]){ 0.41278823806013254, 0.2503687223522278 });
}

TEST(router_grouped_tie_groups) {
    /* Equal group scores keep the lower groups; equal keys inside go lower
     * id first. E = 8, 4 groups, keep 2, top_k = 3; every logit 0 (s = 0.5). */
    float              l[8] = { 0 };
    moe_router_options o  = { .n_experts = 8, .top_k = 3, .scoring = MOE_SCORING_SIGMOID,
                              .n_group = 4, .topk_group = 2 };
    expect_row("ties", &o, l, (int32_t[]){ 0, 1, 2 }, (double[]){ 0.5, 0.5, 0.5 });
    /* Raise group 3 (experts 6, 7): groups 0 and 3 are kept, expert 7 first. */
    l[6] = 0.5f;
    l[7] = 1.0f;
    /* sigmoid(1) = 0.7310585786, sigmoid(.5) = 0.6224593312 */
    expect_row("raised", &o, l, (int32_t[]){ 7, 6, 0 },
               (double[]){ 0.7310585786300049, 0.6224593312018546, 0.5 });
    /* Kept groups 3 and 0, group 3 the better: expert 7 ties with experts 0
     * and 1 (s = .5) and loses to them, the lower ids. */
    l[6] = 1.0f;
    l[7] = 0.0f;
    expect_row("cross-group tie", &o, l, (int32_t[]){ 6, 0, 1 },
               (double[]){ 0.7310585786300049, 0.5, 0.5 });
}

/* ===== Ties, k = E, non-finite rows ===== */

TEST(router_ties_lower_index) {
    const float l[5] = { 0.5f, 2.0f, 2.0f, 0.5f, 2.0f };
    const moe_scoring sc[3] = { MOE_SCORING_SOFTMAX, MOE_SCORING_SOFTMAX_TOPK,
                                MOE_SCORING_SIGMOID };
    for (int i = 0; i < 3; i++) {
        moe_router_options o = { .n_experts = 5, .top_k = 4, .scoring = sc[i] };
        moe_router        *r = make(&o);
        if (!r) return;
        int32_t ids[4];
        float   w[4];
        CHECK_STATUS(moe_router_route(r, 1, l, ids, w), MOE_OK);
        const int32_t want[4] = { 1, 2, 4, 0 };
        for (int j = 0; j < 4; j++)
            CHECK(ids[j] == want[j], "scoring %d slot %d: id %d, want %d", i, j, ids[j], want[j]);
        CHECK(w[0] == w[1] && w[1] == w[2], "scoring %d: tied weights differ", i);
        moe_router_destroy(r);
    }
    moe_router_options o = { .n_experts = 5, .top_k = 1, .scoring = MOE_SCORING_LLAMA4 };
    /* sigmoid(2) = 0.8807970780 */
    expect_row("llama4 tie", &o, l, (int32_t[]){ 1 }, (double[]){ 0.8807970779778823 });
}

TEST(router_k_equals_e) {
    /* python: p = softmax([.1, -.3, .7, .7, -1]) in order 2, 3, 0, 1, 4 */
    const float        l[5] = { 0.1f, -0.3f, 0.7f, 0.7f, -1.0f };
    moe_router_options o  = { .n_experts = 5, .top_k = 5, .scoring = MOE_SCORING_SOFTMAX };
    const double p[5] = { 0.3226457361993892, 0.3226457361993892, 0.1770717343623484,
                          0.11869473312937989, 0.05894206010949339 };
    expect_row("softmax k=E", &o, l, (int32_t[]){ 2, 3, 0, 1, 4 }, p);
    o.renormalize = 1;
    expect_row("softmax k=E renorm", &o, l, (int32_t[]){ 2, 3, 0, 1, 4 }, p);
    o.scoring = MOE_SCORING_SOFTMAX_TOPK;
    expect_row("topk k=E", &o, l, (int32_t[]){ 2, 3, 0, 1, 4 }, p);
    /* one expert */
    const float one = -3.0f;
    o = (moe_router_options){ .n_experts = 1, .top_k = 1, .scoring = MOE_SCORING_SOFTMAX };
    expect_row("E=1 softmax", &o, &one, (int32_t[]){ 0 }, (double[]){ 1 });
    /* sigmoid(-3) = 0.04742587317756678 */
    o.scoring = MOE_SCORING_LLAMA4;
    expect_row("E=1 llama4", &o, &one, (int32_t[]){ 0 }, (double[]){ 0.04742587317756678 });
    /* grouped with every group kept and k = E */
    moe_router_options g = { .n_experts = 4, .top_k = 4, .scoring = MOE_SCORING_SIGMOID,
                             .n_group = 2, .topk_group = 2 };
    const float lg[4] = { 0.0f, 1.0f, -1.0f, 0.5f };
    /* sigmoid: 1 -> .7310585786, .5 -> .6224593312, 0 -> .5, -1 -> .2689414214 */
    expect_row("grouped k=E", &g, lg, (int32_t[]){ 1, 3, 0, 2 },
               (double[]){ 0.7310585786300049, 0.6224593312018546, 0.5, 0.2689414213699951 });
}

TEST(router_masked_rows) {
    /* All -inf, all NaN, mixed: ids 0..k-1; weight 0, or 1/k when normalized. */
    const float rows[3][5] = {
        { -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY },
        { NAN, NAN, NAN, NAN, NAN },
        { NAN, -INFINITY, NAN, -INFINITY, NAN },
    };
    const int32_t ids3[3] = { 0, 1, 2 };
    for (int i = 0; i < 3; i++) {
        moe_router_options o = { .n_experts = 5, .top_k = 3, .scoring = MOE_SCORING_SOFTMAX };
        expect_row("softmax", &o, rows[i], ids3, (double[]){ 0, 0, 0 });
        o.renormalize = 1;
        expect_row("softmax renorm", &o, rows[i], ids3, (double[]){ 1 / 3., 1 / 3., 1 / 3. });
        o.scoring = MOE_SCORING_SIGMOID;
        expect_row("sigmoid renorm", &o, rows[i], ids3, (double[]){ 1 / 3., 1 / 3., 1 / 3. });
        o.routed_scaling_factor = 3.0f;
        expect_row("sigmoid renorm scaled", &o, rows[i], ids3, (double[]){ 1, 1, 1 });
        o.renormalize = 0;
        expect_row("sigmoid", &o, rows[i], ids3, (double[]){ 0, 0, 0 });
        o = (moe_router_options){ .n_experts = 5, .top_k = 3, .scoring = MOE_SCORING_SOFTMAX_TOPK };
        expect_row("softmax_topk", &o, rows[i], ids3, (double[]){ 1 / 3., 1 / 3., 1 / 3. });
        o = (moe_router_options){ .n_experts = 5, .top_k = 1, .scoring = MOE_SCORING_LLAMA4 };
        expect_row("llama4", &o, rows[i], ids3, (double[]){ 0 });
    }
    /* grouped, with a correction bias: still 0..k-1 */
    float nan8[8];
    for (int e = 0; e < 8; e++) nan8[e] = NAN;
    const float bias[8] = { 0, 1, 2, 3, 4, 5, 6, 7 };
    moe_router_options o = { .n_experts = 8, .top_k = 3, .scoring = MOE_SCORING_SIGMOID,
                             .renormalize = 1, .n_group = 4, .topk_group = 2,
                             .correction_bias = bias };
    expect_row("grouped", &o, nan8, ids3, (double[]){ 1 / 3., 1 / 3., 1 / 3. });
}

TEST(router_nan_inf_entries) {
    /* NaN never ranks above a real logit, even one whose score underflows:
     * softmax over {-200} alone is 1 at expert 1; the rest are masked. */
    const float a[4] = { NAN, -200.0f, NAN, -INFINITY };
    moe_router_options o = { .n_experts = 4, .top_k = 2, .scoring = MOE_SCORING_SOFTMAX,
                             .renormalize = 1 };
    expect_row("softmax nan", &o, a, (int32_t[]){ 1, 0 }, (double[]){ 1, 0 });
    /* sigmoid(-200) underflows to 0 but is a real score: key 0 > -inf; the
     * weight sum is 0 and divides by 1. */
    o.scoring = MOE_SCORING_SIGMOID;
    expect_row("sigmoid underflow", &o, a, (int32_t[]){ 1, 0 }, (double[]){ 0, 0 });
    /* A NaN among real logits is skipped: softmax over [1, 3, 2] in order
     * 3, 2, 1: 0.6652409558, 0.2447284711, 0.0900305732. */
    const float b[4] = { 1.0f, NAN, 3.0f, 2.0f };
    o = (moe_router_options){ .n_experts = 4, .top_k = 3, .scoring = MOE_SCORING_SOFTMAX };
    expect_row("softmax nan mid", &o, b, (int32_t[]){ 2, 3, 0 },
               (double[]){ 0.6652409557748218, 0.24472847105479764, 0.09003057317038046 });
    /* +inf logits share the softmax mass; the other entries get 0 and tie. */
    const float c[4] = { 0.0f, INFINITY, 1.0f, INFINITY };
    expect_row("softmax +inf", &o, c, (int32_t[]){ 1, 3, 0 }, (double[]){ 0.5, 0.5, 0 });
    o.scoring = MOE_SCORING_SOFTMAX_TOPK;
    expect_row("softmax_topk +inf", &o, c, (int32_t[]){ 1, 3, 2 }, (double[]){ 0.5, 0.5, 0 });
    /* Fewer real logits than k: softmax over [2, 1] = [0.7310585786, 0.2689414214]. */
    const float d[4] = { -INFINITY, 2.0f, NAN, 1.0f };
    expect_row("softmax_topk masked", &o, d, (int32_t[]){ 1, 3, 0 },
               (double[]){ 0.7310585786300049, 0.2689414213699951, 0 });
    /* sigmoid: +inf -> 1, 0 -> .5, -inf and NaN masked; renormalized 2/3, 1/3. */
    const float e[4] = { 0.0f, INFINITY, -INFINITY, NAN };
    o = (moe_router_options){ .n_experts = 4, .top_k = 2, .scoring = MOE_SCORING_SIGMOID,
                              .renormalize = 1 };
    expect_row("sigmoid +inf", &o, e, (int32_t[]){ 1, 0 }, (double[]){ 2 / 3., 1 / 3. });
    o = (moe_router_options){ .n_experts = 4, .top_k = 1, .scoring = MOE_SCORING_LLAMA4 };
    expect_row("llama4 +inf", &o, e, (int32_t[]){ 1 }, (double[]){ 1 });
}

/* ===== Options and arguments ===== */

TEST(router_create_errors) {
    const float bad_bias[4] = { 0, NAN, 0, 0 };
    const float inf_bias[4] = { 0, 0, INFINITY, 0 };
    const float ok_bias[4]  = { 0, 0, 0, 0 };
    const float gw[8]       = { 0 };
    const moe_router_options base = { .n_experts = 4, .top_k = 2, .scoring = MOE_SCORING_SIGMOID };
    struct {
        const char        *what;
        moe_router_options o;
        moe_status         want;
    } cases[] = {
        { "E < 1", { .n_experts = 0, .top_k = 1 }, MOE_ERR_INVALID_ARG },
        { "E too large", { .n_experts = 5000, .top_k = 1 }, MOE_ERR_LIMIT },
        { "top_k 0", { .n_experts = 4, .top_k = 0 }, MOE_ERR_INVALID_ARG },
        { "top_k > E", { .n_experts = 4, .top_k = 5 }, MOE_ERR_INVALID_ARG },
        { "scoring", { .n_experts = 4, .top_k = 1, .scoring = (moe_scoring)9 },
          MOE_ERR_INVALID_ARG },
        { "llama4 top_k 2", { .n_experts = 4, .top_k = 2, .scoring = MOE_SCORING_LLAMA4 },
          MOE_ERR_INVALID_ARG },
        { "E % n_group", { .n_experts = 6, .top_k = 2, .n_group = 4, .topk_group = 2 },
          MOE_ERR_INVALID_ARG },
        { "topk_group > n_group", { .n_experts = 8, .top_k = 2, .n_group = 4, .topk_group = 5 },
          MOE_ERR_INVALID_ARG },
        { "topk_group 0", { .n_experts = 8, .top_k = 2, .n_group = 4, .topk_group = 0 },
          MOE_ERR_INVALID_ARG },
        { "top_k > kept experts", { .n_experts = 8, .top_k = 5, .n_group = 4, .topk_group = 2 },
          MOE_ERR_INVALID_ARG },
        { "n_group < 0", { .n_experts = 8, .top_k = 2, .n_group = -1 }, MOE_ERR_INVALID_ARG },
        { "topk_group without groups", { .n_experts = 8, .top_k = 2, .topk_group = 2 },
          MOE_ERR_INVALID_ARG },
        { "groups with softmax_topk",
          { .n_experts = 8, .top_k = 2, .n_group = 2, .topk_group = 1,
            .scoring = MOE_SCORING_SOFTMAX_TOPK },
          MOE_ERR_INVALID_ARG },
        { "scale NaN", { .n_experts = 4, .top_k = 2, .routed_scaling_factor = NAN },
          MOE_ERR_INVALID_ARG },
        { "scale inf", { .n_experts = 4, .top_k = 2, .routed_scaling_factor = INFINITY },
          MOE_ERR_INVALID_ARG },
        { "scale < 0", { .n_experts = 4, .top_k = 2, .routed_scaling_factor = -1.0f },
          MOE_ERR_INVALID_ARG },
        { "bias NaN", { .n_experts = 4, .top_k = 2, .correction_bias = bad_bias },
          MOE_ERR_INVALID_ARG },
        { "bias inf", { .n_experts = 4, .top_k = 2, .correction_bias = inf_bias },
          MOE_ERR_INVALID_ARG },
        { "bias with llama4", { .n_experts = 4, .top_k = 1, .scoring = MOE_SCORING_LLAMA4,
                                .correction_bias = ok_bias }, MOE_ERR_INVALID_ARG },
        { "gate without d_model", { .n_experts = 4, .top_k = 2, .gate_weight = gw },
          MOE_ERR_INVALID_ARG },
        { "gate_bias without gate", { .n_experts = 4, .top_k = 2, .gate_bias = ok_bias },
          MOE_ERR_INVALID_ARG },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char        err[256] = "";
        moe_router *r        = (moe_router *)&err; /* must be reset to NULL */
        moe_status  s        = moe_router_create(&cases[i].o, &r, err, sizeof err);
        CHECK(s == cases[i].want, "%s: got %s, want %s", cases[i].what, moe_status_name(s),
              moe_status_name(cases[i].want));
        CHECK(r == NULL, "%s: out not NULL on failure", cases[i].what);
        CHECK(err[0] != 0, "%s: no message", cases[i].what);
        moe_router_destroy(s == MOE_OK ? r : NULL);
    }
    char err[256] = "";
    CHECK_STATUS(moe_router_create(NULL, &(moe_router *){ NULL }, err, sizeof err),
                 MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_router_create(&base, NULL, NULL, 0), MOE_ERR_INVALID_ARG);
    /* the message names the numbers */
    moe_router        *r = NULL;
    moe_router_options o = { .n_experts = 6, .top_k = 2, .n_group = 4, .topk_group = 2 };
    CHECK_STATUS(moe_router_create(&o, &r, err, sizeof err), MOE_ERR_INVALID_ARG);
    CHECK(strstr(err, "6") && strstr(err, "4"), "message: %s", err);
    /* valid edge: one group per expert, all kept */
    o = (moe_router_options){ .n_experts = 4, .top_k = 4, .n_group = 4, .topk_group = 4 };
    CHECK_STATUS(moe_router_create(&o, &r, err, sizeof err), MOE_OK);
    moe_router_destroy(r);
    moe_router_destroy(NULL);
}

TEST(router_route_args) {
    moe_router_options o = { .n_experts = 4, .top_k = 2 };
    moe_router        *r = make(&o);
    if (!r) return;
    float   l[4] = { 0 }, w[2];
    int32_t ids[2];
    CHECK_STATUS(moe_router_route(NULL, 1, l, ids, w), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_router_route(r, 1, NULL, ids, w), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_router_route(r, 1, l, NULL, w), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_router_route(r, 1, l, ids, NULL), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_router_route(r, -1, l, ids, w), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_router_route(r, 0, NULL, NULL, NULL), MOE_OK);
    /* no gate weight: logits are the caller's */
    CHECK_STATUS(moe_router_logits(r, 1, l, l), MOE_ERR_UNSUPPORTED);
    moe_router_destroy(r);
}

/* Allocation failures: every allocation of create fails in turn, with no leak. */
static int g_alloc_budget, g_alloc_live;
static void *budget_malloc(size_t n, void *u) {
    (void)u;
    if (g_alloc_budget-- <= 0) return NULL;
    g_alloc_live++;
    return malloc(n);
}
static void budget_free(void *p, void *u) {
    (void)u;
    g_alloc_live--;
    free(p);
}

TEST(router_create_oom) {
    const float bias[4] = { 0.1f, 0.2f, 0.3f, 0.4f };
    const float gw[12]  = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 };
    const float gb[4]   = { 1, 1, 1, 1 };
    moe_router_options o = { .n_experts = 4, .top_k = 2, .scoring = MOE_SCORING_SIGMOID,
                             .correction_bias = bias, .d_model = 3, .gate_weight = gw,
                             .gate_bias = gb };
    bool ok = false;
    for (int budget = 0; budget < 10 && !ok; budget++) {
        moe_set_allocator(&(moe_allocator){ budget_malloc, budget_free, NULL });
        g_alloc_budget = budget;
        g_alloc_live   = 0;
        moe_router *r  = NULL;
        char        err[128];
        moe_status  s  = moe_router_create(&o, &r, err, sizeof err);
        if (s == MOE_OK) {
            ok = true;
            moe_router_destroy(r);
        } else {
            CHECK(s == MOE_ERR_NOMEM, "budget %d: %s", budget, moe_status_name(s));
        }
        CHECK(g_alloc_live == 0, "budget %d: %d blocks leaked", budget, g_alloc_live);
        moe_set_allocator(NULL);
    }
    CHECK(ok, "create never succeeded");
}

/* ===== Random rows ===== */

static void fill_row(test_rng *g, float *l, int E, bool inject) {
    for (int e = 0; e < E; e++) {
        l[e] = 2.0f * test_rng_normal(g);
        if (!inject) continue;
        uint64_t u = test_rng_u64(g) % 64;
        if (u == 0) l[e] = NAN;
        else if (u == 1) l[e] = INFINITY;
        else if (u == 2) l[e] = -INFINITY;
    }
    /* some rows entirely NaN, -inf or +inf */
    if (inject && test_rng_u64(g) % 50 == 0) {
        const float all[3] = { NAN, -INFINITY, INFINITY };
        float       v      = all[test_rng_u64(g) % 3];
        for (int e = 0; e < E; e++) l[e] = v;
    }
}

TEST(router_random_ids_valid) {
    test_rng g = { 7 };
    const float bias[64] = { 0.05f, -0.1f, 0.2f, 0.0f, 0.3f, -0.2f, 0.1f, 0.15f };
    const moe_router_options cfg[] = {
        { .n_experts = 64, .top_k = 8, .scoring = MOE_SCORING_SOFTMAX, .renormalize = 1 },
        { .n_experts = 64, .top_k = 8, .scoring = MOE_SCORING_SOFTMAX },
        { .n_experts = 64, .top_k = 4, .scoring = MOE_SCORING_SOFTMAX_TOPK },
        { .n_experts = 64, .top_k = 6, .scoring = MOE_SCORING_SIGMOID, .renormalize = 1,
          .correction_bias = bias, .routed_scaling_factor = 2.5f },
        { .n_experts = 64, .top_k = 8, .scoring = MOE_SCORING_SIGMOID, .renormalize = 1,
          .n_group = 8, .topk_group = 4, .correction_bias = bias },
        { .n_experts = 64, .top_k = 6, .scoring = MOE_SCORING_SOFTMAX, .n_group = 8,
          .topk_group = 3 },
        { .n_experts = 64, .top_k = 1, .scoring = MOE_SCORING_LLAMA4 },
        { .n_experts = 64, .top_k = 64, .scoring = MOE_SCORING_SOFTMAX, .renormalize = 1 },
    };
    enum { ROWS = 10000 / 8 }; /* 10k rows over the 8 configurations */
    static float   l[ROWS * 64];
    static int32_t ids[ROWS * 64];
    static float   w[ROWS * 64];
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        moe_router *r = make(&cfg[c]);
        if (!r) return;
        const int E = cfg[c].n_experts, k = cfg[c].top_k;
        for (int t = 0; t < ROWS; t++) fill_row(&g, l + t * E, E, true);
        CHECK_STATUS(moe_router_route(r, ROWS, l, ids, w), MOE_OK);
        int bad = 0;
        for (int t = 0; t < ROWS && bad < 5; t++) {
            uint64_t seen = 0;
            for (int j = 0; j < k; j++) {
                int32_t id = ids[t * k + j];
                float   wj = w[t * k + j];
                if (id < 0 || id >= E || (seen >> id & 1) || !isfinite(wj) || wj < 0) {
                    CHECK(false, "config %zu row %d slot %d: id %d w %g", c, t, j, id, wj);
                    bad++;
                    break;
                }
                seen |= 1ull << id;
            }
        }
        moe_router_destroy(r);
    }
}

TEST(router_softmax_topk_equals_softmax_renorm) {
    test_rng g = { 11 };
    moe_router_options a = { .n_experts = 32, .top_k = 4, .scoring = MOE_SCORING_SOFTMAX,
                             .renormalize = 1 };
    moe_router_options b = { .n_experts = 32, .top_k = 4, .scoring = MOE_SCORING_SOFTMAX_TOPK };
    moe_router *ra = make(&a), *rb = make(&b);
    if (!ra || !rb) goto out;
    enum { ROWS = 1000 };
    static float   l[ROWS * 32];
    static int32_t ia[ROWS * 4], ib[ROWS * 4];
    static float   wa[ROWS * 4], wb[ROWS * 4];
    for (int t = 0; t < ROWS; t++) fill_row(&g, l + t * 32, 32, false);
    CHECK_STATUS(moe_router_route(ra, ROWS, l, ia, wa), MOE_OK);
    CHECK_STATUS(moe_router_route(rb, ROWS, l, ib, wb), MOE_OK);
    double max_err = 0;
    int    id_diff = 0;
    for (int i = 0; i < ROWS * 4; i++) {
        id_diff += ia[i] != ib[i];
        max_err = fmax(max_err, fabs((double)wa[i] - wb[i]));
    }
    CHECK(id_diff == 0, "%d ids differ", id_diff);
    CHECK(max_err <= 1e-6, "max weight difference %g", max_err);
out:
    moe_router_destroy(ra);
    moe_router_destroy(rb);
}

TEST(router_row_independence) {
    /* Each row routed alone equals the same row inside a batch, bitwise. */
    test_rng g = { 3 };
    const float bias[48] = { 0.1f, 0.0f, -0.1f, 0.2f };
    const moe_router_options cfg[] = {
        { .n_experts = 48, .top_k = 6, .scoring = MOE_SCORING_SOFTMAX, .renormalize = 1 },
        { .n_experts = 48, .top_k = 6, .scoring = MOE_SCORING_SIGMOID, .renormalize = 1,
          .n_group = 6, .topk_group = 3, .correction_bias = bias, .routed_scaling_factor = 1.5f },
        { .n_experts = 48, .top_k = 3, .scoring = MOE_SCORING_SOFTMAX_TOPK },
    };
    enum { ROWS = 37 };
    float   l[ROWS * 48], wb[ROWS * 6], w1[6];
    int32_t ib[ROWS * 6], i1[6];
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        moe_router *r = make(&cfg[c]);
        if (!r) return;
        const int E = cfg[c].n_experts, k = cfg[c].top_k;
        for (int t = 0; t < ROWS; t++) fill_row(&g, l + t * E, E, true);
        CHECK_STATUS(moe_router_route(r, ROWS, l, ib, wb), MOE_OK);
        for (int t = 0; t < ROWS; t++) {
            CHECK_STATUS(moe_router_route(r, 1, l + t * E, i1, w1), MOE_OK);
            CHECK(memcmp(i1, ib + t * k, sizeof(int32_t) * k) == 0, "config %zu row %d ids", c, t);
            CHECK(memcmp(w1, wb + t * k, sizeof(float) * k) == 0, "config %zu row %d w", c, t);
        }
        moe_router_destroy(r);
    }
}

/* Several threads routing with one router at once get the single-thread bits. */
typedef struct route_job {
    const moe_router *r;
    const float      *l;   /* (ROWS, E) */
    int32_t          *ids; /* (ROWS, k) */
    float            *w;   /* (ROWS, k) */
    int64_t           n;
} route_job;

static void *route_thread(void *arg) {
    route_job *j = arg;
    for (int rep = 0; rep < 20; rep++) moe_router_route(j->r, j->n, j->l, j->ids, j->w);
    return NULL;
}

TEST(router_concurrent_threads) {
    enum { E = 96, K = 8, ROWS = 64, THREADS = 4 };
    test_rng g = { 17 };
    static float   l[ROWS * E], w1[ROWS * K], wt[THREADS][ROWS * K];
    static int32_t i1[ROWS * K], it[THREADS][ROWS * K];
    for (int t = 0; t < ROWS; t++) fill_row(&g, l + t * E, E, true);
    moe_router_options o = { .n_experts = E, .top_k = K, .scoring = MOE_SCORING_SIGMOID,
                             .renormalize = 1, .n_group = 8, .topk_group = 4 };
    moe_router *r = make(&o);
    if (!r) return;
    CHECK_STATUS(moe_router_route(r, ROWS, l, i1, w1), MOE_OK);
    pthread_t  th[THREADS];
    route_job  jobs[THREADS];
    for (int i = 0; i < THREADS; i++) {
        jobs[i] = (route_job){ r, l, it[i], wt[i], ROWS };
        REQUIRE(pthread_create(&th[i], NULL, route_thread, &jobs[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < THREADS; i++) {
        CHECK(memcmp(it[i], i1, sizeof i1) == 0, "thread %d ids differ", i);
        CHECK(memcmp(wt[i], w1, sizeof w1) == 0, "thread %d weights differ", i);
    }
    moe_router_destroy(r);
}

/* ===== Router linear ===== */

TEST(router_logits_vs_double) {
    enum { E = 7, D = 37, T = 19 }; /* D not a multiple of the 8 lanes */
    test_rng g = { 5 };
    float    wt[E * D], b[E], x[T * D], lg[T * E], l1[E];
    test_fill_normal(&g, wt, E * D, 1.0f);
    test_fill_normal(&g, b, E, 1.0f);
    test_fill_normal(&g, x, T * D, 1.0f);
    moe_router_options o = { .n_experts = E, .top_k = 2, .d_model = D, .gate_weight = wt,
                             .gate_bias = b };
    moe_router *r = make(&o);
    if (!r) return;
    const float w0 = wt[0];
    wt[0] = 1e9f; /* the router copied the weights: this must not change the result */
    CHECK_STATUS(moe_router_logits(r, T, x, lg), MOE_OK);
    wt[0] = w0;
    for (int t = 0; t < T; t++) {
        for (int e = 0; e < E; e++) {
            double ref = b[e], mag = fabs((double)b[e]);
            for (int d = 0; d < D; d++) {
                ref += (double)x[t * D + d] * wt[e * D + d];
                mag += fabs((double)x[t * D + d] * wt[e * D + d]);
            }
            double got = lg[t * E + e];
            CHECK(fabs(got - ref) <= 1e-6 * mag, "t %d e %d: %.9g vs %.9g", t, e, got, ref);
        }
        /* one token alone gives the same bits */
        CHECK_STATUS(moe_router_logits(r, 1, x + t * D, l1), MOE_OK);
        CHECK(memcmp(l1, lg + t * E, sizeof l1) == 0, "token %d differs alone", t);
    }
    /* small integers: exact in fp32 whatever the order */
    for (int i = 0; i < E * D; i++) wt[i] = (float)((i * 7) % 5 - 2);
    for (int i = 0; i < T * D; i++) x[i] = (float)((i * 3) % 7 - 3);
    moe_router_options oi = { .n_experts = E, .top_k = 1, .d_model = D, .gate_weight = wt };
    moe_router        *ri = make(&oi);
    if (ri) {
        CHECK_STATUS(moe_router_logits(ri, T, x, lg), MOE_OK);
        for (int t = 0; t < T; t++)
            for (int e = 0; e < E; e++) {
                long s = 0;
                for (int d = 0; d < D; d++) s += (long)x[t * D + d] * (long)wt[e * D + d];
                CHECK(lg[t * E + e] == (float)s, "int t %d e %d: %g vs %ld", t, e,
                      lg[t * E + e], s);
            }
        CHECK_STATUS(moe_router_logits(ri, 1, NULL, lg), MOE_ERR_INVALID_ARG);
        CHECK_STATUS(moe_router_logits(ri, 0, NULL, NULL), MOE_OK);
    }
    moe_router_destroy(ri);
    moe_router_destroy(r);
}

/* ===== DeepSeek-V3 shape against a separate fp64 implementation =====
 *
 * Written plainly from vllm-moe-notes.md §5.3, sharing nothing with
 * src/router: sigmoid scores, biased keys, group score = sum of the two
 * largest keys of the group, keep the best groups by repeated argmax
 * (strictly greater, so the lower group wins ties), then top_k by repeated
 * argmax over the kept experts, weights = unbiased scores renormalized and
 * scaled. It also reports the smallest gap at a decision so that rows where
 * fp32 and fp64 may honestly disagree (a near tie) are recognized.
 */
enum { DS_E = 256, DS_G = 8, DS_KG = 4, DS_K = 8 };

static void ds_ref(const float *logit, const float *bias, int *ids, double *w, double *gap) {
    double s[DS_E], key[DS_E], gscore[DS_G];
    int    group_kept[DS_G] = { 0 }, taken[DS_E] = { 0 };
    for (int e = 0; e < DS_E; e++) {
        s[e]   = 1.0 / (1.0 + exp(-(double)logit[e]));
        key[e] = s[e] + bias[e];
    }
    const int per = DS_E / DS_G;
    for (int g = 0; g < DS_G; g++) {
        double a = -INFINITY, b = -INFINITY;
        for (int i = g * per; i < (g + 1) * per; i++) {
            if (key[i] > a) { b = a; a = key[i]; }
            else if (key[i] > b) b = key[i];
        }
        gscore[g] = a + b;
    }
    *gap = INFINITY;
    for (int n = 0; n <= DS_KG; n++) { /* one extra round measures the gap */
        int best = -1;
        for (int g = 0; g < DS_G; g++)
            if (!group_kept[g] && (best < 0 || gscore[g] > gscore[best])) best = g;
        if (n == DS_KG) {
            double lowest_kept = INFINITY;
            for (int g = 0; g < DS_G; g++)
                if (group_kept[g]) lowest_kept = fmin(lowest_kept, gscore[g]);
            *gap = fmin(*gap, lowest_kept - gscore[best]);
            break;
        }
        group_kept[best] = 1;
    }
    for (int n = 0; n <= DS_K; n++) {
        int best = -1;
        for (int e = 0; e < DS_E; e++)
            if (group_kept[e / per] && !taken[e] && (best < 0 || key[e] > key[best])) best = e;
        if (n == DS_K) {
            *gap = fmin(*gap, key[ids[DS_K - 1]] - key[best]);
            break;
        }
        if (n > 0) *gap = fmin(*gap, key[ids[n - 1]] - key[best]);
        taken[best] = 1;
        ids[n]      = best;
    }
    double sum = 0;
    for (int j = 0; j < DS_K; j++) sum += s[ids[j]];
    for (int j = 0; j < DS_K; j++) w[j] = s[ids[j]] / sum * 2.5;
}

TEST(router_deepseek_v3_shape) {
    test_rng g = { 2024 };
    float    bias[DS_E];
    for (int e = 0; e < DS_E; e++) bias[e] = 0.1f * test_rng_normal(&g);
    moe_router_options o = { .n_experts = DS_E, .top_k = DS_K, .scoring = MOE_SCORING_SIGMOID,
                             .renormalize = 1, .n_group = DS_G, .topk_group = DS_KG,
                             .correction_bias = bias, .routed_scaling_factor = 2.5f };
    moe_router *r = make(&o);
    if (!r) return;
    enum { ROWS = 300 };
    static float   l[ROWS * DS_E];
    static int32_t ids[ROWS * DS_K];
    static float   w[ROWS * DS_K];
    test_fill_normal(&g, l, ROWS * DS_E, 1.5f);
    CHECK_STATUS(moe_router_route(r, ROWS, l, ids, w), MOE_OK);
    int    near_ties = 0, compared = 0;
    double max_rel   = 0;
    for (int t = 0; t < ROWS; t++) {
        int    rid[DS_K];
        double rw[DS_K], gap;
        ds_ref(l + t * DS_E, bias, rid, rw, &gap);
        if (gap < 1e-6) { near_ties++; continue; }
        compared++;
        for (int j = 0; j < DS_K; j++) {
            CHECK(ids[t * DS_K + j] == rid[j], "row %d slot %d: id %d, reference %d", t, j,
                  ids[t * DS_K + j], rid[j]);
            max_rel = fmax(max_rel, fabs(w[t * DS_K + j] - rw[j]) / rw[j]);
        }
        if (test_failed()) break;
    }
    CHECK(near_ties <= ROWS / 100, "%d near-tie rows skipped", near_ties);
    CHECK(max_rel <= 1e-6, "max relative weight error %g over %d rows", max_rel, compared);
    moe_router_destroy(r);
}
