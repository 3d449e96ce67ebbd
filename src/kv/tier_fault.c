/* Fault-injecting tier: forwards every operation to an inner tier and fails
 * the chosen one, the nth call (0-based) once, or from then on when the plan
 * is persistent (SQLite-style: tests loop nth over every call). A failed
 * operation does nothing to the inner tier, so the caller's "a failure leaves
 * the old state" promises can be checked against it. Wraps any tier. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/status.h"
#include "kv/tier.h"

typedef struct fault_tier {
    pam_tier *inner;
    pam_fault_plan plan;
    _Atomic uint64_t calls; /* calls of plan.op so far (attend may be concurrent) */
    _Atomic uint64_t n_injected;
} fault_tier;

static int fault_hit(fault_tier *f, pam_fault_op op) {
    if (f->plan.op != op) return 0;
    uint64_t n = atomic_fetch_add(&f->calls, 1);
    int hit = n == f->plan.nth || (f->plan.persistent && n > f->plan.nth);
    if (hit) atomic_fetch_add(&f->n_injected, 1);
    return hit;
}

static pam_status fault_alloc(void *impl, uint32_t *slot) {
    fault_tier *f = impl;
    if (fault_hit(f, PAM_FAULT_ALLOC))
        return PAM_ERR(PAM_ERR_FULL, "%s: injected allocation failure (no space left on device)", f->inner->name);
    return pam_tier_alloc(f->inner, slot);
}

static void fault_free(void *impl, uint32_t slot) {
    fault_tier *f = impl;
    pam_tier_free(f->inner, slot);
}

static pam_status fault_write(void *impl, uint32_t slot, int32_t off, int32_t n, const float *k,
                              const float *v) {
    fault_tier *f = impl;
    if (fault_hit(f, PAM_FAULT_WRITE))
        return PAM_ERR(PAM_ERR_IO, "%s: injected write failure (Input/output error)", f->inner->name);
    return pam_tier_write(f->inner, slot, off, n, k, v);
}

static pam_status fault_read(void *impl, uint32_t slot, int32_t n, float *k, float *v) {
    fault_tier *f = impl;
    if (fault_hit(f, PAM_FAULT_READ))
        return PAM_ERR(PAM_ERR_IO, "%s: injected read failure (Input/output error)", f->inner->name);
    return pam_tier_read(f->inner, slot, n, k, v);
}

static pam_status fault_attend(void *impl, const pam_tier_attn *req) {
    fault_tier *f = impl;
    if (fault_hit(f, PAM_FAULT_ATTEND))
        return PAM_ERR(PAM_ERR_IO, "%s: injected attention read failure (Input/output error)", f->inner->name);
    return pam_tier_attend(f->inner, req);
}

static void fault_stats(void *impl, pam_tier_stats *out) {
    fault_tier *f = impl;
    pam_tier_stats_get(f->inner, out);
    out->n_errors += atomic_load(&f->n_injected);
}

static void fault_close(void *impl) {
    fault_tier *f = impl;
    pam_tier_close(f->inner);
    free(f);
}

/* Hints are not faulted: they cannot fail. */
static void fault_prefetch(void *impl, const pam_tier_block *blocks, int64_t n_blocks) {
    fault_tier *f = impl;
    pam_tier_prefetch(f->inner, blocks, n_blocks);
}

static const pam_tier_ops fault_ops = {
    .kind = "fault",
    .alloc = fault_alloc,
    .free = fault_free,
    .write = fault_write,
    .read = fault_read,
    .attend = fault_attend,
    .stats = fault_stats,
    .close = fault_close,
    .prefetch = fault_prefetch,
};

pam_status pam_tier_fault_wrap(pam_tier *inner, const pam_fault_plan *plan, pam_tier **out) {
    *out = NULL;
    if (!inner || !plan) return PAM_ERR(PAM_ERR_INVALID, "fault wrapper: no inner tier or plan");
    fault_tier *f = calloc(1, sizeof *f);
    pam_tier *t = calloc(1, sizeof *t);
    if (!f || !t) {
        free(f);
        free(t);
        return PAM_ERR(PAM_ERR_NOMEM, "fault wrapper");
    }
    f->inner = inner;
    f->plan = *plan;
    t->ops = &fault_ops;
    t->impl = f;
    snprintf(t->name, sizeof t->name, "fault(%.54s)", inner->name);
    t->capacity_blocks = inner->capacity_blocks;
    t->block_bytes = inner->block_bytes;
    t->read_gbps = inner->read_gbps;
    t->exact = inner->exact;
    t->kv_type = inner->kv_type;
    *out = t;
    return PAM_OK;
}
