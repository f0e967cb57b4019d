/*
 * test-cuda.c - the CUDA backend against the CPU: routing ids bitwise equal
 * to moe_router_route, and whole-layer outputs against the reference backend
 * (MOE_BACKEND_REF on host copies of the same router and experts) over a
 * grid of shapes, activations, biases, io formats, expert maps, shared
 * experts and both regimes (decode tiles and prefill tiles): bf16/f16 NMSE
 * <= 5e-4, fp8-block |out - ref| <= 0.035 + 0.035 |ref|. Outputs are poisoned
 * with NaN before every forward; CUDA graph capture + replay must give the
 * bits of a direct forward, and the first 8 tokens forwarded alone (decode
 * tiles) the bits they got in the batch. Every test skips without a device,
 * and the file is one skipping test when libmoe was built without CUDA.
 */
#include "test.h"

#include <stdlib.h>
#include <string.h>

#ifndef MOE_HAVE_CUDA

TEST(cuda_backend) { TEST_SKIP("built without CUDA"); }

#else

#include "internal.h"
#include "../src/cuda/entry.h"

#include <cuda_runtime_api.h>

#define NMSE_HALF 5e-4
#define FP8_TOL   0.035

/* Short names for the case tables. */
#define BF16 MOE_FORMAT_BF16
#define F32  MOE_FORMAT_F32
#define FP8  MOE_FORMAT_FP8_BLOCK

static bool have_device(void) { return moe__cuda_device_count() > 0; }

