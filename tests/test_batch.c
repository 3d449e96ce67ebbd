/* pam_forward_batch: several sequences in one step (decode tokens beside a
 * prefill chunk) give bit-identical logits to each sequence run alone, for
 * every thread count and KV type, whether each context has its own KV
 * manager or all share one (DESIGN.md §2.9). */
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "kv/kvm.h"
#include "model/model.h"
#include "util/ref_model.h"
#include "util/test_util.h"

#define N_SEQ 5
#define STEPS 12
#define PROMPT 9

typedef struct {
    int32_t tok[PROMPT + STEPS];
} seq_tokens;

/* A shared KV manager: one dram tier large enough that placement is the
 * same whether a sequence runs alone or beside others. kv ==
 * PAM_KV_TYPE_COUNT selects it; other kv values give every context its own
 * manager of that type. */
static pam_kvm *make_kvm(pam_model *m, pam_pool *pool) {
    const pam_model_hparams *hp = pam_model_get_hparams(m);
    pam_kv_shape shape = {hp->n_layer, hp->n_head_kv, hp->head_dim, 16};
    pam_tier *t;
    assert_int_equal(pam_tier_dram_open(&shape, 64ull << 20, &t), PAM_OK);
    pam_kvm_config cfg = {.shape = shape, .tiers = &t, .n_tiers = 1, .policy = PAM_KV_POLICY_PAM};
    pam_kvm *kvm;
    assert_int_equal(pam_kvm_create(&cfg, pool, &kvm), PAM_OK);
    return kvm;
}

static pam_ctx_params ctx_params(pam_kv_type kv, pam_kvm *kvm) {
    pam_ctx_params p;
    pam_ctx_params_default(&p);
    p.n_ctx = 64;
    if (kv != PAM_KV_TYPE_COUNT) p.kv_type = kv;
    p.kvm = kvm;
    return p;
}

/* Reference: each sequence alone, token by token; logits of every position. */
static void run_alone(pam_model *m, pam_pool *pool, pam_kv_type kv, const seq_tokens *s, float *out) {
    int nv = pam_model_get_hparams(m)->n_vocab;
    pam_ctx *c;
    pam_kvm *kvm = kv == PAM_KV_TYPE_COUNT ? make_kvm(m, pool) : NULL;
    pam_ctx_params p = ctx_params(kv, kvm);
    assert_int_equal(pam_ctx_create_ex(m, &p, pool, &c), PAM_OK);
    for (int pos = 0; pos < PROMPT + STEPS; pos++)
        assert_int_equal(pam_forward(c, &s->tok[pos], 1, pos, out + (size_t)pos * nv, 0), PAM_OK);
    pam_ctx_free(c);
    pam_kvm_destroy(kvm);
}

