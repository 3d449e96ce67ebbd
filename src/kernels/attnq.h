/* Attention partials straight from KIVI-style quantised K/V: the encoding of
 * the dramq KV tier (kv/tier_dramq.c), one KV head of one block at a time.
 * The partial is the one of kernels/attention.h (m, l, unnormalised o per
 * query head), so it merges with partials of any other tier.
 *
 * Encoding (codes are unsigned, x ~ min + scale * code, min and scale f16):
 *   K per CHANNEL: channel d of every token shares (k_min[d], k_scale[d]);
 *     codes are stored channel-major (a row of tokens per channel, or per
 *     channel pair for int4), so the scores of a run of tokens are vertical
 *     sums over channels:
 *       s_t = sum_d q_d (min_d + sc_d c_td) = q.min + sum_d (q_d sc_d) c_td,
 *     with q*sc and q.min computed once per block for every query head.
 *   V per TOKEN in groups of `group` channels: token t, group i has
 *     (v_min[i*v_par_stride + t], v_scale[...]); codes are token-major, and
 *       sum_t p_t v_td = sum_t (p_t vsc_ti) c_td + sum_t p_t vmin_ti,
 *     the second sum one number per (head, group).
 * int4 packs two codes a byte, low nibble first: two channels of one token
 * (K: channels 2i and 2i+1; V: consecutive channels).
 *
 * pam_attnq_partial_ref decodes each token's row and sums as the f32
 * reference partial does: the readable oracle. The SIMD kernels use the
 * identities above and never build an f32 copy of K or V; they agree with
 * the reference to float rounding (tests/test_attnq.c). */
#ifndef PAM_KERNELS_ATTNQ_H
#define PAM_KERNELS_ATTNQ_H

#include <stddef.h>
#include <stdint.h>

typedef struct pam_attnq_kv {
    int bits;  /* 8, or 4 (two codes a byte, low nibble first) */
    int group; /* V channels sharing one (min, scale); divides head_dim */
    /* K codes, channel-major, one byte per token in rows of k_row_bytes >= n:
     * int8: channel d, token t at k_codes[d * k_row_bytes + t];
     * int4: channels 2i (low nibble) and 2i+1 (high nibble), token t at
     * k_codes[i * k_row_bytes + t]. */
    const uint8_t *k_codes;
    size_t k_row_bytes;
    const uint16_t *k_min, *k_scale; /* [head_dim] */
    /* V codes, token-major: token t's head_dim codes start at
     * v_codes + t * head_dim * bits / 8 (head_dim even). */
    const uint8_t *v_codes;
    /* Group i of token t: v_min[i * v_par_stride + t], v_scale[same]. */
    const uint16_t *v_min, *v_scale;
    size_t v_par_stride;
} pam_attnq_kv;

/* Floats of scratch the partial needs for n tokens. */
size_t pam_attnq_scratch_floats(int n_q, int head_dim, int group, int64_t n);

/* Partial attention of n_q query heads (consecutive, head_dim floats each in
 * q) sharing one KV head over tokens 0..n-1 of kv (n >= 1): m, l, o as in
 * pam_attn_partial_f32. Every code is read once for all query heads.
 * Dispatches to the best ISA the shape allows. */
void pam_attnq_partial(const float *q, int n_q, int head_dim, float scale, const pam_attnq_kv *kv, int64_t n,
                       float *m, float *l, float *o, float *scratch);
void pam_attnq_partial_ref(const float *q, int n_q, int head_dim, float scale, const pam_attnq_kv *kv,
                           int64_t n, float *m, float *l, float *o, float *scratch);
#if defined(__x86_64__)
/* Requires PAM_ISA_AVX2, head_dim % 8 == 0 and group % 8 == 0. */
void pam_attnq_partial_avx2(const float *q, int n_q, int head_dim, float scale, const pam_attnq_kv *kv,
                            int64_t n, float *m, float *l, float *o, float *scratch);
/* Requires PAM_ISA_AVX512, head_dim % 16 == 0 and group % 16 == 0. */
void pam_attnq_partial_avx512(const float *q, int n_q, int head_dim, float scale, const pam_attnq_kv *kv,
                              int64_t n, float *m, float *l, float *o, float *scratch);
#endif

/* Decodes tokens 0..n-1 to f32 rows [n][head_dim] (K and V): exactly the
 * values the reference partial computes with. */
void pam_attnq_decode(const pam_attnq_kv *kv, int head_dim, int64_t n, float *K, float *V);

#endif
