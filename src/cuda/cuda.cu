/*
 * cuda.cu - the CUDA backend: context streams, weight upload, workspace
 * layout and the forward that strings the ops together.
 *
 * Forward on the context's main stream:
 *   1. router logits from the gate (only when no logits are given)  route.cu
 *   2. x -> compute type (+ fp8 group scales) and the shared gate   finalize.cu
 *      (skipped when x already has the weights' type and no gate)
 *   3. routing -> topk_ids, topk_w (unless given), then slots        route.cu, align.cu
 *      grouped by expert + tile table; up to 16 tokens both in one  (decode-prologue.cu)
 *      launch
 *   4. W13 grouped GEMM + activation (+ fp8 quant of its output;    grouped-gemm-*.cu
 *      fp8 decode: f32 rows, then a quantizing launch)
 *   5. W2 grouped GEMM, bias, routing weight, f32 rows by slot      grouped-gemm-*.cu
 *   6. sum of each token's slots + shared output -> out             finalize.cu
 * 4, 5 and 6 are launched as programmatic dependents (PDL): each may start
 * while its predecessor drains; W2 streams its first weight stages before it
 * waits (grouped-gemm.cuh). The one-launch decode prologue is one too when 2
 * ran: it routes while x is quantized and waits for that at its end. Shared
 * experts (4-5 on one expert whose rows are all tokens) run on the main
 * stream before the routed ones, or with MOE_SHARED_OVERLAPPED / IN_COMBINE
 * on the aux stream between a fork event (after 3) and a join event (before
 * 6).
 *
 * The regime is chosen from n_tokens alone: BM = 16 or 32 rows per tile
 * (decode: each touched weight row streamed once) when an expert gets up to
 * 8 or 12 (fp8: 24) rows on average, else 64 / 128 (prefill). Same n_tokens, same
 * launches: the forward is a fixed sequence a CUDA graph can capture.
 */
#include "backend.cuh"

#include "entry.h"
#include "tma.cuh"

#include <cudaTypedefs.h> /* PFN_cuTensorMapEncodeTiled */
#include <stdio.h>
#include <string.h>

/* Batches up to this many tokens (and slots: align's one-block bound) take
 * the one-launch decode prologue. Beyond 16 its one block is slower than the
 * two launches: ncu timed it at 19.3 us at 64 tokens (qwen3-30b-a3b), and
 * qwen3 fp8 / bf16 forwards went 198.2 / 310.7 -> 185.2 / 301.4 us at T = 64
 * and 179.0 / 267.3 -> 172.6 / 265.3 at T = 32 with the bound at 16 (T = 16
 * within 1% either way; NOTES v19). */
#define DECODE_PROLOGUE_TOKENS 16
#define DECODE_PROLOGUE_SLOTS  4096

static void cuda_ctx_free(void *p) {
    cuda_ctx *c = (cuda_ctx *)p;
    if (!c) return;
    if (c->fork) cudaEventDestroy(c->fork);
    if (c->join) cudaEventDestroy(c->join);
    if (c->aux) cudaStreamDestroy(c->aux);
    if (c->own_main && c->main) cudaStreamDestroy(c->main);
    moe__free(c);
}

static void cuda_experts_free(void *p) {
    cuda_experts *x = (cuda_experts *)p;
    if (!x) return;
    cudaFree(x->block);
    moe__free(x);
}

cuda_experts *moe__cuda_experts_state(const moe_routed_experts *e) {
    for (int i = 0; i < 4; i++)
        if (e->impl_free[i] == cuda_experts_free) return (cuda_experts *)e->impl_state[i];
    return NULL;
}

static int dtype_of(moe_format f) {
    return f == MOE_FORMAT_BF16 ? MOE_CUDA_BF16 : f == MOE_FORMAT_F16 ? MOE_CUDA_F16
         : f == MOE_FORMAT_FP8_BLOCK ? MOE_CUDA_FP8 : -1;
}


// ---- checks and upload

static moe_status check_experts(const moe_routed_experts *e, const char *what, char *err,
                                size_t errlen) {
    const moe_experts_options *o = &e->opts;
    if (dtype_of(o->format) < 0)
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED,
                         "unsupported on cuda: %s (%s; cuda runs bf16, f16 and fp8-block weights)",
                         moe_format_name(o->format), what);
    if (e->fmt2 != e->fmt13)
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED,
                         "unsupported on cuda: mixed formats (%s w13 %s, w2 %s)", what,
                         moe_format_name(e->fmt13), moe_format_name(e->fmt2));
    if (o->d_model % 16 || o->d_ff % 16)
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED,
                         "unsupported on cuda: %s d_model %lld and d_ff %lld must be multiples "
                         "of 16", what, (long long)o->d_model, (long long)o->d_ff);
    if ((unsigned)o->activation > MOE_ACT_RELU2)
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "unsupported on cuda: activation %d",
                         (int)o->activation);
    return MOE_OK;
}

/* Copies n bytes from host src to the device block at *off (aligned). */
static void *place(char *block, size_t *off, size_t n) {
    *off = moe__align_up(*off, WS_ALIGN);
    void *p = block + *off;
    *off += n;
    return p;
}

