/* AVX-512 attention over quantised K/V codes (see attnq.h), 16 lanes.
 *
 * Scores: K codes are channel-major, so 16 tokens' codes of one channel are
 * one vector; each query head accumulates broadcast(q_d * sc_d) * codes over
 * the channels in registers: no horizontal sums, and every code vector is
 * converted once for up to 8 query heads. V: the codes of 16 channels of one
 * token are one vector; each head accumulates broadcast(p_t * vsc_t) * codes
 * over the tokens, and the per-group sums of p_t * vmin_t are added once.
 *
 * int4 codes become floats through a 16-entry table (vpermps reads the low
 * 4 bits of each lane): 16 bytes widened to 16 lanes give two vectors of 16
 * codes, the low nibbles and (shifted) the high ones. For K these are the
 * two channels of a pair row; for V the even and the odd channels of 32,
 * accumulated apart and interleaved once at the end.
 *
 * Requires head_dim % 16 == 0 and group % 16 == 0. The order of every
 * reduction depends only on head_dim, group, n and n_q. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels/attention_avx512.h"
#include "kernels/attnq.h"

#define AQ_INLINE static inline __attribute__((always_inline))
#define HEADS 8 /* query heads per register block */

/* 16 bytes (the first cnt when cnt < 16, the rest zero) widened to lanes. */
AQ_INLINE __m512i bytes16(const uint8_t *p, int cnt) {
    const __m128i b = cnt >= 16 ? _mm_loadu_si128((const __m128i *)p) : _mm_maskz_loadu_epi8(lanes16(cnt), p);
    return _mm512_cvtepu8_epi32(b);
}

AQ_INLINE __m512 nibble_lut(void) {
    return _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

/* Low and high nibbles of widened bytes as floats. */
AQ_INLINE __m512 lo_nibbles(__m512i x, __m512 lut) { return _mm512_permutexvar_ps(x, lut); }
AQ_INLINE __m512 hi_nibbles(__m512i x, __m512 lut) { return _mm512_permutexvar_ps(_mm512_srli_epi32(x, 4), lut); }

/* Scores of GC heads (qs: GC rows of q*sc, qm: their q.min) for tokens
 * t0..t0+cnt-1 of rows starting at p (cnt <= 16; FULL: cnt == 16, plain
 * loads). A step is one K row: one channel (int8) or a channel pair (int4).
 * NS accumulators per head over interleaved channels keep enough FMAs in
 * flight when GC is small. */
AQ_INLINE void scores_chunk(const uint8_t *p, size_t row_bytes, int hd, const float *qs, const float *qm,
                            __m512 vscale, int cnt, float *scores, int64_t n, const int GC, const int BITS,
                            const int FULL) {
    const int CPR = BITS == 4 ? 2 : 1; /* channels per row */
    const int NS0 = GC >= 8 ? 1 : GC >= 4 ? 2 : GC >= 2 ? 4 : 8;
    const int NS = NS0 < CPR ? CPR : NS0;
    const __m512 lut = nibble_lut();
    __m512 acc[8][HEADS]; /* [NS][GC] used; constant indices after inlining keep it in registers */
    for (int s = 0; s < NS; s++)
        for (int j = 0; j < GC; j++) acc[s][j] = _mm512_setzero_ps();
    for (int d = 0; d < hd; d += NS, p += (size_t)(NS / CPR) * row_bytes)
        for (int s = 0; s < NS; s += CPR) {
            const __m512i x = bytes16(p + (size_t)(s / CPR) * row_bytes, FULL ? 16 : cnt);
            __m512 c[2];
            if (BITS == 8) {
                c[0] = _mm512_cvtepi32_ps(x);
            } else {
                c[0] = lo_nibbles(x, lut);
                c[1] = hi_nibbles(x, lut);
            }
            for (int u = 0; u < CPR; u++)
                for (int j = 0; j < GC; j++)
                    acc[s + u][j] =
                        _mm512_fmadd_ps(_mm512_set1_ps(qs[(size_t)j * hd + d + s + u]), c[u], acc[s + u][j]);
        }
    for (int j = 0; j < GC; j++) {
        __m512 a = acc[0][j];
        for (int s = 1; s < NS; s++) a = _mm512_add_ps(a, acc[s][j]);
        const __m512 sc = _mm512_mul_ps(_mm512_add_ps(a, _mm512_set1_ps(qm[j])), vscale);
        if (FULL)
            _mm512_storeu_ps(scores + (size_t)j * n, sc);
        else
            _mm512_mask_storeu_ps(scores + (size_t)j * n, lanes16(cnt), sc);
    }
}

/* Scores of GC heads for all n tokens, 16 at a time. */
AQ_INLINE void scores_block(const pam_attnq_kv *kv, int hd, const float *qs, const float *qm, float scale,
                            int64_t n, float *scores, const int GC, const int BITS) {
    const __m512 vscale = _mm512_set1_ps(scale);
    int64_t t0 = 0;
    for (; t0 + 16 <= n; t0 += 16)
        scores_chunk(kv->k_codes + t0, kv->k_row_bytes, hd, qs, qm, vscale, 16, scores + t0, n, GC, BITS, 1);
    if (t0 < n)
        scores_chunk(kv->k_codes + t0, kv->k_row_bytes, hd, qs, qm, vscale, (int)(n - t0), scores + t0, n, GC,
                     BITS, 0);
}

/* Codes of one V row as W vectors: 16 channels, or (int4, W == 2) the even
 * and the odd ones of 32. */
AQ_INLINE void v_codes(const uint8_t *p, __m512 lut, __m512 *c, const int BITS, const int W) {
    if (BITS == 8) {
        c[0] = _mm512_cvtepi32_ps(bytes16(p, 16));
    } else if (W == 2) {
        const __m512i x = bytes16(p, 16);
        c[0] = lo_nibbles(x, lut);
        c[1] = hi_nibbles(x, lut);
    } else { /* 16 channels in 8 bytes: nibbles put in channel order */
        const __m128i x = _mm_loadl_epi64((const __m128i *)p), lo4 = _mm_set1_epi8(0x0f);
        const __m128i b = _mm_unpacklo_epi8(_mm_and_si128(x, lo4), _mm_and_si128(_mm_srli_epi16(x, 4), lo4));
        c[0] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b));
    }
}

