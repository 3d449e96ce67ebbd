/* kv/kvm sparse attention and eviction: a budget of at least the context is
 * bit-identical to exact attention (through the same tiers); skipped ssd
 * blocks cost no read (pam_tier_ssd_reads), hints included; the selection
 * keeps the sink and the recent window, stays within the budget and does not
 * depend on other sequences or the thread count; eviction never drops the
 * sink or the recent window, and without it a full cache fails; bad budgets
 * are refused with a message. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/threadpool.h"
#include "kv/ksum.h"
#include "kv/kvm.h"
#include "model/model.h"
#include "kv/tier.h"
#include "util/test_util.h"

enum { HKV = 2, GRP = 2, HD = 16, BT = 8, NH = HKV * GRP, ROW = HKV * HD };

static uint64_t block_bytes(void) { return 2ull * 2ull * BT * ROW; }

/* Keys with locality: a few blocks align with the query direction. */
static void make_kv(pam_test_rng *r, int32_t pos, float *k, float *v) {
    int hot = (pos / BT) % 7 == 3;
    for (int i = 0; i < ROW; i++) {
        k[i] = (float)pam_test_rng_normal(r) + (hot ? 2.0f : 0.0f);
        v[i] = (float)pam_test_rng_normal(r);
    }
}

static void fill(pam_kvm *kvm, int32_t seq, int32_t n, uint64_t seed) {
    pam_test_rng r = {seed};
    float k[ROW], v[ROW];
    assert_int_equal(pam_kvm_reserve(kvm, seq, n), PAM_OK);
    for (int32_t p = 0; p < n; p++) {
        make_kv(&r, p, k, v);
        if (pam_kvm_store(kvm, seq, 0, p, k, v) != PAM_OK) fail_msg("store %d: %s", p, pam_last_error());
    }
}

static void make_q(float *q, uint64_t seed) {
    pam_test_rng r = {seed};
    for (int i = 0; i < NH * HD; i++) q[i] = (float)pam_test_rng_normal(&r) * 0.5f + 0.5f;
}

static pam_kvm *make_kvm(uint64_t fast_blocks, uint64_t slow_blocks, pam_kv_sparse sp, int evict, pam_pool *pool) {
    pam_kv_shape sh = {1, HKV, HD, BT};
    pam_tier *tiers[2];
    int n = 0;
    assert_int_equal(pam_tier_dram_open(&sh, fast_blocks * block_bytes(), &tiers[n++]), PAM_OK);
    if (slow_blocks) assert_int_equal(pam_tier_dram_open(&sh, slow_blocks * block_bytes(), &tiers[n++]), PAM_OK);
    pam_kvm_config cfg = {.shape = sh, .tiers = tiers, .n_tiers = n, .policy = PAM_KV_POLICY_PAM, .sparse = sp,
                          .sparse_allow = 1, .evict = evict};
    pam_kvm *kvm;
    if (pam_kvm_create(&cfg, pool, &kvm) != PAM_OK) fail_msg("%s", pam_last_error());
    return kvm;
}

/* ---- budget >= context: bit-identical ------------------------------------- */

static void test_full_budget_identical(void **state) {
    (void)state;
    const int32_t n = 203;
    pam_kv_sparse exact = {0, 0.0f}, full_tok = {n, 0.0f}, full_pct = {0, 1.0f};
    pam_kv_sparse sps[3] = {exact, full_tok, full_pct};
    float out[3][NH * HD], q[NH * HD];
    make_q(q, 7);
    for (int i = 0; i < 3; i++) {
        /* two tiers: blocks spread, so pieces leave logical order */
        pam_kvm *kvm = make_kvm(5, 64, sps[i], 0, NULL);
        int32_t seq;
        assert_int_equal(pam_kvm_seq_create(kvm, &seq), PAM_OK);
        fill(kvm, seq, n, 42);
        for (int32_t np = 1; np <= n; np += 29)
            assert_int_equal(pam_kvm_attend(kvm, seq, 0, np, q, NH, 0.25f, out[i]), PAM_OK);
        assert_int_equal(pam_kvm_attend(kvm, seq, 0, n, q, NH, 0.25f, out[i]), PAM_OK);
        pam_kvm_destroy(kvm);
    }
    assert_memory_equal(out[0], out[1], sizeof out[0]);
    assert_memory_equal(out[0], out[2], sizeof out[0]);
}

/* ---- the selection: sink, window, budget, and a good approximation ------- */

