/* AVX2/FMA/F16C attention over quantised K/V codes (see attnq.h), the
 * 8-lane twin of attnq_avx512.c: 8 tokens' codes of one K channel, or 8
 * channels' codes of one V token, are one vector, converted once for up to
 * 4 query heads that accumulate in registers. Requires head_dim % 8 == 0
 * and group % 8 == 0. The order of every reduction depends only on
 * head_dim, group, n and n_q. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels/attention_avx2.h"
#include "kernels/attnq.h"

#define AQ_INLINE static inline __attribute__((always_inline))
#define HEADS 4 /* query heads per register block */

/* Codes of 8 consecutive elements as floats; with cnt < 8 only the first
 * cnt codes are read (the other lanes are zeros or the neighbouring code of
 * a shared int4 byte; callers ignore them). */
AQ_INLINE __m256 codes8(const uint8_t *p, const int bits, int cnt) {
    __m128i b;
    if (bits == 8) {
        int64_t w = 0;
        if (cnt >= 8)
            memcpy(&w, p, 8); /* a constant size: one load */
        else
            memcpy(&w, p, (size_t)cnt);
        b = _mm_cvtsi64_si128(w);
    } else {
        int32_t w = 0;
        if (cnt >= 8)
            memcpy(&w, p, 4);
        else
            memcpy(&w, p, (size_t)(cnt + 1) / 2);
        const __m128i x = _mm_cvtsi32_si128(w), lo4 = _mm_set1_epi8(0x0f);
        b = _mm_unpacklo_epi8(_mm_and_si128(x, lo4), _mm_and_si128(_mm_srli_epi16(x, 4), lo4));
    }
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
}

/* Scores of GC heads for all n tokens, NS accumulators per head over
 * interleaved channels (see attnq_avx512.c). */
AQ_INLINE void scores_block(const pam_attnq_kv *kv, int hd, const float *qs, const float *qm, float scale,
                            int64_t n, float *scores, const int GC, const int BITS) {
    const int NS = GC >= 3 ? 2 : GC == 2 ? 4 : 8;
    const __m256 vscale = _mm256_set1_ps(scale);
    for (int64_t t0 = 0; t0 < n; t0 += 8) {
        const int cnt = n - t0 < 8 ? (int)(n - t0) : 8;
        const uint8_t *base = kv->k_codes + (size_t)t0 * BITS / 8;
        __m256 acc[8][HEADS]; /* [NS][GC] used; constant indices after inlining keep it in registers */
        for (int s = 0; s < NS; s++)
            for (int j = 0; j < GC; j++) acc[s][j] = _mm256_setzero_ps();
        for (int d = 0; d < hd; d += NS)
            for (int s = 0; s < NS; s++) {
                const __m256 c = codes8(base + (size_t)(d + s) * kv->k_row_bytes, BITS, cnt);
                for (int j = 0; j < GC; j++)
                    acc[s][j] = _mm256_fmadd_ps(_mm256_broadcast_ss(qs + (size_t)j * hd + d + s), c, acc[s][j]);
            }
        for (int j = 0; j < GC; j++) {
            __m256 a = acc[0][j];
            for (int s = 1; s < NS; s++) a = _mm256_add_ps(a, acc[s][j]);
            const __m256 sc = _mm256_mul_ps(_mm256_add_ps(a, _mm256_set1_ps(qm[j])), vscale);
            if (cnt == 8) {
                _mm256_storeu_ps(scores + (size_t)j * n + t0, sc);
            } else {
                float tmp[8];
                _mm256_storeu_ps(tmp, sc);
                memcpy(scores + (size_t)j * n + t0, tmp, sizeof(float) * (size_t)cnt);
            }
        }
    }
}

/* o of GC heads from pv (p * vsc per group, head, token) and vb (sums of
 * p * vmin per head, group); NS accumulators per head over interleaved
 * tokens. */
AQ_INLINE void values_block(const pam_attnq_kv *kv, int hd, const float *pv, size_t gstride, const float *vb,
                            int ng, int64_t n, float *o, const int GC, const int BITS) {
    const int NS = GC >= 3 ? 2 : 4;
    const size_t row_bytes = (size_t)hd * BITS / 8;
    for (int d = 0; d < hd; d += 8) {
        const int gi = d / kv->group;
        const float *pg = pv + (size_t)gi * gstride;
        const uint8_t *base = kv->v_codes + (size_t)d * BITS / 8;
        __m256 acc[4][HEADS];
        for (int s = 0; s < NS; s++)
            for (int j = 0; j < GC; j++) acc[s][j] = _mm256_setzero_ps();
        int64_t t = 0;
        for (; t + NS <= n; t += NS)
            for (int s = 0; s < NS; s++) {
                const __m256 c = codes8(base + (size_t)(t + s) * row_bytes, BITS, 8);
                for (int j = 0; j < GC; j++)
                    acc[s][j] = _mm256_fmadd_ps(_mm256_broadcast_ss(pg + (size_t)j * n + t + s), c, acc[s][j]);
            }
        for (; t < n; t++) {
            const __m256 c = codes8(base + (size_t)t * row_bytes, BITS, 8);
            for (int j = 0; j < GC; j++)
                acc[0][j] = _mm256_fmadd_ps(_mm256_broadcast_ss(pg + (size_t)j * n + t), c, acc[0][j]);
        }
        for (int j = 0; j < GC; j++) {
            __m256 a = acc[0][j];
            for (int s = 1; s < NS; s++) a = _mm256_add_ps(a, acc[s][j]);
            _mm256_storeu_ps(o + (size_t)j * hd + d, _mm256_add_ps(a, _mm256_set1_ps(vb[(size_t)j * ng + gi])));
        }
    }
}

