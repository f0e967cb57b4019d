/*
 * test-eplb.c - the EPLB policy against the golden vector of DeepSeek's EPLB
 * (also vLLM's tests/distributed/test_eplb_algo.py::test_basic_rebalance),
 * documented tie-breaking, property tests on random skewed loads, the load
 * window, balancedness, the move count and the migration plan.
 */
#include "test.h"

#include "../src/ep/ep.h"   /* moe__eplb_plan */

#include <stdlib.h>
#include <string.h>

TEST(eplb_golden_vector) {
    const double w[2][12] = {
        { 90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86 },
        { 20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27 },
    };
    const int32_t want_p2l[2][16] = {
        { 5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1 },
        { 7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1 },
    };
    const int32_t want_cnt[2][12] = {
        { 1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1 },
        { 1, 2, 1, 1, 1, 2, 2, 1, 2, 1, 1, 1 },
    };
    int32_t p2l[2][16], cnt[2][12];
    char err[256];
    CHECK_STATUS(moe_eplb_rebalance(&w[0][0], 2, 12, 16, 4, 2, 8, NULL, &p2l[0][0], &cnt[0][0],
                                    err, sizeof err), MOE_OK);
    for (int l = 0; l < 2; l++) {
        for (int s = 0; s < 16; s++)
            CHECK(p2l[l][s] == want_p2l[l][s], "layer %d slot %d: %d, want %d", l, s, p2l[l][s],
                  want_p2l[l][s]);
        for (int e = 0; e < 12; e++)
            CHECK(cnt[l][e] == want_cnt[l][e], "layer %d logcnt[%d] = %d, want %d", l, e,
                  cnt[l][e], want_cnt[l][e]);
    }
}

TEST(eplb_ties_are_deterministic) {
    /* Equal loads, 4 experts, 6 slots, 1 group, 1 node, 2 ranks. Replication
     * takes the first max: experts 0 and 1 get the extra slots, in that
     * order, so phy = [0 1 2 3 0 1] with per-replica loads [.5 .5 1 1 .5 .5].
     * Packing (stable descending: 2, 3, 0, 1, 4, 5; lightest pack, lowest
     * index on ties): 2 -> A, 3 -> B, 0 -> A, 1 -> B, 4 -> A, 5 -> B. Rank
     * A's slots in arrival order: phy 2, 0, 4 -> experts 2, 0, 0. */
    const double w[4] = { 1, 1, 1, 1 };
    const int32_t want[6] = { 2, 0, 0, 3, 1, 1 };
    int32_t p2l[6], cnt[4];
    CHECK_STATUS(moe_eplb_rebalance(w, 1, 4, 6, 1, 1, 2, NULL, p2l, cnt, NULL, 0), MOE_OK);
    for (int s = 0; s < 6; s++)
        CHECK(p2l[s] == want[s], "slot %d: %d, want %d", s, p2l[s], want[s]);
    CHECK(cnt[0] == 2 && cnt[1] == 2 && cnt[2] == 1 && cnt[3] == 1, "logcnt");
    /* And the same again: a pure function of its input. */
    int32_t again[6];
    moe_eplb_rebalance(w, 1, 4, 6, 1, 1, 2, NULL, again, NULL, NULL, 0);
    CHECK(memcmp(p2l, again, sizeof again) == 0, "run to run");
}

/* Largest per-rank load of an assignment (load split evenly over replicas). */
static double max_rank_load(const double *load, int32_t E, const int32_t *p2l, int32_t P,
                            int32_t n_ranks) {
    double *pl = malloc((size_t)P * sizeof *pl), max = 0;
    moe_eplb_physical_load(load, E, p2l, P, pl);
    for (int32_t r = 0; r < n_ranks; r++) {
        double x = 0;
        for (int32_t s = r * (P / n_ranks); s < (r + 1) * (P / n_ranks); s++) x += pl[s];
        if (x > max) max = x;
    }
    free(pl);
    return max;
}

