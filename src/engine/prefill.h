/* Prefill planning: which prefilling sequences get a step's prompt budget,
 * in what order, and how large the budget is (docs/SERVING.md, "Time to
 * first token"). A pure function so the rule is testable without timing.
 *
 * Sequences still waiting for their first token come first, oldest submit
 * first (ties: admitted first), and each takes all it can before the next
 * starts, so prompts that arrive together get their first tokens one after
 * another instead of all at the end. Sequences refilling KV after a requeue
 * (they have produced tokens already) follow in the order given. While first
 * tokens wait, the budget rises from chunk to the prompt tokens they still
 * need, at most burst: a burst of prompts then takes a few long steps
 * instead of many steps that each also carry every running sequence's decode
 * token; burst bounds the step time. */
#ifndef PAM_ENGINE_PREFILL_H
#define PAM_ENGINE_PREFILL_H

#include <stdint.h>

typedef struct pam_prefill_item {
    int32_t remaining;    /* prompt tokens still to prefill, > 0 */
    int first_pending;    /* no token produced yet */
    int64_t t_submit_ns;
    uint64_t admit_order;
} pam_prefill_item;

/* Writes the indexes 0..n-1 of items into order[0..n) in planning order and
 * returns the step's prompt budget (chunk >= 1; burst < chunk: chunk). The
 * caller gives each item in turn min(remaining, what is left) until the
 * budget is spent. */
int32_t pam_prefill_plan(const pam_prefill_item *items, int32_t n, int32_t chunk, int32_t burst, int32_t *order);

#endif
