/* The level is one atomic int: -1 until first use, then a pam_isa. Kernels
 * read it with relaxed loads (a stale read only picks another correct path). */
#include "kernels/cpu.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

static atomic_int g_isa = -1;
static atomic_int g_forced = 0;

static const char *const k_isa_names[PAM_ISA_COUNT] = {"scalar", "avx2", "avx512"};

pam_isa pam_cpu_detect(void) {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    __builtin_cpu_init();
    /* clang's __builtin_cpu_supports does not know "f16c": ask CPUID (leaf 1, ECX bit 29). */
    unsigned eax, ebx, ecx = 0, edx;
    int f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29));
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
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
        if (want >= 0) atomic_store(&g_forced, 1);
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
        atomic_store(&g_forced, 0);
        return PAM_OK;
    }
    int want = isa_from_name(name);
    if (want < 0) return PAM_ERR(PAM_ERR_INVALID, "unknown ISA '%s' (scalar, avx2, avx512)", name);
    if (want > (int)best)
        return PAM_ERR(PAM_ERR_UNSUPPORTED, "this CPU does not support %s (best: %s)", name,
                       k_isa_names[best]);
    atomic_store(&g_isa, want);
    atomic_store(&g_forced, 1);
    return PAM_OK;
}

int pam_cpu_isa_forced(void) {
    (void)pam_cpu_isa_level(); /* reads PAM_ISA on first use */
    return atomic_load_explicit(&g_forced, memory_order_relaxed);
}

static char g_model[128];
static pthread_once_t g_model_once = PTHREAD_ONCE_INIT;

static void trim_into(char *dst, size_t cap, const char *s) {
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strcspn(s, "\n");
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r')) n--;
    if (n >= cap) n = cap - 1;
    memcpy(dst, s, n);
    dst[n] = 0;
}

static void read_model(void) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0) continue;
        const char *colon = strchr(line, ':');
        if (colon) trim_into(g_model, sizeof g_model, colon + 1);
        break;
    }
    if (f) fclose(f);
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    unsigned r[12];
    if (!g_model[0] && (unsigned)__get_cpuid_max(0x80000000u, NULL) >= 0x80000004u) {
        for (unsigned i = 0; i < 3; i++) __get_cpuid(0x80000002u + i, &r[4 * i], &r[4 * i + 1], &r[4 * i + 2], &r[4 * i + 3]);
        char brand[49];
        memcpy(brand, r, 48);
        brand[48] = 0;
        trim_into(g_model, sizeof g_model, brand);
    }
#endif
    if (!g_model[0]) strcpy(g_model, "unknown");
}

const char *pam_cpu_model(void) {
    pthread_once(&g_model_once, read_model);
    return g_model;
}
