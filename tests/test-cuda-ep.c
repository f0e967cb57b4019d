/*
 * test-cuda-ep.c - expert parallelism on the CUDA backend (src/cuda/ep.cu).
 *
 * NCCL refuses two ranks on one GPU, so the multi-rank cases run P ranks as
 * P threads on one GPU, each with its own stream, context, expert map and
 * slice of the experts, over an in-process device transport with NCCL's
 * contract (messages matched in order per peer, exact sizes, stream-ordered
 * post, deadline-bound wait). The prepare/finalize code is the one an NCCL
 * communicator runs. Each rank's output must be bitwise the output of one
 * device holding every expert on the same tokens, for 1-4 ranks, ranks with
 * no tokens, decode and prefill batches, bf16 and fp8-block, f32 and bf16 x
 * and out, EPLB replicas, every shared-experts order and Llama-4 scoring, and
 * again after an EPLB rebalance has migrated the device weights. Tensor
 * parallel over the same transport: within f32 rounding of one device, the
 * same bits on every rank. A tampered header must give MOE_ERR_PROTOCOL on
 * the receiver and MOE_ERR_TIMEOUT on the peers left waiting, within the
 * deadline; a tampered row MOE_ERR_PROTOCOL everywhere, and so does a rank
 * whose layer has another io format (its combine rows would have another
 * size). With NCCL, a real one-rank communicator runs the same forward.
 * Creation-time refusals run without a GPU.
 */
#include "test.h"

#include <stdlib.h>
#include <string.h>

#ifndef MOE_HAVE_CUDA

TEST(cuda_ep) { TEST_SKIP("built without CUDA"); }

#else

#include "../src/ep/ep.h"
#include "../src/cuda/entry.h"

#include <cuda_runtime_api.h>
#include <errno.h>
#include <pthread.h>
#include <time.h>
#ifdef MOE_HAVE_NCCL
#include <nccl.h>
#endif

enum { MAX_RANKS = 4, DEADLINE_MS = 3000 };

/* ===== The in-process device transport ===== */

/* What goes wrong: rank 1 changes the header or the first row it receives
 * from rank 0, or runs its layer with bf16 x and out (the others f32). */
typedef enum tamper { TAMPER_NONE = 0, TAMPER_HEADER, TAMPER_EXPERT, TAMPER_IO } tamper;

typedef struct board {
    int             P;
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    int             arrived;
    uint64_t        gen;
    struct { const moe__msg *m; int n; } posted[MAX_RANKS];
    tamper          tamper;   /* what rank 1 does to what it receives from rank 0 */
} board;

typedef struct tcomm {
    board       *b;
    cudaStream_t stream;
} tcomm;

/* A barrier that gives up at the deadline (a peer that left is silent). */
static moe_status bar_wait(board *b, double deadline) {
    pthread_mutex_lock(&b->mu);
    const uint64_t gen = b->gen;
    if (++b->arrived == b->P) {
        b->arrived = 0;
        b->gen++;
        pthread_cond_broadcast(&b->cv);
        pthread_mutex_unlock(&b->mu);
        return MOE_OK;
    }
    struct timespec ts = { (time_t)deadline, (long)((deadline - (double)(time_t)deadline) * 1e9) };
    while (gen == b->gen)
        if (pthread_cond_timedwait(&b->cv, &b->mu, &ts) == ETIMEDOUT && gen == b->gen) {
            b->arrived--;
            pthread_mutex_unlock(&b->mu);
            return MOE_ERR_TIMEOUT;
        }
    pthread_mutex_unlock(&b->mu);
    return MOE_OK;
}

static double call_deadline(const moe_comm *c) {
    return c->call_end ? c->call_end : moe__now_s() + c->deadline_ms * 1e-3;
}

static moe_status t_post(moe_comm *c, const moe__msg *sends, int n_sends, const moe__msg *recvs,
                         int n_recvs) {
    tcomm *t = c->impl;
    board *b = t->b;
    const double deadline = call_deadline(c);
    if (cudaStreamSynchronize(t->stream) != cudaSuccess)
        return moe__comm_errf(c, MOE_ERR_CUDA, "stream failed");
    b->posted[c->rank].m = sends;
    b->posted[c->rank].n = n_sends;
    if (bar_wait(b, deadline)) return moe__comm_errf(c, MOE_ERR_TIMEOUT, "peer silent");
    moe_status st = MOE_OK;
    for (int i = 0; i < n_recvs && !st; i++) {
        const moe__msg *r = &recvs[i];
        int nth = 0;   /* r is the nth message from r->peer on sub r->sub */
        for (int j = 0; j < i; j++) nth += recvs[j].peer == r->peer && recvs[j].sub == r->sub;
        const moe__msg *m = NULL;
        for (int j = 0; j < b->posted[r->peer].n && !m; j++) {
            const moe__msg *s = &b->posted[r->peer].m[j];
            if (s->peer == c->rank && s->sub == r->sub && nth-- == 0) m = s;
        }
        if (!m || m->bytes != r->bytes) {
            st = moe__comm_errf(c, MOE_ERR_PROTOCOL, "message from %d of %zu bytes, expected %zu",
                                r->peer, m ? m->bytes : 0, r->bytes);
            break;
        }
        if (r->bytes && cudaMemcpy(r->buf, m->buf, r->bytes, cudaMemcpyDeviceToDevice))
            st = moe__comm_errf(c, MOE_ERR_CUDA, "copy failed");
        if ((b->tamper == TAMPER_HEADER || b->tamper == TAMPER_EXPERT) && c->rank == 1 &&
            r->peer == 0 && r->bytes && r->sub == (b->tamper == TAMPER_HEADER ? 0 : 1))
            cudaMemset(r->buf, 0x7f, 4);   /* the header's magic, the first row's expert id */
    }
    /* senders keep their buffers until every receiver has copied */
    if (bar_wait(b, deadline) && !st) st = moe__comm_errf(c, MOE_ERR_TIMEOUT, "peer silent");
    return st;
}

