/*
 * family-gguf.c - GGUF files: the MoE metadata keys and blk.N.* tensor
 * names of llama.cpp's architectures (src/llama-arch.cpp), with the routing
 * each architecture's graph applies (src/models/, one file per architecture).
 *
 *   arch        family        routing (llama.cpp)
 *   llama       mixtral       softmax, renormalized (needs expert_count > 0)
 *   qwen2moe    qwen2_moe     softmax, not renormalized; shexp + ffn_gate_inp_shexp
 *   qwen3moe    qwen3_moe     softmax, renormalized
 *   olmoe       olmoe         softmax, not renormalized
 *   deepseek2   deepseek_v2/3 expert_gating_func (1 softmax, 2 sigmoid; default softmax),
 *                             expert_weights_norm, expert_weights_scale, exp_probs_b,
 *                             expert_group_count / expert_group_used_count, shexp
 *   gpt-oss     gpt_oss       softmax over the top-k logits, router and expert biases,
 *                             swiglu-oai (limit 7), ffn_gate_exps / ffn_up_exps separate
 *   llama4      llama4        top-1 sigmoid on the input; shexp
 *
 * Shapes below are PyTorch order (GGUF ne reversed):
 *   ffn_gate_inp.weight (E, H), ffn_{gate,up}_exps.weight (E, I, H),
 *   ffn_gate_up_exps.weight (E, 2I, H), ffn_down_exps.weight (E, H, I),
 *   ffn_{gate,up}_shexp.weight (S, H), ffn_down_shexp.weight (H, S),
 *   ffn_gate_inp_shexp.weight (H), exp_probs_b.bias (E).
 * A layer is MoE when blk.L.ffn_gate_inp.weight exists.
 */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const struct { const char *arch; moe__family fam; } archs[] = {
    { "llama", MOE__FAM_MIXTRAL },     { "qwen2moe", MOE__FAM_QWEN2_MOE }, { "qwen3moe", MOE__FAM_QWEN3_MOE },
    { "olmoe", MOE__FAM_OLMOE },       { "deepseek2", MOE__FAM_DEEPSEEK_V3 },
    { "gpt-oss", MOE__FAM_GPT_OSS },   { "llama4", MOE__FAM_LLAMA4 },
};

static moe_status key_int(const moe_model *m, const char *suffix, int required, int64_t def, int64_t lo,
                          int64_t hi, int64_t *v, char *err, size_t errlen) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", m->arch, suffix);
    moe_status s = moe__gguf_get_i64(&m->gguf, key, v, err, errlen);
    if (s == MOE_ERR_MISSING) {
        if (required) return moe__errf(err, errlen, MOE_ERR_CONFIG, "GGUF: no %s", key);
        *v = def;
        return MOE_OK;
    }
    if (!s && (*v < lo || *v > hi))
        return moe__errf(err, errlen, MOE_ERR_CONFIG, "GGUF: %s = %lld is outside [%lld, %lld]", key,
                         (long long)*v, (long long)lo, (long long)hi);
    return s;
}

static const moe__mtensor *blk(const moe_model *m, int32_t L, const char *name) {
    return moe__model_findf(m, "blk.%d.%s", L, name);
}

