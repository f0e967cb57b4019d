/*
 * family-hf.c - Hugging Face checkpoints: config.json keys and tensor names
 * of each MoE family, as the upstream transformers models name them.
 *
 *   mixtral      model.layers.L.block_sparse_moe.{gate, experts.e.w1 (gate) / w3 (up) / w2 (down)}
 *   qwen2_moe    model.layers.L.mlp.{gate, experts.e.{gate,up,down}_proj,
 *                shared_expert.{gate,up,down}_proj, shared_expert_gate}
 *   qwen3_moe    model.layers.L.mlp.{gate, experts.e.*_proj}
 *   olmoe        model.layers.L.mlp.{gate, experts.e.*_proj}
 *   deepseek_v2/3 model.layers.L.mlp.{gate (+ e_score_correction_bias), experts.e.*_proj
 *                (+ weight_scale_inv for fp8 block checkpoints), shared_experts.*_proj}
 *   gpt_oss      model.layers.L.mlp.{router (weight, bias), experts.gate_up_proj (E, H, 2I)
 *                gate/up interleaved along 2I, gate_up_proj_bias, down_proj (E, I, H),
 *                down_proj_bias}; MXFP4: experts.{gate_up,down}_proj_{blocks,scales}
 *                (E, 2I, H/32, 16) / (E, 2I, H/32)
 *   llama4       [language_model.]model.layers.L.feed_forward.{router, experts.gate_up_proj
 *                (E, H, 2I) gate then up, experts.down_proj (E, I, H), shared_expert.*_proj}
 *
 * Quantized per-expert projections (families but gpt_oss and llama4), by
 * config: GPTQ / AWQ (proj.{qweight, scales, qzeros, g_idx}); ModelOpt NVFP4
 * / FP8 / FP8_PER_CHANNEL_PER_TOKEN and compressed-tensors fp8 / int
 * pack-quantized / nvfp4-pack-quantized (proj.{weight or weight_packed,
 * weight_scale, weight_scale_2 or weight_global_scale, input_scale,
 * weight_shape, weight_g_idx}, see bind_sproj). Modules such a
 * checkpoint leaves unquantized keep a plain proj.weight and load as such.
 */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static const struct { const char *model_type; moe__family fam; } hf_types[] = {
    { "mixtral", MOE__FAM_MIXTRAL },         { "qwen2_moe", MOE__FAM_QWEN2_MOE },
    { "qwen3_moe", MOE__FAM_QWEN3_MOE },     { "olmoe", MOE__FAM_OLMOE },
    { "deepseek_v2", MOE__FAM_DEEPSEEK_V2 }, { "deepseek_v3", MOE__FAM_DEEPSEEK_V3 },
    { "gpt_oss", MOE__FAM_GPT_OSS },         { "llama4", MOE__FAM_LLAMA4 },
    { "llama4_text", MOE__FAM_LLAMA4 },
};

static moe_status get_int(const moe_model *m, const char *key, int required, int64_t def, int64_t lo,
                          int64_t hi, int64_t *v, char *err, size_t errlen) {
    moe_status s = moe__json_get_i64(&m->config, m->cfg_root, key, lo, hi, v, err, errlen);
    if (s == MOE_ERR_MISSING) {
        if (required) return moe__errf(err, errlen, MOE_ERR_CONFIG, "config.json lacks \"%s\"", key);
        *v = def;
        return MOE_OK;
    }
    return s;
}

/* An integer key that may also be null (DeepSeek's n_shared_experts). */
static moe_status get_int_or_null(const moe_model *m, const char *key, int64_t def, int64_t lo,
                                  int64_t hi, int64_t *v, char *err, size_t errlen) {
    uint32_t n = moe__json_get(&m->config, m->cfg_root, key);
    if (n && m->config.nodes[n].type == MOE__JSON_NULL) { *v = def; return MOE_OK; }
    return get_int(m, key, 0, def, lo, hi, v, err, errlen);
}

static moe_status get_f64(const moe_model *m, const char *key, double def, double *v, char *err,
                          size_t errlen) {
    moe_status s = moe__json_get_f64(&m->config, m->cfg_root, key, v, err, errlen);
    if (s == MOE_ERR_MISSING) { *v = def; return MOE_OK; }
    if (!s && !isfinite(*v))
        return moe__errf(err, errlen, MOE_ERR_CONFIG, "config: \"%s\" is not finite", key);
    return s;
}

static moe_status get_bool(const moe_model *m, const char *key, int def, int *v, char *err,
                           size_t errlen) {
    moe_status s = moe__json_get_bool(&m->config, m->cfg_root, key, v, err, errlen);
    if (s == MOE_ERR_MISSING) { *v = def; return MOE_OK; }
    return s;
}

static moe_status get_str(const moe_model *m, const char *key, const char *def, const char **v,
                          char *err, size_t errlen) {
    moe_status s = moe__json_get_str(&m->config, m->cfg_root, key, v, err, errlen);
    if (s == MOE_ERR_MISSING) { *v = def; return MOE_OK; }
    return s;
}

/* Reads a JSON array of layer indices into is_moe (set = value). */
static moe_status layer_list(const moe_model *m, const char *key, uint8_t *is_moe, uint8_t value,
                             int *present, char *err, size_t errlen) {
    const moe__json *j = &m->config;
    uint32_t n = moe__json_get(j, m->cfg_root, key);
    *present = n != 0;
    if (!n) return MOE_OK;
    if (j->nodes[n].type != MOE__JSON_ARRAY)
        return moe__errf(err, errlen, MOE_ERR_CONFIG, "config: \"%s\" must be a list of layers", key);
    for (uint32_t c = moe__json_child(j, n); c; c = j->nodes[c].next) {
        const moe__json_node *e = &j->nodes[c];
        if (e->type != MOE__JSON_NUMBER || !(e->num_flags & MOE__JSON_I64) || e->i < 0 ||
            e->i >= m->cfg.n_layers)
            return moe__errf(err, errlen, MOE_ERR_CONFIG, "config: \"%s\" has an entry that is not "
                             "a layer index in [0, %d)", key, m->cfg.n_layers);
        is_moe[e->i] = value;
    }
    return MOE_OK;
}

static moe_status family_list(char *err, size_t errlen, const char *what, const char *name) {
    char list[256] = "";
    size_t o = 0;
    for (size_t i = 0; i < sizeof hf_types / sizeof hf_types[0]; i++)
        o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", i ? ", " : "", hf_types[i].model_type);
    return moe__errf(err, errlen, MOE_ERR_UNKNOWN_FAMILY, "%s \"%.64s\" is not a supported MoE "
                     "family; supported: %s", what, name, list);
}

/* ===== ModelOpt and compressed-tensors checkpoints =====
 *
 * Both store each expert projection as its own weight tensor with scale
 * tensors beside it (names in bind_sproj). The configuration says the
 * scheme; the layers it excludes keep a plain `weight` and load as such. */

static moe_status scaled_family_ok(const moe__mcfg *c, char *err, size_t errlen) {
    if (c->family == MOE__FAM_GPT_OSS || c->family == MOE__FAM_LLAMA4)
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "%s checkpoints of %s are not "
                         "supported (fused expert tensors)", c->quant_name,
                         moe__family_names[c->family]);
    return MOE_OK;
}

/* ModelOpt: quant_algo (and group_size) of object q in j, from config.json's
 * quantization_config or hf_quant_config.json's "quantization". */
