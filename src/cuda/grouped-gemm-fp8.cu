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
 *   BM = 16 decode:  BN = 64, one warpgroup of m64n16 steps with the weight rows as the
 *                    A operand (grouped-gemm.cuh), 4 stages; BN = 128 (two m64n16 steps
 *                    a K step) with 3 stages once that grid gives every SM four CTAs
 *                    (bench/results/2026-11-29-h200-cuda-tma.md measured it 2-8% faster
 *                    from 8 tokens on, 7-9% slower at 1 token, where its few CTAs leave
 *                    SMs idle, when these tiles padded the activation rows to 64). The
 *                    swap freed 48 activation rows of every stage: one stage more each
 *                    (deepseek-v3 T = 1 121 -> 116 us; qwen3-30b-a3b T = 64 183 -> 180,
 *                    T = 256 217 -> 208, T = 8 90 -> 92: 3 stages of the wide tile fit
 *                    4 CTAs per SM, 2 fit 6, and that grid is 816 CTAs)
 *   BM = 32 decode:  the same on 32 rows (busier experts: one tile for 17..32 rows)
 *   BM = 64 prefill: the persistent kernel of grouped-gemm-ws8.cuh (one CTA per SM looping
 *                    over 64 x 256 tiles, N split between two consumer warpgroups) for
 *                    W13 gated or SWIGLU_OAI with whole 128-column output tiles and W2
 *                    with whole 256-column tiles: qwen3-30b-a3b T=4096 998 -> 660 us,
 *                    T=16384 3694 -> 2363, deepseek-v3 T=16384 22599 -> 19707 against the
 *                    per-tile kernels below, which keep the other shapes:
 *                    warpgroups of m64n128 steps: W13 gated BN = 256 on two, 4 stages,
 *                    warp-specialized (a producer warpgroup fills the stages, so that
 *                    one consumer scales its partial sums while the other's wgmma runs:
 *                    qwen3-30b-a3b T=4096 1206 -> 1082 us, deepseek-v3 7639 -> 7111);
 *                    W2 from 64 rows per expert on average the same way, BN = 256 on two
 *                    warpgroups (qwen3-30b-a3b T=4096 1037 -> 996 us, T=16384 3821 ->
 *                    3653; deepseek-v3 T=4096 7267 -> 6990; at 32 rows, qwen3 T=512, it
 *                    was 1.4% slower: half-empty tiles, one CTA per SM where the memory-
 *                    bound regime wants two); below that, and RELU2's W13, BN = 128 on one,
 *                    4 stages (warp-specialized with its one consumer, W2 was slower:
 *                    qwen3 T=4096 1170 vs 1082 us)
 */
#include "grouped-gemm-ws8.cuh"

#define FP8 MOE_CUDA_FP8

// ---- launchers

/* Every tile configuration, once; gemm8_launch picks one by index. */
using fp8_tiles = gemm_tiles<gemm_tile<FP8, 16, 32, 1, 2, 2, false>,             // 0 decode
                             gemm_tile<FP8, 32, 32, 2, 2, 2, false>,             // 1 decode 32
                             gemm_tile<FP8, 64, 128, 2, 4, 4, false>,            // 2 W2, RELU2
                             gemm_tile<FP8, 64, 256, 2, 4, 3, false, GEMM_W13>,  // 3 gated W13
                             gemm_tile<FP8, 16, 64, 4, 1, 4, true>,              // 4 wgmma decode
                             gemm_tile<FP8, 32, 64, 4, 1, 4, true>,              // 5 decode 32
                             gemm_tile<FP8, 16, 128, 4, 1, 3, true>,             // 6 wide decode
                             gemm_tile<FP8, 32, 128, 4, 1, 3, true>,             // 7 wide 32
                             gemm_tile<FP8, 64, 128, 4, 1, 4, true>,             // 8 W2, RELU2
                             gemm_tile<FP8, 64, 256, 4, 2, 4, true, GEMM_W13, true>,  // 9 gated W13
                             gemm_tile<FP8, 64, 256, 4, 2, 4, true, GEMM_W2, true>,   // 10 W2
                             gemm_ws8_tile>;                                  // 11 persistent

static cudaError_t gemm8_launch(const moe__gemm_args *g, cudaStream_t st) {
    using L = fp8_tiles;
    const bool gated = g->w13 && g->act != MOE_ACT_RELU2; // 256 weight rows: gate and up
    if (g->BM == 64) {
        if (!g->wgmma) return gated ? L::launch<3>(g, st) : L::launch<2>(g, st);
        if (ws8_fits(g)) return L::launch<11>(g, st);
        if (gated) return L::launch<9>(g, st);
        return !g->w13 && g->wide_w2 ? L::launch<10>(g, st) : L::launch<8>(g, st);
    }
    if (g->BM != 16 && g->BM != 32) return cudaErrorInvalidValue;
    const bool b16 = g->BM == 16;
    if (!g->wgmma) return b16 ? L::launch<0>(g, st) : L::launch<1>(g, st);
    /* Wide decode tiles once they give every SM four CTAs (counting the
     * table's every tile; those past the real count end at once). */
    const int     outw = gemm_out_cols(g->act, g->w13, 128);
    const int64_t wide_ctas = g->max_tiles * ((g->N_out + outw - 1) / outw);
    if (wide_ctas >= 4 * (int64_t)g->n_sm) return b16 ? L::launch<6>(g, st) : L::launch<7>(g, st);
    return b16 ? L::launch<4>(g, st) : L::launch<5>(g, st);
}

// ---- backend entry

cudaError_t moe__grouped_gemm_fp8_cuda(const moe__gemm_args *g, cudaStream_t st) {
    if (g->dtype != MOE_CUDA_FP8) return cudaErrorInvalidValue;
    return gemm8_launch(g, st);
}

cudaError_t moe__grouped_gemm_fp8_setup_cuda(void) { return fp8_tiles::setup(); }
