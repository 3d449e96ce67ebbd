/* libFuzzer target for the OpenAI request parser and the tokenizer
 * endpoints. The first byte picks what the rest is: bits 6-7 = 2, a
 * /tokenize body; 3, a /detokenize body; otherwise a request body, with bit
 * 0 picking the endpoint and bits 1-3 the chat template (a built-in family
 * or one of two Jinja templates, one of which refuses a system message). Parsing must
 * either succeed with a consistent request (a prompt or token ids, stop
 * strings within bounds, sampling parameters the engine accepts, n, logprobs
 * and logit_bias in range) or fail with a 4xx error whose JSON rendering is
 * valid; never crash or leak. A parsed request's token ids then go through
 * the log-probability JSON of both formats (byte tokens that are not UTF-8
 * included), which must render. The body is copied to an exact-size heap
 * buffer so ASan flags over-reads. The vocabulary is stories260K's SPM one
 * from $PAM_SHARED_DIR/models/vocab (default ../shared).
 *   ./fuzz_request -max_total_time=60 fuzz/seeds/fuzz_request */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "engine/sampler.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "server/api.h"
#include "server/chat.h"
#include "server/oai.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static pam_gguf *g_gguf;
static pam_tokenizer *g_tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    const char *dir = getenv("PAM_SHARED_DIR");
    if (!dir) dir = "../shared";
    char path[4096];
    snprintf(path, sizeof path, "%s/models/vocab/ggml-vocab-llama-spm.gguf", dir);
    if (pam_gguf_open(path, &g_gguf) != PAM_OK || pam_tokenizer_from_gguf(g_gguf, &g_tok) != PAM_OK) {
        fprintf(stderr, "fuzz_request: cannot load %s: %s (set PAM_SHARED_DIR)\n", path, pam_last_error());
        exit(1);
    }
    return 0;
}

static void check_error(const pam_api_error *err, int allow_5xx) {
    if (err->http_status < 400 || err->http_status > (allow_5xx ? 599 : 499) || !err->message[0]) abort();
    char *js = pam_api_error_json(err);
    if (!js) abort();
    json_error_t je;
    json_t *back = json_loads(js, 0, &je);
    if (!back || !json_is_object(json_object_get(back, "error"))) abort();
    json_decref(back);
    free(js);
}

static void check_json_body(char *out) {
    json_error_t je;
    json_t *back = out ? json_loads(out, JSON_ALLOW_NUL, &je) : NULL; /* byte tokens may be \u0000 */
    if (!back || !json_is_object(back)) abort();
    json_decref(back);
    free(out);
}

