/*
 * gguf.c - validates GGUF files (byte layout and rules in gguf.h).
 *
 * A cursor walks the buffer; every read first checks the bytes left. Tables
 * grow by doubling as entries are read, never to a declared count.
 */
#include "gguf.h"

#include <string.h>

typedef struct cursor {
    const uint8_t *buf;
    uint64_t       size, pos;
    char          *err;
    size_t         errlen;
} cursor;

static uint64_t left(const cursor *c) { return c->size - c->pos; }

static moe_status need(cursor *c, uint64_t n, const char *what) {
    if (n > left(c))
        return moe__errf(c->err, c->errlen, MOE_ERR_TRUNCATED,
                         "GGUF: %s needs %llu bytes at offset %llu, %llu left", what,
                         (unsigned long long)n, (unsigned long long)c->pos,
                         (unsigned long long)left(c));
    return MOE_OK;
}

static uint64_t rd(cursor *c, int n) { /* caller checked need() */
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | c->buf[c->pos + (uint64_t)i];
    c->pos += (uint64_t)n;
    return v;
}

static moe_status rd_u32(cursor *c, uint32_t *v, const char *what) {
    moe_status s = need(c, 4, what);
    if (!s) *v = (uint32_t)rd(c, 4);
    return s;
}
static moe_status rd_u64(cursor *c, uint64_t *v, const char *what) {
    moe_status s = need(c, 8, what);
    if (!s) *v = rd(c, 8);
    return s;
}

/* A gguf_string: length checked against the bytes left, then the limit. */
static moe_status rd_str(cursor *c, const char **p, uint64_t *len, uint64_t max, moe_status over,
                         const char *what) {
    moe_status s = rd_u64(c, len, what);
    if (s) return s;
    if ((s = need(c, *len, what))) return s;
    if (*len > max)
        return moe__errf(c->err, c->errlen, over, "GGUF: %s of %llu bytes exceeds the limit %llu",
                         what, (unsigned long long)*len, (unsigned long long)max);
    *p = (const char *)c->buf + c->pos;
    c->pos += *len;
    return MOE_OK;
}

static const uint8_t scalar_size[MOE__GGUF_TYPE_COUNT] = {
    [MOE__GGUF_UINT8] = 1, [MOE__GGUF_INT8] = 1, [MOE__GGUF_UINT16] = 2, [MOE__GGUF_INT16] = 2,
    [MOE__GGUF_UINT32] = 4, [MOE__GGUF_INT32] = 4, [MOE__GGUF_FLOAT32] = 4, [MOE__GGUF_BOOL] = 1,
    [MOE__GGUF_UINT64] = 8, [MOE__GGUF_INT64] = 8, [MOE__GGUF_FLOAT64] = 8,
};

/* Skips one value of `type`; arrays recurse up to the depth limit. */
static moe_status skip_value(cursor *c, uint32_t type, const moe__io_limits *lim, int depth,
                             uint32_t *arr_type, uint64_t *arr_n) {
    moe_status s;
    if (type >= MOE__GGUF_TYPE_COUNT)
        return moe__errf(c->err, c->errlen, MOE_ERR_DTYPE, "GGUF: unknown value type %u at offset %llu",
                         type, (unsigned long long)c->pos - 4);
    if (type == MOE__GGUF_STRING) {
        const char *p;
        uint64_t len;
        return rd_str(c, &p, &len, lim->max_string_bytes, MOE_ERR_LIMIT, "string value");
    }
    if (type == MOE__GGUF_BOOL) {
        if ((s = need(c, 1, "bool value"))) return s;
        if (c->buf[c->pos] > 1)
            return moe__errf(c->err, c->errlen, MOE_ERR_FORMAT, "GGUF: bool value %u at offset %llu",
                             c->buf[c->pos], (unsigned long long)c->pos);
        c->pos++;
        return MOE_OK;
    }
    if (type != MOE__GGUF_ARRAY) {
        if ((s = need(c, scalar_size[type], "value"))) return s;
        c->pos += scalar_size[type];
        return MOE_OK;
    }
    if (depth >= lim->max_array_depth)
        return moe__errf(c->err, c->errlen, MOE_ERR_LIMIT, "GGUF: arrays nested deeper than %d",
                         lim->max_array_depth);
    uint32_t et;
    uint64_t n;
    if ((s = rd_u32(c, &et, "array type")) || (s = rd_u64(c, &n, "array length"))) return s;
    if (et >= MOE__GGUF_TYPE_COUNT)
        return moe__errf(c->err, c->errlen, MOE_ERR_DTYPE, "GGUF: unknown array element type %u", et);
    if (n > lim->max_array_elems)
        return moe__errf(c->err, c->errlen, MOE_ERR_LIMIT, "GGUF: array of %llu elements, limit %llu",
                         (unsigned long long)n, (unsigned long long)lim->max_array_elems);
    if (arr_type) { *arr_type = et; *arr_n = n; }
    /* smallest encoding of one element: its fixed size, 8 for a string
     * (length), 12 for an array (type + length) */
    uint64_t min = et == MOE__GGUF_STRING ? 8 : et == MOE__GGUF_ARRAY ? 12 : scalar_size[et];
    if (n > left(c) / min)
        return moe__errf(c->err, c->errlen, MOE_ERR_TRUNCATED,
                         "GGUF: array of %llu elements (>= %llu bytes each) at offset %llu, %llu bytes left",
                         (unsigned long long)n, (unsigned long long)min, (unsigned long long)c->pos,
                         (unsigned long long)left(c));
    if (et != MOE__GGUF_STRING && et != MOE__GGUF_ARRAY && et != MOE__GGUF_BOOL) {
        c->pos += n * min;
        return MOE_OK;
    }
    for (uint64_t i = 0; i < n; i++)
        if ((s = skip_value(c, et, lim, depth + 1, NULL, NULL))) return s;
    return MOE_OK;
}

