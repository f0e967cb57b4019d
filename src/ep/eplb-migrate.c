/*
 * eplb-migrate.c - executes a rebalance: moves expert weights so that every
 * rank's physical slots hold their new logical experts, then commits the map.
 *
 * Every rank derives the same plan from (old, new) (moe__eplb_plan), so a
 * send on one rank always meets its receive on the other: messages between
 * two ranks go in plan order on one tag, and MPI's non-overtaking rule
 * matches them in that order. An expert travels as one message: the bytes of
 * every table of both projections (weights, scales, zeros, g_idx, second
 * scale, input scale, bias) concatenated. Sources are packed before anything
 * is overwritten, so slots may swap experts freely. Over NCCL the device copy
 * of the weights moves (src/cuda/ep-migrate.cu) and the host tables follow.
 */
#include "ep.h"

#include <string.h>

/* The tables of local expert i, in travel order. */
typedef struct part { char *p; size_t n; } part;

static int expert_parts(moe_routed_experts *e, int32_t i, part out[14]) {
    int n = 0;
    const moe_experts_options *o = &e->opts;
    for (int proj = 0; proj < 2; proj++) {
        const moe_weights *w    = proj ? &o->w2 : &o->w13;
        const moe__wsizes *s    = proj ? &e->s2 : &e->s13;
        int64_t            rows = proj ? o->d_model : moe__w13_rows(o);
        out[n++] = (part){ (char *)w->data + (size_t)i * s->data, s->data };
        if (w->scales) out[n++] = (part){ (char *)w->scales + (size_t)i * s->scales, s->scales };
        if (w->zeros) out[n++] = (part){ (char *)w->zeros + (size_t)i * s->zeros, s->zeros };
        if (w->g_idx) out[n++] = (part){ (char *)w->g_idx + (size_t)i * s->g_idx, s->g_idx };
        if (w->scale2) out[n++] = (part){ (char *)(w->scale2 + i), sizeof(float) };
        if (w->input_scale) out[n++] = (part){ (char *)(w->input_scale + i), sizeof(float) };
        if (w->bias) out[n++] = (part){ (char *)(w->bias + (size_t)i * (size_t)rows),
                                        (size_t)rows * sizeof(float) };
    }
    return n;
}

static void pack(moe_routed_experts *e, int32_t i, char *dst) {
    part p[14];
    int  n = expert_parts(e, i, p);
    for (int k = 0; k < n; k++) {
        memcpy(dst, p[k].p, p[k].n);
        dst += p[k].n;
    }
}

static void unpack(moe_routed_experts *e, int32_t i, const char *src) {
    part p[14];
    int  n = expert_parts(e, i, p);
    for (int k = 0; k < n; k++) {
        memcpy(p[k].p, src, p[k].n);
        src += p[k].n;
    }
}

/* The host path (MPI): pack, exchange, unpack the experts' own tables. */
static moe_status migrate_host(moe_comm *c, moe_routed_experts *e, const moe__move *mv,
                               int32_t n_mv, int32_t per, int64_t *sent_out, char *err,
                               size_t errlen) {
    const int32_t R = c->size, me = c->rank;
    part   parts[14];
    size_t xb = 0;
    for (int k = 0, n = expert_parts(e, 0, parts); k < n; k++) xb += parts[k].n;
    /* Buffers: one packed expert per move that involves this rank as source
     * (sends, local copies) or destination (receives). */
    int32_t n_buf = 0, n_send = 0, n_recv = 0;
    for (int32_t i = 0; i < n_mv; i++) {
        const moe__move *v = &mv[i];
        if (v->kind == MOE__MOVE_REMOTE && v->src_rank == me) n_buf++, n_send++;
        else if (v->kind == MOE__MOVE_REMOTE && v->dst_rank == me) n_buf++, n_recv++;
        else if (v->kind == MOE__MOVE_LOCAL && v->dst_rank == me) n_buf++;
    }
    moe_status st = MOE_OK;
    size_t total;
    char     *buf  = NULL;
    int32_t  *slot = moe__calloc((size_t)n_mv + 1, sizeof(int32_t));   /* move -> buffer */
    moe__msg *msg  = moe__calloc((size_t)(n_send + n_recv + 2 * R), sizeof(moe__msg));
    if (!slot || !msg || !moe__mul_ok(xb, (size_t)n_buf, &total) ||
        !(buf = moe__malloc(total ? total : 1))) {
        st = moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory for %d experts of %zu bytes",
                       n_buf, xb);
        goto done;
    }
    /* Pack every source first: no slot is written before all are read. */
    int32_t b = 0;
    moe__msg *sends = msg, *recvs = msg + n_send + R;
    int ns = 0, nr = 0;
    int64_t sent = 0;
    for (int32_t i = 0; i < n_mv; i++) {
        const moe__move *v = &mv[i];
        slot[i] = -1;
        if (v->kind == MOE__MOVE_REMOTE && v->src_rank == me) {
            slot[i] = b++;
            pack(e, v->src_slot - me * per, buf + (size_t)slot[i] * xb);
            sends[ns++] = (moe__msg){ v->dst_rank, 5, buf + (size_t)slot[i] * xb, xb };
            sent += (int64_t)xb;
        } else if (v->kind == MOE__MOVE_REMOTE && v->dst_rank == me) {
            slot[i] = b++;
            recvs[nr++] = (moe__msg){ v->src_rank, 5, buf + (size_t)slot[i] * xb, xb };
        } else if (v->kind == MOE__MOVE_LOCAL && v->dst_rank == me) {
            slot[i] = b++;
            pack(e, v->src_slot - me * per, buf + (size_t)slot[i] * xb);
        }
    }
    /* A 0-byte message to and from every peer: ranks with nothing to move
     * still learn that everyone got this far. */
    for (int32_t r = 0; r < R; r++) {
        if (r == me) continue;
        sends[ns++] = (moe__msg){ r, 6, buf, 0 };
        recvs[nr++] = (moe__msg){ r, 6, buf, 0 };
    }
    if ((st = moe__comm_exchange(c, MOE__PHASE_OTHER, sends, ns, recvs, nr))) {
        st = moe__errf(err, errlen, st, "expert migration: %s", c->err);
        goto done;
    }
    /* Write the slots in plan order (a DUP follows the move it copies). */
    for (int32_t i = 0; i < n_mv; i++) {
        const moe__move *v = &mv[i];
        if (v->dst_rank != me) continue;
        int32_t dst = v->dst_slot - me * per;
        if (v->kind == MOE__MOVE_DUP) {
            /* Copy slot to slot through the tables directly. */
            part from[14], to[14];
            int  n = expert_parts(e, v->src_slot - me * per, from);
            expert_parts(e, dst, to);
            for (int k = 0; k < n; k++) memcpy(to[k].p, from[k].p, from[k].n);
        } else {
            unpack(e, dst, buf + (size_t)slot[i] * xb);
        }
    }
    *sent_out = sent;