#define DISPATCH_HEADS(FN, GC, BITS, ...)                                                        \
    switch (GC) {                                                                              \
    case 1: FN(__VA_ARGS__, 1, BITS); break;                                                   \
    case 2: FN(__VA_ARGS__, 2, BITS); break;                                                   \
    case 3: FN(__VA_ARGS__, 3, BITS); break;                                                   \
    default: FN(__VA_ARGS__, 4, BITS); break;                                                  \
    }

/* n f16 values to f32. */
static void f16_to_f32(const uint16_t *src, int64_t n, float *dst) {
    int64_t t = 0;
    for (; t + 8 <= n; t += 8) _mm256_storeu_ps(dst + t, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + t))));
    for (; t < n; t++) dst[t] = _cvtsh_ss(src[t]);
}

AQ_INLINE void partial(const float *q, int n_q, int hd, float scale, const pam_attnq_kv *kv, int64_t n, float *m,
                       float *l, float *o, float *scratch, const int BITS) {
    const int ng = hd / kv->group;
    float *scores = scratch, *qs = scores + (size_t)n_q * n, *qm = qs + (size_t)n_q * hd, *pv = qm + n_q;
    float *vb = pv + (size_t)ng * n_q * n, *vsf = vb + (size_t)n_q * ng, *vmf = vsf + (size_t)ng * n;

    /* q*sc per channel and q.min, per head */
    for (int g = 0; g < n_q; g++) {
        const float *qg = q + (size_t)g * hd;
        __m256 am = _mm256_setzero_ps();
        for (int d = 0; d < hd; d += 8) {
            const __m256 qv = _mm256_loadu_ps(qg + d);
            const __m256 sc = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kv->k_scale + d)));
            const __m256 mn = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kv->k_min + d)));
            _mm256_storeu_ps(qs + (size_t)g * hd + d, _mm256_mul_ps(qv, sc));
            am = _mm256_fmadd_ps(qv, mn, am);
        }
        qm[g] = hsum256(am);
    }
    for (int g0 = 0; g0 < n_q; g0 += HEADS) {
        const int gc = n_q - g0 < HEADS ? n_q - g0 : HEADS;
        DISPATCH_HEADS(scores_block, gc, BITS, kv, hd, qs + (size_t)g0 * hd, qm + g0, scale, n,
                       scores + (size_t)g0 * n)
    }
    softmax_rows256(scores, n_q, n, m, l);

    /* p*vsc per (group, head, token) and the sums of p*vmin per (head, group) */
    for (int i = 0; i < ng; i++) {
        f16_to_f32(kv->v_scale + (size_t)i * kv->v_par_stride, n, vsf + (size_t)i * n);
        f16_to_f32(kv->v_min + (size_t)i * kv->v_par_stride, n, vmf + (size_t)i * n);
    }
    for (int i = 0; i < ng; i++)
        for (int g = 0; g < n_q; g++) {
            const float *p = scores + (size_t)g * n, *vs = vsf + (size_t)i * n, *vm = vmf + (size_t)i * n;
            float *dst = pv + ((size_t)i * n_q + g) * n;
            __m256 bsum = _mm256_setzero_ps();
            int64_t t = 0;
            for (; t + 8 <= n; t += 8) {
                const __m256 pt = _mm256_loadu_ps(p + t);
                _mm256_storeu_ps(dst + t, _mm256_mul_ps(pt, _mm256_loadu_ps(vs + t)));
                bsum = _mm256_fmadd_ps(pt, _mm256_loadu_ps(vm + t), bsum);
            }
            float b = hsum256(bsum);
            for (; t < n; t++) {
                dst[t] = p[t] * vs[t];
                b += p[t] * vm[t];
            }
            vb[(size_t)g * ng + i] = b;
        }
    for (int g0 = 0; g0 < n_q; g0 += HEADS) {
        const int gc = n_q - g0 < HEADS ? n_q - g0 : HEADS;
        DISPATCH_HEADS(values_block, gc, BITS, kv, hd, pv + (size_t)g0 * n, (size_t)n_q * n,
                       vb + (size_t)g0 * ng, ng, n, o + (size_t)g0 * hd)
    }
}

void pam_attnq_partial_avx2(const float *q, int n_q, int head_dim, float scale, const pam_attnq_kv *kv,
                            int64_t n, float *m, float *l, float *o, float *scratch) {
    if (head_dim % 8 || kv->group % 8 || (kv->bits != 8 && kv->bits != 4)) {
        pam_attnq_partial_ref(q, n_q, head_dim, scale, kv, n, m, l, o, scratch);
        return;
    }
    if (kv->bits == 8)
        partial(q, n_q, head_dim, scale, kv, n, m, l, o, scratch, 8);
    else
        partial(q, n_q, head_dim, scale, kv, n, m, l, o, scratch, 4);
}
