/*
 * grouped-gemm.cuh - the grouped GEMM kernel template behind
 * grouped-gemm-bf16.cu and grouped-gemm-fp8.cu.
 *
 * One CTA computes a BM x BN tile of one expert: BM rows of the contiguous
 * layout (all of one expert, taken from the tile table that align.cu built)
 * times BN weight rows, over the whole K. Operands stream through a
 * STAGES-deep cp.async pipeline of 128-byte K slices (64 bf16/f16 or 128
 * e4m3 values: exactly one scale block for fp8) into XOR-swizzled shared
 * memory; warps issue ldmatrix + mma.sync (m16n8k16 bf16/f16, m16n8k32
 * e4m3). fp8 folds each 128-wide K block into the fp32 accumulator with its
 * activation-row scale and weight-block scale.
 *
 * Weight rows of a W13 tile are picked so that the epilogue sees gate and up
 * of the same output column: [gate n0.., up d_ff + n0..] (SILU, GELU,
 * GELU_TANH), consecutive interleaved pairs (SWIGLU_OAI), or plain rows
 * (RELU2, W2). The accumulator tile goes through shared memory so that the
 * epilogue is row-wise: activation and the fp8 group-128 quantization of the
 * output rows (the activations of W2) in one place, coalesced stores.
 *
 * Regimes: BM = 16 and 32 are decode tiles (few rows per expert: each touched
 * weight row is streamed once, a deep pipeline keeps bytes in flight, no
 * weight bytes are wasted on padding rows); BM = 64 / 128 are prefill tiles.
 *
 * Inner loop: mma.sync (any sm_90 build), or with WG Hopper's wgmma
 * (wgmma.cuh): warpgroups of 64 rows x TN columns (WM / 4 along M, WN
 * along N) read the same swizzled stages through shared-memory descriptors;
 * the stages' base is then aligned to 1024 bytes (the swizzle is on address
 * bits). A wgmma decode tile (BM = 16 or 32) swaps the operands: its
 * weight rows are wgmma's A (64 rows a step) and its BM activation rows the
 * B (N = BM), so that no tensor-core work goes to padding rows. The wgmma
 * tiles take their weight stages by TMA (tma.cuh): thread 0 issues BN / 32
 * bulk copies a stage, which land in the same swizzled layout, and every
 * thread waits on the stage's mbarrier; the activation side stays on
 * cp.async (W13 gathers its rows by token).
 *
 * The warp-specialized fp8 prefill tile of gated W13 and (64+ rows per
 * expert) W2 (WS): two consumer warpgroups only issue wgmma and scale their
 * partial sums (one scales while the other's batch runs), and one more
 * warpgroup, the producer, fills the stages: its thread 0 by TMA (B), all
 * 128 threads by cp.async (A), each announcing its copies' landing on the
 * stage's "full" mbarrier; each consumer thread releases a stage on its
 * "empty" mbarrier once it has scaled the batch that read it. Nothing waits
 * at a CTA-wide barrier inside the K loop. (The bf16/f16 prefill tile is a
 * persistent form of the same scheme: grouped-gemm-ws.cuh.)
 */
#ifndef MOE_CUDA_GROUPED_GEMM_CUH
#define MOE_CUDA_GROUPED_GEMM_CUH

#include "common.cuh"
#include "tma.cuh"

#include <tuple>

// ---- device helpers

/* Tiles along M handled by consecutive CTAs before moving along N: a wave of
 * CTAs shares GROUP_M activation tiles and about 132 / GROUP_M weight tiles,
 * all in L2, instead of streaming every weight tile once per M tile. */
#define GEMM_GROUP_M 8

/* Tile number lin (a CTA's, or a persistent CTA's step) -> M tile m (of
 * n_m) and N tile n (of grid_n), grouped along M. */
static __device__ __forceinline__ void gemm_tile_at(int lin, int n_m, int grid_n, int &m, int &n) {
    const int per_group = GEMM_GROUP_M * grid_n, first_m = lin / per_group * GEMM_GROUP_M;
    const int gm = min(GEMM_GROUP_M, n_m - first_m), in_group = lin % per_group;
    m = first_m + in_group % gm;
    n = in_group / gm;
}

/* Slot of layout row r: the row of W2's output, the index of W13's
 * per-slot input scale (and, divided by a_div, the token W13 gathers). */
static __device__ __forceinline__ int gemm_row_slot(const moe__gemm_args &g, int r) {
    return g.row_slot ? g.row_slot[r] : r;
}

/* M tile m (BM layout rows per tile table entry) -> its expert and first
 * layout row: the tile table's entry. */
static __device__ __forceinline__ void gemm_tile_start(const moe__gemm_args &g, int m, int BM,
                                                       int &e, int &r0) {
    e  = g.tiles ? g.tiles[2 * m] : 0;
    r0 = g.tiles ? g.tiles[2 * m + 1] : m * BM;
}
/* The end of expert e's layout rows (a read that depends on the entry's). */
static __device__ __forceinline__ int gemm_expert_end(const moe__gemm_args &g, int e) {
    return g.tiles ? g.expert_start[e + 1] : (int)g.n_rows;
}
/* M tile m -> its expert and layout rows [r0, r1) (at most BM). */
static __device__ __forceinline__ void gemm_tile_rows(const moe__gemm_args &g, int m, int BM,
                                                      int &e, int &r0, int &r1) {
    gemm_tile_start(g, m, BM, e, r0);
    r1 = min(gemm_expert_end(g, e), r0 + BM);
}

