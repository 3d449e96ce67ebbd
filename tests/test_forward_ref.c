/* The forward pass against a float64 reference on random Llama-family models.
 *
 * Each case writes a random model (tests/util/ref_model.c) to GGUF, loads it
 * with pam_model_load and compares pam_forward's logits with the reference
 * computed in double precision from the very values the file holds.
 *
 * Error measure, per position: max_i |logit_i - ref_i| / max_i |ref_i|
 * (ref_rel_err). F32 and F16 weights must agree within 1e-4: the runtime
 * computes on exactly the reference's weights with float32 activations, so
 * only float32 rounding separates them. Q8_0 gets 3e-2 against the plain
 * reference: its integer dot products quantise each 32-value block of
 * activations to 8 bits (relative step 1/127 of the block's largest value)
 * at every matrix product, an error the reference does not make and that
 * compounds through the layers (about 2e-2 on these models). To still catch
 * small mistakes, Q8_0 models are also held to 2e-3 against a reference that
 * quantises its activations the same way; only float32 rounding, and the odd
 * activation landing on the other side of a rounding step, remain.
 *
 * Besides accuracy the runtime promises determinism: a position's logits do
 * not depend on how tokens were batched (prefill vs one-by-one decode) nor on
 * the thread count, so those comparisons are bit-for-bit. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/threadpool.h"
#include "kernels/quant.h"
#include "model/gguf.h"
#include "model/model.h"
#include "util/ref_model.h"
#include "util/test_util.h"

#define N_TOK 20
#define N_PREFILL_MIXED 7
#define TOL_EXACT 1e-4
#define TOL_Q8_0 3e-2
#define TOL_Q8_0_ACT 2e-3

typedef struct fwd_case {
    const char *name;
    ref_model_desc d;
    double tol;
} fwd_case;

#define DESC(...) ((ref_model_desc){__VA_ARGS__})

static const fwd_case k_cases[] = {
    /* GQA ratio 1 (multi-head attention), untied output. */
    {"llama_mha",
     DESC(.arch = "llama", .n_vocab = 300, .n_embd = 32, .n_layer = 2, .n_head = 4, .n_head_kv = 4,
          .n_ff = 64, .n_ctx = 64, .wtype = PAM_DT_F32, .seed = 1, .rms_eps = 1e-5f,
          .rope_theta = 10000.0f),
     TOL_EXACT},
    /* GQA ratio 2, tied output. */
    {"llama_gqa2_tied",
     DESC(.arch = "llama", .n_vocab = 333, .n_embd = 64, .n_layer = 2, .n_head = 4, .n_head_kv = 2,
          .n_ff = 96, .n_ctx = 48, .tied_output = 1, .wtype = PAM_DT_F32, .seed = 2,
          .rms_eps = 1e-5f, .rope_theta = 10000.0f),
     TOL_EXACT},
    /* GQA ratio 4, three layers, a different rope base and eps. */
    {"mistral_gqa4",
     DESC(.arch = "mistral", .n_vocab = 512, .n_embd = 64, .n_layer = 3, .n_head = 8,
          .n_head_kv = 2, .n_ff = 128, .n_ctx = 32, .rms_eps = 1e-6f, .rope_theta = 1000000.0f,
          .wtype = PAM_DT_F32, .seed = 3),
     TOL_EXACT},
    /* Odd head count with a single kv head (multi-query). */
    {"llama_mqa_5heads",
     DESC(.arch = "llama", .n_vocab = 301, .n_embd = 80, .n_layer = 1, .n_head = 5, .n_head_kv = 1,
          .n_ff = 72, .n_ctx = 40, .wtype = PAM_DT_F32, .seed = 4, .rms_eps = 1e-5f,
          .rope_theta = 10000.0f),
     TOL_EXACT},
    /* head_dim != n_embd / n_head (key_length/value_length written). */
    {"llama_headdim",
     DESC(.arch = "llama", .n_vocab = 400, .n_embd = 48, .n_layer = 2, .n_head = 3, .n_head_kv = 1,
          .head_dim = 24, .n_ff = 80, .n_ctx = 64, .wtype = PAM_DT_F32, .seed = 5, .rms_eps = 1e-5f,
          .rope_theta = 10000.0f),
     TOL_EXACT},
    /* Llama-3 rope frequency factors. */
    {"llama_rope_freqs",
     DESC(.arch = "llama", .n_vocab = 320, .n_embd = 64, .n_layer = 2, .n_head = 4, .n_head_kv = 2,
          .n_ff = 96, .n_ctx = 64, .rope_theta = 500000.0f, .rope_freqs = 1, .wtype = PAM_DT_F32,
          .seed = 6, .rms_eps = 1e-5f),
     TOL_EXACT},
    /* qwen2: q/k/v bias, NeoX rope, tied. */
    {"qwen2_bias_tied",
     DESC(.arch = "qwen2", .n_vocab = 520, .n_embd = 96, .n_layer = 2, .n_head = 6, .n_head_kv = 2,
          .n_ff = 160, .n_ctx = 64, .rms_eps = 1e-6f, .rope_theta = 1000000.0f, .qkv_bias = 1,
          .tied_output = 1, .wtype = PAM_DT_F32, .seed = 7),
     TOL_EXACT},
    /* qwen2 untied, head_dim != n_embd / n_head, odd head count. */
    {"qwen2_bias_headdim",
     DESC(.arch = "qwen2", .n_vocab = 390, .n_embd = 40, .n_layer = 3, .n_head = 3, .n_head_kv = 1,
          .head_dim = 16, .n_ff = 56, .n_ctx = 32, .qkv_bias = 1, .wtype = PAM_DT_F32, .seed = 8,
          .rms_eps = 1e-5f, .rope_theta = 10000.0f),
     TOL_EXACT},
    /* F16 weights: exact values, float32 activations. */
    {"llama_f16",
     DESC(.arch = "llama", .n_vocab = 300, .n_embd = 64, .n_layer = 2, .n_head = 4, .n_head_kv = 2,
          .n_ff = 128, .n_ctx = 32, .wtype = PAM_DT_F16, .seed = 9, .rms_eps = 1e-5f,
          .rope_theta = 10000.0f),
     TOL_EXACT},
    {"qwen2_f16_tied",
     DESC(.arch = "qwen2", .n_vocab = 310, .n_embd = 64, .n_layer = 1, .n_head = 4, .n_head_kv = 1,
          .n_ff = 96, .n_ctx = 32, .qkv_bias = 1, .tied_output = 1, .wtype = PAM_DT_F16, .seed = 10,
          .rms_eps = 1e-5f, .rope_theta = 10000.0f),
     TOL_EXACT},
    /* Q8_0 weights (token_embd too): 8-bit activations, see the top comment. */
    {"llama_q8_0",
     DESC(.arch = "llama", .n_vocab = 300, .n_embd = 64, .n_layer = 2, .n_head = 4, .n_head_kv = 2,
          .n_ff = 128, .n_ctx = 32, .wtype = PAM_DT_Q8_0, .seed = 11, .rms_eps = 1e-5f,
          .rope_theta = 10000.0f),
     TOL_Q8_0},
    {"mistral_q8_0_tied",
     DESC(.arch = "mistral", .n_vocab = 280, .n_embd = 96, .n_layer = 2, .n_head = 3,
          .n_head_kv = 1, .n_ff = 160, .n_ctx = 32, .tied_output = 1, .wtype = PAM_DT_Q8_0,
          .seed = 12, .rms_eps = 1e-5f, .rope_theta = 10000.0f),
     TOL_Q8_0},
};
#define N_CASES ((int)(sizeof k_cases / sizeof k_cases[0]))

