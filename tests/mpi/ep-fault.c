/*
 * ep-fault.c - one trial of a fault in expert-parallel forwards.
 *
 *   ep-fault POINT DEADLINE_MS VICTIM KILL_STEP [STEPS]
 *
 * POINT: before (SIGKILL before calling the forward), mid-dispatch,
 * after-dispatch, mid-combine (SIGKILL inside the library, through its fault
 * hook, after half of that phase's messages), silent (the victim stops
 * answering: sleeps 1.5 deadlines, then exits), slow (the victim sleeps half
 * the deadline before every 10th forward: no one may fail), none, and
 * malformed messages from the victim: bad-magic, big-count, bad-expert,
 * long-rows, bad-slot, bad-io (headers naming another io format; survivors
 * must answer MOE_ERR_PROTOCOL).
 *
 * Every surviving rank prints one line
 *   RESULT ok rank R MOE_ERR_... after S s
 *   RESULT FAIL rank R: why
 * A survivor passes when a forward at or after KILL_STEP returns
 * MOE_ERR_PEER_DEAD or MOE_ERR_TIMEOUT within deadline + 5 s of the start
 * of step KILL_STEP, and every forward that returned MOE_OK gave exactly the
 * reference output (a failed call never passes off partial data as success).
 * With slow and none, every rank must run all STEPS forwards correctly, with
 * a token count that varies per rank and step (0 to 8).
 * Run under `mpirun --enable-recovery` so the killed rank does not take the
 * job down; survivors leave with _exit (MPI_Finalize would wait for the dead).
 */
#include "mpi-test.h"

#include <signal.h>
#include <unistd.h>

extern int moe__ep_fault_point;   /* src/ep/ep.h: the library's fault hook */

/* A RESULT line: to stdout, and with EP_FAULT_DIR set also to the file
 * EP_FAULT_DIR/rank-R, so the harness does not depend on mpirun forwarding
 * the output of processes that leave with _exit. */
