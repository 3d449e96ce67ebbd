/* AVX2 kernels for the KV types of kernels/attnkv.h: int8/int4 with maddubs
 * integer dot products (u8 x s8 pairs into s16, then pmaddwd), bf16 widened
 * to f32 in registers (a shift or a mask per lane) and FMAs. The same layouts
 * and the same quantisation as the AVX-512 kernels, 8 tokens (V: 8 channels)
 * per vector, register blocks of 4 query heads per K/V load.
 *
 * maddubs saturates at 2^15: q8 K takes the sign trick (|k| against
 * sign(q, k), both |.| <= 127, pairs <= 32258); q4 K codes are <= 15 and go
 * in as they are; V multiplies 7-bit weights (unsigned) by signed codes. Requires head_dim % 32 == 0 (q8, q4) or % 8 == 0 (bf16). */
#include <immintrin.h>
#include <string.h>

#include "core/fp16.h"
#include "kernels/attention_avx2.h"
#include "kernels/attnkv.h"
#include "kernels/attnkv_impl.h"

#define HB 4 /* query heads per register block */

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
        default: break; \
        } \
    } while (0)

static inline int32_t ld32(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline int imin(int a, int b) { return a < b ? a : b; }

/* Lanes 0..cnt-1 of 8 set (high bit), for maskload. */
static inline __m256i mask8(int cnt) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(cnt), idx);
}

/* 8 f16 values, zero past cnt. */
static inline __m256 load_h8(const uint16_t *p, int cnt) {
    if (cnt >= 8) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    uint16_t tmp[8] = {0};
    if (cnt > 0) memcpy(tmp, p, sizeof(uint16_t) * (size_t)cnt);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)tmp));
}

static inline __m256i load_i8x32(const uint8_t *p, int cnt_lanes) {
    if (cnt_lanes >= 8) return _mm256_loadu_si256((const __m256i *)p);
    return _mm256_maskload_epi32((const int *)p, mask8(cnt_lanes));
}

static inline void store_ps(float *p, __m256 v, int cnt) {
    if (cnt >= 8) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, mask8(cnt), v);
}

int pam_kvh_avx2_supports(pam_kv_type t, int head_dim) {
    if (t == PAM_KV_BF16) return head_dim % 8 == 0;
    return (t == PAM_KV_Q8 || t == PAM_KV_Q4) && head_dim % 32 == 0;
}

/* ---- q8 / q4 ---- */

static void scores_q(const pam_kvh_query *qr, const uint8_t *r, const kvh_layout *L, int n, int q4, float *scores) {
    const int D = qr->head_dim, nq = qr->n_q, NG = L->NG, B4 = L->B4;
    const uint8_t *K = r + L->k;
    const uint16_t *ks = (const uint16_t *)(r + L->ks);
    const __m256i nib = _mm256_set1_epi8(0x0F), flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    for (int t0 = 0; t0 < n; t0 += 8) {
        const int cnt = n - t0;
        for (int h0 = 0; h0 < nq; h0 += HB) {
            const int nh = imin(HB, nq - h0);
            FOR_HN(nh, 
            const int8_t *q8 = qr->q8 + (size_t)h0 * D;
            __m256 sf[HB];
            for (int h = 0; h < hn; h++) sf[h] = _mm256_setzero_ps();
            for (int g = 0; g < NG; g++) {
                __m256i acc[HB];
                for (int h = 0; h < hn; h++) acc[h] = _mm256_setzero_si256();
                if (!q4) {
                    for (int i = g * 8; i < g * 8 + 8; i++) {
                        const __m256i k = _mm256_xor_si256(load_i8x32(K + ((size_t)i * B4 + t0) * 4, cnt), flip);
                        const __m256i ak = _mm256_abs_epi8(k);
                        for (int h = 0; h < hn; h++) {
                            const __m256i qb = _mm256_set1_epi32(ld32(q8 + (size_t)h * D + 4 * i));
                            const __m256i pr = _mm256_maddubs_epi16(ak, _mm256_sign_epi8(qb, k));
                            acc[h] = _mm256_add_epi32(acc[h], _mm256_madd_epi16(pr, ones));
                        }
                    }
                } else {
                    /* 4 octets x (lo + hi) x 15 x 127 x 2 = 30480: a group sums in s16 */
                    __m256i a16[HB];
                    for (int h = 0; h < hn; h++) a16[h] = _mm256_setzero_si256();
                    for (int i = g * 4; i < g * 4 + 4; i++) {
                        const __m256i x = load_i8x32(K + ((size_t)i * B4 + t0) * 4, cnt);
                        const __m256i lo = _mm256_and_si256(x, nib), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), nib);
                        for (int h = 0; h < hn; h++) {
                            const __m256i qlo = _mm256_set1_epi32(ld32(q8 + (size_t)h * D + 8 * i));
                            const __m256i qhi = _mm256_set1_epi32(ld32(q8 + (size_t)h * D + 8 * i + 4));
                            a16[h] = _mm256_add_epi16(a16[h], _mm256_maddubs_epi16(lo, qlo));
                            a16[h] = _mm256_add_epi16(a16[h], _mm256_maddubs_epi16(hi, qhi));
                        }
                    }
                    for (int h = 0; h < hn; h++) {
                        const __m256i corr = _mm256_set1_epi32(qr->qcorr[(h0 + h) * NG + g]);
                        acc[h] = _mm256_sub_epi32(_mm256_madd_epi16(a16[h], ones), corr);
                    }
                }
                const __m256 ksv = load_h8(ks + (size_t)g * B4 + t0, cnt);
                for (int h = 0; h < hn; h++) {
                    const __m256 f = _mm256_mul_ps(_mm256_set1_ps(qr->qf[(h0 + h) * NG + g]), ksv);
                    sf[h] = _mm256_fmadd_ps(f, _mm256_cvtepi32_ps(acc[h]), sf[h]);
                }
            }
            for (int h = 0; h < hn; h++) store_ps(scores + (size_t)(h0 + h) * n + t0, sf[h], cnt);
            );
        }
    }
}

