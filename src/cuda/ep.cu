/*
 * ep.cu - expert parallelism on the CUDA backend over a device transport
 * (NCCL): the "nccl" prepare/finalize, run inside the CUDA forward.
 *
 * One forward, on the context's stream (which is the communicator's):
 *   1. x in the compute type, routing -> topk_ids, topk_w (T, k): as on one
 *      device (cuda.cu)
 *   2. ids to the host (sync 1): logical -> physical slots with the expert
 *      map (replica hash, EPLB counters), slots grouped by destination rank,
 *      ascending within a rank: the send order
 *   3. counts first: a header to and from every peer, back to the host
 *      (sync 2), checked (magic, forward number, d_model, capacity)
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
 *   8. the host waits for the stream (deadline-bound, sync 3) and reads the
 *      protocol flags (its own and those the peers sent with the combine): a
 *      call that returns MOE_OK has its data.
 * Shared experts: BEFORE runs them on the main stream first; OVERLAPPED on
 * the aux stream from the start; IN_COMBINE on the aux stream launched right
 * after the combine is posted, so that they run while it is in flight.
 *
 * One deadline per forward (deadline_ms from its start) bounds syncs 2 and 3;
 * a dead or silent peer gives MOE_ERR_TIMEOUT or MOE_ERR_PEER_DEAD, and the
 * communicator is aborted (src/ep/nccl-comm.c).
 */
#include "backend.cuh"

#include "cuda.h"

#include <string.h>

#define EP_MAGIC 0x4c43434eu   /* "NCCL" */

typedef struct ep_hdr {
    uint32_t magic;
    uint32_t call;       /* the sender's forward count: ranks must be in step */
    int32_t  src_rank;
    int32_t  n_rows;     /* rows that follow                                  */
    int64_t  d_model;
} ep_hdr;

static_assert(sizeof(ep_hdr) <= MOE_CUDA_HDR_BYTES, "header staging");

typedef struct ep_meta {
    int32_t expert;      /* physical expert id                                */
    float   weight;      /* routing weight (Llama-4: the input scale)         */
} ep_meta;



static const moe_parallel *par(const moe_layer *l) { return l->opts.parallel; }

static int64_t max_rows_peer(const moe_layer *l) {
    return l->opts.max_tokens * l->opts.router->opts.top_k;
}

static int64_t cap_rows(const moe_layer *l) { return par(l)->comm->size * max_rows_peer(l); }

/* Bytes of the upload block for S slots over P ranks. */
static size_t up_bytes(int32_t P, int64_t S) {
    return (size_t)P * MOE_CUDA_HDR_BYTES + 3 * (size_t)S * sizeof(int32_t);
}

// ---- kernels

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

moe_status moe__cuda_ep_create(moe_layer *l, char *err, size_t errlen) {
    moe_comm *c = par(l)->comm;
    if (c->stream != l->ctx->opts.cuda_stream)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                         "the communicator's stream must be the layer context's cuda_stream "
                         "(the exchanges are ordered on it)");
    const int32_t P = c->size;
    const int64_t S = max_rows_peer(l);
    const size_t sizes[7] = {
        (size_t)S * 4, (size_t)S * 4, 3 * (size_t)(P + 1) * 4, (size_t)P * MOE_CUDA_HDR_BYTES,
        up_bytes(P, S), (size_t)P * 4, 7 * (size_t)P * sizeof(moe__msg),
    };
    size_t total = 0;
    for (int i = 0; i < 7; i++) total += moe__align_up(sizes[i], 64);
    cuda_ep_host *h = (cuda_ep_host *)moe__calloc(1, sizeof *h);
    if (!h) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    char *p = NULL;
    cudaError_t ce = cudaMallocHost(&p, total);
    if (ce != cudaSuccess) {
        moe__free(h);
        return moe__errf(err, errlen, MOE_ERR_CUDA, "cuda: %zu bytes of pinned memory: %s", total,
                         cudaGetErrorString(ce));
    }
    /* h->up first: it is the block cudaFreeHost takes back */
    void **dst[7] = { (void **)&h->up, (void **)&h->ids, (void **)&h->phys, (void **)&h->cnt,
                      (void **)&h->hdr_in, (void **)&h->flag, (void **)&h->msgs };
    const size_t order[7] = { sizes[4], sizes[0], sizes[1], sizes[2], sizes[3], sizes[5],
                              sizes[6] };
    for (int i = 0; i < 7; i++) {
        *dst[i] = p;
        p += moe__align_up(order[i], 64);
    }
    ((cuda_layer *)l->cuda)->ep_host = h;
    for (int i = 0; i < 4; i++) MOE_CUDA_TRY(cudaEventCreate(&h->ev[i]), err, errlen);
    return MOE_OK;
}

