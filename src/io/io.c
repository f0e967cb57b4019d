/*
 * io.c - shared pieces of the model-file readers (io.h): limits, the
 * storage data type table, read-only mappings and the name hash set.
 */
#include "io.h"
#include "json.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

void moe__io_limits_init(moe__io_limits *lim, const moe_model_options *o) {
    moe_model_options z = {0};
    if (!o) o = &z;
    lim->max_header_bytes = o->max_header_bytes ? o->max_header_bytes : 100000000u;
    lim->max_tensors      = o->max_tensors ? o->max_tensors : 10000000u;
    lim->max_kv           = o->max_kv ? o->max_kv : 100000u;
    lim->max_array_elems  = o->max_array_elems ? o->max_array_elems : 16777216u;
    lim->max_string_bytes = o->max_string_bytes ? o->max_string_bytes : 16u << 20;
    lim->max_name_bytes   = o->max_name_bytes ? o->max_name_bytes : 255u;
    lim->max_key_bytes    = 65535u;
    lim->max_json_depth   = o->max_json_depth > 0 ? o->max_json_depth : 64;
    lim->max_alignment    = o->max_alignment ? o->max_alignment : 1u << 20;
    lim->max_array_depth  = 8;
}

/* ===== Data types ===== */

static const moe__dtype_info dtypes[MOE__DT_COUNT] = {
    [MOE__DT_INVALID]      = { "?",           1,    0, -1, 0 },
    [MOE__DT_F64]          = { "F64",         1,   64, 28, 1 },
    [MOE__DT_F32]          = { "F32",         1,   32,  0, 1 },
    [MOE__DT_F16]          = { "F16",         1,   16,  1, 1 },
    [MOE__DT_BF16]         = { "BF16",        1,   16, 30, 1 },
    [MOE__DT_I64]          = { "I64",         1,   64, 27, 1 },
    [MOE__DT_I32]          = { "I32",         1,   32, 26, 1 },
    [MOE__DT_I16]          = { "I16",         1,   16, 25, 1 },
    [MOE__DT_I8]           = { "I8",          1,    8, 24, 1 },
    [MOE__DT_U64]          = { "U64",         1,   64, -1, 1 },
    [MOE__DT_U32]          = { "U32",         1,   32, -1, 1 },
    [MOE__DT_U16]          = { "U16",         1,   16, -1, 1 },
    [MOE__DT_U8]           = { "U8",          1,    8, -1, 1 },
    [MOE__DT_BOOL]         = { "BOOL",        1,    8, -1, 1 },
    [MOE__DT_F8_E4M3]      = { "F8_E4M3",     1,    8, -1, 1 },
    [MOE__DT_F8_E5M2]      = { "F8_E5M2",     1,    8, -1, 1 },
    [MOE__DT_F8_E8M0]      = { "F8_E8M0",     1,    8, -1, 1 },
    [MOE__DT_F8_E4M3FNUZ]  = { "F8_E4M3FNUZ", 1,    8, -1, 1 },
    [MOE__DT_F8_E5M2FNUZ]  = { "F8_E5M2FNUZ", 1,    8, -1, 1 },
    [MOE__DT_C64]          = { "C64",         1,   64, -1, 1 },
    [MOE__DT_F4]           = { "F4",          1,    4, -1, 1 },
    [MOE__DT_F6_E2M3]      = { "F6_E2M3",     1,    6, -1, 1 },
    [MOE__DT_F6_E3M2]      = { "F6_E3M2",     1,    6, -1, 1 },
    [MOE__DT_Q4_0]         = { "Q4_0",       32,  8 * 18,   2, 0 },
    [MOE__DT_Q4_1]         = { "Q4_1",       32,  8 * 20,   3, 0 },
    [MOE__DT_Q5_0]         = { "Q5_0",       32,  8 * 22,   6, 0 },
    [MOE__DT_Q5_1]         = { "Q5_1",       32,  8 * 24,   7, 0 },
    [MOE__DT_Q8_0]         = { "Q8_0",       32,  8 * 34,   8, 0 },
    [MOE__DT_Q8_1]         = { "Q8_1",       32,  8 * 40,   9, 0 },
    [MOE__DT_Q2_K]         = { "Q2_K",      256,  8 * 84,  10, 0 },
    [MOE__DT_Q3_K]         = { "Q3_K",      256,  8 * 110, 11, 0 },
    [MOE__DT_Q4_K]         = { "Q4_K",      256,  8 * 144, 12, 0 },
    [MOE__DT_Q5_K]         = { "Q5_K",      256,  8 * 176, 13, 0 },
    [MOE__DT_Q6_K]         = { "Q6_K",      256,  8 * 210, 14, 0 },
    [MOE__DT_Q8_K]         = { "Q8_K",      256,  8 * 292, 15, 0 },
    [MOE__DT_IQ2_XXS]      = { "IQ2_XXS",   256,  8 * 66,  16, 0 },
    [MOE__DT_IQ2_XS]       = { "IQ2_XS",    256,  8 * 74,  17, 0 },
    [MOE__DT_IQ3_XXS]      = { "IQ3_XXS",   256,  8 * 98,  18, 0 },
    [MOE__DT_IQ1_S]        = { "IQ1_S",     256,  8 * 50,  19, 0 },
    [MOE__DT_IQ4_NL]       = { "IQ4_NL",     32,  8 * 18,  20, 0 },
    [MOE__DT_IQ3_S]        = { "IQ3_S",     256,  8 * 110, 21, 0 },
    [MOE__DT_IQ2_S]        = { "IQ2_S",     256,  8 * 82,  22, 0 },
    [MOE__DT_IQ4_XS]       = { "IQ4_XS",    256,  8 * 136, 23, 0 },
    [MOE__DT_IQ1_M]        = { "IQ1_M",     256,  8 * 56,  29, 0 },
    [MOE__DT_TQ1_0]        = { "TQ1_0",     256,  8 * 54,  34, 0 },
    [MOE__DT_TQ2_0]        = { "TQ2_0",     256,  8 * 66,  35, 0 },
    [MOE__DT_MXFP4]        = { "MXFP4",      32,  8 * 17,  39, 0 },
    [MOE__DT_NVFP4]        = { "NVFP4",      64,  8 * 36,  40, 0 },
    [MOE__DT_Q1_0]         = { "Q1_0",      128,  8 * 18,  41, 0 },
};

