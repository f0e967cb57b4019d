/*
 * convert.c - f16 <-> f32 and row conversions between f32 and the plain
 * storage types (F32, BF16, F16). Exact where the value fits, round to
 * nearest even otherwise.
 */
#include "internal.h"

#include <string.h>

float moe__f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp  = (h >> 10) & 0x1fu;
    uint32_t man  = h & 0x3ffu;
    uint32_t u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);          /* Inf / NaN */
    } else if (exp) {
        u = sign | ((exp + 112u) << 23) | (man << 13); /* normal: rebias 15 -> 127 */
    } else if (man) {
        /* Subnormal: normalize the mantissa. */
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400u));
        u = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    } else {
        u = sign;
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t moe__f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a    = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);        /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);       /* rounds to Inf */
    if (a < 0x38800000u) {
        /* Result is subnormal (or zero): scale into the 10-bit mantissa with
         * round-to-nearest-even. */
        if (a < 0x33000000u) return sign;                           /* < half the smallest */
        uint32_t e     = a >> 23;
        uint32_t man   = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e;                                  /* 14..24 */
        uint32_t r     = man >> shift;
        uint32_t rem   = man & ((1u << shift) - 1u);
        uint32_t half  = 1u << (shift - 1u);
        if (rem > half || (rem == half && (r & 1u))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = a - 0x38000000u; /* rebias 127 -> 15 in the exponent field */
    r = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;
    return (uint16_t)(sign | r);
}

size_t moe__plain_size(moe_format f) {
    switch (f) {
    case MOE_FORMAT_F32: return 4;
    case MOE_FORMAT_BF16:
    case MOE_FORMAT_F16: return 2;
    default: return 0;
    }
}

void moe__to_f32(moe_format f, const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    switch (f) {
    case MOE_FORMAT_F32: memcpy(dst, src, (size_t)n * sizeof(float)); break;
    case MOE_FORMAT_BF16: for (int64_t i = 0; i < n; i++) dst[i] = moe__bf16_to_f32(h[i]); break;
    case MOE_FORMAT_F16: for (int64_t i = 0; i < n; i++) dst[i] = moe__f16_to_f32(h[i]); break;
    default: MOE_ASSERT(!"moe__to_f32: not a plain type");
    }
}

void moe__from_f32(moe_format f, const float *src, void *dst, int64_t n) {
    uint16_t *h = dst;
    switch (f) {
    case MOE_FORMAT_F32: memcpy(dst, src, (size_t)n * sizeof(float)); break;
    case MOE_FORMAT_BF16: for (int64_t i = 0; i < n; i++) h[i] = moe__f32_to_bf16(src[i]); break;
    case MOE_FORMAT_F16: for (int64_t i = 0; i < n; i++) h[i] = moe__f32_to_f16(src[i]); break;
    default: MOE_ASSERT(!"moe__from_f32: not a plain type");
    }
}
