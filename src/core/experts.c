/*
 * experts.c - the routed and shared experts objects: validation, owned
 * copies (or borrowed views) of the weight tables, the expert map, and the
 * per-expert matrix views every backend reads.
 */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

int64_t moe__w13_rows(const moe_experts_options *o) {
    return o->activation == MOE_ACT_RELU2 ? o->d_ff : 2 * o->d_ff;
}

moe_format moe__w2_format(const moe_experts_options *o) {
    return o->w2_format ? *o->w2_format : o->format;
}

/* The tables of one projection, in the order they are copied. */
enum { T_DATA, T_SCALES, T_ZEROS, T_GIDX, T_SCALE2, T_INSCALE, T_BIAS, T_COUNT };

static void table_sizes(const moe__wsizes *s, int64_t rows, int32_t n_experts, size_t out[T_COUNT]) {
    size_t E = (size_t)n_experts;
    out[T_DATA]    = E * s->data;
    out[T_SCALES]  = E * s->scales;
    out[T_ZEROS]   = E * s->zeros;
    out[T_GIDX]    = E * s->g_idx;
    out[T_SCALE2]  = E * sizeof(float);
    out[T_INSCALE] = E * sizeof(float);
    out[T_BIAS]    = E * (size_t)rows * sizeof(float);
}

static const void **table_ptr(moe_weights *w, int t) {
    switch (t) {
    case T_DATA: return (const void **)&w->data;
    case T_SCALES: return (const void **)&w->scales;
    case T_ZEROS: return (const void **)&w->zeros;
    case T_GIDX: return (const void **)&w->g_idx;
    case T_SCALE2: return (const void **)&w->scale2;
    case T_INSCALE: return (const void **)&w->input_scale;
    default: return (const void **)&w->bias;
    }
}

static moe__wmat make_view(const moe_routed_experts *e, moe_format f, const moe_weights *w,
                           const moe__wsizes *s, const int32_t *k_order, int64_t rows,
                           int64_t cols, int32_t i) {
    const moe_experts_options *o = &e->opts;
    if (k_order) k_order += (size_t)i * (size_t)cols;
    return (moe__wmat){
        .format       = f,
        .rows         = rows,
        .cols         = cols,
        .group_size   = o->group_size,
        .scale_format = o->scale_format,
        .data         = (const char *)w->data + (size_t)i * s->data,
        .scales       = w->scales ? (const char *)w->scales + (size_t)i * s->scales : NULL,
        .zeros        = w->zeros ? (const char *)w->zeros + (size_t)i * s->zeros : NULL,
        .g_idx        = w->g_idx ? (const int32_t *)((const char *)w->g_idx + (size_t)i * s->g_idx)
                                 : NULL,
        .k_order      = k_order && k_order[0] >= 0 ? k_order : NULL,
        .scale2       = w->scale2 ? w->scale2[i] : 1.0f,
        .input_scale  = w->input_scale ? w->input_scale[i] : 0.0f,
        .bias         = w->bias ? w->bias + (size_t)i * (size_t)rows : NULL,
    };
}

moe__wmat moe__experts_w13(const moe_routed_experts *e, int32_t i) {
    return make_view(e, e->fmt13, &e->opts.w13, &e->s13, e->k_order13, moe__w13_rows(&e->opts),
                     e->opts.d_model, i);
}

moe__wmat moe__experts_w2(const moe_routed_experts *e, int32_t i) {
    return make_view(e, e->fmt2, &e->opts.w2, &e->s2, e->k_order2, e->opts.d_model, e->opts.d_ff,
                     i);
}

int moe__gidx_order(const int32_t *g_idx, int64_t cols, int32_t group_size, int32_t *order) {
    const int64_t ng   = cols / group_size;
    int64_t      *fill = moe__calloc((size_t)ng, sizeof *fill); /* columns placed per group */
    if (!fill) return -1;
    int balanced = 1;
    for (int64_t k = 0; k < cols && balanced; k++) { /* (validated; a guard all the same) */
        balanced = g_idx[k] >= 0 && g_idx[k] < ng;
        if (balanced) fill[g_idx[k]]++;
    }
    for (int64_t g = 0; g < ng; g++) {
        balanced &= fill[g] == group_size;
        fill[g] = 0;
    }
    for (int64_t k = 0; k < cols && balanced; k++)
        order[g_idx[k] * (int64_t)group_size + fill[g_idx[k]]++] = (int32_t)k;
    moe__free(fill);
    return balanced;
}

