/*
 * model.c - moe_model_open/close/info: finds the files of a checkpoint
 * (HF directory, single .safetensors, sharded index, .gguf), validates them,
 * builds one tensor table over all files and hands the configuration to the
 * family binding (family-hf.c, family-gguf.c), which is then checked for
 * every MoE layer so that a model that opens is a model whose layers bind.
 */
#include "model.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

const char *const moe__family_names[MOE__FAM_COUNT] = {
    [MOE__FAM_MIXTRAL] = "mixtral",         [MOE__FAM_QWEN2_MOE] = "qwen2_moe",
    [MOE__FAM_QWEN3_MOE] = "qwen3_moe",     [MOE__FAM_OLMOE] = "olmoe",
    [MOE__FAM_DEEPSEEK_V2] = "deepseek_v2", [MOE__FAM_DEEPSEEK_V3] = "deepseek_v3",
    [MOE__FAM_GPT_OSS] = "gpt_oss",         [MOE__FAM_LLAMA4] = "llama4",
};

static const char *mt_name(const void *ctx, uint32_t i, size_t *len) {
    const moe__mtensor *t = ctx;
    *len = t[i].name_len;
    return t[i].name;
}

const moe__mtensor *moe__model_find(const moe_model *m, const char *name) {
    int64_t i = moe__nameset_find(&m->names, name, strlen(name), mt_name, m->tensors);
    return i < 0 ? NULL : &m->tensors[i];
}

float moe__mtensor_f32(const moe__mtensor *t, int64_t i) {
    if (t->dtype == MOE__DT_F32) {
        float f;
        memcpy(&f, t->data + 4 * i, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, t->data + 2 * i, 2);
    return t->dtype == MOE__DT_BF16 ? moe__bf16_to_f32(h) : moe__f16_to_f32(h);
}

const moe__mtensor *moe__model_findf(const moe_model *m, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof buf) return NULL;
    return moe__model_find(m, buf);
}