/* Grows *arr (elements of `size` bytes) to hold at least n + 1. */
static moe_status grow(void **arr, uint64_t *cap, uint64_t n, size_t size) {
    if (n < *cap) return MOE_OK;
    uint64_t nc = *cap ? *cap * 2 : 16;
    size_t bytes;
    if (!moe__mul_ok((size_t)nc, size, &bytes) || nc > SIZE_MAX) return MOE_ERR_OVERFLOW;
    void *p = moe__malloc(bytes);
    if (!p) return MOE_ERR_NOMEM;
    if (n) memcpy(p, *arr, (size_t)n * size);
    moe__free(*arr);
    *arr = p;
    *cap = nc;
    return MOE_OK;
}

/* printf arguments for a tensor name that may not be NUL-terminated yet */
#define TN(t) (int)((t)->name_len < 64 ? (t)->name_len : 64), (t)->name

static const char *kv_name(const void *ctx, uint32_t i, size_t *len) {
    const moe__gguf_kv *kv = ctx;
    *len = (size_t)kv[i].key_len;
    return kv[i].key;
}
static const char *tensor_name(const void *ctx, uint32_t i, size_t *len) {
    const moe__gguf_tensor *t = ctx;
    *len = (size_t)t[i].name_len;
    return t[i].name;
}

/* x rounded up to a multiple of a (a power of two), checked. */
static int pad_ok(uint64_t x, uint64_t a, uint64_t *r) {
    uint64_t t;
    if (__builtin_add_overflow(x, a - 1, &t)) return 0;
    *r = t & ~(a - 1);
    return 1;
}

