/*
 * model-layer.c - moe_model_layer_create: turns one bound MoE layer of a
 * model (model.h, moe__mlayer) into a router, routed experts, shared experts
 * and a moe_layer, through the public create functions.
 *
 * Weights stay in the mapping (MOE_EXPERTS_BORROW) when the stored bytes are
 * already libmoe's layout and suitably aligned; otherwise they are converted
 * once into buffers this object owns (concatenating gate and up, or
 * transposing gpt-oss / Llama-4 experts; ModelOpt and compressed-tensors
 * projections as build_scaled says). Router and bias tensors become f32.
 */
#include "model.h"
#include "../quant/quant.h"

#include <stdio.h>
#include <string.h>

#define MAX_OWNED 24

struct moe_model_layer {
    moe_router         *router;
    moe_routed_experts *experts;
    moe_shared_experts *shared;
    moe_layer          *layer;
    void               *owned[MAX_OWNED];
    int                 n_owned;
};

static void *own(moe_model_layer *ml, size_t bytes) {
    if (ml->n_owned == MAX_OWNED) return NULL;
    void *p = moe__malloc(bytes ? bytes : 1);
    if (p) ml->owned[ml->n_owned++] = p;
    return p;
}

/* f32 copy of a whole plain tensor (n elements; shape already checked). */
static float *to_f32(moe_model_layer *ml, const moe__mtensor *t, int64_t n) {
    if (!t) return NULL;
    float *o = own(ml, (size_t)n * sizeof(float));
    if (!o) return NULL;
    for (int64_t i = 0; i < n; i++) o[i] = moe__mtensor_f32(t, i);
    return o;
}

static int aligned(const void *p, size_t a) { return ((uintptr_t)p % a) == 0; }

/* Alignment the kernels may assume for a format's data and scale tables. */
static size_t data_align(moe_format f) {
    switch (f) {
    case MOE_FORMAT_F32: return 4;
    case MOE_FORMAT_BF16: case MOE_FORMAT_F16: case MOE_FORMAT_Q8_0: case MOE_FORMAT_Q4_0:
    case MOE_FORMAT_Q4_K: case MOE_FORMAT_Q6_K: return 2;
    default: return 1;
    }
}

/* Borrows p when aligned, else copies it. */
static const void *view(moe_model_layer *ml, const void *p, size_t bytes, size_t align) {
    if (aligned(p, align)) return p;
    void *o = own(ml, bytes);
    if (o) memcpy(o, p, bytes);
    return o;
}

static moe_status sizes(moe_format f, int64_t rows, int64_t cols, moe__wsizes *s, char *err,
                        size_t errlen) {
    const moe__format_traits *tr = moe__format(f);
    if (!tr || !tr->sizes)
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "format %d has no table entry", (int)f);
    return tr->sizes(rows, cols, 0, MOE_FORMAT_F32, s, err, errlen);
}

static moe_status check_bytes(const moe__mtensor *t, uint64_t want, char *err, size_t errlen) {
    if (t->nbytes == want) return MOE_OK;
    return moe__errf(err, errlen, MOE_ERR_SHAPE, "tensor %s holds %llu bytes, the format needs %llu",
                     t->name, (unsigned long long)t->nbytes, (unsigned long long)want);
}

/* Matrix e of a SPLIT projection: slice e of a stacked tensor or tensor e. */
static const uint8_t *mat(const moe__mtensor *const *arr, int stacked, int32_t e, size_t bytes) {
    return stacked ? arr[0]->data + (size_t)e * bytes : arr[e]->data;
}

/* The first expert of sel when sel is the run sel[0], sel[0] + 1, ...
 * (the slice of a stacked tensor can then be borrowed), else -1. */
static int32_t run_start(const int32_t *sel, int32_t n) {
    for (int32_t i = 1; i < n; i++)
        if (sel[i] != sel[0] + i) return -1;
    return sel[0];
}

/* Stacked tensor t (E, ...) of `bytes` per expert, restricted to experts
 * sel[0, n): a borrowed slice when they are consecutive, else a copy. */
static const void *pick(moe_model_layer *ml, const uint8_t *t, size_t bytes, const int32_t *sel, int32_t n,
                        size_t align) {
    int32_t r = run_start(sel, n);
    if (r >= 0) return view(ml, t + (size_t)r * bytes, (size_t)n * bytes, align);
    uint8_t *o = own(ml, (size_t)n * bytes);
    if (o)
        for (int32_t i = 0; i < n; i++) memcpy(o + (size_t)i * bytes, t + (size_t)sel[i] * bytes, bytes);
    return o;
}

/* Tensor a (R, Ca) then b (R, Cb), row by row, into dst (R, Ca + Cb); es
 * bytes per element. */
static void cat_rows(uint8_t *dst, const moe__mtensor *a, const moe__mtensor *b, size_t es) {
    const size_t ra = (size_t)a->shape[1] * es, rb = (size_t)b->shape[1] * es;
    for (int64_t r = 0; r < a->shape[0]; r++) {
        memcpy(dst, a->data + (size_t)r * ra, ra);
        memcpy(dst + ra, b->data + (size_t)r * rb, rb);
        dst += ra + rb;
    }
}

