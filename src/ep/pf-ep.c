/*
 * pf-ep.c - prepare/finalize across ranks over a host transport (MPI): the
 * expert-parallel one ("mpi") and the tensor-parallel one ("mpi-tp").
 *
 * Expert parallel, one forward:
 *   prepare   1. logical ids -> physical slots (replica hash; EPLB counters)
 *             2. group this rank's slots by destination rank, in slot order
 *             3. exchange headers with every peer (row counts: counts first)
 *             4. exchange rows: per row a meta record (slot, expert, in_scale,
 *                source rank) and the f32 activation row
 *             5. validate every header and meta record, then group the
 *                received rows by local expert for the experts
 *   experts   run on the received rows as one batch (top_k = 1 layout)
 *   finalize  6. send each peer's expert outputs back (sizes known from 3)
 *             7. out[t] = sum over j in slot order of w[t, j] * y[t, j], in
 *                fp32, + shared: the arithmetic of the local finalize
 *                (pf-local.c), so with batch-invariant experts the output is
 *                bitwise the single-rank output for any number of ranks.
 * Every rank exchanges with every peer in both phases, also with zero rows:
 * a dead or silent peer is then seen by everyone. Each call (prepare,
 * finalize) has one deadline, deadline_ms from its start, shared by its
 * exchanges. Activations travel as bf16 when the experts' format rounds its
 * activations to bf16 anyway (BF16, MXFP4, NVFP4, INT4_GPTQ, INT4_AWQ:
 * rounding twice is rounding once, so the output stays bitwise the same;
 * not with Llama-4's input weight, applied before that rounding), and as
 * f32 otherwise: formats with int8 or fp8 activations quantize on arrival,
 * as they would on one rank.
 *
 * Tensor parallel: the local prepare/finalize on this rank's d_ff slice, then
 * the partial outputs are all-gathered and summed in rank order (the same
 * sum, bit for bit, on every rank), then + shared.
 *
 * The state between prepare and finalize lives at the start of the P/F's
 * workspace; the communicator points at it (one forward per communicator at a
 * time).
 */
#include "ep.h"

#include "../quant/quant.h"   /* moe__bf16_act_fake_quant_ref */

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

typedef moe__ep_hdr ep_hdr;

typedef struct ep_meta {
    int32_t slot;         /* the sender's slot t * top_k + j                          */
    int32_t expert;       /* physical expert id                                       */
    float   in_scale;     /* Llama-4 input weight, 1 otherwise                        */
    int32_t src_rank;
} ep_meta;

typedef struct ep_call {
    moe_comm      *comm;
    int64_t        n_tokens, H;
    int32_t        top_k;
    const float   *topk_w;     /* (n_tokens * top_k) the caller's weights               */
    const float   *in_scale;   /* the caller's in_scale, or NULL                        */
    int32_t       *send_cnt, *send_off, *recv_cnt, *recv_off; /* (P + 1) each         */
    int32_t       *pos;        /* (n_tokens * top_k) slot -> row in send order          */
    float         *back;       /* (n_tokens * top_k, H) returned outputs, send order    */
    float         *y;          /* (cap, H) outputs of the received rows                 */
    moe__msg      *msgs;       /* (4 P)                                                 */
    uint32_t       call;
} ep_call;

int moe__ep_fault_point;

/* The fault tests' kill: send the first half of this phase's messages (the
 * peers have posted their receives, so they complete), then die. */
static void fault(moe_comm *c, int point, moe__phase phase, const moe__msg *sends, int ns) {
    if (moe__ep_fault_point != point) return;
    if (ns / 2) moe__comm_exchange(c, phase, sends, ns / 2, NULL, 0);
    raise(SIGKILL);
}

static const moe_parallel *par(const moe_layer *l) { return l->opts.parallel; }

static int64_t cap_rows(const moe_layer *l) {
    return (int64_t)par(l)->comm->size * l->opts.max_tokens * l->opts.router->opts.top_k;
}

