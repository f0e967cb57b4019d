/*
 * gemm-plain.c - CPU kernels for plain weight formats (F32, BF16, F16):
 * y (n_x, r1 - r0) = W[r0:r1, :] . x^T with f32 activations (BF16: the
 * activations rounded to bf16), weights converted to f32 in registers and
 * fp32 FMA accumulation (BF16 on AVX-512: vdpbf16ps). Entries of the table
 * in cpu-formats.h.
 *
 * Fixed summation order (determinism, batch invariance): each output is one
 * vector accumulator of VLEN lanes; lane l sums k = l, l + VLEN, l + 2 VLEN,
 * ... in increasing k with one FMA per step (the K tail is zero-padded), and
 * the lanes are then reduced with one fixed tree. Every register-blocking
 * variant (8x2, 4x4, 1x1 W rows x input rows) does exactly this per output,
 * so a value does not depend on how many rows are computed together. (On
 * AVX-512, BF16 sums weight pairs instead, described at its kernel; the same
 * rule holds.) Decode (n_x <= 4) keeps each accumulator in a register over
 * the whole of K; prefill walks K in fixed slices and parks accumulators in
 * memory between them, which changes no sum.
 *
 * The ISA is chosen at compile time from -march macros: AVX-512 (16 lanes,
 * masked tails), AVX2 + FMA + F16C (8 lanes), or portable C (16 lanes in an
 * array, mul then add). The three share the blocking code below; only the
 * vector primitives differ. They live in one file because each is a dozen
 * lines.
 */
#include "cpu-formats.h"
#include "../quant/quant.h" /* moe__bf16_act_fake_quant_ref */

#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define ISA_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define ISA_AVX2 1
#endif

/* ===== Vector primitives =====
 *
 * vec_zero, vec_fma(a, b, acc) = acc + a*b per lane, vec_reduce (fixed
 * tree), load_x (VLEN f32), load_w (VLEN weights of format F as f32), and
 * the *_tail versions reading n < VLEN values with zeros after them.
 */

#if ISA_AVX512

enum { VLEN = 16 };
typedef __m512 vec;

