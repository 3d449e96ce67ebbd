/* Llama-family forward pass.
 *
 * Invariants: weight tensors point into the model's GGUF mapping and are
 * never written; everything the forward pass writes lives in the context.
 * Every reduction runs in an order fixed by the data's shape (per-row dot
 * products, per-token norms, attention chunks merged in position order), so
 * the logits of a token do not depend on how many tokens are batched with it
 * or on the thread count (DESIGN.md §2.9). */
#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "kernels/matmul.h"
#include "kernels/quant.h"
#include "kv/tier.h"

/* Tokens per forward chunk: bounds the scratch memory of a long prefill. */
#define PAM_MAX_BATCH 256
/* Tokens per KV block of a context's own KV manager. */
#define PAM_CTX_BLOCK_TOKENS 16

typedef struct pam_weight {
    const void *data;
    pam_dtype type;
    int64_t rows; /* output dim (GGUF ne[1]) */
    int64_t cols; /* input dim (GGUF ne[0]) */
} pam_weight;

typedef struct pam_layer {
    float *attn_norm, *ffn_norm;
    float *bq, *bk, *bv; /* NULL when the model has no q/k/v bias */
    pam_weight wq, wk, wv, wo;
    pam_weight w_gate, w_up, w_down;
} pam_layer;

struct pam_model {
    pam_gguf *gguf;
    pam_tokenizer *tok;
    pam_model_hparams hp;
    int32_t n_rot;
    pam_weight tok_embd, output;
    float *output_norm;
    float *rope_freqs; /* per-pair frequency divisors (Llama-3 scaling), or NULL */
    pam_layer *layers;
    uint64_t weight_bytes;
};

struct pam_ctx {
    const pam_model *m;
    pam_pool *pool;
    pam_kvm *kvm; /* borrowed, or the context's own (owns_kvm) */
    int32_t kv_seq;
    int owns_seq, owns_kvm;
    int32_t n_ctx;
    float *x, *h, *q, *k, *v, *att, *gate, *up; /* [PAM_MAX_BATCH][dim] each */
    pam_ctx *tok_ctx[PAM_MAX_BATCH]; /* pam_forward: every token is this context's */
    int32_t tok_pos[PAM_MAX_BATCH];
    int32_t out_ids[PAM_MAX_BATCH]; /* forward_chunk: the tokens whose hidden states are read */
    double *inv_freq; /* [n_rot/2] */
};

/* ---- loading ------------------------------------------------------------ */

static pam_status get_u32_key(const pam_gguf *g, const char *arch, const char *suffix, int required,
                              int32_t *out) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    uint64_t v;
    pam_status st = pam_gguf_get_u64(g, key, &v);
    if (st == PAM_ERR_NOT_FOUND && !required) return PAM_OK;
    if (st == PAM_ERR_NOT_FOUND) return PAM_ERR(PAM_ERR_FORMAT, "missing metadata key '%s'", key);
    if (st != PAM_OK) return st;
    if (v == 0 || v > (1u << 30)) return PAM_ERR(PAM_ERR_FORMAT, "metadata '%s' = %llu is out of range", key, (unsigned long long)v);
    *out = (int32_t)v;
    return PAM_OK;
}

static pam_status get_f32_key(const pam_gguf *g, const char *arch, const char *suffix, float *out) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    double v;
    pam_status st = pam_gguf_get_f64(g, key, &v);
    if (st == PAM_ERR_NOT_FOUND) return PAM_OK; /* keep the default */
    if (st != PAM_OK) return st;
    if (!isfinite(v)) return PAM_ERR(PAM_ERR_FORMAT, "metadata '%s' is not finite", key);
    *out = (float)v;
    return PAM_OK;
}