static moe_status t_wait(moe_comm *c) {
    tcomm *t = c->impl;
    return cudaStreamSynchronize(t->stream) ? moe__comm_errf(c, MOE_ERR_CUDA, "stream failed")
                                            : MOE_OK;
}

static moe_status t_exchange(moe_comm *c, const moe__msg *s, int ns, const moe__msg *r, int nr) {
    moe_status st = t_post(c, s, ns, r, nr);
    return st ? st : t_wait(c);
}

static void t_destroy(moe_comm *c) { moe__free(c->impl); }

static const moe__comm_ops t_ops = { .exchange = t_exchange, .post = t_post, .wait = t_wait,
                                     .destroy = t_destroy };

/* A communicator of kind NCCL over the board. */
static moe_comm *t_comm(board *b, int rank, void *stream) {
    moe_comm *c = moe__calloc(1, sizeof *c);
    tcomm    *t = moe__calloc(1, sizeof *t);
    t->b = b;
    t->stream = stream;
    c->kind = MOE__COMM_NCCL;
    c->ops = &t_ops;
    c->size = b->P;
    c->rank = rank;
    c->deadline_ms = DEADLINE_MS;
    c->impl = t;
    c->stream = stream;
    return c;
}

/* ===== The model ===== */

typedef struct ecase {
    int32_t          P, E, k, n_redundant;
    int64_t          H, I, Is;      /* Is: shared experts' d_ff, 0 = none */
    moe_format       fmt;
    moe_scoring      scoring;
    moe_shared_order order;
    int64_t          T[MAX_RANKS];  /* tokens of each rank */
    tamper           tamper;
    int              migrate;       /* rebalance + migrate, then forward again */
    int              tp;            /* tensor parallel: d_ff slices, the same tokens */
    moe_format       io;            /* the layers' x and out (0: f32) */
} ecase;

/* Weights of E experts: per-expert blocks of data and scales. */
typedef struct wset {
    void  *data;
    float *scales;
    size_t db, sb;   /* bytes per expert */
} wset;

static void make_w(test_rng *rng, moe_format f, int32_t E, int64_t rows, int64_t cols, wset *w) {
    const moe__format_traits *ft = moe__format(f);
    moe__wsizes s;
    char err[128];
    ft->sizes(rows, cols, 0, 0, &s, err, sizeof err);
    w->db = s.data;
    w->sb = s.scales;
    w->data = malloc((size_t)E * s.data);
    w->scales = s.scales ? malloc((size_t)E * s.scales) : NULL;
    float *src = malloc((size_t)(rows * cols) * sizeof(float));
    for (int32_t e = 0; e < E; e++) {
        test_fill_normal(rng, src, (size_t)(rows * cols), 1.0f / sqrtf((float)cols));
        moe__wmat m = { .format = f, .rows = rows, .cols = cols,
                        .data = (char *)w->data + (size_t)e * s.data,
                        .scales = w->scales ? (char *)w->scales + (size_t)e * s.scales : NULL };
        ft->quantize_ref(src, &m);
    }
    free(src);
}

/* The experts of `slots` (logical ids, n of them) copied out of the full set. */
static wset pick_w(const wset *full, const int32_t *slots, int32_t n) {
    wset w = { malloc((size_t)n * full->db), full->scales ? malloc((size_t)n * full->sb) : NULL,
               full->db, full->sb };
    for (int32_t i = 0; i < n; i++) {
        memcpy((char *)w.data + (size_t)i * w.db, (char *)full->data + (size_t)slots[i] * w.db,
               w.db);
        if (w.scales)
            memcpy((char *)w.scales + (size_t)i * w.sb,
                   (char *)full->scales + (size_t)slots[i] * w.sb, w.sb);
    }
    return w;
}

typedef struct model {
    const ecase        *c;
    wset                w13, w2;
    moe_router         *router;
    moe_shared_experts *shared;
    float              *x[MAX_RANKS], *logits[MAX_RANKS];   /* host, per rank */
    float              *ref[MAX_RANKS];                     /* single-device outputs */
} model;

static int64_t max_t(const ecase *c) {
    int64_t m = 1;
    for (int r = 0; r < c->P; r++) m = c->T[r] > m ? c->T[r] : m;
    return m;
}

/* Runs x (T tokens, f32, given to the layer in its io format) through layer
 * l on stream st; out (T, H) f32 host. */
