/*
 * json.c - the strict, bounded JSON parser of json.h.
 *
 * Recursive descent with an explicit depth counter (the recursion is bounded
 * by max_depth, 64 by default, so the C stack use is bounded too). Nodes are
 * appended in document order to an array that grows by doubling; strings are
 * decoded into an arena sized once to the input length (decoding never
 * lengthens a string: every escape is at least as long as what it makes).
 * After each object closes, its keys are checked for duplicates with a
 * temporary open-addressing hash table: O(n) per object, not O(n^2).
 */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct parser {
    const char     *s;
    size_t          n, pos;
    int             depth, max_depth;
    moe__json_node *nodes;
    uint32_t        n_nodes, cap_nodes;
    char           *arena;
    size_t          arena_pos;
    char           *err;
    size_t          errlen;
} parser;

static moe_status fail(parser *p, moe_status s, const char *what) {
    return moe__errf(p->err, p->errlen, s, "JSON: %s at byte %zu", what, p->pos);
}

static void skip_ws(parser *p) {
    while (p->pos < p->n) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static moe_status new_node(parser *p, uint32_t *idx) {
    if (p->n_nodes == p->cap_nodes) {
        if (p->cap_nodes >= UINT32_MAX / 2) return fail(p, MOE_ERR_LIMIT, "too many values");
        uint32_t cap = p->cap_nodes ? p->cap_nodes * 2 : 64;
        moe__json_node *nn = moe__calloc(cap, sizeof *nn);
        if (!nn) return fail(p, MOE_ERR_NOMEM, "out of memory");
        if (p->n_nodes) memcpy(nn, p->nodes, p->n_nodes * sizeof *nn);
        moe__free(p->nodes);
        p->nodes = nn;
        p->cap_nodes = cap;
    }
    *idx = p->n_nodes++;
    memset(&p->nodes[*idx], 0, sizeof p->nodes[*idx]);
    return MOE_OK;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static moe_status read_hex4(parser *p, uint32_t *v) {
    if (p->n - p->pos < 4) return fail(p, MOE_ERR_JSON, "truncated \\u escape");
    uint32_t x = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p->s[p->pos + i]);
        if (h < 0) return fail(p, MOE_ERR_JSON, "bad hex digit in \\u escape");
        x = x * 16 + (uint32_t)h;
    }
    p->pos += 4;
    *v = x;
    return MOE_OK;
}

static size_t put_utf8(char *o, uint32_t cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

size_t moe__utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len;
    uint32_t cp, min;
    if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; min = 0x10000; }
    else return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

/* Decodes the string starting at the opening quote into the arena. */
static moe_status parse_string(parser *p, const char **out, size_t *out_len) {
    p->pos++; /* opening quote */
    char *o = p->arena + p->arena_pos, *start = o;
    for (;;) {
        if (p->pos >= p->n) return fail(p, MOE_ERR_JSON, "unterminated string");
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c == '"') { p->pos++; break; }
        if (c < 0x20) return fail(p, MOE_ERR_JSON, "control character in string");
        if (c == '\\') {
            if (p->pos + 1 >= p->n) return fail(p, MOE_ERR_JSON, "unterminated escape");
            char e = p->s[p->pos + 1];
            p->pos += 2;
            switch (e) {
            case '"': *o++ = '"'; break;
            case '\\': *o++ = '\\'; break;
            case '/': *o++ = '/'; break;
            case 'b': *o++ = '\b'; break;
            case 'f': *o++ = '\f'; break;
            case 'n': *o++ = '\n'; break;
            case 'r': *o++ = '\r'; break;
            case 't': *o++ = '\t'; break;
            case 'u': {
                uint32_t cp;
                moe_status s = read_hex4(p, &cp);
                if (s) return s;
                if (cp >= 0xDC00 && cp <= 0xDFFF) return fail(p, MOE_ERR_JSON, "lone low surrogate");
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    uint32_t lo;
                    if (p->n - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
                        return fail(p, MOE_ERR_JSON, "lone high surrogate");
                    p->pos += 2;
                    if ((s = read_hex4(p, &lo))) return s;
                    if (lo < 0xDC00 || lo > 0xDFFF) return fail(p, MOE_ERR_JSON, "bad surrogate pair");
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                o += put_utf8(o, cp); /* <= 4 bytes from >= 6 input bytes */
                break;
            }
            default: p->pos -= 1; return fail(p, MOE_ERR_JSON, "bad escape");
            }
            continue;
        }
        if (c < 0x80) { *o++ = (char)c; p->pos++; continue; }
        size_t l = moe__utf8_len((const unsigned char *)p->s + p->pos, p->n - p->pos);
        if (!l) return fail(p, MOE_ERR_JSON, "invalid UTF-8");
        memcpy(o, p->s + p->pos, l);
        o += l;
        p->pos += l;
    }
    *o++ = '\0';
    *out = start;
    *out_len = (size_t)(o - start) - 1;
    p->arena_pos += (size_t)(o - start);
    return MOE_OK;
}

