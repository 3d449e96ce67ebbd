/* libFuzzer target for the OpenAI request parser: the first byte picks the
 * endpoint and the chat template (a built-in family or one of two Jinja
 * templates, one of which refuses a system message), the rest is the body. Parsing must
 * either succeed with a consistent request (a prompt or token ids, stop
 * strings within bounds, sampling parameters the engine accepts) or fail
 * with a 4xx error whose JSON rendering is valid; never crash or leak. The
 * body is copied to an exact-size heap buffer so ASan flags over-reads.
 *   ./fuzz_request -max_total_time=60 fuzz/seeds/fuzz_request */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "engine/sampler.h"
#include "server/api.h"
#include "server/chat.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
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
    pam_api_request r;
    pam_api_error err;
    if (pam_api_parse_chat(body, len, kind, tmpl[pick], &r, &err) == 0) {
        if (!r.prompt && !r.prompt_ids) abort();
        if (r.prompt_ids && r.n_prompt_ids <= 0) abort();
        if (kind == PAM_API_CHAT && !r.prompt) abort();
        if (r.params.n_stop < 0 || r.params.n_stop > PAM_ENGINE_MAX_STOP) abort();
        for (int i = 0; i < r.params.n_stop; i++)
            if (!r.params.stop[i] || r.params.stop[i] != r.stop_store[i]) abort();
        if (r.params.max_tokens < 0) abort();
        if (pam_sampler_params_check(&r.params.sampling) != PAM_OK) abort();
        pam_api_request_free(&r);
    } else {
        if (err.http_status < 400 || err.http_status > 499 || !err.message[0]) abort();
        char *js = pam_api_error_json(&err);
        if (!js) abort();
        json_error_t je;
        json_t *back = json_loads(js, 0, &je);
        if (!back || !json_is_object(json_object_get(back, "error"))) abort();
        json_decref(back);
        free(js);
    }
    free(body);
    return 0;
}