/* The TMA map (tma.cuh) of a weight tensor w of n_experts x (halves x rows)
 * rows of K esz-byte values, into out: {K bytes, rows, halves, experts},
 * boxes of TMA_BOX_ROWS rows x 128 bytes in the 128-byte swizzle. False
 * when the driver cannot make it (the tiles then run on mma.sync). */
static bool make_weight_map(unsigned char *out, const void *w, int64_t n_experts, int64_t rows,
                            int halves, int64_t K, int esz) {
    void *fn = NULL;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess || !fn || n_experts < 1) {
        cudaGetLastError();
        return false;
    }
    const cuuint64_t kb = (cuuint64_t)(K * esz);
    const cuuint64_t dim[4] = { kb, (cuuint64_t)rows, (cuuint64_t)halves, (cuuint64_t)n_experts };
    const cuuint64_t stride[3] = { kb, kb * rows, kb * rows * halves }; // bytes, dims 1..3
    const cuuint32_t box[4] = { 128, TMA_BOX_ROWS, 1, 1 }, one[4] = { 1, 1, 1, 1 };
    CUtensorMap m;
    const CUresult r = ((PFN_cuTensorMapEncodeTiled_v12000)fn)(
        &m, CU_TENSOR_MAP_DATA_TYPE_UINT8, 4, (void *)w, dim, stride, box, one,
        CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
        CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    memcpy(out, &m, sizeof m);
    return r == CUDA_SUCCESS;
}

/* Uploads e's weights (and the shared experts' gate); with tma, makes the
 * weights' TMA maps for the wgmma tiles. */
static moe_status upload_experts(moe_routed_experts *e, const float *gate, bool tma, char *err,
                                 size_t errlen) {
    if (moe__cuda_experts_state(e)) return MOE_OK; // uploaded by an earlier layer
    int slot = -1;
    for (int i = 0; i < 4 && slot < 0; i++)
        if (!e->impl_state[i]) slot = i;
    if (slot < 0)
        return moe__errf(err, errlen, MOE_ERR_INTERNAL, "cuda: no free impl_state slot");
    const moe_experts_options *o = &e->opts;
    cuda_experts *x = (cuda_experts *)moe__calloc(1, sizeof *x);
    if (!x) return moe__errf(err, errlen, MOE_ERR_NOMEM, "cuda: out of memory");
    x->dtype    = dtype_of(o->format);
    x->n_local  = o->n_experts;
    x->n_global = e->n_experts_global;
    x->H = o->d_model;
    x->I = o->d_ff;
    x->n13 = moe__w13_rows(o);
    const size_t E = (size_t)o->n_experts;
    const size_t b13 = E * e->s13.data, b2 = E * e->s2.data;
    const size_t bs13 = o->w13.scales ? E * e->s13.scales : 0;
    const size_t bs2 = o->w2.scales ? E * e->s2.scales : 0;
    const size_t bb13 = o->w13.bias ? E * (size_t)x->n13 * 4 : 0;
    const size_t bb2 = o->w2.bias ? E * (size_t)x->H * 4 : 0;
    const size_t bmap = e->expert_map ? (size_t)x->n_global * 4 : 0;
    const size_t bgate = gate ? (size_t)x->H * 4 : 0;
    if (x->dtype == MOE_CUDA_FP8 && (!bs13 || !bs2)) {
        moe__free(x);
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                         "cuda: fp8-block weights without scales");
    }
    size_t total = 0;
    const size_t sizes[8] = { b13, b2, bs13, bs2, bb13, bb2, bmap, bgate };
    for (int i = 0; i < 8; i++) total = moe__align_up(total, WS_ALIGN) + sizes[i];
    cudaError_t ce = cudaMalloc(&x->block, total ? total : 1);
    if (ce != cudaSuccess) {
        moe__free(x);
        return moe__errf(err, errlen, MOE_ERR_CUDA,
                         "cuda: cannot allocate %zu bytes of weights: %s", total,
                         cudaGetErrorString(ce));
    }
    char *blk = (char *)x->block;
    size_t off = 0;
    x->w13 = place(blk, &off, b13);
    x->w2  = place(blk, &off, b2);
    x->s13 = bs13 ? (float *)place(blk, &off, bs13) : NULL;
    x->s2  = bs2 ? (float *)place(blk, &off, bs2) : NULL;
    x->b13 = bb13 ? (float *)place(blk, &off, bb13) : NULL;
    x->b2  = bb2 ? (float *)place(blk, &off, bb2) : NULL;
    x->map = bmap ? (int32_t *)place(blk, &off, bmap) : NULL;
    x->gate = bgate ? (float *)place(blk, &off, bgate) : NULL;
    struct { void *d; const void *h; size_t n; } cp[8] = {
        { x->w13, o->w13.data, b13 }, { x->w2, o->w2.data, b2 },
        { x->s13, o->w13.scales, bs13 }, { x->s2, o->w2.scales, bs2 },
        { x->b13, o->w13.bias, bb13 }, { x->b2, o->w2.bias, bb2 },
        { x->map, e->expert_map, bmap }, { x->gate, gate, bgate },
    };
    for (int i = 0; i < 8; i++) {
        if (!cp[i].n) continue;
        ce = cudaMemcpy(cp[i].d, cp[i].h, cp[i].n, cudaMemcpyHostToDevice);
        if (ce != cudaSuccess) {
            cuda_experts_free(x);
            return moe__errf(err, errlen, MOE_ERR_CUDA, "cuda: weight upload: %s",
                             cudaGetErrorString(ce));
        }
    }
    if (tma) {
        const int  esz   = x->dtype == MOE_CUDA_FP8 ? 1 : 2;
        const bool gated = act_is_gated(o->activation); // gate and up halves
        x->tma = make_weight_map(x->tm13, x->w13, (int64_t)E, gated ? x->I : x->n13,
                                 gated ? 2 : 1, x->H, esz) &&
                 make_weight_map(x->tm2, x->w2, (int64_t)E, x->H, 1, x->I, esz);
    }
    e->impl_state[slot] = x;
    e->impl_free[slot]  = cuda_experts_free;
    return MOE_OK;
}

