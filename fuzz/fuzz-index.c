/*
 * fuzz-index.c - the shard index reader (model.safetensors.index.json):
 * JSON, weight_map, shard-name validation.
 */
#include "fuzz.h"
#include "safetensors.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    moe__io_limits lim;
    moe__io_limits_init(&lim, NULL);
    moe__st_index x;
    char err[256] = "";
    moe_status s = moe__st_index_parse((const char *)data, size, &lim, &x, err, sizeof err);
    if (s) {
        FUZZ_CHECK(err[0] != '\0');
        return 0;
    }
    for (uint32_t i = 0; i < x.n_entries; i++) {
        FUZZ_CHECK(x.shard[i] < x.n_shards);
        const char *sh = x.shards[x.shard[i]];
        FUZZ_CHECK(!strchr(sh, '/') && strcmp(sh, "..") && strcmp(sh, "."));
        fuzz_touch(x.tensor[i], strlen(x.tensor[i]));
    }
    moe__st_index_free(&x);
    return 0;
}
