/*
 * safetensors.h - the safetensors reader and the shard index reader.
 *
 * ===== Byte layout =====
 *
 *     [ 8 bytes ]  N    u64 little-endian: byte length of the JSON header
 *     [ N bytes ]  JSON UTF-8 object (writers pad it with spaces to a multiple of 8)
 *     [ rest    ]  tensor data; data_offsets are relative to its start, file offset 8 + N
 *
 *     {
 *       "__metadata__": { "format": "pt", ... },          optional, string -> string
 *       "model.layers.0.mlp.gate.weight": {
 *           "dtype": "BF16",                               see moe__dtype_from_st
 *           "shape": [64, 2048],                           u64 each, slowest first, <= 8 dims
 *           "data_offsets": [BEGIN, END]                   END one past the last byte
 *       }, ...
 *     }
 *
 * Validation, in order, each with its status (the reference implementation's
 * rules, tensor.rs, plus the stricter ones marked *):
 *
 *      1  file >= 8 bytes                                          ERR_TRUNCATED
 *      2  N <= max_header_bytes (100,000,000)                      ERR_LIMIT
 *      3  8 + N <= file size (checked add)                         ERR_TRUNCATED
 *      4  header is strict JSON, valid UTF-8, depth-limited        ERR_JSON / ERR_LIMIT
 *      5* no key twice in any object                               ERR_DUPLICATE
 *      6  root is an object, __metadata__ a map of strings,
 *         each entry an object of exactly dtype/shape/data_offsets*  ERR_FORMAT
 *         (a field missing: ERR_MISSING)
 *      7* names: 1..max_name_bytes bytes, no control bytes or NUL   ERR_NAME
 *      8  dtype known                                              ERR_DTYPE
 *      9  shape and offsets non-negative integers, <= 8 dims*       ERR_FORMAT / ERR_LIMIT
 *         an integer > 2^64-1                                      ERR_OVERFLOW
 *     10  n_tensors <= max_tensors*                                ERR_LIMIT
 *     11  prod(shape) * bits checked                               ERR_OVERFLOW
 *     12  bits % 8 == 0 (F4, F6)                                   ERR_ALIGNMENT
 *     13  BEGIN <= END <= data size                                ERR_OVERLAP / ERR_TRUNCATED
 *     14  END - BEGIN == size from shape and dtype                 ERR_SHAPE
 *     15  sorted by offset: first BEGIN 0, each BEGIN = previous END,
 *         last END = data size (no overlap, no gap, no trailing)   ERR_OVERLAP
 *
 * Alignment of tensor data is not required (other writers exist); readers
 * of the views must use unaligned loads or copy (memcpy).
 *
 * ===== Shard index (model.safetensors.index.json) =====
 *
 *     { "metadata": { "total_size": BYTES, ... },   optional
 *       "weight_map": { "TENSOR": "model-00001-of-00002.safetensors", ... } }
 *
 * Shard names are plain file names: no '/', no '\\', not "." or "..", no
 * control bytes (ERR_NAME). Every listed tensor must be in the shard named
 * (ERR_MISSING), a tensor may not appear in two shards (ERR_DUPLICATE), and
 * total_size, when present, must equal the sum of the shards' tensor bytes
 * (ERR_CONFIG).
 */
#ifndef MOE_IO_SAFETENSORS_H
#define MOE_IO_SAFETENSORS_H

#include "io.h"
#include "json.h"

typedef struct moe__st_tensor {
    const char *name;        /* NUL-terminated (in the JSON arena)                   */
    size_t      name_len;
    moe__dtype  dtype;
    int32_t     n_dims;
    uint64_t    shape[8];    /* slowest first                                        */
    uint64_t    begin, end;  /* relative to the data section                         */
} moe__st_tensor;

typedef struct moe__st_file {
    moe__json       json;
    moe__st_tensor *tensors;     /* (n_tensors) in header order                      */
    uint32_t        n_tensors;
    uint32_t        metadata;    /* JSON node of __metadata__, 0 = none              */
    uint64_t        data_offset; /* 8 + N                                            */
    uint64_t        data_size;
} moe__st_file;

/* Parses and validates a whole file held in buf[0, size). */
moe_status moe__st_parse(const uint8_t *buf, uint64_t size, const moe__io_limits *lim,
                         moe__st_file *f, char *err, size_t errlen);
void       moe__st_free(moe__st_file *f);

typedef struct moe__st_index {
    moe__json    json;
    uint32_t     n_entries;
    const char **tensor;     /* (n_entries) tensor names (JSON arena)                */
    uint32_t    *shard;      /* (n_entries) index into shards                        */
    uint32_t     n_shards;
    const char **shards;     /* (n_shards) distinct file names, first-seen order     */
    int          has_total;
    uint64_t     total_size;
} moe__st_index;

/* Parses an index JSON text[0, len). */
moe_status moe__st_index_parse(const char *text, size_t len, const moe__io_limits *lim,
                               moe__st_index *x, char *err, size_t errlen);
void       moe__st_index_free(moe__st_index *x);

#endif /* MOE_IO_SAFETENSORS_H */