/* Activations on the wire as bf16 (see the top of the file). */
static bool wire_bf16(const moe_layer *l) {
    const moe__format_traits *ft = moe__format(l->opts.experts->opts.format);
    return ft && ft->act_fake_quant_ref == moe__bf16_act_fake_quant_ref &&
           l->opts.router->opts.scoring != MOE_SCORING_LLAMA4;
}

static int64_t ep_max_rows(const moe_layer *l, int64_t n_tokens) {
    (void)n_tokens;
    return cap_rows(l);
}

/* Carving sizes, in order. */
typedef struct ep_sizes {
    size_t call, counts, hdr, msgs, phys, send_slot, pos, send_meta, send_x;
    size_t recv_meta, recv_x, recv_h, recv_ids, recv_scale, rows, start, y;
} ep_sizes;

static ep_sizes ep_sizes_for(const moe_layer *l, int64_t n) {
    const size_t P = (size_t)par(l)->comm->size, K = (size_t)l->opts.router->opts.top_k;
    const size_t H = (size_t)l->opts.experts->opts.d_model, S = (size_t)n * K;
    const size_t C = (size_t)cap_rows(l);
    return (ep_sizes){
        .call = sizeof(ep_call), .counts = 4 * (P + 1) * sizeof(int32_t),
        .hdr = 2 * P * sizeof(ep_hdr), .msgs = 4 * P * sizeof(moe__msg),
        .phys = S * sizeof(int32_t), .send_slot = S * sizeof(int32_t), .pos = S * sizeof(int32_t),
        .send_meta = S * sizeof(ep_meta), .send_x = S * H * sizeof(float),
        .recv_meta = C * sizeof(ep_meta), .recv_x = C * H * sizeof(float),
        .recv_h = wire_bf16(l) ? C * H * sizeof(uint16_t) : 0,
        .recv_ids = C * sizeof(int32_t), .recv_scale = C * sizeof(float),
        .rows = C * sizeof(int32_t),
        .start = ((size_t)l->opts.experts->opts.n_experts + 1) * sizeof(int32_t),
        .y = C * H * sizeof(float),
    };
}

static size_t ep_workspace_size(const moe_layer *l, int64_t n) {
    ep_sizes s = ep_sizes_for(l, n);
    const size_t *f = &s.call;   /* every field of ep_sizes is a size_t */
    size_t total = 0;
    for (size_t i = 0; i < sizeof s / sizeof(size_t); i++) total += moe__align_up(f[i], 64) + 64;
    return total;
}

static moe_status ep_prepare_call(moe_layer *l, moe__dispatch *d, void *ws, size_t ws_size);

/* One deadline for the whole call, however many exchanges it makes. */
static moe_status ep_prepare(moe_layer *l, moe__dispatch *d, void *ws, size_t ws_size) {
    moe_comm *c = par(l)->comm;
    c->call_end = moe__now_s() + c->deadline_ms * 1e-3;
    moe_status st = ep_prepare_call(l, d, ws, ws_size);
    c->call_end = 0;
    return st;
}

