/*
 * gemm-plain.c - CPU kernels for plain weight formats (F32, BF16, F16):
 * y (n_x, r1 - r0) = W[r0:r1, :] . x^T with f32 activations, weights
 * converted to f32 in registers and fp32 FMA accumulation. Entries of the
 * table in cpu-formats.h.
 *
 * Fixed summation order (determinism, batch invariance): each output is one
 * vector accumulator of VLEN lanes; lane l sums k = l, l + VLEN, l + 2 VLEN,
 * ... in increasing k with one FMA per step (the K tail is zero-padded), and
 * the lanes are then reduced with one fixed tree. Every register-blocking
 * variant (8x2, 4x4, 1x1 W rows x input rows) does exactly this per output,
 * so a value does not depend on how many rows are computed together.
 *
 * The ISA is chosen at compile time from -march macros: AVX-512 (16 lanes,
 * masked tails), AVX2 + FMA + F16C (8 lanes), or portable C (16 lanes in an
 * array, mul then add). The three share the blocking code below; only the
 * vector primitives differ. They live in one file because each is a dozen
 * lines.
 */
#include "cpu-formats.h"

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
 * floats apart) over the whole of K, RW x RX accumulators in registers.
 * Always inlined with constant f, RW, RX so that each call site becomes a
 * specialized loop with no array in memory.
 */
#define MAX_RW 8
/* Full unrolling lets the compiler keep acc[][] in registers. */
#define UNROLL _Pragma("GCC unroll 8")
#define MAX_RX 4

static inline __attribute__((always_inline)) void
block(moe_format f, int RW, int RX, const char *w, size_t w_stride, const float *x,
      size_t x_stride, int64_t K, float *y, int64_t y_stride) {
    const size_t es = f == MOE_FORMAT_F32 ? 4 : 2; /* bytes per weight */
    vec          acc[MAX_RW][MAX_RX];
    UNROLL for (int r = 0; r < RW; r++)
        UNROLL for (int j = 0; j < RX; j++) acc[r][j] = vec_zero();
    int64_t k = 0;
    for (; k + VLEN <= K; k += VLEN) {
        vec xv[MAX_RX];
        UNROLL for (int j = 0; j < RX; j++) xv[j] = load_x(x + (size_t)j * x_stride + k);
        UNROLL for (int r = 0; r < RW; r++) {
            vec wv = load_w(f, w + (size_t)r * w_stride + (size_t)k * es);
            UNROLL for (int j = 0; j < RX; j++) acc[r][j] = vec_fma(wv, xv[j], acc[r][j]);
        }
    }
    if (k < K) {
        int n = (int)(K - k);
        vec xv[MAX_RX];
        UNROLL for (int j = 0; j < RX; j++) xv[j] = load_x_tail(x + (size_t)j * x_stride + k, n);
        UNROLL for (int r = 0; r < RW; r++) {
            vec wv = load_w_tail(f, w + (size_t)r * w_stride + (size_t)k * es, n);
            UNROLL for (int j = 0; j < RX; j++) acc[r][j] = vec_fma(wv, xv[j], acc[r][j]);
        }
    }
    UNROLL for (int j = 0; j < RX; j++)
        UNROLL for (int r = 0; r < RW; r++) y[j * y_stride + r] = vec_reduce(acc[r][j]);
}

/* Rows [r0, r1) of w times n_x input rows. Weight rows go in blocks of 8
 * (decode streams each block from memory once and reuses it from L1 for
 * every input row); input rows in blocks of up to 4. */
static inline __attribute__((always_inline)) void
gemm_plain(moe_format f, const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
           size_t xq_stride, int64_t n_x, float *y, int64_t y_stride) {
    const int64_t K   = w->cols;
    const size_t  ws  = (size_t)K * moe__plain_size(f);      /* bytes per weight row */
    const size_t  xs  = xq_stride / sizeof(float);           /* floats per input row */
    const float  *x   = xq;
    int64_t       r   = r0;
    for (; r + 8 <= r1; r += 8) {
        const char *wr = (const char *)w->data + (size_t)r * ws;
        float      *yr = y + (r - r0);
        int64_t     i  = 0;
        for (; i + 4 <= n_x; i += 4) {
            block(f, 4, 4, wr, ws, x + i * xs, xs, K, yr + i * y_stride, y_stride);
            block(f, 4, 4, wr + 4 * ws, ws, x + i * xs, xs, K, yr + 4 + i * y_stride, y_stride);
        }
        switch (n_x - i) {
        case 3:
            block(f, 4, 3, wr, ws, x + i * xs, xs, K, yr + i * y_stride, y_stride);
            block(f, 4, 3, wr + 4 * ws, ws, x + i * xs, xs, K, yr + 4 + i * y_stride, y_stride);
            break;
        case 2: block(f, 8, 2, wr, ws, x + i * xs, xs, K, yr + i * y_stride, y_stride); break;
        case 1: block(f, 8, 1, wr, ws, x + i * xs, xs, K, yr + i * y_stride, y_stride); break;
        default: break;
        }
    }
    for (; r < r1; r++) {
        const char *wr = (const char *)w->data + (size_t)r * ws;
        float      *yr = y + (r - r0);
        int64_t     i  = 0;
        for (; i + 4 <= n_x; i += 4) block(f, 1, 4, wr, ws, x + i * xs, xs, K, yr + i * y_stride, y_stride);
        switch (n_x - i) {
        case 3: block(f, 1, 3, wr, ws, x + i * xs, xs, K, yr + i * y_stride, y_stride); break;
        case 2: block(f, 1, 2, wr, ws, x + i * xs, xs, K, yr + i * y_stride, y_stride); break;
        case 1: block(f, 1, 1, wr, ws, x + i * xs, xs, K, yr + i * y_stride, y_stride); break;
        default: break;
        }
    }
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

const moe__cpu_format moe__cpu_f32  = { .gemm = gemm_f32 };
const moe__cpu_format moe__cpu_bf16 = { .gemm = gemm_bf16 };
const moe__cpu_format moe__cpu_f16  = { .gemm = gemm_f16 };

float moe__cpu_dot_f32(const float *a, const float *b, int64_t n) {
    float y;
    block(MOE_FORMAT_F32, 1, 1, (const char *)a, 0, b, 0, n, &y, 1);
    return y;
}
