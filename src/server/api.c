/* OpenAI request parsing and validation (see api.h). */
#include "server/api.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void pam_api_error_set(pam_api_error *err, int http_status, const char *type, const char *code, const char *param,
                       const char *fmt, ...) {
    err->http_status = http_status;
    err->type = type;
    err->code = code;
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

/* A 400 invalid_request_error; returns -1 for `return BAD(...)`. */
static int bad(pam_api_error *err, const char *param, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(pam_api_error *err, const char *param, const char *fmt, ...) {
    err->http_status = 400;
    err->type = "invalid_request_error";
    err->code = NULL;
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return -1;
}
#define BAD(...) bad(err, __VA_ARGS__)

char *pam_api_error_json(const pam_api_error *err) {
    json_t *e = json_object();
    /* The message may quote input bytes: keep it valid UTF-8 for JSON. */
    json_t *msg = json_string(err->message);
    if (!msg) msg = json_string("invalid request");
    json_object_set_new(e, "message", msg);
    json_object_set_new(e, "type", json_string(err->type ? err->type : "invalid_request_error"));
    json_object_set_new(e, "param", err->param[0] ? json_string(err->param) : json_null());
    json_object_set_new(e, "code", err->code ? json_string(err->code) : json_null());
    json_t *root = json_pack("{s:o}", "error", e);
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return s;
}

void pam_api_request_free(pam_api_request *r) {
    free(r->prompt);
    free(r->prompt_ids);
    for (int i = 0; i < r->n_more; i++) {
        free(r->more[i].text);
        free(r->more[i].ids);
    }
    free(r->more);
    free(r->model);
    free(r->logit_bias);
    for (int i = 0; i < PAM_ENGINE_MAX_STOP; i++) free(r->stop_store[i]);
    memset(r, 0, sizeof *r);
}

int pam_api_check_vocab(const pam_api_request *r, int32_t n_vocab, pam_api_error *err) {
    for (int p = 0; p <= r->n_more; p++) {
        const int32_t *ids = p ? r->more[p - 1].ids : r->prompt_ids;
        int32_t n = p ? r->more[p - 1].n_ids : r->n_prompt_ids;
        for (int32_t i = 0; ids && i < n; i++)
            if (ids[i] >= n_vocab)
                return BAD("prompt", "token id %d out of range (vocabulary of %d)", (int)ids[i], (int)n_vocab);
    }
    for (int32_t i = 0; i < r->params.sampling.n_logit_bias; i++)
        if (r->logit_bias[i].id >= n_vocab)
            return BAD("logit_bias", "logit_bias: token id %d out of range (vocabulary of %d)", (int)r->logit_bias[i].id,
                       (int)n_vocab);
    return 0;
}

/* logit_bias: {"token id": bias in [-100, 100], ...}; ids are canonical
 * decimal strings, so two keys never name one token. */
static int parse_logit_bias(json_t *root, pam_api_request *r, pam_api_error *err) {
    json_t *lb = json_object_get(root, "logit_bias");
    if (!lb || json_is_null(lb)) return 0;
    if (!json_is_object(lb)) return BAD("logit_bias", "'logit_bias' must be an object mapping token ids to biases");
    size_t n = json_object_size(lb);
    if (n == 0) return 0;
    if (n > PAM_API_MAX_LOGIT_BIAS) return BAD("logit_bias", "at most %d logit_bias entries", PAM_API_MAX_LOGIT_BIAS);
    if (!(r->logit_bias = malloc(n * sizeof *r->logit_bias))) return BAD(NULL, "out of memory");
    const char *key;
    json_t *val;
    int32_t k = 0;
    json_object_foreach(lb, key, val) {
        size_t kl = strlen(key);
        int ok = kl > 0 && kl <= 10 && (key[0] != '0' || kl == 1);
        for (size_t i = 0; ok && i < kl; i++) ok = key[i] >= '0' && key[i] <= '9';
        long long id = ok ? strtoll(key, NULL, 10) : -1;
        if (!ok || id > INT32_MAX)
            return BAD("logit_bias", "logit_bias keys must be token ids (decimal integers >= 0), got \"%.64s\"", key);
        if (!json_is_number(val))
            return BAD("logit_bias", "logit_bias[\"%s\"] must be a number in [-100, 100]", key);
        double b = json_number_value(val);
        if (!isfinite(b) || b < -100 || b > 100)
            return BAD("logit_bias", "logit_bias[\"%s\"] must be in [-100, 100], got %g", key, b);
        r->logit_bias[k++] = (pam_logit_bias){(int32_t)id, (float)b};
    }
    r->params.sampling.logit_bias = r->logit_bias;
    r->params.sampling.n_logit_bias = k;
    return 0;
}

/* A number field: absent or null leaves *out alone. *given (if not NULL)
 * says whether this lookup found the field: always written, so a flag
 * reused across lookups never carries one field's presence to the next. */
static int get_number(json_t *root, const char *key, double lo, double hi, int lo_open, double *out, int *given,
                      pam_api_error *err) {
    if (given) *given = 0;
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return BAD(key, "'%s' must be a number", key);
    double d = json_number_value(v);
    /* The engine keeps floats: a value that rounds to the open bound is out. */
    if (!isfinite(d) || d < lo || d > hi || (lo_open && (float)d <= (float)lo))
        return BAD(key, "'%s' must be in %s%g, %g], got %g", key, lo_open ? "(" : "[", lo, hi, d);
    *out = d;
    if (given) *given = 1;
    return 0;
}

static int get_int(json_t *root, const char *key, long long lo, long long hi, long long *out, int *given,
                   pam_api_error *err) {
    if (given) *given = 0;
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v)) return BAD(key, "'%s' must be an integer", key);
    long long x = json_integer_value(v);
    if (x < lo || x > hi) return BAD(key, "'%s' must be in [%lld, %lld], got %lld", key, lo, hi, x);
    *out = x;
    if (given) *given = 1;
    return 0;
}

