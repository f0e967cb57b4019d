/*
 * entry.h - the CUDA backend's entry points, called by src/core/layer.c when a
 * layer's backend is MOE_BACKEND_CUDA (C linkage; includable from C).
 *
 * Pointers given to the forward (x, logits, topk_ids, topk_w, out, ws) are
 * device pointers. The forward allocates nothing and never synchronizes with
 * the host, so it can be captured in a CUDA graph; it runs on the context's
 * stream (moe_context_options.cuda_stream, or one the backend creates), and
 * shared experts with MOE_SHARED_OVERLAPPED on a second stream joined by
 * events.
 */
#ifndef MOE_CUDA_H
#define MOE_CUDA_H

#include "internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Checks the device and the request (formats: BF16, F16 and FP8_BLOCK
 * weights; F32 weights are rejected), uploads the routed experts (into
 * e->impl_state, freed with the experts), the layer's shared experts
 * (opts.shared) and the router tables, makes the context's streams. */
moe_status moe__cuda_layer_create(moe_layer *l, char *err, size_t errlen);
/* Device workspace bytes for a forward of up to n_tokens tokens. */
size_t     moe__cuda_workspace_size(const moe_layer *l, int64_t n_tokens);
/* The forward (see above); routing from logits, from the router's gate when
 * logits is NULL, or given as topk_ids/topk_w. Out-of-range ids cannot be
 * reported without a host sync: they select no local expert (contribute 0). */
moe_status moe__cuda_layer_forward(moe_layer *l, int64_t n_tokens, const void *x,
                                   const float *logits, const int32_t *topk_ids,
                                   const float *topk_w, const moe_shared_experts *shared,
                                   void *out, void *ws, size_t ws_size);
void       moe__cuda_layer_destroy(moe_layer *l);
/* Routing alone on the layer's stream (tests, benchmarks): logits (T, E),
 * topk_ids and topk_w (T, k), device pointers. */
moe_status moe__cuda_route(moe_layer *l, int64_t n_tokens, const float *logits, int32_t *topk_ids,
                           float *topk_w);
/* CUDA devices visible (0 when none or no driver). */
int        moe__cuda_device_count(void);
/* 1 when the CUDA backend has kernels for weights in format f, else 0
 * (moe_format_supported(), src/quant/support.c). */
int        moe__cuda_format_supported(moe_format f);

#ifdef __cplusplus
}
#endif

#endif /* MOE_CUDA_H */
