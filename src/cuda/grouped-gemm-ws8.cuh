/*
 * grouped-gemm-ws8.cuh - the persistent warp-specialized prefill kernel of
 * the block-FP8 grouped GEMM (grouped-gemm-fp8.cu, 64-row tiles on sm_90a).
 *
 * The scheme of grouped-gemm-ws.cuh: one CTA per multiprocessor loops over
 * the tiles in the grid's order; a producer warpgroup fills the stages
 * (weight rows by TMA, activation rows and the fp8 scales by cp.async) and
 * runs on into the next tile's stages while the consumers are in the
 * epilogue, so neither a tile's pipeline fill nor a CTA's start is paid per
 * tile. The per-tile fp8 kernels (grouped-gemm.cuh) paid both for every
 * 64 x 256 tile: W2's K is short (qwen3-30b-a3b: 6 stages of 128).
 *
 * A tile is 64 layout rows x 256 weight rows, split along N: each of the
 * two consumer warpgroups runs m64n128k32 e4m3 wgmma on all 64 rows and its
 * 128 weight rows. Its registers hold its f32 accumulators (64) and the
 * stage's partial sums (64), folded into them after every 128-wide K block
 * with activation-row scale x weight-block scale, the expression of
 * grouped-gemm.cuh's fold (same bits; a 128-row x 256 tile per consumer, as
 * in the bf16 kernel, would need 256 registers for the two).
 *
 * Per stage the producer stages BM activation-row scales and two weight
 * scales per consumer, one per 64-row half of its 128 weight rows. A gated
 * W13 stage holds, for consumer c, the gate rows of output columns
 * n0 + 64 c .. + 63, then their up rows (TMA boxes in that order): gate and
 * up of an output meet in one thread (column tiles nt and nt + 8), and each
 * half lies in one 128-row scale block. SWIGLU_OAI's interleaved rows and
 * W2's rows are plain: 128 consecutive weight rows, one block.
 *
 * W13 quantizes its output rows per group of 128 columns, which the two
 * consumers share: each reduces its rows' amax over its 64 columns, they
 * exchange the two at a named barrier, and each stores its e4m3 bytes
 * through a per-warp staging tile (16-byte stores), consumer 0 the scales.
 * W2 stores (acc + b2) x routing weight rows, bf16 or f32, with the bf16
 * kernel's epilogue. Shapes: W13 gated or SWIGLU_OAI with N_out % 128 == 0,
 * W2 with N_out % 256 == 0 (whole tiles; ws8_fits); the rest runs on the
 * per-tile kernels.
 */
#ifndef MOE_CUDA_GROUPED_GEMM_WS8_CUH
#define MOE_CUDA_GROUPED_GEMM_WS8_CUH

#include "grouped-gemm-ws.cuh"

#define W8_BM      64
#define W8_BN      256
#define W8_STAGES  4
#define W8_SCALES  (W8_BM + 4)   // per stage: activation-row scales, then 2 per consumer
#define W8_OUT     (8 * 16 * 64) // W13: each consumer warp's 16 x 64 e4m3 output bytes
#define W8_XMAX    (2 * 2 * W8_BM * 4) // W13: row amax of both consumers, two steps' worth

template <bool W13> static __host__ __device__ constexpr size_t ws8_smem_bytes() {
    return 1024 + (size_t)W8_STAGES * (W8_BM + W8_BN) * 128 + (size_t)W8_STAGES * W8_SCALES * 4 +
           (W13 ? W8_OUT + W8_XMAX : 0) + 2 * W8_STAGES * 8;
}

/* Whether g runs on this kernel (see the top). */
static inline bool ws8_fits(const moe__gemm_args *g) {
    if (!g->wgmma || g->BM != W8_BM || g->dtype != MOE_CUDA_FP8) return false;
    if (g->w13) return g->act != MOE_ACT_RELU2 && g->N_out % 128 == 0;
    return g->N_out % W8_BN == 0;
}