static moe_status make_ctx(moe_context *c, char *err, size_t errlen) {
    if (c->cuda) return MOE_OK;
    cuda_ctx *x = (cuda_ctx *)moe__calloc(1, sizeof *x);
    if (!x) return moe__errf(err, errlen, MOE_ERR_NOMEM, "cuda: out of memory");
    c->cuda = x;
    c->cuda_free = cuda_ctx_free;
    x->device = c->opts.cuda_device;
    MOE_CUDA_TRY(cudaSetDevice(x->device), err, errlen);
    int major = 0, minor = 0;
    MOE_CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, x->device),
                 err, errlen);
    MOE_CUDA_TRY(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, x->device),
                 err, errlen);
    MOE_CUDA_TRY(cudaDeviceGetAttribute(&x->n_sm, cudaDevAttrMultiProcessorCount, x->device),
                 err, errlen);
#ifndef MOE_CUDA_NO_WGMMA
    x->wgmma = major == 9 && minor == 0;
#endif
    if (c->opts.cuda_stream) {
        x->main = (cudaStream_t)c->opts.cuda_stream;
    } else {
        MOE_CUDA_TRY(cudaStreamCreateWithFlags(&x->main, cudaStreamNonBlocking), err, errlen);
        x->own_main = 1;
    }
    MOE_CUDA_TRY(cudaStreamCreateWithFlags(&x->aux, cudaStreamNonBlocking), err, errlen);
    MOE_CUDA_TRY(cudaEventCreateWithFlags(&x->fork, cudaEventDisableTiming), err, errlen);
    MOE_CUDA_TRY(cudaEventCreateWithFlags(&x->join, cudaEventDisableTiming), err, errlen);
    return MOE_OK;
}

static moe_status upload_router(moe_layer *l, char *err, size_t errlen) {
    const moe_router *r = l->opts.router;
    const int64_t E = r->opts.n_experts, H = r->opts.d_model;
    const size_t nb = r->correction_bias ? E * 4 : 0;
    const size_t ng = r->gate_weight ? (size_t)(E * H) * 4 : 0;
    const size_t ngb = r->gate_bias ? E * 4 : 0;
    cuda_layer *x = (cuda_layer *)moe__calloc(1, sizeof *x);
    if (!x) return moe__errf(err, errlen, MOE_ERR_NOMEM, "cuda: out of memory");
    l->cuda = x;
    size_t total = moe__align_up(nb, WS_ALIGN) + moe__align_up(ng, WS_ALIGN) + ngb;
    if (!total) return MOE_OK;
    MOE_CUDA_TRY(cudaMalloc(&x->block, total), err, errlen);
    char *blk = (char *)x->block;
    size_t off = 0;
    if (nb) {
        x->bias = (float *)place(blk, &off, nb);
        MOE_CUDA_TRY(cudaMemcpy(x->bias, r->correction_bias, nb, cudaMemcpyHostToDevice), err,
                     errlen);
    }
    if (ng) {
        x->gate_w = (float *)place(blk, &off, ng);
        MOE_CUDA_TRY(cudaMemcpy(x->gate_w, r->gate_weight, ng, cudaMemcpyHostToDevice), err,
                     errlen);
    }
    if (ngb) {
        x->gate_b = (float *)place(blk, &off, ngb);
        MOE_CUDA_TRY(cudaMemcpy(x->gate_b, r->gate_bias, ngb, cudaMemcpyHostToDevice), err, errlen);
    }
    return MOE_OK;
}

// ---- workspace

/* Rows per expert on average up to which the narrow decode tiles (BM = 16,
 * then 32) are picked: an expert whose rows overflow its tile streams its
 * weights once more per extra tile, so the tile is sized for the busier
 * experts, not the average (at 16 on average, ~45% of them get more). */
#define DECODE16_AVG 8.0
#define DECODE32_AVG 24.0
/* bf16/f16 leave the 32-row tile from 12 rows on: at 13-24 the 128-row
 * (PREFILL_SMALL) or 64-row prefill tiles were faster (qwen3-30b-a3b 256 /
 * 320 / 384 tokens 356 / 363 / 367 -> 342 / 344 / 350 us, gpt-oss-20b 192
 * tokens 446 -> 439, llama4-scout +-0.9%; dev/cuda/NOTES.md v25). fp8
 * keeps 24: its 64-row tile from 16 or 12 was 3-7% slower on qwen3. */
