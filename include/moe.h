/*
 * moe.h - libmoe, the Mixture-of-Experts layer of large language models in C.
 *
 * This header is the whole public API and its manual. What is not declared
 * here is not part of the API.
 *
 * ===== Overview =====
 *
 * One MoE layer forward, for n_tokens tokens of width d_model:
 *
 *     logits[t, e]           = x[t] . gate[e]                      (router linear, optional)
 *     (ids[t, :], w[t, :])   = route(logits[t])                    (top_k experts per token)
 *     out[t] = scale * sum_j w[t, j] * Expert_{ids[t, j]}(x[t])  +  Shared(x[t])
 *     Expert_e(x)            = W2[e] . act(W13[e] . x + b13[e]) + b2[e]
 *
 * The objects, each created and destroyed in pairs:
 *
 *     moe_router          routing configuration (scoring, top_k, groups, bias, scaling)
 *     moe_routed_experts  the routed experts' weights in one format, the activation,
 *                         the expert map (which experts live on this rank)
 *     moe_shared_experts  the shared experts (a dense gated MLP), passed to each call
 *     moe_context         execution resources: CPU threads, CUDA stream (optional)
 *     moe_layer           router + routed experts + a kernel picked for them
 *
 * The layer never owns the router or the experts: the caller creates them,
 * hands them to moe_layer_create(), and destroys them after the layer.
 *
 * ===== Example =====
 *
 *     char err[256];
 *     moe_router *router; moe_routed_experts *experts; moe_layer *layer;
 *     moe_router_options ro = { .n_experts = 128, .top_k = 8,
 *                               .scoring = MOE_SCORING_SOFTMAX, .renormalize = 1 };
 *     moe_experts_options eo = { .n_experts = 128, .d_model = 2048, .d_ff = 768,
 *                                .format = MOE_FORMAT_BF16, .activation = MOE_ACT_SILU,
 *                                .w13 = { .data = w13 }, .w2 = { .data = w2 } };
 *     if (moe_router_create(&ro, &router, err, sizeof err) ||
 *         moe_routed_experts_create(&eo, &experts, err, sizeof err)) { puts(err); return 1; }
 *     moe_layer_options lo = { .router = router, .experts = experts, .max_tokens = 256 };
 *     if (moe_layer_create(&lo, &layer, err, sizeof err)) { puts(err); return 1; }
 *     size_t ws_size = moe_layer_workspace_size(layer, 256);
 *     void *ws = aligned_alloc(64, (ws_size + 63) / 64 * 64);   (64-byte aligned)
 *     if (moe_layer_forward(layer, n_tokens, x, logits, NULL, out, ws, ws_size))
 *         puts(moe_layer_last_error(layer));
 *     free(ws); moe_layer_destroy(layer);
 *     moe_routed_experts_destroy(experts); moe_router_destroy(router);
 *
 * ===== Conventions =====
 *
 * - Every function that can fail returns moe_status; MOE_OK (0) is success.
 *   Functions that create a handle take `char *err, size_t errlen` and write
 *   a one-line message there on failure (err may be NULL). Functions on a
 *   handle leave the message on the handle: moe_layer_last_error().
 * - The library never prints, never calls exit(), and never allocates on the
 *   forward path: scratch memory is the caller's workspace.
 * - Tensors are dense row-major. Shapes are written (dim0, dim1, ...) in the
 *   comments, with the names n_tokens, d_model, d_ff, n_experts, top_k.
 * - Option structs are zero-initialized by the caller; zero is the default
 *   of every field.
 * - destroy(NULL) is a harmless no-op.
 * - Thread safety: distinct handles may be used from distinct threads. One
 *   layer must not run two forwards at once (it owns its threads). Routers and
 *   experts are read-only after creation and may be shared by many layers.
 */
#ifndef MOE_H
#define MOE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_VERSION_MAJOR 0
#define MOE_VERSION_MINOR 1
#define MOE_VERSION_PATCH 0

/* The library's version as "MAJOR.MINOR.PATCH"; a static string. */
const char *moe_version(void);

/* ===== Status codes =====
 *
 * Stable numbers: new codes are added at the end, never renumbered. One
 * table generates the enum, moe_status_name() and moe_status_str().
 */
#define MOE_STATUS_MAP(X)                                                              \
    X(OK,                 0, "success")                                                \
    X(ERR_INVALID_ARG,    1, "invalid argument")                                       \
    X(ERR_NOMEM,          2, "out of memory")                                          \
    X(ERR_IO,             3, "input/output error")                                     \
    X(ERR_FORMAT,         4, "malformed data")                                         \
    X(ERR_UNSUPPORTED,    5, "unsupported by the selected implementation")             \
    X(ERR_CUDA,           6, "CUDA runtime error")                                     \
    X(ERR_SHAPE,          7, "tensor shape mismatch")                                  \
    X(ERR_WORKSPACE,      8, "workspace too small or misaligned")                      \
    X(ERR_RANGE,          9, "value out of range")                                     \
    X(ERR_TRUNCATED,     10, "file or buffer shorter than declared")                   \
    X(ERR_OVERFLOW,      11, "size arithmetic overflows")                              \
    X(ERR_OVERLAP,       12, "tensor data overlaps, leaves a gap or trails")           \
    X(ERR_DTYPE,         13, "unknown or invalid data type")                           \
    X(ERR_ALIGNMENT,     14, "bad alignment")                                          \
    X(ERR_DUPLICATE,     15, "duplicate name or key")                                  \
    X(ERR_LIMIT,         16, "exceeds a configured limit")                             \
    X(ERR_JSON,          17, "JSON syntax error")                                      \
    X(ERR_CONFIG,        18, "missing or inconsistent model configuration")            \
    X(ERR_MISSING,       19, "required tensor or key missing")                         \
    X(ERR_NAME,          20, "invalid tensor or key name")                             \
    X(ERR_MAGIC,         21, "bad magic number or version")                            \
    X(ERR_SCALE,         22, "non-finite, zero or negative scale")                     \
    X(ERR_MPI,           23, "MPI error")                                              \
    X(ERR_NCCL,          24, "NCCL error")                                             \
    X(ERR_PEER_DEAD,     25, "a peer rank died")                                       \
    X(ERR_TIMEOUT,       26, "deadline exceeded")                                      \
    X(ERR_PROTOCOL,      27, "malformed message from a peer")                          \
    X(ERR_NO_DEVICE,     28, "no usable device")                                       \
    X(ERR_UNKNOWN_FAMILY,29, "unknown model family")                                   \
    X(ERR_INTERNAL,      30, "internal error")

typedef enum moe_status {
#define MOE__STATUS_ENUM(name, num, str) MOE_##name = num,
    MOE_STATUS_MAP(MOE__STATUS_ENUM)
#undef MOE__STATUS_ENUM
} moe_status;

/* "MOE_ERR_NOMEM" for MOE_ERR_NOMEM; "MOE_UNKNOWN" for values not in the map. */
const char *moe_status_name(moe_status s);
/* "out of memory" for MOE_ERR_NOMEM: a static, human-readable description. */
const char *moe_status_str(moe_status s);

/* ===== Allocator and logging =====
 *
 * Every allocation the library makes goes through these hooks (tests use them
 * to inject failures). Set them before creating any object; passing NULL
 * restores malloc/free. aligned_alloc is not required: the library aligns
 * inside what it gets.
 */
typedef struct moe_allocator {
    void *(*malloc)(size_t size, void *user_data);
    void  (*free)(void *ptr, void *user_data);
    void  *user_data;
} moe_allocator;
void moe_set_allocator(const moe_allocator *a);

typedef enum moe_log_level { MOE_LOG_DEBUG, MOE_LOG_INFO, MOE_LOG_WARN, MOE_LOG_ERROR } moe_log_level;
/* Log messages go to cb (NULL = off, the default). cb may be called from any
 * library thread; it must not call back into the library. */
typedef void (*moe_log_fn)(moe_log_level level, const char *msg, void *user_data);
void moe_log_set(moe_log_fn cb, void *user_data);

/* Bugs inside the library (broken invariants, not caller mistakes) call the
 * abort callback, then abort(). Callers may log or dump state there. */
typedef void (*moe_abort_fn)(const char *file, int line, const char *msg);
void moe_set_abort_callback(moe_abort_fn cb);

