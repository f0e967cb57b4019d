/*
 * common.cuh - what every CUDA op of libmoe shares: the error macro, element
 * types, warp reductions, cp.async / ldmatrix / mma wrappers, and the list
 * of every launcher (the whole CUDA surface in one place, DeepEP api.cuh).
 *
 * Launchers are `<op>_cuda(raw device pointers, sizes, cudaStream_t)` and
 * return cudaError_t (cudaGetLastError() after the launch); src/cuda/cuda.cu
 * turns a failure into MOE_ERR_CUDA with the CUDA message on the layer.
 */
#ifndef MOE_CUDA_COMMON_CUH
#define MOE_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda.h> /* CUtensorMap (a type only: the driver call goes through an entry point) */
#include <cuda_runtime.h>
#include <stdint.h>

/* internal.h is C11; _Noreturn is spelled [[noreturn]] in C++. */
#ifndef _Noreturn
#define _Noreturn [[noreturn]]
#endif
extern "C" {
#include "internal.h"
}
#include "../quant/quant-blocks.h"


/* Element types of the compute path: weights and the activations fed to the
 * tensor cores share one type. */
enum moe__cuda_dtype { MOE_CUDA_BF16 = 0, MOE_CUDA_F16 = 1, MOE_CUDA_FP8 = 2 };

/* fp8 block geometry of MOE_FORMAT_FP8_BLOCK (weights) and of the dynamic
 * per-token-group activation quantization. */
#define MOE_CUDA_QBLOCK MOE_FP8_BLOCK
#define MOE_CUDA_FP8_MAX MOE_FP8_MAX
/* Smallest amax used for an activation group scale, as src/quant/fp8.c's
 * group_scale (vLLM's per_token_group_quant_fp8). */
#define MOE_CUDA_AMAX_EPS 1e-10f

/* Returns MOE_ERR_CUDA from the enclosing function, with the CUDA message in
 * (err, errlen), when the call fails. */
#define MOE_CUDA_TRY(call, err, errlen)                                                 \
    do {                                                                                \
        cudaError_t e_ = (call);                                                        \
        if (e_ != cudaSuccess)                                                          \
            return moe__errf((err), (errlen), MOE_ERR_CUDA, "cuda: %s: %s (%s:%d)", #call, \
                             cudaGetErrorString(e_), __FILE__, __LINE__);               \
    } while (0)

// ---- device helpers

static __device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Reads one element of an activation tensor in F32, BF16 or F16 storage. */
static __device__ __forceinline__ float load_io(const void *p, int64_t i, int fmt) {
    if (fmt == MOE_FORMAT_BF16) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    if (fmt == MOE_FORMAT_F16) return __half2float(((const __half *)p)[i]);
    return ((const float *)p)[i];
}
static __device__ __forceinline__ void store_io(void *p, int64_t i, int fmt, float v) {
    if (fmt == MOE_FORMAT_BF16) ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
    else if (fmt == MOE_FORMAT_F16) ((__half *)p)[i] = __float2half_rn(v);
    else ((float *)p)[i] = v;
}

/* Programmatic dependent launch: wait for the grids this one depends on
 * (complete, memory visible); let the next grid in the stream launch. Both
 * are no-ops for a grid launched without the PDL attribute. */
static __device__ __forceinline__ void pdl_wait() {
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
}
static __device__ __forceinline__ void pdl_launch() {
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}

/* A launch on st; with pdl, as a programmatic dependent of the stream's
 * previous kernel; with cluster > 1, in clusters of that many consecutive
 * CTAs. attr holds the attributes (room for two when both are asked for);
 * it must outlive the launch call. */
static inline cudaLaunchConfig_t launch_config(dim3 grid, dim3 block, size_t smem,
                                               cudaStream_t st, bool pdl,
                                               cudaLaunchAttribute *attr,
                                               unsigned cluster = 1) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim          = grid;
    cfg.blockDim         = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream           = st;
    cfg.attrs            = attr;
    if (pdl) {
        attr[cfg.numAttrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[cfg.numAttrs].val.programmaticStreamSerializationAllowed = 1;
        cfg.numAttrs++;
    }
    if (cluster > 1) {
        attr[cfg.numAttrs].id             = cudaLaunchAttributeClusterDimension;
        attr[cfg.numAttrs].val.clusterDim = { cluster, 1, 1 };
        cfg.numAttrs++;
    }
    return cfg;
}

