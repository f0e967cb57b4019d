/*
 * formats.c - the format table: one entry per moe_format, a data table in
 * the manner of ggml's type_traits. Plain types are defined here; quantized
 * formats point at the reference functions of src/quant/.
 */
#include "internal.h"
#include "../quant/quant.h"

#include <string.h>

/* ===== Plain types: F32, BF16, F16 ===== */

static moe_status plain_sizes(moe_format f, int64_t rows, int64_t cols, moe__wsizes *s) {
    size_t n;
    if (!moe__mul_ok((size_t)rows, (size_t)cols, &n) || !moe__mul_ok(n, moe__plain_size(f), &n))
        return MOE_ERR_OVERFLOW;
    *s = (moe__wsizes){ .data = n };
    return MOE_OK;
}

#define PLAIN_ENTRY(fmt, lower)                                                                 \
    static moe_status lower##_sizes(int64_t rows, int64_t cols, int32_t group_size,            \
                                    moe_format scale_format, moe__wsizes *s, char *err,        \
                                    size_t errlen) {                                           \
        (void)group_size; (void)scale_format;                                                  \
        moe_status st = plain_sizes(fmt, rows, cols, s);                                       \
        if (st) return moe__errf(err, errlen, st, "%lld x %lld weights overflow size_t",       \
                                 (long long)rows, (long long)cols);                            \
        return MOE_OK;                                                                         \
    }                                                                                          \
    static void lower##_dequant_row_ref(const moe__wmat *w, int64_t r, float *out) {           \
        const char *row = (const char *)w->data + (size_t)r * (size_t)w->cols * moe__plain_size(fmt); \
        moe__to_f32(fmt, row, out, w->cols);                                                   \
    }                                                                                          \
    static moe_status lower##_quantize_ref(const float *src, moe__wmat *w) {                   \
        moe__from_f32(fmt, src, (void *)w->data, w->rows * w->cols);                           \
        return MOE_OK;                                                                         \
    }

PLAIN_ENTRY(MOE_FORMAT_F32, f32)
PLAIN_ENTRY(MOE_FORMAT_BF16, bf16)
PLAIN_ENTRY(MOE_FORMAT_F16, f16)

/* ===== The table ===== */

