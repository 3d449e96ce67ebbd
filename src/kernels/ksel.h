/* Per-machine kernel choice.
 *
 * A hot kernel (a matvec per weight type, attention per KV type, ...) is
 * registered with its variants: implementations of the same contract for
 * different instruction sets or code shapes. The first time a kernel is
 * asked for, the chooser times each variant this CPU can run on a small
 * workload the kernel supplies (a few milliseconds of thread CPU time, best
 * of several rounds, so a busy machine hurts less) and keeps the fastest.
 * Choices are cached per CPU model string in
 * $XDG_CACHE_HOME/pam (else ~/.cache/pam), so later processes on the same
 * kind of machine start without timing; a cache file that cannot be read,
 * written or parsed, or that names a variant this build lacks, is ignored.
 *
 * PAM_ISA (kernels/cpu.h) still decides: with a forced level, the choice is
 * made among that level's variants only (the highest lower level's when it
 * has none), and cached separately from the free choice.
 *
 * Determinism (DESIGN.md §2.9): a choice, once made, is fixed for the life of
 * the process, and it is made under a lock before the kernel's first use, so
 * no output ever sees two variants. Variants of different ISA levels need not
 * give the same bits; the owner of a kernel documents which of its variants
 * do. pam_cpu_set_isa() and pam_ksel_force() switch choices for tests and
 * benchmarks and must not be called while kernels run. */
#ifndef PAM_KERNELS_KSEL_H
#define PAM_KERNELS_KSEL_H

#include "kernels/cpu.h"
#include "pam.h"

typedef struct pam_ksel_variant {
    const char *name; /* unique within its kernel: letters, digits, '_', '.', '-' */
    pam_isa isa;      /* runs only when pam_cpu_detect() >= isa */
    int (*usable)(void); /* a further CPU check, or NULL */
    const void *impl;    /* what the kernel's owner calls; opaque here */
} pam_ksel_variant;

typedef struct pam_ksel_kernel {
    const char *name; /* e.g. "matvec.q8_0"; same character set as variant names */
    const pam_ksel_variant *variants;
    int n_variants; /* >= 1; on a tie the earlier variant wins */
    /* The timing workload: setup returns a context (NULL if it cannot, and
     * then the first usable variant is taken untimed), run calls one variant
     * once on it, teardown frees it. They run on the thread that first asks
     * for the kernel, under the chooser's (recursive) lock; run may use other
     * chosen kernels. */
    void *(*setup)(void);
    void (*run)(void *ctx, const void *impl);
    void (*teardown)(void *ctx);
} pam_ksel_kernel;

#define PAM_KSEL_MAX_KERNELS 64

/* Adds a kernel (k and its variants must outlive the process: static
 * storage). Returns its id (>= 0), the existing id if a kernel of that name
 * is registered already, or a negative pam_status: PAM_ERR_INVALID for a bad
 * description, PAM_ERR_NOMEM when the registry is full. Thread-safe. */
int pam_ksel_register(const pam_ksel_kernel *k);

/* The chosen variant of kernel id for the current ISA setting (chosen now if
 * it was not yet). NULL only for a bad id. Thread-safe; after the first call
 * it is one atomic load. */
const pam_ksel_variant *pam_ksel_choice(int id);

/* Number of registered kernels, and a kernel's name by id (NULL if bad). */
int pam_ksel_count(void);
const char *pam_ksel_name(int id);
/* Id of the kernel of that name, or -1. */
int pam_ksel_find(const char *name);

/* The variants of kernel id (NULL for a bad id or index), and whether this
 * CPU can run one. */
int pam_ksel_n_variants(int id);
const pam_ksel_variant *pam_ksel_variant_at(int id, int i);
int pam_ksel_can_run(const pam_ksel_variant *v);

/* Tests and benchmarks: force the variant of that name for kernel id, for
 * every ISA setting, until pam_ksel_force(id, NULL). PAM_ERR_INVALID for an
 * unknown name, PAM_ERR_UNSUPPORTED if this CPU cannot run it. */
pam_status pam_ksel_force(int id, const char *variant);

/* Tests: forget every choice and the cache's contents, so the next
 * pam_ksel_choice reads the cache again (from the current environment). */
void pam_ksel_forget(void);

/* Where the cache of this CPU lives (a file path), or "" if no directory
 * could be named (no XDG_CACHE_HOME and no HOME). */
const char *pam_ksel_cache_path(void);

/* How the last choice of kernel id was made: "timed", "cached", "forced"
 * (PAM_ISA with a single candidate, or pam_ksel_force) or "" if not yet. */
const char *pam_ksel_how(int id);

#endif