static inline vec   vec_zero(void) { return _mm512_setzero_ps(); }
static inline vec   vec_fma(vec a, vec b, vec acc) { return _mm512_fmadd_ps(a, b, acc); }
static inline float vec_reduce(vec a) { return _mm512_reduce_add_ps(a); }
static inline vec   load_x(const float *p) { return _mm512_loadu_ps(p); }
static inline vec   load_x_tail(const float *p, int n) {
    return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
}
static inline vec bf16_widen(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
static inline vec load_w(moe_format f, const void *p) {
    switch (f) {
    case MOE_FORMAT_BF16: return bf16_widen(_mm256_loadu_si256((const __m256i *)p));
    case MOE_FORMAT_F16:  return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
    default:              return _mm512_loadu_ps(p);
    }
}
static inline vec load_w_tail(moe_format f, const void *p, int n) {
    __mmask16 m = (__mmask16)((1u << n) - 1);
    switch (f) {
    case MOE_FORMAT_BF16: return bf16_widen(_mm256_maskz_loadu_epi16(m, p));
    case MOE_FORMAT_F16:  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
    default:              return _mm512_maskz_loadu_ps(m, p);
    }
}

#elif ISA_AVX2

enum { VLEN = 8 };
typedef __m256 vec;

static inline vec   vec_zero(void) { return _mm256_setzero_ps(); }
static inline vec   vec_fma(vec a, vec b, vec acc) { return _mm256_fmadd_ps(a, b, acc); }
static inline float vec_reduce(vec a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s        = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s        = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline vec load_x(const float *p) { return _mm256_loadu_ps(p); }
static inline vec load_w(moe_format f, const void *p) {
    switch (f) {
    case MOE_FORMAT_BF16:
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
    case MOE_FORMAT_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    default:             return _mm256_loadu_ps(p);
    }
}
/* Tails go through a zeroed stack copy: AVX2 has no 16-bit masked load. */
static inline vec load_x_tail(const float *p, int n) {
    float t[VLEN] = { 0 };
    memcpy(t, p, (size_t)n * sizeof *t);
    return _mm256_loadu_ps(t);
}
static inline vec load_w_tail(moe_format f, const void *p, int n) {
    uint32_t t[VLEN] = { 0 }; /* big enough for VLEN weights of any plain type */
    memcpy(t, p, (size_t)n * moe__plain_size(f));
    return load_w(f, t);
}

#else

enum { VLEN = 16 };
typedef struct { float v[VLEN]; } vec;

static inline vec vec_zero(void) { vec r = { { 0 } }; return r; }
static inline vec vec_fma(vec a, vec b, vec acc) {
    for (int l = 0; l < VLEN; l++) acc.v[l] += a.v[l] * b.v[l];
    return acc;
}
static inline float vec_reduce(vec a) {
    for (int w = VLEN / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++) a.v[l] += a.v[l + w];
    return a.v[0];
}
static inline vec load_x_tail(const float *p, int n) {
    vec r = vec_zero();
    memcpy(r.v, p, (size_t)n * sizeof(float));
    return r;
}
static inline vec load_x(const float *p) { return load_x_tail(p, VLEN); }
static inline vec load_w_tail(moe_format f, const void *p, int n) {
    vec r = vec_zero();
    moe__to_f32(f, p, r.v, n);
    return r;
}
static inline vec load_w(moe_format f, const void *p) { return load_w_tail(f, p, VLEN); }

#endif

/* ===== Register-blocked kernel =====
 *
 * RW weight rows (w, w_stride bytes apart) times RX input rows (x, x_stride
 * floats apart) over K in [k0, k1) (k0 a multiple of the kernel's K step;
 * only k1 == K may end in a partial step), RW x RX accumulators in
 * registers.
 * pf (or NULL): RW rows to prefetch, at the same offsets, while this block
 * runs. One core's streaming bandwidth is bound by how many cache lines are
 * in flight, and the hardware prefetcher stops at every 4 KiB page (a bf16
 * row of d_model 2048 is one page), so decode asks for the next block's
 * lines itself, into L2 (prefetcht1: measured 10% faster than into L1 for
 * bf16 decode, as L1's fill buffers are few).
 * Always inlined with constant f, RW, RX so that each call site becomes a
 * specialized loop with no array in memory.
 */
#define MAX_RW 8
/* Full unrolling lets the compiler keep acc[][] in registers. */
#define UNROLL _Pragma("GCC unroll 8")
#define MAX_RX 4

/* The accumulators of a block: zeroed (first) or loaded from io, and at the
 * end reduced into y (last) or stored back to io. io holds accumulator
 * (r, j) at io[r * io_stride + j]. Storing and reloading an f32 vector is
 * exact, so splitting K into slices this way leaves every sum unchanged. */
#define ACC_BEGIN(zero)                                                         \
    UNROLL for (int r = 0; r < RW; r++)                                         \
        UNROLL for (int j = 0; j < RX; j++)                                     \
            acc[r][j] = first ? (zero) : io[(size_t)r * io_stride + j];
#define ACC_END(reduce)                                                         \
    UNROLL for (int j = 0; j < RX; j++)                                         \
        UNROLL for (int r = 0; r < RW; r++) {                                   \
            if (last) y[j * y_stride + r] = reduce(acc[r][j]);                  \
            else io[(size_t)r * io_stride + j] = acc[r][j];                     \
        }

static inline __attribute__((always_inline)) void
block(moe_format f, int RW, int RX, const char *w, size_t w_stride, const float *x,
      size_t x_stride, int64_t k0, int64_t k1, int64_t K, int first, int last, vec *io,
      size_t io_stride, float *y, int64_t y_stride, const char *pf) {
    const size_t es = f == MOE_FORMAT_F32 ? 4 : 2; /* bytes per weight */
    vec          acc[MAX_RW][MAX_RX];
    ACC_BEGIN(vec_zero())
    int64_t k = k0;
    for (; k + VLEN <= k1; k += VLEN) {
        if (pf && ((size_t)k * es) % 64 == 0)
            UNROLL for (int r = 0; r < RW; r++)
                __builtin_prefetch(pf + (size_t)r * w_stride + (size_t)k * es, 0, 2);
        vec xv[MAX_RX];
        UNROLL for (int j = 0; j < RX; j++) xv[j] = load_x(x + (size_t)j * x_stride + k);
        UNROLL for (int r = 0; r < RW; r++) {
            vec wv = load_w(f, w + (size_t)r * w_stride + (size_t)k * es);
            UNROLL for (int j = 0; j < RX; j++) acc[r][j] = vec_fma(wv, xv[j], acc[r][j]);
        }
    }
    if (k < k1) { /* K's tail: only the last slice has one */
        int n = (int)(k1 - k);
        vec xv[MAX_RX];
        UNROLL for (int j = 0; j < RX; j++) xv[j] = load_x_tail(x + (size_t)j * x_stride + k, n);
        UNROLL for (int r = 0; r < RW; r++) {
            vec wv = load_w_tail(f, w + (size_t)r * w_stride + (size_t)k * es, n);
            UNROLL for (int j = 0; j < RX; j++) acc[r][j] = vec_fma(wv, xv[j], acc[r][j]);
        }
    }
    (void)K;
    ACC_END(vec_reduce)
}

#if ISA_AVX512
/* ===== BF16 on AVX-512: bf16 activations, vdpbf16ps =====
 *
 * The input row is rounded to bf16 once (act_quantize below: BF16 weights
 * run with bf16 activations, as on the GPU and in ggml; the format's
 * act_fake_quant_ref is that rounding), zero-padded to a multiple of 32.
 * A 512-bit load then holds 32 weights and 32 inputs, lane l the pair
 * (2l, 2l + 1) of each, and one vdpbf16ps adds both exact products to lane
 * l's f32 sum. Against widening the weights to f32 and two FMAs per 32
 * (f32 activations), a qwen3-30b-a3b layer at 512 tokens went 152-165 ->
 * 95-99 ms (234-255 -> 391-409 GFLOP/s, 2 threads, Zen 5); at 1 to 64
 * tokens it measured the same. (One core alone reads qwen3's W13 at 37-39
 * GB/s, from 30-31, with the prefetch of pf_addr below.)
 *
 * Summation order: lane l adds k = 32m + 2l + 1, then 32m + 2l, for m
 * increasing (moe__cpu_dp_bf16); then the fixed lane reduction. Same for
 * every RW x RX.
 */
static size_t bf16_act_row_bytes(int64_t cols) {
    return moe__align_up((size_t)cols, 32) * sizeof(uint16_t);
}

static void bf16_act_round(const moe__wmat *w, const float *x, int64_t cols, void *xq) {
    (void)w;
    uint16_t     *o  = xq;
    const int64_t np = (int64_t)moe__align_up((size_t)cols, 32);
    int64_t       k  = 0;
    for (; k + 16 <= cols; k += 16)
        _mm256_storeu_si256((__m256i *)(o + k), moe__cpu_bf16_x16(x + k));
    for (; k < np; k++) o[k] = k < cols ? moe__f32_to_bf16(x[k]) : 0;
}

/* Where the kernel prefetches row r's bytes of step k. Over the whole of K
 * (decode, run: pf is the next block, RW contiguous rows) as one run in k
 * order, all rows from one pointer: with a pointer per row (RW of them
 * besides the RW weight rows) GCC spilled them to vector registers and the
 * stack, and one core read 30-31 GB/s of qwen3's W13 where it now reads
 * 37-39 (the f32 and f16 kernels gained nothing, or lost, from the same).
 * Within a K slice (prefill: pf is the same rows' next slice) at row r's
 * own offset. */
static inline const char *pf_addr(const char *pf, bool run, int RW, int r, size_t w_stride,
                                  int64_t k, int64_t k0) {
    return run ? pf + ((size_t)(k - k0) / 32 * (size_t)RW + (size_t)r) * 64
               : pf + (size_t)r * w_stride + (size_t)k * 2;
}

/* x: bf16 rows (x_stride counts floats, as for the other formats: the
 * driver's row stride, in bytes, divided by 4). */
static inline __attribute__((always_inline)) void
block_bf16_pairs(int RW, int RX, const char *w, size_t w_stride, const float *x,
                 size_t x_stride, int64_t k0, int64_t k1, int64_t K, int first, int last,
                 __m512 *io, size_t io_stride, float *y, int64_t y_stride, const char *pf,
                 bool run) {
    const uint16_t *xh = (const uint16_t *)x;
    __m512          acc[MAX_RW][MAX_RX];
    ACC_BEGIN(_mm512_setzero_ps())
    for (int64_t k = k0; k < k1; k += 32) {
        /* A full 32 or K's masked tail; x is zero-padded, so only w is masked.
         * (Plain loads for the full steps measured slower from memory; an L1
         * prefetch 768 or 1536 bytes ahead traded one shape for another.) */
        const __mmask32 m = K - k >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << (K - k)) - 1);
        if (pf)
            UNROLL for (int r = 0; r < RW; r++)
                __builtin_prefetch(pf_addr(pf, run, RW, r, w_stride, k, k0), 0, 2);
        __m512i xv[MAX_RX];
        UNROLL for (int j = 0; j < RX; j++)
            xv[j] = _mm512_loadu_si512(xh + 2 * (size_t)j * x_stride + k);
        UNROLL for (int r = 0; r < RW; r++) {
            const __m512i v = _mm512_maskz_loadu_epi16(m, w + (size_t)r * w_stride + (size_t)k * 2);
            UNROLL for (int j = 0; j < RX; j++) acc[r][j] = moe__cpu_dp_bf16(acc[r][j], v, xv[j]);
        }
    }
    ACC_END(_mm512_reduce_add_ps)
}
#endif

