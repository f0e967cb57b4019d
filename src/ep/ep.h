/*
 * ep.h - what the parallel-experts files (src/ep/) share: the expert map and
 * communicator objects behind the public handles, the transport interface the
 * prepare/finalize implementations use, and the migration plan.
 *
 * Transports implement one primitive, an exchange: every rank posts the
 * messages it sends and the messages it expects (with their exact sizes) to
 * any subset of its peers, and the call returns when all have completed, or
 * with MOE_ERR_PEER_DEAD / MOE_ERR_TIMEOUT / MOE_ERR_PROTOCOL at the
 * communicator's deadline. Prepare/finalize then only builds message lists.
 */
#ifndef MOE_EP_H
#define MOE_EP_H

#include "internal.h"

/* ===== Expert map ===== */

struct moe_expert_map {
    moe_expert_map_options o;
    int32_t  n_physical;   /* P = n_experts + n_redundant                             */
    int32_t  n_local;      /* slots on this rank                                      */
    int32_t *table;        /* (P) physical -> local index, -1 elsewhere               */
    int32_t *local_slot;   /* (n_local) local index -> physical                       */
    int32_t *phys2log;     /* (P) physical -> logical                                 */
    int32_t *rep_start;    /* (E + 1) first entry of each logical expert in rep_slot   */
    int32_t *rep_slot;     /* (P) replica slots grouped by logical expert, ascending;
                              rep_start follows it in memory                         */
    uint32_t version;      /* bumped by every change of placement or replicas (device
                              copies of the tables compare it)                        */
};

/* Owner rank of physical slot s under the map's placement, without range checks. */
int32_t moe__map_owner(const moe_expert_map_options *o, int32_t n_physical, int32_t s);

/* ===== Communicator ===== */

typedef enum moe__comm_kind { MOE__COMM_MPI = 1, MOE__COMM_NCCL = 2 } moe__comm_kind;

/* One message of an exchange. For receives `bytes` is the exact size
 * expected; a message of another size is a protocol error. */
typedef struct moe__msg {
    int32_t peer;
    int32_t sub;          /* sub-channel in [0, 16): distinguishes messages to one peer  */
    void   *buf;
    size_t  bytes;
} moe__msg;

typedef enum moe__phase {
    MOE__PHASE_DISPATCH = 0,
    MOE__PHASE_COMBINE,
    MOE__PHASE_OTHER,
} moe__phase;

typedef struct moe__comm_ops {
    /* Posts sends and receives, waits for all until the deadline. */
    moe_status (*exchange)(moe_comm *c, const moe__msg *sends, int n_sends, const moe__msg *recvs,
                           int n_recvs);
    /* Device transports (NCCL), optional: post enqueues the exchange on the
     * communicator's stream and returns; wait blocks until everything
     * enqueued on that stream has completed, or the deadline. */
    moe_status (*post)(moe_comm *c, const moe__msg *sends, int n_sends, const moe__msg *recvs,
                       int n_recvs);
    moe_status (*wait)(moe_comm *c);
    void       (*destroy)(moe_comm *c);
} moe__comm_ops;

struct moe_comm {
    moe__comm_kind       kind;
    const moe__comm_ops *ops;
    int32_t              size, rank;
    int32_t              deadline_ms;
    uint32_t             seq;          /* exchanges so far: tags and headers carry it     */
    moe_status           broken;       /* sticky failure, MOE_OK while healthy            */
    moe__phase           phase;        /* what the current exchange is, for the stats     */
    moe_comm_stats       stats;
    double               call_end;     /* deadline of the EP call in progress (monotonic
                                          seconds), 0 = each exchange gets deadline_ms    */
    void                *pending;      /* the EP forward in flight between prepare and
                                          finalize (its state lives in the workspace)     */
    void                *impl;         /* transport state                                 */
    void                *stream;       /* device transports: the cudaStream_t exchanges are
                                          ordered on; NULL for MPI                         */
    char                 err[256];
};

/* Runs one exchange: refuses on a broken communicator, records stats, and
 * makes a failure sticky. Sends and receives to this rank itself are not
 * allowed (callers copy locally). Every rank must make the same sequence of
 * exchanges, also with nothing to send or receive: the tags carry the
 * exchange's sequence number. */
moe_status moe__comm_exchange(moe_comm *c, moe__phase phase, const moe__msg *sends, int n_sends,
                              const moe__msg *recvs, int n_recvs);
/* The stream-ordered pair of device transports (ops->post, ops->wait), with
 * the same bookkeeping; bytes are counted at post, seconds at wait (under
 * MOE__PHASE_COMBINE: the time the host waited). */
moe_status moe__comm_post(moe_comm *c, moe__phase phase, const moe__msg *sends, int n_sends,
                          const moe__msg *recvs, int n_recvs);
moe_status moe__comm_wait(moe_comm *c, moe__phase phase);
/* The header each rank sends each peer before any rows (counts first). */
#define MOE__EP_MAGIC 0x5045454du   /* "MEEP" */
typedef struct moe__ep_hdr {
    uint32_t magic;
    uint32_t call;        /* the sender's forward count: ranks must be in step          */
    int32_t  src_rank;
    int32_t  n_rows;      /* EP: rows that follow                                     */
    int64_t  d_model;
    int64_t  n_tokens;    /* TP: the tokens of the forward (equal on every rank)      */
    int32_t  io_format;   /* the layer's: the CUDA combine sends bf16 rows when bf16  */
} moe__ep_hdr;
/* Checks peer r's header against this forward (call, d_model; with max_rows
 * >= 0, n_rows in [0, max_rows]; with n_tokens >= 0, the same tokens):
 * MOE_OK, or MOE_ERR_PROTOCOL with the reason (communicator broken). */
