/* kv/loctrace locality traces and their replay through the KV manager: a
 * trace round-trips through its file (values quantised to 1/65535); damaged
 * or truncated files and misuse of the writer are refused with a message;
 * the replay mapping keeps the sink and the recent block, sums to 1 and
 * spreads the middle in proportion; a replayed run picks, places and weighs
 * the same blocks whatever the thread count; and on a trace with strong
 * locality, importance placement serves a larger share of the attended
 * bytes from the fastest tier than static placement (a property of the
 * scheduler, counted in bytes, not timed). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/threadpool.h"
#include "kv/kvm.h"
#include "kv/loctrace.h"
#include "kv/tier.h"
#include "util/test_util.h"

/* ---- file round trip -------------------------------------------------------- */

enum { TL = 3, TBT = 4, TCTX = 22, TCH = 2 };

static int32_t nb_of(int32_t t, int32_t bt) { return t / bt + 1; }

/* Writes a trace of random masses (each record normalised) and returns
 * them in exp[chunk][step][layer][block] (TBT-block granularity). */
static void write_random(const char *path, float *exp) {
    pam_loctrace_writer *w;
    if (pam_loctrace_writer_open(path, TL, TBT, TCTX, TCH, &w) != PAM_OK) fail_msg("%s", pam_last_error());
    pam_test_rng r = {3};
    int32_t NB = nb_of(TCTX - 1, TBT);
    for (int c = 0; c < TCH; c++)
        for (int t = 0; t < TCTX; t++)
            for (int l = 0; l < TL; l++) {
                int32_t nb = nb_of(t, TBT);
                float m[16], sum = 0;
                for (int b = 0; b < nb; b++) sum += m[b] = (float)pam_test_rng_uniform(&r, 0, 1);
                for (int b = 0; b < nb; b++) m[b] /= sum;
                memcpy(exp + (((size_t)c * TCTX + t) * TL + l) * NB, m, (size_t)nb * sizeof(float));
                assert_int_equal(pam_loctrace_add(w, m, nb), PAM_OK);
            }
    assert_int_equal(pam_loctrace_finish(w), PAM_OK);
}

static void test_round_trip(void **state) {
    (void)state;
    const char *path = pam_test_tmp("loctrace_rt.trace");
    int32_t NB = nb_of(TCTX - 1, TBT);
    float *exp = calloc((size_t)TCH * TCTX * TL * NB, sizeof(float));
    write_random(path, exp);
    pam_loctrace *t;
    if (pam_loctrace_load(path, &t) != PAM_OK) fail_msg("%s", pam_last_error());
    assert_int_equal(pam_loctrace_n_layer(t), TL);
    assert_int_equal(pam_loctrace_block_tokens(t), TBT);
    assert_int_equal(pam_loctrace_ctx(t), TCTX);
    assert_int_equal(pam_loctrace_n_chunks(t), TCH);
    float got[16];
    for (int c = 0; c < TCH; c++)
        for (int s = 0; s < TCTX; s++)
            for (int l = 0; l < TL; l++) {
                int32_t nb = pam_loctrace_record(t, c, s, l, got);
                assert_int_equal(nb, nb_of(s, TBT));
                for (int b = 0; b < nb; b++) {
                    float e = exp[(((size_t)c * TCTX + s) * TL + l) * NB + b];
                    /* quantised to 1/65535, rounded to nearest */
                    assert_true(fabsf(got[b] - e) <= 0.5f / 65535.0f + 1e-7f);
                }
            }
    assert_int_equal(pam_loctrace_record(t, TCH, 0, 0, got), 0);
    assert_int_equal(pam_loctrace_record(t, 0, TCTX, 0, got), 0);
    assert_int_equal(pam_loctrace_record(t, 0, 0, TL, got), 0);
    assert_int_equal(pam_loctrace_record(t, -1, 0, 0, got), 0);
    pam_loctrace_free(t);
    free(exp);
}