moe_status moe__expect_shape(const moe__mtensor *t, int n_dims, const int64_t *shape,
                             char *err, size_t errlen) {
    int ok = t->n_dims == n_dims;
    for (int d = 0; ok && d < n_dims; d++) ok = t->shape[d] == shape[d];
    if (ok) return MOE_OK;
    char got[160] = "", want[160] = "";
    size_t g = 0, w = 0;
    for (int d = 0; d < t->n_dims && g < sizeof got - 24; d++)
        g += (size_t)snprintf(got + g, sizeof got - g, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    for (int d = 0; d < n_dims && w < sizeof want - 24; d++)
        w += (size_t)snprintf(want + w, sizeof want - w, "%s%lld", d ? ", " : "", (long long)shape[d]);
    return moe__errf(err, errlen, MOE_ERR_SHAPE, "tensor %s has shape (%s), expected (%s)", t->name,
                     got, want);
}

moe_format moe__format_of(moe__dtype dt, int has_block_scales, int is_mxfp4_blocks) {
    switch (dt) {
    case MOE__DT_F32: return MOE_FORMAT_F32;
    case MOE__DT_BF16: return MOE_FORMAT_BF16;
    case MOE__DT_F16: return MOE_FORMAT_F16;
    case MOE__DT_F8_E4M3: return has_block_scales ? MOE_FORMAT_FP8_BLOCK : MOE_FORMAT_COUNT;
    case MOE__DT_U8: return is_mxfp4_blocks ? MOE_FORMAT_MXFP4 : MOE_FORMAT_COUNT;
    case MOE__DT_Q8_0: return MOE_FORMAT_Q8_0;
    case MOE__DT_Q4_0: return MOE_FORMAT_Q4_0;
    case MOE__DT_Q4_K: return MOE_FORMAT_Q4_K;
    case MOE__DT_Q6_K: return MOE_FORMAT_Q6_K;
    case MOE__DT_MXFP4: return MOE_FORMAT_GGUF_MXFP4;
    default: return MOE_FORMAT_COUNT;
    }
}

moe_status moe__mcfg_check(const moe__mcfg *c, char *err, size_t errlen) {
    if (c->n_layers < 1 || c->n_layers > 100000)
        return moe__errf(err, errlen, MOE_ERR_CONFIG, "config: %d layers", c->n_layers);
    if (c->n_experts < 1 || c->n_experts > 65536)
        return moe__errf(err, errlen, MOE_ERR_CONFIG, "config: %d experts", c->n_experts);
    if (c->top_k < 1 || c->top_k > c->n_experts)
        return moe__errf(err, errlen, MOE_ERR_CONFIG, "config: top_k %d with %d experts", c->top_k,
                         c->n_experts);
    if (c->d_model < 1 || c->d_model > (1 << 20) || c->d_ff < 1 || c->d_ff > (1 << 22))
        return moe__errf(err, errlen, MOE_ERR_CONFIG, "config: hidden size %lld, expert size %lld",
                         (long long)c->d_model, (long long)c->d_ff);
    if (c->n_shared < 0 || c->d_ff_shared < 0 || c->d_ff_shared > (1 << 24) ||
        (c->n_shared > 0) != (c->d_ff_shared > 0))
        return moe__errf(err, errlen, MOE_ERR_CONFIG, "config: %d shared experts of total size %lld",
                         c->n_shared, (long long)c->d_ff_shared);
    if (c->n_group > 1) {
        if (c->n_experts % c->n_group || c->topk_group < 1 || c->topk_group > c->n_group ||
            c->top_k > c->topk_group * (c->n_experts / c->n_group))
            return moe__errf(err, errlen, MOE_ERR_CONFIG,
                             "config: %d experts in %d groups, %d groups kept, top_k %d", c->n_experts,
                             c->n_group, c->topk_group, c->top_k);
    }
    if (!(c->routed_scaling_factor > 0) || c->routed_scaling_factor > 1e6f)
        return moe__errf(err, errlen, MOE_ERR_CONFIG, "config: routed_scaling_factor %g",
                         (double)c->routed_scaling_factor);
    return MOE_OK;
}

moe_status moe__model_bind(const moe_model *m, int32_t layer, moe__mlayer *b, char *err,
                           size_t errlen) {
    memset(b, 0, sizeof *b);
    b->layer = layer;
    moe_status s = m->is_gguf ? moe__gguf_bind(m, layer, b, err, errlen)
                              : moe__hf_bind(m, layer, b, err, errlen);
    if (s) moe__mlayer_free(b);
    return s;
}

void moe__mlayer_free(moe__mlayer *b) {
    moe__free((void *)b->gate);
    moe__free((void *)b->up);
    moe__free((void *)b->down);
    moe__free((void *)b->gate_s);
    moe__free((void *)b->up_s);
    moe__free((void *)b->down_s);
    moe__free(b->qgate);
    moe__free(b->qup);
    moe__free(b->qdown);
    moe__free(b->sgate);
    moe__free(b->sup);
    moe__free(b->sdown);
    memset(b, 0, sizeof *b);
}

/* ===== Opening ===== */

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}
static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static moe_status join(char *out, size_t cap, const char *dir, const char *name, char *err,
                       size_t errlen) {
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "path too long: %s/%s", dir, name);
    return MOE_OK;
}

/* Adds file f's tensors to the table. */
static moe_status add_st_tensors(moe_model *m, int32_t f, char *err, size_t errlen) {
    const moe__st_file *sf = &m->st[f];
    for (uint32_t i = 0; i < sf->n_tensors; i++) {
        const moe__st_tensor *t = &sf->tensors[i];
        moe__mtensor *o = &m->tensors[m->n_tensors];
        o->name = t->name;
        o->name_len = t->name_len;
        o->dtype = t->dtype;
        o->n_dims = t->n_dims;
        for (int d = 0; d < t->n_dims; d++) {
            if (t->shape[d] > (uint64_t)INT64_MAX)
                return moe__errf(err, errlen, MOE_ERR_OVERFLOW, "%s: dimension over 2^63", t->name);
            o->shape[d] = (int64_t)t->shape[d];
        }
        o->offset = sf->data_offset + t->begin;
        o->data = m->maps[f].data + o->offset;
        o->nbytes = t->end - t->begin;
        o->file = f;
        uint32_t dup;
        if (moe__nameset_insert(&m->names, o->name, o->name_len, (uint32_t)m->n_tensors, mt_name,
                                m->tensors, &dup))
            return moe__errf(err, errlen, MOE_ERR_DUPLICATE, "tensor %s is in files %d and %d",
                             o->name, m->tensors[dup].file, f);
        m->n_tensors++;
    }
    return MOE_OK;
}

