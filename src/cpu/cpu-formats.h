/*
 * cpu-formats.h - the CPU experts' per-format kernel table: how the `cpu`
 * experts implementation (src/cpu/experts-cpu.c) multiplies a block of an
 * expert's weight rows by a block of activation rows, for each weight format.
 *
 * The experts driver owns everything around the kernels: gathering and
 * scaling the input rows, threading, tiling, bias, activation, the shared
 * experts' gate and the scatter of results. A format plugs in with one
 * moe__cpu_format entry (three hooks) defined in its own file
 * (src/cpu/gemm-plain.c for F32/BF16/F16, src/cpu/gemv-<fmt>.c for quantized
 * formats) and one line in the table of src/cpu/cpu-formats.c.
 *
 * ===== How the driver calls a format =====
 *
 * For one expert and one projection (W13 or W2, viewed as moe__wmat w of
 * (rows, cols), cols = K):
 *
 *   1. Every input row of the expert (f32, cols values) goes once through
 *      act_quantize(w, x, cols, xq) into a buffer of act_row_bytes(cols)
 *      bytes (rows are laid out xq_stride bytes apart, 64-byte aligned).
 *      Without act_quantize the rows stay f32 and act_row_bytes is not used.
 *      For W13 the input is the token's row (times the Llama-4 in_scale);
 *      for W2 it is the activation output a (d_ff values).
 *   2. The driver splits w's rows into tiles [r0, r1) and the expert's
 *      input rows into chunks of n_x rows, and for each (tile, chunk) calls
 *        gemm(w, r0, r1, xq, xq_stride, n_x, y, y_stride)
 *      which writes, for i in [0, n_x) and r in [r0, r1),
 *        y[i * y_stride + (r - r0)] = sum_k dequant(W[r, k]) * x_i[k]
 *      with the format's scales applied but NO bias (the driver adds it).
 *      A weight tile is applied to every row of the chunk before the next
 *      tile, so in decode each weight byte is read from memory once.
 *
 * ===== Contract every gemm must keep (tested) =====
 *
 * - Determinism and batch invariance: y[i][r] is a function of W row r and
 *   input row i only, computed with one fixed operation order: it must not
 *   depend on n_x, on i (the row's position in the chunk), on r0, r1, on the
 *   thread, or on what other rows hold. Concretely: fix how K is split
 *   (lanes, blocks, partial sums, the final horizontal reduction) as a
 *   function of K alone, and use the same split in every register-blocking
 *   variant (1 row or 16 rows at once must give the same bits).
 * - Accumulate in fp32 (or exactly in integers, then scale in fp32).
 * - Any 0 <= r0 < r1 <= w->rows and any n_x >= 1 are valid; no alignment of
 *   r0 or r1 is promised. xq is 64-byte aligned and xq_stride is a multiple
 *   of 64; y rows are not aligned.
 * - Thread safety: called concurrently from pool threads on disjoint y; it
 *   must not write any shared state and must not allocate (use the stack:
 *   the pool's threads have default-sized stacks, keep it under 64 KiB).
 * - act_quantize must depend on its own row (and w's static scales) only.
 *
 * Kernels are selected at compile time from the compiler's -march macros
 * (__AVX512F__, __AVX2__, plain C otherwise), and AMX kernels once per
 * process (moe__cpu_amx_ready, whether the OS grants the tiles): one kernel
 * per format in a process, so determinism holds within a build and
 * machine, not across ISAs.
 */
#ifndef MOE_CPU_FORMATS_H
#define MOE_CPU_FORMATS_H

#include "internal.h"

#include <string.h>

#if defined(__F16C__)
#include <immintrin.h>
#endif

/* f16 -> f32 for the kernels' block scales: one instruction where F16C
 * exists, the exact scalar conversion otherwise (same value either way). */
static inline float moe__cpu_half_to_f32(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    return moe__f16_to_f32(h);
#endif
}

