/*
 * internal.h - what every part of libmoe shares and the public header hides:
 * allocation and error helpers, the format table, the weight-matrix view, the
 * two kernel interfaces (prepare/finalize and experts) and the objects behind
 * the public handles.
 *
 * Internal non-static names start with moe__ (libuv's uv__).
 */
#ifndef MOE_INTERNAL_H
#define MOE_INTERNAL_H

#include "moe.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ===== Allocation, errors, asserts ===== */

void *moe__malloc(size_t size);                 /* through moe_set_allocator's hook    */
void *moe__calloc(size_t n, size_t size);       /* overflow-checked, zeroed            */
void  moe__free(void *p);
/* 64-byte aligned block from moe__malloc; free with moe__aligned_free. */
void *moe__aligned_alloc(size_t size);
void  moe__aligned_free(void *p);

/* Writes "fmt ..." into err (if not NULL) and returns s. */
moe_status moe__errf(char *err, size_t errlen, moe_status s, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
moe_status moe__verrf(char *err, size_t errlen, moe_status s, const char *fmt, va_list ap);

void moe__log(moe_log_level level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Broken invariant inside the library: abort callback, then abort(). */
_Noreturn void moe__abort(const char *file, int line, const char *fmt, ...);
#define MOE_ASSERT(x)                                                   \
    do {                                                                \
        if (!(x)) moe__abort(__FILE__, __LINE__, "assert(%s)", #x);     \
    } while (0)

/* Checked arithmetic: false on overflow (result untouched). */
static inline bool moe__mul_ok(size_t a, size_t b, size_t *r) {
    return !__builtin_mul_overflow(a, b, r);
}
static inline bool moe__add_ok(size_t a, size_t b, size_t *r) {
    return !__builtin_add_overflow(a, b, r);
}
static inline size_t moe__align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

/* ===== Scalar conversions (exact, round-to-nearest-even where rounding) ===== */

static inline float moe__bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = { (uint32_t)h << 16 };
    return v.f;
}
static inline uint16_t moe__f32_to_bf16(float f) {
    union { float f; uint32_t u; } v = { f };
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40); /* quiet NaN */
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}
float    moe__f16_to_f32(uint16_t h);
uint16_t moe__f32_to_f16(float f);

/* Converts n elements between f32 and F32/BF16/F16 storage. */
void moe__to_f32(moe_format f, const void *src, float *dst, int64_t n);
void moe__from_f32(moe_format f, const float *src, void *dst, int64_t n);
/* Bytes per element of a plain type (F32, BF16, F16); 0 for other formats. */
size_t moe__plain_size(moe_format f);

/* ===== Weight matrices =====
 *
 * One expert's projection, (rows, cols) with cols = K the reduction
 * dimension, as a view into the experts' storage. Every backend reads weights
 * through this view, and the format table says how its side tables are laid
 * out.
 */
typedef struct moe__wmat {
    moe_format     format;
    int64_t        rows, cols;
    int32_t        group_size;   /* group formats                                        */
    moe_format     scale_format; /* group formats: F16 or BF16                           */
    const void    *data;         /* this expert's packed weights                         */
    const void    *scales;       /* this expert's scale table (layout: format table)     */
    const void    *zeros;        /* this expert's zero points, or NULL                   */
    const int32_t *g_idx;        /* (cols), or NULL                                      */
    /* GPTQ act-order whose every group has group_size columns (as the
     * quantizers make them): the columns sorted stably by group,
     * k_order[j] = the column at place j, so places [g G, (g + 1) G) are
     * group g's. The CPU kernels then run K in this order with the grouped
     * kernels (moe__gidx_order). NULL: no g_idx, or groups of other sizes. */
    const int32_t *k_order;
    float          scale2;       /* second-level scale (NVFP4), 1 when unused            */
    float          input_scale;  /* static activation scale (FP8_TENSOR), 0 = dynamic    */
    const float   *bias;         /* (rows), or NULL                                      */
} moe__wmat;

/* GPTQ act-order: 1 when every group of g_idx (cols values in [0, cols /
 * group_size), as validated) holds exactly group_size columns, and then
 * order (cols) = the columns sorted stably by group (moe__wmat.k_order);
 * 0 when some group holds another count (order untouched); -1 when out of
 * memory. */
int moe__gidx_order(const int32_t *g_idx, int64_t cols, int32_t group_size, int32_t *order);

/* Bytes per expert of each table of a (rows, cols) matrix. */
typedef struct moe__wsizes {
    size_t data, scales, zeros, g_idx;
} moe__wsizes;

/* ===== The format table (src/core/formats.c, entries from src/quant/) =====
 *
 * One entry per moe_format. NULL hooks mean "not needed" (e.g. no activation
 * quantization for weight-only formats).
 */
typedef struct moe__format_traits {
    moe_format_info info;
    /* Per-expert table sizes for a (rows, cols) matrix. MOE_ERR_SHAPE with a
     * message when cols does not fit the block or group. */
    moe_status (*sizes)(int64_t rows, int64_t cols, int32_t group_size, moe_format scale_format,
                        moe__wsizes *s, char *err, size_t errlen);
    /* Checks side tables read from outside (finite positive scales, e8m0 != 0xFF,
     * g_idx in range); NULL = nothing to check. */
    moe_status (*validate)(const moe__wmat *w, char *err, size_t errlen);
    /* Reference dequantization of row r to f32 (cols values). Scalar, exact. */
    void (*dequant_row_ref)(const moe__wmat *w, int64_t r, float *out);
    /* Reference quantization of a (rows, cols) f32 matrix into the format
     * (tests and synthetic layers): fills data/scales/zeros of w, whose
     * pointers the caller allocated with sizes(). NULL for plain types, which
     * use moe__from_f32. */
    moe_status (*quantize_ref)(const float *src, moe__wmat *w);
    /* The activation quantization the format's kernels apply to their input
     * row (cols values), emulated: quantize then dequantize, in place. NULL =
     * activations stay f32. w gives static scales where the format has them. */
    void (*act_fake_quant_ref)(const moe__wmat *w, float *x, int64_t cols);
} moe__format_traits;

/* Entry for f (NULL when out of range). */
const moe__format_traits *moe__format(moe_format f);

/* ===== Thread pool (src/core/pool.c) =====
 *
 * A parallel-for: moe__pool_run() calls fn(arg, task, thread) for every task
 * in [0, n_tasks) across the pool's threads and the caller (thread 0), and
 * returns when all are done. Tasks are taken in increasing order from an
 * atomic counter, so which thread runs a task is not fixed: results must not
 * depend on it. spin_us: how long a thread polls before it sleeps (0: 1000;
 * -1: never), moe_context_options'.
 */
typedef struct moe__pool moe__pool;
typedef void (*moe__task_fn)(void *arg, int64_t task, int thread);

moe_status moe__pool_create(int n_threads, int spin_us, moe__pool **out);
void       moe__pool_destroy(moe__pool *p);
int        moe__pool_n_threads(const moe__pool *p);
void       moe__pool_run(moe__pool *p, int64_t n_tasks, moe__task_fn fn, void *arg);

/* ===== Objects behind the public handles ===== */

struct moe_router {
    moe_router_options opts;      /* pointers below replace the caller's            */
    float             *correction_bias; /* (n_experts) or NULL                      */
    float             *gate_weight;     /* (n_experts, d_model) or NULL             */
    float             *gate_bias;       /* (n_experts) or NULL                      */
};

struct moe_routed_experts {
    moe_experts_options opts;     /* weight pointers point at owned copies unless borrowed */
    moe__wsizes         s13, s2;  /* per-expert table sizes                               */
    moe_format          fmt13, fmt2;  /* each matrix's format; opts.w2_format points at fmt2 */
    int32_t             n_experts_global;
    int32_t            *expert_map;   /* (n_experts_global) global -> local, -1 = remote  */
    void               *owned;        /* one block holding copied tables, or NULL         */
    /* Backend copies or repacks of the weights (e.g. a CUDA upload), made when
     * a layer first binds these experts to an implementation, freed here. */
    void               *impl_state[4];
    void              (*impl_free[4])(void *state);
    /* GPTQ act-order column orders (moe__wmat.k_order), (n_experts, cols)
     * per projection with g_idx, else NULL; an expert whose groups are not
     * all group_size columns has -1 as its first entry. */
    int32_t            *k_order13, *k_order2;
};

/* Views of expert e's (local id) two matrices. */
moe__wmat moe__experts_w13(const moe_routed_experts *e, int32_t expert);
moe__wmat moe__experts_w2(const moe_routed_experts *e, int32_t expert);
/* (Re)builds k_order13 / k_order2 from the g_idx tables: at creation, and
 * after a migration has rewritten them. MOE_ERR_NOMEM with a message. */
moe_status moe__experts_order(moe_routed_experts *e, char *err, size_t errlen);
/* Rows of W13 per expert: 2 d_ff for gated activations, d_ff for RELU2. */
int64_t   moe__w13_rows(const moe_experts_options *o);
/* W2's format: *o->w2_format, or o->format when that is NULL. */
moe_format moe__w2_format(const moe_experts_options *o);

struct moe_shared_experts {
    moe_routed_experts *mlp;      /* one expert                                     */
    float              *gate;     /* (d_model) or NULL                              */
};

struct moe_context {
    moe_context_options opts;
    moe__pool          *pool;
    void               *cuda;     /* CUDA backend state (streams), or NULL           */
    void              (*cuda_free)(void *cuda); /* frees cuda, set by the CUDA backend */
};

/* ===== The modular kernel =====
 *
 * prepare/finalize (P/F) moves tokens to the experts and results back;
 * the experts implementation computes the expert MLPs. Between the two, the
 * "contiguous" layout: token slots sorted by local expert.
 *
 *   slot s = t * top_k + j  (token t, its j-th choice)
 */
typedef struct moe__dispatch {
    int64_t        n_tokens;
    int32_t        top_k;
    int64_t        d_model;
    const float   *x;            /* (n_tokens, d_model) f32 activations                   */
    const int32_t *topk_ids;     /* (n_tokens, top_k) global ids                           */
    const float   *topk_w;       /* (n_tokens, top_k) routing weights                      */
    /* Llama-4: per-slot factor applied to x before W13 (the routing weight);
     * finalize then sums with weight 1. NULL otherwise. */
    const float   *in_scale;     /* (n_tokens * top_k) or NULL                             */
    int32_t        n_local;      /* experts held here                                      */
    const int32_t *expert_start; /* (n_local + 1) first row of each local expert           */
    const int32_t *row_slot;     /* (n_rows) the slot of each row, by expert then slot     */
    int64_t        n_rows;       /* slots whose expert is held here                        */
    float         *y;            /* (n_tokens * top_k, d_model) unweighted expert outputs  */
} moe__dispatch;

/* One experts computation: these experts on this dispatch. A shared-experts
 * job is a one-expert job whose rows are all tokens, with gate applied. */
typedef struct moe__experts_job {
    const moe_routed_experts *experts;
    const moe__dispatch      *d;
    const float              *gate;  /* shared experts' sigmoid gate (d_model), or NULL */
} moe__experts_job;

/* Execution environment of one call. */
typedef struct moe__exec {
    moe_context *ctx;
    char        *err;              /* the layer's message buffer                     */
    size_t       errlen;
} moe__exec;

typedef struct moe__experts_impl {
    const char *name;
    moe_backend backend;
    /* NULL when this implementation can run these experts, else a static
     * sentence saying why not ("format q4_k has no kernel"). */
    const char *(*rejects)(const moe_routed_experts *e);
    /* (optional) Packs or uploads weights once; stored in e->impl_state. */
    moe_status  (*bind)(moe_routed_experts *e, moe_context *ctx, char *err, size_t errlen);
    /* Workspace for jobs of up to n_rows rows in total. */
    size_t      (*workspace_size)(const moe_routed_experts *e, int64_t n_rows, int n_threads);
    /* Runs the jobs (one or two: routed, and shared when overlapped) and
     * writes d->y rows of each. Concurrent jobs share the workspace: each
     * job's workspace_size is summed by the caller, in job order. */
    moe_status  (*run)(const moe__experts_job *jobs, int n_jobs, moe__exec *ex,
                       void *workspace, size_t workspace_size);
} moe__experts_impl;

typedef struct moe__prepare_finalize_impl {
    const char *name;
    size_t      (*workspace_size)(const moe_layer *l, int64_t n_tokens);
    /* Builds d for the local experts from routing (ids and weights already
     * validated). */
    moe_status  (*prepare)(moe_layer *l, moe__dispatch *d, void *ws, size_t ws_size);
    /* out (n_tokens, d_model) f32 = sum over slots j in order of
     * w[t, j] * y[t*top_k + j] (weight 1 with in_scale), over slots held
     * anywhere, then + shared_y[t] when shared_y is not NULL. */
    moe_status  (*finalize)(moe_layer *l, const moe__dispatch *d, const float *shared_y,
                            float *out);
    /* (optional) Most rows prepare can hand the experts for n_tokens local
     * tokens (expert parallel: rows arrive from every rank); NULL = n_tokens
     * * top_k. The layer sizes the experts' workspace with it. */
    int64_t     (*max_rows)(const moe_layer *l, int64_t n_tokens);
    /* Runs forwards of 0 tokens too: every rank must take part (EP, TP). */
    bool        collective;
} moe__prepare_finalize_impl;

/* The parallel prepare/finalize for o->parallel (src/ep/comm.c): *pf = NULL
 * when o->parallel is NULL (use local); an error when the request cannot
 * run (wrong map, broken communicator, transport not built). */
moe_status moe__ep_select_pf(const moe_layer_options *o, const moe__prepare_finalize_impl **pf,
                             char *err, size_t errlen);

/* Scalar activation of one row (src/core/activation.c): h holds the W13
 * outputs (moe__w13_rows values), a receives d_ff values. The f64 version
 * serves the reference experts. */
void moe__activate_row(const moe_experts_options *o, const float *h, float *a);
void moe__activate_row_f64(const moe_experts_options *o, const double *h, double *a);

/* The combine every prepare/finalize ends with (src/kernel/combine.c):
 * out[t] = sum over slots j in order of w[t, j] * y[row(t, j)], + shared_y[t],
 * in fp32. One function, so that every transport gives the same bits. */
typedef struct moe__combine {
    int64_t        n_tokens;
    int32_t        top_k;
    int64_t        d_model;
    const float   *topk_w;     /* (n_tokens * top_k)                                   */
    bool           weight_one; /* weights were applied on the input (Llama-4)          */
    const float   *y;          /* expert outputs, rows of d_model                      */
    const int32_t *row;        /* (n_tokens * top_k) row of y per slot; NULL = slot s  */
    /* With map: slot s contributes only when map[topk_ids[s]] >= 0. */
    const int32_t *topk_ids;   /* (n_tokens * top_k) or NULL                           */
    const int32_t *map;        /* global -> local expert map, or NULL                  */
    const float   *shared_y;   /* (n_tokens, d_model) or NULL                          */
    float         *out;        /* (n_tokens, d_model)                                  */
} moe__combine;
void moe__combine_run(const moe__combine *c, moe__pool *pool);

/* Registered implementations (src/kernel/, src/cpu/, src/cuda/). */
extern const moe__experts_impl          moe__experts_ref;
extern const moe__experts_impl          moe__experts_cpu;
extern const moe__prepare_finalize_impl moe__pf_local;

struct moe_layer {
    moe_layer_options                 opts;
    moe_context                      *ctx;
    moe_context                      *own_ctx;   /* private context, or NULL      */
    const moe__experts_impl          *experts_impl;
    const moe__prepare_finalize_impl *pf;
    void                             *cuda;      /* CUDA backend's layer state (router
                                                  * tables on the device), or NULL   */
    char                              err[512];
};

/* Workspace carving: take `size` bytes (64-aligned) from *cursor within
 * [base, base + total). Returns NULL when it does not fit. */
void *moe__ws_take(char **cursor, const char *end, size_t size);

#endif /* MOE_INTERNAL_H */
