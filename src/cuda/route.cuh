/*
 * route.cuh - routing of one token by one warp (the numerics of
 * src/router/router.c; see route.cu), shared by the routing kernel and the
 * fused decode prologue (decode-prologue.cu).
 */
#ifndef MOE_CUDA_ROUTE_CUH
#define MOE_CUDA_ROUTE_CUH

#include "common.cuh"

#include <math.h>

// ---- device helpers

/* (key, id) a beats (key, id) b: larger key, then lower id; NaN keys are
 * taken slots and never win; id INT32_MAX means "none". */
static __device__ __forceinline__ bool pair_better(float ka, int ia, float kb, int ib) {
    if (ia == INT32_MAX) return false;
    if (ib == INT32_MAX) return true;
    return ka > kb || (ka == kb && ia < ib);
}

/* This lane's best entry among key[lane], key[lane + 32], ... skipping
 * taken (NaN) entries: larger key, then lower index (the scan ascends). */
static __device__ __forceinline__ void lane_best(const float *key, int n, float *bk, int *bi) {
    float k = -INFINITY;
    int   i = INT32_MAX;
#pragma unroll 1
    for (int e = threadIdx.x & 31; e < n; e += 32) {
        float v = key[e];
        if (v != v) continue; // taken
        if (i == INT32_MAX || v > k) { k = v; i = e; }
    }
    *bk = k;
    *bi = i;
}

/* The best (key, id) over the warp's lanes (pair_better); all lanes get it. */
static __device__ __forceinline__ void warp_best(float *bk, int *bi) {
    for (int o = 16; o > 0; o >>= 1) {
        float ok = __shfl_xor_sync(0xffffffffu, *bk, o);
        int   oi = __shfl_xor_sync(0xffffffffu, *bi, o);
        if (pair_better(ok, oi, *bk, *bi)) { *bk = ok; *bi = oi; }
    }
}

/* Warp argmax over key[0..n) skipping NaN keys; all lanes get the winner. */
static __device__ __forceinline__ int warp_argmax(const float *key, int n, float *best_key) {
    int bi;
    lane_best(key, n, best_key, &bi);
    warp_best(best_key, &bi);
    return bi;
}

static __device__ __forceinline__ float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }

/* Routes one token: l (E) logits; key, score (E) and gsc (n_group + 2 k)
 * are the warp's shared-memory scratch; writes id, wt (k). Called by a whole
 * warp. */
