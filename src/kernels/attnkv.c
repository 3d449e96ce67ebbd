#include "kernels/attnkv.h"

#include <math.h>
#include <string.h>

#include "core/fp16.h"
#include "core/status.h"
#include "kernels/attention.h"
#include "kernels/attnkv_impl.h"
#include "kernels/cpu.h"

static const char *const k_names[PAM_KV_TYPE_COUNT] = {"f32", "f16", "bf16", "q8", "q4"};

pam_status pam_kv_type_parse(const char *s, pam_kv_type *out) {
    if (s) {
        for (int i = 0; i < PAM_KV_TYPE_COUNT; i++)
            if (strcmp(s, k_names[i]) == 0) {
                *out = (pam_kv_type)i;
                return PAM_OK;
            }
        if (strcmp(s, "q8_0") == 0) {
            *out = PAM_KV_Q8;
            return PAM_OK;
        }
        if (strcmp(s, "q4_0") == 0) {
            *out = PAM_KV_Q4;
            return PAM_OK;
        }
    }
    return PAM_ERR(PAM_ERR_INVALID, "KV type '%s': unknown (known: f32, f16, bf16, q8 (q8_0), q4 (q4_0))",
                   s ? s : "");
}

const char *pam_kv_type_name(pam_kv_type t) {
    return (unsigned)t < PAM_KV_TYPE_COUNT ? k_names[t] : "?";
}

pam_status pam_kvh_check(pam_kv_type t, int head_dim, int block_tokens) {
    if ((unsigned)t >= PAM_KV_TYPE_COUNT) return PAM_ERR(PAM_ERR_INVALID, "KV type %d: unknown", (int)t);
    if (head_dim <= 0 || block_tokens <= 0)
        return PAM_ERR(PAM_ERR_INVALID, "KV type %s: bad shape (head dim %d, block %d tokens)", k_names[t],
                       head_dim, block_tokens);
    int need = t == PAM_KV_BF16 ? 2 : t == PAM_KV_Q8 ? 4 : t == PAM_KV_Q4 ? 8 : 1;
    if (t != PAM_KV_F32 && t != PAM_KV_F16 && head_dim > 512)
        return PAM_ERR(PAM_ERR_INVALID, "KV type %s: head dim %d above 512", k_names[t], head_dim);
    if (head_dim % need)
        return PAM_ERR(PAM_ERR_INVALID, "KV type %s needs a head dim divisible by %d (model has %d)", k_names[t],
                       need, head_dim);
    return PAM_OK;
}

size_t pam_kvh_bytes(pam_kv_type t, int head_dim, int block_tokens) {
    return kvh_layout_of(t, head_dim, block_tokens).total;
}

/* Symmetric codes of x[0..G) with |code| <= qmax: returns the scale, stored
 * as f16, and in *inv the factor codes are computed with (from that rounded
 * scale, so decoding gives exactly scale * code). */