static void rewrite(const char *path, const char *data, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

static void expect_refused(const char *path, pam_status code, const char *words) {
    pam_loctrace *t = NULL;
    pam_status st = pam_loctrace_load(path, &t);
    assert_null(t);
    if (st != code || !strstr(pam_last_error(), words))
        fail_msg("expected %d with '%s', got %d: %s", (int)code, words, (int)st, pam_last_error());
}

static void test_bad_files(void **state) {
    (void)state;
    char path[512], missing[512]; /* pam_test_tmp's buffer is reused */
    snprintf(path, sizeof path, "%s", pam_test_tmp("loctrace_bad.trace"));
    snprintf(missing, sizeof missing, "%s", pam_test_tmp("loctrace_missing.trace"));
    remove(missing);
    int32_t NB = nb_of(TCTX - 1, TBT);
    float *exp = calloc((size_t)TCH * TCTX * TL * NB, sizeof(float));
    write_random(path, exp);
    free(exp);
    size_t n;
    char *good = pam_test_read_file(path, &n);
    assert_non_null(good);
    char *bad = malloc(n + 1);

    expect_refused(missing, PAM_ERR_IO, "cannot open");
    memcpy(bad, good, n);
    bad[0] = 'X';
    rewrite(path, bad, n);
    expect_refused(path, PAM_ERR_CORRUPT, "not a locality trace");
    rewrite(path, good, n - 1);
    expect_refused(path, PAM_ERR_CORRUPT, "truncated");
    memcpy(bad, good, n);
    bad[n] = 0;
    rewrite(path, bad, n + 1);
    expect_refused(path, PAM_ERR_CORRUPT, "trailing bytes");
    memcpy(bad, good, n);
    bad[n / 2] ^= 0x10;
    rewrite(path, bad, n);
    expect_refused(path, PAM_ERR_CORRUPT, "checksum");
    memcpy(bad, good, n);
    memset(bad + 8, 0, 4); /* no layers */
    rewrite(path, bad, n);
    expect_refused(path, PAM_ERR_INVALID, "bad dimensions");
    rewrite(path, good, 20); /* a header cut short */
    expect_refused(path, PAM_ERR_CORRUPT, "not a locality trace");
    free(bad);
    free(good);

    /* writer misuse: wrong block count, too few and too many records */
    pam_loctrace_writer *w;
    float m[2] = {0.5f, 0.5f};
    assert_int_equal(pam_loctrace_writer_open(path, 1, 4, 4, 1, &w), PAM_OK);
    assert_int_equal(pam_loctrace_add(w, m, 2), PAM_ERR_INVALID); /* step 0 has 1 block */
    assert_non_null(strstr(pam_last_error(), "blocks"));
    assert_int_equal(pam_loctrace_add(w, m, 1), PAM_OK);
    assert_int_equal(pam_loctrace_finish(w), PAM_ERR_INVALID);
    assert_non_null(strstr(pam_last_error(), "chunks written"));
    assert_int_equal(pam_loctrace_writer_open(path, 1, 4, 1, 1, &w), PAM_OK);
    assert_int_equal(pam_loctrace_add(w, m, 1), PAM_OK);
    assert_int_equal(pam_loctrace_add(w, m, 1), PAM_ERR_INVALID);
    assert_int_equal(pam_loctrace_finish(w), PAM_OK);
    assert_int_equal(pam_loctrace_writer_open(path, 0, 4, 1, 1, &w), PAM_ERR_INVALID);
    assert_int_equal(pam_loctrace_writer_open(pam_test_tmp("no/such/dir/x.trace"), 1, 4, 1, 1, &w), PAM_ERR_IO);
}

/* ---- the replay mapping ----------------------------------------------------- */

/* A trace of one layer and one chunk whose every step gives the sink 0.1,
 * the newest block 0.3, middle block k (1-based) weight k, normalised. */
static pam_loctrace *ramp_trace(const char *name, int32_t bt, int32_t ctx) {
    const char *path = pam_test_tmp(name);
    pam_loctrace_writer *w;
    assert_int_equal(pam_loctrace_writer_open(path, 1, bt, ctx, 1, &w), PAM_OK);
    float *m = malloc((size_t)(ctx / bt + 1) * sizeof(float));
    for (int32_t t = 0; t < ctx; t++) {
        int32_t nb = t / bt + 1;
        double mid = 0;
        for (int32_t b = 1; b + 1 < nb; b++) mid += b;
        for (int32_t b = 0; b < nb; b++) m[b] = 0;
        m[0] = nb == 1 ? 1.0f : 0.1f;
        if (nb > 1) m[nb - 1] = nb > 2 ? 0.3f : 0.9f;
        for (int32_t b = 1; b + 1 < nb; b++) m[b] = (float)(0.6 * b / mid);
        assert_int_equal(pam_loctrace_add(w, m, nb), PAM_OK);
    }
    free(m);
    assert_int_equal(pam_loctrace_finish(w), PAM_OK);
    pam_loctrace *t;
    assert_int_equal(pam_loctrace_load(path, &t), PAM_OK);
    return t;
}

static void test_map(void **state) {
    (void)state;
    pam_loctrace *t = ramp_trace("loctrace_ramp.trace", 4, 64);
    /* n_pos such that the trace step is ctx-1 = 63: 16 trace blocks, 14 middle */
    int32_t n_pos = 32; /* step = 32 + 31 % 32 = 63 */
    float mass[200], rec[32];
    int32_t ntb = pam_loctrace_record(t, 0, 63, 0, rec);
    assert_int_equal(ntb, 16);
    double tsum = 0;
    for (int b = 0; b < ntb; b++) tsum += rec[b];
    int64_t sizes[] = {1, 2, 3, 16, 30, 16 * 4 - 6, 58, 199};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int64_t nb = sizes[k];
        pam_loctrace_map(t, 0, 0, n_pos, mass, nb);
        double sum = 0;
        for (int64_t b = 0; b < nb; b++) {
            assert_true(mass[b] >= 0.0f);
            sum += mass[b];
        }
        assert_true(fabs(sum - 1.0) < 1e-5);
        if (nb >= 3) {
            assert_true(fabsf(mass[0] - (float)(rec[0] / tsum)) < 1e-6f);               /* sink */
            assert_true(fabsf(mass[nb - 1] - (float)(rec[ntb - 1] / tsum)) < 1e-6f);   /* recent */
        }
        if (nb == 16) /* same block count: the trace itself */
            for (int b = 0; b < 16; b++) assert_true(fabsf(mass[b] - (float)(rec[b] / tsum)) < 1e-6f);
        if (nb == 58) /* 56 middle blocks: four per trace middle block */
            for (int64_t b = 1; b < nb - 1; b++)
                assert_true(fabsf(mass[b] - (float)(rec[1 + (b - 1) / 4] / tsum / 4)) < 1e-6f);
        if (nb > 3) /* the ramp survives: later middle blocks are no colder */
            for (int64_t b = 2; b < nb - 1; b++) assert_true(mass[b] >= mass[b - 1] - 1e-7f);
    }
    /* the layer and sequence pick the record; the same call, the same mass */
    float again[200];
    pam_loctrace_map(t, 5, 3, 1000, mass, 199);
    pam_loctrace_map(t, 5, 3, 1000, again, 199);
    assert_memory_equal(mass, again, sizeof(float) * 199);
    pam_loctrace_free(t);
}