static int get_bool(json_t *root, const char *key, int *out, pam_api_error *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return BAD(key, "'%s' must be a boolean", key);
    *out = json_is_true(v);
    return 0;
}

static int parse_stop(json_t *root, pam_api_request *r, pam_api_error *err) {
    json_t *v = json_object_get(root, "stop");
    if (!v || json_is_null(v)) return 0;
    if (json_is_string(v)) {
        if (!(r->stop_store[0] = strdup(json_string_value(v)))) return BAD("stop", "out of memory");
        r->params.n_stop = 1;
    } else if (json_is_array(v)) {
        size_t n = json_array_size(v);
        if (n > PAM_ENGINE_MAX_STOP - 1) return BAD("stop", "at most %d stop strings", PAM_ENGINE_MAX_STOP - 1);
        for (size_t i = 0; i < n; i++) {
            json_t *s = json_array_get(v, i);
            if (!json_is_string(s)) return BAD("stop", "'stop' must be a string or an array of strings");
            if (!(r->stop_store[i] = strdup(json_string_value(s)))) return BAD("stop", "out of memory");
            r->params.n_stop++;
        }
    } else {
        return BAD("stop", "'stop' must be a string or an array of strings");
    }
    for (int i = 0; i < r->params.n_stop; i++)
        if (strlen(r->stop_store[i]) > 1024) return BAD("stop", "stop strings must be at most 1024 bytes");
    return 0;
}

/* Message content: a string, or an array of {"type":"text","text":...}
 * parts (joined), or null for an assistant turn. Returns malloc'd text. */
