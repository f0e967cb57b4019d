/*
 * npy.c - NumPy .npy files in and out (versions 1.0, 2.0, 3.0), hardened
 * like the model readers: the header is a Python dict literal, parsed here
 * strictly (exactly the keys descr, fortran_order, shape), sizes checked.
 *
 *     "\x93NUMPY" u8 major u8 minor  u16 (v1) or u32 (v2, v3) header length
 *     header: "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }" + spaces + "\n"
 *     data:   prod(shape) elements, C order
 */
#include "io.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

typedef struct hp { const char *s; size_t n, pos; } hp;

static void ws(hp *p) {
    while (p->pos < p->n && (p->s[p->pos] == ' ' || p->s[p->pos] == '\n' || p->s[p->pos] == '\t'))
        p->pos++;
}
static int eat(hp *p, char c) {
    ws(p);
    if (p->pos < p->n && p->s[p->pos] == c) { p->pos++; return 1; }
    return 0;
}
/* A quoted string ('...' or "..."), no escapes; returns its span. */
static int str(hp *p, const char **v, size_t *len) {
    ws(p);
    if (p->pos >= p->n || (p->s[p->pos] != '\'' && p->s[p->pos] != '"')) return 0;
    char q = p->s[p->pos++];
    size_t b = p->pos;
    while (p->pos < p->n && p->s[p->pos] != q) {
        if (p->s[p->pos] == '\\' || (unsigned char)p->s[p->pos] < 0x20) return 0;
        p->pos++;
    }
    if (p->pos >= p->n) return 0;
    *v = p->s + b;
    *len = p->pos - b;
    p->pos++;
    return 1;
}
static int word(hp *p, const char *w) {
    ws(p);
    size_t l = strlen(w);
    if (p->n - p->pos < l || memcmp(p->s + p->pos, w, l)) return 0;
    p->pos += l;
    return 1;
}

static moe_status parse_header(const char *h, size_t n, moe_npy *a, char *err, size_t errlen) {
    hp p = { h, n, 0 };
    int have_descr = 0, have_fo = 0, have_shape = 0;
    if (!eat(&p, '{')) return moe__errf(err, errlen, MOE_ERR_FORMAT, "npy: header is not a dict");
    for (;;) {
        if (eat(&p, '}')) break;
        const char *k, *v;
        size_t kl, vl;
        if (!str(&p, &k, &kl) || !eat(&p, ':'))
            return moe__errf(err, errlen, MOE_ERR_FORMAT, "npy: bad header key at %zu", p.pos);
        if (kl == 5 && !memcmp(k, "descr", 5) && !have_descr) {
            if (!str(&p, &v, &vl)) return moe__errf(err, errlen, MOE_ERR_FORMAT, "npy: descr not a string");
            if (vl == 3 && !memcmp(v, "<f4", 3)) a->format = MOE_FORMAT_F32;
            else if (vl == 3 && !memcmp(v, "<f2", 3)) a->format = MOE_FORMAT_F16;
            else if ((vl == 3 && (!memcmp(v, "<V2", 3) || !memcmp(v, "|V2", 3))) ||
                     (vl == 8 && !memcmp(v, "bfloat16", 8)))
                a->format = MOE_FORMAT_BF16;
            else
                return moe__errf(err, errlen, MOE_ERR_DTYPE, "npy: dtype '%.*s' (f32 '<f4', f16 '<f2', "
                                 "bf16 '<V2' or 'bfloat16' are read)", (int)(vl < 16 ? vl : 16), v);
            have_descr = 1;
        } else if (kl == 13 && !memcmp(k, "fortran_order", 13) && !have_fo) {
            if (word(&p, "True"))
                return moe__errf(err, errlen, MOE_ERR_FORMAT, "npy: Fortran order is not supported");
            if (!word(&p, "False")) return moe__errf(err, errlen, MOE_ERR_FORMAT, "npy: bad fortran_order");
            have_fo = 1;
        } else if (kl == 5 && !memcmp(k, "shape", 5) && !have_shape) {
            if (!eat(&p, '(')) return moe__errf(err, errlen, MOE_ERR_FORMAT, "npy: shape not a tuple");
            a->n_dims = 0;
            while (!eat(&p, ')')) {
                ws(&p);
                if (p.pos >= p.n || p.s[p.pos] < '0' || p.s[p.pos] > '9')
                    return moe__errf(err, errlen, MOE_ERR_FORMAT, "npy: bad shape");
                if (a->n_dims == 8) return moe__errf(err, errlen, MOE_ERR_LIMIT, "npy: more than 8 dims");
                int64_t d = 0;
                while (p.pos < p.n && p.s[p.pos] >= '0' && p.s[p.pos] <= '9') {
                    if (__builtin_mul_overflow(d, 10, &d) || __builtin_add_overflow(d, p.s[p.pos] - '0', &d))
                        return moe__errf(err, errlen, MOE_ERR_OVERFLOW, "npy: dimension overflows");
                    p.pos++;
                }
                a->shape[a->n_dims++] = d;
                if (!eat(&p, ',')) {
                    if (!eat(&p, ')')) return moe__errf(err, errlen, MOE_ERR_FORMAT, "npy: bad shape");
                    break;
                }
            }
            have_shape = 1;
        } else {
            return moe__errf(err, errlen, MOE_ERR_FORMAT, "npy: unexpected or repeated key '%.*s'",
                             (int)(kl < 32 ? kl : 32), k);
        }
        if (!eat(&p, ',')) {
            if (!eat(&p, '}')) return moe__errf(err, errlen, MOE_ERR_FORMAT, "npy: ',' or '}' expected");
            break;
        }
    }
    ws(&p);
    if (p.pos != p.n) return moe__errf(err, errlen, MOE_ERR_FORMAT, "npy: bytes after the header dict");
    if (!have_descr || !have_fo || !have_shape)
        return moe__errf(err, errlen, MOE_ERR_FORMAT, "npy: header lacks descr, fortran_order or shape");
    return MOE_OK;
}

