/*
 * safetensors.c - validates safetensors files and shard index files
 * (rules and byte layout in safetensors.h).
 */
#include "safetensors.h"

#include <stdlib.h>
#include <string.h>

/* Reads a JSON integer that must be a u64 into *v. */
static moe_status get_u64(const moe__json_node *n, const char *tname, const char *what,
                          uint64_t *v, char *err, size_t errlen) {
    if (n->type != MOE__JSON_NUMBER || !(n->num_flags & MOE__JSON_INT))
        return moe__errf(err, errlen, MOE_ERR_FORMAT, "safetensors: \"%.64s\": %s must be integers",
                         tname, what);
    if (!(n->num_flags & MOE__JSON_U64)) {
        if (n->num_flags & MOE__JSON_I64)
            return moe__errf(err, errlen, MOE_ERR_FORMAT,
                             "safetensors: \"%.64s\": negative %s", tname, what);
        return moe__errf(err, errlen, MOE_ERR_OVERFLOW,
                         "safetensors: \"%.64s\": %s value exceeds 2^64-1", tname, what);
    }
    *v = n->u;
    return MOE_OK;
}

static moe_status parse_entry(const moe__json *j, uint32_t node, const moe__io_limits *lim,
                              moe__st_tensor *t, char *err, size_t errlen) {
    const moe__json_node *n = &j->nodes[node];
    moe_status s;
    t->name = n->key;
    t->name_len = n->key_len;
    if ((s = moe__check_name("safetensors tensor name", n->key, n->key_len, lim->max_name_bytes,
                             err, errlen)))
        return s;
    if (n->type != MOE__JSON_OBJECT)
        return moe__errf(err, errlen, MOE_ERR_FORMAT, "safetensors: \"%.64s\" is not an object",
                         t->name);
    uint32_t dt = 0, sh = 0, off = 0;
    for (uint32_t c = moe__json_child(j, node); c; c = j->nodes[c].next) {
        const char *k = j->nodes[c].key;
        size_t kl = j->nodes[c].key_len; /* a key with an embedded NUL matches nothing */
        if (kl == 5 && !strcmp(k, "dtype")) dt = c;
        else if (kl == 5 && !strcmp(k, "shape")) sh = c;
        else if (kl == 12 && !strcmp(k, "data_offsets")) off = c;
        else
            return moe__errf(err, errlen, MOE_ERR_FORMAT,
                             "safetensors: \"%.64s\": unknown field \"%.32s\"", t->name, k);
    }
    if (!dt || !sh || !off)
        return moe__errf(err, errlen, MOE_ERR_MISSING, "safetensors: \"%.64s\" lacks \"%s\"",
                         t->name, !dt ? "dtype" : !sh ? "shape" : "data_offsets");
    if (j->nodes[dt].type != MOE__JSON_STRING)
        return moe__errf(err, errlen, MOE_ERR_FORMAT, "safetensors: \"%.64s\": dtype not a string",
                         t->name);
    t->dtype = moe__dtype_from_st(j->nodes[dt].str, j->nodes[dt].len);
    if (t->dtype == MOE__DT_INVALID)
        return moe__errf(err, errlen, MOE_ERR_DTYPE, "safetensors: \"%.64s\": unknown dtype \"%.16s\"",
                         t->name, j->nodes[dt].str);
    if (j->nodes[sh].type != MOE__JSON_ARRAY)
        return moe__errf(err, errlen, MOE_ERR_FORMAT, "safetensors: \"%.64s\": shape not an array",
                         t->name);
    if (j->nodes[sh].n_children > 8)
        return moe__errf(err, errlen, MOE_ERR_LIMIT, "safetensors: \"%.64s\": %u dims, limit 8",
                         t->name, j->nodes[sh].n_children);
    t->n_dims = 0;
    for (uint32_t c = moe__json_child(j, sh); c; c = j->nodes[c].next)
        if ((s = get_u64(&j->nodes[c], t->name, "shape", &t->shape[t->n_dims++], err, errlen)))
            return s;
    if (j->nodes[off].type != MOE__JSON_ARRAY || j->nodes[off].n_children != 2)
        return moe__errf(err, errlen, MOE_ERR_FORMAT,
                         "safetensors: \"%.64s\": data_offsets must be [BEGIN, END]", t->name);
    uint32_t c0 = moe__json_child(j, off), c1 = j->nodes[c0].next;
    if ((s = get_u64(&j->nodes[c0], t->name, "data_offsets", &t->begin, err, errlen)) ||
        (s = get_u64(&j->nodes[c1], t->name, "data_offsets", &t->end, err, errlen)))
        return s;
    return MOE_OK;
}

