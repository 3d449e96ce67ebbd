/* Block formats, reference quantisers and scalar dot products.
 *
 * The quantisers follow ggml's quantize_row_*_ref step by step (same float
 * operations in the same order, same rounding helpers), so a tensor written
 * here is byte-identical to one written by llama.cpp. The dot products are
 * the portable fallback and the test oracle: plain loops, integer sums per
 * block, one float accumulator walked in element order, so the result depends
 * only on the inputs and n. */
#include "kernels/quant.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu.h"
#include "kernels/ksel.h"
#include "kernels/quant_isa.h"

/* quant_avx2.c and quant_avx512.c compile to nothing off x86. */
#if defined(__x86_64__) || defined(__i386__)
#define PAM_HAVE_AVX2_KERNELS 1
#else
#define PAM_HAVE_AVX2_KERNELS 0
#endif

/* Byte-exactness with ggml needs every multiply and add rounded separately;
 * clang would otherwise fuse them into FMAs when the target has them. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* Rounds to nearest, ties to even, for |x| < 2^22: adding 1.5*2^23 pushes the
 * fraction out of the mantissa. ggml's K-quant helpers use exactly this, and
 * it differs from roundf() on ties, so it must be kept. */
static inline int nearest_int(float fval) {
    float val = fval + 12582912.f;
    int i;
    memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int imax(int a, int b) { return a > b ? a : b; }

/* ---- Q8_0: 32 int8 with one f16 scale ---------------------------------- */

static void quantize_q8_0(const float *x, pam_block_q8_0 *y, int64_t n) {
    for (int64_t i = 0; i < n / PAM_QK8_0; i++, x += PAM_QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < PAM_QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = pam_f32_to_f16(d);
        for (int j = 0; j < PAM_QK8_0; j++) y[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

static void dequantize_q8_0(const pam_block_q8_0 *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n / PAM_QK8_0; i++) {
        const float d = pam_f16_to_f32(x[i].d);
        for (int j = 0; j < PAM_QK8_0; j++) *y++ = x[i].qs[j] * d;
    }
}

/* ---- Q4_0: 32 x 4-bit with one f16 scale, value (q - 8) * d ------------- */

static void quantize_q4_0(const float *x, pam_block_q4_0 *y, int64_t n) {
    for (int64_t i = 0; i < n / PAM_QK4_0; i++, x += PAM_QK4_0) {
        /* The signed extreme maps to -8, so the full 16 levels are used on the
         * side that has the largest magnitude. */
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < PAM_QK4_0; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        const float d = max / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = pam_f32_to_f16(d);
        for (int j = 0; j < PAM_QK4_0 / 2; j++) {
            const float x0 = x[j] * id;
            const float x1 = x[PAM_QK4_0 / 2 + j] * id;
            /* Truncation after +8.5 is ggml's rounding (half up); keep it. */
            const uint8_t q0 = (uint8_t)imin(15, (int8_t)(x0 + 8.5f));
            const uint8_t q1 = (uint8_t)imin(15, (int8_t)(x1 + 8.5f));
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void dequantize_q4_0(const pam_block_q4_0 *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n / PAM_QK4_0; i++, y += PAM_QK4_0) {
        const float d = pam_f16_to_f32(x[i].d);
        for (int j = 0; j < PAM_QK4_0 / 2; j++) {
            y[j] = ((x[i].qs[j] & 0x0f) - 8) * d;
            y[j + PAM_QK4_0 / 2] = ((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

/* ---- K-quant helpers (ggml's make_qx_quants / make_qkx2_quants) --------- */

#define GROUP_MAX_EPS 1e-15f

/* Symmetric quantisation of n values to [-nmax, nmax-1] (stored +nmax),
 * searching 19 scales around nmax/max for the best weighted fit. Only the
 * rmse_type 1 path (weights x^2) is needed by Q6_K. */
static float make_qx_quants_rmse1(int n, int nmax, const float *x, int8_t *L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        for (int i = 0; i < n; i++) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (int8_t)(l + nmax);
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) {
                int l = nearest_int(iscale * x[i]);
                L[i] = (int8_t)(nmax + imax(-nmax, imin(nmax - 1, l)));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Asymmetric quantisation x ~ scale * L - the_min with L in [0, nmax], trying
 * nstep+1 scales and solving the weighted least squares for (scale, min) at
 * each; keeps the one with the lowest weighted squared error. */
static float make_qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                              float *the_min, uint8_t *Laux, float rmin, float rdelta,
                              int nstep) {
    float min = x[0], max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; i++) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)imax(0, imin(nmax, l));
        float diff = scale * L[i] + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = imax(0, imin(nmax, nearest_int(iscale * (x[i] - min))));
            Laux[i] = (uint8_t)l;
            float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if (cur_error < best_error) {
                memcpy(L, Laux, (size_t)n);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* Q4_K packs 8 (scale, min) pairs of 6 bits into 12 bytes: bytes 0..3 hold
 * scales 0..3 and bytes 4..7 mins 0..3 in their low 6 bits; sub-blocks 4..7
 * keep their low 4 bits in bytes 8..11 (scale low nibble, min high nibble)
 * and their top 2 bits in the spare top bits of bytes 0..7. */
static inline void get_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
    }
}

/* ---- Q4_K: 256 values, 8 sub-blocks of 32 with 6-bit scale and min ------ */

static void quantize_q4_K(const float *x, pam_block_q4_K *y, int64_t n) {
    uint8_t L[PAM_QK_K];
    uint8_t Laux[32];
    float weights[32];
    float mins[PAM_QK_K / 32];
    float scales[PAM_QK_K / 32];

    for (int64_t i = 0; i < n / PAM_QK_K; i++, x += PAM_QK_K) {
        float max_scale = 0, max_min = 0; /* scales are >= 0 once the min is removed */
        for (int j = 0; j < PAM_QK_K / 32; j++) {
            float sum_x2 = 0;
            for (int l = 0; l < 32; l++) sum_x2 += x[32 * j + l] * x[32 * j + l];
            float av_x = sqrtf(sum_x2 / 32);
            for (int l = 0; l < 32; l++) weights[l] = av_x + fabsf(x[32 * j + l]);
            scales[j] = make_qkx2_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux,
                                         -1.f, 0.1f, 20);
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }

        float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
        float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
        memset(y[i].scales, 0, sizeof y[i].scales);
        for (int j = 0; j < PAM_QK_K / 32; j++) {
            /* ggml stores nearest_int into a uint8_t before clamping; mirror it. */
            uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
            uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
            ls = (uint8_t)imin(63, ls);
            lm = (uint8_t)imin(63, lm);
            if (j < 4) {
                y[i].scales[j] = ls;
                y[i].scales[j + 4] = lm;
            } else {
                y[i].scales[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
                y[i].scales[j - 4] |= (uint8_t)((ls >> 4) << 6);
                y[i].scales[j - 0] |= (uint8_t)((lm >> 4) << 6);
            }
        }
        y[i].d = pam_f32_to_f16(max_scale / 63.f);
        y[i].dmin = pam_f32_to_f16(max_min / 63.f);

        /* Requantise against the scales as stored (6-bit, f16), which is what
         * dequantisation will use. A zero scale keeps make_qkx2_quants' L. */
        for (int j = 0; j < PAM_QK_K / 32; j++) {
            uint8_t sc, m;
            get_scale_min_k4(j, y[i].scales, &sc, &m);
            const float d = pam_f16_to_f32(y[i].d) * sc;
            if (!d) continue;
            const float dm = pam_f16_to_f32(y[i].dmin) * m;
            for (int ii = 0; ii < 32; ii++) {
                int l = nearest_int((x[32 * j + ii] + dm) / d);
                L[32 * j + ii] = (uint8_t)imax(0, imin(15, l));
            }
        }

        /* Each 32-byte group holds two sub-blocks: low nibbles the first. */
        uint8_t *q = y[i].qs;
        for (int j = 0; j < PAM_QK_K; j += 64, q += 32)
            for (int l = 0; l < 32; l++) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
    }
}

static void dequantize_q4_K(const pam_block_q4_K *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n / PAM_QK_K; i++) {
        const uint8_t *q = x[i].qs;
        const float d = pam_f16_to_f32(x[i].d);
        const float min = pam_f16_to_f32(x[i].dmin);
        for (int j = 0, is = 0; j < PAM_QK_K; j += 64, q += 32, is += 2) {
            uint8_t sc, m;
            get_scale_min_k4(is + 0, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; l++) *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (q[l] >> 4) - m2;
        }
    }
}

/* ---- Q6_K: 256 values, 16 sub-blocks of 16 with int8 scales ------------- */

static void quantize_q6_K(const float *x, pam_block_q6_K *y, int64_t n) {
    int8_t L[PAM_QK_K];
    float scales[PAM_QK_K / 16];

    for (int64_t i = 0; i < n / PAM_QK_K; i++, x += PAM_QK_K) {
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < PAM_QK_K / 16; ib++) {
            const float scale = make_qx_quants_rmse1(16, 32, x + 16 * ib, L + 16 * ib);
            scales[ib] = scale;
            if (fabsf(scale) > max_abs_scale) {
                max_abs_scale = fabsf(scale);
                max_scale = scale;
            }
        }
        if (max_abs_scale < GROUP_MAX_EPS) {
            memset(&y[i], 0, sizeof y[i]);
            y[i].d = pam_f32_to_f16(0.f);
            continue;
        }

        float iscale = -128.f / max_scale;
        y[i].d = pam_f32_to_f16(1 / iscale);
        for (int ib = 0; ib < PAM_QK_K / 16; ib++)
            y[i].scales[ib] = (int8_t)imin(127, nearest_int(iscale * scales[ib]));

        for (int j = 0; j < PAM_QK_K / 16; j++) {
            float d = pam_f16_to_f32(y[i].d) * y[i].scales[j];
            if (!d) continue;
            for (int ii = 0; ii < 16; ii++) {
                int l = imax(-32, imin(31, nearest_int(x[16 * j + ii] / d)));
                L[16 * j + ii] = (int8_t)(l + 32);
            }
        }

        /* Per 128 values: ql holds low nibbles (bytes l and l+32 carry values
         * l, l+32 low and l+64, l+96 high), qh the top 2 bits of all four. */
        uint8_t *ql = y[i].ql;
        uint8_t *qh = y[i].qh;
        for (int j = 0; j < PAM_QK_K; j += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; l++) {
                const uint8_t q1 = L[j + l + 0] & 0xF;
                const uint8_t q2 = L[j + l + 32] & 0xF;
                const uint8_t q3 = L[j + l + 64] & 0xF;
                const uint8_t q4 = L[j + l + 96] & 0xF;
                ql[l + 0] = (uint8_t)(q1 | (q3 << 4));
                ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
                qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) |
                                  ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
            }
        }
    }
}

static void dequantize_q6_K(const pam_block_q6_K *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n / PAM_QK_K; i++) {
        const float d = pam_f16_to_f32(x[i].d);
        const uint8_t *ql = x[i].ql;
        const uint8_t *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int k = 0; k < PAM_QK_K; k += 128, y += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                const int q1 = ((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l + 0] = d * sc[is + 0] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
        }
    }
}

/* ---- Q8_K: activations for the K-quant dots ---------------------------- */

static void quantize_q8_K(const float *x, pam_block_q8_K *y, int64_t n) {
    for (int64_t i = 0; i < n / PAM_QK_K; i++, x += PAM_QK_K) {
        float max = 0, amax = 0;
        for (int j = 0; j < PAM_QK_K; j++) {
            float ax = fabsf(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        if (!amax) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        /* 127 rather than 128 keeps every q in [-127, 127], so the SIMD dots
         * may take |q| as an unsigned byte. */
        const float iscale = -127.f / max;
        for (int j = 0; j < PAM_QK_K; j++) y[i].qs[j] = (int8_t)imin(127, nearest_int(iscale * x[j]));
        for (int j = 0; j < PAM_QK_K / 16; j++) {
            int sum = 0;
            for (int ii = 0; ii < 16; ii++) sum += y[i].qs[j * 16 + ii];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
    }
}

static void dequantize_q8_K(const pam_block_q8_K *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n / PAM_QK_K; i++)
        for (int j = 0; j < PAM_QK_K; j++) *y++ = x[i].d * x[i].qs[j];
}

/* ---- Row conversion entry points ---------------------------------------- */

void pam_dequantize_row(pam_dtype type, const void *src, float *dst, int64_t n) {
    switch (type) {
    case PAM_DT_F32: memcpy(dst, src, (size_t)n * sizeof(float)); break;
    case PAM_DT_F16: {
        const pam_f16 *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = pam_f16_to_f32(s[i]);
        break;
    }
    case PAM_DT_BF16: {
        const pam_bf16 *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = pam_bf16_to_f32(s[i]);
        break;
    }
    case PAM_DT_Q8_0: dequantize_q8_0(src, dst, n); break;
    case PAM_DT_Q4_0: dequantize_q4_0(src, dst, n); break;
    case PAM_DT_Q4_K: dequantize_q4_K(src, dst, n); break;
    case PAM_DT_Q6_K: dequantize_q6_K(src, dst, n); break;
    case PAM_DT_Q8_K: dequantize_q8_K(src, dst, n); break;
    default: /* unsupported: make the mistake visible rather than silent */
        for (int64_t i = 0; i < n; i++) dst[i] = NAN;
        break;
    }
}

void pam_quantize_row(pam_dtype type, const float *src, void *dst, int64_t n) {
    switch (type) {
    case PAM_DT_F32: memcpy(dst, src, (size_t)n * sizeof(float)); break;
    case PAM_DT_F16: {
        pam_f16 *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = pam_f32_to_f16(src[i]);
        break;
    }
    case PAM_DT_BF16: {
        pam_bf16 *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = pam_f32_to_bf16(src[i]);
        break;
    }
    case PAM_DT_Q8_0: quantize_q8_0(src, dst, n); break;
    case PAM_DT_Q4_0: quantize_q4_0(src, dst, n); break;
    case PAM_DT_Q4_K: quantize_q4_K(src, dst, n); break;
    case PAM_DT_Q6_K: quantize_q6_K(src, dst, n); break;
    case PAM_DT_Q8_K: quantize_q8_K(src, dst, n); break;
    default: break;
    }
}

/* ---- Activations ------------------------------------------------------- */

pam_dtype pam_vec_dot_type(pam_dtype weight_type) {
    switch (weight_type) {
    case PAM_DT_Q8_0:
    case PAM_DT_Q4_0: return PAM_DT_Q8_0;
    case PAM_DT_Q4_K:
    case PAM_DT_Q6_K: return PAM_DT_Q8_K;
    default: return PAM_DT_F32;
    }
}

size_t pam_activation_bytes(pam_dtype weight_type, int64_t n) {
    switch (pam_vec_dot_type(weight_type)) {
    case PAM_DT_Q8_0: return (size_t)(n / PAM_QK8_0) * sizeof(pam_block_q8_0);
    case PAM_DT_Q8_K: return (size_t)(n / PAM_QK_K) * sizeof(pam_block_q8_K);
    default: return (size_t)n * sizeof(float);
    }
}

void pam_quantize_activations(pam_dtype weight_type, const float *x, void *dst, int64_t n) {
    pam_dtype t = pam_vec_dot_type(weight_type);
#if PAM_HAVE_AVX2_KERNELS
    if (t == PAM_DT_Q8_0 && pam_cpu_isa_level() == PAM_ISA_AVX512) {
        pam_quantize_q8_0_avx512(x, dst, n);
        return;
    }
    if (t == PAM_DT_Q8_0 && pam_cpu_isa_level() == PAM_ISA_AVX2) {
        pam_quantize_q8_0_avx2(x, dst, n);
        return;
    }
#endif
    pam_quantize_row(t, x, dst, n);
}

/* ---- Scalar dot products ------------------------------------------------ */

float pam_dot_f32_ref(const void *row, const void *act, int64_t n) {
    const float *w = row, *x = act;
    float sum = 0;
    for (int64_t i = 0; i < n; i++) sum += w[i] * x[i];
    return sum;
}

float pam_dot_f16_ref(const void *row, const void *act, int64_t n) {
    const pam_f16 *w = row;
    const float *x = act;
    float sum = 0;
    for (int64_t i = 0; i < n; i++) sum += pam_f16_to_f32(w[i]) * x[i];
    return sum;
}

float pam_dot_bf16_ref(const void *row, const void *act, int64_t n) {
    const pam_bf16 *w = row;
    const float *x = act;
    float sum = 0;
    for (int64_t i = 0; i < n; i++) sum += pam_bf16_to_f32(w[i]) * x[i];
    return sum;
}

float pam_dot_q8_0_ref(const void *row, const void *act, int64_t n) {
    const pam_block_q8_0 *w = row, *a = act;
    float sum = 0;
    for (int64_t i = 0; i < n / PAM_QK8_0; i++) {
        int sumi = 0;
        for (int j = 0; j < PAM_QK8_0; j++) sumi += w[i].qs[j] * a[i].qs[j];
        sum += sumi * (pam_f16_to_f32(w[i].d) * pam_f16_to_f32(a[i].d));
    }
    return sum;
}

float pam_dot_q4_0_ref(const void *row, const void *act, int64_t n) {
    const pam_block_q4_0 *w = row;
    const pam_block_q8_0 *a = act;
    float sum = 0;
    for (int64_t i = 0; i < n / PAM_QK4_0; i++) {
        int sumi = 0;
        for (int j = 0; j < PAM_QK4_0 / 2; j++) {
            sumi += ((w[i].qs[j] & 0x0f) - 8) * a[i].qs[j];
            sumi += ((w[i].qs[j] >> 4) - 8) * a[i].qs[j + PAM_QK4_0 / 2];
        }
        sum += sumi * (pam_f16_to_f32(w[i].d) * pam_f16_to_f32(a[i].d));
    }
    return sum;
}

/* value = d*sc*q - dmin*m, so per block the dot splits into an integer
 * sum_j sc_j * (q . a)_j and the mins against the activation block sums. */
float pam_dot_q4_K_ref(const void *row, const void *act, int64_t n) {
    const pam_block_q4_K *w = row;
    const pam_block_q8_K *a = act;
    float sum = 0;
    for (int64_t i = 0; i < n / PAM_QK_K; i++) {
        int sumi = 0, summ = 0;
        const int8_t *q8 = a[i].qs;
        for (int j = 0; j < PAM_QK_K / 32; j++) {
            uint8_t sc, m;
            get_scale_min_k4(j, w[i].scales, &sc, &m);
            const uint8_t *q4 = w[i].qs + 32 * (j / 2);
            const int shift = (j & 1) * 4;
            int s = 0;
            for (int l = 0; l < 32; l++) s += ((q4[l] >> shift) & 0xF) * q8[32 * j + l];
            sumi += sc * s;
            summ += m * (a[i].bsums[2 * j] + a[i].bsums[2 * j + 1]);
        }
        const float d = a[i].d * pam_f16_to_f32(w[i].d);
        const float dmin = a[i].d * pam_f16_to_f32(w[i].dmin);
        sum += d * (float)sumi - dmin * (float)summ;
    }
    return sum;
}

float pam_dot_q6_K_ref(const void *row, const void *act, int64_t n) {
    const pam_block_q6_K *w = row;
    const pam_block_q8_K *a = act;
    float sum = 0;
    for (int64_t i = 0; i < n / PAM_QK_K; i++) {
        int8_t q6[PAM_QK_K];
        const uint8_t *ql = w[i].ql;
        const uint8_t *qh = w[i].qh;
        for (int k = 0; k < PAM_QK_K; k += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; l++) {
                q6[k + l + 0] = (int8_t)(((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
                q6[k + l + 32] = (int8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
                q6[k + l + 64] = (int8_t)(((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                q6[k + l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
        int sumi = 0;
        for (int j = 0; j < PAM_QK_K / 16; j++) {
            int s = 0;
            for (int l = 0; l < 16; l++) s += q6[16 * j + l] * a[i].qs[16 * j + l];
            sumi += w[i].scales[j] * s;
        }
        sum += a[i].d * pam_f16_to_f32(w[i].d) * (float)sumi;
    }
    return sum;
}

/* ---- Dispatch -----------------------------------------------------------
 * Each weight type is one kernel of the per-machine chooser (kernels/ksel.h),
 * "matvec.<type>", whose variants are the ISA levels' kernels (and, for
 * Q8_0/Q4_0, a second AVX-512 shape). A variant carries its level: the tiled
 * (prefill) kernels, their scratch and the activation preparation follow the
 * chosen variant's level, so one process uses one level per weight type for
 * decode and prefill alike and matvec and matmul results stay bit-identical.
 * Variants of one level give identical bits; different levels need not, which
 * is why the choice is made once, before the first use (ksel.h). */

enum { SLOT_F32, SLOT_F16, SLOT_BF16, SLOT_Q8_0, SLOT_Q4_0, SLOT_Q4_K, SLOT_Q6_K, N_SLOTS };

static int dot_slot(pam_dtype t) {
    switch (t) {
    case PAM_DT_F32: return SLOT_F32;
    case PAM_DT_F16: return SLOT_F16;
    case PAM_DT_BF16: return SLOT_BF16;
    case PAM_DT_Q8_0: return SLOT_Q8_0;
    case PAM_DT_Q4_0: return SLOT_Q4_0;
    case PAM_DT_Q4_K: return SLOT_Q4_K;
    case PAM_DT_Q6_K: return SLOT_Q6_K;
    default: return -1;
    }
}

static const pam_dtype k_slot_type[N_SLOTS] = {PAM_DT_F32,  PAM_DT_F16,  PAM_DT_BF16, PAM_DT_Q8_0,
                                               PAM_DT_Q4_0, PAM_DT_Q4_K, PAM_DT_Q6_K};

typedef struct {
    size_t (*bytes)(int64_t cols);
    void (*prep)(const void *act, int64_t cols, void *dst);
} pam_tile_act;

typedef struct {
    pam_isa isa;
    pam_vec_dot_fn dot;
    pam_vec_dot4_fn dot4;               /* NULL if none */
    pam_vec_tile_fn tile;               /* NULL if none */
    size_t (*tile_scratch)(int64_t cols); /* NULL: no scratch */
    const pam_tile_act *tile_act;       /* the tile's own activation form, NULL: as quantised */
    const pam_vec_prep *prep;           /* NULL if none */
} mv_impl;

#define MV_MAX_VARIANTS 8
static const mv_impl k_ref[N_SLOTS] = {
    {PAM_ISA_SCALAR, pam_dot_f32_ref, NULL, NULL, NULL, 0, NULL},  {PAM_ISA_SCALAR, pam_dot_f16_ref, NULL, NULL, NULL, 0, NULL},
    {PAM_ISA_SCALAR, pam_dot_bf16_ref, NULL, NULL, NULL, 0, NULL}, {PAM_ISA_SCALAR, pam_dot_q8_0_ref, NULL, NULL, NULL, 0, NULL},
    {PAM_ISA_SCALAR, pam_dot_q4_0_ref, NULL, NULL, NULL, 0, NULL}, {PAM_ISA_SCALAR, pam_dot_q4_K_ref, NULL, NULL, NULL, 0, NULL},
    {PAM_ISA_SCALAR, pam_dot_q6_K_ref, NULL, NULL, NULL, 0, NULL},
};
#if PAM_HAVE_AVX2_KERNELS
#define A2 PAM_ISA_AVX2
#define A5 PAM_ISA_AVX512
static const pam_tile_act k_tile_act512 = {pam_tile_act_bytes_avx512, pam_tile_prep_act_avx512};
static const mv_impl k_avx2[N_SLOTS] = {
    {A2, pam_dot_f32_avx2, NULL, pam_tile_f32_avx2, NULL, 0, NULL},
    {A2, pam_dot_f16_avx2, NULL, pam_tile_f16_avx2, NULL, 0, NULL},
    {A2, pam_dot_bf16_avx2, NULL, pam_tile_bf16_avx2, NULL, 0, NULL},
    {A2, pam_dot_q8_0_avx2, pam_dot4_q8_0_avx2, pam_tile_q8_0_avx2, pam_tile_scratch_avx2, 0, NULL},
    {A2, pam_dot_q4_0_avx2, pam_dot4_q4_0_avx2, pam_tile_q4_0_avx2, pam_tile_scratch_avx2, 0, NULL},
    {A2, pam_dot_q4_K_avx2, NULL, pam_tile_q4_K_avx2, NULL, 0, NULL},
    {A2, pam_dot_q6_K_avx2, NULL, pam_tile_q6_K_avx2, NULL, 0, NULL},
};
static const mv_impl k_avx512[N_SLOTS] = {
    {A5, pam_dot_f32_avx512, NULL, pam_tile_f32_avx512, NULL, 0, NULL},
    {A5, pam_dot_f16_avx512, NULL, pam_tile_f16_avx512, NULL, 0, NULL},
    {A5, pam_dot_bf16_avx512, NULL, pam_tile_bf16_avx512, NULL, 0, NULL},
    {A5, pam_dot_q8_0_avx512, pam_dot4_q8_0_avx512, pam_tile_q8_0_avx512, pam_tile_scratch_avx512, &k_tile_act512, NULL},
    {A5, pam_dot_q4_0_avx512, pam_dot4_q4_0_avx512, pam_tile_q4_0_avx512, pam_tile_scratch_avx512, &k_tile_act512, NULL},
    {A5, pam_dot_q4_K_avx512, NULL, pam_tile_q4_K_avx512, NULL, 0, NULL},
    {A5, pam_dot_q6_K_avx512, NULL, pam_tile_q6_K_avx512, NULL, 0, NULL},
};
/* bit-identical to the avx512 ones above and served by the same tiles */
static const mv_impl k_avx512y_q8_0 = {A5, pam_dot_q8_0_avx512y, NULL, pam_tile_q8_0_avx512,
                                       pam_tile_scratch_avx512, &k_tile_act512, NULL};
static const mv_impl k_avx512y_q4_0 = {A5, pam_dot_q4_0_avx512y, NULL, pam_tile_q4_0_avx512,
                                       pam_tile_scratch_avx512, &k_tile_act512, NULL};
static const pam_vec_prep k_prep_q8_0 = {pam_prep_bytes_q8_0_avx512y, pam_prep_q8_0_avx512y,
                                         pam_dot_prep_q8_0_avx512y};
static const pam_vec_prep k_prep_q4_0 = {pam_prep_bytes_q4_0_avx512y, pam_prep_q4_0_avx512y,
                                         pam_dot_prep_q4_0_avx512y};
/* the same, activation work once per product */
static const mv_impl k_avx512yp_q8_0 = {A5, pam_dot_q8_0_avx512y, NULL, pam_tile_q8_0_avx512,
                                        pam_tile_scratch_avx512, &k_tile_act512, &k_prep_q8_0};
static const mv_impl k_avx512yp_q4_0 = {A5, pam_dot_q4_0_avx512y, NULL, pam_tile_q4_0_avx512,
                                        pam_tile_scratch_avx512, &k_tile_act512, &k_prep_q4_0};
/* the same with four rows per call: fewer activation loads, but four
 * interleaved streams, which some CPUs prefetch badly from DRAM */
static const mv_impl k_avx512y4_q8_0 = {A5, pam_dot_q8_0_avx512y, pam_dot4_q8_0_avx512y, pam_tile_q8_0_avx512,
                                        pam_tile_scratch_avx512, &k_tile_act512, NULL};
static const mv_impl k_avx512y4_q4_0 = {A5, pam_dot_q4_0_avx512y, pam_dot4_q4_0_avx512y, pam_tile_q4_0_avx512,
                                        pam_tile_scratch_avx512, &k_tile_act512, NULL};
static const mv_impl k_avx512r[3] = {
    {A5, pam_dot_f32_avx512, pam_dot4_f32_avx512, pam_tile_f32_avx512, NULL, 0, NULL},
    {A5, pam_dot_f16_avx512, pam_dot4_f16_avx512, pam_tile_f16_avx512, NULL, 0, NULL},
    {A5, pam_dot_bf16_avx512, pam_dot4_bf16_avx512, pam_tile_bf16_avx512, NULL, 0, NULL},
};
static const mv_impl k_avx512p_q6_K = {A5, pam_dot_q6_K_avx512p, NULL, pam_tile_q6_K_avx512p, NULL, 0, NULL};
/* its own rounding and its own tile */
static const mv_impl k_avx512p_q4_K = {A5, pam_dot_q4_K_avx512p, NULL, pam_tile_q4_K_avx512p, NULL, 0, NULL};
#undef A2
#undef A5
#endif

static pam_ksel_variant g_mv_variants[N_SLOTS][MV_MAX_VARIANTS];
static pam_ksel_kernel g_mv_kernels[N_SLOTS];
static int g_mv_id[N_SLOTS];
static const char *const k_mv_names[N_SLOTS] = {"matvec.f32",  "matvec.f16",  "matvec.bf16", "matvec.q8_0",
                                                "matvec.q4_0", "matvec.q4_K", "matvec.q6_K"};

/* The timing workload streams weights from DRAM as decode does (a kernel
 * that is fast in cache can stall on memory, e.g. with several interleaved
 * row streams): MV_BENCH_BYTES of rows, larger than the last-level cache of
 * most machines, each call taking the next MV_SLICE_BYTES of them, so the
 * rows a call reads were last touched tens of megabytes ago. */
#define MV_BENCH_BYTES ((size_t)64 << 20)
#define MV_SLICE_BYTES ((size_t)1 << 20)
#define MV_BENCH_COLS 4096

typedef struct {
    pam_dtype type;
    int64_t rows, slice_rows, next;
    size_t row_bytes;
    uint8_t *W, *act, *prepared;
    volatile float sink;
} mv_bench;

static void mv_teardown(void *ctx) {
    mv_bench *b = ctx;
    free(b->W);
    free(b->act);
    free(b->prepared);
    free(b);
}

static void *mv_setup(pam_dtype type) {
    mv_bench *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->type = type;
    (void)pam_dtype_row_bytes(type, MV_BENCH_COLS, &b->row_bytes);
    b->slice_rows = (int64_t)(MV_SLICE_BYTES / b->row_bytes) & ~(int64_t)3;
    b->rows = (int64_t)(MV_BENCH_BYTES / MV_SLICE_BYTES) * b->slice_rows;
    float *row = malloc(sizeof(float) * MV_BENCH_COLS);
    b->W = malloc(b->row_bytes * (size_t)b->rows);
    b->act = malloc(pam_activation_bytes(type, MV_BENCH_COLS) + 64);
    if (!row || !b->W || !b->act) {
        free(row);
        free(b->W);
        free(b->act);
        free(b);
        return NULL;
    }
    /* one quantised row, copied: the kernels' speed does not depend on the
     * values, and the reference K-quant quantisers are slow */
    uint32_t x = 0x12345678u;
    for (int i = 0; i < MV_BENCH_COLS; i++) {
        x = x * 1664525u + 1013904223u;
        row[i] = (float)((int32_t)x >> 8) * (1.0f / 8388608.0f);
    }
    pam_quantize_row(type, row, b->W, MV_BENCH_COLS);
    for (int64_t r = 1; r < b->rows; r++) memcpy(b->W + (size_t)r * b->row_bytes, b->W, b->row_bytes);
    pam_quantize_activations(type, row, b->act, MV_BENCH_COLS);
    free(row);
    b->prepared = aligned_alloc(64, 64 << 10); /* more than any prep of MV_BENCH_COLS needs */
    if (!b->prepared) {
        mv_teardown(b);
        return NULL;
    }
    return b;
}

static void mv_run(void *ctx, const void *impl) {
    mv_bench *b = ctx;
    const mv_impl *m = impl;
    float out[4], s = 0;
    const int64_t r0 = b->next, r1 = r0 + b->slice_rows;
    b->next = r1 < b->rows ? r1 : 0;
    int64_t r = r0;
    if (m->prep) { /* once per product, as pam_matvec does */
        m->prep->prep(b->act, MV_BENCH_COLS, b->prepared);
        for (; r < r1; r++) s += m->prep->dot(b->W + (size_t)r * b->row_bytes, b->prepared, MV_BENCH_COLS);
    }
    if (m->dot4)
        for (; r + 4 <= r1; r += 4) {
            m->dot4(b->W + (size_t)r * b->row_bytes, b->row_bytes, b->act, MV_BENCH_COLS, out);
            s += out[0];
        }
    for (; r < r1; r++) s += m->dot(b->W + (size_t)r * b->row_bytes, b->act, MV_BENCH_COLS);
    b->sink = s;
}


#define MV_SETUP_FN(SLOT) \
    static void *mv_setup_##SLOT(void) { return mv_setup(k_slot_type[SLOT]); }
MV_SETUP_FN(SLOT_F32)
MV_SETUP_FN(SLOT_F16)
MV_SETUP_FN(SLOT_BF16)
MV_SETUP_FN(SLOT_Q8_0)
MV_SETUP_FN(SLOT_Q4_0)
MV_SETUP_FN(SLOT_Q4_K)
MV_SETUP_FN(SLOT_Q6_K)
static void *(*const k_mv_setup[N_SLOTS])(void) = {mv_setup_SLOT_F32,  mv_setup_SLOT_F16,  mv_setup_SLOT_BF16,
                                                    mv_setup_SLOT_Q8_0, mv_setup_SLOT_Q4_0, mv_setup_SLOT_Q4_K,
                                                    mv_setup_SLOT_Q6_K};

static pthread_once_t g_mv_once = PTHREAD_ONCE_INIT;

static void mv_add(int slot, int *n, const char *name, const mv_impl *impl) {
    g_mv_variants[slot][(*n)++] = (pam_ksel_variant){.name = name, .isa = impl->isa, .impl = impl};
}

static void mv_register(void) {
    for (int slot = 0; slot < N_SLOTS; slot++) {
        int n = 0;
        mv_add(slot, &n, "scalar", &k_ref[slot]);
#if PAM_HAVE_AVX2_KERNELS
        mv_add(slot, &n, "avx2", &k_avx2[slot]);
        mv_add(slot, &n, "avx512", &k_avx512[slot]);
        if (slot == SLOT_Q8_0) {
            mv_add(slot, &n, "avx512y", &k_avx512y_q8_0);
            mv_add(slot, &n, "avx512y4", &k_avx512y4_q8_0);
            mv_add(slot, &n, "avx512yp", &k_avx512yp_q8_0);
        }
        if (slot == SLOT_Q4_0) {
            mv_add(slot, &n, "avx512y", &k_avx512y_q4_0);
            mv_add(slot, &n, "avx512y4", &k_avx512y4_q4_0);
            mv_add(slot, &n, "avx512yp", &k_avx512yp_q4_0);
        }
        if (slot == SLOT_Q4_K) mv_add(slot, &n, "avx512p", &k_avx512p_q4_K);
        if (slot == SLOT_Q6_K) mv_add(slot, &n, "avx512p", &k_avx512p_q6_K);
        if (slot <= SLOT_BF16) mv_add(slot, &n, "avx512r", &k_avx512r[slot]);
#endif
        g_mv_kernels[slot] = (pam_ksel_kernel){.name = k_mv_names[slot],
                                               .variants = g_mv_variants[slot],
                                               .n_variants = n,
                                               .setup = k_mv_setup[slot],
                                               .run = mv_run,
                                               .teardown = mv_teardown};
        g_mv_id[slot] = pam_ksel_register(&g_mv_kernels[slot]);
    }
}

/* The chosen kernels of a slot; the reference ones if registration failed
 * (a full registry), which is slow but correct. */
static const mv_impl *mv_choice(int slot) {
    pthread_once(&g_mv_once, mv_register);
    const pam_ksel_variant *v = pam_ksel_choice(g_mv_id[slot]);
    return v ? (const mv_impl *)v->impl : &k_ref[slot];
}

void pam_vec_kernels_register(void) { pthread_once(&g_mv_once, mv_register); }

int pam_vec_kernel_id(pam_dtype weight_type) {
    int slot = dot_slot(weight_type);
    if (slot < 0) return -1;
    pthread_once(&g_mv_once, mv_register);
    return g_mv_id[slot];
}

static float dot_unsupported(const void *row, const void *act, int64_t n) { return NAN; }

pam_vec_dot_fn pam_vec_dot_select(pam_dtype weight_type) {
    int slot = dot_slot(weight_type);
    if (slot < 0) return dot_unsupported;
    return mv_choice(slot)->dot;
}

pam_vec_dot4_fn pam_vec_dot4_select(pam_dtype weight_type) {
    int slot = dot_slot(weight_type);
    return slot < 0 ? NULL : mv_choice(slot)->dot4;
}

const pam_vec_prep *pam_vec_prep_select(pam_dtype weight_type) {
    int slot = dot_slot(weight_type);
    return slot < 0 ? NULL : mv_choice(slot)->prep;
}

pam_vec_tile_fn pam_vec_tile_select(pam_dtype weight_type) {
    int slot = dot_slot(weight_type);
    return slot < 0 ? NULL : mv_choice(slot)->tile;
}

size_t pam_vec_tile_scratch_bytes(pam_dtype weight_type, int64_t cols) {
    int slot = dot_slot(weight_type);
    const mv_impl *m = slot < 0 ? NULL : mv_choice(slot);
    return m && m->tile_scratch ? m->tile_scratch(cols) : 0;
}

static const pam_tile_act *tile_act_of(pam_dtype weight_type) {
    int slot = dot_slot(weight_type);
    return slot < 0 ? NULL : mv_choice(slot)->tile_act;
}

size_t pam_vec_tile_act_bytes(pam_dtype weight_type, int64_t cols) {
    const pam_tile_act *ta = tile_act_of(weight_type);
    return ta ? ta->bytes(cols) : 0;
}

void pam_vec_tile_prep_act(pam_dtype weight_type, const void *act, int64_t cols, void *dst) {
    const pam_tile_act *ta = tile_act_of(weight_type);
    if (ta)
        ta->prep(act, cols, dst);
    else
        memcpy(dst, act, pam_activation_bytes(weight_type, cols));
}

float pam_vec_dot(pam_dtype weight_type, const void *row, const void *act, int64_t n) {
    return pam_vec_dot_select(weight_type)(row, act, n);
}

float pam_vec_dot_ref(pam_dtype weight_type, const void *row, const void *act, int64_t n) {
    int slot = dot_slot(weight_type);
    if (slot < 0) return NAN;
    return k_ref[slot].dot(row, act, n);
}
