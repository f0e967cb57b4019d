/*
 * status.c - status names and strings, the allocator hooks, logging, the
 * abort path and error-message formatting.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#define MOE__STR(x) #x
#define MOE__XSTR(x) MOE__STR(x)

const char *moe_version(void) {
    return MOE__XSTR(MOE_VERSION_MAJOR) "." MOE__XSTR(MOE_VERSION_MINOR) "." MOE__XSTR(
        MOE_VERSION_PATCH);
}

const char *moe_status_name(moe_status s) {
    switch (s) {
#define MOE__STATUS_NAME(name, num, str) case MOE_##name: return "MOE_" #name;
        MOE_STATUS_MAP(MOE__STATUS_NAME)
#undef MOE__STATUS_NAME
    }
    return "MOE_UNKNOWN";
}

const char *moe_status_str(moe_status s) {
    switch (s) {
#define MOE__STATUS_STR(name, num, str) case MOE_##name: return str;
        MOE_STATUS_MAP(MOE__STATUS_STR)
#undef MOE__STATUS_STR
    }
    return "unknown status";
}

/* ===== Allocator ===== */

static void *default_malloc(size_t size, void *user) { (void)user; return malloc(size); }
static void  default_free(void *p, void *user) { (void)user; free(p); }

static moe_allocator g_alloc = { default_malloc, default_free, NULL };

void moe_set_allocator(const moe_allocator *a) {
    if (a && a->malloc && a->free) g_alloc = *a;
    else g_alloc = (moe_allocator){ default_malloc, default_free, NULL };
}

void *moe__malloc(size_t size) { return g_alloc.malloc(size ? size : 1, g_alloc.user_data); }

void *moe__calloc(size_t n, size_t size) {
    size_t total;
    if (!moe__mul_ok(n, size, &total)) return NULL;
    void *p = moe__malloc(total);
    if (p) memset(p, 0, total);
    return p;
}

void moe__free(void *p) {
    if (p) g_alloc.free(p, g_alloc.user_data);
}

/* The aligned block keeps the raw pointer just below the aligned address. */
void *moe__aligned_alloc(size_t size) {
    size_t total;
    if (!moe__add_ok(size, 64 + sizeof(void *), &total)) return NULL;
    char *raw = moe__malloc(total);
    if (!raw) return NULL;
    uintptr_t a = ((uintptr_t)raw + sizeof(void *) + 63) & ~(uintptr_t)63;
    ((void **)a)[-1] = raw;
    return (void *)a;
}

void moe__aligned_free(void *p) {
    if (p) moe__free(((void **)p)[-1]);
}

void moe_advise_huge_pages(void *p, size_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)2 << 20;
    const uintptr_t a    = ((uintptr_t)p + huge - 1) & ~(huge - 1);
    const uintptr_t b    = ((uintptr_t)p + n) & ~(huge - 1);
    if (b > a) (void)madvise((void *)a, b - a, MADV_HUGEPAGE);
#else
    (void)p;
    (void)n;
#endif
}

/* ===== Logging, errors, abort ===== */

static moe_log_fn   g_log;
static void        *g_log_user;
static moe_abort_fn g_abort;

void moe_log_set(moe_log_fn cb, void *user_data) {
    g_log      = cb;
    g_log_user = user_data;
}

void moe__log(moe_log_level level, const char *fmt, ...) {
    if (!g_log) return;
    char    buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    g_log(level, buf, g_log_user);
}

moe_status moe__verrf(char *err, size_t errlen, moe_status s, const char *fmt, va_list ap) {
    if (err && errlen) vsnprintf(err, errlen, fmt, ap);
    return s;
}

moe_status moe__errf(char *err, size_t errlen, moe_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    moe__verrf(err, errlen, s, fmt, ap);
    va_end(ap);
    return s;
}

void moe_set_abort_callback(moe_abort_fn cb) { g_abort = cb; }

_Noreturn void moe__abort(const char *file, int line, const char *fmt, ...) {
    char    msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (g_abort) g_abort(file, line, msg);
    else fprintf(stderr, "libmoe: %s:%d: %s\n", file, line, msg);
    abort();
}

/* ===== Workspace carving ===== */

void *moe__ws_take(char **cursor, const char *end, size_t size) {
    uintptr_t p = ((uintptr_t)*cursor + 63) & ~(uintptr_t)63;
    if (p > (uintptr_t)end || size > (size_t)((uintptr_t)end - p)) return NULL;
    *cursor = (char *)(p + size);
    return (void *)p;
}