static moe_status ep_prepare_call(moe_layer *l, moe__dispatch *d, void *ws, size_t ws_size) {
    const moe_parallel   *p = par(l);
    moe_comm             *c = p->comm;
    const moe_expert_map *m = p->map;
    const int32_t P = c->size, me = c->rank, K = d->top_k;
    const int64_t H = d->d_model, S = d->n_tokens * K, C = cap_rows(l);
    const int64_t max_rows_peer = l->opts.max_tokens * K;
    const bool    bf16 = wire_bf16(l);
    const size_t  xb   = (size_t)H * (bf16 ? sizeof(uint16_t) : sizeof(float));  /* row bytes */
    if (c->broken) return moe__ep_fail(l, c->broken, "expert-parallel dispatch");

    ep_sizes sz = ep_sizes_for(l, d->n_tokens);
    char *cur = ws, *end = (char *)ws + ws_size;
    ep_call *call      = moe__ws_take(&cur, end, sz.call);
    int32_t *counts    = moe__ws_take(&cur, end, sz.counts);
    ep_hdr  *hdr       = moe__ws_take(&cur, end, sz.hdr);
    moe__msg *msgs     = moe__ws_take(&cur, end, sz.msgs);
    int32_t *phys      = moe__ws_take(&cur, end, sz.phys);
    int32_t *send_slot = moe__ws_take(&cur, end, sz.send_slot);
    int32_t *pos       = moe__ws_take(&cur, end, sz.pos);
    ep_meta *send_meta = moe__ws_take(&cur, end, sz.send_meta);
    float   *send_x    = moe__ws_take(&cur, end, sz.send_x);
    ep_meta *recv_meta = moe__ws_take(&cur, end, sz.recv_meta);
    float   *recv_x    = moe__ws_take(&cur, end, sz.recv_x);
    uint16_t *recv_h   = moe__ws_take(&cur, end, sz.recv_h);
    int32_t *recv_ids  = moe__ws_take(&cur, end, sz.recv_ids);
    float   *recv_sc   = moe__ws_take(&cur, end, sz.recv_scale);
    int32_t *rows      = moe__ws_take(&cur, end, sz.rows);
    int32_t *start     = moe__ws_take(&cur, end, sz.start);
    float   *y         = moe__ws_take(&cur, end, sz.y);
    if (!call || !counts || !hdr || !msgs || !phys || !send_slot || !pos || !send_meta ||
        !send_x || !recv_meta || !recv_x || !recv_h || !recv_ids || !recv_sc || !rows || !start ||
        !y)
        return moe__errf(l->err, sizeof l->err, MOE_ERR_WORKSPACE, "mpi prepare: workspace");
    int32_t *send_cnt = counts, *send_off = counts + (P + 1), *recv_cnt = counts + 2 * (P + 1),
            *recv_off = counts + 3 * (P + 1);
    ep_hdr *hdr_out = hdr, *hdr_in = hdr + P;

    /* 1-2. Physical slots, destination ranks, send order (counting sort by
     * rank, slots ascending within a rank). */
    moe_status st = moe_expert_map_route(m, d->n_tokens, K, d->topk_ids, phys, p->load);
    if (st) return moe__errf(l->err, sizeof l->err, st, "mpi prepare: expert id out of range");
    memset(send_cnt, 0, (size_t)(P + 1) * sizeof(int32_t));
    for (int64_t s = 0; s < S; s++) send_cnt[moe__map_owner(&m->o, m->n_physical, phys[s])]++;
    send_off[0] = 0;
    for (int32_t r = 0; r < P; r++) send_off[r + 1] = send_off[r] + send_cnt[r];
    for (int32_t r = 0; r <= P; r++) recv_off[r] = send_off[r];   /* cursor */
    for (int64_t s = 0; s < S; s++) {
        int32_t r = moe__map_owner(&m->o, m->n_physical, phys[s]);
        int32_t i = recv_off[r]++;
        send_slot[i] = (int32_t)s;
        pos[s]       = i;
        send_meta[i] = (ep_meta){ (int32_t)s, phys[s], d->in_scale ? d->in_scale[s] : 1.0f, me };
        const float *xr = d->x + (s / K) * H;
        if (bf16) {
            uint16_t *o = (uint16_t *)(void *)send_x + (size_t)i * H;
            for (int64_t k = 0; k < H; k++) o[k] = moe__f32_to_bf16(xr[k]);
        } else {
            memcpy(send_x + (size_t)i * H, xr, (size_t)H * sizeof(float));
        }
    }

    /* 3. Counts first: a header to and from every peer. */
    const uint32_t call_no = (uint32_t)c->stats.calls++;
    int ns = 0, nr = 0;
    moe__msg *sends = msgs, *recvs = msgs + 2 * P;
    for (int32_t r = 0; r < P; r++) {
        hdr_out[r] = (ep_hdr){ MOE__EP_MAGIC, call_no, me, send_cnt[r], H, d->n_tokens,
                               (int32_t)l->opts.io_format };
        if (r == me) continue;
        sends[ns++] = (moe__msg){ r, 0, &hdr_out[r], sizeof(ep_hdr) };
        recvs[nr++] = (moe__msg){ r, 0, &hdr_in[r], sizeof(ep_hdr) };
    }
    for (int32_t r = 0; r < P && moe__ep_fault_point; r++) {
        if (r == me) continue;
        if (moe__ep_fault_point == MOE__FAULT_BAD_MAGIC) hdr_out[r].magic ^= 0x100;
        if (moe__ep_fault_point == MOE__FAULT_BIG_COUNT)
            hdr_out[r].n_rows = (int32_t)max_rows_peer + 1;
        if (moe__ep_fault_point == MOE__FAULT_IO_FORMAT) hdr_out[r].io_format ^= 1;
    }
    if ((st = moe__comm_exchange(c, MOE__PHASE_DISPATCH, sends, ns, recvs, nr)))
        return moe__ep_fail(l, st, "expert-parallel dispatch (counts)");
    hdr_in[me] = hdr_out[me];
    recv_off[0] = 0;
    for (int32_t r = 0; r < P; r++) {
        const ep_hdr *h = &hdr_in[r];
        if ((st = moe__ep_check_hdr(l, "expert-parallel dispatch", h, r, call_no, H,
                                    max_rows_peer, -1)))
            return st;
        recv_cnt[r]     = h->n_rows;
        recv_off[r + 1] = recv_off[r] + h->n_rows;
    }
    const int64_t R = recv_off[P];
    MOE_ASSERT(R <= C);

    /* 4. Rows: meta records and activations, from and to every peer with rows. */
    ns = nr = 0;
    for (int32_t r = 0; r < P; r++) {
        if (r == me) continue;
        if (send_cnt[r]) {
            sends[ns++] = (moe__msg){ r, 1, send_meta + send_off[r],
                                      (size_t)send_cnt[r] * sizeof(ep_meta) };
            sends[ns++] = (moe__msg){ r, 2, (char *)send_x + (size_t)send_off[r] * xb,
                                      (size_t)send_cnt[r] * xb };
        }
        if (recv_cnt[r]) {
            recvs[nr++] = (moe__msg){ r, 1, recv_meta + recv_off[r],
                                      (size_t)recv_cnt[r] * sizeof(ep_meta) };
            recvs[nr++] = (moe__msg){ r, 2, (bf16 ? (char *)recv_h : (char *)recv_x) +
                                             (size_t)recv_off[r] * xb,
                                      (size_t)recv_cnt[r] * xb };
        }
    }
    memcpy(recv_meta + recv_off[me], send_meta + send_off[me],
           (size_t)send_cnt[me] * sizeof(ep_meta));
    memcpy((bf16 ? (char *)recv_h : (char *)recv_x) + (size_t)recv_off[me] * xb,
           (char *)send_x + (size_t)send_off[me] * xb, (size_t)send_cnt[me] * xb);
    fault(c, MOE__FAULT_MID_DISPATCH, MOE__PHASE_DISPATCH, sends, ns);
    for (int i = 0; i < ns && moe__ep_fault_point; i++) {
        ep_meta *mt = sends[i].sub == 1 ? sends[i].buf : NULL;
        if (mt && moe__ep_fault_point == MOE__FAULT_BAD_EXPERT) mt->expert = m->n_physical + 7;
        if (mt && moe__ep_fault_point == MOE__FAULT_BAD_SLOT) mt->slot = -1;
        if (sends[i].sub == 2 && moe__ep_fault_point == MOE__FAULT_LONG_ROWS) sends[i].bytes += 4;
    }
    if ((st = moe__comm_exchange(c, MOE__PHASE_DISPATCH, sends, ns, recvs, nr)))
        return moe__ep_fail(l, st, "expert-parallel dispatch (rows)");
    if (bf16)
        for (int64_t i = 0; i < R * H; i++) recv_x[i] = moe__bf16_to_f32(recv_h[i]);

    /* 5. Validate, then group by local expert (stable: rows in arrival order). */
    const int32_t n_local = l->opts.experts->opts.n_experts;
    memset(start, 0, ((size_t)n_local + 1) * sizeof(int32_t));
    for (int32_t r = 0; r < P; r++) {
        int32_t prev = -1;
        for (int64_t i = recv_off[r]; i < recv_off[r + 1]; i++) {
            const ep_meta *mt = &recv_meta[i];
            int32_t loc = mt->expert >= 0 && mt->expert < m->n_physical ? m->table[mt->expert]
                                                                        : -1;
            if (mt->src_rank != r || mt->slot <= prev || mt->slot >= max_rows_peer)
                return moe__ep_protocol(l, "expert-parallel dispatch", "rank %d: row %lld claims rank %d slot %d", r,
                                (long long)(i - recv_off[r]), mt->src_rank, mt->slot);
            if (loc < 0)
                return moe__ep_protocol(l, "expert-parallel dispatch", "rank %d sent a row for expert %d, not held here", r,
                                mt->expert);
            if (d->in_scale && !isfinite(mt->in_scale))
                return moe__ep_protocol(l, "expert-parallel dispatch", "rank %d: non-finite input weight", r);
            prev        = mt->slot;
            recv_ids[i] = loc;
            recv_sc[i]  = mt->in_scale;
            start[loc + 1]++;
        }
    }
    for (int32_t e = 0; e < n_local; e++) start[e + 1] += start[e];
    for (int64_t i = 0; i < R; i++) rows[start[recv_ids[i]]++] = (int32_t)i;
    for (int32_t e = n_local; e > 0; e--) start[e] = start[e - 1];
    start[0] = 0;

    *call = (ep_call){
        .comm = c, .n_tokens = d->n_tokens, .H = H, .top_k = K, .topk_w = d->topk_w,
        .in_scale = d->in_scale, .send_cnt = send_cnt, .send_off = send_off,
        .recv_cnt = recv_cnt, .recv_off = recv_off, .pos = pos, .back = send_x, .y = y,
        .msgs = msgs, .call = call_no,
    };
    c->pending = call;
    fault(c, MOE__FAULT_AFTER_DISPATCH, MOE__PHASE_DISPATCH, NULL, 0);

    /* The experts see the received rows as R tokens of one slot each. */
    d->n_tokens     = R;
    d->top_k        = 1;
    d->x            = recv_x;
    d->topk_ids     = recv_ids;
    d->topk_w       = recv_sc;
    d->in_scale     = call->in_scale ? recv_sc : NULL;
    d->n_local      = n_local;
    d->expert_start = start;
    d->row_slot     = rows;
    d->n_rows       = R;
    d->y            = y;
    return MOE_OK;
}

