/* AVX2/FMA/F16C attention over quantised K/V codes (see attnq.h), the
 * 8-lane twin of attnq_avx512.c: 8 tokens' codes of one K row, or 8
 * channels' codes of one V token, are one vector, converted once for up to
 * 4 query heads that accumulate in registers. int4 bytes widened to lanes
 * give the low nibbles (masked) and the high ones (shifted): the two
 * channels of a K pair row, or the even and the odd channels of 16 V
 * channels, accumulated apart and interleaved once at the end.
 *
 * Requires head_dim % 8 == 0 and group % 8 == 0. The order of every
 * reduction depends only on head_dim, group, n and n_q. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels/attention_avx2.h"
#include "kernels/attnq.h"

#define AQ_INLINE static inline __attribute__((always_inline))
#define HEADS 4 /* query heads per register block */

/* 8 bytes (the first cnt when cnt < 8, the rest zero) widened to lanes. */
AQ_INLINE __m256i bytes8(const uint8_t *p, int cnt) {
    int64_t w = 0;
    if (cnt >= 8)
        memcpy(&w, p, 8); /* a constant size: one load */
    else
        memcpy(&w, p, (size_t)cnt);
    return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(w));
}

AQ_INLINE __m256 lo_nibbles(__m256i x) { return _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(0x0f))); }
AQ_INLINE __m256 hi_nibbles(__m256i x) { return _mm256_cvtepi32_ps(_mm256_srli_epi32(x, 4)); }

/* Scores of GC heads for tokens t0..t0+cnt-1 of K rows starting at p
 * (cnt <= 8; FULL: cnt == 8). A step is one row: a channel (int8) or a
 * channel pair (int4). NS accumulators per head over interleaved channels. */
AQ_INLINE void scores_chunk(const uint8_t *p, size_t row_bytes, int hd, const float *qs, const float *qm,
                            __m256 vscale, int cnt, float *scores, int64_t n, const int GC, const int BITS,
                            const int FULL) {
    const int CPR = BITS == 4 ? 2 : 1; /* channels per row */
    const int NS = GC >= 3 ? 2 : GC == 2 ? 4 : 8;
    __m256 acc[8][HEADS]; /* [NS][GC] used; constant indices after inlining keep it in registers */
    for (int s = 0; s < NS; s++)
        for (int j = 0; j < GC; j++) acc[s][j] = _mm256_setzero_ps();
    for (int d = 0; d < hd; d += NS, p += (size_t)(NS / CPR) * row_bytes)
        for (int s = 0; s < NS; s += CPR) {
            const __m256i x = bytes8(p + (size_t)(s / CPR) * row_bytes, FULL ? 8 : cnt);
            __m256 c[2];
            if (BITS == 8) {
                c[0] = _mm256_cvtepi32_ps(x);
            } else {
                c[0] = lo_nibbles(x);
                c[1] = hi_nibbles(x);
            }
            for (int u = 0; u < CPR; u++)
                for (int j = 0; j < GC; j++)
                    acc[s + u][j] =
                        _mm256_fmadd_ps(_mm256_broadcast_ss(qs + (size_t)j * hd + d + s + u), c[u], acc[s + u][j]);
        }
    for (int j = 0; j < GC; j++) {
        __m256 a = acc[0][j];
        for (int s = 1; s < NS; s++) a = _mm256_add_ps(a, acc[s][j]);
        const __m256 sc = _mm256_mul_ps(_mm256_add_ps(a, _mm256_set1_ps(qm[j])), vscale);
        if (FULL) {
            _mm256_storeu_ps(scores + (size_t)j * n, sc);
        } else {
            float tmp[8];
            _mm256_storeu_ps(tmp, sc);
            memcpy(scores + (size_t)j * n, tmp, sizeof(float) * (size_t)cnt);
        }
    }
}

/* Scores of GC heads for all n tokens, 8 at a time. */
AQ_INLINE void scores_block(const pam_attnq_kv *kv, int hd, const float *qs, const float *qm, float scale,
                            int64_t n, float *scores, const int GC, const int BITS) {
    const __m256 vscale = _mm256_set1_ps(scale);
    int64_t t0 = 0;
    for (; t0 + 8 <= n; t0 += 8)
        scores_chunk(kv->k_codes + t0, kv->k_row_bytes, hd, qs, qm, vscale, 8, scores + t0, n, GC, BITS, 1);
    if (t0 < n)
        scores_chunk(kv->k_codes + t0, kv->k_row_bytes, hd, qs, qm, vscale, (int)(n - t0), scores + t0, n, GC,
                     BITS, 0);
}

/* Codes of one V row as W vectors: 8 channels, or (int4, W == 2) the even
 * and the odd ones of 16. */
