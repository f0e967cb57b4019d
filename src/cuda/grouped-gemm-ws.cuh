/*
 * grouped-gemm-ws.cuh - the persistent warp-specialized prefill kernel of
 * the bf16/f16 grouped GEMM (grouped-gemm-bf16.cu, BM = 128 or 64 on sm_90a).
 *
 * One CTA per multiprocessor loops over the tiles of 128 layout rows x 256
 * weight rows, in the order of the other kernels' grid (gemm_tile_at). A
 * producer warpgroup fills WS_STAGES operand stages: the weight rows by TMA
 * from its first thread, the activation rows (gathered by token for W13) by
 * cp.async from all 128 threads, each thread announcing its copies' landing
 * on the stage's "full" mbarrier. Two consumer warpgroups run m64n256k16
 * wgmma on 64 rows each and hand each stage back on its "empty" mbarrier.
 * The producer does not stop at a tile's end: while the consumers run the
 * epilogue of one tile, the first stages of the next are already loading,
 * so neither the pipeline's fill nor the CTA's start is paid per tile.
 *
 * The epilogue runs from the accumulators (m16n8 order: a warp's 16 rows,
 * column tile nt holding columns 8 nt + 2 (lane % 4) + 0, 1). W2 writes
 * (acc + b2) x routing weight as f32 rows. W13 computes the activation
 * (gate and up of an output column are in the same thread: column tiles nt
 * and nt + 16, or neighbours for SWIGLU_OAI) and stages each warp's 16
 * output rows, 128 columns at a time, in its own 4 KB of shared memory
 * (outside the stages, which are already refilling) for 16-byte stores.
 * A consumer warpgroup whose 64 rows are all padding (an expert's last
 * tile) issues no wgmma; it still takes and hands back every stage. Up to
 * 48 rows per expert the kernel runs with one consumer warpgroup on 64-row
 * tiles (ws_shape<1>), its fifth stage in the bytes the padding rows took.
 *
 * PAIR (the layout's tile table in 256-row tiles, moe__cuda_pick_bm): CTAs
 * run in clusters of two on the two 128-row halves of one 256-row tile of
 * one expert, same output columns. Each loads half of the weight stage
 * (the gate or the up rows of a gated tile) by TMA multicast into both, so
 * an expert's weights cross from L2 into shared memory once per 256 rows
 * instead of once per 128 (mixtral-8x7b T = 16384 -4.7%, NOTES v21). A
 * stage is refilled only when the consumers of both CTAs have released it
 * (each empty mbarrier counts both CTAs' warps; plain arrive and wait, as
 * cluster-scope acquire / release made the pairs 20-30% slower). An expert's
 * last 256-row tile often has its rows in the first half only; the second
 * CTA then only loads its half of the weights. Pairs of consecutive
 * 128-row tiles, whatever their experts, measured 25-45% slower in v17,
 * put down then to lockstep between a full and a nearly empty tile; how
 * that version's barriers were scoped is not recorded.
 */
#ifndef MOE_CUDA_GROUPED_GEMM_WS_CUH
#define MOE_CUDA_GROUPED_GEMM_WS_CUH

#include "grouped-gemm.cuh"

#include <type_traits>

#define WS_BN     256
#define WS_STAGES 4
#define WS_THREADS 384 // two consumer warpgroups, then the producer

/* The kernel's shape by its consumer warpgroups NC: 2 (128-row tiles, 4
 * stages) or 1 (64-row tiles, WS1_STAGES stages in about the same shared
 * memory: the rows a 128-row stage spends on an expert's padding go to
 * one more stage of weights in flight). */
#define WS1_STAGES 5
template <int NC> struct ws_shape {
    static constexpr int BM = 64 * NC, STAGES = NC == 2 ? WS_STAGES : WS1_STAGES;
    static constexpr int THREADS = 128 * (NC + 1); // the consumers, then the producer
    static constexpr int OUT_BYTES = NC * 4 * 16 * 128 * 2; // W13: a consumer warp's 16 x 128
};

/* Stages (aligned to 1024 bytes for the swizzle), W13's per-warp output
 * staging (16 rows x 128 columns x 2 bytes a consumer warp), full and
 * empty mbarriers. */
template <bool W13, int NC = 2> static __host__ __device__ constexpr size_t ws_smem_bytes() {
    using S = ws_shape<NC>;
    return 1024 + (size_t)S::STAGES * (S::BM + WS_BN) * 128 + (W13 ? S::OUT_BYTES : 0) +
           2 * S::STAGES * 8;
}

static __device__ __forceinline__ void store2(__nv_bfloat16 *p, float a, float b) {
    *(__nv_bfloat162 *)p = __floats2bfloat162_rn(a, b);
}
static __device__ __forceinline__ void store2(__half *p, float a, float b) {
    *(__half2 *)p = __floats2half2_rn(a, b);
}