static moe_status ep_finalize(moe_layer *l, const moe__dispatch *d, const float *shared_y,
                              float *out) {
    moe_comm *c    = par(l)->comm;
    ep_call  *call = c->pending;
    c->pending     = NULL;
    if (!call || call->comm != c || d->y != call->y)
        return moe__errf(l->err, sizeof l->err, MOE_ERR_INTERNAL,
                         "mpi finalize without its prepare");
    const int32_t P = c->size, me = c->rank;
    const int64_t H = call->H;

    /* 6. Outputs back to where the rows came from; sizes are known. */
    moe__msg *sends = call->msgs, *recvs = call->msgs + 2 * P;
    int ns = 0, nr = 0;
    for (int32_t r = 0; r < P; r++) {
        if (r == me) continue;
        if (call->recv_cnt[r])
            sends[ns++] = (moe__msg){ r, 3, call->y + (size_t)call->recv_off[r] * H,
                                      (size_t)call->recv_cnt[r] * (size_t)H * sizeof(float) };
        if (call->send_cnt[r])
            recvs[nr++] = (moe__msg){ r, 3, call->back + (size_t)call->send_off[r] * H,
                                      (size_t)call->send_cnt[r] * (size_t)H * sizeof(float) };
    }
    memcpy(call->back + (size_t)call->send_off[me] * H, call->y + (size_t)call->recv_off[me] * H,
           (size_t)call->send_cnt[me] * (size_t)H * sizeof(float));
    /* Peers with nothing to return still answer: an empty exchange would not
     * notice a dead peer, so send every peer a 0-byte token on sub 4. */
    for (int32_t r = 0; r < P; r++) {
        if (r == me) continue;
        sends[ns++] = (moe__msg){ r, 4, call, 0 };
        recvs[nr++] = (moe__msg){ r, 4, call, 0 };
    }
    fault(c, MOE__FAULT_MID_COMBINE, MOE__PHASE_COMBINE, sends, ns);
    moe_status st = moe__comm_exchange(c, MOE__PHASE_COMBINE, sends, ns, recvs, nr);
    if (st) return moe__ep_fail(l, st, "expert-parallel combine");

    /* 7. Weighted sum in slot order. */
    moe__combine sum = {
        .n_tokens = call->n_tokens, .top_k = call->top_k, .d_model = call->H,
        .topk_w = call->topk_w, .weight_one = call->in_scale != NULL, .y = call->back,
        .row = call->pos, .shared_y = shared_y, .out = out,
    };
    moe__combine_run(&sum, l->ctx->pool);
    return MOE_OK;
}

