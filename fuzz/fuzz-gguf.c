/*
 * fuzz-gguf.c - the GGUF reader (src/io/gguf.c): parse, then read every
 * key and value through the typed getters and touch every tensor's data.
 */
#include "fuzz.h"
#include "gguf.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    moe__io_limits lim;
    moe__io_limits_init(&lim, NULL);
    moe__gguf g;
    char err[256] = "";
    moe_status s = moe__gguf_parse(data, size, &lim, &g, err, sizeof err);
    if (s) {
        FUZZ_CHECK(err[0] != '\0');
        return 0;
    }
    for (uint64_t i = 0; i < g.n_kv; i++) {
        char key[256], str[64];
        if (g.kv[i].key_len >= sizeof key) continue;
        memcpy(key, g.kv[i].key, (size_t)g.kv[i].key_len);
        key[g.kv[i].key_len] = '\0';
        int64_t v;
        double f;
        int b;
        moe__gguf_get_i64(&g, key, &v, err, sizeof err);
        moe__gguf_get_f64(&g, key, &f, err, sizeof err);
        moe__gguf_get_bool(&g, key, &b, err, sizeof err);
        moe__gguf_get_str(&g, key, str, sizeof str, err, sizeof err);
        FUZZ_CHECK(g.kv[i].val >= data && g.kv[i].val + g.kv[i].val_size <= data + size);
        fuzz_touch(g.kv[i].val, (size_t)g.kv[i].val_size);
    }
    for (uint64_t i = 0; i < g.n_tensors; i++) {
        const moe__gguf_tensor *t = &g.tensors[i];
        FUZZ_CHECK(strlen(t->name) == t->name_len);
        FUZZ_CHECK(g.data_offset + t->offset + t->nbytes <= size);
        fuzz_touch(data + g.data_offset + t->offset, (size_t)t->nbytes);
    }
    moe__gguf_free(&g);
    return 0;
}
