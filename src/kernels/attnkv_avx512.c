/* AVX-512 kernels for the KV types of kernels/attnkv.h: int8/int4 with
 * VNNI integer dot products (vpdpbusd), bf16 with vdpbf16ps. Scores of a tile
 * of 16 tokens are vertical dot products over the interleaved codes (four
 * channels per 32-bit lane), so there is no horizontal sum per token; the
 * weighted V sum takes four tokens (bf16: two) per lane the same way. Each
 * K/V load serves a register block of up to 8 query heads of the group.
 * Softmax and the weights' scales are f32; the quantisation of the weights
 * is the one of kvh_quant_weights, vectorised. Requires head_dim % 32 == 0
 * (one scale group of 32 channels per 64-byte int4 V load). */
#include <immintrin.h>
#include <string.h>

#include "kernels/attention_avx512.h"
#include "kernels/attnkv.h"
#include "kernels/attnkv_impl.h"

#define HB 8 /* query heads per register block */

/* Runs the body with hn a constant 1..HB, so the per-head accumulator
 * arrays are fully unrolled into registers (with a variable count they
 * live on the stack). */
#define FOR_HN(nh, ...) \
    do { \
        switch (nh) { \
        case 1: { const int hn = 1; __VA_ARGS__ } break; \
        case 2: { const int hn = 2; __VA_ARGS__ } break; \
        case 3: { const int hn = 3; __VA_ARGS__ } break; \
        case 4: { const int hn = 4; __VA_ARGS__ } break; \
        case 5: { const int hn = 5; __VA_ARGS__ } break; \
        case 6: { const int hn = 6; __VA_ARGS__ } break; \
        case 7: { const int hn = 7; __VA_ARGS__ } break; \
        case 8: { const int hn = 8; __VA_ARGS__ } break; \
        default: break; \
        } \
    } while (0)

static inline int32_t ld32(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline int imin(int a, int b) { return a < b ? a : b; }

static inline __mmask16 lanes_of(int cnt) { return cnt <= 0 ? 0 : cnt >= 16 ? (__mmask16)0xFFFF : lanes16(cnt); }

int pam_kvh_avx512_supports(pam_kv_type t, int head_dim) {
    return (t == PAM_KV_BF16 || t == PAM_KV_Q8 || t == PAM_KV_Q4) && head_dim % 32 == 0;
}

/* ---- q8 / q4 ---- */

static void scores_q(const pam_kvh_query *qr, const uint8_t *r, const kvh_layout *L, int n, int q4, float *scores) {
    const int D = qr->head_dim, nq = qr->n_q, NG = L->NG, B4 = L->B4;
    const uint8_t *K = r + L->k;
    const uint16_t *ks = (const uint16_t *)(r + L->ks);
    const __m512i nib = _mm512_set1_epi8(0x0F);
    for (int t0 = 0; t0 < n; t0 += 16) {
        const __mmask16 mk = lanes_of(n - t0);
        for (int h0 = 0; h0 < nq; h0 += HB) {
            const int nh = imin(HB, nq - h0);
            FOR_HN(nh, 
            const int8_t *q8 = qr->q8 + (size_t)h0 * D;
            __m512 sf[HB];
            for (int h = 0; h < hn; h++) sf[h] = _mm512_setzero_ps();
            for (int g = 0; g < NG; g++) {
                __m512i acc[HB];
                for (int h = 0; h < hn; h++) acc[h] = _mm512_setzero_si512();
                if (!q4) {
                    for (int i = g * 8; i < g * 8 + 8; i++) { /* channel quads */
                        const __m512i kv = _mm512_maskz_loadu_epi32(mk, K + ((size_t)i * B4 + t0) * 4);
                        for (int h = 0; h < hn; h++)
                            acc[h] = _mm512_dpbusd_epi32(acc[h], kv, _mm512_set1_epi32(ld32(q8 + (size_t)h * D + 4 * i)));
                    }
                } else {
                    for (int i = g * 4; i < g * 4 + 4; i++) { /* channel octets */
                        const __m512i x = _mm512_maskz_loadu_epi32(mk, K + ((size_t)i * B4 + t0) * 4);
                        const __m512i lo = _mm512_and_si512(x, nib), hi = _mm512_and_si512(_mm512_srli_epi16(x, 4), nib);
                        for (int h = 0; h < hn; h++) {
                            acc[h] = _mm512_dpbusd_epi32(acc[h], lo, _mm512_set1_epi32(ld32(q8 + (size_t)h * D + 8 * i)));
                            acc[h] = _mm512_dpbusd_epi32(acc[h], hi, _mm512_set1_epi32(ld32(q8 + (size_t)h * D + 8 * i + 4)));
                        }
                    }
                }
                const __m512 ksv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, ks + (size_t)g * B4 + t0));
                for (int h = 0; h < hn; h++) {
                    const int hg = (h0 + h) * NG + g;
                    const __m512 f = _mm512_mul_ps(_mm512_set1_ps(qr->qf[hg]), ksv);
                    const __m512i x = _mm512_sub_epi32(acc[h], _mm512_set1_epi32(qr->qcorr[hg]));
                    sf[h] = _mm512_fmadd_ps(f, _mm512_cvtepi32_ps(x), sf[h]);
                }
            }
            for (int h = 0; h < hn; h++) _mm512_mask_storeu_ps(scores + (size_t)(h0 + h) * n + t0, mk, sf[h]);
            );
        }
    }
}