static void weights_q(const kvh_layout *L, const uint16_t *vs, const float *scores, int nq, int n, uint8_t *w8,
                      float *wsc) {
    const int NG = L->NG, B4 = L->B4;
    const __m256i gather_lo = _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1);
    for (int h = 0; h < nq; h++)
        for (int g = 0; g < NG; g++) {
            const float *p = scores + (size_t)h * n;
            const uint16_t *sg = vs + (size_t)g * B4;
            __m256 vmax = _mm256_setzero_ps();
            for (int t0 = 0; t0 < n; t0 += 8) {
                const int cnt = n - t0;
                const __m256 pv = cnt >= 8 ? _mm256_loadu_ps(p + t0) : _mm256_maskload_ps(p + t0, mask8(cnt));
                vmax = _mm256_max_ps(vmax, _mm256_mul_ps(pv, load_h8(sg + t0, cnt)));
            }
            const float mx = hmax256(vmax);
            const __m256 inv = _mm256_set1_ps(mx > 0.0f ? 127.0f / mx : 0.0f);
            uint8_t *wg = w8 + (size_t)(h * NG + g) * B4;
            for (int t0 = 0; t0 < B4; t0 += 8) {
                const int cnt = n - t0;
                const __m256 pv = cnt >= 8   ? _mm256_loadu_ps(p + t0)
                                  : cnt > 0 ? _mm256_maskload_ps(p + t0, mask8(cnt))
                                            : _mm256_setzero_ps();
                const __m256i c = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_mul_ps(pv, load_h8(sg + t0, cnt)), inv));
                __m256i b = _mm256_packus_epi16(_mm256_packs_epi32(c, c), _mm256_setzero_si256());
                b = _mm256_permutevar8x32_epi32(b, gather_lo);
                uint8_t tmp[8];
                _mm_storel_epi64((__m128i *)tmp, _mm256_castsi256_si128(b));
                memcpy(wg + t0, tmp, (size_t)imin(8, B4 - t0));
            }
            wsc[h * NG + g] = mx / 127.0f;
        }
}

/* Weights (0..127) go in as maddubs' unsigned operand, the signed codes
 * (q8, and q4 less its bias) as the signed one: pairs <= 127 * 127 * 2. */
