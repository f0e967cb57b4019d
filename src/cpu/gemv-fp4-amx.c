/*
 * gemv-fp4-amx.c - MXFP4 and NVFP4 weights times bf16 activations on Intel
 * AMX-BF16 tiles (Sapphire Rapids and later).
 *
 * Why tiles: the AVX-512 kernel (gemv-fp4.c) spends its vector ports on
 * two things per 32 weights, the vpermw decode and the vdpbf16ps
 * multiply-add, and could not keep up with memory. One TDPBF16PS does the
 * 16 x 32 multiply-adds of a whole A tile for every token column at once
 * (~5 ns for 1 to 16 columns), so the vector ports are left with the
 * decode alone.
 *
 * A tile = 16 weight rows x 32 consecutive K values (a "section", one
 * MXFP4 block or two NVFP4 blocks per tile row) in bf16, with the block
 * scale folded in: for MXFP4, bf16(e2m1 * 2^(e-127)) is exact (2
 * significant bits times a power of two) while 2 <= e <= 252, and AMX
 * multiplies bf16 exactly and accumulates in fp32 (it reads bf16
 * denormals as zero, hence the lower bound; the upper one keeps 6 * 2^125
 * finite). For NVFP4, bf16(e2m1 * e4m3) has at most 6 significant bits
 * and lies in [2^-10, 2688]: always exact; the fp32 global scale
 * multiplies the final sums. The decode is one vpermw per tile row from a
 * per-scale table (mx_tab[e]: the 16 codes times 2^(e-127), twice, since
 * vpermw reads 5 index bits; NVFP4: [nv_tab[s0] | nv_tab[s1]], index bit
 * 4 forced to the block).
 *
 * MXFP4 rows with any scale outside [2, 252] (found when packing, or by a
 * scan in the checkpoint-layout path) are not taken from the tiles: a
 * per-row AVX-512 dot product (fb_dot) computes them, so a row's result
 * still depends on that row only.
 *
 * B tile = the activations in VNNI form, row p = (x[2p], x[2p + 1]) of
 * each token column. One token needs no copy: the plain bf16 row read with
 * a 4-byte row stride is that tile. Several tokens (up to 16 per tile,
 * as many as fit the 40 KiB stack buffer for all of K) are interleaved
 * once per call.
 *
 * Packed layout (bind time, pack hooks): 16-row panels, each
 *     [64-byte header: uint16 mask of the rows that take the fallback]
 *     [scales: section kb, row m -> nsc bytes (MXFP4 1, NVFP4 2), padded to 64]
 *     [codes: section kb -> 4 lines of 64 bytes; line g, 16-bit word j holds
 *      in nibble s the code of row 4g + s at K position 32 kb + j]
 * so one 64-byte load, three shifts and four vpermw give four tile rows,
 * and a panel is one sequential stream (header and scales ride ahead of
 * the codes in the prefetch distance). Rows past the matrix are zero
 * codes. The checkpoint-layout path builds the same tile rows (code j of
 * a row in word j), so both give the same bits.
 *
 * Schedule: panels go in pairs that share each B tile load (C tiles 0
 * and 1, A tiles 2 and 3, B tile 4); section kb + 1 is decoded into the
 * other half of a double buffer before the tiles of section kb load.
 *
 * Order (the contract of cpu-formats.h): C[m][n] of a tile depends on
 * tile row m and token column n only, and each C tile sums the sections
 * in increasing kb; the result is C (* global scale): a function of K
 * alone, whichever panel, pair, row range or token count computed it.
 *
 * Measured (the CI VM, one core, L2-resident 256 x 2048 MXFP4, one
 * token): 15-18 GB/s of weights against 13-15 for the AVX-512 kernel.
 * The decode (16 vpermw + 12 shifts + 16 stores per A tile) and the A
 * tile load, not the multiply, bound it: without the tile instructions
 * the same loop ran at about 21 GB/s. NVFP4's decode needs two tables
 * per tile row (a merge and an index fix-up more): 12-13 GB/s, below its
 * AVX-512 kernel, so gemv-fp4.c routes only MXFP4 here; the NVFP4 path is
 * kept and tested (tests/test-cpu-fp4-amx.c) for machines where it wins.
 */
#include "gemv-fp4-amx.h"
#include "../quant/quant.h"

#if FP4_AMX
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <string.h>