AQ_INLINE void v_codes(const uint8_t *p, __m256 *c, const int BITS, const int W) {
    if (BITS == 8) {
        c[0] = _mm256_cvtepi32_ps(bytes8(p, 8));
    } else if (W == 2) {
        const __m256i x = bytes8(p, 8);
        c[0] = lo_nibbles(x);
        c[1] = hi_nibbles(x);
    } else { /* 8 channels in 4 bytes: nibbles put in channel order */
        int32_t w;
        memcpy(&w, p, 4);
        const __m128i x = _mm_cvtsi32_si128(w), lo4 = _mm_set1_epi8(0x0f);
        const __m128i b = _mm_unpacklo_epi8(_mm_and_si128(x, lo4), _mm_and_si128(_mm_srli_epi16(x, 4), lo4));
        c[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
    }
}

/* o[d .. d+8*W) of GC heads, W = 1 (8 channels) or, int4 only, 2 (16
 * channels of one group). pg holds p_t * vsc_t of the group per head
 * (stride n), vb_g the sums of p_t * vmin_t per head (stride ng). NS
 * accumulators per head and vector over interleaved tokens. */
AQ_INLINE void values_chunk(const uint8_t *p, size_t row_bytes, const float *pg, const float *vb_g, int ng,
                            int64_t n, float *o, int hd, const int GC, const int BITS, const int W) {
    const int NS = GC * W >= 3 ? 2 : 4;
    __m256 acc[4][2][HEADS], c[2];
    for (int s = 0; s < NS; s++)
        for (int w = 0; w < W; w++)
            for (int j = 0; j < GC; j++) acc[s][w][j] = _mm256_setzero_ps();
    int64_t t = 0;
    for (; t + NS <= n; t += NS, p += (size_t)NS * row_bytes)
        for (int s = 0; s < NS; s++) {
            v_codes(p + (size_t)s * row_bytes, c, BITS, W);
            for (int w = 0; w < W; w++)
                for (int j = 0; j < GC; j++)
                    acc[s][w][j] = _mm256_fmadd_ps(_mm256_broadcast_ss(pg + (size_t)j * n + t + s), c[w], acc[s][w][j]);
        }
    for (; t < n; t++, p += row_bytes) {
        v_codes(p, c, BITS, W);
        for (int w = 0; w < W; w++)
            for (int j = 0; j < GC; j++)
                acc[0][w][j] = _mm256_fmadd_ps(_mm256_broadcast_ss(pg + (size_t)j * n + t), c[w], acc[0][w][j]);
    }
    for (int j = 0; j < GC; j++) {
        const __m256 b = _mm256_set1_ps(vb_g[(size_t)j * ng]);
        __m256 a[2];
        for (int w = 0; w < W; w++) {
            a[w] = acc[0][w][j];
            for (int s = 1; s < NS; s++) a[w] = _mm256_add_ps(a[w], acc[s][w][j]);
        }
        float *oj = o + (size_t)j * hd;
        if (W == 1) {
            _mm256_storeu_ps(oj, _mm256_add_ps(a[0], b));
        } else {
            /* even e0..e7, odd o0..o7 -> e0 o0 e1 o1 ... e7 o7 */
            const __m256 lo = _mm256_unpacklo_ps(a[0], a[1]), hi = _mm256_unpackhi_ps(a[0], a[1]);
            _mm256_storeu_ps(oj, _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20), b));
            _mm256_storeu_ps(oj + 8, _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x31), b));
        }
    }
}

/* o of GC heads over all channels: pv holds p_t * vsc_t per (group, head,
 * token) with head stride n and group stride gstride, vb the per-(head,
 * group) sums of p_t * vmin_t (ng per head). */
AQ_INLINE void values_block(const pam_attnq_kv *kv, int hd, const float *pv, size_t gstride, const float *vb,
                            int ng, int64_t n, float *o, const int GC, const int BITS) {
    const size_t row_bytes = (size_t)hd * BITS / 8;
    for (int d = 0; d < hd;) {
        const int gi = d / kv->group;
        const uint8_t *p = kv->v_codes + (size_t)d * BITS / 8;
        const float *pg = pv + (size_t)gi * gstride;
        if (BITS == 4 && d + 16 <= hd && d % kv->group + 16 <= kv->group) {
            values_chunk(p, row_bytes, pg, vb + gi, ng, n, o + d, hd, GC, BITS, 2);
            d += 16;
        } else {
            values_chunk(p, row_bytes, pg, vb + gi, ng, n, o + d, hd, GC, BITS, 1);
            d += 8;
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
    float *kmf = vmf + (size_t)ng * n, *ksf = kmf + hd;

    /* q*sc per channel and q.min, per head */
    f16_to_f32(kv->k_min, hd, kmf);
    f16_to_f32(kv->k_scale, hd, ksf);
    for (int g = 0; g < n_q; g++) {
        const float *qg = q + (size_t)g * hd;
        __m256 am = _mm256_setzero_ps();
        for (int d = 0; d < hd; d += 8) {
            const __m256 qv = _mm256_loadu_ps(qg + d);
            _mm256_storeu_ps(qs + (size_t)g * hd + d, _mm256_mul_ps(qv, _mm256_loadu_ps(ksf + d)));
            am = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kmf + d), am);
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