static void check_model(pam_model *m, pam_kv_type kv, int n_threads) {
    int nv = pam_model_get_hparams(m)->n_vocab;
    pam_pool *pool;
    assert_int_equal(pam_pool_create(n_threads, &pool), PAM_OK);
    seq_tokens seqs[N_SEQ];
    pam_test_rng rng = {7};
    for (int s = 0; s < N_SEQ; s++)
        for (int i = 0; i < PROMPT + STEPS; i++) seqs[s].tok[i] = (int32_t)(pam_test_rng_u64(&rng) % (uint64_t)nv);
    size_t per_seq = (size_t)(PROMPT + STEPS) * nv;
    float *ref = malloc(sizeof(float) * per_seq * N_SEQ);
    for (int s = 0; s < N_SEQ; s++) run_alone(m, pool, kv, &seqs[s], ref + s * per_seq);

    /* Sequences start staggered: sequence s begins at step s, prefilling its
     * whole prompt in one chunk inside the batch, then decodes one token per
     * step beside the others. */
    pam_ctx *ctx[N_SEQ];
    int32_t next[N_SEQ] = {0};
    pam_kvm *kvm = kv == PAM_KV_TYPE_COUNT ? make_kvm(m, pool) : NULL;
    pam_ctx_params p = ctx_params(kv, kvm);
    for (int s = 0; s < N_SEQ; s++) assert_int_equal(pam_ctx_create_ex(m, &p, pool, &ctx[s]), PAM_OK);
    pam_ctx *bctx[N_SEQ * PROMPT];
    int32_t btok[N_SEQ * PROMPT], bpos[N_SEQ * PROMPT], bseq[N_SEQ * PROMPT];
    float *logits = malloc(sizeof(float) * (size_t)(N_SEQ * PROMPT) * nv);
    for (int step = 0; step < N_SEQ + STEPS + 1; step++) {
        int n = 0;
        for (int s = 0; s < N_SEQ; s++) {
            if (step < s || next[s] >= PROMPT + STEPS) continue;
            int cnt = next[s] == 0 ? PROMPT : 1;
            for (int k = 0; k < cnt; k++) {
                bctx[n] = ctx[s];
                btok[n] = seqs[s].tok[next[s]];
                bpos[n] = next[s];
                bseq[n] = s;
                n++, next[s]++;
            }
        }
        if (n == 0) continue;
        assert_int_equal(pam_forward_batch(bctx, btok, bpos, n, logits), PAM_OK);
        for (int i = 0; i < n; i++) {
            const float *want = ref + (size_t)bseq[i] * per_seq + (size_t)bpos[i] * nv;
            if (memcmp(logits + (size_t)i * nv, want, sizeof(float) * (size_t)nv) != 0)
                fail_msg("seq %d pos %d (batch of %d, %d threads): logits differ from the sequence alone", bseq[i],
                         bpos[i], n, n_threads);
        }
    }
    for (int s = 0; s < N_SEQ; s++) {
        assert_int_equal(next[s], PROMPT + STEPS);
        pam_ctx_free(ctx[s]);
    }
    pam_kvm_destroy(kvm);
    free(logits);
    free(ref);
    pam_pool_destroy(pool);
}

static void test_batch_equals_alone(void **state) {
    ref_model_desc d = {.arch = "llama", .n_vocab = 300, .n_embd = 64, .n_layer = 2, .n_head = 4, .n_head_kv = 2,
                        .n_ff = 96, .n_ctx = 128, .rms_eps = 1e-5f, .rope_theta = 10000.0f,
                        .wtype = PAM_DT_Q8_0, .seed = 3};
    ref_weights *w;
    assert_int_equal(ref_model_generate(&d, &w), PAM_OK);
    const char *path = pam_test_tmp("batch-model.gguf");
    assert_int_equal(ref_model_write_gguf(&d, w, path), PAM_OK);
    ref_model_free(w);
    pam_model *m;
    assert_int_equal(pam_model_load(path, &m), PAM_OK);
    for (int t = 1; t <= 3; t++) {
        for (int kv = 0; kv < PAM_KV_TYPE_COUNT; kv++) check_model(m, (pam_kv_type)kv, t);
        check_model(m, PAM_KV_TYPE_COUNT, t); /* one shared KV manager */
    }
    pam_model_free(m);
}

