/*
 * tp.cu - tensor-parallel experts on the CUDA backend over a device
 * transport (NCCL): every rank holds every expert with a d_ff slice
 * (moe_routed_experts_create_tp) and gets the same tokens.
 *
 *   1. counts first: a header to and from every peer (forward number,
 *      tokens, d_model), so that ranks which disagree get MOE_ERR_PROTOCOL
 *      instead of an NCCL receive of the wrong size
 *   2. the single-device forward on this rank's slice, without the shared
 *      experts, into this rank's f32 partial (T, d_model)
 *   3. the partials to and from every peer, posted on the stream
 *   4. the shared experts, whole, on this rank (the same on every rank)
 *   5. out = the partials summed in rank order, + shared, in fp32: the same
 *      bits on every rank, and the arithmetic of the MPI tensor-parallel
 *      finalize (src/ep/pf-ep.c)
 *   6. the host waits for the stream (deadline-bound), so that a forward
 *      returning MOE_OK has its data.
 * The pinned staging is the expert-parallel one (ep.cu).
 */
#include "backend.cuh"


#include <string.h>

typedef moe__ep_hdr tp_hdr;
static_assert(sizeof(tp_hdr) <= MOE_CUDA_HDR_BYTES, "header staging");

static moe_comm *comm_of(const moe_layer *l) { return l->opts.parallel->comm; }

/* out[i] = sum over ranks r in order of parts[r][i], + shared_y[i]. */
static __global__ void tp_sum_kernel(const float *parts, int32_t P, int64_t n,
                                     const float *shared_y, void *out, int io_fmt) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float acc = parts[i];
    for (int32_t r = 1; r < P; r++) acc += parts[(int64_t)r * n + i];
    if (shared_y) acc += shared_y[i];
    store_io(out, i, io_fmt, acc);
}

/* Workspace: the one-device forward's, then the partials, then the shared
 * experts' inputs and outputs. */
static size_t one_bytes(const moe_layer *l, int64_t T) {
    ws_plan p = moe__cuda_plan(l, T, T * l->opts.router->opts.top_k);
    return moe__cuda_plan_bytes(&p) + WS_ALIGN;
}

size_t moe__cuda_tp_workspace_size(const moe_layer *l, int64_t T) {
    const size_t P = (size_t)comm_of(l)->size, H = (size_t)l->opts.experts->opts.d_model;
    ws_plan sp = moe__cuda_plan(l, T, 0);
    return one_bytes(l, T) + moe__align_up(P * (size_t)T * H * 4, WS_ALIGN) +
           2 * P * sizeof(tp_hdr) + 2 * WS_ALIGN + moe__cuda_plan_bytes(&sp) + WS_ALIGN;
}

