/* The KV types of the raw-KV tiers end to end:
 *   - attention through the KV manager gives the same bits for 1, 2 and 4
 *     threads, for every type (DESIGN.md §2.9);
 *   - greedy agreement and the worst relative logit error against the f32
 *     reference path (pam_ctx_create's own f32 KV) on the stories260K golden
 *     cases, teacher-forced as in
 *     test_kvq_agreement.c, with all KV in one dram tier of each type (the
 *     numbers the default KV type is chosen by; recorded in docs/KV.md; a
 *     block not yet full is f16 in the lossy types' dram tier);
 *   - --kv-tier specs with a type, and the errors for a type a shape cannot
 *     hold. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/threadpool.h"
#include "core/status.h"
#include "kv/kvm.h"
#include "kv/tier.h"
#include "model/model.h"
#include "util/test_util.h"

static pam_kvm *one_tier_kvm(const pam_kv_shape *s, pam_kv_type type, uint64_t bytes, pam_pool *pool) {
    pam_tier *t;
    if (pam_tier_dram_open_type(s, type, bytes, &t) != PAM_OK) fail_msg("dram: %s", pam_last_error());
    pam_kvm_config kc = {.shape = *s, .tiers = &t, .n_tiers = 1, .policy = PAM_KV_POLICY_PAM};
    pam_kvm *kvm;
    if (pam_kvm_create(&kc, pool, &kvm) != PAM_OK) fail_msg("kvm: %s", pam_last_error());
    return kvm;
}

static void test_threads_deterministic(void **state) {
    (void)state;
    const pam_kv_shape s = {.n_layer = 2, .n_head_kv = 2, .head_dim = 64, .block_tokens = 16};
    enum { N_HEAD = 8, N_POS = 1000 };
    float q[N_HEAD * 64], out[N_HEAD * 64], want[2][N_HEAD * 64];
    pam_test_rng r = {5};
    for (int i = 0; i < N_HEAD * 64; i++) q[i] = (float)pam_test_rng_normal(&r);
    for (int ty = 0; ty < PAM_KV_TYPE_COUNT; ty++) {
        const int threads[] = {1, 2, 4};
        for (int ti = 0; ti < 3; ti++) {
            pam_pool *pool;
            assert_int_equal(pam_pool_create(threads[ti], &pool), PAM_OK);
            pam_kvm *kvm = one_tier_kvm(&s, (pam_kv_type)ty, 16u << 20, pool);
            int32_t seq;
            assert_int_equal(pam_kvm_seq_create(kvm, &seq), PAM_OK);
            assert_int_equal(pam_kvm_fill_synthetic(kvm, seq, N_POS, 77), PAM_OK);
            for (int layer = 0; layer < 2; layer++) {
                /* a depth that ends inside a block */
                assert_int_equal(pam_kvm_attend(kvm, seq, layer, N_POS - 5, q, N_HEAD, 0.125f, out), PAM_OK);
                for (int i = 0; i < N_HEAD * 64; i++) assert_true(isfinite(out[i]));
                if (ti == 0) memcpy(want[layer], out, sizeof out);
                else if (memcmp(want[layer], out, sizeof out) != 0)
                    fail_msg("%s: %d threads differ from 1 at layer %d", pam_kv_type_name((pam_kv_type)ty),
                             threads[ti], layer);
            }
            pam_kvm_destroy(kvm);
            pam_pool_destroy(pool);
        }
    }
}

static int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static double rel_err(const float *a, const float *ref, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        num = fmax(num, fabs((double)a[i] - (double)ref[i]));
        den = fmax(den, fabs((double)ref[i]));
    }
    return num / (den > 0 ? den : 1);
}

