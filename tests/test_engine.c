/* The serving engine on stories260K: outputs of 32 concurrent requests equal
 * each request run alone (greedy and seeded sampling), the greedy reference
 * text comes out, prefix reuse does not change outputs, cancellation frees
 * the slot, stop strings (across token boundaries) and max_tokens end a
 * request, a full queue and bad requests are refused, drain waits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/status.h"
#include "core/timing.h"
#include "engine/engine.h"
#include "model/convert.h"
#include "model/model.h"
#include "util/test_util.h"

static pam_model *g_model;
static pam_pool *g_pool;

static int setup(void **state) {
    /* pam_test_shared and pam_test_tmp return static buffers: copy */
    char *path = strdup(pam_test_tmp("engine-stories260K.gguf"));
    char *ckpt = strdup(pam_test_shared("models/stories260K/stories260K.bin"));
    int ok = pam_convert_llama2c(ckpt, pam_test_shared("models/stories260K/tok512.bin"), path, PAM_DT_F32) == PAM_OK &&
             pam_model_load(path, &g_model) == PAM_OK && pam_pool_create(2, &g_pool) == PAM_OK;
    free(ckpt);
    free(path);
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

static pam_engine *make_engine(int slots, int queue, int chunk) {
    pam_engine_params p;
    pam_engine_params_default(&p);
    p.n_slots = slots;
    p.n_ctx = 256;
    p.n_queue = queue;
    p.prefill_chunk = chunk;
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

/* Collects a request's output until done; bounded by 60 s. */
static void collect(pam_request *r, result *out) {
    memset(out, 0, sizeof *out);
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
     * leave mid-flight, prompts are split across steps. */
    pam_engine *e = make_engine(8, 64, 3);
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_equals_alone),
        cmocka_unit_test(test_reference_greedy),
        cmocka_unit_test(test_prefix_reuse),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_stop_and_max_tokens),
        cmocka_unit_test(test_queue_full_and_bad_requests),
        cmocka_unit_test(test_drain),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
