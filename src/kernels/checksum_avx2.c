/* AVX2 bulk loop of pam_checksum64 (see checksum_isa.h): lanes 0-3 and 4-7
 * in two 256-bit registers. Only called after pam_cpu_detect() reported
 * AVX2, so this file alone is built with -mavx2. */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <string.h>

#include "kernels/checksum_isa.h"

/* One stripe for four lanes: acc[i] += lo32(x) * hi32(x), x = d ^ k, and
 * dsum[i] += d[i]. The data words reach their neighbour lanes
 * (acc[i] += d[i ^ 1]) through csum_fold once per block: the adds commute,
 * so one swap of the sum replaces a swap per stripe. */
static inline void csum_half(__m256i *acc, __m256i *dsum, __m256i d, __m256i k) {
    __m256i x = _mm256_xor_si256(d, k);
    __m256i xh = _mm256_shuffle_epi32(x, _MM_SHUFFLE(0, 3, 0, 1)); /* hi32 of each word into its lo32 */
    *acc = _mm256_add_epi64(*acc, _mm256_mul_epu32(x, xh));
    *dsum = _mm256_add_epi64(*dsum, d);
}

/* acc[i] += dsum[i ^ 1]; dsum = 0. */
static inline void csum_fold(__m256i *acc, __m256i *dsum) {
    *acc = _mm256_add_epi64(*acc, _mm256_shuffle_epi32(*dsum, _MM_SHUFFLE(1, 0, 3, 2)));
    *dsum = _mm256_setzero_si256();
}

static inline __m256i csum_ld(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* a * PAM_CSUM_SCRAMBLE_MUL mod 2^64 from 32x32->64-bit products. */
static inline __m256i csum_scramble(__m256i a, __m256i key) {
    const __m256i ml = _mm256_set1_epi64x((long long)(PAM_CSUM_SCRAMBLE_MUL & 0xffffffffu));
    const __m256i mh = _mm256_set1_epi64x((long long)(PAM_CSUM_SCRAMBLE_MUL >> 32));
    a = _mm256_xor_si256(_mm256_xor_si256(a, _mm256_srli_epi64(a, 47)), key);
    __m256i lo = _mm256_mul_epu32(a, ml);
    __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), ml), _mm256_mul_epu32(a, mh));
    return _mm256_add_epi64(lo, _mm256_slli_epi64(cross, 32));
}

/* One whole block (PAM_CSUM_BLOCK_STRIPES stripes) at q, then its
 * scramble; with prefetch, the next block's lines are requested on the way
 * (streaming from memory then runs closer to the plain read rate). */
static inline void csum_block(__m256i *a0, __m256i *a1, const uint8_t *q, int prefetch) {
    const uint64_t *key = pam_csum_key + PAM_CSUM_KEY_STRIPE;
    __m256i d0 = _mm256_setzero_si256(), d1 = d0;
#pragma GCC unroll 8
    for (int j = 0; j < PAM_CSUM_BLOCK_STRIPES; j++) {
        if (prefetch) _mm_prefetch((const char *)(q + PAM_CSUM_BLOCK_BYTES + j * PAM_CSUM_STRIPE), _MM_HINT_T0);
        csum_half(a0, &d0, csum_ld(q + j * PAM_CSUM_STRIPE), csum_ld(key + j));
        csum_half(a1, &d1, csum_ld(q + j * PAM_CSUM_STRIPE + 32), csum_ld(key + j + 4));
    }
    csum_fold(a0, &d0);
    csum_fold(a1, &d1);
    *a0 = csum_scramble(*a0, csum_ld(pam_csum_key + PAM_CSUM_KEY_SCRAMBLE));
    *a1 = csum_scramble(*a1, csum_ld(pam_csum_key + PAM_CSUM_KEY_SCRAMBLE + 4));
}

void pam_csum_acc_avx2(uint64_t acc[PAM_CSUM_LANES], const uint8_t *p, size_t n) {
    const uint64_t *key = pam_csum_key + PAM_CSUM_KEY_STRIPE;
    __m256i a0 = csum_ld(acc), a1 = csum_ld(acc + 4), d0 = _mm256_setzero_si256(), d1 = d0;
    size_t n_stripes = n / PAM_CSUM_STRIPE, s = 0;
    /* Prefetch only while a next whole block lies in the input. */
    for (; n_stripes - s >= 2 * PAM_CSUM_BLOCK_STRIPES; s += PAM_CSUM_BLOCK_STRIPES)
        csum_block(&a0, &a1, p + s * PAM_CSUM_STRIPE, 1);
    if (n_stripes - s >= PAM_CSUM_BLOCK_STRIPES) {
        csum_block(&a0, &a1, p + s * PAM_CSUM_STRIPE, 0);
        s += PAM_CSUM_BLOCK_STRIPES;
    }
    size_t j = 0;
    for (; s < n_stripes; s++, j++) {
        const uint8_t *q = p + s * PAM_CSUM_STRIPE;
        csum_half(&a0, &d0, csum_ld(q), csum_ld(key + j));
        csum_half(&a1, &d1, csum_ld(q + 32), csum_ld(key + j + 4));
    }
    if (n % PAM_CSUM_STRIPE) {
        uint8_t last[PAM_CSUM_STRIPE] = {0};
        memcpy(last, p + n_stripes * PAM_CSUM_STRIPE, n % PAM_CSUM_STRIPE);
        csum_half(&a0, &d0, csum_ld(last), csum_ld(key + j));
        csum_half(&a1, &d1, csum_ld(last + 32), csum_ld(key + j + 4));
    }
    csum_fold(&a0, &d0);
    csum_fold(&a1, &d1);
    _mm256_storeu_si256((__m256i *)acc, a0);
    _mm256_storeu_si256((__m256i *)(acc + 4), a1);
}

#endif