#define DECODE32_AVG_16 12.0
/* Rows per expert on average from which bf16/f16 prefill runs in pairs of
 * 128-row tiles (BM 256, grouped-gemm-ws.cuh): below it, most 256-row
 * tiles would leave the pair's second CTA without rows. */
#define PAIR_AVG 384.0
/* Rows per expert on average up to which bf16/f16 runs the persistent
 * kernel on 64-row tiles (one consumer warpgroup, five stages) rather than
 * 128-row ones, where its column tiles are whole (PREFILL_SMALL): the
 * stages that held padding rows hold a fifth stage of weights, so more
 * bytes are in flight per SM. qwen3-30b-a3b 256-640 tokens -3.2 to -3.9%,
 * olmoe-1b-7b 128-384 tokens -3.3 to -4.4%, llama4-scout 256-640 -1.5 to
 * -1.8%; at 64 rows per expert (half of the experts then take two tiles)
 * +4 to +18% (dev/cuda/NOTES.md v27). */
#define PERSIST64_AVG 48.0

/* Between the decode tiles and 64 rows per expert on average, bf16/f16
 * runs the persistent 128-row tile where it exists and its 256-column
 * tiles are whole in both GEMMs (PREFILL_SMALL), the 64-row tile
 * elsewhere. A 128-row tile is still under the card's ridge point (~165
 * FLOP per byte), so its padding rows cost no time, and the persistent
 * kernel overlaps a tile's epilogue with the next one's loads. Measured
 * against the 64-row tile (dev/cuda/NOTES.md v24): qwen3-30b-a3b 512
 * tokens 377 -> 357 us, mixtral-8x7b 256 tokens 911 -> 721, olmoe-1b-7b
 * 512 tokens 291 -> 262, llama4-scout level; gpt-oss-20b (2880 columns:
 * 11.25 and 22.5 tiles of 256) 439 -> 493 at 256 tokens, so it keeps the
 * 64-row tile there (the partial tiles as the cause is inferred). */
int moe__cuda_pick_bm(int dtype, int64_t rows, int32_t n_experts, int kind) {
    double avg = (double)rows / (double)(n_experts > 0 ? n_experts : 1);
    if (avg <= DECODE16_AVG) return 16;
    if (avg <= (dtype == MOE_CUDA_FP8 ? DECODE32_AVG : DECODE32_AVG_16)) return 32;
    if (dtype == MOE_CUDA_FP8 || (!(kind & PREFILL_SMALL) && avg <= 64.0)) return 64;
    if (avg <= PERSIST64_AVG) return 64; // (PREFILL_SMALL: the persistent kernel's 64 rows)
    return (kind & PREFILL_PAIRS) && avg >= PAIR_AVG ? 256 : 128;
}

int moe__cuda_prefill_kind(const moe_layer *l, const cuda_experts *x) {
    const cuda_ctx *c = (const cuda_ctx *)l->ctx->cuda;
    if (!c->wgmma || !x->tma) return 0;
    const bool whole = x->n13 % WS_TILE_N == 0 && x->H % WS_TILE_N == 0;
    return (c->pair_ctas >= 2 ? PREFILL_PAIRS : 0) | (whole ? PREFILL_SMALL : 0);
}

int64_t moe__cuda_max_tiles(int64_t rows, int32_t n_experts, int bm) {
    return cdiv(rows, bm) + (rows < n_experts ? rows : n_experts);
}

ws_plan moe__cuda_plan(const moe_layer *l, int64_t T, int64_t R) {
    const moe_router_options *ro = &l->opts.router->opts;
    const moe_routed_experts *e  = l->opts.experts;
    const int      dt   = dtype_of(e->opts.format);
    const int64_t  H    = e->opts.d_model, I = e->opts.d_ff, k = ro->top_k;
    const int64_t  S    = T * k;
    const int32_t  nl   = e->opts.n_experts;
    const int      bm   = moe__cuda_pick_bm(dt, R, nl, 0); // (the most tiles)
    const bool     fp8  = dt == MOE_CUDA_FP8;
    const moe_shared_experts *sh = l->opts.shared;
    const int64_t  Is   = sh ? sh->mlp->opts.d_ff : 0;
    const int      sdt  = sh ? dtype_of(sh->mlp->opts.format) : dt;
    ws_plan p;
    memset(&p, 0, sizeof p);
    p.logits   = ro->gate_weight ? (size_t)(T * ro->n_experts) * 4 : 0;
    p.ids      = (size_t)S * 4;
    p.w        = (size_t)S * 4;
    p.estart   = (size_t)(nl + 1) * 4;
    p.row_slot = (size_t)R * 4;
    p.slot_row = (size_t)R * 4;
    p.tiles    = (size_t)moe__cuda_max_tiles(R, nl, bm) * 8;
    p.ntiles   = 4;
    /* x in the compute type; the shared experts may use another type, so
     * room for both (bf16 is the larger). */
    p.xq       = (size_t)(T * H) * 2;
    p.xs       = (size_t)(T * cdiv(H, MOE_CUDA_QBLOCK)) * 4;
    p.sg       = sh && sh->gate ? (size_t)T * 4 : 0;
    p.align    = moe__align_scratch_size(R, nl);
    /* h1 holds bf16 rows (f16 for f16 weights; f32 for fp8 decode); fp8
     * adds the quantized rows h1q and their group scales */
    p.h1       = (size_t)(R * I) * (fp8 ? 4 : 2);
    p.h1q      = fp8 ? (size_t)(R * I) : 0;
    p.h1s      = fp8 ? (size_t)(R * cdiv(I, MOE_CUDA_QBLOCK)) * 4 : 0;
    p.y        = (size_t)(R * H) * 4;
    p.sh_h1    = sh ? (size_t)(T * Is) * (sdt == MOE_CUDA_FP8 ? 4 : 2) : 0;
    p.sh_h1q   = sh && sdt == MOE_CUDA_FP8 ? (size_t)(T * Is) : 0;
    p.sh_h1s   = sh && sdt == MOE_CUDA_FP8 ? (size_t)(T * cdiv(Is, MOE_CUDA_QBLOCK)) * 4 : 0;
    p.sh_y     = sh ? (size_t)(T * H) * 4 : 0;
    if (sh && sdt != dt) p.xq *= 2; // one copy per compute type
    return p;
}

