/*
 * test-io-quant-ckpt.c - quantized Hugging Face checkpoints as ModelOpt
 * (NVFP4, FP8, FP8 per channel) and compressed-tensors (fp8 channel / tensor,
 * pack-quantized int4 / int8, int4 with act-order groups, nvfp4) export them:
 * tests/python/gen_quant_ckpt.py packs tiny 2-layer checkpoints in NumPy and
 * computes each MoE layer's output in float64 from the weights as it
 * dequantizes them; here the checkpoint is opened, each listed layer is
 * checked to bind to the expected format, built, run on the reference and
 * CPU backends and compared within the MANIFEST's NMSE bound
 * (layers a checkpoint excludes from quantization load in their own type).
 * The bad_* checkpoints must fail with a precise status and a message naming
 * the offending tensor or setting.
 */
#include "test.h"

#include "../src/io/model.h" /* moe__model_bind: the format each layer is bound to */

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

typedef struct qcase {
    char   name[64], format[32];
    int    layer, d_model;
    double tol;
} qcase;

static int read_qcases(qcase *cs, int cap) {
    char path[4096];
    snprintf(path, sizeof path, "%s/quant_ckpt/MANIFEST", test_data_dir());
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[256];
    int n = 0;
    while (n < cap && fgets(line, sizeof line, f)) {
        qcase *c = &cs[n];
        if (line[0] == '#') continue;
        if (sscanf(line, "%63s %d %lf %31s %d", c->name, &c->layer, &c->tol, c->format,
                   &c->d_model) == 5)
            n++;
    }
    fclose(f);
    return n;
}

TEST(io_quant_ckpt_forward_matches_reference) {
    qcase cs[16];
    int n = read_qcases(cs, 16);
    if (n < 0) TEST_SKIP("no %s/quant_ckpt/MANIFEST (make testdata)", test_data_dir());
    CHECK(n == 13, "%d layers in the MANIFEST, want 13", n);
    for (int i = 0; i < n; i++) {
        const qcase *c = &cs[i];
        char path[4096], err[512];
        snprintf(path, sizeof path, "%s/quant_ckpt/%s", test_data_dir(), c->name);
        moe_model *m = NULL;
        moe_status s = moe_model_open(path, NULL, &m, err, sizeof err);
        CHECK(s == MOE_OK, "%s: %s: %s", c->name, moe_status_name(s), err);
        if (s) continue;
        moe_model_desc d;
        CHECK_STATUS(moe_model_info(m, &d), MOE_OK);
        CHECK(d.n_moe_layers == 2 && d.d_model == c->d_model, "%s: %d MoE layers, H %lld", c->name,
              d.n_moe_layers, (long long)d.d_model);
        moe__mlayer b;
        s = moe__model_bind(m, c->layer, &b, err, sizeof err);
        CHECK(s == MOE_OK, "%s: bind layer %d: %s", c->name, c->layer, err);
        const char *fn = s ? NULL : moe_format_name(b.format);
        CHECK(fn && !strcmp(fn, c->format) && b.format2 == b.format, "%s layer %d: experts "
              "bound as %s, want %s", c->name, c->layer, fn ? fn : "(none)", c->format);
        if (!s) moe__mlayer_free(&b);
        moe_npy x, ref;
        snprintf(path, sizeof path, "%s/quant_ckpt/%s.L%d.x.npy", test_data_dir(), c->name,
                 c->layer);
        REQUIRE(moe_npy_read(path, &x, err, sizeof err) == MOE_OK, "%s", err);
        snprintf(path, sizeof path, "%s/quant_ckpt/%s.L%d.ref.npy", test_data_dir(), c->name,
                 c->layer);
        REQUIRE(moe_npy_read(path, &ref, err, sizeof err) == MOE_OK, "%s", err);
        test_model_layer_check(m, c->name, c->layer, c->d_model, &x, &ref, c->tol, false);
        moe_npy_free(&x);
        moe_npy_free(&ref);
        moe_model_close(m);
    }
}

/* The NVFP4 checkpoint keeps its shared expert (excluded from quantization)
 * in bf16: it loads as such next to NVFP4 routed experts. */
TEST(io_quant_ckpt_excluded_modules_keep_dtype) {
    char path[4096], err[512];
    snprintf(path, sizeof path, "%s/quant_ckpt/nvfp4", test_data_dir());
    moe_model *m = NULL;
    moe_status s = moe_model_open(path, NULL, &m, err, sizeof err);
    if (s == MOE_ERR_MISSING || s == MOE_ERR_IO) TEST_SKIP("no %s (make testdata)", path);
    REQUIRE(s == MOE_OK, "%s", err);
    moe_model_desc d;
    CHECK_STATUS(moe_model_info(m, &d), MOE_OK);
    CHECK(d.expert_format == MOE_FORMAT_NVFP4, "expert format %d", (int)d.expert_format);
    CHECK(d.n_shared_experts == 1 && d.shared_gate, "shared %d gate %d", d.n_shared_experts,
          d.shared_gate);
    moe__mlayer b;
    REQUIRE(moe__model_bind(m, 0, &b, err, sizeof err) == MOE_OK, "%s", err);
    CHECK(b.format == MOE_FORMAT_NVFP4 && b.sh_format == MOE_FORMAT_BF16 && !b.sh_s[0].w,
          "routed %d, shared %d", (int)b.format, (int)b.sh_format);
    moe__mlayer_free(&b);
    moe_model_layer *ml = NULL;
    s = moe_model_layer_create(m, 0, NULL, &ml, err, sizeof err);
    CHECK(s == MOE_OK, "%s", err);
    CHECK(ml && moe_model_layer_shared(ml) != NULL, "no shared experts");
    moe_model_layer_destroy(ml);
    moe_model_close(m);
}

