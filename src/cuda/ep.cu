/*
 * ep.cu - expert parallelism on the CUDA backend over a device transport
 * (NCCL): the "nccl" prepare/finalize, run inside the CUDA forward.
 *
 * One forward, on the context's stream (which is the communicator's):
 *   1. x in the compute type, routing -> topk_ids, topk_w (T, k): as on one
 *      device (cuda.cu)
 *   2. the send order, on the device (one block): logical -> physical slot
 *      with the expert map's replica hash (moe_expert_map_route's, EPLB
 *      counters), slots grouped by destination rank, ascending within a rank
 *   3. counts first: a header to and from every peer, back to the host with
 *      the send counts: the forward's one host round trip before the end;
 *      headers checked (magic, forward number, d_model, capacity)
 *   4. pack: per send row the activation row in the compute type (+ fp8
 *      group scales) and a meta record (physical expert, routing weight);
 *      the rows travel, stream-ordered
 *   5. the received rows -> contiguous layout by local expert; a meta
 *      record naming an expert not held here raises the protocol flag (the
 *      row is computed by nobody)
 *   6. both GEMMs on the received rows; W2 multiplies each row by its
 *      routing weight (Llama-4: W13 scales its input), as on one device
 *   7. combine: outputs return to the ranks they came from, in their send
 *      order (f32); out[t] = sum over slots j in order + shared: the
 *      single-device finalize reading the row of each slot. Every GEMM row is
 *      computed on its own, so the output is bitwise the single-device one
 *      for any number of ranks.
 *   8. the host waits for the stream (deadline-bound) and reads the
 *      protocol flags (its own and those the peers sent with the combine)
 *      and the out-of-range-id flag: a call that returns MOE_OK has its data.
 * Shared experts: BEFORE runs them on the main stream first; OVERLAPPED on
 * the aux stream from the start; IN_COMBINE on the aux stream launched right
 * after the combine is posted, so that they run while it is in flight.
 *
 * One deadline per forward (deadline_ms from its start) bounds syncs 2 and 3;
 * a dead or silent peer gives MOE_ERR_TIMEOUT or MOE_ERR_PEER_DEAD, and the
 * communicator is aborted (src/ep/nccl-comm.c).
 */
#include "backend.cuh"

#include "entry.h"

#include <string.h>

typedef moe__ep_hdr ep_hdr;

/* the headers come back with the send counts after them, into hdr_in */
static_assert(sizeof(ep_hdr) + sizeof(int32_t) <= MOE_CUDA_HDR_BYTES, "header staging");

typedef struct ep_meta {
    int32_t expert;      /* physical expert id                                */
    float   weight;      /* routing weight (Llama-4: the input scale)         */
} ep_meta;

static const moe_parallel *par(const moe_layer *l) { return l->opts.parallel; }

static int64_t max_rows_peer(const moe_layer *l) {
    return l->opts.max_tokens * l->opts.router->opts.top_k;
}

static int64_t cap_rows(const moe_layer *l) { return par(l)->comm->size * max_rows_peer(l); }

// ---- kernels

/* The expert map and this forward's send order, for the route kernel. */
typedef struct ep_route_args {
    const int32_t *ids;                 /* (T k) logical expert ids                */
    int64_t        n_slots;             /* T k                                     */
    int32_t        k, n_experts;
    const int32_t *rep_slot, *rep_start; /* the map's replica lists (device copy)  */
    int32_t        n_physical, ep_size, placement;
    int32_t        me;
    uint32_t       call;
    int64_t        d_model;
    int32_t        io_format;           /* the layer's (the headers carry it)      */
    int32_t       *load;                /* (n_physical) EPLB counters, or NULL     */
    int32_t       *send_slot, *pos, *send_phys, *cnt; /* (S), (S), (S), (P)        */
    ep_hdr        *hdr_out;             /* (P)                                     */
    int32_t       *flag;                /* (P + 1) zeroed here; flag[P] is set when
                                           an id is outside [0, E)                 */
} ep_route_args;

/* moe__map_owner (src/ep/expert-map.c) on the device. */
static __device__ int32_t owner_of(int32_t s, int32_t n_physical, int32_t ep, int placement) {
    if (placement == MOE_PLACEMENT_ROUND_ROBIN) return s % ep;
    const int32_t base = n_physical / ep, rem = n_physical % ep, big = rem * (base + 1);
    return s < big ? s / (base + 1) : rem + (s - big) / base;
}

