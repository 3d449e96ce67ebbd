/* Which chat template the server applies, end to end in one process: a
 * model whose GGUF carries tokenizer.chat_template gets that Jinja template
 * (POST /apply-template equals jinja2's rendering in expected.json), a
 * model without one gets the built-in fallback format, and a model whose
 * template our interpreter cannot parse gets the built-in family its text
 * suggests. The GGUFs are stories260K with the metadata key added. */
#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/threadpool.h"
#include "engine/engine.h"
#include "model/gguf.h"
#include "model/model.h"
#include "server/server.h"
#include "util/test_util.h"

static char g_base[4096];
static pam_pool *g_pool;

static int setup(void **state) {
    if (pam_test_stories260k("chat-stories260K.gguf", g_base, sizeof g_base) != PAM_OK ||
        pam_pool_create(1, &g_pool) != PAM_OK) {
        print_error("setup: %s\n", pam_last_error());
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    pam_pool_destroy(g_pool);
    return 0;
}

/* Copies the base model to name with tokenizer.chat_template = tmpl. */
static const char *with_template(const char *name, const char *tmpl) {
    pam_gguf *g;
    assert_int_equal(pam_gguf_open(g_base, &g), PAM_OK);
    pam_gguf_writer *w;
    assert_int_equal(pam_gguf_writer_create(&w), PAM_OK);
    for (int64_t i = 0; i < pam_gguf_n_kv(g); i++)
        assert_int_equal(pam_gguf_writer_add_value(w, pam_gguf_kv_key(g, i), pam_gguf_kv_value(g, i)), PAM_OK);
    assert_int_equal(pam_gguf_writer_add_str(w, "tokenizer.chat_template", tmpl), PAM_OK);
    for (int64_t i = 0; i < pam_gguf_n_tensors(g); i++) {
        const pam_gguf_tensor *t = pam_gguf_tensor_at(g, i);
        assert_int_equal(pam_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, t->n_bytes), PAM_OK);
    }
    const char *path = pam_test_tmp(name);
    assert_int_equal(pam_gguf_writer_write(w, path), PAM_OK);
    pam_gguf_writer_destroy(w);
    pam_gguf_close(g);
    return path;
}

typedef struct running {
    pam_model *m;
    pam_engine *e;
    pam_server *s;
} running;

static void start(running *r, const char *path) {
    assert_int_equal(pam_model_load(path, &r->m), PAM_OK);
    pam_engine_params ep;
    pam_engine_params_default(&ep);
    ep.n_slots = 1;
    ep.n_ctx = 256;
    assert_int_equal(pam_engine_create(r->m, g_pool, &ep, &r->e), PAM_OK);
    pam_server_params sp;
    pam_server_params_default(&sp);
    sp.port = 0;
    if (pam_server_start(r->e, r->m, &sp, &r->s) != PAM_OK) fail_msg("server: %s", pam_last_error());
}

static void stop(running *r) {
    pam_server_drain(r->s);
    pam_server_stop(r->s);
    pam_engine_destroy(r->e);
    pam_model_free(r->m);
}

/* POST path with body over loopback; returns the status and the body (malloc'd). */
static int post(const running *r, const char *path, const char *body, char **resp) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)pam_server_port(r->s));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    char head[512];
    int n = snprintf(head, sizeof head,
                     "POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     path, strlen(body));
    assert_int_equal(write(fd, head, (size_t)n), n);
    assert_int_equal(write(fd, body, strlen(body)), (ssize_t)strlen(body));
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    ssize_t k;
    while ((k = read(fd, buf + len, cap - len - 1)) > 0) {
        len += (size_t)k;
        if (len + 1 == cap) buf = realloc(buf, cap *= 2);
    }
    buf[len] = '\0';
    close(fd);
    int status = 0;
    assert_int_equal(sscanf(buf, "HTTP/1.%*d %d", &status), 1);
    char *b = strstr(buf, "\r\n\r\n");
    assert_non_null(b);
    *resp = strdup(b + 4);
    free(buf);
    return status;
}

/* The prompt of an /apply-template response (malloc'd). */
static char *prompt_of(const char *resp) {
    json_t *j = json_loads(resp, 0, NULL);
    assert_non_null(j);
    const char *p = json_string_value(json_object_get(j, "prompt"));
    if (!p) fail_msg("no prompt in %s", resp);
    char *r = strdup(p);
    json_decref(j);
    return r;
}

