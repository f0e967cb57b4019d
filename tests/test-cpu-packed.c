/*
 * test-cpu-packed.c - the bind-time re-layouts: of the weight-only group
 * formats (INT4_GPTQ, INT8_GPTQ, INT4_AWQ; src/cpu/gemv-wna16.c) and of
 * the GGUF formats' 16-row groups (src/cpu/gemv-q4k.c, gemv-q8_0.c). For
 * random checkpoint tables made by the formats' reference quantizers,
 * gemm_packed on pack()'s output must give the same bits as gemm on the
 * checkpoint layout (cpu-formats.h's contract), without g_idx, with a g_idx
 * of random groups (the act-order kernels) and with one that a quantizer
 * makes (groups of group_size columns of a random permutation: the grouped
 * kernels in k_order, also held bitwise against the grouped kernels on the
 * same matrix with its columns sorted by group), group sizes 32/64/128, f16 and bf16 scales, row counts that are not
 * a multiple of the 32-row panel, row ranges that start and end anywhere
 * and 1..9 input rows. The full products are also held against the fp64
 * dot product of the reference dequantization (dequant_row_ref), so a
 * packed path that agreed with a broken gemm would still fail; and pack()
 * must write every byte it owns (the same bytes over two different
 * initial buffers) and, for whole panels, take exactly the checkpoint's
 * bytes.
 */
#include "test.h"

#include "../src/cpu/cpu-formats.h"
#include "../src/quant/quant.h"

#include <stdlib.h>
#include <string.h>

typedef struct pcase {
    moe_format f;
    int32_t    group;
    moe_format sf;
    int64_t    rows, cols;
    int        g_idx; /* GIDX_* */
} pcase;

enum { GIDX_NONE, GIDX_RANDOM, GIDX_SORTABLE };
static const char *const gidx_name[] = { "", " g_idx", " sorted g_idx" };

/* y = gemm of w (rows [0, R)) on NX rows x (K each, f32), through the
 * format's act_quantize; xq (NX rows of xs bytes) keeps the kernel's rows. */
static void run_gemm(const moe__cpu_format *cf, const moe__wmat *w, const float *x, int64_t NX,
                     char *xq, size_t xs, float *y) {
    const int64_t K = w->cols;
    for (int64_t i = 0; i < NX; i++) cf->act_quantize(w, x + i * K, K, xq + (size_t)i * xs);
    cf->gemm(w, 0, w->rows, xq, xs, NX, y, w->rows);
}

/* The formats packed in 16-row groups (gemv-q4k.c, gemv-q6k.c,
 * gemv-q8_0.c, gemv-int8.c). */
static bool rows16(moe_format f) {
    return f == MOE_FORMAT_Q4_K || f == MOE_FORMAT_Q6_K || f == MOE_FORMAT_Q4_0 || f == MOE_FORMAT_Q8_0 ||
           f == MOE_FORMAT_GGUF_MXFP4 || f == MOE_FORMAT_INT8_W8A8;
}