static pam_status read_hparams(const pam_gguf *g, pam_model_hparams *hp) {
    memset(hp, 0, sizeof *hp);
    pam_gguf_str arch;
    pam_status st = pam_gguf_get_str(g, "general.architecture", &arch);
    if (st == PAM_ERR_NOT_FOUND) return PAM_ERR(PAM_ERR_FORMAT, "missing metadata key 'general.architecture'");
    if (st != PAM_OK) return st;
    if (arch.len >= sizeof hp->arch) return PAM_ERR(PAM_ERR_UNSUPPORTED, "unsupported architecture (name too long)");
    memcpy(hp->arch, arch.ptr, arch.len);
    hp->arch[arch.len] = '\0';
    if (strcmp(hp->arch, "llama") && strcmp(hp->arch, "mistral") && strcmp(hp->arch, "qwen2"))
        return PAM_ERR(PAM_ERR_UNSUPPORTED, "unsupported architecture '%s' (supported: llama, mistral, qwen2)", hp->arch);
    const char *a = hp->arch;
    PAM_TRY(get_u32_key(g, a, "embedding_length", 1, &hp->n_embd));
    PAM_TRY(get_u32_key(g, a, "block_count", 1, &hp->n_layer));
    PAM_TRY(get_u32_key(g, a, "feed_forward_length", 1, &hp->n_ff));
    PAM_TRY(get_u32_key(g, a, "attention.head_count", 1, &hp->n_head));
    hp->n_head_kv = hp->n_head;
    PAM_TRY(get_u32_key(g, a, "attention.head_count_kv", 0, &hp->n_head_kv));
    hp->n_ctx_train = 2048;
    PAM_TRY(get_u32_key(g, a, "context_length", 0, &hp->n_ctx_train));
    hp->head_dim = hp->n_embd % hp->n_head == 0 ? hp->n_embd / hp->n_head : 0;
    PAM_TRY(get_u32_key(g, a, "attention.key_length", 0, &hp->head_dim));
    if (hp->head_dim == 0)
        return PAM_ERR(PAM_ERR_FORMAT, "embedding length %d is not a multiple of head count %d and no key_length is given",
                       hp->n_embd, hp->n_head);
    int32_t vlen = hp->head_dim;
    PAM_TRY(get_u32_key(g, a, "attention.value_length", 0, &vlen));
    if (vlen != hp->head_dim)
        return PAM_ERR(PAM_ERR_UNSUPPORTED, "key length %d != value length %d", hp->head_dim, vlen);
    if (hp->head_dim % 2 != 0) return PAM_ERR(PAM_ERR_FORMAT, "head dimension %d is odd", hp->head_dim);
    if (hp->n_head % hp->n_head_kv != 0)
        return PAM_ERR(PAM_ERR_FORMAT, "head count %d is not a multiple of KV head count %d", hp->n_head, hp->n_head_kv);
    if (hp->n_head / hp->n_head_kv > 64)
        return PAM_ERR(PAM_ERR_UNSUPPORTED, "more than 64 query heads per KV head");
    hp->rms_eps = 1e-5f;
    PAM_TRY(get_f32_key(g, a, "attention.layer_norm_rms_epsilon", &hp->rms_eps));
    hp->rope_theta = 10000.0f;
    PAM_TRY(get_f32_key(g, a, "rope.freq_base", &hp->rope_theta));
    hp->rope_neox = !strcmp(a, "qwen2");
    hp->n_vocab = 0;
    PAM_TRY(get_u32_key(g, a, "vocab_size", 0, &hp->n_vocab));
    return PAM_OK;
}

/* A 2-D weight with GGUF shape [cols, rows]. */
static pam_status bind_weight(const pam_model *m, const char *name, int64_t cols, int64_t rows,
                              int optional, pam_weight *w) {
    const pam_gguf_tensor *t = pam_gguf_find_tensor(m->gguf, name);
    memset(w, 0, sizeof *w);
    if (!t) {
        if (optional) return PAM_OK;
        return PAM_ERR(PAM_ERR_FORMAT, "missing tensor '%s'", name);
    }
    if (t->n_dims > 2 || t->ne[0] != cols || t->ne[1] != rows)
        return PAM_ERR(PAM_ERR_FORMAT, "tensor '%s' has shape [%lld, %lld], expected [%lld, %lld]", name,
                       (long long)t->ne[0], (long long)t->ne[1], (long long)cols, (long long)rows);
    const pam_dtype_info *ti = pam_dtype_get(t->type);
    if (!ti || !ti->supported)
        return PAM_ERR(PAM_ERR_UNSUPPORTED, "tensor '%s' has type %s, which PAM cannot compute with (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K)",
                       name, pam_dtype_name(t->type));
    w->data = t->data;
    w->type = (pam_dtype)t->type;
    w->rows = rows;
    w->cols = cols;
    return PAM_OK;
}

