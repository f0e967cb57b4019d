/*
 * cpu-formats.c - the CPU experts' kernel table: one moe__cpu_format per
 * weight format that has a CPU kernel (see cpu-formats.h for the contract).
 * A format with no entry here is rejected by the `cpu` experts at layer
 * creation and falls back to another implementation.
 */
#include "cpu-formats.h"

#include <pthread.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

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

/* Stream plans, measured with the kernels alone on one core after a cache
 * flush, and then as `moe bench` layers (bench/results/):
 * - Intel (a 2-vCPU Sapphire Rapids VM): four interleaved streams, 3072 /
 *   768 bytes ahead. One stream reached 80% of read bandwidth on Q4_K
 *   decode, four 93%; the distances took the Q4_K kernel (2 threads) from
 *   60% to 85%.
 * - AMD (a 2-vCPU Zen 5 EPYC VM, family 26): one stream, 16384 / 4096 bytes
 *   ahead. Four streams ran at half the speed there: the NVFP4 W13 shape
 *   (1536 x 2048) decoded 17 GB/s against 34, and the access pattern alone,
 *   without the arithmetic, read 24 GB/s where a plain sequential read of
 *   the same bytes read 37. The distances, one core from memory
 *   (bench/bench-cpu-kernel.c, qwen3-30b-a3b's W13 and W2 shapes): 16384 /
 *   4096 against 8192 / 2048 took NVFP4, Q8_0 and Q4_K's W13 up by 4-8%
 *   (to 0.83-0.88 of the plain read), no kernel down; 24576 and 32768 gained
 *   nothing more. The packed GPTQ / AWQ kernels, four panel streams of
 *   their own, go 12288 ahead: against 16384, int4-gptq's W2 shape went from
 *   0.77-0.80 of the plain read to 0.83, its W13 shape from 0.84-0.85 to
 *   0.87-0.88, int4-awq and int8-gptq up 1-5 points; at 12288 Q4_K's W13
 *   shape lost 3 points, so the other kernels keep 16384
 *   (bench/results/2026-11-30-cpu-zen5-packed-prefetch.md). The kernels
 *   of 16-row groups (one sequential stream each) prefetch nothing: Q4_K's
 *   read 0.91-1.00 of the plain read so and 0.65-0.72 with the plan's
 *   prefetch at any distance from 4096 to 65536; its qwen3-30b-a3b layer
 *   was slower with it in both of the VM's modes
 *   (bench/results/2026-12-01-cpu-zen5-row-groups.md).
 *   Measured on Zen 5 only; other AMD cores get the same plan untested.
 * Other CPUs keep the Intel plan, which is also the plan before the first
 * moe__cpu_format_get (its row groups prefetch too, untested: there the
 * hardware's stream stopped at every 4 KiB page). */
#define PLAN_INTEL { .streams = 4, .pf_far = 3072, .pf_near = 768, .pf_far_packed = 3072, \
                     .pf_groups = true }
#define PLAN_AMD   { .streams = 1, .pf_far = 16384, .pf_near = 4096, .pf_far_packed = 12288, \
                     .pf_groups = false }

moe__cpu_stream_plan moe__cpu_stream_plan_for(const char *vendor) {
    if (vendor && !strcmp(vendor, "AuthenticAMD")) return (moe__cpu_stream_plan)PLAN_AMD;
    return (moe__cpu_stream_plan)PLAN_INTEL;
}

moe__cpu_stream_plan moe__cpu_plan = PLAN_INTEL;

static void stream_plan_init(void) {
    char vendor[13] = "";
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    if (__get_cpuid(0, &a, &b, &c, &d)) {
        memcpy(vendor, &b, 4); /* the vendor string is in ebx, edx, ecx */
        memcpy(vendor + 4, &d, 4);
        memcpy(vendor + 8, &c, 4);
    }
#endif
    moe__cpu_plan = moe__cpu_stream_plan_for(vendor);
}

const moe__cpu_format *moe__cpu_format_get(moe_format f) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, stream_plan_init);
    if ((unsigned)f >= MOE_FORMAT_COUNT) return NULL;
    const moe__cpu_format *c = g_cpu_formats[f];
    return c && c->gemm ? c : NULL;
}