static void test_model_template(void **state) {
    size_t n;
    char *src = pam_test_read_file(pam_test_shared("templates/Qwen-Qwen2.5-7B-Instruct.jinja"), &n);
    assert_non_null(src);
    char *exp_text = pam_test_read_file(pam_test_shared("templates/expected.json"), &n);
    json_t *exp = json_loads(exp_text, 0, NULL);
    free(exp_text);
    assert_non_null(exp);
    running r;
    start(&r, with_template("chat-qwen.gguf", src));
    free(src);
    assert_string_equal(pam_server_chat_template_desc(r.s), "jinja (the model's tokenizer.chat_template)");
    json_t *cases = json_object_get(exp, "cases");
    int checked = 0;
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *c = json_array_get(cases, i);
        if (strcmp(json_string_value(json_object_get(c, "template")), "Qwen-Qwen2.5-7B-Instruct.jinja") != 0 ||
            !json_is_true(json_object_get(c, "add_generation_prompt")))
            continue;
        json_t *body = json_pack("{s:O}", "messages", json_object_get(c, "messages"));
        char *bs = json_dumps(body, 0), *resp;
        json_decref(body);
        assert_int_equal(post(&r, "/apply-template", bs, &resp), 200);
        free(bs);
        char *got = prompt_of(resp);
        assert_string_equal(got, json_string_value(json_object_get(c, "expected")));
        free(got);
        free(resp);
        checked++;
    }
    assert_int_equal(checked, 4);
    /* a chat completion goes through the same template */
    char *resp;
    assert_int_equal(post(&r, "/v1/chat/completions",
                          "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":2}", &resp),
                     200);
    assert_non_null(strstr(resp, "\"completion_tokens\":2"));
    free(resp);
    stop(&r);
    json_decref(exp);
}

static void test_no_template(void **state) {
    running r;
    start(&r, g_base);
    assert_string_equal(pam_server_chat_template_desc(r.s),
                        "fallback (built-in; the model has no tokenizer.chat_template)");
    char *resp;
    assert_int_equal(post(&r, "/apply-template",
                          "{\"messages\":[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":\"Hi\"}]}",
                          &resp),
                     200);
    char *got = prompt_of(resp);
    assert_string_equal(got, "S\n\nUser: Hi\nAssistant:");
    free(got);
    free(resp);
    /* the built-in formats know four roles */
    assert_int_equal(post(&r, "/apply-template", "{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", &resp), 400);
    assert_non_null(strstr(resp, "role must be system, developer, user or assistant"));
    free(resp);
    stop(&r);
}

static void test_unparsable_template(void **state) {
    running r;
    start(&r, with_template("chat-broken.gguf", "{% for m in messages %}<|im_start|>{{ m.content }}"));
    assert_int_equal(pam_server_chat_family(r.s), PAM_CHAT_CHATML);
    const char *desc = pam_server_chat_template_desc(r.s);
    if (!strstr(desc, "chatml (built-in; the model's template does not parse: TemplateSyntaxError: Unexpected end"))
        fail_msg("%s", desc);
    char *resp;
    assert_int_equal(post(&r, "/apply-template", "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}", &resp), 200);
    char *got = prompt_of(resp);
    assert_string_equal(got, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    free(got);
    free(resp);
    stop(&r);
}

/* A template that parses but cannot render a plain conversation (here a
 * method our interpreter lacks) would fail every request: the server finds
 * out at start and uses the built-in family instead. */
static void test_template_that_fails(void **state) {
    running r;
    start(&r, with_template("chat-fails.gguf",
                            "{% for m in messages %}<|start_header_id|>{{ m.content.casefold() }}{% endfor %}"));
    assert_int_equal(pam_server_chat_family(r.s), PAM_CHAT_LLAMA3);
    const char *desc = pam_server_chat_template_desc(r.s);
    if (strcmp(desc, "llama3 (built-in; the model's template fails on a one-message conversation: UndefinedError: "
                     "'str object' has no attribute 'casefold')") != 0)
        fail_msg("%s", desc);
    stop(&r);
    /* a template's own refusal is not a failure: it stays */
    start(&r, with_template("chat-refuses.gguf", "{{ raise_exception('no') }}"));
    assert_string_equal(pam_server_chat_template_desc(r.s), "jinja (the model's tokenizer.chat_template)");
    char *resp;
    assert_int_equal(post(&r, "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}", &resp),
                     400);
    assert_non_null(strstr(resp, "\"message\":\"TemplateError: no\""));
    free(resp);
    stop(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_template),
        cmocka_unit_test(test_no_template),
        cmocka_unit_test(test_unparsable_template),
        cmocka_unit_test(test_template_that_fails),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
