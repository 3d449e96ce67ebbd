/* What the simulated system serves: model shapes (built in, or read from a
 * GGUF's metadata), attention locality (a profile, or replayed from the
 * engine's --kv-trace output) and seeded request streams. */
#ifndef PAM_SIM_SIM_WORKLOAD_H
#define PAM_SIM_SIM_WORKLOAD_H

#include <stdint.h>

#include "pam.h"

typedef struct pam_sim_shape {
    char name[64];
    int n_layer, d_model, n_head, n_head_kv, head_dim, d_ff, n_vocab;
    int gated_ffn;       /* SwiGLU (3 matrices) or a plain MLP (2, OPT) */
    double params;       /* weights read per decode step (the input embedding is only looked up) */
    double weight_bytes; /* their bytes */
} pam_sim_shape;

/* Built-in shapes: qwen2.5-32b, llama-3-70b, opt-175b, llama-3-8b (f16
 * weights). PAM_ERR_NOT_FOUND for another name. */
pam_status pam_sim_shape_builtin(const char *name, pam_sim_shape *out);
const char *pam_sim_shape_names(void);
/* From a GGUF's metadata ({arch}.block_count, embedding_length, attention.
 * head_count(_kv), key_length, feed_forward_length) and its tensors' sizes. */
pam_status pam_sim_shape_gguf(const char *path, pam_sim_shape *out);
/* Fills params and weight_bytes from the sizes, at bytes_per_param. */
void pam_sim_shape_finish(pam_sim_shape *s, double bytes_per_param);
/* KV bytes of one token, all layers, K and V. */
double pam_sim_shape_kv_bytes_per_token(const pam_sim_shape *s, double bytes_per_elem);

/* Attention locality: a block's importance relative to a uniform spread
 * (1 = its share if every block got the same mass). The quantile function of
 * that ratio is a step function over PAM_SIM_LOC_BINS equally likely bins. */
#define PAM_SIM_LOC_BINS 64
typedef struct pam_sim_locality {
    double q[PAM_SIM_LOC_BINS]; /* ascending */
    char source[128];
} pam_sim_locality;

/* The built-in profile: a power law (a few blocks take most of the mass). */
void pam_sim_locality_default(pam_sim_locality *l);
/* Every block the same (the "no locality" ablation). */
void pam_sim_locality_uniform(pam_sim_locality *l);
/* From a --kv-trace file: the importance histograms of its steps (all lines
 * together), each block's importance divided by the mean, so the profile
 * keeps the shape of the distribution and can be used at any context
 * length (docs/SIM.md, scaling). PAM_ERR_FORMAT for a line that is not a
 * trace record. */
pam_status pam_sim_locality_trace(const char *path, pam_sim_locality *l);
/* The relative importance at quantile u in [0, 1). */
double pam_sim_locality_at(const pam_sim_locality *l, double u);

/* Deterministic random numbers (splitmix64). */
uint64_t pam_sim_rng(uint64_t *state);
/* Uniform in [0, 1). */
double pam_sim_rng_unit(uint64_t *state);
/* A length with the given mean: uniform in [mean/2, 3*mean/2], at least 1. */
int64_t pam_sim_rng_length(uint64_t *state, double mean);
/* Exponential inter-arrival time at rate per second. */
double pam_sim_rng_exp(uint64_t *state, double rate);

#endif
