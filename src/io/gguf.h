/*
 * gguf.h - the GGUF reader (llama.cpp / ggml model files, versions 2 and 3).
 *
 * ===== Byte layout (little-endian) =====
 *
 *     u32  magic          "GGUF" (47 47 55 46)
 *     u32  version        2 or 3 (1 and byte-swapped files are refused)
 *     u64  n_tensors
 *     u64  n_kv
 *     kv[n_kv]            string key; u32 type; value
 *     tensor[n_tensors]   string name; u32 n_dims; u64 ne[n_dims] (fastest first);
 *                         u32 ggml_type; u64 offset (relative to the data section)
 *     padding             to general.alignment (u32, default 32)
 *     data                tensor i at data + offset[i]
 *
 *     string = u64 len; len bytes (UTF-8, no NUL terminator)
 *     type   = UINT8 0, INT8 1, UINT16 2, INT16 3, UINT32 4, INT32 5, FLOAT32 6,
 *              BOOL 7 (one byte, 0 or 1), STRING 8, ARRAY 9 (u32 elem_type; u64 n;
 *              n values), UINT64 10, INT64 11, FLOAT64 12
 *
 * Validation (every count and size checked against the bytes left BEFORE
 * anything is allocated; tables grow with what was actually read, so memory
 * is bounded by the header bytes, not by declared counts):
 *
 *     magic / version 0, 1, > 3, byte-swapped                     ERR_MAGIC
 *     n_tensors > max_tensors, n_kv > max_kv                      ERR_LIMIT
 *     any declared length or count past the end of the file      ERR_TRUNCATED
 *     key empty, control bytes, not UTF-8; name likewise / long   ERR_NAME
 *     key or tensor name twice                                    ERR_DUPLICATE
 *     value type or array element type unknown                    ERR_DTYPE
 *     BOOL other than 0 or 1                                      ERR_FORMAT
 *     string > max_string_bytes, key > 65535, array > max_array_elems,
 *     arrays nested deeper than 8                                  ERR_LIMIT
 *     general.alignment not UINT32, zero or not a power of two   ERR_ALIGNMENT
 *     general.alignment > max_alignment                           ERR_LIMIT
 *     n_dims > 4, ne[0] not a multiple of the type's block         ERR_SHAPE
 *     ne product or byte size not representable in int64         ERR_OVERFLOW
 *     ggml type id unknown (removed ids 4, 5, 31-33, 36-38)       ERR_DTYPE
 *     offset not a multiple of the alignment                      ERR_ALIGNMENT
 *     offsets not the running sum of padded sizes (ggml's rule)   ERR_OVERLAP
 *     data section or a tensor's data past the end of the file    ERR_TRUNCATED
 *
 * Nested arrays (allowed by the spec, refused by ggml) are read and skipped
 * up to depth 8. Trailing bytes after the last tensor are allowed (as ggml).
 */
#ifndef MOE_IO_GGUF_H
#define MOE_IO_GGUF_H

#include "io.h"

enum {
    MOE__GGUF_UINT8 = 0, MOE__GGUF_INT8, MOE__GGUF_UINT16, MOE__GGUF_INT16, MOE__GGUF_UINT32,
    MOE__GGUF_INT32, MOE__GGUF_FLOAT32, MOE__GGUF_BOOL, MOE__GGUF_STRING, MOE__GGUF_ARRAY,
    MOE__GGUF_UINT64, MOE__GGUF_INT64, MOE__GGUF_FLOAT64, MOE__GGUF_TYPE_COUNT
};

typedef struct moe__gguf_kv {
    const char    *key;      /* into the buffer, NOT NUL-terminated                  */
    uint64_t       key_len;
    uint32_t       type;
    uint32_t       arr_type; /* ARRAY: element type                                  */
    uint64_t       arr_n;    /* ARRAY: element count                                 */
    const uint8_t *val;      /* value bytes (ARRAY: the first element)               */
    uint64_t       val_size; /* bytes of the value (ARRAY: of all elements)           */
} moe__gguf_kv;

typedef struct moe__gguf_tensor {
    const char *name;        /* NUL-terminated copy (owned by the file's arena)       */
    uint64_t    name_len;
    moe__dtype  dtype;
    uint32_t    ggml_type;
    uint32_t    n_dims;
    uint64_t    ne[4];       /* fastest first                                        */
    uint64_t    offset;      /* relative to the data section                         */
    uint64_t    nbytes;
} moe__gguf_tensor;

typedef struct moe__gguf {
    uint32_t          version;
    moe__gguf_kv     *kv;
    uint64_t          n_kv;
    moe__gguf_tensor *tensors;
    uint64_t          n_tensors;
    char             *names;        /* arena of tensor names                          */
    uint32_t          alignment;
    uint64_t          data_offset;  /* file offset of the data section                */
    uint64_t          header_bytes; /* bytes before the padding                       */
} moe__gguf;

moe_status moe__gguf_parse(const uint8_t *buf, uint64_t size, const moe__io_limits *lim,
                           moe__gguf *g, char *err, size_t errlen);
void       moe__gguf_free(moe__gguf *g);

/* The pair with this key, or NULL. */
const moe__gguf_kv *moe__gguf_find(const moe__gguf *g, const char *key);
/* Typed getters: MOE_OK, MOE_ERR_MISSING when absent, MOE_ERR_CONFIG (with
 * a message) when present with another type. Integers accept every integer
 * type whose value fits; floats accept FLOAT32 and FLOAT64. */
moe_status moe__gguf_get_i64(const moe__gguf *g, const char *key, int64_t *v, char *err, size_t errlen);
moe_status moe__gguf_get_f64(const moe__gguf *g, const char *key, double *v, char *err, size_t errlen);
moe_status moe__gguf_get_bool(const moe__gguf *g, const char *key, int *v, char *err, size_t errlen);
/* Copies a STRING value into buf (NUL-terminated); MOE_ERR_CONFIG when it
 * does not fit or contains a NUL. */
moe_status moe__gguf_get_str(const moe__gguf *g, const char *key, char *buf, size_t cap,
                             char *err, size_t errlen);

#endif /* MOE_IO_GGUF_H */