const moe__prepare_finalize_impl moe__pf_mpi_ep = {
    .name           = "mpi",
    .workspace_size = ep_workspace_size,
    .prepare        = ep_prepare,
    .finalize       = ep_finalize,
    .max_rows       = ep_max_rows,
    .collective     = true,
};

/* ===== Tensor parallel ===== */

typedef struct tp_call {
    moe_comm *comm;
    float    *parts;      /* (P, n_tokens, H) every rank's partial output */
    ep_hdr   *hdr;        /* (2 P)                                        */
    moe__msg *msgs;       /* (4 P)                                        */
    int64_t   n_tokens;
} tp_call;

static size_t tp_local_ws(const moe_layer *l, int64_t n) {
    return moe__pf_local.workspace_size(l, n);
}

static size_t tp_workspace_size(const moe_layer *l, int64_t n) {
    const size_t P = (size_t)par(l)->comm->size, H = (size_t)l->opts.experts->opts.d_model;
    return 5 * 64 + sizeof(tp_call) + 2 * P * sizeof(ep_hdr) + 4 * P * sizeof(moe__msg) +
           P * (size_t)n * H * sizeof(float) + tp_local_ws(l, n);
}

static moe_status tp_prepare(moe_layer *l, moe__dispatch *d, void *ws, size_t ws_size) {
    moe_comm *c = par(l)->comm;
    if (c->broken) return moe__ep_fail(l, c->broken, "tensor-parallel forward");
    const size_t P = (size_t)c->size, H = (size_t)d->d_model;
    char *cur = ws, *end = (char *)ws + ws_size;
    tp_call  *call  = moe__ws_take(&cur, end, sizeof(tp_call));
    ep_hdr   *hdr   = moe__ws_take(&cur, end, 2 * P * sizeof(ep_hdr));
    moe__msg *msgs  = moe__ws_take(&cur, end, 4 * P * sizeof(moe__msg));
    float    *parts = moe__ws_take(&cur, end, P * (size_t)d->n_tokens * H * sizeof(float));
    size_t    lws   = tp_local_ws(l, d->n_tokens);
    void     *local = moe__ws_take(&cur, end, lws);
    if (!call || !hdr || !msgs || !parts || !local)
        return moe__errf(l->err, sizeof l->err, MOE_ERR_WORKSPACE, "mpi-tp prepare: workspace");
    *call = (tp_call){ c, parts, hdr, msgs, d->n_tokens };
    c->pending = call;
    return moe__pf_local.prepare(l, d, local, lws);
}