size_t moe__cuda_plan_bytes(const ws_plan *p) {
    const size_t *v = (const size_t *)p;
    size_t total = 0;
    for (size_t i = 0; i < sizeof *p / sizeof(size_t); i++) total += moe__align_up(v[i], WS_ALIGN);
    return total;
}

ws_bufs moe__cuda_carve(const ws_plan *p, char **cur) {
    ws_bufs b;
    b.lg              = (float *)take(cur, p->logits);
    b.ids             = (int32_t *)take(cur, p->ids);
    b.w               = (float *)take(cur, p->w);
    b.ao.expert_start = (int32_t *)take(cur, p->estart);
    b.ao.row_slot     = (int32_t *)take(cur, p->row_slot);
    b.ao.slot_row     = (int32_t *)take(cur, p->slot_row);
    b.ao.tiles        = (int32_t *)take(cur, p->tiles);
    b.ao.n_tiles      = (int32_t *)take(cur, p->ntiles);
    b.ao.scratch      = (int32_t *)take(cur, p->align);
    b.xq              = (char *)take(cur, p->xq);
    b.xs              = (float *)take(cur, p->xs);
    b.sg              = (float *)take(cur, p->sg);
    b.h1              = take(cur, p->h1);
    b.h1q             = take(cur, p->h1q);
    b.h1s             = (float *)take(cur, p->h1s);
    b.y               = (float *)take(cur, p->y);
    b.sh_h1           = take(cur, p->sh_h1);
    b.sh_h1q          = take(cur, p->sh_h1q);
    b.sh_h1s          = (float *)take(cur, p->sh_h1s);
    b.sh_y            = (float *)take(cur, p->sh_y);
    return b;
}

size_t moe__cuda_workspace_size(const moe_layer *l, int64_t n_tokens) {
    const moe_parallel *par = l->opts.parallel;
    if (par && par->mode == MOE_PARALLEL_EP) return moe__cuda_ep_workspace_size(l, n_tokens);
    if (par) return moe__cuda_tp_workspace_size(l, n_tokens);
    ws_plan p = moe__cuda_plan(l, n_tokens, n_tokens * l->opts.router->opts.top_k);
    return moe__cuda_plan_bytes(&p) + WS_ALIGN;
}

// ---- entry points

int moe__cuda_format_supported(moe_format f) { return dtype_of(f) >= 0; }

int moe__cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); // clear the sticky "no device" error
        return 0;
    }
    return n;
}

moe_status moe__cuda_layer_create(moe_layer *l, char *err, size_t errlen) {
    moe_status st;
    if (moe__cuda_device_count() < 1)
        return moe__errf(err, errlen, MOE_ERR_NO_DEVICE, "cuda: no CUDA device");
    int dev = l->ctx->opts.cuda_device;
    cudaDeviceProp prop;
    MOE_CUDA_TRY(cudaGetDeviceProperties(&prop, dev), err, errlen);
    if (prop.major < 9)
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED,
                         "cuda: device %d (%s) is sm_%d%d; libmoe's kernels need sm_90 or newer",
                         dev, prop.name, prop.major, prop.minor);
    if ((st = check_experts(l->opts.experts, "routed experts", err, errlen))) return st;
    const moe_shared_experts *sh = l->opts.shared;
    if (sh && (st = check_experts(sh->mlp, "shared experts", err, errlen))) return st;
    if ((st = make_ctx(l->ctx, err, errlen))) return st;
    cuda_ctx *cx = (cuda_ctx *)l->ctx->cuda;
    MOE_CUDA_TRY(moe__grouped_gemm_bf16_setup_cuda(cx->wgmma ? &cx->pair_ctas : NULL), err,
                 errlen);
    MOE_CUDA_TRY(moe__grouped_gemm_fp8_setup_cuda(), err, errlen);
    MOE_CUDA_TRY(moe__align_setup_cuda(l->opts.experts->opts.n_experts), err, errlen);
    const bool tma = cx->wgmma;
    if ((st = upload_experts(l->opts.experts, NULL, tma, err, errlen))) return st;
    if (sh && (st = upload_experts(sh->mlp, sh->gate, tma, err, errlen))) return st;
    if ((st = upload_router(l, err, errlen))) return st;
    if (l->opts.parallel && (st = moe__cuda_ep_create(l, err, errlen))) return st;
    cuda_layer *cl = (cuda_layer *)l->cuda;
    cl->prologue_smem = moe__decode_prologue_smem(&l->opts.router->opts,
                                                  l->opts.experts->opts.n_experts);
    if (cl->prologue_smem)
        MOE_CUDA_TRY(moe__decode_prologue_setup_cuda(cl->prologue_smem), err, errlen);
    /* pageable uploads may still be in flight; the forward's streams do not
     * wait for the legacy stream */
    MOE_CUDA_TRY(cudaDeviceSynchronize(), err, errlen);
    return MOE_OK;
}