/* Step 2 in one block of up to EP_ROUTE_THREADS: it zeroes the flags and the
 * counters (no memset launches), then pass 1 maps every slot to its
 * physical slot (kept in pos) and counts rows per rank; then the headers;
 * pass 2 places the slots chunk by chunk, stable: within a chunk a slot's
 * place among its rank's slots is its rank in its warp (match_any) plus the
 * rows of earlier warps, after the earlier chunks' rows (cursor). Slots with
 * an id outside [0, E) go nowhere (pos = -1) and raise flag[P]. */
#define EP_ROUTE_THREADS 1024
static __global__ void __launch_bounds__(EP_ROUTE_THREADS) ep_route_kernel(const ep_route_args a) {
    extern __shared__ int32_t rsm[];
    const int32_t P = a.ep_size, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int32_t *cnt = rsm, *cur = rsm + P, *wcnt = rsm + 2 * P;   /* wcnt: (32, P) */
    for (int32_t r = threadIdx.x; r < P; r += blockDim.x) cnt[r] = 0;
    for (int32_t r = threadIdx.x; r <= P; r += blockDim.x) a.flag[r] = 0;
    for (int32_t i = threadIdx.x; a.load && i < a.n_physical; i += blockDim.x) a.load[i] = 0;
    __syncthreads();
    for (int64_t s = threadIdx.x; s < a.n_slots; s += blockDim.x) {
        const int32_t e = a.ids[s];
        int32_t phys = -1;
        if (e >= 0 && e < a.n_experts) {
            /* Knuth's multiplicative hash of the token index, as the host map */
            const uint32_t h = (uint32_t)((uint64_t)(s / a.k) * 2654435769u);
            const int32_t rc = a.rep_start[e + 1] - a.rep_start[e];
            phys = a.rep_slot[a.rep_start[e] + (int32_t)(h % (uint32_t)rc)];
            atomicAdd(&cnt[owner_of(phys, a.n_physical, P, a.placement)], 1);
            if (a.load) atomicAdd(&a.load[phys], 1);
        } else {
            a.flag[P] = 1;
        }
        a.pos[s] = phys;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int32_t off = 0;
        for (int32_t r = 0; r < P; r++) {
            a.cnt[r] = cnt[r];
            a.hdr_out[r] = ep_hdr{ MOE__EP_MAGIC, a.call, a.me, cnt[r], a.d_model,
                                   a.n_slots / a.k, a.io_format };
            cur[r] = off;
            off += cnt[r];
        }
    }
    for (int64_t base = 0; base < a.n_slots; base += blockDim.x) {
        for (int32_t i = threadIdx.x; i < 32 * P; i += blockDim.x) wcnt[i] = 0;
        __syncthreads();
        const int64_t s = base + threadIdx.x;
        const int32_t phys = s < a.n_slots ? a.pos[s] : -1;
        const int32_t r = phys >= 0 ? owner_of(phys, a.n_physical, P, a.placement) : -1;
        const unsigned same = __match_any_sync(0xffffffffu, r);
        const int32_t before = __popc(same & ((1u << lane) - 1));
        if (r >= 0 && before == 0) wcnt[warp * P + r] = __popc(same);
        __syncthreads();
        for (int32_t q = threadIdx.x; q < P; q += blockDim.x) {   /* per rank: warps' offsets */
            int32_t run = cur[q];
            for (int32_t w = 0; w < 32; w++) {
                const int32_t c = wcnt[w * P + q];
                wcnt[w * P + q] = run;
                run += c;
            }
            cur[q] = run;
        }
        __syncthreads();
        if (r >= 0) {
            const int32_t i = wcnt[warp * P + r] + before;
            a.send_slot[i] = (int32_t)s;
            a.send_phys[i] = phys;
            a.pos[s] = i;
        } else if (s < a.n_slots) {
            a.pos[s] = -1;
        }
        __syncthreads();
    }
}

/* Send row i: the activation row of slot send_slot[i] (token slot / k), its
 * fp8 scales, and its meta record. One block per row. */