static moe_status run_layer(moe_layer *l, moe_format io, cudaStream_t st, int64_t T, int64_t H,
                            int32_t E, const float *x, const float *logits,
                            const moe_shared_experts *sh, float *out) {
    size_t wsz = moe_layer_workspace_size(l, T);
    void *d_x = NULL, *d_lg = NULL, *d_out = NULL, *d_ws = NULL;
    size_t xb = (size_t)(T ? T : 1) * (size_t)H * 4, lb = (size_t)(T ? T : 1) * (size_t)E * 4;
    const size_t iob = (size_t)T * H * (io == MOE_FORMAT_F32 ? 4 : 2);
    void *h_io = malloc(xb); /* x, then out, in the io format */
    moe_status s = MOE_ERR_CUDA;
    if (!h_io || cudaMalloc(&d_x, xb) || cudaMalloc(&d_lg, lb) || cudaMalloc(&d_out, xb) ||
        cudaMalloc(&d_ws, wsz))
        goto done;
    moe__from_f32(io, x, h_io, T * H);
    cudaMemcpy(d_x, h_io, iob, cudaMemcpyHostToDevice);
    cudaMemcpy(d_lg, logits, (size_t)T * E * 4, cudaMemcpyHostToDevice);
    cudaMemset(d_out, 0xff, xb);
    cudaMemset(d_ws, 0xff, wsz);
    s = moe_layer_forward(l, T, d_x, d_lg, sh, d_out, d_ws, wsz);
    if (!s && cudaStreamSynchronize(st)) s = MOE_ERR_CUDA;
    if (!s && cudaMemcpy(h_io, d_out, iob, cudaMemcpyDeviceToHost) == cudaSuccess)
        moe__to_f32(io, h_io, out, T * H);
done:
    free(h_io);
    cudaFree(d_x);
    cudaFree(d_lg);
    cudaFree(d_out);
    cudaFree(d_ws);
    return s;
}

static moe_experts_options experts_opts(const model *m, const wset *w13, const wset *w2,
                                        int32_t n) {
    const ecase *c = m->c;
    return (moe_experts_options){
        .n_experts = n, .d_model = c->H, .d_ff = c->I, .format = c->fmt,
        .activation = MOE_ACT_SILU, .w13 = { .data = w13->data, .scales = w13->scales },
        .w2 = { .data = w2->data, .scales = w2->scales },
    };
}

/* ===== One rank ===== */

typedef struct rank_job {
    model      *m;
    board      *b;
    int         rank;
    moe_status  status;      /* of the forward                        */
    double      seconds;     /* the forward's wall time               */
    float      *out, *out2;  /* out2: after migration                 */
    int64_t     moved;       /* bytes this rank sent in the migration */
    char        err[512];
} rank_job;

/* A rebalance for a skewed load (the same on every rank), its migration,
 * and a check that every local slot's host tables now hold the bytes of its
 * new logical expert. */
static moe_status migrate(rank_job *j, moe_routed_experts *ex, moe_expert_map *map,
                          moe_comm *comm, char *err, size_t errlen) {
    const ecase *c = j->m->c;
    const int32_t E = c->E, Pp = moe_expert_map_n_physical(map);
    double  *load = malloc((size_t)E * sizeof(double));
    int32_t *p2l = malloc((size_t)Pp * sizeof(int32_t));
    for (int32_t e = 0; e < E; e++) load[e] = e % 5 == 0 ? 100.0 + e : 1.0 + e;
    moe_status s = moe_eplb_rebalance(load, 1, E, Pp, 1, 1, c->P, NULL, p2l, NULL, err, errlen);
    if (!s) s = moe_eplb_migrate(comm, ex, map, p2l, &j->moved, err, errlen);
    for (int32_t i = 0; !s && i < moe_expert_map_n_local(map); i++) {
        const int32_t lg = moe_expert_map_logical(map, moe_expert_map_to_global(map, i));
        const wset *f13 = &j->m->w13;
        if (lg != p2l[moe_expert_map_to_global(map, i)] ||
            memcmp((char *)ex->opts.w13.data + (size_t)i * f13->db,
                   (char *)f13->data + (size_t)lg * f13->db, f13->db)) {
            snprintf(err, errlen, "slot %d: host tables do not hold expert %d", i, lg);
            s = MOE_ERR_INTERNAL;
        }
    }
    free(load);
    free(p2l);
    return s;
}

/* The layer's EPLB counters equal the host map's for the same routing (the
 * CPU router's ids are the GPU's, bit for bit). */
static bool check_load(const model *m, int rank, const moe_expert_map *map, const int32_t *load) {
    const ecase *c = m->c;
    const int64_t T = c->T[rank], S = T * c->k;
    const int32_t Pp = moe_expert_map_n_physical(map);
    int32_t *ids = malloc((size_t)(S + 1) * 4), *phys = malloc((size_t)(S + 1) * 4);
    int32_t *ref = calloc((size_t)Pp, sizeof(int32_t));
    float *w = malloc((size_t)(S + 1) * 4);
    bool ok = moe_router_route(m->router, T, m->logits[rank], ids, w) == MOE_OK &&
              moe_expert_map_route(map, T, c->k, ids, phys, ref) == MOE_OK &&
              memcmp(ref, load, (size_t)Pp * 4) == 0;
    free(ids);
    free(phys);
    free(ref);
    free(w);
    return ok;
}

