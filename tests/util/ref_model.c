/* Random Llama-family models and their float64 reference forward pass.
 *
 * The reference is deliberately naive: one position, one head, one row at a
 * time, in double precision, written to follow the math rather than any
 * memory layout. It shares no code with the runtime's kernels: F16 and Q8_0
 * weights are produced and expanded here with the few lines of ggml's
 * reference formats, and the tests cross-check those values against
 * pam_dequantize_row. */
#include "util/ref_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fp16.h"
#include "core/status.h"
#include "model/gguf.h"
#include "util/test_util.h"

/* ---- weights ----------------------------------------------------------- */

/* ggml's quantize_row_q8_0_ref: one f16 scale per 32 values, q = round(x/d). */
static void ref_quantize_q8_0(const float *x, uint8_t *dst, int64_t n) {
    for (int64_t b = 0; b < n / 32; b++) {
        const float *xb = x + b * 32;
        float amax = 0.0f;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(xb[i]));
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        pam_f16 dh = pam_f32_to_f16(d);
        uint8_t *blk = dst + b * 34;
        memcpy(blk, &dh, 2);
        for (int i = 0; i < 32; i++) blk[2 + i] = (uint8_t)(int8_t)roundf(xb[i] * id);
    }
}

static double ref_q8_0_value(const uint8_t *data, int64_t i) {
    const uint8_t *blk = data + (i / 32) * 34;
    pam_f16 dh;
    memcpy(&dh, blk, 2);
    return (double)pam_f16_to_f32(dh) * (double)(int8_t)blk[2 + i % 32];
}

/* Fills t with values drawn as mean + scale * N(0,1), stored as type. */
static pam_status ref_tensor_make(ref_tensor *t, const char *name, pam_dtype type, int64_t ne0,
                                  int64_t ne1, uint32_t n_dims, pam_test_rng *rng, double mean,
                                  double scale) {
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n_dims = n_dims;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->type = type;
    int64_t n = ne0 * ne1;
    float *f = malloc((size_t)n * sizeof *f);
    t->val = malloc((size_t)n * sizeof *t->val);
    if (type == PAM_DT_F32)
        t->n_bytes = (size_t)n * 4;
    else if (type == PAM_DT_F16)
        t->n_bytes = (size_t)n * 2;
    else
        t->n_bytes = (size_t)(n / 32) * 34;
    t->data = malloc(t->n_bytes);
    if (!f || !t->val || !t->data) {
        free(f);
        return PAM_ERR(PAM_ERR_NOMEM, "ref model: tensor %s", name);
    }
    for (int64_t i = 0; i < n; i++) f[i] = (float)(mean + scale * pam_test_rng_normal(rng));
    if (type == PAM_DT_F32) {
        memcpy(t->data, f, t->n_bytes);
        for (int64_t i = 0; i < n; i++) t->val[i] = f[i];
    } else if (type == PAM_DT_F16) {
        pam_f16 *h = t->data;
        for (int64_t i = 0; i < n; i++) {
            h[i] = pam_f32_to_f16(f[i]);
            t->val[i] = pam_f16_to_f32(h[i]);
        }
    } else {
        for (int64_t r = 0; r < ne1; r++)
            ref_quantize_q8_0(f + r * ne0, (uint8_t *)t->data + (size_t)r * (size_t)(ne0 / 32) * 34,
                              ne0);
        for (int64_t i = 0; i < n; i++) t->val[i] = ref_q8_0_value(t->data, i);
    }
    free(f);
    return PAM_OK;
}

/* A matrix y = W x with n_in inputs and n_out outputs, scaled so that an
 * input of unit RMS gives outputs of RMS about gain. */
static pam_status ref_matrix(ref_tensor *t, const char *name, const ref_model_desc *d, int64_t n_in,
                             int64_t n_out, pam_test_rng *rng, double gain) {
    return ref_tensor_make(t, name, d->wtype, n_in, n_out, 2, rng, 0.0, gain / sqrt((double)n_in));
}

static void ref_tensor_free(ref_tensor *t) {
    free(t->data);
    free(t->val);
    t->data = NULL;
    t->val = NULL;
}