/* A 1-D tensor of n floats, converted to an owned F32 copy. */
static pam_status load_vector(const pam_model *m, const char *name, int64_t n, int optional, float **out) {
    *out = NULL;
    pam_weight w;
    PAM_TRY(bind_weight(m, name, n, 1, optional, &w));
    if (!w.data) return PAM_OK;
    if (w.type != PAM_DT_F32 && w.type != PAM_DT_F16 && w.type != PAM_DT_BF16)
        return PAM_ERR(PAM_ERR_UNSUPPORTED, "tensor '%s' must be F32, F16 or BF16", name);
    float *v = malloc((size_t)n * sizeof(float));
    if (!v) return PAM_ERR(PAM_ERR_NOMEM, "tensor '%s'", name);
    pam_dequantize_row(w.type, w.data, v, n);
    *out = v;
    return PAM_OK;
}

static uint64_t weight_bytes(const pam_weight *w) {
    size_t row = 0;
    if (!w->data || pam_dtype_row_bytes(w->type, w->cols, &row) != PAM_OK) return 0;
    return (uint64_t)row * (uint64_t)w->rows;
}

static pam_status bind_layers(pam_model *m) {
    const pam_model_hparams *hp = &m->hp;
    int64_t qd = (int64_t)hp->n_head * hp->head_dim, kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    char name[96];
#define NAME(fmt) (snprintf(name, sizeof name, "blk.%d." fmt, i), name)
    for (int i = 0; i < hp->n_layer; i++) {
        pam_layer *L = &m->layers[i];
        PAM_TRY(load_vector(m, NAME("attn_norm.weight"), hp->n_embd, 0, &L->attn_norm));
        PAM_TRY(load_vector(m, NAME("ffn_norm.weight"), hp->n_embd, 0, &L->ffn_norm));
        PAM_TRY(bind_weight(m, NAME("attn_q.weight"), hp->n_embd, qd, 0, &L->wq));
        PAM_TRY(bind_weight(m, NAME("attn_k.weight"), hp->n_embd, kvd, 0, &L->wk));
        PAM_TRY(bind_weight(m, NAME("attn_v.weight"), hp->n_embd, kvd, 0, &L->wv));
        PAM_TRY(bind_weight(m, NAME("attn_output.weight"), qd, hp->n_embd, 0, &L->wo));
        PAM_TRY(bind_weight(m, NAME("ffn_gate.weight"), hp->n_embd, hp->n_ff, 0, &L->w_gate));
        PAM_TRY(bind_weight(m, NAME("ffn_up.weight"), hp->n_embd, hp->n_ff, 0, &L->w_up));
        PAM_TRY(bind_weight(m, NAME("ffn_down.weight"), hp->n_ff, hp->n_embd, 0, &L->w_down));
        PAM_TRY(load_vector(m, NAME("attn_q.bias"), qd, 1, &L->bq));
        PAM_TRY(load_vector(m, NAME("attn_k.bias"), kvd, 1, &L->bk));
        PAM_TRY(load_vector(m, NAME("attn_v.bias"), kvd, 1, &L->bv));
        const pam_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t j = 0; j < sizeof ws / sizeof ws[0]; j++) m->weight_bytes += weight_bytes(ws[j]);
    }
#undef NAME
    return PAM_OK;
}

static pam_status model_bind(pam_model *m) {
    pam_model_hparams *hp = &m->hp;
    PAM_TRY(read_hparams(m->gguf, hp));
    PAM_TRY(pam_tokenizer_from_gguf(m->gguf, &m->tok));
    const pam_gguf_tensor *te = pam_gguf_find_tensor(m->gguf, "token_embd.weight");
    if (!te) return PAM_ERR(PAM_ERR_FORMAT, "missing tensor 'token_embd.weight'");
    if (hp->n_vocab == 0) hp->n_vocab = (int32_t)(te->ne[1] > 0 && te->ne[1] < (1 << 30) ? te->ne[1] : 0);
    if (hp->n_vocab <= 0) return PAM_ERR(PAM_ERR_FORMAT, "cannot determine the vocabulary size");
    if (pam_tokenizer_n_vocab(m->tok) > hp->n_vocab)
        return PAM_ERR(PAM_ERR_FORMAT, "tokenizer has %d tokens but the model only %d", pam_tokenizer_n_vocab(m->tok), hp->n_vocab);
    PAM_TRY(bind_weight(m, "token_embd.weight", hp->n_embd, hp->n_vocab, 0, &m->tok_embd));
    PAM_TRY(bind_weight(m, "output.weight", hp->n_embd, hp->n_vocab, 1, &m->output));
    if (!m->output.data) m->output = m->tok_embd; /* tied embeddings */
    m->weight_bytes += weight_bytes(&m->output);
    PAM_TRY(load_vector(m, "output_norm.weight", hp->n_embd, 0, &m->output_norm));

    m->n_rot = hp->head_dim;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.dimension_count", hp->arch);
    uint64_t nrot;
    if (pam_gguf_get_u64(m->gguf, key, &nrot) == PAM_OK) {
        if (nrot == 0 || nrot > (uint64_t)hp->head_dim || nrot % 2)
            return PAM_ERR(PAM_ERR_FORMAT, "'%s' = %llu is invalid for head dimension %d", key, (unsigned long long)nrot, hp->head_dim);
        m->n_rot = (int32_t)nrot;
    }
    PAM_TRY(load_vector(m, "rope_freqs.weight", m->n_rot / 2, 1, &m->rope_freqs));
    hp->rope_llama3 = m->rope_freqs != NULL;

    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) return PAM_ERR(PAM_ERR_NOMEM, "layers");
    return bind_layers(m);
}