static void *rank_main(void *arg) {
    rank_job *j = arg;
    const model *m = j->m;
    const ecase *c = m->c;
    char err[256] = "";
    cudaStream_t st = NULL;
    moe_context *ctx = NULL;
    moe_expert_map *map = NULL;
    moe_routed_experts *ex = NULL;
    moe_layer *l = NULL;
    moe_comm *comm = NULL;
    wset w13 = { 0 }, w2 = { 0 };
    int32_t *slots = NULL, *load = NULL;
    const moe_format io = c->tamper == TAMPER_IO && j->rank == 1 ? MOE_FORMAT_BF16 : c->io;
    j->status = MOE_ERR_INTERNAL;
    cudaSetDevice(0);
    cudaStreamCreate(&st);
    moe_context_options co = { .cuda_stream = st };
    moe_expert_map_options mo = { .n_experts = c->E, .n_redundant = c->n_redundant,
                                  .ep_size = c->P, .ep_rank = j->rank };
    if (moe_context_create(&co, &ctx, err, sizeof err)) goto done;
    comm = t_comm(j->b, j->rank, st);
    moe_parallel par = { .mode = MOE_PARALLEL_TP, .comm = comm };
    if (c->tp) {
        moe_experts_options full = experts_opts(m, &m->w13, &m->w2, c->E);
        if (moe_routed_experts_create_tp(&full, c->P, j->rank, &ex, err, sizeof err)) goto done;
    } else {
        if (moe_expert_map_create(&mo, &map, err, sizeof err)) goto done;
        load = calloc((size_t)moe_expert_map_n_physical(map), sizeof(int32_t));
        par = (moe_parallel){ .mode = MOE_PARALLEL_EP, .comm = comm, .map = map, .load = load };
    }
    const int32_t nl = c->tp ? 0 : moe_expert_map_n_local(map);
    slots = malloc((size_t)nl * sizeof(int32_t));
    for (int32_t i = 0; i < nl; i++)
        slots[i] = moe_expert_map_logical(map, moe_expert_map_to_global(map, i));
    if (!c->tp) {
        w13 = pick_w(&m->w13, slots, nl);
        w2 = pick_w(&m->w2, slots, nl);
        moe_experts_options eo = experts_opts(m, &w13, &w2, nl);
        eo.n_experts_global = moe_expert_map_n_physical(map);
        eo.expert_map = moe_expert_map_table(map);
        if (moe_routed_experts_create(&eo, &ex, err, sizeof err)) goto done;
    }
    moe_layer_options lo = { .router = m->router, .experts = ex, .context = ctx,
                             .backend = MOE_BACKEND_CUDA, .max_tokens = max_t(c),
                             .shared = m->shared, .shared_order = c->order, .parallel = &par,
                             .io_format = io };
    if (moe_layer_create(&lo, &l, err, sizeof err)) goto done;
    if (strcmp(moe_layer_prepare_finalize_impl(l), c->tp ? "nccl-tp" : "nccl"))
        snprintf(err, sizeof err, "prepare/finalize %s", moe_layer_prepare_finalize_impl(l));
    double t0 = moe__now_s();
    j->status = run_layer(l, io, st, c->T[j->rank], c->H, c->E, m->x[j->rank],
                          m->logits[j->rank], m->shared, j->out);
    j->seconds = moe__now_s() - t0;
    if (j->status) snprintf(err, sizeof err, "%s", moe_layer_last_error(l));
    if (!j->status && load && !check_load(m, j->rank, map, load))
        snprintf(err, sizeof err, "EPLB counters differ from moe_expert_map_route's");
    if (!j->status && c->migrate && migrate(j, ex, map, comm, err, sizeof err) == MOE_OK)
        j->status = run_layer(l, io, st, c->T[j->rank], c->H, c->E, m->x[j->rank],
                              m->logits[j->rank], m->shared, j->out2);
done:
    snprintf(j->err, sizeof j->err, "%s", err);
    moe_layer_destroy(l);
    moe_comm_destroy(comm);
    moe_routed_experts_destroy(ex);
    moe_expert_map_destroy(map);
    moe_context_destroy(ctx);
    if (st) cudaStreamDestroy(st);
    free(slots);
    free(load);
    free(w13.data);
    free(w13.scales);
    free(w2.data);
    free(w2.scales);
    return NULL;
}

#define NEED(cond, ...)                                                               \
    do {                                                                              \
        if (!(cond)) {                                                                \
            test_fail(__FILE__, __LINE__, __VA_ARGS__);                               \
            goto done;                                                                \
        }                                                                             \
    } while (0)