/* kvh_quant_weights of p * V scale for every (head, group). A block of up
 * to 16 slots (the default) is one vector: the V scales are loaded once for
 * all heads and each (head, group) costs one max reduction. */
static void weights_q(const kvh_layout *L, const uint16_t *vs, const float *scores, int nq, int n, uint8_t *w8,
                      float *wsc) {
    const int NG = L->NG, B4 = L->B4;
    if (B4 <= 16) {
        const __mmask16 mk = lanes_of(n), st = lanes_of(B4);
        __m512 vsg[8];
        for (int g0 = 0; g0 < NG; g0 += 8) {
            const int gn = imin(8, NG - g0);
            for (int g = 0; g < gn; g++)
                vsg[g] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, vs + (size_t)(g0 + g) * B4));
            for (int h = 0; h < nq; h++) {
                const __m512 p = _mm512_maskz_loadu_ps(mk, scores + (size_t)h * n);
                for (int g = 0; g < gn; g++) {
                    const __m512 w = _mm512_mul_ps(p, vsg[g]);
                    const float mx = _mm512_reduce_max_ps(w);
                    const __m512i c = _mm512_cvtps_epi32(_mm512_mul_ps(w, _mm512_set1_ps(mx > 0.0f ? 127.0f / mx : 0.0f)));
                    _mm512_mask_cvtepi32_storeu_epi8(w8 + (size_t)(h * NG + g0 + g) * B4, st, c);
                    wsc[h * NG + g0 + g] = mx / 127.0f;
                }
            }
        }
        return;
    }
    for (int h = 0; h < nq; h++)
        for (int g = 0; g < NG; g++) {
            const float *p = scores + (size_t)h * n;
            const uint16_t *sg = vs + (size_t)g * B4;
            __m512 vmax = _mm512_setzero_ps();
            for (int t0 = 0; t0 < n; t0 += 16) {
                const __mmask16 mk = lanes_of(n - t0);
                const __m512 w = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, p + t0),
                                               _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, sg + t0)));
                vmax = _mm512_max_ps(vmax, w);
            }
            const float mx = _mm512_reduce_max_ps(vmax);
            const __m512 inv = _mm512_set1_ps(mx > 0.0f ? 127.0f / mx : 0.0f);
            uint8_t *wg = w8 + (size_t)(h * NG + g) * B4;
            for (int t0 = 0; t0 < B4; t0 += 16) {
                const __mmask16 mk = lanes_of(n - t0);
                const __m512 w = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, p + t0),
                                               _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, sg + t0)));
                _mm512_mask_cvtepi32_storeu_epi8(wg + t0, lanes_of(B4 - t0), _mm512_cvtps_epi32(_mm512_mul_ps(w, inv)));
            }
            wsc[h * NG + g] = mx / 127.0f;
        }
}