static void weighted_v_q(const kvh_layout *L, const uint8_t *r, int D, int nq, int n, int q4, const uint8_t *w8,
                         const float *wsc, float *o) {
    const int NG = L->NG, B4 = L->B4, nj = (n + 3) / 4;
    const uint8_t *V = r + L->v;
    const __m256i nib = _mm256_set1_epi8(0x0F), bias = _mm256_set1_epi8(8), ones = _mm256_set1_epi16(1);
    const int step = q4 ? 16 : 8;
    for (int c0 = 0; c0 < D; c0 += step) {
        const int g = c0 / 32;
        for (int h0 = 0; h0 < nq; h0 += HB) {
            const int nh = imin(HB, nq - h0);
            FOR_HN(nh, 
            __m256i acc[HB], acc2[HB];
            for (int h = 0; h < hn; h++) acc[h] = acc2[h] = _mm256_setzero_si256();
            for (int j = 0; j < nj; j++) {
                if (!q4) {
                    const __m256i v = _mm256_loadu_si256((const __m256i *)(V + ((size_t)j * D + c0) * 4));
                    for (int h = 0; h < hn; h++) {
                        const __m256i wb = _mm256_set1_epi32(ld32(w8 + (size_t)((h0 + h) * NG + g) * B4 + 4 * j));
                        acc[h] = _mm256_add_epi32(acc[h], _mm256_madd_epi16(_mm256_maddubs_epi16(wb, v), ones));
                    }
                } else {
                    const __m256i x = _mm256_loadu_si256((const __m256i *)(V + ((size_t)j * (D / 8) + c0 / 8) * 16));
                    const __m256i lo = _mm256_sub_epi8(_mm256_and_si256(x, nib), bias);
                    const __m256i hi = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(x, 4), nib), bias);
                    for (int h = 0; h < hn; h++) {
                        const __m256i wb = _mm256_set1_epi32(ld32(w8 + (size_t)((h0 + h) * NG + g) * B4 + 4 * j));
                        acc[h] = _mm256_add_epi32(acc[h], _mm256_madd_epi16(_mm256_maddubs_epi16(wb, lo), ones));
                        acc2[h] = _mm256_add_epi32(acc2[h], _mm256_madd_epi16(_mm256_maddubs_epi16(wb, hi), ones));
                    }
                }
            }
            for (int h = 0; h < hn; h++) {
                const __m256 sc = _mm256_set1_ps(wsc[(h0 + h) * NG + g]);
                float *oh = o + (size_t)(h0 + h) * D + c0;
                if (!q4) {
                    _mm256_storeu_ps(oh, _mm256_mul_ps(sc, _mm256_cvtepi32_ps(acc[h])));
                } else {
                    /* lo lanes: channels 0-3, 8-11; hi: 4-7, 12-15 */
                    const __m256i a = _mm256_permute2x128_si256(acc[h], acc2[h], 0x20);
                    const __m256i b = _mm256_permute2x128_si256(acc[h], acc2[h], 0x31);
                    _mm256_storeu_ps(oh, _mm256_mul_ps(sc, _mm256_cvtepi32_ps(a)));
                    _mm256_storeu_ps(oh + 8, _mm256_mul_ps(sc, _mm256_cvtepi32_ps(b)));
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
    softmax_rows256(scores, nq, n, m, l);
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
    float *scores = scratch, *pb = scores + (size_t)nq * n;
    const float *qf = qr->qbf;
    const __m256i hi_half = _mm256_set1_epi32((int)0xFFFF0000u);
    for (int t0 = 0; t0 < n; t0 += 8) {
        const int cnt = n - t0;
        for (int h0 = 0; h0 < nq; h0 += HB) {
            const int nh = imin(HB, nq - h0);
            FOR_HN(nh, 
            __m256 acc[HB];
            for (int h = 0; h < hn; h++) acc[h] = _mm256_setzero_ps();
            for (int i = 0; i < D / 2; i++) {
                const __m256i x = load_i8x32(K + ((size_t)i * B2 + t0) * 4, cnt);
                const __m256 ke = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
                const __m256 ko = _mm256_castsi256_ps(_mm256_and_si256(x, hi_half));
                for (int h = 0; h < hn; h++) {
                    const float *qh = qf + (size_t)(h0 + h) * D + 2 * i;
                    acc[h] = _mm256_fmadd_ps(_mm256_broadcast_ss(qh), ke, acc[h]);
                    acc[h] = _mm256_fmadd_ps(_mm256_broadcast_ss(qh + 1), ko, acc[h]);
                }
            }
            for (int h = 0; h < hn; h++) store_ps(scores + (size_t)(h0 + h) * n + t0, acc[h], cnt);
            );
        }
    }
    softmax_rows256(scores, nq, n, m, l);
    for (int h = 0; h < nq; h++)
        for (int t = 0; t < B2; t++)
            pb[(size_t)h * B2 + t] = t < n ? pam_bf16_to_f32(pam_f32_to_bf16(scores[(size_t)h * n + t])) : 0.0f;
    const int nj = (n + 1) / 2;
    for (int c0 = 0; c0 < D; c0 += 8)
        for (int h0 = 0; h0 < nq; h0 += HB) {
            const int nh = imin(HB, nq - h0);
            FOR_HN(nh, 
            __m256 acc[HB];
            for (int h = 0; h < hn; h++) acc[h] = _mm256_setzero_ps();
            for (int j = 0; j < nj; j++) {
                const __m256i x = _mm256_loadu_si256((const __m256i *)(V + ((size_t)j * D + c0) * 4));
                const __m256 ve = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
                /* the odd token of a last, half-written pair is never read */
                const int odd = 2 * j + 1 < n;
                const __m256 vo = _mm256_castsi256_ps(_mm256_and_si256(x, hi_half));
                for (int h = 0; h < hn; h++) {
                    const float *ph = pb + (size_t)(h0 + h) * B2 + 2 * j;
                    acc[h] = _mm256_fmadd_ps(_mm256_set1_ps(ph[0]), ve, acc[h]);
                    if (odd) acc[h] = _mm256_fmadd_ps(_mm256_set1_ps(ph[1]), vo, acc[h]);
                }
            }
            for (int h = 0; h < hn; h++) _mm256_storeu_ps(o + (size_t)(h0 + h) * D + c0, acc[h]);
            );
        }
}

void pam_kvh_partial_avx2(const pam_kvh_query *qr, const void *run, int block_tokens, int n, float *m, float *l,
                          float *o, float *scratch) {
    if (!pam_kvh_avx2_supports(qr->type, qr->head_dim)) {
        pam_kvh_partial_scalar(qr, run, block_tokens, n, m, l, o, scratch);
        return;
    }
    if (qr->type == PAM_KV_BF16) partial_bf16(qr, run, block_tokens, n, m, l, o, scratch);
    else partial_q(qr, run, block_tokens, n, m, l, o, scratch);
}
