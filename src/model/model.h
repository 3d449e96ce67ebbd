/* Llama-family model (architectures llama, mistral, qwen2) loaded from GGUF,
 * and the per-sequence inference context that runs the forward pass.
 *
 * The model owns the GGUF mapping; weight tensors point into it (no copy).
 * A context keeps its KV in a sequence of a KV manager (kv/kvm.h): one it
 * borrows, or one of its own (a single dram tier holding the context), so
 * every forward pass runs the same paged attention. It owns its scratch
 * buffers and borrows the model and the thread pool, which must outlive it. */
#ifndef PAM_MODEL_MODEL_H
#define PAM_MODEL_MODEL_H

#include <stdint.h>

#include "core/threadpool.h"
#include "kernels/dtype.h"
#include "kv/kvm.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "pam.h"

typedef struct pam_model_hparams {
    char arch[32];
    int32_t n_vocab;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t head_dim;
    int32_t n_ff;
    int32_t n_ctx_train;
    float rms_eps;
    float rope_theta;
    int rope_neox;          /* pair (i, i+d/2) instead of (2i, 2i+1): qwen2 */
    int rope_llama3;        /* Llama-3 frequency scaling */
    float rope_factor;
    float rope_low_freq_factor;
    float rope_high_freq_factor;
    int32_t rope_orig_ctx;
} pam_model_hparams;

typedef struct pam_model pam_model;

pam_status pam_model_load(const char *path, pam_model **out);
void pam_model_free(pam_model *m);
const pam_model_hparams *pam_model_get_hparams(const pam_model *m);
const pam_tokenizer *pam_model_tokenizer(const pam_model *m);
const pam_gguf *pam_model_gguf(const pam_model *m);
/* Bytes of weights a decode step reads. */
uint64_t pam_model_weight_bytes(const pam_model *m);

typedef struct pam_ctx pam_ctx;

typedef struct pam_ctx_params {
    int32_t n_ctx; /* <= 0: the model's training context */
    /* Without a kvm: the context's own KV manager, one dram tier of n_ctx
     * positions storing kv_type (default f16; PAM_KV_F32 is the exact
     * reference path) in blocks
     * of kv_block tokens (<= 0: 16). Ignored with a kvm. */
    pam_kv_type kv_type;
    int32_t kv_block;
    /* A borrowed KV manager (which must outlive the context and use the same
     * pool or none): the context keeps its KV in sequence kv_seq, or in a
     * sequence of its own (created now, freed with the context) when
     * kv_seq < 0. */
    pam_kvm *kvm;
    int32_t kv_seq;
} pam_ctx_params;

void pam_ctx_params_default(pam_ctx_params *p);
pam_status pam_ctx_create_ex(const pam_model *m, const pam_ctx_params *p, pam_pool *pool, pam_ctx **out);
/* A context with its own f32 KV (one dram tier): the exact reference path.
 * n_ctx <= 0 uses the model's training context. */
pam_status pam_ctx_create(const pam_model *m, int32_t n_ctx, pam_pool *pool, pam_ctx **out);
void pam_ctx_free(pam_ctx *c);
int32_t pam_ctx_n_ctx(const pam_ctx *c);

/* Runs n tokens at positions pos .. pos+n-1; the cache must already hold
 * positions 0 .. pos-1 (entries beyond pos are overwritten). If logits is not
 * NULL it receives n_vocab floats for the last token, or n*n_vocab floats (one
 * row per token) when all_logits is set. PAM_ERR_RANGE if the context would
 * overflow or a token id is out of range; the cache is then unchanged.
 * PAM_ERR_FULL (cache unchanged) when the tiers cannot hold the new
 * tokens, and a tier's error (PAM_ERR_IO, PAM_ERR_CORRUPT, ...) if one fails
 * during the pass; positions pos.. of the sequence are then undefined. */
pam_status pam_forward(pam_ctx *c, const int32_t *tokens, int32_t n, int32_t pos, float *logits,
                       int all_logits);

/* One step over several sequences (continuous batching): token i is fed to
 * ctxs[i] at position pos[i]; each context's cache must already hold its
 * positions below pos[i], and tokens of one context appear in increasing
 * position order (a prefill chunk may sit beside other sequences' decode
 * tokens). Weights are read once for the whole batch, and every token's
 * logits (n * n_vocab, one row per token) equal what it would get alone.
 * Scratch memory of ctxs[0] is used. */
pam_status pam_forward_batch(pam_ctx *const *ctxs, const int32_t *tokens, const int32_t *pos, int32_t n,
                             float *logits);

/* The same, computing logits only for tokens with want[i] != 0 (want NULL:
 * all); logits receives one row per wanted token, in batch order. */
pam_status pam_forward_batch_ex(pam_ctx *const *ctxs, const int32_t *tokens, const int32_t *pos, int32_t n,
                                const uint8_t *want, float *logits);

/* Benchmarks: fills the KV cache positions 0..n-1 with synthetic values
 * (through the KV manager, into whatever tiers it places them) so a decode
 * step at position n does the work of a real one at that depth. */
pam_status pam_ctx_fill_synthetic(pam_ctx *c, int32_t n, uint64_t seed);
/* Bytes of KV a decode step at position pos reads: each stored block in its
 * tier's encoding, blocks not stored yet as the fastest tier's. */
uint64_t pam_ctx_kv_bytes_at(const pam_ctx *c, int32_t pos);
/* The KV manager (borrowed or the context's own) and the sequence. */
pam_kvm *pam_ctx_kvm(const pam_ctx *c);
int32_t pam_ctx_kv_seq(const pam_ctx *c);

#endif