static void test_batch_errors(void **state) {
    ref_model_desc d = {.arch = "llama", .n_vocab = 280, .n_embd = 32, .n_layer = 1, .n_head = 2, .n_head_kv = 1,
                        .n_ff = 64, .n_ctx = 64, .rms_eps = 1e-5f, .rope_theta = 10000.0f,
                        .wtype = PAM_DT_F32, .seed = 4};
    ref_weights *w;
    assert_int_equal(ref_model_generate(&d, &w), PAM_OK);
    const char *path = pam_test_tmp("batch-err.gguf");
    assert_int_equal(ref_model_write_gguf(&d, w, path), PAM_OK);
    ref_model_free(w);
    pam_model *m;
    assert_int_equal(pam_model_load(path, &m), PAM_OK);
    pam_ctx *a, *b;
    assert_int_equal(pam_ctx_create(m, 8, NULL, &a), PAM_OK);
    assert_int_equal(pam_ctx_create(m, 8, NULL, &b), PAM_OK);
    pam_ctx *cs[2] = {a, b};
    int32_t tok[2] = {5, 6}, pos[2] = {0, 8};
    assert_int_equal(pam_forward_batch(cs, tok, pos, 2, NULL), PAM_ERR_RANGE); /* b's context holds 8 */
    pos[1] = 0;
    tok[1] = 280;
    assert_int_equal(pam_forward_batch(cs, tok, pos, 2, NULL), PAM_ERR_RANGE); /* token outside vocab */
    tok[1] = 6;
    assert_int_equal(pam_forward_batch(cs, tok, pos, 0, NULL), PAM_ERR_INVALID);
    assert_int_equal(pam_forward_batch(cs, tok, pos, 2, NULL), PAM_OK);
    pam_ctx_free(a);
    pam_ctx_free(b);

    /* A context's own KV manager: a type or block size its tier cannot take
     * is refused with PAM_ERR_INVALID, and nothing is left allocated. */
    pam_ctx_params p;
    pam_ctx_params_default(&p);
    p.n_ctx = 8;
    pam_ctx *c = NULL;
    p.kv_type = PAM_KV_TYPE_COUNT;
    assert_int_equal(pam_ctx_create_ex(m, &p, NULL, &c), PAM_ERR_INVALID);
    assert_null(c);
    p.kv_type = PAM_KV_F16;
    p.kv_block = 1 << 20;
    assert_int_equal(pam_ctx_create_ex(m, &p, NULL, &c), PAM_ERR_INVALID);
    assert_null(c);
    /* The reference context reads f32 KV: twice the bytes of an f16 one. */
    pam_ctx *r32, *r16;
    p.kv_block = 0;
    assert_int_equal(pam_ctx_create(m, 8, NULL, &r32), PAM_OK);
    assert_int_equal(pam_ctx_create_ex(m, &p, NULL, &r16), PAM_OK);
    assert_true(pam_ctx_kv_bytes_at(r16, 5) > 0);
    assert_true(pam_ctx_kv_bytes_at(r32, 5) == 2 * pam_ctx_kv_bytes_at(r16, 5));
    pam_ctx_free(r32);
    pam_ctx_free(r16);
    pam_model_free(m);
}

/* pam_forward_batch_ex with a mask returns exactly the wanted rows of the
 * full batch, compacted, and leaves the caches in the same state. */
static void test_batch_want_mask(void **state) {
    ref_model_desc d = {.arch = "llama", .n_vocab = 290, .n_embd = 32, .n_layer = 1, .n_head = 2, .n_head_kv = 1,
                        .n_ff = 64, .n_ctx = 64, .rms_eps = 1e-5f, .rope_theta = 10000.0f,
                        .wtype = PAM_DT_Q8_0, .seed = 5};
    ref_weights *w;
    assert_int_equal(ref_model_generate(&d, &w), PAM_OK);
    const char *path = pam_test_tmp("batch-mask.gguf");
    assert_int_equal(ref_model_write_gguf(&d, w, path), PAM_OK);
    ref_model_free(w);
    pam_model *m;
    assert_int_equal(pam_model_load(path, &m), PAM_OK);
    enum { N = 7 };
    pam_ctx *a[2], *b[2];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pam_ctx_create(m, 16, NULL, &a[i]), PAM_OK);
        assert_int_equal(pam_ctx_create(m, 16, NULL, &b[i]), PAM_OK);
    }
    /* sequence 0 prefills 5 tokens, sequence 1 two */
    pam_ctx *ca[N] = {a[0], a[0], a[0], a[0], a[0], a[1], a[1]}, *cb[N] = {b[0], b[0], b[0], b[0], b[0], b[1], b[1]};
    int32_t tok[N] = {3, 9, 27, 81, 243, 11, 12}, pos[N] = {0, 1, 2, 3, 4, 0, 1};
    uint8_t want[N] = {0, 0, 1, 0, 1, 0, 1};
    float *full = malloc(sizeof(float) * N * 290), *part = malloc(sizeof(float) * N * 290);
    assert_int_equal(pam_forward_batch(ca, tok, pos, N, full), PAM_OK);
    assert_int_equal(pam_forward_batch_ex(cb, tok, pos, N, want, part), PAM_OK);
    int k = 0;
    for (int i = 0; i < N; i++)
        if (want[i]) assert_memory_equal(part + (size_t)(k++) * 290, full + (size_t)i * 290, sizeof(float) * 290);
    /* the next step agrees too: both sets of caches hold the same KV */
    int32_t t2[2] = {5, 6}, p2[2] = {5, 2};
    pam_ctx *na[2] = {a[0], a[1]}, *nb[2] = {b[0], b[1]};
    assert_int_equal(pam_forward_batch(na, t2, p2, 2, full), PAM_OK);
    assert_int_equal(pam_forward_batch(nb, t2, p2, 2, part), PAM_OK);
    assert_memory_equal(full, part, sizeof(float) * 2 * 290);
    for (int i = 0; i < 2; i++) {
        pam_ctx_free(a[i]);
        pam_ctx_free(b[i]);
    }
    free(full);
    free(part);
    pam_model_free(m);
}