static void make_tokens(const ref_model_desc *d, int32_t *toks, int n) {
    pam_test_rng r = {d->seed * 7919 + 1};
    toks[0] = 1; /* BOS, as a real prompt starts */
    for (int i = 1; i < n; i++) toks[i] = (int32_t)(pam_test_rng_u64(&r) % (uint64_t)d->n_vocab);
    toks[n - 1] = d->n_vocab - 1; /* the highest id is valid */
}

static const char *write_case(const fwd_case *c, ref_weights **w_out) {
    ref_weights *w;
    assert_int_equal(ref_model_generate(&c->d, &w), PAM_OK);
    char name[96];
    snprintf(name, sizeof name, "fwd_%s.gguf", c->name);
    const char *path = pam_test_tmp(name);
    if (ref_model_write_gguf(&c->d, w, path) != PAM_OK) fail_msg("write: %s", pam_last_error());
    *w_out = w;
    return path;
}

static pam_model *load_ok(const char *path) {
    pam_model *m = NULL;
    pam_status st = pam_model_load(path, &m);
    if (st != PAM_OK) fail_msg("load %s: %s (%s)", path, pam_status_str(st), pam_last_error());
    return m;
}

static void check_rows(const char *what, const fwd_case *c, const float *got, const double *ref,
                       int pos0, int n, double *worst) {
    const int64_t V = c->d.n_vocab;
    for (int p = 0; p < n; p++) {
        double e = ref_rel_err(got + p * V, ref + (int64_t)(pos0 + p) * V, V);
        if (e > *worst) *worst = e;
        if (!(e <= c->tol))
            fail_msg("%s %s: position %d: relative error %.3g > %.3g", c->name, what, pos0 + p, e,
                     c->tol);
    }
}

static pam_ctx *ctx_ok(const pam_model *m, int32_t n_ctx, pam_pool *pool) {
    pam_ctx *ctx = NULL;
    pam_status st = pam_ctx_create(m, n_ctx, pool, &ctx);
    if (st != PAM_OK) fail_msg("ctx: %s (%s)", pam_status_str(st), pam_last_error());
    return ctx;
}

static void fwd_ok(pam_ctx *ctx, const int32_t *toks, int32_t n, int32_t pos, float *logits,
                   int all) {
    pam_status st = pam_forward(ctx, toks, n, pos, logits, all);
    if (st != PAM_OK)
        fail_msg("forward n=%d pos=%d: %s (%s)", n, pos, pam_status_str(st), pam_last_error());
}

