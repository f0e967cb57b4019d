/*
 * mpi-comm.c - the MPI transport: a communicator duplicated from the
 * caller's, set to MPI_ERRORS_RETURN, and one primitive, the exchange: post
 * every receive (exact size) and send with nonblocking point-to-point, then
 * poll with MPI_Testsome until all complete or the deadline passes.
 *
 * Why polling and not MPI_Waitall: without ULFM (Debian's Open MPI 4 has
 * none) a dead peer is never reported by MPI over shared memory, so a wait
 * would block forever. While polling we also check, every few milliseconds,
 * whether the peers we still wait for are alive: peers on this host by pid
 * (kill(pid, 0), and zombie state in /proc), exchanged at creation. A dead
 * peer gives MOE_ERR_PEER_DEAD at once; anything else silent gives
 * MOE_ERR_TIMEOUT at the deadline.
 *
 * Tags carry the exchange's sequence number (mod 1024) and a sub-channel, so
 * a late message from an earlier call can never match a later receive.
 */
#include "ep.h"

#include <mpi.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct mpi_peer {
    int32_t pid;
    int32_t same_host;
} mpi_peer;

typedef struct mpi_state {
    MPI_Comm     comm;
    mpi_peer    *peers;     /* (size)                                              */
    MPI_Request *req;       /* (cap) requests of the exchange in flight            */
    int         *idx;       /* (cap) MPI_Testsome output                           */
    MPI_Status  *stat;      /* (cap)                                               */
    int32_t     *req_peer;  /* (cap) peer of each request                          */
    int          cap;
} mpi_state;

/* Host identity: the hostname and, when readable, the boot id, so two
 * containers with one hostname on different machines are not "same host". */
static void host_id(char *buf, size_t n) {
    memset(buf, 0, n);
    gethostname(buf, n / 2);
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f) {
        size_t len = strlen(buf);
        if (!fgets(buf + len, (int)(n - len - 1), f)) buf[len] = '\0';
        fclose(f);
    }
}

/* 1 when the process is known to be gone (or a zombie), 0 when alive or unknown. */
static int pid_dead(int32_t pid) {
    if (pid <= 0) return 0;
    if (kill(pid, 0) != 0 && errno == ESRCH) return 1;
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;   /* /proc not mounted or not ours to read: unknown */
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');   /* "pid (comm) S ...", comm may hold spaces */
    return p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
}

static void mpi_msg(int rc, char *buf, size_t n) {
    int len = 0;
    char s[MPI_MAX_ERROR_STRING];
    if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "code %d", rc);
    snprintf(buf, n, "%s", s);
}

/* Abandons the requests still in flight after a failure: receives are
 * cancelled, sends released (MPI only reads their buffers). */
static void drop_requests(mpi_state *m, int n) {
    for (int i = 0; i < n; i++) {
        if (m->req[i] == MPI_REQUEST_NULL) continue;
        MPI_Cancel(&m->req[i]);
        MPI_Request_free(&m->req[i]);
    }
}

static int grow(mpi_state *m, int need) {
    if (need <= m->cap) return 0;
    int cap = need < 64 ? 64 : need;
    MPI_Request *req  = moe__malloc((size_t)cap * sizeof *req);
    int         *idx  = moe__malloc((size_t)cap * sizeof *idx);
    MPI_Status  *stat = moe__malloc((size_t)cap * sizeof *stat);
    int32_t     *rp   = moe__malloc((size_t)cap * sizeof *rp);
    if (!req || !idx || !stat || !rp) {
        moe__free(req), moe__free(idx), moe__free(stat), moe__free(rp);
        return -1;
    }
    moe__free(m->req), moe__free(m->idx), moe__free(m->stat), moe__free(m->req_peer);
    m->req = req, m->idx = idx, m->stat = stat, m->req_peer = rp, m->cap = cap;
    return 0;
}