#define CU(call)                                                                          \
    do {                                                                                  \
        cudaError_t e_ = (call);                                                          \
        if (e_ != cudaSuccess) {                                                          \
            test_fail(__FILE__, __LINE__, "%s: %s", #call, cudaGetErrorString(e_));       \
            goto done;                                                                    \
        }                                                                                 \
    } while (0)

/* ===== Routing ===== */

typedef struct route_case {
    int32_t     E, k;
    moe_scoring scoring;
    int         renorm, bias, n_group, topk_group;
    float       factor;
} route_case;

static void route_check(const route_case *rc, int64_t T, uint64_t seed) {
    test_rng rng = { seed };
    float *bias = NULL, *logits = NULL, *w_cpu = NULL, *w_gpu = NULL;
    int32_t *id_cpu = NULL, *id_gpu = NULL;
    float *d_logits = NULL, *d_w = NULL;
    int32_t *d_ids = NULL;
    moe_router *r = NULL;
    moe_layer *l = NULL;
    moe_routed_experts *ex = NULL;
    moe_context *ctx = NULL;
    uint16_t *w13 = NULL, *w2 = NULL;
    char err[256];
    const int32_t E = rc->E, k = rc->k;
    logits = malloc((size_t)(T * E) * sizeof(float));
    bias   = malloc((size_t)E * sizeof(float));
    w_cpu  = malloc((size_t)(T * k) * sizeof(float));
    w_gpu  = malloc((size_t)(T * k) * sizeof(float));
    id_cpu = malloc((size_t)(T * k) * sizeof(int32_t));
    id_gpu = malloc((size_t)(T * k) * sizeof(int32_t));
    for (int32_t e = 0; e < E; e++) bias[e] = 0.1f * test_rng_normal(&rng);
    for (int64_t t = 0; t < T; t++) {
        float *row = logits + t * E;
        int kind = (int)(t % 16);
        for (int32_t e = 0; e < E; e++) {
            float v = 2.0f * test_rng_normal(&rng);
            if (kind == 1) v = (float)(int)(v * 2.0f) * 0.5f;  /* many exact ties */
            if (kind == 2) v = 0.25f;                          /* all equal */
            if (kind == 3 && e % 5 == 0) v = NAN;
            if (kind == 4 && e % 3 == 0) v = -INFINITY;
            if (kind == 5) v = -INFINITY;                      /* fully masked */
            if (kind == 6 && e % 7 == 3) v = INFINITY;
            if (kind == 7) v = e % 2 ? NAN : -INFINITY;
            row[e] = v;
        }
    }
    moe_router_options ro = { .n_experts = E, .top_k = k, .scoring = rc->scoring,
                              .renormalize = rc->renorm, .n_group = rc->n_group,
                              .topk_group = rc->topk_group, .routed_scaling_factor = rc->factor,
                              .correction_bias = rc->bias ? bias : NULL };
    REQUIRE(moe_router_create(&ro, &r, err, sizeof err) == MOE_OK, "%s", err);
    CHECK_STATUS(moe_router_route(r, T, logits, id_cpu, w_cpu), MOE_OK);

    /* A small layer only to own the device copy of the router tables. */
    const int64_t H = 16, I = 16;
    w13 = calloc((size_t)(E * 2 * I * H), 2);
    w2  = calloc((size_t)(E * H * I), 2);
    moe_experts_options eo = { .n_experts = E, .d_model = H, .d_ff = I,
                               .format = MOE_FORMAT_BF16, .w13 = { .data = w13 },
                               .w2 = { .data = w2 } };
    REQUIRE(moe_routed_experts_create(&eo, &ex, err, sizeof err) == MOE_OK, "%s", err);
    REQUIRE(moe_context_create(NULL, &ctx, err, sizeof err) == MOE_OK, "%s", err);
    moe_layer_options lo = { .router = r, .experts = ex, .context = ctx,
                             .backend = MOE_BACKEND_CUDA, .max_tokens = T };
    if (moe_layer_create(&lo, &l, err, sizeof err) != MOE_OK) {
        test_fail(__FILE__, __LINE__, "cuda layer: %s", err);
        goto done;
    }
    CU(cudaMalloc((void **)&d_logits, (size_t)(T * E) * sizeof(float)));
    CU(cudaMalloc((void **)&d_ids, (size_t)(T * k) * sizeof(int32_t)));
    CU(cudaMalloc((void **)&d_w, (size_t)(T * k) * sizeof(float)));
    CU(cudaMemcpy(d_logits, logits, (size_t)(T * E) * sizeof(float), cudaMemcpyHostToDevice));
    CU(cudaMemset(d_ids, 0xff, (size_t)(T * k) * sizeof(int32_t)));
    CHECK_STATUS(moe__cuda_route(l, T, d_logits, d_ids, d_w), MOE_OK);
    CU(cudaDeviceSynchronize());
    CU(cudaMemcpy(id_gpu, d_ids, (size_t)(T * k) * sizeof(int32_t), cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(w_gpu, d_w, (size_t)(T * k) * sizeof(float), cudaMemcpyDeviceToHost));
    int bad = 0;
    for (int64_t i = 0; i < T * k && bad < 5; i++) {
        if (id_gpu[i] != id_cpu[i]) {
            test_fail(__FILE__, __LINE__,
                      "E=%d k=%d scoring %d: ids[%lld] gpu %d cpu %d (row kind %d)", E, k,
                      (int)rc->scoring, (long long)i, id_gpu[i], id_cpu[i], (int)((i / k) % 16));
            bad++;
        }
        float d = fabsf(w_gpu[i] - w_cpu[i]);
        if (!(d <= 1e-5f + 1e-5f * fabsf(w_cpu[i]))) {
            test_fail(__FILE__, __LINE__, "E=%d scoring %d: w[%lld] gpu %g cpu %g", E,
                      (int)rc->scoring, (long long)i, (double)w_gpu[i], (double)w_cpu[i]);
            bad++;
        }
    }
done:
    cudaFree(d_logits); cudaFree(d_ids); cudaFree(d_w);
    moe_layer_destroy(l);
    moe_routed_experts_destroy(ex);
    moe_context_destroy(ctx);
    moe_router_destroy(r);
    free(w13); free(w2);
    free(logits); free(bias); free(w_cpu); free(w_gpu); free(id_cpu); free(id_gpu);
}

TEST(cuda_route_bitwise_ids) {
    if (!have_device()) TEST_SKIP("no CUDA device");
    static const route_case cases[] = {
        { 8, 2, MOE_SCORING_SOFTMAX, 1, 0, 0, 0, 0 },
        { 60, 4, MOE_SCORING_SOFTMAX, 0, 0, 0, 0, 0 },
        { 128, 8, MOE_SCORING_SOFTMAX, 1, 0, 0, 0, 0 },
        { 128, 8, MOE_SCORING_SOFTMAX, 1, 1, 0, 0, 2.5f },
        { 32, 4, MOE_SCORING_SOFTMAX_TOPK, 0, 0, 0, 0, 0 },
        { 256, 8, MOE_SCORING_SIGMOID, 1, 1, 8, 4, 2.5f },
        { 160, 6, MOE_SCORING_SOFTMAX, 0, 0, 8, 3, 0 },
        { 64, 6, MOE_SCORING_SIGMOID, 0, 0, 0, 0, 0 },
        { 16, 1, MOE_SCORING_LLAMA4, 0, 0, 0, 0, 0 },
        { 384, 8, MOE_SCORING_SIGMOID, 1, 1, 1, 1, 0 },
        { 1000, 16, MOE_SCORING_SOFTMAX, 1, 0, 0, 0, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) route_check(&cases[i], 517, 11 + i);
}

/* ===== The layer against the reference backend ===== */

typedef struct lcase {
    int64_t        T, H, I;
    int32_t        E, k;
    moe_format     wfmt, io;
    moe_activation act;
    moe_scoring    scoring;
    int            biases, remote, shared, gate, use_gate_logits;
    moe_shared_order order;
} lcase;

/* Fills w (rows, cols) per expert in format f from N(0, sigma) values. */
static void make_weights(test_rng *rng, moe_format f, int32_t E, int64_t rows, int64_t cols,
                         float sigma, void **data, float **scales) {
    const moe__format_traits *ft = moe__format(f);
    moe__wsizes s;
    char err[128];
    ft->sizes(rows, cols, 0, 0, &s, err, sizeof err);
    *data   = malloc((size_t)E * s.data);
    *scales = s.scales ? malloc((size_t)E * s.scales) : NULL;
    float *src = malloc((size_t)(rows * cols) * sizeof(float));
    for (int32_t e = 0; e < E; e++) {
        test_fill_normal(rng, src, (size_t)(rows * cols), sigma);
        moe__wmat w = { .format = f, .rows = rows, .cols = cols,
                        .data = (char *)*data + (size_t)e * s.data,
                        .scales = *scales ? (char *)*scales + (size_t)e * s.scales : NULL };
        ft->quantize_ref(src, &w);
    }
    free(src);
}

static size_t io_size(moe_format f) { return f == MOE_FORMAT_F32 ? 4 : 2; }

/* layer_check_routing's routing flags */
enum {
    ROUTE_GROUPED = 1, /* DeepSeek-V3's routing (8 groups, 4 kept, a correction
                        * bias, weights scaled by 2.5) */
    ROUTE_SKEWED  = 2, /* expert 0's logits raised by 4: most tokens choose it */
};

/* Runs one case on CUDA and REF; returns false (after reporting) on failure.
 * With graph, also captures the forward and checks replays bit for bit.
 * routing: ROUTE_* flags. */
static void layer_check_routing(const lcase *c, uint64_t seed, bool graph, int routing) {
    test_rng rng = { seed };
    char err[512];
    const int64_t T = c->T, H = c->H, I = c->I;
    const int32_t E = c->E, k = c->k;
    const int64_t r13 = c->act == MOE_ACT_RELU2 ? I : 2 * I;
    void *w13 = NULL, *w2 = NULL, *sw13 = NULL, *sw2 = NULL;
    float *s13 = NULL, *s2 = NULL, *ss13 = NULL, *ss2 = NULL;
    float *b13 = NULL, *b2 = NULL, *gatev = NULL, *rgate = NULL;
    float *x32 = malloc((size_t)(T * H) * sizeof(float));
    float *logits = malloc((size_t)(T * E) * sizeof(float));
    void *xio = malloc((size_t)(T * H) * 4), *out_ref = malloc((size_t)(T * H) * 4),
         *out_gpu = malloc((size_t)(T * H) * 4), *out_g2 = malloc((size_t)(T * H) * 4);
    float *ref32 = malloc((size_t)(T * H) * sizeof(float));
    float *gpu32 = malloc((size_t)(T * H) * sizeof(float));
    int32_t *map = NULL;
    moe_router *r = NULL;
    moe_routed_experts *ex = NULL;
    moe_shared_experts *sh = NULL;
    moe_layer *lref = NULL, *lgpu = NULL;
    moe_context *ctx = NULL;
    void *ws_host = NULL, *d_x = NULL, *d_out = NULL, *d_ws = NULL;
    float *d_logits = NULL;
    cudaStream_t stream = NULL;
    cudaGraph_t g = NULL;
    cudaGraphExec_t ge = NULL;

    /* fp8: the elementwise tolerance is defined on activations ~ randn/10
     * (vLLM's convention, the bar): larger inputs put more of the
     * W13 outputs near an e4m3 rounding step, where any sum that is not the
     * reference's fp64 one (the tensor cores' fp8 sums keep fewer bits)
     * moves a value by a whole e4m3 step (up to 12%) and, after RELU2's
     * square, the outputs it dominates out of atol. NMSE is checked too. */
    test_fill_normal(&rng, x32, (size_t)(T * H), c->wfmt == FP8 ? 0.1f : 1.0f);
    test_fill_normal(&rng, logits, (size_t)(T * E), 1.5f);
    if (routing & ROUTE_SKEWED)
        for (int64_t t = 0; t < T; t++) logits[t * E] += 4.0f;
    make_weights(&rng, c->wfmt, E, r13, H, 1.0f / sqrtf((float)H), &w13, &s13);
    make_weights(&rng, c->wfmt, E, H, I, 1.0f / sqrtf((float)I), &w2, &s2);
    if (c->biases) {
        b13 = malloc((size_t)(E * r13) * sizeof(float));
        b2  = malloc((size_t)(E * H) * sizeof(float));
        test_fill_normal(&rng, b13, (size_t)(E * r13), 0.1f);
        test_fill_normal(&rng, b2, (size_t)(E * H), 0.1f);
    }
    int32_t n_local = E;
    if (c->remote) { /* every third global expert lives elsewhere; the rest in reverse order */
        map = malloc((size_t)E * sizeof(int32_t));
        n_local = 0;
        for (int32_t e = 0; e < E; e++) n_local += e % 3 != 1;
        int32_t next = n_local - 1;
        for (int32_t e = 0; e < E; e++) map[e] = e % 3 == 1 ? -1 : next--;
        /* the experts object holds n_local experts: reuse the first n_local */
    }
    if (c->use_gate_logits) {
        rgate = malloc((size_t)(E * H) * sizeof(float));
        test_fill_normal(&rng, rgate, (size_t)(E * H), 0.5f / sqrtf((float)H));
    }
    moe_router_options ro = { .n_experts = E, .top_k = k, .scoring = c->scoring,
                              .renormalize = 1, .d_model = c->use_gate_logits ? H : 0,
                              .gate_weight = rgate };
    if (c->scoring == MOE_SCORING_LLAMA4) ro.renormalize = 0;
    float *cbias = NULL;
    if (routing & ROUTE_GROUPED) {
        cbias = malloc((size_t)E * sizeof(float));
        test_fill_normal(&rng, cbias, (size_t)E, 0.5f);
        ro.n_group = 8;
        ro.topk_group = 4;
        ro.correction_bias = cbias;
        ro.routed_scaling_factor = 2.5f;
    }
    moe_experts_options eo = {
        .n_experts = n_local, .d_model = H, .d_ff = I, .format = c->wfmt, .activation = c->act,
        .w13 = { .data = w13, .scales = s13, .bias = b13 },
        .w2 = { .data = w2, .scales = s2, .bias = b2 },
        .n_experts_global = c->remote ? E : 0, .expert_map = map,
    };
    const moe_status rs = moe_router_create(&ro, &r, err, sizeof err);
    free(cbias); /* copied by the router */
    REQUIRE(rs == MOE_OK, "%s", err);
    if (moe_routed_experts_create(&eo, &ex, err, sizeof err)) {
        test_fail(__FILE__, __LINE__, "experts: %s", err);
        goto done;
    }
    if (c->shared) {
        const int64_t Is = c->shared, rs = c->act == MOE_ACT_RELU2 ? Is : 2 * Is;
        make_weights(&rng, c->wfmt, 1, rs, H, 1.0f / sqrtf((float)H), &sw13, &ss13);
        make_weights(&rng, c->wfmt, 1, H, Is, 1.0f / sqrtf((float)Is), &sw2, &ss2);
        if (c->gate) {
            gatev = malloc((size_t)H * sizeof(float));
            test_fill_normal(&rng, gatev, (size_t)H, 1.0f / sqrtf((float)H));
        }
        moe_shared_options so = {
            .mlp = { .n_experts = 1, .d_model = H, .d_ff = Is, .format = c->wfmt,
                     .activation = c->act, .w13 = { .data = sw13, .scales = ss13 },
                     .w2 = { .data = sw2, .scales = ss2 } },
            .gate = gatev,
        };
        if (moe_shared_experts_create(&so, &sh, err, sizeof err)) {
            test_fail(__FILE__, __LINE__, "shared: %s", err);
            goto done;
        }
    }
    CU(cudaStreamCreate(&stream));
    moe_context_options co = { .cuda_stream = stream };
    REQUIRE(moe_context_create(&co, &ctx, err, sizeof err) == MOE_OK, "%s", err);
    moe_layer_options lo = { .router = r, .experts = ex, .context = ctx,
                             .backend = MOE_BACKEND_REF, .io_format = c->io, .max_tokens = T,
                             .shared = sh, .shared_order = c->order };
    if (moe_layer_create(&lo, &lref, err, sizeof err)) {
        test_fail(__FILE__, __LINE__, "ref layer: %s", err);
        goto done;
    }
    lo.backend = MOE_BACKEND_CUDA;
    if (moe_layer_create(&lo, &lgpu, err, sizeof err)) {
        test_fail(__FILE__, __LINE__, "cuda layer: %s", err);
        goto done;
    }

    /* x in the io format; the reference sees the same rounded values */
    const size_t xb = (size_t)(T * H) * io_size(c->io);
    if (c->io == MOE_FORMAT_F32) memcpy(xio, x32, xb);
    else moe__from_f32(c->io, x32, xio, T * H);
    const float *lg_host = c->use_gate_logits ? NULL : logits;
    size_t wsz = moe_layer_workspace_size(lref, T);
    ws_host = moe__aligned_alloc(wsz);
    CHECK_STATUS(moe_layer_forward(lref, T, xio, lg_host, sh, out_ref, ws_host, wsz), MOE_OK);
    moe__to_f32(c->io, out_ref, ref32, T * H);

    size_t dws = moe_layer_workspace_size(lgpu, T);
    CU(cudaMalloc(&d_x, xb));
    CU(cudaMalloc(&d_out, (size_t)(T * H) * 4));
    CU(cudaMalloc(&d_ws, dws));
    CU(cudaMalloc((void **)&d_logits, (size_t)(T * E) * sizeof(float)));
    CU(cudaMemcpy(d_x, xio, xb, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(d_logits, logits, (size_t)(T * E) * sizeof(float), cudaMemcpyHostToDevice));
    /* poison: NaN in every format (0xff bytes) */
    CU(cudaMemset(d_out, 0xff, (size_t)(T * H) * 4));
    CU(cudaMemset(d_ws, 0xff, dws));
    const float *lg_dev = c->use_gate_logits ? NULL : d_logits;
    moe_status s = moe_layer_forward(lgpu, T, d_x, lg_dev, sh, d_out, d_ws, dws);
    if (s) {
        test_fail(__FILE__, __LINE__, "cuda forward: %s: %s", moe_status_name(s),
                  moe_layer_last_error(lgpu));
        goto done;
    }
    CU(cudaStreamSynchronize(stream));
    CU(cudaMemcpy(out_gpu, d_out, (size_t)(T * H) * io_size(c->io), cudaMemcpyDeviceToHost));
    moe__to_f32(c->io, out_gpu, gpu32, T * H);

    long nan_at = test_find_nan(gpu32, (size_t)(T * H));
    CHECK(nan_at < 0, "T=%lld H=%lld %s: NaN at %ld", (long long)T, (long long)H,
          moe_format_name(c->wfmt), nan_at);
    if (c->wfmt == MOE_FORMAT_FP8_BLOCK) {
        long bad = 0, first = -1;
        for (int64_t i = 0; i < T * H; i++) {
            float d = fabsf(gpu32[i] - ref32[i]);
            if (!(d <= FP8_TOL + FP8_TOL * fabsf(ref32[i]))) {
                if (first < 0) first = (long)i;
                bad++;
            }
        }
        const double nmse = test_nmse_f(gpu32, ref32, (size_t)(T * H));
        CHECK(bad == 0 && nmse <= NMSE_HALF,
              "fp8 T=%lld H=%lld I=%lld E=%d k=%d act %d: %ld elements off, first %ld: "
              "gpu %g ref %g (nmse %.3g)", (long long)T, (long long)H, (long long)I, E, k,
              (int)c->act, bad, first, first >= 0 ? (double)gpu32[first] : 0.0,
              first >= 0 ? (double)ref32[first] : 0.0, nmse);
    } else {
        double nmse = test_nmse_f(gpu32, ref32, (size_t)(T * H));
        CHECK(nmse <= NMSE_HALF, "%s T=%lld H=%lld I=%lld E=%d k=%d act %d io %s: nmse %.3g",
              moe_format_name(c->wfmt), (long long)T, (long long)H, (long long)I, E, k,
              (int)c->act, moe_format_name(c->io), nmse);
    }

    if (T > 8) {
        /* batch invariance across regimes: the first 8 tokens alone (decode
         * tiles: on sm_90a wgmma with the weights as the A operand, else
         * mma.sync) give the bits they got in the whole batch (prefill
         * tiles: on sm_90a wgmma with the activations as A) */
        const size_t nb = (size_t)(8 * H) * io_size(c->io);
        CU(cudaMemset(d_out, 0xff, (size_t)(T * H) * 4));
        s = moe_layer_forward(lgpu, 8, d_x, lg_dev, sh, d_out, d_ws, dws);
        CHECK(s == MOE_OK, "8-token forward: %s", moe_layer_last_error(lgpu));
        CU(cudaStreamSynchronize(stream));
        CU(cudaMemcpy(out_g2, d_out, nb, cudaMemcpyDeviceToHost));
        CHECK(memcmp(out_g2, out_gpu, nb) == 0,
              "%s T=%lld: the first 8 tokens alone differ from the same tokens in the batch",
              moe_format_name(c->wfmt), (long long)T);
    }

    if (graph) {
        /* capture, then replay twice over a poisoned output: same bits */
        CU(cudaMemset(d_out, 0xff, (size_t)(T * H) * 4));
        CU(cudaStreamSynchronize(stream));
        CU(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        s = moe_layer_forward(lgpu, T, d_x, lg_dev, sh, d_out, d_ws, dws);
        cudaError_t ce = cudaStreamEndCapture(stream, &g);
        CHECK(s == MOE_OK, "forward under capture: %s", moe_layer_last_error(lgpu));
        CU(ce);
        CU(cudaGraphInstantiate(&ge, g, 0));
        for (int rep = 0; rep < 2; rep++) {
            CU(cudaMemset(d_out, 0xff, (size_t)(T * H) * 4));
            CU(cudaGraphLaunch(ge, stream));
            CU(cudaStreamSynchronize(stream));
            CU(cudaMemcpy(out_g2, d_out, (size_t)(T * H) * io_size(c->io),
                          cudaMemcpyDeviceToHost));
            CHECK(memcmp(out_g2, out_gpu, (size_t)(T * H) * io_size(c->io)) == 0,
                  "graph replay %d differs from the direct forward", rep);
        }
    }
done:
    if (ge) cudaGraphExecDestroy(ge);
    if (g) cudaGraphDestroy(g);
    cudaFree(d_x); cudaFree(d_out); cudaFree(d_ws); cudaFree(d_logits);
    moe_layer_destroy(lgpu);
    moe_layer_destroy(lref);
    if (stream) cudaStreamDestroy(stream);
    moe_context_destroy(ctx);
    moe_shared_experts_destroy(sh);
    moe_routed_experts_destroy(ex);
    moe_router_destroy(r);
    moe__aligned_free(ws_host);
    free(w13); free(w2); free(s13); free(s2); free(sw13); free(sw2); free(ss13); free(ss2);
    free(b13); free(b2); free(gatev); free(rgate); free(map);
    free(x32); free(logits); free(xio); free(out_ref); free(out_gpu); free(out_g2);
    free(ref32); free(gpu32);
}

static void layer_check(const lcase *c, uint64_t seed, bool graph) {
    layer_check_routing(c, seed, graph, 0);
}

TEST(cuda_layer_bf16_shape_grid) {
    if (!have_device()) TEST_SKIP("no CUDA device");
    static const lcase cases[] = {
        /* T, H, I, E, k: decode tiles (few rows per expert) and prefill tiles */
        { 1, 256, 128, 8, 2, MOE_FORMAT_BF16, MOE_FORMAT_F32, MOE_ACT_SILU, 0, 0, 0, 0, 0, 0, 0 },
        { 5, 512, 256, 64, 8, MOE_FORMAT_BF16, MOE_FORMAT_BF16, MOE_ACT_SILU, 0, 0, 0, 0, 0, 0, 0 },
        { 64, 256, 192, 8, 2, MOE_FORMAT_BF16, MOE_FORMAT_F32, MOE_ACT_SILU, 0, 0, 0, 0, 0, 0, 0 },
        { 300, 384, 160, 16, 4, BF16, F32, MOE_ACT_SILU, 0, 0, 0, 0, 0, 0, 0 },
        /* 25-64 rows per expert: the 64-row tile where the persistent tile's 256
         * columns do not divide 2 I and H (as gpt-oss's 2880), else that tile */
        { 120, 384, 160, 16, 4, BF16, F32, MOE_ACT_SILU, 0, 0, 0, 0, 0, 0, 0 },
        { 120, 512, 256, 16, 4, BF16, BF16, MOE_ACT_SILU, 0, 1, 0, 0, 0, 0, 0 },
        /* 13-48 rows per expert with whole column tiles: the persistent kernel on
         * 64-row tiles (one consumer warpgroup); several tiles per CTA, long K
         * (W13's 16 slices through 5 stages), f16 (skewed routing: below) */
        { 300, 1024, 512, 64, 8, MOE_FORMAT_F16, MOE_FORMAT_F16, MOE_ACT_GELU_TANH, 0, 0, 0, 0,
          0, 0, 0 },
        { 700, 256, 128, 4, 2, MOE_FORMAT_BF16, MOE_FORMAT_F16, MOE_ACT_SILU, 0, 0, 0, 0, 0, 0, 0 },
        { 33, 144, 48, 12, 3, MOE_FORMAT_F16, MOE_FORMAT_F32, MOE_ACT_SILU, 0, 0, 0, 0, 0, 0, 0 },
        { 200, 256, 128, 8, 2, MOE_FORMAT_F16, MOE_FORMAT_F16, MOE_ACT_GELU, 0, 0, 0, 0, 0, 0, 0 },
        { 1100, 256, 128, 16, 4, BF16, F32, MOE_ACT_SILU, 0, 0, 1, 0, 0, 0, 0 },
        /* f16 and biases on the 128-row tiles; 160 columns: a gated tile partly empty */
        { 600, 256, 160, 8, 2, MOE_FORMAT_F16, MOE_FORMAT_F16, MOE_ACT_GELU_TANH, 0, 1, 0, 0, 0,
          0, 0 },
        /* long K on the 128-row tiles (16 stages of W13, then of W2): every stage
         * buffer refilled three times, both phases of its mbarriers */
        { 400, 1024, 256, 8, 2, BF16, F32, MOE_ACT_SILU, 0, 0, 0, 0, 0, 0, 0 },
        { 300, 256, 1024, 4, 2, BF16, F32, MOE_ACT_GELU, 0, 1, 0, 0, 0, 0, 0 },
        /* 384+ rows per expert: on sm_90a, pairs of CTAs on the halves of 256-row
         * tiles sharing the weight stages (long K: each stage refilled in both
         * CTAs); 550 rows: an expert's last 256-row tile has rows in its first
         * half only, so the second CTA only loads weights */
        { 1000, 1024, 256, 4, 2, BF16, F32, MOE_ACT_SILU, 0, 0, 0, 0, 0, 0, 0 },
        { 1100, 256, 160, 4, 2, MOE_FORMAT_F16, MOE_FORMAT_F16, MOE_ACT_GELU_TANH, 0, 1, 0, 0,
          0, 0, 0 },
        /* bf16 x and out: W2 stores bf16 slot rows (finalize.cu) from the 128-row
         * tiles (with biases), the pairs, and, in the 8-token forward, the decode
         * tiles, which must round them to the same bits */
        { 600, 512, 256, 8, 2, BF16, BF16, MOE_ACT_SILU, 0, 1, 0, 0, 0, 0, 0 },
        { 1600, 256, 128, 4, 2, BF16, BF16, MOE_ACT_SILU, 0, 0, 0, 0, 0, 0, 0 },
        /* biases on 128-row tiles inside the matrix (their plain epilogue with
         * biases, grouped-gemm-ws.cuh): SwiGLU-OAI's interleaved rows (also
         * paired, 800 rows per expert) and ReLU2's two passes of 128 columns */
        { 400, 256, 256, 8, 2, BF16, BF16, MOE_ACT_SWIGLU_OAI, 0, 1, 0, 0, 0, 0, 0 },
        { 1600, 256, 256, 4, 2, BF16, F32, MOE_ACT_SWIGLU_OAI, 0, 1, 0, 0, 0, 0, 0 },
        { 400, 256, 256, 8, 2, BF16, F32, MOE_ACT_RELU2, 0, 1, 0, 0, 0, 0, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        layer_check(&cases[i], 100 + i, false);
    /* one expert with most of the rows: its several tiles and tail on the
     * 64-row persistent kernel (25 rows per expert on average), on the
     * 128-row one (100) */
    static const lcase skewed[] = {
        { 200, 512, 256, 16, 2, BF16, F32, MOE_ACT_SILU, 0, 0, 0, 0, 0, 0, 0 },
        { 400, 512, 256, 8, 2, BF16, BF16, MOE_ACT_SILU, 0, 1, 0, 0, 0, 0, 0 },
    };
    for (size_t i = 0; i < sizeof skewed / sizeof *skewed; i++)
        layer_check_routing(&skewed[i], 560 + i, false, ROUTE_SKEWED);
}

TEST(cuda_layer_activations_biases_maps) {
    if (!have_device()) TEST_SKIP("no CUDA device");
    static const moe_activation acts[] = { MOE_ACT_SILU, MOE_ACT_GELU, MOE_ACT_GELU_TANH,
                                           MOE_ACT_SWIGLU_OAI, MOE_ACT_RELU2 };
    for (int a = 0; a < 5; a++) {
        lcase c = { 40, 256, 96, 12, 4, MOE_FORMAT_BF16, MOE_FORMAT_F32, acts[a],
                    MOE_SCORING_SOFTMAX, 1, a % 2, 0, 0, 0, 0 };
        layer_check(&c, 200 + a, false);
        c.T = 400;
        layer_check(&c, 210 + a, false);
        c.T = 1600; /* 533 rows per expert: the paired 256-row tiles on sm_90a */
        layer_check(&c, 230 + a, false);
        c.T = 2; /* 8 slots: the decode prologue's one-warp grouping, remote experts too */
        layer_check(&c, 220 + a, false);
    }
}

TEST(cuda_layer_router_variants_and_gate) {
    if (!have_device()) TEST_SKIP("no CUDA device");
    lcase c = { 50, 256, 128, 16, 1, MOE_FORMAT_BF16, MOE_FORMAT_F32, MOE_ACT_SILU,
                MOE_SCORING_LLAMA4, 0, 0, 64, 0, 0, MOE_SHARED_BEFORE };
    layer_check(&c, 300, false);
    c.T = 1200; /* 75 rows per expert: the 128-row tiles scale W13's input per slot */
    layer_check(&c, 303, false);
    c.T = 50;
    c.scoring = MOE_SCORING_SIGMOID; c.k = 4; c.use_gate_logits = 1;
    layer_check(&c, 301, false);
    c.scoring = MOE_SCORING_SOFTMAX_TOPK; c.T = 3;
    layer_check(&c, 302, false);
}

TEST(cuda_layer_shared_experts_orders) {
    if (!have_device()) TEST_SKIP("no CUDA device");
    static const moe_shared_order orders[] = { MOE_SHARED_BEFORE, MOE_SHARED_OVERLAPPED,
                                               MOE_SHARED_NONE };
    for (int o = 0; o < 3; o++) {
        lcase c = { 24, 256, 64, 16, 4, MOE_FORMAT_BF16, MOE_FORMAT_BF16, MOE_ACT_SILU,
                    MOE_SCORING_SOFTMAX, 0, 0, 320, o != 1, 0, orders[o] };
        layer_check(&c, 400 + o, o == 1);
        c.T = 260;
        layer_check(&c, 410 + o, false);
        c.T = 800; /* the shared expert's 800 rows: paired 256-row tiles on sm_90a */
        layer_check(&c, 420 + o, false);
    }
}

TEST(cuda_layer_fp8_block) {
    if (!have_device()) TEST_SKIP("no CUDA device");
    static const lcase cases[] = {
        { 1, 256, 256, 8, 2, FP8, F32, MOE_ACT_SILU, 0, 0, 0, 0, 0, 0, 0 },
        { 9, 512, 384, 32, 8, FP8, BF16, MOE_ACT_SILU, 0, 0, 0, 0, 0, 0, 0 },
        { 300, 384, 256, 8, 2, FP8, F32, MOE_ACT_SILU, 0, 1, 0, 0, 0, 0, 0 },
        { 100, 256, 208, 8, 3, FP8, F32, MOE_ACT_SWIGLU_OAI, 0, 0, 1, 0, 0, 0, 0 },
        { 77, 320, 128, 6, 2, FP8, F32, MOE_ACT_RELU2, 0, 0, 0, 0, 0, 0, 0 },
        { 64, 256, 128, 8, 2, FP8, F32, MOE_ACT_SILU, 0, 0, 0, 256, 1, 0,
          MOE_SHARED_OVERLAPPED },
        /* decode grids of at least 4 CTAs per SM of a 132-SM card: the wide
         * (BN 128) decode tiles, 16 and 32 rows */
        { 16, 1024, 512, 64, 8, FP8, F32, MOE_ACT_SILU, 0, 0, 0, 0, 0, 0, 0 },
        { 48, 1536, 768, 32, 8, FP8, BF16, MOE_ACT_SILU, 0, 0, 0, 0, 0, 0, 0 },
        /* long K on the prefill tiles (10 stages of W13): stage buffers refilled */
        { 200, 1280, 256, 8, 2, FP8, F32, MOE_ACT_SILU, 0, 0, 0, 0, 0, 0, 0 },
        /* bf16 out: bf16 slot rows from the prefill and (8 tokens) decode tiles */
        { 300, 384, 256, 8, 2, FP8, BF16, MOE_ACT_SILU, 0, 1, 0, 0, 0, 0, 0 },
        /* the persistent tile (sm_90a, 64+ rows per expert, whole column
         * tiles) in both GEMMs: expert tails, several tiles per CTA (W13:
         * 256 steps over 132 CTAs), every gated activation, SWIGLU_OAI with
         * biases, Llama-4's input scale, W2's K over many stages */
        { 600, 512, 384, 8, 2, FP8, BF16, MOE_ACT_SILU, 0, 0, 0, 0, 0, 0, 0 },
        { 1024, 512, 512, 16, 4, FP8, BF16, MOE_ACT_SILU, 0, 0, 0, 0, 0, 0, 0 },
        { 400, 256, 128, 4, 2, FP8, F32, MOE_ACT_GELU, 0, 0, 0, 0, 0, 0, 0 },
        { 400, 256, 128, 4, 2, FP8, F32, MOE_ACT_GELU_TANH, 0, 0, 0, 0, 0, 0, 0 },
        { 300, 256, 256, 8, 2, FP8, F32, MOE_ACT_SWIGLU_OAI, 0, 1, 0, 0, 0, 0, 0 },
        { 256, 256, 128, 4, 1, FP8, BF16, MOE_ACT_SILU, MOE_SCORING_LLAMA4, 0, 0, 0, 0, 0, 0 },
        { 200, 256, 1280, 4, 2, FP8, F32, MOE_ACT_SILU, 0, 0, 0, 0, 0, 0, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        layer_check(&cases[i], 500 + i, i == 5);
}

/* One token: the decode prologue's one-warp routing and grouping, then the
 * decode tiles. Every router variant (DeepSeek-V3's grouped routing too),
 * experts held elsewhere (fewer tiles than slots), Llama-4's input scale,
 * shared experts before and overlapped, both formats, graph replays. */
TEST(cuda_layer_one_token) {
    if (!have_device()) TEST_SKIP("no CUDA device");
    static const lcase cases[] = {
        { 1, 512, 256, 128, 8, BF16, BF16, MOE_ACT_SILU, 0, 0, 0, 0, 0, 0, 0 },
        { 1, 512, 256, 64, 8, FP8, BF16, MOE_ACT_SILU, MOE_SCORING_SIGMOID, 0, 0, 256, 0, 0,
          MOE_SHARED_OVERLAPPED },
        { 1, 256, 128, 64, 8, BF16, F32, MOE_ACT_SILU, MOE_SCORING_SIGMOID, 0, 1, 0, 0, 0, 0 },
        { 1, 256, 128, 24, 6, FP8, F32, MOE_ACT_SILU, MOE_SCORING_SOFTMAX_TOPK, 0, 1, 0, 0, 0,
          0 },
        { 1, 256, 192, 32, 4, BF16, F32, MOE_ACT_SWIGLU_OAI, MOE_SCORING_SOFTMAX_TOPK, 1, 0, 0,
          0, 0, 0 },
        { 1, 512, 256, 16, 1, BF16, BF16, MOE_ACT_SILU, MOE_SCORING_LLAMA4, 0, 0, 256, 0, 0,
          MOE_SHARED_BEFORE },
        { 1, 512, 256, 16, 1, FP8, BF16, MOE_ACT_SILU, MOE_SCORING_LLAMA4, 0, 0, 0, 0, 0, 0 },
        { 1, 256, 128, 8, 2, BF16, F32, MOE_ACT_GELU, 0, 0, 0, 0, 0, 1, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        layer_check_routing(&cases[i], 700 + i, true, i == 1 || i == 2 ? ROUTE_GROUPED : 0);
}

TEST(cuda_graph_replay_bitwise) {
    if (!have_device()) TEST_SKIP("no CUDA device");
    lcase c = { 48, 512, 256, 32, 4, MOE_FORMAT_BF16, MOE_FORMAT_BF16, MOE_ACT_SILU,
                MOE_SCORING_SOFTMAX, 0, 0, 0, 0, 0, 0 };
    layer_check(&c, 600, true);
    c.T = 1100; /* 4400 slots: the multi-block grouping path */
    layer_check(&c, 601, true);
    c.E = 8; /* 550 rows per expert: two-CTA clusters (sm_90a) in the graph */
    layer_check(&c, 602, true);
}

TEST(cuda_layer_rejects_formats) {
    if (!have_device()) TEST_SKIP("no CUDA device");
    char err[256];
    const int64_t H = 32, I = 32;
    float *w13 = calloc((size_t)(4 * 2 * I * H), 4), *w2 = calloc((size_t)(4 * H * I), 4);
    moe_router_options ro = { .n_experts = 4, .top_k = 2 };
    moe_experts_options eo = { .n_experts = 4, .d_model = H, .d_ff = I, .format = MOE_FORMAT_F32,
                               .w13 = { .data = w13 }, .w2 = { .data = w2 } };
    moe_router *r = NULL;
    moe_routed_experts *ex = NULL;
    moe_layer *l = NULL;
    REQUIRE(moe_router_create(&ro, &r, err, sizeof err) == MOE_OK, "%s", err);
    REQUIRE(moe_routed_experts_create(&eo, &ex, err, sizeof err) == MOE_OK, "%s", err);
    moe_layer_options lo = { .router = r, .experts = ex, .backend = MOE_BACKEND_CUDA };
    CHECK_STATUS(moe_layer_create(&lo, &l, err, sizeof err), MOE_ERR_UNSUPPORTED);
    CHECK(strstr(err, "unsupported on cuda: f32") != NULL, "message: %s", err);
    /* W2 in another format than W13 (as in GGUF Q4_K_M files): refused by name. */
    moe_routed_experts_destroy(ex);
    ex = NULL;
    const moe_format f16 = MOE_FORMAT_F16;
    eo.format    = MOE_FORMAT_BF16;
    eo.w2_format = &f16;
    REQUIRE(moe_routed_experts_create(&eo, &ex, err, sizeof err) == MOE_OK, "%s", err);
    lo.experts = ex;
    CHECK_STATUS(moe_layer_create(&lo, &l, err, sizeof err), MOE_ERR_UNSUPPORTED);
    CHECK(strstr(err, "unsupported on cuda: mixed formats") != NULL, "message: %s", err);
    moe_layer_destroy(l);
    moe_routed_experts_destroy(ex);
    moe_router_destroy(r);
    free(w13); free(w2);
}

/* Without a device, asking for the CUDA backend fails cleanly at creation. */
TEST(cuda_layer_no_device_error) {
    if (have_device()) TEST_SKIP("a CUDA device is present");
    char err[256] = "";
    const int64_t H = 32, I = 32;
    uint16_t *w13 = calloc((size_t)(4 * 2 * I * H), 2), *w2 = calloc((size_t)(4 * H * I), 2);
    moe_router_options ro = { .n_experts = 4, .top_k = 2 };
    moe_experts_options eo = { .n_experts = 4, .d_model = H, .d_ff = I, .format = BF16,
                               .w13 = { .data = w13 }, .w2 = { .data = w2 } };
    moe_router *r = NULL;
    moe_routed_experts *ex = NULL;
    moe_layer *l = NULL;
    REQUIRE(moe_router_create(&ro, &r, err, sizeof err) == MOE_OK, "%s", err);
    REQUIRE(moe_routed_experts_create(&eo, &ex, err, sizeof err) == MOE_OK, "%s", err);
    moe_layer_options lo = { .router = r, .experts = ex, .backend = MOE_BACKEND_CUDA };
    CHECK_STATUS(moe_layer_create(&lo, &l, err, sizeof err), MOE_ERR_NO_DEVICE);
    CHECK(l == NULL, "no layer on failure");
    CHECK(strstr(err, "no CUDA device") != NULL, "message: %s", err);
    moe_routed_experts_destroy(ex);
    moe_router_destroy(r);
    free(w13); free(w2);
}

/* The formats the CUDA kernels run, as moe_format_supported() reports them. */
TEST(cuda_format_supported) {
    CHECK(moe_format_supported(BF16, MOE_BACKEND_CUDA) == 1);
    CHECK(moe_format_supported(MOE_FORMAT_F16, MOE_BACKEND_CUDA) == 1);
    CHECK(moe_format_supported(FP8, MOE_BACKEND_CUDA) == 1);
    CHECK(moe_format_supported(F32, MOE_BACKEND_CUDA) == 0);
    CHECK(moe_format_supported(MOE_FORMAT_Q4_K, MOE_BACKEND_CUDA) == 0);
    CHECK(moe_format_supported(MOE_FORMAT_FP8_TENSOR, MOE_BACKEND_CUDA) == 0);
}

#endif /* MOE_HAVE_CUDA */
