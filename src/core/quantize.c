/*
 * quantize.c - the public quantization entry points: table sizes and the
 * reference quantizer of one expert, through the format table.
 */
#include "internal.h"

moe_status moe_quant_sizes_get(moe_format f, int64_t rows, int64_t cols, int32_t group_size,
                               moe_format scale_format, moe_quant_sizes *sizes, char *err,
                               size_t errlen) {
    const moe__format_traits *ft = moe__format(f);
    if (!ft) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "unknown format %d", (int)f);
    if (!sizes || rows < 1 || cols < 1)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "bad arguments (rows, cols >= 1)");
    moe__wsizes s;
    moe_status  st = ft->sizes(rows, cols, group_size, scale_format, &s, err, errlen);
    if (st) return st;
    *sizes = (moe_quant_sizes){ s.data, s.scales, s.zeros };
    return MOE_OK;
}

moe_status moe_quantize(moe_format f, int64_t rows, int64_t cols, int32_t group_size,
                        moe_format scale_format, const float *src, void *data, void *scales,
                        void *zeros, char *err, size_t errlen) {
    moe_quant_sizes sz;
    moe_status      st = moe_quant_sizes_get(f, rows, cols, group_size, scale_format, &sz, err, errlen);
    if (st) return st;
    const moe__format_traits *ft = moe__format(f);
    if (!src || !data || (sz.scales && !scales) || (sz.zeros && !zeros))
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "missing source or destination table");
    if (!ft->quantize_ref)
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "format %s has no quantizer",
                         ft->info.name);
    moe__wmat w = {
        .format = f, .rows = rows, .cols = cols, .group_size = group_size,
        .scale_format = scale_format, .data = data, .scales = scales, .zeros = zeros,
        .scale2 = 1.0f,
    };
    st = ft->quantize_ref(src, &w);
    if (st) return moe__errf(err, errlen, st, "quantizing into %s failed", ft->info.name);
    return MOE_OK;
}
