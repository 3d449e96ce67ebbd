/* Request parsing and chat templates of the HTTP server, without a server:
 * template detection and rendering for each family, defaults and limits of
 * the parsed parameters (log-probabilities, n, penalties, logit bias, echo),
 * token-limit fields leaving the priority alone, and the error objects. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/api.h"
#include "server/chat.h"
#include "util/test_util.h"

static void test_detect(void **state) {
    const char *l3 = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}";
    assert_int_equal(pam_chat_detect(l3, strlen(l3)), PAM_CHAT_LLAMA3);
    assert_int_equal(pam_chat_detect("{{'<|im_start|>' + role}}", 24), PAM_CHAT_CHATML);
    const char *l2 = "[INST] <<SYS>>\\n{{ system }}<</SYS>>";
    assert_int_equal(pam_chat_detect(l2, strlen(l2)), PAM_CHAT_LLAMA2);
    assert_int_equal(pam_chat_detect("{{ '[INST] ' + content + ' [/INST]' }}", 38), PAM_CHAT_MISTRAL);
    assert_int_equal(pam_chat_detect("<|user|>\n{{ content }}</s>", 26), PAM_CHAT_ZEPHYR);
    assert_int_equal(pam_chat_detect("{{ whatever }}", 14), PAM_CHAT_FALLBACK);
    assert_int_equal(pam_chat_detect(NULL, 0), PAM_CHAT_FALLBACK);
    assert_int_equal(pam_chat_family_from_name("mistral"), PAM_CHAT_MISTRAL);
    assert_int_equal(pam_chat_family_from_name("nope"), -1);
}

static void expect_render(pam_chat_family f, const char *want) {
    pam_chat_msg m[] = {{"system", "S"}, {"user", "U1"}, {"assistant", "A1"}, {"user", "U2"}};
    char *got = pam_chat_render(f, m, 4);
    assert_non_null(got);
    if (strcmp(got, want) != 0) fail_msg("%s: got [%s] want [%s]", pam_chat_family_name(f), got, want);
    free(got);
}

static void test_render(void **state) {
    expect_render(PAM_CHAT_LLAMA3, "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
                                   "<|start_header_id|>user<|end_header_id|>\n\nU1<|eot_id|>"
                                   "<|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|>"
                                   "<|start_header_id|>user<|end_header_id|>\n\nU2<|eot_id|>"
                                   "<|start_header_id|>assistant<|end_header_id|>\n\n");
    expect_render(PAM_CHAT_CHATML, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n"
                                   "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nU2<|im_end|>\n"
                                   "<|im_start|>assistant\n");
    expect_render(PAM_CHAT_LLAMA2, "[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST] A1 </s><s>[INST] U2 [/INST]");
    expect_render(PAM_CHAT_MISTRAL, "[INST] S\n\nU1 [/INST]A1</s>[INST] U2 [/INST]");
    expect_render(PAM_CHAT_ZEPHYR, "<|system|>\nS</s>\n<|user|>\nU1</s>\n<|assistant|>\nA1</s>\n<|user|>\nU2</s>\n"
                                   "<|assistant|>\n");
    expect_render(PAM_CHAT_FALLBACK, "S\n\nUser: U1\nAssistant: A1\nUser: U2\nAssistant:");
}

static void test_parse(void **state) {
    pam_api_request r;
    pam_api_error err;
    const char *b = "{\"prompt\":\"hi\",\"stop\":\"x\",\"seed\":5,\"temperature\":0,\"user\":\"ignored\"}";
    assert_int_equal(pam_api_parse(b, strlen(b), PAM_API_COMPLETION, PAM_CHAT_FALLBACK, &r, &err), 0);
    assert_string_equal(r.prompt, "hi");
    assert_int_equal(r.params.max_tokens, 16); /* OpenAI's default for completions */
    assert_int_equal(r.params.n_stop, 1);
    assert_string_equal(r.params.stop[0], "x");
    assert_true(r.seed_given);
    assert_int_equal(r.params.sampling.seed, 5);
    assert_true(r.params.sampling.temp == 0.0f);
    pam_api_request_free(&r);

    b = "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"stop\":[\"a\",\"b\"],\"stream\":true}";
    assert_int_equal(pam_api_parse(b, strlen(b), PAM_API_CHAT, PAM_CHAT_FALLBACK, &r, &err), 0);
    assert_string_equal(r.prompt, "User: Hi\nAssistant:");
    assert_int_equal(r.params.max_tokens, 0); /* chat: until the end */
    assert_int_equal(r.params.n_stop, 3);     /* the fallback adds "\nUser:" */
    assert_string_equal(r.params.stop[2], "\nUser:");
    assert_true(r.stream);
    pam_api_request_free(&r);

    b = "{\"prompt\":\"hi\",\"top_p\":1e-60}";
    assert_int_equal(pam_api_parse(b, strlen(b), PAM_API_COMPLETION, PAM_CHAT_FALLBACK, &r, &err), -1);
    assert_int_equal(err.http_status, 400);
    assert_string_equal(err.param, "top_p");
    char *js = pam_api_error_json(&err);
    assert_non_null(strstr(js, "\"error\":{\"message\":"));
    assert_non_null(strstr(js, "\"param\":\"top_p\""));
    free(js);
    b = "{\"prompt\":\"hi\",\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\",\"11\",\"12\",\"13\",\"14\",\"15\",\"16\"]}";
    assert_int_equal(pam_api_parse(b, strlen(b), PAM_API_COMPLETION, PAM_CHAT_FALLBACK, &r, &err), -1);
    assert_string_equal(err.param, "stop");
}

