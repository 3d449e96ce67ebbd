/* kv/sched: the online KV scheduler. Small hand-made placements with known
 * answers, then properties on random inputs: every plan is applied move by
 * move against an independent model of the tiers, which checks that each
 * block is where the move says, is not pinned, and finds a free slot, and
 * that the plan stays within its byte budget. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kv/sched.h"
#include "util/test_util.h"

#define KIB 1024u

static pam_sched_tier mk_tier(uint64_t cap, uint64_t used, uint64_t bytes, double gbps) {
    return (pam_sched_tier){.capacity_blocks = cap, .used_blocks = used, .block_bytes = bytes, .read_gbps = gbps};
}

static pam_sched_block mk_block(uint32_t id, int tier, float imp) {
    return (pam_sched_block){.id = id, .tier = tier, .importance = imp, .pinned = 0};
}

static double max_time(const pam_sched_tier *tiers, int n, const uint64_t *used) {
    double m = 0;
    for (int t = 0; t < n; t++) {
        double x = pam_sched_tier_time(&tiers[t], used[t]);
        if (x > m) m = x;
    }
    return m;
}

/* Applies moves to blocks (tiers[].used_blocks updated too), checking every
 * invariant of kv/sched.c. Blocks are found by id (ids unique). Returns the
 * bytes the moves cost. */
static uint64_t apply_moves(pam_sched_tier *tiers, int n_tiers, pam_sched_block *blocks, size_t n_blocks,
                            const pam_sched_move *moves, size_t n_moves) {
    uint64_t used[PAM_SCHED_MAX_TIERS] = {0};
    for (size_t i = 0; i < n_blocks; i++)
        if (blocks[i].tier >= 0 && blocks[i].tier < n_tiers) used[blocks[i].tier]++;
    for (int t = 0; t < n_tiers; t++)
        if (tiers[t].used_blocks > used[t]) used[t] = tiers[t].used_blocks;
    uint8_t *n_moved = calloc(n_blocks ? n_blocks : 1, 1);
    /* id -> index */
    uint32_t max_id = 0;
    for (size_t i = 0; i < n_blocks; i++)
        if (blocks[i].id > max_id) max_id = blocks[i].id;
    size_t *where = malloc(((size_t)max_id + 1) * sizeof *where);
    for (size_t i = 0; i <= max_id; i++) where[i] = (size_t)-1;
    for (size_t i = 0; i < n_blocks; i++) {
        assert_true(where[blocks[i].id] == (size_t)-1); /* test data: ids unique */
        where[blocks[i].id] = i;
    }
    uint64_t bytes = 0;
    for (size_t m = 0; m < n_moves; m++) {
        const pam_sched_move *mv = &moves[m];
        assert_true(mv->id <= max_id);
        size_t i = where[mv->id];
        assert_true(i != (size_t)-1);
        pam_sched_block *b = &blocks[i];
        assert_false(b->pinned);
        assert_int_equal(b->tier, mv->from);
        assert_true(mv->to >= 0 && mv->to < n_tiers && mv->to != mv->from);
        /* the destination has a free slot when the block arrives */
        assert_true(used[mv->to] < tiers[mv->to].capacity_blocks);
        assert_true(used[mv->from] > 0);
        /* at most twice, and only as the cold block of a rotation */
        assert_true(n_moved[i] < 2);
        if (n_moved[i] == 1) {
            assert_true(m >= 2);
            assert_int_equal(moves[m - 2].id, mv->id);
            assert_int_equal(moves[m - 1].to, moves[m - 2].from);
        }
        n_moved[i]++;
        used[mv->from]--;
        used[mv->to]++;
        b->tier = mv->to;
        bytes += pam_sched_move_bytes(tiers, mv->from, mv->to);
    }
    for (int t = 0; t < n_tiers; t++) tiers[t].used_blocks = used[t];
    free(where);
    free(n_moved);
    return bytes;
}

static size_t plan(const pam_sched_tier *tiers, int n_tiers, const pam_sched_block *blocks, size_t n_blocks,
                   uint64_t budget, pam_sched_move *moves, size_t cap) {
    return pam_sched_plan(tiers, n_tiers, blocks, n_blocks, budget, moves, cap);
}

/* ---- hand-made cases ---------------------------------------------------- */