pam_status pam_model_load(const char *path, pam_model **out) {
    *out = NULL;
    pam_model *m = calloc(1, sizeof *m);
    if (!m) return PAM_ERR(PAM_ERR_NOMEM, "model");
    pam_status st = pam_gguf_open(path, &m->gguf);
    if (st == PAM_OK) st = model_bind(m);
    if (st != PAM_OK) {
        pam_model_free(m);
        return st;
    }
    *out = m;
    return PAM_OK;
}

void pam_model_free(pam_model *m) {
    if (!m) return;
    if (m->layers) {
        for (int i = 0; i < m->hp.n_layer; i++) {
            pam_layer *L = &m->layers[i];
            free(L->attn_norm);
            free(L->ffn_norm);
            free(L->bq);
            free(L->bk);
            free(L->bv);
        }
        free(m->layers);
    }
    free(m->output_norm);
    free(m->rope_freqs);
    pam_tokenizer_free(m->tok);
    pam_gguf_close(m->gguf);
    free(m);
}

const pam_model_hparams *pam_model_get_hparams(const pam_model *m) { return &m->hp; }
const pam_tokenizer *pam_model_tokenizer(const pam_model *m) { return m->tok; }
const pam_gguf *pam_model_gguf(const pam_model *m) { return m->gguf; }
uint64_t pam_model_weight_bytes(const pam_model *m) { return m->weight_bytes; }

/* ---- context ------------------------------------------------------------ */

void pam_ctx_params_default(pam_ctx_params *p) {
    p->n_ctx = 0;
    p->kv_type = PAM_KV_F16;
    p->kv_block = 0;
    p->kvm = NULL;
    p->kv_seq = -1;
}

pam_status pam_ctx_create(const pam_model *m, int32_t n_ctx, pam_pool *pool, pam_ctx **out) {
    pam_ctx_params p;
    pam_ctx_params_default(&p);
    p.n_ctx = n_ctx;
    p.kv_type = PAM_KV_F32;
    return pam_ctx_create_ex(m, &p, pool, out);
}

/* A KV manager of one dram tier holding exactly n_ctx positions of every
 * layer: what a context without a borrowed manager keeps its KV in. */
static pam_status own_kvm_create(const pam_model_hparams *hp, const pam_ctx_params *p, int32_t n_ctx, pam_pool *pool,
                                 pam_kvm **out) {
    int32_t bt = p->kv_block > 0 ? p->kv_block : PAM_CTX_BLOCK_TOKENS;
    pam_kv_shape shape = {hp->n_layer, hp->n_head_kv, hp->head_dim, bt};
    if (p->kv_type < 0 || p->kv_type >= PAM_KV_TYPE_COUNT)
        return PAM_ERR(PAM_ERR_INVALID, "context: unknown KV type %d", (int)p->kv_type);
    PAM_TRY(pam_kvh_check(p->kv_type, hp->head_dim, bt));
    uint64_t blocks = (uint64_t)hp->n_layer * (uint64_t)(((int64_t)n_ctx + bt - 1) / bt);
    uint64_t bytes = blocks * (uint64_t)hp->n_head_kv * (uint64_t)pam_kvh_bytes(p->kv_type, hp->head_dim, bt);
    pam_tier *t = NULL;
    PAM_TRY(pam_tier_dram_open_type(&shape, p->kv_type, bytes, &t));
    pam_kvm_config kc = {.shape = shape, .tiers = &t, .n_tiers = 1, .policy = PAM_KV_POLICY_SINGLE};
    pam_status st = pam_kvm_create(&kc, pool, out);
    if (st != PAM_OK) pam_tier_close(t);
    return st;
}

