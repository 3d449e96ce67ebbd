/* AVX-512 attention over f16 K/V rows, the 16-lane twin of
 * attention_avx2.c: tiles of 16 tokens are converted to f32 once into an
 * L1-resident buffer and used by every query head of the group, so each K/V
 * byte is read from memory once per step. The order of every reduction
 * depends only on head_dim and n. Requires head_dim % 16 == 0. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "core/fp16.h"
#include "kernels/attention.h"
#include "kernels/attention_avx512.h"

#define TILE 16
#define MAX_HD 256

/* Adjacent lanes of the 32-lane concatenation (a, b) summed. Four levels turn
 * 16 per-token accumulators into one vector with token j's score in lane j. */
static inline __m512 pair_sum_ps(__m512 a, __m512 b) {
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_add_ps(_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b));
}

/* Converts rows t0..t0+cnt-1 (cnt <= TILE) to f32, row-major [cnt][hd]. */
static inline void load_tile(const uint16_t *X, size_t stride, int64_t t0, int cnt, int hd, float *dst) {
    for (int j = 0; j < cnt; j++) {
        const uint16_t *row = X + (size_t)(t0 + j) * stride;
        for (int d = 0; d < hd; d += 16)
            _mm512_storeu_ps(dst + j * hd + d,
                             _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + d))));
    }
}

/* Dot of one query head with one f32 row: 16-lane accumulator, fixed order. */
static inline __m512 dot_acc(const float *qg, const float *k, int hd) {
    __m512 a0 = _mm512_mul_ps(_mm512_loadu_ps(qg), _mm512_loadu_ps(k));
    for (int d = 16; d < hd; d += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(qg + d), _mm512_loadu_ps(k + d), a0);
    return a0;
}

/* o = the softmax weights in scores applied to V rows (row t at
 * V + t*stride): each converted tile is applied to every head. */
static void weighted_v512(const uint16_t *V, size_t stride, const float *scores, int n_q, int64_t n, int hd,
                          float *tile, float *o) {
    memset(o, 0, sizeof(float) * (size_t)n_q * (size_t)hd);
    for (int64_t t0 = 0; t0 < n; t0 += TILE) {
        const int cnt = n - t0 < TILE ? (int)(n - t0) : TILE;
        load_tile(V, stride, t0, cnt, hd, tile);
        for (int g = 0; g < n_q; g++) {
            const float *pg = scores + (size_t)g * n + t0;
            float *og = o + (size_t)g * hd;
            for (int d = 0; d < hd; d += 16) {
                __m512 o0 = _mm512_loadu_ps(og + d);
                for (int j = 0; j < cnt; j++)
                    o0 = _mm512_fmadd_ps(_mm512_set1_ps(pg[j]), _mm512_loadu_ps(tile + j * hd + d), o0);
                _mm512_storeu_ps(og + d, o0);
            }
        }
    }
}

void pam_attn_partial_f16_avx512(const float *q, int n_q, int head_dim, float scale,
                                 const uint16_t *K, const uint16_t *V, size_t stride, int64_t n,
                                 float *m, float *l, float *o, float *scores) {
    const int hd = head_dim;
    float tile[TILE * MAX_HD];
    if (hd > MAX_HD || hd % 16) {
        pam_attn_partial_f16_ref(q, n_q, head_dim, scale, K, V, stride, n, m, l, o, scores);
        return;
    }
    const __m512 vscale = _mm512_set1_ps(scale);

    /* Scores: a full tile yields 16 scores per head through a permute tree. */
    int64_t t0 = 0;
    for (; t0 + TILE <= n; t0 += TILE) {
        load_tile(K, stride, t0, TILE, hd, tile);
        for (int g = 0; g < n_q; g++) {
            const float *qg = q + (size_t)g * hd;
            __m512 a[TILE];
            for (int j = 0; j < TILE; j++) a[j] = dot_acc(qg, tile + j * hd, hd);
            __m512 b[TILE / 2], c[TILE / 4], e[TILE / 8];
            for (int j = 0; j < TILE / 2; j++) b[j] = pair_sum_ps(a[2 * j], a[2 * j + 1]);
            for (int j = 0; j < TILE / 4; j++) c[j] = pair_sum_ps(b[2 * j], b[2 * j + 1]);
            for (int j = 0; j < TILE / 8; j++) e[j] = pair_sum_ps(c[2 * j], c[2 * j + 1]);
            _mm512_storeu_ps(scores + (size_t)g * n + t0, _mm512_mul_ps(pair_sum_ps(e[0], e[1]), vscale));
        }
    }
    if (t0 < n) {
        const int cnt = (int)(n - t0);
        load_tile(K, stride, t0, cnt, hd, tile);
        for (int g = 0; g < n_q; g++) {
            const float *qg = q + (size_t)g * hd;
            for (int j = 0; j < cnt; j++)
                scores[(size_t)g * n + t0 + j] = hsum512(dot_acc(qg, tile + j * hd, hd)) * scale;
        }
    }

    softmax_rows512(scores, n_q, n, m, l);

    weighted_v512(V, stride, scores, n_q, n, hd, tile, o);
}