moe_status moe__ep_check_hdr(moe_layer *l, const char *what, const moe__ep_hdr *h, int32_t r,
                             uint32_t call, int64_t d_model, int64_t max_rows, int64_t n_tokens);

/* A parallel layer's failure: its message is "what: " + the communicator's. */
moe_status moe__ep_fail(moe_layer *l, moe_status st, const char *what);
/* A protocol violation a prepare/finalize found (bad header, counts, ids):
 * breaks the communicator like a transport failure; MOE_ERR_PROTOCOL. */
moe_status moe__ep_protocol(moe_layer *l, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Sets c->err and returns s (does not break the communicator). */
moe_status moe__comm_errf(moe_comm *c, moe_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
double     moe__now_s(void);   /* monotonic clock, seconds */

/* Transports: create functions (mpi-comm.c, nccl-comm.c). */
moe_status moe__comm_mpi_create(const void *mpi_comm, int32_t deadline_ms, moe_comm **out,
                                char *err, size_t errlen);
moe_status moe__comm_nccl_create(void *nccl_comm, void *stream, int32_t deadline_ms,
                                 moe_comm **out, char *err, size_t errlen);

/* ===== Prepare/finalize implementations (pf-ep.c; src/cuda/ep.cu) ===== */

extern const moe__prepare_finalize_impl moe__pf_mpi_ep;
extern const moe__prepare_finalize_impl moe__pf_mpi_tp;
/* Expert and tensor parallel over a device transport: the CUDA backend runs
 * them inside its forward (src/cuda/ep.cu, tp.cu); these entries name them
 * and size nothing. */
extern const moe__prepare_finalize_impl moe__pf_nccl_ep;
extern const moe__prepare_finalize_impl moe__pf_nccl_tp;

/* Fault injection for the multi-rank fault tests (tests/mpi/ep-fault.c,
 * which declares it itself): set to a MOE__FAULT_* point, the EP
 * prepare/finalize of this process sends half of that phase's messages and
 * raises SIGKILL there, or sends malformed messages. 0, the default, never
 * fires. */
extern int moe__ep_fault_point;
enum {
    MOE__FAULT_MID_DISPATCH   = 1,   /* after the counts, half of the rows sent        */
    MOE__FAULT_AFTER_DISPATCH = 2,   /* dispatch complete, before the experts          */
    MOE__FAULT_MID_COMBINE    = 3,   /* half of the outputs sent back                  */
    /* Malformed messages instead of death (the peers must answer PROTOCOL): */
    MOE__FAULT_BAD_MAGIC      = 4,   /* headers with a wrong magic                     */
    MOE__FAULT_BIG_COUNT      = 5,   /* headers announcing more rows than fit          */
    MOE__FAULT_BAD_EXPERT     = 6,   /* rows for an expert id beyond the map           */
    MOE__FAULT_LONG_ROWS      = 7,   /* activation messages 4 bytes longer than announced */
    MOE__FAULT_BAD_SLOT       = 8,   /* a row whose slot is not in ascending order     */
    MOE__FAULT_IO_FORMAT      = 9,   /* headers naming another io format               */
};

/* ===== Migration plan (eplb-state.c) =====
 *
 * Every rank computes the same plan from (old, new) phys -> logical, so sends
 * and receives match without a message about them. For each rank and each
 * of its slots whose logical expert changes: if the rank held the new expert
 * before, a local copy from its first old slot holding it; otherwise one
 * receive per (rank, expert), from a source rank chosen round-robin among the
 * old holders (by ascending rank), into the first such slot, and local copies
 * from there to the others.
 */
typedef enum moe__move_kind { MOE__MOVE_LOCAL = 0, MOE__MOVE_REMOTE, MOE__MOVE_DUP } moe__move_kind;

typedef struct moe__move {
    moe__move_kind kind;
    int32_t        dst_rank, dst_slot;   /* physical slot receiving the expert          */
    int32_t        src_rank, src_slot;   /* LOCAL/REMOTE: old slot; DUP: a dst slot of
                                            the same rank filled earlier in the plan    */
    int32_t        logical;
} moe__move;

/* Builds the plan into *moves (allocated, moe__free) and *n_moves. */
moe_status moe__eplb_plan(const int32_t *old, const int32_t *new_, int32_t n_physical,
                          int32_t n_ranks, moe__move **moves, int32_t *n_moves, char *err,
                          size_t errlen);

/* Executes the plan over a device transport (src/cuda/ep-migrate.cu): the
 * experts' device copy moves over c, the host tables are updated from it.
 * per = slots per rank; *sent = this rank's bytes sent. */
moe_status moe__cuda_migrate(moe_comm *c, moe_routed_experts *e, const moe__move *mv,
                             int32_t n_mv, int32_t per, int64_t *sent, char *err, size_t errlen);

#endif /* MOE_EP_H */