static moe_status parse_number(parser *p, moe__json_node *nd) {
    size_t b = p->pos;
    const char *s = p->s;
    int neg = 0, is_int = 1;
    if (p->pos < p->n && s[p->pos] == '-') { neg = 1; p->pos++; }
    if (p->pos >= p->n || s[p->pos] < '0' || s[p->pos] > '9') return fail(p, MOE_ERR_JSON, "bad number");
    if (s[p->pos] == '0' && p->pos + 1 < p->n && s[p->pos + 1] >= '0' && s[p->pos + 1] <= '9')
        return fail(p, MOE_ERR_JSON, "leading zero in number");
    uint64_t u = 0;
    int u_ok = 1;
    while (p->pos < p->n && s[p->pos] >= '0' && s[p->pos] <= '9') {
        unsigned d = (unsigned)(s[p->pos] - '0');
        if (u_ok && (__builtin_mul_overflow(u, 10, &u) || __builtin_add_overflow(u, d, &u))) u_ok = 0;
        p->pos++;
    }
    if (p->pos < p->n && s[p->pos] == '.') {
        is_int = 0;
        p->pos++;
        if (p->pos >= p->n || s[p->pos] < '0' || s[p->pos] > '9')
            return fail(p, MOE_ERR_JSON, "digit expected after '.'");
        while (p->pos < p->n && s[p->pos] >= '0' && s[p->pos] <= '9') p->pos++;
    }
    if (p->pos < p->n && (s[p->pos] == 'e' || s[p->pos] == 'E')) {
        is_int = 0;
        p->pos++;
        if (p->pos < p->n && (s[p->pos] == '+' || s[p->pos] == '-')) p->pos++;
        if (p->pos >= p->n || s[p->pos] < '0' || s[p->pos] > '9')
            return fail(p, MOE_ERR_JSON, "digit expected in exponent");
        while (p->pos < p->n && s[p->pos] >= '0' && s[p->pos] <= '9') p->pos++;
    }
    /* strtod needs a terminated copy; numbers longer than 64 bytes are
     * refused rather than copied (no real config has them). The grammar was
     * checked above, so a process locale whose decimal point is not '.'
     * makes strtod stop early and the number is refused (never misread). */
    size_t len = p->pos - b;
    char buf[72];
    if (len > 64) { p->pos = b; return fail(p, MOE_ERR_JSON, "number longer than 64 bytes"); }
    memcpy(buf, s + b, len);
    buf[len] = '\0';
    char *end;
    errno = 0;
    double d = strtod(buf, &end);
    if (end != buf + len) { p->pos = b; return fail(p, MOE_ERR_JSON, "number not convertible"); }
    if (!isfinite(d)) { p->pos = b; return fail(p, MOE_ERR_JSON, "number out of double range"); }
    nd->type = MOE__JSON_NUMBER;
    nd->num = d;
    if (is_int) {
        nd->num_flags = MOE__JSON_INT;
        if (u_ok && !neg) {
            nd->num_flags |= MOE__JSON_U64;
            nd->u = u;
            if (u <= (uint64_t)INT64_MAX) { nd->num_flags |= MOE__JSON_I64; nd->i = (int64_t)u; }
        } else if (u_ok && neg && u <= (uint64_t)INT64_MAX + 1) {
            nd->num_flags |= MOE__JSON_I64;
            nd->i = (int64_t)(0 - u);
            if (u == 0) { nd->num_flags |= MOE__JSON_U64; nd->u = 0; }
        }
    }
    return MOE_OK;
}

