/* Token sampling with llama.cpp's flag semantics. Chain order: repetition
 * penalty -> top-k -> top-p -> min-p -> temperature -> draw. temp <= 0 is
 * greedy (argmax after the penalty; ties go to the lowest id). Draws use a
 * seeded private PRNG, so a seed reproduces a run exactly. */
#ifndef PAM_ENGINE_SAMPLER_H
#define PAM_ENGINE_SAMPLER_H

#include <stdint.h>

#include "pam.h"

typedef struct pam_sampler_params {
    float temp;            /* 0 = greedy */
    int32_t top_k;         /* <= 0: off */
    float top_p;           /* >= 1: off */
    float min_p;           /* <= 0: off */
    float repeat_penalty;  /* 1: off */
    int32_t repeat_last_n; /* tokens of history the penalty looks at */
    uint64_t seed;
} pam_sampler_params;

/* llama.cpp's defaults: temp 0.8, top-k 40, top-p 0.95, min-p 0.05,
 * repeat-penalty 1.0, last-n 64, seed 0. */
void pam_sampler_params_default(pam_sampler_params *p);
/* PAM_ERR_INVALID with a message for out-of-range values (negative temp,
 * top_p outside (0,1], min_p outside [0,1], repeat_penalty <= 0 ...). */
pam_status pam_sampler_params_check(const pam_sampler_params *p);

typedef struct pam_sampler pam_sampler;

pam_status pam_sampler_create(const pam_sampler_params *p, int32_t n_vocab, pam_sampler **out);
void pam_sampler_free(pam_sampler *s);
/* Adds a token to the history seen by the repetition penalty (prompt tokens too). */
void pam_sampler_accept(pam_sampler *s, int32_t token);
/* Picks the next token from n_vocab logits (not modified). */
int32_t pam_sampler_sample(pam_sampler *s, const float *logits);
void pam_sampler_reset(pam_sampler *s);

#endif