/* ===== Formats =====
 *
 * One enum names both plain data types (activations, f32/bf16/f16 weights)
 * and the quantized weight formats. Weight tensors are (n_experts, rows, cols)
 * with cols the reduction dimension K; a quantized row is a sequence of
 * blocks along K. moe_format_info() tells each format's block size.
 * Stable numbers: new formats go at the end.
 *
 * What moe_weights' tables hold per format, for one expert (the tables of
 * all experts follow each other; moe_quant_sizes_get() gives the sizes).
 * Layouts are the checkpoints' own, so a loader can pass views of a file:
 *
 *   format       data                         scales                      other
 *   fp8-tensor   u8 e4m3fn (rows, cols)       f32 (1)                     input_scale (static
 *                                                                         activations, 0 = dynamic)
 *   fp8-channel  u8 e4m3fn (rows, cols)       f32 (rows)
 *   fp8-block    u8 e4m3fn (rows, cols)       f32 (ceil(rows/128),        (weight_scale_inv: a
 *                                                  ceil(cols/128))         multiplier)
 *   int8-w8a8    i8 (rows, cols)              f32 (rows)
 *   int4-gptq    i32 (cols/8, rows): GPTQ     f16/bf16 (cols/g, rows)     g_idx (cols), optional
 *                qweight, value k%8 at bits 4(k%8), w = (q - 8) s
 *   int8-gptq    i32 (cols/4, rows), byte k%4, w = (q - 128) s            g_idx as int4-gptq
 *   int4-awq     i32 (cols, rows/8): AWQ      f16/bf16 (cols/g, rows)     zeros i32 (cols/g, rows/8)
 *                qweight, row 8j+i in nibble {0,4,1,5,2,6,3,7}[i], w = (q - z) s
 *   mxfp4        u8 (rows, cols/2), value 2j  u8 e8m0 (rows, cols/32)
 *                in the low nibble of byte j  (0xFF rejected)
 *   nvfp4        u8 (rows, cols/2), as mxfp4  u8 e4m3fn (rows, cols/16)   scale2 (per expert)
 *   q8_0 q4_0 q4_k q6_k gguf-mxfp4: rows of ggml blocks, byte-identical to GGUF tensor data;
 *                the scales are inside the blocks.
 *
 * Group formats take group_size 32, 64 or 128 and scale_format F16 or BF16.
 * Activations: fp8 formats quantize them to e4m3 (fp8-block per token and
 * group of 128 with scale max(amax, 1e-10) / 448; fp8-channel and dynamic
 * fp8-tensor per token), int8-w8a8 to int8 per token, the GGUF formats as
 * llama.cpp does (q8_0 blocks for q8_0, q4_0, gguf-mxfp4; q8_K for q4_k,
 * q6_k), mxfp4, nvfp4, int4-gptq and int4-awq round them to bf16 (W4A16,
 * as GPU kernels of these formats take 16-bit activations), and so does bf16
 * (as the GPU's tensor cores and llama.cpp's bf16 path do; on the CPU one
 * vdpbf16ps then multiplies 32 weight and activation pairs); f32, f16 and
 * int8-gptq keep f32.
 * Conversions to e4m3 saturate at +-448 and keep NaN. Scales are checked
 * when experts are created (finite and > 0; e8m0 != 0xFF; GGUF f16 scales
 * finite; g_idx in range): MOE_ERR_SCALE names the expert, row and block.
 */
typedef enum moe_format {
    MOE_FORMAT_F32 = 0,
    MOE_FORMAT_BF16,
    MOE_FORMAT_F16,
    MOE_FORMAT_FP8_TENSOR,   /* e4m3fn, one f32 scale per expert and tensor            */
    MOE_FORMAT_FP8_CHANNEL,  /* e4m3fn, one f32 scale per output row                   */
    MOE_FORMAT_FP8_BLOCK,    /* e4m3fn, one f32 scale per 128x128 block (DeepSeek-V3)   */
    MOE_FORMAT_INT8_W8A8,    /* int8, f32 scale per output row, int8 activations       */
    MOE_FORMAT_INT4_GPTQ,    /* 4-bit symmetric, f16/bf16 scale per group, g_idx       */
    MOE_FORMAT_INT4_AWQ,     /* 4-bit with zero points, scale per group                */
    MOE_FORMAT_INT8_GPTQ,    /* 8-bit weight-only, scale per group                     */
    MOE_FORMAT_MXFP4,        /* e2m1 pairs, e8m0 scale per 32 (OCP MX, gpt-oss)         */
    MOE_FORMAT_NVFP4,        /* e2m1 pairs, e4m3 scale per 16, f32 global scale         */
    MOE_FORMAT_Q8_0,         /* GGUF blocks, bit-compatible with ggml                   */
    MOE_FORMAT_Q4_0,
    MOE_FORMAT_Q4_K,
    MOE_FORMAT_Q6_K,
    MOE_FORMAT_GGUF_MXFP4,   /* ggml's MXFP4 block (e8m0 + 16 bytes)                   */
    MOE_FORMAT_COUNT
} moe_format;

typedef struct moe_format_info {
    const char *name;        /* "bf16", "fp8-block", "q4_k", ...                       */
    int32_t     block_elems; /* weights per block along K (1 for plain types)          */
    int32_t     block_bytes; /* bytes per block of packed weights                      */
    double      bits_per_weight; /* including in-block and side-table scales           */
    int         is_quantized;
} moe_format_info;

/* Traits of format f; returns MOE_ERR_INVALID_ARG for values out of range. */
moe_status moe_format_get_info(moe_format f, moe_format_info *info);
/* The format's name, or NULL when out of range. */
const char *moe_format_name(moe_format f);
/* MOE_OK and sets *f when name is a format name (as moe_format_name prints it). */
moe_status moe_format_from_name(const char *name, moe_format *f);

/* Per-expert byte sizes of a (rows, cols) weight matrix in a format: packed
 * data, scale table and zero points (0 when the format has none). */
typedef struct moe_quant_sizes {
    size_t data, scales, zeros;
} moe_quant_sizes;

/* Sizes of one expert's tables. MOE_ERR_SHAPE when cols does not fit the
 * format's block or group (the message says why). */
moe_status moe_quant_sizes_get(moe_format f, int64_t rows, int64_t cols, int32_t group_size,
                               moe_format scale_format, moe_quant_sizes *sizes, char *err,
                               size_t errlen);

/* Quantizes one expert's f32 matrix src (rows, cols) into format f with the
 * format's reference quantizer, writing the tables sized by
 * moe_quant_sizes_get (scales and zeros may be NULL when their size is 0).
 * For synthetic layers, tests and converters; not a fast path. */
moe_status moe_quantize(moe_format f, int64_t rows, int64_t cols, int32_t group_size,
                        moe_format scale_format, const float *src, void *data, void *scales,
                        void *zeros, char *err, size_t errlen);

/* ===== Router =====
 *
 * Routing is computed in fp32 with one contract for every variant and backend:
 * a NaN score ranks as -inf; equal scores go to the lower expert index; the
 * top_k selected ids are always in range and distinct (a row of all -inf or
 * NaN scores selects experts 0..top_k-1 with weight 1/top_k after
 * renormalization, 0 before); weights are written in the order selected
 * (descending selection key).
 *
 * A NaN or -inf logit masks its expert: it ranks below every real logit and
 * weighs 0. In a softmax over logits with +inf entries, those entries share
 * the mass equally and the others get 0. A zero weight sum (sigmoid scores
 * that underflow) divides by 1. routed_scaling_factor applies to every
 * scoring, last.
 */
typedef enum moe_scoring {
    /* p = softmax(logits); select top_k of p; w = p[selected]. With
     * renormalize, w /= sum(w). Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2. */
    MOE_SCORING_SOFTMAX = 0,
    /* Select top_k of the logits; w = softmax over those k logits (gpt-oss).
     * Equal to SOFTMAX with renormalize; the renormalize flag has no effect. */
    MOE_SCORING_SOFTMAX_TOPK,
    /* p = sigmoid(logits); select top_k of p + correction_bias (the bias
     * affects selection only); optional groups; w = p[selected], optional
     * renormalize, then times routed_scaling_factor. DeepSeek-V3/R1,
     * Kimi-K2, GLM-4.5. */
    MOE_SCORING_SIGMOID,
    /* Llama-4: select top_k (normally 1) of the raw logits; w = sigmoid(logit).
     * The weight multiplies the token *before* the expert MLP, and the
     * expert's output is summed with weight 1. Requires top_k = 1; no groups,
     * no correction_bias; renormalize is ignored. */
    MOE_SCORING_LLAMA4,
} moe_scoring;

