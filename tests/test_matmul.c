/* pam_matvec / pam_matmul: each output is one vec-dot, so results must be
 * bit-identical across batch sizes and thread counts, and close to float64. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/threadpool.h"
#include "kernels/cpu.h"
#include "kernels/dtype.h"
#include "kernels/ksel.h"
#include "kernels/matmul.h"
#include "kernels/quant.h"
#include "util/test_util.h"


/* Forces variant vi of weight type t's matvec kernel (kernels/ksel.h), so
 * every variant the chooser could pick on this machine is tested; NULL when
 * there is no such variant or this CPU cannot run it. */
static const char *force_variant(pam_dtype t, int vi) {
    int id = pam_vec_kernel_id(t);
    const pam_ksel_variant *v = pam_ksel_variant_at(id, vi);
    if (!v || !pam_ksel_can_run(v)) return NULL;
    assert_int_equal(pam_ksel_force(id, v->name), PAM_OK);
    return v->name;
}

static void unforce(pam_dtype t) { assert_int_equal(pam_ksel_force(pam_vec_kernel_id(t), NULL), PAM_OK); }

static const pam_dtype k_types[] = {PAM_DT_F32,  PAM_DT_F16,  PAM_DT_BF16, PAM_DT_Q8_0,
                                    PAM_DT_Q4_0, PAM_DT_Q4_K, PAM_DT_Q6_K};
#define N_TYPES (int)(sizeof k_types / sizeof k_types[0])

typedef struct {
    pam_dtype t;
    int64_t rows, cols;
    void *W;
    float *Wd; /* dequantised weights */
} mat;

static void mat_make(mat *m, pam_dtype t, int64_t rows, int64_t cols, pam_test_rng *r) {
    size_t rb = 0;
    assert_int_equal(pam_dtype_row_bytes(t, cols, &rb), PAM_OK);
    m->t = t;
    m->rows = rows;
    m->cols = cols;
    m->W = malloc(rb * (size_t)rows);
    m->Wd = malloc(sizeof(float) * (size_t)(rows * cols));
    float *x = malloc(sizeof(float) * (size_t)cols);
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t c = 0; c < cols; c++) x[c] = (float)pam_test_rng_normal(r);
        pam_quantize_row(t, x, (uint8_t *)m->W + rb * (size_t)i, cols);
        pam_dequantize_row(t, (uint8_t *)m->W + rb * (size_t)i, m->Wd + i * cols, cols);
    }
    free(x);
}

static void mat_free(mat *m) {
    free(m->W);
    free(m->Wd);
}

static int64_t cols_for(pam_dtype t, int variant) {
    int32_t be = pam_dtype_get(t)->block_elems;
    if (be == 1) return variant ? 257 : 7;
    if (be == 32) return variant ? 288 : 64;
    return variant ? 512 : 256;
}

