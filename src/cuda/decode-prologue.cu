/*
 * decode-prologue.cu - the front of a decode forward in one launch: for a
 * small batch (T <= 16 tokens: DECODE_PROLOGUE_TOKENS, cuda.cu), one block
 * routes the tokens (a warp per token; route.cuh), then groups the slots by
 * expert and writes the tile table (align.cuh). A block of one warp per token, not
 * 1024 threads: at T = 1 the other 31 warps only waited at the barriers
 * (ncu: 83% of stalls, 12 us for the kernel). The launches of route.cu and align.cu, each a
 * few microseconds of mostly idle GPU at decode sizes, become one; up to 32
 * slots (1 token at k = 8) are grouped by one warp (align_one_warp). Same
 * numerics as those kernels: it runs their device code. (Converting x stays
 * in finalize.cu's prepare, many blocks wide, and is skipped when x already
 * has the weights' type.)
 */
#include "align.cuh"
#include "route.cuh"

#define PRO_THREADS ALIGN_THREADS   /* the most threads: a warp per token, 32 warps */

// ---- kernels

static __global__ void __launch_bounds__(PRO_THREADS)
    decode_prologue_kernel(const moe__prologue_args a) {
    extern __shared__ float psm[];
    const int warp = threadIdx.x >> 5;
    const int E = a.o.n_experts, k = a.o.top_k;
    pdl_launch(); // W13's CTAs may get resident now; they wait for this grid

    // routing: a warp per token
    if (a.route) {
        const size_t F = route_warp_floats(&a.o);
        float *key = psm + (size_t)warp * F;
#pragma unroll 1
        for (int64_t t = warp; t < a.T; t += blockDim.x / 32)
            route_token_warp(a.o, a.bias, a.logits + t * E, key, key + E, key + 2 * E,
                             a.ids + t * k, a.w + t * k);
    }
    __syncthreads(); // the routing's ids (global memory) are visible to the block
    if (align_fits_warp(a.T * k, a.T, a.BM)) {
        /* A slot's id from the shared memory of the warp that routed its
         * token (warp t routed token t: T <= 32 here), not from global
         * memory, which it has just been written to. */
        const int s = threadIdx.x & 31, n_slots = (int)(a.T * k);
        int32_t id = -1;
        if (warp == 0 && s < n_slots) {
            float *scratch = psm + (size_t)(s / k) * route_warp_floats(&a.o);
            id = a.route ? route_warp_ids(&a.o, scratch)[s % k] : a.ids[s];
        }
        if (warp == 0) align_one_warp(id, n_slots, a.map, a.n_global, a.n_local, a.ao, (int *)psm);
    } else {
        align_one_block(a.ids, a.T * k, a.map, a.n_global, a.n_local, a.BM, a.max_tiles, a.ao,
                        (int *)psm);
    }
    /* After a prepare launch this grid ran alongside it (it reads neither xq
     * nor xs); W13, which waits for this grid only, must find them done. */
    pdl_wait();
}

// ---- launchers

size_t moe__decode_prologue_smem(const moe_router_options *o, int32_t n_local) {
    size_t r = route_warp_floats(o) * sizeof(float) * (PRO_THREADS / 32);
    size_t al = align_smem(n_local);
    size_t s = r > al ? r : al;
    return s <= 200 * 1024 ? s : 0;
}

cudaError_t moe__decode_prologue_setup_cuda(size_t smem) {
    if (smem <= 48 * 1024) return cudaSuccess;
    return cudaFuncSetAttribute(decode_prologue_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)smem);
}

cudaError_t moe__decode_prologue_cuda(const moe__prologue_args *a, cudaStream_t st) {
    size_t smem = moe__decode_prologue_smem(&a->o, a->n_local);
    if (!smem) return cudaErrorInvalidValue;
    /* a warp per token, up to 32: a 1-token step is one warp, and nobody
     * waits at the block barriers for the one routing warp */
    const int warps = a->T < 1 ? 1 : a->T > PRO_THREADS / 32 ? PRO_THREADS / 32 : (int)a->T;
    cudaLaunchAttribute attr;
    // after a prepare launch: routing overlaps the quantization of x
    const cudaLaunchConfig_t cfg =
        launch_config(dim3(1), dim3(32 * warps), smem, st, a->after_prepare, &attr);
    cudaError_t e = cudaLaunchKernelEx(&cfg, decode_prologue_kernel, *a);
    return e != cudaSuccess ? e : cudaGetLastError();
}