static void check_packed(const pcase *c) {
    const moe__format_traits *t  = moe__format(c->f);
    const moe__cpu_format    *cf = moe__cpu_format_get(c->f);
    const char *name = t->info.name;
    REQUIRE(cf && cf->packed_bytes && cf->pack && cf->gemm_packed, "%s: no packed hooks", name);
    moe__wsizes s;
    char err[256];
    REQUIRE(t->sizes(c->rows, c->cols, c->group, c->sf, &s, err, sizeof err) == MOE_OK, "%s", err);
    test_rng rng = { 1000 + 31 * (uint64_t)c->f + (uint64_t)c->group + (uint64_t)c->rows +
                     (c->g_idx ? 7 : 0) };
    const int64_t R = c->rows, K = c->cols, NX = 9, ng = K / c->group;
    float   *src   = malloc(sizeof(float) * (size_t)(R * K));
    void    *data  = calloc(1, s.data), *sc = calloc(1, s.scales), *zp = calloc(1, s.zeros + 4);
    int32_t *g_idx = malloc(sizeof(int32_t) * (size_t)K);
    test_fill_normal(&rng, src, (size_t)(R * K), 0.1f);
    int32_t *order = malloc(sizeof(int32_t) * (size_t)K);
    for (int64_t k = 0; k < K; k++) g_idx[k] = (int32_t)(test_rng_u64(&rng) % (uint64_t)ng);
    if (c->g_idx == GIDX_SORTABLE) test_gidx_permuted(&rng, K, c->group, g_idx);
    const int sortable = moe__gidx_order(g_idx, K, c->group, order);
    if (!rows16(c->f)) /* (no g_idx in the GGUF formats: one group of K sorts) */
        CHECK(sortable == (c->g_idx == GIDX_SORTABLE), "%s: moe__gidx_order says %d", name,
              sortable);
    moe__wmat w = { .format = c->f, .rows = R, .cols = K, .group_size = c->group,
                    .scale_format = c->sf, .data = data, .scales = sc,
                    .zeros = s.zeros ? zp : NULL, .g_idx = c->g_idx ? g_idx : NULL,
                    .k_order = c->g_idx == GIDX_SORTABLE ? order : NULL, .scale2 = 1.0f };
    REQUIRE(t->quantize_ref(src, &w) == MOE_OK, "%s: quantize", name);

    /* pack over two different initial buffers: every byte must be written. */
    const size_t pb = cf->packed_bytes(&w);
    CHECK(pb >= s.data + s.scales + s.zeros, "%s: %zu packed bytes < the checkpoint's %zu", name,
          pb, s.data + s.scales + s.zeros);
    const bool whole = rows16(c->f) ? R % 16 == 0 && K % 4 == 0 : R % 32 == 0 && ng % 4 == 0;
    if (whole) /* no padding: the copy costs the checkpoint's bytes */
        CHECK(pb == s.data + s.scales + s.zeros, "%s: %zu packed bytes, checkpoint %zu", name, pb,
              s.data + s.scales + s.zeros);
    const size_t pba = (pb + 63) / 64 * 64;
    char *pk = aligned_alloc(64, pba), *pk2 = aligned_alloc(64, pba);
    memset(pk, 0xa5, pba);
    memset(pk2, 0, pba);
    cf->pack(&w, pk);
    cf->pack(&w, pk2);
    CHECK(memcmp(pk, pk2, pb) == 0, "%s: pack left bytes unwritten", name);
    moe__wmat wp = w;
    wp.data = pk;

    float *x = aligned_alloc(64, (sizeof(float) * (size_t)(NX * K) + 63) / 64 * 64);
    test_fill_normal(&rng, x, (size_t)(NX * K), 1.0f);
    for (int64_t k = 0; k < K; k++) x[4 * K + k] *= 1e-6f; /* a tiny row */
    /* The kernels' input rows (act_quantize: the 4-bit formats' bf16 pairs,
     * in k_order where there is one). */
    REQUIRE(cf->act_quantize, "%s: no act_quantize", name);
    const size_t xs = (cf->act_row_bytes(K) + 63) / 64 * 64;
    char *xq = aligned_alloc(64, xs * (size_t)NX);

    /* Full products: packed == checkpoint bitwise, and near the reference. */
    float  *full = malloc(sizeof(float) * (size_t)(NX * R));
    float  *part = malloc(sizeof(float) * (size_t)(NX * R));
    float  *wrow = malloc(sizeof(float) * (size_t)K);
    run_gemm(cf, &w, x, NX, xq, xs, full);
    if (c->g_idx == GIDX_SORTABLE) {
        /* The same matrix and rows with K sorted by group, quantized without
         * g_idx (the same scales and values) and run by the grouped kernels:
         * the same bits. */
        float  *srcs = malloc(sizeof(float) * (size_t)(R * K));
        float  *xsrt = malloc(sizeof(float) * (size_t)(NX * K));
        float  *ys   = malloc(sizeof(float) * (size_t)(NX * R));
        void   *ds   = calloc(1, s.data), *scs = calloc(1, s.scales);
        char   *xqs  = aligned_alloc(64, xs * (size_t)NX);
        for (int64_t j = 0; j < K; j++) {
            for (int64_t r = 0; r < R; r++) srcs[r * K + j] = src[r * K + order[j]];
            for (int64_t i = 0; i < NX; i++) xsrt[i * K + j] = x[i * K + order[j]];
        }
        moe__wmat ws = w;
        ws.data = ds, ws.scales = scs, ws.g_idx = NULL, ws.k_order = NULL;
        REQUIRE(t->quantize_ref(srcs, &ws) == MOE_OK, "%s: quantize sorted", name);
        CHECK(memcmp(scs, sc, s.scales) == 0, "%s: sorted columns, other scales", name);
        run_gemm(cf, &ws, xsrt, NX, xqs, xs, ys);
        long diff = 0;
        for (int64_t i = 0; i < NX * R; i++) diff += memcmp(&ys[i], &full[i], 4) != 0;
        CHECK(diff == 0, "%s g%d: %ld outputs differ from the grouped kernel on sorted columns",
              name, (int)c->group, diff);
        free(srcs); free(xsrt); free(ys); free(ds); free(scs); free(xqs);
    }
    for (int64_t i = 0; i < NX; i++) /* the values the kernels' rows hold */
        if (t->act_fake_quant_ref) t->act_fake_quant_ref(&w, x + i * K, K);
    long bad = 0, off_ref = 0;
    for (int64_t r = 0; r < R; r++) {
        t->dequant_row_ref(&w, r, wrow);
        for (int64_t i = 0; i < NX; i++) {
            double m;
            const double a = test_dot_ref(wrow, x + i * K, K, &m);
            if (!(fabs((double)full[i * R + r] - a) <= 1e-5 * m + 1e-30) && off_ref++ < 3)
                test_fail(__FILE__, __LINE__, "%s: gemm y[%lld][%lld] = %.9g, reference %.9g",
                          name, (long long)i, (long long)r, full[i * R + r], a);
        }
    }
    CHECK(off_ref == 0, "%s: %ld outputs of gemm off the reference", name, off_ref);

    /* Row ranges (unaligned to the panel, inside one panel, across several)
     * and every input count 1..9, in chunks. */
    const int64_t ranges[][2] = { { 0, R },      { 3, 77 < R ? 77 : R }, { 31, 33 },
                                  { 32, 160 < R ? 160 : R }, { R - 5, R }, { 17, R - 1 },
                                  { R - 1, R },  { 0, 1 } };
    for (size_t ri = 0; ri < sizeof ranges / sizeof ranges[0]; ri++) {
        const int64_t r0 = ranges[ri][0], r1 = ranges[ri][1];
        if (r0 < 0 || r1 > R || r0 >= r1) continue;
        for (int64_t n = 1; n <= NX; n++) {
            for (int64_t i0 = 0; i0 < NX; i0 += n) {
                const int64_t nx = NX - i0 < n ? NX - i0 : n;
                for (int64_t j = 0; j < nx * (r1 - r0); j++) part[j] = NAN;
                cf->gemm_packed(&wp, r0, r1, xq + (size_t)i0 * xs, xs, nx, part,
                                r1 - r0);
                for (int64_t i = 0; i < nx; i++)
                    for (int64_t r = r0; r < r1; r++)
                        if (memcmp(&part[i * (r1 - r0) + (r - r0)], &full[(i0 + i) * R + r], 4) &&
                            bad++ < 3)
                            test_fail(__FILE__, __LINE__, "%s g%d %s%s: rows [%lld, %lld), %lld "
                                      "inputs: packed y[%lld][%lld] = %a, gemm %a", name,
                                      (int)c->group, moe_format_name(c->sf),
                                      gidx_name[c->g_idx], (long long)r0, (long long)r1,
                                      (long long)nx, (long long)(i0 + i), (long long)r,
                                      (double)part[i * (r1 - r0) + (r - r0)],
                                      (double)full[(i0 + i) * R + r]);
            }
        }
    }
    CHECK(bad == 0, "%s g%d%s: %ld packed outputs differ from gemm", name, (int)c->group,
          gidx_name[c->g_idx], bad);
    free(src); free(data); free(sc); free(zp); free(g_idx); free(order); free(pk); free(pk2);
    free(x); free(xq);
    free(full); free(part); free(wrow);
}