/* Prefill, decode and mixed runs on 1, 2 and 3 threads; all must match the
 * reference, and all must be bit-identical to the single-thread prefill. */
static void run_case(const fwd_case *c) {
    ref_weights *w;
    const char *path = write_case(c, &w);
    pam_model *m = load_ok(path);
    const ref_model_desc *d = &w->d;
    const pam_model_hparams *hp = pam_model_get_hparams(m);
    assert_string_equal(hp->arch, d->arch);
    assert_int_equal(hp->n_vocab, d->n_vocab);
    assert_int_equal(hp->n_embd, d->n_embd);
    assert_int_equal(hp->n_layer, d->n_layer);
    assert_int_equal(hp->n_head, d->n_head);
    assert_int_equal(hp->n_head_kv, d->n_head_kv);
    assert_int_equal(hp->head_dim, d->head_dim);
    assert_int_equal(hp->n_ff, d->n_ff);
    assert_int_equal(hp->n_ctx_train, d->n_ctx);
    assert_int_equal(hp->rope_neox, strcmp(d->arch, "qwen2") == 0);

    const int64_t V = d->n_vocab;
    int32_t toks[N_TOK];
    make_tokens(d, toks, N_TOK);
    double *ref = malloc(sizeof(double) * (size_t)(N_TOK * V));
    float *base = malloc(sizeof(float) * (size_t)(N_TOK * V));
    float *got = malloc(sizeof(float) * (size_t)(N_TOK * V));
    assert_non_null(ref);
    assert_non_null(base);
    assert_non_null(got);
    ref_model_forward(w, toks, N_TOK, ref);
    double *refq = NULL;
    if (d->wtype == PAM_DT_Q8_0) {
        refq = malloc(sizeof(double) * (size_t)(N_TOK * V));
        assert_non_null(refq);
        ref_model_forward_ex(w, toks, N_TOK, 1, refq);
    }

    double worst = 0.0, worst_q = 0.0;
    for (int nt = 1; nt <= 3; nt++) {
        pam_pool *pool;
        assert_int_equal(pam_pool_create(nt, &pool), PAM_OK);
        float *prefill = nt == 1 ? base : got;

        /* (a) prefill with every position's logits */
        pam_ctx *ctx = ctx_ok(m, d->n_ctx, pool);
        fwd_ok(ctx, toks, N_TOK, 0, prefill, 1);
        check_rows("prefill", c, prefill, ref, 0, N_TOK, &worst);
        if (refq) {
            fwd_case cq = *c;
            cq.tol = TOL_Q8_0_ACT;
            check_rows("prefill vs reference with Q8_0 activations", &cq, prefill, refq, 0, N_TOK,
                       &worst_q);
        }
        if (nt > 1 && memcmp(prefill, base, sizeof(float) * (size_t)(N_TOK * V)))
            fail_msg("%s: prefill on %d threads differs from 1 thread", c->name, nt);
        pam_ctx_free(ctx);

        /* (b) decode one token at a time in a fresh context */
        ctx = ctx_ok(m, d->n_ctx, pool);
        for (int p = 0; p < N_TOK; p++) {
            fwd_ok(ctx, &toks[p], 1, p, got + p * V, 0);
            check_rows("decode", c, got + p * V, ref, p, 1, &worst);
            if (memcmp(got + p * V, base + p * V, sizeof(float) * (size_t)V))
                fail_msg("%s: decode (%d threads) at position %d differs from prefill", c->name, nt,
                         p);
        }
        pam_ctx_free(ctx);

        /* (c) prefill a prompt (last logits only), then decode the rest */
        ctx = ctx_ok(m, d->n_ctx, pool);
        fwd_ok(ctx, toks, N_PREFILL_MIXED, 0, got, 0);
        for (int p = N_PREFILL_MIXED; p < N_TOK; p++)
            fwd_ok(ctx, &toks[p], 1, p, got + (p - N_PREFILL_MIXED + 1) * V, 0);
        check_rows("mixed", c, got, ref, N_PREFILL_MIXED - 1, N_TOK - N_PREFILL_MIXED + 1, &worst);
        if (memcmp(got, base + (N_PREFILL_MIXED - 1) * V,
                   sizeof(float) * (size_t)((N_TOK - N_PREFILL_MIXED + 1) * V)))
            fail_msg("%s: mixed prefill/decode (%d threads) differs from prefill", c->name, nt);

        /* Re-running a suffix overwrites the cache beyond pos: same answer. */
        fwd_ok(ctx, toks + 10, N_TOK - 10, 10, got, 1);
        if (memcmp(got, base + 10 * V, sizeof(float) * (size_t)((N_TOK - 10) * V)))
            fail_msg("%s: recomputing positions 10.. differs", c->name);
        pam_ctx_free(ctx);
        pam_pool_destroy(pool);
    }
    print_message("  %-20s worst relative error %.3g (tolerance %.0e)\n", c->name, worst, c->tol);
    if (refq)
        print_message("  %-20s with Q8_0 activations in the reference: %.3g (tolerance %.0e)\n", "",
                      worst_q, TOL_Q8_0_ACT);
    free(refq);
    free(ref);
    free(base);
    free(got);
    pam_model_free(m);
    ref_model_free(w);
    remove(path);
}

