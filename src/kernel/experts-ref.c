/*
 * experts-ref.c - the reference experts: scalar C, one thread, fp64
 * accumulation. It is the oracle every fast path is tested against, and the
 * fallback for any format that has a reference dequantization.
 *
 * For each expert, each weight row is dequantized once (the format table's
 * dequant_row_ref) and applied to every token row of that expert. Activation
 * quantization, where the format has one, is emulated with the format's
 * act_fake_quant_ref on the f32 input of each projection, so the reference
 * sees the same quantized activations as the fast kernels.
 */
#include "internal.h"

#include <math.h>
#include <string.h>

static const char *ref_rejects(const moe_routed_experts *e) {
    const moe__format_traits *f13 = moe__format(e->fmt13), *f2 = moe__format(e->fmt2);
    if (!f13 || !f13->dequant_row_ref || !f2 || !f2->dequant_row_ref)
        return "the format has no reference dequantization";
    return NULL;
}

/* Per job, for m rows: the scaled input (m, d_model) f32, h (m, w13_rows)
 * f64, a (m, d_ff) f64 and its f32 copy, y (m, d_model) f64, one dequantized
 * weight row and the fake-quantized activations (m, max(d_model, d_ff)) f32. */
static size_t ref_workspace_size(const moe_routed_experts *e, int64_t n_rows, int n_threads) {
    (void)n_threads;
    const moe_experts_options *o = &e->opts;
    size_t m = (size_t)n_rows, kmax = (size_t)(o->d_model > o->d_ff ? o->d_model : o->d_ff);
    return 64 * 7 + m * (size_t)o->d_model * (sizeof(float) + sizeof(double)) +
           m * (size_t)moe__w13_rows(o) * sizeof(double) +
           m * (size_t)o->d_ff * (sizeof(double) + sizeof(float)) + kmax * sizeof(float) +
           m * kmax * sizeof(float);
}

/* h (m, rows) = W . in (m, cols) + bias, in double, with activations
 * fake-quantized into q first when W's format quantizes them. */
static void ref_project(const moe__wmat *w, const float *in, int64_t m, float *wrow, float *q,
                        double *h) {
    const moe__format_traits *ft  = moe__format(w->format);
    const float              *xin = in;
    if (ft->act_fake_quant_ref) {
        memcpy(q, in, (size_t)m * (size_t)w->cols * sizeof(float));
        for (int64_t i = 0; i < m; i++) ft->act_fake_quant_ref(w, q + i * w->cols, w->cols);
        xin = q;
    }
    for (int64_t r = 0; r < w->rows; r++) {
        ft->dequant_row_ref(w, r, wrow);
        for (int64_t i = 0; i < m; i++) {
            const float *x   = xin + i * w->cols;
            double       acc = 0;
            for (int64_t k = 0; k < w->cols; k++) acc += (double)wrow[k] * x[k];
            h[i * w->rows + r] = acc + (w->bias ? w->bias[r] : 0.0);
        }
    }
}

static moe_status ref_run_job(const moe__experts_job *job, char *ws, char *ws_end) {
    const moe_routed_experts  *e  = job->experts;
    const moe_experts_options *o  = &e->opts;
    const moe__dispatch       *d  = job->d;
    const int64_t H = o->d_model, I = o->d_ff, R13 = moe__w13_rows(o);
    const int64_t m_max = d->n_rows, kmax = H > I ? H : I;

    float  *xin  = moe__ws_take(&ws, ws_end, (size_t)(m_max * H) * sizeof(float));
    double *h    = moe__ws_take(&ws, ws_end, (size_t)(m_max * R13) * sizeof(double));
    double *a    = moe__ws_take(&ws, ws_end, (size_t)(m_max * I) * sizeof(double));
    float  *wrow = moe__ws_take(&ws, ws_end, (size_t)kmax * sizeof(float));
    float  *q    = moe__ws_take(&ws, ws_end, (size_t)(m_max * kmax) * sizeof(float));
    float  *a32  = moe__ws_take(&ws, ws_end, (size_t)(m_max * I) * sizeof(float));
    double *y    = moe__ws_take(&ws, ws_end, (size_t)(m_max * H) * sizeof(double));
    if (!xin || !h || !a || !wrow || !q || !a32 || !y) return MOE_ERR_WORKSPACE;

    for (int32_t ex = 0; ex < d->n_local; ex++) {
        const int64_t r0 = d->expert_start[ex], m = d->expert_start[ex + 1] - r0;
        if (m == 0) continue;
        for (int64_t i = 0; i < m; i++) {
            int32_t s = d->row_slot[r0 + i];
            const float *x = d->x + (s / d->top_k) * H;
            float scale = d->in_scale ? d->in_scale[s] : 1.0f;
            for (int64_t k = 0; k < H; k++) xin[i * H + k] = d->in_scale ? x[k] * scale : x[k];
        }
        moe__wmat w13 = moe__experts_w13(e, ex), w2 = moe__experts_w2(e, ex);
        ref_project(&w13, xin, m, wrow, q, h);
        for (int64_t i = 0; i < m; i++) moe__activate_row_f64(o, h + i * R13, a + i * I);
        /* W2's input is the f32 activation the fast kernels see. */
        for (int64_t i = 0; i < m * I; i++) a32[i] = (float)a[i];
        ref_project(&w2, a32, m, wrow, q, y);
        for (int64_t i = 0; i < m; i++) {
            int32_t s = d->row_slot[r0 + i];
            double  g = 1.0;
            if (job->gate) {
                const float *x = d->x + (s / d->top_k) * H;
                double dot = 0;
                for (int64_t k = 0; k < H; k++) dot += (double)x[k] * job->gate[k];
                g = 1.0 / (1.0 + exp(-dot));
            }
            float *dst = d->y + (int64_t)s * H;
            for (int64_t k = 0; k < H; k++) dst[k] = (float)(y[i * H + k] * g);
        }
    }
    return MOE_OK;
}

static moe_status ref_run(const moe__experts_job *jobs, int n_jobs, moe__exec *ex, void *workspace,
                          size_t workspace_size) {
    char *ws = workspace, *end = (char *)workspace + workspace_size;
    for (int j = 0; j < n_jobs; j++) {
        size_t     need = ref_workspace_size(jobs[j].experts, jobs[j].d->n_rows, 1);
        moe_status st   = ref_run_job(&jobs[j], ws, ws + need > end ? end : ws + need);
        if (st) return moe__errf(ex->err, ex->errlen, st, "ref experts: workspace too small");
        ws += need;
    }
    return MOE_OK;
}

const moe__experts_impl moe__experts_ref = {
    .name           = "ref",
    .backend        = MOE_BACKEND_REF,
    .rejects        = ref_rejects,
    .workspace_size = ref_workspace_size,
    .run            = ref_run,
};
