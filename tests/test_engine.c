/* The serving engine on stories260K: outputs of 32 concurrent requests equal
 * each request run alone (greedy and seeded sampling), the greedy reference
 * text comes out, prefix reuse does not change outputs, cancellation frees
 * the slot, stop strings (across token boundaries) and max_tokens end a
 * request, a full queue and bad requests are refused, drain waits. Over the
 * paged KV cache: block-level prefix caching (shared prefixes with divergent
 * continuations, LRU eviction when space runs out) leaves outputs unchanged,
 * admission waits for KV capacity, and a preempted request (KV demoted to
 * the slowest tier, then resumed) gives the same tokens as alone. Several
 * choices fork one prompt (greedy ones equal alone, seeded choice i equals
 * seed + i, the prompt computed once), and log-probabilities of generated
 * and prompt tokens match a float64 reference. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/status.h"
#include "core/timing.h"
#include "engine/engine.h"
#include "kv/kvm.h"
#include "kv/tier.h"
#include "model/model.h"
#include "util/test_util.h"

static pam_model *g_model;
static pam_pool *g_pool;

static int setup(void **state) {
    char path[4096];
    int ok = pam_test_stories260k("engine-stories260K.gguf", path, sizeof path) == PAM_OK &&
             pam_model_load(path, &g_model) == PAM_OK && pam_pool_create(2, &g_pool) == PAM_OK;
    if (!ok) {
        print_error("setup: %s\n", pam_last_error());
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    pam_pool_destroy(g_pool);
    pam_model_free(g_model);
    return 0;
}

static pam_engine *make_engine_burst(int slots, int queue, int chunk, int burst);

/* burst 0: the budget stays at chunk, so small chunks split prompts */
static pam_engine *make_engine(int slots, int queue, int chunk) {
    return make_engine_burst(slots, queue, chunk, 0);
}

static pam_engine *make_engine_burst(int slots, int queue, int chunk, int burst) {
    pam_engine_params p;
    pam_engine_params_default(&p);
    p.n_slots = slots;
    p.n_ctx = 256;
    p.n_queue = queue;
    p.prefill_chunk = chunk;
    p.prefill_burst = burst;
    pam_engine *e;
    assert_int_equal(pam_engine_create(g_model, g_pool, &p, &e), PAM_OK);
    return e;
}

typedef struct result {
    char text[8192];
    size_t len;
    int32_t tok[256];
    int32_t n_tok;
    pam_finish finish;
    int32_t n_prompt, n_completion, n_cached;
} result;

/* Collects a request's output until done; bounded by 60 s. With lp, its
 * log-probability entries too (*n_lp of them, at most 256). */
static void collect_lp(pam_request *r, result *out, pam_token_logprob *lp, int32_t *n_lp) {
    memset(out, 0, sizeof *out);
    if (n_lp) *n_lp = 0;
    int64_t deadline = pam_time_ns() + 60 * (int64_t)1000000000;
    for (;;) {
        pam_request_update u;
        pam_request_next(r, 100, &u);
        if (u.text) {
            assert_true(out->len + u.len < sizeof out->text);
            memcpy(out->text + out->len, u.text, u.len);
            out->len += u.len;
            free(u.text);
        }
        for (int32_t k = 0; lp && k < u.n_logprobs; k++) {
            assert_true(*n_lp < 256);
            lp[(*n_lp)++] = u.logprobs[k];
        }
        free(u.logprobs);
        if (u.done) {
            out->finish = u.finish;
            out->n_prompt = u.n_prompt_tokens;
            out->n_completion = u.n_completion_tokens;
            out->n_cached = u.n_cached_tokens;
            break;
        }
        if (pam_time_ns() > deadline) fail_msg("request did not finish in 60 s");
    }
    out->n_tok = pam_request_tokens(r, out->tok, 256);
}

static void collect(pam_request *r, result *out) { collect_lp(r, out, NULL, NULL); }

static void encode(const char *text, int32_t *ids, int32_t *n) {
    size_t got;
    assert_int_equal(pam_tokenizer_encode(pam_model_tokenizer(g_model), text, strlen(text), 1, 0, ids, 256, &got),
                     PAM_OK);
    *n = (int32_t)got;
}

static pam_request *submit_text(pam_engine *e, const char *prompt, const pam_request_params *rp) {
    int32_t ids[256], n;
    encode(prompt, ids, &n);
    pam_request *r = NULL;
    pam_status st = pam_engine_submit(e, ids, n, rp, &r);
    if (st != PAM_OK) fail_msg("submit: %s", pam_last_error());
    return r;
}

static const char *const k_prompts[] = {"Once upon a time", "The cat", "Lily and Tom", "One day", "The sun was",
                                        "A little bird", "Tim had a red ball", "Sara"};
#define N_CONC 32

static void params_for(int i, pam_request_params *rp) {
    pam_request_params_default(rp);
    rp->max_tokens = 24 + (i % 5) * 7;
    rp->ignore_eos = i % 3 == 0;
    if (i % 2 == 0) {
        rp->sampling.temp = 0;
    } else {
        rp->sampling.temp = 0.9f;
        rp->sampling.seed = 1000 + (uint64_t)i;
    }
}

static void test_concurrent_equals_alone(void **state) {
    static result alone[N_CONC], conc[N_CONC];
    pam_engine *e1 = make_engine(1, 64, 256);
    for (int i = 0; i < N_CONC; i++) {
        pam_request_params rp;
        params_for(i, &rp);
        pam_request *r = submit_text(e1, k_prompts[i % 8], &rp);
        collect(r, &alone[i]);
        pam_request_release(r);
    }
    pam_engine_destroy(e1);

    /* 32 at once on 8 slots with a small prefill chunk: requests join and
     * leave mid-flight, prompts are split across steps; with a burst of 40
     * the budget also rises while prompts wait for their first token. */
    for (int burst = 0; burst <= 40; burst += 40) {
        pam_engine *e = make_engine_burst(8, 64, 3, burst);
        pam_request *rs[N_CONC];
        for (int i = 0; i < N_CONC; i++) {
            pam_request_params rp;
            params_for(i, &rp);
            rs[i] = submit_text(e, k_prompts[i % 8], &rp);
        }
        for (int i = 0; i < N_CONC; i++) {
            collect(rs[i], &conc[i]);
            pam_request_release(rs[i]);
        }
        pam_engine_stats st;
        pam_engine_get_stats(e, &st);
        pam_engine_destroy(e);
        for (int i = 0; i < N_CONC; i++) {
            assert_true(alone[i].finish == PAM_FINISH_STOP || alone[i].finish == PAM_FINISH_LENGTH);
            assert_int_equal(conc[i].finish, alone[i].finish);
            assert_int_equal(conc[i].n_tok, alone[i].n_tok);
            assert_int_equal(conc[i].n_completion, alone[i].n_completion);
            if (memcmp(conc[i].tok, alone[i].tok, sizeof(int32_t) * (size_t)alone[i].n_tok) != 0)
                fail_msg("request %d: tokens differ between alone and 32 concurrent", i);
            assert_int_equal(conc[i].len, alone[i].len);
            assert_memory_equal(conc[i].text, alone[i].text, alone[i].len);
            if (rs[i] && i % 3 == 0) assert_int_equal(alone[i].finish, PAM_FINISH_LENGTH);
        }
        assert_true(st.n_generated_tokens > 0);
        assert_int_equal(st.n_finished[PAM_FINISH_CANCELLED], 0);
    }
}

