/*
 * expert-map.c - which rank holds which expert.
 *
 * Physical slots P = E + n_redundant are placed on ep_size ranks, linearly
 * (contiguous ranges, the remainder one each to the first ranks) or
 * round-robin (slot s on rank s % ep_size). Each slot holds one logical
 * expert; a logical expert may have several replica slots (EPLB), and a token
 * picks one by a hash of its index, so the choice never depends on the batch.
 */
#include "ep.h"

#include <string.h>

int32_t moe__map_owner(const moe_expert_map_options *o, int32_t n_physical, int32_t s) {
    int32_t ep = o->ep_size;
    if (o->placement == MOE_PLACEMENT_ROUND_ROBIN) return s % ep;
    int32_t base = n_physical / ep, rem = n_physical % ep;
    int32_t big  = rem * (base + 1);   /* slots of the first rem ranks (base + 1 each) */
    return s < big ? s / (base + 1) : rem + (s - big) / base;
}

static moe_status check_options(const moe_expert_map_options *o, char *err, size_t errlen) {
    if (o->n_experts < 1 || o->n_redundant < 0 || o->ep_size < 1)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                         "expert map needs n_experts >= 1, n_redundant >= 0, ep_size >= 1 "
                         "(got %d, %d, %d)", o->n_experts, o->n_redundant, o->ep_size);
    if (o->ep_rank < 0 || o->ep_rank >= o->ep_size)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "ep_rank %d outside [0, %d)",
                         o->ep_rank, o->ep_size);
    if ((unsigned)o->placement > MOE_PLACEMENT_ROUND_ROBIN)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "unknown placement %d",
                         (int)o->placement);
    if ((int64_t)o->n_experts + o->n_redundant > INT32_MAX / 2)
        return moe__errf(err, errlen, MOE_ERR_OVERFLOW, "too many physical experts");
    int32_t P = o->n_experts + o->n_redundant;
    if (P < o->ep_size)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                         "%d physical experts cannot give each of %d ranks one", P, o->ep_size);
    if (o->n_redundant > 0) {
        /* EPLB's policy puts slot s on rank s / (P / ep_size). */
        if (o->placement != MOE_PLACEMENT_LINEAR)
            return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                             "redundant experts need linear placement");
        if (P % o->ep_size)
            return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                             "%d physical experts are not divisible by ep_size %d", P,
                             o->ep_size);
    }
    return MOE_OK;
}

/* Recomputes table and local_slot from the options. */
static void place(moe_expert_map *m) {
    m->n_local = 0;
    for (int32_t s = 0; s < m->n_physical; s++) {
        if (moe__map_owner(&m->o, m->n_physical, s) == m->o.ep_rank) {
            m->table[s]                = m->n_local;
            m->local_slot[m->n_local++] = s;
        } else {
            m->table[s] = -1;
        }
    }
}

/* Recomputes the replica lists from phys2log (counting sort: ascending slots). */
static void index_replicas(moe_expert_map *m) {
    int32_t E = m->o.n_experts;
    memset(m->rep_start, 0, ((size_t)E + 1) * sizeof(int32_t));
    for (int32_t s = 0; s < m->n_physical; s++) m->rep_start[m->phys2log[s] + 1]++;
    for (int32_t e = 0; e < E; e++) m->rep_start[e + 1] += m->rep_start[e];
    for (int32_t s = 0; s < m->n_physical; s++) m->rep_slot[m->rep_start[m->phys2log[s]]++] = s;
    for (int32_t e = E; e > 0; e--) m->rep_start[e] = m->rep_start[e - 1];
    m->rep_start[0] = 0;
    m->version++;
}

moe_status moe_expert_map_create(const moe_expert_map_options *opts, moe_expert_map **out,
                                 char *err, size_t errlen) {
    if (!opts || !out) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "NULL argument");
    *out = NULL;
    moe_expert_map_options o = *opts;
    if (o.ep_size == 0) o.ep_size = 1;
    moe_status st = check_options(&o, err, errlen);
    if (st) return st;
    int32_t P = o.n_experts + o.n_redundant;
    /* One block: the struct, then table, local_slot, phys2log, rep_slot (P
     * each, local_slot at most P) and rep_start (E + 1). */
    size_t n_ints = 4 * (size_t)P + (size_t)o.n_experts + 1;
    moe_expert_map *m = moe__calloc(1, sizeof *m + n_ints * sizeof(int32_t));
    if (!m) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    m->o          = o;
    m->n_physical = P;
    m->table      = (int32_t *)(m + 1);
    m->local_slot = m->table + P;
    m->phys2log   = m->local_slot + P;
    m->rep_slot   = m->phys2log + P;
    m->rep_start  = m->rep_slot + P;
    for (int32_t s = 0; s < P; s++) m->phys2log[s] = s < o.n_experts ? s : s % o.n_experts;
    place(m);
    index_replicas(m);
    *out = m;
    return MOE_OK;
}