typedef struct moe__cpu_format {
    /* Bytes of one activation row of `cols` values after act_quantize
     * (including any per-row or per-block scales stored with it). Unused
     * (may be NULL) when act_quantize is NULL: rows are then cols floats. */
    size_t (*act_row_bytes)(int64_t cols);
    /* Converts one f32 input row x (cols) into the kernel's activation form
     * xq (act_row_bytes(cols) bytes). w is the matrix the row will multiply
     * (static input scales, e.g. FP8_TENSOR's input_scale). NULL: the kernel
     * reads f32 rows. Must produce what the format's act_fake_quant_ref in
     * the format table emulates (a re-layout of the values may come with
     * it: GPTQ-4's bf16 pair order). */
    void   (*act_quantize)(const moe__wmat *w, const float *x, int64_t cols, void *xq);
    /* y (n_x, y_stride) columns [0, r1 - r0) = rows [r0, r1) of w times each
     * of the n_x input rows xq (n_x rows, xq_stride bytes apart). No bias. */
    void   (*gemm)(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                   size_t xq_stride, int64_t n_x, float *y, int64_t y_stride);
    /* (optional, all three or none) A re-layout of one expert's matrix that
     * the kernel streams better than the checkpoint's (GPTQ and AWQ pack
     * words across rows, so a tile of rows is scattered over every page),
     * made once when a layer binds the experts (experts-cpu.c, cpu_bind):
     * pack writes packed_bytes(w) bytes at dst (64-byte aligned), and
     * gemm_packed runs on a view whose data points there (the other fields
     * are w's). It gives the same bits as gemm: matrices never bound (the
     * shared experts, handed to each call) go through gemm. */
    size_t (*packed_bytes)(const moe__wmat *w);
    void   (*pack)(const moe__wmat *w, void *dst);
    void   (*gemm_packed)(const moe__wmat *w, int64_t r0, int64_t r1, const void *xq,
                          size_t xq_stride, int64_t n_x, float *y, int64_t y_stride);
} moe__cpu_format;

/* The kernels of format f, or NULL when the CPU has none for it. */
const moe__cpu_format *moe__cpu_format_get(moe_format f);

/* ===== Entries (each defined in the file that implements it) ===== */

/* src/cpu/gemm-plain.c: f32 activations, weights converted in registers. */
extern const moe__cpu_format moe__cpu_f32;
extern const moe__cpu_format moe__cpu_bf16;
extern const moe__cpu_format moe__cpu_f16;

/* Quantized formats (src/cpu/gemv-<fmt>.c): declare them here, one line each. */
extern const moe__cpu_format moe__cpu_fp8_tensor, moe__cpu_fp8_channel, moe__cpu_fp8_block; /* gemv-fp8.c */
extern const moe__cpu_format moe__cpu_int8_w8a8;                                  /* gemv-int8.c  */
extern const moe__cpu_format moe__cpu_int4_gptq, moe__cpu_int8_gptq, moe__cpu_int4_awq; /* gemv-wna16.c */
extern const moe__cpu_format moe__cpu_mxfp4, moe__cpu_nvfp4;                      /* gemv-fp4.c   */
extern const moe__cpu_format moe__cpu_q8_0, moe__cpu_q4_0, moe__cpu_q4_k, moe__cpu_q6_k,
                             moe__cpu_mxfp4_gguf; /* gemv-q8_0.c, gemv-q4k.c, gemv-q6k.c */

/* ===== Helpers shared by the CPU files ===== */

/* AMX tiles (src/cpu/amx.c): MOE_CPU_AMX is 1 when the build targets them;
 * moe__cpu_amx_ready() says whether this process may run them (asked of the
 * OS once; the same answer for the life of the process). A kernel using
 * tiles loads its tile configuration on entry and releases the tiles before
 * it returns (the configuration is per thread, and released tiles keep
 * context switches cheap). */
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && \
    defined(__x86_64__) && defined(__linux__)