/* Registers per thread with two consumer warpgroups: the producer gives
 * most of its share (it holds addresses only) to the consumers, whose
 * 64 x 256 f32 accumulators take 128 of them (168 each at launch: 65536 /
 * 384, rounded down to 8). With one consumer, 256 threads have 255 each. */
static __device__ __forceinline__ void ws_regs_dec() {
#ifdef MOE_WGMMA
    asm volatile("setmaxnreg.dec.sync.aligned.u32 56;\n" ::: "memory");
#endif
}
static __device__ __forceinline__ void ws_regs_inc() {
#ifdef MOE_WGMMA
    asm volatile("setmaxnreg.inc.sync.aligned.u32 224;\n" ::: "memory");
#endif
}

/* What the epilogue reads per row of a thread (rows row0 + lane / 4 + 8 h
 * of the tile, h = 0, 1): the row's slot (-1 past the tile's rows) and its
 * factor (W2: the routing weight; W13: the input scale), or 1. The slots
 * are read at the step's start and the factors, which are read through
 * them, in the middle of the K loop (ws_rows_factors): read at the start
 * too, the consumers waited there for the slots (~1 us a step, NOTES v23). */
struct ws_rows {
    int   slot[2];
    float f[2];
};
static __device__ __forceinline__ ws_rows ws_rows_at(const moe__gemm_args &g, int r0, int r1,
                                                     int row0, int lane) {
    ws_rows w;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int r = r0 + row0 + (lane >> 2) + 8 * h;
        w.slot[h]   = r < r1 ? gemm_row_slot(g, r) : -1;
        w.f[h]      = 1.0f;
    }
    return w;
}
template <bool W13>
static __device__ __forceinline__ void ws_rows_factors(const moe__gemm_args &g, ws_rows &w) {
    const float *f = W13 ? g.in_scale : g.rw;
#pragma unroll
    for (int h = 0; h < 2; h++)
        if (f && w.slot[h] >= 0) w.f[h] = f[w.slot[h]];
}

/* The epilogues come in three forms. WS_GENERAL checks each column
 * against the matrix's end, adds the bias if there is one and has a scalar
 * tail: fully unrolled, that is 25-45 KB of code per tile. It took ~4.8 us
 * a tile, with its stores or its activation removed as well (NOTES v23:
 * likely the fetch of that code at every tile while the producer's loads
 * keep L2 busy). WS_PLAIN, for the usual tile (no bias, every column inside
 * the matrix, vector stores aligned), is straight-line code of ~12 KB:
 * 2.3-3.0 us. WS_PLAIN_BIAS is the same tile with the expert's biases (gpt-oss),
 * loaded without checks. All give the same bits: the general form adds no
 * bias when there is none, and the same expression when there is. */
enum { WS_GENERAL, WS_PLAIN, WS_PLAIN_BIAS };

template <bool W13>
static __device__ __forceinline__ int ws_form(const moe__gemm_args &g, int64_t n0, int outw,
                                              int vec) {
    const bool inter = W13 && g.act == MOE_ACT_SWIGLU_OAI; // (weight rows 2 n0 .. 2 (n0 + outw))
    const bool plain = (inter ? 2 * (n0 + outw) <= g.N_w : n0 + outw <= g.N_out) &&
                       g.N_out % vec == 0 && ((uintptr_t)g.out & 15) == 0;
    return !plain ? WS_GENERAL : g.bias ? WS_PLAIN_BIAS : WS_PLAIN;
}

/* Expert e's biases, as the form reads them: none for WS_PLAIN. */
template <int FORM>
static __device__ __forceinline__ const float *ws_bias(const moe__gemm_args &g, int e) {
    return FORM != WS_PLAIN && g.bias ? g.bias + (int64_t)e * g.N_w : nullptr;
}

/* v plus the bias value at i as the form adds it: always (WS_PLAIN_BIAS),
 * 0 outside the matrix (WS_GENERAL with biases), or nothing. */
template <int FORM>
static __device__ __forceinline__ float ws_biased(float v, const float *bias, int64_t i,
                                                  bool inside) {
    if (FORM == WS_PLAIN_BIAS) return v + bias[i];
    if (FORM == WS_GENERAL && bias) return v + (inside ? bias[i] : 0.0f);
    return v;
}

/* The W2 output pair (acc + b2) * rw of column tile nt, row half h (tile
 * columns c, c + 1 with c = 8 nt + 2 (lane % 4)). */
template <int FORM>
static __device__ __forceinline__ float2 ws_w2_pair(const moe__gemm_args &g, const float (*acc)[4],
                                                    const float *bias, int64_t n0, int nt, int h,
                                                    float wgt, int lane) {
    const int64_t c  = n0 + nt * 8 + (lane & 3) * 2;
    const float   v0 = ws_biased<FORM>(acc[nt][2 * h], bias, c, c < g.N_out);
    const float   v1 = ws_biased<FORM>(acc[nt][2 * h + 1], bias, c + 1, c + 1 < g.N_out);
    return make_float2(v0 * wgt, v1 * wgt);
}