TEST(cpu_packed_wna16_matches_gemm) {
    const moe_format fmts[] = { MOE_FORMAT_INT4_GPTQ, MOE_FORMAT_INT8_GPTQ, MOE_FORMAT_INT4_AWQ };
    const int32_t    groups[] = { 32, 64, 128 };
    for (size_t fi = 0; fi < 3; fi++)
        for (size_t gi = 0; gi < 3; gi++)
            for (int act = GIDX_NONE; act <= GIDX_SORTABLE; act++) {
                if (act && fmts[fi] == MOE_FORMAT_INT4_AWQ) continue; /* GPTQ only */
                const pcase c = { fmts[fi], groups[gi],
                                  gi == 1 ? MOE_FORMAT_BF16 : MOE_FORMAT_F16, 200, 384, act };
                check_packed(&c);
            }
}

/* The 16-row groups (src/cpu/gemv-q4k.c, gemv-q6k.c, gemv-q8_0.c,
 * gemv-int8.c):
 * whole groups, a padded last group, fewer rows than a group; one block
 * along K and several, for the 32-value blocks also a count that leaves
 * the checkpoint kernel's last unit of 4 blocks partial, for INT8 W8A8 K
 * not a multiple of 4 (zero padding) and past the packed kernel's int32
 * chunk (16384 values). */
