#include "kernels/attention.h"

#include <math.h>
#include <string.h>

#include "core/fp16.h"
#include "kernels/cpu.h"

/* Element d of a K/V row stored as f32 or f16. */
static inline float kv_elem(const void *row, int d, int f16) {
    return f16 ? pam_f16_to_f32(((const uint16_t *)row)[d]) : ((const float *)row)[d];
}

void pam_attn_softmax_ref(int n_q, int64_t n, float *scores, const float *m, float *l) {
    for (int g = 0; g < n_q; g++) {
        float sum = 0.0f, *sg = scores + (size_t)g * n;
        for (int64_t t = 0; t < n; t++) {
            sg[t] = expf(sg[t] - m[g]);
            sum += sg[t];
        }
        l[g] = sum;
    }
}

/* The readable reference for both storage types and both K layouts: K
 * element (t, d) at K[t * k_tok + d * k_dim] (row-major: k_tok = stride,
 * k_dim = 1; channel-major per block: k_tok = 1, k_dim = B), V row t at
 * V + t * stride. Scores of all n_q heads first (each K row read once for
 * the group), then one pass over V with the softmax weights. Inlined with
 * constant f16, so each public entry point compiles to a loop of its own
 * element type. */
static inline __attribute__((always_inline)) void partial_ref(const float *q, int n_q, int head_dim,
                                                              float scale, const void *K, const void *V,
                                                              size_t esize, int f16, size_t k_tok,
                                                              size_t k_dim, size_t stride, int64_t n,
                                                              float *m, float *l, float *o, float *scores) {
    for (int g = 0; g < n_q; g++) m[g] = -INFINITY;
    for (int64_t t = 0; t < n; t++) {
        const void *k = (const char *)K + (size_t)t * k_tok * esize;
        for (int g = 0; g < n_q; g++) {
            const float *qg = q + (size_t)g * head_dim;
            float s = 0.0f;
            for (int d = 0; d < head_dim; d++) s += qg[d] * kv_elem(k, (int)((size_t)d * k_dim), f16);
            s *= scale;
            scores[(size_t)g * n + t] = s;
            if (s > m[g]) m[g] = s;
        }
    }
    pam_attn_softmax_ref(n_q, n, scores, m, l);
    memset(o, 0, sizeof(float) * (size_t)n_q * (size_t)head_dim);
    for (int64_t t = 0; t < n; t++) {
        const void *v = (const char *)V + (size_t)t * stride * esize;
        for (int g = 0; g < n_q; g++) {
            float p = scores[(size_t)g * n + t], *og = o + (size_t)g * head_dim;
            for (int d = 0; d < head_dim; d++) og[d] += p * kv_elem(v, d, f16);
        }
    }
}

void pam_attn_partial_f32(const float *q, int n_q, int head_dim, float scale, const float *K,
                          const float *V, size_t stride, int64_t n, float *m, float *l, float *o,
                          float *scores) {
    partial_ref(q, n_q, head_dim, scale, K, V, sizeof(float), 0, stride, 1, stride, n, m, l, o, scores);
}

void pam_attn_partial_f16_ref(const float *q, int n_q, int head_dim, float scale, const uint16_t *K,
                              const uint16_t *V, size_t stride, int64_t n, float *m, float *l,
                              float *o, float *scores) {
    partial_ref(q, n_q, head_dim, scale, K, V, sizeof(uint16_t), 1, stride, 1, stride, n, m, l, o, scores);
}

void pam_attn_partial_f16(const float *q, int n_q, int head_dim, float scale, const uint16_t *K,
                          const uint16_t *V, size_t stride, int64_t n, float *m, float *l, float *o,
                          float *scores) {
#if defined(__x86_64__)
    if (pam_cpu_isa_level() >= PAM_ISA_AVX512 && head_dim % 16 == 0) {
        pam_attn_partial_f16_avx512(q, n_q, head_dim, scale, K, V, stride, n, m, l, o, scores);
        return;
    }
    if (pam_cpu_isa_level() >= PAM_ISA_AVX2 && head_dim % 16 == 0) {
        pam_attn_partial_f16_avx2(q, n_q, head_dim, scale, K, V, stride, n, m, l, o, scores);
        return;
    }
#endif
    pam_attn_partial_f16_ref(q, n_q, head_dim, scale, K, V, stride, n, m, l, o, scores);
}

void pam_attn_partial_f16_kt_ref(const float *q, int n_q, int head_dim, float scale, const uint16_t *Kt,
                                 const uint16_t *V, int64_t B, int64_t n, float *m, float *l, float *o,
                                 float *scores) {
    partial_ref(q, n_q, head_dim, scale, Kt, V, sizeof(uint16_t), 1, 1, (size_t)B, (size_t)head_dim, n, m, l, o,
                scores);
}

void pam_attn_partial_f32_kt(const float *q, int n_q, int head_dim, float scale, const float *Kt, const float *V,
                             int64_t B, int64_t n, float *m, float *l, float *o, float *scores) {
    partial_ref(q, n_q, head_dim, scale, Kt, V, sizeof(float), 0, 1, (size_t)B, (size_t)head_dim, n, m, l, o, scores);
}

