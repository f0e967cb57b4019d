/*
 * cmd-ep.c - the parallel-experts commands:
 *
 *   moe eplb      simulate EPLB on a routing trace (or a synthetic skewed
 *                 one): per-rank load and balancedness before and after the
 *                 rebalance, and the experts and bytes a migration moves
 *   moe bench --ep N   (command bench-ep) time an expert-parallel layer on N
 *                 CPU ranks over MPI: per step, dispatch, experts and combine
 *                 time and bytes sent per rank. Started outside mpirun, it
 *                 starts itself under `mpirun -np N`.
 */
#include "cli.h"
#include "presets.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef MOE_HAVE_MPI
#include <mpi.h>
#endif

/* ===== moe eplb ===== */

static void eplb_usage(void) {
    fprintf(stderr,
        "usage: moe eplb [--trace FILE] [--experts E] [--ranks N] [--redundant R]\n"
        "                [--groups G] [--nodes M] [--tokens T] [--top-k K] [--skew S]\n"
        "                [--expert-bytes B] [--seed N]\n"
        "  --trace         text file of numbers, E per line: each line one step's (or one\n"
        "                  layer's) tokens per logical expert; lines are summed\n"
        "                  (default: a synthetic Zipf-skewed trace)\n"
        "  --experts       logical experts (default 128; with --trace, the numbers per line)\n"
        "  --ranks         EP ranks (default 8)\n"
        "  --redundant     extra physical slots for replicas (default = ranks)\n"
        "  --groups        expert groups (default 1); --nodes nodes (default 1)\n"
        "  --tokens        synthetic tokens (default 4096); --top-k (default 8)\n"
        "  --skew          Zipf exponent of the synthetic trace (default 1.0)\n"
        "  --expert-bytes  bytes of one expert's weights (default qwen3-30b-a3b bf16: 9437184)\n");
}

/* Reads the trace: every number in the file, E per line. Returns E or -1. */
static int read_trace(const char *path, double **load_out) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    double *load = NULL;
    int     E = -1, col = 0;
    char    line[1 << 16];
    while (fgets(line, sizeof line, f)) {
        char *p = line, *end;
        col = 0;
        for (;;) {
            double v = strtod(p, &end);
            if (end == p) break;
            p = end;
            if (!(v >= 0) || v > 1e15) { E = -1; goto out; }
            if (E < 0) {
                double *nl = realloc(load, sizeof *load * (size_t)(col + 1));
                if (!nl) { E = -1; goto out; }
                load = nl;
                load[col] = 0;
            } else if (col >= E) { E = -1; goto out; }
            load[col++] += v;
        }
        if (col == 0) continue;
        if (E < 0) E = col;
        else if (col != E) { E = -1; goto out; }
    }
out:
    fclose(f);
    if (E < 1) { free(load); return -1; }
    *load_out = load;
    return E;
}

static uint64_t mix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Synthetic: each token picks top_k distinct experts, expert of popularity
 * rank i with weight 1 / (i + 1)^skew, popularity ranks a random permutation. */
static void synth_trace(int E, long tokens, int top_k, double skew, uint64_t seed, double *load) {
    int    *perm = malloc(sizeof *perm * (size_t)E);
    double *w = malloc(sizeof *w * (size_t)E), total = 0;
    char   *used = malloc((size_t)E);
    for (int e = 0; e < E; e++) perm[e] = e, load[e] = 0;
    for (int e = E - 1; e > 0; e--) {
        int j = (int)(mix(&seed) % (uint64_t)(e + 1)), t = perm[e];
        perm[e] = perm[j], perm[j] = t;
    }
    for (int i = 0; i < E; i++) total += w[i] = 1.0 / pow(i + 1, skew);
    for (long t = 0; t < tokens; t++) {
        memset(used, 0, (size_t)E);
        double left = total;
        for (int k = 0; k < top_k && k < E; k++) {
            double u = (double)(mix(&seed) >> 11) / 9007199254740992.0 * left, acc = 0;
            int    i = 0;
            for (; i < E; i++) {
                if (used[i]) continue;
                acc += w[i];
                if (acc > u) break;
            }
            if (i == E) for (i = E - 1; used[i]; i--) {}
            used[i] = 1;
            left -= w[i];
            load[perm[i]] += 1;
        }
    }
    free(perm), free(w), free(used);
}