static void test_forward_cases(void **state) {
    for (int i = 0; i < N_CASES; i++) run_case(&k_cases[i]);
}

/* Long enough for attention to span several of the KV cache's fixed-size
 * chunks (256 positions), fed whole, in uneven pieces and one by one. */
static void test_long_context(void **state) {
    const fwd_case c = {"llama_long",
                        DESC(.arch = "llama", .n_vocab = 300, .n_embd = 32, .n_layer = 2,
                             .n_head = 4, .n_head_kv = 2, .n_ff = 64, .n_ctx = 640,
                             .wtype = PAM_DT_F32, .seed = 21, .rms_eps = 1e-5f,
                             .rope_theta = 10000.0f),
                        TOL_EXACT};
    enum { N = 600 };
    ref_weights *w;
    const char *path = write_case(&c, &w);
    pam_model *m = load_ok(path);
    const int64_t V = w->d.n_vocab;
    int32_t *toks = malloc(sizeof(int32_t) * N);
    double *ref = malloc(sizeof(double) * (size_t)(N * V));
    float *base = malloc(sizeof(float) * (size_t)(N * V));
    float *got = malloc(sizeof(float) * (size_t)(N * V));
    assert_non_null(toks);
    assert_non_null(ref);
    assert_non_null(base);
    assert_non_null(got);
    make_tokens(&w->d, toks, N);
    ref_model_forward(w, toks, N, ref);

    double worst = 0.0;
    pam_pool *pool;
    assert_int_equal(pam_pool_create(2, &pool), PAM_OK);
    pam_ctx *ctx = ctx_ok(m, 0, pool); /* 0: the model's context length */
    assert_int_equal(pam_ctx_n_ctx(ctx), 640);
    fwd_ok(ctx, toks, N, 0, base, 1);
    check_rows("long prefill", &c, base, ref, 0, N, &worst);
    pam_ctx_free(ctx);

    /* pieces of 257 and 250 tokens, then single tokens */
    ctx = ctx_ok(m, 640, pool);
    fwd_ok(ctx, toks, 257, 0, got, 1);
    fwd_ok(ctx, toks + 257, 250, 257, got + 257 * V, 1);
    for (int p = 507; p < N; p++) fwd_ok(ctx, toks + p, 1, p, got + p * V, 0);
    if (memcmp(got, base, sizeof(float) * (size_t)(N * V)))
        fail_msg("long context: pieces and single tokens differ from one prefill");
    pam_ctx_free(ctx);
    pam_pool_destroy(pool);

    /* one thread, no pool */
    ctx = ctx_ok(m, 640, NULL);
    fwd_ok(ctx, toks, N, 0, got, 1);
    if (memcmp(got, base, sizeof(float) * (size_t)(N * V)))
        fail_msg("long context: no pool differs from 2 threads");
    pam_ctx_free(ctx);
    print_message("  %-20s worst relative error %.3g (tolerance %.0e)\n", c.name, worst, c.tol);

    free(toks);
    free(ref);
    free(base);
    free(got);
    pam_model_free(m);
    ref_model_free(w);
    remove(path);
}

/* The reference really is sensitive to what the tests rely on: a wrong rope
 * pairing, kv grouping or missing bias would change the logits far beyond
 * the tolerance. Otherwise a runtime sharing such a mistake could pass. */
