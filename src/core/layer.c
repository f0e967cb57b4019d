/*
 * layer.c - the MoE layer: composes router, routed experts, shared experts
 * and a kernel (prepare/finalize x experts implementation) picked at
 * creation, and runs the forward on the caller's workspace.
 *
 * Host forward, step by step (every buffer carved from the workspace):
 *   1. x to f32 (when the layer's io format is BF16/F16)
 *   2. router logits from the gate (when the caller gives none), then routing
 *   3. prepare: group slots by local expert (pf->prepare)
 *   4. experts: routed job, and shared job before or alongside it
 *   5. finalize: weighted sum of each token's slots in slot order, + shared
 *   6. out from f32
 */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#ifdef MOE_HAVE_CUDA
#include "../cuda/entry.h"
#define LAYER_CUDA 1
#endif

/* Implementations in the order AUTO tries them. */
static const moe__experts_impl *const g_host_impls[] = { &moe__experts_cpu, &moe__experts_ref };

static moe_status layer_err(moe_layer *l, moe_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static moe_status layer_err(moe_layer *l, moe_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    moe__verrf(l->err, sizeof l->err, s, fmt, ap);
    va_end(ap);
    return s;
}

static moe_status pick_experts_impl(moe_layer *l, char *err, size_t errlen) {
    char   why[512] = "";
    size_t n        = 0;
    for (size_t i = 0; i < sizeof g_host_impls / sizeof *g_host_impls; i++) {
        const moe__experts_impl *impl = g_host_impls[i];
        if (l->opts.backend != MOE_BACKEND_AUTO && l->opts.backend != impl->backend) continue;
        const char *no = impl->rejects(l->opts.experts);
        if (!no && l->opts.shared) no = impl->rejects(l->opts.shared->mlp);
        if (!no) {
            l->experts_impl = impl;
            return MOE_OK;
        }
        n += (size_t)snprintf(why + n, n < sizeof why ? sizeof why - n : 0, "%s%s: %s",
                              n ? "; " : "", impl->name, no);
        if (n >= sizeof why) n = sizeof why - 1;
    }
    const moe_format_info *fi = &moe__format(l->opts.experts->opts.format)->info;
    return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED,
                     "no experts implementation runs format %s%s%s", fi->name, n ? " — " : "", why);
}

static moe_status check_layer_options(const moe_layer_options *o, char *err, size_t errlen) {
    if (!o->router || !o->experts)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "layer needs a router and experts");
    const moe_router_options  *ro = &o->router->opts;
    const moe_experts_options *eo = &o->experts->opts;
    /* With o->parallel, moe__ep_select_pf checks the counts (EPLB: logical vs physical). */
    if (!o->parallel && ro->n_experts != o->experts->n_experts_global)
        return moe__errf(err, errlen, MOE_ERR_SHAPE,
                         "router has %d experts, the experts (global) %d", ro->n_experts,
                         o->experts->n_experts_global);
    if (ro->gate_weight && ro->d_model != eo->d_model)
        return moe__errf(err, errlen, MOE_ERR_SHAPE, "router gate d_model %lld != experts %lld",
                         (long long)ro->d_model, (long long)eo->d_model);
    if (o->io_format != MOE_FORMAT_F32 && o->io_format != MOE_FORMAT_BF16 &&
        o->io_format != MOE_FORMAT_F16)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "io_format must be f32, bf16 or f16");
    if ((unsigned)o->shared_order > MOE_SHARED_IN_COMBINE)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "unknown shared order %d",
                         (int)o->shared_order);
    if ((unsigned)o->backend > MOE_BACKEND_CUDA)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "unknown backend %d", (int)o->backend);
    if (o->max_tokens < 0 || o->max_tokens > (int64_t)1 << 31)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "max_tokens %lld out of range",
                         (long long)o->max_tokens);
    if (o->shared && o->shared->mlp->opts.d_model != eo->d_model)
        return moe__errf(err, errlen, MOE_ERR_SHAPE, "shared experts d_model %lld != %lld",
                         (long long)o->shared->mlp->opts.d_model, (long long)eo->d_model);
    return MOE_OK;
}