static moe_status hf_modelopt(moe_model *m, const moe__json *j, uint32_t q, char *err,
                              size_t errlen) {
    moe__mcfg *c = &m->cfg;
    const char *algo = NULL;
    int64_t group = 16;
    moe_status s;
    if (!q || j->nodes[q].type != MOE__JSON_OBJECT)
        return moe__errf(err, errlen, MOE_ERR_CONFIG, "ModelOpt checkpoint without a "
                         "quantization object (config.json quantization_config or "
                         "hf_quant_config.json \"quantization\")");
    uint32_t an = moe__json_get(j, q, "quant_algo");
    if (an && j->nodes[an].type == MOE__JSON_NULL) return MOE_OK; /* e.g. kv cache only */
    if ((s = moe__json_get_str(j, q, "quant_algo", &algo, err, errlen))) {
        if (s == MOE_ERR_MISSING)
            return moe__errf(err, errlen, MOE_ERR_CONFIG, "ModelOpt quantization config has no "
                             "\"quant_algo\"");
        return s;
    }
    if ((s = moe__json_get_i64(j, q, "group_size", 1, 1 << 20, &group, err, errlen)) &&
        s != MOE_ERR_MISSING)
        return s;
    snprintf(c->quant_name, sizeof c->quant_name, "ModelOpt %.48s", algo);
    if (!strcmp(algo, "NVFP4")) {
        if (group != 16)
            return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "ModelOpt NVFP4 with group_size "
                             "%lld: NVFP4 blocks are 16 weights", (long long)group);
        c->quant_format = MOE_FORMAT_NVFP4;
    } else if (!strcmp(algo, "FP8")) {
        c->quant_format = MOE_FORMAT_FP8_TENSOR;
        c->quant_static_in = 1;
    } else if (!strcmp(algo, "FP8_PER_CHANNEL_PER_TOKEN")) {
        c->quant_format = MOE_FORMAT_FP8_CHANNEL;
    } else {
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "ModelOpt quant_algo \"%.48s\": "
                         "libmoe loads NVFP4, FP8 and FP8_PER_CHANNEL_PER_TOKEN", algo);
    }
    c->quant = MOE__QUANT_SCALED;
    return scaled_family_ok(c, err, errlen);
}

/* String member key of object n, or def when absent or null. */
static moe_status str_or_null(const moe__json *j, uint32_t n, const char *key, const char *def,
                              const char **v, char *err, size_t errlen) {
    uint32_t k = moe__json_get(j, n, key);
    *v = def;
    if (!k || j->nodes[k].type == MOE__JSON_NULL) return MOE_OK;
    return moe__json_get_str(j, n, key, v, err, errlen);
}

/* One compressed-tensors quantization args object (weights or
 * input_activations), as far as the loader reads it. */
typedef struct ct_args {
    int         present;
    int64_t     bits, group;
    const char *type, *strategy, *actorder;
    int         symmetric, dynamic;
} ct_args;

static moe_status ct_read_args(const moe__json *j, uint32_t n, ct_args *a, char *err,
                               size_t errlen) {
    memset(a, 0, sizeof *a);
    a->type = "int";
    a->strategy = "tensor";
    a->actorder = "";
    a->symmetric = 1;
    a->bits = 8;
    a->group = -1;
    if (!n || j->nodes[n].type == MOE__JSON_NULL) return MOE_OK;
    if (j->nodes[n].type != MOE__JSON_OBJECT)
        return moe__errf(err, errlen, MOE_ERR_CONFIG, "compressed-tensors: quantization args "
                         "must be objects");
    a->present = 1;
    moe_status s;
    uint32_t g = moe__json_get(j, n, "group_size"), ao = moe__json_get(j, n, "actorder");
    uint32_t dn = moe__json_get(j, n, "dynamic");
    if ((s = moe__json_get_i64(j, n, "num_bits", 1, 64, &a->bits, err, errlen)) &&
        s != MOE_ERR_MISSING)
        return s;
    if (g && j->nodes[g].type != MOE__JSON_NULL &&
        (s = moe__json_get_i64(j, n, "group_size", -1, 1 << 20, &a->group, err, errlen)))
        return s;
    if (((s = moe__json_get_str(j, n, "type", &a->type, err, errlen)) && s != MOE_ERR_MISSING) ||
        ((s = moe__json_get_str(j, n, "strategy", &a->strategy, err, errlen)) &&
         s != MOE_ERR_MISSING) ||
        ((s = moe__json_get_bool(j, n, "symmetric", &a->symmetric, err, errlen)) &&
         s != MOE_ERR_MISSING))
        return s;
    /* dynamic: a bool, or "local" (nvfp4 activations: per-group scales made
     * at run time under a global scale from the checkpoint) */
    if (!dn || j->nodes[dn].type != MOE__JSON_STRING) {
        if ((s = moe__json_get_bool(j, n, "dynamic", &a->dynamic, err, errlen)) &&
            s != MOE_ERR_MISSING)
            return s;
    } else {
        const char *dv;
        if ((s = moe__json_get_str(j, n, "dynamic", &dv, err, errlen))) return s;
        if (strcmp(dv, "local"))
            return moe__errf(err, errlen, MOE_ERR_CONFIG, "compressed-tensors: quantization args "
                             "\"dynamic\": \"%.32s\" (true, false or \"local\")", dv);
        a->dynamic = 1;
    }
    /* actorder: a string, null, or (older versions) a bool meaning "group" */
    if (ao && j->nodes[ao].type == MOE__JSON_TRUE) a->actorder = "group";
    if (ao && (j->nodes[ao].type == MOE__JSON_TRUE || j->nodes[ao].type == MOE__JSON_FALSE))
        return MOE_OK;
    return str_or_null(j, n, "actorder", "", &a->actorder, err, errlen);
}

/* compressed-tensors (llm-compressor): one weights scheme for the model's
 * quantized linears (config_groups may repeat it), mapped onto a libmoe
 * format; anything else is named in the error. */
static moe_status hf_ct(moe_model *m, uint32_t q, char *err, size_t errlen) {
    const moe__json *j = &m->config;
    moe__mcfg *c = &m->cfg;
    const char *fmt;
    moe_status s;
    if ((s = str_or_null(j, q, "format", "dense", &fmt, err, errlen))) return s;
    uint32_t groups = moe__json_get(j, q, "config_groups");
    if (!groups || j->nodes[groups].type != MOE__JSON_OBJECT || !j->nodes[groups].n_children)
        return moe__errf(err, errlen, MOE_ERR_CONFIG, "compressed-tensors config without "
                         "config_groups");
    ct_args w = {0}, in = {0};
    const char *gfmt = fmt;
    int first = 1;
    for (uint32_t g = moe__json_child(j, groups); g; g = j->nodes[g].next) {
        ct_args gw, gi;
        const char *f = fmt;
        if (j->nodes[g].type != MOE__JSON_OBJECT)
            return moe__errf(err, errlen, MOE_ERR_CONFIG, "compressed-tensors: config_groups "
                             "entries must be objects");
        if ((s = ct_read_args(j, moe__json_get(j, g, "weights"), &gw, err, errlen)) ||
            (s = ct_read_args(j, moe__json_get(j, g, "input_activations"), &gi, err, errlen)))
            return s;
        if ((s = str_or_null(j, g, "format", fmt, &f, err, errlen))) return s;
        if (!gw.present)
            return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "compressed-tensors config group "
                             "without weights quantization");
        if (first) {
            w = gw, in = gi, gfmt = f, first = 0;
        } else if (gw.bits != w.bits || strcmp(gw.type, w.type) ||
                   strcmp(gw.strategy, w.strategy) ||
                   gw.group != w.group || gw.symmetric != w.symmetric || strcmp(f, gfmt) ||
                   gi.present != in.present || (in.present && (gi.dynamic != in.dynamic ||
                                                               strcmp(gi.strategy, in.strategy)))) {
            return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "compressed-tensors config with "
                             "config_groups of different schemes: libmoe loads one scheme for "
                             "all quantized layers");
        }
    }
    snprintf(c->quant_name, sizeof c->quant_name, "compressed-tensors %.24s %s%lld %.16s",
             gfmt, w.type, (long long)w.bits, w.strategy);
    const int fp8 = !strcmp(w.type, "float") && w.bits == 8;
    if (fp8 && (!strcmp(gfmt, "float-quantized") || !strcmp(gfmt, "naive-quantized")) &&
        w.symmetric && !w.dynamic &&
        (!strcmp(w.strategy, "channel") || !strcmp(w.strategy, "tensor"))) {
        if (!in.present)
            return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "%s weight-only (no "
                             "input_activations): libmoe's fp8 formats quantize activations "
                             "to fp8", c->quant_name);
        if (strcmp(in.type, "float") || in.bits != 8 ||
            (strcmp(in.strategy, "token") && strcmp(in.strategy, "tensor")) ||
            (!in.dynamic && strcmp(in.strategy, "tensor")))
            return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "%s with %s%lld %s %s activations: "
                             "libmoe runs fp8 activations per token (dynamic) or per tensor "
                             "(static)", c->quant_name, in.type, (long long)in.bits, in.strategy,
                             in.dynamic ? "dynamic" : "static");
        if (!strcmp(w.strategy, "channel")) {
            if (!in.dynamic)
                return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "%s with static activations: "
                                 "libmoe's fp8-channel quantizes activations per token",
                                 c->quant_name);
            c->quant_format = MOE_FORMAT_FP8_CHANNEL;
        } else {
            c->quant_format = MOE_FORMAT_FP8_TENSOR;
            c->quant_static_in = !in.dynamic;
        }
    } else if (!strcmp(w.type, "int") && (w.bits == 4 || w.bits == 8) &&
               !strcmp(gfmt, "pack-quantized") && w.symmetric && !w.dynamic &&
               !strcmp(w.strategy, "group") && !in.present) {
        if (w.group != 32 && w.group != 64 && w.group != 128)
            return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "%s with group_size %lld: libmoe "
                             "runs groups of 32, 64 and 128", c->quant_name, (long long)w.group);
        /* "group" (alias "dynamic"): groups in activation order, one weight_g_idx
         * (K) per projection; "weight" / "static" leave the groups contiguous */
        c->quant_gidx = !strcmp(w.actorder, "group") || !strcmp(w.actorder, "dynamic");
        c->quant_format = w.bits == 4 ? MOE_FORMAT_INT4_GPTQ : MOE_FORMAT_INT8_GPTQ;
        c->quant_bits = (int32_t)w.bits;
        c->quant_group = (int32_t)w.group;
    } else if (!strcmp(w.type, "float") && w.bits == 4 && !strcmp(gfmt, "nvfp4-pack-quantized") &&
               !strcmp(w.strategy, "tensor_group") && w.symmetric && !w.dynamic) {
        if (w.group != 16)
            return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "%s with group_size %lld: NVFP4 "
                             "blocks are 16 weights", c->quant_name, (long long)w.group);
        /* NVFP4A16, or W4A4 with fp4 activations: libmoe runs NVFP4 as W4A16
         * (bf16 activations), as vLLM's Marlin path does on Hopper */
        if (in.present && (strcmp(in.type, "float") || in.bits != 4))
            return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "%s with %s%lld activations: "
                             "libmoe runs NVFP4 weights with bf16 activations (fp4 activations "
                             "are run unquantized)", c->quant_name, in.type, (long long)in.bits);
        c->quant_format = MOE_FORMAT_NVFP4;
        c->quant_nvfp4_ct = 1;
    } else {
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "%s (symmetric %s%s%s): libmoe loads "
                         "float-quantized fp8 channel/tensor with fp8 activations, "
                         "pack-quantized symmetric int4/int8 groups without activation "
                         "quantization and nvfp4-pack-quantized fp4 groups of 16", c->quant_name,
                         w.symmetric ? "true" : "false", in.present ? ", activations " : "",
                         in.present ? in.strategy : "");
    }
    c->quant = MOE__QUANT_SCALED;
    return scaled_family_ok(c, err, errlen);
}