/* 1 when g_idx (K) is absent or k / group everywhere (no act order). */
static int trivial_gidx(const moe__mtensor *g, int32_t group) {
    for (int64_t k = 0; g && k < g->shape[0]; k++) {
        int32_t v;
        memcpy(&v, g->data + 4 * k, 4);
        if (v != k / group) return 0;
    }
    return 1;
}

/* Act order of one expert: gate and up quantize the same input and are
 * fused into one matrix, so they must share g_idx (tensors named gname and
 * uname in the message). Sets *act13 / *act2 when gate's / down's g_idx is
 * not trivial: a projection whose every g_idx is trivial runs without one. */
static moe_status gidx_check(const moe__mtensor *g, const moe__mtensor *u, const moe__mtensor *d,
                             const char *gname, const char *uname, int32_t group, int *act13,
                             int *act2, char *err, size_t errlen) {
    if (!g != !u || (g && memcmp(g->data, u->data, g->nbytes)))
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "tensors %s and %s: gate and up have "
                         "different g_idx (act order); libmoe fuses them into one matrix",
                         gname, uname);
    *act13 |= !trivial_gidx(g, group);
    *act2 |= !trivial_gidx(d, group);
    return MOE_OK;
}

/* One expert's act-order table (K) in the experts options' layout: g_idx,
 * or k / group where the projection has none. */
static void gidx_put(int32_t *dst, const moe__mtensor *g, int64_t K, int32_t group) {
    for (int64_t k = 0; k < K; k++) {
        int32_t v = (int32_t)(k / group);
        if (g) memcpy(&v, g->data + 4 * k, 4);
        dst[k] = v;
    }
}

/* GPTQ / AWQ weights of n experts (expert i = the checkpoint's sel[i]) into
 * eo, format f. W13 concatenates gate and up along the output dimension,
 * the fast (column) one of the quantizers' tables: each packed row, scale
 * row and (AWQ) zero row of gate is followed by the same row of up. W2 is
 * down's tables as they are; act order as gidx_check says. GPTQ's qzeros
 * are not read: the format is symmetric (zero point 2^(bits-1)). */
static moe_status build_quant(moe_model_layer *ml, const moe__mcfg *c, moe_format f,
                              const moe__qproj *gate, const moe__qproj *up,
                              const moe__qproj *down, const int32_t *sel, int32_t n, int64_t H,
                              int64_t I, moe_experts_options *eo, char *err, size_t errlen) {
    const moe_format sf = gate[sel[0]].s->dtype == MOE__DT_BF16 ? MOE_FORMAT_BF16 : MOE_FORMAT_F16;
    const moe__format_traits *tr = moe__format(f);
    moe__wsizes s13, s2;
    moe_status s;
    if ((s = tr->sizes(2 * I, H, c->quant_group, sf, &s13, err, errlen)) ||
        (s = tr->sizes(H, I, c->quant_group, sf, &s2, err, errlen)))
        return s;
    int act13 = 0, act2 = 0;
    for (int32_t i = 0; i < n; i++) {
        const moe__qproj *g = &gate[sel[i]], *u = &up[sel[i]], *d = &down[sel[i]];
        const moe__mtensor *sc[3] = { g->s, u->s, d->s };
        for (int p = 0; p < 3; p++)
            if (sc[p]->dtype != g->s->dtype)
                return moe__errf(err, errlen, MOE_ERR_DTYPE, "tensor %s: scales of one layer "
                                 "must share a type", sc[p]->name);
        if (g->q->nbytes + u->q->nbytes != s13.data || d->q->nbytes != s2.data)
            return moe__errf(err, errlen, MOE_ERR_SHAPE, "tensor %s: %llu bytes, the format "
                             "needs %zu per projection", g->q->name,
                             (unsigned long long)g->q->nbytes, s13.data / 2);
        if ((s = gidx_check(g->g, u->g, d->g, g->q->name, u->q->name, c->quant_group, &act13,
                            &act2, err, errlen)))
            return s;
    }
    const int awq = f == MOE_FORMAT_INT4_AWQ;
    uint8_t *w13 = own(ml, (size_t)n * s13.data), *sc13 = own(ml, (size_t)n * s13.scales);
    uint8_t *w2 = own(ml, (size_t)n * s2.data), *sc2 = own(ml, (size_t)n * s2.scales);
    uint8_t *z13 = awq ? own(ml, (size_t)n * s13.zeros) : NULL;
    uint8_t *z2 = awq ? own(ml, (size_t)n * s2.zeros) : NULL;
    int32_t *g13 = act13 ? own(ml, (size_t)n * (size_t)H * 4) : NULL;
    int32_t *g2 = act2 ? own(ml, (size_t)n * (size_t)I * 4) : NULL;
    if (!w13 || !sc13 || !w2 || !sc2 || (awq && (!z13 || !z2)) || (act13 && !g13) ||
        (act2 && !g2))
        return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    for (int32_t i = 0; i < n; i++) {
        const moe__qproj *g = &gate[sel[i]], *u = &up[sel[i]], *d = &down[sel[i]];
        cat_rows(w13 + (size_t)i * s13.data, g->q, u->q, 4);
        cat_rows(sc13 + (size_t)i * s13.scales, g->s, u->s, 2);
        memcpy(w2 + (size_t)i * s2.data, d->q->data, s2.data);
        memcpy(sc2 + (size_t)i * s2.scales, d->s->data, s2.scales);
        if (awq) {
            cat_rows(z13 + (size_t)i * s13.zeros, g->z, u->z, 4);
            memcpy(z2 + (size_t)i * s2.zeros, d->z->data, s2.zeros);
        }
        if (g13) gidx_put(g13 + (size_t)i * (size_t)H, g->g, H, c->quant_group);
        if (g2) gidx_put(g2 + (size_t)i * (size_t)I, d->g, I, c->quant_group);
    }
    eo->format = f;
    eo->group_size = c->quant_group;
    eo->scale_format = sf;
    eo->w13 = (moe_weights){ .data = w13, .scales = sc13, .zeros = z13, .g_idx = g13 };
    eo->w2 = (moe_weights){ .data = w2, .scales = sc2, .zeros = z2, .g_idx = g2 };
    return MOE_OK;
}