static void test_capacity_moves_coldest_down(void **state) {
    /* tier 0 holds 4 blocks but may hold only 2: the two coldest go to
     * tier 1 (nearest slower tier with room), not to tier 2. */
    pam_sched_tier tiers[3] = {mk_tier(2, 4, 32 * KIB, 20), mk_tier(10, 1, 32 * KIB, 10), mk_tier(100, 0, 32 * KIB, 2)};
    pam_sched_block blocks[5] = {mk_block(10, 0, 0.5f), mk_block(11, 0, 0.1f), mk_block(12, 0, 0.9f),
                                 mk_block(13, 0, 0.3f), mk_block(14, 1, 0.0f)};
    pam_sched_move moves[16];
    size_t n = plan(tiers, 3, blocks, 5, 1ull << 30, moves, 16);
    assert_true(n >= 2);
    assert_int_equal(moves[0].id, 11);
    assert_int_equal(moves[0].from, 0);
    assert_int_equal(moves[0].to, 1);
    assert_int_equal(moves[1].id, 13);
    assert_int_equal(moves[1].to, 1);
    apply_moves(tiers, 3, blocks, 5, moves, n);
    assert_int_equal(tiers[0].used_blocks, 2);
    /* the hot ones stayed */
    assert_int_equal(blocks[0].tier, 0);
    assert_int_equal(blocks[2].tier, 0);
}

static void test_capacity_moves_up_when_nothing_below_has_room(void **state) {
    pam_sched_tier tiers[2] = {mk_tier(8, 2, 32 * KIB, 20), mk_tier(2, 3, 32 * KIB, 2)};
    pam_sched_block blocks[5] = {mk_block(1, 0, 1), mk_block(2, 0, 1), mk_block(3, 1, 0.2f), mk_block(4, 1, 0.7f),
                                 mk_block(5, 1, 0.4f)};
    pam_sched_move moves[16];
    size_t n = plan(tiers, 2, blocks, 5, 1ull << 30, moves, 16);
    assert_true(n >= 1);
    /* the hottest block of the overfull slow tier goes up */
    assert_int_equal(moves[0].id, 4);
    assert_int_equal(moves[0].from, 1);
    assert_int_equal(moves[0].to, 0);
    apply_moves(tiers, 2, blocks, 5, moves, n);
    assert_true(tiers[1].used_blocks <= 2);
}

static void test_swap_hot_into_fastest(void **state) {
    /* tier 0 full with a cold block; a much hotter one sits in tier 1. */
    pam_sched_tier tiers[2] = {mk_tier(2, 2, 32 * KIB, 20), mk_tier(10, 3, 32 * KIB, 2)};
    pam_sched_block blocks[5] = {mk_block(1, 0, 0.1f), mk_block(2, 0, 0.5f), mk_block(3, 1, 0.9f),
                                 mk_block(4, 1, 0.05f), mk_block(5, 1, 0.3f)};
    pam_sched_move moves[16];
    size_t n = plan(tiers, 2, blocks, 5, 1ull << 30, moves, 16);
    /* 0.1 <-> 0.9, then 0.3 vs 0.5: no (0.3 is colder) */
    assert_int_equal(n, 2);
    assert_int_equal(moves[0].id, 1);
    assert_int_equal(moves[0].from, 0);
    assert_int_equal(moves[0].to, 1);
    assert_int_equal(moves[1].id, 3);
    assert_int_equal(moves[1].from, 1);
    assert_int_equal(moves[1].to, 0);
    apply_moves(tiers, 2, blocks, 5, moves, n);
    /* A second plan on the result is empty: nothing left to improve. */
    assert_int_equal(plan(tiers, 2, blocks, 5, 1ull << 30, moves, 16), 0);
}

static void test_hysteresis(void **state) {
    pam_sched_tier tiers[2] = {mk_tier(1, 1, 32 * KIB, 20), mk_tier(10, 1, 32 * KIB, 2)};
    pam_sched_block blocks[2] = {mk_block(1, 0, 1.0f), mk_block(2, 1, 1.05f)};
    pam_sched_move moves[4];
    assert_int_equal(plan(tiers, 2, blocks, 2, 1ull << 30, moves, 4), 0);
    blocks[1].importance = 1.2f;
    assert_int_equal(plan(tiers, 2, blocks, 2, 1ull << 30, moves, 4), 2);
    /* equal zeros never swap */
    blocks[0].importance = 0;
    blocks[1].importance = 0;
    assert_int_equal(plan(tiers, 2, blocks, 2, 1ull << 30, moves, 4), 0);
}

