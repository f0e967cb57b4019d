/*
 * util.c - helpers shared by the tests: a seeded generator, error metrics,
 * NaN poisoning.
 */
#include "test.h"
#include "internal.h"
#include "../src/cpu/cpu-formats.h"

#include <stdlib.h>
#include <string.h>

uint64_t test_rng_u64(test_rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float test_rng_uniform(test_rng *r) { return (float)(test_rng_u64(r) >> 40) / (float)(1 << 24); }

float test_rng_normal(test_rng *r) {
    /* Box-Muller on two uniforms in (0, 1]. */
    double u1 = ((test_rng_u64(r) >> 11) + 1.0) / 9007199254740993.0;
    double u2 = (test_rng_u64(r) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

void test_fill_normal(test_rng *r, float *x, size_t n, float sigma) {
    for (size_t i = 0; i < n; i++) x[i] = sigma * test_rng_normal(r);
}

void test_gidx_permuted(test_rng *r, int64_t cols, int32_t group, int32_t *g_idx) {
    for (int64_t k = 0; k < cols; k++) g_idx[k] = (int32_t)(k / group);
    for (int64_t k = cols - 1; k > 0; k--) { /* Fisher-Yates */
        const int64_t j = (int64_t)(test_rng_u64(r) % (uint64_t)(k + 1));
        const int32_t v = g_idx[k];
        g_idx[k] = g_idx[j], g_idx[j] = v;
    }
}

double test_nmse(const float *a, const double *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    if (den == 0) return num == 0 ? 0 : INFINITY;
    return num / den;
}

double test_nmse_f(const float *a, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    if (den == 0) return num == 0 ? 0 : INFINITY;
    return num / den;
}

double test_dot_ref(const float *a, const float *b, int64_t n, double *mag) {
    double d = 0, m = 0;
    for (int64_t k = 0; k < n; k++) {
        d += (double)a[k] * b[k];
        m += fabs((double)a[k] * b[k]);
    }
    *mag = m;
    return d;
}

void test_gemm_ref(const moe__wmat *w, const float *x, int64_t nx, double *ref, double *mag) {
    const int64_t R = w->rows, K = w->cols;
    float        *wrow = malloc(sizeof(float) * (size_t)K);
    for (int64_t r = 0; r < R; r++) {
        moe__format(w->format)->dequant_row_ref(w, r, wrow);
        for (int64_t i = 0; i < nx; i++)
            ref[i * R + r] = test_dot_ref(wrow, x + i * K, K, &mag[i * R + r]);
    }
    free(wrow);
}

void test_check_gemm(const moe__cpu_format *cpu, const moe__wmat *w, const char *xq, size_t xs,
                     int64_t nx, const double *ref, const double *mag,
                     const int64_t (*ranges)[2], size_t n_ranges, const int64_t *chunks,
                     size_t n_chunks, const char *what) {
    const int64_t R    = w->rows;
    float        *full = malloc(sizeof(float) * (size_t)(nx * R));
    float        *part = malloc(sizeof(float) * (size_t)(nx * R));
    cpu->gemm(w, 0, R, xq, xs, nx, full, R);
    long bad = 0;
    for (int64_t i = 0; i < nx; i++)
        for (int64_t r = 0; r < R; r++) {
            const double d = fabs((double)full[i * R + r] - ref[i * R + r]);
            if (!(d <= 1e-5 * mag[i * R + r] + 1e-30) && bad++ < 3)
                test_fail(__FILE__, __LINE__, "%s: y[%lld][%lld] = %.9g, ref %.9g", what,
                          (long long)i, (long long)r, full[i * R + r], ref[i * R + r]);
        }
    CHECK(bad == 0, "%s: %ld outputs off the reference", what, bad);
    for (size_t ri = 0; ri < n_ranges; ri++) {
        const int64_t r0 = ranges[ri][0], r1 = ranges[ri][1], nr = r1 - r0;
        for (size_t ci = 0; ci < n_chunks; ci++) {
            for (int64_t i0 = 0; i0 < nx; i0 += chunks[ci]) {
                const int64_t n = nx - i0 < chunks[ci] ? nx - i0 : chunks[ci];
                for (int64_t j = 0; j < n * nr; j++) part[j] = NAN;
                cpu->gemm(w, r0, r1, xq + (size_t)i0 * xs, xs, n, part, nr);
                for (int64_t i = 0; i < n; i++)
                    for (int64_t r = r0; r < r1; r++)
                        if (memcmp(&part[i * nr + (r - r0)], &full[(i0 + i) * R + r], 4)) {
                            test_fail(__FILE__, __LINE__, "%s: rows [%lld, %lld), %lld inputs: "
                                      "y[%lld][%lld] differs from the full call", what,
                                      (long long)r0, (long long)r1, (long long)n,
                                      (long long)(i0 + i), (long long)r);
                            goto next;
                        }
            }
        next:;
        }
    }
    free(full);
    free(part);
}

/* The NMSE of one backend's output (test_model_layer_check); -1 after a
 * failure, reported unless unsupported_ok excuses it. */
static double model_layer_nmse(const moe_model *m, const char *name, int32_t layer,
                               int64_t d_model, moe_backend backend, const moe_npy *x,
                               const moe_npy *ref, bool unsupported_ok) {
    char             err[512];
    const int64_t    T    = x->shape[0];
    moe_layer_options base = { .backend = backend, .max_tokens = T };
    moe_model_layer  *ml   = NULL;
    moe_status        s    = moe_model_layer_create(m, layer, &base, &ml, err, sizeof err);
    if (s) {
        if (!(unsupported_ok && s == MOE_ERR_UNSUPPORTED && backend != MOE_BACKEND_REF))
            test_fail(__FILE__, __LINE__, "%s: layer %d: %s: %s", name, layer, moe_status_name(s),
                      err);
        return -1;
    }
    moe_layer *l       = moe_model_layer_layer(ml);
    size_t     ws_size = moe_layer_workspace_size(l, T);
    void      *ws      = aligned_alloc(64, (ws_size + 63) / 64 * 64 + 64);
    float     *out     = malloc((size_t)T * (size_t)d_model * sizeof(float));
    double     nmse    = -1;
    test_poison(out, (size_t)T * (size_t)d_model);
    s = moe_layer_forward(l, T, x->data, NULL, moe_model_layer_shared(ml), out, ws, ws_size);
    if (s)
        test_fail(__FILE__, __LINE__, "%s: forward: %s: %s", name, moe_status_name(s),
                  moe_layer_last_error(l));
    else
        nmse = test_nmse_f(out, ref->data, (size_t)T * (size_t)d_model);
    free(out);
    free(ws);
    moe_model_layer_destroy(ml);
    return nmse;
}

void test_model_layer_check(const moe_model *m, const char *name, int32_t layer, int64_t d_model,
                            const moe_npy *x, const moe_npy *ref, double tol,
                            bool unsupported_ok) {
    static const moe_backend backends[2] = { MOE_BACKEND_REF, MOE_BACKEND_CPU };
    static const char *const names[2] = { "ref", "cpu" };
    for (int b = 0; b < 2; b++) {
        double e = model_layer_nmse(m, name, layer, d_model, backends[b], x, ref, unsupported_ok);
        if (e < 0) continue;
        if (!(e <= tol))
            test_fail(__FILE__, __LINE__, "%s layer %d on %s: NMSE %.3g > %.3g", name, layer,
                      names[b], e, tol);
        if (getenv("MOE_TEST_VERBOSE"))
            fprintf(stderr, "    %-20s %s NMSE %.3g (bound %.3g)\n", name, names[b], e, tol);
    }
}

long test_find_nan(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (isnan(x[i])) return (long)i;
    return -1;
}

void test_poison(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = NAN;
}

const char *test_data_dir(void) {
    const char *d = getenv("MOE_TEST_DATA");
    return d ? d : "build/testdata";
}
