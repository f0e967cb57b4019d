/*
 * align.cuh - the one-block grouping of slots by expert (see align.cu),
 * shared by the align kernel and the fused decode prologue.
 */
#ifndef MOE_CUDA_ALIGN_CUH
#define MOE_CUDA_ALIGN_CUH

#include "common.cuh"

#define ALIGN_THREADS 1024
#define ALIGN_SMALL   4096  /* slots handled by the one-block kernel         */
#define ALIGN_CHUNK   2048  /* slots per block of the multi-block path       */
#define ALIGN_BLOCKS  128   /* at most this many blocks                      */
#define ALIGN_BT      512   /* threads per block of the multi-block kernels  */


/* In-place exclusive prefix sum of v (n) in shared memory by the whole block;
 * returns the total to every thread. */
static __device__ int block_exclusive_scan(int *v, int n, int *warp_tot) {
    const int tid = threadIdx.x, lane = tid & 31, wid = tid >> 5;
    const int per = (n + (int)blockDim.x - 1) / (int)blockDim.x;
    const int b = tid * per, e = min(n, b + per);
    int s = 0;
#pragma unroll 1
    for (int i = b; i < e; i++) s += v[i];
    int inc = s; // inclusive warp scan of the per-thread sums
    for (int o = 1; o < 32; o <<= 1) {
        int u = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += u;
    }
    if (lane == 31) warp_tot[wid] = inc;
    __syncthreads();
    if (wid == 0) {
        int wv = lane < (int)(blockDim.x >> 5) ? warp_tot[lane] : 0, wi = wv;
        for (int o = 1; o < 32; o <<= 1) {
            int u = __shfl_up_sync(0xffffffffu, wi, o);
            if (lane >= o) wi += u;
        }
        warp_tot[lane] = wi - wv; // exclusive
        if (lane == 31) warp_tot[32] = wi;
    }
    __syncthreads();
    int run = warp_tot[wid] + inc - s;
#pragma unroll 1
    for (int i = b; i < e; i++) {
        int c = v[i];
        v[i] = run;
        run += c;
    }
    int total = warp_tot[32];
    __syncthreads();
    return total;
}

static __device__ __forceinline__ int local_of(int32_t id, const int32_t *map, int32_t n_global,
                                               int32_t n_local) {
    if (id < 0 || id >= n_global) return -1;
    int loc = map ? map[id] : id;
    return loc >= 0 && loc < n_local ? loc : -1;
}

/* Writes the tile table for expert starts st (n_local, exclusive) and tile
 * starts ts, by the whole block. */
static __device__ void write_tiles(const int *st, const int *ts, int n_local, int n_rows,
                                   int n_tiles, int BM, int64_t max_tiles, moe__align_out o) {
#pragma unroll 1
    for (int e = threadIdx.x; e < n_local; e += blockDim.x) {
        o.expert_start[e] = st[e];
        int rows = (e + 1 < n_local ? st[e + 1] : n_rows) - st[e];
#pragma unroll 1
        for (int i = 0; i * BM < rows; i++) {
            int ti = ts[e] + i;
            if (ti < max_tiles) {
                o.tiles[2 * ti]     = e;
                o.tiles[2 * ti + 1] = st[e] + i * BM;
            }
        }
    }
    if (threadIdx.x == 0) {
        o.expert_start[n_local] = n_rows;
        *o.n_tiles = (int)min((int64_t)n_tiles, max_tiles);
    }
}

/* Shared-memory bytes of align_one_block for n_local experts. */
static __host__ __device__ inline size_t align_smem(int32_t n_local) {
    return ((size_t)3 * n_local + 33) * sizeof(int);
}

/* The whole contiguous layout by one block (up to ALIGN_THREADS threads, a
 * multiple of 32); asm_ is
 * align_smem(n_local) bytes of shared memory. */