static void test_matmul_invariance(void **state) {
    const int64_t row_counts[] = {1, 15, 17, 100, 1000};
    const int64_t ns[] = {1, 3, 17};
    pam_pool *pools[3];
    for (int p = 0; p < 3; p++) assert_int_equal(pam_pool_create(p + 1, &pools[p]), PAM_OK);
    pam_test_rng r = {11};

    for (int ti = 0; ti < N_TYPES; ti++)
        for (int variant = 0; variant < 2; variant++)
            for (size_t ri = 0; ri < sizeof row_counts / sizeof row_counts[0]; ri++) {
                pam_dtype t = k_types[ti];
                int64_t rows = row_counts[ri], cols = cols_for(t, variant);
                mat m;
                mat_make(&m, t, rows, cols, &r);
                float *X = malloc(sizeof(float) * (size_t)(17 * cols));
                for (int64_t i = 0; i < 17 * cols; i++) X[i] = (float)pam_test_rng_normal(&r);
                float *yv = malloc(sizeof(float) * (size_t)(17 * rows));
                float *Y = malloc(sizeof(float) * (size_t)(17 * rows));
                void *act = malloc(pam_activation_bytes(t, cols));

                /* matvec per token, single-threaded, is the baseline */
                for (int64_t i = 0; i < 17; i++)
                    pam_matvec(NULL, t, m.W, rows, cols, X + i * cols, yv + i * rows);

                /* it equals one pam_vec_dot per row, and float64 within tolerance */
                for (int64_t i = 0; i < 17; i++) {
                    pam_quantize_activations(t, X + i * cols, act, cols);
                    float *ad = malloc(sizeof(float) * (size_t)cols);
                    pam_dequantize_row(pam_vec_dot_type(t), act, ad, cols);
                    size_t rb = 0;
                    assert_int_equal(pam_dtype_row_bytes(t, cols, &rb), PAM_OK);
                    for (int64_t rr = 0; rr < rows; rr++) {
                        float d = pam_vec_dot(t, (uint8_t *)m.W + rb * (size_t)rr, act, cols);
                        assert_memory_equal(&d, &yv[i * rows + rr], sizeof d);
                        double want = 0, mag = 0;
                        for (int64_t c = 0; c < cols; c++) {
                            want += (double)m.Wd[rr * cols + c] * ad[c];
                            mag += fabs((double)m.Wd[rr * cols + c] * ad[c]);
                        }
                        assert_true(fabs(yv[i * rows + rr] - want) <= 1e-5 * mag + 1e-30);
                    }
                    free(ad);
                }

                /* matmul over n tokens with any pool gives the same bits */
                for (int p = -1; p < 3; p++)
                    for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
                        int64_t n = ns[ni];
                        memset(Y, 0xff, sizeof(float) * (size_t)(n * rows));
                        pam_matmul(p < 0 ? NULL : pools[p], t, m.W, rows, cols, X, n, Y);
                        if (memcmp(Y, yv, sizeof(float) * (size_t)(n * rows)) != 0) {
                            fprintf(stderr, "%s rows=%lld cols=%lld n=%lld threads=%d differs\n",
                                    pam_dtype_name(t), (long long)rows, (long long)cols,
                                    (long long)n, p + 1);
                            fail();
                        }
                        if (n == 1) {
                            memset(Y, 0xff, sizeof(float) * (size_t)rows);
                            pam_matvec(p < 0 ? NULL : pools[p], t, m.W, rows, cols, X, Y);
                            assert_memory_equal(Y, yv, sizeof(float) * (size_t)rows);
                        }
                    }
                free(act);
                free(X);
                free(yv);
                free(Y);
                mat_free(&m);
            }
    for (int p = 0; p < 3; p++) pam_pool_destroy(pools[p]);
}

/* Every kernel variant keeps the invariance (each level has its own kernels). */
static void test_matmul_each_isa(void **state) {
    pam_pool *pool;
    assert_int_equal(pam_pool_create(3, &pool), PAM_OK);
    pam_test_rng r = {12};
    for (int vi = 0; vi < 8; vi++) {
        for (int ti = 0; ti < N_TYPES; ti++) {
            pam_dtype t = k_types[ti];
            const char *vname = force_variant(t, vi);
            if (!vname) continue;
            /* 50 blocks of 32: a pair of 16-block groups, one more group and a partial
             * group, so every branch of the multi-row kernels runs */
            for (int wide = 0; wide < 2; wide++) {
                int64_t rows = 33, cols = wide && pam_dtype_get(t)->block_elems == 32 ? 1600 : cols_for(t, 1), n = 5;
                mat m;
                mat_make(&m, t, rows, cols, &r);
                float *X = malloc(sizeof(float) * (size_t)(n * cols));
                for (int64_t i = 0; i < n * cols; i++) X[i] = (float)pam_test_rng_uniform(&r, -1, 1);
                float *Y = malloc(sizeof(float) * (size_t)(n * rows)), y[33];
                uint8_t *act = malloc(pam_activation_bytes(t, cols));
                size_t rb = 0;
                assert_int_equal(pam_dtype_row_bytes(t, cols, &rb), PAM_OK);
                pam_matmul(pool, t, m.W, rows, cols, X, n, Y);
                for (int64_t i = 0; i < n; i++) {
                    pam_matvec(NULL, t, m.W, rows, cols, X + i * cols, y);
                    assert_memory_equal(y, Y + i * rows, sizeof y);
                    pam_quantize_activations(t, X + i * cols, act, cols);
                    for (int64_t rr = 0; rr < rows; rr++) {
                        float d = pam_vec_dot(t, (uint8_t *)m.W + rb * (size_t)rr, act, cols);
                        assert_memory_equal(&d, &y[rr], sizeof d);
                    }
            }
            free(act);
            free(X);
            free(Y);
            mat_free(&m);
            }
            unforce(t);
        }
    }
    pam_pool_destroy(pool);
}

