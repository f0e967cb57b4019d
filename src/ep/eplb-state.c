/*
 * eplb-state.c - EPLB bookkeeping around the policy: the sliding window of
 * per-physical-slot loads, balancedness, and the migration plan that says
 * which expert copies a rebalance needs (executed by mpi-migrate.c).
 */
#include "ep.h"

#include <string.h>

/* ===== Load window ===== */

struct moe_eplb_window {
    int32_t  n_physical, window;
    int32_t  n_steps;     /* steps held, <= window                        */
    int32_t  next;        /* ring position of the next push               */
    int32_t *steps;       /* (window, n_physical)                         */
};

moe_status moe_eplb_window_create(int32_t n_physical, int32_t window, moe_eplb_window **out,
                                  char *err, size_t errlen) {
    if (!out || n_physical < 1 || window < 1)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                         "eplb window needs n_physical >= 1 and window >= 1");
    size_t n;
    if (!moe__mul_ok((size_t)n_physical, (size_t)window, &n) ||
        !moe__mul_ok(n, sizeof(int32_t), &n))
        return moe__errf(err, errlen, MOE_ERR_OVERFLOW, "eplb window too large");
    moe_eplb_window *w = moe__calloc(1, sizeof *w + n);
    if (!w) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    w->n_physical = n_physical;
    w->window     = window;
    w->steps      = (int32_t *)(w + 1);
    *out          = w;
    return MOE_OK;
}

void moe_eplb_window_destroy(moe_eplb_window *w) { moe__free(w); }

void moe_eplb_window_push(moe_eplb_window *w, const int32_t *step_load) {
    if (!w || !step_load) return;
    memcpy(w->steps + (size_t)w->next * w->n_physical, step_load,
           (size_t)w->n_physical * sizeof(int32_t));
    w->next = (w->next + 1) % w->window;
    if (w->n_steps < w->window) w->n_steps++;
}

void moe_eplb_window_logical_load(const moe_eplb_window *w, const moe_expert_map *m,
                                  double *load) {
    if (!w || !m || !load) return;
    int32_t P = w->n_physical < m->n_physical ? w->n_physical : m->n_physical;
    for (int32_t e = 0; e < m->o.n_experts; e++) load[e] = 0;
    for (int32_t i = 0; i < w->n_steps; i++) {
        const int32_t *st = w->steps + (size_t)i * w->n_physical;
        for (int32_t s = 0; s < P; s++) load[m->phys2log[s]] += st[s];
    }
}

/* ===== Loads and balancedness ===== */

double moe_eplb_balancedness(const double *phys_load, int32_t P, int32_t n_ranks) {
    if (!phys_load || P < 1 || n_ranks < 1) return 0;
    double sum = 0, max = 0;
    for (int32_t r = 0; r < n_ranks; r++) {
        /* Linear slots: rank r holds [r P / n, (r + 1) P / n) when divisible;
         * otherwise the remainder goes to the first ranks, as in the map. */
        int32_t base = P / n_ranks, rem = P % n_ranks;
        int32_t lo = r * base + (r < rem ? r : rem), hi = lo + base + (r < rem);
        double  x = 0;
        for (int32_t s = lo; s < hi; s++) x += phys_load[s];
        sum += x;
        if (x > max) max = x;
    }
    return max > 0 ? sum / n_ranks / max : 1.0;
}

void moe_eplb_physical_load(const double *logical_load, int32_t n_logical,
                            const int32_t *p2l, int32_t P, double *phys_load) {
    if (!logical_load || !p2l || !phys_load) return;
    for (int32_t s = 0; s < P; s++) {
        int32_t e = p2l[s], rc = 0;
        if (e < 0 || e >= n_logical) { phys_load[s] = 0; continue; }
        for (int32_t u = 0; u < P; u++) rc += p2l[u] == e;
        phys_load[s] = logical_load[e] / rc;
    }
}

/* ===== Migration plan ===== */

