/* Key summaries and their score bound (see ksum.h). */
#include "kv/ksum.h"

#include <math.h>
#include <stddef.h>

void pam_ksum_reset(float *mn, float *mx, int32_t n) {
    for (int32_t c = 0; c < n; c++) {
        mn[c] = INFINITY;
        mx[c] = -INFINITY;
    }
}

void pam_ksum_add(float *mn, float *mx, const float *k, int32_t n) {
    for (int32_t c = 0; c < n; c++) {
        if (k[c] < mn[c]) mn[c] = k[c];
        if (k[c] > mx[c]) mx[c] = k[c];
    }
}

float pam_ksum_bound(const float *q, const float *mn, const float *mx, int32_t head_dim) {
    double s = 0.0;
    for (int32_t c = 0; c < head_dim; c++) {
        if (!(mn[c] <= mx[c])) return -INFINITY; /* empty summary */
        double a = (double)q[c] * (double)mn[c], b = (double)q[c] * (double)mx[c];
        s += a > b ? a : b;
    }
    /* round up so the float result stays an upper bound of the double sum */
    float f = (float)s;
    if ((double)f < s) f = nextafterf(f, INFINITY);
    return f;
}

float pam_ksum_bound_group(const float *q, int32_t n_q, const float *mn, const float *mx, int32_t head_dim) {
    float best = -INFINITY;
    for (int32_t h = 0; h < n_q; h++) {
        float b = pam_ksum_bound(q + (size_t)h * head_dim, mn, mx, head_dim);
        if (b > best) best = b;
    }
    return best;
}

float pam_ksum_bound_fast(const float *q, const float *mn, const float *mx, int32_t head_dim) {
    float acc[8] = {0};
    int32_t c = 0;
    for (; c + 8 <= head_dim; c += 8)
        for (int j = 0; j < 8; j++) {
            float a = q[c + j] * mn[c + j], b = q[c + j] * mx[c + j];
            acc[j] += a > b ? a : b;
        }
    float s = 0.0f;
    for (; c < head_dim; c++) {
        float a = q[c] * mn[c], b = q[c] * mx[c];
        s += a > b ? a : b;
    }
    for (int j = 0; j < 8; j++) s += acc[j];
    return s;
}