moe_status moe_layer_create(const moe_layer_options *opts, moe_layer **out, char *err,
                            size_t errlen) {
    if (!opts || !out) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "NULL argument");
    *out = NULL;
    moe_status st = check_layer_options(opts, err, errlen);
    if (st) return st;
    moe_layer *l = moe__calloc(1, sizeof *l);
    if (!l) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    l->opts = *opts;
    if (!l->opts.max_tokens) l->opts.max_tokens = 1;
    if (opts->context) {
        l->ctx = opts->context;
    } else {
        if ((st = moe_context_create(NULL, &l->own_ctx, err, errlen))) goto fail;
        l->ctx = l->own_ctx;
    }
    if ((st = moe__ep_select_pf(opts, &l->pf, err, errlen))) goto fail;
    if (!l->pf) l->pf = &moe__pf_local;
    if (opts->backend == MOE_BACKEND_CUDA) {
#ifdef LAYER_CUDA
        if ((st = moe__cuda_layer_create(l, err, errlen))) goto fail;
#else
        st = moe__errf(err, errlen, MOE_ERR_UNSUPPORTED,
                       "backend cuda: this libmoe was built without CUDA");
        goto fail;
#endif
    } else {
        if ((st = pick_experts_impl(l, err, errlen))) goto fail;
        if (l->experts_impl->bind &&
            ((st = l->experts_impl->bind(opts->experts, l->ctx, err, errlen)) ||
             (opts->shared &&
              (st = l->experts_impl->bind(opts->shared->mlp, l->ctx, err, errlen)))))
            goto fail;
    }
    *out = l;
    return MOE_OK;
fail:
    moe_layer_destroy(l);
    return st;
}

void moe_layer_destroy(moe_layer *l) {
    if (!l) return;
#ifdef LAYER_CUDA
    if (l->opts.backend == MOE_BACKEND_CUDA) moe__cuda_layer_destroy(l);
#endif
    moe_context_destroy(l->own_ctx);
    moe__free(l);
}

const char *moe_layer_last_error(const moe_layer *l) { return l ? l->err : ""; }
const char *moe_layer_experts_impl(const moe_layer *l) {
    return l && l->experts_impl ? l->experts_impl->name : "cuda";
}
const char *moe_layer_prepare_finalize_impl(const moe_layer *l) { return l ? l->pf->name : ""; }

/* ===== Workspace ===== */

/* The host forward's buffers for n tokens, in carving order. */
typedef struct host_ws {
    size_t x32, logits, ids, w, in_scale, shared_rows, shared_y, out32, pf, experts;
} host_ws;

static host_ws host_ws_sizes(const moe_layer *l, int64_t n) {
    const moe_router_options  *ro = &l->opts.router->opts;
    const int64_t              H  = l->opts.experts->opts.d_model;
    const size_t               N = (size_t)n, K = (size_t)ro->top_k;
    const bool                 f32io = l->opts.io_format == MOE_FORMAT_F32;
    const moe_shared_experts  *sh = l->opts.shared;
    int nt = moe__pool_n_threads(l->ctx->pool);
    host_ws s = {
        .x32         = f32io ? 0 : N * (size_t)H * sizeof(float),
        .logits      = N * (size_t)ro->n_experts * sizeof(float),
        .ids         = N * K * sizeof(int32_t),
        .w           = N * K * sizeof(float),
        .in_scale    = ro->scoring == MOE_SCORING_LLAMA4 ? N * K * sizeof(float) : 0,
        .shared_rows = sh ? 2 * sizeof(int32_t) + N * sizeof(int32_t) : 0,
        .shared_y    = sh ? N * (size_t)H * sizeof(float) : 0,
        .out32       = f32io ? 0 : N * (size_t)H * sizeof(float),
        .pf          = l->pf->workspace_size(l, n),
        .experts     = l->experts_impl->workspace_size(
                           l->opts.experts, l->pf->max_rows ? l->pf->max_rows(l, n) : n * ro->top_k,
                           nt) +
                   (sh ? l->experts_impl->workspace_size(sh->mlp, n, nt) : 0),
    };
    return s;
}

size_t moe_layer_workspace_size(const moe_layer *l, int64_t n_tokens) {
    if (!l || n_tokens < 0) return 0;
#ifdef LAYER_CUDA
    if (l->opts.backend == MOE_BACKEND_CUDA) return moe__cuda_workspace_size(l, n_tokens);
#endif
    host_ws s = host_ws_sizes(l, n_tokens);
    return 64 * 12 + s.x32 + s.logits + s.ids + s.w + s.in_scale + s.shared_rows + s.shared_y +
           s.out32 + s.pf + s.experts;
}

/* ===== Forward ===== */