/* The block kernel of format f (constant after inlining). */
static inline __attribute__((always_inline)) void
kern(moe_format f, int RW, int RX, const char *w, size_t w_stride, const float *x,
     size_t x_stride, int64_t k0, int64_t k1, int64_t K, int first, int last, vec *io,
     size_t io_stride, float *y, int64_t y_stride, const char *pf, bool run) {
#if ISA_AVX512
    if (f == MOE_FORMAT_BF16) {
        block_bf16_pairs(RW, RX, w, w_stride, x, x_stride, k0, k1, K, first, last, io, io_stride,
                         y, y_stride, pf, run);
        return;
    }
#endif
    (void)run;
    block(f, RW, RX, w, w_stride, x, x_stride, k0, k1, K, first, last, io, io_stride, y,
          y_stride, pf);
}

/* Whole-K block (decode): accumulators never leave registers. */
#define KERN_FULL(RW, RX, w, x, y, pf) \
    kern(f, RW, RX, w, ws, x, xs, 0, K, K, 1, 1, NULL, 0, y, y_stride, pf, true)

/* Decode, n_x <= 4: weight rows in blocks of 8, each streamed from memory
 * once (prefetching the next block) and applied to every input row. */
static inline __attribute__((always_inline)) void
gemm_few(moe_format f, const moe__wmat *w, int64_t r0, int64_t r1, const float *x, size_t xs,
         int64_t n_x, float *y, int64_t y_stride) {
    const int64_t K  = w->cols;
    const size_t  ws = (size_t)K * moe__plain_size(f); /* bytes per weight row */
    int64_t       r  = r0;
    for (; r + 8 <= r1; r += 8) {
        const char *wr = (const char *)w->data + (size_t)r * ws;
        const char *pf = r + 16 <= r1 ? wr + 8 * ws : NULL;
        float      *yr = y + (r - r0);
        switch (n_x) {
        case 4:
            KERN_FULL(4, 4, wr, x, yr, pf);
            KERN_FULL(4, 4, wr + 4 * ws, x, yr + 4, pf ? pf + 4 * ws : NULL);
            break;
        case 3:
            KERN_FULL(4, 3, wr, x, yr, pf);
            KERN_FULL(4, 3, wr + 4 * ws, x, yr + 4, pf ? pf + 4 * ws : NULL);
            break;
        case 2: KERN_FULL(8, 2, wr, x, yr, pf); break;
        default: KERN_FULL(8, 1, wr, x, yr, pf); break;
        }
    }
    for (; r < r1; r++) {
        const char *wr = (const char *)w->data + (size_t)r * ws;
        float      *yr = y + (r - r0);
        switch (n_x) {
        case 4: KERN_FULL(1, 4, wr, x, yr, NULL); break;
        case 3: KERN_FULL(1, 3, wr, x, yr, NULL); break;
        case 2: KERN_FULL(1, 2, wr, x, yr, NULL); break;
        default: KERN_FULL(1, 1, wr, x, yr, NULL); break;
        }
    }
}