TEST(cpu_packed_groups_match_gemm) {
    const struct { moe_format f; int32_t block; int64_t rows, cols; } cases[] = {
        { MOE_FORMAT_Q4_K, 256, 200, 768 },     { MOE_FORMAT_Q4_K, 256, 192, 2048 },
        { MOE_FORMAT_Q4_K, 256, 5, 256 },       { MOE_FORMAT_Q4_K, 256, 33, 1280 },
        { MOE_FORMAT_Q6_K, 256, 200, 768 },     { MOE_FORMAT_Q6_K, 256, 5, 256 },
        { MOE_FORMAT_Q6_K, 256, 48, 2048 },
        { MOE_FORMAT_Q4_0, 32, 200, 768 },      { MOE_FORMAT_Q4_0, 32, 48, 352 },
        { MOE_FORMAT_Q4_0, 32, 7, 32 },         { MOE_FORMAT_Q8_0, 32, 200, 768 },
        { MOE_FORMAT_Q8_0, 32, 37, 416 },       { MOE_FORMAT_Q8_0, 32, 16, 64 },
        { MOE_FORMAT_GGUF_MXFP4, 32, 200, 768 }, { MOE_FORMAT_GGUF_MXFP4, 32, 21, 352 },
        { MOE_FORMAT_GGUF_MXFP4, 32, 64, 2880 },
        { MOE_FORMAT_INT8_W8A8, 1, 200, 768 },  { MOE_FORMAT_INT8_W8A8, 1, 19, 250 },
        { MOE_FORMAT_INT8_W8A8, 1, 3, 7 },      { MOE_FORMAT_INT8_W8A8, 1, 32, 16900 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (!moe__cpu_format_get(cases[i].f)->pack) {
            TEST_SKIP("no packed %s kernel in this build", moe_format_name(cases[i].f));
        }
        const pcase c = { cases[i].f, cases[i].block, MOE_FORMAT_F16, cases[i].rows,
                          cases[i].cols, GIDX_NONE };
        check_packed(&c);
    }
}

TEST(cpu_packed_wna16_shapes) {
    /* Fewer rows than a panel, one panel plus a few, K of many groups
     * (more than one zeros line per AWQ panel: groups % 4 != 0). */
    const pcase cases[] = {
        { MOE_FORMAT_INT4_AWQ, 32, MOE_FORMAT_BF16, 8, 288, GIDX_NONE },
        { MOE_FORMAT_INT4_AWQ, 64, MOE_FORMAT_F16, 40, 1344, GIDX_NONE },
        { MOE_FORMAT_INT4_GPTQ, 128, MOE_FORMAT_F16, 13, 1152, GIDX_RANDOM },
        { MOE_FORMAT_INT4_GPTQ, 128, MOE_FORMAT_BF16, 45, 1152, GIDX_SORTABLE },
        { MOE_FORMAT_INT4_GPTQ, 32, MOE_FORMAT_BF16, 136, 2080, GIDX_NONE },
        { MOE_FORMAT_INT4_GPTQ, 32, MOE_FORMAT_F16, 100, 2080, GIDX_SORTABLE },
        { MOE_FORMAT_INT8_GPTQ, 32, MOE_FORMAT_F16, 1, 96, GIDX_NONE },
        { MOE_FORMAT_INT8_GPTQ, 64, MOE_FORMAT_BF16, 264, 640, GIDX_RANDOM },
        { MOE_FORMAT_INT8_GPTQ, 128, MOE_FORMAT_BF16, 70, 1024, GIDX_SORTABLE },
        { MOE_FORMAT_INT4_AWQ, 128, MOE_FORMAT_F16, 64, 1024, GIDX_NONE }, /* whole panels */
        { MOE_FORMAT_INT4_GPTQ, 64, MOE_FORMAT_F16, 96, 512, GIDX_NONE },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_packed(&cases[i]);
}

/* moe__gidx_order on small tables: the stable sort by group, and the tables
 * it declines (a group of another size, a group out of range). */
TEST(cpu_gidx_order) {
    int32_t order[8];
    const int32_t plain[8] = { 0, 0, 0, 0, 1, 1, 1, 1 }; /* k / 4: the identity */
    CHECK(moe__gidx_order(plain, 8, 4, order) == 1, "k / 4 is sortable");
    for (int k = 0; k < 8; k++) CHECK(order[k] == k, "order[%d] = %d", k, order[k]);
    const int32_t mixed[8] = { 1, 0, 1, 0, 0, 1, 1, 0 };
    const int32_t want[8]  = { 1, 3, 4, 7, 0, 2, 5, 6 }; /* group 0's columns, then group 1's */
    CHECK(moe__gidx_order(mixed, 8, 4, order) == 1, "two groups of four");
    for (int k = 0; k < 8; k++)
        CHECK(order[k] == want[k], "order[%d] = %d, want %d", k, order[k], want[k]);
    const int32_t uneven[8] = { 0, 0, 0, 0, 0, 1, 1, 1 };
    const int32_t low[8]    = { 0, 0, 0, 0, 1, 1, 1, -1 };
    const int32_t high[8]   = { 0, 0, 0, 0, 1, 1, 1, 2 };
    CHECK(moe__gidx_order(uneven, 8, 4, order) == 0, "five and three columns");
    CHECK(moe__gidx_order(low, 8, 4, order) == 0, "group -1");
    CHECK(moe__gidx_order(high, 8, 4, order) == 0, "group 2 of 2");
}