const moe__dtype_info *moe__dtype_get(moe__dtype t) {
    if ((int)t <= MOE__DT_INVALID || t >= MOE__DT_COUNT) return &dtypes[MOE__DT_INVALID];
    return &dtypes[t];
}

moe__dtype moe__dtype_from_st(const char *name, size_t len) {
    for (int t = 1; t < MOE__DT_COUNT; t++)
        if (dtypes[t].st && strlen(dtypes[t].name) == len && !memcmp(dtypes[t].name, name, len))
            return (moe__dtype)t;
    return MOE__DT_INVALID;
}

moe__dtype moe__dtype_from_ggml(uint32_t id) {
    for (int t = 1; t < MOE__DT_COUNT; t++)
        if (dtypes[t].ggml_id >= 0 && (uint32_t)dtypes[t].ggml_id == id) return (moe__dtype)t;
    return MOE__DT_INVALID;
}

moe_status moe__dtype_nbytes(moe__dtype t, uint64_t n_elems, uint64_t ne0, uint64_t *bytes) {
    const moe__dtype_info *d = moe__dtype_get(t);
    if (d->block_elems > 1 && ne0 % d->block_elems) return MOE_ERR_SHAPE;
    uint64_t blocks = n_elems / d->block_elems, bits;
    if (__builtin_mul_overflow(blocks, (uint64_t)d->block_bits, &bits)) return MOE_ERR_OVERFLOW;
    if (bits % 8) return MOE_ERR_ALIGNMENT;
    *bytes = bits / 8;
    return MOE_OK;
}