/* ---- replay through the KV manager ------------------------------------------ */

enum { HKV = 2, GRP = 2, HD = 16, BT = 8, NH = HKV * GRP, LAYERS = 2, SEQS = 4, DEPTH = 512, STEPS = 16 };

static uint64_t block_bytes(void) { return 2ull * 2ull * BT * HKV * HD; }

static void replay_cb(void *user, int32_t seq, int32_t layer, int32_t n_pos, float *mass, int64_t n_blocks) {
    pam_loctrace_map(user, seq, layer, n_pos, mass, n_blocks);
}

/* Strong locality: in every chunk a few middle blocks, fixed over the
 * steps, take 80% of the mass; the sink and the newest block 5% each. */
static pam_loctrace *hot_trace(void) {
    const char *path = pam_test_tmp("loctrace_hot.trace");
    const int32_t bt = 4, ctx = 128, L = 1, C = 4;
    pam_loctrace_writer *w;
    assert_int_equal(pam_loctrace_writer_open(path, L, bt, ctx, C, &w), PAM_OK);
    float m[40];
    for (int c = 0; c < C; c++)
        for (int32_t t = 0; t < ctx; t++) {
            int32_t nb = t / bt + 1;
            for (int32_t b = 0; b < nb; b++) m[b] = nb > 2 ? 0.1f / (float)nb : 1.0f / (float)nb;
            if (nb >= 16) { /* the steps a replay uses: ctx/2 on */
                m[0] += 0.05f;
                m[nb - 1] += 0.05f;
                int hot[3] = {2 + c, 6 + c, 10 + c};
                for (int i = 0; i < 3; i++) m[hot[i]] += 0.8f / 3.0f;
            }
            assert_int_equal(pam_loctrace_add(w, m, nb), PAM_OK);
        }
    assert_int_equal(pam_loctrace_finish(w), PAM_OK);
    pam_loctrace *t;
    assert_int_equal(pam_loctrace_load(path, &t), PAM_OK);
    return t;
}