static __device__ void route_token_warp(const moe_router_options &o, const float *bias,
                                        const float *l, float *key, float *score, float *gsc,
                                        int32_t *id, float *wt) {
    const int  E = o.n_experts, k = o.top_k, lane = threadIdx.x & 31;
    const int  ng = o.n_group > 1 ? o.n_group : 0;
    const bool raw_keys = o.scoring == MOE_SCORING_SOFTMAX_TOPK || o.scoring == MOE_SCORING_LLAMA4;

    if (o.scoring == MOE_SCORING_SOFTMAX) {
        float m = -INFINITY, n_inf = 0.0f;
        // the one cold read of the logits: unrolled so that its loads overlap
#pragma unroll 4
        for (int e = lane; e < E; e += 32) {
            float v = l[e];
            if (v == INFINITY) n_inf += 1.0f;
            if (v > m) m = v;
        }
        m = warp_max(m);
        n_inf = warp_sum(n_inf);
        float sum = 0.0f;
#pragma unroll 1
        for (int e = lane; e < E; e += 32) {
            float v = l[e], p;
            if (n_inf > 0.0f) p = v == INFINITY ? 1.0f / n_inf : 0.0f;
            else if (m == -INFINITY || v != v || v == -INFINITY) p = 0.0f;
            else p = expf(v - m);
            score[e] = p;
            sum += p;
        }
        sum = warp_sum(sum);
        if (n_inf == 0.0f && m != -INFINITY)
#pragma unroll 1
            for (int e = lane; e < E; e += 32) score[e] /= sum;
    } else if (o.scoring == MOE_SCORING_SIGMOID) {
#pragma unroll 4
        for (int e = lane; e < E; e += 32) {
            float v = l[e];
            score[e] = v != v ? 0.0f : sigmoid_f(v);
        }
    }
    __syncwarp();
#pragma unroll 4
    for (int e = lane; e < E; e += 32) {
        float v = l[e];
        if (v != v || v == -INFINITY) key[e] = -INFINITY;
        else if (raw_keys) key[e] = v;
        else key[e] = bias ? score[e] + bias[e] : score[e];
    }
    __syncwarp();

    if (ng) {
        // group scores as grouped.c: best, or best + second with a bias
        const int m = E / ng;
#pragma unroll 1
        for (int gi = lane; gi < ng; gi += 32) {
            const float *kk = key + gi * m;
            float best = kk[0], second = -INFINITY;
#pragma unroll 1
            for (int i = 1; i < m; i++) {
                if (kk[i] > best) { second = best; best = kk[i]; }
                else if (kk[i] > second) second = kk[i];
            }
            gsc[gi] = (bias == nullptr || m == 1) ? best : best + second;
        }
        __syncwarp();
        // keep topk_group groups (taken groups marked NaN in gsc: kept)
#pragma unroll 1
        for (int r = 0; r < o.topk_group; r++) {
            float bk;
            int g = warp_argmax(gsc, ng, &bk);
            __syncwarp();
            if (lane == 0) gsc[g] = NAN;
            __syncwarp();
        }
        // exclude experts of groups not kept
#pragma unroll 1
        for (int e = lane; e < E; e += 32) {
            float gs = gsc[e / m];
            if (gs == gs) key[e] = NAN;
        }
        __syncwarp();
    }

    /* The selection and its weights stay in shared memory (sid, swt: k
     * each, after the group scores) until the final coalesced store: lane 0's
     * serial weight math then never waits on global memory. */
    int32_t *sid = (int32_t *)(gsc + ng);
    float   *swt = (float *)(sid + k);
    /* k rounds of a warp argmax over each lane's best remaining entry; lane
     * l owns entries e = l (mod 32), so only the round's winner touches
     * shared memory (marks its entry taken, rescans its own entries): one
     * butterfly per round instead of a scan of all E keys. */
    float lk;
    int   li;
    lane_best(key, E, &lk, &li);
#pragma unroll 1
    for (int j = 0; j < k; j++) {
        float bk = lk;
        int   bi = li;
        warp_best(&bk, &bi);
        if (lane == 0) {
            sid[j] = bi;
            swt[j] = bk; // selected key, replaced by the weight below
        }
        if (bi == li && bi != INT32_MAX) { // this lane's entry won
            key[bi] = NAN;
            lane_best(key, E, &lk, &li);
        }
    }
    __syncwarp();
    if (lane == 0) {
        float *w = swt;
        const bool masked_row = w[0] == -INFINITY;
        bool normalized;
        if (o.scoring == MOE_SCORING_SOFTMAX_TOPK) {
            normalized = true;
            if (!masked_row) {
                const float m = w[0];
                if (m == INFINITY) {
                    float n_inf = 0.0f;
#pragma unroll 1
                    for (int j = 0; j < k; j++) n_inf += w[j] == INFINITY ? 1.0f : 0.0f;
#pragma unroll 1
                    for (int j = 0; j < k; j++) w[j] = w[j] == INFINITY ? 1.0f / n_inf : 0.0f;
                } else {
                    float sum = 0.0f;
#pragma unroll 1
                    for (int j = 0; j < k; j++) { w[j] = expf(w[j] - m); sum += w[j]; }
#pragma unroll 1
                    for (int j = 0; j < k; j++) w[j] /= sum;
                }
            }
        } else if (o.scoring == MOE_SCORING_LLAMA4) {
            normalized = false;
#pragma unroll 1
            for (int j = 0; j < k; j++) w[j] = sigmoid_f(w[j]);
        } else {
            normalized = o.renormalize != 0;
#pragma unroll 1
            for (int j = 0; j < k; j++) w[j] = score[sid[j]];
            if (normalized && !masked_row) {
                float sum = 0.0f;
#pragma unroll 1
                for (int j = 0; j < k; j++) sum += w[j];
                if (sum == 0.0f) sum = 1.0f;
#pragma unroll 1
                for (int j = 0; j < k; j++) w[j] /= sum;
            }
        }
        if (masked_row)
#pragma unroll 1
            for (int j = 0; j < k; j++) w[j] = normalized ? 1.0f / (float)k : 0.0f;
        const float f = o.routed_scaling_factor == 0.0f ? 1.0f : o.routed_scaling_factor;
        if (f != 1.0f)
#pragma unroll 1
            for (int j = 0; j < k; j++) w[j] *= f;
    }
    __syncwarp();
#pragma unroll 1
    for (int j = lane; j < k; j += 32) {
        id[j] = sid[j];
        wt[j] = swt[j];
    }
    __syncwarp();
}

/* Shared memory floats one routing warp needs: key, score, group scores,
 * selected ids and weights. */
static __host__ __device__ inline size_t route_warp_floats(const moe_router_options *o) {
    return (size_t)(2 * o->n_experts + (o->n_group > 1 ? o->n_group : 0) + 2 * o->top_k);
}

#endif /* MOE_CUDA_ROUTE_CUH */