static int cmp_offsets(const void *a, const void *b) {
    const moe__st_tensor *x = *(const moe__st_tensor *const *)a, *y = *(const moe__st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

moe_status moe__st_parse(const uint8_t *buf, uint64_t size, const moe__io_limits *lim,
                         moe__st_file *f, char *err, size_t errlen) {
    memset(f, 0, sizeof *f);
    moe_status s;
    if (size < 8)
        return moe__errf(err, errlen, MOE_ERR_TRUNCATED,
                         "safetensors: %llu bytes, shorter than the 8-byte header length",
                         (unsigned long long)size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | buf[i];
    if (n > lim->max_header_bytes)
        return moe__errf(err, errlen, MOE_ERR_LIMIT, "safetensors: header of %llu bytes exceeds the "
                         "limit %llu", (unsigned long long)n, (unsigned long long)lim->max_header_bytes);
    uint64_t data_offset;
    if (__builtin_add_overflow(n, 8, &data_offset) || data_offset > size)
        return moe__errf(err, errlen, MOE_ERR_TRUNCATED,
                         "safetensors: header of %llu bytes but the file has %llu",
                         (unsigned long long)n, (unsigned long long)size);
    moe__json_limits jl = { .max_bytes = (size_t)lim->max_header_bytes, .max_depth = lim->max_json_depth };
    if ((s = moe__json_parse((const char *)buf + 8, (size_t)n, &jl, &f->json, err, errlen))) {
        /* prefix the message so callers know which input failed */
        return s;
    }
    const moe__json *j = &f->json;
    if (j->nodes[0].type != MOE__JSON_OBJECT) {
        s = moe__errf(err, errlen, MOE_ERR_FORMAT, "safetensors: header is not a JSON object");
        goto fail;
    }
    uint32_t n_entries = j->nodes[0].n_children;
    f->tensors = moe__calloc(n_entries ? n_entries : 1, sizeof *f->tensors);
    moe__st_tensor **order = moe__calloc(n_entries ? n_entries : 1, sizeof *order);
    if (!f->tensors || !order) {
        moe__free(order);
        s = moe__errf(err, errlen, MOE_ERR_NOMEM, "safetensors: out of memory");
        goto fail;
    }
    f->data_offset = data_offset;
    f->data_size = size - data_offset;
    for (uint32_t c = moe__json_child(j, 0); c; c = j->nodes[c].next) {
        if (!strcmp(j->nodes[c].key, "__metadata__") && j->nodes[c].key_len == 12) {
            if (j->nodes[c].type != MOE__JSON_OBJECT) {
                s = moe__errf(err, errlen, MOE_ERR_FORMAT, "safetensors: __metadata__ is not an object");
                goto fail_order;
            }
            for (uint32_t m = moe__json_child(j, c); m; m = j->nodes[m].next)
                if (j->nodes[m].type != MOE__JSON_STRING) {
                    s = moe__errf(err, errlen, MOE_ERR_FORMAT,
                                  "safetensors: __metadata__ \"%.64s\" is not a string", j->nodes[m].key);
                    goto fail_order;
                }
            f->metadata = c;
            continue;
        }
        if (f->n_tensors >= lim->max_tensors) {
            s = moe__errf(err, errlen, MOE_ERR_LIMIT, "safetensors: more than %llu tensors",
                          (unsigned long long)lim->max_tensors);
            goto fail_order;
        }
        moe__st_tensor *t = &f->tensors[f->n_tensors];
        if ((s = parse_entry(j, c, lim, t, err, errlen))) goto fail_order;
        uint64_t elems = 1, nbytes;
        for (int d = 0; d < t->n_dims; d++)
            if (__builtin_mul_overflow(elems, t->shape[d], &elems)) {
                s = moe__errf(err, errlen, MOE_ERR_OVERFLOW,
                              "safetensors: \"%.64s\": element count overflows", t->name);
                goto fail_order;
            }
        s = moe__dtype_nbytes(t->dtype, elems, t->n_dims ? t->shape[t->n_dims - 1] : 1, &nbytes);
        if (s) {
            s = moe__errf(err, errlen, s, "safetensors: \"%.64s\": %s", t->name,
                          s == MOE_ERR_OVERFLOW ? "byte size overflows"
                                                : "size is not a whole number of bytes");
            goto fail_order;
        }
        if (t->end < t->begin) {
            s = moe__errf(err, errlen, MOE_ERR_OVERLAP, "safetensors: \"%.64s\": END %llu < BEGIN %llu",
                          t->name, (unsigned long long)t->end, (unsigned long long)t->begin);
            goto fail_order;
        }
        if (t->end > f->data_size) {
            s = moe__errf(err, errlen, MOE_ERR_TRUNCATED,
                          "safetensors: \"%.64s\": data ends at %llu, the file's data has %llu bytes",
                          t->name, (unsigned long long)t->end, (unsigned long long)f->data_size);
            goto fail_order;
        }
        if (t->end - t->begin != nbytes) {
            s = moe__errf(err, errlen, MOE_ERR_SHAPE,
                          "safetensors: \"%.64s\": %llu data bytes, shape and dtype need %llu",
                          t->name, (unsigned long long)(t->end - t->begin), (unsigned long long)nbytes);
            goto fail_order;
        }
        order[f->n_tensors] = t;
        f->n_tensors++;
    }
    qsort(order, f->n_tensors, sizeof *order, cmp_offsets);
    uint64_t pos = 0;
    for (uint32_t i = 0; i < f->n_tensors; i++) {
        if (order[i]->begin != pos) {
            s = moe__errf(err, errlen, MOE_ERR_OVERLAP, "safetensors: \"%.64s\" begins at %llu, "
                          "expected %llu (%s)", order[i]->name, (unsigned long long)order[i]->begin,
                          (unsigned long long)pos, order[i]->begin < pos ? "overlap" : "gap");
            goto fail_order;
        }
        pos = order[i]->end;
    }
    if (pos != f->data_size) {
        s = moe__errf(err, errlen, MOE_ERR_OVERLAP, "safetensors: %llu bytes trail the last tensor",
                      (unsigned long long)(f->data_size - pos));
        goto fail_order;
    }
    moe__free(order);
    return MOE_OK;
fail_order:
    moe__free(order);
fail:
    moe__st_free(f);
    return s;
}

void moe__st_free(moe__st_file *f) {
    if (!f) return;
    moe__json_free(&f->json);
    moe__free(f->tensors);
    memset(f, 0, sizeof *f);
}

/* ===== Shard index ===== */

static moe_status check_shard_name(const char *s, size_t len, uint64_t max, char *err, size_t errlen) {
    moe_status st = moe__check_name("shard file name", s, len, max, err, errlen);
    if (st) return st;
    if (memchr(s, '/', len) || memchr(s, '\\', len) || !strcmp(s, ".") || !strcmp(s, ".."))
        return moe__errf(err, errlen, MOE_ERR_NAME,
                         "index: shard \"%.64s\" is not a plain file name", s);
    return MOE_OK;
}

static const char *shard_name_at(const void *ctx, uint32_t i, size_t *len) {
    const char *const *names = ctx;
    *len = strlen(names[i]);
    return names[i];
}

moe_status moe__st_index_parse(const char *text, size_t len, const moe__io_limits *lim,
                               moe__st_index *x, char *err, size_t errlen) {
    memset(x, 0, sizeof *x);
    moe__json_limits jl = { .max_bytes = (size_t)lim->max_header_bytes, .max_depth = lim->max_json_depth };
    moe_status s = moe__json_parse(text, len, &jl, &x->json, err, errlen);
    if (s) return s;
    const moe__json *j = &x->json;
    moe__nameset set = {0};
    if (j->nodes[0].type != MOE__JSON_OBJECT) {
        s = moe__errf(err, errlen, MOE_ERR_FORMAT, "index: not a JSON object");
        goto fail;
    }
    uint32_t meta = moe__json_get(j, 0, "metadata");
    if (meta) {
        if (j->nodes[meta].type != MOE__JSON_OBJECT) {
            s = moe__errf(err, errlen, MOE_ERR_FORMAT, "index: \"metadata\" is not an object");
            goto fail;
        }
        uint32_t ts = moe__json_get(j, meta, "total_size");
        if (ts) {
            const moe__json_node *n = &j->nodes[ts];
            if (n->type != MOE__JSON_NUMBER || !(n->num_flags & MOE__JSON_U64)) {
                s = moe__errf(err, errlen, MOE_ERR_FORMAT, "index: total_size is not a u64 integer");
                goto fail;
            }
            x->has_total = 1;
            x->total_size = n->u;
        }
    }
    uint32_t wm = moe__json_get(j, 0, "weight_map");
    if (!wm) {
        s = moe__errf(err, errlen, MOE_ERR_MISSING, "index: no \"weight_map\"");
        goto fail;
    }
    if (j->nodes[wm].type != MOE__JSON_OBJECT) {
        s = moe__errf(err, errlen, MOE_ERR_FORMAT, "index: \"weight_map\" is not an object");
        goto fail;
    }
    uint32_t n = j->nodes[wm].n_children;
    if (n > lim->max_tensors) {
        s = moe__errf(err, errlen, MOE_ERR_LIMIT, "index: %u tensors, limit %llu", n,
                      (unsigned long long)lim->max_tensors);
        goto fail;
    }
    x->tensor = moe__calloc(n ? n : 1, sizeof *x->tensor);
    x->shard = moe__calloc(n ? n : 1, sizeof *x->shard);
    x->shards = moe__calloc(n ? n : 1, sizeof *x->shards);
    if (!x->tensor || !x->shard || !x->shards || (s = moe__nameset_init(&set, n))) {
        s = moe__errf(err, errlen, MOE_ERR_NOMEM, "index: out of memory");
        goto fail;
    }
    for (uint32_t c = moe__json_child(j, wm); c; c = j->nodes[c].next) {
        const moe__json_node *e = &j->nodes[c];
        if ((s = moe__check_name("index tensor name", e->key, e->key_len, lim->max_name_bytes,
                                 err, errlen)))
            goto fail;
        if (e->type != MOE__JSON_STRING) {
            s = moe__errf(err, errlen, MOE_ERR_FORMAT, "index: \"%.64s\": shard is not a string",
                          e->key);
            goto fail;
        }
        if ((s = check_shard_name(e->str, e->len, lim->max_name_bytes, err, errlen))) goto fail;
        uint32_t dup;
        if (!moe__nameset_insert(&set, e->str, e->len, x->n_shards, shard_name_at, x->shards, &dup)) {
            dup = x->n_shards;
            x->shards[x->n_shards++] = e->str;
        }
        x->tensor[x->n_entries] = e->key;
        x->shard[x->n_entries] = dup;
        x->n_entries++;
    }
    moe__nameset_free(&set);
    return MOE_OK;
fail:
    moe__nameset_free(&set);
    moe__st_index_free(x);
    return s;
}

void moe__st_index_free(moe__st_index *x) {
    if (!x) return;
    moe__json_free(&x->json);
    moe__free(x->tensor);
    moe__free(x->shard);
    moe__free(x->shards);
    memset(x, 0, sizeof *x);
}
