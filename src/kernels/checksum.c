/* pam_checksum64: an accumulate-multiply hash with eight independent 64-bit
 * lanes (the bulk loop, checksum_isa.h), seeded lanes, and a final mix.
 *
 * Design: per 64-byte stripe each lane takes one data word through the
 * keyed 32x32->64-bit product and its neighbour's word through a plain add,
 * so a change confined to one 8-byte word always changes its neighbour
 * lane (the add is a bijection of the word, and every later step is a
 * bijection of the lanes) and the product spreads it nonlinearly; the key
 * slides per stripe, so reordering words within a block changes the
 * products; the per-block scramble is a bijection of each lane that carries
 * high bits down (>> 47) and low bits up (the multiply), so order across
 * blocks matters and no lane information is lost before the final mix. The
 * lanes start from the seed (each a bijection of it), and the final mix
 * folds the lanes pairwise with 64x64->128-bit products, adds the seed and
 * length and avalanches. That fold is where distinct lanes can meet: a
 * change to the input (flipped bits, swapped or zeroed words, a torn
 * sector) or to the seed or length changes the result except with a
 * probability of about 2^-64, not with certainty. test_checksum checks those cases and that every ISA level
 * agrees bit for bit.
 *
 * The vector loops map the eight lanes onto two 256-bit (AVX2) or one
 * 512-bit (AVX-512) register: the product is vpmuludq; the data words of a
 * block are summed per lane and swapped to the neighbour lanes (vpshufd
 * within 128-bit lanes) once per block. */
#include "kernels/checksum.h"

#include <string.h>

#include "kernels/checksum_isa.h"
#include "kernels/cpu.h"

/* checksum_avx2.c and checksum_avx512.c compile to nothing off x86. */
#if defined(__x86_64__) || defined(__i386__)
#define PAM_HAVE_CSUM_SIMD 1
#else
#define PAM_HAVE_CSUM_SIMD 0
#endif

/* splitmix64 outputs from the seed "PAM/csum" (little-endian bytes). */
const uint64_t pam_csum_key[PAM_CSUM_KEY_WORDS] = {
    /* stripe key: 23 words */
    0xb9da56fbe1c8a02eull, 0x88bd1f488b63c118ull, 0xf106eee650827e4bull, 0x7eecb2c161e7d2b6ull,
    0xff1f6b8b48816566ull, 0x9ad7d212cf0ed63bull, 0xcfcc9e8b61555834ull, 0x203af66a4e0c4147ull,
    0x34dd582a3bca1f33ull, 0xef9ff3c53b3f91c4ull, 0x1f9a0fe88feccf71ull, 0x6bc6c6d816110d78ull,
    0x2e44b88f73570958ull, 0x6af0b70146636becull, 0x7738d3514785f7a6ull, 0x2e2fa252ee7d5afcull,
    0x4e4ef7f5200b947eull, 0xd68d4f693f5952fdull, 0x6b7f5fc70d24f89full, 0x1f5d5925acc1174aull,
    0xe1556ec8c5710fbdull, 0x6f89e568830abd9bull, 0x8ec4f52045ff4e93ull,
    /* scramble key */
    0x8febde9cf83ee0b9ull, 0xf4d6acfd27006f94ull, 0xafbd08560252bb90ull, 0xd17669100e3116e5ull,
    0xd70e7021136aecadull, 0x2f4625a89bb9fa76ull, 0x95abd3e55b190f96ull, 0x13990addffeeb4fdull,
    /* initial lanes */
    0xe735fd60080f05e8ull, 0xa8860d8170345272ull, 0x57d6287c729c427bull, 0x924b709b375b1af8ull,
    0xf875aa3273e1ddcaull, 0xcc8f5cc0cd70e53cull, 0x65fa109998b61185ull, 0xbf4572055b79b794ull,
    /* final key */
    0x4ce6bf8148d51164ull, 0x0fd026686269a04bull, 0xcf9730ffe5f4b8edull, 0xcbeb09e33530b110ull,
    0x0435336873f1c0e1ull, 0xc1dc3b73c2a609b1ull, 0x32109bbe6a9cfce0ull, 0x99f2596f639ee4c6ull,
};

#define CSUM_MIX1 0x5cce84fbf05e43f1ull /* odd */
#define CSUM_MIX2 0xa39e3dd3d2e71247ull /* odd */