void ref_model_free(ref_weights *w) {
    if (!w) return;
    ref_tensor_free(&w->tok_embd);
    ref_tensor_free(&w->output_norm);
    ref_tensor_free(&w->output);
    ref_tensor_free(&w->rope_freqs);
    for (int32_t l = 0; w->layers && l < w->d.n_layer; l++) {
        ref_layer *L = &w->layers[l];
        ref_tensor *all[] = {&L->attn_norm, &L->wq, &L->wk,       &L->wv,   &L->wo, &L->bq,
                             &L->bk,        &L->bv, &L->ffn_norm, &L->gate, &L->up, &L->down};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) ref_tensor_free(all[i]);
    }
    free(w->layers);
    free(w);
}

static pam_status ref_desc_check(const ref_model_desc *d) {
    if (!d->arch || !*d->arch) return PAM_ERR(PAM_ERR_INVALID, "ref model: no arch");
    if (d->n_vocab < 260)
        return PAM_ERR(PAM_ERR_INVALID, "ref model: n_vocab %d < 260", d->n_vocab);
    if (d->n_embd <= 0 || d->n_layer <= 0 || d->n_head <= 0 || d->n_head_kv <= 0 || d->n_ff <= 0 ||
        d->n_ctx <= 0)
        return PAM_ERR(PAM_ERR_INVALID, "ref model: non-positive size");
    if (d->n_head % d->n_head_kv)
        return PAM_ERR(PAM_ERR_INVALID, "ref model: n_head %d not a multiple of n_head_kv %d",
                       d->n_head, d->n_head_kv);
    int32_t hd = d->head_dim ? d->head_dim : d->n_embd / d->n_head;
    if (hd <= 0 || hd % 2 || (!d->head_dim && d->n_embd % d->n_head))
        return PAM_ERR(PAM_ERR_INVALID, "ref model: bad head_dim %d", hd);
    if (d->wtype != PAM_DT_F32 && d->wtype != PAM_DT_F16 && d->wtype != PAM_DT_Q8_0)
        return PAM_ERR(PAM_ERR_INVALID, "ref model: weight type %u", (unsigned)d->wtype);
    if (d->wtype == PAM_DT_Q8_0 && (d->n_embd % 32 || d->n_ff % 32 || (d->n_head * hd) % 32))
        return PAM_ERR(PAM_ERR_INVALID, "ref model: Q8_0 needs rows that are multiples of 32");
    return PAM_OK;
}