/* The 256 consumer threads meet (barrier 1; __syncthreads is 0). */
static __device__ __forceinline__ void ws8_consumers_sync() {
    asm volatile("bar.sync 1, 256;\n" ::: "memory");
}

/* W13 epilogue of consumer c's warp (rows row0 + lane / 4 (+ 8) of the tile,
 * output columns n0 + 64 c .. + 63): activation, the rows' amax over the
 * group of 128 shared with the other consumer (xmax: [consumer][row]),
 * e4m3 bytes through the warp's staging tile so (16 x 64), group scales.
 * The expressions are those of grouped-gemm.cuh's staged epilogue. */
template <int ACT>
static __device__ __forceinline__ void ws8_store_w13(const moe__gemm_args &g,
                                                     const float (*acc)[4], const ws_step &t,
                                                     int c, int row0, const ws_rows &rows,
                                                     float *xmax, uint8_t *so, int lane) {
    constexpr bool INTER = ACT == MOE_ACT_SWIGLU_OAI;
    const float   *bias  = g.bias ? g.bias + (int64_t)t.e * g.N_w : nullptr;
    const int64_t  j0    = t.n0 + 64 * c; // the consumer's first output column
    /* a thread's value i (of 16 per row) is output column out_col(i) of the
     * consumer: INTER, column tile i holds the pair (gate, up) of output
     * 4 i + lane % 4; gated, tile i / 2's value i % 2, its up value 8 tiles on */
    auto out_col = [&](int i) {
        return INTER ? 4 * i + (lane & 3) : 8 * (i / 2) + 2 * (lane & 3) + i % 2;
    };
    float v[2][16], amax[2] = { 0.0f, 0.0f };
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
        for (int i = 0; i < 16; i++) {
            const int     nt = INTER ? i : i / 2, q = INTER ? 0 : i % 2;
            const int     j  = out_col(i);
            const int64_t gr = INTER ? 2 * (j0 + j) : j0 + j;
            const int64_t ur = INTER ? gr + 1 : g.N_out + gr;
            float gv = acc[nt][2 * h + q] * rows.f[h];
            float uv = (INTER ? acc[nt][2 * h + 1] : acc[nt + 8][2 * h + q]) * rows.f[h];
            if (bias) {
                gv += bias[gr];
                uv += bias[ur];
            }
            v[h][i] = act_apply(ACT, gv, uv, g.alpha, g.limit);
            amax[h] = fmaxf(amax[h], fabsf(v[h][i]));
        }
    float scale[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        amax[h] = fmaxf(amax[h], __shfl_xor_sync(0xffffffffu, amax[h], 1));
        amax[h] = fmaxf(amax[h], __shfl_xor_sync(0xffffffffu, amax[h], 2));
        if ((lane & 3) == 0) xmax[c * W8_BM + row0 + (lane >> 2) + 8 * h] = amax[h];
    }
    ws8_consumers_sync();
#pragma unroll
    for (int h = 0; h < 2; h++) {
        amax[h]  = fmaxf(amax[h], xmax[(c ^ 1) * W8_BM + row0 + (lane >> 2) + 8 * h]);
        scale[h] = fmaxf(amax[h], MOE_CUDA_AMAX_EPS) / MOE_CUDA_FP8_MAX;
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
        uint8_t *d = so + ((lane >> 2) + 8 * h) * 64;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            d[out_col(i)] = __nv_cvt_float_to_fp8(v[h][i] / scale[h], __NV_SATFINITE, __NV_E4M3);
        }
    }
    __syncwarp();
    const int64_t ngrp = g.N_out / MOE_CUDA_QBLOCK;