enum {
    SEC      = 32,    /* K values per section (tile row)                  */
    PANEL    = 16,    /* weight rows per A tile                           */
    SEC_CODE = 256,   /* packed code bytes of one panel section           */
    BBUF     = 40960, /* stack bytes for interleaved activations          */
    E_MIN    = 2,     /* MXFP4 scales the tiles take exactly              */
    E_MAX    = 252,
};

/* bf16 tables of the codes times each scale (see the file comment). */
static _Alignas(64) uint16_t mx_tab[256][32];
static _Alignas(64) uint16_t nv_tab[256][16];
static pthread_once_t        tab_once = PTHREAD_ONCE_INIT;

static void tab_init(void) {
    for (int e = 0; e < 256; e++)
        for (int c = 0; c < 32; c++)
            mx_tab[e][c] = e >= E_MIN && e <= E_MAX
                ? moe__f32_to_bf16(ldexpf(moe__e2m1_to_f32((uint8_t)(c & 15)), e - 127)) : 0;
    for (int s = 0; s < 256; s++) {
        const float v = moe__e4m3_to_f32((uint8_t)s);
        for (int c = 0; c < 16; c++)
            nv_tab[s][c] = isfinite(v) ? moe__f32_to_bf16(moe__e2m1_to_f32((uint8_t)c) * v) : 0;
    }
}

/* Packed geometry of a matrix. */
typedef struct geo {
    int64_t K, S, P;   /* cols, sections, panels               */
    int     nsc;       /* scale bytes per row and section      */
    bool    mx;
    size_t  scales;    /* scale bytes of a panel (padded)      */
    size_t  panel;     /* bytes of a panel                     */
} geo;

static geo geo_of(const moe__wmat *w) {
    geo g;
    g.mx     = w->format == MOE_FORMAT_MXFP4;
    g.K      = w->cols;
    g.S      = (w->cols + SEC - 1) / SEC;
    g.P      = (w->rows + PANEL - 1) / PANEL;
    g.nsc    = g.mx ? 1 : 2;
    g.scales = moe__align_up((size_t)(g.S * PANEL * g.nsc), 64);
    g.panel  = 64 + g.scales + (size_t)g.S * SEC_CODE;
    return g;
}

/* Whether MXFP4 row r of the checkpoint has a scale the tiles cannot take. */
static bool mx_row_fallback(const moe__wmat *w, int64_t r) {
    const int64_t  nb = w->cols / MOE_QK_MXFP4;
    const uint8_t *e  = (const uint8_t *)w->scales + r * nb; // (nb)
    for (int64_t b = 0; b < nb; b += 64) {
        const __mmask64 lm = nb - b >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << (nb - b)) - 1;
        const __m512i   v  = _mm512_sub_epi8(_mm512_maskz_loadu_epi8(lm, e + b),
                                             _mm512_set1_epi8(E_MIN));
        if (_mm512_mask_cmpgt_epu8_mask(lm, v, _mm512_set1_epi8(E_MAX - E_MIN))) return true;
    }
    return false;
}

/* ===== Packing ===== */

size_t moe__fp4_amx_packed_bytes(const moe__wmat *w) {
    const geo g = geo_of(w);
    return (size_t)g.P * g.panel;
}