/* Output columns one W13 CTA produces from its BN weight rows. */
static __host__ __device__ __forceinline__ int gemm_out_cols(int act, int w13, int BN) {
    return (w13 && act != MOE_ACT_RELU2) ? BN / 2 : BN;
}

/* Operand stages (aliased by the f32 accumulator tile in the epilogue). */
template <int BM, int BN, int STAGES>
static __host__ __device__ constexpr size_t gemm_pipe_bytes() {
    return (size_t)STAGES * (BM + BN) * 128 > (size_t)BM * (BN + 4) * 4
               ? (size_t)STAGES * (BM + BN) * 128
               : (size_t)BM * (BN + 4) * 4;
}
/* + fp8 scale stages (BM + BN floats each) + the row and column tables
 * (+ for wgmma: room to align the stages to 1024 bytes, and a TMA mbarrier
 * per stage, 8-byte aligned). */
template <int BM, int BN, int STAGES, bool WG, bool WS = false>
static __host__ __device__ constexpr size_t gemm_smem_bytes() {
    return gemm_pipe_bytes<BM, BN, STAGES>() + (size_t)STAGES * (BM + BN) * 4 +
           (size_t)(2 * BM + BN) * 4 + (WG ? 1024 + 8 + (size_t)STAGES * 8 : 0) +
           (WS ? (size_t)STAGES * 8 : 0); // + WS: the stages' "empty" mbarriers
}

/* Threads of a CTA: the WM x WN compute warps, + a producer warpgroup (WS). */
template <int WM, int WN, bool WS> static __host__ __device__ constexpr int gemm_threads() {
    return WM * WN * 32 + (WS ? 128 : 0);
}

/* 4-byte async copy (scales); src_bytes = 0 fills zeros. */
static __device__ __forceinline__ void cp_async4(uint32_t dst, const void *src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src),
                 "r"(src_bytes));
}

// ---- kernels