/* Prefill, n_x > 4: for each block of 8 weight rows and chunk of XC input
 * rows, K is walked in slices of KSLICE so that the slice of the weight
 * block and of the input chunk (8 x 256 and 32 x 256 values) stay near the
 * core while every 4 x 4 register block passes over them; the accumulators
 * wait in io (on the stack, 16 KiB with AVX-512) between slices. Against
 * 4 x 4 blocks over the whole of K this measured 1.5x (f32) and 1.1x (bf16)
 * faster at 512 tokens. KSLICE is a multiple of every kernel's K step (16,
 * 32), so each sum's order is the same as in decode. */
enum { KSLICE = 256, XC = 32 };

#define KERN_SLICE(RW, RX, w, x, io, y, pf) \
    kern(f, RW, RX, w, ws, x, xs, k0, k1, K, k0 == 0, k1 == K, io, XC, y, y_stride, pf, false)

/* One K slice of RW (8 or 1) weight rows times nx <= XC input rows; the
 * first pass over the weight rows prefetches pf. */
static inline __attribute__((always_inline)) void
kern_rows(moe_format f, int RW, const char *w, size_t ws, const float *x, size_t xs, int64_t nx,
          int64_t k0, int64_t k1, int64_t K, vec *io, float *y, int64_t y_stride,
          const char *pf) {
    const char *pf4 = pf ? pf + 4 * ws : NULL; /* rows 4..7 of pf */
    int64_t     i   = 0;
    for (; i + 4 <= nx; i += 4, pf = pf4 = NULL) {
        if (RW == 8) {
            KERN_SLICE(4, 4, w, x + i * xs, io + i, y + i * y_stride, pf);
            KERN_SLICE(4, 4, w + 4 * ws, x + i * xs, io + 4 * XC + i, y + 4 + i * y_stride, pf4);
        } else {
            KERN_SLICE(1, 4, w, x + i * xs, io + i, y + i * y_stride, pf);
        }
    }
    if (RW == 8) {
        switch (nx - i) {
        case 3:
            KERN_SLICE(4, 3, w, x + i * xs, io + i, y + i * y_stride, pf);
            KERN_SLICE(4, 3, w + 4 * ws, x + i * xs, io + 4 * XC + i, y + 4 + i * y_stride, pf4);
            break;
        case 2: KERN_SLICE(8, 2, w, x + i * xs, io + i, y + i * y_stride, pf); break;
        case 1: KERN_SLICE(8, 1, w, x + i * xs, io + i, y + i * y_stride, pf); break;
        default: break;
        }
    } else {
        switch (nx - i) {
        case 3: KERN_SLICE(1, 3, w, x + i * xs, io + i, y + i * y_stride, pf); break;
        case 2: KERN_SLICE(1, 2, w, x + i * xs, io + i, y + i * y_stride, pf); break;
        case 1: KERN_SLICE(1, 1, w, x + i * xs, io + i, y + i * y_stride, pf); break;
        default: break;
        }
    }
}