pam_status pam_ctx_create_ex(const pam_model *m, const pam_ctx_params *p, pam_pool *pool, pam_ctx **out) {
    *out = NULL;
    const pam_model_hparams *hp = &m->hp;
    int32_t n_ctx = p->n_ctx > 0 ? p->n_ctx : hp->n_ctx_train;
    pam_ctx *c = calloc(1, sizeof *c);
    if (!c) return PAM_ERR(PAM_ERR_NOMEM, "context");
    c->m = m;
    c->pool = pool;
    c->n_ctx = n_ctx;
    c->kv_seq = -1;
    pam_status st;
    if (p->kvm) {
        const pam_kv_shape *ks = pam_kvm_shape(p->kvm);
        if (ks->n_layer != hp->n_layer || ks->n_head_kv != hp->n_head_kv || ks->head_dim != hp->head_dim) {
            free(c);
            return PAM_ERR(PAM_ERR_INVALID, "KV manager shape (%d layers, %d KV heads, head dim %d) does not match the model (%d, %d, %d)",
                           ks->n_layer, ks->n_head_kv, ks->head_dim, hp->n_layer, hp->n_head_kv, hp->head_dim);
        }
        c->kvm = p->kvm;
        c->kv_seq = p->kv_seq;
    } else {
        st = own_kvm_create(hp, p, n_ctx, pool, &c->kvm);
        if (st != PAM_OK) {
            free(c);
            return st;
        }
        c->owns_kvm = 1;
    }
    if (c->kv_seq < 0) {
        st = pam_kvm_seq_create(c->kvm, &c->kv_seq);
        if (st != PAM_OK) {
            pam_ctx_free(c);
            return st;
        }
        c->owns_seq = 1;
    }
    size_t B = PAM_MAX_BATCH;
    size_t qd = (size_t)hp->n_head * hp->head_dim, kvd = (size_t)hp->n_head_kv * hp->head_dim;
    size_t wide = (size_t)hp->n_embd > qd ? (size_t)hp->n_embd : qd;
    c->x = malloc(B * (size_t)hp->n_embd * sizeof(float));
    c->h = malloc(B * wide * sizeof(float));
    c->q = malloc(B * qd * sizeof(float));
    c->k = malloc(B * kvd * sizeof(float));
    c->v = malloc(B * kvd * sizeof(float));
    c->att = malloc(B * qd * sizeof(float));
    c->gate = malloc(B * (size_t)hp->n_ff * sizeof(float));
    c->up = malloc(B * (size_t)hp->n_ff * sizeof(float));
    c->inv_freq = malloc((size_t)(m->n_rot / 2) * sizeof(double));
    if (!c->x || !c->h || !c->q || !c->k || !c->v || !c->att || !c->gate || !c->up || !c->inv_freq) {
        pam_ctx_free(c);
        return PAM_ERR(PAM_ERR_NOMEM, "context buffers");
    }
    for (int i = 0; i < m->n_rot / 2; i++) {
        double f = pow((double)hp->rope_theta, -2.0 * i / (double)m->n_rot);
        if (m->rope_freqs) f /= (double)m->rope_freqs[i];
        c->inv_freq[i] = f;
    }
    *out = c;
    return PAM_OK;
}

void pam_ctx_free(pam_ctx *c) {
    if (!c) return;
    if (c->owns_seq) pam_kvm_seq_free(c->kvm, c->kv_seq);
    if (c->owns_kvm) pam_kvm_destroy(c->kvm);
    free(c->x);
    free(c->h);
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->att);
    free(c->gate);
    free(c->up);
    free(c->inv_freq);
    free(c);
}

int32_t pam_ctx_n_ctx(const pam_ctx *c) { return c->n_ctx; }

pam_status pam_ctx_fill_synthetic(pam_ctx *c, int32_t n, uint64_t seed) {
    if (n < 0 || n > c->n_ctx) return PAM_ERR(PAM_ERR_RANGE, "synthetic KV of %d positions exceeds the context of %d", n, c->n_ctx);
    return pam_kvm_fill_synthetic(c->kvm, c->kv_seq, n, seed ? seed : 1);
}