static void test_fill_fastest_with_room_hottest_first(void **state) {
    /* tier 0 has room for 2; tier 2 (slowest finishing) gives its hottest
     * blocks to tier 0, the fastest tier with room, before tier 1. */
    pam_sched_tier tiers[3] = {mk_tier(3, 1, 32 * KIB, 20), mk_tier(10, 0, 32 * KIB, 10), mk_tier(100, 4, 32 * KIB, 1)};
    pam_sched_block blocks[5] = {mk_block(1, 0, 5), mk_block(2, 2, 0.1f), mk_block(3, 2, 0.8f), mk_block(4, 2, 0.4f),
                                 mk_block(5, 2, 0.2f)};
    pam_sched_move moves[16];
    size_t n = plan(tiers, 3, blocks, 5, 1ull << 30, moves, 16);
    assert_true(n >= 2);
    assert_int_equal(moves[0].id, 3);
    assert_int_equal(moves[0].to, 0);
    assert_int_equal(moves[1].id, 4);
    assert_int_equal(moves[1].to, 0);
    uint64_t before_used[3] = {1, 0, 4};
    double before = max_time(tiers, 3, before_used);
    apply_moves(tiers, 3, blocks, 5, moves, n);
    uint64_t after_used[3] = {tiers[0].used_blocks, tiers[1].used_blocks, tiers[2].used_blocks};
    assert_true(max_time(tiers, 3, after_used) < before);
    assert_int_equal(tiers[0].used_blocks, 3);
    /* the rest are balanced between tiers 1 and 2: 10 GB/s vs 1 GB/s, so
     * tier 1 takes them too */
    assert_int_equal(tiers[2].used_blocks, 0);
}

static void test_fill_stops_at_balance(void **state) {
    /* Two tiers of equal bandwidth with plenty of room: filling stops when
     * moving one more block would not lower the slower one's time. */
    pam_sched_tier tiers[2] = {mk_tier(100, 0, 32 * KIB, 10), mk_tier(100, 10, 32 * KIB, 10)};
    pam_sched_block blocks[10];
    for (uint32_t i = 0; i < 10; i++) blocks[i] = mk_block(i, 1, (float)i);
    pam_sched_move moves[32];
    size_t n = plan(tiers, 2, blocks, 10, 1ull << 30, moves, 32);
    assert_int_equal(n, 5);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(moves[i].id, 9 - i); /* hottest first */
        assert_int_equal(moves[i].to, 0);
    }
    /* A tier 4x faster takes 4 of every 5 blocks. */
    tiers[0].read_gbps = 40;
    n = plan(tiers, 2, blocks, 10, 1ull << 30, moves, 32);
    assert_int_equal(n, 8);
}

static void test_pinned_never_move(void **state) {
    pam_sched_tier tiers[2] = {mk_tier(1, 3, 32 * KIB, 20), mk_tier(10, 1, 32 * KIB, 2)};
    pam_sched_block blocks[4] = {mk_block(1, 0, 0.1f), mk_block(2, 0, 0.2f), mk_block(3, 0, 0.9f),
                                 mk_block(4, 1, 100.f)};
    blocks[0].pinned = 1;
    blocks[3].pinned = 1;
    pam_sched_move moves[16];
    size_t n = plan(tiers, 2, blocks, 4, 1ull << 30, moves, 16);
    /* capacity: two of the three must leave; 1 is pinned, so 2 and 3 go; the
     * pinned hot block 4 never comes up. */
    assert_int_equal(n, 2);
    assert_int_equal(moves[0].id, 2);
    assert_int_equal(moves[1].id, 3);
    apply_moves(tiers, 2, blocks, 4, moves, n);
    assert_int_equal(blocks[0].tier, 0);
    assert_int_equal(blocks[3].tier, 1);
}

