/*
 * support.c - moe_format_supported(): which backends have kernels for a
 * weight format, read from the tables themselves (the format table for the
 * reference, the CPU kernel table, and the CUDA backend's own answer), so
 * there is no second list to keep in sync.
 */
#include "quant.h"
#include "../cpu/cpu-formats.h"

/* Defined by the CUDA backend when it is built in (src/cuda/); a weak
 * reference so that this file links without it. */
extern int moe__cuda_format_supported(moe_format f) __attribute__((weak));

int moe_format_supported(moe_format f, moe_backend backend) {
    const moe__format_traits *t = moe__format(f);
    if (!t) return 0;
    switch (backend) {
    case MOE_BACKEND_REF: return t->dequant_row_ref != NULL;
    case MOE_BACKEND_CPU: return moe__cpu_format_get(f) != NULL;
    case MOE_BACKEND_CUDA:
#ifdef MOE_HAVE_CUDA
        return moe__cuda_format_supported ? moe__cuda_format_supported(f) : -1;
#else
        return 0;
#endif
    case MOE_BACKEND_AUTO: {
        int c = moe_format_supported(f, MOE_BACKEND_CUDA);
        return moe_format_supported(f, MOE_BACKEND_CPU) ||
               moe_format_supported(f, MOE_BACKEND_REF) || c == 1;
    }
    }
    return 0;
}