pam_status ref_model_generate(const ref_model_desc *desc, ref_weights **out) {
    PAM_TRY(ref_desc_check(desc));
    ref_weights *w = calloc(1, sizeof *w);
    if (!w) return PAM_ERR(PAM_ERR_NOMEM, "ref model");
    w->d = *desc;
    ref_model_desc *d = &w->d;
    if (!d->head_dim) d->head_dim = d->n_embd / d->n_head;
    w->layers = calloc((size_t)d->n_layer, sizeof *w->layers);
    if (!w->layers) {
        ref_model_free(w);
        return PAM_ERR(PAM_ERR_NOMEM, "ref model");
    }
    pam_test_rng rng = {d->seed};
    const int64_t E = d->n_embd, V = d->n_vocab, F = d->n_ff;
    const int64_t Q = (int64_t)d->n_head * d->head_dim, KV = (int64_t)d->n_head_kv * d->head_dim;
    pam_status st = PAM_OK;
#define REF_TRY(expr)                                                                              \
    do {                                                                                           \
        if ((st = (expr)) != PAM_OK) {                                                             \
            ref_model_free(w);                                                                     \
            return st;                                                                             \
        }                                                                                          \
    } while (0)
    /* Embedding rows of RMS 0.3; the first layer's norm rescales them. */
    REF_TRY(ref_tensor_make(&w->tok_embd, "token_embd.weight", d->wtype, E, V, 2, &rng, 0.0, 0.3));
    for (int32_t l = 0; l < d->n_layer; l++) {
        ref_layer *L = &w->layers[l];
        char name[64];
#define REF_NAME(s) (snprintf(name, sizeof name, "blk.%d." s, l), name)
        REF_TRY(ref_tensor_make(&L->attn_norm, REF_NAME("attn_norm.weight"), PAM_DT_F32, E, 1, 1,
                                &rng, 1.0, 0.1));
        /* Unit gain for q and k: attention scores of about unit spread, so
         * softmax is neither uniform nor one-hot. */
        REF_TRY(ref_matrix(&L->wq, REF_NAME("attn_q.weight"), d, E, Q, &rng, 1.0));
        REF_TRY(ref_matrix(&L->wk, REF_NAME("attn_k.weight"), d, E, KV, &rng, 1.0));
        REF_TRY(ref_matrix(&L->wv, REF_NAME("attn_v.weight"), d, E, KV, &rng, 1.0));
        REF_TRY(ref_matrix(&L->wo, REF_NAME("attn_output.weight"), d, Q, E, &rng, 0.5));
        if (d->qkv_bias) {
            REF_TRY(ref_tensor_make(&L->bq, REF_NAME("attn_q.bias"), PAM_DT_F32, Q, 1, 1, &rng, 0.0,
                                    0.1));
            REF_TRY(ref_tensor_make(&L->bk, REF_NAME("attn_k.bias"), PAM_DT_F32, KV, 1, 1, &rng,
                                    0.0, 0.1));
            REF_TRY(ref_tensor_make(&L->bv, REF_NAME("attn_v.bias"), PAM_DT_F32, KV, 1, 1, &rng,
                                    0.0, 0.1));
        }
        REF_TRY(ref_tensor_make(&L->ffn_norm, REF_NAME("ffn_norm.weight"), PAM_DT_F32, E, 1, 1,
                                &rng, 1.0, 0.1));
        REF_TRY(ref_matrix(&L->gate, REF_NAME("ffn_gate.weight"), d, E, F, &rng, 1.0));
        REF_TRY(ref_matrix(&L->up, REF_NAME("ffn_up.weight"), d, E, F, &rng, 1.0));
        REF_TRY(ref_matrix(&L->down, REF_NAME("ffn_down.weight"), d, F, E, &rng, 0.5));
#undef REF_NAME
    }
    REF_TRY(ref_tensor_make(&w->output_norm, "output_norm.weight", PAM_DT_F32, E, 1, 1, &rng, 1.0,
                            0.1));
    if (!d->tied_output) REF_TRY(ref_matrix(&w->output, "output.weight", d, E, V, &rng, 1.0));
    if (d->rope_freqs) {
        /* Llama-3 style divisors in [1, 8], one per rotated pair. */
        int64_t n = d->head_dim / 2;
        REF_TRY(ref_tensor_make(&w->rope_freqs, "rope_freqs.weight", PAM_DT_F32, n, 1, 1, &rng, 0.0,
                                0.0));
        float *f = w->rope_freqs.data;
        for (int64_t i = 0; i < n; i++) {
            f[i] = (float)pam_test_rng_uniform(&rng, 1.0, 8.0);
            w->rope_freqs.val[i] = f[i];
        }
    }
#undef REF_TRY
    *out = w;
    return PAM_OK;
}

/* ---- GGUF -------------------------------------------------------------- */

/* Vocabulary piece i >= 259: the bijective base-26 spelling of i, with a
 * leading "▁" on odd i, so all pieces are distinct. */
static void ref_piece(int32_t i, char *buf, size_t cap) {
    char tmp[16];
    int n = 0;
    for (int32_t v = i + 1; v > 0 && n < (int)sizeof tmp; v = (v - 1) / 26)
        tmp[n++] = (char)('a' + (v - 1) % 26);
    size_t o = 0;
    if (i & 1) o = (size_t)snprintf(buf, cap, "\xe2\x96\x81");
    while (n > 0 && o + 1 < cap) buf[o++] = tmp[--n];
    buf[o] = 0;
}

static pam_status ref_add_tensor(pam_gguf_writer *g, const ref_tensor *t) {
    if (!t->data || t->omit) return PAM_OK;
    return pam_gguf_writer_add_tensor(g, t->name, t->type, t->n_dims, t->ne, t->data, t->n_bytes);
}