moe_status moe_npy_parse(const void *buf, size_t len, moe_npy *a, char *err, size_t errlen) {
    if (!a || (!buf && len)) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "NULL argument");
    memset(a, 0, sizeof *a);
    const uint8_t *b = buf;
    if (len < 10) return moe__errf(err, errlen, MOE_ERR_TRUNCATED, "npy: %zu bytes", len);
    if (memcmp(b, "\x93NUMPY", 6)) return moe__errf(err, errlen, MOE_ERR_MAGIC, "npy: bad magic");
    if (b[6] < 1 || b[6] > 3 || b[7] != 0)
        return moe__errf(err, errlen, MOE_ERR_MAGIC, "npy: version %u.%u", b[6], b[7]);
    size_t pre = b[6] == 1 ? 10 : 12, hl;
    if (len < pre) return moe__errf(err, errlen, MOE_ERR_TRUNCATED, "npy: %zu bytes", len);
    hl = b[6] == 1 ? (size_t)b[8] | (size_t)b[9] << 8
                   : (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
    if (hl > len - pre)
        return moe__errf(err, errlen, MOE_ERR_TRUNCATED, "npy: header of %zu bytes, %zu present", hl,
                         len - pre);
    if (hl > 1 << 20) return moe__errf(err, errlen, MOE_ERR_LIMIT, "npy: header over 1 MiB");
    moe_status s = parse_header((const char *)b + pre, hl, a, err, errlen);
    if (s) return s;
    size_t n = 1, bytes;
    for (int d = 0; d < a->n_dims; d++)
        if (!moe__mul_ok(n, (size_t)a->shape[d], &n))
            return moe__errf(err, errlen, MOE_ERR_OVERFLOW, "npy: element count overflows");
    if (!moe__mul_ok(n, moe__plain_size(a->format), &bytes))
        return moe__errf(err, errlen, MOE_ERR_OVERFLOW, "npy: byte size overflows");
    size_t have = len - pre - hl;
    if (bytes > have)
        return moe__errf(err, errlen, MOE_ERR_TRUNCATED, "npy: %zu data bytes, shape needs %zu", have, bytes);
    if (bytes < have)
        return moe__errf(err, errlen, MOE_ERR_OVERLAP, "npy: %zu bytes trail the data", have - bytes);
    a->data = moe__malloc(bytes ? bytes : 1);
    if (!a->data) return moe__errf(err, errlen, MOE_ERR_NOMEM, "npy: out of memory");
    memcpy(a->data, b + pre + hl, bytes);
    a->nbytes = bytes;
    return MOE_OK;
}

moe_status moe_npy_read(const char *path, moe_npy *a, char *err, size_t errlen) {
    if (!path || !a) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "NULL argument");
    memset(a, 0, sizeof *a);
    moe__map m;
    moe_status s = moe__map_open(path, &m, err, errlen);
    if (s) return s;
    s = moe_npy_parse(m.data, (size_t)m.size, a, err, errlen);
    moe__map_close(&m);
    return s;
}

void moe_npy_free(moe_npy *a) {
    if (!a) return;
    moe__free(a->data);
    memset(a, 0, sizeof *a);
}

moe_status moe_npy_write(const char *path, moe_format format, int32_t n_dims, const int64_t *shape,
                         const void *data, char *err, size_t errlen) {
    if (!path || (n_dims && !shape) || n_dims < 0 || n_dims > 8)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "npy: bad arguments");
    const char *descr = format == MOE_FORMAT_F32 ? "<f4" : format == MOE_FORMAT_F16 ? "<f2"
                      : format == MOE_FORMAT_BF16 ? "<V2" : NULL;
    if (!descr) return moe__errf(err, errlen, MOE_ERR_DTYPE, "npy: only f32, f16 and bf16 are written");
    char h[512];
    int o = snprintf(h, sizeof h, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    size_t n = 1;
    for (int32_t d = 0; d < n_dims; d++) {
        if (shape[d] < 0 || !moe__mul_ok(n, (size_t)shape[d], &n))
            return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "npy: bad shape");
        o += snprintf(h + o, sizeof h - (size_t)o, "%lld%s", (long long)shape[d],
                      n_dims == 1 ? "," : d + 1 < n_dims ? ", " : "");
    }
    o += snprintf(h + o, sizeof h - (size_t)o, "), }");
    size_t total = 10 + (size_t)o + 1, pad = (64 - total % 64) % 64; /* data 64-aligned */
    memset(h + o, ' ', pad);
    h[o + (int)pad] = '\n';
    size_t hl = (size_t)o + pad + 1, bytes;
    if (!moe__mul_ok(n, moe__plain_size(format), &bytes) || (n && !data))
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "npy: bad data");
    FILE *f = fopen(path, "wb");
    if (!f) return moe__errf(err, errlen, MOE_ERR_IO, "%s: %s", path, strerror(errno));
    uint8_t pre[10] = { 0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)(hl & 0xFF), (uint8_t)(hl >> 8) };
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(h, 1, hl, f) == hl &&
             (bytes == 0 || fwrite(data, 1, bytes, f) == bytes);
    if (fclose(f) != 0) ok = 0;
    if (!ok) return moe__errf(err, errlen, MOE_ERR_IO, "%s: write failed", path);
    return MOE_OK;
}