moe_status moe__gguf_parse(const uint8_t *buf, uint64_t size, const moe__io_limits *lim,
                           moe__gguf *g, char *err, size_t errlen) {
    memset(g, 0, sizeof *g);
    cursor c = { buf, size, 0, err, errlen };
    moe_status s;
    moe__nameset set = {0};
    uint64_t cap_kv = 0, cap_t = 0, n_tensors, n_kv;
    uint32_t magic;
    if ((s = rd_u32(&c, &magic, "magic"))) return s;
    if (magic != 0x46554747u)
        return moe__errf(err, errlen, MOE_ERR_MAGIC, "GGUF: bad magic %08x", magic);
    if ((s = rd_u32(&c, &g->version, "version"))) return s;
    if (g->version != 2 && g->version != 3)
        return moe__errf(err, errlen, MOE_ERR_MAGIC, "GGUF: version %u%s (2 and 3 are read)",
                         g->version, g->version && !(g->version & 0xFFFF) ? ", byte-swapped file" : "");
    if ((s = rd_u64(&c, &n_tensors, "tensor count")) || (s = rd_u64(&c, &n_kv, "kv count")))
        return s;
    if (n_tensors > lim->max_tensors)
        return moe__errf(err, errlen, MOE_ERR_LIMIT, "GGUF: %llu tensors, limit %llu",
                         (unsigned long long)n_tensors, (unsigned long long)lim->max_tensors);
    if (n_kv > lim->max_kv)
        return moe__errf(err, errlen, MOE_ERR_LIMIT, "GGUF: %llu metadata pairs, limit %llu",
                         (unsigned long long)n_kv, (unsigned long long)lim->max_kv);
    /* each pair takes >= 13 bytes (key length 8 + 1, type 4), each tensor
     * info >= 33 (name 8 + 1, n_dims 4, one dim 8, type 4, offset 8) */
    if (n_kv > left(&c) / 13 || n_tensors > (left(&c) - n_kv * 13) / 33)
        return moe__errf(err, errlen, MOE_ERR_TRUNCATED,
                         "GGUF: %llu pairs and %llu tensors cannot fit in %llu bytes",
                         (unsigned long long)n_kv, (unsigned long long)n_tensors,
                         (unsigned long long)left(&c));

    g->alignment = 32;
    for (uint64_t i = 0; i < n_kv; i++) {
        if ((s = grow((void **)&g->kv, &cap_kv, g->n_kv, sizeof *g->kv))) goto nomem;
        moe__gguf_kv *kv = &g->kv[g->n_kv];
        memset(kv, 0, sizeof *kv);
        if ((s = rd_str(&c, &kv->key, &kv->key_len, lim->max_key_bytes, MOE_ERR_LIMIT, "key")))
            goto fail;
        if ((s = moe__check_name("GGUF key", kv->key, (size_t)kv->key_len, lim->max_key_bytes,
                                 err, errlen)))
            goto fail;
        if ((s = rd_u32(&c, &kv->type, "value type"))) goto fail;
        uint64_t start = c.pos;
        if ((s = skip_value(&c, kv->type, lim, 0, &kv->arr_type, &kv->arr_n))) goto fail;
        kv->val = buf + start;
        kv->val_size = c.pos - start;
        if (kv->type == MOE__GGUF_ARRAY) { kv->val += 12; kv->val_size -= 12; }
        g->n_kv++;
    }
    if ((s = moe__nameset_init(&set, (size_t)g->n_kv))) goto nomem;
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (moe__nameset_insert(&set, g->kv[i].key, (size_t)g->kv[i].key_len, (uint32_t)i, kv_name,
                                g->kv, NULL)) {
            s = moe__errf(err, errlen, MOE_ERR_DUPLICATE, "GGUF: duplicate key \"%.*s\"",
                          (int)(g->kv[i].key_len < 64 ? g->kv[i].key_len : 64), g->kv[i].key);
            goto fail;
        }
    moe__nameset_free(&set);
    const moe__gguf_kv *al = moe__gguf_find(g, "general.alignment");
    if (al) {
        if (al->type != MOE__GGUF_UINT32) {
            s = moe__errf(err, errlen, MOE_ERR_ALIGNMENT, "GGUF: general.alignment has type %u, "
                          "not UINT32", al->type);
            goto fail;
        }
        uint32_t a = (uint32_t)al->val[0] | (uint32_t)al->val[1] << 8 | (uint32_t)al->val[2] << 16 |
                     (uint32_t)al->val[3] << 24;
        if (a == 0 || (a & (a - 1))) {
            s = moe__errf(err, errlen, MOE_ERR_ALIGNMENT,
                          "GGUF: general.alignment %u is not a power of two", a);
            goto fail;
        }
        if (a > lim->max_alignment) {
            s = moe__errf(err, errlen, MOE_ERR_LIMIT, "GGUF: general.alignment %u exceeds %u", a,
                          lim->max_alignment);
            goto fail;
        }
        g->alignment = a;
    }

    /* Tensor infos. Names point into the buffer until all are read, then
     * are copied, NUL-terminated, into one arena the header bytes bound. */
    uint64_t expect = 0, names_bytes = 0;
    for (uint64_t i = 0; i < n_tensors; i++) {
        if ((s = grow((void **)&g->tensors, &cap_t, g->n_tensors, sizeof *g->tensors))) goto nomem;
        moe__gguf_tensor *t = &g->tensors[g->n_tensors];
        memset(t, 0, sizeof *t);
        if ((s = rd_str(&c, &t->name, &t->name_len, lim->max_name_bytes, MOE_ERR_NAME, "tensor name")) ||
            (s = moe__check_name("GGUF tensor name", t->name, (size_t)t->name_len, lim->max_name_bytes,
                                 err, errlen)))
            goto fail;
        names_bytes += t->name_len + 1; /* <= bytes read so far: no overflow */
        g->n_tensors++;
        if ((s = rd_u32(&c, &t->n_dims, "n_dims"))) goto fail;
        if (t->n_dims > 4) {
            s = moe__errf(err, errlen, MOE_ERR_SHAPE, "GGUF: \"%.*s\" has %u dims, at most 4", TN(t),
                          t->n_dims);
            goto fail;
        }
        uint64_t elems = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            if ((s = rd_u64(&c, &t->ne[d], "dims"))) goto fail;
            if (__builtin_mul_overflow(elems, t->ne[d], &elems) || elems > (uint64_t)INT64_MAX) {
                s = moe__errf(err, errlen, MOE_ERR_OVERFLOW, "GGUF: \"%.*s\": element count overflows",
                              TN(t));
                goto fail;
            }
        }
        for (uint32_t d = t->n_dims; d < 4; d++) t->ne[d] = 1;
        if ((s = rd_u32(&c, &t->ggml_type, "tensor type"))) goto fail;
        t->dtype = moe__dtype_from_ggml(t->ggml_type);
        if (t->dtype == MOE__DT_INVALID) {
            s = moe__errf(err, errlen, MOE_ERR_DTYPE, "GGUF: \"%.*s\": unknown ggml type %u", TN(t),
                          t->ggml_type);
            goto fail;
        }
        s = moe__dtype_nbytes(t->dtype, elems, t->ne[0], &t->nbytes);
        if (s == MOE_OK && t->nbytes > (uint64_t)INT64_MAX) s = MOE_ERR_OVERFLOW;
        if (s) {
            s = moe__errf(err, errlen, s, "GGUF: \"%.*s\": %s", TN(t),
                          s == MOE_ERR_SHAPE ? "ne[0] is not a multiple of the type's block"
                                             : "byte size overflows");
            goto fail;
        }
        if ((s = rd_u64(&c, &t->offset, "tensor offset"))) goto fail;
        if (t->offset % g->alignment) {
            s = moe__errf(err, errlen, MOE_ERR_ALIGNMENT, "GGUF: \"%.*s\": offset %llu is not a "
                          "multiple of %u", TN(t), (unsigned long long)t->offset, g->alignment);
            goto fail;
        }
        if (t->offset != expect) {
            s = moe__errf(err, errlen, MOE_ERR_OVERLAP, "GGUF: \"%.*s\": offset %llu, expected %llu "
                          "(tensors must be contiguous, in order)", TN(t),
                          (unsigned long long)t->offset, (unsigned long long)expect);
            goto fail;
        }
        uint64_t padded;
        if (!pad_ok(t->nbytes, g->alignment, &padded) ||
            __builtin_add_overflow(expect, padded, &expect)) {
            s = moe__errf(err, errlen, MOE_ERR_OVERFLOW, "GGUF: \"%.*s\": data offsets overflow", TN(t));
            goto fail;
        }
    }
    if (g->n_tensors) {
        if (!(g->names = moe__malloc((size_t)names_bytes))) { s = MOE_ERR_NOMEM; goto nomem; }
        char *o = g->names;
        for (uint64_t i = 0; i < g->n_tensors; i++) {
            moe__gguf_tensor *t = &g->tensors[i];
            memcpy(o, t->name, (size_t)t->name_len);
            o[t->name_len] = '\0';
            t->name = o;
            o += t->name_len + 1;
        }
    }
    if ((s = moe__nameset_init(&set, (size_t)g->n_tensors))) goto nomem;
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (moe__nameset_insert(&set, g->tensors[i].name, (size_t)g->tensors[i].name_len, (uint32_t)i,
                                tensor_name, g->tensors, NULL)) {
            s = moe__errf(err, errlen, MOE_ERR_DUPLICATE, "GGUF: duplicate tensor \"%s\"",
                          g->tensors[i].name);
            goto fail;
        }
    moe__nameset_free(&set);
    g->header_bytes = c.pos;
    if (!pad_ok(c.pos, g->alignment, &g->data_offset) || g->data_offset > size) {
        if (g->n_tensors == 0) { g->data_offset = size; return MOE_OK; }
        s = moe__errf(err, errlen, MOE_ERR_TRUNCATED, "GGUF: data section starts past the end");
        goto fail;
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const moe__gguf_tensor *t = &g->tensors[i];
        if (t->offset > size - g->data_offset || t->nbytes > size - g->data_offset - t->offset) {
            s = moe__errf(err, errlen, MOE_ERR_TRUNCATED, "GGUF: \"%.*s\": data (%llu bytes at %llu) "
                          "runs past the end of the file", TN(t), (unsigned long long)t->nbytes,
                          (unsigned long long)(g->data_offset + t->offset));
            goto fail;
        }
    }
    return MOE_OK;