/* W2 epilogue of one consumer warp, its rows' slots and routing weights in
 * rw: y[slot, n0 + c] = (acc + b2) * rw[slot], f32 rows; NT column tiles of
 * 8 (the fp8 kernel's consumers hold 128 columns, grouped-gemm-ws8.cuh). */
template <int FORM, int NT = WS_BN / 8>
static __device__ __forceinline__ void ws_store_w2(const moe__gemm_args &g, const float (*acc)[4],
                                                   int e, const ws_rows &rw, int64_t n0,
                                                   int lane) {
    constexpr bool PLAIN = FORM != WS_GENERAL;
    const float   *bias  = ws_bias<FORM>(g, e);
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int s = rw.slot[h];
        if (s < 0) continue;
        float *o = (float *)g.out + (int64_t)s * g.N_out + n0;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            const int64_t c = nt * 8 + (lane & 3) * 2;
            const float2  v = ws_w2_pair<FORM>(g, acc, bias, n0, nt, h, rw.f[h], lane);
            if (PLAIN || n0 + c + 1 < g.N_out)
                *(float2 *)(o + c) = v;
            else if (n0 + c < g.N_out)
                o[c] = v.x;
        }
    }
}

/* One 8-byte store, so that a quad writes whole 32-byte sectors: from two
 * registers that are not a pair, the compiler otherwise emits two 4-byte
 * stores, each writing every other 4 bytes of 8 rows' sectors. */
static __device__ __forceinline__ void st_global_v2(void *p, uint2 v) {
    asm volatile("st.global.v2.b32 [%0], {%1, %2};\n" ::"l"(p), "r"(v.x), "r"(v.y) : "memory");
}

/* The same as bf16 rows (y_bf16). A thread's pair is 4 bytes, so a quad of
 * lanes would write 16 bytes of a row, half of each 32-byte sector; instead
 * lanes l and l ^ 1 (the same row) swap one pair of column tiles nt, nt + 1:
 * the even lane stores 4 columns of nt, the odd one 4 of nt + 1, and a quad
 * writes 32 contiguous bytes of its row, as the f32 rows' quads do. */
template <int FORM, int NT = WS_BN / 8>
static __device__ __forceinline__ void ws_store_w2_bf16(const moe__gemm_args &g,
                                                        const float (*acc)[4], int e,
                                                        const ws_rows &rw, int64_t n0, int lane) {
    constexpr bool PLAIN = FORM != WS_GENERAL;
    const float   *bias  = ws_bias<FORM>(g, e);
    const bool     odd   = lane & 1, vec = PLAIN || g.N_out % 4 == 0;
    const int      lc    = odd * 8 + ((lane & 3) >> 1) * 4; // q's first column in 16 of the tile
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int      s = rw.slot[h]; // (lanes l, l ^ 1 share it; every lane shuffles)
        __nv_bfloat16 *o = (__nv_bfloat16 *)g.out + (int64_t)max(s, 0) * g.N_out + n0 + lc;
#pragma unroll
        for (int nt = 0; nt < NT; nt += 2) {
            const __nv_bfloat162 a = __float22bfloat162_rn(
                ws_w2_pair<FORM>(g, acc, bias, n0, nt, h, rw.f[h], lane));
            const __nv_bfloat162 b = __float22bfloat162_rn(
                ws_w2_pair<FORM>(g, acc, bias, n0, nt + 1, h, rw.f[h], lane));
            const uint32_t ua = *(const uint32_t *)&a, ub = *(const uint32_t *)&b;
            const uint32_t got = __shfl_xor_sync(0xffffffffu, odd ? ua : ub, 1);
            const uint2    q   = odd ? make_uint2(got, ub) : make_uint2(ua, got);
            const int64_t  c   = n0 + nt * 8 + lc; // q's first column in the row
            if (s < 0 || (!PLAIN && c >= g.N_out)) continue;
            if (PLAIN || (vec && c + 3 < g.N_out)) {
                st_global_v2(o + nt * 8, q);
            } else {
                const __nv_bfloat16 *v = (const __nv_bfloat16 *)&q;
                for (int i = 0; i < 4 && c + i < g.N_out; i++) o[nt * 8 + i] = v[i];
            }
        }
    }
}

/* W13 epilogue of one consumer warp (rows row0 + lane / 4 (+ 8) of the
 * tile at layout row r0, valid below r1; their input scales in rw; n0: the
 * tile's first output column). Per pass of 128 output columns: the
 * activation of each (gate, up) pair into the warp's 16 x 128 staging tile
 * sw, whose 16-byte chunks are XOR-swizzled by row (chunk c of row r at
 * c ^ (r & 7)) so that the m16n8 pairs land without bank conflicts; then
 * whole-row 16-byte stores. The expressions are those of the staged f32 epilogue of the other
 * tiles (grouped-gemm.cuh), so the bits are the same. ACT is a template
 * argument: with act_apply's switch inside the loop (64 inlined copies of
 * it, a 650 KB kernel) W13 measured 40% slower than staging an f32 tile;
 * this way, 5% faster (dev/cuda/NOTES.md v17). */