/* quantization_config (or, for ModelOpt exports, hf_quant_config.json):
 * what the loader runs into m->cfg. GPTQ (symmetric 4/8-bit) and AWQ (4-bit
 * gemm with zero points), groups of 32/64/128, here; ModelOpt and
 * compressed-tensors in hf_modelopt / hf_ct; other methods are left to the
 * tensors (fp8 block, mxfp4) or to the binding, which fails on the names it
 * does not find. */
static moe_status hf_quant(moe_model *m, char *err, size_t errlen) {
    const moe__json *j = &m->config;
    moe__mcfg *c = &m->cfg;
    uint32_t q = moe__json_get(j, 0, "quantization_config");
    const char *qm = NULL;
    if (!q && m->has_hfq) /* a ModelOpt export with hf_quant_config.json alone */
        return hf_modelopt(m, &m->hfq, moe__json_get(&m->hfq, 0, "quantization"), err, errlen);
    if (!q || moe__json_get_str(j, q, "quant_method", &qm, NULL, 0) != MOE_OK) return MOE_OK;
    if (!strcmp(qm, "modelopt")) {
        /* quant_algo in quantization_config itself, or in hf_quant_config.json */
        if (!moe__json_get(j, q, "quant_algo") && m->has_hfq)
            return hf_modelopt(m, &m->hfq, moe__json_get(&m->hfq, 0, "quantization"), err,
                               errlen);
        uint32_t inner = moe__json_get(j, q, "quantization");
        return hf_modelopt(m, j, inner ? inner : q, err, errlen);
    }
    if (!strcmp(qm, "compressed-tensors")) return hf_ct(m, q, err, errlen);
    const int gptq = !strcmp(qm, "gptq"), awq = !strcmp(qm, "awq");
    if (!gptq && !awq) return MOE_OK;
    int64_t bits = 4, group = 128;
    int sym = 1, zero_point = 1;
    const char *version = "gemm";
    moe_status s;
    if ((s = moe__json_get_i64(j, q, "bits", 1, 64, &bits, err, errlen)) && s != MOE_ERR_MISSING)
        return s;
    if ((s = moe__json_get_i64(j, q, "group_size", -1, 1 << 20, &group, err, errlen)) &&
        s != MOE_ERR_MISSING)
        return s;
    if ((s = moe__json_get_bool(j, q, "sym", &sym, err, errlen)) && s != MOE_ERR_MISSING) return s;
    if ((s = moe__json_get_bool(j, q, "zero_point", &zero_point, err, errlen)) &&
        s != MOE_ERR_MISSING)
        return s;
    if ((s = moe__json_get_str(j, q, "version", &version, err, errlen)) && s != MOE_ERR_MISSING)
        return s;
    if (group != 32 && group != 64 && group != 128)
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED,
                         "%s checkpoint with group_size %lld: libmoe runs groups of 32, 64 and 128",
                         qm, (long long)group);
    if (gptq && ((bits != 4 && bits != 8) || !sym))
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED,
                         "GPTQ checkpoint with bits %lld, sym %s: libmoe runs symmetric 4- and "
                         "8-bit GPTQ", (long long)bits, sym ? "true" : "false");
    if (awq && (bits != 4 || !zero_point || strcasecmp(version, "gemm")))
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED,
                         "AWQ checkpoint with bits %lld, zero_point %s, version %.16s: libmoe runs "
                         "4-bit GEMM-layout AWQ with zero points", (long long)bits,
                         zero_point ? "true" : "false", version);
    if (c->family == MOE__FAM_GPT_OSS || c->family == MOE__FAM_LLAMA4)
        return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "%s checkpoints of %s are not "
                         "supported (fused expert tensors)", qm, moe__family_names[c->family]);
    c->quant = gptq ? MOE__QUANT_GPTQ : MOE__QUANT_AWQ;
    c->quant_bits = (int32_t)bits;
    c->quant_group = (int32_t)group;
    return MOE_OK;
}

