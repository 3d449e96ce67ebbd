/* IEEE binary16 and bfloat16 conversions, bit-exact with the F16C
 * instructions (round to nearest even, NaN preserved). Portable so the scalar
 * kernels and the tests share one definition. */
#ifndef PAM_CORE_FP16_H
#define PAM_CORE_FP16_H

#include <stdint.h>
#include <string.h>

typedef uint16_t pam_f16;
typedef uint16_t pam_bf16;

static inline uint32_t pam_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float pam_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float pam_f16_to_f32(pam_f16 h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0) {
        if (mant == 0) return pam_bits_f32(sign);
        /* subnormal: value = mant * 2^-24 */
        float f = (float)mant * 5.9604644775390625e-8f;
        return sign ? -f : f;
    }
    if (exp == 31) return pam_bits_f32(sign | 0x7f800000u | (mant << 13));
    return pam_bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

static inline pam_f16 pam_f32_to_f16(float f) {
    uint32_t x = pam_f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf or nan */
        return (pam_f16)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 | ((ax >> 13) & 0x3ff) : 0));
    if (ax >= 0x477ff000u) return (pam_f16)(sign | 0x7c00); /* rounds to >= 65520: inf */
    if (ax < 0x38800000u) {                                   /* below smallest normal half */
        if (ax < 0x33000000u) return (pam_f16)sign;           /* < 2^-25: rounds to 0 */
        uint32_t e = ax >> 23;
        uint32_t m = (ax & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t half = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (pam_f16)(sign | half);
    }
    uint32_t h = ((ax >> 13) - (112u << 10));
    uint32_t rem = ax & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return (pam_f16)(sign | h);
}

static inline float pam_bf16_to_f32(pam_bf16 h) { return pam_bits_f32((uint32_t)h << 16); }

static inline pam_bf16 pam_f32_to_bf16(float f) {
    uint32_t x = pam_f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (pam_bf16)((x >> 16) | 64); /* quiet nan */
    return (pam_bf16)((x + (0x7fff + ((x >> 16) & 1))) >> 16);
}

#endif
