/*
 * fuzz-config.c - config.json through the family binding
 * (src/io/family-hf.c): the input is the config text; the weights are a
 * valid safetensors file with no tensors, so every config path runs up to
 * tensor lookup.
 */
#include "fuzz.h"
#include "model.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const uint8_t empty_st[16] = { 8, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' ' };
    moe_model *m = NULL;
    char err[256] = "";
    moe_status s = moe__model_open_st_buffer((const char *)data, size, empty_st, sizeof empty_st, NULL,
                                             &m, err, sizeof err);
    FUZZ_CHECK(s != MOE_OK || m != NULL);
    if (s) FUZZ_CHECK(err[0] != '\0');
    if (m) {
        moe_model_desc d;
        FUZZ_CHECK(moe_model_info(m, &d) == MOE_OK);
        moe_model_close(m);
    }
    return 0;
}