/* The tiled kernels directly, at every level that has them: every row count
 * of a partial panel, token counts around the tile width, and columns with
 * no full group, one group, a pair plus a partial group; each output must
 * be bit-identical to pam_vec_dot on the unprepared activations. */
static void test_tile_kernels(void **state) {
    pam_test_rng r = {13};
    const int64_t rows_list[] = {1, 5, 16, 17, 31, 32};
    const int64_t n_list[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 13};
    /* Q8_0/Q4_0: chains of 0..6 blocks, odd and even group counts, partial groups */
    const int64_t blocks_list[] = {1, 15, 16, 17, 32, 50, 64, 176};
    /* float rows: the 64-wide steps, 16/8-wide steps and the tails */
    const int64_t float_cols[] = {1, 7, 16, 31, 64, 100, 257, 300};
    _Static_assert(sizeof float_cols == sizeof blocks_list, "one float width per block count");
    int ran = 0;
    pam_vec_tile_fn seen_tiles[N_TYPES][8];
    int n_seen[N_TYPES] = {0};
    for (int vi = 0; vi < 8; vi++) {
        for (int ti = 0; ti < N_TYPES; ti++) {
            pam_dtype t = k_types[ti];
            const char *vname = force_variant(t, vi);
            if (!vname) continue;
            pam_vec_tile_fn tile = pam_vec_tile_select(t);
            int seen = 0; /* variants sharing a tile (same bits) test it once */
            for (int k = 0; k < n_seen[ti]; k++) seen |= seen_tiles[ti][k] == tile;
            if (!tile || seen) {
                unforce(t);
                continue;
            }
            if (n_seen[ti] < 8) seen_tiles[ti][n_seen[ti]++] = tile;
            int32_t be = pam_dtype_get(t)->block_elems;
            for (size_t bi = 0; bi < sizeof blocks_list / sizeof blocks_list[0]; bi++) {
                if (be > 32 && blocks_list[bi] > 64) continue; /* K-quant rows that long only cost time */
                int64_t cols = be == 1 ? float_cols[bi] : be * blocks_list[bi], rows = PAM_TILE_ROWS, n = 13;
                mat m;
                mat_make(&m, t, rows, cols, &r);
                size_t rb = 0, ab = pam_activation_bytes(t, cols);
                assert_int_equal(pam_dtype_row_bytes(t, cols, &rb), PAM_OK);
                size_t tab = pam_vec_tile_act_bytes(t, cols);
                if (tab == 0) tab = ab; /* the tile reads the activations as they are */
                uint8_t *act = malloc(ab * (size_t)n), *prep = malloc(tab * (size_t)n);
                float *x = malloc(sizeof(float) * (size_t)cols);
                float *want = malloc(sizeof(float) * (size_t)(n * rows));
                float *Y = malloc(sizeof(float) * (size_t)(n * rows));
                void *scratch = malloc(pam_vec_tile_scratch_bytes(t, cols) + 1);
                for (int64_t i = 0; i < n; i++) {
                    for (int64_t c = 0; c < cols; c++) x[c] = (float)pam_test_rng_normal(&r);
                    if (i == 2) /* an all-zero token: zero block sums everywhere */
                        memset(x, 0, sizeof(float) * (size_t)cols);
                    pam_quantize_activations(t, x, act + (size_t)i * ab, cols);
                    for (int64_t rr = 0; rr < rows; rr++)
                        want[i * rows + rr] =
                            pam_vec_dot(t, (uint8_t *)m.W + rb * (size_t)rr, act + (size_t)i * ab, cols);
                }
                for (int64_t i = 0; i < n; i++)
                    pam_vec_tile_prep_act(t, act + (size_t)i * ab, cols, prep + (size_t)i * tab);
                for (size_t ri = 0; ri < sizeof rows_list / sizeof rows_list[0]; ri++)
                    for (size_t ni = 0; ni < sizeof n_list / sizeof n_list[0]; ni++) {
                        int64_t nr = rows_list[ri], nt = n_list[ni];
                        for (int64_t i = 0; i < n * rows; i++) Y[i] = -1.0f;
                        /* ldy = rows: outputs of rows >= nr must be left alone */
                        tile(m.W, rb, nr, prep, tab, nt, cols, Y, rows, scratch);
                        for (int64_t i = 0; i < n; i++)
                            for (int64_t rr = 0; rr < rows; rr++) {
                                float got = Y[i * rows + rr];
                                if (i < nt && rr < nr) {
                                    if (memcmp(&got, &want[i * rows + rr], sizeof got) != 0) {
                                        fprintf(stderr, "%s %s blocks=%lld rows=%lld n=%lld: [%lld,%lld] %a vs %a\n",
                                                vname, pam_dtype_name(t), (long long)blocks_list[bi],
                                                (long long)nr, (long long)nt, (long long)i, (long long)rr,
                                                (double)got, (double)want[i * rows + rr]);
                                        fail();
                                    }
                                } else {
                                    assert_true(got == -1.0f);
                                }
                            }
                        ran++;
                    }
                free(scratch);
                free(Y);
                free(want);
                free(x);
                free(prep);
                free(act);
                mat_free(&m);
            }
            unforce(t);
        }
    }
    if (pam_cpu_detect() >= PAM_ISA_AVX512) assert_true(ran > 0);
}