/* Opens bad checkpoint `name`; when at_open is 0 the open must succeed and
 * building `layer` must fail instead. The status must be `want` and the
 * message must contain each of the NULL-terminated strings. */
static void expect_bad(const char *name, int at_open, int layer, moe_status want, ...) {
    char path[4096], err[512] = "";
    snprintf(path, sizeof path, "%s/quant_ckpt/%s", test_data_dir(), name);
    moe_model *m = NULL;
    moe_status s = moe_model_open(path, NULL, &m, err, sizeof err);
    if (!at_open && s == MOE_OK) {
        moe_model_layer *ml = NULL;
        s = moe_model_layer_create(m, layer, NULL, &ml, err, sizeof err);
        CHECK(ml == NULL, "%s: layer built", name);
        moe_model_layer_destroy(ml);
    } else {
        CHECK(at_open || s == MOE_OK, "%s: open failed: %s: %s", name, moe_status_name(s), err);
    }
    moe_model_close(m);
    if (getenv("MOE_TEST_VERBOSE"))
        fprintf(stderr, "    %-28s %s: %s\n", name, moe_status_name(s), err);
    CHECK(s == want, "%s: %s (%s), want %s", name, moe_status_name(s), err, moe_status_name(want));
    va_list ap;
    va_start(ap, want);
    for (const char *w = va_arg(ap, const char *); w; w = va_arg(ap, const char *))
        CHECK(strstr(err, w) != NULL, "%s: message \"%s\" lacks \"%s\"", name, err, w);
    va_end(ap);
}

TEST(io_quant_ckpt_bad_inputs) {
    char path[4096];
    snprintf(path, sizeof path, "%s/quant_ckpt/bad_nvfp4_shape", test_data_dir());
    FILE *f = fopen(path, "r");
    if (!f) TEST_SKIP("no %s (make testdata)", path);
    fclose(f);
    expect_bad("bad_nvfp4_scale2_mismatch", 1, 0, MOE_ERR_UNSUPPORTED, "layer 1 expert 2",
               "model.layers.1.mlp.experts.2.gate_proj.weight_scale_2",
               "model.layers.1.mlp.experts.2.up_proj.weight_scale_2", "global scale", NULL);
    expect_bad("bad_nvfp4_scale2_nan", 1, 0, MOE_ERR_SCALE,
               "model.layers.0.mlp.experts.1.down_proj.weight_scale_2", "nan", NULL);
    expect_bad("bad_nvfp4_block_nan", 0, 1, MOE_ERR_SCALE,
               "model.layers.1.mlp.experts.3.gate_proj.weight_scale", "row 3", NULL);
    expect_bad("bad_nvfp4_shape", 1, 0, MOE_ERR_SHAPE,
               "model.layers.0.mlp.experts.0.up_proj.weight_scale", "(32, 2)", "(32, 4)", NULL);
    expect_bad("bad_fp8_zero_scale", 1, 0, MOE_ERR_SCALE,
               "model.layers.1.mlp.experts.0.down_proj.weight_scale", NULL);
    expect_bad("bad_fp8_inf_input_scale", 1, 0, MOE_ERR_SCALE,
               "model.layers.0.mlp.experts.3.gate_proj.input_scale", "inf", NULL);
    expect_bad("bad_modelopt_algo", 1, 0, MOE_ERR_UNSUPPORTED, "W4A8_AWQ", NULL);
    expect_bad("bad_ct_asym", 1, 0, MOE_ERR_UNSUPPORTED, "pack-quantized", "symmetric false",
               NULL);
    expect_bad("bad_ct_weight_shape", 1, 0, MOE_ERR_SHAPE,
               "model.layers.1.mlp.experts.1.down_proj.weight_shape", "(64, 64)", "(64, 32)",
               NULL);
    expect_bad("bad_fp8_missing_input_scale", 1, 0, MOE_ERR_MISSING,
               "model.layers.1.mlp.experts.2.up_proj.input_scale", NULL);
    expect_bad("bad_nvfp4_dtype", 1, 0, MOE_ERR_DTYPE,
               "model.layers.0.mlp.experts.0.gate_proj.weight", "I8", "U8", NULL);
    expect_bad("bad_ct_fp8_weight_only", 1, 0, MOE_ERR_UNSUPPORTED, "float-quantized",
               "weight-only", NULL);
    expect_bad("bad_ct_mixed_groups", 1, 0, MOE_ERR_UNSUPPORTED, "different schemes", NULL);
    expect_bad("bad_ct_gidx_mismatch", 0, 1, MOE_ERR_UNSUPPORTED,
               "model.layers.1.mlp.experts.3.gate_proj.weight_packed",
               "model.layers.1.mlp.experts.3.up_proj.weight_packed", "different g_idx", NULL);
    expect_bad("bad_ct_gidx_range", 0, 0, MOE_ERR_RANGE, "g_idx[5] = 2 outside [0, 2)", NULL);
    expect_bad("bad_ct_gidx_missing", 1, 0, MOE_ERR_MISSING,
               "model.layers.0.mlp.experts.2.down_proj.weight_g_idx", NULL);
    expect_bad("bad_ct_nvfp4_tiny_scale", 1, 0, MOE_ERR_SCALE,
               "model.layers.1.mlp.experts.0.down_proj.weight_global_scale", "reciprocal", NULL);
    expect_bad("bad_ct_nvfp4_group", 1, 0, MOE_ERR_UNSUPPORTED, "nvfp4-pack-quantized",
               "group_size 32", NULL);
    expect_bad("bad_ct_dynamic_string", 1, 0, MOE_ERR_CONFIG, "\"dynamic\": \"global\"", NULL);
}
