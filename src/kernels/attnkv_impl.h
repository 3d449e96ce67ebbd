/* Internals shared by the kernels/attnkv*.c files: where each part of a head
 * run lives (see kernels/attnkv.h for the layouts) and the quantisation of
 * the softmax weights, which every variant must do identically. */
#ifndef PAM_KERNELS_ATTNKV_IMPL_H
#define PAM_KERNELS_ATTNKV_IMPL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/attnkv.h"

/* Byte offsets of K codes/values, K scales, V codes/values, V scales. */
typedef struct kvh_layout {
    size_t k, ks, v, vs, total;
    int B2, B4, G, NG;
} kvh_layout;

static inline int kvh_group(int D) { return D % 32 == 0 ? 32 : D; }

static inline kvh_layout kvh_layout_of(pam_kv_type t, int D, int B) {
    kvh_layout L = {0};
    L.B2 = (B + 1) & ~1;
    L.B4 = (B + 3) & ~3;
    L.G = kvh_group(D);
    L.NG = D / L.G;
    size_t kb = 0, sb = 0;
    switch (t) {
    case PAM_KV_F32: kb = (size_t)D * B * 4; break;
    case PAM_KV_F16: kb = (size_t)D * B * 2; break;
    case PAM_KV_BF16: kb = (size_t)D * L.B2 * 2; break;
    case PAM_KV_Q8: kb = (size_t)D * L.B4; sb = (size_t)L.NG * L.B4 * 2; break;
    case PAM_KV_Q4: kb = (size_t)D * L.B4 / 2; sb = (size_t)L.NG * L.B4 * 2; break;
    default: break;
    }
    L.k = 0;
    L.ks = kb;
    L.v = kb + sb;
    L.vs = L.v + kb;
    L.total = L.vs + sb;
    return L;
}

/* Code bias of K for the integer kernels: stored code = value code + bias. */
static inline int kvh_kbias(pam_kv_type t) { return t == PAM_KV_Q8 ? 128 : 8; }
/* Code bias of V (q8 V codes are stored signed; q4 nibbles are c + 8, the
 * kernels subtract it before the dot product). */
static inline int kvh_vbias(pam_kv_type t) { return t == PAM_KV_Q8 ? 0 : 8; }

/* Softmax weights w[t] (t < n; zero beyond, up to B4) as 7-bit codes: w8 =
 * round-to-nearest-even(w * 127 / max w), max <= 127 so AVX2's maddubs
 * (u8 x s8 pairs into s16) cannot saturate. *wsc = max / 127. The SIMD
 * kernels compute the same products and rounding (w <= max, so w * 127 / max
 * rounds to at most 127: they need no clamp). */
static inline void kvh_quant_weights(const float *w, int n, int B4, uint8_t *w8, float *wsc) {
    float mx = 0.0f;
    for (int t = 0; t < n; t++) mx = w[t] > mx ? w[t] : mx;
    const float inv = mx > 0.0f ? 127.0f / mx : 0.0f;
    for (int t = 0; t < n; t++) {
        long c = lrintf(w[t] * inv);
        w8[t] = (uint8_t)(c < 0 ? 0 : c > 127 ? 127 : c);
    }
    for (int t = n; t < B4; t++) w8[t] = 0;
    *wsc = mx / 127.0f;
}

#endif