/* ---- K transposed per block (pam_attn_partial_f16_kt) ---------------------
 * Element (d, t) of K at Kt[d*B + t]: the 16 tokens of a tile are one
 * contiguous run per channel, so a score vector is built by broadcasting
 * q[d] and FMA-ing with that run, one accumulator pair (even/odd channels)
 * per query head, no horizontal sums. Heads go in groups of up to 8. */

#define KT_GROUP 8

/* Scores of tokens t0..t0+15 for NG heads (q: NG rows of hd), lanes outside
 * mask neither loaded nor stored. NG is a constant after inlining, so the
 * accumulators live in registers. */
static inline __attribute__((always_inline)) void kt_scores512(const float *q, const int NG, int hd,
                                                               const uint16_t *Kt, int64_t B, int64_t t0,
                                                               __mmask16 mask, __m512 vscale, float *sc,
                                                               int64_t n) {
    __m512 a[KT_GROUP], b[KT_GROUP];
    for (int g = 0; g < NG; g++) a[g] = b[g] = _mm512_setzero_ps();
    const uint16_t *k = Kt + t0;
    for (int d = 0; d < hd; d += 2) {
        const __m512 k0 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, k + (size_t)d * (size_t)B));
        const __m512 k1 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, k + (size_t)(d + 1) * (size_t)B));
        for (int g = 0; g < NG; g++) {
            a[g] = _mm512_fmadd_ps(_mm512_set1_ps(q[(size_t)g * hd + d]), k0, a[g]);
            b[g] = _mm512_fmadd_ps(_mm512_set1_ps(q[(size_t)g * hd + d + 1]), k1, b[g]);
        }
    }
    for (int g = 0; g < NG; g++)
        _mm512_mask_storeu_ps(sc + (size_t)g * n + t0, mask, _mm512_mul_ps(_mm512_add_ps(a[g], b[g]), vscale));
}

void pam_attn_partial_f16_kt_avx512(const float *q, int n_q, int head_dim, float scale,
                                    const uint16_t *Kt, const uint16_t *V, int64_t B, int64_t n,
                                    float *m, float *l, float *o, float *scores) {
    const int hd = head_dim;
    float tile[TILE * MAX_HD];
    if (hd > MAX_HD || hd % 16 || n < 1 || n > B) {
        pam_attn_partial_f16_kt_ref(q, n_q, head_dim, scale, Kt, V, B, n, m, l, o, scores);
        return;
    }
    const __m512 vscale = _mm512_set1_ps(scale);

    for (int64_t t0 = 0; t0 < n; t0 += TILE) {
        const __mmask16 mask = n - t0 >= TILE ? (__mmask16)0xFFFF : lanes16(n - t0);
        for (int g0 = 0; g0 < n_q; g0 += KT_GROUP) {
            const float *qg = q + (size_t)g0 * hd;
            float *sg = scores + (size_t)g0 * n;
            switch (n_q - g0 < KT_GROUP ? n_q - g0 : KT_GROUP) {
            case 1: kt_scores512(qg, 1, hd, Kt, B, t0, mask, vscale, sg, n); break;
            case 2: kt_scores512(qg, 2, hd, Kt, B, t0, mask, vscale, sg, n); break;
            case 3: kt_scores512(qg, 3, hd, Kt, B, t0, mask, vscale, sg, n); break;
            case 4: kt_scores512(qg, 4, hd, Kt, B, t0, mask, vscale, sg, n); break;
            case 5: kt_scores512(qg, 5, hd, Kt, B, t0, mask, vscale, sg, n); break;
            case 6: kt_scores512(qg, 6, hd, Kt, B, t0, mask, vscale, sg, n); break;
            case 7: kt_scores512(qg, 7, hd, Kt, B, t0, mask, vscale, sg, n); break;
            default: kt_scores512(qg, 8, hd, Kt, B, t0, mask, vscale, sg, n); break;
            }
        }
    }

    softmax_rows512(scores, n_q, n, m, l);

    weighted_v512(V, (size_t)hd, scores, n_q, n, hd, tile, o);
}