/* Runs the library's check of format f's side tables (the one experts
 * creation runs) on an (N, K) matrix, so that a bad scale is reported with
 * the checkpoint tensors that hold it (`what`). */
static moe_status check_scales(moe_format f, const moe__mcfg *c, moe_format sf, const char *what,
                               int64_t N, int64_t K, const void *data, const void *scales,
                               float scale2, char *err, size_t errlen) {
    const moe__format_traits *tr = moe__format(f);
    if (!tr || !tr->validate) return MOE_OK;
    moe__wmat w = { .format = f, .rows = N, .cols = K, .group_size = c->quant_group,
                    .scale_format = sf, .data = data, .scales = scales, .scale2 = scale2 };
    char msg[256] = "";
    moe_status s = tr->validate(&w, msg, sizeof msg);
    if (s) return moe__errf(err, errlen, s, "%s: %s", what, msg);
    return MOE_OK;
}

/* check_scales of one checkpoint projection p. */
static moe_status check_proj(moe_format f, const moe__mcfg *c, moe_format sf, const moe__sproj *p,
                             int64_t N, int64_t K, const void *scales, float scale2, char *err,
                             size_t errlen) {
    char what[160];
    snprintf(what, sizeof what, "tensor %s", p->s->name);
    return check_scales(f, c, sf, what, N, K, p->w->data, scales, scale2, err, errlen);
}

/* GPTQ-style tables of one compressed-tensors pack-quantized projection:
 * weight_packed (N, K/per) holds K values of row n in words n*K/per + k/per
 * (value k%per at bits (32/per)*(k%per), stored + 2^(bits-1)), which is GPTQ's
 * word and bit order transposed: GPTQ's qweight is (K/per, N). Writes
 * column col0 + n of qw (K/per, ld) and sc (K/g, ld) (2-byte scales). */
static void ct_to_gptq(const moe__sproj *p, int64_t N, int64_t K, int64_t per, int64_t g,
                       int64_t ld, int64_t col0, uint8_t *qw, uint8_t *sc) {
    const int64_t kw = K / per, ng = K / g;
    for (int64_t n = 0; n < N; n++) {
        for (int64_t k = 0; k < kw; k++)
            memcpy(qw + 4 * (size_t)(k * ld + col0 + n), p->w->data + 4 * (size_t)(n * kw + k), 4);
        for (int64_t k = 0; k < ng; k++)
            memcpy(sc + 2 * (size_t)(k * ld + col0 + n), p->s->data + 2 * (size_t)(n * ng + k), 2);
    }
}

/* ModelOpt / compressed-tensors weights of n experts (expert i = the
 * checkpoint's sel[i]) into eo, format f (quant_format). W13 stacks gate over
 * up (gate rows [0, I), up rows [I, 2I)):
 *   NVFP4        data and block scales concatenated; scale2 = weight_scale_2
 *                (gate's, equal to up's: checked at binding), W4A16;
 *   FP8_TENSOR   data concatenated, then the half with the smaller
 *                weight_scale re-quantized to the larger (moe__fp8_merge_w13_scales);
 *                input_scale = max(gate's, up's) (the input they share), 0 when
 *                the activations are dynamic;
 *   FP8_CHANNEL  data and row scales (as f32) concatenated;
 *   INT*_GPTQ    compressed-tensors pack-quantized repacked into GPTQ's
 *                transposed tables (ct_to_gptq), scales in their own type;
 *                weight_g_idx (actorder group) as gidx_check says.
 * Block and row scales are checked per tensor with the format's own check. */