static void test_selection(void **state) {
    (void)state;
    const int32_t n = 400; /* 50 blocks */
    pam_kv_sparse sp = {0, 0.25f};
    pam_kvm *ex = make_kvm(128, 0, (pam_kv_sparse){0, 0}, 0, NULL), *kvm = make_kvm(128, 0, sp, 0, NULL);
    int32_t a, b;
    assert_int_equal(pam_kvm_seq_create(ex, &a), PAM_OK);
    assert_int_equal(pam_kvm_seq_create(kvm, &b), PAM_OK);
    fill(ex, a, n, 3);
    fill(kvm, b, n, 3);
    float q[NH * HD], oe[NH * HD], os[NH * HD];
    make_q(q, 11);
    assert_int_equal(pam_kvm_attend(ex, a, 0, n, q, NH, 0.25f, oe), PAM_OK);
    assert_int_equal(pam_kvm_attend(kvm, b, 0, n, q, NH, 0.25f, os), PAM_OK);
    uint8_t pick[64];
    assert_int_equal(pam_kvm_last_pick(kvm, b, 0, pick, 64), 50);
    int cnt = 0, hot = 0;
    for (int i = 0; i < 50; i++) {
        cnt += pick[i];
        hot += pick[i] && i % 7 == 3;
    }
    assert_true(pick[0]);  /* sink */
    assert_true(pick[49]); /* recent window */
    assert_true(cnt * BT <= 100 && cnt * BT > 100 - BT); /* 25% of 400 tokens */
    assert_int_equal(hot, 7); /* every block aligned with the query */
    double err = 0, mag = 0;
    for (int i = 0; i < NH * HD; i++) {
        err += fabs((double)os[i] - oe[i]);
        mag += fabs((double)oe[i]);
    }
    assert_true(err / mag < 0.2);
    assert_true(memcmp(os, oe, sizeof os) != 0); /* it did skip something */
    pam_kvm_report rep;
    assert_int_equal(pam_kvm_step_end(kvm), PAM_OK);
    pam_kvm_report_get(kvm, &rep);
    assert_int_equal(rep.sparse_attended_step, (uint64_t)cnt);
    assert_int_equal(rep.sparse_skipped_step, (uint64_t)(50 - cnt));
    pam_kvm_destroy(ex);
    pam_kvm_destroy(kvm);
}

/* ---- deterministic whatever the batch and threads ------------------------- */

static void test_deterministic(void **state) {
    (void)state;
    const int32_t n = 321;
    pam_kv_sparse sp = {64, 0.0f};
    float q[NH * HD], o1[NH * HD], o2[NH * HD];
    uint8_t p1[64], p2[64];
    make_q(q, 5);
    /* alone, no pool */
    pam_kvm *k1 = make_kvm(256, 0, sp, 0, NULL);
    int32_t s1;
    assert_int_equal(pam_kvm_seq_create(k1, &s1), PAM_OK);
    fill(k1, s1, n, 9);
    /* between two other sequences, on two threads */
    pam_pool *pool;
    assert_int_equal(pam_pool_create(2, &pool), PAM_OK);
    pam_kvm *k2 = make_kvm(256, 0, sp, 0, pool);
    int32_t x, s2, y;
    assert_int_equal(pam_kvm_seq_create(k2, &x), PAM_OK);
    assert_int_equal(pam_kvm_seq_create(k2, &s2), PAM_OK);
    assert_int_equal(pam_kvm_seq_create(k2, &y), PAM_OK);
    fill(k2, x, 100, 1);
    fill(k2, s2, n, 9);
    fill(k2, y, 200, 2);
    for (int step = 0; step < 3; step++) {
        assert_int_equal(pam_kvm_attend(k1, s1, 0, n, q, NH, 0.25f, o1), PAM_OK);
        assert_int_equal(pam_kvm_attend(k2, x, 0, 100, q, NH, 0.25f, o2), PAM_OK);
        assert_int_equal(pam_kvm_attend(k2, s2, 0, n, q, NH, 0.25f, o2), PAM_OK);
        assert_int_equal(pam_kvm_attend(k2, y, 0, 200, q, NH, 0.25f, o2 + 0), PAM_OK);
        assert_int_equal(pam_kvm_attend(k2, s2, 0, n, q, NH, 0.25f, o2), PAM_OK);
        assert_int_equal(pam_kvm_attend(k1, s1, 0, n, q, NH, 0.25f, o1), PAM_OK); /* twice in both */
        assert_memory_equal(o1, o2, sizeof o1);
        assert_int_equal(pam_kvm_last_pick(k1, s1, 0, p1, 64), pam_kvm_last_pick(k2, s2, 0, p2, 64));
        assert_memory_equal(p1, p2, (size_t)(n + BT - 1) / BT);
        assert_int_equal(pam_kvm_step_end(k1), PAM_OK);
        assert_int_equal(pam_kvm_step_end(k2), PAM_OK);
        for (int32_t b = 0; b < (n + BT - 1) / BT; b++) /* importance by-product too */
            assert_true(pam_kvm_block_importance(k1, s1, 0, b) == pam_kvm_block_importance(k2, s2, 0, b));
    }
    pam_kvm_destroy(k1);
    pam_kvm_destroy(k2);
    pam_pool_destroy(pool);
}

