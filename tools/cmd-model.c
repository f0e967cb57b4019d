/*
 * cmd-model.c - commands on real model files: `moe info PATH`,
 * `moe forward --model PATH --layer N --input x.npy --output y.npy`, and
 * `moe bench-model` (what `moe bench --model PATH --layer N` runs).
 * A client of include/moe.h only.
 */
#include "cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *scoring_name(moe_scoring s) {
    switch (s) {
    case MOE_SCORING_SOFTMAX: return "softmax";
    case MOE_SCORING_SOFTMAX_TOPK: return "softmax over the top-k logits";
    case MOE_SCORING_SIGMOID: return "sigmoid";
    case MOE_SCORING_LLAMA4: return "llama4 (sigmoid of the top logit, on the input)";
    }
    return "?";
}

static const char *act_name(moe_activation a) {
    switch (a) {
    case MOE_ACT_SILU: return "silu";
    case MOE_ACT_GELU: return "gelu";
    case MOE_ACT_GELU_TANH: return "gelu-tanh";
    case MOE_ACT_SWIGLU_OAI: return "swiglu-oai (gpt-oss)";
    case MOE_ACT_RELU2: return "relu^2";
    }
    return "?";
}

static void human(double bytes, char *buf, size_t n) {
    const char *u[] = { "B", "KB", "MB", "GB", "TB" };
    int i = 0;
    while (bytes >= 1000 && i < 4) { bytes /= 1000; i++; }
    snprintf(buf, n, i ? "%.2f %s" : "%.0f %s", bytes, u[i]);
}

static moe_model *open_model(const char *path) {
    char err[512];
    moe_model *m = NULL;
    moe_status s = moe_model_open(path, NULL, &m, err, sizeof err);
    if (s) {
        fprintf(stderr, "moe: %s: %s (%s)\n", path, err, moe_status_name(s));
        return NULL;
    }
    return m;
}

/* ===== info ===== */

CLI_COMMAND(info, "moe info PATH [--tensors]: describe a model (HF directory, .safetensors, .gguf)") {
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: moe info PATH [--tensors]\n"
                        "  PATH       Hugging Face directory, FILE.safetensors (config.json beside it) or FILE.gguf\n"
                        "  --tensors  list every tensor (name, dtype, shape, bytes)\n");
        return 2;
    }
    moe_model *m = open_model(argv[1]);
    if (!m) return 1;
    moe_model_desc d;
    moe_model_info(m, &d);
    char b1[32];
    human((double)d.tensor_bytes, b1, sizeof b1);
    printf("model       %s\n", argv[1]);
    printf("container   %s, %d file%s, %lld tensors, %s\n", d.container, d.n_files, d.n_files == 1 ? "" : "s",
           (long long)d.n_tensors, b1);
    printf("family      %s\n", d.family);
    printf("layers      %d, %d MoE:", d.n_layers, d.n_moe_layers);
    for (int32_t l = 0; l < d.n_layers;) { /* ranges of MoE layers */
        if (!moe_model_layer_is_moe(m, l)) { l++; continue; }
        int32_t e = l;
        while (e + 1 < d.n_layers && moe_model_layer_is_moe(m, e + 1)) e++;
        printf(e > l ? " %d-%d" : " %d", l, e);
        l = e + 1;
    }
    printf("\n");
    printf("experts     E %d, top_k %d, d_model %lld, d_ff %lld\n", d.n_experts, d.top_k,
           (long long)d.d_model, (long long)d.d_ff);
    if (d.n_shared_experts)
        printf("shared      %d expert%s, d_ff %lld%s\n", d.n_shared_experts, d.n_shared_experts == 1 ? "" : "s",
               (long long)d.d_ff_shared, d.shared_gate ? ", sigmoid gate" : "");
    else
        printf("shared      none\n");
    printf("routing     %s, renormalize %s", scoring_name(d.scoring), d.renormalize ? "yes" : "no");
    if (d.n_group > 1) printf(", groups %d keep %d", d.n_group, d.topk_group);
    if (d.routed_scaling_factor != 1.0f) printf(", scale %g", (double)d.routed_scaling_factor);
    if (d.correction_bias) printf(", correction bias");
    if (d.router_bias) printf(", router bias");
    printf("\n");
    printf("activation  %s%s\n", act_name(d.activation), d.expert_bias ? ", expert biases" : "");
    if (d.expert_format == MOE_FORMAT_COUNT)
        printf("format      none (stored type unsupported)\n");
    else if (d.expert_format_w2 != d.expert_format)
        printf("format      %s, down %s (routed experts)\n", moe_format_name(d.expert_format),
               moe_format_name(d.expert_format_w2));
    else
        printf("format      %s (routed experts)\n", moe_format_name(d.expert_format));
    /* bytes per stored dtype */
    struct dtype_sum { const char *dtype; int64_t n; uint64_t bytes; } agg[32];
    int n_agg = 0;
    for (int64_t i = 0; i < moe_model_n_tensors(m); i++) {
        moe_model_tensor t;
        moe_model_tensor_get(m, i, &t);
        int j = 0;
        while (j < n_agg && strcmp(agg[j].dtype, t.dtype)) j++;
        if (j == n_agg && n_agg < 32) agg[n_agg++] = (struct dtype_sum){ t.dtype, 0, 0 };
        if (j < n_agg) { agg[j].n++; agg[j].bytes += t.nbytes; }
    }
    for (int j = 0; j < n_agg; j++) {
        human((double)agg[j].bytes, b1, sizeof b1);
        printf("%-11s %-8s %lld tensors, %s\n", j ? "" : "dtypes", agg[j].dtype, (long long)agg[j].n, b1);
    }
    if (cli_flag(argc, argv, "--tensors")) {
        printf("\n%-64s %-8s %-24s %12s %4s\n", "tensor", "dtype", "shape", "bytes", "file");
        for (int64_t i = 0; i < moe_model_n_tensors(m); i++) {
            moe_model_tensor t;
            moe_model_tensor_get(m, i, &t);
            char shape[96] = "(";
            size_t o = 1;
            for (int k = 0; k < t.n_dims && o < sizeof shape - 24; k++)
                o += (size_t)snprintf(shape + o, sizeof shape - o, "%s%lld", k ? ", " : "", (long long)t.shape[k]);
            snprintf(shape + o, sizeof shape - o, ")");
            printf("%-64s %-8s %-24s %12llu %4d\n", t.name, t.dtype, shape, (unsigned long long)t.nbytes, t.file);
        }
    }
    moe_model_close(m);
    return 0;
}