static float quant_scale(const float *x, int G, int qmax, float *inv) {
    float amax = 0.0f;
    for (int i = 0; i < G; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    float sc = pam_f16_to_f32(pam_f32_to_f16(amax / (float)qmax));
    *inv = sc > 0.0f ? 1.0f / sc : 0.0f;
    return sc;
}

static int quant_code(float x, float inv, int qmax) {
    long c = lrintf(x * inv);
    return (int)(c < -qmax ? -qmax : c > qmax ? qmax : c);
}

static void set_nibble(uint8_t *b, int hi, int code) {
    *b = hi ? (uint8_t)((*b & 0x0F) | (code << 4)) : (uint8_t)((*b & 0xF0) | code);
}

/* The lossy types encode the f16 rounding of their input, so a block
 * written whole and one kept in an f16 recent window until it fills (the
 * tiers' tails) get the same codes: results do not depend on how a
 * sequence's tokens were written (one prefill chunk or token by token). */
static const float *f16_rounded(const float *x, int D, float *buf) {
    for (int d = 0; d < D; d++) buf[d] = pam_f16_to_f32(pam_f32_to_f16(x[d]));
    return buf;
}

void pam_kvh_write(pam_kv_type t, int D, int B, void *run, int off, int n, const float *k, const float *v,
                   size_t stride) {
    kvh_layout L = kvh_layout_of(t, D, B);
    uint8_t *r = run;
    float kbuf[512], vbuf[512];
    for (int i = 0; i < n; i++) {
        const int p = off + i;
        const float *kr = k + (size_t)i * stride, *vr = v + (size_t)i * stride;
        if (t != PAM_KV_F32 && t != PAM_KV_F16 && D <= 512) {
            kr = f16_rounded(kr, D, kbuf);
            vr = f16_rounded(vr, D, vbuf);
        }
        switch (t) {
        case PAM_KV_F32: {
            float *K = (float *)(r + L.k), *V = (float *)(r + L.v);
            for (int d = 0; d < D; d++) {
                K[(size_t)d * B + p] = kr[d];
                V[(size_t)p * D + d] = vr[d];
            }
            break;
        }
        case PAM_KV_F16: {
            uint16_t *K = (uint16_t *)(r + L.k), *V = (uint16_t *)(r + L.v);
            for (int d = 0; d < D; d++) {
                K[(size_t)d * B + p] = pam_f32_to_f16(kr[d]);
                V[(size_t)p * D + d] = pam_f32_to_f16(vr[d]);
            }
            break;
        }
        case PAM_KV_BF16: {
            uint16_t *K = (uint16_t *)(r + L.k), *V = (uint16_t *)(r + L.v);
            for (int d = 0; d < D; d++) {
                K[((size_t)(d / 2) * L.B2 + p) * 2 + d % 2] = pam_f32_to_bf16(kr[d]);
                V[((size_t)(p / 2) * D + d) * 2 + p % 2] = pam_f32_to_bf16(vr[d]);
            }
            break;
        }
        case PAM_KV_Q8:
        case PAM_KV_Q4: {
            const int q4 = t == PAM_KV_Q4, qmax = q4 ? 7 : 127;
            uint16_t *ks = (uint16_t *)(r + L.ks), *vs = (uint16_t *)(r + L.vs);
            uint8_t *K = r + L.k, *V = r + L.v;
            for (int g = 0; g < L.NG; g++) {
                float inv;
                ks[(size_t)g * L.B4 + p] = pam_f32_to_f16(quant_scale(kr + g * L.G, L.G, qmax, &inv));
                for (int d = g * L.G; d < (g + 1) * L.G; d++) {
                    const int code = quant_code(kr[d], inv, qmax);
                    if (!q4) K[((size_t)(d / 4) * L.B4 + p) * 4 + d % 4] = (uint8_t)(code + 128);
                    else set_nibble(&K[((size_t)(d / 8) * L.B4 + p) * 4 + (d & 3)], (d & 7) >= 4, code + 8);
                }
                vs[(size_t)g * L.B4 + p] = pam_f32_to_f16(quant_scale(vr + g * L.G, L.G, qmax, &inv));
                for (int d = g * L.G; d < (g + 1) * L.G; d++) {
                    const int code = quant_code(vr[d], inv, qmax);
                    if (!q4) V[((size_t)(p / 4) * D + d) * 4 + p % 4] = (uint8_t)(int8_t)code;
                    else
                        set_nibble(&V[(((size_t)(p / 4) * (D / 8) + d / 8) * 4 + (d & 3)) * 4 + p % 4], (d & 7) >= 4,
                                   code + 8);
                }
            }
            break;
        }
        default: break;
        }
    }
}

/* Element (t, d) of K and of V as the kernels see it. */
static inline float kv_get(pam_kv_type t, const kvh_layout *L, int D, int B, const uint8_t *r, int p, int d,
                           int want_v) {
    switch (t) {
    case PAM_KV_F32:
        return want_v ? ((const float *)(r + L->v))[(size_t)p * D + d] : ((const float *)(r + L->k))[(size_t)d * B + p];
    case PAM_KV_F16:
        return pam_f16_to_f32(want_v ? ((const uint16_t *)(r + L->v))[(size_t)p * D + d]
                                     : ((const uint16_t *)(r + L->k))[(size_t)d * B + p]);
    case PAM_KV_BF16:
        return pam_bf16_to_f32(want_v ? ((const uint16_t *)(r + L->v))[((size_t)(p / 2) * D + d) * 2 + p % 2]
                                      : ((const uint16_t *)(r + L->k))[((size_t)(d / 2) * L->B2 + p) * 2 + d % 2]);
    case PAM_KV_Q8:
    case PAM_KV_Q4: {
        const int g = d / L->G;
        const uint16_t *sc = (const uint16_t *)(r + (want_v ? L->vs : L->ks));
        float s = pam_f16_to_f32(sc[(size_t)g * L->B4 + p]);
        int code;
        if (t == PAM_KV_Q8) {
            code = want_v ? (int)(int8_t)r[L->v + ((size_t)(p / 4) * D + d) * 4 + p % 4]
                          : (int)r[L->k + ((size_t)(d / 4) * L->B4 + p) * 4 + d % 4] - 128;
        } else {
            uint8_t b = want_v ? r[L->v + (((size_t)(p / 4) * (D / 8) + d / 8) * 4 + (d & 3)) * 4 + p % 4]
                               : r[L->k + ((size_t)(d / 8) * L->B4 + p) * 4 + (d & 3)];
            code = ((d & 7) >= 4 ? b >> 4 : b & 15) - 8;
        }
        return s * (float)code;
    }
    default: return 0.0f;
    }
}

void pam_kvh_read(pam_kv_type t, int D, int B, const void *run, int n, float *k, float *v, size_t stride) {
    kvh_layout L = kvh_layout_of(t, D, B);
    for (int p = 0; p < n; p++)
        for (int d = 0; d < D; d++) {
            k[(size_t)p * stride + d] = kv_get(t, &L, D, B, run, p, d, 0);
            v[(size_t)p * stride + d] = kv_get(t, &L, D, B, run, p, d, 1);
        }
}

size_t pam_kvh_query_bytes(pam_kv_type t, int n_q, int D) {
    int NG = D / kvh_group(D);
    switch (t) {
    case PAM_KV_BF16: return (size_t)n_q * D * (4 + 2);
    case PAM_KV_Q8:
    case PAM_KV_Q4: return (size_t)n_q * NG * 8 + (((size_t)n_q * D + 3) & ~(size_t)3);
    default: return 0;
    }
}

void pam_kvh_query_init(pam_kvh_query *qr, pam_kv_type t, const float *q, int n_q, int D, float scale, void *buf) {
    memset(qr, 0, sizeof *qr);
    qr->type = t;
    qr->n_q = n_q;
    qr->head_dim = D;
    qr->group = kvh_group(D);
    qr->n_group = D / qr->group;
    qr->scale = scale;
    qr->q = q;
    if (t == PAM_KV_BF16) {
        qr->qbf = buf;
        qr->qb = (uint16_t *)(qr->qbf + (size_t)n_q * D);
        for (size_t i = 0; i < (size_t)n_q * D; i++) {
            qr->qb[i] = pam_f32_to_bf16(q[i] * scale);
            qr->qbf[i] = pam_bf16_to_f32(qr->qb[i]);
        }
    } else if (t == PAM_KV_Q8 || t == PAM_KV_Q4) {
        const int G = qr->group, NG = qr->n_group, bias = kvh_kbias(t);
        qr->qf = buf;
        qr->qcorr = (int32_t *)(qr->qf + (size_t)n_q * NG);
        qr->q8 = (int8_t *)(qr->qcorr + (size_t)n_q * NG);
        for (int h = 0; h < n_q; h++)
            for (int g = 0; g < NG; g++) {
                const float *x = q + (size_t)h * D + (size_t)g * G;
                int8_t *c = qr->q8 + (size_t)h * D + (size_t)g * G;
                float amax = 0.0f;
                for (int i = 0; i < G; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
                const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
                int32_t sum = 0;
                for (int i = 0; i < G; i++) {
                    long v = lrintf(x[i] * inv);
                    c[i] = (int8_t)(v < -127 ? -127 : v > 127 ? 127 : v);
                    sum += c[i];
                }
                qr->qf[h * NG + g] = amax / 127.0f * scale;
                qr->qcorr[h * NG + g] = bias * sum;
            }
    }
}

size_t pam_kvh_scratch_floats(pam_kv_type t, int n_q, int D, int B) {
    (void)t;
    const size_t B4 = (size_t)((B + 3) & ~3), NG = (size_t)(D / kvh_group(D));
    return (size_t)n_q * (2 * B4 + (size_t)D) + (size_t)n_q * NG * (B4 / 4 + 4) + 64;
}

/* ---- scalar variant ---- */

static void partial_q_scalar(const pam_kvh_query *qr, const uint8_t *r, int B, int n, float *m, float *l, float *o,
                             float *scratch) {
    const pam_kv_type t = qr->type;
    const int D = qr->head_dim, nq = qr->n_q;
    const kvh_layout L = kvh_layout_of(t, D, B);
    const int q4 = t == PAM_KV_Q4;
    const uint16_t *ks = (const uint16_t *)(r + L.ks), *vs = (const uint16_t *)(r + L.vs);
    float *scores = scratch, *w = scores + (size_t)nq * n;
    uint8_t *w8 = (uint8_t *)(w + L.B4);
    for (int h = 0; h < nq; h++) m[h] = -INFINITY;
    for (int p = 0; p < n; p++)
        for (int h = 0; h < nq; h++) {
            const int8_t *qc = qr->q8 + (size_t)h * D;
            float s = 0.0f;
            for (int g = 0; g < L.NG; g++) {
                int32_t acc = 0;
                for (int d = g * L.G; d < (g + 1) * L.G; d++) {
                    int c;
                    if (!q4) c = r[L.k + ((size_t)(d / 4) * L.B4 + p) * 4 + d % 4];
                    else {
                        uint8_t b = r[L.k + ((size_t)(d / 8) * L.B4 + p) * 4 + (d & 3)];
                        c = (d & 7) >= 4 ? b >> 4 : b & 15;
                    }
                    acc += c * qc[d];
                }
                s += qr->qf[h * L.NG + g] * pam_f16_to_f32(ks[(size_t)g * L.B4 + p]) *
                     (float)(acc - qr->qcorr[h * L.NG + g]);
            }
            scores[(size_t)h * n + p] = s;
            if (s > m[h]) m[h] = s;
        }
    pam_attn_softmax_ref(nq, n, scores, m, l);
    const int vb = kvh_vbias(t);
    for (int h = 0; h < nq; h++)
        for (int g = 0; g < L.NG; g++) {
            for (int p = 0; p < n; p++) w[p] = scores[(size_t)h * n + p] * pam_f16_to_f32(vs[(size_t)g * L.B4 + p]);
            float wsc;
            kvh_quant_weights(w, n, L.B4, w8, &wsc);
            for (int d = g * L.G; d < (g + 1) * L.G; d++) {
                int32_t acc = 0;
                for (int p = 0; p < n; p++) {
                    int c;
                    if (!q4) c = (int8_t)r[L.v + ((size_t)(p / 4) * D + d) * 4 + p % 4];
                    else {
                        uint8_t b = r[L.v + (((size_t)(p / 4) * (D / 8) + d / 8) * 4 + (d & 3)) * 4 + p % 4];
                        c = ((d & 7) >= 4 ? b >> 4 : b & 15) - vb;
                    }
                    acc += (int32_t)w8[p] * c;
                }
                o[(size_t)h * D + d] = wsc * (float)acc;
            }
        }
}

static void partial_bf16_scalar(const pam_kvh_query *qr, const uint8_t *r, int B, int n, float *m, float *l,
                                float *o, float *scores) {
    const int D = qr->head_dim, nq = qr->n_q;
    const kvh_layout L = kvh_layout_of(PAM_KV_BF16, D, B);
    const uint16_t *K = (const uint16_t *)(r + L.k), *V = (const uint16_t *)(r + L.v);
    for (int h = 0; h < nq; h++) m[h] = -INFINITY;
    for (int p = 0; p < n; p++)
        for (int h = 0; h < nq; h++) {
            const uint16_t *qb = qr->qb + (size_t)h * D;
            float s = 0.0f;
            for (int d = 0; d < D; d++)
                s += pam_bf16_to_f32(qb[d]) * pam_bf16_to_f32(K[((size_t)(d / 2) * L.B2 + p) * 2 + d % 2]);
            scores[(size_t)h * n + p] = s;
            if (s > m[h]) m[h] = s;
        }
    pam_attn_softmax_ref(nq, n, scores, m, l);
    memset(o, 0, sizeof(float) * (size_t)nq * D);
    for (int p = 0; p < n; p++)
        for (int h = 0; h < nq; h++) {
            const float pb = pam_bf16_to_f32(pam_f32_to_bf16(scores[(size_t)h * n + p]));
            for (int d = 0; d < D; d++)
                o[(size_t)h * D + d] += pb * pam_bf16_to_f32(V[((size_t)(p / 2) * D + d) * 2 + p % 2]);
        }
}

void pam_kvh_partial_scalar(const pam_kvh_query *qr, const void *run, int B, int n, float *m, float *l, float *o,
                            float *scratch) {
    const int D = qr->head_dim;
    const kvh_layout L = kvh_layout_of(qr->type, D, B);
    const uint8_t *r = run;
    switch (qr->type) {
    case PAM_KV_F32:
        pam_attn_partial_f32_kt(qr->q, qr->n_q, D, qr->scale, (const float *)(r + L.k), (const float *)(r + L.v), B, n,
                                m, l, o, scratch);
        break;
    case PAM_KV_F16:
        pam_attn_partial_f16_kt_ref(qr->q, qr->n_q, D, qr->scale, (const uint16_t *)(r + L.k),
                                    (const uint16_t *)(r + L.v), B, n, m, l, o, scratch);
        break;
    case PAM_KV_BF16: partial_bf16_scalar(qr, r, B, n, m, l, o, scratch); break;
    default: partial_q_scalar(qr, r, B, n, m, l, o, scratch); break;
    }
}

void pam_kvh_partial(const pam_kvh_query *qr, const void *run, int B, int n, float *m, float *l, float *o,
                     float *scratch) {
    if (qr->type == PAM_KV_F16) {
        const kvh_layout L = kvh_layout_of(PAM_KV_F16, qr->head_dim, B);
        pam_attn_partial_f16_kt(qr->q, qr->n_q, qr->head_dim, qr->scale, (const uint16_t *)((const uint8_t *)run + L.k),
                                (const uint16_t *)((const uint8_t *)run + L.v), B, n, m, l, o, scratch);
        return;
    }
#if defined(__x86_64__)
    const pam_isa isa = pam_cpu_isa_level();
    if (isa >= PAM_ISA_AVX512 && pam_kvh_avx512_supports(qr->type, qr->head_dim)) {
        pam_kvh_partial_avx512(qr, run, B, n, m, l, o, scratch);
        return;
    }
    if (isa >= PAM_ISA_AVX2 && pam_kvh_avx2_supports(qr->type, qr->head_dim)) {
        pam_kvh_partial_avx2(qr, run, B, n, m, l, o, scratch);
        return;
    }
#endif
    pam_kvh_partial_scalar(qr, run, B, n, m, l, o, scratch);
}