static inline __attribute__((always_inline)) void
gemm_many(moe_format f, const moe__wmat *w, int64_t r0, int64_t r1, const float *x, size_t xs,
          int64_t n_x, float *y, int64_t y_stride) {
    const int64_t K  = w->cols;
    const size_t  ws = (size_t)K * moe__plain_size(f);
    const size_t  es = moe__plain_size(f);
    vec           io[8 * XC];
    for (int64_t c = 0; c < n_x; c += XC) {
        const int64_t nx = n_x - c < XC ? n_x - c : XC;
        const float  *xc = x + c * xs;
        float        *yc = y + c * y_stride;
        for (int64_t r = r0; r < r1;) {
            const int   rw = r + 8 <= r1 ? 8 : 1;
            const char *wr = (const char *)w->data + (size_t)r * ws;
            for (int64_t k0 = 0; k0 < K; k0 += KSLICE) {
                const int64_t k1 = K - k0 < KSLICE ? K : k0 + KSLICE;
                /* While on this slice, fetch the block's next slice, or on
                 * the last slice the next block's first (the kernel adds k
                 * in [k0, k1) to pf, hence the offsets). */
                const char *pf = k1 < K         ? wr + (size_t)KSLICE * es
                                 : r + 16 <= r1 ? wr + 8 * ws - (size_t)k0 * es
                                                : NULL;
                if (rw == 8) kern_rows(f, 8, wr, ws, xc, xs, nx, k0, k1, K, io, yc + (r - r0),
                                       y_stride, pf);
                else kern_rows(f, 1, wr, ws, xc, xs, nx, k0, k1, K, io, yc + (r - r0), y_stride,
                               pf);
            }
            r += rw;
        }
    }
}