template <int ACT, int FORM, class T>
static __device__ __forceinline__ void ws_store_w13(const moe__gemm_args &g, const float (*acc)[4],
                                                    int e, int r0, int r1, int row0, int64_t n0,
                                                    const ws_rows &rw, T *sw, int lane) {
    constexpr bool GATED = act_is_gated(ACT), INTER = ACT == MOE_ACT_SWIGLU_OAI;
    constexpr bool PLAIN  = FORM != WS_GENERAL;
    constexpr int  PASSES = GATED || INTER ? 1 : 2; // RELU2: 256 outputs a tile
    constexpr int  NP     = INTER ? 32 : 16;        // column tiles read per pass
    constexpr int  VEC    = 16 / sizeof(T);
    const float   *bias   = ws_bias<FORM>(g, e);
    /* weight row of tile column c, -1 past the matrix (gate half for GATED) */
    auto wrow = [&](int c) -> int64_t {
        if (INTER) return PLAIN || 2 * n0 + c < g.N_w ? 2 * n0 + c : -1;
        return PLAIN || n0 + c < g.N_out ? n0 + c : -1;
    };
    const float *sc = rw.f;
#pragma unroll
    for (int p = 0; p < PASSES; p++) {
        __syncwarp(); // the previous pass's (or tile's) reads of sw are done
        /* column tiles outside, the two row halves inside: a bias value is
         * loaded once for both rows (rows outside, ptxas spilled 30-50 bytes) */
#pragma unroll
        for (int nt = p * NP; nt < p * NP + NP; nt++) {
            const int c = nt * 8 + (lane & 3) * 2; // this thread's two tile columns
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int rr = (lane >> 2) + 8 * h; // row within the warp's 16
                float     v[2];
#pragma unroll
                for (int q = 0; q < (INTER ? 1 : 2); q++) {
                    const int64_t gr = wrow(c + q);                          // gate row
                    const int64_t ur = GATED ? (gr >= 0 ? g.N_out + gr : -1) // up row
                                             : INTER ? (gr >= 0 ? gr + 1 : -1) : gr;
                    const float gv = ws_biased<FORM>(acc[nt][2 * h + q] * sc[h], bias, gr, gr >= 0);
                    const float uv = ws_biased<FORM>((GATED   ? acc[nt + 16][2 * h + q]
                                                      : INTER ? acc[nt][2 * h + 1]
                                                              : acc[nt][2 * h + q]) * sc[h],
                                                     bias, ur, ur >= 0); // (RELU2: unused)
                    v[q] = act_apply(ACT, gv, uv, g.alpha, g.limit);
                }
                const int j = INTER ? c / 2 : c - p * 128; // output column in the pass
                T *d = sw + rr * 128 + (((j >> 3) ^ (rr & 7)) << 3) + (j & 7);
                if constexpr (INTER)
                    *d = T(v[0]);
                else
                    store2(d, v[0], v[1]);
            }
        }
        __syncwarp();
        /* (N_out is a multiple of 8 whenever the TMA maps exist: 16-byte rows) */
        const bool vec_ok = PLAIN || (g.N_out % VEC == 0 && ((uintptr_t)g.out & 15) == 0);
#pragma unroll
        for (int i = lane; i < 16 * 16; i += 32) {
            const int     rr = i >> 4, cc = i & 15, r = r0 + row0 + rr;
            const int64_t col = n0 + p * 128 + cc * VEC;
            if (r >= r1 || (!PLAIN && col >= g.N_out)) continue;
            T       *o = (T *)g.out + (int64_t)r * g.N_out + col;
            const T *s = sw + rr * 128 + ((cc ^ (rr & 7)) << 3);
            if (vec_ok)
                *(int4 *)o = *(const int4 *)s;
            else
                for (int q = 0; q < VEC && col + q < g.N_out; q++) o[q] = s[q];
        }
    }
}

/* A persistent CTA's tile: rows [r0, r1) of expert e, output columns from n0. */
struct ws_step {
    int     e, r0, r1;
    int64_t n0;
};

/* ws_store_w13 with the layer's activation as its template argument. */
template <int FORM, class T>
static __device__ __forceinline__ void ws_store_w13_act(const moe__gemm_args &g,
                                                        const float (*acc)[4], const ws_step &t,
                                                        int row0, const ws_rows &rows, T *sw,
                                                        int lane) {
    switch (g.act) {
    case MOE_ACT_SILU:
        return ws_store_w13<MOE_ACT_SILU, FORM>(g, acc, t.e, t.r0, t.r1, row0, t.n0, rows, sw,
                                                lane);
    case MOE_ACT_GELU:
        return ws_store_w13<MOE_ACT_GELU, FORM>(g, acc, t.e, t.r0, t.r1, row0, t.n0, rows, sw,
                                                lane);
    case MOE_ACT_GELU_TANH:
        return ws_store_w13<MOE_ACT_GELU_TANH, FORM>(g, acc, t.e, t.r0, t.r1, row0, t.n0, rows,
                                                     sw, lane);
    case MOE_ACT_SWIGLU_OAI:
        return ws_store_w13<MOE_ACT_SWIGLU_OAI, FORM>(g, acc, t.e, t.r0, t.r1, row0, t.n0, rows,
                                                      sw, lane);
    default:
        return ws_store_w13<MOE_ACT_RELU2, FORM>(g, acc, t.e, t.r0, t.r1, row0, t.n0, rows, sw,
                                                 lane);
    }
}

