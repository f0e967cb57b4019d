/*
 * tma.cuh - Hopper's tensor memory accelerator for the grouped GEMM's weight
 * stages: one thread copies a whole stage of weight rows with a few bulk
 * tensor copies instead of every thread issuing 16-byte cp.async copies
 * (fewer instructions, and registers: the bf16 prefill tile 126 -> 90),
 * and the stage's mbarrier says when its bytes have landed.
 *
 * The tensor map (made on the host at upload, cuda.cu) describes one weight
 * tensor as 4-D bytes {K bytes, rows, halves, experts} with boxes of
 * TMA_BOX_ROWS rows x 128 bytes in the 128-byte swizzle: the layout the
 * cp.async path writes and wgmma reads. Rows outside the map (past N, the
 * K tail) arrive as zeros, as the cp.async path's zero-byte copies.
 *
 * Only the sm_90a target runs these; elsewhere they trap, and the host
 * selects the TMA tiles only on a compute capability 9.0 device.
 */
#ifndef MOE_CUDA_TMA_CUH
#define MOE_CUDA_TMA_CUH

#include "wgmma.cuh"

/* Weight rows per bulk copy (a box of 32 x 128 bytes, 4 KB): divides every
 * tile's weight rows and gated half. */
#define TMA_BOX_ROWS 32

static __device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
#ifdef MOE_WGMMA
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#else
    (void)bar; (void)count;
    __trap();
#endif
}

/* After the barriers are initialized, before the bulk copies may signal them. */
static __device__ __forceinline__ void mbar_init_fence() {
#ifdef MOE_WGMMA
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

/* Arrives on bar (the one expected arrival) announcing bytes to come. */
static __device__ __forceinline__ void mbar_expect_bytes(uint32_t bar, uint32_t bytes) {
#ifdef MOE_WGMMA
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar),
                 "r"(bytes)
                 : "memory");
#else
    (void)bar; (void)bytes;
#endif
}

/* One plain arrival on bar (a consumer releasing a stage). */
static __device__ __forceinline__ void mbar_arrive(uint32_t bar) {
#ifdef MOE_WGMMA
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#else
    (void)bar;
#endif
}

/* Arrives on bar once this thread's cp.async copies issued so far have
 * landed; the arrival is one of the count bar was initialized with. */
static __device__ __forceinline__ void cp_async_arrive_noinc(uint32_t bar) {
#ifdef MOE_WGMMA
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
#else
    (void)bar;
#endif
}

/* Waits until the phase of bar with this parity has completed. */
static __device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
#ifdef MOE_WGMMA
    asm volatile("{\n"
                 "  .reg .pred done;\n"
                 "WAIT_%=:\n"
                 "  mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 "  @!done bra WAIT_%=;\n"
                 "}\n" ::"r"(bar),
                 "r"(parity)
                 : "memory");
#else
    (void)bar; (void)parity;
#endif
}

/* Copies the box at coordinates (c0 bytes, c1 row, c2 half, c3 expert) of
 * map into shared memory at dst; its bytes count towards bar. */
static __device__ __forceinline__ void tma_load_4d(uint32_t dst, const void *map, uint32_t bar,
                                                   int c0, int c1, int c2, int c3) {
#ifdef MOE_WGMMA
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
                 "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
                 : "memory");
#else
    (void)dst; (void)map; (void)bar; (void)c0; (void)c1; (void)c2; (void)c3;
    __trap();
#endif
}

/* ---- two-CTA clusters (the paired prefill kernel, grouped-gemm-ws.cuh) */

/* This CTA's rank in its cluster. */
static __device__ __forceinline__ int cluster_rank() {
    uint32_t r = 0;
#ifdef MOE_WGMMA
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
#endif
    return (int)r;
}

/* Every thread of every CTA of the cluster: what each wrote before is seen
 * by all after (mbarrier inits included). */
static __device__ __forceinline__ void cluster_sync() {
#ifdef MOE_WGMMA
    asm volatile("barrier.cluster.arrive.release.aligned;\n"
                 "barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#else
    __trap();
#endif
}

/* One arrival on the mbarrier at offset bar of CTA rank's shared memory
 * (CTA-scope release, as CUTLASS's cluster barriers: with .release.cluster
 * here and .acquire.cluster on the wait the paired kernel ran 20-30%
 * slower, dev/cuda/NOTES.md v21). */
static __device__ __forceinline__ void mbar_arrive_cluster(uint32_t bar, int rank) {
#ifdef MOE_WGMMA
    asm volatile("{\n"
                 "  .reg .b32 ra;\n"
                 "  mapa.shared::cluster.u32 ra, %0, %1;\n"
                 "  mbarrier.arrive.shared::cluster.b64 _, [ra];\n"
                 "}\n" ::"r"(bar),
                 "r"(rank)
                 : "memory");
#else
    (void)bar; (void)rank;
#endif
}

/* tma_load_4d into the same offset dst of every CTA of the cluster in mask
 * (bit i: rank i), the bytes counted by the mbarrier at offset bar of each. */
static __device__ __forceinline__ void tma_load_4d_multicast(uint32_t dst, const void *map,
                                                             uint32_t bar, int c0, int c1, int c2,
                                                             int c3, uint16_t mask) {
#ifdef MOE_WGMMA
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 ".multicast::cluster [%0], [%1, {%2, %3, %4, %5}], [%6], %7;\n" ::"r"(dst),
                 "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar), "h"(mask)
                 : "memory");
#else
    (void)dst; (void)map; (void)bar; (void)c0; (void)c1; (void)c2; (void)c3; (void)mask;
    __trap();
#endif
}

#endif /* MOE_CUDA_TMA_CUH */
