/*
 * experts-cpu.c - the `cpu` experts implementation: every local expert's
 * gated MLP on the contiguous dispatch layout, threaded over the context's
 * pool, with the per-format kernels of cpu-formats.h.
 *
 * For each row r of expert i (slot s = row_slot[r], token t = s / top_k):
 *
 *     x  = d->x[t] (* in_scale[s])                       (d_model)
 *     a  = act(W13[i] . x + b13[i])                       (d_ff)
 *     y[s] = (W2[i] . a + b2[i]) (* sigmoid(x[t] . gate)) (d_model)
 *
 * Work is split into parallel phases, each one moe__pool_run over tasks:
 *
 *   0. gather: rows of x (scaled by in_scale, then through the format's
 *      act_quantize if it has one) into the workspace; the shared gate per
 *      row.
 *   1. W13: task = (expert, block of bf activation columns). The task reads
 *      the bf gate rows and bf up rows of W13 (2 bf interleaved rows for
 *      SWIGLU_OAI, bf rows for RELU2) and applies them to ALL rows of the
 *      expert, chunk by chunk, then bias and the activation into a. The
 *      activation is the scalar moe__activate_row run on the tile itself
 *      (d_ff = bf over the tile's h), so its formulas are the reference's.
 *   1b. (formats with act_quantize) a rows through it for W2.
 *   2. W2: task = (expert, block of bm output rows of W2) over all rows of
 *      the expert; bias, gate and the scatter into d->y.
 *
 * When each phase would hold an expert in one task (decode of small
 * experts, four or more of them per thread: qwen3-30b-a3b at 1 and 8
 * tokens on 2 threads), a task instead runs one expert's rows through all
 * four (task_expert): one pool run per forward instead of four, so no
 * thread waits at a phase's end for the others' last task.
 *
 * Decode (an expert has one or a few rows) thus streams every touched
 * weight byte exactly once, split evenly over the threads; prefill re-reads
 * a weight tile (about TILE_BYTES, sized to stay in L2) from cache for each
 * chunk of NX_CHUNK rows. With two jobs (routed and shared, OVERLAPPED) both jobs'
 * tasks run in the same phases: that is the overlap.
 *
 * Formats with a pack hook (GPTQ, AWQ) get a re-layout of every expert's
 * matrices when a layer binds the experts (cpu_bind); phases 1 and 2 run
 * their gemm_packed on it, and the checkpoint layout's gemm on experts never
 * bound (same bits either way).
 *
 * Determinism: tiles only split the output dimensions (weight rows, input
 * rows), never K, and the kernels' per-output order is fixed (cpu-formats.h),
 * so results do not depend on threads, tile sizes or the rest of the batch.
 */
#include "cpu-formats.h"

#include <math.h>
#include <string.h>

/* ===== Tiling =====
 *
 * Weight bytes of one task, in two regimes:
 * - TILE_BYTES when some expert has more than NX_CHUNK rows (prefill): the
 *   tile is re-applied to each chunk of rows, so it must stay in L2 (with
 *   the chunk); big enough that the per-task overhead (an atomic increment,
 *   the epilogue) is noise.
 * - STREAM_TILE_BYTES otherwise (decode): every weight byte is read once,
 *   and longer runs per task stream better (Q4_K, qwen3-30b-a3b, 8 tokens:
 *   128/256-row tiles 6570 us, 384/1024 5500-5900, whole matrices
 *   5250-5600 on the CI machine kind); the task count floor in job_plan
 *   still gives every thread several.
 */
enum {
    TILE_BYTES        = 1 << 20,
    STREAM_TILE_BYTES = 1 << 22,
    BF_MAX        = 128,  /* activation columns per phase-1 task (256 W13 rows), prefill */
    BM_MAX        = 256,  /* W2 rows per phase-2 task, prefill                          */
    BF_STREAM_MAX = 1024, /* the same for decode                                        */
    BM_STREAM_MAX = 2048,
    NX_CHUNK      = 32,   /* input rows per kernel call                                 */
    GATHER_ROWS   = 16,   /* most rows per phase-0 / phase-1b task                      */
};