/* The engine reproduces the llama2.c greedy reference tokens. */
static void test_reference_greedy(void **state) {
    size_t sz;
    char *js = pam_test_read_file(pam_test_shared("models/stories260K/reference-greedy.json"), &sz);
    assert_non_null(js);
    json_error_t err;
    json_t *root = json_loadb(js, sz, 0, &err);
    free(js);
    assert_non_null(root);
    json_t *c0 = json_array_get(json_object_get(root, "cases"), 0);
    json_t *pids = json_object_get(c0, "prompt_ids"), *next = json_object_get(c0, "next_ids");
    int32_t prompt[64];
    int32_t np = (int32_t)json_array_size(pids);
    for (int32_t i = 0; i < np; i++) prompt[i] = (int32_t)json_integer_value(json_array_get(pids, (size_t)i));
    pam_engine *e = make_engine(2, 4, 2);
    pam_request_params rp;
    pam_request_params_default(&rp);
    rp.sampling.temp = 0;
    rp.max_tokens = 60;
    rp.ignore_eos = 1;
    pam_request *r;
    assert_int_equal(pam_engine_submit(e, prompt, np, &rp, &r), PAM_OK);
    static result res;
    collect(r, &res);
    pam_request_release(r);
    pam_engine_destroy(e);
    assert_int_equal(res.n_tok, 60);
    for (int32_t i = 0; i < 60; i++)
        assert_int_equal(res.tok[i], json_integer_value(json_array_get(next, (size_t)(np - 1 + i))));
    json_decref(root);
}

/* Without a KV manager of its own the engine builds one dram tier storing
 * kv_type: f32 gives the same greedy tokens as the default f16 here, q8 runs
 * a request to the end, and an unknown type is refused. */
static void test_own_kv_type(void **state) {
    static const pam_kv_type types[] = {PAM_KV_F32, PAM_KV_Q8};
    static const char *const names[] = {"dram:f32", "dram:q8"};
    static result base, res;
    pam_request_params rp;
    pam_request_params_default(&rp);
    rp.sampling.temp = 0;
    rp.max_tokens = 20;
    rp.ignore_eos = 1;
    pam_engine *e = make_engine(1, 4, 256);
    pam_request *r = submit_text(e, "Once upon a time", &rp);
    collect(r, &base);
    pam_request_release(r);
    pam_engine_destroy(e);
    for (int i = 0; i < 2; i++) {
        pam_engine_params p;
        pam_engine_params_default(&p);
        p.n_slots = 1;
        p.n_ctx = 256;
        p.kv_type = types[i];
        assert_int_equal(pam_engine_create(g_model, g_pool, &p, &e), PAM_OK);
        pam_engine_stats st;
        pam_engine_get_stats(e, &st);
        assert_int_equal(st.kv_n_tiers, 1);
        assert_string_equal(st.kv_tiers[0].name, names[i]);
        r = submit_text(e, "Once upon a time", &rp);
        collect(r, &res);
        pam_request_release(r);
        pam_engine_destroy(e);
        assert_int_equal(res.n_tok, 20);
        if (types[i] == PAM_KV_F32) assert_memory_equal(res.tok, base.tok, sizeof(int32_t) * 20);
    }
    pam_engine_params p;
    pam_engine_params_default(&p);
    p.kv_type = PAM_KV_TYPE_COUNT;
    e = NULL;
    assert_int_not_equal(pam_engine_create(g_model, g_pool, &p, &e), PAM_OK);
    assert_null(e);
}

static void test_prefix_reuse(void **state) {
    pam_engine *e = make_engine(1, 4, 256);
    pam_request_params rp;
    pam_request_params_default(&rp);
    rp.sampling.temp = 0;
    rp.max_tokens = 20;
    static result a, b, c;
    pam_request *r = submit_text(e, "Once upon a time, there was a little girl", &rp);
    collect(r, &a);
    pam_request_release(r);
    r = submit_text(e, "Once upon a time, there was a little girl", &rp);
    collect(r, &b);
    pam_request_release(r);
    r = submit_text(e, "Once upon a time, there was a big dog", &rp);
    collect(r, &c);
    pam_request_release(r);
    pam_engine_stats st;
    pam_engine_get_stats(e, &st);
    pam_engine_destroy(e);
    assert_int_equal(a.n_cached, 0);
    assert_int_equal(b.n_cached, b.n_prompt - 1); /* all but the last prompt token */
    assert_true(c.n_cached > 3 && c.n_cached < c.n_prompt);
    assert_int_equal(a.n_tok, b.n_tok);
    assert_memory_equal(a.tok, b.tok, sizeof(int32_t) * (size_t)a.n_tok);
    assert_string_equal(a.text, b.text);
    assert_int_equal(st.prefix_lookups, 3);
    assert_int_equal(st.prefix_hits, 2);
    assert_int_equal(st.prefix_tokens_reused, (uint64_t)(b.n_cached + c.n_cached));

    /* The same third request without prefix reuse gives the same output. */
    pam_engine_params p;
    pam_engine_params_default(&p);
    p.n_slots = 1;
    p.n_ctx = 256;
    p.prefix_cache = 0;
    assert_int_equal(pam_engine_create(g_model, g_pool, &p, &e), PAM_OK);
    static result d;
    r = submit_text(e, "Once upon a time, there was a big dog", &rp);
    collect(r, &d);
    pam_request_release(r);
    pam_engine_destroy(e);
    assert_int_equal(d.n_cached, 0);
    assert_int_equal(c.n_tok, d.n_tok);
    assert_memory_equal(c.tok, d.tok, sizeof(int32_t) * (size_t)c.n_tok);
}

