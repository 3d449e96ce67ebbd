/* The level is one atomic int: -1 until first use, then a pam_isa. Kernels
 * read it with relaxed loads (a stale read only picks another correct path). */
#include "kernels/cpu.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"

static atomic_int g_isa = -1;

static const char *const k_isa_names[PAM_ISA_COUNT] = {"scalar", "avx2", "avx512"};

pam_isa pam_cpu_detect(void) {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    if (!avx2) return PAM_ISA_SCALAR;
    int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                 __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bf16");
    return avx512 ? PAM_ISA_AVX512 : PAM_ISA_AVX2;
#else
    return PAM_ISA_SCALAR;
#endif
}

static int isa_from_name(const char *name) {
    for (int i = 0; i < PAM_ISA_COUNT; i++)
        if (strcmp(name, k_isa_names[i]) == 0) return i;
    return -1;
}

/* PAM_ISA may only lower the level: asking for more than the CPU has would
 * crash on the first kernel, so it is clamped instead. */
static pam_isa initial_level(void) {
    pam_isa best = pam_cpu_detect();
    const char *env = getenv("PAM_ISA");
    if (env && *env) {
        int want = isa_from_name(env);
        if (want >= 0 && want < (int)best) return (pam_isa)want;
    }
    return best;
}

pam_isa pam_cpu_isa_level(void) {
    int v = atomic_load_explicit(&g_isa, memory_order_relaxed);
    if (v < 0) {
        int expected = -1;
        v = (int)initial_level();
        if (!atomic_compare_exchange_strong(&g_isa, &expected, v)) v = expected;
    }
    return (pam_isa)v;
}

const char *pam_cpu_isa_name(pam_isa isa) {
    return (int)isa >= 0 && isa < PAM_ISA_COUNT ? k_isa_names[isa] : "?";
}

const char *pam_cpu_isa(void) { return pam_cpu_isa_name(pam_cpu_isa_level()); }

pam_status pam_cpu_set_isa(const char *name) {
    pam_isa best = pam_cpu_detect();
    if (!name || strcmp(name, "auto") == 0) {
        atomic_store(&g_isa, (int)best);
        return PAM_OK;
    }
    int want = isa_from_name(name);
    if (want < 0) return PAM_ERR(PAM_ERR_INVALID, "unknown ISA '%s' (scalar, avx2, avx512)", name);
    if (want > (int)best)
        return PAM_ERR(PAM_ERR_UNSUPPORTED, "this CPU does not support %s (best: %s)", name,
                       k_isa_names[best]);
    atomic_store(&g_isa, want);
    return PAM_OK;
}