void moe__cuda_layer_destroy(moe_layer *l) {
    cuda_layer *x = (cuda_layer *)l->cuda;
    if (!x) return;
    moe__cuda_ep_destroy(l);
    cudaFree(x->block);
    moe__free(x);
    l->cuda = NULL;
}

moe_status moe__cuda_route(moe_layer *l, int64_t T, const float *logits, int32_t *ids, float *w) {
    cuda_ctx *c = (cuda_ctx *)l->ctx->cuda;
    const cuda_layer *cl = (const cuda_layer *)l->cuda;
    if (!c || !cl)
        return moe__errf(l->err, sizeof l->err, MOE_ERR_INTERNAL, "cuda: layer not set up");
    MOE_CUDA_TRY(moe__route_cuda(&l->opts.router->opts, cl->bias, logits, T, ids, w, c->main),
                 l->err, sizeof l->err);
    return MOE_OK;
}

/* Both GEMMs of one experts object over a contiguous layout. */
moe_status moe__cuda_run_experts(moe_layer *l, const cuda_experts *x, const moe_experts_options *xo,
                                 int64_t n_rows, int bm, const void *xq, const float *xs,
                                 const int32_t *row_slot, int32_t a_div, const int32_t *estart,
                                 const int32_t *tiles, const int32_t *n_tiles, int64_t mt,
                                 const float *in_scale, const float *rw, void *h1, void *h1q,
                                 float *h1s, void *y, int y_bf16, int pdl, cudaStream_t st) {
    const bool fp8 = x->dtype == MOE_CUDA_FP8, decode8 = fp8 && bm < 64;
    moe__gemm_args g;
    memset(&g, 0, sizeof g);
    g.dtype = x->dtype;
    g.act   = xo->activation;
    g.alpha = xo->swiglu_alpha != 0 ? xo->swiglu_alpha : 1.702f;
    g.limit = xo->swiglu_limit != 0 ? xo->swiglu_limit : 7.0f;
    g.BM = bm;
    g.wgmma = ((const cuda_ctx *)l->ctx->cuda)->wgmma && x->tma;
    g.ws64 = bm == 64 && !fp8 && (moe__cuda_prefill_kind(l, x) & PREFILL_SMALL);
    g.n_sm  = ((const cuda_ctx *)l->ctx->cuda)->n_sm;
    g.pair_ctas = ((const cuda_ctx *)l->ctx->cuda)->pair_ctas;
    g.pdl = pdl;
    g.expert_start = estart;
    g.tiles = tiles;
    g.n_tiles = n_tiles;
    g.max_tiles = mt;
    g.n_rows = n_rows;
    g.row_slot = row_slot;

    // W13: A = x rows gathered by token
    g.w13 = 1;
    g.a = xq;
    g.a_scale = xs;
    g.a_div = a_div;
    g.gather = 1;
    g.w = x->w13;
    g.w_scale = x->s13;
    g.bias = x->b13;
    g.N_w = x->n13;
    g.K = x->H;
    g.N_out = x->I;
    memcpy(&g.w_map, x->tm13, sizeof g.w_map);
    g.in_scale = in_scale;
    g.out = fp8 && !decode8 ? h1q : h1;
    g.out_scale = h1s;
    g.out_f32 = decode8;
    cudaError_t ce = x->dtype == MOE_CUDA_FP8 ? moe__grouped_gemm_fp8_cuda(&g, st)
                                              : moe__grouped_gemm_bf16_cuda(&g, st);
    MOE_CUDA_TRY(ce, l->err, sizeof l->err);
    /* fp8 decode: the narrow W13 tiles stored f32 rows; quantize them */
    if (decode8)
        MOE_CUDA_TRY(moe__prepare_x_cuda(h1, MOE_FORMAT_F32, n_rows, x->I, MOE_CUDA_FP8, h1q, h1s,
                                         NULL, NULL, st), l->err, sizeof l->err);

    // W2: A = h1 rows in layout order
    g.w13 = 0;
    g.out_f32 = 0;
    g.pdl = 1; // after W13 or the quantization: always a kernel of this stream
    g.a = fp8 ? h1q : h1;
    g.a_scale = h1s;
    g.a_div = 1;
    g.gather = 0;
    g.w = x->w2;
    g.w_scale = x->s2;
    g.bias = x->b2;
    g.N_w = x->H;
    g.K = x->I;
    g.N_out = x->H;
    memcpy(&g.w_map, x->tm2, sizeof g.w_map);
    g.in_scale = NULL;
    g.rw = rw;
    g.out = y;
    g.y_bf16 = y_bf16;
    g.wide_w2 = n_rows >= 64 * (int64_t)xo->n_experts;
    g.out_scale = NULL;
    ce = x->dtype == MOE_CUDA_FP8 ? moe__grouped_gemm_fp8_cuda(&g, st)
                                  : moe__grouped_gemm_bf16_cuda(&g, st);
    MOE_CUDA_TRY(ce, l->err, sizeof l->err);
    return MOE_OK;
}

