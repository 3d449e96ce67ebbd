/* Contiguous per-sequence KV cache: for each layer, K and V rows of
 * n_head_kv*head_dim floats per position. Attention is reached only through
 * pam_kv_attend, so the storage behind it can change (paged, tiered) without
 * touching the forward pass. */
#ifndef PAM_KV_KV_CACHE_H
#define PAM_KV_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "pam.h"

typedef struct pam_kv pam_kv;

pam_status pam_kv_create(int32_t n_layer, int32_t n_head_kv, int32_t head_dim, int32_t n_ctx,
                         pam_kv **out);
void pam_kv_free(pam_kv *kv);
int32_t pam_kv_n_ctx(const pam_kv *kv);
uint64_t pam_kv_bytes(const pam_kv *kv);

/* Stores the K and V rows of the token at pos (n_head_kv*head_dim floats each). */
void pam_kv_store(pam_kv *kv, int32_t layer, int32_t pos, const float *k, const float *v);

/* Fills positions 0..n-1 of every layer with reproducible pseudo-random K/V
 * (benchmarks measure decode at a depth without paying for a long prefill;
 * the decode step then does exactly the work it would on real KV). */
void pam_kv_fill_random(pam_kv *kv, int32_t n, uint64_t seed);

/* Floats of scratch pam_kv_attend needs for n_q query heads. */
size_t pam_kv_scratch_floats(const pam_kv *kv, int n_q);

/* Attention of n_q query heads (q: n_q*head_dim) that share kv_head, for the
 * token at pos attending positions 0..pos. Splits the context into fixed
 * chunks merged in order, so the result depends only on pos and the data. */
void pam_kv_attend(const pam_kv *kv, int32_t layer, int32_t pos, int32_t kv_head, const float *q,
                   int n_q, float scale, float *out, float *scratch);

#endif
