/*
 * comm.c - the communicator handle every transport shares (sticky errors,
 * statistics, the public accessors), and the choice of the parallel
 * prepare/finalize implementation for a layer (moe__ep_select_pf).
 *
 * MOE_HAVE_MPI and MOE_HAVE_NCCL are checked here and nowhere else in
 * src/ep/: without them the create functions say so.
 */
#include "ep.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

double moe__now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

moe_status moe__comm_errf(moe_comm *c, moe_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    moe__verrf(c->err, sizeof c->err, s, fmt, ap);
    va_end(ap);
    return s;
}

static void count_sends(moe_comm *c, moe__phase phase, const moe__msg *sends, int n_sends) {
    int64_t bytes = 0;
    for (int i = 0; i < n_sends; i++) bytes += (int64_t)sends[i].bytes;
    if (phase == MOE__PHASE_COMBINE) c->stats.bytes_sent_combine += bytes;
    else c->stats.bytes_sent_dispatch += bytes;
}

static void count_seconds(moe_comm *c, moe__phase phase, double dt) {
    if (phase == MOE__PHASE_COMBINE) c->stats.seconds_combine += dt;
    else c->stats.seconds_dispatch += dt;
}

static void check_msgs(const moe_comm *c, const moe__msg *sends, int n_sends,
                       const moe__msg *recvs, int n_recvs) {
    for (int i = 0; i < n_sends + n_recvs; i++) {
        const moe__msg *m = i < n_sends ? &sends[i] : &recvs[i - n_sends];
        MOE_ASSERT(m->peer >= 0 && m->peer < c->size && m->peer != c->rank);
        MOE_ASSERT(m->sub >= 0 && m->sub < 16);
    }
}

moe_status moe__ep_fail(moe_layer *l, moe_status st, const char *what) {
    return moe__errf(l->err, sizeof l->err, st, "%s: %s", what, l->opts.parallel->comm->err);
}

moe_status moe__ep_protocol(moe_layer *l, const char *what, const char *fmt, ...) {
    moe_comm *c = l->opts.parallel->comm;
    va_list ap;
    va_start(ap, fmt);
    moe__verrf(c->err, sizeof c->err, MOE_ERR_PROTOCOL, fmt, ap);
    va_end(ap);
    c->broken = MOE_ERR_PROTOCOL;
    return moe__ep_fail(l, MOE_ERR_PROTOCOL, what);
}

moe_status moe__ep_check_hdr(moe_layer *l, const char *what, const moe__ep_hdr *h, int32_t r,
                             uint32_t call, int64_t d_model, int64_t max_rows, int64_t n_tokens) {
    if (h->magic != MOE__EP_MAGIC || h->src_rank != r)
        return moe__ep_protocol(l, what, "rank %d: bad header (magic %08x, rank %d)", r, h->magic,
                                h->src_rank);
    if (h->call != call)
        return moe__ep_protocol(l, what, "rank %d is at forward %u, this rank at %u", r, h->call,
                                call);
    if (h->d_model != d_model)
        return moe__ep_protocol(l, what, "rank %d: d_model %lld, here %lld", r,
                                (long long)h->d_model, (long long)d_model);
    if (h->io_format != (int32_t)l->opts.io_format)
        return moe__ep_protocol(l, what, "rank %d: io format %s, here %s", r,
                                moe_format_name((moe_format)h->io_format),
                                moe_format_name(l->opts.io_format));
    if (max_rows >= 0 && (h->n_rows < 0 || h->n_rows > max_rows))
        return moe__ep_protocol(l, what, "rank %d announces %d rows, capacity %lld", r,
                                h->n_rows, (long long)max_rows);
    if (n_tokens >= 0 && h->n_tokens != n_tokens)
        return moe__ep_protocol(l, what, "rank %d runs %lld tokens, this rank %lld", r,
                                (long long)h->n_tokens, (long long)n_tokens);
    return MOE_OK;
}

moe_status moe__comm_exchange(moe_comm *c, moe__phase phase, const moe__msg *sends, int n_sends,
                              const moe__msg *recvs, int n_recvs) {
    if (c->broken) return c->broken;
    check_msgs(c, sends, n_sends, recvs, n_recvs);
    c->phase    = phase;
    double t0   = moe__now_s();
    moe_status st = c->ops->exchange(c, sends, n_sends, recvs, n_recvs);
    c->seq++;
    count_seconds(c, phase, moe__now_s() - t0);
    count_sends(c, phase, sends, n_sends);
    if (st) c->broken = st;
    return st;
}

moe_status moe__comm_post(moe_comm *c, moe__phase phase, const moe__msg *sends, int n_sends,
                          const moe__msg *recvs, int n_recvs) {
    if (c->broken) return c->broken;
    MOE_ASSERT(c->ops->post);
    check_msgs(c, sends, n_sends, recvs, n_recvs);
    c->phase = phase;
    moe_status st = c->ops->post(c, sends, n_sends, recvs, n_recvs);
    c->seq++;
    count_sends(c, phase, sends, n_sends);
    if (st) c->broken = st;
    return st;
}

moe_status moe__comm_wait(moe_comm *c, moe__phase phase) {
    if (c->broken) return c->broken;
    MOE_ASSERT(c->ops->wait);
    c->phase = phase;
    double t0 = moe__now_s();
    moe_status st = c->ops->wait(c);
    count_seconds(c, phase, moe__now_s() - t0);
    if (st) c->broken = st;
    return st;
}

moe_status moe_comm_create_mpi(const void *mpi_comm, const moe_comm_options *opts,
                               moe_comm **out, char *err, size_t errlen) {
    if (!mpi_comm || !out) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "NULL argument");
    *out = NULL;
    int32_t deadline = opts && opts->deadline_ms ? opts->deadline_ms : 60000;
    if (deadline < 1) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "deadline_ms < 0");
