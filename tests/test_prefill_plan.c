/* engine/prefill: the prompt-budget plan of a step. Simulates the engine's
 * use of it (each item in plan order takes min(remaining, budget left)) over
 * whole bursts of prompts and checks at which step each gets its first
 * token; no timing. */
#include <string.h>

#include "engine/prefill.h"
#include "util/test_util.h"

enum { MAXN = 16 };

/* Runs steps until every prompt is prefilled; first_step[i]: the step
 * (1-based) at which item i's last prompt token ran. Returns the steps. */
static int simulate(pam_prefill_item *it, int32_t n, int32_t chunk, int32_t burst, int *first_step) {
    int32_t order[MAXN];
    int step = 0, left = n;
    for (int32_t i = 0; i < n; i++) first_step[i] = 0;
    while (left > 0) {
        step++;
        pam_prefill_item live[MAXN];
        int32_t map[MAXN], m = 0;
        for (int32_t i = 0; i < n; i++)
            if (it[i].remaining > 0) live[m] = it[i], map[m++] = i;
        int32_t budget = pam_prefill_plan(live, m, chunk, burst, order);
        assert_true(budget >= chunk);
        for (int32_t j = 0; j < m && budget > 0; j++) {
            pam_prefill_item *x = &it[map[order[j]]];
            int32_t take = x->remaining < budget ? x->remaining : budget;
            x->remaining -= take;
            budget -= take;
            if (x->remaining == 0) first_step[map[order[j]]] = step, left--;
        }
        assert_true(step < 1000);
    }
    return step;
}

/* 8 prompts of 48 tokens submitted together, in slots out of admission order. */
static void burst_of_8(pam_prefill_item *it) {
    static const int admit[8] = {5, 2, 8, 1, 7, 3, 6, 4};
    for (int i = 0; i < 8; i++)
        it[i] = (pam_prefill_item){.remaining = 48, .first_pending = 1, .t_submit_ns = 1000, .admit_order = (uint64_t)admit[i]};
}

/* The budget rises to the whole burst (384 tokens <= 2048): one step. */
static void test_burst_in_one_step(void **state) {
    (void)state;
    pam_prefill_item it[8];
    int first[8];
    burst_of_8(it);
    assert_int_equal(simulate(it, 8, 256, 2048, first), 1);
    for (int i = 0; i < 8; i++) assert_int_equal(first[i], 1);
}

/* Without the burst, oldest first and one prompt finished before the next:
 * admitted k-th gets its first token at step ceil(48k / 64), so first
 * tokens are spread over the steps in admission order. */
static void test_oldest_first_spread(void **state) {
    (void)state;
    pam_prefill_item it[8];
    int first[8];
    burst_of_8(it);
    int32_t admit[8];
    for (int i = 0; i < 8; i++) admit[i] = (int32_t)it[i].admit_order;
    assert_int_equal(simulate(it, 8, 64, 0, first), 6);
    for (int i = 0; i < 8; i++) assert_int_equal(first[i], (48 * admit[i] + 63) / 64);
}

/* A bounded burst: 200 tokens in step 1 finish the four oldest, the rest
 * (184 <= 200) finish in step 2. */
static void test_burst_bounded(void **state) {
    (void)state;
    pam_prefill_item it[8];
    int first[8];
    burst_of_8(it);
    assert_int_equal(simulate(it, 8, 64, 200, first), 2);
    for (int i = 0; i < 8; i++) assert_int_equal(first[i], it[i].admit_order <= 4 ? 1 : 2);
}

/* Submit time orders before admission order; refills (tokens already out)
 * come after every first-token waiter in the order given and never raise
 * the budget. */
static void test_order_and_refills(void **state) {
    (void)state;
    pam_prefill_item it[5] = {
        {.remaining = 10, .first_pending = 0, .t_submit_ns = 1, .admit_order = 1},
        {.remaining = 10, .first_pending = 1, .t_submit_ns = 300, .admit_order = 2},
        {.remaining = 10, .first_pending = 1, .t_submit_ns = 200, .admit_order = 9},
        {.remaining = 10, .first_pending = 0, .t_submit_ns = 2, .admit_order = 3},
        {.remaining = 10, .first_pending = 1, .t_submit_ns = 200, .admit_order = 4},
    };
    int32_t order[5];
    assert_int_equal(pam_prefill_plan(it, 5, 4, 100, order), 30);
    static const int32_t want[5] = {4, 2, 1, 0, 3};
    assert_memory_equal(order, want, sizeof want);
    /* refills only: the plain chunk */
    assert_int_equal(pam_prefill_plan(it, 1, 4, 100, order), 4);
    assert_int_equal(order[0], 0);
    /* pending below the chunk, or a burst below the chunk: the chunk */
    assert_int_equal(pam_prefill_plan(it + 1, 1, 16, 100, order), 16);
    assert_int_equal(pam_prefill_plan(it + 1, 4, 4, 2, order), 4);
    assert_int_equal(pam_prefill_plan(it, 0, 4, 100, order), 4);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_in_one_step),
        cmocka_unit_test(test_oldest_first_spread),
        cmocka_unit_test(test_burst_bounded),
        cmocka_unit_test(test_order_and_refills),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