/* One projection's k_order table (n_experts, cols) from its g_idx table. */
static moe_status build_order(const int32_t *g_idx, int32_t n, int64_t cols, int32_t group_size,
                              int32_t **out, char *err, size_t errlen) {
    if (!g_idx) return MOE_OK;
    if (!*out && !(*out = moe__malloc((size_t)n * (size_t)cols * sizeof(int32_t)))) goto nomem;
    for (int32_t i = 0; i < n; i++) {
        const size_t o = (size_t)i * (size_t)cols;
        const int    r = moe__gidx_order(g_idx + o, cols, group_size, *out + o);
        if (r < 0) goto nomem;
        if (!r) (*out)[o] = -1;
    }
    return MOE_OK;
nomem:
    return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory ordering the act-order columns");
}

moe_status moe__experts_order(moe_routed_experts *e, char *err, size_t errlen) {
    const moe_experts_options *o = &e->opts;
    moe_status st = build_order(o->w13.g_idx, o->n_experts, o->d_model, o->group_size,
                                &e->k_order13, err, errlen);
    return st ? st : build_order(o->w2.g_idx, o->n_experts, o->d_ff, o->group_size, &e->k_order2,
                                 err, errlen);
}

static moe_status check_map(const int32_t *map, int32_t n_global, int32_t n_local, char *err,
                            size_t errlen) {
    /* Each local id may be the target of at most one global id. */
    char seen_small[256] = { 0 };
    char *seen = n_local <= 256 ? seen_small : moe__calloc((size_t)n_local, 1);
    if (!seen) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory checking expert map");
    moe_status st = MOE_OK;
    for (int32_t g = 0; g < n_global && !st; g++) {
        int32_t l = map[g];
        if (l < -1 || l >= n_local)
            st = moe__errf(err, errlen, MOE_ERR_RANGE,
                           "expert_map[%d] = %d is outside [-1, %d)", g, l, n_local);
        else if (l >= 0 && seen[l]++)
            st = moe__errf(err, errlen, MOE_ERR_RANGE,
                           "expert_map maps two global experts to local expert %d", l);
    }
    if (seen != seen_small) moe__free(seen);
    return st;
}

static moe_status check_options(const moe_experts_options *o, char *err, size_t errlen) {
    if (o->n_experts < 1 || o->d_model < 1 || o->d_ff < 1)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                         "experts need n_experts, d_model, d_ff >= 1 (got %d, %lld, %lld)",
                         o->n_experts, (long long)o->d_model, (long long)o->d_ff);
    if (!moe__format(o->format) || !moe__format(moe__w2_format(o)))
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "weight format %d is not available",
                         (int)(moe__format(o->format) ? moe__w2_format(o) : o->format));
    if ((unsigned)o->activation > MOE_ACT_RELU2)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "unknown activation %d",
                         (int)o->activation);
    if (!o->w13.data || !o->w2.data)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "w13.data and w2.data are required");
    if (!isfinite(o->swiglu_alpha) || !isfinite(o->swiglu_limit) || o->swiglu_limit < 0)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "swiglu alpha/limit must be finite");
    if (o->expert_map) {
        if (o->n_experts_global < 1)
            return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                             "expert_map given without n_experts_global");
        return check_map(o->expert_map, o->n_experts_global, o->n_experts, err, errlen);
    }
    if (o->n_experts_global && o->n_experts_global != o->n_experts)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                         "n_experts_global %d != n_experts %d needs an expert_map",
                         o->n_experts_global, o->n_experts);
    return MOE_OK;
}

