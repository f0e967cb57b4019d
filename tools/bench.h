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
    double  bw_gbps;       /* median of the read-bandwidth probes, 0 without       */
    double  bw_frac;       /* median over the probed runs of the run's touched     */
                           /* GB/s over the probe just before it, 0 without        */
} bench_result;

/* Times `runs` forwards of n_tokens (after one warm-up), each with fresh
 * random router logits, flushing the caches before each when flush is set.
 * probe_ctx (with flush): the flush is a read-bandwidth probe on that
 * context's threads, the layer's (moe_context_measure_read_bandwidth over a
 * 256 MiB buffer kept for the process), so each run is set against the
 * bandwidth of the moment it ran in (a shared VM's moves by a factor of 1.7
 * within a minute) and starts with its threads awake. */
moe_status bench_layer(const synth_layer *s, moe_layer *layer, int64_t n_tokens, int runs,
                       int flush, moe_context *probe_ctx, uint64_t *seed, bench_result *r,
                       char *err, size_t errlen);

/* Runs layer and ref on the same input (n_tokens, first `check` of them
 * through ref) and returns the NMSE of layer vs ref over those tokens. */
moe_status bench_check(const synth_layer *s, moe_layer *layer, moe_layer *ref, int64_t n_tokens,
                       int64_t check, uint64_t *seed, double *nmse, char *err, size_t errlen);

#endif /* MOE_BENCH_H */
