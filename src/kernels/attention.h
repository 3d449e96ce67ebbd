/* Attention kernels over contiguous K/V rows. A "partial" is the state of
 * softmax attention over a subset of tokens, per query head g:
 *   m[g] = max score, l[g] = sum exp(s - m[g]), o[g] = sum exp(s - m[g]) * v
 * (o unnormalised). Partials of disjoint token sets merge exactly
 * (DESIGN.md §2.3), so a context can be split across chunks, threads or
 * memory tiers and give dense attention up to rounding. Callers that want
 * results independent of thread count merge partials in token order. */
#ifndef PAM_KERNELS_ATTENTION_H
#define PAM_KERNELS_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

/* n_q query heads (consecutive, head_dim floats each in q) share one KV head:
 * every K/V row is loaded once for all of them (grouped-query attention).
 * Row t of K is K + t*stride (stride in floats), likewise V. Requires n >= 1.
 * scores: scratch of n_q * n floats. */
void pam_attn_partial_f32(const float *q, int n_q, int head_dim, float scale, const float *K,
                          const float *V, size_t stride, int64_t n, float *m, float *l, float *o,
                          float *scores);

/* Same over K/V rows stored as IEEE half (the default KV type). scores:
 * scratch of n_q * n floats. Dispatches to the best ISA. */
void pam_attn_partial_f16(const float *q, int n_q, int head_dim, float scale, const uint16_t *K,
                          const uint16_t *V, size_t stride, int64_t n, float *m, float *l, float *o,
                          float *scores);
void pam_attn_partial_f16_ref(const float *q, int n_q, int head_dim, float scale, const uint16_t *K,
                              const uint16_t *V, size_t stride, int64_t n, float *m, float *l,
                              float *o, float *scores);
#if defined(__x86_64__)
void pam_attn_partial_f16_avx2(const float *q, int n_q, int head_dim, float scale,
                               const uint16_t *K, const uint16_t *V, size_t stride, int64_t n,
                               float *m, float *l, float *o, float *scores);
/* Requires PAM_ISA_AVX512 and head_dim % 16 == 0 (falls back to _ref otherwise). */
void pam_attn_partial_f16_avx512(const float *q, int n_q, int head_dim, float scale,
                                 const uint16_t *K, const uint16_t *V, size_t stride, int64_t n,
                                 float *m, float *l, float *o, float *scores);
#endif

/* Same contract over one block of B token slots whose K is stored
 * transposed (channel-major): element (d, t) of K at Kt[d*B + t], so the
 * scores of 16 tokens come from broadcasting q[d] against one contiguous run
 * of K without horizontal sums. V stays row-major [B][head_dim] (row t at
 * V + t*head_dim). Attends to the first n tokens, 1 <= n <= B; slots n..B-1
 * are never read. scores: scratch of n_q * n floats. Dispatches to the best
 * ISA; shapes a SIMD kernel does not support (head_dim % 16 != 0 or > 256)
 * go to _ref. */
void pam_attn_partial_f16_kt(const float *q, int n_q, int head_dim, float scale, const uint16_t *Kt,
                             const uint16_t *V, int64_t B, int64_t n, float *m, float *l, float *o,
                             float *scores);
void pam_attn_partial_f16_kt_ref(const float *q, int n_q, int head_dim, float scale, const uint16_t *Kt,
                                 const uint16_t *V, int64_t B, int64_t n, float *m, float *l, float *o,
                                 float *scores);
#if defined(__x86_64__)
void pam_attn_partial_f16_kt_avx2(const float *q, int n_q, int head_dim, float scale, const uint16_t *Kt,
                                  const uint16_t *V, int64_t B, int64_t n, float *m, float *l, float *o,
                                  float *scores);
void pam_attn_partial_f16_kt_avx512(const float *q, int n_q, int head_dim, float scale,
                                    const uint16_t *Kt, const uint16_t *V, int64_t B, int64_t n,
                                    float *m, float *l, float *o, float *scores);
#endif