TEST(eplb_properties_random_skew) {
    test_rng rng = { 42 };
    const struct { int32_t E, P, G, Nn, Ng; } cases[] = {
        { 16, 16, 4, 2, 4 }, { 16, 20, 4, 2, 4 }, { 64, 72, 8, 2, 8 }, { 12, 16, 4, 2, 8 },
        { 60, 64, 6, 4, 8 },  /* groups not divisible by nodes: the global policy */
        { 128, 144, 8, 1, 8 }, { 7, 9, 1, 1, 3 },
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const int32_t E = cases[c].E, P = cases[c].P, Ng = cases[c].Ng, L = 3;
        double  *w    = malloc((size_t)L * E * sizeof *w);
        int32_t *p2l  = malloc((size_t)L * P * sizeof *p2l);
        int32_t *cnt  = malloc((size_t)L * E * sizeof *cnt);
        int32_t *init = malloc((size_t)P * sizeof *init);
        for (int32_t i = 0; i < L * E; i++) {
            /* Zipf-like skew: a few hot experts, many cold ones. */
            double u = test_rng_uniform(&rng);
            w[i] = (double)(int)(1000.0 / (1.0 + 40.0 * u * u));
        }
        char err[256];
        moe_status st = moe_eplb_rebalance(w, L, E, P, cases[c].G, cases[c].Nn, Ng, NULL, p2l,
                                           cnt, err, sizeof err);
        REQUIRE(st == MOE_OK, "case %zu: %s", c, err);
        for (int32_t s = 0; s < P; s++) init[s] = s < E ? s : s % E;
        for (int32_t l = 0; l < L; l++) {
            const int32_t *row = p2l + (size_t)l * P;
            int32_t *seen = calloc((size_t)E, sizeof *seen), total = 0;
            for (int32_t s = 0; s < P; s++) {
                CHECK(row[s] >= 0 && row[s] < E, "case %zu: slot holds %d", c, row[s]);
                if (row[s] >= 0 && row[s] < E) seen[row[s]]++;
            }
            for (int32_t e = 0; e < E; e++) {
                CHECK(seen[e] >= 1, "case %zu layer %d: expert %d has no replica", c, l, e);
                CHECK(seen[e] == cnt[(size_t)l * E + e], "case %zu: logcnt[%d] = %d, slots %d",
                      c, e, cnt[(size_t)l * E + e], seen[e]);
                total += cnt[(size_t)l * E + e];
            }
            CHECK(total == P, "case %zu: replicas sum to %d, want %d", c, total, P);
            free(seen);
            double before = max_rank_load(w + (size_t)l * E, E, init, P, Ng);
            double after  = max_rank_load(w + (size_t)l * E, E, row, P, Ng);
            CHECK(after <= before * (1 + 1e-12), "case %zu layer %d: max rank load %.1f > %.1f",
                  c, l, after, before);
        }
        /* With the old placement given, experts staying on a rank keep their
         * slot, and the multiset of experts per rank is unchanged. */
        int32_t *kept = malloc((size_t)L * P * sizeof *kept), *old = malloc((size_t)L * P * 4);
        for (int32_t l = 0; l < L; l++) memcpy(old + (size_t)l * P, init, (size_t)P * 4);
        moe_eplb_rebalance(w, L, E, P, cases[c].G, cases[c].Nn, Ng, old, kept, NULL, NULL, 0);
        const int32_t per = P / Ng;
        for (int32_t l = 0; l < L; l++)
            for (int32_t r = 0; r < Ng; r++) {
                const int32_t *a = p2l + (size_t)l * P + r * per;
                const int32_t *b = kept + (size_t)l * P + r * per;
                const int32_t *o = old + (size_t)l * P + r * per;
                for (int32_t s = 0; s < per; s++) {
                    int32_t na = 0, nb = 0;
                    for (int32_t u = 0; u < per; u++) na += a[u] == a[s], nb += b[u] == a[s];
                    CHECK(na == nb, "case %zu: rank %d lost an expert", c, r);
                    /* An expert that was in this rank's slot s and is still on
                     * the rank stays in slot s. */
                    int32_t stays = 0;
                    for (int32_t u = 0; u < per; u++) stays |= a[u] == o[s];
                    if (stays) CHECK(b[s] == o[s], "case %zu: slot %d moved", c, r * per + s);
                }
            }
        free(kept); free(old);
        free(w); free(p2l); free(cnt); free(init);
    }
}