/* kv_sparse (extension): a percentage, a token count or "off"; anything else is a 400 naming it. */
static void test_parse_kv_sparse(void **state) {
    (void)state;
    pam_api_request r;
    pam_api_error err;
    const char *b = "{\"prompt\":\"hi\"}";
    assert_int_equal(pam_api_parse(b, strlen(b), PAM_API_COMPLETION, PAM_CHAT_FALLBACK, &r, &err), 0);
    assert_false(r.params.kv_sparse_given);
    pam_api_request_free(&r);
    b = "{\"prompt\":\"hi\",\"kv_sparse\":\"25%\"}";
    assert_int_equal(pam_api_parse(b, strlen(b), PAM_API_COMPLETION, PAM_CHAT_FALLBACK, &r, &err), 0);
    assert_true(r.params.kv_sparse_given && r.params.kv_sparse.tokens == 0 && r.params.kv_sparse.frac == 0.25f);
    pam_api_request_free(&r);
    b = "{\"prompt\":\"hi\",\"kv_sparse\":128}";
    assert_int_equal(pam_api_parse(b, strlen(b), PAM_API_COMPLETION, PAM_CHAT_FALLBACK, &r, &err), 0);
    assert_true(r.params.kv_sparse_given && r.params.kv_sparse.tokens == 128);
    pam_api_request_free(&r);
    b = "{\"prompt\":\"hi\",\"kv_sparse\":\"off\"}";
    assert_int_equal(pam_api_parse(b, strlen(b), PAM_API_COMPLETION, PAM_CHAT_FALLBACK, &r, &err), 0);
    assert_true(r.params.kv_sparse_given && r.params.kv_sparse.tokens == 0 && r.params.kv_sparse.frac == 0.0f);
    pam_api_request_free(&r);
    const char *bad[] = {"{\"prompt\":\"hi\",\"kv_sparse\":\"lots\"}", "{\"prompt\":\"hi\",\"kv_sparse\":true}",
                         "{\"prompt\":\"hi\",\"kv_sparse\":-4}", "{\"prompt\":\"hi\",\"kv_sparse\":\"200%\"}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(pam_api_parse(bad[i], strlen(bad[i]), PAM_API_COMPLETION, PAM_CHAT_FALLBACK, &r, &err), -1);
        assert_int_equal(err.http_status, 400);
        assert_string_equal(err.param, "kv_sparse");
    }
}

static int parse(const char *b, pam_api_kind kind, pam_api_request *r, pam_api_error *err) {
    return pam_api_parse(b, strlen(b), kind, PAM_CHAT_FALLBACK, r, err);
}

static void expect_bad(const char *b, pam_api_kind kind, const char *param, const char *msg_part) {
    pam_api_request r;
    pam_api_error err;
    if (parse(b, kind, &r, &err) == 0) {
        pam_api_request_free(&r);
        fail_msg("accepted: %s", b);
    }
    assert_int_equal(err.http_status, 400);
    if (strcmp(err.param, param) != 0) fail_msg("%s: param %s, want %s", b, err.param, param);
    if (msg_part && !strstr(err.message, msg_part)) fail_msg("%s: message [%s] lacks [%s]", b, err.message, msg_part);
}

/* A token-limit field must not leak into other fields: each one alone, and
 * both, with either endpoint, leave the default priority (and the other
 * defaults) in place. */
