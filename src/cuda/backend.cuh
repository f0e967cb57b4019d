/*
 * backend.cuh - the CUDA backend's state objects and the pieces of the
 * forward that the single-device forward (cuda.cu) and the expert-parallel
 * forward (ep.cu) share: the experts GEMM pair, tile sizing and the
 * workspace plan.
 */
#ifndef MOE_CUDA_BACKEND_CUH
#define MOE_CUDA_BACKEND_CUH

#include "common.cuh"

extern "C" {
#include "../ep/ep.h"
}

/* Device buffers are carved at this alignment. */
#define WS_ALIGN 256

typedef struct cuda_ctx {
    int          device;
    cudaStream_t main, aux;
    int          own_main;
    cudaEvent_t  fork, join;
    int          wgmma;   /* compute capability 9.0: the build's sm_90a kernels run */
    int          n_sm;    /* multiprocessors (the fp8 decode tile width)             */
    int          pair_ctas; /* CTAs of the paired prefill kernel's clusters that fit at
                             * once (moe__gemm_args.pair_ctas); 0: no pairs         */
} cuda_ctx;

/* One experts object on the device (routed experts, or the one expert of
 * shared experts plus their gate). Everything lives in one allocation. */
typedef struct cuda_experts {
    int      dtype;               /* MOE_CUDA_*                                        */
    int32_t  n_local, n_global;
    int64_t  H, I, n13;           /* d_model, d_ff, rows of W13                        */
    void    *w13, *w2;            /* (n_local, n13, H), (n_local, H, I)                */
    float   *s13, *s2;            /* fp8 block scales, or NULL                         */
    float   *b13, *b2;            /* biases (n_local, n13), (n_local, H) or NULL       */
    int32_t *map;                 /* (n_global) or NULL (identity)                     */
    float   *gate;                /* shared experts' gate (H) or NULL                  */
    void    *block;
    /* TMA maps of w13 and w2 for the wgmma tiles (moe__gemm_args.w_map),
     * kept as bytes: CUtensorMap is 64-byte aligned, this struct is not */
    int      tma;                 /* 1: both made                                      */
    unsigned char tm13[sizeof(CUtensorMap)], tm2[sizeof(CUtensorMap)];
} cuda_experts;

/* Host staging (pinned) and device tables of a layer over a device
 * transport (ep.cu, tp.cu), made at layer creation. Headers are at most
 * MOE_CUDA_HDR_BYTES. */
#define MOE_CUDA_HDR_BYTES 48
typedef struct cuda_ep_host {
    void     *block;     /* the pinned allocation                                   */
    int32_t  *cnt;       /* (2 (P + 1)) send offsets, receive offsets               */
    void     *hdr_out;   /* (P) headers to the peers (TP; EP builds them on the GPU) */
    void     *hdr_in;    /* (P) headers from the peers (EP: then the send counts)   */
    int32_t  *flag;      /* (P + 1) every rank's protocol flag, then this rank's
                            out-of-range-id flag, from the device                   */
    int32_t  *load;      /* (n_physical) this forward's EPLB counters, or NULL      */
    moe__msg *msgs;      /* (7 P) sends, then receives from 3 P on                  */
    cudaEvent_t ev[4];   /* phase boundaries: dispatch, experts, combine, end       */
    int32_t  *d_map;     /* device copy of the expert map's rep_slot, rep_start     */
    uint32_t  map_version; /* the map version d_map holds                           */
} cuda_ep_host;

typedef struct cuda_layer {
    float *bias;                  /* router correction bias (E) or NULL                */
    float *gate_w, *gate_b;       /* router gate (E, H), (E) or NULL                   */
    void  *block;
    size_t prologue_smem;         /* decode prologue's shared memory, 0 = not usable   */
    struct cuda_ep_host *ep_host; /* over a device transport: staging, or NULL         */
} cuda_layer;

static inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* The next buffer of n bytes (NULL when n = 0) from the workspace cursor. */
static inline void *take(char **cur, size_t n) {
    if (!n) return NULL;
    void *p = *cur;
    *cur += moe__align_up(n, WS_ALIGN);
    return p;
}

/* x in io format io can feed the tensor cores of dtype as it is. */
static inline bool same_type(int io, int dtype) {
    return (io == MOE_FORMAT_BF16 && dtype == MOE_CUDA_BF16) ||
           (io == MOE_FORMAT_F16 && dtype == MOE_CUDA_F16);
}

/* Bytes of one activation row of H values in the compute type. */
static inline size_t row_bytes(int dtype, int64_t H) {
    return (size_t)H * (dtype == MOE_CUDA_FP8 ? 1 : 2);
}

/* The uploaded state of e, or NULL. */
cuda_experts *moe__cuda_experts_state(const moe_routed_experts *e);
/* Rows per tile for rows spread over n_experts, on the prefill kernels of
 * kind (moe__cuda_prefill_kind; 0 gives the most tiles). */
int           moe__cuda_pick_bm(int dtype, int64_t rows, int32_t n_experts, int kind);
/* Which of the persistent bf16/f16 prefill tiles (grouped-gemm-ws.cuh) x
 * may run, as flags: in two-CTA pairs; at 25-64 rows per expert too (its
 * 256-column tiles whole in both GEMMs). 0: neither, or mma.sync. */
