#include "kv/kv_cache.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "kernels/attention.h"

/* Tokens per attention chunk. A fixed constant (not derived from threads)
 * keeps the merge order, and so the rounding, identical everywhere. */
#define PAM_KV_CHUNK 256

struct pam_kv {
    int32_t n_layer, n_head_kv, head_dim, n_ctx;
    size_t row; /* floats per position: n_head_kv * head_dim */
    float *k;   /* [n_layer][n_ctx][row] */
    float *v;
};

pam_status pam_kv_create(int32_t n_layer, int32_t n_head_kv, int32_t head_dim, int32_t n_ctx,
                         pam_kv **out) {
    *out = NULL;
    if (n_layer <= 0 || n_head_kv <= 0 || head_dim <= 0 || n_ctx <= 0)
        return PAM_ERR(PAM_ERR_INVALID, "kv cache: bad shape");
    pam_kv *kv = calloc(1, sizeof *kv);
    if (!kv) return PAM_ERR(PAM_ERR_NOMEM, "kv cache");
    kv->n_layer = n_layer;
    kv->n_head_kv = n_head_kv;
    kv->head_dim = head_dim;
    kv->n_ctx = n_ctx;
    kv->row = (size_t)n_head_kv * (size_t)head_dim;
    size_t n = (size_t)n_layer * (size_t)n_ctx * kv->row;
    kv->k = malloc(n * sizeof(float));
    kv->v = malloc(n * sizeof(float));
    if (!kv->k || !kv->v) {
        pam_kv_free(kv);
        return PAM_ERR(PAM_ERR_NOMEM, "kv cache: %zu bytes for %d positions", 2 * n * sizeof(float), n_ctx);
    }
    *out = kv;
    return PAM_OK;
}

void pam_kv_free(pam_kv *kv) {
    if (!kv) return;
    free(kv->k);
    free(kv->v);
    free(kv);
}

int32_t pam_kv_n_ctx(const pam_kv *kv) { return kv->n_ctx; }

uint64_t pam_kv_bytes(const pam_kv *kv) {
    return 2ull * (uint64_t)kv->n_layer * (uint64_t)kv->n_ctx * kv->row * sizeof(float);
}

static size_t kv_off(const pam_kv *kv, int32_t layer, int32_t pos) {
    return ((size_t)layer * (size_t)kv->n_ctx + (size_t)pos) * kv->row;
}

void pam_kv_store(pam_kv *kv, int32_t layer, int32_t pos, const float *k, const float *v) {
    size_t off = kv_off(kv, layer, pos);
    memcpy(kv->k + off, k, kv->row * sizeof(float));
    memcpy(kv->v + off, v, kv->row * sizeof(float));
}

void pam_kv_fill_random(pam_kv *kv, int32_t n, uint64_t seed) {
    uint64_t s = seed;
    for (int32_t l = 0; l < kv->n_layer; l++) {
        for (int32_t p = 0; p < n && p < kv->n_ctx; p++) {
            size_t off = kv_off(kv, l, p);
            for (size_t i = 0; i < kv->row; i++) {
                /* xorshift64*: cheap, and values in [-1, 1) like normalised K/V */
                s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
                uint64_t r = s * 0x2545F4914F6CDD1DULL;
                kv->k[off + i] = (float)((int32_t)(r >> 32)) * (1.0f / 2147483648.0f);
                kv->v[off + i] = (float)((int32_t)r) * (1.0f / 2147483648.0f);
            }
        }
    }
}

size_t pam_kv_scratch_floats(const pam_kv *kv, int n_q) {
    /* scores of one chunk + one partial (m, l, o) for the chunk being added */
    return PAM_KV_CHUNK + (size_t)n_q * (2 + (size_t)kv->head_dim);
}

void pam_kv_attend(const pam_kv *kv, int32_t layer, int32_t pos, int32_t kv_head, const float *q,
                   int n_q, float scale, float *out, float *scratch) {
    int hd = kv->head_dim;
    size_t base = kv_off(kv, layer, 0) + (size_t)kv_head * (size_t)hd;
    const float *K = kv->k + base, *V = kv->v + base;
    float *scores = scratch;
    float *m_b = scores + PAM_KV_CHUNK, *l_b = m_b + n_q, *o_b = l_b + n_q;
    float m_a[64], l_a[64];
    /* n_q is at most n_head/n_head_kv; models with more than 64 query heads
     * per KV head do not exist, and the loader rejects them. */
    int64_t n = (int64_t)pos + 1;
    for (int64_t t0 = 0; t0 < n; t0 += PAM_KV_CHUNK) {
        int64_t len = n - t0 < PAM_KV_CHUNK ? n - t0 : PAM_KV_CHUNK;
        const float *Kc = K + (size_t)t0 * kv->row, *Vc = V + (size_t)t0 * kv->row;
        if (t0 == 0) {
            pam_attn_partial_f32(q, n_q, hd, scale, Kc, Vc, kv->row, len, m_a, l_a, out, scores);
        } else {
            pam_attn_partial_f32(q, n_q, hd, scale, Kc, Vc, kv->row, len, m_b, l_b, o_b, scores);
            pam_attn_merge(n_q, hd, m_a, l_a, out, m_b, l_b, o_b);
        }
    }
    pam_attn_finish(n_q, hd, l_a, out);
}