static __global__ void pack_kernel(const int32_t *send_slot, const int32_t *send_phys,
                                   const float *w, int32_t k, const char *xa, size_t rb,
                                   const float *xs, int32_t n_sc, char *send_x, float *send_xs,
                                   ep_meta *send_meta) {
    const int64_t i = blockIdx.x;
    const int32_t s = send_slot[i];
    const int64_t t = s / k;
    const int4 *src = (const int4 *)(xa + (size_t)t * rb);
    int4 *dst = (int4 *)(send_x + (size_t)i * rb);
    for (size_t c = threadIdx.x; c < rb / 16; c += blockDim.x) dst[c] = src[c];
    if (send_xs)
        for (int32_t c = threadIdx.x; c < n_sc; c += blockDim.x)
            send_xs[i * n_sc + c] = xs[t * n_sc + c];
    if (threadIdx.x == 0) send_meta[i] = ep_meta{ send_phys[i], w[s] };
}

/* Received meta records -> expert ids and weights for the layout; a record
 * naming an expert this rank does not hold, or a non-finite weight, raises
 * the flag and selects no expert. Every rank sends its flag with the combine,
 * so that the senders of rows whose outputs are void learn it too. */
static __global__ void unpack_kernel(const ep_meta *meta, int64_t R, const int32_t *map,
                                     int32_t n_physical, int32_t *ids, float *w, int32_t *flag) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= R) return;
    const ep_meta m = meta[i];
    const bool held = m.expert >= 0 && m.expert < n_physical && map[m.expert] >= 0;
    if (!held || !isfinite(m.weight)) *flag = 1;
    ids[i] = held ? m.expert : -1;
    w[i]   = m.weight;
}

// ---- creation

/* The expert map's replica lists on the device, refreshed when the map
 * changed (a migration commits a new one). */
static cudaError_t sync_map(cuda_ep_host *h, const moe_expert_map *m, cudaStream_t st) {
    if (!m || h->map_version == m->version) return cudaSuccess;
    const size_t n = ((size_t)m->n_physical + (size_t)m->o.n_experts + 1) * sizeof(int32_t);
    cudaError_t e = cudaMemcpyAsync(h->d_map, m->rep_slot, n, cudaMemcpyHostToDevice, st);
    if (e == cudaSuccess) h->map_version = m->version;
    return e;
}

moe_status moe__cuda_ep_create(moe_layer *l, char *err, size_t errlen) {
    moe_comm *c = par(l)->comm;
    const moe_expert_map *m = par(l)->map;
    if (c->stream != l->ctx->opts.cuda_stream)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                         "the communicator's stream must be the layer context's cuda_stream "
                         "(the exchanges are ordered on it)");
    const int32_t P = c->size, n_phys = m ? m->n_physical : 0;
    if (P > 256)
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED,
                         "cuda: %d ranks; the device send order handles up to 256", P);
    const size_t sizes[6] = {
        2 * (size_t)(P + 1) * 4, (size_t)P * MOE_CUDA_HDR_BYTES, (size_t)P * MOE_CUDA_HDR_BYTES,
        ((size_t)P + 1) * 4, (size_t)n_phys * 4, 7 * (size_t)P * sizeof(moe__msg),
    };
    size_t total = 0;
    for (int i = 0; i < 6; i++) total += moe__align_up(sizes[i], 64);
    cuda_ep_host *h = (cuda_ep_host *)moe__calloc(1, sizeof *h);
    if (!h) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    ((cuda_layer *)l->cuda)->ep_host = h;   /* freed by moe__cuda_ep_destroy from here on */
    char *p = NULL;
    MOE_CUDA_TRY(cudaMallocHost(&p, total), err, errlen);
    h->block = p;
    void **dst[6] = { (void **)&h->cnt, &h->hdr_out, &h->hdr_in, (void **)&h->flag,
                      (void **)&h->load, (void **)&h->msgs };
    for (int i = 0; i < 6; i++) {
        *dst[i] = sizes[i] ? p : NULL;
        p += moe__align_up(sizes[i], 64);
    }
    for (int i = 0; i < 4; i++) MOE_CUDA_TRY(cudaEventCreate(&h->ev[i]), err, errlen);
    if (m) {
        const size_t nm = ((size_t)n_phys + (size_t)m->o.n_experts + 1) * sizeof(int32_t);
        MOE_CUDA_TRY(cudaMalloc((void **)&h->d_map, nm), err, errlen);
        MOE_CUDA_TRY(sync_map(h, m, (cudaStream_t)c->stream), err, errlen);
        MOE_CUDA_TRY(cudaStreamSynchronize((cudaStream_t)c->stream), err, errlen);
    }
    return MOE_OK;
}