/* The W2 epilogue in its form (ws_form) and output type. */
template <int FORM, int NT = WS_BN / 8>
static __device__ __forceinline__ void ws_store_w2_form(const moe__gemm_args &g,
                                                        const float (*acc)[4], const ws_step &t,
                                                        const ws_rows &rows, int lane) {
    if (g.y_bf16)
        ws_store_w2_bf16<FORM, NT>(g, acc, t.e, rows, t.n0, lane);
    else
        ws_store_w2<FORM, NT>(g, acc, t.e, rows, t.n0, lane);
}

/* ws_store_w2_form in the form of the NT x 8 columns from t.n0 (ws_form). */
template <int NT = WS_BN / 8>
static __device__ __forceinline__ void ws_store_w2_any(const moe__gemm_args &g,
                                                       const float (*acc)[4], const ws_step &t,
                                                       const ws_rows &rows, int lane) {
    switch (ws_form<false>(g, t.n0, NT * 8, g.y_bf16 ? 4 : 2)) {
    case WS_PLAIN: return ws_store_w2_form<WS_PLAIN, NT>(g, acc, t, rows, lane);
    case WS_PLAIN_BIAS: return ws_store_w2_form<WS_PLAIN_BIAS, NT>(g, acc, t, rows, lane);
    default: return ws_store_w2_form<WS_GENERAL, NT>(g, acc, t, rows, lane);
    }
}

/* The tile a CTA takes at its step i: waves of one tile per CTA in the
 * grouped order (gemm_tile_at), the CTA's place in the wave rotated by one
 * per wave when the grid is even. With plain striding a CTA would get the
 * same M tile modulo GEMM_GROUP_M at every step (132 = 4 mod 8): where
 * experts' tiles alternate full and nearly empty, half the CTAs would get
 * all the full ones (measured: mixtral-8x7b T >= 1024 3-4% faster with the
 * rotation, dev/cuda/NOTES.md v17).
 *
 * It is read in two parts, each one dependent global read: ws_ahead_table
 * (the tile table's entry: expert and first row) and ws_ahead_end (the
 * expert's end row), then ws_ahead_step makes the step of them. The
 * consumers read the next step's parts while the K loop of the current one
 * runs: read at the step's start, the two reads kept them from their first
 * stage for ~1 us a step (NOTES v23). The producer, which runs stages
 * ahead, reads them at once (ws_step_at). */
struct ws_ahead {
    bool ok; // the step exists: false past the last tile
    int  m, n, e, r0, end;
};
template <bool PAIR, int BM>
static __device__ __forceinline__ void ws_ahead_table(const moe__gemm_args &g, int i, int n_m,
                                                      ws_ahead &a) {
    constexpr int TR  = PAIR ? 2 * BM : BM;              // layout rows per tile table entry
    const int     G   = (int)gridDim.x / (PAIR ? 2 : 1);  // clusters of PAIR CTAs
    const int     me  = (int)blockIdx.x / (PAIR ? 2 : 1); // (a cluster's CTAs are consecutive)
    const int     lin = i * G + (me + i * (1 - (G & 1))) % G;
    a.ok              = lin < n_m * g.grid_n;
    if (!a.ok) return;
    gemm_tile_at(lin, n_m, g.grid_n, a.m, a.n);
    gemm_tile_start(g, a.m, TR, a.e, a.r0);
}
static __device__ __forceinline__ void ws_ahead_end(const moe__gemm_args &g, ws_ahead &a) {
    if (a.ok) a.end = gemm_expert_end(g, a.e);
}
/* (gemm_tile_rows's rows, and a pair's CTA's half of them) */
template <bool PAIR, int BM>
static __device__ __forceinline__ bool ws_ahead_step(const ws_ahead &a, int outw, int rank,
                                                     ws_step &t) {
    constexpr int TR = PAIR ? 2 * BM : BM;
    if (!a.ok) return false;
    t.e  = a.e;
    t.r0 = a.r0;
    t.r1 = min(a.end, a.r0 + TR);
    if (PAIR) { // this CTA's half of the 256 rows; none when the tile has fewer
        t.r0 += rank * BM;
        t.r1 = t.r0 + max(0, min(t.r1 - t.r0, BM));
    }
    t.n0 = (int64_t)a.n * outw;
    return true;
}
template <bool PAIR, int BM>
static __device__ __forceinline__ bool ws_step_at(const moe__gemm_args &g, int i, int n_m,
                                                  int outw, int rank, ws_step &t) {
    ws_ahead a;
    ws_ahead_table<PAIR, BM>(g, i, n_m, a);
    ws_ahead_end(g, a);
    return ws_ahead_step<PAIR, BM>(a, outw, rank, t);
}