template <int DT, int BM, int BN, int WM, int WN, int STAGES, bool W13, bool WG, bool WS>
static __global__ void __launch_bounds__(gemm_threads<WM, WN, WS>())
    grouped_gemm_kernel(const __grid_constant__ moe__gemm_args g) {
    constexpr int NTHR  = gemm_threads<WM, WN, WS>();
    constexpr int NCONS = WM * WN * 32;    // threads that compute (all but WS's producer)
    constexpr int PTHR  = WS ? 128 : NTHR; // threads that issue the copies
    /* SWAP: a wgmma decode tile (BM = 16 or 32) with the operands swapped.
     * wgmma's A operand has 64 rows, so the BN weight rows are A (BN / 64
     * steps of m64) and the BM activation rows B (N = BM): no tensor-core
     * work, accumulator register or fp8 scaling goes to padding rows (with
     * the activation rows as A, 48 of 64 rows were zeros at BM = 16, and
     * one warp of four scaled every partial sum). A warp's accumulators
     * then hold weight rows (tile columns) by tile rows: acc[mt][nt][q] is
     * column 64 mt + 16 warp + lane / 4 (+ 8 for q >= 2), row 8 nt +
     * 2 (lane % 4) + q % 2. One warpgroup; the sums are the tensor cores'
     * as in the other tiles (a product and its K sum do not depend on
     * which operand is which: the EP bitwise tests mix both regimes). */
    constexpr bool SWAP = WG && BM < 64;
    constexpr int TM = SWAP ? 64 : BM / WM, TN = SWAP ? BM : BN / WN;
    constexpr int MT = SWAP ? BN / 64 : TM / 16, NTL = TN / 8;
    constexpr int LDC = BN + 4;
    constexpr size_t PIPE = gemm_pipe_bytes<BM, BN, STAGES>();
    constexpr bool TMA = WG; // the weight stages by TMA (tma.cuh)
    static_assert(MT >= 1 && NTL % 2 == 0, "warp tile");
    static_assert(!WG || SWAP || (TM == 16 && (TN == 128 || TN == 64 || TN == 32) && WM % 4 == 0),
                  "wgmma tile");
    static_assert(!SWAP || (WM * WN == 4 && BN % 64 == 0 && !WS), "swapped decode tile");
    /* WS: the fp8 prefill tiles of gated W13 and of W2, one 64-row warpgroup
     * row (the bf16/f16 prefill tile is grouped-gemm-ws.cuh's persistent
     * kernel) */
    static_assert(!WS || (WG && BM == 64 && WM == 4 && DT == MOE_CUDA_FP8), "WS tile");
    /* fp8 on wgmma: its sums differ in their last bits from mma.sync's, so
     * a build uses wgmma for every fp8 tile, decode included (a row's
     * result must not depend on the regime its batch picked: expert
     * parallelism promises the bits of one device). */
    extern __shared__ __align__(128) char smem_raw[];
    char *smem = smem_raw + (WG ? (1024 - (smem_u32(smem_raw) & 1023)) & 1023 : 0);
    char  *sA    = smem;
    char  *sB    = smem + (size_t)STAGES * BM * 128;
    float *sAs   = (float *)(smem + PIPE);      // (STAGES, BM + BN) fp8 scales
    // per stage: BM activation-row scales, then BN weight-column scales (fp8)
    int   *a_src = (int *)(sAs + STAGES * (BM + BN)); // (BM) A row of each tile row, -1 = padding
    int   *b_src = a_src + BM;                  // (BN) weight row of each tile column, -1 = none
    int   *slot  = b_src + BN;                  // (BM) slot (row_slot) of each tile row
    // wgmma: the stages' TMA ("full") mbarriers (STAGES), 8-byte aligned; WS:
    // then the "empty" ones (STAGES)
    const uint32_t bar0 = (smem_u32(slot + BM) + 7) & ~7u, empty0 = bar0 + 8 * STAGES;

    /* Programmatic dependent launch (cuda.cu launches with it): W13 reads
     * its predecessors' outputs from the start, so it waits first; W2 only
     * reads the grouping (two launches back, complete) before its wait, so
     * it streams its first weight stages while W13 finishes. Both let their
     * successor launch once they run. No-ops without the launch attribute. */
    if (W13) {
        pdl_wait();
        pdl_launch();
    }

    // CTA -> (M tile, N tile) -> expert and rows; the grid is sized for the
    // most tiles the layout can have
    int tile, n_tile, e, r0, r1;
    gemm_tile_at((int)blockIdx.x, (int)g.max_tiles, g.grid_n, tile, n_tile);
    if (g.tiles ? tile >= *g.n_tiles : (int64_t)tile * BM >= g.n_rows) return;
    gemm_tile_rows(g, tile, BM, e, r0, r1);
    const bool gated = W13 && act_is_gated(g.act);
    const bool inter = W13 && g.act == MOE_ACT_SWIGLU_OAI;
    const int  half  = BN / 2;
    const int64_t n0 = (int64_t)n_tile * gemm_out_cols(g.act, W13, BN);

    for (int i = threadIdx.x; i < BM; i += NTHR) {
        int r = r0 + i;
        int s = -1, src = -1;
        if (r < r1) {
            s   = gemm_row_slot(g, r);
            src = g.gather ? s / g.a_div : r;
        }
        a_src[i] = src;
        slot[i]  = s;
    }
    for (int c = threadIdx.x; c < BN; c += NTHR) {
        int64_t wr;
        bool ok;
        if (gated) {
            int j = c % half;
            ok = n0 + j < g.N_out;
            wr = (c < half ? 0 : g.N_out) + n0 + j;
        } else if (inter) {
            wr = 2 * n0 + c;
            ok = wr < g.N_w;
        } else {
            wr = n0 + c;
            ok = wr < g.N_out;
        }
        b_src[c] = ok ? (int)wr : -1;
    }
    if (TMA && threadIdx.x == 0) {
        /* WS: a stage is full after the producer's 128 cp.async arrivals and
         * thread 0's TMA arrival; empty after one arrival per compute thread */
        for (int s = 0; s < STAGES; s++) {
            mbar_init(bar0 + 8 * s, WS ? PTHR + 1 : 1);
            if (WS) mbar_init(empty0 + 8 * s, NCONS);
        }
        mbar_init_fence();
    }
    __syncthreads();

    const int64_t esz    = DT == MOE_CUDA_FP8 ? 1 : 2;
    const int64_t kbytes = g.K * esz;
    const int     KT     = (int)((kbytes + 127) / 128);
    const char   *A      = (const char *)g.a;
    const char   *W      = (const char *)g.w + (int64_t)e * g.N_w * kbytes;

    const int64_t kblocks = (g.K + MOE_CUDA_QBLOCK - 1) / MOE_CUDA_QBLOCK;
    const int64_t nblk    = (g.N_w + MOE_CUDA_QBLOCK - 1) / MOE_CUDA_QBLOCK;
    /* Each thread copies CH fixed 16-byte columns (chunk ch of CH rows) of
     * every stage (the activation rows, and the weight rows unless TMA
     * brings them), and for fp8 the scales of up to SA activation rows and
     * SB weight columns: their addresses are computed once here (the fp8
     * tiles are bound by issued instructions: the index math of a scale,
     * redone per stage, cost ~20 instructions a copy). A chunk without a
     * source (padding row, past N, the K tail) copies zero bytes. */
    constexpr bool F8 = DT == MOE_CUDA_FP8;
    constexpr int CA = BM * 8 / PTHR, CH = CA + (TMA ? 0 : BN * 8 / PTHR);
    constexpr int SA = F8 ? (BM + PTHR - 1) / PTHR : 0, SB = F8 ? (BN + PTHR - 1) / PTHR : 0;
    static_assert((BM * 8) % PTHR == 0 && (BN * 8) % PTHR == 0, "chunk split");
    static_assert(SA + SB <= 32, "one validity bit per scale copy");
    static_assert(!TMA || BN % (2 * TMA_BOX_ROWS) == 0, "whole TMA boxes per gated half");
    const int ct = threadIdx.x % PTHR; // copier index (WS: within the producer warpgroup)
    const int ch = ct & 7;
    const char  *src_p[CH];
    uint32_t     dst_o[CH];
    const float *scale_p[SA + SB + 1];
    uint32_t     scale_ok = 0; // bit j: scale copy j has a source
#pragma unroll
    for (int j = 0; j < CH; j++) {
        const bool isA = j < CA;
        const int  r   = (ct >> 3) + (isA ? j : j - CA) * (PTHR / 8);
        const int  src = isA ? a_src[r] : b_src[r];
        src_p[j] = src >= 0 ? (isA ? A : W) + (int64_t)src * kbytes + ch * 16 : nullptr;
        dst_o[j] = smem_u32(isA ? sA : sB) + r * 128 + ((ch ^ (r & 7)) << 4);
    }
#pragma unroll
    for (int j = 0; j < SA + SB; j++) {
        const bool isA = j < SA;
        const int  i   = ct + (isA ? j : j - SA) * PTHR;
        const int  src = isA ? (i < BM ? a_src[i] : -1) : (i < BN ? b_src[i] : -1);
        if (isA)
            scale_p[j] = g.a_scale + (src >= 0 ? (int64_t)src * kblocks : 0);
        else
            scale_p[j] = g.w_scale +
                         (src >= 0 ? ((int64_t)e * nblk + src / MOE_CUDA_QBLOCK) * kblocks : 0);
        scale_ok |= (src >= 0 ? 1u : 0u) << j;
    }
    /* One stage: operand chunks and fp8 scales, the weight side (B) and the
     * activation side (A) separately (W2 issues B before its PDL wait). The
     * scale slots of a stage: BM activation rows, then BN weight columns.
     * wgmma: thread 0 brings B's rows by TMA, BN / TMA_BOX_ROWS boxes (a
     * gated W13 tile: half from the gate half of the map, half from up). */
    auto load_side = [&](int kt, int st, bool isA) {
        const int64_t kb  = (int64_t)kt * 128;
        if (TMA && !isA && threadIdx.x == NTHR - PTHR) {
            const uint32_t bar = bar0 + 8 * st, dst = smem_u32(sB + (size_t)st * BN * 128);
            constexpr int BOXES = BN / TMA_BOX_ROWS;
            mbar_expect_bytes(bar, BN * 128);
#pragma unroll
            for (int b = 0; b < BOXES; b++) {
                const int h = gated && b >= BOXES / 2;
                const int r = (int)(inter ? 2 * n0 : n0) + (b - h * BOXES / 2) * TMA_BOX_ROWS;
                tma_load_4d(dst + b * TMA_BOX_ROWS * 128, &g.w_map, bar, (int)kb, r, h, e);
            }
        }
        const bool    kok = kb + ch * 16 < kbytes;
#pragma unroll
        for (int j = isA ? 0 : CA; j < (isA ? CA : CH); j++) {
            const bool ok = kok && src_p[j] != nullptr;
            cp_async16(dst_o[j] + (uint32_t)st * (j < CA ? BM : BN) * 128,
                       ok ? src_p[j] + kb : (isA ? A : W), ok ? 16 : 0);
        }
#pragma unroll
        for (int j = isA ? 0 : SA; j < (isA ? SA : SA + SB); j++) {
            const int i = ct + (j < SA ? j : j - SA) * PTHR;
            if (i < (j < SA ? BM : BN))
                cp_async4(smem_u32(sAs + st * (BM + BN) + (j < SA ? 0 : BM) + i), scale_p[j] + kt,
                          (scale_ok >> j) & 1 ? 4 : 0);
        }
    };
    auto load_B = [&](int kt, int st) { load_side(kt, st, false); };
    auto load_A = [&](int kt, int st) { load_side(kt, st, true); };

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    /* WS: whether this is the producer warpgroup, known warp-uniform to the
     * compiler (a shuffle from lane 0): ptxas serializes every wgmma when
     * wgmma or its accumulators sit on a path that may diverge in a warp */
    const bool producer = WS && __shfl_sync(0xffffffffu, (int)threadIdx.x / 128, 0) >= NCONS / 128;
    /* The warp's 16-row group (wm) and TN-column group (wn). wgmma: warpgroup
     * warp / 4 computes rows 64 (wm / 4) .. + 63 and columns 128 wn .. + 127,
     * its 4 warps holding 16 rows each, as the mma.sync tiles would. */
    const int wm = WG ? (warp / 4) / WN * 4 + warp % 4 : warp / WN;
    const int wn = WG ? (warp / 4) % WN : warp % WN;
    /* fp8: whether this warp's TN columns all have a weight row in one
     * 128-row scale block (b_src is complete: the barrier above). */
    bool one_block = false;
    if (F8 && !SWAP) {
        const int blk = b_src[wn * TN] / MOE_CUDA_QBLOCK;
        bool      ok  = true;
        for (int c = lane; c < TN; c += 32) {
            const int src = b_src[wn * TN + c];
            ok = ok && src >= 0 && src / MOE_CUDA_QBLOCK == blk;
        }
        one_block = __all_sync(0xffffffffu, ok);
    }
    float acc[MT][NTL][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NTL; j++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[i][j][q] = 0.0f;

    constexpr int PT = F8 ? MT : 1, PN = F8 ? NTL : 1; // fp8: the stage's partial tile
    /* acc += part x (activation-row scale x weight-block scale), the
     * product rounded once, so that a warp whose columns all read one
     * weight block (every prefill tile of a model whose N is a multiple
     * of 128) forms it once per row, not per element: the same bits
     * with 64 fewer multiplies and one scale load instead of 16 a
     * stage (the fp8 tiles are bound by issued instructions). SWAP: each
     * element its own product, the same bits (one rounding either way). */
    auto fold = [&](const float (&part)[PT][PN][4], int st) {
        const float *ss = sAs + st * (BM + BN); // this stage's scales
        if constexpr (F8 && SWAP) {
            float sw[PT][2], sr[PN][2]; // weight-row scales, activation-row scales
#pragma unroll
            for (int mt = 0; mt < PT; mt++)
#pragma unroll
                for (int h = 0; h < 2; h++)
                    sw[mt][h] = ss[BM + mt * 64 + warp * 16 + (lane >> 2) + 8 * h];
#pragma unroll
            for (int nt = 0; nt < PN; nt++)
#pragma unroll
                for (int c = 0; c < 2; c++) sr[nt][c] = ss[nt * 8 + (lane & 3) * 2 + c];
#pragma unroll
            for (int mt = 0; mt < PT; mt++)
#pragma unroll
                for (int nt = 0; nt < PN; nt++)
#pragma unroll
                    for (int q = 0; q < 4; q++)
                        acc[mt][nt][q] =
                            __fmaf_rn(part[mt][nt][q], __fmul_rn(sr[nt][q & 1], sw[mt][q >> 1]),
                                      acc[mt][nt][q]);
        } else if constexpr (F8) {
            float sa[PT][2];
#pragma unroll
            for (int mt = 0; mt < PT; mt++)
#pragma unroll
                for (int h = 0; h < 2; h++) sa[mt][h] = ss[wm * TM + mt * 16 + (lane >> 2) + 8 * h];
            if (one_block) {
                const float sw = ss[BM + wn * TN];
#pragma unroll
                for (int mt = 0; mt < PT; mt++) {
                    const float s0 = __fmul_rn(sa[mt][0], sw), s1 = __fmul_rn(sa[mt][1], sw);
#pragma unroll
                    for (int nt = 0; nt < PN; nt++)
#pragma unroll
                        for (int q = 0; q < 4; q++)
                            acc[mt][nt][q] =
                                __fmaf_rn(part[mt][nt][q], q >> 1 ? s1 : s0, acc[mt][nt][q]);
                }
            } else {
#pragma unroll
                for (int nt = 0; nt < PN; nt++) {
                    const int   c   = BM + wn * TN + nt * 8 + (lane & 3) * 2;
                    const float sw0 = ss[c], sw1 = ss[c + 1];
#pragma unroll
                    for (int mt = 0; mt < PT; mt++)
#pragma unroll
                        for (int q = 0; q < 4; q++)
                            acc[mt][nt][q] = __fmaf_rn(
                                part[mt][nt][q], __fmul_rn(sa[mt][q >> 1], q & 1 ? sw1 : sw0),
                                acc[mt][nt][q]);
                }
            }
        }
    };

    if constexpr (WS) {
        if (!W13) { // (W2 reads W13's output from its first stage)
            pdl_wait();
            pdl_launch();
        }
        if (producer) {
            // the producer: a stage's copies once its consumers released it
            for (int kt = 0; kt < KT; kt++) {
                const int st = kt % STAGES;
                if (kt >= STAGES) mbar_wait(empty0 + 8 * st, (uint32_t)(kt / STAGES - 1) & 1);
                load_B(kt, st);
                load_A(kt, st);
                cp_async_arrive_noinc(bar0 + 8 * st);
            }
        } else {
            /* the consumers: each waits for its batch and scales it while the
             * other warpgroup's batch runs, then releases the stage */
            const uint32_t b_off = (uint32_t)wn * TN * 128;
            for (int kt = 0; kt < KT; kt++) {
                const int st = kt % STAGES;
                mbar_wait(bar0 + 8 * st, (uint32_t)(kt / STAGES) & 1);
                fence_proxy_async(); // the producer's cp.async bytes, for wgmma's reads
                const uint32_t a_wg = smem_u32(sA + (size_t)st * BM * 128);
                const uint32_t b_wg = smem_u32(sB + (size_t)st * BN * 128) + b_off;
                float          part[PT][PN][4];
                wgmma_fence();
#pragma unroll
                for (int ks = 0; ks < 4; ks++) {
                    const uint64_t da = wgmma_desc(a_wg + ks * 32);
                    const uint64_t db = wgmma_desc(b_wg + ks * 32);
                    if (ks == 0)
                        wgmma_step<DT, TN, false>(&part[0][0][0], da, db); // part = A . B
                    else
                        wgmma_step<DT, TN, true>(&part[0][0][0], da, db);
                }
                wgmma_commit();
                wgmma_wait<0>();
                fold(part, st);
                /* every consumer thread releases its own reads of the
                 * stage's scales (an arrive releases only the arriving
                 * thread's accesses; with lane 0 arriving after a
                 * __syncwarp, racecheck reported the next copies into
                 * the stage as racing with these reads) */
                mbar_arrive(empty0 + 8 * st);
            }
        }
    } else {
        /* Stages loaded ahead of the one computed. mma.sync and fp8 wgmma: all
         * but one (the computed stage is done when the barrier after it passes).
         * bf16/f16 wgmma: one fewer, because a warpgroup's batch of stage kt may
         * still run while it issues kt + 1 (wait_group 1); stage kt - 2 is free
         * at barrier kt. fp8 waits for each batch: its sums are scaled at once. */
        constexpr bool WG_ASYNC = WG && !F8;
        constexpr int  AHEAD = WG_ASYNC ? STAGES - 2 : STAGES - 1;
        static_assert(AHEAD >= 1, "stages");
        // prologue: B of the first stages (W2: before the wait), then A
#pragma unroll
        for (int s = 0; s < AHEAD; s++)
            if (s < KT) load_B(s, s);
        if (!W13) {
            pdl_wait();
            pdl_launch();
        }
#pragma unroll
        for (int s = 0; s < AHEAD; s++) {
            if (s < KT) load_A(s, s);
            cp_async_commit();
        }
        for (int kt = 0; kt < KT; kt++) {
            cp_async_wait<AHEAD - 1>();
            if (WG) fence_proxy_async();
            __syncthreads();
            if (kt + AHEAD < KT) {
                load_B(kt + AHEAD, (kt + AHEAD) % STAGES);
                load_A(kt + AHEAD, (kt + AHEAD) % STAGES);
            }
            cp_async_commit();

            const int st = kt % STAGES;
            if (TMA) mbar_wait(bar0 + 8 * st, (uint32_t)(kt / STAGES) & 1); // B's bytes landed
            const uint32_t a_base = smem_u32(sA + (size_t)st * BM * 128);
            const uint32_t b_base = smem_u32(sB + (size_t)st * BN * 128);
            /* fp8: the tensor cores sum each 128-wide K block into part, which
             * then goes into acc times its activation-row scale and weight-block
             * scale (an fp32 sum of the blocks: Hopper's fp8 MMA keeps fewer bits
             * than fp32 in a running sum). */
            float part[PT][PN][4];
            if constexpr (WG) {
                /* A: this warpgroup's 64 activation rows, or (SWAP) the weight
                 * rows, 64 per step; B: its TN weight rows, or (SWAP) the BM
                 * activation rows */
                constexpr int NSTEP = SWAP ? MT : 1, WIDTH = SWAP ? BM : TN;
                const uint32_t a_wg = SWAP ? b_base : a_base + (uint32_t)(wm / 4) * 64 * 128;
                const uint32_t b_wg = SWAP ? a_base : b_base + (uint32_t)wn * TN * 128;
                float *d = F8 ? &part[0][0][0] : &acc[0][0][0];
                wgmma_fence();
#pragma unroll
                for (int ks = 0; ks < 4; ks++) {
                    const uint64_t db = wgmma_desc(b_wg + ks * 32);
#pragma unroll
                    for (int i = 0; i < NSTEP; i++) {
                        const uint64_t da = wgmma_desc(a_wg + i * 64 * 128 + ks * 32);
                        if (F8 && ks == 0) // part = A . B
                            wgmma_step<DT, WIDTH, false>(d + i * NTL * 4, da, db);
                        else
                            wgmma_step<DT, WIDTH, true>(d + i * NTL * 4, da, db);
                    }
                }
                wgmma_commit();
                if (WG_ASYNC)
                    wgmma_wait<1>(); // the previous stage's batch is done
                else
                    wgmma_wait<0>();
            } else {
                if (F8) {
#pragma unroll
                    for (int mt = 0; mt < PT; mt++)
#pragma unroll
                        for (int nt = 0; nt < PN; nt++)
#pragma unroll
                            for (int q = 0; q < 4; q++) part[mt][nt][q] = 0.0f;
                }
#pragma unroll
                for (int ks = 0; ks < 4; ks++) {
                    uint32_t af[MT][4], bfr[NTL][2];
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) {
                        int row = wm * TM + mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                        int ch  = 2 * ks + (lane >> 4);
                        ldmatrix_x4(a_base + row * 128 + ((ch ^ (row & 7)) << 4), af[mt][0],
                                    af[mt][1], af[mt][2], af[mt][3]);
                    }
#pragma unroll
                    for (int np = 0; np < NTL / 2; np++) {
                        int row = wn * TN + np * 16 + (lane & 7) + (lane >> 4) * 8;
                        int ch  = 2 * ks + ((lane >> 3) & 1);
                        ldmatrix_x4(b_base + row * 128 + ((ch ^ (row & 7)) << 4), bfr[2 * np][0],
                                    bfr[2 * np][1], bfr[2 * np + 1][0], bfr[2 * np + 1][1]);
                    }
#pragma unroll
                    for (int mt = 0; mt < MT; mt++)
#pragma unroll
                        for (int nt = 0; nt < NTL; nt++) {
                            if constexpr (F8)
                                mma_16x8<DT>(part[mt % PT][nt % PN], af[mt], bfr[nt]);
                            else
                                mma_16x8<DT>(acc[mt][nt], af[mt], bfr[nt]);
                        }
                }
            }
            if constexpr (F8) fold(part, st);
        }
    }
    if (WG && !WS) wgmma_wait<0>(); // (WS: the consumers waited at the end of their loop)
    cp_async_wait<0>();
    __syncthreads();

    // accumulators -> shared tile (BM, LDC) f32
    float *sC = (float *)smem;
    if (SWAP) {
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < NTL; nt++)
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    const int c = mt * 64 + warp * 16 + (lane >> 2) + 8 * (q >> 1);
                    sC[(nt * 8 + (lane & 3) * 2 + (q & 1)) * LDC + c] = acc[mt][nt][q];
                }
    } else if (!producer) {
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < NTL; nt++) {
                int r = wm * TM + mt * 16 + (lane >> 2);
                int c = wn * TN + nt * 8 + (lane & 3) * 2;
                sC[r * LDC + c]           = acc[mt][nt][0];
                sC[r * LDC + c + 1]       = acc[mt][nt][1];
                sC[(r + 8) * LDC + c]     = acc[mt][nt][2];
                sC[(r + 8) * LDC + c + 1] = acc[mt][nt][3];
            }
    }
    __syncthreads();

    if (!W13) {
        // W2: y[slot, n0 + c] = (acc + b2) * rw[slot], f32 or bf16 rows
        const float *bias = g.bias ? g.bias + (int64_t)e * g.N_w : nullptr;
        for (int i = threadIdx.x; i < BM * (BN / 4); i += NTHR) {
            int r = i / (BN / 4), c = (i % (BN / 4)) * 4;
            if (a_src[r] < 0 || b_src[c] < 0) continue;
            int s = slot[r];
            float wgt = g.rw ? g.rw[s] : 1.0f;
            float4 v;
            v.x = sC[r * LDC + c];
            v.y = sC[r * LDC + c + 1];
            v.z = sC[r * LDC + c + 2];
            v.w = sC[r * LDC + c + 3];
            if (bias) {
                v.x += bias[n0 + c];
                v.y += bias[n0 + c + 1];
                v.z += bias[n0 + c + 2];
                v.w += bias[n0 + c + 3];
            }
            v.x *= wgt; v.y *= wgt; v.z *= wgt; v.w *= wgt;
            const int64_t o = (int64_t)s * g.N_out + n0 + c;
            if (g.y_bf16) {
                const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y);
                const __nv_bfloat162 hi = __floats2bfloat162_rn(v.z, v.w);
                *(uint2 *)((__nv_bfloat16 *)g.out + o) =
                    make_uint2(*(const uint32_t *)&lo, *(const uint32_t *)&hi);
            } else {
                *(float4 *)((float *)g.out + o) = v;
            }
        }
        return;
    }

    // W13: activation of (gate, up) per output column
    const int outw = gemm_out_cols(g.act, 1, BN);
    const float *bias = g.bias ? g.bias + (int64_t)e * g.N_w : nullptr;
    auto act_at = [&](int r, int j) -> float {
        int gi = gated ? j : inter ? 2 * j : j;
        int ui = gated ? j + half : inter ? 2 * j + 1 : j;
        float sc = g.in_scale ? g.in_scale[slot[r]] : 1.0f;
        float gv = sC[r * LDC + gi] * sc, uv = sC[r * LDC + ui] * sc;
        if (bias) {
            gv += bias[b_src[gi]];
            uv += bias[b_src[ui]];
        }
        return act_apply(g.act, gv, uv, g.alpha, g.limit);
    };
    if (DT == MOE_CUDA_FP8 && g.out_f32) {
        // fp8 decode: f32 rows, quantized by a following launch exactly as here
        for (int i = threadIdx.x; i < BM * (outw / 2); i += NTHR) {
            int r = i / (outw / 2), j = (i % (outw / 2)) * 2;
            if (a_src[r] < 0 || n0 + j >= g.N_out) continue;
            *(float2 *)((float *)g.out + (int64_t)(r0 + r) * g.N_out + n0 + j) =
                make_float2(act_at(r, j), act_at(r, j + 1));
        }
    } else if (DT != MOE_CUDA_FP8) {
        for (int i = threadIdx.x; i < BM * (outw / 2); i += NTHR) {
            int r = i / (outw / 2), j = (i % (outw / 2)) * 2;
            if (a_src[r] < 0 || n0 + j >= g.N_out) continue;
            int64_t o = (int64_t)(r0 + r) * g.N_out + n0 + j;
            if (DT != MOE_CUDA_F16) {
                *(__nv_bfloat162 *)((__nv_bfloat16 *)g.out + o) =
                    __floats2bfloat162_rn(act_at(r, j), act_at(r, j + 1));
            } else {
                *(__half2 *)((__half *)g.out + o) =
                    __floats2half2_rn(act_at(r, j), act_at(r, j + 1));
            }
        }
    } else {
        // one warp per (row, group of 128 columns): amax, scale, e4m3 store
        const int     groups = outw / MOE_CUDA_QBLOCK;
        const int64_t ngrp   = (g.N_out + MOE_CUDA_QBLOCK - 1) / MOE_CUDA_QBLOCK;
        for (int i = warp; i < BM * groups; i += NTHR / 32) {
            int r = i / groups, grp = i % groups;
            if (a_src[r] < 0 || n0 + grp * MOE_CUDA_QBLOCK >= g.N_out) continue;
            int   j0 = grp * MOE_CUDA_QBLOCK + lane * 4;
            float v[4];
            float amax = 0.0f;
#pragma unroll
            for (int q = 0; q < 4; q++) {
                v[q] = n0 + j0 + q < g.N_out ? act_at(r, j0 + q) : 0.0f;
                amax = fmaxf(amax, fabsf(v[q]));
            }
            amax = warp_max(amax);
            float scale = fmaxf(amax, MOE_CUDA_AMAX_EPS) / MOE_CUDA_FP8_MAX;
            if (n0 + j0 < g.N_out) {
                uint32_t packed = 0;
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    __nv_fp8_storage_t b =
                        __nv_cvt_float_to_fp8(v[q] / scale, __NV_SATFINITE, __NV_E4M3);
                    packed |= (uint32_t)b << (8 * q);
                }
                *(uint32_t *)((uint8_t *)g.out + (int64_t)(r0 + r) * g.N_out + n0 + j0) = packed;
            }
            if (lane == 0)
                g.out_scale[(int64_t)(r0 + r) * ngrp + (n0 / MOE_CUDA_QBLOCK) + grp] = scale;
        }
    }
}