moe_status moe__hf_config(moe_model *m, char *err, size_t errlen) {
    const moe__json *j = &m->config;
    moe__mcfg *c = &m->cfg;
    moe_status s;
    if (j->nodes[0].type != MOE__JSON_OBJECT)
        return moe__errf(err, errlen, MOE_ERR_CONFIG, "config.json is not a JSON object");
    m->cfg_root = 0;
    const char *mt = NULL;
    if ((s = moe__json_get_str(j, 0, "model_type", &mt, err, errlen))) {
        if (s == MOE_ERR_MISSING)
            return moe__errf(err, errlen, MOE_ERR_CONFIG, "config.json has no \"model_type\"");
        return s;
    }
    size_t fi = 0, nt = sizeof hf_types / sizeof hf_types[0];
    while (fi < nt && strcmp(hf_types[fi].model_type, mt)) fi++;
    if (fi == nt) return family_list(err, errlen, "model_type", mt);
    c->family = hf_types[fi].fam;
    m->prefix = "model.layers.";
    if (c->family == MOE__FAM_LLAMA4) {
        uint32_t tc = moe__json_get(j, 0, "text_config");
        if (tc) {
            if (j->nodes[tc].type != MOE__JSON_OBJECT)
                return moe__errf(err, errlen, MOE_ERR_CONFIG, "config: text_config is not an object");
            m->cfg_root = tc;
        }
        /* Llama4ForConditionalGeneration checkpoints prefix the text model. */
        for (int64_t i = 0; i < m->n_tensors; i++)
            if (!strncmp(m->tensors[i].name, "language_model.model.layers.", 28)) {
                m->prefix = "language_model.model.layers.";
                break;
            }
    }
    int64_t v;
    if ((s = get_int(m, "num_hidden_layers", 1, 0, 1, 100000, &v, err, errlen))) return s;
    c->n_layers = (int32_t)v;
    if ((s = get_int(m, "hidden_size", 1, 0, 1, 1 << 20, &c->d_model, err, errlen))) return s;
    c->is_moe = moe__calloc((size_t)c->n_layers, 1);
    if (!c->is_moe) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    c->activation = MOE_ACT_SILU;
    c->scoring = MOE_SCORING_SOFTMAX;
    c->routed_scaling_factor = 1.0f;
    const char *act;
    if ((s = get_str(m, "hidden_act", "silu", &act, err, errlen))) return s;
    if (c->family != MOE__FAM_GPT_OSS && strcmp(act, "silu"))
        return moe__errf(err, errlen, MOE_ERR_CONFIG, "config: hidden_act \"%.32s\" (only silu)", act);
    int norm, present;
    const char *E_key = "num_experts", *I_key = "moe_intermediate_size";
    switch (c->family) {
    case MOE__FAM_MIXTRAL: E_key = "num_local_experts"; I_key = "intermediate_size"; break;
    case MOE__FAM_OLMOE: I_key = "intermediate_size"; break;
    case MOE__FAM_DEEPSEEK_V2: case MOE__FAM_DEEPSEEK_V3: E_key = "n_routed_experts"; break;
    case MOE__FAM_GPT_OSS: case MOE__FAM_LLAMA4: E_key = "num_local_experts"; I_key = "intermediate_size"; break;
    default: break;
    }
    if ((s = get_int(m, E_key, 1, 0, 1, 65536, &v, err, errlen))) return s;
    c->n_experts = (int32_t)v;
    if ((s = get_int(m, I_key, 1, 0, 1, 1 << 22, &c->d_ff, err, errlen))) return s;
    const char *k_key = "num_experts_per_tok";
    if (c->family == MOE__FAM_GPT_OSS && !moe__json_get(j, m->cfg_root, k_key)) k_key = "experts_per_token";
    if ((s = get_int(m, k_key, c->family != MOE__FAM_LLAMA4, 1, 1, 65536, &v, err, errlen))) return s;
    c->top_k = (int32_t)v;
    if ((s = get_bool(m, "norm_topk_prob", 0, &norm, err, errlen))) return s;

    switch (c->family) {
    case MOE__FAM_MIXTRAL:
        c->renormalize = 1;
        memset(c->is_moe, 1, (size_t)c->n_layers);
        break;
    case MOE__FAM_QWEN2_MOE:
    case MOE__FAM_QWEN3_MOE: {
        int64_t step;
        c->renormalize = norm;
        if ((s = get_int(m, "decoder_sparse_step", 0, 1, 1, 100000, &step, err, errlen))) return s;
        for (int32_t l = 0; l < c->n_layers; l++) c->is_moe[l] = (l + 1) % step == 0;
        if ((s = layer_list(m, "mlp_only_layers", c->is_moe, 0, &present, err, errlen))) return s;
        if (c->family == MOE__FAM_QWEN2_MOE) {
            if ((s = get_int(m, "shared_expert_intermediate_size", 0, 0, 0, 1 << 24, &c->d_ff_shared,
                             err, errlen)))
                return s;
            c->n_shared = c->d_ff_shared > 0;
            c->shared_gate = c->n_shared;
        }
        break;
    }
    case MOE__FAM_OLMOE:
        c->renormalize = norm;
        memset(c->is_moe, 1, (size_t)c->n_layers);
        break;
    case MOE__FAM_DEEPSEEK_V2:
    case MOE__FAM_DEEPSEEK_V3: {
        int64_t first, freq, ng, tg, ns;
        double rsf;
        const char *sf, *tm;
        int v3 = c->family == MOE__FAM_DEEPSEEK_V3;
        if ((s = get_int(m, "first_k_dense_replace", 0, 0, 0, 100000, &first, err, errlen)) ||
            (s = get_int(m, "moe_layer_freq", 0, 1, 1, 100000, &freq, err, errlen)) ||
            (s = get_int_or_null(m, "n_group", 1, 1, 65536, &ng, err, errlen)) ||
            (s = get_int_or_null(m, "topk_group", 1, 1, 65536, &tg, err, errlen)) ||
            (s = get_int_or_null(m, "n_shared_experts", 0, 0, 1024, &ns, err, errlen)) ||
            (s = get_f64(m, "routed_scaling_factor", 1.0, &rsf, err, errlen)) ||
            (s = get_str(m, "scoring_func", v3 ? "sigmoid" : "softmax", &sf, err, errlen)) ||
            (s = get_str(m, "topk_method", v3 ? "noaux_tc" : "greedy", &tm, err, errlen)))
            return s;
        for (int32_t l = 0; l < c->n_layers; l++) c->is_moe[l] = l >= first && l % freq == 0;
        if (!strcmp(sf, "softmax")) c->scoring = MOE_SCORING_SOFTMAX;
        else if (!strcmp(sf, "sigmoid")) c->scoring = MOE_SCORING_SIGMOID;
        else return moe__errf(err, errlen, MOE_ERR_CONFIG, "config: scoring_func \"%.32s\"", sf);
        if (!strcmp(tm, "greedy")) { c->n_group = 0; c->topk_group = 0; }
        else if (!strcmp(tm, "group_limited_greedy") || !strcmp(tm, "noaux_tc")) {
            c->n_group = (int32_t)ng;
            c->topk_group = (int32_t)tg;
        } else return moe__errf(err, errlen, MOE_ERR_CONFIG, "config: topk_method \"%.32s\"", tm);
        /* DeepSeek-V2 scales only when it does not renormalize; V3 always. */
        if (!v3 && c->top_k > 1 && norm) { c->renormalize = 1; c->routed_scaling_factor = 1.0f; }
        else { c->renormalize = v3 ? norm : 0; c->routed_scaling_factor = (float)rsf; }
        c->n_shared = (int32_t)ns;
        c->d_ff_shared = ns * c->d_ff;
        /* fp8 checkpoints: DeepSeek's 128 x 128 blocks are the only kind supported */
        uint32_t q = moe__json_get(j, 0, "quantization_config");
        if (q) {
            const char *qm = NULL;
            if (moe__json_get_str(j, q, "quant_method", &qm, err, errlen) == MOE_OK && !strcmp(qm, "fp8")) {
                uint32_t bs = moe__json_get(j, q, "weight_block_size");
                int ok = bs && j->nodes[bs].type == MOE__JSON_ARRAY && j->nodes[bs].n_children == 2;
                for (uint32_t e = ok ? moe__json_child(j, bs) : 0; e; e = j->nodes[e].next)
                    ok = ok && (j->nodes[e].num_flags & MOE__JSON_I64) && j->nodes[e].i == 128;
                if (!ok)
                    return moe__errf(err, errlen, MOE_ERR_CONFIG,
                                     "config: fp8 quantization_config needs weight_block_size [128, 128]");
            }
        }
        break;
    }
    case MOE__FAM_GPT_OSS: {
        double lim;
        c->scoring = MOE_SCORING_SOFTMAX_TOPK;
        c->renormalize = 1;
        c->activation = MOE_ACT_SWIGLU_OAI;
        c->swiglu_alpha = 1.702f;
        if ((s = get_f64(m, "swiglu_limit", 7.0, &lim, err, errlen))) return s;
        if (!(lim > 0)) return moe__errf(err, errlen, MOE_ERR_CONFIG, "config: swiglu_limit %g", lim);
        c->swiglu_limit = (float)lim;
        memset(c->is_moe, 1, (size_t)c->n_layers);
        break;
    }
    case MOE__FAM_LLAMA4: {
        int64_t step;
        c->scoring = MOE_SCORING_LLAMA4;
        c->renormalize = 0;
        c->n_shared = 1;
        c->d_ff_shared = c->d_ff;
        if ((s = layer_list(m, "moe_layers", c->is_moe, 1, &present, err, errlen))) return s;
        if (!present) {
            if ((s = get_int(m, "interleave_moe_layer_step", 0, 1, 1, 100000, &step, err, errlen)))
                return s;
            for (int32_t l = 0; l < c->n_layers; l++) c->is_moe[l] = (l + 1) % step == 0;
        }
        break;
    }
    default: return moe__errf(err, errlen, MOE_ERR_INTERNAL, "family %d", (int)c->family);
    }
    return hf_quant(m, err, errlen);
}

/* ===== Binding ===== */