static pam_kvm *replay_kvm(pam_pool *pool, pam_kv_place place, pam_loctrace *tr) {
    pam_kv_shape sh = {LAYERS, HKV, HD, BT};
    uint64_t all = (uint64_t)SEQS * LAYERS * ((DEPTH + STEPS + BT - 1) / BT + 1);
    pam_tier *tiers[2];
    /* the fastest tier holds a quarter of the blocks */
    assert_int_equal(pam_tier_dram_open(&sh, all / 4 * block_bytes(), &tiers[0]), PAM_OK);
    assert_int_equal(pam_tier_dram_open(&sh, all * block_bytes(), &tiers[1]), PAM_OK);
    pam_kvm_config cfg = {.shape = sh, .tiers = tiers, .n_tiers = 2, .policy = PAM_KV_POLICY_PAM,
                          .sparse = {0, 0.25f}, .place = place};
    pam_kvm *kvm;
    if (pam_kvm_create(&cfg, pool, &kvm) != PAM_OK) fail_msg("%s", pam_last_error());
    pam_kvm_replay rp = {.user = tr, .mass = replay_cb};
    pam_kvm_set_replay(kvm, &rp);
    for (int32_t s = 0; s < SEQS; s++) {
        int32_t id;
        assert_int_equal(pam_kvm_seq_create(kvm, &id), PAM_OK);
        assert_int_equal(id, s);
        assert_int_equal(pam_kvm_reserve(kvm, s, DEPTH + STEPS), PAM_OK);
        assert_int_equal(pam_kvm_fill_synthetic(kvm, s, DEPTH, 100 + (uint64_t)s), PAM_OK);
    }
    return kvm;
}

/* One decode step of every sequence and layer (a new token stored, then
 * attention over the context), then step_end; adds the fastest tier's and
 * all tiers' bytes read to fast and all. */
