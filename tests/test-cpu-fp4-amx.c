/*
 * test-cpu-fp4-amx.c - the AMX-BF16 path of the MXFP4 and NVFP4 CPU
 * kernels (src/cpu/gemv-fp4-amx.c), through its entry points (MXFP4's
 * format entry routes there, NVFP4's does not: the tests hold both formats
 * of the path), and the MXFP4 format entry's hooks against them:
 *   - every output against the fp64 dot product of the reference
 *     dequantization (dequant_row_ref) with the reference activation
 *     (act_fake_quant_ref: bf16 rounding): per element within fp32
 *     summation error, cosine >= 0.9999 and NMSE over the whole product;
 *   - shapes with K not a multiple of 128 (MXFP4 3 sections, NVFP4 half
 *     sections), rows not a multiple of the 16-row panel, 1 to 37 inputs
 *     (more than one 16-token tile);
 *   - batch invariance: one input at a time, all at once and any row
 *     range give the same bits per output;
 *   - the packed copy gives the same bits as the checkpoint layout, and
 *     pack writes every byte it owns;
 *   - MXFP4 rows with scales the tiles cannot take exactly (e = 0, 1, 253,
 *     254: bf16 denormals or overflow) still match the reference (they take
 *     the per-row fallback), next to ordinary rows of the same panel;
 *   - MXFP4's gemm and gemm_packed hooks give the path's bits.
 * Skipped where the build has no AMX path or the OS refuses the tiles.
 */
#include "test.h"

#include "../src/cpu/cpu-formats.h"
#include "../src/cpu/gemv-fp4-amx.h"
#include "../src/quant/quant.h"

#include <stdlib.h>
#include <string.h>

typedef struct fcase {
    moe_format f;
    int64_t    rows, cols;
    int        odd_scales; /* MXFP4: plant out-of-range scales */
} fcase;

static bool amx_usable(void) {
#if FP4_AMX
    return moe__cpu_amx_ready();
#else
    return false;
#endif
}

#if FP4_AMX
static size_t round64(size_t n) { return (n + 63) / 64 * 64; }

/* Writes y (n_x, ys) for rows [r0, r1) and inputs [i0, i0 + n_x), in
 * calls of at most nchunk inputs. */
static void run_gemm(const moe__wmat *w, bool packed, int64_t r0, int64_t r1, const char *xq,
                     size_t xs, int64_t i0, int64_t n_x, int64_t nchunk, float *y, int64_t ys) {
    for (int64_t i = 0; i < n_x; i += nchunk) {
        const int64_t n = n_x - i < nchunk ? n_x - i : nchunk;
        moe__fp4_amx_gemm(w, packed, r0, r1, xq + (size_t)(i0 + i) * xs, xs, n, y + i * ys, ys);
    }
}