typedef struct moe_router_options {
    int32_t     n_experts;          /* E, global number of routed experts, 1..4096       */
    int32_t     top_k;              /* 1 <= top_k <= n_experts                           */
    moe_scoring scoring;
    int         renormalize;        /* SOFTMAX, SIGMOID: w divided by sum (guarded 0->1) */
    /* Grouped top-k (DeepSeek-V3): experts split in n_group contiguous groups;
     * the topk_group best groups (score = sum of each group's top-2 biased
     * scores with a correction bias, max without) are kept, the rest masked.
     * 0 or 1 = no grouping (topk_group then 0 or 1). SOFTMAX or SIGMOID only.
     * n_experts must be divisible by n_group; 1 <= topk_group <= n_group;
     * top_k <= topk_group * n_experts / n_group. */
    int32_t     n_group;
    int32_t     topk_group;
    const float *correction_bias;   /* (n_experts) finite selection-only bias (SOFTMAX,
                                       SIGMOID); copied; NULL = none                      */
    float       routed_scaling_factor; /* 0 = 1.0; multiplies weights after renormalizing */
    /* Optional router linear, so the layer can compute logits from x: */
    int64_t     d_model;            /* required with gate_weight                         */
    const float *gate_weight;       /* (n_experts, d_model) f32; copied; NULL = none     */
    const float *gate_bias;         /* (n_experts) f32 (gpt-oss); copied; NULL = none    */
} moe_router_options;

typedef struct moe_router moe_router;

/* Validates and copies the options. Errors (message in err): MOE_ERR_INVALID_ARG
 * naming the bad field or combination, MOE_ERR_LIMIT (n_experts > 4096),
 * MOE_ERR_OVERFLOW, MOE_ERR_NOMEM. A router is read-only afterwards: route and
 * logits may run on one router from several threads at once. */
moe_status moe_router_create(const moe_router_options *opts, moe_router **out,
                             char *err, size_t errlen);
void       moe_router_destroy(moe_router *r);

/* Routes n_tokens rows of logits (n_tokens, n_experts) to topk_ids and
 * topk_w (n_tokens, top_k). Row t depends on logits row t only. Fails with
 * MOE_ERR_INVALID_ARG on NULL pointers (n_tokens = 0 does nothing). */
moe_status moe_router_route(const moe_router *r, int64_t n_tokens, const float *logits,
                            int32_t *topk_ids, float *topk_w);

/* logits (n_tokens, n_experts) = x (n_tokens, d_model) . gate_weight^T + gate_bias,
 * fp32, one fixed summation order per element. MOE_ERR_UNSUPPORTED when the
 * router was created without gate_weight. */
moe_status moe_router_logits(const moe_router *r, int64_t n_tokens, const float *x,
                             float *logits);

/* ===== Experts (routed and shared) =====
 *
 * Weight tensors of one projection for all experts. data is (n_experts, rows,
 * cols) in the format's layout: for plain types rows*cols elements per expert;
 * for block formats each row is cols/block_elems blocks. The meaning of the
 * side tables depends on the format (see the table in moe_format's docs in
 * README, "Formats"). All pointers are host pointers.
 */
typedef struct moe_weights {
    const void    *data;     /* packed weights, (n_experts, rows, cols) in the format   */
    const void    *scales;   /* format-dependent scale table, NULL for plain types      */
    const void    *zeros;    /* zero points (INT4_AWQ), else NULL                        */
    /* (n_experts, cols) group of each K index (GPTQ act-order). The CPU runs
     * tables whose every group holds group_size columns (as the quantizers
     * write them) as fast as no g_idx (K sorted by group at creation, a
     * cols int32 copy per expert); others at about 40% of that speed. */
    const int32_t *g_idx;
    const float   *scale2;   /* (n_experts) second-level scale (NVFP4 global), or NULL   */
    const float   *input_scale; /* (n_experts) static activation scale (FP8_TENSOR)     */
    const float   *bias;     /* (n_experts, rows) f32, or NULL                           */
} moe_weights;

typedef enum moe_activation {
    /* silu(gate) * up; W13 rows [0, d_ff) are gate, [d_ff, 2 d_ff) are up. */
    MOE_ACT_SILU = 0,
    /* gelu(gate) * up, erf form; same layout as SILU. */
    MOE_ACT_GELU,
    /* gelu(gate) * up, tanh approximation ("gelu_pytorch_tanh"). */
    MOE_ACT_GELU_TANH,
    /* gpt-oss: W13 rows interleaved (row 2i gate, 2i+1 up); gate = min(gate,
     * limit), up = clamp(up, -limit, limit); (up + 1) * gate * sigmoid(alpha * gate). */
    MOE_ACT_SWIGLU_OAI,
    /* relu(h)^2 with no gate: W13 has d_ff rows, not 2 d_ff (Nemotron-H). */
    MOE_ACT_RELU2,
} moe_activation;

/* Flags for moe_experts_options.flags. */
enum {
    /* Keep pointers to the caller's weight buffers instead of copying them;
     * the buffers must then outlive the experts object (e.g. a mapped file).
     * A copy the experts own is put on transparent huge pages where Linux
     * allows; borrowed anonymous buffers are worth moe_advise_huge_pages()
     * by the caller before they are filled: CPU decode runs 5-15% faster. */
    MOE_EXPERTS_BORROW = 1u << 0,
};

typedef struct moe_experts_options {
    int32_t        n_experts;        /* experts held here, E_local >= 1                     */
    int64_t        d_model;          /* H                                                    */
    int64_t        d_ff;             /* I, per expert (shared experts: n_shared * I)          */
    moe_format     format;           /* weight format of w13 and w2                          */
    int32_t        group_size;       /* group formats (INT4_*, INT8_GPTQ): 32, 64 or 128     */
    moe_format     scale_format;     /* group formats: F16 or BF16 scales (0 = F32 is invalid there) */
    moe_activation activation;
    float          swiglu_alpha;     /* SWIGLU_OAI; 0 = 1.702                                */
    float          swiglu_limit;     /* SWIGLU_OAI; 0 = 7.0                                  */
    moe_weights    w13;              /* (n_experts, 2 d_ff, d_model); d_ff rows for RELU2    */
    moe_weights    w2;               /* (n_experts, d_model, d_ff)                            */
    /* Expert map for expert parallelism: global id -> local id in [0,
     * n_experts), or -1 for an expert held by another rank (its slots
     * contribute nothing here). NULL = identity (global ids are local ids,
     * n_experts_global = n_experts). Copied. */
    int32_t        n_experts_global;
    const int32_t *expert_map;       /* (n_experts_global)                                   */
    unsigned       flags;            /* MOE_EXPERTS_*                                        */
    /* Format of w2 when it differs from w13's; NULL = `format` for both. Real
     * files mix them: a llama.cpp Q4_K_M GGUF stores gate/up in Q4_K and
     * down in Q6_K, so
     *     moe_format q6k = MOE_FORMAT_Q6_K;
     *     eo.format = MOE_FORMAT_Q4_K; eo.w2_format = &q6k;
     * group_size and scale_format apply to both. Read at create, not kept. */
    const moe_format *w2_format;
} moe_experts_options;

typedef struct moe_routed_experts moe_routed_experts;

/* Validates shapes, format and scales (finite, > 0), then copies (or, with
 * MOE_EXPERTS_BORROW, references) the weights. Errors: MOE_ERR_INVALID_ARG
 * (missing pointers, sizes < 1), MOE_ERR_SHAPE (K not a multiple of the
 * format's block or group), MOE_ERR_SCALE, MOE_ERR_RANGE (expert map entries
 * outside [-1, n_experts) or a local id mapped twice), MOE_ERR_NOMEM. */
moe_status moe_routed_experts_create(const moe_experts_options *opts, moe_routed_experts **out,
                                     char *err, size_t errlen);
void       moe_routed_experts_destroy(moe_routed_experts *e);
/* Replaces the expert map (same n_experts_global) without rebuilding the layer
 * or touching weights. Not while a forward using these experts runs. */
moe_status moe_routed_experts_set_expert_map(moe_routed_experts *e, const int32_t *expert_map,
                                             char *err, size_t errlen);