/* pam_forward without all logits runs the last layer's feed-forward for
 * the last token only (none without logits): its logits equal the last row
 * of a pass with all logits, bit for bit, over several chunks, and the
 * caches end up the same (the next step agrees). */
static void test_forward_last_only(void **state) {
    for (int layers = 1; layers <= 2; layers++) {
        ref_model_desc d = {.arch = "llama", .n_vocab = 290, .n_embd = 32, .n_layer = layers, .n_head = 2,
                            .n_head_kv = 1, .n_ff = 64, .n_ctx = 320, .rms_eps = 1e-5f, .rope_theta = 10000.0f,
                            .wtype = PAM_DT_Q8_0, .seed = 7};
        ref_weights *w;
        assert_int_equal(ref_model_generate(&d, &w), PAM_OK);
        const char *path = pam_test_tmp("batch-last.gguf");
        assert_int_equal(ref_model_write_gguf(&d, w, path), PAM_OK);
        ref_model_free(w);
        pam_model *m;
        assert_int_equal(pam_model_load(path, &m), PAM_OK);
        enum { N = 300 }; /* two chunks */
        int32_t tok[N];
        for (int i = 0; i < N; i++) tok[i] = (i * 37 + 5) % 290;
        pam_ctx *c[3];
        for (int i = 0; i < 3; i++) assert_int_equal(pam_ctx_create(m, 320, NULL, &c[i]), PAM_OK);
        float *all = malloc(sizeof(float) * N * 290), *last = malloc(sizeof(float) * 290);
        float *next[3];
        assert_int_equal(pam_forward(c[0], tok, N, 0, all, 1), PAM_OK);
        assert_int_equal(pam_forward(c[1], tok, N, 0, last, 0), PAM_OK);
        assert_int_equal(pam_forward(c[2], tok, N, 0, NULL, 0), PAM_OK);
        assert_memory_equal(last, all + (size_t)(N - 1) * 290, sizeof(float) * 290);
        for (int i = 0; i < 3; i++) {
            next[i] = malloc(sizeof(float) * 290);
            int32_t t = 42;
            assert_int_equal(pam_forward(c[i], &t, 1, N, next[i], 0), PAM_OK);
        }
        assert_memory_equal(next[0], next[1], sizeof(float) * 290);
        assert_memory_equal(next[0], next[2], sizeof(float) * 290);
        for (int i = 0; i < 3; i++) {
            free(next[i]);
            pam_ctx_free(c[i]);
        }
        free(all);
        free(last);
        pam_model_free(m);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_equals_alone),
        cmocka_unit_test(test_batch_errors),
        cmocka_unit_test(test_batch_want_mask),
        cmocka_unit_test(test_forward_last_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