static moe_status check_shared(moe_layer *l, const moe_shared_experts *sh) {
    const moe_shared_experts *want = l->opts.shared;
    if (!sh || sh == want) return MOE_OK;
    if (!want)
        return layer_err(l, MOE_ERR_SHAPE,
                         "shared experts given, but the layer was created without shared experts "
                         "(moe_layer_options.shared sizes the workspace)");
    const moe_experts_options *a = &sh->mlp->opts, *b = &want->mlp->opts;
    if (a->d_model != b->d_model || a->d_ff != b->d_ff || a->format != b->format ||
        sh->mlp->fmt2 != want->mlp->fmt2)
        return layer_err(l, MOE_ERR_SHAPE,
                         "shared experts (d_model %lld, d_ff %lld, %s) differ from the layer's "
                         "(d_model %lld, d_ff %lld, %s)",
                         (long long)a->d_model, (long long)a->d_ff, moe_format_name(a->format),
                         (long long)b->d_model, (long long)b->d_ff, moe_format_name(b->format));
    return MOE_OK;
}

static moe_status forward_host(moe_layer *l, int64_t n, const void *x, const float *logits,
                               const int32_t *ids_in, const float *w_in,
                               const moe_shared_experts *sh, void *out, void *workspace,
                               size_t ws_size) {
    const moe_router          *router = l->opts.router;
    const moe_router_options  *ro     = &router->opts;
    const moe_routed_experts  *e      = l->opts.experts;
    const int64_t              H      = e->opts.d_model;
    const int32_t              K      = ro->top_k;
    const bool                 f32io  = l->opts.io_format == MOE_FORMAT_F32;
    moe_status                 st;

    host_ws sz  = host_ws_sizes(l, n);
    char   *cur = workspace, *end = (char *)workspace + ws_size;
    float   *x32      = f32io ? (float *)x : moe__ws_take(&cur, end, sz.x32);
    float   *lg       = logits ? NULL : moe__ws_take(&cur, end, sz.logits);
    int32_t *ids      = ids_in ? NULL : moe__ws_take(&cur, end, sz.ids);
    float   *w        = w_in ? NULL : moe__ws_take(&cur, end, sz.w);
    float   *in_scale = sz.in_scale ? moe__ws_take(&cur, end, sz.in_scale) : NULL;
    int32_t *sh_rows  = sh ? moe__ws_take(&cur, end, sz.shared_rows) : NULL;
    float   *sh_y     = sh ? moe__ws_take(&cur, end, sz.shared_y) : NULL;
    float   *out32    = f32io ? (float *)out : moe__ws_take(&cur, end, sz.out32);
    void    *pf_ws    = moe__ws_take(&cur, end, sz.pf);
    void    *ex_ws    = moe__ws_take(&cur, end, sz.experts);
    if (!x32 || (!logits && !lg) || (!ids_in && !ids) || (!w_in && !w) ||
        (sz.in_scale && !in_scale) || (sh && (!sh_rows || !sh_y)) || !out32 || !pf_ws || !ex_ws)
        return layer_err(l, MOE_ERR_WORKSPACE,
                         "workspace of %zu bytes is too small for %lld tokens (need %zu)", ws_size,
                         (long long)n, moe_layer_workspace_size(l, n));

    if (!f32io) moe__to_f32(l->opts.io_format, x, x32, n * H);

    /* Routing. */
    if (!ids_in) {
        if (!logits) {
            if (!ro->gate_weight)
                return layer_err(l, MOE_ERR_UNSUPPORTED,
                                 "no router logits given and the router has no gate weights");
            moe_router_logits(router, n, x32, lg);
            logits = lg;
        }
        if ((st = moe_router_route(router, n, logits, ids, w)))
            return layer_err(l, st, "routing failed: %s", moe_status_str(st));
        ids_in = ids;
        w_in   = w;
    } else {
        for (int64_t s = 0; s < n * K; s++)
            if (ids_in[s] < 0 || ids_in[s] >= ro->n_experts)
                return layer_err(l, MOE_ERR_RANGE, "topk_ids[%lld] = %d is outside [0, %d)",
                                 (long long)s, ids_in[s], ro->n_experts);
    }
    if (in_scale) memcpy(in_scale, w_in, (size_t)(n * K) * sizeof(float));

    moe__dispatch d = {
        .n_tokens = n, .top_k = K, .d_model = H, .x = x32,
        .topk_ids = ids_in, .topk_w = w_in, .in_scale = in_scale,
    };
    if ((st = l->pf->prepare(l, &d, pf_ws, sz.pf))) return st;

    /* Shared experts: one expert whose rows are all tokens. */
    moe__dispatch sd;
    moe__experts_job jobs[2];
    int n_jobs = 0;
    bool overlapped = false;
    if (sh) {
        sh_rows[0] = 0;
        sh_rows[1] = (int32_t)n;
        for (int64_t t = 0; t < n; t++) sh_rows[2 + t] = (int32_t)t;
        sd = (moe__dispatch){
            .n_tokens = n, .top_k = 1, .d_model = H, .x = x32, .n_local = 1,
            .expert_start = sh_rows, .row_slot = sh_rows + 2, .n_rows = n, .y = sh_y,
        };
        jobs[n_jobs++] = (moe__experts_job){ sh->mlp, &sd, sh->gate };
        overlapped = l->opts.shared_order == MOE_SHARED_OVERLAPPED ||
                     l->opts.shared_order == MOE_SHARED_IN_COMBINE;
    }
    jobs[n_jobs++] = (moe__experts_job){ e, &d, NULL };

    moe__exec ex = { l->ctx, l->err, sizeof l->err };
    if (overlapped || n_jobs == 1) {
        st = l->experts_impl->run(jobs, n_jobs, &ex, ex_ws, sz.experts);
    } else {
        /* BEFORE: the shared job alone, then the routed one, each with the
         * workspace laid out as for the pair. */
        size_t sh_ws = l->experts_impl->workspace_size(sh->mlp, n, moe__pool_n_threads(l->ctx->pool));
        st = l->experts_impl->run(&jobs[0], 1, &ex, ex_ws, sh_ws);
        if (!st)
            st = l->experts_impl->run(&jobs[1], 1, &ex, (char *)ex_ws + sh_ws, sz.experts - sh_ws);
    }
    if (st) return st;

    if ((st = l->pf->finalize(l, &d, sh_y, out32))) return st;
    if (!f32io) moe__from_f32(l->opts.io_format, out32, out, n * H);
    return MOE_OK;
}

