/*
 * fuzz.h - what the fuzz targets share. Each fuzz/fuzz-*.c defines
 * LLVMFuzzerTestOneInput; built with clang -fsanitize=fuzzer it is a libFuzzer
 * binary, built with fuzz/fuzz-main.c it replays files without libFuzzer.
 *
 * The targets check the library's contract on every input: a status is
 * returned (never a crash), a failure comes with a message, and a success
 * yields tables whose every byte can be touched inside the input.
 */
#ifndef MOE_FUZZ_H
#define MOE_FUZZ_H

#include "moe.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A broken contract is a finding: abort so the fuzzer records the input. */
#define FUZZ_CHECK(cond)                                                            \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "fuzz contract broken: %s (%s:%d)\n", #cond, __FILE__,  \
                    __LINE__);                                                      \
            abort();                                                                \
        }                                                                           \
    } while (0)

/* Folds bytes into a sink so reads cannot be optimized away. */
static volatile uint8_t fuzz_sink;
static inline void fuzz_touch(const void *p, size_t n) {
    const uint8_t *b = (const uint8_t *)p;
    if (n) fuzz_sink ^= b[0] ^ b[n - 1];
}

#endif /* MOE_FUZZ_H */