/* The prompt's ids as log-probability entries, in both formats. */
static void render_logprobs(const pam_api_request *r) {
    int32_t nv = pam_tokenizer_n_vocab(g_tok);
    for (int k = 0; k < 2; k++) {
        pam_oai_lp lp;
        pam_oai_lp_init(&lp, k ? PAM_API_CHAT : PAM_API_COMPLETION, g_tok);
        for (int32_t i = 0; i < r->n_prompt_ids && i < 64; i++) {
            pam_token_logprob e;
            memset(&e, 0, sizeof e);
            e.id = (int32_t)((uint32_t)r->prompt_ids[i] % (uint32_t)nv);
            e.logprob = i % 3 == 2 ? -INFINITY : -(float)i;
            e.n_top = i % (PAM_MAX_TOP_LOGPROBS + 1);
            for (int32_t t = 0; t < e.n_top; t++)
                e.top[t] = (pam_logprob_top){(int32_t)((uint32_t)(e.id + t * 7) % (uint32_t)nv), -(float)t};
            if (pam_oai_lp_add(&lp, &e, (size_t)i, i == 0) != 0) abort();
        }
        json_t *o = pam_oai_lp_take(&lp);
        char *js = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        check_json_body(js);
        pam_oai_lp_free(&lp);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int target = data[0] >> 6;
    pam_api_kind kind = (data[0] & 1) ? PAM_API_CHAT : PAM_API_COMPLETION;
    static pam_chat_template *tmpl[8];
    static const char *const k_jinja[2] = {
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content if m.content is string else m.content|tojson }}"
        "{% for t in m.tool_calls if m.tool_calls %}{{ t|tojson }}{% endfor %}<|im_end|>\n{% endfor %}"
        "{% if tools %}{{ tools|tojson(indent=2) }}{% endif %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}{{ m['role'] ~ ': ' ~ m['content']|trim }}{% endfor %}"};
    int pick = (data[0] >> 1) % 8;
    if (!tmpl[pick]) {
        char perr[256];
        if (pick < 6) tmpl[pick] = pam_chat_template_builtin((pam_chat_family)pick);
        else if (pam_chat_template_jinja(k_jinja[pick - 6], strlen(k_jinja[pick - 6]), "<s>", "</s>", 1, &tmpl[pick], perr,
                                         sizeof perr) != PAM_OK)
            abort();
        if (!tmpl[pick]) abort();
    }
    size_t len = size - 1;
    char *body = malloc(len ? len : 1);
    memcpy(body, data + 1, len);
    pam_api_error err;
    if (target >= 2) {
        char *out = NULL;
        int rc = target == 2 ? pam_oai_tokenize(g_tok, body, len, &out, &err)
                             : pam_oai_detokenize(g_tok, body, len, &out, &err);
        if (rc == 0) check_json_body(out);
        else check_error(&err, 1), free(out);
        free(body);
        return 0;
    }
    pam_api_request r;
    if (pam_api_parse_chat(body, len, kind, tmpl[pick], &r, &err) == 0) {
        if (!r.prompt && !r.prompt_ids) abort();
        if (r.prompt_ids && r.n_prompt_ids <= 0) abort();
        if (kind == PAM_API_CHAT && !r.prompt) abort();
        if (r.params.n_stop < 0 || r.params.n_stop > PAM_ENGINE_MAX_STOP) abort();
        for (int i = 0; i < r.params.n_stop; i++)
            if (!r.params.stop[i] || r.params.stop[i] != r.stop_store[i]) abort();
        if (r.params.max_tokens < 0) abort();
        if (r.params.score_only && (!r.echo || r.params.max_tokens != 0)) abort();
        pam_sampler_params sp = r.params.sampling;
        if (sp.repeat_last_n == -1) sp.repeat_last_n = 64; /* "the whole context": the engine resolves it */
        if (pam_sampler_params_check(&sp) != PAM_OK) abort();
        if (r.n < 1 || r.n * (1 + r.n_more) > PAM_API_MAX_N) abort();
        if (r.n_more > 0 && kind == PAM_API_CHAT) abort();
        for (int i = 0; i < r.n_more; i++)
            if (!r.more[i].text == !r.more[i].ids || (r.more[i].ids && r.more[i].n_ids <= 0)) abort();
        if (r.logprobs < -1 || r.logprobs > PAM_MAX_TOP_LOGPROBS || r.params.logprobs != r.logprobs) abort();
        if (r.params.prompt_logprobs != (r.echo ? r.logprobs : -1)) abort();
        if (kind == PAM_API_CHAT && r.echo) abort();
        if (r.params.sampling.n_logit_bias > 0 && r.params.sampling.logit_bias != r.logit_bias) abort();
        for (int32_t i = 0; i < r.params.sampling.n_logit_bias; i++)
            if (!(r.logit_bias[i].bias >= -100.0f && r.logit_bias[i].bias <= 100.0f)) abort();
        if (pam_api_check_vocab(&r, pam_tokenizer_n_vocab(g_tok), &err) != 0) check_error(&err, 0);
        if (r.prompt_ids) render_logprobs(&r);
        pam_api_request_free(&r);
    } else {
        check_error(&err, 0);
    }
    free(body);
    return 0;
}