/* o[d .. d+16*W) of GC heads, W = 1 (16 channels) or, int4 only, 2 (32
 * channels of one group). pg holds p_t * vsc_t of the group per head
 * (stride n), vb_g the sums of p_t * vmin_t per head (stride ng). NS
 * accumulators per head and vector over interleaved tokens. */
AQ_INLINE void values_chunk(const uint8_t *p, size_t row_bytes, const float *pg, const float *vb_g, int ng,
                            int64_t n, float *o, int hd, const int GC, const int BITS, const int W) {
    const int NS = GC * W >= 8 ? 1 : GC * W >= 4 ? 2 : 4;
    const __m512 lut = nibble_lut();
    __m512 acc[4][2][HEADS], c[2];
    for (int s = 0; s < NS; s++)
        for (int w = 0; w < W; w++)
            for (int j = 0; j < GC; j++) acc[s][w][j] = _mm512_setzero_ps();
    int64_t t = 0;
    for (; t + NS <= n; t += NS, p += (size_t)NS * row_bytes)
        for (int s = 0; s < NS; s++) {
            v_codes(p + (size_t)s * row_bytes, lut, c, BITS, W);
            for (int w = 0; w < W; w++)
                for (int j = 0; j < GC; j++)
                    acc[s][w][j] = _mm512_fmadd_ps(_mm512_set1_ps(pg[(size_t)j * n + t + s]), c[w], acc[s][w][j]);
        }
    for (; t < n; t++, p += row_bytes) {
        v_codes(p, lut, c, BITS, W);
        for (int w = 0; w < W; w++)
            for (int j = 0; j < GC; j++)
                acc[0][w][j] = _mm512_fmadd_ps(_mm512_set1_ps(pg[(size_t)j * n + t]), c[w], acc[0][w][j]);
    }
    const __m512i even_lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i even_hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (int j = 0; j < GC; j++) {
        const __m512 b = _mm512_set1_ps(vb_g[(size_t)j * ng]);
        __m512 a[2];
        for (int w = 0; w < W; w++) {
            a[w] = acc[0][w][j];
            for (int s = 1; s < NS; s++) a[w] = _mm512_add_ps(a[w], acc[s][w][j]);
        }
        float *oj = o + (size_t)j * hd;
        if (W == 1) {
            _mm512_storeu_ps(oj, _mm512_add_ps(a[0], b));
        } else {
            _mm512_storeu_ps(oj, _mm512_add_ps(_mm512_permutex2var_ps(a[0], even_lo, a[1]), b));
            _mm512_storeu_ps(oj + 16, _mm512_add_ps(_mm512_permutex2var_ps(a[0], even_hi, a[1]), b));
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
        if (BITS == 4 && d + 32 <= hd && d % kv->group + 32 <= kv->group) {
            values_chunk(p, row_bytes, pg, vb + gi, ng, n, o + d, hd, GC, BITS, 2);
            d += 32;
        } else {
            values_chunk(p, row_bytes, pg, vb + gi, ng, n, o + d, hd, GC, BITS, 1);
            d += 16;
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
    float *kmf = vmf + (size_t)ng * n, *ksf = kmf + hd;

    /* q*sc per channel and q.min, per head */
    f16_to_f32(kv->k_min, hd, kmf);
    f16_to_f32(kv->k_scale, hd, ksf);
    for (int g = 0; g < n_q; g++) {
        const float *qg = q + (size_t)g * hd;
        __m512 am = _mm512_setzero_ps();
        for (int d = 0; d < hd; d += 16) {
            const __m512 qv = _mm512_loadu_ps(qg + d);
            _mm512_storeu_ps(qs + (size_t)g * hd + d, _mm512_mul_ps(qv, _mm512_loadu_ps(ksf + d)));
            am = _mm512_fmadd_ps(qv, _mm512_loadu_ps(kmf + d), am);
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