/* ===== forward ===== */

static int parse_backend(const char *s, moe_backend *b) {
    if (!s || !strcmp(s, "auto")) *b = MOE_BACKEND_AUTO;
    else if (!strcmp(s, "ref")) *b = MOE_BACKEND_REF;
    else if (!strcmp(s, "cpu")) *b = MOE_BACKEND_CPU;
    else if (!strcmp(s, "cuda")) *b = MOE_BACKEND_CUDA;
    else return 0;
    return 1;
}

CLI_COMMAND(forward, "moe forward --model PATH --layer N --input x.npy --output y.npy: run one MoE layer") {
    const char *path = cli_opt(argc, argv, "--model"), *layer_s = cli_opt(argc, argv, "--layer");
    const char *in = cli_opt(argc, argv, "--input"), *outp = cli_opt(argc, argv, "--output");
    const char *lg = cli_opt(argc, argv, "--router-logits"), *th = cli_opt(argc, argv, "--threads");
    moe_backend backend;
    if (!path || !layer_s || !in || !outp || !parse_backend(cli_opt(argc, argv, "--backend"), &backend)) {
        fprintf(stderr,
            "usage: moe forward --model PATH --layer N --input x.npy --output y.npy\n"
            "                   [--router-logits logits.npy] [--backend ref|cpu|cuda] [--threads N]\n"
            "  x.npy (n_tokens, d_model) or (d_model), f32 '<f4', f16 '<f2' or bf16 ('<V2' / 'bfloat16');\n"
            "  y.npy is written in the same type and shape. Router logits (n_tokens, n_experts) f32\n"
            "  are computed from the model's router when not given.\n");
        return 2;
    }
    char err[512];
    int rc = 1;
    moe_npy x = {0}, l = {0};
    moe_model *m = NULL;
    moe_model_layer *ml = NULL;
    moe_context *ctx = NULL;
    void *ws = NULL, *out = NULL;
    moe_status s;
    if ((s = moe_npy_read(in, &x, err, sizeof err))) { fprintf(stderr, "moe forward: %s\n", err); goto done; }
    if (!(m = open_model(path))) goto done;
    moe_model_desc d;
    moe_model_info(m, &d);
    int64_t T = x.n_dims == 1 ? 1 : x.shape[0];
    if (x.n_dims < 1 || x.n_dims > 2 || x.shape[x.n_dims - 1] != d.d_model || T < 1) {
        fprintf(stderr, "moe forward: %s must be (n_tokens, %lld), has %d dims\n", in, (long long)d.d_model, x.n_dims);
        goto done;
    }
    if (lg) {
        if ((s = moe_npy_read(lg, &l, err, sizeof err))) { fprintf(stderr, "moe forward: %s\n", err); goto done; }
        int64_t lt = l.n_dims == 1 ? 1 : l.shape[0];
        if (l.format != MOE_FORMAT_F32 || l.n_dims < 1 || l.n_dims > 2 || lt != T ||
            l.shape[l.n_dims - 1] != d.n_experts) {
            fprintf(stderr, "moe forward: %s must be f32 (%lld, %d)\n", lg, (long long)T, d.n_experts);
            goto done;
        }
    }
    if (th) {
        moe_context_options co = { .n_threads = atoi(th) };
        if ((s = moe_context_create(&co, &ctx, err, sizeof err))) { fprintf(stderr, "moe forward: %s\n", err); goto done; }
    }
    moe_layer_options base = { .backend = backend, .context = ctx, .io_format = x.format, .max_tokens = T };
    if ((s = moe_model_layer_create(m, atoi(layer_s), &base, &ml, err, sizeof err))) {
        fprintf(stderr, "moe forward: layer %s: %s (%s)\n", layer_s, err, moe_status_name(s));
        goto done;
    }
    moe_layer *layer = moe_model_layer_layer(ml);
    size_t ws_size = moe_layer_workspace_size(layer, T);
    ws = aligned_alloc(64, (ws_size + 64) / 64 * 64);
    out = malloc(x.nbytes);
    if (!ws || !out) { fprintf(stderr, "moe forward: out of memory\n"); goto done; }
    if ((s = moe_layer_forward(layer, T, x.data, lg ? l.data : NULL, moe_model_layer_shared(ml), out, ws, ws_size))) {
        fprintf(stderr, "moe forward: %s (%s)\n", moe_layer_last_error(layer), moe_status_name(s));
        goto done;
    }
    if ((s = moe_npy_write(outp, x.format, x.n_dims, x.shape, out, err, sizeof err))) {
        fprintf(stderr, "moe forward: %s\n", err);
        goto done;
    }
    fprintf(stderr, "moe forward: %s layer %s, %lld tokens, %s/%s -> %s\n", d.family, layer_s, (long long)T,
            moe_layer_prepare_finalize_impl(layer), moe_layer_experts_impl(layer), outp);
    rc = 0;
done:
    free(ws);
    free(out);
    moe_model_layer_destroy(ml);
    moe_context_destroy(ctx);
    moe_model_close(m);
    moe_npy_free(&x);
    moe_npy_free(&l);
    return rc;
}