void moe_expert_map_destroy(moe_expert_map *m) { moe__free(m); }

int32_t moe_expert_map_n_logical(const moe_expert_map *m) { return m ? m->o.n_experts : 0; }
int32_t moe_expert_map_n_physical(const moe_expert_map *m) { return m ? m->n_physical : 0; }
int32_t moe_expert_map_n_local(const moe_expert_map *m) { return m ? m->n_local : 0; }
int32_t moe_expert_map_ep_size(const moe_expert_map *m) { return m ? m->o.ep_size : 0; }
int32_t moe_expert_map_ep_rank(const moe_expert_map *m) { return m ? m->o.ep_rank : 0; }
const int32_t *moe_expert_map_table(const moe_expert_map *m) { return m ? m->table : NULL; }

int32_t moe_expert_map_owner(const moe_expert_map *m, int32_t s) {
    if (!m || s < 0 || s >= m->n_physical) return -1;
    return moe__map_owner(&m->o, m->n_physical, s);
}

int32_t moe_expert_map_to_local(const moe_expert_map *m, int32_t s) {
    if (!m || s < 0 || s >= m->n_physical) return -1;
    return m->table[s];
}

int32_t moe_expert_map_to_global(const moe_expert_map *m, int32_t i) {
    if (!m || i < 0 || i >= m->n_local) return -1;
    return m->local_slot[i];
}

int32_t moe_expert_map_logical(const moe_expert_map *m, int32_t s) {
    if (!m || s < 0 || s >= m->n_physical) return -1;
    return m->phys2log[s];
}

int32_t moe_expert_map_n_replicas(const moe_expert_map *m, int32_t e) {
    if (!m || e < 0 || e >= m->o.n_experts) return 0;
    return m->rep_start[e + 1] - m->rep_start[e];
}

int32_t moe_expert_map_replica(const moe_expert_map *m, int32_t e, int32_t r) {
    if (r < 0 || r >= moe_expert_map_n_replicas(m, e)) return -1;
    return m->rep_slot[m->rep_start[e] + r];
}

moe_status moe_expert_map_route(const moe_expert_map *m, int64_t n_tokens, int32_t top_k,
                                const int32_t *logical_ids, int32_t *physical_ids,
                                int32_t *load) {
    if (!m || n_tokens < 0 || top_k < 1 || (n_tokens && (!logical_ids || !physical_ids)))
        return MOE_ERR_INVALID_ARG;
    const int64_t n = n_tokens * top_k;
    for (int64_t i = 0; i < n; i++)
        if (logical_ids[i] < 0 || logical_ids[i] >= m->o.n_experts) return MOE_ERR_RANGE;
    for (int64_t t = 0; t < n_tokens; t++) {
        /* Knuth's multiplicative hash of the token index, as vLLM's router. */
        uint32_t h = (uint32_t)((uint64_t)t * 2654435769u);
        for (int32_t j = 0; j < top_k; j++) {
            int32_t e  = logical_ids[t * top_k + j];
            int32_t rc = m->rep_start[e + 1] - m->rep_start[e];
            int32_t s  = m->rep_slot[m->rep_start[e] + (int32_t)(h % (uint32_t)rc)];
            physical_ids[t * top_k + j] = s;
            if (load) load[s]++;
        }
    }
    return MOE_OK;
}

moe_status moe_expert_map_set_physical(moe_expert_map *m, const int32_t *p2l, char *err,
                                       size_t errlen) {
    if (!m || !p2l) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "NULL argument");
    int32_t E = m->o.n_experts;
    int32_t *seen = moe__calloc((size_t)E, sizeof *seen);
    if (!seen) return moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
    moe_status st = MOE_OK;
    for (int32_t s = 0; s < m->n_physical && !st; s++) {
        if (p2l[s] < 0 || p2l[s] >= E)
            st = moe__errf(err, errlen, MOE_ERR_RANGE, "slot %d holds expert %d, outside [0, %d)",
                           s, p2l[s], E);
        else
            seen[p2l[s]] = 1;
    }
    for (int32_t e = 0; e < E && !st; e++)
        if (!seen[e])
            st = moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "logical expert %d has no slot", e);
    moe__free(seen);
    if (st) return st;
    memcpy(m->phys2log, p2l, (size_t)m->n_physical * sizeof(int32_t));
    index_replicas(m);
    return MOE_OK;
}

moe_status moe_expert_map_reconfigure(moe_expert_map *m, int32_t ep_size, int32_t ep_rank,
                                      char *err, size_t errlen) {
    if (!m) return moe__errf(err, errlen, MOE_ERR_INVALID_ARG, "NULL argument");
    moe_expert_map_options o = m->o;
    o.ep_size = ep_size ? ep_size : 1;
    o.ep_rank = ep_rank;
    moe_status st = check_options(&o, err, errlen);
    if (st) return st;
    m->o = o;
    place(m);
    m->version++;
    return MOE_OK;
}