static void test_token_limits_keep_priority(void **state) {
    static const char *const bodies[] = {
        "\"max_tokens\":7", "\"max_completion_tokens\":7", "\"max_tokens\":9,\"max_completion_tokens\":7",
        "\"max_completion_tokens\":7,\"best_of\":1", "\"max_completion_tokens\":7,\"n\":1"};
    for (int k = 0; k < 2; k++) {
        pam_api_kind kind = k ? PAM_API_CHAT : PAM_API_COMPLETION;
        for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++) {
            char b[256];
            snprintf(b, sizeof b, "{%s,%s}", k ? "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]" : "\"prompt\":\"x\"",
                     bodies[i]);
            pam_api_request r;
            pam_api_error err;
            assert_int_equal(parse(b, kind, &r, &err), 0);
            if (r.params.priority != 0) fail_msg("%s: priority %d", b, r.params.priority);
            assert_int_equal(r.params.max_tokens, 7);
            assert_int_equal(r.logprobs, -1);
            assert_int_equal(r.params.logprobs, -1);
            assert_int_equal(r.params.prompt_logprobs, -1);
            assert_int_equal(r.n, 1);
            assert_false(r.params.score_only);
            pam_api_request_free(&r);
        }
    }
    pam_api_request r;
    pam_api_error err;
    assert_int_equal(parse("{\"prompt\":\"x\",\"max_completion_tokens\":5,\"priority\":3}", PAM_API_COMPLETION, &r, &err),
                     0);
    assert_int_equal(r.params.priority, 3);
    pam_api_request_free(&r);
}