static void check_case(const fcase *c) {
    const moe__format_traits *t  = moe__format(c->f);
    const moe__cpu_format    *cf = moe__cpu_format_get(c->f);
    const char *name = t->info.name;
    REQUIRE(cf && cf->act_quantize, "%s: no activation hook", name);
    const int64_t R = c->rows, K = c->cols, NX = 37;
    const bool    mx = c->f == MOE_FORMAT_MXFP4;
    moe__wsizes   s;
    char          err[256];
    REQUIRE(t->sizes(R, K, 0, MOE_FORMAT_F32, &s, err, sizeof err) == MOE_OK, "%s", err);
    test_rng rng = { 4242 + (uint64_t)(R * 7 + K) + (uint64_t)c->f };
    float   *src = malloc(sizeof(float) * (size_t)(R * K));
    test_fill_normal(&rng, src, (size_t)(R * K), 0.1f);
    uint8_t *data = malloc(s.data), *sc = malloc(s.scales);
    moe__wmat w = { .format = c->f, .rows = R, .cols = K, .data = data, .scales = sc,
                    .scale2 = mx ? 1.0f : 0.0123f };
    REQUIRE(t->quantize_ref(src, &w) == MOE_OK, "%s: quantize", name);

    /* Out-of-range MXFP4 scales: a few blocks in some rows, every block of
     * one row. Blocks at 253/254 keep one code of 0.5 (the values stay
     * finite in fp32); blocks at 0/1 keep their random codes (denormal). */
    const int64_t nb = K / MOE_QK_MXFP4;
    int64_t       odd_rows[5] = { 1, 3 % R, 17 % R, (R - 2 + R) % R, (R / 2) % R };
    if (c->odd_scales) {
        const uint8_t planted[4] = { 0, 1, 253, 254 };
        for (int i = 0; i < 4; i++) {
            const int64_t r = odd_rows[i], b = (i * 5) % nb;
            sc[r * nb + b] = planted[i];
            if (planted[i] >= 253) {
                memset(data + r * (K / 2) + b * 16, 0, 16);
                data[r * (K / 2) + b * 16 + 3] = 0x10; /* code 1 = 0.5 at k = 7 */
            }
        }
        for (int64_t b = 0; b < nb; b++) sc[odd_rows[4] * nb + b] = (uint8_t)(b % 2);
    }

    /* Inputs: kernel rows (xq) and the reference's emulation (xf). */
    const size_t xs = round64(cf->act_row_bytes(K));
    float *x  = malloc(sizeof(float) * (size_t)(NX * K));
    float *xf = malloc(sizeof(float) * (size_t)(NX * K));
    char  *xq = aligned_alloc(64, xs * (size_t)NX);
    test_fill_normal(&rng, x, (size_t)(NX * K), 1.0f);
    for (int64_t k = 0; k < K; k++) x[5 * K + k] *= 1e-6f; /* a tiny row */
    memcpy(xf, x, sizeof(float) * (size_t)(NX * K));
    for (int64_t i = 0; i < NX; i++) {
        cf->act_quantize(&w, x + i * K, K, xq + (size_t)i * xs);
        t->act_fake_quant_ref(&w, xf + i * K, K);
    }

    /* Reference and the full product, all inputs in one call. */
    float  *full = malloc(sizeof(float) * (size_t)(NX * R));
    float  *part = malloc(sizeof(float) * (size_t)(NX * R));
    double *ref  = malloc(sizeof(double) * (size_t)(NX * R));
    double *mag  = malloc(sizeof(double) * (size_t)(NX * R));
    test_gemm_ref(&w, xf, NX, ref, mag);
    moe__fp4_amx_gemm(&w, false, 0, R, xq, xs, NX, full, R);
    long off = 0;
    double dot = 0, na = 0, nr = 0;
    for (int64_t i = 0; i < NX; i++)
        for (int64_t r = 0; r < R; r++) {
            const double a = full[i * R + r], e = ref[i * R + r];
            dot += a * e, na += a * a, nr += e * e;
            if (!(fabs(a - e) <= 1e-5 * mag[i * R + r] + 1e-40) && off++ < 3)
                test_fail(__FILE__, __LINE__, "%s %lldx%lld: y[%lld][%lld] = %.9g, reference "
                          "%.9g (magnitude %.3g)", name, (long long)R, (long long)K,
                          (long long)i, (long long)r, a, e, mag[i * R + r]);
        }
    CHECK(off == 0, "%s %lldx%lld: %ld outputs off the reference", name, (long long)R,
          (long long)K, off);
    const double cosine = dot / sqrt(na * nr);
    const double nmse   = test_nmse(full, ref, (size_t)(NX * R));
    CHECK(cosine >= 0.9999, "%s %lldx%lld: cosine %.9f", name, (long long)R, (long long)K, cosine);
    CHECK(nmse <= 1e-10, "%s %lldx%lld: NMSE %.3g", name, (long long)R, (long long)K, nmse);
    if (c->odd_scales) /* the all-denormal row is not lost in the tiles */
        for (int64_t i = 0; i < NX; i++)
            CHECK(ref[i * R + odd_rows[4]] == 0 || full[i * R + odd_rows[4]] != 0,
                  "%s: fallback row %lld input %lld is zero", name, (long long)odd_rows[4],
                  (long long)i);

    /* Packed copy: written whole (two different initial buffers). */
    const size_t pb = moe__fp4_amx_packed_bytes(&w), pba = round64(pb);
    char *pk = aligned_alloc(64, pba), *pk2 = aligned_alloc(64, pba);
    memset(pk, 0xa5, pba);
    memset(pk2, 0x00, pba);
    moe__fp4_amx_pack(&w, pk);
    moe__fp4_amx_pack(&w, pk2);
    CHECK(memcmp(pk, pk2, pb) == 0, "%s: pack left bytes unwritten", name);
    moe__wmat wp = w;
    wp.data      = pk;

    /* Bitwise: checkpoint and packed paths, row ranges anywhere, inputs
     * one at a time, in chunks and all at once. */
    const int64_t ranges[][2] = { { 0, R }, { 3, R - 1 }, { 15, 17 }, { R - 1, R },
                                  { 0, 1 }, { 16, R }, { 5, 30 } };
    const int64_t chunks[] = { 1, 2, 5, 16, NX };
    long bad = 0;
    for (int pk_on = 0; pk_on < 2; pk_on++)
        for (size_t ri = 0; ri < sizeof ranges / sizeof ranges[0]; ri++) {
            const int64_t r0 = ranges[ri][0], r1 = ranges[ri][1];
            if (r0 < 0 || r1 > R || r0 >= r1) continue;
            for (size_t ci = 0; ci < sizeof chunks / sizeof chunks[0]; ci++) {
                const int64_t nr_ = r1 - r0, i0 = ci == 2 ? 1 : 0, n = NX - i0;
                test_poison(part, (size_t)(n * nr_));
                run_gemm(pk_on ? &wp : &w, pk_on, r0, r1, xq, xs, i0, n, chunks[ci], part, nr_);
                for (int64_t i = 0; i < n; i++)
                    for (int64_t r = r0; r < r1; r++)
                        if (memcmp(&part[i * nr_ + r - r0], &full[(i0 + i) * R + r], 4) &&
                            bad++ < 3)
                            test_fail(__FILE__, __LINE__, "%s %lldx%lld %s rows [%lld, %lld) "
                                      "chunk %lld: y[%lld][%lld] = %a, full call %a", name,
                                      (long long)R, (long long)K, pk_on ? "packed" : "checkpoint",
                                      (long long)r0, (long long)r1, (long long)chunks[ci],
                                      (long long)(i0 + i), (long long)r,
                                      (double)part[i * nr_ + r - r0],
                                      (double)full[(i0 + i) * R + r]);
            }
        }
    CHECK(bad == 0, "%s %lldx%lld: %ld outputs not batch invariant", name, (long long)R,
          (long long)K, bad);

    /* MXFP4's format entry runs this path: its hooks give the same bits
     * (the packed copy of its pack hook is this pack's). */
    if (mx) {
        REQUIRE(cf->gemm_packed && cf->pack && cf->packed_bytes(&w) == pb, "%s: pack hooks", name);
        long off_hook = 0;
        for (int pk_on = 0; pk_on < 2; pk_on++) {
            test_poison(part, (size_t)(NX * R));
            (pk_on ? cf->gemm_packed : cf->gemm)(pk_on ? &wp : &w, 0, R, xq, xs, NX, part, R);
            for (int64_t j = 0; j < NX * R; j++) off_hook += memcmp(&part[j], &full[j], 4) != 0;
        }
        CHECK(off_hook == 0, "%s %lldx%lld: %ld outputs of the format hooks differ", name,
              (long long)R, (long long)K, off_hook);
    }
    free(src); free(data); free(sc); free(x); free(xf); free(xq); free(full); free(part);
    free(ref); free(mag); free(pk); free(pk2);
}