static pam_status ref_write_meta(pam_gguf_writer *g, const ref_model_desc *d, int32_t head_dim) {
    char key[128];
#define REF_KEY(s) (snprintf(key, sizeof key, "%s." s, d->arch), key)
    PAM_TRY(pam_gguf_writer_add_str(g, "general.architecture", d->arch));
    PAM_TRY(pam_gguf_writer_add_str(g, "general.name", "ref-model"));
    PAM_TRY(pam_gguf_writer_add_u32(g, REF_KEY("context_length"), (uint32_t)d->n_ctx));
    PAM_TRY(pam_gguf_writer_add_u32(g, REF_KEY("embedding_length"), (uint32_t)d->n_embd));
    PAM_TRY(pam_gguf_writer_add_u32(g, REF_KEY("feed_forward_length"), (uint32_t)d->n_ff));
    PAM_TRY(pam_gguf_writer_add_u32(g, REF_KEY("block_count"), (uint32_t)d->n_layer));
    PAM_TRY(pam_gguf_writer_add_u32(g, REF_KEY("attention.head_count"), (uint32_t)d->n_head));
    PAM_TRY(pam_gguf_writer_add_u32(g, REF_KEY("attention.head_count_kv"), (uint32_t)d->n_head_kv));
    PAM_TRY(pam_gguf_writer_add_f32(g, REF_KEY("attention.layer_norm_rms_epsilon"), d->rms_eps));
    PAM_TRY(pam_gguf_writer_add_f32(g, REF_KEY("rope.freq_base"), d->rope_theta));
    PAM_TRY(pam_gguf_writer_add_u32(g, REF_KEY("rope.dimension_count"), (uint32_t)head_dim));
    /* As llama.cpp's converter: only when the head size is not n_embd/n_head,
     * so both ways of finding it are exercised. */
    if (head_dim * d->n_head != d->n_embd) {
        PAM_TRY(pam_gguf_writer_add_u32(g, REF_KEY("attention.key_length"), (uint32_t)head_dim));
        PAM_TRY(pam_gguf_writer_add_u32(g, REF_KEY("attention.value_length"), (uint32_t)head_dim));
    }
    PAM_TRY(pam_gguf_writer_add_u32(g, REF_KEY("vocab_size"), (uint32_t)d->n_vocab));
#undef REF_KEY
    return PAM_OK;
}

static pam_status ref_write_vocab(pam_gguf_writer *g, int32_t n_vocab) {
    char **toks = calloc((size_t)n_vocab, sizeof *toks);
    float *scores = malloc((size_t)n_vocab * sizeof *scores);
    int32_t *types = malloc((size_t)n_vocab * sizeof *types);
    pam_status st = PAM_OK;
    if (!toks || !scores || !types) {
        st = PAM_ERR(PAM_ERR_NOMEM, "ref model: vocab");
        goto done;
    }
    for (int32_t i = 0; i < n_vocab; i++) {
        char buf[32];
        if (i == 0)
            snprintf(buf, sizeof buf, "<unk>");
        else if (i == 1)
            snprintf(buf, sizeof buf, "<s>");
        else if (i == 2)
            snprintf(buf, sizeof buf, "</s>");
        else if (i < 259)
            snprintf(buf, sizeof buf, "<0x%02X>", i - 3);
        else
            ref_piece(i, buf, sizeof buf);
        toks[i] = strdup(buf);
        if (!toks[i]) {
            st = PAM_ERR(PAM_ERR_NOMEM, "ref model: vocab");
            goto done;
        }
        scores[i] = i < 259 ? 0.0f : -(float)(i - 259);
        types[i] = i == 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1;
    }
    if ((st = pam_gguf_writer_add_str(g, "tokenizer.ggml.model", "llama")) ||
        (st = pam_gguf_writer_add_arr_str(g, "tokenizer.ggml.tokens", (const char *const *)toks,
                                          (uint64_t)n_vocab)) ||
        (st = pam_gguf_writer_add_arr(g, "tokenizer.ggml.scores", PAM_GGUF_FLOAT32, scores,
                                      (uint64_t)n_vocab)) ||
        (st = pam_gguf_writer_add_arr(g, "tokenizer.ggml.token_type", PAM_GGUF_INT32, types,
                                      (uint64_t)n_vocab)) ||
        (st = pam_gguf_writer_add_u32(g, "tokenizer.ggml.bos_token_id", 1)) ||
        (st = pam_gguf_writer_add_u32(g, "tokenizer.ggml.eos_token_id", 2)) ||
        (st = pam_gguf_writer_add_u32(g, "tokenizer.ggml.unknown_token_id", 0)))
        goto done;
done:
    for (int32_t i = 0; toks && i < n_vocab; i++) free(toks[i]);
    free(toks);
    free(scores);
    free(types);
    return st;
}

