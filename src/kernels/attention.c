#include "kernels/attention.h"

#include <math.h>
#include <string.h>

void pam_attn_partial_f32(const float *q, int n_q, int head_dim, float scale, const float *K,
                          const float *V, size_t stride, int64_t n, float *m, float *l, float *o,
                          float *scores) {
    for (int g = 0; g < n_q; g++) {
        const float *qg = q + (size_t)g * head_dim;
        float mx = -INFINITY;
        for (int64_t t = 0; t < n; t++) {
            const float *k = K + (size_t)t * stride;
            float s = 0.0f;
            for (int d = 0; d < head_dim; d++) s += qg[d] * k[d];
            s *= scale;
            scores[t] = s;
            if (s > mx) mx = s;
        }
        float sum = 0.0f;
        float *og = o + (size_t)g * head_dim;
        memset(og, 0, sizeof(float) * (size_t)head_dim);
        for (int64_t t = 0; t < n; t++) {
            float p = expf(scores[t] - mx);
            sum += p;
            const float *v = V + (size_t)t * stride;
            for (int d = 0; d < head_dim; d++) og[d] += p * v[d];
        }
        m[g] = mx;
        l[g] = sum;
    }
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
