/* Run-time choice of the instruction set the kernels use.
 *
 * The library is built for the baseline CPU; kernels for wider ISAs live in
 * *_avx2.c / *_avx512.c and are only called after the CPU said it has them.
 * The level starts as the best the CPU supports, lowered by the environment
 * variable PAM_ISA=scalar|avx2|avx512 (read once, on first use), and can be
 * changed with pam_cpu_set_isa() so tests and CI exercise every path on one
 * machine. Changing it while kernels run on other threads is not supported.
 *
 * Within the level, which variant of each hot kernel runs is the per-machine
 * choice of kernels/ksel.h. */
#ifndef PAM_KERNELS_CPU_H
#define PAM_KERNELS_CPU_H

#include "pam.h"

/* Ordered: a level implies every lower one. */
typedef enum pam_isa {
    PAM_ISA_SCALAR = 0,
    PAM_ISA_AVX2 = 1,   /* AVX2 + FMA + F16C */
    PAM_ISA_AVX512 = 2, /* AVX-512 F/BW/VL/DQ + VNNI + BF16, on top of AVX2 */
    PAM_ISA_COUNT = 3,
} pam_isa;

/* Best level this CPU supports (ignores PAM_ISA and pam_cpu_set_isa). */
pam_isa pam_cpu_detect(void);
/* Level the kernels use now. */
pam_isa pam_cpu_isa_level(void);
/* Its name: "scalar", "avx2" or "avx512". */
const char *pam_cpu_isa(void);
const char *pam_cpu_isa_name(pam_isa isa);
/* Forces a level by name; NULL or "auto" restores the detected best.
 * PAM_ERR_INVALID for an unknown name, PAM_ERR_UNSUPPORTED if this CPU lacks
 * it (the level is then left unchanged). */
pam_status pam_cpu_set_isa(const char *name);
/* Whether the level was forced (PAM_ISA set to a known level, or
 * pam_cpu_set_isa with a name other than NULL/"auto"): kernels then run that
 * level's variants instead of the per-machine choice. */
int pam_cpu_isa_forced(void);
/* The CPU's model string ("model name" in /proc/cpuinfo, else the CPUID
 * brand string, else "unknown"), whitespace trimmed; static storage. */
const char *pam_cpu_model(void);

#endif