static char *message_text(json_t *content, int i, pam_api_error *err) {
    if (!content || json_is_null(content)) return strdup("");
    if (json_is_string(content)) return strdup(json_string_value(content));
    if (!json_is_array(content)) {
        BAD("messages", "messages[%d].content must be a string or an array of content parts", i);
        return NULL;
    }
    size_t total = 1;
    for (size_t k = 0; k < json_array_size(content); k++) {
        json_t *part = json_array_get(content, k);
        json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        if (!json_is_object(part) || !json_is_string(type) || strcmp(json_string_value(type), "text") != 0 ||
            !json_is_string(text)) {
            BAD("messages", "messages[%d].content[%zu]: only parts of type \"text\" with a string \"text\" are supported",
                i, k);
            return NULL;
        }
        total += json_string_length(text);
    }
    char *s = malloc(total), *p = s;
    if (!s) return NULL;
    for (size_t k = 0; k < json_array_size(content); k++) {
        json_t *text = json_object_get(json_array_get(content, k), "text");
        memcpy(p, json_string_value(text), json_string_length(text));
        p += json_string_length(text);
    }
    *p = '\0';
    return s;
}

/* Checks the messages, flattens each content to a string, and renders the
 * chat template. A built-in family knows four roles; a Jinja template gets
 * any role and every member of a message (tool_calls, name, ...), the
 * request's tools and its chat_template_kwargs (llama-server's extension,
 * e.g. {"enable_thinking": false}) as variables, and decides itself what
 * it refuses: its error becomes a 400. */