static __device__ __forceinline__ uint32_t smem_u32(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}
/* 16-byte async copy; src_bytes = 0 fills the destination with zeros. */
static __device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(src_bytes));
}
static __device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::);
}
template <int N> static __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
static __device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t &r0, uint32_t &r1,
                                                   uint32_t &r2, uint32_t &r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
/* D += A . B for one 16x8 tile; the k extent is 32 bytes of operands: 16
 * bf16/f16 or 32 e4m3. The operand registers have the same byte layout for
 * the three types, so one set of ldmatrix loads serves all. */
template <int DT>
static __device__ __forceinline__ void mma_16x8(float *d, const uint32_t *a, const uint32_t *b) {
    if (DT == MOE_CUDA_BF16) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else if (DT == MOE_CUDA_F16) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
}

/* e4m3 quantization of one activation group of up to 128 values by a warp
 * (src/quant/fp8.c's group quantization): lane l holds v (4) = values 4l ..
 * 4l+3 (zeros past the group's end) and stores those of them below n_valid
 * to q[4l..]; scale = max(amax, 1e-10) / 448, q = e4m3(v / scale) saturated.
 * Returns the scale to every lane. */
static __device__ __forceinline__ float quant_group_warp(const float *v, int n_valid, uint8_t *q) {
    const int lane = threadIdx.x & 31;
    float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
    amax = warp_max(amax);
    const float scale = fmaxf(amax, MOE_CUDA_AMAX_EPS) / MOE_CUDA_FP8_MAX;
#pragma unroll
    for (int i = 0; i < 4; i++)
        if (lane * 4 + i < n_valid)
            q[lane * 4 + i] = __nv_cvt_float_to_fp8(v[i] / scale, __NV_SATFINITE, __NV_E4M3);
    return scale;
}

/* Whether act reads W13 as a gate half then an up half (SWIGLU_OAI
 * interleaves them, RELU2 has no gate). */
static __host__ __device__ constexpr bool act_is_gated(int act) {
    return act == MOE_ACT_SILU || act == MOE_ACT_GELU || act == MOE_ACT_GELU_TANH;
}

/* Activation of the W13 epilogue, fp32. g = gate (or the single value of
 * RELU2), u = up. The sigmoids use the fast exponential and division
 * (ex2.approx, rcp.approx): the precise ones cost ~25 instructions a value,
 * run 64 times per thread in the prefill tiles' epilogue while the tensor
 * cores wait (dev/cuda/NOTES.md v21). Their error (~1e-6 relative; a zero
 * where exp(-g) > 2^126, i.e. for silu values under 1e-36) is far below
 * the bf16 rounding of the result. */
static __device__ __forceinline__ float act_apply(int act, float g, float u, float alpha,
                                                  float limit) {
    switch (act) {
    case MOE_ACT_SILU: return __fdividef(g, 1.0f + __expf(-g)) * u;
    case MOE_ACT_GELU: return 0.5f * g * (1.0f + erff(g * 0.70710678118654752f)) * u;
    case MOE_ACT_GELU_TANH: {
        float c = 0.79788456080286536f * (g + 0.044715f * g * g * g);
        return 0.5f * g * (1.0f + tanhf(c)) * u;
    }
    case MOE_ACT_SWIGLU_OAI: {
        g = fminf(g, limit);
        u = fminf(fmaxf(u, -limit), limit);
        return (u + 1.0f) * __fdividef(g, 1.0f + __expf(-alpha * g));
    }
    default: { float r = fmaxf(g, 0.0f); return r * r; } /* RELU2 */
    }
}

// ---- launchers (one entry per op file)

/* route.cu: logits (T, E) = x (T, H) . gate^T + gate_bias, fp32 sequential
 * sum over H. */