static moe_status forward(moe_layer *l, int64_t n, const void *x, const float *logits,
                          const int32_t *ids, const float *w, const moe_shared_experts *shared,
                          void *out, void *ws, size_t ws_size) {
    if (!l) return MOE_ERR_INVALID_ARG;
    l->err[0] = '\0';
    if (n < 0) return layer_err(l, MOE_ERR_INVALID_ARG, "n_tokens %lld < 0", (long long)n);
    if (n == 0 && !l->pf->collective) return MOE_OK;
    if (n > l->opts.max_tokens)
        return layer_err(l, MOE_ERR_RANGE, "n_tokens %lld > the layer's max_tokens %lld",
                         (long long)n, (long long)l->opts.max_tokens);
    if (!x || !out || (!ws && ws_size))
        return layer_err(l, MOE_ERR_INVALID_ARG, "x, out and workspace must not be NULL");
    if ((uintptr_t)ws % 64)
        return layer_err(l, MOE_ERR_WORKSPACE, "workspace must be 64-byte aligned");
    if (l->opts.shared_order == MOE_SHARED_NONE) shared = NULL;
    moe_status st = check_shared(l, shared);
    if (st) return st;
#ifdef LAYER_CUDA
    if (l->opts.backend == MOE_BACKEND_CUDA)
        return moe__cuda_layer_forward(l, n, x, logits, ids, w, shared, out, ws, ws_size);
#endif
    return forward_host(l, n, x, logits, ids, w, shared, out, ws, ws_size);
}

moe_status moe_layer_forward(moe_layer *l, int64_t n_tokens, const void *x,
                             const float *router_logits, const moe_shared_experts *shared,
                             void *out, void *workspace, size_t workspace_size) {
    return forward(l, n_tokens, x, router_logits, NULL, NULL, shared, out, workspace,
                   workspace_size);
}

moe_status moe_layer_forward_routed(moe_layer *l, int64_t n_tokens, const void *x,
                                    const int32_t *topk_ids, const float *topk_w,
                                    const moe_shared_experts *shared, void *out, void *workspace,
                                    size_t workspace_size) {
    if (l && n_tokens > 0 && (!topk_ids || !topk_w))
        return layer_err(l, MOE_ERR_INVALID_ARG, "topk_ids and topk_w must not be NULL");
    return forward(l, n_tokens, x, NULL, topk_ids, topk_w, shared, out, workspace, workspace_size);
}