static void test_reference_sensitivity(void **state) {
    const fwd_case *c = &k_cases[6]; /* qwen2: bias, NeoX, GQA 3 */
    ref_weights *w;
    assert_int_equal(ref_model_generate(&c->d, &w), PAM_OK);
    const int64_t V = w->d.n_vocab;
    int32_t toks[N_TOK];
    make_tokens(&w->d, toks, N_TOK);
    double *ref = malloc(sizeof(double) * (size_t)(N_TOK * V));
    double *alt = malloc(sizeof(double) * (size_t)(N_TOK * V));
    float *altf = malloc(sizeof(float) * (size_t)V);
    assert_non_null(ref);
    assert_non_null(alt);
    assert_non_null(altf);
    ref_model_forward(w, toks, N_TOK, ref);

    /* "normal" rope instead of NeoX */
    w->d.arch = "llama";
    ref_model_forward(w, toks, N_TOK, alt);
    w->d.arch = c->d.arch;
    for (int64_t i = 0; i < V; i++) altf[i] = (float)alt[(N_TOK - 1) * V + i];
    assert_true(ref_rel_err(altf, ref + (N_TOK - 1) * V, V) > 100 * TOL_EXACT);

    /* no q bias */
    double *bq = w->layers[0].bq.val;
    w->layers[0].bq.val = NULL;
    ref_model_forward(w, toks, N_TOK, alt);
    w->layers[0].bq.val = bq;
    for (int64_t i = 0; i < V; i++) altf[i] = (float)alt[(N_TOK - 1) * V + i];
    assert_true(ref_rel_err(altf, ref + (N_TOK - 1) * V, V) > 100 * TOL_EXACT);

    /* kv heads taken in the other order */
    w->d.n_head_kv = w->d.n_head;
    int64_t E = w->d.n_embd;
    for (int l = 0; l < w->d.n_layer; l++) {
        /* widen k and v to one head per query head, pairing query head h with
         * kv head h % n_head_kv instead of h / group */
        ref_layer *L = &w->layers[l];
        ref_tensor *kv[2] = {&L->wk, &L->wv}, *b[2] = {&L->bk, &L->bv};
        for (int j = 0; j < 2; j++) {
            double *nv = malloc(sizeof(double) * (size_t)(w->d.n_head * w->d.head_dim * E));
            double *nb = malloc(sizeof(double) * (size_t)(w->d.n_head * w->d.head_dim));
            assert_non_null(nv);
            assert_non_null(nb);
            for (int h = 0; h < w->d.n_head; h++) {
                int src = h % c->d.n_head_kv;
                memcpy(nv + (int64_t)h * w->d.head_dim * E, kv[j]->val + src * w->d.head_dim * E,
                       sizeof(double) * (size_t)(w->d.head_dim * E));
                memcpy(nb + (int64_t)h * w->d.head_dim, b[j]->val + src * w->d.head_dim,
                       sizeof(double) * (size_t)w->d.head_dim);
            }
            free(kv[j]->val);
            free(b[j]->val);
            kv[j]->val = nv;
            b[j]->val = nb;
            kv[j]->ne[1] = (int64_t)w->d.n_head * w->d.head_dim;
        }
    }
    ref_model_forward(w, toks, N_TOK, alt);
    for (int64_t i = 0; i < V; i++) altf[i] = (float)alt[(N_TOK - 1) * V + i];
    assert_true(ref_rel_err(altf, ref + (N_TOK - 1) * V, V) > 100 * TOL_EXACT);
    w->d.n_head_kv = c->d.n_head_kv; /* ref_model_free walks layers only */
    free(ref);
    free(alt);
    free(altf);
    ref_model_free(w);
}

/* Self-checks of the reference's building blocks. */
static void test_reference_blocks(void **state) {
    pam_test_rng r = {99};
    double x[64], y[64], wt[64];
    /* softmax: sums to one, order kept, shift invariant */
    for (int i = 0; i < 17; i++) x[i] = y[i] = 5.0 * pam_test_rng_normal(&r);
    for (int i = 0; i < 17; i++) y[i] += 1000.0;
    ref_softmax(x, 17);
    ref_softmax(y, 17);
    double s = 0.0;
    for (int i = 0; i < 17; i++) {
        s += x[i];
        assert_true(x[i] > 0.0);
        assert_true(fabs(x[i] - y[i]) < 1e-12);
    }
    assert_true(fabs(s - 1.0) < 1e-12);

    /* rmsnorm with unit weights gives unit RMS (eps 0) */
    for (int i = 0; i < 48; i++) {
        x[i] = 3.0 * pam_test_rng_normal(&r);
        wt[i] = 1.0;
    }
    ref_rmsnorm(x, wt, 48, 0.0, y);
    s = 0.0;
    for (int i = 0; i < 48; i++) s += y[i] * y[i];
    assert_true(fabs(s / 48 - 1.0) < 1e-12);

    /* rope: identity at position 0; rotation keeps each pair's norm; the
     * score q.k depends only on the distance of the two positions. */
    double freq_div[16];
    for (int i = 0; i < 16; i++) freq_div[i] = pam_test_rng_uniform(&r, 1.0, 8.0);
    for (int neox = 0; neox <= 1; neox++) {
        for (int fd = 0; fd <= 1; fd++) {
            const double *div = fd ? freq_div : NULL;
            double q[32], k[32], q0[32], q1[32], k1[32];
            for (int i = 0; i < 32; i++) {
                q[i] = pam_test_rng_normal(&r);
                k[i] = pam_test_rng_normal(&r);
            }
            memcpy(q0, q, sizeof q);
            ref_rope(q0, 32, 0, 10000.0, neox, div);
            assert_memory_equal(q0, q, sizeof q);
            double dots[2];
            for (int t = 0; t < 2; t++) {
                memcpy(q1, q, sizeof q);
                memcpy(k1, k, sizeof k);
                ref_rope(q1, 32, 7 + 13 * t, 10000.0, neox, div);
                ref_rope(k1, 32, 3 + 13 * t, 10000.0, neox, div);
                dots[t] = 0.0;
                for (int i = 0; i < 32; i++) dots[t] += q1[i] * k1[i];
                for (int i = 0; i < 16; i++) {
                    int a = neox ? i : 2 * i, b = neox ? i + 16 : 2 * i + 1;
                    assert_true(fabs(q1[a] * q1[a] + q1[b] * q1[b] - q[a] * q[a] - q[b] * q[b]) <
                                1e-12);
                }
            }
            assert_true(fabs(dots[0] - dots[1]) < 1e-10);
        }
    }
    /* pairing: at position 1 with theta 1 every pair turns by 1 radian */
    double v[4] = {1, 0, 0, 1};
    ref_rope(v, 4, 1, 1.0, 0, NULL);
    assert_true(fabs(v[0] - cos(1.0)) < 1e-15 && fabs(v[1] - sin(1.0)) < 1e-15);
    assert_true(fabs(v[2] + sin(1.0)) < 1e-15 && fabs(v[3] - cos(1.0)) < 1e-15);
    double u[4] = {1, 0, 0, 1};
    ref_rope(u, 4, 1, 1.0, 1, NULL); /* NeoX pairs (0,2) and (1,3) */
    assert_true(fabs(u[0] - cos(1.0)) < 1e-15 && fabs(u[2] - sin(1.0)) < 1e-15);
    assert_true(fabs(u[1] + sin(1.0)) < 1e-15 && fabs(u[3] - cos(1.0)) < 1e-15);

    /* error measure */
    float a[3] = {1.0f, -2.0f, 4.0f};
    double b[3] = {1.0, -2.0, 4.5};
    assert_true(fabs(ref_rel_err(a, b, 3) - 0.5 / 4.5) < 1e-12);
    a[1] = NAN;
    assert_true(isinf(ref_rel_err(a, b, 3)));
}

