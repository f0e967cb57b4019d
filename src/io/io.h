/*
 * io.h - what the model-file readers share: limits, the storage data types
 * of both containers, read-only file mappings, and a name -> index hash set.
 *
 * Readers work on memory buffers (the mapped file, or a fuzzer's input), so
 * every parse entry point is testable without temporary files. A mapping is
 * read-only and private; tensors are views into it. If another process
 * truncates a mapped file, reading past the new end raises SIGBUS: a file
 * modified while open is outside what the library defends against (as in
 * the safetensors threat model, "attack proposal 6").
 */
#ifndef MOE_IO_IO_H
#define MOE_IO_IO_H

#include "internal.h"

/* Limits applied while parsing; built from moe_model_options (zero fields
 * take the defaults listed in moe.h). */
typedef struct moe__io_limits {
    uint64_t max_header_bytes;   /* safetensors header, config.json, index JSON    */
    uint64_t max_tensors;        /* per file (and per model)                         */
    uint64_t max_kv;             /* GGUF metadata pairs                              */
    uint64_t max_array_elems;    /* GGUF array elements                              */
    uint64_t max_string_bytes;   /* GGUF string values                               */
    uint64_t max_key_bytes;      /* GGUF keys                                        */
    uint64_t max_name_bytes;     /* tensor names                                     */
    int      max_json_depth;
    uint32_t max_alignment;      /* GGUF general.alignment                           */
    int      max_array_depth;    /* GGUF nested arrays                               */
} moe__io_limits;

void moe__io_limits_init(moe__io_limits *lim, const moe_model_options *o);

/* ===== Storage data types =====
 *
 * One enum for both containers: safetensors dtype strings and GGML type ids
 * map into it. Sizes are per block: plain types have block_elems 1.
 */
typedef enum moe__dtype {
    MOE__DT_INVALID = 0,
    /* plain */
    MOE__DT_F64, MOE__DT_F32, MOE__DT_F16, MOE__DT_BF16,
    MOE__DT_I64, MOE__DT_I32, MOE__DT_I16, MOE__DT_I8,
    MOE__DT_U64, MOE__DT_U32, MOE__DT_U16, MOE__DT_U8, MOE__DT_BOOL,
    MOE__DT_F8_E4M3, MOE__DT_F8_E5M2, MOE__DT_F8_E8M0, MOE__DT_F8_E4M3FNUZ, MOE__DT_F8_E5M2FNUZ,
    MOE__DT_C64,
    /* sub-byte safetensors types (size in bits) */
    MOE__DT_F4, MOE__DT_F6_E2M3, MOE__DT_F6_E3M2,
    /* GGML block types */
    MOE__DT_Q4_0, MOE__DT_Q4_1, MOE__DT_Q5_0, MOE__DT_Q5_1, MOE__DT_Q8_0, MOE__DT_Q8_1,
    MOE__DT_Q2_K, MOE__DT_Q3_K, MOE__DT_Q4_K, MOE__DT_Q5_K, MOE__DT_Q6_K, MOE__DT_Q8_K,
    MOE__DT_IQ2_XXS, MOE__DT_IQ2_XS, MOE__DT_IQ3_XXS, MOE__DT_IQ1_S, MOE__DT_IQ4_NL,
    MOE__DT_IQ3_S, MOE__DT_IQ2_S, MOE__DT_IQ4_XS, MOE__DT_IQ1_M, MOE__DT_TQ1_0, MOE__DT_TQ2_0,
    MOE__DT_MXFP4, MOE__DT_NVFP4, MOE__DT_Q1_0,
    MOE__DT_COUNT
} moe__dtype;

typedef struct moe__dtype_info {
    const char *name;        /* safetensors spelling for plain types, ggml's for blocks */
    uint32_t    block_elems;
    uint32_t    block_bits;  /* bits per block (sub-byte safetensors types)            */
    int         ggml_id;     /* GGML type id, -1 when GGUF has none                    */
    int         st;          /* 1 when safetensors has this dtype                      */
} moe__dtype_info;

const moe__dtype_info *moe__dtype_get(moe__dtype t);
/* MOE__DT_INVALID when unknown. */
moe__dtype moe__dtype_from_st(const char *name, size_t len);
moe__dtype moe__dtype_from_ggml(uint32_t id);
/* Bytes of n_elems elements whose fastest dimension is ne0 (block types need
 * ne0 % block_elems == 0). MOE_ERR_OVERFLOW, MOE_ERR_SHAPE or MOE_ERR_ALIGNMENT
 * (a sub-byte total that is not a whole byte). */
moe_status moe__dtype_nbytes(moe__dtype t, uint64_t n_elems, uint64_t ne0, uint64_t *bytes);

/* ===== Mapped files ===== */

typedef struct moe__map {
    const uint8_t *data;     /* (size) read-only; NULL when size is 0            */
    uint64_t       size;
} moe__map;

/* Maps path read-only. MOE_ERR_IO with strerror in the message. */
moe_status moe__map_open(const char *path, moe__map *m, char *err, size_t errlen);
void       moe__map_close(moe__map *m);

/* ===== Name set: open addressing over (pointer, length) names ===== */

typedef struct moe__nameset {
    uint32_t *slots;         /* index + 1, 0 = empty                              */
    size_t    cap;           /* power of two >= 2 n                               */
} moe__nameset;

moe_status moe__nameset_init(moe__nameset *s, size_t n);
void       moe__nameset_free(moe__nameset *s);
uint64_t   moe__hash_bytes(const void *p, size_t n);
/* Inserts idx under name (get_name(ctx, i) gives the name of an earlier
 * index). Returns 1 when the name was already present (*dup = its index). */
int        moe__nameset_insert(moe__nameset *s, const char *name, size_t len, uint32_t idx,
                               const char *(*get_name)(const void *ctx, uint32_t i, size_t *len),
                               const void *ctx, uint32_t *dup);
/* Index of name, or -1. */
int64_t    moe__nameset_find(const moe__nameset *s, const char *name, size_t len,
                             const char *(*get_name)(const void *ctx, uint32_t i, size_t *len),
                             const void *ctx);

/* A tensor or key name is acceptable: 1 <= len <= max, no byte < 0x20 or
 * 0x7F, valid UTF-8 (checked by the JSON parser for safetensors; here for
 * GGUF). */
moe_status moe__check_name(const char *what, const char *name, size_t len, uint64_t max,
                           char *err, size_t errlen);

#endif /* MOE_IO_IO_H */