static const moe__format_traits g_formats[MOE_FORMAT_COUNT] = {
    [MOE_FORMAT_F32] = {
        .info = { .name = "f32", .block_elems = 1, .block_bytes = 4, .bits_per_weight = 32 },
        .sizes = f32_sizes, .dequant_row_ref = f32_dequant_row_ref, .quantize_ref = f32_quantize_ref,
    },
    [MOE_FORMAT_BF16] = {
        .info = { .name = "bf16", .block_elems = 1, .block_bytes = 2, .bits_per_weight = 16 },
        .sizes = bf16_sizes, .dequant_row_ref = bf16_dequant_row_ref, .quantize_ref = bf16_quantize_ref,
        /* bf16 activations (CPU: vdpbf16ps; CUDA: the tensor cores' bf16 operands) */
        .act_fake_quant_ref = moe__bf16_act_fake_quant_ref,
    },
    [MOE_FORMAT_F16] = {
        .info = { .name = "f16", .block_elems = 1, .block_bytes = 2, .bits_per_weight = 16 },
        .sizes = f16_sizes, .dequant_row_ref = f16_dequant_row_ref, .quantize_ref = f16_quantize_ref,
    },
    /* Quantized formats (src/quant/). bits_per_weight counts side-table scales;
     * group formats at group 128 with f16 scales. */
    [MOE_FORMAT_FP8_TENSOR] = {
        .info = { .name = "fp8-tensor", .block_elems = 1, .block_bytes = 1, .bits_per_weight = 8,
                  .is_quantized = 1 },
        .sizes = moe__fp8_tensor_sizes, .validate = moe__fp8_tensor_validate, .dequant_row_ref = moe__fp8_tensor_dequant_row_ref,
        .quantize_ref = moe__fp8_tensor_quantize_ref, .act_fake_quant_ref = moe__fp8_tensor_act_fake_quant_ref,
    },
    [MOE_FORMAT_FP8_CHANNEL] = {
        .info = { .name = "fp8-channel", .block_elems = 1, .block_bytes = 1, .bits_per_weight = 8,
                  .is_quantized = 1 },
        .sizes = moe__fp8_channel_sizes, .validate = moe__fp8_channel_validate, .dequant_row_ref = moe__fp8_channel_dequant_row_ref,
        .quantize_ref = moe__fp8_channel_quantize_ref, .act_fake_quant_ref = moe__fp8_channel_act_fake_quant_ref,
    },
    [MOE_FORMAT_FP8_BLOCK] = {
        .info = { .name = "fp8-block", .block_elems = 1, .block_bytes = 1, .bits_per_weight = 8 + 32.0 / (128 * 128),
                  .is_quantized = 1 },
        .sizes = moe__fp8_block_sizes, .validate = moe__fp8_block_validate, .dequant_row_ref = moe__fp8_block_dequant_row_ref,
        .quantize_ref = moe__fp8_block_quantize_ref, .act_fake_quant_ref = moe__fp8_block_act_fake_quant_ref,
    },
    [MOE_FORMAT_INT8_W8A8] = {
        .info = { .name = "int8-w8a8", .block_elems = 1, .block_bytes = 1, .bits_per_weight = 8,
                  .is_quantized = 1 },
        .sizes = moe__int8_w8a8_sizes, .validate = moe__int8_w8a8_validate, .dequant_row_ref = moe__int8_w8a8_dequant_row_ref,
        .quantize_ref = moe__int8_w8a8_quantize_ref, .act_fake_quant_ref = moe__int8_act_fake_quant_ref,
    },
    [MOE_FORMAT_INT4_GPTQ] = {
        .info = { .name = "int4-gptq", .block_elems = 8, .block_bytes = 4, .bits_per_weight = 4 + 16.0 / 128,
                  .is_quantized = 1 },
        .sizes = moe__int4_gptq_sizes, .validate = moe__int4_gptq_validate, .dequant_row_ref = moe__int4_gptq_dequant_row_ref,
        .quantize_ref = moe__int4_gptq_quantize_ref, .act_fake_quant_ref = moe__bf16_act_fake_quant_ref,
    },
    [MOE_FORMAT_INT4_AWQ] = {
        .info = { .name = "int4-awq", .block_elems = 8, .block_bytes = 4, .bits_per_weight = 4 + 20.0 / 128,
                  .is_quantized = 1 },
        .sizes = moe__int4_awq_sizes, .validate = moe__int4_awq_validate, .dequant_row_ref = moe__int4_awq_dequant_row_ref,
        .quantize_ref = moe__int4_awq_quantize_ref, .act_fake_quant_ref = moe__bf16_act_fake_quant_ref,
    },
    [MOE_FORMAT_INT8_GPTQ] = {
        .info = { .name = "int8-gptq", .block_elems = 4, .block_bytes = 4, .bits_per_weight = 8 + 16.0 / 128,
                  .is_quantized = 1 },
        .sizes = moe__int8_gptq_sizes, .validate = moe__int8_gptq_validate, .dequant_row_ref = moe__int8_gptq_dequant_row_ref,
        .quantize_ref = moe__int8_gptq_quantize_ref,
    },
    [MOE_FORMAT_MXFP4] = {
        .info = { .name = "mxfp4", .block_elems = 32, .block_bytes = 16, .bits_per_weight = 4.25,
                  .is_quantized = 1 },
        .sizes = moe__mxfp4_sizes, .validate = moe__mxfp4_validate, .dequant_row_ref = moe__mxfp4_dequant_row_ref,
        .quantize_ref = moe__mxfp4_quantize_ref, .act_fake_quant_ref = moe__bf16_act_fake_quant_ref,
    },
    [MOE_FORMAT_NVFP4] = {
        .info = { .name = "nvfp4", .block_elems = 16, .block_bytes = 8, .bits_per_weight = 4.5,
                  .is_quantized = 1 },
        .sizes = moe__nvfp4_sizes, .validate = moe__nvfp4_validate, .dequant_row_ref = moe__nvfp4_dequant_row_ref,
        .quantize_ref = moe__nvfp4_quantize_ref, .act_fake_quant_ref = moe__bf16_act_fake_quant_ref,
    },
    [MOE_FORMAT_Q8_0] = {
        .info = { .name = "q8_0", .block_elems = 32, .block_bytes = 34, .bits_per_weight = 8.5,
                  .is_quantized = 1 },
        .sizes = moe__q8_0_sizes, .validate = moe__q8_0_validate, .dequant_row_ref = moe__q8_0_dequant_row_ref,
        .quantize_ref = moe__q8_0_quantize_ref, .act_fake_quant_ref = moe__q8_0_act_fake_quant_ref,
    },
    [MOE_FORMAT_Q4_0] = {
        .info = { .name = "q4_0", .block_elems = 32, .block_bytes = 18, .bits_per_weight = 4.5,
                  .is_quantized = 1 },
        .sizes = moe__q4_0_sizes, .validate = moe__q4_0_validate, .dequant_row_ref = moe__q4_0_dequant_row_ref,
        .quantize_ref = moe__q4_0_quantize_ref, .act_fake_quant_ref = moe__q8_0_act_fake_quant_ref,
    },
    [MOE_FORMAT_Q4_K] = {
        .info = { .name = "q4_k", .block_elems = 256, .block_bytes = 144, .bits_per_weight = 4.5,
                  .is_quantized = 1 },
        .sizes = moe__q4_k_sizes, .validate = moe__q4_k_validate, .dequant_row_ref = moe__q4_k_dequant_row_ref,
        .quantize_ref = moe__q4_k_quantize_ref, .act_fake_quant_ref = moe__q8_k_act_fake_quant_ref,
    },
    [MOE_FORMAT_Q6_K] = {
        .info = { .name = "q6_k", .block_elems = 256, .block_bytes = 210, .bits_per_weight = 6.5625,
                  .is_quantized = 1 },
        .sizes = moe__q6_k_sizes, .validate = moe__q6_k_validate, .dequant_row_ref = moe__q6_k_dequant_row_ref,
        .quantize_ref = moe__q6_k_quantize_ref, .act_fake_quant_ref = moe__q8_k_act_fake_quant_ref,
    },
    [MOE_FORMAT_GGUF_MXFP4] = {
        .info = { .name = "gguf-mxfp4", .block_elems = 32, .block_bytes = 17, .bits_per_weight = 4.25,
                  .is_quantized = 1 },
        .sizes = moe__mxfp4_gguf_sizes, .validate = moe__mxfp4_gguf_validate, .dequant_row_ref = moe__mxfp4_gguf_dequant_row_ref,
        .quantize_ref = moe__mxfp4_gguf_quantize_ref, .act_fake_quant_ref = moe__q8_0_act_fake_quant_ref,
    },
};

const moe__format_traits *moe__format(moe_format f) {
    if ((unsigned)f >= MOE_FORMAT_COUNT || !g_formats[f].info.name) return NULL;
    return &g_formats[f];
}

moe_status moe_format_get_info(moe_format f, moe_format_info *info) {
    const moe__format_traits *t = moe__format(f);
    if (!t || !info) return MOE_ERR_INVALID_ARG;
    *info = t->info;
    return MOE_OK;
}

const char *moe_format_name(moe_format f) {
    const moe__format_traits *t = moe__format(f);
    return t ? t->info.name : NULL;
}

moe_status moe_format_from_name(const char *name, moe_format *f) {
    if (!name || !f) return MOE_ERR_INVALID_ARG;
    for (int i = 0; i < MOE_FORMAT_COUNT; i++) {
        if (g_formats[i].info.name && !strcmp(g_formats[i].info.name, name)) {
            *f = (moe_format)i;
            return MOE_OK;
        }
    }
    return MOE_ERR_INVALID_ARG;
}