cudaError_t moe__router_logits_cuda(const void *x, int x_fmt, const float *gate_w,
                                    const float *gate_b, float *logits, int64_t T, int32_t E,
                                    int64_t H, cudaStream_t st);
/* route.cu: topk_ids, topk_w (T, k) from logits (T, E) with the router's
 * options; bias (E) device copy or NULL. */
cudaError_t moe__route_cuda(const moe_router_options *o, const float *bias, const float *logits,
                            int64_t T, int32_t *ids, float *w, cudaStream_t st);

/* align.cu: the contiguous layout. For BM-row tiles: expert_start
 * (n_local + 1), row_slot (T k), slot_row (T k: row of a slot or -1 when its
 * expert is not held), tile table (tiles, 2) = (expert, first row) and
 * n_tiles (1). */
typedef struct moe__align_out {
    int32_t *expert_start, *row_slot, *slot_row, *tiles, *n_tiles;
    int32_t *scratch;   /* moe__align_scratch_size bytes                         */
} moe__align_out;
/* Workspace bytes align needs for n_slots slots (0 for the one-block path). */
size_t moe__align_scratch_size(int64_t n_slots, int32_t n_local);
cudaError_t moe__align_cuda(const int32_t *ids, int64_t T, int32_t k, const int32_t *expert_map,
                            int32_t n_global, int32_t n_local, int BM, int64_t max_tiles,
                            const moe__align_out *o, cudaStream_t st);
/* Raises align's shared-memory limit for n_local experts; once, before capture. */
cudaError_t moe__align_setup_cuda(int32_t n_local);

/* grouped-gemm-*.cu: one grouped GEMM of a contiguous layout.
 *   C[row, n] = sum_k A[src(row), k] * W[expert(row)][wrow(n), k]
 * with the W13 epilogue (activation, output in the compute type, fp8 with
 * per-row group-128 scales) or the W2 epilogue (bias, times a row weight,
 * f32 store at the row's slot). */
typedef struct moe__gemm_args {
    int            dtype;         /* MOE_CUDA_*                                          */
    int            w13;           /* 1: W13 epilogue, 0: W2 epilogue                      */
    int            act;           /* moe_activation (W13)                                 */
    float          alpha, limit;  /* SWIGLU_OAI                                           */
    int            BM;            /* tile rows: 16 (decode), 32, 64 or 128; 256: pairs of
                                   * 128-row tiles (the tile table's rows, bf16/f16 on
                                   * wgmma only: grouped-gemm-ws.cuh)                    */
    int            wgmma;         /* wgmma + TMA tiles (sm_90a device, w_map made), else
                                   * mma.sync + cp.async                                  */
    int            ws64;          /* BM 64 on wgmma: the persistent kernel with one
                                   * consumer warpgroup (grouped-gemm-ws.cuh), not the
                                   * one-warpgroup tile of grouped-gemm.cuh               */
    /* A: rows of activations. gather: A row of layout row r is
     * row_slot[r] / a_div (tokens), else r. */
    const void    *a;             /* (a_rows, K) compute type                             */
    const float   *a_scale;       /* fp8: (a_rows, ceil(K/128))                           */
    const int32_t *row_slot;      /* (n_rows) or NULL: row r is slot r                    */
    int32_t        a_div;         /* top_k for W13 of routed experts, else 1              */
    int            gather;        /* A indexed through row_slot / a_div                   */
    /* W: (n_experts, N_w, K) compute type; fp8 scales (n_experts, ceil(N_w/128),
     * ceil(K/128)); bias (n_experts, N_w) f32 or NULL. */
    const void    *w;
    const float   *w_scale;
    const float   *bias;
    int64_t        N_w, K;
    int64_t        N_out;         /* output columns: d_ff (W13) or d_model (W2)           */
    /* layout: expert_start (n_experts + 1), tile table, or tiles == NULL for
     * one expert with rows [0, n_rows) */
    const int32_t *expert_start;
    const int32_t *tiles;
    const int32_t *n_tiles;
    int64_t        max_tiles;
    int64_t        n_rows;
    /* W13: per-slot factor before the activation (Llama-4) or NULL; out
     * (n_rows, N_out) compute type + fp8 scales (n_rows, ceil(N_out/128)).
     * W2: out (slots, N_out) at row_slot[r], f32 or (y_bf16) bf16; row weight
     * rw[slot] or NULL. */
    const float   *in_scale;
    const float   *rw;
    void          *out;
    float         *out_scale;
    int            out_f32;       /* fp8 W13: store f32 rows (decode, quantized after)  */
    int            y_bf16;        /* W2: store bf16 rows (the layer's output is bf16)   */
    int            wide_w2;       /* fp8 W2 prefill, 64+ rows per expert on average: the
                                   * warp-specialized 64 x 256 tile where the persistent
                                   * one does not fit (grouped-gemm-ws8.cuh)            */
    int            grid_n;        /* set by the launcher: CTAs along N                  */
    int            n_sm;          /* the device's multiprocessors                       */
    int            pair_ctas;     /* BM 256: CTAs of the two-CTA clusters that fit      */
    int            pdl;           /* launch as a programmatic dependent of the previous
                                   * kernel in the stream (see grouped-gemm.cuh)         */
    /* wgmma tiles: W's stages come by TMA through this map of W (tma.cuh;
     * made at upload by cuda.cu): {K bytes, rows, halves, experts}, the
     * halves of a gated W13 being its gate and up rows (N_out each). */
    CUtensorMap    w_map;
} moe__gemm_args;
cudaError_t moe__grouped_gemm_bf16_cuda(const moe__gemm_args *g, cudaStream_t st);
cudaError_t moe__grouped_gemm_fp8_cuda(const moe__gemm_args *g, cudaStream_t st);
/* Raise the kernels' dynamic shared-memory limits; once, before capture.
 * pair_ctas (NULL where the sm_90a kernels do not run): set to
 * moe__gemm_args.pair_ctas for this device (0: no pairs). */