/* ---- a real model: batch and threads do not change sparse logits --------- */

enum { M_SEQ = 3, M_PROMPT = 40, M_STEPS = 36 };

static pam_kvm *model_kvm(pam_model *m, pam_pool *pool) {
    const pam_model_hparams *hp = pam_model_get_hparams(m);
    pam_kv_shape shape = {hp->n_layer, hp->n_head_kv, hp->head_dim, 16};
    pam_tier *t;
    assert_int_equal(pam_tier_dram_open(&shape, 16ull << 20, &t), PAM_OK);
    pam_kvm_config cfg = {.shape = shape, .tiers = &t, .n_tiers = 1, .policy = PAM_KV_POLICY_PAM,
                          .sparse = {32, 0.0f}};
    pam_kvm *kvm;
    assert_int_equal(pam_kvm_create(&cfg, pool, &kvm), PAM_OK);
    return kvm;
}

static void test_model_batch_threads(void **state) {
    (void)state;
    char path[512];
    if (pam_test_stories260k("sparse-stories260K.gguf", path, sizeof path) != PAM_OK) fail_msg("%s", pam_last_error());
    pam_model *m;
    assert_int_equal(pam_model_load(path, &m), PAM_OK);
    int nv = pam_model_get_hparams(m)->n_vocab;
    int32_t tok[M_SEQ][M_PROMPT + M_STEPS];
    pam_test_rng rng = {17};
    for (int s = 0; s < M_SEQ; s++)
        for (int i = 0; i < M_PROMPT + M_STEPS; i++) tok[s][i] = (int32_t)(pam_test_rng_u64(&rng) % (uint64_t)nv);
    size_t per_seq = (size_t)(M_PROMPT + M_STEPS) * nv;
    float *ref = malloc(sizeof(float) * per_seq * M_SEQ), *exact = malloc(sizeof(float) * per_seq);
    assert_non_null(ref);
    assert_non_null(exact);
    /* each sequence alone, token by token, one thread */
    for (int s = 0; s < M_SEQ; s++) {
        pam_kvm *kvm = model_kvm(m, NULL);
        pam_ctx_params p;
        pam_ctx_params_default(&p);
        p.n_ctx = M_PROMPT + M_STEPS;
        p.kvm = kvm;
        pam_ctx *c;
        assert_int_equal(pam_ctx_create_ex(m, &p, NULL, &c), PAM_OK);
        for (int pos = 0; pos < M_PROMPT + M_STEPS; pos++)
            assert_int_equal(pam_forward(c, &tok[s][pos], 1, pos, ref + s * per_seq + (size_t)pos * nv, 0), PAM_OK);
        pam_ctx_free(c);
        pam_kvm_destroy(kvm);
    }
    /* sparse did change something: the exact logits of sequence 0 differ late in it */
    {
        pam_ctx_params p;
        pam_ctx_params_default(&p);
        p.n_ctx = M_PROMPT + M_STEPS;
        pam_ctx *c;
        assert_int_equal(pam_ctx_create_ex(m, &p, NULL, &c), PAM_OK);
        for (int pos = 0; pos < M_PROMPT + M_STEPS; pos++)
            assert_int_equal(pam_forward(c, &tok[0][pos], 1, pos, exact + (size_t)pos * nv, 0), PAM_OK);
        pam_ctx_free(c);
        size_t late = (size_t)(M_PROMPT + M_STEPS - 1) * nv;
        assert_true(memcmp(exact + late, ref + late, sizeof(float) * (size_t)nv) != 0);
    }
    for (int threads = 1; threads <= 2; threads++) {
        pam_pool *pool;
        assert_int_equal(pam_pool_create(threads, &pool), PAM_OK);
        pam_kvm *kvm = model_kvm(m, pool);
        pam_ctx *ctx[M_SEQ];
        pam_ctx_params p;
        pam_ctx_params_default(&p);
        p.n_ctx = M_PROMPT + M_STEPS;
        p.kvm = kvm;
        for (int s = 0; s < M_SEQ; s++) assert_int_equal(pam_ctx_create_ex(m, &p, pool, &ctx[s]), PAM_OK);
        int32_t next[M_SEQ] = {0};
        pam_ctx *bctx[M_SEQ * M_PROMPT];
        int32_t btok[M_SEQ * M_PROMPT], bpos[M_SEQ * M_PROMPT], bseq[M_SEQ * M_PROMPT];
        float *logits = malloc(sizeof(float) * (size_t)(M_SEQ * M_PROMPT) * nv);
        assert_non_null(logits);
        /* staggered: sequence s prefills its prompt in one chunk at step s, then decodes beside the others */
        for (int step = 0; step < M_SEQ + M_STEPS + 1; step++) {
            int n = 0;
            for (int s = 0; s < M_SEQ; s++) {
                if (step < s || next[s] >= M_PROMPT + M_STEPS) continue;
                int cnt = next[s] == 0 ? M_PROMPT : 1;
                for (int k = 0; k < cnt; k++, n++, next[s]++) {
                    bctx[n] = ctx[s];
                    btok[n] = tok[s][next[s]];
                    bpos[n] = next[s];
                    bseq[n] = s;
                }
            }
            if (n == 0) continue;
            assert_int_equal(pam_forward_batch(bctx, btok, bpos, n, logits), PAM_OK);
            for (int i = 0; i < n; i++)
                if (memcmp(logits + (size_t)i * nv, ref + (size_t)bseq[i] * per_seq + (size_t)bpos[i] * nv,
                           sizeof(float) * (size_t)nv) != 0)
                    fail_msg("seq %d pos %d (batch of %d, %d threads): sparse logits differ from the sequence alone",
                             bseq[i], bpos[i], n, threads);
        }
        for (int s = 0; s < M_SEQ; s++) pam_ctx_free(ctx[s]);
        pam_kvm_destroy(kvm);
        pam_pool_destroy(pool);
        free(logits);
    }
    free(ref);
    free(exact);
    pam_model_free(m);
}