static moe_status match_lit(parser *p, const char *lit) {
    size_t l = strlen(lit);
    if (p->n - p->pos < l || memcmp(p->s + p->pos, lit, l) != 0)
        return fail(p, MOE_ERR_JSON, "unexpected character");
    p->pos += l;
    return MOE_OK;
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

/* Rejects duplicate keys among the members of object node `obj`. */
static moe_status check_dups(parser *p, uint32_t obj) {
    uint32_t n = p->nodes[obj].n_children;
    if (n < 2) return MOE_OK;
    if (n <= 8) { /* small objects (the common case): pairwise is cheaper */
        for (uint32_t a = obj + 1; a; a = p->nodes[a].next)
            for (uint32_t b = p->nodes[a].next; b; b = p->nodes[b].next)
                if (p->nodes[a].key_len == p->nodes[b].key_len &&
                    !memcmp(p->nodes[a].key, p->nodes[b].key, p->nodes[a].key_len))
                    return moe__errf(p->err, p->errlen, MOE_ERR_DUPLICATE,
                                     "JSON: duplicate key \"%.64s\"", p->nodes[b].key);
        return MOE_OK;
    }
    size_t cap = 16;
    while (cap < (size_t)n * 2) cap *= 2;
    uint32_t *tab = moe__calloc(cap, sizeof *tab);
    if (!tab) return fail(p, MOE_ERR_NOMEM, "out of memory");
    moe_status st = MOE_OK;
    for (uint32_t a = obj + 1; a; a = p->nodes[a].next) {
        const moe__json_node *na = &p->nodes[a];
        size_t h = (size_t)hash_bytes(na->key, na->key_len) & (cap - 1);
        while (tab[h]) {
            const moe__json_node *nb = &p->nodes[tab[h]];
            if (nb->key_len == na->key_len && !memcmp(nb->key, na->key, na->key_len)) {
                st = moe__errf(p->err, p->errlen, MOE_ERR_DUPLICATE,
                               "JSON: duplicate key \"%.64s\"", na->key);
                goto done;
            }
            h = (h + 1) & (cap - 1);
        }
        tab[h] = a;
    }
done:
    moe__free(tab);
    return st;
}

static moe_status parse_value(parser *p, uint32_t *out);

static moe_status parse_container(parser *p, uint32_t idx, int is_obj) {
    if (++p->depth > p->max_depth) return fail(p, MOE_ERR_LIMIT, "nesting deeper than the limit");
    p->nodes[idx].type = is_obj ? MOE__JSON_OBJECT : MOE__JSON_ARRAY;
    p->pos++; /* [ or { */
    skip_ws(p);
    char close = is_obj ? '}' : ']';
    if (p->pos < p->n && p->s[p->pos] == close) { p->pos++; p->depth--; return MOE_OK; }
    uint32_t prev = 0, count = 0;
    for (;;) {
        const char *key = NULL;
        size_t key_len = 0;
        moe_status s;
        if (is_obj) {
            skip_ws(p);
            if (p->pos >= p->n || p->s[p->pos] != '"') return fail(p, MOE_ERR_JSON, "object key expected");
            if ((s = parse_string(p, &key, &key_len))) return s;
            if (key_len > UINT32_MAX) return fail(p, MOE_ERR_LIMIT, "key too long");
            skip_ws(p);
            if (p->pos >= p->n || p->s[p->pos] != ':') return fail(p, MOE_ERR_JSON, "':' expected");
            p->pos++;
        }
        uint32_t child;
        if ((s = parse_value(p, &child))) return s;
        if (is_obj) { p->nodes[child].key = key; p->nodes[child].key_len = (uint32_t)key_len; }
        if (prev) p->nodes[prev].next = child;
        prev = child;
        count++;
        skip_ws(p);
        if (p->pos >= p->n) return fail(p, MOE_ERR_JSON, "unterminated container");
        char c = p->s[p->pos++];
        if (c == close) break;
        if (c != ',') { p->pos--; return fail(p, MOE_ERR_JSON, "',' or closing bracket expected"); }
    }
    p->nodes[idx].n_children = count;
    p->depth--;
    return is_obj ? check_dups(p, idx) : MOE_OK;
}

static moe_status parse_value(parser *p, uint32_t *out) {
    skip_ws(p);
    if (p->pos >= p->n) return fail(p, MOE_ERR_JSON, "value expected");
    uint32_t idx = 0;
    moe_status s = new_node(p, &idx);
    if (s) return s;
    *out = idx;
    char c = p->s[p->pos];
    switch (c) {
    case '{': return parse_container(p, idx, 1);
    case '[': return parse_container(p, idx, 0);
    case '"': {
        const char *str;
        size_t len;
        if ((s = parse_string(p, &str, &len))) return s;
        p->nodes[idx].type = MOE__JSON_STRING;
        p->nodes[idx].str = str;
        p->nodes[idx].len = len;
        return MOE_OK;
    }
    case 't': p->nodes[idx].type = MOE__JSON_TRUE; return match_lit(p, "true");
    case 'f': p->nodes[idx].type = MOE__JSON_FALSE; return match_lit(p, "false");
    case 'n': p->nodes[idx].type = MOE__JSON_NULL; return match_lit(p, "null");
    default:
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number(p, &p->nodes[idx]);
        return fail(p, MOE_ERR_JSON, "unexpected character");
    }
}

/* An upper bound on the values in a valid document, from one pass: each
 * value but the first of its container follows a ',', the first follows a
 * '[' or '{', and the root is one more (commas and brackets inside strings do
 * not count). Sizing the node array once avoids regrowing it (copies and 2x
 * slack); for invalid input the bound may be low, and the array then grows. */
static size_t count_values(const char *s, size_t n) {
    size_t count = 1;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '"') {
            for (i++; i < n && s[i] != '"'; i++)
                if (s[i] == '\\') i++;
        } else if (c == ',' || c == '[' || c == '{') {
            count++;
        }
    }
    return count;
}

