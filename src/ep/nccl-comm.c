/*
 * nccl-comm.c - the NCCL transport: the exchange primitive as one NCCL group
 * of ncclSend/ncclRecv on the caller's stream (post), then a deadline-bound
 * poll of the communicator's asynchronous error and of the stream (wait).
 * The CUDA layer (src/cuda/ep.cu) posts its row and combine exchanges and
 * waits only at its count exchange and at the end of the forward.
 *
 * The caller creates the communicator non-blocking (config.blocking = 0), so
 * no NCCL call blocks: ncclGroupEnd may answer ncclInProgress, and we poll
 * until it settles. NCCL has no timeout of its own; at our deadline, or on an
 * asynchronous error, we abort the communicator (ncclCommAbort stops its
 * kernels, so the stream drains) and return MOE_ERR_TIMEOUT or MOE_ERR_NCCL.
 * The aborted communicator, though the caller's, cannot be used again.
 *
 * NCCL sends and receives must agree on sizes: the prepare/finalize above
 * exchanges counts first, so a receive size is always the announced one.
 * Buffers are device pointers. 0-byte messages are not posted.
 */
#include "ep.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <time.h>

typedef struct nccl_state {
    ncclComm_t   comm;
    cudaStream_t stream;
    int          aborted;
} nccl_state;

/* Between polls: spin for the first 2 ms of a wait (a decode step's
 * exchange completes in microseconds, and a sleep costs ~60 us of timer
 * slack), then sleep 20 us at a time. */
static void nap(double since) {
    if (moe__now_s() - since < 2e-3) return;
    struct timespec ts = { 0, 20000 };
    nanosleep(&ts, NULL);
}

static moe_status nccl_abort(moe_comm *c, moe_status st, const char *what, ncclResult_t r) {
    nccl_state *s = c->impl;
    if (!s->aborted) ncclCommAbort(s->comm);
    s->aborted = 1;
    return moe__comm_errf(c, st, "%s (%s); communicator aborted", what, ncclGetErrorString(r));
}

/* Polls until the communicator leaves ncclInProgress. */
static moe_status settle(moe_comm *c, double deadline, const char *what) {
    nccl_state  *s = c->impl;
    ncclResult_t r = ncclInProgress;
    const double t0 = moe__now_s();
    while (r == ncclInProgress) {
        if (ncclCommGetAsyncError(s->comm, &r) != ncclSuccess) r = ncclInternalError;
        if (r == ncclInProgress) {
            if (moe__now_s() > deadline) return nccl_abort(c, MOE_ERR_TIMEOUT, what, r);
            nap(t0);
        }
    }
    if (r != ncclSuccess) return nccl_abort(c, MOE_ERR_NCCL, what, r);
    return MOE_OK;
}

static double deadline_of(const moe_comm *c) {
    return c->call_end ? c->call_end : moe__now_s() + c->deadline_ms * 1e-3;
}

/* One NCCL group of every receive and send; 0-byte messages are left out
 * (both sides know the size, so both leave them out). */
static moe_status nccl_post(moe_comm *c, const moe__msg *sends, int n_sends,
                            const moe__msg *recvs, int n_recvs) {
    nccl_state  *s = c->impl;
    ncclResult_t r = ncclGroupStart();
    for (int i = 0; i < n_recvs && (r == ncclSuccess || r == ncclInProgress); i++)
        if (recvs[i].bytes)
            r = ncclRecv(recvs[i].buf, recvs[i].bytes, ncclUint8, recvs[i].peer, s->comm,
                         s->stream);
    for (int i = 0; i < n_sends && (r == ncclSuccess || r == ncclInProgress); i++)
        if (sends[i].bytes)
            r = ncclSend(sends[i].buf, sends[i].bytes, ncclUint8, sends[i].peer, s->comm,
                         s->stream);
    ncclResult_t r2 = ncclGroupEnd();
    if (r == ncclSuccess || r == ncclInProgress) r = r2;
    if (r != ncclSuccess && r != ncclInProgress)
        return nccl_abort(c, MOE_ERR_NCCL, "posting the exchange", r);
    return settle(c, deadline_of(c), "posting the exchange");
}

/* Waits for the stream, watching for asynchronous errors. */
static moe_status nccl_wait(moe_comm *c) {
    nccl_state  *s = c->impl;
    const double deadline = deadline_of(c), t0 = moe__now_s();
    for (;;) {
        cudaError_t ce = cudaStreamQuery(s->stream);
        if (ce == cudaSuccess) return MOE_OK;
        if (ce != cudaErrorNotReady)
            return moe__comm_errf(c, MOE_ERR_CUDA, "stream: %s", cudaGetErrorString(ce));
        ncclResult_t ar = ncclSuccess;
        ncclCommGetAsyncError(s->comm, &ar);
        if (ar != ncclSuccess && ar != ncclInProgress)
            return nccl_abort(c, ar == ncclRemoteError ? MOE_ERR_PEER_DEAD : MOE_ERR_NCCL,
                              "exchange failed", ar);
        if (moe__now_s() > deadline)
            return nccl_abort(c, MOE_ERR_TIMEOUT, "exchange past the deadline", ncclSuccess);
        nap(t0);
    }
}

static moe_status nccl_exchange(moe_comm *c, const moe__msg *sends, int n_sends,
                                const moe__msg *recvs, int n_recvs) {
    moe_status st = nccl_post(c, sends, n_sends, recvs, n_recvs);
    return st ? st : nccl_wait(c);
}

static void nccl_destroy(moe_comm *c) { moe__free(c->impl); }

static const moe__comm_ops nccl_ops = {
    .exchange = nccl_exchange, .post = nccl_post, .wait = nccl_wait, .destroy = nccl_destroy,
};

moe_status moe__comm_nccl_create(void *nccl_comm, void *stream, int32_t deadline_ms,
                                 moe_comm **out, char *err, size_t errlen) {
    ncclComm_t comm = (ncclComm_t)nccl_comm;
    int size = 0, rank = 0;
    ncclResult_t r = ncclCommCount(comm, &size);
    if (r == ncclSuccess) r = ncclCommUserRank(comm, &rank);
    if (r != ncclSuccess)
        return moe__errf(err, errlen, MOE_ERR_NCCL, "NCCL communicator: %s",
                         ncclGetErrorString(r));
    moe_comm   *c = moe__calloc(1, sizeof *c);
    nccl_state *s = moe__calloc(1, sizeof *s);
    if (!c || !s) {
        moe__free(c);
        moe__free(s);
        return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    }
    s->comm        = comm;
    s->stream      = (cudaStream_t)stream;
    c->kind        = MOE__COMM_NCCL;
    c->ops         = &nccl_ops;
    c->size        = size;
    c->rank        = rank;
    c->deadline_ms = deadline_ms;
    c->impl        = s;
    c->stream      = stream;
    *out           = c;
    return MOE_OK;
}
