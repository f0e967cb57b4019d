/*
 * finalize.cu - the two element-wise ends of the CUDA forward.
 *
 * prepare: x (T, H) in the layer's io format -> xq (T, H) in the compute type
 *   of the weights (bf16, f16; or e4m3 with one f32 scale per token and group
 *   of 128 columns, xs (T, ceil(H/128)), the dynamic activation quantization
 *   of MOE_FORMAT_FP8_BLOCK: scale = max(amax, 1e-10) / 448, q = e4m3(x /
 *   scale) saturated, as src/quant/fp8.c). With a shared-experts gate it also
 *   writes sg (T) = sigmoid(x . gate), the gate's per-token factor.
 *
 * finalize: out[t] = sum_j y[t k + j] (j = 0..k-1 in order, slots whose
 *   expert is held here only; the routing weight is already in y) + shared_y[t],
 *   fp32, one rounding into the io format. Deterministic: no atomics. y rows
 *   are bf16 when the output is (W2 rounded each slot's row, as vLLM's
 *   per-slot cache does), halving the bytes W2 writes and this reads; f32
 *   otherwise.
 */
#include "common.cuh"

#define PREP_THREADS 256

// ---- kernels

/* One block per token. */
static __global__ void __launch_bounds__(PREP_THREADS)
    prepare_x_kernel(const void *x, int io_fmt, int64_t H, int dtype, void *xq, float *xs,
                     const float *gate, float *sg) {
    const int64_t t = blockIdx.x;
    const int tid = threadIdx.x, lane = tid & 31, wid = tid >> 5;
    const void *xr = x; // (T, H) row t at t * H
    /* A programmatic dependent (the decode prologue; W2 after the fp8 decode
     * quantization) may start now: it does not read xq before it waits. */
    pdl_launch();
    if (!xq) {
        // x already has the compute type: only the gate below
    } else if (dtype == MOE_CUDA_FP8) {
        const int64_t ng = (H + MOE_CUDA_QBLOCK - 1) / MOE_CUDA_QBLOCK;
        for (int64_t g = wid; g < ng; g += PREP_THREADS / 32) {
            float v[4];
#pragma unroll
            for (int q = 0; q < 4; q++) {
                int64_t c = g * MOE_CUDA_QBLOCK + lane * 4 + q;
                v[q] = c < H ? load_io(xr, t * H + c, io_fmt) : 0.0f;
            }
            int n_valid = (int)min((int64_t)MOE_CUDA_QBLOCK, H - g * MOE_CUDA_QBLOCK);
            float scale = quant_group_warp(v, n_valid, (uint8_t *)xq + t * H + g * MOE_CUDA_QBLOCK);
            if (lane == 0) xs[t * ng + g] = scale;
        }
    } else {
        for (int64_t c = tid; c < H; c += PREP_THREADS) {
            float v = load_io(xr, t * H + c, io_fmt);
            if (dtype == MOE_CUDA_BF16) ((__nv_bfloat16 *)xq)[t * H + c] = __float2bfloat16_rn(v);
            else ((__half *)xq)[t * H + c] = __float2half_rn(v);
        }
    }
    if (gate) {
        __shared__ float part[PREP_THREADS / 32];
        float s = 0.0f;
        for (int64_t c = tid; c < H; c += PREP_THREADS)
            s += load_io(xr, t * H + c, io_fmt) * gate[c];
        s = warp_sum(s);
        if (lane == 0) part[wid] = s;
        __syncthreads();
        if (tid == 0) {
            float a = 0.0f;
            for (int i = 0; i < PREP_THREADS / 32; i++) a += part[i];
            sg[t] = 1.0f / (1.0f + expf(-a));
        }
    }
}

/* V values of y row r from column c, as f32. */
template <int V>
static __device__ __forceinline__ void load_y(const float *y, int64_t r, int64_t H, int64_t c,
                                              float *v) {
    if (V == 4) {
        const float4 f = *(const float4 *)(y + r * H + c);
        v[0] = f.x, v[V > 1 ? 1 : 0] = f.y, v[V > 2 ? 2 : 0] = f.z, v[V > 3 ? 3 : 0] = f.w;
    } else {
        v[0] = y[r * H + c];
    }
}
template <int V>
static __device__ __forceinline__ void load_y(const __nv_bfloat16 *y, int64_t r, int64_t H,
                                              int64_t c, float *v) {
    if (V == 4) {
        const uint2          u = *(const uint2 *)(y + r * H + c);
        const __nv_bfloat162 a = *(const __nv_bfloat162 *)&u.x, b = *(const __nv_bfloat162 *)&u.y;
        v[0] = __low2float(a), v[V > 1 ? 1 : 0] = __high2float(a);
        v[V > 2 ? 2 : 0] = __low2float(b), v[V > 3 ? 3 : 0] = __high2float(b);
    } else {
        v[0] = __bfloat162float(y[r * H + c]);
    }
}