static void run(pam_model *m, pam_pool *pool, pam_kvm *kvm, const int32_t *toks, int32_t n_pos, float *logits) {
    const int nv = pam_model_get_hparams(m)->n_vocab;
    pam_ctx_params p;
    pam_ctx_params_default(&p);
    p.n_ctx = n_pos;
    p.kv_type = PAM_KV_F32;
    p.kvm = kvm;
    pam_ctx *ctx;
    assert_int_equal(pam_ctx_create_ex(m, &p, pool, &ctx), PAM_OK);
    for (int32_t pos = 0; pos < n_pos; pos++) {
        if (pam_forward(ctx, &toks[pos], 1, pos, logits + (size_t)pos * nv, 0) != PAM_OK)
            fail_msg("forward at %d: %s", pos, pam_last_error());
        if (kvm) assert_int_equal(pam_kvm_step_end(kvm), PAM_OK);
    }
    pam_ctx_free(ctx);
}

/* Floors on agreement and ceilings on the worst relative logit error per
 * type, below the measured values in docs/KV.md with margin. f32 in a
 * shared dram tier is the reference path itself, up to the order of the merge. */
static const double k_min_agree[PAM_KV_TYPE_COUNT] = {1.0, 1.0, 0.99, 0.98, 0.75};
static const double k_max_err[PAM_KV_TYPE_COUNT] = {1e-5, 5e-3, 0.035, 0.09, 1.5};

static void test_logit_agreement(void **state) {
    (void)state;
    char gguf[4096];
    if (pam_test_stories260k("kvtypes-stories260K.gguf", gguf, sizeof gguf) != PAM_OK)
        fail_msg("convert: %s", pam_last_error());
    json_error_t err;
    json_t *ref = json_load_file(pam_test_shared("models/stories260K/reference-greedy.json"), 0, &err);
    assert_non_null(ref);
    pam_model *m;
    assert_int_equal(pam_model_load(gguf, &m), PAM_OK);
    const pam_model_hparams *hp = pam_model_get_hparams(m);
    const int nv = hp->n_vocab;
    pam_pool *pool;
    assert_int_equal(pam_pool_create(2, &pool), PAM_OK);
    const pam_kv_shape s = {hp->n_layer, hp->n_head_kv, hp->head_dim, 16};

    int n_cmp = 0, n_agree[PAM_KV_TYPE_COUNT] = {0};
    double worst[PAM_KV_TYPE_COUNT] = {0}, sum_err[PAM_KV_TYPE_COUNT] = {0};
    json_t *cases = json_object_get(ref, "cases");
    for (size_t ci = 0; ci < json_array_size(cases); ci++) {
        json_t *c = json_array_get(cases, ci);
        const int steps = (int)json_integer_value(json_object_get(c, "steps"));
        json_t *pids = json_object_get(c, "prompt_ids"), *nids = json_object_get(c, "next_ids");
        const int n_prompt = (int)json_array_size(pids), n_next = (int)json_array_size(nids);
        const int32_t n_pos = n_next < steps ? n_next + 1 : n_next;
        int32_t *toks = malloc(sizeof(int32_t) * (size_t)n_pos), *want = malloc(sizeof(int32_t) * (size_t)n_pos);
        float *exact = malloc(sizeof(float) * (size_t)n_pos * nv), *got = malloc(sizeof(float) * (size_t)n_pos * nv);
        assert_true(toks && want && exact && got);
        toks[0] = (int32_t)json_integer_value(json_array_get(pids, 0));
        for (int32_t i = 0; i < n_pos; i++) {
            want[i] = i < n_next ? (int32_t)json_integer_value(json_array_get(nids, (size_t)i)) : 1;
            if (i + 1 < n_pos) toks[i + 1] = want[i];
        }
        run(m, pool, NULL, toks, n_pos, exact);
        for (int ty = 0; ty < PAM_KV_TYPE_COUNT; ty++) {
            const uint64_t blocks = (uint64_t)hp->n_layer * (uint64_t)((n_pos + 15) / 16);
            pam_kvm *kvm = one_tier_kvm(&s, (pam_kv_type)ty, blocks * 2 * 16 * 4 * (uint64_t)hp->n_head_kv *
                                                                   (uint64_t)hp->head_dim, pool);
            run(m, pool, kvm, toks, n_pos, got);
            pam_kvm_destroy(kvm);
            for (int32_t pos = n_prompt - 1; pos < n_pos; pos++) {
                n_agree[ty] += argmax(got + (size_t)pos * nv, nv) == want[pos];
                double e = rel_err(got + (size_t)pos * nv, exact + (size_t)pos * nv, nv);
                worst[ty] = fmax(worst[ty], e);
                sum_err[ty] += e;
            }
        }
        n_cmp += n_pos - (n_prompt - 1);
        free(toks);
        free(want);
        free(exact);
        free(got);
    }
    printf("# stories260K, %zu cases teacher-forced on the reference tokens, %d generated positions, 16-token\n"
           "# blocks in one dram tier; agreement of argmax with the reference token, relative logit error\n"
           "# (max |l - l_f32| / max |l_f32| per position) against the f32 reference path\n",
           json_array_size(cases), n_cmp);
    printf("%-6s %9s %12s %12s\n", "type", "agreement", "mean error", "worst error");
    for (int ty = 0; ty < PAM_KV_TYPE_COUNT; ty++)
        printf("%-6s %8.2f%% %12.3g %12.3g\n", pam_kv_type_name((pam_kv_type)ty), 100.0 * n_agree[ty] / n_cmp,
               sum_err[ty] / n_cmp, worst[ty]);
    /* the lossy types really changed the logits */
    assert_true(worst[PAM_KV_BF16] > 1e-4 && worst[PAM_KV_Q8] > 1e-4 && worst[PAM_KV_Q4] > worst[PAM_KV_Q8]);
    for (int ty = 0; ty < PAM_KV_TYPE_COUNT; ty++)
        if (!((double)n_agree[ty] >= k_min_agree[ty] * n_cmp && worst[ty] <= k_max_err[ty]))
            fail_msg("%s: agreement %.2f%% (floor %.0f%%), worst rel error %.3g (ceiling %.3g)",
                     pam_kv_type_name((pam_kv_type)ty), 100.0 * n_agree[ty] / n_cmp, 100.0 * k_min_agree[ty],
                     worst[ty], k_max_err[ty]);
    pam_pool_destroy(pool);
    pam_model_free(m);
    json_decref(ref);
}

