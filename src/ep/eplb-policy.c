/*
 * eplb-policy.c - the expert-parallel load balancing policy: given each
 * logical expert's load, choose how many replicas each expert gets and which
 * physical slot (hence which rank) holds each replica.
 *
 * This is the hierarchical policy of DeepSeek's EPLB as vLLM ships it
 * (policy/default.py), written again in C from its description:
 *   1. pack expert groups onto nodes (balanced packing of group loads);
 *   2. within each node, give the redundant slots to the experts with the
 *      largest load per replica, one at a time;
 *   3. pack each node's physical experts onto its ranks (balanced packing of
 *      load / replica count), every rank getting exactly P / n_ranks slots.
 * Ties are broken deterministically (vLLM leaves its sort order to torch):
 * the descending sort is stable (equal loads in ascending index), the
 * lightest pack and the hottest expert are the first in index order.
 */
#include "ep.h"

#include <string.h>

/* Stable sort of idx[0..n) by w descending (insertion sort into a merge of
 * small runs is overkill here: n is a few hundred at most per call). */
static void sort_desc(const double *w, int32_t n, int32_t *idx, int32_t *tmp) {
    for (int32_t i = 0; i < n; i++) idx[i] = i;
    /* Bottom-up merge sort: stable and O(n log n) for large E. */
    for (int32_t width = 1; width < n; width *= 2) {
        for (int32_t lo = 0; lo < n; lo += 2 * width) {
            int32_t mid = lo + width < n ? lo + width : n;
            int32_t hi  = lo + 2 * width < n ? lo + 2 * width : n;
            int32_t a = lo, b = mid, k = lo;
            while (a < mid && b < hi) tmp[k++] = w[idx[b]] > w[idx[a]] ? idx[b++] : idx[a++];
            while (a < mid) tmp[k++] = idx[a++];
            while (b < hi) tmp[k++] = idx[b++];
        }
        memcpy(idx, tmp, (size_t)n * sizeof *idx);
    }
}

/* Packs n weighted items into m packs of exactly n/m items each: heaviest
 * first, each into the lightest pack that is not full. pack and rank
 * (arrival order in the pack) are (n). scratch: 2n int32 + m doubles + m ints. */
static void balanced_packing(const double *w, int32_t n, int32_t m, int32_t *pack, int32_t *rank,
                             int32_t *iscratch, double *pack_w, int32_t *pack_n) {
    int32_t per = n / m;
    if (per == 1) {
        for (int32_t i = 0; i < n; i++) pack[i] = i, rank[i] = 0;
        return;
    }
    int32_t *order = iscratch, *tmp = iscratch + n;
    sort_desc(w, n, order, tmp);
    for (int32_t p = 0; p < m; p++) pack_w[p] = 0, pack_n[p] = 0;
    for (int32_t i = 0; i < n; i++) {
        int32_t item = order[i], best = -1;
        for (int32_t p = 0; p < m; p++)
            if (pack_n[p] < per && (best < 0 || pack_w[p] < pack_w[best])) best = p;
        pack[item] = best;
        rank[item] = pack_n[best]++;
        pack_w[best] += w[item];
    }
}

/* Gives n_phy - n_log redundant slots greedily to the expert with the largest
 * load per replica. phy2log (n_phy), logcnt (n_log). */
static void replicate(const double *w, int32_t n_log, int32_t n_phy, int32_t *phy2log,
                      int32_t *logcnt) {
    for (int32_t i = 0; i < n_log; i++) phy2log[i] = i, logcnt[i] = 1;
    for (int32_t i = n_log; i < n_phy; i++) {
        int32_t best = 0;
        for (int32_t j = 1; j < n_log; j++)
            if (w[j] / logcnt[j] > w[best] / logcnt[best]) best = j;
        phy2log[i] = best;
        logcnt[best]++;
    }
}

/* Experts that were on a rank before keep their old slot there; the rest of
 * the rank's new experts fill its remaining slots in order. One layer. */
static void preserve_slots(int32_t *p2l, const int32_t *old, int32_t P, int32_t n_ranks,
                           char *used, char *kept, int32_t *row) {
    int32_t per = P / n_ranks;
    for (int32_t g = 0; g < n_ranks; g++) {
        int32_t *nl = p2l + (size_t)g * per;
        const int32_t *ol = old + (size_t)g * per;
        memcpy(row, nl, (size_t)per * sizeof *row);
        memset(used, 0, (size_t)per);
        memset(kept, 0, (size_t)per);
        for (int32_t s = 0; s < per; s++)
            for (int32_t i = 0; i < per; i++)
                if (!used[i] && row[i] == ol[s]) {
                    nl[s] = row[i];
                    used[i] = kept[s] = 1;
                    break;
                }
        int32_t i = 0;
        for (int32_t s = 0; s < per; s++) {
            if (kept[s]) continue;
            while (i < per && used[i]) i++;
            nl[s] = row[i];
            used[i] = 1;
        }
    }
}