/* Folds a run of up to PAM_ATTN_RUN_MAX blocks in the layout of
 * pam_attn_partial_f16_kt (block j: Kt[j], V[j], n_tok[j] valid tokens of
 * B slots, 1 <= n_tok[j] <= B) into the partial (m, l, o), in list order:
 * bit for bit what computing each block's partial with
 * pam_attn_partial_f16_kt and folding it in with pam_attn_merge gives
 * (with init, the first block's partial becomes (m, l, o) instead), so the
 * grouping of blocks into runs, tiers or pieces never changes the result.
 * With blk_m not NULL, per block j and head g, blk_m[j * blk_stride + g] =
 * the block's max score and blk_l[j * blk_stride + g] = sum exp(s - that
 * max). The per-block costs of separate calls (loading and storing o, the
 * merge pass, dispatch) are paid once per run. With pf not NULL, the
 * kernel prefetches pf_bytes at pf[j] (if not NULL) into L2 while it computes block j's
 * scores (what the caller attends next: the memory streams while the run
 * computes). scratch:
 * pam_attn_run_scratch_floats(n_q, head_dim, B) floats. Dispatches to the
 * best ISA; shapes without a run kernel (no AVX2, head_dim % 16 != 0 or
 * > 256, B > 16) take the per-block fold itself. */
#define PAM_ATTN_RUN_MAX 16
size_t pam_attn_run_scratch_floats(int n_q, int head_dim, int64_t B);
void pam_attn_partial_f16_kt_run(const float *q, int n_q, int head_dim, float scale, const uint16_t *const *Kt,
                                 const uint16_t *const *V, const int32_t *n_tok, int nblk, int64_t B, int init,
                                 float *m, float *l, float *o, float *blk_m, float *blk_l, size_t blk_stride,
                                 const void *const *pf, size_t pf_bytes, float *scratch);
/* The per-block fold (the fallback, and what the run kernels must equal). */
void pam_attn_partial_f16_kt_run_fold(const float *q, int n_q, int head_dim, float scale, const uint16_t *const *Kt,
                                      const uint16_t *const *V, const int32_t *n_tok, int nblk, int64_t B, int init,
                                      float *m, float *l, float *o, float *blk_m, float *blk_l, size_t blk_stride,
                                      float *scratch);
#if defined(__x86_64__)
/* Require head_dim % 16 == 0, head_dim <= 256, B <= 16, 1 <= nblk <= PAM_ATTN_RUN_MAX. */
void pam_attn_partial_f16_kt_run_avx2(const float *q, int n_q, int head_dim, float scale, const uint16_t *const *Kt,
                                      const uint16_t *const *V, const int32_t *n_tok, int nblk, int64_t B, int init,
                                      float *m, float *l, float *o, float *blk_m, float *blk_l, size_t blk_stride,
                                      const void *const *pf, size_t pf_bytes, float *scratch);
void pam_attn_partial_f16_kt_run_avx512(const float *q, int n_q, int head_dim, float scale,
                                        const uint16_t *const *Kt, const uint16_t *const *V, const int32_t *n_tok,
                                        int nblk, int64_t B, int init, float *m, float *l, float *o, float *blk_m,
                                        float *blk_l, size_t blk_stride, const void *const *pf, size_t pf_bytes,
                                        float *scratch);
#endif

/* f32 K/V in the channel-major block layout of pam_attn_partial_f16_kt (the
 * exact-reference KV type of the tiers): the reference kernel. */
void pam_attn_partial_f32_kt(const float *q, int n_q, int head_dim, float scale, const float *Kt, const float *V,
                             int64_t B, int64_t n, float *m, float *l, float *o, float *scores);

/* The softmax pass of the reference kernels: per head g, scores[g][t] <-
 * exp(scores[g][t] - m[g]) and l[g] = their sum in token order. */
void pam_attn_softmax_ref(int n_q, int64_t n, float *scores, const float *m, float *l);

/* Folds partial b into partial a (both n_q heads). */
void pam_attn_merge(int n_q, int head_dim, float *m_a, float *l_a, float *o_a, const float *m_b,
                    const float *l_b, const float *o_b);

/* o[g] /= l[g]: the attention output. */
void pam_attn_finish(int n_q, int head_dim, const float *l, float *o);

#endif