void moe__cuda_ep_destroy(moe_layer *l) {
    cuda_layer *cl = (cuda_layer *)l->cuda;
    cuda_ep_host *h = cl ? (cuda_ep_host *)cl->ep_host : NULL;
    if (!h) return;
    for (int i = 0; i < 4; i++)
        if (h->ev[i]) cudaEventDestroy(h->ev[i]);
    cudaFreeHost(h->up);
    moe__free(h);
    cl->ep_host = NULL;
}

// ---- workspace

/* The expert-parallel buffers, after the plan's. */
typedef struct ep_plan {
    size_t up, hdr_in, send_x, send_xs, send_meta, recv_x, recv_xs, recv_meta, recv_ids, recv_w,
        back, flag;
} ep_plan;

typedef struct ep_bufs {
    char    *up, *send_x, *recv_x;
    ep_hdr  *hdr_in;
    float   *send_xs, *recv_xs, *recv_w, *back;
    ep_meta *send_meta, *recv_meta;
    int32_t *recv_ids, *flag;   /* flag: (P) every rank's protocol flag */
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
    p.up        = up_bytes(P, S);
    p.hdr_in    = (size_t)P * sizeof(ep_hdr);
    p.send_x    = (size_t)S * rb;
    p.send_xs   = (size_t)S * sc;
    p.send_meta = (size_t)S * sizeof(ep_meta);
    p.recv_x    = (size_t)C * rb;
    p.recv_xs   = (size_t)C * sc;
    p.recv_meta = (size_t)C * sizeof(ep_meta);
    p.recv_ids  = (size_t)C * 4;
    p.recv_w    = (size_t)C * 4;
    p.back      = (size_t)S * (size_t)H * 4;
    p.flag      = (size_t)P * 4;
    return p;
}

size_t moe__cuda_ep_workspace_size(const moe_layer *l, int64_t T) {
    ws_plan base = moe__cuda_plan(l, T, cap_rows(l));
    ep_plan p = ep_plan_for(l, T);
    const size_t *v = (const size_t *)&p;
    size_t total = moe__cuda_plan_bytes(&base);
    for (size_t i = 0; i < sizeof p / sizeof(size_t); i++) total += moe__align_up(v[i], WS_ALIGN);
    return total + WS_ALIGN;
}

