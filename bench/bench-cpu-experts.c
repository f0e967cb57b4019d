/*
 * bench-cpu-experts.c - the `cpu` experts implementation alone (no routing,
 * no combine) on a model's expert shapes, in decode and prefill, against
 * the machine's measured read bandwidth.
 *
 *     make bench
 *     build/bench-cpu-experts [n_threads=2] [format=bf16] [tokens=1,8] [reps=30] [huge=0]
 *
 * Shapes: qwen3-30b-a3b (d_model 2048, d_ff 768, 128 experts, top_k 8).
 * Each repetition draws fresh routing (top_k distinct experts per token,
 * uniform), builds the contiguous dispatch as prepare does, evicts the caches
 * by reading a 1 GiB buffer, then times one run. Reported: median and best
 * microseconds, the touched expert bytes per run divided by the time
 * (GB/s = 1e9 bytes/s), that as a fraction of moe_measure_read_bandwidth with
 * the same threads, and GFLOP/s (2 flops per weight per row). huge=1 asks
 * for transparent huge pages on the weights (madvise), to see what 4 KiB
 * pages cost the decode stream in TLB misses.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

enum { H = 2048, I = 768, E = 128, K = 8 };

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Random small values in the storage type (their values do not matter for
 * timing, only that they are finite). */