/* A block written whole and one written token by token (through the
 * tiers' f16 recent window until it fills) hold the same codes: a sequence
 * prefilled in one chunk and one decoded token by token see the same KV. */
static void test_whole_vs_token_by_token(void **state) {
    (void)state;
    const pam_kv_shape s = {.n_layer = 1, .n_head_kv = 2, .head_dim = 64, .block_tokens = 16};
    enum { ROW = 2 * 64, BT = 16 };
    float k[BT * ROW], v[BT * ROW], k1[BT * ROW], v1[BT * ROW], k2[BT * ROW], v2[BT * ROW], q[4 * 64];
    pam_test_rng r = {9};
    for (int i = 0; i < BT * ROW; i++) {
        k[i] = (float)pam_test_rng_normal(&r);
        v[i] = (float)pam_test_rng_normal(&r);
    }
    for (int i = 0; i < 4 * 64; i++) q[i] = (float)pam_test_rng_normal(&r);
    const pam_kv_type lossy[] = {PAM_KV_BF16, PAM_KV_Q8, PAM_KV_Q4};
    for (int ti = 0; ti < 3; ti++)
        for (int ssd = 0; ssd < 2; ssd++) {
            pam_tier *t;
            if (ssd)
                assert_int_equal(pam_tier_ssd_open_type(&s, lossy[ti], pam_test_tmp("kvtypes-ssd"), 1 << 20, 0, &t),
                                 PAM_OK);
            else
                assert_int_equal(pam_tier_dram_open_type(&s, lossy[ti], 1 << 20, &t), PAM_OK);
            uint32_t a, b;
            assert_int_equal(pam_tier_alloc(t, &a), PAM_OK);
            assert_int_equal(pam_tier_alloc(t, &b), PAM_OK);
            assert_int_equal(pam_tier_write(t, a, 0, BT, k, v), PAM_OK);
            for (int i = 0; i < BT; i++)
                assert_int_equal(pam_tier_write(t, b, i, 1, k + i * ROW, v + i * ROW), PAM_OK);
            assert_int_equal(pam_tier_read(t, a, BT, k1, v1), PAM_OK);
            assert_int_equal(pam_tier_read(t, b, BT, k2, v2), PAM_OK);
            assert_memory_equal(k1, k2, sizeof k1);
            assert_memory_equal(v1, v2, sizeof v1);
            float m[2][4], l[2][4], o[2][4 * 64];
            for (int i = 0; i < 2; i++) {
                pam_tier_block blk = {.slot = i ? b : a, .n_tokens = BT};
                pam_tier_attn req = {.q = q, .n_head = 4, .scale = 0.125f, .blocks = &blk, .n_blocks = 1,
                                     .m = m[i], .l = l[i], .o = o[i]};
                assert_int_equal(pam_tier_attend(t, &req), PAM_OK);
            }
            assert_memory_equal(o[0], o[1], sizeof o[0]);
            assert_memory_equal(l[0], l[1], sizeof l[0]);
            pam_tier_close(t);
        }
}

