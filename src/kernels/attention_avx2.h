/* Helpers shared by the AVX2 attention kernels (attention_avx2.c over f16
 * rows, attnq_avx2.c over quantised codes). Include only from files built
 * with -mavx2 -mfma -mf16c: the functions are static inline so each kernel
 * file gets its own copy compiled for its ISA. */
#ifndef PAM_KERNELS_ATTENTION_AVX2_H
#define PAM_KERNELS_ATTENTION_AVX2_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

/* exp(x) for x <= 0 (softmax arguments), ~1 ulp: Cephes-style range
 * reduction x = k*ln2 + r, degree-6 polynomial, 2^k through the exponent. */
static inline __m256 exp256_nonpos(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f);
    __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(x, lo);
    __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 r2 = _mm256_mul_ps(r, r);
    p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    __m256 res = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    return _mm256_andnot_ps(underflow, res);
}

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax256(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Softmax numerators in place and their sums, per head: scores[g*n + t]
 * becomes exp(s - m[g]), l[g] their sum. */
static inline void softmax_rows256(float *scores, int n_q, int64_t n, float *m, float *l) {
    for (int g = 0; g < n_q; g++) {
        float *sg = scores + (size_t)g * n;
        __m256 vmax = _mm256_set1_ps(-INFINITY);
        int64_t t = 0;
        for (; t + 8 <= n; t += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(sg + t));
        float mx = hmax256(vmax);
        for (; t < n; t++) mx = sg[t] > mx ? sg[t] : mx;
        __m256 vm = _mm256_set1_ps(mx), vsum = _mm256_setzero_ps();
        for (t = 0; t + 8 <= n; t += 8) {
            __m256 e = exp256_nonpos(_mm256_sub_ps(_mm256_loadu_ps(sg + t), vm));
            _mm256_storeu_ps(sg + t, e);
            vsum = _mm256_add_ps(vsum, e);
        }
        float sum = hsum256(vsum);
        for (; t < n; t++) {
            sg[t] = expf(sg[t] - mx);
            sum += sg[t];
        }
        m[g] = mx;
        l[g] = sum;
    }
}

#endif