moe_status moe__eplb_plan(const int32_t *old, const int32_t *new_, int32_t P, int32_t n_ranks,
                          moe__move **moves_out, int32_t *n_out, char *err, size_t errlen) {
    *moves_out = NULL;
    *n_out     = 0;
    if (n_ranks < 1 || P % n_ranks)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                         "eplb plan: %d slots not divisible by %d ranks", P, n_ranks);
    int32_t E = 0;
    for (int32_t s = 0; s < P; s++) {
        if (old[s] < 0 || new_[s] < 0)
            return moe__errf(err, errlen, MOE_ERR_RANGE, "eplb plan: negative expert id");
        if (old[s] >= E) E = old[s] + 1;
        if (new_[s] >= E) E = new_[s] + 1;
    }
    const int32_t per = P / n_ranks;
    /* next_src[e]: round-robin cursor over the ranks that held e. */
    int32_t   *next_src = moe__calloc((size_t)E, sizeof(int32_t));
    moe__move *mv       = moe__calloc((size_t)P, sizeof *mv);
    if (!next_src || !mv) {
        moe__free(next_src);
        moe__free(mv);
        return moe__errf(err, errlen, MOE_ERR_NOMEM, "eplb plan: out of memory");
    }
    int32_t n = 0;
    for (int32_t r = 0; r < n_ranks; r++) {
        for (int32_t s = r * per; s < (r + 1) * per; s++) {
            int32_t e = new_[s];
            if (old[s] == e) continue;
            moe__move m = { .dst_rank = r, .dst_slot = s, .logical = e, .src_rank = r,
                            .src_slot = -1 };
            for (int32_t u = r * per; u < (r + 1) * per && m.src_slot < 0; u++)
                if (old[u] == e) m.kind = MOE__MOVE_LOCAL, m.src_slot = u;
            for (int32_t i = 0; i < n && m.src_slot < 0; i++)
                if (mv[i].dst_rank == r && mv[i].logical == e && mv[i].kind == MOE__MOVE_REMOTE)
                    m.kind = MOE__MOVE_DUP, m.src_slot = mv[i].dst_slot;
            if (m.src_slot < 0) {
                /* Holders of e in rank order; take the next one round-robin. */
                int32_t n_holders = 0, pick = -1;
                for (int32_t q = 0; q < n_ranks; q++)
                    for (int32_t u = q * per; u < (q + 1) * per; u++)
                        if (old[u] == e) { n_holders++; break; }
                if (!n_holders) {
                    moe__free(next_src);
                    moe__free(mv);
                    return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                                     "eplb plan: expert %d is needed but no rank holds it", e);
                }
                int32_t want = next_src[e]++ % n_holders, seen = 0;
                for (int32_t q = 0; q < n_ranks && pick < 0; q++)
                    for (int32_t u = q * per; u < (q + 1) * per; u++)
                        if (old[u] == e) {
                            if (seen++ == want) pick = u;
                            break;
                        }
                m.kind     = MOE__MOVE_REMOTE;
                m.src_slot = pick;
                m.src_rank = pick / per;
            }
            mv[n++] = m;
        }
    }
    moe__free(next_src);
    *moves_out = mv;
    *n_out     = n;
    return MOE_OK;
}

void moe_eplb_count_moves(const int32_t *old, const int32_t *new_, int32_t P, int32_t n_ranks,
                          int64_t *n_remote, int64_t *n_local) {
    int64_t rem = 0, loc = 0;
    moe__move *mv = NULL;
    int32_t    n  = 0;
    if (old && new_ && moe__eplb_plan(old, new_, P, n_ranks, &mv, &n, NULL, 0) == MOE_OK) {
        for (int32_t i = 0; i < n; i++) {
            if (mv[i].kind == MOE__MOVE_REMOTE) rem++;
            else loc++;
        }
        moe__free(mv);
    }
    if (n_remote) *n_remote = rem;
    if (n_local) *n_local = loc;
}