#pragma unroll
    for (int k = lane; k < 64; k += 32) { // 16 rows x 4 chunks of 16 bytes
        const int rr = k >> 2, cc = k & 3, r = t.r0 + row0 + rr;
        if (r < t.r1)
            *(int4 *)((uint8_t *)g.out + (int64_t)r * g.N_out + j0 + 16 * cc) =
                *(const int4 *)(so + rr * 64 + 16 * cc);
    }
    if (c == 0 && (lane & 3) == 0)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int r = t.r0 + row0 + (lane >> 2) + 8 * h;
            if (r < t.r1) g.out_scale[(int64_t)r * ngrp + t.n0 / MOE_CUDA_QBLOCK] = scale[h];
        }
    __syncwarp(); // the staging tile is read before the next tile writes it
}

/* ws8_store_w13 with the layer's activation as its template argument. */
static __device__ __forceinline__ void ws8_store_w13_act(const moe__gemm_args &g,
                                                         const float (*acc)[4], const ws_step &t,
                                                         int c, int row0, const ws_rows &rows,
                                                         float *xmax, uint8_t *so, int lane) {
    switch (g.act) {
    case MOE_ACT_SILU:
        return ws8_store_w13<MOE_ACT_SILU>(g, acc, t, c, row0, rows, xmax, so, lane);
    case MOE_ACT_GELU:
        return ws8_store_w13<MOE_ACT_GELU>(g, acc, t, c, row0, rows, xmax, so, lane);
    case MOE_ACT_GELU_TANH:
        return ws8_store_w13<MOE_ACT_GELU_TANH>(g, acc, t, c, row0, rows, xmax, so, lane);
    default: return ws8_store_w13<MOE_ACT_SWIGLU_OAI>(g, acc, t, c, row0, rows, xmax, so, lane);
    }
}

