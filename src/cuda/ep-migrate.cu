/*
 * ep-migrate.cu - EPLB weight migration over a device transport (NCCL): the
 * plan of src/ep/eplb-state.c executed on the experts' device copy.
 *
 * As on the host (src/ep/eplb-migrate.c): an expert travels as one message,
 * its device tables (W13, W2, fp8 scales, biases) concatenated; every source
 * is packed before any slot is written, so slots may swap experts; moves are
 * applied in plan order (a DUP copies a slot filled earlier). The host
 * tables of every rewritten slot are then refreshed from the device, so host
 * and device copies stay the same bytes.
 */
#include "backend.cuh"


/* One table of one expert: where it lies on the device and on the host. */
typedef struct part {
    char  *dev, *host;
    size_t n;
} part;

static int expert_parts(const moe_routed_experts *e, const cuda_experts *x, int32_t i,
                        part out[6]) {
    const moe_experts_options *o = &e->opts;
    const size_t I = (size_t)i;
    int n = 0;
    out[n++] = part{ (char *)x->w13 + I * e->s13.data, (char *)o->w13.data + I * e->s13.data,
                     e->s13.data };
    out[n++] = part{ (char *)x->w2 + I * e->s2.data, (char *)o->w2.data + I * e->s2.data,
                     e->s2.data };
    if (x->s13)
        out[n++] = part{ (char *)x->s13 + I * e->s13.scales,
                         (char *)o->w13.scales + I * e->s13.scales, e->s13.scales };
    if (x->s2)
        out[n++] = part{ (char *)x->s2 + I * e->s2.scales, (char *)o->w2.scales + I * e->s2.scales,
                         e->s2.scales };
    if (x->b13)
        out[n++] = part{ (char *)(x->b13 + I * x->n13), (char *)(o->w13.bias + I * x->n13),
                         (size_t)x->n13 * 4 };
    if (x->b2)
        out[n++] = part{ (char *)(x->b2 + I * x->H), (char *)(o->w2.bias + I * x->H),
                         (size_t)x->H * 4 };
    return n;
}

/* Copies expert `from`'s tables (or the packed buffer src) into dst. */
static cudaError_t copy_expert(const part *to, int n, const part *from, const char *src,
                               cudaStream_t st) {
    cudaError_t ce = cudaSuccess;
    for (int k = 0; k < n && ce == cudaSuccess; k++) {
        const char *s = from ? from[k].dev : src;
        ce = cudaMemcpyAsync(to[k].dev, s, to[k].n, cudaMemcpyDeviceToDevice, st);
        if (src) src += to[k].n;
    }
    return ce;
}