static void test_cancel(void **state) {
    pam_engine *e = make_engine(1, 4, 256);
    pam_request_params rp;
    pam_request_params_default(&rp);
    rp.sampling.temp = 0;
    rp.ignore_eos = 1;
    rp.max_tokens = 0; /* until the context is full: long */
    pam_request *r1 = submit_text(e, "Once upon a time", &rp);
    pam_request *r2 = submit_text(e, "The cat", &rp); /* queued behind r1 */
    pam_request *r3 = submit_text(e, "One day", &rp);
    pam_request_update u;
    int64_t deadline = pam_time_ns() + 30 * (int64_t)1000000000;
    size_t got = 0;
    while (got == 0 && pam_time_ns() < deadline) {
        pam_request_next(r1, 100, &u);
        got += u.len;
        free(u.text);
    }
    assert_true(got > 0);
    pam_request_cancel(r3); /* queued: done at once */
    pam_request_next(r3, 0, &u);
    free(u.text);
    assert_true(u.done);
    assert_int_equal(u.finish, PAM_FINISH_CANCELLED);
    assert_int_equal(u.n_completion_tokens, 0);
    pam_request_cancel(r1); /* running: its slot goes to r2 */
    static result res;
    collect(r1, &res);
    assert_int_equal(res.finish, PAM_FINISH_CANCELLED);
    assert_true(res.n_completion < 256 - 5);
    rp.max_tokens = 5;
    pam_request_release(r2); /* released while queued or running: cancelled */
    pam_request *r4 = submit_text(e, "Sara", &rp);
    collect(r4, &res);
    assert_int_equal(res.finish, PAM_FINISH_LENGTH);
    assert_int_equal(res.n_completion, 5);
    pam_request_release(r4);
    pam_request_release(r1);
    pam_request_release(r3);
    pam_engine_stats st;
    pam_engine_get_stats(e, &st);
    assert_int_equal(st.n_running, 0);
    assert_int_equal(st.n_queued, 0);
    assert_int_equal(st.n_finished[PAM_FINISH_CANCELLED], 3);
    pam_engine_destroy(e);
}

static void test_stop_and_max_tokens(void **state) {
    pam_engine *e = make_engine(2, 4, 256);
    pam_request_params rp;
    pam_request_params_default(&rp);
    rp.sampling.temp = 0;
    rp.max_tokens = 40;
    rp.ignore_eos = 1;
    static result full, cut, cut2, lim;
    pam_request *r = submit_text(e, "Once upon a time", &rp);
    collect(r, &full);
    pam_request_release(r);
    assert_int_equal(full.finish, PAM_FINISH_LENGTH);
    assert_int_equal(full.n_completion, 40);
    assert_true(full.len > 60);

    /* A stop string that starts mid-token and spans several tokens. */
    char stop[16];
    memcpy(stop, full.text + 23, 9);
    stop[9] = '\0';
    const char *first = strstr(full.text, stop);
    assert_non_null(first);
    rp.n_stop = 2;
    rp.stop[0] = "zzzz-never";
    rp.stop[1] = stop;
    r = submit_text(e, "Once upon a time", &rp);
    collect(r, &cut);
    pam_request_release(r);
    assert_int_equal(cut.finish, PAM_FINISH_STOP);
    assert_int_equal(cut.len, (size_t)(first - full.text));
    assert_memory_equal(cut.text, full.text, cut.len);
    assert_true(cut.n_completion < 40);

    /* A stop string that would match only past max_tokens: not applied. */
    rp.n_stop = 1;
    rp.stop[0] = full.text + full.len - 3;
    rp.max_tokens = 10;
    r = submit_text(e, "Once upon a time", &rp);
    collect(r, &lim);
    pam_request_release(r);
    assert_int_equal(lim.finish, PAM_FINISH_LENGTH);
    assert_int_equal(lim.n_completion, 10);
    assert_int_equal(lim.n_tok, 10);
    assert_memory_equal(lim.tok, full.tok, 10 * sizeof(int32_t));
    assert_memory_equal(lim.text, full.text, lim.len);

    /* Stop string at the very start: nothing is emitted. */
    char head[8];
    memcpy(head, full.text, 4);
    head[4] = '\0';
    rp.stop[0] = head;
    rp.max_tokens = 40;
    r = submit_text(e, "Once upon a time", &rp);
    collect(r, &cut2);
    pam_request_release(r);
    assert_int_equal(cut2.finish, PAM_FINISH_STOP);
    assert_int_equal(cut2.len, 0);
    pam_engine_destroy(e);
}

static void test_queue_full_and_bad_requests(void **state) {
    pam_engine *e = make_engine(1, 2, 256);
    pam_request_params rp;
    pam_request_params_default(&rp);
    rp.sampling.temp = 0;
    rp.ignore_eos = 1;
    pam_request *r1 = submit_text(e, "Once upon a time", &rp);
    pam_request_update u;
    size_t got = 0;
    int64_t deadline = pam_time_ns() + 30 * (int64_t)1000000000;
    while (got == 0 && pam_time_ns() < deadline) { /* r1 holds the only slot */
        pam_request_next(r1, 100, &u);
        got += u.len;
        free(u.text);
    }
    pam_request *r2 = submit_text(e, "The cat", &rp);
    pam_request *r3 = submit_text(e, "One day", &rp);
    int32_t ids[4] = {1, 403, 407, 261};
    pam_request *r4 = NULL;
    assert_int_equal(pam_engine_submit(e, ids, 4, &rp, &r4), PAM_ERR_FULL);
    assert_null(r4);

    static int32_t big[300];
    for (int i = 0; i < 300; i++) big[i] = 300;
    assert_int_equal(pam_engine_submit(e, big, 256, &rp, &r4), PAM_ERR_RANGE);
    assert_int_equal(pam_engine_submit(e, big, 0, &rp, &r4), PAM_ERR_INVALID);
    ids[1] = 100000;
    assert_int_equal(pam_engine_submit(e, ids, 4, &rp, &r4), PAM_ERR_RANGE);
    ids[1] = 403;
    rp.sampling.top_p = 7;
    assert_int_equal(pam_engine_submit(e, ids, 4, &rp, &r4), PAM_ERR_INVALID);

    pam_engine_params bad;
    pam_engine_params_default(&bad);
    pam_engine *e_bad = NULL;
    bad.prefill_burst = -1;
    assert_int_equal(pam_engine_create(g_model, g_pool, &bad, &e_bad), PAM_ERR_INVALID);
    bad.prefill_burst = 1 << 20;
    assert_int_equal(pam_engine_create(g_model, g_pool, &bad, &e_bad), PAM_ERR_INVALID);
    assert_null(e_bad);

    pam_request_release(r1);
    pam_request_release(r2);
    pam_request_release(r3);
    pam_engine_stats st;
    pam_engine_get_stats(e, &st);
    assert_int_equal(st.n_rejected_full, 1);
    pam_engine_destroy(e);
}