moe_status moe_routed_experts_create(const moe_experts_options *opts, moe_routed_experts **out,
                                     char *err, size_t errlen) {
    if (!opts || !out) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "NULL argument");
    *out = NULL;
    moe_status st = check_options(opts, err, errlen);
    if (st) return st;
    moe_routed_experts *e = moe__calloc(1, sizeof *e);
    if (!e) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    e->opts           = *opts;
    e->fmt13          = opts->format;
    e->fmt2           = moe__w2_format(opts);
    e->opts.w2_format = &e->fmt2;  /* the caller's pointer need not outlive create */
    const moe__format_traits *ft13 = moe__format(e->fmt13), *ft2 = moe__format(e->fmt2);
    int64_t rows13 = moe__w13_rows(opts);
    if ((st = ft13->sizes(rows13, opts->d_model, opts->group_size, opts->scale_format, &e->s13,
                          err, errlen)) ||
        (st = ft2->sizes(opts->d_model, opts->d_ff, opts->group_size, opts->scale_format, &e->s2,
                         err, errlen)))
        goto fail;
    if ((e->s13.scales && !opts->w13.scales) || (e->s2.scales && !opts->w2.scales)) {
        const bool w13 = e->s13.scales && !opts->w13.scales;
        st = moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "format %s needs %s.scales",
                       (w13 ? ft13 : ft2)->info.name, w13 ? "w13" : "w2");
        goto fail;
    }

    /* Copy every table given (one block), unless borrowed. */
    if (!(opts->flags & MOE_EXPERTS_BORROW)) {
        size_t sz13[T_COUNT], sz2[T_COUNT], total = 0;
        table_sizes(&e->s13, rows13, opts->n_experts, sz13);
        table_sizes(&e->s2, opts->d_model, opts->n_experts, sz2);
        for (int t = 0; t < T_COUNT; t++) {
            if (*table_ptr(&e->opts.w13, t)) total += moe__align_up(sz13[t], 64);
            if (*table_ptr(&e->opts.w2, t)) total += moe__align_up(sz2[t], 64);
        }
        e->owned = moe__aligned_alloc(total);
        if (!e->owned) {
            st = moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory copying %zu bytes of weights",
                           total);
            goto fail;
        }
        moe_advise_huge_pages(e->owned, total); /* decode streams these: fewer TLB misses */
        char *p = e->owned;
        for (int t = 0; t < T_COUNT; t++) {
            const void **a = table_ptr(&e->opts.w13, t), **b = table_ptr(&e->opts.w2, t);
            if (*a) { memcpy(p, *a, sz13[t]); *a = p; p += moe__align_up(sz13[t], 64); }
            if (*b) { memcpy(p, *b, sz2[t]); *b = p; p += moe__align_up(sz2[t], 64); }
        }
    }

    /* The expert map, always materialized (identity without EP). */
    e->n_experts_global = opts->expert_map ? opts->n_experts_global : opts->n_experts;
    e->expert_map       = moe__calloc((size_t)e->n_experts_global, sizeof(int32_t));
    if (!e->expert_map) {
        st = moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (int32_t g = 0; g < e->n_experts_global; g++)
        e->expert_map[g] = opts->expert_map ? opts->expert_map[g] : g;
    e->opts.expert_map       = e->expert_map;
    e->opts.n_experts_global = e->n_experts_global;

    /* Scales and tables read from outside are checked once, here. */
    for (int32_t i = 0; i < opts->n_experts && (ft13->validate || ft2->validate); i++) {
        moe__wmat   w13 = moe__experts_w13(e, i), w2 = moe__experts_w2(e, i);
        const char *which = "w13";
        st = ft13->validate ? ft13->validate(&w13, err, errlen) : MOE_OK;
        if (!st && ft2->validate) {
            which = "w2";
            st    = ft2->validate(&w2, err, errlen);
        }
        if (st) {
            size_t n = err ? strlen(err) : 0;
            if (err && n + 1 < errlen) snprintf(err + n, errlen - n, " (expert %d, %s)", i, which);
            goto fail;
        }
    }
    if ((st = moe__experts_order(e, err, errlen))) goto fail;
    *out = e;
    return MOE_OK;
fail:
    moe_routed_experts_destroy(e);
    return st;
}

void moe_routed_experts_destroy(moe_routed_experts *e) {
    if (!e) return;
    for (int i = 0; i < 4; i++)
        if (e->impl_state[i] && e->impl_free[i]) e->impl_free[i](e->impl_state[i]);
    moe__free(e->expert_map);
    moe__free(e->k_order13);
    moe__free(e->k_order2);
    moe__aligned_free(e->owned);
    moe__free(e);
}

moe_status moe_routed_experts_set_expert_map(moe_routed_experts *e, const int32_t *expert_map,
                                             char *err, size_t errlen) {
    if (!e || !expert_map) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "NULL argument");
    moe_status st = check_map(expert_map, e->n_experts_global, e->opts.n_experts, err, errlen);
    if (st) return st;
    memcpy(e->expert_map, expert_map, (size_t)e->n_experts_global * sizeof(int32_t));
    return MOE_OK;
}

/* ===== Shared experts ===== */

moe_status moe_shared_experts_create(const moe_shared_options *opts, moe_shared_experts **out,
                                     char *err, size_t errlen) {
    if (!opts || !out) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "NULL argument");
    *out = NULL;
    if (opts->mlp.n_experts != 1 || opts->mlp.expert_map)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                         "shared experts are one fused MLP: n_experts must be 1 (got %d), no map",
                         opts->mlp.n_experts);
    moe_shared_experts *s = moe__calloc(1, sizeof *s);
    if (!s) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    moe_status st = moe_routed_experts_create(&opts->mlp, &s->mlp, err, errlen);
    if (st) goto fail;
    if (opts->gate) {
        s->gate = moe__malloc((size_t)opts->mlp.d_model * sizeof(float));
        if (!s->gate) {
            st = moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
            goto fail;
        }
        memcpy(s->gate, opts->gate, (size_t)opts->mlp.d_model * sizeof(float));
    }
    *out = s;
    return MOE_OK;
fail:
    moe_shared_experts_destroy(s);
    return st;
}

void moe_shared_experts_destroy(moe_shared_experts *s) {
    if (!s) return;
    moe_routed_experts_destroy(s->mlp);
    moe__free(s->gate);
    moe__free(s);
}