static void print_ranks(const char *what, const double *phys, int P, int R) {
    printf("%-7s", what);
    double max = 0, sum = 0;
    for (int r = 0; r < R; r++) {
        double x = 0;
        for (int s = r * (P / R); s < (r + 1) * (P / R); s++) x += phys[s];
        sum += x;
        if (x > max) max = x;
        if (R <= 16) printf(" %8.0f", x);
    }
    printf("   max %.0f  balancedness %.3f\n", max, moe_eplb_balancedness(phys, P, R));
}

CLI_COMMAND(eplb, "simulate expert-parallel load balancing on a routing trace") {
    if (cli_flag(argc, argv, "--help")) { eplb_usage(); return 0; }
    const char *trace = cli_opt(argc, argv, "--trace");
    const char *o;
    int    E   = (o = cli_opt(argc, argv, "--experts")) ? atoi(o) : 128;
    int    R   = (o = cli_opt(argc, argv, "--ranks")) ? atoi(o) : 8;
    int    red = (o = cli_opt(argc, argv, "--redundant")) ? atoi(o) : R;
    int    G   = (o = cli_opt(argc, argv, "--groups")) ? atoi(o) : 1;
    int    Nn  = (o = cli_opt(argc, argv, "--nodes")) ? atoi(o) : 1;
    long   T   = (o = cli_opt(argc, argv, "--tokens")) ? atol(o) : 4096;
    int    K   = (o = cli_opt(argc, argv, "--top-k")) ? atoi(o) : 8;
    double sk  = (o = cli_opt(argc, argv, "--skew")) ? atof(o) : 1.0;
    double xb  = (o = cli_opt(argc, argv, "--expert-bytes")) ? atof(o) : 9437184.0;
    uint64_t seed = (o = cli_opt(argc, argv, "--seed")) ? strtoull(o, NULL, 10) : 1;
    double *load = NULL;
    if (trace) {
        E = read_trace(trace, &load);
        if (E < 0) {
            fprintf(stderr, "moe eplb: %s: not a trace (E numbers >= 0 per line)\n", trace);
            return 1;
        }
    } else {
        if (E < 1 || T < 0 || K < 1 || K > E || !(sk >= 0)) { eplb_usage(); return 2; }
        load = malloc(sizeof *load * (size_t)E);
        synth_trace(E, T, K, sk, seed, load);
    }
    int P = E + red;
    if (R < 1 || red < 0 || P % R) {
        fprintf(stderr, "moe eplb: %d experts + %d redundant slots are not divisible by %d ranks\n",
                E, red, R);
        free(load);
        return 2;
    }
    char err[256];
    moe_expert_map *map = NULL;
    moe_expert_map_options mo = { .n_experts = E, .n_redundant = red, .ep_size = R };
    int32_t *old = malloc(sizeof *old * (size_t)P), *nw = malloc(sizeof *nw * (size_t)P);
    int32_t *cnt = malloc(sizeof *cnt * (size_t)E);
    double  *ph = malloc(sizeof *ph * (size_t)P);
    int rc = 1;
    if (moe_expert_map_create(&mo, &map, err, sizeof err)) {
        fprintf(stderr, "moe eplb: %s\n", err);
        goto done;
    }
    /* Before: the initial placement (slot s < E holds s, redundant slots s % E);
     * experts that stay on a rank keep their slot. */
    for (int s = 0; s < P; s++) old[s] = moe_expert_map_logical(map, s);
    if (moe_eplb_rebalance(load, 1, E, P, G, Nn, R, old, nw, cnt, err, sizeof err)) {
        fprintf(stderr, "moe eplb: %s\n", err);
        goto done;
    }
    double total = 0, hot = 0;
    for (int e = 0; e < E; e++) total += load[e], hot = load[e] > hot ? load[e] : hot;
    printf("EPLB: %d logical experts, %d physical slots on %d ranks (%d per rank), "
           "%d groups, %d nodes\n", E, P, R, P / R, G, Nn);
    printf("trace: %s, %.0f routed slots, hottest expert %.1f%% of them\n",
           trace ? trace : "synthetic", total, total > 0 ? 100 * hot / total : 0);
    printf("load per rank (routed slots):\n");
    moe_eplb_physical_load(load, E, old, P, ph);
    double b0 = moe_eplb_balancedness(ph, P, R);
    print_ranks("before", ph, P, R);
    moe_eplb_physical_load(load, E, nw, P, ph);
    double b1 = moe_eplb_balancedness(ph, P, R);
    print_ranks("after", ph, P, R);
    int64_t n_remote = 0, n_local = 0;
    moe_eplb_count_moves(old, nw, P, R, &n_remote, &n_local);
    int max_rep = 0;
    for (int e = 0; e < E; e++) max_rep = cnt[e] > max_rep ? cnt[e] : max_rep;
    printf("balancedness (mean/max) %.3f -> %.3f; most replicas of one expert: %d\n", b0, b1,
           max_rep);
    printf("migration: %lld experts cross ranks (%.1f MB), %lld copied within a rank\n",
           (long long)n_remote, n_remote * xb / 1e6, (long long)n_local);
    rc = 0;
done:
    moe_expert_map_destroy(map);
    free(old), free(nw), free(cnt), free(ph), free(load);
    return rc;
}

