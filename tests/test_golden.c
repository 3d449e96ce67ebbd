/* Golden test: stories260K converted to GGUF reproduces the llama2.c
 * reference (../shared/models/stories260K/reference-greedy.json): prompt ids
 * from the prompt text, every greedy next id, the first 16 logits after the
 * prompt within 1e-4, and the decoded text. Run for several thread counts
 * and weight types. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "model/model.h"
#include "util/test_util.h"

static char g_gguf[4096];
static json_t *g_ref;

static int setup(void **state) {
    if (pam_test_stories260k("golden-stories260K.gguf", g_gguf, sizeof g_gguf) != PAM_OK) {
        print_error("convert failed: %s\n", pam_last_error());
        return -1;
    }
    json_error_t err;
    g_ref = json_load_file(pam_test_shared("models/stories260K/reference-greedy.json"), 0, &err);
    if (!g_ref) {
        print_error("reference json: %s\n", err.text);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    json_decref(g_ref);
    return 0;
}

static int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static void run_cases(int n_threads, const char *path, double logit_tol, int check_text) {
    pam_model *m;
    assert_int_equal(pam_model_load(path, &m), PAM_OK);
    const pam_tokenizer *tk = pam_model_tokenizer(m);
    int n_vocab = pam_model_get_hparams(m)->n_vocab;
    pam_pool *pool;
    assert_int_equal(pam_pool_create(n_threads, &pool), PAM_OK);
    float *logits = malloc(sizeof(float) * (size_t)n_vocab);
    json_t *cases = json_object_get(g_ref, "cases");
    assert_true(json_array_size(cases) >= 1);
    for (size_t ci = 0; ci < json_array_size(cases); ci++) {
        json_t *c = json_array_get(cases, ci);
        const char *prompt = json_string_value(json_object_get(c, "prompt"));
        int steps = (int)json_integer_value(json_object_get(c, "steps"));
        json_t *pids = json_object_get(c, "prompt_ids"), *nids = json_object_get(c, "next_ids");
        json_t *ref_logits = json_object_get(c, "logits_after_prompt_first16");

        int32_t ids[256];
        size_t n_ids = 0;
        assert_int_equal(pam_tokenizer_encode(tk, prompt, strlen(prompt), 1, 0, ids, 256, &n_ids), PAM_OK);
        assert_int_equal(n_ids, json_array_size(pids));
        for (size_t i = 0; i < n_ids; i++) assert_int_equal(ids[i], json_integer_value(json_array_get(pids, i)));

        pam_ctx *ctx;
        assert_int_equal(pam_ctx_create(m, steps, pool, &ctx), PAM_OK);
        pam_detok dt;
        pam_detok_init(&dt, tk);
        char *text = calloc(1, 65536);
        size_t tl = 0;
        int32_t tok = ids[0];
        tl += pam_detok_push(&dt, tok, text + tl, 65536 - tl);
        size_t n_next = json_array_size(nids);
        for (int pos = 0; pos < steps; pos++) {
            assert_int_equal(pam_forward(ctx, &tok, 1, pos, logits, 0), PAM_OK);
            if (pos == (int)n_ids - 1) {
                for (int i = 0; i < 16; i++) {
                    double ref = json_real_value(json_array_get(ref_logits, (size_t)i));
                    if (fabs(logits[i] - ref) > logit_tol)
                        fail_msg("case %zu logit %d: %.6f vs reference %.6f", ci, i, logits[i], ref);
                }
            }
            int32_t next = pos + 1 < (int)n_ids ? ids[pos + 1] : argmax(logits, n_vocab);
            if (pos + 1 >= (int)n_ids && next == 1) break; /* llama2.c stops on BOS */
            assert_true((size_t)pos < n_next);
            int32_t want = (int32_t)json_integer_value(json_array_get(nids, (size_t)pos));
            if (next != want) fail_msg("case %zu ('%s') position %d: token %d, reference %d", ci, prompt, pos, next, want);
            tl += pam_detok_push(&dt, next, text + tl, 65536 - tl);
            tok = next;
        }
        tl += pam_detok_flush(&dt, text + tl, 65536 - tl);
        if (check_text) assert_string_equal(text, json_string_value(json_object_get(c, "text")));
        free(text);
        pam_ctx_free(ctx);
    }
    free(logits);
    pam_pool_destroy(pool);
    pam_model_free(m);
}

static void test_golden_f32_1thread(void **state) { run_cases(1, g_gguf, 1e-4, 1); }
static void test_golden_f32_2threads(void **state) { run_cases(2, g_gguf, 1e-4, 1); }
static void test_golden_f32_3threads(void **state) { run_cases(3, g_gguf, 1e-4, 1); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_f32_1thread),
        cmocka_unit_test(test_golden_f32_2threads),
        cmocka_unit_test(test_golden_f32_3threads),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