#endif /* FP4_AMX */

/* Every case of a test (none in a build without the AMX path: the test
 * skips there before calling this). */
static void check_cases(const fcase *cs, size_t n) {
#if FP4_AMX
    for (size_t i = 0; i < n; i++) check_case(&cs[i]);
#else
    (void)cs;
    (void)n;
#endif
}

TEST(cpu_fp4_amx_mxfp4) {
    if (!amx_usable()) TEST_SKIP("no AMX-BF16 path in this build or process");
    const fcase cases[] = {
        { MOE_FORMAT_MXFP4, 37, 96, 0 },    /* K of 3 sections, 2 panels + 5 rows */
        { MOE_FORMAT_MXFP4, 16, 2048, 0 },  /* one whole panel                     */
        { MOE_FORMAT_MXFP4, 50, 2880, 0 },  /* gpt-oss d_model (K % 128 = 64)      */
        { MOE_FORMAT_MXFP4, 5, 7168, 0 },   /* fewer rows than a panel, long K     */
        { MOE_FORMAT_MXFP4, 33, 1376, 0 },  /* odd section count                   */
    };
    check_cases(cases, sizeof cases / sizeof cases[0]);
}

TEST(cpu_fp4_amx_nvfp4) {
    if (!amx_usable()) TEST_SKIP("no AMX-BF16 path in this build or process");
    const fcase cases[] = {
        { MOE_FORMAT_NVFP4, 37, 80, 0 },    /* 2.5 sections                        */
        { MOE_FORMAT_NVFP4, 16, 2048, 0 },
        { MOE_FORMAT_NVFP4, 50, 2896, 0 },  /* a half section at the end           */
        { MOE_FORMAT_NVFP4, 5, 7168, 0 },
        { MOE_FORMAT_NVFP4, 33, 1376, 0 },
    };
    check_cases(cases, sizeof cases / sizeof cases[0]);
}

TEST(cpu_fp4_amx_mxfp4_scale_fallback) {
    if (!amx_usable()) TEST_SKIP("no AMX-BF16 path in this build or process");
    const fcase cases[] = {
        { MOE_FORMAT_MXFP4, 37, 256, 1 },
        { MOE_FORMAT_MXFP4, 40, 2880, 1 },
        { MOE_FORMAT_MXFP4, 21, 96, 1 },
    };
    check_cases(cases, sizeof cases / sizeof cases[0]);
}
