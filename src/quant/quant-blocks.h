/*
 * quant-blocks.h - the packed layouts of every quantized weight format, as
 * plain C structs with their sizes checked at compile time. Included by the
 * C reference (src/quant/), the CPU kernels (src/cpu/gemv-*.c) and, later,
 * CUDA code, so it holds only types, constants and layout documentation
 * (ggml's ggml-common.h plays this role there).
 *
 * Every weight matrix is one expert's (rows, cols) with cols = K, the
 * reduction dimension. "Element k" below means column k of a row.
 *
 * ===== Layouts =====
 *
 * Bytes are little-endian; nibble "lo" is bits 0..3, "hi" bits 4..7.
 *
 * FP8_TENSOR   data   u8 e4m3fn (rows, cols)
 *              scales f32 (1)                 w = e4m3(q) * s   (W13: one scale for gate
 *                                              and up; see moe__fp8_merge_w13_scales)
 *              input_scale (optional)         static activation scale
 * FP8_CHANNEL  data   u8 e4m3fn (rows, cols)
 *              scales f32 (rows)              w = e4m3(q) * s[r]
 * FP8_BLOCK    data   u8 e4m3fn (rows, cols)
 *              scales f32 (ceil(rows/128), ceil(cols/128))
 *                                              w = e4m3(q) * s[r/128][k/128]; the checkpoint's
 *                                              weight_scale_inv is this multiplier
 * INT8_W8A8    data   i8 (rows, cols)
 *              scales f32 (rows)              w = q * s[r]
 * INT4_GPTQ    data   i32 (cols/8, rows): the checkpoint's qweight, packed along K.
 *                     Word [k/8][r] holds elements k/8*8 .. +7 of row r, element
 *                     k at bits 4*(k%8) .. 4*(k%8)+3 (element 8j+0 in the lowest nibble).
 *              scales f16/bf16 (cols/g, rows) w = (q - 8) * s[grp(k)][r]
 *              g_idx  i32 (cols), optional    grp(k) = g_idx[k] (act-order), else k/g
 * INT8_GPTQ    data   i32 (cols/4, rows), element k at bits 8*(k%4): w = (q - 128) * s
 *              scales, g_idx as INT4_GPTQ (symmetric: the checkpoint's qzeros unused)
 * INT4_AWQ     data   i32 (cols, rows/8): the checkpoint's qweight, packed along the
 *                     OUTPUT dimension in AWQ's interleaved order: word [k][r/8]
 *                     holds rows r/8*8 .. +7 of element k, row 8j+i in nibble
 *                     MOE_AWQ_NIBBLE_INIT[i] (nibble p = bits 4p..4p+3; the packer
 *                     wrote rows 0,2,4,6,1,3,5,7 into nibbles 0..7).
 *              zeros  i32 (cols/g, rows/8), same packing as data
 *              scales f16/bf16 (cols/g, rows) w = (q - z[k/g][r]) * s[k/g][r]
 * MXFP4        data   u8 (rows, cols/2): gpt-oss `*_blocks` [.., cols/32, 16]; byte j
 *                     of a row holds element 2j (lo) and 2j+1 (hi); e2m1 codes
 *              scales u8 e8m0 (rows, cols/32)  w = e2m1(q) * 2^(s-127); s = 0xFF is NaN
 *                                              (rejected at creation)
 * NVFP4        data   u8 (rows, cols/2): ModelOpt weight; element 2j lo, 2j+1 hi
 *              scales u8 e4m3fn (rows, cols/16)
 *              scale2 f32 per expert (weight_scale_2)
 *                                              w = (e2m1(q) * e4m3(s)) * scale2
 * Q8_0 Q4_0 Q4_K Q6_K GGUF_MXFP4
 *              data   rows of ggml blocks (below), bit-identical to GGUF tensor data;
 *                     scales are inside the blocks.
 *
 * e2m1 codes: bit 3 sign, bits 1..2 exponent (bias 1), bit 0 mantissa:
 * 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives (code 8 is -0).
 */
#ifndef MOE_QUANT_BLOCKS_H
#define MOE_QUANT_BLOCKS_H

#include <stdint.h>

#ifdef __cplusplus
#define MOE_STATIC_ASSERT(c, m) static_assert(c, m)
#else
#define MOE_STATIC_ASSERT(c, m) _Static_assert(c, m)
#endif

/* ===== Constants ===== */

#define MOE_QK8_0     32   /* elements per Q8_0 / Q4_0 / GGUF MXFP4 block          */
#define MOE_QK_K      256  /* elements per K-quant super-block                    */
#define MOE_QK_MXFP4  32   /* elements per OCP MX block (one e8m0 scale)           */
#define MOE_QK_NVFP4  16   /* elements per NVFP4 block (one e4m3 scale)            */
#define MOE_FP8_BLOCK 128  /* FP8_BLOCK weight tile (128 x 128) and activation group */
#define MOE_FP8_MAX   448.0f /* largest finite e4m3fn                              */
#define MOE_K_SCALE_SIZE 12 /* packed 6-bit scales and mins of Q4_K               */

/* AWQ's nibble of row 8j+i inside a packed word (inverse of the packer's
 * order 0,2,4,6,1,3,5,7). */
#define MOE_AWQ_NIBBLE_INIT { 0, 4, 1, 5, 2, 6, 3, 7 }

