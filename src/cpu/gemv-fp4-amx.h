/*
 * gemv-fp4-amx.h - the AMX-BF16 path of the MXFP4 / NVFP4 CPU kernels
 * (src/cpu/gemv-fp4-amx.c), called by the MXFP4 format entry of
 * src/cpu/gemv-fp4.c when FP4_AMX and moe__cpu_amx_ready() (NVFP4 stays on
 * the AVX-512 kernel there; see the .c file).
 *
 * Activation row (shared with gemv-fp4.c, act_row_bytes = 4 * Kp bytes,
 * Kp = cols rounded up to 128): the AVX-512 kernel's perm128 order in the
 * first 2 * Kp bytes, then the plain bf16 row (zero past cols) at byte
 * offset FP4_AMX_XOFF(cols): that is the K order of the AMX tiles.
 */
#ifndef MOE_GEMV_FP4_AMX_H
#define MOE_GEMV_FP4_AMX_H

#include "cpu-formats.h"

#define FP4_AMX_XOFF(cols) ((size_t)(((cols) + 127) / 128 * 128) * 2)

/* The path needs AVX512-VBMI (vpermb) besides the tiles. */
#if MOE_CPU_AMX && defined(__AVX512VBMI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define FP4_AMX 1
#else
#define FP4_AMX 0
#endif

#if FP4_AMX
/* Bytes of the packed copy of w (16-row panels, see the .c file). */
size_t moe__fp4_amx_packed_bytes(const moe__wmat *w);
/* Writes the packed copy of w at dst (64-byte aligned). */
void   moe__fp4_amx_pack(const moe__wmat *w, void *dst);
/* The gemm of cpu-formats.h on the checkpoint layout (packed false) or on
 * the packed copy (w->data = pack's output): the same bits either way. */
void   moe__fp4_amx_gemm(const moe__wmat *w, bool packed, int64_t r0, int64_t r1,
                         const void *xq, size_t xq_stride, int64_t n_x, float *y,
                         int64_t y_stride);
#endif

#endif /* MOE_GEMV_FP4_AMX_H */
