/* KV element types of the tiers that hold raw KV (dram, ssd), the layout of
 * one KV head of one block in each type (a "head run": K then V), and
 * partial attention computed on that layout directly, never expanding a
 * block to f32 in memory. The partial is the one of kernels/attention.h
 * (m, l, unnormalised o per query head), so it merges with any other tier's.
 *
 * Layouts of a head run of B token slots, D = head_dim, B2 = B rounded up to
 * 2, B4 = B rounded up to 4, G = 32 channels per scale group when D % 32 == 0
 * (else G = D), NG = D / G:
 *   f32, f16  K channel-major [D][B] (element (d, t) at d*B + t), V [B][D].
 *   bf16      K [D/2][B2][2] (channel pairs per token, what one vdpbf16ps
 *             lane takes), V [B2/2][D][2] (token pairs per channel).
 *   q8        K codes [D/4][B4][4] u8 = k + 128 (four channels per token, the
 *             lane of vpdpbusd), K scales f16 [NG][B4]; V codes [B4/4][D][4]
 *             s8 (four tokens per channel), V scales f16 [NG][B4]. Symmetric
 *             per (token, group): x = scale * code, |code| <= 127.
 *   q4        as q8 with 4-bit codes c = x/scale + 8 (1..15): K [D/8][B4][4]
 *             bytes, low nibble channel 8i+c, high 8i+4+c; V [B4/4][D/8][4][4]
 *             bytes (quad of tokens j, channel octet i, channel c, token u),
 *             low nibble channel 8i+c, high 8i+4+c.
 * Requirements: D even (bf16), D % 4 == 0 (q8), D % 8 == 0 (q4), D <= 512
 * (bf16, q8, q4). bf16, q8 and q4 encode the f16 rounding of the rows they
 * are given (what the tiers' f16 recent windows hold), so a block gets the
 * same codes however its tokens were written.
 *
 * The quantised kernels quantise q to int8 per (query head, group) once per
 * call and the softmax weights of a block to 7 bits per (head, group), then
 * use integer dot products (AVX-512 VNNI vpdpbusd, AVX2 maddubs); scores,
 * softmax and the weights' scales are f32. bf16 rounds q*scale and the
 * softmax weights to bf16 and accumulates in f32 (vdpbf16ps). Every variant
 * (scalar, AVX2, AVX-512) quantises the same way, so they agree to float
 * rounding; all are tested against a float64 reference on the decoded K/V
 * (tests/test_attnkv.c). All query heads of a group share each block load. */
#ifndef PAM_KERNELS_ATTNKV_H
#define PAM_KERNELS_ATTNKV_H

#include <stddef.h>
#include <stdint.h>

#include "pam.h"

typedef enum pam_kv_type {
    PAM_KV_F32 = 0, /* exact reference */
    PAM_KV_F16 = 1, /* the default */
    PAM_KV_BF16 = 2,
    PAM_KV_Q8 = 3,
    PAM_KV_Q4 = 4,
    PAM_KV_TYPE_COUNT = 5,
} pam_kv_type;

/* "f32", "f16", "bf16", "q8" (or llama.cpp's "q8_0"), "q4" (or "q4_0").
 * PAM_ERR_INVALID with a message listing the names otherwise. */
pam_status pam_kv_type_parse(const char *s, pam_kv_type *out);
/* "f32", "f16", "bf16", "q8", "q4" ("?" for anything else). */
const char *pam_kv_type_name(pam_kv_type t);

/* PAM_ERR_INVALID (with a message) if the type cannot hold this shape. */
pam_status pam_kvh_check(pam_kv_type t, int head_dim, int block_tokens);
/* Bytes of one head run (K and V of one KV head, one block). */
size_t pam_kvh_bytes(pam_kv_type t, int head_dim, int block_tokens);

/* Encodes tokens off..off+n-1 of the head run (K and V rows of head_dim
 * floats, row t at k + t*stride); other tokens are untouched. */
void pam_kvh_write(pam_kv_type t, int head_dim, int block_tokens, void *run, int off, int n, const float *k,
                   const float *v, size_t stride);
/* Decodes tokens 0..n-1 to f32 rows (row t at k + t*stride): exactly the
 * values attention computes with. */
void pam_kvh_read(pam_kv_type t, int head_dim, int block_tokens, const void *run, int n, float *k, float *v,
                  size_t stride);

/* A query prepared for one type: n_q heads (q*scale, quantised for q8/q4,
 * rounded for bf16). Fill with pam_kvh_query_init into a caller buffer of
 * pam_kvh_query_bytes; it stays valid while q and that buffer do. */
typedef struct pam_kvh_query {
    pam_kv_type type;
    int n_q, head_dim, group, n_group;
    float scale;
    const float *q;    /* f32, f16: the caller's q */
    uint16_t *qb;      /* bf16: q*scale rounded, [n_q][D] */
    float *qbf;        /* bf16: the same values as f32 (what AVX2 broadcasts) */
    int8_t *q8;        /* q8, q4: codes [n_q][D], |code| <= 127 */
    float *qf;         /* q8, q4: scale * q's scale, [n_q][NG] */
    int32_t *qcorr;    /* q8, q4: K code bias (128 or 8) * sum of q8 over the group, [n_q][NG] */
} pam_kvh_query;
size_t pam_kvh_query_bytes(pam_kv_type t, int n_q, int head_dim);
void pam_kvh_query_init(pam_kvh_query *qr, pam_kv_type t, const float *q, int n_q, int head_dim, float scale,
                        void *buf);

/* Floats of scratch one pam_kvh_partial needs. */
size_t pam_kvh_scratch_floats(pam_kv_type t, int n_q, int head_dim, int block_tokens);

/* Partial attention of the prepared query's heads over tokens 0..n-1 of a
 * head run (1 <= n <= block_tokens); slots n.. are never used, whatever they
 * hold. Dispatches to the best ISA the shape allows (PAM_ISA). */
void pam_kvh_partial(const pam_kvh_query *qr, const void *run, int block_tokens, int n, float *m, float *l,
                     float *o, float *scratch);

/* The scalar variant (also the fallback for shapes SIMD does not take). */
void pam_kvh_partial_scalar(const pam_kvh_query *qr, const void *run, int block_tokens, int n, float *m, float *l,
                            float *o, float *scratch);
#if defined(__x86_64__)
/* bf16, q8, q4 with head_dim % 32 == 0 (AVX2 bf16: head_dim % 8 == 0); f32
 * and f16 have kernels of their own (kernels/attention.h). */
int pam_kvh_avx2_supports(pam_kv_type t, int head_dim);
void pam_kvh_partial_avx2(const pam_kvh_query *qr, const void *run, int block_tokens, int n, float *m, float *l,
                          float *o, float *scratch);
int pam_kvh_avx512_supports(pam_kv_type t, int head_dim);
void pam_kvh_partial_avx512(const pam_kvh_query *qr, const void *run, int block_tokens, int n, float *m,
                            float *l, float *o, float *scratch);
#endif

#endif
