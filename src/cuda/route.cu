/*
 * route.cu - routing on the GPU: the router linear and every moe_scoring
 * variant, with the numerics of src/router/router.c so that the selected ids
 * are the CPU's, bit for bit, wherever the fp32 scores are.
 *
 *   logits (T, E) = x (T, H) . gate^T + gate_bias   one thread per (t, e), the
 *       CPU's summation order (8 interleaved partial sums, a fixed tree), no
 *       FMA contraction: bitwise the CPU's logits.
 *   ids, w (T, k) = route(logits)                    one warp per token.
 *
 * Per row (router.c): SOFTMAX key p = softmax(l) (+ bias); SIGMOID key
 * sigmoid(l) (+ bias); SOFTMAX_TOPK and LLAMA4 key l. A NaN or -inf logit
 * masks its expert: key -inf, score 0. Selection: k rounds of a warp argmax,
 * larger key wins, equal keys go to the lower index; a taken (or, grouped,
 * excluded) expert's key becomes NaN, which no real key is. Weights and their
 * sums are computed by lane 0 in slot order, as the CPU does. The scores
 * themselves use CUDA's expf (<= 2 ulp from glibc's), so weights agree to a
 * few ulp and ids agree except where two experts' scores tie to within that.
 */
#include "route.cuh"

// ---- kernels

/* The CPU's dot_fixed (src/router/logits.c): 8 lanes by d mod 8, then
 * ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7)); explicit _rn ops forbid FMA. */
static __global__ void router_logits_kernel(const void *x, int x_fmt, const float *W,
                                            const float *b, float *logits, int64_t T, int32_t E,
                                            int64_t H) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= T * E) return; // guard
    int64_t t = i / E;
    int32_t e = (int32_t)(i % E);
    const float *w = W + (int64_t)e * H;
    float acc[8] = { 0, 0, 0, 0, 0, 0, 0, 0 };
    int64_t d = 0;
    for (; d + 8 <= H; d += 8)
#pragma unroll
        for (int l = 0; l < 8; l++)
            acc[l] = __fadd_rn(acc[l], __fmul_rn(load_io(x, t * H + d + l, x_fmt), w[d + l]));
    for (int l = 0; d + l < H; l++)
        acc[l] = __fadd_rn(acc[l], __fmul_rn(load_io(x, t * H + d + l, x_fmt), w[d + l]));
    float v = __fadd_rn(__fadd_rn(__fadd_rn(acc[0], acc[1]), __fadd_rn(acc[2], acc[3])),
                        __fadd_rn(__fadd_rn(acc[4], acc[5]), __fadd_rn(acc[6], acc[7])));
    logits[i] = b ? __fadd_rn(v, b[e]) : v;
}

/* One warp per token; shared memory per warp: key (E), score (E), group
 * scores (n_group). */
static __global__ void route_kernel(const moe_router_options o, const float *bias,
                                    const float *logits, int64_t T, int32_t *ids, float *w) {
    extern __shared__ float rsm[];
    const int64_t t = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (t >= T) return; // guard (whole warps)
    float *key = rsm + (size_t)(threadIdx.x / 32) * route_warp_floats(&o);
    route_token_warp(o, bias, logits + t * o.n_experts, key, key + o.n_experts,
                     key + 2 * o.n_experts, ids + t * o.top_k, w + t * o.top_k);
}

// ---- launchers

cudaError_t moe__router_logits_cuda(const void *x, int x_fmt, const float *gate_w,
                                    const float *gate_b, float *logits, int64_t T, int32_t E,
                                    int64_t H, cudaStream_t st) {
    int64_t n = T * E;
    if (n == 0) return cudaSuccess;
    router_logits_kernel<<<(unsigned)((n + 127) / 128), 128, 0, st>>>(x, x_fmt, gate_w, gate_b,
                                                                     logits, T, E, H);
    return cudaGetLastError();
}

/* Warps per block so that the per-warp rows fit in 48 KiB of shared memory. */
static int route_warps(const moe_router_options *o) {
    size_t per = route_warp_floats(o) * sizeof(float);
    int w = (int)((48 * 1024) / per);
    return w < 1 ? 1 : w > 4 ? 4 : w;
}

cudaError_t moe__route_cuda(const moe_router_options *o, const float *bias, const float *logits,
                            int64_t T, int32_t *ids, float *w, cudaStream_t st) {
    if (T == 0) return cudaSuccess;
    int    warps = route_warps(o);
    size_t per   = route_warp_floats(o) * sizeof(float);
    route_kernel<<<(unsigned)((T + warps - 1) / warps), warps * 32, per * warps, st>>>(
        *o, bias, logits, T, ids, w);
    return cudaGetLastError();
}