#define MOE_CPU_AMX 1
#else
#define MOE_CPU_AMX 0
#endif
bool moe__cpu_amx_ready(void);

/* The bf16 activations of BF16, INT4_GPTQ and INT4_AWQ where a build has no
 * AVX-512 kernel for them: f32 rows (act_row_bytes) of the bf16-rounded
 * values (act_quantize; their act_fake_quant_ref). gemm-plain.c. */
size_t moe__cpu_bf16_f32_row_bytes(int64_t cols);
void   moe__cpu_bf16_f32_row(const moe__wmat *w, const float *x, int64_t cols, void *xq);

#if defined(__AVX512F__)
#include <immintrin.h>
/* 16 floats -> 16 bf16 words, with moe__f32_to_bf16's integer rounding
 * (nearest even; NaN made quiet), not vcvtneps2bf16's, which flushes
 * denormals: the bf16 activation rows of BF16 and the 4-bit formats
 * (gemm-plain.c, gemv-fp4.c, gemv-wna16.c), equal to their
 * act_fake_quant_ref. */
static inline __m256i moe__cpu_bf16_x16(const float *x) {
    const __m512i u   = _mm512_castps_si512(_mm512_loadu_ps(x));
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r   = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                  _mm512_set1_epi32(0x7f800000));
    const __m512i v = _mm512_mask_or_epi32(_mm512_srli_epi32(r, 16), nan, _mm512_srli_epi32(u, 16),
                                           _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(v);
}

/* e8m0 exponents (0..254, one per dword lane) -> 2^(e - 127) as f32: e << 23
 * for e >= 1; the unsigned max turns e = 0 (bits 0) into 0x00400000, the
 * subnormal 2^-127, and leaves the rest (0xFF is rejected at creation). */
static inline __m512 moe__cpu_e8m0_x16(__m512i e) {
    return _mm512_castsi512_ps(
        _mm512_max_epu32(_mm512_slli_epi32(e, 23), _mm512_set1_epi32(0x00400000)));
}

/* acc + w.hi * x.hi + w.lo * x.lo per 32-bit lane of bf16 pairs, in that
 * order, each product exact in f32 and each sum rounded: vdpbf16ps, or two
 * FMAs where the build lacks AVX512_BF16 (vdpbf16ps also flushes denormal
 * inputs and outputs to zero; the FMAs do not). */
static inline __m512 moe__cpu_dp_bf16(__m512 acc, __m512i w, __m512i x) {
#if defined(__AVX512BF16__)
    return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)x);
#else
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    acc = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(w, hi)),
                          _mm512_castsi512_ps(_mm512_and_si512(x, hi)), acc);
    return _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(w, 16)),
                           _mm512_castsi512_ps(_mm512_slli_epi32(x, 16)), acc);
#endif
}

/* The packed kernels of 16-row groups (gemv-q4k.c, gemv-q6k.c,
 * gemv-q8_0.c, gemv-int8.c): group g holds weight rows 16g .. 16g + 15, one
 * per dword lane. */
enum { MOE_CPU_GROUP_ROWS = 16 };

/* The 4 bytes at p in every dword lane: the activation bytes one vpdpbusd
 * of a group meets (a broadcast load). */
