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
};

const moe__cpu_format *moe__cpu_format_get(moe_format f) {
    if ((unsigned)f >= MOE_FORMAT_COUNT) return NULL;
    const moe__cpu_format *c = g_cpu_formats[f];
    return c && c->gemm ? c : NULL;
}