/* ===== ggml blocks (GGUF) =====
 *
 * Field order and sizes are ggml's (ggml-common.h); d and dmin are IEEE
 * binary16 bit patterns.
 */

/* Q8_0: x[j] = d * qs[j]. */
typedef struct moe_block_q8_0 {
    uint16_t d;
    int8_t   qs[MOE_QK8_0];
} moe_block_q8_0;
MOE_STATIC_ASSERT(sizeof(moe_block_q8_0) == 34, "moe_block_q8_0 size");

/* Q4_0: x[j] = d * ((qs[j] & 15) - 8), x[j + 16] = d * ((qs[j] >> 4) - 8), j < 16. */
typedef struct moe_block_q4_0 {
    uint16_t d;
    uint8_t  qs[MOE_QK8_0 / 2];
} moe_block_q4_0;
MOE_STATIC_ASSERT(sizeof(moe_block_q4_0) == 18, "moe_block_q4_0 size");

/* Q4_K: 8 sub-blocks of 32 with 6-bit scale sc[i] and min m[i] packed in
 * scales[12] (i < 4: sc = scales[i] & 63, m = scales[i+4] & 63; i >= 4:
 * sc = (scales[i+4] & 15) | (scales[i-4] >> 6) << 4, m = (scales[i+4] >> 4) |
 * (scales[i] >> 6) << 4). Chunk c (64 elements) uses qs[32c .. 32c+31]:
 * element 64c + l is the lo nibble of qs[32c + l] (sub-block 2c), element
 * 64c + 32 + l the hi nibble (sub-block 2c+1). x = (d*sc) * q - (dmin*m). */
typedef struct moe_block_q4_k {
    uint16_t d;
    uint16_t dmin;
    uint8_t  scales[MOE_K_SCALE_SIZE];
    uint8_t  qs[MOE_QK_K / 2];
} moe_block_q4_k;
MOE_STATIC_ASSERT(sizeof(moe_block_q4_k) == 144, "moe_block_q4_k size");

/* Q6_K: 16 sub-blocks of 16 with int8 scales. Half h (128 elements) uses
 * ql[64h ..], qh[32h ..], scales[8h ..]; for l < 32, with b = qh[32h + l]:
 *   q(128h + l)      = (ql[64h + l]      & 15) | ((b >> 0) & 3) << 4
 *   q(128h + l + 32) = (ql[64h + l + 32] & 15) | ((b >> 2) & 3) << 4
 *   q(128h + l + 64) = (ql[64h + l]      >> 4) | ((b >> 4) & 3) << 4
 *   q(128h + l + 96) = (ql[64h + l + 32] >> 4) | ((b >> 6) & 3) << 4
 * and x(i) = (d * scales[i / 16]) * (q(i) - 32). */
typedef struct moe_block_q6_k {
    uint8_t  ql[MOE_QK_K / 2];
    uint8_t  qh[MOE_QK_K / 4];
    int8_t   scales[MOE_QK_K / 16];
    uint16_t d;
} moe_block_q6_k;
MOE_STATIC_ASSERT(sizeof(moe_block_q6_k) == 210, "moe_block_q6_k size");

/* ggml MXFP4: x[j] = h(e) * kv[qs[j] & 15], x[j + 16] = h(e) * kv[qs[j] >> 4],
 * with kv the e2m1 values doubled (0, 1, 2, 3, 4, 6, 8, 12, ...) and h(e) =
 * 2^(e-128) as ggml_e8m0_to_fp32_half computes it (e = 0xFF gives 2^127, not
 * NaN, in ggml). Note the nibble order differs from OCP MXFP4 above. */
typedef struct moe_block_mxfp4_gguf {
    uint8_t e;
    uint8_t qs[MOE_QK8_0 / 2];
} moe_block_mxfp4_gguf;
MOE_STATIC_ASSERT(sizeof(moe_block_mxfp4_gguf) == 17, "moe_block_mxfp4_gguf size");

/* Q8_K: ggml's activation block for K-quant dot products: x[j] = d * qs[j]
 * with an f32 d, and bsums[i] = sum of qs[16i .. 16i+15]. */
typedef struct moe_block_q8_k {
    float   d;
    int8_t  qs[MOE_QK_K];
    int16_t bsums[MOE_QK_K / 16];
} moe_block_q8_k;
MOE_STATIC_ASSERT(sizeof(moe_block_q8_k) == 292, "moe_block_q8_k size");

/* ===== OCP / ModelOpt blocks (data only; scales live in separate tables) ===== */

/* 32 e2m1 codes, element 2j in the lo nibble of qs[j]. */
typedef struct moe_block_mxfp4 {
    uint8_t qs[MOE_QK_MXFP4 / 2];
} moe_block_mxfp4;
MOE_STATIC_ASSERT(sizeof(moe_block_mxfp4) == 16, "moe_block_mxfp4 size");

/* 16 e2m1 codes, element 2j in the lo nibble of qs[j]. */
typedef struct moe_block_nvfp4 {
    uint8_t qs[MOE_QK_NVFP4 / 2];
} moe_block_nvfp4;
MOE_STATIC_ASSERT(sizeof(moe_block_nvfp4) == 8, "moe_block_nvfp4 size");

#endif /* MOE_QUANT_BLOCKS_H */