static inline __m512i moe__cpu_bcast4(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* Block b (bytes each, nb per row) of row 16g + r of w into out; zeros for
 * the padding rows past w->rows. The packed kernels' pack functions. */
static inline void moe__cpu_group_src_block(const moe__wmat *w, int64_t g, int r, int64_t b,
                                            int64_t nb, size_t bytes, void *out) {
    const int64_t row = g * MOE_CPU_GROUP_ROWS + r;
    if (row < w->rows)
        memcpy(out, (const char *)w->data + (size_t)(row * nb + b) * bytes, bytes);
    else
        memset(out, 0, bytes);
}

/* Writes the lanes of group g's result v whose rows are inside the tile
 * [r0, r1) to y (y[0] is row r0). */
static inline void moe__cpu_group_store(__m512 v, int64_t g, int64_t r0, int64_t r1, float *y) {
    const int64_t g0 = g * MOE_CPU_GROUP_ROWS;
    const int64_t lo = r0 > g0 ? r0 - g0 : 0;
    const int64_t hi = r1 < g0 + MOE_CPU_GROUP_ROWS ? r1 - g0 : MOE_CPU_GROUP_ROWS;
    _Alignas(64) float lanes[MOE_CPU_GROUP_ROWS];
    _mm512_store_ps(lanes, v);
    memcpy(y + (g0 + lo - r0), lanes + lo, sizeof(float) * (size_t)(hi - lo));
}

#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
/* One 256-value block of the K-quants (gemv-q4k.c, gemv-q6k.c): unsigned
 * codes u[0..3] (64 each, in the order the activation row is stored) times
 * the int8 activations qa, each product sum of 4 (vpdpbusd; at most 4 * 63 *
 * 127, so int16 holds it) packed to int16 and multiplied by the int16 scales
 * s01 / s23 laid out as that packing leaves the sums (vpmaddwd). Exact in
 * int32. */
static inline __m512i moe__cpu_kquant_isum(const __m512i u[4], __m512i s01, __m512i s23,
                                           const int8_t *qa) {
    const __m512i z  = _mm512_setzero_si512();
    const __m512i d0 = _mm512_dpbusd_epi32(z, u[0], _mm512_loadu_si512(qa));
    const __m512i d1 = _mm512_dpbusd_epi32(z, u[1], _mm512_loadu_si512(qa + 64));
    const __m512i d2 = _mm512_dpbusd_epi32(z, u[2], _mm512_loadu_si512(qa + 128));
    const __m512i d3 = _mm512_dpbusd_epi32(z, u[3], _mm512_loadu_si512(qa + 192));
    return _mm512_add_epi32(_mm512_madd_epi16(_mm512_packs_epi32(d0, d1), s01),
                            _mm512_madd_epi16(_mm512_packs_epi32(d2, d3), s23));
}
#endif
#endif

/* How a core streams weight rows from memory, picked once per process for
 * the CPU it runs on (moe__cpu_stream_plan_for, cpu-formats.c) before any
 * kernel runs (moe__cpu_format_get sets it), read by the helpers below.
 * Neither changes a result: rows are independent outputs, and a prefetch
 * only moves data. */
typedef struct moe__cpu_stream_plan {
    int    streams;         /* interleaved row streams per tile (moe__cpu_stream_row) */
    size_t pf_far, pf_near; /* prefetch distances in bytes (moe__cpu_prefetch)        */
    size_t pf_far_packed;   /* pf_far of the packed GPTQ / AWQ kernels (gemv-wna16.c) */
    bool   pf_groups;       /* whether the packed 16-row group kernels (gemv-q4k.c,
                               gemv-q6k.c, gemv-q8_0.c, gemv-int8.c), one sequential
                               stream each, prefetch it themselves                */
} moe__cpu_stream_plan;
extern moe__cpu_stream_plan moe__cpu_plan;

/* The plan for a CPU by its cpuid vendor string ("AuthenticAMD", ...), for
 * cpu-formats.c and the tests. */
moe__cpu_stream_plan moe__cpu_stream_plan_for(const char *vendor);

/* Software prefetch of a weight stream, for kernels that read their weight
 * rows front to back: called with the bytes [p, p + n) the kernel is about
 * to decode, it asks for the same span pf_far bytes ahead into L2 and
 * pf_near bytes ahead into L1. At one activation row a core decodes faster
 * than the hardware prefetcher streams (it stops at every 4 KiB page), so
 * without this the loop waits on memory latency. Prefetches past the end
 * of the weights are harmless (they never fault). */
static inline void moe__cpu_prefetch_at(const void *p, size_t n, size_t far, size_t near) {
    const char *c = (const char *)p;
    for (size_t o = 0; o < n; o += 64) {
        __builtin_prefetch(c + far + o, 0, 2);
        __builtin_prefetch(c + near + o, 0, 3);
    }
}
static inline void moe__cpu_prefetch(const void *p, size_t n) {
    moe__cpu_prefetch_at(p, n, moe__cpu_plan.pf_far, moe__cpu_plan.pf_near);
}

/* A kernel that keeps n streams of its own in flight (not the plan's
 * moe__cpu_stream_row ones) prefetches each this share of a plan distance
 * d, so that a core has the plan's streams x d bytes ahead in all. */
static inline size_t moe__cpu_pf_share(size_t d, int n) {
    return d * (size_t)moe__cpu_plan.streams / (size_t)n;
}

/* Activation rows a quantized kernel applies the whole weight tile to
 * before the next ones: the chunk's rows (2.3 KB each for Q4_K at K = 2048,
 * 6 KB for Q8_0's records) stay in L1 while the tile's weight rows go by
 * (from L2 in prefill), instead of all n_x rows of a call passing through
 * L1 for each weight row: qwen3-30b-a3b at 512 tokens, Q4_K 98-100 -> 74-78
 * ms, Q8_0 245-287 -> 140 ms. Up to this many rows (decode) a call is one
 * chunk, and each weight row is read from memory once. The kernels' passes
 * over a chunk's rows (4 or 8 at once) give each output the same operations
 * whatever the pass, so chunking moves no bit. */
#define MOE_CPU_X_CHUNK 8

/* Weight rows of a tile in moe__cpu_plan.streams interleaved streams: the
 * tile [r0, r1) is cut into that many consecutive segments and step t
 * visits row moe__cpu_stream_row(r0, seg, t) of segment t % streams, so
 * several sequential streams (in different pages) can be in flight at once.
 * Usage: seg = moe__cpu_stream_seg(r0, r1); for t in [0, seg *
 * moe__cpu_plan.streams): r = moe__cpu_stream_row(r0, seg, t), skip r >= r1. */
static inline int64_t moe__cpu_stream_seg(int64_t r0, int64_t r1) {
    return (r1 - r0 + moe__cpu_plan.streams - 1) / moe__cpu_plan.streams;
}
static inline int64_t moe__cpu_stream_row(int64_t r0, int64_t seg, int64_t t) {
    /* The plans' counts without a 64-bit division per row: on 384-byte rows
     * (K = 768, 4 bits) the division cost Q4_K 14% of its speed. */
    const int s = moe__cpu_plan.streams;
    if (s == 1) return r0 + t;
    if (s == 4) return r0 + (t & 3) * seg + (t >> 2);
    return r0 + (t % s) * seg + t / s;
}

/* The plan's rows (moe__cpu_stream_row) below r1 two at a time, for the
 * kernels that run two weight rows against one activation row: *ra, and
 * *rb (r1 when the rows ran out); false when none is left. Usage: for
 * (int64_t t = 0, ra, rb; moe__cpu_stream_pair(r0, r1, seg, &t, &ra, &rb);). */
static inline bool moe__cpu_stream_pair(int64_t r0, int64_t r1, int64_t seg, int64_t *t,
                                        int64_t *ra, int64_t *rb) {
    const int64_t steps = seg * moe__cpu_plan.streams;
    *ra = *rb = r1;
    while (*t < steps && *ra >= r1) *ra = moe__cpu_stream_row(r0, seg, (*t)++);
    while (*t < steps && *rb >= r1) *rb = moe__cpu_stream_row(r0, seg, (*t)++);
    return *ra < r1;
}

/* sum_k a[k] * b[k] in fp32 with the same fixed order as the F32 gemm (so a
 * value does not depend on where it is computed). Used for the shared
 * experts' gate. */
float moe__cpu_dot_f32(const float *a, const float *b, int64_t n);

#endif /* MOE_CPU_FORMATS_H */
