/*
 * main.c - the test runner: runs every registered TEST in name order.
 *
 *     moe-test              run all
 *     moe-test -o PATTERN   run the tests whose name contains PATTERN
 *     moe-test -l           list the tests
 *
 * Ends with one line "N passed, M failed, K skipped"; exits 1 if any failed.
 */
#include "test.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static test_case *g_tests;
static int        g_n_tests;
static bool       g_failed, g_skipped;
static char       g_skip_reason[256];

void test_register(test_case *t) {
    t->next = g_tests;
    g_tests = t;
    g_n_tests++;
}

void test_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stdout, "    %s:%d: ", file, line);
    vfprintf(stdout, fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    g_failed = true;
}

void test_fail_cond(const char *file, int line, const char *cond, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stdout, "    %s:%d: %s ", file, line, cond);
    vfprintf(stdout, fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    g_failed = true;
}

void test_skip(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_skip_reason, sizeof g_skip_reason, fmt, ap);
    va_end(ap);
    g_skipped = true;
}

bool test_failed(void) { return g_failed; }

static int by_name(const void *a, const void *b) {
    return strcmp((*(test_case *const *)a)->name, (*(test_case *const *)b)->name);
}

int main(int argc, char **argv) {
    const char *pattern = NULL;
    bool        list    = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-o") && i + 1 < argc) pattern = argv[++i];
        else if (!strcmp(argv[i], "-l")) list = true;
        else {
            fprintf(stderr, "usage: %s [-o PATTERN] [-l]\n", argv[0]);
            return 2;
        }
    }
    test_case **all = malloc(sizeof *all * (size_t)(g_n_tests ? g_n_tests : 1));
    if (!all) return 2;
    int n = 0;
    for (test_case *t = g_tests; t; t = t->next) all[n++] = t;
    qsort(all, (size_t)n, sizeof *all, by_name);

    int passed = 0, failed = 0, skipped = 0;
    for (int i = 0; i < n; i++) {
        if (pattern && !strstr(all[i]->name, pattern)) continue;
        if (list) { puts(all[i]->name); continue; }
        g_failed = g_skipped = false;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        all[i]->fn();
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
        if (g_failed) { failed++; printf("FAIL %s (%.0f ms)\n", all[i]->name, ms); }
        else if (g_skipped) { skipped++; printf("skip %s: %s\n", all[i]->name, g_skip_reason); }
        else { passed++; printf("ok   %s (%.0f ms)\n", all[i]->name, ms); }
        fflush(stdout);
    }
    free(all);
    if (list) return 0;
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