static void weighted_v_q(const kvh_layout *L, const uint8_t *r, int D, int nq, int n, int q4, const uint8_t *w8,
                         const float *wsc, float *o) {
    const int NG = L->NG, B4 = L->B4, nj = (n + 3) / 4;
    const uint8_t *V = r + L->v;
    const __m512i nib = _mm512_set1_epi8(0x0F), bias = _mm512_set1_epi8(8);
    const __m512i idx_a = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i idx_b = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    const int step = q4 ? 32 : 16;
    for (int c0 = 0; c0 < D; c0 += step) {
        const int g = c0 / 32;
        for (int h0 = 0; h0 < nq; h0 += HB) {
            const int nh = imin(HB, nq - h0);
            FOR_HN(nh, 
            __m512i acc[HB], acc2[HB];
            for (int h = 0; h < hn; h++) acc[h] = acc2[h] = _mm512_setzero_si512();
            for (int j = 0; j < nj; j++) {
                if (!q4) {
                    const __m512i vv = _mm512_loadu_si512(V + ((size_t)j * D + c0) * 4);
                    for (int h = 0; h < hn; h++) {
                        const __m512i wb = _mm512_set1_epi32(ld32(w8 + (size_t)((h0 + h) * NG + g) * B4 + 4 * j));
                        acc[h] = _mm512_dpbusd_epi32(acc[h], wb, vv);
                    }
                } else {
                    const __m512i x = _mm512_loadu_si512(V + ((size_t)j * (D / 8) + c0 / 8) * 16);
                    /* signed codes: no correction per (head, group) afterwards */
                    const __m512i lo = _mm512_sub_epi8(_mm512_and_si512(x, nib), bias);
                    const __m512i hi = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(x, 4), nib), bias);
                    for (int h = 0; h < hn; h++) {
                        const __m512i wb = _mm512_set1_epi32(ld32(w8 + (size_t)((h0 + h) * NG + g) * B4 + 4 * j));
                        acc[h] = _mm512_dpbusd_epi32(acc[h], wb, lo);
                        acc2[h] = _mm512_dpbusd_epi32(acc2[h], wb, hi);
                    }
                }
            }
            for (int h = 0; h < hn; h++) {
                const __m512 sc = _mm512_set1_ps(wsc[(h0 + h) * NG + g]);
                float *oh = o + (size_t)(h0 + h) * D + c0;
                if (!q4) {
                    _mm512_storeu_ps(oh, _mm512_mul_ps(sc, _mm512_cvtepi32_ps(acc[h])));
                } else {
                    const __m512i a = _mm512_permutex2var_epi32(acc[h], idx_a, acc2[h]);
                    const __m512i b = _mm512_permutex2var_epi32(acc[h], idx_b, acc2[h]);
                    _mm512_storeu_ps(oh, _mm512_mul_ps(sc, _mm512_cvtepi32_ps(a)));
                    _mm512_storeu_ps(oh + 16, _mm512_mul_ps(sc, _mm512_cvtepi32_ps(b)));
                }
            }
            );
        }
    }
}

static void partial_q(const pam_kvh_query *qr, const uint8_t *r, int B, int n, float *m, float *l, float *o,
                      float *scratch) {
    const int q4 = qr->type == PAM_KV_Q4, nq = qr->n_q;
    const kvh_layout L = kvh_layout_of(qr->type, qr->head_dim, B);
    float *scores = scratch, *wsc = scores + (size_t)nq * n;
    uint8_t *w8 = (uint8_t *)(wsc + (size_t)nq * L.NG);
    scores_q(qr, r, &L, n, q4, scores);
    softmax_rows512(scores, nq, n, m, l);
    weights_q(&L, (const uint16_t *)(r + L.vs), scores, nq, n, w8, wsc);
    weighted_v_q(&L, r, qr->head_dim, nq, n, q4, w8, wsc, o);
}