static moe_status open_json(const char *path, const moe__io_limits *lim, moe__json *j, char *err,
                            size_t errlen) {
    moe__map map;
    moe_status s = moe__map_open(path, &map, err, errlen);
    if (s) return s;
    if (map.size > lim->max_header_bytes) {
        moe__map_close(&map);
        return moe__errf(err, errlen, MOE_ERR_LIMIT, "%s: %llu bytes exceed the limit", path,
                         (unsigned long long)map.size);
    }
    moe__json_limits jl = { .max_bytes = (size_t)lim->max_header_bytes, .max_depth = lim->max_json_depth };
    s = moe__json_parse((const char *)map.data, (size_t)map.size, &jl, j, err, errlen);
    moe__map_close(&map);
    return s;
}

static moe_status open_safetensors(moe_model *m, const char *dir, const char *single, char *err,
                                   size_t errlen) {
    char path[PATH_MAX];
    moe_status s;
    moe__st_index idx = {0};
    const char *one = single;
    if ((s = join(path, sizeof path, dir, "config.json", err, errlen))) return s;
    if (!is_file(path))
        return moe__errf(err, errlen, MOE_ERR_MISSING, "%s not found (safetensors checkpoints need "
                         "the model's config.json beside them)", path);
    if ((s = open_json(path, &m->lim, &m->config, err, errlen))) return s;
    /* ModelOpt exports describe their quantization here (family-hf.c, hf_quant). */
    if ((s = join(path, sizeof path, dir, "hf_quant_config.json", err, errlen))) return s;
    if (is_file(path)) {
        if ((s = open_json(path, &m->lim, &m->hfq, err, errlen))) return s;
        m->has_hfq = 1;
    }
    if (!one) {
        if ((s = join(path, sizeof path, dir, "model.safetensors.index.json", err, errlen))) return s;
        if (is_file(path)) {
            moe__map map;
            if ((s = moe__map_open(path, &map, err, errlen))) return s;
            if (map.size > m->lim.max_header_bytes)
                s = moe__errf(err, errlen, MOE_ERR_LIMIT, "%s: %llu bytes exceed the limit", path,
                              (unsigned long long)map.size);
            else
                s = moe__st_index_parse((const char *)map.data, (size_t)map.size, &m->lim, &idx, err,
                                        errlen);
            moe__map_close(&map);
            if (s) return s;
        } else {
            one = "model.safetensors";
            if ((s = join(path, sizeof path, dir, one, err, errlen))) return s;
            if (!is_file(path)) {
                return moe__errf(err, errlen, MOE_ERR_MISSING, "%s: no model.safetensors and no "
                                 "model.safetensors.index.json", dir);
            }
        }
    }
    m->n_files = one ? 1 : (int32_t)idx.n_shards;
    if (m->n_files == 0) {
        s = moe__errf(err, errlen, MOE_ERR_MISSING, "index: empty weight_map");
        goto done;
    }
    m->maps = moe__calloc((size_t)m->n_files, sizeof *m->maps);
    m->st = moe__calloc((size_t)m->n_files, sizeof *m->st);
    if (!m->maps || !m->st) {
        s = moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
        goto done;
    }
    uint64_t total = 0, bytes = 0;
    for (int32_t f = 0; f < m->n_files; f++) {
        if ((s = join(path, sizeof path, dir, one ? one : idx.shards[f], err, errlen))) goto done;
        if ((s = moe__map_open(path, &m->maps[f], err, errlen))) goto done;
        if ((s = moe__st_parse(m->maps[f].data, m->maps[f].size, &m->lim, &m->st[f], err, errlen))) {
            char msg[256];
            snprintf(msg, sizeof msg, "%s", err ? err : "");
            moe__errf(err, errlen, s, "%s: %s", one ? one : idx.shards[f], msg);
            goto done;
        }
        if (__builtin_add_overflow(total, (uint64_t)m->st[f].n_tensors, &total) ||
            total > m->lim.max_tensors) {
            s = moe__errf(err, errlen, MOE_ERR_LIMIT, "more than %llu tensors in all shards",
                          (unsigned long long)m->lim.max_tensors);
            goto done;
        }
        bytes += m->st[f].data_size; /* each <= its file size: no overflow in practice */
    }
    m->tensors = moe__calloc(total ? (size_t)total : 1, sizeof *m->tensors);
    if (!m->tensors || moe__nameset_init(&m->names, (size_t)total)) {
        s = moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int32_t f = 0; f < m->n_files; f++)
        if ((s = add_st_tensors(m, f, err, errlen))) goto done;
    if (!one) {
        for (uint32_t i = 0; i < idx.n_entries; i++) {
            const moe__mtensor *t = moe__model_find(m, idx.tensor[i]);
            if (!t || t->file != (int32_t)idx.shard[i]) {
                s = moe__errf(err, errlen, MOE_ERR_MISSING, "index: tensor %s is not in %s",
                              idx.tensor[i], idx.shards[idx.shard[i]]);
                goto done;
            }
        }
        if (idx.n_entries != (uint32_t)m->n_tensors) {
            s = moe__errf(err, errlen, MOE_ERR_MISSING, "index lists %u tensors, the shards hold %lld",
                          idx.n_entries, (long long)m->n_tensors);
            goto done;
        }
        if (idx.has_total && idx.total_size != bytes) {
            s = moe__errf(err, errlen, MOE_ERR_CONFIG, "index: total_size %llu, the shards hold %llu "
                          "bytes of tensors", (unsigned long long)idx.total_size,
                          (unsigned long long)bytes);
            goto done;
        }
    }
    s = moe__hf_config(m, err, errlen);
done:
    moe__st_index_free(&idx);
    return s;
}