static moe_status build_scaled(moe_model_layer *ml, const moe__mcfg *c, moe_format f,
                               const moe__sproj *gate, const moe__sproj *up,
                               const moe__sproj *down, const int32_t *sel, int32_t n, int64_t H,
                               int64_t I, moe_experts_options *eo, char *err, size_t errlen) {
    const int gptq = f == MOE_FORMAT_INT4_GPTQ || f == MOE_FORMAT_INT8_GPTQ;
    const moe_format sf = gptq && gate[sel[0]].s->dtype == MOE__DT_BF16 ? MOE_FORMAT_BF16
                                                                        : MOE_FORMAT_F16;
    const moe__format_traits *tr = moe__format(f);
    moe__wsizes s13, s2;
    moe_status s;
    if (!tr || !tr->sizes)
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "format %d has no table entry", (int)f);
    if ((s = tr->sizes(2 * I, H, c->quant_group, sf, &s13, err, errlen)) ||
        (s = tr->sizes(H, I, c->quant_group, sf, &s2, err, errlen)))
        return s;
    uint8_t *w13 = own(ml, (size_t)n * s13.data), *w2 = own(ml, (size_t)n * s2.data);
    uint8_t *sc13 = own(ml, (size_t)n * s13.scales), *sc2 = own(ml, (size_t)n * s2.scales);
    float *g13 = NULL, *g2 = NULL, *in13 = NULL, *in2 = NULL;
    if (f == MOE_FORMAT_NVFP4) {
        g13 = own(ml, (size_t)n * sizeof(float));
        g2 = own(ml, (size_t)n * sizeof(float));
    }
    if (f == MOE_FORMAT_FP8_TENSOR && gate[sel[0]].in) {
        in13 = own(ml, (size_t)n * sizeof(float));
        in2 = own(ml, (size_t)n * sizeof(float));
    }
    if (!w13 || !w2 || !sc13 || !sc2 || (f == MOE_FORMAT_NVFP4 && (!g13 || !g2)) ||
        (f == MOE_FORMAT_FP8_TENSOR && gate[sel[0]].in && (!in13 || !in2)))
        return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    int act13 = 0, act2 = 0; /* act order (absent tensors are trivial) */
    for (int32_t i = 0; gptq && i < n; i++) {
        const moe__sproj *g = &gate[sel[i]], *u = &up[sel[i]], *d = &down[sel[i]];
        if ((s = gidx_check(g->g, u->g, d->g, g->w->name, u->w->name, c->quant_group, &act13,
                            &act2, err, errlen)))
            return s;
    }
    int32_t *x13 = act13 ? own(ml, (size_t)n * (size_t)H * 4) : NULL;
    int32_t *x2 = act2 ? own(ml, (size_t)n * (size_t)I * 4) : NULL;
    if ((act13 && !x13) || (act2 && !x2))
        return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    const size_t half = s13.data / 2, shalf = s13.scales / 2;
    for (int32_t i = 0; i < n; i++) {
        const moe__sproj *g = &gate[sel[i]], *u = &up[sel[i]], *d = &down[sel[i]];
        uint8_t *d13 = w13 + (size_t)i * s13.data, *d2 = w2 + (size_t)i * s2.data;
        uint8_t *t13 = sc13 + (size_t)i * s13.scales, *t2 = sc2 + (size_t)i * s2.scales;
        if (gptq) {
            const int64_t per = 32 / c->quant_bits;
            const moe__sproj *ps[3] = { g, u, d };
            for (int k = 0; k < 3; k++)
                if (ps[k]->s->dtype != gate[sel[0]].s->dtype)
                    return moe__errf(err, errlen, MOE_ERR_DTYPE, "tensor %s: scales of one layer "
                                     "must share a type", ps[k]->s->name);
            ct_to_gptq(g, I, H, per, c->quant_group, 2 * I, 0, d13, t13);
            ct_to_gptq(u, I, H, per, c->quant_group, 2 * I, I, d13, t13);
            ct_to_gptq(d, H, I, per, c->quant_group, H, 0, d2, t2);
            if (x13) gidx_put(x13 + (size_t)i * (size_t)H, g->g, H, c->quant_group);
            if (x2) gidx_put(x2 + (size_t)i * (size_t)I, d->g, I, c->quant_group);
            /* the scale check reads only the scales: run it on the repacked tables */
            char what[160];
            snprintf(what, sizeof what, "tensors %s / %s", g->s->name, u->s->name);
            if ((s = check_scales(f, c, sf, what, 2 * I, H, d13, t13, 1, err, errlen)))
                return s;
            snprintf(what, sizeof what, "tensor %s", d->s->name);
            if ((s = check_scales(f, c, sf, what, H, I, d2, t2, 1, err, errlen))) return s;
            continue;
        }
        memcpy(d13, g->w->data, half);
        memcpy(d13 + half, u->w->data, half);
        memcpy(d2, d->w->data, s2.data);
        if (f == MOE_FORMAT_NVFP4) {
            memcpy(t13, g->s->data, shalf);
            memcpy(t13 + shalf, u->s->data, shalf);
            memcpy(t2, d->s->data, s2.scales);
            g13[i] = g->gscale;
            g2[i] = d->gscale;
            if ((s = check_proj(f, c, sf, g, I, H, t13, g13[i], err, errlen)) ||
                (s = check_proj(f, c, sf, u, I, H, t13 + shalf, g13[i], err, errlen)) ||
                (s = check_proj(f, c, sf, d, H, I, t2, g2[i], err, errlen)))
                return s;
        } else if (f == MOE_FORMAT_FP8_TENSOR) {
            float s13v, s2v = moe__mtensor_f32(d->s, 0);
            if ((s = moe__fp8_merge_w13_scales(d13, I, H, moe__mtensor_f32(g->s, 0),
                                               moe__mtensor_f32(u->s, 0), &s13v, err, errlen)))
                return s;
            memcpy(t13, &s13v, 4);
            memcpy(t2, &s2v, 4);
            if (in13) {
                float a = moe__mtensor_f32(g->in, 0), b = moe__mtensor_f32(u->in, 0);
                in13[i] = a > b ? a : b;
                in2[i] = moe__mtensor_f32(d->in, 0);
            }
        } else { /* FP8_CHANNEL: row scales to f32 */
            float *f13 = (float *)(void *)t13, *f2 = (float *)(void *)t2;
            for (int64_t r = 0; r < I; r++) {
                f13[r] = moe__mtensor_f32(g->s, r);
                f13[I + r] = moe__mtensor_f32(u->s, r);
            }
            for (int64_t r = 0; r < H; r++) f2[r] = moe__mtensor_f32(d->s, r);
            if ((s = check_proj(f, c, sf, g, I, H, f13, 1, err, errlen)) ||
                (s = check_proj(f, c, sf, u, I, H, f13 + I, 1, err, errlen)) ||
                (s = check_proj(f, c, sf, d, H, I, f2, 1, err, errlen)))
                return s;
        }
    }
    eo->format = f;
    eo->group_size = gptq ? c->quant_group : 0;
    eo->scale_format = gptq ? sf : MOE_FORMAT_F32;
    eo->w13 = (moe_weights){ .data = w13, .scales = sc13, .scale2 = g13, .input_scale = in13,
                             .g_idx = x13 };
    eo->w2 = (moe_weights){ .data = w2, .scales = sc2, .scale2 = g2, .input_scale = in2,
                            .g_idx = x2 };
    return MOE_OK;
}

