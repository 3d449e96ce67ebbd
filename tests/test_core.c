/* core/: thread pool, fp16/bf16 conversion, dtype table, error messages. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/fp16.h"
#include "core/status.h"
#include "core/threadpool.h"
#include "kernels/dtype.h"
#include "util/test_util.h"

typedef struct {
    atomic_int hits[1000];
    atomic_int bad_thread;
    int n_threads;
} pool_job;

static void pool_task(void *ctx, int64_t t, int thread) {
    pool_job *j = ctx;
    atomic_fetch_add(&j->hits[t], 1);
    if (thread < 0 || thread >= j->n_threads) atomic_store(&j->bad_thread, 1);
}

static void test_pool_runs_every_task_once(void **state) {
    for (int nt = 1; nt <= 4; nt++) {
        pam_pool *pool;
        assert_int_equal(pam_pool_create(nt, &pool), PAM_OK);
        assert_int_equal(pam_pool_n_threads(pool), nt);
        pool_job *j = calloc(1, sizeof *j);
        j->n_threads = nt;
        for (int rep = 0; rep < 200; rep++) {
            int n = 1 + rep * 5 % 1000;
            for (int i = 0; i < 1000; i++) atomic_store(&j->hits[i], 0);
            pam_pool_run(pool, pool_task, j, n);
            for (int i = 0; i < 1000; i++) assert_int_equal(atomic_load(&j->hits[i]), i < n ? 1 : 0);
        }
        assert_int_equal(atomic_load(&j->bad_thread), 0);
        free(j);
        pam_pool_destroy(pool);
    }
    /* NULL pool runs inline */
    pool_job *j = calloc(1, sizeof *j);
    j->n_threads = 1;
    pam_pool_run(NULL, pool_task, j, 7);
    assert_int_equal(atomic_load(&j->hits[6]), 1);
    free(j);
}

/* Regression: back-to-back jobs whose context lives at the same address
 * with different task counts. A worker that slept through a job must never
 * run a task of the next one with the old job's task count, or run a task
 * after the caller returned. Every task must run exactly once per job. */
typedef struct {
    int id, n;
    atomic_int *hits;
    atomic_int *bad;
} reuse_job;

static void reuse_task(void *ctx, int64_t t, int thread) {
    reuse_job *j = ctx;
    int id = j->id;
    if (t >= j->n || atomic_fetch_add(&j->hits[t], 1) != 0) atomic_fetch_add(j->bad, 1);
    if (j->id != id) atomic_fetch_add(j->bad, 1);
}

static void reuse_one(pam_pool *pool, int id, atomic_int *bad) {
    atomic_int hits[64];
    reuse_job j = {id, 1 + id % 40, hits, bad};
    for (int i = 0; i < 64; i++) atomic_init(&hits[i], 0);
    pam_pool_run(pool, reuse_task, &j, j.n);
    for (int i = 0; i < j.n; i++)
        if (atomic_load(&hits[i]) != 1) atomic_fetch_add(bad, 1);
    j.id = -1;
}

static void test_pool_back_to_back_jobs(void **state) {
    pam_pool *pool;
    assert_int_equal(pam_pool_create(3, &pool), PAM_OK);
    atomic_int bad;
    atomic_init(&bad, 0);
    for (int i = 0; i < 400000; i++) reuse_one(pool, i, &bad);
    assert_int_equal(atomic_load(&bad), 0);
    pam_pool_destroy(pool);
}

static void test_f16_roundtrip_exhaustive(void **state) {
    /* Every finite half converts to float and back unchanged. */
    for (uint32_t h = 0; h < 0x10000; h++) {
        uint32_t exp = (h >> 10) & 0x1f;
        float f = pam_f16_to_f32((pam_f16)h);
        if (exp == 31 && (h & 0x3ff)) {
            assert_true(isnan(f));
            continue;
        }
        assert_int_equal(pam_f32_to_f16(f), h);
    }
    /* Rounding: to nearest, ties to even, overflow to inf. */
    assert_int_equal(pam_f32_to_f16(1.0f + 1.0f / 2048), 0x3c00);        /* tie -> even (down) */
    assert_int_equal(pam_f32_to_f16(1.0f + 3.0f / 2048), 0x3c02);        /* tie -> even (up) */
    assert_int_equal(pam_f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(pam_f32_to_f16(65519.0f), 0x7bff);
    assert_int_equal(pam_f32_to_f16(-0.0f), 0x8000);
    assert_int_equal(pam_f32_to_f16(5.9604644775390625e-8f), 0x0001);  /* smallest subnormal */
    assert_int_equal(pam_f32_to_f16(2.98023223876953125e-8f), 0x0000); /* half of it: tie to even */
    /* Against a double-precision rounding oracle on random floats. */
    pam_test_rng r = {42};
    for (int i = 0; i < 200000; i++) {
        float f = (float)(pam_test_rng_normal(&r) * pow(2.0, pam_test_rng_uniform(&r, -26, 17)));
        pam_f16 h = pam_f32_to_f16(f);
        double back = pam_f16_to_f32(h);
        if (isinf(back)) continue;
        /* No other half is closer. */
        double err = fabs(back - f);
        for (int d = -1; d <= 1; d += 2) {
            pam_f16 n = (pam_f16)(h + d);
            float nf = pam_f16_to_f32(n);
            if (isnan(nf) || ((n ^ h) & 0x8000)) continue;
            assert_true(fabs((double)nf - f) >= err);
        }
    }
}

static void test_bf16(void **state) {
    assert_int_equal(pam_f32_to_bf16(1.0f), 0x3f80);
    assert_true(pam_bf16_to_f32(0x3f80) == 1.0f);
    assert_int_equal(pam_f32_to_bf16(pam_bits_f32(0x3f808000u)), 0x3f80); /* tie -> even */
    assert_int_equal(pam_f32_to_bf16(pam_bits_f32(0x3f818000u)), 0x3f82);
    assert_true(isnan(pam_bf16_to_f32(pam_f32_to_bf16(NAN))));
}

static void test_dtype_table(void **state) {
    size_t n;
    assert_int_equal(pam_dtype_row_bytes(PAM_DT_Q8_0, 64, &n), PAM_OK);
    assert_int_equal(n, 68);
    assert_int_equal(pam_dtype_row_bytes(PAM_DT_Q4_K, 512, &n), PAM_OK);
    assert_int_equal(n, 288);
    assert_int_equal(pam_dtype_row_bytes(PAM_DT_Q6_K, 100, &n), PAM_ERR_FORMAT);
    assert_non_null(strstr(pam_last_error(), "Q6_K"));
    assert_int_equal(pam_dtype_row_bytes(77, 32, &n), PAM_ERR_UNSUPPORTED);
    assert_int_equal(pam_dtype_row_bytes(PAM_DT_F32, INT64_MAX, &n), PAM_ERR_RANGE);
    assert_null(pam_dtype_get(4));
    assert_string_equal(pam_dtype_name(PAM_DT_BF16), "BF16");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_runs_every_task_once),
        cmocka_unit_test(test_pool_back_to_back_jobs),
        cmocka_unit_test(test_f16_roundtrip_exhaustive),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_dtype_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
