/*
 * bench.c - host timing and checking of synthetic layers.
 *
 * Each timed forward gets fresh router logits (so the touched experts
 * change as in real decoding), and by default the caches are flushed first
 * by reading a buffer larger than the last-level cache: decode is a
 * memory-bandwidth problem and warm caches would flatter it.
 */
#include "bench.h"
#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double median(double *v, int n) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) { double t = v[j]; v[j] = v[j - 1]; v[j - 1] = t; }
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static volatile double g_flush_sink;

static void flush_caches(void) {
    static double *buf;
    static const size_t n = ((size_t)1 << 30) / sizeof(double);
    if (!buf) {
        buf = malloc(n * sizeof(double));
        if (!buf) return;
        for (size_t i = 0; i < n; i++) buf[i] = (double)i;
    }
    double s = 0;
    for (size_t i = 0; i < n; i += 8) s += buf[i];
    g_flush_sink = s;
}

/* The per-run probe's buffer: one for the process, as flush_caches' is, so
 * that no unmapping (which outlasts the pool's polling) separates a probe
 * from the forward it precedes. */
enum { PROBE_BYTES = 256 << 20 };

static void *probe_buffer(void) {
    static void *buf;
    if (!buf && (buf = aligned_alloc(1 << 21, PROBE_BYTES)) != NULL)
        moe_advise_huge_pages(buf, PROBE_BYTES);
    return buf;
}

static double touched_bytes(const synth_layer *s, const int32_t *ids, int64_t n_slots) {
    char  seen_small[512] = { 0 };
    char *seen = s->p.n_experts <= 512 ? seen_small : calloc((size_t)s->p.n_experts, 1);
    int   distinct = 0;
    for (int64_t i = 0; i < n_slots; i++)
        if (!seen[ids[i]]++) distinct++;
    if (seen != seen_small) free(seen);
    return distinct * s->expert_bytes + s->shared_bytes;
}

moe_status bench_layer(const synth_layer *s, moe_layer *layer, int64_t n, int runs, int flush,
                       moe_context *probe_ctx, uint64_t *seed, bench_result *r, char *err,
                       size_t errlen) {
    const moe_preset *p = &s->p;
    size_t ws_size = moe_layer_workspace_size(layer, n);
    float *x = malloc((size_t)(n * p->d_model) * sizeof(float));
    float *out = malloc((size_t)(n * p->d_model) * sizeof(float));
    float *logits = malloc((size_t)(n * p->n_experts) * sizeof(float));
    int32_t *ids = malloc((size_t)(n * p->top_k) * sizeof(int32_t));
    float *w = malloc((size_t)(n * p->top_k) * sizeof(float));
    void *ws = aligned_alloc(64, (ws_size + 63) / 64 * 64 + 64);
    double *t = malloc((size_t)(runs + 1) * sizeof(double)), bytes = 0;
    double *bw = calloc((size_t)runs + 1, sizeof(double));   /* each probed run's probe */
    double *frac = calloc((size_t)runs + 1, sizeof(double)); /* its GB/s over it        */
    int     n_probed = 0;
    moe_status st = MOE_OK;
    if (!x || !out || !logits || !ids || !w || !ws || !t || !bw || !frac) {
        st = MOE_ERR_NOMEM;
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    synth_fill(x, n * p->d_model, 1.0f, seed);
    for (int i = 0; i <= runs; i++) {
        synth_fill(logits, n * p->n_experts, 2.0f, seed);
        /* > 0: this run's probe; without one (no context, no buffer, a failed
         * probe) the plain flush */
        double probe = 0;
        void  *pb    = flush && probe_ctx ? probe_buffer() : NULL;
        if (pb && moe_context_measure_read_bandwidth(probe_ctx, pb, PROBE_BYTES, &probe) != MOE_OK)
            probe = 0;
        if (flush && probe <= 0) flush_caches();
        double t0 = cli_now_us();
        st = moe_layer_forward(layer, n, x, logits, s->shared, out, ws, ws_size);
        double t1 = cli_now_us();
        if (st) {
            snprintf(err, errlen, "%s", moe_layer_last_error(layer));
            goto done;
        }
        if (i == 0) continue; /* warm-up */
        t[i - 1] = t1 - t0;
        moe_router_route(s->router, n, logits, ids, w);
        const double run_bytes = touched_bytes(s, ids, n * p->top_k);
        bytes += run_bytes;
        if (probe > 0) {
            bw[n_probed]     = probe;
            frac[n_probed++] = run_bytes / (t[i - 1] * 1e-6) / 1e9 / probe;
        }
    }
    int64_t rows13 = p->activation == MOE_ACT_RELU2 ? p->d_ff : 2 * p->d_ff;
    int64_t srows13 = p->activation == MOE_ACT_RELU2 ? p->shared_d_ff : 2 * p->shared_d_ff;
    r->n_tokens      = n;
    r->us            = median(t, runs);
    r->touched_bytes = bytes / runs;
    r->bw_gbps       = n_probed ? median(bw, n_probed) : 0;
    r->bw_frac       = n_probed ? median(frac, n_probed) : 0;
    r->flops = 2.0 * n * (p->top_k * (double)(rows13 + p->d_ff) * p->d_model +
                          (double)(srows13 + p->shared_d_ff) * p->d_model);
done:
    free(x); free(out); free(logits); free(ids); free(w); free(ws); free(t); free(bw); free(frac);
    return st;
}

moe_status bench_check(const synth_layer *s, moe_layer *layer, moe_layer *ref, int64_t n,
                       int64_t check, uint64_t *seed, double *nmse, char *err, size_t errlen) {
    const moe_preset *p = &s->p;
    if (check > n) check = n;
    size_t ws1 = moe_layer_workspace_size(layer, n), ws2 = moe_layer_workspace_size(ref, check);
    float *x = malloc((size_t)(n * p->d_model) * sizeof(float));
    float *logits = malloc((size_t)(n * p->n_experts) * sizeof(float));
    float *o1 = malloc((size_t)(n * p->d_model) * sizeof(float));
    float *o2 = malloc((size_t)(check * p->d_model) * sizeof(float));
    void *w1 = aligned_alloc(64, (ws1 + 63) / 64 * 64 + 64), *w2 = aligned_alloc(64, (ws2 + 63) / 64 * 64 + 64);
    moe_status st = MOE_OK;
    if (!x || !logits || !o1 || !o2 || !w1 || !w2) {
        st = MOE_ERR_NOMEM;
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    synth_fill(x, n * p->d_model, 1.0f, seed);
    synth_fill(logits, n * p->n_experts, 2.0f, seed);
    if ((st = moe_layer_forward(layer, n, x, logits, s->shared, o1, w1, ws1))) {
        snprintf(err, errlen, "%s", moe_layer_last_error(layer));
        goto done;
    }
    if ((st = moe_layer_forward(ref, check, x, logits, s->shared, o2, w2, ws2))) {
        snprintf(err, errlen, "ref: %s", moe_layer_last_error(ref));
        goto done;
    }
    double num = 0, den = 0;
    for (int64_t i = 0; i < check * p->d_model; i++) {
        double d = (double)o1[i] - o2[i];
        num += d * d;
        den += (double)o2[i] * o2[i];
    }
    *nmse = den > 0 ? num / den : (num > 0 ? INFINITY : 0);
    if (isnan(*nmse)) *nmse = INFINITY;
done:
    free(x); free(logits); free(o1); free(o2); free(w1); free(w2);
    return st;
}