static void result(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void result(const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fputs(line, stdout);
    fflush(stdout);
    const char *dir = getenv("EP_FAULT_DIR");
    if (dir) {
        char path[4096];
        snprintf(path, sizeof path, "%s/rank-%d", dir, mt_rank);
        FILE *f = fopen(path, "a");
        if (f) {
            fputs(line, f);
            fclose(f);
        }
    }
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &mt_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &mt_size);
    if (argc < 5) {
        if (!mt_rank)
            fprintf(stderr, "usage: ep-fault POINT DEADLINE_MS VICTIM KILL_STEP [STEPS]\n");
        MPI_Finalize();
        return 2;
    }
    const char *point = argv[1];
    const int deadline_ms = atoi(argv[2]), victim = atoi(argv[3]) % mt_size;
    const int kill_step = atoi(argv[4]), steps = argc > 5 ? atoi(argv[5]) : kill_step + 3;
    const int slow = !strcmp(point, "slow"), none = !strcmp(point, "none");
    int hook = !strcmp(point, "mid-dispatch")     ? 1
               : !strcmp(point, "after-dispatch") ? 2
               : !strcmp(point, "mid-combine")    ? 3
               : !strcmp(point, "bad-magic")      ? 4
               : !strcmp(point, "big-count")      ? 5
               : !strcmp(point, "bad-expert")     ? 6
               : !strcmp(point, "long-rows")      ? 7
               : !strcmp(point, "bad-slot")       ? 8
               : !strcmp(point, "bad-io")         ? 9 : 0;
    const int malformed = hook >= 4;
    if (!hook && !slow && !none && strcmp(point, "before") && strcmp(point, "silent")) {
        if (!mt_rank) fprintf(stderr, "unknown point %s\n", point);
        MPI_Finalize();
        return 2;
    }

    /* A small layer: 8 experts, top 2, 8 tokens per rank. */
    enum { E = 8, K = 2, TR = 8 };
    const int64_t H = 32, I = 16, T = (int64_t)TR * mt_size;
    char err[256];
    mt_model m;
    mt_model_init(&m, 4242, E, K, H, I, 0, 0);
    mt_rng r = { 31 };
    float *x   = malloc(sizeof(float) * (size_t)(T * H));
    float *lg  = malloc(sizeof(float) * (size_t)(T * E));
    float *ref = malloc(sizeof(float) * (size_t)(T * H));
    float *out = malloc(sizeof(float) * (size_t)(TR * H));
    mt_fill(&r, x, (size_t)(T * H), 1.0f);
    mt_fill(&r, lg, (size_t)(T * E), 2.0f);
    moe_router_options ro = { .n_experts = E, .top_k = K, .renormalize = 1 };
    moe_context_options cxo = { .n_threads = 1 };
    moe_router *router;
    moe_context *ctx;
    moe_routed_experts *all, *mine;
    moe_layer *ref_layer, *layer;
    moe_expert_map *map;
    moe_comm *comm;
    int32_t which[E];
    for (int e = 0; e < E; e++) which[e] = e;
    MPI_Comm world = MPI_COMM_WORLD;
    moe_comm_options co = { .deadline_ms = deadline_ms };
    moe_expert_map_options mo = { .n_experts = E, .ep_size = mt_size, .ep_rank = mt_rank };
    if (moe_router_create(&ro, &router, err, sizeof err) ||
        moe_context_create(&cxo, &ctx, err, sizeof err) ||
        mt_experts(&m, which, E, 0, NULL, &all, err, sizeof err) ||
        moe_comm_create_mpi(&world, &co, &comm, err, sizeof err) ||
        moe_expert_map_create(&mo, &map, err, sizeof err)) {
        result("RESULT FAIL rank %d: setup: %s\n", mt_rank, err);
        fflush(stdout);
        _exit(1);
    }
    moe_layer_options lo = { .router = router, .experts = all, .context = ctx, .max_tokens = T };
    if (moe_layer_create(&lo, &ref_layer, err, sizeof err)) {
        result("RESULT FAIL rank %d: %s\n", mt_rank, err);
        _exit(1);
    }
    size_t ws_size = moe_layer_workspace_size(ref_layer, T);
    void *ws = aligned_alloc(64, (ws_size + 63) / 64 * 64);
    moe_layer_forward(ref_layer, T, x, lg, NULL, ref, ws, ws_size);
    free(ws);

    int32_t n_local = moe_expert_map_n_local(map);
    for (int32_t i = 0; i < n_local; i++) which[i] = moe_expert_map_to_global(map, i);
    moe_parallel par = { .mode = MOE_PARALLEL_EP, .comm = comm, .map = map };
    if (mt_experts(&m, which, n_local, E, moe_expert_map_table(map), &mine, err, sizeof err) ||
        (lo.experts = mine, lo.max_tokens = TR, lo.parallel = &par,
         moe_layer_create(&lo, &layer, err, sizeof err))) {
        result("RESULT FAIL rank %d: %s\n", mt_rank, err);
        _exit(1);
    }
    ws_size = moe_layer_workspace_size(layer, TR);
    ws = aligned_alloc(64, (ws_size + 63) / 64 * 64);
    MPI_Barrier(MPI_COMM_WORLD);

    const int faulty = !slow && !none;
    double t_kill = 0;
    char why[512];
    for (int step = 0; step < steps; step++) {
        /* Each step its own tokens: a rotation of the global batch. */
        int64_t t0 = ((int64_t)mt_rank * TR + step * 3) % (T - TR + 1);
        /* Fault-free runs also vary the token count, 0 included: every
         * (token, slot) must come back exactly once, every step. */
        int64_t nt = faulty ? TR : (int64_t)((step * 7 + mt_rank * 5) % (TR + 1));
        if (step == kill_step) t_kill = mt_now();
        if (mt_rank == victim && faulty && step == kill_step) {
            if (!strcmp(point, "before")) raise(SIGKILL);
            if (!strcmp(point, "silent")) {
                usleep((useconds_t)deadline_ms * 1500);
                _exit(0);
            }
            moe__ep_fault_point = hook;
        }
        if (mt_rank == victim && slow && step % 10 == 5) usleep((useconds_t)deadline_ms * 500);
        moe_status st =
            moe_layer_forward(layer, nt, x + t0 * H, lg + t0 * E, NULL, out, ws, ws_size);
        if (st == MOE_OK) {
            if (memcmp(out, ref + t0 * H, sizeof(float) * (size_t)(nt * H))) {
                result("RESULT FAIL rank %d: step %d returned MOE_OK with wrong data\n", mt_rank,
                       step);
                fflush(stdout);
                _exit(1);
            }
            continue;
        }
        double dt = mt_now() - (t_kill ? t_kill : mt_now());
        if (!faulty || step < kill_step)
            result("RESULT FAIL rank %d: false alarm at step %d: %s: %s\n", mt_rank, step,
                   moe_status_name(st), moe_layer_last_error(layer));
        else if (mt_rank == victim && malformed) {
            /* The sender of garbage: its own result does not matter. */
            result("RESULT sender rank %d %s\n", mt_rank, moe_status_name(st));
            fflush(stdout);
            _exit(0);
        }
        else if (malformed ? st != MOE_ERR_PROTOCOL
                           : st != MOE_ERR_PEER_DEAD && st != MOE_ERR_TIMEOUT)
            result("RESULT FAIL rank %d: %s (%s)\n", mt_rank, moe_status_name(st),
                   moe_layer_last_error(layer));
        else if (dt > deadline_ms * 1e-3 + 5)
            result("RESULT FAIL rank %d: %s after %.2f s, deadline %d ms + 5 s\n", mt_rank,
                   moe_status_name(st), dt, deadline_ms);
        else if (snprintf(why, sizeof why, "%s", moe_layer_last_error(layer)) < 0 ||
                 moe_layer_forward(layer, TR, x, lg, NULL, out, ws, ws_size) != st)
            result("RESULT FAIL rank %d: the next call does not repeat %s\n", mt_rank,
                   moe_status_name(st));
        else
            result("RESULT ok rank %d %s after %.3f s: %s\n", mt_rank, moe_status_name(st), dt,
                   why);
        fflush(stdout);
        _exit(0);
    }
    if (faulty) result("RESULT FAIL rank %d: no error in %d steps after the fault\n", mt_rank,
                       steps - kill_step);
    else result("RESULT ok rank %d: %d steps, no false alarm\n", mt_rank, steps);
    fflush(stdout);
    if (faulty) _exit(0);
    MPI_Barrier(MPI_COMM_WORLD);
    moe_layer_destroy(layer);
    moe_layer_destroy(ref_layer);
    moe_comm_destroy(comm);
    MPI_Finalize();
    return 0;
}