static const moe__mtensor *need(const moe_model *m, moe_status *s, char *err, size_t errlen,
                                const char *fmt, int layer, int e, const char *suffix) {
    char name[512];
    if (e >= 0) snprintf(name, sizeof name, fmt, m->prefix, layer, e, suffix);
    else snprintf(name, sizeof name, fmt, m->prefix, layer, suffix);
    const moe__mtensor *t = moe__model_find(m, name);
    if (!t && !*s) *s = moe__errf(err, errlen, MOE_ERR_MISSING, "tensor %s not found", name);
    return t;
}

static const moe__mtensor *maybe(const moe_model *m, const char *fmt, int layer, const char *suffix) {
    char name[512];
    snprintf(name, sizeof name, fmt, m->prefix, layer, suffix);
    return moe__model_find(m, name);
}

static int plain_float(moe__dtype d) {
    return d == MOE__DT_F32 || d == MOE__DT_BF16 || d == MOE__DT_F16;
}

static moe_status check_plain(const moe__mtensor *t, char *err, size_t errlen) {
    if (!t || plain_float(t->dtype)) return MOE_OK;
    return moe__errf(err, errlen, MOE_ERR_DTYPE, "tensor %s has dtype %s, expected F32, BF16 or F16",
                     t->name, moe__dtype_get(t->dtype)->name);
}

static moe_status same_dtype(const moe__mtensor *a, const moe__mtensor *b, char *err, size_t errlen) {
    if (a->dtype == b->dtype) return MOE_OK;
    return moe__errf(err, errlen, MOE_ERR_DTYPE, "tensors %s (%s) and %s (%s) must have one dtype",
                     a->name, moe__dtype_get(a->dtype)->name, b->name, moe__dtype_get(b->dtype)->name);
}

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* GPTQ / AWQ projection `proj` (N outputs, K inputs) of expert e (-1: the
 * shared MLP) under fmt: its tensors in the quantizer's layout, shapes and
 * types checked. */
static moe_status bind_qproj(const moe_model *m, const char *fmt, int32_t L, int e,
                             const char *proj, int64_t N, int64_t K, moe__qproj *p, char *err,
                             size_t errlen) {
    const moe__mcfg *c = &m->cfg;
    const int64_t g = c->quant_group, per = 32 / c->quant_bits;
    const int gptq = c->quant == MOE__QUANT_GPTQ;
    char sfx[4][64], name[512];
    static const char *const part[4] = { "qweight", "scales", "qzeros", "g_idx" };
    for (int i = 0; i < 4; i++) snprintf(sfx[i], sizeof sfx[i], "%s.%s", proj, part[i]);
    moe_status s = MOE_OK;
    p->q = need(m, &s, err, errlen, fmt, L, e, sfx[0]);
    p->s = need(m, &s, err, errlen, fmt, L, e, sfx[1]);
    p->z = need(m, &s, err, errlen, fmt, L, e, sfx[2]);
    if (s) return s;
    if (e >= 0) snprintf(name, sizeof name, fmt, m->prefix, L, e, sfx[3]);
    else snprintf(name, sizeof name, fmt, m->prefix, L, sfx[3]);
    p->g = gptq ? moe__model_find(m, name) : NULL;
    if (K % g || N % (gptq ? per : 8))
        return moe__errf(err, errlen, MOE_ERR_SHAPE, "tensor %s: %lld x %lld does not split into "
                         "groups of %lld and packed words", p->q->name, (long long)N,
                         (long long)K, (long long)g);
    if (gptq ? ((s = MOE__SHAPE(p->q, K / per, N)) || (s = MOE__SHAPE(p->z, K / g, N / per)) ||
                (p->g && (s = MOE__SHAPE(p->g, K))))
             : ((s = MOE__SHAPE(p->q, K, N / 8)) || (s = MOE__SHAPE(p->z, K / g, N / 8))))
        return s;
    if ((s = MOE__SHAPE(p->s, K / g, N))) return s;
    const moe__mtensor *ints[3] = { p->q, p->z, p->g };
    for (int i = 0; i < 3; i++)
        if (ints[i] && ints[i]->dtype != MOE__DT_I32)
            return moe__errf(err, errlen, MOE_ERR_DTYPE, "tensor %s: %s, expected I32",
                             ints[i]->name, moe__dtype_get(ints[i]->dtype)->name);
    if (p->s->dtype != MOE__DT_F16 && p->s->dtype != MOE__DT_BF16)
        return moe__errf(err, errlen, MOE_ERR_DTYPE, "tensor %s: %s, expected F16 or BF16",
                         p->s->name, moe__dtype_get(p->s->dtype)->name);
    return MOE_OK;
}

static moe_format quant_format(const moe__mcfg *c) {
    if (c->quant == MOE__QUANT_AWQ) return MOE_FORMAT_INT4_AWQ;
    return c->quant_bits == 8 ? MOE_FORMAT_INT8_GPTQ : MOE_FORMAT_INT4_GPTQ;
}

/* Per-expert GPTQ / AWQ gate/up/down under fmt. */
static moe_status bind_split_quant(const moe_model *m, int32_t L, const char *fmt,
                                   const char *const proj[3], moe__mlayer *b, char *err,
                                   size_t errlen) {
    const moe__mcfg *c = &m->cfg;
    const int32_t E = c->n_experts;
    const int64_t H = c->d_model, I = c->d_ff;
    moe_status s;
    b->layout = MOE__LAYOUT_SPLIT;
    b->qgate = moe__calloc((size_t)E, sizeof *b->qgate);
    b->qup = moe__calloc((size_t)E, sizeof *b->qup);
    b->qdown = moe__calloc((size_t)E, sizeof *b->qdown);
    b->gate = moe__calloc((size_t)E, sizeof *b->gate);
    b->up = moe__calloc((size_t)E, sizeof *b->up);
    b->down = moe__calloc((size_t)E, sizeof *b->down);
    if (!b->qgate || !b->qup || !b->qdown || !b->gate || !b->up || !b->down)
        return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    for (int32_t e = 0; e < E; e++) {
        if ((s = bind_qproj(m, fmt, L, e, proj[0], I, H, &b->qgate[e], err, errlen)) ||
            (s = bind_qproj(m, fmt, L, e, proj[1], I, H, &b->qup[e], err, errlen)) ||
            (s = bind_qproj(m, fmt, L, e, proj[2], H, I, &b->qdown[e], err, errlen)))
            return s;
        b->gate[e] = b->qgate[e].q;
        b->up[e] = b->qup[e].q;
        b->down[e] = b->qdown[e].q;
    }
    b->format = quant_format(c);
    return MOE_OK;
}

/* A one-element tensor: PyTorch scalars are stored with shape () or (1). */
static int is_scalar(const moe__mtensor *t) {
    return t->n_dims == 0 || (t->n_dims == 1 && t->shape[0] == 1);
}

/* A scalar scale tensor: plain float, one element, finite and > 0. */
static moe_status check_scalar_scale(const moe__mtensor *t, char *err, size_t errlen) {
    moe_status s;
    if ((s = check_plain(t, err, errlen))) return s;
    if (!is_scalar(t)) return MOE__SHAPE(t, 1);
    float v = moe__mtensor_f32(t, 0);
    if (!(isfinite(v) && v > 0))
        return moe__errf(err, errlen, MOE_ERR_SCALE, "tensor %s: scale %g is not finite and > 0",
                         t->name, (double)v);
    return MOE_OK;
}

static moe_status want_dtype(const moe__mtensor *t, moe__dtype dt, char *err, size_t errlen) {
    if (t->dtype == dt) return MOE_OK;
    return moe__errf(err, errlen, MOE_ERR_DTYPE, "tensor %s: %s, expected %s", t->name,
                     moe__dtype_get(t->dtype)->name, moe__dtype_get(dt)->name);
}

/* ModelOpt / compressed-tensors projection `proj` (N outputs, K inputs) of
 * expert e (-1: the shared MLP) under fmt, as m->cfg.quant_format stores it:
 *   NVFP4        weight U8 (N, K/2), weight_scale F8_E4M3 (N, K/16),
 *                weight_scale_2 scalar; input_scale (W4A4) is not read.
 *                compressed-tensors: weight_packed, weight_scale, and
 *                weight_global_scale, the reciprocal of weight_scale_2
 *                (w = e2m1 x block scale / weight_global_scale)
 *   FP8_TENSOR   weight F8_E4M3 (N, K), weight_scale scalar, input_scale
 *                scalar (static activations) or absent (dynamic)
 *   FP8_CHANNEL  weight F8_E4M3 (N, K), weight_scale (N, 1) or (N)
 *   INT*_GPTQ    weight_packed I32 (N, K*bits/32), weight_scale F16/BF16
 *                (N, K/g), weight_shape (2) = (N, K) when present,
 *                weight_g_idx I32 (K) with actorder group (its values are
 *                checked when the experts are created)
 * Scalar scales are checked here (finite, > 0); block and row scales when
 * the layer is built. */
