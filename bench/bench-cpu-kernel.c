/*
 * bench-cpu-kernel.c - one CPU format kernel alone, on one core, streaming an
 * expert matrix from memory as decode does, beside a plain read of the same
 * bytes: how close a kernel's decode comes to what the core can read.
 *
 *     make bench
 *     build/bench-cpu-kernel format rows cols [n_x=1] [reps=200]
 *     e.g. build/bench-cpu-kernel fp8-block 1536 2048     (qwen3 W13)
 *          build/bench-cpu-kernel fp8-block 2048 768      (qwen3 W2)
 *
 * The matrix is quantized once (quantize_ref of random values, or converted
 * for a plain type) and copied
 * until the copies fill 512 MiB; each call runs the kernel over the next
 * copy, so every byte comes from memory, as an expert's weights do at decode
 * (the last-level cache holds no expert from the previous token). Reported,
 * as medians over reps calls: microseconds, GB/s of weight and scale bytes,
 * and the same for a plain AVX-512 (or scalar) sum over the same bytes of the
 * next copy (MOE_HOT=1: one copy, read from cache). MOE_STREAMS, MOE_PF_FAR (both far
 * distances: pf_far and pf_far_packed) and MOE_PF_NEAR override the CPU stream
 * plan (cpu-formats.h) for experiments; they are not read by the library.
 * GPTQ act-order: MOE_ACT_ORDER=perm gives the matrix a g_idx as quantizers
 * make it (a random permutation of K cut into groups: the grouped kernels
 * in k_order), MOE_ACT_ORDER=uneven one of random groups (the act-order
 * kernels).
 */
#include "internal.h"
#include "../src/cpu/cpu-formats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* Microseconds from a to b. */
static double us_between(struct timespec a, struct timespec b) {
    return 1e6 * (double)(b.tv_sec - a.tv_sec) + 1e-3 * (double)(b.tv_nsec - a.tv_nsec);
}

/* The median of v[0..n), sorted in place (insertion sort: n is a few hundred). */
static double median_of(double *v, int n) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
            const double t = v[j];
            v[j] = v[j - 1], v[j - 1] = t;
        }
    return v[n / 2];
}

