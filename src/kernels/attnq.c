#include "kernels/attnq.h"

#include <math.h>
#include <string.h>

#include "core/fp16.h"
#include "kernels/attention.h"
#include "kernels/cpu.h"

/* Code i of a run packed low nibble first (int4) or one a byte. */
static inline int code_at(const uint8_t *codes, int bits, size_t i) {
    if (bits == 8) return codes[i];
    uint8_t b = codes[i >> 1];
    return (i & 1) ? b >> 4 : b & 0x0f;
}

/* K code of channel d, token t: int8 rows hold one channel, int4 rows a
 * channel pair (2i in the low nibbles, 2i+1 in the high ones). */
static inline int k_code(const pam_attnq_kv *kv, int d, int64_t t) {
    if (kv->bits == 8) return kv->k_codes[(size_t)d * kv->k_row_bytes + (size_t)t];
    uint8_t b = kv->k_codes[(size_t)(d >> 1) * kv->k_row_bytes + (size_t)t];
    return (d & 1) ? b >> 4 : b & 0x0f;
}

/* Token t of K decoded into row[head_dim]; kmin, ksc: the K parameters
 * already converted to f32. */
static void k_row(const pam_attnq_kv *kv, int head_dim, const float *kmin, const float *ksc, int64_t t,
                  float *row) {
    for (int d = 0; d < head_dim; d++) row[d] = kmin[d] + ksc[d] * (float)k_code(kv, d, t);
}

/* Token t of V decoded into row[head_dim]. */
static void v_row(const pam_attnq_kv *kv, int head_dim, int64_t t, float *row) {
    for (int d0 = 0; d0 < head_dim; d0 += kv->group) {
        size_t p = (size_t)(d0 / kv->group) * kv->v_par_stride + (size_t)t;
        float mn = pam_f16_to_f32(kv->v_min[p]), sc = pam_f16_to_f32(kv->v_scale[p]);
        for (int d = d0; d < d0 + kv->group; d++)
            row[d] = mn + sc * (float)code_at(kv->v_codes, kv->bits, (size_t)t * (size_t)head_dim + (size_t)d);
    }
}

static void k_params(const pam_attnq_kv *kv, int head_dim, float *kmin, float *ksc) {
    for (int d = 0; d < head_dim; d++) {
        kmin[d] = pam_f16_to_f32(kv->k_min[d]);
        ksc[d] = pam_f16_to_f32(kv->k_scale[d]);
    }
}

size_t pam_attnq_scratch_floats(int n_q, int head_dim, int group, int64_t n) {
    /* SIMD: scores, q*scale per channel, q.min, p*vscale per group, the
     * per-group sums of p*vmin, the V group and K parameters as f32.
     * Reference: scores, the K parameters and one decoded row. */
    size_t nq = (size_t)n_q, hd = (size_t)head_dim, ng = (size_t)(head_dim / group), nn = (size_t)n;
    size_t simd = nq * nn + nq * hd + nq + ng * nq * nn + nq * ng + 2 * ng * nn + 2 * hd;
    size_t ref = nq * nn + 3 * hd;
    return (simd > ref ? simd : ref) + 64;
}

void pam_attnq_decode(const pam_attnq_kv *kv, int head_dim, int64_t n, float *K, float *V) {
    for (int d = 0; d < head_dim; d++) {
        float mn = pam_f16_to_f32(kv->k_min[d]), sc = pam_f16_to_f32(kv->k_scale[d]);
        for (int64_t t = 0; t < n; t++) K[(size_t)t * head_dim + d] = mn + sc * (float)k_code(kv, d, t);
    }
    for (int64_t t = 0; t < n; t++) v_row(kv, head_dim, t, V + (size_t)t * head_dim);
}

/* The f32 reference partial (kernels/attention.c), each token's K and V
 * decoded into a row first. */
void pam_attnq_partial_ref(const float *q, int n_q, int head_dim, float scale, const pam_attnq_kv *kv,
                           int64_t n, float *m, float *l, float *o, float *scratch) {
    float *scores = scratch, *kmin = scores + (size_t)n_q * n, *ksc = kmin + head_dim, *row = ksc + head_dim;
    k_params(kv, head_dim, kmin, ksc);
    for (int g = 0; g < n_q; g++) m[g] = -INFINITY;
    for (int64_t t = 0; t < n; t++) {
        k_row(kv, head_dim, kmin, ksc, t, row);
        for (int g = 0; g < n_q; g++) {
            const float *qg = q + (size_t)g * head_dim;
            float s = 0.0f;
            for (int d = 0; d < head_dim; d++) s += qg[d] * row[d];
            s *= scale;
            scores[(size_t)g * n + t] = s;
            if (s > m[g]) m[g] = s;
        }
    }
    pam_attn_softmax_ref(n_q, n, scores, m, l);
    memset(o, 0, sizeof(float) * (size_t)n_q * (size_t)head_dim);
    for (int64_t t = 0; t < n; t++) {
        v_row(kv, head_dim, t, row);
        for (int g = 0; g < n_q; g++) {
            float p = scores[(size_t)g * n + t], *og = o + (size_t)g * head_dim;
            for (int d = 0; d < head_dim; d++) og[d] += p * row[d];
        }
    }
}

void pam_attnq_partial(const float *q, int n_q, int head_dim, float scale, const pam_attnq_kv *kv, int64_t n,
                       float *m, float *l, float *o, float *scratch) {
#if defined(__x86_64__)
    if (pam_cpu_isa_level() >= PAM_ISA_AVX512 && head_dim % 16 == 0 && kv->group % 16 == 0) {
        pam_attnq_partial_avx512(q, n_q, head_dim, scale, kv, n, m, l, o, scratch);
        return;
    }
    if (pam_cpu_isa_level() >= PAM_ISA_AVX2 && head_dim % 8 == 0 && kv->group % 8 == 0) {
        pam_attnq_partial_avx2(q, n_q, head_dim, scale, kv, n, m, l, o, scratch);
        return;
    }
#endif
    pam_attnq_partial_ref(q, n_q, head_dim, scale, kv, n, m, l, o, scratch);
}