cudaError_t moe__grouped_gemm_bf16_setup_cuda(int *pair_ctas);
cudaError_t moe__grouped_gemm_fp8_setup_cuda(void);

/* prepare (finalize.cu): xq (T, H) in the compute type (+ fp8 group scales
 * xs (T, ceil(H/128))) from x in io_fmt, unless xq is NULL; sg (T) =
 * sigmoid(x . gate) when gate. */
cudaError_t moe__prepare_x_cuda(const void *x, int io_fmt, int64_t T, int64_t H, int dtype,
                                void *xq, float *xs, const float *gate, float *sg,
                                cudaStream_t st);
/* decode-prologue.cu: routing (when route) and grouping of a small batch
 * in one launch of one block: the work of moe__route_cuda and
 * moe__align_cuda. */
typedef struct moe__prologue_args {
    moe_router_options o;
    const float       *bias, *logits;
    int64_t            T;
    int32_t           *ids;
    float             *w;
    int                route;
    const int32_t     *map;
    int32_t            n_global, n_local;
    int                BM;
    int64_t            max_tiles;
    moe__align_out     ao;
    int                after_prepare; /* the previous launch is prepare (x -> xq): run
                                       * alongside it, done only when it is */
} moe__prologue_args;
/* Shared-memory bytes the prologue needs; 0 when it cannot run (too large). */
size_t      moe__decode_prologue_smem(const moe_router_options *o, int32_t n_local);
cudaError_t moe__decode_prologue_setup_cuda(size_t smem);
cudaError_t moe__decode_prologue_cuda(const moe__prologue_args *a, cudaStream_t st);

/* finalize.cu: out[t] = sum_j y[t k + j] over held slots (slot_row >= 0), in
 * slot order, f32, + shared_y[t] when not NULL; stored in io_fmt. y holds
 * f32 rows, or bf16 ones with y_bf16. With by_row the rows are
 * y[slot_row[t k + j]] instead (expert parallel: outputs come back in send
 * order). */
cudaError_t moe__finalize_cuda(const void *y, int y_bf16, const int32_t *slot_row,
                               const float *shared_y, int64_t T, int32_t k, int64_t H, void *out,
                               int io_fmt, int pdl, int by_row, cudaStream_t st);

#endif /* MOE_CUDA_COMMON_CUH */
