/*
 * grouped-gemm-fp8.cu - grouped GEMM of the contiguous layout with block-FP8
 * weights (MOE_FORMAT_FP8_BLOCK: e4m3fn, one f32 scale per 128 x 128 block)
 * and e4m3 activations with one dynamic f32 scale per row and group of 128
 * columns. Each 128-wide K block is accumulated by the tensor cores (m16n8k32
 * e4m3) then added to the fp32 accumulator times activation scale x weight
 * scale. In prefill the W13 epilogue quantizes its output (the activations
 * of W2) per row and 128-column group, so a W13 tile produces whole groups:
 * BN = 256 weight rows for gated activations (128 outputs), 128 for RELU2.
 * Decode tiles are narrow (BN = 32: enough CTAs to stream the few touched
 * experts at full bandwidth), so there W13 stores f32 rows and one small
 * prepare launch quantizes them (cuda.cu), with the same numerics.
 *
 *   BM = 16 decode:  BN = 32, 2 warps (1 x 2), 2 stages, W13 output f32 (BM = 32:
 *                    2 x 2 warps) (BN = 64 with 4
 *                    warps was measured 4-7% slower at T = 64: dev/cuda/NOTES.md v5;
 *                    2 stages instead of 8 fit several times the CTAs per SM, whose
 *                    warps hide each other's latency: qwen3 T=64 325 -> 215 us, v11)
 *   BM = 64 prefill: W13 BN = 256 / 128, W2 BN = 128; 8 warps (2 x 4)
 *
 * On sm_90a (g->wgmma) every fp8 tile runs on wgmma instead, decode included,
 * so that a row gets the same bits in either regime (wgmma's fp8 sums differ
 * from mma.sync's in their last bits; the tensor cores give an element the
 * same sum whatever the tile width):
 *
 *   BM = 16 decode:  BN = 64, one warpgroup of m64n64 steps on the 16 activation rows
 *                    padded to 64 with zero rows (the tile streams weights; the tensor
 *                    cores idle either way), 3 stages (BN 32 / 128, 2 / 4 stages were
 *                    slower: bench/results/2026-11-29-h200-cuda-fp8-wgmma.md)
 *   BM = 32 decode:  the same on 32 rows (busier experts: one tile for 17..32 rows)
 *   BM = 64 prefill: warpgroups of m64n128 steps: W13 gated BN = 256 on two, 4 stages;
 *                    W2 and RELU2 BN = 128 on one, 4 stages
 */
#include "grouped-gemm.cuh"

#define FP8 MOE_CUDA_FP8

// ---- launchers

static cudaError_t gemm8_launch(const moe__gemm_args *g, cudaStream_t st) {
    const bool relu2 = g->act == MOE_ACT_RELU2;
    switch (g->BM) {
    case 16:
        if (g->wgmma)
            return g->w13 ? gemm_launch<FP8, 16, 64, 4, 1, 3, true, true>(g, st)
                          : gemm_launch<FP8, 16, 64, 4, 1, 3, false, true>(g, st);
        return g->w13 ? gemm_launch<FP8, 16, 32, 1, 2, 2, true>(g, st)
                      : gemm_launch<FP8, 16, 32, 1, 2, 2, false>(g, st);
    case 32:
        if (g->wgmma)
            return g->w13 ? gemm_launch<FP8, 32, 64, 4, 1, 3, true, true>(g, st)
                          : gemm_launch<FP8, 32, 64, 4, 1, 3, false, true>(g, st);
        return g->w13 ? gemm_launch<FP8, 32, 32, 2, 2, 2, true>(g, st)
                      : gemm_launch<FP8, 32, 32, 2, 2, 2, false>(g, st);
    case 64:
        if (g->wgmma) {
            if (!g->w13) return gemm_launch<FP8, 64, 128, 4, 1, 4, false, true>(g, st);
            return relu2 ? gemm_launch<FP8, 64, 128, 4, 1, 4, true, true>(g, st)
                         : gemm_launch<FP8, 64, 256, 4, 2, 4, true, true>(g, st);
        }
        if (!g->w13) return gemm_launch<FP8, 64, 128, 2, 4, 4, false>(g, st);
        return relu2 ? gemm_launch<FP8, 64, 128, 2, 4, 4, true>(g, st)
                     : gemm_launch<FP8, 64, 256, 2, 4, 3, true>(g, st);
    default: return cudaErrorInvalidValue;
    }
}

// ---- backend entry

cudaError_t moe__grouped_gemm_fp8_cuda(const moe__gemm_args *g, cudaStream_t st) {
    if (g->dtype != MOE_CUDA_FP8) return cudaErrorInvalidValue;
    return gemm8_launch(g, st);
}

cudaError_t moe__grouped_gemm_fp8_setup_cuda(void) {
    cudaError_t e;
    if ((e = gemm_setup<FP8, 16, 32, 1, 2, 2, false>()) != cudaSuccess) return e;
    if ((e = gemm_setup<FP8, 16, 32, 1, 2, 2, true>()) != cudaSuccess) return e;
    if ((e = gemm_setup<FP8, 32, 32, 2, 2, 2, false>()) != cudaSuccess) return e;
    if ((e = gemm_setup<FP8, 32, 32, 2, 2, 2, true>()) != cudaSuccess) return e;
    if ((e = gemm_setup<FP8, 32, 64, 4, 1, 3, false, true>()) != cudaSuccess) return e;
    if ((e = gemm_setup<FP8, 32, 64, 4, 1, 3, true, true>()) != cudaSuccess) return e;
    if ((e = gemm_setup<FP8, 64, 128, 2, 4, 4, false>()) != cudaSuccess) return e;
    if ((e = gemm_setup<FP8, 64, 128, 2, 4, 4, true>()) != cudaSuccess) return e;
    if ((e = gemm_setup<FP8, 64, 256, 2, 4, 3, true>()) != cudaSuccess) return e;
    if ((e = gemm_setup<FP8, 16, 64, 4, 1, 3, false, true>()) != cudaSuccess) return e;
    if ((e = gemm_setup<FP8, 16, 64, 4, 1, 3, true, true>()) != cudaSuccess) return e;
    if ((e = gemm_setup<FP8, 64, 128, 4, 1, 4, false, true>()) != cudaSuccess) return e;
    if ((e = gemm_setup<FP8, 64, 128, 4, 1, 4, true, true>()) != cudaSuccess) return e;
    return gemm_setup<FP8, 64, 256, 4, 2, 4, true, true>();
}
