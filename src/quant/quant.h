/*
 * quant.h - the scalar reference of every quantized format: element
 * conversions (e4m3fn, e2m1, e8m0), and per format the hooks of the format
 * table (sizes, validate, dequant_row_ref, quantize_ref, act_fake_quant_ref;
 * see moe__format_traits in internal.h), plus the activation quantizers the
 * int8-path CPU kernels share with the reference (q8_0, q8_K).
 *
 * Layouts are documented in quant-blocks.h. Everything here is scalar,
 * single-threaded and written for reading: it is the oracle the fast paths
 * are tested against.
 */
#ifndef MOE_QUANT_H
#define MOE_QUANT_H

#include "internal.h"
#include "quant-blocks.h"

/* ===== Element conversions (src/quant/fp8.c, src/quant/fp4.c) ===== */

/* e4m3fn (1-4-3, bias 7, no Inf, 0x7F/0xFF NaN) to f32: exact. */
float   moe__e4m3_to_f32(uint8_t q);
/* f32 to e4m3fn, round to nearest even, saturating: finite values beyond the
 * range and +-Inf become +-448 (0x7E / 0xFE); NaN stays NaN (0x7F, with the
 * input's sign). Values below the smallest subnormal (2^-9) round to +-0. */
uint8_t moe__f32_to_e4m3(float f);
/* e2m1 code (low 4 bits) to f32: 0, 0.5, 1, 1.5, 2, 3, 4, 6, signed. */
float   moe__e2m1_to_f32(uint8_t code);
/* f32 to the nearest e2m1 code (ties to even mantissa), saturating at +-6;
 * NaN becomes +6 with NaN's sign bit: e2m1 has no NaN, so callers must not
 * feed it one (the quantizers map NaN blocks separately). */
uint8_t moe__f32_to_e2m1(float f);
/* OCP e8m0 scale: 2^(e-127); 0 is 2^-127, 0xFF is NaN. */
float   moe__e8m0_to_f32(uint8_t e);
/* ggml's e8m0 "half" scale used by its MXFP4 blocks: 2^(e-128) computed as
 * ggml_e8m0_to_fp32_half does (e < 2 gives a subnormal; 0xFF gives 2^127). */
float   moe__e8m0_to_f32_half(uint8_t e);

/* Prints the failing position of a scale check into err. */
moe_status moe__scale_errf(char *err, size_t errlen, const char *what, int64_t row, int64_t block,
                           double value);

/* ===== Format hooks =====
 *
 * As moe__format_traits describes them. Format-specific points:
 * - quantize_ref writes data, scales and zeros of w; NVFP4 reads its global
 *   scale from w->scale2 (1 through moe_quantize: the e4m3 block scales then
 *   carry each block's amax / 6 alone, fine for |w| in [2^-6, 2688]).
 * - quantize_ref refuses non-finite input (MOE_ERR_INVALID_ARG).
 * - GPTQ quantize_ref groups columns by w->g_idx when it is set.
 */

#define MOE__QUANT_HOOKS(x)                                                                    \
    moe_status x##_sizes(int64_t rows, int64_t cols, int32_t group_size,                       \
                         moe_format scale_format, moe__wsizes *s, char *err, size_t errlen);   \
    moe_status x##_validate(const moe__wmat *w, char *err, size_t errlen);                     \
    void       x##_dequant_row_ref(const moe__wmat *w, int64_t r, float *out);                 \
    moe_status x##_quantize_ref(const float *src, moe__wmat *w);

MOE__QUANT_HOOKS(moe__fp8_tensor)
MOE__QUANT_HOOKS(moe__fp8_channel)
MOE__QUANT_HOOKS(moe__fp8_block)
MOE__QUANT_HOOKS(moe__int8_w8a8)
MOE__QUANT_HOOKS(moe__int4_gptq)
MOE__QUANT_HOOKS(moe__int8_gptq)
MOE__QUANT_HOOKS(moe__int4_awq)
MOE__QUANT_HOOKS(moe__mxfp4)
MOE__QUANT_HOOKS(moe__nvfp4)
MOE__QUANT_HOOKS(moe__q8_0)
MOE__QUANT_HOOKS(moe__q4_0)
MOE__QUANT_HOOKS(moe__q4_k)
MOE__QUANT_HOOKS(moe__q6_k)
MOE__QUANT_HOOKS(moe__mxfp4_gguf)