// ---- launchers

template <int DT, int BM, int BN, int WM, int WN, int STAGES, bool W13, bool WG, bool WS>
static cudaError_t gemm_setup() {
    constexpr size_t smem = gemm_smem_bytes<BM, BN, STAGES, WG, WS>();
    return cudaFuncSetAttribute(grouped_gemm_kernel<DT, BM, BN, WM, WN, STAGES, W13, WG, WS>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
}

/* Launches a grouped GEMM kernel of BN-wide tiles over g's layout: grid_n
 * set from BN, one CTA per tile the table can hold (grid_n x max_tiles), or
 * at most max_ctas of them (a persistent kernel loops over the rest); in
 * clusters of `cluster` CTAs, that many per tile (max_ctas a multiple). */
static cudaError_t gemm_start(void (*kernel)(moe__gemm_args), const moe__gemm_args *g, bool w13,
                              int BN, int threads, size_t smem, int64_t max_ctas,
                              cudaStream_t st, unsigned cluster = 1) {
    const int      outw = gemm_out_cols(g->act, w13, BN);
    moe__gemm_args a    = *g;
    a.grid_n            = (int)((g->N_out + outw - 1) / outw);
    const int64_t n_cta = (int64_t)a.grid_n * g->max_tiles * cluster;
    if (n_cta == 0) return cudaSuccess;
    if (n_cta > 0x7fffffff || max_ctas < cluster) return cudaErrorInvalidConfiguration;
    cudaLaunchAttribute      attr[2];
    const cudaLaunchConfig_t cfg = launch_config(
        dim3((unsigned)(n_cta < max_ctas ? n_cta : max_ctas)), dim3(threads), smem, st, g->pdl,
        attr, cluster);
    const cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, a);
    return e != cudaSuccess ? e : cudaGetLastError();
}

