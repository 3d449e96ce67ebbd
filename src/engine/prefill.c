#include "engine/prefill.h"

static int before(const pam_prefill_item *a, const pam_prefill_item *b) {
    if (a->t_submit_ns != b->t_submit_ns) return a->t_submit_ns < b->t_submit_ns;
    return a->admit_order < b->admit_order;
}

int32_t pam_prefill_plan(const pam_prefill_item *items, int32_t n, int32_t chunk, int32_t burst, int32_t *order) {
    int32_t n_first = 0;
    int64_t pending = 0;
    /* insertion sort of the first-token waiters (n is at most the slots) */
    for (int32_t i = 0; i < n; i++) {
        if (!items[i].first_pending) continue;
        int32_t j = n_first++;
        for (; j > 0 && before(&items[i], &items[order[j - 1]]); j--) order[j] = order[j - 1];
        order[j] = i;
        pending += items[i].remaining;
    }
    int32_t k = n_first;
    for (int32_t i = 0; i < n; i++)
        if (!items[i].first_pending) order[k++] = i;
    int32_t budget = chunk;
    if (burst > budget && pending > budget) budget = pending < burst ? (int32_t)pending : burst;
    return budget;
}
