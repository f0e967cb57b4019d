/*
 * test-ep-map.c - the expert map: placement (linear with the remainder on the
 * first ranks, round-robin, as vLLM's determine_expert_map), replicas, the
 * per-token replica hash, reconfiguration, and bad options.
 */
#include "test.h"

#include <stdlib.h>
#include <string.h>

static moe_expert_map *make_map(int32_t E, int32_t red, int32_t ep, int32_t rank,
                                moe_placement pl) {
    moe_expert_map_options o = { .n_experts = E, .n_redundant = red, .ep_size = ep,
                                 .ep_rank = rank, .placement = pl };
    moe_expert_map *m = NULL;
    char err[256];
    moe_status st = moe_expert_map_create(&o, &m, err, sizeof err);
    CHECK(st == MOE_OK, "create E=%d red=%d ep=%d rank=%d: %s", E, red, ep, rank, err);
    return m;
}

TEST(ep_map_linear_remainder_first_ranks) {
    /* 10 experts on 4 ranks: 3, 3, 2, 2 (vLLM: base 2, rem 2). */
    const int32_t want_start[4] = { 0, 3, 6, 8 }, want_n[4] = { 3, 3, 2, 2 };
    for (int32_t r = 0; r < 4; r++) {
        moe_expert_map *m = make_map(10, 0, 4, r, MOE_PLACEMENT_LINEAR);
        REQUIRE(m);
        CHECK(moe_expert_map_n_local(m) == want_n[r], "rank %d holds %d", r,
              moe_expert_map_n_local(m));
        const int32_t *t = moe_expert_map_table(m);
        for (int32_t g = 0; g < 10; g++) {
            int32_t want = g >= want_start[r] && g < want_start[r] + want_n[r] ? g - want_start[r]
                                                                                 : -1;
            CHECK(t[g] == want, "rank %d: table[%d] = %d, want %d", r, g, t[g], want);
            CHECK(moe_expert_map_to_local(m, g) == want, "to_local");
            int32_t owner = g < 3 ? 0 : g < 6 ? 1 : g < 8 ? 2 : 3;
            CHECK(moe_expert_map_owner(m, g) == owner, "owner of %d = %d", g,
                  moe_expert_map_owner(m, g));
        }
        for (int32_t i = 0; i < want_n[r]; i++)
            CHECK(moe_expert_map_to_global(m, i) == want_start[r] + i, "to_global");
        CHECK(moe_expert_map_to_global(m, want_n[r]) == -1, "to_global past the end");
        CHECK(moe_expert_map_to_local(m, -1) == -1 && moe_expert_map_to_local(m, 10) == -1,
              "out of range ids map to -1");
        moe_expert_map_destroy(m);
    }
}

TEST(ep_map_round_robin) {
    for (int32_t r = 0; r < 3; r++) {
        moe_expert_map *m = make_map(8, 0, 3, r, MOE_PLACEMENT_ROUND_ROBIN);
        REQUIRE(m);
        /* Rank r holds r, r + 3, r + 6 (< 8), local ids in that order. */
        int32_t n = 0;
        for (int32_t g = r; g < 8; g += 3) {
            CHECK(moe_expert_map_to_local(m, g) == n, "rank %d: expert %d local %d", r, g,
                  moe_expert_map_to_local(m, g));
            CHECK(moe_expert_map_to_global(m, n) == g, "to_global");
            n++;
        }
        CHECK(moe_expert_map_n_local(m) == n, "rank %d holds %d, want %d", r,
              moe_expert_map_n_local(m), n);
        for (int32_t g = 0; g < 8; g++) {
            int32_t owner = g % 3;
            CHECK(moe_expert_map_owner(m, g) == owner, "owner");
        }
        moe_expert_map_destroy(m);
    }
}

TEST(ep_map_single_rank_is_identity) {
    moe_expert_map *m = make_map(7, 0, 0, 0, MOE_PLACEMENT_LINEAR);
    REQUIRE(m);
    CHECK(moe_expert_map_ep_size(m) == 1, "ep_size 0 means 1");
    for (int32_t g = 0; g < 7; g++) CHECK(moe_expert_map_table(m)[g] == g, "identity");
    moe_expert_map_destroy(m);
}

