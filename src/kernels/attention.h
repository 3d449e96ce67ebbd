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
