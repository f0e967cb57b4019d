/*
 * fuzz-model.c - a whole model in memory through binding and layer
 * creation (src/io/model.c, family-*.c, model-layer.c): the MoE semantic
 * checks, then the weight conversions and a one-token forward on the
 * reference backend when the layer is small.
 *
 * Input: a GGUF file ("GGUF" magic), or u32 little-endian n, n bytes of
 * config.json, then one safetensors file (fuzz/make_seeds.py writes these).
 */
#include "fuzz.h"
#include "model.h"

#include <string.h>

static void exercise(moe_model *m) {
    moe_model_desc d;
    FUZZ_CHECK(moe_model_info(m, &d) == MOE_OK);
    if (d.first_moe_layer < 0) return;
    /* bounded work per input: skip layers whose conversion would be large */
    if ((double)d.n_experts * (double)d.d_model * (double)(d.d_ff + d.d_ff_shared) > 4e6) return;
    moe_layer_options base = { .backend = MOE_BACKEND_REF, .max_tokens = 1 };
    moe_model_layer *ml = NULL;
    char err[256] = "";
    moe_status s = moe_model_layer_create(m, d.first_moe_layer, &base, &ml, err, sizeof err);
    if (s) {
        FUZZ_CHECK(err[0] != '\0');
        return;
    }
    moe_layer *l = moe_model_layer_layer(ml);
    size_t ws_size = moe_layer_workspace_size(l, 1);
    void *ws = aligned_alloc(64, (ws_size + 64) / 64 * 64);
    float *x = calloc((size_t)d.d_model, sizeof(float)), *out = calloc((size_t)d.d_model, sizeof(float));
    if (ws && x && out) {
        for (int64_t i = 0; i < d.d_model; i++) x[i] = (float)(i % 7) - 3.0f;
        moe_layer_forward(l, 1, x, NULL, moe_model_layer_shared(ml), out, ws, ws_size);
    }
    free(ws);
    free(x);
    free(out);
    moe_model_layer_destroy(ml);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    moe_model *m = NULL;
    char err[256] = "";
    moe_status s;
    if (size >= 4 && !memcmp(data, "GGUF", 4)) {
        s = moe__model_open_gguf_buffer(data, size, NULL, &m, err, sizeof err);
    } else {
        if (size < 4) return 0;
        uint32_t n = (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 |
                     (uint32_t)data[3] << 24;
        if (n > size - 4) return 0;
        s = moe__model_open_st_buffer((const char *)data + 4, n, data + 4 + n, size - 4 - n, NULL, &m,
                                      err, sizeof err);
    }
    FUZZ_CHECK(s != MOE_OK || m != NULL);
    if (s) FUZZ_CHECK(err[0] != '\0');
    if (m) {
        exercise(m);
        moe_model_close(m);
    }
    return 0;
}
