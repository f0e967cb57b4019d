/*
 * test-io-bad.c - the malformed-file corpus: every file or checkpoint
 * directory in tests/data/bad/ (written by tests/python/make_bad_files.py)
 * must fail with exactly the status its MANIFEST line names, with a
 * message, and never crash.
 */
#include "test.h"

#include <stdlib.h>
#include <string.h>

static const char *bad_dir(void) {
    const char *d = getenv("MOE_BAD_DIR");
    return d && *d ? d : "tests/data/bad";
}

TEST(io_bad_files_manifest) {
    char path[1024];
    snprintf(path, sizeof path, "%s/MANIFEST", bad_dir());
    FILE *f = fopen(path, "r");
    if (!f) TEST_SKIP("%s not found (run from the repository root)", path);
    char line[1024];
    int n = 0, n_dirs = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        char name[256], code[64];
        if (sscanf(line, "%255s %63s", name, code) != 2) continue;
        snprintf(path, sizeof path, "%s/%s", bad_dir(), name);
        char err[512] = "";
        moe_status s;
        size_t nl = strlen(name);
        if (nl > 4 && !strcmp(name + nl - 4, ".npy")) {
            moe_npy a;
            s = moe_npy_read(path, &a, err, sizeof err);
            if (!s) moe_npy_free(&a);
        } else {
            moe_model *m = NULL;
            s = moe_model_open(path, NULL, &m, err, sizeof err);
            CHECK(s != MOE_OK || m != NULL, "%s", name);
            moe_model_close(m);
            if (nl > 2 && !strcmp(name + nl - 2, ".d")) n_dirs++;
        }
        CHECK(!strcmp(moe_status_name(s), code), "%s: got %s (%s), want %s", name, moe_status_name(s),
              err, code);
        CHECK(s == MOE_OK || err[0] != '\0', "%s: no message", name);
        n++;
    }
    fclose(f);
    CHECK(n >= 60, "only %d cases", n);
    CHECK(n_dirs >= 10, "only %d checkpoint directories", n_dirs);
}
