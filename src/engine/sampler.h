/* Token sampling with llama.cpp's flag semantics. Chain order: logit bias ->
 * repetition penalty -> frequency and presence penalties -> top-k -> top-p ->
 * min-p -> temperature -> draw. temp <= 0 is greedy (argmax after the bias
 * and penalties; ties go to the lowest id). Draws use a seeded private PRNG,
 * so a seed reproduces a run exactly.
 *
 * Penalties:
 *  - repetition (llama.cpp's repeat_penalty): each distinct token among the
 *    last repeat_last_n accepted ones (prompt and generated) has its logit l
 *    divided by the penalty if l > 0, multiplied by it otherwise;
 *  - frequency and presence (OpenAI's definitions): over the tokens generated
 *    so far (pam_sampler_accept, not the prompt), l -= count * frequency
 *    + (count > 0) * presence;
 *  - logit bias: l += bias for the listed ids; a bias <= -100 bans the
 *    token (its logit becomes -inf), as OpenAI documents -100.
 *
 * Log-probabilities (pam_sampler_logprobs) are those of the distribution
 * after the bias and the penalties and before the sampling filters and the
 * temperature: the model's distribution under the request's constraints, so
 * the most likely token is the greedy choice. */
#ifndef PAM_ENGINE_SAMPLER_H
#define PAM_ENGINE_SAMPLER_H

#include <stdint.h>

#include "pam.h"

typedef struct pam_logit_bias {
    int32_t id;
    float bias;
} pam_logit_bias;

/* Bias values at or below this ban the token. */
#define PAM_LOGIT_BIAS_BAN (-100.0f)
/* Alternatives a log-probability entry holds at most (OpenAI's limit). */
#define PAM_MAX_TOP_LOGPROBS 20

typedef struct pam_sampler_params {
    float temp;            /* 0 = greedy */
    int32_t top_k;         /* <= 0: off */
    float top_p;           /* >= 1: off */
    float min_p;           /* <= 0: off */
    float repeat_penalty;  /* 1: off */
    int32_t repeat_last_n; /* tokens of history the penalty looks at */
    float frequency_penalty; /* 0: off */
    float presence_penalty;  /* 0: off */
    const pam_logit_bias *logit_bias; /* borrowed; pam_sampler_create copies it */
    int32_t n_logit_bias;
    uint64_t seed;
} pam_sampler_params;

/* llama.cpp's defaults: temp 0.8, top-k 40, top-p 0.95, min-p 0.05,
 * repeat-penalty 1.0, last-n 64, no frequency/presence penalty, no bias,
 * seed 0. */
void pam_sampler_params_default(pam_sampler_params *p);
/* PAM_ERR_INVALID with a message for out-of-range values (negative temp,
 * top_p outside (0,1], min_p outside [0,1], repeat_penalty <= 0, non-finite
 * penalties, a negative bias id or a NaN bias ...). Ids beyond the
 * vocabulary are caught by pam_sampler_create (PAM_ERR_RANGE). */
pam_status pam_sampler_params_check(const pam_sampler_params *p);

typedef struct pam_sampler pam_sampler;

pam_status pam_sampler_create(const pam_sampler_params *p, int32_t n_vocab, pam_sampler **out);
void pam_sampler_free(pam_sampler *s);
/* A generated token: enters the repetition window and the counts of the
 * frequency and presence penalties. */
void pam_sampler_accept(pam_sampler *s, int32_t token);
/* A prompt token: enters the repetition window only. */
void pam_sampler_accept_prompt(pam_sampler *s, int32_t token);
/* Picks the next token from n_vocab logits (not modified). */
int32_t pam_sampler_sample(pam_sampler *s, const float *logits);
/* Forgets the history and the counts and reseeds. */
void pam_sampler_reset(pam_sampler *s);

/* Log-probability of one token and its k most likely alternatives. */
typedef struct pam_logprob_top {
    int32_t id;
    float logprob;
} pam_logprob_top;

typedef struct pam_token_logprob {
    int32_t id;
    float logprob;  /* -inf for a banned token */
    int32_t n_top;  /* entries of top, most likely first (ties: lower id) */
    int32_t text_off; /* for the engine: byte offset of the token's text in its output */
    pam_logprob_top top[PAM_MAX_TOP_LOGPROBS];
} pam_token_logprob;

/* log-softmax of n_vocab logits, computed in double (max-shifted): fills
 * out->id, logprob and top[0..min(k, finite logits)) (k clamped to
 * [0, PAM_MAX_TOP_LOGPROBS]). NaN logits count as -inf. */
void pam_logprobs(const float *logits, int32_t n_vocab, int32_t id, int32_t k, pam_token_logprob *out);
/* The same over the logits of the last pam_sampler_sample after the bias
 * and the penalties (before top-k/top-p/min-p/temperature). */
void pam_sampler_logprobs(const pam_sampler *s, int32_t id, int32_t k, pam_token_logprob *out);

#endif