static size_t align64(size_t n) { return moe__align_up(n, 64); }

/* Bytes one weight takes, for tile sizing only. */
static double weight_bytes(moe_format f) {
    moe_format_info info;
    if (moe_format_get_info(f, &info) || info.bits_per_weight <= 0) return 2.0;
    return info.bits_per_weight / 8.0;
}

/* Rounds a tile size down to a multiple of 16 (MOE_CPU_GROUP_ROWS, the
 * packed kernels' row groups, so that no group is split between two
 * tasks), within [16, max] and then at most n. */
static int64_t tile_clamp(double v, int64_t max, int64_t n) {
    int64_t t = (int64_t)v / 16 * 16;
    if (t < 16) t = 16;
    if (t > max) t = max;
    return t < n ? t : n;
}

/* ===== Workspace layout (per job) ===== */

typedef struct job_layout {
    size_t xs_stride;   /* bytes per gathered input row                        */
    size_t a_stride;    /* bytes per f32 activation row                        */
    size_t aq_stride;   /* bytes per quantized activation row, 0 = none        */
    size_t scratch;     /* bytes of scratch per thread                         */
    size_t off_active, off_xs, off_a, off_aq, off_gate, off_scratch, total;
} job_layout;

static void job_layout_make(const moe_routed_experts *e, const moe__cpu_format *cf13,
                            const moe__cpu_format *cf2, int64_t n_rows, int n_threads,
                            job_layout *L) {
    const moe_experts_options *o = &e->opts;
    const size_t n = (size_t)(n_rows > 0 ? n_rows : 0);
    memset(L, 0, sizeof *L);
    L->xs_stride = align64(cf13->act_quantize ? cf13->act_row_bytes(o->d_model)
                                              : (size_t)o->d_model * sizeof(float));
    L->a_stride  = align64((size_t)o->d_ff * sizeof(float));
    L->aq_stride = cf2->act_quantize ? align64(cf2->act_row_bytes(o->d_ff)) : 0;
    /* Scratch: the h tile of phase 1, the y tile of phase 2, a scaled input
     * row before quantization (phase 0). */
    size_t s = (size_t)NX_CHUNK * 2 * BF_STREAM_MAX;
    if (s < (size_t)NX_CHUNK * BM_STREAM_MAX) s = (size_t)NX_CHUNK * BM_STREAM_MAX;
    if (s < (size_t)o->d_model) s = (size_t)o->d_model;
    L->scratch = align64(s * sizeof(float));

    size_t off     = 0;
    L->off_active  = off; off += align64((size_t)o->n_experts * sizeof(int32_t));
    L->off_xs      = off; off += n * L->xs_stride;
    L->off_a       = off; off += n * L->a_stride;
    L->off_aq      = off; off += n * L->aq_stride;
    L->off_gate    = off; off += align64(n * sizeof(float));
    L->off_scratch = off; off += (size_t)(n_threads > 0 ? n_threads : 1) * L->scratch;
    L->total       = off;
}

/* ===== The run's state ===== */

typedef struct job_state {
    const moe_routed_experts *e;
    const moe__dispatch      *d;
    const float              *gate;     /* (d_model) or NULL                      */
    const moe__cpu_format    *cf13, *cf2; /* W13's and W2's kernels            */
    const struct cpu_packed  *packed;   /* bind-time re-layout, or NULL           */
    job_layout                L;
    char                     *ws;       /* this job's workspace                   */
    int32_t                  *active;   /* (n_active) local experts with rows     */
    int32_t                   n_active;
    int64_t                   bf, nb1;  /* phase 1: columns per task, tasks/expert */
    int64_t                   bm, nb2;  /* phase 2: rows per task, tasks/expert   */
    int64_t                   gather_rows; /* phases 0 and 1b: rows per task      */
    bool                      per_expert;  /* one task per expert (task_expert)   */
    int64_t                   n_tasks[4]; /* per phase                            */
} job_state;

