/*
 * fuzz-json.c - the JSON parser alone (src/io/json.c): parse, walk every
 * node, and call each typed getter on the root object.
 */
#include "fuzz.h"
#include "json.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    moe__json j;
    char err[256] = "";
    moe__json_limits lim = { .max_bytes = 1 << 24, .max_depth = 64 };
    moe_status s = moe__json_parse((const char *)data, size, &lim, &j, err, sizeof err);
    if (s) {
        FUZZ_CHECK(err[0] != '\0');
        FUZZ_CHECK(s == MOE_ERR_JSON || s == MOE_ERR_LIMIT || s == MOE_ERR_DUPLICATE || s == MOE_ERR_NOMEM);
        return 0;
    }
    for (uint32_t i = 0; i < j.n_nodes; i++) {
        const moe__json_node *n = &j.nodes[i];
        FUZZ_CHECK(n->next < j.n_nodes);
        if (n->type == MOE__JSON_STRING) FUZZ_CHECK(n->str[n->len] == '\0');
        if (n->key) FUZZ_CHECK(n->key[n->key_len] == '\0');
    }
    int64_t i64;
    double f;
    int b;
    const char *str;
    for (uint32_t c = moe__json_child(&j, 0); c && j.nodes[0].type == MOE__JSON_OBJECT; c = j.nodes[c].next) {
        const char *k = j.nodes[c].key;
        if (strlen(k) != j.nodes[c].key_len) continue;
        moe__json_get_i64(&j, 0, k, INT64_MIN, INT64_MAX, &i64, err, sizeof err);
        moe__json_get_f64(&j, 0, k, &f, err, sizeof err);
        moe__json_get_bool(&j, 0, k, &b, err, sizeof err);
        if (moe__json_get_str(&j, 0, k, &str, err, sizeof err) == MOE_OK) fuzz_touch(str, strlen(str));
    }
    moe__json_free(&j);
    return 0;
}