done:
    moe__free(slot);
    moe__free(msg);
    moe__free(buf);
    return st;
}

moe_status moe_eplb_migrate(moe_comm *c, moe_routed_experts *e, moe_expert_map *m,
                            const int32_t *new_p2l, int64_t *bytes_sent, char *err,
                            size_t errlen) {
    if (bytes_sent) *bytes_sent = 0;
    if (!c || !e || !m || !new_p2l)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "NULL argument");
    if (c->broken)
        return moe__errf(err, errlen, c->broken, "the communicator is broken: %s", c->err);
    if (e->opts.flags & MOE_EXPERTS_BORROW || !e->owned)
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED,
                         "migration rewrites weights: the experts must own them (no BORROW)");
    const bool nccl = c->kind == MOE__COMM_NCCL;
    bool on_device = false;
    for (int i = 0; i < 4; i++) on_device |= e->impl_state[i] != NULL;
    if (!nccl && on_device)
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED,
                         "the experts hold a backend copy of their weights; migrate before "
                         "creating layers");
    if (nccl && !on_device)
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED,
                         "migration over NCCL moves the device copy: create the CUDA layer "
                         "first");
    const int32_t P = m->n_physical, R = c->size, me = c->rank;
    if (m->o.ep_size != R || m->o.ep_rank != me || m->o.placement != MOE_PLACEMENT_LINEAR ||
        P % R)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                         "migration needs the map of this rank (%d of %d), linear placement and "
                         "%d slots divisible by the ranks", me, R, P);
    if (e->opts.n_experts != m->n_local || e->n_experts_global != P)
        return moe__errf(err, errlen, MOE_ERR_SHAPE, "the experts do not match the map");
    const int32_t per = P / R;
    for (int32_t s = 0; s < P; s++)
        if (new_p2l[s] < 0 || new_p2l[s] >= m->o.n_experts)
            return moe__errf(err, errlen, MOE_ERR_RANGE, "new slot %d holds expert %d", s,
                             new_p2l[s]);

    moe__move *mv = NULL;
    int32_t    n_mv = 0;
    moe_status st = moe__eplb_plan(m->phys2log, new_p2l, P, R, &mv, &n_mv, err, errlen);
    if (st) return st;
    int64_t sent = 0;
#ifdef MOE_HAVE_CUDA
    if (nccl) st = moe__cuda_migrate(c, e, mv, n_mv, per, &sent, err, errlen);
    else
#endif
        st = migrate_host(c, e, mv, n_mv, per, &sent, err, errlen);
    moe__free(mv);
    if (st) return st;
    if (bytes_sent) *bytes_sent = sent;
    /* The slots' g_idx tables changed: their CPU column orders follow. */
    if ((st = moe__experts_order(e, err, errlen))) return st;
    return moe_expert_map_set_physical(m, new_p2l, err, errlen);
}