void pam_attn_partial_f16_kt(const float *q, int n_q, int head_dim, float scale, const uint16_t *Kt,
                             const uint16_t *V, int64_t B, int64_t n, float *m, float *l, float *o,
                             float *scores) {
#if defined(__x86_64__)
    if (head_dim % 16 == 0 && head_dim <= 256) {
        if (pam_cpu_isa_level() >= PAM_ISA_AVX512) {
            pam_attn_partial_f16_kt_avx512(q, n_q, head_dim, scale, Kt, V, B, n, m, l, o, scores);
            return;
        }
        if (pam_cpu_isa_level() >= PAM_ISA_AVX2) {
            pam_attn_partial_f16_kt_avx2(q, n_q, head_dim, scale, Kt, V, B, n, m, l, o, scores);
            return;
        }
    }
#endif
    pam_attn_partial_f16_kt_ref(q, n_q, head_dim, scale, Kt, V, B, n, m, l, o, scores);
}

size_t pam_attn_run_scratch_floats(int n_q, int head_dim, int64_t B) {
    const size_t tile = (size_t)(B > 16 ? B : 16);
    /* the run kernel: a score row of the whole run and two merge factors
     * per (block, head); the fold: one block's scores and one partial */
    return (size_t)n_q * ((size_t)PAM_ATTN_RUN_MAX * (tile + 2) + 2 + (size_t)head_dim);
}

void pam_attn_partial_f16_kt_run_fold(const float *q, int n_q, int head_dim, float scale, const uint16_t *const *Kt,
                                      const uint16_t *const *V, const int32_t *n_tok, int nblk, int64_t B, int init,
                                      float *m, float *l, float *o, float *blk_m, float *blk_l, size_t blk_stride,
                                      float *scratch) {
    float *pm = scratch, *pl = pm + n_q, *po = pl + n_q, *scores = po + (size_t)n_q * head_dim;
    for (int j = 0; j < nblk; j++) {
        const int first = init && j == 0;
        pam_attn_partial_f16_kt(q, n_q, head_dim, scale, Kt[j], V[j], B, n_tok[j], first ? m : pm, first ? l : pl,
                                first ? o : po, scores);
        if (blk_m) {
            memcpy(blk_m + (size_t)j * blk_stride, first ? m : pm, sizeof(float) * (size_t)n_q);
            memcpy(blk_l + (size_t)j * blk_stride, first ? l : pl, sizeof(float) * (size_t)n_q);
        }
        if (!first) pam_attn_merge(n_q, head_dim, m, l, o, pm, pl, po);
    }
}

void pam_attn_partial_f16_kt_run(const float *q, int n_q, int head_dim, float scale, const uint16_t *const *Kt,
                                 const uint16_t *const *V, const int32_t *n_tok, int nblk, int64_t B, int init,
                                 float *m, float *l, float *o, float *blk_m, float *blk_l, size_t blk_stride,
                                 const void *const *pf, size_t pf_bytes, float *scratch) {
#if defined(__x86_64__)
    if (head_dim % 16 == 0 && head_dim <= 256 && B <= 16 && nblk >= 1 && nblk <= PAM_ATTN_RUN_MAX &&
        pam_cpu_isa_level() >= PAM_ISA_AVX512) {
        pam_attn_partial_f16_kt_run_avx512(q, n_q, head_dim, scale, Kt, V, n_tok, nblk, B, init, m, l, o, blk_m, blk_l,
                                           blk_stride, pf, pf_bytes, scratch);
        return;
    }
    if (head_dim % 16 == 0 && head_dim <= 256 && B <= 16 && nblk >= 1 && nblk <= PAM_ATTN_RUN_MAX &&
        pam_cpu_isa_level() >= PAM_ISA_AVX2) {
        pam_attn_partial_f16_kt_run_avx2(q, n_q, head_dim, scale, Kt, V, n_tok, nblk, B, init, m, l, o, blk_m, blk_l,
                                         blk_stride, pf, pf_bytes, scratch);
        return;
    }
#endif
    for (int j = 0; pf && j < nblk; j++)
        for (size_t i = 0; pf[j] && i < pf_bytes; i += 64) __builtin_prefetch((const char *)pf[j] + i, 0, 2);
    pam_attn_partial_f16_kt_run_fold(q, n_q, head_dim, scale, Kt, V, n_tok, nblk, B, init, m, l, o, blk_m, blk_l,
                                     blk_stride, scratch);
}

void pam_attn_merge(int n_q, int head_dim, float *m_a, float *l_a, float *o_a, const float *m_b,
                    const float *l_b, const float *o_b) {
    for (int g = 0; g < n_q; g++) {
        float mx = m_a[g] > m_b[g] ? m_a[g] : m_b[g];
        /* An empty partial has m = -inf; exp(-inf - mx) is 0, never NaN,
         * as long as mx itself is finite. */
        float ca = m_a[g] == -INFINITY ? 0.0f : expf(m_a[g] - mx);
        float cb = m_b[g] == -INFINITY ? 0.0f : expf(m_b[g] - mx);
        float *oa = o_a + (size_t)g * head_dim;
        const float *ob = o_b + (size_t)g * head_dim;
        for (int d = 0; d < head_dim; d++) oa[d] = oa[d] * ca + ob[d] * cb;
        l_a[g] = l_a[g] * ca + l_b[g] * cb;
        m_a[g] = mx;
    }
}

void pam_attn_finish(int n_q, int head_dim, const float *l, float *o) {
    for (int g = 0; g < n_q; g++) {
        float inv = 1.0f / l[g];
        for (int d = 0; d < head_dim; d++) o[(size_t)g * head_dim + d] *= inv;
    }
}