/* One thread per (t, 4 columns) when H % 4 == 0, else per column. */
template <int V, class Y>
static __global__ void finalize_kernel(const Y *y, const int32_t *slot_row,
                                       const float *shared_y, int64_t T, int32_t k, int64_t H,
                                       void *out, int io_fmt, int by_row) {
    pdl_wait(); // launched as a programmatic dependent of W2
    const int64_t cols = H / V;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= T * cols) return; // guard
    const int64_t t = i / cols, c = (i % cols) * V;
    float acc[V];
#pragma unroll
    for (int q = 0; q < V; q++) acc[q] = 0.0f;
    /* Up to 8 slots at a time: every load is issued before the first add (a
     * decode finalize is a chain of dependent loads otherwise); rows of slots
     * held elsewhere are read (they lie in the workspace) but not added. */
    for (int j0 = 0; j0 < k; j0 += 8) {
        float v[8][V];
        bool  held[8];
#pragma unroll
        for (int q = 0; q < 8; q++) {
            const int64_t s = t * k + j0 + q;
            const int64_t row = j0 + q < k ? slot_row[s] : -1;
            held[q] = row >= 0;
            const int64_t r = by_row ? (row >= 0 ? row : 0) : s;
            if (j0 + q < k) load_y<V>(y, r, H, c, v[q]);
        }
#pragma unroll
        for (int q = 0; q < 8; q++)
            if (held[q])
#pragma unroll
                for (int i = 0; i < V; i++) acc[i] += v[q][i];
    }
    if (shared_y)
#pragma unroll
        for (int q = 0; q < V; q++) acc[q] += shared_y[t * H + c + q];
#pragma unroll
    for (int q = 0; q < V; q++) store_io(out, t * H + c + q, io_fmt, acc[q]);
}

// ---- launchers

cudaError_t moe__prepare_x_cuda(const void *x, int io_fmt, int64_t T, int64_t H, int dtype,
                                void *xq, float *xs, const float *gate, float *sg,
                                cudaStream_t st) {
    if (T == 0) return cudaSuccess;
    prepare_x_kernel<<<(unsigned)T, PREP_THREADS, 0, st>>>(x, io_fmt, H, dtype, xq, xs, gate, sg);
    return cudaGetLastError();
}

template <class Y>
static cudaError_t finalize_launch(const cudaLaunchConfig_t *cfg, bool v4, const void *y,
                                   const int32_t *slot_row, const float *shared_y, int64_t T,
                                   int32_t k, int64_t H, void *out, int io_fmt, int by_row) {
    const Y *yt = (const Y *)y;
    return v4 ? cudaLaunchKernelEx(cfg, finalize_kernel<4, Y>, yt, slot_row, shared_y, T, k, H,
                                   out, io_fmt, by_row)
              : cudaLaunchKernelEx(cfg, finalize_kernel<1, Y>, yt, slot_row, shared_y, T, k, H,
                                   out, io_fmt, by_row);
}

cudaError_t moe__finalize_cuda(const void *y, int y_bf16, const int32_t *slot_row,
                               const float *shared_y, int64_t T, int32_t k, int64_t H, void *out,
                               int io_fmt, int pdl, int by_row, cudaStream_t st) {
    if (T == 0) return cudaSuccess;
    const bool v4 = H % 4 == 0;
    const int64_t n = T * (v4 ? H / 4 : H);
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg =
        launch_config(dim3((unsigned)((n + 255) / 256)), dim3(256), 0, st, pdl, &attr);
    cudaError_t e = y_bf16 ? finalize_launch<__nv_bfloat16>(&cfg, v4, y, slot_row, shared_y, T,
                                                            k, H, out, io_fmt, by_row)
                           : finalize_launch<float>(&cfg, v4, y, slot_row, shared_y, T, k, H, out,
                                                    io_fmt, by_row);
    return e != cudaSuccess ? e : cudaGetLastError();
}