static void fill(moe_format f, void *p, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i++) {
        float v = (float)((int)(rng_next(&seed) & 1023) - 512) / 4096.0f;
        if (f == MOE_FORMAT_F32) ((float *)p)[i] = v;
        else if (f == MOE_FORMAT_BF16) ((uint16_t *)p)[i] = moe__f32_to_bf16(v);
        else ((uint16_t *)p)[i] = moe__f32_to_f16(v);
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int         n_threads = argc > 1 ? atoi(argv[1]) : 2;
    const char *fmt_name  = argc > 2 ? argv[2] : "bf16";
    const char *tok_list  = argc > 3 ? argv[3] : "1,8";
    int         reps      = argc > 4 ? atoi(argv[4]) : 30;
    int         huge      = argc > 5 ? atoi(argv[5]) : 0;
    moe_format  f;
    if (moe_format_from_name(fmt_name, &f) || moe__plain_size(f) == 0) {
        fprintf(stderr, "format %s: use f32, bf16 or f16\n", fmt_name);
        return 1;
    }
    const size_t es = moe__plain_size(f);
    const size_t n13 = (size_t)E * 2 * I * H, n2 = (size_t)E * H * I;
    void *w13 = moe__aligned_alloc(n13 * es), *w2 = moe__aligned_alloc(n2 * es);
    const size_t flush_bytes = (size_t)1 << 30;
    float *flush = moe__aligned_alloc(flush_bytes);
    if (!w13 || !w2 || !flush) { fprintf(stderr, "out of memory\n"); return 1; }
    if (huge) {
        /* Whole huge pages inside each (64-byte aligned) block. */
        const size_t hp = (size_t)2 << 20;
        void        *blk[2] = { w13, w2 };
        size_t       len[2] = { n13 * es, n2 * es };
        for (int b = 0; b < 2; b++) {
            uintptr_t p0 = ((uintptr_t)blk[b] + hp - 1) / hp * hp;
            uintptr_t p1 = ((uintptr_t)blk[b] + len[b]) / hp * hp;
            if (p1 > p0 && madvise((void *)p0, p1 - p0, MADV_HUGEPAGE))
                fprintf(stderr, "madvise(MADV_HUGEPAGE) failed; 4 KiB pages\n");
        }
    }
    fill(f, w13, n13, 1);
    fill(f, w2, n2, 2);
    memset(flush, 1, flush_bytes);

    char err[256];
    moe_experts_options eo = { .n_experts = E, .d_model = H, .d_ff = I, .format = f,
                               .activation = MOE_ACT_SILU, .flags = MOE_EXPERTS_BORROW,
                               .w13 = { .data = w13 }, .w2 = { .data = w2 } };
    moe_routed_experts *ex;
    moe_context        *ctx;
    moe_context_options co = { .n_threads = n_threads };
    if (moe_routed_experts_create(&eo, &ex, err, sizeof err) ||
        moe_context_create(&co, &ctx, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    n_threads = moe_context_n_threads(ctx);

    double bw = 0;
    moe_measure_read_bandwidth(n_threads, 0, &bw);
    printf("qwen3-30b-a3b experts, %s, %d threads, %s pages, read bandwidth %.1f GB/s\n",
           fmt_name, n_threads, huge ? "huge" : "4 KiB", bw);
    printf("%6s %10s %10s %8s %7s %9s\n", "tokens", "median_us", "best_us", "GB/s", "of_bw",
           "GFLOP/s");

    const size_t expert_bytes = (size_t)3 * I * H * es;
    for (const char *p = tok_list; *p;) {
        int T = atoi(p);
        while (*p && *p != ',') p++;
        if (*p == ',') p++;
        if (T < 1) continue;
        float   *x     = malloc((size_t)T * H * sizeof(float));
        float   *y     = malloc((size_t)T * K * H * sizeof(float));
        int32_t *ids   = malloc((size_t)T * K * sizeof(int32_t));
        int32_t *start = malloc((E + 1) * sizeof(int32_t));
        int32_t *rows  = malloc((size_t)T * K * sizeof(int32_t));
        size_t   ws_size = moe__experts_cpu.workspace_size(ex, (int64_t)T * K, n_threads);
        void    *ws    = moe__aligned_alloc(ws_size);
        double  *us    = malloc((size_t)reps * sizeof(double));
        double   bytes_sum = 0, rows_sum = 0;
        uint64_t seed  = 42;
        for (size_t i = 0; i < (size_t)T * H; i++)
            x[i] = (float)((int)(rng_next(&seed) & 255) - 128) / 128.0f;
        for (int rep = -2; rep < reps; rep++) {
            /* Fresh routing: top_k distinct uniform experts per token. */
            for (int t = 0; t < T; t++)
                for (int j = 0; j < K; j++) {
                    int32_t e, dup;
                    do {
                        e   = (int32_t)(rng_next(&seed) % E);
                        dup = 0;
                        for (int q = 0; q < j; q++) dup |= ids[t * K + q] == e;
                    } while (dup);
                    ids[t * K + j] = e;
                }
            memset(start, 0, (E + 1) * sizeof(int32_t));
            for (int s = 0; s < T * K; s++) start[ids[s] + 1]++;
            int touched = 0;
            for (int e = 0; e < E; e++) { touched += start[e + 1] > 0; start[e + 1] += start[e]; }
            int n = 0;
            for (int e = 0; e < E; e++)
                for (int s = 0; s < T * K; s++)
                    if (ids[s] == e) rows[n++] = s;
            moe__dispatch d = { .n_tokens = T, .top_k = K, .d_model = H, .x = x, .topk_ids = ids,
                                .n_local = E, .expert_start = start, .row_slot = rows,
                                .n_rows = (int64_t)T * K, .y = y };
            moe__experts_job job = { ex, &d, NULL };
            moe__exec        xe  = { ctx, err, sizeof err };
            /* Evict: stream a buffer bigger than the last-level cache. */
            volatile float sink = 0;
            float          acc  = 0;
            for (size_t i = 0; i < flush_bytes / sizeof(float); i += 16) acc += flush[i];
            sink = acc;
            (void)sink;
            double t0 = now_s();
            if (moe__experts_cpu.run(&job, 1, &xe, ws, ws_size)) {
                fprintf(stderr, "run: %s\n", err);
                return 1;
            }
            double dt = now_s() - t0;
            if (rep >= 0) {
                us[rep] = dt * 1e6;
                bytes_sum += (double)touched * (double)expert_bytes;
                rows_sum += T * K;
            }
        }
        double bytes = bytes_sum / reps, flops = 2.0 * 3 * I * H * rows_sum / reps;
        qsort(us, (size_t)reps, sizeof *us, cmp_double);
        double med = us[reps / 2], best = us[0];
        printf("%6d %10.1f %10.1f %8.1f %6.0f%% %9.1f\n", T, med, best, bytes / med * 1e-3,
               100.0 * bytes / med * 1e-3 / bw, flops / med * 1e-3);
        free(x); free(y); free(ids); free(start); free(rows); free(us);
        moe__aligned_free(ws);
    }
    moe_context_destroy(ctx);
    moe_routed_experts_destroy(ex);
    moe__aligned_free(w13);
    moe__aligned_free(w2);
    moe__aligned_free(flush);
    return 0;
}