template <bool W13>
static __global__ void __launch_bounds__(WS_THREADS)
    grouped_gemm_ws8_kernel(const __grid_constant__ moe__gemm_args g) {
    constexpr int BM = W8_BM, BN = W8_BN, STAGES = W8_STAGES, NCONS = 256, SC = W8_SCALES;
    extern __shared__ __align__(128) char smem_raw[];
    char    *smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
    char    *sA   = smem;                                  // (STAGES, BM, 128 bytes)
    char    *sB   = sA + (size_t)STAGES * BM * 128;        // (STAGES, BN, 128 bytes)
    float   *sS   = (float *)(sB + (size_t)STAGES * BN * 128); // (STAGES, SC) scales
    uint8_t *sO   = (uint8_t *)(sS + STAGES * SC);         // W13: (8 warps, 16, 64)
    float   *sX   = (float *)(sO + W8_OUT);                // W13: (2 steps, 2 consumers, BM)
    const uint32_t full0  = smem_u32(sS + STAGES * SC) + (W13 ? W8_OUT + W8_XMAX : 0);
    const uint32_t empty0 = full0 + 8 * STAGES;

    if (threadIdx.x == 0) {
        /* full: the producer's 128 cp.async arrivals + its TMA thread's;
         * empty: every consumer thread (each releases its own scale reads) */
        for (int s = 0; s < STAGES; s++) {
            mbar_init(full0 + 8 * s, 128 + 1);
            mbar_init(empty0 + 8 * s, NCONS);
        }
        mbar_init_fence();
    }
    __syncthreads();
    if (W13) { // (see grouped-gemm-ws.cuh)
        pdl_wait();
        pdl_launch();
    }

    const int     n_m     = g.tiles ? *g.n_tiles : (int)((g.n_rows + BM - 1) / BM);
    const int     outw    = gemm_out_cols(g.act, W13, BN);
    const int     waves   = (n_m * g.grid_n + (int)gridDim.x - 1) / (int)gridDim.x;
    const int     KT      = (int)((g.K + 127) / 128);
    const int64_t kblocks = KT; // (one fp8 scale block of K per stage)
    const int64_t nblk    = (g.N_w + MOE_CUDA_QBLOCK - 1) / MOE_CUDA_QBLOCK;
    const bool    gated   = W13 && act_is_gated(g.act), inter = W13 && g.act == MOE_ACT_SWIGLU_OAI;
    const int     warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const bool    producer = __shfl_sync(0xffffffffu, (int)threadIdx.x, 0) >= NCONS;

    if (producer) {
        ws_regs_dec();
        const int     ct = threadIdx.x - NCONS;
        ws_a_rows<BM> ar(sA, ct);
        /* the weight stage: 8 boxes of 32 rows; gated, consumer c's are the
         * gate then the up rows of outputs n0 + 64 c .. + 63 */
        auto load_B = [&](const ws_step &t, int kt, int st) {
            const uint32_t bar = full0 + 8 * st, dst = smem_u32(sB + (size_t)st * BN * 128);
            mbar_expect_bytes(bar, BN * 128);
#pragma unroll
            for (int b = 0; b < BN / TMA_BOX_ROWS; b++) {
                const int h = gated ? (b >> 1) & 1 : 0;
                const int r = gated ? (int)t.n0 + 64 * (b >> 2) + 32 * (b & 1)
                                    : (int)(inter ? 2 * t.n0 : t.n0) + 32 * b;
                tma_load_4d(dst + b * TMA_BOX_ROWS * 128, &g.w_map, bar, kt * 128, r, h, t.e);
            }
        };
        const int early = ws_w2_start<W13, false, BM>(g, ct, n_m, outw, 0, STAGES, KT, load_B);
        int it = 0; // stages filled so far, over all tiles
        for (int i = 0; i < waves; i++) {
            ws_step t;
            if (!ws_step_at<false, BM>(g, i, n_m, outw, 0, t)) continue;
            ar.tile(g, t, ct, g.K);
            /* this thread's scale copy: row ct's activation scales, or (ct =
             * BM + 2 c + h) the weight block of consumer c's half h */
            const float *sp = nullptr;
            if (ct < BM) {
                const int r = t.r0 + ct;
                if (r < t.r1) sp = g.a_scale + ws_a_row(g, r) * kblocks;
            } else if (ct < SC) {
                const int     c = (ct - BM) >> 1, h = (ct - BM) & 1;
                const int64_t row =
                    gated ? (h ? g.N_out : 0) + t.n0 + 64 * c : (inter ? 2 * t.n0 : t.n0) + 128 * c;
                sp = g.w_scale + ((int64_t)t.e * nblk + row / MOE_CUDA_QBLOCK) * kblocks;
            }
            for (int kt = 0; kt < KT; kt++, it++) {
                const int st = it % STAGES;
                if (it >= STAGES) mbar_wait(empty0 + 8 * st, (uint32_t)(it / STAGES - 1) & 1);
                if (ct == 0 && it >= early) load_B(t, kt, st);
                ar.load(g, kt, st, g.K);
                if (ct < SC)
                    cp_async4(smem_u32(sS + st * SC + ct), sp ? sp + kt : g.w_scale, sp ? 4 : 0);
                cp_async_arrive_noinc(full0 + 8 * st);
            }
        }
    } else {
        ws_regs_inc();
        if (!W13) {
            pdl_wait();
            pdl_launch();
        }
        const int      c     = warp / 4;            // the consumer: weight rows 128 c .. + 127
        const int      row0  = 16 * (warp % 4);     // the warp's 16 rows
        const uint32_t b_off = (uint32_t)c * 128 * 128;
        uint8_t       *so    = sO + warp * 16 * 64;
        int            it    = 0;
        ws_ahead       nx; // the next step's tile, read during the current step
        ws_ahead_table<false, BM>(g, 0, n_m, nx);
        ws_ahead_end(g, nx);
        for (int i = 0; i < waves; i++) {
            ws_step t;
            if (!ws_ahead_step<false, BM>(nx, outw, 0, t)) continue;
            ws_ahead_table<false, BM>(g, i + 1, n_m, nx);
            ws_rows rows = ws_rows_at(g, t.r0, t.r1, row0, lane);
            float   acc[16][4];
#pragma unroll
            for (int nt = 0; nt < 16; nt++)
#pragma unroll
                for (int q = 0; q < 4; q++) acc[nt][q] = 0.0f;
            for (int kt = 0; kt < KT; kt++, it++) {
                const int st = it % STAGES;
                mbar_wait(full0 + 8 * st, (uint32_t)(it / STAGES) & 1);
                fence_proxy_async(); // the producer's cp.async bytes, for wgmma's reads
                const uint32_t a_wg = smem_u32(sA + (size_t)st * BM * 128);
                const uint32_t b_wg = smem_u32(sB + (size_t)st * BN * 128) + b_off;
                float          part[16][4];
                wgmma_fence();
#pragma unroll
                for (int ks = 0; ks < 4; ks++) {
                    const uint64_t da = wgmma_desc(a_wg + ks * 32), db = wgmma_desc(b_wg + ks * 32);
                    if (ks == 0)
                        wgmma_step<MOE_CUDA_FP8, 128, false>(&part[0][0], da, db); // part = A . B
                    else
                        wgmma_step<MOE_CUDA_FP8, 128, true>(&part[0][0], da, db);
                }
                wgmma_commit();
                if (kt == KT / 2) { // (reads issued while the batch runs)
                    ws_ahead_end(g, nx);
                    ws_rows_factors<W13>(g, rows);
                }
                wgmma_wait<0>();
                /* acc += part x (activation-row scale x weight-block scale), the
                 * product rounded once (grouped-gemm.cuh's fold); the weight
                 * block of column tiles 0-7, then 8-15 */
                const float *ss = sS + st * SC;
                const float  sw[2] = { ss[BM + 2 * c], ss[BM + 2 * c + 1] };
                float        s[2][2];
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const float sa = ss[row0 + (lane >> 2) + 8 * h];
                    s[h][0] = __fmul_rn(sa, sw[0]);
                    s[h][1] = __fmul_rn(sa, sw[1]);
                }
#pragma unroll
                for (int nt = 0; nt < 16; nt++)
#pragma unroll
                    for (int q = 0; q < 4; q++)
                        acc[nt][q] = __fmaf_rn(part[nt][q], s[q >> 1][nt >> 3], acc[nt][q]);
                mbar_arrive(empty0 + 8 * st);
            }
            if constexpr (W13) {
                ws8_store_w13_act(g, acc, t, c, row0, rows, sX + (i & 1) * 2 * BM, so, lane);
            } else {
                if (__shfl_sync(0xffffffffu, row0 >= t.r1 - t.r0, 0)) continue; // all padding
                ws_step tc = t;
                tc.n0 += 128 * c;
                ws_store_w2_any<16>(g, acc, tc, rows, lane);
            }
        }
    }
    __syncthreads(); // no producer thread leaves while its copies may be in flight
}

/* The persistent fp8 tile: setup() raises both kernels' shared-memory
 * limits; launch() starts one CTA per multiprocessor, or fewer when the
 * layout can have fewer tiles. */
struct gemm_ws8_tile {
    template <bool W13> static cudaError_t setup_one() {
        return cudaFuncSetAttribute(grouped_gemm_ws8_kernel<W13>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)ws8_smem_bytes<W13>());
    }
    static cudaError_t setup() {
        cudaError_t e = setup_one<true>();
        return e != cudaSuccess ? e : setup_one<false>();
    }
    template <bool W13> static cudaError_t launch_one(const moe__gemm_args *g, cudaStream_t st) {
        return gemm_start(grouped_gemm_ws8_kernel<W13>, g, W13, W8_BN, WS_THREADS,
                          ws8_smem_bytes<W13>(), g->n_sm, st);
    }
    static cudaError_t launch(const moe__gemm_args *g, cudaStream_t st) {
        return g->w13 ? launch_one<true>(g, st) : launch_one<false>(g, st);
    }
};

#endif /* MOE_CUDA_GROUPED_GEMM_WS8_CUH */
