/* Online KV scheduler (DESIGN.md §2.5): a pure function from the current
 * placement to a list of moves. It knows each tier's capacity, measured
 * bandwidth and occupancy and each block's importance and size, and
 *  (a) keeps every tier under capacity,
 *  (b) balances per-tier attention time (bytes resident / bandwidth) so the
 *      tiers, which run concurrently, finish together,
 *  (c) keeps the hottest blocks in the fastest tier,
 *  (d) bounds migration traffic per step by a byte budget.
 * No I/O and no state: easy to test and to replay from traces. The only
 * allocation is O(n_blocks) scratch freed before returning; if it fails the
 * plan is empty, which is always safe. kv/sched.c documents the phases and
 * the invariants every plan keeps. */
#ifndef PAM_KV_SCHED_H
#define PAM_KV_SCHED_H

#include <stddef.h>
#include <stdint.h>

#define PAM_SCHED_MAX_TIERS 16

typedef struct pam_sched_tier {
    uint64_t capacity_blocks;
    uint64_t used_blocks;
    uint64_t block_bytes;
    double read_gbps;
} pam_sched_tier;

typedef struct pam_sched_block {
    uint32_t id;      /* caller's block id */
    int tier;         /* current tier index (0 = fastest) */
    float importance; /* EMA of attention mass */
    int pinned;       /* e.g. a partially filled tail block: never moved */
} pam_sched_block;

typedef struct pam_sched_move {
    uint32_t id;
    int from, to;
} pam_sched_move;

/* Writes at most cap moves; returns how many. Moves must be applied in order
 * (earlier ones make room for later ones). Deterministic: ties are broken by
 * block id. The moves' summed pam_sched_move_bytes stays within budget_bytes
 * (0 plans nothing). Blocks whose tier is outside [0, n_tiers) are ignored;
 * a NaN importance counts as 0. n_tiers above PAM_SCHED_MAX_TIERS plans
 * nothing. */
size_t pam_sched_plan(const pam_sched_tier *tiers, int n_tiers, const pam_sched_block *blocks,
                      size_t n_blocks, uint64_t budget_bytes, pam_sched_move *moves, size_t cap);

/* Migration traffic a move costs against the budget: the block is read in
 * the source tier's encoding and written in the destination's. */
uint64_t pam_sched_move_bytes(const pam_sched_tier *tiers, int from, int to);
/* Estimated attention time of a tier holding used_blocks blocks, in seconds:
 * used_blocks * block_bytes / read_gbps (read_gbps <= 0 counts as very slow).
 * Tiers run concurrently, so a step's estimate is the maximum over tiers. */
double pam_sched_tier_time(const pam_sched_tier *t, uint64_t used_blocks);

#endif
