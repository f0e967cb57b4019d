/*
 * activation.c - the scalar activation of one row: h (W13 output) -> a
 * (d_ff values), for every moe_activation. The reference experts and the
 * tests use it; fast paths must match its formulas.
 */
#include "internal.h"

#include <math.h>

static float silu(float v) { return v / (1.0f + expf(-v)); }
static float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }
static float gelu_erf(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }
static float gelu_tanh(float v) {
    const float k = 0.79788456080286536f; /* sqrt(2/pi) */
    return 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
}

void moe__activate_row(const moe_experts_options *o, const float *h, float *a) {
    const int64_t n     = o->d_ff;
    const float   alpha = o->swiglu_alpha != 0 ? o->swiglu_alpha : 1.702f;
    const float   limit = o->swiglu_limit != 0 ? o->swiglu_limit : 7.0f;
    switch (o->activation) {
    case MOE_ACT_SILU:      for (int64_t i = 0; i < n; i++) a[i] = silu(h[i]) * h[n + i]; break;
    case MOE_ACT_GELU:      for (int64_t i = 0; i < n; i++) a[i] = gelu_erf(h[i]) * h[n + i]; break;
    case MOE_ACT_GELU_TANH: for (int64_t i = 0; i < n; i++) a[i] = gelu_tanh(h[i]) * h[n + i]; break;
    case MOE_ACT_SWIGLU_OAI:
        for (int64_t i = 0; i < n; i++) {
            float g = fminf(h[2 * i], limit);
            float u = fminf(fmaxf(h[2 * i + 1], -limit), limit);
            a[i]    = (u + 1.0f) * g * sigmoid(alpha * g);
        }
        break;
    case MOE_ACT_RELU2:
        for (int64_t i = 0; i < n; i++) {
            float r = h[i] > 0 ? h[i] : 0.0f;
            a[i]    = r * r;
        }
        break;
    }
}

/* The same formulas in double, for the fp64 reference experts. */
void moe__activate_row_f64(const moe_experts_options *o, const double *h, double *a) {
    const int64_t n     = o->d_ff;
    const double  alpha = o->swiglu_alpha != 0 ? o->swiglu_alpha : 1.702;
    const double  limit = o->swiglu_limit != 0 ? o->swiglu_limit : 7.0;
    for (int64_t i = 0; i < n; i++) {
        double g, u;
        switch (o->activation) {
        case MOE_ACT_SILU: g = h[i]; a[i] = g / (1.0 + exp(-g)) * h[n + i]; break;
        case MOE_ACT_GELU: g = h[i]; a[i] = 0.5 * g * (1.0 + erf(g / sqrt(2.0))) * h[n + i]; break;
        case MOE_ACT_GELU_TANH:
            g    = h[i];
            a[i] = 0.5 * g * (1.0 + tanh(sqrt(2.0 / M_PI) * (g + 0.044715 * g * g * g))) * h[n + i];
            break;
        case MOE_ACT_SWIGLU_OAI:
            g    = fmin(h[2 * i], limit);
            u    = fmin(fmax(h[2 * i + 1], -limit), limit);
            a[i] = (u + 1.0) * g / (1.0 + exp(-alpha * g));
            break;
        case MOE_ACT_RELU2: g = h[i] > 0 ? h[i] : 0.0; a[i] = g * g; break;
        }
    }
}