typedef struct run_state {
    job_state js[2];
    int       n_jobs;
    int       phase;
} run_state;

enum { PHASE_GATHER, PHASE_W13, PHASE_QUANT_A, PHASE_W2 };

static float *thread_scratch(const job_state *j, int thread) {
    return (float *)(j->ws + j->L.off_scratch + (size_t)thread * j->L.scratch);
}
static char *xs_row(const job_state *j, int64_t r) {
    return j->ws + j->L.off_xs + (size_t)r * j->L.xs_stride;
}
static float *a_row(const job_state *j, int64_t r) {
    return (float *)(j->ws + j->L.off_a + (size_t)r * j->L.a_stride);
}
static char *aq_row(const job_state *j, int64_t r) {
    return j->ws + j->L.off_aq + (size_t)r * j->L.aq_stride;
}
static float *gate_of(const job_state *j) { return (float *)(j->ws + j->L.off_gate); }

/* The local expert holding row r: the last i with expert_start[i] <= r. */
static int32_t expert_of_row(const moe__dispatch *d, int64_t r) {
    int32_t lo = 0, hi = d->n_local; /* expert_start[lo] <= r < expert_start[hi] */
    while (hi - lo > 1) {
        int32_t mid = lo + (hi - lo) / 2;
        if (d->expert_start[mid] <= r) lo = mid; else hi = mid;
    }
    return lo;
}

/* ===== Packed weights (formats with a pack hook) =====
 *
 * Made by cpu_bind for every local expert and kept in one of the experts'
 * impl_state slots: data13[i] / data2[i] point at expert i's packed
 * matrices in one block, NULL where the format has no pack hook. */

typedef struct cpu_packed {
    const void **data13, **data2; /* (n_experts) each                          */
    char        *block;          /* the packed bytes                            */
} cpu_packed;

static void cpu_packed_free(void *p) {
    cpu_packed *cp = p;
    if (!cp) return;
    moe__aligned_free(cp->block);
    moe__free(cp);
}

static const cpu_packed *packed_of(const moe_routed_experts *e) {
    for (int i = 0; i < 4; i++)
        if (e->impl_free[i] == cpu_packed_free) return e->impl_state[i];
    return NULL;
}

typedef void (*gemm_fn)(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                        size_t xq_stride, int64_t n_x, float *y, int64_t y_stride);

/* Matrix w as its kernel reads it (the packed copy when there is one), and
 * that kernel. */
static moe__wmat kernel_view(moe__wmat w, const moe__cpu_format *cf, const void *packed,
                             gemm_fn *gemm) {
    *gemm = packed ? cf->gemm_packed : cf->gemm;
    if (packed) w.data = packed;
    return w;
}
static moe__wmat job_w13(const job_state *j, int32_t ex, gemm_fn *gemm) {
    return kernel_view(moe__experts_w13(j->e, ex), j->cf13,
                       j->packed ? j->packed->data13[ex] : NULL, gemm);
}
static moe__wmat job_w2(const job_state *j, int32_t ex, gemm_fn *gemm) {
    return kernel_view(moe__experts_w2(j->e, ex), j->cf2, j->packed ? j->packed->data2[ex] : NULL,
                       gemm);
}

/* ===== Phase 0: gather input rows, gate ===== */