uint64_t pam_ctx_kv_bytes_at(const pam_ctx *c, int32_t pos) {
    /* Each block is read where it lives, in that tier's encoding; blocks not
     * stored yet are counted as the fastest tier's. */
    pam_kvm *kvm = c->kvm;
    int32_t bt = pam_kvm_shape(kvm)->block_tokens;
    int64_t n_pos = (int64_t)pos + 1;
    uint64_t bytes = 0;
    for (int32_t l = 0; l < c->m->hp.n_layer; l++) {
        for (int64_t b = 0; b * bt < n_pos; b++) {
            int t = pam_kvm_block_tier(kvm, c->kv_seq, l, (int32_t)b);
            const pam_tier *tier = pam_kvm_tier(kvm, t >= 0 ? t : 0);
            int64_t n = n_pos - b * bt < bt ? n_pos - b * bt : bt;
            bytes += tier->block_bytes * (uint64_t)n / (uint64_t)bt;
        }
    }
    return bytes;
}

pam_kvm *pam_ctx_kvm(const pam_ctx *c) { return c->kvm; }
int32_t pam_ctx_kv_seq(const pam_ctx *c) { return c->kv_seq; }

/* ---- forward ------------------------------------------------------------ */

static void rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float scale = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

/* Rotates n_heads heads of head_dim floats at position pos. "Normal" RoPE
 * pairs (2i, 2i+1) (llama.cpp's LLAMA_ROPE_TYPE_NORM, llama2.c); NeoX pairs
 * (i, i + n_rot/2) (qwen2). */
static void rope(float *x, int n_heads, int head_dim, int n_rot, int neox, int32_t pos, const double *inv_freq) {
    int half = n_rot / 2;
    for (int i = 0; i < half; i++) {
        double ang = (double)pos * inv_freq[i];
        float cs = (float)cos(ang), sn = (float)sin(ang);
        for (int h = 0; h < n_heads; h++) {
            float *xh = x + (size_t)h * head_dim;
            int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
            float x0 = xh[a], x1 = xh[b];
            xh[a] = x0 * cs - x1 * sn;
            xh[b] = x0 * sn + x1 * cs;
        }
    }
}

/* One PAMattention call per token (each runs its tier pieces on the pool),
 * token i over positions 0..pos[i] of its own sequence. */
static pam_status run_attention(pam_ctx *c, pam_ctx *const *tctx, const int32_t *pos, int32_t layer, int32_t n) {
    const pam_model_hparams *hp = &c->m->hp;
    size_t qd = (size_t)hp->n_head * hp->head_dim;
    float scale = 1.0f / sqrtf((float)hp->head_dim);
    for (int32_t i = 0; i < n; i++)
        PAM_TRY(pam_kvm_attend(tctx[i]->kvm, tctx[i]->kv_seq, layer, pos[i] + 1, c->q + (size_t)i * qd, hp->n_head,
                               scale, c->att + (size_t)i * qd));
    return PAM_OK;
}

static void add_bias(float *y, const float *b, int n_tok, int dim) {
    if (!b) return;
    for (int i = 0; i < n_tok; i++)
        for (int d = 0; d < dim; d++) y[(size_t)i * dim + d] += b[d];
}

/* Runs n tokens through the layers using c's scratch; token i belongs to
 * the sequence of tctx[i] (its KV) at position pos[i]. Only the n_out
 * tokens out[0..n_out) (ascending; out NULL: all n) have their hidden
 * states read afterwards (for logits), so after the last layer's attention
 * the others stop: their keys and values are stored and their attention
 * runs as before (the KV cache and its bookkeeping see every token), but
 * the output projection and feed-forward of that layer run over the kept
 * rows only, which x then holds compacted. Every row's arithmetic is its
 * own, so the kept rows are bit-identical to a full pass. */
