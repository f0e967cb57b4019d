/*
 * align.cu - the contiguous layout on the GPU: token slots grouped by local
 * expert, and the tile table of the grouped GEMM.
 *
 *   ids (T, k) global expert ids -> local = expert_map[id] (identity without a
 *   map; ids out of range or mapped to -1 are not held here)
 *   expert_start (n_local + 1)  first row of each expert (exclusive prefix sum)
 *   row_slot (n_rows)           slot s = t k + j of each row, grouped by expert
 *   slot_row (T k)              row of each slot, -1 when not held
 *   tiles (n_tiles, 2)          (expert, first row) of each BM-row GEMM tile
 *   n_tiles (1)
 *
 * Up to ALIGN_SMALL slots one block of 1024 threads does it all (counts in
 * shared memory, a block scan, atomics to place slots): one launch, which is
 * what decode wants. Beyond, three launches spread the slots over blocks:
 * per-block counts (no atomics across blocks), one block turns them into
 * expert starts and per-block offsets, and each block places its slots. The
 * order of slots within an expert depends on shared-memory atomics, but no
 * result does: every GEMM row is computed on its own and written back by
 * slot.
 */
#include "align.cuh"

// ---- device helpers

static __device__ __forceinline__ int64_t chunk_of(int64_t n_slots) {
    int64_t nb = (n_slots + ALIGN_CHUNK - 1) / ALIGN_CHUNK;
    nb = nb < ALIGN_BLOCKS ? nb : ALIGN_BLOCKS;
    return (n_slots + nb - 1) / nb;
}

// ---- kernels

static __global__ void __launch_bounds__(ALIGN_THREADS)
    align_kernel(const int32_t *ids, int64_t n_slots, const int32_t *map, int32_t n_global,
                 int32_t n_local, int BM, int64_t max_tiles, moe__align_out o) {
    extern __shared__ int asm_[];
    align_one_block(ids, n_slots, map, n_global, n_local, BM, max_tiles, o, asm_);
}

/* Multi-block path 1/3: counts of block b's chunk, (blocks, n_local). */
static __global__ void __launch_bounds__(ALIGN_BT)
    align_count_kernel(const int32_t *ids, int64_t n_slots, const int32_t *map, int32_t n_global,
                       int32_t n_local, int32_t *bcnt) {
    extern __shared__ int hist[];
    for (int e = threadIdx.x; e < n_local; e += ALIGN_BT) hist[e] = 0;
    __syncthreads();
    const int64_t chunk = chunk_of(n_slots), s0 = blockIdx.x * chunk;
    const int64_t s1 = min(n_slots, s0 + chunk);
    for (int64_t s = s0 + threadIdx.x; s < s1; s += ALIGN_BT) {
        int loc = local_of(ids[s], map, n_global, n_local);
        if (loc >= 0) atomicAdd(&hist[loc], 1);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < n_local; e += ALIGN_BT)
        bcnt[(int64_t)blockIdx.x * n_local + e] = hist[e];
}

/* 2/3: expert starts, tile table, and bcnt turned into each block's first
 * row per expert. */
static __global__ void __launch_bounds__(ALIGN_THREADS)
    align_scan_kernel(int32_t *bcnt, int n_blocks, int32_t n_local, int BM, int64_t max_tiles,
                      moe__align_out o) {
    extern __shared__ int asm_[];
    int *cnt  = asm_;
    int *tcnt = cnt + n_local;
    int *wtot = tcnt + n_local;
    for (int e = threadIdx.x; e < n_local; e += ALIGN_THREADS) {
        int run = 0;
        for (int b = 0; b < n_blocks; b++) {
            int c = bcnt[(int64_t)b * n_local + e];
            bcnt[(int64_t)b * n_local + e] = run;
            run += c;
        }
        cnt[e]  = run;
        tcnt[e] = (run + BM - 1) / BM;
    }
    __syncthreads();
    int n_rows  = block_exclusive_scan(cnt, n_local, wtot);
    int n_tiles = block_exclusive_scan(tcnt, n_local, wtot);
    write_tiles(cnt, tcnt, n_local, n_rows, n_tiles, BM, max_tiles, o);
    for (int e = threadIdx.x; e < n_local; e += ALIGN_THREADS)
        for (int b = 0; b < n_blocks; b++) bcnt[(int64_t)b * n_local + e] += cnt[e];
}

/* 3/3: place block b's slots from its per-expert first rows. */
static __global__ void __launch_bounds__(ALIGN_BT)
    align_place_kernel(const int32_t *ids, int64_t n_slots, const int32_t *map, int32_t n_global,
                       int32_t n_local, const int32_t *boff, moe__align_out o) {
    extern __shared__ int cur[];
    for (int e = threadIdx.x; e < n_local; e += ALIGN_BT)
        cur[e] = boff[(int64_t)blockIdx.x * n_local + e];
    __syncthreads();
    const int64_t chunk = chunk_of(n_slots), s0 = blockIdx.x * chunk;
    const int64_t s1 = min(n_slots, s0 + chunk);
    for (int64_t s = s0 + threadIdx.x; s < s1; s += ALIGN_BT) {
        int loc = local_of(ids[s], map, n_global, n_local);
        int row = -1;
        if (loc >= 0) {
            row = atomicAdd(&cur[loc], 1);
            o.row_slot[row] = (int32_t)s;
        }
        o.slot_row[s] = row;
    }
}

// ---- launchers

static int64_t align_blocks(int64_t n_slots) {
    int64_t nb = (n_slots + ALIGN_CHUNK - 1) / ALIGN_CHUNK;
    return nb < ALIGN_BLOCKS ? nb : ALIGN_BLOCKS;
}

size_t moe__align_scratch_size(int64_t n_slots, int32_t n_local) {
    if (n_slots <= ALIGN_SMALL) return 0;
    return (size_t)align_blocks(n_slots) * (size_t)n_local * sizeof(int32_t);
}

cudaError_t moe__align_setup_cuda(int32_t n_local) {
    size_t smem = align_smem(n_local);
    if (smem <= 48 * 1024) return cudaSuccess;
    cudaError_t e = cudaFuncSetAttribute(align_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)smem);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(align_scan_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)smem);
    return e;
}

cudaError_t moe__align_cuda(const int32_t *ids, int64_t T, int32_t k, const int32_t *expert_map,
                            int32_t n_global, int32_t n_local, int BM, int64_t max_tiles,
                            const moe__align_out *o, cudaStream_t st) {
    const int64_t n_slots = T * k;
    if (n_slots <= ALIGN_SMALL) {
        align_kernel<<<1, ALIGN_THREADS, align_smem(n_local), st>>>(ids, n_slots, expert_map,
                                                                  n_global, n_local, BM, max_tiles,
                                                                  *o);
        return cudaGetLastError();
    }
    const int nb = (int)align_blocks(n_slots);
    const size_t hs = (size_t)n_local * sizeof(int);
    align_count_kernel<<<nb, ALIGN_BT, hs, st>>>(ids, n_slots, expert_map, n_global, n_local,
                                                 o->scratch);
    align_scan_kernel<<<1, ALIGN_THREADS, align_smem(n_local), st>>>(o->scratch, nb, n_local, BM,
                                                                     max_tiles, *o);
    align_place_kernel<<<nb, ALIGN_BT, hs, st>>>(ids, n_slots, expert_map, n_global, n_local,
                                                 o->scratch, *o);
    return cudaGetLastError();
}