/* Builds w13 / w2 weights (and biases) of the routed experts into eo: the
 * n_local experts held here, local expert i being the model's sel[i]. */
static moe_status build_routed(moe_model_layer *ml, const moe_model *m, const moe__mlayer *b,
                               const int32_t *sel, int32_t n_local, moe_experts_options *eo, char *err,
                               size_t errlen) {
    const moe__mcfg *c = &m->cfg;
    const int32_t E = n_local, E_all = c->n_experts;
    const int64_t H = c->d_model, I = c->d_ff;
    moe__wsizes s13, s2;
    moe_status s;
    if (b->sgate) {
        *eo = (moe_experts_options){ .n_experts = E, .d_model = H, .d_ff = I,
                                     .w2_format = &b->format2, .activation = c->activation,
                                     .flags = MOE_EXPERTS_BORROW };
        return build_scaled(ml, c, b->format, b->sgate, b->sup, b->sdown, sel, E, H, I, eo, err,
                            errlen);
    }
    if (b->qgate) {
        *eo = (moe_experts_options){ .n_experts = E, .d_model = H, .d_ff = I,
                                     .w2_format = &b->format2, .activation = c->activation,
                                     .flags = MOE_EXPERTS_BORROW };
        return build_quant(ml, c, b->format, b->qgate, b->qup, b->qdown, sel, E, H, I, eo, err,
                           errlen);
    }
    if ((s = sizes(b->format, 2 * I, H, &s13, err, errlen)) || (s = sizes(b->format2, H, I, &s2, err, errlen)))
        return s;
    const size_t al = data_align(b->format), al2 = data_align(b->format2);
    *eo = (moe_experts_options){ .n_experts = E, .d_model = H, .d_ff = I, .format = b->format,
                                 .w2_format = &b->format2,
                                 .activation = c->activation, .swiglu_alpha = c->swiglu_alpha,
                                 .swiglu_limit = c->swiglu_limit, .flags = MOE_EXPERTS_BORROW };
    if (b->layout == MOE__LAYOUT_FUSED) {
        if ((s = check_bytes(b->w13, (uint64_t)E_all * s13.data, err, errlen)) ||
            (s = check_bytes(b->w2, (uint64_t)E_all * s2.data, err, errlen)) ||
            (b->w13_s && (s = check_bytes(b->w13_s, (uint64_t)E_all * s13.scales, err, errlen))) ||
            (b->w2_s && (s = check_bytes(b->w2_s, (uint64_t)E_all * s2.scales, err, errlen))))
            return s;
        eo->w13.data = pick(ml, b->w13->data, s13.data, sel, E, al);
        eo->w2.data = pick(ml, b->w2->data, s2.data, sel, E, al2);
        if (b->w13_s && !(eo->w13.scales = pick(ml, b->w13_s->data, s13.scales, sel, E, 4)))
            return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
        if (b->w2_s && !(eo->w2.scales = pick(ml, b->w2_s->data, s2.scales, sel, E, 4)))
            return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    } else if (b->layout == MOE__LAYOUT_TRANSPOSED) {
        size_t es = moe__plain_size(b->format);
        if (!es) return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "transposed experts must be plain");
        uint8_t *w13 = own(ml, (size_t)E * s13.data), *w2 = own(ml, (size_t)E * s2.data);
        if (!w13 || !w2) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
        /* gate_up (E, H, 2I) -> W13 (E, 2I, H); down (E, I, H) -> W2 (E, H, I) */
        for (int32_t e = 0; e < E; e++) {
            const uint8_t *src = b->w13->data + (size_t)sel[e] * s13.data;
            uint8_t *dst = w13 + (size_t)e * s13.data;
            for (int64_t h = 0; h < H; h++)
                for (int64_t r = 0; r < 2 * I; r++)
                    memcpy(dst + ((size_t)r * (size_t)H + (size_t)h) * es,
                           src + ((size_t)h * (size_t)(2 * I) + (size_t)r) * es, es);
            src = b->w2->data + (size_t)sel[e] * s2.data;
            dst = w2 + (size_t)e * s2.data;
            for (int64_t i = 0; i < I; i++)
                for (int64_t h = 0; h < H; h++)
                    memcpy(dst + ((size_t)h * (size_t)I + (size_t)i) * es,
                           src + ((size_t)i * (size_t)H + (size_t)h) * es, es);
        }
        eo->w13.data = w13;
        eo->w2.data = w2;
    } else { /* SPLIT */
        const size_t half = s13.data / 2, rowb = s13.data / (size_t)(2 * I);
        uint8_t *w13 = own(ml, (size_t)E * s13.data);
        if (!w13) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
        if (b->stacked) {
            if ((s = check_bytes(b->gate[0], (uint64_t)E_all * half, err, errlen)) ||
                (s = check_bytes(b->up[0], (uint64_t)E_all * half, err, errlen)) ||
                (s = check_bytes(b->down[0], (uint64_t)E_all * s2.data, err, errlen)))
                return s;
        } else {
            for (int32_t e = 0; e < E_all; e++)
                if ((s = check_bytes(b->gate[e], half, err, errlen)) ||
                    (s = check_bytes(b->up[e], half, err, errlen)) ||
                    (s = check_bytes(b->down[e], s2.data, err, errlen)))
                    return s;
        }
        for (int32_t e = 0; e < E; e++) {
            const uint8_t *g = mat(b->gate, b->stacked, sel[e], half), *u = mat(b->up, b->stacked, sel[e], half);
            uint8_t *dst = w13 + (size_t)e * s13.data;
            if (b->interleave) {
                for (int64_t i = 0; i < I; i++) {
                    memcpy(dst + (size_t)(2 * i) * rowb, g + (size_t)i * rowb, rowb);
                    memcpy(dst + (size_t)(2 * i + 1) * rowb, u + (size_t)i * rowb, rowb);
                }
            } else {
                memcpy(dst, g, half);
                memcpy(dst + half, u, half);
            }
        }
        eo->w13.data = w13;
        if (b->stacked) {
            eo->w2.data = pick(ml, b->down[0]->data, s2.data, sel, E, al2);
        } else {
            uint8_t *w2 = own(ml, (size_t)E * s2.data);
            if (!w2) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
            for (int32_t e = 0; e < E; e++) memcpy(w2 + (size_t)e * s2.data, b->down[sel[e]]->data, s2.data);
            eo->w2.data = w2;
        }
        if (b->gate_s) { /* FP8 block: scale tables of gate then up (I % 128 == 0) */
            uint8_t *sc13 = own(ml, (size_t)E * s13.scales), *sc2 = own(ml, (size_t)E * s2.scales);
            if (!sc13 || !sc2) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
            for (int32_t e = 0; e < E; e++) {
                const int32_t x = sel[e];
                if ((s = check_bytes(b->gate_s[x], s13.scales / 2, err, errlen)) ||
                    (s = check_bytes(b->up_s[x], s13.scales / 2, err, errlen)) ||
                    (s = check_bytes(b->down_s[x], s2.scales, err, errlen)))
                    return s;
                memcpy(sc13 + (size_t)e * s13.scales, b->gate_s[x]->data, s13.scales / 2);
                memcpy(sc13 + (size_t)e * s13.scales + s13.scales / 2, b->up_s[x]->data, s13.scales / 2);
                memcpy(sc2 + (size_t)e * s2.scales, b->down_s[x]->data, s2.scales);
            }
            eo->w13.scales = sc13;
            eo->w2.scales = sc2;
        }
    }
    if (!eo->w13.data || !eo->w2.data) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    /* expert biases, f32, in W13's row order */
    if (b->b13 || b->b_gate) {
        float *bias = own(ml, (size_t)E * (size_t)(2 * I) * sizeof(float));
        if (!bias) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
        for (int32_t e = 0; e < E; e++) {
            float *row = bias + (size_t)e * (size_t)(2 * I);
            const int64_t x = sel[e];
            if (b->b13) {
                for (int64_t r = 0; r < 2 * I; r++) row[r] = moe__mtensor_f32(b->b13, x * 2 * I + r);
                continue;
            }
            for (int64_t i = 0; i < I; i++) {
                float g = moe__mtensor_f32(b->b_gate, x * I + i);
                float u = moe__mtensor_f32(b->b_up, x * I + i);
                if (b->interleave) { row[2 * i] = g; row[2 * i + 1] = u; }
                else { row[i] = g; row[I + i] = u; }
            }
        }
        eo->w13.bias = bias;
    }
    if (b->b2) {
        float *bias = own(ml, (size_t)E * (size_t)H * sizeof(float));
        if (!bias) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
        for (int32_t e = 0; e < E; e++)
            for (int64_t h = 0; h < H; h++)
                bias[(size_t)e * (size_t)H + (size_t)h] = moe__mtensor_f32(b->b2, (int64_t)sel[e] * H + h);
        eo->w2.bias = bias;
    }
    return MOE_OK;
}