static moe_status bind_sproj(const moe_model *m, const char *fmt, int32_t L, int e,
                             const char *proj, int64_t N, int64_t K, moe__sproj *p, char *err,
                             size_t errlen) {
    const moe__mcfg *c = &m->cfg;
    const moe_format f = c->quant_format;
    const int packed = f == MOE_FORMAT_INT4_GPTQ || f == MOE_FORMAT_INT8_GPTQ;
    char sfx[6][64], name[512];
    static const char *const part[6] = { "weight", "weight_scale", "weight_scale_2",
                                         "input_scale", "weight_shape", "weight_g_idx" };
    for (int i = 0; i < 6; i++) snprintf(sfx[i], sizeof sfx[i], "%s.%s", proj, part[i]);
    if (packed || c->quant_nvfp4_ct) snprintf(sfx[0], sizeof sfx[0], "%s.weight_packed", proj);
    if (c->quant_nvfp4_ct) snprintf(sfx[2], sizeof sfx[2], "%s.weight_global_scale", proj);
    moe_status s = MOE_OK;
    memset(p, 0, sizeof *p);
    p->w = need(m, &s, err, errlen, fmt, L, e, sfx[0]);
    p->s = need(m, &s, err, errlen, fmt, L, e, sfx[1]);
    if (f == MOE_FORMAT_NVFP4) p->s2 = need(m, &s, err, errlen, fmt, L, e, sfx[2]);
    if (f == MOE_FORMAT_FP8_TENSOR && c->quant_static_in)
        p->in = need(m, &s, err, errlen, fmt, L, e, sfx[3]);
    if (packed && c->quant_gidx) p->g = need(m, &s, err, errlen, fmt, L, e, sfx[5]);
    if (s) return s;
    switch (f) {
    case MOE_FORMAT_NVFP4:
        if (K % 16)
            return moe__errf(err, errlen, MOE_ERR_SHAPE, "tensor %s: %lld inputs, not a multiple "
                             "of NVFP4's blocks of 16", p->w->name, (long long)K);
        if ((s = want_dtype(p->w, MOE__DT_U8, err, errlen)) ||
            (s = want_dtype(p->s, MOE__DT_F8_E4M3, err, errlen)) ||
            (s = MOE__SHAPE(p->w, N, K / 2)) || (s = MOE__SHAPE(p->s, N, K / 16)) ||
            (s = check_scalar_scale(p->s2, err, errlen)))
            return s;
        /* compressed-tensors stores the reciprocal (its weight_global_scale) */
        const float s2 = moe__mtensor_f32(p->s2, 0);
        p->gscale = c->quant_nvfp4_ct ? 1.0f / s2 : s2;
        if (!isfinite(p->gscale))
            return moe__errf(err, errlen, MOE_ERR_SCALE, "tensor %s: global scale %g has no "
                             "finite reciprocal", p->s2->name, (double)s2);
        break;
    case MOE_FORMAT_FP8_TENSOR:
    case MOE_FORMAT_FP8_CHANNEL:
        if ((s = want_dtype(p->w, MOE__DT_F8_E4M3, err, errlen)) || (s = MOE__SHAPE(p->w, N, K)))
            return s;
        if (f == MOE_FORMAT_FP8_TENSOR) {
            if ((s = check_scalar_scale(p->s, err, errlen)) ||
                (p->in && (s = check_scalar_scale(p->in, err, errlen))))
                return s;
        } else if ((s = check_plain(p->s, err, errlen)) ||
                   (s = p->s->n_dims == 2 ? MOE__SHAPE(p->s, N, 1) : MOE__SHAPE(p->s, N))) {
            return s;
        }
        break;
    case MOE_FORMAT_INT4_GPTQ:
    case MOE_FORMAT_INT8_GPTQ: {
        const int64_t g = c->quant_group, per = 32 / c->quant_bits;
        if (K % g)
            return moe__errf(err, errlen, MOE_ERR_SHAPE, "tensor %s: %lld inputs, not a multiple "
                             "of the group size %lld", p->w->name, (long long)K, (long long)g);
        if ((s = want_dtype(p->w, MOE__DT_I32, err, errlen)) ||
            (s = MOE__SHAPE(p->w, N, K / per)) || (s = MOE__SHAPE(p->s, N, K / g)))
            return s;
        if (p->s->dtype != MOE__DT_F16 && p->s->dtype != MOE__DT_BF16)
            return moe__errf(err, errlen, MOE_ERR_DTYPE, "tensor %s: %s, expected F16 or BF16",
                             p->s->name, moe__dtype_get(p->s->dtype)->name);
        if (p->g && ((s = want_dtype(p->g, MOE__DT_I32, err, errlen)) ||
                     (s = MOE__SHAPE(p->g, K))))
            return s;
        if (e >= 0) snprintf(name, sizeof name, fmt, m->prefix, L, e, sfx[4]);
        else snprintf(name, sizeof name, fmt, m->prefix, L, sfx[4]);
        const moe__mtensor *ws = moe__model_find(m, name);
        if (ws) {
            int64_t v[2] = { 0, 0 };
            if ((ws->dtype != MOE__DT_I32 && ws->dtype != MOE__DT_I64) || (s = MOE__SHAPE(ws, 2)))
                return s ? s : moe__errf(err, errlen, MOE_ERR_DTYPE, "tensor %s: %s, expected I32 "
                                         "or I64", ws->name, moe__dtype_get(ws->dtype)->name);
            for (int i = 0; i < 2; i++) {
                if (ws->dtype == MOE__DT_I64) {
                    memcpy(&v[i], ws->data + 8 * i, 8);
                } else {
                    int32_t x;
                    memcpy(&x, ws->data + 4 * i, 4);
                    v[i] = x;
                }
            }
            if (v[0] != N || v[1] != K)
                return moe__errf(err, errlen, MOE_ERR_SHAPE, "tensor %s says (%lld, %lld), "
                                 "expected (%lld, %lld)", ws->name, (long long)v[0],
                                 (long long)v[1], (long long)N, (long long)K);
        }
        break;
    }
    default:
        return moe__errf(err, errlen, MOE_ERR_INTERNAL, "quant format %d", (int)f);
    }
    return MOE_OK;
}

/* 1 when projection `proj` of expert e (-1: shared) is stored unquantized:
 * a module the checkpoint excluded from quantization (e.g. shared experts
 * kept in bf16) has a plain `weight` and no weight_packed. */
static int plain_proj(const moe_model *m, const char *fmt, int32_t L, int e, const char *proj) {
    char sfx[64], name[512];
    snprintf(sfx, sizeof sfx, "%s.weight", proj);
    if (e >= 0) snprintf(name, sizeof name, fmt, m->prefix, L, e, sfx);
    else snprintf(name, sizeof name, fmt, m->prefix, L, sfx);
    const moe__mtensor *t = moe__model_find(m, name);
    return t && plain_float(t->dtype);
}

/* NVFP4 runs W13 with one global scale per expert: gate and up must agree. */
static moe_status same_scale2(const moe__sproj *g, const moe__sproj *u, const char *who, int e,
                              char *err, size_t errlen) {
    float a = moe__mtensor_f32(g->s2, 0), b = moe__mtensor_f32(u->s2, 0);
    if (a == b) return MOE_OK;
    char which[32] = "the shared expert";
    if (e >= 0) snprintf(which, sizeof which, "expert %d", e);
    return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "%s %s: gate and up have different NVFP4 "
                     "global scales (%s = %.9g, %s = %.9g); libmoe fuses them into one W13 "
                     "with one global scale", who, which, g->s2->name, (double)a, u->s2->name,
                     (double)b);
}