static void test_drain(void **state) {
    pam_engine *e = make_engine(2, 8, 256);
    pam_request_params rp;
    pam_request_params_default(&rp);
    rp.sampling.temp = 0;
    rp.max_tokens = 30;
    rp.ignore_eos = 1;
    pam_request *rs[5];
    for (int i = 0; i < 5; i++) rs[i] = submit_text(e, k_prompts[i], &rp);
    pam_engine_drain(e);
    for (int i = 0; i < 5; i++) {
        pam_request_update u;
        assert_true(pam_request_next(rs[i], 0, &u));
        free(u.text);
        assert_true(u.done);
        assert_int_equal(u.finish, PAM_FINISH_LENGTH);
        assert_int_equal(u.n_completion_tokens, 30);
        pam_request_release(rs[i]);
    }
    pam_request *r = NULL;
    int32_t ids[2] = {1, 403};
    assert_int_equal(pam_engine_submit(e, ids, 2, &rp, &r), PAM_ERR_FULL);
    pam_engine_destroy(e);
}

/* n dram tiers of caps[i] blocks each (bt tokens per block), policy pam. */
static pam_kvm *make_kvm(int32_t bt, const uint64_t *caps, int n) {
    const pam_model_hparams *hp = pam_model_get_hparams(g_model);
    pam_kv_shape shape = {hp->n_layer, hp->n_head_kv, hp->head_dim, bt};
    uint64_t bb = 2ull * 2ull * (uint64_t)bt * (uint64_t)hp->n_head_kv * (uint64_t)hp->head_dim;
    pam_tier *t[4];
    for (int i = 0; i < n; i++)
        if (pam_tier_dram_open(&shape, caps[i] * bb, &t[i]) != PAM_OK) fail_msg("dram: %s", pam_last_error());
    pam_kvm_config kc = {.shape = shape, .tiers = t, .n_tiers = n, .policy = PAM_KV_POLICY_PAM};
    pam_kvm *kvm;
    if (pam_kvm_create(&kc, g_pool, &kvm) != PAM_OK) fail_msg("kvm: %s", pam_last_error());
    return kvm;
}

static pam_engine *make_engine_kvm(int slots, pam_kvm *kvm, int prefix_cache, int32_t n_ctx) {
    pam_engine_params p;
    pam_engine_params_default(&p);
    p.n_slots = slots;
    p.n_ctx = n_ctx;
    p.n_queue = 64;
    p.prefill_chunk = 7;
    p.prefix_cache = prefix_cache;
    p.kvm = kvm;
    pam_engine *e;
    if (pam_engine_create(g_model, g_pool, &p, &e) != PAM_OK) fail_msg("engine: %s", pam_last_error());
    return e;
}

static int32_t layers(void) { return pam_model_get_hparams(g_model)->n_layer; }

/* Prompts sharing a long prefix, diverging at different points (inside a
 * block and at a block boundary), plus exact repeats: with the block-level
 * prefix cache every output equals the output without it, and the reused
 * counts follow the shared prefix. */
#define N_PFX 8
static const char *const k_pfx_prompts[N_PFX] = {
        "Once upon a time, there was a little girl named Lily. She loved to play",
        "Once upon a time, there was a little girl named Lily. She loved to eat",
        "Once upon a time, there was a little girl named Lily. She loved to play",
        "Once upon a time, there was a little boy named Tom. He",
        "Once upon a time, there was a little girl named Lily. She loved to play outside",
        "Once upon a time, there was a big dog",
        "The cat sat on the mat",
        "Once upon a time, there was a little boy named Tom. He",
};

static void test_prefix_blocks_divergent(void **state) {
    const char *const *prompts = k_pfx_prompts;
    static result ref[N_PFX], got[N_PFX];
    pam_request_params rp;
    pam_request_params_default(&rp);
    rp.sampling.temp = 0;
    rp.max_tokens = 24;
    rp.ignore_eos = 1;
    for (int pass = 0; pass < 2; pass++) {
        /* pass 0: no prefix cache; pass 1: cache, 4-token blocks */
        uint64_t cap = 4096;
        pam_kvm *kvm = make_kvm(4, &cap, 1);
        pam_engine *e = make_engine_kvm(2, kvm, pass, 256);
        for (int i = 0; i < N_PFX; i++) {
            pam_request *r = submit_text(e, prompts[i], &rp);
            collect(r, pass ? &got[i] : &ref[i]);
            pam_request_release(r);
        }
        pam_engine_stats st;
        pam_engine_get_stats(e, &st);
        pam_engine_destroy(e);
        pam_kvm_destroy(kvm);
        if (pass == 0) {
            assert_int_equal(st.prefix_hits, 0);
            continue;
        }
        assert_int_equal(st.prefix_lookups, N_PFX);
        assert_true(st.prefix_hits >= 5);
        assert_true(st.prefix_entries > 0);
        assert_int_equal(st.kv_block_tokens, 4);
        assert_true(st.kv_blocks_used > 0); /* the cached prefixes */
    }
    for (int i = 0; i < N_PFX; i++) {
        assert_int_equal(ref[i].n_cached, 0);
        assert_int_equal(got[i].n_tok, ref[i].n_tok);
        if (memcmp(got[i].tok, ref[i].tok, sizeof(int32_t) * (size_t)ref[i].n_tok) != 0)
            fail_msg("prompt %d: tokens differ with the prefix cache", i);
        assert_string_equal(got[i].text, ref[i].text);
    }
    assert_int_equal(got[0].n_cached, 0);
    assert_true(got[1].n_cached >= got[1].n_prompt - 3 && got[1].n_cached < got[1].n_prompt - 1); /* diverges at the end */
    assert_int_equal(got[2].n_cached, got[2].n_prompt - 1); /* a repeat */
    assert_true(got[3].n_cached > 5 && got[3].n_cached < got[3].n_prompt - 1);
    assert_true(got[4].n_cached >= got[0].n_prompt); /* prompt 0 and its output are cached */
    assert_int_equal(got[6].n_cached, 1); /* BOS only */
    assert_int_equal(got[7].n_cached, got[7].n_prompt - 1);
}

/* In-flight sharing: the same prompts submitted all at once, prefilled in
 * 7-token chunks over several steps. Requests sharing full blocks with a
 * request still prefilling wait for them and fork them instead of computing
 * them again; greedy and seeded outputs equal those of each prompt alone
 * without any prefix reuse. */
