/*
 * wgmma.cuh - Hopper warpgroup MMA (sm_90a) for the grouped GEMM: shared-
 * memory matrix descriptors and one m64n{256,128,64,32} step per operand type
 * (bf16, f16, e4m3), with the accumulator in the same per-thread order as
 * mma.sync's m16n8 tiles (so the kernel's epilogue serves both inner loops).
 *
 * Operands: K-major tiles of 128-byte rows (64 bf16/f16 or 128 e4m3 values)
 * whose 16-byte chunks are XOR-swizzled by row (chunk c of row r at
 * position c ^ (r & 7)), from a 1024-byte aligned base: exactly the layout
 * the hardware's 128-byte swizzle mode reads, so the cp.async loads of the
 * mma.sync path feed wgmma unchanged. A step of K (32 bytes) advances the
 * descriptor's start address; 8-row groups are 1024 bytes apart.
 *
 * Only the sm_90a target has these instructions; elsewhere the functions
 * trap, and the host never selects the wgmma kernels there (cuda.cu checks
 * the device is compute capability 9.0).
 */
#ifndef MOE_CUDA_WGMMA_CUH
#define MOE_CUDA_WGMMA_CUH

#include "common.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MOE_WGMMA 1
#endif

/* Descriptor of a K-major, 128-byte swizzled operand tile at shared address
 * addr: start (bits 0-13, 16-byte units), leading offset (unused by this
 * mode, 1), stride offset 1024 bytes (bits 32-45), swizzle mode 128 bytes
 * (bits 62-63 = 1). */
static __device__ __forceinline__ uint64_t wgmma_desc(uint32_t addr) {
    return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) |
           ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}

/* Before the first wgmma of a batch (orders earlier register and shared
 * memory accesses of the warpgroup before it). */
