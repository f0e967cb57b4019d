/*
 * test.h - the one test runner's registration and checks.
 *
 * A test is a function declared with TEST(name) in any tests/test-*.c file;
 * it registers itself before main() runs (a constructor), so adding a test
 * file needs no edit to a shared list. The runner (tests/main.c) runs the
 * tests in name order and ends with "N passed, M failed, K skipped".
 *
 *     TEST(router_softmax_ties) {
 *         CHECK(ids[0] == 0, "tie went to %d", ids[0]);
 *     }
 *
 * CHECK records a failure and goes on; REQUIRE returns from the test.
 */
#ifndef MOE_TEST_H
#define MOE_TEST_H

#include "moe.h"

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct test_case {
    const char       *name;
    void            (*fn)(void);
    struct test_case *next;
} test_case;

void test_register(test_case *t);
void test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Failure of CHECK/REQUIRE: the condition's text, then the caller's message. */
void test_fail_cond(const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void test_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
bool test_failed(void);    /* the running test has failed a check */

#define TEST(name)                                                             \
    static void test_fn_##name(void);                                          \
    __attribute__((constructor)) static void test_reg_##name(void) {           \
        static test_case t = { #name, test_fn_##name, NULL };                  \
        test_register(&t);                                                     \
    }                                                                          \
    static void test_fn_##name(void)

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) test_fail_cond(__FILE__, __LINE__, "CHECK(" #cond ")", " " __VA_ARGS__); \
    } while (0)
#define REQUIRE(cond, ...)                                                     \
    do {                                                                       \
        if (!(cond)) { test_fail_cond(__FILE__, __LINE__, "REQUIRE(" #cond ")", " " __VA_ARGS__); return; } \
    } while (0)
/* Expects status `expr` == `want`; prints both names otherwise. */
#define CHECK_STATUS(expr, want)                                               \
    do {                                                                       \
        moe_status s_ = (expr);                                                \
        if (s_ != (want))                                                      \
            test_fail(__FILE__, __LINE__, "%s returned %s, want %s", #expr,    \
                      moe_status_name(s_), moe_status_name(want));             \
    } while (0)
#define TEST_SKIP(...) do { test_skip(__VA_ARGS__); return; } while (0)

/* ===== Helpers (tests/util.c) ===== */

/* Deterministic generator (splitmix64), one per test. */
typedef struct test_rng { uint64_t s; } test_rng;
uint64_t test_rng_u64(test_rng *r);
float    test_rng_uniform(test_rng *r);          /* [0, 1)              */
float    test_rng_normal(test_rng *r);           /* N(0, 1)             */
void     test_fill_normal(test_rng *r, float *x, size_t n, float sigma);
/* A GPTQ act-order g_idx as the quantizers write it: the cols columns in a
 * random order, cut into groups of group (g_idx[perm[j]] = j / group). */
void     test_gidx_permuted(test_rng *r, int64_t cols, int32_t group, int32_t *g_idx);

/* Sum (a-b)^2 / sum b^2 (b the reference); 0 when both are all zero. */
double test_nmse(const float *a, const double *ref, size_t n);
double test_nmse_f(const float *a, const float *ref, size_t n);
/* sum_k a[k] * b[k] in fp64 (the reference of a kernel's dot product);
 * *mag = sum_k |a[k] * b[k]|, the scale its rounding error is judged by. */
double test_dot_ref(const float *a, const float *b, int64_t n, double *mag);
/* test_dot_ref of every row of w (dequantized by its format's scalar
 * reference) with each of the nx input rows x (nx, w->cols): ref and mag
 * (nx, w->rows). */
struct moe__wmat;
void   test_gemm_ref(const struct moe__wmat *w, const float *x, int64_t nx, double *ref,
                     double *mag);
/* A CPU kernel's gemm (cpu, a moe__cpu_format) on w and nx input rows xq
 * (xs bytes apart) against ref and mag from test_gemm_ref: every output of
 * the full call within 1e-5 * mag + 1e-30, then the same bits per output
 * from each row range [ranges[i][0], ranges[i][1]) and each input chunk
 * size. `what` names the case in failures. */
struct moe__cpu_format;
void test_check_gemm(const struct moe__cpu_format *cpu, const struct moe__wmat *w, const char *xq,
                     size_t xs, int64_t nx, const double *ref, const double *mag,
                     const int64_t (*ranges)[2], size_t n_ranges, const int64_t *chunks,
                     size_t n_chunks, const char *what);
/* Builds layer `layer` of model m on the reference and the CPU backend,
 * runs x (T, d_model) through each and fails under `name` unless the output's
 * NMSE against ref (T, d_model) is at most tol. A layer the CPU backend
 * refuses with MOE_ERR_UNSUPPORTED is skipped when unsupported_ok is set.
 * MOE_TEST_VERBOSE prints each NMSE. */
void test_model_layer_check(const moe_model *m, const char *name, int32_t layer, int64_t d_model,
                            const moe_npy *x, const moe_npy *ref, double tol,
                            bool unsupported_ok);
/* Index of the first NaN in x, or -1. */
long   test_find_nan(const float *x, size_t n);
void   test_poison(float *x, size_t n);          /* fill with NaN       */
/* Directory of generated test data (build/testdata), "" when unknown. */
const char *test_data_dir(void);

#endif /* MOE_TEST_H */