static void test_inflight_sharing(void **state) {
    static result ref[N_PFX], got[N_PFX];
    pam_request_params rp[N_PFX];
    for (int i = 0; i < N_PFX; i++) {
        pam_request_params_default(&rp[i]);
        rp[i].max_tokens = 20;
        rp[i].ignore_eos = 1;
        rp[i].sampling.temp = i % 2 ? 0.8f : 0.0f;
        rp[i].sampling.seed = 77 + (uint64_t)i;
    }
    for (int pass = 0; pass < 2; pass++) {
        uint64_t cap = 4096;
        pam_kvm *kvm = make_kvm(4, &cap, 1);
        pam_engine_params p;
        pam_engine_params_default(&p);
        p.n_slots = pass ? 4 : 1;
        p.n_ctx = 256;
        p.n_queue = 64;
        p.prefill_chunk = 7;
        p.prefill_burst = 0;
        p.prefix_cache = pass;
        p.kvm = kvm;
        pam_engine *e;
        if (pam_engine_create(g_model, g_pool, &p, &e) != PAM_OK) fail_msg("engine: %s", pam_last_error());
        pam_request *rs[N_PFX];
        for (int i = 0; i < N_PFX; i++) {
            rs[i] = submit_text(e, k_pfx_prompts[i], &rp[i]);
            if (pass == 0) { /* alone */
                collect(rs[i], &ref[i]);
                pam_request_release(rs[i]);
            }
        }
        for (int i = 0; pass && i < N_PFX; i++) {
            collect(rs[i], &got[i]);
            pam_request_release(rs[i]);
        }
        pam_engine_stats st;
        pam_engine_get_stats(e, &st);
        pam_engine_destroy(e);
        pam_kvm_destroy(kvm);
        if (pass == 0) continue;
        /* prompts 1, 2, 4 share 4+ blocks with prompt 0, submitted with it */
        assert_true(st.inflight_shared_tokens >= 12);
        assert_true(st.inflight_waits > 0);
        assert_true(st.prefix_tokens_reused >= st.inflight_shared_tokens);
    }
    for (int i = 0; i < N_PFX; i++) {
        assert_int_equal(got[i].n_tok, ref[i].n_tok);
        if (memcmp(got[i].tok, ref[i].tok, sizeof(int32_t) * (size_t)ref[i].n_tok) != 0)
            fail_msg("prompt %d: tokens differ with in-flight sharing", i);
        assert_string_equal(got[i].text, ref[i].text);
    }
    assert_true(got[2].n_cached > 0 && got[2].n_cached % 4 == 0); /* forked whole blocks */
}

/* A cache too small for everything: cached prefixes are evicted (LRU) so new
 * requests fit, and outputs do not change. Two slots share room for about
 * two sequences. */
static void test_prefix_eviction(void **state) {
    pam_request_params rp;
    pam_request_params_default(&rp);
    rp.sampling.temp = 0;
    rp.max_tokens = 40;
    rp.ignore_eos = 1;
    static result ref[N_CONC], got[N_CONC];
    pam_engine *e1 = make_engine(1, 64, 256);
    for (int i = 0; i < 8; i++) {
        pam_request *r = submit_text(e1, k_prompts[i], &rp);
        collect(r, &ref[i]);
        pam_request_release(r);
    }
    pam_engine_destroy(e1);
    /* 16-token blocks: a request needs at most 4 blocks per layer (+1 spare) */
    uint64_t cap = (uint64_t)layers() * 14;
    pam_kvm *kvm = make_kvm(16, &cap, 1);
    pam_engine *e = make_engine_kvm(2, kvm, 1, 256);
    pam_request *rs[16];
    for (int i = 0; i < 16; i++) rs[i] = submit_text(e, k_prompts[i % 8], &rp);
    for (int i = 0; i < 16; i++) {
        collect(rs[i], &got[i]);
        pam_request_release(rs[i]);
    }
    pam_engine_stats st;
    pam_engine_get_stats(e, &st);
    pam_engine_destroy(e);
    pam_kvm_destroy(kvm);
    for (int i = 0; i < 16; i++) {
        assert_int_equal(got[i].finish, PAM_FINISH_LENGTH);
        assert_int_equal(got[i].n_tok, ref[i % 8].n_tok);
        if (memcmp(got[i].tok, ref[i % 8].tok, sizeof(int32_t) * (size_t)ref[i % 8].n_tok) != 0)
            fail_msg("request %d: tokens differ under eviction", i);
    }
    assert_true(st.prefix_evictions > 0);
    assert_true(st.kv_blocks_used <= cap);
}

/* Admission by KV capacity: room for one sequence only, two slots: the
 * second request waits for the first, both equal alone; a prompt the cache
 * can never hold fails instead of waiting forever. */
static void test_admission_by_capacity(void **state) {
    pam_request_params rp;
    pam_request_params_default(&rp);
    rp.sampling.temp = 0;
    rp.max_tokens = 30;
    rp.ignore_eos = 1;
    static result ref[2], got[2];
    pam_engine *e1 = make_engine(1, 64, 256);
    for (int i = 0; i < 2; i++) {
        pam_request *r = submit_text(e1, k_prompts[i], &rp);
        collect(r, &ref[i]);
        pam_request_release(r);
    }
    pam_engine_destroy(e1);
    uint64_t cap = (uint64_t)layers() * 4; /* 4 blocks of 16 per layer: 64 tokens */
    pam_kvm *kvm = make_kvm(16, &cap, 1);
    pam_engine *e = make_engine_kvm(2, kvm, 0, 256);
    pam_request *r0 = submit_text(e, k_prompts[0], &rp), *r1 = submit_text(e, k_prompts[1], &rp);
    pam_engine_stats st;
    pam_engine_get_stats(e, &st);
    assert_true(st.n_running <= 1);
    collect(r0, &got[0]);
    collect(r1, &got[1]);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(got[i].finish, PAM_FINISH_LENGTH);
        assert_int_equal(got[i].n_tok, ref[i].n_tok);
        assert_memory_equal(got[i].tok, ref[i].tok, sizeof(int32_t) * (size_t)ref[i].n_tok);
    }
    pam_request_release(r0);
    pam_request_release(r1);
    /* 100 prompt tokens never fit in 64: refused at submit, saying by how much */
    static int32_t big[100];
    for (int i = 0; i < 100; i++) big[i] = 300 + i;
    pam_request *r = NULL;
    assert_int_equal(pam_engine_submit(e, big, 100, &rp, &r), PAM_ERR_RANGE);
    assert_non_null(strstr(pam_last_error_message(), "66 more than all KV tiers hold (64)"));
    assert_null(strstr(pam_last_error_message(), "engine.c"));
    /* prompt + max_tokens beyond the context (256) */
    rp.max_tokens = 250;
    assert_int_equal(pam_engine_submit(e, big, 10, &rp, &r), PAM_ERR_RANGE);
    assert_non_null(strstr(pam_last_error_message(), "4 over the context of 256"));
    rp.max_tokens = 30;
    static result res;
    /* ... and the engine still serves */
    r = submit_text(e, k_prompts[0], &rp);
    collect(r, &res);
    pam_request_release(r);
    assert_memory_equal(res.tok, ref[0].tok, sizeof(int32_t) * (size_t)ref[0].n_tok);
    pam_engine_get_stats(e, &st);
    pam_engine_destroy(e);
    pam_kvm_destroy(kvm);
    assert_int_equal(st.n_finished[PAM_FINISH_ERROR], 0);
}