/* pam_matmul_multi (several products over one input, one pool job) gives the
 * same bits as separate pam_matmul calls, with mixed types, several token
 * counts (decode and tiled prefill) and thread counts; more products than
 * one group holds are split transparently. */
static void test_matmul_multi(void **state) {
    pam_test_rng r = {99};
    const int64_t cols = 512;
    const pam_dtype types[6] = {PAM_DT_Q8_0, PAM_DT_Q4_K, PAM_DT_F16, PAM_DT_Q6_K, PAM_DT_Q4_0, PAM_DT_BF16};
    const int64_t rows[6] = {33, 64, 17, 128, 48, 5};
    mat m[6];
    for (int k = 0; k < 6; k++) mat_make(&m[k], types[k], rows[k], cols, &r);
    const int64_t ns[3] = {1, 5, 19};
    float *X = malloc(sizeof(float) * (size_t)(19 * cols));
    for (int64_t i = 0; i < 19 * cols; i++) X[i] = (float)pam_test_rng_normal(&r);
    for (int threads = 1; threads <= 3; threads++) {
        pam_pool *pool;
        assert_int_equal(pam_pool_create(threads, &pool), PAM_OK);
        for (int ni = 0; ni < 3; ni++) {
            int64_t n = ns[ni];
            float *sep[6], *mul[6];
            pam_mm mm[6];
            for (int k = 0; k < 6; k++) {
                sep[k] = malloc(sizeof(float) * (size_t)(rows[k] * n));
                mul[k] = malloc(sizeof(float) * (size_t)(rows[k] * n));
                pam_matmul(pool, types[k], m[k].W, rows[k], cols, X, n, sep[k]);
                mm[k] = (pam_mm){types[k], m[k].W, rows[k], mul[k]};
            }
            pam_matmul_multi(pool, mm, 6, cols, X, n);
            for (int k = 0; k < 6; k++) {
                assert_memory_equal(sep[k], mul[k], sizeof(float) * (size_t)(rows[k] * n));
                free(sep[k]);
                free(mul[k]);
            }
        }
        pam_pool_destroy(pool);
    }
    free(X);
    for (int k = 0; k < 6; k++) mat_free(&m[k]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul_invariance),
        cmocka_unit_test(test_matmul_multi),
        cmocka_unit_test(test_matmul_each_isa),
        cmocka_unit_test(test_tile_kernels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