/* Shared experts: a dense MLP every token goes through, with the routed
 * experts' formats and activations (W13 (1, 2 d_ff, d_model), W2 (1, d_model,
 * d_ff), several shared experts fused along d_ff). With gate (d_model), the
 * output of token t is multiplied by sigmoid(x[t] . gate) (Qwen2-MoE). */
typedef struct moe_shared_options {
    moe_experts_options mlp;         /* n_experts must be 1; expert map must be NULL         */
    const float        *gate;        /* (d_model) f32, copied; NULL = no gate                */
} moe_shared_options;

typedef struct moe_shared_experts moe_shared_experts;

moe_status moe_shared_experts_create(const moe_shared_options *opts, moe_shared_experts **out,
                                     char *err, size_t errlen);
void       moe_shared_experts_destroy(moe_shared_experts *s);

/* ===== Execution context =====
 *
 * Threads (CPU) and streams (CUDA) that layers run on. Several layers may
 * share one context if they do not run concurrently.
 */
typedef enum moe_backend {
    MOE_BACKEND_AUTO = 0, /* the first capable host backend: CPU, then REF (never CUDA, whose
                             pointers are device pointers: ask for it by name)                   */
    MOE_BACKEND_REF,      /* scalar C, fp64 accumulation: the oracle, slow                        */
    MOE_BACKEND_CPU,      /* threaded, vectorized                                                 */
    MOE_BACKEND_CUDA,     /* one NVIDIA GPU; x, logits, out and workspace are device pointers     */
} moe_backend;

/* (Formats) 1 when `backend` has kernels for weights in format f, 0 when it
 * has none (or f is out of range, or CUDA is not built in), -1 when the
 * backend cannot say. MOE_BACKEND_AUTO: 1 when any backend has them. */
int moe_format_supported(moe_format f, moe_backend backend);

typedef struct moe_context_options {
    int   n_threads;     /* CPU worker threads including the caller; 0 = all online cores */
    int   cuda_device;   /* CUDA device ordinal                                           */
    void *cuda_stream;   /* cudaStream_t to run on; NULL = the context creates its own     */
    /* CPU: how long a thread polls before it sleeps, in microseconds (an
     * idle worker waiting for the next parallel phase, the caller waiting
     * for a phase's last tasks); 0 = 1000. A forward's phases follow each
     * other within microseconds, but between forwards threads may sleep, and
     * waking them costs the next forward up to tenths of a millisecond on a
     * loaded VM. -1: no thread sleeps while the context lives (the lowest
     * latency for a decode loop, at the cost of busy cores between calls:
     * the trade llama.cpp's --poll makes). */
    int   spin_us;
} moe_context_options;

typedef struct moe_context moe_context;

moe_status moe_context_create(const moe_context_options *opts, moe_context **out,
                              char *err, size_t errlen);
void       moe_context_destroy(moe_context *c);
/* Worker threads the context runs (>= 1). */
int        moe_context_n_threads(const moe_context *c);

/* ===== Layer ===== */

typedef enum moe_shared_order {
    MOE_SHARED_BEFORE = 0, /* shared experts run first, alone                               */
    MOE_SHARED_NONE,       /* never run shared experts, even if given                        */
    MOE_SHARED_OVERLAPPED, /* run concurrently with the routed experts (CPU threads, 2nd stream) */
    MOE_SHARED_IN_COMBINE, /* run while an asynchronous EP combine is in flight              */
} moe_shared_order;

typedef struct moe_layer_options {
    moe_router         *router;     /* borrowed; must outlive the layer                       */
    moe_routed_experts *experts;    /* borrowed; must outlive the layer                       */
    moe_context        *context;    /* borrowed; NULL = the layer makes a private one         */
    moe_backend         backend;    /* MOE_BACKEND_AUTO picks the first capable               */
    moe_shared_order    shared_order;
    /* x and out: F32 (default), BF16 or F16. With BF16 the CUDA backend also
     * stores each (token, expert) output row in bf16 before the sum over the
     * token's experts (in f32), as vLLM does; F32 and F16 keep f32 rows. */
    moe_format          io_format;
    int64_t             max_tokens; /* largest n_tokens of a forward; workspace is sized by it */
    /* The shared experts forwards will be given (borrowed). The layer sizes
     * its workspace for them and, on CUDA, uploads them at creation. A
     * forward may then pass these, or NULL; others give MOE_ERR_SHAPE unless
     * their d_model, d_ff and format are the same. NULL = no shared experts. */
    const moe_shared_experts *shared;
    /* Run across ranks (expert or tensor parallel; see "Parallel experts"
     * below); NULL = this rank alone. Borrowed; must outlive the layer. */
    const struct moe_parallel *parallel;
} moe_layer_options;

typedef struct moe_layer moe_layer;

/* IN_COMBINE: a CUDA layer over NCCL launches the shared experts on its
 * second stream right after posting the combine exchange, so they run while
 * it is in flight; elsewhere (one rank, MPI) it runs as OVERLAPPED. Every
 * order gives bitwise the same output. */

/* Picks the kernel (prepare/finalize x experts implementation) for the
 * request; when none is capable, fails with MOE_ERR_UNSUPPORTED and a message
 * naming each implementation and why it declined. On the CPU, GPTQ and AWQ
 * weights (whose checkpoint layout spreads a block of rows over every page)
 * are re-laid out here into row panels, once per experts object (routed and
 * opts->shared): a copy as large as their packed weights, kept and freed
 * with the experts; the weights must not change afterwards. With AVX-512
 * VNNI (the CPU code built for it), Q4_K, Q6_K, Q4_0, Q8_0, GGUF MXFP4 and
 * INT8 W8A8 get such a copy too (groups of 16 rows, one row per vector
 * lane: 1.5-4x faster decode from cache), and MXFP4 (16-row panels for the
 * AMX tiles) where the CPU has AMX-BF16 and the OS grants it (Sapphire
 * Rapids and later, Linux 5.16+). The checkpoint's buffers are not read
 * again by the CPU layer: borrowed pages of a mapped file (the
 * MOE_EXPERTS_BORROW case of moe_model_layer) can be dropped by the OS. */
moe_status moe_layer_create(const moe_layer_options *opts, moe_layer **out, char *err, size_t errlen);
void       moe_layer_destroy(moe_layer *l);

/* Bytes of workspace a forward of up to n_tokens tokens needs (host memory
 * for REF/CPU, device memory for CUDA). The buffer must be 64-byte aligned. */
size_t     moe_layer_workspace_size(const moe_layer *l, int64_t n_tokens);

/* out (n_tokens, d_model) = the MoE layer applied to x (n_tokens, d_model).
 * x and out are in the layer's io_format and must not overlap. router_logits
 * (n_tokens, n_experts) f32; NULL = computed from the router's gate weights.
 * shared may be NULL. Every element of out is written. n_tokens = 0 is a no-op.
 * Errors: MOE_ERR_INVALID_ARG, MOE_ERR_RANGE (n_tokens > max_tokens),
 * MOE_ERR_WORKSPACE, MOE_ERR_SHAPE (shared experts of another d_model),
 * MOE_ERR_UNSUPPORTED (no gate weights and no logits), MOE_ERR_CUDA. */
moe_status moe_layer_forward(moe_layer *l, int64_t n_tokens, const void *x,
                             const float *router_logits, const moe_shared_experts *shared,
                             void *out, void *workspace, size_t workspace_size);

/* As moe_layer_forward, with the routing computed by the caller: topk_ids
 * and topk_w (n_tokens, top_k) as moe_router_route() writes them. Ids
 * outside [0, n_experts) give MOE_ERR_RANGE and leave out unwritten. */
moe_status moe_layer_forward_routed(moe_layer *l, int64_t n_tokens, const void *x,
                                    const int32_t *topk_ids, const float *topk_w,
                                    const moe_shared_experts *shared,
                                    void *out, void *workspace, size_t workspace_size);

/* On MOE_BACKEND_CUDA (a build with CUDA, a device of compute capability 9.0
 * or newer): weights BF16, F16 or FP8_BLOCK, d_model and d_ff multiples of
 * 16; other formats (F32 included) fail at creation with MOE_ERR_UNSUPPORTED
 * "unsupported on cuda: <format>". The routed experts' weights, the router's
 * tables and moe_layer_options.shared are copied to the device at creation
 * (the copies live with the experts objects). A forward allocates nothing and
 * never waits for the host, so it can be captured in a CUDA graph; it runs on
 * the context's stream, shared experts OVERLAPPED on a second stream joined
 * by events. Shared experts given to a forward must be the layer's own
 * (others: MOE_ERR_INVALID_ARG). topk_ids live on the device and are not
 * range-checked (that would need a host sync): an id outside [0, n_experts)
 * selects no expert. moe_routed_experts_set_expert_map() does not update a
 * device copy already made. */

