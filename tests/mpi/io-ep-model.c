/*
 * io-ep-model.c - real model files under expert parallelism: every rank
 * opens the same checkpoint written by tests/python/gen_models.py, builds
 * its own experts of one MoE layer from it (moe_model_layer_create with an
 * expert map: only this rank's experts are converted or borrowed), and runs
 * a slice of the tokens. Each rank's rows must equal, bit for bit, the
 * single-rank model layer built from the same file, and match the NumPy
 * reference within the MANIFEST bound.
 *
 *   mpirun -np N build/tests/mpi/io-ep-model [TESTDATA]   (default build/testdata)
 */
#include "mpi-test.h"

static moe_comm *g_comm;

static int run_case(const char *dir, const char *name, const char *path, int32_t layer, double tol,
                    moe_placement placement) {
    char why[256] = "", err[512], full[1024], case_name[128];
    int fail = 0;
    moe_model *m = NULL;
    moe_model_layer *one = NULL, *mine = NULL;
    moe_expert_map *map = NULL;
    moe_context *ctx = NULL;
    moe_npy x = { 0 }, ref = { 0 };
    float *out1 = NULL, *out = NULL;
    void *ws1 = NULL, *ws = NULL;
    snprintf(case_name, sizeof case_name, "model_%s_%s", name,
             placement == MOE_PLACEMENT_LINEAR ? "linear" : "round_robin");
    snprintf(full, sizeof full, "%s/models/%s", dir, path);
    if (moe_model_open(full, NULL, &m, err, sizeof err)) { fail = mt_fail(why, "open: %s", err); goto done; }
    snprintf(full, sizeof full, "%s/models/%s.x.npy", dir, name);
    if (moe_npy_read(full, &x, err, sizeof err)) { fail = mt_fail(why, "%s", err); goto done; }
    snprintf(full, sizeof full, "%s/models/%s.ref.npy", dir, name);
    if (moe_npy_read(full, &ref, err, sizeof err)) { fail = mt_fail(why, "%s", err); goto done; }
    moe_model_desc d;
    moe_model_info(m, &d);
    const int64_t T = x.shape[0], H = d.d_model;
    moe_context_options co = { .n_threads = 1 };
    if (moe_context_create(&co, &ctx, err, sizeof err)) { fail = mt_fail(why, "%s", err); goto done; }
    /* the single-rank layer over all tokens */
    moe_layer_options lo = { .context = ctx, .backend = MOE_BACKEND_CPU, .max_tokens = T };
    if (moe_model_layer_create(m, layer, &lo, &one, err, sizeof err)) { fail = mt_fail(why, "local: %s", err); goto done; }
    size_t ws1_size = moe_layer_workspace_size(moe_model_layer_layer(one), T);
    ws1 = aligned_alloc(64, (ws1_size + 63) / 64 * 64 + 64);
    out1 = malloc(sizeof(float) * (size_t)(T * H));
    if (moe_layer_forward(moe_model_layer_layer(one), T, x.data, NULL, moe_model_layer_shared(one), out1, ws1,
                          ws1_size)) {
        fail = mt_fail(why, "local forward: %s", moe_layer_last_error(moe_model_layer_layer(one)));
        goto done;
    }
    /* this rank's experts, this rank's tokens */
    moe_expert_map_options mo = { .n_experts = d.n_experts, .ep_size = mt_size, .ep_rank = mt_rank,
                                  .placement = placement };
    if (moe_expert_map_create(&mo, &map, err, sizeof err)) { fail = mt_fail(why, "map: %s", err); goto done; }
    moe_parallel par = { .mode = MOE_PARALLEL_EP, .comm = g_comm, .map = map };
    moe_layer_options el = { .context = ctx, .backend = MOE_BACKEND_CPU, .max_tokens = T, .parallel = &par };
    if (moe_model_layer_create(m, layer, &el, &mine, err, sizeof err)) { fail = mt_fail(why, "ep: %s", err); goto done; }
    int64_t lo_t = T * mt_rank / mt_size, hi_t = T * (mt_rank + 1) / mt_size, n = hi_t - lo_t;
    size_t ws_size = moe_layer_workspace_size(moe_model_layer_layer(mine), n);
    ws = aligned_alloc(64, (ws_size + 63) / 64 * 64 + 64);
    out = malloc(sizeof(float) * (size_t)(T * H + 1));
    if (moe_layer_forward(moe_model_layer_layer(mine), n, (const float *)x.data + lo_t * H, NULL,
                          moe_model_layer_shared(mine), out, ws, ws_size)) {
        fail = mt_fail(why, "ep forward: %s", moe_layer_last_error(moe_model_layer_layer(mine)));
        goto done;
    }
    if (memcmp(out, out1 + lo_t * H, sizeof(float) * (size_t)(n * H)))
        fail = mt_fail(why, "rank %d rows differ from the single-rank layer", mt_rank);
    double num = 0, den = 0;
    const float *r = (const float *)ref.data + lo_t * H;
    for (int64_t i = 0; i < n * H; i++) {
        num += ((double)out[i] - r[i]) * ((double)out[i] - r[i]);
        den += (double)r[i] * r[i];
    }
    if (!fail && den > 0 && num / den > tol) fail = mt_fail(why, "NMSE %.3g > %.3g", num / den, tol);
done:
    free(out1); free(out); free(ws1); free(ws);
    moe_model_layer_destroy(mine);
    moe_model_layer_destroy(one);
    moe_expert_map_destroy(map);
    moe_context_destroy(ctx);
    moe_npy_free(&x);
    moe_npy_free(&ref);
    moe_model_close(m);
    return mt_report(case_name, fail, why);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &mt_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &mt_size);
    const char *dir = argc > 1 ? argv[1] : getenv("MOE_TEST_DATA") ? getenv("MOE_TEST_DATA") : "build/testdata";
    char err[512];
    MPI_Comm world = MPI_COMM_WORLD;
    moe_comm_options co = { .deadline_ms = 20000 };
    if (moe_comm_create_mpi(&world, &co, &g_comm, err, sizeof err)) {
        fprintf(stderr, "rank %d: %s\n", mt_rank, err);
        MPI_Finalize();
        return 1;
    }
    /* (name, path, layer, bound): stacked and per-expert layouts, shared experts,
     * quantized borrowed slices, biases */
    static const struct { const char *name, *path; int32_t layer; double tol; } cases[] = {
        { "deepseek_v3", "deepseek_v3", 0, 1e-10 },
        { "gpt_oss_mxfp4", "gpt_oss_mxfp4", 0, 1e-6 },
        { "qwen2moe_gguf", "qwen2moe_gguf.gguf", 0, 1e-10 },
        { "mixtral_q8_0_gguf", "mixtral_q8_0_gguf.gguf", 0, 1e-6 },
        { "qwen2moe_mixed_gguf", "qwen2moe_mixed_gguf.gguf", 0, 1e-6 }, /* Q4_K/Q6_K, shared mixed */
        { "llama4", "llama4", 1, 1e-10 },
    };
    int ok = 1;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (int p = 0; p < 2; p++)
            ok &= run_case(dir, cases[i].name, cases[i].path, cases[i].layer, cases[i].tol,
                           p ? MOE_PLACEMENT_ROUND_ROBIN : MOE_PLACEMENT_LINEAR);
    moe_comm_destroy(g_comm);
    MPI_Finalize();
    return ok ? 0 : 1;
}