moe_status moe__json_parse(const char *text, size_t len, const moe__json_limits *lim,
                           moe__json *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    size_t max_bytes = lim && lim->max_bytes ? lim->max_bytes : 100000000;
    int max_depth = lim && lim->max_depth > 0 ? lim->max_depth : 64;
    if (!text && len) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "JSON: NULL text");
    if (len > max_bytes)
        return moe__errf(err, errlen, MOE_ERR_LIMIT, "JSON: %zu bytes exceed the limit %zu",
                         len, max_bytes);
    parser p = { .s = text, .n = len, .max_depth = max_depth, .err = err, .errlen = errlen };
    /* a valid document has at most (len + 1) / 2 values: that caps what
     * garbage (",,,,") can make us reserve */
    size_t cap = count_values(text, len);
    if (cap > len / 2 + 1) cap = len / 2 + 1;
    if (cap > UINT32_MAX / 2) cap = UINT32_MAX / 2;
    p.arena = moe__malloc(len + 1);
    p.nodes = moe__calloc(cap, sizeof *p.nodes);
    if (!p.arena || !p.nodes) {
        moe__free(p.arena);
        moe__free(p.nodes);
        return moe__errf(err, errlen, MOE_ERR_NOMEM, "JSON: out of memory");
    }
    p.cap_nodes = (uint32_t)cap;
    uint32_t root;
    moe_status s = parse_value(&p, &root);
    if (!s) {
        skip_ws(&p);
        if (p.pos != p.n) s = fail(&p, MOE_ERR_JSON, "trailing characters after the value");
    }
    if (s) {
        moe__free(p.nodes);
        moe__free(p.arena);
        return s;
    }
    out->nodes = p.nodes;
    out->n_nodes = p.n_nodes;
    out->arena = p.arena;
    return MOE_OK;
}

