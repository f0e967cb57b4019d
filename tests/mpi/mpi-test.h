/*
 * mpi-test.h - helpers of the multi-rank test programs in tests/mpi: a
 * synthetic MoE layer whose full weights every rank can rebuild from a seed,
 * and per-case reporting.
 *
 * Each program runs under `mpirun -np N`; rank 0 prints one line per case,
 * "ok NAME" or "FAIL NAME: why", and scripts/ep-test.sh counts them.
 * Header-only: each program is one translation unit.
 */
#ifndef MOE_MPI_TEST_H
#define MOE_MPI_TEST_H

#include "moe.h"

#include "internal.h"   /* the format table's reference quantizers (quantized experts) */

#include <mpi.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Helpers a program may leave unused. */
#define MT_FN __attribute__((unused)) static

static int mt_rank, mt_size;

MT_FN double mt_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A communicator over MPI_COMM_WORLD with the given deadline; the whole job
 * aborts when it cannot be made. */
MT_FN moe_comm *mt_comm(int32_t deadline_ms) {
    MPI_Comm         world = MPI_COMM_WORLD;
    moe_comm_options co    = { .deadline_ms = deadline_ms };
    moe_comm        *comm  = NULL;
    char             err[256];
    if (moe_comm_create_mpi(&world, &co, &comm, err, sizeof err)) {
        fprintf(stderr, "rank %d: %s\n", mt_rank, err);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    return comm;
}

/* MPI_Init, mt_rank and mt_size, and mt_comm(deadline_ms). */
MT_FN moe_comm *mt_init(int *argc, char ***argv, int32_t deadline_ms) {
    MPI_Init(argc, argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &mt_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &mt_size);
    return mt_comm(deadline_ms);
}

/* splitmix64, as tests/util.c */
typedef struct mt_rng { uint64_t s; } mt_rng;
static uint64_t mt_u64(mt_rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float mt_uniform(mt_rng *r) { return (float)(mt_u64(r) >> 40) / (float)(1 << 24); }
static void mt_fill(mt_rng *r, float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * (2.0f * mt_uniform(r) - 1.0f);
}

MT_FN uint16_t mt_bf16(float f) {
    union { float f; uint32_t u; } v = { f };
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}

/* The full model every rank can rebuild. */
typedef struct mt_model {
    int32_t        E, K;
    int64_t        H, I;
    moe_activation act;
    moe_format     format;                  /* routed experts: F32 (0), BF16, MXFP4, INT4_AWQ,
                                               INT4_GPTQ (act-order, mt_gidx)            */
    float         *w13, *w2, *b13, *b2;     /* (E, 2I, H), (E, H, I), (E, 2I), (E, H)  */
    float         *sw13, *sw2, *sgate;      /* shared: (2 Is, H), (H, Is), (H)         */
    int64_t        Is;
} mt_model;

MT_FN void mt_model_init(mt_model *m, uint64_t seed, int32_t E, int32_t K, int64_t H, int64_t I,
                   int biases, int64_t shared_I) {
    mt_rng r = { seed };
    memset(m, 0, sizeof *m);
    m->E = E, m->K = K, m->H = H, m->I = I, m->Is = shared_I;
    m->w13 = malloc(sizeof(float) * (size_t)(E * 2 * I * H));
    m->w2  = malloc(sizeof(float) * (size_t)(E * H * I));
    mt_fill(&r, m->w13, (size_t)(E * 2 * I * H), 0.3f);
    mt_fill(&r, m->w2, (size_t)(E * H * I), 0.3f);
    if (biases) {
        m->b13 = malloc(sizeof(float) * (size_t)(E * 2 * I));
        m->b2  = malloc(sizeof(float) * (size_t)(E * H));
        mt_fill(&r, m->b13, (size_t)(E * 2 * I), 0.1f);
        mt_fill(&r, m->b2, (size_t)(E * H), 0.1f);
    }
    if (shared_I) {
        m->sw13  = malloc(sizeof(float) * (size_t)(2 * shared_I * H));
        m->sw2   = malloc(sizeof(float) * (size_t)(H * shared_I));
        m->sgate = malloc(sizeof(float) * (size_t)H);
        mt_fill(&r, m->sw13, (size_t)(2 * shared_I * H), 0.3f);
        mt_fill(&r, m->sw2, (size_t)(H * shared_I), 0.3f);
        mt_fill(&r, m->sgate, (size_t)H, 0.5f);
    }
}

MT_FN void mt_model_free(mt_model *m) {
    free(m->w13), free(m->w2), free(m->b13), free(m->b2);
    free(m->sw13), free(m->sw2), free(m->sgate);
}

/* A GPTQ act-order g_idx (cols) of logical expert e's projection proj (0:
 * w13, 1: w2): the columns cut into groups of g in a random order,
 * g_idx[perm[j]] = j / g. Seeded from (e, proj): every rank builds the same
 * table for the same expert, and experts differ, so a slot that kept the
 * column order of the expert it held before computes a wrong result. */
MT_FN void mt_gidx(int32_t e, int proj, int64_t cols, int32_t g, int32_t *g_idx) {
    mt_rng r = { 1000 + 2 * (uint64_t)e + (uint64_t)proj };
    for (int64_t k = 0; k < cols; k++) g_idx[k] = (int32_t)(k / g);
    for (int64_t k = cols - 1; k > 0; k--) {   /* Fisher-Yates */
        const int64_t j = (int64_t)(mt_u64(&r) % (uint64_t)(k + 1));
        const int32_t t = g_idx[k];
        g_idx[k] = g_idx[j], g_idx[j] = t;
    }
}

/* Routed experts holding, in local order, the logical experts `which` (n),
 * with the expert map table (n_global) or NULL. */
MT_FN moe_status mt_experts(const mt_model *m, const int32_t *which, int32_t n,
                            int32_t n_global, const int32_t *table, moe_routed_experts **out,
                            char *err, size_t errlen) {
    /* RELU2 has no gate: W13 holds d_ff rows, not 2 d_ff. */
    const int64_t rows13 = m->act == MOE_ACT_RELU2 ? m->I : 2 * m->I;
    const size_t s13 = (size_t)(rows13 * m->H), s2 = (size_t)(m->H * m->I);
    float *w13 = malloc(sizeof(float) * s13 * (size_t)n);
    float *w2  = malloc(sizeof(float) * s2 * (size_t)n);
    float *b13 = m->b13 ? malloc(sizeof(float) * (size_t)rows13 * (size_t)n) : NULL;
    float *b2  = m->b2 ? malloc(sizeof(float) * (size_t)m->H * (size_t)n) : NULL;
    for (int32_t i = 0; i < n; i++) {
        int32_t e = which[i];
        memcpy(w13 + (size_t)i * s13, m->w13 + (size_t)e * s13, sizeof(float) * s13);
        memcpy(w2 + (size_t)i * s2, m->w2 + (size_t)e * s2, sizeof(float) * s2);
        if (b13) memcpy(b13 + i * rows13, m->b13 + e * rows13, sizeof(float) * (size_t)rows13);
        if (b2) memcpy(b2 + i * m->H, m->b2 + e * m->H, sizeof(float) * (size_t)m->H);
    }
    if (m->format == MOE_FORMAT_BF16) {
        /* Round to bf16 in place (round to nearest even); the buffers are ours. */
        uint16_t *h = (uint16_t *)(void *)w13;
        for (size_t i = 0; i < s13 * (size_t)n; i++) h[i] = mt_bf16(w13[i]);
        h = (uint16_t *)(void *)w2;
        for (size_t i = 0; i < s2 * (size_t)n; i++) h[i] = mt_bf16(w2[i]);
    }
    moe_experts_options o = {
        .n_experts = n, .d_model = m->H, .d_ff = m->I, .format = m->format,
        .activation = m->act, .w13 = { .data = w13, .bias = b13 }, .w2 = { .data = w2, .bias = b2 },
        .n_experts_global = table ? n_global : 0, .expert_map = table,
    };
    /* Quantized formats (MXFP4, INT4_AWQ, INT4_GPTQ): each expert through the
     * format's reference quantizer; data, scales, zeros and g_idx of w13, then
     * of w2. GPTQ groups by each logical expert's own g_idx (mt_gidx), which
     * the quantizer reads from the view. Create copies the tables: freed here. */
    void *q[8] = { NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL };
    if (m->format == MOE_FORMAT_MXFP4 || m->format == MOE_FORMAT_INT4_AWQ ||
        m->format == MOE_FORMAT_INT4_GPTQ) {
        const moe__format_traits *ft = moe__format(m->format);
        const bool    awq  = m->format == MOE_FORMAT_INT4_AWQ;
        const bool    gptq = m->format == MOE_FORMAT_INT4_GPTQ;
        moe__wsizes   sz[2];
        const int64_t rows[2] = { rows13, m->H }, cols[2] = { m->H, m->I };
        const float  *src[2]  = { w13, w2 };
        moe_weights  *dst[2]  = { &o.w13, &o.w2 };
        if (awq || gptq) o.group_size = 32, o.scale_format = MOE_FORMAT_F16;
        for (int t = 0; t < 2; t++) {
            moe_status st = ft->sizes(rows[t], cols[t], o.group_size, o.scale_format, &sz[t], err,
                                      errlen);
            if (st) return st;
            for (int j = 0; j < 4; j++) {
                const size_t b = j == 0   ? sz[t].data
                                 : j == 1 ? sz[t].scales
                                 : j == 2 ? sz[t].zeros
                                          : sz[t].g_idx;
                q[4 * t + j] = b ? calloc((size_t)n, b) : NULL;
            }
            for (int32_t i = 0; i < n; i++) {
                int32_t *g_idx = gptq ? (int32_t *)(void *)((char *)q[4 * t + 3] +
                                                            (size_t)i * sz[t].g_idx)
                                      : NULL;
                if (g_idx) mt_gidx(which[i], t, cols[t], o.group_size, g_idx);
                moe__wmat w = { .format = m->format, .rows = rows[t], .cols = cols[t],
                                .group_size = o.group_size, .scale_format = o.scale_format,
                                .data = (char *)q[4 * t] + (size_t)i * sz[t].data,
                                .scales = (char *)q[4 * t + 1] + (size_t)i * sz[t].scales,
                                .zeros = awq ? (char *)q[4 * t + 2] + (size_t)i * sz[t].zeros
                                             : NULL,
                                .g_idx = g_idx };
                ft->quantize_ref(src[t] + (size_t)i * (size_t)(rows[t] * cols[t]), &w);
            }
            dst[t]->data   = q[4 * t];
            dst[t]->scales = q[4 * t + 1];
            dst[t]->zeros  = q[4 * t + 2];
            dst[t]->g_idx  = q[4 * t + 3];
        }
    }
    moe_status st = moe_routed_experts_create(&o, out, err, errlen);
    free(w13), free(w2), free(b13), free(b2);
    for (int i = 0; i < 8; i++) free(q[i]);
    return st;
}

MT_FN moe_status mt_shared(const mt_model *m, int gate, moe_shared_experts **out, char *err,
                           size_t errlen) {
    moe_shared_options so = {
        .mlp = { .n_experts = 1, .d_model = m->H, .d_ff = m->Is, .format = MOE_FORMAT_F32,
                 .activation = MOE_ACT_SILU, .w13 = { .data = m->sw13 }, .w2 = { .data = m->sw2 } },
        .gate = gate ? m->sgate : NULL,
    };
    return moe_shared_experts_create(&so, out, err, errlen);
}

/* Rank 0 reports a case: failed on any rank -> FAIL with rank 0's (or the
 * first failing rank's) reason. Returns 1 when ok everywhere. */
MT_FN int mt_report(const char *name, int local_fail, const char *why) {
    int any = 0;
    MPI_Allreduce(&local_fail, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (local_fail) fprintf(stderr, "  rank %d: %s: %s\n", mt_rank, name, why);
    MPI_Barrier(MPI_COMM_WORLD);
    if (mt_rank == 0) {
        if (any) printf("FAIL %s (np %d)\n", name, mt_size);
        else printf("ok   %s (np %d)\n", name, mt_size);
        fflush(stdout);
    }
    return !any;
}

/* A failure message into why[256]. */
MT_FN int mt_fail(char *why, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
MT_FN int mt_fail(char *why, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, 256, fmt, ap);
    va_end(ap);
    return 1;
}

#endif /* MOE_MPI_TEST_H */
