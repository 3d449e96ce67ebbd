/* Random-weight GGUF models in the shapes of real ones, for benchmarks.
 *
 * Speed of a decode step depends on the shapes and types of the tensors, not
 * on their values, so a file with random weights in the exact shape of
 * TinyLlama-1.1B, Llama-3.2-1B or Qwen2.5-0.5B measures what the real model
 * would, without downloading it. Metadata keys and tensor names follow
 * llama.cpp, so its tools (llama-bench) load the same file.
 *
 * The vocabulary is always a SentencePiece-style ("llama") one of the shape's
 * size: the Llama-3 and Qwen BPE vocabularies are replaced by synthetic pieces.
 * The tokenizer never runs during a decode step, so this changes no timing.
 *
 * Output is deterministic in (shape, type, seed): every row draws from its own
 * generator seeded by (seed, tensor, row), so the thread count does not matter. */
#ifndef PAM_MODEL_GEN_MODEL_H
#define PAM_MODEL_GEN_MODEL_H

#include <stdint.h>

#include "core/threadpool.h"
#include "kernels/dtype.h"
#include "pam.h"

typedef struct pam_gen_model_shape {
    const char *name;       /* "tinyllama-1.1b" */
    const char *arch;       /* general.architecture: "llama" or "qwen2" */
    const char *model_name; /* general.name */
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t head_dim;
    int32_t n_ff;
    int32_t n_vocab;
    int32_t n_ctx_train;
    float rope_theta;
    float rms_eps;
    int tied_output;  /* no output.weight: the output reuses token_embd */
    int qkv_bias;     /* blk.N.attn_{q,k,v}.bias (qwen2) */
    int llama3_rope;  /* rope_freqs.weight with Llama-3 frequency factors */
} pam_gen_model_shape;

/* Kinds of generated tensors. */
typedef enum pam_gen_model_fill {
    PAM_GEN_MATRIX = 0, /* uniform in [-1, 1) / sqrt(cols), in the requested type */
    PAM_GEN_NORM = 1,   /* F32, 1 + small noise */
    PAM_GEN_BIAS = 2,   /* F32, small */
    PAM_GEN_ROPE_FREQS = 3, /* F32, Llama-3 factors */
} pam_gen_model_fill;

typedef struct pam_gen_model_tensor {
    char name[48];
    uint32_t n_dims;
    int64_t ne[2]; /* ne[0] = input dimension (contiguous), as in GGUF */
    uint32_t type; /* pam_dtype */
    pam_gen_model_fill fill;
    size_t n_bytes;
} pam_gen_model_tensor;

/* The built-in shape with this name, or NULL. */
const pam_gen_model_shape *pam_gen_model_shape_find(const char *name);
/* Comma-separated names of the built-in shapes, for help texts. */
const char *pam_gen_model_shape_names(void);
/* GGUF general.file_type for a weight type: 1 F16, 7 Q8_0, 2 Q4_0; -1 if the
 * type is not offered (F32 gives 0). */
int pam_gen_model_file_type(pam_dtype type);

/* The tensors a model of this shape and weight type holds, in file order.
 * *out is malloc'd; the caller frees it. PAM_ERR_INVALID for an inconsistent
 * shape or a type whose blocks do not divide the rows. */
pam_status pam_gen_model_tensors(const pam_gen_model_shape *s, pam_dtype type,
                                 pam_gen_model_tensor **out, int64_t *n_out);

/* Llama-3 rope frequency factors for n = head_dim/2 pairs, computed as
 * llama.cpp's converter does (factor, low/high frequency factors, original
 * context length). */
void pam_gen_model_llama3_factors(float theta, int32_t head_dim, float factor, float low_freq_factor,
                                  float high_freq_factor, int32_t orig_ctx, float *out);

/* Writes the model to path (via PATH.tmp and rename). pool may be NULL. All
 * tensor data is held in memory until the write (about the file's size). */
pam_status pam_gen_model_write(const pam_gen_model_shape *s, pam_dtype type, uint64_t seed,
                               pam_pool *pool, const char *path);

#endif