static void gather_rows(const job_state *j, int64_t r0, int64_t r1, int thread) {
    const moe__dispatch *d  = j->d;
    const int64_t        H  = d->d_model;
    float               *tmp = thread_scratch(j, thread);
    for (int64_t r = r0; r < r1; r++) {
        const int32_t s  = d->row_slot[r];
        char         *xr = xs_row(j, r);
        if (s < 0) { /* padding row: never written back */
            memset(xr, 0, j->L.xs_stride);
            if (j->gate) gate_of(j)[r] = 0;
            continue;
        }
        const float *x   = d->x + (size_t)(s / d->top_k) * (size_t)H;
        const float *src = x;
        if (d->in_scale) {
            float  sc  = d->in_scale[s];
            float *dst = j->cf13->act_quantize ? tmp : (float *)xr;
            for (int64_t k = 0; k < H; k++) dst[k] = x[k] * sc;
            src = dst;
        }
        if (j->cf13->act_quantize) {
            moe__wmat w = moe__experts_w13(j->e, expert_of_row(d, r));
            j->cf13->act_quantize(&w, src, H, xr);
        } else if (src == x) {
            memcpy(xr, x, (size_t)H * sizeof(float));
        }
        if (j->gate) {
            float g          = moe__cpu_dot_f32(x, j->gate, H);
            gate_of(j)[r]    = 1.0f / (1.0f + expf(-g));
        }
    }
}

/* The end of the rows of phase 0 / 1b task `task` (from task * gather_rows). */
static int64_t gather_task_end(const job_state *j, int64_t task) {
    const int64_t r1 = (task + 1) * j->gather_rows;
    return r1 < j->d->n_rows ? r1 : j->d->n_rows;
}

static void task_gather(const job_state *j, int64_t task, int thread) {
    gather_rows(j, task * j->gather_rows, gather_task_end(j, task), thread);
}

/* ===== Phase 1: W13, bias, activation ===== */

static void task_w13(const job_state *j, int64_t task, int thread) {
    const moe__dispatch       *d   = j->d;
    const moe_experts_options *o   = &j->e->opts;
    const int32_t              ex  = j->active[task / j->nb1];
    const int64_t              i0  = (task % j->nb1) * j->bf;
    const int64_t              i1  = i0 + j->bf < o->d_ff ? i0 + j->bf : o->d_ff;
    const int64_t              nb  = i1 - i0;
    const int64_t              row0 = d->expert_start[ex], row1 = d->expert_start[ex + 1];
    gemm_fn                    gemm;
    const moe__wmat            w   = job_w13(j, ex, &gemm);
    float                     *h   = thread_scratch(j, thread); /* (NX_CHUNK, 2 nb) */

    /* The activation of a tile is the row activation with d_ff = nb on the
     * tile's own h layout: [gate | up] for SILU/GELU, interleaved pairs for
     * SWIGLU_OAI, plain for RELU2. */
    moe_experts_options ot = *o;
    ot.d_ff                = nb;
    const bool    gated    = o->activation != MOE_ACT_RELU2;
    const int64_t hs       = gated ? 2 * nb : nb; /* h row stride */

    for (int64_t c0 = row0; c0 < row1; c0 += NX_CHUNK) {
        const int64_t nx = row1 - c0 < NX_CHUNK ? row1 - c0 : NX_CHUNK;
        const void   *xq = xs_row(j, c0);
        switch (o->activation) {
        case MOE_ACT_SWIGLU_OAI:
            gemm(&w, 2 * i0, 2 * i1, xq, j->L.xs_stride, nx, h, hs);
            break;
        case MOE_ACT_RELU2:
            gemm(&w, i0, i1, xq, j->L.xs_stride, nx, h, hs);
            break;
        default:
            gemm(&w, i0, i1, xq, j->L.xs_stride, nx, h, hs);
            gemm(&w, o->d_ff + i0, o->d_ff + i1, xq, j->L.xs_stride, nx, h + nb, hs);
            break;
        }
        for (int64_t i = 0; i < nx; i++) {
            float *hr = h + i * hs;
            if (w.bias) {
                if (o->activation == MOE_ACT_SWIGLU_OAI || o->activation == MOE_ACT_RELU2) {
                    const int64_t b0 = o->activation == MOE_ACT_RELU2 ? i0 : 2 * i0;
                    for (int64_t c = 0; c < hs; c++) hr[c] += w.bias[b0 + c];
                } else {
                    for (int64_t c = 0; c < nb; c++) hr[c] += w.bias[i0 + c];
                    for (int64_t c = 0; c < nb; c++) hr[nb + c] += w.bias[o->d_ff + i0 + c];
                }
            }
            moe__activate_row(&ot, hr, a_row(j, c0 + i) + i0);
        }
    }
}

