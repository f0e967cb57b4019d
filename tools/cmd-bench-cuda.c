/*
 * cmd-bench-cuda.c - `moe bench --backend cuda` (the command bench-cuda): the
 * whole MoE layer forward on one GPU, per row of a model x format x n_tokens
 * grid (default: the GPU grid of TARGETS.md), timed with CUDA events over
 * CUDA graph replays.
 *
 * Per row: R graphs are captured, each one forward with its own router
 * logits (fresh routing per replay: different experts are touched in
 * consecutive forwards, as in a real batch), then launched back to back in
 * rounds; the row's time is the median round / R. Reported: µs per forward,
 * GB/s of touched expert weights (distinct experts of each routing, counted on
 * the CPU with the same router), TFLOP/s (2 x multiply-adds of the expert
 * MLPs), and fractions of the ceilings: read bandwidth (--bw, or a device copy
 * measured here) and the dense bf16 / fp8 peaks (--bf16-peak / --fp8-peak,
 * measured by scripts/gpu-check.sh in the same run). The floor is the larger
 * of bytes / bandwidth and FLOPs / peak.
 *
 * Weights are random bit patterns (no NaN or Inf) borrowed from host memory
 * and uploaded by the layer; synthesizing real quantized weights for 11 GB of
 * DeepSeek-V3 experts would take minutes and change no timing.
 */
#include "cli.h"
#include "presets.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef MOE_HAVE_CUDA

CLI_COMMAND_NAMED(bench_cuda, "bench-cuda", "time the CUDA layer (moe bench --backend cuda)") {
    (void)argc; (void)argv;
    fprintf(stderr, "moe bench-cuda: this libmoe was built without CUDA\n");
    return 1;
}

#else

#include <cuda_runtime_api.h>

#define MAX_R 8

#define CK(call)                                                                        \
    do {                                                                                \
        cudaError_t e_ = (call);                                                        \
        if (e_ != cudaSuccess) {                                                        \
            fprintf(stderr, "moe bench-cuda: %s: %s\n", #call, cudaGetErrorString(e_)); \
            rc = 1;                                                                     \
            goto done;                                                                  \
        }                                                                               \
    } while (0)

static uint64_t xs64(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return *s = x;
}

/* bf16 values of magnitude 2^-9 .. 2^-5 with random sign and mantissa. */
static void fill_bf16(uint16_t *p, size_t n, uint64_t *s) {
    for (size_t i = 0; i < n; i++) {
        uint64_t r = xs64(s);
        p[i] = (uint16_t)(((r >> 20) & 0x8000u) | ((118u + (r & 3u)) << 7) | ((r >> 8) & 0x7fu));
    }
}

/* e4m3 bytes, never the NaN codes 0x7f / 0xff. */
static void fill_fp8(uint8_t *p, size_t n, uint64_t *s) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t r = xs64(s);
        for (int j = 0; j < 8; j++) {
            uint8_t b = (uint8_t)(r >> (8 * j));
            p[i + j] = (b & 0x7f) == 0x7f ? (uint8_t)(b ^ 1) : b;
        }
    }
    for (; i < n; i++) p[i] = 0x38;
}