/* The message of the last failed call on this layer ("" if none). Valid until
 * the next call on the layer. */
const char *moe_layer_last_error(const moe_layer *l);

/* Names of the chosen implementations, e.g. "local" and "cpu". Static strings. */
const char *moe_layer_experts_impl(const moe_layer *l);
const char *moe_layer_prepare_finalize_impl(const moe_layer *l);

/* ===== Utilities ===== */

/* Measures this machine's memory read bandwidth in GB/s (1e9 bytes/s) with
 * n_threads threads (0 = all cores) over a buffer of `bytes` bytes (0 = 1 GiB),
 * the median of several passes. Takes a second or so. */
moe_status moe_measure_read_bandwidth(int n_threads, size_t bytes, double *gbps);

/* The same probe on the context's own CPU threads (moe_context_n_threads of
 * them), which it leaves polling as a forward does: the ceiling to set that
 * context's forwards against. buf: `bytes` of the caller's memory, 64-byte
 * aligned, which the probe overwrites (at least 1 MiB, read in 1 MiB
 * chunks; make it larger than the last-level cache), or NULL for a buffer
 * of its own (bytes 0 = 1 GiB, freed before it returns). Timing a forward
 * right after it with a lent buffer times the forward with its threads
 * awake, as in a decode loop whose steps are shorter than spin_us; a
 * separate pool's probe, or freeing a large buffer (1.2 ms for 256 MiB on
 * the CI VM), would leave them asleep. Not while a forward runs on ctx. */
moe_status moe_context_measure_read_bandwidth(moe_context *ctx, void *buf, size_t bytes,
                                              double *gbps);

/* Asks Linux for transparent huge pages on the 2 MiB-aligned inside of
 * [p, p + n), for a buffer not yet written (a hint, ignored where not
 * allowed; a no-op elsewhere). libmoe does this for the weight copies it
 * owns: CPU decode streams many weight rows at once and 4 KiB pages cost
 * TLB misses (qwen3-30b-a3b Q4_K, 1 token: ~900 -> ~800 us on the CI
 * machine). Worth calling on anonymous buffers lent with
 * MOE_EXPERTS_BORROW. */
void       moe_advise_huge_pages(void *p, size_t n);

/* Number of online CPU cores. */
int moe_cpu_count(void);

/* ===== Model files =====
 *
 * Opens a model checkpoint, finds its MoE layers and builds the router,
 * routed experts and shared experts of one layer exactly as the model family
 * defines them. Accepted paths:
 *
 *     DIR                      a Hugging Face checkpoint: DIR/config.json and
 *                              DIR/model.safetensors, or DIR/model.safetensors.index.json
 *                              naming the shards (each opened once)
 *     FILE.safetensors         one file, with config.json in the same directory
 *     FILE.gguf                a llama.cpp GGUF file (metadata inside)
 *
 * Families: mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v2, deepseek_v3,
 * gpt_oss, llama4 (safetensors: config.json "model_type"; GGUF:
 * general.architecture llama, qwen2moe, qwen3moe, olmoe, deepseek2, gpt-oss,
 * llama4). Anything else fails with MOE_ERR_UNKNOWN_FAMILY, whose message
 * lists the supported names. Quantized Hugging Face checkpoints: fp8 block
 * (weight_scale_inv), MXFP4 (gpt-oss), and, for the families with
 * per-expert projections (all but gpt_oss and llama4), GPTQ (symmetric, 4 or
 * 8 bits, optional act-order g_idx; gate and up must share g_idx) and AWQ
 * (4 bits, GEMM layout, zero points), groups of 32, 64 or 128, their
 * qweight / scales / qzeros tables used as libmoe's INT4_GPTQ, INT8_GPTQ and
 * INT4_AWQ (W13 = gate and up side by side). For the same families:
 *   - ModelOpt (quantization_config.quant_method "modelopt", or
 *     DIR/hf_quant_config.json): NVFP4 (weight U8 + weight_scale e4m3 +
 *     weight_scale_2) runs as NVFP4, W4A16 with bf16 activations as vLLM's
 *     Marlin path on Hopper does (input_scale, for W4A4, is not read); gate
 *     and up of an expert must share weight_scale_2 (MOE_ERR_UNSUPPORTED
 *     names both values otherwise). FP8 (per-tensor weight_scale, static
 *     input_scale) runs as FP8_TENSOR: the W13 half with the smaller scale
 *     is re-quantized to the larger, W13's input scale is max(gate's, up's).
 *     FP8_PER_CHANNEL_PER_TOKEN runs as FP8_CHANNEL.
 *   - compressed-tensors: float-quantized fp8 with channel weights and
 *     dynamic per-token activations as FP8_CHANNEL, tensor weights as
 *     FP8_TENSOR (static input scale, or dynamic: quantized per token);
 *     pack-quantized symmetric int4/int8 in groups of 32, 64 or 128 without
 *     activation quantization as INT4_GPTQ / INT8_GPTQ (weight_packed
 *     transposed into GPTQ's qweight order; with actorder "group" each
 *     projection's weight_g_idx is its g_idx, gate and up must share it);
 *     nvfp4-pack-quantized (float 4-bit tensor_group weights, groups of
 *     16; activations absent or fp4) as NVFP4, run W4A16 as ModelOpt's:
 *     weight_packed + weight_scale e4m3 + weight_global_scale, whose
 *     float32 reciprocal is the global scale (a global scale without a
 *     finite reciprocal is MOE_ERR_SCALE).
 * Modules a checkpoint leaves unquantized (router gate, bf16 shared experts,
 * excluded layers) load in their stored type. Scales are checked at open
 * (scalars) and when a layer is built (block and row scales): MOE_ERR_SCALE
 * names the checkpoint tensor. Other quantization_config variants fail at
 * open with MOE_ERR_UNSUPPORTED naming the setting.
 *
 * Files are untrusted input: every size is computed with checked arithmetic
 * and checked against the bytes present before anything is allocated, so
 * memory while opening is bounded by the header bytes, not by the counts a
 * file declares. Each malformation has its own status: MOE_ERR_TRUNCATED,
 * MOE_ERR_OVERFLOW, MOE_ERR_OVERLAP (tensor data overlaps, leaves a gap, or
 * bytes trail), MOE_ERR_DTYPE, MOE_ERR_ALIGNMENT, MOE_ERR_DUPLICATE,
 * MOE_ERR_LIMIT (over a limit below), MOE_ERR_JSON, MOE_ERR_NAME, MOE_ERR_MAGIC,
 * MOE_ERR_FORMAT (structurally wrong header content, e.g. a tensor entry
 * without "dtype"), MOE_ERR_CONFIG, MOE_ERR_MISSING, MOE_ERR_SHAPE,
 * MOE_ERR_UNKNOWN_FAMILY, MOE_ERR_IO.
 *
 * Weights are views of a read-only memory mapping of each file, never copied
 * unless the layout must change (see moe_model_layer_create). The mapping
 * lives until moe_model_close(); a file truncated by another process while
 * mapped makes the process receive SIGBUS on access (files are not read with
 * pread). A model is read-only after opening: several threads may create
 * layers from it at once.
 */
typedef struct moe_model_options {
    uint64_t max_header_bytes;   /* safetensors header, config.json, index JSON; 0 = 100,000,000 */
    uint64_t max_tensors;        /* tensors per file; 0 = 10,000,000                       */
    uint64_t max_kv;             /* GGUF metadata pairs; 0 = 100,000                       */
    uint64_t max_array_elems;    /* GGUF array elements; 0 = 16,777,216                    */
    uint64_t max_string_bytes;   /* GGUF string value; 0 = 16 MiB                          */
    uint64_t max_name_bytes;     /* tensor name; 0 = 255 (GGUF keys: 65,535)               */
    int32_t  max_json_depth;     /* JSON nesting; 0 = 64                                   */
    uint32_t max_alignment;      /* GGUF general.alignment; 0 = 1 MiB                      */
} moe_model_options;