/* ===== Phase 1b: quantize a for W2 ===== */

static void quant_a_rows(const job_state *j, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        moe__wmat w = moe__experts_w2(j->e, expert_of_row(j->d, r));
        j->cf2->act_quantize(&w, a_row(j, r), j->e->opts.d_ff, aq_row(j, r));
    }
}

static void task_quant_a(const job_state *j, int64_t task) {
    quant_a_rows(j, task * j->gather_rows, gather_task_end(j, task));
}

/* ===== Phase 2: W2, bias, gate, scatter ===== */

static void task_w2(const job_state *j, int64_t task, int thread) {
    const moe__dispatch *d    = j->d;
    const int64_t        H    = d->d_model;
    const int32_t        ex   = j->active[task / j->nb2];
    const int64_t        m0   = (task % j->nb2) * j->bm;
    const int64_t        m1   = m0 + j->bm < H ? m0 + j->bm : H;
    const int64_t        nm   = m1 - m0;
    const int64_t        row0 = d->expert_start[ex], row1 = d->expert_start[ex + 1];
    gemm_fn              gemm;
    const moe__wmat      w    = job_w2(j, ex, &gemm);
    const bool           q    = j->cf2->act_quantize != NULL;
    const size_t         xs   = q ? j->L.aq_stride : j->L.a_stride;
    float               *yt   = thread_scratch(j, thread); /* (NX_CHUNK, nm) */

    for (int64_t c0 = row0; c0 < row1; c0 += NX_CHUNK) {
        const int64_t nx = row1 - c0 < NX_CHUNK ? row1 - c0 : NX_CHUNK;
        const void   *xq = q ? (const void *)aq_row(j, c0) : (const void *)a_row(j, c0);
        gemm(&w, m0, m1, xq, xs, nx, yt, nm);
        for (int64_t i = 0; i < nx; i++) {
            const int32_t s = d->row_slot[c0 + i];
            if (s < 0) continue;
            const float *src = yt + i * nm;
            float       *dst = d->y + (size_t)s * (size_t)H + m0;
            if (w.bias) {
                for (int64_t c = 0; c < nm; c++) dst[c] = src[c] + w.bias[m0 + c];
            } else {
                memcpy(dst, src, (size_t)nm * sizeof(float));
            }
            if (j->gate) {
                const float g = gate_of(j)[c0 + i];
                for (int64_t c = 0; c < nm; c++) dst[c] *= g;
            }
        }
    }
}

/* ===== Decode: one expert through every phase ===== */

/* Task i = active expert i, when its W13 and its W2 are one task each
 * (nb1 = nb2 = 1, job_plan): the same kernels on the same rows as the
 * phases run them, so the same bits. */
static void task_expert(const job_state *j, int64_t task, int thread) {
    const int32_t ex = j->active[task];
    const int64_t r0 = j->d->expert_start[ex], r1 = j->d->expert_start[ex + 1];
    gather_rows(j, r0, r1, thread);
    task_w13(j, task, thread);
    if (j->cf2->act_quantize) quant_a_rows(j, r0, r1);
    task_w2(j, task, thread);
}

static void run_task(void *arg, int64_t task, int thread) {
    const run_state *rs = arg;
    const job_state *j  = &rs->js[0];
    if (rs->n_jobs > 1 && task >= j->n_tasks[rs->phase]) {
        task -= j->n_tasks[rs->phase];
        j = &rs->js[1];
    }
    switch (rs->phase) {
    case PHASE_GATHER:  task_gather(j, task, thread); break;
    case PHASE_W13:
        if (j->per_expert)
            task_expert(j, task, thread);
        else
            task_w13(j, task, thread);
        break;
    case PHASE_QUANT_A: task_quant_a(j, task); break;
    case PHASE_W2:      task_w2(j, task, thread); break;
    }
}

/* ===== The implementation ===== */