TEST(eplb_bad_arguments) {
    double w[4] = { 1, 2, 3, 4 };
    int32_t p2l[8];
    char err[256];
    CHECK_STATUS(moe_eplb_rebalance(w, 1, 4, 3, 1, 1, 1, NULL, p2l, NULL, err, sizeof err),
                 MOE_ERR_INVALID_ARG);   /* fewer slots than experts */
    CHECK_STATUS(moe_eplb_rebalance(w, 1, 4, 6, 1, 1, 4, NULL, p2l, NULL, err, sizeof err),
                 MOE_ERR_INVALID_ARG);   /* 6 slots on 4 ranks */
    CHECK_STATUS(moe_eplb_rebalance(w, 1, 4, 8, 3, 1, 2, NULL, p2l, NULL, err, sizeof err),
                 MOE_ERR_INVALID_ARG);   /* 4 experts in 3 groups */
    w[2] = -1;
    CHECK_STATUS(moe_eplb_rebalance(w, 1, 4, 8, 1, 1, 2, NULL, p2l, NULL, err, sizeof err),
                 MOE_ERR_RANGE);
    w[2] = 0.0 / 0.0;
    CHECK_STATUS(moe_eplb_rebalance(w, 1, 4, 8, 1, 1, 2, NULL, p2l, NULL, err, sizeof err),
                 MOE_ERR_RANGE);
}

TEST(eplb_window_and_balancedness) {
    moe_expert_map_options mo = { .n_experts = 3, .n_redundant = 1, .ep_size = 2 };
    moe_expert_map *m;
    moe_eplb_window *w;
    char err[256];
    REQUIRE(moe_expert_map_create(&mo, &m, err, sizeof err) == MOE_OK, "%s", err);
    REQUIRE(moe_eplb_window_create(4, 2, &w, err, sizeof err) == MOE_OK, "%s", err);
    const int32_t s1[4] = { 1, 2, 3, 4 }, s2[4] = { 10, 20, 30, 40 }, s3[4] = { 100, 0, 0, 0 };
    moe_eplb_window_push(w, s1);
    moe_eplb_window_push(w, s2);
    double load[3];
    moe_eplb_window_logical_load(w, m, load);
    /* Slot 3 holds expert 0 initially. */
    CHECK(load[0] == 55 && load[1] == 22 && load[2] == 33, "load %g %g %g", load[0], load[1],
          load[2]);
    moe_eplb_window_push(w, s3);   /* drops s1 */
    moe_eplb_window_logical_load(w, m, load);
    CHECK(load[0] == 150 && load[1] == 20 && load[2] == 30, "window slid: %g %g %g", load[0],
          load[1], load[2]);
    moe_eplb_window_destroy(w);
    moe_expert_map_destroy(m);

    const double pl[4] = { 3, 1, 1, 1 };   /* ranks: 4 and 2 -> mean 3 / max 4 */
    CHECK(moe_eplb_balancedness(pl, 4, 2) == 0.75, "balancedness");
    const double zero[4] = { 0 };
    CHECK(moe_eplb_balancedness(zero, 4, 2) == 1.0, "idle is balanced");

    /* Moves: rank 0 [0 1 | 2 3] -> [0 3 | 2 1]: two slots change, both cross ranks. */
    const int32_t a[4] = { 0, 1, 2, 3 }, b[4] = { 0, 3, 2, 1 }, c[4] = { 1, 0, 2, 2 };
    int64_t nr, nl;
    moe_eplb_count_moves(a, b, 4, 2, &nr, &nl);
    CHECK(nr == 2 && nl == 0, "moves %lld remote %lld local", (long long)nr, (long long)nl);
    moe_eplb_count_moves(a, c, 4, 2, &nr, &nl);
    CHECK(nr == 0 && nl == 3, "swap within rank 0 and a duplicate on rank 1: %lld %lld",
          (long long)nr, (long long)nl);
    moe_eplb_count_moves(a, a, 4, 2, &nr, &nl);
    CHECK(nr == 0 && nl == 0, "nothing changes, nothing moves");
}