static void test_budget_and_cap(void **state) {
    /* 10 blocks to fill into tier 0; each move costs 2 * 4 KiB. */
    pam_sched_tier tiers[2] = {mk_tier(10, 0, 4 * KIB, 100), mk_tier(100, 10, 4 * KIB, 1)};
    pam_sched_block blocks[10];
    for (uint32_t i = 0; i < 10; i++) blocks[i] = mk_block(i, 1, (float)i);
    pam_sched_move moves[32];
    assert_int_equal(pam_sched_move_bytes(tiers, 1, 0), 8 * KIB);
    assert_int_equal(plan(tiers, 2, blocks, 10, 1ull << 30, moves, 32), 10);
    assert_int_equal(plan(tiers, 2, blocks, 10, 24 * KIB, moves, 32), 3);
    assert_int_equal(plan(tiers, 2, blocks, 10, 24 * KIB - 1, moves, 32), 2);
    assert_int_equal(plan(tiers, 2, blocks, 10, 0, moves, 32), 0);
    assert_int_equal(plan(tiers, 2, blocks, 10, 1ull << 30, moves, 4), 4);
    assert_int_equal(moves[0].id, 9);
    assert_int_equal(moves[3].id, 6);
    /* A swap needs two moves and both must fit. */
    pam_sched_tier t2[2] = {mk_tier(1, 1, 4 * KIB, 100), mk_tier(100, 1, 4 * KIB, 1)};
    pam_sched_block b2[2] = {mk_block(1, 0, 0), mk_block(2, 1, 1)};
    assert_int_equal(plan(t2, 2, b2, 2, 16 * KIB, moves, 1), 0);
    assert_int_equal(plan(t2, 2, b2, 2, 16 * KIB - 1, moves, 4), 0);
    assert_int_equal(plan(t2, 2, b2, 2, 16 * KIB, moves, 2), 2);
}

static void test_rotation_between_full_tiers(void **state) {
    /* dram and dramq full, ssd with room: a hot block in dramq reaches dram
     * by rotating dram's cold block through ssd into dramq. Counts stay. */
    pam_sched_tier tiers[3] = {mk_tier(2, 2, 32 * KIB, 20), mk_tier(2, 2, 16 * KIB, 20), mk_tier(100, 1, 32 * KIB, 2)};
    pam_sched_block blocks[5] = {mk_block(1, 0, 0.1f), mk_block(2, 0, 0.6f), mk_block(3, 1, 0.9f),
                                 mk_block(4, 1, 0.2f), mk_block(5, 2, 0.0f)};
    pam_sched_move moves[16];
    size_t n = plan(tiers, 3, blocks, 5, 1ull << 30, moves, 16);
    assert_int_equal(n, 3);
    assert_int_equal(moves[0].id, 1);
    assert_int_equal(moves[0].to, 2);
    assert_int_equal(moves[1].id, 3);
    assert_int_equal(moves[1].to, 0);
    assert_int_equal(moves[2].id, 1);
    assert_int_equal(moves[2].from, 2);
    assert_int_equal(moves[2].to, 1);
    apply_moves(tiers, 3, blocks, 5, moves, n);
    assert_int_equal(tiers[0].used_blocks, 2);
    assert_int_equal(tiers[1].used_blocks, 2);
    assert_int_equal(tiers[2].used_blocks, 1);
    /* all full: nothing can move */
    tiers[2].capacity_blocks = 1;
    blocks[1].importance = 0;
    blocks[3].importance = 5;
    assert_int_equal(plan(tiers, 3, blocks, 5, 1ull << 30, moves, 16), 0);
}