/* ===== Mappings ===== */

moe_status moe__map_open(const char *path, moe__map *m, char *err, size_t errlen) {
    memset(m, 0, sizeof *m);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return moe__errf(err, errlen, MOE_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return moe__errf(err, errlen, MOE_ERR_IO, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return moe__errf(err, errlen, MOE_ERR_IO, "%s: not a regular file", path);
    }
    if (st.st_size > 0) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            return moe__errf(err, errlen, MOE_ERR_IO, "%s: mmap: %s", path, strerror(e));
        }
        m->data = p;
        m->size = (uint64_t)st.st_size;
    }
    close(fd);
    return MOE_OK;
}

void moe__map_close(moe__map *m) {
    if (m && m->data) munmap((void *)m->data, (size_t)m->size);
    if (m) memset(m, 0, sizeof *m);
}

/* ===== Name set ===== */

uint64_t moe__hash_bytes(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

moe_status moe__nameset_init(moe__nameset *s, size_t n) {
    size_t cap = 16;
    while (cap / 2 < n) {
        if (cap > SIZE_MAX / 4 / sizeof *s->slots) return MOE_ERR_OVERFLOW;
        cap *= 2;
    }
    s->slots = moe__calloc(cap, sizeof *s->slots);
    s->cap = cap;
    return s->slots ? MOE_OK : MOE_ERR_NOMEM;
}

void moe__nameset_free(moe__nameset *s) {
    moe__free(s->slots);
    s->slots = NULL;
    s->cap = 0;
}

int moe__nameset_insert(moe__nameset *s, const char *name, size_t len, uint32_t idx,
                        const char *(*get_name)(const void *ctx, uint32_t i, size_t *len),
                        const void *ctx, uint32_t *dup) {
    size_t h = (size_t)moe__hash_bytes(name, len) & (s->cap - 1);
    while (s->slots[h]) {
        size_t l;
        const char *o = get_name(ctx, s->slots[h] - 1, &l);
        if (l == len && !memcmp(o, name, len)) {
            if (dup) *dup = s->slots[h] - 1;
            return 1;
        }
        h = (h + 1) & (s->cap - 1);
    }
    s->slots[h] = idx + 1;
    return 0;
}

int64_t moe__nameset_find(const moe__nameset *s, const char *name, size_t len,
                          const char *(*get_name)(const void *ctx, uint32_t i, size_t *len),
                          const void *ctx) {
    if (!s->cap) return -1;
    size_t h = (size_t)moe__hash_bytes(name, len) & (s->cap - 1);
    while (s->slots[h]) {
        size_t l;
        const char *o = get_name(ctx, s->slots[h] - 1, &l);
        if (l == len && !memcmp(o, name, len)) return (int64_t)s->slots[h] - 1;
        h = (h + 1) & (s->cap - 1);
    }
    return -1;
}

moe_status moe__check_name(const char *what, const char *name, size_t len, uint64_t max,
                           char *err, size_t errlen) {
    if (len == 0) return moe__errf(err, errlen, MOE_ERR_NAME, "empty %s", what);
    if (len > max)
        return moe__errf(err, errlen, MOE_ERR_NAME, "%s \"%.*s...\" is %zu bytes, limit %llu",
                         what, (int)(len < 40 ? len : 40), name, len, (unsigned long long)max);
    const unsigned char *s = (const unsigned char *)name;
    for (size_t i = 0; i < len;) {
        if (s[i] < 0x20 || s[i] == 0x7F)
            return moe__errf(err, errlen, MOE_ERR_NAME, "%s has control byte 0x%02x at %zu",
                             what, s[i], i);
        if (s[i] < 0x80) { i++; continue; }
        size_t l = moe__utf8_len(s + i, len - i);
        if (!l) return moe__errf(err, errlen, MOE_ERR_NAME, "%s is not valid UTF-8", what);
        i += l;
    }
    return MOE_OK;
}
