/*
 * grouped-gemm-bf16.cu - grouped GEMM of the contiguous layout with bf16 or
 * f16 weights and activations (tensor cores, fp32 accumulation), the
 * activation fused into the W13 epilogue and bias + routing weight into the
 * W2 epilogue. The kernel is the template of grouped-gemm.cuh; this file
 * picks the tile configuration per regime:
 *
 *   BM = 16  decode:  BN =  32, 2 warps (1 x 2), 8 stages: many small CTAs, so that
 *                     every SM streams weights and none is left with a long tail
 *   BM = 32  decode of busier experts: BN = 32, 2 warps (1 x 2), 8 stages (an
 *                     expert with 17..32 rows streams its weights once, not twice)
 *   BM = 64  middle:  BN = 128, 4 warps (2 x 2), 4 stages
 *   BM = 128 prefill: BN = 128, 8 warps (2 x 4), 3 stages (two CTAs per SM)
 */
#include "grouped-gemm.cuh"

// ---- launchers

template <int DT> static cudaError_t gemm16_launch(const moe__gemm_args *g, cudaStream_t st) {
    switch (g->BM) {
    case 16:
        return g->w13 ? gemm_launch<DT, 16, 32, 1, 2, 8, true>(g, st)
                      : gemm_launch<DT, 16, 32, 1, 2, 8, false>(g, st);
    case 32:
        return g->w13 ? gemm_launch<DT, 32, 32, 1, 2, 8, true>(g, st)
                      : gemm_launch<DT, 32, 32, 1, 2, 8, false>(g, st);
    case 64:
        if (g->wgmma)
            return g->w13 ? gemm_launch<DT, 64, 128, 4, 1, 4, true, true>(g, st)
                          : gemm_launch<DT, 64, 128, 4, 1, 4, false, true>(g, st);
        return g->w13 ? gemm_launch<DT, 64, 128, 2, 2, 4, true>(g, st)
                      : gemm_launch<DT, 64, 128, 2, 2, 4, false>(g, st);
    case 128:
        if (g->wgmma)
            return g->w13 ? gemm_launch<DT, 128, 256, 8, 2, 4, true, true>(g, st)
                          : gemm_launch<DT, 128, 256, 8, 2, 4, false, true>(g, st);
        return g->w13 ? gemm_launch<DT, 128, 128, 2, 4, 3, true>(g, st)
                      : gemm_launch<DT, 128, 128, 2, 4, 3, false>(g, st);
    default: return cudaErrorInvalidValue;
    }
}

template <int DT> static cudaError_t gemm16_setup(void) {
    cudaError_t e;
    if ((e = gemm_setup<DT, 16, 32, 1, 2, 8, true>()) != cudaSuccess) return e;
    if ((e = gemm_setup<DT, 16, 32, 1, 2, 8, false>()) != cudaSuccess) return e;
    if ((e = gemm_setup<DT, 32, 32, 1, 2, 8, true>()) != cudaSuccess) return e;
    if ((e = gemm_setup<DT, 32, 32, 1, 2, 8, false>()) != cudaSuccess) return e;
    if ((e = gemm_setup<DT, 64, 128, 2, 2, 4, true>()) != cudaSuccess) return e;
    if ((e = gemm_setup<DT, 64, 128, 2, 2, 4, false>()) != cudaSuccess) return e;
    if ((e = gemm_setup<DT, 128, 128, 2, 4, 3, true>()) != cudaSuccess) return e;
    if ((e = gemm_setup<DT, 128, 128, 2, 4, 3, false>()) != cudaSuccess) return e;
    if ((e = gemm_setup<DT, 64, 128, 4, 1, 4, true, true>()) != cudaSuccess) return e;
    if ((e = gemm_setup<DT, 64, 128, 4, 1, 4, false, true>()) != cudaSuccess) return e;
    if ((e = gemm_setup<DT, 128, 256, 8, 2, 4, true, true>()) != cudaSuccess) return e;
    return gemm_setup<DT, 128, 256, 8, 2, 4, false, true>();
}

// ---- backend entry

cudaError_t moe__grouped_gemm_bf16_cuda(const moe__gemm_args *g, cudaStream_t st) {
    if (g->dtype == MOE_CUDA_BF16) return gemm16_launch<MOE_CUDA_BF16>(g, st);
    if (g->dtype == MOE_CUDA_F16) return gemm16_launch<MOE_CUDA_F16>(g, st);
    return cudaErrorInvalidValue;
}

cudaError_t moe__grouped_gemm_bf16_setup_cuda(void) {
    cudaError_t e = gemm16_setup<MOE_CUDA_BF16>();
    return e != cudaSuccess ? e : gemm16_setup<MOE_CUDA_F16>();
}
