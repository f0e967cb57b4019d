/*
 * bench-ep-nccl.c - expert parallelism over NCCL on the GPUs of one host:
 * one process per GPU (fork), the DeepSeek-V3 layer (d_model 7168, d_ff
 * 2048, 256 experts, top-8 of sigmoid scores in 8 groups, one shared expert)
 * with fp8-block weights split over the GPUs, 32 redundant slots for EPLB.
 *
 *     make bench && build/bench-ep-nccl [gpus=all] [reps=20] [deadline_ms=10000]
 *
 * Every rank, on its own tokens:
 *  1. bitwise: the EP output equals the output of the same GPU holding all
 *     256 experts, for 1, 64 and 4096 tokens per rank;
 *  2. for 1, 8, 64, 512 and 4096 tokens per rank: the forward's wall time
 *     (median), the device time of dispatch / experts / combine (CUDA events
 *     in the layer, mean), bytes this rank sent per forward and GB/s per
 *     link (bytes to one peer over the phase's device time); the shared
 *     expert run "before" and "in combine"; and the same forward on this GPU
 *     alone holding every expert (no transport), each timed on the host
 *     around a forward that ends synchronized;
 *  3. EPLB: routing skewed towards 16 hot experts; balancedness (mean/max
 *     rank load, counters summed over ranks with an NCCL all-reduce) and
 *     this rank's rows before and after the rebalance + migration, the
 *     migration's time and bytes, the output still bitwise;
 *  4. a killed rank (the last raises SIGKILL instead of its next forward):
 *     each survivor's status and seconds, against deadline + 5 s.
 * Output: lines "rank R ..." (rank 0 prints the table headers). Weights are
 * random fp8 codes with random block scales, the same on every rank (one
 * seed), so every rank can compute the single-GPU reference.
 * NCCL_NVLS_ENABLE=0 is set before NCCL starts.
 */
#include "moe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if !defined(MOE_HAVE_CUDA) || !defined(MOE_HAVE_NCCL)

int main(void) {
    fprintf(stderr, "bench-ep-nccl: libmoe was built without CUDA or NCCL\n");
    return 2;
}

#else

#include <cuda_runtime.h>
#include <nccl.h>

#include <signal.h>
#include <stdbool.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { H = 7168, I = 2048, E = 256, K = 8, REDUNDANT = 32, HOT = 16, MAX_T = 4096 };

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static float unit(uint64_t *s) { return (float)(next(s) >> 40) / (float)(1ull << 24); }

/* fp8 e4m3 codes with exponents 0..7 (|v| < 2), never NaN. */
static void fill_fp8(uint8_t *p, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i += 8) {
        uint64_t r = next(&seed) & 0xbfbfbfbfbfbfbfbfull;
        memcpy(p + i, &r, n - i < 8 ? n - i : 8);
    }
}

static void fill_scales(float *p, size_t n, float base, uint64_t seed) {
    for (size_t i = 0; i < n; i++) p[i] = base * (0.5f + unit(&seed));
}

