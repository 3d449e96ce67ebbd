/* kv/ksum: the key-summary score bound is a true upper bound of q·k over
 * every key the summary covers (property test on random data with tails,
 * zero and sign-flipping channels, many head sizes), it is attained at the
 * summary's corner, and an empty summary bounds nothing. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kv/ksum.h"
#include "util/test_util.h"

/* Heavy-tailed values: mostly normal, sometimes 100x larger, sometimes 0. */
static float draw(pam_test_rng *r) {
    double u = pam_test_rng_uniform(r, 0, 1);
    double x = pam_test_rng_normal(r);
    if (u < 0.05) return 0.0f;
    if (u < 0.10) return (float)(x * 100.0);
    if (u < 0.12) return (float)(x * 1e-4);
    return (float)x;
}

static double dot_d(const float *q, const float *k, int n) {
    double s = 0;
    for (int c = 0; c < n; c++) s += (double)q[c] * (double)k[c];
    return s;
}

static long double dot_ld(const float *q, const float *k, int n, long double *abs_sum) {
    long double s = 0, a = 0;
    for (int c = 0; c < n; c++) {
        long double t = (long double)q[c] * (long double)k[c];
        s += t;
        a += fabsl(t);
    }
    *abs_sum = a;
    return s;
}

static void test_bound_is_upper_bound(void **state) {
    (void)state;
    pam_test_rng r = {0x5eed1234};
    static const int dims[] = {1, 2, 3, 8, 16, 31, 64, 128};
    enum { MAXD = 128, MAXROWS = 64, MAXQ = 8 };
    float k[MAXROWS * MAXD], q[MAXQ * MAXD], mn[MAXD], mx[MAXD];
    long n_checks = 0;
    for (int trial = 0; trial < 4000; trial++) {
        int hd = dims[trial % 8];
        int rows = 1 + (int)(pam_test_rng_u64(&r) % MAXROWS);
        int nq = 1 + (int)(pam_test_rng_u64(&r) % MAXQ);
        /* some trials: keys in a narrow band around a per-channel offset, as
         * real keys are (the bound is then tight and rounding matters) */
        int banded = trial % 3 == 0;
        float off[MAXD];
        for (int c = 0; c < hd; c++) off[c] = draw(&r);
        for (int i = 0; i < rows * hd; i++) k[i] = banded ? off[i % hd] + 1e-3f * draw(&r) : draw(&r);
        for (int i = 0; i < nq * hd; i++) q[i] = draw(&r);
        pam_ksum_reset(mn, mx, hd);
        for (int i = 0; i < rows; i++) pam_ksum_add(mn, mx, k + (size_t)i * hd, hd);
        float gb = pam_ksum_bound_group(q, nq, mn, mx, hd);
        float gmax = -INFINITY;
        for (int h = 0; h < nq; h++) {
            const float *qh = q + (size_t)h * hd;
            float b = pam_ksum_bound(qh, mn, mx, hd);
            if (b > gmax) gmax = b;
            for (int i = 0; i < rows; i++) {
                const float *ki = k + (size_t)i * hd;
                double d = dot_d(qh, ki, hd);
                if (!((double)b >= d)) fail_msg("trial %d: bound %.9g < dot %.17g (hd %d)", trial, b, d, hd);
                long double a;
                long double e = dot_ld(qh, ki, hd, &a);
                if (!((long double)b >= e - 1e-12L * a)) fail_msg("trial %d: bound below the exact dot", trial);
                /* the float dot a kernel computes, in channel order */
                float fd = 0;
                for (int c = 0; c < hd; c++) fd += qh[c] * ki[c];
                double fa = 0;
                for (int c = 0; c < hd; c++) fa += fabs((double)qh[c] * ki[c]);
                if (!((double)b >= (double)fd - 1e-5 * fa)) fail_msg("trial %d: bound far below the float dot", trial);
                n_checks++;
            }
            /* tight: the corner key (max where q > 0, min elsewhere) attains it */
            float corner[MAXD];
            for (int c = 0; c < hd; c++) corner[c] = qh[c] > 0 ? mx[c] : mn[c];
            double dc = dot_d(qh, corner, hd);
            double scale_abs = 0;
            for (int c = 0; c < hd; c++) scale_abs += fabs((double)qh[c] * corner[c]);
            assert_true((double)b - dc <= 1e-6 * scale_abs + 1e-30);
        }
        assert_true(gb == gmax);
    }
    assert_true(n_checks > 100000);
}

static void test_single_key_is_exact(void **state) {
    (void)state;
    pam_test_rng r = {42};
    float k[64], q[64], mn[64], mx[64];
    for (int t = 0; t < 200; t++) {
        for (int c = 0; c < 64; c++) k[c] = draw(&r), q[c] = draw(&r);
        pam_ksum_reset(mn, mx, 64);
        pam_ksum_add(mn, mx, k, 64);
        double d = dot_d(q, k, 64);
        float b = pam_ksum_bound(q, mn, mx, 64);
        /* the smallest float >= the double dot */
        assert_true((double)b >= d);
        assert_true((double)nextafterf(b, -INFINITY) < d);
    }
}

static void test_empty_summary(void **state) {
    (void)state;
    float q[4] = {1, -2, 3, 0}, mn[4], mx[4];
    pam_ksum_reset(mn, mx, 4);
    assert_true(isinf(pam_ksum_bound(q, mn, mx, 4)) && pam_ksum_bound(q, mn, mx, 4) < 0);
    float k[4] = {0.5f, 0.5f, -1, 7};
    pam_ksum_add(mn, mx, k, 4);
    assert_true(pam_ksum_bound(q, mn, mx, 4) == -3.5f);
    /* a second key widens the box: the bound grows */
    float k2[4] = {1, -1, 1, -7};
    pam_ksum_add(mn, mx, k2, 4);
    assert_true(mn[3] == -7 && mx[3] == 7 && mn[1] == -1 && mx[1] == 0.5f);
    assert_true(pam_ksum_bound(q, mn, mx, 4) == 1 + 2 + 3 + 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bound_is_upper_bound),
        cmocka_unit_test(test_single_key_is_exact),
        cmocka_unit_test(test_empty_summary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