/* Builds the model, the single-device outputs, and runs the ranks. */
static void ep_check(const ecase *c, uint64_t seed) {
    if (moe__cuda_device_count() < 1) TEST_SKIP("no CUDA device");
    test_rng rng = { seed };
    char err[256];
    model m = { .c = c };
    board b = { .P = c->P, .tamper = c->tamper };
    rank_job jobs[MAX_RANKS];
    memset(jobs, 0, sizeof jobs);
    moe_routed_experts *full = NULL;
    moe_layer *one = NULL;
    moe_context *ctx = NULL;
    cudaStream_t st = NULL;
    wset s13 = { 0 }, s2 = { 0 };
    const int64_t H = c->H;
    make_w(&rng, c->fmt, c->E, 2 * c->I, H, &m.w13);
    make_w(&rng, c->fmt, c->E, H, c->I, &m.w2);
    moe_router_options ro = { .n_experts = c->E, .top_k = c->k, .scoring = c->scoring,
                              .renormalize = c->scoring != MOE_SCORING_LLAMA4 };
    NEED(moe_router_create(&ro, &m.router, err, sizeof err) == MOE_OK, "%s", err);
    if (c->Is) {
        make_w(&rng, c->fmt, 1, 2 * c->Is, H, &s13);
        make_w(&rng, c->fmt, 1, H, c->Is, &s2);
        moe_shared_options so = { .mlp = { .n_experts = 1, .d_model = H, .d_ff = c->Is,
                                           .format = c->fmt, .activation = MOE_ACT_SILU,
                                           .w13 = { .data = s13.data, .scales = s13.scales },
                                           .w2 = { .data = s2.data, .scales = s2.scales } } };
        NEED(moe_shared_experts_create(&so, &m.shared, err, sizeof err) == MOE_OK, "%s", err);
    }
    moe_experts_options eo = experts_opts(&m, &m.w13, &m.w2, c->E);
    NEED(moe_routed_experts_create(&eo, &full, err, sizeof err) == MOE_OK, "%s", err);
    NEED(cudaStreamCreate(&st) == cudaSuccess, "stream");
    moe_context_options co = { .cuda_stream = st };
    NEED(moe_context_create(&co, &ctx, err, sizeof err) == MOE_OK, "%s", err);
    moe_layer_options lo = { .router = m.router, .experts = full, .context = ctx,
                             .backend = MOE_BACKEND_CUDA, .max_tokens = max_t(c),
                             .shared = m.shared, .shared_order = c->order, .io_format = c->io };
    NEED(moe_layer_create(&lo, &one, err, sizeof err) == MOE_OK, "%s", err);
    for (int r = 0; r < c->P; r++) {
        const int64_t T = c->T[r];
        m.x[r] = malloc((size_t)(T + 1) * H * 4);
        m.logits[r] = malloc((size_t)(T + 1) * c->E * 4);
        m.ref[r] = malloc((size_t)(T + 1) * H * 4);
        jobs[r].out = malloc((size_t)(T + 1) * H * 4);
        jobs[r].out2 = malloc((size_t)(T + 1) * H * 4);
        test_fill_normal(&rng, m.x[r], (size_t)(T * H), 1.0f);
        test_fill_normal(&rng, m.logits[r], (size_t)(T * c->E), 1.5f);
        if (c->tp && r) { /* tensor parallel: every rank runs rank 0's tokens */
            memcpy(m.x[r], m.x[0], (size_t)(T * H) * 4);
            memcpy(m.logits[r], m.logits[0], (size_t)(T * c->E) * 4);
        }
        if (T) {
            moe_status s = run_layer(one, c->io, st, T, H, c->E, m.x[r], m.logits[r], m.shared,
                                     m.ref[r]);
            CHECK(s == MOE_OK, "single device: %s", moe_layer_last_error(one));
        }
    }
    pthread_mutex_init(&b.mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b.cv, &ca);
    pthread_t th[MAX_RANKS];
    for (int r = 0; r < c->P; r++) {
        jobs[r] = (rank_job){ .m = &m, .b = &b, .rank = r, .out = jobs[r].out,
                              .out2 = jobs[r].out2 };
        pthread_create(&th[r], NULL, rank_main, &jobs[r]);
    }
    for (int r = 0; r < c->P; r++) pthread_join(th[r], NULL);
    for (int r = 0; r < c->P; r++) {
        const rank_job *j = &jobs[r];
        if (c->tamper) {
            /* rank 1 sees the bad message. A bad header: it leaves, and the
             * others wait for it in vain. A bad row: it tells everyone with
             * the combine. Another io format: every header says so. */
            moe_status want = r == 1 || c->tamper != TAMPER_HEADER ? MOE_ERR_PROTOCOL
                                                                   : MOE_ERR_TIMEOUT;
            CHECK(j->status == want, "tamper %d rank %d: %s (%s), want %s", c->tamper, r,
                  moe_status_name(j->status), j->err, moe_status_name(want));
            CHECK(j->seconds < DEADLINE_MS * 1e-3 + 5, "rank %d took %.1f s", r, j->seconds);
            continue;
        }
        CHECK(j->status == MOE_OK && !j->err[0], "rank %d of %d: %s: %s", r, c->P,
              moe_status_name(j->status), j->err);
        if (j->status) continue;
        const size_t n = (size_t)c->T[r] * H;
        if (c->tp) {
            /* the d_ff halves are summed apart: f32 rounding, the same on every rank */
            double e = test_nmse_f(j->out, m.ref[r], n);
            CHECK(e <= 1e-6, "tensor parallel rank %d of %d: nmse %.3g", r, c->P, e);
            CHECK(memcmp(j->out, jobs[0].out, n * 4) == 0, "rank %d differs from rank 0", r);
            continue;
        }
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) bad += memcmp(&j->out[i], &m.ref[r][i], 4) != 0;
        CHECK(bad == 0, "rank %d of %d (%lld tokens): %zu of %zu values differ from one device",
              r, c->P, (long long)c->T[r], bad, n);
        CHECK(test_find_nan(j->out, n) < 0, "rank %d: NaN", r);
        if (c->migrate) {
            bad = 0;
            for (size_t i = 0; i < n; i++) bad += memcmp(&j->out2[i], &m.ref[r][i], 4) != 0;
            CHECK(bad == 0, "after migration, rank %d: %zu of %zu values differ", r, bad, n);
        }
    }
    if (c->migrate) {
        int64_t moved = 0;
        for (int r = 0; r < c->P; r++) moved += jobs[r].moved;
        CHECK(moved > 0, "the rebalance moved no expert across ranks");
    }
    pthread_cond_destroy(&b.cv);
    pthread_mutex_destroy(&b.mu);
