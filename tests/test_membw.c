/* kernels/membw: the read loops sum correctly (reference vs AVX2) and the
 * measurement returns a positive rate; bad arguments are refused. No timing
 * is asserted: speed is the benchmark's business. */
#include <stdlib.h>

#include "kernels/cpu.h"
#include "kernels/membw.h"
#include "util/test_util.h"

static void test_sums_agree(void **state) {
    size_t n = 4096;
    uint64_t *p = aligned_alloc(64, n * sizeof *p);
    pam_test_rng r = {5};
    uint64_t want = 0;
    for (size_t i = 0; i < n; i++) want += (p[i] = pam_test_rng_u64(&r));
    for (size_t len = 0; len <= n; len += 32) {
        uint64_t ref = pam_membw_sum_ref(p, len);
        if (len == n) assert_true(ref == want);
        if (pam_cpu_detect() >= PAM_ISA_AVX2) assert_true(pam_membw_sum_avx2(p, len) == ref);
    }
    free(p);
}

static void test_measure(void **state) {
    for (int nt = 1; nt <= 3; nt++) {
        pam_pool *pool;
        assert_int_equal(pam_pool_create(nt, &pool), PAM_OK);
        double gbps = -1;
        /* An odd size: rounded down to whole pages, chunks of uneven length. */
        assert_int_equal(pam_membw_read_gbps(pool, ((size_t)8 << 20) + 12345, 2, &gbps), PAM_OK);
        assert_true(gbps > 0);
        pam_pool_destroy(pool);
    }
    double gbps = -1;
    assert_int_equal(pam_membw_read_gbps(NULL, (size_t)1 << 20, 1, &gbps), PAM_OK);
    assert_true(gbps > 0);
    assert_int_equal(pam_membw_read_gbps(NULL, (size_t)1 << 20, 0, &gbps), PAM_ERR_INVALID);
    assert_int_equal(pam_membw_read_gbps(NULL, 1000, 1, &gbps), PAM_ERR_INVALID);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_sums_agree), cmocka_unit_test(test_measure)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