/* The reference forward is causal and batch independent: a prefix's logits
 * do not change when tokens are appended; with attention and FFN outputs
 * zeroed the logits are just the output head on the normed embedding. */
static void test_reference_forward_props(void **state) {
    ref_weights *w;
    const fwd_case *c = &k_cases[1]; /* llama, GQA 2, tied */
    assert_int_equal(ref_model_generate(&c->d, &w), PAM_OK);
    const int64_t V = w->d.n_vocab, E = w->d.n_embd;
    int32_t toks[N_TOK];
    make_tokens(&w->d, toks, N_TOK);
    double *full = malloc(sizeof(double) * (size_t)(N_TOK * V));
    double *part = malloc(sizeof(double) * (size_t)(N_TOK * V));
    assert_non_null(full);
    assert_non_null(part);
    ref_model_forward(w, toks, N_TOK, full);
    ref_model_forward(w, toks, 9, part);
    assert_memory_equal(full, part, sizeof(double) * (size_t)(9 * V));
    /* logits are well spread: not degenerate, not huge */
    double mx = 0.0;
    for (int64_t i = 0; i < N_TOK * V; i++) mx = fmax(mx, fabs(full[i]));
    assert_true(mx > 0.5 && mx < 100.0);

    for (int l = 0; l < w->d.n_layer; l++) {
        memset(w->layers[l].wo.val, 0, sizeof(double) * (size_t)(w->layers[l].wo.ne[0] * E));
        memset(w->layers[l].down.val, 0, sizeof(double) * (size_t)(w->layers[l].down.ne[0] * E));
    }
    ref_model_forward(w, toks, N_TOK, full);
    double h[64];
    for (int p = 0; p < N_TOK; p++) {
        ref_rmsnorm(w->tok_embd.val + toks[p] * E, w->output_norm.val, E, w->d.rms_eps, h);
        for (int64_t t = 0; t < V; t++) {
            double s = 0.0;
            for (int64_t i = 0; i < E; i++) s += w->tok_embd.val[t * E + i] * h[i];
            assert_true(fabs(s - full[p * V + t]) < 1e-12);
        }
    }
    free(full);
    free(part);
    ref_model_free(w);
}

/* The written file reads back with the expected metadata and tensor bytes,
 * and the values the reference uses are what pam_dequantize_row makes of
 * those bytes. */
