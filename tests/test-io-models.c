/*
 * test-io-models.c - real model files end to end: every tiny checkpoint that
 * tests/python/gen_models.py wrote with the `safetensors` and `gguf` Python
 * packages is opened, described, and one MoE layer is run on the reference
 * and CPU backends; the output must match the NumPy float64 reference
 * (computed in the generator from the stored weights) within the MANIFEST's
 * NMSE bound (1e-10 for f32 weights).
 */
#include "test.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct model_case {
    char    name[64], path[128], family[32];
    int     layer, n_experts, top_k, n_moe, d_model;
    double  tol;
} model_case;

static int read_cases(model_case *cs, int cap) {
    char path[1024];
    snprintf(path, sizeof path, "%s/models/MANIFEST", test_data_dir());
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[512];
    int n = 0;
    while (n < cap && fgets(line, sizeof line, f)) {
        model_case *c = &cs[n];
        if (line[0] == '#') continue;
        if (sscanf(line, "%63s %127s %d %lf %31s %d %d %d %d", c->name, c->path, &c->layer, &c->tol,
                   c->family, &c->n_experts, &c->top_k, &c->n_moe, &c->d_model) == 9)
            n++;
    }
    fclose(f);
    return n;
}

TEST(io_models_forward_matches_reference) {
    model_case cs[64];
    int n = read_cases(cs, 64);
    if (n < 0) TEST_SKIP("no %s/models/MANIFEST (make testdata)", test_data_dir());
    CHECK(n >= 15, "only %d models", n);
    for (int i = 0; i < n; i++) {
        const model_case *c = &cs[i];
        char path[1024], err[512];
        snprintf(path, sizeof path, "%s/models/%s", test_data_dir(), c->path);
        moe_model *m = NULL;
        moe_status s = moe_model_open(path, NULL, &m, err, sizeof err);
        CHECK(s == MOE_OK, "%s: %s: %s", c->name, moe_status_name(s), err);
        if (s) continue;
        moe_model_desc d;
        CHECK_STATUS(moe_model_info(m, &d), MOE_OK);
        CHECK(!strcmp(d.family, c->family), "%s: family %s, want %s", c->name, d.family, c->family);
        CHECK(d.n_experts == c->n_experts && d.top_k == c->top_k && d.d_model == c->d_model,
              "%s: E %d k %d H %lld", c->name, d.n_experts, d.top_k, (long long)d.d_model);
        CHECK(d.n_moe_layers == c->n_moe, "%s: %d MoE layers, want %d", c->name, d.n_moe_layers, c->n_moe);
        CHECK(moe_model_layer_is_moe(m, c->layer), "%s: layer %d not MoE", c->name, c->layer);
        CHECK(d.expert_format != MOE_FORMAT_COUNT, "%s: no expert format", c->name);
        moe_npy x, ref;
        snprintf(path, sizeof path, "%s/models/%s.x.npy", test_data_dir(), c->name);
        REQUIRE(moe_npy_read(path, &x, err, sizeof err) == MOE_OK, "%s", err);
        snprintf(path, sizeof path, "%s/models/%s.ref.npy", test_data_dir(), c->name);
        REQUIRE(moe_npy_read(path, &ref, err, sizeof err) == MOE_OK, "%s", err);
        CHECK(x.format == MOE_FORMAT_F32 && x.n_dims == 2 && x.shape[1] == c->d_model, "%s: x", c->name);
        test_model_layer_check(m, c->name, c->layer, c->d_model, &x, &ref, c->tol, true);
        moe_npy_free(&x);
        moe_npy_free(&ref);
        moe_model_close(m);
    }
}