moe_status moe__cuda_migrate(moe_comm *c, moe_routed_experts *e, const moe__move *mv,
                             int32_t n_mv, int32_t per, int64_t *sent, char *err, size_t errlen) {
    const cuda_experts *x = moe__cuda_experts_state(e);
    if (!x) return moe__errf(err, errlen, MOE_ERR_INTERNAL, "cuda: experts not uploaded");
    const int32_t me = c->rank;
    cudaStream_t st = (cudaStream_t)c->stream;
    part p[6], q[6];
    const int np = expert_parts(e, x, 0, p);
    size_t xb = 0;
    for (int k = 0; k < np; k++) xb += p[k].n;
    int32_t n_buf = 0, n_msg = 0;
    for (int32_t i = 0; i < n_mv; i++) {
        const moe__move *v = &mv[i];
        const bool src = v->kind == MOE__MOVE_REMOTE && v->src_rank == me;
        const bool dst = v->kind != MOE__MOVE_DUP && v->dst_rank == me;
        n_buf += src || dst;
        n_msg += v->kind == MOE__MOVE_REMOTE && (v->src_rank == me || v->dst_rank == me);
    }
    char *buf = NULL;
    int32_t *slot = (int32_t *)moe__calloc((size_t)n_mv + 1, sizeof(int32_t));
    moe__msg *msg = (moe__msg *)moe__calloc((size_t)n_msg + 1, sizeof(moe__msg));
    moe_status s = MOE_OK;
    cudaError_t ce = cudaSuccess;
    if (!slot || !msg) {
        s = moe__errf(err, errlen, MOE_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (n_buf && (ce = cudaMalloc(&buf, (size_t)n_buf * xb)) != cudaSuccess) {
        s = moe__errf(err, errlen, MOE_ERR_CUDA, "cuda: %d experts of %zu bytes: %s", n_buf, xb,
                      cudaGetErrorString(ce));
        goto done;
    }
    {
        /* pack every source first; the messages: sends, then receives */
        int32_t b = 0;
        int ns = 0;
        int64_t bytes = 0;
        for (int32_t i = 0; i < n_mv && ce == cudaSuccess; i++) {
            const moe__move *v = &mv[i];
            const bool send = v->kind == MOE__MOVE_REMOTE && v->src_rank == me;
            if (!send && !(v->kind == MOE__MOVE_LOCAL && v->dst_rank == me)) continue;
            slot[i] = b++;
            expert_parts(e, x, v->src_slot - me * per, q);
            char *dst = buf + (size_t)slot[i] * xb;
            for (int k = 0; k < np && ce == cudaSuccess; dst += q[k].n, k++)
                ce = cudaMemcpyAsync(dst, q[k].dev, q[k].n, cudaMemcpyDeviceToDevice, st);
            if (send) {
                msg[ns++] = moe__msg{ v->dst_rank, 5, buf + (size_t)slot[i] * xb, xb };
                bytes += (int64_t)xb;
            }
        }
        const int n_send = ns;
        for (int32_t i = 0; i < n_mv; i++) {
            const moe__move *v = &mv[i];
            if (v->kind != MOE__MOVE_REMOTE || v->dst_rank != me) continue;
            slot[i] = b++;
            msg[ns++] = moe__msg{ v->src_rank, 5, buf + (size_t)slot[i] * xb, xb };
        }
        if (ce != cudaSuccess) {
            s = moe__errf(err, errlen, MOE_ERR_CUDA, "cuda: packing experts: %s",
                          cudaGetErrorString(ce));
            goto done;
        }
        if (c->size > 1 &&
            ((s = moe__comm_post(c, MOE__PHASE_OTHER, msg, n_send, msg + n_send, ns - n_send)) ||
             (s = moe__comm_wait(c, MOE__PHASE_OTHER)))) {
            s = moe__errf(err, errlen, s, "expert migration: %s", c->err);
            goto done;
        }
        /* apply in plan order, then refresh the host tables of the slot */
        for (int32_t i = 0; i < n_mv && ce == cudaSuccess; i++) {
            const moe__move *v = &mv[i];
            if (v->dst_rank != me) continue;
            expert_parts(e, x, v->dst_slot - me * per, q);
            if (v->kind == MOE__MOVE_DUP) {
                expert_parts(e, x, v->src_slot - me * per, p);
                ce = copy_expert(q, np, p, NULL, st);
            } else {
                ce = copy_expert(q, np, NULL, buf + (size_t)slot[i] * xb, st);
            }
            for (int k = 0; k < np && ce == cudaSuccess; k++)
                ce = cudaMemcpyAsync(q[k].host, q[k].dev, q[k].n, cudaMemcpyDeviceToHost, st);
        }
        if (ce == cudaSuccess) ce = cudaStreamSynchronize(st);
        if (ce != cudaSuccess) {
            s = moe__errf(err, errlen, MOE_ERR_CUDA, "cuda: writing experts: %s",
                          cudaGetErrorString(ce));
            goto done;
        }
        *sent = bytes;
    }
done:
    cudaFree(buf);
    moe__free(slot);
    moe__free(msg);
    return s;
}
