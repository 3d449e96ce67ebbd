/* Random Llama-family models for tests, and a float64 reference forward pass.
 *
 * ref_model_generate() fills every weight of a described model with seeded
 * random values, stores them in the type the GGUF file will hold (F32, F16 or
 * Q8_0 for matrices; F32 for norms, biases and rope_freqs, as llama.cpp does),
 * and keeps the exact values those bytes stand for as doubles. The reference
 * forward computes from those doubles, so it sees exactly the weights the
 * runtime reads; any difference comes from the runtime's arithmetic.
 *
 * ref_model_write_gguf() writes the model in llama.cpp's layout (metadata
 * keys, tensor names and shapes, an SPM tokenizer), so the file also loads in
 * llama.cpp. Tests may alter the weights struct before writing (omit a
 * tensor, change a shape) to produce deliberately broken files. */
#ifndef PAM_TESTS_REF_MODEL_H
#define PAM_TESTS_REF_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/dtype.h"
#include "pam.h"

typedef struct ref_model_desc {
    const char *arch; /* "llama", "mistral", "qwen2" (anything else is written as is) */
    int32_t n_vocab;  /* >= 260: 3 specials + 256 byte tokens + at least one piece */
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv; /* divides n_head */
    int32_t head_dim;  /* 0: n_embd / n_head */
    int32_t n_ff;
    int32_t n_ctx; /* written as <arch>.context_length */
    float rms_eps;
    float rope_theta;
    int qkv_bias;    /* attn_q/k/v.bias tensors (qwen2) */
    int tied_output; /* no output.weight: logits use token_embd */
    int rope_freqs;  /* rope_freqs.weight: Llama-3 per-pair frequency divisors */
    pam_dtype wtype; /* matrices: PAM_DT_F32, PAM_DT_F16 or PAM_DT_Q8_0 */
    uint64_t seed;
} ref_model_desc;

/* One tensor as written to the file, plus the values its bytes stand for. */
typedef struct ref_tensor {
    char name[64];
    uint32_t n_dims;
    int64_t ne[2]; /* GGUF order: ne[0] is the row length (input dim) */
    pam_dtype type;
    void *data; /* file bytes */
    size_t n_bytes;
    double *val; /* ne[0]*ne[1] values, row-major: val[row*ne[0] + col] */
    int omit;    /* test hook: leave this tensor out of the file */
} ref_tensor;

typedef struct ref_layer {
    ref_tensor attn_norm, wq, wk, wv, wo, bq, bk, bv; /* b*: only with qkv_bias */
    ref_tensor ffn_norm, gate, up, down;
} ref_layer;

typedef struct ref_weights {
    ref_model_desc d;                         /* head_dim resolved */
    ref_tensor tok_embd, output_norm, output; /* output: only when not tied */
    ref_tensor rope_freqs;                    /* only with d.rope_freqs */
    ref_layer *layers;
} ref_weights;

/* PAM_ERR_INVALID for an inconsistent description (message says which field). */
pam_status ref_model_generate(const ref_model_desc *desc, ref_weights **out);
void ref_model_free(ref_weights *w);

/* Writes the GGUF file; desc supplies the metadata (its arch names the keys). */
pam_status ref_model_write_gguf(const ref_model_desc *desc, const ref_weights *w, const char *path);

/* Logits (n * n_vocab, row per position) of tokens at positions 0..n-1,
 * computed naively in double precision. */
void ref_model_forward(const ref_weights *w, const int32_t *tokens, int32_t n, double *logits);
/* act_q8: also round the input of every product with a Q8_0 matrix to Q8_0
 * blocks (via float32), as the runtime's integer dot products do, so a
 * Q8_0 model can be held to a tolerance far below the quantisation error. */
void ref_model_forward_ex(const ref_weights *w, const int32_t *tokens, int32_t n, int act_q8,
                          double *logits);

/* Building blocks, exposed for self-checks. */
void ref_rmsnorm(const double *x, const double *weight, int64_t n, double eps, double *out);
/* In-place softmax over n values. */
void ref_softmax(double *x, int64_t n);
/* RoPE for one head vector of head_dim values at position pos; freq_div may
 * be NULL (all ones), else head_dim/2 divisors of the angular frequencies. */
void ref_rope(double *v, int32_t head_dim, int32_t pos, double theta, int neox,
              const double *freq_div);

/* Per-row error used by the tests: max_i |a_i - ref_i| / max_i |ref_i|. */
double ref_rel_err(const float *a, const double *ref, int64_t n);

#endif