done:
    for (int r = 0; r < c->P; r++) {
        free(m.x[r]);
        free(m.logits[r]);
        free(m.ref[r]);
        free(jobs[r].out);
        free(jobs[r].out2);
    }
    moe_layer_destroy(one);
    moe_context_destroy(ctx);
    if (st) cudaStreamDestroy(st);
    moe_routed_experts_destroy(full);
    moe_shared_experts_destroy(m.shared);
    moe_router_destroy(m.router);
    free(m.w13.data);
    free(m.w13.scales);
    free(m.w2.data);
    free(m.w2.scales);
    free(s13.data);
    free(s13.scales);
    free(s2.data);
    free(s2.scales);
}

#define BF16 MOE_FORMAT_BF16
#define FP8  MOE_FORMAT_FP8_BLOCK

TEST(cuda_ep_bitwise_1_to_4_ranks) {
    /* decode-sized and empty ranks; 13 experts do not divide evenly */
    for (int32_t P = 1; P <= 4; P++) {
        ecase c = { .P = P, .E = 13, .k = 4, .H = 256, .I = 128, .Is = 128, .fmt = BF16,
                    .order = MOE_SHARED_IN_COMBINE, .T = { 5, 0, 37, 1 } };
        ep_check(&c, 100 + (uint64_t)P);
    }
}

TEST(cuda_ep_bitwise_prefill) {
    /* enough rows for prefill tiles and the multi-block layout; then bf16 x
     * and out, whose slot rows W2 stores and the combine sends as bf16 */
    ecase c = { .P = 2, .E = 16, .k = 8, .H = 256, .I = 256, .fmt = BF16,
                .order = MOE_SHARED_BEFORE, .T = { 700, 300 } };
    ep_check(&c, 7);
    c.io = BF16;
    c.order = MOE_SHARED_IN_COMBINE;
    c.Is = 128;
    ep_check(&c, 9);
}

TEST(cuda_ep_bitwise_fp8_block) {
    ecase c = { .P = 3, .E = 16, .k = 4, .H = 256, .I = 256, .Is = 256, .fmt = FP8,
                .order = MOE_SHARED_OVERLAPPED, .T = { 1, 64, 200 } };
    ep_check(&c, 8);
    c.io = BF16;
    ep_check(&c, 10);
}

TEST(cuda_ep_bitwise_replicas_orders_llama4) {
    /* EPLB layout: 4 redundant slots over 2 ranks (replicas picked per token) */
    for (int o = MOE_SHARED_BEFORE; o <= MOE_SHARED_IN_COMBINE; o++) {
        if (o == MOE_SHARED_NONE) continue;
        ecase c = { .P = 2, .E = 16, .k = 4, .n_redundant = 4, .H = 256, .I = 128, .Is = 64,
                    .fmt = BF16, .order = (moe_shared_order)o, .T = { 9, 33 } };
        ep_check(&c, 20 + (uint64_t)o);
    }
    ecase l4 = { .P = 2, .E = 16, .k = 1, .H = 256, .I = 128, .Is = 128, .fmt = BF16,
                 .scoring = MOE_SCORING_LLAMA4, .order = MOE_SHARED_IN_COMBINE, .T = { 17, 4 } };
    ep_check(&l4, 30);
}

TEST(cuda_ep_eplb_migration) {
    /* 3 ranks, 12 experts + 3 replicas, fp8 (scales travel too), biases off:
     * after a rebalance and the migration of the device weights, the same
     * tokens give the same bits */
    ecase c = { .P = 3, .E = 12, .k = 4, .n_redundant = 3, .H = 256, .I = 256, .fmt = FP8,
                .order = MOE_SHARED_NONE, .T = { 30, 1, 12 }, .migrate = 1 };
    ep_check(&c, 60);
}

TEST(cuda_tp_nccl_2_and_3_ranks) {
    /* tensor parallel over the device transport: d_ff sliced, partials summed
     * in rank order + the shared expert */
    for (int32_t P = 2; P <= 3; P++) {
        ecase c = { .P = P, .E = 8, .k = 2, .H = 256, .I = 96 * P, .Is = 128, .fmt = BF16,
                    .order = MOE_SHARED_BEFORE, .T = { 40, 40, 40 }, .tp = 1 };
        ep_check(&c, 70 + (uint64_t)P);
    }
}

/* One rank's small layer over comm (8 bf16 experts, d_model 128, d_ff 128,
 * top-2) and the same layer without parallelism, on stream st. */
enum { SM_E = 8, SM_K = 2, SM_H = 128, SM_I = 128 };
typedef struct small_layer {
    wset                w13, w2;
    moe_router         *router;
    moe_routed_experts *experts;
    moe_expert_map     *map;
    moe_context        *ctx;
    moe_parallel        par;      /* borrowed by ep: lives as long as it */
    moe_layer          *ep, *one;
} small_layer;

