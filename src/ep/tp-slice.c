/*
 * tp-slice.c - routed experts for one tensor-parallel rank: every expert with
 * a slice d_ff / tp_size of its intermediate dimension.
 *
 * Rank r keeps intermediate units [r Is, (r + 1) Is), Is = d_ff / tp_size:
 * the matching W13 rows (gate and up halves, or interleaved pairs for
 * SWIGLU_OAI, or plain rows for RELU2) with their biases, and the matching W2
 * columns. The W2 bias is added once, by rank 0. Summing the ranks' outputs
 * gives the full expert (up to f32 rounding: the W2 sum is split in tp_size
 * partial sums).
 */
#include "ep.h"

#include <string.h>

/* Source row in the full W13 of sliced row i (of rows13 / tp). */
static int64_t w13_row(moe_activation act, int64_t I, int64_t Is, int64_t off, int64_t i) {
    switch (act) {
    case MOE_ACT_SWIGLU_OAI: return 2 * off + i;                  /* pairs are contiguous */
    case MOE_ACT_RELU2: return off + i;
    default: return i < Is ? off + i : I + off + (i - Is);        /* gate half, up half   */
    }
}

moe_status moe_routed_experts_create_tp(const moe_experts_options *full, int32_t tp_size,
                                        int32_t tp_rank, moe_routed_experts **out, char *err,
                                        size_t errlen) {
    if (!full || !out) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "NULL argument");
    *out = NULL;
    if (tp_size < 1 || tp_rank < 0 || tp_rank >= tp_size)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "tp rank %d of %d", tp_rank, tp_size);
    const moe_format f2 = moe__w2_format(full);
    const size_t     esz = moe__plain_size(full->format), esz2 = moe__plain_size(f2);
    if (!esz || !esz2) {
        const char *name = moe_format_name(esz ? f2 : full->format);
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED,
                         "tensor-parallel slicing supports f32, bf16 and f16 weights, not %s",
                         name ? name : "?");
    }
    if (full->n_experts < 1 || full->d_model < 1 || full->d_ff < 1 || !full->w13.data ||
        !full->w2.data)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "experts need sizes and weights");
    if (full->d_ff % tp_size)
        return moe__errf(err, errlen, MOE_ERR_SHAPE,
                         "d_ff %lld is not divisible by tp_size %d", (long long)full->d_ff,
                         tp_size);
    const int64_t E = full->n_experts, H = full->d_model, I = full->d_ff, Is = I / tp_size;
    const int64_t off = (int64_t)tp_rank * Is;
    const int64_t rows13 = moe__w13_rows(full), rows13s = rows13 / tp_size;

    size_t n13 = (size_t)(E * rows13s * H), n2 = (size_t)(E * H * Is);
    char  *w13 = moe__malloc(n13 * esz), *w2 = moe__malloc(n2 * esz2);
    float *b13 = full->w13.bias ? moe__malloc((size_t)(E * rows13s) * sizeof(float)) : NULL;
    if (!w13 || !w2 || (full->w13.bias && !b13)) {
        moe__free(w13), moe__free(w2), moe__free(b13);
        return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory slicing experts");
    }
    const char *src13 = full->w13.data, *src2 = full->w2.data;
    for (int64_t e = 0; e < E; e++) {
        for (int64_t i = 0; i < rows13s; i++) {
            int64_t r = w13_row(full->activation, I, Is, off, i);
            memcpy(w13 + (size_t)((e * rows13s + i) * H) * esz,
                   src13 + (size_t)((e * rows13 + r) * H) * esz, (size_t)H * esz);
            if (b13) b13[e * rows13s + i] = full->w13.bias[e * rows13 + r];
        }
        for (int64_t h = 0; h < H; h++)
            memcpy(w2 + (size_t)((e * H + h) * Is) * esz2,
                   src2 + (size_t)((e * H + h) * I + off) * esz2, (size_t)Is * esz2);
    }
    moe_experts_options o = *full;
    o.d_ff       = Is;
    o.flags     &= ~(unsigned)MOE_EXPERTS_BORROW;
    o.w13        = (moe_weights){ .data = w13, .bias = b13 };
    o.w2         = (moe_weights){ .data = w2, .bias = tp_rank == 0 ? full->w2.bias : NULL };
    moe_status st = moe_routed_experts_create(&o, out, err, errlen);
    moe__free(w13), moe__free(w2), moe__free(b13);
    return st;
}
