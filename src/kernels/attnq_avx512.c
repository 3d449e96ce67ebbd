/* AVX-512 attention over quantised K/V codes (see attnq.h), 16 lanes.
 *
 * Scores: K codes are channel-major, so 16 tokens' codes of one channel are
 * one vector; each query head accumulates broadcast(q_d * sc_d) * codes over
 * the channels in registers: no horizontal sums, and every code vector is
 * converted once for up to 8 query heads. V: the codes of 16 channels of one
 * token are one vector; each head accumulates broadcast(p_t * vsc_t) * codes
 * over the tokens, and the per-group sums of p_t * vmin_t are added once.
 * Requires head_dim % 16 == 0 and group % 16 == 0. The order of every
 * reduction depends only on head_dim, group, n and n_q. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels/attention_avx512.h"
#include "kernels/attnq.h"

#define AQ_INLINE static inline __attribute__((always_inline))
#define HEADS 8 /* query heads per register block */

/* Codes of 16 consecutive elements as floats; with cnt < 16 only the first
 * cnt codes are read and the other lanes hold garbage-free zeros or the
 * neighbouring code of a shared int4 byte (callers ignore those lanes). */
AQ_INLINE __m512 codes16(const uint8_t *p, const int bits, int cnt) {
    __m128i b;
    if (bits == 8) {
        b = cnt >= 16 ? _mm_loadu_si128((const __m128i *)p) : _mm_maskz_loadu_epi8(lanes16(cnt), p);
    } else {
        const __m128i x = cnt >= 16 ? _mm_loadl_epi64((const __m128i *)p) : _mm_maskz_loadu_epi8(lanes16((cnt + 1) / 2), p);
        const __m128i lo4 = _mm_set1_epi8(0x0f);
        b = _mm_unpacklo_epi8(_mm_and_si128(x, lo4), _mm_and_si128(_mm_srli_epi16(x, 4), lo4));
    }
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b));
}

/* Scores of GC heads (qs: GC rows of q*sc, qm: their q.min) for all n
 * tokens. NS accumulators per head over interleaved channels keep enough
 * FMAs in flight when GC is small. */
AQ_INLINE void scores_block(const pam_attnq_kv *kv, int hd, const float *qs, const float *qm, float scale,
                            int64_t n, float *scores, const int GC, const int BITS) {
    const int NS = GC >= 8 ? 1 : GC >= 4 ? 2 : GC >= 2 ? 4 : 8;
    const __m512 vscale = _mm512_set1_ps(scale);
    for (int64_t t0 = 0; t0 < n; t0 += 16) {
        const int cnt = n - t0 < 16 ? (int)(n - t0) : 16;
        const uint8_t *base = kv->k_codes + (size_t)t0 * BITS / 8;
        __m512 acc[8][HEADS]; /* [NS][GC] used; constant indices after inlining keep it in registers */
        for (int s = 0; s < NS; s++)
            for (int j = 0; j < GC; j++) acc[s][j] = _mm512_setzero_ps();
        for (int d = 0; d < hd; d += NS)
            for (int s = 0; s < NS; s++) {
                const __m512 c = codes16(base + (size_t)(d + s) * kv->k_row_bytes, BITS, cnt);
                for (int j = 0; j < GC; j++)
                    acc[s][j] = _mm512_fmadd_ps(_mm512_set1_ps(qs[(size_t)j * hd + d + s]), c, acc[s][j]);
            }
        for (int j = 0; j < GC; j++) {
            __m512 a = acc[0][j];
            for (int s = 1; s < NS; s++) a = _mm512_add_ps(a, acc[s][j]);
            const __m512 sc = _mm512_mul_ps(_mm512_add_ps(a, _mm512_set1_ps(qm[j])), vscale);
            _mm512_mask_storeu_ps(scores + (size_t)j * n + t0, lanes16(cnt), sc);
        }
    }
}

/* o of GC heads: pv holds p_t * vsc_t per (group, head, token) with head
 * stride n and group stride gstride, vb the per-(head, group) sums of
 * p_t * vmin_t (ng per head). NS accumulators per head over interleaved
 * tokens. */
AQ_INLINE void values_block(const pam_attnq_kv *kv, int hd, const float *pv, size_t gstride, const float *vb,
                            int ng, int64_t n, float *o, const int GC, const int BITS) {
    const int NS = GC >= 8 ? 1 : GC >= 4 ? 2 : 4;
    const size_t row_bytes = (size_t)hd * BITS / 8;
    for (int d = 0; d < hd; d += 16) {
        const int gi = d / kv->group;
        const float *pg = pv + (size_t)gi * gstride;
        const uint8_t *base = kv->v_codes + (size_t)d * BITS / 8;
        __m512 acc[8][HEADS];
        for (int s = 0; s < NS; s++)
            for (int j = 0; j < GC; j++) acc[s][j] = _mm512_setzero_ps();
        int64_t t = 0;
        for (; t + NS <= n; t += NS)
            for (int s = 0; s < NS; s++) {
                const __m512 c = codes16(base + (size_t)(t + s) * row_bytes, BITS, 16);
                for (int j = 0; j < GC; j++)
                    acc[s][j] = _mm512_fmadd_ps(_mm512_set1_ps(pg[(size_t)j * n + t + s]), c, acc[s][j]);
            }
        for (; t < n; t++) {
            const __m512 c = codes16(base + (size_t)t * row_bytes, BITS, 16);
            for (int j = 0; j < GC; j++)
                acc[0][j] = _mm512_fmadd_ps(_mm512_set1_ps(pg[(size_t)j * n + t]), c, acc[0][j]);
        }
        for (int j = 0; j < GC; j++) {
            __m512 a = acc[0][j];
            for (int s = 1; s < NS; s++) a = _mm512_add_ps(a, acc[s][j]);
            _mm512_storeu_ps(o + (size_t)j * hd + d, _mm512_add_ps(a, _mm512_set1_ps(vb[(size_t)j * ng + gi])));
        }
    }
}