static __device__ void align_one_block(const int32_t *ids, int64_t n_slots, const int32_t *map,
                                       int32_t n_global, int32_t n_local, int BM,
                                       int64_t max_tiles, const moe__align_out &o, int *asm_) {
    int *cnt  = asm_;               // (n_local) counts, then row starts
    int *tcnt = cnt + n_local;      // (n_local) tiles, then tile starts
    int *cur  = tcnt + n_local;     // (n_local) placement cursors
    int *wtot = cur + n_local;      // (33) scan scratch
#pragma unroll 1
    for (int e = threadIdx.x; e < n_local; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
#pragma unroll 1
    for (int64_t s = threadIdx.x; s < n_slots; s += blockDim.x) {
        int loc = local_of(ids[s], map, n_global, n_local);
        if (loc >= 0) atomicAdd(&cnt[loc], 1);
    }
    __syncthreads();
#pragma unroll 1
    for (int e = threadIdx.x; e < n_local; e += blockDim.x) tcnt[e] = (cnt[e] + BM - 1) / BM;
    __syncthreads();
    int n_rows  = block_exclusive_scan(cnt, n_local, wtot);
    int n_tiles = block_exclusive_scan(tcnt, n_local, wtot);
#pragma unroll 1
    for (int e = threadIdx.x; e < n_local; e += blockDim.x) cur[e] = cnt[e];
    write_tiles(cnt, tcnt, n_local, n_rows, n_tiles, BM, max_tiles, o);
    __syncthreads();
#pragma unroll 1
    for (int64_t s = threadIdx.x; s < n_slots; s += blockDim.x) {
        int loc = local_of(ids[s], map, n_global, n_local);
        int row = -1;
        if (loc >= 0) {
            row = atomicAdd(&cur[loc], 1);
            o.row_slot[row] = (int32_t)s;
        }
        o.slot_row[s] = row;
    }
}

/* Whether align_one_warp can group n_slots slots of T tokens: a slot per
 * lane, and every expert's rows (at most T: a token's k experts differ) in
 * one tile. */
static __host__ __device__ inline bool align_fits_warp(int64_t n_slots, int64_t T, int BM) {
    return n_slots <= 32 && T <= BM;
}

/* The same layout as align_one_block when align_fits_warp, by one warp:
 * lane j holds slot j; its row is the number of slots before it in
 * (expert, slot) order, found by comparing with every other lane's expert
 * through shuffles; expert starts are a shared-memory histogram (sm:
 * n_local ints) and a warp scan. id: the expert of the lane's slot (lanes
 * from n_slots on: ignored). A 1-token step thus groups in a few
 * hundred instructions instead of the block version's ~2.5k of scans and
 * barriers (ncu: one warp's 15 us latency chain). Rows of an expert are in
 * slot order here and in atomic order there: results do not depend on it
 * (rows are independent, written back at their slot). */
static __device__ void align_one_warp(int32_t id, int n_slots, const int32_t *map,
                                      int32_t n_global, int32_t n_local,
                                      const moe__align_out &o, int *sm) {
    const unsigned all = 0xffffffffu;
    const int lane = threadIdx.x & 31;
    const int loc  = lane < n_slots ? local_of(id, map, n_global, n_local) : -1;
    int row = 0, same_before = 0;
#pragma unroll 1
    for (int i = 0; i < n_slots; i++) {
        const int li = __shfl_sync(all, loc, i);
        row += li >= 0 && (li < loc || (li == loc && i < lane));
        same_before += li == loc && i < lane;
    }
    const int first = loc >= 0 && same_before == 0; // the expert's first row: its tile
    int tile = 0;
#pragma unroll 1
    for (int i = 0; i < n_slots; i++) {
        const int li = __shfl_sync(all, loc, i);
        tile += __shfl_sync(all, first, i) && li < loc;
    }
    if (lane < n_slots) o.slot_row[lane] = loc >= 0 ? row : -1;
    if (loc >= 0) o.row_slot[row] = lane;
    if (first) {
        o.tiles[2 * tile]     = loc;
        o.tiles[2 * tile + 1] = row;
    }
    const int n_tiles = __popc(__ballot_sync(all, first));
    if (lane == 0) *o.n_tiles = n_tiles;

    // expert_start (n_local + 1): lane L scans experts [L per, (L + 1) per)
#pragma unroll 1
    for (int e = lane; e < n_local; e += 32) sm[e] = 0;
    __syncwarp();
    if (loc >= 0) atomicAdd(&sm[loc], 1);
    __syncwarp();
    const int per = (n_local + 32) / 32, e0 = lane * per;
    int sum = 0;
#pragma unroll 1
    for (int e = e0; e < min(e0 + per, n_local); e++) sum += sm[e];
    int inc = sum;
    for (int d = 1; d < 32; d <<= 1) {
        const int u = __shfl_up_sync(all, inc, d);
        if (lane >= d) inc += u;
    }
    int run = inc - sum;
#pragma unroll 1
    for (int e = e0; e < min(e0 + per, n_local + 1); e++) {
        o.expert_start[e] = run;
        if (e < n_local) run += sm[e];
    }
}

#endif /* MOE_CUDA_ALIGN_CUH */