static moe_status tp_forward_call(moe_layer *l, int64_t T, const void *x, const float *logits,
                                  const int32_t *ids_in, const float *w_in,
                                  const moe_shared_experts *sh, void *out, void *ws,
                                  size_t ws_size) {
    char *err = l->err;
    const size_t errlen = sizeof l->err;
    moe_comm *c = comm_of(l);
    cuda_ctx *cx = (cuda_ctx *)l->ctx->cuda;
    const cuda_layer *cl = (const cuda_layer *)l->cuda;
    const cuda_ep_host *h = cl ? cl->ep_host : NULL;
    const cuda_experts *ex = moe__cuda_experts_state(l->opts.experts);
    if (!cx || !h || !ex) return moe__errf(err, errlen, MOE_ERR_INTERNAL, "cuda: layer not set up");
    if (c->broken) return moe__ep_fail(l, c->broken, "tensor-parallel forward");
    const cuda_experts *sx = sh ? moe__cuda_experts_state(sh->mlp) : NULL;
    if (sh && !sx)
        return moe__errf(err, errlen, MOE_ERR_INVALID_ARG,
                         "cuda: these shared experts were not uploaded: give them in "
                         "moe_layer_options.shared");
    const size_t need = moe__cuda_tp_workspace_size(l, T);
    if (ws_size < need)
        return moe__errf(err, errlen, MOE_ERR_WORKSPACE,
                         "workspace of %zu bytes is too small for %lld tokens (need %zu)", ws_size,
                         (long long)T, need);
    const int32_t P = c->size, me = c->rank;
    const int64_t H = ex->H, n = T * H;
    cudaStream_t st = cx->main;
    const size_t ob = one_bytes(l, T);
    char *cur = (char *)ws + ob;
    float *parts = (float *)take(&cur, (size_t)P * (size_t)n * 4);
    tp_hdr *hd = (tp_hdr *)take(&cur, 2 * (size_t)P * sizeof(tp_hdr)), *hd_in = hd + P;
    cur = (char *)moe__align_up((uintptr_t)cur, WS_ALIGN);
    ws_plan sp = moe__cuda_plan(l, T, 0);
    ws_bufs sb = moe__cuda_carve(&sp, &cur);
    tp_hdr *h_out = (tp_hdr *)h->hdr_out, *h_in = (tp_hdr *)h->hdr_in;
    moe__msg *sends = h->msgs, *recvs = h->msgs + 3 * P;
    moe_status s;

    // 1. counts first
    const uint32_t call_no = (uint32_t)c->stats.calls++;
    *h_out = tp_hdr{ MOE__EP_MAGIC, call_no, me, 0, H, T, (int32_t)l->opts.io_format };
    int ns = 0, nr = 0;
    for (int32_t r = 0; r < P; r++) {
        if (r == me) continue;
        sends[ns++] = moe__msg{ r, 0, hd, sizeof(tp_hdr) };
        recvs[nr++] = moe__msg{ r, 0, hd_in + r, sizeof(tp_hdr) };
    }
    MOE_CUDA_TRY(cudaMemcpyAsync(hd, h_out, sizeof(tp_hdr), cudaMemcpyHostToDevice, st), err,
                 errlen);
    if ((s = moe__comm_post(c, MOE__PHASE_COMBINE, sends, ns, recvs, nr)))
        return moe__ep_fail(l, s, "tensor-parallel all-reduce (counts)");
    MOE_CUDA_TRY(cudaMemcpyAsync(h_in, hd_in, (size_t)P * sizeof(tp_hdr), cudaMemcpyDeviceToHost,
                                 st), err, errlen);
    if ((s = moe__comm_wait(c, MOE__PHASE_COMBINE)))
        return moe__ep_fail(l, s, "tensor-parallel all-reduce (counts)");
    for (int32_t r = 0; r < P; r++) {
        if (r == me) continue;
        if ((s = moe__ep_check_hdr(l, "tensor-parallel all-reduce", &h_in[r], r, call_no, H, -1,
                                   T)))
            return s;
    }
    if (!T) return MOE_OK;

    // 2. this rank's partial, 3. every rank's partial
    float *mine = parts + (size_t)me * (size_t)n;
    if ((s = moe__cuda_forward_one(l, T, x, logits, ids_in, w_in, NULL, mine, MOE_FORMAT_F32, ws,
                                   ob)))
        return s;
    ns = nr = 0;
    for (int32_t r = 0; r < P; r++) {
        if (r == me) continue;
        sends[ns++] = moe__msg{ r, 1, mine, (size_t)n * 4 };
        recvs[nr++] = moe__msg{ r, 1, parts + (size_t)r * (size_t)n, (size_t)n * 4 };
    }
    if ((s = moe__comm_post(c, MOE__PHASE_COMBINE, sends, ns, recvs, nr)))
        return moe__ep_fail(l, s, "tensor-parallel all-reduce");

    // 4. the shared experts, 5. the sum
    if (sx) {
        moe__cuda_inputs in;
        if ((s = moe__cuda_prepare_inputs(l, T, x, NULL, false, ex, sx, &sb, st, &in))) return s;
        if ((s = moe__cuda_run_shared(l, sx, sh, T, in.xa_sh, sb.xs, sb.sg, &sb, st))) return s;
    }
    tp_sum_kernel<<<(unsigned)cdiv(n, 256), 256, 0, st>>>(parts, P, n, sx ? sb.sh_y : NULL, out,
                                                          l->opts.io_format);
    MOE_CUDA_TRY(cudaGetLastError(), err, errlen);

    // 6. complete within the deadline
    if ((s = moe__comm_wait(c, MOE__PHASE_COMBINE)))
        return moe__ep_fail(l, s, "tensor-parallel all-reduce");
    return MOE_OK;
}

moe_status moe__cuda_tp_forward(moe_layer *l, int64_t T, const void *x, const float *logits,
                                const int32_t *ids_in, const float *w_in,
                                const moe_shared_experts *sh, void *out, void *ws,
                                size_t ws_size) {
    moe_comm *c = comm_of(l);
    c->call_end = moe__now_s() + c->deadline_ms * 1e-3;
    moe_status st = tp_forward_call(l, T, x, logits, ids_in, w_in, sh, out, ws, ws_size);
    c->call_end = 0;
    return st;
}