static moe_status build_shared(moe_model_layer *ml, const moe_model *m, const moe__mlayer *b,
                               moe_shared_options *so, char *err, size_t errlen) {
    const moe__mcfg *c = &m->cfg;
    const int64_t H = c->d_model, S = c->d_ff_shared;
    moe__wsizes s13, s2;
    moe_status s;
    if (b->sh_format == MOE_FORMAT_COUNT || b->sh_format2 == MOE_FORMAT_COUNT)
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "shared expert tensors of type %s/%s/%s "
                         "have no libmoe format", moe__dtype_get(b->sh_gate->dtype)->name,
                         moe__dtype_get(b->sh_up->dtype)->name, moe__dtype_get(b->sh_down->dtype)->name);
    if (b->sh_s[0].w) {
        const int32_t only = 0;
        *so = (moe_shared_options){ .mlp = { .n_experts = 1, .d_model = H, .d_ff = S,
                                             .w2_format = &b->sh_format2,
                                             .activation = MOE_ACT_SILU,
                                             .flags = MOE_EXPERTS_BORROW } };
        if ((s = build_scaled(ml, c, b->sh_format, &b->sh_s[0], &b->sh_s[1], &b->sh_s[2], &only,
                              1, H, S, &so->mlp, err, errlen)))
            return s;
        if (b->sh_gate_w && !(so->gate = to_f32(ml, b->sh_gate_w, H)))
            return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
        return MOE_OK;
    }
    if (b->sh_q[0].q) {
        const int32_t only = 0;
        *so = (moe_shared_options){ .mlp = { .n_experts = 1, .d_model = H, .d_ff = S,
                                             .w2_format = &b->sh_format2,
                                             .activation = MOE_ACT_SILU,
                                             .flags = MOE_EXPERTS_BORROW } };
        if ((s = build_quant(ml, c, b->sh_format, &b->sh_q[0], &b->sh_q[1], &b->sh_q[2], &only, 1,
                             H, S, &so->mlp, err, errlen)))
            return s;
        if (b->sh_gate_w && !(so->gate = to_f32(ml, b->sh_gate_w, H)))
            return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
        return MOE_OK;
    }
    if ((s = sizes(b->sh_format, 2 * S, H, &s13, err, errlen)) || (s = sizes(b->sh_format2, H, S, &s2, err, errlen)))
        return s;
    if ((s = check_bytes(b->sh_gate, s13.data / 2, err, errlen)) ||
        (s = check_bytes(b->sh_up, s13.data / 2, err, errlen)) ||
        (s = check_bytes(b->sh_down, s2.data, err, errlen)))
        return s;
    uint8_t *w13 = own(ml, s13.data);
    if (!w13) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    memcpy(w13, b->sh_gate->data, s13.data / 2);
    memcpy(w13 + s13.data / 2, b->sh_up->data, s13.data / 2);
    *so = (moe_shared_options){ .mlp = { .n_experts = 1, .d_model = H, .d_ff = S, .format = b->sh_format,
                                         .w2_format = &b->sh_format2,
                                         .activation = MOE_ACT_SILU, .flags = MOE_EXPERTS_BORROW } };
    so->mlp.w13.data = w13;
    so->mlp.w2.data = view(ml, b->sh_down->data, s2.data, data_align(b->sh_format2));
    if (b->sh_gate_s) {
        if ((s = check_bytes(b->sh_gate_s, s13.scales / 2, err, errlen)) ||
            (s = check_bytes(b->sh_up_s, s13.scales / 2, err, errlen)) ||
            (s = check_bytes(b->sh_down_s, s2.scales, err, errlen)))
            return s;
        uint8_t *sc = own(ml, s13.scales);
        if (!sc) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
        memcpy(sc, b->sh_gate_s->data, s13.scales / 2);
        memcpy(sc + s13.scales / 2, b->sh_up_s->data, s13.scales / 2);
        so->mlp.w13.scales = sc;
        so->mlp.w2.scales = view(ml, b->sh_down_s->data, s2.scales, 4);
    }
    if (b->sh_gate_w && !(so->gate = to_f32(ml, b->sh_gate_w, H)))
        return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    if (!so->mlp.w2.data || (b->sh_gate_s && !so->mlp.w2.scales))
        return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    return MOE_OK;
}