static void test_bad_inputs(void **state) {
    pam_sched_tier tiers[2] = {mk_tier(1, 3, 32 * KIB, 20), mk_tier(10, 0, 32 * KIB, 2)};
    pam_sched_block blocks[3] = {mk_block(1, 0, NAN), mk_block(2, 0, 1), mk_block(3, 7, 9)};
    pam_sched_move moves[8];
    assert_int_equal(pam_sched_plan(tiers, 0, blocks, 3, 1ull << 30, moves, 8), 0);
    assert_int_equal(pam_sched_plan(tiers, PAM_SCHED_MAX_TIERS + 1, blocks, 3, 1ull << 30, moves, 8), 0);
    assert_int_equal(pam_sched_plan(NULL, 2, blocks, 3, 1ull << 30, moves, 8), 0);
    assert_int_equal(pam_sched_plan(tiers, 2, NULL, 3, 1ull << 30, moves, 8), 0);
    assert_int_equal(pam_sched_plan(tiers, 2, blocks, 3, 1ull << 30, moves, 0), 0);
    assert_int_equal(pam_sched_plan(tiers, 2, blocks, 0, 1ull << 30, moves, 8), 0);
    /* tier 0 counts 3 used (one unlisted): two must go; the NaN block counts
     * as importance 0 and goes first; block 3 (tier 7) is ignored. */
    size_t n = pam_sched_plan(tiers, 2, blocks, 3, 1ull << 30, moves, 8);
    assert_int_equal(n, 2);
    assert_int_equal(moves[0].id, 1);
    assert_int_equal(moves[1].id, 2);
    /* A bandwidth of 0 counts as very slow, not as a division by zero. */
    pam_sched_tier z = mk_tier(1, 1, 1000, 0);
    double tz = pam_sched_tier_time(&z, 1);
    assert_true(isfinite(tz) && tz > 0);
}

/* ---- properties on random inputs ---------------------------------------- */

typedef struct rand_case {
    int n_tiers;
    pam_sched_tier tiers[4];
    pam_sched_block *blocks;
    size_t n_blocks;
    uint64_t budget;
} rand_case;

/* Random tiers and placement; blocks get unique shuffled ids. With
 * over_capacity 0 every tier starts within its capacity. */
static void rand_case_make(rand_case *c, pam_test_rng *r, size_t max_blocks, int over_capacity, int pinned) {
    c->n_tiers = 1 + (int)(pam_test_rng_u64(r) % 4);
    c->n_blocks = (size_t)(pam_test_rng_u64(r) % (max_blocks + 1));
    c->blocks = calloc(c->n_blocks ? c->n_blocks : 1, sizeof *c->blocks);
    uint64_t counted[4] = {0};
    for (size_t i = 0; i < c->n_blocks; i++) {
        int t = (int)(pam_test_rng_u64(r) % (uint64_t)c->n_tiers);
        float imp;
        switch (pam_test_rng_u64(r) % 4) {
        case 0: imp = 0; break;
        case 1: imp = (float)(pam_test_rng_u64(r) % 4) * 0.25f; break; /* many ties */
        default: imp = (float)pam_test_rng_uniform(r, 0, 1); break;
        }
        c->blocks[i] = (pam_sched_block){.id = (uint32_t)i, .tier = t, .importance = imp,
                                         .pinned = pinned && pam_test_rng_u64(r) % 8 == 0};
        counted[t]++;
    }
    /* shuffle ids so that ids and input order disagree */
    for (size_t i = c->n_blocks; i > 1; i--) {
        size_t j = pam_test_rng_u64(r) % i;
        uint32_t tmp = c->blocks[i - 1].id;
        c->blocks[i - 1].id = c->blocks[j].id;
        c->blocks[j].id = tmp;
    }
    static const uint64_t sizes[3] = {32 * KIB, 16 * KIB, 8 * KIB};
    for (int t = 0; t < c->n_tiers; t++) {
        uint64_t used = counted[t] + (pam_test_rng_u64(r) % 3 == 0 ? pam_test_rng_u64(r) % 4 : 0);
        uint64_t cap = used + pam_test_rng_u64(r) % (c->n_blocks / 2 + 3);
        if (over_capacity && pam_test_rng_u64(r) % 3 == 0) cap = used / 2;
        c->tiers[t] = mk_tier(cap, used, sizes[pam_test_rng_u64(r) % 3], pam_test_rng_uniform(r, 0.5, 50));
    }
    c->budget = pam_test_rng_u64(r) % 4 == 0 ? (uint64_t)-1 : pam_test_rng_u64(r) % (64 * 64 * KIB);
}