static void test_gguf_roundtrip(void **state) {
    const int which[] = {7, 5, 9, 11}; /* qwen2 headdim, rope_freqs, F16, Q8_0 tied */
    for (size_t ci = 0; ci < sizeof which / sizeof which[0]; ci++) {
        const fwd_case *c = &k_cases[which[ci]];
        ref_weights *w;
        const char *path = write_case(c, &w);
        const ref_model_desc *d = &w->d;
        pam_gguf *g;
        assert_int_equal(pam_gguf_open(path, &g), PAM_OK);
        pam_gguf_str s;
        assert_int_equal(pam_gguf_get_str(g, "general.architecture", &s), PAM_OK);
        assert_int_equal(s.len, strlen(d->arch));
        assert_memory_equal(s.ptr, d->arch, s.len);
        char key[96];
        uint64_t u;
        double f;
        struct {
            const char *k;
            uint64_t v;
        } ints[] = {{"context_length", (uint64_t)d->n_ctx},
                    {"embedding_length", (uint64_t)d->n_embd},
                    {"feed_forward_length", (uint64_t)d->n_ff},
                    {"block_count", (uint64_t)d->n_layer},
                    {"attention.head_count", (uint64_t)d->n_head},
                    {"attention.head_count_kv", (uint64_t)d->n_head_kv},
                    {"rope.dimension_count", (uint64_t)d->head_dim},
                    {"vocab_size", (uint64_t)d->n_vocab}};
        for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
            snprintf(key, sizeof key, "%s.%s", d->arch, ints[i].k);
            assert_int_equal(pam_gguf_get_u64(g, key, &u), PAM_OK);
            assert_int_equal(u, ints[i].v);
        }
        snprintf(key, sizeof key, "%s.attention.key_length", d->arch);
        if (d->head_dim * d->n_head != d->n_embd) {
            assert_int_equal(pam_gguf_get_u64(g, key, &u), PAM_OK);
            assert_int_equal(u, (uint64_t)d->head_dim);
        } else {
            assert_null(pam_gguf_find(g, key));
        }
        snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", d->arch);
        assert_int_equal(pam_gguf_get_f64(g, key, &f), PAM_OK);
        assert_true(f == (double)d->rms_eps);
        snprintf(key, sizeof key, "%s.rope.freq_base", d->arch);
        assert_int_equal(pam_gguf_get_f64(g, key, &f), PAM_OK);
        assert_true(f == (double)d->rope_theta);

        const pam_gguf_value *toks;
        assert_int_equal(pam_gguf_get_arr(g, "tokenizer.ggml.tokens", PAM_GGUF_STRING, &toks),
                         PAM_OK);
        assert_int_equal(toks->v.arr.n, (uint64_t)d->n_vocab);
        assert_int_equal(toks->v.arr.items[1].v.str.len, 3);
        assert_memory_equal(toks->v.arr.items[1].v.str.ptr, "<s>", 3);
        assert_memory_equal(toks->v.arr.items[3 + 0x41].v.str.ptr, "<0x41>", 6);
        for (int64_t i = 259; i < d->n_vocab; i++) /* pieces are distinct */
            for (int64_t j = 259; j < i; j++) {
                const pam_gguf_str *a = &toks->v.arr.items[i].v.str,
                                   *b = &toks->v.arr.items[j].v.str;
                assert_false(a->len == b->len && !memcmp(a->ptr, b->ptr, a->len));
            }

        int64_t n_expect = 1 + 9 * (int64_t)d->n_layer + 1 + !d->tied_output +
                           (d->qkv_bias ? 3 * d->n_layer : 0) + !!d->rope_freqs;
        assert_int_equal(pam_gguf_n_tensors(g), n_expect);
        const ref_tensor *check[] = {
            &w->tok_embd,     &w->layers[0].wq, &w->layers[d->n_layer - 1].down,
            &w->layers[0].bk, &w->rope_freqs,   &w->output};
        for (size_t i = 0; i < sizeof check / sizeof check[0]; i++) {
            const ref_tensor *t = check[i];
            if (!t->data) continue;
            const pam_gguf_tensor *gt = pam_gguf_find_tensor(g, t->name);
            assert_non_null(gt);
            assert_int_equal(gt->n_dims, t->n_dims);
            assert_int_equal(gt->ne[0], t->ne[0]);
            assert_int_equal(gt->ne[1], t->ne[1]);
            assert_int_equal(gt->type, t->type);
            assert_int_equal(gt->n_bytes, t->n_bytes);
            assert_memory_equal(gt->data, t->data, t->n_bytes);
            /* values as the kernels see them */
            size_t row_bytes;
            assert_int_equal(pam_dtype_row_bytes(t->type, t->ne[0], &row_bytes), PAM_OK);
            float *row = malloc(sizeof(float) * (size_t)t->ne[0]);
            assert_non_null(row);
            for (int64_t rr = 0; rr < t->ne[1]; rr++) {
                pam_dequantize_row(t->type, (const char *)gt->data + rr * (int64_t)row_bytes, row,
                                   t->ne[0]);
                for (int64_t cc = 0; cc < t->ne[0]; cc++)
                    assert_true((double)row[cc] == t->val[rr * t->ne[0] + cc]);
            }
            free(row);
        }
        if (d->tied_output)
            assert_null(pam_gguf_find_tensor(g, "output.weight"));
        else
            assert_non_null(pam_gguf_find_tensor(g, "output.weight"));
        pam_gguf_close(g);
        ref_model_free(w);
        remove(path);
    }
}

/* Tokenizer metadata is usable by the runtime's tokenizer. */
static void test_vocab_loads(void **state) {
    ref_weights *w;
    const fwd_case *c = &k_cases[0];
    const char *path = write_case(c, &w);
    pam_model *m = load_ok(path);
    const pam_tokenizer *tk = pam_model_tokenizer(m);
    assert_non_null(tk);
    assert_int_equal(pam_tokenizer_kind(tk), PAM_TOK_SPM);
    assert_int_equal(pam_tokenizer_n_vocab(tk), c->d.n_vocab);
    assert_int_equal(pam_tokenizer_bos(tk), 1);
    assert_int_equal(pam_tokenizer_eos(tk), 2);
    assert_string_equal(pam_tokenizer_piece(tk, 3 + 'A'), "<0x41>");
    pam_model_free(m);
    ref_model_free(w);
    remove(path);
}

static void expect_load_error(const char *path, pam_status want, const char *needle) {
    pam_model *m = NULL;
    pam_status st = pam_model_load(path, &m);
    if (st == PAM_OK) {
        pam_model_free(m);
        fail_msg("%s loaded; expected %s", path, pam_status_str(want));
    }
    if (want != PAM_OK && st != want)
        fail_msg("%s: got %s (%s), expected %s", path, pam_status_str(st), pam_last_error(),
                 pam_status_str(want));
    if (needle && !strstr(pam_last_error(), needle))
        fail_msg("%s: message \"%s\" does not name %s", path, pam_last_error(), needle);
}