void moe__cuda_ep_destroy(moe_layer *l) {
    cuda_layer *cl = (cuda_layer *)l->cuda;
    cuda_ep_host *h = cl ? cl->ep_host : NULL;
    if (!h) return;
    for (int i = 0; i < 4; i++)
        if (h->ev[i]) cudaEventDestroy(h->ev[i]);
    cudaFree(h->d_map);
    cudaFreeHost(h->block);
    moe__free(h);
    cl->ep_host = NULL;
}

// ---- workspace

/* The expert-parallel buffers, after the plan's. */
typedef struct ep_plan {
    size_t hdr, order, load, send_x, send_xs, send_meta, recv_x, recv_xs, recv_meta,
        recv_ids, recv_w, back, flag;
} ep_plan;

typedef struct ep_bufs {
    ep_hdr  *hdr_out, *hdr_in;  /* (P) each                                         */
    int32_t *cnt;               /* (P) send counts, right after hdr_in: one copy back */
    int32_t *send_slot, *pos, *send_phys;  /* (S) each                              */
    int32_t *load;              /* (n_physical) EPLB counters, or NULL              */
    char    *send_x, *recv_x;
    float   *send_xs, *recv_xs, *recv_w, *back;
    ep_meta *send_meta, *recv_meta;
    int32_t *recv_ids;
    int32_t *flag;              /* (P + 1) protocol flags, then the range flag      */
} ep_bufs;

static ep_plan ep_plan_for(const moe_layer *l, int64_t T) {
    const cuda_experts *ex = moe__cuda_experts_state(l->opts.experts);
    const int     dt   = ex ? ex->dtype : MOE_CUDA_BF16;
    const int32_t P    = par(l)->comm->size;
    const int64_t H    = l->opts.experts->opts.d_model, S = T * l->opts.router->opts.top_k;
    const int64_t C    = cap_rows(l);
    const size_t  rb   = row_bytes(dt, H);
    const size_t  sc   = dt == MOE_CUDA_FP8 ? (size_t)cdiv(H, MOE_CUDA_QBLOCK) * 4 : 0;
    ep_plan p;
    p.hdr       = 2 * (size_t)P * sizeof(ep_hdr) + (size_t)P * 4;   /* + cnt */
    p.order     = 3 * (size_t)S * 4;
    p.load      = par(l)->load ? (size_t)par(l)->map->n_physical * 4 : 0;
    p.send_x    = (size_t)S * rb;
    p.send_xs   = (size_t)S * sc;
    p.send_meta = (size_t)S * sizeof(ep_meta);
    p.recv_x    = (size_t)C * rb;
    p.recv_xs   = (size_t)C * sc;
    p.recv_meta = (size_t)C * sizeof(ep_meta);
    p.recv_ids  = (size_t)C * 4;
    p.recv_w    = (size_t)C * 4;
    p.back      = (size_t)S * (size_t)H * 4;
    p.flag      = ((size_t)P + 1) * 4;
    return p;
}

/* Workspace bytes of the two plans, with the alignment slack of the start. */
static size_t ep_bytes(const ws_plan *base, const ep_plan *p) {
    const size_t *v = (const size_t *)p;
    size_t total = moe__cuda_plan_bytes(base);
    for (size_t i = 0; i < sizeof *p / sizeof(size_t); i++) total += moe__align_up(v[i], WS_ALIGN);
    return total + WS_ALIGN;
}

size_t moe__cuda_ep_workspace_size(const moe_layer *l, int64_t T) {
    ws_plan base = moe__cuda_plan(l, T, cap_rows(l));
    ep_plan p = ep_plan_for(l, T);
    return ep_bytes(&base, &p);
}