TEST(ep_map_replicas_and_route_hash) {
    /* 6 logical experts, 2 redundant slots, 4 ranks of 2 slots. Initially
     * slots 6, 7 hold experts 0, 1. */
    moe_expert_map *m = make_map(6, 2, 4, 3, MOE_PLACEMENT_LINEAR);
    REQUIRE(m);
    CHECK(moe_expert_map_n_physical(m) == 8, "P");
    CHECK(moe_expert_map_logical(m, 6) == 0 && moe_expert_map_logical(m, 7) == 1, "initial");
    CHECK(moe_expert_map_n_replicas(m, 0) == 2 && moe_expert_map_replica(m, 0, 1) == 6,
          "expert 0 replicas");
    CHECK(moe_expert_map_n_replicas(m, 2) == 1, "expert 2 has one slot");
    CHECK(moe_expert_map_to_local(m, 6) == 0 && moe_expert_map_to_local(m, 7) == 1,
          "rank 3 holds slots 6, 7");

    /* New assignment: expert 3 gets three slots, 0..5 keep one. */
    const int32_t p2l[8] = { 3, 0, 1, 3, 2, 4, 5, 3 };
    char err[256];
    CHECK_STATUS(moe_expert_map_set_physical(m, p2l, err, sizeof err), MOE_OK);
    CHECK(moe_expert_map_n_replicas(m, 3) == 3, "expert 3 replicas");
    const int32_t want_rep[3] = { 0, 3, 7 };
    for (int32_t r = 0; r < 3; r++)
        CHECK(moe_expert_map_replica(m, 3, r) == want_rep[r], "replica %d", r);

    /* Token t picks replica ((t * 2654435769) mod 2^32) mod count for every slot. */
    enum { T = 50, K = 2 };
    int32_t ids[T * K], phys[T * K], load[8] = { 0 };
    for (int t = 0; t < T; t++) ids[t * K] = 3, ids[t * K + 1] = t % 6;
    CHECK_STATUS(moe_expert_map_route(m, T, K, ids, phys, load), MOE_OK);
    int32_t want_load[8] = { 0 };
    for (int t = 0; t < T; t++) {
        uint64_t h = ((uint64_t)t * 2654435769ull) & 0xffffffffull;
        for (int j = 0; j < K; j++) {
            int32_t e = ids[t * K + j], rc = 0, rep[8];
            for (int s = 0; s < 8; s++)
                if (p2l[s] == e) rep[rc++] = s;
            int32_t want = rep[h % (uint64_t)rc];
            CHECK(phys[t * K + j] == want, "token %d slot %d: %d, want %d", t, j,
                  phys[t * K + j], want);
            want_load[want]++;
        }
    }
    CHECK(memcmp(load, want_load, sizeof load) == 0, "load counters");

    /* A bad id leaves everything unwritten. */
    ids[5] = 6;
    int32_t before[T * K];
    memcpy(before, phys, sizeof phys);
    CHECK_STATUS(moe_expert_map_route(m, T, K, ids, phys, NULL), MOE_ERR_RANGE);
    CHECK(memcmp(before, phys, sizeof phys) == 0, "nothing written on error");

    /* Every logical expert must keep a slot. */
    const int32_t lost[8] = { 0, 0, 1, 2, 3, 4, 0, 0 };
    CHECK_STATUS(moe_expert_map_set_physical(m, lost, err, sizeof err), MOE_ERR_INVALID_ARG);
    const int32_t bad[8] = { 0, 1, 2, 3, 4, 5, 6, 0 };
    CHECK_STATUS(moe_expert_map_set_physical(m, bad, err, sizeof err), MOE_ERR_RANGE);
    CHECK(moe_expert_map_n_replicas(m, 3) == 3, "a rejected assignment changes nothing");
    moe_expert_map_destroy(m);
}

TEST(ep_map_reconfigure) {
    moe_expert_map *m = make_map(12, 0, 2, 1, MOE_PLACEMENT_LINEAR);
    REQUIRE(m);
    CHECK(moe_expert_map_n_local(m) == 6 && moe_expert_map_to_global(m, 0) == 6, "2 ranks");
    char err[256];
    CHECK_STATUS(moe_expert_map_reconfigure(m, 4, 3, err, sizeof err), MOE_OK);
    CHECK(moe_expert_map_n_local(m) == 3 && moe_expert_map_to_global(m, 0) == 9, "4 ranks");
    CHECK(moe_expert_map_table(m)[6] == -1 && moe_expert_map_table(m)[11] == 2, "table");
    CHECK_STATUS(moe_expert_map_reconfigure(m, 4, 4, err, sizeof err), MOE_ERR_INVALID_ARG);
    CHECK(moe_expert_map_ep_rank(m) == 3, "a failed reconfigure keeps the map");
    moe_expert_map_destroy(m);
}

TEST(ep_map_bad_options) {
    char err[256];
    moe_expert_map *m = (moe_expert_map *)1;
    moe_expert_map_options o = { .n_experts = 8, .ep_size = 3, .ep_rank = 3 };
    CHECK_STATUS(moe_expert_map_create(&o, &m, err, sizeof err), MOE_ERR_INVALID_ARG);
    CHECK(m == NULL, "out cleared on failure");
    o = (moe_expert_map_options){ .n_experts = 2, .ep_size = 3 };
    CHECK_STATUS(moe_expert_map_create(&o, &m, err, sizeof err), MOE_ERR_INVALID_ARG);
    o = (moe_expert_map_options){ .n_experts = 8, .n_redundant = 2, .ep_size = 3 };
    CHECK_STATUS(moe_expert_map_create(&o, &m, err, sizeof err), MOE_ERR_INVALID_ARG);
    CHECK(strstr(err, "divisible") != NULL, "message: %s", err);
    o = (moe_expert_map_options){ .n_experts = 8, .n_redundant = 4, .ep_size = 3,
                                  .placement = MOE_PLACEMENT_ROUND_ROBIN };
    CHECK_STATUS(moe_expert_map_create(&o, &m, err, sizeof err), MOE_ERR_INVALID_ARG);
    o = (moe_expert_map_options){ .n_experts = 0 };
    CHECK_STATUS(moe_expert_map_create(&o, &m, err, sizeof err), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_expert_map_create(NULL, &m, err, sizeof err), MOE_ERR_INVALID_ARG);
    moe_expert_map_destroy(NULL);
}
