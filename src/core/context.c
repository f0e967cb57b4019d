/*
 * context.c - execution contexts: the CPU thread pool (and, with the CUDA
 * backend, its streams, created by that backend on first use).
 */
#include "internal.h"

#include <unistd.h>

int moe_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

moe_status moe_context_create(const moe_context_options *opts, moe_context **out, char *err,
                              size_t errlen) {
    if (!out) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "NULL argument");
    *out = NULL;
    moe_context_options o = opts ? *opts : (moe_context_options){ 0 };
    if (o.n_threads < 0 || o.n_threads > 1024)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "n_threads %d outside [0, 1024]",
                         o.n_threads);
    if (o.spin_us < -1 || o.spin_us > 10000000)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                         "spin_us %d outside [-1, 10000000] (-1: never sleep)", o.spin_us);
    moe_context *c = moe__calloc(1, sizeof *c);
    if (!c) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    c->opts = o;
    if (moe__pool_create(o.n_threads, o.spin_us, &c->pool)) {
        moe__free(c);
        return moe__errf(err, errlen, MOE_ERR_NOMEM, "cannot start %d threads", o.n_threads);
    }
    *out = c;
    return MOE_OK;
}

void moe_context_destroy(moe_context *c) {
    if (!c) return;
    if (c->cuda && c->cuda_free) c->cuda_free(c->cuda);
    moe__pool_destroy(c->pool);
    moe__free(c);
}

int moe_context_n_threads(const moe_context *c) { return c ? moe__pool_n_threads(c->pool) : 0; }