template <int DT, int BM, int BN, int WM, int WN, int STAGES, bool W13, bool WG, bool WS>
static cudaError_t gemm_launch(const moe__gemm_args *g, cudaStream_t st) {
    return gemm_start(grouped_gemm_kernel<DT, BM, BN, WM, WN, STAGES, W13, WG, WS>, g, W13, BN,
                      gemm_threads<WM, WN, WS>(), gemm_smem_bytes<BM, BN, STAGES, WG, WS>(),
                      INT64_MAX, st);
}

/* One tile configuration, named once: the kernels of its roles (bit 0:
 * W13, bit 1: W2), their shared-memory limits raised by setup(). WS: the
 * warp-specialized form (wgmma, a producer warpgroup on top of WM x WN). */
#define GEMM_W13  1
#define GEMM_W2   2
#define GEMM_BOTH 3
template <int DT, int BM, int BN, int WM, int WN, int STAGES, bool WG, int ROLES = GEMM_BOTH,
          bool WS = false>
struct gemm_tile {
    static cudaError_t setup() {
        cudaError_t e = cudaSuccess;
        if constexpr ((ROLES & GEMM_W13) != 0)
            e = gemm_setup<DT, BM, BN, WM, WN, STAGES, true, WG, WS>();
        if constexpr ((ROLES & GEMM_W2) != 0)
            if (e == cudaSuccess) e = gemm_setup<DT, BM, BN, WM, WN, STAGES, false, WG, WS>();
        return e;
    }
    static cudaError_t launch(const moe__gemm_args *g, cudaStream_t st) {
        if constexpr (ROLES == GEMM_BOTH)
            return g->w13 ? gemm_launch<DT, BM, BN, WM, WN, STAGES, true, WG, WS>(g, st)
                          : gemm_launch<DT, BM, BN, WM, WN, STAGES, false, WG, WS>(g, st);
        else if (g->w13 == (ROLES == GEMM_W13))
            return gemm_launch<DT, BM, BN, WM, WN, STAGES, ROLES == GEMM_W13, WG, WS>(g, st);
        return cudaErrorInvalidValue;
    }
};

/* The tile configurations of one operand type: setup() for all of them
 * (once, before any capture), launch<I>() for the I-th. */
template <class... Tiles> struct gemm_tiles {
    static cudaError_t setup() {
        cudaError_t e = cudaSuccess;
        ((e = e == cudaSuccess ? Tiles::setup() : e), ...);
        return e;
    }
    template <int I> static cudaError_t launch(const moe__gemm_args *g, cudaStream_t st) {
        return std::tuple_element_t<I, std::tuple<Tiles...>>::launch(g, st);
    }
};

#endif /* MOE_CUDA_GROUPED_GEMM_CUH */