moe_status moe__cuda_run_shared(moe_layer *l, const cuda_experts *sx,
                                const moe_shared_experts *sh, int64_t T, const void *xa,
                                const float *xs, const float *sg, const ws_bufs *b,
                                cudaStream_t ss) {
    int sbm = moe__cuda_pick_bm(sx->dtype, T, 1, moe__cuda_prefill_kind(l, sx));
    return moe__cuda_run_experts(l, sx, &sh->mlp->opts, T, sbm, xa, xs, NULL, 1, NULL, NULL,
                                 NULL, cdiv(T, sbm), NULL, sx->gate ? sg : NULL, b->sh_h1,
                                 b->sh_h1q, b->sh_h1s, b->sh_y, 0, 0, ss);
}

moe_status moe__cuda_prepare_inputs(moe_layer *l, int64_t T, const void *x,
                                    const float *logits, bool route, const cuda_experts *ex,
                                    const cuda_experts *sx, const ws_bufs *b, cudaStream_t st,
                                    moe__cuda_inputs *in) {
    char *err = l->err;
    const size_t errlen = sizeof l->err;
    const cuda_layer *cl = (const cuda_layer *)l->cuda;
    const int io = l->opts.io_format;
    const int64_t H = ex->H;
    const bool two_types = sx && sx->dtype != ex->dtype;
    if (two_types && (ex->dtype == MOE_CUDA_FP8 || sx->dtype == MOE_CUDA_FP8))
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED,
                         "cuda: fp8-block routed and shared experts must share the format");
    if (route && !logits) {
        if (!cl->gate_w)
            return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED,
                             "no router logits given and the router has no gate weights");
        const moe_router_options *ro = &l->opts.router->opts;
        MOE_CUDA_TRY(moe__router_logits_cuda(x, io, cl->gate_w, cl->gate_b, b->lg, T,
                                             ro->n_experts, H, st), err, errlen);
        logits = b->lg;
    }
    in->logits = logits;
    /* x is the A operand as it is when it already has the weights' type;
     * else it is converted (fp8: quantized) into xq */
    const bool x16 = (uintptr_t)x % 16 == 0; // the GEMM copies 16-byte chunks of A rows
    const bool conv = !x16 || !same_type(io, ex->dtype);
    in->xa = conv ? (const void *)b->xq : x;
    char *xq_sh = two_types ? b->xq + (size_t)(T * H) * 2 : b->xq;
    in->xa_sh = sx && (!x16 || !same_type(io, sx->dtype)) ? (const void *)xq_sh : x;
    in->prepared = false;
    if (conv || (sx && sx->gate)) {
        MOE_CUDA_TRY(moe__prepare_x_cuda(x, io, T, H, ex->dtype, conv ? b->xq : NULL, b->xs,
                                         sx ? sx->gate : NULL, b->sg, st), err, errlen);
        in->prepared = true;
    }
    if (two_types && in->xa_sh != x) {
        MOE_CUDA_TRY(moe__prepare_x_cuda(x, io, T, H, sx->dtype, xq_sh, b->xs, NULL, NULL, st),
                     err, errlen);
        in->prepared = true;
    }
    return MOE_OK;
}