static void small_destroy(small_layer *m) {
    moe_layer_destroy(m->ep);
    moe_layer_destroy(m->one);
    moe_context_destroy(m->ctx);
    moe_routed_experts_destroy(m->experts);
    moe_expert_map_destroy(m->map);
    moe_router_destroy(m->router);
    free(m->w13.data);
    free(m->w2.data);
}

static bool small_create(small_layer *m, moe_comm *comm, cudaStream_t st, int64_t max_tokens,
                         test_rng *rng) {
    char err[256] = "";
    memset(m, 0, sizeof *m);
    make_w(rng, BF16, SM_E, 2 * SM_I, SM_H, &m->w13);
    make_w(rng, BF16, SM_E, SM_H, SM_I, &m->w2);
    moe_router_options ro = { .n_experts = SM_E, .top_k = SM_K, .renormalize = 1 };
    moe_expert_map_options mo = { .n_experts = SM_E, .ep_size = 1 };
    moe_context_options co = { .cuda_stream = st };
    bool ok = !moe_router_create(&ro, &m->router, err, sizeof err) &&
              !moe_expert_map_create(&mo, &m->map, err, sizeof err) &&
              !moe_context_create(&co, &m->ctx, err, sizeof err);
    moe_experts_options eo = { .n_experts = SM_E, .d_model = SM_H, .d_ff = SM_I, .format = BF16,
                               .w13 = { .data = m->w13.data }, .w2 = { .data = m->w2.data },
                               .n_experts_global = SM_E,
                               .expert_map = ok ? moe_expert_map_table(m->map) : NULL };
    ok = ok && !moe_routed_experts_create(&eo, &m->experts, err, sizeof err);
    m->par = (moe_parallel){ .mode = MOE_PARALLEL_EP, .comm = comm, .map = m->map };
    moe_layer_options lo = { .router = m->router, .experts = m->experts, .context = m->ctx,
                             .backend = MOE_BACKEND_CUDA, .max_tokens = max_tokens };
    ok = ok && !moe_layer_create(&lo, &m->one, err, sizeof err);
    lo.parallel = &m->par;
    ok = ok && !moe_layer_create(&lo, &m->ep, err, sizeof err);
    if (!ok) test_fail(__FILE__, __LINE__, "small layer: %s", err);
    return ok;
}

/* An id outside [0, E) given to moe_layer_forward_routed: MOE_ERR_RANGE
 * after the forward (the device finds it), its slot contributing nothing. */
TEST(cuda_ep_id_out_of_range) {
    if (moe__cuda_device_count() < 1) TEST_SKIP("no CUDA device");
    board b = { .P = 1 };
    cudaStream_t st = NULL;
    REQUIRE(cudaStreamCreate(&st) == cudaSuccess, "stream");
    moe_comm *comm = t_comm(&b, 0, st);
    test_rng rng = { 90 };
    const int64_t T = 3;
    small_layer m;
    const int32_t ids[6] = { 0, 1, 2, SM_E, 3, 4 };
    const float w[6] = { 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f };
    void *d_x = NULL, *d_out = NULL, *d_ids = NULL, *d_w = NULL, *d_ws = NULL;
    if (small_create(&m, comm, st, T, &rng)) {
        size_t wsz = moe_layer_workspace_size(m.ep, T);
        if (!cudaMalloc(&d_x, (size_t)(T * SM_H) * 4) &&
            !cudaMalloc(&d_out, (size_t)(T * SM_H) * 4) && !cudaMalloc(&d_ids, sizeof ids) &&
            !cudaMalloc(&d_w, sizeof w) && !cudaMalloc(&d_ws, wsz)) {
            cudaMemset(d_x, 0, (size_t)(T * SM_H) * 4);
            cudaMemcpy(d_ids, ids, sizeof ids, cudaMemcpyHostToDevice);
            cudaMemcpy(d_w, w, sizeof w, cudaMemcpyHostToDevice);
            moe_status s = moe_layer_forward_routed(m.ep, T, d_x, d_ids, d_w, NULL, d_out, d_ws,
                                                    wsz);
            CHECK(s == MOE_ERR_RANGE, "%s: %s", moe_status_name(s), moe_layer_last_error(m.ep));
        }
    }
    cudaFree(d_x);
    cudaFree(d_out);
    cudaFree(d_ids);
    cudaFree(d_w);
    cudaFree(d_ws);
    small_destroy(&m);
    moe_comm_destroy(comm);
    cudaStreamDestroy(st);
}

TEST(cuda_ep_tampered_messages) {
    ecase h = { .P = 3, .E = 12, .k = 2, .H = 128, .I = 128, .fmt = BF16, .T = { 8, 8, 8 },
                .tamper = TAMPER_HEADER };
    ep_check(&h, 40);
    ecase x = h;
    x.tamper = TAMPER_EXPERT;
    ep_check(&x, 41);
    x.tamper = TAMPER_IO;
    ep_check(&x, 42);
}

#ifdef MOE_HAVE_NCCL
/* A real NCCL communicator of one rank (non-blocking): the transport's
 * creation, the forward, bitwise equal to the layer without parallelism. */