void moe__fp4_amx_pack(const moe__wmat *w, void *dst) {
    const geo      g  = geo_of(w);
    const int64_t  R  = w->rows, K = g.K, bs = g.mx ? MOE_QK_MXFP4 : MOE_QK_NVFP4, nb = K / bs;
    const uint8_t *q  = w->data;   // (R, K/2)
    const uint8_t *sc = w->scales; // (R, nb)
    for (int64_t p = 0; p < g.P; p++) {
        uint8_t *pb = (uint8_t *)dst + (size_t)p * g.panel;
        memset(pb, 0, g.panel);
        uint16_t mask = 0;
        for (int m = 0; m < PANEL; m++)
            if (g.mx && p * PANEL + m < R && mx_row_fallback(w, p * PANEL + m))
                mask |= (uint16_t)(1u << m);
        memcpy(pb, &mask, sizeof mask);
        uint8_t *ps = pb + 64, *pc = pb + 64 + g.scales;
        for (int64_t kb = 0; kb < g.S; kb++) {
            for (int m = 0; m < PANEL; m++) {
                const int64_t r = p * PANEL + m;
                for (int b = 0; b < g.nsc; b++) {
                    const int64_t blk = kb * g.nsc + b;
                    /* past the matrix: a neutral in-range scale (MXFP4 1.0)
                     * or NVFP4's zero table, times zero codes */
                    ps[(kb * PANEL + m) * g.nsc + b] =
                        r < R && blk < nb ? sc[r * nb + blk] : g.mx ? 127 : 0;
                }
            }
            for (int l = 0; l < 4; l++) {
                uint8_t *line = pc + kb * SEC_CODE + l * 64;
                for (int j = 0; j < SEC; j++) {
                    const int64_t k    = kb * SEC + j;
                    unsigned      word = 0;
                    for (int s = 0; s < 4; s++) {
                        const int64_t r = p * PANEL + 4 * l + s;
                        if (r >= R || k >= K) continue;
                        const unsigned c = (q[r * (K / 2) + k / 2] >> (4 * (k % 2))) & 15;
                        word |= c << (4 * s);
                    }
                    line[2 * j]     = (uint8_t)word;
                    line[2 * j + 1] = (uint8_t)(word >> 8);
                }
            }
        }
    }
}

/* ===== Decode ===== */

/* 16 checkpoint bytes of one row (8 when lm = 0xFF: NVFP4's last half
 * section) -> word j = code j in its low 4 bits (bits above are ignored or
 * overwritten by the lookups): vpermb puts byte j / 2 in word j, a
 * variable shift takes the high nibble of the odd words. */
static inline __m512i codes_ckpt(const uint8_t *cb, __mmask16 lm) {
    static const _Alignas(64) uint8_t dup[64] = {
        0, 16, 0, 16, 1, 16, 1, 16, 2, 16, 2, 16, 3, 16, 3, 16,
        4, 16, 4, 16, 5, 16, 5, 16, 6, 16, 6, 16, 7, 16, 7, 16,
        8, 16, 8, 16, 9, 16, 9, 16, 10, 16, 10, 16, 11, 16, 11, 16,
        12, 16, 12, 16, 13, 16, 13, 16, 14, 16, 14, 16, 15, 16, 15, 16,
    };
    const __m512i b = _mm512_zextsi128_si512(_mm_maskz_loadu_epi8(lm, cb));
    const __m512i u = _mm512_permutexvar_epi8(_mm512_load_si512(dup), b);
    return _mm512_srlv_epi16(u, _mm512_set1_epi32(0x00040000));
}

/* Index bit 4 = the NVFP4 block of word j (j >= 16), for the two-table
 * lookup [nv_tab[s0] | nv_tab[s1]]; bits 5 and up are ignored. */
static inline __m512i nv_index(__m512i idx) {
    const __m512i hb = _mm512_set_epi64(0x0010001000100010ll, 0x0010001000100010ll,
                                        0x0010001000100010ll, 0x0010001000100010ll, 0, 0, 0, 0);
    return _mm512_ternarylogic_epi32(idx, _mm512_set1_epi16((short)0xffef), hb, 0xea);
}

static inline __m512i mx_row(__m512i idx, uint8_t e) {
    return _mm512_permutexvar_epi16(idx, _mm512_load_si512(mx_tab[e]));
}

static inline __m512i nv_row(__m512i idx, uint8_t s0, uint8_t s1) {
    const __m512i t = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_load_si256((const __m256i *)nv_tab[s0])),
        _mm256_load_si256((const __m256i *)nv_tab[s1]), 1);
    return _mm512_permutexvar_epi16(nv_index(idx), t);
}

/* One section of a packed panel -> 16 tile rows at a (16 x 64 bytes). The
 * empty asm keeps each 64-byte line in a register: without it the
 * compiler folds the load into each of the four shifts and spends four
 * loads on one line. */
static inline __attribute__((always_inline)) void decode_packed(
    bool mx, const geo *g, const uint8_t *pb, int64_t kb, uint8_t *a) {
    const uint8_t *ps = pb + 64 + kb * PANEL * g->nsc;
    const uint8_t *pc = pb + 64 + g->scales + kb * SEC_CODE;
    moe__cpu_prefetch(pc, SEC_CODE);
#pragma GCC unroll 4
    for (int l = 0; l < 4; l++) {
        __m512i v = _mm512_load_si512(pc + 64 * l);
        __asm__("" : "+v"(v));
#pragma GCC unroll 4
        for (int s = 0; s < 4; s++) {
            const int     m   = 4 * l + s;
            const __m512i idx = s == 0 ? v : s == 1 ? _mm512_srli_epi16(v, 4)
                              : s == 2 ? _mm512_srli_epi16(v, 8) : _mm512_srli_epi16(v, 12);
            const __m512i t   = mx ? mx_row(idx, ps[m]) : nv_row(idx, ps[2 * m], ps[2 * m + 1]);
            _mm512_store_si512(a + 64 * m, t);
        }
    }
}