static int parse_messages(json_t *root, const pam_chat_template *chat, pam_api_request *r, pam_api_error *err) {
    json_t *msgs = json_object_get(root, "messages");
    if (!msgs) return BAD("messages", "'messages' is required");
    if (!json_is_array(msgs)) return BAD("messages", "'messages' must be an array");
    size_t n = json_array_size(msgs);
    if (n == 0) return BAD("messages", "'messages' must not be empty");
    if (n > PAM_API_MAX_MESSAGES) return BAD("messages", "at most %d messages", PAM_API_MAX_MESSAGES);
    int jinja = pam_chat_template_is_jinja(chat);
    json_t *norm = json_array(), *vars = json_object();
    int rc = 0;
    if (!norm || !vars) {
        rc = BAD(NULL, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *msg = json_array_get(msgs, i);
        if (!json_is_object(msg)) {
            rc = BAD("messages", "messages[%zu] must be an object", i);
            goto done;
        }
        json_t *role = json_object_get(msg, "role");
        if (!json_is_string(role)) {
            rc = BAD("messages", "messages[%zu].role must be a string", i);
            goto done;
        }
        const char *rs = json_string_value(role);
        if (!jinja && strcmp(rs, "system") && strcmp(rs, "developer") && strcmp(rs, "user") && strcmp(rs, "assistant")) {
            rc = BAD("messages", "messages[%zu].role must be system, developer, user or assistant", i);
            goto done;
        }
        json_t *content = json_object_get(msg, "content");
        int no_content = !content || json_is_null(content);
        if (no_content && !jinja && strcmp(rs, "assistant") != 0) {
            rc = BAD("messages", "messages[%zu].content is required", i);
            goto done;
        }
        char *text = message_text(content, (int)i, err);
        if (!text) {
            rc = -1;
            if (err->http_status == 0) BAD(NULL, "out of memory");
            goto done;
        }
        json_t *m = jinja ? json_copy(msg) : json_object();
        if (!m || json_object_set(m, "role", role) ||
            json_object_set_new(m, "content", no_content && jinja ? json_null() : json_string(text)) ||
            json_array_append_new(norm, m)) {
            free(text);
            rc = BAD(NULL, "out of memory");
            goto done;
        }
        free(text);
    }
    if (jinja) {
        json_t *tools = json_object_get(root, "tools"), *kw = json_object_get(root, "chat_template_kwargs");
        if (tools && !json_is_null(tools)) json_object_set(vars, "tools", tools);
        if (kw && !json_is_null(kw)) {
            if (!json_is_object(kw)) {
                rc = BAD("chat_template_kwargs", "'chat_template_kwargs' must be an object");
                goto done;
            }
            json_object_update(vars, kw);
        }
    }
    char msg[512];
    pam_status st = pam_chat_template_apply(chat, norm, vars, 1, &r->prompt, msg, sizeof msg);
    if (st == PAM_ERR_INVALID) rc = BAD("messages", "%s", msg);
    else if (st != PAM_OK) rc = BAD(NULL, "out of memory");
done:
    json_decref(norm);
    json_decref(vars);
    return rc;
}

/* One prompt: a string, or a non-empty array of token ids. */
static int parse_one_prompt(json_t *p, char **text, int32_t **ids, int32_t *n_ids, pam_api_error *err) {
    if (json_is_string(p)) {
        if (!(*text = strdup(json_string_value(p)))) return BAD(NULL, "out of memory");
        return 0;
    }
    if (!json_is_array(p) || json_array_size(p) == 0)
        return BAD("prompt", "'prompt' must be a string, an array of token ids, or an array of those (a batch)");
    size_t n = json_array_size(p);
    if (n > PAM_API_MAX_TOKENS_LIMIT) return BAD("prompt", "prompt too long");
    if (!(*ids = malloc(n * sizeof **ids))) return BAD(NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(p, i);
        if (!json_is_integer(t))
            return BAD("prompt", "'prompt' must be a string, an array of token ids, or an array of those (a batch)");
        long long v = json_integer_value(t);
        if (v < 0 || v > INT32_MAX) return BAD("prompt", "token id %lld out of range", v);
        (*ids)[i] = (int32_t)v;
    }
    *n_ids = (int32_t)n;
    return 0;
}

/* A prompt, or a batch: an array of prompts (strings or arrays of token
 * ids; lm-evaluation-harness sends [[ids], ...]). The first goes to
 * prompt / prompt_ids, the others to more. */
static int parse_prompt(json_t *root, pam_api_request *r, pam_api_error *err) {
    json_t *p = json_object_get(root, "prompt");
    if (!p) return BAD("prompt", "'prompt' is required");
    json_t *first = json_is_array(p) ? json_array_get(p, 0) : NULL;
    if (!first || !(json_is_string(first) || json_is_array(first)))
        return parse_one_prompt(p, &r->prompt, &r->prompt_ids, &r->n_prompt_ids, err);
    size_t n = json_array_size(p);
    if (n > PAM_API_MAX_N) return BAD("prompt", "at most %d prompts per request", PAM_API_MAX_N);
    if (parse_one_prompt(first, &r->prompt, &r->prompt_ids, &r->n_prompt_ids, err)) return -1;
    if (n == 1) return 0;
    if (!(r->more = calloc(n - 1, sizeof *r->more))) return BAD(NULL, "out of memory");
    for (size_t i = 1; i < n; i++) {
        pam_api_prompt *m = &r->more[r->n_more++];
        if (parse_one_prompt(json_array_get(p, i), &m->text, &m->ids, &m->n_ids, err)) return -1;
    }
    return 0;
}

/* Fields that would change what the client gets back, which the server
 * does not implement: refused with a 400 naming the field, so an agent
 * framework fails loudly instead of receiving plain text. Fields that only
 * label or route a request (user, metadata, store, service_tier, ...) pass. */
static int refuse_unimplemented(json_t *root, pam_api_error *err) {
    static const char *const never[] = {"functions", "function_call", "audio",    "prediction", "grammar",
                                        "json_schema", "guided_json", "guided_regex", "guided_choice", "web_search_options"};
    json_t *v;
    for (size_t i = 0; i < sizeof never / sizeof *never; i++)
        if ((v = json_object_get(root, never[i])) && !json_is_null(v)) {
            pam_api_error_set(err, 400, "invalid_request_error", "unsupported_parameter", never[i],
                              "'%s' is not supported by this server", never[i]);
            return -1;
        }
    if ((v = json_object_get(root, "tools")) && !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0)) {
        pam_api_error_set(err, 400, "invalid_request_error", "unsupported_parameter", "tools",
                          "'tools' is not supported by this server (no tool calling): send no tools or an empty list");
        return -1;
    }
    if ((v = json_object_get(root, "tool_choice")) && !json_is_null(v) &&
        !(json_is_string(v) && (!strcmp(json_string_value(v), "none") || !strcmp(json_string_value(v), "auto")))) {
        pam_api_error_set(err, 400, "invalid_request_error", "unsupported_parameter", "tool_choice",
                          "'tool_choice' is not supported by this server (no tool calling)");
        return -1;
    }
    if ((v = json_object_get(root, "response_format")) && !json_is_null(v)) {
        json_t *t = json_is_object(v) ? json_object_get(v, "type") : NULL;
        if (!t || !json_is_string(t) || strcmp(json_string_value(t), "text") != 0) {
            pam_api_error_set(err, 400, "invalid_request_error", "unsupported_parameter", "response_format",
                              "'response_format' other than {\"type\": \"text\"} is not supported by this server "
                              "(no JSON mode or structured output)");
            return -1;
        }
    }
    if ((v = json_object_get(root, "modalities")) && !json_is_null(v)) {
        size_t i;
        json_t *m;
        json_array_foreach(v, i, m) if (!json_is_string(m) || strcmp(json_string_value(m), "text") != 0) {
            pam_api_error_set(err, 400, "invalid_request_error", "unsupported_parameter", "modalities",
                              "only the \"text\" modality is supported");
            return -1;
        }
    }
    if ((v = json_object_get(root, "suffix")) && !json_is_null(v) && !(json_is_string(v) && !json_string_length(v))) {
        pam_api_error_set(err, 400, "invalid_request_error", "unsupported_parameter", "suffix",
                          "'suffix' (insertion) is not supported by this server");
        return -1;
    }
    /* best_of: only equal to n (checked with n) */
    return 0;
}