typedef struct moe_model moe_model;

/* Opens and validates the files at path (see above), reads the
 * configuration and binds the family's MoE tensors (shapes checked for every
 * MoE layer). opts may be NULL (defaults). *out is freed with
 * moe_model_close(). */
moe_status moe_model_open(const char *path, const moe_model_options *opts, moe_model **out,
                          char *err, size_t errlen);
void       moe_model_close(moe_model *m);

typedef struct moe_model_desc {
    const char    *family;            /* "mixtral", ..., as listed above; static     */
    const char    *container;         /* "safetensors" or "gguf"; static             */
    int32_t        n_files;           /* shards                                      */
    int64_t        n_tensors;         /* in all files                                */
    uint64_t       tensor_bytes;      /* tensor data in all files                    */
    int32_t        n_layers;          /* decoder layers                              */
    int32_t        n_moe_layers;      /* layers with routed experts                  */
    int32_t        first_moe_layer;   /* index of the first, -1 when none            */
    /* Of the MoE layers (the same in each): */
    int32_t        n_experts;         /* E                                           */
    int32_t        top_k;
    int64_t        d_model;           /* H                                           */
    int64_t        d_ff;              /* I per routed expert                         */
    int32_t        n_shared_experts;  /* 0 = none                                    */
    int64_t        d_ff_shared;       /* width of the (fused) shared MLP             */
    int            shared_gate;       /* 1: sigmoid gate on the shared output        */
    moe_scoring    scoring;
    int            renormalize;
    int32_t        n_group, topk_group;
    float          routed_scaling_factor;
    int            correction_bias;   /* 1: e_score_correction_bias / exp_probs_b    */
    int            router_bias;       /* 1: router linear has a bias (gpt-oss)       */
    int            expert_bias;       /* 1: expert projections have biases           */
    moe_activation activation;
    /* Format of the first MoE layer's routed expert weights (of W13, gate and
     * up; W2 may differ: moe_experts_options.w2_format); MOE_FORMAT_COUNT
     * when the stored type has no moe_format (layer creation then fails with
     * MOE_ERR_UNSUPPORTED). */
    moe_format     expert_format;
    moe_format     expert_format_w2;  /* W2's (down) format: GGUF Q4_K_M stores Q6_K */
} moe_model_desc;

/* Fills *d. */
moe_status moe_model_info(const moe_model *m, moe_model_desc *d);
/* 1 when layer (0-based decoder layer index) has routed experts, else 0. */
int        moe_model_layer_is_moe(const moe_model *m, int32_t layer);

/* One stored tensor, for listings. */
typedef struct moe_model_tensor {
    const char *name;        /* NUL-terminated, valid until moe_model_close()       */
    const char *dtype;       /* "BF16", "F8_E4M3", "Q4_K", ...; static               */
    int32_t     n_dims;
    int64_t     shape[8];    /* slowest dimension first (PyTorch order, also for GGUF) */
    uint64_t    nbytes;
    int32_t     file;        /* shard index                                          */
    uint64_t    offset;      /* byte offset of the data in that file                 */
} moe_model_tensor;

int64_t    moe_model_n_tensors(const moe_model *m);
/* Tensor i in [0, moe_model_n_tensors); MOE_ERR_RANGE otherwise. */
moe_status moe_model_tensor_get(const moe_model *m, int64_t i, moe_model_tensor *t);

/* One MoE layer of a model: router, routed experts, shared experts (when
 * the family has them) and a moe_layer built over them. */
typedef struct moe_model_layer moe_model_layer;

/* Builds decoder layer `layer` of m with the public create functions. base
 * gives the moe_layer's backend, context, io_format and max_tokens (its
 * router and experts fields are ignored); NULL = defaults with max_tokens
 * 256. Weights are borrowed from the mapping (MOE_EXPERTS_BORROW) when the
 * stored layout is libmoe's; otherwise they are converted once into memory
 * the model layer owns:
 *   - per-expert tensors (Mixtral, Qwen, OLMoE, DeepSeek) and separate
 *     gate/up tensors (GGUF ffn_gate_exps + ffn_up_exps) are concatenated
 *     into W13 (n_experts, 2 d_ff, d_model): a copy of W13, W2 is borrowed
 *     when already stacked;
 *   - gpt-oss and Llama-4 unquantized experts are stored transposed
 *     (gate_up_proj (n_experts, d_model, 2 d_ff)): both projections are
 *     transposed, a copy;
 *   - router gate weights, biases and scales are converted to f32.
 * Expert parallel: with base->parallel in MOE_PARALLEL_EP mode, only this
 * rank's experts (the map's local slots, each holding a logical expert of
 * the model) are borrowed or converted, and the experts get the map's table
 * as their expert_map; consecutive experts of a stacked tensor are borrowed
 * as one slice. Tensor parallel gives MOE_ERR_UNSUPPORTED.
 * m must outlive the model layer. Errors: MOE_ERR_RANGE (layer out of range),
 * MOE_ERR_INVALID_ARG (not a MoE layer), MOE_ERR_UNSUPPORTED (a stored type
 * without a libmoe format, or no kernel for it), MOE_ERR_NOMEM, and those of
 * moe_router_create, moe_routed_experts_create and moe_layer_create. */
moe_status moe_model_layer_create(const moe_model *m, int32_t layer, const moe_layer_options *base,
                                  moe_model_layer **out, char *err, size_t errlen);
void       moe_model_layer_destroy(moe_model_layer *l);
/* The parts, owned by the model layer. shared is NULL when the family has none. */
moe_layer          *moe_model_layer_layer(const moe_model_layer *l);
moe_router         *moe_model_layer_router(const moe_model_layer *l);
moe_routed_experts *moe_model_layer_experts(const moe_model_layer *l);
moe_shared_experts *moe_model_layer_shared(const moe_model_layer *l);

/* ===== NumPy files =====
 *
 * .npy format versions 1.0, 2.0 and 3.0, little-endian, C order, of type
 * '<f4' (F32), '<f2' (F16) or BF16. NumPy has no bfloat16: arrays of
 * ml_dtypes.bfloat16 are saved with the descr '<V2' (two opaque bytes), so
 * '<V2' is read as BF16, as is the descr 'bfloat16'. The header is validated
 * (magic, version, length, a dict of exactly descr, fortran_order = False and
 * shape, at most 8 dimensions) and the data size must equal the bytes after
 * the header.
 */
typedef struct moe_npy {
    moe_format format;       /* F32, F16 or BF16                                     */
    int32_t    n_dims;       /* 0..8                                                 */
    int64_t    shape[8];
    void      *data;         /* owned; free with moe_npy_free()                      */
    size_t     nbytes;
} moe_npy;

/* Reads path into *a (a->data is freed by moe_npy_free). Errors: MOE_ERR_IO,
 * MOE_ERR_MAGIC (magic or version), MOE_ERR_FORMAT (header), MOE_ERR_DTYPE,
 * MOE_ERR_LIMIT (> 8 dims, header > 1 MiB), MOE_ERR_OVERFLOW, MOE_ERR_TRUNCATED
 * (data shorter than the shape), MOE_ERR_OVERLAP (bytes after the data),
 * MOE_ERR_NOMEM. */
moe_status moe_npy_read(const char *path, moe_npy *a, char *err, size_t errlen);
/* As moe_npy_read, from a buffer (data is copied). */
moe_status moe_npy_parse(const void *buf, size_t len, moe_npy *a, char *err, size_t errlen);
void       moe_npy_free(moe_npy *a);
/* Writes a version 1.0 file of format F32, F16 or BF16 (as '<V2': load it
 * with np.load(path).view(ml_dtypes.bfloat16)); data is (shape) in C order. */
moe_status moe_npy_write(const char *path, moe_format format, int32_t n_dims, const int64_t *shape,
                         const void *data, char *err, size_t errlen);