/* Per-expert ModelOpt / compressed-tensors gate/up/down under fmt. */
static moe_status bind_split_scaled(const moe_model *m, int32_t L, const char *fmt,
                                    const char *const proj[3], moe__mlayer *b, char *err,
                                    size_t errlen) {
    const moe__mcfg *c = &m->cfg;
    const int32_t E = c->n_experts;
    const int64_t H = c->d_model, I = c->d_ff;
    char who[32];
    moe_status s;
    snprintf(who, sizeof who, "layer %d", L);
    b->layout = MOE__LAYOUT_SPLIT;
    b->sgate = moe__calloc((size_t)E, sizeof *b->sgate);
    b->sup = moe__calloc((size_t)E, sizeof *b->sup);
    b->sdown = moe__calloc((size_t)E, sizeof *b->sdown);
    b->gate = moe__calloc((size_t)E, sizeof *b->gate);
    b->up = moe__calloc((size_t)E, sizeof *b->up);
    b->down = moe__calloc((size_t)E, sizeof *b->down);
    if (!b->sgate || !b->sup || !b->sdown || !b->gate || !b->up || !b->down)
        return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    for (int32_t e = 0; e < E; e++) {
        if ((s = bind_sproj(m, fmt, L, e, proj[0], I, H, &b->sgate[e], err, errlen)) ||
            (s = bind_sproj(m, fmt, L, e, proj[1], I, H, &b->sup[e], err, errlen)) ||
            (s = bind_sproj(m, fmt, L, e, proj[2], H, I, &b->sdown[e], err, errlen)))
            return s;
        if (c->quant_format == MOE_FORMAT_NVFP4 &&
            (s = same_scale2(&b->sgate[e], &b->sup[e], who, e, err, errlen)))
            return s;
        b->gate[e] = b->sgate[e].w;
        b->up[e] = b->sup[e].w;
        b->down[e] = b->sdown[e].w;
    }
    b->format = c->quant_format;
    return MOE_OK;
}

/* Shared MLP of a ModelOpt / compressed-tensors checkpoint under fmt. */
static moe_status bind_shared_scaled(const moe_model *m, int32_t L, const char *fmt,
                                     moe__mlayer *b, char *err, size_t errlen) {
    const moe__mcfg *c = &m->cfg;
    const int64_t H = c->d_model, S = c->d_ff_shared;
    static const char *const gud[3] = { "gate_proj", "up_proj", "down_proj" };
    char who[32];
    moe_status s;
    snprintf(who, sizeof who, "layer %d", L);
    for (int p = 0; p < 3; p++)
        if ((s = bind_sproj(m, fmt, L, -1, gud[p], p < 2 ? S : H, p < 2 ? H : S, &b->sh_s[p],
                            err, errlen)))
            return s;
    if (c->quant_format == MOE_FORMAT_NVFP4 &&
        (s = same_scale2(&b->sh_s[0], &b->sh_s[1], who, -1, err, errlen)))
        return s;
    b->sh_gate = b->sh_s[0].w;
    b->sh_up = b->sh_s[1].w;
    b->sh_down = b->sh_s[2].w;
    b->sh_format = c->quant_format;
    return MOE_OK;
}

/* Per-expert gate/up/down (and fp8 scales) under base "...experts.%d." */
static moe_status bind_split(const moe_model *m, int32_t L, const char *fmt, const char *const proj[3],
                             moe__mlayer *b, char *err, size_t errlen) {
    const moe__mcfg *c = &m->cfg;
    int32_t E = c->n_experts;
    int64_t H = c->d_model, I = c->d_ff;
    moe_status s = MOE_OK;
    if (c->quant == MOE__QUANT_GPTQ || c->quant == MOE__QUANT_AWQ)
        return bind_split_quant(m, L, fmt, proj, b, err, errlen);
    if (c->quant == MOE__QUANT_SCALED && !plain_proj(m, fmt, L, 0, proj[0]))
        return bind_split_scaled(m, L, fmt, proj, b, err, errlen);
    b->layout = MOE__LAYOUT_SPLIT;
    b->gate = moe__calloc((size_t)E, sizeof *b->gate);
    b->up = moe__calloc((size_t)E, sizeof *b->up);
    b->down = moe__calloc((size_t)E, sizeof *b->down);
    if (!b->gate || !b->up || !b->down) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    char sfx[3][64], ssfx[3][64];
    for (int p = 0; p < 3; p++) {
        snprintf(sfx[p], sizeof sfx[p], "%s.weight", proj[p]);
        snprintf(ssfx[p], sizeof ssfx[p], "%s.weight_scale_inv", proj[p]);
    }
    for (int32_t e = 0; e < E && !s; e++) {
        b->gate[e] = need(m, &s, err, errlen, fmt, L, e, sfx[0]);
        b->up[e] = need(m, &s, err, errlen, fmt, L, e, sfx[1]);
        b->down[e] = need(m, &s, err, errlen, fmt, L, e, sfx[2]);
        if (s) return s;
        if ((s = MOE__SHAPE(b->gate[e], I, H)) || (s = MOE__SHAPE(b->up[e], I, H)) ||
            (s = MOE__SHAPE(b->down[e], H, I)) || (s = same_dtype(b->gate[0], b->gate[e], err, errlen)) ||
            (s = same_dtype(b->gate[e], b->up[e], err, errlen)) ||
            (s = same_dtype(b->gate[e], b->down[e], err, errlen)))
            return s;
    }
    if (b->gate[0]->dtype == MOE__DT_F8_E4M3) {
        b->gate_s = moe__calloc((size_t)E, sizeof *b->gate_s);
        b->up_s = moe__calloc((size_t)E, sizeof *b->up_s);
        b->down_s = moe__calloc((size_t)E, sizeof *b->down_s);
        if (!b->gate_s || !b->up_s || !b->down_s) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
        for (int32_t e = 0; e < E && !s; e++) {
            b->gate_s[e] = need(m, &s, err, errlen, fmt, L, e, ssfx[0]);
            b->up_s[e] = need(m, &s, err, errlen, fmt, L, e, ssfx[1]);
            b->down_s[e] = need(m, &s, err, errlen, fmt, L, e, ssfx[2]);
            if (s) return s;
            if ((s = MOE__SHAPE(b->gate_s[e], cdiv(I, 128), cdiv(H, 128))) ||
                (s = MOE__SHAPE(b->up_s[e], cdiv(I, 128), cdiv(H, 128))) ||
                (s = MOE__SHAPE(b->down_s[e], cdiv(H, 128), cdiv(I, 128))))
                return s;
            const moe__mtensor *sc[3] = { b->gate_s[e], b->up_s[e], b->down_s[e] };
            for (int p = 0; p < 3; p++)
                if (sc[p]->dtype != MOE__DT_F32)
                    return moe__errf(err, errlen, MOE_ERR_DTYPE, "tensor %s: scales must be F32",
                                     sc[p]->name);
        }
        if (I % 128)
            return moe__errf(err, errlen, MOE_ERR_SHAPE, "fp8 block experts need the expert size "
                             "(%lld) to be a multiple of 128", (long long)I);
    }
    b->format = moe__format_of(b->gate[0]->dtype, b->gate_s != NULL, 0);
    return MOE_OK;
}

/* Shared MLP under fmt ("%s%d.mlp.shared_expert.%s"). */
static moe_status bind_shared(const moe_model *m, int32_t L, const char *fmt, moe__mlayer *b, char *err,
                              size_t errlen) {
    const moe__mcfg *c = &m->cfg;
    int64_t H = c->d_model, S = c->d_ff_shared;
    moe_status s = MOE_OK;
    if (c->quant == MOE__QUANT_SCALED && !plain_proj(m, fmt, L, -1, "gate_proj"))
        return bind_shared_scaled(m, L, fmt, b, err, errlen);
    if (c->quant == MOE__QUANT_GPTQ || c->quant == MOE__QUANT_AWQ) {
        static const char *const gud[3] = { "gate_proj", "up_proj", "down_proj" };
        for (int p = 0; p < 3; p++)
            if ((s = bind_qproj(m, fmt, L, -1, gud[p], p < 2 ? S : H, p < 2 ? H : S, &b->sh_q[p],
                                err, errlen)))
                return s;
        b->sh_gate = b->sh_q[0].q;
        b->sh_up = b->sh_q[1].q;
        b->sh_down = b->sh_q[2].q;
        b->sh_format = quant_format(c);
        return MOE_OK;
    }
    b->sh_gate = need(m, &s, err, errlen, fmt, L, -1, "gate_proj.weight");
    b->sh_up = need(m, &s, err, errlen, fmt, L, -1, "up_proj.weight");
    b->sh_down = need(m, &s, err, errlen, fmt, L, -1, "down_proj.weight");
    if (s) return s;
    if ((s = MOE__SHAPE(b->sh_gate, S, H)) || (s = MOE__SHAPE(b->sh_up, S, H)) ||
        (s = MOE__SHAPE(b->sh_down, H, S)) || (s = same_dtype(b->sh_gate, b->sh_up, err, errlen)) ||
        (s = same_dtype(b->sh_gate, b->sh_down, err, errlen)))
        return s;
    if (b->sh_gate->dtype == MOE__DT_F8_E4M3) {
        b->sh_gate_s = need(m, &s, err, errlen, fmt, L, -1, "gate_proj.weight_scale_inv");
        b->sh_up_s = need(m, &s, err, errlen, fmt, L, -1, "up_proj.weight_scale_inv");
        b->sh_down_s = need(m, &s, err, errlen, fmt, L, -1, "down_proj.weight_scale_inv");
        if (s) return s;
        if ((s = MOE__SHAPE(b->sh_gate_s, cdiv(S, 128), cdiv(H, 128))) ||
            (s = MOE__SHAPE(b->sh_up_s, cdiv(S, 128), cdiv(H, 128))) ||
            (s = MOE__SHAPE(b->sh_down_s, cdiv(H, 128), cdiv(S, 128))))
            return s;
        if (S % 128)
            return moe__errf(err, errlen, MOE_ERR_SHAPE, "fp8 block shared experts need their size "
                             "(%lld) to be a multiple of 128", (long long)S);
    }
    b->sh_format = moe__format_of(b->sh_gate->dtype, b->sh_gate_s != NULL, 0);
    return MOE_OK;
}