int pam_api_apply_template(const char *body, size_t len, const pam_chat_template *chat, char **prompt,
                           pam_api_error *err) {
    memset(err, 0, sizeof *err);
    *prompt = NULL;
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        pam_api_error_set(err, 400, "invalid_request_error", NULL, NULL, "malformed JSON at line %d column %d: %s",
                          jerr.line, jerr.column, jerr.text);
        return -1;
    }
    int rc;
    pam_api_request r;
    memset(&r, 0, sizeof r);
    if (!json_is_object(root)) rc = BAD(NULL, "the request body must be a JSON object");
    else rc = parse_messages(root, chat, &r, err);
    json_decref(root);
    if (rc == 0) *prompt = r.prompt;
    else free(r.prompt);
    return rc;
}

int pam_api_parse(const char *body, size_t len, pam_api_kind kind, pam_chat_family fam, pam_api_request *out,
                  pam_api_error *err) {
    pam_chat_template *chat = pam_chat_template_builtin(fam);
    if (!chat) {
        memset(out, 0, sizeof *out);
        memset(err, 0, sizeof *err);
        return BAD(NULL, "out of memory");
    }
    int rc = pam_api_parse_chat(body, len, kind, chat, out, err);
    pam_chat_template_free(chat);
    return rc;
}

int pam_api_parse_chat(const char *body, size_t len, pam_api_kind kind, const pam_chat_template *chat,
                       pam_api_request *out, pam_api_error *err) {
    memset(out, 0, sizeof *out);
    memset(err, 0, sizeof *err);
    out->kind = kind;
    pam_request_params_default(&out->params);
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        pam_api_error_set(err, 400, "invalid_request_error", NULL, NULL, "malformed JSON at line %d column %d: %s",
                          jerr.line, jerr.column, jerr.text);
        return -1;
    }
    int rc = -1;
    if (!json_is_object(root)) {
        BAD(NULL, "the request body must be a JSON object");
        goto done;
    }
    if (refuse_unimplemented(root, err)) goto done;
    json_t *model = json_object_get(root, "model");
    if (model && !json_is_null(model)) {
        if (!json_is_string(model)) {
            BAD("model", "'model' must be a string");
            goto done;
        }
        if (!(out->model = strdup(json_string_value(model)))) goto done;
    }
    if (kind == PAM_API_CHAT ? parse_messages(root, chat, out, err) : parse_prompt(root, out, err)) goto done;

    pam_request_params *p = &out->params;
    double d;
    long long v;
    int given;
    if (get_bool(root, "echo", &out->echo, err)) goto done;
    if (out->echo && kind == PAM_API_CHAT) {
        BAD("echo", "'echo' is only supported by /v1/completions");
        goto done;
    }
    /* OpenAI's defaults: 16 tokens for completions, none (context) for chat.
     * 0 only with echo: score the prompt, generate nothing. */
    p->max_tokens = kind == PAM_API_COMPLETION ? 16 : 0;
    static const char *const limit_keys[] = {"max_tokens", "max_completion_tokens"};
    for (int i = 0; i < 2; i++) {
        if (get_int(root, limit_keys[i], out->echo ? 0 : 1, PAM_API_MAX_TOKENS_LIMIT, &v, &given, err)) {
            json_t *lim = json_object_get(root, limit_keys[i]);
            if (!out->echo && json_is_integer(lim) && json_integer_value(lim) == 0)
                snprintf(err->message + strlen(err->message), sizeof err->message - strlen(err->message),
                         " (0 only with echo)");
            goto done;
        }
        if (given) {
            p->max_tokens = (int32_t)v;
            p->score_only = v == 0;
            out->max_tokens_given = 1;
        }
    }
    d = p->sampling.temp;
    if (get_number(root, "temperature", 0, 2, 0, &d, NULL, err)) goto done;
    p->sampling.temp = (float)d;
    d = p->sampling.top_p;
    if (get_number(root, "top_p", 0, 1, 1, &d, NULL, err)) goto done;
    p->sampling.top_p = (float)d;
    d = p->sampling.min_p;
    if (get_number(root, "min_p", 0, 1, 0, &d, NULL, err)) goto done;
    p->sampling.min_p = (float)d;
    /* llama-server's repeat_penalty, or vLLM's name for the same thing */
    int rp_given = 0, rp2_given = 0;
    d = p->sampling.repeat_penalty;
    if (get_number(root, "repeat_penalty", 0, 100, 1, &d, &rp_given, err)) goto done;
    if (get_number(root, "repetition_penalty", 0, 100, 1, &d, &rp2_given, err)) goto done;
    if (rp_given && rp2_given) {
        BAD("repetition_penalty", "give 'repeat_penalty' or 'repetition_penalty', not both");
        goto done;
    }
    p->sampling.repeat_penalty = (float)d;
    v = p->sampling.repeat_last_n;
    if (get_int(root, "repeat_last_n", -1, 1 << 20, &v, NULL, err)) goto done;
    p->sampling.repeat_last_n = (int32_t)v; /* -1: the whole context (the engine resolves it) */
    v = p->sampling.top_k;
    if (get_int(root, "top_k", 0, 1 << 30, &v, NULL, err)) goto done;
    p->sampling.top_k = (int32_t)v;
    d = 0;
    if (get_number(root, "frequency_penalty", -2, 2, 0, &d, NULL, err)) goto done;
    p->sampling.frequency_penalty = (float)d;
    d = 0;
    if (get_number(root, "presence_penalty", -2, 2, 0, &d, NULL, err)) goto done;
    p->sampling.presence_penalty = (float)d;
    if (parse_logit_bias(root, out, err)) goto done;
    if (get_int(root, "seed", INT64_MIN, INT64_MAX, &v, &out->seed_given, err)) goto done;
    if (out->seed_given) p->sampling.seed = (uint64_t)v;
    v = 1;
    if (get_int(root, "n", 1, PAM_API_MAX_N, &v, NULL, err)) goto done;
    out->n = (int)v;
    if (out->n * (1 + out->n_more) > PAM_API_MAX_N) {
        BAD("n", "'n' (%d) times the number of prompts (%d) must be at most %d", out->n, 1 + out->n_more,
            PAM_API_MAX_N);
        goto done;
    }
    if (get_int(root, "best_of", 1, PAM_API_MAX_N, &v, &given, err)) goto done;
    if (given && v != out->n) {
        pam_api_error_set(err, 400, "invalid_request_error", "unsupported_parameter", "best_of",
                          "'best_of' other than 'n' (%d) is not supported by this server, got %lld", out->n, v);
        goto done;
    }
    out->logprobs = -1;
    if (kind == PAM_API_COMPLETION) {
        /* OpenAI's legacy API: an integer, alternatives per token */
        if (get_int(root, "logprobs", 0, PAM_MAX_TOP_LOGPROBS, &v, &given, err)) goto done;
        if (given) out->logprobs = (int)v;
    } else {
        int want = 0;
        if (get_bool(root, "logprobs", &want, err)) goto done;
        v = 0;
        if (get_int(root, "top_logprobs", 0, PAM_MAX_TOP_LOGPROBS, &v, &given, err)) goto done;
        if (given && !want) {
            BAD("top_logprobs", "'top_logprobs' needs 'logprobs': true");
            goto done;
        }
        if (want) out->logprobs = (int)v;
    }
    p->logprobs = out->logprobs;
    p->prompt_logprobs = out->echo ? out->logprobs : -1;
    if (get_bool(root, "stream", &out->stream, err)) goto done;
    if (get_bool(root, "ignore_eos", &p->ignore_eos, err)) goto done;
    /* extension: sparse attention budget, "25%" or a token count; "off": exact */
    json_t *ks = json_object_get(root, "kv_sparse");
    if (ks && !json_is_null(ks)) {
        if (json_is_string(ks)) {
            if (pam_kv_sparse_parse(json_string_value(ks), &p->kv_sparse) != PAM_OK) {
                BAD("kv_sparse", "%s", pam_last_error());
                goto done;
            }
        } else if (json_is_integer(ks) && json_integer_value(ks) >= 0 && json_integer_value(ks) <= (1 << 30)) {
            p->kv_sparse.tokens = (int32_t)json_integer_value(ks);
            p->kv_sparse.frac = 0.0f;
        } else {
            BAD("kv_sparse", "'kv_sparse' must be a token count or a string such as \"25%%\" or \"off\"");
            goto done;
        }
        p->kv_sparse_given = 1;
    }
    /* extension: a higher priority may preempt a running lower one when every slot is busy */
    if (get_int(root, "priority", -1000000, 1000000, &v, &given, err)) goto done;
    if (given) p->priority = (int32_t)v;
    json_t *so = json_object_get(root, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so)) {
            BAD("stream_options", "'stream_options' must be an object");
            goto done;
        }
        if (get_bool(so, "include_usage", &out->include_usage, err)) goto done;
    }
    if (parse_stop(root, out, err)) goto done;
    const char *extra = kind == PAM_API_CHAT ? pam_chat_template_stop(chat) : NULL;
    if (extra) { /* parse_stop leaves room for it */
        if (!(out->stop_store[p->n_stop] = strdup(extra))) goto done;
        p->n_stop++;
    }
    for (int i = 0; i < p->n_stop; i++) p->stop[i] = out->stop_store[i];
    rc = 0;
done:
    json_decref(root);
    if (rc != 0) {
        if (err->http_status == 0) BAD(NULL, "out of memory");
        pam_api_request_free(out);
    }
    return rc;
}