static pam_status forward_chunk(pam_ctx *c, pam_ctx *const *tctx, const int32_t *tokens, const int32_t *pos,
                                int32_t n, const int32_t *out, int32_t n_out) {
    const pam_model *m = c->m;
    const pam_model_hparams *hp = &m->hp;
    int dim = hp->n_embd, qd = hp->n_head * hp->head_dim, kvd = hp->n_head_kv * hp->head_dim;
    pam_pool *pool = c->pool;

    for (int i = 0; i < n; i++) {
        size_t row;
        pam_dtype_row_bytes(m->tok_embd.type, dim, &row);
        pam_dequantize_row(m->tok_embd.type, (const char *)m->tok_embd.data + row * (size_t)tokens[i],
                           c->x + (size_t)i * dim, dim);
    }
    for (int l = 0; l < hp->n_layer; l++) {
        const pam_layer *L = &m->layers[l];
        for (int i = 0; i < n; i++) rmsnorm(c->h + (size_t)i * dim, c->x + (size_t)i * dim, L->attn_norm, dim, hp->rms_eps);
        pam_mm qkv[3] = {{L->wq.type, L->wq.data, qd, c->q},
                         {L->wk.type, L->wk.data, kvd, c->k},
                         {L->wv.type, L->wv.data, kvd, c->v}};
        pam_matmul_multi(pool, qkv, 3, dim, c->h, n);
        add_bias(c->q, L->bq, n, qd);
        add_bias(c->k, L->bk, n, kvd);
        add_bias(c->v, L->bv, n, kvd);
        for (int i = 0; i < n; i++) {
            rope(c->q + (size_t)i * qd, hp->n_head, hp->head_dim, m->n_rot, hp->rope_neox, pos[i], c->inv_freq);
            rope(c->k + (size_t)i * kvd, hp->n_head_kv, hp->head_dim, m->n_rot, hp->rope_neox, pos[i], c->inv_freq);
            PAM_TRY(pam_kvm_store(tctx[i]->kvm, tctx[i]->kv_seq, l, pos[i], c->k + (size_t)i * kvd,
                                  c->v + (size_t)i * kvd));
        }
        PAM_TRY(run_attention(c, tctx, pos, l, n));
        if (l == hp->n_layer - 1 && out) { /* the rest of the pass only for the kept tokens */
            for (int32_t k = 0; k < n_out; k++)
                if (out[k] != k) {
                    memcpy(c->att + (size_t)k * qd, c->att + (size_t)out[k] * qd, sizeof(float) * (size_t)qd);
                    memcpy(c->x + (size_t)k * dim, c->x + (size_t)out[k] * dim, sizeof(float) * (size_t)dim);
                }
            n = n_out;
            if (n == 0) break;
        }
        pam_matmul(pool, L->wo.type, L->wo.data, dim, qd, c->att, n, c->h);
        for (size_t i = 0; i < (size_t)n * dim; i++) c->x[i] += c->h[i];

        for (int i = 0; i < n; i++) rmsnorm(c->h + (size_t)i * dim, c->x + (size_t)i * dim, L->ffn_norm, dim, hp->rms_eps);
        pam_mm gate_up[2] = {{L->w_gate.type, L->w_gate.data, hp->n_ff, c->gate},
                             {L->w_up.type, L->w_up.data, hp->n_ff, c->up}};
        pam_matmul_multi(pool, gate_up, 2, dim, c->h, n);
        for (size_t i = 0; i < (size_t)n * hp->n_ff; i++) {
            float g = c->gate[i];
            c->gate[i] = g / (1.0f + expf(-g)) * c->up[i];
        }
        pam_matmul(pool, L->w_down.type, L->w_down.data, dim, hp->n_ff, c->gate, n, c->h);
        for (size_t i = 0; i < (size_t)n * dim; i++) c->x[i] += c->h[i];
    }
    return PAM_OK;
}

/* Final norm and output projection of the rows `first`.. of the last chunk. */
static void forward_logits(pam_ctx *c, int32_t first, int32_t nb, float *dst) {
    const pam_model_hparams *hp = &c->m->hp;
    int dim = hp->n_embd;
    for (int32_t i = first; i < nb; i++)
        rmsnorm(c->h + (size_t)(i - first) * dim, c->x + (size_t)i * dim, c->m->output_norm, dim, hp->rms_eps);
    pam_matmul(c->pool, c->m->output.type, c->m->output.data, hp->n_vocab, dim, c->h, nb - first, dst);
}

static pam_status check_tokens(const pam_model_hparams *hp, const int32_t *tokens, int32_t n) {
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= hp->n_vocab)
            return PAM_ERR(PAM_ERR_RANGE, "token id %d at index %d is outside the vocabulary [0, %d)", tokens[i], i, hp->n_vocab);
    return PAM_OK;
}