static const char *g_no_kernel[MOE_FORMAT_COUNT] = {
    [MOE_FORMAT_F32]         = "format f32 has no CPU kernel",
    [MOE_FORMAT_BF16]        = "format bf16 has no CPU kernel",
    [MOE_FORMAT_F16]         = "format f16 has no CPU kernel",
    [MOE_FORMAT_FP8_TENSOR]  = "format fp8-tensor has no CPU kernel",
    [MOE_FORMAT_FP8_CHANNEL] = "format fp8-channel has no CPU kernel",
    [MOE_FORMAT_FP8_BLOCK]   = "format fp8-block has no CPU kernel",
    [MOE_FORMAT_INT8_W8A8]   = "format int8-w8a8 has no CPU kernel",
    [MOE_FORMAT_INT4_GPTQ]   = "format int4-gptq has no CPU kernel",
    [MOE_FORMAT_INT4_AWQ]    = "format int4-awq has no CPU kernel",
    [MOE_FORMAT_INT8_GPTQ]   = "format int8-gptq has no CPU kernel",
    [MOE_FORMAT_MXFP4]       = "format mxfp4 has no CPU kernel",
    [MOE_FORMAT_NVFP4]       = "format nvfp4 has no CPU kernel",
    [MOE_FORMAT_Q8_0]        = "format q8_0 has no CPU kernel",
    [MOE_FORMAT_Q4_0]        = "format q4_0 has no CPU kernel",
    [MOE_FORMAT_Q4_K]        = "format q4_k has no CPU kernel",
    [MOE_FORMAT_Q6_K]        = "format q6_k has no CPU kernel",
    [MOE_FORMAT_GGUF_MXFP4]  = "format gguf-mxfp4 has no CPU kernel",
};

static const char *cpu_rejects(const moe_routed_experts *e) {
    const moe_format f[2] = { e->fmt13, e->fmt2 };
    for (int k = 0; k < 2; k++) {
        if ((unsigned)f[k] >= MOE_FORMAT_COUNT) return "unknown weight format";
        if (!moe__cpu_format_get(f[k])) return g_no_kernel[f[k]];
    }
    if ((unsigned)e->opts.activation > MOE_ACT_RELU2) return "unknown activation";
    return NULL;
}

/* Packs every local expert's matrices whose format has a pack hook, once
 * (a second layer on the same experts finds the first one's copy). The
 * checkpoint's layout stays: other backends and the unbound path read it. */
static moe_status cpu_bind(moe_routed_experts *e, moe_context *ctx, char *err, size_t errlen) {
    (void)ctx;
    const moe__cpu_format *cf[2] = { moe__cpu_format_get(e->fmt13), moe__cpu_format_get(e->fmt2) };
    if (!cf[0] || !cf[1] || (!cf[0]->pack && !cf[1]->pack) || packed_of(e)) return MOE_OK;
    const int32_t n = e->opts.n_experts;
    size_t        total = 0;
    for (int32_t i = 0; i < n; i++) {
        const moe__wmat w[2] = { moe__experts_w13(e, i), moe__experts_w2(e, i) };
        for (int m = 0; m < 2; m++)
            if (cf[m]->pack) total += align64(cf[m]->packed_bytes(&w[m]));
    }
    int slot = -1;
    for (int i = 0; i < 4 && slot < 0; i++)
        if (!e->impl_state[i]) slot = i;
    if (slot < 0) return moe__errf(err, errlen, MOE_ERR_INTERNAL, "cpu: no free impl_state slot");
    cpu_packed *cp = moe__calloc(1, sizeof *cp + 2 * (size_t)n * sizeof(void *));
    if (!cp) return moe__errf(err, errlen, MOE_ERR_NOMEM, "cpu: out of memory");
    cp->data13 = (const void **)(cp + 1);
    cp->data2  = cp->data13 + n;
    cp->block  = moe__aligned_alloc(total);
    if (!cp->block) {
        moe__free(cp);
        return moe__errf(err, errlen, MOE_ERR_NOMEM,
                         "cpu: out of memory for the %zu bytes of packed %s weights", total,
                         moe_format_name(cf[0]->pack ? e->fmt13 : e->fmt2));
    }
    moe_advise_huge_pages(cp->block, total);
    size_t off = 0;
    for (int32_t i = 0; i < n; i++) {
        const moe__wmat w[2] = { moe__experts_w13(e, i), moe__experts_w2(e, i) };
        for (int m = 0; m < 2; m++) {
            if (!cf[m]->pack) continue;
            cf[m]->pack(&w[m], cp->block + off);
            (m ? cp->data2 : cp->data13)[i] = cp->block + off;
            off += align64(cf[m]->packed_bytes(&w[m]));
        }
    }
    e->impl_state[slot] = cp;
    e->impl_free[slot]  = cpu_packed_free;
    return MOE_OK;
}