/* KV for one sequence (96 tokens) shared by three that each run to the end
 * of a 96-token context: the tiers fill up mid-generation, requests yield
 * and resume, and every one ends by the context ("length") with exactly the
 * tokens it gives alone; with and without the prefix cache. */
static void test_kv_exhaustion_never_cuts_short(void **state) {
    (void)state;
    pam_request_params rp;
    pam_request_params_default(&rp);
    rp.sampling.temp = 0;
    rp.ignore_eos = 1;
    rp.max_tokens = 0;
    static result ref[3], got[3];
    uint64_t cap = (uint64_t)layers() * 6; /* 6 blocks of 16 per layer */
    for (int pc = 0; pc < 2; pc++) {
        pam_kvm *kvm1 = make_kvm(16, &cap, 1);
        pam_engine *e1 = make_engine_kvm(1, kvm1, pc, 96);
        for (int i = 0; i < 3; i++) {
            pam_request *r = submit_text(e1, k_prompts[i], &rp);
            collect(r, &ref[i]);
            pam_request_release(r);
            assert_int_equal(ref[i].finish, PAM_FINISH_LENGTH);
            assert_int_equal(ref[i].n_prompt + ref[i].n_tok, 96);
        }
        pam_engine_destroy(e1);
        pam_kvm_destroy(kvm1);

        pam_kvm *kvm = make_kvm(16, &cap, 1);
        pam_engine *e = make_engine_kvm(3, kvm, pc, 96);
        pam_request *r[3];
        for (int i = 0; i < 3; i++) r[i] = submit_text(e, k_prompts[i], &rp);
        for (int i = 0; i < 3; i++) {
            collect(r[i], &got[i]);
            pam_request_release(r[i]);
            assert_int_equal(got[i].finish, PAM_FINISH_LENGTH);
            assert_int_equal(got[i].n_tok, ref[i].n_tok);
            assert_memory_equal(got[i].tok, ref[i].tok, sizeof(int32_t) * (size_t)ref[i].n_tok);
            assert_int_equal(got[i].len, ref[i].len);
            assert_memory_equal(got[i].text, ref[i].text, ref[i].len);
        }
        pam_engine_stats st;
        pam_engine_get_stats(e, &st);
        assert_true(st.n_requeued > 0);
        pam_engine_destroy(e);
        pam_kvm_destroy(kvm);
    }
}

/* One slot, two dram tiers: a low-priority request is preempted by a
 * high-priority one (its blocks demoted to the slowest tier, not
 * recomputed), resumes after it, and both give the tokens they give alone. */
static void test_preempt_resume(void **state) {
    pam_request_params lo, hi;
    pam_request_params_default(&lo);
    lo.sampling.temp = 0;
    lo.ignore_eos = 1;
    lo.max_tokens = 0; /* to the end of the context: long enough to be caught running */
    hi = lo;
    hi.max_tokens = 20;
    hi.priority = 5;
    static result ref_lo, ref_hi, got_lo, got_hi;
    uint64_t caps[2] = {(uint64_t)layers() * 40, (uint64_t)layers() * 40};
    int done = 0;
    /* pass 0: each alone; then up to 3 tries of the preemption (a try where
     * the low-priority request ends before the other arrives, possible on
     * a loaded machine, does not count) */
    for (int pass = 0; pass < 4 && !done; pass++) {
        pam_kvm *kvm = make_kvm(16, caps, 2);
        pam_engine *e = make_engine_kvm(1, kvm, 0, 512);
        if (pass == 0) {
            pam_request *r = submit_text(e, "Once upon a time", &lo);
            collect(r, &ref_lo);
            pam_request_release(r);
            r = submit_text(e, "The cat", &hi);
            collect(r, &ref_hi);
            pam_request_release(r);
        } else {
            pam_request *a = submit_text(e, "Once upon a time", &lo);
            pam_request_update u;
            size_t n = 0;
            int64_t deadline = pam_time_ns() + 30 * (int64_t)1000000000;
            while (n == 0 && pam_time_ns() < deadline) { /* a is decoding */
                pam_request_next(a, 100, &u);
                n += u.len;
                free(u.text);
                assert_false(u.done);
            }
            pam_request *b = submit_text(e, "The cat", &hi);
            collect(b, &got_hi);
            pam_engine_stats st;
            pam_engine_get_stats(e, &st);
            int preempted = st.n_preempted == 1;
            if (preempted) assert_true(st.n_demoted_blocks > 0);
            collect(a, &got_lo);
            pam_request_release(a);
            pam_request_release(b);
            pam_engine_get_stats(e, &st);
            if (preempted) {
                assert_int_equal(st.n_resumed, 1);
                assert_int_equal(st.n_paused, 0);
                assert_true(st.n_migrations >= st.n_demoted_blocks);
                assert_int_equal(st.kv_n_tiers, 2);
                done = 1;
            } else {
                assert_int_equal(st.n_preempted, 0);
            }
        }
        pam_engine_destroy(e);
        pam_kvm_destroy(kvm);
    }
    assert_true(done);
    /* a's text was read partly above: compare tokens, the complete record */
    assert_int_equal(got_lo.finish, PAM_FINISH_LENGTH);
    assert_int_equal(got_lo.n_tok, ref_lo.n_tok);
    if (memcmp(got_lo.tok, ref_lo.tok, sizeof(int32_t) * (size_t)ref_lo.n_tok) != 0)
        fail_msg("the preempted request's tokens differ from alone");
    assert_int_equal(got_hi.n_tok, ref_hi.n_tok);
    assert_memory_equal(got_hi.tok, ref_hi.tok, sizeof(int32_t) * (size_t)ref_hi.n_tok);
    assert_string_equal(got_hi.text, ref_hi.text);
}


static pam_engine *make_engine_nocache(int slots) {
    pam_engine_params p;
    pam_engine_params_default(&p);
    p.n_slots = slots;
    p.n_ctx = 256;
    p.prefill_chunk = 256;
    p.prefix_cache = 0;
    pam_engine *e;
    assert_int_equal(pam_engine_create(g_model, g_pool, &p, &e), PAM_OK);
    return e;
}