moe_status moe_eplb_rebalance(const double *load, int32_t L, int32_t E, int32_t P, int32_t G,
                              int32_t Nn, int32_t Ng, const int32_t *old, int32_t *phys2log,
                              int32_t *logcnt_out, char *err, size_t errlen) {
    if (!load || !phys2log || L < 1 || E < 1 || P < E || G < 1 || Nn < 1 || Ng < 1)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                         "eplb: need load, phys_to_logical, n_layers, n_logical >= 1, "
                         "n_physical >= n_logical, groups, nodes, ranks >= 1");
    if (P % Ng)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                         "eplb: %d physical experts not divisible by %d ranks", P, Ng);
    for (int64_t i = 0; i < (int64_t)L * E; i++)
        if (!(load[i] >= 0) || load[i] > 1e300)
            return moe__errf(err, errlen, MOE_ERR_RANGE, "eplb: load[%lld] is not finite >= 0",
                             (long long)i);
    if (G % Nn) G = 1, Nn = 1;   /* the global policy */
    if (E % G)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                         "eplb: %d experts not divisible by %d groups", E, G);
    if (Ng % Nn)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                         "eplb: %d ranks not divisible by %d nodes", Ng, Nn);
    if (P % Nn)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                         "eplb: %d physical experts not divisible by %d nodes", P, Nn);

    const int32_t gs = E / G, gpn = G / Nn, ppg = P / Ng, En = E / Nn, Pn = P / Nn;
    const int32_t rpn = Ng / Nn;   /* ranks per node */
    /* Scratch, one block: doubles first. */
    size_t nd = (size_t)G + (size_t)E + (size_t)Pn + (size_t)(G > Pn ? G : Pn);
    size_t ni = 2 * (size_t)G + 2 * (size_t)E + (size_t)Pn * 4 + (size_t)E +
                2 * (size_t)(E > P ? E : P) + (size_t)(G > Pn ? G : Pn) + (size_t)P;
    double *dw = moe__malloc(nd * sizeof(double) + ni * sizeof(int32_t) + 2 * (size_t)P);
    if (!dw) return moe__errf(err, errlen, MOE_ERR_NOMEM, "eplb: out of memory");
    double  *group_w = dw, *mlog_w = group_w + G, *phy_w = mlog_w + E, *pack_w = phy_w + Pn;
    int32_t *gpack = (int32_t *)(pack_w + (G > Pn ? G : Pn)), *grank = gpack + G;
    int32_t *log2mlog = grank + G, *mlog2log = log2mlog + E;
    int32_t *phy2mlog = mlog2log + E, *phyrank = phy2mlog + Pn, *ppack = phyrank + Pn;
    int32_t *pphy2phy = ppack + Pn, *mlogcnt = pphy2phy + Pn;
    int32_t *iscr = mlogcnt + E, *pack_n = iscr + 2 * (E > P ? E : P);
    int32_t *row = pack_n + (G > Pn ? G : Pn);
    char    *used = (char *)(row + P), *kept = used + P;

    for (int32_t l = 0; l < L; l++) {
        const double *w  = load + (size_t)l * E;
        int32_t      *out = phys2log + (size_t)l * P;
        /* 1. groups onto nodes; node k owns middle ids [k En, (k+1) En). */
        for (int32_t g = 0; g < G; g++) {
            group_w[g] = 0;
            for (int32_t i = 0; i < gs; i++) group_w[g] += w[g * gs + i];
        }
        balanced_packing(group_w, G, Nn, gpack, grank, iscr, pack_w, pack_n);
        for (int32_t e = 0; e < E; e++) {
            int32_t g   = e / gs;
            log2mlog[e] = (gpack[g] * gpn + grank[g]) * gs + e % gs;
            mlog2log[log2mlog[e]] = e;
        }
        for (int32_t k = 0; k < Nn; k++) {
            /* 2. replicas within node k. */
            double *tw = mlog_w + (size_t)k * En;
            for (int32_t i = 0; i < En; i++) tw[i] = w[mlog2log[k * En + i]];
            replicate(tw, En, Pn, phy2mlog, mlogcnt + (size_t)k * En);
            /* 3. the node's physical experts onto its ranks. */
            for (int32_t p = 0; p < Pn; p++)
                phy_w[p] = tw[phy2mlog[p]] / mlogcnt[(size_t)k * En + phy2mlog[p]];
            balanced_packing(phy_w, Pn, rpn, ppack, phyrank, iscr, pack_w, pack_n);
            for (int32_t p = 0; p < Pn; p++) pphy2phy[ppack[p] * ppg + phyrank[p]] = p;
            for (int32_t q = 0; q < Pn; q++)
                out[k * Pn + q] = mlog2log[phy2mlog[pphy2phy[q]] + k * En];
        }
        if (logcnt_out)
            for (int32_t e = 0; e < E; e++) logcnt_out[(size_t)l * E + e] = mlogcnt[log2mlog[e]];
        if (old) preserve_slots(out, old + (size_t)l * P, P, Ng, used, kept, row);
    }
    moe__free(dw);
    return MOE_OK;
}