#ifdef MOE_HAVE_MPI
    return moe__comm_mpi_create(mpi_comm, deadline, out, err, errlen);
#else
    return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "libmoe was built without MPI");
#endif
}

moe_status moe_comm_create_nccl(void *nccl_comm, void *stream, const moe_comm_options *opts,
                                moe_comm **out, char *err, size_t errlen) {
    if (!nccl_comm || !out) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "NULL argument");
    *out = NULL;
    int32_t deadline = opts && opts->deadline_ms ? opts->deadline_ms : 60000;
    if (deadline < 1) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "deadline_ms < 0");
#ifdef MOE_HAVE_NCCL
    return moe__comm_nccl_create(nccl_comm, stream, deadline, out, err, errlen);
#else
    (void)stream;
    return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "libmoe was built without NCCL");
#endif
}

void moe_comm_destroy(moe_comm *c) {
    if (!c) return;
    if (c->ops) c->ops->destroy(c);
    moe__free(c);
}

int32_t     moe_comm_size(const moe_comm *c) { return c ? c->size : 0; }
int32_t     moe_comm_rank(const moe_comm *c) { return c ? c->rank : -1; }
moe_status  moe_comm_status(const moe_comm *c) { return c ? c->broken : MOE_ERR_INVALID_ARG; }
const char *moe_comm_last_error(const moe_comm *c) { return c ? c->err : ""; }

void moe_comm_get_stats(const moe_comm *c, moe_comm_stats *s) {
    if (!s) return;
    if (c) *s = c->stats;
    else memset(s, 0, sizeof *s);
}

/* ===== Choosing the parallel prepare/finalize ===== */

const moe__prepare_finalize_impl moe__pf_nccl_ep = {
    .name       = "nccl",
    .collective = true,
};

const moe__prepare_finalize_impl moe__pf_nccl_tp = {
    .name       = "nccl-tp",
    .collective = true,
};

/* Expert parallel: the experts must be exactly this rank's slots of the map. */
static moe_status check_ep(const moe_layer_options *o, const moe_parallel *p, char *err,
                           size_t errlen) {
    const moe_expert_map     *m = p->map;
    const moe_routed_experts *e = o->experts;
    if (!m) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "expert parallel needs a map");
    if (m->o.ep_size != p->comm->size || m->o.ep_rank != p->comm->rank)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                         "expert map is for rank %d of %d, the communicator is rank %d of %d",
                         m->o.ep_rank, m->o.ep_size, p->comm->rank, p->comm->size);
    if (o->router->opts.n_experts != m->o.n_experts)
        return moe__errf(err, errlen, MOE_ERR_SHAPE, "router has %d experts, the map %d logical",
                         o->router->opts.n_experts, m->o.n_experts);
    if (e->opts.n_experts != m->n_local || e->n_experts_global != m->n_physical)
        return moe__errf(err, errlen, MOE_ERR_SHAPE,
                         "experts hold %d of %d, the map gives this rank %d of %d slots",
                         e->opts.n_experts, e->n_experts_global, m->n_local, m->n_physical);
    for (int32_t s = 0; s < m->n_physical; s++)
        if (e->expert_map[s] != m->table[s])
            return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                             "experts' expert_map[%d] = %d, the map says %d (build the experts "
                             "with moe_expert_map_table)", s, e->expert_map[s], m->table[s]);
    return MOE_OK;
}

moe_status moe__ep_select_pf(const moe_layer_options *o, const moe__prepare_finalize_impl **pf,
                             char *err, size_t errlen) {
    *pf = NULL;
    const moe_parallel *p = o->parallel;
    if (!p) return MOE_OK;
    if (!p->comm) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "parallel needs a comm");
    if (p->comm->broken)
        return moe__errf(err, errlen, p->comm->broken, "the communicator is broken: %s",
                         p->comm->err);
    const bool nccl = p->comm->kind == MOE__COMM_NCCL;
    if (nccl && o->backend != MOE_BACKEND_CUDA)
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED,
                         "an NCCL communicator carries device memory: set backend cuda");
    if (!nccl && o->backend == MOE_BACKEND_CUDA)
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED,
                         "an MPI communicator carries host memory; backend cuda needs NCCL");
    /* Row counts and offsets are int32: every rank may send max_tokens * top_k rows. */
    int64_t rows = (int64_t)p->comm->size * (o->max_tokens > 0 ? o->max_tokens : 1) *
                   o->router->opts.top_k;
    if (rows > INT32_MAX)
        return moe__errf(err, errlen, MOE_ERR_LIMIT,
                         "%d ranks x max_tokens %lld x top_k %d rows exceed 2^31",
                         p->comm->size, (long long)o->max_tokens, o->router->opts.top_k);
    moe_status st;
    switch (p->mode) {
    case MOE_PARALLEL_EP:
        if ((st = check_ep(o, p, err, errlen))) return st;
        *pf = nccl ? &moe__pf_nccl_ep : &moe__pf_mpi_ep;
        return MOE_OK;
    case MOE_PARALLEL_TP:
        if (p->map && p->map->o.ep_size > 1)
            return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                             "tensor parallel experts hold every expert: no expert map");
        if (o->experts->n_experts_global != o->router->opts.n_experts ||
            o->experts->opts.n_experts != o->router->opts.n_experts)
            return moe__errf(err, errlen, MOE_ERR_SHAPE,
                             "tensor parallel: router has %d experts, this rank holds %d",
                             o->router->opts.n_experts, o->experts->opts.n_experts);
        *pf = nccl ? &moe__pf_nccl_tp : &moe__pf_mpi_tp;
        return MOE_OK;
    }
    return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "unknown parallel mode %d", (int)p->mode);
}