static moe_status tp_finalize_call(moe_layer *l, const moe__dispatch *d, const float *shared_y,
                                   float *out);

static moe_status tp_finalize(moe_layer *l, const moe__dispatch *d, const float *shared_y,
                              float *out) {
    moe_comm *c = par(l)->comm;
    c->call_end = moe__now_s() + c->deadline_ms * 1e-3;
    moe_status st = tp_finalize_call(l, d, shared_y, out);
    c->call_end = 0;
    return st;
}

static moe_status tp_finalize_call(moe_layer *l, const moe__dispatch *d, const float *shared_y,
                                   float *out) {
    moe_comm *c    = par(l)->comm;
    tp_call  *call = c->pending;
    c->pending     = NULL;
    if (!call || call->comm != c || call->n_tokens != d->n_tokens)
        return moe__errf(l->err, sizeof l->err, MOE_ERR_INTERNAL,
                         "mpi-tp finalize without its prepare");
    const int32_t P = c->size, me = c->rank;
    const int64_t n = d->n_tokens, H = d->d_model;
    const size_t  part_bytes = (size_t)n * (size_t)H * sizeof(float);
    float *mine = call->parts + (size_t)me * (size_t)(n * H);
    moe_status st = moe__pf_local.finalize(l, d, NULL, mine);
    if (st) return st;

    /* Counts first (every rank must run the same tokens), then the partials. */
    const uint32_t call_no = (uint32_t)c->stats.calls++;
    ep_hdr *out_h = call->hdr, *in_h = call->hdr + P;
    moe__msg *sends = call->msgs, *recvs = call->msgs + 2 * P;
    int ns = 0, nr = 0;
    *out_h = (ep_hdr){ MOE__EP_MAGIC, call_no, me, 0, H, n, (int32_t)l->opts.io_format };
    for (int32_t r = 0; r < P; r++) {
        if (r == me) continue;
        sends[ns++] = (moe__msg){ r, 0, out_h, sizeof(ep_hdr) };
        recvs[nr++] = (moe__msg){ r, 0, &in_h[r], sizeof(ep_hdr) };
    }
    if ((st = moe__comm_exchange(c, MOE__PHASE_COMBINE, sends, ns, recvs, nr)))
        return moe__ep_fail(l, st, "tensor-parallel all-reduce (counts)");
    for (int32_t r = 0; r < P; r++) {
        if (r == me) continue;
        if ((st = moe__ep_check_hdr(l, "tensor-parallel all-reduce", &in_h[r], r, call_no, H,
                                    -1, n)))
            return st;
    }
    ns = nr = 0;
    for (int32_t r = 0; r < P; r++) {
        if (r == me || !n) continue;
        sends[ns++] = (moe__msg){ r, 1, mine, part_bytes };
        recvs[nr++] = (moe__msg){ r, 1, call->parts + (size_t)r * (size_t)(n * H), part_bytes };
    }
    if ((st = moe__comm_exchange(c, MOE__PHASE_COMBINE, sends, ns, recvs, nr)))
        return moe__ep_fail(l, st, "tensor-parallel all-reduce");
    /* Sum in rank order, then the shared experts: the same on every rank. */
    for (int64_t i = 0; i < n * H; i++) {
        float acc = call->parts[i];
        for (int32_t r = 1; r < P; r++) acc += call->parts[(size_t)r * (size_t)(n * H) + i];
        out[i] = shared_y ? acc + shared_y[i] : acc;
    }
    return MOE_OK;
}

const moe__prepare_finalize_impl moe__pf_mpi_tp = {
    .name           = "mpi-tp",
    .workspace_size = tp_workspace_size,
    .prepare        = tp_prepare,
    .finalize       = tp_finalize,
    .collective     = true,
};