moe_status moe__cuda_forward_one(moe_layer *l, int64_t T, const void *x, const float *logits,
                                 const int32_t *ids_in, const float *w_in,
                                 const moe_shared_experts *sh, void *out, int out_fmt, void *ws,
                                 size_t ws_size) {
    char *err = l->err;
    const size_t errlen = sizeof l->err;
    cuda_ctx *c = (cuda_ctx *)l->ctx->cuda;
    const cuda_layer *cl = (const cuda_layer *)l->cuda;
    const moe_router *router = l->opts.router;
    const moe_router_options *ro = &router->opts;
    const cuda_experts *ex = moe__cuda_experts_state(l->opts.experts);
    if (!c || !cl || !ex) return moe__errf(err, errlen, MOE_ERR_INTERNAL, "cuda: layer not set up");
    const int y_bf16 = moe__cuda_y_bf16(out_fmt);
    const cuda_experts *sx = NULL;
    if (sh) {
        sx = moe__cuda_experts_state(sh->mlp);
        if (!sx)
            return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                             "cuda: these shared experts were not uploaded: give them in "
                             "moe_layer_options.shared");
    }
    const int32_t  k   = ro->top_k, nl = ex->n_local;
    const int64_t  S   = T * k, H = ex->H;
    const int      bm  = moe__cuda_pick_bm(ex->dtype, S, nl, moe__cuda_prefill_kind(l, ex));
    const int64_t  mt  = moe__cuda_max_tiles(S, nl, bm);
    ws_plan p = moe__cuda_plan(l, T, S);
    size_t need = moe__cuda_plan_bytes(&p) + WS_ALIGN;
    if (ws_size < need)
        return moe__errf(err, errlen, MOE_ERR_WORKSPACE,
                         "workspace of %zu bytes is too small for %lld tokens (need %zu)", ws_size,
                         (long long)T, need);
    char *cur = (char *)moe__align_up((uintptr_t)ws, WS_ALIGN);
    ws_bufs b = moe__cuda_carve(&p, &cur);
    float   *w = b.w, *xs = b.xs, *sg = b.sg;
    int32_t *ids = b.ids;
    moe__align_out ao = b.ao;
    cudaStream_t st = c->main;
    moe__cuda_inputs in;
    moe_status s;
    if ((s = moe__cuda_prepare_inputs(l, T, x, logits, !ids_in, ex, sx, &b, st, &in))) return s;
    logits = in.logits;
    const void *xa = in.xa, *xa_sh = in.xa_sh;
    if (T <= DECODE_PROLOGUE_TOKENS && S <= DECODE_PROLOGUE_SLOTS && cl->prologue_smem) {
        // routing and grouping of a small batch in one launch
        moe__prologue_args pa;
        memset(&pa, 0, sizeof pa);
        pa.o = *ro;
        pa.bias = cl->bias;
        pa.logits = logits;
        pa.T = T;
        pa.route = ids_in == NULL;
        pa.ids = ids_in ? (int32_t *)ids_in : ids;
        pa.w = w;
        pa.map = ex->map;
        pa.n_global = ex->n_global;
        pa.n_local = nl;
        pa.BM = bm;
        pa.max_tiles = mt;
        pa.ao = ao;
        pa.after_prepare = in.prepared;
        MOE_CUDA_TRY(moe__decode_prologue_cuda(&pa, st), err, errlen);
        if (!ids_in) {
            ids_in = ids;
            w_in = w;
        }
    } else {
        if (!ids_in) {
            MOE_CUDA_TRY(moe__route_cuda(ro, cl->bias, logits, T, ids, w, st), err, errlen);
            ids_in = ids;
            w_in = w;
        }
        // 3. contiguous layout
        MOE_CUDA_TRY(moe__align_cuda(ids_in, T, k, ex->map, ex->n_global, nl, bm, mt, &ao, st),
                     err, errlen);
    }

    // shared experts: before, or overlapped on the aux stream
    const bool overlap = sx && (l->opts.shared_order == MOE_SHARED_OVERLAPPED ||
                                l->opts.shared_order == MOE_SHARED_IN_COMBINE);
    if (sx) {
        cudaStream_t ss = overlap ? c->aux : st;
        if (overlap) {
            MOE_CUDA_TRY(cudaEventRecord(c->fork, st), err, errlen);
            MOE_CUDA_TRY(cudaStreamWaitEvent(c->aux, c->fork, 0), err, errlen);
        }
        if ((s = moe__cuda_run_shared(l, sx, sh, T, xa_sh, xs, sg, &b, ss))) return s;
        if (overlap) MOE_CUDA_TRY(cudaEventRecord(c->join, c->aux), err, errlen);
    }
    // 5-6. routed experts
    const bool llama4 = ro->scoring == MOE_SCORING_LLAMA4;
    if ((s = moe__cuda_run_experts(l, ex, &l->opts.experts->opts, S, bm, xa, xs, ao.row_slot, k,
                                   ao.expert_start, ao.tiles, ao.n_tiles, mt,
                                   llama4 ? w_in : NULL, llama4 ? NULL : w_in, b.h1, b.h1q,
                                   b.h1s, b.y, y_bf16, 1, st)))
        return s;
    if (overlap) MOE_CUDA_TRY(cudaStreamWaitEvent(st, c->join, 0), err, errlen);
    // 7. combine
    MOE_CUDA_TRY(moe__finalize_cuda(b.y, y_bf16, ao.slot_row, sx ? b.sh_y : NULL, T, k, H, out,
                                    out_fmt, !overlap, 0, st), err, errlen);
    return MOE_OK;
}

moe_status moe__cuda_layer_forward(moe_layer *l, int64_t T, const void *x, const float *logits,
                                   const int32_t *ids_in, const float *w_in,
                                   const moe_shared_experts *sh, void *out, void *ws,
                                   size_t ws_size) {
    const moe_parallel *par = l->opts.parallel;
    if (par && par->mode == MOE_PARALLEL_EP)
        return moe__cuda_ep_forward(l, T, x, logits, ids_in, w_in, sh, out, ws, ws_size);
    if (par) return moe__cuda_tp_forward(l, T, x, logits, ids_in, w_in, sh, out, ws, ws_size);
    return moe__cuda_forward_one(l, T, x, logits, ids_in, w_in, sh, out, l->opts.io_format, ws,
                                 ws_size);
}
