/*
 * logits.c - the router linear: logits = x . gate_weight^T + gate_bias, fp32.
 *
 * Summation order, fixed for every element whatever n_tokens is: eight lane
 * sums, lane l accumulating the products at d = l (mod 8) in increasing d, then
 * ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)), then + bias. The eight
 * independent chains let the compiler vectorize the loop without reassociating
 * anything (the build uses -std=c11, so no FMA contraction either).
 *
 * Tokens are taken in blocks so that a gate row is read once per block rather
 * than once per token; blocking changes no sum.
 */
#include "router.h"

#define LANES 8
#define TOKEN_BLOCK 8

/* x (d) . w (d) in the fixed order above. */
static float dot_fixed(const float *x, const float *w, int64_t d) {
    float   acc[LANES] = { 0 };
    int64_t i          = 0;
    for (; i + LANES <= d; i += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += x[i + l] * w[i + l];
    for (int l = 0; i + l < d; l++) acc[l] += x[i + l] * w[i + l];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

moe_status moe_router_logits(const moe_router *r, int64_t n_tokens, const float *x,
                             float *logits) {
    if (!r || n_tokens < 0) return MOE_ERR_INVALID_ARG;
    if (!r->gate_weight) return MOE_ERR_UNSUPPORTED;
    if (n_tokens == 0) return MOE_OK;
    if (!x || !logits) return MOE_ERR_INVALID_ARG;
    const int32_t E = r->opts.n_experts;
    const int64_t d = r->opts.d_model;
    const float  *W = r->gate_weight; // (n_experts, d_model)
    const float  *b = r->gate_bias;   // (n_experts) or NULL
    for (int64_t t0 = 0; t0 < n_tokens; t0 += TOKEN_BLOCK) {
        const int64_t t1 = t0 + TOKEN_BLOCK < n_tokens ? t0 + TOKEN_BLOCK : n_tokens;
        for (int32_t e = 0; e < E; e++) {
            const float *we = W + (int64_t)e * d; // (d_model)
            for (int64_t t = t0; t < t1; t++) {
                float v = dot_fixed(x + t * d, we, d);
                logits[t * E + e] = b ? v + b[e] : v;
            }
        }
    }
    return MOE_OK;
}