/* Activation emulation (act_fake_quant_ref hooks): x (cols) is replaced by
 * dequant(quant(x)) exactly as the format's kernels quantize their input.
 *  fp8_tensor:  static input_scale when w->input_scale > 0, else as fp8_channel
 *  fp8_channel: one dynamic e4m3 scale per token, max(amax/448, 1/(448*512))
 *  fp8_block:   one e4m3 scale per 128 columns, max(amax, 1e-10)/448
 *  int8_w8a8:   one int8 scale per token, amax/127 (moe__quantize_row_i8)
 *  q8_0:        ggml's q8_0 (Q8_0, Q4_0, GGUF MXFP4 dots)
 *  q8_k:        ggml's q8_K (Q4_K, Q6_K dots)
 *  bf16:        rounding to bf16 (BF16; MXFP4, NVFP4, INT4_GPTQ, INT4_AWQ:
 *               W4A16 with bf16 activations)
 * Non-finite inputs propagate: a NaN or Inf in a group makes the group NaN. */
void moe__fp8_tensor_act_fake_quant_ref(const moe__wmat *w, float *x, int64_t cols);
void moe__fp8_channel_act_fake_quant_ref(const moe__wmat *w, float *x, int64_t cols);
void moe__fp8_block_act_fake_quant_ref(const moe__wmat *w, float *x, int64_t cols);
void moe__int8_act_fake_quant_ref(const moe__wmat *w, float *x, int64_t cols);
void moe__q8_0_act_fake_quant_ref(const moe__wmat *w, float *x, int64_t cols);
void moe__q8_k_act_fake_quant_ref(const moe__wmat *w, float *x, int64_t cols);
void moe__bf16_act_fake_quant_ref(const moe__wmat *w, float *x, int64_t cols);

/* ===== Activation quantizers shared with the CPU kernels ===== */

/* Rounds to nearest, ties to even (what the SIMD kernels' round does). */
static inline int moe__rne(float v) {
    /* The magic-number trick of ggml's nearest_int: exact for |v| < 2^22. */
    float f = v + 12582912.0f;
    union { float f; int32_t i; } u = { f };
    return (u.i & 0x007fffff) - 0x00400000;
}

/* ggml q8_0 of k values (k % 32 == 0): d = amax/127 stored as f16,
 * q = rne(x * (1/d)). ggml's scalar reference rounds ties away from zero and
 * its AVX path to even; we round to even everywhere (the two differ only on
 * exact .5 products). */
void moe__quantize_row_q8_0(const float *x, moe_block_q8_0 *y, int64_t k);
/* ggml q8_K of k values (k % 256 == 0): the signed value of largest
 * magnitude maps to -127; d = 1/iscale in f32; bsums filled. */
void moe__quantize_row_q8_k(const float *x, moe_block_q8_k *y, int64_t k);
/* Per-token int8 (INT8_W8A8): returns d = amax/127 and q = rne(x/d) clamped to
 * [-127, 127] (all zero when amax is 0). */
float moe__quantize_row_i8(const float *x, int8_t *q, int64_t k);
/* One e4m3 activation group: returns its scale; q = e4m3(x / scale). */
float moe__quantize_fp8_group(const float *x, uint8_t *q, int64_t n, float scale);

/* ===== Load-time helpers ===== */

/* FP8_TENSOR W13 of one expert: gate rows [0, d_ff) were quantized with
 * s_gate and up rows [d_ff, 2 d_ff) with s_up. Re-quantizes the half with the
 * smaller scale to s = max(s_gate, s_up) in place (vLLM's rule), so one scale
 * serves the whole matrix, and returns s in *s_out. MOE_ERR_SCALE when a
 * scale is not finite and > 0. */
moe_status moe__fp8_merge_w13_scales(uint8_t *w13, int64_t d_ff, int64_t cols, float s_gate,
                                     float s_up, float *s_out, char *err, size_t errlen);

#endif /* MOE_QUANT_H */
