/*
 * fuzz-npy.c - the .npy reader (src/io/npy.c).
 */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    moe_npy a;
    char err[256] = "";
    moe_status s = moe_npy_parse(data, size, &a, err, sizeof err);
    if (s) {
        FUZZ_CHECK(err[0] != '\0');
        return 0;
    }
    fuzz_touch(a.data, a.nbytes);
    moe_npy_free(&a);
    return 0;
}