/* ---- skipped ssd blocks are not read --------------------------------------- */

static void test_ssd_skipped_not_read(void **state) {
    (void)state;
    pam_kv_shape sh = {1, HKV, HD, BT};
    const int32_t n = 256; /* 32 blocks */
    const char *dir = pam_test_tmp("sparse_ssd");
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", dir, dir);
    assert_int_equal(system(cmd), 0);
    for (int mode = 0; mode < 3; mode++) { /* exact, mandatory blocks only, a budget */
        pam_tier *tiers[2];
        assert_int_equal(pam_tier_dram_open(&sh, 8 * block_bytes(), &tiers[0]), PAM_OK);
        /* ssd slots are 4 KiB-aligned: 64 of them */
        if (pam_tier_ssd_open(&sh, dir, 64 * 4096, &tiers[1]) != PAM_OK &&
            pam_tier_ssd_open_ex(&sh, dir, 64 * 4096, PAM_SSD_BUFFERED, &tiers[1]) != PAM_OK)
            fail_msg("ssd: %s", pam_last_error());
        pam_kv_sparse sp = {mode == 0 ? 0 : mode == 1 ? 1 : 64, 0.0f};
        /* static placement: no migration reads the ssd between steps */
        pam_kvm_config cfg = {.shape = sh, .tiers = tiers, .n_tiers = 2, .policy = PAM_KV_POLICY_PAM, .sparse = sp,
                              .sparse_allow = 1, .place = PAM_KV_PLACE_STATIC};
        pam_kvm *kvm;
        assert_int_equal(pam_kvm_create(&cfg, NULL, &kvm), PAM_OK);
        int32_t seq;
        assert_int_equal(pam_kvm_seq_create(kvm, &seq), PAM_OK);
        fill(kvm, seq, n, 4);
        /* sink and window in dram, everything else on the ssd */
        for (int32_t b = 0; b < 32; b++) {
            int want = b == 0 || b == 31 ? 0 : 1;
            if (pam_kvm_block_tier(kvm, seq, 0, b) != want)
                assert_int_equal(pam_kvm_migrate(kvm, seq, 0, b, want), PAM_OK);
        }
        uint64_t r0, r1;
        assert_int_equal(pam_tier_ssd_reads(tiers[1], &r0), PAM_OK);
        float q[NH * HD], o[NH * HD];
        uint64_t picked_ssd = 0;
        for (int step = 0; step < 4; step++) {
            make_q(q, 100 + (uint64_t)(mode == 2 ? 0 : step)); /* a stable hot set, as real locality */
            assert_int_equal(pam_kvm_attend(kvm, seq, 0, n, q, NH, 0.25f, o), PAM_OK);
            uint8_t pick[32];
            if (mode > 0) {
                assert_int_equal(pam_kvm_last_pick(kvm, seq, 0, pick, 32), 32);
                for (int b = 1; b < 31; b++) picked_ssd += pick[b];
            }
            assert_int_equal(pam_kvm_step_end(kvm), PAM_OK);
        }
        assert_int_equal(pam_tier_ssd_reads(tiers[1], &r1), PAM_OK);
        if (mode == 0) assert_true(r1 > r0);             /* exact reads the ssd */
        if (mode == 1) assert_int_equal(r1 - r0, 0);     /* nothing chosen there: no I/O at all */
        if (mode == 2) {
            assert_true(picked_ssd > 0 && picked_ssd < 4 * 30);
            assert_true(r1 - r0 <= picked_ssd); /* at most one read per chosen block */
        }
        pam_kvm_destroy(kvm);
    }
}

