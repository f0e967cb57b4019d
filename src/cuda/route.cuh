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

/* A key as an unsigned code with the same order (larger key, larger code);
 * -0 and +0, which compare equal, get one code. Codes of non-NaN keys are at
 * least 0x007fffff (-inf): 0 means "no entry". */
static __device__ __forceinline__ uint32_t key_code(float v) {
    const uint32_t u = __float_as_uint(v + 0.0f); // -0 -> +0
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* The key of a code (code 0, no entry: -inf). */
static __device__ __forceinline__ float code_key(uint32_t c) {
    if (c == 0) return -INFINITY;
    return __uint_as_float((c & 0x80000000u) ? (c & 0x7fffffffu) : ~c);
}

/* This lane's best entry among key[lane], key[lane + 32], ... skipping
 * taken (NaN) entries: larger key, then lower index (the scan ascends);
 * code 0 and id INT32_MAX when it has none. */
static __device__ __forceinline__ void lane_best(const float *key, int n, uint32_t *bc, int *bi) {
    uint32_t c = 0;
    int      i = INT32_MAX;
#pragma unroll 4
    for (int e = threadIdx.x & 31; e < n; e += 32) {
        const float    v  = key[e];
        const uint32_t ce = v != v ? 0u : key_code(v);
        if (ce > c) { c = ce; i = e; }
    }
    *bc = c;
    *bi = i;
}

/* The warp's best of the lanes' (code, id): larger code, then lower id; all
 * lanes get its id (INT32_MAX: no lane has an entry) and code (*best). Two
 * warp reductions instead of a five-level butterfly of (key, id) pairs: the
 * top-k loop of a decode step is a chain of these. */
static __device__ __forceinline__ int warp_winner(uint32_t code, int id, uint32_t *best) {
    const uint32_t m = __reduce_max_sync(0xffffffffu, code);
    *best = m;
    const uint32_t c = m != 0 && code == m ? (uint32_t)id : (uint32_t)INT32_MAX;
    return (int)__reduce_min_sync(0xffffffffu, c);
}

/* w[0] + w[1] + ... + w[n - 1], added in that order. */
static __device__ __forceinline__ float slot_sum(const float *w, int n) {
    float sum = 0.0f;
#pragma unroll 8
    for (int j = 0; j < n; j++) sum += w[j];
    return sum;
}

static __device__ __forceinline__ float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }

/* Calls f(e, a[e], b[e]) for this lane's entries e = lane, lane + 32, ...
 * below n, in that order, with up to 8 entries' loads of a and b (NULL:
 * nothing to load, 0) issued before any call: the calls store to shared
 * memory, which the compiler would otherwise order before the next load. */
template <class F>
static __device__ __forceinline__ void lane_entries(const float *a, const float *b, int n, F f) {
    for (int e0 = threadIdx.x & 31; e0 < n; e0 += 8 * 32) {
        float va[8], vb[8];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int e = e0 + 32 * j;
            va[j] = a && e < n ? a[e] : 0.0f;
            vb[j] = b && e < n ? b[e] : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < 8; j++)
            if (e0 + 32 * j < n) f(e0 + 32 * j, va[j], vb[j]);
    }
}

/* Shared memory floats one routing warp needs: key, score, group scores,
 * selected ids and weights. */
static __host__ __device__ inline size_t route_warp_floats(const moe_router_options *o) {
    return (size_t)(2 * o->n_experts + (o->n_group > 1 ? o->n_group : 0) + 2 * o->top_k);
}

/* Where a routing warp with scratch at key leaves its selected ids (k). */
static __device__ __forceinline__ int32_t *route_warp_ids(const moe_router_options *o,
                                                          float *key) {
    return (int32_t *)(key + 2 * o->n_experts + (o->n_group > 1 ? o->n_group : 0));
}

/* Routes one token: l (E) logits; key, score (E) and gsc (n_group + 2 k)
 * are the warp's shared-memory scratch; writes id, wt (k). Called by a whole
 * warp. */
