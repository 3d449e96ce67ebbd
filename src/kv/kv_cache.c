#include "kv/kv_cache.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/fp16.h"
#include "core/status.h"
#include "kernels/attention.h"

struct pam_kv {
    int32_t n_layer, n_head_kv, head_dim, n_ctx;
    pam_dtype type;
    size_t row;   /* elements per position and layer: n_head_kv * head_dim */
    size_t esize; /* bytes per element */
    void *k;      /* [n_layer][n_ctx][row] */
    void *v;
};

pam_status pam_kv_create(int32_t n_layer, int32_t n_head_kv, int32_t head_dim, int32_t n_ctx,
                         pam_dtype type, pam_kv **out) {
    *out = NULL;
    if (n_layer <= 0 || n_head_kv <= 0 || head_dim <= 0 || n_ctx <= 0)
        return PAM_ERR(PAM_ERR_INVALID, "kv cache: bad shape");
    if (type != PAM_DT_F32 && type != PAM_DT_F16)
        return PAM_ERR(PAM_ERR_UNSUPPORTED, "kv cache: type %s (supported: F32, F16)", pam_dtype_name(type));
    pam_kv *kv = calloc(1, sizeof *kv);
    if (!kv) return PAM_ERR(PAM_ERR_NOMEM, "kv cache");
    kv->n_layer = n_layer;
    kv->n_head_kv = n_head_kv;
    kv->head_dim = head_dim;
    kv->n_ctx = n_ctx;
    kv->type = type;
    kv->esize = type == PAM_DT_F32 ? 4 : 2;
    kv->row = (size_t)n_head_kv * (size_t)head_dim;
    size_t bytes = (size_t)n_layer * (size_t)n_ctx * kv->row * kv->esize;
    kv->k = malloc(bytes);
    kv->v = malloc(bytes);
    if (!kv->k || !kv->v) {
        pam_kv_free(kv);
        return PAM_ERR(PAM_ERR_NOMEM, "kv cache: %zu bytes for %d positions", 2 * bytes, n_ctx);
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
pam_dtype pam_kv_dtype(const pam_kv *kv) { return kv->type; }

uint64_t pam_kv_bytes_per_pos(const pam_kv *kv) {
    return 2ull * (uint64_t)kv->n_layer * kv->row * kv->esize;
}

static size_t kv_off(const pam_kv *kv, int32_t layer, int32_t pos) {
    return ((size_t)layer * (size_t)kv->n_ctx + (size_t)pos) * kv->row;
}

void pam_kv_store(pam_kv *kv, int32_t layer, int32_t pos, const float *k, const float *v) {
    size_t off = kv_off(kv, layer, pos);
    if (kv->type == PAM_DT_F32) {
        memcpy((float *)kv->k + off, k, kv->row * sizeof(float));
        memcpy((float *)kv->v + off, v, kv->row * sizeof(float));
        return;
    }
    uint16_t *kd = (uint16_t *)kv->k + off, *vd = (uint16_t *)kv->v + off;
    for (size_t i = 0; i < kv->row; i++) {
        kd[i] = pam_f32_to_f16(k[i]);
        vd[i] = pam_f32_to_f16(v[i]);
    }
}

void pam_kv_fill_random(pam_kv *kv, int32_t n, uint64_t seed) {
    uint64_t s = seed ? seed : 1;
    float kr[4096], vr[4096];
    for (int32_t l = 0; l < kv->n_layer; l++) {
        for (int32_t p = 0; p < n && p < kv->n_ctx; p++) {
            for (size_t i0 = 0; i0 < kv->row; i0 += 4096) {
                size_t cnt = kv->row - i0 < 4096 ? kv->row - i0 : 4096;
                for (size_t i = 0; i < cnt; i++) {
                    /* xorshift64*: cheap, values in [-1, 1) like normalised K/V */
                    s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
                    uint64_t r = s * 0x2545F4914F6CDD1DULL;
                    kr[i] = (float)((int32_t)(r >> 32)) * (1.0f / 2147483648.0f);
                    vr[i] = (float)((int32_t)r) * (1.0f / 2147483648.0f);
                }
                size_t off = kv_off(kv, l, p) + i0;
                if (kv->type == PAM_DT_F32) {
                    memcpy((float *)kv->k + off, kr, cnt * sizeof(float));
                    memcpy((float *)kv->v + off, vr, cnt * sizeof(float));
                } else {
                    for (size_t i = 0; i < cnt; i++) {
                        ((uint16_t *)kv->k)[off + i] = pam_f32_to_f16(kr[i]);
                        ((uint16_t *)kv->v)[off + i] = pam_f32_to_f16(vr[i]);
                    }
                }
            }
        }
    }
}

size_t pam_kv_scratch_floats(const pam_kv *kv, int n_q) {
    /* scores of one chunk for every head + one partial (m, l, o) */
    return (size_t)n_q * PAM_KV_CHUNK + (size_t)n_q * (2 + (size_t)kv->head_dim);
}

void pam_kv_partial(const pam_kv *kv, int32_t layer, int32_t kv_head, const float *q, int n_q,
                    float scale, int64_t chunk, int32_t n_pos, float *m, float *l, float *o,
                    float *scratch) {
    int64_t t0 = chunk * PAM_KV_CHUNK;
    int64_t len = n_pos - t0 < PAM_KV_CHUNK ? n_pos - t0 : PAM_KV_CHUNK;
    size_t off = kv_off(kv, layer, (int32_t)t0) + (size_t)kv_head * (size_t)kv->head_dim;
    if (kv->type == PAM_DT_F32)
        pam_attn_partial_f32(q, n_q, kv->head_dim, scale, (const float *)kv->k + off, (const float *)kv->v + off,
                             kv->row, len, m, l, o, scratch);
    else
        pam_attn_partial_f16(q, n_q, kv->head_dim, scale, (const uint16_t *)kv->k + off,
                             (const uint16_t *)kv->v + off, kv->row, len, m, l, o, scratch);
}

void pam_kv_attend(const pam_kv *kv, int32_t layer, int32_t kv_head, const float *q, int n_q,
                   float scale, int32_t n_pos, float *out, float *scratch) {
    float *m_b = scratch + (size_t)n_q * PAM_KV_CHUNK, *l_b = m_b + n_q, *o_b = l_b + n_q;
    float m_a[64], l_a[64]; /* n_q <= 64: the loader rejects larger groups */
    int64_t n_chunks = pam_kv_n_chunks(n_pos);
    pam_kv_partial(kv, layer, kv_head, q, n_q, scale, 0, n_pos, m_a, l_a, out, scratch);
    for (int64_t c = 1; c < n_chunks; c++) {
        pam_kv_partial(kv, layer, kv_head, q, n_q, scale, c, n_pos, m_b, l_b, o_b, scratch);
        pam_attn_merge(n_q, kv->head_dim, m_a, l_a, out, m_b, l_b, o_b);
    }
    pam_attn_finish(n_q, kv->head_dim, l_a, out);
}