#define DISPATCH_HEADS(FN, GC, BITS, ...)                                                        \
    switch (GC) {                                                                              \
    case 1: FN(__VA_ARGS__, 1, BITS); break;                                                   \
    case 2: FN(__VA_ARGS__, 2, BITS); break;                                                   \
    case 3: FN(__VA_ARGS__, 3, BITS); break;                                                   \
    case 4: FN(__VA_ARGS__, 4, BITS); break;                                                   \
    case 5: FN(__VA_ARGS__, 5, BITS); break;                                                   \
    case 6: FN(__VA_ARGS__, 6, BITS); break;                                                   \
    case 7: FN(__VA_ARGS__, 7, BITS); break;                                                   \
    default: FN(__VA_ARGS__, 8, BITS); break;                                                  \
    }

/* n f16 values to f32 (masked tail). */
static void f16_to_f32(const uint16_t *src, int64_t n, float *dst) {
    int64_t t = 0;
    for (; t + 16 <= n; t += 16) _mm512_storeu_ps(dst + t, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + t))));
    if (t < n) {
        const __mmask16 k = lanes16(n - t);
        _mm512_mask_storeu_ps(dst + t, k, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, src + t)));
    }
}

AQ_INLINE void partial(const float *q, int n_q, int hd, float scale, const pam_attnq_kv *kv, int64_t n, float *m,
                    float *l, float *o, float *scratch, const int BITS) {
    const int ng = hd / kv->group;
    float *scores = scratch, *qs = scores + (size_t)n_q * n, *qm = qs + (size_t)n_q * hd, *pv = qm + n_q;
    float *vb = pv + (size_t)ng * n_q * n, *vsf = vb + (size_t)n_q * ng, *vmf = vsf + (size_t)ng * n;

    /* q*sc per channel and q.min, per head */
    for (int g = 0; g < n_q; g++) {
        const float *qg = q + (size_t)g * hd;
        __m512 am = _mm512_setzero_ps();
        for (int d = 0; d < hd; d += 16) {
            const __m512 qv = _mm512_loadu_ps(qg + d);
            const __m512 sc = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kv->k_scale + d)));
            const __m512 mn = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kv->k_min + d)));
            _mm512_storeu_ps(qs + (size_t)g * hd + d, _mm512_mul_ps(qv, sc));
            am = _mm512_fmadd_ps(qv, mn, am);
        }
        qm[g] = hsum512(am);
    }
    for (int g0 = 0; g0 < n_q; g0 += HEADS) {
        const int gc = n_q - g0 < HEADS ? n_q - g0 : HEADS;
        DISPATCH_HEADS(scores_block, gc, BITS, kv, hd, qs + (size_t)g0 * hd, qm + g0, scale, n,
                       scores + (size_t)g0 * n)
    }
    softmax_rows512(scores, n_q, n, m, l);

    /* p*vsc per (group, head, token) and the sums of p*vmin per (head, group) */
    for (int i = 0; i < ng; i++) {
        f16_to_f32(kv->v_scale + (size_t)i * kv->v_par_stride, n, vsf + (size_t)i * n);
        f16_to_f32(kv->v_min + (size_t)i * kv->v_par_stride, n, vmf + (size_t)i * n);
    }
    for (int i = 0; i < ng; i++)
        for (int g = 0; g < n_q; g++) {
            const float *p = scores + (size_t)g * n, *vs = vsf + (size_t)i * n, *vm = vmf + (size_t)i * n;
            float *dst = pv + ((size_t)i * n_q + g) * n;
            __m512 bsum = _mm512_setzero_ps();
            int64_t t = 0;
            for (; t + 16 <= n; t += 16) {
                const __m512 pt = _mm512_loadu_ps(p + t);
                _mm512_storeu_ps(dst + t, _mm512_mul_ps(pt, _mm512_loadu_ps(vs + t)));
                bsum = _mm512_fmadd_ps(pt, _mm512_loadu_ps(vm + t), bsum);
            }
            if (t < n) {
                const __mmask16 k = lanes16(n - t);
                const __m512 pt = _mm512_maskz_loadu_ps(k, p + t);
                _mm512_mask_storeu_ps(dst + t, k, _mm512_mul_ps(pt, _mm512_maskz_loadu_ps(k, vs + t)));
                bsum = _mm512_fmadd_ps(pt, _mm512_maskz_loadu_ps(k, vm + t), bsum);
            }
            vb[(size_t)g * ng + i] = hsum512(bsum);
        }
    for (int g0 = 0; g0 < n_q; g0 += HEADS) {
        const int gc = n_q - g0 < HEADS ? n_q - g0 : HEADS;
        DISPATCH_HEADS(values_block, gc, BITS, kv, hd, pv + (size_t)g0 * n, (size_t)n_q * n,
                       vb + (size_t)g0 * ng, ng, n, o + (size_t)g0 * hd)
    }
}

void pam_attnq_partial_avx512(const float *q, int n_q, int head_dim, float scale, const pam_attnq_kv *kv,
                              int64_t n, float *m, float *l, float *o, float *scratch) {
    if (head_dim % 16 || kv->group % 16 || (kv->bits != 8 && kv->bits != 4)) {
        pam_attnq_partial_ref(q, n_q, head_dim, scale, kv, n, m, l, o, scratch);
        return;
    }
    if (kv->bits == 8)
        partial(q, n_q, head_dim, scale, kv, n, m, l, o, scratch, 8);
    else
        partial(q, n_q, head_dim, scale, kv, n, m, l, o, scratch, 4);
}