/* A W2 producer's start: before the PDL wait (W13 may still run; the
 * grouping W2 reads first is complete) its thread 0 issues the weight
 * stages of the CTA's first tile by load_B(t, kt, stage); then the wait.
 * Returns how many stages it issued (0 for W13, which waited at the start). */
template <bool W13, bool PAIR, int BM, class LoadB>
static __device__ __forceinline__ int ws_w2_start(const moe__gemm_args &g, int ct, int n_m,
                                                  int outw, int rank, int stages, int KT,
                                                  LoadB load_B) {
    int early = 0;
    if (!W13) {
        ws_step t;
        if (ct == 0 && ws_step_at<PAIR, BM>(g, 0, n_m, outw, rank, t))
            for (; early < stages && early < KT; early++) load_B(t, early, early);
        pdl_wait();
        pdl_launch();
    }
    return early;
}

/* The A row of layout row r (below its tile's end): the token W13 gathers,
 * or r. */
static __device__ __forceinline__ int64_t ws_a_row(const moe__gemm_args &g, int r) {
    return g.gather ? gemm_row_slot(g, r) / g.a_div : r;
}

/* A producer thread's share of the activation rows of every stage: its
 * 16-byte chunk ch = ct % 8 of rows ct / 8 + 16 j of the BM-row stage
 * (W13 gathers them by token); kbytes: a row's bytes. Also the fp8 kernel's
 * (grouped-gemm-ws8.cuh). */
template <int BM> struct ws_a_rows {
    uint32_t    dst[BM / 16]; // in stage 0
    const char *src[BM / 16]; // this tile's rows, nullptr past its end
    int         ch;
    __device__ __forceinline__ ws_a_rows(const char *sA, int ct) : ch(ct & 7) {
#pragma unroll
        for (int j = 0; j < BM / 16; j++) {
            const int r = (ct >> 3) + 16 * j;
            dst[j]      = smem_u32(sA) + r * 128 + ((ch ^ (r & 7)) << 4);
        }
    }
    __device__ __forceinline__ void tile(const moe__gemm_args &g, const ws_step &t, int ct,
                                         int64_t kbytes) {
#pragma unroll
        for (int j = 0; j < BM / 16; j++) {
            const int r   = t.r0 + (ct >> 3) + 16 * j;
            src[j] = r < t.r1 ? (const char *)g.a + ws_a_row(g, r) * kbytes + ch * 16 : nullptr;
        }
    }
    /* cp.async of K slice kt into stage st (zeros past the rows and K) */
    __device__ __forceinline__ void load(const moe__gemm_args &g, int kt, int st,
                                         int64_t kbytes) const {
        const int64_t kb  = (int64_t)kt * 128;
        const bool    kok = kb + ch * 16 < kbytes;
#pragma unroll
        for (int j = 0; j < BM / 16; j++) {
            const bool ok = kok && src[j] != nullptr;
            cp_async16(dst[j] + (uint32_t)st * BM * 128, ok ? src[j] + kb : g.a, ok ? 16 : 0);
        }
    }
};