/* Parses the GGUF file in m->maps[0] and builds the table and config. */
static moe_status load_gguf(moe_model *m, char *err, size_t errlen) {
    moe_status s;
    if ((s = moe__gguf_parse(m->maps[0].data, m->maps[0].size, &m->lim, &m->gguf, err, errlen)))
        return s;
    const moe__gguf *g = &m->gguf;
    m->tensors = moe__calloc(g->n_tensors ? (size_t)g->n_tensors : 1, sizeof *m->tensors);
    if (!m->tensors || moe__nameset_init(&m->names, (size_t)g->n_tensors))
        return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const moe__gguf_tensor *t = &g->tensors[i];
        moe__mtensor *o = &m->tensors[i];
        o->name = t->name;
        o->name_len = (size_t)t->name_len;
        o->dtype = t->dtype;
        o->n_dims = (int32_t)t->n_dims;
        for (uint32_t d = 0; d < t->n_dims; d++) o->shape[d] = (int64_t)t->ne[t->n_dims - 1 - d];
        o->offset = g->data_offset + t->offset;
        o->data = m->maps[0].data + o->offset;
        o->nbytes = t->nbytes;
        o->file = 0;
        moe__nameset_insert(&m->names, o->name, o->name_len, (uint32_t)i, mt_name, m->tensors, NULL);
        m->n_tensors++;
    }
    return moe__gguf_config(m, err, errlen);
}

static moe_status open_gguf(moe_model *m, const char *path, char *err, size_t errlen) {
    moe_status s;
    m->is_gguf = 1;
    m->n_files = 1;
    m->maps = moe__calloc(1, sizeof *m->maps);
    if (!m->maps) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    if ((s = moe__map_open(path, &m->maps[0], err, errlen))) return s;
    return load_gguf(m, err, errlen);
}