#define CK(call)                                                                          \
    do {                                                                                  \
        moe_status s_ = (call);                                                           \
        if (s_) {                                                                         \
            printf("rank %d: %s: %s: %s\n", rank, #call, moe_status_name(s_), err);       \
            return 1;                                                                     \
        }                                                                                 \
    } while (0)

typedef struct bufs {
    void  *x, *lg, *out, *ws;
    size_t ws_bytes;
} bufs;

/* One forward of T tokens on device buffers; returns its status. */
static moe_status forward(moe_layer *l, const moe_shared_experts *sh, cudaStream_t st,
                          const bufs *b, int64_t T) {
    moe_status s = moe_layer_forward(l, T, b->x, b->lg, sh, b->out, b->ws, b->ws_bytes);
    if (!s && cudaStreamSynchronize(st) != cudaSuccess) s = MOE_ERR_CUDA;
    return s;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Logits (T, E) of this rank's tokens; skew > 0 adds it to the HOT first experts. */
static void make_logits(float *lg, int64_t T, int rank, float skew) {
    uint64_t s = 0x9e3779b97f4a7c15ull ^ ((uint64_t)rank << 32) ^ (uint64_t)T;
    for (int64_t i = 0; i < T * E; i++) lg[i] = 2.0f * unit(&s) - 1.0f + (i % E < HOT ? skew : 0);
}

/* phys (n) = the sum over ranks of every rank's load counters. */
static int sum_load(ncclComm_t nc, cudaStream_t st, const int32_t *load, int32_t n,
                    double *phys) {
    int32_t *d = NULL, *h = malloc((size_t)n * 4);
    int ok = cudaMalloc((void **)&d, (size_t)n * 4) == cudaSuccess;
    ok = ok && cudaMemcpy(d, load, (size_t)n * 4, cudaMemcpyHostToDevice) == cudaSuccess;
    ncclResult_t r = ok ? ncclAllReduce(d, d, (size_t)n, ncclInt32, ncclSum, nc, st)
                        : ncclInternalError;
    while (r == ncclInProgress) ncclCommGetAsyncError(nc, &r);
    ok = r == ncclSuccess && cudaStreamSynchronize(st) == cudaSuccess &&
         cudaMemcpy(h, d, (size_t)n * 4, cudaMemcpyDeviceToHost) == cudaSuccess;
    for (int32_t i = 0; ok && i < n; i++) phys[i] = h[i];
    cudaFree(d);
    free(h);
    return ok ? 0 : 1;
}

static int run_rank(int rank, int P, ncclUniqueId id, int reps, int deadline_ms) {
    char err[512] = "";
    cudaSetDevice(rank);
    cudaStream_t st;
    cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
    ncclComm_t nc;
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclResult_t nr = ncclCommInitRankConfig(&nc, P, id, rank, &cfg);
    while (nr == ncclInProgress) ncclCommGetAsyncError(nc, &nr);
    if (nr != ncclSuccess) {
        printf("rank %d: NCCL init: %s\n", rank, ncclGetErrorString(nr));
        return 1;
    }

    /* The same weights on every rank: all 256 experts + the shared one. */
    const size_t d13 = (size_t)2 * I * H, d2 = (size_t)H * I;
    const size_t s13 = (size_t)(2 * I / 128) * (H / 128), s2 = (size_t)(H / 128) * (I / 128);
    uint8_t *w13 = malloc(E * d13), *w2 = malloc(E * d2), *sw13 = malloc(d13), *sw2 = malloc(d2);
    float *sc13 = malloc(E * s13 * 4), *sc2 = malloc(E * s2 * 4);
    float *ssc13 = malloc(s13 * 4), *ssc2 = malloc(s2 * 4), *bias = malloc(E * 4);
    double t0 = now_s();
    fill_fp8(w13, E * d13, 1);
    fill_fp8(w2, E * d2, 2);
    fill_fp8(sw13, d13, 3);
    fill_fp8(sw2, d2, 4);
    fill_scales(sc13, E * s13, 2e-3f, 5);
    fill_scales(sc2, E * s2, 4e-3f, 6);
    fill_scales(ssc13, s13, 2e-3f, 7);
    fill_scales(ssc2, s2, 4e-3f, 8);
    fill_scales(bias, E, 0.1f, 9);
    if (!rank) printf("weights generated in %.1f s\n", now_s() - t0);

    moe_router *router;
    moe_routed_experts *full, *mine;
    moe_shared_experts *shared;
    moe_expert_map *map;
    moe_context *ctx;
    moe_comm *comm;
    moe_router_options ro = { .n_experts = E, .top_k = K, .scoring = MOE_SCORING_SIGMOID,
                              .renormalize = 1, .n_group = 8, .topk_group = 4,
                              .correction_bias = bias, .routed_scaling_factor = 2.5f };
    moe_experts_options eo = { .n_experts = E, .d_model = H, .d_ff = I,
                               .format = MOE_FORMAT_FP8_BLOCK, .flags = MOE_EXPERTS_BORROW,
                               .w13 = { .data = w13, .scales = sc13 },
                               .w2 = { .data = w2, .scales = sc2 } };
    moe_shared_options so = { .mlp = { .n_experts = 1, .d_model = H, .d_ff = I,
                                       .format = MOE_FORMAT_FP8_BLOCK,
                                       .w13 = { .data = sw13, .scales = ssc13 },
                                       .w2 = { .data = sw2, .scales = ssc2 } } };
    moe_expert_map_options mo = { .n_experts = E, .n_redundant = REDUNDANT, .ep_size = P,
                                  .ep_rank = rank };
    moe_context_options cxo = { .cuda_device = rank, .cuda_stream = st };
    moe_comm_options cmo = { .deadline_ms = deadline_ms };
    CK(moe_router_create(&ro, &router, err, sizeof err));
    CK(moe_routed_experts_create(&eo, &full, err, sizeof err));
    CK(moe_shared_experts_create(&so, &shared, err, sizeof err));
    CK(moe_expert_map_create(&mo, &map, err, sizeof err));
    CK(moe_context_create(&cxo, &ctx, err, sizeof err));
    CK(moe_comm_create_nccl(nc, st, &cmo, &comm, err, sizeof err));

    /* This rank's slots: linear placement, slot s holds logical s mod E. */
    const int32_t nl = moe_expert_map_n_local(map);
    uint8_t *m13 = malloc((size_t)nl * d13), *m2 = malloc((size_t)nl * d2);
    float *mc13 = malloc((size_t)nl * s13 * 4), *mc2 = malloc((size_t)nl * s2 * 4);
    for (int32_t i = 0; i < nl; i++) {
        const int32_t lg = moe_expert_map_logical(map, moe_expert_map_to_global(map, i));
        memcpy(m13 + i * d13, w13 + lg * d13, d13);
        memcpy(m2 + i * d2, w2 + lg * d2, d2);
        memcpy(mc13 + i * s13, sc13 + lg * s13, s13 * 4);
        memcpy(mc2 + i * s2, sc2 + lg * s2, s2 * 4);
    }
    moe_experts_options mine_o = eo;
    mine_o.flags = 0;   /* owned: the migration rewrites them */
    mine_o.n_experts = nl;
    mine_o.n_experts_global = moe_expert_map_n_physical(map);
    mine_o.expert_map = moe_expert_map_table(map);
    mine_o.w13 = (moe_weights){ .data = m13, .scales = mc13 };
    mine_o.w2 = (moe_weights){ .data = m2, .scales = mc2 };
    CK(moe_routed_experts_create(&mine_o, &mine, err, sizeof err));
    free(m13), free(m2), free(mc13), free(mc2);

    int32_t *load = calloc((size_t)moe_expert_map_n_physical(map), sizeof(int32_t));
    moe_parallel par = { .mode = MOE_PARALLEL_EP, .comm = comm, .map = map, .load = load };
    moe_layer_options lo = { .router = router, .experts = full, .context = ctx,
                             .backend = MOE_BACKEND_CUDA, .max_tokens = MAX_T, .shared = shared,
                             .shared_order = MOE_SHARED_BEFORE, .io_format = MOE_FORMAT_BF16 };
    moe_layer *one, *ep, *ep_ic;
    CK(moe_layer_create(&lo, &one, err, sizeof err));
    lo.experts = mine;
    lo.parallel = &par;
    CK(moe_layer_create(&lo, &ep, err, sizeof err));
    lo.shared_order = MOE_SHARED_IN_COMBINE;
    CK(moe_layer_create(&lo, &ep_ic, err, sizeof err));

    bufs b = { 0 };
    b.ws_bytes = moe_layer_workspace_size(ep, MAX_T);
    size_t w1 = moe_layer_workspace_size(one, MAX_T);
    if (w1 > b.ws_bytes) b.ws_bytes = w1;
    float *lg = malloc((size_t)MAX_T * E * 4);
    uint16_t *xh = malloc((size_t)MAX_T * H * 2), *o1 = malloc((size_t)MAX_T * H * 2),
             *o2 = malloc((size_t)MAX_T * H * 2);
    uint64_t xs = 77 + (uint64_t)rank;
    for (size_t i = 0; i < (size_t)MAX_T * H; i++) {
        float v = 2.0f * unit(&xs) - 1.0f;
        uint32_t u;
        memcpy(&u, &v, 4);
        xh[i] = (uint16_t)(u >> 16);
    }
    if (cudaMalloc(&b.x, (size_t)MAX_T * H * 2) || cudaMalloc(&b.lg, (size_t)MAX_T * E * 4) ||
        cudaMalloc(&b.out, (size_t)MAX_T * H * 2) || cudaMalloc(&b.ws, b.ws_bytes)) {
        printf("rank %d: cudaMalloc failed\n", rank);
        return 1;
    }
    cudaMemcpy(b.x, xh, (size_t)MAX_T * H * 2, cudaMemcpyHostToDevice);

    /* 1. bitwise against one GPU holding every expert */
    const int64_t check_t[3] = { 1, 64, 4096 };
    int bad_total = 0;
    for (int i = 0; i < 3; i++) {
        const int64_t T = check_t[i];
        make_logits(lg, T, rank, 0);
        cudaMemcpy(b.lg, lg, (size_t)T * E * 4, cudaMemcpyHostToDevice);
        CK(forward(one, shared, st, &b, T));
        cudaMemcpy(o1, b.out, (size_t)T * H * 2, cudaMemcpyDeviceToHost);
        moe_status s = forward(ep, shared, st, &b, T);
        if (s) snprintf(err, sizeof err, "%s", moe_layer_last_error(ep));
        CK(s);
        cudaMemcpy(o2, b.out, (size_t)T * H * 2, cudaMemcpyDeviceToHost);
        size_t bad = 0;
        for (size_t j = 0; j < (size_t)T * H; j++) bad += o1[j] != o2[j];
        bad_total += bad != 0;
        printf("rank %d bitwise T=%lld: %zu of %lld values differ from one GPU\n", rank,
               (long long)T, bad, (long long)T * H);
    }

    /* 2. timing */
    if (!rank)
        printf("rank | tokens/rank | order | forward us (median) | dispatch us | experts us | "
               "combine us | bytes sent/fwd | GB/s per link (dispatch, combine)\n");
    const int64_t time_t[5] = { 1, 8, 64, 512, 4096 };
    double *wall = malloc((size_t)reps * sizeof(double));
    for (int i = 0; i < 5; i++)
        for (int o = 0; o < 2; o++) {
            const int64_t T = time_t[i];
            moe_layer *l = o ? ep_ic : ep;
            make_logits(lg, T, rank, 0);
            cudaMemcpy(b.lg, lg, (size_t)T * E * 4, cudaMemcpyHostToDevice);
            for (int w = 0; w < 3; w++) CK(forward(l, shared, st, &b, T));
            moe_comm_stats a, z;
            moe_comm_get_stats(comm, &a);
            for (int r = 0; r < reps; r++) {
                double t = now_s();
                CK(forward(l, shared, st, &b, T));
                wall[r] = now_s() - t;
            }
            moe_comm_get_stats(comm, &z);
            qsort(wall, (size_t)reps, sizeof(double), cmp_double);
            const double dd = (z.device_dispatch_s - a.device_dispatch_s) / reps;
            const double de = (z.device_experts_s - a.device_experts_s) / reps;
            const double dc = (z.device_combine_s - a.device_combine_s) / reps;
            const double bd = (double)(z.bytes_sent_dispatch - a.bytes_sent_dispatch) / reps;
            const double bc = (double)(z.bytes_sent_combine - a.bytes_sent_combine) / reps;
            const int links = P > 1 ? P - 1 : 1;
            printf("rank %d | %lld | %s | %.1f | %.1f | %.1f | %.1f | %.0f | %.1f, %.1f\n", rank,
                   (long long)T, o ? "in-combine" : "before", wall[reps / 2] * 1e6, dd * 1e6,
                   de * 1e6, dc * 1e6, bd + bc, P > 1 ? bd / links / dd / 1e9 : 0.0,
                   P > 1 ? bc / links / dc / 1e9 : 0.0);
            if (o) continue;
            /* the same tokens on this GPU alone, every expert, no transport */
            for (int r = 0; r < reps; r++) {
                double t = now_s();
                CK(forward(one, shared, st, &b, T));
                wall[r] = now_s() - t;
            }
            qsort(wall, (size_t)reps, sizeof(double), cmp_double);
            printf("rank %d | %lld | one GPU, all experts | %.1f | | | | | \n", rank,
                   (long long)T, wall[reps / 2] * 1e6);
        }

    /* 3. EPLB on a skewed load */
    const int32_t Pp = moe_expert_map_n_physical(map);
    const int64_t T = 512;
    make_logits(lg, T, rank, 3.0f);
    cudaMemcpy(b.lg, lg, (size_t)T * E * 4, cudaMemcpyHostToDevice);
    CK(forward(one, shared, st, &b, T));
    cudaMemcpy(o1, b.out, (size_t)T * H * 2, cudaMemcpyDeviceToHost);
    memset(load, 0, (size_t)Pp * 4);
    CK(forward(ep, shared, st, &b, T));
    double *phys = calloc((size_t)Pp, sizeof(double)), *logical = calloc(E, sizeof(double));
    if (sum_load(nc, st, load, Pp, phys)) return 1;
    for (int32_t s = 0; s < Pp; s++) logical[moe_expert_map_logical(map, s)] += phys[s];
    const double bal0 = moe_eplb_balancedness(phys, Pp, P);
    int32_t *p2l = malloc((size_t)Pp * 4), *old = malloc((size_t)Pp * 4);
    for (int32_t s = 0; s < Pp; s++) old[s] = moe_expert_map_logical(map, s);
    CK(moe_eplb_rebalance(logical, 1, E, Pp, 8, 1, P, old, p2l, NULL, err, sizeof err));
    int64_t sent = 0;
    double tm = now_s();
    CK(moe_eplb_migrate(comm, mine, map, p2l, &sent, err, sizeof err));
    tm = now_s() - tm;
    memset(load, 0, (size_t)Pp * 4);
    CK(forward(ep, shared, st, &b, T));
    cudaMemcpy(o2, b.out, (size_t)T * H * 2, cudaMemcpyDeviceToHost);
    double *phys1 = calloc((size_t)Pp, sizeof(double));
    if (sum_load(nc, st, load, Pp, phys1)) return 1;
    size_t bad = 0;
    for (size_t j = 0; j < (size_t)T * H; j++) bad += o1[j] != o2[j];
    bad_total += bad != 0;
    double here0 = 0, here1 = 0;
    for (int32_t s = 0; s < Pp; s++)
        if (moe_expert_map_owner(map, s) == rank) here0 += phys[s], here1 += phys1[s];
    printf("rank %d eplb: balancedness %.3f before, %.3f after; rows on this rank %.0f -> %.0f "
           "of %lld; migration %.1f ms, %lld bytes sent; after it %zu values differ from one "
           "GPU\n", rank, bal0, moe_eplb_balancedness(phys1, Pp, P), here0, here1,
           (long long)(T * K * P), tm * 1e3, (long long)sent, bad);

    /* 4. a killed rank */
    if (P > 1) {
        if (rank == P - 1) raise(SIGKILL);
        double tk = now_s();
        moe_status s = forward(ep, shared, st, &b, 64);
        tk = now_s() - tk;
        printf("rank %d killed peer: %s after %.2f s (deadline %.1f s + 5 s): %s\n", rank,
               moe_status_name(s), tk, deadline_ms * 1e-3,
               s && tk < deadline_ms * 1e-3 + 5 ? "ok" : "FAIL");
        bad_total += !s || tk >= deadline_ms * 1e-3 + 5;
        _exit(bad_total ? 1 : 0);   /* the communicator is aborted: skip the teardown */
    }
    moe_layer_destroy(ep_ic);
    moe_layer_destroy(ep);
    moe_layer_destroy(one);
    moe_comm_destroy(comm);
    ncclCommDestroy(nc);
    return bad_total ? 1 : 0;
}

int main(int argc, char **argv) {
    setenv("NCCL_NVLS_ENABLE", "0", 1);
    int P = argc > 1 ? atoi(argv[1]) : 0, reps = argc > 2 ? atoi(argv[2]) : 20;
    int deadline_ms = argc > 3 ? atoi(argv[3]) : 10000;
    if (P <= 0) {
        /* count the GPUs in a child: the parent must not start CUDA before fork */
        int fd[2];
        if (pipe(fd)) return 1;
        pid_t c = fork();
        if (c == 0) {
            int n = 0;
            cudaGetDeviceCount(&n);
            if (write(fd[1], &n, sizeof n) != sizeof n) _exit(1);
            _exit(0);
        }
        if (read(fd[0], &P, sizeof P) != sizeof P) P = 0;
        waitpid(c, NULL, 0);
    }
    if (P < 1 || reps < 1) {
        fprintf(stderr, "usage: bench-ep-nccl [gpus=all] [reps=20] [deadline_ms=10000]\n");
        return 2;
    }
    ncclUniqueId id;
    if (ncclGetUniqueId(&id) != ncclSuccess) return 1;
    printf("bench-ep-nccl: %d GPU(s), deepseek-v3 fp8-block, %d reps\n", P, reps);
    fflush(stdout);
    pid_t pid[64];
    for (int r = 0; r < P && r < 64; r++) {
        pid[r] = fork();
        if (pid[r] == 0) {
            int rc = run_rank(r, P, id, reps, deadline_ms);
            fflush(stdout);
            _exit(rc);
        }
    }
    int failed = 0;
    for (int r = 0; r < P && r < 64; r++) {
        int ws = 0;
        waitpid(pid[r], &ws, 0);
        const bool killed = P > 1 && r == P - 1 && WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL;
        if (!killed && !(WIFEXITED(ws) && WEXITSTATUS(ws) == 0)) failed++;
    }
    printf("bench-ep-nccl: %s\n", failed ? "FAILED" : "all checks passed");
    return failed ? 1 : 0;
}

#endif