static void test_random_properties(void **state) {
    pam_test_rng r = {.s = 42};
    pam_sched_move *moves = malloc(4096 * sizeof *moves), *moves2 = malloc(4096 * sizeof *moves2);
    size_t total_moves = 0;
    for (int it = 0; it < 3000; it++) {
        rand_case c;
        int over = it % 2;
        rand_case_make(&c, &r, 200, over, it % 3 != 0);
        size_t cap = pam_test_rng_u64(&r) % 3 == 0 ? (size_t)(pam_test_rng_u64(&r) % 8) : 4096;
        size_t n = plan(c.tiers, c.n_tiers, c.blocks, c.n_blocks, c.budget, moves, cap ? cap : 1);
        assert_true(n <= (cap ? cap : 1));
        total_moves += n;

        /* deterministic, and independent of input order */
        pam_sched_block *shuffled = malloc((c.n_blocks ? c.n_blocks : 1) * sizeof *shuffled);
        memcpy(shuffled, c.blocks, c.n_blocks * sizeof *shuffled);
        for (size_t i = c.n_blocks; i > 1; i--) {
            size_t j = pam_test_rng_u64(&r) % i;
            pam_sched_block tmp = shuffled[i - 1];
            shuffled[i - 1] = shuffled[j];
            shuffled[j] = tmp;
        }
        size_t n2 = plan(c.tiers, c.n_tiers, shuffled, c.n_blocks, c.budget, moves2, cap ? cap : 1);
        assert_int_equal(n2, n);
        assert_memory_equal(moves2, moves, n * sizeof *moves);
        free(shuffled);

        uint64_t used0[4];
        int within = 1;
        for (int t = 0; t < c.n_tiers; t++) {
            used0[t] = c.tiers[t].used_blocks;
            if (used0[t] > c.tiers[t].capacity_blocks) within = 0;
        }
        double before = max_time(c.tiers, c.n_tiers, used0);
        uint64_t bytes = apply_moves(c.tiers, c.n_tiers, c.blocks, c.n_blocks, moves, n);
        assert_true(bytes <= c.budget);
        uint64_t used1[4];
        for (int t = 0; t < c.n_tiers; t++) {
            used1[t] = c.tiers[t].used_blocks;
            /* a tier within capacity stays within; an overfull one only shrinks */
            if (used0[t] <= c.tiers[t].capacity_blocks)
                assert_true(used1[t] <= c.tiers[t].capacity_blocks);
            else
                assert_true(used1[t] <= used0[t]);
        }
        if (within) assert_true(max_time(c.tiers, c.n_tiers, used1) <= before);
        free(c.blocks);
    }
    assert_true(total_moves > 1000); /* the properties were exercised */
    free(moves);
    free(moves2);
}

static void test_random_capacity_restored(void **state) {
    /* No pinned blocks, total capacity suffices, unlimited budget: one plan
     * brings every tier within capacity. */
    pam_test_rng r = {.s = 7};
    pam_sched_move *moves = malloc(8192 * sizeof *moves);
    int exercised = 0;
    for (int it = 0; it < 1000; it++) {
        rand_case c;
        rand_case_make(&c, &r, 300, 1, 0);
        uint64_t cap = 0, used = 0;
        int over = 0;
        for (int t = 0; t < c.n_tiers; t++) {
            cap += c.tiers[t].capacity_blocks;
            used += c.tiers[t].used_blocks;
            over |= c.tiers[t].used_blocks > c.tiers[t].capacity_blocks;
        }
        /* unlisted blocks cannot move: keep cases where listed ones suffice */
        int listed_ok = 1;
        uint64_t counted[4] = {0};
        for (size_t i = 0; i < c.n_blocks; i++) counted[c.blocks[i].tier]++;
        for (int t = 0; t < c.n_tiers; t++)
            if (c.tiers[t].used_blocks - counted[t] > c.tiers[t].capacity_blocks) listed_ok = 0;
        if (cap >= used && listed_ok) {
            size_t n = plan(c.tiers, c.n_tiers, c.blocks, c.n_blocks, (uint64_t)-1, moves, 8192);
            apply_moves(c.tiers, c.n_tiers, c.blocks, c.n_blocks, moves, n);
            for (int t = 0; t < c.n_tiers; t++) assert_true(c.tiers[t].used_blocks <= c.tiers[t].capacity_blocks);
            exercised += over;
        }
        free(c.blocks);
    }
    assert_true(exercised > 50);
    free(moves);
}

/* Over several steps with a small budget, the hottest blocks end up in tier
 * 0, then the plan goes quiet. */