/* ---- bf16 ---- */

static void partial_bf16(const pam_kvh_query *qr, const uint8_t *r, int B, int n, float *m, float *l, float *o,
                         float *scratch) {
    const int D = qr->head_dim, nq = qr->n_q;
    const kvh_layout L = kvh_layout_of(PAM_KV_BF16, D, B);
    const int B2 = L.B2;
    const uint8_t *K = r + L.k, *V = r + L.v;
    float *scores = scratch;
    uint16_t *pb = (uint16_t *)(scores + (size_t)nq * n);
    for (int t0 = 0; t0 < n; t0 += 16) {
        const __mmask16 mk = lanes_of(n - t0);
        for (int h0 = 0; h0 < nq; h0 += HB) {
            const int nh = imin(HB, nq - h0);
            FOR_HN(nh, 
            __m512 acc[HB];
            for (int h = 0; h < hn; h++) acc[h] = _mm512_setzero_ps();
            for (int i = 0; i < D / 2; i++) {
                const __m512bh kv = (__m512bh)_mm512_maskz_loadu_epi32(mk, K + ((size_t)i * B2 + t0) * 4);
                for (int h = 0; h < hn; h++)
                    acc[h] = _mm512_dpbf16_ps(acc[h], kv,
                                              (__m512bh)_mm512_set1_epi32(ld32(qr->qb + (size_t)(h0 + h) * D + 2 * i)));
            }
            for (int h = 0; h < hn; h++) _mm512_mask_storeu_ps(scores + (size_t)(h0 + h) * n + t0, mk, acc[h]);
            );
        }
    }
    softmax_rows512(scores, nq, n, m, l);
    for (int h = 0; h < nq; h++)
        for (int t0 = 0; t0 < B2; t0 += 16) {
            const __m512 p = _mm512_maskz_loadu_ps(lanes_of(n - t0), scores + (size_t)h * n + t0);
            _mm256_mask_storeu_epi16(pb + (size_t)h * B2 + t0, lanes_of(B2 - t0), (__m256i)_mm512_cvtneps_pbh(p));
        }
    const int nj = (n + 1) / 2;
    /* the odd token of a last, half-written pair is never used: a NaN there must not reach 0 * NaN */
    const __m512i even_only = _mm512_set1_epi32(0xFFFF);
    for (int c0 = 0; c0 < D; c0 += 16)
        for (int h0 = 0; h0 < nq; h0 += HB) {
            const int nh = imin(HB, nq - h0);
            FOR_HN(nh, 
            __m512 acc[HB];
            for (int h = 0; h < hn; h++) acc[h] = _mm512_setzero_ps();
            for (int j = 0; j < nj; j++) {
                __m512i vv = _mm512_loadu_si512(V + ((size_t)j * D + c0) * 4);
                if (2 * j + 1 >= n) vv = _mm512_and_si512(vv, even_only);
                for (int h = 0; h < hn; h++)
                    acc[h] = _mm512_dpbf16_ps(acc[h], (__m512bh)vv,
                                              (__m512bh)_mm512_set1_epi32(ld32(pb + (size_t)(h0 + h) * B2 + 2 * j)));
            }
            for (int h = 0; h < hn; h++) _mm512_storeu_ps(o + (size_t)(h0 + h) * D + c0, acc[h]);
            );
        }
}

void pam_kvh_partial_avx512(const pam_kvh_query *qr, const void *run, int block_tokens, int n, float *m, float *l,
                            float *o, float *scratch) {
    if (!pam_kvh_avx512_supports(qr->type, qr->head_dim)) {
        pam_kvh_partial_scalar(qr, run, block_tokens, n, m, l, o, scratch);
        return;
    }
    if (qr->type == PAM_KV_BF16) partial_bf16(qr, run, block_tokens, n, m, l, o, scratch);
    else partial_q(qr, run, block_tokens, n, m, l, o, scratch);
}