template <int DT, bool W13, bool PAIR, int NC>
static __global__ void __launch_bounds__(ws_shape<NC>::THREADS)
    grouped_gemm_ws_kernel(const __grid_constant__ moe__gemm_args g) {
    using S = ws_shape<NC>;
    constexpr int BM = S::BM, BN = WS_BN, STAGES = S::STAGES, NCONS = 128 * NC;
    constexpr int BOXES = BN / TMA_BOX_ROWS;
    using T = std::conditional_t<DT == MOE_CUDA_F16, __half, __nv_bfloat16>;
    extern __shared__ __align__(128) char smem_raw[];
    char *smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
    char *sA   = smem;                                   // (STAGES, BM, 128 bytes)
    char *sB   = sA + (size_t)STAGES * BM * 128;         // (STAGES, BN, 128 bytes)
    T    *sO   = (T *)(sB + (size_t)STAGES * BN * 128);  // W13: (4 NC warps, 16, 128)
    const uint32_t full0  = smem_u32(sB + (size_t)STAGES * BN * 128) + (W13 ? S::OUT_BYTES : 0);
    const uint32_t empty0 = full0 + 8 * STAGES;

    const int rank = PAIR ? cluster_rank() : 0;
    if (threadIdx.x == 0) {
        /* full: the producer's 128 cp.async arrivals + its TMA thread's;
         * empty: one arrival per consumer warp (of both CTAs of a pair) */
        for (int s = 0; s < STAGES; s++) {
            mbar_init(full0 + 8 * s, 128 + 1);
            mbar_init(empty0 + 8 * s, (PAIR ? 2 : 1) * NCONS / 32);
        }
        mbar_init_fence();
    }
    /* (a pair: the other CTA's copies and arrivals may come once this returns) */
    if (PAIR)
        cluster_sync();
    else
        __syncthreads();
    /* Programmatic dependent launch (see grouped-gemm.cuh): W13 waits
     * first; W2 only reads the grouping (complete) before its wait, so its
     * producer streams the first tile's weight stages while W13 ends. */
    if (W13) {
        pdl_wait();
        pdl_launch();
    }

    constexpr int TR     = PAIR ? 2 * BM : BM; // layout rows per entry of the tile table
    const int     n_m    = g.tiles ? *g.n_tiles : (int)((g.n_rows + TR - 1) / TR);
    const int     outw   = gemm_out_cols(g.act, W13, BN);
    const int     groups = (int)gridDim.x / (PAIR ? 2 : 1); // CTAs or pairs
    const int     waves  = (n_m * g.grid_n + groups - 1) / groups;
    const int64_t kbytes = g.K * 2;
    const int     KT     = (int)((kbytes + 127) / 128);
    const bool    gated  = W13 && act_is_gated(g.act), inter = W13 && g.act == MOE_ACT_SWIGLU_OAI;
    const int     warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    /* (a shuffle from lane 0: the role is warp-uniform to the compiler, or
     * ptxas serializes every wgmma of the kernel) */
    const bool producer = __shfl_sync(0xffffffffu, (int)threadIdx.x, 0) >= NCONS;

    if (producer) {
        if (NC == 2) ws_regs_dec();
        const int     ct = threadIdx.x - NCONS;
        ws_a_rows<BM> ar(sA, ct);
        /* the weight stage: BOXES boxes of TMA_BOX_ROWS rows (a gated tile:
         * half from the gate half of the map, half from up); a pair's CTA
         * loads its half of the boxes into both CTAs, and expects all */
        auto load_B = [&](const ws_step &t, int kt, int st) {
            const uint32_t bar = full0 + 8 * st, dst = smem_u32(sB + (size_t)st * BN * 128);
            mbar_expect_bytes(bar, BN * 128);
            constexpr int NB = PAIR ? BOXES / 2 : BOXES;
#pragma unroll
            for (int b = rank * NB; b < rank * NB + NB; b++) {
                const int h = gated && b >= BOXES / 2;
                const int r = (int)(inter ? 2 * t.n0 : t.n0) + (b - h * BOXES / 2) * TMA_BOX_ROWS;
                if (PAIR)
                    tma_load_4d_multicast(dst + b * TMA_BOX_ROWS * 128, &g.w_map, bar, kt * 128,
                                          r, h, t.e, 3);
                else
                    tma_load_4d(dst + b * TMA_BOX_ROWS * 128, &g.w_map, bar, kt * 128, r, h,
                                t.e);
            }
        };
        const int early = ws_w2_start<W13, PAIR, BM>(g, ct, n_m, outw, rank, STAGES, KT, load_B);
        int it = 0; // stages filled so far, over all tiles
        for (int i = 0; i < waves; i++) {
            ws_step t;
            if (!ws_step_at<PAIR, BM>(g, i, n_m, outw, rank, t)) continue;
            ar.tile(g, t, ct, kbytes);
            for (int kt = 0; kt < KT; kt++, it++) {
                const int st = it % STAGES;
                if (it >= STAGES) mbar_wait(empty0 + 8 * st, (uint32_t)(it / STAGES - 1) & 1);
                if (ct == 0 && it >= early) load_B(t, kt, st);
                ar.load(g, kt, st, kbytes);
                cp_async_arrive_noinc(full0 + 8 * st);
            }
        }
    } else {
        if (NC == 2) ws_regs_inc();
        if (!W13) {
            pdl_wait();
            pdl_launch();
        }
        const int      wg    = warp / 4;                  // the warpgroup's 64-row half
        const int      row0  = 64 * wg + 16 * (warp % 4); // the warp's 16 rows
        const uint32_t a_off = (uint32_t)wg * 64 * 128;
        T             *sw    = sO + warp * 16 * 128;
        int            it    = 0;
        auto full_wait = [&](int i) {
            mbar_wait(full0 + 8 * (i % STAGES), (uint32_t)(i / STAGES) & 1);
        };
        auto release = [&](int i) { // the stage of step i is read (in both CTAs of a pair)
            if (lane == 0) {
                mbar_arrive(empty0 + 8 * (i % STAGES));
                if (PAIR) mbar_arrive_cluster(empty0 + 8 * (i % STAGES), rank ^ 1);
            }
        };
        ws_ahead nx; // the next step's tile, read during the current step
        ws_ahead_table<PAIR, BM>(g, 0, n_m, nx);
        ws_ahead_end(g, nx);
        for (int i = 0; i < waves; i++) {
            ws_step t;
            if (!ws_ahead_step<PAIR, BM>(nx, outw, rank, t)) continue;
            ws_ahead_table<PAIR, BM>(g, i + 1, n_m, nx);
            const bool busy = __shfl_sync(0xffffffffu, 64 * wg < t.r1 - t.r0, 0);
            ws_rows    rows = ws_rows_at(g, t.r0, t.r1, row0, lane);
            float      acc[BN / 8][4];
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++)
#pragma unroll
                for (int q = 0; q < 4; q++) acc[nt][q] = 0.0f;
            /* (two loops: a wgmma under a branch inside the loop is serialized) */
            if (busy) {
                for (int kt = 0; kt < KT; kt++, it++) {
                    const int st = it % STAGES;
                    full_wait(it);
                    fence_proxy_async(); // the producer's cp.async bytes, for wgmma's reads
                    const uint32_t a_wg = smem_u32(sA + (size_t)st * BM * 128) + a_off;
                    const uint32_t b_wg = smem_u32(sB + (size_t)st * BN * 128);
                    wgmma_fence();
#pragma unroll
                    for (int ks = 0; ks < 4; ks++)
                        wgmma_step<DT, BN, true>(&acc[0][0], wgmma_desc(a_wg + ks * 32),
                                                 wgmma_desc(b_wg + ks * 32));
                    wgmma_commit();
                    if (kt == KT / 2) { // (reads issued while the batch runs)
                        ws_ahead_end(g, nx);
                        ws_rows_factors<W13>(g, rows);
                    }
                    wgmma_wait<1>(); // the previous step's batch is done: hand its stage back
                    if (kt > 0) release(it - 1);
                }
                wgmma_wait<0>();
                release(it - 1);
            } else {
                for (int kt = 0; kt < KT; kt++, it++) {
                    full_wait(it);
                    release(it);
                    if (kt == KT / 2) ws_ahead_end(g, nx);
                }
            }
            if (__shfl_sync(0xffffffffu, row0 >= t.r1 - t.r0, 0)) continue; // all rows padding
            if constexpr (!W13) {
                ws_store_w2_any(g, acc, t, rows, lane);
            } else {
                switch (ws_form<true>(g, t.n0, outw, 16 / sizeof(T))) {
                case WS_PLAIN: ws_store_w13_act<WS_PLAIN>(g, acc, t, row0, rows, sw, lane); break;
                case WS_PLAIN_BIAS:
                    ws_store_w13_act<WS_PLAIN_BIAS>(g, acc, t, row0, rows, sw, lane);
                    break;
                default: ws_store_w13_act<WS_GENERAL>(g, acc, t, row0, rows, sw, lane);
                }
            }
        }
    }
    /* no producer thread leaves while its copies may be in flight: the
     * consumers waited for every stage; nor a pair's CTA while the other
     * may still arrive on its barriers */
    if (PAIR)
        cluster_sync();
    else
        __syncthreads();
}