static ep_bufs ep_carve(const ep_plan *p, char **cur) {
    ep_bufs b;
    b.up        = (char *)take(cur, p->up);
    b.hdr_in    = (ep_hdr *)take(cur, p->hdr_in);
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

/* The layer's message: the communicator's, with a prefix. */
static moe_status fail(moe_layer *l, moe_status st, const char *what) {
    return moe__errf(l->err, sizeof l->err, st, "%s: %s", what, par(l)->comm->err);
}

static moe_status protocol(moe_layer *l, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static moe_status protocol(moe_layer *l, const char *fmt, ...) {
    moe_comm *c = par(l)->comm;
    va_list ap;
    va_start(ap, fmt);
    moe__verrf(c->err, sizeof c->err, MOE_ERR_PROTOCOL, fmt, ap);
    va_end(ap);
    c->broken = MOE_ERR_PROTOCOL;
    return fail(l, MOE_ERR_PROTOCOL, "expert-parallel forward");
}

/* Waits for the stream within the call's deadline. */
static moe_status wait_stream(moe_layer *l, moe__phase phase, const char *what) {
    moe_status st = moe__comm_wait(par(l)->comm, phase);
    return st ? fail(l, st, what) : MOE_OK;
}

/* 2. Send order on the host: h->cnt = send counts and offsets by rank; the
 * upload block gets send_slot (slots ascending within a rank), pos (slot ->
 * send row) and send_phys. */
static moe_status plan_sends(moe_layer *l, cuda_ep_host *h, int64_t T) {
    const moe_parallel   *p = par(l);
    const moe_expert_map *m = p->map;
    const int32_t P = p->comm->size, K = l->opts.router->opts.top_k;
    const int64_t S = T * K;
    moe_status st = moe_expert_map_route(m, T, K, h->ids, h->phys, p->load);
    if (st)
        return moe__errf(l->err, sizeof l->err, st,
                         "expert-parallel dispatch: a routed expert id is outside [0, %d)",
                         m->o.n_experts);
    int32_t *cnt = h->cnt, *off = h->cnt + (P + 1), *cur = h->cnt + 2 * (P + 1);
    int32_t *send_slot = (int32_t *)(h->up + (size_t)P * MOE_CUDA_HDR_BYTES);
    int32_t *pos = send_slot + S, *send_phys = pos + S;
    memset(cnt, 0, (size_t)(P + 1) * sizeof(int32_t));
    for (int64_t s = 0; s < S; s++) cnt[moe__map_owner(&m->o, m->n_physical, h->phys[s])]++;
    off[0] = 0;
    for (int32_t r = 0; r < P; r++) off[r + 1] = off[r] + cnt[r];
    memcpy(cur, off, (size_t)(P + 1) * sizeof(int32_t));
    for (int64_t s = 0; s < S; s++) {
        const int32_t i = cur[moe__map_owner(&m->o, m->n_physical, h->phys[s])]++;
        send_slot[i] = (int32_t)s;
        pos[s]       = i;
        send_phys[i] = h->phys[s];
    }
    return MOE_OK;
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
    cuda_ep_host *h = cl ? (cuda_ep_host *)cl->ep_host : NULL;
    if (!cx || !ex || !h) return moe__errf(err, errlen, MOE_ERR_INTERNAL, "cuda: layer not set up");
    if (c->broken) return fail(l, c->broken, "expert-parallel forward");
    const cuda_experts *sx = sh ? moe__cuda_experts_state(sh->mlp) : NULL;
    if (sh && !sx)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                         "cuda: these shared experts were not uploaded: give them in "
                         "moe_layer_options.shared");
    size_t need = moe__cuda_ep_workspace_size(l, T);
    if (ws_size < need)
        return moe__errf(err, errlen, MOE_ERR_WORKSPACE,
                         "workspace of %zu bytes is too small for %lld tokens (need %zu)", ws_size,
                         (long long)T, need);

    const moe_router_options *ro = &l->opts.router->opts;
    const int32_t P = c->size, me = c->rank, K = ro->top_k, nl = ex->n_local;
    const int64_t S = T * K, H = ex->H, C = cap_rows(l), cap_peer = max_rows_peer(l);
    const size_t  rb = row_bytes(ex->dtype, H);
    const int32_t n_sc = ex->dtype == MOE_CUDA_FP8 ? (int32_t)cdiv(H, MOE_CUDA_QBLOCK) : 0;
    const bool    llama4 = ro->scoring == MOE_SCORING_LLAMA4;
    cudaStream_t  st = cx->main;
    ws_plan bp = moe__cuda_plan(l, T, C);
    ep_plan ep = ep_plan_for(l, T);
    char *cur = (char *)moe__align_up((uintptr_t)ws, WS_ALIGN);
    ws_bufs b = moe__cuda_carve(&bp, &cur);
    ep_bufs e = ep_carve(&ep, &cur);
    moe_status s;

    // 1. inputs and routing (a rank without tokens still serves its experts)
    moe__cuda_inputs in = { NULL, NULL, NULL };
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

    // 2. routing ids to the host, the send order
    MOE_CUDA_TRY(cudaEventRecord(h->ev[0], st), err, errlen);
    if (S) {
        MOE_CUDA_TRY(cudaMemcpyAsync(h->ids, ids_in, (size_t)S * 4, cudaMemcpyDeviceToHost, st),
                     err, errlen);
        MOE_CUDA_TRY(cudaStreamSynchronize(st), err, errlen);
    }
    if ((s = plan_sends(l, h, T))) return s;
    const int32_t *cnt = h->cnt, *off = h->cnt + (P + 1);
    int32_t *roff = h->cnt + 2 * (P + 1);

    // 3. counts first
    ep_hdr *hin = (ep_hdr *)h->hdr_in;
    const uint32_t call_no = (uint32_t)c->stats.calls++;
    ep_hdr *hdr_out = (ep_hdr *)h->up;
    for (int32_t r = 0; r < P; r++) hdr_out[r] = ep_hdr{ EP_MAGIC, call_no, me, cnt[r], H };
    MOE_CUDA_TRY(cudaMemcpyAsync(e.up, h->up, up_bytes(P, S), cudaMemcpyHostToDevice, st), err,
                 errlen);
    moe__msg *sends = h->msgs, *recvs = h->msgs + 3 * P;
    int ns = 0, nr = 0;
    for (int32_t r = 0; r < P; r++) {
        if (r == me) continue;
        sends[ns++] = moe__msg{ r, 0, (ep_hdr *)e.up + r, sizeof(ep_hdr) };
        recvs[nr++] = moe__msg{ r, 0, e.hdr_in + r, sizeof(ep_hdr) };
    }
    if (P > 1 && (s = moe__comm_post(c, MOE__PHASE_DISPATCH, sends, ns, recvs, nr)))
        return fail(l, s, "expert-parallel dispatch (counts)");
    MOE_CUDA_TRY(cudaMemcpyAsync(h->hdr_in, e.hdr_in, (size_t)P * sizeof(ep_hdr),
                                 cudaMemcpyDeviceToHost, st), err, errlen);
    if ((s = wait_stream(l, MOE__PHASE_DISPATCH, "expert-parallel dispatch (counts)"))) return s;
    hin[me] = hdr_out[me];
    roff[0] = 0;
    for (int32_t r = 0; r < P; r++) {
        const ep_hdr *hd = &hin[r];
        if (hd->magic != EP_MAGIC || hd->src_rank != r)
            return protocol(l, "rank %d: bad header (magic %08x, rank %d)", r, hd->magic,
                            hd->src_rank);
        if (hd->call != call_no)
            return protocol(l, "rank %d is at forward %u, this rank at %u", r, hd->call, call_no);
        if (hd->d_model != H)
            return protocol(l, "rank %d: d_model %lld, here %lld", r, (long long)hd->d_model,
                            (long long)H);
        if (hd->n_rows < 0 || hd->n_rows > cap_peer)
            return protocol(l, "rank %d announces %d rows, capacity %lld", r, hd->n_rows,
                            (long long)cap_peer);
        roff[r + 1] = roff[r] + hd->n_rows;
    }
    const int64_t R = roff[P];
    MOE_ASSERT(R <= C);

    // 4. pack and send the rows; this rank's own rows are a device copy
    const int32_t *d_send_slot = (const int32_t *)(e.up + (size_t)P * MOE_CUDA_HDR_BYTES);
    const int32_t *d_pos = d_send_slot + S, *d_send_phys = d_pos + S;
    MOE_CUDA_TRY(cudaMemsetAsync(e.flag, 0, (size_t)P * 4, st), err, errlen);
    if (S) {
        pack_kernel<<<(unsigned)S, 128, 0, st>>>(d_send_slot, d_send_phys,
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
        return fail(l, s, "expert-parallel dispatch (rows)");

    // 5-6. the received rows through the experts
    MOE_CUDA_TRY(cudaEventRecord(h->ev[1], st), err, errlen);
    if (R) {
        unpack_kernel<<<(unsigned)cdiv(R, 256), 256, 0, st>>>(e.recv_meta, R, ex->map,
                                                              ex->n_global, e.recv_ids, e.recv_w,
                                                              e.flag + me);
        MOE_CUDA_TRY(cudaGetLastError(), err, errlen);
        const int     bm = moe__cuda_pick_bm(ex->dtype, R, nl);
        const int64_t mt = moe__cuda_max_tiles(R, nl, bm);
        MOE_CUDA_TRY(moe__align_cuda(e.recv_ids, R, 1, ex->map, ex->n_global, nl, bm, mt, &b.ao,
                                     st), err, errlen);
        if ((s = moe__cuda_run_experts(l, ex, &l->opts.experts->opts, R, bm, e.recv_x,
                                       n_sc ? e.recv_xs : NULL, b.ao.row_slot, 1,
                                       b.ao.expert_start, b.ao.tiles, b.ao.n_tiles, mt,
                                       llama4 ? e.recv_w : NULL, llama4 ? NULL : e.recv_w, b.h1,
                                       b.h1q, b.h1s, b.y, 0, st)))
            return s;
    }

    // 7. combine: outputs back in each sender's order
    MOE_CUDA_TRY(cudaEventRecord(h->ev[2], st), err, errlen);
    ns = nr = 0;
    for (int32_t r = 0; r < P; r++) {
        const size_t nin = (size_t)hin[r].n_rows, hb = (size_t)H * 4;
        if (r == me) {
            if (cnt[r])
                MOE_CUDA_TRY(cudaMemcpyAsync(e.back + (size_t)off[r] * H,
                                             b.y + (size_t)roff[r] * H, (size_t)cnt[r] * hb,
                                             cudaMemcpyDeviceToDevice, st), err, errlen);
            continue;
        }
        sends[ns++] = moe__msg{ r, 4, b.y + (size_t)roff[r] * H, nin * hb };
        recvs[nr++] = moe__msg{ r, 4, e.back + (size_t)off[r] * H, (size_t)cnt[r] * hb };
        sends[ns++] = moe__msg{ r, 5, e.flag + me, 4 };
        recvs[nr++] = moe__msg{ r, 5, e.flag + r, 4 };
    }
    if (P > 1 && (s = moe__comm_post(c, MOE__PHASE_COMBINE, sends, ns, recvs, nr)))
        return fail(l, s, "expert-parallel combine");
    if (order == MOE_SHARED_IN_COMBINE) {
        MOE_CUDA_TRY(cudaEventRecord(cx->fork, st), err, errlen);
        MOE_CUDA_TRY(cudaStreamWaitEvent(cx->aux, cx->fork, 0), err, errlen);
        if ((s = moe__cuda_run_shared(l, sx, sh, T, in.xa_sh, b.xs, b.sg, &b, cx->aux)))
            return s;
        MOE_CUDA_TRY(cudaEventRecord(cx->join, cx->aux), err, errlen);
    }
    if (order == MOE_SHARED_OVERLAPPED || order == MOE_SHARED_IN_COMBINE)
        MOE_CUDA_TRY(cudaStreamWaitEvent(st, cx->join, 0), err, errlen);
    MOE_CUDA_TRY(moe__finalize_cuda(e.back, d_pos, sx ? b.sh_y : NULL, T, K, H, out,
                                    l->opts.io_format, 0, 1, st), err, errlen);

    // 8. complete within the deadline, then the protocol flags
    MOE_CUDA_TRY(cudaEventRecord(h->ev[3], st), err, errlen);
    MOE_CUDA_TRY(cudaMemcpyAsync(h->flag, e.flag, (size_t)P * 4, cudaMemcpyDeviceToHost, st), err,
                 errlen);
    if ((s = wait_stream(l, MOE__PHASE_COMBINE, "expert-parallel combine"))) return s;
    float ms[3] = { 0, 0, 0 };
    for (int i = 0; i < 3; i++) cudaEventElapsedTime(&ms[i], h->ev[i], h->ev[i + 1]);
    c->stats.device_dispatch_s += ms[0] * 1e-3;
    c->stats.device_experts_s += ms[1] * 1e-3;
    c->stats.device_combine_s += ms[2] * 1e-3;
    if (h->flag[me])
        return protocol(l, "received a row for an expert not held here, or a non-finite weight");
    for (int32_t r = 0; r < P; r++)
        if (h->flag[r])
            return protocol(l, "rank %d received a malformed row in this forward: the outputs it "
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
