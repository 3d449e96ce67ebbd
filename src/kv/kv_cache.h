/* Contiguous per-sequence KV cache: for each layer, K and V rows of
 * n_head_kv*head_dim elements per position, stored as f32 (exact reference)
 * or f16 (default: half the bytes a decode step reads). Attention is reached
 * only through the partial/merge calls below, so the storage behind it can
 * change (paged, tiered) without touching the forward pass. */
#ifndef PAM_KV_KV_CACHE_H
#define PAM_KV_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/dtype.h"
#include "pam.h"

/* Tokens per attention chunk. A fixed constant (never derived from the
 * thread count) keeps the merge order, and so the rounding, the same for any
 * split of the work. */
#define PAM_KV_CHUNK 256

typedef struct pam_kv pam_kv;

/* type: PAM_DT_F32 or PAM_DT_F16. */
pam_status pam_kv_create(int32_t n_layer, int32_t n_head_kv, int32_t head_dim, int32_t n_ctx,
                         pam_dtype type, pam_kv **out);
void pam_kv_free(pam_kv *kv);
int32_t pam_kv_n_ctx(const pam_kv *kv);
pam_dtype pam_kv_dtype(const pam_kv *kv);
/* Bytes of K and V per position, all layers. */
uint64_t pam_kv_bytes_per_pos(const pam_kv *kv);

/* Stores the K and V rows of the token at pos (n_head_kv*head_dim floats each). */
void pam_kv_store(pam_kv *kv, int32_t layer, int32_t pos, const float *k, const float *v);

/* Fills positions 0..n-1 of every layer with reproducible pseudo-random K/V
 * (benchmarks measure decode at a depth without paying for a long prefill;
 * the decode step then does exactly the work it would on real KV). */
void pam_kv_fill_random(pam_kv *kv, int32_t n, uint64_t seed);

/* Floats of scratch one partial over a chunk needs for n_q query heads. */
size_t pam_kv_scratch_floats(const pam_kv *kv, int n_q);

/* Partial attention (m, l, unnormalised o per head; see kernels/attention.h)
 * of n_q query heads sharing kv_head over chunk `chunk` (positions
 * chunk*PAM_KV_CHUNK .. min(+PAM_KV_CHUNK, n_pos) - 1). */
void pam_kv_partial(const pam_kv *kv, int32_t layer, int32_t kv_head, const float *q, int n_q,
                    float scale, int64_t chunk, int32_t n_pos, float *m, float *l, float *o,
                    float *scratch);

/* Full attention over positions 0..n_pos-1: the chunk partials folded in
 * chunk order, then normalised. */
void pam_kv_attend(const pam_kv *kv, int32_t layer, int32_t kv_head, const float *q, int n_q,
                   float scale, int32_t n_pos, float *out, float *scratch);

static inline int64_t pam_kv_n_chunks(int32_t n_pos) {
    return ((int64_t)n_pos + PAM_KV_CHUNK - 1) / PAM_KV_CHUNK;
}

#endif