/* ===== Parallel experts (expert parallelism, tensor parallelism, EPLB) =====
 *
 * Several ranks (processes or GPUs) run one MoE layer together. Two modes:
 *
 *   MOE_PARALLEL_EP  expert parallel: each rank holds whole experts (an
 *                    expert map says which); prepare sends every (token,
 *                    slot) to the rank owning its expert, finalize sends the
 *                    expert outputs back (CUDA: in bf16 when the layer's
 *                    io_format is) and reduces each token's slots in slot
 *                    order, in fp32. The ranks' io_format must agree.
 *                    Because an expert row's result does not depend on the
 *                    rest of its batch, the output is bitwise identical to
 *                    the single-rank result for any ep_size. Every rank may
 *                    pass different tokens.
 *   MOE_PARALLEL_TP  tensor parallel: every rank holds every expert with a
 *                    slice d_ff / tp_size of the intermediate dimension
 *                    (moe_routed_experts_create_tp) and gets the same tokens;
 *                    the partial outputs are summed over ranks in rank order
 *                    (equal to one rank within f32 rounding, and identical on
 *                    every rank and every run).
 *
 * Transports: MPI between processes (built when `mpicc` is found; the
 * communicator is passed as a pointer to an MPI_Comm so this header does not
 * need mpi.h). NCCL between GPUs: expert and tensor parallel with backend
 * cuda (built with CUDA and NCCL; up to 256 ranks). Create the ncclComm_t
 * non-blocking and give moe_comm_create_nccl the stream the layer's context
 * runs on (moe_context_options.cuda_stream must be that stream). An
 * expert-parallel forward builds the send order on the GPU (the expert map's
 * replica hash, EPLB counters), waits for the count exchange (its one host
 * round trip), posts the row and combine exchanges on the stream, and waits
 * for the stream at its end (deadline-bound), so that a forward returning
 * MOE_OK has its data; it cannot be captured in a CUDA graph. Rows travel in
 * the experts' compute type (bf16, f16, or fp8 with their group scales),
 * outputs as f32. Routed ids outside [0, n_experts) (given to
 * moe_layer_forward_routed) give MOE_ERR_RANGE at the end of the forward;
 * their slots contribute nothing.
 *
 * Faults: every collective call of a communicator has a deadline. A peer that
 * died or stays silent makes the call return MOE_ERR_PEER_DEAD (death seen,
 * on the same host) or MOE_ERR_TIMEOUT on every surviving rank, within the
 * deadline plus a fraction of a second; a malformed message (bad header,
 * counts beyond capacity, expert ids not held here) returns MOE_ERR_PROTOCOL
 * and is never copied out of bounds. A failed call never returns partial
 * data as success. After a failure the communicator is broken for good:
 * every later call returns the same code; destroy it and build a new one.
 * Under Open MPI 4, start jobs with `mpirun --enable-recovery` so that the
 * death of one rank does not make mpirun kill the others. A dead peer on the
 * same host is seen by its pid within milliseconds; elsewhere, at the
 * deadline. After a failure MPI may still write late messages into the
 * layer's workspace until the communicator is destroyed: keep it until then.
 *
 * Collective forwards: every rank of the communicator must call
 * moe_layer_forward the same number of times, in the same order of layers,
 * with the same max_tokens; a rank with nothing to do passes n_tokens = 0
 * (which, with a parallel layer, is not a no-op: it serves its experts; x
 * and out must still be valid pointers). One forward at a time per
 * communicator: layers sharing one run one after the other.
 * In tensor-parallel mode all ranks pass the same tokens. The workspace of a
 * parallel layer holds the rows every rank may send this one
 * (ep_size * max_tokens * top_k): ask moe_layer_workspace_size. Activations
 * travel as f32 over MPI. Both modes are always deterministic (fixed
 * reduction order), so there is no flag for it.
 *
 * Example (expert parallel over MPI, 4 ranks, 128 experts):
 *
 *     moe_comm *comm;  moe_expert_map *map;
 *     MPI_Comm world = MPI_COMM_WORLD;
 *     moe_comm_options co = { .deadline_ms = 5000 };
 *     moe_comm_create_mpi(&world, &co, &comm, err, sizeof err);
 *     moe_expert_map_options mo = { .n_experts = 128, .ep_size = moe_comm_size(comm),
 *                                   .ep_rank = moe_comm_rank(comm) };
 *     moe_expert_map_create(&mo, &map, err, sizeof err);
 *     eo.n_experts = moe_expert_map_n_local(map);        (this rank's weights only)
 *     eo.n_experts_global = moe_expert_map_n_physical(map);
 *     eo.expert_map = moe_expert_map_table(map);
 *     moe_parallel par = { .mode = MOE_PARALLEL_EP, .comm = comm, .map = map };
 *     moe_layer_options lo = { ..., .parallel = &par };
 */

typedef enum moe_placement {
    MOE_PLACEMENT_LINEAR = 0,  /* rank r holds a contiguous range; the remainder E % ep_size
                                  goes one each to the first ranks                          */
    MOE_PLACEMENT_ROUND_ROBIN, /* rank r holds experts r, r + ep_size, r + 2 ep_size, ...    */
} moe_placement;

/* Logical experts are the model's (the router's ids); physical experts are
 * weight slots: the logical ones plus n_redundant replicas for EPLB. Slot s
 * holds logical expert moe_expert_map_logical(m, s); initially slot s < E
 * holds s and redundant slot E + i holds i % E. */
typedef struct moe_expert_map_options {
    int32_t       n_experts;   /* logical experts E >= 1                                       */
    int32_t       n_redundant; /* extra physical slots (>= 0); needs linear placement and
                                  (E + n_redundant) divisible by ep_size                       */
    int32_t       ep_size;     /* ranks; 0 = 1                                                 */
    int32_t       ep_rank;     /* this rank, [0, ep_size)                                      */
    moe_placement placement;
} moe_expert_map_options;

typedef struct moe_expert_map moe_expert_map;

/* Errors: MOE_ERR_INVALID_ARG (sizes, rank out of range, redundancy with
 * round-robin or not divisible), MOE_ERR_NOMEM. */
moe_status moe_expert_map_create(const moe_expert_map_options *opts, moe_expert_map **out,
                                 char *err, size_t errlen);
void       moe_expert_map_destroy(moe_expert_map *m);
int32_t    moe_expert_map_n_logical(const moe_expert_map *m);
int32_t    moe_expert_map_n_physical(const moe_expert_map *m);
int32_t    moe_expert_map_n_local(const moe_expert_map *m);   /* physical slots on this rank */
int32_t    moe_expert_map_ep_size(const moe_expert_map *m);
int32_t    moe_expert_map_ep_rank(const moe_expert_map *m);
/* Rank holding physical slot s; -1 when s is out of range. */
int32_t    moe_expert_map_owner(const moe_expert_map *m, int32_t s);
/* Local index of physical slot s on this rank, or -1 (another rank or out of range). */
int32_t    moe_expert_map_to_local(const moe_expert_map *m, int32_t s);
/* Physical slot of local index i, or -1 when out of range. */
int32_t    moe_expert_map_to_global(const moe_expert_map *m, int32_t i);
/* The global -> local table (n_physical), -1 = elsewhere: what
 * moe_experts_options.expert_map wants. Owned by the map; changes when the
 * map is reconfigured. */
const int32_t *moe_expert_map_table(const moe_expert_map *m);
/* Logical expert held in physical slot s (-1 when out of range). */
int32_t    moe_expert_map_logical(const moe_expert_map *m, int32_t s);
/* Replicas of logical expert e (>= 1), and the r-th of them (ascending slot). */
int32_t    moe_expert_map_n_replicas(const moe_expert_map *m, int32_t e);
int32_t    moe_expert_map_replica(const moe_expert_map *m, int32_t e, int32_t r);
/* Maps logical ids (n_tokens, top_k) to physical slots: token t uses replica
 * ((t * 2654435769) mod 2^32) mod n_replicas (the same for all of its slots,
 * so the choice is a pure function of the token index). With load (n_physical)
 * not NULL, adds 1 per slot to load[physical] (EPLB statistics). Ids outside
 * [0, E) give MOE_ERR_RANGE and nothing is written. */
moe_status moe_expert_map_route(const moe_expert_map *m, int64_t n_tokens, int32_t top_k,
                                const int32_t *logical_ids, int32_t *physical_ids,
                                int32_t *load);
/* Replaces slot -> logical (n_physical) after a rebalance; every logical
 * expert must keep >= 1 slot. Not while a forward using the map runs. */
moe_status moe_expert_map_set_physical(moe_expert_map *m, const int32_t *phys_to_logical,
                                       char *err, size_t errlen);
/* Recomputes placement for a new ep_size / ep_rank (elastic EP) without a new
 * object; slot -> logical is kept. Same conditions as create. */