/* ===== bench-model ===== */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

CLI_COMMAND_NAMED(bench_model, "bench-model",
                  "moe bench --model PATH --layer N [--tokens 1,8,64] [--runs N]: time a real layer") {
    const char *path = cli_opt(argc, argv, "--model"), *layer_s = cli_opt(argc, argv, "--layer");
    const char *ts = cli_opt(argc, argv, "--tokens"), *rs = cli_opt(argc, argv, "--runs");
    const char *th = cli_opt(argc, argv, "--threads");
    moe_backend backend;
    long tokens[16] = { 1, 8, 64 };
    int n_tok = ts ? cli_parse_list(ts, tokens, 16) : 3, runs = rs ? atoi(rs) : 7;
    if (!path || !layer_s || n_tok < 1 || runs < 1 || !parse_backend(cli_opt(argc, argv, "--backend"), &backend)) {
        fprintf(stderr, "usage: moe bench --model PATH --layer N [--tokens 1,8,64] [--runs 7] [--threads N]\n"
                        "                 [--backend ref|cpu|cuda]\n");
        return 2;
    }
    long max_t = 1;
    for (int i = 0; i < n_tok; i++) {
        if (tokens[i] < 1) { fprintf(stderr, "moe bench: bad token count\n"); return 2; }
        if (tokens[i] > max_t) max_t = tokens[i];
    }
    char err[512];
    int rc = 1;
    moe_model *m = NULL;
    moe_model_layer *ml = NULL;
    moe_context *ctx = NULL;
    void *ws = NULL;
    float *x = NULL, *out = NULL, *logits = NULL, *w = NULL;
    int32_t *ids = NULL;
    uint8_t *used = NULL;
    double *t_us = NULL;
    if (!(m = open_model(path))) goto done;
    moe_model_desc d;
    moe_model_info(m, &d);
    moe_context_options co = { .n_threads = th ? atoi(th) : 0 };
    moe_status s;
    if ((s = moe_context_create(&co, &ctx, err, sizeof err))) { fprintf(stderr, "moe bench: %s\n", err); goto done; }
    moe_layer_options base = { .backend = backend, .context = ctx, .max_tokens = max_t };
    if ((s = moe_model_layer_create(m, atoi(layer_s), &base, &ml, err, sizeof err))) {
        fprintf(stderr, "moe bench: layer %s: %s (%s)\n", layer_s, err, moe_status_name(s));
        goto done;
    }
    moe_layer *layer = moe_model_layer_layer(ml);
    size_t ws_size = moe_layer_workspace_size(layer, max_t);
    ws = aligned_alloc(64, (ws_size + 64) / 64 * 64);
    x = malloc((size_t)max_t * (size_t)d.d_model * sizeof *x);
    out = malloc((size_t)max_t * (size_t)d.d_model * sizeof *out);
    logits = malloc((size_t)max_t * (size_t)d.n_experts * sizeof *logits);
    w = malloc((size_t)max_t * (size_t)d.top_k * sizeof *w);
    ids = malloc((size_t)max_t * (size_t)d.top_k * sizeof *ids);
    used = malloc((size_t)d.n_experts);
    t_us = malloc((size_t)runs * sizeof *t_us);
    if (!ws || !x || !out || !logits || !w || !ids || !used || !t_us) { fprintf(stderr, "moe bench: out of memory\n"); goto done; }
    moe_format_info fi, fi2;
    moe_format_get_info(d.expert_format, &fi);
    moe_format_get_info(d.expert_format_w2, &fi2);
    /* gate and up in W13's format, down in W2's */
    double expert_bytes = (double)d.d_model * (double)d.d_ff *
                          (2.0 * fi.bits_per_weight + fi2.bits_per_weight) / 8;
    printf("%s layer %s: E %d, top_k %d, d_model %lld, d_ff %lld, %s, %s/%s, %d threads\n", d.family, layer_s,
           d.n_experts, d.top_k, (long long)d.d_model, (long long)d.d_ff, fi.name,
           moe_layer_prepare_finalize_impl(layer), moe_layer_experts_impl(layer), moe_context_n_threads(ctx));
    printf("%8s %12s %12s %10s %10s\n", "tokens", "us", "tokens/s", "experts", "GB/s");
    uint64_t seed = 42;
    for (int i = 0; i < n_tok; i++) {
        int64_t T = tokens[i];
        for (int64_t j = 0; j < T * d.d_model; j++)
            x[j] = (float)((double)(rng_next(&seed) >> 11) / 9007199254740992.0 * 2 - 1);
        /* distinct experts the router picks for this batch: the weight bytes read */
        memset(used, 0, (size_t)d.n_experts);
        int n_used = 0;
        if (moe_router_logits(moe_model_layer_router(ml), T, x, logits) == MOE_OK &&
            moe_router_route(moe_model_layer_router(ml), T, logits, ids, w) == MOE_OK)
            for (int64_t j = 0; j < T * d.top_k; j++)
                if (!used[ids[j]]) { used[ids[j]] = 1; n_used++; }
        for (int r = -1; r < runs; r++) { /* one warm-up */
            double t0 = cli_now_us();
            s = moe_layer_forward(layer, T, x, NULL, moe_model_layer_shared(ml), out, ws, ws_size);
            double t1 = cli_now_us();
            if (s) { fprintf(stderr, "moe bench: %s\n", moe_layer_last_error(layer)); goto done; }
            if (r >= 0) t_us[r] = t1 - t0;
        }
        qsort(t_us, (size_t)runs, sizeof *t_us, cmp_double);
        double us = t_us[runs / 2];
        printf("%8lld %12.1f %12.0f %10d %10.2f\n", (long long)T, us, (double)T / us * 1e6, n_used,
               n_used * expert_bytes / (us * 1e3));
    }
    rc = 0;
done:
    free(ws); free(x); free(out); free(logits); free(w); free(ids); free(used); free(t_us);
    moe_model_layer_destroy(ml);
    moe_context_destroy(ctx);
    moe_model_close(m);
    return rc;
}