/* ---- eviction ------------------------------------------------------------- */

static void test_evict_keeps_sink_and_window(void **state) {
    (void)state;
    const int32_t cap = 6; /* blocks */
    pam_kvm *kvm = make_kvm(cap, 0, (pam_kv_sparse){0, 0}, 1, NULL);
    int32_t seq;
    assert_int_equal(pam_kvm_seq_create(kvm, &seq), PAM_OK);
    pam_test_rng r = {8};
    float k[ROW], v[ROW], q[NH * HD], o[NH * HD];
    make_q(q, 3);
    assert_int_equal(pam_kvm_reserve(kvm, seq, 20 * BT), PAM_OK); /* partial: stores past it evict */
    for (int32_t p = 0; p < 20 * BT; p++) {
        make_kv(&r, p, k, v);
        if (pam_kvm_store(kvm, seq, 0, p, k, v) != PAM_OK) fail_msg("store %d: %s", p, pam_last_error());
        assert_int_equal(pam_kvm_attend(kvm, seq, 0, p + 1, q, NH, 0.25f, o), PAM_OK);
        for (int i = 0; i < NH * HD; i++) assert_true(isfinite(o[i]));
        assert_int_equal(pam_kvm_step_end(kvm), PAM_OK);
        /* the sink and the blocks of the last BT positions are always there */
        assert_true(pam_kvm_block_tier(kvm, seq, 0, 0) == 0);
        int32_t lo = (p + 1 > BT ? p + 1 - BT : 0) / BT;
        for (int32_t b = lo; b <= p / BT; b++) assert_true(pam_kvm_block_tier(kvm, seq, 0, b) == 0);
    }
    pam_kvm_report rep;
    pam_kvm_report_get(kvm, &rep);
    assert_true(rep.evicted_blocks >= (uint64_t)(20 - cap));
    /* a store into an evicted block is refused */
    int32_t gone = -1;
    for (int32_t b = 1; b < 19 && gone < 0; b++)
        if (pam_kvm_block_tier(kvm, seq, 0, b) < 0) gone = b;
    assert_true(gone > 0);
    pam_kvm_destroy(kvm);

    /* two blocks: only the sink and the window, nothing may go: full */
    kvm = make_kvm(2, 0, (pam_kv_sparse){0, 0}, 1, NULL);
    assert_int_equal(pam_kvm_seq_create(kvm, &seq), PAM_OK);
    pam_status st = PAM_OK;
    int32_t p = 0;
    for (; p < 4 * BT && st == PAM_OK; p++) {
        make_kv(&r, p, k, v);
        st = pam_kvm_store(kvm, seq, 0, p, k, v);
    }
    assert_int_equal(st, PAM_ERR_FULL);
    assert_int_equal(p - 1, 2 * BT);
    pam_kvm_destroy(kvm);

    /* without --kv-evict, the same cache stops */
    kvm = make_kvm(cap, 0, (pam_kv_sparse){0, 0}, 0, NULL);
    assert_int_equal(pam_kvm_seq_create(kvm, &seq), PAM_OK);
    assert_int_equal(pam_kvm_reserve(kvm, seq, 20 * BT), PAM_ERR_FULL);
    pam_kvm_destroy(kvm);
}