/* Tensor listing agrees with what the generator wrote (a spot check). */
TEST(io_models_tensor_listing) {
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/models/qwen2_moe", test_data_dir());
    moe_model *m = NULL;
    moe_status s = moe_model_open(path, NULL, &m, err, sizeof err);
    if (s == MOE_ERR_MISSING || s == MOE_ERR_IO) TEST_SKIP("no %s (make testdata)", path);
    REQUIRE(s == MOE_OK, "%s", err);
    moe_model_desc d;
    moe_model_info(m, &d);
    CHECK(d.n_files == 2 && !strcmp(d.container, "safetensors"), "%d files", d.n_files);
    CHECK(d.n_shared_experts == 1 && d.d_ff_shared == 48 && d.shared_gate, "shared %d %lld",
          d.n_shared_experts, (long long)d.d_ff_shared);
    CHECK(!moe_model_layer_is_moe(m, 0) && moe_model_layer_is_moe(m, 1), "mlp_only_layers [0]");
    int found = 0;
    uint64_t bytes = 0;
    for (int64_t i = 0; i < moe_model_n_tensors(m); i++) {
        moe_model_tensor t;
        CHECK_STATUS(moe_model_tensor_get(m, i, &t), MOE_OK);
        bytes += t.nbytes;
        if (!strcmp(t.name, "model.layers.1.mlp.experts.3.down_proj.weight")) {
            found = 1;
            CHECK(t.n_dims == 2 && t.shape[0] == 64 && t.shape[1] == 32 && !strcmp(t.dtype, "F32") &&
                  t.nbytes == 64 * 32 * 4, "down_proj %s (%lld, %lld)", t.dtype, (long long)t.shape[0],
                  (long long)t.shape[1]);
        }
    }
    CHECK(found, "down_proj of expert 3 not listed");
    CHECK(bytes == d.tensor_bytes, "bytes %llu vs %llu", (unsigned long long)bytes,
          (unsigned long long)d.tensor_bytes);
    moe_model_tensor t;
    CHECK_STATUS(moe_model_tensor_get(m, moe_model_n_tensors(m), &t), MOE_ERR_RANGE);
    moe_model_layer *ml = NULL;
    CHECK_STATUS(moe_model_layer_create(m, 0, NULL, &ml, err, sizeof err), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_model_layer_create(m, 2, NULL, &ml, err, sizeof err), MOE_ERR_RANGE);
    moe_model_close(m);
}

/* The CLI on a real checkpoint: `moe info` and `moe forward` (the `moe`
 * binary next to this test runner; skipped when it was not built). */
TEST(io_cli_info_and_forward) {
    char exe[1024], moe[1100], cmd[4096], path[1024], out[1024], err[256];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) TEST_SKIP("no /proc/self/exe");
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash) TEST_SKIP("no directory");
    *slash = '\0';
    snprintf(moe, sizeof moe, "%s/moe", exe);
    if (access(moe, X_OK) != 0) TEST_SKIP("%s not built", moe);
    snprintf(path, sizeof path, "%s/models/deepseek_v3", test_data_dir());
    if (access(path, R_OK) != 0) TEST_SKIP("no %s (make testdata)", path);
    snprintf(cmd, sizeof cmd, "'%s' info '%s'", moe, path);
    FILE *p = popen(cmd, "r");
    REQUIRE(p != NULL);
    char line[512];
    int family = 0, routing = 0;
    while (fgets(line, sizeof line, p)) {
        if (strstr(line, "family") && strstr(line, "deepseek_v3")) family = 1;
        if (strstr(line, "routing") && strstr(line, "sigmoid") && strstr(line, "groups 4 keep 2") &&
            strstr(line, "scale 2.5") && strstr(line, "correction bias"))
            routing = 1;
    }
    CHECK(pclose(p) == 0, "moe info failed");
    CHECK(family && routing, "moe info output lacks the family or routing line");
    snprintf(out, sizeof out, "/tmp/moe-test-cli-%d.npy", (int)getpid());
    snprintf(cmd, sizeof cmd, "'%s' forward --model '%s' --layer 0 --input '%s/models/deepseek_v3.x.npy' "
             "--output '%s' --backend ref 2>/dev/null", moe, path, test_data_dir(), out);
    REQUIRE(system(cmd) == 0, "%s", cmd);
    moe_npy y, ref;
    REQUIRE(moe_npy_read(out, &y, err, sizeof err) == MOE_OK, "%s", err);
    snprintf(path, sizeof path, "%s/models/deepseek_v3.ref.npy", test_data_dir());
    REQUIRE(moe_npy_read(path, &ref, err, sizeof err) == MOE_OK, "%s", err);
    CHECK(y.n_dims == 2 && y.shape[0] == ref.shape[0] && y.shape[1] == ref.shape[1] && y.format == MOE_FORMAT_F32);
    if (y.nbytes == ref.nbytes) {
        double e = test_nmse_f(y.data, ref.data, ref.nbytes / 4);
        CHECK(e <= 1e-10, "moe forward NMSE %.3g", e);
    }
    moe_npy_free(&y);
    moe_npy_free(&ref);
    remove(out);
    /* a bad layer index is a usage error with exit status 1, not a crash */
    snprintf(cmd, sizeof cmd, "'%s' forward --model '%s/models/deepseek_v3' --layer 7 --input '%s/models/deepseek_v3.x.npy' "
             "--output '%s' 2>/dev/null", moe, test_data_dir(), test_data_dir(), out);
    int rc = system(cmd);
    CHECK(rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 1, "exit %d", rc);
}