static moe_status finish(moe_model *m, moe_status s, moe_model **out, char *err, size_t errlen);

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

moe_status moe_model_open(const char *path, const moe_model_options *opts, moe_model **out,
                          char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (!path || !out) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "NULL path or out");
    *out = NULL;
    moe_model *m = moe__calloc(1, sizeof *m);
    if (!m) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    moe__io_limits_init(&m->lim, opts);
    moe_status s;
    if (is_dir(path)) {
        s = open_safetensors(m, path, NULL, err, errlen);
    } else if (!is_file(path)) {
        s = moe__errf(err, errlen, MOE_ERR_IO, "%s: no such file or directory", path);
    } else if (ends_with(path, ".safetensors")) {
        char dir[PATH_MAX];
        const char *slash = strrchr(path, '/');
        size_t dl = slash ? (size_t)(slash - path) : 1;
        if (dl >= sizeof dir) {
            s = moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "path too long");
        } else {
            memcpy(dir, slash ? path : ".", dl);
            dir[dl] = '\0';
            if (slash && dl == 0) strcpy(dir, "/");
            s = open_safetensors(m, dir, slash ? slash + 1 : path, err, errlen);
        }
    } else {
        s = open_gguf(m, path, err, errlen);
    }
    return finish(m, s, out, err, errlen);
}

/* Checks the configuration and binds every MoE layer once, so that a model
 * that opens is a model whose layers bind; closes m on failure. */
static moe_status finish(moe_model *m, moe_status s, moe_model **out, char *err, size_t errlen) {
    if (!s) {
        s = moe__mcfg_check(&m->cfg, err, errlen);
        for (int32_t l = 0; !s && l < m->cfg.n_layers; l++) {
            if (!m->cfg.is_moe[l]) continue;
            moe__mlayer b;
            s = moe__model_bind(m, l, &b, err, errlen);
            moe__mlayer_free(&b);
        }
    }
    if (s) {
        moe_model_close(m);
        return s;
    }
    *out = m;
    return MOE_OK;
}

static moe_status new_model(const moe_model_options *opts, moe_model **out, moe_model **m, char *err,
                            size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (!out) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "NULL out");
    *out = NULL;
    *m = moe__calloc(1, sizeof **m);
    if (!*m) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    moe__io_limits_init(&(*m)->lim, opts);
    return MOE_OK;
}

moe_status moe__model_open_gguf_buffer(const uint8_t *buf, uint64_t size, const moe_model_options *opts,
                                       moe_model **out, char *err, size_t errlen) {
    moe_model *m;
    moe_status s = new_model(opts, out, &m, err, errlen);
    if (s) return s;
    m->borrowed = 1;
    m->is_gguf = 1;
    m->n_files = 1;
    if (!(m->maps = moe__calloc(1, sizeof *m->maps))) s = moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    else {
        m->maps[0] = (moe__map){ buf, size };
        s = load_gguf(m, err, errlen);
    }
    return finish(m, s, out, err, errlen);
}

moe_status moe__model_open_st_buffer(const char *config, size_t config_len, const uint8_t *st,
                                     uint64_t st_size, const moe_model_options *opts, moe_model **out,
                                     char *err, size_t errlen) {
    moe_model *m;
    moe_status s = new_model(opts, out, &m, err, errlen);
    if (s) return s;
    m->borrowed = 1;
    m->n_files = 1;
    moe__json_limits jl = { .max_bytes = (size_t)m->lim.max_header_bytes, .max_depth = m->lim.max_json_depth };
    m->maps = moe__calloc(1, sizeof *m->maps);
    m->st = moe__calloc(1, sizeof *m->st);
    if (!m->maps || !m->st) {
        s = moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    } else if (!(s = moe__json_parse(config, config_len, &jl, &m->config, err, errlen))) {
        m->maps[0] = (moe__map){ st, st_size };
        if (!(s = moe__st_parse(st, st_size, &m->lim, &m->st[0], err, errlen))) {
            m->tensors = moe__calloc(m->st[0].n_tensors ? m->st[0].n_tensors : 1, sizeof *m->tensors);
            if (!m->tensors || moe__nameset_init(&m->names, m->st[0].n_tensors))
                s = moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
            else if (!(s = add_st_tensors(m, 0, err, errlen)))
                s = moe__hf_config(m, err, errlen);
        }
    }
    return finish(m, s, out, err, errlen);
}

