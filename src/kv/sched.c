/* Online KV scheduler (DESIGN.md §2.5): current placement in, ordered moves out.
 *
 * The plan is built in three phases that share one byte budget and one move
 * array; the first move that would exceed either ends the plan (the next step
 * continues where this one stopped):
 *
 *  1. Capacity. A tier holding more blocks than its capacity (capacities may
 *     be lowered at run time) sends its coldest movable blocks to the nearest
 *     slower tier with room, or, when no slower tier has room, its hottest
 *     ones to the nearest faster tier with room.
 *  2. Fill (balance). Tiers compute concurrently, so a step takes as long as
 *     the slowest-finishing tier, estimated as used_blocks * block_bytes /
 *     read_gbps. While that tier can give a block to a faster tier with room
 *     whose time stays below it, its hottest block moves up, into the fastest
 *     such tier. Blocks never move down for balance, only for capacity.
 *  3. Swap (hottest in fastest). For each tier t from the fastest: while the
 *     hottest block below t is hotter than t's coldest by the hysteresis
 *     margin, the cold block leaves t and the hot block takes its slot. The
 *     cold block goes to the hot block's tier when that has room, else to
 *     another slower tier with room if the estimated step time does not
 *     grow, else it rotates through any tier with a free slot (t->x, then
 *     the hot block s->t, then x->s), which leaves every count as it was.
 *
 * Invariants of every plan (tests/test_sched.c checks them on random inputs):
 *  - applying the moves in order never puts a tier above its capacity at the
 *    moment a block arrives (each destination has a free slot then);
 *  - pinned blocks and blocks whose tier is out of range never move; a block
 *    moves at most once per plan, except the cold block of a rotation, which
 *    moves twice (t->x->s); so plans are finite and have no cycles;
 *  - the summed pam_sched_move_bytes of the moves is at most the budget;
 *  - when no tier starts above capacity, the estimated step time (max over
 *    tiers) after the moves is no greater than before;
 *  - the result depends only on the multiset of (id, tier, importance,
 *    pinned) and the tiers: ties are broken by block id, never by input
 *    order (ids are expected unique; duplicates fall back to input order).
 *
 * Cost: one sort of the movable blocks, O(n log n), then O(n * n_tiers). */
#include "kv/sched.h"

#include <math.h>
#include <stdlib.h>

/* A swap needs the hot block to beat the cold one by this factor and by an
 * absolute margin, so two blocks of similar importance do not trade places
 * on every step as their averages wobble. */
#define SCHED_HYSTERESIS 0.10f
#define SCHED_MIN_GAIN 1e-6f

typedef struct sched_key {
    float imp;
    uint32_t id;
    uint32_t idx; /* position in the caller's array: last tie-break */
    int32_t tier;
} sched_key;

typedef struct sched_plan {
    const pam_sched_tier *tiers;
    int n_tiers;
    sched_key *keys; /* movable blocks sorted by (tier, importance, id, idx) */
    uint8_t *moved;  /* per key */
    size_t lo[PAM_SCHED_MAX_TIERS], hi[PAM_SCHED_MAX_TIERS]; /* unconsumed range of each tier */
    uint64_t used[PAM_SCHED_MAX_TIERS];
    uint64_t budget_left;
    pam_sched_move *moves;
    size_t n_moves, cap;
} sched_plan;

uint64_t pam_sched_move_bytes(const pam_sched_tier *tiers, int from, int to) {
    return tiers[from].block_bytes + tiers[to].block_bytes;
}

double pam_sched_tier_time(const pam_sched_tier *t, uint64_t used_blocks) {
    double gbps = t->read_gbps > 0 ? t->read_gbps : 1e-3; /* unknown or bogus: treat as very slow */
    return (double)used_blocks * (double)t->block_bytes / (gbps * 1e9);
}

static int key_cmp(const void *pa, const void *pb) {
    const sched_key *a = pa, *b = pb;
    if (a->tier != b->tier) return a->tier < b->tier ? -1 : 1;
    if (a->imp != b->imp) return a->imp < b->imp ? -1 : 1;
    if (a->id != b->id) return a->id < b->id ? -1 : 1;
    if (a->idx != b->idx) return a->idx < b->idx ? -1 : 1;
    return 0;
}