static void test_converges_hottest_in_fastest(void **state) {
    pam_test_rng r = {.s = 99};
    enum { N = 400, K = 50 };
    pam_sched_move moves[64];
    for (int rep = 0; rep < 20; rep++) {
        pam_sched_tier tiers[3] = {mk_tier(K, 0, 32 * KIB, 20), mk_tier(150, 0, 16 * KIB, 15),
                                   mk_tier(1000, 0, 32 * KIB, 2)};
        pam_sched_block blocks[N];
        /* ids 0..K-1 are hot, in [10, 20); the rest cold, in [0, 1) */
        int n_in[3] = {0};
        for (uint32_t i = 0; i < N; i++) {
            int t;
            do t = (int)(pam_test_rng_u64(&r) % 3);
            while ((uint64_t)n_in[t] >= tiers[t].capacity_blocks);
            n_in[t]++;
            float imp = i < K ? (float)pam_test_rng_uniform(&r, 10, 20) : (float)pam_test_rng_uniform(&r, 0, 1);
            blocks[i] = mk_block(i, t, imp);
        }
        for (int t = 0; t < 3; t++) tiers[t].used_blocks = (uint64_t)n_in[t];
        int steps = 0;
        for (; steps < 200; steps++) {
            size_t n = plan(tiers, 3, blocks, N, 8 * 64 * KIB, moves, 64);
            if (n == 0) break;
            apply_moves(tiers, 3, blocks, N, moves, n);
        }
        assert_true(steps < 200);
        for (uint32_t i = 0; i < K; i++) assert_int_equal(blocks[i].tier, 0);
        /* and the next-hottest fill the middle tier in order: every block in
         * tier 1 is at least as hot (within the margin) as any in tier 2 */
        float min1 = INFINITY, max2 = 0;
        for (uint32_t i = K; i < N; i++) {
            if (blocks[i].tier == 1 && blocks[i].importance < min1) min1 = blocks[i].importance;
            if (blocks[i].tier == 2 && blocks[i].importance > max2) max2 = blocks[i].importance;
        }
        assert_true(max2 <= min1 * 1.1f + 1e-6f);
    }
}

static void test_large(void **state) {
    /* 100k blocks: the plan keeps its invariants at that size (and is
     * O(n log n): this runs in milliseconds). */
    enum { N = 100000 };
    pam_test_rng r = {.s = 5};
    pam_sched_tier tiers[3] = {mk_tier(20000, 0, 32 * KIB, 20), mk_tier(30000, 0, 16 * KIB, 18),
                               mk_tier(200000, 0, 32 * KIB, 2)};
    pam_sched_block *blocks = malloc(N * sizeof *blocks);
    for (uint32_t i = 0; i < N; i++) {
        int t = i < 20000 ? 0 : i < 50000 ? 1 : 2;
        blocks[i] = mk_block(i, t, (float)pam_test_rng_uniform(&r, 0, 1));
        tiers[t].used_blocks++;
    }
    tiers[0].capacity_blocks = 15000; /* lowered: 5000 must leave */
    size_t cap = 20000;
    pam_sched_move *moves = malloc(cap * sizeof *moves);
    size_t n = plan(tiers, 3, blocks, N, 1ull << 30, moves, cap);
    uint64_t bytes = apply_moves(tiers, 3, blocks, N, moves, n);
    assert_true(bytes <= 1ull << 30);
    assert_true(tiers[0].used_blocks <= 15000);
    assert_true(n >= 5000);
    free(moves);
    free(blocks);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_capacity_moves_coldest_down),
        cmocka_unit_test(test_capacity_moves_up_when_nothing_below_has_room),
        cmocka_unit_test(test_swap_hot_into_fastest),
        cmocka_unit_test(test_hysteresis),
        cmocka_unit_test(test_fill_fastest_with_room_hottest_first),
        cmocka_unit_test(test_fill_stops_at_balance),
        cmocka_unit_test(test_pinned_never_move),
        cmocka_unit_test(test_budget_and_cap),
        cmocka_unit_test(test_rotation_between_full_tiers),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_random_properties),
        cmocka_unit_test(test_random_capacity_restored),
        cmocka_unit_test(test_converges_hottest_in_fastest),
        cmocka_unit_test(test_large),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