nomem:
    if (s == MOE_ERR_NOMEM || s == MOE_ERR_OVERFLOW)
        moe__errf(err, errlen, MOE_ERR_NOMEM, "GGUF: out of memory");
    s = MOE_ERR_NOMEM;
fail:
    moe__nameset_free(&set);
    moe__gguf_free(g);
    return s;
}

void moe__gguf_free(moe__gguf *g) {
    if (!g) return;
    moe__free(g->kv);
    moe__free(g->tensors);
    moe__free(g->names);
    memset(g, 0, sizeof *g);
}

const moe__gguf_kv *moe__gguf_find(const moe__gguf *g, const char *key) {
    size_t kl = strlen(key);
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key_len == kl && !memcmp(g->kv[i].key, key, kl)) return &g->kv[i];
    return NULL;
}

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

moe_status moe__gguf_get_i64(const moe__gguf *g, const char *key, int64_t *v, char *err, size_t errlen) {
    const moe__gguf_kv *kv = moe__gguf_find(g, key);
    if (!kv) return MOE_ERR_MISSING;
    const uint8_t *p = kv->val;
    switch (kv->type) {
    case MOE__GGUF_UINT8: *v = p[0]; return MOE_OK;
    case MOE__GGUF_INT8: *v = (int8_t)p[0]; return MOE_OK;
    case MOE__GGUF_UINT16: *v = (int64_t)le(p, 2); return MOE_OK;
    case MOE__GGUF_INT16: *v = (int16_t)le(p, 2); return MOE_OK;
    case MOE__GGUF_UINT32: *v = (int64_t)le(p, 4); return MOE_OK;
    case MOE__GGUF_INT32: *v = (int32_t)le(p, 4); return MOE_OK;
    case MOE__GGUF_INT64: *v = (int64_t)le(p, 8); return MOE_OK;
    case MOE__GGUF_UINT64:
        if (le(p, 8) <= (uint64_t)INT64_MAX) { *v = (int64_t)le(p, 8); return MOE_OK; }
        break;
    default: break;
    }
    return moe__errf(err, errlen, MOE_ERR_CONFIG, "GGUF: %s must be an integer (type %u)", key, kv->type);
}