/* Same order without the tier: which of two blocks is hotter. */
static int key_hotter(const sched_key *a, const sched_key *b) {
    if (a->imp != b->imp) return a->imp > b->imp;
    if (a->id != b->id) return a->id > b->id;
    return a->idx > b->idx;
}

#define SCHED_NONE ((size_t)-1)

static size_t sched_coldest(sched_plan *p, int t) {
    while (p->lo[t] < p->hi[t] && p->moved[p->lo[t]]) p->lo[t]++;
    return p->lo[t] < p->hi[t] ? p->lo[t] : SCHED_NONE;
}

static size_t sched_hottest(sched_plan *p, int t) {
    while (p->hi[t] > p->lo[t] && p->moved[p->hi[t] - 1]) p->hi[t]--;
    return p->hi[t] > p->lo[t] ? p->hi[t] - 1 : SCHED_NONE;
}

static int sched_has_room(const sched_plan *p, int t) {
    return p->used[t] < p->tiers[t].capacity_blocks;
}

static double sched_time(const sched_plan *p, int t) {
    return pam_sched_tier_time(&p->tiers[t], p->used[t]);
}

static double sched_max_time(const sched_plan *p) {
    double m = 0;
    for (int t = 0; t < p->n_tiers; t++) {
        double x = sched_time(p, t);
        if (x > m) m = x;
    }
    return m;
}

/* Whether n more moves fit the move array and cost more bytes than are left. */
static int sched_affordable(const sched_plan *p, size_t n, uint64_t bytes) {
    return p->n_moves + n <= p->cap && bytes <= p->budget_left;
}

static void sched_emit(sched_plan *p, size_t k, int from, int to) {
    p->moved[k] = 1;
    p->used[from]--;
    p->used[to]++;
    p->budget_left -= pam_sched_move_bytes(p->tiers, from, to);
    p->moves[p->n_moves++] = (pam_sched_move){.id = p->keys[k].id, .from = from, .to = to};
}

/* Phase 1. Returns 0 when the budget or the move array ran out. */
static int sched_capacity(sched_plan *p) {
    for (int t = 0; t < p->n_tiers; t++) {
        while (p->used[t] > p->tiers[t].capacity_blocks) {
            int d = -1;
            for (int x = t + 1; x < p->n_tiers && d < 0; x++)
                if (sched_has_room(p, x)) d = x;
            for (int x = t - 1; x >= 0 && d < 0; x--)
                if (sched_has_room(p, x)) d = x;
            if (d < 0) break;
            size_t k = d > t ? sched_coldest(p, t) : sched_hottest(p, t);
            if (k == SCHED_NONE) break;
            if (!sched_affordable(p, 1, pam_sched_move_bytes(p->tiers, t, d))) return 0;
            sched_emit(p, k, t, d);
        }
    }
    return 1;
}

/* Phase 2. */
static int sched_fill(sched_plan *p) {
    for (;;) {
        int s = 0;
        double ts = sched_time(p, 0);
        for (int t = 1; t < p->n_tiers; t++) {
            double x = sched_time(p, t);
            if (x > ts) ts = x, s = t;
        }
        size_t k = sched_hottest(p, s);
        if (k == SCHED_NONE) return 1;
        int d = -1;
        for (int t = 0; t < s && d < 0; t++)
            if (sched_has_room(p, t) && pam_sched_tier_time(&p->tiers[t], p->used[t] + 1) < ts) d = t;
        if (d < 0) return 1;
        if (!sched_affordable(p, 1, pam_sched_move_bytes(p->tiers, s, d))) return 0;
        sched_emit(p, k, s, d);
    }
}

/* Whether the estimated step time stays within `before` with one block more
 * in tier `plus` and one less in tier `minus`. */
static int sched_time_ok(sched_plan *p, int plus, int minus, double before) {
    p->used[plus]++;
    p->used[minus]--;
    int ok = sched_max_time(p) <= before;
    p->used[plus]--;
    p->used[minus]++;
    return ok;
}