static void submit_n_text(pam_engine *e, const char *prompt, const pam_request_params *rp, int32_t n,
                          pam_request **out) {
    int32_t ids[256], np;
    encode(prompt, ids, &np);
    if (pam_engine_submit_n(e, ids, np, rp, n, out) != PAM_OK) fail_msg("submit_n: %s", pam_last_error());
}

static void expect_same(const result *a, const result *b) {
    assert_int_equal(a->n_tok, b->n_tok);
    assert_memory_equal(a->tok, b->tok, sizeof(int32_t) * (size_t)a->n_tok);
    assert_string_equal(a->text, b->text);
}

/* n choices fork the first one's KV: greedy choices equal the request run
 * alone, seeded choice i equals a single request with seed + i, the prompt
 * is computed once (plus one token per extra choice), and more choices than
 * slots wait their turn. */
static void test_choices(void **state) {
    const char *prompt = "Once upon a time, there was a little girl who";
    enum { N = 4 };
    for (int slots = 4; slots >= 1; slots -= 3) {
        pam_engine *e = make_engine_nocache(slots);
        pam_request_params rp;
        pam_request_params_default(&rp);
        rp.sampling.temp = 0;
        rp.max_tokens = 16;
        rp.ignore_eos = 1;
        static result alone, ch[N];
        pam_request *r = submit_text(e, prompt, &rp);
        collect(r, &alone);
        pam_request_release(r);
        pam_engine_stats s0, s1;
        pam_engine_get_stats(e, &s0);
        pam_request *out[N];
        submit_n_text(e, prompt, &rp, N, out);
        for (int i = 0; i < N; i++) collect(out[i], &ch[i]);
        for (int i = 0; i < N; i++) pam_request_release(out[i]);
        pam_engine_get_stats(e, &s1);
        for (int i = 0; i < N; i++) {
            expect_same(&alone, &ch[i]);
            assert_int_equal(ch[i].finish, PAM_FINISH_LENGTH);
            assert_int_equal(ch[i].n_completion, 16);
        }
        /* the prompt once, then the last prompt token per extra choice */
        assert_int_equal(s1.n_prefilled_tokens - s0.n_prefilled_tokens, (uint64_t)(alone.n_prompt + N - 1));
        assert_int_equal(s1.n_finished[PAM_FINISH_LENGTH] - s0.n_finished[PAM_FINISH_LENGTH], N);

        /* Sampling: choice i is the single request with seed + i. */
        pam_request_params_default(&rp);
        rp.sampling.temp = 1.0f;
        rp.sampling.top_k = 0;
        rp.sampling.top_p = 1.0f;
        rp.sampling.min_p = 0.0f;
        rp.sampling.seed = 500;
        rp.max_tokens = 24;
        rp.ignore_eos = 1;
        submit_n_text(e, prompt, &rp, 3, out);
        for (int i = 0; i < 3; i++) collect(out[i], &ch[i]);
        for (int i = 0; i < 3; i++) pam_request_release(out[i]);
        for (int i = 0; i < 3; i++) {
            pam_request_params one = rp;
            one.sampling.seed = 500 + (uint64_t)i;
            r = submit_text(e, prompt, &one);
            collect(r, &alone);
            pam_request_release(r);
            expect_same(&alone, &ch[i]);
        }
        assert_false(ch[0].n_tok == ch[1].n_tok && !memcmp(ch[0].tok, ch[1].tok, sizeof(int32_t) * (size_t)ch[0].n_tok));
        pam_engine_drain(e);
        pam_engine_destroy(e);
    }
}

/* Cancelling a group: the first request before its prompt ran takes the
 * others along; a waiting choice cancelled alone leaves the rest intact. */
static void test_choices_cancel(void **state) {
    pam_engine *e = make_engine_nocache(1);
    pam_request_params rp;
    pam_request_params_default(&rp);
    rp.sampling.temp = 0;
    rp.max_tokens = 12;
    rp.ignore_eos = 1;
    /* keep the slot busy so the group stays queued */
    pam_request *busy = submit_text(e, "The cat", &rp);
    pam_request *out[3];
    submit_n_text(e, "One day", &rp, 3, out);
    pam_request_release(out[0]);
    static result res[3], alone;
    for (int i = 1; i < 3; i++) {
        collect(out[i], &res[i]);
        assert_int_equal(res[i].finish, PAM_FINISH_CANCELLED);
        pam_request_release(out[i]);
    }
    collect(busy, &res[0]);
    pam_request_release(busy);
    assert_int_equal(res[0].finish, PAM_FINISH_LENGTH);

    pam_request *r = submit_text(e, "One day", &rp);
    collect(r, &alone);
    pam_request_release(r);
    submit_n_text(e, "One day", &rp, 3, out);
    pam_request_release(out[1]); /* waiting for the fork */
    collect(out[0], &res[0]);
    collect(out[2], &res[2]);
    expect_same(&alone, &res[0]);
    expect_same(&alone, &res[2]);
    pam_request_release(out[0]);
    pam_request_release(out[2]);
    pam_engine_drain(e); /* nothing left behind */
    pam_engine_stats st;
    pam_engine_get_stats(e, &st);
    assert_int_equal(st.n_running + st.n_paused + st.n_queued, 0);
    assert_int_equal(st.n_finished[PAM_FINISH_CANCELLED], 4); /* the first group, then one choice */
    pam_engine_destroy(e);
}

/* The choices share the prompt's blocks: 4 choices of a 64-token prompt
 * (4 blocks of 16) with 8 tokens each need 20 blocks per layer unshared but
 * 11 shared (the prompt, one copied block per extra choice, one new block
 * each); in 14 they all run to the end with the tokens they give alone. */
static void test_choices_share_kv(void **state) {
    static int32_t prompt[64];
    for (int i = 0; i < 64; i++) prompt[i] = 300 + (i * 7) % 50;
    pam_request_params rp;
    pam_request_params_default(&rp);
    rp.sampling.temp = 0;
    rp.max_tokens = 8;
    rp.ignore_eos = 1;
    static result alone, ch[4];
    pam_engine *e1 = make_engine_nocache(1);
    pam_request *r;
    assert_int_equal(pam_engine_submit(e1, prompt, 64, &rp, &r), PAM_OK);
    collect(r, &alone);
    pam_request_release(r);
    pam_engine_destroy(e1);

    uint64_t cap = (uint64_t)layers() * 14;
    pam_kvm *kvm = make_kvm(16, &cap, 1);
    pam_engine *e = make_engine_kvm(4, kvm, 0, 256);
    pam_request *out[4];
    assert_int_equal(pam_engine_submit_n(e, prompt, 64, &rp, 4, out), PAM_OK);
    for (int i = 0; i < 4; i++) collect(out[i], &ch[i]);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(ch[i].finish, PAM_FINISH_LENGTH);
        assert_int_equal(ch[i].n_tok, 8);
        assert_memory_equal(ch[i].tok, alone.tok, sizeof(int32_t) * 8);
        pam_request_release(out[i]);
    }
    pam_engine_stats st;
    pam_engine_get_stats(e, &st);
    assert_int_equal(st.n_finished[PAM_FINISH_ERROR], 0);
    pam_engine_destroy(e);
    pam_kvm_destroy(kvm);
}