/* The persistent tile (PAIR: in two-CTA clusters; NC consumer warpgroups,
 * ws_shape): setup() raises both kernels' shared-memory limits; launch()
 * starts one CTA per multiprocessor (a pair: as many clusters as fit at
 * once, g->pair_ctas CTAs, found by ws_pair_ctas), or fewer when the layout
 * can have fewer tiles. */
template <int DT, bool PAIR, int NC = 2> struct gemm_ws_tile {
    static_assert(NC == 2 || !PAIR, "pairs share 128-row halves");
    template <bool W13> static cudaError_t setup_one() {
        return cudaFuncSetAttribute(grouped_gemm_ws_kernel<DT, W13, PAIR, NC>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)ws_smem_bytes<W13, NC>());
    }
    static cudaError_t setup() {
        cudaError_t e = setup_one<true>();
        return e != cudaSuccess ? e : setup_one<false>();
    }
    template <bool W13> static cudaError_t launch_one(const moe__gemm_args *g, cudaStream_t st) {
        return gemm_start(grouped_gemm_ws_kernel<DT, W13, PAIR, NC>, g, W13, WS_BN,
                          ws_shape<NC>::THREADS, ws_smem_bytes<W13, NC>(),
                          PAIR ? g->pair_ctas : g->n_sm, st, PAIR ? 2 : 1);
    }
    static cudaError_t launch(const moe__gemm_args *g, cudaStream_t st) {
        return g->w13 ? launch_one<true>(g, st) : launch_one<false>(g, st);
    }
};

/* CTAs of the two-CTA clusters of the paired kernel that the device runs at
 * once (W13's, the larger shared memory), after setup(); 0 if none. */
template <int DT> static cudaError_t ws_pair_ctas(int *n) {
    cudaLaunchAttribute      a;
    const cudaLaunchConfig_t cfg =
        launch_config(dim3(2), dim3(WS_THREADS), ws_smem_bytes<true>(), 0, false, &a, 2);
    int         clusters = 0;
    cudaError_t e =
        cudaOccupancyMaxActiveClusters(&clusters, grouped_gemm_ws_kernel<DT, true, true, 2>, &cfg);
    *n = e == cudaSuccess ? 2 * clusters : 0;
    return e;
}

#endif /* MOE_CUDA_GROUPED_GEMM_WS_CUH */