void moe_model_close(moe_model *m) {
    if (!m) return;
    for (int32_t f = 0; f < m->n_files; f++) {
        if (m->st) moe__st_free(&m->st[f]);
        if (m->maps && !m->borrowed) moe__map_close(&m->maps[f]);
    }
    moe__free(m->st);
    moe__free(m->maps);
    moe__gguf_free(&m->gguf);
    moe__json_free(&m->config);
    moe__json_free(&m->hfq);
    moe__free(m->tensors);
    moe__nameset_free(&m->names);
    moe__free(m->cfg.is_moe);
    moe__free(m);
}

/* ===== Queries ===== */

int moe_model_layer_is_moe(const moe_model *m, int32_t layer) {
    return m && layer >= 0 && layer < m->cfg.n_layers && m->cfg.is_moe[layer];
}

moe_status moe_model_info(const moe_model *m, moe_model_desc *d) {
    if (!m || !d) return MOE_ERR_INVALID_ARG;
    memset(d, 0, sizeof *d);
    const moe__mcfg *c = &m->cfg;
    d->family = moe__family_names[c->family];
    d->container = m->is_gguf ? "gguf" : "safetensors";
    d->n_files = m->n_files;
    d->n_tensors = m->n_tensors;
    for (int64_t i = 0; i < m->n_tensors; i++) d->tensor_bytes += m->tensors[i].nbytes;
    d->n_layers = c->n_layers;
    d->first_moe_layer = -1;
    for (int32_t l = 0; l < c->n_layers; l++)
        if (c->is_moe[l]) {
            if (d->first_moe_layer < 0) d->first_moe_layer = l;
            d->n_moe_layers++;
        }
    d->n_experts = c->n_experts;
    d->top_k = c->top_k;
    d->d_model = c->d_model;
    d->d_ff = c->d_ff;
    d->n_shared_experts = c->n_shared;
    d->d_ff_shared = c->d_ff_shared;
    d->shared_gate = c->shared_gate;
    d->scoring = c->scoring;
    d->renormalize = c->renormalize;
    d->n_group = c->n_group;
    d->topk_group = c->topk_group;
    d->routed_scaling_factor = c->routed_scaling_factor;
    d->activation = c->activation;
    d->expert_format = d->expert_format_w2 = MOE_FORMAT_COUNT;
    if (d->first_moe_layer >= 0) {
        moe__mlayer b;
        if (moe__model_bind(m, d->first_moe_layer, &b, NULL, 0) == MOE_OK) {
            d->expert_format = b.format;
            d->expert_format_w2 = b.format2;
            d->correction_bias = b.corr_b != NULL;
            d->router_bias = b.router_b != NULL;
            d->expert_bias = b.b13 || b.b_gate || b.b2;
            moe__mlayer_free(&b);
        }
    }
    return MOE_OK;
}

int64_t moe_model_n_tensors(const moe_model *m) { return m ? m->n_tensors : 0; }

moe_status moe_model_tensor_get(const moe_model *m, int64_t i, moe_model_tensor *t) {
    if (!m || !t) return MOE_ERR_INVALID_ARG;
    if (i < 0 || i >= m->n_tensors) return MOE_ERR_RANGE;
    const moe__mtensor *s = &m->tensors[i];
    memset(t, 0, sizeof *t);
    t->name = s->name;
    t->dtype = moe__dtype_get(s->dtype)->name;
    t->n_dims = s->n_dims;
    for (int d = 0; d < s->n_dims; d++) t->shape[d] = s->shape[d];
    t->nbytes = s->nbytes;
    t->file = s->file;
    t->offset = s->offset;
    return MOE_OK;
}
