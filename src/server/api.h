/* OpenAI request bodies -> engine requests. Parsing is pure (no model, no
 * engine) so the fuzzer can drive it: JSON via jansson, then every field is
 * checked for type and range; the first problem becomes an OpenAI-style
 * error (HTTP 400, message, param). Unknown fields are ignored, as OpenAI
 * clients send fields a server may not use. */
#ifndef PAM_SERVER_API_H
#define PAM_SERVER_API_H

#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "server/chat.h"

typedef enum pam_api_kind { PAM_API_COMPLETION, PAM_API_CHAT } pam_api_kind;

typedef struct pam_api_error {
    int http_status;
    const char *type; /* "invalid_request_error", ... */
    const char *code; /* NULL or e.g. "context_length_exceeded" */
    char param[64];   /* "" if none */
    char message[512];
} pam_api_error;

/* One more prompt of a batch (completions): text to tokenize, or token ids. */
typedef struct pam_api_prompt {
    char *text;
    int32_t *ids;
    int32_t n_ids;
} pam_api_prompt;

typedef struct pam_api_request {
    pam_api_kind kind;
    char *prompt;          /* text to tokenize (chat: the rendered template); NULL if prompt_ids */
    int32_t *prompt_ids;   /* completions with a prompt of token ids */
    int32_t n_prompt_ids;
    pam_api_prompt *more;  /* completions with a batch of prompts: the 2nd and later ones */
    int n_more;
    char *model;           /* NULL if not given */
    int stream;
    int include_usage;     /* stream_options.include_usage */
    int seed_given;
    int n;                 /* choices per prompt; n * (1 + n_more) <= PAM_API_MAX_N */
    int echo;              /* completions: the prompt is part of the returned text */
    int logprobs;          /* < 0: none; else alternatives per token (completions: `logprobs`; chat: `top_logprobs`) */
    int max_tokens_given; /* max_tokens or max_completion_tokens was in the request */
    pam_request_params params; /* stop[] point into stop_store, sampling.logit_bias to logit_bias */
    char *stop_store[PAM_ENGINE_MAX_STOP];
    pam_logit_bias *logit_bias;
} pam_api_request;

/* Limits on what a request may ask for. */
#define PAM_API_MAX_MESSAGES 4096
#define PAM_API_MAX_TOKENS_LIMIT (1 << 24)
#define PAM_API_MAX_N PAM_ENGINE_MAX_CHOICES
#define PAM_API_MAX_LOGIT_BIAS 4096

/* Returns 0 and fills *out, or -1 and fills *err. On failure *out holds
 * nothing to free. chat renders the messages of a chat request (a template
 * error becomes a 400 with the template's message). */
int pam_api_parse_chat(const char *body, size_t len, pam_api_kind kind, const pam_chat_template *chat,
                       pam_api_request *out, pam_api_error *err);
/* POST /apply-template: the prompt a chat body's messages become (malloc'd
 * in *prompt). Reads only messages, tools and chat_template_kwargs: tools
 * reach the template here even though a chat completion refuses them. */
int pam_api_apply_template(const char *body, size_t len, const pam_chat_template *chat, char **prompt,
                           pam_api_error *err);
/* The same with a built-in chat template family. */
int pam_api_parse(const char *body, size_t len, pam_api_kind kind, pam_chat_family chat_family, pam_api_request *out,
                  pam_api_error *err);
void pam_api_request_free(pam_api_request *r);
/* The checks that need the vocabulary (token ids in the prompts and in
 * logit_bias): 0, or -1 with a 400 in *err. */
int pam_api_check_vocab(const pam_api_request *r, int32_t n_vocab, pam_api_error *err);

/* {"error":{"message":..,"type":..,"param":..,"code":..}} (malloc'd). */
char *pam_api_error_json(const pam_api_error *err);
void pam_api_error_set(pam_api_error *err, int http_status, const char *type, const char *code, const char *param,
                       const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 6, 7)))
#endif
    ;

#endif