void moe__json_free(moe__json *j) {
    if (!j) return;
    moe__free(j->nodes);
    moe__free(j->arena);
    memset(j, 0, sizeof *j);
}

uint32_t moe__json_get(const moe__json *j, uint32_t n, const char *key) {
    if (!j->nodes || n >= j->n_nodes || j->nodes[n].type != MOE__JSON_OBJECT) return 0;
    size_t kl = strlen(key);
    for (uint32_t c = moe__json_child(j, n); c; c = j->nodes[c].next)
        if (j->nodes[c].key_len == kl && !memcmp(j->nodes[c].key, key, kl)) return c;
    return 0;
}

moe_status moe__json_get_i64(const moe__json *j, uint32_t obj, const char *key, int64_t lo,
                             int64_t hi, int64_t *v, char *err, size_t errlen) {
    uint32_t c = moe__json_get(j, obj, key);
    if (!c) return MOE_ERR_MISSING;
    const moe__json_node *n = &j->nodes[c];
    if (n->type != MOE__JSON_NUMBER || !(n->num_flags & MOE__JSON_I64))
        return moe__errf(err, errlen, MOE_ERR_CONFIG, "config: \"%s\" must be an integer", key);
    if (n->i < lo || n->i > hi)
        return moe__errf(err, errlen, MOE_ERR_CONFIG,
                         "config: \"%s\" = %lld is outside [%lld, %lld]", key,
                         (long long)n->i, (long long)lo, (long long)hi);
    *v = n->i;
    return MOE_OK;
}

moe_status moe__json_get_f64(const moe__json *j, uint32_t obj, const char *key, double *v,
                             char *err, size_t errlen) {
    uint32_t c = moe__json_get(j, obj, key);
    if (!c) return MOE_ERR_MISSING;
    if (j->nodes[c].type != MOE__JSON_NUMBER)
        return moe__errf(err, errlen, MOE_ERR_CONFIG, "config: \"%s\" must be a number", key);
    *v = j->nodes[c].num;
    return MOE_OK;
}

moe_status moe__json_get_bool(const moe__json *j, uint32_t obj, const char *key, int *v,
                              char *err, size_t errlen) {
    uint32_t c = moe__json_get(j, obj, key);
    if (!c) return MOE_ERR_MISSING;
    uint8_t t = j->nodes[c].type;
    if (t != MOE__JSON_TRUE && t != MOE__JSON_FALSE)
        return moe__errf(err, errlen, MOE_ERR_CONFIG, "config: \"%s\" must be true or false", key);
    *v = t == MOE__JSON_TRUE;
    return MOE_OK;
}

moe_status moe__json_get_str(const moe__json *j, uint32_t obj, const char *key, const char **v,
                             char *err, size_t errlen) {
    uint32_t c = moe__json_get(j, obj, key);
    if (!c) return MOE_ERR_MISSING;
    const moe__json_node *n = &j->nodes[c];
    if (n->type != MOE__JSON_STRING || strlen(n->str) != n->len)
        return moe__errf(err, errlen, MOE_ERR_CONFIG, "config: \"%s\" must be a string", key);
    *v = n->str;
    return MOE_OK;
}