static double ref_logprob(const float *row, int32_t nv, int32_t id) {
    double mx = -INFINITY, sum = 0;
    for (int32_t i = 0; i < nv; i++) mx = row[i] > mx ? row[i] : mx;
    for (int32_t i = 0; i < nv; i++) sum += exp((double)row[i] - mx);
    return (double)row[id] - mx - log(sum);
}

/* Log-probabilities of generated and prompt tokens: the top entry is the
 * greedy token, alternatives are sorted and hold at most the whole mass,
 * values match a float64 log-softmax of the reference forward pass (f32 KV),
 * and scoring prompt + output (score_only) gives the generation's values. */
static void test_logprobs(void **state) {
    /* prompt chunks of 5; the burst budget would take whole prompts, but
     * prompt log-probabilities stay within the chunk (a logits row each) */
    pam_engine *e = make_engine_burst(2, 8, 5, 64);
    const int32_t nv = pam_model_get_hparams(g_model)->n_vocab;
    pam_request_params rp;
    pam_request_params_default(&rp);
    rp.sampling.temp = 0;
    rp.max_tokens = 12;
    rp.ignore_eos = 1;
    rp.logprobs = 5;
    rp.prompt_logprobs = 3;
    int32_t ids[256], np;
    encode("Once upon a time, there was a big dog", ids, &np);
    pam_request *r;
    assert_int_equal(pam_engine_submit(e, ids, np, &rp, &r), PAM_OK);
    static result res;
    static pam_token_logprob lp[256];
    int32_t n_lp = 0;
    collect_lp(r, &res, lp, &n_lp);
    int32_t n_plp = 0;
    const pam_token_logprob *plp = pam_request_prompt_logprobs(r, &n_plp);
    assert_non_null(plp);
    assert_int_equal(n_plp, np);
    assert_int_equal(n_lp, 12);
    assert_int_equal(res.n_tok, 12);
    int32_t prev_off = 0;
    for (int32_t i = 0; i < n_lp; i++) {
        assert_int_equal(lp[i].id, res.tok[i]);
        assert_int_equal(lp[i].n_top, 5);
        assert_int_equal(lp[i].top[0].id, lp[i].id); /* greedy */
        assert_true(lp[i].top[0].logprob == lp[i].logprob);
        double mass = 0;
        for (int32_t k = 0; k < lp[i].n_top; k++) {
            mass += exp(lp[i].top[k].logprob);
            if (k) assert_true(lp[i].top[k].logprob <= lp[i].top[k - 1].logprob);
        }
        assert_true(mass <= 1.0 + 1e-6);
        assert_true(lp[i].text_off >= prev_off && (size_t)lp[i].text_off <= res.len);
        prev_off = lp[i].text_off;
    }
    assert_int_equal(lp[0].text_off, 0);
    assert_true(isnan(plp[0].logprob));
    assert_int_equal(plp[0].n_top, 0);
    for (int32_t i = 1; i < np; i++) {
        assert_int_equal(plp[i].id, ids[i]);
        assert_int_equal(plp[i].n_top, 3);
    }

    /* Reference: one pass over prompt + output on the f32-KV path. */
    int32_t full[256], nf = np + res.n_tok;
    memcpy(full, ids, (size_t)np * sizeof *ids);
    memcpy(full + np, res.tok, (size_t)res.n_tok * sizeof *ids);
    pam_ctx *ctx;
    assert_int_equal(pam_ctx_create(g_model, 256, g_pool, &ctx), PAM_OK);
    float *logits = malloc((size_t)nf * (size_t)nv * sizeof *logits);
    assert_int_equal(pam_forward(ctx, full, nf, 0, logits, 1), PAM_OK);
    for (int32_t i = 1; i < nf; i++) {
        double ref = ref_logprob(logits + (size_t)(i - 1) * nv, nv, full[i]);
        double got = i < np ? plp[i].logprob : lp[i - np].logprob;
        if (fabs(ref - got) > 2e-2) fail_msg("position %d: logprob %g, reference %g", i, got, ref);
    }
    free(logits);
    pam_ctx_free(ctx);

    /* Scoring prompt + output gives the generation's log-probabilities. */
    pam_request_params sc;
    pam_request_params_default(&sc);
    sc.score_only = 1;
    sc.prompt_logprobs = 5;
    static result sres;
    pam_request *out[2];
    assert_int_equal(pam_engine_submit_n(e, full, nf, &sc, 2, out), PAM_OK);
    for (int c = 0; c < 2; c++) {
        collect(out[c], &sres);
        assert_int_equal(sres.finish, PAM_FINISH_LENGTH);
        assert_int_equal(sres.n_completion, 0);
        assert_int_equal(sres.len, 0);
        const pam_token_logprob *s = pam_request_prompt_logprobs(out[c], &n_plp);
        assert_non_null(s);
        assert_int_equal(n_plp, nf);
        for (int32_t i = 1; i < np; i++) assert_true(fabsf(s[i].logprob - plp[i].logprob) < 1e-4f);
        for (int32_t i = np; i < nf; i++) {
            assert_true(fabsf(s[i].logprob - lp[i - np].logprob) < 1e-4f);
            assert_int_equal(s[i].top[0].id, lp[i - np].top[0].id);
        }
    }
    pam_request_release(out[0]);
    pam_request_release(out[1]);
    pam_request_release(r); /* plp pointed into it */
    pam_engine_destroy(e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_equals_alone),
        cmocka_unit_test(test_reference_greedy),
        cmocka_unit_test(test_prefix_reuse),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_stop_and_max_tokens),
        cmocka_unit_test(test_queue_full_and_bad_requests),
        cmocka_unit_test(test_drain),
        cmocka_unit_test(test_prefix_blocks_divergent),
        cmocka_unit_test(test_prefix_eviction),
        cmocka_unit_test(test_inflight_sharing),
        cmocka_unit_test(test_admission_by_capacity),
        cmocka_unit_test(test_preempt_resume),
        cmocka_unit_test(test_kv_exhaustion_never_cuts_short),
        cmocka_unit_test(test_choices),
        cmocka_unit_test(test_choices_cancel),
        cmocka_unit_test(test_choices_share_kv),
        cmocka_unit_test(test_logprobs),
        cmocka_unit_test(test_own_kv_type),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
