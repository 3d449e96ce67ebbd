/* Helpers shared by the AVX-512 attention kernels (attention_avx512.c over
 * f16 rows, attnq_avx512.c over quantised codes). Include only from files
 * built with the AVX-512 flags: the functions are static inline so each
 * kernel file gets its own copy compiled for its ISA. */
#ifndef PAM_KERNELS_ATTENTION_AVX512_H
#define PAM_KERNELS_ATTENTION_AVX512_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

/* exp(x) for x <= 0 (softmax arguments), ~1 ulp: the same range reduction
 * and polynomial as the AVX2 kernel, 2^k through the exponent. */
static inline __m512 exp512_nonpos(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.3f);
    const __mmask16 underflow = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    x = _mm512_max_ps(x, lo);
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    const __m512 r2 = _mm512_mul_ps(r, r);
    p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512i e =
        _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mul_ps((__mmask16)~underflow, p, _mm512_castsi512_ps(e));
}

static inline float hsum512(__m512 v) {
    __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Mask of the first cnt (0..16) lanes. */
static inline __mmask16 lanes16(int64_t cnt) { return (__mmask16)((1u << cnt) - 1u); }

/* Softmax numerators in place and their sums, per head: scores[g*n + t]
 * becomes exp(s - m[g]), l[g] their sum. The tail is a masked step. */
static inline void softmax_rows512(float *scores, int n_q, int64_t n, float *m, float *l) {
    for (int g = 0; g < n_q; g++) {
        float *sg = scores + (size_t)g * n;
        __m512 vmax = _mm512_set1_ps(-INFINITY);
        int64_t t = 0;
        for (; t + 16 <= n; t += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(sg + t));
        const __mmask16 tail = lanes16(n - t);
        if (tail) vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail, sg + t));
        const float mx = _mm512_reduce_max_ps(vmax);
        const __m512 vm = _mm512_set1_ps(mx);
        __m512 vsum = _mm512_setzero_ps();
        for (t = 0; t + 16 <= n; t += 16) {
            const __m512 ev = exp512_nonpos(_mm512_sub_ps(_mm512_loadu_ps(sg + t), vm));
            _mm512_storeu_ps(sg + t, ev);
            vsum = _mm512_add_ps(vsum, ev);
        }
        if (tail) {
            const __m512 ev = _mm512_maskz_mov_ps(
                tail, exp512_nonpos(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, sg + t), vm)));
            _mm512_mask_storeu_ps(sg + t, tail, ev);
            vsum = _mm512_add_ps(vsum, ev);
        }
        m[g] = mx;
        l[g] = hsum512(vsum);
    }
}

#endif