moe_status moe__gguf_config(moe_model *m, char *err, size_t errlen) {
    moe__mcfg *c = &m->cfg;
    moe_status s = moe__gguf_get_str(&m->gguf, "general.architecture", m->arch, sizeof m->arch, err, errlen);
    if (s == MOE_ERR_MISSING) return moe__errf(err, errlen, MOE_ERR_CONFIG, "GGUF: no general.architecture");
    if (s) return s;
    size_t ai = 0, na = sizeof archs / sizeof archs[0];
    while (ai < na && strcmp(archs[ai].arch, m->arch)) ai++;
    if (ai == na) {
        char list[200] = "";
        size_t o = 0;
        for (size_t i = 0; i < na; i++)
            o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", i ? ", " : "", archs[i].arch);
        return moe__errf(err, errlen, MOE_ERR_UNKNOWN_FAMILY, "GGUF architecture \"%s\" is not a "
                         "supported MoE family; supported: %s", m->arch, list);
    }
    c->family = archs[ai].fam;
    int64_t v;
    if ((s = key_int(m, "block_count", 1, 0, 1, 100000, &v, err, errlen))) return s;
    c->n_layers = (int32_t)v;
    if ((s = key_int(m, "embedding_length", 1, 0, 1, 1 << 20, &c->d_model, err, errlen))) return s;
    if ((s = key_int(m, "expert_count", 0, 0, 0, 65536, &v, err, errlen))) return s;
    if (v == 0)
        return moe__errf(err, errlen, MOE_ERR_UNKNOWN_FAMILY, "GGUF: architecture %s without "
                         "%s.expert_count is not a MoE model", m->arch, m->arch);
    c->n_experts = (int32_t)v;
    if ((s = key_int(m, "expert_used_count", 1, 0, 1, 65536, &v, err, errlen))) return s;
    c->top_k = (int32_t)v;
    if ((s = key_int(m, "expert_feed_forward_length", 0, 0, 1, 1 << 22, &c->d_ff, err, errlen))) return s;
    if (c->d_ff == 0 && (s = key_int(m, "feed_forward_length", 1, 0, 1, 1 << 22, &c->d_ff, err, errlen)))
        return s;
    c->is_moe = moe__calloc((size_t)c->n_layers, 1);
    if (!c->is_moe) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    int32_t first = -1;
    for (int32_t l = 0; l < c->n_layers; l++) {
        c->is_moe[l] = blk(m, l, "ffn_gate_inp.weight") != NULL;
        if (c->is_moe[l] && first < 0) first = l;
    }
    c->activation = MOE_ACT_SILU;
    c->scoring = MOE_SCORING_SOFTMAX;
    c->routed_scaling_factor = 1.0f;
    /* shared experts: size from the first MoE layer's tensor, checked against keys */
    const moe__mtensor *shu = first >= 0 ? blk(m, first, "ffn_up_shexp.weight") : NULL;
    int64_t n_shared;
    if ((s = key_int(m, "expert_shared_count", 0, shu ? 1 : 0, 0, 1024, &n_shared, err, errlen))) return s;
    if (shu) {
        if (shu->n_dims != 2)
            return moe__errf(err, errlen, MOE_ERR_SHAPE, "%s must be 2-D", shu->name);
        c->d_ff_shared = shu->shape[0];
        c->n_shared = n_shared ? (int32_t)n_shared : 1;
    }
    switch (c->family) {
    case MOE__FAM_MIXTRAL: case MOE__FAM_QWEN3_MOE: c->renormalize = 1; break;
    case MOE__FAM_QWEN2_MOE: {
        int64_t sff;
        c->renormalize = 0;
        c->shared_gate = shu != NULL;
        if ((s = key_int(m, "expert_shared_feed_forward_length", 0, c->d_ff_shared, 1, 1 << 24, &sff,
                         err, errlen)))
            return s;
        if (shu && sff != c->d_ff_shared)
            return moe__errf(err, errlen, MOE_ERR_SHAPE, "GGUF: shared expert size %lld, metadata says %lld",
                             (long long)c->d_ff_shared, (long long)sff);
        break;
    }
    case MOE__FAM_OLMOE: c->renormalize = 0; break;
    case MOE__FAM_DEEPSEEK_V3: {
        int64_t gf, ng, tg;
        double scale = 1.0;
        int norm = 0;
        if ((s = key_int(m, "expert_gating_func", 0, 1, 1, 2, &gf, err, errlen)) ||
            (s = key_int(m, "expert_group_count", 0, 0, 0, 65536, &ng, err, errlen)) ||
            (s = key_int(m, "expert_group_used_count", 0, 0, 0, 65536, &tg, err, errlen)))
            return s;
        char key[128];
        snprintf(key, sizeof key, "%s.expert_weights_scale", m->arch);
        s = moe__gguf_get_f64(&m->gguf, key, &scale, err, errlen);
        if (s && s != MOE_ERR_MISSING) return s;
        if (!isfinite(scale) || scale <= 0)
            return moe__errf(err, errlen, MOE_ERR_CONFIG, "GGUF: %s = %g", key, scale);
        snprintf(key, sizeof key, "%s.expert_weights_norm", m->arch);
        s = moe__gguf_get_bool(&m->gguf, key, &norm, err, errlen);
        if (s && s != MOE_ERR_MISSING) return s;
        c->scoring = gf == 2 ? MOE_SCORING_SIGMOID : MOE_SCORING_SOFTMAX;
        if (gf != 2) c->family = MOE__FAM_DEEPSEEK_V2;
        c->renormalize = norm;
        c->routed_scaling_factor = (float)scale;
        c->n_group = ng > 1 ? (int32_t)ng : 0;
        c->topk_group = ng > 1 ? (int32_t)tg : 0;
        if (shu && c->d_ff_shared != c->n_shared * c->d_ff)
            return moe__errf(err, errlen, MOE_ERR_SHAPE, "GGUF: shared expert size %lld is not "
                             "%d x %lld", (long long)c->d_ff_shared, c->n_shared, (long long)c->d_ff);
        break;
    }
    case MOE__FAM_GPT_OSS:
        c->scoring = MOE_SCORING_SOFTMAX_TOPK;
        c->renormalize = 1;
        c->activation = MOE_ACT_SWIGLU_OAI;
        c->swiglu_alpha = 1.702f;
        c->swiglu_limit = 7.0f;
        break;
    case MOE__FAM_LLAMA4: c->scoring = MOE_SCORING_LLAMA4; c->renormalize = 0; break;
    default: return moe__errf(err, errlen, MOE_ERR_INTERNAL, "family %d", (int)c->family);
    }
    return MOE_OK;
}