static void fill_f32(float *p, size_t n, float lo, float hi, uint64_t *s) {
    for (size_t i = 0; i < n; i++)
        p[i] = lo + (hi - lo) * (float)(xs64(s) >> 40) / (float)(1 << 24);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct bench_row { const char *preset; moe_format fmt; long tokens[8]; int n; } bench_row;

/* The GPU grid of TARGETS.md. */
static const bench_row g_grid[] = {
    { "qwen3-30b-a3b", MOE_FORMAT_BF16, { 1, 8, 64, 512, 4096, 16384 }, 6 },
    { "mixtral-8x7b", MOE_FORMAT_BF16, { 1, 8, 64, 512, 4096, 16384 }, 6 },
    { "qwen3-30b-a3b", MOE_FORMAT_FP8_BLOCK, { 1, 8, 64, 512, 4096, 16384 }, 6 },
    { "deepseek-v3", MOE_FORMAT_FP8_BLOCK, { 1, 8, 64, 512, 4096 }, 5 },
};

typedef struct ceilings { double bw_gbs, bf16_tf, fp8_tf; } ceilings;

static int bench_model(const moe_preset *p, moe_format fmt, const long *tokens, int n_tok,
                       int rounds, const ceilings *cl, int device) {
    int rc = 0;
    char err[512];
    const int64_t H = p->d_model, I = p->d_ff;
    const int32_t E = p->n_experts, k = p->top_k;
    const int64_t r13 = p->activation == MOE_ACT_RELU2 ? I : 2 * I;
    const bool fp8 = fmt == MOE_FORMAT_FP8_BLOCK;
    const size_t esz = fp8 ? 1 : 2;
    int64_t Tmax = 0;
    for (int i = 0; i < n_tok; i++) Tmax = tokens[i] > Tmax ? tokens[i] : Tmax;
    uint64_t seed = 0x9e3779b97f4a7c15ull;

    void *w13 = NULL, *w2 = NULL;
    float *s13 = NULL, *s2 = NULL, *bias = NULL, *b13 = NULL, *b2 = NULL, *logits = NULL;
    int32_t *ids = NULL;
    float *wts = NULL;
    moe_router *router = NULL;
    moe_routed_experts *ex = NULL;
    moe_context *ctx = NULL;
    moe_layer *layer = NULL;
    cudaStream_t st = NULL;
    cudaEvent_t ev0 = NULL, ev1 = NULL;
    void *d_x = NULL, *d_out = NULL, *d_ws = NULL;
    float *d_logits = NULL;
    cudaGraphExec_t ge[MAX_R] = { 0 };
    uint16_t *xh = NULL;
    char *seen = NULL;

    const size_t n13 = (size_t)E * (size_t)(r13 * H), n2 = (size_t)E * (size_t)(H * I);
    const size_t ns13 = (size_t)E * (size_t)((r13 + 127) / 128) * (size_t)((H + 127) / 128);
    const size_t ns2 = (size_t)E * (size_t)((H + 127) / 128) * (size_t)((I + 127) / 128);
    w13 = malloc(n13 * esz);
    w2 = malloc(n2 * esz);
    if (!w13 || !w2) { fprintf(stderr, "moe bench-cuda: out of host memory\n"); rc = 1; goto done; }
    if (fp8) {
        s13 = malloc(ns13 * 4);
        s2 = malloc(ns2 * 4);
        fill_fp8(w13, n13, &seed);
        fill_fp8(w2, n2, &seed);
        fill_f32(s13, ns13, 1e-4f, 2e-4f, &seed);
        fill_f32(s2, ns2, 1e-4f, 2e-4f, &seed);
    } else {
        fill_bf16(w13, n13, &seed);
        fill_bf16(w2, n2, &seed);
    }
    if (p->correction_bias) {
        bias = malloc((size_t)E * 4);
        fill_f32(bias, (size_t)E, -0.01f, 0.01f, &seed);
    }
    if (p->biases) { /* gpt-oss: both projections have biases, so its epilogues add them */
        b13 = malloc((size_t)(E * r13) * 4);
        b2 = malloc((size_t)(E * H) * 4);
        if (!b13 || !b2) {
            fprintf(stderr, "moe bench-cuda: out of host memory\n");
            rc = 1;
            goto done;
        }
        fill_f32(b13, (size_t)(E * r13), -0.1f, 0.1f, &seed);
        fill_f32(b2, (size_t)(E * H), -0.1f, 0.1f, &seed);
    }
    moe_router_options ro = { .n_experts = E, .top_k = k, .scoring = p->scoring,
                              .renormalize = p->renormalize, .n_group = p->n_group,
                              .topk_group = p->topk_group, .correction_bias = bias,
                              .routed_scaling_factor = p->routed_scaling };
    moe_experts_options eo = { .n_experts = E, .d_model = H, .d_ff = I, .format = fmt,
                               .activation = p->activation, .flags = MOE_EXPERTS_BORROW,
                               .w13 = { .data = w13, .scales = s13, .bias = b13 },
                               .w2 = { .data = w2, .scales = s2, .bias = b2 } };
    if (moe_router_create(&ro, &router, err, sizeof err) ||
        moe_routed_experts_create(&eo, &ex, err, sizeof err)) {
        fprintf(stderr, "moe bench-cuda: %s\n", err);
        rc = 1;
        goto done;
    }
    CK(cudaSetDevice(device));
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    CK(cudaEventCreate(&ev0));
    CK(cudaEventCreate(&ev1));
    moe_context_options co = { .cuda_device = device, .cuda_stream = st };
    moe_layer_options lo = { .router = router, .experts = ex, .backend = MOE_BACKEND_CUDA,
                             .io_format = MOE_FORMAT_BF16, .max_tokens = Tmax };
    if (moe_context_create(&co, &ctx, err, sizeof err)) {
        fprintf(stderr, "moe bench-cuda: %s\n", err);
        rc = 1;
        goto done;
    }
    lo.context = ctx;
    if (moe_layer_create(&lo, &layer, err, sizeof err)) {
        fprintf(stderr, "moe bench-cuda: %s: %s\n", p->name, err);
        rc = 1;
        goto done;
    }
    size_t wsz = moe_layer_workspace_size(layer, Tmax);
    CK(cudaMalloc(&d_ws, wsz));
    CK(cudaMalloc(&d_x, (size_t)(Tmax * H) * 2));
    CK(cudaMalloc(&d_out, (size_t)(Tmax * H) * 2));
    CK(cudaMalloc((void **)&d_logits, (size_t)MAX_R * (size_t)(Tmax * E) * 4));
    xh = malloc((size_t)(Tmax * H) * 2);
    fill_bf16(xh, (size_t)(Tmax * H), &seed);
    /* exponent + 7: activations of magnitude ~0.1 .. 1 */
    for (size_t i = 0; i < (size_t)(Tmax * H); i++) xh[i] = (uint16_t)(xh[i] + (7u << 7));
    CK(cudaMemcpy(d_x, xh, (size_t)(Tmax * H) * 2, cudaMemcpyHostToDevice));
    logits = malloc((size_t)MAX_R * (size_t)(Tmax * E) * 4);
    ids = malloc((size_t)(Tmax * k) * 4);
    wts = malloc((size_t)(Tmax * k) * 4);
    seen = malloc((size_t)E);
    fill_f32(logits, (size_t)MAX_R * (size_t)(Tmax * E), -3.0f, 3.0f, &seed);
    CK(cudaMemcpy(d_logits, logits, (size_t)MAX_R * (size_t)(Tmax * E) * 4,
                  cudaMemcpyHostToDevice));
    CK(cudaDeviceSynchronize()); /* the layer's stream does not wait for the legacy stream */

    const double expert_bytes = fp8 ? (double)(r13 * H + H * I) +
                                          4.0 * (double)(ns13 + ns2) / E
                                    : 2.0 * (double)(r13 * H + H * I);
    for (int ti = 0; ti < n_tok; ti++) {
        const int64_t T = tokens[ti];
        /* touched bytes, averaged over the R routings */
        double touched = 0;
        for (int r = 0; r < MAX_R; r++) {
            moe_router_route(router, T, logits + (size_t)r * (size_t)(Tmax * E), ids, wts);
            memset(seen, 0, (size_t)E);
            int distinct = 0;
            for (int64_t i = 0; i < T * k; i++) distinct += !seen[ids[i]], seen[ids[i]] = 1;
            touched += distinct * expert_bytes;
        }
        touched /= MAX_R;
        const double flops = 2.0 * (double)(T * k) * (double)(r13 * H + H * I);
        for (int r = 0; r < MAX_R; r++) {
            cudaGraph_t g = NULL;
            CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
            moe_status s = moe_layer_forward(layer, T, d_x,
                                             d_logits + (size_t)r * (size_t)(Tmax * E), NULL,
                                             d_out, d_ws, wsz);
            CK(cudaStreamEndCapture(st, &g));
            if (s) {
                fprintf(stderr, "moe bench-cuda: forward: %s\n", moe_layer_last_error(layer));
                cudaGraphDestroy(g);
                rc = 1;
                goto done;
            }
            CK(cudaGraphInstantiate(&ge[r], g, 0));
            cudaGraphDestroy(g);
        }
        double times[64];
        int nr = rounds > 64 ? 64 : rounds;
        for (int w = 0; w < 2; w++)
            for (int r = 0; r < MAX_R; r++) CK(cudaGraphLaunch(ge[r], st));
        for (int i = 0; i < nr; i++) {
            CK(cudaEventRecord(ev0, st));
            for (int r = 0; r < MAX_R; r++) CK(cudaGraphLaunch(ge[r], st));
            CK(cudaEventRecord(ev1, st));
            CK(cudaEventSynchronize(ev1));
            float ms = 0;
            CK(cudaEventElapsedTime(&ms, ev0, ev1));
            times[i] = ms * 1e3 / MAX_R;
        }
        qsort(times, (size_t)nr, sizeof *times, cmp_double);
        const double us = times[nr / 2];
        const double peak = fp8 ? cl->fp8_tf : cl->bf16_tf;
        const double floor_us = touched / (cl->bw_gbs * 1e3) > flops / (peak * 1e6)
                                    ? touched / (cl->bw_gbs * 1e3) : flops / (peak * 1e6);
        printf("| %-14s | %-9s | %6lld | %9.1f | %8.1f | %7.1f | %5.1f%% | %5.1f%% | %9.1f "
               "| %5.1f%% |\n",
               p->name, moe_format_name(fmt), (long long)T, us, touched / (us * 1e3),
               flops / (us * 1e6), 100.0 * touched / (us * 1e3) / cl->bw_gbs,
               100.0 * flops / (us * 1e6) / peak, floor_us, 100.0 * floor_us / us);
        fflush(stdout);
        for (int r = 0; r < MAX_R; r++) {
            cudaGraphExecDestroy(ge[r]);
            ge[r] = NULL;
        }
    }
done:
    free(seen);
    for (int r = 0; r < MAX_R; r++)
        if (ge[r]) cudaGraphExecDestroy(ge[r]);
    if (st) cudaStreamSynchronize(st);
    cudaFree(d_x); cudaFree(d_out); cudaFree(d_ws); cudaFree(d_logits);
    moe_layer_destroy(layer);
    moe_context_destroy(ctx);
    moe_routed_experts_destroy(ex);
    moe_router_destroy(router);
    if (ev0) cudaEventDestroy(ev0);
    if (ev1) cudaEventDestroy(ev1);
    if (st) cudaStreamDestroy(st);
    free(w13); free(w2); free(s13); free(s2); free(bias); free(b13); free(b2);
    free(logits); free(ids); free(wts); free(xh);
    return rc;
}

/* Device-to-device copy bandwidth (bytes read + written) over 2 GiB: a
 * fallback ceiling when the script gives none. */
static double copy_bandwidth(void) {
    const size_t n = (size_t)1 << 30;
    void *a = NULL, *b = NULL;
    cudaEvent_t e0, e1;
    double best = 0;
    if (cudaMalloc(&a, n) || cudaMalloc(&b, n)) goto out;
    cudaMemset(a, 1, n);
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    for (int i = 0; i < 6; i++) {
        float ms = 0;
        cudaEventRecord(e0, 0);
        cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice);
        cudaEventRecord(e1, 0);
        cudaEventSynchronize(e1);
        cudaEventElapsedTime(&ms, e0, e1);
        double gbs = 2.0 * (double)n / (ms * 1e6);
        if (i > 0 && gbs > best) best = gbs;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
out:
    cudaFree(a);
    cudaFree(b);
    return best;
}

CLI_COMMAND_NAMED(bench_cuda, "bench-cuda", "time the CUDA layer (moe bench --backend cuda)") {
    if (cli_flag(argc, argv, "--help")) {
        printf("usage: moe bench --backend cuda [--preset NAME --format F --tokens 1,8,...]\n"
               "       [--rounds N] [--bw GB/s] [--bf16-peak TFLOP/s] [--fp8-peak TFLOP/s]\n"
               "       [--device N]\n"
               "  without --preset: the GPU grid of TARGETS.md\n");
        return 0;
    }
    const char *pn = cli_opt(argc, argv, "--preset"), *fn = cli_opt(argc, argv, "--format");
    const char *tk = cli_opt(argc, argv, "--tokens"), *rs = cli_opt(argc, argv, "--rounds");
    const char *bw = cli_opt(argc, argv, "--bw"), *pb = cli_opt(argc, argv, "--bf16-peak");
    const char *pf = cli_opt(argc, argv, "--fp8-peak"), *dv = cli_opt(argc, argv, "--device");
    int rounds = rs ? atoi(rs) : 15, device = dv ? atoi(dv) : 0;
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
        fprintf(stderr, "moe bench-cuda: no CUDA device\n");
        return 1;
    }
    cudaSetDevice(device);
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, device);
    ceilings cl = { bw ? atof(bw) : 0, pb ? atof(pb) : 0, pf ? atof(pf) : 0 };
    const char *bw_src = "given";
    if (cl.bw_gbs <= 0) { cl.bw_gbs = copy_bandwidth(); bw_src = "device copy, read+write"; }
    if (cl.bf16_tf <= 0) cl.bf16_tf = 802;  /* TARGETS.md, cuBLAS 8192^3 on an H200 */
    if (cl.fp8_tf <= 0) cl.fp8_tf = 1444;   /* TARGETS.md, torch._scaled_mm 8192^3  */
    printf("device %d: %s, %d SMs; ceilings: read %.0f GB/s (%s), bf16 %.0f TFLOP/s, fp8 %.0f "
           "TFLOP/s\n", device, prop.name, prop.multiProcessorCount, cl.bw_gbs, bw_src,
           cl.bf16_tf, cl.fp8_tf);
    printf("| model          | weights   |      T |  µs/layer | GB/s eff | TFLOP/s | %%BW    "
           "| %%peak  |  floor µs | %%floor |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|\n");
    int rc = 0;
    if (pn) {
        const moe_preset *p = moe_preset_find(pn);
        moe_format f = MOE_FORMAT_BF16;
        long tokens[16];
        int n = cli_parse_list(tk ? tk : "1,8,64,512", tokens, 16);
        if (!p || (fn && moe_format_from_name(fn, &f)) || n <= 0) {
            fprintf(stderr, "moe bench-cuda: bad --preset, --format or --tokens\n");
            return 2;
        }
        return bench_model(p, f, tokens, n, rounds, &cl, device);
    }
    for (size_t i = 0; i < sizeof g_grid / sizeof *g_grid; i++)
        rc |= bench_model(moe_preset_find(g_grid[i].preset), g_grid[i].fmt, g_grid[i].tokens,
                          g_grid[i].n, rounds, &cl, device);
    return rc;
}

#endif /* MOE_HAVE_CUDA */