/* One section of rows [pr, pr + nr) of the checkpoint -> tile rows 0..nr-1. */
static inline __attribute__((always_inline)) void decode_ckpt(
    bool mx, const moe__wmat *w, const geo *g, int64_t pr, int nr, int64_t kb, uint8_t *a) {
    const int64_t  K  = g->K, nb = mx ? K / MOE_QK_MXFP4 : K / MOE_QK_NVFP4;
    const uint8_t *q  = (const uint8_t *)w->data + pr * (K / 2) + kb * (SEC / 2);
    const uint8_t *sc = (const uint8_t *)w->scales + pr * nb + kb * g->nsc;
    const __mmask16 lm = K - kb * SEC >= SEC ? 0xffff : 0x00ff;
    for (int m = 0; m < nr; m++) {
        const uint8_t *cb = q + m * (K / 2), *s = sc + m * nb;
        if (kb % 4 == 0) moe__cpu_prefetch(cb, 64);
        const __m512i idx = codes_ckpt(cb, lm);
        const __m512i t   = mx ? mx_row(idx, s[0]) : nv_row(idx, s[0], kb * 2 + 1 < nb ? s[1] : 0);
        _mm512_store_si512(a + 64 * m, t);
    }
}

/* ===== Fallback rows (MXFP4 scales outside [E_MIN, E_MAX]) ===== */

/* Row r (tile row m of the panel at pb when packed) times one plain bf16
 * activation row x: per section the unscaled e2m1 values through
 * vdpbf16ps, times the block scale in fp32, one reduction at the end. */