static void replay_step(pam_kvm *kvm, int step, double *fast, double *all) {
    pam_test_rng r = {(uint64_t)step * 7919 + 1};
    float k[HKV * HD], v[HKV * HD], q[NH * HD], out[NH * HD];
    for (int32_t s = 0; s < SEQS; s++)
        for (int32_t l = 0; l < LAYERS; l++) {
            for (int i = 0; i < HKV * HD; i++) k[i] = (float)pam_test_rng_normal(&r), v[i] = (float)pam_test_rng_normal(&r);
            for (int i = 0; i < NH * HD; i++) q[i] = (float)pam_test_rng_normal(&r);
            int32_t pos = DEPTH + step;
            assert_int_equal(pam_kvm_store(kvm, s, l, pos, k, v), PAM_OK);
            if (pam_kvm_attend(kvm, s, l, pos + 1, q, NH, 0.25f, out) != PAM_OK) fail_msg("%s", pam_last_error());
        }
    assert_int_equal(pam_kvm_step_end(kvm), PAM_OK);
    pam_kvm_report rep;
    pam_kvm_report_get(kvm, &rep);
    *fast += (double)rep.tiers[0].bytes_read_step;
    for (int t = 0; t < rep.n_tiers; t++) *all += (double)rep.tiers[t].bytes_read_step;
}

static void test_replay_threads(void **state) {
    (void)state;
    pam_loctrace *tr = hot_trace();
    pam_pool *pool;
    assert_int_equal(pam_pool_create(2, &pool), PAM_OK);
    pam_kvm *a = replay_kvm(NULL, PAM_KV_PLACE_IMPORTANCE, tr), *b = replay_kvm(pool, PAM_KV_PLACE_IMPORTANCE, tr);
    int64_t nb = (DEPTH + STEPS + BT - 1) / BT;
    uint8_t pa[80], pb[80];
    double f = 0, x = 0;
    for (int step = 0; step < 6; step++) {
        replay_step(a, step, &f, &x);
        replay_step(b, step, &f, &x);
        for (int32_t s = 0; s < SEQS; s++)
            for (int32_t l = 0; l < LAYERS; l++) {
                int64_t na = pam_kvm_last_pick(a, s, l, pa, 80), nb2 = pam_kvm_last_pick(b, s, l, pb, 80);
                assert_int_equal(na, nb2);
                assert_true(na > 0);
                assert_memory_equal(pa, pb, (size_t)na);
                for (int64_t i = 0; i < nb; i++) {
                    assert_int_equal(pam_kvm_block_tier(a, s, l, (int32_t)i), pam_kvm_block_tier(b, s, l, (int32_t)i));
                    assert_true(pam_kvm_block_importance(a, s, l, (int32_t)i) ==
                                pam_kvm_block_importance(b, s, l, (int32_t)i));
                }
            }
    }
    pam_kvm_report ra, rb;
    pam_kvm_report_get(a, &ra);
    pam_kvm_report_get(b, &rb);
    assert_int_equal(ra.migrations_step, rb.migrations_step);
    assert_int_equal(ra.sparse_attended_step, rb.sparse_attended_step);
    pam_kvm_destroy(a);
    pam_kvm_destroy(b);
    pam_pool_destroy(pool);
    pam_loctrace_free(tr);
}

static void test_replay_placement(void **state) {
    (void)state;
    pam_loctrace *tr = hot_trace();
    double share[3];
    pam_kv_place places[3] = {PAM_KV_PLACE_IMPORTANCE, PAM_KV_PLACE_RECENCY, PAM_KV_PLACE_STATIC};
    for (int p = 0; p < 3; p++) {
        pam_kvm *kvm = replay_kvm(NULL, places[p], tr);
        double fast = 0, all = 0, f0 = 0, a0 = 0;
        for (int step = 0; step < STEPS; step++) {
            if (step < STEPS / 2) replay_step(kvm, step, &f0, &a0); /* the scheduler settles */
            else replay_step(kvm, step, &fast, &all);
        }
        assert_true(all > 0);
        share[p] = fast / all;
        pam_kvm_destroy(kvm);
    }
    print_message("fastest tier's share of bytes read: importance %.3f, recency %.3f, static %.3f\n", share[0],
                  share[1], share[2]);
    assert_true(share[0] > share[2]);
    assert_true(share[0] > 0.8); /* the hot blocks fit in the fastest tier */
    pam_loctrace_free(tr);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_map),
        cmocka_unit_test(test_replay_threads),
        cmocka_unit_test(test_replay_placement),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
