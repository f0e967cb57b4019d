/*
 * amx.c - whether this process may use Intel AMX tiles (Sapphire Rapids
 * and later) for the CPU kernels that decode weights into bf16 tiles.
 *
 * Two conditions: the build targets AMX (the compiler defines __AMX_TILE__
 * and __AMX_BF16__ under -march=native on such a CPU), and Linux grants
 * the process the tile-data state. The kernel starts every process without
 * it (the 8 KiB of tile registers enlarge each context switch's save
 * area), so it is asked for once with arch_prctl(ARCH_REQ_XCOMP_PERM); a
 * kernel older than 5.16, a hypervisor that hides the feature or a seccomp
 * filter refuses, and the kernels then keep their AVX-512 paths. The
 * answer is fixed for the life of the process, so every call in a process
 * runs the same kernel (the CPU kernels' determinism contract).
 */
#include "cpu-formats.h"

#include <pthread.h>

#if MOE_CPU_AMX
#include <sys/syscall.h>
#include <unistd.h>

/* From the kernel's uapi (asm/prctl.h and the xfeature number of
 * XTILEDATA), which older libc headers lack. */
#define MOE_ARCH_REQ_XCOMP_PERM 0x1023
#define MOE_XFEATURE_XTILEDATA  18

static bool           amx_ok;
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;

static void amx_request(void) {
    amx_ok = syscall(SYS_arch_prctl, MOE_ARCH_REQ_XCOMP_PERM, MOE_XFEATURE_XTILEDATA) == 0;
}

bool moe__cpu_amx_ready(void) {
    pthread_once(&amx_once, amx_request);
    return amx_ok;
}
#else
bool moe__cpu_amx_ready(void) { return false; }
#endif