/* ===== moe bench --ep N ===== */

#ifdef MOE_HAVE_MPI

/* Uniform in [-1, 1). */
static float unit(uint64_t *seed) {
    return (float)((int64_t)(mix(seed) >> 40) - (1 << 23)) / (float)(1 << 23);
}

static uint16_t to_bf16(float f) {
    union { float f; uint32_t u; } v = { f };
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}

static void bench_ep_usage(void) {
    fprintf(stderr,
        "usage: moe bench --ep N [--preset NAME] [--tokens 256] [--runs 10] [--format bf16|f32]\n"
        "                 [--threads T] [--deadline-ms D]\n"
        "  N CPU ranks over MPI (started with mpirun -np N when not under mpirun);\n"
        "  each rank runs --tokens tokens per step (default 256) with threads T (default\n"
        "  cores / N); reports per step dispatch, experts and combine time (max over ranks)\n"
        "  and bytes sent per rank.\n");
}

/* Not under mpirun: start ourselves under it. */
static int relaunch(int n, int argc, char **argv) {
    char exe[4096];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0) { fprintf(stderr, "moe bench --ep: cannot find this program\n"); return 1; }
    exe[len] = '\0';
    char np[16];
    snprintf(np, sizeof np, "%d", n);
    char **args = calloc((size_t)argc + 12, sizeof *args);
    int k = 0;
    args[k++] = "mpirun";
    args[k++] = "--oversubscribe";
    if (geteuid() == 0) args[k++] = "--allow-run-as-root";
    args[k++] = "-np";
    args[k++] = np;
    args[k++] = exe;
    args[k++] = "bench-ep";
    for (int i = 1; i < argc; i++) args[k++] = argv[i];
    args[k] = NULL;
    fflush(stdout);
    execvp("mpirun", args);
    fprintf(stderr, "moe bench --ep: cannot run mpirun (install Open MPI: scripts/ep-deps.sh)\n");
    free(args);
    return 1;
}