moe_status moe_model_layer_create(const moe_model *m, int32_t layer, const moe_layer_options *base,
                                  moe_model_layer **out, char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (!m || !out) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "NULL model or out");
    *out = NULL;
    const moe__mcfg *c = &m->cfg;
    if (layer < 0 || layer >= c->n_layers)
        return moe__errf(err, errlen, MOE_ERR_RANGE, "layer %d outside [0, %d)", layer, c->n_layers);
    if (!c->is_moe[layer])
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "layer %d is not a MoE layer", layer);
    moe__mlayer b;
    moe_status s = moe__model_bind(m, layer, &b, err, errlen);
    if (s) return s;
    moe_model_layer *ml = moe__calloc(1, sizeof *ml);
    if (!ml) {
        moe__mlayer_free(&b);
        return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    }
    if (b.format == MOE_FORMAT_COUNT || b.format2 == MOE_FORMAT_COUNT) {
        const moe__mtensor *t = b.w13 ? b.w13 : b.gate[0];
        s = moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "layer %d: expert tensor %s of type %s (down: "
                      "%s) has no libmoe format", layer, t->name, moe__dtype_get(t->dtype)->name,
                      moe__dtype_get((b.w2 ? b.w2 : b.down[0])->dtype)->name);
        goto fail;
    }
    const int32_t E = c->n_experts;
    const int64_t H = c->d_model;
    moe_router_options ro = {
        .n_experts = E, .top_k = c->top_k, .scoring = c->scoring, .renormalize = c->renormalize,
        .n_group = c->n_group, .topk_group = c->topk_group,
        .routed_scaling_factor = c->routed_scaling_factor, .d_model = H,
    };
    if (!(ro.gate_weight = to_f32(ml, b.router_w, (int64_t)E * H)) ||
        (b.router_b && !(ro.gate_bias = to_f32(ml, b.router_b, E))) ||
        (b.corr_b && !(ro.correction_bias = to_f32(ml, b.corr_b, E)))) {
        s = moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if ((s = moe_router_create(&ro, &ml->router, err, errlen))) goto fail;
    /* Expert parallel: only this rank's experts, local i = the logical
     * expert in physical slot to_global(i) of the map. */
    const moe_parallel *par = base ? base->parallel : NULL;
    int32_t n_local = E;
    if (par && par->mode != MOE_PARALLEL_EP) {
        s = moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "model layers: tensor parallel is not supported "
                      "(expert parallel is)");
        goto fail;
    }
    if (par && (!par->map || moe_expert_map_n_logical(par->map) != E)) {
        s = moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "model layer %d: the expert map must have the "
                      "model's %d experts", layer, E);
        goto fail;
    }
    if (par) n_local = moe_expert_map_n_local(par->map);
    int32_t *sel = own(ml, (size_t)(n_local > 0 ? n_local : 1) * sizeof *sel);
    if (!sel) {
        s = moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (int32_t i = 0; i < n_local; i++)
        sel[i] = par ? moe_expert_map_logical(par->map, moe_expert_map_to_global(par->map, i)) : i;
    moe_experts_options eo;
    if ((s = build_routed(ml, m, &b, sel, n_local, &eo, err, errlen))) goto fail;
    if (par) {
        eo.n_experts_global = moe_expert_map_n_physical(par->map);
        eo.expert_map = moe_expert_map_table(par->map);
    }
    if ((s = moe_routed_experts_create(&eo, &ml->experts, err, errlen))) goto fail;
    if (b.sh_gate) {
        moe_shared_options so;
        if ((s = build_shared(ml, m, &b, &so, err, errlen)) ||
            (s = moe_shared_experts_create(&so, &ml->shared, err, errlen)))
            goto fail;
    }
    moe_layer_options lo = base ? *base : (moe_layer_options){ .max_tokens = 256 };
    lo.router = ml->router;
    lo.experts = ml->experts;
    lo.shared = ml->shared;
    if ((s = moe_layer_create(&lo, &ml->layer, err, errlen))) goto fail;
    moe__mlayer_free(&b);
    *out = ml;
    return MOE_OK;
fail:
    moe__mlayer_free(&b);
    moe_model_layer_destroy(ml);
    return s;
}

void moe_model_layer_destroy(moe_model_layer *ml) {
    if (!ml) return;
    moe_layer_destroy(ml->layer);
    moe_shared_experts_destroy(ml->shared);
    moe_routed_experts_destroy(ml->experts);
    moe_router_destroy(ml->router);
    for (int i = 0; i < ml->n_owned; i++) moe__free(ml->owned[i]);
    moe__free(ml);
}

moe_layer *moe_model_layer_layer(const moe_model_layer *l) { return l ? l->layer : NULL; }
moe_router *moe_model_layer_router(const moe_model_layer *l) { return l ? l->router : NULL; }
moe_routed_experts *moe_model_layer_experts(const moe_model_layer *l) { return l ? l->experts : NULL; }
moe_shared_experts *moe_model_layer_shared(const moe_model_layer *l) { return l ? l->shared : NULL; }