pam_status ref_model_write_gguf(const ref_model_desc *desc, const ref_weights *w,
                                const char *path) {
    pam_gguf_writer *g;
    PAM_TRY(pam_gguf_writer_create(&g));
    pam_status st = ref_write_meta(g, desc, w->d.head_dim);
    if (!st) st = ref_write_vocab(g, desc->n_vocab);
    if (!st) st = ref_add_tensor(g, &w->tok_embd);
    for (int32_t l = 0; !st && l < w->d.n_layer; l++) {
        const ref_layer *L = &w->layers[l];
        const ref_tensor *all[] = {&L->attn_norm, &L->wq, &L->wk,       &L->wv,   &L->bq, &L->bk,
                                   &L->bv,        &L->wo, &L->ffn_norm, &L->gate, &L->up, &L->down};
        for (size_t i = 0; !st && i < sizeof all / sizeof all[0]; i++)
            st = ref_add_tensor(g, all[i]);
    }
    if (!st) st = ref_add_tensor(g, &w->output_norm);
    if (!st) st = ref_add_tensor(g, &w->output);
    if (!st) st = ref_add_tensor(g, &w->rope_freqs);
    if (!st) st = pam_gguf_writer_write(g, path);
    pam_gguf_writer_destroy(g);
    return st;
}

/* ---- reference forward ------------------------------------------------- */

void ref_rmsnorm(const double *x, const double *weight, int64_t n, double eps, double *out) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    double inv = 1.0 / sqrt(ss / (double)n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * inv * weight[i];
}

void ref_softmax(double *x, int64_t n) {
    double mx = -INFINITY, sum = 0.0;
    for (int64_t i = 0; i < n; i++) mx = fmax(mx, x[i]);
    for (int64_t i = 0; i < n; i++) sum += (x[i] = exp(x[i] - mx));
    for (int64_t i = 0; i < n; i++) x[i] /= sum;
}

void ref_rope(double *v, int32_t head_dim, int32_t pos, double theta, int neox,
              const double *freq_div) {
    int32_t half = head_dim / 2;
    for (int32_t i = 0; i < half; i++) {
        double freq = pow(theta, -2.0 * i / head_dim);
        if (freq_div) freq /= freq_div[i];
        double a = pos * freq, c = cos(a), s = sin(a);
        /* "normal" rotates adjacent pairs; NeoX rotates element i with i+d/2. */
        int32_t i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
        double x0 = v[i0], x1 = v[i1];
        v[i0] = x0 * c - x1 * s;
        v[i1] = x0 * s + x1 * c;
    }
}

/* The values x stands for after rounding to float32 and quantising to Q8_0
 * blocks, as the integer dot products of Q8_0 weights see their input. */
static void ref_act_q8_0(const double *x, int64_t n, double *out) {
    float *f = calloc((size_t)n, sizeof(float));
    uint8_t *q = calloc((size_t)(n / 32), 34);
    if (!f || !q) abort();
    for (int64_t i = 0; i < n; i++) f[i] = (float)x[i];
    ref_quantize_q8_0(f, q, n);
    for (int64_t i = 0; i < n; i++) out[i] = ref_q8_0_value(q, i);
    free(f);
    free(q);
}

/* out[r] = sum_c W[r][c] * x[c] (+ bias[r]) for the ne[1] rows of W. */
static void ref_matvec(const ref_tensor *W, const ref_tensor *bias, const double *x, int act_q8,
                       double *out) {
    double *xq = NULL;
    if (act_q8 && W->type == PAM_DT_Q8_0) {
        xq = malloc(sizeof(double) * (size_t)W->ne[0]);
        if (!xq) abort();
        ref_act_q8_0(x, W->ne[0], xq);
        x = xq;
    }
    for (int64_t r = 0; r < W->ne[1]; r++) {
        double s = 0.0;
        for (int64_t c = 0; c < W->ne[0]; c++) s += W->val[r * W->ne[0] + c] * x[c];
        out[r] = s + (bias && bias->val ? bias->val[r] : 0.0);
    }
    free(xq);
}

static double ref_silu(double x) { return x / (1.0 + exp(-x)); }

void ref_model_forward(const ref_weights *w, const int32_t *tokens, int32_t n, double *logits) {
    ref_model_forward_ex(w, tokens, n, 0, logits);
}

