/* Request parsing and chat templates of the HTTP server, without a server:
 * template detection and rendering for each family, defaults and limits of
 * the parsed parameters, and the error objects. */
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_detect),
        cmocka_unit_test(test_render),
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_parse_kv_sparse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
