/*
 * bandwidth.c - the machine's memory read bandwidth (moe_measure_read_bandwidth):
 * the ceiling that CPU benchmark figures are stated against. (moe_cpu_count,
 * the other machine probe, lives with the contexts in src/core/context.c.)
 *
 * The probe sums a buffer larger than the last-level cache with all requested
 * threads (a thread pool of its own), read-only, as the experts' decode path
 * reads weights. The buffer is written first so that every page is backed by
 * real memory (reading untouched pages would read the shared zero page), on
 * transparent huge pages where Linux gives them, as the experts' own copy
 * of their weights is (moe_advise_huge_pages): the ceiling is the best the
 * machine reads, not a 4 KiB-page figure the layer could beat.
 * Each pass is split into many chunks taken dynamically, so a late-starting
 * thread does not leave a whole slice to another; the result is the median
 * of the passes, in 1e9 bytes per second.
 *
 * moe_context_measure_read_bandwidth runs the same probe on a context's own
 * pool, over the caller's buffer if it lends one: the threads a forward
 * will run on, left polling as a forward leaves them. A benchmark that
 * probes before each forward then times the forward, not the wake-up of
 * threads that slept through the probe or through the unmapping of its
 * buffer (1.2 ms for 256 MiB on the CI VM, longer than the default
 * spin_us).
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#elif defined(__AVX2__)
#include <immintrin.h>
#endif

enum {
    PASSES      = 7,         /* measured passes, after one warm-up   */
    CHUNK_BYTES = 1 << 20,   /* work unit of the pass                */
};

typedef struct probe {
    const char *buf;
    size_t      bytes;       /* multiple of CHUNK_BYTES               */
    float      *sums;        /* (n_chunks) keeps the loads alive      */
    int         write;       /* 1: fill the buffer instead of reading */
} probe;

/* Sum of one chunk with several independent accumulators, so the loop is
 * bound by loads, not by add latency. */
static float sum_chunk(const char *p, size_t n) {
#if defined(__AVX512F__)
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 256) {
        a0 = _mm512_add_ps(a0, _mm512_load_ps((const float *)(p + i)));
        a1 = _mm512_add_ps(a1, _mm512_load_ps((const float *)(p + i + 64)));
        a2 = _mm512_add_ps(a2, _mm512_load_ps((const float *)(p + i + 128)));
        a3 = _mm512_add_ps(a3, _mm512_load_ps((const float *)(p + i + 192)));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#elif defined(__AVX2__)
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 128) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps((const float *)(p + i)));
        a1 = _mm256_add_ps(a1, _mm256_load_ps((const float *)(p + i + 32)));
        a2 = _mm256_add_ps(a2, _mm256_load_ps((const float *)(p + i + 64)));
        a3 = _mm256_add_ps(a3, _mm256_load_ps((const float *)(p + i + 96)));
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
#else
    const float *f  = (const float *)p;
    float        s[8] = { 0 };
    for (size_t i = 0; i < n / sizeof(float); i += 8)
        for (int l = 0; l < 8; l++) s[l] += f[i + l];
    return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
#endif
}

static void probe_task(void *arg, int64_t task, int thread) {
    (void)thread;
    probe *pr  = arg;
    char  *p   = (char *)pr->buf + (size_t)task * CHUNK_BYTES;
    if (pr->write) {
        float *f = (float *)p;
        for (size_t i = 0; i < CHUNK_BYTES / sizeof(float); i++) f[i] = 1.0f;
    } else {
        pr->sums[task] = sum_chunk(p, CHUNK_BYTES);
    }
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The probe on pool's threads over `bytes` of buf (64-byte aligned), or
 * of a buffer of its own when buf is NULL (bytes 0 = 1 GiB): written, read
 * once to warm up, then read PASSES times; the median pass. */
static moe_status probe_on_pool(moe__pool *pool, void *buf, size_t bytes, double *gbps) {
    if (!buf && bytes == 0) bytes = (size_t)1 << 30;
    bytes = bytes / CHUNK_BYTES * CHUNK_BYTES;
    if (bytes == 0) {
        if (buf) return MOE_ERR_INVALID_ARG; /* smaller than one chunk */
        bytes = CHUNK_BYTES;
    }
    const int64_t n_chunks = (int64_t)(bytes / CHUNK_BYTES);

    char *own = NULL;
    if (!buf && (own = moe__aligned_alloc(bytes)) != NULL)
        moe_advise_huge_pages(own, bytes); /* as the experts' weights get them */
    float     *sums = moe__calloc((size_t)n_chunks, sizeof *sums);
    moe_status st   = MOE_ERR_NOMEM;
    if ((!buf && !own) || !sums) goto done;

    probe pr = { .buf = buf ? buf : own, .bytes = bytes, .sums = sums, .write = 1 };
    moe__pool_run(pool, n_chunks, probe_task, &pr);
    pr.write = 0;
    moe__pool_run(pool, n_chunks, probe_task, &pr); /* warm-up */

    double t[PASSES];
    for (int i = 0; i < PASSES; i++) {
        double t0 = now_s();
        moe__pool_run(pool, n_chunks, probe_task, &pr);
        t[i] = now_s() - t0;
    }
    qsort(t, PASSES, sizeof *t, cmp_double);
    *gbps = (double)bytes / t[PASSES / 2] * 1e-9;
    st    = MOE_OK;
done:
    moe__free(sums);
    moe__aligned_free(own);
    return st;
}

moe_status moe_measure_read_bandwidth(int n_threads, size_t bytes, double *gbps) {
    if (!gbps || n_threads < 0) return MOE_ERR_INVALID_ARG;
    if (n_threads == 0) n_threads = moe_cpu_count();
    moe__pool *pool = NULL;
    moe_status st   = moe__pool_create(n_threads, 0, &pool);
    if (st == MOE_OK) st = probe_on_pool(pool, NULL, bytes, gbps);
    moe__pool_destroy(pool);
    return st;
}

moe_status moe_context_measure_read_bandwidth(moe_context *ctx, void *buf, size_t bytes,
                                              double *gbps) {
    if (!ctx || !gbps || ((uintptr_t)buf & 63)) return MOE_ERR_INVALID_ARG;
    return probe_on_pool(ctx->pool, buf, bytes, gbps);
}