static size_t cpu_workspace_size(const moe_routed_experts *e, int64_t n_rows, int n_threads) {
    const moe__cpu_format *cf13 = moe__cpu_format_get(e->fmt13);
    const moe__cpu_format *cf2  = moe__cpu_format_get(e->fmt2);
    if (!cf13 || !cf2) return 0;
    job_layout L;
    job_layout_make(e, cf13, cf2, n_rows, n_threads, &L);
    return L.total;
}

/* Fills j's tiling and task counts; the active list is sorted by row count,
 * largest first, so that prefill's heavy experts start early (scheduling
 * only: results do not depend on task order). */
static void job_plan(job_state *j, int n_threads) {
    const moe_experts_options *o = &j->e->opts;
    const moe__dispatch       *d = j->d;
    const double               wb13 = weight_bytes(j->e->fmt13), wb2 = weight_bytes(j->e->fmt2);

    j->n_active = 0;
    for (int32_t i = 0; i < d->n_local; i++) {
        int32_t rows = d->expert_start[i + 1] - d->expert_start[i];
        if (rows <= 0) continue;
        int32_t k = j->n_active++;
        while (k > 0 && d->expert_start[j->active[k - 1] + 1] - d->expert_start[j->active[k - 1]] <
                            rows) {
            j->active[k] = j->active[k - 1];
            k--;
        }
        j->active[k] = i;
    }

    const int32_t most_rows = j->n_active ? d->expert_start[j->active[0] + 1] -
                                                d->expert_start[j->active[0]] : 0;
    const bool    stream    = most_rows <= NX_CHUNK;
    const double  tile      = stream ? STREAM_TILE_BYTES : TILE_BYTES;
    const int64_t bf_max    = stream ? BF_STREAM_MAX : BF_MAX;
    const int64_t bm_max    = stream ? BM_STREAM_MAX : BM_MAX;
    const double rows_per_col = o->activation == MOE_ACT_RELU2 ? 1.0 : 2.0;
    j->bf  = tile_clamp(tile / (rows_per_col * (double)o->d_model * wb13), bf_max, o->d_ff);
    j->bm  = tile_clamp(tile / ((double)o->d_ff * wb2), bm_max, o->d_model);
    /* Few experts touched (decode with a small top_k, shared experts alone):
     * smaller tiles so that every thread gets several. */
    while (j->bf > 16 && j->n_active * ((o->d_ff + j->bf - 1) / j->bf) < 4 * n_threads)
        j->bf = tile_clamp((double)j->bf / 2, bf_max, o->d_ff);
    while (j->bm > 16 && j->n_active * ((o->d_model + j->bm - 1) / j->bm) < 4 * n_threads)
        j->bm = tile_clamp((double)j->bm / 2, bm_max, o->d_model);
    j->nb1 = (o->d_ff + j->bf - 1) / j->bf;
    j->nb2 = (o->d_model + j->bm - 1) / j->bm;

    /* At decode (8 rows for a token of top-8) the rows' quantization is
     * tens of microseconds for some formats: at least two tasks a thread. */
    j->gather_rows = (d->n_rows + 2 * n_threads - 1) / (2 * n_threads);
    if (j->gather_rows > GATHER_ROWS) j->gather_rows = GATHER_ROWS;
    if (j->gather_rows < 1) j->gather_rows = 1;
    const int64_t n_gather     = (d->n_rows + j->gather_rows - 1) / j->gather_rows;
    j->per_expert              = stream && j->nb1 == 1 && j->nb2 == 1;
    j->n_tasks[PHASE_GATHER]   = j->per_expert ? 0 : n_gather;
    j->n_tasks[PHASE_W13]      = (int64_t)j->n_active * j->nb1;
    j->n_tasks[PHASE_QUANT_A]  = j->cf2->act_quantize && !j->per_expert ? n_gather : 0;
    j->n_tasks[PHASE_W2]       = j->per_expert ? 0 : (int64_t)j->n_active * j->nb2;
}