pam_status pam_forward(pam_ctx *c, const int32_t *tokens, int32_t n, int32_t pos, float *logits,
                       int all_logits) {
    const pam_model_hparams *hp = &c->m->hp;
    if (n <= 0) return PAM_ERR(PAM_ERR_INVALID, "forward: no tokens");
    if (pos < 0 || (int64_t)pos + n > c->n_ctx)
        return PAM_ERR(PAM_ERR_RANGE, "context overflow: positions %d..%d do not fit a context of %d",
                       pos, pos + n - 1, c->n_ctx);
    PAM_TRY(check_tokens(hp, tokens, n));
    /* Admission: every block the pass will need, or nothing changes. */
    int32_t len = pam_kvm_seq_len(c->kvm, c->kv_seq);
    if (pos > len)
        return PAM_ERR(PAM_ERR_RANGE, "forward at position %d, but the KV cache holds only %d positions", pos, len);
    if (pos + n > len) PAM_TRY(pam_kvm_reserve(c->kvm, c->kv_seq, pos + n - len));
    for (int32_t done = 0; done < n; done += PAM_MAX_BATCH) {
        int32_t nb = n - done < PAM_MAX_BATCH ? n - done : PAM_MAX_BATCH;
        for (int32_t i = 0; i < nb; i++) {
            c->tok_ctx[i] = c;
            c->tok_pos[i] = pos + done + i;
        }
        int last_chunk = done + nb == n;
        int32_t n_out = !logits ? 0 : all_logits ? nb : last_chunk ? 1 : 0;
        c->out_ids[0] = nb - 1; /* the only token ever kept when not all are */
        PAM_TRY(forward_chunk(c, c->tok_ctx, tokens + done, c->tok_pos, nb, n_out == nb ? NULL : c->out_ids, n_out));
        if (n_out == 0) continue;
        forward_logits(c, 0, n_out, all_logits ? logits + (size_t)done * hp->n_vocab : logits);
    }
    return PAM_OK;
}

pam_status pam_forward_batch(pam_ctx *const *ctxs, const int32_t *tokens, const int32_t *pos, int32_t n,
                             float *logits) {
    return pam_forward_batch_ex(ctxs, tokens, pos, n, NULL, logits);
}

pam_status pam_forward_batch_ex(pam_ctx *const *ctxs, const int32_t *tokens, const int32_t *pos, int32_t n,
                                const uint8_t *want, float *logits) {
    if (n <= 0) return PAM_ERR(PAM_ERR_INVALID, "forward: no tokens");
    pam_ctx *c = ctxs[0];
    const pam_model_hparams *hp = &c->m->hp;
    for (int32_t i = 0; i < n; i++) {
        if (ctxs[i]->m != c->m) return PAM_ERR(PAM_ERR_INVALID, "forward batch: contexts of different models");
        if (pos[i] < 0 || pos[i] >= ctxs[i]->n_ctx)
            return PAM_ERR(PAM_ERR_RANGE, "context overflow: position %d does not fit a context of %d", pos[i],
                           ctxs[i]->n_ctx);
    }
    PAM_TRY(check_tokens(hp, tokens, n));
    for (int32_t i = 0; i < n; i++) {
        /* Admission per sequence, at its first token in the batch: room up to
         * its highest position here, or nothing changes. */
        int first = 1;
        int32_t top = pos[i];
        for (int32_t j = 0; j < n; j++) {
            if (ctxs[j] != ctxs[i]) continue;
            if (j < i) first = 0;
            if (pos[j] > top) top = pos[j];
        }
        if (!first) continue;
        int32_t len = pam_kvm_seq_len(ctxs[i]->kvm, ctxs[i]->kv_seq);
        if (pos[i] > len)
            return PAM_ERR(PAM_ERR_RANGE, "forward at position %d, but the KV cache holds only %d positions", pos[i], len);
        if (top + 1 > len) PAM_TRY(pam_kvm_reserve(ctxs[i]->kvm, ctxs[i]->kv_seq, top + 1 - len));
    }
    for (int32_t done = 0; done < n; done += PAM_MAX_BATCH) {
        int32_t nb = n - done < PAM_MAX_BATCH ? n - done : PAM_MAX_BATCH;
        /* Only the wanted rows: prefill tokens whose logits nobody reads
         * skip the last layer's feed-forward and the output matrix. */
        int32_t k = 0;
        if (logits)
            for (int32_t i = 0; i < nb; i++)
                if (!want || want[done + i]) c->out_ids[k++] = i;
        PAM_TRY(forward_chunk(c, ctxs + done, tokens + done, pos + done, nb, k == nb ? NULL : c->out_ids, k));
        if (k == 0) continue;
        forward_logits(c, 0, k, logits);
        logits += (size_t)k * hp->n_vocab;
    }
    return PAM_OK;
}
