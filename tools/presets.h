/*
 * presets.h - MoE layer shapes of real models (vllm-moe-notes §9.4) and the
 * synthetic layers built from them for `moe demo` and `moe bench`.
 */
#ifndef MOE_PRESETS_H
#define MOE_PRESETS_H

#include "moe.h"

typedef struct moe_preset {
    const char    *name;
    int64_t        d_model, d_ff;
    int32_t        n_experts, top_k;
    moe_scoring    scoring;
    int            renormalize;
    int32_t        n_group, topk_group;
    int            correction_bias;   /* DeepSeek-V3 style selection bias        */
    float          routed_scaling;
    int64_t        shared_d_ff;       /* n_shared * I, 0 = none                  */
    int            shared_gate;       /* Qwen2-MoE sigmoid gate                  */
    moe_activation activation;
    int            biases;            /* gpt-oss expert biases                   */
} moe_preset;

/* NULL-terminated list; moe_preset_find returns NULL for unknown names. */
extern const moe_preset moe_presets[];
const moe_preset       *moe_preset_find(const char *name);

/* A synthetic layer: random weights of the preset's shape in one format. */
typedef struct synth_layer {
    moe_preset          p;          /* n_experts possibly scaled down          */
    moe_format          format;
    moe_router         *router;
    moe_routed_experts *experts;
    moe_shared_experts *shared;
    void               *storage[8]; /* weight tables, freed by synth_destroy  */
    double              expert_bytes; /* bytes of one routed expert's weights  */
    double              shared_bytes;
} synth_layer;

/* Builds the preset in `format`; n_experts_max > 0 caps E (E scaled down to
 * fit memory: the caller reports it). progress (may be NULL) is called with
 * a fraction in [0, 1]. */
moe_status synth_create(const moe_preset *p, moe_format format, int32_t n_experts_max,
                        uint64_t seed, void (*progress)(double), synth_layer *out, char *err,
                        size_t errlen);
void       synth_destroy(synth_layer *s);

/* Fills x (n, d) with a fixed pseudo-random sequence of scale `sigma`. */
void synth_fill(float *x, int64_t n, float sigma, uint64_t *seed);

#endif /* MOE_PRESETS_H */