static const moe__mtensor *need(const moe_model *m, int32_t L, const char *name, moe_status *s,
                                char *err, size_t errlen) {
    const moe__mtensor *t = blk(m, L, name);
    if (!t && !*s) *s = moe__errf(err, errlen, MOE_ERR_MISSING, "tensor blk.%d.%s not found", L, name);
    return t;
}

static int plain_float(moe__dtype d) { return d == MOE__DT_F32 || d == MOE__DT_BF16 || d == MOE__DT_F16; }

static moe_status check_plain(const moe__mtensor *t, char *err, size_t errlen) {
    if (!t || plain_float(t->dtype)) return MOE_OK;
    return moe__errf(err, errlen, MOE_ERR_DTYPE, "tensor %s has type %s, expected F32, BF16 or F16",
                     t->name, moe__dtype_get(t->dtype)->name);
}

/* Merged expert tensors: ffn_gate_up_exps, or ffn_gate_exps + ffn_up_exps. */
static moe_status bind_merged(const moe_model *m, int32_t L, moe__mlayer *b, moe__dtype *dtp, char *err,
                              size_t errlen) {
    const moe__mcfg *c = &m->cfg;
    int32_t E = c->n_experts;
    int64_t H = c->d_model, I = c->d_ff;
    moe_status s = MOE_OK;
    const moe__mtensor *gu = blk(m, L, "ffn_gate_up_exps.weight");
    moe__dtype dt;
    if (gu) {
        if (c->activation == MOE_ACT_SWIGLU_OAI)
            return moe__errf(err, errlen, MOE_ERR_UNSUPPORTED, "blk.%d: fused gate_up experts with "
                             "swiglu-oai (half order unknown)", L);
        b->layout = MOE__LAYOUT_FUSED;
        b->w13 = gu;
        if ((s = MOE__SHAPE(gu, E, 2 * I, H))) return s;
        dt = gu->dtype;
    } else {
        const moe__mtensor *g = need(m, L, "ffn_gate_exps.weight", &s, err, errlen);
        const moe__mtensor *u = need(m, L, "ffn_up_exps.weight", &s, err, errlen);
        if (s || (s = MOE__SHAPE(g, E, I, H)) || (s = MOE__SHAPE(u, E, I, H))) return s;
        if (g->dtype != u->dtype)
            return moe__errf(err, errlen, MOE_ERR_DTYPE, "blk.%d: gate and up experts have types %s "
                             "and %s", L, moe__dtype_get(g->dtype)->name, moe__dtype_get(u->dtype)->name);
        b->layout = MOE__LAYOUT_SPLIT;
        b->stacked = 1;
        b->interleave = c->activation == MOE_ACT_SWIGLU_OAI;
        b->gate = moe__calloc((size_t)E, sizeof *b->gate);
        b->up = moe__calloc((size_t)E, sizeof *b->up);
        b->down = moe__calloc((size_t)E, sizeof *b->down);
        if (!b->gate || !b->up || !b->down) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
        for (int32_t e = 0; e < E; e++) { b->gate[e] = g; b->up[e] = u; b->down[e] = b->w2; }
        dt = g->dtype;
    }
    *dtp = dt;
    return MOE_OK;
}