/* Phase 3. */
static int sched_swap(sched_plan *p) {
    for (int t = 0; t + 1 < p->n_tiers; t++) {
        for (;;) {
            size_t c = sched_coldest(p, t);
            if (c == SCHED_NONE) break;
            size_t h = SCHED_NONE;
            int s = -1;
            for (int x = t + 1; x < p->n_tiers; x++) {
                size_t k = sched_hottest(p, x);
                if (k != SCHED_NONE && (h == SCHED_NONE || key_hotter(&p->keys[k], &p->keys[h]))) h = k, s = x;
            }
            if (h == SCHED_NONE) break;
            float ic = p->keys[c].imp, ih = p->keys[h].imp;
            if (!(ih > ic * (1.0f + SCHED_HYSTERESIS) + SCHED_MIN_GAIN)) break;
            /* The cold block must leave t before the hot one can arrive. In
             * order of preference: into the hot block's tier (counts do not
             * change); into another slower tier with room, if the step time
             * does not grow; or a rotation through a tier x with a free slot
             * (cold t->x, hot s->t, cold x->s: counts do not change). */
            double before = sched_max_time(p);
            int d = -1, via = -1;
            if (sched_has_room(p, s)) d = s;
            for (int x = t + 1; x < p->n_tiers && d < 0; x++)
                if (sched_has_room(p, x) && sched_time_ok(p, x, s, before)) d = x;
            for (int x = p->n_tiers - 1; x >= 0 && d < 0 && via < 0; x--)
                if (x != t && x != s && sched_has_room(p, x)) via = x;
            if (d < 0 && via < 0) break;
            uint64_t bytes = pam_sched_move_bytes(p->tiers, s, t);
            if (d >= 0) {
                bytes += pam_sched_move_bytes(p->tiers, t, d);
                if (!sched_affordable(p, 2, bytes)) return 0;
                sched_emit(p, c, t, d);
                sched_emit(p, h, s, t);
            } else {
                bytes += pam_sched_move_bytes(p->tiers, t, via) + pam_sched_move_bytes(p->tiers, via, s);
                if (!sched_affordable(p, 3, bytes)) return 0;
                sched_emit(p, c, t, via);
                sched_emit(p, h, s, t);
                sched_emit(p, c, via, s);
            }
        }
    }
    return 1;
}

size_t pam_sched_plan(const pam_sched_tier *tiers, int n_tiers, const pam_sched_block *blocks,
                      size_t n_blocks, uint64_t budget_bytes, pam_sched_move *moves, size_t cap) {
    if (!tiers || n_tiers <= 0 || n_tiers > PAM_SCHED_MAX_TIERS || (n_blocks && !blocks) || !moves ||
        cap == 0 || n_blocks > UINT32_MAX)
        return 0;
    sched_plan p = {.tiers = tiers, .n_tiers = n_tiers, .budget_left = budget_bytes, .moves = moves, .cap = cap};
    size_t n_movable = 0;
    uint64_t counted[PAM_SCHED_MAX_TIERS] = {0};
    for (size_t i = 0; i < n_blocks; i++) {
        int t = blocks[i].tier;
        if (t < 0 || t >= n_tiers) continue;
        counted[t]++;
        if (!blocks[i].pinned) n_movable++;
    }
    /* The caller's counts may include blocks it did not list (staging,
     * reservations); trust whichever is larger. */
    for (int t = 0; t < n_tiers; t++) p.used[t] = tiers[t].used_blocks > counted[t] ? tiers[t].used_blocks : counted[t];
    if (n_movable == 0) return 0;
    p.keys = malloc(n_movable * sizeof *p.keys);
    p.moved = calloc(n_movable, 1);
    if (!p.keys || !p.moved) {
        /* Planning nothing is always safe: the placement stays valid. */
        free(p.keys);
        free(p.moved);
        return 0;
    }
    size_t n = 0;
    for (size_t i = 0; i < n_blocks; i++) {
        const pam_sched_block *b = &blocks[i];
        if (b->tier < 0 || b->tier >= n_tiers || b->pinned) continue;
        float imp = isnan(b->importance) ? 0.0f : b->importance;
        p.keys[n++] = (sched_key){.imp = imp, .id = b->id, .idx = (uint32_t)i, .tier = b->tier};
    }
    qsort(p.keys, n, sizeof *p.keys, key_cmp);
    for (size_t i = 0, t = 0; t < (size_t)n_tiers; t++) {
        p.lo[t] = i;
        while (i < n && p.keys[i].tier == (int32_t)t) i++;
        p.hi[t] = i;
    }
    if (sched_capacity(&p) && sched_fill(&p)) sched_swap(&p);
    free(p.keys);
    free(p.moved);
    return p.n_moves;
}