static ep_bufs ep_carve(const ep_plan *p, int32_t P, int64_t S, char **cur) {
    ep_bufs b;
    b.hdr_out   = (ep_hdr *)take(cur, p->hdr);
    b.hdr_in    = b.hdr_out + P;
    b.cnt       = (int32_t *)(b.hdr_in + P);
    b.send_slot = (int32_t *)take(cur, p->order);
    b.pos       = b.send_slot + S;
    b.send_phys = b.pos + S;
    b.load      = (int32_t *)take(cur, p->load);
    b.send_x    = (char *)take(cur, p->send_x);
    b.send_xs   = (float *)take(cur, p->send_xs);
    b.send_meta = (ep_meta *)take(cur, p->send_meta);
    b.recv_x    = (char *)take(cur, p->recv_x);
    b.recv_xs   = (float *)take(cur, p->recv_xs);
    b.recv_meta = (ep_meta *)take(cur, p->recv_meta);
    b.recv_ids  = (int32_t *)take(cur, p->recv_ids);
    b.recv_w    = (float *)take(cur, p->recv_w);
    b.back      = (float *)take(cur, p->back);
    b.flag      = (int32_t *)take(cur, p->flag);
    return b;
}

// ---- the forward

/* Waits for the stream within the call's deadline. */
static moe_status wait_stream(moe_layer *l, moe__phase phase, const char *what) {
    moe_status st = moe__comm_wait(par(l)->comm, phase);
    return st ? moe__ep_fail(l, st, what) : MOE_OK;
}