CLI_COMMAND_NAMED(bench_ep, "bench-ep",
                  "time an expert-parallel layer on CPU ranks (moe bench --ep N)") {
    if (cli_flag(argc, argv, "--help")) { bench_ep_usage(); return 0; }
    const char *o;
    int n = (o = cli_opt(argc, argv, "--ep")) ? atoi(o) : 0;
    if (n < 1) { bench_ep_usage(); return 2; }
    if (!getenv("OMPI_COMM_WORLD_SIZE") && !getenv("PMI_SIZE")) return relaunch(n, argc, argv);

    MPI_Init(NULL, NULL);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    o = cli_opt(argc, argv, "--preset");
    const moe_preset *p = moe_preset_find(o ? o : "qwen3-30b-a3b");
    long   T    = (o = cli_opt(argc, argv, "--tokens")) ? atol(o) : 256;
    int    runs = (o = cli_opt(argc, argv, "--runs")) ? atoi(o) : 10;
    int    thr  = (o = cli_opt(argc, argv, "--threads")) ? atoi(o) : 0;
    int    dl   = (o = cli_opt(argc, argv, "--deadline-ms")) ? atoi(o) : 60000;
    moe_format f = MOE_FORMAT_BF16;
    if ((o = cli_opt(argc, argv, "--format")) && moe_format_from_name(o, &f)) f = MOE_FORMAT_COUNT;
    if (!p || T < 1 || runs < 1 || (f != MOE_FORMAT_BF16 && f != MOE_FORMAT_F32) || size != n) {
        if (!rank) bench_ep_usage();
        MPI_Finalize();
        return 2;
    }
    if (!thr) thr = moe_cpu_count() / size > 0 ? moe_cpu_count() / size : 1;
    char err[256];
    int rc = 1;
    MPI_Comm world = MPI_COMM_WORLD;
    moe_comm_options co = { .deadline_ms = dl };
    moe_comm *comm = NULL;
    moe_expert_map *map = NULL;
    moe_router *router = NULL;
    moe_routed_experts *ex = NULL;
    moe_context *ctx = NULL;
    moe_layer *layer = NULL;
    void *w13 = NULL, *w2 = NULL, *ws = NULL;
    float *x = NULL, *lg = NULL, *out = NULL;
    moe_expert_map_options mo = { .n_experts = p->n_experts, .ep_size = size, .ep_rank = rank };
    moe_router_options ro = { .n_experts = p->n_experts, .top_k = p->top_k, .scoring = p->scoring,
                              .renormalize = p->renormalize };
    moe_context_options cxo = { .n_threads = thr };
    if (moe_comm_create_mpi(&world, &co, &comm, err, sizeof err) ||
        moe_expert_map_create(&mo, &map, err, sizeof err) ||
        moe_router_create(&ro, &router, err, sizeof err) ||
        moe_context_create(&cxo, &ctx, err, sizeof err))
        goto fail;
    /* This rank's experts only, random weights of the preset's shape. */
    const int64_t H = p->d_model, I = p->d_ff, L = moe_expert_map_n_local(map);
    const int64_t rows13 = p->activation == MOE_ACT_RELU2 ? I : 2 * I;
    const size_t es = f == MOE_FORMAT_BF16 ? 2 : 4;
    const size_t n13 = (size_t)(L * rows13 * H), n2 = (size_t)(L * H * I);
    w13 = malloc(n13 * es), w2 = malloc(n2 * es);
    uint64_t seed = 1000 + (uint64_t)rank;
    for (size_t i = 0; i < n13 + n2; i++) {
        float v = 0.05f * unit(&seed);
        void *dst = i < n13 ? w13 : w2;
        size_t j = i < n13 ? i : i - n13;
        if (es == 2) ((uint16_t *)dst)[j] = to_bf16(v);
        else ((float *)dst)[j] = v;
    }
    moe_experts_options eo = { .n_experts = (int32_t)L, .d_model = H, .d_ff = I, .format = f,
                               .activation = p->activation, .w13 = { .data = w13 },
                               .w2 = { .data = w2 },
                               .n_experts_global = moe_expert_map_n_physical(map),
                               .expert_map = moe_expert_map_table(map) };
    if (moe_routed_experts_create(&eo, &ex, err, sizeof err)) goto fail;
    free(w13), free(w2);
    w13 = w2 = NULL;
    moe_parallel par = { .mode = MOE_PARALLEL_EP, .comm = comm, .map = map };
    moe_layer_options lo = { .router = router, .experts = ex, .context = ctx, .max_tokens = T,
                             .parallel = &par };
    if (moe_layer_create(&lo, &layer, err, sizeof err)) goto fail;
    size_t ws_size = moe_layer_workspace_size(layer, T);
    ws = aligned_alloc(64, (ws_size + 63) / 64 * 64);
    x = malloc(sizeof(float) * (size_t)(T * H));
    lg = malloc(sizeof(float) * (size_t)(T * p->n_experts));
    out = malloc(sizeof(float) * (size_t)(T * H));
    if (!ws || !x || !lg || !out) { snprintf(err, sizeof err, "out of memory"); goto fail; }
    for (int64_t i = 0; i < T * H; i++) x[i] = unit(&seed);

    double t_tot = 0, t_d = 0, t_c = 0;
    int64_t b_d = 0, b_c = 0;
    for (int it = 0; it <= runs; it++) {
        for (int64_t i = 0; i < T * p->n_experts; i++)
            lg[i] = unit(&seed);
        moe_comm_stats s0, s1;
        moe_comm_get_stats(comm, &s0);
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        if (moe_layer_forward(layer, T, x, lg, NULL, out, ws, ws_size)) {
            snprintf(err, sizeof err, "%s", moe_layer_last_error(layer));
            goto fail;
        }
        double dt = MPI_Wtime() - t0;
        moe_comm_get_stats(comm, &s1);
        if (it == 0) continue;   /* warm-up */
        t_tot += dt;
        t_d += s1.seconds_dispatch - s0.seconds_dispatch;
        t_c += s1.seconds_combine - s0.seconds_combine;
        b_d += s1.bytes_sent_dispatch - s0.bytes_sent_dispatch;
        b_c += s1.bytes_sent_combine - s0.bytes_sent_combine;
    }
    /* A rank's time in dispatch and combine includes waiting for slower
     * ranks (their routing, their experts): the rank with the smallest share
     * is the one everybody waited for, and its share is the transfer cost. */
    double share = (t_d + t_c) / t_tot;
    double mine[6] = { t_tot / runs, t_d / runs, t_c / runs, (double)b_d / runs,
                       (double)b_c / runs, share }, mx[6], mn[6];
    MPI_Reduce(mine, mx, 6, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    MPI_Reduce(mine, mn, 6, MPI_DOUBLE, MPI_MIN, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        double comm_s = mx[1] + mx[2];
        printf("moe bench --ep %d: %s %s, %ld tokens per rank, %d threads per rank, "
               "%d runs (mean; max over ranks)\n", size, p->name, moe_format_name(f), T, thr, runs);
        printf("  step %.0f us = dispatch %.0f us + experts and routing %.0f us + "
               "combine %.0f us\n",
               mx[0] * 1e6, mx[1] * 1e6, (mx[0] - comm_s) * 1e6, mx[2] * 1e6);
        printf("  dispatch + combine: %.1f%% of the layer on the last rank to arrive "
               "(transfer), %.1f%% at most (with waiting for slower ranks)\n",
               100 * mn[5], 100 * mx[5]);
        printf("  sent per rank per step: dispatch %.2f MB, combine %.2f MB\n", mx[3] / 1e6,
               mx[4] / 1e6);
    }
    rc = 0;
fail:
    if (rc) fprintf(stderr, "moe bench --ep (rank %d): %s\n", rank, err);
    free(ws), free(x), free(lg), free(out), free(w13), free(w2);
    moe_layer_destroy(layer);
    moe_routed_experts_destroy(ex);
    moe_context_destroy(ctx);
    moe_router_destroy(router);
    moe_expert_map_destroy(map);
    int broken = comm && moe_comm_status(comm);
    moe_comm_destroy(comm);
    if (rc && broken) MPI_Abort(MPI_COMM_WORLD, 1);
    MPI_Finalize();
    return rc;
}

#endif /* MOE_HAVE_MPI */