static inline __attribute__((always_inline)) void
gemm_plain(moe_format f, const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
           size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    const size_t xs = xq_stride / sizeof(float); /* floats per input row */
    if (n_x <= 4) {
        gemm_few(f, w, r0, r1, xq, xs, n_x, y, y_stride);
        return;
    }
    gemm_many(f, w, r0, r1, xq, xs, n_x, y, y_stride);
}

/* ===== Entries ===== */

static void gemm_f32(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                     size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    gemm_plain(MOE_FORMAT_F32, w, r0, r1, xq, xq_stride, n_x, y, y_stride);
}
static void gemm_bf16(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                      size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    gemm_plain(MOE_FORMAT_BF16, w, r0, r1, xq, xq_stride, n_x, y, y_stride);
}
static void gemm_f16(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                     size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    gemm_plain(MOE_FORMAT_F16, w, r0, r1, xq, xq_stride, n_x, y, y_stride);
}

size_t moe__cpu_bf16_f32_row_bytes(int64_t cols) { return (size_t)cols * sizeof(float); }

void moe__cpu_bf16_f32_row(const moe__wmat *w, const float *x, int64_t cols, void *xq) {
    memcpy(xq, x, (size_t)cols * sizeof(float));
    moe__bf16_act_fake_quant_ref(w, xq, cols);
}

const moe__cpu_format moe__cpu_f32  = { .gemm = gemm_f32 };
#if ISA_AVX512
const moe__cpu_format moe__cpu_bf16 = { .act_row_bytes = bf16_act_row_bytes,
                                        .act_quantize  = bf16_act_round,
                                        .gemm          = gemm_bf16 };
#else
const moe__cpu_format moe__cpu_bf16 = { .act_row_bytes = moe__cpu_bf16_f32_row_bytes,
                                        .act_quantize  = moe__cpu_bf16_f32_row,
                                        .gemm          = gemm_bf16 };
#endif
const moe__cpu_format moe__cpu_f16  = { .gemm = gemm_f16 };

float moe__cpu_dot_f32(const float *a, const float *b, int64_t n) {
    float y;
    block(MOE_FORMAT_F32, 1, 1, (const char *)a, 0, b, 0, 0, n, n, 1, 1, NULL, 0, &y, 1, NULL);
    return y;
}
