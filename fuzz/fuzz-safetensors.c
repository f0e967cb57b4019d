/*
 * fuzz-safetensors.c - the safetensors header and offset validation
 * (src/io/safetensors.c): parse, then touch every tensor's name and the
 * first and last byte of its data, as OSS-Fuzz's safetensors target does.
 */
#include "fuzz.h"
#include "safetensors.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    moe__io_limits lim;
    moe__io_limits_init(&lim, NULL);
    moe__st_file f;
    char err[256] = "";
    moe_status s = moe__st_parse(data, size, &lim, &f, err, sizeof err);
    if (s) {
        FUZZ_CHECK(err[0] != '\0');
        return 0;
    }
    for (uint32_t i = 0; i < f.n_tensors; i++) {
        const moe__st_tensor *t = &f.tensors[i];
        FUZZ_CHECK(strlen(t->name) == t->name_len);
        FUZZ_CHECK(t->begin <= t->end && t->end <= f.data_size);
        fuzz_touch(data + f.data_offset + t->begin, (size_t)(t->end - t->begin));
    }
    moe__st_free(&f);
    return 0;
}
