/*
 * hello-moe.c - the smallest complete use of libmoe: a Mixtral-shaped layer
 * scaled down (8 experts, top-2), random bf16 weights, 4 tokens.
 *
 *     cc hello-moe.c $(pkg-config --cflags --libs moe) -o hello-moe && ./hello-moe
 */
#include <moe.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { E = 8, K = 2, H = 256, I = 512, T = 4 };

static uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static float frand(void) { return (float)rand() / RAND_MAX - 0.5f; }

int main(void) {
    uint16_t *w13 = malloc(sizeof *w13 * E * 2 * I * H), *w2 = malloc(sizeof *w2 * E * H * I);
    float x[T * H], logits[T * E], out[T * H];
    for (size_t i = 0; i < (size_t)E * 2 * I * H; i++) w13[i] = to_bf16(0.1f * frand());
    for (size_t i = 0; i < (size_t)E * H * I; i++) w2[i] = to_bf16(0.1f * frand());
    for (int i = 0; i < T * H; i++) x[i] = frand();
    for (int i = 0; i < T * E; i++) logits[i] = frand();

    char err[256];
    moe_router *router = NULL;
    moe_routed_experts *experts = NULL;
    moe_layer *layer = NULL;
    moe_router_options ro = { .n_experts = E, .top_k = K, .scoring = MOE_SCORING_SOFTMAX,
                              .renormalize = 1 };
    moe_experts_options eo = { .n_experts = E, .d_model = H, .d_ff = I,
                               .format = MOE_FORMAT_BF16, .activation = MOE_ACT_SILU,
                               .w13 = { .data = w13 }, .w2 = { .data = w2 } };
    if (moe_router_create(&ro, &router, err, sizeof err) ||
        moe_routed_experts_create(&eo, &experts, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    moe_layer_options lo = { .router = router, .experts = experts, .max_tokens = T };
    if (moe_layer_create(&lo, &layer, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    size_t ws_size = moe_layer_workspace_size(layer, T);
    void  *ws      = aligned_alloc(64, (ws_size + 63) / 64 * 64);
    moe_status st  = moe_layer_forward(layer, T, x, logits, NULL, out, ws, ws_size);
    if (st) {
        fprintf(stderr, "%s: %s\n", moe_status_name(st), moe_layer_last_error(layer));
        return 1;
    }
    printf("libmoe %s, %s experts: out[0][0..3] = %.5f %.5f %.5f %.5f\n", moe_version(),
           moe_layer_experts_impl(layer), out[0], out[1], out[2], out[3]);
    free(ws);
    moe_layer_destroy(layer);
    moe_routed_experts_destroy(experts);
    moe_router_destroy(router);
    free(w13);
    free(w2);
    return 0;
}