moe_status moe__gguf_get_f64(const moe__gguf *g, const char *key, double *v, char *err, size_t errlen) {
    const moe__gguf_kv *kv = moe__gguf_find(g, key);
    if (!kv) return MOE_ERR_MISSING;
    if (kv->type == MOE__GGUF_FLOAT32) {
        union { uint32_t u; float f; } x = { (uint32_t)le(kv->val, 4) };
        *v = x.f;
        return MOE_OK;
    }
    if (kv->type == MOE__GGUF_FLOAT64) {
        union { uint64_t u; double f; } x = { le(kv->val, 8) };
        *v = x.f;
        return MOE_OK;
    }
    return moe__errf(err, errlen, MOE_ERR_CONFIG, "GGUF: %s must be a float (type %u)", key, kv->type);
}

moe_status moe__gguf_get_bool(const moe__gguf *g, const char *key, int *v, char *err, size_t errlen) {
    const moe__gguf_kv *kv = moe__gguf_find(g, key);
    if (!kv) return MOE_ERR_MISSING;
    if (kv->type != MOE__GGUF_BOOL)
        return moe__errf(err, errlen, MOE_ERR_CONFIG, "GGUF: %s must be a bool (type %u)", key, kv->type);
    *v = kv->val[0];
    return MOE_OK;
}

moe_status moe__gguf_get_str(const moe__gguf *g, const char *key, char *buf, size_t cap,
                             char *err, size_t errlen) {
    const moe__gguf_kv *kv = moe__gguf_find(g, key);
    if (!kv) return MOE_ERR_MISSING;
    if (kv->type != MOE__GGUF_STRING)
        return moe__errf(err, errlen, MOE_ERR_CONFIG, "GGUF: %s must be a string (type %u)", key, kv->type);
    uint64_t len = le(kv->val, 8);
    if (len >= cap || memchr(kv->val + 8, 0, (size_t)len))
        return moe__errf(err, errlen, MOE_ERR_CONFIG, "GGUF: %s is too long or has a NUL", key);
    memcpy(buf, kv->val + 8, (size_t)len);
    buf[len] = '\0';
    return MOE_OK;
}