static void test_new_fields(void **state) {
    pam_api_request r;
    pam_api_error err;
    /* lm-evaluation-harness's log-likelihood request: [[ids]], echo, logprobs, max_tokens 0 or 1 */
    assert_int_equal(parse("{\"prompt\":[[1,2,3]],\"echo\":true,\"logprobs\":1,\"max_tokens\":0,\"temperature\":0}",
                           PAM_API_COMPLETION, &r, &err),
                     0);
    assert_int_equal(r.n_prompt_ids, 3);
    assert_int_equal(r.prompt_ids[2], 3);
    assert_true(r.echo && r.params.score_only);
    assert_int_equal(r.params.logprobs, 1);
    assert_int_equal(r.params.prompt_logprobs, 1);
    pam_api_request_free(&r);
    assert_int_equal(parse("{\"prompt\":\"x\",\"echo\":true,\"max_tokens\":1}", PAM_API_COMPLETION, &r, &err), 0);
    assert_true(r.echo && !r.params.score_only);
    assert_int_equal(r.params.prompt_logprobs, -1); /* echo alone: text, no log-probabilities */
    pam_api_request_free(&r);

    const char *b = "{\"prompt\":\"x\",\"n\":3,\"best_of\":3,\"frequency_penalty\":0.5,\"presence_penalty\":-1,"
                    "\"repetition_penalty\":1.3,\"repeat_last_n\":-1,\"logit_bias\":{\"0\":-100,\"17\":2.5},"
                    "\"logprobs\":20,\"seed\":9}";
    assert_int_equal(parse(b, PAM_API_COMPLETION, &r, &err), 0);
    assert_int_equal(r.n, 3);
    assert_true(r.params.sampling.frequency_penalty == 0.5f && r.params.sampling.presence_penalty == -1.0f);
    assert_true(r.params.sampling.repeat_penalty == 1.3f);
    assert_int_equal(r.params.sampling.repeat_last_n, -1);
    assert_int_equal(r.params.sampling.n_logit_bias, 2);
    assert_ptr_equal(r.params.sampling.logit_bias, r.logit_bias);
    int seen0 = 0, seen17 = 0;
    for (int i = 0; i < 2; i++) {
        if (r.logit_bias[i].id == 0) seen0 = r.logit_bias[i].bias == -100.0f;
        if (r.logit_bias[i].id == 17) seen17 = r.logit_bias[i].bias == 2.5f;
    }
    assert_true(seen0 && seen17);
    assert_int_equal(r.params.logprobs, 20);
    assert_int_equal(r.params.priority, 0);
    assert_int_equal(pam_api_check_vocab(&r, 18, &err), 0);
    assert_int_equal(pam_api_check_vocab(&r, 17, &err), -1);
    assert_string_equal(err.param, "logit_bias");
    pam_api_request_free(&r);

    b = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true,\"top_logprobs\":4,\"n\":2}";
    assert_int_equal(parse(b, PAM_API_CHAT, &r, &err), 0);
    assert_int_equal(r.params.logprobs, 4);
    assert_int_equal(r.params.prompt_logprobs, -1);
    assert_int_equal(r.n, 2);
    pam_api_request_free(&r);
    b = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true}";
    assert_int_equal(parse(b, PAM_API_CHAT, &r, &err), 0);
    assert_int_equal(r.params.logprobs, 0);
    pam_api_request_free(&r);
    /* a batch of prompts: text and token ids mixed */
    assert_int_equal(parse("{\"prompt\":[[1,2],\"x\",[3]],\"n\":42}", PAM_API_COMPLETION, &r, &err), 0);
    assert_int_equal(r.n_prompt_ids, 2);
    assert_int_equal(r.n_more, 2);
    assert_string_equal(r.more[0].text, "x");
    assert_null(r.more[0].ids);
    assert_int_equal(r.more[1].n_ids, 1);
    assert_int_equal(r.more[1].ids[0], 3);
    assert_int_equal(pam_api_check_vocab(&r, 4, &err), 0);
    assert_int_equal(pam_api_check_vocab(&r, 3, &err), -1); /* id 3 of the third prompt */
    pam_api_request_free(&r);
    assert_int_equal(parse("{\"prompt\":[5,6]}", PAM_API_COMPLETION, &r, &err), 0);
    assert_int_equal(pam_api_check_vocab(&r, 6, &err), -1);
    assert_string_equal(err.param, "prompt");
    pam_api_request_free(&r);

    /* Bad values: a 400 naming the field. */
    expect_bad("{\"prompt\":\"x\",\"logprobs\":21}", PAM_API_COMPLETION, "logprobs", "[0, 20]");
    expect_bad("{\"prompt\":\"x\",\"logprobs\":-1}", PAM_API_COMPLETION, "logprobs", NULL);
    expect_bad("{\"prompt\":\"x\",\"logprobs\":true}", PAM_API_COMPLETION, "logprobs", "integer");
    expect_bad("{\"prompt\":\"x\",\"n\":0}", PAM_API_COMPLETION, "n", NULL);
    expect_bad("{\"prompt\":\"x\",\"n\":129}", PAM_API_COMPLETION, "n", "[1, 128]");
    expect_bad("{\"prompt\":\"x\",\"n\":2,\"best_of\":3}", PAM_API_COMPLETION, "best_of", NULL);
    expect_bad("{\"prompt\":\"x\",\"max_tokens\":0}", PAM_API_COMPLETION, "max_tokens", "only with echo");
    expect_bad("{\"prompt\":\"x\",\"frequency_penalty\":2.5}", PAM_API_COMPLETION, "frequency_penalty", NULL);
    expect_bad("{\"prompt\":\"x\",\"presence_penalty\":-3}", PAM_API_COMPLETION, "presence_penalty", NULL);
    expect_bad("{\"prompt\":\"x\",\"repetition_penalty\":0}", PAM_API_COMPLETION, "repetition_penalty", NULL);
    expect_bad("{\"prompt\":\"x\",\"repetition_penalty\":1.1,\"repeat_penalty\":1.2}", PAM_API_COMPLETION,
               "repetition_penalty", "not both");
    expect_bad("{\"prompt\":\"x\",\"logit_bias\":[1]}", PAM_API_COMPLETION, "logit_bias", NULL);
    expect_bad("{\"prompt\":\"x\",\"logit_bias\":{\"a\":1}}", PAM_API_COMPLETION, "logit_bias", "token ids");
    expect_bad("{\"prompt\":\"x\",\"logit_bias\":{\"-1\":1}}", PAM_API_COMPLETION, "logit_bias", "token ids");
    expect_bad("{\"prompt\":\"x\",\"logit_bias\":{\"007\":1}}", PAM_API_COMPLETION, "logit_bias", "token ids");
    expect_bad("{\"prompt\":\"x\",\"logit_bias\":{\"99999999999\":1}}", PAM_API_COMPLETION, "logit_bias", NULL);
    expect_bad("{\"prompt\":\"x\",\"logit_bias\":{\"5\":\"high\"}}", PAM_API_COMPLETION, "logit_bias", NULL);
    expect_bad("{\"prompt\":\"x\",\"logit_bias\":{\"5\":100.5}}", PAM_API_COMPLETION, "logit_bias", NULL);
    expect_bad("{\"prompt\":[[1],[]]}", PAM_API_COMPLETION, "prompt", "batch");
    expect_bad("{\"prompt\":[[1],[2,\"x\"]]}", PAM_API_COMPLETION, "prompt", NULL);
    expect_bad("{\"prompt\":[\"a\",\"b\",\"c\"],\"n\":43}", PAM_API_COMPLETION, "n", "number of prompts");
    expect_bad("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":2}", PAM_API_CHAT,
               "top_logprobs", "logprobs");
    expect_bad("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true,\"top_logprobs\":21}",
               PAM_API_CHAT, "top_logprobs", NULL);
    expect_bad("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":3}", PAM_API_CHAT, "logprobs",
               "boolean");
    expect_bad("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"echo\":true}", PAM_API_CHAT, "echo", NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_detect),
        cmocka_unit_test(test_render),
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_parse_kv_sparse),
        cmocka_unit_test(test_token_limits_keep_priority),
        cmocka_unit_test(test_new_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