static moe_status cpu_run(const moe__experts_job *jobs, int n_jobs, moe__exec *ex,
                          void *workspace, size_t workspace_size) {
    if (n_jobs < 1 || n_jobs > 2 || !jobs)
        return moe__errf(ex->err, ex->errlen, MOE_ERR_INVALID_ARG,
                         "cpu experts: %d jobs (1 or 2 expected)", n_jobs);
    if (((uintptr_t)workspace & 63) != 0)
        return moe__errf(ex->err, ex->errlen, MOE_ERR_WORKSPACE,
                         "cpu experts: workspace is not 64-byte aligned");
    moe__pool *pool      = ex->ctx ? ex->ctx->pool : NULL;
    const int  n_threads = moe__pool_n_threads(pool);

    run_state rs;
    memset(&rs, 0, sizeof rs);
    rs.n_jobs  = n_jobs;
    size_t off = 0;
    for (int k = 0; k < n_jobs; k++) {
        job_state                *j = &rs.js[k];
        const moe_routed_experts *e = jobs[k].experts;
        const char               *why = e ? cpu_rejects(e) : "no experts";
        if (why) return moe__errf(ex->err, ex->errlen, MOE_ERR_UNSUPPORTED, "cpu experts: %s", why);
        j->e    = e;
        j->d    = jobs[k].d;
        j->gate = jobs[k].gate;
        j->cf13 = moe__cpu_format_get(e->fmt13);
        j->cf2  = moe__cpu_format_get(e->fmt2);
        j->packed = packed_of(e);
        if (j->d->d_model != e->opts.d_model || j->d->n_local > e->opts.n_experts)
            return moe__errf(ex->err, ex->errlen, MOE_ERR_SHAPE,
                             "cpu experts: dispatch (d_model %lld, %d local experts) does not "
                             "match the experts (d_model %lld, %d experts)",
                             (long long)j->d->d_model, j->d->n_local,
                             (long long)e->opts.d_model, e->opts.n_experts);
        job_layout_make(e, j->cf13, j->cf2, j->d->n_rows, n_threads, &j->L);
        if (off + j->L.total > workspace_size || !workspace)
            return moe__errf(ex->err, ex->errlen, MOE_ERR_WORKSPACE,
                             "cpu experts: workspace of %zu bytes, %zu needed", workspace_size,
                             off + j->L.total);
        j->ws     = (char *)workspace + off;
        j->active = (int32_t *)(j->ws + j->L.off_active);
        off += j->L.total;
        job_plan(j, n_threads);
    }

    for (int phase = PHASE_GATHER; phase <= PHASE_W2; phase++) {
        int64_t n = 0;
        for (int k = 0; k < n_jobs; k++) n += rs.js[k].n_tasks[phase];
        rs.phase = phase;
        moe__pool_run(pool, n, run_task, &rs);
    }
    return MOE_OK;
}

const moe__experts_impl moe__experts_cpu = {
    .name           = "cpu",
    .backend        = MOE_BACKEND_CPU,
    .rejects        = cpu_rejects,
    .bind           = cpu_bind,
    .workspace_size = cpu_workspace_size,
    .run            = cpu_run,
};