static void test_load_errors(void **state) {
    ref_model_desc d = k_cases[0].d;
    ref_weights *w;
    assert_int_equal(ref_model_generate(&d, &w), PAM_OK);
    const char *path = pam_test_tmp("fwd_bad.gguf");
    char p[4096];
    snprintf(p, sizeof p, "%s", path);

    /* an architecture we do not run */
    ref_model_desc bad = d;
    bad.arch = "gpt-j";
    assert_int_equal(ref_model_write_gguf(&bad, w, p), PAM_OK);
    expect_load_error(p, PAM_ERR_UNSUPPORTED, "gpt-j");

    /* a missing tensor: any failure, but the message names the tensor */
    w->layers[0].up.omit = 1;
    assert_int_equal(ref_model_write_gguf(&d, w, p), PAM_OK);
    expect_load_error(p, PAM_OK, "blk.0.ffn_up.weight");
    w->layers[0].up.omit = 0;

    /* a tensor with the wrong shape (same size, transposed) */
    int64_t ne0 = w->layers[1].gate.ne[0];
    w->layers[1].gate.ne[0] = w->layers[1].gate.ne[1];
    w->layers[1].gate.ne[1] = ne0;
    assert_int_equal(ref_model_write_gguf(&d, w, p), PAM_OK);
    expect_load_error(p, PAM_ERR_FORMAT, "blk.1.ffn_gate.weight");
    w->layers[1].gate.ne[1] = w->layers[1].gate.ne[0];
    w->layers[1].gate.ne[0] = ne0;

    /* an output head one row short of n_vocab */
    int64_t one = w->output.ne[1];
    w->output.ne[1] = one - 1;
    w->output.n_bytes = (size_t)(w->output.ne[0] * w->output.ne[1]) * 4;
    assert_int_equal(ref_model_write_gguf(&d, w, p), PAM_OK);
    expect_load_error(p, PAM_ERR_FORMAT, "output.weight");
    w->output.ne[1] = one;
    w->output.n_bytes = (size_t)(w->output.ne[0] * one) * 4;

    /* the intact file loads */
    assert_int_equal(ref_model_write_gguf(&d, w, p), PAM_OK);
    pam_model *m = load_ok(p);
    pam_model_free(m);
    remove(p);
    ref_model_free(w);
}

/* Range errors leave the cache as it was: decoding continues correctly. */
static void test_forward_errors(void **state) {
    const fwd_case *c = &k_cases[1];
    ref_weights *w;
    const char *path = write_case(c, &w);
    pam_model *m = load_ok(path);
    const int32_t V = w->d.n_vocab, n_ctx = 16;
    int32_t toks[N_TOK];
    make_tokens(&w->d, toks, N_TOK);
    double *ref = malloc(sizeof(double) * (size_t)(n_ctx * V));
    float *got = malloc(sizeof(float) * (size_t)(n_ctx * V));
    assert_non_null(ref);
    assert_non_null(got);
    ref_model_forward(w, toks, n_ctx, ref);

    pam_ctx *ctx = ctx_ok(m, n_ctx, NULL);
    assert_int_equal(pam_ctx_n_ctx(ctx), n_ctx);
    fwd_ok(ctx, toks, 5, 0, got, 0);
    check_rows("errors", c, got, ref, 4, 1, &(double){0});

    int32_t bad[3] = {toks[5], toks[6], V}; /* last id out of range */
    assert_int_equal(pam_forward(ctx, bad, 3, 5, got, 1), PAM_ERR_RANGE);
    bad[2] = -1;
    assert_int_equal(pam_forward(ctx, bad, 3, 5, got, 1), PAM_ERR_RANGE);
    bad[2] = toks[7];
    assert_int_equal(pam_forward(ctx, bad, 3, n_ctx - 2, got, 1), PAM_ERR_RANGE); /* 14+3 > 16 */
    assert_int_equal(pam_forward(ctx, bad, 1, n_ctx, got, 0), PAM_ERR_RANGE);
    /* a failed call did not touch the cache: positions 5.. still follow 0..4 */
    fwd_ok(ctx, toks + 5, n_ctx - 5, 5, got, 1); /* exactly fills the context */
    check_rows("errors", c, got, ref, 5, n_ctx - 5, &(double){0});
    assert_int_equal(pam_forward(ctx, toks, 1, n_ctx, got, 0), PAM_ERR_RANGE);
    pam_ctx_free(ctx);

    free(ref);
    free(got);
    pam_model_free(m);
    ref_model_free(w);
    remove(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_blocks),
        cmocka_unit_test(test_reference_forward_props),
        cmocka_unit_test(test_reference_sensitivity),
        cmocka_unit_test(test_gguf_roundtrip),
        cmocka_unit_test(test_vocab_loads),
        cmocka_unit_test(test_forward_cases),
        cmocka_unit_test(test_long_context),
        cmocka_unit_test(test_forward_errors),
        cmocka_unit_test(test_load_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