moe_status moe__hf_bind(const moe_model *m, int32_t L, moe__mlayer *b, char *err, size_t errlen) {
    const moe__mcfg *c = &m->cfg;
    int32_t E = c->n_experts;
    int64_t H = c->d_model, I = c->d_ff;
    moe_status s = MOE_OK;
    static const char *const gud[3] = { "gate_proj", "up_proj", "down_proj" };
    static const char *const mix[3] = { "w1", "w3", "w2" };
    switch (c->family) {
    case MOE__FAM_MIXTRAL:
        b->router_w = need(m, &s, err, errlen, "%s%d.block_sparse_moe.gate.%s", L, -1, "weight");
        if (s || (s = bind_split(m, L, "%s%d.block_sparse_moe.experts.%d.%s", mix, b, err, errlen)))
            return s;
        break;
    case MOE__FAM_QWEN2_MOE: case MOE__FAM_QWEN3_MOE: case MOE__FAM_OLMOE:
    case MOE__FAM_DEEPSEEK_V2: case MOE__FAM_DEEPSEEK_V3:
        b->router_w = need(m, &s, err, errlen, "%s%d.mlp.gate.%s", L, -1, "weight");
        if (s || (s = bind_split(m, L, "%s%d.mlp.experts.%d.%s", gud, b, err, errlen))) return s;
        if (c->family == MOE__FAM_QWEN2_MOE && c->n_shared) {
            if ((s = bind_shared(m, L, "%s%d.mlp.shared_expert.%s", b, err, errlen))) return s;
            b->sh_gate_w = need(m, &s, err, errlen, "%s%d.mlp.%s", L, -1, "shared_expert_gate.weight");
            if (s || (s = MOE__SHAPE(b->sh_gate_w, 1, H)) || (s = check_plain(b->sh_gate_w, err, errlen)))
                return s;
        }
        if ((c->family == MOE__FAM_DEEPSEEK_V2 || c->family == MOE__FAM_DEEPSEEK_V3) && c->n_shared)
            if ((s = bind_shared(m, L, "%s%d.mlp.shared_experts.%s", b, err, errlen))) return s;
        b->corr_b = maybe(m, "%s%d.mlp.gate.%s", L, "e_score_correction_bias");
        if (b->corr_b && ((s = MOE__SHAPE(b->corr_b, E)) || (s = check_plain(b->corr_b, err, errlen))))
            return s;
        break;
    case MOE__FAM_GPT_OSS: {
        b->router_w = need(m, &s, err, errlen, "%s%d.mlp.router.%s", L, -1, "weight");
        b->router_b = need(m, &s, err, errlen, "%s%d.mlp.router.%s", L, -1, "bias");
        if (s || (s = MOE__SHAPE(b->router_b, E)) || (s = check_plain(b->router_b, err, errlen))) return s;
        const moe__mtensor *blk = maybe(m, "%s%d.mlp.experts.%s", L, "gate_up_proj_blocks");
        if (blk) { /* MXFP4: already (E, rows, K) */
            if (H % 32 || I % 32)
                return moe__errf(err, errlen, MOE_ERR_SHAPE, "MXFP4 needs hidden (%lld) and expert "
                                 "(%lld) sizes that are multiples of 32", (long long)H, (long long)I);
            b->layout = MOE__LAYOUT_FUSED;
            b->w13 = blk;
            b->w13_s = need(m, &s, err, errlen, "%s%d.mlp.experts.%s", L, -1, "gate_up_proj_scales");
            b->w2 = need(m, &s, err, errlen, "%s%d.mlp.experts.%s", L, -1, "down_proj_blocks");
            b->w2_s = need(m, &s, err, errlen, "%s%d.mlp.experts.%s", L, -1, "down_proj_scales");
            if (s || (s = MOE__SHAPE(b->w13, E, 2 * I, H / 32, 16)) ||
                (s = MOE__SHAPE(b->w13_s, E, 2 * I, H / 32)) || (s = MOE__SHAPE(b->w2, E, H, I / 32, 16)) ||
                (s = MOE__SHAPE(b->w2_s, E, H, I / 32)))
                return s;
            const moe__mtensor *u8[4] = { b->w13, b->w13_s, b->w2, b->w2_s };
            for (int i = 0; i < 4; i++)
                if (u8[i]->dtype != MOE__DT_U8)
                    return moe__errf(err, errlen, MOE_ERR_DTYPE, "tensor %s must be U8", u8[i]->name);
            b->format = MOE_FORMAT_MXFP4;
        } else {
            b->layout = MOE__LAYOUT_TRANSPOSED;
            b->w13 = need(m, &s, err, errlen, "%s%d.mlp.experts.%s", L, -1, "gate_up_proj");
            b->w2 = need(m, &s, err, errlen, "%s%d.mlp.experts.%s", L, -1, "down_proj");
            if (s || (s = MOE__SHAPE(b->w13, E, H, 2 * I)) || (s = MOE__SHAPE(b->w2, E, I, H)) ||
                (s = same_dtype(b->w13, b->w2, err, errlen)) || (s = check_plain(b->w13, err, errlen)))
                return s;
            b->format = moe__format_of(b->w13->dtype, 0, 0);
        }
        b->b13 = need(m, &s, err, errlen, "%s%d.mlp.experts.%s", L, -1, "gate_up_proj_bias");
        b->b2 = need(m, &s, err, errlen, "%s%d.mlp.experts.%s", L, -1, "down_proj_bias");
        if (s || (s = MOE__SHAPE(b->b13, E, 2 * I)) || (s = MOE__SHAPE(b->b2, E, H)) ||
            (s = check_plain(b->b13, err, errlen)) || (s = check_plain(b->b2, err, errlen)))
            return s;
        break;
    }
    case MOE__FAM_LLAMA4:
        b->router_w = need(m, &s, err, errlen, "%s%d.feed_forward.router.%s", L, -1, "weight");
        b->layout = MOE__LAYOUT_TRANSPOSED;
        b->w13 = need(m, &s, err, errlen, "%s%d.feed_forward.experts.%s", L, -1, "gate_up_proj");
        b->w2 = need(m, &s, err, errlen, "%s%d.feed_forward.experts.%s", L, -1, "down_proj");
        if (s || (s = MOE__SHAPE(b->w13, E, H, 2 * I)) || (s = MOE__SHAPE(b->w2, E, I, H)) ||
            (s = same_dtype(b->w13, b->w2, err, errlen)) || (s = check_plain(b->w13, err, errlen)))
            return s;
        b->format = moe__format_of(b->w13->dtype, 0, 0);
        if ((s = bind_shared(m, L, "%s%d.feed_forward.shared_expert.%s", b, err, errlen))) return s;
        break;
    default: return moe__errf(err, errlen, MOE_ERR_INTERNAL, "family %d", (int)c->family);
    }
    if ((s = MOE__SHAPE(b->router_w, E, H)) || (s = check_plain(b->router_w, err, errlen))) return s;
    /* HF checkpoints keep one type per MLP (checked above). */
    b->format2    = b->format;
    b->sh_format2 = b->sh_format;
    return MOE_OK;
}
