/*
 * grouped-gemm-bf16.cu - grouped GEMM of the contiguous layout with bf16 or
 * f16 weights and activations (tensor cores, fp32 accumulation), the
 * activation fused into the W13 epilogue and bias + routing weight into the
 * W2 epilogue. The kernel is the template of grouped-gemm.cuh; this file
 * picks the tile configuration per regime:
 *
 *   BM = 16  decode:  BN =  32, 2 warps (1 x 2), 8 stages: many small CTAs, so that
 *                     every SM streams weights and none is left with a long tail. BM =
 *                     32's wgmma tile on 16 rows (m64n16 steps) was 4-10% slower at 1
 *                     and 8 tokens (mixtral 199 -> 219 us at T = 1)
 *   BM = 32  decode of busier experts (an expert with 17..32 rows streams its weights
 *                     once, not twice): on wgmma (sm_90a) BN = 64, one warpgroup of
 *                     m64n32 steps with the weight rows as the A operand
 *                     (grouped-gemm.cuh), 6 stages, weights by TMA: mixtral T = 64
 *                     791 -> 694 us; on mma.sync BN = 32, 2 warps (1 x 2), 8 stages
 *   BM = 64  middle:  BN = 128, 4 stages: one warpgroup on wgmma (sm_90a), else 4
 *                     warps (2 x 2) on mma.sync. On wgmma, where the column tiles
 *                     are whole (moe__cuda_pick_bm), the persistent kernel below
 *                     with one consumer warpgroup and 5 stages replaces it up to 48
 *                     rows per expert, the 128-row tile from there
 *   BM = 128 prefill: BN = 256, 4 stages, on wgmma the persistent warp-specialized
 *                     kernel of grouped-gemm-ws.cuh (one CTA per SM: a producer
 *                     warpgroup and two consumer warpgroups of 64 x 256; an expert's
 *                     last tile with 64 rows or fewer runs on one of them); on
 *                     mma.sync BN = 128, 8 warps (2 x 4), 3 stages (two CTAs per SM).
 *                     64-row tiles in prefill (two or three CTAs per SM) were 11-29%
 *                     slower: the bigger tile reads fewer operand bytes per FLOP.
 *   BM = 256 prefill of experts with 384 rows or more on average, wgmma only: the
 *                     same kernel in two-CTA clusters, each CTA 128 rows of a 256-row
 *                     tile, the weight stage shared by TMA multicast.
 */
#include "backend.cuh"
#include "grouped-gemm-ws.cuh"

/* moe__cuda_prefill_kind decides whole column tiles by WS_TILE_N */
static_assert(WS_TILE_N == WS_BN, "backend.cuh's WS_TILE_N is the persistent tile's BN");

// ---- launchers

/* Every tile configuration, once; gemm16_launch picks one by index. */
template <int DT>
using bf16_tiles = gemm_tiles<gemm_tile<DT, 16, 32, 1, 2, 8, false>,    // 0 decode
                              gemm_tile<DT, 32, 32, 1, 2, 8, false>,    // 1 decode, busier
                              gemm_tile<DT, 64, 128, 4, 1, 4, true>,    // 2 middle, wgmma
                              gemm_tile<DT, 64, 128, 2, 2, 4, false>,   // 3 middle, mma.sync
                              gemm_ws_tile<DT, false>,                  // 4 prefill, wgmma
                              gemm_tile<DT, 128, 128, 2, 4, 3, false>,  // 5 prefill, mma.sync
                              gemm_tile<DT, 32, 64, 4, 1, 6, true>,     // 6 decode 32, wgmma
                              gemm_ws_tile<DT, true>,                   // 7 prefill, pairs
                              gemm_ws_tile<DT, false, 1>>;              // 8 middle, persistent

template <int DT> static cudaError_t gemm16_launch(const moe__gemm_args *g, cudaStream_t st) {
    using L = bf16_tiles<DT>;
    switch (g->BM) {
    case 16: return L::template launch<0>(g, st);
    case 32: return g->wgmma ? L::template launch<6>(g, st) : L::template launch<1>(g, st);
    case 64:
        if (!g->wgmma) return L::template launch<3>(g, st);
        return g->ws64 ? L::template launch<8>(g, st) : L::template launch<2>(g, st);
    case 128: return g->wgmma ? L::template launch<4>(g, st) : L::template launch<5>(g, st);
    case 256: return g->wgmma ? L::template launch<7>(g, st) : cudaErrorInvalidValue;
    default: return cudaErrorInvalidValue;
    }
}

// ---- backend entry

cudaError_t moe__grouped_gemm_bf16_cuda(const moe__gemm_args *g, cudaStream_t st) {
    if (g->dtype == MOE_CUDA_BF16) return gemm16_launch<MOE_CUDA_BF16>(g, st);
    if (g->dtype == MOE_CUDA_F16) return gemm16_launch<MOE_CUDA_F16>(g, st);
    return cudaErrorInvalidValue;
}

cudaError_t moe__grouped_gemm_bf16_setup_cuda(int *pair_ctas) {
    cudaError_t e = bf16_tiles<MOE_CUDA_BF16>::setup();
    if (e == cudaSuccess) e = bf16_tiles<MOE_CUDA_F16>::setup();
    if (e != cudaSuccess || !pair_ctas) return e;
    return ws_pair_ctas<MOE_CUDA_BF16>(pair_ctas);
}