moe_status moe__gguf_bind(const moe_model *m, int32_t L, moe__mlayer *b, char *err, size_t errlen) {
    const moe__mcfg *c = &m->cfg;
    int32_t E = c->n_experts;
    int64_t H = c->d_model, I = c->d_ff, S = c->d_ff_shared;
    moe_status s = MOE_OK;
    b->router_w = need(m, L, "ffn_gate_inp.weight", &s, err, errlen);
    if (s || (s = MOE__SHAPE(b->router_w, E, H)) || (s = check_plain(b->router_w, err, errlen))) return s;
    moe__dtype dt = MOE__DT_INVALID;
    if (!blk(m, L, "ffn_down_exps.weight") && blk(m, L, "ffn_down.0.weight")) {
        /* pre-merge Mixtral-era files: blk.L.ffn_{gate,up,down}.E.weight, 2-D each */
        b->layout = MOE__LAYOUT_SPLIT;
        b->interleave = c->activation == MOE_ACT_SWIGLU_OAI;
        b->gate = moe__calloc((size_t)E, sizeof *b->gate);
        b->up = moe__calloc((size_t)E, sizeof *b->up);
        b->down = moe__calloc((size_t)E, sizeof *b->down);
        if (!b->gate || !b->up || !b->down) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
        for (int32_t e = 0; e < E; e++) {
            char n[3][48];
            snprintf(n[0], sizeof n[0], "ffn_gate.%d.weight", e);
            snprintf(n[1], sizeof n[1], "ffn_up.%d.weight", e);
            snprintf(n[2], sizeof n[2], "ffn_down.%d.weight", e);
            b->gate[e] = need(m, L, n[0], &s, err, errlen);
            b->up[e] = need(m, L, n[1], &s, err, errlen);
            b->down[e] = need(m, L, n[2], &s, err, errlen);
            if (s || (s = MOE__SHAPE(b->gate[e], I, H)) || (s = MOE__SHAPE(b->up[e], I, H)) ||
                (s = MOE__SHAPE(b->down[e], H, I)))
                return s;
            if (b->gate[e]->dtype != b->gate[0]->dtype || b->up[e]->dtype != b->gate[0]->dtype)
                return moe__errf(err, errlen, MOE_ERR_DTYPE, "blk.%d: expert %d gate/up types differ", L, e);
            if (b->down[e]->dtype != b->down[0]->dtype)
                return moe__errf(err, errlen, MOE_ERR_DTYPE, "blk.%d: expert %d down type differs", L, e);
        }
        b->format  = moe__format_of(b->gate[0]->dtype, 0, 0);
        b->format2 = moe__format_of(b->down[0]->dtype, 0, 0);
    } else {
        b->w2 = need(m, L, "ffn_down_exps.weight", &s, err, errlen);
        if (s || (s = MOE__SHAPE(b->w2, E, H, I))) return s;
        if ((s = bind_merged(m, L, b, &dt, err, errlen))) return s;
        /* down may have its own type (Q4_K_M: gate/up Q4_K, down Q6_K) */
        b->format  = moe__format_of(dt, 0, 0);
        b->format2 = moe__format_of(b->w2->dtype, 0, 0);
    }
    b->corr_b = blk(m, L, "exp_probs_b.bias");
    if (b->corr_b && ((s = MOE__SHAPE(b->corr_b, E)) || (s = check_plain(b->corr_b, err, errlen)))) return s;
    b->router_b = blk(m, L, "ffn_gate_inp.bias");
    if (b->router_b && ((s = MOE__SHAPE(b->router_b, E)) || (s = check_plain(b->router_b, err, errlen))))
        return s;
    if (c->family == MOE__FAM_GPT_OSS) {
        b->b_gate = need(m, L, "ffn_gate_exps.bias", &s, err, errlen);
        b->b_up = need(m, L, "ffn_up_exps.bias", &s, err, errlen);
        b->b2 = need(m, L, "ffn_down_exps.bias", &s, err, errlen);
        if (s || (s = MOE__SHAPE(b->b_gate, E, I)) || (s = MOE__SHAPE(b->b_up, E, I)) ||
            (s = MOE__SHAPE(b->b2, E, H)) || (s = check_plain(b->b_gate, err, errlen)) ||
            (s = check_plain(b->b_up, err, errlen)) || (s = check_plain(b->b2, err, errlen)))
            return s;
        if (!b->router_b) return moe__errf(err, errlen, MOE_ERR_MISSING, "tensor blk.%d.ffn_gate_inp.bias not found", L);
    }
    if (c->n_shared) {
        b->sh_gate = need(m, L, "ffn_gate_shexp.weight", &s, err, errlen);
        b->sh_up = need(m, L, "ffn_up_shexp.weight", &s, err, errlen);
        b->sh_down = need(m, L, "ffn_down_shexp.weight", &s, err, errlen);
        if (s || (s = MOE__SHAPE(b->sh_gate, S, H)) || (s = MOE__SHAPE(b->sh_up, S, H)) ||
            (s = MOE__SHAPE(b->sh_down, H, S)))
            return s;
        b->sh_format  = b->sh_gate->dtype == b->sh_up->dtype
                            ? moe__format_of(b->sh_gate->dtype, 0, 0) : MOE_FORMAT_COUNT;
        b->sh_format2 = moe__format_of(b->sh_down->dtype, 0, 0);
        if (c->shared_gate) {
            b->sh_gate_w = need(m, L, "ffn_gate_inp_shexp.weight", &s, err, errlen);
            if (s || (s = MOE__SHAPE(b->sh_gate_w, H)) || (s = check_plain(b->sh_gate_w, err, errlen)))
                return s;
        }
    }
    return MOE_OK;
}
