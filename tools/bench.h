/*
 * bench.h - timing a synthetic layer on the host (`moe demo`, `moe bench`).
 */
#ifndef MOE_BENCH_H
#define MOE_BENCH_H

#include "presets.h"

typedef struct bench_result {
    int64_t n_tokens;
    double  us;            /* median forward time                                  */
    double  touched_bytes; /* weights of the distinct experts used, + shared       */
    double  flops;         /* 2 * multiply-adds of the expert MLPs                 */
} bench_result;

/* Times `runs` forwards of n_tokens (after one warm-up), each with fresh
 * random router logits, flushing the caches before each when flush is set. */
moe_status bench_layer(const synth_layer *s, moe_layer *layer, int64_t n_tokens, int runs,
                       int flush, uint64_t *seed, bench_result *r, char *err, size_t errlen);

/* Runs layer and ref on the same input (n_tokens, first `check` of them
 * through ref) and returns the NMSE of layer vs ref over those tokens. */
moe_status bench_check(const synth_layer *s, moe_layer *layer, moe_layer *ref, int64_t n_tokens,
                       int64_t check, uint64_t *seed, double *nmse, char *err, size_t errlen);

#endif /* MOE_BENCH_H */
