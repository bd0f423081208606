/*
 * kernels.c — the CPU probe that picks one table of kernels (kernels.h).
 *
 * DESIGN
 *   The tables are constant, one per instruction set this build has
 *   (x86-64 with ALLOY_HAVE_AVX2: scalar, AVX2, AVX-512; else scalar). A
 *   table needs: AVX2 and F16C (the conversion rows) for "avx2"; that plus
 *   AVX-512 F, DQ, VL and BW for "avx512". The first alloy_kernels() call
 *   runs the probe under pthread_once, so pool threads never race on it and
 *   nothing is written afterwards. __builtin_cpu_supports is asked at run
 *   time, never at load time (sanitizer runtimes are not ready when ifunc
 *   resolvers run).
 */
#include "kernels/kernels.h"

#include "core/internal.h"

#include <pthread.h>
#if ALLOY_X86_DISPATCH
#include <cpuid.h>
#endif

static const struct alloy_kernels *const g_tables[] = {
    [ALLOY_ISA_SCALAR] = &alloy_kernels_scalar,
#if ALLOY_X86_DISPATCH
    [ALLOY_ISA_AVX2] = &alloy_kernels_avx2,
    [ALLOY_ISA_AVX512] = &alloy_kernels_avx512,
#endif
};

/* Whether this CPU runs table i of g_tables. */
static int cpu_runs(int i)
{
#if ALLOY_X86_DISPATCH
    __builtin_cpu_init();
    unsigned a, b, c, d; /* F16C from CPUID.1:ECX (clang's __builtin_cpu_supports has no "f16c") */
    int avx2 = __builtin_cpu_supports("avx2") && __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
    return i == ALLOY_ISA_SCALAR || (i == ALLOY_ISA_AVX2 && avx2) || (i == ALLOY_ISA_AVX512 && avx512);
#else
    return i == ALLOY_ISA_SCALAR;
#endif
}

const struct alloy_kernels *alloy_kernels_isa(int i)
{
    if (i < 0 || (size_t)i >= ALLOY_ARRAY_LEN(g_tables) || !cpu_runs(i)) return NULL;
    return g_tables[i];
}

static const struct alloy_kernels *g_best = &alloy_kernels_scalar;
static pthread_once_t g_probe = PTHREAD_ONCE_INIT;

static void probe(void)
{
    if (getenv_flag("ALLOY_NO_SIMD")) return;
    for (int i = 0; i < (int)ALLOY_ARRAY_LEN(g_tables); i++)
        if (cpu_runs(i)) g_best = g_tables[i];
}

const struct alloy_kernels *alloy_kernels(void)
{
    pthread_once(&g_probe, probe);
    return g_best;
}
