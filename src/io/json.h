/*
 * json.h - a small, strict, bounded JSON parser for untrusted model files
 * (safetensors headers, config.json, model.safetensors.index.json).
 *
 * Why our own: the inputs are attacker-controlled and small; we need exact
 * integers up to 2^64-1 (safetensors offsets), duplicate keys rejected, a
 * depth limit, strict UTF-8, and every failure mapped to a precise status
 * with the byte offset in the message. ~500 lines we can fuzz beat a
 * dependency whose duplicate-key and depth behaviour we would have to patch.
 *
 * Grammar: RFC 8259, nothing more (no comments, no trailing commas, no NaN,
 * no leading zeros, no control characters in strings). Whitespace is allowed
 * before and after the top-level value (safetensors writers pad with spaces).
 *
 * Result: a flat array of nodes in document order. Node 0 is the root. A
 * container's children follow it, linked by `next` (node index, 0 = none:
 * the root is never a child). Object members carry their key. Strings are
 * decoded (escapes resolved) into one arena, each NUL-terminated; `len` is
 * the decoded length and may include embedded NULs, which callers that need
 * C strings must reject.
 *
 * Memory: the arena is at most the input length + 1 bytes and the node array
 * (56 bytes a node) is sized once by a pre-count of the values, at most one
 * per 2 input bytes + 1 (every value but the last takes a byte plus a
 * separator), so peak memory is linear in the input, never in a count the
 * input declares.
 *
 * Errors: MOE_ERR_JSON (syntax, bad UTF-8, bad escape, bad number),
 * MOE_ERR_DUPLICATE (a key twice in one object), MOE_ERR_LIMIT (depth or
 * size over the limit), MOE_ERR_NOMEM.
 */
#ifndef MOE_IO_JSON_H
#define MOE_IO_JSON_H

#include "internal.h"

typedef enum moe__json_type {
    MOE__JSON_NULL = 0,
    MOE__JSON_FALSE,
    MOE__JSON_TRUE,
    MOE__JSON_NUMBER,
    MOE__JSON_STRING,
    MOE__JSON_ARRAY,
    MOE__JSON_OBJECT,
} moe__json_type;

/* Number flags. */
enum {
    MOE__JSON_INT  = 1u << 0,  /* integer syntax (no fraction or exponent)         */
    MOE__JSON_U64  = 1u << 1,  /* integer in [0, 2^64-1]: u is exact              */
    MOE__JSON_I64  = 1u << 2,  /* integer in [-2^63, 2^63-1]: i is exact           */
};

typedef struct moe__json_node {
    uint8_t     type;          /* moe__json_type                                     */
    uint8_t     num_flags;     /* MOE__JSON_INT | ...                                */
    uint32_t    next;          /* next sibling, 0 = last                             */
    uint32_t    n_children;    /* arrays and objects                                 */
    uint32_t    key_len;       /* object members: decoded key length                 */
    const char *key;           /* object members: decoded key (NUL-terminated)       */
    const char *str;           /* strings: decoded, NUL-terminated                   */
    size_t      len;           /* strings: decoded length                            */
    double      num;           /* numbers: nearest double                            */
    union {                    /* the same bits where both flags are set (0..2^63-1) */
        uint64_t u;            /* numbers with MOE__JSON_U64                         */
        int64_t  i;            /* numbers with MOE__JSON_I64                         */
    };
} moe__json_node;

typedef struct moe__json {
    moe__json_node *nodes;     /* (n_nodes) node 0 = root                            */
    uint32_t        n_nodes;
    char           *arena;     /* decoded strings                                    */
} moe__json;

typedef struct moe__json_limits {
    size_t max_bytes;          /* input length; 0 = 100,000,000                      */
    int    max_depth;          /* nesting of arrays and objects; 0 = 64              */
} moe__json_limits;

/* Parses text[0, len). On failure *out is empty (nothing to free) and err
 * says what and at which byte offset. */
moe_status moe__json_parse(const char *text, size_t len, const moe__json_limits *lim,
                           moe__json *out, char *err, size_t errlen);
void       moe__json_free(moe__json *j);

/* First child of container n (0 when empty). */
static inline uint32_t moe__json_child(const moe__json *j, uint32_t n) {
    return j->nodes[n].n_children ? n + 1 : 0;
}
/* Member of object n with this key, or 0 when absent (or n not an object). */
uint32_t moe__json_get(const moe__json *j, uint32_t n, const char *key);

/* Typed getters on a member of object `obj`. Each returns MOE_OK and sets
 * *v, MOE_ERR_MISSING when the key is absent (v untouched), or MOE_ERR_CONFIG
 * with a message naming the key when it has the wrong type or range. */
moe_status moe__json_get_i64(const moe__json *j, uint32_t obj, const char *key, int64_t lo,
                             int64_t hi, int64_t *v, char *err, size_t errlen);
moe_status moe__json_get_f64(const moe__json *j, uint32_t obj, const char *key, double *v,
                             char *err, size_t errlen);
moe_status moe__json_get_bool(const moe__json *j, uint32_t obj, const char *key, int *v,
                              char *err, size_t errlen);
/* The string has no embedded NUL. */
moe_status moe__json_get_str(const moe__json *j, uint32_t obj, const char *key, const char **v,
                             char *err, size_t errlen);

/* Length of the valid UTF-8 sequence at s[0, n) (lead byte >= 0x80), or 0
 * when invalid: overlong forms, surrogates and > U+10FFFF are invalid.
 * Shared by the JSON parser and the tensor-name checks. */
size_t moe__utf8_len(const unsigned char *s, size_t n);

#endif /* MOE_IO_JSON_H */
