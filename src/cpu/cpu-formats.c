/*
 * cpu-formats.c - the CPU experts' kernel table: one moe__cpu_format per
 * weight format that has a CPU kernel (see cpu-formats.h for the contract).
 * A format with no entry here is rejected by the `cpu` experts at layer
 * creation and falls back to another implementation.
 */
#include "cpu-formats.h"

static const moe__cpu_format *const g_cpu_formats[MOE_FORMAT_COUNT] = {
    [MOE_FORMAT_F32]  = &moe__cpu_f32,
    [MOE_FORMAT_BF16] = &moe__cpu_bf16,
    [MOE_FORMAT_F16]  = &moe__cpu_f16,
    /* Quantized formats: one line each, entries from src/cpu/gemv-<fmt>.c. */
    [MOE_FORMAT_FP8_TENSOR]  = &moe__cpu_fp8_tensor,
    [MOE_FORMAT_FP8_CHANNEL] = &moe__cpu_fp8_channel,
    [MOE_FORMAT_FP8_BLOCK]   = &moe__cpu_fp8_block,
    [MOE_FORMAT_INT8_W8A8]   = &moe__cpu_int8_w8a8,
    [MOE_FORMAT_INT4_GPTQ]   = &moe__cpu_int4_gptq,
    [MOE_FORMAT_INT4_AWQ]    = &moe__cpu_int4_awq,
    [MOE_FORMAT_INT8_GPTQ]   = &moe__cpu_int8_gptq,
    [MOE_FORMAT_MXFP4]       = &moe__cpu_mxfp4,
    [MOE_FORMAT_NVFP4]       = &moe__cpu_nvfp4,
    [MOE_FORMAT_Q8_0]        = &moe__cpu_q8_0,
    [MOE_FORMAT_Q4_0]        = &moe__cpu_q4_0,
    [MOE_FORMAT_Q4_K]        = &moe__cpu_q4_k,
    [MOE_FORMAT_Q6_K]        = &moe__cpu_q6_k,
    [MOE_FORMAT_GGUF_MXFP4]  = &moe__cpu_mxfp4_gguf,
};

const moe__cpu_format *moe__cpu_format_get(moe_format f) {
    if ((unsigned)f >= MOE_FORMAT_COUNT) return NULL;
    const moe__cpu_format *c = g_cpu_formats[f];
    return c && c->gemm ? c : NULL;
}