enum { PREFILL_PAIRS = 1, PREFILL_SMALL = 2, WS_TILE_N = 256 /* = WS_BN (asserted) */ };
int           moe__cuda_prefill_kind(const moe_layer *l, const cuda_experts *x);
/* Tile-table entries for rows over n_experts with bm-row tiles. */
int64_t       moe__cuda_max_tiles(int64_t rows, int32_t n_experts, int bm);

/* Workspace of one forward: routing and shared buffers for T tokens, the
 * routed experts' buffers for `rows` layout rows (T k on one device; every
 * row other ranks may send, expert parallel). */
typedef struct ws_plan {
    size_t logits, ids, w, estart, row_slot, slot_row, tiles, ntiles, align, xq, xs, sg, h1, h1q,
        h1s, y, sh_h1, sh_h1q, sh_h1s, sh_y;
} ws_plan;
ws_plan moe__cuda_plan(const moe_layer *l, int64_t T, int64_t rows);
size_t  moe__cuda_plan_bytes(const ws_plan *p);

/* Where a forward's plan buffers lie (moe__cuda_carve). */
typedef struct ws_bufs {
    float         *lg, *w, *xs, *sg, *h1s, *y, *sh_h1s, *sh_y;
    int32_t       *ids;
    moe__align_out ao;
    char          *xq;
    void          *h1, *h1q, *sh_h1, *sh_h1q;
} ws_bufs;
/* Carves p from *cur (advanced past it). */
ws_bufs moe__cuda_carve(const ws_plan *p, char **cur);

/* The start of every forward: router logits from the gate when route and
 * no logits are given, x in the routed experts' compute type (xa) and the
 * shared experts' (xa_sh), and the shared experts' gate, on stream st. */
typedef struct moe__cuda_inputs {
    const void  *xa, *xa_sh;
    const float *logits;
    bool         prepared; /* the last launch on st was a prepare (finalize.cu) */
} moe__cuda_inputs;
moe_status moe__cuda_prepare_inputs(moe_layer *l, int64_t T, const void *x,
                                    const float *logits, bool route, const cuda_experts *ex,
                                    const cuda_experts *sx, const ws_bufs *b, cudaStream_t st,
                                    moe__cuda_inputs *in);

/* Whether W2 stores its slot rows in bf16 for a forward whose output is in
 * out_fmt (finalize.cu): one rule for one GPU and expert parallelism, whose
 * outputs must be the same bits. */
static inline int moe__cuda_y_bf16(int out_fmt) { return out_fmt == MOE_FORMAT_BF16; }

/* Both GEMMs of one experts object over a contiguous layout (see cuda.cu);
 * W2's rows y at their slots, f32 or (y_bf16) bf16. */
moe_status moe__cuda_run_experts(moe_layer *l, const cuda_experts *x, const moe_experts_options *xo,
                                 int64_t n_rows, int bm, const void *xq, const float *xs,
                                 const int32_t *row_slot, int32_t a_div, const int32_t *estart,
                                 const int32_t *tiles, const int32_t *n_tiles, int64_t mt,
                                 const float *in_scale, const float *rw, void *h1, void *h1q,
                                 float *h1s, void *y, int y_bf16, int pdl, cudaStream_t st);

/* The shared experts on stream ss: all T tokens through the one expert of
 * sx, output sh_y (T, H) f32 (see cuda.cu). */
moe_status moe__cuda_run_shared(moe_layer *l, const cuda_experts *sx,
                                const moe_shared_experts *sh, int64_t T, const void *xa,
                                const float *xs, const float *sg, const ws_bufs *b,
                                cudaStream_t ss);

/* The forward on this device alone (cuda.cu), out stored in out_fmt. */
moe_status moe__cuda_forward_one(moe_layer *l, int64_t T, const void *x, const float *logits,
                                 const int32_t *ids_in, const float *w_in,
                                 const moe_shared_experts *sh, void *out, int out_fmt, void *ws,
                                 size_t ws_size);

/* ep.cu: expert parallel over a device transport (NCCL); tp.cu: tensor
 * parallel over it. */
moe_status moe__cuda_ep_create(moe_layer *l, char *err, size_t errlen);
void       moe__cuda_ep_destroy(moe_layer *l);
size_t     moe__cuda_ep_workspace_size(const moe_layer *l, int64_t T);
moe_status moe__cuda_ep_forward(moe_layer *l, int64_t T, const void *x, const float *logits,
                                const int32_t *ids_in, const float *w_in,
                                const moe_shared_experts *sh, void *out, void *ws,
                                size_t ws_size);
size_t     moe__cuda_tp_workspace_size(const moe_layer *l, int64_t T);
moe_status moe__cuda_tp_forward(moe_layer *l, int64_t T, const void *x, const float *logits,
                                const int32_t *ids_in, const float *w_in,
                                const moe_shared_experts *sh, void *out, void *ws,
                                size_t ws_size);

#endif /* MOE_CUDA_BACKEND_CUH */