/* The ceiling the kernel is held to: every byte read once, in order. */
static float plain_read(const void *p, size_t n) {
    const char *c = p;
#if defined(__AVX512F__)
    __m512i a = _mm512_setzero_si512(), b = _mm512_setzero_si512();
    size_t  i = 0;
    for (; i + 128 <= n; i += 128) {
        a = _mm512_add_epi32(a, _mm512_loadu_si512(c + i));
        b = _mm512_add_epi32(b, _mm512_loadu_si512(c + i + 64));
    }
    return (float)_mm512_reduce_add_epi32(_mm512_add_epi32(a, b));
#else
    unsigned s = 0;
    for (size_t i = 0; i < n; i += 8) s += (unsigned char)c[i];
    return (float)s;
#endif
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s format rows cols [n_x=1] [reps=200]\n", argv[0]);
        return 1;
    }
    moe_format f;
    if (moe_format_from_name(argv[1], &f)) { fprintf(stderr, "unknown format %s\n", argv[1]); return 1; }
    const int64_t rows = atoll(argv[2]), cols = atoll(argv[3]);
    const int     n_x  = argc > 4 ? atoi(argv[4]) : 1;
    const int     reps = argc > 5 ? atoi(argv[5]) : 200;
    const moe__format_traits *tr = moe__format(f);
    const moe__cpu_format    *kf = moe__cpu_format_get(f);
    if (!tr || !kf) { fprintf(stderr, "%s: no CPU kernel\n", argv[1]); return 1; }
    if (getenv("MOE_STREAMS")) moe__cpu_plan.streams = atoi(getenv("MOE_STREAMS"));
    if (getenv("MOE_PF_FAR"))
        moe__cpu_plan.pf_far = moe__cpu_plan.pf_far_packed = (size_t)atoll(getenv("MOE_PF_FAR"));
    if (getenv("MOE_PF_NEAR")) moe__cpu_plan.pf_near = (size_t)atoll(getenv("MOE_PF_NEAR"));

    char        err[256];
    moe__wsizes s;
    const int32_t gs = f == MOE_FORMAT_INT4_GPTQ || f == MOE_FORMAT_INT4_AWQ ||
                       f == MOE_FORMAT_INT8_GPTQ ? 128 : 0;
    if (tr->sizes(rows, cols, gs, MOE_FORMAT_BF16, &s, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 1; }
    moe__wmat w = { .format = f, .rows = rows, .cols = cols, .group_size = gs,
                    .scale_format = MOE_FORMAT_BF16, .scale2 = 1 };
    void *data = moe__aligned_alloc(s.data), *sc = moe__aligned_alloc(s.scales + 64),
         *zr = s.zeros ? moe__aligned_alloc(s.zeros) : NULL;
    float *src = malloc((size_t)(rows * cols) * sizeof(float));
    uint64_t seed = 7;
    for (int64_t i = 0; i < rows * cols; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        src[i] = (float)((int)(seed >> 40) % 2001 - 1000) / 10000.0f;
    }
    w.data = data, w.scales = sc, w.zeros = zr;
    const char *act   = getenv("MOE_ACT_ORDER");
    int32_t    *g_idx = NULL, *order = NULL;
    if (act && *act && s.g_idx) {
        g_idx = malloc(s.g_idx), order = malloc(s.g_idx);
        for (int64_t k = 0; k < cols; k++) order[k] = (int32_t)k;
        for (int64_t k = cols - 1; k > 0; k--) { /* a random permutation */
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            const int64_t j = (int64_t)((seed >> 33) % (uint64_t)(k + 1));
            const int32_t t = order[k];
            order[k] = order[j], order[j] = t;
        }
        for (int64_t j = 0; j < cols; j++) g_idx[order[j]] = (int32_t)(j / gs);
        if (!strcmp(act, "uneven")) /* groups 0..6 only */
            for (int64_t k = 0; k < cols; k++) g_idx[k] = (int32_t)(k % 7 % (cols / gs));
        w.g_idx   = g_idx;
        w.k_order = moe__gidx_order(g_idx, cols, gs, order) == 1 ? order : NULL;
    }
    if (!tr->quantize_ref) moe__from_f32(f, src, data, rows * cols); /* a plain type */
    else if (tr->quantize_ref(src, &w)) { fprintf(stderr, "quantize_ref failed\n"); return 1; }
    free(src);

    /* The packed layout where the format has one (what a bound layer runs). */
    const bool    packed = kf->pack != NULL;
    const size_t  mbytes = packed ? kf->packed_bytes(&w) : s.data;
    void         *m0     = moe__aligned_alloc(mbytes);
    if (packed) kf->pack(&w, m0); else memcpy(m0, data, s.data);
    const size_t  stride = (mbytes + s.scales + s.zeros + 4095) / 4096 * 4096;
    const int     n_copy = getenv("MOE_HOT") ? 1 : (int)(((size_t)512 << 20) / stride) + 2;
    char         *copies = moe__aligned_alloc(stride * (size_t)n_copy);
    for (int c = 0; c < n_copy; c++) {
        char *p = copies + (size_t)c * stride;
        memcpy(p, m0, mbytes);
        memcpy(p + mbytes, sc, s.scales);
        if (s.zeros) memcpy(p + mbytes + s.scales, zr, s.zeros);
    }

    const size_t xrow = kf->act_quantize ? (kf->act_row_bytes(cols) + 63) / 64 * 64
                                         : (size_t)cols * sizeof(float);
    void  *xq = moe__aligned_alloc(xrow * (size_t)n_x);
    float *x  = malloc((size_t)cols * sizeof(float)), *y = malloc((size_t)(rows * n_x) * sizeof(float));
    for (int64_t k = 0; k < cols; k++) x[k] = (float)((k * 37) % 101 - 50) / 50.0f;
    for (int i = 0; i < n_x; i++) {
        if (kf->act_quantize) kf->act_quantize(&w, x, cols, (char *)xq + (size_t)i * xrow);
        else memcpy((char *)xq + (size_t)i * xrow, x, (size_t)cols * sizeof(float));
    }

    double *tk = malloc((size_t)reps * sizeof(double)), *tp = malloc((size_t)reps * sizeof(double));
    volatile float sink = 0;
    int c = 0;
    for (int rep = -10; rep < reps; rep++) {
        char     *p = copies + (size_t)(c++ % n_copy) * stride;
        moe__wmat v = w;
        v.data = p, v.scales = p + mbytes, v.zeros = s.zeros ? p + mbytes + s.scales : NULL;
        struct timespec t0, t1, t2;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        (packed ? kf->gemm_packed : kf->gemm)(&v, 0, rows, xq, xrow, n_x, y, rows);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        p = copies + (size_t)(c++ % n_copy) * stride;
        sink += plain_read(p, mbytes + s.scales + s.zeros);
        clock_gettime(CLOCK_MONOTONIC, &t2);
        if (rep >= 0) tk[rep] = us_between(t0, t1), tp[rep] = us_between(t1, t2);
    }
    const double bytes = (double)(mbytes + s.scales + s.zeros);
    const double k_us = median_of(tk, reps), p_us = median_of(tp, reps);
    printf("%-12s%s %5lld x %-5lld n_x %d  streams %d pf %zu/%zu/%zu  kernel %7.1f us %5.1f GB/s  "
           "read %7.1f us %5.1f GB/s  ratio %.2f\n",
           argv[1], w.k_order ? "+perm" : w.g_idx ? "+act" : "", (long long)rows, (long long)cols,
           n_x, moe__cpu_plan.streams, moe__cpu_plan.pf_far, moe__cpu_plan.pf_far_packed,
           moe__cpu_plan.pf_near, k_us, bytes / k_us * 1e-3, p_us, bytes / p_us * 1e-3,
           p_us / k_us);
    (void)sink;
    return 0;
}
