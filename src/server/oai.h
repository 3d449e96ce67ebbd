/* Response pieces of the OpenAI-compatible API that do not depend on HTTP:
 * text as JSON, log-probabilities in OpenAI's two formats, and llama-server's
 * /tokenize and /detokenize bodies. Pure functions over a tokenizer, so the
 * fuzzer and the unit tests drive them without a server. */
#ifndef PAM_SERVER_OAI_H
#define PAM_SERVER_OAI_H

#include <jansson.h>
#include <stddef.h>

#include "engine/sampler.h"
#include "model/tokenizer.h"
#include "server/api.h"

/* Text as a JSON string; bytes that are not UTF-8 become U+FFFD. */
json_t *pam_oai_text(const char *p, size_t n);

/* Code points (UTF-8 lead bytes and stray bytes) in p[0..n). */
size_t pam_oai_utf8_chars(const char *p, size_t n);

/* The text a token stands for, as llama.cpp's token_to_piece with special
 * tokens rendered: its bytes, or the vocabulary entry (e.g. "<s>") for a
 * control token, which has none. Returns the length; at most cap bytes are
 * written (cap >= 256 holds any piece of a sane vocabulary). */
size_t pam_oai_token_text(const pam_tokenizer *tk, int32_t id, char *buf, size_t cap);

/* One choice's log-probabilities, collected token by token and taken as the
 * `logprobs` object of a response or of a stream chunk:
 *   completions (OpenAI's legacy format): {"tokens":[..], "token_logprobs":
 *     [..], "top_logprobs":[{token: logprob}, ..], "text_offset":[..]};
 *     top_logprobs holds the k most likely tokens and the chosen one (so up
 *     to k + 1, as OpenAI documents), most likely first; text_offset counts
 *     characters of the returned text (echoed prompt included);
 *   chat: {"content":[{"token","logprob","bytes","top_logprobs":[{"token",
 *     "logprob","bytes"}, ..k]}], "refusal":null}.
 * A token string that is not valid UTF-8 is "bytes:\xNN.." (completions) or
 * has U+FFFD in `token` and the real bytes in `bytes` (chat). A logprob of
 * -inf (a banned token) is written as -9999.0, OpenAI's floor. */
typedef struct pam_oai_lp {
    pam_api_kind kind;
    const pam_tokenizer *tk;
    json_t *content;                                              /* chat */
    json_t *tokens, *token_logprobs, *top_logprobs, *text_offset; /* completions */
} pam_oai_lp;

void pam_oai_lp_init(pam_oai_lp *l, pam_api_kind kind, const pam_tokenizer *tk);
/* Adds a token at character offset char_off of the returned text. is_first:
 * the first prompt token (completions with echo), whose log-probability and
 * alternatives are null. Returns 0, -1 when out of memory. */
int pam_oai_lp_add(pam_oai_lp *l, const pam_token_logprob *e, size_t char_off, int is_first);
/* Whether tokens were added since the last take. */
int pam_oai_lp_pending(const pam_oai_lp *l);
/* The logprobs object of what was added since the last take (a new
 * reference), or NULL when out of memory; starts over. */
json_t *pam_oai_lp_take(pam_oai_lp *l);
void pam_oai_lp_free(pam_oai_lp *l);

/* POST /tokenize, llama-server's format: {"content": string, "add_special":
 * bool (default false: BOS only when true and the vocabulary adds one),
 * "parse_special": bool (default true), "with_pieces": bool (default
 * false)} -> {"tokens": [id, ..]} or, with pieces, {"tokens": [{"id": id,
 * "piece": string, or an array of byte values when not UTF-8}, ..]}.
 * Returns 0 and a malloc'd body in *out, or -1 with a 4xx in *err. */
int pam_oai_tokenize(const pam_tokenizer *tk, const char *body, size_t len, char **out, pam_api_error *err);
/* POST /detokenize: {"tokens": [id, ..]} -> {"content": the tokens' text
 * concatenated as pam_oai_token_text gives it}. */
int pam_oai_detokenize(const pam_tokenizer *tk, const char *body, size_t len, char **out, pam_api_error *err);

#endif