static moe_status mpi_exchange(moe_comm *c, const moe__msg *sends, int n_sends,
                               const moe__msg *recvs, int n_recvs) {
    mpi_state *m = c->impl;
    const int  n = n_sends + n_recvs;
    if (n == 0) return MOE_OK;
    if (grow(m, n)) return moe__comm_errf(c, MOE_ERR_NOMEM, "out of memory for MPI requests");
    const double t0 = moe__now_s();
    const double deadline = c->call_end ? c->call_end : t0 + c->deadline_ms * 1e-3;
    const int    seq_tag = (int)(c->seq % 1024) * 16;
    char         why[MPI_MAX_ERROR_STRING + 64];
    int          posted = 0, rc;

    for (int i = 0; i < n; i++) m->req[i] = MPI_REQUEST_NULL;
    /* Receives first, so that eager messages land directly in place. */
    for (int i = 0; i < n_recvs; i++, posted++) {
        const moe__msg *r = &recvs[i];
        if (r->bytes > (size_t)INT32_MAX) {
            drop_requests(m, posted);
            return moe__comm_errf(c, MOE_ERR_LIMIT, "message of %zu bytes is over 2 GiB",
                                  r->bytes);
        }
        m->req_peer[posted] = r->peer;
        rc = MPI_Irecv(r->buf, (int)r->bytes, MPI_BYTE, r->peer, seq_tag + r->sub, m->comm,
                       &m->req[posted]);
        if (rc != MPI_SUCCESS) goto mpi_fail;
    }
    for (int i = 0; i < n_sends; i++, posted++) {
        const moe__msg *s = &sends[i];
        if (s->bytes > (size_t)INT32_MAX) {
            drop_requests(m, posted);
            return moe__comm_errf(c, MOE_ERR_LIMIT, "message of %zu bytes is over 2 GiB",
                                  s->bytes);
        }
        m->req_peer[posted] = s->peer;
        rc = MPI_Isend(s->buf, (int)s->bytes, MPI_BYTE, s->peer, seq_tag + s->sub, m->comm,
                       &m->req[posted]);
        if (rc != MPI_SUCCESS) goto mpi_fail;
    }

    int    left = n, spins = 0;
    double next_check = t0 + 0.005;
    while (left > 0) {
        int done = 0;
        rc = MPI_Testsome(n, m->req, &done, m->idx, m->stat);
        if (rc != MPI_SUCCESS && rc != MPI_ERR_IN_STATUS) goto mpi_fail;
        if (done == MPI_UNDEFINED) break;
        for (int k = 0; k < done; k++) {
            int i = m->idx[k];
            int err_i = rc == MPI_ERR_IN_STATUS ? m->stat[k].MPI_ERROR : MPI_SUCCESS;
            if (err_i != MPI_SUCCESS) {
                int cls = 0;
                MPI_Error_class(err_i, &cls);
                drop_requests(m, n);
                if (cls == MPI_ERR_TRUNCATE)
                    return moe__comm_errf(c, MOE_ERR_PROTOCOL,
                                          "rank %d sent a longer message than announced",
                                          m->req_peer[i]);
                mpi_msg(err_i, why, sizeof why);
                if (m->peers[m->req_peer[i]].same_host && pid_dead(m->peers[m->req_peer[i]].pid))
                    return moe__comm_errf(c, MOE_ERR_PEER_DEAD, "rank %d died (%s)",
                                          m->req_peer[i], why);
                return moe__comm_errf(c, MOE_ERR_MPI, "with rank %d: %s", m->req_peer[i], why);
            }
            if (i < n_recvs) {
                int got = 0;
                MPI_Get_count(&m->stat[k], MPI_BYTE, &got);
                if ((size_t)got != recvs[i].bytes) {
                    drop_requests(m, n);
                    return moe__comm_errf(c, MOE_ERR_PROTOCOL,
                                          "rank %d sent %d bytes, %zu announced", recvs[i].peer,
                                          got, recvs[i].bytes);
                }
            }
        }
        left -= done;
        if (left == 0) break;
        if (done) {
            spins = 0;
            continue;
        }
        double now = moe__now_s();
        if (now >= next_check) {
            /* Is a peer we still wait for gone? */
            for (int i = 0; i < n; i++) {
                if (m->req[i] == MPI_REQUEST_NULL) continue;
                const mpi_peer *p = &m->peers[m->req_peer[i]];
                if (p->same_host && pid_dead(p->pid)) {
                    int peer = m->req_peer[i];
                    drop_requests(m, n);
                    return moe__comm_errf(c, MOE_ERR_PEER_DEAD,
                                          "rank %d (pid %d) died during %s", peer, p->pid,
                                          c->phase == MOE__PHASE_DISPATCH  ? "dispatch"
                                          : c->phase == MOE__PHASE_COMBINE ? "combine"
                                                                           : "an exchange");
                }
            }
            next_check = now + 0.005;
        }
        if (now >= deadline) {
            int peer = -1;
            for (int i = 0; i < n && peer < 0; i++)
                if (m->req[i] != MPI_REQUEST_NULL) peer = m->req_peer[i];
            drop_requests(m, n);
            return moe__comm_errf(c, MOE_ERR_TIMEOUT,
                                  "no answer from rank %d within the %d ms deadline", peer,
                                  c->deadline_ms);
        }
        /* Back off: spin briefly (latency), then sleep (ranks may share cores). */
        if (++spins > 64) {
            struct timespec ts = { 0, spins > 1000 ? 200000 : 20000 };
            nanosleep(&ts, NULL);
        }
    }
    return MOE_OK;

mpi_fail:
    mpi_msg(rc, why, sizeof why);
    drop_requests(m, n);
    return moe__comm_errf(c, MOE_ERR_MPI, "MPI: %s", why);
}