/* ===== The migration plan (src/ep/ep.h) ===== */

TEST(eplb_plan_moves) {
    /* 3 ranks x 2 slots: old [0 1 | 2 3 | 0 1] -> new [2 2 | 0 1 | 3 0]. */
    const int32_t old[6] = { 0, 1, 2, 3, 0, 1 }, nw[6] = { 2, 2, 0, 1, 3, 0 };
    const moe__move want[6] = {
        { MOE__MOVE_REMOTE, 0, 0, 1, 2, 2 },   /* rank 0 gets 2 from rank 1's slot 2     */
        { MOE__MOVE_DUP, 0, 1, 0, 0, 2 },      /* ... and copies it to its slot 1        */
        { MOE__MOVE_REMOTE, 1, 2, 0, 0, 0 },   /* 0: first holder, rank 0                */
        { MOE__MOVE_REMOTE, 1, 3, 0, 1, 1 },   /* 1: first holder, rank 0                */
        { MOE__MOVE_REMOTE, 2, 4, 1, 3, 3 },   /* 3 lives on rank 1 only                 */
        { MOE__MOVE_LOCAL, 2, 5, 2, 4, 0 },    /* rank 2 held 0 in slot 4: local copy    */
    };
    moe__move *mv = NULL;
    int32_t    n  = 0;
    char       err[256];
    REQUIRE(moe__eplb_plan(old, nw, 6, 3, &mv, &n, err, sizeof err) == MOE_OK, "%s", err);
    REQUIRE(n == 6, "%d moves", n);
    for (int i = 0; i < 6; i++)
        CHECK(mv[i].kind == want[i].kind && mv[i].dst_rank == want[i].dst_rank &&
                  mv[i].dst_slot == want[i].dst_slot && mv[i].src_rank == want[i].src_rank &&
                  mv[i].src_slot == want[i].src_slot && mv[i].logical == want[i].logical,
              "move %d: kind %d dst %d/%d src %d/%d expert %d", i, (int)mv[i].kind,
              mv[i].dst_rank, mv[i].dst_slot, mv[i].src_rank, mv[i].src_slot, mv[i].logical);
    moe__free(mv);

    /* Receivers of one expert take its holders round-robin, in rank order. */
    const int32_t o2[4] = { 0, 0, 1, 1 }, n2[4] = { 1, 1, 0, 0 };
    const int32_t src[4] = { 2, 3, 0, 1 };
    REQUIRE(moe__eplb_plan(o2, n2, 4, 4, &mv, &n, err, sizeof err) == MOE_OK, "%s", err);
    REQUIRE(n == 4, "%d moves", n);
    for (int i = 0; i < 4; i++)
        CHECK(mv[i].kind == MOE__MOVE_REMOTE && mv[i].src_rank == src[i],
              "rank %d receives from %d, want %d", mv[i].dst_rank, mv[i].src_rank, src[i]);
    moe__free(mv);

    /* An expert nobody holds cannot be moved. */
    const int32_t n3[4] = { 2, 0, 1, 1 };
    CHECK_STATUS(moe__eplb_plan(o2, n3, 4, 4, &mv, &n, err, sizeof err), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe__eplb_plan(o2, n2, 4, 3, &mv, &n, err, sizeof err), MOE_ERR_INVALID_ARG);
}
