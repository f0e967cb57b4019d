/*
 * nccl-exchange.c - the NCCL transport (src/ep/nccl-comm.c) on two GPUs of
 * one host: one thread per GPU, non-blocking communicators.
 *
 *   1. an exchange of device buffers in both directions (sizes 0, 4 bytes,
 *      1 MiB) delivers exactly the bytes sent;
 *   2. a silent peer (rank 1 posts nothing) gives MOE_ERR_TIMEOUT on rank 0
 *      within deadline + 1 s, the communicator is aborted, and every later
 *      exchange on it returns the same code at once.
 *
 * Needs two GPUs: `make nccl-tests && build/tests/nccl/nccl-exchange`. Not
 * part of the CPU CI (no GPU there); prints "N passed, M failed".
 */
#include "../../src/ep/ep.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { DEADLINE_MS = 2000 };

typedef struct worker {
    int          rank;
    ncclUniqueId id;
    int          pass, fail;
    char         why[512];
} worker;

static pthread_barrier_t g_barrier;

#define EXPECT(w, cond, ...)                                                   \
    do {                                                                       \
        if (cond) (w)->pass++;                                                 \
        else {                                                                 \
            (w)->fail++;                                                       \
            snprintf((w)->why, sizeof (w)->why, __VA_ARGS__);                  \
            fprintf(stderr, "rank %d: %s\n", (w)->rank, (w)->why);             \
        }                                                                      \
    } while (0)

static void *run(void *arg) {
    worker *w = arg;
    cudaSetDevice(w->rank);
    cudaStream_t stream;
    cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclComm_t nc;
    ncclResult_t r = ncclCommInitRankConfig(&nc, 2, w->id, w->rank, &cfg);
    while (r == ncclInProgress || r == ncclSuccess) {
        ncclResult_t ar;
        ncclCommGetAsyncError(nc, &ar);
        if (ar != ncclInProgress) { r = ar; break; }
    }
    EXPECT(w, r == ncclSuccess, "ncclCommInitRankConfig: %s", ncclGetErrorString(r));
    if (r != ncclSuccess) return NULL;
    moe_comm *c = NULL;
    char err[256];
    moe_comm_options co = { .deadline_ms = DEADLINE_MS };
    moe_status st = moe_comm_create_nccl(nc, stream, &co, &c, err, sizeof err);
    EXPECT(w, st == MOE_OK && moe_comm_size(c) == 2 && moe_comm_rank(c) == w->rank,
           "create: %s", err);
    if (st) return NULL;

    /* 1. Exchanges of several sizes. */
    const size_t sizes[3] = { 0, 4, 1 << 20 };
    unsigned char *host = malloc(1 << 20), *dsend, *drecv;
    cudaMalloc((void **)&dsend, 1 << 20);
    cudaMalloc((void **)&drecv, 1 << 20);
    const int peer = 1 - w->rank;
    for (int i = 0; i < 3; i++) {
        for (size_t b = 0; b < sizes[i]; b++) host[b] = (unsigned char)(b * 7 + w->rank * 13 + i);
        cudaMemcpy(dsend, host, sizes[i], cudaMemcpyHostToDevice);
        cudaMemset(drecv, 0xee, 1 << 20);
        moe__msg s = { peer, 0, dsend, sizes[i] }, rv = { peer, 0, drecv, sizes[i] };
        st = moe__comm_exchange(c, MOE__PHASE_DISPATCH, &s, 1, &rv, 1);
        EXPECT(w, st == MOE_OK, "exchange of %zu bytes: %s", sizes[i], moe_comm_last_error(c));
        cudaMemcpy(host, drecv, sizes[i], cudaMemcpyDeviceToHost);
        size_t bad = 0;
        for (size_t b = 0; b < sizes[i]; b++)
            bad += host[b] != (unsigned char)(b * 7 + peer * 13 + i);
        EXPECT(w, bad == 0, "%zu of %zu bytes wrong", bad, sizes[i]);
    }

    /* 2. A silent peer. */
    pthread_barrier_wait(&g_barrier);
    if (w->rank == 0) {
        moe__msg rv = { 1, 0, drecv, 64 };
        double t0 = moe__now_s();
        st = moe__comm_exchange(c, MOE__PHASE_DISPATCH, NULL, 0, &rv, 1);
        double dt = moe__now_s() - t0;
        EXPECT(w, st == MOE_ERR_TIMEOUT, "silent peer: %s (%s)", moe_status_name(st),
               moe_comm_last_error(c));
        EXPECT(w, dt < DEADLINE_MS * 1e-3 + 1, "timeout after %.2f s", dt);
        EXPECT(w, moe__comm_exchange(c, MOE__PHASE_DISPATCH, NULL, 0, &rv, 1) == st,
               "a broken communicator must repeat its error");
    }
    pthread_barrier_wait(&g_barrier);
    moe_comm_destroy(c);
    if (w->rank == 1) ncclCommAbort(nc);   /* rank 0's was aborted by the timeout */
    cudaFree(dsend), cudaFree(drecv), free(host);
    cudaStreamDestroy(stream);
    return NULL;
}

int main(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 2) {
        printf("skipped: needs 2 GPUs (found %d)\n0 passed, 0 failed, 1 skipped\n", n);
        return 0;
    }
    worker w[2];
    memset(w, 0, sizeof w);
    ncclGetUniqueId(&w[0].id);
    w[1].id = w[0].id;
    pthread_barrier_init(&g_barrier, NULL, 2);
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        w[i].rank = i;
        pthread_create(&th[i], NULL, run, &w[i]);
    }
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    int pass = w[0].pass + w[1].pass, fail = w[0].fail + w[1].fail;
    printf("%d passed, %d failed\n", pass, fail);
    return fail ? 1 : 0;
}