static inline uint64_t csum_rd64(const uint8_t *p) {
    uint64_t x;
    memcpy(&x, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    x = __builtin_bswap64(x);
#endif
    return x;
}

static inline uint64_t csum_rotl(uint64_t x, unsigned r) { return r ? (x << r) | (x >> (64 - r)) : x; }

static inline void csum_stripe(uint64_t acc[PAM_CSUM_LANES], const uint8_t *p, const uint64_t *key) {
    for (int i = 0; i < PAM_CSUM_LANES; i++) {
        uint64_t d = csum_rd64(p + 8 * i), x = d ^ key[i];
        acc[i ^ 1] += d;
        acc[i] += (x & 0xffffffffu) * (x >> 32);
    }
}

static inline void csum_scramble(uint64_t acc[PAM_CSUM_LANES]) {
    for (int i = 0; i < PAM_CSUM_LANES; i++) {
        uint64_t a = acc[i];
        a ^= a >> 47;
        a ^= pam_csum_key[PAM_CSUM_KEY_SCRAMBLE + i];
        acc[i] = a * PAM_CSUM_SCRAMBLE_MUL;
    }
}

void pam_csum_acc_ref(uint64_t acc[PAM_CSUM_LANES], const uint8_t *p, size_t n) {
    const uint64_t *key = pam_csum_key + PAM_CSUM_KEY_STRIPE;
    size_t n_stripes = n / PAM_CSUM_STRIPE, s = 0;
    for (; n_stripes - s >= PAM_CSUM_BLOCK_STRIPES; s += PAM_CSUM_BLOCK_STRIPES) {
        for (int j = 0; j < PAM_CSUM_BLOCK_STRIPES; j++)
            csum_stripe(acc, p + (s + (size_t)j) * PAM_CSUM_STRIPE, key + j);
        csum_scramble(acc);
    }
    size_t j = 0;
    for (; s < n_stripes; s++, j++) csum_stripe(acc, p + s * PAM_CSUM_STRIPE, key + j);
    if (n % PAM_CSUM_STRIPE) {
        uint8_t last[PAM_CSUM_STRIPE] = {0};
        memcpy(last, p + n_stripes * PAM_CSUM_STRIPE, n % PAM_CSUM_STRIPE);
        csum_stripe(acc, last, key + j);
    }
}

/* lo ^ hi of the 128-bit product. */
static inline uint64_t csum_fold(uint64_t a, uint64_t b) {
#if defined(__SIZEOF_INT128__)
    __extension__ unsigned __int128 m = (unsigned __int128)a * b;
    return (uint64_t)m ^ (uint64_t)(m >> 64);
#else
    uint64_t al = a & 0xffffffffu, ah = a >> 32, bl = b & 0xffffffffu, bh = b >> 32;
    uint64_t ll = al * bl, lh = al * bh, hl = ah * bl, hh = ah * bh;
    uint64_t mid = (ll >> 32) + (lh & 0xffffffffu) + (hl & 0xffffffffu);
    uint64_t lo = (mid << 32) | (ll & 0xffffffffu);
    uint64_t hi = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
    return lo ^ hi;
#endif
}

/* A bijective avalanche of one 64-bit word. */
static inline uint64_t csum_mix(uint64_t x) {
    x ^= x >> 31;
    x *= CSUM_MIX1;
    x ^= x >> 29;
    x *= CSUM_MIX2;
    x ^= x >> 32;
    return x;
}

uint64_t pam_checksum64(const void *p, size_t n, uint64_t seed) {
    uint64_t acc[PAM_CSUM_LANES];
    for (int i = 0; i < PAM_CSUM_LANES; i++)
        acc[i] = pam_csum_key[PAM_CSUM_KEY_INIT + i] ^ csum_rotl(seed, 8u * (unsigned)i);
    const uint8_t *b = p;
#if PAM_HAVE_CSUM_SIMD
    pam_isa isa = pam_cpu_isa_level();
    if (isa == PAM_ISA_AVX512)
        pam_csum_acc_avx512(acc, b, n);
    else if (isa == PAM_ISA_AVX2)
        pam_csum_acc_avx2(acc, b, n);
    else
#endif
        pam_csum_acc_ref(acc, b, n);
    const uint64_t *kf = pam_csum_key + PAM_CSUM_KEY_FINAL;
    uint64_t h = csum_mix(seed) ^ ((uint64_t)n * CSUM_MIX2);
    for (int i = 0; i < PAM_CSUM_LANES; i += 2) h += csum_fold(acc[i] ^ kf[i], acc[i + 1] ^ kf[i + 1]);
    return csum_mix(h);
}
