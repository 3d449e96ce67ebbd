/* Thin wrappers over a tier's ops: the only way callers reach a tier, so a
 * wrapper tier (fault injection) can stand in for any other. */
#include "kv/tier.h"

#include <stdlib.h>

#include "core/status.h"

pam_status pam_tier_alloc(pam_tier *t, uint32_t *slot) { return t->ops->alloc(t->impl, slot); }

void pam_tier_free(pam_tier *t, uint32_t slot) { t->ops->free(t->impl, slot); }

pam_status pam_tier_write(pam_tier *t, uint32_t slot, int32_t off, int32_t n, const float *k, const float *v) {
    return t->ops->write(t->impl, slot, off, n, k, v);
}

pam_status pam_tier_read(pam_tier *t, uint32_t slot, int32_t n, float *k, float *v) {
    return t->ops->read(t->impl, slot, n, k, v);
}

pam_status pam_tier_attend(pam_tier *t, const pam_tier_attn *req) { return t->ops->attend(t->impl, req); }

void pam_tier_stats_get(pam_tier *t, pam_tier_stats *out) { t->ops->stats(t->impl, out); }

void pam_tier_close(pam_tier *t) {
    if (!t) return;
    if (t->ops && t->ops->close) t->ops->close(t->impl);
    free(t);
}