static void test_spec_types(void **state) {
    (void)state;
    const pam_kv_shape s = {.n_layer = 2, .n_head_kv = 2, .head_dim = 64, .block_tokens = 16};
    pam_tier *t;
    assert_int_equal(pam_tier_open_spec_type(&s, "dram:1MiB", PAM_KV_Q8, &t), PAM_OK);
    assert_string_equal(t->name, "dram:q8");
    assert_int_equal(t->block_bytes, 2 * pam_kvh_bytes(PAM_KV_Q8, 64, 16));
    assert_false(t->exact);
    pam_tier_close(t);
    assert_int_equal(pam_tier_open_spec_type(&s, "dram:1MiB", PAM_KV_F32, &t), PAM_OK);
    assert_string_equal(t->name, "dram:f32");
    assert_int_equal(t->block_bytes, 2 * 2 * 16 * 64 * 4);
    assert_true(t->exact);
    pam_tier_close(t);
    assert_int_equal(pam_tier_open_spec_type(&s, "dram:1MiB", PAM_KV_F16, &t), PAM_OK);
    assert_string_equal(t->name, "dram");
    pam_tier_close(t);
    char spec[4200];
    snprintf(spec, sizeof spec, "ssd:%s:1MiB", pam_test_tmp("kvtypes-ssd"));
    assert_int_equal(pam_tier_open_spec_type(&s, spec, PAM_KV_BF16, &t), PAM_OK);
    assert_non_null(strstr(t->name, ":bf16"));
    pam_tier_close(t);
    /* dramq keeps its own encoding */
    assert_int_equal(pam_tier_open_spec_type(&s, "dramq:int8:1MiB", PAM_KV_Q4, &t), PAM_OK);
    assert_string_equal(t->name, "dramq:int8");
    pam_tier_close(t);
    /* a head size the type cannot hold */
    const pam_kv_shape odd = {.n_layer = 1, .n_head_kv = 1, .head_dim = 12, .block_tokens = 16};
    assert_int_equal(pam_tier_dram_open_type(&odd, PAM_KV_Q4, 1 << 20, &t), PAM_ERR_INVALID);
    assert_null(t);
    assert_non_null(strstr(pam_last_error(), "q4"));
    assert_int_equal(pam_tier_ssd_open_type(&odd, PAM_KV_Q4, pam_test_tmp("kvtypes-ssd"), 1 << 20, 0, &t),
                     PAM_ERR_INVALID);
    assert_null(t);
    assert_int_equal(pam_tier_dram_open_type(&odd, PAM_KV_Q8, 1 << 20, &t), PAM_OK);
    pam_tier_close(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_types),
        cmocka_unit_test(test_whole_vs_token_by_token),
        cmocka_unit_test(test_threads_deterministic),
        cmocka_unit_test(test_logit_agreement),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