static __device__ __forceinline__ void wgmma_fence() {
#ifdef MOE_WGMMA
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
static __device__ __forceinline__ void wgmma_commit() {
#ifdef MOE_WGMMA
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
/* Waits until at most N committed batches of this warpgroup are running. */
template <int N> static __device__ __forceinline__ void wgmma_wait() {
#ifdef MOE_WGMMA
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
/* Makes this thread's completed cp.async writes to shared memory visible
 * to wgmma's reads (the async proxy). */
static __device__ __forceinline__ void fence_proxy_async() {
#ifdef MOE_WGMMA
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

/* Accumulator operand lists: 8 f32 registers per group, %0.. in order. */
#define WG_D8(i)                                                                              \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
        "+f"(d[i + 6]), "+f"(d[i + 7])
#define WG_REGS8 "%0, %1, %2, %3, %4, %5, %6, %7"
#define WG_REGS16 WG_REGS8 ", %8, %9, %10, %11, %12, %13, %14, %15"
#define WG_REGS32                                                                             \
    WG_REGS16 ", %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define WG_REGS64                                                                             \
    WG_REGS16 ", %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, " \
              "%31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, "   \
              "%46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, "   \
              "%61, %62, %63"
#define WG_REGS128                                                                            \
    WG_REGS64 ", %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, "  \
              "%79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, "   \
              "%94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, "      \
              "%107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, "      \
              "%119, %120, %121, %122, %123, %124, %125, %126, %127"
/* D = A . B^T (+ D when ACC) with descriptors da, db; scales of A and B 1,
 * both operands K-major: bf16/f16 name the (absent) transposes, e4m3 has
 * no such operands. R f32 registers, then da, db and the scale of D. */
#define WG_MMA(R, SHAPE_TYPES, TAIL, ...)                                                     \
    asm volatile("wgmma.mma_async.sync.aligned." SHAPE_TYPES " {" WG_REGS##R "}, %" #R ", %" \
                 WG_NEXT##R ", %" WG_SCALE##R ", " TAIL ";\n"                                 \
                 : __VA_ARGS__                                                                \
                 : "l"(da), "l"(db), "n"(ACC ? 1 : 0))
#define WG_NEXT8   "9"
#define WG_SCALE8  "10"
#define WG_NEXT16  "17"
#define WG_SCALE16 "18"
#define WG_NEXT32  "33"
#define WG_SCALE32 "34"
#define WG_NEXT64  "65"
#define WG_SCALE64 "66"
#define WG_NEXT128  "129"
#define WG_SCALE128 "130"
#define WG_TAIL16  "1, 1, 0, 0"
#define WG_TAIL8   "1, 1"
#define WG_D16 WG_D8(0), WG_D8(8)
#define WG_D32 WG_D8(0), WG_D8(8), WG_D8(16), WG_D8(24)
#define WG_D64 WG_D8(0), WG_D8(8), WG_D8(16), WG_D8(24), WG_D8(32), WG_D8(40), WG_D8(48), WG_D8(56)
#define WG_D128                                                                               \
    WG_D64, WG_D8(64), WG_D8(72), WG_D8(80), WG_D8(88), WG_D8(96), WG_D8(104), WG_D8(112),    \
        WG_D8(120)

/* d (N / 2 floats: N / 8 tiles of 8 columns x 4) = A (64 x K) . B (N x K)^T
 * (+ d when ACC) for one 32-byte K step: k16 of bf16/f16, k32 of e4m3;
 * N = 256 (bf16/f16 only: the warp-specialized prefill tile), 128, 64, 32
 * or 16 (the decode tiles, whose B is the activation rows). Thread t of
 * warp w holds, for tile j, rows 16w + t/4 (+8 for d[4j+2..3]) and columns
 * 8j + 2(t%4) + (0, 1). */
template <int DT, int N, bool ACC = true>
static __device__ __forceinline__ void wgmma_step(float *d, uint64_t da, uint64_t db) {
    static_assert(N == 256 || N == 128 || N == 64 || N == 32 || N == 16, "wgmma width");
    static_assert(N != 256 || DT != MOE_CUDA_FP8, "m64n256 steps are bf16/f16 only");
#ifdef MOE_WGMMA
    if (N == 256) {
        if (DT == MOE_CUDA_BF16)
            WG_MMA(128, "m64n256k16.f32.bf16.bf16", WG_TAIL16, WG_D128);
        else
            WG_MMA(128, "m64n256k16.f32.f16.f16", WG_TAIL16, WG_D128);
    } else if (N == 128) {
        if (DT == MOE_CUDA_BF16)
            WG_MMA(64, "m64n128k16.f32.bf16.bf16", WG_TAIL16, WG_D64);
        else if (DT == MOE_CUDA_F16)
            WG_MMA(64, "m64n128k16.f32.f16.f16", WG_TAIL16, WG_D64);
        else
            WG_MMA(64, "m64n128k32.f32.e4m3.e4m3", WG_TAIL8, WG_D64);
    } else if (N == 64) {
        if (DT == MOE_CUDA_BF16)
            WG_MMA(32, "m64n64k16.f32.bf16.bf16", WG_TAIL16, WG_D32);
        else if (DT == MOE_CUDA_F16)
            WG_MMA(32, "m64n64k16.f32.f16.f16", WG_TAIL16, WG_D32);
        else
            WG_MMA(32, "m64n64k32.f32.e4m3.e4m3", WG_TAIL8, WG_D32);
    } else if (N == 32) {
        if (DT == MOE_CUDA_BF16)
            WG_MMA(16, "m64n32k16.f32.bf16.bf16", WG_TAIL16, WG_D16);
        else if (DT == MOE_CUDA_F16)
            WG_MMA(16, "m64n32k16.f32.f16.f16", WG_TAIL16, WG_D16);
        else
            WG_MMA(16, "m64n32k32.f32.e4m3.e4m3", WG_TAIL8, WG_D16);
    } else {
        if (DT == MOE_CUDA_BF16)
            WG_MMA(8, "m64n16k16.f32.bf16.bf16", WG_TAIL16, WG_D8(0));
        else if (DT == MOE_CUDA_F16)
            WG_MMA(8, "m64n16k16.f32.f16.f16", WG_TAIL16, WG_D8(0));
        else
            WG_MMA(8, "m64n16k32.f32.e4m3.e4m3", WG_TAIL8, WG_D8(0));
    }
#else
    (void)d; (void)da; (void)db;
    __trap();
#endif
}

#endif /* MOE_CUDA_WGMMA_CUH */