moe_status moe_expert_map_reconfigure(moe_expert_map *m, int32_t ep_size, int32_t ep_rank,
                                      char *err, size_t errlen);

/* ----- EPLB: expert-parallel load balancing -----
 *
 * moe_eplb_rebalance() is the hierarchical policy of DeepSeek's EPLB (as in
 * vLLM): experts are split into n_groups groups, groups are packed onto
 * n_nodes nodes with balanced packing, within each node the hottest experts
 * get the redundant slots greedily (largest load / replica count first), and
 * the node's physical experts are packed onto its ranks. When n_groups is not
 * divisible by n_nodes it runs the global policy (1 group, 1 node).
 * Ties are deterministic: sorts are stable (equal loads keep ascending expert
 * index), "lightest pack" and "hottest expert" take the lowest index.
 * load (n_layers, n_logical) -> phys_to_logical (n_layers, n_physical), and
 * logcnt (n_layers, n_logical) replicas per logical expert (may be NULL).
 * Physical slot s of the result lives on rank s / (n_physical / n_ranks).
 * With old (n_layers, n_physical) not NULL, experts that stay on a rank keep
 * their old slot there (fewer local copies). Requires n_physical >= n_logical,
 * n_physical % n_ranks == 0, n_logical % n_groups == 0, and in the
 * hierarchical case n_ranks % n_nodes == 0 and per-node divisibility. */
moe_status moe_eplb_rebalance(const double *load, int32_t n_layers, int32_t n_logical,
                              int32_t n_physical, int32_t n_groups, int32_t n_nodes,
                              int32_t n_ranks, const int32_t *old, int32_t *phys_to_logical,
                              int32_t *logcnt, char *err, size_t errlen);

/* Balancedness of per-physical-slot loads over n_ranks ranks (linear slots):
 * mean over ranks of the rank load divided by the largest rank load; 1 when
 * all loads are 0. */
double moe_eplb_balancedness(const double *phys_load, int32_t n_physical, int32_t n_ranks);
/* Distributes logical loads (n_logical) over the slots of phys_to_logical
 * (n_physical): each replica gets load / n_replicas. */
void   moe_eplb_physical_load(const double *logical_load, int32_t n_logical,
                              const int32_t *phys_to_logical, int32_t n_physical,
                              double *phys_load);
/* Counts the expert copies a move from old to new (n_physical each, linear
 * slots over n_ranks) needs: *n_remote experts cross ranks (each rank's slot
 * whose new expert it did not hold before), *n_local are copied within a
 * rank, slots that keep their expert move nothing. */
void   moe_eplb_count_moves(const int32_t *old, const int32_t *new_, int32_t n_physical,
                            int32_t n_ranks, int64_t *n_remote, int64_t *n_local);

/* Load window: the per-physical-slot counters of the last `window` steps. */
typedef struct moe_eplb_window moe_eplb_window;
moe_status moe_eplb_window_create(int32_t n_physical, int32_t window, moe_eplb_window **out,
                                  char *err, size_t errlen);
void       moe_eplb_window_destroy(moe_eplb_window *w);
/* Pushes one step's counters (n_physical), dropping the oldest step when full. */
void       moe_eplb_window_push(moe_eplb_window *w, const int32_t *step_load);
/* Sum over the window, folded onto logical experts through m: load (n_logical). */
void       moe_eplb_window_logical_load(const moe_eplb_window *w, const moe_expert_map *m,
                                        double *load);

/* ----- Communicators and the layer's parallel configuration ----- */

typedef struct moe_comm moe_comm;

typedef struct moe_comm_options {
    int32_t deadline_ms;       /* per collective call; 0 = 60000                                */
} moe_comm_options;

/* A communicator over MPI. mpi_comm points to an MPI_Comm (e.g. &world);
 * the communicator is duplicated (MPI_Comm_dup, collective) and set to
 * MPI_ERRORS_RETURN. MOE_ERR_UNSUPPORTED when libmoe was built without MPI.
 * MPI must be initialized (thread level FUNNELED or better is enough: the
 * library calls MPI from the thread that calls it). */
moe_status moe_comm_create_mpi(const void *mpi_comm, const moe_comm_options *opts,
                               moe_comm **out, char *err, size_t errlen);
/* A communicator over NCCL: nccl_comm is an ncclComm_t created non-blocking
 * (config.blocking = 0) by the caller, which keeps owning it; stream is the
 * cudaStream_t the layer runs on. MOE_ERR_UNSUPPORTED without NCCL. */
moe_status moe_comm_create_nccl(void *nccl_comm, void *stream, const moe_comm_options *opts,
                                moe_comm **out, char *err, size_t errlen);
/* Frees the duplicated MPI communicator (not the caller's). NULL is a no-op. */
void       moe_comm_destroy(moe_comm *c);
int32_t    moe_comm_size(const moe_comm *c);
int32_t    moe_comm_rank(const moe_comm *c);
/* MOE_OK, or the sticky error that broke the communicator. */
moe_status moe_comm_status(const moe_comm *c);
/* The message of the last failure ("" if none). */
const char *moe_comm_last_error(const moe_comm *c);
/* Bytes this rank sent and seconds spent in communication since creation
 * (dispatch and combine separately), for benchmarks. */
typedef struct moe_comm_stats {
    int64_t bytes_sent_dispatch, bytes_sent_combine;
    double  seconds_dispatch, seconds_combine;   /* host time in the transport          */
    int64_t calls;
    /* CUDA layers over NCCL: device time of each phase of the forward (CUDA
     * events on the layer's stream, summed over forwards): dispatch (routing
     * ids to the host, send order, counts, rows), experts, combine (outputs
     * back, weighted sum, shared experts joined). 0 over MPI. */
    double  device_dispatch_s, device_experts_s, device_combine_s;
} moe_comm_stats;
void       moe_comm_get_stats(const moe_comm *c, moe_comm_stats *stats);

typedef enum moe_parallel_mode {
    MOE_PARALLEL_EP = 0,
    MOE_PARALLEL_TP,
} moe_parallel_mode;

/* How a layer runs across ranks: set moe_layer_options.parallel to it. The
 * pointers are borrowed and must outlive the layer. */
typedef struct moe_parallel {
    moe_parallel_mode     mode;
    moe_comm             *comm;  /* ep_size (EP) or tp_size (TP) = moe_comm_size(comm)        */
    /* EP: the map the routed experts were built with (its table is their
     * expert_map, its n_physical their n_experts_global, its n_logical the
     * router's n_experts). Routing ids are logical; the layer maps them to
     * physical slots with moe_expert_map_route before dispatch. */
    const moe_expert_map *map;
    /* EP: (n_physical) EPLB counters: each forward adds this rank's routed
     * slots per physical expert. NULL = not recorded (no cost). */
    int32_t              *load;
} moe_parallel;

/* Creates routed experts for tensor-parallel rank tp_rank of tp_size from the
 * full experts' options: W13's gate and up rows and W2's columns are sliced
 * to d_ff / tp_size, W13 biases sliced, W2 biases kept on rank 0 only (the
 * sum over ranks adds them once). Plain formats (F32, BF16, F16) only:
 * MOE_ERR_UNSUPPORTED otherwise; MOE_ERR_SHAPE when d_ff % tp_size != 0. */
moe_status moe_routed_experts_create_tp(const moe_experts_options *full, int32_t tp_size,
                                        int32_t tp_rank, moe_routed_experts **out, char *err,
                                        size_t errlen);

/* Moves expert weights after a rebalance (EP over MPI or NCCL): for every physical
 * slot of this rank whose logical expert changes from the map's current
 * assignment to new_phys_to_logical (n_physical), the new expert's bytes
 * (weights, scales, zeros, biases together) are copied from a rank that holds
 * it, or locally; then the map is committed (moe_expert_map_set_physical).
 * Collective over the communicator; only changed slots move. The experts
 * must own their weights (not MOE_EXPERTS_BORROW). Over MPI, migrate before
 * creating layers on the experts; over NCCL, after creating the CUDA layer:
 * the device copy moves and the host tables are refreshed from it.
 * *bytes_sent (may be NULL)
 * receives this rank's bytes sent. On failure the weights may be partly
 * moved and the map is left unchanged: treat both as lost. */
moe_status moe_eplb_migrate(moe_comm *c, moe_routed_experts *experts, moe_expert_map *map,
                            const int32_t *new_phys_to_logical, int64_t *bytes_sent,
                            char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* MOE_H */