void ref_model_forward_ex(const ref_weights *w, const int32_t *tokens, int32_t n, int act_q8,
                          double *logits) {
    const ref_model_desc *d = &w->d;
    const int64_t E = d->n_embd, F = d->n_ff, HD = d->head_dim;
    const int64_t Q = d->n_head * HD, KV = d->n_head_kv * HD;
    const int32_t group = d->n_head / d->n_head_kv;
    const int neox = strcmp(d->arch, "qwen2") == 0;
    const double *freq_div = d->rope_freqs ? w->rope_freqs.val : NULL;
    double *x = malloc(sizeof(double) * (size_t)(n * E));
    double *h = malloc(sizeof(double) * (size_t)(E > F ? E : F));
    double *q = malloc(sizeof(double) * (size_t)(n * Q));
    double *k = malloc(sizeof(double) * (size_t)(n * KV));
    double *v = malloc(sizeof(double) * (size_t)(n * KV));
    double *att = malloc(sizeof(double) * (size_t)Q);
    double *sc = malloc(sizeof(double) * (size_t)n);
    double *g = malloc(sizeof(double) * (size_t)F), *u = malloc(sizeof(double) * (size_t)F);
    double *o = malloc(sizeof(double) * (size_t)E);
    if (!x || !h || !q || !k || !v || !att || !sc || !g || !u || !o) abort();

    for (int32_t p = 0; p < n; p++)
        memcpy(x + p * E, w->tok_embd.val + (int64_t)tokens[p] * E, sizeof(double) * (size_t)E);
    for (int32_t l = 0; l < d->n_layer; l++) {
        const ref_layer *L = &w->layers[l];
        for (int32_t p = 0; p < n; p++) {
            ref_rmsnorm(x + p * E, L->attn_norm.val, E, d->rms_eps, h);
            ref_matvec(&L->wq, &L->bq, h, act_q8, q + p * Q);
            ref_matvec(&L->wk, &L->bk, h, act_q8, k + p * KV);
            ref_matvec(&L->wv, &L->bv, h, act_q8, v + p * KV);
            for (int32_t hh = 0; hh < d->n_head; hh++)
                ref_rope(q + p * Q + hh * HD, (int32_t)HD, p, d->rope_theta, neox, freq_div);
            for (int32_t hh = 0; hh < d->n_head_kv; hh++)
                ref_rope(k + p * KV + hh * HD, (int32_t)HD, p, d->rope_theta, neox, freq_div);
        }
        for (int32_t p = 0; p < n; p++) {
            for (int32_t hh = 0; hh < d->n_head; hh++) {
                const double *qh = q + p * Q + hh * HD;
                int64_t kvo = (int64_t)(hh / group) * HD;
                for (int32_t t = 0; t <= p; t++) {
                    double s = 0.0;
                    for (int64_t i = 0; i < HD; i++) s += qh[i] * k[t * KV + kvo + i];
                    sc[t] = s / sqrt((double)HD);
                }
                ref_softmax(sc, p + 1);
                for (int64_t i = 0; i < HD; i++) {
                    double s = 0.0;
                    for (int32_t t = 0; t <= p; t++) s += sc[t] * v[t * KV + kvo + i];
                    att[hh * HD + i] = s;
                }
            }
            ref_matvec(&L->wo, NULL, att, act_q8, o);
            for (int64_t i = 0; i < E; i++) x[p * E + i] += o[i];
            ref_rmsnorm(x + p * E, L->ffn_norm.val, E, d->rms_eps, h);
            ref_matvec(&L->gate, NULL, h, act_q8, g);
            ref_matvec(&L->up, NULL, h, act_q8, u);
            for (int64_t i = 0; i < F; i++) g[i] = ref_silu(g[i]) * u[i];
            ref_matvec(&L->down, NULL, g, act_q8, o);
            for (int64_t i = 0; i < E; i++) x[p * E + i] += o[i];
        }
    }
    const ref_tensor *out = d->tied_output ? &w->tok_embd : &w->output;
    for (int32_t p = 0; p < n; p++) {
        ref_rmsnorm(x + p * E, w->output_norm.val, E, d->rms_eps, h);
        ref_matvec(out, NULL, h, act_q8, logits + (int64_t)p * d->n_vocab);
    }
    free(x);
    free(h);
    free(q);
    free(k);
    free(v);
    free(att);
    free(sc);
    free(g);
    free(u);
    free(o);
}

double ref_rel_err(const float *a, const double *ref, int64_t n) {
    double max_err = 0.0, max_ref = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(a[i])) return INFINITY;
        max_err = fmax(max_err, fabs((double)a[i] - ref[i]));
        max_ref = fmax(max_ref, fabs(ref[i]));
    }
    return max_ref > 0.0 ? max_err / max_ref : max_err;
}
