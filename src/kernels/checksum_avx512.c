/* AVX-512 bulk loop of pam_checksum64 (see checksum_isa.h): all eight lanes
 * in one 512-bit register, one load per stripe. Only called after
 * pam_cpu_detect() reported AVX-512, so this file alone is built with it. */
#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <string.h>

#include "kernels/checksum_isa.h"

/* One stripe: acc[i] += lo32(x) * hi32(x), x = d ^ k, and dsum[i] += d[i].
 * The data words reach their neighbour lanes (acc[i] += d[i ^ 1]) through
 * csum_fold once per block: the adds commute, so one swap of the sum
 * replaces a swap per stripe. */
static inline void csum_stripe(__m512i *acc, __m512i *dsum, __m512i d, __m512i k) {
    __m512i x = _mm512_xor_si512(d, k);
    __m512i xh = _mm512_shuffle_epi32(x, (_MM_PERM_ENUM)_MM_SHUFFLE(0, 3, 0, 1)); /* hi32 into lo32 */
    *acc = _mm512_add_epi64(*acc, _mm512_mul_epu32(x, xh));
    *dsum = _mm512_add_epi64(*dsum, d);
}

/* acc[i] += dsum[i ^ 1]; dsum = 0. */
static inline void csum_fold(__m512i *acc, __m512i *dsum) {
    *acc = _mm512_add_epi64(*acc, _mm512_shuffle_epi32(*dsum, (_MM_PERM_ENUM)_MM_SHUFFLE(1, 0, 3, 2)));
    *dsum = _mm512_setzero_si512();
}

static inline __m512i csum_ld(const void *p) { return _mm512_loadu_si512(p); }

/* One whole block (PAM_CSUM_BLOCK_STRIPES stripes) at q, then its
 * scramble; with prefetch, the next block's lines are requested on the way
 * (streaming from memory then runs closer to the plain read rate). */
static inline __m512i csum_block(__m512i a, const uint8_t *q, int prefetch) {
    const uint64_t *key = pam_csum_key + PAM_CSUM_KEY_STRIPE;
    __m512i ds = _mm512_setzero_si512();
#pragma GCC unroll 16
    for (int j = 0; j < PAM_CSUM_BLOCK_STRIPES; j++) {
        if (prefetch) _mm_prefetch((const char *)(q + PAM_CSUM_BLOCK_BYTES + j * PAM_CSUM_STRIPE), _MM_HINT_T0);
        csum_stripe(&a, &ds, csum_ld(q + j * PAM_CSUM_STRIPE), csum_ld(key + j));
    }
    csum_fold(&a, &ds);
    a = _mm512_xor_si512(_mm512_xor_si512(a, _mm512_srli_epi64(a, 47)),
                         csum_ld(pam_csum_key + PAM_CSUM_KEY_SCRAMBLE));
    return _mm512_mullo_epi64(a, _mm512_set1_epi64((long long)PAM_CSUM_SCRAMBLE_MUL));
}

void pam_csum_acc_avx512(uint64_t acc[PAM_CSUM_LANES], const uint8_t *p, size_t n) {
    const uint64_t *key = pam_csum_key + PAM_CSUM_KEY_STRIPE;
    __m512i a = csum_ld(acc), ds = _mm512_setzero_si512();
    size_t n_stripes = n / PAM_CSUM_STRIPE, s = 0;
    /* Prefetch only while a next whole block lies in the input. */
    for (; n_stripes - s >= 2 * PAM_CSUM_BLOCK_STRIPES; s += PAM_CSUM_BLOCK_STRIPES)
        a = csum_block(a, p + s * PAM_CSUM_STRIPE, 1);
    if (n_stripes - s >= PAM_CSUM_BLOCK_STRIPES) {
        a = csum_block(a, p + s * PAM_CSUM_STRIPE, 0);
        s += PAM_CSUM_BLOCK_STRIPES;
    }
    size_t j = 0;
    for (; s < n_stripes; s++, j++) csum_stripe(&a, &ds, csum_ld(p + s * PAM_CSUM_STRIPE), csum_ld(key + j));
    if (n % PAM_CSUM_STRIPE) {
        uint8_t last[PAM_CSUM_STRIPE] = {0};
        memcpy(last, p + n_stripes * PAM_CSUM_STRIPE, n % PAM_CSUM_STRIPE);
        csum_stripe(&a, &ds, csum_ld(last), csum_ld(key + j));
    }
    csum_fold(&a, &ds);
    _mm512_storeu_si512(acc, a);
}

#endif