TEST(cuda_ep_nccl_one_rank) {
    if (moe__cuda_device_count() < 1) TEST_SKIP("no CUDA device");
    ncclUniqueId id;
    ncclComm_t nc = NULL;
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    REQUIRE(ncclGetUniqueId(&id) == ncclSuccess, "ncclGetUniqueId");
    ncclResult_t r = ncclCommInitRankConfig(&nc, 1, id, 0, &cfg);
    for (double t0 = moe__now_s(); r == ncclInProgress && moe__now_s() - t0 < 60;) {
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
        ncclCommGetAsyncError(nc, &r);
    }
    REQUIRE(r == ncclSuccess, "ncclCommInitRankConfig: %s", ncclGetErrorString(r));
    char err[256];
    cudaStream_t st = NULL;
    moe_comm *comm = NULL;
    REQUIRE(cudaStreamCreate(&st) == cudaSuccess, "stream");
    moe_comm_options cop = { .deadline_ms = DEADLINE_MS };
    CHECK_STATUS(moe_comm_create_nccl(nc, st, &cop, &comm, err, sizeof err), MOE_OK);
    small_layer m;
    test_rng rng = { 50 };
    const int64_t T = 24;
    if (comm && small_create(&m, comm, st, T, &rng)) {
        float *x = malloc((size_t)(T * SM_H) * 4), *lg = malloc((size_t)(T * SM_E) * 4);
        float *o1 = malloc((size_t)(T * SM_H) * 4), *o2 = malloc((size_t)(T * SM_H) * 4);
        test_fill_normal(&rng, x, (size_t)(T * SM_H), 1.0f);
        test_fill_normal(&rng, lg, (size_t)(T * SM_E), 1.0f);
        CHECK_STATUS(run_layer(m.one, MOE_FORMAT_F32, st, T, SM_H, SM_E, x, lg, NULL, o1),
                     MOE_OK);
        moe_status s = run_layer(m.ep, MOE_FORMAT_F32, st, T, SM_H, SM_E, x, lg, NULL, o2);
        CHECK(s == MOE_OK, "nccl forward: %s", moe_layer_last_error(m.ep));
        CHECK(!s && memcmp(o1, o2, (size_t)(T * SM_H) * 4) == 0, "differs from one device");
        CHECK_STATUS(run_layer(m.ep, MOE_FORMAT_F32, st, 0, SM_H, SM_E, x, lg, NULL, o2), MOE_OK);
        free(x);
        free(lg);
        free(o1);
        free(o2);
    }
    if (comm) small_destroy(&m);
    moe_comm_destroy(comm);
    ncclCommDestroy(nc);
    cudaStreamDestroy(st);
}
#endif

#endif /* MOE_HAVE_CUDA */

/* Refusals at creation, with or without a device: an NCCL communicator
 * needs backend cuda and the context's stream. */
TEST(cuda_ep_create_refusals) {
#ifndef MOE_HAVE_CUDA
    TEST_SKIP("built without CUDA");
#else
    char err[256];
    board b = { .P = 2 };
    moe_comm *comm = t_comm(&b, 0, NULL);
    moe_router *ro = NULL;
    moe_routed_experts *ex = NULL;
    moe_expert_map *map = NULL;
    moe_layer *l = NULL;
    static uint16_t w13[4 * 32 * 16], w2[4 * 16 * 16];
    moe_router_options rop = { .n_experts = 8, .top_k = 2 };
    moe_expert_map_options mo = { .n_experts = 8, .ep_size = 2, .ep_rank = 0 };
    REQUIRE(moe_router_create(&rop, &ro, err, sizeof err) == MOE_OK, "%s", err);
    REQUIRE(moe_expert_map_create(&mo, &map, err, sizeof err) == MOE_OK, "%s", err);
    moe_experts_options eo = { .n_experts = 4, .d_model = 16, .d_ff = 16, .format = BF16,
                               .w13 = { .data = w13 }, .w2 = { .data = w2 },
                               .n_experts_global = 8, .expert_map = moe_expert_map_table(map) };
    REQUIRE(moe_routed_experts_create(&eo, &ex, err, sizeof err) == MOE_OK, "%s", err);
    moe_parallel par = { .mode = MOE_PARALLEL_EP, .comm = comm, .map = map };
    moe_layer_options lo = { .router = ro, .experts = ex, .backend = MOE_BACKEND_CPU,
                             .parallel = &par };
    CHECK_STATUS(moe_layer_create(&lo, &l, err, sizeof err), MOE_ERR_UNSUPPORTED);
    CHECK(strstr(err, "backend cuda") != NULL, "%s", err);
    lo.backend = MOE_BACKEND_CUDA;
    if (moe__cuda_device_count() > 0) {
        /* the communicator's stream (NULL here) is not the context's */
        cudaStream_t st = NULL;
        moe_context *ctx = NULL;
        cudaStreamCreate(&st);
        moe_context_options co = { .cuda_stream = st };
        moe_context_create(&co, &ctx, err, sizeof err);
        par.mode = MOE_PARALLEL_EP;
        lo.context = ctx;
        CHECK_STATUS(moe_layer_create(&lo, &l, err, sizeof err), MOE_ERR_INVALID_ARG);
        CHECK(strstr(err, "stream") != NULL, "%s", err);
        moe_context_destroy(ctx);
        cudaStreamDestroy(st);
    }
    moe_layer_destroy(l);
    moe_routed_experts_destroy(ex);
    moe_expert_map_destroy(map);
    moe_router_destroy(ro);
    moe_comm_destroy(comm);
#endif
}