static __device__ void route_token_warp(const moe_router_options &o, const float *bias,
                                        const float *l, float *key, float *score, float *gsc,
                                        int32_t *id, float *wt) {
    const int  E = o.n_experts, k = o.top_k, lane = threadIdx.x & 31;
    const int  ng = o.n_group > 1 ? o.n_group : 0;
    const bool raw_keys = o.scoring == MOE_SCORING_SOFTMAX_TOPK || o.scoring == MOE_SCORING_LLAMA4;

    /* Every read of the logits and the bias goes through lane_entries, so
     * that a lane's loads are in flight together: the logits are a cold
     * read, and loads in a loop that stores to shared memory wait for each
     * other (ncu, deepseek-v3 at T = 1: 10 of the prologue's 17 us). */
    const float *kb = bias && !raw_keys ? bias : nullptr; // the bias the keys add
    if (o.scoring == MOE_SCORING_SOFTMAX) {
        float m = -INFINITY, n_inf = 0.0f;
        lane_entries(l, nullptr, E, [&](int e, float v, float) {
            if (v == INFINITY) n_inf += 1.0f;
            if (v > m) m = v;
            key[e] = v; // staged for the passes below
        });
        m = warp_max(m);
        n_inf = warp_sum(n_inf);
        float sum = 0.0f;
#pragma unroll 4
        for (int e = lane; e < E; e += 32) {
            float v = key[e], p;
            if (n_inf > 0.0f) p = v == INFINITY ? 1.0f / n_inf : 0.0f;
            else if (m == -INFINITY || v != v || v == -INFINITY) p = 0.0f;
            else p = expf(v - m);
            score[e] = p;
            sum += p;
        }
        sum = warp_sum(sum);
        const bool norm = n_inf == 0.0f && m != -INFINITY;
        lane_entries(kb, nullptr, E, [&](int e, float b, float) {
            const float v = key[e];
            if (norm) score[e] /= sum;
            key[e] = v != v || v == -INFINITY ? -INFINITY : kb ? score[e] + b : score[e];
        });
    } else {
        const bool sig = o.scoring == MOE_SCORING_SIGMOID;
        lane_entries(l, kb, E, [&](int e, float v, float b) {
            float s = 0.0f;
            if (sig) score[e] = s = v != v ? 0.0f : sigmoid_f(v);
            key[e] = v != v || v == -INFINITY ? -INFINITY : raw_keys ? v : kb ? s + b : s;
        });
    }
    __syncwarp();

    if (ng) {
        /* group scores as grouped.c: best, or best + second with a bias.
         * L lanes per group (32 / ng rounded down to a power of two) each
         * take the group's best two of every L-th key, then merge them
         * (the best two of a union: the larger best, and the larger of the
         * smaller best and both seconds; the same values as one scan). */
        const int m = E / ng;
        int L = 1;
        while (2 * L * ng <= 32) L *= 2;
#pragma unroll 1
        for (int g0 = 0; g0 < ng; g0 += 32 / L) {
            const int gi = g0 + lane / L;
            float best = -INFINITY, second = -INFINITY;
            if (gi < ng) {
#pragma unroll 8
                for (int i = lane % L; i < m; i += L) {
                    const float v = key[gi * m + i];
                    if (v > best) { second = best; best = v; }
                    else if (v > second) second = v;
                }
            }
            for (int d = L / 2; d > 0; d /= 2) {
                const float ob = __shfl_xor_sync(0xffffffffu, best, d);
                const float os = __shfl_xor_sync(0xffffffffu, second, d);
                second = fmaxf(fminf(best, ob), fmaxf(second, os));
                best = fmaxf(best, ob);
            }
            if (gi < ng && lane % L == 0)
                gsc[gi] = (bias == nullptr || m == 1) ? best : best + second;
        }
        __syncwarp();
        // keep topk_group groups (taken groups marked NaN in gsc: kept)
#pragma unroll 1
        for (int r = 0; r < o.topk_group; r++) {
            uint32_t lc, bc;
            int      li;
            lane_best(gsc, ng, &lc, &li);
            const int g = warp_winner(lc, li, &bc);
            __syncwarp();
            if (lane == 0 && g != INT32_MAX) gsc[g] = NAN; // (none left: NaN scores)
            __syncwarp();
        }
        // exclude experts of groups not kept
#pragma unroll 4
        for (int e = lane; e < E; e += 32) {
            float gs = gsc[e / m];
            if (gs == gs) key[e] = NAN;
        }
        __syncwarp();
    }

    /* The selection and its weights stay in shared memory (sid, swt: k
     * each, after the group scores) until the final coalesced store: the
     * weight math never waits on global memory. */
    int32_t *sid = route_warp_ids(&o, key);
    float   *swt = (float *)(sid + k);
    /* k rounds of a warp argmax over each lane's best remaining entry; lane
     * l owns entries e = l (mod 32), so only the round's winner touches
     * shared memory (marks its entry taken, rescans its own entries): two
     * warp reductions per round instead of a scan of all E keys. */
    uint32_t lc;
    int      li;
    lane_best(key, E, &lc, &li);
#pragma unroll 1
    for (int j = 0; j < k; j++) {
        uint32_t bc;
        const int bi = warp_winner(lc, li, &bc);
        if (lane == 0) {
            sid[j] = bi;
            swt[j] = code_key(bc); // selected key, replaced by the weight below
        }
        if (bi == li && bi != INT32_MAX) { // this lane's entry won
            key[bi] = NAN;
            lane_best(key, E, &lc, &li);
        }
    }
    __syncwarp();
    /* The weights: element-wise steps by the lanes (slot j by lane j mod 32),
     * sums serial in slot order as router.c adds them (every lane reads the
     * k weights from shared memory and gets the same sum). */
    const float first = swt[0];
    const bool  masked_row = first == -INFINITY;
    bool        normalized;
    __syncwarp(); // every lane has read swt[0] before lane 0 rewrites it
    if (o.scoring == MOE_SCORING_SOFTMAX_TOPK) {
        normalized = true;
        if (!masked_row) {
            if (first == INFINITY) {
                float n_inf = 0.0f;
#pragma unroll 8
                for (int j = 0; j < k; j++) n_inf += swt[j] == INFINITY ? 1.0f : 0.0f;
                __syncwarp(); // every lane has read before any writes
#pragma unroll 1
                for (int j = lane; j < k; j += 32) swt[j] = swt[j] == INFINITY ? 1.0f / n_inf : 0.0f;
            } else {
#pragma unroll 1
                for (int j = lane; j < k; j += 32) swt[j] = expf(swt[j] - first);
                __syncwarp();
                const float sum = slot_sum(swt, k);
                __syncwarp();
#pragma unroll 1
                for (int j = lane; j < k; j += 32) swt[j] /= sum;
            }
        }
    } else if (o.scoring == MOE_SCORING_LLAMA4) {
        normalized = false;
#pragma unroll 1
        for (int j = lane; j < k; j += 32) swt[j] = sigmoid_f(swt[j]);
    } else {
        normalized = o.renormalize != 0;
#pragma unroll 1
        for (int j = lane; j < k; j += 32) swt[j] = score[sid[j]];
        if (normalized && !masked_row) {
            __syncwarp();
            float sum = slot_sum(swt, k);
            if (sum == 0.0f) sum = 1.0f;
            __syncwarp();
#pragma unroll 1
            for (int j = lane; j < k; j += 32) swt[j] /= sum;
        }
    }
    const float f = o.routed_scaling_factor == 0.0f ? 1.0f : o.routed_scaling_factor;
#pragma unroll 1
    for (int j = lane; j < k; j += 32) {
        if (masked_row) swt[j] = normalized ? 1.0f / (float)k : 0.0f;
        if (f != 1.0f) swt[j] *= f;
    }
    __syncwarp();
#pragma unroll 1
    for (int j = lane; j < k; j += 32) {
        id[j] = sid[j];
        wt[j] = swt[j];
    }
    __syncwarp();
}

#endif /* MOE_CUDA_ROUTE_CUH */