static void mpi_destroy(moe_comm *c) {
    mpi_state *m = c->impl;
    if (!m) return;
    /* After a failure a peer may be dead: freeing is local (MPI_Comm_free
     * does not wait for peers), but skip it to never touch a broken comm. */
    if (!c->broken) MPI_Comm_free(&m->comm);
    moe__free(m->peers);
    moe__free(m->req), moe__free(m->idx), moe__free(m->stat), moe__free(m->req_peer);
    moe__free(m);
}

static const moe__comm_ops mpi_ops = { .exchange = mpi_exchange, .destroy = mpi_destroy };

moe_status moe__comm_mpi_create(const void *mpi_comm, int32_t deadline_ms, moe_comm **out,
                                char *err, size_t errlen) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) return moe__errf(err, errlen, MOE_ERR_MPI, "MPI is not initialized");
    moe_comm  *c = moe__calloc(1, sizeof *c);
    mpi_state *m = moe__calloc(1, sizeof *m);
    char      *ids = NULL;
    moe_status st  = MOE_OK;
    if (!c || !m) {
        st = moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
        goto fail;
    }
    int rc = MPI_Comm_dup(*(const MPI_Comm *)mpi_comm, &m->comm);
    if (rc != MPI_SUCCESS) {
        char why[MPI_MAX_ERROR_STRING];
        mpi_msg(rc, why, sizeof why);
        st = moe__errf(err, errlen, MOE_ERR_MPI, "MPI_Comm_dup: %s", why);
        goto fail;
    }
    MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN);
    int size = 0, rank = 0;
    MPI_Comm_size(m->comm, &size);
    MPI_Comm_rank(m->comm, &rank);
    c->kind        = MOE__COMM_MPI;
    c->ops         = &mpi_ops;
    c->size        = size;
    c->rank        = rank;
    c->deadline_ms = deadline_ms;
    c->impl        = m;

    /* Who is where: pid and host of every rank (a collective at creation,
     * before any deadline applies). */
    enum { ID = 128 };
    struct { int32_t pid; char host[ID]; } me;
    memset(&me, 0, sizeof me);
    me.pid = (int32_t)getpid();
    host_id(me.host, sizeof me.host);
    ids      = moe__malloc((size_t)size * sizeof me);
    m->peers = moe__calloc((size_t)size, sizeof *m->peers);
    if (!ids || !m->peers) {
        st = moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
        goto fail_comm;
    }
    rc = MPI_Allgather(&me, (int)sizeof me, MPI_BYTE, ids, (int)sizeof me, MPI_BYTE, m->comm);
    if (rc != MPI_SUCCESS) {
        st = moe__errf(err, errlen, MOE_ERR_MPI, "MPI_Allgather of peer ids failed");
        goto fail_comm;
    }
    for (int r = 0; r < size; r++) {
        const char *rec = ids + (size_t)r * sizeof me;
        memcpy(&m->peers[r].pid, rec, sizeof(int32_t));
        m->peers[r].same_host = r != rank && !memcmp(rec + offsetof(__typeof__(me), host),
                                                     me.host, ID);
    }
    moe__free(ids);
    *out = c;
    return MOE_OK;

fail_comm:
    MPI_Comm_free(&m->comm);
fail:
    moe__free(ids);
    if (m) moe__free(m->peers);
    moe__free(m);
    moe__free(c);
    return st;
}