static float fb_dot(const moe__wmat *w, const geo *g, bool packed, const uint8_t *pb, int m,
                    int64_t r, const uint16_t *x) {
    const int64_t  K  = g->K, nb = K / MOE_QK_MXFP4;
    const uint8_t *sc = (const uint8_t *)w->scales + r * nb; // (nb)
    const __m512i  t  = _mm512_load_si512(mx_tab[127]);      /* the codes times 1 */
    __m512         acc = _mm512_setzero_ps();
    for (int64_t kb = 0; kb < g->S; kb++) {
        const __m512i idx = packed
            ? _mm512_srlv_epi16(
                  _mm512_load_si512(pb + 64 + g->scales + kb * SEC_CODE + 64 * (m / 4)),
                  _mm512_set1_epi16((short)(4 * (m % 4))))
            : codes_ckpt((const uint8_t *)w->data + r * (K / 2) + kb * (SEC / 2), 0xffff);
        const __m512bh wv = (__m512bh)_mm512_permutexvar_epi16(idx, t);
        const __m512   d  = _mm512_dpbf16_ps(_mm512_setzero_ps(), wv,
                                             (__m512bh)_mm512_loadu_si512(x + kb * SEC));
        acc = _mm512_fmadd_ps(d, _mm512_set1_ps(moe__e8m0_to_f32(sc[kb])), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

/* ===== The kernel ===== */

typedef struct tilecfg {
    uint8_t  palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t  rows[16];
} tilecfg;

/* Tiles: 0, 1 = C of two panels, 2, 3 = their A, 4 = B; nt tokens. */
static void tiles_config(int nt) {
    tilecfg c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 5; t++) {
        c.rows[t]  = 16;
        c.colsb[t] = (uint16_t)(t == 2 || t == 3 ? 64 : 4 * nt);
    }
    /* The intrinsic tells the compiler that it reads 8 bytes of c: make the
     * other stores happen before it (else they may be dropped as dead). */
    __asm__ volatile("" : : "r"(&c) : "memory");
    _tile_loadconfig(&c);
}

/* Where the activations' B tiles are: section kb at b + kb * bsec, rows
 * bst bytes apart. */
typedef struct bsrc {
    const char *b;
    size_t      bsec, bst;
} bsrc;

/* C tiles of one or two panels (rows [pr, pr + 16) and the next 16) over
 * all of K into c[0], c[1] (16 x nt fp32 each). Both panels share each B
 * tile load; each C tile sums its sections in increasing kb. */
static inline __attribute__((always_inline)) void panel_pair(
    bool mx, bool packed, bool two, const moe__wmat *w, const geo *g, const uint8_t *pb0,
    const uint8_t *pb1, int64_t pr, int nr0, int nr1, const bsrc *B, int64_t nt,
    uint8_t (*a)[2][PANEL * 64], float (*c)[PANEL * 16]) {
    _tile_zero(0);
    if (two) _tile_zero(1);
    /* Section kb + 1 is decoded before the tiles of section kb load: the
     * tile loads then read buffers whose stores have long completed, and
     * the decode overlaps the tile work (measured: 20% faster than
     * decoding right before the load). */
    for (int64_t kb = -1; kb < g->S; kb++) {
        if (kb + 1 < g->S) {
            uint8_t *n0 = a[(kb + 1) & 1][0], *n1 = a[(kb + 1) & 1][1];
            if (packed) decode_packed(mx, g, pb0, kb + 1, n0);
            else        decode_ckpt(mx, w, g, pr, nr0, kb + 1, n0);
            if (two) {
                if (packed) decode_packed(mx, g, pb1, kb + 1, n1);
                else        decode_ckpt(mx, w, g, pr + PANEL, nr1, kb + 1, n1);
            }
        }
        if (kb < 0) continue;
        const uint8_t *a0 = a[kb & 1][0], *a1 = a[kb & 1][1];
        _tile_loadd(4, B->b + kb * B->bsec, (long)B->bst);
        _tile_loadd(2, a0, 64);
        _tile_dpbf16ps(0, 2, 4);
        if (two) {
            _tile_loadd(3, a1, 64);
            _tile_dpbf16ps(1, 3, 4);
        }
    }
    _tile_stored(0, c[0], (long)(4 * nt));
    if (two) _tile_stored(1, c[1], (long)(4 * nt));
}

/* Rows [lo, hi) of the panel at pr (tile rows lo - pr ...) from c into y,
 * the fallback rows (mask fb) from fb_dot. */
static void panel_out(const moe__wmat *w, const geo *g, bool packed, const uint8_t *pb,
                      int64_t pr, int64_t lo, int64_t hi, unsigned fb, const float *c,
                      const char *xq, size_t xq_stride, int64_t i0, int64_t nt, int64_t r0,
                      float *y, int64_t y_stride) {
    const float   gs   = g->mx ? 1.0f : w->scale2;
    const size_t  xoff = FP4_AMX_XOFF(g->K);
    for (int64_t r = lo; r < hi; r++) {
        const int m = (int)(r - pr);
        for (int64_t n = 0; n < nt; n++) {
            float v;
            if (fb >> m & 1) {
                const char *xr = xq + (size_t)(i0 + n) * xq_stride + xoff;
                v = fb_dot(w, g, packed, pb, m, r, (const uint16_t *)xr);
            } else {
                v = c[m * nt + n] * gs;
            }
            y[(i0 + n) * y_stride + (r - r0)] = v;
        }
    }
}

/* Rows whose MXFP4 scales the tiles cannot take (bit m = row pr + m). */
static unsigned panel_fallback(const moe__wmat *w, const geo *g, bool packed, const uint8_t *pb,
                               int64_t pr, int nr) {
    if (packed) {
        uint16_t m16;
        memcpy(&m16, pb, sizeof m16);
        return m16;
    }
    unsigned fb = 0;
    if (g->mx)
        for (int m = 0; m < nr; m++)
            if (mx_row_fallback(w, pr + m)) fb |= 1u << m;
    return fb;
}

/* All panels of [r0, r1) for tokens [i0, i0 + nt), two at a time. */
static inline __attribute__((always_inline)) void run_panels(
    bool mx, bool packed, const moe__wmat *w, const geo *g, int64_t r0, int64_t r1,
    const bsrc *B, const char *xq, size_t xq_stride, int64_t i0, int64_t nt, float *y,
    int64_t y_stride, uint8_t (*a)[2][PANEL * 64], float (*c)[PANEL * 16]) {
    /* Panels: 16-row aligned in the packed copy, from r0 in the checkpoint. */
    const int64_t pr0 = packed ? r0 / PANEL * PANEL : r0;
    for (int64_t pr = pr0; pr < r1; pr += 2 * PANEL) {
        const bool     two = pr + PANEL < r1;
        const uint8_t *pb0 = packed ? (const uint8_t *)w->data + (size_t)(pr / PANEL) * g->panel
                                    : NULL;
        const uint8_t *pb1 = packed ? pb0 + g->panel : NULL;
        const int64_t  e0 = pr + PANEL < r1 ? pr + PANEL : r1;
        const int64_t  e1 = pr + 2 * PANEL < r1 ? pr + 2 * PANEL : r1;
        const int      nr0 = (int)(e0 - pr), nr1 = two ? (int)(e1 - pr - PANEL) : 0;
        if (two) panel_pair(mx, packed, true, w, g, pb0, pb1, pr, nr0, nr1, B, nt, a, c);
        else     panel_pair(mx, packed, false, w, g, pb0, pb1, pr, nr0, nr1, B, nt, a, c);
        panel_out(w, g, packed, pb0, pr, pr < r0 ? r0 : pr, e0,
                  panel_fallback(w, g, packed, pb0, pr, nr0), c[0], xq, xq_stride, i0, nt, r0,
                  y, y_stride);
        if (two)
            panel_out(w, g, packed, pb1, pr + PANEL, pr + PANEL, e1,
                      panel_fallback(w, g, packed, pb1, pr + PANEL, nr1), c[1], xq, xq_stride,
                      i0, nt, r0, y, y_stride);
    }
}

void moe__fp4_amx_gemm(const moe__wmat *w, bool packed, int64_t r0, int64_t r1,
                       const void *xq, size_t xq_stride, int64_t n_x, float *y,
                       int64_t y_stride) {
    pthread_once(&tab_once, tab_init);
    const geo     g    = geo_of(w);
    const size_t  xoff = FP4_AMX_XOFF(g.K);
    const int64_t gbuf = BBUF / (g.S * 64); /* tokens the interleave buffer holds */
    _Alignas(64) uint8_t a[2][2][PANEL * 64];
    _Alignas(64) float   c[2][PANEL * 16];
    _Alignas(64) uint8_t bb[BBUF];
    memset(a, 0, sizeof a); /* rows past r1 of the checkpoint path stay defined */

    for (int64_t i0 = 0; i0 < n_x;) {
        int64_t nt = n_x - i0 < 16 ? n_x - i0 : 16;
        if (nt > gbuf) nt = gbuf > 1 ? gbuf : 1;
        bsrc B;
        if (nt == 1) {
            B = (bsrc){ (const char *)xq + (size_t)i0 * xq_stride + xoff, 64, 4 };
        } else {
            /* dword p of section kb of token n -> bb[kb][p][n] */
            _Alignas(64) int32_t ix[16];
            for (int p = 0; p < 16; p++) ix[p] = p * (int32_t)nt;
            const __m512i vix = _mm512_load_si512(ix);
            for (int64_t n = 0; n < nt; n++) {
                const char *xr = (const char *)xq + (size_t)(i0 + n) * xq_stride + xoff;
                for (int64_t kb = 0; kb < g.S; kb++)
                    _mm512_i32scatter_epi32(bb + kb * 64 * nt + 4 * n, vix,
                                            _mm512_loadu_si512(xr + kb * 64), 4);
            }
            B = (bsrc){ (const char *)bb, (size_t)(64 * nt), (size_t)(4 * nt) };
        }
        tiles_config((int)nt);
        /* constant mx and packed: each variant compiles to its own loops */
        const char   *x  = xq;
        const size_t  xs = xq_stride;
        const int64_t ys = y_stride;
        if (g.mx) {
            if (packed) run_panels(true, true, w, &g, r0, r1, &B, x, xs, i0, nt, y, ys, a, c);
            else        run_panels(true, false, w, &g, r0, r1, &B, x, xs, i0, nt, y, ys, a, c);
        } else {
            if (packed) run_panels(false, true, w, &g, r0, r1, &B, x, xs, i0, nt, y, ys, a, c);
            else        run_panels(false, false, w, &g, r0, r1, &B, x, xs, i0, nt, y, ys, a, c);
        }
        i0 += nt;
    }
    _tile_release();
}
#endif /* FP4_AMX */