/* A copy of checkpoint `name` whose config.json has `from` replaced by `to`
 * (the weights are a symlink): opening it must give `want`. */
static void open_edited(const char *name, const char *from, const char *to, moe_status want) {
    char src[1024], dir[256], path[1300], err[512];
    snprintf(src, sizeof src, "%s/models/%s", test_data_dir(), name);
    snprintf(dir, sizeof dir, "/tmp/moe-test-edit-%d", (int)getpid());
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/config.json", src);
    FILE *f = fopen(path, "r");
    if (!f) {
        test_fail(__FILE__, __LINE__, "no %s (make testdata)", path);
        return;
    }
    static char text[1 << 16];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    char *at = strstr(text, from);
    CHECK(at != NULL, "%s: no \"%s\" in its config", name, from);
    snprintf(path, sizeof path, "%s/config.json", dir);
    f = fopen(path, "w");
    if (at && f) fprintf(f, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
    if (f) fclose(f);
    char link[1300], rel[1300], target[PATH_MAX];
    snprintf(link, sizeof link, "%s/model.safetensors", dir);
    snprintf(rel, sizeof rel, "%s/model.safetensors", src);
    if (!realpath(rel, target)) {   /* the data dir may be relative: the link is not */
        test_fail(__FILE__, __LINE__, "no %s", rel);
        return;
    }
    unlink(link);
    CHECK(symlink(target, link) == 0, "symlink %s", link);
    moe_model *m = NULL;
    moe_status s = moe_model_open(dir, NULL, &m, err, sizeof err);
    CHECK(s == want, "%s with %s: %s (%s), want %s", name, to, moe_status_name(s), err,
          moe_status_name(want));
    moe_model_close(m);
    unlink(link);
    unlink(path);
    rmdir(dir);
}

/* GPTQ / AWQ variants the loader does not run are refused when the model is
 * opened, with the reason; the ones it runs open. */
TEST(io_models_gptq_awq_config) {
    char path[1024];
    snprintf(path, sizeof path, "%s/models/qwen3_moe_gptq4", test_data_dir());
    if (access(path, R_OK) != 0) TEST_SKIP("no %s (make testdata)", path);
    open_edited("qwen3_moe_gptq4", "\"sym\": true", "\"sym\": false", MOE_ERR_UNSUPPORTED);
    open_edited("qwen3_moe_gptq4", "\"group_size\": 64", "\"group_size\": -1", MOE_ERR_UNSUPPORTED);
    open_edited("qwen3_moe_gptq4", "\"bits\": 4", "\"bits\": 3", MOE_ERR_UNSUPPORTED);
    open_edited("qwen3_moe_gptq4", "\"checkpoint_format\": \"gptq\"",
                "\"checkpoint_format\": \"gptq_v2\"", MOE_OK);
    open_edited("qwen2_moe_awq", "\"version\": \"gemm\"", "\"version\": \"gemv\"",
                MOE_ERR_UNSUPPORTED);
    open_edited("qwen2_moe_awq", "\"zero_point\": true", "\"zero_point\": false",
                MOE_ERR_UNSUPPORTED);
    open_edited("qwen2_moe_awq", "\"version\": \"gemm\"", "\"version\": \"GEMM\"", MOE_OK);
}