/* ---- the fast bound used for ranking agrees with the exact one ----------- */

static void test_fast_bound(void **state) {
    (void)state;
    pam_test_rng r = {99};
    for (int trial = 0; trial < 400; trial++) {
        int hd = 1 + (int)(pam_test_rng_u64(&r) % 130);
        float q[130], mn[130], mx[130], k[130];
        pam_ksum_reset(mn, mx, hd);
        int nk = 1 + (int)(pam_test_rng_u64(&r) % 16);
        for (int i = 0; i < nk; i++) {
            for (int c = 0; c < hd; c++) k[c] = (float)(pam_test_rng_normal(&r) * (trial % 3 ? 1.0 : 30.0));
            pam_ksum_add(mn, mx, k, hd);
        }
        double abs_sum = 0;
        for (int c = 0; c < hd; c++) {
            q[c] = (float)pam_test_rng_normal(&r);
            abs_sum += fabs((double)q[c]) * fmax(fabs((double)mn[c]), fabs((double)mx[c]));
        }
        /* the corner of the summary that maximises q.k is the exact bound */
        for (int c = 0; c < hd; c++) k[c] = q[c] >= 0 ? mx[c] : mn[c];
        double worst = 0;
        for (int c = 0; c < hd; c++) worst += (double)q[c] * (double)k[c];
        float fast = pam_ksum_bound_fast(q, mn, mx, hd), exact = pam_ksum_bound(q, mn, mx, hd);
        assert_true(fabs((double)fast - worst) <= 1e-5 * abs_sum + 1e-30);
        assert_true(fabs((double)fast - (double)exact) <= 1e-5 * abs_sum + 1e-30);
    }
}

/* ---- parsing and bad input ------------------------------------------------- */

static void test_parse(void **state) {
    (void)state;
    pam_kv_sparse sp;
    assert_int_equal(pam_kv_sparse_parse("256", &sp), PAM_OK);
    assert_int_equal(sp.tokens, 256);
    assert_int_equal(pam_kv_sparse_parse("12.5%", &sp), PAM_OK);
    assert_true(sp.tokens == 0 && fabsf(sp.frac - 0.125f) < 1e-7f);
    assert_int_equal(pam_kv_sparse_tokens(&sp, 512), 64);
    assert_int_equal(pam_kv_sparse_tokens(&sp, 10), 2);
    assert_int_equal(pam_kv_sparse_parse("off", &sp), PAM_OK);
    assert_int_equal(pam_kv_sparse_tokens(&sp, 77), 77);
    const char *bad[] = {"", "x", "-3", "150%", "0%", "12.5", "25%%", "7 "};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(pam_kv_sparse_parse(bad[i], &sp), PAM_ERR_INVALID);
        assert_true(strlen(pam_last_error()) > 0);
    }
    /* a budget on a manager without summaries is refused */
    pam_kv_shape sh = {1, HKV, HD, BT};
    pam_tier *t;
    assert_int_equal(pam_tier_dram_open(&sh, 4 * block_bytes(), &t), PAM_OK);
    pam_kvm_config cfg = {.shape = sh, .tiers = &t, .n_tiers = 1, .policy = PAM_KV_POLICY_PAM};
    pam_kvm *kvm;
    assert_int_equal(pam_kvm_create(&cfg, NULL, &kvm), PAM_OK);
    int32_t seq;
    assert_int_equal(pam_kvm_seq_create(kvm, &seq), PAM_OK);
    pam_kv_sparse quarter = {0, 0.25f};
    assert_int_equal(pam_kvm_seq_set_sparse(kvm, seq, &quarter), PAM_ERR_INVALID);
    assert_int_equal(pam_kvm_seq_set_sparse(kvm, seq, NULL), PAM_OK);
    pam_kvm_destroy(kvm);
    assert_int_equal(pam_tier_dram_open(&sh, 4 * block_bytes(), &t), PAM_OK);
    cfg.sparse = (pam_kv_sparse){0, 2.0f};
    assert_int_equal(pam_kvm_create(&cfg, NULL, &kvm), PAM_ERR_INVALID);
    pam_tier_close(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_budget_identical),
        cmocka_unit_test(test_selection),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_model_batch_threads),
        cmocka_unit_test(test_ssd_skipped_not_read),
        cmocka_unit_test(test_evict_keeps_sink_and_window),
        cmocka_unit_test(test_fast_bound),
        cmocka_unit_test(test_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