static moe_status ep_forward_call(moe_layer *l, int64_t T, const void *x, const float *logits,
                                  const int32_t *ids_in, const float *w_in,
                                  const moe_shared_experts *sh, void *out, void *ws,
                                  size_t ws_size) {
    char *err = l->err;
    const size_t errlen = sizeof l->err;
    moe_comm *c = par(l)->comm;
    cuda_ctx *cx = (cuda_ctx *)l->ctx->cuda;
    const cuda_layer *cl = (const cuda_layer *)l->cuda;
    const cuda_experts *ex = moe__cuda_experts_state(l->opts.experts);
    cuda_ep_host *h = cl ? cl->ep_host : NULL;
    if (!cx || !ex || !h) return moe__errf(err, errlen, MOE_ERR_INTERNAL, "cuda: layer not set up");
    if (c->broken) return moe__ep_fail(l, c->broken, "expert-parallel forward");
    const cuda_experts *sx = sh ? moe__cuda_experts_state(sh->mlp) : NULL;
    if (sh && !sx)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                         "cuda: these shared experts were not uploaded: give them in "
                         "moe_layer_options.shared");
    const moe_router_options *ro = &l->opts.router->opts;
    const int32_t P = c->size, me = c->rank, K = ro->top_k, nl = ex->n_local;
    const int64_t S = T * K, H = ex->H, C = cap_rows(l), cap_peer = max_rows_peer(l);
    const size_t  rb = row_bytes(ex->dtype, H);
    const int32_t n_sc = ex->dtype == MOE_CUDA_FP8 ? (int32_t)cdiv(H, MOE_CUDA_QBLOCK) : 0;
    const bool    llama4 = ro->scoring == MOE_SCORING_LLAMA4;
    /* the slot rows W2 writes, sends back and finalize sums */
    const int     y_bf16 = moe__cuda_y_bf16(l->opts.io_format);
    cudaStream_t  st = cx->main;
    ws_plan bp = moe__cuda_plan(l, T, C);
    ep_plan ep = ep_plan_for(l, T);
    const size_t need = ep_bytes(&bp, &ep);
    if (ws_size < need)
        return moe__errf(err, errlen, MOE_ERR_WORKSPACE,
                         "workspace of %zu bytes is too small for %lld tokens (need %zu)", ws_size,
                         (long long)T, need);
    char *cur = (char *)moe__align_up((uintptr_t)ws, WS_ALIGN);
    ws_bufs b = moe__cuda_carve(&bp, &cur);
    ep_bufs e = ep_carve(&ep, P, S, &cur);
    moe_status s;

    // 1. inputs and routing (a rank without tokens still serves its experts)
    moe__cuda_inputs in = { NULL, NULL, NULL, false };
    if (T && (s = moe__cuda_prepare_inputs(l, T, x, logits, !ids_in, ex, sx, &b, st, &in)))
        return s;
    if (!ids_in && T) {
        MOE_CUDA_TRY(moe__route_cuda(ro, cl->bias, in.logits, T, b.ids, b.w, st), err, errlen);
        ids_in = b.ids;
        w_in = b.w;
    }
    const int order = sx && T ? (int)l->opts.shared_order : -1;
    if (order == MOE_SHARED_BEFORE &&
        (s = moe__cuda_run_shared(l, sx, sh, T, in.xa_sh, b.xs, b.sg, &b, st)))
        return s;
    if (order == MOE_SHARED_OVERLAPPED) {
        MOE_CUDA_TRY(cudaEventRecord(cx->fork, st), err, errlen);
        MOE_CUDA_TRY(cudaStreamWaitEvent(cx->aux, cx->fork, 0), err, errlen);
        if ((s = moe__cuda_run_shared(l, sx, sh, T, in.xa_sh, b.xs, b.sg, &b, cx->aux)))
            return s;
        MOE_CUDA_TRY(cudaEventRecord(cx->join, cx->aux), err, errlen);
    }

    // 2. the send order, on the device
    const moe_expert_map *m = par(l)->map;
    MOE_CUDA_TRY(cudaEventRecord(h->ev[0], st), err, errlen);
    MOE_CUDA_TRY(sync_map(h, m, st), err, errlen);
    const uint32_t call_no = (uint32_t)c->stats.calls++;
    const ep_route_args ra = {
        ids_in, S, K, m->o.n_experts, h->d_map, h->d_map + m->n_physical, m->n_physical, P,
        (int32_t)m->o.placement, me, call_no, H, (int32_t)l->opts.io_format, e.load, e.send_slot,
        e.pos, e.send_phys, e.cnt, e.hdr_out, e.flag,
    };
    const int threads = S >= EP_ROUTE_THREADS ? EP_ROUTE_THREADS : (int)cdiv(S ? S : 1, 32) * 32;
    ep_route_kernel<<<1, threads, (size_t)34 * P * 4, st>>>(ra);
    MOE_CUDA_TRY(cudaGetLastError(), err, errlen);

    // 3. counts first: the forward's one wait before its end
    ep_hdr *hin = (ep_hdr *)h->hdr_in;
    const int32_t *cnt = (const int32_t *)(hin + P);   /* copied back with the headers */
    int32_t *off = h->cnt, *roff = h->cnt + (P + 1);
    moe__msg *sends = h->msgs, *recvs = h->msgs + 3 * P;
    int ns = 0, nr = 0;
    for (int32_t r = 0; r < P; r++) {
        if (r == me) continue;
        sends[ns++] = moe__msg{ r, 0, e.hdr_out + r, sizeof(ep_hdr) };
        recvs[nr++] = moe__msg{ r, 0, e.hdr_in + r, sizeof(ep_hdr) };
    }
    if (P > 1 && (s = moe__comm_post(c, MOE__PHASE_DISPATCH, sends, ns, recvs, nr)))
        return moe__ep_fail(l, s, "expert-parallel dispatch (counts)");
    MOE_CUDA_TRY(cudaMemcpyAsync(hin, e.hdr_in, (size_t)P * (sizeof(ep_hdr) + 4),
                                 cudaMemcpyDeviceToHost, st), err, errlen);
    if ((s = wait_stream(l, MOE__PHASE_DISPATCH, "expert-parallel dispatch (counts)"))) return s;
    hin[me] = ep_hdr{ MOE__EP_MAGIC, call_no, me, cnt[me], H, T, (int32_t)l->opts.io_format };
    off[0] = roff[0] = 0;
    for (int32_t r = 0; r < P; r++) {
        const ep_hdr *hd = &hin[r];
        if ((s = moe__ep_check_hdr(l, "expert-parallel forward", hd, r, call_no, H, cap_peer, -1)))
            return s;
        off[r + 1] = off[r] + cnt[r];
        roff[r + 1] = roff[r] + hd->n_rows;
    }
    const int64_t R = roff[P];
    MOE_ASSERT(R <= C);

    // 4. pack and send the rows; this rank's own rows are a device copy
    const int64_t n_send = off[P];   /* S less the slots with ids out of range */
    if (n_send) {
        pack_kernel<<<(unsigned)n_send, 128, 0, st>>>(e.send_slot, e.send_phys,
                                                 w_in, K, (const char *)in.xa,
                                                 rb, b.xs, n_sc, e.send_x, n_sc ? e.send_xs : NULL,
                                                 e.send_meta);
        MOE_CUDA_TRY(cudaGetLastError(), err, errlen);
    }
    ns = nr = 0;
    for (int32_t r = 0; r < P; r++) {
        const int32_t nin = hin[r].n_rows;
        if (r == me) {
            struct { void *d; const void *s; size_t n; } cp[3] = {
                { e.recv_x + (size_t)roff[r] * rb, e.send_x + (size_t)off[r] * rb,
                  (size_t)cnt[r] * rb },
                { e.recv_xs + (size_t)roff[r] * n_sc, e.send_xs + (size_t)off[r] * n_sc,
                  (size_t)cnt[r] * n_sc * 4 },
                { e.recv_meta + roff[r], e.send_meta + off[r], (size_t)cnt[r] * sizeof(ep_meta) },
            };
            for (int i = 0; i < 3; i++)
                if (cp[i].n)
                    MOE_CUDA_TRY(cudaMemcpyAsync(cp[i].d, cp[i].s, cp[i].n,
                                                 cudaMemcpyDeviceToDevice, st), err, errlen);
            continue;
        }
        sends[ns++] = moe__msg{ r, 1, e.send_meta + off[r], (size_t)cnt[r] * sizeof(ep_meta) };
        sends[ns++] = moe__msg{ r, 2, e.send_x + (size_t)off[r] * rb, (size_t)cnt[r] * rb };
        recvs[nr++] = moe__msg{ r, 1, e.recv_meta + roff[r], (size_t)nin * sizeof(ep_meta) };
        recvs[nr++] = moe__msg{ r, 2, e.recv_x + (size_t)roff[r] * rb, (size_t)nin * rb };
        if (n_sc) {
            sends[ns++] = moe__msg{ r, 3, e.send_xs + (size_t)off[r] * n_sc,
                                    (size_t)cnt[r] * n_sc * 4 };
            recvs[nr++] = moe__msg{ r, 3, e.recv_xs + (size_t)roff[r] * n_sc,
                                    (size_t)nin * n_sc * 4 };
        }
    }
    if (P > 1 && (s = moe__comm_post(c, MOE__PHASE_DISPATCH, sends, ns, recvs, nr)))
        return moe__ep_fail(l, s, "expert-parallel dispatch (rows)");

    // 5-6. the received rows through the experts
    MOE_CUDA_TRY(cudaEventRecord(h->ev[1], st), err, errlen);
    if (R) {
        unpack_kernel<<<(unsigned)cdiv(R, 256), 256, 0, st>>>(e.recv_meta, R, ex->map,
                                                              ex->n_global, e.recv_ids, e.recv_w,
                                                              e.flag + me);
        MOE_CUDA_TRY(cudaGetLastError(), err, errlen);
        const int     bm = moe__cuda_pick_bm(ex->dtype, R, nl, moe__cuda_prefill_kind(l, ex));
        const int64_t mt = moe__cuda_max_tiles(R, nl, bm);
        MOE_CUDA_TRY(moe__align_cuda(e.recv_ids, R, 1, ex->map, ex->n_global, nl, bm, mt, &b.ao,
                                     st), err, errlen);
        if ((s = moe__cuda_run_experts(l, ex, &l->opts.experts->opts, R, bm, e.recv_x,
                                       n_sc ? e.recv_xs : NULL, b.ao.row_slot, 1,
                                       b.ao.expert_start, b.ao.tiles, b.ao.n_tiles, mt,
                                       llama4 ? e.recv_w : NULL, llama4 ? NULL : e.recv_w, b.h1,
                                       b.h1q, b.h1s, b.y, y_bf16, 0, st)))
            return s;
    }

    // 7. combine: outputs back in each sender's order
    MOE_CUDA_TRY(cudaEventRecord(h->ev[2], st), err, errlen);
    ns = nr = 0;
    for (int32_t r = 0; r < P; r++) {
        const size_t nin = (size_t)hin[r].n_rows, hb = (size_t)H * (y_bf16 ? 2 : 4);
        char        *y = (char *)b.y, *back = (char *)e.back;
        if (r == me) {
            if (cnt[r])
                MOE_CUDA_TRY(cudaMemcpyAsync(back + (size_t)off[r] * hb, y + (size_t)roff[r] * hb,
                                             (size_t)cnt[r] * hb, cudaMemcpyDeviceToDevice, st),
                             err, errlen);
            continue;
        }
        sends[ns++] = moe__msg{ r, 4, y + (size_t)roff[r] * hb, nin * hb };
        recvs[nr++] = moe__msg{ r, 4, back + (size_t)off[r] * hb, (size_t)cnt[r] * hb };
        sends[ns++] = moe__msg{ r, 5, e.flag + me, 4 };
        recvs[nr++] = moe__msg{ r, 5, e.flag + r, 4 };
    }
    if (P > 1 && (s = moe__comm_post(c, MOE__PHASE_COMBINE, sends, ns, recvs, nr)))
        return moe__ep_fail(l, s, "expert-parallel combine");
    if (order == MOE_SHARED_IN_COMBINE) {
        MOE_CUDA_TRY(cudaEventRecord(cx->fork, st), err, errlen);
        MOE_CUDA_TRY(cudaStreamWaitEvent(cx->aux, cx->fork, 0), err, errlen);
        if ((s = moe__cuda_run_shared(l, sx, sh, T, in.xa_sh, b.xs, b.sg, &b, cx->aux)))
            return s;
        MOE_CUDA_TRY(cudaEventRecord(cx->join, cx->aux), err, errlen);
    }
    if (order == MOE_SHARED_OVERLAPPED || order == MOE_SHARED_IN_COMBINE)
        MOE_CUDA_TRY(cudaStreamWaitEvent(st, cx->join, 0), err, errlen);
    MOE_CUDA_TRY(moe__finalize_cuda(e.back, y_bf16, e.pos, sx ? b.sh_y : NULL, T, K, H, out,
                                    l->opts.io_format, 0, 1, st), err, errlen);

    // 8. complete within the deadline, then the protocol flags
    MOE_CUDA_TRY(cudaEventRecord(h->ev[3], st), err, errlen);
    MOE_CUDA_TRY(cudaMemcpyAsync(h->flag, e.flag, ep.flag, cudaMemcpyDeviceToHost, st), err,
                 errlen);
    if (e.load)
        MOE_CUDA_TRY(cudaMemcpyAsync(h->load, e.load, ep.load, cudaMemcpyDeviceToHost, st), err,
                     errlen);
    if ((s = wait_stream(l, MOE__PHASE_COMBINE, "expert-parallel combine"))) return s;
    if (e.load)
        for (int32_t i = 0; i < m->n_physical; i++) par(l)->load[i] += h->load[i];
    float ms[3] = { 0, 0, 0 };
    for (int i = 0; i < 3; i++) cudaEventElapsedTime(&ms[i], h->ev[i], h->ev[i + 1]);
    c->stats.device_dispatch_s += ms[0] * 1e-3;
    c->stats.device_experts_s += ms[1] * 1e-3;
    c->stats.device_combine_s += ms[2] * 1e-3;
    if (h->flag[P])
        return moe__errf(err, errlen, MOE_ERR_RANGE,
                         "expert-parallel forward: a routed expert id is outside [0, %d); its "
                         "slot contributed nothing", m->o.n_experts);
    if (h->flag[me])
        return moe__ep_protocol(l, "expert-parallel forward", "received a row for an expert not held here, or a non-finite weight");
    for (int32_t r = 0; r < P; r++)
        if (h->flag[r])
            return moe__ep_protocol(l, "expert-parallel forward", "rank %d received a malformed row in this forward: the outputs it "
                               "returned are void", r);
    return MOE_OK;
}

moe_status moe__cuda_ep_forward(moe_layer *l, int64_t T, const void *x, const float *logits,
                                const int32_t *ids_in, const float *w_in,
                                const moe_shared_experts *sh, void *out, void *ws,
                                size_t ws_size) {
    moe_comm *c = par(l)->comm;
    c->call_end = moe__now_s() + c->deadline_ms * 1e-3;
    moe_status st = ep_forward_call(l, T, x, logits, ids_in, w_in, sh, out, ws, ws_size);
    c->call_end = 0;
    return st;
}
